//! The admin API's limit on actor kills, so that no client can take the node's root
//! supervisor past its restart intensity through the API.
//!
//! Two sliding windows of [`KILL_WINDOW`] (the root's restart period): at most
//! [`ROOT_CHILD_KILLS_PER_WINDOW`] kills of the root's own children (`node/<name>`: each
//! counts toward the root's intensity, [`ROOT_MAX_RESTARTS`]), and at most
//! [`KILLS_PER_WINDOW`] kills in all (deeper kills reach the root only through a subtree's
//! supervisor giving up, which takes more than ten kills of one subtree each). Only kills that
//! happened count: a refused one (404, 409) costs nothing. Pure: time is an argument.

use std::collections::VecDeque;
use std::time::Duration;

use gridvisor_actors::runtime::{ROOT_MAX_RESTARTS, ROOT_RESTART_PERIOD};

/// The windows' length: the root supervisor's restart period.
pub const KILL_WINDOW: Duration = ROOT_RESTART_PERIOD;
/// Kills of the root's children per window: half the root's intensity.
pub const ROOT_CHILD_KILLS_PER_WINDOW: usize = (ROOT_MAX_RESTARTS / 2) as usize;
/// Kills of any actor per window (a kill storm past one segment supervisor's intensity of 10
/// fits; a hundred segment give-ups, the segments supervisor's, do not).
pub const KILLS_PER_WINDOW: usize = 30;

/// The kills of the last window.
#[derive(Debug, Default)]
pub struct KillLimiter {
    all: VecDeque<Duration>,
    root_children: VecDeque<Duration>,
}

/// Whether `path` is a child of the root (`node/transports`).
fn root_child(path: &str) -> bool {
    path.matches('/').count() == 1
}

impl KillLimiter {
    /// None when a kill of `path` at `now` is allowed, else how long until one is.
    pub fn check(&mut self, path: &str, now: Duration) -> Option<Duration> {
        for q in [&mut self.all, &mut self.root_children] {
            while q
                .front()
                .is_some_and(|t| now.saturating_sub(*t) >= KILL_WINDOW)
            {
                q.pop_front();
            }
        }
        let full = |q: &VecDeque<Duration>, max: usize| {
            (q.len() >= max).then(|| {
                q.front()
                    .map_or(KILL_WINDOW, |t| KILL_WINDOW - now.saturating_sub(*t))
            })
        };
        let root = if root_child(path) {
            full(&self.root_children, ROOT_CHILD_KILLS_PER_WINDOW)
        } else {
            None
        };
        root.or_else(|| full(&self.all, KILLS_PER_WINDOW))
    }

    /// Count a kill of `path` that happened at `now`.
    pub fn record(&mut self, path: &str, now: Duration) {
        self.all.push_back(now);
        if root_child(path) {
            self.root_children.push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_children_get_half_the_roots_intensity_per_window() {
        let mut l = KillLimiter::default();
        let ms = Duration::from_millis;
        for i in 0..ROOT_CHILD_KILLS_PER_WINDOW as u64 {
            assert_eq!(l.check("node/transports", ms(i)), None);
            l.record("node/transports", ms(i));
        }
        let wait = l.check("node/transports", ms(100)).expect("limited");
        assert_eq!(wait, KILL_WINDOW - ms(100));
        assert!(ROOT_CHILD_KILLS_PER_WINDOW < ROOT_MAX_RESTARTS as usize);
        assert_eq!(
            l.check("node/segments/tx-1/safety", ms(100)),
            None,
            "deeper kills still go"
        );
        assert_eq!(
            l.check("node/transports", KILL_WINDOW),
            None,
            "the first left the window"
        );
    }

    #[test]
    fn all_kills_are_capped_per_window() {
        let mut l = KillLimiter::default();
        let path = "node/segments/tx-1/dispatcher";
        for i in 0..KILLS_PER_WINDOW as u64 {
            assert_eq!(l.check(path, Duration::from_millis(i)), None);
            l.record(path, Duration::from_millis(i));
        }
        assert!(l.check(path, Duration::from_secs(5)).is_some());
        assert!(l.check("node/site", Duration::from_secs(5)).is_some());
        assert_eq!(
            l.check(
                path,
                KILL_WINDOW + Duration::from_millis(KILLS_PER_WINDOW as u64)
            ),
            None
        );
    }
}
