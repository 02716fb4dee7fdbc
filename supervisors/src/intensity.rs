//! Restart intensity (when a supervisor gives up) and backoff (how long it waits).
//!
//! OTP's rule: a supervisor that restarts children more than `max_restarts` times within any
//! `period` gives up, stops all its children and exits, and its own supervisor decides what
//! happens next. Each restart attempt counts, including one that fails to start.
//!
//! [`RestartWindow`] keeps the timestamps of recent restarts in a queue and drops expired ones
//! from the front, so recording a restart is amortised O(1) however many restarts the window
//! holds (OTP filters a list on every restart, which makes mass restarts superlinear).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// At most `max_restarts` restarts within `period` (OTP's `intensity` and `period`).
///
/// ```
/// use std::time::Duration;
/// use gridvisor_supervisors::{RestartIntensity, RestartWindow};
/// use tokio::time::Instant;
///
/// // OTP's default: a second restart within 5 s is one too many.
/// let mut window = RestartWindow::new(RestartIntensity::default());
/// let t0 = Instant::now();
/// assert!(window.record(t0));
/// assert!(!window.record(t0 + Duration::from_secs(1)));
///
/// // Three restarts a minute are allowed; the fourth within the minute is not.
/// let mut window = RestartWindow::new(RestartIntensity::new(3, Duration::from_secs(60)));
/// assert!((0..3).all(|i| window.record(t0 + Duration::from_secs(i))));
/// assert!(!window.record(t0 + Duration::from_secs(59)));
/// // Once the oldest restarts leave the window, restarts are allowed again.
/// let mut window = RestartWindow::new(RestartIntensity::new(1, Duration::from_secs(5)));
/// assert!(window.record(t0));
/// assert!(window.record(t0 + Duration::from_secs(6)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartIntensity {
    /// Restarts allowed within `period`; one more makes the supervisor give up.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl Default for RestartIntensity {
    /// OTP's default: 1 restart in 5 seconds.
    fn default() -> Self {
        RestartIntensity {
            max_restarts: 1,
            period: Duration::from_secs(5),
        }
    }
}

impl RestartIntensity {
    /// `max_restarts` within `period`.
    pub fn new(max_restarts: u32, period: Duration) -> Self {
        RestartIntensity {
            max_restarts,
            period,
        }
    }
}

/// The restarts a supervisor made recently, checked against its [`RestartIntensity`].
#[derive(Debug, Clone)]
pub struct RestartWindow {
    limit: RestartIntensity,
    recent: VecDeque<Instant>,
}

impl RestartWindow {
    /// An empty window with the given limit.
    pub fn new(limit: RestartIntensity) -> Self {
        RestartWindow {
            limit,
            recent: VecDeque::new(),
        }
    }

    /// Record a restart at `now`. Returns `false` when this restart exceeds the intensity:
    /// the supervisor must then give up instead of restarting.
    ///
    /// A restart at time `t` counts while `now - t <= period` (OTP's `inPeriod`).
    pub fn record(&mut self, now: Instant) -> bool {
        debug_assert!(
            self.recent.back().is_none_or(|last| *last <= now),
            "time went backwards"
        );
        while let Some(oldest) = self.recent.front() {
            if now.saturating_duration_since(*oldest) > self.limit.period {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        // Keep at most max_restarts + 1 entries: once over the limit the supervisor stops, so
        // older entries could never change a decision.
        let within = self.recent.len() as u64 <= u64::from(self.limit.max_restarts);
        if self.recent.len() as u64 > u64::from(self.limit.max_restarts) + 1 {
            self.recent.pop_front();
        }
        within
    }

    /// Restarts currently inside the window (as of the last `record`).
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// True when no restart is inside the window.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// The limit this window enforces.
    pub fn limit(&self) -> RestartIntensity {
        self.limit
    }
}

/// Exponential backoff with jitter between restarts of one child, with a cap.
///
/// The n-th consecutive restart (n = 0, 1, ...) waits `min(max, initial * multiplier^n)`, then
/// a random fraction of up to `jitter` of that is taken off, so that many devices that went
/// offline together do not come back in lock step. A child that stayed up for `reset_after`
/// starts again from `initial`.
///
/// ```
/// use std::time::Duration;
/// use gridvisor_supervisors::{Backoff, intensity::SplitMix64};
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2))
///     .with_jitter(0.0);
/// let mut rng = SplitMix64::new(7);
/// let delays: Vec<_> = (0..6).map(|n| backoff.delay(n, &mut rng).as_millis()).collect();
/// assert_eq!(delays, [100, 200, 400, 800, 1600, 2000]);
///
/// // With jitter, a delay is at most the jitter-free one and at least (1 - jitter) of it.
/// let jittered = backoff.with_jitter(0.5);
/// let d = jittered.delay(3, &mut rng);
/// assert!(d <= Duration::from_millis(800) && d >= Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth factor per consecutive restart (at least 1).
    pub multiplier: f64,
    /// Fraction (0..=1) of the delay that may be taken off at random.
    pub jitter: f64,
    /// Uptime after which the child counts as healthy and the delay resets.
    pub reset_after: Duration,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, 20 % jitter, reset after `max` of uptime.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.2,
            reset_after: max,
        }
    }

    /// Set the jitter fraction (clamped to 0..=1).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// The delay before consecutive restart number `attempt` (0-based), using `rng` for jitter.
    pub fn delay(&self, attempt: u32, rng: &mut SplitMix64) -> Duration {
        let base =
            self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let jitter = self.jitter.clamp(0.0, 1.0) * rng.next_f64();
        Duration::from_secs_f64(capped * (1.0 - jitter))
    }
}

/// A small deterministic random generator (SplitMix64) for jitter: the same seed gives the
/// same delays, so simulations and tests replay exactly.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otp_default_allows_one_restart_in_five_seconds() {
        let t0 = Instant::now();
        let mut w = RestartWindow::new(RestartIntensity::default());
        assert!(w.record(t0));
        assert!(
            !w.record(t0 + Duration::from_secs(5)),
            "5 s is still inside the period"
        );
        let mut w = RestartWindow::new(RestartIntensity::default());
        assert!(w.record(t0));
        assert!(
            w.record(t0 + Duration::from_millis(5001)),
            "the first restart expired"
        );
    }

    #[test]
    fn zero_intensity_never_restarts() {
        let mut w = RestartWindow::new(RestartIntensity::new(0, Duration::from_secs(1)));
        assert!(!w.record(Instant::now()));
    }

    #[test]
    fn window_stays_bounded() {
        let t0 = Instant::now();
        let mut w = RestartWindow::new(RestartIntensity::new(3, Duration::from_secs(1)));
        for i in 0..1000u64 {
            w.record(t0 + Duration::from_secs(2 * i));
            assert!(w.len() <= 4);
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters_down_only() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2));
        let mut rng = SplitMix64::new(7);
        let mut prev_cap = Duration::ZERO;
        for attempt in 0..10 {
            let d = b.delay(attempt, &mut rng);
            let cap = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_secs(2));
            assert!(d <= cap, "attempt {attempt}: {d:?} > {cap:?}");
            assert!(
                d >= cap.mul_f64(0.8) - Duration::from_micros(1),
                "jitter took too much"
            );
            assert!(cap >= prev_cap);
            prev_cap = cap;
        }
        let same = |seed| {
            let mut r = SplitMix64::new(seed);
            (0..5).map(|a| b.delay(a, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(same(42), same(42), "same seed, same delays");
    }
}
