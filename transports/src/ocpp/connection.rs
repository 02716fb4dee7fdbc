//! The per-connection OCPP-J engine, shared by the CSMS (one per charge point) and the
//! charge-point client: one tokio task owns the WebSocket, and a [`Connection`] handle lets an
//! owner (an actor) send CALLs and learn that the connection dropped; the peer's CALLs arrive as
//! [`IncomingCall`]s on a bounded channel and are answered through them.
//!
//! Invariants:
//! - at most one CALL of ours is outstanding (OCPP-J); further ones wait in a queue of
//!   [`RpcConfig::call_queue_capacity`] entries, and a full queue is [`CallError::QueueFull`];
//! - an *optional* CALL ([`Connection::call_optional`]: a TriggerMessage, nothing a control
//!   loop waits for) never delays a required one: it waits in its own queue of
//!   [`RpcConfig::optional_queue_capacity`], goes out only while no CALL is outstanding and no
//!   required one is queued, has its own short timeout ([`RpcConfig::optional_call_timeout`]),
//!   and a required CALL that arrives while it is outstanding ends it at once
//!   ([`CallError::Preempted`], our own early timeout of it) and goes out; the late answer of
//!   a preempted CALL is dropped by its message id;
//! - every outstanding CALL ends: answered, [`CallError::Timeout`] after
//!   [`RpcConfig::call_timeout`], or [`CallError::Disconnected`];
//! - message ids are unique per connection (a counter), at most 36 characters;
//! - every payload received is validated against its version's schema before it is typed;
//!   every payload sent is validated too unless [`RpcConfig::validate_outgoing`] is off;
//! - a malformed frame or payload is answered with the CALLERROR its fault deserves and the
//!   connection lives on; an answer (CALLRESULT/CALLERROR) is never answered;
//! - every peer CALL is answered once: by the owner, or with an error when the owner drops it,
//!   does not answer within [`RpcConfig::handler_timeout`], or more than
//!   [`RpcConfig::max_unanswered_incoming`] are waiting;
//! - every wait is bounded: writes by [`RpcConfig::write_timeout`], silence by
//!   [`RpcConfig::idle_timeout`] (pings every [`RpcConfig::ping_interval`] keep a live peer
//!   talking), and a ping that nothing at all answers within [`RpcConfig::pong_timeout`]
//!   ends the connection ([`DisconnectReason::PingUnanswered`]): a peer that vanished (a
//!   charge point that rebooted behind a half-open TCP connection) is noticed within
//!   `ping_interval + pong_timeout`, which bounds how long the CSMS refuses its reconnection
//!   (one live connection per station, see [`super::server`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::frame::{ErrorCode, Frame, FrameError, MessageId, RpcError, MAX_FRAME_BYTES};
use super::messages::{self, Action, Initiator, OcppRequest, PayloadTypeError, Request, Response};
use super::schema::{self, PayloadKind, SchemaViolation};
use super::OcppVersion;

/// OCPP's usual CALL timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// CALLs that may wait behind the outstanding one.
pub const DEFAULT_CALL_QUEUE_CAPACITY: usize = 16;
/// Optional CALLs that may wait for a free slot (see [`Connection::call_optional`]).
pub const DEFAULT_OPTIONAL_QUEUE_CAPACITY: usize = 4;
/// How long an optional CALL may hold the slot unanswered (short: it is only a hint, and a
/// required CALL preempts it anyway).
pub const DEFAULT_OPTIONAL_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the owner has to answer a peer's CALL (below the peer's own CALL timeout).
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(25);
/// Peer CALLs that may wait for the owner's answer at once (OCPP allows one; a little slack
/// tolerates peers that pipeline).
pub const DEFAULT_MAX_UNANSWERED_INCOMING: usize = 4;
/// Silence after which the connection is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Interval of WebSocket pings (their pongs count as activity).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(60);
/// How long a ping may go unanswered (no pong, no frame at all) before the peer is
/// considered gone.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a single frame write may take before the peer is considered stuck.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest WebSocket message accepted at all; between [`MAX_FRAME_BYTES`] and this, a message
/// is answered with FormatViolation, above it the connection is closed (1009).
pub const WS_MAX_MESSAGE_BYTES: usize = 4 * MAX_FRAME_BYTES;
/// WebSocket read buffer per connection (small: the CSMS holds thousands of connections).
pub const WS_READ_BUFFER_BYTES: usize = 8 * 1024;

