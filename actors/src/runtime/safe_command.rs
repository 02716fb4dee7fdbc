//! Safe-state commands to a segment's outputs: one task per device, a deadline per write,
//! the newest level first (issue 19, "a safety path no device can stall").
//!
//! The safety actor used to await one function that read and then wrote every device of the
//! segment: one charger that never answered held back the next level (a Tripped after a
//! ChargeOnly) and the actor's tick for as long as its calls took. Here the actor only
//! *issues* a level ([`command`]) and goes on with its next message:
//!
//! - Every output (a charger, an inverter; the trip relay of item 5 is meant to be one more
//!   [`Output`]) has its own task and a latest-value slot (a `tokio::sync::watch`). Issuing
//!   a level replaces what each slot holds; a task that is still writing an older level drops
//!   that write and starts the new one, so a later Tripped overtakes a ChargeOnly in flight,
//!   and a stuck device's task blocks nobody else.
//! - A command is an absolute setpoint written without a read first ([`ChargerIo::write_safe`],
//!   [`InverterIo::write`]): the level's clamp of what the node last knew the charger held
//!   (its link's status on the board, else the segment's applied record, else 0 kW: when in
//!   doubt, no power). The links' read-before-write clamp still follows ([`LinkMsg`]), with
//!   everything a link knows (the vehicle's minimum SoC too). An inverter, which the node
//!   never dispatches, is written 0 kW in ChargeOnly and Tripped; a Limited cap is left to
//!   its poller's read-before-write clamp.
//! - Every write has a deadline, [`SAFE_COMMAND_DEADLINE`]. A write that misses it, fails or
//!   panics is logged, counted (`gridvisor_safe_commands_total{outcome}`) and tried again,
//!   after [`SAFE_COMMAND_RETRY_FIRST`] doubling up to [`SAFE_COMMAND_RETRY_MAX`], until it is
//!   delivered or a newer level replaces it. A task has at most one write in flight.
//!
//! A [`Round`] is one issued level as the whole segment gets it: it settles once every
//! output's first attempt ended (delivered, failed or missed its deadline; superseded too),
//! so it settles within the deadline. A settled round is recorded as the segment's command
//! latency (`gridvisor_safe_state_command_seconds`, [`SiteShared::command_latencies`]); each
//! delivered output is recorded on its own (`gridvisor_safe_command_device_seconds`,
//! [`SafeCommander::delivered`]), which is what the benchmark's `islanding_commanded_p99`
//! for the responsive devices is made of.
//!
//! The tasks hold their device connection and a slot, never the segment: they end when the
//! segment's shared state (the slots' senders) is dropped. They run on the safety threads
//! ([`super::safety_executor`]), where no dispatch cycle or actor burst can hold them back.
//!
//! [`ChargerIo::write_safe`]: crate::device::ChargerIo::write_safe
//! [`InverterIo::write`]: crate::device::InverterIo::write
//! [`LinkMsg`]: super::LinkMsg
//! [`SiteShared::command_latencies`]: super::SiteShared::command_latencies

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::shared::{lock, SegmentShared, COMMAND_LOG_LIMIT};
use crate::device::{ChargerIo, DeviceError, InverterIo, KnownSetpoint};
use crate::ladder::SafeState;

/// How long one safe-state write to one device may take before it counts as missed (and is
/// tried again). Well inside IEEE 1547-2018's 2 s to cease export; a device that cannot be
/// commanded that fast is the trip relay's.
pub const SAFE_COMMAND_DEADLINE: Duration = Duration::from_secs(1);
/// The first wait before a failed or missed safe-state command is tried again (one safety
/// tick).
pub const SAFE_COMMAND_RETRY_FIRST: Duration = super::SAFETY_TICK;
/// The longest wait between two tries of a safe-state command that keeps failing (the wait
/// doubles from [`SAFE_COMMAND_RETRY_FIRST`]).
pub const SAFE_COMMAND_RETRY_MAX: Duration = Duration::from_secs(2);
/// How many per-device delivery latencies a segment keeps (oldest dropped first).
pub const DELIVERY_LOG_LIMIT: usize = 65_536;

/// The outcomes counted in `gridvisor_safe_commands_total`, in this order.
pub const OUTCOMES: [&str; 4] = ["delivered", "failed", "missed", "superseded"];

/// One issued level as the whole segment gets it.
#[derive(Debug)]
pub struct Round {
    issued: Instant,
    level: SafeState,
    /// Outputs whose first attempt has not ended yet.
    pending: AtomicUsize,
    settled: Notify,
}

