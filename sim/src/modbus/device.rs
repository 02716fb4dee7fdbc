//! [`SimDevice`]: what the Modbus server needs of a simulated device.
//!
//! The server holds the device behind a lock and calls these methods with the lock held and
//! without awaiting, so a request always sees one consistent image: the image is rebuilt
//! whole by [`SimDevice::step`] and [`SimDevice::write`], never half-updated.

use std::time::Duration;

use gridvisor_transports::modbus::{sunspec::RegisterImage, ExceptionCode};

use super::SimError;

/// A device whose registers a [`SimServer`](super::SimServer) serves.
pub trait SimDevice: Send + 'static {
    /// The registers as the device holds them now.
    fn image(&self) -> &RegisterImage;

    /// A write of holding registers (function 0x06 or 0x10) at `addr`. Either all of it is
    /// applied or nothing is, and the answer is the Modbus exception to send:
    /// `IllegalDataAddress` for a register outside the map or not writable,
    /// `IllegalDataValue` for a value the device refuses.
    fn write(&mut self, addr: u16, values: &[u16]) -> Result<(), ExceptionCode>;

    /// Advances the physics by `dt` of simulated time and refreshes the image.
    fn step(&mut self, dt: Duration) -> Result<(), SimError>;
}
