//! Checkpoint replica versions: which copy of a segment's checkpoint is newer, who may send
//! one, and in what order a node sends its copies.
//!
//! A segment's owner copies every checkpoint write of the segment (`applied/`, `safety/`,
//! `session/` keys) to the segment's replica before the write counts as durable; after a
//! failover the replica adopts what it holds. The replica must therefore keep the *newest*
//! copy of each key, whatever order copies arrive in, and a write must never be reported
//! stored when it was not.
//!
//! # Versions
//!
//! A copy carries a [`Version`] `(epoch, boot, seq)`, compared in that order:
//!
//! - `epoch`: the sender's committed membership epoch when the write was made;
//! - `boot`: the sender process's boot number, persisted in the node's checkpoint store
//!   ([`BOOT_KEY`]) and raised at every start to `max(previous + 1, wall clock in ms)`
//!   ([`next_boot`]), durably, before any write of this process is versioned;
//! - `seq`: a counter of this process's copies, from 1.
//!
//! A replica stores a copy only if its version is strictly newer than the one it holds for
//! the key ([`admit`]); an older or equal one is refused with [`Refusal::Stale`] (never
//! answered `Ok`), and the write that sent it fails.
//!
//! # Why no restart can make a new write look old
//!
//! Take two writes of one key, `w1` made before `w2` (in real time, by owners that were
//! owners when they wrote them). Then `version(w1) < version(w2)`:
//!
//! - *Different epochs.* A process's epoch only grows (it is the committed view's, read when
//!   the version is taken), and ownership only moves with a new committed view, whose epoch
//!   is higher; a restarted node applies the raft log it persisted, and adopts a segment only
//!   from a view no older than every peer's (the handback), so `w2`'s epoch is at least
//!   `w1`'s, and higher if another owner made `w1` in an older view.
//! - *Same epoch, same owner, same process.* `seq` is taken under one lock with the epoch
//!   ([`Sequencer::next`]), so it grows with the writes.
//! - *Same epoch, same owner, a restart in between.* The later process's boot number is
//!   above every earlier one's: it is `previous + 1` at least, and `previous` was committed
//!   durably before the earlier process versioned anything. The wall-clock floor keeps the
//!   order even if the data directory (and with it the counter) was lost, as long as the
//!   clock did not step back further than the time between the two boots.
//! - *Same epoch, different owners* cannot happen: one committed view gives a segment to one
//!   member. (The one exception, an old owner handing its checkpoints to the new one within
//!   the new view, goes to the new owner, which refuses copies once it drives the segment.)
//!
//! # Who may send a copy
//!
//! A replica checks every copy against its own committed view ([`authorize`]): it is stored
//! only if the sender owns the segment there and the receiver is the segment's replica, or
//! the receiver is the new owner, does not drive the segment yet, and the sender's newest
//! heartbeat still announces the segment (the handback of a moving segment). Anything else
//! is refused with the reason ([`Refusal::NotOwner`], [`Refusal::NotReplica`],
//! [`Refusal::DrivenHere`]): an authenticated member cannot overwrite the replicas of
//! segments it does not own. While two nodes' views differ for a moment, copies between them
//! are refused and the writes fail: safe (not acknowledged), and over once the views agree.
//!
//! # Order of one key's copies
//!
//! A node sends the copies of one key one at a time, in version order: each copy waits for
//! its predecessor's to end (answered, failed or dropped), at most [`PREDECESSOR_WAIT`], and
//! carries the key's *committed local value when it is sent*, not the value of the write
//! that queued it, so the replica converges on what the owner's store holds even if two
//! writes of one key commit locally in the other order. If a predecessor is still running
//! after [`PREDECESSOR_WAIT`] the copy goes anyway; the late predecessor is then refused as
//! stale, which fails only that older write.
//!
//! # What the owner does with a refusal
//!
//! The write fails ([`gridvisor_actors::checkpoint::CheckpointError::Replication`], naming the
//! replica and the reason): a setpoint it carried is not acknowledged. The refusal is logged
//! and counted (`gridvisor_cluster_replication_refused_total{reason}`), and the segment is
//! marked for a full resync at the next reconcile pass: every key copied again at fresh
//! versions, which brings a replica that holds a newer version of this node's own copies back
//! in line, and is itself refused if another node really owns the segment now (until this
//! node's view catches up and it releases the segment).
//!
//! A replica keeps the held versions in memory only: a copy sent to a replica's earlier
//! process cannot arrive at a later one (links are per process, TCP is ordered), and every
//! copy it accepts after a restart passes the owner check of its own view.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridvisor_actors::checkpoint::{CheckpointError, CheckpointStore};
use gridvisor_cluster::shard::Placement;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The node-level checkpoint key of the boot number (not a segment's: never replicated).
pub const BOOT_KEY: &str = "cluster/boot";
/// Longest wait of a key's copy for the copy before it (beyond, it goes anyway, and the
/// older copy is refused as stale if it arrives later). A copy ends within its local commit
/// plus `REPLICATION_TIMEOUT`; this bounds a local commit stuck behind a full queue.
pub const PREDECESSOR_WAIT: Duration = Duration::from_secs(5);

/// The version of a checkpoint copy; compared as `(epoch, boot, seq)` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// The sender's committed epoch when the write was made.
    pub epoch: u64,
    /// The sender process's boot number.
    pub boot: u64,
    /// The sender process's copy counter.
    pub seq: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.epoch, self.boot, self.seq)
    }
}

