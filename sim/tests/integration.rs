//! The integration tests of this crate, built as one binary: each file of tests/ is a
//! module here. One binary links and instantiates the dependencies once, where one per
//! file did it 5 times (CI builds them in release on two cores).

mod modbus_support;
#[path = "../../transports/tests/ocpp_support/mod.rs"]
mod ocpp_support;

mod modbus_devices;
mod modbus_faults;
mod modbus_interop;
mod ocpp_actions;
mod ocpp_arrivals;
mod ocpp_charge_point;
mod ocpp_load;
