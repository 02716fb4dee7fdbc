//! Inverters and meters without SunSpec, described by a plain register profile
//! (`gridvisor_transports::modbus::profile`): [`ProfileInverter`] ([`InverterIo`]) and
//! [`ProfileMeter`] ([`MeterIo`]).
//!
//! A device's `modbus` endpoint names the profile, a TOML file of points:
//! `modbus = { addr = "127.0.0.1:1502", unit = 1, profile = "devices/battery.toml" }`. The path
//! is used as written (a relative path is relative to the node's working directory). `load`
//! reads and checks the file at once, so a wrong profile stops the node at start with an
//! error that names the file and what is wrong; the device itself is connected lazily, like
//! the SunSpec adapters of [`super::modbus`]: a device that is down is
//! [`DeviceError::Unreachable`] until it answers.
//!
//! # Point names
//!
//! The adapters find their values by the points' names. A profile without a required point is
//! refused by `new` and `load`, naming the point; points with other names are allowed (and
//! ignored). A point with one of these names whose `unit` is given must have the unit shown
//! (compared without regard to case), so that a profile in W is not read as kW.
//!
//! Inverter ([`ProfileInverter`]):
//!
//! | point | | unit | meaning |
//! |---|---|---|---|
//! | [`ACTIVE_POWER`] | required | kW | active power, **positive when the device exports** (injects into the grid, discharges its battery), as SunSpec's `W` |
//! | [`TEMPERATURE`] | optional | °C (`C`, `degC`, `Cel`) | the core temperature. Absent: readings report [`INVERTER_TEMPERATURE_UNKNOWN_C`], and the ladder cannot derate this device for temperature |
//! | [`SETPOINT`] | optional, writable | kW | an active power setpoint, positive exporting, as [`ACTIVE_POWER`] |
//! | [`DISCHARGE_LIMIT`] | optional, writable | kW | the most the device may export, ≥ 0; its bounds must allow 0 |
//!
//! At most one of [`SETPOINT`] and [`DISCHARGE_LIMIT`] (the control point), and it must be
//! `writable = true`. With neither, the device is read only: every write is refused with
//! `DeviceError::Refused`, and the reading's setpoint is the measured power (as the SunSpec
//! inverter does when no setpoint is enabled), so that the actors' read-before-write starts
//! from what the device does.
//!
//! Meter ([`ProfileMeter`]), all required:
//!
//! | point | unit | meaning |
//! |---|---|---|
//! | [`ACTIVE_POWER`] | kW | active power, **positive when the site imports** from the grid (a meter's usual sign, and the actors') |
//! | [`VOLTAGE`] | V | the voltage, divided by the configured nominal voltage for per unit; 0 is passed on (a dead grid) |
//! | [`FREQUENCY`] | Hz | the frequency |
//!
//! # Sign conventions
//!
//! The actors' convention ([`crate::device`]): kW positive into the battery (charging), negative
//! out of it (discharging, exporting). So for an inverter `power_kw = -active_power`, and:
//!
//! - with [`SETPOINT`], a write of `kw` writes `-kw`, and the reading's `setpoint_kw` is
//!   `-setpoint`;
//! - with [`DISCHARGE_LIMIT`], a write of `kw < 0` (discharge) writes the limit `-kw`, a write
//!   of `kw ≥ 0` (charge or idle: such a device cannot be told to charge) writes 0, and the
//!   reading's `setpoint_kw` is `-limit` (so after a write of +5 kW the reading says 0: what
//!   the device holds, not what was asked).
//!
//! A meter's [`ACTIVE_POWER`] is the actors' convention already: `power_kw = active_power`.
//!
//! # Reads and writes
//!
//! One Modbus request per point (the profile's `read`), on one [`ModbusClient`] per device with
//! the SunSpec adapters' settings ([`super::modbus::client_config`]: a request time-out of
//! [`super::modbus::REQUEST_TIMEOUT`], back-off, a bound on requests in flight). A whole read
//! has [`READ_TIMEOUT`], a whole write (the write and the reading that follows it)
//! [`WRITE_TIMEOUT`]. A write range-checks the value against the control point's `min`/`max`
//! and register type, and against ±the inverter's rating, before anything is sent, writes the
//! point, then reads the device back and returns that reading. Nothing is clamped here: the
//! actors clamp before they write.
//!
//! # Errors
//!
//! | what happened | [`DeviceError`] |
//! |---|---|
//! | no connection, a time-out (per request, or [`READ_TIMEOUT`] / [`WRITE_TIMEOUT`] in all), closed by the device, an answer that does not fit, back-off, too many requests in flight | `Unreachable` |
//! | a Modbus exception | `Refused`, naming the exception, the request and the point |
//! | a setpoint outside the control point's bounds (or what its register holds) | `Refused`, naming the point and its bounds |
//! | a setpoint outside ±the rating, not a number, or no control point | `Refused` |
//! | a value that does not decode or is outside the point's `min`/`max`, a negative discharge limit | `BadValue`, naming the point |
//!
//! The `now` argument of the traits is not used: a real device has its own clock.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use gridvisor_transports::modbus::profile::{PointSpec, RegisterProfile};
use gridvisor_transports::modbus::{EncodeError, ModbusClient, ModbusError};

