//! The VEN's pure core: which events it knows, what it answered, and which interval's grid
//! request is due (time as an argument, Unix seconds).
//!
//! - [`EventBook::distribute`] takes one oadrDistributeEvent: a new event, or a higher
//!   modification number, is judged ([`judge`]: every interval's target against the site's
//!   capacity; optIn only when all can be delivered) and answered; the same modification
//!   again keeps its first answer (the VTN repeats events on every poll). An event marked
//!   cancelled, or absent from the VTN's list (2.0b: the list is complete), is cancelled: a
//!   request it started is stopped.
//! - [`EventBook::due`] says what to do at `now`: submit the interval that started and was
//!   not yet submitted (for the current modification), or stop a cancelled one.
//! - Signals become site targets: `LOAD_DISPATCH` `setpoint` (kW at the site's meter) or
//!   `delta` (kW added to the site's metered power when the interval starts), and `simple`
//!   `level` 0–3 through `[openadr.simple_levels]`. An event with no signal the VEN can act
//!   on, or a level outside the table, is opted out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::messages::{Event, EventStatus, Opt};

/// The most events the book holds; a distribute beyond it opts the surplus out.
pub const MAX_BOOK_EVENTS: usize = 256;
/// How long an ended or cancelled event is kept (to answer repeats the same way), seconds.
pub const KEEP_ENDED_S: i64 = 3_600;

/// What the site can deliver now, kW at its meter (import positive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// The most the site can import.
    pub max_kw: f64,
    /// The least (most negative: export) it can reach.
    pub min_kw: f64,
}

/// The SIMPLE level table: level 0..=3 → site target, kW.
pub type SimpleLevels = [f64; 4];

/// What an interval asks of the site.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Target {
    /// This many kW at the site's meter.
    Setpoint(f64),
    /// The metered power when the interval starts, plus this many kW.
    Delta(f64),
}

impl Target {
    /// The site target, given the metered site power.
    pub fn resolve(self, metered_kw: f64) -> f64 {
        match self {
            Target::Setpoint(kw) => kw,
            Target::Delta(kw) => metered_kw + kw,
        }
    }
}

/// One interval the VEN may dispatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Start, Unix seconds.
    pub start_s: i64,
    /// End, Unix seconds.
    pub end_s: i64,
    /// Its target.
    pub target: Target,
}

/// An event as the book keeps it (durable: [`super::store`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The event as last received.
    pub event: Event,
    /// The answer given for its modification.
    pub opt: Opt,
    /// Why it was opted out, if it was.
    pub reason: Option<String>,
    /// The intervals to dispatch (empty when opted out).
    pub steps: Vec<Step>,
    /// Steps already submitted (index), for this modification.
    pub submitted: Vec<usize>,
    /// The grid request id of the last submitted step, if any.
    pub request: Option<String>,
    /// Cancelled (by the VTN, or absent from its list).
    pub cancelled: bool,
    /// The cancel was carried out (its request stopped, or none was running).
    pub stopped: bool,
}

/// What the VEN must do at a moment.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Submit a grid request for one step.
    Submit {
        /// The event.
        event: String,
        /// The request id.
        request: String,
        /// The step's target.
        target: Target,
        /// Seconds left in the step.
        duration_s: f64,
        /// The step's index.
        step: usize,
    },
    /// Stop the request a cancelled event started.
    Stop {
        /// The event.
        event: String,
        /// The request to stop.
        request: String,
    },
}

/// The answer for one event of a distribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The event.
    pub event_id: String,
    /// Its modification.
    pub modification: u32,
    /// The opt.
    pub opt: Opt,
    /// Whether the VTN wants an answer.
    pub required: bool,
    /// Whether this is a new judgement (a new event or modification).
    pub fresh: bool,
    /// The event is cancelled (the answer acknowledges it).
    pub cancelled: bool,
}

/// The events a VEN knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventBook {
    /// By event id.
    pub entries: BTreeMap<String, Entry>,
}

/// The request id of an event's step: unique per event, modification and step.
pub fn request_id(event: &str, modification: u32, step: usize) -> String {
    format!("oadr:{event}:{modification}:{step}")
}

