//! Fault-injecting device connections.
//!
//! Every device connection of the node (a simulated charger, inverter or meter) is wrapped
//! in a [`Faulty`] that passes calls through while its [`Switch`] is healthy and otherwise
//! fails the way a field device does: a Modbus-like exception (the request is refused), a
//! timeout (the call hangs for [`INJECTED_TIMEOUT`] and then fails), or garbage (values that
//! are not numbers, or an error naming the bad value). A switch can also make the next calls
//! panic: the panic happens inside the actor's handler that made the call, which is how the
//! chaos runner panics handlers without a hook in the actors. A meter's switch can add an
//! uncontrolled load to what it measures (transformer overload).
//!
//! Two faults are a charge point's, as an OCPP CSMS sees them:
//! - **disconnect** ([`Mode::Disconnected`]): the WebSocket is gone, so every call fails at
//!   once (no hang: the CSMS knows the socket closed). The write that raced the drop reaches
//!   the charger and its answer is lost ([`Switch::disconnect`]). The device side of being
//!   offline (OCPP 2.1 dropping a discharge profile after `maxOfflineDuration`) is the
//!   runner's, which owns the simulated devices.
//! - **slow peer** ([`Switch::set_delay`]): every call takes that long to answer, half on the
//!   way there and half back. A call longer than [`OCPP_CALL_TIMEOUT`] fails at the timeout,
//!   as the CSMS's does, while its write still lands on the charger later. Writes land in the
//!   order they were sent, as they would over one TCP connection.
//!
//! The wrappers sit between the actors and the simulated devices: the simulation stays the
//! truth the invariants are checked against.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use gridvisor_actors::config::Topology;
use gridvisor_actors::device::{
    relay_id, ChargerIo, ChargerReading, DeviceError, InverterIo, InverterReading, KnownSetpoint,
    MeterIo, MeterReading, RelayIo,
};
use gridvisor_actors::io::ocpp::OCPP_CALL_TIMEOUT;
use gridvisor_actors::runtime::shared::Devices;
use gridvisor_actors::setpoint::SetpointKey;
use serde::Serialize;

/// How long a call to a device that times out hangs before it fails.
pub const INJECTED_TIMEOUT: Duration = Duration::from_secs(2);
/// The exception a device answers with (Modbus exception 0x04, server device failure).
pub const INJECTED_EXCEPTION: &str = "Modbus exception 0x04 (server device failure)";
/// The prefix of every injected panic's message.
pub const PANIC_PREFIX: &str = "chaos: injected panic";
/// The longest delay a slow peer may be given (a scenario asking for more is refused).
pub const MAX_PEER_DELAY: Duration = Duration::from_secs(60);

/// How a device behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// It answers truthfully.
    Healthy,
    /// It refuses every request with an exception.
    Exception,
    /// It does not answer.
    Timeout,
    /// It answers with values that are not valid.
    Garbage,
    /// Its connection is gone: every call fails at once.
    Disconnected,
    /// It never answers: a call waits, without an answer or an error, until the device
    /// leaves this mode (the call then fails as unreachable). Only the caller's own deadline
    /// ends it sooner. A charger that hangs is not "responsive" to the invariants.
    Hung,
}

