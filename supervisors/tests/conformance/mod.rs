//! The conformance suite of `gridvisor-supervisors`, modelled on OTP's `supervisor_SUITE`:
//! every strategy, restart type, normal vs abnormal exit, intensity and escalation, start
//! failure, shutdown order and limits, nested supervisors, dynamic children, the OTP API,
//! hooks, backoff, the registry and metrics.
//!
//! Every test drives the real supervisor through its public API with real ractor actors,
//! using one harness (`tests/harness.rs`): nothing sleeps to "let things settle", every wait
//! is on an event and has a limit.

mod api;
mod backoff;
mod dynamic;
mod hooks;
mod intensity;
mod registry_metrics;
mod restart_types;
mod start_stop;
mod strategies;
