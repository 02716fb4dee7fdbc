//! The CSMS listener: accepts charge points on `/ocpp/{chargePointId}` over ws (security
//! profile 1) or wss (profiles 2 and 3), negotiates the OCPP version, authenticates, and hands
//! each connection to the owner as a [`Session`].
//!
//! Invariants:
//! - the whole handshake (TCP accept to authenticated WebSocket upgrade, TLS included) is
//!   bounded by [`ServerConfig::handshake_timeout`]; at most [`ServerConfig::max_handshakes`]
//!   handshakes run at once, a budget apart from the [`ServerConfig::max_connections`]
//!   sessions of authenticated stations, so a flood of slow or unauthenticated connections
//!   cannot take the slots stations need (see [`super::gate`]);
//! - one address holds at most [`ServerConfig::max_handshakes_per_ip`] handshakes and
//!   [`ServerConfig::max_connections_per_ip`] connections (loopback exempt while
//!   [`ServerConfig::per_ip_exempt_loopback`]: a TLS terminator or a load test on the same
//!   host brings every station from 127.0.0.1); over a limit, the socket is closed at accept;
//! - a password is checked off the async runtime, at most [`ServerConfig::max_verifications`]
//!   at once, after a cheap answer was sought ([`Authenticator::verify_fast`]); the request
//!   head is read first for that ([`super::head`]), at most
//!   [`ServerConfig::max_request_head_bytes`];
//! - one live connection per station: a second, authenticated connection for a station whose
//!   connection is open waits up to [`ServerConfig::takeover_grace`] for it to end (a station
//!   that closes and reconnects at once, after a Reset, must not lose that race), then is
//!   refused with 409 until the first ends. A leaked password must not take over a
//!   live station (its transactions, meter values and setpoints). A station that rebooted
//!   comes back after its old TCP connection died without a close; the CSMS notices within
//!   `ping_interval + pong_timeout` of [`RpcConfig`] (90 s by default), the longest a
//!   rebooted station is refused;
//! - a path that is not `/ocpp/{id}` with a valid id (percent-decoded, UTF-8, 1 to
//!   [`MAX_CHARGE_POINT_ID_LEN`] characters, no `:` or control characters) is a 404; no
//!   supported subprotocol is a 400; failed Basic authentication is a 401 — all before the
//!   upgrade, each reported as [`ServerEvent::Rejected`] with the reason;
//! - on a profile 3 listener the client certificate's subject common name must be the charge
//!   point id of the path (403 otherwise): a certificate is one charge point's identity, not a
//!   pass for any id;
//! - the version is the first of [`ServerConfig::versions`] (default: 2.1, then 2.0.1) that the
//!   charge point offers, and the response names it;
//! - every session ends with exactly one [`ServerEvent::Disconnected`].

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};

use super::auth::{parse_basic, Authenticator, BasicAuthError};
use super::connection::{
    self, websocket_config, Connection, ConnectionInfo, DisconnectReason, IncomingCall, RpcConfig,
};
use super::gate::{Admission, Claim, Gate};
use super::head;
use super::messages::Initiator;
use super::OcppVersion;

/// Default port for ws (profile 1).
pub const DEFAULT_WS_PORT: u16 = 8080;
/// Default port for wss (profiles 2 and 3).
pub const DEFAULT_WSS_PORT: u16 = 8443;
/// The path prefix charge points connect to.
pub const OCPP_PATH_PREFIX: &str = "/ocpp/";
/// OCPP 2.0.1's limit on a charging station identity.
pub const MAX_CHARGE_POINT_ID_LEN: usize = 48;
/// Default bound on TCP accept → WebSocket upgrade (TLS included).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on open sessions of authenticated stations.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default limit on handshakes in progress (TCP accepted, upgrade not yet authenticated): a
/// small budget, apart from the sessions'. Above the load engine's 256 connects in flight.
pub const DEFAULT_MAX_HANDSHAKES: usize = 512;
/// Default limit on handshakes in progress from one address.
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 16;
/// Default limit on connections (handshaking or open) from one address: a site's chargers
/// behind one NAT router fit, one host cannot hold the whole CSMS.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default limit on password verifications (PBKDF2 runs) at once, on blocking threads.
pub const DEFAULT_MAX_VERIFICATIONS: usize = 2;
/// Default bound on how long an authenticated connection for a live station waits for that
/// station's connection to end before it is refused (409): a station that closes and
/// reconnects at once, as after a Reset, wins the race against its old connection's teardown.
pub const DEFAULT_TAKEOVER_GRACE: Duration = Duration::from_secs(2);
/// Default limit on the upgrade request's head (request line and headers).
pub const DEFAULT_MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Default capacity of the event channel to the owner.
pub const DEFAULT_EVENT_QUEUE_CAPACITY: usize = 1024;

