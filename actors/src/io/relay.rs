//! A segment's hard trip output: a relay or breaker behind a Modbus I/O module
//! ([`ModbusRelay`], a [`RelayIo`] on `gridvisor_transports`' [`ModbusClient`]), and
//! [`RelayOutput`], how the safety actor drives it.
//!
//! # Why
//!
//! Tripped writes 0 kW to every device, but a device that cannot be commanded (a charger whose
//! OCPP connection dropped, one that answers after 12 s) keeps exporting. A protection
//! controller that trips opens a breaker: then nothing behind it exports, whatever it was told.
//!
//! # Polarity
//!
//! The coil is the **trip command**: on (1, function 0x05 value 0xFF00) = trip asserted, the
//! breaker open; off (0) = trip released, the breaker may close. Wire the module's output to
//! the breaker's shunt-trip (or an undervoltage release through a normally closed contact);
//! either way "on" must mean "open". A node that is not running asserts nothing: the lease of
//! every setpoint and the devices' own fallbacks cover that case, not the relay.
//!
//! # Driving it
//!
//! - Tripped asserts the trip at once and re-asserts it on every safety tick while Tripped
//!   (an I/O module that restarted, or someone who closed the breaker by hand, gets it again
//!   within a tick).
//! - The trip is released only when the lockout ends (an operator's reset or the configured
//!   automatic reclose: the transition out of Tripped). A node that starts without a recorded
//!   lockout leaves the coil as it finds it: it never closes a breaker that it did not open.
//! - Each command runs in its own task, bounded by [`RELAY_COMMAND_DEADLINE`]; the safety
//!   actor never waits for it. One command is in flight at a time: a tick that finds the same
//!   command still on its way sends nothing more; a different command replaces it (the newest
//!   level wins; the client drops a request cancelled half-way with its connection).
//! - A command that fails is counted (`gridvisor_trip_relay_failures_total`) and logged
//!   (a warning when the relay stops answering, then at debug level until it answers again,
//!   so a dead module does not flood the log at the tick rate) and is retried on the next
//!   tick while Tripped. `gridvisor_trip_relay_open` says what the relay last acknowledged.
//!
//! # Errors
//!
//! A Modbus exception is [`DeviceError::Refused`] naming it; anything else (no connection, a
//! time-out, back-off after a failure) is [`DeviceError::Unreachable`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use gridvisor_transports::modbus::{ClientConfig, Keepalive, ModbusClient, ModbusError};
use prometheus::{Gauge, IntCounter};
use tokio::task::JoinHandle;

use crate::config::CoilEndpoint;
use crate::device::{DeviceError, RelayIo};
use crate::ladder::SafeState;

/// Time allowed to open the connection to the I/O module.
pub const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for one request's answer.
pub const RELAY_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// The client's first back-off after a failure.
pub const RELAY_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// The client's back-off never exceeds this: a module that comes back is written again
/// within it (the trip is re-asserted every tick, so a long back-off would only delay it).
pub const RELAY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Requests in flight or queued for the module.
pub const RELAY_MAX_IN_FLIGHT: usize = 2;
/// How long one command (connect, write, answer) may take in all before its task gives up
/// and counts a failure.
pub const RELAY_COMMAND_DEADLINE: Duration = Duration::from_secs(2);

/// The client configuration of the I/O module at `endpoint` (the limits above).
pub fn client_config(endpoint: &CoilEndpoint) -> ClientConfig {
    let mut c = ClientConfig::new(endpoint.addr);
    c.unit_id = endpoint.unit;
    c.connect_timeout = RELAY_CONNECT_TIMEOUT;
    c.request_timeout = RELAY_REQUEST_TIMEOUT;
    c.backoff_initial = RELAY_BACKOFF_INITIAL;
    c.backoff_max = RELAY_BACKOFF_MAX;
    c.max_in_flight = RELAY_MAX_IN_FLIGHT;
    c.nodelay = true;
    c.keepalive = Some(Keepalive::default());
    c
}

/// A trip relay behind one coil of a Modbus TCP I/O module.
pub struct ModbusRelay {
    id: String,
    coil: u16,
    client: ModbusClient,
}

impl ModbusRelay {
    /// The relay `id` at `endpoint`; connects on its first command (never fails here).
    pub fn new(id: &str, endpoint: &CoilEndpoint) -> Self {
        ModbusRelay {
            id: id.to_owned(),
            coil: endpoint.coil,
            client: ModbusClient::new(client_config(endpoint)),
        }
    }

