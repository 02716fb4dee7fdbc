//! The time rules of a grid request, pure (the wall clock is an argument): when it starts and
//! ends ([`resolve`]), and the target it asks for at a moment on its ramps ([`ramped`]).
//!
//! Times are Unix nanoseconds (i64) on the wall clock, because `start_at` and `end_at` are
//! RFC 3339 times and a request must keep its window across a node restart; integers, so that
//! the site's conversion to its own clock is exact (a paused test clock gives the same node
//! times in every run, whatever the wall clock reads).
//!
//! Ramps stay inside the window: from `start` the target moves from where the scope was
//! (`from_kw`) toward the request's target at `ramp_kw_per_s`, and it is back at `from_kw`
//! at `end`; a window too short for both ramps is a triangle that never reaches the target.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{GridRequest, RequestError, MAX_REQUEST_KW, MAX_REQUEST_S};

/// How far ahead a request may start, seconds (7 days: a week-ahead market award).
pub const MAX_SCHEDULE_AHEAD_S: f64 = 7.0 * 86_400.0;
/// The longest RFC 3339 time accepted, characters (a time with nanoseconds and an offset is
/// 35).
pub const MAX_TIME_CHARS: usize = 64;

/// Nanoseconds per second.
const NS: f64 = 1e9;

/// When a request holds and how it ramps, on the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Start, Unix ns (a start in the past is the moment the request was accepted).
    pub start_unix_ns: i64,
    /// End, Unix ns (after the start).
    pub end_unix_ns: i64,
    /// Ramp rate, kW/s (none: a step).
    pub ramp_kw_per_s: Option<f64>,
}

fn invalid(field: &str, message: String) -> RequestError {
    RequestError::Invalid {
        field: field.into(),
        message,
    }
}

/// Parse an RFC 3339 time of field `field` to Unix ns.
pub fn parse_time(field: &str, s: &str) -> Result<i64, RequestError> {
    if s.len() > MAX_TIME_CHARS {
        return Err(invalid(
            field,
            format!("longer than {MAX_TIME_CHARS} characters"),
        ));
    }
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| invalid(field, format!("{s:?} is not an RFC 3339 time: {e}")))?;
    i64::try_from(t.unix_timestamp_nanos())
        .map_err(|_| invalid(field, format!("{s:?} is out of range (1677..2262)")))
}

/// Unix ns as RFC 3339 (UTC); a time out of `time`'s range is shown as its nanoseconds.
pub fn format_time(unix_ns: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_ns} ns after the Unix epoch"))
}

/// The window of `r` accepted at `now_ns` (Unix ns): `start_at` (absent or past: now), then exactly
/// one of `end_at` and `duration_s`, and the ramp. Errors name the field.
pub fn resolve(r: &GridRequest, now_ns: i64) -> Result<Window, RequestError> {
    let start = match &r.start_at {
        Some(s) => parse_time("start_at", s)?.max(now_ns),
        None => now_ns,
    };
    let ahead_s = (start - now_ns) as f64 / NS;
    if ahead_s > MAX_SCHEDULE_AHEAD_S {
        return Err(invalid(
            "start_at",
            format!(
                "starts {ahead_s:.0} s from now, more than MAX_SCHEDULE_AHEAD_S = {MAX_SCHEDULE_AHEAD_S} s"
            ),
        ));
    }
    let end = match (&r.end_at, r.duration_s) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "duration_s",
                "give end_at or duration_s, not both".into(),
            ))
        }
        (None, None) => {
            return Err(invalid(
                "duration_s",
                "one of duration_s and end_at is required".into(),
            ))
        }
        (None, Some(d)) => {
            if !d.is_finite() || d <= 0.0 || d > MAX_REQUEST_S {
                return Err(invalid(
                    "duration_s",
                    format!("{d} is not within (0, {MAX_REQUEST_S}] s"),
                ));
            }
            start + (d * NS).round() as i64
        }
        (Some(e), None) => {
            let end = parse_time("end_at", e)?;
            if end <= start || (end - start) as f64 / NS > MAX_REQUEST_S {
                return Err(invalid(
                    "end_at",
                    format!(
                        "{e} must be after the start ({}) and at most {MAX_REQUEST_S} s after it",
                        format_time(start)
                    ),
                ));
            }
            end
        }
    };
    if let Some(k) = r.ramp_kw_per_s {
        if !k.is_finite() || k <= 0.0 || k > MAX_REQUEST_KW {
            return Err(invalid(
                "ramp_kw_per_s",
                format!("{k} is not within (0, {MAX_REQUEST_KW}] kW/s"),
            ));
        }
    }
    Ok(Window {
        start_unix_ns: start,
        end_unix_ns: end,
        ramp_kw_per_s: r.ramp_kw_per_s,
    })
}

