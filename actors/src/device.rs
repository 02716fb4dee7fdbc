//! Devices as the actors see them, and in-process simulated devices.
//!
//! A device actor (a charger's link, an inverter, a meter) talks to its device through an
//! IO trait ([`ChargerIo`], [`InverterIo`], [`MeterIo`]). The device, not the actor, is the
//! truth about what is applied: a restarted actor reads the device before it writes (DESIGN:
//! read before write). Issue 5 puts OCPP and Modbus behind these traits; this module provides
//! the in-process simulation the embedded demo, the tests and the benchmarks run against.
//!
//! The simulated physics is evaluated lazily: a device's power follows its setpoint with a
//! ramp, energy is the exact integral of that ramp, temperatures follow first-order models,
//! all computed at the moment of a read from the time of the last change. Nothing steps the
//! simulation, so 100,000 idle chargers cost nothing, and a paused tokio clock makes the whole
//! site deterministic.
//!
//! Sign convention: kW positive = power into the vehicle or battery (charging, import);
//! negative = discharge (export to the grid).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::config::Topology;
use crate::setpoint::SetpointKey;

/// How fast a simulated charger follows its setpoint, kW per second.
pub const CHARGER_RAMP_KW_PER_S: f64 = 50.0;
/// How fast a simulated inverter follows its setpoint, kW per second.
pub const INVERTER_RAMP_KW_PER_S: f64 = 100.0;
/// Time constant of a simulated inverter's core temperature.
pub const INVERTER_THERMAL_TAU_S: f64 = 120.0;
/// A simulated inverter's ambient temperature, °C.
pub const INVERTER_AMBIENT_C: f64 = 35.0;
/// A simulated inverter's core temperature rise at rated power, °C.
pub const INVERTER_RATED_RISE_C: f64 = 25.0;
/// Nominal frequency of a simulated grid when none is given, Hz (a site's grid takes its
/// topology's `[safety] nominal_hz`).
pub const NOMINAL_HZ: f64 = 60.0;

/// Why a device could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    /// The device does not answer (a dropped connection, a hung peer).
    #[error("device {device} is unreachable")]
    Unreachable {
        /// The device's id.
        device: String,
    },
    /// The device answered with something that is not a valid value.
    #[error("device {device} sent a bad value for {field}: {value}")]
    BadValue {
        /// The device's id.
        device: String,
        /// Which value.
        field: &'static str,
        /// What it sent.
        value: String,
    },
    /// The device refused the command.
    #[error("device {device} refused the command: {reason}")]
    Refused {
        /// The device's id.
        device: String,
        /// Its reason.
        reason: String,
    },
}

/// What a charger reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChargerReading {
    /// Power flowing now, kW (positive into the vehicle).
    pub power_kw: f64,
    /// The energy register: net kWh delivered into vehicles since the charger was installed.
    pub energy_kwh: f64,
    /// The setpoint the device holds now, kW.
    pub setpoint_kw: f64,
    /// The key of the last setpoint the device applied (the device's own record).
    pub applied: Option<SetpointKey>,
    /// Whether a vehicle is plugged in.
    pub connected: bool,
    /// Until when the device obeys the setpoint before it reverts to its failsafe power by
    /// itself (OCPP's profile `validTo`, SunSpec 704's revert timer); None: no limit.
    pub lease_until: Option<Duration>,
}

/// What an inverter reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InverterReading {
    /// Power, kW (positive into its battery).
    pub power_kw: f64,
    /// Core temperature, °C.
    pub core_c: f64,
    /// The setpoint it holds, kW.
    pub setpoint_kw: f64,
}

/// What a segment meter reports at the transformer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeterReading {
    /// Active power through the transformer, kW (positive = import from the grid).
    pub power_kw: f64,
    /// Voltage, per unit of nominal.
    pub voltage_pu: f64,
    /// Frequency, Hz.
    pub frequency_hz: f64,
}

/// A charger as its actor sees it (OCPP in issue 5, the simulation here).
pub trait ChargerIo: Send + Sync + 'static {
    /// Read the device's state.
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<ChargerReading, DeviceError>>;
    /// Command an absolute setpoint with its key and lease (the device reverts to its
    /// failsafe power at `lease_until` on its own, even if nobody talks to it again); returns
    /// the state after the write.
    fn write(
        &self,
        key: SetpointKey,
        kw: f64,
        lease_until: Option<Duration>,
        now: Duration,
    ) -> BoxFuture<'_, Result<ChargerReading, DeviceError>>;
    /// A safe-state command: hold `kw` (absolute) from now on, written without a read first,
    /// so that a device that does not answer cannot hold the safety path back behind a read
    /// (issue 19). It is a local override, not a remote setpoint: a device that records keys
    /// keeps the one it applied. `known` is what the node last knew the device applied (its
    /// key and lease), for adapters that must send a key (OCPP's charging profile ids): the
    /// default writes `kw` under that key, or under key (0, 0) when nothing was applied.
    fn write_safe(
        &self,
        kw: f64,
        known: Option<KnownSetpoint>,
        now: Duration,
    ) -> BoxFuture<'_, Result<(), DeviceError>> {
        let (key, lease) = known.map_or((SetpointKey::new(0, 0), None), |k| (k.key, k.lease_until));
        Box::pin(async move { self.write(key, kw, lease, now).await.map(|_| ()) })
    }
}

