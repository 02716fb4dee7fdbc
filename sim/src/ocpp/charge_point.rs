//! A simulated charge point: an OCPP client (on `gridvisor_transports::ocpp::client`) with a
//! vehicle behind it, driven by one connection task, with physics stepped by the owner
//! ([`ChargePoint::step`], injectable time) or by [`ChargePoint::spawn_realtime_driver`].
//!
//! Per connection: BootNotification (retried at the CSMS's interval until Accepted),
//! StatusNotification, then Heartbeat at the interval the CSMS returned and meter values
//! (TransactionEvent(Updated) during a transaction, MeterValues otherwise) at the meter
//! interval. Plug-in sends Authorize and TransactionEvent(Started); unplug sends Ended. The
//! CSMS's CALLs are answered by [`super::answers`] on a separate task, so a slow answer to one
//! of ours never delays an answer of theirs.
//!
//! Invariants:
//! - when the connection drops, the charger keeps delivering power on its offline limit (and
//!   on profiles 2.1 lets it keep offline) and reconnects with exponential backoff from
//!   [`ChargePointConfig::reconnect_initial`] to [`ChargePointConfig::reconnect_max`];
//! - every reconnect boots again (reason `PowerUp` first, `RemoteReset` after a Reset,
//!   `Unknown` after a drop);
//! - events go to a bounded broadcast channel ([`ChargePointConfig::event_capacity`]); a
//!   receiver that lags loses the oldest, the charger never blocks on it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use gridvisor_transports::ocpp::client::{connect, ClientConfig};
use gridvisor_transports::ocpp::connection::{CallError, Connection, IncomingCall};
use gridvisor_transports::ocpp::frame::{ErrorCode, RpcError};
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::OcppVersion;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::answers::{self, Effect, FollowUp};
use super::fault::{bad_meter_values, Fault, FaultError};
use super::profile::{Installed, ProfileSet};
use super::reports;
use super::state::{SimState, Transaction};
use super::vehicle::{EnergyRegister, EvNeeds, Vehicle};

/// Default meter value interval.
pub const DEFAULT_METER_INTERVAL: Duration = Duration::from_secs(60);
/// Heartbeat interval used until the CSMS names one.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(300);
/// Default first reconnect delay.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_secs(1);
/// Default longest reconnect delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default capacity of the event channel.
pub const DEFAULT_EVENT_CAPACITY: usize = 256;
/// Capacity of the control channel to the connection task.
pub const CONTROL_QUEUE_CAPACITY: usize = 16;
/// How long the simulated charger lets the engine hold a CSMS CALL before the engine answers
/// for it: above OCPP's usual 30 s CALL timeout, so [`Fault::Hang`] looks like a hang to the
/// CSMS.
pub const SIM_HANDLER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between answering a Reset and closing the connection, so the answer goes out first.
pub const RESET_ANSWER_GRACE: Duration = Duration::from_millis(100);
/// CALLs of the charge point's own that answers asked for (TriggerMessage, remote start and
/// stop, ReportChargingProfiles) waiting to be sent; more are dropped and reported.
pub const FOLLOW_UP_QUEUE: usize = 16;
/// The shortest heartbeat interval taken from a BootNotification answer (a CSMS answering 0
/// must not make the charger spin).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Everything a simulated charge point needs; every limit has a named default.
#[derive(Clone, Debug)]
pub struct ChargePointConfig {
    /// Where and how to connect (ws or wss, Basic auth, versions offered: 2.1 first by
    /// default). The simulator sets `rpc.handler_timeout` to [`SIM_HANDLER_TIMEOUT`] and turns
    /// `rpc.validate_outgoing` off (so [`Fault::BadValue`] can send a malformed payload; the
    /// typed messages it sends otherwise are built from the typed structs).
    pub client: ClientConfig,
    /// The EVSE id (≥ 1).
    pub evse_id: i32,
    /// Hardware power limit, kW.
    pub max_power_kw: f64,
    /// Charge power without a profile while connected, kW.
    pub default_limit_kw: f64,
    /// Charge power without a profile while disconnected, kW.
    pub offline_limit_kw: f64,
    /// Meter value interval ([`DEFAULT_METER_INTERVAL`]).
    pub meter_interval: Duration,
    /// First reconnect delay ([`DEFAULT_RECONNECT_INITIAL`]).
    pub reconnect_initial: Duration,
    /// Longest reconnect delay ([`DEFAULT_RECONNECT_MAX`]).
    pub reconnect_max: Duration,
    /// The id token presented at plug-in.
    pub id_token: String,
    /// Event channel capacity ([`DEFAULT_EVENT_CAPACITY`]).
    pub event_capacity: usize,
}

