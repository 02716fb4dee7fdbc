//! The vehicles-arriving workload (issue 21): drivers known only by their id token arrive at
//! random *free* chargers, each under the contract an authorization list gives their token
//! (minimum SoC, V2G, departure), and leave at the departure that contract sets.
//!
//! A scenario turns it on with `[workload.arrivals]`:
//!
//! ```toml
//! [workload.arrivals]
//! tokens = "drivers/tokens.toml"  # an [authorization] seed file ([[tokens]]), relative to the scenario
//! window_s = 600                  # arrivals fall in [0, window_s) (default: the run)
//! min_away_s = 30                 # a driver is away this long at least between visits (default 60)
//! max_away_s = 120                # and at most this long (default 300)
//! soc_min_pct = 20                # a vehicle arrives with a state of charge drawn from
//! soc_max_pct = 90                # [soc_min_pct, soc_max_pct] (defaults 20, 90)
//! ```
//!
//! The chargers are those no `[[vehicles]]` entry binds. Two parts:
//! - [`plan`], pure: every visit (driver, charger, arrival, departure, arrival SoC) drawn from
//!   the run's seed up front; no charger holds two vehicles, no driver is in two places, a
//!   driver who finds every bay taken drives away (the visit is dropped);
//! - [`arrive`] and [`leave`]: what the runner does when a visit is due, through the node's
//!   own `Node::plug_token` / `Node::unplug_token` (what the CSMS does on a transaction).
//!
//! Time: the node's clock is the run's; the wall clock the contracts' departures and the EV's
//! reports need is [`WALL_EPOCH_UNIX_S`] plus the node's clock, so a run is deterministic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gridvisor_actors::authorization::{Contract, TokenId, ASSUMED_CAPACITY_KWH};
use gridvisor_actors::device::Battery;
use gridvisor_actors::runtime::{Node, NodeError};
use gridvisor_actors::session::{EvNeeds, EvReport};
use gridvisor_supervisors::intensity::SplitMix64;

/// The wall clock at the node clock's zero, Unix s (2026-01-01T08:00:00Z): a fixed morning,
/// so time-of-day departures (`depart_at`) fall the same way in every run.
pub const WALL_EPOCH_UNIX_S: u64 = 1_767_254_400;
/// The most visits a plan holds (a bound on memory whatever the scenario).
pub const MAX_VISITS: usize = 10_000;
/// The shortest stay, ms: a contract whose departure is already past (a `depart_at` just
/// before the arrival) still plugs in for this long.
pub const MIN_STAY_MS: u64 = 1_000;
/// Mixed into the run's seed for the arrivals' own stream, so that adding arrivals to a
/// scenario does not move its other draws.
const STREAM: u64 = 0x5645_4849_434c_4553; // "VEHICLES"

/// `[workload.arrivals]`, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrivalsPlan {
    /// The token file as given.
    pub tokens_file: String,
    /// The drivers: each token with its contract, in file order.
    pub drivers: Vec<(TokenId, Contract)>,
    /// Arrivals fall in `[0, window_s)`, s.
    pub window_s: f64,
    /// Shortest time away between two visits of one driver, s.
    pub min_away_s: f64,
    /// Longest time away, s.
    pub max_away_s: f64,
    /// Lowest arrival state of charge, %.
    pub soc_min_pct: f64,
    /// Highest arrival state of charge, %.
    pub soc_max_pct: f64,
    /// The chargers vehicles arrive at (those no `[[vehicles]]` entry binds), in topology order.
    pub chargers: Vec<String>,
}

/// One visit: driver `driver` is at charger `charger` from `arrive_ms` to `leave_ms` (node
/// clock), arriving with `soc_pct`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Visit {
    /// Index into [`ArrivalsPlan::drivers`].
    pub driver: usize,
    /// Index into [`ArrivalsPlan::chargers`].
    pub charger: usize,
    /// Arrival, ms.
    pub arrive_ms: u64,
    /// Departure, ms (the contract's).
    pub leave_ms: u64,
    /// State of charge on arrival, %.
    pub soc_pct: f64,
}

/// The wall clock at node time `ms`.
pub fn wall(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(WALL_EPOCH_UNIX_S) + Duration::from_millis(ms)
}

fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + rng.next_f64() * (hi - lo)
}

/// Every visit of `a` for `seed` (pure; see the module docs), by arrival.
pub fn plan(a: &ArrivalsPlan, seed: u64) -> Vec<Visit> {
    let mut rng = SplitMix64::new(seed ^ STREAM);
    let window_ms = (a.window_s * 1_000.0).round() as u64;
    // Each driver's own sequence: arrive, stay as the contract says, be away, arrive again.
    let mut wishes = Vec::new();
    // The first arrival, as every later one, comes after a time away.
    for (driver, (_, contract)) in a.drivers.iter().enumerate() {
        let mut t = (uniform(&mut rng, 0.0, a.max_away_s) * 1_000.0).round() as u64;
        while t < window_ms && wishes.len() < MAX_VISITS {
            let (depart, _) = contract.departure(wall(t));
            let stay_ms = depart
                .duration_since(wall(t))
                .map_or(0, |d| d.as_millis() as u64)
                .max(MIN_STAY_MS);
            let soc = uniform(&mut rng, a.soc_min_pct, a.soc_max_pct);
            wishes.push((t, driver, stay_ms, soc));
            let away = uniform(&mut rng, a.min_away_s, a.max_away_s);
            t += stay_ms + (away * 1_000.0).round() as u64;
        }
    }
    wishes.sort_by_key(|w| (w.0, w.1));
    let mut busy_until = vec![0u64; a.chargers.len()];
    let mut visits = Vec::new();
    for (arrive_ms, driver, stay_ms, soc_pct) in wishes {
        let free: Vec<usize> = (0..busy_until.len())
            .filter(|c| busy_until[*c] <= arrive_ms)
            .collect();
        if free.is_empty() {
            continue; // every bay taken: the driver drives away
        }
        let charger = free[(rng.next_u64() % free.len() as u64) as usize];
        busy_until[charger] = arrive_ms + stay_ms;
        visits.push(Visit {
            driver,
            charger,
            arrive_ms,
            leave_ms: arrive_ms + stay_ms,
            soc_pct: (soc_pct * 100.0).round() / 100.0,
        });
    }
    visits
}

