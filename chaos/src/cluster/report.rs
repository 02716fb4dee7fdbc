//! A cluster run's report: the JSON ([`ClusterReport`], serde) and a page a person reads: the
//! invariants with their worst margins and first violations, the replay command, the faults,
//! an inline SVG plot of the segments each node drives over time (faults marked) and a
//! timeline table of every node's lease and driven segments.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::run::ClusterReport;

/// Rows of the timeline table at most (a row when something changed, or a fault).
pub const MAX_TABLE_ROWS: usize = 400;

const COLOURS: [&str; 9] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
    "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The file stem of a run's report: `<scenario>-seed-<S>`.
pub fn stem(r_scenario: &str, seed: u64) -> String {
    let name: String = r_scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name}-seed-{seed}")
}

/// Write `<stem>.json` and `<stem>.html` into `dir`.
pub fn write(dir: &Path, r: &ClusterReport) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the report folder {}: {e}", dir.display()))?;
    let base = dir.join(stem(&r.scenario, r.seed));
    let json = base.with_extension("json");
    let page = base.with_extension("html");
    let text =
        serde_json::to_string_pretty(r).map_err(|e| format!("cannot encode the report: {e}"))?;
    std::fs::write(&json, text).map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    std::fs::write(&page, html(r)).map_err(|e| format!("cannot write {}: {e}", page.display()))?;
    Ok((json, page))
}

fn plot(r: &ClusterReport) -> String {
    let (w, h, left, top, bottom) = (900.0, 260.0, 40.0, 20.0, 30.0);
    let end_ms = r.rounds.last().map_or(1, |x| x.end_ms.max(1)) as f64;
    let max_y = r
        .rounds
        .iter()
        .flat_map(|x| x.nodes.values().flatten().map(|v| v.driving.len()))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: f64| left + (w - left - 10.0) * t / end_ms;
    let y = |n: f64| top + (h - top - bottom) * (1.0 - n / max_y);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"11\">\n<rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>\n",
        w - left - 10.0,
        h - top - bottom
    );
    for k in 0..=(max_y as usize) {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{k}</text>",
            left - 4.0,
            y(k as f64) + 4.0
        );
    }
    let ticks = 10;
    for k in 0..=ticks {
        let t = end_ms * k as f64 / ticks as f64;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.1} s</text>",
            x(t),
            h - 10.0,
            t / 1e3
        );
    }
    for f in &r.faults {
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" x2=\"{0}\" y1=\"{top}\" y2=\"{1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/><text x=\"{2}\" y=\"{3}\" fill=\"#555\">{4}</text>",
            x(f.t_ms as f64),
            h - bottom,
            x(f.t_ms as f64) + 3.0,
            top + 10.0,
            esc(f.kind)
        );
    }
    for (i, node) in r.nodes.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points = String::new();
        let mut prev: Option<f64> = None;
        for round in &r.rounds {
            let n = round
                .nodes
                .get(node)
                .and_then(|v| v.as_ref())
                .map_or(0.0, |v| v.driving.len() as f64);
            let t = round.t_ms as f64;
            if let Some(p) = prev {
                let _ = write!(points, "{:.1},{:.1} ", x(t), y(p));
            }
            let _ = write!(points, "{:.1},{:.1} ", x(t), y(n));
            prev = Some(n);
        }
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" opacity=\"0.8\" points=\"{points}\"/><text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            left + 8.0 + 70.0 * i as f64,
            h - bottom - 6.0,
            esc(node)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The page.
