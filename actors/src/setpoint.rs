//! Idempotent, absolute, leased setpoints.
//!
//! A setpoint is an absolute power target in kW (negative = discharge), never a delta, so
//! applying one twice can never double energy: the second application asks the device for
//! the same thing again. Every setpoint carries a [`SetpointKey`] — the dispatch id the node
//! allocated (increasing) and a revision within that dispatch — and keys are totally ordered,
//! dispatch first, then revision: a newer dispatch supersedes every revision of an older one.
//!
//! [`IdempotentApplier`] is the device adapter's memory of the last key it applied, and it
//! decides what an incoming key means ([`Decision`]):
//!
//! | incoming key vs the last applied | decision |
//! | --- | --- |
//! | none applied yet, or greater | [`Decision::Apply`]: clamp it locally, apply, [`record`](IdempotentApplier::record) |
//! | equal | [`Decision::Repeat`]: acknowledge with the first result, exactly, and do nothing |
//! | smaller | [`Decision::Stale`]: refuse, naming the latest key |
//!
//! Every setpoint holds a lease (`lease_until`, on the injected clock: time since the
//! clock's epoch). While the lease runs the applied value is in force; once it has run out
//! (`now >= lease_until`), or before anything was applied, the segment falls back to its safe
//! default ([`IdempotentApplier::effective_kw`]), as EVerest's energy manager falls back to
//! its failsafe limits when the controller stops renewing them. A repeat does not extend a
//! lease: the dispatcher renews a lease by sending a new revision.
//!
//! # Invariants
//!
//! - **At most one application per key, ever.** [`IdempotentApplier::record`] refuses a key
//!   that is not strictly greater than the last one, so the keys recorded form a strictly
//!   increasing sequence and no key can be recorded twice.
//! - **Across restarts** the invariant holds provided the applier (it is `Serialize`) is
//!   checkpointed durably *before* the acknowledgement is sent. A crash between the
//!   application and the checkpoint loses no acknowledged key: the dispatcher, never having
//!   been acknowledged, retries, and the retry re-applies the same absolute value — harmless
//!   because setpoints are absolute — and this time is acknowledged.
//! - **Repeats return the first result**: the [`Applied`] kept is the one recorded for that key,
//!   bit for bit.
//! - **No value that is not a number gets in.** Non-finite kW values are refused with
//!   [`SetpointError::NotFinite`] naming the key, and a deserialized applier is validated the
//!   same way.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The fallback used by [`IdempotentApplier::effective_kw`] when the caller's safe default is
/// itself not a number: when in doubt, no power.
pub const NON_FINITE_SAFE_DEFAULT_KW: f64 = 0.0;

/// The identity of a setpoint: the dispatch that issued it and its revision.
///
/// Ordered by dispatch, then revision. Dispatch ids are allocated increasing by the node, so
/// a newer dispatch supersedes every revision of an older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SetpointKey {
    /// The dispatch id, allocated increasing by the node.
    pub dispatch: u64,
    /// The revision within the dispatch.
    pub revision: u64,
}

impl SetpointKey {
    /// A key from its dispatch id and revision.
    pub const fn new(dispatch: u64, revision: u64) -> Self {
        SetpointKey { dispatch, revision }
    }
}

impl fmt::Display for SetpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}r{}", self.dispatch, self.revision)
    }
}

/// An absolute power target with its key and its lease.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setpoint {
    /// The setpoint's identity.
    pub key: SetpointKey,
    /// The absolute target, kW (negative = discharge).
    pub kw: f64,
    /// The lease: valid while `now < lease_until`, on the injectable clock (time since the
    /// clock's epoch).
    pub lease_until: Duration,
}

impl Setpoint {
    /// Check the setpoint: its kW must be a finite number.
    pub fn validate(&self) -> Result<(), SetpointError> {
        check_finite(self.key, "kw", self.kw)
    }
}

/// The result of applying one setpoint: what was asked and what was applied after the local
/// clamps (the safe-state ladder, device limits).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The key of the setpoint applied.
    pub key: SetpointKey,
    /// The kW the setpoint asked for.
    pub requested_kw: f64,
    /// The kW actually applied, after local clamps.
    pub applied_kw: f64,
    /// The setpoint's lease (time since the clock's epoch).
    pub lease_until: Duration,
}

