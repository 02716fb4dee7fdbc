//! The node-to-node transport: authenticated links between the nodes of a cluster, over
//! mutual TLS, carrying versioned envelopes ([`gridvisor_transports::envelope`]).
//!
//! # Connection model
//!
//! Every node dials every peer and keeps that *outbound* link: it carries this node's
//! messages to the peer ([`Transport::send`]). It accepts *inbound* links: they carry each
//! peer's messages to this node, delivered on the `inbound` channel with the peer's
//! authenticated name. A pair of nodes therefore has two TCP connections, each carrying
//! application messages one way; both directions carry keep-alive pings, so each end notices
//! a dead link within [`TransportLimits::idle_timeout`]. A lost outbound link is redialled
//! with exponential backoff between [`TransportLimits::reconnect_min`] and
//! [`TransportLimits::reconnect_max`], resolving the peer's address again on every attempt
//! (a Kubernetes pod that comes back with a new IP under the same DNS name is found).
//!
//! # Handshake
//!
//! After TCP (`TCP_NODELAY`) and TLS (the acceptor requires a client certificate under the
//! cluster CA; the dialer verifies the acceptor's certificate against the peer's *name*), the
//! dialer sends a [`Hello`] as the first envelope frame. The acceptor checks, in this order:
//! the protocol version is [`PROTOCOL`]; the node is a configured peer; the client
//! certificate names that node ([`peer_names`]); the cookie matches (compared in constant
//! time); the dialer's shared settings ([`TransportConfig::settings`]: lease timings, the node
//! list) are this node's, so two nodes configured differently never form a cluster. It answers [`HelloReply::Welcome`] or [`HelloReply::Refused`] with the reason and
//! closes. Each refusal is a [`TransportEvent::Rejected`] on the acceptor and a
//! [`TransportEvent::Down`] with the reason on the dialer, and a `tracing` warning naming the
//! address and the reason.
//!
//! # The handshake budget
//!
//! Until its hello is welcomed, an inbound connection is *pending*: it holds a place in the
//! handshake budget ([`crate::handshake`]): at most [`TransportLimits::pending_handshakes`]
//! at once, at most [`TransportLimits::pending_handshakes_per_ip`] from one address (more are
//! refused at once), the oldest evicted when a new connection finds the budget full, and the
//! whole handshake bounded by [`TransportLimits::handshake_timeout`]. A flood of connections
//! that never finish their TLS handshake or never send a hello therefore cannot keep a real
//! peer out, and holds bounded memory.
//!
//! # Invariants
//!
//! - [`Transport::send`] never blocks and never queues for a peer without an authenticated
//!   outbound link: a stale lease heartbeat delivered after a partition heals is worse than
//!   none, so the caller learns [`SendError::NotConnected`] and decides. A full per-peer
//!   queue is [`SendError::QueueFull`]: memory stays bounded by
//!   [`TransportLimits::queue`] frames per peer.
//! - Inbound delivery applies back-pressure: when the caller's bounded channel is full, the
//!   link's reader waits (and stops reading the socket); nothing is dropped silently.
//! - A frame that does not decode (unknown envelope version, garbage, too large, wrong type)
//!   closes that link with a reason naming what was wrong; it never panics and other links
//!   are unaffected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gridvisor_transports::envelope::{self, EnvelopeError, HEADER_BYTES};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::{timeout, MissedTickBehavior};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::handshake::{Admission, HandshakeBudget};
use crate::tls::{peer_names, server_name, NodeTls};

