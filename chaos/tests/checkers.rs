//! Each invariant checker alone against hand-made histories: one that keeps the invariant
//! (no violation) and one that breaks it (the violation, at the right time, named). A checker
//! that cannot fail is worth nothing.

use gridvisor_actors::setpoint::SetpointKey;
use gridvisor_chaos::invariants::{
    AppliedOnce, ChargerSample, Checker, ExportSample, MinSoc, NoDischargeWhenRestricted,
    NoExportIntoIsland, RestartWithin, Sample, SegmentSample, TransformerLimit, VehicleSample,
};

fn empty(t_ms: u64) -> Sample {
    Sample {
        t_ms,
        segments: Vec::new(),
        vehicles: Vec::new(),
        chargers: Vec::new(),
        down: Vec::new(),
        restarted: Vec::new(),
        grid_dead: false,
        exporting: Vec::new(),
        relays_open: Vec::new(),
        outputs: Vec::new(),
        frequency_hz: 60.0,
    }
}

fn segment(level: u8, discharge_kw: f64, hot_spot_c: f64) -> SegmentSample {
    SegmentSample {
        id: "tx-1".into(),
        level,
        cap_kw: None,
        power_kw: -discharge_kw,
        discharge_kw,
        metered_kw: 0.0,
        load_kw: 0.0,
        rated_kw: 100.0,
        hot_spot_c,
        limit_c: 110.0,
        level_since_ms: 0,
        droop_kw: 0.0,
        v2g_kw: 0.0,
        v2g_room_kw: (0.0, 0.0),
    }
}

/// Run `checker` over `samples`; the times of the violations.
fn run(checker: &mut dyn Checker, samples: &[Sample]) -> Vec<u64> {
    samples
        .iter()
        .flat_map(|s| checker.step(s))
        .map(|v| v.t_ms)
        .collect()
}

fn with_segments(steps: &[(u64, u8, f64, f64)]) -> Vec<Sample> {
    steps
        .iter()
        .map(|&(t, level, dis, hot)| Sample {
            segments: vec![segment(level, dis, hot)],
            ..empty(t)
        })
        .collect()
}

#[test]
fn discharge_after_the_reaction_bound_is_a_violation() {
    // ChargeOnly at 1 s while discharging; discharge stops at 1.5 s: within a 1 s bound.
    let ok = with_segments(&[
        (0, 0, 10.0, 50.0),
        (1_000, 2, 10.0, 50.0),
        (1_500, 2, 0.0, 50.0),
        (4_000, 2, 0.0, 50.0),
    ]);
    let mut c = NoDischargeWhenRestricted::new(1.0);
    assert!(run(&mut c, &ok).is_empty());
    let s = c.summary();
    assert!(s.held && s.exercised);
    assert!((s.worst_margin.unwrap() - 1.0).abs() < 1e-9, "{s:?}");
    // Tripped at 1 s, still discharging at 2.5 s: broken at 2.5 s, once per episode.
    let bad = with_segments(&[
        (0, 0, 10.0, 50.0),
        (1_000, 3, 10.0, 50.0),
        (2_000, 3, 8.0, 50.0),
        (2_500, 3, 6.0, 50.0),
        (3_000, 3, 4.0, 50.0),
        (3_500, 0, 4.0, 50.0),
        (4_000, 2, 4.0, 50.0),
        (5_500, 2, 4.0, 50.0),
    ]);
    let mut c = NoDischargeWhenRestricted::new(1.0);
    assert_eq!(run(&mut c, &bad), vec![2_500, 5_500]);
    let s = c.summary();
    assert!(!s.held);
    assert_eq!(s.violations, 2);
    assert_eq!(s.first.unwrap().subject, "tx-1");
    // Discharge in Normal or Limited is not this invariant's business.
    let limited = with_segments(&[(0, 1, 10.0, 50.0), (9_000, 1, 10.0, 50.0)]);
    assert!(run(&mut NoDischargeWhenRestricted::new(1.0), &limited).is_empty());
}

fn vehicle(t: u64, soc: f64) -> Sample {
    Sample {
        vehicles: vec![VehicleSample {
            id: "ev-1".into(),
            soc_pct: soc,
            floor_pct: 20.0,
        }],
        ..empty(t)
    }
}

