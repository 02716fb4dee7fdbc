//! The charging profiles a simulated charge point holds, and the pure decision of what power
//! they allow at a given (simulated) time.
//!
//! What is modelled: `Absolute` and `Relative` profiles in W, one or more periods, the 2.1
//! `setpoint` (negative = discharge), `limit` and `dischargeLimit`, `validFrom` / `validTo`
//! (the lease: after `validTo` a profile no longer applies and the charger falls back to its
//! default or offline limit), and 2.1's `maxOfflineDuration` / `invalidAfterOfflineDuration`.
//! Profiles in A, `Recurring` and `Dynamic` ones are refused with a typed reason.
//!
//! Invariants:
//! - profiles are keyed by id: installing a profile with an existing id replaces it, and
//!   installing an identical one changes nothing ([`ProfileSet::install`] says which);
//! - among the profiles in force, the highest stack level wins (then the highest id, so the
//!   choice is deterministic);
//! - [`ProfileSet::command`] depends only on its inputs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use gridvisor_transports::ocpp::messages::{
    ChargingProfile, ChargingProfileKind, ChargingProfilePurpose, ChargingRateUnit,
};

/// Most profiles one charge point holds (further distinct ids are refused).
pub const MAX_PROFILES: usize = 16;

/// Why a profile was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// Only W schedules are simulated.
    #[error("schedule {schedule} is in A; the simulator only applies W")]
    UnitNotSupported {
        /// Schedule id.
        schedule: i32,
    },
    /// Only Absolute and Relative profiles are simulated.
    #[error("profile kind {0:?} is not simulated")]
    KindNotSupported(ChargingProfileKind),
    /// The profile has no schedule or a schedule without periods.
    #[error("profile {0} has no schedule period")]
    NoPeriod(i32),
    /// A date-time could not be read.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// [`MAX_PROFILES`] are installed already.
    #[error("{MAX_PROFILES} profiles installed already")]
    TooMany,
}

pub use gridvisor_transports::ocpp::messages::{parse_date_time, TimeError};

/// What a profile asks of the charger at one instant, in kW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// Follow this power (2.1 `setpoint`; negative = discharge), within the limits.
    Setpoint {
        /// Target, kW.
        kw: f64,
        /// Charge ceiling, kW (≥ 0).
        charge_limit_kw: f64,
        /// Discharge ceiling as a magnitude, kW (≥ 0).
        discharge_limit_kw: f64,
    },
    /// Charge as fast as the vehicle allows, up to this ceiling, kW (`limit`).
    Limit {
        /// Charge ceiling, kW (≥ 0).
        charge_limit_kw: f64,
    },
}

/// A profile as installed: the request's profile plus its resolved times.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledProfile {
    /// The EVSE it was set on (0 = station).
    pub evse_id: i32,
    /// The profile exactly as received.
    pub profile: ChargingProfile,
    valid_from: Option<SystemTime>,
    valid_to: Option<SystemTime>,
    start: SystemTime,
}

impl InstalledProfile {
    /// Checks that the profile can be simulated and resolves its times; a `Relative` profile
    /// starts at `now` (the simulated install time).
    pub fn new(
        evse_id: i32,
        profile: ChargingProfile,
        now: SystemTime,
    ) -> Result<InstalledProfile, ProfileError> {
        if !matches!(
            profile.charging_profile_kind,
            ChargingProfileKind::Absolute | ChargingProfileKind::Relative
        ) {
            return Err(ProfileError::KindNotSupported(
                profile.charging_profile_kind,
            ));
        }
        let schedule = profile
            .charging_schedule
            .first()
            .filter(|s| !s.charging_schedule_period.is_empty())
            .ok_or(ProfileError::NoPeriod(profile.id))?;
        if schedule.charging_rate_unit != ChargingRateUnit::W {
            return Err(ProfileError::UnitNotSupported {
                schedule: schedule.id,
            });
        }
        let start = match (&profile.charging_profile_kind, &schedule.start_schedule) {
            (ChargingProfileKind::Absolute, Some(t)) => parse_date_time(t)?,
            _ => now,
        };
        let valid_from = profile
            .valid_from
            .as_ref()
            .map(parse_date_time)
            .transpose()?;
        let valid_to = profile.valid_to.as_ref().map(parse_date_time).transpose()?;
        Ok(InstalledProfile {
            evse_id,
            profile,
            valid_from,
            valid_to,
            start,
        })
    }

    /// When the profile's lease ends (`validTo`), if it has one.
    pub fn valid_to(&self) -> Option<SystemTime> {
        self.valid_to
    }