/// The fault state of one device.
#[derive(Debug)]
pub struct Switch {
    id: String,
    /// How it behaves (a watch: a hung call waits for the mode to change).
    mode: tokio::sync::watch::Sender<Mode>,
    panics: AtomicU64,
    /// Garbage answers so far (which kind of garbage comes next).
    garbage: AtomicU64,
    /// Extra load a meter measures, kW (f64 bits).
    extra_kw: AtomicU64,
    /// The next write's answer is lost (it raced a disconnect): the write lands, the caller
    /// hears "unreachable".
    lose_next_answer: AtomicBool,
    /// A slow peer's round trip, ms (0: answers at once).
    delay_ms: AtomicU64,
    /// When the last delayed write lands on the device (later writes land after it).
    last_arrival: Mutex<Option<tokio::time::Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Switch {
    fn new(id: &str) -> Self {
        Switch {
            id: id.to_owned(),
            mode: tokio::sync::watch::Sender::new(Mode::Healthy),
            panics: AtomicU64::new(0),
            garbage: AtomicU64::new(0),
            extra_kw: AtomicU64::new(0f64.to_bits()),
            lose_next_answer: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            last_arrival: Mutex::new(None),
        }
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Set how the device behaves.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// How the device behaves now.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// A call to a hung device: no answer until it is no longer hung, then unreachable.
    fn hung<T: Send + 'static>(&self) -> BoxFuture<'static, Result<T, DeviceError>> {
        let mut rx = self.mode.subscribe();
        let err = self.unreachable();
        Box::pin(async move {
            let _ = rx.wait_for(|m| *m != Mode::Hung).await;
            Err(err)
        })
    }

    /// Make the next `count` calls panic.
    pub fn arm_panics(&self, count: u64) {
        self.panics.store(count, Ordering::Release);
    }

    /// Panics still armed.
    pub fn panics_left(&self) -> u64 {
        self.panics.load(Ordering::Acquire)
    }

    /// Add `kw` of uncontrolled load to what a meter measures (0: none).
    pub fn set_extra_kw(&self, kw: f64) {
        self.extra_kw.store(kw.to_bits(), Ordering::Release);
    }

    /// The extra load, kW.
    pub fn extra_kw(&self) -> f64 {
        f64::from_bits(self.extra_kw.load(Ordering::Acquire))
    }

    /// The connection drops: every call fails at once, and the next write, which raced the
    /// drop, reaches the device while its answer is lost.
    pub fn disconnect(&self) {
        self.lose_next_answer.store(true, Ordering::Release);
        self.set_mode(Mode::Disconnected);
    }

    /// The connection is back.
    pub fn reconnect(&self) {
        self.lose_next_answer.store(false, Ordering::Release);
        self.set_mode(Mode::Healthy);
    }

    /// Make every call take `delay` to answer (zero: a prompt peer again). At most
    /// [`MAX_PEER_DELAY`]; a longer one is that.
    pub fn set_delay(&self, delay: Duration) {
        let ms = delay.min(MAX_PEER_DELAY).as_millis() as u64;
        self.delay_ms.store(ms, Ordering::Release);
    }

    /// A slow peer's round trip (zero when it answers at once).
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Acquire))
    }

    /// When a write sent now lands: after half the round trip, and never before a write sent
    /// earlier (one connection delivers in order). None when it lands at once.
    fn arrival(&self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let mut last = lock(&self.last_arrival);
        let delay = self.delay();
        let pending = last.is_some_and(|l| l >= now);
        if delay.is_zero() && !pending {
            return None;
        }
        let mut at = now + delay / 2;
        if let Some(l) = *last {
            at = at.max(l + Duration::from_millis(1));
        }
        *last = Some(at);
        Some(at)
    }

    /// Called before every call: panics if armed, and says how to answer.
    fn enter(&self, call: &str) -> Mode {
        let armed = self
            .panics
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if armed {
            panic!("{PANIC_PREFIX} in {}.{call}", self.id);
        }
        self.mode()
    }

    /// The next garbage answer: even ones are an error naming the bad value, odd ones are
    /// readings whose numbers are not numbers.
    fn garbage_is_error(&self) -> bool {
        self.garbage.fetch_add(1, Ordering::AcqRel) % 2 == 0
    }

    fn exception(&self) -> DeviceError {
        DeviceError::Refused {
            device: self.id.clone(),
            reason: INJECTED_EXCEPTION.to_owned(),
        }
    }

    fn unreachable(&self) -> DeviceError {
        DeviceError::Unreachable {
            device: self.id.clone(),
        }
    }

    fn bad_value(&self, field: &'static str) -> DeviceError {
        DeviceError::BadValue {
            device: self.id.clone(),
            field,
            value: "0xFFFF (not implemented)".to_owned(),
        }
    }
}

