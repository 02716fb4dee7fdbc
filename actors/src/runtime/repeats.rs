//! A warning that repeats, said once per window with how often it happened.
//!
//! An offline charger fails its setpoint on every dispatch cycle: 1,000 of them at a 500 ms
//! cycle wrote 2,000 warnings a second, and the one line that mattered scrolled away. Each
//! source (a link, say) keeps a [`Repeats`]: the first occurrence is said at once, the rest
//! of its window are counted, and the first occurrence after the window says how many there
//! were ("×240 in the last 60 s"). The metrics keep the exact numbers; the log keeps the
//! news. Time is an argument, so the rule is tested without a clock.

use std::time::Duration;

/// How long a source stays quiet after it said something (one line per source per window).
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// One source's repeated warning.
#[derive(Debug, Clone, Copy, Default)]
pub struct Repeats {
    /// When the last said occurrence was said (None: never).
    said_at: Option<Duration>,
    /// Occurrences since then that were not said.
    quiet: u64,
}

/// What to do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    /// Say it; `since` occurrences were kept quiet before it (within the window before).
    Now {
        /// Occurrences not said since the last said one.
        since: u64,
    },
    /// Count it only.
    Quiet,
}

impl Repeats {
    /// One more occurrence at `now`.
    pub fn note(&mut self, now: Duration) -> Say {
        let due = self
            .said_at
            .is_none_or(|at| now.saturating_sub(at) >= REPEAT_WINDOW);
        if !due {
            self.quiet += 1;
            return Say::Quiet;
        }
        let since = std::mem::take(&mut self.quiet);
        self.said_at = Some(now);
        Say::Now { since }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_is_said_the_rest_of_the_window_counted_and_told_with_the_next() {
        let mut r = Repeats::default();
        assert_eq!(r.note(Duration::ZERO), Say::Now { since: 0 });
        for t in 1..60 {
            assert_eq!(r.note(t * S), Say::Quiet, "at {t} s");
        }
        assert_eq!(r.note(60 * S), Say::Now { since: 59 });
        assert_eq!(r.note(61 * S), Say::Quiet);
        // A quiet spell: the next one is said at once, with the one kept back.
        assert_eq!(r.note(500 * S), Say::Now { since: 1 });
    }

    #[test]
    fn a_clock_that_steps_back_keeps_the_source_quiet_not_loud() {
        let mut r = Repeats::default();
        assert_eq!(r.note(100 * S), Say::Now { since: 0 });
        assert_eq!(r.note(10 * S), Say::Quiet);
    }
}