    /// Whether the profile is in force at `now` (inside validFrom..validTo and, offline for
    /// `offline_for`, not past its 2.1 `maxOfflineDuration`).
    pub fn in_force(&self, now: SystemTime, offline_for: Option<Duration>) -> bool {
        if self.valid_from.is_some_and(|f| now < f) || self.valid_to.is_some_and(|t| now >= t) {
            return false;
        }
        match (offline_for, self.profile.max_offline_duration) {
            (Some(off), Some(max)) => off.as_secs() <= u64::try_from(max).unwrap_or(0),
            _ => true,
        }
    }

    /// The command of the period in force at `now` (`None` before the schedule starts or
    /// after its duration).
    pub fn command_at(&self, now: SystemTime) -> Option<Command> {
        let schedule = self.profile.charging_schedule.first()?;
        let elapsed = now.duration_since(self.start).ok()?.as_secs();
        if let Some(d) = schedule.duration {
            if elapsed >= u64::try_from(d).unwrap_or(0) {
                return None;
            }
        }
        let period = schedule
            .charging_schedule_period
            .iter()
            .filter(|p| u64::try_from(p.start_period).is_ok_and(|s| s <= elapsed))
            .max_by_key(|p| p.start_period)?;
        let charge_limit_kw = period.limit.map_or(f64::INFINITY, |w| w.max(0.0) / 1000.0);
        let discharge_limit_kw = period
            .discharge_limit
            .map_or(0.0, |w| (-w).max(0.0) / 1000.0);
        Some(match period.setpoint {
            Some(w) => Command::Setpoint {
                kw: w / 1000.0,
                charge_limit_kw,
                discharge_limit_kw,
            },
            None => Command::Limit { charge_limit_kw },
        })
    }
}

/// The profiles installed on one charge point, keyed by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileSet {
    profiles: BTreeMap<i32, InstalledProfile>,
}

/// What [`ProfileSet::install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// A new id.
    New,
    /// An existing id, with different content.
    Replaced,
    /// An identical profile was already installed: nothing changed.
    Unchanged,
}

impl ProfileSet {
    /// Installs a profile. As OCPP 2.x K01.FR.05 requires, it replaces the profile with the
    /// same id, and any profile with the same stack level and purpose on the same EVSE.
    pub fn install(&mut self, p: InstalledProfile) -> Result<Installed, ProfileError> {
        let id = p.profile.id;
        if let Some(old) = self.profiles.get(&id) {
            if old.evse_id == p.evse_id && old.profile == p.profile {
                return Ok(Installed::Unchanged);
            }
        }
        let before = self.profiles.len();
        self.profiles.retain(|other_id, o| {
            *other_id == id
                || !(o.evse_id == p.evse_id
                    && o.profile.stack_level == p.profile.stack_level
                    && o.profile.charging_profile_purpose == p.profile.charging_profile_purpose)
        });
        let displaced = self.profiles.len() < before;
        match self.profiles.get(&id) {
            Some(_) => {
                self.profiles.insert(id, p);
                Ok(Installed::Replaced)
            }
            None if displaced => {
                self.profiles.insert(id, p);
                Ok(Installed::Replaced)
            }
            None if self.profiles.len() >= MAX_PROFILES => Err(ProfileError::TooMany),
            None => {
                self.profiles.insert(id, p);
                Ok(Installed::New)
            }
        }
    }

    /// Removes profiles by id or by criteria (all given criteria must match); returns how
    /// many were removed.
    pub fn clear(
        &mut self,
        id: Option<i32>,
        evse_id: Option<i32>,
        stack_level: Option<i32>,
        purpose: Option<ChargingProfilePurpose>,
    ) -> usize {
        let before = self.profiles.len();
        self.profiles.retain(|pid, p| {
            let hit = id.is_none_or(|i| i == *pid)
                && evse_id.is_none_or(|e| e == p.evse_id)
                && stack_level.is_none_or(|s| s == p.profile.stack_level)
                && purpose.is_none_or(|x| x == p.profile.charging_profile_purpose);
            !hit
        });
        before - self.profiles.len()
    }

    /// Drops the profiles that 2.1 says become invalid after `offline_for` offline
    /// (`invalidAfterOfflineDuration` with `maxOfflineDuration` exceeded).
    pub fn drop_invalid_after_offline(&mut self, offline_for: Duration) {
        self.profiles.retain(|_, p| {
            let expired = p
                .profile
                .max_offline_duration
                .is_some_and(|m| offline_for.as_secs() > u64::try_from(m).unwrap_or(0));
            !(expired && p.profile.invalid_after_offline_duration == Some(true))
        });
    }