impl Applied {
    /// Check the result: both kW values must be finite numbers.
    pub fn validate(&self) -> Result<(), SetpointError> {
        check_finite(self.key, "requested_kw", self.requested_kw)?;
        check_finite(self.key, "applied_kw", self.applied_kw)
    }
}

/// What an incoming key means, given the last key applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// The key is newer than anything applied: apply it, then [`IdempotentApplier::record`].
    Apply,
    /// The key was already applied: acknowledge with this, the first result, and do nothing.
    Repeat(Applied),
    /// The key is older than the last one applied: refuse it.
    Stale {
        /// The last key applied.
        latest: SetpointKey,
    },
}

/// What [`IdempotentApplier::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The setpoint was new and has been recorded with this result. Checkpoint the applier,
    /// then acknowledge.
    Fresh(Applied),
    /// The key was already applied; this is the first result. Acknowledge with it.
    Repeat(Applied),
    /// The key is older than the last one applied, which is `latest`. Refuse it.
    Stale {
        /// The last key applied.
        latest: SetpointKey,
    },
}

/// Whether a lease is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeaseState {
    /// The last setpoint's lease is running: its applied value is in force.
    Active,
    /// The last setpoint's lease has run out: the safe default is in force.
    Expired,
    /// Nothing has been applied yet: the safe default is in force.
    None,
}

/// Why a setpoint or a result was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetpointError {
    /// A kW value was NaN or infinite.
    #[error("setpoint {key}: {field} is not a finite number ({value})")]
    NotFinite {
        /// The setpoint's key.
        key: SetpointKey,
        /// Which value: `kw`, `requested_kw` or `applied_kw`.
        field: &'static str,
        /// The value refused.
        value: f64,
    },
    /// A result was recorded for a key that is not newer than the last one recorded.
    #[error("setpoint {key}: not newer than the last applied key {last}")]
    NotNewer {
        /// The key refused.
        key: SetpointKey,
        /// The last key recorded.
        last: SetpointKey,
    },
}

fn check_finite(key: SetpointKey, field: &'static str, value: f64) -> Result<(), SetpointError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(SetpointError::NotFinite { key, field, value })
    }
}

/// The serialized form of [`IdempotentApplier`], validated on the way in.
#[derive(Deserialize)]
struct ApplierState {
    last: Option<Applied>,
}

impl TryFrom<ApplierState> for IdempotentApplier {
    type Error = SetpointError;

    fn try_from(state: ApplierState) -> Result<Self, Self::Error> {
        IdempotentApplier::from_last(state.last)
    }
}

/// A device adapter's memory of the last setpoint it applied: decides repeats and stale keys,
/// and the power in force under the lease. This is what is checkpointed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "ApplierState")]
pub struct IdempotentApplier {
    last: Option<Applied>,
}

impl IdempotentApplier {
    /// An applier that has applied nothing.
    pub fn new() -> Self {
        IdempotentApplier { last: None }
    }

    /// An applier resumed from its checkpoint: the last result recorded, if any. A result
    /// with a non-finite kW value (a corrupt checkpoint) is refused.
    pub fn from_last(last: Option<Applied>) -> Result<Self, SetpointError> {
        if let Some(applied) = &last {
            applied.validate()?;
        }
        Ok(IdempotentApplier { last })
    }

    /// What `key` means: [`Decision::Apply`] if it is newer than the last key applied (or
    /// nothing was applied), [`Decision::Repeat`] with the first result if it is the last key,
    /// [`Decision::Stale`] if it is older.
    pub fn decide(&self, key: SetpointKey) -> Decision {
        match &self.last {
            None => Decision::Apply,
            Some(last) if key > last.key => Decision::Apply,
            Some(last) if key == last.key => Decision::Repeat(*last),
            Some(last) => Decision::Stale { latest: last.key },
        }
    }

