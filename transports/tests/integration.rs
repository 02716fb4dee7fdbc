//! The integration tests of this crate, built as one binary: each file of tests/ is a
//! module here. One binary links and instantiates the dependencies once, where one per
//! file did it 10 times (CI builds them in release on two cores).

mod modbus_support;
mod ocpp_support;

mod envelope_fuzz;
mod modbus_client;
mod modbus_fuzz;
mod modbus_interop;
mod modbus_profile;
mod modbus_props;
mod modbus_sunspec_tables;
mod ocpp_frame_fuzz;
mod ocpp_interop;
mod ocpp_rust_client;
mod ocpp_security;
mod ptp_client;
mod ptp_codec_fuzz;
