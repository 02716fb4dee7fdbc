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
//!   exposition (what `/metrics` serves), rendered [`METRICS_RENDERS`] times.
//!
//! The control period is set to its maximum (a minute) so that the timed requests are the
//! rounds measured;
//! every wait is bounded by [`PHASE_LIMIT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use gridvisor_actors::checkpoint::{CheckpointStore, StoreLimits};
use gridvisor_actors::clock::Clock;
use gridvisor_actors::config;
use gridvisor_actors::ladder::SafeState;
use gridvisor_actors::runtime::{GridRequest, Node, NodeOptions, Scope};

use crate::alloc;
use crate::stdout::outln;

/// The longest any phase may take before the benchmark fails.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// How often a phase checks its condition.
const POLL: Duration = Duration::from_millis(5);

fn line(name: &str, value: f64, unit: &str) {
    outln!("{name} {value:.3} {unit}");
}

async fn until(node: &Node, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > PHASE_LIMIT {
            let segments = serde_json::to_string_pretty(&node.segments()).unwrap_or_default();
            return Err(format!(
                "{what}: not done within {PHASE_LIMIT:?}; the segments:\n{segments}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Run the site benchmark.
pub async fn site(
    sessions: usize,
    segments: usize,
    requests: usize,
    hung_pct: u8,
) -> Result<(), String> {
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
    let running = || node.segments().iter().map(|s| s.sessions).sum::<usize>();
    until(&node, "every session running", || running() >= sessions).await?;
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
    let exporting = |s: &gridvisor_actors::runtime::SegmentView| exporters.contains(&s.id);
    until(&node, "the site exporting", || {
        node.segments()
            .iter()
            .filter(|s| exporting(s))
            .all(|s| s.telemetry.metered_kw < 0.0)
    })
    .await?;
    let hung = hang_chargers(&node, hung_pct);
    let responsive = |s: &gridvisor_actors::runtime::SegmentShared| {
        let hung_here = s
            .config
            .chargers
            .iter()
            .filter(|c| hung.contains(&c.id))
            .count();
        s.commander.outputs() - hung_here
    };
    let before: Vec<usize> = node
        .shared
        .segments
        .values()
        .map(|s| s.commander.delivered().len())
        .collect();
    node.sim.grid.set(0.0, 60.0);
    until(
        &node,
        "every exporting segment tripped and its responsive devices commanded",
        || {
            node.shared.segments.values().zip(&before).all(|(s, &b)| {
                let level = s.level();
                let tripped = level == SafeState::Tripped || !exporters.contains(&s.id);
                tripped
                    && level != SafeState::Normal
                    && s.commander.delivered().len() >= b + responsive(s)
            })
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
        .flat_map(|(s, &b)| s.commander.delivered().into_iter().skip(b))
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
    Ok(())
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