/// The handshake's version ([`Hello::protocol`]). The frames after it carry the envelope
/// header's own version, checked on every read.
pub const PROTOCOL: u16 = 2;
/// Events kept for a slow [`Transport::events`] subscriber before it lags (it is told how
/// many it missed).
pub const EVENTS_CAPACITY: usize = 1024;
/// Largest handshake frame body accepted: a hello is a name, a cookie and the shared
/// settings, so anything larger is not a peer.
pub const MAX_HANDSHAKE_BYTES: usize = 4096;
/// Longest [`TransportConfig::settings`] (it travels in the hello).
pub const MAX_SETTINGS_BYTES: usize = 2048;
/// Default of [`TransportLimits::pending_handshakes`]: inbound connections that may be in
/// their TLS or hello handshake at once (a flood of half-open connections cannot hold
/// unbounded memory and tasks; see [`crate::handshake`]).
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Default of [`TransportLimits::pending_handshakes_per_ip`]: pending handshakes from one
/// remote IP address. A cluster has a handful of nodes and each dials once per attempt, so
/// eight is room for a node behind a NAT with its neighbours, and one address can hold only
/// an eighth of the budget.
pub const MAX_PENDING_HANDSHAKES_PER_IP: usize = 8;
/// Frames a writer takes from its queue before it flushes (one syscall for a burst).
pub const WRITE_BATCH: usize = 64;
/// Pause after a failed `accept` (out of file descriptors, ...) before the next one, so the
/// accept loop does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The transport's timeouts and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Resolving the peer's address and connecting TCP, per attempt.
    pub connect_timeout: Duration,
    /// The acceptor's whole handshake (TLS, hello and welcome) ends within this, or the
    /// connection is closed and its slot in the handshake budget freed. On the dialer, the
    /// TLS handshake and, separately, the hello exchange.
    pub handshake_timeout: Duration,
    /// Inbound connections in their handshake at once; when all are taken a new one evicts
    /// the oldest ([`crate::handshake`]). Default [`MAX_PENDING_HANDSHAKES`].
    pub pending_handshakes: usize,
    /// Of [`TransportLimits::pending_handshakes`], at most this many from one remote IP
    /// address; more are refused at once. Default [`MAX_PENDING_HANDSHAKES_PER_IP`].
    pub pending_handshakes_per_ip: usize,
    /// A link with no frame for this long is dead. Each end sends a keep-alive ping every
    /// third of it ([`TransportLimits::ping_interval`]) so idle links stay up.
    pub idle_timeout: Duration,
    /// The per-peer outbound queue, in frames.
    pub queue: usize,
    /// The first reconnect delay (after a failed attempt or a lost link).
    pub reconnect_min: Duration,
    /// The longest reconnect delay (the delay doubles up to it).
    pub reconnect_max: Duration,
    /// The largest frame body sent or accepted, bytes (at most
    /// [`envelope::MAX_BODY_BYTES`]).
    pub max_frame: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            pending_handshakes: MAX_PENDING_HANDSHAKES,
            pending_handshakes_per_ip: MAX_PENDING_HANDSHAKES_PER_IP,
            idle_timeout: Duration::from_secs(3),
            queue: 4096,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
            max_frame: envelope::MAX_BODY_BYTES,
        }
    }
}

impl TransportLimits {
    /// How often each end of a link sends a keep-alive ping: a third of the idle timeout,
    /// so two pings may be lost before a link counts as dead.
    pub fn ping_interval(&self) -> Duration {
        self.idle_timeout / 3
    }

    fn validate(&self) -> Result<(), TransportError> {
        let bad = |what: &str| Err(TransportError::Config(what.to_string()));
        if self.connect_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return bad("connect_timeout and handshake_timeout must be positive");
        }
        if self.ping_interval().is_zero() {
            return bad("idle_timeout must be at least 3 ns (pings go every third of it)");
        }
        if self.pending_handshakes_per_ip == 0
            || self.pending_handshakes_per_ip > self.pending_handshakes
        {
            return bad(
                "pending_handshakes_per_ip must be positive and at most pending_handshakes",
            );
        }
        if self.queue == 0 {
            return bad("queue must hold at least one frame");
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return bad("reconnect_min must be positive and at most reconnect_max");
        }
        if self.max_frame == 0 || self.max_frame > envelope::MAX_BODY_BYTES {
            return Err(TransportError::Config(format!(
                "max_frame must be between 1 and {} bytes",
                envelope::MAX_BODY_BYTES
            )));
        }
        Ok(())
    }
}

/// How links are secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS with this node's identity: the production mode.
    MutualTls(NodeTls),
    /// Only for tests: no TLS, the cookie still checked.
    PlaintextForTests,
}

/// What a node's transport is configured with.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's name.
    pub node: String,
    /// The other nodes: name → `"host:port"`, resolved on every connect attempt.
    pub peers: BTreeMap<String, String>,
    /// The cluster cookie every peer must present.
    pub cookie: String,
    /// The settings every node of the cluster must share, as text the transport compares
    /// byte for byte (the runtime puts its lease timings and the node list here). A peer
    /// with other settings is refused, and the reason names both.
    pub settings: String,
    /// TLS or (tests only) plaintext.
    pub security: Security,
    /// Timeouts and bounds.
    pub limits: TransportLimits,
}

/// A message from a peer, with the peer's authenticated name.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound<M> {
    /// The sending node (authenticated by its certificate and the cookie).
    pub from: String,
    /// The message.
    pub msg: M,
}