/// How a listener secures its connections (OCPP security profiles).
#[derive(Clone)]
pub enum Security {
    /// Profile 1: plain ws with HTTP Basic authentication.
    BasicAuth(Arc<dyn Authenticator>),
    /// Profile 2: TLS (server certificate) with HTTP Basic authentication.
    TlsBasicAuth {
        /// Server config without client authentication ([`super::tls::server_config`]).
        tls: Arc<rustls::ServerConfig>,
        /// Checks the passwords.
        authenticator: Arc<dyn Authenticator>,
    },
    /// Profile 3: mutual TLS; the config must verify client certificates
    /// ([`super::tls::server_config`] with a client CA).
    MutualTls(Arc<rustls::ServerConfig>),
}

impl Security {
    /// The OCPP security profile number.
    pub fn profile(&self) -> u8 {
        match self {
            Security::BasicAuth(_) => 1,
            Security::TlsBasicAuth { .. } => 2,
            Security::MutualTls(_) => 3,
        }
    }

    fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        match self {
            Security::BasicAuth(_) => None,
            Security::TlsBasicAuth { tls, .. } | Security::MutualTls(tls) => Some(tls),
        }
    }

    fn authenticator(&self) -> Option<&Arc<dyn Authenticator>> {
        match self {
            Security::BasicAuth(a)
            | Security::TlsBasicAuth {
                authenticator: a, ..
            } => Some(a),
            Security::MutualTls(_) => None,
        }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Security(profile {})", self.profile())
    }
}

/// One listening socket.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Address to bind (port 0 picks a free port; see [`Server::local_addrs`]).
    pub addr: SocketAddr,
    /// Its security profile.
    pub security: Security,
}

impl ListenerConfig {
    /// ws on all interfaces, port [`DEFAULT_WS_PORT`], security profile 1.
    pub fn ws_default(authenticator: Arc<dyn Authenticator>) -> Self {
        ListenerConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_WS_PORT)),
            security: Security::BasicAuth(authenticator),
        }
    }

    /// wss on all interfaces, port [`DEFAULT_WSS_PORT`], with profile 2 or 3 `security`.
    pub fn wss_default(security: Security) -> Self {
        ListenerConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_WSS_PORT)),
            security,
        }
    }
}

/// The CSMS's configuration; every limit has a named default.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The listeners (typically ws on [`DEFAULT_WS_PORT`] and wss on [`DEFAULT_WSS_PORT`]).
    pub listeners: Vec<ListenerConfig>,
    /// Versions accepted, most preferred first (default [`OcppVersion::PREFERENCE`]).
    pub versions: Vec<OcppVersion>,
    /// Per-connection limits.
    pub rpc: RpcConfig,
    /// Bound on the handshake, TCP accept to authenticated upgrade
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout: Duration,
    /// Open sessions of authenticated stations ([`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Handshakes in progress ([`DEFAULT_MAX_HANDSHAKES`]).
    pub max_handshakes: usize,
    /// Handshakes in progress from one address ([`DEFAULT_MAX_HANDSHAKES_PER_IP`]).
    pub max_handshakes_per_ip: usize,
    /// Connections, handshaking or open, from one address ([`DEFAULT_MAX_CONNECTIONS_PER_IP`]).
    pub max_connections_per_ip: usize,
    /// Whether loopback peers skip the two per-address caps (default true: everything on
    /// loopback is this host; the global budgets still hold).
    pub per_ip_exempt_loopback: bool,
    /// Password verifications at once ([`DEFAULT_MAX_VERIFICATIONS`]).
    pub max_verifications: usize,
    /// Longest upgrade request head ([`DEFAULT_MAX_REQUEST_HEAD_BYTES`]).
    pub max_request_head_bytes: usize,
    /// How long a connection for a live station waits for the live one to end before 409
    /// ([`DEFAULT_TAKEOVER_GRACE`]; within the handshake timeout).
    pub takeover_grace: Duration,
    /// Capacity of the event channel ([`DEFAULT_EVENT_QUEUE_CAPACITY`]); a slow owner slows
    /// accepting, it does not lose events.
    pub event_queue_capacity: usize,
}

