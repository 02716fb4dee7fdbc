//! Devices over their real protocols: the [`crate::device`] IO traits implemented on
//! `gridvisor-transports`.
//!
//! - [`modbus`]: inverters and meters over SunSpec Modbus TCP;
//! - [`mqtt`]: telemetry export to an MQTT broker;
//! - [`ocpp`]: chargers over OCPP 2.0.1 / 2.1, with the CSMS that accepts them;
//! - [`relay`]: a segment's trip relay behind a Modbus I/O module's coil, and how the safety
//!   actor drives it.

pub mod modbus;
pub mod modbus_profile;
pub mod mqtt;
pub mod ocpp;
pub mod openadr;
pub mod relay;
