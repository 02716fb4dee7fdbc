//! The injectable clock every piece of domain logic reads.
//!
//! Safety logic (the ladder's hold times, setpoint leases, the keep-alive watchdog, SoC
//! integration) never reads the wall clock directly: it reads a [`Clock`]. In production the
//! clock is tokio's monotonic clock, so `tokio::time::pause()` in a test (or a chaos run)
//! makes the whole node run faster than real time, deterministically, with timers and
//! readings agreeing. A [`Clock::manual`] clock is advanced by hand for pure logic tests.
//!
//! Invariant: a clock never goes backwards; readings are durations since the clock's epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A monotonic clock: time since its epoch.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Tokio's clock (paused and advanced by tokio's test utilities when a test asks).
    Tokio {
        /// The instant this clock reads as zero.
        epoch: tokio::time::Instant,
    },
    /// A clock advanced by hand, in nanoseconds.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// Tokio's clock, with its epoch now.
    pub fn tokio() -> Self {
        Clock::Tokio {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// A manual clock at zero.
    pub fn manual() -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(0)))
    }

    /// Time since the epoch.
    pub fn now(&self) -> Duration {
        match self {
            Clock::Tokio { epoch } => epoch.elapsed(),
            Clock::Manual(ns) => Duration::from_nanos(ns.load(Ordering::Acquire)),
        }
    }

    /// Seconds since the epoch, as the domain models count them.
    pub fn now_s(&self) -> f64 {
        self.now().as_secs_f64()
    }

    /// Advance a manual clock by `by` (saturating); a tokio clock is advanced by tokio
    /// (`tokio::time::advance`), so this returns false for it.
    pub fn advance(&self, by: Duration) -> bool {
        match self {
            Clock::Tokio { .. } => false,
            Clock::Manual(ns) => {
                let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
                let _ = ns.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_add(by))
                });
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = Clock::manual();
        assert_eq!(c.now(), Duration::ZERO);
        assert!(c.advance(Duration::from_millis(1500)));
        assert_eq!(c.now(), Duration::from_millis(1500));
        assert!((c.now_s() - 1.5).abs() < 1e-12);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let c = Clock::tokio();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(c.now() >= Duration::from_secs(3600));
        assert!(!c.advance(Duration::from_secs(1)));
    }
}