/// What happens to links, for the runtime's logs and metrics. Lossy for a slow subscriber
/// (a broadcast channel of [`EVENTS_CAPACITY`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// The outbound link to `peer` is authenticated and up: [`Transport::send`] to it works.
    Up {
        /// The peer.
        peer: String,
    },
    /// The outbound link to `peer` went down, or an attempt to establish it failed in the
    /// TLS or hello handshake (a refusal's reason is included). Plain TCP connect failures
    /// (the peer is not running) are only logged at debug level, not reported each retry.
    Down {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// An inbound connection was refused (TLS, hello, cookie, ...) or an authenticated
    /// inbound link was closed because it sent a frame that does not decode (the reason
    /// then starts with the peer's name).
    Rejected {
        /// The remote address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransportStats {
    /// Application messages written to an outbound link.
    pub frames_sent: u64,
    /// Application messages received and delivered on the inbound channel.
    pub frames_received: u64,
    /// Inbound connections refused in the TLS or hello handshake (including those refused
    /// for their address's share of the handshake budget, timed out or evicted).
    pub rejected_handshakes: u64,
    /// Pending inbound handshakes given up to make room for a newer connection when the
    /// handshake budget was full.
    pub evicted_handshakes: u64,
    /// Authenticated inbound links closed for a frame that does not decode.
    pub bad_frames: u64,
    /// [`Transport::send`] calls refused because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// [`Transport::send`] calls refused because no outbound link to the peer was up.
    pub dropped_not_connected: u64,
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `start` was called outside a tokio runtime.
    #[error("the transport must be started inside a tokio runtime")]
    NoRuntime,
    /// The configuration cannot work.
    #[error("transport configuration: {0}")]
    Config(String),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Why [`Transport::send`] did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// `to` is not a configured peer.
    #[error("{0:?} is not a configured peer")]
    UnknownPeer(String),
    /// No authenticated outbound link to the peer right now (nothing is queued for later).
    #[error("no link to {0:?}")]
    NotConnected(String),
    /// The peer's outbound queue is full.
    #[error("the queue to {peer:?} is full ({limit} frames)")]
    QueueFull {
        /// The peer.
        peer: String,
        /// [`TransportLimits::queue`].
        limit: usize,
    },
    /// The message is larger than [`TransportLimits::max_frame`].
    #[error("message of {bytes} bytes exceeds the frame limit of {limit} bytes")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// [`TransportLimits::max_frame`].
        limit: usize,
    },
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// The dialer's first frame on a new link.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The dialer's [`PROTOCOL`].
    pub protocol: u16,
    /// The dialer's node name (must be named by its client certificate).
    pub node: String,
    /// The cluster cookie.
    pub cookie: String,
    /// The dialer's shared settings ([`TransportConfig::settings`]).
    pub settings: String,
}

impl fmt::Debug for Hello {
    // The cookie is a secret: never in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("protocol", &self.protocol)
            .field("node", &self.node)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The acceptor's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Accepted: application frames follow.
    Welcome {
        /// The acceptor's [`PROTOCOL`].
        protocol: u16,
        /// The acceptor's node name.
        node: String,
    },
    /// Refused; the acceptor closes the link.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A frame after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame<M> {
    /// An application message (dialer to acceptor only).
    Message(M),
    /// Keep-alive (both ways).
    Ping,
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    rejected_handshakes: AtomicU64,
    evicted_handshakes: AtomicU64,
    bad_frames: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_not_connected: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A link's byte stream: TLS or (tests) plain TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// What the tasks share. Not generic in the message type: only the tasks are.
struct Shared {
    node: String,
    peers: BTreeMap<String, String>,
    cookie: String,
    settings: String,
    tls: Option<NodeTls>,
    limits: TransportLimits,
    local_addr: SocketAddr,
    /// Peer → the queue of its authenticated outbound link, present only while it is up.
    outbound: Mutex<BTreeMap<String, mpsc::Sender<Vec<u8>>>>,
    events: broadcast::Sender<TransportEvent>,
    stats: Counters,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// The pending inbound handshakes; each one's handle cancels it when dropped.
    handshakes: Mutex<HandshakeBudget<oneshot::Sender<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the map is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn event(&self, e: TransportEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(e);
    }

    fn reject(&self, addr: SocketAddr, reason: String) {
        bump(&self.stats.rejected_handshakes, 1);
        tracing::warn!(%addr, %reason, "inbound cluster connection rejected");
        self.event(TransportEvent::Rejected { addr, reason });
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn shutdown(&self) {
        if self.stop.send_replace(true) {
            return;
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        let links = std::mem::take(&mut *lock(&self.outbound));
        for peer in links.into_keys() {
            self.event(TransportEvent::Down {
                peer,
                reason: "this node's transport shut down".into(),
            });
        }
    }
}

/// Stops the tasks when the last handle goes.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

/// A running transport. Cheap to clone; the transport stops when [`Transport::shutdown`] is
/// called or the last clone is dropped.
pub struct Transport<M> {
    owner: Arc<Owner>,
    _msg: PhantomData<fn(M)>,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            owner: self.owner.clone(),
            _msg: PhantomData,
        }
    }
}

impl<M> fmt::Debug for Transport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.owner.shared;
        f.debug_struct("Transport")
            .field("node", &s.node)
            .field("local_addr", &s.local_addr)
            .field("peers", &s.peers)
            .finish_non_exhaustive()
    }
}

