//! gridvisor-cluster-node's integration tests: one binary (see Cargo.toml), one module per
//! file.

mod plan_props;
mod sim_cluster;
