//! `gridvisor bench site --sessions N`: a whole generated site on one node, measured.
//!
//! Prints `name value unit` lines:
//! - `memory_per_session` (heap bytes of the running tree per session: its charger
//!   supervisor, link and session actors, boards and metrics);
//! - `site_start` (the tree up with every session running);
//! - `request_ack_p50` / `request_ack_p99`: a grid request posted to the node until every
//!   device setpoint is acknowledged (durably checkpointed);
//! - `dispatch_cycle_mean`: the site's rounds (split, allocate, send, every ack);
//! - the islanding run, with `--hung-pct` % of the chargers hung (never answering; 10 by
//!   default): `islanding_commanded_p50` / `_p99` / `_max`, a segment's ladder trips until
//!   one *responsive* device of it was commanded (each device by its own task: the hung ones
//!   hold nobody back), and `islanding_hung_chargers` / `islanding_responsive_devices`;
//! - `frequency_response_p50` / `_p99` / `_max`: the frequency-watt response (droop, on for
//!   this run) from a step of the simulated grid's frequency ([`FREQUENCY_STEPS`] steps,
//!   alternately over and under the deadband) until each segment's new batch is applied by
//!   every device it commanded (the meter's poll included), one sample per segment and step;
//! - `metrics_render_p50` / `_max` and `metrics_bytes`: the node's whole Prometheus text
//!   exposition (what `/metrics` serves), rendered [`METRICS_RENDERS`] times;
//! - `idle_cpu_pct`: a steady site, measured with `getrusage` over a window
//!   ([`IDLE_WINDOW`] by default, `--idle-seconds`), as % of one core (see [`idle`]).
//!
//! The control period is set to its maximum (a minute) so that the timed requests are the
//! rounds measured;
//! every wait is bounded by the phase limit ([`PHASE_LIMIT`] by default). A phase that does
//! not finish fails the run with a short summary: what did not finish (at most
//! [`SUMMARY_ITEMS`] segments named, then a count) and the site's counts, never the site
//! itself (at 100,000 sessions that was a 100,000-line JSON dump).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gridvisor_actors::checkpoint::{CheckpointStore, StoreLimits};
use gridvisor_actors::clock::Clock;
use gridvisor_actors::config;
use gridvisor_actors::ladder::SafeState;
use gridvisor_actors::runtime::{GridRequest, Node, NodeOptions, Scope};

use crate::alloc;
use crate::stdout::outln;

/// The longest any phase may take before the benchmark fails, unless `--phase-limit-seconds`
/// says otherwise.
pub const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// How often a phase checks its condition.
const POLL: Duration = Duration::from_millis(5);
/// A failed phase's summary names at most this many unfinished segments, then counts the rest.
const SUMMARY_ITEMS: usize = 10;
/// The steady site's measuring window when `--idle-seconds` is not given.
pub const IDLE_WINDOW: Duration = Duration::from_secs(60);
/// After the steady site's standing request is acknowledged, this long passes before the
/// idle window opens (the first rounds, lease renewals and pollers find their pace).
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// What `gridvisor bench site` runs.
#[derive(Debug, Clone)]
pub struct SiteBench {
    /// Vehicle sessions (one charger each).
    pub sessions: usize,
    /// Transformer segments.
    pub segments: usize,
    /// Grid requests timed.
    pub requests: usize,
    /// Percent of the chargers hung during the islanding run.
    pub hung_pct: u8,
    /// The steady site's measuring window, seconds.
    pub idle_seconds: f64,
    /// The longest a phase may take, seconds.
    pub phase_limit_seconds: f64,
}

/// A flag's seconds as a duration above zero, or an error naming the flag.
fn seconds(flag: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{flag} must be a number of seconds above 0, not {s}"))
}

fn line(name: &str, value: f64, unit: &str) {
    outln!("{name} {value:.3} {unit}");
}

