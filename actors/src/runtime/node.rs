//! A node: the supervision tree of one site, and the handle the HTTP APIs and the CLI use.
//!
//! [`Node::start`] builds the shared state, plugs in the vehicles already present, and starts
//! the tree of the module documentation in order: the segments first (each with its safety
//! actor first), then the site aggregator, so that the first dispatch finds every segment
//! running. [`Node::shutdown`] stops the tree in reverse order (the aggregator stops
//! dispatching before any device actor stops) and then drains the checkpoint store: every
//! acknowledged setpoint was durable before it was acknowledged, and nothing queued is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub use gridvisor_supervisors::exposition::Format;
use gridvisor_supervisors::prelude::*;
use gridvisor_supervisors::registry::Lookup;
use gridvisor_supervisors::{exposition, Registry, SupervisionMetrics, SupervisorReports};
use gridvisor_supervisors::{
    ChildExit, ExitClass, HookDecision, Notifier, StartError, SupervisorError, TreeContext,
    TreeNode,
};

/// Bytes of exposition per supervision label, roughly (three or four lines of ~90 bytes):
/// the initial size of the `/metrics` buffer.
const EXPOSITION_BYTES_PER_LABEL: usize = 300;
use ractor::ActorRef;
use serde::Serialize;

use super::charger::{charger_template, session_spec, ChargerArgs};
use super::dispatcher::Dispatcher;
use super::pollers::{Inverter, Meter};
use super::safety::Safety;
use super::shared::{lock, Devices, NodeOptions, SegmentShared, SegmentTelemetry, SiteShared};
use super::site::{end_session, DispatchReceipt, GridRequest, RequestError, SessionView, Site};
use super::{SafetyMsg, SiteMsg};
use crate::checkpoint::CheckpointStore;
use crate::clock::Clock;
use crate::config::{Topology, Vehicle};
use crate::device::{Battery, SimSite};
use crate::io::relay::RelayState;
use crate::ladder::{Fault, SafeState, Transition};
use crate::session::SessionState;