    /// Record the result of applying a new key. Refuses a key that is not strictly newer
    /// than the last one recorded ([`SetpointError::NotNewer`]) and non-finite kW values
    /// ([`SetpointError::NotFinite`]); on refusal nothing changes.
    pub fn record(&mut self, applied: Applied) -> Result<(), SetpointError> {
        applied.validate()?;
        if let Some(last) = &self.last {
            if applied.key <= last.key {
                return Err(SetpointError::NotNewer {
                    key: applied.key,
                    last: last.key,
                });
            }
        }
        self.last = Some(applied);
        Ok(())
    }

    /// Decide and, for a new key, clamp and record in one step. `clamp` maps the requested kW
    /// to what may be applied locally (for example [`crate::ladder::SafeState::clamp`]); it is
    /// called only for a new key. A non-finite setpoint or clamp result is refused and nothing
    /// changes. After [`Outcome::Fresh`], checkpoint the applier before acknowledging.
    pub fn apply(
        &mut self,
        setpoint: &Setpoint,
        clamp: impl FnOnce(f64) -> f64,
    ) -> Result<Outcome, SetpointError> {
        match self.decide(setpoint.key) {
            Decision::Repeat(first) => Ok(Outcome::Repeat(first)),
            Decision::Stale { latest } => Ok(Outcome::Stale { latest }),
            Decision::Apply => {
                setpoint.validate()?;
                let applied = Applied {
                    key: setpoint.key,
                    requested_kw: setpoint.kw,
                    applied_kw: clamp(setpoint.kw),
                    lease_until: setpoint.lease_until,
                };
                self.record(applied)?;
                Ok(Outcome::Fresh(applied))
            }
        }
    }

    /// The last result recorded, if any.
    pub fn last(&self) -> Option<Applied> {
        self.last
    }