impl Round {
    fn new(level: SafeState, outputs: usize) -> Self {
        Round {
            issued: Instant::now(),
            level,
            pending: AtomicUsize::new(outputs),
            settled: Notify::new(),
        }
    }

    /// Whether every output's first attempt ended.
    pub fn is_settled(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Wait until every output's first attempt ended (within [`SAFE_COMMAND_DEADLINE`] of
    /// the last output's start, unless a newer level replaced this one first).
    pub async fn settled(&self) {
        loop {
            let woken = self.settled.notified();
            if self.is_settled() {
                return;
            }
            woken.await;
        }
    }
}

/// What one output is told.
#[derive(Clone)]
struct Order {
    /// The absolute setpoint to write, kW; None: nothing to write at this level (the order
    /// still replaces one in flight).
    kw: Option<f64>,
    known: Option<KnownSetpoint>,
    /// The node's clock when it was issued (what the device is told as `now`).
    now: Duration,
    round: Arc<Round>,
}

/// A device the safety path commands. The trip relay (issue 19, item 5) is meant to be one
/// more variant: its own task, its own deadline, the same slot.
#[derive(Clone)]
enum Output {
    Charger(Arc<dyn ChargerIo>),
    Inverter(Arc<dyn InverterIo>),
}

impl Output {
    fn write(&self, order: &Order) -> BoxFuture<'_, Result<(), DeviceError>> {
        let Some(kw) = order.kw else {
            return Box::pin(std::future::ready(Ok(())));
        };
        match self {
            Output::Charger(io) => io.write_safe(kw, order.known, order.now),
            Output::Inverter(io) => {
                let w = io.write(kw, order.now);
                Box::pin(async move { w.await.map(|_| ()) })
            }
        }
    }
}

/// What the outputs' tasks report to (no reference to the segment: see the module docs).
struct Report {
    segment: String,
    /// `gridvisor_safe_commands_total{segment, outcome}` in the order of [`OUTCOMES`].
    outcomes: [prometheus::IntCounter; 4],
    /// `gridvisor_safe_command_device_seconds{segment}`.
    device_latency: prometheus::Histogram,
    /// `gridvisor_safe_state_command_seconds{segment}`.
    round_latency: prometheus::Histogram,
    /// The node's log of round latencies ([`super::SiteShared::command_latencies`]).
    rounds: Arc<Mutex<VecDeque<Duration>>>,
    /// Per-device delivery latencies of levels above Normal, oldest first.
    delivered: Mutex<VecDeque<Duration>>,
}

impl Report {
    fn count(&self, outcome: usize) {
        self.outcomes[outcome].inc();
    }

    /// A write landed (an order with nothing to write is not counted).
    fn delivered(&self, order: &Order) {
        if order.kw.is_none() {
            return;
        }
        self.count(0);
        let took = order.round.issued.elapsed();
        self.device_latency.observe(took.as_secs_f64());
        push_bounded(&self.delivered, took, DELIVERY_LOG_LIMIT);
    }

    /// This output's first attempt at `round` ended.
    fn settle(&self, round: &Round) {
        if round.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if round.level != SafeState::Normal {
            let took = round.issued.elapsed();
            self.round_latency.observe(took.as_secs_f64());
            push_bounded(&self.rounds, took, COMMAND_LOG_LIMIT);
        }
        round.settled.notify_waiters();
    }
}

fn push_bounded(log: &Mutex<VecDeque<Duration>>, d: Duration, limit: usize) {
    let mut log = lock(log);
    if log.len() >= limit {
        log.pop_front();
    }
    log.push_back(d);
}

struct Slot {
    id: String,
    output: Output,
    tx: watch::Sender<Option<Order>>,
}

/// The safe-state outputs of one segment: a slot per device, and the tasks that drain them
/// (started on the first command, so that building a node's shared state needs no runtime).
pub struct SafeCommander {
    outputs: Vec<(String, Output)>,
    slots: OnceLock<Vec<Slot>>,
    report: Arc<Report>,
}

impl std::fmt::Debug for SafeCommander {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeCommander")
            .field("segment", &self.report.segment)
            .field("outputs", &self.outputs.len())
            .finish()
    }
}

