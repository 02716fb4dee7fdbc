//! The cluster runtime's typed events: adoptions, releases, handovers, quorum loss, lease
//! changes, takeovers and committed views, as records rather than log prose.
//!
//! Two ways out, neither of which can slow the runtime down:
//!
//! - a bounded, lossy broadcast ([`Events::subscribe`]), as supervisor reports are
//!   (gridvisor-supervisors' `report`): a subscriber more than [`EVENT_CAPACITY`] records
//!   behind loses the oldest and is told how many ([`Received::Lagged`]);
//! - a JSON-lines file under the node's data dir ([`EVENTS_FILE`]), one record per line,
//!   each written with one `write(2)` when it is emitted: a process killed with SIGKILL loses
//!   nothing it emitted (the page cache keeps it), so a real-process run (the cluster chaos
//!   checker, tests/cluster.rs) reads what the node did without parsing log text. The file
//!   is capped at [`MAX_EVENTS_FILE_BYTES`]; past the cap one [`ClusterEvent::Truncated`]
//!   record says so and later records are only counted ([`Events::file_lost`]).
//!
//! The log lines stay for humans; the checkers read only these records ([`read_events`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use gridvisor_cluster::lease::LeaseState;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::plan::ReleaseReason;

/// Records a subscriber may fall behind before it loses the oldest.
pub const EVENT_CAPACITY: usize = 1024;
/// The events file's name in the node's data dir.
pub const EVENTS_FILE: &str = "cluster-events.jsonl";
/// Largest events file (appended to across restarts); past it records are only counted.
/// A node emits a few records per handoff: this is years of a busy cluster's handoffs.
pub const MAX_EVENTS_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What happened on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A process of the node started (a new boot: whatever the previous one drove, it stopped
    /// when that process ended).
    Started {
        /// The boot number (raised durably at every start).
        boot: u64,
    },
    /// The node starts driving a segment (its driving interval begins here).
    Adopting {
        /// The segment.
        segment: String,
        /// The committed epoch it is adopted in.
        epoch: u64,
    },
    /// The adoption finished.
    Adopted {
        /// The segment.
        segment: String,
        /// The committed epoch.
        epoch: u64,
    },
    /// The adoption failed (the segment may have been partly started; it is released by the
    /// next pass if the map no longer gives it here).
    AdoptionFailed {
        /// The segment.
        segment: String,
        /// Why.
        error: String,
    },
    /// The node starts releasing a segment.
    Releasing {
        /// The segment.
        segment: String,
        /// Why.
        reason: ReleaseReason,
    },
    /// The release finished: the devices are in ChargeOnly and the subtree stopped (the
    /// driving interval ends here).
    Released {
        /// The segment.
        segment: String,
        /// Why.
        reason: ReleaseReason,
    },
    /// The release failed.
    ReleaseFailed {
        /// The segment.
        segment: String,
        /// Why.
        error: String,
    },
    /// A released segment's handover ended: its heartbeats stop announcing it (the handback).
    HandedOver {
        /// The segment.
        segment: String,
        /// The node its checkpoints were copied to (None: no copy was due).
        to: Option<String>,
    },
    /// No majority confirmed the lease lately: a driven segment goes to ChargeOnly.
    QuorumLost {
        /// The segment.
        segment: String,
    },
    /// The lease is confirmed again: the segment's ChargeOnly for the lease ends.
    QuorumBack {
        /// The segment.
        segment: String,
    },
    /// This node's lease changed.
    Lease {
        /// Before.
        from: LeaseState,
        /// Now.
        to: LeaseState,
    },
    /// The leader (this node) proposes to remove a node a majority released (a takeover).
    TakeoverProposed {
        /// The node taken over.
        holder: String,
    },
    /// The leader (this node) proposes to admit a node heard again.
    AdmitProposed {
        /// The node admitted (not `node`: that is the record's own field).
        admitted: String,
    },
    /// A committed view was applied here.
    View {
        /// Its epoch.
        epoch: u64,
        /// Its members.
        members: Vec<String>,
        /// The leader, if known.
        leader: Option<String>,
    },
    /// The events file reached [`MAX_EVENTS_FILE_BYTES`]: nothing more is written to it.
    Truncated {
        /// Its size.
        bytes: u64,
    },
}

