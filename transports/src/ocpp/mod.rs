//! OCPP 2.0.1 / 2.1 over WebSocket (OCPP-J): a CSMS listener and a charge-point client that
//! share one per-connection RPC engine.
//!
//! Layers, bottom up, one module each:
//! - [`frame`]: OCPP-J RPC frames (CALL, CALLRESULT, CALLERROR, 2.1's CALLRESULTERROR and SEND),
//!   decoding with the OCPP error code a bad frame deserves, bounded in size.
//! - [`messages`]: typed request/response payloads for the actions gridvisor uses.
//! - [`schema`]: validation of payloads against the official JSON schemas (vendored in
//!   `transports/schemas/`), mapping a violation to its CALLERROR code and naming the field.
//! - [`setpoint`]: the pure mapping from a dispatch (id, revision, kW, valid-until) to a
//!   SetChargingProfile request, deterministic so a resend after a restart changes nothing.
//! - [`connection`]: the per-connection engine: message ids, one outstanding CALL at a time, a
//!   bounded queue behind it, CALL timeouts, incoming CALLs handed to the owner, ping and idle.
//! - [`auth`] and [`tls`]: Basic authentication (security profiles 1–2) and rustls configs
//!   (profiles 2–3, ring provider); [`credentials`]: per-station salted password hashes (the
//!   credentials file, the verifying authenticator and its cache); [`crl`]: profile 3's
//!   revocation lists.
//! - [`head`] and `gate`: the upgrade request's head read before the upgrade (so a password
//!   is checked off the runtime), and the CSMS's budgets (handshakes, sessions, per address,
//!   one live connection per station).
//! - [`server`]: the CSMS listener (`/ocpp/{chargePointId}`, subprotocol negotiation).
//! - [`client`]: a small charge-point client (simulated chargers, benchmarks).

pub mod auth;
pub mod client;
pub mod connection;
pub mod credentials;
pub mod crl;
pub mod frame;
mod gate;
pub mod head;
pub mod messages;
pub mod schema;
pub mod server;
pub mod setpoint;
pub mod tls;
mod version;

pub use client::{connect, ClientConfig, ConnectError};
pub use connection::{
    serve_calls, CallError, CallHandler, Connection, DisconnectReason, IncomingCall, RpcConfig,
};
pub use server::{ListenerConfig, Security, Server, ServerConfig, ServerEvent, Session};
pub use version::{OcppVersion, UnsupportedSubprotocol};