/// Why a replica did not store a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The replica holds a newer (or the same) version of the key.
    #[error("stale copy of {key}: version {sent} is not newer than the {held} held here")]
    Stale {
        /// The key.
        key: String,
        /// The version held.
        held: Version,
        /// The version sent.
        sent: Version,
    },
    /// The sender does not own the segment in the receiver's committed view.
    #[error("{sender} does not own {segment} in view {epoch} of {receiver} (owner: {})", owner.as_deref().unwrap_or("none"))]
    NotOwner {
        /// The segment.
        segment: String,
        /// The node that sent the copy.
        sender: String,
        /// The node that refused it.
        receiver: String,
        /// The owner in the receiver's view.
        owner: Option<String>,
        /// The receiver's committed epoch.
        epoch: u64,
    },
    /// The sender owns the segment, but the receiver is not its replica.
    #[error("{receiver} is not the replica of {segment} in view {epoch} (replica: {})", replica.as_deref().unwrap_or("none"))]
    NotReplica {
        /// The segment.
        segment: String,
        /// The node that refused the copy.
        receiver: String,
        /// The replica in the receiver's view.
        replica: Option<String>,
        /// The receiver's committed epoch.
        epoch: u64,
    },
    /// The receiver drives (or is handing over) the segment itself.
    #[error("{receiver} drives {segment} itself: a copy from {sender} is stale")]
    DrivenHere {
        /// The segment.
        segment: String,
        /// The node that sent the copy.
        sender: String,
        /// The node that refused it.
        receiver: String,
    },
    /// The key is not a checkpoint of a segment of the topology.
    #[error("{0:?} is not a segment's checkpoint")]
    NotSegmentKey(String),
    /// The replica's store did not take it.
    #[error("the replica's store: {0}")]
    Store(String),
}

impl Refusal {
    /// The metric label of the reason.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Stale { .. } => "stale",
            Refusal::NotOwner { .. } => "not_owner",
            Refusal::NotReplica { .. } => "not_replica",
            Refusal::DrivenHere { .. } => "driven_here",
            Refusal::NotSegmentKey(_) => "not_segment_key",
            Refusal::Store(_) => "store",
        }
    }

    /// Whether this node's copies of the segment may be behind or rejected for its view:
    /// the owner resynchronises the segment.
    pub fn wants_resync(&self) -> bool {
        matches!(
            self,
            Refusal::Stale { .. } | Refusal::NotOwner { .. } | Refusal::NotReplica { .. }
        )
    }
}

/// The boot number after `previous` (none: the first boot), at wall-clock `now_ms` since
/// the Unix epoch: above `previous`, and not below the clock.
pub fn next_boot(previous: Option<u64>, now_ms: u64) -> u64 {
    previous.map_or(1, |p| p.saturating_add(1)).max(now_ms)
}

/// Read the boot number from `store`, raise it ([`next_boot`]) and commit it durably: the
/// boot number of this process. Call before the store replicates anything.
pub async fn bump_boot(store: &CheckpointStore) -> Result<u64, CheckpointError> {
    let previous = store.get::<u64>(BOOT_KEY)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let boot = next_boot(previous, now_ms);
    store.put(BOOT_KEY, &boot).await?;
    Ok(boot)
}

/// A copy's place in its key's order: it waits for the copy before it ([`Turn::wait`]) and
/// lets the next one go when it is dropped.
#[derive(Debug)]
pub struct Turn {
    before: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Turn {
    /// Wait until the copy before this one ended, at most `bound`; false if it had not.
    pub async fn wait(&mut self, bound: Duration) -> bool {
        match self.before.take() {
            // The sender is dropped, never used: `Err` is the signal.
            Some(before) => tokio::time::timeout(bound, before).await.is_ok(),
            None => true,
        }
    }
}

/// Hands out a node's copy versions and their per-key turns.
#[derive(Debug)]
pub struct Sequencer {
    boot: u64,
    state: Mutex<SequencerState>,
}

#[derive(Debug, Default)]
struct SequencerState {
    seq: u64,
    /// Per key, the end of its newest copy (keys of segments only: bounded by the topology).
    tails: HashMap<String, oneshot::Receiver<()>>,
}

impl Sequencer {
    /// A sequencer of a process with boot number `boot`.
    pub fn new(boot: u64) -> Sequencer {
        Sequencer {
            boot,
            state: Mutex::default(),
        }
    }

