//! The multi-process run: certificates, one cluster file per node (its peers behind the link
//! proxies), N `gridvisor run --cluster` processes, the settle, the fault schedule and the
//! workload on the wall clock, a round of `/api/cluster` samples every [`SAMPLE_EVERY`], and
//! the checks.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::check::{self, Acked, Checks, NodeEvents, NodeView, Reach, Round, Summary};
use super::proxy::{LinkFault, Proxy};
use super::scenario::{ClusterScenario, FaultKind};

/// How often every node's view is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Longest wait for a node's `/api/cluster` (connect and answer).
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest wait for a dispatch's receipt (a forwarded call may take the cluster's own
/// forward timeout, 10 s).
pub const DISPATCH_TIMEOUT: Duration = Duration::from_secs(12);
/// Grid requests waiting for their receipts at once, at most.
pub const MAX_IN_FLIGHT: u64 = 16;
/// Longest wait for `gridvisor certs`.
pub const CERTS_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a segment's state at the end.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Reading the segments at the end: attempts per segment (a node may be between views).
pub const READ_ATTEMPTS: u32 = 20;
/// Pause between those attempts.
pub const READ_PAUSE: Duration = Duration::from_millis(250);
/// The environment variable that keeps the run's folder (certificates, cluster files, logs).
pub const KEEP_ENV: &str = "GRIDVISOR_KEEP_CHAOS_DIR";

/// What a run gave.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// The scenario's name.
    pub scenario: String,
    /// Its file.
    pub file: String,
    /// What it is about.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// The nodes.
    pub nodes: Vec<String>,
    /// Every invariant held.
    pub passed: bool,
    /// From the start of the processes to the first settle, s.
    pub settled_after_s: Option<f64>,
    /// The scenario's run length after the settle, s.
    pub duration_s: f64,
    /// Wall time of the whole run, s.
    pub wall_s: f64,
    /// The invariants.
    pub invariants: Vec<Summary>,
    /// The command that replays the run.
    pub replay: String,
    /// The faults as applied (ms after the settle).
    pub faults: Vec<AppliedFault>,
    /// Grid requests.
    pub dispatch: DispatchStats,
    /// Driving intervals found in the logs.
    pub intervals: Vec<IntervalRel>,
    /// Every round of samples.
    pub rounds: Vec<Round>,
    /// The newest acknowledged dispatch per segment.
    pub acknowledged: BTreeMap<String, Acked>,
    /// Every grid request answered, in the order the answers came.
    pub requests: Vec<RequestLog>,
    /// Where the nodes' logs were kept (with `--report`).
    pub logs: Vec<String>,
}

/// A fault when it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedFault {
    /// ms after the settle.
    pub t_ms: u64,
    /// Its kind.
    pub kind: &'static str,
    /// What it did.
    pub what: String,
    /// The nodes cut off from the majority after it.
    pub cut_off: Vec<String>,
}

/// A driving interval, s after the settle.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalRel {
    /// The segment.
    pub segment: String,
    /// The node.
    pub node: String,
    /// From, s (negative: before the settle).
    pub from_s: f64,
    /// To, s (None: still driving at the end).
    pub to_s: Option<f64>,
}

/// What the workload sent and got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DispatchStats {
    /// Requests answered (or failed) by the end of the run; one still waiting is not counted.
    pub answered: u64,
    /// Ticks that sent nothing: no live node, or [`MAX_IN_FLIGHT`] requests still waiting.
    pub skipped: u64,
    /// Answered 200.
    pub ok: u64,
    /// Answered with another status.
    pub refused: u64,
    /// No answer (refused connection, timeout).
    pub failed: u64,
    /// Segment receipts fully acknowledged.
    pub segments_acknowledged: u64,
}

/// One grid request of the workload.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLog {
    /// Its id.
    pub id: String,
    /// The node it was sent to.
    pub node: String,
    /// Sent, ms after the settle.
    pub sent_ms: u64,
    /// Answered, ms after the settle.
    pub answered_ms: u64,
    /// The status (None: no answer).
    pub status: Option<u16>,
    /// Segment receipts: (segment, dispatch id, devices acknowledged, devices not).
    pub segments: Vec<(String, u64, u64, u64)>,
}