/// The root supervisor's name (the first segment of every path).
pub const ROOT: &str = "node";
/// A segment supervisor's restart intensity: more than this many restarts ...
pub const SEGMENT_MAX_RESTARTS: u32 = 10;
/// ... within this period, and the segment gives up (ChargeOnly and an alarm).
pub const SEGMENT_RESTART_PERIOD: Duration = Duration::from_secs(10);
/// The segments supervisor's intensity (segments that keep failing are restarted, with the
/// segment held in ChargeOnly, up to this many times per period).
pub const SEGMENTS_MAX_RESTARTS: u32 = 100;
/// How long `Node::start` waits for every link and session to be running.
pub const START_LIMIT: Duration = Duration::from_secs(600);
/// How often it looks.
const START_POLL: Duration = Duration::from_millis(10);
/// The root supervisor's restart intensity: more than this many restarts of its children in
/// [`ROOT_RESTART_PERIOD`] and the node gives up (the admin API's kill limit stays below it).
pub const ROOT_MAX_RESTARTS: u32 = 10;
/// See [`ROOT_MAX_RESTARTS`].
pub const ROOT_RESTART_PERIOD: Duration = Duration::from_secs(10);
/// How long a site call from the API may take.
pub const API_CALL_LIMIT: Duration = Duration::from_secs(10);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The supervision tree did not start.
    #[error("supervision tree: {0}")]
    Tree(#[from] SupervisorError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The checkpoint store failed.
    #[error("checkpoint store: {0}")]
    Store(#[from] crate::checkpoint::CheckpointError),
    /// The topology cannot be run.
    #[error("configuration: {0}")]
    Config(String),
    /// Plugging a vehicle in failed.
    #[error("vehicle {vehicle}: {error}")]
    Vehicle {
        /// The vehicle.
        vehicle: String,
        /// What failed.
        error: String,
    },
}

#[derive(Clone)]
struct SegmentArgs {
    shared: Arc<SiteShared>,
    seg: Arc<SegmentShared>,
}

/// A worker spec whose start function needs only its context.
fn worker_of<F, Fut>(id: &str, f: F) -> ChildSpec<()>
where
    F: Fn(ChildContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<ractor::ActorCell, StartError>> + Send + 'static,
{
    ChildSpec::worker(id, move |ctx: ChildContext, ()| f(ctx))
}

fn segment_spec() -> ChildSpec<SegmentArgs> {
    ChildSpec::worker("segment", |ctx: ChildContext, a: SegmentArgs| async move {
        let mut children = Vec::new();
        let (sh, sg) = (a.shared.clone(), a.seg.clone());
        children.push(worker_of("safety", move |ctx| {
            let (sh, sg) = (sh.clone(), sg.clone());
            async move {
                let p = ctx.path().to_string();
                ctx.spawn(Safety, (sh, sg, p)).await
            }
        }));
        for m in &a.seg.config.meters {
            let (sh, sg, id) = (a.shared.clone(), a.seg.clone(), m.id.clone());
            children.push(worker_of(&m.id, move |ctx| {
                let (sh, sg, id) = (sh.clone(), sg.clone(), id.clone());
                async move {
                    let p = ctx.path().to_string();
                    ctx.spawn(Meter, (sh, sg, id, p)).await
                }
            }));
        }
        for i in &a.seg.config.inverters {
            let (sh, sg, id, max) = (a.shared.clone(), a.seg.clone(), i.id.clone(), i.max_kw);
            children.push(worker_of(&i.id, move |ctx| {
                let (sh, sg, id) = (sh.clone(), sg.clone(), id.clone());
                async move {
                    let p = ctx.path().to_string();
                    ctx.spawn(Inverter, (sh, sg, id, max, p)).await
                }
            }));
        }
        let (sh, sg) = (a.shared.clone(), a.seg.clone());
        children.push(worker_of("dispatcher", move |ctx| {
            let (sh, sg) = (sh.clone(), sg.clone());
            async move {
                let p = ctx.path().to_string();
                ctx.spawn(Dispatcher, (sh, sg, p)).await
            }
        }));
        let (sh, sg) = (a.shared.clone(), a.seg.clone());
        children.push(
            ChildSpec::worker("chargers", move |ctx: ChildContext, ()| {
                let (sh, sg) = (sh.clone(), sg.clone());
                async move {
                    let config = SupervisorConfig::new("chargers", Strategy::OneForOne)
                        .intensity(SEGMENT_MAX_RESTARTS * 10, SEGMENT_RESTART_PERIOD);
                    // Every configured charger (issue 5: every charger that connects).
                    let cell = start_populated(
                        &ctx,
                        config,
                        charger_template(),
                        sg.config
                            .chargers
                            .iter()
                            .map(|c| {
                                let args = ChargerArgs {
                                    shared: sh.clone(),
                                    seg: sg.clone(),
                                    charger: c.clone(),
                                };
                                (c.id.clone(), args)
                            })
                            .collect(),
                    )
                    .await?;
                    // This supervisor runs (again): a restart-intensity cause its predecessor
                    // raised by giving up is cleared now, and held for the hold time.
                    sg.observe(
                        Fault::RestartIntensity {
                            supervisor: ctx.path().to_string(),
                            exceeded: false,
                        },
                        sh.clock.now(),
                    );
                    Ok(cell)
                }
            })
            .kind(ChildKind::Supervisor)
            .shutdown(Shutdown::Infinity),
        );
        let seg = a.seg.clone();
        let config = SupervisorConfig::new(&a.seg.id, Strategy::RestForOne)
            .intensity(SEGMENT_MAX_RESTARTS, SEGMENT_RESTART_PERIOD)
            .hook(move |exit: &ChildExit<'_>| {
                // Every exit inside the segment is reported to its safety actor (which raises
                // the alarm when a nested supervisor gave up); the OTP default action stands.
                let seg = seg.clone();
                let _ = exit;
                HookDecision::restart().notify(Notifier::function(move |n| {
                    if let Some(s) = lock(&seg.safety).as_ref() {
                        let _ = s.send_message(SafetyMsg::ChildExit(n));
                    }
                }))
            });
        Supervisor::start_in(&ctx, config, children).await
    })
    .kind(ChildKind::Supervisor)
    .shutdown(Shutdown::Infinity)
}

/// `node/transports`: the CSMS listener (see [`super::transports`]).
fn transports_spec(hub: Arc<crate::io::ocpp::OcppHub>) -> ChildSpec<()> {
    ChildSpec::worker("transports", move |ctx: ChildContext, ()| {
        let hub = hub.clone();
        async move {
            let csms = worker_of("csms", move |ctx| {
                let hub = hub.clone();
                async move { ctx.spawn(super::transports::Csms, hub).await }
            });
            let config = SupervisorConfig::new("transports", Strategy::OneForOne)
                .intensity(SEGMENT_MAX_RESTARTS, SEGMENT_RESTART_PERIOD);
            Supervisor::start_in(&ctx, config, vec![csms]).await
        }
    })
    .kind(ChildKind::Supervisor)
    .shutdown(Shutdown::Infinity)
}

/// How many rounds the population task of a dynamic supervisor starts the children that
/// failed to start, before it gives the supervisor up.
pub const POPULATE_TRIES: u32 = 8;
/// The wait before the second round; doubled every round up to [`POPULATE_BACKOFF_MAX`]
/// (8 rounds: about 7 s from the first try to the last).
pub const POPULATE_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two rounds.
pub const POPULATE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Start a dynamic supervisor from a start function and give it `children`, which start
/// from a task, one after the other (the supervisor serialises them anyway), so that the
/// supervisor's parent is not blocked while thousands of them start. A child that is already
/// there is fine. A child that fails to start (a session whose first checkpoint cannot reach
/// its replica while a peer is still connecting) is started again in the next round, after a
/// backoff, up to [`POPULATE_TRIES`] rounds; then the supervisor is stopped with the reason,
/// and its parent restarts it (a new incarnation populates itself) within the parent's
/// restart intensity. This is OTP's "a child that fails to restart is retried and counts
/// toward the intensity": a configured child is never silently left out. A supervisor that
/// is gone ends the task.
async fn start_populated<A: Clone + Sync + Send + 'static>(
    ctx: &ChildContext,
    config: SupervisorConfig,
    template: ChildSpec<A>,
    children: Vec<(String, A)>,
) -> Result<ractor::ActorCell, StartError> {
    let cell = Supervisor::start_dynamic_in(ctx, config, template).await?;
    let sup = match DynamicSupervisorRef::<A>::from_cell(cell.clone(), ctx.path().clone()) {
        Ok(sup) => sup,
        Err(e) => {
            // Never leave a started supervisor behind a failed start.
            cell.kill();
            return Err(StartError::Failed(e.to_string()));
        }
    };
    tokio::spawn(populate(sup, children));
    Ok(cell)
}

