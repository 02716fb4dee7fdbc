//! Vehicles as they arrive (issue 21): drivers known only by their id token come and go over a
//! window (an hour by default), each visit at a random *free* charger, all drawn from a seed,
//! so a run is reproducible and the same driver parks at different bays on different visits.
//!
//! Two parts, as elsewhere in the simulator:
//! - [`plan`], pure: the visits (driver, charger, arrive, leave) for a seed; no charger holds
//!   two vehicles at once, no driver is in two places, every arrival lies in the window; a
//!   driver who finds every bay taken drives away (the visit is dropped);
//! - [`ArrivalDriver`]: plays a plan on running charge points, time as an argument
//!   ([`ArrivalDriver::tick`] with the time since the start), plugging each visit's vehicle in
//!   with its driver's token and its needs (NotifyEVChargingNeeds with V2X parameters on 2.1),
//!   and unplugging it when it leaves.
//!
//! The node accepts a token only where its authorization allows it; until the node has an
//! authorization list (issue 21, item 1), this mode runs against a CSMS that accepts any token
//! (the tests') and the demo keeps its fixed bays by default.

use std::time::{Duration, SystemTime};

use super::charge_point::{ChargePoint, CommandError};
use super::vehicle::{EvNeeds, Vehicle};

/// The default window vehicles arrive in: an hour.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// The default shortest stay.
pub const DEFAULT_MIN_STAY: Duration = Duration::from_secs(5 * 60);
/// The default longest stay.
pub const DEFAULT_MAX_STAY: Duration = Duration::from_secs(20 * 60);
/// The most visits a plan holds (a bound on memory whatever the configuration).
pub const MAX_VISITS: usize = 100_000;

/// How visits are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrivalConfig {
    /// The seed: the same seed, drivers and chargers give the same plan.
    pub seed: u64,
    /// Arrivals fall in `[0, window)` from the start.
    pub window: Duration,
    /// Shortest stay, and shortest time away between two visits of one driver.
    pub min_stay: Duration,
    /// Longest stay, and longest time away.
    pub max_stay: Duration,
}

impl ArrivalConfig {
    /// The defaults with `seed`.
    pub fn new(seed: u64) -> ArrivalConfig {
        ArrivalConfig {
            seed,
            window: DEFAULT_WINDOW,
            min_stay: DEFAULT_MIN_STAY,
            max_stay: DEFAULT_MAX_STAY,
        }
    }

    fn check(&self) -> Result<(), ArrivalError> {
        if self.min_stay.is_zero() || self.min_stay > self.max_stay {
            return Err(ArrivalError::Stay {
                min: self.min_stay,
                max: self.max_stay,
            });
        }
        if self.window.is_zero() {
            return Err(ArrivalError::Window);
        }
        Ok(())
    }
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArrivalError {
    /// Stays must be positive with `min_stay <= max_stay`.
    #[error("min_stay {min:?} must be > 0 and <= max_stay {max:?}")]
    Stay {
        /// The shortest stay given.
        min: Duration,
        /// The longest stay given.
        max: Duration,
    },
    /// The window must be positive.
    #[error("the arrival window must be > 0")]
    Window,
}

/// One visit: `driver` is at `charger` from `arrive` to `leave` (times from the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    /// Index of the driver.
    pub driver: usize,
    /// Index of the charger.
    pub charger: usize,
    /// Arrival.
    pub arrive: Duration,
    /// Departure.
    pub leave: Duration,
}

/// SplitMix64: small, seeded, well mixed (not for secrets).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]` at millisecond resolution.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_millis() as u64 + 1;
        lo + Duration::from_millis(self.next() % span)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The visits of `drivers` drivers to `chargers` chargers (pure; see the module docs), by
/// arrival time.
pub fn plan(
    drivers: usize,
    chargers: usize,
    config: &ArrivalConfig,
) -> Result<Vec<Visit>, ArrivalError> {
    config.check()?;
    let mut rng = Rng(config.seed);
    // Each driver's own sequence: arrive, stay, be away, arrive again, within the window.
    let mut wishes = Vec::new();
    for driver in 0..drivers {
        let mut t = rng.between(Duration::ZERO, config.max_stay);
        while t < config.window && wishes.len() < MAX_VISITS {
            let stay = rng.between(config.min_stay, config.max_stay);
            wishes.push((t, driver, stay));
            t += stay + rng.between(config.min_stay, config.max_stay);
        }
    }
    wishes.sort_by_key(|w| (w.0, w.1));
    let mut busy_until = vec![Duration::ZERO; chargers];
    let mut visits = Vec::new();
    for (arrive, driver, stay) in wishes {
        let free: Vec<usize> = (0..chargers).filter(|c| busy_until[*c] <= arrive).collect();
        if free.is_empty() {
            continue; // every bay taken: the driver drives away
        }
        let charger = free[rng.below(free.len())];
        busy_until[charger] = arrive + stay;
        visits.push(Visit {
            driver,
            charger,
            arrive,
            leave: arrive + stay,
        });
    }
    Ok(visits)
}

/// A driver: the token they present, their vehicle as it arrives, what the EV asks for.
#[derive(Debug, Clone)]
pub struct Driver {
    /// The id token (RFID uid, eMAID, ...).
    pub token: String,
    /// The vehicle as it arrives.
    pub vehicle: Vehicle,
    /// Target and V2X floor (the departure is the visit's).
    pub target_soc: f64,
    /// Lowest state of charge V2X may discharge to.
    pub min_v2x_soc: f64,
}