/// Why a run could not be made (not an invariant: the setup).
pub type RunError = String;

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Attempts at a port this process has not handed out yet.
const PORT_ATTEMPTS: usize = 64;

/// A free loopback port, never one this process handed out before: the kernel may give a
/// port that was just let go again, and two nodes given one address do not start.
pub fn free_port() -> Result<u16, String> {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    for _ in 0..PORT_ATTEMPTS {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
    Err(format!(
        "no free port that this process has not handed out in {PORT_ATTEMPTS} attempts"
    ))
}

/// A minimal HTTP/1.1 exchange, one request per connection, every step bounded by
/// `timeout`: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// SplitMix64: the workload's choices from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct NodeProc {
    cluster_file: PathBuf,
    data: PathBuf,
    log: PathBuf,
    grid: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
    /// SIGKILL times, seconds since the epoch.
    kills: Vec<f64>,
}

/// The node processes, killed when dropped (however the run ends).
struct Nodes {
    binary: PathBuf,
    site: PathBuf,
    nodes: BTreeMap<String, NodeProc>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Nodes {
    fn start(&mut self, name: &str) -> Result<(), String> {
        let n = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| format!("no node {name}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|e| format!("{}: {e}", n.log.display()))?;
        let child = Command::new(&self.binary)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&self.site)
            .arg("--cluster")
            .arg(&n.cluster_file)
            .args(["--node", name, "--data"])
            .arg(&n.data)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        n.child = Some(child);
        Ok(())
    }

    fn kill(&mut self, name: &str) -> Result<(), String> {
        let n = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| format!("no node {name}"))?;
        let mut c = n
            .child
            .take()
            .ok_or_else(|| format!("{name} is not running"))?;
        c.kill().map_err(|e| format!("kill {name}: {e}"))?;
        n.kills.push(now_epoch());
        let _ = c.wait();
        Ok(())
    }

    fn view(&self, name: &str, t0: Instant) -> Option<NodeView> {
        let (code, body) = http(
            self.nodes[name].admin,
            "GET",
            "/api/cluster",
            None,
            STATUS_TIMEOUT,
        )
        .ok()?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let strings = |x: &Value| -> BTreeSet<String> {
            x.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        // A lapsed lease drives nothing (its segments are still being released).
        let lapsed = v["lapsed"] == true;
        let driving = v["segments"]
            .as_array()?
            .iter()
            .filter(|s| s["driven_here"] == true && !lapsed)
            .filter_map(|s| s["segment"].as_str().map(str::to_string))
            .collect();
        Some(NodeView {
            lease: v["lease"].as_str().unwrap_or("?").to_string(),
            members: strings(&v["members"]),
            driving,
            at_ms: t0.elapsed().as_millis() as u64,
        })
    }

    fn round(&self, t0: Instant) -> Round {
        let t_ms = t0.elapsed().as_millis() as u64;
        let nodes = self
            .nodes
            .iter()
            .map(|(name, n)| {
                let v = if n.child.is_some() {
                    self.view(name, t0)
                } else {
                    None
                };
                (name.clone(), v)
            })
            .collect();
        Round {
            t_ms,
            end_ms: t0.elapsed().as_millis() as u64,
            nodes,
        }
    }

    /// Every segment of the site, from the first node that answers.
    fn segments_of_site(&self, names: &[String]) -> Option<BTreeSet<String>> {
        for n in names {
            if let Ok((200, body)) = http(
                self.nodes[n].admin,
                "GET",
                "/api/cluster",
                None,
                STATUS_TIMEOUT,
            ) {
                let v: Value = serde_json::from_str(&body).ok()?;
                return Some(
                    v["segments"]
                        .as_array()?
                        .iter()
                        .filter_map(|s| s["segment"].as_str().map(str::to_string))
                        .collect(),
                );
            }
        }
        None
    }
}

/// Every link's proxy, by (dialer, acceptor).
struct Links(BTreeMap<(String, String), Proxy>);

impl Links {
    fn set_touching(
        &self,
        nodes: &BTreeSet<String>,
        f: LinkFault,
        only_if: impl Fn(LinkFault) -> bool,
    ) {
        for ((x, y), p) in &self.0 {
            if (nodes.contains(x) || nodes.contains(y)) && only_if(p.fault()) {
                p.set(f);
            }
        }
    }

