//! The grid the simulated devices sit on: nominal voltage and frequency with a small
//! deterministic noise, and islanding.
//!
//! Invariants:
//! - A sample is a pure function of the model (nominal values, seed, noise amplitudes), the
//!   islanding state and the simulated time asked for: the same seed and the same times give
//!   the same samples, so a chaos run replays exactly and may run faster than real time.
//! - Connected, a sample stays within the noise amplitudes of nominal, well inside the
//!   continuous operation range of its grid ([`GridSample::in_band`]: IEEE 1547-2018 at
//!   60 Hz, EN 50549-1 at 50 Hz).
//! - Islanded, voltage and frequency drift away from nominal at the configured rates up to
//!   the configured deviations, which default to beyond the must-trip limits of both grids
//!   (1.20 pu, and +2 Hz: 62 Hz at 60 Hz, 52 Hz at 50 Hz), so a device or a protection relay
//!   sees the island.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use super::SimError;

/// Continuous operation range of IEEE 1547-2018 (category II): voltage 0.88..=1.10 pu.
pub const BAND_V_PU: (f64, f64) = (0.88, 1.10);
/// Continuous operation range of IEEE 1547-2018 (60 Hz systems): frequency nominal -1.5 Hz
/// (UF1 58.5 Hz) ..= nominal +1.2 Hz (OF1 61.2 Hz).
pub const BAND_HZ: (f64, f64) = (-1.5, 1.2);
/// Operating range of EN 50549-1:2019 (50 Hz systems, clause 4.4.2): 47.5 ..= 51.5 Hz, as
/// offsets from nominal.
pub const BAND_HZ_50: (f64, f64) = (-2.5, 1.5);
/// Below this nominal frequency a grid is a 50 Hz one (its bands are [`BAND_HZ_50`]).
const SPLIT_50_60_HZ: f64 = 55.0;
/// Noise changes value once per this much simulated time (a sample-and-hold noise: two reads
/// within one period agree).
pub const NOISE_PERIOD: Duration = Duration::from_millis(100);

/// What the grid looks like: nominal values, noise, how an island drifts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridModel {
    /// Nominal line-to-neutral voltage, V. Default 230.
    pub nominal_v: f64,
    /// Nominal frequency, Hz. Default 50.
    pub nominal_hz: f64,
    /// Seed of the noise.
    pub seed: u64,
    /// Noise amplitude of the voltage, pu (peak). Default 0.005 (±0.5 %).
    pub noise_v_pu: f64,
    /// Noise amplitude of the frequency, Hz (peak). Default 0.01.
    pub noise_hz: f64,
    /// Islanded, the voltage rises by this much per second, pu/s. Default 0.1.
    pub island_v_rate_pu: f64,
    /// Islanded, the voltage rises at most this far above nominal, pu. Default 0.25 (1.25 pu,
    /// beyond the 1.20 pu must-trip limit).
    pub island_v_dev_pu: f64,
    /// Islanded, the frequency rises by this much per second, Hz/s. Default 1.
    pub island_hz_rate: f64,
    /// Islanded, the frequency rises at most this far above nominal, Hz. Default 2.5 (beyond
    /// the +2 Hz must-trip limit).
    pub island_hz_dev: f64,
}

impl GridModel {
    /// A 230 V / 50 Hz grid with the documented defaults and this noise seed.
    pub fn new(seed: u64) -> Self {
        Self {
            nominal_v: 230.0,
            nominal_hz: 50.0,
            seed,
            noise_v_pu: 0.005,
            noise_hz: 0.01,
            island_v_rate_pu: 0.1,
            island_v_dev_pu: 0.25,
            island_hz_rate: 1.0,
            island_hz_dev: 2.5,
        }
    }
}

