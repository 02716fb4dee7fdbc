//! State shared between the actors of a node: the segment boards and the domain metrics.
//!
//! Erlang systems keep read-mostly data that many processes consult in ETS tables rather
//! than asking a process for it; a segment board is that table. Each entry has one writer
//! (a link writes its link status, a session its session status, the safety actor the
//! level), any actor of the node may read. The boards outlive actor restarts on purpose:
//! a restarted dispatcher finds the sessions' last statuses, and the safe-state ladder of a
//! segment survives the restart of the segment's own supervisor (which is how "a segment
//! past its restart intensity goes to ChargeOnly" can hold while the segment is down).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use gridvisor_supervisors::{CountedRef, SupervisionMetrics};
use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts};
use ractor::ActorRef;
use serde::Serialize;

use crate::checkpoint::CheckpointStore;
use crate::clock::Clock;
use crate::config::{Segment, Topology};
use crate::device::{ChargerIo, InverterIo, MeterIo, RelayIo, SimSite};
use crate::ladder::{Fault, LadderConfig, SafeState, SafeStateLadder, Transition};
use crate::runtime::{DispatcherMsg, InverterMsg, LinkMsg, SafetyMsg, SessionMsg, SiteMsg};
use crate::setpoint::{Applied, SetpointKey};
use crate::thermal::{ThermalParams, TransformerThermal};

/// How many safe-state transitions and alarms the node keeps for the API.
pub const EVENT_LOG_LIMIT: usize = 1_024;

pub(crate) use crate::lock;

/// A board: a concurrent map keyed by an id from the topology. The ids come from the
/// operator's configuration, not from the network, so a fast non-cryptographic hasher
/// (foldhash, also hashbrown's default) replaces SipHash, which was a tenth of a dispatch
/// round at 10,000 chargers.
pub type Board<V> = DashMap<String, V, foldhash::fast::RandomState>;

/// Empty a "current incarnation" slot, but only if it still holds `me`: a newer incarnation
/// may already have registered itself while the old one was stopping.
pub(crate) fn release<M: ractor::Message>(slot: &Mutex<Option<CountedRef<M>>>, me: &ActorRef<M>) {
    let mut s = lock(slot);
    if s.as_ref().is_some_and(|r| r.get_id() == me.get_id()) {
        *s = None;
    }
}

/// A charger link's last known state, as the dispatcher needs it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkStatus {
    /// The setpoint the device holds after local clamps, kW.
    pub commanded_kw: Option<f64>,
    /// What it delivered at the last reading, kW.
    pub measured_kw: Option<f64>,
    /// The last applied key.
    pub applied: Option<SetpointKey>,
    /// When the applied setpoint's lease ends.
    pub lease_until: Option<Duration>,
}

/// A link in the board: its address and status.
#[derive(Debug, Clone)]
pub struct LinkEntry {
    /// The link actor (the current incarnation), its sends counted in its mailbox depth.
    pub actor: CountedRef<LinkMsg>,
    /// Its status.
    pub status: LinkStatus,
}

/// A session's state as the dispatcher and the API see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionStatus {
    /// The session model (state, SoC, limits).
    pub session: crate::session::Session,
    /// The charger's energy register at the last reading (None before the first).
    pub register_kwh: Option<f64>,
    /// Power at the last reading, kW.
    pub power_kw: f64,
}

/// What a segment reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct SegmentTelemetry {
    /// Metered power at the transformer, kW.
    pub metered_kw: f64,
    /// The segment's share of the grid requests this cycle, kW.
    pub target_kw: f64,
    /// Sum of the setpoints the dispatcher sent this cycle, kW.
    pub setpoint_kw: f64,
    /// Hot-spot temperature of the transformer model, °C.
    pub hot_spot_c: f64,
    /// Thermal headroom, 0..1.
    pub headroom: f64,
    /// Power the sessions could take now, kW.
    pub max_charge_kw: f64,
    /// Power the sessions could give now, kW (magnitude).
    pub max_discharge_kw: f64,
    /// The last key the dispatcher sent.
    pub last_key: Option<SetpointKey>,
    /// The grid frequency of the last good meter reading, Hz (None: none yet).
    pub frequency_hz: Option<f64>,
    /// The frequency response (droop) in the last batch's setpoints, kW (> 0 more charge).
    pub droop_kw: f64,
}

