//! Chargers over OCPP 2.0.1 / 2.1: the CSMS side of the node.
//!
//! [`OcppHub`] holds one line per configured charger: the charge point's current connection
//! (at most one), what it last reported (meter values, connector status, its transaction) and
//! the setpoint keys written to it. [`OcppCharger`] is a charger's [`ChargerIo`] on that line;
//! the link and the session of the charger use it like any other device.
//!
//! The CSMS listener itself runs in the `transports/csms` actor of the node's tree
//! ([`crate::runtime`]); it hands every accepted connection to [`OcppHub::attach`].
//!
//! # Invariants
//! - Only configured chargers get in: an unknown charge point id, one absent from the
//!   credentials file (`[ocpp] passwords`), or a wrong password is refused at the handshake
//!   (401), before any frame; on profile 3 the certificate stands for the password.
//! - One live connection per charger: the CSMS refuses a second one (409) while the first is
//!   open, so a leaked password cannot take over a live charger; a charger that reconnects
//!   from behind a half-open TCP connection gets in once the CSMS's ping finds the old one
//!   dead (`gridvisor_transports::ocpp::server`, at most `ping_interval + pong_timeout`).
//!   Should two attach anyway, the newer replaces the older.
//! - A dropped connection restarts the charger's link ([`LinkMsg::ConnectionLost`]); the link
//!   comes back offline and reads the device again (read before write) as soon as the charge
//!   point reconnects ([`LinkMsg::Poll`] on attach).
//! - A setpoint is a charging profile built by [`setpoint_profile`]: its id is a hash of the
//!   dispatch id and its schedule id the revision, and its validity comes from the setpoint's
//!   lease, never from the clock at write time, so re-sending a key after a restart installs a
//!   byte-identical profile: the charger changes nothing.
//! - Discharge profiles carry OCPP 2.1's offline limits ([`OFFLINE_DISCHARGE_LIMIT`],
//!   `invalidAfterOfflineDuration`): a charger cut off from the CSMS stops discharging on its
//!   own and falls back to its offline limit (charge only).
//! - Every CALL is bounded by [`OCPP_CALL_TIMEOUT`]; nothing waits on a charge point longer.
//! - Who may charge (issue 21): with `[authorization]` the list decides, at any charger
//!   ([`crate::authorization`]); a token's session is keyed by the token's value and starts
//!   from its contract, one per token (`ConcurrentTx` at a second charger); a token refused
//!   mid-session ends its session. Without it, a `[[vehicles]]` id token is accepted only at
//!   its own charger (the simulated demo and benchmarks).
//! - What the EV says (NotifyEVChargingNeeds with its 2.1 `evEnergyOffer`,
//!   NotifyEVChargingSchedule, the `SoC` measurand) is kept per line until the transaction
//!   ends or the connector is Available; the charger's session takes it every cycle
//!   ([`crate::session::Session::take_ev`]). A schedule for an EVSE without a transaction the
//!   hub knows is Rejected with a reason code (`UnknownTransaction`, `UnknownEvse`).
//!
//! # Read-back
//! A read asks GetChargingProfiles for the node's dispatch profiles and waits (bounded) for
//! the ReportChargingProfiles that answers it: OCPP's standard read-back. A station that does
//! not support it is asked the simulator's `SmartChargingCtrlr/AppliedProfile` variable
//! instead; one that knows neither still works: the applied key is then unknown (the link
//! re-sends, which is harmless by the invariant above). Which one a connection uses is learned
//! on its first read ([`actions`]). `EVSE/Power` and `SmartChargingCtrlr/DefaultLimit` come from
//! GetVariables where answered, else from the last meter values.
//!
//! The outgoing actions of [`actions`]: RequestStart/StopTransaction (the grid API),
//! TriggerMessage StatusNotification and MeterValues after every attach, ClearChargingProfile
//! of the dispatch profiles after a TransactionEvent(Ended).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use gridvisor_transports::ocpp::auth::Authenticator;
use gridvisor_transports::ocpp::connection::{serve_calls, CallError, Connection, RpcConfig};
use gridvisor_transports::ocpp::credentials::Credentials;
use gridvisor_transports::ocpp::frame::{ErrorCode, RpcError};
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::server::Session;
use gridvisor_transports::ocpp::setpoint::{setpoint_profile, Setpoint};
use gridvisor_transports::ocpp::OcppVersion;
use serde::Deserialize;
use serde_json::Map;

use crate::authorization::{AuthStore, Contract, Decision, TokenId};
use crate::clock::Clock;
use crate::config::{Ocpp, Topology, Vehicle};
use crate::device::{ChargerIo, ChargerReading, DeviceError};
use crate::runtime::{LinkMsg, SiteShared};
use crate::session::{offered_discharge_kwh, EvNeeds, EvReport, EvSchedule, EvSchedulePeriod};
use crate::setpoint::SetpointKey;

pub mod actions;
pub use actions::{ActionError, Applied, ReadBack, RemoteAnswer, RemoteStart};

/// Bound on one CALL to a charge point (OCPP's usual 30 s is too long for a control loop:
/// the link would hold its mailbox that long behind a hung charger).
pub const OCPP_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a discharge profile stays in force while its charger is offline, s (OCPP 2.1
/// `maxOfflineDuration`); after that the charger drops it (`invalidAfterOfflineDuration`).
pub const OFFLINE_DISCHARGE_LIMIT: Duration = Duration::from_secs(10);
/// The validity of a profile written without a lease (a local clamp to the safe default).
pub const NO_LEASE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// A profile's `validFrom` lies this far before the start of its lease, so that a charger
/// whose clock is a little behind the node's still has it in force at once.
pub const VALID_FROM_SLACK: Duration = Duration::from_secs(60);
/// How many written keys a line remembers to recognise them in a read-back.
pub const WRITTEN_KEYS_KEPT: usize = 8;
/// Bound on an optional CALL (TriggerMessage) holding a charger's CALL slot unanswered;
/// a read or setpoint preempts it anyway (`Connection::call_optional`).
pub const TRIGGER_TIMEOUT: Duration = Duration::from_secs(2);
/// The EVSE every charger is addressed on (one EVSE per charge point).
pub const EVSE_ID: i32 = 1;

/// The simulator's profile read-back (see the module docs).
const APPLIED_PROFILE: (&str, &str) = ("SmartChargingCtrlr", "AppliedProfile");
/// The power delivered now, W.
const EVSE_POWER: (&str, &str) = ("EVSE", "Power");
/// The charge power without a profile, W.
const DEFAULT_LIMIT: (&str, &str) = ("SmartChargingCtrlr", "DefaultLimit");

/// What a charge point last reported about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reported {
    /// Power from its last meter values, kW (positive into the vehicle).
    pub power_kw: Option<f64>,
    /// Net energy register (import − export) from its last meter values, kWh.
    pub energy_kwh: Option<f64>,
    /// Whether its connector is occupied.
    pub occupied: bool,
    /// Its transaction, if one runs.
    pub transaction: Option<String>,
    /// The vehicle of that transaction (its id token is the vehicle's id).
    pub vehicle: Option<String>,
}