/// The population task of [`start_populated`].
async fn populate<A: Clone + Sync + Send + 'static>(
    sup: DynamicSupervisorRef<A>,
    mut pending: Vec<(String, A)>,
) {
    let running = |sup: &DynamicSupervisorRef<A>| {
        matches!(
            sup.cell().get_status(),
            ractor::ActorStatus::Running | ractor::ActorStatus::Starting
        )
    };
    let mut backoff = POPULATE_BACKOFF;
    for round in 1..=POPULATE_TRIES {
        let mut failed = Vec::new();
        let mut last_error = String::new();
        for (id, args) in pending {
            match sup.start_child_named(&id, args.clone()).await {
                Ok(_) | Err(SupervisorError::AlreadyPresent { .. }) => {}
                Err(e) => {
                    if !running(&sup) {
                        return;
                    }
                    tracing::warn!(path = %sup.path(), child = %id, round, rounds = POPULATE_TRIES, error = %e, "child did not start");
                    last_error = format!("{id}: {e}");
                    failed.push((id, args));
                }
            }
        }
        if failed.is_empty() {
            return;
        }
        if round == POPULATE_TRIES {
            let reason = format!(
                "{} of its children did not start in {POPULATE_TRIES} rounds (the last: {last_error})",
                failed.len()
            );
            tracing::error!(path = %sup.path(), %reason, "supervisor gives up populating; its parent restarts it");
            sup.cell().stop(Some(reason));
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(POPULATE_BACKOFF_MAX);
        if !running(&sup) {
            return;
        }
        pending = failed;
    }
}

/// Plug `v` into its charger: the simulated battery appears, the charger supervisor gets
/// the session.
pub(crate) async fn plug(
    shared: &Arc<SiteShared>,
    v: &Vehicle,
    now: Duration,
) -> Result<(), NodeError> {
    let err = |e: String| NodeError::Vehicle {
        vehicle: v.id.clone(),
        error: e,
    };
    // A simulated charger gets the vehicle's battery; a real (OCPP) one has the vehicle
    // already: its transaction is why we are here.
    if shared.devices.ocpp.is_none() {
        let sim = shared
            .sim
            .chargers
            .get(&v.charger)
            .ok_or_else(|| err(format!("charger {} has no simulated device", v.charger)))?;
        sim.plug(
            Battery {
                capacity_kwh: v.capacity_kwh,
                soc_pct: v.soc_pct,
                max_kw: v.max_kw,
            },
            now,
        );
    }
    shared.plugged.insert(v.charger.clone(), v.id.clone());
    let Some((seg, charger)) = shared.charger(&v.charger) else {
        return Err(err(format!("charger {} is in no segment", v.charger)));
    };
    let path = charger_path(&seg.id, &v.charger);
    // The charger may be restarting; if it is, its start function starts the session.
    if let Ok(cell) = shared.registry.lookup(&path) {
        let sup =
            SupervisorRef::from_cell(cell, path.as_str().into()).map_err(|e| err(e.to_string()))?;
        let args = ChargerArgs {
            shared: shared.clone(),
            seg: seg.clone(),
            charger: charger.clone(),
        };
        if let Err(e) = sup.start_child(session_spec(&args, &v.id)).await {
            tracing::warn!(vehicle = %v.id, error = %e, "session did not start");
        }
    }
    Ok(())
}

/// The vehicle leaves: its session ends (checkpointed as ended), the battery goes.
pub(crate) async fn unplug(
    shared: &Arc<SiteShared>,
    v: &Vehicle,
    now: Duration,
) -> Result<(), NodeError> {
    let seg_id = shared
        .charger_segment(&v.charger)
        .unwrap_or_default()
        .to_string();
    if let Some(seg) = shared.segments.get(&seg_id) {
        let actor = seg
            .session_actors
            .get(&v.charger)
            .map(|r| r.value().clone());
        if let Some(actor) = actor {
            if let Err(e) = end_session(&actor).await {
                tracing::warn!(vehicle = %v.id, error = %e, "session did not end cleanly");
            }
        }
        let path = charger_path(&seg_id, &v.charger);
        if let Ok(cell) = shared.registry.lookup(&path) {
            if let Ok(sup) = SupervisorRef::from_cell(cell, path.as_str().into()) {
                let _ = sup.terminate_child(&v.id).await;
                let _ = sup.delete_child(&v.id).await;
            }
        }
    }
    shared.plugged.remove(&v.charger);
    if shared.devices.ocpp.is_none() {
        if let Some(sim) = shared.sim.chargers.get(&v.charger) {
            sim.unplug(now);
        }
    }
    Ok(())
}

/// The path of a charger's supervisor.
pub fn charger_path(segment: &str, charger: &str) -> String {
    format!("{ROOT}/segments/{segment}/chargers/{charger}")
}

/// A segment as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentView {
    /// Its id.
    pub id: String,
    /// Its substation.
    pub substation: String,
    /// Rated power, kW.
    pub rated_kw: f64,
    /// Safe default, kW.
    pub safe_default_kw: f64,
    /// Its safe state.
    pub level: SafeState,
    /// Active causes.
    pub causes: Vec<crate::ladder::FaultKey>,
    /// Tripped and locked out: only an operator's reset (or the configured automatic
    /// reclose) ends it, once the trip's causes cleared and held.
    pub locked_out: bool,
    /// What the segment's trip relay last acknowledged (`open`, `closed`, `unknown`); absent
    /// without a trip output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trip_relay: Option<&'static str>,
    /// Telemetry.
    #[serde(flatten)]
    pub telemetry: SegmentTelemetry,
    /// Sessions running.
    pub sessions: usize,
    /// Links running.
    pub links: usize,
    /// Whether this node drives the segment (in a cluster, another node may).
    pub owned: bool,
    /// Each charger's newest applied setpoint key, as this node knows it (in a cluster, a
    /// node that took the segment over knows its previous owner's from the replica).
    pub applied: BTreeMap<String, crate::setpoint::SetpointKey>,
    /// The node's clock source and its status (the same for every segment of the node;
    /// `source: "none"` says the PTP rows are off).
    pub clock: crate::clock_source::ClockView,
    /// The grid controller whose keep-alive is current (`Node::keepalive_from`); null when
    /// none is, or when the keep-alive came without a name.
    pub keepalive_controller: Option<String>,
}

/// Why [`Node::reset_segment`] reset nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResetError {
    /// The topology has no such segment.
    #[error("no segment {0:?}")]
    Unknown(String),
    /// Another node drives the segment (or none: it is being handed over).
    #[error("segment {0:?} is not driven by this node")]
    NotDriven(String),
    /// The segment's safety actor is not running (it is restarting): nobody would command
    /// its devices, release its relay or checkpoint the reset.
    #[error("segment {0:?}: its safety actor is not running; try again")]
    Unavailable(String),
    /// The ladder refused: not locked out, or the trip's causes are present or holding.
    #[error(transparent)]
    Refused(#[from] crate::ladder::ResetRefused),
}

/// Why a segment could not change owner.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The topology has no such segment.
    #[error("no segment {0:?} in the topology")]
    Unknown(String),
    /// Releasing a segment this node does not drive.
    #[error("segment {0:?} is not driven by this node")]
    NotOwned(String),
    /// Adopting a segment this node already drives.
    #[error("segment {0:?} is already driven by this node")]
    AlreadyOwned(String),
    /// The `segments` supervisor refused.
    #[error("segment {segment:?}: {error}")]
    Tree {
        /// The segment.
        segment: String,
        /// What the supervisor said.
        error: String,
    },
}