/// The steps of an event and whether the site can deliver them, or why not.
pub fn judge(
    event: &Event,
    levels: &SimpleLevels,
    capacity: Capacity,
    metered_kw: f64,
) -> Result<Vec<Step>, String> {
    let signal = event
        .signals
        .iter()
        .find(|s| {
            s.name.eq_ignore_ascii_case("LOAD_DISPATCH") || s.name.eq_ignore_ascii_case("simple")
        })
        .ok_or("no LOAD_DISPATCH or SIMPLE signal")?;
    let mut steps = Vec::with_capacity(signal.intervals.len());
    for i in &signal.intervals {
        let v = i.value * signal.to_kw;
        let target = match (
            signal.name.to_ascii_uppercase().as_str(),
            signal.kind.as_str(),
        ) {
            ("LOAD_DISPATCH", "setpoint") => Target::Setpoint(v),
            ("LOAD_DISPATCH", "delta") => Target::Delta(v),
            ("SIMPLE", "level") => {
                let level = i.value;
                if level.fract() != 0.0 || !(0.0..=3.0).contains(&level) {
                    return Err(format!("SIMPLE level {level} is not 0, 1, 2 or 3"));
                }
                Target::Setpoint(levels[level as usize])
            }
            (name, kind) => return Err(format!("{name} of type {kind} is not dispatchable")),
        };
        let kw = target.resolve(metered_kw);
        if !kw.is_finite() || kw > capacity.max_kw || kw < capacity.min_kw {
            return Err(format!(
                "target {kw:.1} kW is outside what the site can deliver ({:.1}..={:.1} kW)",
                capacity.min_kw, capacity.max_kw
            ));
        }
        let secs = i64::try_from(i.duration.as_secs()).unwrap_or(i64::MAX);
        steps.push(Step {
            start_s: i.start_s,
            end_s: i.start_s.saturating_add(secs),
            target,
        });
    }
    Ok(steps)
}

impl EventBook {
    /// Take one oadrDistributeEvent at `now_s`: the answer for each event in it.
    pub fn distribute(
        &mut self,
        events: &[Event],
        now_s: i64,
        judge_fn: &mut dyn FnMut(&Event) -> Result<Vec<Step>, String>,
    ) -> Vec<Answer> {
        let listed: std::collections::BTreeSet<&str> =
            events.iter().map(|e| e.id.as_str()).collect();
        for (id, entry) in self.entries.iter_mut() {
            if !listed.contains(id.as_str()) && !entry.cancelled {
                entry.cancelled = true;
            }
        }
        events
            .iter()
            .map(|e| self.take(e, now_s, judge_fn))
            .collect()
    }

    fn take(
        &mut self,
        e: &Event,
        now_s: i64,
        judge_fn: &mut dyn FnMut(&Event) -> Result<Vec<Step>, String>,
    ) -> Answer {
        let answer = |opt, fresh| Answer {
            event_id: e.id.clone(),
            modification: e.modification,
            opt,
            required: e.response_required,
            fresh,
            cancelled: e.status == EventStatus::Cancelled,
        };
        if let Some(old) = self.entries.get_mut(&e.id) {
            if e.modification <= old.event.modification {
                if e.status == EventStatus::Cancelled && !old.cancelled {
                    old.cancelled = true;
                }
                return answer(old.opt, false);
            }
        }
        if self.entries.len() >= MAX_BOOK_EVENTS && !self.entries.contains_key(&e.id) {
            self.prune(now_s);
            if self.entries.len() >= MAX_BOOK_EVENTS {
                return answer(Opt::Out, true);
            }
        }
        let previous_request = self.entries.get(&e.id).and_then(|o| o.request.clone());
        let cancelled = e.status == EventStatus::Cancelled;
        let (opt, reason, steps) = match judge_fn(e) {
            _ if cancelled => (Opt::In, None, Vec::new()),
            Ok(steps) => (Opt::In, None, steps),
            Err(why) => (Opt::Out, Some(why), Vec::new()),
        };
        // A modification replaces the old steps; a request the old one started keeps running
        // until the new steps' first starts (it then replaces it) or, when the new event
        // opted out or was cancelled, is stopped.
        let stop_old = previous_request.is_some() && (opt == Opt::Out || cancelled);
        self.entries.insert(
            e.id.clone(),
            Entry {
                event: e.clone(),
                opt,
                reason,
                steps,
                submitted: Vec::new(),
                request: previous_request,
                cancelled: cancelled || stop_old,
                stopped: false,
            },
        );
        answer(opt, true)
    }

