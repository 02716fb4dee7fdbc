//! The in-process, deterministic mode: the real node on the paused clock.
//!
//! [`run`] builds a current-thread tokio runtime with its clock paused, starts the real
//! supervision tree ([`Node::start_with_devices`]) over the simulated devices (each behind a
//! fault [`Switch`]) and an in-memory checkpoint store (no writer thread), and drives time in
//! fixed steps: at each step boundary it applies the workload and the faults that are due,
//! lets the node run to the next boundary (tokio advances the paused clock from timer to
//! timer, so a simulated hour takes as long as the node's work in it), then samples the
//! simulated world and runs every invariant checker on the sample.
//!
//! Determinism: one thread, a paused clock, no OS thread besides it (the checkpoint store is
//! in memory), every random choice drawn from the seed with SplitMix64 in a fixed order. What
//! the node does not order deterministically is ordered (or rounded) here before it enters
//! the history: safe-state transitions of one step are sorted, and numbers are rounded (the
//! node sums powers over hash maps whose iteration order is seeded per process, so sums can
//! differ in their last bits from run to run). Wall-clock figures stay out of the history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use gridvisor_actors::checkpoint::CheckpointStore;
use gridvisor_actors::clock::Clock;
use gridvisor_actors::device::{ChargerIo, InverterIo};
use gridvisor_actors::io::ocpp::OFFLINE_DISCHARGE_LIMIT;
use gridvisor_actors::runtime::shared::{applied_record_key, AppliedRecord, Event as NodeEvent};
use gridvisor_actors::runtime::{
    DispatchReceipt, GridRequest, Node, NodeError, NodeOptions, RequestError,
};
use gridvisor_actors::thermal::{ThermalParams, TransformerThermal};
use gridvisor_actors::SafeState;
use gridvisor_supervisors::path::ActorPath;
use gridvisor_supervisors::registry::Lookup;
use serde::Serialize;

use crate::devices::{Mode, Switches};
use crate::invariants::{
    self, ChargerSample, ExportSample, OutputSample, Sample, SegmentSample, VehicleSample,
    Violation,
};
use crate::report::{FaultWindow, RunReport};
use crate::scenario::{FaultKind, Scenario};

/// How many events before a violation its report shows.
pub const LEAD_UP_EVENTS: usize = 25;

/// Why a run could not be made (as opposed to a run whose invariants broke).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The runtime could not be built.
    #[error("cannot build the runtime: {0}")]
    Runtime(std::io::Error),
    /// The node did not start.
    #[error("the node did not start: {0}")]
    Node(#[from] NodeError),
    /// A thermal model could not be built for a segment.
    #[error("segment {segment}: thermal model: {error}")]
    Thermal {
        /// The segment.
        segment: String,
        /// Why.
        error: String,
    },
}

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// When, ms of simulated time.
    pub t_ms: u64,
    /// What kind: fault_start, fault_end, request, receipt, transition, actor_down,
    /// actor_up, actor_restarted, vehicle_arrived, vehicle_left, token_plugged,
    /// token_unplugged, token_refused (the vehicles-arriving workload), device (a simulated
    /// device acting on its own), violation.
    pub kind: &'static str,
    /// What it concerns.
    pub subject: String,
    /// Details.
    pub detail: String,
}

/// A run's history: every event and every step's sample. The same scenario and seed give
/// the same history, byte for byte ([`History::to_json`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// Events in order.
    pub events: Vec<Event>,
    /// One sample per step.
    pub samples: Vec<Sample>,
}

