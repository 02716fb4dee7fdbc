//! # gridvisor-actors
//!
//! The vehicle-to-grid domain built on `gridvisor-supervisors`: the site topology, the
//! safe-state ladder, dispatch and closed-loop control, idempotent setpoints and their
//! checkpoints, and the supervised actors (segments, their safety supervisors, meters,
//! inverters, dispatchers, chargers, vehicle sessions) that run them.
#![deny(missing_docs)]

pub mod authorization;
pub mod checkpoint;
pub mod clock;
pub mod clock_source;
pub mod config;
pub mod control;
pub mod device;
pub mod dispatch;
pub mod droop;
pub mod flexibility;
pub mod io;
pub mod ladder;
pub mod runtime;
pub mod session;
pub mod setpoint;
pub mod thermal;

/// Lock a mutex whose data stays consistent between statements (every lock in this crate):
/// a poisoned lock only means a panic elsewhere, so the data is used as it is rather than
/// turning one panic into many.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub use ladder::{Fault, FaultKey, LadderConfig, SafeState, SafeStateLadder, Transition};