    /// The profile in force with the highest stack level (then the highest id).
    pub fn active(
        &self,
        now: SystemTime,
        offline_for: Option<Duration>,
    ) -> Option<&InstalledProfile> {
        self.profiles
            .values()
            .filter(|p| p.in_force(now, offline_for) && p.command_at(now).is_some())
            .max_by_key(|p| (p.profile.stack_level, p.profile.id))
    }

    /// The command of the active profile, if any.
    pub fn command(&self, now: SystemTime, offline_for: Option<Duration>) -> Option<Command> {
        self.active(now, offline_for)?.command_at(now)
    }

    /// Every installed profile, by id.
    pub fn iter(&self) -> impl Iterator<Item = &InstalledProfile> {
        self.profiles.values()
    }

    /// Number of installed profiles.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether none is installed.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridvisor_transports::ocpp::messages::DateTime;
    use gridvisor_transports::ocpp::setpoint::{setpoint_profile, Setpoint};
    use gridvisor_transports::ocpp::OcppVersion;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parses_rfc3339() {
        for (text, secs) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2027-01-15T08:00:00Z", 1_800_000_000),
            ("2027-01-15T09:00:00+01:00", 1_800_000_000),
            ("2027-01-15T08:00:00.250Z", 1_800_000_000),
        ] {
            let t = parse_date_time(&DateTime(text.to_owned())).unwrap();
            assert_eq!(
                t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
                secs,
                "{text}"
            );
        }
        for bad in [
            "",
            "2027-13-01T00:00:00Z",
            "2027-01-15 08:00",
            "1969-12-31T23:59:59Z",
            "2027-01-15T08:00:00",
        ] {
            assert!(parse_date_time(&DateTime(bad.to_owned())).is_err(), "{bad}");
        }
    }

    #[test]
    fn dispatch_profile_is_a_lease() {
        let sp = Setpoint {
            dispatch_id: "d",
            revision: 1,
            power_kw: -7.0,
            valid_from: at(1000),
            valid_until: at(1900),
            evse_id: 1,
        };
        let req = setpoint_profile(OcppVersion::V21, &sp).unwrap();
        let p = InstalledProfile::new(1, req.charging_profile.clone(), at(1000)).unwrap();
        let mut set = ProfileSet::default();
        assert_eq!(set.install(p.clone()).unwrap(), Installed::New);
        assert_eq!(set.install(p).unwrap(), Installed::Unchanged);
        assert_eq!(set.command(at(999), None), None);
        assert_eq!(
            set.command(at(1500), None),
            Some(Command::Setpoint {
                kw: -7.0,
                charge_limit_kw: 0.0,
                discharge_limit_kw: 7.0
            })
        );
        assert_eq!(set.command(at(1900), None), None);
        assert_eq!(
            set.clear(Some(req.charging_profile.id), None, None, None),
            1
        );
        assert!(set.is_empty());
    }

    #[test]
    fn a_profile_replaces_the_one_at_its_stack_level_and_purpose() {
        let sp = |dispatch_id, kw| Setpoint {
            dispatch_id,
            revision: 0,
            power_kw: kw,
            valid_from: at(1000),
            valid_until: at(1900),
            evse_id: 1,
        };
        let install = |set: &mut ProfileSet, s: &Setpoint<'_>| {
            let req = setpoint_profile(OcppVersion::V21, s).unwrap();
            set.install(InstalledProfile::new(1, req.charging_profile, at(1000)).unwrap())
                .unwrap()
        };
        let mut set = ProfileSet::default();
        assert_eq!(install(&mut set, &sp("d1", 3.0)), Installed::New);
        // Another dispatch: another profile id, the same stack level and purpose (K01.FR.05).
        assert_eq!(install(&mut set, &sp("d2", 5.0)), Installed::Replaced);
        assert_eq!(set.len(), 1);
        assert!(matches!(
            set.command(at(1500), None),
            Some(Command::Setpoint { kw, .. }) if kw == 5.0
        ));
    }

    #[test]
    fn offline_durations() {
        let sp = Setpoint {
            dispatch_id: "d",
            revision: 1,
            power_kw: 5.0,
            valid_from: at(0),
            valid_until: at(10_000),
            evse_id: 1,
        };
        let mut profile = setpoint_profile(OcppVersion::V21, &sp)
            .unwrap()
            .charging_profile;
        profile.max_offline_duration = Some(60);
        profile.invalid_after_offline_duration = Some(true);
        let mut set = ProfileSet::default();
        set.install(InstalledProfile::new(1, profile, at(0)).unwrap())
            .unwrap();
        assert!(set.command(at(10), Some(Duration::from_secs(60))).is_some());
        assert!(set.command(at(10), Some(Duration::from_secs(61))).is_none());
        set.drop_invalid_after_offline(Duration::from_secs(61));
        assert!(set.is_empty());
    }
}