    /// What is due at `now_s`.
    pub fn due(&self, now_s: i64) -> Vec<Action> {
        let mut out = Vec::new();
        for (id, e) in &self.entries {
            if e.cancelled {
                if let (false, Some(r)) = (e.stopped, &e.request) {
                    out.push(Action::Stop {
                        event: id.clone(),
                        request: r.clone(),
                    });
                }
                continue;
            }
            let current = e
                .steps
                .iter()
                .enumerate()
                .find(|(_, s)| s.start_s <= now_s && now_s < s.end_s);
            if let Some((i, s)) = current {
                if !e.submitted.contains(&i) {
                    out.push(Action::Submit {
                        event: id.clone(),
                        request: request_id(id, e.event.modification, i),
                        target: s.target,
                        duration_s: (s.end_s - now_s) as f64,
                        step: i,
                    });
                }
            }
        }
        out
    }

    /// Record that `action` was carried out.
    pub fn done(&mut self, action: &Action) {
        match action {
            Action::Submit {
                event,
                request,
                step,
                ..
            } => {
                if let Some(e) = self.entries.get_mut(event) {
                    e.submitted.push(*step);
                    e.request = Some(request.clone());
                }
            }
            Action::Stop { event, .. } => {
                if let Some(e) = self.entries.get_mut(event) {
                    e.stopped = true;
                }
            }
        }
    }