/// What the node last knew a charger applied (its segment's board), for a safe-state command
/// that does not read the device first ([`ChargerIo::write_safe`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownSetpoint {
    /// The key of the last setpoint applied.
    pub key: SetpointKey,
    /// Its lease (None: no limit).
    pub lease_until: Option<Duration>,
}

/// An inverter as its actor sees it (Modbus/SunSpec in issue 5).
pub trait InverterIo: Send + Sync + 'static {
    /// Read power and temperature.
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<InverterReading, DeviceError>>;
    /// Command an absolute power setpoint.
    fn write(&self, kw: f64, now: Duration) -> BoxFuture<'_, Result<InverterReading, DeviceError>>;
}

/// A meter as its actor sees it (Modbus in issue 5).
pub trait MeterIo: Send + Sync + 'static {
    /// Read power, voltage and frequency.
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<MeterReading, DeviceError>>;
}

/// A segment's trip output as the safety actor sees it: a relay or breaker between the
/// segment's devices and the grid (over Modbus in `crate::io::relay`, simulated here).
pub trait RelayIo: Send + Sync + 'static {
    /// Command the output: `open` true asserts the trip (the breaker opens, the segment's
    /// devices are cut from the grid), false releases it. Absolute and idempotent: the same
    /// command again changes nothing.
    fn set_open(&self, open: bool, now: Duration) -> BoxFuture<'_, Result<(), DeviceError>>;
    /// Read the output back: true while the trip is asserted.
    fn is_open(&self, now: Duration) -> BoxFuture<'_, Result<bool, DeviceError>>;
}

/// The id of segment `segment`'s trip relay as a device (fault injection, logs): `/` is
/// never in a configured id, so it names no other device.
pub fn relay_id(segment: &str) -> String {
    format!("{segment}/trip")
}

use crate::lock;

/// A simulated vehicle battery behind a charger.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Battery {
    /// Usable capacity, kWh.
    pub capacity_kwh: f64,
    /// State of charge, % (the vehicle's truth, which the session estimates).
    pub soc_pct: f64,
    /// The vehicle's own power limit, kW (both directions).
    pub max_kw: f64,
}

#[derive(Debug)]
struct ChargerPhysics {
    at: Duration,
    setpoint_kw: f64,
    power_kw: f64,
    energy_kwh: f64,
    applied: Option<SetpointKey>,
    throttle_kw: Option<f64>,
    unreachable: bool,
    battery: Option<Battery>,
    writes: u64,
    older_writes: u64,
    lease_until: Option<Duration>,
    /// Cut from the grid by an open relay: no power flows, whatever the setpoint.
    isolated: bool,
}

/// Follow `target` from `p` with a ramp for `dt` seconds: (new power, energy in kWh).
fn ramp(p: f64, target: f64, rate: f64, dt: f64) -> (f64, f64) {
    if dt <= 0.0 {
        return (p, 0.0);
    }
    let gap = target - p;
    let t_reach = gap.abs() / rate;
    if t_reach >= dt {
        let p1 = p + gap.signum() * rate * dt;
        (p1, (p + p1) / 2.0 * dt / 3600.0)
    } else {
        let e = (p + target) / 2.0 * t_reach + target * (dt - t_reach);
        (target, e / 3600.0)
    }
}

/// A simulated charger: power follows the setpoint with a ramp, limited by its rating,
/// direction, the vehicle's limit and battery, and an injectable heat throttle.
#[derive(Debug)]
pub struct SimCharger {
    /// The charger's id.
    pub id: String,
    /// Rated power, kW.
    pub max_kw: f64,
    /// Whether it can discharge.
    pub bidirectional: bool,
    state: Mutex<ChargerPhysics>,
    failsafe_kw: f64,
    /// Fault injection: true while the charger never answers ([`SimCharger::set_hung`]).
    hung: tokio::sync::watch::Sender<bool>,
}

impl SimCharger {
    /// A charger with nothing plugged in.
    pub fn new(id: &str, max_kw: f64, bidirectional: bool) -> Self {
        SimCharger {
            id: id.to_string(),
            max_kw,
            bidirectional,
            state: Mutex::new(ChargerPhysics {
                at: Duration::ZERO,
                setpoint_kw: 0.0,
                power_kw: 0.0,
                energy_kwh: 0.0,
                applied: None,
                throttle_kw: None,
                unreachable: false,
                battery: None,
                writes: 0,
                older_writes: 0,
                lease_until: None,
                isolated: false,
            }),
            failsafe_kw: 0.0,
            hung: tokio::sync::watch::Sender::new(false),
        }
    }

