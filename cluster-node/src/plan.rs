//! What a node does with its segments, decided by a pure function.
//!
//! [`plan`] reads one snapshot of the node's state (the committed view, its lease, the
//! segments it drives and hands over, what each peer's newest heartbeat said) and returns the
//! [`Actions`] that bring the driven segments in line with the committed shard map and the
//! lease. It performs nothing and reads no clock: the runtime's reconcile pass
//! (`Inner::reconcile`) carries the actions out, and this module's tests (and
//! tests/plan_props.rs) check every branch and the safety properties on arbitrary snapshots,
//! the way gridvisor-cluster's `lease_sim` checks the lease.
//!
//! The state machine of one segment on this node:
//!
//! ```text
//!   not driven --(owner in the committed map, lease Driving, handback seen)--> adopt
//!   driven --(lease ChargeOnly)--> quorum lost: ChargeOnly --(lease Driving)--> confirmed
//!   driven --(lease Stopped, lapsed, or the map moved it)--> release (ChargeOnly, stopped)
//!   released because moved, lease not Stopped --> handed over (checkpoints copied to the
//!   new owner; announced as driven until then)
//! ```
//!
//! The lease state is an input, not `now`: the holder's state machine
//! ([`gridvisor_cluster::lease::Holder::state`]) turns the clock into it, and is tested there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gridvisor_cluster::lease::LeaseState;
use gridvisor_cluster::membership::CommittedView;
use gridvisor_cluster::shard;
use serde::{Deserialize, Serialize};

/// What this node saw of another node's newest heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSeen {
    /// When it arrived (the runtime's clock).
    pub heard: Duration,
    /// The committed epoch whose releases the sender had carried out.
    pub epoch: u64,
    /// The segments the sender drives (or still hands over).
    pub driving: BTreeSet<String>,
}

/// One snapshot of a node's state: everything [`plan`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// This node's name.
    pub me: &'a str,
    /// The committed view (members, epoch).
    pub view: &'a CommittedView,
    /// Every segment of the site.
    pub segments: &'a BTreeSet<String>,
    /// This node's lease now.
    pub lease: LeaseState,
    /// The lease ended and came back while segments were held: all of them go back through
    /// the handback.
    pub lapsed: bool,
    /// The segments this node drives.
    pub owned: &'a BTreeSet<String>,
    /// Released segments whose checkpoints the new owner has not confirmed yet.
    pub handing_over: &'a BTreeSet<String>,
    /// Driven segments already put in ChargeOnly for an ageing lease.
    pub quorum_flagged: &'a BTreeSet<String>,
    /// The newest heartbeat of each peer.
    pub peers: &'a BTreeMap<String, PeerSeen>,
}

/// Why a driven segment is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The committed map gives it to another node (or this node left the members).
    Moved,
    /// The lease lapsed while it was held.
    Lapsed,
    /// The lease ended.
    LeaseEnded,
    /// The node stops (never planned: the shutdown releases everything).
    Shutdown,
}

impl ReleaseReason {
    /// For the log line.
    pub fn describe(self) -> &'static str {
        match self {
            ReleaseReason::Moved => "the committed map gives it to another node",
            ReleaseReason::Lapsed => "the lease lapsed while it was held",
            ReleaseReason::LeaseEnded => "the lease ended",
            ReleaseReason::Shutdown => "the node stops",
        }
    }
}

/// Release one driven segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The segment.
    pub segment: String,
    /// Why.
    pub reason: ReleaseReason,
    /// Keep announcing it as driven until its new owner has its checkpoints (moved while the
    /// lease still runs).
    pub hand_over: bool,
}

/// What to do with one segment being handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The segment.
    pub segment: String,
    /// Copy its checkpoints to this node, then stop announcing it; `None`: stop announcing
    /// it now (the lease ended, this node left, the segment has no owner or came back here).
    pub copy_to: Option<String>,
}

/// What a reconcile pass does, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// Driven segments to release.
    pub release: Vec<Release>,
    /// Driven segments to put in ChargeOnly: no majority confirmed the lease lately.
    pub quorum_lost: Vec<String>,
    /// Driven segments in ChargeOnly for the lease, confirmed again.
    pub quorum_back: Vec<String>,
    /// Segments handed over (the ones released now included).
    pub handovers: Vec<Handover>,
    /// Segments to adopt (after the releases and handovers).
    pub adopt: Vec<String>,
}

