//! Majority leases: when a node may drive its segments, and when another may take them over.
//!
//! A node's lease covers the segments the shard map gives it. Three parts, each a pure state
//! machine with time as an argument (each node's own monotonic clock; clocks are never
//! compared across nodes):
//!
//! - [`Holder`] (the owner): sends heartbeat rounds; a round acknowledged by a majority
//!   (itself included) confirms the lease from the round's *send* time. The holder is
//!   [`LeaseState::Driving`] while its newest confirmation is younger than
//!   [`LeaseConfig::charge_only_after`], then [`LeaseState::ChargeOnly`] until the lease ends
//!   ([`LeaseConfig::lease`] shortened by the drift bound), then [`LeaseState::Stopped`].
//! - [`Grantor`] (every node, for every other): acknowledging a heartbeat promises not to let
//!   anyone else take the holder's segments until the ack time plus the lease *lengthened* by
//!   the drift bound. Once a grantor has voted to release a holder it never acknowledges that
//!   holder again (until the committed membership re-admits it, [`Grantor::readmit`]).
//! - [`Takeover`] (the new owner): collects release votes; a node may drive another's segments
//!   only with votes from a majority, its own included.
//!
//! Why two nodes never drive one segment: the holder's confirming majority and the taker's
//! releasing majority share a node P. P acknowledged the confirming round after it was sent
//! and released the holder only after that promise ran out, so in real time the release comes
//! at least `lease` after the round was sent, while the holder stops driving at most `lease`
//! after it sent the round (its clock runs at most `max_drift_ppm` fast, P's at most that
//! slow). A round that P did not acknowledge because it had released the holder cannot count
//! in a confirming majority with P. `tests/lease_sim.rs` checks this against random delays,
//! losses, partitions and clock rates.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A node of the cluster, by its index in the committed member list.
pub type NodeId = u32;

/// Most heartbeat rounds a holder keeps waiting for acknowledgements (older ones are
/// forgotten: their acknowledgements could only confirm an older time anyway).
pub const MAX_OPEN_ROUNDS: usize = 64;
/// Largest drift bound accepted, ppm (10 %: beyond that no clock is a clock).
pub const MAX_DRIFT_PPM: u32 = 100_000;

/// The lease timing of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseConfig {
    /// How long a confirmation lets the holder keep its segments.
    pub lease: Duration,
    /// After this long without a new confirmation the holder puts its segments in ChargeOnly.
    pub charge_only_after: Duration,
    /// Bound on how far any two clocks' rates may differ from true time, parts per million.
    pub max_drift_ppm: u32,
}

/// A lease configuration that cannot be safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    /// ChargeOnly must come before the lease ends.
    #[error(
        "charge_only_after ({charge_only_after:?}) must be shorter than the lease ({lease:?})"
    )]
    ChargeOnlyAfterLease {
        /// The value given.
        charge_only_after: Duration,
        /// The lease.
        lease: Duration,
    },
    /// The drift bound is out of range.
    #[error("max_drift_ppm {0} exceeds {MAX_DRIFT_PPM}")]
    Drift(u32),
    /// A zero lease.
    #[error("the lease must be longer than zero")]
    ZeroLease,
}

impl LeaseConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.lease.is_zero() {
            return Err(LeaseConfigError::ZeroLease);
        }
        if self.max_drift_ppm > MAX_DRIFT_PPM {
            return Err(LeaseConfigError::Drift(self.max_drift_ppm));
        }
        if self.charge_only_after >= self.holder_lease() {
            return Err(LeaseConfigError::ChargeOnlyAfterLease {
                charge_only_after: self.charge_only_after,
                lease: self.lease,
            });
        }
        Ok(())
    }

    /// The lease as the holder counts it: shortened, in case its clock is slow.
    pub fn holder_lease(&self) -> Duration {
        self.lease
            .mul_f64(1.0 - f64::from(self.max_drift_ppm) / 1e6)
    }

    /// A promise as a grantor counts it: lengthened, in case its clock is fast.
    pub fn grantor_promise(&self) -> Duration {
        self.lease
            .mul_f64(1.0 + f64::from(self.max_drift_ppm) / 1e6)
    }
}

/// What a holder may do with its segments now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    /// A majority confirmed it recently: drive normally.
    Driving,
    /// The confirmation is getting old (a partition?): charge only, never discharge.
    ChargeOnly,
    /// No valid lease: drive nothing.
    Stopped,
}

fn majority(cluster: usize) -> usize {
    cluster / 2 + 1
}

#[derive(Debug, Clone)]
struct Round {
    id: u64,
    sent_at: Duration,
    acks: BTreeSet<NodeId>,
}

