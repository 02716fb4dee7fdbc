//! The accept loop of the grid and admin APIs: plain HTTP/1.1 or TLS (rustls, optionally
//! asking for a client certificate), with every resource bounded.
//!
//! axum's own `serve` has no connection cap, no per-IP cap and no handshake timeout, and it
//! cannot serve TLS; this loop accepts, counts, handshakes within [`HttpLimits::tls_handshake`]
//! and hands each connection to hyper with a header-read timeout. The router gets two layers
//! ([`bounded`]): a concurrency limit that answers 503 beyond it (rather than queueing) and a
//! request timeout. Each connection's request carries a [`ConnInfo`] (the peer and the name
//! its verified client certificate gives) for the authentication middleware.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::rustls;

use crate::server::error;

/// Connections one server holds open at once; further ones are closed as accepted.
pub const MAX_CONNECTIONS: usize = 1_024;
/// Connections one client address holds open at once; further ones are closed as accepted.
pub const MAX_CONNECTIONS_PER_IP: usize = 32;
/// A TLS handshake must complete within this, or the connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this, or the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request must be answered (its response headers) within this, or it gets 503 `timeout`.
/// Above the site's own bound on a grid request (`API_CALL_LIMIT`, 10 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests one server handles at once; further ones get 503 `busy` at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// After a stop, open connections get this long to finish before they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The HTTP servers' limits (the defaults are the constants above).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// [`MAX_CONNECTIONS_PER_IP`].
    pub max_per_ip: usize,
    /// [`TLS_HANDSHAKE_TIMEOUT`].
    pub tls_handshake: Duration,
    /// [`HEADER_READ_TIMEOUT`].
    pub header_read: Duration,
    /// [`REQUEST_TIMEOUT`].
    pub request: Duration,
    /// [`MAX_CONCURRENT_REQUESTS`].
    pub concurrency: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: MAX_CONNECTIONS,
            max_per_ip: MAX_CONNECTIONS_PER_IP,
            tls_handshake: TLS_HANDSHAKE_TIMEOUT,
            header_read: HEADER_READ_TIMEOUT,
            request: REQUEST_TIMEOUT,
            concurrency: MAX_CONCURRENT_REQUESTS,
        }
    }
}

/// What the authentication middleware knows of a request's connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The identity the client's verified certificate names (subject CN, else its first DNS
    /// SAN), if it presented one.
    pub cert_name: Option<String>,
}

/// The server's TLS configuration from `[api.tls]`: its certificate and key and, with a
/// client CA, client certificates verified against it (optional: a client may use a token).
pub fn tls_config(
    tls: &gridvisor_actors::config::ApiTls,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| format!("[api.tls]: cannot read {}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("[api.tls] cert {}: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "[api.tls] cert {}: no certificate in it",
            tls.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?)
        .map_err(|e| format!("[api.tls] key {}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("[api.tls]: {e}"))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                let c = c.map_err(|e| format!("[api.tls] client_ca {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("[api.tls] client_ca {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("[api.tls] client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("[api.tls] cert and key: {e}"))?;
    Ok(Arc::new(config))
}

/// The identity a certificate names: its subject CN, else its first DNS SAN.
pub fn cert_name(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}

/// The router with the concurrency limit and the request timeout of `limits`.
pub fn bounded(router: axum::Router, limits: &HttpLimits) -> axum::Router {
    let slots = Arc::new(Semaphore::new(limits.concurrency));
    let state = (slots, limits.concurrency, limits.request);
    router.layer(axum::middleware::from_fn_with_state(state, limit))
}

async fn limit(
    State((slots, max, timeout)): State<(Arc<Semaphore>, usize, Duration)>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = slots.try_acquire() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("{max} requests are in progress, the most this server handles at once"),
        );
    };
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("no answer within {timeout:?}"),
        ),
    }
}

/// Open connections per client address, and in all.
#[derive(Default)]
struct Counts {
    all: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One open connection's place in [`Counts`], given back on drop.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.all -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A slot for a connection from `ip`, or why not.
fn admit(counts: &Arc<Mutex<Counts>>, ip: IpAddr, limits: &HttpLimits) -> Result<Slot, String> {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if c.all >= limits.max_connections {
        return Err(format!("{} connections open, the most", c.all));
    }
    let n = c.per_ip.entry(ip).or_insert(0);
    if *n >= limits.max_per_ip {
        return Err(format!(
            "{n} connections open from {ip}, the most per address"
        ));
    }
    *n += 1;
    c.all += 1;
    Ok(Slot {
        counts: counts.clone(),
        ip,
    })
}

/// Serve `router` on `listener` (over TLS with `tls`) until `stop` turns true; then stop
/// accepting, let open connections finish within [`SHUTDOWN_GRACE`] and return.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or the peer gave up: not the listener's end.
                    tracing::warn!(api = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match admit(&counts, peer.ip(), &limits) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(api = what, %peer, "connection refused: {why}");
                continue; // dropping the stream closes it
            }
        };
        let (router, acceptor, stop) = (router.clone(), acceptor.clone(), stop.clone());
        conns.spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            match acceptor {
                None => {
                    let info = ConnInfo {
                        peer,
                        cert_name: None,
                    };
                    connection(stream, info, router, &limits, stop).await
                }
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(limits.tls_handshake, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                return tracing::debug!(api = what, %peer, "TLS handshake: {e}")
                            }
                            Err(_) => {
                                return tracing::debug!(api = what, %peer, "TLS handshake timed out")
                            }
                        };
                    let cert_name = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| cert_name(c.as_ref()));
                    connection(tls, ConnInfo { peer, cert_name }, router, &limits, stop).await
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            api = what,
            "connections still open after {SHUTDOWN_GRACE:?}: dropped"
        );
        conns.abort_all();
    }
    Ok(())
}