#[test]
fn a_vehicle_below_its_floor_is_a_violation() {
    let ok: Vec<Sample> = [(0, 25.0), (1, 22.0), (2, 20.0)]
        .iter()
        .map(|&(t, s)| vehicle(t, s))
        .collect();
    let mut c = MinSoc::new(0.0);
    assert!(run(&mut c, &ok).is_empty());
    let s = c.summary();
    assert!(s.held && s.exercised);
    assert_eq!(s.worst_margin, Some(0.0));
    let bad: Vec<Sample> = [(0, 25.0), (1, 19.9), (2, 19.5), (3, 21.0), (4, 19.0)]
        .iter()
        .map(|&(t, s)| vehicle(t, s))
        .collect();
    let mut c = MinSoc::new(0.0);
    assert_eq!(run(&mut c, &bad), vec![1, 4]);
    assert!(!c.summary().held);
    // Within the tolerance is not a violation.
    let mut c = MinSoc::new(0.5);
    assert!(run(&mut c, &bad[..3]).is_empty());
}

#[test]
fn a_transformer_over_its_limit_past_the_bound_is_a_violation() {
    let ok = with_segments(&[
        (0, 0, 0.0, 100.0),
        (1_000, 1, 0.0, 111.0),
        (2_500, 1, 0.0, 112.0),
        (3_000, 1, 0.0, 109.0),
    ]);
    let mut c = TransformerLimit::new(2.0);
    assert!(run(&mut c, &ok).is_empty());
    let s = c.summary();
    assert!(s.held && s.exercised);
    assert!((s.worst_margin.unwrap() - 0.5).abs() < 1e-9, "{s:?}");
    let bad = with_segments(&[
        (0, 0, 0.0, 100.0),
        (1_000, 1, 0.0, 111.0),
        (3_000, 1, 0.0, 111.0),
        (3_500, 1, 0.0, 111.0),
    ]);
    let mut c = TransformerLimit::new(2.0);
    assert_eq!(run(&mut c, &bad), vec![3_500]);
    // A hot spot that is not a number is not below the limit.
    let nan = with_segments(&[(0, 0, 0.0, f64::NAN), (3_000, 0, 0.0, f64::NAN)]);
    assert_eq!(run(&mut TransformerLimit::new(2.0), &nan), vec![3_000]);
    // Far from the limit the invariant was not exercised.
    let cold = with_segments(&[(0, 0, 0.0, 60.0)]);
    let mut c = TransformerLimit::new(2.0);
    run(&mut c, &cold);
    assert!(!c.summary().exercised);
}

fn key(d: u64, r: u64) -> Option<SetpointKey> {
    Some(SetpointKey::new(d, r))
}

fn charger(t: u64, applied: Option<SetpointKey>, acked: Option<SetpointKey>, older: u64) -> Sample {
    Sample {
        chargers: vec![ChargerSample {
            id: "evse-1".into(),
            applied,
            acked,
            older_writes: older,
        }],
        ..empty(t)
    }
}

#[test]
fn lost_repeated_or_regressed_setpoints_are_violations() {
    let ok = vec![
        charger(0, None, None, 0),
        charger(1, key(1, 0), None, 0),
        charger(2, key(1, 1), key(1, 0), 0),
        charger(3, key(2, 0), key(2, 0), 0),
    ];
    let mut c = AppliedOnce::new();
    assert!(run(&mut c, &ok).is_empty());
    let s = c.summary();
    assert!(s.held && s.exercised);
    // A write with an older key after a newer one (a superseded setpoint applied again).
    let again = vec![
        charger(0, key(2, 0), key(2, 0), 0),
        charger(1, key(2, 0), key(2, 0), 1),
    ];
    assert_eq!(run(&mut AppliedOnce::new(), &again), vec![1]);
    // The device's applied key goes back.
    let back = vec![
        charger(0, key(2, 1), None, 0),
        charger(1, key(2, 0), None, 0),
    ];
    assert_eq!(run(&mut AppliedOnce::new(), &back), vec![1]);
    // Acknowledged but never applied (lost).
    let lost = vec![charger(0, key(1, 0), key(1, 3), 0)];
    let mut c = AppliedOnce::new();
    assert_eq!(run(&mut c, &lost), vec![0]);
    assert!(c.summary().first.unwrap().message.contains("acknowledged"));
}

fn down(t: u64, paths: &[&str], restarted: &[&str]) -> Sample {
    Sample {
        down: paths.iter().map(|p| p.to_string()).collect(),
        restarted: restarted.iter().map(|p| p.to_string()).collect(),
        ..empty(t)
    }
}