impl ServerConfig {
    /// A configuration with the given listeners and default limits.
    pub fn new(listeners: Vec<ListenerConfig>) -> Self {
        ServerConfig {
            listeners,
            versions: OcppVersion::PREFERENCE.to_vec(),
            rpc: RpcConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            per_ip_exempt_loopback: true,
            max_verifications: DEFAULT_MAX_VERIFICATIONS,
            max_request_head_bytes: DEFAULT_MAX_REQUEST_HEAD_BYTES,
            takeover_grace: DEFAULT_TAKEOVER_GRACE,
            event_queue_capacity: DEFAULT_EVENT_QUEUE_CAPACITY,
        }
    }
}

/// A connected, authenticated charge point, handed to its owner.
#[derive(Debug)]
pub struct Session {
    /// Send CALLs, close, learn that it dropped.
    pub connection: Connection,
    /// The charge point's CALLs, to answer (the channel closes when the connection does).
    pub calls: mpsc::Receiver<IncomingCall>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The security profile of the listener it came through.
    pub security_profile: u8,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeRejection {
    /// The handshake took longer than the limit.
    #[error("handshake not completed within {0:?}")]
    Timeout(Duration),
    /// TLS failed (no or untrusted client certificate, protocol error).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The path is not `/ocpp/{chargePointId}` with a valid id (answered 404).
    #[error("bad path {path:?}: {reason}")]
    BadPath {
        /// The requested path.
        path: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// None of the offered subprotocols is supported (answered 400).
    #[error("no supported OCPP subprotocol among {offered:?}")]
    NoSubprotocol {
        /// What the client offered.
        offered: Vec<String>,
    },
    /// Basic authentication failed (answered 401).
    #[error("charge point {charge_point_id:?}: {reason}")]
    Unauthorized {
        /// The id from the path.
        charge_point_id: String,
        /// Why.
        reason: BasicAuthError,
    },
    /// The session limit is reached (answered 503).
    #[error("connection limit of {0} reached")]
    TooManyConnections(usize),
    /// The handshake budget is used up (the socket is closed at accept).
    #[error("handshake limit of {0} reached")]
    TooManyHandshakes(usize),
    /// The peer's address is at one of its caps (the socket is closed at accept).
    #[error("per-address limit of {limit} {what} reached")]
    TooManyFromAddress {
        /// `handshakes` or `connections`.
        what: &'static str,
        /// The cap.
        limit: usize,
    },
    /// The station already has a live connection (answered 409).
    #[error("charge point {charge_point_id:?} is already connected")]
    AlreadyConnected {
        /// The id from the path.
        charge_point_id: String,
    },
    /// The request head could not be read (too long, closed, malformed).
    #[error("{0}")]
    Head(#[from] super::head::HeadError),
    /// The WebSocket handshake itself failed.
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(String),
    /// Profile 3: the client certificate was issued to another charge point than the one
    /// in the path (answered 403), or names none.
    #[error("charge point {charge_point_id:?} presented the certificate of {certificate:?}")]
    IdentityMismatch {
        /// The id from the path.
        charge_point_id: String,
        /// The certificate's subject common name (empty: none could be read).
        certificate: String,
    },
}

/// What the server tells its owner.
#[derive(Debug)]
pub enum ServerEvent {
    /// A charge point connected.
    Connected(Session),
    /// A session ended.
    Disconnected {
        /// Its id.
        charge_point_id: String,
        /// Why.
        reason: DisconnectReason,
    },
    /// A connection attempt was refused.
    Rejected {
        /// The peer's address.
        peer: SocketAddr,
        /// Why.
        reason: HandshakeRejection,
    },
}

/// A running CSMS listener set. Dropping it (or [`Server::shutdown`]) stops accepting; open
/// sessions live on until their owners close them.
pub struct Server {
    local_addrs: Vec<SocketAddr>,
    events: mpsc::Receiver<ServerEvent>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every listener and starts accepting.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        // Compile the schemas now rather than on the first frame.
        super::schema::warm_up().map_err(|e| io::Error::other(e.to_string()))?;
        if config.versions.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no OCPP version enabled",
            ));
        }
        let (events_tx, events) = mpsc::channel(config.event_queue_capacity.max(1));
        let shared = Arc::new(config.clone());
        let gate = Gate::new(Arc::clone(&shared));
        let mut local_addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        for (index, listener) in config.listeners.iter().enumerate() {
            let socket = TcpListener::bind(listener.addr).await?;
            local_addrs.push(socket.local_addr()?);
            accept_tasks.push(tokio::spawn(accept_loop(
                socket,
                index,
                Arc::clone(&shared),
                Arc::clone(&gate),
                events_tx.clone(),
            )));
        }
        Ok(Server {
            local_addrs,
            events,
            accept_tasks,
        })
    }

    /// The bound addresses, in the order of [`ServerConfig::listeners`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The next event; `None` once every listener and session has ended.
    pub async fn next_event(&mut self) -> Option<ServerEvent> {
        self.events.recv().await
    }

    /// Stops accepting new connections.
    pub fn shutdown(&self) {
        for task in &self.accept_tasks {
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    socket: TcpListener,
    index: usize,
    config: Arc<ServerConfig>,
    gate: Arc<Gate>,
    events: mpsc::Sender<ServerEvent>,
) {
    loop {
        let (tcp, peer) = match socket.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Per-connection errors (reset before accept, out of file descriptors): log,
                // pause briefly so a persistent error does not spin, and go on.
                tracing::warn!(error = %e, "OCPP accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let admission = match gate.admit(peer.ip()) {
            Ok(a) => a,
            Err(reason) => {
                drop(tcp);
                let _ = events.send(ServerEvent::Rejected { peer, reason }).await;
                continue;
            }
        };
        tokio::spawn(serve(
            tcp,
            peer,
            admission,
            index,
            Arc::clone(&config),
            Arc::clone(&gate),
            events.clone(),
        ));
    }
}

/// One accepted socket: the bounded handshake, then the session until it ends.
async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Admission,
    index: usize,
    config: Arc<ServerConfig>,
    gate: Arc<Gate>,
    events: mpsc::Sender<ServerEvent>,
) {
    let _ = tcp.set_nodelay(true);
    let listener = &config.listeners[index];
    let accepted = tokio::time::timeout(
        config.handshake_timeout,
        handshake(tcp, listener, &config, &gate),
    )
    .await
    .unwrap_or(Err(HandshakeRejection::Timeout(config.handshake_timeout)));
    let accepted = match accepted {
        Ok(a) => a,
        Err(reason) => {
            let _ = events.send(ServerEvent::Rejected { peer, reason }).await;
            return;
        }
    };
    // The handshake's slot goes back; the address's connection and the claim stay.
    let _address = admission.upgraded();
    let _claim = accepted.claim;
    let charge_point_id = accepted.connection.info().charge_point_id.clone();
    let closed = accepted.connection.closed_watch();
    let session = Session {
        connection: accepted.connection,
        calls: accepted.calls,
        peer,
        security_profile: listener.security.profile(),
    };
    if events.send(ServerEvent::Connected(session)).await.is_err() {
        return; // the owner is gone; dropping the session closes the connection
    }
    let reason = closed.wait().await;
    let _ = events
        .send(ServerEvent::Disconnected {
            charge_point_id,
            reason,
        })
        .await;
}