    /// Mark a cancelled event with nothing running as stopped; forget events over for
    /// [`KEEP_ENDED_S`].
    pub fn prune(&mut self, now_s: i64) {
        for e in self.entries.values_mut() {
            if e.cancelled && e.request.is_none() {
                e.stopped = true;
            }
        }
        self.entries.retain(|_, e| {
            let event_end = e
                .event
                .start_s
                .saturating_add(i64::try_from(e.event.duration.as_secs()).unwrap_or(i64::MAX));
            let end = e.steps.iter().map(|s| s.end_s).fold(event_end, i64::max);
            (e.cancelled && !e.stopped) || end.saturating_add(KEEP_ENDED_S) > now_s
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::messages::{Interval, Signal};
    use super::*;
    use std::time::Duration;

    fn event(id: &str, m: u32, status: EventStatus, name: &str, kind: &str, v: &[f64]) -> Event {
        let intervals = v
            .iter()
            .enumerate()
            .map(|(i, &value)| Interval {
                start_s: 1_000 + 100 * i as i64,
                duration: Duration::from_secs(100),
                value,
            })
            .collect();
        Event {
            id: id.into(),
            modification: m,
            status,
            start_s: 1_000,
            duration: Duration::from_secs(100 * v.len() as u64),
            response_required: true,
            signals: vec![Signal {
                name: name.into(),
                kind: kind.into(),
                to_kw: 1.0,
                intervals,
            }],
        }
    }

    const LEVELS: SimpleLevels = [0.0, 10.0, 20.0, -30.0];
    const CAP: Capacity = Capacity {
        max_kw: 100.0,
        min_kw: -50.0,
    };

    fn judge_at(metered: f64) -> impl FnMut(&Event) -> Result<Vec<Step>, String> {
        move |e| judge(e, &LEVELS, CAP, metered)
    }

    #[test]
    fn opts_in_within_capacity_and_out_beyond_it() {
        let mut b = EventBook::default();
        let a = b.distribute(
            &[
                event(
                    "a",
                    0,
                    EventStatus::Far,
                    "LOAD_DISPATCH",
                    "setpoint",
                    &[40.0, -20.0],
                ),
                event(
                    "b",
                    0,
                    EventStatus::Far,
                    "LOAD_DISPATCH",
                    "setpoint",
                    &[400.0],
                ),
                event("c", 0, EventStatus::Far, "simple", "level", &[3.0]),
                event("d", 0, EventStatus::Far, "simple", "level", &[4.0]),
                event(
                    "e",
                    0,
                    EventStatus::Far,
                    "ELECTRICITY_PRICE",
                    "price",
                    &[0.3],
                ),
                event("f", 0, EventStatus::Far, "LOAD_DISPATCH", "delta", &[-80.0]),
            ],
            900,
            &mut judge_at(10.0),
        );
        let opts: Vec<Opt> = a.iter().map(|a| a.opt).collect();
        use Opt::{In, Out};
        assert_eq!(opts, [In, Out, In, Out, Out, Out]);
        assert!(b.entries["b"].reason.as_ref().unwrap().contains("400.0 kW"));
    }

    #[test]
    fn steps_come_due_at_their_start_once() {
        let mut b = EventBook::default();
        b.distribute(
            &[event(
                "a",
                0,
                EventStatus::Far,
                "LOAD_DISPATCH",
                "setpoint",
                &[40.0, -20.0],
            )],
            900,
            &mut judge_at(0.0),
        );
        assert!(b.due(999).is_empty());
        let due = b.due(1_010);
        assert_eq!(
            due,
            [Action::Submit {
                event: "a".into(),
                request: "oadr:a:0:0".into(),
                target: Target::Setpoint(40.0),
                duration_s: 90.0,
                step: 0
            }]
        );
        b.done(&due[0]);
        assert!(b.due(1_050).is_empty());
        assert!(matches!(
            &b.due(1_100)[..],
            [Action::Submit { step: 1, .. }]
        ));
        assert!(b.due(1_200).is_empty());
    }

    #[test]
    fn a_repeat_keeps_its_answer_and_a_modification_is_judged_again() {
        let mut b = EventBook::default();
        let ev = event(
            "a",
            0,
            EventStatus::Far,
            "LOAD_DISPATCH",
            "setpoint",
            &[40.0],
        );
        assert!(b.distribute(std::slice::from_ref(&ev), 900, &mut judge_at(0.0))[0].fresh);
        let again = b.distribute(std::slice::from_ref(&ev), 901, &mut judge_at(0.0));
        assert!(!again[0].fresh);
        let modified = event(
            "a",
            1,
            EventStatus::Near,
            "LOAD_DISPATCH",
            "setpoint",
            &[500.0],
        );
        let m = b.distribute(&[modified], 902, &mut judge_at(0.0));
        assert!(m[0].fresh);
        assert_eq!(m[0].opt, Opt::Out);
    }

    #[test]
    fn cancelling_stops_a_running_request() {
        let mut b = EventBook::default();
        let ev = event(
            "a",
            0,
            EventStatus::Active,
            "LOAD_DISPATCH",
            "setpoint",
            &[40.0],
        );
        b.distribute(std::slice::from_ref(&ev), 1_000, &mut judge_at(0.0));
        let due = b.due(1_000);
        b.done(&due[0]);
        let mut cancel = ev.clone();
        cancel.modification = 1;
        cancel.status = EventStatus::Cancelled;
        b.distribute(&[cancel], 1_010, &mut judge_at(0.0));
        let stop = b.due(1_010);
        assert_eq!(
            stop,
            [Action::Stop {
                event: "a".into(),
                request: "oadr:a:0:0".into()
            }]
        );
        b.done(&stop[0]);
        assert!(b.due(1_011).is_empty());
    }

    #[test]
    fn an_event_missing_from_the_list_is_cancelled() {
        let mut b = EventBook::default();
        let ev = event(
            "a",
            0,
            EventStatus::Active,
            "LOAD_DISPATCH",
            "setpoint",
            &[40.0],
        );
        b.distribute(&[ev], 1_000, &mut judge_at(0.0));
        let due = b.due(1_000);
        b.done(&due[0]);
        b.distribute(&[], 1_005, &mut judge_at(0.0));
        assert!(matches!(&b.due(1_005)[..], [Action::Stop { .. }]));
    }

    #[test]
    fn a_delta_resolves_against_the_metered_power() {
        assert_eq!(Target::Delta(-5.0).resolve(12.0), 7.0);
        assert_eq!(Target::Setpoint(3.0).resolve(12.0), 3.0);
    }
}
