//! Supervisor reports: OTP's SASL supervisor and progress reports, as a tree-wide, bounded,
//! lossy broadcast.
//!
//! Every supervisor of a tree whose [`TreeContext`](crate::TreeContext) has
//! [`SupervisorReports`] publishes a [`SupervisorReport`] when a child starts
//! ([`ReportEvent::Started`]), exits on its own or is killed ([`ReportEvent::Exited`]), is
//! started again after an exit ([`ReportEvent::Restarted`]), fails to start again
//! ([`ReportEvent::StartFailed`]), and when the supervisor itself gives up
//! ([`ReportEvent::GaveUp`], its restart intensity reached) or escalates a child's exit
//! ([`ReportEvent::Escalated`]). Stops the supervisor orders itself (shutdown, the siblings of
//! a group restart) are not reported, as in OTP.
//!
//! ## Never slower because someone watches
//! The channel is a `tokio::sync::broadcast` of a fixed capacity: publishing never waits. A
//! subscriber that falls more than the capacity behind loses the oldest reports and is told
//! how many on its next receive ([`Received::Lagged`]); the losses of every subscriber are
//! summed in [`SupervisorReports::lagged`]. Without subscribers a publish costs one atomic
//! load and builds nothing. Reasons are cut to [`REPORT_REASON_LIMIT`] bytes so that one
//! report stays small whatever an actor's error says.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::exit::ExitClass;
use crate::path::ActorPath;

/// The capacity of [`SupervisorReports::with_default_capacity`]: how many reports a
/// subscriber may fall behind before it loses the oldest.
pub const DEFAULT_REPORT_CAPACITY: usize = 4_096;

/// The largest capacity [`SupervisorReports::new`] accepts (each slot holds one report).
pub const MAX_REPORT_CAPACITY: usize = 1 << 20;

/// Reasons longer than this many bytes are cut (at a character boundary) and marked `…`.
pub const REPORT_REASON_LIMIT: usize = 512;

/// What happened, as a report says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ReportEvent {
    /// The child started (a first start, or a start by `start_child`).
    Started,
    /// The child exited on its own, failed, or was killed from outside; its supervisor
    /// decides next (a restart is reported as [`ReportEvent::Restarted`]).
    Exited {
        /// The exit's class (normal, shutdown, killed, failed).
        class: ExitClass,
        /// The exit reason as text, cut to [`REPORT_REASON_LIMIT`].
        reason: String,
    },
    /// A new incarnation of the child runs after an exit (or `restart_child`).
    Restarted {
        /// The child's restarts so far, this one included.
        restarts: u32,
    },
    /// Starting the child again failed; the supervisor retries or gives up.
    StartFailed {
        /// The start error, cut to [`REPORT_REASON_LIMIT`].
        reason: String,
    },
    /// The supervisor reached its restart intensity: it stopped its children and failed.
    /// The report's `path` is the supervisor's own.
    GaveUp {
        /// Its limit: more than this many restarts ...
        max_restarts: u32,
        /// ... within this many milliseconds.
        period_ms: u64,
        /// The exit that crossed the limit, cut to [`REPORT_REASON_LIMIT`].
        reason: String,
    },
    /// The supervisor's escalation hook escalated the child's exit: the supervisor stopped
    /// its children and failed.
    Escalated {
        /// The child's exit, cut to [`REPORT_REASON_LIMIT`].
        reason: String,
    },
}

/// One report: which supervisor, about which path, what, and when.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorReport {
    /// Tree-wide publication number, from 1; a subscriber that lagged sees the gap.
    pub seq: u64,
    /// Wall-clock time of publication, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The supervisor that publishes it.
    pub supervisor: ActorPath,
    /// The child concerned (the supervisor itself for `gave_up` and `escalated`).
    pub path: ActorPath,
    /// What happened.
    #[serde(flatten)]
    pub event: ReportEvent,
}

/// A capacity [`SupervisorReports::new`] cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("supervisor report capacity {capacity} is out of range 1..={MAX_REPORT_CAPACITY}")]
pub struct ReportCapacityError {
    /// The capacity asked for.
    pub capacity: usize,
}

struct Inner {
    tx: broadcast::Sender<SupervisorReport>,
    /// Subscribers now, kept here rather than asked of the channel (which takes its lock):
    /// a publish without subscribers is one atomic load.
    subscribers: AtomicUsize,
    seq: AtomicU64,
    lagged: AtomicU64,
}

/// The tree-wide report channel; cheap to clone (every supervisor of a tree holds one).
#[derive(Clone)]
pub struct SupervisorReports {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SupervisorReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorReports")
            .field("subscribers", &self.subscribers())
            .field("published", &self.published())
            .field("lagged", &self.lagged())
            .finish()
    }
}