impl SafeCommander {
    /// The commander of `segment` over its chargers and inverters (those with a
    /// connection), reporting into the node's metrics and round log.
    pub(crate) fn new(
        segment: &str,
        chargers: Vec<(String, Arc<dyn ChargerIo>)>,
        inverters: Vec<(String, Arc<dyn InverterIo>)>,
        metrics: &super::shared::DomainMetrics,
        rounds: Arc<Mutex<VecDeque<Duration>>>,
    ) -> Self {
        let outputs = chargers
            .into_iter()
            .map(|(id, io)| (id, Output::Charger(io)))
            .chain(
                inverters
                    .into_iter()
                    .map(|(id, io)| (id, Output::Inverter(io))),
            )
            .collect();
        let report = Report {
            segment: segment.to_owned(),
            outcomes: OUTCOMES.map(|o| metrics.safe_commands.with_label_values(&[segment, o])),
            device_latency: metrics.safe_command_device.with_label_values(&[segment]),
            round_latency: metrics.safe_command.with_label_values(&[segment]),
            rounds,
            delivered: Mutex::new(VecDeque::new()),
        };
        SafeCommander {
            outputs,
            slots: OnceLock::new(),
            report: Arc::new(report),
        }
    }

    /// The per-device delivery latencies of levels above Normal (issue to delivered), oldest
    /// first, at most [`DELIVERY_LOG_LIMIT`].
    pub fn delivered(&self) -> Vec<Duration> {
        lock(&self.report.delivered).iter().copied().collect()
    }

    /// How many outputs the segment commands.
    pub fn outputs(&self) -> usize {
        self.outputs.len()
    }

    fn slots(&self) -> &[Slot] {
        self.slots.get_or_init(|| {
            let executor = super::safety_executor::handle(&tokio::runtime::Handle::current());
            self.outputs
                .iter()
                .map(|(id, output)| {
                    let (tx, rx) = watch::channel(None);
                    let task = run(id.clone(), output.clone(), rx, self.report.clone());
                    executor.spawn(task);
                    Slot {
                        id: id.clone(),
                        output: output.clone(),
                        tx,
                    }
                })
                .collect()
        })
    }
}

/// Command every output of `seg` to the segment's current level, each by its own task;
/// returns at once with the round (await [`Round::settled`] to know every first attempt
/// ended).
pub(crate) fn command(seg: &SegmentShared, now: Duration) -> Arc<Round> {
    let level = seg.level();
    let slots = seg.commander.slots();
    let round = Arc::new(Round::new(level, slots.len()));
    for slot in slots {
        let (kw, known) = match slot.output {
            Output::Charger(_) => charger_target(seg, &slot.id, level),
            Output::Inverter(_) => (inverter_target(level), None),
        };
        slot.tx.send_replace(Some(Order {
            kw,
            known,
            now,
            round: round.clone(),
        }));
    }
    if slots.is_empty() {
        round.settled.notify_waiters();
    }
    round
}

/// Stop commanding the outputs of `seg`: every task drops what it is writing or retrying and
/// waits for the next level. For a segment this node no longer drives (handed off, or the
/// node stops), so that a retry never lands after another owner took over.
pub(crate) fn cancel(seg: &SegmentShared, now: Duration) {
    let Some(slots) = seg.commander.slots.get() else {
        return;
    };
    let round = Arc::new(Round::new(SafeState::Normal, slots.len()));
    for slot in slots {
        slot.tx.send_replace(Some(Order {
            kw: None,
            known: None,
            now,
            round: round.clone(),
        }));
    }
}

/// What a charger is written at `level`, from what the node knows it holds (no read).
fn charger_target(
    seg: &SegmentShared,
    id: &str,
    level: SafeState,
) -> (Option<f64>, Option<KnownSetpoint>) {
    if level == SafeState::Normal {
        return (None, None);
    }
    let status = seg.links.get(id).map(|l| l.status);
    let applied = seg.applied.get(id).map(|e| e.0);
    let kw = status
        .as_ref()
        .and_then(|s| s.commanded_kw)
        .or(applied.map(|a| a.applied_kw))
        .unwrap_or(0.0);
    let key = status.as_ref().and_then(|s| s.applied);
    let known = match (key, applied) {
        (Some(key), _) => Some(KnownSetpoint {
            key,
            lease_until: status.and_then(|s| s.lease_until),
        }),
        // The record may come from another run of the node, whose lease times are on
        // another clock: the safe state holds without one.
        (None, Some(a)) => Some(KnownSetpoint {
            key: a.key,
            lease_until: None,
        }),
        (None, None) => None,
    };
    (Some(level.clamp(kw)), known)
}

