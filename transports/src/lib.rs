//! gridvisor's wire protocols, independent of the V2G domain:
//!
//! - [`modbus`]: a Modbus TCP client (tokio-modbus) with per-request timeouts, reconnect with
//!   backoff and typed exceptions, and SunSpec model discovery and decoding.
//! - [`ocpp`]: an OCPP 2.0.1 / 2.1 CSMS over WebSocket (tokio-tungstenite) with the security
//!   profiles 1–3 (rustls).
//! - [`envelope`]: versioned rmp-serde frames for messages between gridvisor nodes.
//! - [`ptp`]: a client of linuxptp's management socket (what `pmc -u` speaks): the PTP
//!   clock's offset, port state and grandmaster.
//!
//! Every decoder returns a typed error naming what was wrong; none panics on bad input.
#![deny(missing_docs)]

pub mod envelope;
pub mod modbus;
pub mod ocpp;
pub mod pem;
pub mod ptp;
