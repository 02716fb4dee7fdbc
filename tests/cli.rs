//! The binary driven as a user drives it: real processes, real output.

mod support;

use std::process::Command;

fn gridvisor(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .args(args)
        .output()
        .expect("the gridvisor binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every figure of shared/bench/otp_baseline.escript, in its unit.
const FIGURES: &[(&str, &str)] = &[
    ("start_children_total", "ms"),
    ("start_child_each", "us"),
    ("memory_per_child", "bytes"),
    ("fanout_setpoint_all_acked", "ms"),
    ("restart_one_median", "us"),
    ("restart_one_p99", "us"),
    ("restart_10pct_all_up", "ms"),
    ("call_roundtrip", "us"),
    ("messages_per_second", "msg/s"),
    ("shutdown_tree", "ms"),
];

#[test]
fn bench_supervision_prints_every_figure_of_the_erlang_baseline() {
    let (ok, stdout, stderr) = gridvisor(&["bench", "supervision", "--children", "2000"]);
    assert!(ok, "bench failed: {stderr}");
    for (name, unit) in FIGURES {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("figure {name} missing from:\n{stdout}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "`name value unit`: {line}");
        let value: f64 = fields[1]
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(value.is_finite() && value > 0.0, "{line}");
        assert_eq!(fields[2], *unit, "{line}");
    }
    assert!(stdout.contains("children 2000.000 count"), "{stdout}");
}

#[test]
fn bench_refuses_a_meaningless_size() {
    let (ok, _, stderr) = gridvisor(&["bench", "supervision", "--children", "3"]);
    assert!(!ok);
    assert!(
        stderr.contains("--children must be at least 10"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_the_demo_and_names_file_line_and_field_of_errors() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/demo.toml");
    let (ok, stdout, stderr) = gridvisor(&["check-config", demo]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok: site demo-site"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(demo)
        .unwrap()
        .replacen("max_kw = 22", "max_kw = -22", 1);
    std::fs::write(&bad, text).unwrap();
    let (ok, _, stderr) = gridvisor(&["check-config", bad.to_str().unwrap()]);
    assert!(!ok);
    let line = stderr
        .lines()
        .find(|l| l.contains("max_kw"))
        .unwrap_or_else(|| panic!("{stderr}"));
    // file:line:column: field: message
    let mut parts = line.splitn(4, ':');
    assert!(parts.next().unwrap().ends_with("bad.toml"), "{line}");
    let line_no: usize = parts.next().unwrap().parse().expect("a line number");
    assert!(line_no > 1, "{line}");
    assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
    assert!(line.contains("chargers[0].max_kw"), "{line}");

    let (ok, _, stderr) = gridvisor(&["check-config", "/nonexistent/site.toml"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/site.toml"), "{stderr}");
}

/// The value of figure `name` in `stdout`, checking its unit.
fn figure(stdout: &str, name: &str, unit: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} missing from:\n{stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{line}");
    assert_eq!(fields[2], unit, "{line}");
    fields[1].parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn bench_ocpp_drives_a_node_process_with_charge_points() {
    let (ok, stdout, stderr) = gridvisor(&["bench", "ocpp", "--clients", "50", "--seconds", "1"]);
    assert!(ok, "bench ocpp failed: {stderr}\n{stdout}");
    assert_eq!(figure(&stdout, "ocpp_clients_ready", "count"), 50.0);
    assert_eq!(figure(&stdout, "ocpp_connect_failures", "count"), 0.0);
    assert_eq!(figure(&stdout, "ocpp_request_failures", "count"), 0.0);
    // Boot and status per client at least.
    assert!(
        figure(&stdout, "ocpp_requests", "count") >= 100.0,
        "{stdout}"
    );
    let p50 = figure(&stdout, "ocpp_request_p50", "ms");
    let p99 = figure(&stdout, "ocpp_request_p99", "ms");
    assert!(p50 > 0.0 && p50 <= p99, "{stdout}");
    assert!(
        figure(&stdout, "ocpp_node_memory_per_connection", "bytes") > 0.0,
        "{stdout}"
    );
    // Bad input is refused with a reason.
    let (ok, _, stderr) = gridvisor(&["bench", "ocpp", "--clients", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--clients must be"), "{stderr}");
}

/// The embedded demo on free loopback ports for one second, `global` arguments before `run`.
fn demo_for_a_second(global: &[&str]) -> (bool, String, String) {
    let data = tempfile::tempdir().unwrap();
    let mut args = global.to_vec();
    args.extend([
        "run",
        "--exit-after",
        "1",
        "--ocpp",
        "127.0.0.1:0",
        "--grid",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    gridvisor(&args)
}

#[test]
fn logs_are_json_lines_with_log_format_json() {
    let (ok, stdout, stderr) = demo_for_a_second(&["--log-format", "json"]);
    assert!(ok, "{stderr}\n{stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no logs");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(
        stderr.contains("charge point connected"),
        "the demo's chargers connect over OCPP: {stderr}"
    );
    let (ok, _, stderr) = gridvisor(&["--log-format", "xml", "check-config", "configs/demo.toml"]);
    assert!(!ok);
    assert!(stderr.contains("xml"), "{stderr}");
}

#[test]
fn human_logs_into_a_pipe_carry_no_colour_codes() {
    let (ok, stdout, stderr) = demo_for_a_second(&[]);
    assert!(ok, "{stderr}\n{stdout}");
    assert!(stderr.contains(" INFO "), "human logs on stderr: {stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "an escape code in a pipe: {stderr:?}"
    );
}

#[test]
fn tree_draws_a_running_nodes_tree_filtered_by_path() {
    let data = tempfile::tempdir().unwrap();
    let mut node = support::DemoNode::start(data.path());
    let (grid, admin) = node.addresses();
    let (ok, stdout, stderr) = gridvisor(&[
        "tree",
        "--admin",
        &admin,
        "--grid",
        &grid,
        "--path",
        "tx-1",
        "--no-color",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("node  supervisor running one_for_one"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tx-1  supervisor running rest_for_one ["),
        "{stdout}"
    );
    assert!(
        stdout.contains("└─ link  worker running") || stdout.contains("├─ link  worker running"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("tx-2"),
        "the filter keeps tx-1 only: {stdout}"
    );
    let (ok, stdout, stderr) =
        gridvisor(&["tree", "--admin", &admin, "--json", "--path", "evse-1/link"]);
    assert!(ok, "{stderr}");
    let tree: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(tree["path"], "node");
    assert!(
        stdout.contains("\"node/segments/tx-1/chargers/evse-1/link\""),
        "{stdout}"
    );
    let (ok, _, stderr) = gridvisor(&["tree", "--admin", &admin, "--path", "no-such-actor"]);
    assert!(!ok);
    assert!(stderr.contains("no actor's path contains"), "{stderr}");
    drop(node);
    let (ok, _, stderr) = gridvisor(&["tree", "--admin", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(stderr.contains("cannot connect to 127.0.0.1:1"), "{stderr}");
}

#[test]
fn bench_site_prints_its_figures() {
    let (ok, stdout, stderr) = gridvisor(&[
        "bench",
        "site",
        "--sessions",
        "200",
        "--segments",
        "4",
        "--requests",
        "6",
        "--idle-seconds",
        "1",
    ]);
    assert!(ok, "bench site failed: {stderr}\n{stdout}");
    for (name, unit) in [
        ("memory_per_session", "bytes"),
        ("site_start", "ms"),
        ("request_ack_p50", "ms"),
        ("request_ack_p99", "ms"),
        ("dispatch_cycle_mean", "ms"),
        ("islanding_commanded_p50", "ms"),
        ("islanding_commanded_max", "ms"),
        ("idle_cpu_pct", "%"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{stdout}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{line}");
        let v: f64 = fields[1].parse().unwrap();
        assert!(v.is_finite() && v >= 0.0, "{line}");
        assert_eq!(fields[2], unit, "{line}");
    }
    assert!(
        stdout.contains("request_not_acknowledged 0.000 devices"),
        "{stdout}"
    );
    assert!(stdout.contains("idle_window 1.000 s"), "{stdout}");
}

/// A phase that does not finish in time fails the run with a few lines: what, how many did
/// not finish, the first of them, the site's counts; never the site as JSON. A phase limit
/// of a microsecond cannot be met by the islanding phase (a meter poll, a trip and every
/// responsive device commanded), so the run fails there at the latest.
#[test]
fn bench_site_fails_a_late_phase_with_a_short_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .env("RUST_LOG", "off")
        .args(["bench", "site", "--sessions", "120", "--segments", "12"])
        .args(["--requests", "2", "--phase-limit-seconds", "0.000001"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() <= 13,
        "at most 10 named, then a count:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("gridvisor: ") && lines[0].contains("not done within 1µs;"),
        "{stderr}"
    );
    assert!(lines[0].ends_with("not finished:"), "{stderr}");
    assert!(lines[1].starts_with("  tx-"), "{stderr}");
    let site = "site: 120 sessions and 120 links running for 120 chargers; segments: ";
    assert!(lines.last().unwrap().starts_with(site), "{stderr}");
    assert!(!stderr.contains("\"applied\""), "{stderr}");
    assert!(!stdout.contains("idle_cpu_pct"), "{stdout}");
}

#[test]
fn bench_site_refuses_an_empty_idle_window() {
    let (ok, _, stderr) = gridvisor(&["bench", "site", "--idle-seconds", "0"]);
    assert!(!ok);
    assert!(
        stderr.contains("--idle-seconds must be a number of seconds above 0, not 0"),
        "{stderr}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["bench", "--help"],
        &["bench", "supervision", "--help"],
        &["bench", "site", "--help"],
        &["bench", "ocpp", "--help"],
        &["tree", "--help"],
        &["check-config", "--help"],
    ] {
        let (ok, stdout, stderr) = gridvisor(args);
        assert!(ok, "{args:?}: {stderr}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
}

/// One grid request traced through a running node: with `--log-format json` and debug logs
/// for the domain, every line of its dispatch id carries the `dispatch` span, and the
/// segment batches and device writes are its children.
#[test]
fn one_span_per_dispatch_id_from_the_grid_api_to_each_device_write() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("node.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .env("RUST_LOG", "info,gridvisor_actors=debug")
        .args(["--log-format", "json", "run", "--arrivals", "off"])
        .args(["--ocpp", "127.0.0.1:0", "--grid", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--data"])
        .arg(data.path().join("cp"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("gridvisor starts");
    let stdout = child.stdout.take().unwrap();
    let node = support::Killed(child);
    let mut lines = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok);
    let grid = support::addr_of(
        &lines
            .by_ref()
            .find(|l| l.contains("grid API"))
            .expect("the node prints its grid API"),
    );
    assert!(lines.any(|l| l.contains("Ctrl-C")), "the node is serving");

    // The demo's chargers connect over OCPP after the node starts: ask until some applied.
    let deadline = std::time::Instant::now() + support::LIMIT;
    let mut attempt = 0;
    let (dispatch, request) = loop {
        attempt += 1;
        let id = format!("trace-{attempt}");
        let body =
            format!("{{\"id\":\"{id}\",\"scope\":\"site\",\"target_kw\":20,\"duration_s\":60}}");
        let (status, answer) = support::http(&grid, "POST", "/api/v1/dispatch", Some(&body));
        assert_eq!(status, 200, "{answer}");
        let receipt: serde_json::Value = serde_json::from_str(&answer).unwrap();
        if receipt["acknowledged"].as_u64().unwrap_or(0) >= 1 {
            break (receipt["dispatch"].as_u64().unwrap(), id);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no charger applied: {answer}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    drop(node);

    let log = std::fs::read_to_string(&log_path).unwrap();
    let of_dispatch = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["spans"].as_array().cloned().unwrap_or_default()
    };
    let mut accepted = false;
    let mut batches = std::collections::BTreeSet::new();
    let mut written = std::collections::BTreeSet::new();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        let spans = of_dispatch(&v);
        let Some(root) = spans
            .iter()
            .position(|s| s["name"] == "dispatch" && s["dispatch"].as_u64() == Some(dispatch))
        else {
            continue;
        };
        let below: Vec<&str> = spans[root + 1..]
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        match v["fields"]["message"].as_str().unwrap_or_default() {
            "grid request accepted" => {
                assert_eq!(v["fields"]["request"], request.as_str(), "{l}");
                accepted = true;
            }
            "segment batch" => {
                assert_eq!(below, ["segment"], "{l}");
                batches.insert(spans[root + 1]["segment"].as_str().unwrap().to_string());
            }
            "setpoint written" => {
                assert_eq!(below, ["segment", "device_write"], "{l}");
                written.insert(spans[root + 2]["charger"].as_str().unwrap().to_string());
            }
            _ => {}
        }
    }
    assert!(
        accepted,
        "no 'grid request accepted' under dispatch {dispatch}:\n{log}"
    );
    assert_eq!(
        batches,
        ["tx-1", "tx-2", "tx-3"].map(String::from).into(),
        "every segment's batch is a child of dispatch {dispatch}"
    );
    assert!(
        !written.is_empty(),
        "no device write under dispatch {dispatch}:\n{log}"
    );
}