/// A device connection with a [`Switch`] in front of it.
pub struct Faulty<D: ?Sized> {
    inner: Arc<D>,
    switch: Arc<Switch>,
}

async fn hang<T>(err: DeviceError) -> Result<T, DeviceError> {
    tokio::time::sleep(INJECTED_TIMEOUT).await;
    Err(err)
}

impl ChargerIo for Faulty<dyn ChargerIo> {
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<ChargerReading, DeviceError>> {
        let sw = &self.switch;
        match sw.enter("read") {
            Mode::Healthy if !sw.delay().is_zero() => Box::pin(async move {
                let delay = sw.delay();
                if delay > OCPP_CALL_TIMEOUT {
                    return hang_for(OCPP_CALL_TIMEOUT, sw.unreachable()).await;
                }
                tokio::time::sleep(delay / 2).await;
                let r = self.inner.read(now + delay / 2).await;
                tokio::time::sleep(delay - delay / 2).await;
                r
            }),
            Mode::Healthy => self.inner.read(now),
            Mode::Disconnected => Box::pin(std::future::ready(Err(sw.unreachable()))),
            Mode::Exception => Box::pin(std::future::ready(Err(sw.exception()))),
            Mode::Timeout => Box::pin(hang(sw.unreachable())),
            Mode::Hung => sw.hung(),
            Mode::Garbage if sw.garbage_is_error() => {
                Box::pin(std::future::ready(Err(sw.bad_value("power_kw"))))
            }
            Mode::Garbage => Box::pin(async move {
                let r = self.inner.read(now).await?;
                Ok(garbage_charger(r))
            }),
        }
    }

    fn write(
        &self,
        key: SetpointKey,
        kw: f64,
        lease_until: Option<Duration>,
        now: Duration,
    ) -> BoxFuture<'_, Result<ChargerReading, DeviceError>> {
        let sw = &self.switch;
        match sw.enter("write") {
            Mode::Healthy => match sw.arrival() {
                None => self.inner.write(key, kw, lease_until, now),
                Some(at) => self.slow_write(at, key, kw, lease_until, now),
            },
            Mode::Disconnected if sw.lose_next_answer.swap(false, Ordering::AcqRel) => {
                Box::pin(async move {
                    // The write went out as the connection dropped: the charger has it.
                    let _ = self.inner.write(key, kw, lease_until, now).await;
                    Err(sw.unreachable())
                })
            }
            Mode::Disconnected => Box::pin(std::future::ready(Err(sw.unreachable()))),
            Mode::Exception => Box::pin(std::future::ready(Err(sw.exception()))),
            Mode::Timeout => Box::pin(hang(sw.unreachable())),
            Mode::Hung => sw.hung(),
            // The write reaches the device; what comes back is garbage.
            Mode::Garbage if sw.garbage_is_error() => Box::pin(async move {
                self.inner.write(key, kw, lease_until, now).await?;
                Err(sw.bad_value("setpoint_kw"))
            }),
            Mode::Garbage => Box::pin(async move {
                let r = self.inner.write(key, kw, lease_until, now).await?;
                Ok(garbage_charger(r))
            }),
        }
    }

    /// The safe-state override passes the switch like a write does (a slow peer delivers it
    /// in order with the writes before it).
    fn write_safe(
        &self,
        kw: f64,
        known: Option<KnownSetpoint>,
        now: Duration,
    ) -> BoxFuture<'_, Result<(), DeviceError>> {
        let sw = &self.switch;
        match sw.enter("write") {
            Mode::Healthy => match sw.arrival() {
                None => self.inner.write_safe(kw, known, now),
                Some(at) => self.slow(at, now, move |inner, on_device| {
                    Box::pin(async move { inner.write_safe(kw, known, on_device).await })
                }),
            },
            Mode::Disconnected if sw.lose_next_answer.swap(false, Ordering::AcqRel) => {
                Box::pin(async move {
                    let _ = self.inner.write_safe(kw, known, now).await;
                    Err(sw.unreachable())
                })
            }
            Mode::Disconnected => Box::pin(std::future::ready(Err(sw.unreachable()))),
            Mode::Exception => Box::pin(std::future::ready(Err(sw.exception()))),
            Mode::Timeout => Box::pin(hang(sw.unreachable())),
            Mode::Hung => sw.hung(),
            Mode::Garbage => Box::pin(async move {
                self.inner.write_safe(kw, known, now).await?;
                Err(sw.bad_value("setpoint_kw"))
            }),
        }
    }
}