    fn limit(&self, s: &ChargerPhysics, kw: f64) -> f64 {
        let Some(b) = s.battery else { return 0.0 };
        let mut hi = self.max_kw.min(b.max_kw);
        let mut lo = if self.bidirectional { -hi } else { 0.0 };
        if let Some(t) = s.throttle_kw {
            hi = hi.min(t);
            lo = lo.max(-t);
        }
        if b.soc_pct >= 100.0 {
            hi = 0.0;
        }
        if b.soc_pct <= 0.0 {
            lo = 0.0;
        }
        if kw.is_finite() {
            kw.clamp(lo.min(0.0), hi.max(0.0))
        } else {
            0.0
        }
    }

    /// The device reverts to this at the end of a lease (its configured failsafe).
    pub fn with_failsafe(mut self, kw: f64) -> Self {
        self.failsafe_kw = if kw.is_finite() { kw.max(0.0) } else { 0.0 };
        self
    }

    fn advance(&self, s: &mut ChargerPhysics, now: Duration) {
        // The device's own revert timer: integrate up to the lease end, then fail safe.
        if let Some(lease) = s.lease_until.filter(|l| *l <= now) {
            if lease > s.at {
                self.advance_plain(s, lease);
            }
            s.setpoint_kw = self.failsafe_kw;
            s.lease_until = None;
        }
        self.advance_plain(s, now);
    }

    fn advance_plain(&self, s: &mut ChargerPhysics, now: Duration) {
        let dt = now.saturating_sub(s.at).as_secs_f64();
        s.at = s.at.max(now);
        if s.isolated {
            s.power_kw = 0.0;
            return;
        }
        let target = self.limit(s, s.setpoint_kw);
        let (p1, mut e) = ramp(s.power_kw, target, CHARGER_RAMP_KW_PER_S, dt);
        s.power_kw = p1;
        if let Some(b) = s.battery.as_mut() {
            let mut soc = b.soc_pct + e / b.capacity_kwh * 100.0;
            // The battery management system stops at empty and full.
            if !(0.0..=100.0).contains(&soc) {
                soc = soc.clamp(0.0, 100.0);
                e = (soc - b.soc_pct) / 100.0 * b.capacity_kwh;
                s.power_kw = 0.0;
            }
            b.soc_pct = soc;
        } else {
            e = 0.0;
            s.power_kw = 0.0;
        }
        s.energy_kwh += e;
    }

    fn reading(&self, s: &ChargerPhysics) -> ChargerReading {
        ChargerReading {
            power_kw: s.power_kw,
            energy_kwh: s.energy_kwh,
            setpoint_kw: s.setpoint_kw,
            applied: s.applied,
            connected: s.battery.is_some(),
            lease_until: s.lease_until,
        }
    }

    /// Plug a vehicle in at `now`; the setpoint resets to 0 (a new session starts idle).
    pub fn plug(&self, battery: Battery, now: Duration) {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        s.battery = Some(battery);
        s.setpoint_kw = 0.0;
    }

    /// Unplug the vehicle at `now`; returns it.
    pub fn unplug(&self, now: Duration) -> Option<Battery> {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        s.setpoint_kw = 0.0;
        s.power_kw = 0.0;
        s.battery.take()
    }

    /// Fault injection: the charger overheats and delivers at most `kw` (None: healthy).
    pub fn set_throttle(&self, kw: Option<f64>, now: Duration) {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        s.throttle_kw = kw;
    }

    /// The device falls back to its failsafe power now, as at the end of a lease (an OCPP
    /// 2.1 charger offline longer than `maxOfflineDuration` drops its discharge profile).
    pub fn revert_to_failsafe(&self, now: Duration) {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        s.setpoint_kw = self.failsafe_kw;
        s.lease_until = None;
    }

    /// The segment's relay opened (`true`: from `now` on no power flows, whatever the
    /// charger was told) or closed again (power ramps from 0 toward the setpoint).
    pub fn set_isolated(&self, isolated: bool, now: Duration) {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        s.isolated = isolated;
        if isolated {
            s.power_kw = 0.0;
        }
    }

    /// Fault injection: the charger stops answering (its power stays where it is).
    pub fn set_unreachable(&self, unreachable: bool) {
        lock(&self.state).unreachable = unreachable;
    }

    /// Fault injection: the charger hangs (true): no call gets an answer, neither an error
    /// nor a value, until it is released (false); the calls that were waiting then fail as
    /// unreachable. Its power stays where it is meanwhile. Unlike [`Self::set_unreachable`]
    /// (a closed connection, which fails at once), only a caller's own deadline ends a call.
    pub fn set_hung(&self, hung: bool) {
        self.hung.send_replace(hung);
    }

    /// The call of a hung charger: answers (unreachable) only once released. None when the
    /// charger is not hung.
    fn hung_call<T: Send + 'static>(&self) -> Option<BoxFuture<'static, Result<T, DeviceError>>> {
        if !*self.hung.borrow() {
            return None;
        }
        let mut rx = self.hung.subscribe();
        let err = DeviceError::Unreachable {
            device: self.id.clone(),
        };
        Some(Box::pin(async move {
            let _ = rx.wait_for(|hung| !*hung).await;
            Err(err)
        }))
    }