impl History {
    /// The serialized history.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// FNV-1a 64 of the serialized history, in hex.
    pub fn digest(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.to_json() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// A finished run: its report and its history.
#[derive(Debug)]
pub struct RunOutcome {
    /// The report.
    pub report: RunReport,
    /// The history.
    pub history: History,
}

/// SplitMix64 (the supervisors' jitter generator): the runs' only source of randomness.
pub use gridvisor_supervisors::intensity::SplitMix64;

/// Round to 1/1000 (and never -0).
fn r3(x: f64) -> f64 {
    let r = (x * 1_000.0).round() / 1_000.0;
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// Whether `path` matches `pattern` (`*` is one whole path segment).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut a) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), a.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// The replay command of a run.
pub fn replay_command(file: &str, seed: u64) -> String {
    let quoted = if file
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        file.to_owned()
    } else {
        format!("'{}'", file.replace('\'', "'\\''"))
    };
    format!("gridvisor chaos {quoted} --seed {seed}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Request(usize),
    FaultStart(usize),
    FaultEnd(usize),
    /// A token's visit ends (before arrivals of the same instant: the bay is free again).
    Leave(usize),
    /// A token's visit starts.
    Arrive(usize),
}

/// Run `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Result<RunOutcome, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(RunError::Runtime)?;
    let started = std::time::Instant::now();
    let result = rt.block_on(run_on_paused_clock(scenario, seed));
    // Everything the node left behind ends with the runtime.
    drop(rt);
    let (history, mut report) = result?;
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(RunOutcome { report, history })
}

struct World {
    node: Arc<Node>,
    switches: Switches,
    clock: Clock,
    thermal: BTreeMap<String, TransformerThermal>,
    /// Extra load injected per segment, kW.
    extra_kw: BTreeMap<String, f64>,
    /// Chargers whose OCPP connection is down, and since when (node clock).
    offline_since: BTreeMap<String, Duration>,
    /// Vehicle → its floor, from when it was first seen plugged.
    floors: BTreeMap<String, f64>,
    permanent: Vec<String>,
    down: BTreeSet<String>,
    /// The vehicles plugged in at the last step.
    plugged: BTreeSet<String>,
    /// The incarnation each permanent path ran as at the last step.
    incarnations: BTreeMap<String, u64>,
    events_seen: usize,
    last_event: Option<(String, u64, String)>,
}

fn level_text(s: &SafeState) -> String {
    s.to_string()
}

fn event_key(e: &NodeEvent) -> (String, u64, String) {
    (
        e.segment.clone(),
        e.transition.at.as_millis() as u64,
        level_text(&e.transition.to),
    )
}

impl World {
    fn now(&self) -> Duration {
        self.clock.now()
    }

    /// Safe-state transitions recorded since the last call, sorted within the step.
    fn new_transitions(&mut self, t_ms: u64) -> Vec<Event> {
        let all = self.node.events();
        let mut fresh: Vec<NodeEvent> = if all.len() >= self.events_seen {
            all[self.events_seen..].to_vec()
        } else {
            // The node's log is bounded and dropped its oldest: start after the last seen.
            let pos = self
                .last_event
                .as_ref()
                .and_then(|k| all.iter().rposition(|e| &event_key(e) == k));
            all[pos.map_or(0, |p| p + 1)..].to_vec()
        };
        self.events_seen = all.len();
        self.last_event = all.last().map(event_key);
        // Transitions of different segments within one step are recorded in the order their
        // actors ran; order them by time, then segment.
        fresh.sort_by(|a, b| {
            (a.transition.at, &a.segment, level_text(&a.transition.to)).cmp(&(
                b.transition.at,
                &b.segment,
                level_text(&b.transition.to),
            ))
        });
        let out: Vec<Event> = fresh
            .iter()
            .map(|e| Event {
                t_ms,
                kind: "transition",
                subject: e.segment.clone(),
                detail: format!(
                    "{} → {} at {} ms{} (causes: {})",
                    e.transition.from,
                    e.transition.to,
                    e.transition.at.as_millis(),
                    if e.transition.alarm { ", ALARM" } else { "" },
                    e.transition
                        .causes
                        .iter()
                        .map(|c| format!("{c:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect();
        out
    }

    fn sample(&mut self, t_ms: u64, dt: Duration) -> Sample {
        let now = self.now();
        let node = &self.node;
        let mut segments = Vec::new();
        let mut chargers = Vec::new();
        let mut vehicles = Vec::new();
        let mut exporting = Vec::new();
        let mut export = |id: &str, segment: &str, kw: f64| {
            if kw < -invariants::DISCHARGE_EPS_KW {
                exporting.push(ExportSample {
                    id: id.to_owned(),
                    segment: segment.to_owned(),
                    kw: r3(-kw),
                });
            }
        };
        let mut outputs = Vec::new();
        let since = level_since(node);
        for (id, seg) in node.shared.segments.iter() {
            let level = seg.level();
            outputs.extend(self.outputs(seg));
            let record: Option<AppliedRecord> = node
                .shared
                .store
                .get(&applied_record_key(id))
                .unwrap_or_default();
            let mut power = 0.0;
            let mut discharge = 0.0;
            let mut v2g_kw = 0.0;
            let mut v2g_room = (0.0, 0.0);
            for c in &seg.config.chargers {
                let Some(sim) = node.sim.chargers.get(&c.id) else {
                    continue;
                };
                let reading = ChargerIo::read(sim.as_ref(), now).now_or_never();
                if let Some(Ok(r)) = reading {
                    export(&c.id, id, r.power_kw);
                    power += r.power_kw;
                    if r.power_kw < 0.0 {
                        discharge -= r.power_kw;
                    }
                    chargers.push(ChargerSample {
                        id: c.id.clone(),
                        applied: r.applied,
                        acked: record
                            .as_ref()
                            .and_then(|rec| rec.chargers.get(&c.id))
                            .map(|(a, _)| a.key),
                        older_writes: sim.older_writes(),
                    });
                }
                if let Some(b) = sim.battery(now) {
                    let vehicle = node.shared.plugged.get(&c.id).map(|v| v.value().clone());
                    if let Some(vid) = vehicle {
                        let min = node.shared.vehicle(&vid).map_or(0.0, |v| v.min_soc_pct);
                        let floor = *self
                            .floors
                            .entry(vid.clone())
                            .or_insert_with(|| min.min(b.soc_pct));
                        if c.bidirectional && b.soc_pct > min && b.soc_pct < 100.0 {
                            let sp = sim.setpoint_kw().clamp(-c.max_kw, c.max_kw);
                            v2g_kw += c.max_kw;
                            v2g_room.0 += c.max_kw - sp;
                            v2g_room.1 += c.max_kw + sp;
                        }
                        vehicles.push(VehicleSample {
                            id: vid,
                            soc_pct: (b.soc_pct * 10_000.0).round() / 10_000.0,
                            floor_pct: floor,
                        });
                    }
                }
            }
            for i in &seg.config.inverters {
                if let Some(sim) = node.sim.inverters.get(&i.id) {
                    if let Some(Ok(r)) = InverterIo::read(sim.as_ref(), now).now_or_never() {
                        export(&i.id, id, r.power_kw);
                        power += r.power_kw;
                        if r.power_kw < 0.0 {
                            discharge -= r.power_kw;
                        }
                    }
                }
            }
            let extra = self.extra_kw.get(id).copied().unwrap_or(0.0);
            let load = power + seg.config.base_load_kw + extra;
            let hot = match self.thermal.get_mut(id) {
                Some(th) => {
                    th.step(load, dt);
                    th.hot_spot_c()
                }
                None => f64::NAN,
            };
            segments.push(SegmentSample {
                id: id.clone(),
                level: level.severity(),
                cap_kw: match level {
                    SafeState::Limited { cap_kw } => Some(r3(cap_kw)),
                    _ => None,
                },
                power_kw: r3(power),
                discharge_kw: r3(discharge),
                metered_kw: r3(seg.telemetry().metered_kw),
                load_kw: r3(load),
                rated_kw: seg.config.rated_kw,
                hot_spot_c: r3(hot),
                limit_c: seg.config.thermal.limit_c,
                // The transition into this level, once the node recorded it; just now before.
                level_since_ms: since
                    .get(id.as_str())
                    .filter(|(to, _)| *to == level)
                    .map_or(t_ms, |(_, at)| *at),
                droop_kw: r3(seg.telemetry().droop_kw),
                v2g_kw,
                v2g_room_kw: (r3(v2g_room.0), r3(v2g_room.1)),
            });
        }
        chargers.sort_by(|a, b| a.id.cmp(&b.id));
        vehicles.sort_by(|a, b| a.id.cmp(&b.id));
        let registry = node.registry();
        let mut down = Vec::new();
        let mut restarted = Vec::new();
        for p in &self.permanent {
            match registry.lookup_incarnation(p) {
                Lookup::Running(_, n) => {
                    let last = self.incarnations.insert(p.clone(), n);
                    if last.is_some_and(|l| l != n) && !self.down.contains(p) {
                        restarted.push(p.clone());
                    }
                }
                Lookup::Restarting(_) | Lookup::Unknown => down.push(p.clone()),
            }
        }
        let (voltage_pu, frequency_hz) = node.sim.grid.get();
        let mut relays_open: Vec<String> = (node.sim.relays.iter())
            .filter(|(_, r)| r.open())
            .map(|(seg, _)| seg.clone())
            .collect();
        relays_open.sort();
        exporting.sort_by(|a, b| a.id.cmp(&b.id));
        Sample {
            t_ms,
            segments,
            vehicles,
            chargers,
            down,
            restarted,
            grid_dead: crate::invariants::grid_dead_at(
                node.sim.grid.nominal_hz(),
                voltage_pu,
                frequency_hz,
            ),
            exporting,
            relays_open,
            outputs,
            frequency_hz,
        }
    }

    /// The safe-state outputs of `seg` as the devices hold them, and whether each answers
    /// promptly (see [`OutputSample::responsive`]).
    fn outputs(&self, seg: &gridvisor_actors::runtime::SegmentShared) -> Vec<OutputSample> {
        let sim = &self.node.sim;
        let chargers = seg
            .config
            .chargers
            .iter()
            .filter_map(|c| Some((c.id.as_str(), sim.chargers.get(&c.id)?.setpoint_kw())));
        let inverters = seg
            .config
            .inverters
            .iter()
            .filter_map(|i| Some((i.id.as_str(), sim.inverters.get(&i.id)?.setpoint_kw())));
        chargers
            .chain(inverters)
            .map(|(id, setpoint_kw)| OutputSample {
                id: id.to_owned(),
                segment: seg.id.clone(),
                setpoint_kw: r3(setpoint_kw),
                responsive: self.switches.get(id).is_none_or(|sw| {
                    sw.mode() == Mode::Healthy && sw.delay().is_zero() && sw.panics_left() == 0
                }),
            })
            .collect()
    }
}

/// Each segment's newest recorded transition: the level entered and when, ms.
fn level_since(node: &Node) -> BTreeMap<String, (SafeState, u64)> {
    node.events()
        .into_iter()
        .map(|e| {
            let at = e.transition.at.as_millis() as u64;
            (e.segment, (e.transition.to, at))
        })
        .collect()
}

type Pending = Vec<(
    String,
    tokio::task::JoinHandle<Result<DispatchReceipt, RequestError>>,
)>;

async fn run_on_paused_clock(
    scenario: &Scenario,
    seed: u64,
) -> Result<(History, RunReport), RunError> {
    let topology = scenario.topology.clone();
    let epoch = tokio::time::Instant::now();
    let clock = Clock::Tokio { epoch };
    let switches = Switches::new(&topology);
    let wrap = switches.clone();
    // Options added later keep their defaults.
    #[allow(clippy::needless_update)]
    let options = NodeOptions {
        per_session_metrics: false,
        ..NodeOptions::default()
    };
    let node = Node::start_with_devices(
        topology.clone(),
        CheckpointStore::in_memory(),
        clock.clone(),
        prometheus::Registry::new(),
        options,
        move |d| wrap.wrap(d),
    )
    .await?;
    let node = Arc::new(node);
    let vehicles: BTreeSet<&str> = topology.vehicles.iter().map(|v| v.id.as_str()).collect();
    // Permanent actors: everything registered once the tree is up, except the sessions
    // (transient: they end with their vehicle's visit).
    let permanent: Vec<String> = node
        .registry()
        .paths_under(&ActorPath::from("node"))
        .into_iter()
        .map(|p| p.as_str().to_owned())
        .filter(|p| !vehicles.contains(p.rsplit('/').next().unwrap_or("")))
        .collect();
    let mut thermal = BTreeMap::new();
    for (_, seg) in topology.segments() {
        let th = TransformerThermal::new(ThermalParams {
            rated_kw: seg.rated_kw,
            time_constant_s: seg.thermal.time_constant_s,
            ambient_c: seg.thermal.ambient_c,
            rated_rise_c: seg.thermal.rated_rise_c,
            limit_c: seg.thermal.limit_c,
        })
        .map_err(|e| RunError::Thermal {
            segment: seg.id.clone(),
            error: e.to_string(),
        })?;
        thermal.insert(seg.id.clone(), th);
    }
    let mut world = World {
        node: node.clone(),
        switches,
        clock: clock.clone(),
        thermal,
        extra_kw: BTreeMap::new(),
        offline_since: BTreeMap::new(),
        floors: BTreeMap::new(),
        permanent,
        down: BTreeSet::new(),
        incarnations: BTreeMap::new(),
        plugged: BTreeSet::new(),
        events_seen: 0,
        last_event: None,
    };

    // The schedule, with every draw from the seed made up front in file order.
    let mut rng = SplitMix64::new(seed);
    let step_ms = scenario.step_ms;
    let end_ms = (scenario.duration_s * 1_000.0).round() as u64;
    let mut actions: Vec<(u64, Action)> = Vec::new();
    let mut targets = Vec::new();
    for (i, q) in scenario.workload.requests.iter().enumerate() {
        let jitter = (rng.next_f64() * 2.0 - 1.0) * q.jitter_kw;
        targets.push(q.target_kw + jitter);
        actions.push(((q.at_s * 1_000.0).round() as u64, Action::Request(i)));
    }
    let mut windows = Vec::new();
    for (i, f) in scenario.faults.iter().enumerate() {
        let start = ((f.at_s + rng.next_f64() * f.jitter_s) * 1_000.0).round() as u64;
        let end = f.for_s.map(|d| start + (d * 1_000.0).round() as u64);
        actions.push((start, Action::FaultStart(i)));
        if let Some(end) = end {
            actions.push((end, Action::FaultEnd(i)));
        }
        windows.push(FaultWindow {
            kind: f.kind.name().to_owned(),
            what: f.kind.describe(),
            start_ms: start,
            end_ms: end.unwrap_or(end_ms).min(end_ms),
        });
    }
    let visits = scenario
        .workload
        .arrivals
        .as_ref()
        .map(|a| crate::arrivals::plan(a, seed))
        .unwrap_or_default();
    for (i, v) in visits.iter().enumerate() {
        actions.push((v.arrive_ms, Action::Arrive(i)));
        actions.push((v.leave_ms, Action::Leave(i)));
    }
    actions.sort();
    let mut next_action = 0;
    let mut keepalive_lost = 0usize;
    let keepalive_ms = (scenario.workload.keepalive_every_s * 1_000.0).round() as u64;
    let mut next_keepalive = 0u64;
    let mut checkers = invariants::all(&scenario.bounds);
    checkers.push(Box::new(crate::droop::FrequencyResponse::new(
        topology.grid_services.frequency,
    )));
    let mut history = History {
        events: Vec::new(),
        samples: Vec::new(),
    };
    let mut violations: Vec<Violation> = Vec::new();
    let mut pending: Pending = Vec::new();
    let step = Duration::from_millis(step_ms);
    // Scenario time is the node's clock; the first step boundary after the start is the first.
    let mut t_ms = (clock.now().as_millis() as u64).div_ceil(step_ms) * step_ms;
    let mut steps = 0u64;
    while t_ms < end_ms {
        // Due actions.
        while let Some(&(at, action)) = actions.get(next_action) {
            if at > t_ms {
                break;
            }
            next_action += 1;
            match action {
                Action::Request(i) => {
                    let q = &scenario.workload.requests[i];
                    let request = GridRequest::now(
                        q.id.clone(),
                        q.scope.clone(),
                        r3(targets[i]),
                        q.duration_s,
                    );
                    history.events.push(Event {
                        t_ms,
                        kind: "request",
                        subject: q.id.clone(),
                        detail: format!(
                            "{:?} {} kW for {} s",
                            request.scope, request.target_kw, q.duration_s
                        ),
                    });
                    let n = node.clone();
                    pending.push((
                        q.id.clone(),
                        tokio::spawn(async move { n.request(request).await }),
                    ));
                }
                Action::FaultStart(i) => {
                    let f = &scenario.faults[i];
                    if matches!(f.kind, FaultKind::KeepAliveLoss) {
                        keepalive_lost += 1;
                    }
                    let detail = start_fault(&mut world, &f.kind, &mut rng);
                    history.events.push(Event {
                        t_ms,
                        kind: "fault_start",
                        subject: f.kind.name().to_owned(),
                        detail,
                    });
                }
                Action::FaultEnd(i) => {
                    let f = &scenario.faults[i];
                    if matches!(f.kind, FaultKind::KeepAliveLoss) {
                        keepalive_lost = keepalive_lost.saturating_sub(1);
                    }
                    end_fault(&mut world, &f.kind);
                    history.events.push(Event {
                        t_ms,
                        kind: "fault_end",
                        subject: f.kind.name().to_owned(),
                        detail: f.kind.describe(),
                    });
                }
                Action::Arrive(i) | Action::Leave(i) => {
                    if let Some(a) = &scenario.workload.arrivals {
                        let arrive = matches!(action, Action::Arrive(_));
                        let event = play_visit(&mut world, a, &visits[i], arrive).await;
                        history.events.push(Event { t_ms, ..event });
                    }
                }
            }
        }
        // Faults that move over time.
        for (i, f) in scenario.faults.iter().enumerate() {
            if let (FaultKind::PtpDrift { to_ms }, Some(w)) = (&f.kind, windows.get(i)) {
                if w.start_ms <= t_ms && t_ms < w.end_ms {
                    let frac = (t_ms - w.start_ms) as f64 / (w.end_ms - w.start_ms).max(1) as f64;
                    node.sim
                        .ptp
                        .set_offset(Duration::from_secs_f64(to_ms * frac / 1_000.0));
                }
            }
        }
        for charger in offline_chargers(&mut world) {
            history.events.push(Event {
                t_ms,
                kind: "device",
                subject: charger,
                detail: "offline past maxOfflineDuration: dropped its discharge profile".to_owned(),
            });
        }
        if keepalive_ms > 0 && t_ms >= next_keepalive {
            next_keepalive = t_ms + keepalive_ms;
            if keepalive_lost == 0 {
                // A site aggregator that is restarting misses this one, as it would.
                let _ = node.keepalive();
            }
        }

        // Let the node run to the next boundary.
        tokio::time::sleep_until(epoch + Duration::from_millis(t_ms) + step).await;
        t_ms += step_ms;
        steps += 1;

        // What happened.
        let mut done = Vec::new();
        for (k, (_, h)) in pending.iter().enumerate() {
            if h.is_finished() {
                done.push(k);
            }
        }
        for k in done.into_iter().rev() {
            let (id, h) = pending.remove(k);
            let detail = match h.await {
                Ok(Ok(r)) => format!(
                    "dispatch {} revision {}: {} acknowledged, {} not acknowledged, {} kW unallocated",
                    r.dispatch,
                    r.revision,
                    r.acknowledged,
                    r.not_acknowledged,
                    r3(r.unallocated_kw)
                ),
                Ok(Err(e)) => format!("refused: {e}"),
                Err(e) => format!("the request task failed: {e}"),
            };
            history.events.push(Event {
                t_ms,
                kind: "receipt",
                subject: id,
                detail,
            });
        }
        let transitions = world.new_transitions(t_ms);
        history.events.extend(transitions);
        let sample = world.sample(t_ms, step);
        let now_down: BTreeSet<String> = sample.down.iter().cloned().collect();
        for p in now_down.difference(&world.down) {
            history.events.push(Event {
                t_ms,
                kind: "actor_down",
                subject: p.clone(),
                detail: "not running".to_owned(),
            });
        }
        for p in world.down.difference(&now_down) {
            history.events.push(Event {
                t_ms,
                kind: "actor_up",
                subject: p.clone(),
                detail: "running again".to_owned(),
            });
        }
        for p in &sample.restarted {
            history.events.push(Event {
                t_ms,
                kind: "actor_restarted",
                subject: p.clone(),
                detail: "a new incarnation, within one step".to_owned(),
            });
        }
        world.down = now_down;
        let plugged: BTreeSet<String> = sample.vehicles.iter().map(|v| v.id.clone()).collect();
        for v in plugged.difference(&world.plugged) {
            history.events.push(Event {
                t_ms,
                kind: "vehicle_arrived",
                subject: v.clone(),
                detail: "plugged in".to_owned(),
            });
        }
        for v in world.plugged.difference(&plugged) {
            history.events.push(Event {
                t_ms,
                kind: "vehicle_left",
                subject: v.clone(),
                detail: "unplugged".to_owned(),
            });
        }
        world.plugged = plugged;
        for c in checkers.iter_mut() {
            for v in c.step(&sample) {
                history.events.push(Event {
                    t_ms,
                    kind: "violation",
                    subject: v.subject.clone(),
                    detail: format!("{}: {}", v.invariant, v.message),
                });
                violations.push(v);
            }
        }
        history.samples.push(sample);
    }
    // Stop the tree in order; anything still pending ends with the runtime.
    node.shutdown().await;
    let summaries: Vec<_> = checkers.iter().map(|c| c.summary()).collect();
    let report = crate::report::build(
        scenario,
        seed,
        steps,
        summaries,
        &violations,
        &history,
        windows,
    );
    Ok((history, report))
}

/// A visit of the vehicles-arriving workload arrives or leaves; the event says how it went
/// (its `t_ms` is the caller's). An arriving vehicle's SoC floor is set from its contract
/// before it plugs in ([`crate::arrivals::floor_pct`]); a leaving one's is forgotten.
async fn play_visit(
    world: &mut World,
    a: &crate::arrivals::ArrivalsPlan,
    v: &crate::arrivals::Visit,
    arrive: bool,
) -> Event {
    let (token, contract) = &a.drivers[v.driver];
    let charger = &a.chargers[v.charger];
    let node = world.node.clone();
    let result = if arrive {
        let floor = crate::arrivals::floor_pct(contract, v);
        world.floors.insert(token.value.clone(), floor);
        let max_kw = node.shared.charger(charger).map_or(0.0, |(_, c)| c.max_kw);
        crate::arrivals::arrive(&node, a, v, max_kw).await
    } else {
        world.floors.remove(&token.value);
        crate::arrivals::leave(&node, a, v).await
    };
    let (kind, detail) = match (result, arrive) {
        (Ok(()), true) => (
            "token_plugged",
            format!(
                "at {charger} with {}% ({}, v2g {}, min {}%), leaves at {} ms",
                v.soc_pct, contract.name, contract.v2g, contract.min_soc_pct, v.leave_ms
            ),
        ),
        (Ok(()), false) => ("token_unplugged", format!("left {charger}")),
        (Err(e), _) => ("token_refused", format!("at {charger}: {e}")),
    };
    Event {
        t_ms: 0,
        kind,
        subject: token.value.clone(),
        detail,
    }
}

/// Start a fault; returns what was done.
fn start_fault(world: &mut World, kind: &FaultKind, rng: &mut SplitMix64) -> String {
    let node = world.node.clone();
    let now = world.now();
    let set_mode = |device: &str, mode: Mode| match world.switches.get(device) {
        Some(sw) => {
            sw.set_mode(mode);
            format!("{device}: {mode:?}")
        }
        None => format!("{device}: no such device"),
    };
    match kind {
        FaultKind::Kill { target } => {
            let paths: Vec<String> = node
                .registry()
                .paths_under(&ActorPath::from("node"))
                .into_iter()
                .map(|p| p.as_str().to_owned())
                .filter(|p| path_matches(target, p))
                .collect();
            if paths.is_empty() {
                return format!("nothing matches {target}");
            }
            let pick = &paths[(rng.next_u64() % paths.len() as u64) as usize];
            kill(&node, pick)
        }
        FaultKind::KillSegment { segment } => kill(&node, &format!("node/segments/{segment}")),
        FaultKind::Panic { device, count } => match world.switches.get(device) {
            Some(sw) => {
                sw.arm_panics(*count);
                format!("the next {count} call(s) to {device} panic")
            }
            None => format!("{device}: no such device"),
        },
        FaultKind::Exception { device } => set_mode(device, Mode::Exception),
        FaultKind::Timeout { device } => set_mode(device, Mode::Timeout),
        FaultKind::Hang { device } => set_mode(device, Mode::Hung),
        FaultKind::Garbage { device } => set_mode(device, Mode::Garbage),
        FaultKind::Islanding {
            voltage_pu,
            frequency_hz,
        } => {
            node.sim.grid.set(*voltage_pu, *frequency_hz);
            kind.describe()
        }
        FaultKind::Frequency { frequency_hz } => {
            node.sim.grid.set(1.0, *frequency_hz);
            kind.describe()
        }
        FaultKind::PtpDrift { .. } => kind.describe(),
        FaultKind::ClockJump { offset_ms } => {
            node.sim
                .ptp
                .set_offset(Duration::from_secs_f64(offset_ms / 1_000.0));
            kind.describe()
        }
        FaultKind::ClockUnsynchronised => {
            node.sim.ptp.set_unsynchronised(true);
            kind.describe()
        }
        FaultKind::OverTemperature { inverter, celsius } => {
            match node.sim.inverters.get(inverter) {
                Some(i) => {
                    i.set_cooling_fault(*celsius, true, now);
                    kind.describe()
                }
                None => format!("{inverter}: no such inverter"),
            }
        }
        FaultKind::TransformerOverload { segment, extra_kw } => {
            set_extra(world, segment, *extra_kw);
            kind.describe()
        }
        FaultKind::KeepAliveLoss => kind.describe(),
        FaultKind::OcppDisconnect { charger } => match world.switches.get(charger) {
            Some(sw) => {
                sw.disconnect();
                world.offline_since.insert(charger.clone(), now);
                kind.describe()
            }
            None => format!("{charger}: no such charger"),
        },
        FaultKind::SlowPeer { charger, delay_ms } => match world.switches.get(charger) {
            Some(sw) => {
                sw.set_delay(Duration::from_millis(*delay_ms));
                kind.describe()
            }
            None => format!("{charger}: no such charger"),
        },
    }
}

/// What an OCPP 2.1 charge point does on its own while it is offline: past
/// `maxOfflineDuration` ([`OFFLINE_DISCHARGE_LIMIT`]) it drops a discharge profile and falls
/// back to its failsafe (`invalidAfterOfflineDuration`, as the node's profiles ask).
fn offline_chargers(world: &mut World) -> Vec<String> {
    let now = world.now();
    let mut dropped = Vec::new();
    for (id, since) in &world.offline_since {
        if now.saturating_sub(*since) < OFFLINE_DISCHARGE_LIMIT {
            continue;
        }
        if let Some(sim) = world.node.sim.chargers.get(id) {
            if sim.setpoint_kw() < 0.0 {
                sim.revert_to_failsafe(now);
                dropped.push(id.clone());
            }
        }
    }
    dropped
}

fn set_extra(world: &mut World, segment: &str, kw: f64) {
    world.extra_kw.insert(segment.to_owned(), kw);
    if let Some(seg) = world.node.shared.segments.get(segment) {
        for m in &seg.config.meters {
            if let Some(sw) = world.switches.get(&m.id) {
                sw.set_extra_kw(kw);
            }
        }
    }
}

fn kill(node: &Node, path: &str) -> String {
    match node.registry().lookup(path) {
        Ok(cell) => {
            cell.kill();
            format!("killed {path}")
        }
        Err(e) => format!("{path} not killed: {e}"),
    }
}

/// End a fault: the device or the grid is healthy again.
fn end_fault(world: &mut World, kind: &FaultKind) {
    let node = world.node.clone();
    let now = world.now();
    match kind {
        FaultKind::Kill { .. } | FaultKind::KillSegment { .. } | FaultKind::KeepAliveLoss => {}
        FaultKind::Panic { device, .. } => {
            if let Some(sw) = world.switches.get(device) {
                sw.arm_panics(0);
            }
        }
        FaultKind::Exception { device }
        | FaultKind::Timeout { device }
        | FaultKind::Hang { device }
        | FaultKind::Garbage { device } => {
            if let Some(sw) = world.switches.get(device) {
                sw.set_mode(Mode::Healthy);
            }
        }
        FaultKind::Islanding { .. } | FaultKind::Frequency { .. } => node.sim.grid.restore(),
        FaultKind::PtpDrift { .. } | FaultKind::ClockJump { .. } => {
            node.sim.ptp.set_offset(Duration::ZERO)
        }
        FaultKind::ClockUnsynchronised => node.sim.ptp.set_unsynchronised(false),
        FaultKind::OverTemperature { inverter, .. } => {
            if let Some(i) = node.sim.inverters.get(inverter) {
                i.set_cooling_fault(0.0, false, now);
            }
        }
        FaultKind::TransformerOverload { segment, .. } => set_extra(world, segment, 0.0),
        FaultKind::OcppDisconnect { charger } => {
            world.offline_since.remove(charger);
            if let Some(sw) = world.switches.get(charger) {
                sw.reconnect();
            }
        }
        FaultKind::SlowPeer { charger, .. } => {
            if let Some(sw) = world.switches.get(charger) {
                sw.set_delay(Duration::ZERO);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        assert!(path_matches(
            "node/segments/*/chargers/*/link",
            "node/segments/tx-1/chargers/evse-1/link"
        ));
        assert!(!path_matches(
            "node/segments/*/link",
            "node/segments/tx-1/chargers/evse-1/link"
        ));
        assert!(path_matches("node/site", "node/site"));
        assert!(!path_matches("node/site", "node/site/x"));
    }

    #[test]
    fn the_replay_command_quotes_what_a_shell_would_split() {
        assert_eq!(
            replay_command("configs/chaos/a.toml", 3),
            "gridvisor chaos configs/chaos/a.toml --seed 3"
        );
        assert_eq!(
            replay_command("my dir/a.toml", 3),
            "gridvisor chaos 'my dir/a.toml' --seed 3"
        );
    }

    #[test]
    fn splitmix_is_seeded() {
        let (mut a, mut b, mut c) = (SplitMix64::new(1), SplitMix64::new(1), SplitMix64::new(2));
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        let u = a.next_f64();
        assert!((0.0..1.0).contains(&u));
    }
}