    /// This process's boot number.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// The version and turn of the next copy of `key`. `epoch` is read under the same lock as
    /// the counter, so the versions of one key grow in the order of its turns.
    pub fn next(&self, key: &str, epoch: impl FnOnce() -> u64) -> (Version, Turn) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.seq += 1;
        let version = Version {
            epoch: epoch(),
            boot: self.boot,
            seq: s.seq,
        };
        let (done, tail) = oneshot::channel();
        let before = s.tails.insert(key.to_string(), tail);
        (
            version,
            Turn {
                before,
                _done: done,
            },
        )
    }
}

/// Whether a copy of `key` at `sent` may replace the one held at `held`: only a strictly
/// newer version may.
pub fn admit(key: &str, held: Option<Version>, sent: Version) -> Result<(), Refusal> {
    match held {
        Some(held) if sent <= held => Err(Refusal::Stale {
            key: key.to_string(),
            held,
            sent,
        }),
        _ => Ok(()),
    }
}

/// What a replica knows when a copy of one of `segment`'s keys arrives.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The receiver.
    pub me: &'a str,
    /// The sender (authenticated by the transport).
    pub from: &'a str,
    /// The segment of the key.
    pub segment: &'a str,
    /// The segment's placement in the receiver's committed view.
    pub placement: Option<&'a Placement>,
    /// The receiver's committed epoch.
    pub epoch: u64,
    /// Whether the receiver drives the segment or is handing it over.
    pub driven_here: bool,
    /// Whether the sender's newest heartbeat announces the segment as driven.
    pub sender_announces: bool,
}

/// Whether the receiver may store the copy (see the module docs).
pub fn authorize(a: &Arrival<'_>) -> Result<(), Refusal> {
    if a.driven_here {
        return Err(Refusal::DrivenHere {
            segment: a.segment.to_string(),
            sender: a.from.to_string(),
            receiver: a.me.to_string(),
        });
    }
    let owner = a.placement.map(|p| p.owner.as_str());
    if owner == Some(a.from) {
        let replica = a.placement.and_then(|p| p.replica.clone());
        return match replica.as_deref() == Some(a.me) {
            true => Ok(()),
            false => Err(Refusal::NotReplica {
                segment: a.segment.to_string(),
                receiver: a.me.to_string(),
                replica,
                epoch: a.epoch,
            }),
        };
    }
    if owner == Some(a.me) && a.sender_announces {
        // The handback: the old owner hands its checkpoints to this node, the new owner.
        return Ok(());
    }
    Err(Refusal::NotOwner {
        segment: a.segment.to_string(),
        sender: a.from.to_string(),
        receiver: a.me.to_string(),
        owner: owner.map(str::to_string),
        epoch: a.epoch,
    })
}

/// The versions a replica holds, one async lock per key: a copy is checked and stored under
/// its key's lock, and its version recorded only once the store committed it.
#[derive(Debug, Default)]
pub struct ReplicaBook {
    /// Keys of segments only: bounded by the topology.
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Version>>>>>,
}

