//! deploy/: the Grafana dashboard and the Prometheus rules and configuration, checked by
//! promtool, against the /metrics of a running node, and by a real Prometheus server that
//! scrapes a node and evaluates the rules.
//!
//! promtool and prometheus come from Debian's `prometheus` package. CI installs it and sets
//! GRIDVISOR_REQUIRE_PROMTOOL=1, so that a missing tool fails there (as in e2e_http.rs);
//! elsewhere the tests that need one say so and skip.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gridvisor_actors::ladder::{FaultKey, SafeState};
use serde_json::Value;
use support::{try_http, DemoNode, Killed, LIMIT};

/// How long a real Prometheus gets to show what the tests look for.
const PROMETHEUS_LIMIT: Duration = Duration::from_secs(30);
/// Polling period of the bounded waits for a condition.
const POLL: Duration = Duration::from_millis(200);

/// Families whose series exist only once something happened (their first sample is created by
/// the event), so a healthy node's /metrics does not show them. Each must be registered in the
/// named source file.
/// (name, file, the file's text, the literal that registers it there). The supervision
/// families are written as `DEFAULT_PREFIX` + `_` + their suffix.
const EVENT_ONLY: &[(&str, &str, &str, &str)] = &[(
    "gridvisor_supervisor_intensity_exceeded_total",
    "supervisors/src/metrics.rs",
    include_str!("../supervisors/src/metrics.rs"),
    "\"supervisor_intensity_exceeded_total\"",
)];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A command of Debian's prometheus package, or None (with a note) when it is not installed
/// and GRIDVISOR_REQUIRE_PROMTOOL is not set.
fn tool(name: &str) -> Option<Command> {
    gridvisor_testkit::tool(&gridvisor_testkit::needs::PROMTOOL, &[name]).map(Command::new)
}

fn promtool(args: &[&str]) {
    let Some(mut cmd) = tool("promtool") else {
        return;
    };
    let out = cmd.args(args).output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_the_config() {
    let rules = deploy("prometheus/alerts.yml");
    let tests = deploy("prometheus/alerts_test.yml");
    promtool(&["check", "rules", rules.to_str().unwrap()]);
    // promtool wants the credential files to exist: the shipped config with its two paths
    // pointed at files here (and the rules by absolute path).
    let dir = tempfile::tempdir().unwrap();
    let (token, ca) = (dir.path().join("token"), dir.path().join("ca.pem"));
    std::fs::write(&token, "a-token\n").unwrap();
    std::fs::write(&ca, "").unwrap();
    let shipped = read(&deploy("prometheus/prometheus.yml"));
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, with_files(&shipped, &token, &ca)).unwrap();
    promtool(&["check", "config", config.to_str().unwrap()]);
    // The rules fire on synthetic series as alerts_test.yml expects, and only then.
    promtool(&["test", "rules", tests.to_str().unwrap()]);
}

/// Every `gridvisor_*` name in `text`.
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(at) = rest.find("gridvisor_") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            into.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
}

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    let path = deploy("grafana/gridvisor.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a Grafana value mapping shows for a level, as the dashboard says.
fn level_names() -> [(SafeState, &'static str); 4] {
    [
        (SafeState::Normal, "Normal"),
        (SafeState::Limited { cap_kw: 1.0 }, "Limited"),
        (SafeState::ChargeOnly, "ChargeOnly"),
        (SafeState::Tripped, "Tripped"),
    ]
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_the_nodes_encodings() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    assert_eq!(d["title"], "gridvisor");
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "{p}");
        titles.push(p["title"].as_str().unwrap().to_string());
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{t}");
        }
        // Panels sit on Grafana's 24-column grid.
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{g}"
        );
    }
    for wanted in [
        "Site power vs target",
        "power vs limits",
        "Safe-state levels per segment",
        "Restarts per second",
        "Messages per actor",
        "Dispatch latency",
        "Safe-state change → every device commanded",
        "OCPP chargers connected",
        "Supervisors that gave up",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel {wanted:?} in {titles:?}"
        );
    }

    // Every panel that shows gridvisor_segment_safe_state maps the node's encoding
    // (SafeState::severity) to the level's name.
    let mut level_panels = 0;
    for p in panels {
        if !p["targets"]
            .to_string()
            .contains("gridvisor_segment_safe_state")
        {
            continue;
        }
        level_panels += 1;
        let mappings = &p["fieldConfig"]["defaults"]["mappings"][0];
        assert_eq!(mappings["type"], "value", "{}", p["title"]);
        for (state, name) in level_names() {
            let m = &mappings["options"][state.severity().to_string()];
            assert_eq!(m["text"], name, "{}: {state}", p["title"]);
        }
    }
    assert!(level_panels >= 2, "the levels are shown now and over time");
}

