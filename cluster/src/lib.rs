//! gridvisor's cluster, its pure core: who owns which transformer segment, and when a node
//! may drive one.
//!
//! - [`shard`]: the shard map by rendezvous hashing over the committed members. Every node
//!   computes the same map from the same member list; a member that leaves moves only its
//!   own segments, one that joins takes about `1/n` of them.
//! - [`lease`]: majority leases. A node drives its segments only while a majority confirmed
//!   its lease; it goes to ChargeOnly as soon as that confirmation is older than
//!   [`lease::LeaseConfig::charge_only_after`] and stops at the lease's end; another node takes
//!   a segment over only when a majority's promises to the old owner have run out. At no
//!   moment do two nodes drive one segment, whatever the delays, losses, partitions and clock
//!   rates within the configured drift bound (`tests/lease_sim.rs` checks it).
//!
//! Nothing here does I/O or reads a clock: time is an argument, so the same inputs give the
//! same decisions (the chaos runner and the tests replay them). The transport (ractor_cluster
//! over mutual TLS), the committed membership (openraft) and checkpoint replication build on
//! these pieces.

#![deny(missing_docs)]

pub mod certs;
pub mod handshake;
pub mod lease;
pub mod membership;
pub mod shard;
pub mod tls;
pub mod transport;
