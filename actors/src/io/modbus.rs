//! Inverters and meters over SunSpec Modbus TCP: [`SunSpecInverter`] ([`InverterIo`]) and
//! [`SunSpecMeter`] ([`MeterIo`]) on `gridvisor_transports`' [`ModbusClient`] and SunSpec
//! decoders.
//!
//! # Connection and discovery
//!
//! Each device has one [`ModbusClient`] (one TCP connection, reconnection with back-off, a
//! bound on requests in flight, TCP_NODELAY and keep-alive), made by `new` without touching
//! the network: construction never fails, and a device that is down when the node starts is
//! simply [`DeviceError::Unreachable`] until it answers. The SunSpec map is discovered on
//! first use ("SunS" at 40000, 0, 50000, then the model walk) and kept; it is forgotten, and
//! discovered again by the next operation, after any failure except a Modbus exception that
//! refuses a value (so after every dropped connection, hence after every reconnect, and after
//! every decode error).
//!
//! # Sign conventions
//!
//! The actors' convention (see [`crate::device`]): kW positive into the battery (charging,
//! import), negative out of it (export).
//! - Inverter: SunSpec DER models (701 `W`, 704 `WSet`) count power positive when the DER
//!   *injects* into the grid (the simulator's inverter does too: positive `W` discharges its
//!   battery). So `power_kw = -W / 1000` and `WSet = -kW × 1000`.
//! - Meter: SunSpec AC meters (201–204) count `W` positive when the site *imports* (the
//!   simulator's meter does too), which is the actors' convention: `power_kw = W / 1000`. A
//!   device read as a meter through its 701 model counts the other way: `power_kw = -W / 1000`.
//!
//! # What is read
//!
//! - Inverter power: 701 `W`. Core temperature: the hottest of the implemented 701 `TmpCab`,
//!   `TmpSnk`, `TmpTrns`, `TmpSw`, `TmpOt` (the ambient `TmpAmb` is not the core; the
//!   simulator fills `TmpSnk`).
//! - Inverter setpoint ([`InverterReading::setpoint_kw`]): what the device runs toward. With
//!   704 `WSetEna` on, the setpoint (`WSet` in watts, or `WSetPct` × the configured rating
//!   in percent mode), capped by the power limit `WMaxLimPct` × the rating when
//!   `WMaxLimPctEna` is on (the configured rating stands in for the device's `WMax`, which is
//!   in model 702, not read). With `WSetEna` off the device follows its own default, which
//!   SunSpec does not show: the setpoint reported is then the measured power, so that the
//!   actors' read-before-write clamps what the device actually does.
//! - Meter: the first of 201–204 in the map (else 701): `W`, `Hz`, and the phase voltage
//!   furthest from nominal among the implemented line-to-neutral phases (else the average
//!   `PhV`; a delta meter without neutral: line-to-line / √3), divided by the configured
//!   nominal voltage. Voltage and frequency are passed on as read, 0 included (a dead grid
//!   reads 0 V, which the ladder must see as lost, not as an error).
//!
//! # What is written
//!
//! [`InverterIo::write`] sets the 704 active power setpoint in watts with the transports
//! encoder (values and reversion first, `WSetEna` last), its reversion timer armed for
//! [`REVERT_AFTER`] to [`REVERT_TO_KW`] (so a device nobody talks to any more falls back by
//! itself), then reads the device back and returns that reading. A setpoint outside ±the
//! rating is refused before anything is sent (the actors clamp before; nothing is clamped
//! here). A power limit someone else enabled on the device is left as it is (it caps the
//! setpoint, and the reading shows the capped value).
//!
//! # Errors
//!
//! | what happened | [`DeviceError`] |
//! |---|---|
//! | no connection, time-out (per request or [`OPERATION_TIMEOUT`] in all), closed by the device, an answer that does not fit, back-off, too many requests in flight | `Unreachable` |
//! | a Modbus exception | `Refused`, naming the exception and the request |
//! | a setpoint outside ±the rating, or not a number | `Refused`, naming the value |
//! | a needed point not implemented, a bad scale factor or value, no SunSpec map or a map that does not walk | `BadValue`, naming the point (or `SunSpec map`) |
//!
//! The `now` argument of the traits is not used: a real device has its own clock.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use gridvisor_transports::modbus::sunspec::device::walk;
use gridvisor_transports::modbus::sunspec::walk::is_marker;
use gridvisor_transports::modbus::sunspec::{
    ActivePowerSetpoint, DerCtlScales, ModelBlock, ModelDef, SetpointMode, SunSpecDevice,
    SunSpecMap, BASE_ADDRESSES, METER_MODELS,
};
use gridvisor_transports::modbus::{
    ClientConfig, DecodeError, EncodeError, ExceptionCode, Keepalive, ModbusClient, ModbusError,
};