/// Limits of one connection. Every field has a named default ([`RpcConfig::default`]).
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// How long to wait for the answer to one of our CALLs ([`DEFAULT_CALL_TIMEOUT`]).
    pub call_timeout: Duration,
    /// CALLs that may queue behind the outstanding one ([`DEFAULT_CALL_QUEUE_CAPACITY`]).
    pub call_queue_capacity: usize,
    /// Optional CALLs that may wait for a free slot ([`DEFAULT_OPTIONAL_QUEUE_CAPACITY`]).
    pub optional_queue_capacity: usize,
    /// How long an optional CALL may stay unanswered ([`DEFAULT_OPTIONAL_CALL_TIMEOUT`]).
    pub optional_call_timeout: Duration,
    /// How long the owner has to answer a peer's CALL ([`DEFAULT_HANDLER_TIMEOUT`]).
    pub handler_timeout: Duration,
    /// Peer CALLs awaiting an answer at once ([`DEFAULT_MAX_UNANSWERED_INCOMING`]).
    pub max_unanswered_incoming: usize,
    /// Silence before closing ([`DEFAULT_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Ping interval ([`DEFAULT_PING_INTERVAL`]).
    pub ping_interval: Duration,
    /// Bound on one write ([`DEFAULT_WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
    /// Bound on the silence after a ping ([`DEFAULT_PONG_TIMEOUT`]).
    pub pong_timeout: Duration,
    /// Validate our outgoing payloads against the schemas (default true: a payload the peer's
    /// version cannot accept, e.g. a discharge setpoint for 2.0.1, fails here, typed).
    pub validate_outgoing: bool,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            call_queue_capacity: DEFAULT_CALL_QUEUE_CAPACITY,
            optional_queue_capacity: DEFAULT_OPTIONAL_QUEUE_CAPACITY,
            optional_call_timeout: DEFAULT_OPTIONAL_CALL_TIMEOUT,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            max_unanswered_incoming: DEFAULT_MAX_UNANSWERED_INCOMING,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            validate_outgoing: true,
        }
    }
}

/// The WebSocket limits every OCPP connection uses (server and client).
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_MAX_MESSAGE_BYTES * 2)
        .max_message_size(Some(WS_MAX_MESSAGE_BYTES))
        .max_frame_size(Some(WS_MAX_MESSAGE_BYTES))
}

/// Why a CALL of ours did not produce a typed answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The queue behind the outstanding CALL is full.
    #[error("call queue full ({capacity} waiting)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The connection is closed (or closed before the answer came).
    #[error("connection closed")]
    Disconnected,
    /// An optional CALL gave the slot up to a required one before it was answered.
    #[error("{action} given up for a required call before it was answered")]
    Preempted {
        /// The optional CALL's action.
        action: Action,
    },
    /// No answer within the CALL timeout.
    #[error("{action} got no answer within {after:?}")]
    Timeout {
        /// The action.
        action: Action,
        /// The timeout.
        after: Duration,
    },
    /// The peer answered with a CALLERROR.
    #[error("{action} rejected by the peer: {error}")]
    Rejected {
        /// The action.
        action: Action,
        /// The peer's error.
        error: RpcError,
    },
    /// Our request does not satisfy the schema of the connection's version; it was not sent.
    #[error("request not sent: {0}")]
    InvalidRequest(SchemaViolation),
    /// The peer's answer does not satisfy the schema.
    #[error("invalid answer: {0}")]
    InvalidResponse(SchemaViolation),
    /// The peer's answer frame is malformed.
    #[error("{action} answer frame malformed: {error}")]
    MalformedResponse {
        /// The action.
        action: Action,
        /// What was wrong.
        error: FrameError,
    },
    /// A payload does not fit its typed struct.
    #[error(transparent)]
    PayloadType(#[from] PayloadTypeError),
    /// This side of the connection may not call the action (e.g. a CSMS sending
    /// BootNotification).
    #[error("{action} is not called by this side of the connection")]
    WrongDirection {
        /// The action.
        action: Action,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The peer sent a close frame.
    PeerClosed {
        /// Close code.
        code: Option<u16>,
        /// Close reason text.
        reason: String,
    },
    /// The stream ended without a close frame.
    StreamEnded,
    /// Nothing was received for the idle limit.
    Idle {
        /// The idle limit.
        after: Duration,
    },
    /// Nothing (no pong, no frame) answered a ping within the pong timeout.
    PingUnanswered {
        /// The pong timeout.
        after: Duration,
    },
    /// A write did not complete within the write timeout.
    WriteTimeout {
        /// The write timeout.
        after: Duration,
    },
    /// A WebSocket or I/O error (including a message above [`WS_MAX_MESSAGE_BYTES`]).
    Transport(String),
    /// The owner closed it, or dropped every [`Connection`] handle.
    ClosedByOwner,
}

/// Identity of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The charge point's identity (`/ocpp/{chargePointId}`).
    pub charge_point_id: String,
    /// The negotiated version.
    pub version: OcppVersion,
}