/// One transformer segment's shared state.
pub struct SegmentShared {
    /// The segment's id.
    pub id: String,
    /// The substation it belongs to.
    pub substation: String,
    /// Its configuration.
    pub config: Segment,
    /// The segment's safe-state ladder (owned logically by the safety actor; hooks may feed
    /// it while the segment is down).
    pub ladder: Mutex<SafeStateLadder>,
    level: RwLock<SafeState>,
    /// The transformer's thermal model, stepped by the meter actor.
    pub thermal: Mutex<TransformerThermal>,
    /// Links by charger id.
    pub links: Board<LinkEntry>,
    /// Sessions by charger id.
    pub sessions: Board<SessionStatus>,
    /// Session actors by charger id.
    pub session_actors: Board<ActorRef<SessionMsg>>,
    /// Inverter actors by id.
    pub inverters: Board<ActorRef<InverterMsg>>,
    /// The dispatcher (current incarnation).
    pub dispatcher: Mutex<Option<CountedRef<DispatcherMsg>>>,
    /// The safety actor (current incarnation).
    pub safety: Mutex<Option<CountedRef<SafetyMsg>>>,
    /// Telemetry for the API and metrics.
    pub telemetry: Mutex<SegmentTelemetry>,
    /// The segment's trip output (with a `trip` in the topology), driven by the safety actor.
    pub relay: Option<Mutex<crate::io::relay::RelayOutput>>,
    /// Every charger's last applied setpoint and the node run ([`SiteShared::boot`]) that
    /// applied it. A link writes its entry when it applies (or adopts the device's record);
    /// the dispatcher makes the whole map durable as one [`AppliedRecord`] per batch, before
    /// the batch is acknowledged; a restarted link starts from its entry. Seeded from the
    /// store when the node starts.
    pub applied: Board<(Applied, u64)>,
    /// The safe-state outputs of the segment: one task per device, the newest level first
    /// ([`super::safe_command`]).
    pub commander: super::safe_command::SafeCommander,
    /// The frequency response's tracker ([`crate::droop`]): fed by the meter poller, read by
    /// the dispatcher.
    pub droop: Mutex<crate::droop::FrequencyTracker>,
}

/// The checkpoint of a segment's applied setpoints: one record per segment, written once per
/// dispatch batch (one write instead of one per charger: at 10,000 chargers the per-charger
/// writes were a third of the node's CPU).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AppliedRecord {
    /// Charger id → (its last applied setpoint, the node run that applied it).
    pub chargers: BTreeMap<String, (Applied, u64)>,
}

/// An [`AppliedRecord`] serialized from a segment's board as it is (same encoding).
pub(crate) struct AppliedRecordRef<'a>(&'a Board<(Applied, u64)>);

impl serde::Serialize for AppliedRecordRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};
        struct Entries<'a>(&'a Board<(Applied, u64)>);
        impl serde::Serialize for Entries<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for e in self.0.iter() {
                    map.serialize_entry(e.key(), e.value())?;
                }
                map.end()
            }
        }
        let mut s = serializer.serialize_struct("AppliedRecord", 1)?;
        s.serialize_field("chargers", &Entries(self.0))?;
        s.end()
    }
}

/// What a node may do with its segments at this moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Command them.
    Yes,
    /// Command them, but never to discharge.
    ChargeOnly,
    /// Command nothing.
    No,
}

/// Decides, at the moment of each dispatch round, whether the node may drive (a cluster's
/// majority lease). Must be cheap: it is asked once per round.
pub trait DriveGate: Send + Sync + 'static {
    /// What the node may do now.
    fn drive(&self) -> Drive;
}

/// The checkpoint key of a segment's [`AppliedRecord`].
pub fn applied_record_key(segment: &str) -> String {
    format!("applied/{segment}")
}

impl SegmentShared {
    /// Record `applied` as a charger's newest applied setpoint (an older key never replaces a
    /// newer one).
    pub(crate) fn record_applied(&self, charger: &str, applied: Applied, boot: u64) {
        match self.applied.get_mut(charger) {
            Some(mut e) => {
                if e.0.key <= applied.key {
                    *e = (applied, boot);
                }
            }
            None => {
                self.applied.insert(charger.to_owned(), (applied, boot));
            }
        }
    }

