//! The supervised actors of a node and the tree they form (DESIGN.md, "The tree on one node"):
//!
//! ```text
//! node (one_for_one)
//! ├── transports           with [ocpp]: the CSMS listener (csms), started first
//! ├── clock                with [safety.clock] source = "ptp4l": the ptp4l poller
//! ├── segments (dynamic)   one child per transformer segment (drawn below)
//! ├── site                 the aggregator: grid requests, keep-alives, the control loop
//! └── telemetry            with [mqtt]: the MQTT publisher (mqtt), started last
//!
//! segments
//!     └── tx-1 (rest_for_one)
//!         ├── safety       the segment's safe-state ladder; started first, so that every
//!         │                later sibling starts under the current level
//!         ├── m-1          meter poller: transformer power, grid voltage and frequency
//!         ├── inv-1        inverter poller: core temperature
//!         ├── dispatcher   splits the segment's share over its sessions
//!         └── chargers (dynamic)
//!             └── evse-1 (rest_for_one)
//!                 ├── link     the charger connection: idempotent, leased setpoints
//!                 └── ev-1     the vehicle session (transient): ISO 15118-like state, SoC
//! ```
//!
//! Flow of a grid request: the site splits it over segments by thermal headroom
//! ([`crate::dispatch::split_by_headroom`]); each dispatcher allocates its share over its
//! sessions ([`crate::dispatch::allocate`]) and sends keyed setpoints to the links; a link
//! clamps with the segment's safe state, writes the device, records the applied key on the
//! segment's board and counts its answer in the batch's tally; the last answer wakes the
//! dispatcher, which checkpoints the segment's applied record (durably) and only then
//! acknowledges. The site answers the request when every device acknowledged (or a named
//! limit passed). Every cycle the site's closed loop corrects the
//! command against metered power and sends the next revision.
//!
//! Safety flow: meters, inverters, the site's keep-alive watchdog, the PTP monitor and the
//! supervisors' escalation hooks feed the segment's ladder; on a change the safety actor
//! commands every device of the segment at once, without waiting for the dispatcher.

mod charger;
mod clock_source;
mod dispatcher;
mod flex_view;
mod node;
pub mod openadr;
mod pollers;
pub mod repeats;
pub mod safe_command;
mod safety;
pub mod safety_executor;
pub mod shared;
mod site;
mod telemetry;
mod tokens;
mod transports;

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::ladder::{Fault, Transition};
use crate::setpoint::{Applied, Setpoint, SetpointKey};

pub(crate) use charger::{session_checkpoint_key, SessionCheckpoint};
pub use flex_view::{FlexQueryError, FlexibilityView};
pub use node::{
    charger_path, EventCursor, Format, HandoffError, KillError, KilledActor, Node, NodeError,
    ResetError, SegmentView, ROOT, ROOT_MAX_RESTARTS, ROOT_RESTART_PERIOD,
};
pub(crate) use node::{plug as plug_vehicle, unplug as unplug_vehicle};
pub use safety::SafetyCheckpoint;
pub use shared::{Drive, DriveGate, NodeOptions, SegmentShared, SiteShared};
pub use site::{
    Cancel, DispatchReceipt, GridRequest, RequestError, Scope, SegmentReceipt, SessionView, Window,
    MAX_REQUEST_KW, MAX_SCHEDULE_AHEAD_S, REQUEST_KEY_PREFIX, SCHEDULED_LIMIT,
};

/// Upper bound on how long a dispatcher waits for its links' acknowledgements.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the safety actor ticks (keep-alive watchdog, PTP, trip-band clearing times).
pub const SAFETY_TICK: Duration = Duration::from_millis(50);
/// How often the safety actor scans the links for expired leases.
pub const LEASE_SCAN: Duration = Duration::from_millis(500);
/// How often a meter is polled (islanding detection needs a fast poll, well inside the
/// reading-age bound `[safety] max_reading_age_ms`, 500 ms by default).
pub const METER_POLL: Duration = Duration::from_millis(50);
/// A meter read is given at most this share of the reading-age bound (1/2: 250 ms of the
/// default 500 ms), so that a hung read ends, and the next one is tried, before the age
/// alone decides. The age, not a count of failures, is what the safety tick checks.
pub const METER_READ_TIMEOUT_DIVISOR: u32 = 2;
/// How long one inverter read may take (its poll period: a hung inverter is counted as a
/// failed temperature read every period, not every Modbus operation time-out).
pub const INVERTER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an inverter is polled.
pub const INVERTER_POLL: Duration = Duration::from_secs(1);
/// How long a call between actors of the node may take before it is an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Send `msg()` to `actor` once, after `period`. Periodic work re-arms it when the previous
/// tick is handled, so a slow handler (a device that takes long to answer) slows its own rate
/// instead of piling ticks up in its mailbox.
pub(crate) fn tick_after<M: ractor::Message>(
    actor: &ractor::ActorRef<M>,
    period: Duration,
    msg: fn() -> M,
) -> tokio::task::JoinHandle<()> {
    let actor = actor.clone();
    tokio::spawn(async move {
        tokio::time::sleep(period).await;
        let _ = actor.send_message(msg());
    })
}

/// Messages to the site aggregator.
pub enum SiteMsg {
    /// A grid request; answered when every device acknowledged.
    Request(
        GridRequest,
        RpcReplyPort<Result<DispatchReceipt, RequestError>>,
    ),
    /// Cancel a grid request by its id (scheduled or active).
    Cancel(String, RpcReplyPort<site::Cancel>),
    /// The grid controller's keep-alive.
    KeepAlive,
    /// The control loop's period elapsed.
    Cycle,
    /// A segment's safe state changed: dispatch again now.
    Redispatch,
    /// A dispatcher finished a batch.
    SegmentDone(SegmentReceipt),
    /// A round's time limit passed: answer its waiters with what arrived.
    RoundDeadline,
}