impl Faulty<dyn ChargerIo> {
    /// A slow peer's write: it lands on the device at `at` whether or not the caller still
    /// waits (a CSMS that timed out does not take back what it sent); the answer comes back
    /// as long after that again, or the call fails at [`OCPP_CALL_TIMEOUT`].
    fn slow_write(
        &self,
        at: tokio::time::Instant,
        key: SetpointKey,
        kw: f64,
        lease_until: Option<Duration>,
        now: Duration,
    ) -> BoxFuture<'_, Result<ChargerReading, DeviceError>> {
        self.slow(at, now, move |inner, on_device| {
            Box::pin(async move { inner.write(key, kw, lease_until, on_device).await })
        })
    }

    /// A slow peer's call that lands on the device at `at` (`land`, given the device's time
    /// then) whether or not the caller still waits (a CSMS that timed out does not take back
    /// what it sent); the answer comes back as long after that again, or the call fails at
    /// [`OCPP_CALL_TIMEOUT`].
    fn slow<T: Send + 'static>(
        &self,
        at: tokio::time::Instant,
        now: Duration,
        land: impl FnOnce(Arc<dyn ChargerIo>, Duration) -> BoxFuture<'static, Result<T, DeviceError>>
            + Send
            + 'static,
    ) -> BoxFuture<'_, Result<T, DeviceError>> {
        let sent = tokio::time::Instant::now();
        let inner = self.inner.clone();
        let landed = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let on_device = now + at.saturating_duration_since(sent);
            land(inner, on_device).await
        });
        let sw = &self.switch;
        Box::pin(async move {
            let back = at.saturating_duration_since(sent);
            let answer_at = at + back.min(sw.delay() / 2);
            let deadline = sent + OCPP_CALL_TIMEOUT;
            if answer_at > deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(sw.unreachable());
            }
            let r = landed.await.map_err(|_| sw.unreachable())?;
            tokio::time::sleep_until(answer_at).await;
            r
        })
    }
}

async fn hang_for<T>(d: Duration, err: DeviceError) -> Result<T, DeviceError> {
    tokio::time::sleep(d).await;
    Err(err)
}

fn garbage_charger(r: ChargerReading) -> ChargerReading {
    ChargerReading {
        power_kw: f64::NAN,
        energy_kwh: f64::NAN,
        setpoint_kw: f64::INFINITY,
        ..r
    }
}

impl InverterIo for Faulty<dyn InverterIo> {
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<InverterReading, DeviceError>> {
        let sw = &self.switch;
        match sw.enter("read") {
            Mode::Healthy => self.inner.read(now),
            Mode::Exception => Box::pin(std::future::ready(Err(sw.exception()))),
            Mode::Timeout => Box::pin(hang(sw.unreachable())),
            Mode::Hung => sw.hung(),
            Mode::Disconnected => Box::pin(std::future::ready(Err(sw.unreachable()))),
            Mode::Garbage if sw.garbage_is_error() => {
                Box::pin(std::future::ready(Err(sw.bad_value("core_c"))))
            }
            Mode::Garbage => Box::pin(async move {
                // The device is there (an unreachable one fails as such); its values are not.
                self.inner.read(now).await?;
                Ok(InverterReading {
                    power_kw: f64::NAN,
                    core_c: f64::NAN,
                    setpoint_kw: f64::NAN,
                })
            }),
        }
    }

