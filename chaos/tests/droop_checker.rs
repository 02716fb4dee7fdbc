//! The frequency-response checker alone against hand-made histories: a response of the right
//! sign and size keeps it; the wrong sign, too much, a response inside the deadband and no
//! response at all (with room) each break it, at the step named.

use gridvisor_actors::droop::DroopSettings;
use gridvisor_actors::ladder::GridFrequency;
use gridvisor_chaos::droop::FrequencyResponse;
use gridvisor_chaos::invariants::{Checker, Sample, SegmentSample};

/// 60 Hz, IEEE 1547 defaults, on.
fn checker() -> FrequencyResponse {
    FrequencyResponse::new(DroopSettings {
        enabled: true,
        ..DroopSettings::for_grid(GridFrequency::Hz60)
    })
}

/// One segment of 44 kW V2G rating with plenty of room, at `hz`, responding `droop_kw`.
fn at(t_ms: u64, hz: f64, droop_kw: f64) -> Sample {
    Sample {
        t_ms,
        segments: vec![SegmentSample {
            id: "tx-1".into(),
            level: 0,
            cap_kw: None,
            power_kw: 0.0,
            discharge_kw: 0.0,
            metered_kw: 0.0,
            load_kw: 0.0,
            rated_kw: 100.0,
            hot_spot_c: 30.0,
            limit_c: 110.0,
            level_since_ms: 0,
            droop_kw,
            v2g_kw: 44.0,
            v2g_room_kw: (44.0, 44.0),
        }],
        vehicles: Vec::new(),
        chargers: Vec::new(),
        down: Vec::new(),
        restarted: Vec::new(),
        grid_dead: false,
        exporting: Vec::new(),
        relays_open: Vec::new(),
        outputs: Vec::new(),
        frequency_hz: hz,
    }
}

fn run(c: &mut FrequencyResponse, samples: &[Sample]) -> Vec<(u64, String)> {
    samples
        .iter()
        .flat_map(|s| c.step(s))
        .map(|v| (v.t_ms, v.message))
        .collect()
}

#[test]
fn a_right_response_in_time_holds() {
    let mut c = checker();
    // 60.336 Hz: 0.3 Hz beyond, 10 % of 44 kW = 4.4 kW more charge, there after 200 ms.
    let v = run(
        &mut c,
        &[
            at(0, 60.0, 0.0),
            at(200, 60.336, 0.0),
            at(400, 60.336, 4.4),
            at(1_400, 60.336, 4.4),
        ],
    );
    assert!(v.is_empty(), "{v:?}");
    let s = c.summary();
    assert!(s.held && s.exercised);
    assert_eq!(s.worst_margin, Some(0.8), "1 s bound minus 200 ms");
}

#[test]
fn the_wrong_sign_breaks_it() {
    let mut c = checker();
    // Charging more under-frequency: the wrong sign (and no right response either).
    let v = run(&mut c, &[at(0, 59.664, 0.0), at(1_000, 59.664, 2.0)]);
    assert!(v.iter().all(|(t, _)| *t == 1_000), "{v:?}");
    assert!(v.iter().any(|(_, m)| m.contains("wrong sign")), "{v:?}");
}

#[test]
fn too_much_breaks_it() {
    let mut c = checker();
    // 4.4 kW allowed; 6 kW is more than the droop's share of the V2G rating.
    let v = run(&mut c, &[at(0, 60.336, 0.0), at(1_000, 60.336, 6.0)]);
    assert!(v.len() == 1 && v[0].1.contains("exceeds"), "{v:?}");
}

#[test]
fn a_response_inside_the_deadband_breaks_it() {
    let mut c = checker();
    let v = run(&mut c, &[at(0, 60.02, 0.0), at(1_000, 60.02, -1.0)]);
    assert!(v.len() == 1 && v[0].1.contains("deadband"), "{v:?}");
}

#[test]
fn no_response_within_the_response_time_breaks_it() {
    let mut c = checker();
    let v = run(
        &mut c,
        &[
            at(0, 60.0, 0.0),
            at(100, 59.5, 0.0),
            at(600, 59.5, 0.0),
            at(1_100, 59.5, 0.0),
        ],
    );
    assert!(
        v.len() == 1 && v[0].0 == 1_100 && v[0].1.contains("no segment responds"),
        "{v:?}"
    );
}

#[test]
fn off_it_is_held_and_not_exercised() {
    let mut c = FrequencyResponse::new(DroopSettings::for_grid(GridFrequency::Hz60));
    assert!(run(&mut c, &[at(0, 59.0, 5.0), at(2_000, 59.0, 5.0)]).is_empty());
    assert!(!c.summary().exercised);
}