use crate::config::ModbusEndpoint;
use crate::device::{DeviceError, InverterIo, InverterReading, MeterIo, MeterReading};

use super::modbus::client_config;

/// The active power point (inverter and meter; see the module's table for its sign).
pub const ACTIVE_POWER: &str = "active_power";
/// An inverter's core temperature point, °C (optional).
pub const TEMPERATURE: &str = "temperature";
/// An inverter's writable active power setpoint, kW, positive exporting.
pub const SETPOINT: &str = "setpoint";
/// An inverter's writable discharge (export) limit, kW ≥ 0.
pub const DISCHARGE_LIMIT: &str = "discharge_limit";
/// A meter's voltage point, V.
pub const VOLTAGE: &str = "voltage";
/// A meter's frequency point, Hz.
pub const FREQUENCY: &str = "frequency";

/// The core temperature an inverter without a [`TEMPERATURE`] point reports, °C: a mild
/// ambient, well below the ladder's derating (65 °C), and finite (the ladder treats a
/// temperature that is not a number as unsafe).
pub const INVERTER_TEMPERATURE_UNKNOWN_C: f64 = 25.0;

/// Time allowed for one whole read (one request per point); past it the device is
/// [`DeviceError::Unreachable`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one whole write: the write, then the reading that is returned.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The units accepted for a point with a given role (compared without regard to case).
const KW: &[&str] = &["kW"];
const CELSIUS: &[&str] = &["°C", "C", "degC", "Cel"];
const VOLTS: &[&str] = &["V"];
const HERTZ: &[&str] = &["Hz"];

/// Why an operation failed, before it is told as a [`DeviceError`] of a device.
#[derive(Debug)]
enum Failure {
    /// The device could not be talked to (the cause, for the log).
    Unreachable(String),
    /// The device, or this adapter before sending, refused.
    Refused(String),
    /// A value that is not usable.
    Bad { field: &'static str, value: String },
}

impl Failure {
    /// A failed request about `point` (`writing`: `value` is what was to be written).
    fn modbus(point: &'static str, e: ModbusError) -> Self {
        match e {
            ModbusError::Timeout { .. }
            | ModbusError::Io { .. }
            | ModbusError::Protocol { .. }
            | ModbusError::Backoff { .. }
            | ModbusError::Disconnected { .. }
            | ModbusError::Busy { .. } => Failure::Unreachable(e.to_string()),
            ModbusError::Exception { op, code, .. } => {
                Failure::Refused(format!("the device answered {code} to {op} ({point})"))
            }
            // The profile was checked, so this is not expected; it is still the point's fault.
            ModbusError::InvalidRequest(detail) => Failure::Bad {
                field: point,
                value: detail,
            },
            ModbusError::Decode(e) => Failure::Bad {
                field: point,
                value: e.to_string(),
            },
            ModbusError::Encode(e) => Failure::Refused(e.to_string()),
        }
    }

