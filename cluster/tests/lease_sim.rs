//! A deterministic simulation of the lease protocol: a holder, a taker and their grantors on a
//! network that delays, loses and partitions messages, each node on its own clock (its own
//! offset and a rate within the drift bound). Checked at every step of real time:
//!
//! - safety: the holder and the taker never hold the segment at once (neither Driving nor
//!   ChargeOnly: a segment in ChargeOnly is still commanded);
//! - reaction: once the holder is cut off from the majority it leaves Driving within
//!   `charge_only_after` of its clock (the "ChargeOnly within 1 s");
//! - liveness: a holder cut off long enough is taken over before the partition heals.

use std::collections::BinaryHeap;
use std::time::Duration;

use gridvisor_cluster::lease::{Grantor, Holder, LeaseConfig, LeaseState, NodeId, Takeover};
use proptest::prelude::*;

/// The simulation's step of real time.
const STEP: Duration = Duration::from_millis(5);
/// How long one run lasts (real time).
const RUN: Duration = Duration::from_secs(20);
/// Heartbeat period (each holder's own clock).
const HEARTBEAT: Duration = Duration::from_millis(100);
/// The taker suspects the holder after this long without a heartbeat (its own clock).
const SUSPECT_AFTER: Duration = Duration::from_millis(800);

