//! Grid setpoints as charging profiles: a pure mapping from a dispatch to a
//! SetChargingProfile request.
//!
//! Invariants:
//! - the output depends only on the input (no clock, no randomness, no process state): the
//!   same [`Setpoint`] gives byte-identical JSON, so re-sending after a restart changes nothing
//!   on the charger;
//! - the profile id depends only on the dispatch id (FNV-1a, a stable hash, into
//!   [`PROFILE_ID_BASE`]..): a new revision of a dispatch replaces the charger's profile for the
//!   previous revision (OCPP replaces a profile with the same id) instead of stacking on it;
//! - every dispatch profile uses purpose `TxDefaultProfile` at [`DISPATCH_STACK_LEVEL`], so at
//!   most one dispatch profile is in force per EVSE;
//! - power is written in whole watts; positive charges, negative discharges. Discharge is only
//!   expressible in OCPP 2.1 (`setpoint` < 0 with `operationMode` `CentralSetpoint` and a
//!   matching `dischargeLimit`); asking it of a 2.0.1 charger is an error, never a silent 0.

use std::time::SystemTime;

use serde_json::Map;

use super::messages::{
    ChargingProfile, ChargingProfileKind, ChargingProfilePurpose, ChargingRateUnit,
    ChargingSchedule, ChargingSchedulePeriod, DateTime, DateTimeOutOfRange, OperationMode,
    SetChargingProfileRequest,
};
use super::OcppVersion;

/// First profile id used for dispatch profiles; ids below it are left to other uses.
pub const PROFILE_ID_BASE: i32 = 1_000_000_000;

/// Number of distinct dispatch profile ids (`PROFILE_ID_BASE + SPAN - 1` fits an i32).
pub const PROFILE_ID_SPAN: u32 = 1_000_000_000;

/// Stack level of every dispatch profile (above a station's own defaults at 0).
pub const DISPATCH_STACK_LEVEL: i32 = 8;

/// Largest magnitude accepted, in kW (100 MW: far above any charger, catches unit mistakes).
pub const MAX_SETPOINT_KW: f64 = 100_000.0;

/// One dispatch instruction for one EVSE. Take every field from the dispatch record (never
/// from the current time), or resends will differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Setpoint<'a> {
    /// The dispatch's id, stable across restarts.
    pub dispatch_id: &'a str,
    /// The dispatch's revision (a new revision replaces the previous one).
    pub revision: u32,
    /// Active power in kW: positive charges the vehicle, negative discharges it.
    pub power_kw: f64,
    /// When the setpoint starts to apply.
    pub valid_from: SystemTime,
    /// When it stops applying; the charger drops the profile afterwards.
    pub valid_until: SystemTime,
    /// The EVSE (≥ 1; 0 would address the whole station).
    pub evse_id: i32,
}

/// Why a setpoint cannot be expressed as a charging profile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetpointError {
    /// The power is NaN, infinite or beyond [`MAX_SETPOINT_KW`].
    #[error("power {0} kW is not a finite value within ±{MAX_SETPOINT_KW} kW")]
    InvalidPower(f64),
    /// Discharge was asked of an OCPP 2.0.1 charger, which has no way to express it.
    #[error("discharge ({0} kW) needs OCPP 2.1; the charger speaks 2.0.1")]
    DischargeNeedsV21(f64),
    /// `valid_until` is not after `valid_from`.
    #[error("validity window is empty or reversed")]
    EmptyWindow,
    /// The window is longer than an OCPP integer number of seconds.
    #[error("validity window of {0} s exceeds the OCPP integer range")]
    WindowTooLong(u64),
    /// A time is outside what an OCPP date-time can express.
    #[error(transparent)]
    Time(#[from] DateTimeOutOfRange),
    /// The revision does not fit an OCPP integer.
    #[error("revision {0} exceeds the OCPP integer range")]
    RevisionTooLarge(u32),
    /// The EVSE id is not ≥ 1.
    #[error("EVSE id {0} must be at least 1")]
    InvalidEvse(i32),
}

