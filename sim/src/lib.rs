//! A simulated V2G site that speaks the real protocols, for the embedded demo, tests, chaos
//! runs and benchmarks:
//!
//! - [`modbus`]: inverters and meters as Modbus TCP servers with a SunSpec register map and
//!   simple physics (power follows the setpoint with a ramp, temperature follows power, grid
//!   voltage and frequency from a grid model that can island).
//! - [`ocpp`]: charge points as OCPP 2.0.1 / 2.1 clients with vehicles behind them.
//!
//! Every device can be told to fail (drop, hang, exception, bad value) for chaos runs.
#![deny(missing_docs)]

pub mod modbus;
pub mod ocpp;