    /// The segment's applied setpoints as the record to checkpoint, serialized straight from
    /// the board (no copy of a map per batch).
    pub(crate) fn applied_record(&self) -> AppliedRecordRef<'_> {
        AppliedRecordRef(&self.applied)
    }

    /// The segment's current safe state (what local safety clamps with).
    pub fn level(&self) -> SafeState {
        *self.level.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish the ladder's level now (under its lock).
    pub(crate) fn publish_level(&self) -> SafeState {
        let ladder = lock(&self.ladder);
        let level = ladder.level();
        self.set_level(level);
        level
    }

    pub(crate) fn set_level(&self, level: SafeState) {
        *self.level.write().unwrap_or_else(|p| p.into_inner()) = level;
    }

    /// Feed the ladder directly (from a hook or a test) and publish a change. Returns the
    /// transition; the safety actor, if running, is told to enforce it.
    pub fn observe(&self, fault: Fault, now: Duration) -> Option<Transition> {
        let t = {
            // The level is published under the ladder's lock, from the ladder itself: two
            // observers on two threads can never publish their transitions out of order.
            let mut ladder = lock(&self.ladder);
            let t = ladder.observe(fault, now);
            if t.is_some() {
                self.set_level(ladder.level());
            }
            t
        };
        if let Some(t) = &t {
            if let Some(s) = lock(&self.safety).as_ref() {
                let _ = s.send_message(SafetyMsg::Enforce(t.clone()));
            }
        }
        t
    }

    /// An operator's reset of the segment's lockout at `now` (see
    /// [`SafeStateLadder::reset`]); the transition, published like any other, goes to the
    /// safety actor, which commands the devices, releases the trip relay and checkpoints the
    /// level.
    pub fn reset(&self, now: Duration) -> Result<Option<Transition>, crate::ladder::ResetRefused> {
        let t = {
            let mut ladder = lock(&self.ladder);
            let t = ladder.reset(now)?;
            if t.is_some() {
                self.set_level(ladder.level());
            }
            t
        };
        if let Some(t) = &t {
            if let Some(s) = lock(&self.safety).as_ref() {
                let _ = s.send_message(SafetyMsg::Enforce(t.clone()));
            }
        }
        Ok(t)
    }

    /// The telemetry now.
    pub fn telemetry(&self) -> SegmentTelemetry {
        *lock(&self.telemetry)
    }
}

/// A safe-state transition or an alarm, for the event stream.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// The segment.
    pub segment: String,
    /// What happened.
    pub transition: Transition,
}

/// The device connections of a node, by device id.
pub struct Devices {
    /// Chargers.
    pub chargers: HashMap<String, Arc<dyn ChargerIo>>,
    /// Inverters.
    pub inverters: HashMap<String, Arc<dyn InverterIo>>,
    /// Meters.
    pub meters: HashMap<String, Arc<dyn MeterIo>>,
    /// Trip relays, by segment id.
    pub relays: HashMap<String, Arc<dyn RelayIo>>,
    /// The CSMS's view of the OCPP chargers (None: every charger is simulated in-process).
    pub ocpp: Option<Arc<crate::io::ocpp::OcppHub>>,
}

/// A device id with no connection in [`Devices`] (a topology/transport mismatch).
fn missing(kind: &str, id: &str) -> String {
    format!("no device connection for {kind} {id}")
}

impl Devices {
    /// The connection of charger `id`.
    pub fn charger(&self, id: &str) -> Result<Arc<dyn ChargerIo>, String> {
        self.chargers
            .get(id)
            .cloned()
            .ok_or_else(|| missing("charger", id))
    }

    /// The connection of inverter `id`.
    pub fn inverter(&self, id: &str) -> Result<Arc<dyn InverterIo>, String> {
        self.inverters
            .get(id)
            .cloned()
            .ok_or_else(|| missing("inverter", id))
    }

    /// The connection of meter `id`.
    pub fn meter(&self, id: &str) -> Result<Arc<dyn MeterIo>, String> {
        self.meters
            .get(id)
            .cloned()
            .ok_or_else(|| missing("meter", id))
    }