struct Accepted {
    connection: Connection,
    calls: mpsc::Receiver<IncomingCall>,
    claim: Claim,
}

async fn handshake(
    tcp: TcpStream,
    listener: &ListenerConfig,
    config: &ServerConfig,
    gate: &Arc<Gate>,
) -> Result<Accepted, HandshakeRejection> {
    match listener.security.tls() {
        None => authenticate_and_upgrade(tcp, listener, config, gate, None).await,
        Some(tls) => {
            let stream = TlsAcceptor::from(Arc::clone(tls))
                .accept(tcp)
                .await
                .map_err(|e| HandshakeRejection::Tls(e.to_string()))?;
            // Profile 3: the certificate says who the charge point is (its subject CN, as
            // OCPP's security whitepaper has the CSMS check); the path must agree.
            let identity = match &listener.security {
                Security::MutualTls(_) => Some(
                    stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| subject_common_name(leaf.as_ref()))
                        .unwrap_or_default(),
                ),
                _ => None,
            };
            authenticate_and_upgrade(stream, listener, config, gate, identity).await
        }
    }
}

/// Reads the request head, checks the password (profiles 1 and 2), then lets tungstenite
/// answer the same bytes.
async fn authenticate_and_upgrade<S>(
    mut stream: S,
    listener: &ListenerConfig,
    config: &ServerConfig,
    gate: &Arc<Gate>,
    identity: Option<String>,
) -> Result<Accepted, HandshakeRejection>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let bytes = head::read(&mut stream, config.max_request_head_bytes).await?;
    let parsed = head::parse(&bytes)?;
    let path_id = charge_point_id_from_path(&parsed.path).ok();
    let password = match (listener.security.authenticator(), &path_id) {
        (Some(auth), Some(id)) => Some(
            check_password(parsed.authorization.as_deref(), id, auth, gate)
                .await
                .map_err(|reason| (id.clone(), reason)),
        ),
        // A bad path is answered 404 by the upgrade's own check.
        _ => None,
    };
    // Authenticated as this station (password, or profile 3's certificate): a closing
    // connection of the same station may end first (bounded by the takeover grace).
    if let Some(id) = &path_id {
        let authenticated = match (&password, &identity) {
            (Some(Ok(())), _) => true,
            (None, Some(cn)) => cn == id,
            _ => false,
        };
        if authenticated {
            let deadline = tokio::time::Instant::now() + config.takeover_grace;
            gate.settle(id, deadline).await;
        }
    }
    let checks = Checks {
        listener,
        versions: &config.versions,
        identity,
        password,
        gate,
    };
    upgrade(head::Replay::new(bytes, stream), config, checks).await
}