impl ChargePointConfig {
    /// A 22 kW charger on EVSE 1 with default limits of 11 kW online and 3.7 kW offline.
    pub fn new(client: ClientConfig) -> Self {
        let token = format!("TOKEN-{}", client.charge_point_id);
        ChargePointConfig {
            client,
            evse_id: 1,
            max_power_kw: 22.0,
            default_limit_kw: 11.0,
            offline_limit_kw: 3.7,
            meter_interval: DEFAULT_METER_INTERVAL,
            reconnect_initial: DEFAULT_RECONNECT_INITIAL,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            id_token: token.chars().take(36).collect(),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The EVSE id must be ≥ 1.
    #[error("evse_id {0} must be >= 1")]
    EvseId(i32),
    /// A power must be finite, ≥ 0, and the limits at most the hardware limit.
    #[error("{field} = {value} kW must be finite, >= 0 and <= max_power_kw")]
    Power {
        /// Which field.
        field: &'static str,
        /// The value.
        value: f64,
    },
    /// An interval or delay must be non-zero and the backoff ordered.
    #[error("{0} must be non-zero (and reconnect_initial <= reconnect_max)")]
    Interval(&'static str),
    /// The event channel needs room.
    #[error("event_capacity must be >= 1")]
    EventCapacity,
}

impl ChargePointConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.evse_id < 1 {
            return Err(ConfigError::EvseId(self.evse_id));
        }
        let max = self.max_power_kw;
        for (field, value, bound) in [
            ("max_power_kw", max, f64::MAX),
            ("default_limit_kw", self.default_limit_kw, max),
            ("offline_limit_kw", self.offline_limit_kw, max),
        ] {
            if !value.is_finite() || value < 0.0 || value > bound {
                return Err(ConfigError::Power { field, value });
            }
        }
        if self.meter_interval.is_zero() {
            return Err(ConfigError::Interval("meter_interval"));
        }
        if self.reconnect_initial.is_zero() || self.reconnect_initial > self.reconnect_max {
            return Err(ConfigError::Interval("reconnect_initial"));
        }
        if self.event_capacity == 0 {
            return Err(ConfigError::EventCapacity);
        }
        Ok(())
    }
}

/// What a simulated charge point reports (for tests, chaos runs and the demo).
#[derive(Debug, Clone, PartialEq)]
pub enum ChargePointEvent {
    /// Connected, speaking `version`.
    Connected(OcppVersion),
    /// Connecting failed; retrying after `retry_in`.
    ConnectFailed {
        /// The error.
        error: String,
        /// The backoff delay.
        retry_in: Duration,
    },
    /// BootNotification accepted (the `count`th boot of this charge point).
    Booted {
        /// Heartbeat interval the CSMS named.
        interval: Duration,
        /// Boots so far.
        count: u64,
    },
    /// The connection ended.
    Disconnected,
    /// A TransactionEvent(Started) was accepted.
    TransactionStarted(String),
    /// A CALL of ours failed (including a CALLERROR; `code` is then the peer's error code).
    CallFailed {
        /// The action.
        action: Action,
        /// The peer's error code, for a CALLERROR.
        code: Option<ErrorCode>,
        /// The error.
        error: String,
    },
    /// A CALL of ours succeeded.
    CallSucceeded(Action),
    /// A SetChargingProfile was answered.
    ProfileInstalled {
        /// Profile id.
        id: i32,
        /// What changed.
        change: Installed,
    },
    /// A SetChargingProfile was refused.
    ProfileRejected {
        /// Profile id.
        id: i32,
        /// Why.
        reason: String,
    },
    /// A CSMS CALL was answered with an injected CALLERROR ([`Fault::Reject`]).
    Rejected(Action),
    /// A CSMS CALL is held unanswered ([`Fault::Hang`]).
    Held(Action),
    /// The CSMS asked for a Reset; reconnecting.
    Reset,
    /// A TransactionEvent(Ended) was sent for a remote stop (the vehicle stays plugged in).
    TransactionStopped(String),
    /// A ClearChargingProfile was answered, having removed this many profiles.
    ProfilesCleared(usize),
    /// A follow-up CALL was dropped: [`FOLLOW_UP_QUEUE`] were waiting.
    FollowUpDropped,
}

enum Control {
    PlugIn,
    /// The vehicle left; its transaction, taken at once so a vehicle plugged in right after
    /// starts its own.
    Unplug(Option<Transaction>),
    FaultChanged,
    Stop,
}

/// A handle on a running simulated charge point (cheap to clone). Dropping every handle does
/// not stop it; call [`ChargePoint::stop`].
#[derive(Clone)]
pub struct ChargePoint {
    state: Arc<Mutex<SimState>>,
    control: mpsc::Sender<Control>,
    events: broadcast::Sender<ChargePointEvent>,
    /// Wakes the connection loop after SetVariables changed an interval.
    wake: Arc<Notify>,
    id: Arc<str>,
}

impl std::fmt::Debug for ChargePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargePoint")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a command to a charge point was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// A vehicle is already plugged in.
    #[error("a vehicle is already plugged in")]
    AlreadyPlugged,
    /// No vehicle is plugged in.
    #[error("no vehicle is plugged in")]
    NotPlugged,
    /// The fault's delay is beyond the limit.
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// The charge point's task has stopped.
    #[error("the charge point has stopped")]
    Stopped,
    /// The EV's needs are out of range.
    #[error("EV needs: {0}")]
    Needs(super::vehicle::VehicleError),
}

