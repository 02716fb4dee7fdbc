//! The multi-process mode (issue 7, cluster faults): real `gridvisor run --cluster` processes,
//! every link between two nodes through an in-tree proxy that can delay, blackhole or drop
//! it; nodes killed with SIGKILL and started again; a seeded workload of site requests; the
//! cluster's invariants checked from every node's `/api/cluster` (sampled every
//! [`run::SAMPLE_EVERY`]) and from the nodes' JSON logs.
//!
//! Unlike the in-process mode this is not deterministic: the nodes run on the wall clock
//! and the operating system schedules them. The seed fixes the workload (which node gets
//! each request, its target); the faults come at the scenario's times. A run's report says
//! what happened; the replay command runs the same scenario and seed again.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`scenario`] | the scenario file (`[cluster]`, `[bounds]`, `[workload]`, `[[faults]]`), errors by file and field |
//! | [`proxy`] | the link proxy: one TCP forwarder per ordered pair of nodes, [`proxy::LinkFault`] |
//! | [`check`] | the invariants, pure functions of the samples and the logs |
//! | [`run`] | the run: certificates, cluster files, processes, schedule, workload, samples |
//! | [`report`] | JSON and HTML reports |

pub mod check;
pub mod proxy;
pub mod report;
pub mod run;
pub mod scenario;

pub use run::{run, ClusterReport};
pub use scenario::{is_cluster_scenario, load, ClusterScenario};