/// Basic authentication with a slow verifier kept off the async runtime.
async fn check_password(
    header: Option<&[u8]>,
    charge_point_id: &str,
    authenticator: &Arc<dyn Authenticator>,
    gate: &Gate,
) -> Result<(), BasicAuthError> {
    let (user, password) = parse_basic(header.ok_or(BasicAuthError::Missing)?)?;
    if user != charge_point_id {
        return Err(BasicAuthError::UserMismatch);
    }
    if !authenticator.knows(charge_point_id) {
        return Err(BasicAuthError::UnknownStation);
    }
    let ok = match authenticator.verify_fast(charge_point_id, &password) {
        Some(ok) => ok,
        None => {
            // The permit travels with the blocking work: a handshake that times out while
            // its hash runs does not free a slot the hash still uses.
            let permit = Arc::clone(&gate.verifications)
                .acquire_owned()
                .await
                .map_err(|_| BasicAuthError::BadPassword)?;
            let auth = Arc::clone(authenticator);
            let id = charge_point_id.to_owned();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                auth.verify(&id, &password)
            })
            .await
            .unwrap_or(false)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(BasicAuthError::BadPassword)
    }
}

/// What the upgrade callback decides with.
struct Checks<'a> {
    listener: &'a ListenerConfig,
    versions: &'a [OcppVersion],
    /// Profile 3: the certificate's subject CN.
    identity: Option<String>,
    /// Profiles 1–2: the password check's outcome for the id of the path.
    password: Option<Result<(), (String, BasicAuthError)>>,
    gate: &'a Arc<Gate>,
}

impl Checks<'_> {
    fn decide(&self, request: &Request) -> Result<(ConnectionInfo, Claim), HandshakeRejection> {
        let info = check_request(request, self.versions)?;
        let id = &info.charge_point_id;
        if let Some(cn) = &self.identity {
            if cn != id {
                return Err(HandshakeRejection::IdentityMismatch {
                    charge_point_id: id.clone(),
                    certificate: cn.clone(),
                });
            }
        }
        if self.listener.security.authenticator().is_some() {
            match &self.password {
                Some(Ok(())) => {}
                Some(Err((checked, reason))) if checked == id => {
                    return Err(HandshakeRejection::Unauthorized {
                        charge_point_id: id.clone(),
                        reason: reason.clone(),
                    })
                }
                // The head that was checked is the head tungstenite parsed; be safe anyway.
                _ => {
                    return Err(HandshakeRejection::Unauthorized {
                        charge_point_id: id.clone(),
                        reason: BasicAuthError::Malformed,
                    })
                }
            }
        }
        let claim = self.gate.claim(id)?;
        Ok((info, claim))
    }
}

/// The subject common name of a DER certificate (None: unreadable, or no CN).
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

