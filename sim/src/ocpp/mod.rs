//! Simulated OCPP charge points with vehicles behind them, speaking OCPP 2.1 (or 2.0.1) to a
//! real CSMS through `gridvisor_transports::ocpp::client`, plus the load engine of
//! `gridvisor bench ocpp`.
//!
//! One idea per module:
//! - [`vehicle`]: the vehicle's battery and the charger's energy register, pure step functions;
//! - [`profile`]: installed charging profiles (keyed by id, leases by `validTo`, 2.1 offline
//!   durations) and the command they give at a simulated instant;
//! - [`state`]: the state the OCPP side and the physics share, and the pure choice of the
//!   target power (profile, default limit online, offline limit offline);
//! - [`fault`]: run-time fault injection (drop, hang, reject, bad value, slow);
//! - [`reports`]: the messages the charge point sends, built from its state;
//! - [`answers`]: how it answers the CSMS (profiles, variables incl. the applied-profile
//!   read-back, reset, remote start and stop, TriggerMessage, GetChargingProfiles);
//! - [`charge_point`]: the running charge point: connection task, reconnect with backoff,
//!   heartbeats and meter values, plug-in / unplug, faults, injectable physics time;
//! - [`arrivals`]: drivers known by token arriving at random free chargers over an hour
//!   (seeded), with their EV's needs;
//! - [`load`]: N concurrent clients against one CSMS, latency and memory per connection.
//!
//! Invariants kept across modules: the physics only advance through an explicit `dt`; the
//! charger never stops on a lost connection (it falls back to its offline limit and
//! reconnects); every limit (queues, delays, counts) is a named constant or config field.

pub mod answers;
pub mod arrivals;
pub mod charge_point;
pub mod fault;
pub mod load;
pub mod profile;
pub mod reports;
pub mod state;
pub mod vehicle;

pub use charge_point::{
    ChargePoint, ChargePointConfig, ChargePointEvent, CommandError, ConfigError,
};
pub use fault::{BadValue, Fault};
pub use load::{LoadConfig, LoadError, LoadReport};
pub use vehicle::{EnergyRegister, EvNeeds, Vehicle};