    fn error(&self, e: ModbusError) -> DeviceError {
        match e {
            ModbusError::Exception { .. } => DeviceError::Refused {
                device: self.id.clone(),
                reason: e.to_string(),
            },
            other => {
                tracing::debug!(relay = %self.id, error = %other, "trip relay: no answer");
                DeviceError::Unreachable {
                    device: self.id.clone(),
                }
            }
        }
    }
}

impl RelayIo for ModbusRelay {
    fn set_open(&self, open: bool, _now: Duration) -> BoxFuture<'_, Result<(), DeviceError>> {
        Box::pin(async move {
            let written = self.client.write_single_coil(self.coil, open).await;
            written.map_err(|e| self.error(e))
        })
    }

    fn is_open(&self, _now: Duration) -> BoxFuture<'_, Result<bool, DeviceError>> {
        Box::pin(async move {
            let coils = self.client.read_coils(self.coil, 1).await;
            let coils = coils.map_err(|e| self.error(e))?;
            coils.first().copied().ok_or_else(|| DeviceError::BadValue {
                device: self.id.clone(),
                field: "coil",
                value: "no coil in the answer".to_owned(),
            })
        })
    }
}

/// What the relay last acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Nothing acknowledged yet.
    Unknown,
    /// The trip is asserted (the breaker open).
    Open,
    /// The trip is released.
    Closed,
}

/// A segment's trip output as the safety actor drives it (see the module's documentation).
pub struct RelayOutput {
    segment: String,
    io: Arc<dyn RelayIo>,
    failures: IntCounter,
    open: Gauge,
    /// Set while commands fail (a warning when it starts, info when it ends).
    failing: Arc<AtomicBool>,
    in_flight: Option<(bool, JoinHandle<()>)>,
}

impl RelayOutput {
    /// The output of `segment` through `io`, counting into the two metrics given (already
    /// labelled with the segment).
    pub fn new(segment: &str, io: Arc<dyn RelayIo>, failures: IntCounter, open: Gauge) -> Self {
        open.set(f64::NAN);
        RelayOutput {
            segment: segment.to_owned(),
            io,
            failures,
            open,
            failing: Arc::new(AtomicBool::new(false)),
            in_flight: None,
        }
    }

    /// What the relay last acknowledged.
    pub fn state(&self) -> RelayState {
        let v = self.open.get();
        if v == 1.0 {
            RelayState::Open
        } else if v == 0.0 {
            RelayState::Closed
        } else {
            RelayState::Unknown
        }
    }

    /// Follow the segment's `level` at `now`: Tripped asserts the trip (every call: the
    /// safety actor calls this on every tick and every transition); leaving Tripped
    /// (`from` is the level a transition left) releases it, and a release not acknowledged
    /// yet is sent again on the next call. Never waits for the relay.
    pub fn follow(&mut self, level: SafeState, from: Option<SafeState>, now: Duration) {
        let releasing = self.in_flight.as_ref().is_some_and(|(open, _)| !open);
        if level == SafeState::Tripped {
            self.command(true, now);
        } else if from == Some(SafeState::Tripped)
            || (releasing && self.state() != RelayState::Closed)
        {
            self.command(false, now);
        }
    }

    fn command(&mut self, open: bool, now: Duration) {
        if let Some((want, task)) = &self.in_flight {
            if !task.is_finished() {
                if *want == open {
                    return;
                }
                task.abort();
            }
        }
        let task = tokio::spawn(self.send(open, now));
        self.in_flight = Some((open, task));
    }

    fn send(&self, open: bool, now: Duration) -> impl std::future::Future<Output = ()> + 'static {
        let io = self.io.clone();
        let (failures, gauge) = (self.failures.clone(), self.open.clone());
        let (segment, failing) = (self.segment.clone(), self.failing.clone());
        let what = if open { "assert" } else { "release" };
        async move {
            let error =
                match tokio::time::timeout(RELAY_COMMAND_DEADLINE, io.set_open(open, now)).await {
                    Ok(Ok(())) => {
                        gauge.set(if open { 1.0 } else { 0.0 });
                        if failing.swap(false, Ordering::AcqRel) {
                            tracing::info!(%segment, "trip relay answers again");
                        }
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {RELAY_COMMAND_DEADLINE:?}"),
                };
            failures.inc();
            if failing.swap(true, Ordering::AcqRel) {
                tracing::debug!(%segment, %error, "trip relay: could not {what} the trip");
            } else {
                tracing::warn!(%segment, %error, "trip relay: could not {what} the trip; retried every safety tick while tripped");
            }
        }
    }
}