fn config(drift_ppm: u32) -> LeaseConfig {
    LeaseConfig {
        lease: Duration::from_secs(3),
        charge_only_after: Duration::from_secs(1),
        max_drift_ppm: drift_ppm,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    /// A heartbeat round from a holder.
    Heartbeat { holder: NodeId, round: u64 },
    /// Its acknowledgement.
    Ack { round: u64 },
    /// The taker asks to release the holder.
    Release { holder: NodeId },
    /// A release vote.
    Vote,
}

#[derive(Debug, PartialEq, Eq)]
struct InFlight {
    at: Duration,
    seq: u64,
    from: NodeId,
    to: NodeId,
    msg: Msg,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A min-heap on (delivery time, send order).
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct Clock {
    offset: Duration,
    rate: f64,
}

impl Clock {
    fn local(&self, real: Duration) -> Duration {
        self.offset + real.mul_f64(self.rate)
    }
}

/// One run: returns a description of the first violation, if any.
fn run(
    seed: u64,
    nodes: usize,
    drift_ppm: u32,
    drop_pct: u64,
    max_delay_ms: u64,
) -> Result<(), String> {
    let cfg = config(drift_ppm);
    let mut rng = Rng(seed);
    let d = f64::from(drift_ppm) / 1e6;
    let clocks: Vec<Clock> = (0..nodes)
        .map(|_| Clock {
            offset: Duration::from_millis(rng.below(1_000_000)),
            rate: 1.0 - d + 2.0 * d * rng.unit(),
        })
        .collect();
    // The holder is node 0, the taker node 1.
    let (h, t) = (0 as NodeId, 1 as NodeId);
    let mut holder = Holder::new(h, nodes, cfg).unwrap();
    let mut grantors: Vec<Grantor> = (0..nodes)
        .map(|i| Grantor::new(i as NodeId, cfg).unwrap())
        .collect();
    let mut takeover: Option<Takeover> = None;
    let mut new_holder: Option<Holder> = None;
    // Partitions: the holder is cut off from everyone during [start, end) windows.
    let mut windows = Vec::new();
    let mut at = Duration::from_millis(1_000 + rng.below(3_000));
    while at < RUN {
        let len = Duration::from_millis(200 + rng.below(7_000));
        windows.push((at, at + len));
        at += len + Duration::from_millis(500 + rng.below(4_000));
    }
    let cut = |real: Duration, a: NodeId, b: NodeId| {
        (a == h) != (b == h) && windows.iter().any(|(s, e)| *s <= real && real < *e)
    };
    let mut net: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut last_beat_h = Duration::ZERO;
    let mut last_beat_t = Duration::ZERO;
    let mut heard_h = clocks[t as usize].local(Duration::ZERO);
    let mut last_release = Duration::ZERO;
    let mut real = Duration::ZERO;
    let mut send = |net: &mut BinaryHeap<InFlight>,
                    rng: &mut Rng,
                    real: Duration,
                    from: NodeId,
                    to: NodeId,
                    msg: Msg| {
        if rng.below(100) < drop_pct {
            return;
        }
        seq += 1;
        let delay = Duration::from_millis(rng.below(max_delay_ms + 1));
        net.push(InFlight {
            at: real + delay,
            seq,
            from,
            to,
            msg,
        });
    };
    // Start: the holder has a confirmed lease.
    let r0 = holder.heartbeat(clocks[0].local(Duration::ZERO));
    for j in 1..nodes as NodeId {
        if grantors[j as usize].on_heartbeat(h, clocks[j as usize].local(Duration::ZERO)) {
            holder.on_ack(j, r0);
        }
    }
    let mut taken_over_at: Option<Duration> = None;
    while real < RUN {
        // Deliver what is due.
        while net.peek().is_some_and(|m| m.at <= real) {
            let m = net.pop().unwrap();
            if cut(real, m.from, m.to) {
                continue;
            }
            let local = clocks[m.to as usize].local(real);
            match m.msg {
                Msg::Heartbeat {
                    holder: from_holder,
                    round,
                } => {
                    if m.to == t && from_holder == h {
                        heard_h = local;
                    }
                    if grantors[m.to as usize].on_heartbeat(from_holder, local) {
                        send(&mut net, &mut rng, real, m.to, m.from, Msg::Ack { round });
                    }
                }
                Msg::Ack { round } => {
                    if m.to == h {
                        holder.on_ack(m.from, round);
                    } else if let Some(nh) = new_holder.as_mut() {
                        nh.on_ack(m.from, round);
                    }
                }
                Msg::Release { holder: released } => {
                    if grantors[m.to as usize].release(released, local) {
                        send(&mut net, &mut rng, real, m.to, m.from, Msg::Vote);
                    }
                }
                Msg::Vote => {
                    if let Some(tk) = takeover.as_mut() {
                        tk.on_vote(m.from);
                    }
                }
            }
        }
        // The holder's heartbeats.
        let lh = clocks[h as usize].local(real);
        if lh >= last_beat_h + HEARTBEAT {
            last_beat_h = lh;
            let round = holder.heartbeat(lh);
            for j in 0..nodes as NodeId {
                if j != h {
                    send(
                        &mut net,
                        &mut rng,
                        real,
                        h,
                        j,
                        Msg::Heartbeat { holder: h, round },
                    );
                }
            }
        }
        // The taker: suspect, ask for releases, then hold its own lease.
        let lt = clocks[t as usize].local(real);
        if new_holder.is_none() && lt >= heard_h + SUSPECT_AFTER {
            let tk = takeover.get_or_insert_with(|| Takeover::new(h, nodes));
            if tk.granted() {
                new_holder = Some(Holder::new(t, nodes, cfg).unwrap());
                taken_over_at = Some(real);
            } else if lt >= last_release + HEARTBEAT {
                last_release = lt;
                if grantors[t as usize].release(h, lt) {
                    tk.on_vote(t);
                }
                for j in 0..nodes as NodeId {
                    if j != t && j != h {
                        send(&mut net, &mut rng, real, t, j, Msg::Release { holder: h });
                    }
                }
            }
        }
        if let Some(nh) = new_holder.as_mut() {
            if lt >= last_beat_t + HEARTBEAT {
                last_beat_t = lt;
                let round = nh.heartbeat(lt);
                for j in 0..nodes as NodeId {
                    if j != t {
                        send(
                            &mut net,
                            &mut rng,
                            real,
                            t,
                            j,
                            Msg::Heartbeat { holder: t, round },
                        );
                    }
                }
            }
        }
        // Safety.
        let old = holder.state(lh);
        let new = new_holder
            .as_ref()
            .map_or(LeaseState::Stopped, |nh| nh.state(lt));
        if old != LeaseState::Stopped && new != LeaseState::Stopped {
            return Err(format!(
                "at {real:?} both hold the segment: holder {old:?}, taker {new:?} (seed {seed})"
            ));
        }
        // Reaction: cut off for longer than charge_only_after (its clock), not Driving.
        for (s, e) in &windows {
            let bound = *s + cfg.charge_only_after.mul_f64(1.0 / (1.0 - d)) + STEP;
            if bound <= real && real < *e && old == LeaseState::Driving {
                return Err(format!(
                    "at {real:?} the holder still drives, cut off since {s:?} (seed {seed})"
                ));
            }
        }
        real += STEP;
    }
    // Liveness: a window longer than suspicion + promise + delays ends in a takeover.
    let needed =
        SUSPECT_AFTER + cfg.grantor_promise() + Duration::from_millis(4 * max_delay_ms + 1_000);
    let long = windows
        .iter()
        .find(|(s, e)| e.saturating_sub(*s) > needed.mul_f64(1.2) && *e <= RUN);
    if drop_pct == 0 {
        if let Some((s, e)) = long {
            if taken_over_at.is_none_or(|t| t > *e) {
                return Err(format!(
                    "the holder was cut off from {s:?} to {e:?} and not taken over (seed {seed})"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn a_quiet_network_never_takes_over() {
    // No partition can happen before 1 s; with none at all the holder keeps its segment.
    let cfg = config(10_000);
    let mut h = Holder::new(0, 3, cfg).unwrap();
    let mut g1 = Grantor::new(1, cfg).unwrap();
    for i in 0..100u64 {
        let now = Duration::from_millis(i * 100);
        let r = h.heartbeat(now);
        if g1.on_heartbeat(0, now) {
            h.on_ack(1, r);
        }
        assert_eq!(h.state(now), LeaseState::Driving);
        assert!(!g1.release(0, now), "no release while the holder is heard");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("GRIDVISOR_LEASE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        .. ProptestConfig::default()
    })]

    #[test]
    fn two_nodes_never_hold_one_segment(
        seed in any::<u64>(),
        five in any::<bool>(),
        drift_ppm in 0u32..50_000,
        drop_pct in 0u64..30,
        max_delay_ms in 0u64..400,
    ) {
        let nodes = if five { 5 } else { 3 };
        if let Err(e) = run(seed, nodes, drift_ppm, drop_pct, max_delay_ms) {
            return Err(TestCaseError::fail(e));
        }
    }

    #[test]
    fn without_losses_a_cut_off_holder_is_taken_over(
        seed in any::<u64>(),
        drift_ppm in 0u32..20_000,
        max_delay_ms in 0u64..200,
    ) {
        if let Err(e) = run(seed, 3, drift_ppm, 0, max_delay_ms) {
            return Err(TestCaseError::fail(e));
        }
    }
}