#[test]
fn an_actor_down_past_the_bound_is_a_violation() {
    let ok = vec![
        down(0, &[], &[]),
        down(100, &["node/site"], &[]),
        down(1_000, &["node/site"], &[]),
        down(1_100, &[], &["node/segments/tx-1/safety"]),
    ];
    let mut c = RestartWithin::new(1.0);
    assert!(run(&mut c, &ok).is_empty());
    let s = c.summary();
    assert!(s.held && s.exercised);
    assert!((s.worst_margin.unwrap() - 0.1).abs() < 1e-9, "{s:?}");
    let bad = vec![
        down(0, &["node/site"], &[]),
        down(900, &["node/site", "node/segments"], &[]),
        down(1_100, &["node/site", "node/segments"], &[]),
        down(2_000, &["node/segments"], &[]),
    ];
    let mut c = RestartWithin::new(1.0);
    assert_eq!(run(&mut c, &bad), vec![1_100, 2_000]);
    let s = c.summary();
    assert_eq!(s.first.unwrap().subject, "node/site");
    assert_eq!(s.violations, 2);
    // Nothing crashed: not exercised.
    let mut c = RestartWithin::new(1.0);
    run(&mut c, &[down(0, &[], &[])]);
    assert!(!c.summary().exercised);
}

#[test]
fn discharge_into_a_dead_grid_after_the_bound_is_a_violation() {
    use gridvisor_chaos::invariants::{grid_dead, NoDischargeIntoDeadGrid};
    assert!(grid_dead(0.0, 60.0) && grid_dead(1.0, 62.5) && grid_dead(f64::NAN, 60.0));
    assert!(!grid_dead(1.0, 60.0) && !grid_dead(1.15, 61.0));
    let step = |t: u64, dead: bool, dis: f64| Sample {
        segments: vec![segment(0, dis, 50.0)],
        grid_dead: dead,
        ..empty(t)
    };
    // The grid dies at 1 s; discharge stops at 1.5 s: within a 1 s bound. It dies again at
    // 5 s and the segment, Normal to the node, keeps discharging: a violation at 6.5 s.
    let ok = [
        step(0, false, 10.0),
        step(1_000, true, 10.0),
        step(1_500, true, 0.0),
    ];
    let mut c = NoDischargeIntoDeadGrid::new(1.0);
    assert!(run(&mut c, &ok).is_empty());
    assert!(c.summary().held && c.summary().exercised);
    let bad = [
        step(4_000, false, 10.0),
        step(5_000, true, 10.0),
        step(6_000, true, 10.0),
        step(6_500, true, 10.0),
        step(7_000, true, 10.0),
        step(8_000, false, 10.0),
    ];
    let mut c = NoDischargeIntoDeadGrid::new(1.0);
    assert_eq!(run(&mut c, &bad), [6_500], "one violation per episode");
    let s = c.summary();
    assert!(!s.held);
    assert_eq!(s.first.unwrap().invariant, "no_discharge_into_dead_grid");
}

/// A dead grid from 1 s: evse-1 (tx-1) exports until `stops_ms`; tx-1's relay opens at
/// `opens_ms` (and, with `model_broken`, evse-1 still exports behind it).
fn island(stops_ms: u64, opens_ms: Option<u64>, model_broken: bool) -> Vec<Sample> {
    (0..=8)
        .map(|i| i * 500)
        .map(|t| {
            let open = opens_ms.is_some_and(|o| t >= o);
            let exports = t < stops_ms && (!open || model_broken);
            Sample {
                grid_dead: t >= 1_000,
                exporting: if exports {
                    vec![ExportSample {
                        id: "evse-1".into(),
                        segment: "tx-1".into(),
                        kw: 22.0,
                    }]
                } else {
                    Vec::new()
                },
                relays_open: if open {
                    vec!["tx-1".into()]
                } else {
                    Vec::new()
                },
                ..empty(t)
            }
        })
        .collect()
}

