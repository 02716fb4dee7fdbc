//! The node's `transports` subtree: the CSMS listener that OCPP charge points connect to.
//!
//! `node/transports` (one_for_one) has one worker, `csms`. It binds the `[ocpp]` listener in
//! its start (a port that cannot be bound fails the start, and with it the node's, naming
//! the address), and hands every accepted charge point to the [`OcppHub`], which answers its
//! CALLs and tells its link. The Modbus devices need no listener: each inverter and meter
//! adapter owns its client connection (see [`crate::io::modbus`]).
//!
//! Security (issue 20): the ws and profile 2 wss listeners check every station's password
//! against the credentials file (`[ocpp] passwords`, read here at start; an error in it fails
//! the start naming `file:line`); profile 3 checks the client certificate, and the CRL
//! (`[ocpp.tls] crl`) when given. Plain ws off loopback runs only with `allow_plaintext`, and
//! is announced in the log at start. The per-address caps come from `[ocpp]`; the other
//! limits are the transport's defaults (`ServerConfig`).
//!
//! When the `csms` actor stops (a crash, the node's shutdown) its accept loop ends and every
//! charge point connection is closed: a restarted CSMS starts from no connections, and the
//! charge points reconnect (their links restart on the drop, see [`LinkMsg::ConnectionLost`]).
//!
//! [`LinkMsg::ConnectionLost`]: super::LinkMsg::ConnectionLost

use std::sync::Arc;

use gridvisor_transports::ocpp::auth::Authenticator;
use gridvisor_transports::ocpp::credentials::{Credentials, CredentialsFile};
use gridvisor_transports::ocpp::server::{
    ListenerConfig, Security, Server, ServerConfig, ServerEvent,
};
use gridvisor_transports::ocpp::{crl, tls};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::io::ocpp::OcppHub;

/// The CSMS's listeners from `[ocpp]`: ws (profile 1) first, then wss (profile 2, or 3 with a
/// client CA). A certificate or key that cannot be read fails the start, naming the file.
fn listeners(hub: &Arc<OcppHub>) -> Result<ServerConfig, String> {
    let ocpp = hub.config();
    let mut listeners = Vec::new();
    let needs_passwords =
        ocpp.listen.is_some() || ocpp.tls.as_ref().is_some_and(|t| t.client_ca.is_none());
    let authenticator = if needs_passwords {
        Some(authenticator(hub)?)
    } else {
        None
    };
    if let Some(addr) = ocpp.listen {
        // Checked here too, not only in the config: `run --ocpp ADDR` and the demo set it.
        if !addr.ip().is_loopback() {
            if !ocpp.allow_plaintext {
                return Err(format!(
                    "[ocpp] plaintext ws on {addr}, off loopback: use [ocpp.tls], a loopback \
                     address, or set allow_plaintext = true"
                ));
            }
            tracing::warn!(%addr, "OCPP: plaintext ws off loopback ([ocpp] allow_plaintext = true): passwords and setpoints cross the network in clear");
        }
        listeners.push(ListenerConfig {
            addr,
            security: Security::BasicAuth(authenticator.clone().ok_or("no authenticator")?),
        });
    }
    if let Some(t) = &ocpp.tls {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| format!("[ocpp.tls] {what} {}: {e}", p.display()))
        };
        let cert = read(&t.cert, "cert")?;
        let key = read(&t.key, "key")?;
        let security = match (&t.client_ca, &t.crl) {
            (Some(ca), None) => {
                let ca = read(ca, "client_ca")?;
                let tls = tls::server_config(&cert, &key, Some(&ca))
                    .map_err(|e| format!("[ocpp.tls]: {e}"))?;
                Security::MutualTls(tls)
            }
            (Some(ca), Some(crl_path)) => {
                let ca = read(ca, "client_ca")?;
                let crls = crl::crls(&read(crl_path, "crl")?)
                    .map_err(|e| format!("[ocpp.tls] crl {}: {e}", crl_path.display()))?;
                let tls = crl::mutual_tls_server_config(&cert, &key, &ca, crls)
                    .map_err(|e| format!("[ocpp.tls]: {e}"))?;
                Security::MutualTls(tls)
            }
            (None, _) => Security::TlsBasicAuth {
                tls: tls::server_config(&cert, &key, None)
                    .map_err(|e| format!("[ocpp.tls]: {e}"))?,
                authenticator: authenticator.clone().ok_or("no authenticator")?,
            },
        };
        listeners.push(ListenerConfig {
            addr: t.listen,
            security,
        });
    }
    if listeners.is_empty() {
        return Err("[ocpp] has no listener (neither listen nor [ocpp.tls])".into());
    }
    let mut config = ServerConfig::new(listeners);
    config.rpc = OcppHub::rpc_config();
    let per_ip = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    config.max_connections_per_ip = per_ip(ocpp.max_connections_per_ip);
    config.max_handshakes_per_ip = per_ip(ocpp.max_handshakes_per_ip);
    Ok(config)
}

