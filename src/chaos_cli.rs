//! `gridvisor chaos FILE [--seed S] [--seeds A..B] [--report DIR]`: run a chaos scenario in
//! the in-process, deterministic mode (gridvisor-chaos) for one seed or a range of seeds.
//!
//! One line per run on stdout (PASS or FAIL, the invariants, simulated and wall time); for a
//! broken invariant its first violation and the command that replays the run. `--report`
//! writes `<scenario>-seed-<S>.json` and `.html` per run into DIR. Exit status 0 only when
//! every invariant of every run held; 1 when one broke; 2 when the scenario or the arguments
//! are wrong (the errors name the file, line and field). The node's own log lines are left
//! out unless `RUST_LOG` is set: the history has what happened, and a sweep would print
//! thousands of them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gridvisor_chaos::{html, sweep, RunOutcome, Scenario};

use crate::stdout::outln;

/// What `gridvisor chaos` was asked.
pub struct ChaosOptions {
    /// The scenario file.
    pub file: PathBuf,
    /// One seed.
    pub seed: Option<u64>,
    /// A range of seeds (`A..B` or `A..=B`).
    pub seeds: Option<String>,
    /// Where reports go.
    pub report: Option<PathBuf>,
}

/// Exit status for a run whose invariants broke.
const EXIT_VIOLATION: u8 = 1;
/// Exit status for a bad scenario or bad arguments.
const EXIT_USAGE: u8 = 2;

fn write_report(dir: &Path, o: &RunOutcome) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the report folder {}: {e}", dir.display()))?;
    let stem: String = o
        .report
        .scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = dir.join(format!("{stem}-seed-{}", o.report.seed));
    let json = base.with_extension("json");
    let page = base.with_extension("html");
    let text = serde_json::to_string_pretty(&o.report)
        .map_err(|e| format!("cannot encode the report: {e}"))?;
    std::fs::write(&json, text).map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    std::fs::write(&page, html(&o.report))
        .map_err(|e| format!("cannot write {}: {e}", page.display()))?;
    Ok((json, page))
}

fn describe(o: &RunOutcome) -> String {
    let r = &o.report;
    let held = r.invariants.iter().filter(|i| i.held).count();
    let exercised: Vec<&str> = r
        .invariants
        .iter()
        .filter(|i| i.exercised)
        .map(|i| i.name)
        .collect();
    format!(
        "{} {} seed {}: {held}/{} invariants held (exercised: {}); {} s simulated in {:.2} s; history {}",
        if r.passed { "PASS" } else { "FAIL" },
        r.scenario,
        r.seed,
        r.invariants.len(),
        if exercised.is_empty() { "none".to_owned() } else { exercised.join(", ") },
        r.simulated_s,
        r.wall_s,
        r.history_digest
    )
}

