//! Three real `gridvisor run --cluster` processes: they share the segments of
//! configs/cluster/site.toml out, drive dispatch, survive a node killed with SIGKILL and take
//! it back when it restarts; in network namespaces, a partitioned minority goes to ChargeOnly
//! while the majority takes its segments over, and the partition heals.
//!
//! "At most one node drives a segment" is checked from the nodes' typed events (the events
//! file in each node's data dir, gridvisor-cluster-node's `events`): each node records when
//! it starts adopting a segment and when a release of one has finished, with timestamps from
//! the same machine clock; a node killed with SIGKILL stops at the kill. The intervals of
//! different nodes for one segment must not overlap.
//!
//! The figures (ChargeOnly after a kill, running on the survivors, replication latency) are
//! printed, not asserted tightly: the machines that run this are noisy.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gridvisor_testkit::net::{self, sh};
use serde_json::Value;
use support::{try_http, Killed};

/// The tests of this file run one at a time: each is nine processes' worth of work on a
/// two-core machine, and their figures mean more without the others' load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);
/// How often the tests sample the nodes' views.
const SAMPLE: Duration = Duration::from_millis(10);

/// A free loopback port never handed out before in this test process (the kernel may hand
/// back a port just let go: once two roles got the same one and the nodes refused the file).
fn free_port() -> u16 {
    gridvisor_chaos::cluster::run::free_port().expect("a free port")
}

fn site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cluster/site.toml")
}

/// One node's addresses and process.
struct NodeProc {
    cluster: String,
    grid: String,
    admin: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Killed>,
    /// When it was killed with SIGKILL (seconds since the epoch), for the driving intervals.
    killed_at: Vec<f64>,
}

/// A cluster of real processes, optionally each in its own network namespace.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<String, NodeProc>,
    /// node → the namespace it runs in.
    netns: BTreeMap<String, String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("GRIDVISOR_KEEP_TEST_DIR").is_some() {
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
        }
    }
}

impl Cluster {
    /// Certificates from `gridvisor certs`, a cluster file for `addrs` (name → (cluster
    /// host, api host)), nothing started yet.
    fn new(addrs: &[(&str, &str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        if std::env::var_os("GRIDVISOR_KEEP_TEST_DIR").is_some() {
            eprintln!("test files kept in {}", dir.path().display());
        }
        let names: Vec<&str> = addrs.iter().map(|a| a.0).collect();
        support::make_certs(&dir.path().join("certs"), &names);
        let mut file = String::from(
            "cookie_file = \"certs/cookie\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{node}.pem\"\nkey = \"certs/{node}-key.pem\"\n",
        );
        let mut nodes = BTreeMap::new();
        for (name, cluster_host, api_host) in addrs {
            let loopback = *cluster_host == "127.0.0.1";
            let port = |fixed: u16| if loopback { free_port() } else { fixed };
            let node = NodeProc {
                cluster: format!("{cluster_host}:{}", port(4697)),
                grid: format!("{api_host}:{}", port(9090)),
                admin: format!("{api_host}:{}", port(9464)),
                data: dir.path().join(format!("data-{name}")),
                log: dir.path().join(format!("{name}.log")),
                child: None,
                killed_at: Vec::new(),
            };
            file.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\ncluster = \"{}\"\ngrid = \"{}\"\nadmin = \"{}\"\n",
                node.cluster, node.grid, node.admin
            ));
            nodes.insert(name.to_string(), node);
        }
        std::fs::write(dir.path().join("cluster.toml"), file).unwrap();
        Cluster {
            dir,
            nodes,
            netns: BTreeMap::new(),
        }
    }

    fn start(&mut self, name: &str) {
        self.start_with(name, &[], None);
    }