    /// The simulated battery's true state at `now` (for tests and invariant checks).
    pub fn battery(&self, now: Duration) -> Option<Battery> {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        s.battery
    }

    /// How many writes the device accepted (for tests: a repeat must not write again).
    pub fn writes(&self) -> u64 {
        lock(&self.state).writes
    }

    /// How many writes carried a key older than one the device had already applied (for
    /// tests and chaos invariants: with idempotent links this stays 0).
    pub fn older_writes(&self) -> u64 {
        lock(&self.state).older_writes
    }

    /// The setpoint the device holds now, kW.
    pub fn setpoint_kw(&self) -> f64 {
        lock(&self.state).setpoint_kw
    }

    fn read_now(&self, now: Duration) -> Result<ChargerReading, DeviceError> {
        let mut s = lock(&self.state);
        if s.unreachable {
            return Err(DeviceError::Unreachable {
                device: self.id.clone(),
            });
        }
        self.advance(&mut s, now);
        Ok(self.reading(&s))
    }

    fn write_now(
        &self,
        key: SetpointKey,
        kw: f64,
        lease_until: Option<Duration>,
        now: Duration,
    ) -> Result<ChargerReading, DeviceError> {
        let mut s = lock(&self.state);
        self.accepts(&s, kw)?;
        self.advance(&mut s, now);
        if s.applied.is_some_and(|a| key < a) {
            s.older_writes += 1;
        }
        s.setpoint_kw = kw;
        s.lease_until = lease_until;
        s.applied = Some(s.applied.map_or(key, |a| a.max(key)));
        s.writes += 1;
        Ok(self.reading(&s))
    }
}

impl SimCharger {
    /// Whether a write of `kw` reaches the charger: it answers, and `kw` is a number.
    fn accepts(&self, s: &ChargerPhysics, kw: f64) -> Result<(), DeviceError> {
        if s.unreachable {
            return Err(DeviceError::Unreachable {
                device: self.id.clone(),
            });
        }
        if !kw.is_finite() {
            return Err(DeviceError::Refused {
                device: self.id.clone(),
                reason: format!("setpoint {kw} is not a number"),
            });
        }
        Ok(())
    }

    fn override_now(&self, kw: f64, now: Duration) -> Result<(), DeviceError> {
        let mut s = lock(&self.state);
        self.accepts(&s, kw)?;
        self.advance(&mut s, now);
        if s.setpoint_kw != kw {
            s.setpoint_kw = kw;
            s.writes += 1;
        }
        Ok(())
    }
}

impl ChargerIo for SimCharger {
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<ChargerReading, DeviceError>> {
        if let Some(hung) = self.hung_call() {
            return hung;
        }
        let r = self.read_now(now);
        Box::pin(async move { r })
    }

    fn write(
        &self,
        key: SetpointKey,
        kw: f64,
        lease_until: Option<Duration>,
        now: Duration,
    ) -> BoxFuture<'_, Result<ChargerReading, DeviceError>> {
        if let Some(hung) = self.hung_call() {
            return hung;
        }
        let r = self.write_now(key, kw, lease_until, now);
        Box::pin(async move { r })
    }

    /// The override keeps the applied key and lease (the device's own record of what was
    /// dispatched); a write that changes nothing is not counted as one.
    fn write_safe(
        &self,
        kw: f64,
        _known: Option<KnownSetpoint>,
        now: Duration,
    ) -> BoxFuture<'_, Result<(), DeviceError>> {
        if let Some(hung) = self.hung_call() {
            return hung;
        }
        let r = self.override_now(kw, now);
        Box::pin(async move { r })
    }
}

#[derive(Debug)]
struct InverterPhysics {
    at: Duration,
    setpoint_kw: f64,
    power_kw: f64,
    core_c: f64,
    extra_heat_c: f64,
    unreachable: bool,
    /// Cut from the grid by an open relay.
    isolated: bool,
}

/// A simulated battery inverter: power follows the setpoint with a ramp, the core
/// temperature follows power with a first-order lag, plus an injectable cooling fault.
#[derive(Debug)]
pub struct SimInverter {
    /// The inverter's id.
    pub id: String,
    /// Rated power, kW.
    pub max_kw: f64,
    state: Mutex<InverterPhysics>,
}

impl SimInverter {
    /// An idle inverter at ambient temperature.
    pub fn new(id: &str, max_kw: f64) -> Self {
        SimInverter {
            id: id.to_string(),
            max_kw,
            state: Mutex::new(InverterPhysics {
                at: Duration::ZERO,
                setpoint_kw: 0.0,
                power_kw: 0.0,
                core_c: INVERTER_AMBIENT_C,
                extra_heat_c: 0.0,
                unreachable: false,
                isolated: false,
            }),
        }
    }