/// The owner's side of its lease.
#[derive(Debug, Clone)]
pub struct Holder {
    me: NodeId,
    cluster: usize,
    config: LeaseConfig,
    rounds: VecDeque<Round>,
    next_round: u64,
    confirmed_at: Option<Duration>,
}

impl Holder {
    /// The holder `me` in a cluster of `cluster` voting members, with no lease yet.
    pub fn new(
        me: NodeId,
        cluster: usize,
        config: LeaseConfig,
    ) -> Result<Holder, LeaseConfigError> {
        config.validate()?;
        Ok(Holder {
            me,
            cluster: cluster.max(1),
            config,
            rounds: VecDeque::new(),
            next_round: 1,
            confirmed_at: None,
        })
    }

    /// Start a heartbeat round now; send its id to every other member.
    pub fn heartbeat(&mut self, now: Duration) -> u64 {
        let id = self.next_round;
        self.next_round += 1;
        let mut acks = BTreeSet::new();
        acks.insert(self.me);
        self.rounds.push_back(Round {
            id,
            sent_at: now,
            acks,
        });
        while self.rounds.len() > MAX_OPEN_ROUNDS {
            self.rounds.pop_front();
        }
        // A cluster of one confirms itself.
        self.settle();
        id
    }

    /// `from` acknowledged round `round`.
    pub fn on_ack(&mut self, from: NodeId, round: u64) {
        if let Some(r) = self.rounds.iter_mut().find(|r| r.id == round) {
            r.acks.insert(from);
        }
        self.settle();
    }

    fn settle(&mut self) {
        let need = majority(self.cluster);
        let newest = self
            .rounds
            .iter()
            .filter(|r| r.acks.len() >= need)
            .map(|r| r.sent_at)
            .max();
        if let Some(t) = newest {
            if self.confirmed_at.is_none_or(|c| t > c) {
                self.confirmed_at = Some(t);
            }
            // Rounds up to the confirmed one can confirm nothing newer.
            self.rounds.retain(|r| r.sent_at > t);
        }
    }

    /// When the newest majority-confirmed round was sent (None: never).
    pub fn confirmed_at(&self) -> Option<Duration> {
        self.confirmed_at
    }

    /// When the lease ends on this node's clock (None: no lease).
    pub fn lease_end(&self) -> Option<Duration> {
        self.confirmed_at.map(|c| c + self.config.holder_lease())
    }

    /// What the holder may do now.
    pub fn state(&self, now: Duration) -> LeaseState {
        let Some(c) = self.confirmed_at else {
            return LeaseState::Stopped;
        };
        let age = now.saturating_sub(c);
        if age < self.config.charge_only_after {
            LeaseState::Driving
        } else if age < self.config.holder_lease() {
            LeaseState::ChargeOnly
        } else {
            LeaseState::Stopped
        }
    }
}

/// One node's promises to the holders it acknowledged.
#[derive(Debug, Clone)]
pub struct Grantor {
    me: NodeId,
    config: LeaseConfig,
    promises: BTreeMap<NodeId, Duration>,
    released: BTreeSet<NodeId>,
}

impl Grantor {
    /// Node `me`'s grantor.
    pub fn new(me: NodeId, config: LeaseConfig) -> Result<Grantor, LeaseConfigError> {
        config.validate()?;
        Ok(Grantor {
            me,
            config,
            promises: BTreeMap::new(),
            released: BTreeSet::new(),
        })
    }

    /// A heartbeat from `holder`: true when it is acknowledged (send the ack), false when
    /// this node has released `holder` (it gets no ack, ever, until re-admitted).
    pub fn on_heartbeat(&mut self, holder: NodeId, now: Duration) -> bool {
        if holder == self.me || self.released.contains(&holder) {
            return false;
        }
        let until = now + self.config.grantor_promise();
        let p = self.promises.entry(holder).or_insert(until);
        if *p < until {
            *p = until;
        }
        true
    }

    /// Whether this node still promises `holder` its segments.
    pub fn promised(&self, holder: NodeId, now: Duration) -> bool {
        self.promises.get(&holder).is_some_and(|until| now < *until)
    }

    /// A taker asks to release `holder`: true (a vote) once no promise to it is left; from
    /// then on `holder` gets no acknowledgement from this node.
    ///
    /// A grantor's clock starts at zero when it starts, and it keeps no promises across a
    /// restart: until one promise's length has passed it assumes it may have promised
    /// everyone (an acknowledgement sent just before a crash still confirms a lease), so it
    /// votes for no release before [`LeaseConfig::grantor_promise`].
    pub fn release(&mut self, holder: NodeId, now: Duration) -> bool {
        if holder == self.me || now < self.config.grantor_promise() || self.promised(holder, now) {
            return false;
        }
        self.released.insert(holder);
        true
    }

