//! Devices over their real protocols: the [`crate::device`] IO traits implemented on
//! `gridvisor-transports`.
//!
//! - [`modbus`]: inverters and meters over SunSpec Modbus TCP;
//! - [`mqtt`]: telemetry export to an MQTT broker;
//! - [`ocpp`]: chargers over OCPP 2.0.1 / 2.1, with the CSMS that accepts them.

pub mod modbus;
pub mod modbus_profile;
pub mod mqtt;
pub mod ocpp;
