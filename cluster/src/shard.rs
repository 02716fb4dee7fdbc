//! The shard map: which member owns each transformer segment, and which one holds its
//! checkpoint replica, by rendezvous (highest random weight) hashing.
//!
//! Each (member, segment) pair gets a weight from a fixed hash of both ids; a segment's owner
//! is the member with the highest weight, its replica the next. The hash is specified here
//! (FNV-1a 64 over the bytes, finished by SplitMix64's mixer), not taken from the standard
//! library, whose hashers may change between Rust releases or be seeded: every node, of every
//! build, must compute the same map from the same committed member list.
//!
//! Invariants (property-tested below):
//! - the map depends only on the *set* of members and the segment ids, not on their order;
//! - every segment has exactly one owner, a member; its replica is another member (none with
//!   one member);
//! - a member that leaves moves only the segments it owned; a member that joins takes only
//!   segments, never moves one between two old members.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous weight of `member` for `segment`.
pub fn weight(member: &str, segment: &str) -> u64 {
    // The two hashes are mixed asymmetrically so that (a, b) and (b, a) differ.
    mix(fnv1a64(member.as_bytes()) ^ mix(fnv1a64(segment.as_bytes()).rotate_left(17)))
}

/// Where one segment lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The member that drives it.
    pub owner: String,
    /// The member that holds its checkpoint replica (None with a single member).
    pub replica: Option<String>,
}

/// Segment id → placement.
pub type ShardMap = BTreeMap<String, Placement>;

/// Why a map cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// No member to place segments on.
    #[error("no members: {0} segments cannot be placed")]
    NoMembers(usize),
    /// The same member id twice (the committed list is a set).
    #[error("member {0:?} is listed twice")]
    DuplicateMember(String),
}

/// The placement of one segment among `members`.
pub fn place(members: &[String], segment: &str) -> Option<Placement> {
    let mut best: Option<(u64, &String)> = None;
    let mut second: Option<(u64, &String)> = None;
    for m in members {
        let w = (weight(m, segment), m);
        // Ties (astronomically rare) break by id, so the order of `members` never matters.
        if best.is_none_or(|b| w > b) {
            second = best;
            best = Some(w);
        } else if second.is_none_or(|s| w > s) {
            second = Some(w);
        }
    }
    best.map(|(_, owner)| Placement {
        owner: owner.clone(),
        replica: second.map(|(_, r)| r.clone()),
    })
}

/// The shard map of `segments` over `members`.
pub fn shard_map<'a>(
    members: &[String],
    segments: impl IntoIterator<Item = &'a str>,
) -> Result<ShardMap, ShardError> {
    let mut seen = std::collections::BTreeSet::new();
    for m in members {
        if !seen.insert(m) {
            return Err(ShardError::DuplicateMember(m.clone()));
        }
    }
    let segments: Vec<&str> = segments.into_iter().collect();
    if members.is_empty() {
        return Err(ShardError::NoMembers(segments.len()));
    }
    Ok(segments
        .into_iter()
        .filter_map(|s| place(members, s).map(|p| (s.to_owned(), p)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn known_weights_do_not_change() {
        // Pinned: a change here changes every cluster's shard map.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let map = shard_map(&ids("node-", 3), ["tx-1", "tx-2", "tx-3", "tx-4"]).unwrap();
        let owners: Vec<&str> = map.values().map(|p| p.owner.as_str()).collect();
        assert_eq!(owners.len(), 4);
        assert_eq!(
            map,
            shard_map(&ids("node-", 3), ["tx-1", "tx-2", "tx-3", "tx-4"]).unwrap()
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(shard_map(&[], ["tx-1"]), Err(ShardError::NoMembers(1)));
        let twice = vec!["a".to_owned(), "a".to_owned()];
        assert_eq!(
            shard_map(&twice, ["tx-1"]),
            Err(ShardError::DuplicateMember("a".into()))
        );
        let one = vec!["a".to_owned()];
        let map = shard_map(&one, ["tx-1"]).unwrap();
        assert_eq!(map["tx-1"].replica, None);
    }

    #[test]
    fn load_spreads_over_members() {
        let members = ids("node-", 3);
        let segments = ids("tx-", 3000);
        let map = shard_map(&members, segments.iter().map(String::as_str)).unwrap();
        for m in &members {
            let owned = map.values().filter(|p| &p.owner == m).count();
            // 1000 expected; a fair hash stays well within ±15 %.
            assert!((850..=1150).contains(&owned), "{m} owns {owned}");
        }
    }

    proptest! {
        #[test]
        fn order_does_not_matter_and_placements_are_sound(
            n in 1usize..8, segs in 1usize..64, rot in 0usize..8
        ) {
            let members = ids("m", n);
            let mut shuffled = members.clone();
            shuffled.rotate_left(rot % n);
            shuffled.reverse();
            let segments = ids("seg-", segs);
            let a = shard_map(&members, segments.iter().map(String::as_str)).unwrap();
            let b = shard_map(&shuffled, segments.iter().map(String::as_str)).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.len(), segs);
            for p in a.values() {
                prop_assert!(members.contains(&p.owner));
                match &p.replica {
                    None => prop_assert_eq!(n, 1),
                    Some(r) => {
                        prop_assert!(members.contains(r));
                        prop_assert_ne!(r, &p.owner);
                    }
                }
            }
        }

        #[test]
        fn a_leaving_member_moves_only_its_own_segments(
            n in 2usize..8, segs in 1usize..64, gone in 0usize..8
        ) {
            let members = ids("m", n);
            let gone = members[gone % n].clone();
            let rest: Vec<String> = members.iter().filter(|m| **m != gone).cloned().collect();
            let segments = ids("seg-", segs);
            let before = shard_map(&members, segments.iter().map(String::as_str)).unwrap();
            let after = shard_map(&rest, segments.iter().map(String::as_str)).unwrap();
            for (s, p) in &before {
                if p.owner != gone {
                    prop_assert_eq!(&after[s].owner, &p.owner, "{} moved", s);
                } else {
                    // Its new owner is the old replica: the checkpoint is already there.
                    prop_assert_eq!(Some(&after[s].owner), p.replica.as_ref());
                }
            }
        }

        #[test]
        fn a_joining_member_only_takes(n in 1usize..8, segs in 1usize..64) {
            let members = ids("m", n);
            let mut more = members.clone();
            more.push("newcomer".into());
            let segments = ids("seg-", segs);
            let before = shard_map(&members, segments.iter().map(String::as_str)).unwrap();
            let after = shard_map(&more, segments.iter().map(String::as_str)).unwrap();
            for (s, p) in &after {
                prop_assert!(p.owner == "newcomer" || p.owner == before[s].owner);
            }
        }
    }
}