#[test]
fn a_device_exporting_into_an_island_past_two_seconds_or_behind_an_open_relay_is_a_violation() {
    // It stops 1.5 s into the island: within IEEE 1547's 2 s.
    let mut c = NoExportIntoIsland::new();
    assert!(run(&mut c, &island(2_500, None, false)).is_empty());
    assert!(c.summary().held && c.summary().exercised);
    // It exports on (a charger nobody can command): a violation at 3.5 s, named.
    let mut c = NoExportIntoIsland::new();
    assert_eq!(run(&mut c, &island(10_000, None, false)), [3_500]);
    let first = c.summary().first.unwrap();
    assert_eq!(
        (first.invariant, first.subject.as_str()),
        ("no_export_into_island", "evse-1")
    );
    // The relay opens at 2 s: it exports nothing from then, which holds.
    let mut c = NoExportIntoIsland::new();
    assert!(run(&mut c, &island(10_000, Some(2_000), false)).is_empty());
    // A device that exports behind an open relay breaks it at once.
    let mut c = NoExportIntoIsland::new();
    assert_eq!(run(&mut c, &island(10_000, Some(1_500), true)), [1_500]);
    assert!(c
        .summary()
        .first
        .unwrap()
        .message
        .contains("behind the open trip relay"));
}

#[test]
fn a_responsive_device_exporting_past_100_ms_of_an_islanded_segment_is_a_violation() {
    use gridvisor_chaos::invariants::{OutputSample, ResponsiveStopOnIslanding};
    let out = |id: &str, kw: f64, responsive: bool| OutputSample {
        id: id.into(),
        segment: "tx-1".into(),
        setpoint_kw: kw,
        responsive,
    };
    // (t, grid dead, level, level since, [(device, kW, responsive)])
    type Step<'a> = (u64, bool, u8, u64, &'a [(&'a str, f64, bool)]);
    let samples = |steps: &[Step]| -> Vec<Sample> {
        steps
            .iter()
            .map(|&(t, dead, level, since, outs)| Sample {
                segments: vec![SegmentSample {
                    level_since_ms: since,
                    ..segment(level, 0.0, 50.0)
                }],
                grid_dead: dead,
                outputs: outs.iter().map(|&(id, kw, r)| out(id, kw, r)).collect(),
                ..empty(t)
            })
            .collect()
    };
    // The grid dies at 1.0 s, the segment trips at 1.16 s; evse-1 answers and holds 0 kW by
    // 1.2 s; evse-2 hangs and exports on: left out, not a violation.
    let ok = samples(&[
        (
            900,
            false,
            0,
            0,
            &[("evse-1", -10.0, true), ("evse-2", -10.0, true)],
        ),
        (
            1_000,
            true,
            0,
            0,
            &[("evse-1", -10.0, true), ("evse-2", -10.0, false)],
        ),
        (
            1_200,
            true,
            3,
            1_160,
            &[("evse-1", 0.0, true), ("evse-2", -10.0, false)],
        ),
        (
            1_400,
            true,
            3,
            1_160,
            &[("evse-1", 0.0, true), ("evse-2", -10.0, true)],
        ),
    ]);
    let mut c = ResponsiveStopOnIslanding::new();
    assert!(run(&mut c, &ok).is_empty());
    assert!(c.summary().held && c.summary().exercised);
    // The same, but evse-1 answers and still holds -10 kW at 1.3 s (140 ms after the trip):
    // one violation, at 1.3 s, for evse-1 only.
    let bad = samples(&[
        (
            900,
            false,
            0,
            0,
            &[("evse-1", -10.0, true), ("evse-2", -10.0, true)],
        ),
        (
            1_000,
            true,
            0,
            0,
            &[("evse-1", -10.0, true), ("evse-2", -10.0, false)],
        ),
        (
            1_200,
            true,
            3,
            1_160,
            &[("evse-1", -10.0, true), ("evse-2", -10.0, false)],
        ),
        (
            1_300,
            true,
            3,
            1_160,
            &[("evse-1", -10.0, true), ("evse-2", -10.0, false)],
        ),
        (
            1_400,
            true,
            3,
            1_160,
            &[("evse-1", -10.0, true), ("evse-2", -10.0, false)],
        ),
    ]);
    let mut c = ResponsiveStopOnIslanding::new();
    let violations: Vec<_> = bad.iter().flat_map(|s| c.step(s)).collect();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(
        (violations[0].t_ms, violations[0].subject.as_str()),
        (1_300, "evse-1")
    );
    assert_eq!(violations[0].invariant, "responsive_stop_on_islanding");
    assert!(!c.summary().held);
    // A live grid asks nothing, whatever the devices hold.
    let live = samples(&[(1_000, false, 3, 0, &[("evse-1", -10.0, true)])]);
    let mut c = ResponsiveStopOnIslanding::new();
    assert!(run(&mut c, &live).is_empty());
    assert!(!c.summary().exercised);
}