    /// The simulated devices of `sim`.
    pub fn simulated(sim: &SimSite) -> Self {
        Devices {
            chargers: sim
                .chargers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone() as Arc<dyn ChargerIo>))
                .collect(),
            inverters: sim
                .inverters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone() as Arc<dyn InverterIo>))
                .collect(),
            meters: sim
                .meters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone() as Arc<dyn MeterIo>))
                .collect(),
            relays: sim
                .relays
                .iter()
                .map(|(k, v)| (k.clone(), v.clone() as Arc<dyn RelayIo>))
                .collect(),
            ocpp: None,
        }
    }

    /// The devices of `topology`: chargers over OCPP when it has an `[ocpp]` table, inverters
    /// and meters over SunSpec Modbus TCP when they name an endpoint, the rest from `sim`.
    pub fn for_topology(topology: &Topology, sim: &SimSite, clock: &Clock) -> Result<Self, String> {
        use crate::io::modbus::{SunSpecInverter, SunSpecMeter};
        use crate::io::modbus_profile::{ProfileInverter, ProfileMeter};
        use crate::io::ocpp::{OcppCharger, OcppHub};
        let mut d = Devices::simulated(sim);
        if topology.ocpp.is_some() {
            let hub = OcppHub::new(topology, clock.clone())?;
            for (_, c) in topology.chargers() {
                let io = Arc::new(OcppCharger::new(hub.clone(), &c.id)) as Arc<dyn ChargerIo>;
                d.chargers.insert(c.id.clone(), io);
            }
            d.ocpp = Some(hub);
        }
        for (_, seg) in topology.segments() {
            // A device with a register profile is read through it; the rest speak SunSpec.
            // A profile that cannot be read fails the start here, naming the file.
            for i in &seg.inverters {
                if let Some(ep) = &i.modbus {
                    let io: Arc<dyn InverterIo> = match &ep.profile {
                        Some(_) => Arc::new(ProfileInverter::load(&i.id, ep, i.max_kw)?),
                        None => Arc::new(SunSpecInverter::new(&i.id, ep, i.max_kw)),
                    };
                    d.inverters.insert(i.id.clone(), io);
                }
            }
            if let Some(ep) = seg.trip.as_ref().and_then(|t| t.modbus.as_ref()) {
                let id = crate::device::relay_id(&seg.id);
                let relay = crate::io::relay::ModbusRelay::new(&id, ep);
                d.relays.insert(seg.id.clone(), Arc::new(relay));
            }
            for m in &seg.meters {
                if let Some(ep) = &m.modbus {
                    let io: Arc<dyn MeterIo> = match &ep.profile {
                        Some(_) => Arc::new(ProfileMeter::load(&m.id, ep, m.nominal_v)?),
                        None => Arc::new(SunSpecMeter::new(&m.id, ep, m.nominal_v)),
                    };
                    d.meters.insert(m.id.clone(), io);
                }
            }
        }
        Ok(d)
    }
}

/// How many command latencies the node keeps (for the benchmark).
pub const COMMAND_LOG_LIMIT: usize = 4_096;

/// The domain metrics of a node.
#[derive(Clone)]
pub struct DomainMetrics {
    /// Metered power per segment.
    pub segment_power: GaugeVec,
    /// Sum of setpoints per segment.
    pub segment_setpoint: GaugeVec,
    /// The segment's share of grid requests.
    pub segment_target: GaugeVec,
    /// The frequency response (droop) in the segment's last batch.
    pub segment_droop: GaugeVec,
    /// Limits per segment and direction.
    pub segment_limit: GaugeVec,
    /// Safe-state level per segment (0 normal .. 3 tripped).
    pub segment_level: GaugeVec,
    /// Transformer hot spot per segment.
    pub segment_hot_spot: GaugeVec,
    /// Session SoC, per vehicle (only when per-session metrics are on).
    pub session_soc: GaugeVec,
    /// Sessions per state and segment.
    pub sessions: GaugeVec,
    /// Fault sources asking the segment's ladder for a level, by kind (1 active or holding).
    pub fault_active: GaugeVec,
    /// Metrics expositions rendered, by format (`text`, `openmetrics`).
    pub scrapes: IntCounterVec,
    /// Site target.
    pub site_target: Gauge,
    /// Site metered power.
    pub site_power: Gauge,
    /// Setpoint outcomes.
    pub setpoints: IntCounterVec,
    /// The four setpoint outcome counters, looked up once (applied, repeat, stale, failed).
    pub setpoint_outcomes: [prometheus::IntCounter; 4],
    /// Safe-state transitions per segment and target level.
    pub transitions: IntCounterVec,
    /// Grid request → every device acknowledged, seconds.
    pub request_ack: Histogram,
    /// A dispatch cycle (all segments acknowledged), seconds.
    pub cycle: Histogram,
    /// A safe-state change → every device of the segment commanded, seconds.
    pub safe_command: HistogramVec,
    /// Trip relay commands that failed, per segment.
    pub relay_failures: IntCounterVec,
    /// What each trip relay last acknowledged: 1 trip asserted (open), 0 released, NaN not yet.
    pub relay_open: GaugeVec,
    /// A safe-state change → one device commanded, seconds (delivered commands only).
    pub safe_command_device: HistogramVec,
    /// Safe-state commands to devices by segment and outcome (delivered, failed, missed,
    /// superseded).
    pub safe_commands: IntCounterVec,
    /// Safe-state checkpoints that could not be written (each is retried), by segment.
    pub safe_checkpoint_failures: IntCounterVec,
}