/// Run the command.
pub fn chaos(o: ChaosOptions) -> ExitCode {
    if gridvisor_chaos::cluster::is_cluster_scenario(&o.file) {
        return chaos_cluster(o);
    }
    let scenario: Scenario = match gridvisor_chaos::load(&o.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let seeds = match (&o.seed, &o.seeds) {
        (Some(_), Some(_)) => {
            eprintln!("gridvisor chaos: give --seed or --seeds, not both");
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(s), None) => vec![*s],
        (None, Some(range)) => match sweep::parse_seeds(range) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gridvisor chaos: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, None) => vec![scenario.seed],
    };
    sweep::quiet_injected_panics();
    let bar = sweep::progress_bar(seeds.len() as u64);
    let (mut failed, mut simulated, mut wall) = (0usize, 0.0f64, 0.0f64);
    for &seed in &seeds {
        bar.set_message(format!("seed {seed}"));
        let run = || gridvisor_chaos::run(&scenario, seed);
        // The run's runtime is current-thread, on this thread: a thread-local default
        // subscriber silences every actor of it.
        let result = if std::env::var_os("RUST_LOG").is_some() {
            run()
        } else {
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), run)
        };
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                bar.abandon();
                eprintln!("gridvisor chaos: {} seed {seed}: {e}", scenario.file);
                return ExitCode::from(EXIT_USAGE);
            }
        };
        simulated += outcome.report.simulated_s;
        wall += outcome.report.wall_s;
        let mut lines = vec![describe(&outcome)];
        if !outcome.report.passed {
            failed += 1;
            for v in &outcome.report.violations {
                lines.push(format!(
                    "  VIOLATED {} at {:.3} s: {}",
                    v.violation.invariant,
                    v.violation.t_ms as f64 / 1_000.0,
                    v.violation.message
                ));
            }
            lines.push(format!("  replay: {}", outcome.report.replay));
        }
        if let Some(dir) = &o.report {
            match write_report(dir, &outcome) {
                Ok((json, page)) => {
                    lines.push(format!("  report: {} {}", json.display(), page.display()))
                }
                Err(e) => {
                    bar.abandon();
                    eprintln!("gridvisor chaos: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
        bar.suspend(|| {
            for l in &lines {
                outln!("{l}");
            }
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let per_hour = if simulated > 0.0 {
        wall / simulated * 3_600.0
    } else {
        0.0
    };
    outln!(
        "{} of {} runs passed; {simulated:.0} s simulated in {wall:.2} s ({per_hour:.2} s per simulated hour)",
        seeds.len() - failed,
        seeds.len()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VIOLATION)
    }
}

/// A scenario with a `[cluster]` table: the multi-process mode (gridvisor-chaos's
/// `cluster`), this binary's `run --cluster` processes with faults between them. One line per
/// run as in the in-process mode; the report folder also gets the nodes' logs.
fn chaos_cluster(o: ChaosOptions) -> ExitCode {
    use gridvisor_chaos::cluster;
    let scenario = match cluster::load(&o.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let seeds = match (&o.seed, &o.seeds) {
        (Some(_), Some(_)) => {
            eprintln!("gridvisor chaos: give --seed or --seeds, not both");
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(s), None) => vec![*s],
        (None, Some(range)) => match sweep::parse_seeds(range) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gridvisor chaos: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, None) => vec![scenario.seed],
    };
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gridvisor chaos: cannot find this binary to start the nodes: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut failed = 0usize;
    for &seed in &seeds {
        let stem = cluster::report::stem(&scenario.name, seed);
        let logs = o.report.as_deref().map(|d| (d, stem.as_str()));
        let r = match cluster::run(&scenario, seed, &binary, logs) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("gridvisor chaos: {} seed {seed}: {e}", scenario.file);
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let held = r.invariants.iter().filter(|i| i.held).count();
        outln!(
            "{} {} seed {seed}: {held}/{} invariants held ({}); {} nodes, {} faults, settled after {}, {} s run in {:.2} s",
            if r.passed { "PASS" } else { "FAIL" },
            r.scenario,
            r.invariants.len(),
            r.invariants
                .iter()
                .map(|i| match i.worst_margin {
                    Some(m) => format!("{} margin {m:.3} {}", i.name, i.unit),
                    None => i.name.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
            r.nodes.len(),
            r.faults.len(),
            r.settled_after_s
                .map_or("never".to_string(), |s| format!("{s:.2} s")),
            r.duration_s,
            r.wall_s
        );
        if !r.passed {
            failed += 1;
            for v in r
                .invariants
                .iter()
                .filter_map(|i| i.first_violation.as_ref())
            {
                outln!(
                    "  VIOLATED {} at {:.3} s: {}",
                    v.invariant,
                    v.t_ms as f64 / 1_000.0,
                    v.message
                );
            }
            outln!("  replay: {}", r.replay);
        }
        if let Some(dir) = &o.report {
            match cluster::report::write(dir, &r) {
                Ok((json, page)) => {
                    outln!("  report: {} {}", json.display(), page.display());
                }
                Err(e) => {
                    eprintln!("gridvisor chaos: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
    }
    outln!("{} of {} runs passed", seeds.len() - failed, seeds.len());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VIOLATION)
    }
}
