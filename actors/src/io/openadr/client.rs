//! The VEN's Simple-HTTP client: one POST per message to `{vtn_url}/{service}`, on hyper 1
//! over TCP or TLS (rustls, ring), one connection per exchange.
//!
//! A VEN speaks only every few seconds, so a connection per exchange costs little and leaves
//! nothing half-open between polls. Every step has a bound from [`VenLimits`]: connecting,
//! the whole exchange, and the answer's size.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::messages::{Incoming, Outgoing};
use super::xml::{XmlError, MAX_MESSAGE_BYTES};

/// How long connecting to the VTN (TCP and TLS) may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one exchange (request sent, answer read) may take, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The first wait after a failed exchange, by default (doubled per failure).
pub const DEFAULT_BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait after failed exchanges, by default.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The VEN's named limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VenLimits {
    /// Connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// One exchange.
    pub request_timeout: Duration,
    /// The first wait after a failure.
    pub backoff_start: Duration,
    /// The longest wait after failures.
    pub backoff_max: Duration,
}

impl Default for VenLimits {
    fn default() -> Self {
        VenLimits {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff_start: DEFAULT_BACKOFF_START,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl VenLimits {
    /// The wait after `failures` failed exchanges in a row (bounded exponential).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.backoff_start
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The VTN could not be reached.
    #[error("cannot reach the VTN at {addr}: {reason}")]
    Connect {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A limit of [`VenLimits`] passed.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// HTTP went wrong (a status other than 200, a broken answer).
    #[error("HTTP: {0}")]
    Http(String),
    /// The answer is not a message the VEN can read.
    #[error("the VTN's answer: {0}")]
    Message(#[from] XmlError),
}

/// A client of one VTN.
#[derive(Clone)]
pub struct VtnClient {
    host: String,
    port: u16,
    path: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    limits: VenLimits,
}

impl VtnClient {
    /// A client of `vtn_url` (`http://` or, with `tls`, `https://`).
    pub fn new(
        vtn_url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        limits: VenLimits,
    ) -> Result<VtnClient, String> {
        let uri: hyper::Uri = vtn_url
            .parse()
            .map_err(|e| format!("vtn_url {vtn_url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("vtn_url {vtn_url:?}: not http:// or https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("vtn_url {vtn_url:?}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = match (https, tls) {
            (false, None) => None,
            (true, Some(config)) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("vtn_url {vtn_url:?}: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            (true, None) => return Err(format!("vtn_url {vtn_url:?}: https needs [openadr.tls]")),
            (false, Some(_)) => {
                return Err(format!("vtn_url {vtn_url:?}: [openadr.tls] needs https://"))
            }
        };
        Ok(VtnClient {
            host,
            port,
            path: uri.path().trim_end_matches('/').to_owned(),
            tls,
            limits,
        })
    }

    /// The limits.
    pub fn limits(&self) -> &VenLimits {
        &self.limits
    }

    /// Send `message`, read the VTN's answer.
    pub async fn exchange(&self, message: &Outgoing) -> Result<Incoming, ClientError> {
        let body = self.post(message.service(), message.to_xml()).await?;
        Ok(Incoming::parse(&body)?)
    }

    async fn post(&self, service: &str, xml: String) -> Result<Bytes, ClientError> {
        let addr = format!("{}:{}", self.host, self.port);
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ClientError::Connect {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some((connector, name)) => connector
                    .connect(name.clone(), tcp)
                    .await
                    .map(|s| Stream::Tls(Box::new(s)))
                    .map_err(|e| ClientError::Connect {
                        addr: addr.clone(),
                        reason: format!("TLS: {e}"),
                    }),
            }
        };
        let stream = tokio::time::timeout(self.limits.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout("connecting to the VTN"))??;
        let exchange = async {
            match stream {
                Stream::Plain(s) => self.send(TokioIo::new(s), service, xml).await,
                Stream::Tls(s) => self.send(TokioIo::new(*s), service, xml).await,
            }
        };
        tokio::time::timeout(self.limits.request_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout("the exchange with the VTN"))?
    }

    async fn send<S>(&self, io: S, service: &str, xml: String) -> Result<Bytes, ClientError>
    where
        S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let http = |e: &dyn std::fmt::Display| ClientError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| http(&e))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = if self.port == 80 || self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = hyper::Request::post(format!("{}/{service}", self.path))
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, "application/xml")
            .body(Full::new(Bytes::from(xml)))
            .map_err(|e| http(&e))?;
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| http(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_MESSAGE_BYTES)
                .collect()
                .await
                .map_err(|e| http(&format!("reading the answer: {e}")))?
                .to_bytes();
            if status != hyper::StatusCode::OK {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(ClientError::Http(format!("status {status}: {text}")));
            }
            Ok(body)
        }
        .await;
        driver.abort();
        result
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The rustls client config of `[openadr.tls]` (ring): the VTN's CA, and a client
/// certificate and key when given. Files are read now; a bad one is an error naming it.
pub fn client_tls(tls: &crate::config::OpenAdrTls) -> Result<Arc<rustls::ClientConfig>, String> {
    use gridvisor_transports::ocpp::tls::{certificates, private_key};
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| format!("[openadr.tls] {what} {}: {e}", p.display()))
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("[openadr.tls] {what}: {e}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&read(&tls.ca, "ca")?, "VTN CA").map_err(|e| fail("ca", &e))? {
        roots.add(cert).map_err(|e| fail("ca", &e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("protocol versions", &e))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(&read(cert, "cert")?, "client certificate")
                .map_err(|e| fail("cert", &e))?;
            let key = private_key(&read(key, "key")?).map_err(|e| fail("key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fail("cert", &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let l = VenLimits::default();
        assert_eq!(l.backoff(1), Duration::from_secs(1));
        assert_eq!(l.backoff(3), Duration::from_secs(4));
        assert_eq!(l.backoff(40), DEFAULT_BACKOFF_MAX);
    }

    #[test]
    fn urls_are_checked() {
        let l = VenLimits::default();
        assert!(VtnClient::new("http://127.0.0.1:8080/OpenADR2/Simple/2.0b", None, l).is_ok());
        assert!(VtnClient::new("ftp://x/", None, l).is_err());
        assert!(VtnClient::new("https://x/", None, l)
            .err()
            .unwrap()
            .contains("[openadr.tls]"));
    }
}