fn gauge_vec(
    r: &prometheus::Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl DomainMetrics {
    /// Register the families in `r`.
    pub fn register(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let request_ack = Histogram::with_opts(
            HistogramOpts::new(
                "gridvisor_dispatch_request_ack_seconds",
                "Grid request received to every device setpoint acknowledged",
            )
            .buckets(latency_buckets.clone()),
        )?;
        r.register(Box::new(request_ack.clone()))?;
        let cycle = Histogram::with_opts(
            HistogramOpts::new(
                "gridvisor_dispatch_cycle_seconds",
                "One dispatch cycle: every segment's devices acknowledged",
            )
            .buckets(latency_buckets.clone()),
        )?;
        r.register(Box::new(cycle.clone()))?;
        let safe_command = HistogramVec::new(
            HistogramOpts::new(
                "gridvisor_safe_state_command_seconds",
                "Safe-state change to every device of the segment commanded",
            )
            .buckets(latency_buckets.clone()),
            &["segment"],
        )?;
        r.register(Box::new(safe_command.clone()))?;
        let safe_command_device = HistogramVec::new(
            HistogramOpts::new(
                "gridvisor_safe_command_device_seconds",
                "Safe-state change to one device of the segment commanded (delivered only)",
            )
            .buckets(latency_buckets),
            &["segment"],
        )?;
        r.register(Box::new(safe_command_device.clone()))?;
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let setpoints = counter(
            "gridvisor_setpoints_total",
            "Setpoints by outcome (applied, repeat, stale, failed)",
            &["outcome"],
        )?;
        let site_target = Gauge::new("gridvisor_site_target_kw", "Sum of active grid requests")?;
        r.register(Box::new(site_target.clone()))?;
        let site_power = Gauge::new("gridvisor_site_power_kw", "Metered site power")?;
        r.register(Box::new(site_power.clone()))?;
        Ok(DomainMetrics {
            segment_power: gauge_vec(
                r,
                "gridvisor_segment_power_kw",
                "Metered power at the segment's transformer (positive = import)",
                &["segment"],
            )?,
            segment_setpoint: gauge_vec(
                r,
                "gridvisor_segment_setpoint_kw",
                "Sum of the setpoints sent to the segment's devices",
                &["segment"],
            )?,
            segment_target: gauge_vec(
                r,
                "gridvisor_segment_target_kw",
                "The segment's share of the active grid requests",
                &["segment"],
            )?,
            segment_droop: gauge_vec(
                r,
                "gridvisor_segment_droop_kw",
                "The frequency response (droop) in the segment's last batch (positive: more charge)",
                &["segment"],
            )?,
            segment_limit: gauge_vec(
                r,
                "gridvisor_segment_limit_kw",
                "What the segment may take (charge) or give (discharge) now",
                &["segment", "direction"],
            )?,
            segment_level: gauge_vec(
                r,
                "gridvisor_segment_safe_state",
                "Safe-state level: 0 normal, 1 limited, 2 charge_only, 3 tripped",
                &["segment"],
            )?,
            segment_hot_spot: gauge_vec(
                r,
                "gridvisor_segment_hot_spot_celsius",
                "Transformer hot-spot temperature (thermal model)",
                &["segment"],
            )?,
            session_soc: gauge_vec(
                r,
                "gridvisor_session_soc_percent",
                "Vehicle state of charge, integrated from delivered energy",
                &["vehicle", "segment"],
            )?,
            scrapes: counter(
                "gridvisor_metrics_scrapes_total",
                "Metrics expositions rendered (scrapes of /metrics), by format",
                &["format"],
            )?,
            fault_active: gauge_vec(
                r,
                "gridvisor_segment_fault_active",
                "1 while a fault source of this kind asks the segment's ladder for a level \
                 (present, or cleared and within the hold time); 0 otherwise",
                &["segment", "cause"],
            )?,
            sessions: gauge_vec(
                r,
                "gridvisor_sessions",
                "Sessions by state",
                &["segment", "state"],
            )?,
            site_target,
            site_power,
            setpoints: setpoints.clone(),
            setpoint_outcomes: ["applied", "repeat", "stale", "failed"]
                .map(|o| setpoints.with_label_values(&[o])),
            transitions: counter(
                "gridvisor_safe_state_transitions_total",
                "Safe-state transitions by segment and level entered",
                &["segment", "to"],
            )?,
            request_ack,
            cycle,
            safe_command,
            relay_failures: counter(
                "gridvisor_trip_relay_failures_total",
                "Commands to a segment's trip relay that failed (each is retried on the next \
                 safety tick while the segment is tripped)",
                &["segment"],
            )?,
            relay_open: gauge_vec(
                r,
                "gridvisor_trip_relay_open",
                "What the segment's trip relay last acknowledged: 1 trip asserted (breaker \
                 open), 0 released; NaN before its first answer",
                &["segment"],
            )?,
            safe_command_device,
            safe_commands: counter(
                "gridvisor_safe_commands_total",
                "Safe-state commands to devices by outcome: delivered, failed, missed (its \
                 deadline), superseded (a newer level first); failed and missed are retried",
                &["segment", "outcome"],
            )?,
            safe_checkpoint_failures: counter(
                "gridvisor_safe_state_checkpoint_failures_total",
                "Safe-state checkpoints that could not be written (each is retried)",
                &["segment"],
            )?,
        })
    }
}

/// Options for a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Per-session series (starts, messages, SoC). Off for large sites: 100,000 sessions
    /// would add 100,000 series per family. `gridvisor run` takes it from the topology's
    /// `[metrics] sessions`; the default here (on) suits tests of small sites.
    pub per_session_metrics: bool,
    /// The segments this node drives from the start (None: every segment of the topology).
    /// In a cluster, the shard map gives each node its own; the others are adopted with
    /// `Node::adopt_segment` when they move here.
    pub segments: Option<BTreeSet<String>>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            per_session_metrics: true,
            segments: None,
        }
    }
}