fn lock(state: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    // A panic while holding the lock cannot leave the state half-updated in a way worse than
    // stopping the simulation; keep going with what is there.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl ChargePoint {
    /// Starts the charge point's connection task; the simulated clock starts at `start`.
    pub fn start(
        config: ChargePointConfig,
        start: SystemTime,
    ) -> Result<(ChargePoint, JoinHandle<()>), ConfigError> {
        config.check()?;
        let state = SimState {
            now: start,
            vehicle: None,
            register: EnergyRegister::default(),
            power_kw: 0.0,
            profiles: ProfileSet::default(),
            max_power_kw: config.max_power_kw,
            default_limit_kw: config.default_limit_kw,
            offline_limit_kw: config.offline_limit_kw,
            offline_since: Some(start),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            meter_interval: config.meter_interval,
            fault: Fault::None,
            transaction: None,
            transactions_started: 0,
            profile_changes: 0,
            boots: 0,
        };
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE_CAPACITY);
        let (events, _) = broadcast::channel(config.event_capacity);
        let cp = ChargePoint {
            state: Arc::new(Mutex::new(state)),
            control,
            events,
            wake: Arc::new(Notify::new()),
            id: Arc::from(config.client.charge_point_id.as_str()),
        };
        let task = tokio::spawn(run(cp.clone(), config, control_rx));
        Ok((cp, task))
    }

    /// The charge point id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Subscribes to its events (from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<ChargePointEvent> {
        self.events.subscribe()
    }

    /// A copy of its state (vehicle, register, profiles, limits, simulated time).
    pub fn snapshot(&self) -> SimState {
        lock(&self.state).clone()
    }

    /// The read-back of the profile in force (see [`super::answers`]).
    pub fn applied_profile(&self) -> String {
        answers::applied_profile(&lock(&self.state))
    }

    /// Advances the physics by `dt` of simulated time.
    pub fn step(&self, dt: Duration) {
        lock(&self.state).step(dt);
    }

    /// Steps the physics every `tick` of real time, by the real time elapsed, until the
    /// returned task is aborted.
    pub fn spawn_realtime_driver(&self, tick: Duration) -> JoinHandle<()> {
        let cp = self.clone();
        let tick = tick.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut last = Instant::now();
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let now = Instant::now();
                cp.step(now - last);
                last = now;
            }
        })
    }

    /// Plugs a vehicle in: Authorize and TransactionEvent(Started) follow (once connected).
    pub fn plug_in(&self, vehicle: Vehicle) -> Result<(), CommandError> {
        self.plug_in_with_token(vehicle, None)
    }

    /// Plugs `vehicle` in; its driver presents `id_token` (None: the configured
    /// [`ChargePointConfig::id_token`]), so one charger can serve several drivers in turn.
    pub fn plug_in_with_token(
        &self,
        vehicle: Vehicle,
        id_token: Option<String>,
    ) -> Result<(), CommandError> {
        {
            let mut s = lock(&self.state);
            if s.vehicle.is_some() {
                return Err(CommandError::AlreadyPlugged);
            }
            s.vehicle = Some(vehicle);
            s.transactions_started += 1;
            let began_offline = s.offline_since.is_some();
            s.transaction = Some(Transaction {
                id: format!("{}-{}", self.id, s.transactions_started)
                    .chars()
                    .take(36)
                    .collect(),
                seq_no: 0,
                started_sent: false,
                began_offline,
                id_token: id_token.map(|t| t.chars().take(36).collect()),
                id_token_type: None,
                remote_start_id: None,
                needs: None,
            });
        }
        self.send(Control::PlugIn)
    }

    /// Plugs `vehicle` in with its driver's `id_token` and the EV's `needs`: once its
    /// transaction started, NotifyEVChargingNeeds follows (with V2X parameters on 2.1).
    pub fn plug_in_with_needs(
        &self,
        vehicle: Vehicle,
        id_token: Option<String>,
        needs: EvNeeds,
    ) -> Result<(), CommandError> {
        let needs = needs.check().map_err(CommandError::Needs)?;
        self.plug_in_with_token(vehicle, id_token)?;
        if let Some(t) = lock(&self.state).transaction.as_mut() {
            t.needs = Some(needs);
        }
        Ok(())
    }

    /// Unplugs the vehicle: TransactionEvent(Ended) follows.
    pub fn unplug(&self) -> Result<Vehicle, CommandError> {
        let (vehicle, transaction) = {
            let mut s = lock(&self.state);
            let vehicle = s.vehicle.take().ok_or(CommandError::NotPlugged)?;
            (vehicle, s.transaction.take())
        };
        self.send(Control::Unplug(transaction))?;
        Ok(vehicle)
    }

    /// Switches the injected fault (takes effect at once).
    pub fn set_fault(&self, fault: Fault) -> Result<(), CommandError> {
        let fault = fault.check()?;
        lock(&self.state).fault = fault;
        self.send(Control::FaultChanged)
    }

    /// Stops the connection task (the connection closes).
    pub fn stop(&self) -> Result<(), CommandError> {
        self.send(Control::Stop)
    }

    fn send(&self, c: Control) -> Result<(), CommandError> {
        self.control.try_send(c).map_err(|_| CommandError::Stopped)
    }

    fn emit(&self, e: ChargePointEvent) {
        let _ = self.events.send(e);
    }

    fn fault(&self) -> Fault {
        lock(&self.state).fault
    }
}