use crate::config::ModbusEndpoint;
use crate::device::{DeviceError, InverterIo, InverterReading, MeterIo, MeterReading};
use crate::lock;

/// Time allowed to open the TCP connection (the client's default).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for one request's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for one whole read or write (discovery included, several requests); past it
/// the device is [`DeviceError::Unreachable`].
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The client's back-off after its first failure in a row (the client's default).
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// The client's back-off never exceeds this: a device that comes back is read again within
/// it (shorter than the client's default of 30 s, since a meter that cannot be read puts its
/// segment in ChargeOnly).
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Requests in flight or queued per device (the client's default).
pub const MAX_IN_FLIGHT: usize = 8;
/// The reversion time armed with every setpoint: a device not commanded again within it
/// reverts to [`REVERT_TO_KW`] by itself.
pub const REVERT_AFTER: Duration = Duration::from_secs(30);
/// What a device reverts to at the end of [`REVERT_AFTER`], kW: neither charging nor
/// discharging (a setpoint of 0 W, left enabled).
pub const REVERT_TO_KW: f64 = 0.0;

/// The `field` of a [`DeviceError::BadValue`] about the map itself (no "SunS", a walk that
/// fails, a model missing or moved, a request past register 65535).
pub const MAP_FIELD: &str = "SunSpec map";

/// The client configuration of a device at `endpoint`: the time-outs and limits above,
/// TCP_NODELAY and the client's default keep-alive.
pub fn client_config(endpoint: &ModbusEndpoint) -> ClientConfig {
    let mut c = ClientConfig::new(endpoint.addr);
    c.unit_id = endpoint.unit;
    c.connect_timeout = CONNECT_TIMEOUT;
    c.request_timeout = REQUEST_TIMEOUT;
    c.backoff_initial = BACKOFF_INITIAL;
    c.backoff_max = BACKOFF_MAX;
    c.max_in_flight = MAX_IN_FLIGHT;
    c.nodelay = true;
    c.keepalive = Some(Keepalive::default());
    c
}

/// Why an operation failed, before it is told as a [`DeviceError`] of a device.
#[derive(Debug)]
enum Failure {
    /// The device could not be talked to (the cause, for the log).
    Unreachable(String),
    /// A Modbus exception.
    Exception { code: ExceptionCode, reason: String },
    /// Refused before anything was sent.
    Refused(String),
    /// A value that is not usable.
    Bad { field: &'static str, value: String },
}

impl Failure {
    fn bad(field: &'static str, value: impl ToString) -> Self {
        Failure::Bad {
            field,
            value: value.to_string(),
        }
    }

    /// Whether the SunSpec map is still to be trusted after this failure: only a refusal of
    /// a value (a Modbus exception other than an illegal address, which may mean that the
    /// map moved) or our own refusal keeps it.
    fn keeps_map(&self) -> bool {
        match self {
            Failure::Exception { code, .. } => *code != ExceptionCode::IllegalDataAddress,
            Failure::Refused(_) => true,
            Failure::Unreachable(_) | Failure::Bad { .. } => false,
        }
    }

    fn into_device_error(self, device: &str) -> DeviceError {
        let device = device.to_owned();
        match self {
            Failure::Unreachable(_) => DeviceError::Unreachable { device },
            Failure::Exception { reason, .. } | Failure::Refused(reason) => {
                DeviceError::Refused { device, reason }
            }
            Failure::Bad { field, value } => DeviceError::BadValue {
                device,
                field,
                value,
            },
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable(cause) => write!(f, "unreachable: {cause}"),
            Failure::Exception { reason, .. } | Failure::Refused(reason) => {
                write!(f, "refused: {reason}")
            }
            Failure::Bad { field, value } => write!(f, "bad value of {field}: {value}"),
        }
    }
}

impl From<ModbusError> for Failure {
    fn from(e: ModbusError) -> Self {
        match e {
            ModbusError::Timeout { .. }
            | ModbusError::Io { .. }
            | ModbusError::Protocol { .. }
            | ModbusError::Backoff { .. }
            | ModbusError::Disconnected { .. }
            | ModbusError::Busy { .. } => Failure::Unreachable(e.to_string()),
            ModbusError::Exception { op, code, .. } => Failure::Exception {
                code,
                reason: format!("the device answered {code} to {op}"),
            },
            // A request built from the map that cannot be sent: the map is wrong.
            ModbusError::InvalidRequest(detail) => Failure::bad(MAP_FIELD, detail),
            ModbusError::Decode(e) => e.into(),
            ModbusError::Encode(e) => e.into(),
        }
    }
}

impl From<DecodeError> for Failure {
    /// A decode error of the map or of a whole block (the points themselves are decoded one
    /// by one, see [`need`], and name themselves).
    fn from(e: DecodeError) -> Self {
        Failure::bad(MAP_FIELD, e)
    }
}

impl From<EncodeError> for Failure {
    /// A setpoint the device's 704 scale factors cannot hold.
    fn from(e: EncodeError) -> Self {
        let point = match &e {
            EncodeError::OutOfRange { point, .. }
            | EncodeError::NotFinite { point, .. }
            | EncodeError::ReadOnly { point }
            | EncodeError::Scale { point, .. }
            | EncodeError::Invalid { point, .. } => point.as_str(),
        };
        let field = ModelDef::by_id(704)
            .and_then(|d| d.point(point))
            .map_or("704", |p| p.name);
        Failure::bad(field, e)
    }
}

/// A point that must have a value: not implemented, or a bad value or scale factor, is
/// [`Failure::Bad`] naming it.
fn need(b: &ModelBlock, point: &'static str) -> Result<f64, Failure> {
    match b.scaled(point) {
        Ok(Some(v)) if v.is_finite() => Ok(v),
        Ok(Some(v)) => Err(Failure::bad(point, v)),
        Ok(None) => Err(Failure::bad(point, "not implemented")),
        Err(e) => Err(Failure::bad(point, e)),
    }
}

/// A point that may be absent (not implemented, or past the model's length); a bad value or
/// scale factor is still [`Failure::Bad`] naming it.
fn optional(b: &ModelBlock, point: &'static str) -> Result<Option<f64>, Failure> {
    match b.scaled(point) {
        Ok(Some(v)) if !v.is_finite() => Err(Failure::bad(point, v)),
        Ok(v) => Ok(v),
        Err(e) => Err(Failure::bad(point, e)),
    }
}

/// An enable point (0 or 1); not implemented is `None`.
fn enabled(b: &ModelBlock, point: &'static str) -> Result<Option<bool>, Failure> {
    b.enabled(point).map_err(|e| Failure::bad(point, e))
}

/// kW in the actors' convention (positive into the battery) from a DER's watts (positive
/// injecting), without a negative zero.
fn kw_from_der_w(w: f64) -> f64 {
    if w == 0.0 {
        0.0
    } else {
        -w / 1000.0
    }
}

/// A DER's watts (positive injecting) from kW in the actors' convention.
fn der_w_from_kw(kw: f64) -> f64 {
    if kw == 0.0 {
        0.0
    } else {
        -kw * 1000.0
    }
}

/// Finds "SunS" at the first of [`BASE_ADDRESSES`] that has it and walks the models.
///
/// Unlike the transports' `SunSpecDevice::discover`, a base that times out is not skipped:
/// the device is then unreachable, and the actor hears so after one request time-out rather
/// than after every base's. A base refused with an exception is skipped; when every base is
/// refused, the last exception is the answer.
async fn discover(client: &ModbusClient) -> Result<SunSpecMap, Failure> {
    let mut refused = None;
    let mut answered = false;
    for &base in &BASE_ADDRESSES {
        match client.read_holding_registers(base, 2).await {
            Ok(regs) if is_marker(&regs) => {
                let map = walk(client, base).await?;
                tracing::debug!(addr = %client.addr(), base, models = ?map.models.iter().map(|m| m.id).collect::<Vec<_>>(), "sunspec device discovered");
                return Ok(map);
            }
            Ok(_) => answered = true,
            Err(e @ ModbusError::Exception { .. }) => refused = Some(e),
            Err(ModbusError::InvalidRequest(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match refused {
        Some(e) if !answered => Err(e.into()),
        _ => Err(DecodeError::NotSunSpec {
            bases: BASE_ADDRESSES.to_vec(),
        }
        .into()),
    }
}

/// One device's connection and the SunSpec map found on it.
#[derive(Debug)]
struct Link {
    id: String,
    client: ModbusClient,
    map: Mutex<Option<SunSpecMap>>,
}

impl Link {
    fn new(id: &str, endpoint: &ModbusEndpoint) -> Self {
        Link {
            id: id.to_owned(),
            client: ModbusClient::new(client_config(endpoint)),
            map: Mutex::new(None),
        }
    }

    /// The device with its map, discovered now if it is not known.
    async fn device(&self) -> Result<SunSpecDevice, Failure> {
        let known = lock(&self.map).clone();
        let map = match known {
            Some(map) => map,
            None => {
                let map = discover(&self.client).await?;
                *lock(&self.map) = Some(map.clone());
                map
            }
        };
        Ok(SunSpecDevice::with_map(self.client.clone(), map))
    }

    /// Runs one operation within [`OPERATION_TIMEOUT`]; on failure forgets the map unless
    /// the failure keeps it ([`Failure::keeps_map`]), and tells the failure as a
    /// [`DeviceError`] of this device.
    async fn run<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, DeviceError> {
        let result = match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Unreachable(format!(
                "{what} not done within {OPERATION_TIMEOUT:?}"
            ))),
        };
        result.map_err(|f| {
            tracing::debug!(device = %self.id, addr = %self.client.addr(), what, failure = %f, "modbus device operation failed");
            if !f.keeps_map() {
                *lock(&self.map) = None;
            }
            f.into_device_error(&self.id)
        })
    }
}

/// A storage inverter over SunSpec Modbus TCP (models 701 and 704; see the module's
/// documentation for what is read and written, and the sign conventions).
#[derive(Debug)]
pub struct SunSpecInverter {
    link: Link,
    max_kw: f64,
}

impl SunSpecInverter {
    /// Lazily connecting: never fails at construction; the SunSpec map is discovered on first
    /// use and re-discovered after a reconnect or a decode error. `max_kw` is the inverter's
    /// rating: setpoints beyond ±`max_kw` are refused, and it stands for the device's `WMax`
    /// in the percentages of model 704.
    pub fn new(id: &str, endpoint: &ModbusEndpoint, max_kw: f64) -> Self {
        SunSpecInverter {
            link: Link::new(id, endpoint),
            max_kw,
        }
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        &self.link.id
    }

    /// The device's Modbus client (its counters, its back-off).
    pub fn client(&self) -> &ModbusClient {
        &self.link.client
    }

    /// Power, temperature and the setpoint held, from 701 and 704.
    async fn reading(&self, dev: &SunSpecDevice) -> Result<InverterReading, Failure> {
        let ac = dev.read_model(701).await?;
        let ctl = dev.read_model(704).await?;
        self.decode(&ac, &ctl)
    }

    /// The reading of a 701 and a 704 block.
    fn decode(&self, ac: &ModelBlock, ctl: &ModelBlock) -> Result<InverterReading, Failure> {
        let power_kw = kw_from_der_w(need(ac, "W")?);
        let mut core_c: Option<f64> = None;
        for point in ["TmpCab", "TmpSnk", "TmpTrns", "TmpSw", "TmpOt"] {
            if let Some(c) = optional(ac, point)? {
                core_c = Some(core_c.map_or(c, |h| h.max(c)));
            }
        }
        let core_c = core_c.ok_or_else(|| {
            Failure::bad(
                "TmpCab/TmpSnk/TmpTrns/TmpSw/TmpOt",
                "no core temperature implemented",
            )
        })?;
        let setpoint_kw = self.held_setpoint(ctl, power_kw)?;
        Ok(InverterReading {
            power_kw,
            core_c,
            setpoint_kw,
        })
    }

    /// The setpoint the device runs toward (see the module's documentation).
    fn held_setpoint(&self, ctl: &ModelBlock, power_kw: f64) -> Result<f64, Failure> {
        let Some(on) = enabled(ctl, "WSetEna")? else {
            return Err(Failure::bad("WSetEna", "not implemented"));
        };
        if !on {
            return Ok(power_kw);
        }
        let mode = ctl.u16("WSetMod").map_err(|e| Failure::bad("WSetMod", e))?;
        let kw = match mode {
            Some(m) if m == SetpointMode::Watts.raw() => kw_from_der_w(need(ctl, "WSet")?),
            Some(m) if m == SetpointMode::WMaxPct.raw() => {
                kw_from_der_w(need(ctl, "WSetPct")? / 100.0 * self.max_kw * 1000.0)
            }
            Some(m) => return Err(Failure::bad("WSetMod", m)),
            None => return Err(Failure::bad("WSetMod", "not implemented")),
        };
        if enabled(ctl, "WMaxLimPctEna")? == Some(true) {
            let cap = (need(ctl, "WMaxLimPct")? / 100.0 * self.max_kw).max(0.0);
            // min/max rather than clamp: never a panic, whatever the values.
            return Ok(kw.max(-cap).min(cap) + 0.0);
        }
        Ok(kw)
    }

    async fn write_kw(&self, kw: f64) -> Result<InverterReading, DeviceError> {
        // A rating that is not a number refuses everything (`<=` is false).
        let within = kw.is_finite() && kw.abs() <= self.max_kw;
        if !within {
            return Err(Failure::Refused(format!(
                "setpoint {kw} kW is not within ±{} kW (the inverter's rating)",
                self.max_kw
            ))
            .into_device_error(&self.link.id));
        }
        self.link
            .run("write", async {
                let dev = self.link.device().await?;
                let ctl = dev.read_model(704).await?;
                let sf = |point: &'static str| {
                    ctl.scale_factor(point).map_err(|e| Failure::bad(point, e))
                };
                let scales = DerCtlScales {
                    addr: ctl.addr(),
                    // Only WSet_SF is needed for a setpoint in watts: a bad one of the others
                    // does not stop the write.
                    wmax_lim_pct: sf("WMaxLimPct_SF").ok().flatten(),
                    wset: sf("WSet_SF")?,
                    wset_pct: sf("WSetPct_SF").ok().flatten(),
                };
                let writes = scales.setpoint(&ActivePowerSetpoint {
                    mode: SetpointMode::Watts,
                    value: der_w_from_kw(kw),
                    revert_after: REVERT_AFTER,
                    revert_to: Some(der_w_from_kw(REVERT_TO_KW)),
                })?;
                dev.write(&writes).await?;
                // Read back: the device's own account of what it now holds.
                let ctl = dev.read_model(704).await?;
                if enabled(&ctl, "WSetEna")? != Some(true) {
                    return Err(Failure::Refused(
                        "the device accepted the setpoint but did not enable it (WSetEna)".into(),
                    ));
                }
                let ac = dev.read_model(701).await?;
                self.decode(&ac, &ctl)
            })
            .await
    }
}

impl InverterIo for SunSpecInverter {
    fn read(&self, _now: Duration) -> BoxFuture<'_, Result<InverterReading, DeviceError>> {
        Box::pin(self.link.run("read", async {
            let dev = self.link.device().await?;
            self.reading(&dev).await
        }))
    }

    fn write(
        &self,
        kw: f64,
        _now: Duration,
    ) -> BoxFuture<'_, Result<InverterReading, DeviceError>> {
        Box::pin(self.write_kw(kw))
    }
}

/// A meter at a segment's connection over SunSpec Modbus TCP (model 201–204, else 701; see
/// the module's documentation).
#[derive(Debug)]
pub struct SunSpecMeter {
    link: Link,
    nominal_v: f64,
}

impl SunSpecMeter {
    /// Lazily connecting, like [`SunSpecInverter::new`]. `nominal_v` is the nominal
    /// line-to-neutral voltage the readings are divided by.
    pub fn new(id: &str, endpoint: &ModbusEndpoint, nominal_v: f64) -> Self {
        SunSpecMeter {
            link: Link::new(id, endpoint),
            nominal_v,
        }
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        &self.link.id
    }

    /// The device's Modbus client (its counters, its back-off).
    pub fn client(&self) -> &ModbusClient {
        &self.link.client
    }

    async fn reading(&self) -> Result<MeterReading, Failure> {
        if !(self.nominal_v.is_finite() && self.nominal_v > 0.0) {
            return Err(Failure::bad("nominal_v", self.nominal_v));
        }
        let dev = self.link.device().await?;
        if let Some(header) = dev.map().find_any(&METER_MODELS).copied() {
            let b = dev.read_block(&header).await?;
            // Model 201 names its line-to-line phases PPVph*, the others PhVph*.
            let ll: [&'static str; 3] = if header.id == 201 {
                ["PPVphAB", "PPVphBC", "PPVphCA"]
            } else {
                ["PhVphAB", "PhVphBC", "PhVphCA"]
            };
            let voltage_pu =
                self.voltage_pu(&b, &["PhVphA", "PhVphB", "PhVphC"], "PhV", &ll, "PPV")?;
            return Ok(MeterReading {
                power_kw: need(&b, "W")? / 1000.0 + 0.0,
                voltage_pu,
                frequency_hz: need(&b, "Hz")?,
            });
        }
        if dev.map().find(701).is_some() {
            let b = dev.read_model(701).await?;
            let voltage_pu = self.voltage_pu(
                &b,
                &["VL1", "VL2", "VL3"],
                "LNV",
                &["VL1L2", "VL2L3", "VL3L1"],
                "LLV",
            )?;
            return Ok(MeterReading {
                // 701 counts injection positive; the site's import is the opposite.
                power_kw: kw_from_der_w(need(&b, "W")?),
                voltage_pu,
                frequency_hz: need(&b, "Hz")?,
            });
        }
        Err(Failure::bad(
            MAP_FIELD,
            "neither a meter model (201..=204) nor 701 in the map",
        ))
    }

    /// The line-to-neutral voltage furthest from nominal, per unit: of the phases that are
    /// implemented, else the average, else from line-to-line (/√3) the same way.
    fn voltage_pu(
        &self,
        b: &ModelBlock,
        ln: &[&'static str],
        ln_avg: &'static str,
        ll: &[&'static str],
        ll_avg: &'static str,
    ) -> Result<f64, Failure> {
        let sqrt_3 = 3f64.sqrt();
        let worst = |points: &[&'static str], divisor: f64| -> Result<Option<f64>, Failure> {
            let mut worst: Option<f64> = None;
            for &p in points {
                if let Some(v) = optional(b, p)? {
                    let pu = v / divisor / self.nominal_v;
                    if worst.is_none_or(|w| (pu - 1.0).abs() > (w - 1.0).abs()) {
                        worst = Some(pu);
                    }
                }
            }
            Ok(worst)
        };
        if let Some(pu) = worst(ln, 1.0)? {
            return Ok(pu);
        }
        if let Some(pu) = worst(&[ln_avg], 1.0)? {
            return Ok(pu);
        }
        if let Some(pu) = worst(ll, sqrt_3)? {
            return Ok(pu);
        }
        if let Some(pu) = worst(&[ll_avg], sqrt_3)? {
            return Ok(pu);
        }
        Err(Failure::bad(ln_avg, "no phase voltage implemented"))
    }
}

impl MeterIo for SunSpecMeter {
    fn read(&self, _now: Duration) -> BoxFuture<'_, Result<MeterReading, DeviceError>> {
        Box::pin(self.link.run("read", self.reading()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_convert_without_negative_zero() {
        assert_eq!(kw_from_der_w(5_000.0), -5.0);
        assert_eq!(kw_from_der_w(-3_000.0), 3.0);
        assert!(kw_from_der_w(0.0).is_sign_positive());
        assert!(kw_from_der_w(-0.0).is_sign_positive());
        assert_eq!(der_w_from_kw(2.5), -2_500.0);
        assert_eq!(der_w_from_kw(-2.5), 2_500.0);
        assert!(der_w_from_kw(0.0).is_sign_positive());
    }

    #[test]
    fn failures_map_to_device_errors() {
        let addr = "127.0.0.1:502".parse().unwrap();
        let timeout = ModbusError::Timeout {
            addr,
            op: gridvisor_transports::modbus::Operation::Connect,
            after: REQUEST_TIMEOUT,
        };
        assert!(matches!(
            Failure::from(timeout).into_device_error("inv"),
            DeviceError::Unreachable { device } if device == "inv"
        ));
        let exception = ModbusError::Exception {
            addr,
            op: gridvisor_transports::modbus::Operation::ReadHoldingRegisters {
                addr: 40000,
                count: 2,
            },
            function: 3,
            code: ExceptionCode::ServerDeviceBusy,
        };
        let f = Failure::from(exception);
        assert!(f.keeps_map());
        match f.into_device_error("inv") {
            DeviceError::Refused { reason, .. } => {
                assert!(reason.contains("server device busy"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let bad = Failure::from(EncodeError::Scale {
            point: "WSet".into(),
            detail: "the device does not implement WSet_SF".into(),
        });
        assert!(!bad.keeps_map());
        assert!(matches!(
            bad.into_device_error("inv"),
            DeviceError::BadValue { field: "WSet", .. }
        ));
    }
}
