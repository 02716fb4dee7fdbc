//! linuxptp's management interface: IEEE 1588 management messages over ptp4l's Unix datagram
//! socket (`uds_address`, default `/var/run/ptp4l`), as `pmc -u -b 0` speaks them.
//!
//! - [`codec`]: GET requests and their answers (TIME_STATUS_NP, PORT_DATA_SET,
//!   CURRENT_DATA_SET, management error status), strict, with typed errors; unit-tested on
//!   bytes captured from a real ptp4l 3.1.1 (`captures.txt`).
//! - [`client`]: [`PtpClient`], a bound datagram socket of its own, one request at a time,
//!   each with a named timeout.
//!
//! It knows nothing of what the readings mean for a site: the node's clock source judges
//! them (gridvisor-actors, `clock_source`).

pub mod client;
pub mod codec;

pub use client::{
    ClientOptions, PtpClient, PtpError, DEFAULT_REQUEST_TIMEOUT, DEFAULT_UDS_ADDRESS,
};
pub use codec::{
    Answer, Body, ClockIdentity, CurrentDataSet, DecodeError, ManagementId, PortDataSet,
    PortIdentity, PortState, TimeStatusNp,
};
