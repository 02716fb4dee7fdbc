//! Faults a simulated charge point can be told to show at run time, for chaos runs.
//!
//! Invariants: every delay a fault carries is bounded by [`MAX_FAULT_DELAY`] (checked by
//! [`Fault::check`], so a typo cannot park a charger for a day); a malformed payload is only
//! ever produced here, by [`bad_meter_values`], and only on request.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// Longest `Drop` absence or `Slow` delay accepted.
pub const MAX_FAULT_DELAY: Duration = Duration::from_secs(3600);

/// A state of charge this far out of range is what [`BadValue::OutOfRange`] reports (%).
pub const OUT_OF_RANGE_SOC_PERCENT: f64 = 250.0;

/// What the charge point does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Behaves.
    #[default]
    None,
    /// Closes its socket and stays away for the given time, then reconnects and boots again.
    Drop(Duration),
    /// Stops answering the CSMS's CALLs (holds them) and stops sending; the socket stays open
    /// and WebSocket pings are still answered, as with a hung application.
    Hang,
    /// Answers every CSMS CALL with a CALLERROR (`GenericError`).
    Reject,
    /// Sends one bad MeterValues, then behaves again.
    BadValue(BadValue),
    /// Delays every CALL it sends and every answer it gives by this much.
    Slow(Duration),
    /// Never answers TriggerMessage (holds the latest one), answers everything else: a
    /// station whose firmware ignores the optional message.
    IgnoreTrigger,
}

/// The kind of bad value [`Fault::BadValue`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadValue {
    /// A sampled value that is a string, not a number: schema-invalid, the CSMS must answer
    /// with a CALLERROR naming the field.
    Malformed,
    /// A schema-valid SoC of [`OUT_OF_RANGE_SOC_PERCENT`]: only a plausibility check catches
    /// it.
    OutOfRange,
}

/// A fault that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault delay {0:?} exceeds the limit of {MAX_FAULT_DELAY:?}")]
pub struct FaultError(pub Duration);

impl Fault {
    /// Checks the fault's bounds.
    pub fn check(self) -> Result<Fault, FaultError> {
        match self {
            Fault::Drop(d) | Fault::Slow(d) if d > MAX_FAULT_DELAY => Err(FaultError(d)),
            f => Ok(f),
        }
    }

    /// The delay to add before sending or answering.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Fault::Slow(d) => Some(d),
            _ => None,
        }
    }
}

/// The raw MeterValues payload a [`Fault::BadValue`] sends on `evse_id` at `timestamp`.
pub fn bad_meter_values(kind: BadValue, evse_id: i32, timestamp: &str) -> Map<String, Value> {
    let value = match kind {
        BadValue::Malformed => json!("not-a-number"),
        BadValue::OutOfRange => json!(OUT_OF_RANGE_SOC_PERCENT),
    };
    let payload = json!({
        "evseId": evse_id,
        "meterValue": [{
            "timestamp": timestamp,
            "sampledValue": [{
                "value": value,
                "measurand": "SoC",
                "unitOfMeasure": {"unit": "Percent"}
            }]
        }]
    });
    match payload {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_bounded() {
        assert!(Fault::Slow(Duration::from_secs(1)).check().is_ok());
        assert_eq!(
            Fault::Drop(Duration::from_secs(7200)).check(),
            Err(FaultError(Duration::from_secs(7200)))
        );
    }

    #[test]
    fn malformed_is_a_string() {
        let p = bad_meter_values(BadValue::Malformed, 1, "2027-01-01T00:00:00Z");
        assert!(p["meterValue"][0]["sampledValue"][0]["value"].is_string());
    }
}
