//! Modbus TCP and SunSpec.
//!
//! - [`client`]: [`ModbusClient`], one connection per device on tokio-modbus, with per-request
//!   time-outs, reconnection with exponential back-off, a bound on requests in flight, typed
//!   exceptions and tuned sockets (TCP_NODELAY, keep-alive).
//! - [`sunspec`]: discovery, the model walk, typed decoders of models 1, 701, 704, 713 and
//!   201–204, encoders of the 704 active power controls, and a register image builder.
//! - [`profile`]: a plain register profile from configuration, for devices without SunSpec.
//! - [`regs`]: multi-register values (word order) and register writes.
//! - [`error`]: the typed errors.

pub mod client;
pub mod error;
pub mod profile;
pub mod regs;
pub mod sunspec;

pub use client::{ClientConfig, ClientStats, Keepalive, ModbusClient};
pub use error::{DecodeError, EncodeError, ExceptionCode, ModbusError, Operation};
pub use profile::RegisterProfile;
pub use regs::{RegisterWrite, WordOrder};