/// Runs `f` until it ends or the transport stops.
async fn stoppable<F: Future<Output = ()>>(mut stop: watch::Receiver<bool>, f: F) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = f => {}
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Transport<M> {
    /// Starts the transport on `listener` (bound by the caller, so a port in use is the
    /// caller's clear error): spawns the accept loop and one dialer per peer. Messages from
    /// peers arrive on `inbound`; when it is full, readers wait. Must be called inside a
    /// tokio runtime.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        inbound: mpsc::Sender<Inbound<M>>,
    ) -> Result<Transport<M>, TransportError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        config.limits.validate()?;
        if config.cookie.is_empty() {
            return Err(TransportError::Config("the cookie is empty".into()));
        }
        if config.settings.len() > MAX_SETTINGS_BYTES {
            return Err(TransportError::Config(format!(
                "the shared settings are {} bytes; at most {MAX_SETTINGS_BYTES} fit in a hello",
                config.settings.len()
            )));
        }
        for (peer, addr) in &config.peers {
            // Resolved later, on every attempt; a malformed one would only ever fail.
            let port = addr
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
                return Err(TransportError::Config(format!(
                    "peer {peer:?}: address {addr:?} is not host:port"
                )));
            }
        }
        if config.peers.contains_key(&config.node) {
            return Err(TransportError::Config(format!(
                "peers include this node {:?}: list only the other nodes",
                config.node
            )));
        }
        let tls = match config.security {
            Security::MutualTls(tls) => {
                if tls.node() != config.node {
                    return Err(TransportError::Config(format!(
                        "the TLS identity is for {:?}, this node is {:?}",
                        tls.node(),
                        config.node
                    )));
                }
                for peer in config.peers.keys() {
                    server_name(peer).map_err(|e| TransportError::Config(e.to_string()))?;
                }
                Some(tls)
            }
            Security::PlaintextForTests => None,
        };
        let local_addr = listener.local_addr()?;
        let (stop, _) = watch::channel(false);
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let shared = Arc::new(Shared {
            node: config.node,
            peers: config.peers,
            cookie: config.cookie,
            settings: config.settings,
            tls,
            limits: config.limits,
            local_addr,
            outbound: Mutex::new(BTreeMap::new()),
            events,
            stats: Counters::default(),
            stop,
            tasks: Mutex::new(Vec::new()),
            handshakes: Mutex::new(HandshakeBudget::new(
                config.limits.pending_handshakes,
                config.limits.pending_handshakes_per_ip,
            )),
        });
        let mut tasks = Vec::with_capacity(shared.peers.len() + 1);
        tasks.push(
            runtime
                .spawn(stoppable(
                    shared.stop.subscribe(),
                    accept_loop::<M>(shared.clone(), listener, inbound),
                ))
                .abort_handle(),
        );
        for (peer, addr) in &shared.peers {
            tasks.push(
                runtime
                    .spawn(stoppable(
                        shared.stop.subscribe(),
                        dial_loop(shared.clone(), peer.clone(), addr.clone()),
                    ))
                    .abort_handle(),
            );
        }
        lock(&shared.tasks).extend(tasks);
        tracing::info!(node = %shared.node, %local_addr, peers = shared.peers.len(), "cluster transport started");
        Ok(Transport {
            owner: Arc::new(Owner { shared }),
            _msg: PhantomData,
        })
    }

    /// The address the transport accepts on.
    pub fn local_addr(&self) -> SocketAddr {
        self.owner.shared.local_addr
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.owner.shared.node
    }

    /// Queues `msg` for `to` without waiting. Fails when `to` is unknown, has no
    /// authenticated outbound link right now (nothing is kept for later), or its queue is
    /// full.
    pub fn send(&self, to: &str, msg: M) -> Result<(), SendError> {
        let s = &self.owner.shared;
        if !s.peers.contains_key(to) {
            return Err(SendError::UnknownPeer(to.to_string()));
        }
        let Some(queue) = lock(&s.outbound).get(to).cloned() else {
            bump(&s.stats.dropped_not_connected, 1);
            return Err(SendError::NotConnected(to.to_string()));
        };
        let frame = envelope::encode(&Frame::Message(msg)).map_err(|e| match e {
            EnvelopeError::TooLarge { bytes, .. } => SendError::TooLarge {
                bytes,
                limit: s.limits.max_frame,
            },
            other => SendError::Encode(other.to_string()),
        })?;
        let body = frame.len().saturating_sub(HEADER_BYTES);
        if body > s.limits.max_frame {
            return Err(SendError::TooLarge {
                bytes: body,
                limit: s.limits.max_frame,
            });
        }
        queue.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                bump(&s.stats.dropped_queue_full, 1);
                SendError::QueueFull {
                    peer: to.to_string(),
                    limit: s.limits.queue,
                }
            }
            mpsc::error::TrySendError::Closed(_) => {
                bump(&s.stats.dropped_not_connected, 1);
                SendError::NotConnected(to.to_string())
            }
        })
    }

    /// The peers whose outbound link is authenticated and up.
    pub fn connected(&self) -> BTreeSet<String> {
        lock(&self.owner.shared.outbound)
            .iter()
            .filter(|(_, q)| !q.is_closed())
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Inbound connections in their handshake now (at most
    /// [`TransportLimits::pending_handshakes`]).
    pub fn pending_handshakes(&self) -> usize {
        lock(&self.owner.shared.handshakes).len()
    }

    /// Subscribes to link events from now on.
    pub fn events(&self) -> broadcast::Receiver<TransportEvent> {
        self.owner.shared.events.subscribe()
    }

    /// The counters so far.
    pub fn stats(&self) -> TransportStats {
        let c = &self.owner.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: get(&c.frames_sent),
            frames_received: get(&c.frames_received),
            rejected_handshakes: get(&c.rejected_handshakes),
            evicted_handshakes: get(&c.evicted_handshakes),
            bad_frames: get(&c.bad_frames),
            dropped_queue_full: get(&c.dropped_queue_full),
            dropped_not_connected: get(&c.dropped_not_connected),
        }
    }

    /// Stops every task and closes every socket (and the listener). Idempotent. Each link
    /// that was up is reported [`TransportEvent::Down`].
    pub fn shutdown(&self) {
        self.owner.shared.shutdown();
    }
}