impl ReplicaBook {
    /// The lock and held version of `key`.
    pub fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<Version>>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.entry(key.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(epoch: u64, boot: u64, seq: u64) -> Version {
        Version { epoch, boot, seq }
    }

    #[test]
    fn a_restarted_owner_writes_newer_versions_within_one_epoch() {
        // The bug this module fixes: a restart began `seq` at 0 again, so every write of the
        // new process looked older than the last of the old one.
        let before = Sequencer::new(next_boot(Some(7), 0));
        let mut last = None;
        for _ in 0..1000 {
            last = Some(before.next("applied/tx-1", || 4).0);
        }
        let after = Sequencer::new(next_boot(Some(before.boot()), 0));
        let first = after.next("applied/tx-1", || 4).0;
        assert!(first > last.unwrap(), "{first} after {}", last.unwrap());
        assert_eq!(admit("applied/tx-1", last, first), Ok(()));
    }

    #[test]
    fn boot_numbers_grow_and_never_fall_below_the_clock() {
        assert_eq!(next_boot(None, 0), 1);
        assert_eq!(next_boot(Some(41), 0), 42);
        // A lost counter starts from the clock, above a previous boot of an earlier moment.
        assert_eq!(next_boot(None, 1_700_000_000_000), 1_700_000_000_000);
        // A clock that stepped back does not take the counter with it.
        assert_eq!(
            next_boot(Some(1_700_000_000_000), 1_600_000_000_000),
            1_700_000_000_001
        );
        assert_eq!(next_boot(Some(u64::MAX), 0), u64::MAX);
    }

    #[test]
    fn versions_order_by_epoch_then_boot_then_seq() {
        assert!(v(2, 0, 0) > v(1, u64::MAX, u64::MAX));
        assert!(v(1, 2, 0) > v(1, 1, u64::MAX));
        assert!(v(1, 1, 2) > v(1, 1, 1));
        assert_eq!(v(3, 4, 5).to_string(), "3/4/5");
    }

    #[test]
    fn only_a_strictly_newer_copy_is_admitted_and_a_stale_one_says_why() {
        assert_eq!(admit("k", None, v(0, 1, 1)), Ok(()));
        assert_eq!(admit("k", Some(v(1, 1, 1)), v(1, 1, 2)), Ok(()));
        for older in [v(1, 1, 1), v(1, 1, 0), v(1, 0, 9), v(0, 9, 9)] {
            let e = admit("k", Some(v(1, 1, 1)), older).unwrap_err();
            assert_eq!(e.label(), "stale");
            assert!(e.wants_resync());
            assert!(e.to_string().contains("stale copy of k"), "{e}");
        }
    }

    #[test]
    fn versions_of_one_key_follow_their_turns_and_the_epoch_never_goes_back() {
        let s = Sequencer::new(5);
        let mut epoch = 1;
        let mut last = v(0, 0, 0);
        for i in 0..100 {
            if i % 10 == 0 {
                epoch += 1;
            }
            let (version, _) = s.next("k", || epoch);
            assert!(version > last);
            assert_eq!(version.boot, 5);
            last = version;
        }
    }

    #[tokio::test]
    async fn a_copy_waits_for_its_predecessor_and_a_dropped_one_lets_it_go() {
        let s = Sequencer::new(1);
        let (_, first) = s.next("k", || 1);
        let (_, mut second) = s.next("k", || 1);
        let (_, mut other) = s.next("other", || 1);
        // Another key has no predecessor.
        assert!(other.wait(Duration::ZERO).await);
        // The first copy is still running: the bound ends the wait (a zero bound: no clock
        // time passes in this test).
        assert!(!second.wait(Duration::ZERO).await);
        let (_, mut third) = s.next("k", || 1);
        let waiter = tokio::spawn(async move { third.wait(Duration::from_secs(30)).await });
        drop(second);
        drop(first);
        assert!(waiter.await.unwrap());
    }

    fn placement(owner: &str, replica: &str) -> Placement {
        Placement {
            owner: owner.into(),
            replica: Some(replica.into()),
        }
    }

    fn arrival<'a>(from: &'a str, p: &'a Placement) -> Arrival<'a> {
        Arrival {
            me: "node-b",
            from,
            segment: "tx-1",
            placement: Some(p),
            epoch: 9,
            driven_here: false,
            sender_announces: false,
        }
    }

    #[test]
    fn the_owner_may_write_to_its_replica_and_nobody_else_may() {
        let p = placement("node-a", "node-b");
        assert_eq!(authorize(&arrival("node-a", &p)), Ok(()));
        let e = authorize(&arrival("node-c", &p)).unwrap_err();
        assert_eq!(e.label(), "not_owner");
        assert_eq!(
            e.to_string(),
            "node-c does not own tx-1 in view 9 of node-b (owner: node-a)"
        );
        // Announcing the segment does not help a node that is not the owner, towards a replica.
        let mut a = arrival("node-c", &p);
        a.sender_announces = true;
        assert_eq!(authorize(&a).unwrap_err().label(), "not_owner");
        // Nor is anything accepted for a segment without a placement.
        let mut a = arrival("node-a", &p);
        a.placement = None;
        assert!(authorize(&a)
            .unwrap_err()
            .to_string()
            .contains("owner: none"));
    }

    #[test]
    fn the_owner_may_not_write_to_a_node_that_is_not_its_replica() {
        let p = placement("node-a", "node-c");
        let e = authorize(&arrival("node-a", &p)).unwrap_err();
        assert_eq!(e.label(), "not_replica");
        assert!(e.to_string().contains("(replica: node-c)"), "{e}");
    }

    #[test]
    fn a_new_owner_takes_the_handback_only_from_a_node_that_still_announces_the_segment() {
        let p = placement("node-b", "node-c");
        let mut a = arrival("node-a", &p);
        assert_eq!(authorize(&a).unwrap_err().label(), "not_owner");
        a.sender_announces = true;
        assert_eq!(authorize(&a), Ok(()));
        // Once it drives the segment, nothing from elsewhere is taken.
        a.driven_here = true;
        let e = authorize(&a).unwrap_err();
        assert_eq!(e.label(), "driven_here");
        assert!(!e.wants_resync());
    }
}