/// What a tick did.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// `token` plugged in at `charger` (an index).
    Arrived {
        /// The driver's token.
        token: String,
        /// The charger's index.
        charger: usize,
    },
    /// `token` left `charger`.
    Left {
        /// The driver's token.
        token: String,
        /// The charger's index.
        charger: usize,
    },
    /// A command to the charge point failed.
    Failed {
        /// The charger's index.
        charger: usize,
        /// Why.
        error: CommandError,
    },
}

/// Plays a plan on charge points (see the module docs).
pub struct ArrivalDriver {
    chargers: Vec<ChargePoint>,
    drivers: Vec<Driver>,
    visits: Vec<Visit>,
    /// Wall-clock time at the plan's start (departures are wall-clock times).
    start: SystemTime,
    /// Visits arrived so far / left so far (visits are by arrival; leaves are looked up).
    next: usize,
    present: Vec<Visit>,
}

impl ArrivalDriver {
    /// A driver for `visits` of `drivers` on `chargers` (indices as in [`plan`]), starting at
    /// wall-clock `start`.
    pub fn new(
        chargers: Vec<ChargePoint>,
        drivers: Vec<Driver>,
        visits: Vec<Visit>,
        start: SystemTime,
    ) -> ArrivalDriver {
        ArrivalDriver {
            chargers,
            drivers,
            visits,
            start,
            next: 0,
            present: Vec::new(),
        }
    }

    /// The visits being played.
    pub fn visits(&self) -> &[Visit] {
        &self.visits
    }

    /// Brings time to `elapsed` since the start: who leaves leaves, then who arrives arrives.
    pub fn tick(&mut self, elapsed: Duration) -> Vec<Arrival> {
        let mut out = Vec::new();
        let (leaving, staying): (Vec<Visit>, Vec<Visit>) =
            self.present.iter().partition(|v| v.leave <= elapsed);
        self.present = staying;
        for v in leaving {
            let token = self.drivers[v.driver].token.clone();
            out.push(match self.chargers[v.charger].unplug() {
                Ok(_) => Arrival::Left {
                    token,
                    charger: v.charger,
                },
                Err(error) => Arrival::Failed {
                    charger: v.charger,
                    error,
                },
            });
        }
        while let Some(v) = self.visits.get(self.next).copied() {
            if v.arrive > elapsed {
                break;
            }
            self.next += 1;
            out.push(self.arrive(v));
        }
        out
    }

    fn arrive(&mut self, v: Visit) -> Arrival {
        let d = &self.drivers[v.driver];
        let needs = EvNeeds {
            departure: self.start + v.leave,
            target_soc: d.target_soc,
            min_v2x_soc: d.min_v2x_soc,
        };
        let cp = &self.chargers[v.charger];
        match cp.plug_in_with_needs(d.vehicle.clone(), Some(d.token.clone()), needs) {
            Ok(()) => {
                self.present.push(v);
                Arrival::Arrived {
                    token: d.token.clone(),
                    charger: v.charger,
                }
            }
            Err(error) => Arrival::Failed {
                charger: v.charger,
                error,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_seeded_and_keeps_bays_and_drivers_apart() {
        let config = ArrivalConfig::new(7);
        let a = plan(12, 5, &config).unwrap();
        assert_eq!(a, plan(12, 5, &config).unwrap(), "same seed, same plan");
        assert_ne!(a, plan(12, 5, &ArrivalConfig::new(8)).unwrap());
        assert!(a.len() > 12, "drivers come back: {}", a.len());
        for (i, v) in a.iter().enumerate() {
            assert!(v.arrive < config.window && v.leave > v.arrive, "{v:?}");
            assert!(v.leave - v.arrive >= config.min_stay);
            for w in &a[i + 1..] {
                let overlap = w.arrive < v.leave && v.arrive < w.leave;
                assert!(!(overlap && w.charger == v.charger), "{v:?} {w:?}");
                assert!(!(overlap && w.driver == v.driver), "{v:?} {w:?}");
            }
        }
        // Vehicles move between bays: some driver uses two chargers over the hour.
        let moved = (0..12).any(|d| {
            let mut bays: Vec<usize> = a
                .iter()
                .filter(|v| v.driver == d)
                .map(|v| v.charger)
                .collect();
            bays.dedup();
            bays.len() > 1
        });
        assert!(moved, "{a:?}");
        assert!(a.windows(2).all(|w| w[0].arrive <= w[1].arrive));
    }

    #[test]
    fn a_full_site_turns_drivers_away_and_bad_stays_are_named() {
        let config = ArrivalConfig::new(1);
        let one_bay = plan(20, 1, &config).unwrap();
        let many = plan(20, 20, &config).unwrap();
        assert!(one_bay.len() < many.len());
        let mut bad = config;
        bad.min_stay = Duration::from_secs(60 * 60);
        bad.max_stay = Duration::from_secs(60);
        assert!(matches!(plan(1, 1, &bad), Err(ArrivalError::Stay { .. })));
        assert_eq!(plan(0, 3, &config).unwrap(), []);
    }
}