    fn advance(&self, s: &mut InverterPhysics, now: Duration) {
        let dt = now.saturating_sub(s.at).as_secs_f64();
        s.at = s.at.max(now);
        let target = s.setpoint_kw.clamp(-self.max_kw, self.max_kw);
        s.power_kw = if s.isolated {
            0.0
        } else {
            ramp(s.power_kw, target, INVERTER_RAMP_KW_PER_S, dt).0
        };
        let load = (s.power_kw.abs() / self.max_kw).min(2.0);
        let steady = INVERTER_AMBIENT_C + INVERTER_RATED_RISE_C * load * load + s.extra_heat_c;
        s.core_c = steady + (s.core_c - steady) * (-dt / INVERTER_THERMAL_TAU_S).exp();
    }

    /// Fault injection: a cooling fault that adds `celsius` to the steady temperature.
    /// `jump` moves the core there at once (a failed fan on a hot day, seen at the next poll).
    pub fn set_cooling_fault(&self, celsius: f64, jump: bool, now: Duration) {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        s.extra_heat_c = celsius;
        if jump {
            s.core_c = INVERTER_AMBIENT_C + celsius;
        }
    }

    /// Fault injection: the inverter stops answering (its power follows its last setpoint).
    pub fn set_unreachable(&self, unreachable: bool) {
        lock(&self.state).unreachable = unreachable;
    }

    fn reachable(&self) -> Result<(), DeviceError> {
        if lock(&self.state).unreachable {
            return Err(DeviceError::Unreachable {
                device: self.id.clone(),
            });
        }
        Ok(())
    }

    /// The segment's relay opened or closed (see [`SimCharger::set_isolated`]).
    pub fn set_isolated(&self, isolated: bool, now: Duration) {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        s.isolated = isolated;
        if isolated {
            s.power_kw = 0.0;
        }
    }

    /// The setpoint the inverter holds now, kW.
    pub fn setpoint_kw(&self) -> f64 {
        lock(&self.state).setpoint_kw
    }

    fn read_now(&self, now: Duration) -> InverterReading {
        let mut s = lock(&self.state);
        self.advance(&mut s, now);
        InverterReading {
            power_kw: s.power_kw,
            core_c: s.core_c,
            setpoint_kw: s.setpoint_kw,
        }
    }

    fn power(&self, now: Duration) -> f64 {
        self.read_now(now).power_kw
    }
}

impl InverterIo for SimInverter {
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<InverterReading, DeviceError>> {
        let r = self.reachable().map(|()| self.read_now(now));
        Box::pin(async move { r })
    }

    fn write(&self, kw: f64, now: Duration) -> BoxFuture<'_, Result<InverterReading, DeviceError>> {
        let r = if let Err(e) = self.reachable() {
            Err(e)
        } else if kw.is_finite() {
            let mut s = lock(&self.state);
            self.advance(&mut s, now);
            s.setpoint_kw = kw;
            drop(s);
            Ok(self.read_now(now))
        } else {
            Err(DeviceError::Refused {
                device: self.id.clone(),
                reason: format!("setpoint {kw} is not a number"),
            })
        };
        Box::pin(async move { r })
    }
}

/// The simulated grid at the site's point of connection: voltage and frequency, which a
/// fault injector can move (islanding), around a nominal frequency of 50 or 60 Hz.
#[derive(Debug)]
pub struct SimGrid {
    nominal_hz: f64,
    voltage_pu_bits: AtomicU64,
    frequency_hz_bits: AtomicU64,
}

impl Default for SimGrid {
    fn default() -> Self {
        SimGrid::new(NOMINAL_HZ)
    }
}

impl SimGrid {
    /// A healthy grid at 1 pu and `nominal_hz`.
    pub fn new(nominal_hz: f64) -> Self {
        SimGrid {
            nominal_hz,
            voltage_pu_bits: AtomicU64::new(1.0f64.to_bits()),
            frequency_hz_bits: AtomicU64::new(nominal_hz.to_bits()),
        }
    }

    /// The grid's nominal frequency, Hz.
    pub fn nominal_hz(&self) -> f64 {
        self.nominal_hz
    }

    /// Back to healthy: 1 pu at the nominal frequency.
    pub fn restore(&self) {
        self.set(1.0, self.nominal_hz);
    }

    /// Set the voltage (per unit) and frequency (Hz) every meter reads from now on.
    pub fn set(&self, voltage_pu: f64, frequency_hz: f64) {
        self.voltage_pu_bits
            .store(voltage_pu.to_bits(), Ordering::Release);
        self.frequency_hz_bits
            .store(frequency_hz.to_bits(), Ordering::Release);
    }

    /// Voltage (per unit) and frequency (Hz) now.
    pub fn get(&self) -> (f64, f64) {
        (
            f64::from_bits(self.voltage_pu_bits.load(Ordering::Acquire)),
            f64::from_bits(self.frequency_hz_bits.load(Ordering::Acquire)),
        )
    }
}