impl GridModel {
    /// Checks the fields against what the devices' register maps can show: nominal voltage
    /// in (0, 1000] V, nominal frequency in 40..=70 Hz, noise and drift finite and not
    /// negative, an island at most 0.5 pu and 10 Hz away. The error names the field.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field: &str, detail: String| {
            Err(SimError::Config {
                field: format!("grid.{field}"),
                detail,
            })
        };
        if !(self.nominal_v > 0.0 && self.nominal_v <= 1000.0) {
            return bad(
                "nominal_v",
                format!("must be in (0, 1000] V, got {}", self.nominal_v),
            );
        }
        if !(40.0..=70.0).contains(&self.nominal_hz) {
            return bad(
                "nominal_hz",
                format!("must be in 40..=70 Hz, got {}", self.nominal_hz),
            );
        }
        let limits = [
            ("noise_v_pu", self.noise_v_pu, 0.1),
            ("noise_hz", self.noise_hz, 1.0),
            ("island_v_rate_pu", self.island_v_rate_pu, 10.0),
            ("island_v_dev_pu", self.island_v_dev_pu, 0.5),
            ("island_hz_rate", self.island_hz_rate, 100.0),
            ("island_hz_dev", self.island_hz_dev, 10.0),
        ];
        for (field, v, max) in limits {
            if !(0.0..=max).contains(&v) {
                return bad(field, format!("must be in 0..={max}, got {v}"));
            }
        }
        Ok(())
    }
}

/// Voltage and frequency at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridSample {
    /// Line-to-neutral voltage, V.
    pub v: f64,
    /// Frequency, Hz.
    pub hz: f64,
    /// Nominal voltage, for [`GridSample::in_band`].
    pub nominal_v: f64,
    /// Nominal frequency, for [`GridSample::in_band`].
    pub nominal_hz: f64,
}