struct OutgoingCall {
    action: Action,
    payload: Map<String, Value>,
    reply: oneshot::Sender<Result<Map<String, Value>, CallError>>,
    /// An optional CALL (see [`Connection::call_optional`]).
    optional: bool,
}

struct Shared {
    info: ConnectionInfo,
    config: RpcConfig,
    initiator: Initiator,
    closed: watch::Receiver<Option<DisconnectReason>>,
    close: Notify,
}

/// The owner's handle on a connection: cheap to clone; when every clone is dropped the
/// connection closes.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    calls: mpsc::Sender<OutgoingCall>,
    optional: mpsc::Sender<OutgoingCall>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.shared.info)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Who is on the other end and which version it speaks.
    pub fn info(&self) -> &ConnectionInfo {
        &self.shared.info
    }

    /// Sends a typed CALL and waits for its typed answer (queued behind the outstanding CALL).
    pub async fn call<R: OcppRequest>(&self, request: R) -> Result<R::Response, CallError> {
        let payload = messages::to_payload(R::ACTION, &request)?;
        let answer = self.call_raw(R::ACTION, payload).await?;
        Ok(messages::from_payload(R::ACTION, answer)?)
    }

    /// Sends a CALL whose payload is raw JSON and returns the schema-validated answer. For
    /// payloads built elsewhere (e.g. replayed); prefer [`Connection::call`].
    pub async fn call_raw(
        &self,
        action: Action,
        payload: Map<String, Value>,
    ) -> Result<Map<String, Value>, CallError> {
        self.send_raw(action, payload, false).await
    }

    /// Sends a typed *optional* CALL: one nothing waits for (a TriggerMessage). It never
    /// delays a required CALL (see the module docs): it goes out only while the slot is free
    /// and no required CALL is queued, fails with [`CallError::Timeout`] after
    /// [`RpcConfig::optional_call_timeout`] unanswered (or twice that in all, waiting for the
    /// slot included), and with [`CallError::Preempted`] when a required
    /// CALL needs the slot first.
    pub async fn call_optional<R: OcppRequest>(
        &self,
        request: R,
    ) -> Result<R::Response, CallError> {
        let payload = messages::to_payload(R::ACTION, &request)?;
        // Its wait for a free slot is bounded too: as long again as its answer.
        let after = self.shared.config.optional_call_timeout;
        let answer = tokio::time::timeout(after * 2, self.send_raw(R::ACTION, payload, true))
            .await
            .map_err(|_| CallError::Timeout {
                action: R::ACTION,
                after: after * 2,
            })??;
        Ok(messages::from_payload(R::ACTION, answer)?)
    }

    async fn send_raw(
        &self,
        action: Action,
        payload: Map<String, Value>,
        optional: bool,
    ) -> Result<Map<String, Value>, CallError> {
        if action.initiator() != self.shared.initiator {
            return Err(CallError::WrongDirection { action });
        }
        let version = self.shared.info.version;
        let payload = if self.shared.config.validate_outgoing {
            schema::validate_object(version, action, PayloadKind::Request, payload)
                .map_err(CallError::InvalidRequest)?
        } else {
            payload
        };
        let (reply, answer) = oneshot::channel();
        let (queue, capacity) = match optional {
            true => (&self.optional, self.shared.config.optional_queue_capacity),
            false => (&self.calls, self.shared.config.call_queue_capacity),
        };
        queue
            .try_send(OutgoingCall {
                action,
                payload,
                reply,
                optional,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => CallError::QueueFull { capacity },
                mpsc::error::TrySendError::Closed(_) => CallError::Disconnected,
            })?;
        let answer = answer.await.map_err(|_| CallError::Disconnected)??;
        schema::validate_object(version, action, PayloadKind::Response, answer)
            .map_err(CallError::InvalidResponse)
    }

    /// Asks the connection to close (a normal close frame); pending CALLs fail with
    /// [`CallError::Disconnected`].
    pub fn close(&self) {
        self.shared.close.notify_one();
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    /// Waits until the connection ends and says why.
    pub async fn closed(&self) -> DisconnectReason {
        self.closed_watch().wait().await
    }

    /// A watcher of the connection's end that does not keep the connection open (a
    /// [`Connection`] clone would: the connection closes when every clone is dropped).
    pub fn closed_watch(&self) -> ClosedWatch {
        ClosedWatch(self.shared.closed.clone())
    }
}

