//! loom models of the registry's shared state: its table and its change signal.
//!
//! Run with `RUSTFLAGS="--cfg gridvisor_loom" cargo test -p gridvisor-supervisors --test
//! loom_registry --release` (a plain `--cfg loom` breaks tokio). Under that cfg the table is
//! built from loom's primitives, so loom explores the interleavings of the real protocol code.
#![cfg(gridvisor_loom)]

use std::sync::Arc;

use gridvisor_supervisors::registry::{Lookup, Table};
use loom::thread;

/// Explicit bound on preemptions per execution: enough for every model here to reach the
/// interleavings that matter, small enough to finish in seconds.
const PREEMPTIONS: usize = 3;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(PREEMPTIONS);
    b.check(f);
}

/// A waiter never misses a registration that happens concurrently with its check: if it
/// did, `wait_running_blocking` would block forever and loom would report a deadlock.
#[test]
fn waiter_sees_a_concurrent_registration() {
    model(|| {
        let t = Arc::new(Table::<u32>::new());
        let t2 = t.clone();
        let writer = thread::spawn(move || t2.register("a/b".into(), 7));
        let (h, inc) = t.wait_running_blocking("a/b", 0);
        assert_eq!(h, 7);
        let registered = writer.join().unwrap();
        assert_eq!(inc, registered);
    });
}

/// A stale incarnation's cleanup (the supervisor marking the old one restarting, or
/// unregistering it) never removes or hides the newer incarnation, in any order.
#[test]
fn stale_cleanup_never_hides_the_new_incarnation() {
    model(|| {
        let t = Arc::new(Table::<u32>::new());
        let old = t.register("p".into(), 1);
        let t1 = t.clone();
        let t2 = t.clone();
        let restarter = thread::spawn(move || t1.register("p".into(), 2));
        let cleaner = thread::spawn(move || {
            t2.mark_restarting("p", old);
            t2.unregister("p", old);
        });
        let new = restarter.join().unwrap();
        cleaner.join().unwrap();
        assert!(new > old);
        // Either the cleanup ran first (and the new registration replaced the emptied slot)
        // or after (and found a newer incarnation): the new one is running in both cases.
        assert_eq!(t.lookup("p"), Lookup::Running(2, new));
    });
}

/// A restart cycle (mark restarting, register the next incarnation) with a concurrent waiter
/// asking for an incarnation newer than the old one: the waiter gets exactly the new one.
#[test]
fn waiter_for_a_newer_incarnation_gets_the_restarted_one() {
    model(|| {
        let t = Arc::new(Table::<u32>::new());
        let old = t.register("s".into(), 1);
        let t1 = t.clone();
        let supervisor = thread::spawn(move || {
            assert!(t1.mark_restarting("s", old));
            t1.register("s".into(), 2)
        });
        let (h, inc) = t.wait_running_blocking("s", old);
        let new = supervisor.join().unwrap();
        assert_eq!((h, inc), (2, new));
    });
}

/// Two concurrent registrations of one path: numbers are unique and the newer one wins.
#[test]
fn concurrent_registrations_the_newest_wins() {
    model(|| {
        let t = Arc::new(Table::<u32>::new());
        let t1 = t.clone();
        let t2 = t.clone();
        let a = thread::spawn(move || t1.register("x".into(), 10));
        let b = thread::spawn(move || t2.register("x".into(), 20));
        let (ia, ib) = (a.join().unwrap(), b.join().unwrap());
        assert_ne!(ia, ib, "incarnation numbers are unique");
        // "Larger than any earlier one": the slot must hold the larger number with its own
        // handle. (This model found a real race: numbers were once taken before the entry
        // was locked, so the older incarnation could be stored last.)
        let newest = if ia > ib { (10, ia) } else { (20, ib) };
        assert_eq!(t.lookup("x"), Lookup::Running(newest.0, newest.1));
        assert_eq!(t.len(), 1);
    });
}

/// An unregister that races a waiter leaves the waiter waiting (not woken with a stale
/// answer); the next registration wakes it.
#[test]
fn waiter_survives_an_unregister_and_wakes_on_the_next_start() {
    model(|| {
        let t = Arc::new(Table::<u32>::new());
        let first = t.register("w".into(), 1);
        let t1 = t.clone();
        let churn = thread::spawn(move || {
            t1.unregister("w", first);
            t1.register("w".into(), 3)
        });
        let (h, inc) = t.wait_running_blocking("w", first);
        let last = churn.join().unwrap();
        assert_eq!((h, inc), (3, last));
    });
}