async fn upgrade<S>(
    stream: S,
    config: &ServerConfig,
    checks: Checks<'_>,
) -> Result<Accepted, HandshakeRejection>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Decision = Result<(ConnectionInfo, Claim), HandshakeRejection>;
    let outcome: Mutex<Option<Decision>> = Mutex::new(None);
    // The signature is tungstenite's `Callback`; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        let result = checks.decide(request);
        let reply = match &result {
            Ok((info, _)) => Ok(with_subprotocol(response, info.version)),
            Err(rejection) => Err(error_response(rejection)),
        };
        if let Ok(mut slot) = outcome.lock() {
            *slot = Some(result);
        }
        reply
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(websocket_config()))
            .await;
    let decided = outcome.lock().map(|mut s| s.take()).unwrap_or(None);
    match (ws, decided) {
        (Ok(ws), Some(Ok((info, claim)))) => {
            let (connection, calls) =
                connection::spawn(ws, info, config.rpc.clone(), Initiator::Csms);
            claim.running(connection.closed_watch());
            Ok(Accepted {
                connection,
                calls,
                claim,
            })
        }
        (_, Some(Err(rejection))) => Err(rejection),
        (Err(e), _) => Err(HandshakeRejection::WebSocket(e.to_string())),
        (Ok(_), None) => Err(HandshakeRejection::WebSocket(
            "handshake completed without a decision".to_owned(),
        )),
    }
}

fn with_subprotocol(mut response: Response, version: OcppVersion) -> Response {
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(version.subprotocol()),
    );
    response
}

fn error_response(rejection: &HandshakeRejection) -> ErrorResponse {
    let status = match rejection {
        HandshakeRejection::BadPath { .. } => StatusCode::NOT_FOUND,
        HandshakeRejection::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        HandshakeRejection::IdentityMismatch { .. } => StatusCode::FORBIDDEN,
        HandshakeRejection::AlreadyConnected { .. } => StatusCode::CONFLICT,
        HandshakeRejection::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response = ErrorResponse::new(Some(rejection.to_string()));
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"OCPP\""),
        );
    }
    response
}

/// Path and subprotocol of an upgrade request.
fn check_request(
    request: &Request,
    versions: &[OcppVersion],
) -> Result<ConnectionInfo, HandshakeRejection> {
    let charge_point_id = charge_point_id_from_path(request.uri().path())?;
    let offered: Vec<String> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let version = versions
        .iter()
        .copied()
        .find(|v| offered.iter().any(|o| o == v.subprotocol()))
        .ok_or_else(|| HandshakeRejection::NoSubprotocol {
            offered: offered.clone(),
        })?;
    Ok(ConnectionInfo {
        charge_point_id,
        version,
    })
}

/// Whether `id` is a valid charge point identity: 1 to [`MAX_CHARGE_POINT_ID_LEN`]
/// characters, no `:`, `/` or control characters.
pub fn check_charge_point_id(id: &str) -> Result<(), &'static str> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_CHARGE_POINT_ID_LEN {
        return Err("id must have 1 to 48 characters");
    }
    if id.chars().any(|c| c == ':' || c == '/' || c.is_control()) {
        return Err("id must not contain ':', '/' or control characters");
    }
    Ok(())
}

/// Extracts and validates the charge point id of `/ocpp/{id}`.
pub fn charge_point_id_from_path(path: &str) -> Result<String, HandshakeRejection> {
    let bad = |reason| HandshakeRejection::BadPath {
        path: path.chars().take(256).collect(),
        reason,
    };
    let encoded = path
        .strip_prefix(OCPP_PATH_PREFIX)
        .ok_or_else(|| bad("path must start with /ocpp/"))?;
    if encoded.is_empty() || encoded.contains('/') {
        return Err(bad("path must be /ocpp/{chargePointId}, one segment"));
    }
    let id = percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| bad("id is not UTF-8 once percent-decoded"))?;
    check_charge_point_id(&id).map_err(bad)?;
    Ok(id.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(charge_point_id_from_path("/ocpp/CP-1").unwrap(), "CP-1");
        assert_eq!(
            charge_point_id_from_path("/ocpp/caf%C3%A9%20x").unwrap(),
            "café x"
        );
        for bad in [
            "/",
            "/ocpp/",
            "/ocpp",
            "/other/CP",
            "/ocpp/a/b",
            "/ocpp/%FF",
            "/ocpp/a%3Ab",
            "/ocpp/a%0Ab",
        ] {
            assert!(
                matches!(
                    charge_point_id_from_path(bad),
                    Err(HandshakeRejection::BadPath { .. })
                ),
                "{bad}"
            );
        }
        assert!(charge_point_id_from_path(&format!("/ocpp/{}", "x".repeat(49))).is_err());
        assert!(charge_point_id_from_path(&format!("/ocpp/{}", "x".repeat(48))).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn path_parsing_never_panics(path in ".*") {
            let _ = charge_point_id_from_path(&path);
        }
    }
}