/// Learns why a connection ended without holding it open (see [`Connection::closed_watch`]).
#[derive(Debug, Clone)]
pub struct ClosedWatch(watch::Receiver<Option<DisconnectReason>>);

impl ClosedWatch {
    /// Whether the connection has ended (its engine gave a reason, or is gone).
    pub fn is_closed(&self) -> bool {
        self.0.borrow().is_some() || self.0.has_changed().is_err()
    }

    /// Waits until the connection ends and says why.
    pub async fn wait(mut self) -> DisconnectReason {
        let reason = match self.0.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(DisconnectReason::ClosedByOwner),
            // The engine dropped its sender without a reason: only if its task was aborted.
            Err(_) => DisconnectReason::Transport("connection task ended".to_owned()),
        };
        reason
    }
}

/// A CALL from the peer, validated and typed, waiting for the owner's answer.
#[derive(Debug)]
pub struct IncomingCall {
    /// The request.
    pub request: Request,
    reply: oneshot::Sender<Result<Response, RpcError>>,
}

impl IncomingCall {
    /// The action called.
    pub fn action(&self) -> Action {
        self.request.action()
    }

    /// Answers the CALL: a response of the same action becomes a CALLRESULT (validated against
    /// the schema; an invalid one is replaced by an InternalError CALLERROR naming the field),
    /// an error a CALLERROR. Answering after the handler timeout has no effect.
    pub fn respond(self, answer: Result<Response, RpcError>) {
        // The engine may have given up (timeout, disconnect); nothing to do then.
        let _ = self.reply.send(answer);
    }
}

/// Something that answers the peer's CALLs (see [`serve_calls`]).
pub trait CallHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Response, RpcError>> + Send>>;
}

impl<F, Fut> CallHandler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, RpcError>> + Send + 'static,
{
    fn handle(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Response, RpcError>> + Send>> {
        Box::pin(self(request))
    }
}

/// Answers every incoming CALL with `handler`, one at a time, until the connection ends.
pub fn serve_calls<H: CallHandler>(
    mut calls: mpsc::Receiver<IncomingCall>,
    handler: H,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(call) = calls.recv().await {
            let IncomingCall { request, reply } = call;
            let answer = handler.handle(request).await;
            let _ = reply.send(answer);
        }
    })
}

/// Starts the engine on an accepted or connected WebSocket. `initiator` is the side this
/// engine is (its own CALLs must be of that side; the peer's of the other).
pub(crate) fn spawn<S>(
    ws: WebSocketStream<S>,
    info: ConnectionInfo,
    config: RpcConfig,
    initiator: Initiator,
) -> (Connection, mpsc::Receiver<IncomingCall>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (calls_tx, calls_rx) = mpsc::channel(config.call_queue_capacity.max(1));
    let (optional_tx, optional_rx) = mpsc::channel(config.optional_queue_capacity.max(1));
    let (incoming_tx, incoming_rx) = mpsc::channel(config.max_unanswered_incoming.max(1));
    let (closed_tx, closed_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        info,
        config,
        initiator,
        closed: closed_rx,
        close: Notify::new(),
    });
    let engine = Engine {
        shared: Arc::clone(&shared),
        ws,
        calls: calls_rx,
        optional: optional_rx,
        incoming: incoming_tx,
        next_id: 1,
    };
    tokio::spawn(async move {
        let reason = engine.run().await;
        tracing::debug!(?reason, "OCPP connection ended");
        closed_tx.send_replace(Some(reason));
    });
    (
        Connection {
            shared,
            calls: calls_tx,
            optional: optional_tx,
        },
        incoming_rx,
    )
}