/// Reads one frame of at most `max` body bytes (the envelope's own limit is larger than a
/// link's). Not cancel-safe: a caller that gives up on it gives up on the link.
async fn read_limited<R, T>(r: &mut R, max: usize) -> Result<T, EnvelopeError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut header = [0u8; HEADER_BYTES];
    r.read_exact(&mut header).await?;
    let h = envelope::decode_header(&header)?;
    if h.body_len > max {
        return Err(EnvelopeError::TooLarge {
            bytes: h.body_len,
            limit: max,
        });
    }
    let mut body = vec![0u8; h.body_len];
    r.read_exact(&mut body).await?;
    envelope::decode_body(&body)
}

/// Why a link's reader stopped: the peer closed or the network failed (ordinary), or the
/// peer sent something that is not a valid frame (a protocol error, reported).
enum Closed {
    Ordinary(String),
    Protocol(String),
}

fn classify(e: EnvelopeError) -> Closed {
    match e {
        EnvelopeError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Closed::Ordinary("closed by the peer".into())
        }
        EnvelopeError::Io(io) => Closed::Ordinary(format!("i/o: {io}")),
        other => Closed::Protocol(other.to_string()),
    }
}

async fn accept_loop<M>(
    shared: Arc<Shared>,
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound<M>>,
) where
    M: DeserializeOwned + Send + 'static,
{
    let acceptor = shared
        .tls
        .as_ref()
        .map(|t| TlsAcceptor::from(t.server_config()));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(node = %shared.node, error = %e, "accepting a cluster connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some((pending, cancel)) = admit(&shared, addr) else {
            continue;
        };
        tokio::spawn(stoppable(
            shared.stop.subscribe(),
            handle_inbound::<M>(
                shared.clone(),
                acceptor.clone(),
                tcp,
                addr,
                (pending, cancel),
                inbound.clone(),
            ),
        ));
    }
}

/// The acceptor's checks of a hello, in order; the error is the refusal's reason.
fn check_hello(
    shared: &Shared,
    hello: &Hello,
    cert_names: Option<&[String]>,
) -> Result<(), String> {
    if hello.protocol != PROTOCOL {
        return Err(format!(
            "unsupported protocol version {}: this node speaks {PROTOCOL}",
            hello.protocol
        ));
    }
    if !shared.peers.contains_key(&hello.node) {
        return Err(format!(
            "{:?} is not a configured peer of {:?}",
            hello.node, shared.node
        ));
    }
    if let Some(names) = cert_names {
        if !names.contains(&hello.node) {
            return Err(format!(
                "claims to be {:?} but its client certificate names {names:?}",
                hello.node
            ));
        }
    }
    if !bool::from(hello.cookie.as_bytes().ct_eq(shared.cookie.as_bytes())) {
        return Err(format!("{:?} presented a wrong cookie", hello.node));
    }
    // Checked after the cookie: only a member learns this node's settings.
    if hello.settings != shared.settings {
        return Err(format!(
            "{:?} runs with other cluster settings: it has [{}], {:?} has [{}]",
            hello.node, hello.settings, shared.node, shared.settings
        ));
    }
    Ok(())
}

