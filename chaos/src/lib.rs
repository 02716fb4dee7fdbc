//! Chaos-injection runs (issue 7): seeded scenarios, fault injectors, invariants checked on
//! every step, and reports.
//!
//! The in-process mode runs the real node — the whole supervision tree of
//! `gridvisor_actors::runtime::Node` — against the simulated devices, on a paused
//! current-thread tokio runtime, so that a scenario and a seed give the same history byte
//! for byte (TigerBeetle's simulator is the anchor). Cluster faults (killing a node, a
//! partition, delayed or dropped links between nodes) belong to the multi-process mode in
//! [`cluster`]: real `gridvisor run --cluster` processes behind in-tree link proxies, on the
//! real clock.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`arrivals`] | the vehicles-arriving workload: drivers by token, their contracts, seeded visits to free chargers |
//! | [`scenario`] | the scenario file (topology, workload, faults, bounds, seed), errors by file, line and field |
//! | [`devices`] | fault-injecting device connections: exceptions, timeouts, garbage, panics, extra load; OCPP disconnects and slow peers |
//! | [`invariants`] | the samples the runner takes and the checkers, each testable alone |
//! | [`droop`] | the frequency-response checker (sign, size and timing of the droop) |
//! | [`runner`] | the deterministic run: schedule, steps, sampling, history |
//! | [`report`] | JSON and HTML reports with the timeline plot and the replay command |
//! | [`sweep`] | seed ranges, the progress bar, quiet injected panics |
#![deny(missing_docs)]

pub mod arrivals;
pub mod cluster;
pub mod devices;
pub mod droop;
pub mod invariants;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sweep;

pub use report::{html, RunReport};
pub use runner::{replay_command, run, History, RunError, RunOutcome};
pub use scenario::{load, Scenario, ScenarioErrors};
