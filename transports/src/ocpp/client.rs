//! A small OCPP charge-point client: connects over ws or wss (with a subprotocol offer, Basic
//! auth for profiles 1–2, a client certificate for profile 3), then runs the same
//! per-connection engine as the CSMS, so it can send CALLs and answer the CSMS's CALLs.
//! Meant for simulated chargers and load benchmarks: per connection it holds one task, one
//! [`super::connection::WS_READ_BUFFER_BYTES`] read buffer and small channels.
//!
//! Invariants: the whole connect (TCP, TLS, upgrade) is bounded by
//! [`ClientConfig::connect_timeout`]; the version used is the one the server named, and it
//! must be one we offered; the charge point id is percent-encoded into the path.

use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::Error as WsError;

use super::auth::basic_header;
use super::connection::{
    self, websocket_config, Connection, ConnectionInfo, IncomingCall, RpcConfig,
};
use super::messages::Initiator;
use super::server::OCPP_PATH_PREFIX;
use super::OcppVersion;

/// Default bound on TCP connect + TLS + WebSocket upgrade.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters kept as-is in the path segment (RFC 3986 unreserved); the rest is encoded.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientConfig {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Our identity (the path segment and the Basic auth user).
    pub charge_point_id: String,
    /// Basic auth password (profiles 1–2); `None` sends no Authorization header.
    pub password: Option<Vec<u8>>,
    /// TLS (profiles 2–3, see [`super::tls::client_config`]); `None` is plain ws.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Versions offered, most preferred first (default [`OcppVersion::PREFERENCE`]).
    pub versions: Vec<OcppVersion>,
    /// Bound on the connect ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Per-connection limits.
    pub rpc: RpcConfig,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("charge_point_id", &self.charge_point_id)
            .field("tls", &self.tls.is_some())
            .field("versions", &self.versions)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Plain ws to `host:port` as `charge_point_id`, default limits, no password.
    pub fn new(host: impl Into<String>, port: u16, charge_point_id: impl Into<String>) -> Self {
        ClientConfig {
            host: host.into(),
            port,
            charge_point_id: charge_point_id.into(),
            password: None,
            tls: None,
            versions: OcppVersion::PREFERENCE.to_vec(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            rpc: RpcConfig::default(),
        }
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not connected within the timeout.
    #[error("not connected within {0:?}")]
    Timeout(Duration),
    /// TCP connect failed.
    #[error("TCP connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The host is not a valid TLS server name.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// The server refused the upgrade with an HTTP status (404 bad path, 401 bad password, 400
    /// no common subprotocol).
    #[error("server refused the upgrade: HTTP {status}")]
    Refused {
        /// The HTTP status.
        status: u16,
    },
    /// The server named a subprotocol we did not offer, or none.
    #[error("server chose subprotocol {0:?}, not one we offered")]
    Subprotocol(Option<String>),
    /// The request could not be built, or the WebSocket handshake failed otherwise
    /// (including TLS failures, reported by the first read).
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// No version to offer.
    #[error("no OCPP version to offer")]
    NoVersion,
}

/// Connects and starts the engine: returns the connection and the CSMS's CALLs (answer them,
/// e.g. with [`super::connection::serve_calls`]).
pub async fn connect(
    config: &ClientConfig,
) -> Result<(Connection, mpsc::Receiver<IncomingCall>), ConnectError> {
    tokio::time::timeout(config.connect_timeout, connect_inner(config))
        .await
        .map_err(|_| ConnectError::Timeout(config.connect_timeout))?
}

async fn connect_inner(
    config: &ClientConfig,
) -> Result<(Connection, mpsc::Receiver<IncomingCall>), ConnectError> {
    if config.versions.is_empty() {
        return Err(ConnectError::NoVersion);
    }
    let tcp = TcpStream::connect((config.host.as_str(), config.port)).await?;
    let _ = tcp.set_nodelay(true);
    match &config.tls {
        None => upgrade(tcp, config, "ws").await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(config.host.clone())
                .map_err(|_| ConnectError::InvalidServerName(config.host.clone()))?;
            let stream = TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError::Handshake(format!("TLS: {e}")))?;
            upgrade(stream, config, "wss").await
        }
    }
}

async fn upgrade<S>(
    stream: S,
    config: &ClientConfig,
    scheme: &str,
) -> Result<(Connection, mpsc::Receiver<IncomingCall>), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = utf8_percent_encode(&config.charge_point_id, PATH_SEGMENT);
    let url = format!(
        "{scheme}://{}:{}{OCPP_PATH_PREFIX}{id}",
        config.host, config.port
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    let offer = config
        .versions
        .iter()
        .map(|v| v.subprotocol())
        .collect::<Vec<_>>()
        .join(", ");
    let offer =
        HeaderValue::from_str(&offer).map_err(|e| ConnectError::Handshake(e.to_string()))?;
    request
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_PROTOCOL, offer);
    if let Some(password) = &config.password {
        let value = HeaderValue::from_str(&basic_header(&config.charge_point_id, password))
            .map_err(|e| ConnectError::Handshake(e.to_string()))?;
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let (ws, response) = match tokio_tungstenite::client_async_with_config(
        request,
        stream,
        Some(websocket_config()),
    )
    .await
    {
        Ok(x) => x,
        Err(WsError::Http(response)) => {
            return Err(ConnectError::Refused {
                status: response.status().as_u16(),
            })
        }
        Err(e) => return Err(ConnectError::Handshake(e.to_string())),
    };
    let chosen = response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let version = chosen
        .as_deref()
        .and_then(|c| OcppVersion::from_subprotocol(c).ok())
        .filter(|v| config.versions.contains(v))
        .ok_or(ConnectError::Subprotocol(chosen))?;
    let info = ConnectionInfo {
        charge_point_id: config.charge_point_id.clone(),
        version,
    };
    Ok(connection::spawn(
        ws,
        info,
        config.rpc.clone(),
        Initiator::ChargePoint,
    ))
}