#[test]
fn the_alerts_use_the_nodes_level_encoding() {
    let rules = read(&deploy("prometheus/alerts.yml"));
    let charge_only = SafeState::ChargeOnly.severity();
    let tripped = SafeState::Tripped.severity();
    for expr in [
        format!("(gridvisor_segment_safe_state) == {charge_only}"),
        format!("(gridvisor_segment_safe_state) == {tripped}"),
    ] {
        assert!(rules.contains(&expr), "alerts.yml has no {expr:?}");
    }
    // The cause labels the rules use are the ones the node exports.
    for cause in ["keepalive", "quorum"] {
        assert!(FaultKey::KINDS.contains(&cause), "{cause}");
        let expr = format!("gridvisor_segment_fault_active{{cause=\"{cause}\"}}");
        assert!(rules.contains(&expr), "alerts.yml has no {expr:?}");
    }
    assert_eq!(
        tripped,
        charge_only + 1,
        "nothing above ChargeOnly but Tripped"
    );
    for alert in [
        "GridvisorRestartStorm",
        "GridvisorNodeRestartStorm",
        "GridvisorSupervisorGaveUp",
        "GridvisorSegmentChargeOnly",
        "GridvisorSegmentTripped",
        "GridvisorKeepAliveLost",
        "GridvisorQuorumLost",
        "GridvisorMailboxBacklog",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "no alert {alert}"
        );
    }
}

/// The node's admin address (host:port), once it is serving.
fn admin_of(node: &mut DemoNode) -> String {
    node.addresses().1
}

/// A minimal HTTP/1.1 GET (see `support::try_http`).
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    try_http(addr, "GET", path, None)
}

