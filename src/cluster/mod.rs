//! The binary's side of a cluster node: the runtime itself is the library
//! `gridvisor-cluster-node` (re-exported here); what stays in the binary is the HTTP
//! routing to owners ([`route`]), which answers the runtime's forwarded calls through
//! [`gridvisor_cluster_node::LocalApi`].

pub mod route;

pub use gridvisor_cluster_node::*;