/// The stations' credentials (given in code, or the `passwords` file) behind the hub's
/// check of configured chargers.
fn authenticator(hub: &Arc<OcppHub>) -> Result<Arc<dyn Authenticator>, String> {
    let ocpp = hub.config();
    let file = match (&ocpp.credentials, &ocpp.passwords) {
        (Some(given), _) => CredentialsFile::clone(given),
        (None, Some(path)) => {
            CredentialsFile::load(path).map_err(|e| format!("[ocpp] passwords: {e}"))?
        }
        (None, None) => return Err("[ocpp] has no `passwords` file for its ws/wss listener".into()),
    };
    tracing::info!(stations = file.len(), "OCPP credentials loaded");
    let weak = file.below_default();
    if weak > 0 && ocpp.credentials.is_none() {
        tracing::warn!(
            stations = weak,
            "OCPP credentials: stations hashed with fewer than the default PBKDF2 rounds (fine for generated random passwords only; rotate with `gridvisor ocpp-password`)"
        );
    }
    let credentials = Credentials::new(file).map_err(|e| format!("[ocpp] passwords: {e}"))?;
    Ok(hub.authenticator(Arc::new(credentials)))
}

/// What the CSMS actor hears.
pub(crate) enum CsmsMsg {
    /// The accept loop ended (the listener failed).
    Ended(String),
}

pub(crate) struct Csms;

pub(crate) struct CsmsState {
    hub: Arc<OcppHub>,
    accept: JoinHandle<()>,
}

impl Actor for Csms {
    type Msg = CsmsMsg;
    type State = CsmsState;
    type Arguments = Arc<OcppHub>;

    async fn pre_start(
        &self,
        myself: ActorRef<CsmsMsg>,
        hub: Arc<OcppHub>,
    ) -> Result<CsmsState, ActorProcessingErr> {
        let config = listeners(&hub)?;
        let addrs: Vec<_> = config.listeners.iter().map(|l| l.addr).collect();
        let mut server = Server::bind(config)
            .await
            .map_err(|e| format!("OCPP listeners on {addrs:?}: {e}"))?;
        let bound = server.local_addrs().to_vec();
        hub.set_local_addrs(bound.clone());
        tracing::info!(?bound, "CSMS listening for OCPP charge points");
        let loop_hub = hub.clone();
        let accept = tokio::spawn(async move {
            while let Some(event) = server.next_event().await {
                match event {
                    ServerEvent::Connected(session) => loop_hub.attach(session),
                    // The hub watches each connection itself.
                    ServerEvent::Disconnected { .. } => {}
                    ServerEvent::Rejected { peer, reason } => {
                        tracing::warn!(%peer, %reason, "charge point refused");
                    }
                }
            }
            let _ = myself.send_message(CsmsMsg::Ended("the listener ended".into()));
        });
        Ok(CsmsState { hub, accept })
    }

    async fn handle(
        &self,
        _myself: ActorRef<CsmsMsg>,
        msg: CsmsMsg,
        _s: &mut CsmsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CsmsMsg::Ended(why) => Err(why.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CsmsMsg>,
        s: &mut CsmsState,
    ) -> Result<(), ActorProcessingErr> {
        s.accept.abort();
        s.hub.close_all();
        Ok(())
    }
}
