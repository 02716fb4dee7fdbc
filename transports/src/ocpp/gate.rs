//! The CSMS's admission bookkeeping: the budget of unauthenticated handshakes, the budget of
//! open sessions, per-address counts, and the registry of live stations. Each grant is a
//! guard that gives its share back when dropped, so no path (a timeout, a refusal, a panic in
//! a task) can leak a slot.
//!
//! Why two budgets: a handshake holds a slot from the TCP accept until the WebSocket upgrade is
//! authenticated, at most [`ServerConfig::handshake_timeout`]; a flood of slow or
//! unauthenticated connections uses up [`ServerConfig::max_handshakes`] and the per-address
//! cap, never the [`ServerConfig::max_connections`] sessions that authenticated stations hold.
//! A session's slot is taken at the authenticated upgrade, when the handshake's is given back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::connection::ClosedWatch;
use super::server::{HandshakeRejection, ServerConfig};

/// A station's live connection: the claim's serial, and its end once the connection runs.
struct Live {
    serial: u64,
    closed: Option<ClosedWatch>,
}

impl Live {
    fn ended(&self) -> bool {
        self.closed.as_ref().is_some_and(ClosedWatch::is_closed)
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct PerIp {
    handshakes: usize,
    connections: usize,
}

/// The shared state of one [`super::Server`]'s listeners.
pub(crate) struct Gate {
    config: Arc<ServerConfig>,
    handshakes: Arc<Semaphore>,
    sessions: Arc<Semaphore>,
    pub(crate) verifications: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, PerIp>>,
    live: Mutex<HashMap<String, Live>>,
    next_claim: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gate {
    pub(crate) fn new(config: Arc<ServerConfig>) -> Arc<Gate> {
        Arc::new(Gate {
            handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
            sessions: Arc::new(Semaphore::new(config.max_connections)),
            verifications: Arc::new(Semaphore::new(config.max_verifications.max(1))),
            per_ip: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            next_claim: AtomicU64::new(0),
            config,
        })
    }

    fn capped(&self, ip: IpAddr) -> bool {
        !(self.config.per_ip_exempt_loopback && ip.is_loopback())
    }

    /// A new TCP connection from `ip`: a handshake slot, and the address's counts, or why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, HandshakeRejection> {
        let cfg = &self.config;
        let capped = self.capped(ip);
        {
            let mut map = lock(&self.per_ip);
            let counts = map.entry(ip).or_default();
            if capped && counts.handshakes >= cfg.max_handshakes_per_ip {
                return Err(HandshakeRejection::TooManyFromAddress {
                    what: "handshakes",
                    limit: cfg.max_handshakes_per_ip,
                });
            }
            if capped && counts.connections >= cfg.max_connections_per_ip {
                return Err(HandshakeRejection::TooManyFromAddress {
                    what: "connections",
                    limit: cfg.max_connections_per_ip,
                });
            }
            counts.handshakes += 1;
            counts.connections += 1;
        }
        let address = AddressShare {
            gate: Arc::clone(self),
            ip,
            handshaking: true,
        };
        let Ok(permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
            return Err(HandshakeRejection::TooManyHandshakes(cfg.max_handshakes));
        };
        Ok(Admission {
            handshake: Some(permit),
            address,
        })
    }

    /// At the authenticated upgrade of `id`: its session slot and its place as the station's
    /// one live connection, or why not.
    pub(crate) fn claim(self: &Arc<Self>, id: &str) -> Result<Claim, HandshakeRejection> {
        let Ok(session) = Arc::clone(&self.sessions).try_acquire_owned() else {
            return Err(HandshakeRejection::TooManyConnections(
                self.config.max_connections,
            ));
        };
        let serial = self.next_claim.fetch_add(1, Ordering::Relaxed);
        let mut live = lock(&self.live);
        // A connection that has ended but whose task has not yet let go counts as gone.
        if live.get(id).is_some_and(|l| !l.ended()) {
            return Err(HandshakeRejection::AlreadyConnected {
                charge_point_id: id.to_owned(),
            });
        }
        live.insert(
            id.to_owned(),
            Live {
                serial,
                closed: None,
            },
        );
        Ok(Claim {
            gate: Arc::clone(self),
            id: id.to_owned(),
            serial,
            _session: session,
        })
    }

    /// Waits, until `deadline` at most, for `id`'s live connection (if any, and running) to
    /// end: a station that closes and reconnects at once (after a Reset) must not lose the
    /// race against its old connection's teardown. Returns at once when there is nothing to
    /// wait for; [`Gate::claim`] then decides.
    pub(crate) async fn settle(&self, id: &str, deadline: Instant) {
        let watch = lock(&self.live).get(id).and_then(|l| l.closed.clone());
        if let Some(watch) = watch {
            let _ = tokio::time::timeout_at(deadline, watch.wait()).await;
        }
    }

    /// Whether `id` holds a live connection now.
    #[cfg(test)]
    pub(crate) fn is_live(&self, id: &str) -> bool {
        lock(&self.live).contains_key(id)
    }
}

/// A handshake in progress: its slot in [`ServerConfig::max_handshakes`] and its address's
/// counts. [`Admission::upgraded`] gives the handshake slot back and keeps the address's
/// connection count for the session's life.
pub(crate) struct Admission {
    handshake: Option<OwnedSemaphorePermit>,
    address: AddressShare,
}

impl Admission {
    pub(crate) fn upgraded(mut self) -> AddressShare {
        self.handshake = None;
        self.address.end_handshake();
        self.address
    }
}

/// An address's share: one connection, and one handshake while `handshaking`.
pub(crate) struct AddressShare {
    gate: Arc<Gate>,
    ip: IpAddr,
    handshaking: bool,
}

impl AddressShare {
    fn end_handshake(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            if let Some(c) = lock(&self.gate.per_ip).get_mut(&self.ip) {
                c.handshakes = c.handshakes.saturating_sub(1);
            }
        }
    }
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        self.end_handshake();
        let mut map = lock(&self.gate.per_ip);
        if let Some(c) = map.get_mut(&self.ip) {
            c.connections = c.connections.saturating_sub(1);
            if c.connections == 0 && c.handshakes == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A station's live connection and its session slot; dropping it (the connection ended)
/// frees both.
pub(crate) struct Claim {
    gate: Arc<Gate>,
    id: String,
    serial: u64,
    _session: OwnedSemaphorePermit,
}

impl Claim {
    /// The claimed connection runs: later claims can see when it ends.
    pub(crate) fn running(&self, closed: ClosedWatch) {
        if let Some(l) = lock(&self.gate.live).get_mut(&self.id) {
            if l.serial == self.serial {
                l.closed = Some(closed);
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut live = lock(&self.gate.live);
        if live.get(&self.id).is_some_and(|l| l.serial == self.serial) {
            live.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(f: impl FnOnce(&mut ServerConfig)) -> Arc<Gate> {
        let mut c = ServerConfig::new(Vec::new());
        c.per_ip_exempt_loopback = false;
        f(&mut c);
        Gate::new(Arc::new(c))
    }

    #[test]
    fn per_address_caps_and_their_release() {
        let g = gate(|c| {
            c.max_handshakes_per_ip = 2;
            c.max_connections_per_ip = 3;
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let h1 = g.admit(a).unwrap();
        let h2 = g.admit(a).unwrap();
        assert!(matches!(
            g.admit(a),
            Err(HandshakeRejection::TooManyFromAddress {
                what: "handshakes",
                limit: 2
            })
        ));
        assert!(g.admit(b).is_ok(), "another address is not affected");
        let s1 = h1.upgraded();
        let _h3 = g.admit(a).unwrap();
        let s2 = h2.upgraded();
        assert!(matches!(
            g.admit(a),
            Err(HandshakeRejection::TooManyFromAddress {
                what: "connections",
                limit: 3
            })
        ));
        drop((s1, s2));
        assert!(g.admit(a).is_ok());
    }

    #[test]
    fn loopback_exemption_and_global_budget() {
        let g = gate(|c| {
            c.max_handshakes_per_ip = 1;
            c.max_handshakes = 2;
            c.per_ip_exempt_loopback = true;
        });
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let _a = g.admit(lo).unwrap();
        let _b = g.admit(lo).unwrap();
        assert!(matches!(
            g.admit(lo),
            Err(HandshakeRejection::TooManyHandshakes(2))
        ));
    }

    #[test]
    fn one_live_claim_per_station_and_the_session_budget() {
        let g = gate(|c| c.max_connections = 2);
        let a = g.claim("cp-1").unwrap();
        assert!(matches!(
            g.claim("cp-1"),
            Err(HandshakeRejection::AlreadyConnected { .. })
        ));
        let _b = g.claim("cp-2").unwrap();
        assert!(matches!(
            g.claim("cp-3"),
            Err(HandshakeRejection::TooManyConnections(2))
        ));
        drop(a);
        assert!(!g.is_live("cp-1"));
        assert!(g.claim("cp-1").is_ok());
    }
}