/// What an inverter is written at `level` (see the module docs).
fn inverter_target(level: SafeState) -> Option<f64> {
    matches!(level, SafeState::ChargeOnly | SafeState::Tripped).then_some(0.0)
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    Failed(String),
    Missed,
    /// A newer order arrived (or the segment is gone: None).
    Superseded(Option<Order>),
}

/// One output's task: the newest order, written with a deadline, retried until delivered.
async fn run(
    id: String,
    output: Output,
    mut rx: watch::Receiver<Option<Order>>,
    report: Arc<Report>,
) {
    let Some(mut order) = next(&mut rx).await else {
        return;
    };
    let mut retry = SAFE_COMMAND_RETRY_FIRST;
    let mut first = true;
    loop {
        let attempt = attempt(&output, &order, &mut rx).await;
        if first {
            report.settle(&order.round);
            first = false;
        }
        let newer = match attempt {
            Attempt::Delivered => {
                report.delivered(&order);
                retry = SAFE_COMMAND_RETRY_FIRST;
                next(&mut rx).await
            }
            Attempt::Superseded(newer) => {
                report.count(3);
                newer
            }
            Attempt::Failed(error) => {
                report.count(1);
                if retry == SAFE_COMMAND_RETRY_FIRST {
                    tracing::warn!(segment = %report.segment, device = %id, %error, "safe-state command failed; retrying (counted in gridvisor_safe_commands_total)");
                } else {
                    tracing::debug!(segment = %report.segment, device = %id, %error, retry_in = ?retry, "safe-state command failed again");
                }
                backoff(&mut retry, &order, &mut rx).await
            }
            Attempt::Missed => {
                report.count(2);
                if retry == SAFE_COMMAND_RETRY_FIRST {
                    tracing::warn!(segment = %report.segment, device = %id, deadline = ?SAFE_COMMAND_DEADLINE, "safe-state command missed its deadline; retrying (counted in gridvisor_safe_commands_total)");
                } else {
                    tracing::debug!(segment = %report.segment, device = %id, retry_in = ?retry, "safe-state command missed its deadline again");
                }
                backoff(&mut retry, &order, &mut rx).await
            }
        };
        let Some(newer) = newer else { return };
        if !Arc::ptr_eq(&newer.round, &order.round) {
            // A new level: its first attempt settles its round, and a failure is news again.
            first = true;
            retry = SAFE_COMMAND_RETRY_FIRST;
        }
        order = newer;
    }
}

/// The next order (None once the segment is gone).
async fn next(rx: &mut watch::Receiver<Option<Order>>) -> Option<Order> {
    loop {
        rx.changed().await.ok()?;
        if let Some(o) = rx.borrow_and_update().clone() {
            return Some(o);
        }
    }
}

/// Wait before trying `order` again; a newer order ends the wait. Returns what to do next.
async fn backoff(
    retry: &mut Duration,
    order: &Order,
    rx: &mut watch::Receiver<Option<Order>>,
) -> Option<Order> {
    let wait = *retry;
    *retry = (*retry * 2).min(SAFE_COMMAND_RETRY_MAX);
    tokio::select! {
        _ = tokio::time::sleep(wait) => Some(order.clone()),
        newer = next(rx) => newer,
    }
}

/// Write `order` once: delivered, failed (a panic in the device code too), missed the
/// deadline, or replaced by a newer order meanwhile.
async fn attempt(
    output: &Output,
    order: &Order,
    rx: &mut watch::Receiver<Option<Order>>,
) -> Attempt {
    // The call inside the future: a device that panics as it is called is caught too.
    let mut write = std::pin::pin!(caught(async move { output.write(order).await }));
    // A device that answers at once (in-process, or an answer already there) needs no timer.
    if let Some(r) = (&mut write).now_or_never() {
        return match r {
            Ok(()) => Attempt::Delivered,
            Err(e) => Attempt::Failed(e),
        };
    }
    tokio::select! {
        biased;
        newer = next(rx) => Attempt::Superseded(newer),
        r = tokio::time::timeout(SAFE_COMMAND_DEADLINE, write) => match r {
            Ok(Ok(())) => Attempt::Delivered,
            Ok(Err(e)) => Attempt::Failed(e),
            Err(_) => Attempt::Missed,
        },
    }
}

/// A device call whose panic is an error, not the end of the output's task.
async fn caught(f: impl Future<Output = Result<(), DeviceError>>) -> Result<(), String> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Err(format!("the device call panicked: {what}"))
        }
    }
}