/// A pending inbound handshake's place in the budget: freed when dropped.
struct Pending {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.shared.handshakes).finish(self.id);
    }
}

/// Takes a place in the handshake budget for a connection from `addr`, evicting the oldest
/// pending handshake when the budget is full; `None` (the connection refused and reported)
/// when `addr`'s address has its share already.
fn admit(shared: &Arc<Shared>, addr: SocketAddr) -> Option<(Pending, oneshot::Receiver<()>)> {
    let (handle, cancel) = oneshot::channel();
    let admission = lock(&shared.handshakes).admit(addr.ip(), handle);
    match admission {
        Admission::PerAddressFull { limit } => {
            shared.reject(
                addr,
                format!(
                    "too many pending handshakes from {} (limit {limit} per address)",
                    addr.ip()
                ),
            );
            None
        }
        Admission::Admitted { id, evicted } => {
            if let Some((ip, handle)) = evicted {
                // Dropping the handle cancels that handshake; its task says nothing more.
                drop(handle);
                bump(&shared.stats.evicted_handshakes, 1);
                let limit = shared.limits.pending_handshakes;
                shared.reject(
                    SocketAddr::new(ip, 0),
                    format!("handshake evicted: all {limit} handshake slots were taken and it was the oldest"),
                );
            }
            let pending = Pending {
                shared: shared.clone(),
                id,
            };
            Some((pending, cancel))
        }
    }
}

async fn handle_inbound<M>(
    shared: Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
    tcp: TcpStream,
    addr: SocketAddr,
    (pending, cancel): (Pending, oneshot::Receiver<()>),
    inbound: mpsc::Sender<Inbound<M>>,
) where
    M: DeserializeOwned + Send + 'static,
{
    let limit = shared.limits.handshake_timeout;
    let outcome = tokio::select! {
        done = timeout(limit, accept_handshake(&shared, acceptor, tcp, addr)) => done,
        // Evicted from the budget (reported by the evictor): the socket closes as we return.
        _ = cancel => return,
    };
    drop(pending);
    let (stream, peer) = match outcome {
        Err(_) => {
            shared.reject(addr, format!("handshake not finished within {limit:?}"));
            return;
        }
        Ok(Err(reason)) => {
            shared.reject(addr, reason);
            return;
        }
        Ok(Ok(link)) => link,
    };
    tracing::info!(node = %shared.node, %peer, %addr, "inbound cluster link up");
    match run_inbound(&shared, &peer, stream, inbound).await {
        Closed::Ordinary(reason) => {
            tracing::info!(node = %shared.node, %peer, %addr, %reason, "inbound cluster link closed");
        }
        Closed::Protocol(reason) => {
            bump(&shared.stats.bad_frames, 1);
            let reason = format!("{peer}: {reason}");
            tracing::warn!(node = %shared.node, %addr, %reason, "inbound cluster link closed on a bad frame");
            shared.event(TransportEvent::Rejected { addr, reason });
        }
    }
}

/// The acceptor's side of the handshake: TLS (client certificate required), the hello and
/// its checks, the answer. The caller bounds it by [`TransportLimits::handshake_timeout`].
/// Returns the authenticated stream and the peer's name, or the refusal's reason (a refused
/// dialer has been told why).
async fn accept_handshake(
    shared: &Shared,
    acceptor: Option<TlsAcceptor>,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Result<(Stream, String), String> {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "TCP_NODELAY");
    }
    let (mut stream, cert_names): (Stream, Option<Vec<String>>) = match acceptor {
        Some(acceptor) => {
            let tls = acceptor
                .accept(tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let names = cert.ok_or_else(|| "TLS client presented no certificate".to_string())?;
            let names = peer_names(names).map_err(|e| format!("client certificate: {e}"))?;
            (Box::new(tls), Some(names))
        }
        None => (Box::new(tcp), None),
    };
    let hello: Hello = read_limited(&mut stream, MAX_HANDSHAKE_BYTES)
        .await
        .map_err(|e| format!("no valid hello: {e}"))?;
    let verdict = check_hello(shared, &hello, cert_names.as_deref());
    let reply = match &verdict {
        Ok(()) => HelloReply::Welcome {
            protocol: PROTOCOL,
            node: shared.node.clone(),
        },
        Err(reason) => HelloReply::Refused {
            reason: reason.clone(),
        },
    };
    let answered = async {
        envelope::write_frame(&mut stream, &reply).await?;
        if verdict.is_err() {
            stream.shutdown().await?;
        }
        Ok::<_, EnvelopeError>(())
    }
    .await;
    verdict?;
    answered.map_err(|e| format!("{}: sending the welcome: {e}", hello.node))?;
    Ok((stream, hello.node))
}