#[derive(Default)]
struct LineState {
    connection: Option<Connection>,
    /// Increases with every attach, so a late end of a replaced connection is ignored.
    generation: u64,
    reported: Reported,
    /// What the EV of the current transaction reported (its needs, its SoC); cleared when
    /// the transaction ends or the connector is Available.
    ev: EvReport,
    /// The listed token of the running session (with `[authorization]`): its contract is
    /// looked up again every cycle, so a change through the API reaches the session.
    token: Option<TokenId>,
    /// (profile id, schedule id) → key, most recent last.
    written: VecDeque<(i32, i32, SetpointKey)>,
}

/// A charger's line: its connection and what it reported.
#[derive(Default)]
struct Line {
    state: Mutex<LineState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The CSMS's view of every configured charger.
pub struct OcppHub {
    config: Ocpp,
    lines: HashMap<String, Line>,
    /// Vehicle id (its id token) → the charger it is configured on.
    vehicles: HashMap<String, String>,
    /// The authorization list (`[authorization]`); None: the `[[vehicles]]` binding above.
    authorization: Option<Arc<AuthStore>>,
    lease_s: f64,
    clock: Clock,
    /// Wall-clock time at the clock's zero (profiles carry wall-clock times).
    epoch: SystemTime,
    site: OnceLock<Weak<SiteShared>>,
    connected: prometheus::IntGauge,
    local_addrs: Mutex<Vec<SocketAddr>>,
    /// Lines holding a connection.
    holding: AtomicUsize,
    /// Remote start/stop ids, pending profile reports, read-back capabilities ([`actions`]).
    actions: actions::Actions,
}

impl OcppHub {
    /// A hub for the chargers of `topology` (which must have an `[ocpp]` table).
    pub fn new(topology: &Topology, clock: Clock) -> Result<Arc<OcppHub>, String> {
        let config = topology
            .ocpp
            .clone()
            .ok_or("the topology has no [ocpp] table")?;
        let lines = topology
            .chargers()
            .map(|(_, c)| (c.id.clone(), Line::default()))
            .collect();
        let vehicles = topology
            .vehicles
            .iter()
            .map(|v| (v.id.clone(), v.charger.clone()))
            .collect();
        let authorization = match &topology.authorization {
            Some(a) => Some(Arc::new(
                AuthStore::open(&a.store, a.seed.as_deref(), a.unknown)
                    .map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let now = clock.now();
        let epoch = SystemTime::now()
            .checked_sub(now)
            .ok_or("the wall clock is before the node's clock zero")?;
        let connected = prometheus::IntGauge::new(
            "gridvisor_ocpp_connected_chargers",
            "Charge points connected to the CSMS now",
        )
        .map_err(|e| e.to_string())?;
        Ok(Arc::new(OcppHub {
            config,
            lines,
            vehicles,
            authorization,
            lease_s: topology.site.lease_s,
            clock,
            epoch,
            site: OnceLock::new(),
            connected,
            local_addrs: Mutex::new(Vec::new()),
            holding: AtomicUsize::new(0),
            actions: actions::Actions::default(),
        }))
    }

    /// The authorization list, when the topology has `[authorization]`.
    pub fn authorization(&self) -> Option<Arc<AuthStore>> {
        self.authorization.clone()
    }

    /// Where the CSMS listens now, ws first (None until it has bound its ports).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.local_addrs).first().copied()
    }

    /// Every bound listener: (ws address, wss address), each if configured.
    pub fn listeners(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let addrs = lock(&self.local_addrs);
        match (self.config.listen.is_some(), self.config.tls.is_some()) {
            (true, true) => (addrs.first().copied(), addrs.get(1).copied()),
            (true, false) => (addrs.first().copied(), None),
            (false, _) => (None, addrs.first().copied()),
        }
    }

    /// Record the bound addresses, ws first (the CSMS actor, after binding).
    pub fn set_local_addrs(&self, addrs: Vec<SocketAddr>) {
        *lock(&self.local_addrs) = addrs;
    }

    /// The `[ocpp]` settings.
    pub fn config(&self) -> &Ocpp {
        &self.config
    }

    /// Connect the hub to its node (for sessions and link notifications).
    pub fn bind_site(&self, site: &Arc<SiteShared>) -> Result<(), prometheus::Error> {
        let _ = self.site.set(Arc::downgrade(site));
        site.prometheus.register(Box::new(self.connected.clone()))
    }

    fn site(&self) -> Option<Arc<SiteShared>> {
        self.site.get().and_then(Weak::upgrade)
    }

    /// The per-connection limits the CSMS uses.
    pub fn rpc_config() -> RpcConfig {
        RpcConfig {
            call_timeout: OCPP_CALL_TIMEOUT,
            optional_call_timeout: TRIGGER_TIMEOUT,
            ..RpcConfig::default()
        }
    }

    /// Who may connect with a password: configured chargers only, each with its own password
    /// from `credentials`.
    pub fn authenticator(
        self: &Arc<Self>,
        credentials: Arc<Credentials>,
    ) -> Arc<dyn Authenticator> {
        Arc::new(HubAuthenticator {
            hub: Arc::downgrade(self),
            credentials,
        })
    }

    /// Whether charger `id` is connected now.
    pub fn is_connected(&self, id: &str) -> bool {
        self.lines.get(id).is_some_and(|l| {
            lock(&l.state)
                .connection
                .as_ref()
                .is_some_and(|c| !c.is_closed())
        })
    }

    /// How many chargers hold a connection now (a counter: 10,000 connections arriving
    /// must not each count 10,000 lines).
    pub fn connected_count(&self) -> usize {
        self.holding.load(Ordering::Relaxed)
    }

    fn publish_count(&self) {
        self.connected.set(self.connected_count() as i64);
    }

    /// What charger `id` last reported.
    pub fn reported(&self, id: &str) -> Option<Reported> {
        self.lines.get(id).map(|l| lock(&l.state).reported.clone())
    }

    fn connection(&self, id: &str) -> Result<Connection, DeviceError> {
        let unreachable = || DeviceError::Unreachable {
            device: id.to_owned(),
        };
        let line = self.lines.get(id).ok_or_else(unreachable)?;
        let c = lock(&line.state)
            .connection
            .clone()
            .ok_or_else(unreachable)?;
        if c.is_closed() {
            return Err(unreachable());
        }
        Ok(c)
    }

    /// Whether `id` is one of the site's chargers.
    fn configured(&self, id: &str) -> bool {
        self.lines.contains_key(id)
    }

    /// Take a charge point's new connection: answer its CALLs, tell its link.
    pub fn attach(self: &Arc<Self>, session: Session) {
        let id = session.connection.info().charge_point_id.clone();
        let Some(line) = self.lines.get(&id) else {
            // The authenticator lets only configured ids through; be safe anyway.
            tracing::warn!(charger = %id, "unknown charge point: closing");
            session.connection.close();
            return;
        };
        let generation = {
            let mut s = lock(&line.state);
            match s.connection.take() {
                Some(old) => {
                    tracing::info!(charger = %id, "charge point reconnected: closing its old connection");
                    old.close();
                }
                None => {
                    self.holding.fetch_add(1, Ordering::Relaxed);
                }
            }
            s.connection = Some(session.connection.clone());
            s.generation += 1;
            s.generation
        };
        self.publish_count();
        tracing::info!(charger = %id, version = %session.connection.info().version, peer = %session.peer, "charge point connected");
        let hub = Arc::clone(self);
        let cp = id.clone();
        serve_calls(session.calls, move |request: Request| {
            let hub = Arc::clone(&hub);
            let cp = cp.clone();
            async move {
                let ended = matches!(&request, Request::TransactionEvent(r)
                    if r.event_type == TransactionEventType::Ended);
                let answering = hub.answering_call(&cp);
                let answer = hub.answer(&cp, request).await;
                drop(answering);
                if ended {
                    hub.after_session_end(&cp);
                }
                answer
            }
        });
        let hub = Arc::clone(self);
        let watch = session.connection.closed_watch();
        tokio::spawn(async move {
            let reason = watch.wait().await;
            hub.detach(&id, generation, &format!("{reason:?}"));
        });
        self.after_attach(&session.connection.info().charge_point_id);
        self.tell_link(&session.connection.info().charge_point_id, LinkMsg::Poll);
    }

    fn detach(&self, id: &str, generation: u64, reason: &str) {
        let Some(line) = self.lines.get(id) else {
            return;
        };
        {
            let mut s = lock(&line.state);
            if s.generation != generation {
                return; // replaced by a newer connection
            }
            if s.connection.take().is_some() {
                self.holding.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.publish_count();
        tracing::warn!(charger = %id, %reason, "charge point disconnected: restarting its link");
        self.tell_link(id, LinkMsg::ConnectionLost(reason.to_owned()));
    }

    /// The node resumed `vehicle`'s session on `charger` from its checkpoint (after a node
    /// restart): the line expects it, so that the charger's next Available ends it.
    pub fn resume(&self, charger: &str, vehicle: &str) {
        if let Some(line) = self.lines.get(charger) {
            lock(&line.state).reported.vehicle = Some(vehicle.to_owned());
        }
    }

    /// Close every connection (the CSMS stops). Their ends are not news: a link is told
    /// only of a connection that dropped by itself.
    pub fn close_all(&self) {
        for line in self.lines.values() {
            let mut s = lock(&line.state);
            s.generation += 1;
            if let Some(c) = s.connection.take() {
                self.holding.fetch_sub(1, Ordering::Relaxed);
                c.close();
            }
        }
        self.publish_count();
    }

    fn tell_link(&self, charger: &str, msg: LinkMsg) {
        let Some(site) = self.site() else { return };
        let Some((seg, _)) = site.charger(charger) else {
            return;
        };
        if let Some(link) = seg.links.get(charger).map(|e| e.actor.clone()) {
            let _ = link.send_message(msg);
        }
    }

    fn now_wall(&self) -> SystemTime {
        self.epoch + self.clock.now()
    }

    /// Answer one CALL of charge point `cp`.
    async fn answer(&self, cp: &str, request: Request) -> Result<Response, RpcError> {
        let now = DateTime::from_system_time(self.now_wall())
            .map_err(|e| RpcError::new(ErrorCode::InternalError, e.to_string()))?;
        Ok(match request {
            Request::BootNotification(_) => BootNotificationResponse {
                current_time: now,
                interval: i32::try_from(self.config.heartbeat_s).unwrap_or(i32::MAX),
                status: RegistrationStatus::Accepted,
                status_info: None,
                extra: Map::new(),
            }
            .into(),
            Request::Heartbeat(_) => HeartbeatResponse {
                current_time: now,
                extra: Map::new(),
            }
            .into(),
            Request::StatusNotification(r) => {
                let occupied = r.connector_status == ConnectorStatus::Occupied;
                let left = self.lines.get(cp).and_then(|line| {
                    let mut s = lock(&line.state);
                    s.reported.occupied = occupied;
                    if r.connector_status == ConnectorStatus::Available {
                        s.ev = EvReport::default();
                        s.token = None;
                    }
                    // Available: nobody is plugged in, whatever we believed (a vehicle that
                    // left while the CSMS was down, a transaction end we never heard).
                    (r.connector_status == ConnectorStatus::Available)
                        .then(|| s.reported.vehicle.take())
                        .flatten()
                });
                if let Some(v) = left {
                    self.session(cp, &v, None, false).await;
                }
                StatusNotificationResponse::default().into()
            }
            Request::Authorize(r) => AuthorizeResponse {
                id_token_info: token_info(self.authorize(cp, &r.id_token).await),
                certificate_status: None,
                allowed_energy_transfer: None,
                extra: Map::new(),
            }
            .into(),
            Request::MeterValues(r) => {
                self.take_meter_values(cp, &r.meter_value);
                MeterValuesResponse::default().into()
            }
            Request::TransactionEvent(r) => {
                let info = self.transaction_event(cp, &r).await;
                TransactionEventResponse {
                    id_token_info: info,
                    ..Default::default()
                }
                .into()
            }
            Request::ReportChargingProfiles(r) => {
                self.take_report(cp, r);
                ReportChargingProfilesResponse::default().into()
            }
            Request::NotifyEVChargingNeeds(r) => NotifyEVChargingNeedsResponse {
                status: self.take_needs(cp, &r),
                status_info: None,
                extra: Map::new(),
            }
            .into(),
            Request::NotifyEVChargingSchedule(r) => {
                let (status, status_info) = match self.take_schedule(cp, &r) {
                    Ok(()) => (GenericStatus::Accepted, None),
                    Err((reason, info)) => (
                        GenericStatus::Rejected,
                        Some(StatusInfo {
                            reason_code: reason.to_owned(),
                            additional_info: Some(info),
                            extra: Map::new(),
                        }),
                    ),
                };
                NotifyEVChargingScheduleResponse {
                    status,
                    status_info,
                    extra: Map::new(),
                }
                .into()
            }
            other => {
                return Err(RpcError::new(
                    ErrorCode::NotSupported,
                    format!("the CSMS does not handle {}", other.action()),
                ))
            }
        })
    }

    /// Authorize: the token's status; a token refused while its session runs on `cp` (it
    /// was revoked or blocked) ends that session.
    async fn authorize(&self, cp: &str, token: &IdToken) -> AuthorizationStatus {
        let (status, _) = self.token_status(cp, token);
        if status != AuthorizationStatus::Accepted {
            self.revoked(cp, &token.id_token).await;
        }
        status
    }

    /// With `[authorization]`: the list decides, at any charger, and an accepted token
    /// brings its contract. Without it: a vehicle is known by its id token, and only on the
    /// charger it is configured on.
    fn token_status(&self, cp: &str, token: &IdToken) -> (AuthorizationStatus, Option<Contract>) {
        let Some(list) = &self.authorization else {
            let status = match self.vehicles.get(&token.id_token) {
                Some(charger) if charger == cp => AuthorizationStatus::Accepted,
                Some(_) => AuthorizationStatus::Invalid,
                None => AuthorizationStatus::Unknown,
            };
            return (status, None);
        };
        let Ok(id) = TokenId::new(&token.kind, &token.id_token) else {
            return (AuthorizationStatus::Invalid, None);
        };
        match list.decide(&id) {
            // One session per token: its session is keyed by the token's value.
            Decision::Accepted { .. } if self.elsewhere(cp, &token.id_token) => {
                (AuthorizationStatus::ConcurrentTx, None)
            }
            Decision::Accepted { contract, .. } => (AuthorizationStatus::Accepted, Some(contract)),
            Decision::Blocked => (AuthorizationStatus::Blocked, None),
            Decision::Unknown => (AuthorizationStatus::Unknown, None),
        }
    }

    /// Whether `token`'s session runs on another charger than `cp`.
    fn elsewhere(&self, cp: &str, token: &str) -> bool {
        self.site().is_some_and(|site| {
            site.plugged
                .iter()
                .any(|e| e.value() == token && e.key() != cp)
        })
    }

    /// Token `token`, refused now, ends its session if it runs on `cp`: no more dispatch at
    /// all (the safe choice: no discharge, and nothing charged on a revoked contract), the
    /// last setpoint lasts at most its lease.
    async fn revoked(&self, cp: &str, token: &str) {
        let Some(line) = self.lines.get(cp) else {
            return;
        };
        let running = {
            let mut s = lock(&line.state);
            match s.reported.vehicle.as_deref() {
                Some(v) if v == token => {
                    s.token = None;
                    s.reported.vehicle.take()
                }
                _ => None,
            }
        };
        if let Some(v) = running {
            tracing::warn!(charger = %cp, "token refused during its session: the session ends");
            self.session(cp, &v, None, false).await;
        }
    }

    fn take_meter_values(&self, cp: &str, values: &[MeterValue]) {
        let Some(line) = self.lines.get(cp) else {
            return;
        };
        let (mut import_w, mut export_w, mut import_wh, mut export_wh) = (None, None, None, None);
        let mut soc = None;
        for v in values.iter().flat_map(|m| m.sampled_value.iter()) {
            // OCPP's default units are W and Wh; a charger may say kW or kWh instead.
            let unit = v.unit_of_measure.as_ref();
            let kilo = unit
                .and_then(|u| u.unit.as_deref())
                .is_some_and(|u| u.eq_ignore_ascii_case("kW") || u.eq_ignore_ascii_case("kWh"));
            let scale = unit
                .and_then(|u| u.multiplier)
                .map_or(1.0, |m| 10f64.powi(m.clamp(-9, 9)))
                * if kilo { 1000.0 } else { 1.0 };
            let x = v.value * scale;
            if !x.is_finite() {
                continue;
            }
            match v.measurand.unwrap_or(Measurand::EnergyActiveImportRegister) {
                Measurand::PowerActiveImport => import_w = Some(x),
                Measurand::PowerActiveExport => export_w = Some(x),
                Measurand::EnergyActiveImportRegister => import_wh = Some(x),
                Measurand::EnergyActiveExportRegister => export_wh = Some(x),
                // Percent; the multiplier only (never a kilo unit).
                Measurand::SoC => soc = Some(x / if kilo { 1000.0 } else { 1.0 }),
                _ => {}
            }
        }
        let mut s = lock(&line.state);
        if let Some(soc) = soc.filter(|p| (0.0..=100.0).contains(p)) {
            s.ev.soc = Some((soc, self.now_unix_s()));
        }
        if import_w.is_some() || export_w.is_some() {
            s.reported.power_kw =
                Some((import_w.unwrap_or(0.0) - export_w.unwrap_or(0.0)) / 1000.0);
        }
        if import_wh.is_some() || export_wh.is_some() {
            s.reported.energy_kwh =
                Some((import_wh.unwrap_or(0.0) - export_wh.unwrap_or(0.0)) / 1000.0);
        }
    }

    /// A transaction starts or ends: the vehicle's session starts or ends with it.
    async fn transaction_event(
        &self,
        cp: &str,
        r: &TransactionEventRequest,
    ) -> Option<IdTokenInfo> {
        if let Some(m) = &r.meter_value {
            self.take_meter_values(cp, m);
        }
        let token = r.id_token.as_ref().map(|t| t.id_token.clone());
        let (status, contract) = match &r.id_token {
            Some(t) => {
                let (status, contract) = self.token_status(cp, t);
                (Some(status), contract)
            }
            None => (None, None),
        };
        let info = status.map(token_info);
        let line = self.lines.get(cp)?;
        match r.event_type {
            TransactionEventType::Started | TransactionEventType::Updated => {
                if let (Some(t), Some(st)) = (&token, status) {
                    if st != AuthorizationStatus::Accepted {
                        self.revoked(cp, t).await;
                    }
                }
                let vehicle = token.filter(|_| status == Some(AuthorizationStatus::Accepted));
                let start = {
                    let mut s = lock(&line.state);
                    s.reported.occupied = true;
                    s.reported.transaction = Some(r.transaction_info.transaction_id.clone());
                    let listed = r
                        .id_token
                        .as_ref()
                        .filter(|_| self.authorization.is_some())
                        .and_then(|t| TokenId::new(&t.kind, &t.id_token).ok());
                    match vehicle {
                        Some(v) if s.reported.vehicle.as_deref() != Some(v.as_str()) => {
                            s.reported.vehicle = Some(v.clone());
                            s.token = listed;
                            Some(v)
                        }
                        // The running session's token (after a node restart the line learns
                        // it from the station's next Updated).
                        Some(_) => {
                            s.token = s.token.take().or(listed);
                            None
                        }
                        None => None,
                    }
                };
                if let Some(v) = start {
                    self.session(cp, &v, contract.as_ref(), true).await;
                }
            }
            TransactionEventType::Ended => {
                let vehicle = {
                    let mut s = lock(&line.state);
                    s.ev = EvReport::default();
                    s.token = None;
                    s.reported.transaction = None;
                    s.reported.occupied = false;
                    s.reported.vehicle.take()
                };
                if let Some(v) = vehicle {
                    self.session(cp, &v, None, false).await;
                }
            }
        }
        info
    }

    /// Start or end `vehicle`'s session on `cp`. A configured vehicle brings its own data;
    /// a token of the authorization list gets a session from its `contract`, checkpointed
    /// before the session actor starts (which resumes from it).
    async fn session(&self, cp: &str, vehicle: &str, contract: Option<&Contract>, start: bool) {
        let Some(site) = self.site() else { return };
        let now = site.clock.now();
        let v = match (site.vehicle(vehicle).cloned(), contract) {
            (Some(v), _) => v,
            (None, Some(c)) if start => match self.contract_session(&site, cp, vehicle, c).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(charger = %cp, error = %e, "session from a contract failed");
                    return;
                }
            },
            (None, _) => token_vehicle(vehicle, cp),
        };
        let result = if start {
            crate::runtime::plug_vehicle(&site, &v, now).await
        } else {
            crate::runtime::unplug_vehicle(&site, &v, now).await
        };
        match result {
            Ok(()) => {
                tracing::info!(charger = %cp, %vehicle, start, "session from OCPP transaction")
            }
            Err(e) => tracing::warn!(charger = %cp, %vehicle, error = %e, "session change failed"),
        }
    }

    /// The wall clock now, s since the Unix epoch (on the node's clock: a paused test clock
    /// pauses it too).
    pub fn now_unix_s(&self) -> f64 {
        self.now_wall()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    }

    /// What the EV at charger `cp` reported (its session takes it every cycle).
    /// With `[authorization]`, it carries the token's contract terms as the list has them
    /// now: a token revoked or changed through the API stops discharging within a cycle
    /// (its session ends at the station's next Authorize or TransactionEvent).
    pub fn ev_report(&self, cp: &str) -> Option<EvReport> {
        let line = self.lines.get(cp)?;
        let (mut report, token) = {
            let s = lock(&line.state);
            (s.ev.clone(), s.token.clone())
        };
        if let (Some(list), Some(token)) = (&self.authorization, token) {
            report.terms = Some(match list.decide(&token) {
                Decision::Accepted { contract, .. } => (contract.v2g, contract.min_soc_pct),
                Decision::Blocked | Decision::Unknown => (false, 0.0),
            });
        }
        (report != EvReport::default()).then_some(report)
    }

    /// NotifyEVChargingNeeds: kept for the charger's session. Accepted: the CSMS's charging
    /// profile follows (the dispatcher's next setpoint for the session, as SetChargingProfile);
    /// Rejected for an EVSE this node does not address or a departure it cannot read.
    fn take_needs(
        &self,
        cp: &str,
        r: &NotifyEVChargingNeedsRequest,
    ) -> NotifyEVChargingNeedsStatus {
        let Some(line) = self.lines.get(cp) else {
            return NotifyEVChargingNeedsStatus::Rejected;
        };
        if r.evse_id != EVSE_ID {
            return NotifyEVChargingNeedsStatus::Rejected;
        }
        let Ok(needs) = ev_needs(&r.charging_needs, self.now_unix_s()) else {
            return NotifyEVChargingNeedsStatus::Rejected;
        };
        tracing::info!(charger = %cp, departure = ?needs.departure_unix_s, "EV charging needs");
        lock(&line.state).ev.needs = Some(needs);
        NotifyEVChargingNeedsStatus::Accepted
    }

    /// NotifyEVChargingSchedule: the EV's schedule, kept for the session of the transaction
    /// running on `cp`. Refused (reason code, details) for an EVSE this node does not
    /// address, a charger without a transaction the hub knows, or an unreadable time base.
    fn take_schedule(
        &self,
        cp: &str,
        r: &NotifyEVChargingScheduleRequest,
    ) -> Result<(), (&'static str, String)> {
        let line = self
            .lines
            .get(cp)
            .ok_or(("UnknownEvse", format!("no charger {cp:?} here")))?;
        if r.evse_id != EVSE_ID {
            let info = format!("evseId {} (this CSMS addresses {EVSE_ID})", r.evse_id);
            return Err(("UnknownEvse", info));
        }
        let schedule = ev_schedule(r, self.now_unix_s()).map_err(|e| ("InvalidTimeBase", e))?;
        let mut s = lock(&line.state);
        if s.reported.transaction.is_none() {
            let info = "no transaction runs on this EVSE".to_owned();
            return Err(("UnknownTransaction", info));
        }
        tracing::info!(charger = %cp, id = schedule.id, "EV charging schedule");
        s.ev.schedule = Some(schedule);
        Ok(())
    }

    /// After a node restart: the sessions of tokens (not of `[[vehicles]]`, which the node
    /// resumes itself) that were running resume from their checkpoints, on their chargers.
    pub async fn resume_token_sessions(&self, site: &Arc<SiteShared>) -> Result<(), String> {
        let keys = site
            .store
            .keys_with_prefix("session/")
            .map_err(|e| e.to_string())?;
        for key in keys {
            let cp: Option<crate::runtime::SessionCheckpoint> =
                site.store.get(&key).map_err(|e| e.to_string())?;
            let Some(cp) = cp else { continue };
            let sess = &cp.session;
            let running = sess.state != crate::session::SessionState::Ended;
            let token = sess.contract.is_some() && site.vehicle(&sess.vehicle).is_none();
            if running && token && !site.plugged.contains_key(&sess.charger) {
                // The departure is kept on the wall clock: put it on this run's clock
                // before the session actor publishes it.
                let mut rebased = crate::runtime::SessionCheckpoint {
                    session: sess.clone(),
                    register_kwh: cp.register_kwh,
                };
                let now_s = site.clock.now().as_secs_f64();
                let unchanged = crate::session::EvReport::default();
                if rebased
                    .session
                    .take_ev(&unchanged, now_s, self.now_unix_s())
                {
                    site.store
                        .put(&key, &rebased)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let v = token_vehicle(&sess.vehicle, &sess.charger);
                crate::runtime::plug_vehicle(site, &v, site.clock.now())
                    .await
                    .map_err(|e| e.to_string())?;
                self.resume(&sess.charger, &sess.vehicle);
            }
        }
        Ok(())
    }

    /// Checkpoint a new session for token `token` at `cp` from its contract.
    async fn contract_session(
        &self,
        site: &SiteShared,
        cp: &str,
        token: &str,
        contract: &Contract,
    ) -> Result<Vehicle, String> {
        let (_, charger) = site
            .charger(cp)
            .ok_or_else(|| format!("charger {cp} is in no segment"))?;
        let now = site.clock.now();
        let session = crate::session::Session::from_contract(
            token,
            cp,
            contract,
            charger.max_kw,
            now.as_secs_f64(),
            self.now_wall(),
        );
        let register = self.reported(cp).and_then(|r| r.energy_kwh);
        let cp_state = crate::runtime::SessionCheckpoint {
            session,
            register_kwh: register,
        };
        let key = crate::runtime::session_checkpoint_key(token);
        site.store
            .put(&key, &cp_state)
            .await
            .map_err(|e| e.to_string())?;
        Ok(token_vehicle(token, cp))
    }

    /// The profile for setpoint `key` at `kw` with `lease_until` (None: no lease).
    fn profile(
        &self,
        version: OcppVersion,
        key: SetpointKey,
        kw: f64,
        lease_until: Option<Duration>,
        now: Duration,
    ) -> Result<SetChargingProfileRequest, String> {
        let lease = Duration::try_from_secs_f64(self.lease_s).map_err(|e| e.to_string())?;
        let (from, until) = match lease_until {
            Some(until) => (until.saturating_sub(lease), until),
            None => (now, now + NO_LEASE_WINDOW),
        };
        let from = (self.epoch + from)
            .checked_sub(VALID_FROM_SLACK)
            .unwrap_or(self.epoch);
        let revision = u32::try_from(key.revision)
            .map_err(|_| format!("revision {} exceeds OCPP's range", key.revision))?;
        let dispatch = key.dispatch.to_string();
        let sp = Setpoint {
            dispatch_id: &dispatch,
            revision,
            power_kw: kw,
            valid_from: from,
            valid_until: self.epoch + until,
            evse_id: EVSE_ID,
        };
        let mut req = setpoint_profile(version, &sp).map_err(|e| e.to_string())?;
        if version == OcppVersion::V21 && kw < 0.0 {
            let secs = OFFLINE_DISCHARGE_LIMIT.as_secs();
            req.charging_profile.max_offline_duration = Some(i32::try_from(secs).unwrap_or(0));
            req.charging_profile.invalid_after_offline_duration = Some(true);
        }
        Ok(req)
    }

    fn remember(&self, id: &str, req: &SetChargingProfileRequest, key: SetpointKey) {
        let Some(line) = self.lines.get(id) else {
            return;
        };
        let schedule = req
            .charging_profile
            .charging_schedule
            .first()
            .map_or(0, |s| s.id);
        let mut s = lock(&line.state);
        let entry = (req.charging_profile.id, schedule, key);
        s.written.retain(|e| (e.0, e.1) != (entry.0, entry.1));
        s.written.push_back(entry);
        while s.written.len() > WRITTEN_KEYS_KEPT {
            s.written.pop_front();
        }
    }

    fn recognise(&self, id: &str, profile: i32, schedule: Option<i32>) -> Option<SetpointKey> {
        let line = self.lines.get(id)?;
        let s = lock(&line.state);
        s.written
            .iter()
            .rev()
            .find(|(p, sch, _)| *p == profile && Some(*sch) == schedule)
            .map(|e| e.2)
            // Key (0, 0) is the "no dispatch" key of a local clamp: no applied setpoint. A
            // profile this node did not write (another run's) is not recognised either: its
            // lease is on another clock, so the link treats it as ended.
            .filter(|k| k.dispatch != 0)
    }
}

/// NotifyEVChargingNeeds' values in the session's units (W → kW, Wh → kWh), received at
/// `at` (Unix s); an unreadable departure time is an error.
fn ev_needs(n: &ChargingNeeds, at: f64) -> Result<EvNeeds, String> {
    let kilo = |x: Option<f64>| x.filter(|x| x.is_finite()).map(|x| x / 1000.0);
    let departure = match &n.departure_time {
        Some(t) => {
            let t = parse_date_time(t).map_err(|e| e.to_string())?;
            let s = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?;
            Some(s.as_secs_f64())
        }
        None => None,
    };
    let dc = n.dc_charging_parameters.as_ref();
    let v2x = n.v2x_charging_parameters.as_ref();
    let ac_energy = n.ac_charging_parameters.as_ref().map(|a| a.energy_amount);
    Ok(EvNeeds {
        at_unix_s: at,
        departure_unix_s: departure,
        capacity_kwh: kilo(dc.and_then(|d| d.ev_energy_capacity)),
        soc_pct: dc.and_then(|d| d.state_of_charge).map(f64::from),
        target_soc_pct: v2x.and_then(|v| v.target_soc).map(f64::from),
        requested_kwh: kilo(v2x.and_then(|v| v.ev_target_energy_request))
            .or(kilo(dc.and_then(|d| d.energy_amount)))
            .or(kilo(ac_energy)),
        max_charge_kw: kilo(v2x.and_then(|v| v.max_charge_power))
            .or(kilo(dc.and_then(|d| d.ev_max_power))),
        max_discharge_kw: kilo(v2x.and_then(|v| v.max_discharge_power)),
        min_v2x_kwh: kilo(v2x.and_then(|v| v.ev_min_v2x_energy_request)),
        offer_kwh: n.ev_energy_offer.as_ref().map(|o| {
            let entries: Vec<(f64, f64)> = (o.ev_power_schedule.ev_power_schedule_entries)
                .iter()
                .map(|e| (f64::from(e.duration), e.power))
                .collect();
            offered_discharge_kwh(&entries)
        }),
    })
}

/// Seconds since the Unix epoch of an OCPP date-time.
fn unix_s(t: &DateTime) -> Result<f64, String> {
    let t = parse_date_time(t).map_err(|e| e.to_string())?;
    let s = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    Ok(s.as_secs_f64())
}

/// NotifyEVChargingSchedule as the session keeps it, received at `at` (Unix s); an
/// unreadable time base is an error.
fn ev_schedule(r: &NotifyEVChargingScheduleRequest, at: f64) -> Result<EvSchedule, String> {
    let c = &r.charging_schedule;
    Ok(EvSchedule {
        time_base_unix_s: unix_s(&r.time_base).map_err(|e| format!("timeBase: {e}"))?,
        id: c.id,
        selected_id: r.selected_charging_schedule_id,
        unit: c.charging_rate_unit.as_str().to_owned(),
        periods: (c.charging_schedule_period.iter())
            .map(|p| EvSchedulePeriod {
                start_s: f64::from(p.start_period),
                limit: p.limit.filter(|x| x.is_finite()),
                discharge_limit: p.discharge_limit.filter(|x| x.is_finite()),
            })
            .collect(),
        duration_s: c.duration.map(f64::from),
        at_unix_s: at,
    })
}

/// The stand-in [`Vehicle`] of a token's session: plugging and unplugging need its id and
/// charger only (its data lives in the session's checkpoint).
fn token_vehicle(token: &str, cp: &str) -> Vehicle {
    Vehicle {
        id: token.to_owned(),
        charger: cp.to_owned(),
        capacity_kwh: crate::authorization::ASSUMED_CAPACITY_KWH,
        soc_pct: 0.0,
        min_soc_pct: 0.0,
        target_soc_pct: 0.0,
        arrive_s: 0.0,
        depart_s: 0.0,
        max_kw: 0.0,
    }
}

fn token_info(status: AuthorizationStatus) -> IdTokenInfo {
    IdTokenInfo {
        status,
        cache_expiry_date_time: None,
        charging_priority: None,
        language1: None,
        evse_id: None,
        group_id_token: None,
        language2: None,
        personal_message: None,
        extra: Map::new(),
    }
}

/// A GetVariables entry for (component, variable).
fn variable((c, v): (&str, &str)) -> GetVariableData {
    GetVariableData {
        attribute_type: None,
        component: Component {
            name: c.to_owned(),
            instance: None,
            evse: None,
            extra: Map::new(),
        },
        variable: Variable {
            name: v.to_owned(),
            instance: None,
            extra: Map::new(),
        },
        extra: Map::new(),
    }
}

/// The simulator's AppliedProfile read-back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppliedProfile {
    id: i32,
    schedule_id: Option<i32>,
    valid_to: Option<String>,
    setpoint_w: Option<f64>,
    limit_w: Option<f64>,
}

/// A charger over OCPP.
pub struct OcppCharger {
    hub: Arc<OcppHub>,
    id: String,
}

impl OcppCharger {
    /// Charger `id` on `hub`.
    pub fn new(hub: Arc<OcppHub>, id: &str) -> Self {
        OcppCharger {
            hub,
            id: id.to_owned(),
        }
    }

    fn call_error(&self, e: CallError) -> DeviceError {
        match e {
            CallError::Disconnected
            | CallError::Timeout { .. }
            | CallError::QueueFull { .. }
            | CallError::Preempted { .. } => DeviceError::Unreachable {
                device: self.id.clone(),
            },
            e @ (CallError::Rejected { .. } | CallError::InvalidRequest(_)) => {
                DeviceError::Refused {
                    device: self.id.clone(),
                    reason: e.to_string(),
                }
            }
            other => DeviceError::BadValue {
                device: self.id.clone(),
                field: "OCPP answer",
                value: other.to_string(),
            },
        }
    }

    fn bad(&self, field: &'static str, value: impl Into<String>) -> DeviceError {
        DeviceError::BadValue {
            device: self.id.clone(),
            field,
            value: value.into(),
        }
    }

    async fn read_now(&self, now: Duration) -> Result<ChargerReading, DeviceError> {
        let conn = self.hub.connection(&self.id)?;
        let mode = self.hub.read_back(&self.id);
        // While a CALL of the station is being answered it cannot report (one outstanding
        // CALL per side): read without the standard read-back, and learn nothing.
        let try_standard =
            matches!(mode, ReadBack::Unknown | ReadBack::Standard) && !self.hub.answering(&self.id);
        let standard = match try_standard {
            true => self
                .hub
                .read_standard(&self.id, &conn)
                .await
                .map_err(|e| self.call_error(e))?,
            false => None,
        };
        let learn_variable = try_standard && standard.is_none();
        let ask_variable = standard.is_none() && mode != ReadBack::Unsupported;
        let mut wanted = vec![EVSE_POWER, DEFAULT_LIMIT];
        if ask_variable {
            wanted.push(APPLIED_PROFILE);
        }
        let answer = conn
            .call(GetVariablesRequest {
                get_variable_data: wanted.into_iter().map(variable).collect(),
                extra: Map::new(),
            })
            .await
            .map_err(|e| self.call_error(e))?;
        let value = |(c, v): (&str, &str)| {
            answer
                .get_variable_result
                .iter()
                .find(|r| r.component.name == c && r.variable.name == v)
                .filter(|r| r.attribute_status == GetVariableStatus::Accepted)
                .and_then(|r| r.attribute_value.clone())
        };
        let watts =
            |field: &'static str, text: Option<String>| -> Result<Option<f64>, DeviceError> {
                match text {
                    None => Ok(None),
                    Some(t) => match t.trim().parse::<f64>() {
                        Ok(w) if w.is_finite() => Ok(Some(w / 1000.0)),
                        _ => Err(self.bad(field, t)),
                    },
                }
            };
        let reported = self.hub.reported(&self.id).unwrap_or_default();
        let power_kw = watts("EVSE.Power", value(EVSE_POWER))?
            .or(reported.power_kw)
            .unwrap_or(0.0);
        let default_kw = watts("DefaultLimit", value(DEFAULT_LIMIT))?;
        let applied = match standard {
            Some(a) => a,
            None if ask_variable => {
                let text = value(APPLIED_PROFILE);
                if learn_variable {
                    let mode = if text.is_some() {
                        ReadBack::Variable
                    } else {
                        ReadBack::Unsupported
                    };
                    self.hub.set_read_back(&self.id, mode);
                }
                self.applied_variable(text.as_deref())?
            }
            None => Applied::default(),
        };
        let _ = now;
        Ok(ChargerReading {
            power_kw,
            energy_kwh: reported.energy_kwh.unwrap_or(0.0),
            setpoint_kw: applied.setpoint_kw.or(default_kw).unwrap_or(power_kw),
            applied: applied.key,
            connected: reported.occupied || reported.transaction.is_some(),
            lease_until: applied.lease_until,
        })
    }

    /// The simulator's AppliedProfile variable (the fallback read-back).
    fn applied_variable(&self, text: Option<&str>) -> Result<Applied, DeviceError> {
        let text = match text {
            None | Some("none") => return Ok(Applied::default()),
            Some(t) => t,
        };
        let p: AppliedProfile = serde_json::from_str(text)
            .map_err(|e| self.bad("AppliedProfile", format!("{text:.200} ({e})")))?;
        let lease_until = match p.valid_to {
            Some(t) => {
                let at = parse_date_time(&DateTime(t.clone()))
                    .map_err(|_| self.bad("AppliedProfile.validTo", t))?;
                Some(at.duration_since(self.hub.epoch).unwrap_or(Duration::ZERO))
            }
            None => None,
        };
        Ok(Applied {
            key: self.hub.recognise(&self.id, p.id, p.schedule_id),
            setpoint_kw: p.setpoint_w.or(p.limit_w).map(|w| w / 1000.0),
            lease_until,
        })
    }

    async fn write_now(
        &self,
        key: SetpointKey,
        kw: f64,
        lease_until: Option<Duration>,
        now: Duration,
    ) -> Result<ChargerReading, DeviceError> {
        let conn = self.hub.connection(&self.id)?;
        let version = conn.info().version;
        let req = self
            .hub
            .profile(version, key, kw, lease_until, now)
            .map_err(|reason| DeviceError::Refused {
                device: self.id.clone(),
                reason,
            })?;
        // Remembered before it is sent: if this actor dies before the answer, the charger
        // may hold it, and the next read must recognise it.
        self.hub.remember(&self.id, &req, key);
        let answer = conn.call(req).await.map_err(|e| self.call_error(e))?;
        if answer.status != ChargingProfileStatus::Accepted {
            let why = answer
                .status_info
                .map(|i| {
                    format!(
                        "{} {}",
                        i.reason_code,
                        i.additional_info.unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            return Err(DeviceError::Refused {
                device: self.id.clone(),
                reason: format!("charging profile {:?}: {why}", answer.status),
            });
        }
        self.read_now(now).await
    }
}

impl ChargerIo for OcppCharger {
    fn read(&self, now: Duration) -> BoxFuture<'_, Result<ChargerReading, DeviceError>> {
        Box::pin(self.read_now(now))
    }

    fn write(
        &self,
        key: SetpointKey,
        kw: f64,
        lease_until: Option<Duration>,
        now: Duration,
    ) -> BoxFuture<'_, Result<ChargerReading, DeviceError>> {
        Box::pin(self.write_now(key, kw, lease_until, now))
    }
}

/// The CSMS's authenticator: a configured charger ([`OcppHub`]'s lines) with credentials.
struct HubAuthenticator {
    hub: Weak<OcppHub>,
    credentials: Arc<Credentials>,
}

impl HubAuthenticator {
    fn configured(&self, id: &str) -> bool {
        self.hub.upgrade().is_some_and(|hub| hub.configured(id))
    }
}

impl Authenticator for HubAuthenticator {
    fn knows(&self, id: &str) -> bool {
        self.configured(id) && self.credentials.knows(id)
    }

    fn verify_fast(&self, id: &str, password: &[u8]) -> Option<bool> {
        if !self.configured(id) {
            return Some(false);
        }
        self.credentials.verify_fast(id, password)
    }

    fn verify(&self, id: &str, password: &[u8]) -> bool {
        self.configured(id) && self.credentials.verify(id, password)
    }
}
