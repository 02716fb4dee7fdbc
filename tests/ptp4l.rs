//! The clock source against a real ptp4l: two network namespaces joined by a veth pair, a
//! `ptp4l -S` grandmaster in one, a `ptp4l -S` slave with `free_running 1` (it measures and
//! never steers the host's clock, so its port stays UNCALIBRATED) in the other, and a real
//! `gridvisor run` process whose `[safety.clock]` reads the slave's management socket.
//! Through `/api/v1/segments` and `/metrics`:
//!
//! - (a) the slave synchronised → Normal;
//! - (c) the grandmaster killed → unsynchronised → ChargeOnly;
//! - (d) the grandmaster back → Normal after the hold;
//! - (b) the slave restarted with `delayAsymmetry 3000000` (real ptp4l then measures about
//!   −3 ms) → ChargeOnly; with 150 ms → Tripped.
//!
//! (d) must start from ChargeOnly (leaving Tripped may come to need an operator reset), so
//! (b) runs last. Needs root, `ip netns` and linuxptp; without them the test says so and
//! returns, unless `GRIDVISOR_REQUIRE_PTP=1`. Every wait is a bounded poll.
//!
//! The other tests: `source = "none"` said in the banner, the API and the metric; the
//! check-config warning for real devices without `[safety.clock]`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gridvisor_testkit::net::sh;
use serde_json::Value;
use support::{addr_of, stdout_lines, try_http, Killed, LIMIT};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);
/// The node's hold time, s (short, so that (d) does not wait five minutes).
const HOLD_S: u64 = 2;

/// Whether ptp4l and network namespaces are here; a reason when not.
fn ptp_available() -> Result<(), String> {
    let ptp4l = gridvisor_testkit::find_executable(&["ptp4l"])?;
    let v = Command::new(&ptp4l)
        .arg("-v")
        .output()
        .map_err(|e| format!("{}: {e}", ptp4l.display()))?;
    if !v.status.success() {
        return Err("ptp4l -v failed".into());
    }
    gridvisor_testkit::net::netns_available()
}

/// True (after the skip is recorded) when ptp4l or network namespaces are missing; a failure
/// instead with `GRIDVISOR_REQUIRE_PTP=1` or `GRIDVISOR_REQUIRE_ALL=1`.
fn skip_unless_required() -> bool {
    gridvisor_testkit::probe(&gridvisor_testkit::needs::PTP, ptp_available()).is_none()
}

/// Two namespaces (grandmaster, slave) joined by a veth pair, 10.78.0.1 and .2; removed on
/// drop. Names carry the pid, so two runs on one host do not collide.
struct Netns {
    tag: u32,
}