impl GridSample {
    /// Whether voltage and frequency are inside the continuous operation range
    /// ([`BAND_V_PU`], and [`BAND_HZ`] at 60 Hz or [`BAND_HZ_50`] at 50 Hz); outside, a DER
    /// must cease to energize (after the standard's clearing time, which the simulation does
    /// not model).
    pub fn in_band(&self) -> bool {
        let pu = self.v / self.nominal_v;
        let dhz = self.hz - self.nominal_hz;
        let band = if self.nominal_hz < SPLIT_50_60_HZ {
            BAND_HZ_50
        } else {
            BAND_HZ
        };
        (BAND_V_PU.0..=BAND_V_PU.1).contains(&pu) && (band.0..=band.1).contains(&dhz)
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of the seed and the noise slot.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in -1..=1 from the seed, the time slot and a stream (0 voltage, 1 frequency).
fn noise(seed: u64, slot: u64, stream: u64) -> f64 {
    let h = mix(seed ^ mix(slot.wrapping_mul(2).wrapping_add(stream)));
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// The grid at simulated time `t`, islanded since `islanded_since` (if so): a pure function.
pub fn sample(model: &GridModel, islanded_since: Option<Duration>, t: Duration) -> GridSample {
    let slot = (t.as_nanos() / NOISE_PERIOD.as_nanos()) as u64;
    let mut pu = 1.0 + model.noise_v_pu * noise(model.seed, slot, 0);
    let mut hz = model.nominal_hz + model.noise_hz * noise(model.seed, slot, 1);
    if let Some(since) = islanded_since {
        let s = t.saturating_sub(since).as_secs_f64();
        pu += (s * model.island_v_rate_pu).min(model.island_v_dev_pu);
        hz += (s * model.island_hz_rate).min(model.island_hz_dev);
    }
    GridSample {
        v: model.nominal_v * pu,
        hz,
        nominal_v: model.nominal_v,
        nominal_hz: model.nominal_hz,
    }
}

#[derive(Debug)]
struct GridState {
    islanded_since: Option<Duration>,
    now: Duration,
}

/// The grid shared by the devices of a site (clones share it).
///
/// Devices sample it at their own simulated time; the grid's "now" is the latest time any
/// device sampled it, which is when [`Grid::island`] starts the island.
#[derive(Debug, Clone)]
pub struct Grid {
    model: GridModel,
    state: Arc<Mutex<GridState>>,
}

impl Grid {
    /// A connected grid.
    pub fn new(model: GridModel) -> Self {
        Self {
            model,
            state: Arc::new(Mutex::new(GridState {
                islanded_since: None,
                now: Duration::ZERO,
            })),
        }
    }

    /// The model.
    pub fn model(&self) -> &GridModel {
        &self.model
    }

    fn lock(&self) -> MutexGuard<'_, GridState> {
        // The state is two plain values, valid whatever a panicking holder did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The grid at simulated time `t` (which also advances the grid's "now").
    pub fn sample(&self, t: Duration) -> GridSample {
        let mut st = self.lock();
        st.now = st.now.max(t);
        sample(&self.model, st.islanded_since, t)
    }

    /// Opens the point of common coupling: from the grid's "now" on, voltage and frequency
    /// drift out of band. Islanding an island changes nothing.
    pub fn island(&self) {
        let mut st = self.lock();
        if st.islanded_since.is_none() {
            st.islanded_since = Some(st.now);
        }
    }

    /// Closes the point of common coupling: nominal values (with noise) again at once.
    pub fn reconnect(&self) {
        self.lock().islanded_since = None;
    }

    /// Whether the grid is islanded.
    pub fn is_islanded(&self) -> bool {
        self.lock().islanded_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_grid_is_deterministic_and_in_band() {
        let m = GridModel::new(7);
        let mut distinct = std::collections::BTreeSet::new();
        for ms in (0..60_000).step_by(50) {
            let t = Duration::from_millis(ms);
            let s = sample(&m, None, t);
            assert_eq!(s, sample(&m, None, t));
            assert!((s.v / 230.0 - 1.0).abs() <= 0.005 + 1e-12, "{s:?}");
            assert!((s.hz - 50.0).abs() <= 0.01 + 1e-12, "{s:?}");
            assert!(s.in_band());
            distinct.insert(s.v.to_bits());
        }
        // It is noise, not a constant; another seed gives other values.
        assert!(distinct.len() > 100);
        let other = GridModel::new(8);
        assert_ne!(
            sample(&m, None, Duration::from_secs(1)),
            sample(&other, None, Duration::from_secs(1))
        );
    }

    #[test]
    fn island_drifts_out_of_band_and_reconnect_returns() {
        let grid = Grid::new(GridModel::new(1));
        assert!(grid.sample(Duration::from_secs(10)).in_band());
        grid.island();
        assert!(grid.is_islanded());
        // Just after the island: still close to nominal.
        assert!(grid.sample(Duration::from_millis(10_100)).in_band());
        let s = grid.sample(Duration::from_secs(15));
        assert!(!s.in_band(), "{s:?}");
        assert!(s.v / 230.0 > 1.20, "past the must-trip voltage: {s:?}");
        assert!(s.hz > 52.0, "past the must-trip frequency: {s:?}");
        // The drift saturates.
        let late = grid.sample(Duration::from_secs(1000));
        assert!((late.hz - 52.5).abs() <= 0.011 && (late.v / 230.0 - 1.25).abs() <= 0.0051);
        grid.reconnect();
        assert!(!grid.is_islanded());
        assert!(grid.sample(Duration::from_secs(1001)).in_band());
    }

    #[test]
    fn each_grid_has_its_own_frequency_band() {
        let at = |nominal_hz: f64, hz: f64| GridSample {
            v: 230.0,
            hz,
            nominal_v: 230.0,
            nominal_hz,
        };
        // 50 Hz: EN 50549-1's 47.5..=51.5 Hz.
        assert!(at(50.0, 50.0).in_band() && at(50.0, 47.6).in_band() && at(50.0, 51.4).in_band());
        assert!(!at(50.0, 47.4).in_band() && !at(50.0, 51.6).in_band());
        // 60 Hz: IEEE 1547's 58.5..=61.2 Hz; a 50 Hz reading on a 60 Hz grid is far out.
        assert!(at(60.0, 58.6).in_band() && at(60.0, 61.1).in_band());
        assert!(!at(60.0, 58.4).in_band() && !at(60.0, 61.3).in_band());
        assert!(!at(60.0, 50.0).in_band());
        // A 60 Hz grid with noise stays in band, as the 50 Hz one does.
        let m = GridModel {
            nominal_hz: 60.0,
            ..GridModel::new(3)
        };
        for ms in (0..10_000).step_by(50) {
            assert!(sample(&m, None, Duration::from_millis(ms)).in_band());
        }
    }

    #[test]
    fn models_are_validated() {
        assert!(GridModel::new(0).validate().is_ok());
        let bad = [
            GridModel {
                nominal_v: 11_000.0,
                ..GridModel::new(0)
            },
            GridModel {
                nominal_hz: 400.0,
                ..GridModel::new(0)
            },
            GridModel {
                noise_hz: f64::NAN,
                ..GridModel::new(0)
            },
            GridModel {
                island_v_dev_pu: -0.1,
                ..GridModel::new(0)
            },
        ];
        for m in bad {
            assert!(
                matches!(m.validate(), Err(SimError::Config { .. })),
                "{m:?}"
            );
        }
    }
}