    fn into_device_error(self, device: &str) -> DeviceError {
        let device = device.to_owned();
        match self {
            Failure::Unreachable(_) => DeviceError::Unreachable { device },
            Failure::Refused(reason) => DeviceError::Refused { device, reason },
            Failure::Bad { field, value } => DeviceError::BadValue {
                device,
                field,
                value,
            },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(cause) => write!(f, "unreachable: {cause}"),
            Failure::Refused(reason) => write!(f, "refused: {reason}"),
            Failure::Bad { field, value } => write!(f, "bad value of {field}: {value}"),
        }
    }
}

/// `-x` without a negative zero.
fn flip(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        -x
    }
}

/// Reads and parses a profile file; errors name the file.
fn read_profile_file(path: &Path) -> Result<RegisterProfile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("register profile {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("register profile {}: {e}", path.display()))
}

/// The profile file of `endpoint`, read and parsed; errors name the device and the file.
fn load_profile(
    kind: &str,
    id: &str,
    endpoint: &ModbusEndpoint,
) -> Result<RegisterProfile, String> {
    let path = endpoint.profile.as_deref().ok_or_else(|| {
        format!("{kind} {id}: its modbus endpoint names no register profile (`profile = \"...\"`)")
    })?;
    read_profile_file(path).map_err(|e| format!("{kind} {id}: {e}"))
}

/// Checks a point's unit against the accepted ones (a point without a unit passes).
fn check_unit(p: &PointSpec, accepted: &[&str]) -> Result<(), String> {
    match &p.unit {
        Some(u) if !accepted.iter().any(|a| a.eq_ignore_ascii_case(u.trim())) => Err(format!(
            "point {:?} has unit {u:?}; it must be in {}",
            p.name,
            accepted.join(" or ")
        )),
        _ => Ok(()),
    }
}

/// A required point, its unit checked.
fn required<'p>(
    profile: &'p RegisterProfile,
    name: &'static str,
    units: &[&str],
    what: &str,
) -> Result<&'p PointSpec, String> {
    let p = profile
        .point(name)
        .ok_or_else(|| format!("the register profile has no point {name:?} ({what})"))?;
    check_unit(p, units)?;
    Ok(p)
}

/// An optional point, its unit checked.
fn optional<'p>(
    profile: &'p RegisterProfile,
    name: &'static str,
    units: &[&str],
) -> Result<Option<&'p PointSpec>, String> {
    profile
        .point(name)
        .map(|p| check_unit(p, units).map(|()| p))
        .transpose()
}

/// One device's connection and profile.
#[derive(Debug)]
struct Link {
    id: String,
    client: ModbusClient,
    profile: RegisterProfile,
}

impl Link {
    fn new(id: &str, endpoint: &ModbusEndpoint, profile: RegisterProfile) -> Self {
        Link {
            id: id.to_owned(),
            client: ModbusClient::new(client_config(endpoint)),
            profile,
        }
    }

    /// Reads one point.
    async fn read(&self, point: &'static str) -> Result<f64, Failure> {
        self.profile
            .read(&self.client, point)
            .await
            .map_err(|e| Failure::modbus(point, e))
    }

    /// Runs one operation within `limit`, and tells its failure as a [`DeviceError`] of this
    /// device.
    async fn run<T>(
        &self,
        what: &str,
        limit: Duration,
        op: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, DeviceError> {
        let result = match tokio::time::timeout(limit, op).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Unreachable(format!(
                "{what} not done within {limit:?}"
            ))),
        };
        result.map_err(|f| {
            tracing::debug!(device = %self.id, addr = %self.client.addr(), what, failure = %f, "modbus profile device operation failed");
            f.into_device_error(&self.id)
        })
    }
}

/// How an inverter is commanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// [`SETPOINT`]: signed, positive exporting.
    Setpoint,
    /// [`DISCHARGE_LIMIT`]: the most the device may export.
    DischargeLimit,
    /// Neither: read only.
    None,
}