impl Netns {
    fn new() -> Netns {
        let n = Netns {
            tag: std::process::id() % 100_000,
        };
        let (gm, sl) = (n.ns("gm"), n.ns("sl"));
        let (a, b) = (n.dev("a"), n.dev("b"));
        for ns in [&gm, &sl] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        for (dev, ns, ip) in [(&a, &gm, "10.78.0.1/24"), (&b, &sl, "10.78.0.2/24")] {
            sh(&["ip", "link", "set", dev, "netns", ns]);
            sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        n
    }

    fn ns(&self, role: &str) -> String {
        format!("gvptp{}-{role}", self.tag)
    }

    /// An interface name (at most 15 bytes).
    fn dev(&self, end: &str) -> String {
        format!("gvp{}{end}", self.tag)
    }

    /// `ptp4l -S` on the `role` side ("gm" on interface a, "sl" on b) with `config`.
    fn ptp4l(&self, role: &str, config: &Path) -> Killed {
        let dev = self.dev(if role == "gm" { "a" } else { "b" });
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(role),
                "ptp4l",
                "-S",
                "-i",
                &dev,
                "-f",
            ])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ptp4l starts");
        Killed(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for role in ["gm", "sl"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

/// A ptp4l config: the intervals of the issue, its socket at `uds`, more for the slave.
fn ptp4l_config(dir: &Path, name: &str, uds: &Path, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "[global]\nlogAnnounceInterval 0\nlogSyncInterval -2\nannounceReceiptTimeout 3\n\
         uds_address {}\n{extra}",
        uds.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn slave_config(dir: &Path, uds: &Path, asymmetry_ns: u64) -> PathBuf {
    let extra = format!("slaveOnly 1\nfree_running 1\ndelayAsymmetry {asymmetry_ns}\n");
    ptp4l_config(dir, &format!("slave-{asymmetry_ns}.cfg"), uds, &extra)
}

/// One segment with a simulated meter, no keep-alive needed, a short hold, and `clock`.
fn topology(dir: &Path, clock: &str) -> PathBuf {
    let path = dir.join("site.toml");
    let text = format!(
        "[site]\nid = \"ptp-site\"\nkeepalive_required = false\n\n[safety]\nhold_s = {HOLD_S}\n\n\
         {clock}\n\n[[substations]]\nid = \"sub-1\"\n[[substations.segments]]\nid = \"tx-1\"\n\
         rated_kw = 100\n[[substations.segments.meters]]\nid = \"m-1\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `gridvisor run --config` as a process; its stdout lines read on a thread.
struct NodeProcess {
    _child: Killed,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl NodeProcess {
    fn start(config: &Path, data: &Path) -> NodeProcess {
        let mut child: Child = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
            .args(["run", "--grid", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gridvisor starts");
        let lines = stdout_lines(&mut child);
        NodeProcess {
            _child: Killed(child),
            lines,
            seen: Vec::new(),
        }
    }

    fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => {
                    self.seen.push(l.clone());
                    return l;
                }
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("no line with {needle:?}:\n{}", self.seen.join("\n")),
            }
        }
    }
}

/// The segment tx-1 as the grid API shows it.
fn segment(grid: &str) -> Option<Value> {
    let (status, body) = try_http(grid, "GET", "/api/v1/segments", None).ok()?;
    (status == 200).then_some(())?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v.as_array()?.first().cloned()
}

/// Poll tx-1 until `ok` holds; the last view on failure.
fn wait_for(grid: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LIMIT;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(s) = segment(grid) {
            if ok(&s) {
                return s;
            }
            last = s;
        }
        std::thread::sleep(POLL);
    }
    panic!("{what}: not within {LIMIT:?}; last view: {last}");
}

fn level(s: &Value) -> &str {
    s["level"]["level"].as_str().unwrap_or("")
}

fn has_cause(s: &Value, cause: &str) -> bool {
    s["causes"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x == cause))
}

fn metric(admin: &str, name: &str) -> Option<f64> {
    let (_, body) = try_http(admin, "GET", "/metrics", None).ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_real_ptp4l_moves_the_ladder_through_sync_loss_recovery_and_drift() {
    if skip_unless_required() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Netns::new();
    let (gm_sock, sl_sock) = (dir.path().join("gm.sock"), dir.path().join("sl.sock"));
    let gm_cfg = ptp4l_config(dir.path(), "gm.cfg", &gm_sock, "priority1 10\n");
    let mut gm = Some(net.ptp4l("gm", &gm_cfg));
    let mut slave = Some(net.ptp4l("sl", &slave_config(dir.path(), &sl_sock, 0)));
    let clock = format!(
        "[safety.clock]\nsource = \"ptp4l\"\npath = \"{}\"\npoll_ms = 100\nstale_ms = 1500\n\
         timeout_ms = 100\naccept_uncalibrated = true\nsocket_dir = \"{}\"",
        sl_sock.display(),
        dir.path().display()
    );
    let config = topology(dir.path(), &clock);
    let mut node = NodeProcess::start(&config, &dir.path().join("data"));
    let banner = node.line("clock ");
    assert!(banner.contains("source ptp4l at"), "{banner}");
    let grid = addr_of(&node.line("grid API"));
    let admin = addr_of(&node.line("metrics"));

    // (a) Synchronised (UNCALIBRATED accepted: free_running) → Normal.
    let s = wait_for(&grid, "(a) synchronised and Normal", |s| {
        s["clock"]["status"] == "synchronised" && level(s) == "normal"
    });
    assert_eq!(s["clock"]["source"], "ptp4l");
    let offset = s["clock"]["offset_ns"].as_i64().unwrap();
    assert!(offset.abs() < 1_000_000, "{s}");
    assert_eq!(metric(&admin, "gridvisor_clock_synchronised"), Some(1.0));
    assert_eq!(
        metric(&admin, "gridvisor_clock_source{source=\"ptp4l\"}"),
        Some(1.0)
    );

    // (c) The grandmaster killed: no new Sync, then LISTENING → ChargeOnly, for that cause.
    drop(gm.take());
    let s = wait_for(&grid, "(c) unsynchronised and ChargeOnly", |s| {
        s["clock"]["status"] == "unsynchronised" && level(s) == "charge_only"
    });
    assert!(has_cause(&s, "clock_unsynchronised"), "{s}");
    assert!(!has_cause(&s, "clock_drift"), "{s}");
    assert_eq!(metric(&admin, "gridvisor_clock_synchronised"), Some(0.0));
    assert!(metric(&admin, "gridvisor_clock_offset_seconds").is_some_and(f64::is_nan));

    // (d) The grandmaster back → synchronised, then Normal only after the hold.
    gm = Some(net.ptp4l("gm", &gm_cfg));
    let synced = wait_for(&grid, "(d) synchronised again", |s| {
        s["clock"]["status"] == "synchronised"
    });
    let since = Instant::now();
    assert_eq!(level(&synced), "charge_only", "held: {synced}");
    wait_for(&grid, "(d) Normal after the hold", |s| level(s) == "normal");
    assert!(
        since.elapsed() >= Duration::from_secs(HOLD_S) - Duration::from_millis(500),
        "Normal {:?} after synchronised, hold {HOLD_S} s",
        since.elapsed()
    );

    // (b) The slave restarted with a 3 ms path asymmetry → about −3 ms → ChargeOnly.
    drop(slave.take());
    slave = Some(net.ptp4l("sl", &slave_config(dir.path(), &sl_sock, 3_000_000)));
    let s = wait_for(&grid, "(b) 3 ms offset and ChargeOnly", |s| {
        s["clock"]["offset_ns"]
            .as_i64()
            .is_some_and(|o| o.abs() > 2_000_000)
            && level(s) == "charge_only"
            && has_cause(s, "clock_drift")
    });
    let o = s["clock"]["offset_ns"].as_i64().unwrap();
    assert!((2_500_000..3_500_000).contains(&o.abs()), "{s}");
    let m = metric(&admin, "gridvisor_clock_offset_seconds").unwrap();
    assert!((0.0025..0.0035).contains(&m.abs()), "{m}");
    // ... and with 150 ms → Tripped.
    drop(slave.take());
    slave = Some(net.ptp4l("sl", &slave_config(dir.path(), &sl_sock, 150_000_000)));
    let s = wait_for(&grid, "(b) 150 ms offset and Tripped", |s| {
        level(s) == "tripped"
    });
    assert!(has_cause(&s, "clock_drift"), "{s}");
    drop((slave, gm));
}

#[test]
fn source_none_is_said_in_the_banner_the_api_and_the_metric() {
    let dir = tempfile::tempdir().unwrap();
    let config = topology(dir.path(), "[safety.clock]\nsource = \"none\"");
    let mut node = NodeProcess::start(&config, &dir.path().join("data"));
    let banner = node.line("clock ");
    assert!(
        banner.contains("source none") && banner.contains("OFF"),
        "{banner}"
    );
    let grid = addr_of(&node.line("grid API"));
    let admin = addr_of(&node.line("metrics"));
    let s = wait_for(&grid, "the segment", |s| level(s) == "normal");
    assert_eq!(s["clock"]["source"], "none");
    assert_eq!(s["clock"]["status"], "off");
    assert_eq!(
        metric(&admin, "gridvisor_clock_source{source=\"none\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&admin, "gridvisor_clock_synchronised"), Some(0.0));
}

#[test]
fn check_config_warns_about_real_devices_without_a_clock_source() {
    let dir = tempfile::tempdir().unwrap();
    // check-config reads the topology only; the credentials file is read by the CSMS.
    let real = topology(
        dir.path(),
        "[ocpp]\nlisten = \"127.0.0.1:0\"\npasswords = \"stations.cred\"",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .arg("check-config")
        .arg(&real)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: safety.clock:") && stdout.contains("PTP rows"),
        "{stdout}"
    );
    let named = topology(
        dir.path(),
        "[ocpp]\nlisten = \"127.0.0.1:0\"\npasswords = \"stations.cred\"\n[safety.clock]\nsource = \"ptp4l\"",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .arg("check-config")
        .arg(&named)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("warning"),
        "{stdout}"
    );
}
