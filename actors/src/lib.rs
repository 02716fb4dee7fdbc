//! # gridvisor-actors
//!
//! The vehicle-to-grid domain built on `gridvisor-supervisors`. This crate is being built in
//! the order of issue 4; today it holds the safe-state ladder ([`ladder`]): the pure,
//! clock-injected decision of how safe a transformer segment must be, which the segment's
//! safety supervisor will drive.
#![deny(missing_docs)]

pub mod ladder;

pub use ladder::{Fault, FaultKey, LadderConfig, SafeState, SafeStateLadder, Transition};