pub fn html(r: &ClusterReport) -> String {
    let mut p = String::new();
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    let _ = write!(
        p,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{verdict} {name} seed {seed}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}.bad{{color:#b00}}.ok{{color:#070}}code{{background:#eee;padding:2px 4px}}</style></head><body>\n<h1><span class=\"{cls}\">{verdict}</span> {name} (seed {seed})</h1>\n<p>{desc}</p>\n<p>File <code>{file}</code>; nodes {nodes}; settled after {settled}; run {dur} s after the settle; wall time {wall:.1} s.</p>\n<p>Replay: <code>{replay}</code></p>\n",
        name = esc(&r.scenario),
        seed = r.seed,
        cls = if r.passed { "ok" } else { "bad" },
        desc = esc(&r.description),
        file = esc(&r.file),
        nodes = esc(&r.nodes.join(", ")),
        settled = r
            .settled_after_s
            .map_or("never".to_string(), |s| format!("{s:.2} s")),
        dur = r.duration_s,
        wall = r.wall_s,
        replay = esc(&r.replay),
    );
    p.push_str("<h2>Invariants</h2>\n<table><tr><th>invariant</th><th>bound</th><th>held</th><th>checks</th><th>worst margin</th><th>first violation</th></tr>\n");
    for i in &r.invariants {
        let _ = writeln!(
            p,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i.name,
            esc(&i.bound),
            if i.held { "ok" } else { "bad" },
            if i.held { "held" } else { "VIOLATED" },
            i.checks,
            i.worst_margin
                .map_or("-".to_string(), |m| format!("{m:.3} {}", i.unit)),
            i.first_violation.as_ref().map_or(String::new(), |v| format!(
                "First violation at {:.3} s: {}",
                v.t_ms as f64 / 1e3,
                esc(&v.message)
            ))
        );
    }
    p.push_str("</table>\n<h2>Faults</h2>\n<table><tr><th>at</th><th>kind</th><th>what</th><th>cut off after it</th></tr>\n");
    for f in &r.faults {
        let _ = writeln!(
            p,
            "<tr><td>{:.3} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.t_ms as f64 / 1e3,
            f.kind,
            esc(&f.what),
            esc(&f.cut_off.join(", "))
        );
    }
    let d = &r.dispatch;
    let _ = writeln!(
        p,
        "</table>\n<p>Grid requests: {} answered by the end, {} with 200, {} refused, {} failed (no connection or no answer in time); {} ticks skipped; {} segment receipts fully acknowledged.</p>",
        d.answered, d.ok, d.refused, d.failed, d.skipped, d.segments_acknowledged
    );
    p.push_str("<h2>Segments driven per node</h2>\n");
    p.push_str(&plot(r));
    p.push_str("<h2>Timeline</h2>\n<p>Each node's lease and the number of segments it drives (a row when something changed; <i>down</i>: no answer).</p>\n<table><tr><th>t</th><th>fault</th>");
    for n in &r.nodes {
        let _ = write!(p, "<th>{}</th>", esc(n));
    }
    p.push_str("</tr>\n");
    let mut last = String::new();
    let mut faults = r.faults.iter().peekable();
    let mut rows = 0;
    for round in &r.rounds {
        let mut fault = Vec::new();
        while let Some(f) = faults.peek() {
            if f.t_ms > round.t_ms {
                break;
            }
            fault.push(esc(&f.what));
            faults.next();
        }
        let cells: String = r
            .nodes
            .iter()
            .map(|n| match round.nodes.get(n).and_then(|v| v.as_ref()) {
                Some(v) => format!("<td>{} / {}</td>", v.lease, v.driving.len()),
                None => "<td>down</td>".to_string(),
            })
            .collect();
        if cells == last && fault.is_empty() {
            continue;
        }
        rows += 1;
        if rows > MAX_TABLE_ROWS {
            p.push_str("<tr><td colspan=\"99\">(more rows in the JSON report)</td></tr>\n");
            break;
        }
        let _ = writeln!(
            p,
            "<tr><td>{:.2} s</td><td>{}</td>{cells}</tr>",
            round.t_ms as f64 / 1e3,
            fault.join("; ")
        );
        last = cells;
    }
    p.push_str("</table>\n");
    if !r.logs.is_empty() {
        p.push_str("<h2>Node logs</h2><ul>");
        for l in &r.logs {
            let _ = write!(p, "<li><code>{}</code></li>", esc(l));
        }
        p.push_str("</ul>\n");
    }
    p.push_str("</body></html>\n");
    p
}
