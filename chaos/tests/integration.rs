//! The integration tests of this crate, built as one binary: each file of tests/ is a
//! module here. One binary links and instantiates the dependencies once, where one per
//! file did it 3 times (CI builds them in release on two cores).

mod arrivals;
mod checkers;
mod determinism;
mod droop_checker;
mod relay;
mod scenarios;