/// A simulated segment meter: the sum of its segment's devices and base load, and the
/// grid's voltage and frequency.
pub struct SimMeter {
    /// The meter's id.
    pub id: String,
    chargers: Vec<Arc<SimCharger>>,
    inverters: Vec<Arc<SimInverter>>,
    base_load_kw: f64,
    grid: Arc<SimGrid>,
    unreachable: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for SimMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimMeter").field("id", &self.id).finish()
    }
}

impl SimMeter {
    /// Fault injection: the meter stops answering.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::Release);
    }

    fn read_now(&self, now: Duration) -> MeterReading {
        let chargers: f64 = self
            .chargers
            .iter()
            .map(|c| {
                let mut s = lock(&c.state);
                c.advance(&mut s, now);
                s.power_kw
            })
            .sum();
        let inverters: f64 = self.inverters.iter().map(|i| i.power(now)).sum();
        let (voltage_pu, frequency_hz) = self.grid.get();
        MeterReading {
            power_kw: chargers + inverters + self.base_load_kw,
            voltage_pu,
            frequency_hz,
        }
    }
}

impl MeterIo for SimMeter {
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<MeterReading, DeviceError>> {
        let r = if self.unreachable.load(Ordering::Acquire) {
            Err(DeviceError::Unreachable {
                device: self.id.clone(),
            })
        } else {
            Ok(self.read_now(now))
        };
        Box::pin(async move { r })
    }
}

/// A segment's trip relay, simulated: opening it cuts every charger and inverter of the
/// segment from the grid at once (they deliver nothing, whatever they were told), closing it
/// reconnects them.
#[derive(Debug)]
pub struct SimRelay {
    /// The relay's device id ([`relay_id`]).
    pub id: String,
    open: std::sync::atomic::AtomicBool,
    writes: AtomicU64,
    unreachable: std::sync::atomic::AtomicBool,
    chargers: Vec<Arc<SimCharger>>,
    inverters: Vec<Arc<SimInverter>>,
}

impl SimRelay {
    /// A closed relay in front of these devices.
    pub fn new(id: &str, chargers: Vec<Arc<SimCharger>>, inverters: Vec<Arc<SimInverter>>) -> Self {
        SimRelay {
            id: id.to_owned(),
            open: std::sync::atomic::AtomicBool::new(false),
            writes: AtomicU64::new(0),
            unreachable: std::sync::atomic::AtomicBool::new(false),
            chargers,
            inverters,
        }
    }

    /// Whether the relay is open now (the truth, for tests and invariant checks).
    pub fn open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Commands the relay accepted.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    /// Fault injection: the relay's I/O module stops answering (the relay stays as it is).
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::Release);
    }

    fn check(&self) -> Result<(), DeviceError> {
        if self.unreachable.load(Ordering::Acquire) {
            return Err(DeviceError::Unreachable {
                device: self.id.clone(),
            });
        }
        Ok(())
    }

    fn set_now(&self, open: bool, now: Duration) -> Result<(), DeviceError> {
        self.check()?;
        self.writes.fetch_add(1, Ordering::AcqRel);
        if self.open.swap(open, Ordering::AcqRel) != open {
            for c in &self.chargers {
                c.set_isolated(open, now);
            }
            for i in &self.inverters {
                i.set_isolated(open, now);
            }
        }
        Ok(())
    }
}

impl RelayIo for SimRelay {
    fn set_open(&self, open: bool, now: Duration) -> BoxFuture<'_, Result<(), DeviceError>> {
        let r = self.set_now(open, now);
        Box::pin(async move { r })
    }

    fn is_open(&self, _now: Duration) -> BoxFuture<'_, Result<bool, DeviceError>> {
        let r = self.check().map(|()| self.open());
        Box::pin(async move { r })
    }
}

/// The node's PTP clock monitor, simulated: the offset a fault injector sets.
#[derive(Debug, Default)]
pub struct SimPtp {
    offset_ns: AtomicU64,
    unsynchronised: std::sync::atomic::AtomicBool,
}

impl SimPtp {
    /// Set the measured offset.
    pub fn set_offset(&self, offset: Duration) {
        let ns = u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX);
        self.offset_ns.store(ns, Ordering::Release);
    }

    /// The measured offset.
    pub fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_ns.load(Ordering::Acquire))
    }

    /// Make the monitor unsynchronised (no grandmaster) or synchronised again.
    pub fn set_unsynchronised(&self, unsynchronised: bool) {
        self.unsynchronised.store(unsynchronised, Ordering::Release);
    }

    /// Whether it is unsynchronised.
    pub fn unsynchronised(&self) -> bool {
        self.unsynchronised.load(Ordering::Acquire)
    }
}

