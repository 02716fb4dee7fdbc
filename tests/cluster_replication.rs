//! Replication versions survive restarts (issue 20, item 5), with three real
//! `gridvisor run --cluster` processes on loopback.
//!
//! The owner of some segments is killed with SIGKILL and started again before its lease runs
//! out, so the committed view (its epoch) does not change; it takes its segments back and
//! acknowledges newer setpoints, each only once the segment's replica stored it. Then it is
//! killed for good: the survivors take its segments over from the replicas, and must resume
//! from the newest acknowledged records. Before versions carried the boot number, the
//! restarted process counted its copies from 0 again, the replicas answered them `Ok` and kept
//! the older records, and the failover resumed from those.
//!
//! The lease is long (a restart of a debug build on a loaded machine takes seconds): the test
//! checks that the epoch did not move across the restart, which is what makes it this case.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{try_http, Killed};

/// Every wait here is bounded by this (a failover waits for the long lease below).
const LIMIT: Duration = Duration::from_secs(180);
/// How often the test samples the nodes.
const SAMPLE: Duration = Duration::from_millis(20);
/// The lease of the test's cluster: long enough for a killed node to start again within it.
const LEASE: &str = "[lease]\nheartbeat_ms = 100\ncharge_only_after_ms = 15000\nlease_ms = 25000\n";
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// Setpoints per segment before the restart. The first process must make many more
/// checkpoint writes than the second makes before the failover: a copy counter that began
/// at 0 again would then stay below the first process's (the bug this test guards against).
/// After the restart each segment gets one.
const WRITES_BEFORE: usize = 20;

struct NodeProc {
    grid: String,
    admin: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Killed>,
}

struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<String, NodeProc>,
}