fn scrape(admin: &str) -> String {
    let (status, body) = get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Whether the exposition `text` has a sample of `name` (`name{...} v` or `name v`), or a
/// family of that name with samples (a histogram's `name` has `name_bucket`...).
fn has_sample(text: &str, name: &str) -> bool {
    let family = format!("# TYPE {name} ");
    text.lines().any(|l| {
        l.starts_with(&family)
            || l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[test]
fn the_dashboard_and_the_rules_use_only_metrics_a_node_exports() {
    let mut names = BTreeSet::new();
    let d = dashboard();
    let mut texts = Vec::new();
    strings(&d, &mut texts);
    for t in texts {
        metric_names(t, &mut names);
    }
    let dashboard_names = names.len();
    metric_names(&read(&deploy("prometheus/alerts.yml")), &mut names);
    assert!(dashboard_names >= 10, "{names:?}");
    for wanted in [
        "gridvisor_site_power_kw",
        "gridvisor_site_target_kw",
        "gridvisor_segment_power_kw",
        "gridvisor_segment_limit_kw",
        "gridvisor_segment_safe_state",
        "gridvisor_actor_restarts_total",
        "gridvisor_actor_messages_total",
        "gridvisor_dispatch_request_ack_seconds_bucket",
        "gridvisor_safe_state_command_seconds_bucket",
        "gridvisor_ocpp_connected_chargers",
        "gridvisor_supervisor_intensity_exceeded_total",
        "gridvisor_actor_mailbox_depth",
        "gridvisor_segment_fault_active",
    ] {
        assert!(names.contains(wanted), "{wanted} not used: {names:?}");
    }

    let mut live: Vec<&String> = Vec::new();
    for name in &names {
        match EVENT_ONLY.iter().find(|(n, _, _, _)| n == name) {
            Some((_, file, source, literal)) => assert!(
                source.contains(literal)
                    && source.contains("pub const DEFAULT_PREFIX: &str = \"gridvisor\";"),
                "{name} is not registered in {file}"
            ),
            None => live.push(name),
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let mut node = DemoNode::start(dir.path());
    let admin = admin_of(&mut node);
    // Some series appear with their first event (the safe-state command histogram with the
    // first change of level: the demo's keep-alive runs out after 5 s), so wait for them.
    let deadline = Instant::now() + LIMIT;
    let text = loop {
        let text = scrape(&admin);
        let missing: Vec<_> = live.iter().filter(|n| !has_sample(&text, n)).collect();
        if missing.is_empty() {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the node never exported {missing:?}:\n{text}"
        );
        std::thread::sleep(POLL);
    };
    // The demo's three segments are all there.
    for seg in ["tx-1", "tx-2", "tx-3"] {
        assert!(
            text.contains(&format!(
                "gridvisor_segment_safe_state{{segment=\"{seg}\"}}"
            )),
            "{seg}:\n{text}"
        );
    }
}

/// A free loopback port never handed out before in this test process.
fn free_port() -> u16 {
    gridvisor_chaos::cluster::run::free_port().expect("a free port")
}

fn encode(q: &str) -> String {
    let mut out = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A running Prometheus: its address and log.
struct Prometheus {
    addr: String,
    log: PathBuf,
    _child: Killed,
}

impl Prometheus {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the HTTP API; `data` of a successful answer.
    fn api(&self, path: &str) -> Value {
        let (status, body) = get(&self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nprometheus log:\n{}", self.log()));
        assert_eq!(status, 200, "GET {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["status"], "success", "{v}");
        v["data"].clone()
    }

    /// An instant query: its samples.
    fn query(&self, q: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(q)));
        assert_eq!(data["resultType"], "vector", "{data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Poll until `ok` holds, at most PROMETHEUS_LIMIT; `what` says what was awaited.
    fn until<T>(&self, what: &str, mut ok: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PROMETHEUS_LIMIT;
        loop {
            if let Some(t) = ok() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {PROMETHEUS_LIMIT:?}\nprometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value: {sample}"))
}

/// `config` (deploy/prometheus/prometheus.yml) with its token and CA files at `token` and
/// `ca`, and the rules by absolute path.
fn with_files(config: &str, token: &Path, ca: &Path) -> String {
    let rules = deploy("prometheus/alerts.yml");
    let mut config = config.to_string();
    for (from, to) in [
        ("/etc/prometheus/gridvisor-token", token),
        ("/etc/prometheus/gridvisor-api-ca.pem", ca),
        ("alerts.yml", rules.as_path()),
    ] {
        let from = format!(" {from}\n");
        assert!(config.contains(&from), "prometheus.yml has no {from:?}");
        config = config.replace(&from, &format!(" {}\n", to.display()));
    }
    config
}

/// deploy/prometheus/prometheus.yml for this test: scrape and evaluate every second, the
/// node's admin address as the target, an operator token and the CA in `pki`.
fn test_config(admin: &str, pki: &Path) -> String {
    let config = read(&deploy("prometheus/prometheus.yml"));
    let mut config = with_files(&config, &pki.join("token"), &pki.join("ca.pem"));
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".to_string(),
        ),
        ("scrape_timeout: 10s", "scrape_timeout: 1s".to_string()),
        ("\"localhost:9464\"", format!("\"{admin}\"")),
    ] {
        assert!(config.contains(from), "prometheus.yml has no {from:?}");
        config = config.replace(from, &to);
    }
    config
}

/// The demo site with `[api]` as the deploy examples have it: TLS from a CA in `pki`, a
/// tokens file, and an operator token for Prometheus at `pki/token`.
fn api_site(pki: &Path) -> PathBuf {
    support::make_certs(pki, &["api"]);
    let tokens = pki.join("tokens");
    let token = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .args([
            "token",
            "--identity",
            "prometheus",
            "--roles",
            "operator",
            "--file",
        ])
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    std::fs::write(pki.join("token"), &token.stdout).unwrap();
    let api = format!(
        "[api]\ntokens = {:?}\n[api.tls]\ncert = {:?}\nkey = {:?}\n",
        tokens,
        pki.join("api.pem"),
        pki.join("api-key.pem"),
    );
    let demo = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml"));
    let demo_api = "[api]\nactor_kill = true\n";
    assert!(demo.contains(demo_api), "configs/demo.toml's [api] changed");
    let site = pki.join("site.toml");
    std::fs::write(&site, demo.replace(demo_api, &api)).unwrap();
    site
}

#[test]
fn a_real_prometheus_scrapes_a_node_and_evaluates_the_rules() {
    let Some(mut prometheus) = tool("prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    std::fs::create_dir(&data).unwrap();
    // The demo site with its APIs as deployed: TLS, and an operator token for Prometheus.
    let pki = dir.path().join("pki");
    let site = api_site(&pki);
    let mut node = DemoNode::start_args(&data, &[], &["--config", site.to_str().unwrap()]);
    let admin = admin_of(&mut node);
    let (status, _) = get(&admin, "/metrics").unwrap_or((0, String::new()));
    assert_ne!(status, 200, "the admin API speaks TLS only");

    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, test_config(&admin, &pki)).unwrap();
    let tsdb = dir.path().join("tsdb");
    let log = dir.path().join("prometheus.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = prometheus
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("prometheus starts");
    let p = Prometheus {
        addr,
        log,
        _child: Killed(child),
    };
    p.until("prometheus ready", || {
        matches!(get(&p.addr, "/-/ready"), Ok((200, _))).then_some(())
    });

    // The node's segments, as Prometheus stored them from its scrapes.
    let levels = p.until("gridvisor_segment_safe_state of tx-1..tx-3", || {
        let samples = p.query("gridvisor_segment_safe_state");
        let segments: BTreeSet<&str> = samples
            .iter()
            .filter_map(|s| s["metric"]["segment"].as_str())
            .collect();
        (segments == BTreeSet::from(["tx-1", "tx-2", "tx-3"])).then_some(samples)
    });
    for s in &levels {
        assert_eq!(s["metric"]["job"], "gridvisor", "{s}");
        assert_eq!(s["metric"]["instance"], admin.as_str(), "{s}");
        assert!((0.0..=3.0).contains(&value(s)), "{s}");
    }
    let up = p.query("up{job=\"gridvisor\"}");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(value(&up[0]), 1.0, "{up:?}");
    // Prometheus asks for OpenMetrics first, so that is what it parsed.
    let om = p.until("scrapes in OpenMetrics", || {
        let s = p.query("gridvisor_metrics_scrapes_total{format=\"openmetrics\"}");
        (s.len() == 1 && value(&s[0]) >= 1.0).then_some(s)
    });
    assert_eq!(om[0]["metric"]["instance"], admin.as_str(), "{om:?}");
    let depths = p.query("gridvisor_actor_mailbox_depth{path=\"node/segments/tx-1/dispatcher\"}");
    assert_eq!(depths.len(), 1, "{depths:?}");

    // The rules load and evaluate without errors, and fire on the node: the demo has no grid
    // controller, so after 5 s without a keep-alive every segment goes to ChargeOnly.
    let firing = p.until(
        "GridvisorKeepAliveLost and GridvisorSegmentChargeOnly for tx-1..tx-3",
        || {
            let alerts = p.api("/api/v1/alerts");
            let firing: Vec<(String, String)> = alerts["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["state"] == "firing")
                .map(|a| {
                    let l = &a["labels"];
                    let name = l["alertname"].as_str().unwrap_or_default().to_string();
                    let seg = l["segment"].as_str().unwrap_or_default().to_string();
                    (name, seg)
                })
                .collect();
            let charge_only = ["tx-1", "tx-2", "tx-3"].iter().all(|seg| {
                firing.iter().any(|(n, s)| {
                    s == seg
                        && (n == "GridvisorSegmentChargeOnly" || n == "GridvisorSegmentTripped")
                })
            });
            let keepalive = firing.iter().any(|(n, _)| n == "GridvisorKeepAliveLost");
            (charge_only && keepalive).then_some(firing)
        },
    );
    let healthy = p.until("every rule evaluated", || {
        let data = p.api("/api/v1/rules");
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        for r in &rules {
            assert_ne!(r["health"], "err", "{r}");
        }
        rules.iter().all(|r| r["health"] == "ok").then_some(rules)
    });
    let defined = read(&deploy("prometheus/alerts.yml"))
        .matches("- alert: ")
        .count();
    assert_eq!(healthy.len(), defined, "{healthy:?}");
    for (name, _) in &firing {
        assert!(
            !name.contains("Restart") && name != "GridvisorNodeDown",
            "{name} fires on a healthy demo node: {firing:?}"
        );
    }

    // The scrape duration, as Prometheus itself reports it, over ten scrapes at least.
    let over = "scrape_duration_seconds{job=\"gridvisor\"}[1m]";
    p.until("ten scrapes", || {
        let n = p.query(&format!("count_over_time({over})"));
        (n.len() == 1 && value(&n[0]) >= 10.0).then_some(())
    });
    let one = |q: String| {
        let v = p.query(&q);
        assert_eq!(v.len(), 1, "{q}: {v:?}");
        value(&v[0])
    };
    let last = one("scrape_duration_seconds{job=\"gridvisor\"}".to_string());
    let median = one(format!("quantile_over_time(0.5, {over})"));
    let max = one(format!("max_over_time({over})"));
    let scrapes = one(format!("count_over_time({over})"));
    let samples = one("scrape_samples_scraped{job=\"gridvisor\"}".to_string());
    eprintln!(
        "prometheus scrapes of the demo node: scrape_duration_seconds last {last:.6}, \
         median {median:.6}, max {max:.6} over {scrapes} scrapes; {samples} samples a scrape"
    );
    assert!(max < 1.0, "a scrape took {max} s");
}