/// The floor the SoC invariant holds a visit's vehicle to: the contract's minimum (or the
/// arrival SoC, if lower) for a V2G contract; the arrival SoC itself for one without V2G
/// (never discharged at all).
pub fn floor_pct(contract: &Contract, visit: &Visit) -> f64 {
    if contract.v2g {
        contract.min_soc_pct.min(visit.soc_pct)
    } else {
        visit.soc_pct
    }
}

/// Visit `v` arrives: its vehicle plugs in at its charger with its token, under its
/// contract, and its EV reports its SoC and the contract's departure (NotifyEVChargingNeeds
/// as a station passes it on).
pub async fn arrive(
    node: &Node,
    a: &ArrivalsPlan,
    v: &Visit,
    charger_max_kw: f64,
) -> Result<(), NodeError> {
    let (token, contract) = &a.drivers[v.driver];
    let now = wall(v.arrive_ms);
    let unix = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    let capacity_kwh = contract.capacity_kwh.unwrap_or(ASSUMED_CAPACITY_KWH);
    let report = EvReport {
        soc: Some((v.soc_pct, unix(now))),
        needs: Some(EvNeeds {
            at_unix_s: unix(now),
            departure_unix_s: Some(unix(wall(v.leave_ms))),
            capacity_kwh: Some(capacity_kwh),
            soc_pct: Some(v.soc_pct),
            ..EvNeeds::default()
        }),
        terms: None,
        ..EvReport::default()
    };
    let battery = Battery {
        capacity_kwh,
        soc_pct: v.soc_pct,
        max_kw: charger_max_kw,
    };
    let charger = &a.chargers[v.charger];
    node.plug_token(charger, &token.value, contract, battery, &report, now)
        .await
}

/// Visit `v` leaves: its session ends.
pub async fn leave(node: &Node, a: &ArrivalsPlan, v: &Visit) -> Result<(), NodeError> {
    let (token, _) = &a.drivers[v.driver];
    node.unplug_token(&a.chargers[v.charger], &token.value)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drivers(n: usize, stay_s: u64) -> Vec<(TokenId, Contract)> {
        (0..n)
            .map(|i| {
                let id = TokenId::new("ISO14443", &format!("TAG-{i}")).unwrap();
                let c = Contract {
                    name: format!("driver {i}"),
                    stay_s: Some(stay_s),
                    ..Contract::unknown()
                };
                (id, c)
            })
            .collect()
    }

    fn arrivals(n: usize, chargers: usize, stay_s: u64) -> ArrivalsPlan {
        ArrivalsPlan {
            tokens_file: "t.toml".into(),
            drivers: drivers(n, stay_s),
            window_s: 600.0,
            min_away_s: 10.0,
            max_away_s: 60.0,
            soc_min_pct: 20.0,
            soc_max_pct: 90.0,
            chargers: (0..chargers).map(|c| format!("evse-{c}")).collect(),
        }
    }

    #[test]
    fn a_plan_keeps_bays_and_drivers_apart_and_honours_each_contract() {
        let a = arrivals(8, 3, 120);
        let visits = plan(&a, 7);
        assert!(visits.len() > 8, "{} visits", visits.len());
        for (i, v) in visits.iter().enumerate() {
            assert_eq!(v.leave_ms - v.arrive_ms, 120_000, "the contract's stay");
            assert!(v.arrive_ms < 600_000);
            assert!((20.0..=90.0).contains(&v.soc_pct));
            for w in &visits[i + 1..] {
                let overlap = w.arrive_ms < v.leave_ms;
                assert!(!(overlap && w.charger == v.charger), "{v:?} and {w:?}");
                assert!(!(overlap && w.driver == v.driver), "{v:?} and {w:?}");
            }
        }
        // The same driver parks at more than one bay over the run.
        let bays: std::collections::BTreeSet<usize> = visits
            .iter()
            .filter(|v| v.driver == 0)
            .map(|v| v.charger)
            .collect();
        assert!(bays.len() > 1 || visits.iter().filter(|v| v.driver == 0).count() < 2);
    }

    #[test]
    fn a_plan_is_the_seeds_and_a_full_site_turns_drivers_away() {
        let a = arrivals(8, 3, 120);
        assert_eq!(plan(&a, 7), plan(&a, 7));
        assert_ne!(plan(&a, 7), plan(&a, 8));
        // One bay, long stays: most wishes find it taken.
        let a = arrivals(8, 1, 500);
        let visits = plan(&a, 7);
        assert!(!visits.is_empty() && visits.len() < 8, "{visits:?}");
    }

    #[test]
    fn a_v2g_contract_floors_at_its_minimum_and_charge_only_at_the_arrival_soc() {
        let (_, mut c) = drivers(1, 60).remove(0);
        let v = Visit {
            driver: 0,
            charger: 0,
            arrive_ms: 0,
            leave_ms: 1,
            soc_pct: 55.0,
        };
        assert_eq!(floor_pct(&c, &v), 55.0);
        c.v2g = true;
        c.min_soc_pct = 30.0;
        assert_eq!(floor_pct(&c, &v), 30.0);
        c.min_soc_pct = 70.0;
        assert_eq!(floor_pct(&c, &v), 55.0);
    }
}