/// One event of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The node.
    pub node: String,
    /// Its position in this process's stream (from 1).
    pub seq: u64,
    /// When (RFC 3339, UTC, the machine's clock).
    pub at: String,
    /// What.
    #[serde(flatten)]
    pub event: ClusterEvent,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The next record.
    Event(EventRecord),
    /// The subscriber fell behind and lost this many records (the oldest).
    Lagged(u64),
}

/// One subscription ([`Events::subscribe`]).
pub struct EventSubscriber {
    rx: broadcast::Receiver<EventRecord>,
}

impl EventSubscriber {
    /// The next record, or how many were lost; `None` once the stream is closed.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(r) => Some(Received::Event(r)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next record if one is queued.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.rx.try_recv() {
            Ok(r) => Some(Received::Event(r)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(_) => None,
        }
    }
}

struct Sink {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
    full: bool,
}

/// A node's event stream.
pub struct Events {
    node: String,
    tx: broadcast::Sender<EventRecord>,
    seq: AtomicU64,
    sink: Mutex<Option<Sink>>,
    file_lost: AtomicU64,
}

impl Events {
    /// A stream for `node`, appending to `file` if given (created if missing).
    pub fn new(node: &str, file: Option<&Path>) -> Result<Events, String> {
        let sink = match file {
            None => None,
            Some(path) => {
                let file = (std::fs::OpenOptions::new().create(true).append(true))
                    .open(path)
                    .map_err(|e| format!("the events file {}: {e}", path.display()))?;
                let bytes = (file.metadata())
                    .map_err(|e| format!("the events file {}: {e}", path.display()))?
                    .len();
                Some(Sink {
                    path: path.to_path_buf(),
                    file,
                    bytes,
                    full: bytes >= MAX_EVENTS_FILE_BYTES,
                })
            }
        };
        Ok(Events {
            node: node.to_string(),
            tx: broadcast::channel(EVENT_CAPACITY).0,
            seq: AtomicU64::new(0),
            sink: Mutex::new(sink),
            file_lost: AtomicU64::new(0),
        })
    }

    /// Publish one event (never waits for a subscriber).
    pub fn emit(&self, event: ClusterEvent) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        // Numbered under the lock: the file's records are in `seq` order.
        let record = EventRecord {
            node: self.node.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at: now_rfc3339(),
            event,
        };
        if let Some(s) = sink.as_mut() {
            self.write(s, &record);
        }
        drop(sink);
        let _ = self.tx.send(record);
    }

    fn write(&self, s: &mut Sink, record: &EventRecord) {
        if s.full {
            self.file_lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        if s.bytes + line.len() as u64 + 1 > MAX_EVENTS_FILE_BYTES {
            s.full = true;
            self.file_lost.fetch_add(1, Ordering::Relaxed);
            let last = EventRecord {
                event: ClusterEvent::Truncated { bytes: s.bytes },
                ..record.clone()
            };
            line = serde_json::to_vec(&last).unwrap_or_default();
        }
        line.push(b'\n');
        // One write: a kill never leaves half a record.
        match s.file.write_all(&line) {
            Ok(()) => s.bytes += line.len() as u64,
            Err(e) => {
                self.file_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %s.path.display(), error = %e, "cluster event not written");
            }
        }
    }

    /// A new subscription (records emitted from now on).
    pub fn subscribe(&self) -> EventSubscriber {
        EventSubscriber {
            rx: self.tx.subscribe(),
        }
    }

    /// Records not written to the file (over its cap, or a write failed).
    pub fn file_lost(&self) -> u64 {
        self.file_lost.load(Ordering::Relaxed)
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    (now.format(&time::format_description::well_known::Rfc3339)).unwrap_or_default()
}