/// Everything the actors of one node share.
pub struct SiteShared {
    /// The topology.
    pub topology: Arc<Topology>,
    /// The injectable clock.
    pub clock: Clock,
    /// The node's checkpoint store.
    pub store: CheckpointStore,
    /// Device connections.
    pub devices: Devices,
    /// The simulated world (vehicles arriving, fault injection).
    pub sim: Arc<SimSite>,
    /// The supervision registry (stable paths).
    pub registry: gridvisor_supervisors::Registry,
    /// Segments by id (fixed by the topology).
    pub segments: BTreeMap<String, Arc<SegmentShared>>,
    /// Charger id → (its segment's id, its index in that segment's `config.chargers`): the
    /// topology's own lookups scan, which made starting 100,000 sessions quadratic.
    charger_index: HashMap<String, (String, usize), foldhash::fast::RandomState>,
    /// Vehicle id → its index in `topology.vehicles`.
    vehicle_index: HashMap<String, usize, foldhash::fast::RandomState>,
    /// Which vehicle is plugged into which charger.
    pub plugged: Board<String>,
    /// Domain metrics.
    pub metrics: DomainMetrics,
    /// The supervision tree's per-actor metrics (starts, restarts, exits, messages, mailbox
    /// depths), rendered straight from their table rather than through `prometheus`.
    pub supervision: SupervisionMetrics,
    /// The Prometheus registry the node-wide and per-segment families are registered in.
    pub prometheus: prometheus::Registry,
    /// Options.
    pub options: NodeOptions,
    /// The site aggregator (current incarnation).
    pub site: Mutex<Option<CountedRef<SiteMsg>>>,
    /// The segments this node drives now (a subset of `segments`; all of them outside a
    /// cluster). Changed only by a handoff (`Node::adopt_segment`, `Node::release_segment`).
    pub owned: Mutex<BTreeSet<String>>,
    /// The highest dispatch id seen in a segment adopted from another node: the site's next
    /// round uses a newer one, so the adopted chargers see strictly increasing keys across
    /// nodes (each node counts its own dispatch ids).
    pub dispatch_floor: std::sync::atomic::AtomicU64,
    /// What a cluster's lease allows this node now (none: a node on its own drives always).
    pub drive_gate: std::sync::OnceLock<Arc<dyn DriveGate>>,
    /// Recent safe-state transitions, newest last.
    pub events: Mutex<VecDeque<Event>>,
    /// Recent "safe state changed → every device commanded" latencies, newest last.
    pub command_log: Arc<Mutex<VecDeque<Duration>>>,
    /// This run of the node (wall-clock nanoseconds at start): checkpointed leases are times
    /// on this run's clock, so a checkpoint from another run has no valid lease.
    pub boot: u64,
    /// The wall clock at the node clock's zero, Unix ns: scheduled requests' times are wall
    /// times, and every site incarnation of this node must convert them alike (exactly: a
    /// paused test clock gives the same node times in every run).
    pub wall_epoch_ns: i64,
    /// The clock source the safety ticks read (`[safety.clock]`).
    pub time_source: crate::clock_source::TimeSource,
    /// Who sent the newest keep-alive and when (the node's clock), when the caller named
    /// itself (`Node::keepalive_from`: the HTTP layer's authenticated controller).
    pub keepalive_from: Mutex<Option<(String, Duration)>>,
}