/// Once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One HTTP/1.1 connection, until it ends or `stop` (then after its request in progress).
async fn connection<IO>(
    io: IO,
    info: ConnInfo,
    router: axum::Router,
    limits: &HttpLimits,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        tower::ServiceExt::map_request(router, move |mut r: Request<hyper::body::Incoming>| {
            r.extensions_mut().insert(info.clone());
            r
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("HTTP connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Every wait of these tests is bounded by this.
    const LIMIT: Duration = Duration::from_secs(20);

    fn small() -> HttpLimits {
        HttpLimits {
            max_connections: 4,
            max_per_ip: 2,
            tls_handshake: Duration::from_millis(300),
            header_read: Duration::from_millis(300),
            request: Duration::from_millis(300),
            concurrency: 1,
        }
    }

    /// A server of `router` under `limits`; its address and its stop.
    async fn start(
        router: axum::Router,
        limits: HttpLimits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let router = bounded(router, &limits);
        tokio::spawn(serve("test API", listener, router, tls, limits, rx));
        (addr, stop)
    }

    /// Bytes read until the server closes the connection (bounded by [`LIMIT`]).
    async fn read_to_close(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(LIMIT, s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server never closed the connection");
        String::from_utf8_lossy(&buf).into_owned()
    }

    async fn get_once(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        read_to_close(&mut s).await
    }

    fn hello() -> axum::Router {
        axum::Router::new().route("/", get(|| async { "hello" }))
    }

    #[tokio::test]
    async fn a_client_that_never_sends_its_headers_is_cut_off() {
        let (addr, _stop) = start(hello(), small(), None).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        let started = Instant::now();
        let answer = read_to_close(&mut idle).await;
        assert!(answer.is_empty() || answer.contains(" 408 "), "{answer}");
        assert!(started.elapsed() >= small().header_read / 2);
        assert!(get_once(addr, "/").await.ends_with("hello"));
    }

    #[tokio::test]
    async fn the_connection_past_the_per_address_cap_is_closed_at_once() {
        let (addr, _stop) = start(
            hello(),
            HttpLimits {
                header_read: LIMIT * 2,
                ..small()
            },
            None,
        )
        .await;
        let held = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            read_to_close(&mut third).await,
            "",
            "refused without an answer"
        );
        drop(held);
        // The slots come back once the server sees them closed.
        let deadline = Instant::now() + LIMIT;
        while !get_once(addr, "/").await.ends_with("hello") {
            assert!(Instant::now() < deadline, "the slots never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_connection_past_the_global_cap_is_closed_at_once() {
        let limits = HttpLimits {
            header_read: LIMIT * 2,
            max_connections: 2,
            max_per_ip: 10,
            ..small()
        };
        let (addr, _stop) = start(hello(), limits, None).await;
        let _held = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_to_close(&mut third).await, "");
    }

    #[tokio::test]
    async fn requests_past_the_concurrency_limit_get_503_and_slow_ones_time_out() {
        let (entered, gate) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        let (e, g) = (entered.clone(), gate.clone());
        let slow = move || {
            let (e, g) = (e.clone(), g.clone());
            async move {
                e.notify_one();
                g.notified().await;
                "done"
            }
        };
        let router = axum::Router::new().route("/slow", get(slow));
        let limits = HttpLimits {
            request: LIMIT * 2,
            ..small()
        };
        let (addr, _stop) = start(router, limits, None).await;
        let first = tokio::spawn(get_once(addr, "/slow"));
        tokio::time::timeout(LIMIT, entered.notified())
            .await
            .expect("the first request runs");
        let second = get_once(addr, "/slow").await;
        assert!(
            second.starts_with("HTTP/1.1 503") && second.contains("\"busy\""),
            "{second}"
        );
        gate.notify_one();
        assert!(first.await.unwrap().ends_with("done"));

        let (addr, _stop) = start(
            hello().route("/never", get(std::future::pending::<&'static str>)),
            small(),
            None,
        )
        .await;
        let answer = get_once(addr, "/never").await;
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("\"timeout\""),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_comes_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        gridvisor_cluster::certs::write_dev_certs(dir.path(), &["api".into()], &[], false).unwrap();
        let tls = tls_config(&gridvisor_actors::config::ApiTls {
            cert: dir.path().join("api.pem"),
            key: dir.path().join("api-key.pem"),
            client_ca: Some(dir.path().join("ca.pem")),
        })
        .unwrap();
        let (addr, _stop) = start(hello(), small(), Some(tls)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        assert_eq!(read_to_close(&mut silent).await, "");
        assert!(started.elapsed() >= small().tls_handshake / 2);
    }
}