/// How a connection ended.
enum End {
    Stop,
    Reset,
    Dropped(Duration),
    Lost,
}

async fn run(cp: ChargePoint, config: ChargePointConfig, mut control: mpsc::Receiver<Control>) {
    let mut client = config.client.clone();
    client.rpc.handler_timeout = SIM_HANDLER_TIMEOUT;
    client.rpc.validate_outgoing = false;
    let mut backoff = config.reconnect_initial;
    let mut reason = BootReason::PowerUp;
    loop {
        let (conn, calls) = match connect(&client).await {
            Ok(c) => c,
            Err(e) => {
                cp.emit(ChargePointEvent::ConnectFailed {
                    error: e.to_string(),
                    retry_in: backoff,
                });
                if wait_or_stop(&mut control, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(config.reconnect_max);
                continue;
            }
        };
        backoff = config.reconnect_initial;
        lock(&cp.state).offline_since = None;
        cp.emit(ChargePointEvent::Connected(conn.info().version));
        let end = session(&cp, &config, &conn, calls, &mut control, reason).await;
        if matches!(end, End::Reset) {
            // Let the engine write the Reset answer before the close frame.
            tokio::time::sleep(RESET_ANSWER_GRACE).await;
        }
        conn.close();
        {
            let mut s = lock(&cp.state);
            s.offline_since = Some(s.now);
        }
        cp.emit(ChargePointEvent::Disconnected);
        match end {
            End::Stop => return,
            End::Reset => reason = BootReason::RemoteReset,
            End::Dropped(away) => {
                reason = BootReason::Unknown;
                if wait_or_stop(&mut control, away).await {
                    return;
                }
            }
            End::Lost => {
                reason = BootReason::Unknown;
                if wait_or_stop(&mut control, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(config.reconnect_max);
            }
        }
    }
}

/// Waits `d`; true when told to stop meanwhile (other commands take effect on reconnect).
async fn wait_or_stop(control: &mut mpsc::Receiver<Control>, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        tokio::select! {
            _ = sleep_until(deadline) => return false,
            c = control.recv() => match c {
                None | Some(Control::Stop) => return true,
                Some(_) => {}
            },
        }
    }
}

/// Sends a typed CALL, honouring `Slow`, and reports the outcome.
async fn call<R: OcppRequest>(cp: &ChargePoint, conn: &Connection, req: R) -> Option<R::Response> {
    if let Some(d) = cp.fault().delay() {
        tokio::time::sleep(d).await;
    }
    match conn.call(req).await {
        Ok(r) => {
            cp.emit(ChargePointEvent::CallSucceeded(R::ACTION));
            Some(r)
        }
        Err(e) => {
            report_failure(cp, R::ACTION, &e);
            None
        }
    }
}

fn report_failure(cp: &ChargePoint, action: Action, e: &CallError) {
    let code = match e {
        CallError::Rejected { error, .. } => Some(error.code),
        _ => None,
    };
    cp.emit(ChargePointEvent::CallFailed {
        action,
        code,
        error: e.to_string(),
    });
}

async fn session(
    cp: &ChargePoint,
    config: &ChargePointConfig,
    conn: &Connection,
    calls: mpsc::Receiver<IncomingCall>,
    control: &mut mpsc::Receiver<Control>,
    reason: BootReason,
) -> End {
    let (reset_tx, mut reset_rx) = mpsc::channel(1);
    let (follow_tx, follow_rx) = mpsc::channel(FOLLOW_UP_QUEUE);
    let answering = tokio::spawn(answer_calls(
        cp.clone(),
        config.evse_id,
        calls,
        reset_tx,
        follow_tx,
    ));
    let following = tokio::spawn(follow_ups(
        cp.clone(),
        config.evse_id,
        conn.clone(),
        follow_rx,
    ));
    let end = session_loop(cp, config, conn, control, &mut reset_rx, reason).await;
    answering.abort();
    following.abort();
    end
}

async fn session_loop(
    cp: &ChargePoint,
    config: &ChargePointConfig,
    conn: &Connection,
    control: &mut mpsc::Receiver<Control>,
    reset: &mut mpsc::Receiver<()>,
    reason: BootReason,
) -> End {
    // Boot until accepted, at the interval the CSMS names.
    loop {
        let Some(r) = call(cp, conn, reports::boot(reason)).await else {
            return End::Lost;
        };
        let interval =
            Duration::from_secs(u64::try_from(r.interval).unwrap_or(0)).max(MIN_HEARTBEAT_INTERVAL);
        if r.status == RegistrationStatus::Accepted {
            lock(&cp.state).heartbeat_interval = interval;
            let count = {
                let mut s = lock(&cp.state);
                s.boots += 1;
                s.boots
            };
            cp.emit(ChargePointEvent::Booted { interval, count });
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = conn.closed() => return End::Lost,
        }
    }
    let status = reports::status(&lock(&cp.state), config.evse_id);
    call(cp, conn, status).await;
    start_transaction(cp, config, conn).await;
    let mut last_heartbeat = Instant::now();
    let mut last_meter = Instant::now();
    loop {
        // Read each time: SetVariables may have changed them (and woken us).
        let (hb, mv) = {
            let s = lock(&cp.state);
            (s.heartbeat_interval, s.meter_interval)
        };
        tokio::select! {
            _ = cp.wake.notified() => {}
            _ = conn.closed() => return End::Lost,
            _ = reset.recv() => {
                cp.emit(ChargePointEvent::Reset);
                return End::Reset;
            }
            c = control.recv() => match c {
                None | Some(Control::Stop) => return End::Stop,
                Some(Control::PlugIn) => {
                    let status = reports::status(&lock(&cp.state), config.evse_id);
                    call(cp, conn, status).await;
                    start_transaction(cp, config, conn).await;
                }
                Some(Control::Unplug(tx)) => end_transaction(cp, config, conn, tx).await,
                Some(Control::FaultChanged) => {
                    let fault = cp.fault();
                    match fault {
                        Fault::Drop(away) => return End::Dropped(away),
                        Fault::BadValue(kind) => {
                            let payload = {
                                let mut s = lock(&cp.state);
                                s.fault = Fault::None;
                                bad_meter_values(kind, config.evse_id, reports::timestamp(&s).as_str())
                            };
                            match conn.call_raw(Action::MeterValues, payload).await {
                                Ok(_) => cp.emit(ChargePointEvent::CallSucceeded(Action::MeterValues)),
                                Err(e) => report_failure(cp, Action::MeterValues, &e),
                            }
                        }
                        Fault::None | Fault::Hang | Fault::Reject | Fault::Slow(_) | Fault::IgnoreTrigger => {}
                    }
                }
            },
            _ = sleep_until(last_heartbeat + hb) => {
                last_heartbeat = Instant::now();
                if cp.fault() != Fault::Hang {
                    call(cp, conn, HeartbeatRequest::default()).await;
                }
            }
            _ = sleep_until(last_meter + mv) => {
                last_meter = Instant::now();
                if cp.fault() != Fault::Hang {
                    send_meter(cp, config, conn).await;
                }
            }
        }
    }
}

async fn send_meter(cp: &ChargePoint, config: &ChargePointConfig, conn: &Connection) {
    let tx_event = {
        let mut s = lock(&cp.state);
        if s.transaction.as_ref().is_some_and(|t| t.started_sent) {
            reports::transaction_event(
                &mut s,
                config.evse_id,
                TransactionEventType::Updated,
                TriggerReason::MeterValuePeriodic,
                None,
            )
        } else {
            None
        }
    };
    match tx_event {
        Some(ev) => {
            call(cp, conn, ev).await;
        }
        None => {
            let mv = reports::meter_values(&lock(&cp.state), config.evse_id);
            call(cp, conn, mv).await;
        }
    }
}

async fn start_transaction(cp: &ChargePoint, config: &ChargePointConfig, conn: &Connection) {
    let pending = lock(&cp.state)
        .transaction
        .as_ref()
        .filter(|t| !t.started_sent)
        .map(|t| t.id_token.clone());
    let Some(token) = pending else {
        return;
    };
    let token = reports::id_token(token.as_deref().unwrap_or(&config.id_token));
    let auth = AuthorizeRequest {
        id_token: token.clone(),
        certificate: None,
        iso15118_certificate_hash_data: None,
        extra: Default::default(),
    };
    let Some(answer) = call(cp, conn, auth).await else {
        return;
    };
    if answer.id_token_info.status != AuthorizationStatus::Accepted {
        return;
    }
    let event = reports::transaction_event(
        &mut lock(&cp.state),
        config.evse_id,
        TransactionEventType::Started,
        TriggerReason::CablePluggedIn,
        Some(token),
    );
    let Some(event) = event else { return };
    let id = event.transaction_info.transaction_id.clone();
    if call(cp, conn, event).await.is_some() {
        if let Some(t) = lock(&cp.state).transaction.as_mut() {
            t.started_sent = true;
        }
        cp.emit(ChargePointEvent::TransactionStarted(id));
        send_needs(cp, config.evse_id, conn).await;
    }
}

async fn end_transaction(
    cp: &ChargePoint,
    config: &ChargePointConfig,
    conn: &Connection,
    ended: Option<Transaction>,
) {
    let event = {
        let mut s = lock(&cp.state);
        let ended = ended.filter(|t| t.started_sent);
        // The event is built from the ended transaction; a newer one (a vehicle plugged in
        // since) is put back untouched.
        let newer = std::mem::replace(&mut s.transaction, ended);
        let ev = reports::transaction_event(
            &mut s,
            config.evse_id,
            TransactionEventType::Ended,
            TriggerReason::EVDeparted,
            None,
        );
        s.transaction = newer;
        ev
    };
    if let Some(ev) = event {
        call(cp, conn, ev).await;
    }
    let status = reports::status(&lock(&cp.state), config.evse_id);
    call(cp, conn, status).await;
}

/// Answers the CSMS's CALLs until the connection ends, honouring the injected fault.
async fn answer_calls(
    cp: ChargePoint,
    evse_id: i32,
    mut calls: mpsc::Receiver<IncomingCall>,
    reset: mpsc::Sender<()>,
    follow: mpsc::Sender<FollowUp>,
) {
    // Calls held by `Hang`: bounded by the engine's max_unanswered_incoming.
    let mut held = Vec::new();
    let mut ignored_trigger: Option<IncomingCall> = None;
    while let Some(call) = calls.recv().await {
        let action = call.action();
        match cp.fault() {
            Fault::Hang => {
                cp.emit(ChargePointEvent::Held(action));
                held.push(call);
                continue;
            }
            Fault::Reject => {
                cp.emit(ChargePointEvent::Rejected(action));
                call.respond(Err(RpcError::new(
                    ErrorCode::GenericError,
                    "fault injected: Reject",
                )));
                continue;
            }
            Fault::Slow(d) => tokio::time::sleep(d).await,
            Fault::IgnoreTrigger if action == Action::TriggerMessage => {
                cp.emit(ChargePointEvent::Held(action));
                // Only the latest is held: the older ones the CSMS gave up on long ago, and
                // holding them all would fill the engine's unanswered-incoming bound.
                ignored_trigger = Some(call);
                continue;
            }
            Fault::IgnoreTrigger => {}
            Fault::None | Fault::Drop(_) | Fault::BadValue(_) => {}
        }
        let (answer, effect) = answers::answer(&mut lock(&cp.state), evse_id, &call.request);
        call.respond(answer);
        match effect {
            Effect::None => {}
            Effect::ProfilesCleared(n) => cp.emit(ChargePointEvent::ProfilesCleared(n)),
            Effect::ProfileInstalled { id, change } => {
                cp.emit(ChargePointEvent::ProfileInstalled { id, change })
            }
            Effect::ProfileRejected { id, reason } => {
                cp.emit(ChargePointEvent::ProfileRejected { id, reason })
            }
            Effect::VariablesChanged => cp.wake.notify_one(),
            Effect::Reset => {
                let _ = reset.try_send(());
            }
            Effect::Follow(f) => {
                if follow.try_send(f).is_err() {
                    cp.emit(ChargePointEvent::FollowUpDropped);
                }
            }
        }
    }
    drop((held, ignored_trigger));
}

/// Sends the CALLs answers asked for, in order, beside the session loop (a CSMS waiting for a
/// ReportChargingProfiles must not wait behind the loop's own CALLs).
async fn follow_ups(
    cp: ChargePoint,
    evse_id: i32,
    conn: Connection,
    mut rx: mpsc::Receiver<FollowUp>,
) {
    while let Some(f) = rx.recv().await {
        match f {
            FollowUp::Status => {
                let status = reports::status(&lock(&cp.state), evse_id);
                call(&cp, &conn, status).await;
            }
            FollowUp::Meter => {
                let mv = reports::meter_values(&lock(&cp.state), evse_id);
                call(&cp, &conn, mv).await;
            }
            FollowUp::Heartbeat => {
                call(&cp, &conn, HeartbeatRequest::default()).await;
            }
            FollowUp::StartRemote => remote_start(&cp, evse_id, &conn).await,
            FollowUp::StopRemote => remote_stop(&cp, evse_id, &conn).await,
            FollowUp::Report(r) => {
                call(&cp, &conn, *r).await;
            }
        }
    }
}

/// TransactionEvent(Started, RemoteStart) of the transaction a RequestStartTransaction set up.
async fn remote_start(cp: &ChargePoint, evse_id: i32, conn: &Connection) {
    let event = {
        let mut s = lock(&cp.state);
        let token = s
            .transaction
            .as_ref()
            .filter(|t| !t.started_sent)
            .and_then(|t| Some((t.id_token.clone()?, t.id_token_type.clone())));
        token.and_then(|(value, kind)| {
            let mut token = reports::id_token(&value);
            if let Some(kind) = kind {
                token.kind = kind;
            }
            reports::transaction_event(
                &mut s,
                evse_id,
                TransactionEventType::Started,
                TriggerReason::RemoteStart,
                Some(token),
            )
        })
    };
    let Some(event) = event else { return };
    let id = event.transaction_info.transaction_id.clone();
    if call(cp, conn, event).await.is_some() {
        if let Some(t) = lock(&cp.state).transaction.as_mut() {
            t.started_sent = true;
        }
        cp.emit(ChargePointEvent::TransactionStarted(id));
        send_needs(cp, evse_id, conn).await;
    }
}

/// TransactionEvent(Ended, RemoteStop); the vehicle stays plugged in.
async fn remote_stop(cp: &ChargePoint, evse_id: i32, conn: &Connection) {
    let event = {
        let mut s = lock(&cp.state);
        let ev = reports::transaction_event(
            &mut s,
            evse_id,
            TransactionEventType::Ended,
            TriggerReason::RemoteStop,
            None,
        );
        s.transaction = None;
        ev
    };
    let Some(event) = event else { return };
    let id = event.transaction_info.transaction_id.clone();
    if call(cp, conn, event).await.is_some() {
        cp.emit(ChargePointEvent::TransactionStopped(id));
    }
}

/// NotifyEVChargingNeeds of the open transaction's EV, when it has needs.
async fn send_needs(cp: &ChargePoint, evse_id: i32, conn: &Connection) {
    let req = {
        let s = lock(&cp.state);
        let needs = s.transaction.as_ref().and_then(|t| t.needs);
        needs.and_then(|n| reports::charging_needs(&s, evse_id, conn.info().version, &n))
    };
    if let Some(req) = req {
        call(cp, conn, req).await;
    }
}
