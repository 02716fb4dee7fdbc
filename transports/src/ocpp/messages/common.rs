//! Types shared by several payloads: date-times, EVSE and component addresses, id tokens,
//! meter values, status info.
//!
//! Invariant: [`DateTime::from_system_time`] always writes RFC 3339 UTC with a `Z` suffix and
//! whole seconds, so the same instant gives the same bytes (the setpoint mapping relies on it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::enums::*;

/// An OCPP `date-time` (RFC 3339) as written on the wire; the schemas check the format of
/// every one received.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DateTime(pub String);

/// A time that cannot be written as an OCPP date-time (before 1970 or after year 9999).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time {0:?} is outside 1970-01-01..=9999-12-31, not writable as an OCPP date-time")]
pub struct DateTimeOutOfRange(pub SystemTime);

/// Seconds from 1970-01-01 to 10000-01-01: the exclusive upper bound of 4-digit years.
const MAX_UNIX_SECONDS: u64 = 253_402_300_800;

impl DateTime {
    /// Formats `t` as `YYYY-MM-DDThh:mm:ssZ` (UTC, sub-seconds dropped).
    pub fn from_system_time(t: SystemTime) -> Result<DateTime, DateTimeOutOfRange> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| DateTimeOutOfRange(t))?
            .as_secs();
        if secs >= MAX_UNIX_SECONDS {
            return Err(DateTimeOutOfRange(t));
        }
        Ok(DateTime::from_unix_seconds_unchecked(secs))
    }

    /// The current time.
    pub fn now() -> DateTime {
        // The clock is after 1970 and before 10000 on any machine this runs on; if not, fall
        // back to the epoch rather than panic.
        DateTime::from_system_time(SystemTime::now())
            .unwrap_or_else(|_| DateTime::from_unix_seconds_unchecked(0))
    }

    /// The time `secs` seconds after the epoch (must be below [`MAX_UNIX_SECONDS`]).
    fn from_unix_seconds_unchecked(secs: u64) -> DateTime {
        let t = i64::try_from(secs)
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        DateTime(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ))
    }

    /// `t` plus `d`, for building validity windows.
    pub fn after(t: SystemTime, d: Duration) -> Result<DateTime, DateTimeOutOfRange> {
        let later = t.checked_add(d).ok_or(DateTimeOutOfRange(t))?;
        DateTime::from_system_time(later)
    }

    /// The wire text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// OCPP `StatusInfoType`: why a request was answered the way it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusInfo {
    /// A predefined reason code (at most 20 characters).
    pub reason_code: String,
    /// Free text (at most 1024 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_info: Option<String>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `EVSEType`: an EVSE, optionally one of its connectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evse {
    /// EVSE id (0 = the whole station where allowed).
    pub id: i32,
    /// Connector id on that EVSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<i32>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An OCPP date-time that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("date-time {0:?} is not RFC 3339 (YYYY-MM-DDThh:mm:ss[.frac](Z|±hh:mm)) after 1970")]
pub struct TimeError(pub String);

/// Parses an OCPP (RFC 3339) date-time into a [`SystemTime`]; a date that does not exist
/// (2025-02-31), an hour past 23 or a time before 1970 is an error.
pub fn parse_date_time(t: &DateTime) -> Result<SystemTime, TimeError> {
    let s = t.as_str();
    let err = || TimeError(s.chars().take(64).collect());
    let parsed = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| err())?;
    let since_epoch = parsed - time::OffsetDateTime::UNIX_EPOCH;
    let since_epoch = Duration::try_from(since_epoch).map_err(|_| err())?;
    Ok(UNIX_EPOCH + since_epoch)
}

/// OCPP `ComponentType`: a component of the device model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// Component name, e.g. `SmartChargingCtrlr`.
    pub name: String,
    /// Instance name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The EVSE the component belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse: Option<Evse>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `VariableType`: a variable of a component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variable {
    /// Variable name, e.g. `Enabled`.
    pub name: String,
    /// Instance name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `AdditionalInfoType`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalInfo {
    /// The additional identifier.
    pub additional_id_token: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `IdTokenType`: an identifier (RFID uid, eMAID, ...) presented for authorisation.
/// `type` is an enumeration in 2.0.1 and a free string in 2.1; the schema checks which.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdToken {
    /// The identifier.
    pub id_token: String,
    /// Its type, e.g. `ISO14443`, `eMAID`, `Central`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Further identifiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_info: Option<Vec<AdditionalInfo>>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `MessageContentType`: a message to display.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageContent {
    /// Format of `content`.
    pub format: MessageFormat,
    /// Language code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The message.
    pub content: String,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `IdTokenInfoType`: the CSMS's verdict on an id token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdTokenInfo {
    /// Whether the token is accepted.
    pub status: AuthorizationStatus,
    /// Until when the station may cache the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_expiry_date_time: Option<DateTime>,
    /// Priority of the token for charging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_priority: Option<i32>,
    /// Preferred language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language1: Option<String>,
    /// EVSEs the token is valid on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse_id: Option<Vec<i32>>,
    /// Group the token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id_token: Option<IdToken>,
    /// Second language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language2: Option<String>,
    /// Message to show the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal_message: Option<MessageContent>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `UnitOfMeasureType`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitOfMeasure {
    /// Unit, e.g. `Wh`, `W`, `A`, `V`, `Percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Power-of-ten multiplier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<i32>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `SampledValueType`: one measured value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SampledValue {
    /// The value (in `unit_of_measure`, default Wh for energy).
    pub value: f64,
    /// What was measured (default `Energy.Active.Import.Register`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurand: Option<Measurand>,
    /// Why it was sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ReadingContext>,
    /// Phase measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Where it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Unit and multiplier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_of_measure: Option<UnitOfMeasure>,
    /// Unmodelled fields (`signedMeterValue`, `customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `MeterValueType`: sampled values taken at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterValue {
    /// When the values were sampled.
    pub timestamp: DateTime,
    /// The values (at least one).
    pub sampled_value: Vec<SampledValue>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let t = |s| {
            DateTime::from_system_time(UNIX_EPOCH + Duration::from_secs(s))
                .unwrap()
                .0
        };
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(t(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(t(MAX_UNIX_SECONDS - 1), "9999-12-31T23:59:59Z");
        assert!(
            DateTime::from_system_time(UNIX_EPOCH + Duration::from_secs(MAX_UNIX_SECONDS)).is_err()
        );
    }

    #[test]
    fn reads_rfc_3339_and_refuses_what_is_not_a_date() {
        let at = |s: &str| parse_date_time(&DateTime(s.to_owned()));
        let secs = |s: &str| at(s).unwrap().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(
            secs("2023-11-14T22:13:20Z"),
            Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            secs("2023-11-14T23:13:20+01:00"),
            Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            secs("2023-11-14T22:13:20.25Z"),
            Duration::from_millis(1_700_000_000_250)
        );
        for bad in [
            "2025-02-31T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:00:00",
            "1969-12-31T23:59:59Z",
            "yesterday",
        ] {
            let e = at(bad).unwrap_err();
            assert_eq!(e.0, bad, "{bad}: the error names the text");
        }
    }
}