/// A battery inverter described by a register profile (see the module's documentation for
/// the point names and the sign conventions).
#[derive(Debug)]
pub struct ProfileInverter {
    link: Link,
    max_kw: f64,
    has_temperature: bool,
    control: Control,
}

impl ProfileInverter {
    /// Reads and checks the profile file named by `endpoint.profile` now (an error names the
    /// device, the file and what is wrong); connects lazily. See [`ProfileInverter::new`].
    pub fn load(id: &str, endpoint: &ModbusEndpoint, max_kw: f64) -> Result<Self, String> {
        let profile = load_profile("inverter", id, endpoint)?;
        let path = endpoint.profile.as_deref().unwrap_or(Path::new(""));
        Self::new(id, endpoint, profile, max_kw)
            .map_err(|e| format!("{e} (register profile {})", path.display()))
    }

    /// An inverter with an already parsed profile, connecting lazily. Refused (an error naming
    /// the device and what is wrong) when the profile does not hold together, lacks
    /// [`ACTIVE_POWER`], has both control points or one that is not writable, a point with
    /// the wrong unit, or when `max_kw` (the rating: setpoints beyond ±`max_kw` are refused)
    /// is not a positive number.
    pub fn new(
        id: &str,
        endpoint: &ModbusEndpoint,
        profile: RegisterProfile,
        max_kw: f64,
    ) -> Result<Self, String> {
        let check = || -> Result<(bool, Control), String> {
            if !(max_kw.is_finite() && max_kw > 0.0) {
                return Err(format!(
                    "the rating max_kw {max_kw} must be a positive number"
                ));
            }
            profile.validate().map_err(|e| e.to_string())?;
            required(
                &profile,
                ACTIVE_POWER,
                KW,
                "the active power, kW, positive exporting",
            )?;
            let temperature = optional(&profile, TEMPERATURE, CELSIUS)?;
            let setpoint = optional(&profile, SETPOINT, KW)?;
            let limit = optional(&profile, DISCHARGE_LIMIT, KW)?;
            let control = match (setpoint, limit) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "the register profile has both {SETPOINT:?} and {DISCHARGE_LIMIT:?}; \
                         an inverter is commanded through one of them"
                    ))
                }
                (Some(p), None) => (p, Control::Setpoint),
                (None, Some(p)) => (p, Control::DischargeLimit),
                (None, None) => return Ok((temperature.is_some(), Control::None)),
            };
            let (p, kind) = control;
            if !p.writable {
                return Err(format!(
                    "point {:?} commands the inverter and must be `writable = true`",
                    p.name
                ));
            }
            if kind == Control::DischargeLimit
                && (p.min.is_some_and(|m| m > 0.0) || p.max.is_some_and(|m| m < 0.0))
            {
                return Err(format!(
                    "point {DISCHARGE_LIMIT:?}: its bounds must allow 0 (written to charge or idle)"
                ));
            }
            Ok((temperature.is_some(), kind))
        };
        let (has_temperature, control) = check().map_err(|e| format!("inverter {id}: {e}"))?;
        Ok(ProfileInverter {
            link: Link::new(id, endpoint, profile),
            max_kw,
            has_temperature,
            control,
        })
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        &self.link.id
    }

    /// The device's Modbus client (its counters, its back-off).
    pub fn client(&self) -> &ModbusClient {
        &self.link.client
    }

    /// The device's register profile.
    pub fn profile(&self) -> &RegisterProfile {
        &self.link.profile
    }

    async fn reading(&self) -> Result<InverterReading, Failure> {
        let power_kw = flip(self.link.read(ACTIVE_POWER).await?);
        let core_c = if self.has_temperature {
            self.link.read(TEMPERATURE).await?
        } else {
            INVERTER_TEMPERATURE_UNKNOWN_C
        };
        let setpoint_kw = match self.control {
            Control::Setpoint => flip(self.link.read(SETPOINT).await?),
            Control::DischargeLimit => {
                let limit = self.link.read(DISCHARGE_LIMIT).await?;
                if limit < 0.0 {
                    return Err(Failure::Bad {
                        field: DISCHARGE_LIMIT,
                        value: format!("{limit} kW: a discharge limit is not negative"),
                    });
                }
                flip(limit)
            }
            Control::None => power_kw,
        };
        Ok(InverterReading {
            power_kw,
            core_c,
            setpoint_kw,
        })
    }

    async fn write_kw(&self, kw: f64) -> Result<InverterReading, DeviceError> {
        let refuse = |reason: String| Failure::Refused(reason).into_device_error(&self.link.id);
        if !kw.is_finite() {
            return Err(refuse(format!("setpoint {kw} kW is not a number")));
        }
        let (point, value) = match self.control {
            Control::Setpoint => (SETPOINT, flip(kw)),
            Control::DischargeLimit => (DISCHARGE_LIMIT, if kw < 0.0 { -kw } else { 0.0 }),
            Control::None => {
                return Err(refuse(
                    "the profile has no writable setpoint or discharge_limit point".into(),
                ))
            }
        };
        // The device's own bounds first (they name the point), then the rating.
        let write = self
            .link
            .profile
            .encode(point, value)
            .map_err(|e| match e {
                EncodeError::OutOfRange { min, max, .. } => refuse(format!(
                    "setpoint {kw} kW: {point} {value} kW is outside {point}'s bounds {min}..={max} kW"
                )),
                other => refuse(format!("setpoint {kw} kW: {other}")),
            })?;
        if kw.abs() > self.max_kw {
            return Err(refuse(format!(
                "setpoint {kw} kW is not within ±{} kW (the inverter's rating)",
                self.max_kw
            )));
        }
        self.link
            .run("write", WRITE_TIMEOUT, async {
                self.link
                    .client
                    .write(&write)
                    .await
                    .map_err(|e| Failure::modbus(point, e))?;
                self.reading().await
            })
            .await
    }
}