    /// Start `name` with extra environment variables and, optionally, another cluster file.
    fn start_with(&mut self, name: &str, env: &[(&str, &str)], file: Option<&Path>) {
        let file = file.map_or_else(|| self.dir.path().join("cluster.toml"), Path::to_path_buf);
        let n = self.nodes.get_mut(name).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let mut cmd = match self.netns.get(name) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_gridvisor")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_gridvisor")),
        };
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(site())
            .arg("--cluster")
            .arg(&file)
            .args(["--node", name, "--data"])
            .arg(&n.data)
            // In the test's own network namespaces the APIs listen off loopback, on a link
            // only the test reaches.
            .args(
                self.netns
                    .contains_key(name)
                    .then_some("--insecure-no-auth"),
            )
            .env("RUST_LOG", "info,openraft=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        n.child = Some(Killed(cmd.spawn().expect("gridvisor starts")));
    }

    /// SIGKILL, no goodbye.
    fn kill(&mut self, name: &str) -> Instant {
        let n = self.nodes.get_mut(name).unwrap();
        let mut k = n.child.take().expect("running");
        k.0.kill().unwrap();
        let at = Instant::now();
        n.killed_at.push(now_epoch());
        k.0.wait().unwrap();
        at
    }

    fn status(&self, name: &str) -> Option<Value> {
        let (code, body) = try_http(&self.nodes[name].admin, "GET", "/api/cluster", None).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    fn http(&self, name: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (code, text) = try_http(&self.nodes[name].grid, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {name}{path}: {e}"));
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn wait_for<T>(&self, what: &str, f: impl FnMut(&Cluster) -> Option<T>) -> T {
        self.wait_for_or(what, f, String::new)
    }

    /// [`Cluster::wait_for`], and on a timeout what `last` says about the last try.
    fn wait_for_or<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&Cluster) -> Option<T>,
        last: impl Fn() -> String,
    ) -> T {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(t) = f(self) {
                return t;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n{}\n{}",
                    last(),
                    self.logs_tail()
                );
            }
            std::thread::sleep(SAMPLE);
        }
    }

    /// Which node drives each segment, once `names` agree on `members`, hold their leases
    /// and every segment is driven by exactly one of them.
    fn settled(&self, names: &[&str], members: &[&str]) -> Option<BTreeMap<String, String>> {
        let mut driver = BTreeMap::new();
        for name in names {
            let s = self.status(name)?;
            let m: Vec<&str> = s["members"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            // A lapsed lease drives nothing: its segments are still being released.
            if m != members || s["lease"] != "Driving" || s["lapsed"] == true {
                return None;
            }
            for seg in s["segments"].as_array()? {
                if seg["driven_here"] == true {
                    let id = seg["segment"].as_str()?.to_string();
                    if driver.insert(id, name.to_string()).is_some() {
                        return None;
                    }
                }
            }
        }
        (driver.len() == 6).then_some(driver)
    }

    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for (name, n) in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            // Warnings and errors say why; the last lines say where it was.
            let loud: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
                .collect();
            out.push_str(&format!("--- {name} (last 15 warnings and errors)\n"));
            for l in &loud[loud.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name} (last 5 lines)\n"));
            for l in &lines[lines.len().saturating_sub(5)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Every node's driving intervals per segment, from its typed events (the events file
    /// in its data dir, never log text); panics on an overlap of two nodes' intervals for one
    /// segment. Returns the handoffs checked.
    fn assert_one_driver_per_segment(&self) -> usize {
        use gridvisor_chaos::cluster::check::{intervals, NodeEvents};
        use gridvisor_cluster_node::events::{read_events, EVENTS_FILE};
        let records: Vec<(String, Vec<_>)> = (self.nodes.iter())
            .map(|(name, n)| {
                let path = n.data.join(EVENTS_FILE);
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let r = read_events(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (name.clone(), r)
            })
            .collect();
        let nodes: Vec<NodeEvents<'_>> = (records.iter())
            .map(|(name, r)| NodeEvents {
                node: name,
                records: r,
                kills: &self.nodes[name].killed_at,
            })
            .collect();
        let (found, _) = intervals(&nodes).unwrap_or_else(|e| panic!("{e}"));
        let mut by: BTreeMap<String, Vec<(f64, f64, String)>> = BTreeMap::new();
        for i in found {
            by.entry(i.segment)
                .or_default()
                .push((i.from, i.to, i.node));
        }
        let mut checked = 0;
        for (seg, mut list) in by {
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            for w in list.windows(2) {
                let (a, b) = (&w[0], &w[1]);
                assert!(
                    a.2 == b.2 || a.1 <= b.0,
                    "{seg} driven by {} ({:.3}..{:.3}) and {} ({:.3}..{:.3}) at once",
                    a.2,
                    a.0,
                    a.1,
                    b.2,
                    b.0,
                    b.1
                );
                checked += 1;
            }
        }
        checked
    }
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The segments of `driver` that `node` drives.
fn segments_of(driver: &BTreeMap<String, String>, node: &str) -> Vec<String> {
    driver
        .iter()
        .filter(|(_, n)| n.as_str() == node)
        .map(|(s, _)| s.clone())
        .collect()
}

/// Each charger's applied key of `segment` as its owner reports it.
fn applied_dispatch(c: &Cluster, via: &str, segment: &str) -> BTreeMap<String, u64> {
    let (code, v) = c.http(via, "GET", &format!("/api/v1/segments/{segment}"), None);
    assert_eq!(code, 200, "{v}");
    v["applied"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, key)| (k.clone(), key["dispatch"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_processes_share_fail_over_and_rebalance() {
    let _one_at_a_time = serial();
    let mut c = Cluster::new(&[
        ("node-a", "127.0.0.1", "127.0.0.1"),
        ("node-b", "127.0.0.1", "127.0.0.1"),
        ("node-c", "127.0.0.1", "127.0.0.1"),
    ]);
    for n in ["node-a", "node-b", "node-c"] {
        c.start(n);
    }
    let all = ["node-a", "node-b", "node-c"];
    let driver = c.wait_for("three nodes sharing the six segments", |c| {
        c.settled(&all, &all)
    });
    println!("segments at start: {driver:?}");

    // A site request on any node reaches every segment, each owner with its share (an
    // adopted segment's links connect moments after its adoption: retried until every
    // charger of the site acknowledged).
    let mut attempt = 0;
    let last = std::cell::RefCell::new(Value::Null);
    let receipt = c.wait_for_or(
        "a site request acknowledged by all 18 chargers",
        |c| {
            attempt += 1;
            let body = format!(
                r#"{{"id":"site-{attempt}","scope":"site","target_kw":30,"duration_s":600}}"#
            );
            let (code, receipt) = c.http("node-b", "POST", "/api/v1/dispatch", Some(&body));
            assert_eq!(code, 200, "{receipt}");
            if receipt["acknowledged"] == 18 {
                return Some(receipt);
            }
            *last.borrow_mut() = receipt;
            None
        },
        || format!("the last receipt: {}", last.borrow()),
    );
    assert_eq!(
        receipt["segments"].as_array().unwrap().len(),
        6,
        "{receipt}"
    );
    assert_eq!(receipt["nodes"].as_object().unwrap().len(), 3, "{receipt}");

    // The node with the most segments is the victim. Requests for its segments, through
    // another node's API, move its dispatch ids well past the others': after the failover,
    // keys that high on a survivor can only come from the replicated checkpoints.
    let victim = all
        .iter()
        .max_by_key(|n| segments_of(&driver, n).len())
        .unwrap()
        .to_string();
    let survivors: Vec<&str> = all.iter().copied().filter(|n| *n != victim).collect();
    let moved = segments_of(&driver, &victim);
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..30 {
        let seg = &moved[i % moved.len()];
        let body = format!(
            r#"{{"id":"seg-{i}","scope":{{"segment":"{seg}"}},"target_kw":{},"duration_s":600}}"#,
            5 + i % 7
        );
        let (code, r) = c.http(survivors[0], "POST", "/api/v1/dispatch", Some(&body));
        assert_eq!(code, 200, "{r}");
        if r["acknowledged"].as_u64() == Some(3) {
            acked.insert(seg.clone(), r["dispatch"].as_u64().unwrap());
        }
    }
    assert_eq!(
        acked.len(),
        moved.len(),
        "every moved segment acknowledged a setpoint"
    );
    let own_ids = applied_dispatch(&c, survivors[0], &segments_of(&driver, survivors[0])[0]);
    let replication = c.status(&victim).unwrap()["replication"].clone();

    // Kill it.
    let killed = c.kill(&victim);
    let mut charge_only = None;
    let running = c.wait_for("the survivors driving the victim's segments", |c| {
        let statuses: Vec<Value> = survivors.iter().filter_map(|n| c.status(n)).collect();
        if statuses.len() != 2 {
            return None;
        }
        let state = |seg: &str| -> Vec<Value> {
            statuses
                .iter()
                .map(|s| {
                    s["segments"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|x| x["segment"] == seg)
                        .cloned()
                        .unwrap()
                })
                .collect()
        };
        if charge_only.is_none()
            && moved.iter().all(|seg| {
                state(seg)
                    .iter()
                    .any(|x| x["state"] == "charge_only" || x["driven_here"] == true)
            })
        {
            charge_only = Some(killed.elapsed());
        }
        moved
            .iter()
            .all(|seg| {
                state(seg)
                    .iter()
                    .filter(|x| x["driven_here"] == true)
                    .count()
                    == 1
            })
            .then(|| killed.elapsed())
    });
    let charge_only = charge_only.unwrap_or(running);
    println!(
        "cluster figures: node {victim} killed (SIGKILL) with {} segments: ChargeOnly (no discharge, not driven) seen on the survivors after {:.0} ms, running on the survivors after {:.0} ms; replication before acknowledgement (on {victim}): {replication}",
        moved.len(),
        charge_only.as_secs_f64() * 1e3,
        running.as_secs_f64() * 1e3
    );
    let members: Vec<&str> = survivors.clone();
    let after_kill = c.wait_for("two members settled", |c| c.settled(&survivors, &members));

    // No acknowledged setpoint lost: the new owners know the victim's keys.
    for seg in &moved {
        let applied = applied_dispatch(&c, survivors[1], seg);
        assert_eq!(applied.len(), 3, "{seg}: {applied:?}");
        for (charger, dispatch) in &applied {
            assert!(
                *dispatch >= acked[seg],
                "{seg}/{charger}: applied dispatch {dispatch} is older than the acknowledged {} (the survivors' own ids were {own_ids:?})",
                acked[seg]
            );
        }
    }

    // The victim comes back: it is re-admitted and takes its segments back through a
    // handback (rendezvous hashing gives it the same ones).
    c.start(&victim);
    let back = c.wait_for("three members again", |c| c.settled(&all, &all));
    assert_eq!(back, driver, "the same map as before the kill");
    let checked = c.assert_one_driver_per_segment();
    assert!(
        checked >= moved.len() * 2,
        "handoffs seen in the logs: {checked}"
    );
    println!("after kill: {after_kill:?}; back: {back:?}; handoffs checked: {checked}");

    // Every node answers for the whole site.
    let (code, tree) = {
        let (code, body) = try_http(&c.nodes["node-a"].admin, "GET", "/api/tree", None).unwrap();
        (code, serde_json::from_str::<Value>(&body).unwrap())
    };
    assert_eq!(code, 200);
    let kids: Vec<&str> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["path"].as_str())
        .collect();
    assert_eq!(kids, ["cluster/node-a", "cluster/node-b", "cluster/node-c"]);
    let (code, segs) = c.http("node-c", "GET", "/api/v1/segments", None);
    assert_eq!(code, 200);
    assert!(
        segs.as_array().unwrap().iter().all(|s| s["owned"] == true),
        "{segs}"
    );
}

/// Namespaces gv<tag>-<n> with a cluster link (10.77.1.n, bridge gv<tag>c) and an API link
/// (10.77.2.n, bridge gv<tag>a, reachable from the test at 10.77.2.254); removed on drop.
struct Netns {
    tag: String,
    count: usize,
}

impl Netns {
    fn new(count: usize) -> Netns {
        let tag = format!("{}", std::process::id() % 10_000);
        let n = Netns { tag, count };
        let t = &n.tag;
        sh(&["ip", "link", "add", &format!("gv{t}c"), "type", "bridge"]);
        sh(&["ip", "link", "set", &format!("gv{t}c"), "up"]);
        sh(&["ip", "link", "add", &format!("gv{t}a"), "type", "bridge"]);
        sh(&[
            "ip",
            "addr",
            "add",
            "10.77.2.254/24",
            "dev",
            &format!("gv{t}a"),
        ]);
        sh(&["ip", "link", "set", &format!("gv{t}a"), "up"]);
        for i in 1..=count {
            let ns = n.ns(i);
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            for (kind, net) in [("c", 1), ("a", 2)] {
                let host = format!("gv{t}{kind}{i}");
                sh(&[
                    "ip",
                    "link",
                    "add",
                    &host,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("eth{kind}"),
                    "netns",
                    &ns,
                ]);
                sh(&[
                    "ip",
                    "link",
                    "set",
                    &host,
                    "master",
                    &format!("gv{t}{kind}"),
                    "up",
                ]);
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "ip",
                    "addr",
                    "add",
                    &format!("10.77.{net}.{i}/24"),
                    "dev",
                    &format!("eth{kind}"),
                ]);
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "ip",
                    "link",
                    "set",
                    &format!("eth{kind}"),
                    "up",
                ]);
            }
        }
        n
    }

    fn ns(&self, i: usize) -> String {
        format!("gv{}-{i}", self.tag)
    }

    /// Cut (or restore) node `i`'s cluster link: its API link stays, so the test still sees it.
    fn cluster_link(&self, i: usize, up: bool) {
        let host = format!("gv{}c{i}", self.tag);
        sh(&["ip", "link", "set", &host, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 1..=self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        for b in ["c", "a"] {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("gv{}{b}", self.tag)])
                .status();
        }
    }
}

#[test]
fn a_partitioned_minority_goes_to_charge_only_and_the_majority_takes_over() {
    let _one_at_a_time = serial();
    if gridvisor_testkit::probe(&gridvisor_testkit::needs::NETNS, net::netns_available()).is_none()
    {
        return;
    }
    let net = Netns::new(3);
    let mut c = Cluster::new(&[
        ("node-a", "10.77.1.1", "10.77.2.1"),
        ("node-b", "10.77.1.2", "10.77.2.2"),
        ("node-c", "10.77.1.3", "10.77.2.3"),
    ]);
    for (i, n) in ["node-a", "node-b", "node-c"].iter().enumerate() {
        c.netns.insert(n.to_string(), net.ns(i + 1));
        c.start(n);
    }
    let all = ["node-a", "node-b", "node-c"];
    let driver = c.wait_for("three nodes in namespaces sharing the segments", |c| {
        c.settled(&all, &all)
    });
    // Cut off the node with the most segments; the other two are the majority.
    let (minority_index, minority) = all
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| segments_of(&driver, n).len())
        .map(|(i, n)| (i + 1, n.to_string()))
        .unwrap();
    let majority: Vec<&str> = all.iter().copied().filter(|n| *n != minority).collect();
    let moved = segments_of(&driver, &minority);
    net.cluster_link(minority_index, false);
    let cut = Instant::now();

    // The minority puts its segments in ChargeOnly (its lease is ageing) and then stops them.
    let charge_only = c.wait_for("the minority in ChargeOnly", |c| {
        let s = c.status(&minority)?;
        let segs = s["segments"].as_array()?;
        let all_co = moved.iter().all(|m| {
            segs.iter().any(|x| {
                x["segment"] == m.as_str()
                    && (x["state"] == "charge_only" || x["driven_here"] == false)
            })
        });
        (s["lease"] != "Driving" && all_co).then(|| cut.elapsed())
    });
    for m in &moved {
        let (code, v) = c.http(&minority, "GET", &format!("/api/v1/segments/{m}"), None);
        // The minority answers for its own segments from its own state while cut off.
        if code == 200 && v["owned"] == true {
            assert_ne!(
                v["level"]["level"], "normal",
                "{m} still normal on the minority: {v}"
            );
        }
    }
    let taken = c.wait_for("the majority driving the minority's segments", |c| {
        c.settled(&majority, &majority).map(|_| cut.elapsed())
    });
    println!(
        "partition figures: {minority} cut off with {} segments: its lease left Driving after {:.0} ms; the majority drove them after {:.0} ms",
        moved.len(),
        charge_only.as_secs_f64() * 1e3,
        taken.as_secs_f64() * 1e3
    );

    // Heal: the minority is re-admitted and takes its segments back.
    net.cluster_link(minority_index, true);
    let back = c.wait_for("the healed cluster", |c| c.settled(&all, &all));
    assert_eq!(back, driver);
    let checked = c.assert_one_driver_per_segment();
    assert!(
        checked >= moved.len() * 2,
        "handoffs seen in the logs: {checked}"
    );
}