impl Cluster {
    /// Certificates from `gridvisor certs` and a cluster file with [`LEASE`].
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        support::make_certs(&dir.path().join("certs"), &NODES);
        let mut file = format!(
            "cookie_file = \"certs/cookie\"\n{LEASE}[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{{node}}.pem\"\nkey = \"certs/{{node}}-key.pem\"\n"
        );
        let port = || gridvisor_chaos::cluster::run::free_port().expect("a free port");
        let mut nodes = BTreeMap::new();
        for name in NODES {
            let n = NodeProc {
                grid: format!("127.0.0.1:{}", port()),
                admin: format!("127.0.0.1:{}", port()),
                data: dir.path().join(format!("data-{name}")),
                log: dir.path().join(format!("{name}.log")),
                child: None,
            };
            file.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\ncluster = \"127.0.0.1:{}\"\ngrid = \"{}\"\nadmin = \"{}\"\n",
                port(),
                n.grid,
                n.admin
            ));
            nodes.insert(name.to_string(), n);
        }
        std::fs::write(dir.path().join("cluster.toml"), file).unwrap();
        Cluster { dir, nodes }
    }

    fn start(&mut self, name: &str) {
        let file = self.dir.path().join("cluster.toml");
        let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cluster/site.toml");
        let n = self.nodes.get_mut(name).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(site)
            .arg("--cluster")
            .arg(file)
            .args(["--node", name, "--data"])
            .arg(&n.data)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("gridvisor starts");
        n.child = Some(Killed(child));
    }

    /// SIGKILL, no goodbye.
    fn kill(&mut self, name: &str) {
        let mut k = self.nodes.get_mut(name).unwrap().child.take().unwrap();
        k.0.kill().unwrap();
        k.0.wait().unwrap();
    }

    fn status(&self, name: &str) -> Option<Value> {
        let (code, body) = try_http(&self.nodes[name].admin, "GET", "/api/cluster", None).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    fn http(&self, name: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (code, text) = try_http(&self.nodes[name].grid, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {name}{path}: {e}"));
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (code, v)
    }

    fn wait_for<T>(&self, what: &str, mut f: impl FnMut(&Cluster) -> Option<T>) -> T {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(t) = f(self) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.warnings()
            );
            std::thread::sleep(SAMPLE);
        }
    }

    fn warnings(&self) -> String {
        let mut out = String::new();
        for (name, n) in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let loud: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
                .collect();
            out.push_str(&format!("--- {name} (last 15 warnings and errors)\n"));
            for l in &loud[loud.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Segment → the node driving it, and the committed epoch, once `names` agree on being
    /// the members, hold their leases and every segment has one driver.
    fn settled(&self, names: &[&str]) -> Option<(BTreeMap<String, String>, u64)> {
        let mut driver = BTreeMap::new();
        let mut epochs = Vec::new();
        for name in names {
            let s = self.status(name)?;
            let members: Vec<&str> = s["members"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if members != names || s["lease"] != "Driving" || s["lapsed"] == true {
                return None;
            }
            epochs.push(s["epoch"].as_u64()?);
            for seg in s["segments"].as_array()? {
                if seg["driven_here"] == true {
                    let id = seg["segment"].as_str()?.to_string();
                    if driver.insert(id, name.to_string()).is_some() {
                        return None;
                    }
                }
            }
        }
        let same_epoch = epochs.windows(2).all(|w| w[0] == w[1]);
        (driver.len() == 6 && same_epoch).then(|| (driver, epochs[0]))
    }

    /// One setpoint for `segment` through `via`'s API, retried until all three chargers
    /// acknowledged it (an adopted segment's links connect moments after the adoption):
    /// its dispatch id.
    fn dispatch(&self, via: &str, segment: &str, tag: &str) -> u64 {
        let mut attempt = 0;
        self.wait_for(&format!("a setpoint for {segment} acknowledged"), |c| {
            attempt += 1;
            let body = format!(
                r#"{{"id":"{tag}-{attempt}","scope":{{"segment":"{segment}"}},"target_kw":{},"duration_s":600}}"#,
                5 + attempt % 7
            );
            let (code, r) = c.http(via, "POST", "/api/v1/dispatch", Some(&body));
            assert_eq!(code, 200, "{r}");
            (r["acknowledged"].as_u64() == Some(3)).then(|| r["dispatch"].as_u64().unwrap())
        })
    }

    /// Each charger's applied dispatch id of `segment`, as its owner reports it.
    fn applied(&self, via: &str, segment: &str) -> BTreeMap<String, u64> {
        let (code, v) = self.http(via, "GET", &format!("/api/v1/segments/{segment}"), None);
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
}

#[test]
fn an_owner_restarted_within_one_epoch_is_failed_over_from_its_newest_records() {
    let mut c = Cluster::new();
    for n in NODES {
        c.start(n);
    }
    let (driver, epoch) = c.wait_for("three nodes sharing the six segments", |c| {
        c.settled(&NODES)
    });
    let victim = NODES
        .iter()
        .copied()
        .max_by_key(|n| driver.values().filter(|d| d == n).count())
        .unwrap();
    let via = NODES.iter().copied().find(|n| *n != victim).unwrap();
    let moved: Vec<String> = (driver.iter())
        .filter(|(_, d)| d.as_str() == victim)
        .map(|(s, _)| s.clone())
        .collect();
    let before: BTreeMap<&String, u64> = moved
        .iter()
        .map(|s| {
            (
                s,
                (0..WRITES_BEFORE)
                    .map(|i| c.dispatch(via, s, &format!("before-{s}-{i}")))
                    .max()
                    .unwrap(),
            )
        })
        .collect();

    // Killed and started again within its lease: nobody took its segments, the view stands.
    c.kill(victim);
    c.start(victim);
    let (back, epoch_back) = c.wait_for("the restarted owner driving its segments again", |c| {
        c.settled(&NODES)
    });
    assert_eq!(back, driver, "the same map after the restart");
    assert_eq!(
        epoch_back, epoch,
        "the restart must stay within one epoch for this test to mean anything (it took longer than the lease?)"
    );
    // Newer setpoints from the new process, each acknowledged only once the replica stored it.
    let after: BTreeMap<&String, u64> = moved
        .iter()
        .map(|s| (s, c.dispatch(via, s, &format!("after-{s}"))))
        .collect();
    for s in &moved {
        assert!(
            after[s] > before[s],
            "{s}: dispatch ids {} then {}",
            before[s],
            after[s]
        );
    }

    // Killed for good: the survivors adopt its segments from the replicas.
    c.kill(victim);
    let killed = Instant::now();
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != victim).collect();
    let (taken, _) = c.wait_for("the survivors driving every segment", |c| {
        c.settled(&survivors)
    });
    println!(
        "{victim} restarted within epoch {epoch}; its {} segments failed over {:.1} s after the last kill: {taken:?}",
        moved.len(),
        killed.elapsed().as_secs_f64()
    );
    for s in &moved {
        assert_ne!(taken[s], victim);
        let applied = c.applied(via, s);
        assert_eq!(applied.len(), 3, "{s}: {applied:?}");
        for (charger, dispatch) in &applied {
            assert!(
                *dispatch >= after[s],
                "{s}/{charger} resumed from dispatch {dispatch}, older than the {} acknowledged after the restart (before it: {})",
                after[s],
                before[s]
            );
        }
    }
    // Nothing was refused for being stale or unauthorised along the way.
    for n in &survivors {
        let (code, metrics) = try_http(&c.nodes[*n].admin, "GET", "/metrics", None).unwrap();
        assert_eq!(code, 200);
        assert!(
            !metrics.lines().any(|l| l
                .starts_with("gridvisor_cluster_replica_refusals_total{reason=\"stale\"}")
                && !l.ends_with(" 0")),
            "{n} refused stale copies:\n{metrics}"
        );
    }
}