    fn linked(&self, x: &str, y: &str) -> bool {
        self.0
            .get(&(x.to_string(), y.to_string()))
            .is_some_and(|p| matches!(p.fault(), LinkFault::Pass | LinkFault::Delay(_)))
    }
}

struct DispatchResult {
    id: String,
    node: String,
    sent_ms: u64,
    /// Every segment receipt: (segment, dispatch, acknowledged, not).
    segments: Vec<(String, u64, u64, u64)>,
    t_ms: u64,
    ok: Option<u16>,
    /// (segment, dispatch id, devices acknowledged) of fully acknowledged segment receipts.
    acked: Vec<(String, u64, u64)>,
}

/// The workload: a site request every `every` to a seeded-random live node. Each request
/// runs on its own thread (a request forwarded to a node that just died waits for the
/// cluster's forward timeout; the next ones must still go out on time), at most
/// [`MAX_IN_FLIGHT`] at once: a tick with that many waiting sends nothing (`skipped`).
#[allow(clippy::too_many_arguments)]
fn workload(
    every: Duration,
    seed: u64,
    grid: BTreeMap<String, SocketAddr>,
    live: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    t0: Instant,
    tx: mpsc::Sender<DispatchResult>,
    skipped: Arc<AtomicU64>,
) {
    let mut rng = Rng(seed ^ 0xC1A0_5C1A_05C1_A05C);
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut next = t0;
    for n in 1u64.. {
        next += every;
        while Instant::now() < next {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep((next - Instant::now()).min(SAMPLE_EVERY));
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        let alive: Vec<String> = live
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        // Drawn on every tick, so that the seed fixes each request's node and target.
        let pick = rng.below(alive.len());
        // -30.0 ..= 30.0 kW in 0.5 kW steps.
        let target = rng.below(121) as f64 * 0.5 - 30.0;
        if alive.is_empty() || in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
            skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let node = alive[pick].clone();
        let addr = grid[&node];
        let sent_ms = t0.elapsed().as_millis() as u64;
        let body =
            format!(r#"{{"id":"chaos-{n}","scope":"site","target_kw":{target},"duration_s":600}}"#);
        let (tx, in_flight) = (tx.clone(), in_flight.clone());
        in_flight.fetch_add(1, Ordering::AcqRel);
        std::thread::spawn(move || {
            let answer = http(
                addr,
                "POST",
                "/api/v1/dispatch",
                Some(&body),
                DISPATCH_TIMEOUT,
            );
            let mut result = DispatchResult {
                id: format!("chaos-{n}"),
                node,
                sent_ms,
                segments: Vec::new(),
                t_ms: t0.elapsed().as_millis() as u64,
                ok: None,
                acked: Vec::new(),
            };
            if let Ok((code, text)) = answer {
                result.ok = Some(code);
                if code == 200 {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    for s in v["segments"].as_array().into_iter().flatten() {
                        let count = |k: &str| s[k].as_u64().unwrap_or(0);
                        let devices = count("applied") + count("repeat");
                        let bad = count("stale") + count("failed") + count("unanswered");
                        if let (Some(seg), Some(d)) =
                            (s["segment"].as_str(), s["key"]["dispatch"].as_u64())
                        {
                            result.segments.push((seg.to_string(), d, devices, bad));
                            if devices > 0 && bad == 0 {
                                result.acked.push((seg.to_string(), d, devices));
                            }
                        }
                    }
                }
            }
            let _ = tx.send(result);
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

fn settled_driver(round: &Round, names: &[String], segments: &BTreeSet<String>) -> bool {
    let all: BTreeSet<String> = names.iter().cloned().collect();
    let mut driven = BTreeMap::new();
    for n in names {
        let Some(Some(v)) = round.nodes.get(n) else {
            return false;
        };
        if v.members != all || v.lease != "Driving" {
            return false;
        }
        for s in &v.driving {
            if driven.insert(s.clone(), n.clone()).is_some() {
                return false;
            }
        }
    }
    !segments.is_empty() && driven.len() == segments.len()
}

/// Run `s` with `seed`, the nodes being `binary` (`gridvisor`). With `keep_logs` (a folder and
/// a file stem), the nodes'
/// logs are copied there as `<stem>-node-X.log`.
pub fn run(
    s: &ClusterScenario,
    seed: u64,
    binary: &Path,
    keep_logs: Option<(&Path, &str)>,
) -> Result<ClusterReport, RunError> {
    let wall = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("gridvisor-chaos-")
        .tempdir()
        .map_err(|e| format!("no temporary folder: {e}"))?;
    let keep = std::env::var_os(KEEP_ENV).is_some();
    let root = dir.path().to_path_buf();
    if keep {
        eprintln!("chaos run files kept in {}", root.display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("chaos-proxy")
        .build()
        .map_err(|e| format!("no runtime for the link proxies: {e}"))?;

    // Certificates and the cookie.
    let mut certs = Command::new(binary)
        .args(["certs", "--out"])
        .arg(root.join("certs"))
        .args(["--nodes", &s.nodes.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {} certs: {e}", binary.display()))?;
    let deadline = Instant::now() + CERTS_TIMEOUT;
    loop {
        match certs.try_wait() {
            Ok(Some(st)) if st.success() => break,
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = certs.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("gridvisor certs failed ({st}): {err}"));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(SAMPLE_EVERY),
            _ => {
                let _ = certs.kill();
                let _ = certs.wait();
                return Err(format!(
                    "gridvisor certs did not finish within {CERTS_TIMEOUT:?}"
                ));
            }
        }
    }

    // Real addresses, one proxy per ordered pair, one cluster file per node.
    let mut real: BTreeMap<String, (SocketAddr, SocketAddr, SocketAddr)> = BTreeMap::new();
    for n in &s.nodes {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        real.insert(
            n.clone(),
            (a(free_port()?), a(free_port()?), a(free_port()?)),
        );
    }
    let mut links = BTreeMap::new();
    for x in &s.nodes {
        for y in &s.nodes {
            if x != y {
                let p = rt
                    .block_on(Proxy::start(real[y].0))
                    .map_err(|e| format!("link proxy {x}->{y}: {e}"))?;
                links.insert((x.clone(), y.clone()), p);
            }
        }
    }
    let links = Links(links);
    let mut lease = String::new();
    if let Some(l) = &s.lease {
        lease.push_str("[lease]\n");
        for (k, v) in [
            ("heartbeat_ms", l.heartbeat_ms),
            ("charge_only_after_ms", l.charge_only_after_ms),
            ("lease_ms", l.lease_ms),
            ("max_drift_ppm", l.max_drift_ppm.map(u64::from)),
        ] {
            if let Some(v) = v {
                lease.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    let mut procs = BTreeMap::new();
    for x in &s.nodes {
        let mut file = format!(
            "cookie_file = \"certs/cookie\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{{node}}.pem\"\nkey = \"certs/{{node}}-key.pem\"\n{lease}"
        );
        for y in &s.nodes {
            let (cluster, grid, admin) = real[y];
            let dial = if x == y {
                cluster
            } else {
                links.0[&(x.clone(), y.clone())].addr()
            };
            file.push_str(&format!(
                "[[nodes]]\nname = \"{y}\"\ncluster = \"{dial}\"\nbind = \"{cluster}\"\ngrid = \"{grid}\"\nadmin = \"{admin}\"\n"
            ));
        }
        let path = root.join(format!("cluster-{x}.toml"));
        std::fs::write(&path, file).map_err(|e| format!("{}: {e}", path.display()))?;
        procs.insert(
            x.clone(),
            NodeProc {
                cluster_file: path,
                data: root.join(format!("data-{x}")),
                log: root.join(format!("{x}.log")),
                grid: real[x].1,
                admin: real[x].2,
                child: None,
                kills: Vec::new(),
            },
        );
    }
    let mut nodes = Nodes {
        binary: binary.to_path_buf(),
        site: s.site.clone(),
        nodes: procs,
    };
    for n in &s.nodes {
        nodes.start(n)?;
    }

    // The settle.
    let started = Instant::now();
    let settle_deadline = started + Duration::from_secs_f64(s.settle_limit_s);
    let mut segments = BTreeSet::new();
    let mut settled_after = None;
    while Instant::now() < settle_deadline {
        if segments.is_empty() {
            segments = nodes.segments_of_site(&s.nodes).unwrap_or_default();
        }
        let r = nodes.round(started);
        if settled_driver(&r, &s.nodes, &segments) {
            settled_after = Some(started.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    let replay = crate::runner::replay_command(&s.file, seed);
    let mut report = ClusterReport {
        scenario: s.name.clone(),
        file: s.file.clone(),
        description: s.description.clone(),
        seed,
        nodes: s.nodes.clone(),
        passed: false,
        settled_after_s: settled_after,
        duration_s: s.duration_s,
        wall_s: 0.0,
        invariants: Vec::new(),
        replay,
        faults: Vec::new(),
        dispatch: DispatchStats::default(),
        intervals: Vec::new(),
        rounds: Vec::new(),
        acknowledged: BTreeMap::new(),
        requests: Vec::new(),
        logs: Vec::new(),
    };
    let t0 = Instant::now();
    let t0_epoch = now_epoch();
    let all: BTreeSet<String> = s.nodes.iter().cloned().collect();
    let mut checks = Checks::new(
        s.bounds,
        s.settle_limit_s,
        segments.clone(),
        Reach::compute(&s.nodes, &all, |_, _| true),
    );
    let mut summaries: Vec<Summary> = Vec::new();
    if settled_after.is_none() {
        let mut st = Summary {
            name: check::SETTLES,
            bound: format!("{} s", s.settle_limit_s),
            held: false,
            checks: 1,
            worst_margin: None,
            unit: "s",
            first_violation: None,
        };
        st.first_violation = Some(check::Violation {
            invariant: check::SETTLES,
            t_ms: 0,
            message: format!(
                "the cluster did not settle (every node Driving with all members, each of the {} segments driven by one node) within {} s of its start",
                segments.len(),
                s.settle_limit_s
            ),
        });
        summaries.push(st);
    } else {
        // The schedule, the workload and the samples.
        let live = Arc::new(Mutex::new(all.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let skipped = Arc::new(AtomicU64::new(0));
        let worker = (s.workload.dispatch_every_s > 0.0).then(|| {
            let grid = nodes
                .nodes
                .iter()
                .map(|(n, p)| (n.clone(), p.grid))
                .collect();
            let (live, stop, skipped) = (live.clone(), stop.clone(), skipped.clone());
            let every = Duration::from_secs_f64(s.workload.dispatch_every_s);
            std::thread::spawn(move || workload(every, seed, grid, live, stop, t0, tx, skipped))
        });
        let end = Duration::from_secs_f64(s.duration_s);
        let mut faults = s.faults.iter().peekable();
        loop {
            let now = t0.elapsed();
            while let Some(f) = faults.peek() {
                if Duration::from_secs_f64(f.at_s) > now {
                    break;
                }
                let f = faults.next().expect("peeked");
                let t_ms = t0.elapsed().as_millis() as u64;
                let (mut killed, mut rejoined) = (false, false);
                match &f.kind {
                    FaultKind::KillNode(n) => {
                        nodes.kill(n)?;
                        if let Ok(mut l) = live.lock() {
                            l.remove(n);
                        }
                        killed = true;
                    }
                    FaultKind::RestartNode(n) => {
                        nodes.start(n)?;
                        if let Ok(mut l) = live.lock() {
                            l.insert(n.clone());
                        }
                        rejoined = true;
                    }
                    FaultKind::Partition(side) => {
                        for ((x, y), p) in &links.0 {
                            if side.contains(x) != side.contains(y) {
                                p.set(LinkFault::Blackhole);
                            }
                        }
                    }
                    FaultKind::DropLinks(set) => links.set_touching(set, LinkFault::Drop, |_| true),
                    FaultKind::DelayLinks(set, ms) => {
                        links.set_touching(set, LinkFault::Delay(*ms), |f| {
                            matches!(f, LinkFault::Pass | LinkFault::Delay(_))
                        })
                    }
                    FaultKind::Heal => {
                        rejoined = links
                            .0
                            .values()
                            .any(|p| matches!(p.fault(), LinkFault::Blackhole | LinkFault::Drop));
                        for p in links.0.values() {
                            p.set(LinkFault::Pass);
                        }
                    }
                }
                let alive = live.lock().map(|l| l.clone()).unwrap_or_default();
                let reach = Reach::compute(&s.nodes, &alive, |x, y| links.linked(x, y));
                report.faults.push(AppliedFault {
                    t_ms,
                    kind: f.kind.name(),
                    what: f.kind.describe(),
                    cut_off: reach.cut_off.iter().cloned().collect(),
                });
                checks.fault(t_ms, &f.kind.describe(), reach, killed, rejoined);
            }
            let r = nodes.round(t0);
            checks.round(&r);
            report.rounds.push(r);
            let now = t0.elapsed();
            // After the run's length, only as long as an obligation may still be met.
            if now >= end
                && checks
                    .last_deadline()
                    .is_none_or(|d| now.as_millis() as u64 > d)
            {
                break;
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        stop.store(true, Ordering::Release);
        let end_ms = t0.elapsed().as_millis() as u64;
        summaries.extend(checks.finish(end_ms));
        // Receipts so far (a request still waiting is not counted: nobody saw its answer).
        if let Some(w) = worker {
            // It stops within one SAMPLE_EVERY of the flag (its requests run on their own).
            let _ = w.join();
        }
        report.dispatch.skipped = skipped.load(Ordering::Relaxed);
        for d in rx.try_iter() {
            report.dispatch.answered += 1;
            match d.ok {
                Some(200) => report.dispatch.ok += 1,
                Some(_) => report.dispatch.refused += 1,
                None => report.dispatch.failed += 1,
            }
            report.requests.push(RequestLog {
                id: d.id.clone(),
                node: d.node.clone(),
                sent_ms: d.sent_ms,
                answered_ms: d.t_ms,
                status: d.ok,
                segments: d.segments.clone(),
            });
            for (seg, dispatch, devices) in d.acked {
                report.dispatch.segments_acknowledged += 1;
                let e = report.acknowledged.entry(seg).or_insert(Acked {
                    dispatch,
                    devices,
                    t_ms: d.t_ms,
                });
                if dispatch > e.dispatch {
                    *e = Acked {
                        dispatch,
                        devices,
                        t_ms: d.t_ms,
                    };
                }
            }
        }
        // The acknowledged setpoints, through a node of the majority.
        let via: Vec<String> = checks_majority(&s.nodes, &live, &links);
        let mut applied = BTreeMap::new();
        for seg in report.acknowledged.keys() {
            applied.insert(seg.clone(), read_applied(&nodes, &via, seg));
        }
        let end_ms = t0.elapsed().as_millis() as u64;
        summaries.push(check::acknowledged(&report.acknowledged, &applied, end_ms));
        if s.bounds.acknowledged_monotone {
            let receipts: Vec<check::Receipt> = report
                .requests
                .iter()
                .flat_map(|q| {
                    q.segments
                        .iter()
                        .filter(|(_, _, ok, bad)| *ok > 0 && *bad == 0)
                        .map(|(seg, d, _, _)| check::Receipt {
                            segment: seg.clone(),
                            dispatch: *d,
                            sent_ms: q.sent_ms,
                            answered_ms: q.answered_ms,
                            node: q.node.clone(),
                        })
                })
                .collect();
            summaries.push(check::monotone(&receipts));
        }
    }

    // Stop the processes, then read their logs.
    for n in s.nodes.clone() {
        if nodes.nodes[&n].child.is_some() {
            let _ = nodes.kill(&n);
        }
    }
    let texts: Vec<(String, String)> = s
        .nodes
        .iter()
        .map(|n| {
            (
                n.clone(),
                std::fs::read_to_string(&nodes.nodes[n].log).unwrap_or_default(),
            )
        })
        .collect();
    let (intervals, adoptions) = match node_events(&s.nodes, &nodes) {
        Ok((i, a)) => {
            summaries.insert(0, check::one_driver(&i, t0_epoch));
            (i, a)
        }
        Err(why) => {
            summaries.insert(0, check::unreadable_events(why));
            (Vec::new(), Vec::new())
        }
    };
    if let Some(max) = s.bounds.max_handoffs {
        if settled_after.is_some() {
            summaries.push(check::handoffs(&adoptions, t0_epoch, max));
        }
    }
    report.intervals = intervals
        .iter()
        .map(|i| IntervalRel {
            segment: i.segment.clone(),
            node: i.node.clone(),
            from_s: i.from - t0_epoch,
            to_s: i.to.is_finite().then_some(i.to - t0_epoch),
        })
        .collect();
    if let Some((folder, stem)) = keep_logs {
        std::fs::create_dir_all(folder)
            .map_err(|e| format!("cannot create the report folder {}: {e}", folder.display()))?;
        for (n, t) in &texts {
            let p = folder.join(format!("{stem}-{n}.log"));
            std::fs::write(&p, t).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            report.logs.push(p.display().to_string());
        }
    }
    report.passed = summaries.iter().all(|s| s.held);
    report.invariants = summaries;
    report.wall_s = wall.elapsed().as_secs_f64();
    drop(nodes);
    drop(links);
    rt.shutdown_timeout(Duration::from_secs(1));
    if keep {
        let _ = dir.keep();
    }
    Ok(report)
}

/// Every node's driving intervals and adoption times, from the typed events in its data dir
/// (gridvisor-cluster-node's `events::EVENTS_FILE`, appended by each of its processes).
fn node_events(
    names: &[String],
    nodes: &Nodes,
) -> Result<(Vec<check::Interval>, Vec<f64>), String> {
    use gridvisor_cluster_node::events::{read_events, EVENTS_FILE};
    let mut records = Vec::new();
    for n in names {
        let path = nodes.nodes[n].data.join(EVENTS_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{n}: the events file {}: {e}", path.display()))?;
        records.push(read_events(&text).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    let events: Vec<NodeEvents<'_>> = (names.iter().zip(&records))
        .map(|(n, r)| NodeEvents {
            node: n,
            records: r,
            // The last kill is the end of the run: the nodes drove until it.
            kills: &nodes.nodes[n].kills,
        })
        .collect();
    check::intervals(&events)
}

fn checks_majority(
    names: &[String],
    live: &Arc<Mutex<BTreeSet<String>>>,
    links: &Links,
) -> Vec<String> {
    let alive = live.lock().map(|l| l.clone()).unwrap_or_default();
    let reach = Reach::compute(names, &alive, |x, y| links.linked(x, y));
    reach.majority.unwrap_or(alive).into_iter().collect()
}

/// Each charger's applied dispatch id of `segment`, through the first of `via` that answers.
fn read_applied(
    nodes: &Nodes,
    via: &[String],
    segment: &str,
) -> Result<BTreeMap<String, u64>, String> {
    let mut last = String::from("no node to ask");
    for attempt in 0..READ_ATTEMPTS {
        for n in via {
            let path = format!("/api/v1/segments/{segment}");
            match http(nodes.nodes[n].grid, "GET", &path, None, READ_TIMEOUT) {
                Ok((200, body)) => {
                    let v: Value =
                        serde_json::from_str(&body).map_err(|e| format!("{n}{path}: {e}"))?;
                    if v["owned"] == false {
                        last = format!("{n}{path}: answered by a node that does not drive it");
                        continue;
                    }
                    return Ok(v["applied"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, key)| (k.clone(), key["dispatch"].as_u64().unwrap_or(0)))
                                .collect()
                        })
                        .unwrap_or_default());
                }
                Ok((code, body)) => last = format!("{n}{path}: {code} {body}"),
                Err(e) => last = format!("{n}{path}: {e}"),
            }
        }
        if attempt + 1 < READ_ATTEMPTS {
            std::thread::sleep(READ_PAUSE);
        }
    }
    Err(last)
}