/// The records of an events file's text, in order; an error names the line that is not a
/// record (a file that is not an events file, or a torn last line).
pub fn read_events(text: &str) -> Result<Vec<EventRecord>, String> {
    (text.lines().enumerate())
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("line {}: not a cluster event: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_kind_of_event_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let events = Events::new("node-a", Some(&path)).unwrap();
        let seg = || "tx-1".to_string();
        let all = vec![
            ClusterEvent::Started { boot: 1 },
            ClusterEvent::Adopting {
                segment: seg(),
                epoch: 2,
            },
            ClusterEvent::Adopted {
                segment: seg(),
                epoch: 2,
            },
            ClusterEvent::AdoptionFailed {
                segment: seg(),
                error: "e".into(),
            },
            ClusterEvent::Releasing {
                segment: seg(),
                reason: ReleaseReason::Lapsed,
            },
            ClusterEvent::Released {
                segment: seg(),
                reason: ReleaseReason::Shutdown,
            },
            ClusterEvent::ReleaseFailed {
                segment: seg(),
                error: "e".into(),
            },
            ClusterEvent::HandedOver {
                segment: seg(),
                to: Some("node-b".into()),
            },
            ClusterEvent::QuorumLost { segment: seg() },
            ClusterEvent::QuorumBack { segment: seg() },
            ClusterEvent::Lease {
                from: LeaseState::Driving,
                to: LeaseState::ChargeOnly,
            },
            ClusterEvent::TakeoverProposed {
                holder: "node-c".into(),
            },
            ClusterEvent::AdmitProposed {
                admitted: "node-c".into(),
            },
            ClusterEvent::View {
                epoch: 3,
                members: vec!["node-a".into()],
                leader: None,
            },
            ClusterEvent::Truncated { bytes: 1 },
        ];
        for e in &all {
            events.emit(e.clone());
        }
        let read = read_events(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let kinds: Vec<ClusterEvent> = read.into_iter().map(|r| r.event).collect();
        assert_eq!(kinds, all);
    }

    #[tokio::test]
    async fn records_reach_subscribers_and_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let events = Events::new("node-a", Some(&path)).unwrap();
        let mut sub = events.subscribe();
        events.emit(ClusterEvent::Started { boot: 3 });
        events.emit(ClusterEvent::Released {
            segment: "tx-1".into(),
            reason: ReleaseReason::Moved,
        });
        let Some(Received::Event(first)) = sub.recv().await else {
            panic!("no record")
        };
        assert_eq!(first.seq, 1);
        assert_eq!(first.event, ClusterEvent::Started { boot: 3 });
        let read = read_events(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], first);
        assert_eq!(read[1].seq, 2);
        assert!(read[1].at.ends_with('Z'), "{}", read[1].at);
        // The wire form names its kind and fields (what other tools read).
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .contains(r#""kind":"released""#));
        assert!(text.contains(r#""reason":"moved""#));
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_lost() {
        let events = Events::new("node-a", None).unwrap();
        let mut sub = events.subscribe();
        for boot in 0..(EVENT_CAPACITY as u64 + 5) {
            events.emit(ClusterEvent::Started { boot });
        }
        assert_eq!(sub.try_recv(), Some(Received::Lagged(5)));
        let Some(Received::Event(r)) = sub.try_recv() else {
            panic!("no record after the loss")
        };
        assert_eq!(r.event, ClusterEvent::Started { boot: 5 });
    }

    #[test]
    fn a_full_file_says_so_once_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        // A file just under the cap.
        let mut filler = vec![b' '; (MAX_EVENTS_FILE_BYTES - 10) as usize];
        filler.push(b'\n');
        std::fs::write(&path, filler).unwrap();
        let events = Events::new("node-a", Some(&path)).unwrap();
        events.emit(ClusterEvent::Started { boot: 1 });
        events.emit(ClusterEvent::Started { boot: 2 });
        assert_eq!(events.file_lost(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let records = read_events(&text).unwrap();
        assert_eq!(records.len(), 1);
        assert!(matches!(records[0].event, ClusterEvent::Truncated { .. }));
    }

    #[test]
    fn a_line_that_is_not_a_record_is_named() {
        let good = r#"{"node":"a","seq":1,"at":"2026-01-01T00:00:00Z","kind":"started","boot":1}"#;
        assert_eq!(read_events(good).unwrap().len(), 1);
        let err = read_events(&format!("{good}\n{{\"node\":\"a\",\"se")).unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }
}
