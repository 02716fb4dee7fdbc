//! The integration tests of this crate, built as one binary: each file of tests/ is a
//! module here. One binary links and instantiates the dependencies once, where one per
//! file did it 11 times (CI builds them in release on two cores).

mod common;

mod droop;
mod ev_identity;
mod fault_rows;
mod grid_safety;
mod handoff;
mod kill_restart;
mod live_hooks;
mod metrics_exposition;
mod modbus_devices;
mod modbus_profile_devices;
mod mqtt_export;
mod must_charge;
mod node_lifecycle;
mod ocpp_actions;
mod ocpp_node;
mod ocpp_node_interop;
mod openadr_messages;
mod openadr_vtn;
mod relay;
mod safety_path;
mod scheduled;