    /// The power in force at `now` (time since the clock's epoch): the last applied kW while
    /// its lease runs (`now < lease_until`), otherwise `safe_default_kw` (a safe default that
    /// is not a finite number is replaced by [`NON_FINITE_SAFE_DEFAULT_KW`]).
    pub fn effective_kw(&self, now: Duration, safe_default_kw: f64) -> (f64, LeaseState) {
        let safe = if safe_default_kw.is_finite() {
            safe_default_kw
        } else {
            NON_FINITE_SAFE_DEFAULT_KW
        };
        match &self.last {
            None => (safe, LeaseState::None),
            Some(last) if now < last.lease_until => (last.applied_kw, LeaseState::Active),
            Some(_) => (safe, LeaseState::Expired),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::ladder::SafeState;

    fn key(dispatch: u64, revision: u64) -> SetpointKey {
        SetpointKey::new(dispatch, revision)
    }

    fn setpoint(dispatch: u64, revision: u64, kw: f64, lease_s: u64) -> Setpoint {
        Setpoint {
            key: key(dispatch, revision),
            kw,
            lease_until: Duration::from_secs(lease_s),
        }
    }

    #[test]
    fn keys_order_by_dispatch_then_revision_and_display() {
        assert!(key(1, 9) < key(2, 0));
        assert!(key(2, 0) < key(2, 1));
        assert_eq!(key(3, 3), key(3, 3));
        assert_eq!(key(12, 4).to_string(), "d12r4");
    }

    #[test]
    fn new_repeat_and_stale() {
        let mut applier = IdempotentApplier::new();
        assert_eq!(applier.decide(key(1, 0)), Decision::Apply);
        let first = applier
            .apply(&setpoint(1, 1, -40.0, 100), |kw| {
                SafeState::Limited { cap_kw: 25.0 }.clamp(kw)
            })
            .unwrap();
        let Outcome::Fresh(applied) = first else {
            panic!("expected a fresh application, got {first:?}");
        };
        assert_eq!(applied.requested_kw, -40.0);
        assert_eq!(applied.applied_kw, -25.0);

        // The repeat carries a different value and lease: the first result is returned, and
        // the clamp is not called.
        let repeat = applier
            .apply(&setpoint(1, 1, 99.0, 500), |_| {
                panic!("clamp called for a repeat")
            })
            .unwrap();
        assert_eq!(repeat, Outcome::Repeat(applied));
        assert_eq!(applier.decide(key(1, 1)), Decision::Repeat(applied));

        assert_eq!(
            applier.apply(&setpoint(1, 0, 5.0, 100), |kw| kw).unwrap(),
            Outcome::Stale { latest: key(1, 1) }
        );
        assert_eq!(
            applier.decide(key(0, 7)),
            Decision::Stale { latest: key(1, 1) }
        );
        assert_eq!(applier.decide(key(2, 0)), Decision::Apply);
        assert_eq!(applier.last(), Some(applied));
    }

    #[test]
    fn record_refuses_old_and_equal_keys_and_changes_nothing() {
        let mut applier = IdempotentApplier::new();
        let a = Applied {
            key: key(5, 2),
            requested_kw: 10.0,
            applied_kw: 10.0,
            lease_until: Duration::from_secs(1),
        };
        applier.record(a).unwrap();
        for k in [key(5, 2), key(5, 1), key(4, 99)] {
            let err = applier.record(Applied { key: k, ..a }).unwrap_err();
            assert_eq!(
                err,
                SetpointError::NotNewer {
                    key: k,
                    last: key(5, 2)
                }
            );
        }
        assert_eq!(applier.last(), Some(a));
    }

    #[test]
    fn non_finite_values_are_refused_naming_the_key() {
        let mut applier = IdempotentApplier::new();
        let err = applier
            .apply(&setpoint(3, 4, f64::NAN, 10), |kw| kw)
            .unwrap_err();
        assert!(
            matches!(err, SetpointError::NotFinite { key: k, field: "kw", .. } if k == key(3, 4))
        );
        assert!(err.to_string().contains("d3r4"), "{err}");
        assert_eq!(applier.last(), None);

        let err = applier
            .apply(&setpoint(3, 5, 1.0, 10), |_| f64::INFINITY)
            .unwrap_err();
        assert!(matches!(
            err,
            SetpointError::NotFinite {
                field: "applied_kw",
                ..
            }
        ));
        assert_eq!(applier.last(), None);

        let bad = Applied {
            key: key(1, 1),
            requested_kw: f64::NEG_INFINITY,
            applied_kw: 0.0,
            lease_until: Duration::ZERO,
        };
        assert!(matches!(
            applier.record(bad),
            Err(SetpointError::NotFinite {
                field: "requested_kw",
                ..
            })
        ));
        assert!(IdempotentApplier::from_last(Some(bad)).is_err());
    }

    #[test]
    fn lease_falls_back_to_the_safe_default() {
        let mut applier = IdempotentApplier::new();
        assert_eq!(
            applier.effective_kw(Duration::from_secs(0), 3.0),
            (3.0, LeaseState::None)
        );
        applier.apply(&setpoint(1, 0, -20.0, 60), |kw| kw).unwrap();
        assert_eq!(
            applier.effective_kw(Duration::from_secs(59), 0.0),
            (-20.0, LeaseState::Active)
        );
        // The lease is half-open: at `lease_until` it has run out.
        assert_eq!(
            applier.effective_kw(Duration::from_secs(60), 0.0),
            (0.0, LeaseState::Expired)
        );
        assert_eq!(
            applier.effective_kw(Duration::from_secs(600), 7.5),
            (7.5, LeaseState::Expired)
        );
        assert_eq!(
            applier.effective_kw(Duration::from_secs(600), f64::NAN),
            (NON_FINITE_SAFE_DEFAULT_KW, LeaseState::Expired)
        );
        // A repeat does not renew the lease.
        applier
            .apply(&setpoint(1, 0, -20.0, 6_000), |kw| kw)
            .unwrap();
        assert_eq!(
            applier.effective_kw(Duration::from_secs(61), 0.0).1,
            LeaseState::Expired
        );
    }

    #[test]
    fn checkpoint_round_trip_and_corrupt_checkpoint_is_refused() {
        let mut applier = IdempotentApplier::new();
        applier
            .apply(&setpoint(9, 2, 11.5, 30), |kw| kw * 0.5)
            .unwrap();
        let bytes = rmp_serde::to_vec_named(&applier).unwrap();
        let back: IdempotentApplier = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, applier);

        let empty = rmp_serde::to_vec_named(&IdempotentApplier::new()).unwrap();
        let back: IdempotentApplier = rmp_serde::from_slice(&empty).unwrap();
        assert_eq!(back.last(), None);

        // A checkpoint holding a NaN (written by something else) does not deserialize.
        let json = r#"{"last":{"key":{"dispatch":1,"revision":2},"requested_kw":1.0,
            "applied_kw":1.0,"lease_until":{"secs":1,"nanos":0}}}"#;
        let ok: IdempotentApplier = serde_json::from_str(json).unwrap();
        assert_eq!(ok.last().unwrap().key, key(1, 2));
        let mut corrupt = ok.clone();
        corrupt.last = Some(Applied {
            applied_kw: f64::NAN,
            ..ok.last().unwrap()
        });
        let bytes = rmp_serde::to_vec_named(&corrupt).unwrap();
        let err = rmp_serde::from_slice::<IdempotentApplier>(&bytes).unwrap_err();
        assert!(err.to_string().contains("d1r2"), "{err}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A setpoint arrives.
        Send {
            dispatch: u64,
            revision: u64,
            kw: f64,
        },
        /// The adapter restarts from its checkpoint.
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u64..4, 0u64..4, -100.0f64..100.0)
                .prop_map(|(dispatch, revision, kw)| Op::Send { dispatch, revision, kw }),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #[test]
        fn each_key_applies_at_most_once_and_repeats_return_the_first_result(
            ops in proptest::collection::vec(op(), 1..120),
            cap in 0.0f64..80.0,
        ) {
            let clamp = SafeState::Limited { cap_kw: cap };
            let mut applier = IdempotentApplier::new();
            let mut first: BTreeMap<SetpointKey, Applied> = BTreeMap::new();
            let mut applied_keys: Vec<SetpointKey> = Vec::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Restart => {
                        // Checkpoint, crash, resume.
                        let bytes = rmp_serde::to_vec_named(&applier).unwrap();
                        applier = rmp_serde::from_slice(&bytes).unwrap();
                    }
                    Op::Send { dispatch, revision, kw } => {
                        let sp = setpoint(dispatch, revision, kw, step as u64);
                        let before = applier.last().map(|a| a.key);
                        match applier.apply(&sp, |kw| clamp.clamp(kw)).unwrap() {
                            Outcome::Fresh(a) => {
                                prop_assert!(!first.contains_key(&sp.key), "{} applied twice", sp.key);
                                prop_assert!(before.is_none_or(|b| b < sp.key));
                                prop_assert_eq!(a.key, sp.key);
                                prop_assert_eq!(a.requested_kw, kw);
                                prop_assert!(a.applied_kw.abs() <= cap);
                                first.insert(sp.key, a);
                                applied_keys.push(sp.key);
                            }
                            Outcome::Repeat(a) => {
                                prop_assert_eq!(Some(&a), first.get(&sp.key));
                                prop_assert_eq!(before, Some(sp.key));
                            }
                            Outcome::Stale { latest } => {
                                prop_assert_eq!(Some(latest), before);
                                prop_assert!(sp.key < latest);
                            }
                        }
                    }
                }
            }
            prop_assert!(applied_keys.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(applied_keys.len(), first.len());
        }

        #[test]
        fn record_accepts_exactly_the_strictly_increasing_keys(
            keys in proptest::collection::vec((0u64..5, 0u64..5), 1..60),
        ) {
            let mut applier = IdempotentApplier::new();
            let mut last: Option<SetpointKey> = None;
            for (d, r) in keys {
                let k = key(d, r);
                let result = applier.record(Applied {
                    key: k,
                    requested_kw: 1.0,
                    applied_kw: 1.0,
                    lease_until: Duration::ZERO,
                });
                let newer = last.is_none_or(|l| k > l);
                prop_assert_eq!(result.is_ok(), newer);
                if newer {
                    last = Some(k);
                }
                prop_assert_eq!(applier.last().map(|a| a.key), last);
            }
        }
    }
}
