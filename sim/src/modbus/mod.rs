//! Simulated SunSpec Modbus TCP devices: inverters and meters with simple physics, served
//! over real sockets, with fault injection for chaos runs.
//!
//! - [`grid`]: the grid model the devices share (nominal V and Hz with seeded noise, islanding).
//! - [`inverter`]: an inverter's physics as a pure step function (ramp toward the 704
//!   setpoint and limit, reversion timers, temperature, SoC).
//! - [`inverter_device`]: the inverter as a register map (models 1, 701, 704, 713) and the
//!   decoding of 704 writes into its controls.
//! - [`meter`]: a meter (models 1 and 203) of a power source you pass in.
//! - [`device`]: [`SimDevice`], what the server needs of a device.
//! - [`fault`]: [`Fault`], how a device misbehaves on purpose.
//! - [`server`]: [`SimServer`], a Modbus TCP server on tokio-modbus serving one device, and
//!   its [`ServerHandle`].
//! - [`relay`]: a trip relay's I/O module (coils), readable and told to fail
//!   ([`start_relay`], [`RelayHandle`]).
//!
//! The register maps are built with `gridvisor_transports`' [`SunSpecMapBuilder`] and read
//! back in the tests with its client and decoders, so the two sides check each other.
//!
//! [`SunSpecMapBuilder`]: gridvisor_transports::modbus::sunspec::SunSpecMapBuilder

pub mod device;
pub mod fault;
pub mod grid;
pub mod inverter;
pub mod inverter_device;
pub mod meter;
pub mod relay;
pub mod server;

pub use device::SimDevice;
pub use fault::{BadValue, Fault};
pub use grid::{Grid, GridModel, GridSample};
pub use inverter::{InverterParams, InverterState};
pub use inverter_device::InverterSim;
pub use meter::{MeterParams, MeterSim, MeterState, PowerSource};
pub use relay::{start_relay, RelayHandle, RELAY_COILS};
pub use server::{ServerConfig, ServerHandle, SimServer};

use gridvisor_transports::modbus::EncodeError;

/// What can go wrong when building, stepping or serving a simulated device.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A device parameter is outside what the simulation accepts.
    #[error("device configuration: {field}: {detail}")]
    Config {
        /// The parameter.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The device's state does not fit its register map (a parameter allowed a value the
    /// map's scale factors cannot hold).
    #[error("register map: {0}")]
    Encode(#[from] EncodeError),
    /// A fault names a point the device's map does not have.
    #[error("fault: no point {point} in model {model} of this device")]
    UnknownPoint {
        /// The model id.
        model: u16,
        /// The point name.
        point: String,
    },
    /// The server's socket could not be set up.
    #[error("server socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server task has ended (stopped, or failed).
    #[error("the server has stopped")]
    Stopped,
}
