//! Helpers for the transport tests: certificates, listeners, configs, bounded waits and a
//! raw TLS client that speaks the handshake by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gridvisor_cluster::certs::GeneratedCerts;
use gridvisor_cluster::tls::NodeTls;
use gridvisor_cluster::transport::{
    Inbound, Security, Transport, TransportConfig, TransportEvent, TransportLimits,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_rustls::client::TlsStream;

/// Every wait in these tests ends by this deadline (generous: the machine is shared).
pub const DEADLINE: Duration = Duration::from_secs(20);
/// How often a polling wait looks again.
pub const POLL: Duration = Duration::from_millis(10);
/// The inbound channel's bound in most tests.
pub const INBOUND: usize = 256;

/// The application message of the tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    pub from: String,
    pub n: u64,
    pub text: String,
}

pub fn msg(from: &str, n: u64) -> Msg {
    Msg {
        from: from.into(),
        n,
        text: format!("hello {n} from {from}"),
    }
}

pub fn names(ns: &[&str]) -> Vec<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

pub fn set(ns: &[&str]) -> BTreeSet<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

/// Limits for tests: quick reconnects, the default timeouts.
pub fn limits() -> TransportLimits {
    TransportLimits {
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(300),
        ..TransportLimits::default()
    }
}

pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// Binds `addr` again after a node there shut down (its listener closes as its task ends).
pub async fn rebind(addr: SocketAddr) -> TcpListener {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return l,
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    })
    .await
    .expect("the old listener never closed")
}

/// A free port: bound, then released (nothing listens there afterwards).
pub async fn dead_addr() -> SocketAddr {
    let l = bind().await;
    l.local_addr().expect("addr")
}

pub fn tls(certs: &GeneratedCerts, node: &str) -> Security {
    let (cert, key) = &certs.nodes[node];
    Security::MutualTls(NodeTls::from_pem(&certs.ca_pem, cert, key, node).expect("node tls"))
}

/// The shared settings of the test nodes.
pub const SETTINGS: &str = "lease_ms=1500 nodes=a,b";

pub fn config(
    node: &str,
    peers: &[(&str, SocketAddr)],
    cookie: &str,
    security: Security,
) -> TransportConfig {
    TransportConfig {
        node: node.into(),
        peers: peers
            .iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect::<BTreeMap<_, _>>(),
        cookie: cookie.into(),
        settings: SETTINGS.into(),
        security,
        limits: limits(),
    }
}

/// A started node: its transport, inbound receiver and an event subscription taken at
/// start (so nothing is missed).
pub struct Node {
    pub t: Transport<Msg>,
    pub rx: mpsc::Receiver<Inbound<Msg>>,
    pub events: broadcast::Receiver<TransportEvent>,
}

pub fn start(config: TransportConfig, listener: TcpListener) -> Node {
    start_with(config, listener, INBOUND)
}

pub fn start_with(config: TransportConfig, listener: TcpListener, inbound: usize) -> Node {
    let (tx, rx) = mpsc::channel(inbound);
    let t = Transport::start(config, listener, tx).expect("start");
    let events = t.events();
    Node { t, rx, events }
}

/// Waits until `cond` holds, polling.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !cond() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// The next event matching `pred` (others are skipped).
pub async fn event(
    rx: &mut broadcast::Receiver<TransportEvent>,
    what: &str,
    mut pred: impl FnMut(&TransportEvent) -> bool,
) -> TransportEvent {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The reason of the next `Rejected` event whose reason contains `needle`.
pub async fn rejected(rx: &mut broadcast::Receiver<TransportEvent>, needle: &str) -> String {
    match event(
        rx,
        &format!("Rejected containing {needle:?}"),
        |e| matches!(e, TransportEvent::Rejected { reason, .. } if reason.contains(needle)),
    )
    .await
    {
        TransportEvent::Rejected { reason, .. } => reason,
        other => unreachable!("{other:?}"),
    }
}

/// The reason of the next `Down` for `peer` whose reason contains `needle`.
pub async fn down(
    rx: &mut broadcast::Receiver<TransportEvent>,
    peer: &str,
    needle: &str,
) -> String {
    match event(rx, &format!("Down {peer} containing {needle:?}"), |e| {
        matches!(e, TransportEvent::Down { peer: p, reason } if p == peer && reason.contains(needle))
    })
    .await
    {
        TransportEvent::Down { reason, .. } => reason,
        other => unreachable!("{other:?}"),
    }
}

/// The next inbound message.
pub async fn recv(rx: &mut mpsc::Receiver<Inbound<Msg>>) -> Inbound<Msg> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("inbound closed")
}

/// A TLS client that trusts `ca_pem`, presents `cert_pem`/`key_pem` and expects the server
/// to be `server`.
pub async fn raw_tls(
    addr: SocketAddr,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    server: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client cert");
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}