/// The segments the committed map gives to `me` (none while `me` is not a member).
pub fn desired(me: &str, view: &CommittedView, segments: &BTreeSet<String>) -> BTreeSet<String> {
    if !view.members.contains(me) {
        return BTreeSet::new();
    }
    let members: Vec<String> = view.members.iter().cloned().collect();
    segments
        .iter()
        .filter(|s| shard::place(&members, s).is_some_and(|p| p.owner == me))
        .cloned()
        .collect()
}

/// Whether every other member, in a view at least as new as `view`, said it does not drive
/// `segment` (and no peer applied a newer view than this node's: a node that restarted and
/// has not caught up with the log decides nothing).
pub fn handed_back(s: &Snapshot<'_>, segment: &str) -> bool {
    let epoch = s.view.epoch;
    if s.peers.values().any(|p| p.epoch > epoch) {
        return false;
    }
    s.view
        .members
        .iter()
        .filter(|m| m.as_str() != s.me)
        .all(|m| {
            s.peers
                .get(m)
                .is_some_and(|p| p.epoch >= epoch && !p.driving.contains(segment))
        })
}

/// Decide a reconcile pass from one snapshot.
pub fn plan(s: &Snapshot<'_>) -> Actions {
    let desired = desired(s.me, s.view, s.segments);
    let mut a = Actions::default();
    for seg in s.owned {
        if let Some(reason) = release_reason(s, &desired, seg) {
            a.release.push(Release {
                segment: seg.clone(),
                reason,
                hand_over: reason == ReleaseReason::Moved && s.lease != LeaseState::Stopped,
            });
        } else if s.lease == LeaseState::ChargeOnly {
            if !s.quorum_flagged.contains(seg) {
                a.quorum_lost.push(seg.clone());
            }
        } else if s.quorum_flagged.contains(seg) {
            a.quorum_back.push(seg.clone());
        }
    }
    let mut handing: BTreeSet<&String> = s.handing_over.iter().collect();
    handing.extend(a.release.iter().filter(|r| r.hand_over).map(|r| &r.segment));
    a.handovers = handing.into_iter().map(|seg| handover(s, seg)).collect();
    if s.lease == LeaseState::Driving && !s.lapsed {
        let still_handing: BTreeSet<&String> = (a.handovers.iter())
            .filter(|h| h.copy_to.is_some())
            .map(|h| &h.segment)
            .collect();
        a.adopt = desired
            .difference(s.owned)
            .filter(|seg| !still_handing.contains(seg) && handed_back(s, seg))
            .cloned()
            .collect();
    }
    a
}

/// Why `seg`, driven here, must be released now (None: it stays).
fn release_reason(
    s: &Snapshot<'_>,
    desired: &BTreeSet<String>,
    seg: &str,
) -> Option<ReleaseReason> {
    if !desired.contains(seg) {
        Some(ReleaseReason::Moved)
    } else if s.lapsed {
        Some(ReleaseReason::Lapsed)
    } else if s.lease == LeaseState::Stopped {
        Some(ReleaseReason::LeaseEnded)
    } else {
        None
    }
}