impl SiteShared {
    /// What the node may do with its segments now ([`DriveGate`]; always `Yes` outside a
    /// cluster).
    pub fn drive_gate(&self) -> Drive {
        self.drive_gate.get().map_or(Drive::Yes, |g| g.drive())
    }

    /// The segment a charger belongs to (by index, not by scanning the topology).
    pub fn charger_segment(&self, charger: &str) -> Option<&str> {
        self.charger_index.get(charger).map(|(seg, _)| seg.as_str())
    }

    /// A charger's segment and its configuration.
    pub fn charger(&self, charger: &str) -> Option<(&Arc<SegmentShared>, &crate::config::Charger)> {
        let (seg_id, i) = self.charger_index.get(charger)?;
        let seg = self.segments.get(seg_id)?;
        Some((seg, seg.config.chargers.get(*i)?))
    }

    /// A vehicle of the topology (by index).
    pub fn vehicle(&self, id: &str) -> Option<&crate::config::Vehicle> {
        self.topology.vehicles.get(*self.vehicle_index.get(id)?)
    }

    /// Build the shared state for `topology`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        topology: Arc<Topology>,
        clock: Clock,
        store: CheckpointStore,
        devices: Devices,
        sim: Arc<SimSite>,
        registry: gridvisor_supervisors::Registry,
        supervision: SupervisionMetrics,
        prometheus: prometheus::Registry,
        options: NodeOptions,
    ) -> Result<Self, crate::runtime::NodeError> {
        let metrics = DomainMetrics::register(&prometheus)?;
        let time_source =
            crate::clock_source::TimeSource::new(&topology, sim.ptp.clone(), &prometheus)?;
        let now = clock.now();
        let ladder_config = topology.safety.ladder_config();
        let command_log = Arc::new(Mutex::new(VecDeque::new()));
        let mut segments = BTreeMap::new();
        for (sub, seg) in topology.segments() {
            let thermal = TransformerThermal::new(ThermalParams {
                rated_kw: seg.rated_kw,
                time_constant_s: seg.thermal.time_constant_s,
                ambient_c: seg.thermal.ambient_c,
                rated_rise_c: seg.thermal.rated_rise_c,
                limit_c: seg.thermal.limit_c,
            })
            .map_err(|e| {
                crate::runtime::NodeError::Config(format!("segment {}: thermal model: {e}", seg.id))
            })?;
            let shared = SegmentShared {
                id: seg.id.clone(),
                substation: sub.id.clone(),
                config: seg.clone(),
                ladder: Mutex::new(SafeStateLadder::new(
                    LadderConfig {
                        auto_reclose: seg.trip.as_ref().and_then(|t| t.auto_reclose()),
                        ..ladder_config.clone()
                    },
                    now,
                )),
                level: RwLock::new(SafeState::Normal),
                thermal: Mutex::new(thermal),
                links: Board::default(),
                sessions: Board::default(),
                session_actors: Board::default(),
                inverters: Board::default(),
                dispatcher: Mutex::new(None),
                safety: Mutex::new(None),
                telemetry: Mutex::new(SegmentTelemetry {
                    headroom: 1.0,
                    ..Default::default()
                }),
                // What this segment's chargers applied before the node stopped (a corrupt
                // record stops the node from starting rather than guess what was applied).
                relay: devices.relays.get(&seg.id).map(|io| {
                    Mutex::new(crate::io::relay::RelayOutput::new(
                        &seg.id,
                        io.clone(),
                        metrics.relay_failures.with_label_values(&[&seg.id]),
                        metrics.relay_open.with_label_values(&[&seg.id]),
                    ))
                }),
                applied: store
                    .get::<AppliedRecord>(&applied_record_key(&seg.id))?
                    .unwrap_or_default()
                    .chargers
                    .into_iter()
                    .collect(),
                commander: super::safe_command::SafeCommander::new(
                    &seg.id,
                    seg.chargers
                        .iter()
                        .filter_map(|c| Some((c.id.clone(), devices.chargers.get(&c.id)?.clone())))
                        .collect(),
                    seg.inverters
                        .iter()
                        .filter_map(|i| Some((i.id.clone(), devices.inverters.get(&i.id)?.clone())))
                        .collect(),
                    &metrics,
                    command_log.clone(),
                ),
                droop: Mutex::new(crate::droop::FrequencyTracker::new(
                    topology.grid_services.frequency,
                )),
            };
            // Every series exists from the start, so that a scrape right after start shows
            // every segment (at zero) rather than nothing.
            let id = [seg.id.as_str()];
            metrics.segment_power.with_label_values(&id).set(0.0);
            metrics.segment_setpoint.with_label_values(&id).set(0.0);
            metrics.segment_target.with_label_values(&id).set(0.0);
            metrics.segment_droop.with_label_values(&id).set(0.0);
            metrics.segment_level.with_label_values(&id).set(0.0);
            for cause in crate::ladder::FaultKey::KINDS {
                metrics
                    .fault_active
                    .with_label_values(&[&seg.id, cause])
                    .set(0.0);
            }
            metrics
                .segment_hot_spot
                .with_label_values(&id)
                .set(seg.thermal.ambient_c);
            for d in ["charge", "discharge"] {
                metrics
                    .segment_limit
                    .with_label_values(&[&seg.id, d])
                    .set(0.0);
            }
            segments.insert(seg.id.clone(), Arc::new(shared));
        }
        let mut charger_index = HashMap::with_hasher(foldhash::fast::RandomState::default());
        for (_, seg) in topology.segments() {
            for (i, c) in seg.chargers.iter().enumerate() {
                charger_index.insert(c.id.clone(), (seg.id.clone(), i));
            }
        }
        let mut vehicle_index = HashMap::with_hasher(foldhash::fast::RandomState::default());
        for (i, v) in topology.vehicles.iter().enumerate() {
            vehicle_index.insert(v.id.clone(), i);
        }
        let owned = match &options.segments {
            None => segments.keys().cloned().collect(),
            Some(chosen) => {
                if let Some(unknown) = chosen.iter().find(|id| !segments.contains_key(*id)) {
                    return Err(crate::runtime::NodeError::Config(format!(
                        "the node is to drive segment {unknown:?}, which the topology does not have"
                    )));
                }
                chosen.clone()
            }
        };
        // The wall clock at the node clock's zero (ns; 0 if the wall clock is before 1970).
        let wall_epoch_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0)
            .saturating_sub(i64::try_from(clock.now().as_nanos()).unwrap_or(i64::MAX));
        Ok(SiteShared {
            owned: Mutex::new(owned),
            // Replicas of other nodes' segments may carry newer dispatch ids than this
            // node's counter.
            drive_gate: std::sync::OnceLock::new(),
            dispatch_floor: std::sync::atomic::AtomicU64::new(
                segments
                    .values()
                    .flat_map(|s| {
                        s.applied
                            .iter()
                            .map(|e| e.value().0.key.dispatch)
                            .collect::<Vec<_>>()
                    })
                    .max()
                    .unwrap_or(0),
            ),
            charger_index,
            vehicle_index,
            topology,
            clock,
            store,
            devices,
            sim,
            registry,
            segments,
            plugged: Board::default(),
            metrics,
            supervision,
            prometheus,
            options,
            site: Mutex::new(None),
            events: Mutex::new(VecDeque::new()),
            command_log,
            time_source,
            keepalive_from: Mutex::new(None),
            boot: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            wall_epoch_ns,
        })
    }

    /// The clock source's status now, as the safety ticks judge it.
    pub fn clock_status(&self) -> crate::clock_source::ClockStatus {
        self.time_source.status(self.clock.now())
    }

    /// The clock source and its status now, as the API shows it.
    pub fn clock_view(&self) -> crate::clock_source::ClockView {
        self.time_source.view(self.clock.now())
    }

    /// Recent "safe state changed → every device commanded" latencies (oldest first).
    pub fn command_latencies(&self) -> Vec<Duration> {
        lock(&self.command_log).iter().copied().collect()
    }

    /// Record how long commanding every device of `segment` took.
    pub fn record_command(&self, segment: &str, elapsed: Duration) {
        self.metrics
            .safe_command
            .with_label_values(&[segment])
            .observe(elapsed.as_secs_f64());
        let mut log = lock(&self.command_log);
        if log.len() >= COMMAND_LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(elapsed);
    }

    /// Record a transition in the event log (bounded).
    pub fn record(&self, segment: &str, transition: Transition) {
        let mut e = lock(&self.events);
        if e.len() >= EVENT_LOG_LIMIT {
            e.pop_front();
        }
        e.push_back(Event {
            segment: segment.to_string(),
            transition,
        });
    }
}
