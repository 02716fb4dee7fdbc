//! Interop: pymodbus 3.16.1 (tests/py/modbus_sim_client.py, with the official SunSpec model
//! definitions of pysunspec2 for its offsets) reads our simulated inverter over a real socket:
//! it finds "SunS", walks the models, reads 701 W and 713 SoC, which must equal what the Rust
//! side holds; then it writes a 704 limit, which the Rust state must show, and an
//! out-of-range one, which must come back as exception 3. Fails (never skips) when Python or
//! the packages are missing (the tests make their own venv, gridvisor-testkit): the script
//! checks pymodbus's version and imports pysunspec2, and any failure fails the test.

use crate::modbus_support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use gridvisor_sim::modbus::{Grid, GridModel, InverterParams, InverterSim, SimServer};
use gridvisor_transports::modbus::sunspec::{ActivePowerSetpoint, SetpointMode, SunSpecDevice};
use modbus_support::client;
use serde_json::Value;

/// How long the Python client may run (it has its own 3 s request time-out).
const CHILD_WAIT: Duration = Duration::from_secs(60);
/// How often its exit is polled.
const CHILD_POLL: Duration = Duration::from_millis(50);

use gridvisor_testkit::python;

/// Runs the Python client to its end (bounded by [`CHILD_WAIT`]); its JSON lines.
async fn run_client(args: &[String]) -> Vec<Value> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/modbus_sim_client.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} ({e})", python().display()));
    let attempts = (CHILD_WAIT.as_millis() / CHILD_POLL.as_millis()) as u32;
    for _ in 0..attempts {
        if child.try_wait().expect("poll the child").is_some() {
            let out = child.wait_with_output().expect("child output");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "modbus_sim_client.py failed ({}): {}\n{stdout}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return stdout
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
                .collect();
        }
        tokio::time::sleep(CHILD_POLL).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("modbus_sim_client.py did not finish within {CHILD_WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_reads_the_map_and_writes_a_limit() {
    let grid = Grid::new(GridModel::new(9));
    let s = SimServer::default()
        .start(InverterSim::new(InverterParams::new("PY-1"), grid).unwrap())
        .await
        .unwrap();
    eprintln!("simulated inverter on {}", s.addr());
    // Charge at 2345 W for 10 s: a W and a SoC that are not round.
    let dev = SunSpecDevice::discover(client(s.addr())).await.unwrap();
    dev.set_active_power(&ActivePowerSetpoint {
        mode: SetpointMode::Watts,
        value: -2_345.0,
        revert_after: Duration::from_secs(600),
        revert_to: None,
    })
    .await
    .unwrap();
    for _ in 0..100 {
        s.step(Duration::from_millis(100)).unwrap();
    }
    let state = s.with_device(|d| *d.state());
    assert_eq!(state.power_w, -2_345.0);
    assert!(state.soc_pct > 50.0);

    let lines = run_client(&[
        "--port".into(),
        s.addr().port().to_string(),
        "--limit".into(),
        "15".into(),
        "--revert".into(),
        "45".into(),
    ])
    .await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let read = &lines[0];
    let models: Vec<(u64, u64)> = read["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m[0].as_u64().unwrap(), m[1].as_u64().unwrap()))
        .collect();
    let ours: Vec<(u64, u64)> = dev
        .map()
        .models
        .iter()
        .map(|h| (u64::from(h.id), u64::from(h.addr)))
        .collect();
    assert_eq!(models, ours, "pymodbus walked the same map");
    assert_eq!(read["w"].as_f64(), Some(state.power_w));
    let soc = read["soc"].as_f64().unwrap();
    assert!(
        (soc - state.soc_pct).abs() <= 0.05 + 1e-9,
        "{soc} vs {}",
        state.soc_pct
    );
    assert_eq!(soc, (state.soc_pct * 10.0).round() / 10.0);

    // The Rust state sees pymodbus's limit.
    let limit = s.with_device(|d| d.state().controls.limit);
    assert!(limit.enabled);
    assert_eq!(limit.pct, 15.0);
    assert_eq!(limit.timer.secs, 45);
    assert_eq!(limit.timer.remaining, Some(Duration::from_secs(45)));
    assert!(!limit.revert_enabled);
    let written = &lines[1]["written"];
    assert_eq!(written["enabled"].as_u64(), Some(1));
    assert_eq!(written["pct"].as_f64(), Some(15.0));
    assert_eq!(written["remaining"].as_u64(), Some(45));
    let refused = &lines[2]["out_of_range"];
    assert_eq!(refused["error"].as_bool(), Some(true), "{refused}");
    assert_eq!(refused["exception_code"].as_u64(), Some(3), "{refused}");
    // The refused write changed nothing, and the physics obeys the limit: 15 % of 10 kW
    // caps the 2345 W charge at 1500 W.
    assert_eq!(s.with_device(|d| d.state().controls.limit.pct), 15.0);
    for _ in 0..5 {
        s.step(Duration::from_millis(100)).unwrap();
    }
    assert_eq!(s.with_device(|d| d.state().power_w), -1_500.0);
    s.stop().await.unwrap();
}