/// Wait until `unfinished` (one line per unfinished segment, or device) is empty, at most
/// `limit`; then an error with [`summary`].
async fn until(
    node: &Node,
    what: &str,
    limit: Duration,
    mut unfinished: impl FnMut() -> Vec<String>,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let left = unfinished();
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(summary(what, limit, &left, &site_counts(node)));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A failed phase, in a few lines: what, the limit, how many did not finish and the first
/// [`SUMMARY_ITEMS`] of them, the site's counts.
fn summary(what: &str, limit: Duration, unfinished: &[String], counts: &str) -> String {
    let mut text = format!(
        "{what}: not done within {limit:?}; {} not finished:",
        unfinished.len()
    );
    for item in unfinished.iter().take(SUMMARY_ITEMS) {
        text.push_str("\n  ");
        text.push_str(item);
    }
    if unfinished.len() > SUMMARY_ITEMS {
        let more = unfinished.len() - SUMMARY_ITEMS;
        text.push_str(&format!("\n  and {more} more"));
    }
    text.push_str("\nsite: ");
    text.push_str(counts);
    text
}

/// The site's counts: sessions and links running against chargers, segments per level.
fn site_counts(node: &Node) -> String {
    let (mut sessions, mut links, mut chargers) = (0, 0, 0);
    let mut levels = std::collections::BTreeMap::<String, usize>::new();
    for s in node.shared.segments.values() {
        sessions += s.session_actors.len();
        links += s.links.len();
        chargers += s.config.chargers.len();
        *levels.entry(format!("{:?}", s.level())).or_default() += 1;
    }
    let levels: Vec<String> = levels.iter().map(|(l, n)| format!("{l} {n}")).collect();
    format!(
        "{sessions} sessions and {links} links running for {chargers} chargers; segments: {}",
        levels.join(", ")
    )
}

/// The segments whose sessions are not all running (each charger of the generated site has
/// a vehicle from the start).
fn sessions_unfinished(node: &Node) -> Vec<String> {
    node.shared
        .segments
        .values()
        .filter(|s| s.session_actors.len() < s.config.chargers.len())
        .map(|s| {
            let (running, of) = (s.session_actors.len(), s.config.chargers.len());
            format!("{}: {running} of {of} sessions running", s.id)
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Run the site benchmark.
pub async fn site(bench: SiteBench) -> Result<(), String> {
    let SiteBench {
        sessions,
        segments,
        requests,
        hung_pct,
        idle_seconds,
        phase_limit_seconds,
    } = bench;
    let idle_window = seconds("--idle-seconds", idle_seconds)?;
    let phase_limit = seconds("--phase-limit-seconds", phase_limit_seconds)?;
    if sessions == 0 || segments == 0 {
        return Err("--sessions and --segments must be at least 1".into());
    }
    if hung_pct > 100 {
        return Err(format!("--hung-pct {hung_pct}: at most 100"));
    }
    let mut topology = config::generated(segments, sessions, 42);
    // The longest period the configuration allows: the timed requests are (almost) the only
    // rounds, and sessions still read their chargers once a minute.
    topology.site.cycle_ms = config::MAX_CYCLE_MS;
    topology.site.lease_s = 3_600.0;
    topology.site.keepalive_required = false;
    topology.grid_services.frequency.enabled = true;
    let topology = Arc::new(topology);
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let store = CheckpointStore::open(&dir.path().join("bench.redb"), StoreLimits::default())
        .map_err(|e| e.to_string())?;
    let before = alloc::live_bytes();
    let started = Instant::now();
    let node = Node::start(
        topology.clone(),
        store.clone(),
        Clock::tokio(),
        prometheus::Registry::new(),
        NodeOptions {
            per_session_metrics: false,
            ..NodeOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    until(&node, "every session running", phase_limit, || {
        sessions_unfinished(&node)
    })
    .await?;
    let start_ms = started.elapsed().as_secs_f64() * 1e3;
    store.flush().await;
    let after = alloc::live_bytes();
    line("sessions", sessions as f64, "count");
    line("segments", segments as f64, "count");
    line("site_start", start_ms, "ms");
    line(
        "memory_per_session",
        (after - before).max(0) as f64 / sessions as f64,
        "bytes",
    );

    // Grid requests, alternating discharge and charge, each timed until every device acked.
    let stats_before = store.stats();
    let cpu_before = process_cpu_ms();
    let mut acks = Vec::with_capacity(requests);
    let mut not_acked = 0usize;
    for i in 0..requests.max(1) {
        let target = if i % 2 == 0 { -1.0 } else { 1.0 } * sessions as f64 * 3.0;
        let t = Instant::now();
        let r = node
            .request(GridRequest::now(
                format!("bench-{i}"),
                Scope::Site,
                target,
                3_600.0,
            ))
            .await
            .map_err(|e| format!("request {i}: {e}"))?;
        acks.push(t.elapsed().as_secs_f64() * 1e3);
        not_acked += r.not_acknowledged;
    }
    let cpu_ms = process_cpu_ms() - cpu_before;
    acks.sort_by(f64::total_cmp);
    line("request_ack_p50", percentile(&acks, 0.50), "ms");
    line("request_ack_p99", percentile(&acks, 0.99), "ms");
    line("request_not_acknowledged", not_acked as f64, "devices");
    let stats = store.stats();
    let rounds = requests.max(1) as f64;
    // CPU time (all threads, user + system) per request: a figure another process's load
    // hardly moves, unlike the latencies above.
    line("cpu_per_request", cpu_ms / rounds, "ms");
    line(
        "checkpoint_writes_per_request",
        (stats.writes - stats_before.writes) as f64 / rounds,
        "writes",
    );
    line(
        "checkpoint_commits_per_request",
        (stats.commits - stats_before.commits) as f64 / rounds,
        "commits",
    );
    let cycle = &node.shared.metrics.cycle;
    line(
        "dispatch_cycle_mean",
        cycle.get_sample_sum() / cycle.get_sample_count().max(1) as f64 * 1e3,
        "ms",
    );

    frequency_response(&node).await;

    // Islanding: discharge, then the grid goes; every segment trips and commands its devices.
    node.request(GridRequest::now(
        "bench-island",
        Scope::Site,
        -(sessions as f64) * 3.0,
        3_600.0,
    ))
    .await
    .map_err(|e| format!("islanding request: {e}"))?;
    // Islanding trips a segment that exports; one whose chargers cannot discharge never does.
    let exporters: Vec<String> = node
        .segments()
        .into_iter()
        .filter(|s| s.telemetry.max_discharge_kw > 0.0)
        .map(|s| s.id)
        .collect();
    if exporters.is_empty() {
        return Err("no segment can discharge: nothing to island".into());
    }
    // The segments' shared state, not `node.segments()`: a view copies every charger's
    // applied key, 100,000 of them at 100k sessions, and this polls every few milliseconds.
    until(&node, "the site exporting", phase_limit, || {
        node.shared
            .segments
            .values()
            .filter(|s| exporters.contains(&s.id))
            .map(|s| (s, s.telemetry().metered_kw))
            .filter(|(_, kw)| kw.is_nan() || *kw >= 0.0)
            .map(|(s, kw)| format!("{}: metered {kw:.1} kW, not exporting", s.id))
            .collect()
    })
    .await?;
    let hung = hang_chargers(&node, hung_pct);
    // Per segment (in the boards' order): the devices commanded before, and how many more
    // must be (its outputs less its hung chargers), counted once rather than at every poll.
    let before: Vec<(usize, usize)> = node
        .shared
        .segments
        .values()
        .map(|s| {
            let hung_here = s
                .config
                .chargers
                .iter()
                .filter(|c| hung.contains(&c.id))
                .count();
            let responsive = s.commander.outputs() - hung_here;
            (s.commander.delivered().len(), responsive)
        })
        .collect();
    node.sim.grid.set(0.0, 60.0);
    until(
        &node,
        "every exporting segment tripped and its responsive devices commanded",
        phase_limit,
        || {
            node.shared
                .segments
                .values()
                .zip(&before)
                .filter_map(|(s, &(b, responsive))| {
                    let level = s.level();
                    let tripped = level == SafeState::Tripped || !exporters.contains(&s.id);
                    let commanded = s.commander.delivered().len().saturating_sub(b);
                    let done = tripped && level != SafeState::Normal && commanded >= responsive;
                    (!done).then(|| {
                        format!("{}: {level:?}, {commanded} of {responsive} commanded", s.id)
                    })
                })
                .collect()
        },
    )
    .await?;
    line("islanded_segments", exporters.len() as f64, "count");
    line("islanding_hung_chargers", hung.len() as f64, "count");
    let mut commanded: Vec<f64> = node
        .shared
        .segments
        .values()
        .zip(&before)
        .flat_map(|(s, &(b, _))| s.commander.delivered().into_iter().skip(b))
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    line(
        "islanding_responsive_devices",
        commanded.len() as f64,
        "count",
    );
    commanded.sort_by(f64::total_cmp);
    line("islanding_commanded_p50", percentile(&commanded, 0.5), "ms");
    line(
        "islanding_commanded_p99",
        percentile(&commanded, 0.99),
        "ms",
    );
    line(
        "islanding_commanded_max",
        commanded.last().copied().unwrap_or(f64::NAN),
        "ms",
    );
    // The hung chargers answer again (their calls fail), so that the node can stop.
    for id in &hung {
        node.sim.chargers[id].set_hung(false);
    }
    // The Prometheus exposition of the whole node (what a scrape of /metrics renders).
    let mut renders = Vec::with_capacity(METRICS_RENDERS);
    let mut bytes = 0;
    for _ in 0..METRICS_RENDERS {
        let t = Instant::now();
        let text = node.metrics_text().map_err(|e| format!("metrics: {e}"))?;
        renders.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = text.len();
    }
    renders.sort_by(f64::total_cmp);
    line("metrics_render_p50", percentile(&renders, 0.5), "ms");
    line(
        "metrics_render_max",
        renders.last().copied().unwrap_or(f64::NAN),
        "ms",
    );
    line("metrics_bytes", bytes as f64, "bytes");
    node.shutdown().await;
    store.close();
    idle(sessions, segments, idle_window, phase_limit).await
}

/// `idle_cpu_pct`: the CPU time (every thread, user and system, by `getrusage`) of a steady
/// site over `window`, as % of one core.
///
/// The site is a new node of the same generated topology at the configuration's own control
/// period and lease (the timed node's minute-long period would hide the steady cost), holding
/// one standing grid request: after the request is acknowledged and [`IDLE_SETTLE`] has
/// passed, nothing changes (no new request, the simulated grid and meters as they are) while
/// the window runs. What it costs is the node's periodic work: rounds, lease renewals,
/// pollers, safety ticks.
async fn idle(
    sessions: usize,
    segments: usize,
    window: Duration,
    phase_limit: Duration,
) -> Result<(), String> {
    let mut topology = config::generated(segments, sessions, 42);
    topology.site.keepalive_required = false;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let store = CheckpointStore::open(&dir.path().join("idle.redb"), StoreLimits::default())
        .map_err(|e| e.to_string())?;
    let node = Node::start(
        Arc::new(topology),
        store.clone(),
        Clock::tokio(),
        prometheus::Registry::new(),
        NodeOptions {
            per_session_metrics: false,
            ..NodeOptions::default()
        },
    )
    .await
    .map_err(|e| format!("the steady site: {e}"))?;
    let steady = async {
        until(
            &node,
            "the steady site's sessions running",
            phase_limit,
            || sessions_unfinished(&node),
        )
        .await?;
        node.request(GridRequest::now(
            "bench-steady",
            Scope::Site,
            sessions as f64 * 3.0,
            3_600.0,
        ))
        .await
        .map_err(|e| format!("the steady site's request: {e}"))?;
        tokio::time::sleep(IDLE_SETTLE).await;
        let cpu = process_cpu_ms();
        let t = Instant::now();
        tokio::time::sleep(window).await;
        let pct = (process_cpu_ms() - cpu) / (t.elapsed().as_secs_f64() * 1e3) * 100.0;
        line("idle_window", window.as_secs_f64(), "s");
        line("idle_cpu_pct", pct, "%");
        Ok::<(), String>(())
    }
    .await;
    node.shutdown().await;
    store.close();
    steady
}

/// Hang `pct` % of the site's chargers, spread evenly over them in topology order; returns
/// their ids.
fn hang_chargers(node: &Node, pct: u8) -> std::collections::HashSet<String> {
    let ids: Vec<&String> = node
        .shared
        .topology
        .segments()
        .flat_map(|(_, s)| s.chargers.iter().map(|c| &c.id))
        .collect();
    let pct = usize::from(pct);
    let mut hung = std::collections::HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        // Charger i hangs when the running count of hung chargers steps up at it.
        if (i + 1) * pct / 100 > i * pct / 100 {
            node.sim.chargers[*id].set_hung(true);
            hung.insert((*id).clone());
        }
    }
    hung
}

/// How many frequency steps `frequency_response_*` is measured over.
const FREQUENCY_STEPS: usize = 20;
/// How long one step waits for every segment's response; a segment not done by then counts
/// in `frequency_response_missed` (the bound is 5× the default full-response time).
const FREQUENCY_STEP_LIMIT: Duration = Duration::from_secs(5);
/// The steps' frequencies, Hz: 64 mHz beyond the 60 Hz deadband either way (a 0.2 Hz step,
/// 0.4 Hz/s over the ROCOF window: no trip while exporting).
const FREQUENCY_STEP_HZ: [f64; 2] = [60.1, 59.9];

/// Step the grid's frequency [`FREQUENCY_STEPS`] times; per step and segment, the time
/// until the segment's next batch is applied by every device it holds a key for.
async fn frequency_response(node: &Node) {
    let mut samples = Vec::with_capacity(FREQUENCY_STEPS * node.shared.segments.len());
    let mut missed = 0;
    for i in 0..FREQUENCY_STEPS {
        let before: Vec<_> = node
            .segments()
            .into_iter()
            .map(|s| s.telemetry.last_key)
            .collect();
        let mut done: Vec<Option<f64>> = vec![None; before.len()];
        let t = Instant::now();
        node.sim.grid.set(1.0, FREQUENCY_STEP_HZ[i % 2]);
        // Bounded per step: a segment that does not answer a step within the limit is
        // counted as missed (and reported), not waited for until the next periodic cycle.
        while t.elapsed() < FREQUENCY_STEP_LIMIT {
            for ((seg, was), at) in node.segments().iter().zip(&before).zip(done.iter_mut()) {
                let key = seg.telemetry.last_key;
                if at.is_none() && key != *was && seg.applied.values().all(|k| Some(*k) == key) {
                    *at = Some(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            if done.iter().all(Option::is_some) {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        missed += done.iter().filter(|d| d.is_none()).count();
        samples.extend(done.into_iter().flatten());
    }
    let responding = node
        .segments()
        .iter()
        .filter(|s| s.telemetry.droop_kw != 0.0)
        .count();
    node.sim.grid.set(1.0, 60.0);
    samples.sort_by(f64::total_cmp);
    line("frequency_response_segments", responding as f64, "count");
    line("frequency_response_missed", missed as f64, "count");
    line("frequency_response_p50", percentile(&samples, 0.5), "ms");
    line("frequency_response_p99", percentile(&samples, 0.99), "ms");
    line(
        "frequency_response_max",
        samples.last().copied().unwrap_or(f64::NAN),
        "ms",
    );
}

/// How many times the metrics exposition is rendered and timed.
const METRICS_RENDERS: usize = 5;

/// CPU time this process used so far (every thread, user and system), in milliseconds.
fn process_cpu_ms() -> f64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_phase_names_a_few_unfinished_segments_and_counts_the_rest() {
        let unfinished: Vec<String> = (0..100_000)
            .map(|i| format!("tx-{i}: 0 of 10 sessions running"))
            .collect();
        let text = summary("every session running", PHASE_LIMIT, &unfinished, "counts");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + SUMMARY_ITEMS + 2, "{text}");
        assert!(lines[0].contains("every session running: not done within 120s"));
        assert!(lines[0].contains("100000 not finished"), "{text}");
        assert_eq!(lines[1], "  tx-0: 0 of 10 sessions running");
        assert_eq!(lines[SUMMARY_ITEMS + 1], "  and 99990 more");
        assert_eq!(lines[SUMMARY_ITEMS + 2], "site: counts");
        let short = summary("x", PHASE_LIMIT, &unfinished[..2], "counts");
        assert_eq!(short.lines().count(), 4, "{short}");
        assert!(!short.contains("more"), "{short}");
    }

    #[test]
    fn seconds_flags_must_be_above_zero() {
        assert_eq!(
            seconds("--idle-seconds", 1.5),
            Ok(Duration::from_millis(1500))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = seconds("--idle-seconds", bad).unwrap_err();
            assert!(e.starts_with("--idle-seconds must be"), "{e}");
        }
    }
}