/// Where the checkpoints of `seg`, handed over, go.
fn handover(s: &Snapshot<'_>, seg: &str) -> Handover {
    let members: Vec<String> = s.view.members.iter().cloned().collect();
    let owner = shard::place(&members, seg).map(|p| p.owner);
    let copy_to = match owner {
        _ if s.lease == LeaseState::Stopped || !s.view.members.contains(s.me) => None,
        Some(o) if o != s.me => Some(o),
        _ => None,
    };
    Handover {
        segment: seg.to_string(),
        copy_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

    /// A site of twelve segments over three members, as node-a sees it at epoch 5.
    struct World {
        view: CommittedView,
        segments: BTreeSet<String>,
        lease: LeaseState,
        lapsed: bool,
        owned: BTreeSet<String>,
        handing_over: BTreeSet<String>,
        quorum_flagged: BTreeSet<String>,
        peers: BTreeMap<String, PeerSeen>,
    }

    impl World {
        fn new() -> World {
            let view = CommittedView {
                members: NODES.iter().map(|n| n.to_string()).collect(),
                epoch: 5,
                leader: Some("node-b".into()),
            };
            let peers = ["node-b", "node-c"]
                .iter()
                .map(|p| (p.to_string(), seen(5, &[])))
                .collect();
            World {
                view,
                segments: (1..=12).map(|i| format!("tx-{i}")).collect(),
                lease: LeaseState::Driving,
                lapsed: false,
                owned: BTreeSet::new(),
                handing_over: BTreeSet::new(),
                quorum_flagged: BTreeSet::new(),
                peers,
            }
        }

        fn plan(&self) -> Actions {
            plan(&Snapshot {
                me: "node-a",
                view: &self.view,
                segments: &self.segments,
                lease: self.lease,
                lapsed: self.lapsed,
                owned: &self.owned,
                handing_over: &self.handing_over,
                quorum_flagged: &self.quorum_flagged,
                peers: &self.peers,
            })
        }

        /// The segments the map gives to `node` in this view.
        fn of(&self, node: &str) -> BTreeSet<String> {
            desired(node, &self.view, &self.segments)
        }

        /// A segment of node-a's and one of another member's.
        fn mine_and_theirs(&self) -> (String, String) {
            let mine = self
                .of("node-a")
                .into_iter()
                .next()
                .expect("node-a owns one");
            let theirs = self
                .of("node-b")
                .into_iter()
                .next()
                .expect("node-b owns one");
            (mine, theirs)
        }
    }

    fn seen(epoch: u64, driving: &[&str]) -> PeerSeen {
        PeerSeen {
            heard: Duration::ZERO,
            epoch,
            driving: driving.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn set(items: &[&String]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_map_shares_every_segment_out() {
        let w = World::new();
        let all: BTreeSet<String> = NODES.iter().flat_map(|n| w.of(n)).collect();
        assert_eq!(all, w.segments);
        assert!(NODES.iter().all(|n| !w.of(n).is_empty()));
    }

    #[test]
    fn a_handed_back_segment_is_adopted_while_driving() {
        let w = World::new();
        let a = w.plan();
        assert_eq!(
            a.adopt.iter().cloned().collect::<BTreeSet<_>>(),
            w.of("node-a")
        );
        assert!(a.release.is_empty() && a.handovers.is_empty());
    }

    #[test]
    fn nothing_is_adopted_without_a_driving_lease() {
        for lease in [LeaseState::ChargeOnly, LeaseState::Stopped] {
            let mut w = World::new();
            w.lease = lease;
            assert!(w.plan().adopt.is_empty(), "{lease:?}");
        }
        let mut w = World::new();
        w.lapsed = true;
        assert!(w.plan().adopt.is_empty());
    }

    #[test]
    fn a_segment_another_member_still_announces_waits() {
        let mut w = World::new();
        let (mine, _) = w.mine_and_theirs();
        w.peers.insert("node-c".into(), seen(5, &[&mine]));
        let a = w.plan();
        assert!(!a.adopt.contains(&mine));
        assert_eq!(a.adopt.len(), w.of("node-a").len() - 1);
    }

    #[test]
    fn a_member_not_heard_or_behind_blocks_every_adoption() {
        let mut w = World::new();
        w.peers.remove("node-c");
        assert!(w.plan().adopt.is_empty(), "node-c never heard");
        let mut w = World::new();
        w.peers.insert("node-c".into(), seen(4, &[]));
        assert!(w.plan().adopt.is_empty(), "node-c on an older view");
    }

    #[test]
    fn a_peer_on_a_newer_view_blocks_every_adoption() {
        let mut w = World::new();
        w.peers.insert("node-b".into(), seen(6, &[]));
        assert!(w.plan().adopt.is_empty());
    }

    #[test]
    fn a_non_member_peer_does_not_need_to_hand_back() {
        let mut w = World::new();
        w.view.members.remove("node-c");
        w.view.epoch = 7;
        w.peers.insert("node-b".into(), seen(7, &[]));
        // node-c is out of the view: its old heartbeat, even one announcing every segment,
        // decides nothing (its lease ended before the leader removed it).
        let all: Vec<&str> = w.segments.iter().map(String::as_str).collect();
        w.peers.insert("node-c".into(), seen(5, &all));
        let a = w.plan();
        assert_eq!(
            a.adopt.iter().cloned().collect::<BTreeSet<_>>(),
            w.of("node-a")
        );
        w.peers.remove("node-c");
        assert_eq!(w.plan().adopt, a.adopt);
    }

    #[test]
    fn a_segment_the_map_moved_is_released_and_handed_over() {
        let mut w = World::new();
        let (mine, theirs) = w.mine_and_theirs();
        w.owned = set(&[&mine, &theirs]);
        let a = w.plan();
        assert_eq!(
            a.release,
            vec![Release {
                segment: theirs.clone(),
                reason: ReleaseReason::Moved,
                hand_over: true,
            }]
        );
        assert_eq!(
            a.handovers,
            vec![Handover {
                segment: theirs.clone(),
                copy_to: Some("node-b".into()),
            }]
        );
        assert!(!a.adopt.contains(&theirs));
    }

    #[test]
    fn a_stopped_lease_releases_everything_without_a_handover() {
        let mut w = World::new();
        let (mine, theirs) = w.mine_and_theirs();
        w.owned = set(&[&mine, &theirs]);
        w.handing_over = set(&[&theirs]);
        w.lease = LeaseState::Stopped;
        let a = w.plan();
        let reasons: BTreeMap<_, _> = a.release.iter().map(|r| (&r.segment, r)).collect();
        assert_eq!(reasons[&mine].reason, ReleaseReason::LeaseEnded);
        assert_eq!(reasons[&theirs].reason, ReleaseReason::Moved);
        assert!(a.release.iter().all(|r| !r.hand_over));
        // The pending handover ends without a copy: nobody is promised anything any more.
        assert_eq!(
            a.handovers,
            vec![Handover {
                segment: theirs,
                copy_to: None
            }]
        );
        assert!(a.adopt.is_empty() && a.quorum_lost.is_empty());
    }

    #[test]
    fn a_lapsed_lease_releases_every_held_segment() {
        let mut w = World::new();
        let (mine, _) = w.mine_and_theirs();
        w.owned = set(&[&mine]);
        w.lapsed = true;
        let a = w.plan();
        assert_eq!(a.release.len(), 1);
        assert_eq!(a.release[0].reason, ReleaseReason::Lapsed);
        assert!(!a.release[0].hand_over);
        assert!(a.adopt.is_empty());
    }

    #[test]
    fn an_ageing_lease_puts_driven_segments_in_charge_only_once() {
        let mut w = World::new();
        let mine: Vec<String> = w.of("node-a").into_iter().take(2).collect();
        w.owned = mine.iter().cloned().collect();
        w.quorum_flagged = set(&[&mine[0]]);
        w.lease = LeaseState::ChargeOnly;
        let a = w.plan();
        assert_eq!(a.quorum_lost, vec![mine[1].clone()]);
        assert!(a.quorum_back.is_empty() && a.release.is_empty() && a.adopt.is_empty());
    }

    #[test]
    fn a_confirmed_lease_clears_the_charge_only() {
        let mut w = World::new();
        let mine: Vec<String> = w.of("node-a").into_iter().take(2).collect();
        w.owned = mine.iter().cloned().collect();
        w.quorum_flagged = set(&[&mine[1]]);
        let a = w.plan();
        assert_eq!(a.quorum_back, vec![mine[1].clone()]);
        assert!(a.quorum_lost.is_empty() && a.release.is_empty());
    }

    #[test]
    fn a_node_out_of_the_view_releases_all_and_copies_nothing() {
        let mut w = World::new();
        let (mine, theirs) = w.mine_and_theirs();
        w.owned = set(&[&mine]);
        w.handing_over = set(&[&theirs]);
        w.view.members.remove("node-a");
        let a = w.plan();
        assert_eq!(a.release.len(), 1);
        assert_eq!(a.release[0].reason, ReleaseReason::Moved);
        assert!(
            a.release[0].hand_over,
            "the lease runs: announced until handed over"
        );
        assert!(a.handovers.iter().all(|h| h.copy_to.is_none()));
        assert!(a.adopt.is_empty());
    }

    #[test]
    fn a_handover_back_to_this_node_ends_and_the_segment_is_adopted() {
        let mut w = World::new();
        let (mine, _) = w.mine_and_theirs();
        w.handing_over = set(&[&mine]);
        let a = w.plan();
        assert_eq!(
            a.handovers,
            vec![Handover {
                segment: mine.clone(),
                copy_to: None
            }]
        );
        assert!(a.adopt.contains(&mine));
    }

    #[test]
    fn a_segment_still_handed_over_elsewhere_is_not_adopted() {
        let mut w = World::new();
        let (_, theirs) = w.mine_and_theirs();
        w.handing_over = set(&[&theirs]);
        let a = w.plan();
        assert_eq!(a.handovers[0].copy_to.as_deref(), Some("node-b"));
        assert!(!a.adopt.contains(&theirs));
    }
}