/// Messages to a segment's safety actor.
pub enum SafetyMsg {
    /// An observation for the ladder.
    Observe(Fault),
    /// A transition made outside the actor (by a hook): command the devices.
    Enforce(Transition),
    /// Periodic tick.
    Tick,
    /// A child of the segment exited (from the segment supervisor's hook).
    ChildExit(gridvisor_supervisors::ChildExitNotice),
}

impl From<gridvisor_supervisors::ChildExitNotice> for SafetyMsg {
    fn from(n: gridvisor_supervisors::ChildExitNotice) -> Self {
        SafetyMsg::ChildExit(n)
    }
}

/// Messages to a segment's dispatcher.
pub enum DispatcherMsg {
    /// Split `target_kw` over the sessions with this key.
    Dispatch {
        /// The key of this batch.
        key: SetpointKey,
        /// The segment's share, kW.
        target_kw: f64,
        /// Lease end for every setpoint of the batch.
        lease_until: Duration,
        /// The round's `dispatch` span: the batch's spans are its children, so that one
        /// dispatch id's log lines lead from the grid request to each device write.
        span: tracing::Span,
    },
    /// Every link of batch `key` answered (the batch's [`BatchTally`] holds the answers).
    Answered(SetpointKey),
    /// The segment's applied record written after a batch's last answer was committed (or
    /// could not be: `error`).
    Durable {
        /// The batch.
        key: SetpointKey,
        /// Why the record could not be made durable.
        error: Option<String>,
    },
    /// The ack deadline of a batch passed.
    Deadline(SetpointKey),
}

/// What a link did with a setpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SetpointOutcome {
    /// Applied now (the dispatcher makes it durable before it acknowledges the batch).
    Applied(Applied),
    /// Applied before: the first result.
    Repeat(Applied),
    /// Refused: a newer key was applied.
    Stale {
        /// The newer key.
        latest: SetpointKey,
    },
    /// The device could not be written.
    Failed {
        /// Why.
        error: String,
    },
}

impl SetpointOutcome {
    /// The outcome's index in the order applied, repeat, stale, failed.
    pub(crate) fn index(&self) -> usize {
        match self {
            SetpointOutcome::Applied(_) => 0,
            SetpointOutcome::Repeat(_) => 1,
            SetpointOutcome::Stale { .. } => 2,
            SetpointOutcome::Failed { .. } => 3,
        }
    }
}

/// Messages to a charger's link.
pub enum LinkMsg {
    /// A setpoint from the dispatcher, and the tally of its batch to count the answer in.
    Setpoint(Setpoint, std::sync::Arc<BatchTally>),
    /// Apply the local clamps (the segment's safe state, the vehicle's minimum SoC) to the
    /// device now; the batch, if any, hears when it is done.
    Enforce,
    /// The lease of the applied setpoint ended: fall back to the segment's safe default.
    LeaseExpired,
    /// Read the device and publish its state.
    Poll,
    /// The device's connection dropped (an OCPP charge point went away): the link fails, so
    /// its supervisor restarts it (and the session after it) from the device's state.
    ConnectionLost(String),
}

/// The answers of one dispatch batch, counted by the links themselves: a link adds its
/// outcome and the last one tells the dispatcher, so a batch of 10,000 setpoints costs the
/// dispatcher one message instead of 10,000.
pub struct BatchTally {
    key: SetpointKey,
    expected: usize,
    /// Answers by outcome: applied, repeat, stale, failed.
    counts: [std::sync::atomic::AtomicUsize; 4],
    answered: std::sync::atomic::AtomicUsize,
    dispatcher: ActorRef<DispatcherMsg>,
    /// The segment's span of this batch (a child of the round's `dispatch` span); each
    /// link's device write is a child of it.
    span: tracing::Span,
}

impl BatchTally {
    pub(crate) fn new(
        key: SetpointKey,
        expected: usize,
        dispatcher: ActorRef<DispatcherMsg>,
        span: tracing::Span,
    ) -> Self {
        BatchTally {
            key,
            expected,
            counts: Default::default(),
            answered: std::sync::atomic::AtomicUsize::new(0),
            dispatcher,
            span,
        }
    }

    /// Count one answer; the last expected answer tells the dispatcher.
    pub(crate) fn answer(&self, outcome: &SetpointOutcome) {
        use std::sync::atomic::Ordering;
        self.counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
        // AcqRel: the dispatcher, woken by the last answer, sees every count before it.
        if self.answered.fetch_add(1, Ordering::AcqRel) + 1 == self.expected {
            let _ = self
                .dispatcher
                .send_message(DispatcherMsg::Answered(self.key));
        }
    }

    /// The batch's key.
    pub(crate) fn key(&self) -> SetpointKey {
        self.key
    }

    /// The segment's span of this batch.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The answers so far: applied, repeat, stale, failed.
    pub(crate) fn counts(&self) -> [usize; 4] {
        use std::sync::atomic::Ordering;
        self.answered.load(Ordering::Acquire);
        self.counts.each_ref().map(|c| c.load(Ordering::Relaxed))
    }
}

/// Messages to a session.
pub enum SessionMsg {
    /// Read the charger's register and integrate SoC (the session's period).
    Tick,
    /// The vehicle leaves: end the session.
    Unplug(RpcReplyPort<()>),
}

/// Messages to an inverter poller.
pub enum InverterMsg {
    /// Poll now.
    Poll,
}

/// Messages to a meter poller.
pub enum MeterMsg {
    /// Poll now.
    Poll,
}