    fn write(&self, kw: f64, now: Duration) -> BoxFuture<'_, Result<InverterReading, DeviceError>> {
        let sw = &self.switch;
        match sw.enter("write") {
            Mode::Healthy => self.inner.write(kw, now),
            Mode::Exception => Box::pin(std::future::ready(Err(sw.exception()))),
            Mode::Timeout => Box::pin(hang(sw.unreachable())),
            Mode::Hung => sw.hung(),
            Mode::Disconnected => Box::pin(std::future::ready(Err(sw.unreachable()))),
            Mode::Garbage => Box::pin(async move {
                self.inner.write(kw, now).await?;
                Err(sw.bad_value("setpoint_kw"))
            }),
        }
    }
}

impl MeterIo for Faulty<dyn MeterIo> {
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<MeterReading, DeviceError>> {
        let sw = &self.switch;
        match sw.enter("read") {
            Mode::Healthy => Box::pin(async move {
                let mut r = self.inner.read(now).await?;
                r.power_kw += sw.extra_kw();
                Ok(r)
            }),
            Mode::Exception => Box::pin(std::future::ready(Err(sw.exception()))),
            Mode::Timeout => Box::pin(hang(sw.unreachable())),
            Mode::Hung => sw.hung(),
            Mode::Disconnected => Box::pin(std::future::ready(Err(sw.unreachable()))),
            Mode::Garbage if sw.garbage_is_error() => {
                Box::pin(std::future::ready(Err(sw.bad_value("voltage_pu"))))
            }
            Mode::Garbage => Box::pin(std::future::ready(Ok(MeterReading {
                power_kw: f64::NAN,
                voltage_pu: f64::NAN,
                frequency_hz: f64::NAN,
            }))),
        }
    }
}

/// A trip relay's I/O module that fails: an exception refuses the command, a timeout hangs
/// it, a dropped connection fails it at once, garbage is a write that lands while its answer
/// is not understood (the relay moves; the caller hears an error).
impl RelayIo for Faulty<dyn RelayIo> {
    fn set_open(&self, open: bool, now: Duration) -> BoxFuture<'_, Result<(), DeviceError>> {
        let sw = &self.switch;
        match sw.enter("set_open") {
            Mode::Healthy => self.inner.set_open(open, now),
            Mode::Exception => Box::pin(std::future::ready(Err(sw.exception()))),
            Mode::Timeout => Box::pin(hang(sw.unreachable())),
            Mode::Disconnected => Box::pin(std::future::ready(Err(sw.unreachable()))),
            Mode::Hung => sw.hung(),
            Mode::Garbage => Box::pin(async move {
                self.inner.set_open(open, now).await?;
                Err(sw.bad_value("coil"))
            }),
        }
    }

    fn is_open(&self, now: Duration) -> BoxFuture<'_, Result<bool, DeviceError>> {
        let sw = &self.switch;
        match sw.enter("is_open") {
            Mode::Healthy => self.inner.is_open(now),
            Mode::Exception => Box::pin(std::future::ready(Err(sw.exception()))),
            Mode::Timeout => Box::pin(hang(sw.unreachable())),
            Mode::Disconnected => Box::pin(std::future::ready(Err(sw.unreachable()))),
            Mode::Hung => sw.hung(),
            Mode::Garbage => Box::pin(std::future::ready(Err(sw.bad_value("coil")))),
        }
    }
}

/// The switches of every device of a site, by device id.
#[derive(Debug, Clone, Default)]
pub struct Switches {
    by_id: BTreeMap<String, Arc<Switch>>,
}