/// An authenticated inbound link: deliver the peer's messages, ping it back.
async fn run_inbound<M>(
    shared: &Shared,
    peer: &str,
    stream: Stream,
    inbound: mpsc::Sender<Inbound<M>>,
) -> Closed
where
    M: DeserializeOwned + Send + 'static,
{
    let limits = shared.limits;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reader = async {
        loop {
            match timeout(
                limits.idle_timeout,
                read_limited::<_, Frame<M>>(&mut rd, limits.max_frame),
            )
            .await
            {
                Err(_) => {
                    return Closed::Ordinary(format!(
                        "no frame for {:?}: the link is dead",
                        limits.idle_timeout
                    ))
                }
                Ok(Err(e)) => return classify(e),
                Ok(Ok(Frame::Ping)) => {}
                Ok(Ok(Frame::Message(msg))) => {
                    // Back-pressure: wait for room, stop reading the socket meanwhile.
                    let delivered = inbound
                        .send(Inbound {
                            from: peer.to_string(),
                            msg,
                        })
                        .await;
                    if delivered.is_err() {
                        return Closed::Ordinary("the inbound channel is closed".into());
                    }
                    bump(&shared.stats.frames_received, 1);
                }
            }
        }
    };
    let pinger = async {
        let ping = match envelope::encode(&Frame::<()>::Ping) {
            Ok(p) => p,
            Err(e) => return Closed::Ordinary(format!("encoding a ping: {e}")),
        };
        let every = limits.ping_interval();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = write_flush(&mut wr, &ping).await {
                return Closed::Ordinary(format!("sending a ping: {e}"));
            }
        }
    };
    tokio::select! {
        r = reader => r,
        p = pinger => p,
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    w.write_all(frame).await?;
    w.flush().await
}

/// Why a dial attempt failed: TCP (the peer is probably not running; retried quietly) or
/// the TLS/hello handshake (reported).
enum DialError {
    Connect(String),
    Handshake(String),
}

async fn dial_loop(shared: Arc<Shared>, peer: String, addr: String) {
    let limits = shared.limits;
    let mut backoff = limits.reconnect_min;
    let mut last_failure = String::new();
    loop {
        if shared.stopped() {
            return;
        }
        match dial(&shared, &peer, &addr).await {
            Ok(stream) => {
                if shared.stopped() {
                    // Shut down while this dial was in flight: do not publish the link.
                    return;
                }
                backoff = limits.reconnect_min;
                last_failure.clear();
                let (tx, rx) = mpsc::channel(limits.queue);
                lock(&shared.outbound).insert(peer.clone(), tx);
                tracing::info!(node = %shared.node, %peer, %addr, "outbound cluster link up");
                shared.event(TransportEvent::Up { peer: peer.clone() });
                let reason = run_outbound(&shared, &peer, stream, rx).await;
                lock(&shared.outbound).remove(&peer);
                tracing::warn!(node = %shared.node, %peer, %addr, %reason, "outbound cluster link down");
                shared.event(TransportEvent::Down {
                    peer: peer.clone(),
                    reason,
                });
            }
            Err(DialError::Connect(reason)) => {
                // Said once per streak (a peer that is down stays down for a while); the
                // runtime sees it in `connected()`.
                if reason != last_failure {
                    tracing::warn!(node = %shared.node, %peer, %addr, %reason, "cluster peer not reachable");
                    last_failure.clone_from(&reason);
                } else {
                    tracing::debug!(node = %shared.node, %peer, %addr, %reason, "cluster peer still not reachable");
                }
            }
            Err(DialError::Handshake(reason)) => {
                if reason != last_failure {
                    tracing::warn!(node = %shared.node, %peer, %addr, %reason, "cluster handshake failed");
                    last_failure.clone_from(&reason);
                } else {
                    tracing::debug!(node = %shared.node, %peer, %addr, %reason, "cluster handshake failed again");
                }
                shared.event(TransportEvent::Down {
                    peer: peer.clone(),
                    reason,
                });
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(limits.reconnect_max);
    }
}

async fn connect_tcp(addr: &str) -> Result<TcpStream, String> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("resolving {addr}: {e}"))?;
    let mut last = format!("{addr} resolves to no address");
    for a in resolved {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connecting to {addr} ({a}): {e}"),
        }
    }
    Err(last)
}

