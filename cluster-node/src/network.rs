//! The transport seam: every message between nodes goes through one [`Network`] object.
//!
//! The runtime sends [`Wire`] messages through the trait and receives them as
//! [`Inbound`]s on the channel it was started with ([`crate::Wiring`]). Two implementations:
//! gridvisor-cluster's mutual-TLS [`Transport`] (real processes), and [`crate::simnet`]'s
//! simulated network (seeded delay, loss, duplication, reordering and partitions, on tokio's
//! clock), for nodes run in one process.

use std::collections::BTreeSet;

use gridvisor_cluster::transport::{SendError, Transport};

use crate::Wire;

/// Node-to-node messages, as the runtime uses them.
pub trait Network: Send + Sync + 'static {
    /// Queue `msg` for `to`; never blocks. `NotConnected` when there is no link now
    /// (nothing is queued for later), `QueueFull` at the link's bound.
    fn send(&self, to: &str, msg: Wire) -> Result<(), SendError>;
    /// The peers with a link up now.
    fn connected(&self) -> BTreeSet<String>;
    /// Close every link; later sends fail.
    fn shutdown(&self);
}

impl Network for Transport<Wire> {
    fn send(&self, to: &str, msg: Wire) -> Result<(), SendError> {
        Transport::send(self, to, msg)
    }

    fn connected(&self) -> BTreeSet<String> {
        Transport::connected(self)
    }

    fn shutdown(&self) {
        Transport::shutdown(self)
    }
}