/// A running node.
pub struct Node {
    /// What its actors share.
    pub shared: Arc<SiteShared>,
    /// The simulated devices (fault injection for tests and chaos runs).
    pub sim: Arc<SimSite>,
    root: SupervisorRef,
    reports: SupervisorReports,
    openadr: Option<Arc<super::openadr::VenView>>,
}

/// Why [`Node::kill`] killed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillError {
    /// The root supervisor has no supervisor to restart it: killing it would stop the node.
    #[error("{0} is the root supervisor: nothing would restart it (stop the process instead)")]
    Root(String),
    /// Nothing is registered at the path.
    #[error("no actor at {0}")]
    Unknown(String),
    /// The actor at the path is between incarnations: there is nothing to kill right now.
    #[error("{0} is restarting")]
    Restarting(String),
}

/// What [`Node::kill`] killed.
#[derive(Debug, Clone, Serialize)]
pub struct KilledActor {
    /// The path.
    pub path: String,
    /// The incarnation killed (the registry's number; the next one is higher).
    pub incarnation: u64,
}

/// Where a reader of the safe-state event log left off (see [`Node::events_since`]).
#[derive(Debug, Clone, Default)]
pub struct EventCursor {
    last: Option<super::shared::Event>,
}

fn same_event(a: &super::shared::Event, b: &super::shared::Event) -> bool {
    a.segment == b.segment && a.transition == b.transition
}

impl Node {
    /// Start a node for `topology`, checkpointing into `store`, on `clock`, registering its
    /// metrics in `prometheus`.
    pub async fn start(
        topology: Arc<Topology>,
        store: CheckpointStore,
        clock: Clock,
        prometheus: prometheus::Registry,
        options: NodeOptions,
    ) -> Result<Node, NodeError> {
        Self::start_with_devices(topology, store, clock, prometheus, options, |d| d).await
    }