async fn dial(shared: &Shared, peer: &str, addr: &str) -> Result<Stream, DialError> {
    let limits = shared.limits;
    let tcp = timeout(limits.connect_timeout, connect_tcp(addr))
        .await
        .map_err(|_| {
            DialError::Connect(format!(
                "connecting to {addr}: no connection within {:?}",
                limits.connect_timeout
            ))
        })?
        .map_err(DialError::Connect)?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "TCP_NODELAY");
    }
    let mut stream: Stream = match &shared.tls {
        Some(tls) => {
            let name = server_name(peer).map_err(|e| DialError::Handshake(e.to_string()))?;
            let connector = TlsConnector::from(tls.client_config());
            match timeout(limits.handshake_timeout, connector.connect(name, tcp)).await {
                Err(_) => {
                    return Err(DialError::Handshake(format!(
                        "TLS handshake with {peer} at {addr} timed out after {:?}",
                        limits.handshake_timeout
                    )))
                }
                Ok(Err(e)) => {
                    return Err(DialError::Handshake(format!(
                        "TLS handshake with {peer} at {addr} failed: {e}"
                    )))
                }
                Ok(Ok(s)) => Box::new(s),
            }
        }
        None => Box::new(tcp),
    };
    let hello = Hello {
        protocol: PROTOCOL,
        node: shared.node.clone(),
        cookie: shared.cookie.clone(),
        settings: shared.settings.clone(),
    };
    let reply = timeout(limits.handshake_timeout, async {
        envelope::write_frame(&mut stream, &hello).await?;
        read_limited::<_, HelloReply>(&mut stream, MAX_HANDSHAKE_BYTES).await
    })
    .await
    .map_err(|_| {
        DialError::Handshake(format!(
            "no answer to the hello from {peer} at {addr} within {:?}",
            limits.handshake_timeout
        ))
    })?
    .map_err(|e| DialError::Handshake(format!("hello exchange with {peer} at {addr}: {e}")))?;
    match reply {
        HelloReply::Welcome { protocol, node } if protocol == PROTOCOL && node == peer => Ok(stream),
        HelloReply::Welcome { protocol, node } => Err(DialError::Handshake(format!(
            "{addr} answered as {node:?} with protocol {protocol}, expected {peer:?} with {PROTOCOL}"
        ))),
        HelloReply::Refused { reason } => Err(DialError::Handshake(format!(
            "refused by {peer} at {addr}: {reason}"
        ))),
    }
}

/// An authenticated outbound link: write the queue's frames and pings, read the peer's
/// pings (so a silent peer is noticed even while nothing is sent). Returns why it ended.
async fn run_outbound(
    shared: &Shared,
    peer: &str,
    stream: Stream,
    mut queue: mpsc::Receiver<Vec<u8>>,
) -> String {
    let limits = shared.limits;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reader = async {
        loop {
            match timeout(
                limits.idle_timeout,
                read_limited::<_, Frame<IgnoredAny>>(&mut rd, limits.max_frame),
            )
            .await
            {
                Err(_) => {
                    return format!(
                        "no frame from {peer} for {:?}: the link is dead",
                        limits.idle_timeout
                    )
                }
                Ok(Err(e)) => {
                    return match classify(e) {
                        Closed::Ordinary(r) => r,
                        Closed::Protocol(r) => format!("bad frame from {peer}: {r}"),
                    }
                }
                Ok(Ok(Frame::Ping)) => {}
                Ok(Ok(Frame::Message(_))) => {
                    return format!(
                        "{peer} sent an application message on the link this node dialled"
                    )
                }
            }
        }
    };
    let writer = async {
        let ping = match envelope::encode(&Frame::<()>::Ping) {
            Ok(p) => p,
            Err(e) => return format!("encoding a ping: {e}"),
        };
        let every = limits.ping_interval();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                frame = queue.recv() => {
                    let Some(frame) = frame else {
                        return "the outbound queue closed".to_string();
                    };
                    let mut n = 1u64;
                    let mut written = wr.write_all(&frame).await;
                    while written.is_ok() && n < WRITE_BATCH as u64 {
                        let Ok(next) = queue.try_recv() else { break };
                        written = wr.write_all(&next).await;
                        n += 1;
                    }
                    if let Err(e) = written {
                        return format!("writing to {peer}: {e}");
                    }
                    if let Err(e) = wr.flush().await {
                        return format!("writing to {peer}: {e}");
                    }
                    bump(&shared.stats.frames_sent, n);
                }
                _ = tick.tick() => {
                    if let Err(e) = write_flush(&mut wr, &ping).await {
                        return format!("sending a ping to {peer}: {e}");
                    }
                }
            }
        }
    };
    tokio::select! {
        r = reader => r,
        w = writer => w,
    }
}