/// The target at `now_s` of a request for `target_kw` that ramps from `from_kw` at `ramp`
/// kW/s from `ramp_start_s` and is back at `from_kw` at `end_s` (all on one clock). Without
/// a ramp it is `target_kw` throughout.
pub fn ramped(
    from_kw: f64,
    target_kw: f64,
    ramp: Option<f64>,
    ramp_start_s: f64,
    end_s: f64,
    now_s: f64,
) -> f64 {
    let Some(rate) = ramp else {
        return target_kw;
    };
    let gap = target_kw - from_kw;
    let up = rate * (now_s - ramp_start_s).max(0.0);
    let down = rate * (end_s - now_s).max(0.0);
    from_kw + gap.signum() * gap.abs().min(up).min(down)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Scope;

    fn req(start: Option<&str>, end: Option<&str>, d: Option<f64>) -> GridRequest {
        GridRequest {
            id: "r".into(),
            scope: Scope::Site,
            target_kw: -40.0,
            duration_s: d,
            start_at: start.map(Into::into),
            end_at: end.map(Into::into),
            ramp_kw_per_s: None,
        }
    }

    // 2026-12-08T00:00:00Z is 1_796_688_000 s after the Unix epoch.
    const T0: i64 = 1_796_688_000 * S;
    const S: i64 = 1_000_000_000;

    #[test]
    fn start_and_end_resolve_on_the_wall_clock() {
        let w = resolve(&req(Some("2026-12-08T00:10:00Z"), None, Some(60.0)), T0).unwrap();
        assert_eq!(
            (w.start_unix_ns, w.end_unix_ns),
            (T0 + 600 * S, T0 + 660 * S)
        );
        // An offset is honoured: 01:10+01:00 is 00:10Z.
        let w = resolve(
            &req(
                Some("2026-12-08T01:10:00+01:00"),
                Some("2026-12-08T00:20:00Z"),
                None,
            ),
            T0,
        )
        .unwrap();
        assert_eq!(
            (w.start_unix_ns, w.end_unix_ns),
            (T0 + 600 * S, T0 + 1200 * S)
        );
        // A past start is now.
        let w = resolve(&req(Some("2026-12-07T00:00:00Z"), None, Some(5.0)), T0).unwrap();
        assert_eq!((w.start_unix_ns, w.end_unix_ns), (T0, T0 + 5 * S));
        assert_eq!(format_time(T0 + 600 * S), "2026-12-08T00:10:00Z");
    }

    #[test]
    fn bad_windows_name_their_field() {
        let field = |r: GridRequest| match resolve(&r, T0) {
            Err(RequestError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(req(Some("tomorrow"), None, Some(1.0))), "start_at");
        assert_eq!(field(req(None, None, None)), "duration_s");
        assert_eq!(
            field(req(None, Some("2026-12-08T00:20:00Z"), Some(1.0))),
            "duration_s"
        );
        // Before the start, and more than a week ahead.
        assert_eq!(
            field(req(
                Some("2026-12-08T00:20:00Z"),
                Some("2026-12-08T00:10:00Z"),
                None
            )),
            "end_at"
        );
        assert_eq!(
            field(req(Some("2026-12-16T00:00:00Z"), None, Some(1.0))),
            "start_at"
        );
        let mut r = req(None, None, Some(10.0));
        r.ramp_kw_per_s = Some(0.0);
        assert_eq!(field(r), "ramp_kw_per_s");
    }

    #[test]
    fn ramps_stay_inside_the_window() {
        // From 10 kW to -40 kW at 5 kW/s over [100, 200]: the gap is 50 kW, 10 s of ramp.
        let at = |t| ramped(10.0, -40.0, Some(5.0), 100.0, 200.0, t);
        assert_eq!(at(100.0), 10.0); // the start: where the scope was
        assert_eq!(at(104.0), -10.0); // 10 - 5 * 4
        assert_eq!(at(110.0), -40.0); // 50 kW / 5 kW/s = 10 s
        assert_eq!(at(150.0), -40.0);
        assert_eq!(at(196.0), -10.0); // 4 s before the end: 10 - 5 * 4
        assert_eq!(at(200.0), 10.0);
        // A window of 6 s is a triangle: the peak at 3 s is 10 - 5 * 3 = -5 kW.
        assert_eq!(ramped(10.0, -40.0, Some(5.0), 0.0, 6.0, 3.0), -5.0);
        // No ramp: a step.
        assert_eq!(ramped(10.0, -40.0, None, 0.0, 6.0, 0.0), -40.0);
    }
}
