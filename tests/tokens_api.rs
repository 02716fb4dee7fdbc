//! The authorization list through the grid API of a real node process (issue 21): a site
//! without `[[vehicles]]` whose `[authorization]` is seeded from a file; `GET`, `PUT` and
//! `DELETE /api/v1/tokens[/{type}/{value}]` over HTTP on loopback (the `local` identity), a
//! bad body named, every change in the audit log, and the list kept across a restart.
//! The roles (operator reads, admin changes) are checked against the OpenAPI document with
//! real credentials in tests/api_auth.rs.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{http, DemoNode};

/// The site (two OCPP chargers, no vehicles) and its files in `dir`.
fn site(dir: &Path) -> std::path::PathBuf {
    let mut creds = gridvisor_transports::ocpp::credentials::CredentialsFile::default();
    creds
        .set(
            "cp-1",
            b"station-secret",
            gridvisor_transports::ocpp::credentials::MIN_ITERATIONS,
        )
        .unwrap();
    creds.write_atomic(&dir.join("stations.cred")).unwrap();
    std::fs::write(
        dir.join("tokens.toml"),
        "[[tokens]]\ntype = \"eMAID\"\nvalue = \"NL-GVR-C12345678-X\"\nname = \"fleet-a\"\n\
         v2g = true\nmin_soc_pct = 40\ndepart_at = \"17:30\"\n",
    )
    .unwrap();
    let text = "[site]\nid = \"tokens\"\nkeepalive_required = false\n[safety]\nhold_s = 0.3\n\
         [[substations]]\nid = \"sub\"\n[[substations.segments]]\nid = \"tx\"\nrated_kw = 50\n\
         [[substations.segments.chargers]]\nid = \"cp-1\"\nmax_kw = 11\nbidirectional = true\n\
         [[substations.segments.meters]]\nid = \"m1\"\n\
         [ocpp]\nlisten = \"127.0.0.1:0\"\npasswords = \"stations.cred\"\n\
         [authorization]\nstore = \"tokens.redb\"\nseed = \"tokens.toml\"\nunknown = \"refuse\"\n";
    let path = dir.join("site.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path) -> (DemoNode, String) {
    let config = site(dir);
    let mut node = DemoNode::start_args(
        &dir.join("data"),
        &[],
        &["--config", config.to_str().unwrap()],
    );
    let (grid, _) = node.addresses();
    (node, grid)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn the_list_is_read_changed_audited_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (node, grid) = start(dir.path());
    let seeded = "/api/v1/tokens/eMAID/NL-GVR-C12345678-X";
    let (status, body) = http(&grid, "GET", "/api/v1/tokens", None);
    assert_eq!(status, 200, "{body}");
    let list = json(&body);
    assert_eq!(list.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(list[0]["type"], "eMAID");
    assert_eq!(list[0]["contract"]["min_soc_pct"], 40.0);
    let (status, body) = http(&grid, "GET", seeded, None);
    assert_eq!(
        (status, json(&body)["contract"]["v2g"].clone()),
        (200, Value::Bool(true))
    );

    // Add, replace, refuse a bad one (named), delete.
    let rfid = "/api/v1/tokens/ISO14443/04A1B2C3";
    let contract = r#"{"name": "visitor", "stay_s": 7200, "capacity_kwh": 60}"#;
    assert_eq!(http(&grid, "PUT", rfid, Some(contract)).0, 201);
    let (status, body) = http(
        &grid,
        "PUT",
        rfid,
        Some(r#"{"name": "visitor", "v2g": true}"#),
    );
    assert_eq!(
        (status, json(&body)["replaced"].clone()),
        (200, Value::Bool(true))
    );
    let (status, body) = http(
        &grid,
        "PUT",
        rfid,
        Some(r#"{"name": "x", "min_soc_pct": 120}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("min_soc_pct"), "{body}");
    let (status, body) = http(&grid, "PUT", rfid, Some(r#"{"name": "x", "colour": 1}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("colour"), "{body}");
    assert_eq!(http(&grid, "DELETE", seeded, None).0, 204);
    assert_eq!(http(&grid, "DELETE", seeded, None).0, 404);
    assert_eq!(http(&grid, "GET", seeded, None).0, 404);

    // Every change is a command in the audit log, refused ones too.
    let (_, audit) = http(&grid, "GET", "/api/v1/audit", None);
    let records = json(&audit);
    let changes: Vec<(String, u64)> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["request"].as_str().unwrap().contains("/api/v1/tokens"))
        .map(|r| {
            (
                r["request"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = [
        (format!("PUT {rfid}"), 201),
        (format!("PUT {rfid}"), 200),
        (format!("PUT {rfid}"), 400),
        (format!("PUT {rfid}"), 400),
        (format!("DELETE {seeded}"), 204),
        (format!("DELETE {seeded}"), 404),
    ]
    .into_iter()
    .collect();
    assert_eq!(changes, want, "{audit}");
    drop(node);

    // A restart keeps the list as changed: the seed is not read again.
    let (_node, grid) = start(dir.path());
    let (_, body) = http(&grid, "GET", "/api/v1/tokens", None);
    let list = json(&body);
    assert_eq!(list.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(list[0]["value"], "04A1B2C3");
    assert_eq!(list[0]["contract"]["v2g"], true);
}
