//! The embedded demo with its default arrivals: drivers known only by token (its
//! authorization list, configs/demo-tokens.toml) arrive at random free chargers and get
//! sessions from their contracts; `--arrivals off` keeps the fixed bays (tests/e2e_http.rs
//! and the other demo tests run that way), and a bad `--arrivals` is named.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{http, DemoNode, LIMIT};

/// How often the test asks for sessions while it waits for the first driver.
const POLL: Duration = Duration::from_millis(200);

fn tokens() -> Vec<String> {
    let text = include_str!("../configs/demo-tokens.toml");
    gridvisor_actors::authorization::parse_seed("demo-tokens.toml", text)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id.value)
        .collect()
}

#[test]
fn by_default_the_demos_drivers_arrive_by_token_at_random_bays() {
    let data = tempfile::tempdir().unwrap();
    let mut node = DemoNode::start_args(data.path(), &[], &["--ocpp", "127.0.0.1:0"]);
    let (grid, _admin) = node.addresses();

    // The authorization list is the demo's drivers.
    let (status, body) = http(&grid, "GET", "/api/v1/tokens", None);
    assert_eq!(status, 200, "{body}");
    let listed: BTreeSet<String> = body_tokens(&body);
    let drivers = tokens();
    assert_eq!(listed, drivers.iter().cloned().collect(), "{body}");

    // The first driver arrives within seconds (the default seed's plan): its session
    // comes from its contract, at a charger of the site.
    let deadline = Instant::now() + LIMIT;
    let session = loop {
        let found = drivers.iter().find_map(|t| {
            let (status, body) = http(&grid, "GET", &format!("/api/v1/sessions/{t}"), None);
            (status == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
        });
        if let Some(s) = found {
            break s;
        }
        assert!(Instant::now() < deadline, "no driver arrived");
        std::thread::sleep(POLL);
    };
    let chargers: Vec<String> = gridvisor_actors::config::demo()
        .chargers()
        .map(|(_, c)| c.id.clone())
        .collect();
    let charger = session["charger"].as_str().unwrap();
    assert!(chargers.iter().any(|c| c == charger), "{session}");
    assert_eq!(
        session["session"]["sources"]["min_soc"]["kind"], "contract",
        "{session}"
    );
    // The fixed schedule's vehicles are not there: ev-1 has no session.
    let (status, _) = http(&grid, "GET", "/api/v1/sessions/ev-1", None);
    assert_eq!(status, 404);
}

fn body_tokens(body: &str) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    let entries = v
        .as_array()
        .or_else(|| v["tokens"].as_array())
        .unwrap_or_else(|| panic!("a list of tokens: {body}"));
    entries
        .iter()
        .map(|e| {
            e["token"]["value"]
                .as_str()
                .or(e["value"].as_str())
                .unwrap_or_else(|| panic!("{e}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn a_bad_arrivals_value_is_named() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .args([
            "run",
            "--arrivals",
            "soon",
            "--exit-after",
            "1",
            "--ocpp",
            "127.0.0.1:0",
        ])
        .args(["--grid", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--arrivals=\"soon\""), "{stderr}");
}