impl Switches {
    /// One healthy switch per charger, inverter, meter and trip relay (id
    /// [`relay_id`]: `<segment>/trip`) of `topology`.
    pub fn new(topology: &Topology) -> Self {
        let mut by_id = BTreeMap::new();
        for (_, seg) in topology.segments() {
            if seg.trip.is_some() {
                let id = relay_id(&seg.id);
                by_id.insert(id.clone(), Arc::new(Switch::new(&id)));
            }
            let ids = seg
                .chargers
                .iter()
                .map(|c| &c.id)
                .chain(seg.inverters.iter().map(|i| &i.id))
                .chain(seg.meters.iter().map(|m| &m.id));
            for id in ids {
                by_id.insert(id.clone(), Arc::new(Switch::new(id)));
            }
        }
        Switches { by_id }
    }

    /// The switch of device `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<Switch>> {
        self.by_id.get(id)
    }

    /// Put every connection of `devices` that has a switch behind it.
    pub fn wrap(&self, mut devices: Devices) -> Devices {
        for (id, io) in devices.chargers.iter_mut() {
            if let Some(sw) = self.by_id.get(id) {
                *io = Arc::new(Faulty {
                    inner: io.clone(),
                    switch: sw.clone(),
                });
            }
        }
        for (id, io) in devices.inverters.iter_mut() {
            if let Some(sw) = self.by_id.get(id) {
                *io = Arc::new(Faulty {
                    inner: io.clone(),
                    switch: sw.clone(),
                });
            }
        }
        for (id, io) in devices.meters.iter_mut() {
            if let Some(sw) = self.by_id.get(id) {
                *io = Arc::new(Faulty {
                    inner: io.clone(),
                    switch: sw.clone(),
                });
            }
        }
        for (segment, io) in devices.relays.iter_mut() {
            if let Some(sw) = self.by_id.get(&relay_id(segment)) {
                *io = Arc::new(Faulty {
                    inner: io.clone(),
                    switch: sw.clone(),
                });
            }
        }
        devices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridvisor_actors::device::{Battery, SimCharger, SimMeter};

    fn charger() -> (Arc<SimCharger>, Faulty<dyn ChargerIo>, Arc<Switch>) {
        let sim = Arc::new(SimCharger::new("c", 22.0, true));
        sim.plug(
            Battery {
                capacity_kwh: 50.0,
                soc_pct: 50.0,
                max_kw: 11.0,
            },
            Duration::ZERO,
        );
        let sw = Arc::new(Switch::new("c"));
        let f = Faulty {
            inner: sim.clone() as Arc<dyn ChargerIo>,
            switch: sw.clone(),
        };
        (sim, f, sw)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn each_mode_answers_as_a_failing_device_does() {
        let (sim, f, sw) = charger();
        let now = Duration::ZERO;
        assert!(f.read(now).await.unwrap().connected);
        sw.set_mode(Mode::Exception);
        assert!(matches!(
            f.read(now).await,
            Err(DeviceError::Refused { .. })
        ));
        assert!(f
            .write(SetpointKey::new(1, 0), 5.0, None, now)
            .await
            .is_err());
        assert_eq!(sim.writes(), 0, "an exception writes nothing");
        sw.set_mode(Mode::Timeout);
        let t0 = tokio::time::Instant::now();
        assert!(matches!(
            f.read(now).await,
            Err(DeviceError::Unreachable { .. })
        ));
        assert_eq!(t0.elapsed(), INJECTED_TIMEOUT);
        sw.set_mode(Mode::Garbage);
        assert!(matches!(
            f.read(now).await,
            Err(DeviceError::BadValue { .. })
        ));
        assert!(f.read(now).await.unwrap().power_kw.is_nan());
        sw.set_mode(Mode::Healthy);
        assert!(f.read(now).await.unwrap().power_kw.is_finite());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_disconnect_fails_at_once_and_the_write_that_raced_it_lands() {
        let (sim, f, sw) = charger();
        sw.disconnect();
        let t0 = tokio::time::Instant::now();
        let lost = f
            .write(SetpointKey::new(1, 0), 5.0, None, Duration::ZERO)
            .await;
        assert!(matches!(lost, Err(DeviceError::Unreachable { .. })));
        assert_eq!(sim.writes(), 1, "the racing write reached the charger");
        assert_eq!(sim.setpoint_kw(), 5.0);
        let next = f
            .write(SetpointKey::new(2, 0), 7.0, None, Duration::ZERO)
            .await;
        assert!(matches!(next, Err(DeviceError::Unreachable { .. })));
        assert!(f.read(Duration::ZERO).await.is_err());
        assert_eq!(
            sim.writes(),
            1,
            "nothing more reaches a disconnected charger"
        );
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "a closed socket fails at once"
        );
        sw.reconnect();
        let r = f.read(Duration::ZERO).await.unwrap();
        assert_eq!(r.applied, Some(SetpointKey::new(1, 0)));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_slow_peer_answers_late_and_applies_what_timed_out_in_order() {
        let (sim, f, sw) = charger();
        sw.set_delay(Duration::from_millis(800));
        let t0 = tokio::time::Instant::now();
        let r = f
            .write(SetpointKey::new(1, 0), 4.0, None, Duration::ZERO)
            .await;
        assert_eq!(r.unwrap().applied, Some(SetpointKey::new(1, 0)));
        assert_eq!(t0.elapsed(), Duration::from_millis(800));
        let t0 = tokio::time::Instant::now();
        f.read(Duration::ZERO).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(800));

        // Longer than the CSMS waits: the call fails at its timeout, the write lands later.
        sw.set_delay(Duration::from_secs(14));
        let t0 = tokio::time::Instant::now();
        let r = f
            .write(SetpointKey::new(2, 0), 6.0, None, Duration::ZERO)
            .await;
        assert!(matches!(r, Err(DeviceError::Unreachable { .. })));
        assert_eq!(t0.elapsed(), OCPP_CALL_TIMEOUT);
        assert_eq!(sim.setpoint_kw(), 4.0, "not landed yet (7 s on the way)");
        // The peer is prompt again; a newer write sent now still lands after the older one.
        sw.set_delay(Duration::ZERO);
        let r = f
            .write(SetpointKey::new(3, 0), 8.0, None, Duration::ZERO)
            .await;
        assert_eq!(r.unwrap().setpoint_kw, 8.0);
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(7) + Duration::from_millis(1)
        );
        assert_eq!(sim.writes(), 3);
        assert_eq!(sim.older_writes(), 0, "one connection delivers in order");
        assert_eq!(sim.setpoint_kw(), 8.0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn armed_panics_fire_that_many_times() {
        let (_, f, sw) = charger();
        sw.arm_panics(2);
        for _ in 0..2 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                drop(f.read(Duration::ZERO));
            }));
            let msg = r.unwrap_err();
            let text = msg.downcast_ref::<String>().unwrap();
            assert!(text.starts_with(PANIC_PREFIX), "{text}");
        }
        assert_eq!(sw.panics_left(), 0);
        assert!(f.read(Duration::ZERO).await.is_ok());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_meter_measures_the_extra_load() {
        let topology = gridvisor_actors::config::demo();
        let site = gridvisor_actors::device::SimSite::new(&topology);
        let meter: Arc<SimMeter> = site.meters["meter-1"].clone();
        let sw = Arc::new(Switch::new("meter-1"));
        let f = Faulty {
            inner: meter as Arc<dyn MeterIo>,
            switch: sw.clone(),
        };
        let base = f.read(Duration::ZERO).await.unwrap().power_kw;
        sw.set_extra_kw(40.0);
        let more = f.read(Duration::ZERO).await.unwrap().power_kw;
        assert!((more - base - 40.0).abs() < 1e-9);
    }
}
