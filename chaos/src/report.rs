//! A run's report: JSON for machines ([`RunReport`], serde) and an HTML page a person reads
//! ([`html`]): the invariants with their worst margins, for a broken one the first violation,
//! the events that led to it and the command that replays it, and a timeline per segment (an
//! inline SVG plot of the devices' power and the transformer's load against the rating, the
//! safe-state level as the background, faults marked above).

use std::fmt::Write as _;

use serde::Serialize;

use crate::invariants::{Summary, Violation};
use crate::runner::{replay_command, Event, History, LEAD_UP_EVENTS};
use crate::scenario::Scenario;

/// The most points a timeline keeps per segment (the history keeps every step).
pub const MAX_PLOT_POINTS: usize = 600;

/// When a fault was active.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultWindow {
    /// Its kind.
    pub kind: String,
    /// What it did.
    pub what: String,
    /// Start, ms.
    pub start_ms: u64,
    /// End, ms (the run's end if it never cleared).
    pub end_ms: u64,
}

/// A broken invariant, with what led to it and how to see it again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViolationDetail {
    /// The first violation.
    pub violation: Violation,
    /// The events up to it (at most [`LEAD_UP_EVENTS`]).
    pub lead_up: Vec<Event>,
    /// The command that replays the run.
    pub replay: String,
}

/// One point of a segment's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// ms.
    pub t_ms: u64,
    /// Devices' power, kW.
    pub power_kw: f64,
    /// Transformer load, kW.
    pub load_kw: f64,
    /// Safe-state severity.
    pub level: u8,
    /// The cap while Limited, kW.
    pub cap_kw: Option<f64>,
    /// Hot spot, °C.
    pub hot_spot_c: f64,
}

/// A segment's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentTimeline {
    /// The segment.
    pub id: String,
    /// Rating, kW.
    pub rated_kw: f64,
    /// Thermal limit, °C.
    pub limit_c: f64,
    /// Points.
    pub points: Vec<Point>,
}

/// Everything about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The scenario's name.
    pub scenario: String,
    /// Its file.
    pub file: String,
    /// What it is about.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// Every invariant held.
    pub passed: bool,
    /// Simulated time, s.
    pub simulated_s: f64,
    /// Wall time, s (not part of the history: it varies).
    pub wall_s: f64,
    /// Steps checked.
    pub steps: u64,
    /// The invariants.
    pub invariants: Vec<Summary>,
    /// The first violation of each broken invariant.
    pub violations: Vec<ViolationDetail>,
    /// The command that replays this run.
    pub replay: String,
    /// The faults.
    pub faults: Vec<FaultWindow>,
    /// Every event.
    pub events: Vec<Event>,
    /// Per segment, at most [`MAX_PLOT_POINTS`] points.
    pub timeline: Vec<SegmentTimeline>,
    /// FNV-1a 64 of the serialized history (equal for equal runs).
    pub history_digest: String,
    /// The serialized history's size, bytes.
    pub history_bytes: usize,
}