/// Every simulated device of a site, built from its topology.
#[derive(Debug)]
pub struct SimSite {
    /// Chargers by id.
    pub chargers: HashMap<String, Arc<SimCharger>>,
    /// Inverters by id.
    pub inverters: HashMap<String, Arc<SimInverter>>,
    /// Meters by id.
    pub meters: HashMap<String, Arc<SimMeter>>,
    /// The grid at the point of connection.
    pub grid: Arc<SimGrid>,
    /// The PTP clock monitor.
    pub ptp: Arc<SimPtp>,
    /// Trip relays by segment id (segments with a `trip` output).
    pub relays: HashMap<String, Arc<SimRelay>>,
}

impl SimSite {
    /// Build the devices of `topology` (no vehicle plugged in yet).
    pub fn new(topology: &Topology) -> Self {
        let grid = Arc::new(SimGrid::new(topology.safety.grid().hz()));
        let mut site = SimSite {
            chargers: HashMap::new(),
            inverters: HashMap::new(),
            meters: HashMap::new(),
            grid: grid.clone(),
            ptp: Arc::new(SimPtp::default()),
            relays: HashMap::new(),
        };
        for (_, seg) in topology.segments() {
            let chargers: Vec<_> = seg
                .chargers
                .iter()
                .map(|c| {
                    Arc::new(
                        SimCharger::new(&c.id, c.max_kw, c.bidirectional)
                            .with_failsafe(seg.safe_default_kw),
                    )
                })
                .collect();
            let inverters: Vec<_> = seg
                .inverters
                .iter()
                .map(|i| Arc::new(SimInverter::new(&i.id, i.max_kw)))
                .collect();
            for (i, m) in seg.meters.iter().enumerate() {
                // The first meter measures the transformer; others (sub-meters) see the
                // same point here, which is what a redundant meter does.
                let _ = i;
                site.meters.insert(
                    m.id.clone(),
                    Arc::new(SimMeter {
                        id: m.id.clone(),
                        chargers: chargers.clone(),
                        inverters: inverters.clone(),
                        base_load_kw: seg.base_load_kw,
                        grid: grid.clone(),
                        unreachable: std::sync::atomic::AtomicBool::new(false),
                    }),
                );
            }
            if seg.trip.is_some() {
                let relay = SimRelay::new(&relay_id(&seg.id), chargers.clone(), inverters.clone());
                site.relays.insert(seg.id.clone(), Arc::new(relay));
            }
            for c in chargers {
                site.chargers.insert(c.id.clone(), c);
            }
            for i in inverters {
                site.inverters.insert(i.id.clone(), i);
            }
        }
        site
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    fn key(d: u64, r: u64) -> SetpointKey {
        SetpointKey {
            dispatch: d,
            revision: r,
        }
    }

    fn ev(soc: f64) -> Battery {
        Battery {
            capacity_kwh: 60.0,
            soc_pct: soc,
            max_kw: 11.0,
        }
    }

    #[test]
    fn power_ramps_to_the_setpoint_and_energy_is_its_integral() {
        let c = SimCharger::new("c", 22.0, true);
        c.plug(ev(50.0), s(0.0));
        let r = c.write_now(key(1, 0), -10.0, None, s(0.0)).unwrap();
        assert_eq!(r.applied, Some(key(1, 0)));
        // 10 kW at 50 kW/s: 0.2 s of ramp (1 kJ... 0.2*5 kW avg), then 10 kW.
        let r = c.read_now(s(3600.2)).unwrap();
        assert!((r.power_kw + 10.0).abs() < 1e-9);
        let expected = -(10.0 * 0.2 / 2.0 + 10.0 * 3600.0) / 3600.0;
        assert!((r.energy_kwh - expected).abs() < 1e-9, "{}", r.energy_kwh);
        let b = c.battery(s(3600.2)).unwrap();
        assert!((b.soc_pct - (50.0 + expected / 60.0 * 100.0)).abs() < 1e-9);
    }

    #[test]
    fn limits_direction_throttle_and_the_battery_bound_the_power() {
        let uni = SimCharger::new("u", 22.0, false);
        uni.plug(ev(50.0), s(0.0));
        uni.write_now(key(1, 0), -5.0, None, s(0.0)).unwrap();
        assert_eq!(uni.read_now(s(10.0)).unwrap().power_kw, 0.0);
        let c = SimCharger::new("c", 22.0, true);
        c.plug(ev(50.0), s(0.0));
        c.write_now(key(1, 0), 22.0, None, s(0.0)).unwrap();
        assert!((c.read_now(s(10.0)).unwrap().power_kw - 11.0).abs() < 1e-9);
        c.set_throttle(Some(2.0), s(10.0));
        assert!((c.read_now(s(20.0)).unwrap().power_kw - 2.0).abs() < 1e-9);
        // Empty battery: the BMS stops discharge.
        let e = SimCharger::new("e", 22.0, true);
        e.plug(ev(0.5), s(0.0));
        e.write_now(key(1, 0), -11.0, None, s(0.0)).unwrap();
        let r = e.read_now(s(3600.0)).unwrap();
        assert_eq!(r.power_kw, 0.0);
        assert!((r.energy_kwh + 0.3).abs() < 1e-9);
        assert_eq!(e.battery(s(3600.0)).unwrap().soc_pct, 0.0);
    }

    #[test]
    fn an_unreachable_charger_errors_and_refuses_nan() {
        let c = SimCharger::new("c", 22.0, true);
        c.set_unreachable(true);
        assert!(matches!(
            c.read_now(s(0.0)),
            Err(DeviceError::Unreachable { .. })
        ));
        c.set_unreachable(false);
        assert!(matches!(
            c.write_now(key(1, 0), f64::NAN, None, s(0.0)),
            Err(DeviceError::Refused { .. })
        ));
        assert_eq!(c.writes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_charger_answers_nothing_until_released_then_unreachable() {
        let c = Arc::new(SimCharger::new("c", 22.0, true));
        c.plug(ev(50.0), s(0.0));
        c.set_hung(true);
        let read = tokio::spawn({
            let c = c.clone();
            async move { c.read(s(0.0)).await }
        });
        let override_ = tokio::spawn({
            let c = c.clone();
            async move { c.write_safe(0.0, None, s(0.0)).await }
        });
        // An hour of simulated time: still no answer.
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert!(!read.is_finished() && !override_.is_finished());
        c.set_hung(false);
        assert!(matches!(
            read.await.unwrap(),
            Err(DeviceError::Unreachable { .. })
        ));
        assert!(matches!(
            override_.await.unwrap(),
            Err(DeviceError::Unreachable { .. })
        ));
        assert_eq!(c.writes(), 0);
        // Released: the override lands and keeps the applied key.
        c.write_now(key(3, 1), -10.0, Some(s(60.0)), s(0.0))
            .unwrap();
        c.write_safe(0.0, None, s(1.0)).await.unwrap();
        let r = c.read(s(1.0)).await.unwrap();
        assert_eq!((r.setpoint_kw, r.applied), (0.0, Some(key(3, 1))));
        assert_eq!(r.lease_until, Some(s(60.0)));
        assert_eq!(c.older_writes(), 0);
    }

    #[test]
    fn inverter_heats_with_power_and_a_cooling_fault() {
        let i = SimInverter::new("i", 50.0);
        assert!((i.read_now(s(0.0)).core_c - INVERTER_AMBIENT_C).abs() < 1e-9);
        i.set_cooling_fault(40.0, true, s(0.0));
        assert!(i.read_now(s(0.0)).core_c > 65.0);
        i.set_cooling_fault(0.0, false, s(0.0));
        assert!(i.read_now(s(3600.0)).core_c < 36.0);
    }

    #[test]
    fn an_open_relay_cuts_its_devices_from_the_grid_whatever_they_were_told() {
        let c = Arc::new(SimCharger::new("c", 22.0, true));
        c.plug(ev(60.0), s(0.0));
        let i = Arc::new(SimInverter::new("i", 30.0));
        let relay = SimRelay::new(&relay_id("tx"), vec![c.clone()], vec![i.clone()]);
        c.write_now(key(1, 0), -11.0, None, s(0.0)).unwrap();
        futures::executor::block_on(InverterIo::write(i.as_ref(), -20.0, s(0.0))).unwrap();
        assert!(c.read_now(s(10.0)).unwrap().power_kw < -10.0);
        let soc = c.battery(s(10.0)).unwrap().soc_pct;
        relay.set_now(true, s(10.0)).unwrap();
        assert!(relay.open());
        let r = c.read_now(s(20.0)).unwrap();
        assert_eq!(
            (r.power_kw, r.setpoint_kw),
            (0.0, -11.0),
            "told to export, exports nothing"
        );
        assert_eq!(c.battery(s(20.0)).unwrap().soc_pct, soc, "no energy flows");
        assert_eq!(i.read_now(s(20.0)).power_kw, 0.0);
        relay.set_now(false, s(20.0)).unwrap();
        assert!(c.read_now(s(30.0)).unwrap().power_kw < -10.0, "reconnected");
        relay.set_unreachable(true);
        assert!(relay.set_now(true, s(30.0)).is_err());
        assert!(!relay.open());
        assert_eq!(relay.writes(), 2);
    }

    #[test]
    fn the_device_reverts_to_its_failsafe_at_the_end_of_the_lease_on_its_own() {
        let c = SimCharger::new("c", 22.0, true).with_failsafe(2.0);
        c.plug(ev(50.0), s(0.0));
        c.write_now(key(1, 0), -10.0, Some(s(60.0)), s(0.0))
            .unwrap();
        assert!((c.read_now(s(30.0)).unwrap().power_kw + 10.0).abs() < 1e-9);
        let r = c.read_now(s(120.0)).unwrap();
        assert_eq!(r.setpoint_kw, 2.0);
        assert_eq!(r.lease_until, None);
        assert!((r.power_kw - 2.0).abs() < 1e-9);
        // 60 s at -10 kW (after a 0.2 s ramp), then about 60 s at +2 kW.
        assert!(
            r.energy_kwh < -0.13 && r.energy_kwh > -0.15,
            "{}",
            r.energy_kwh
        );
    }
}
