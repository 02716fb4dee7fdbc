//! A running node for integration tests: a topology from TOML, a temporary checkpoint
//! store, the real clock, and bounded waits on conditions.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gridvisor_actors::checkpoint::{CheckpointStore, StoreLimits};
use gridvisor_actors::clock::Clock;
use gridvisor_actors::config;
use gridvisor_actors::runtime::{DispatchReceipt, GridRequest, Node, NodeOptions, Scope};

/// Every wait of a test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(30);

pub struct TestNode {
    pub node: Node,
    pub store: CheckpointStore,
    pub dir: tempfile::TempDir,
}

pub async fn start(toml: &str) -> TestNode {
    let topology = config::parse("test.toml", toml).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    start_in(Arc::new(topology), dir).await
}

pub async fn start_in(topology: Arc<config::Topology>, dir: tempfile::TempDir) -> TestNode {
    start_in_with(topology, dir, NodeOptions::default())
        .await
        .unwrap_or_else(|e| panic!("node: {e}"))
}

/// A node for `toml` with `options`; a node that does not start is the error.
pub async fn start_with(toml: &str, options: NodeOptions) -> Result<TestNode, String> {
    let topology = config::parse("test.toml", toml).unwrap_or_else(|e| panic!("{e}"));
    start_in_with(Arc::new(topology), tempfile::tempdir().unwrap(), options).await
}

async fn start_in_with(
    topology: Arc<config::Topology>,
    dir: tempfile::TempDir,
    options: NodeOptions,
) -> Result<TestNode, String> {
    let store = CheckpointStore::open(&dir.path().join("cp.redb"), StoreLimits::default()).unwrap();
    let node = Node::start(
        topology,
        store.clone(),
        Clock::tokio(),
        prometheus::Registry::new(),
        options,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(TestNode { node, store, dir })
}

/// Wait until `cond` holds, at most [`LIMIT`]; panics with `what` and the segments.
pub async fn wait(node: &Node, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > LIMIT {
            panic!(
                "{what}: not within {LIMIT:?}\n{}",
                serde_json::to_string_pretty(&node.segments()).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn request(id: &str, scope: Scope, target_kw: f64, duration_s: f64) -> GridRequest {
    GridRequest::now(id, scope, target_kw, duration_s)
}

/// A one-substation site: `segments` segments of `chargers` bidirectional 11 kW chargers,
/// a vehicle on each, one inverter and meter per segment.
pub fn site_toml(segments: usize, chargers: usize, extra_site: &str, extra_safety: &str) -> String {
    let mut t = format!(
        "[site]\nid = \"t\"\ncycle_ms = 100\nlease_s = 5\nkeepalive_required = false\n{extra_site}\n\
         [safety]\nhold_s = 1\n{extra_safety}\n[[substations]]\nid = \"sub\"\n"
    );
    let mut v = String::new();
    let mut n = 0;
    for s in 0..segments {
        t.push_str(&format!(
            "[[substations.segments]]\nid = \"tx-{s}\"\nrated_kw = {}\n\
             [[substations.segments.inverters]]\nid = \"inv-{s}\"\nmax_kw = 50\n\
             [[substations.segments.meters]]\nid = \"m-{s}\"\n",
            chargers as f64 * 11.0 * 2.0
        ));
        for _ in 0..chargers {
            t.push_str(&format!(
                "[[substations.segments.chargers]]\nid = \"evse-{n}\"\nmax_kw = 11\nbidirectional = true\n"
            ));
            v.push_str(&format!(
                "[[vehicles]]\nid = \"ev-{n}\"\ncharger = \"evse-{n}\"\ncapacity_kwh = 60\nsoc_pct = {}\n\
                 depart_s = {}\nmax_kw = 11\n",
                40 + (n * 7) % 50,
                3600 + n * 60
            ));
            n += 1;
        }
    }
    t.push_str(&v);
    t
}

/// Post site requests (ids `{prefix}-{ms}`, a new one each try, for `target_kw` over 60 s)
/// until one is acknowledged by `devices` devices, at most [`LIMIT`]: devices that just
/// connected may still be read by their links. Returns the last receipt, checked.
pub async fn request_until_acked(
    node: &Node,
    prefix: &str,
    target_kw: f64,
    devices: usize,
) -> DispatchReceipt {
    let started = Instant::now();
    loop {
        let id = format!("{prefix}-{}", started.elapsed().as_millis());
        let r = node
            .request(request(&id, Scope::Site, target_kw, 60.0))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        if r.acknowledged == devices || started.elapsed() > LIMIT {
            assert_eq!(r.acknowledged, devices, "{r:#?}");
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Python peer's stdout as JSON values (a line that is not JSON becomes a string naming it)
/// and its stderr, collected whole when it ends (for failure messages). Reader threads end
/// with the child.
pub fn json_lines(
    child: &mut std::process::Child,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    Arc<std::sync::Mutex<String>>,
) {
    use std::io::{BufRead, BufReader, Read};
    let stdout = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|_| serde_json::Value::String(format!("non-JSON line: {line}")));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = err.read_to_string(&mut buf);
        *sink.lock().unwrap() = buf;
    });
    (lines, stderr)
}