impl InverterIo for ProfileInverter {
    fn read(&self, _now: Duration) -> BoxFuture<'_, Result<InverterReading, DeviceError>> {
        Box::pin(self.link.run("read", READ_TIMEOUT, self.reading()))
    }

    fn write(
        &self,
        kw: f64,
        _now: Duration,
    ) -> BoxFuture<'_, Result<InverterReading, DeviceError>> {
        Box::pin(self.write_kw(kw))
    }
}

/// A meter described by a register profile (see the module's documentation for the point
/// names and the sign convention).
#[derive(Debug)]
pub struct ProfileMeter {
    link: Link,
    nominal_v: f64,
}

impl ProfileMeter {
    /// Reads and checks the profile file named by `endpoint.profile` now (an error names the
    /// device, the file and what is wrong); connects lazily. See [`ProfileMeter::new`].
    pub fn load(id: &str, endpoint: &ModbusEndpoint, nominal_v: f64) -> Result<Self, String> {
        let profile = load_profile("meter", id, endpoint)?;
        let path = endpoint.profile.as_deref().unwrap_or(Path::new(""));
        Self::new(id, endpoint, profile, nominal_v)
            .map_err(|e| format!("{e} (register profile {})", path.display()))
    }

    /// A meter with an already parsed profile, connecting lazily. Refused (an error naming
    /// the device and what is wrong) when the profile does not hold together, lacks one of
    /// [`ACTIVE_POWER`], [`VOLTAGE`], [`FREQUENCY`], has a point with the wrong unit, or when
    /// `nominal_v` (the voltage readings are divided by) is not a positive number.
    pub fn new(
        id: &str,
        endpoint: &ModbusEndpoint,
        profile: RegisterProfile,
        nominal_v: f64,
    ) -> Result<Self, String> {
        let check = || -> Result<(), String> {
            if !(nominal_v.is_finite() && nominal_v > 0.0) {
                return Err(format!(
                    "the nominal voltage {nominal_v} V must be a positive number"
                ));
            }
            profile.validate().map_err(|e| e.to_string())?;
            required(
                &profile,
                ACTIVE_POWER,
                KW,
                "the active power, kW, positive importing",
            )?;
            required(&profile, VOLTAGE, VOLTS, "the voltage, V")?;
            required(&profile, FREQUENCY, HERTZ, "the frequency, Hz")?;
            Ok(())
        };
        check().map_err(|e| format!("meter {id}: {e}"))?;
        Ok(ProfileMeter {
            link: Link::new(id, endpoint, profile),
            nominal_v,
        })
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        &self.link.id
    }