/// Put a run's report together.
pub fn build(
    scenario: &Scenario,
    seed: u64,
    steps: u64,
    invariants: Vec<Summary>,
    violations: &[Violation],
    history: &History,
    faults: Vec<FaultWindow>,
) -> RunReport {
    let replay = replay_command(&scenario.file, seed);
    let mut details: Vec<ViolationDetail> = Vec::new();
    for v in violations {
        if details.iter().any(|d| d.violation.invariant == v.invariant) {
            continue;
        }
        let upto: Vec<&Event> = history
            .events
            .iter()
            .filter(|e| e.t_ms <= v.t_ms && e.kind != "violation")
            .collect();
        let lead_up = upto[upto.len().saturating_sub(LEAD_UP_EVENTS)..]
            .iter()
            .map(|e| (*e).clone())
            .collect();
        details.push(ViolationDetail {
            violation: v.clone(),
            lead_up,
            replay: replay.clone(),
        });
    }
    let every = history.samples.len().div_ceil(MAX_PLOT_POINTS).max(1);
    let mut timeline: Vec<SegmentTimeline> = Vec::new();
    for (k, s) in history.samples.iter().enumerate() {
        if k % every != 0 && k + 1 != history.samples.len() {
            continue;
        }
        for seg in &s.segments {
            let line = match timeline.iter_mut().find(|l| l.id == seg.id) {
                Some(l) => l,
                None => {
                    timeline.push(SegmentTimeline {
                        id: seg.id.clone(),
                        rated_kw: seg.rated_kw,
                        limit_c: seg.limit_c,
                        points: Vec::new(),
                    });
                    let last = timeline.len() - 1;
                    &mut timeline[last]
                }
            };
            line.points.push(Point {
                t_ms: s.t_ms,
                power_kw: seg.power_kw,
                load_kw: seg.load_kw,
                level: seg.level,
                cap_kw: seg.cap_kw,
                hot_spot_c: seg.hot_spot_c,
            });
        }
    }
    RunReport {
        scenario: scenario.name.clone(),
        file: scenario.file.clone(),
        description: scenario.description.clone(),
        seed,
        passed: invariants.iter().all(|i| i.held),
        simulated_s: scenario.duration_s,
        wall_s: 0.0,
        steps,
        invariants,
        violations: details,
        replay,
        faults,
        events: history.events.clone(),
        timeline,
        history_digest: history.digest(),
        history_bytes: history.to_json().len(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const LEVEL_COLOURS: [&str; 4] = ["#ffffff", "#fff3bf", "#ffd8a8", "#ffc9c9"];
const LEVEL_NAMES: [&str; 4] = ["normal", "limited", "charge only", "tripped"];

fn load_of(p: &Point) -> f64 {
    p.load_kw
}

fn power_of(p: &Point) -> f64 {
    p.power_kw
}

/// The plot of one segment.
fn svg(
    t: &SegmentTimeline,
    faults: &[FaultWindow],
    violations: &[ViolationDetail],
    end_ms: u64,
) -> String {
    const W: f64 = 900.0;
    const H: f64 = 240.0;
    const LEFT: f64 = 60.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 25.0;
    let plot_w = W - LEFT - 10.0;
    let plot_h = H - TOP - BOTTOM;
    let mut lo = -t.rated_kw * 0.2;
    let mut hi = t.rated_kw * 1.2;
    for p in &t.points {
        for v in [p.power_kw, p.load_kw] {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    let span_ms = end_ms.max(1) as f64;
    let x = |ms: u64| LEFT + ms as f64 / span_ms * plot_w;
    let y = |kw: f64| TOP + (hi - kw) / (hi - lo) * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"##
    );
    // Levels as the background.
    for (k, p) in t.points.iter().enumerate() {
        let next = t.points.get(k + 1).map_or(end_ms, |n| n.t_ms);
        let colour = LEVEL_COLOURS[usize::from(p.level.min(3))];
        if p.level > 0 {
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="{colour}"/>"#,
                x(p.t_ms),
                (x(next) - x(p.t_ms)).max(0.5)
            );
        }
    }
    // Faults above.
    for (k, f) in faults.iter().enumerate() {
        let row = TOP - 8.0 - (k % 2) as f64 * 10.0;
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="6" fill="#7048e8" opacity="0.7"><title>{}</title></rect><text x="{:.1}" y="{:.1}" fill="#5f3dc4">{}</text>"##,
            x(f.start_ms),
            row,
            (x(f.end_ms) - x(f.start_ms)).max(2.0),
            esc(&f.what),
            x(f.start_ms) + 2.0,
            row - 1.0,
            esc(&f.kind)
        );
    }
    // Axes, zero and the rating.
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#868e96"/>"##
    );
    for (kw, colour, label) in [(0.0, "#adb5bd", "0"), (t.rated_kw, "#e03131", "rated")] {
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{colour}" stroke-dasharray="4 3"/><text x="4" y="{:.1}">{label} {kw:.0}</text>"##,
            LEFT + plot_w,
            y(kw),
            y(kw),
            y(kw) + 4.0
        );
    }
    for (value, colour, name) in [
        (load_of as fn(&Point) -> f64, "#868e96", "transformer load"),
        (power_of, "#1971c2", "devices' power"),
    ] {
        let pts: Vec<String> = t
            .points
            .iter()
            .filter(|p| value(p).is_finite())
            .map(|p| format!("{:.1},{:.1}", x(p.t_ms), y(value(p))))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"><title>{name}</title></polyline>"#,
            pts.join(" ")
        );
    }
    // The cap while Limited, both directions, as dashed steps.
    for (k, p) in t.points.iter().enumerate() {
        let Some(cap) = p.cap_kw else { continue };
        let next = t.points.get(k + 1).map_or(end_ms, |n| n.t_ms);
        for kw in [cap, -cap] {
            let _ = write!(
                s,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{2:.1}" y2="{2:.1}" stroke="#e8590c" stroke-dasharray="2 2"/>"##,
                x(p.t_ms),
                x(next),
                y(kw)
            );
        }
    }
    for v in violations.iter().filter(|v| v.violation.subject == t.id) {
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1:.1}" stroke="#c92a2a" stroke-width="2"><title>{2}</title></line>"##,
            x(v.violation.t_ms),
            TOP + plot_h,
            esc(&v.violation.message)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0} s</text></svg>"##,
        H - 8.0,
        LEFT + plot_w,
        H - 8.0,
        end_ms as f64 / 1_000.0
    );
    s
}