/// The profile id of a dispatch: FNV-1a (32-bit) of its id, folded into the reserved range.
pub fn profile_id(dispatch_id: &str) -> i32 {
    const FNV_OFFSET: u32 = 0x811c_9dc5;
    const FNV_PRIME: u32 = 0x0100_0193;
    let hash = dispatch_id.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(FNV_PRIME)
    });
    // hash % SPAN < 1e9, so the sum stays below i32::MAX.
    PROFILE_ID_BASE + (hash % PROFILE_ID_SPAN) as i32
}

/// Maps a setpoint to the SetChargingProfile request for a charger speaking `version`.
pub fn setpoint_profile(
    version: OcppVersion,
    sp: &Setpoint<'_>,
) -> Result<SetChargingProfileRequest, SetpointError> {
    if !sp.power_kw.is_finite() || sp.power_kw.abs() > MAX_SETPOINT_KW {
        return Err(SetpointError::InvalidPower(sp.power_kw));
    }
    if sp.evse_id < 1 {
        return Err(SetpointError::InvalidEvse(sp.evse_id));
    }
    let window = sp
        .valid_until
        .duration_since(sp.valid_from)
        .map_err(|_| SetpointError::EmptyWindow)?
        .as_secs();
    if window == 0 {
        return Err(SetpointError::EmptyWindow);
    }
    let duration = i32::try_from(window).map_err(|_| SetpointError::WindowTooLong(window))?;
    let schedule_id =
        i32::try_from(sp.revision).map_err(|_| SetpointError::RevisionTooLarge(sp.revision))?;
    // Whole watts; `+ 0.0` turns -0.0 into 0.0 so zero always serialises the same way.
    let watts = (sp.power_kw * 1000.0).round() + 0.0;
    let period = match version {
        OcppVersion::V201 => {
            if watts < 0.0 {
                return Err(SetpointError::DischargeNeedsV21(sp.power_kw));
            }
            ChargingSchedulePeriod {
                start_period: 0,
                limit: Some(watts),
                ..Default::default()
            }
        }
        OcppVersion::V21 => ChargingSchedulePeriod {
            start_period: 0,
            limit: Some(watts.max(0.0)),
            discharge_limit: Some(watts.min(0.0)),
            setpoint: Some(watts),
            operation_mode: Some(OperationMode::CentralSetpoint),
            ..Default::default()
        },
    };
    let valid_from = DateTime::from_system_time(sp.valid_from)?;
    Ok(SetChargingProfileRequest {
        evse_id: sp.evse_id,
        charging_profile: ChargingProfile {
            id: profile_id(sp.dispatch_id),
            stack_level: DISPATCH_STACK_LEVEL,
            charging_profile_purpose: ChargingProfilePurpose::TxDefaultProfile,
            charging_profile_kind: ChargingProfileKind::Absolute,
            recurrency_kind: None,
            valid_from: Some(valid_from.clone()),
            valid_to: Some(DateTime::from_system_time(sp.valid_until)?),
            transaction_id: None,
            max_offline_duration: None,
            invalid_after_offline_duration: None,
            dyn_update_interval: None,
            dyn_update_time: None,
            price_schedule_signature: None,
            charging_schedule: vec![ChargingSchedule {
                id: schedule_id,
                start_schedule: Some(valid_from),
                duration: Some(duration),
                charging_rate_unit: ChargingRateUnit::W,
                min_charging_rate: None,
                power_tolerance: None,
                limit_at_soc: None,
                signature_id: None,
                digest_value: None,
                use_local_time: None,
                randomized_delay: None,
                charging_schedule_period: vec![period],
                extra: Map::new(),
            }],
            extra: Map::new(),
        },
        extra: Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocpp::messages::Action;
    use crate::ocpp::schema::{validate, PayloadKind};
    use std::time::{Duration, UNIX_EPOCH};

    fn sp(dispatch_id: &str, revision: u32, power_kw: f64) -> Setpoint<'_> {
        let from = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Setpoint {
            dispatch_id,
            revision,
            power_kw,
            valid_from: from,
            valid_until: from + Duration::from_secs(900),
            evse_id: 1,
        }
    }

    fn json(v: OcppVersion, s: &Setpoint<'_>) -> String {
        serde_json::to_string(&setpoint_profile(v, s).unwrap()).unwrap()
    }

    #[test]
    fn same_key_gives_byte_identical_json() {
        for v in OcppVersion::PREFERENCE {
            let a = json(v, &sp("dispatch-42", 3, 7.4));
            let b = json(v, &sp(&String::from("dispatch-42"), 3, 7.4));
            assert_eq!(a, b);
        }
        // Golden bytes; the profile id is FNV-1a-32("d") = 0xe10c2473, checked independently.
        assert_eq!(
            json(OcppVersion::V21, &sp("d", 1, -11.0)),
            r#"{"evseId":1,"chargingProfile":{"id":1775669363,"stackLevel":8,"chargingProfilePurpose":"TxDefaultProfile","chargingProfileKind":"Absolute","validFrom":"2027-01-15T08:00:00Z","validTo":"2027-01-15T08:15:00Z","chargingSchedule":[{"id":1,"startSchedule":"2027-01-15T08:00:00Z","duration":900,"chargingRateUnit":"W","chargingSchedulePeriod":[{"startPeriod":0,"limit":0.0,"dischargeLimit":-11000.0,"setpoint":-11000.0,"operationMode":"CentralSetpoint"}]}]}}"#
        );
    }

    #[test]
    fn revisions_replace_and_dispatches_differ() {
        let r1 = setpoint_profile(OcppVersion::V21, &sp("d-1", 1, 5.0)).unwrap();
        let r2 = setpoint_profile(OcppVersion::V21, &sp("d-1", 2, 6.0)).unwrap();
        let other = setpoint_profile(OcppVersion::V21, &sp("d-2", 1, 5.0)).unwrap();
        assert_eq!(r1.charging_profile.id, r2.charging_profile.id);
        assert_ne!(r1, r2);
        assert_ne!(r1.charging_profile.id, other.charging_profile.id);
        assert_eq!(
            r1.charging_profile.stack_level,
            r2.charging_profile.stack_level
        );
    }

    #[test]
    fn outputs_are_schema_valid() {
        for (v, kw) in [
            (OcppVersion::V201, 7.4),
            (OcppVersion::V21, 7.4),
            (OcppVersion::V21, -50.0),
            (OcppVersion::V21, -0.0),
        ] {
            let req = setpoint_profile(v, &sp("x", 9, kw)).unwrap();
            let value = serde_json::to_value(&req).unwrap();
            validate(v, Action::SetChargingProfile, PayloadKind::Request, &value).unwrap();
        }
    }

    #[test]
    fn refuses_what_cannot_be_expressed() {
        assert_eq!(
            setpoint_profile(OcppVersion::V201, &sp("x", 1, -3.0)),
            Err(SetpointError::DischargeNeedsV21(-3.0))
        );
        assert!(matches!(
            setpoint_profile(OcppVersion::V21, &sp("x", 1, f64::NAN)),
            Err(SetpointError::InvalidPower(_))
        ));
        let mut s = sp("x", 1, 1.0);
        s.valid_until = s.valid_from;
        assert_eq!(
            setpoint_profile(OcppVersion::V21, &s),
            Err(SetpointError::EmptyWindow)
        );
        assert!(matches!(
            setpoint_profile(OcppVersion::V21, &sp("x", u32::MAX, 1.0)),
            Err(SetpointError::RevisionTooLarge(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn profile_ids_stay_in_range(id in ".*") {
            let p = profile_id(&id);
            proptest::prop_assert!(p >= PROFILE_ID_BASE);
        }
    }
}
