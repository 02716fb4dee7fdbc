//! The idempotency kill test (issue 4): while a grid request is being dispatched and the
//! loop closes every 50 ms, kill charger links and vehicle sessions at random points, a
//! thousand times. The energy the vehicles delivered must match the request within
//! tolerance (never doubled, nothing lost), no device may ever receive an older setpoint key
//! than one it applied, and no vehicle may go below its minimum SoC.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use gridvisor_actors::runtime::{charger_path, Scope};

/// Kills to make.
const KILLS: usize = 1_000;
/// Attempts allowed (a target may be restarting at the moment it is picked).
const ATTEMPTS: usize = 20_000;
/// The request: site discharge, kW, for this long.
const TARGET_KW: f64 = -300.0;
const DURATION_S: f64 = 10.0;
/// Delivered energy must be within this fraction of the request.
const ENERGY_TOLERANCE: f64 = 0.08;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_links_and_sessions_a_thousand_times_during_dispatch_changes_nothing() {
    const SEGMENTS: usize = 4;
    const CHARGERS: usize = 25;
    // Every fifth vehicle has a tiny battery just above its minimum SoC: discharging at full
    // power it would cross the minimum within the request.
    let mut toml = site_toml(SEGMENTS, CHARGERS, "", "")
        .replace("cycle_ms = 100", "cycle_ms = 50")
        .replace("lease_s = 5", "lease_s = 2");
    for n in (0..SEGMENTS * CHARGERS).step_by(5) {
        let from = format!(
            "id = \"ev-{n}\"\ncharger = \"evse-{n}\"\ncapacity_kwh = 60\nsoc_pct = {}\n",
            40 + (n * 7) % 50
        );
        let to = format!("id = \"ev-{n}\"\ncharger = \"evse-{n}\"\ncapacity_kwh = 1\nsoc_pct = 22\nmin_soc_pct = 20\n");
        assert!(toml.contains(&from), "{from}");
        toml = toml.replace(&from, &to);
    }
    let t = start(&toml).await;
    let node = &t.node;
    let n = SEGMENTS * CHARGERS;
    wait(node, "every session running", || {
        node.segments().iter().map(|s| s.sessions).sum::<usize>() == n
    })
    .await;
    let clock = node.shared.clock.clone();
    let chargers: Vec<_> = (0..n)
        .map(|i| node.sim.chargers[&format!("evse-{i}")].clone())
        .collect();
    let register = |c: &gridvisor_actors::device::SimCharger| {
        futures::executor::block_on(gridvisor_actors::device::ChargerIo::read(c, clock.now()))
            .unwrap()
            .energy_kwh
    };
    let before: Vec<f64> = chargers.iter().map(|c| register(c)).collect();

    let started = Instant::now();
    let r = node
        .request(request("kill-test", Scope::Site, TARGET_KW, DURATION_S))
        .await
        .unwrap();
    assert_eq!(r.not_acknowledged, 0, "{r:?}");

    // Kill at random points while the loop dispatches.
    let mut rng = 0x6b69_6c6c_u64;
    let (mut kills, mut attempts) = (0usize, 0usize);
    while kills < KILLS && attempts < ATTEMPTS {
        attempts += 1;
        let i = (splitmix(&mut rng) % n as u64) as usize;
        let seg = format!("tx-{}", i / CHARGERS);
        let base = charger_path(&seg, &format!("evse-{i}"));
        let path = if splitmix(&mut rng) % 2 == 0 {
            format!("{base}/link")
        } else {
            format!("{base}/ev-{i}")
        };
        if let Ok(cell) = node.registry().lookup(&path) {
            cell.kill();
            kills += 1;
        }
        let pause = splitmix(&mut rng) % 12_000;
        tokio::time::sleep(Duration::from_micros(pause)).await;
    }
    assert_eq!(kills, KILLS, "{attempts} attempts");
    assert!(
        started.elapsed() < Duration::from_secs_f64(DURATION_S),
        "the kills outlasted the request: {:?}",
        started.elapsed()
    );

    // The request ends; the devices return to the safe default (0 kW) and stop.
    wait(node, "the request over and every device idle", || {
        started.elapsed() > Duration::from_secs_f64(DURATION_S)
            && chargers.iter().all(|c| {
                let r = futures::executor::block_on(gridvisor_actors::device::ChargerIo::read(
                    c.as_ref(),
                    clock.now(),
                ))
                .unwrap();
                r.setpoint_kw == 0.0 && r.power_kw == 0.0
            })
    })
    .await;
    let delivered: f64 = chargers
        .iter()
        .zip(&before)
        .map(|(c, b)| register(c) - b)
        .sum();
    let requested = TARGET_KW * DURATION_S / 3600.0;
    let error = (delivered - requested).abs() / requested.abs();
    assert!(
        error <= ENERGY_TOLERANCE,
        "delivered {delivered:.4} kWh for a request of {requested:.4} kWh ({:.1} % off)",
        error * 100.0
    );
    for (i, c) in chargers.iter().enumerate() {
        assert_eq!(c.older_writes(), 0, "evse-{i} received an older key");
        let b = c.battery(clock.now()).unwrap();
        let v = node.shared.topology.vehicle(&format!("ev-{i}")).unwrap();
        assert!(
            b.soc_pct >= v.min_soc_pct,
            "ev-{i} at {:.4} % below its minimum {} %",
            b.soc_pct,
            v.min_soc_pct
        );
    }
    // The small batteries were really driven to their floor (the check above is not idle).
    let floor = chargers
        .iter()
        .step_by(5)
        .filter(|c| c.battery(clock.now()).unwrap().soc_pct < 20.5)
        .count();
    assert!(floor > 0, "no small battery reached its minimum");
    eprintln!(
        "kills {kills} (attempts {attempts}); delivered {delivered:.4} kWh of {requested:.4} ({:.2} % off); small batteries at their floor: {floor}",
        error * 100.0
    );
    t.node.shutdown().await;
}