    /// Whether this node has released `holder` (and so no longer acknowledges it).
    pub fn is_released(&self, holder: NodeId) -> bool {
        self.released.contains(&holder)
    }

    /// The committed membership took `holder` back (after a handoff through ChargeOnly).
    /// Only the release is forgotten: a promise still running (this grantor may never have
    /// released `holder`, and acknowledged it a moment ago) keeps binding.
    pub fn readmit(&mut self, holder: NodeId) {
        self.released.remove(&holder);
    }
}

/// A node collecting release votes to take over `from`'s segments.
#[derive(Debug, Clone)]
pub struct Takeover {
    from: NodeId,
    cluster: usize,
    votes: BTreeSet<NodeId>,
}

impl Takeover {
    /// Start taking over `from`'s segments in a cluster of `cluster` members.
    pub fn new(from: NodeId, cluster: usize) -> Takeover {
        Takeover {
            from,
            cluster: cluster.max(1),
            votes: BTreeSet::new(),
        }
    }

    /// The holder being taken over.
    pub fn from(&self) -> NodeId {
        self.from
    }

    /// `voter` released the holder (its own grantor's vote counts too). A vote from the
    /// holder itself is never counted.
    pub fn on_vote(&mut self, voter: NodeId) {
        if voter != self.from {
            self.votes.insert(voter);
        }
    }

    /// Whether a majority released the holder: the segments may be started here.
    pub fn granted(&self) -> bool {
        self.votes.len() >= majority(self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            lease: Duration::from_secs(3),
            charge_only_after: Duration::from_secs(1),
            max_drift_ppm: 10_000,
        }
    }

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn a_lease_needs_a_majority_and_ages_through_charge_only() {
        let mut h = Holder::new(0, 3, cfg()).unwrap();
        let r = h.heartbeat(ms(0));
        assert_eq!(
            h.state(ms(10)),
            LeaseState::Stopped,
            "itself is no majority of 3"
        );
        h.on_ack(1, r);
        assert_eq!(h.state(ms(10)), LeaseState::Driving);
        assert_eq!(h.state(ms(999)), LeaseState::Driving);
        assert_eq!(h.state(ms(1000)), LeaseState::ChargeOnly);
        assert_eq!(h.lease_end(), Some(ms(2970)));
        assert_eq!(h.state(ms(2969)), LeaseState::ChargeOnly);
        assert_eq!(h.state(ms(2970)), LeaseState::Stopped);
        // A late ack of an old round does not move the confirmation back.
        let r2 = h.heartbeat(ms(500));
        h.on_ack(2, r2);
        assert_eq!(h.confirmed_at(), Some(ms(500)));
        h.on_ack(2, r);
        assert_eq!(h.confirmed_at(), Some(ms(500)));
    }

    #[test]
    fn a_cluster_of_one_confirms_itself() {
        let mut h = Holder::new(0, 1, cfg()).unwrap();
        h.heartbeat(ms(0));
        assert_eq!(h.state(ms(1)), LeaseState::Driving);
    }

    #[test]
    fn a_release_waits_for_the_promise_and_then_refuses_the_holder() {
        let mut g = Grantor::new(1, cfg()).unwrap();
        assert!(
            !g.release(2, ms(3000)),
            "no release vote within a promise of the start"
        );
        assert!(g.on_heartbeat(0, ms(100)));
        assert!(!g.release(0, ms(3000)), "promised until 100 + 3030 ms");
        assert!(g.release(0, ms(3130)));
        assert!(
            !g.on_heartbeat(0, ms(3200)),
            "a released holder gets no ack"
        );
        g.readmit(0);
        assert!(g.on_heartbeat(0, ms(3300)));
    }

    #[test]
    fn a_takeover_needs_a_majority_without_the_holder() {
        let mut t = Takeover::new(0, 3);
        t.on_vote(0);
        t.on_vote(1);
        assert!(!t.granted());
        t.on_vote(2);
        assert!(t.granted());
    }

    #[test]
    fn unsafe_configurations_are_refused() {
        let mut c = cfg();
        c.charge_only_after = Duration::from_secs(3);
        assert!(matches!(
            c.validate(),
            Err(LeaseConfigError::ChargeOnlyAfterLease { .. })
        ));
        let mut c = cfg();
        c.max_drift_ppm = 200_000;
        assert_eq!(c.validate(), Err(LeaseConfigError::Drift(200_000)));
        let mut c = cfg();
        c.lease = Duration::ZERO;
        assert_eq!(c.validate(), Err(LeaseConfigError::ZeroLease));
    }
}