struct Outstanding {
    id: MessageId,
    action: Action,
    reply: oneshot::Sender<Result<Map<String, Value>, CallError>>,
    deadline: Instant,
    optional: bool,
}

type PendingAnswer =
    Pin<Box<dyn Future<Output = (MessageId, Action, Result<Response, RpcError>)> + Send>>;

struct Engine<S> {
    shared: Arc<Shared>,
    ws: WebSocketStream<S>,
    calls: mpsc::Receiver<OutgoingCall>,
    optional: mpsc::Receiver<OutgoingCall>,
    incoming: mpsc::Sender<IncomingCall>,
    next_id: u64,
}

/// What the loop does after handling one event.
type Step = Result<(), DisconnectReason>;

impl<S> Engine<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self) -> DisconnectReason {
        let cfg = self.shared.config.clone();
        let mut outstanding: Option<Outstanding> = None;
        let mut pending: FuturesUnordered<PendingAnswer> = FuturesUnordered::new();
        let mut idle_deadline = Instant::now() + cfg.idle_timeout;
        let mut next_ping = Instant::now() + cfg.ping_interval;
        // Set when a ping goes out, cleared by anything the peer sends.
        let mut pong_deadline: Option<Instant> = None;
        let shared = Arc::clone(&self.shared);
        let reason = loop {
            let call_deadline = outstanding.as_ref().map(|o| o.deadline);
            // A required CALL may take the slot from an optional one (module docs).
            let slot_free_for_required = outstanding.as_ref().is_none_or(|o| o.optional);
            let slot_free_for_optional = outstanding.is_none() && self.calls.is_empty();
            let step: Step = tokio::select! {
                msg = self.ws.next() => match msg {
                    None => Err(DisconnectReason::StreamEnded),
                    Some(Err(e)) => Err(DisconnectReason::Transport(e.to_string())),
                    Some(Ok(msg)) => {
                        idle_deadline = Instant::now() + cfg.idle_timeout;
                        pong_deadline = None;
                        self.on_message(msg, &mut outstanding, &mut pending).await
                    }
                },
                call = self.calls.recv(), if slot_free_for_required => match call {
                    None => Err(DisconnectReason::ClosedByOwner),
                    Some(call) => {
                        if let Some(o) = outstanding.take() {
                            let _ = o.reply.send(Err(CallError::Preempted { action: o.action }));
                        }
                        self.send_call(call, &mut outstanding).await
                    }
                },
                Some(call) = self.optional.recv(), if slot_free_for_optional => {
                    self.send_call(call, &mut outstanding).await
                },
                _ = sleep_until(call_deadline.unwrap_or(idle_deadline)), if call_deadline.is_some() => {
                    if let Some(o) = outstanding.take() {
                        let after = match o.optional {
                            true => cfg.optional_call_timeout,
                            false => cfg.call_timeout,
                        };
                        let _ = o.reply.send(Err(CallError::Timeout { action: o.action, after }));
                    }
                    Ok(())
                },
                Some((id, action, answer)) = pending.next(), if !pending.is_empty() => {
                    self.send_answer(id, action, answer).await
                },
                _ = sleep_until(next_ping) => {
                    next_ping = Instant::now() + cfg.ping_interval;
                    pong_deadline.get_or_insert(Instant::now() + cfg.pong_timeout);
                    self.write(Message::Ping(Vec::new().into())).await
                },
                _ = sleep_until(pong_deadline.unwrap_or(idle_deadline)), if pong_deadline.is_some() => {
                    Err(DisconnectReason::PingUnanswered { after: cfg.pong_timeout })
                },
                _ = sleep_until(idle_deadline) => Err(DisconnectReason::Idle { after: cfg.idle_timeout }),
                _ = shared.close.notified() => Err(DisconnectReason::ClosedByOwner),
            };
            if let Err(reason) = step {
                break reason;
            }
        };
        if let Some(o) = outstanding.take() {
            let _ = o.reply.send(Err(CallError::Disconnected));
        }
        if !matches!(
            reason,
            DisconnectReason::PeerClosed { .. }
                | DisconnectReason::StreamEnded
                | DisconnectReason::Transport(_)
        ) {
            let frame = CloseFrame {
                code: if matches!(reason, DisconnectReason::ClosedByOwner) {
                    CloseCode::Normal
                } else {
                    CloseCode::Away
                },
                reason: "".into(),
            };
            let _ = tokio::time::timeout(cfg.write_timeout, self.ws.close(Some(frame))).await;
        }
        reason
    }

    async fn write(&mut self, msg: Message) -> Step {
        let after = self.shared.config.write_timeout;
        match tokio::time::timeout(after, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DisconnectReason::Transport(e.to_string())),
            Err(_) => Err(DisconnectReason::WriteTimeout { after }),
        }
    }

    async fn write_frame(&mut self, frame: &Frame) -> Step {
        self.write(Message::Text(frame.encode().into())).await
    }

    async fn send_call(
        &mut self,
        call: OutgoingCall,
        outstanding: &mut Option<Outstanding>,
    ) -> Step {
        if call.reply.is_closed() {
            return Ok(()); // the caller gave up while queued
        }
        let id = match MessageId::new(self.next_id.to_string()) {
            Ok(id) => id,
            Err(e) => {
                let _ = call.reply.send(Err(CallError::Disconnected));
                return Err(DisconnectReason::Transport(e.to_string()));
            }
        };
        self.next_id += 1;
        let frame = Frame::Call {
            id: id.clone(),
            action: call.action.as_str().to_owned(),
            payload: call.payload,
        };
        self.write_frame(&frame).await?;
        let timeout = match call.optional {
            true => self.shared.config.optional_call_timeout,
            false => self.shared.config.call_timeout,
        };
        *outstanding = Some(Outstanding {
            id,
            action: call.action,
            reply: call.reply,
            deadline: Instant::now() + timeout,
            optional: call.optional,
        });
        Ok(())
    }

    async fn on_message(
        &mut self,
        msg: Message,
        outstanding: &mut Option<Outstanding>,
        pending: &mut FuturesUnordered<PendingAnswer>,
    ) -> Step {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                let err = Frame::CallError {
                    id: MessageId::unknown(),
                    error: RpcError::new(
                        ErrorCode::RpcFrameworkError,
                        "binary frames are not OCPP-J; send text",
                    ),
                };
                return self.write_frame(&err).await;
            }
            Message::Close(frame) => {
                return Err(DisconnectReason::PeerClosed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                })
            }
            // Pings are answered by tungstenite; pongs only count as activity.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        let version = self.shared.info.version;
        match Frame::decode(text.as_str(), version) {
            Err(e) if e.is_answer() => {
                if let Some(o) = take_matching(outstanding, e.message_id()) {
                    let _ = o.reply.send(Err(CallError::MalformedResponse {
                        action: o.action,
                        error: e,
                    }));
                } else {
                    tracing::warn!(error = %e, "malformed answer frame for no outstanding call");
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "malformed frame answered with CALLERROR");
                self.write_frame(&e.to_call_error()).await
            }
            Ok(Frame::CallResult { id, payload }) => {
                if let Some(o) = take_matching(outstanding, Some(&id)) {
                    let _ = o.reply.send(Ok(payload));
                } else {
                    tracing::debug!(%id, "CALLRESULT for no outstanding call (late or unknown)");
                }
                Ok(())
            }
            Ok(Frame::CallError { id, error }) => {
                if let Some(o) = take_matching(outstanding, Some(&id)) {
                    let _ = o.reply.send(Err(CallError::Rejected {
                        action: o.action,
                        error,
                    }));
                } else {
                    tracing::debug!(%id, %error, "CALLERROR for no outstanding call");
                }
                Ok(())
            }
            Ok(Frame::CallResultError { id, error }) => {
                tracing::warn!(%id, %error, "peer could not process our CALLRESULT");
                Ok(())
            }
            Ok(Frame::Send { id, action, .. }) => {
                // SEND is never answered; no modelled action uses it.
                tracing::debug!(%id, %action, "SEND ignored");
                Ok(())
            }
            Ok(Frame::Call {
                id,
                action,
                payload,
            }) => match self.accept_call(&id, &action, payload, pending) {
                Ok(()) => Ok(()),
                Err(error) => self.write_frame(&Frame::CallError { id, error }).await,
            },
        }
    }

    /// Validates and types a peer CALL and hands it to the owner.
    fn accept_call(
        &mut self,
        id: &MessageId,
        action_name: &str,
        payload: Map<String, Value>,
        pending: &mut FuturesUnordered<PendingAnswer>,
    ) -> Result<(), RpcError> {
        let action = Action::parse(action_name).ok_or_else(|| {
            RpcError::new(
                ErrorCode::NotImplemented,
                format!("action {action_name:?} is not implemented"),
            )
        })?;
        if action.initiator() == self.shared.initiator {
            return Err(RpcError::new(
                ErrorCode::NotSupported,
                format!("{action} is not accepted from this peer"),
            ));
        }
        let value = Value::Object(payload);
        schema::validate(
            self.shared.info.version,
            action,
            PayloadKind::Request,
            &value,
        )
        .map_err(|v| violation_error(&v))?;
        let Value::Object(payload) = value else {
            return Err(RpcError::new(
                ErrorCode::FormatViolation,
                "payload must be an object",
            ));
        };
        let request = Request::from_payload(action, payload)
            .map_err(|e| RpcError::new(ErrorCode::TypeConstraintViolation, e.to_string()))?;
        if pending.len() >= self.shared.config.max_unanswered_incoming {
            return Err(RpcError::new(
                ErrorCode::GenericError,
                format!(
                    "more than {} calls awaiting an answer; send one at a time",
                    self.shared.config.max_unanswered_incoming
                ),
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.incoming
            .try_send(IncomingCall { request, reply })
            .map_err(|_| {
                RpcError::new(
                    ErrorCode::InternalError,
                    "no handler is receiving calls on this connection",
                )
            })?;
        let timeout = self.shared.config.handler_timeout;
        let id = id.clone();
        pending.push(Box::pin(async move {
            let result = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(RpcError::new(
                    ErrorCode::InternalError,
                    "the handler dropped the call unanswered",
                )),
                Err(_) => Err(RpcError::new(
                    ErrorCode::InternalError,
                    format!("no answer within {timeout:?}"),
                )),
            };
            (id, action, result)
        }));
        Ok(())
    }

    async fn send_answer(
        &mut self,
        id: MessageId,
        action: Action,
        answer: Result<Response, RpcError>,
    ) -> Step {
        let frame = match answer.and_then(|r| self.check_response(action, r)) {
            Ok(payload) => Frame::CallResult { id, payload },
            Err(error) => Frame::CallError { id, error },
        };
        self.write_frame(&frame).await
    }

    /// Our answer must be of the called action and satisfy the schema.
    fn check_response(
        &self,
        action: Action,
        response: Response,
    ) -> Result<Map<String, Value>, RpcError> {
        if response.action() != action {
            return Err(RpcError::new(
                ErrorCode::InternalError,
                format!(
                    "handler answered {action} with a {} response",
                    response.action()
                ),
            ));
        }
        let payload = response
            .to_payload()
            .map_err(|e| RpcError::new(ErrorCode::InternalError, e.to_string()))?;
        let value = Value::Object(payload);
        if let Err(v) = schema::validate(
            self.shared.info.version,
            action,
            PayloadKind::Response,
            &value,
        ) {
            tracing::error!(violation = %v, "our own answer violates the schema");
            return Err(RpcError::new(
                ErrorCode::InternalError,
                format!("answer invalid at `{}`", v.path),
            ));
        }
        match value {
            Value::Object(m) => Ok(m),
            _ => Err(RpcError::new(
                ErrorCode::InternalError,
                "answer is not an object",
            )),
        }
    }
}

/// The CALLERROR for a schema violation: its code, naming the field.
fn violation_error(v: &SchemaViolation) -> RpcError {
    let mut e = RpcError::new(v.code, format!("`{}`: {}", v.path, v.message));
    e.details
        .insert("field".to_owned(), Value::String(v.path.clone()));
    e
}

fn take_matching(
    outstanding: &mut Option<Outstanding>,
    id: Option<&MessageId>,
) -> Option<Outstanding> {
    match (outstanding.as_ref(), id) {
        (Some(o), Some(id)) if &o.id == id => outstanding.take(),
        _ => None,
    }
}
