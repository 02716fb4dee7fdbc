//! `[workload.arrivals]`: the vehicles-arriving workload's keys (see [`crate::arrivals`]),
//! read with the scenario's reader so its errors name file, line, column and field like
//! every other key; the token file is an `[authorization]` seed file, read and checked here.

use std::path::Path;

use gridvisor_actors::authorization::parse_seed;
use gridvisor_actors::config::Topology;

use super::{join, Problem, Reader, Tbl, MAX_SCENARIO_BYTES};
use crate::arrivals::ArrivalsPlan;

/// The keys of `[workload.arrivals]`.
pub(super) const ARRIVAL_KEYS: &[&str] = &[
    "tokens",
    "window_s",
    "min_away_s",
    "max_away_s",
    "soc_min_pct",
    "soc_max_pct",
];
/// The default shortest time away between two visits of a driver, s.
pub const DEFAULT_MIN_AWAY_S: f64 = 60.0;
/// The default longest time away, s.
pub const DEFAULT_MAX_AWAY_S: f64 = 300.0;
/// The default lowest arrival state of charge, %.
pub const DEFAULT_SOC_MIN_PCT: f64 = 20.0;
/// The default highest arrival state of charge, %.
pub const DEFAULT_SOC_MAX_PCT: f64 = 90.0;

/// `[workload.arrivals]` of `workload` (None: absent or broken, the problems recorded);
/// `dir` is where the token file is looked up. The chargers are filled in by [`chargers`].
pub(super) fn read(
    r: &mut Reader,
    workload: &Tbl<'_, '_>,
    dir: &Path,
    duration_s: f64,
) -> Option<ArrivalsPlan> {
    let node = workload.table?.get("arrivals")?;
    let t = r.open(join(&workload.path, "arrivals"), node, Some(ARRIVAL_KEYS));
    t.table?;
    let tokens_file = r.string(&t, "tokens", true)?;
    let window_s = r.number(&t, "window_s", Some(duration_s));
    r.check(&t, "window_s", window_s > 0.0, || {
        format!("must be positive, not {window_s}")
    });
    let min_away_s = r.number(&t, "min_away_s", Some(DEFAULT_MIN_AWAY_S));
    let max_away_s = r.number(&t, "max_away_s", Some(DEFAULT_MAX_AWAY_S));
    r.check(
        &t,
        "max_away_s",
        0.0 < min_away_s && min_away_s <= max_away_s,
        || format!("must be >= min_away_s = {min_away_s} > 0, not {max_away_s}"),
    );
    let soc_min_pct = r.number(&t, "soc_min_pct", Some(DEFAULT_SOC_MIN_PCT));
    let soc_max_pct = r.number(&t, "soc_max_pct", Some(DEFAULT_SOC_MAX_PCT));
    let ok = 0.0 <= soc_min_pct && soc_min_pct <= soc_max_pct && soc_max_pct <= 100.0;
    r.check(&t, "soc_max_pct", ok, || {
        format!("must be within soc_min_pct = {soc_min_pct} ..= 100, not {soc_max_pct}")
    });
    let drivers = match read_tokens(&dir.join(&tokens_file)) {
        Ok(d) if d.is_empty() => Err(format!("{tokens_file}: no [[tokens]]")),
        other => other,
    };
    let drivers = drivers
        .map_err(|message| r.check(&t, "tokens", false, || message))
        .ok()?;
    Some(ArrivalsPlan {
        tokens_file,
        drivers,
        window_s,
        min_away_s,
        max_away_s,
        soc_min_pct,
        soc_max_pct,
        chargers: Vec::new(),
    })
}

fn read_tokens(
    path: &Path,
) -> Result<
    Vec<(
        gridvisor_actors::authorization::TokenId,
        gridvisor_actors::authorization::Contract,
    )>,
    String,
> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("{name}: cannot open: {e}"))?;
    if meta.len() > MAX_SCENARIO_BYTES as u64 {
        return Err(format!(
            "{name}: larger than the limit of {MAX_SCENARIO_BYTES} bytes"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    parse_seed(&name, &text)
}

/// The chargers vehicles arrive at: every charger of `topology` no `[[vehicles]]` entry
/// binds; a problem when there is none.
pub(super) fn chargers(plan: &mut ArrivalsPlan, topology: &Topology, problems: &mut Vec<Problem>) {
    plan.chargers = topology
        .segments()
        .flat_map(|(_, s)| s.chargers.iter())
        .filter(|c| !topology.vehicles.iter().any(|v| v.charger == c.id))
        .map(|c| c.id.clone())
        .collect();
    if plan.chargers.is_empty() {
        problems.push(Problem::new(
            "workload.arrivals",
            None,
            "every charger is bound to a [[vehicles]] entry: arriving vehicles need a free one"
                .to_owned(),
        ));
    }
}