/// The HTML page of a run.
pub fn html(r: &RunReport) -> String {
    let mut s = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} seed {} {verdict}</title>\
<style>body{{font-family:sans-serif;max-width:960px;margin:1em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}.ok{{color:#2b8a3e}}.bad{{color:#c92a2a}}code{{background:#f1f3f5;padding:2px 4px}}</style></head><body>",
        esc(&r.scenario),
        r.seed
    );
    let _ = write!(
        s,
        "<h1>{} — seed {} — <span class=\"{}\">{verdict}</span></h1><p>{}</p><p>File <code>{}</code>; {} s simulated in {} steps ({:.2} s of wall time). Replay: <code>{}</code>. History digest <code>{}</code> ({} bytes).</p>",
        esc(&r.scenario),
        r.seed,
        if r.passed { "ok" } else { "bad" },
        esc(&r.description),
        esc(&r.file),
        r.simulated_s,
        r.steps,
        r.wall_s,
        esc(&r.replay),
        r.history_digest,
        r.history_bytes
    );
    s.push_str("<h2>Invariants</h2><table><tr><th>invariant</th><th>held</th><th>exercised</th><th>worst margin</th><th>violations</th><th>note</th></tr>");
    for i in &r.invariants {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&i.statement),
            if i.held { "ok" } else { "bad" },
            if i.held { "yes" } else { "NO" },
            if i.exercised { "yes" } else { "no" },
            i.worst_margin
                .map_or("—".to_owned(), |m| format!("{m:.3} {}", i.unit)),
            i.violations,
            esc(&i.note)
        );
    }
    s.push_str("</table>");
    for v in &r.violations {
        let _ = write!(
            s,
            "<h2 class=\"bad\">First violation: {}</h2><p>At {:.3} s: {}</p><p>Replay: <code>{}</code></p><h3>Events that led to it</h3><table><tr><th>t (s)</th><th>kind</th><th>subject</th><th>detail</th></tr>",
            v.violation.invariant,
            v.violation.t_ms as f64 / 1_000.0,
            esc(&v.violation.message),
            esc(&v.replay)
        );
        for e in &v.lead_up {
            let _ = write!(
                s,
                "<tr><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.t_ms as f64 / 1_000.0,
                e.kind,
                esc(&e.subject),
                esc(&e.detail)
            );
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Timeline</h2><p>Blue: the segment's devices' power (negative: discharge); grey: the transformer's load; red dashes: its rating; orange dashes: the cap while Limited. Background: ");
    for (k, name) in LEVEL_NAMES.iter().enumerate().skip(1) {
        let _ = write!(
            s,
            "<span style=\"background:{}\">{name}</span> ",
            LEVEL_COLOURS[k]
        );
    }
    s.push_str(". Purple bars: faults. Red lines: violations.</p>");
    let end_ms = (r.simulated_s * 1_000.0).round() as u64;
    for t in &r.timeline {
        let hottest = t
            .points
            .iter()
            .map(|p| p.hot_spot_c)
            .fold(f64::NEG_INFINITY, f64::max);
        let _ = write!(
            s,
            "<h3>{} (rated {} kW; hottest {:.1} °C of {} °C)</h3>{}",
            esc(&t.id),
            t.rated_kw,
            hottest,
            t.limit_c,
            svg(t, &r.faults, &r.violations, end_ms)
        );
    }
    s.push_str(
        "<h2>Events</h2><table><tr><th>t (s)</th><th>kind</th><th>subject</th><th>detail</th></tr>",
    );
    for e in &r.events {
        let _ = write!(
            s,
            "<tr><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.t_ms as f64 / 1_000.0,
            e.kind,
            esc(&e.subject),
            esc(&e.detail)
        );
    }
    s.push_str("</table></body></html>\n");
    s
}