/// A peer with the wrong cookie, or with a certificate from another CA, cannot join: the
/// other two run the site without it, it drives nothing and is not ready, and the nodes say
/// why in their logs. With the right ones it joins.
#[test]
fn rejected_peers_cannot_join() {
    let _one_at_a_time = serial();
    let mut c = Cluster::new(&[
        ("node-a", "127.0.0.1", "127.0.0.1"),
        ("node-b", "127.0.0.1", "127.0.0.1"),
        ("node-c", "127.0.0.1", "127.0.0.1"),
    ]);
    c.start("node-a");
    c.start("node-b");
    let two = ["node-a", "node-b"];
    let outsider_is_out = |c: &Cluster, why: &str| {
        c.wait_for(why, |c| {
            let map = c.settled(&two, &two)?;
            let s = c.status("node-c")?;
            let drives = s["segments"]
                .as_array()?
                .iter()
                .any(|x| x["driven_here"] == true);
            let (ready, _) = try_http(&c.nodes["node-c"].admin, "GET", "/api/ready", None).ok()?;
            (!drives && s["lease"] != "Driving" && ready == 503).then_some(map)
        })
    };
    let log_of =
        |c: &Cluster, n: &str| std::fs::read_to_string(&c.nodes[n].log).unwrap_or_default();

    // The wrong cookie (GRIDVISOR_COOKIE overrides the cookie file).
    c.start_with(
        "node-c",
        &[("GRIDVISOR_COOKIE", "not-the-cluster-cookie-at-all")],
        None,
    );
    outsider_is_out(&c, "a and b without c (wrong cookie)");
    c.wait_for("a's log naming the cookie", |c| {
        log_of(c, "node-a")
            .contains("\\\"node-c\\\" presented a wrong cookie")
            .then_some(())
    });
    c.kill("node-c");

    // A certificate from another CA: its own `gridvisor certs` run.
    let other = c.dir.path().join("other");
    support::make_certs(&other.join("certs"), &["node-a", "node-b", "node-c"]);
    // The right cookie, the wrong CA.
    std::fs::copy(
        c.dir.path().join("certs/cookie"),
        other.join("certs/cookie"),
    )
    .unwrap();
    let text = std::fs::read_to_string(c.dir.path().join("cluster.toml")).unwrap();
    std::fs::write(other.join("cluster.toml"), text).unwrap();
    c.start_with("node-c", &[], Some(&other.join("cluster.toml")));
    outsider_is_out(&c, "a and b without c (foreign CA)");
    c.wait_for("a's log naming the untrusted certificate", |c| {
        log_of(c, "node-a").contains("UnknownIssuer").then_some(())
    });
    c.kill("node-c");

    // The right cookie and certificate: it joins.
    c.start("node-c");
    let all = ["node-a", "node-b", "node-c"];
    c.wait_for("c admitted", |c| c.settled(&all, &all));
    c.assert_one_driver_per_segment();
}