impl SupervisorReports {
    /// A channel in which a subscriber may fall `capacity` reports behind before it loses
    /// the oldest; `capacity` must be within `1..=MAX_REPORT_CAPACITY`.
    pub fn new(capacity: usize) -> Result<Self, ReportCapacityError> {
        if capacity == 0 || capacity > MAX_REPORT_CAPACITY {
            return Err(ReportCapacityError { capacity });
        }
        let (tx, _) = broadcast::channel(capacity);
        Ok(SupervisorReports {
            inner: Arc::new(Inner {
                tx,
                subscribers: AtomicUsize::new(0),
                seq: AtomicU64::new(0),
                lagged: AtomicU64::new(0),
            }),
        })
    }

    /// A channel of [`DEFAULT_REPORT_CAPACITY`].
    pub fn with_default_capacity() -> Self {
        let (tx, _) = broadcast::channel(DEFAULT_REPORT_CAPACITY);
        SupervisorReports {
            inner: Arc::new(Inner {
                tx,
                subscribers: AtomicUsize::new(0),
                seq: AtomicU64::new(0),
                lagged: AtomicU64::new(0),
            }),
        }
    }

    /// Publish a report built by `event`, which is only called when someone subscribes.
    /// Never waits.
    pub fn publish(
        &self,
        supervisor: &ActorPath,
        path: &ActorPath,
        event: impl FnOnce() -> ReportEvent,
    ) {
        // A subscriber arriving during this publish may miss it: it subscribed "after".
        if self.inner.subscribers.load(Ordering::Acquire) == 0 {
            return;
        }
        let report = SupervisorReport {
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            supervisor: supervisor.clone(),
            path: path.clone(),
            event: event(),
        };
        // Err only when every subscriber left meanwhile: nobody to tell.
        let _ = self.inner.tx.send(report);
    }

    /// A new subscriber; it receives the reports published from now on.
    pub fn subscribe(&self) -> ReportSubscriber {
        let rx = self.inner.tx.subscribe();
        self.inner.subscribers.fetch_add(1, Ordering::AcqRel);
        ReportSubscriber {
            rx,
            inner: self.inner.clone(),
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.inner.subscribers.load(Ordering::Acquire)
    }

    /// Reports published so far (only those published while someone subscribed).
    pub fn published(&self) -> u64 {
        self.inner.seq.load(Ordering::Relaxed)
    }

    /// Reports lost by lagging subscribers, summed over all of them.
    pub fn lagged(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Received {
    /// The next report.
    Report(SupervisorReport),
    /// The subscriber fell behind and lost this many reports (the oldest); the next receive
    /// continues with the oldest still held.
    Lagged(u64),
}

/// One subscription to a tree's reports (see [`SupervisorReports::subscribe`]).
pub struct ReportSubscriber {
    rx: broadcast::Receiver<SupervisorReport>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReportSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportSubscriber")
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl Drop for ReportSubscriber {
    fn drop(&mut self) {
        self.inner.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ReportSubscriber {
    /// The next report, or how many were lost; `None` once the channel is closed (every
    /// [`SupervisorReports`] of the tree dropped).
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(r) => Some(Received::Report(r)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(self.lost(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next report if one is queued; `Ok(None)` if none is, `Err(())` once closed.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<Received>, ()> {
        match self.rx.try_recv() {
            Ok(r) => Ok(Some(Received::Report(r))),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Ok(Some(self.lost(n))),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Closed) => Err(()),
        }
    }

    fn lost(&self, n: u64) -> Received {
        self.inner.lagged.fetch_add(n, Ordering::Relaxed);
        Received::Lagged(n)
    }
}

/// `reason` as report text: at most [`REPORT_REASON_LIMIT`] bytes, cut at a character
/// boundary and marked with `…` when cut.
pub fn reason_text(reason: &impl std::fmt::Display) -> String {
    let mut s = reason.to_string();
    if s.len() > REPORT_REASON_LIMIT {
        let mut end = REPORT_REASON_LIMIT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_out_of_range_is_refused_by_name() {
        let e = SupervisorReports::new(0).unwrap_err();
        assert_eq!(e.capacity, 0);
        assert!(e.to_string().contains("capacity 0"), "{e}");
        assert!(SupervisorReports::new(MAX_REPORT_CAPACITY + 1).is_err());
        assert!(SupervisorReports::new(1).is_ok());
    }

    #[test]
    fn without_subscribers_nothing_is_built() {
        let r = SupervisorReports::new(4).unwrap();
        let p = ActorPath::root("a");
        r.publish(&p, &p, || panic!("built without a subscriber"));
        assert_eq!(r.published(), 0);
        let sub = r.subscribe();
        assert_eq!(r.subscribers(), 1);
        r.publish(&p, &p, || ReportEvent::Started);
        assert_eq!(r.published(), 1);
        drop(sub);
        assert_eq!(r.subscribers(), 0);
        r.publish(&p, &p, || panic!("built after the last subscriber left"));
        assert_eq!(r.published(), 1);
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(REPORT_REASON_LIMIT);
        let t = reason_text(&long);
        assert!(t.len() <= REPORT_REASON_LIMIT + '…'.len_utf8());
        assert!(t.ends_with('…'));
        assert_eq!(reason_text(&"short"), "short");
    }
}