    /// The device's Modbus client (its counters, its back-off).
    pub fn client(&self) -> &ModbusClient {
        &self.link.client
    }

    /// The device's register profile.
    pub fn profile(&self) -> &RegisterProfile {
        &self.link.profile
    }

    async fn reading(&self) -> Result<MeterReading, Failure> {
        let power_kw = self.link.read(ACTIVE_POWER).await? + 0.0;
        let voltage_pu = self.link.read(VOLTAGE).await? / self.nominal_v;
        let frequency_hz = self.link.read(FREQUENCY).await?;
        Ok(MeterReading {
            power_kw,
            voltage_pu,
            frequency_hz,
        })
    }
}

impl MeterIo for ProfileMeter {
    fn read(&self, _now: Duration) -> BoxFuture<'_, Result<MeterReading, DeviceError>> {
        Box::pin(self.link.run("read", READ_TIMEOUT, self.reading()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> ModbusEndpoint {
        ModbusEndpoint {
            addr: "127.0.0.1:1502".parse().unwrap(),
            unit: 1,
            profile: None,
        }
    }

    fn profile(toml: &str) -> RegisterProfile {
        toml::from_str(toml).unwrap()
    }

    const FIELD: &str =
        include_str!("../../../configs/modbus-profiles/field-battery-inverter.toml");

    #[test]
    fn signs_flip_without_negative_zero() {
        assert_eq!(flip(2.5), -2.5);
        assert!(flip(0.0).is_sign_positive());
        assert!(flip(-0.0).is_sign_positive());
    }

    #[test]
    fn profiles_are_checked_at_construction() {
        let ok = ProfileInverter::new("inv", &endpoint(), profile(FIELD), 15.0).unwrap();
        assert_eq!(ok.control, Control::DischargeLimit);
        assert!(!ok.has_temperature);
        let err = ProfileInverter::new("inv", &endpoint(), profile(FIELD), f64::NAN).unwrap_err();
        assert!(err.contains("max_kw"), "{err}");
        let watts = FIELD.replacen("unit = \"kW\"", "unit = \"W\"", 1);
        let err = ProfileInverter::new("inv", &endpoint(), profile(&watts), 15.0).unwrap_err();
        assert!(
            err.contains("active_power") && err.contains("\"W\""),
            "{err}"
        );
        let floor = FIELD.replace("min = 0.0", "min = 1.0");
        let err = ProfileInverter::new("inv", &endpoint(), profile(&floor), 15.0).unwrap_err();
        assert!(err.contains("discharge_limit"), "{err}");
        let err = ProfileMeter::new("m", &endpoint(), profile(FIELD), 230.0).unwrap_err();
        assert!(
            err.starts_with("meter m: ") && err.contains("\"voltage\""),
            "{err}"
        );
    }

    #[test]
    fn modbus_errors_map_to_device_errors() {
        let addr = "127.0.0.1:502".parse().unwrap();
        let e = ModbusError::Backoff {
            addr,
            retry_in: Duration::from_secs(1),
            failures: 1,
        };
        assert!(matches!(
            Failure::modbus(ACTIVE_POWER, e).into_device_error("d"),
            DeviceError::Unreachable { .. }
        ));
        let e = ModbusError::Busy {
            addr,
            max_in_flight: 8,
        };
        assert!(matches!(
            Failure::modbus(ACTIVE_POWER, e).into_device_error("d"),
            DeviceError::Unreachable { .. }
        ));
        let e = ModbusError::InvalidRequest("past 65535".into());
        assert!(matches!(
            Failure::modbus(VOLTAGE, e).into_device_error("d"),
            DeviceError::BadValue {
                field: "voltage",
                ..
            }
        ));
    }
}