    /// Start like [`Node::start`], with the node's device connections passed through `wrap`
    /// first (fault injection: the chaos runner wraps devices that fail, hang, lie or panic).
    pub async fn start_with_devices(
        topology: Arc<Topology>,
        store: CheckpointStore,
        clock: Clock,
        prometheus: prometheus::Registry,
        options: NodeOptions,
        wrap: impl FnOnce(Devices) -> Devices + Send,
    ) -> Result<Node, NodeError> {
        let sim = Arc::new(SimSite::new(&topology));
        let supervision = SupervisionMetrics::new();
        let registry = Registry::new();
        let reports = SupervisorReports::with_default_capacity();
        let tree = TreeContext {
            registry: Some(registry.clone()),
            metrics: Some(supervision.clone()),
            reports: Some(reports.clone()),
        };
        let devices =
            wrap(Devices::for_topology(&topology, &sim, &clock).map_err(NodeError::Config)?);
        let shared = Arc::new(SiteShared::new(
            topology.clone(),
            clock.clone(),
            store,
            devices,
            sim.clone(),
            registry,
            supervision,
            prometheus,
            options,
        )?);
        if let Some(hub) = &shared.devices.ocpp {
            hub.bind_site(&shared)?;
            // A vehicle whose session was running when the node stopped is still plugged in
            // as far as we know: its session resumes from its checkpoint, and its charger's
            // next status (Available) or transaction end ends it.
            let now = clock.now();
            for v in &topology.vehicles {
                let cp: Option<super::charger::SessionCheckpoint> = shared
                    .store
                    .get(&super::charger::session_checkpoint_key(&v.id))?;
                let running = cp.is_some_and(|c| c.session.state != SessionState::Ended);
                if running && !shared.plugged.contains_key(&v.charger) {
                    plug(&shared, v, now).await?;
                    hub.resume(&v.charger, &v.id);
                }
            }
            // And so does a token's session (issue 21), on the charger it was on.
            hub.resume_token_sessions(&shared)
                .await
                .map_err(NodeError::Config)?;
        }
        // Vehicles already there when the node starts: their sessions start with the tree
        // (on a simulated site; OCPP chargers start sessions with their transactions).
        let now = clock.now();
        for v in topology
            .vehicles
            .iter()
            .filter(|_| shared.devices.ocpp.is_none())
        {
            if v.arrive_s <= now.as_secs_f64() && now.as_secs_f64() < v.depart_s {
                plug(&shared, v, now).await?;
            }
        }
        let sh = shared.clone();
        let segments = ChildSpec::worker("segments", move |ctx: ChildContext, ()| {
            let sh = sh.clone();
            async move {
                let hook_shared = sh.clone();
                let config = SupervisorConfig::new("segments", Strategy::OneForOne)
                    .intensity(SEGMENTS_MAX_RESTARTS, SEGMENT_RESTART_PERIOD)
                    .hook(move |exit: &ChildExit<'_>| segments_hook(&hook_shared, exit))
                    .metrics_granularity(gridvisor_supervisors::MetricsGranularity::PerChild);
                // Only the segments this node drives (all of them outside a cluster).
                let owned = lock(&sh.owned).clone();
                let children = sh
                    .segments
                    .values()
                    .filter(|seg| owned.contains(&seg.id))
                    .map(|seg| {
                        let args = SegmentArgs {
                            shared: sh.clone(),
                            seg: seg.clone(),
                        };
                        (seg.id.clone(), args)
                    })
                    .collect();
                let cell = start_populated(&ctx, config, segment_spec(), children).await?;
                Ok(cell)
            }
        })
        .kind(ChildKind::Supervisor)
        .shutdown(Shutdown::Infinity);
        let sh = shared.clone();
        let site = ChildSpec::worker("site", move |ctx: ChildContext, ()| {
            let sh = sh.clone();
            async move { ctx.spawn(Site, sh).await }
        });
        let mut children = Vec::new();
        if let Some(hub) = shared.devices.ocpp.clone() {
            // First: the segments' links find the charge points that connect at once.
            children.push(transports_spec(hub));
        }
        if let Some(clock) = super::clock_source::clock_spec(&shared) {
            // Before the segments: their safety ticks read what it publishes.
            children.push(clock);
        }
        children.push(segments);
        children.push(site);
        // The OpenADR VEN (`[openadr]`): after the site, whose mailbox it submits to.
        let openadr = super::openadr::openadr_spec(&shared)?.map(|(spec, view)| {
            children.push(spec);
            view
        });
        if let Some(telemetry) = super::telemetry::telemetry_spec(&shared)? {
            // Last: it watches the rest, so it starts after them and stops before them.
            children.push(telemetry);
        }
        let root = Supervisor::start(
            SupervisorConfig::new(ROOT, Strategy::OneForOne)
                .intensity(ROOT_MAX_RESTARTS, ROOT_RESTART_PERIOD)
                .tree(tree),
            children,
        )
        .await?;
        let node = Node {
            shared,
            sim,
            root,
            reports,
            openadr,
        };
        node.wait_populated(START_LIMIT).await?;
        Ok(node)
    }

    /// Wait until every configured charger of the segments this node drives has a link and
    /// every vehicle plugged in there a session.
    async fn wait_populated(&self, limit: Duration) -> Result<(), NodeError> {
        let owned = lock(&self.shared.owned).clone();
        let chargers: usize = self
            .shared
            .segments
            .values()
            .filter(|s| owned.contains(&s.id))
            .map(|s| s.config.chargers.len())
            .sum();
        let sessions = self
            .shared
            .plugged
            .iter()
            .filter(|p| {
                self.shared
                    .charger(p.key())
                    .is_some_and(|(seg, _)| owned.contains(&seg.id))
            })
            .count();
        let started = tokio::time::Instant::now();
        loop {
            let links: usize = self.shared.segments.values().map(|s| s.links.len()).sum();
            let running: usize = self
                .shared
                .segments
                .values()
                .map(|s| s.session_actors.len())
                .sum();
            if links >= chargers && running >= sessions {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(NodeError::Config(format!(
                    "the tree did not come up within {limit:?}: {links} of {chargers} links, {running} of {sessions} sessions"
                )));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// Where the CSMS listens for OCPP charge points (None without `[ocpp]`).
    pub fn ocpp_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared
            .devices
            .ocpp
            .as_ref()
            .and_then(|h| h.local_addr())
    }

    /// The CSMS's hub (None without `[ocpp]`): the OCPP actions the grid API offers.
    pub fn ocpp_hub(&self) -> Option<&Arc<crate::io::ocpp::OcppHub>> {
        self.shared.devices.ocpp.as_ref()
    }

    /// The OpenADR VEN's state (None without `[openadr]`).
    pub fn openadr(&self) -> Option<super::openadr::VenSnapshot> {
        self.openadr.as_ref().map(|v| v.snapshot())
    }

    /// Whether the root supervisor still runs (false after the tree gave up).
    pub fn running(&self) -> bool {
        matches!(
            self.root.cell().get_status(),
            ractor::ActorStatus::Running | ractor::ActorStatus::Starting
        )
    }

    fn site(&self) -> Result<ActorRef<SiteMsg>, RequestError> {
        lock(&self.shared.site)
            .as_ref()
            .map(|r| r.actor().clone())
            .ok_or(RequestError::Unavailable)
    }

    /// Post a grid request; returns when every device acknowledged (or the round limit).
    pub async fn request(&self, r: GridRequest) -> Result<DispatchReceipt, RequestError> {
        let site = self.site()?;
        match ractor::call_t!(site, SiteMsg::Request, API_CALL_LIMIT.as_millis() as u64, r) {
            Ok(result) => result,
            Err(_) => Err(RequestError::Unavailable),
        }
    }

    /// Cancel grid request `id` (scheduled or active): what the site found.
    pub async fn cancel(&self, id: &str) -> Result<super::Cancel, RequestError> {
        let site = self.site()?;
        let id = id.to_owned();
        ractor::call_t!(site, SiteMsg::Cancel, API_CALL_LIMIT.as_millis() as u64, id)
            .map_err(|_| RequestError::Unavailable)
    }

    /// The grid controller's keep-alive.
    pub fn keepalive(&self) -> Result<(), RequestError> {
        self.site()?
            .send_message(SiteMsg::KeepAlive)
            .map_err(|_| RequestError::Unavailable)
    }

    /// The keep-alive of the grid controller `identity` (authenticated by the caller): the
    /// keep-alive, and the segments' views name `identity` while it is current.
    pub fn keepalive_from(&self, identity: &str) -> Result<(), RequestError> {
        self.keepalive()?;
        *lock(&self.shared.keepalive_from) = Some((identity.to_owned(), self.shared.clock.now()));
        Ok(())
    }

    /// The controller whose keep-alive is current (newer than `[safety]
    /// keepalive_timeout_s`), if it named itself.
    pub fn keepalive_controller(&self) -> Option<String> {
        let timeout = self
            .shared
            .topology
            .safety
            .ladder_config()
            .keepalive_timeout;
        let now = self.shared.clock.now();
        lock(&self.shared.keepalive_from)
            .as_ref()
            .filter(|(_, at)| now.saturating_sub(*at) <= timeout)
            .map(|(who, _)| who.clone())
    }

    /// Every segment.
    pub fn segments(&self) -> Vec<SegmentView> {
        let owned = lock(&self.shared.owned).clone();
        let controller = self.keepalive_controller();
        self.shared
            .segments
            .values()
            .map(|s| view(s, &owned, self.shared.clock_view(), controller.clone()))
            .collect()
    }

    /// One segment.
    pub fn segment(&self, id: &str) -> Option<SegmentView> {
        let owned = lock(&self.shared.owned).clone();
        let clock = self.shared.clock_view();
        let controller = self.keepalive_controller();
        self.shared
            .segments
            .get(id)
            .map(|s| view(s, &owned, clock, controller))
    }

    /// The segments this node drives now.
    pub fn owned_segments(&self) -> BTreeSet<String> {
        lock(&self.shared.owned).clone()
    }

    fn segments_supervisor(&self) -> Result<DynamicSupervisorRef<SegmentArgs>, String> {
        let path = format!("{ROOT}/segments");
        let cell = self
            .shared
            .registry
            .lookup(&path)
            .map_err(|e| e.to_string())?;
        DynamicSupervisorRef::from_cell(cell, path.as_str().into()).map_err(|e| e.to_string())
    }

    /// Let segment `id` go to another node, through ChargeOnly: its ladder takes the
    /// `Handoff` cause, every device of the segment is commanded to ChargeOnly directly (the
    /// segment's own actors may be busy), and only then is its subtree stopped. Its devices
    /// keep ChargeOnly until the new owner commands them; their leases end the rest.
    pub async fn release_segment(&self, id: &str) -> Result<(), HandoffError> {
        let seg = self
            .shared
            .segments
            .get(id)
            .ok_or_else(|| HandoffError::Unknown(id.into()))?;
        if !lock(&self.shared.owned).contains(id) {
            return Err(HandoffError::NotOwned(id.into()));
        }
        let now = self.shared.clock.now();
        seg.observe(Fault::Handoff(true), now);
        super::safety::command_devices(&self.shared, seg).await;
        let tree = |error: String| HandoffError::Tree {
            segment: id.into(),
            error,
        };
        let sup = self.segments_supervisor().map_err(tree)?;
        // Not driven from here from now on, whatever the supervisor answers: a segment half
        // stopped must not be dispatched.
        lock(&self.shared.owned).remove(id);
        sup.terminate_child(id)
            .await
            .map_err(|e| tree(e.to_string()))?;
        // No retry of this node's may land once the new owner drives the devices.
        super::safe_command::cancel(seg, self.shared.clock.now());
        tracing::info!(segment = %id, "segment released (ChargeOnly until its new owner drives it)");
        Ok(())
    }

    /// Start driving segment `id`, which another node let go (or lost): it starts in
    /// ChargeOnly (the `Handoff` cause, cleared once its subtree runs and held for the hold
    /// time like any cleared cause), from this node's checkpoints of it.
    pub async fn adopt_segment(&self, id: &str) -> Result<(), HandoffError> {
        let seg = self
            .shared
            .segments
            .get(id)
            .ok_or_else(|| HandoffError::Unknown(id.into()))?;
        if lock(&self.shared.owned).contains(id) {
            return Err(HandoffError::AlreadyOwned(id.into()));
        }
        seg.observe(Fault::Handoff(true), self.shared.clock.now());
        let tree = |error: String| HandoffError::Tree {
            segment: id.into(),
            error,
        };
        // What the previous owner applied (its checkpoints were replicated here): the links
        // read it before they write, so a setpoint it applied is never applied twice, and
        // this node's next dispatch ids move past its keys.
        let record = self
            .shared
            .store
            .get::<super::shared::AppliedRecord>(&super::shared::applied_record_key(id))
            .map_err(|e| tree(format!("its applied record: {e}")))?;
        if let Some(record) = record {
            let mut highest = 0;
            for (charger, (applied, boot)) in record.chargers {
                highest = highest.max(applied.key.dispatch);
                seg.record_applied(&charger, applied, boot);
            }
            self.shared
                .dispatch_floor
                .fetch_max(highest, std::sync::atomic::Ordering::AcqRel);
            // Durable before any device sees a key above it: a node that crashes after its
            // first round past the floor must not reuse that key when it starts again.
            let key = super::site::DISPATCH_SEQ_KEY;
            let stored: u64 = self
                .shared
                .store
                .get(key)
                .map_err(|e| tree(format!("the dispatch counter: {e}")))?
                .unwrap_or(0);
            if stored <= highest {
                self.shared
                    .store
                    .put(key, &(highest + 1))
                    .await
                    .map_err(|e| tree(format!("the dispatch counter: {e}")))?;
            }
        }
        let sup = self.segments_supervisor().map_err(tree)?;
        lock(&self.shared.owned).insert(id.to_string());
        let args = SegmentArgs {
            shared: self.shared.clone(),
            seg: seg.clone(),
        };
        if let Err(e) = sup.start_child_named(id, args).await {
            lock(&self.shared.owned).remove(id);
            return Err(tree(e.to_string()));
        }
        super::safety::command_devices(&self.shared, seg).await;
        seg.observe(Fault::Handoff(false), self.shared.clock.now());
        tracing::info!(segment = %id, "segment adopted (ChargeOnly for the hold time)");
        Ok(())
    }

    /// A vehicle's session while it runs (an ended session's last state is in its
    /// checkpoint, `session/<vehicle>`).
    /// A vehicle's session: a configured vehicle by its id, a token's session (issue 21)
    /// by its token value, wherever it is plugged in.
    pub fn session(&self, vehicle: &str) -> Option<SessionView> {
        let charger = match self.shared.vehicle(vehicle) {
            Some(v) => v.charger.clone(),
            None => self
                .shared
                .plugged
                .iter()
                .find(|e| e.value() == vehicle)
                .map(|e| e.key().clone())?,
        };
        let seg_id = self.shared.charger_segment(&charger)?;
        let seg = self.shared.segments.get(seg_id)?;
        let st = seg.sessions.get(&charger)?;
        let now_s = self.shared.clock.now().as_secs_f64();
        (st.session.vehicle == vehicle).then(|| SessionView {
            segment: seg_id.to_string(),
            charger,
            departure_shortfall_kwh: st.session.departure_shortfall_kwh(now_s),
            status: st.clone(),
        })
    }

    /// The authorization list (a topology with `[ocpp]` and `[authorization]`).
    pub fn authorization(&self) -> Option<std::sync::Arc<crate::authorization::AuthStore>> {
        self.shared.devices.ocpp.as_ref()?.authorization()
    }

    /// Recent safe-state transitions, newest last.
    pub fn events(&self) -> Vec<super::shared::Event> {
        lock(&self.shared.events).iter().cloned().collect()
    }

    /// The safe-state transitions recorded after `cursor` (at most the newest `max`), and
    /// the cursor moved past them. A fresh cursor gets the newest `max` of the log. Costs a
    /// scan back from the newest entry to the cursor's, under the log's lock: a reader that
    /// polls often pays for what is new only.
    pub fn events_since(&self, cursor: &mut EventCursor, max: usize) -> Vec<super::shared::Event> {
        let log = lock(&self.shared.events);
        // The cursor's entry, if it is still in the (bounded) log; if it fell out, more
        // than the whole log is new.
        let first_new = cursor
            .last
            .as_ref()
            .and_then(|last| log.iter().rposition(|e| same_event(e, last)))
            .map_or(0, |i| i + 1);
        let from = first_new.max(log.len().saturating_sub(max));
        let new = log.iter().skip(from).cloned().collect();
        cursor.last = log.back().cloned();
        new
    }

    /// The tree's supervisor reports (starts, exits, restarts, giving up); subscribe to
    /// follow them. Lossy for slow subscribers, never slowing a supervisor.
    pub fn reports(&self) -> &SupervisorReports {
        &self.reports
    }

    /// Kill the current incarnation of the actor at `path` (Erlang's `exit(Pid, kill)`, the
    /// observer's "kill process"): no cleanup runs, its supervisor sees a `killed` exit and
    /// decides as for any other exit; a killed supervisor takes its subtree with it.
    pub fn kill(&self, path: &str) -> Result<KilledActor, KillError> {
        if path == ROOT {
            return Err(KillError::Root(path.to_string()));
        }
        match self.shared.registry.lookup_incarnation(path) {
            Lookup::Running(cell, incarnation) => {
                tracing::warn!(%path, incarnation, "killing an actor on request");
                cell.kill();
                Ok(KilledActor {
                    path: path.to_string(),
                    incarnation,
                })
            }
            Lookup::Restarting(_) => Err(KillError::Restarting(path.to_string())),
            Lookup::Unknown => Err(KillError::Unknown(path.to_string())),
        }
    }

    /// An operator's reset of segment `id`'s lockout (`POST /api/v1/segments/{id}/reset`):
    /// refused unless the segment is locked out and the trip's causes have cleared and held.
    /// The safety actor then commands the devices, releases the trip relay, records the
    /// transition in the event log (with `reset: operator`) and checkpoints the level.
    pub fn reset_segment(&self, id: &str) -> Result<SegmentView, ResetError> {
        let seg = self
            .shared
            .segments
            .get(id)
            .ok_or_else(|| ResetError::Unknown(id.into()))?;
        if !lock(&self.shared.owned).contains(id) {
            return Err(ResetError::NotDriven(id.into()));
        }
        if lock(&seg.safety).is_none() {
            return Err(ResetError::Unavailable(id.into()));
        }
        match seg.reset(self.shared.clock.now()) {
            Ok(t) => {
                let to = t.map_or(seg.level(), |t| t.to);
                tracing::warn!(segment = %id, %to, "operator reset: the segment's lockout ended");
                let clock = self.shared.clock_view();
                Ok(view(
                    seg,
                    &lock(&self.shared.owned),
                    clock,
                    self.keepalive_controller(),
                ))
            }
            Err(e) => {
                tracing::info!(segment = %id, error = %e, "operator reset refused");
                Err(e.into())
            }
        }
    }

    /// Feed a fault observation to a segment's ladder (fault injection and tests).
    pub fn observe(&self, segment: &str, fault: Fault) -> Option<Transition> {
        let seg = self.shared.segments.get(segment)?;
        seg.observe(fault, self.shared.clock.now())
    }

    /// The supervision tree as data.
    pub async fn tree(&self) -> Result<TreeNode, SupervisorError> {
        self.root.tree().await
    }

    /// The subtree at `path` as data: for a running supervisor, asked of that supervisor
    /// alone (its own `state` and `restarts` are its parent's to tell, so they read
    /// running and 0); for anything else, found in the whole tree. `None` if no such path.
    pub async fn subtree(&self, path: &str) -> Result<Option<TreeNode>, SupervisorError> {
        if path != ROOT {
            if let Lookup::Running(cell, _) = self.shared.registry.lookup_incarnation(path) {
                if let Ok(sup) = SupervisorRef::from_cell(cell, path.into()) {
                    // It may stop meanwhile: then the whole tree says what is there.
                    if let Ok(t) = sup.tree().await {
                        return Ok(Some(t));
                    }
                }
            }
        }
        let t = self.tree().await?;
        Ok(t.find(path).cloned())
    }

    /// The supervision registry (stable paths to current incarnations).
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> Result<String, prometheus::Error> {
        Ok(self.metrics_exposition(Format::Text))
    }

    /// The node's whole metrics exposition in `format` (what `/metrics` serves): the
    /// node-wide and per-segment families from the Prometheus registry, then the
    /// supervision tree's per-actor table.
    pub fn metrics_exposition(&self, format: Format) -> String {
        let name = match format {
            Format::Text => "text",
            Format::OpenMetrics => "openmetrics",
        };
        self.shared.metrics.scrapes.with_label_values(&[name]).inc();
        let families = self.shared.prometheus.gather();
        // Sized from the table so that 100,000 actors do not regrow the buffer 20 times.
        let mut out = String::with_capacity(
            EXPOSITION_BYTES_PER_LABEL * self.shared.supervision.len() + 64 * 1024,
        );
        exposition::encode_families(&families, format, &mut out);
        self.shared.supervision.encode(format, &mut out);
        exposition::finish(format, &mut out);
        out
    }

    /// Stop the tree in order (the aggregator first, each segment's device actors before its
    /// safety actor), then drain the checkpoint store.
    pub async fn shutdown(&self) {
        self.root.shutdown().await;
        for seg in self.shared.segments.values() {
            super::safe_command::cancel(seg, self.shared.clock.now());
        }
        self.shared.store.flush().await;
    }
}

fn view(
    s: &SegmentShared,
    owned: &BTreeSet<String>,
    clock: crate::clock_source::ClockView,
    keepalive_controller: Option<String>,
) -> SegmentView {
    let (causes, locked_out) = {
        let ladder = lock(&s.ladder);
        (ladder.causes(), ladder.locked_out())
    };
    SegmentView {
        clock,
        keepalive_controller,
        owned: owned.contains(&s.id),
        id: s.id.clone(),
        substation: s.substation.clone(),
        rated_kw: s.config.rated_kw,
        safe_default_kw: s.config.safe_default_kw,
        level: s.level(),
        causes,
        locked_out,
        trip_relay: s.relay.as_ref().map(|r| match lock(r).state() {
            RelayState::Open => "open",
            RelayState::Closed => "closed",
            RelayState::Unknown => "unknown",
        }),
        telemetry: s.telemetry(),
        sessions: s.session_actors.len(),
        links: s.links.len(),
        applied: s
            .applied
            .iter()
            .map(|e| (e.key().clone(), e.value().0.key))
            .collect(),
    }
}

/// The `segments` supervisor's hook: a segment supervisor that failed (it reached its
/// restart intensity, or escalated) puts its segment in ChargeOnly with an alarm before it
/// is restarted; its safety actor clears the cause when the segment runs again, and the
/// ladder holds the level for the hold time.
fn segments_hook(shared: &Arc<SiteShared>, exit: &ChildExit<'_>) -> HookDecision {
    if exit.reason.class() == ExitClass::Failed {
        if let Some(seg) = shared.segments.get(exit.id) {
            let t = seg.observe(
                Fault::RestartIntensity {
                    supervisor: exit.path.to_string(),
                    exceeded: true,
                },
                shared.clock.now(),
            );
            if let Some(t) = t {
                shared
                    .metrics
                    .segment_level
                    .with_label_values(&[&seg.id])
                    .set(f64::from(seg.level().severity()));
                shared.record(&seg.id, t);
            }
            tracing::error!(segment = %seg.id, reason = %exit.reason, "ALARM: segment supervisor gave up; segment in ChargeOnly");
            // Nobody in the segment runs to command its devices: do it from here.
            let (shared, seg) = (shared.clone(), seg.clone());
            tokio::spawn(async move {
                super::safety::command_devices(&shared, &seg).await;
            });
        }
    }
    HookDecision::restart()
}

#[cfg(test)]
mod populate_tests {
    //! [`start_populated`] on the paused clock: a child that fails to start is started again
    //! until it runs, and a supervisor whose child never starts gives up and is restarted by
    //! its parent.

    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use gridvisor_supervisors::prelude::*;
    use gridvisor_supervisors::StartError;
    use ractor::{Actor, ActorProcessingErr, ActorRef};

    use super::{lock, start_populated, POPULATE_TRIES};

    /// A child that does nothing but run.
    struct Idle;

    impl Actor for Idle {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<()>,
            _args: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    /// Per child id, how many starts fail before one succeeds (`u32::MAX`: all of them);
    /// counts every try and every child running.
    #[derive(Default)]
    struct Script {
        refuse: Mutex<std::collections::BTreeMap<String, u32>>,
        tries: Mutex<Vec<String>>,
        running: AtomicU32,
        incarnations: AtomicU32,
    }

    /// A root supervisor whose only child is a dynamic supervisor populated with
    /// `children` by [`start_populated`].
    async fn populated(script: &Arc<Script>, children: &[&str]) -> SupervisorRef {
        let s = script.clone();
        let template = ChildSpec::worker("child", move |ctx: ChildContext, id: String| {
            let s = s.clone();
            async move {
                lock(&s.tries).push(id.clone());
                let refused = match lock(&s.refuse).get_mut(&id) {
                    Some(left) if *left > 0 => {
                        if *left != u32::MAX {
                            *left -= 1;
                        }
                        true
                    }
                    _ => false,
                };
                if refused {
                    return Err(StartError::Failed(format!("{id} is not ready")));
                }
                let cell = ctx.spawn(Idle, ()).await?;
                s.running.fetch_add(1, SeqCst);
                Ok(cell)
            }
        });
        let s = script.clone();
        let children: Vec<(String, String)> = children
            .iter()
            .map(|c| (c.to_string(), c.to_string()))
            .collect();
        let pop = ChildSpec::worker("pop", move |ctx: ChildContext, ()| {
            let (s, template, children) = (s.clone(), template.clone(), children.clone());
            async move {
                s.incarnations.fetch_add(1, SeqCst);
                let config = SupervisorConfig::new("pop", Strategy::OneForOne);
                start_populated(&ctx, config, template, children).await
            }
        })
        .kind(ChildKind::Supervisor);
        Supervisor::start(
            SupervisorConfig::new("root", Strategy::OneForOne)
                .intensity(5, Duration::from_secs(600)),
            vec![pop],
        )
        .await
        .expect("the root starts")
    }

    /// Let the paused clock run until `cond` holds, at most a simulated minute.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..6_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within a simulated minute: {what}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_child_that_fails_to_start_is_started_again_until_it_runs() {
        let script = Arc::new(Script::default());
        lock(&script.refuse).insert("b".into(), 3);
        let root = populated(&script, &["a", "b", "c"]).await;
        until("a, b and c running", || script.running.load(SeqCst) == 3).await;
        let tries = lock(&script.tries).clone();
        // b: three failures and the start that worked; a and c once; no give-up.
        assert_eq!(tries.iter().filter(|t| *t == "b").count(), 4, "{tries:?}");
        assert_eq!(tries.iter().filter(|t| *t != "b").count(), 2, "{tries:?}");
        assert_eq!(script.incarnations.load(SeqCst), 1);
        // The failing child did not hold up the others: a and c started in the first round.
        assert_eq!(&tries[..3], ["a", "b", "c"]);
        root.shutdown().await;
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_supervisor_whose_child_never_starts_gives_up_and_its_parent_restarts_it() {
        let script = Arc::new(Script::default());
        lock(&script.refuse).insert("b".into(), u32::MAX);
        let root = populated(&script, &["a", "b"]).await;
        until("the populated supervisor restarted by its parent", || {
            script.incarnations.load(SeqCst) == 2
        })
        .await;
        let tries = lock(&script.tries).clone();
        // The first incarnation's tries end where the second one starts a again.
        let second = tries
            .iter()
            .enumerate()
            .filter(|(_, t)| *t == "a")
            .nth(1)
            .map_or(tries.len(), |(i, _)| i);
        assert_eq!(
            tries[..second].iter().filter(|t| *t == "b").count(),
            POPULATE_TRIES as usize,
            "b is tried once per round before the supervisor gives up: {tries:?}"
        );
        root.shutdown().await;
    }
}
