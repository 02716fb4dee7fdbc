//! The safe-state ladder of one transformer segment: Normal → Limited(cap) → ChargeOnly →
//! Tripped.
//!
//! Every fault source asks for a level; the segment's level is the most severe level any
//! fault asks for (two caps combine to the smaller). A fault that clears keeps asking for its
//! level until it has stayed clear for the hold time (IEEE 1547-2018's enter-service delay,
//! 300 s by default), so a flapping cause cannot flap the segment. Local safety always clamps
//! remote dispatch: [`SafeStateLadder::clamp`] is applied to every setpoint before it reaches a
//! device.
//!
//! Time is injected: every call takes `now`, a monotonic [`Duration`] since an arbitrary
//! origin, so tests and chaos runs go faster than real time and replay exactly.
//!
//! | fault ([`Fault`]) | level (defaults, [`LadderConfig`]) |
//! | --- | --- |
//! | islanding: voltage or frequency outside a trip band for its clearing time (IEEE 1547-2018 at 60 Hz, EN 50549-1 at 50 Hz: [`GridFrequency`]), frequency changing faster than the ROCOF threshold over its window ([`RocofWindow`]), or grid voltage lost, while exporting | Tripped |
//! | no good grid reading for `max_reading_age` (500 ms): the segment is blind to islanding | ChargeOnly (`meter_stale`) |
//! | PTP offset over 1 ms / over 100 ms | ChargeOnly / Tripped |
//! | the clock source unsynchronised (no fresh reading, no grandmaster, port not following one) | ChargeOnly |
//! | grid controller keep-alive missing for 5 s | ChargeOnly |
//! | inverter core over 65 °C | Limited, derated linearly to 0 at 85 °C |
//! | an inverter's temperature unread N times in a row | Limited to 0 kW, as fully derated |
//! | transformer at its thermal limit | Limited to the transformer's allowance |
//! | node cannot see a majority of the cluster | ChargeOnly |
//! | a supervisor of the segment exceeded its restart intensity | ChargeOnly (and an alarm) |
//!
//! **Tripped locks out**, as protection relays do: whatever tripped the segment, it stays
//! Tripped (the cause [`FaultKey::Lockout`]) after its causes cleared and held, until an
//! operator resets it ([`SafeStateLadder::reset`], refused while a cause of the trip is
//! present or holding) or, when configured ([`LadderConfig::auto_reclose`]), until the
//! reclose delay has passed after the hold.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How safe a segment must be, from least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "level", rename_all = "snake_case")]
pub enum SafeState {
    /// No restriction.
    Normal,
    /// Power limited to `cap_kw` in both directions.
    Limited {
        /// The limit, kW (non-negative).
        cap_kw: f64,
    },
    /// No discharge; charging allowed.
    ChargeOnly,
    /// No power at all.
    Tripped,
}

impl SafeState {
    /// 0 (Normal) to 3 (Tripped).
    pub fn severity(&self) -> u8 {
        match self {
            SafeState::Normal => 0,
            SafeState::Limited { .. } => 1,
            SafeState::ChargeOnly => 2,
            SafeState::Tripped => 3,
        }
    }

    /// The more restrictive of two states (two caps: the smaller cap).
    pub fn most_restrictive(self, other: SafeState) -> SafeState {
        match (self, other) {
            (SafeState::Limited { cap_kw: a }, SafeState::Limited { cap_kw: b }) => {
                SafeState::Limited { cap_kw: a.min(b) }
            }
            (a, b) if b.severity() > a.severity() => b,
            (a, _) => a,
        }
    }

    /// Clamp an absolute setpoint (kW, negative = discharge) to what this state allows. A
    /// setpoint that is not a number is refused as 0 kW: when in doubt, no power.
    pub fn clamp(&self, setpoint_kw: f64) -> f64 {
        if !setpoint_kw.is_finite() {
            return 0.0;
        }
        match *self {
            SafeState::Normal => setpoint_kw,
            SafeState::Limited { cap_kw } => {
                let cap = if cap_kw.is_finite() {
                    cap_kw.max(0.0)
                } else {
                    0.0
                };
                setpoint_kw.clamp(-cap, cap)
            }
            SafeState::ChargeOnly => setpoint_kw.max(0.0),
            SafeState::Tripped => 0.0,
        }
    }
}

impl fmt::Display for SafeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SafeState::Normal => f.write_str("normal"),
            SafeState::Limited { cap_kw } => write!(f, "limited({cap_kw:.1} kW)"),
            SafeState::ChargeOnly => f.write_str("charge_only"),
            SafeState::Tripped => f.write_str("tripped"),
        }
    }
}

/// One trip band: a reading beyond `threshold` (above it for an over-band, below it for an
/// under-band) for at least `clearing_time` must trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripBand {
    /// The threshold (per unit of nominal voltage, or Hz).
    pub threshold: f64,
    /// True for an over-band (trip above), false for an under-band (trip below).
    pub over: bool,
    /// How long the reading must stay beyond the threshold.
    pub clearing_time: Duration,
}

impl TripBand {
    /// An over-band: trips above `threshold` after `ms` milliseconds.
    pub const fn over(threshold: f64, ms: u64) -> Self {
        TripBand {
            threshold,
            over: true,
            clearing_time: Duration::from_millis(ms),
        }
    }
    /// An under-band: trips below `threshold` after `ms` milliseconds.
    pub const fn under(threshold: f64, ms: u64) -> Self {
        TripBand {
            threshold,
            over: false,
            clearing_time: Duration::from_millis(ms),
        }
    }
    fn beyond(&self, value: f64) -> bool {
        if self.over {
            value > self.threshold
        } else {
            value < self.threshold
        }
    }
}

/// The four trip stages of one quantity, named as the standards name them: stage 2 is the
/// fast one further from nominal, stage 1 the slow one nearer to it. A valid set is ordered
/// `under2 < under1 < nominal < over1 < over2`, each stage 2 clearing no later than its
/// stage 1 (checked by the topology's validation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stages {
    /// OV2 / OF2: the fast over-stage.
    pub over2: TripBand,
    /// OV1 / OF1: the slow over-stage.
    pub over1: TripBand,
    /// UV1 / UF1: the slow under-stage.
    pub under1: TripBand,
    /// UV2 / UF2: the fast under-stage.
    pub under2: TripBand,
}

impl Stages {
    /// The bands in the order the ladder keeps them (over2, over1, under1, under2).
    pub fn bands(&self) -> Vec<TripBand> {
        vec![self.over2, self.over1, self.under1, self.under2]
    }
}

/// IEEE 1547-2018 default voltage trip settings, Category II (Table 11), per unit: OV2
/// 1.20/0.16 s, OV1 1.10/2 s, UV1 0.70/10 s, UV2 0.45/0.16 s. Voltage is per unit of the
/// meter's nominal, so the same defaults serve 50 Hz grids (EN 50549-1's voltage stages are
/// DSO-set within ranges that contain these).
pub const VOLTAGE_STAGES: Stages = Stages {
    over2: TripBand::over(1.20, 160),
    over1: TripBand::over(1.10, 2_000),
    under1: TripBand::under(0.70, 10_000),
    under2: TripBand::under(0.45, 160),
};

/// IEEE 1547-2018 default frequency trip settings for 60 Hz systems (Table 15, the same for
/// every category): OF2 62.0 Hz/0.16 s, OF1 61.2 Hz/300 s, UF1 58.5 Hz/300 s, UF2 56.5 Hz/0.16 s.
pub const FREQUENCY_STAGES_60HZ: Stages = Stages {
    over2: TripBand::over(62.0, 160),
    over1: TripBand::over(61.2, 300_000),
    under1: TripBand::under(58.5, 300_000),
    under2: TripBand::under(56.5, 160),
};

/// Frequency trip settings for 50 Hz systems after EN 50549-1:2019 (clause 4.9.3, interface
/// protection). The standard gives each stage a setting range (under-frequency 47.0..=50.0 Hz,
/// over-frequency 50.0..=52.0 Hz; stage 1 0.1..=100 s, stage 2 0.1..=5 s) and leaves the
/// values to the DSO. These are the two-stage values common in European DSO codes and the
/// inverters' EN 50549 grid profiles: OF2 52.0 Hz/0.1 s, OF1 51.5 Hz/2 s, UF1 47.5 Hz/2 s,
/// UF2 47.0 Hz/0.1 s (a single-stage code such as VDE-AR-N 4105, 47.5 and 51.5 Hz at 0.1 s,
/// is two overrides). 47.5..=51.5 Hz is also EN 50549-1's range of continued operation.
pub const FREQUENCY_STAGES_50HZ: Stages = Stages {
    over2: TripBand::over(52.0, 100),
    over1: TripBand::over(51.5, 2_000),
    under1: TripBand::under(47.5, 2_000),
    under2: TripBand::under(47.0, 100),
};

/// The default ROCOF (rate of change of frequency) trip threshold, Hz/s, at either
/// frequency: beyond what the standards require a plant to ride through, 2.0 Hz/s over a
/// 500 ms window (IEEE 1547-2018 clause 6.5.2.5, Category II; EN 50549-1:2019 clause 4.5.2,
/// ROCOF immunity). Sites under ENA EREC G99 (Great Britain) set its loss-of-mains RoCoF
/// setting, 1 Hz/s with a 500 ms delay.
pub const DEFAULT_ROCOF_HZ_PER_S: f64 = 2.0;
/// The window the ROCOF is measured over (the 500 ms of the standards above); it also
/// acts as the ROCOF's delay: a step that reverses within it counts less.
pub const DEFAULT_ROCOF_WINDOW: Duration = Duration::from_millis(500);
/// The default bound on the age of a segment's last good grid reading: older, the segment
/// cannot see an island in time (IEEE 1547-2018 allows 2 s to cease to energize).
pub const DEFAULT_MAX_READING_AGE: Duration = Duration::from_millis(500);
/// The most frequency readings a [`RocofWindow`] keeps (a bound, whatever the poll rate).
pub const ROCOF_MAX_SAMPLES: usize = 256;

/// The nominal frequency of the grid a site is on, which picks the default frequency bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridFrequency {
    /// 50 Hz (Europe, most of Asia and Africa): EN 50549-1.
    Hz50,
    /// 60 Hz (the Americas, parts of Asia): IEEE 1547-2018.
    Hz60,
}

impl GridFrequency {
    /// The nominal frequency, Hz.
    pub fn hz(self) -> f64 {
        match self {
            GridFrequency::Hz50 => 50.0,
            GridFrequency::Hz60 => 60.0,
        }
    }

    /// The grid of a nominal frequency, if it is 50 or 60 Hz.
    pub fn from_hz(hz: f64) -> Option<Self> {
        if hz == 50.0 {
            Some(GridFrequency::Hz50)
        } else if hz == 60.0 {
            Some(GridFrequency::Hz60)
        } else {
            None
        }
    }

    /// The default frequency trip stages of this grid.
    pub fn frequency_stages(self) -> Stages {
        match self {
            GridFrequency::Hz50 => FREQUENCY_STAGES_50HZ,
            GridFrequency::Hz60 => FREQUENCY_STAGES_60HZ,
        }
    }
}

impl Serialize for GridFrequency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.hz() as u64)
    }
}

/// The ladder's thresholds. Defaults follow DESIGN.md's fault table and IEEE 1547-2018's
/// default trip settings at 60 Hz ([`LadderConfig::for_grid`] for 50 Hz).
#[derive(Debug, Clone, PartialEq)]
pub struct LadderConfig {
    /// How long a cleared fault keeps its level (IEEE 1547's enter-service delay).
    pub hold_time: Duration,
    /// Voltage trip bands, per unit (default [`VOLTAGE_STAGES`]).
    pub voltage_bands: Vec<TripBand>,
    /// Frequency trip bands, Hz (default [`FREQUENCY_STAGES_60HZ`]).
    pub frequency_bands: Vec<TripBand>,
    /// Below this voltage (per unit) the grid is lost: islanding at once when exporting.
    pub voltage_lost_pu: f64,
    /// A frequency changing faster than this, Hz/s (either way), over [`Self::rocof_window`]
    /// is a loss of mains: islanding.
    pub rocof_hz_per_s: f64,
    /// The window the ROCOF is measured over.
    pub rocof_window: Duration,
    /// A segment whose last good grid reading is older than this is blind: ChargeOnly.
    pub max_reading_age: Duration,
    /// PTP offset above which the segment goes ChargeOnly.
    pub ptp_charge_only: Duration,
    /// PTP offset above which the segment trips.
    pub ptp_trip: Duration,
    /// Keep-alive silence after which the segment goes ChargeOnly.
    pub keepalive_timeout: Duration,
    /// Inverter core temperature above which output is derated, °C.
    pub derate_start_c: f64,
    /// Temperature at which the derated cap reaches 0 kW, °C.
    pub derate_zero_c: f64,
    /// Automatic reclose: how long after a trip's causes cleared and held the lockout ends
    /// by itself. None (the default): only an operator's reset ends it.
    pub auto_reclose: Option<Duration>,
}

impl LadderConfig {
    /// The defaults for a grid of `frequency`: its frequency stages, the rest as
    /// [`LadderConfig::default`].
    pub fn for_grid(frequency: GridFrequency) -> Self {
        LadderConfig {
            frequency_bands: frequency.frequency_stages().bands(),
            ..LadderConfig::default()
        }
    }
}

impl Default for LadderConfig {
    fn default() -> Self {
        LadderConfig {
            hold_time: Duration::from_secs(300),
            voltage_bands: VOLTAGE_STAGES.bands(),
            frequency_bands: FREQUENCY_STAGES_60HZ.bands(),
            voltage_lost_pu: 0.10,
            rocof_hz_per_s: DEFAULT_ROCOF_HZ_PER_S,
            rocof_window: DEFAULT_ROCOF_WINDOW,
            max_reading_age: DEFAULT_MAX_READING_AGE,
            ptp_charge_only: Duration::from_millis(1),
            ptp_trip: Duration::from_millis(100),
            keepalive_timeout: Duration::from_secs(5),
            derate_start_c: 65.0,
            derate_zero_c: 85.0,
            auto_reclose: None,
        }
    }
}

/// The rate of change of frequency over a sliding window of metered readings: pure, time is
/// an argument. The rate is the slope from the newest reading back to the newest one at
/// least a window older; until the readings span a window, or across a gap longer than the
/// window (no rate is made up over a time nothing was read), there is none.
#[derive(Debug, Clone)]
pub struct RocofWindow {
    window: Duration,
    samples: VecDeque<(Duration, f64)>,
}

impl RocofWindow {
    /// An empty window of `window` (at least 1 ms).
    pub fn new(window: Duration) -> Self {
        RocofWindow {
            window: window.max(Duration::from_millis(1)),
            samples: VecDeque::new(),
        }
    }

    /// Add the frequency read at `at`; returns the ROCOF over the window, Hz/s (negative:
    /// falling), once the readings span it. A reading that is not a number starts the series
    /// again; one older than the last (two meters of a segment, answering out of order) is
    /// left out.
    pub fn push(&mut self, at: Duration, hz: f64) -> Option<f64> {
        let restart = match self.samples.back() {
            _ if !hz.is_finite() => true,
            Some(&(last, _)) if at < last => return None,
            Some(&(last, _)) => at - last > self.window,
            None => false,
        };
        if restart {
            self.samples.clear();
        }
        if !hz.is_finite() {
            return None;
        }
        self.samples.push_back((at, hz));
        let start = at.checked_sub(self.window);
        while self.samples.len() > 1
            && (start.is_some_and(|s| self.samples[1].0 <= s)
                || self.samples.len() > ROCOF_MAX_SAMPLES)
        {
            self.samples.pop_front();
        }
        let &(t0, f0) = self.samples.front()?;
        let span = at - t0;
        (span >= self.window).then(|| (hz - f0) / span.as_secs_f64())
    }
}

/// Which fault source a level comes from. Per-device sources carry the device id, so that
/// one hot inverter clearing does not clear another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKey {
    /// Loss of grid / abnormal voltage or frequency while exporting.
    Islanding,
    /// PTP clock offset.
    ClockDrift,
    /// The clock source says the clock is not synchronised, or says nothing fresh.
    ClockUnsynchronised,
    /// Grid controller keep-alive.
    KeepAlive,
    /// An inverter's core temperature.
    OverTemperature(String),
    /// The transformer's thermal model.
    TransformerThermal,
    /// This node's view of the cluster majority.
    Quorum,
    /// The segment is changing owner (between cluster nodes): it goes through ChargeOnly.
    Handoff,
    /// A supervisor of the segment gave up (its path).
    RestartIntensity(String),
    /// The level checkpointed before the node or segment restarted.
    Restored,
    /// No good grid reading for longer than the bound: nothing would see islanding (or the
    /// transformer's load) in time.
    MeterStale,
    /// The segment tripped and is locked out: Tripped until an operator resets it (or the
    /// configured automatic reclose), after the trip's causes cleared and held.
    Lockout,
}

impl FaultKey {
    /// Every kind of fault source, as [`FaultKey::kind`] names it.
    pub const KINDS: [&'static str; 12] = [
        "islanding",
        "clock_drift",
        "keepalive",
        "over_temperature",
        "transformer_thermal",
        "quorum",
        "restart_intensity",
        "restored",
        "meter_stale",
        "handoff",
        "clock_unsynchronised",
        "lockout",
    ];

    /// The kind of source, without its instance (the `cause` label of
    /// `gridvisor_segment_fault_active`: bounded, whatever the inverter or supervisor).
    pub fn kind(&self) -> &'static str {
        match self {
            FaultKey::Islanding => Self::KINDS[0],
            FaultKey::ClockDrift => Self::KINDS[1],
            FaultKey::KeepAlive => Self::KINDS[2],
            FaultKey::OverTemperature(_) => Self::KINDS[3],
            FaultKey::TransformerThermal => Self::KINDS[4],
            FaultKey::Quorum => Self::KINDS[5],
            FaultKey::RestartIntensity(_) => Self::KINDS[6],
            FaultKey::Restored => Self::KINDS[7],
            FaultKey::MeterStale => Self::KINDS[8],
            FaultKey::Handoff => Self::KINDS[9],
            FaultKey::ClockUnsynchronised => Self::KINDS[10],
            FaultKey::Lockout => Self::KINDS[11],
        }
    }
}

/// An observation the ladder decides on.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// A grid reading at the point of connection.
    GridReading {
        /// Voltage, per unit of nominal.
        voltage_pu: f64,
        /// Frequency, Hz.
        frequency_hz: f64,
        /// Whether the segment was exporting (discharging) when it was read.
        exporting: bool,
    },
    /// The PTP offset measured by the clock monitor.
    ClockOffset(Duration),
    /// Whether the clock source is unsynchronised (`true`: no fresh reading, no grandmaster,
    /// or a port that does not follow one): ChargeOnly. Its offset, if any, says nothing.
    ClockUnsynchronised(bool),
    /// A keep-alive from the grid controller arrived.
    KeepAlive,
    /// An inverter's core temperature and its rated power.
    InverterTemperature {
        /// The inverter's id.
        inverter: String,
        /// Core temperature, °C.
        celsius: f64,
        /// Rated power, kW.
        rated_kw: f64,
    },
    /// The transformer thermal model's verdict: `Some(allowance)` at the limit, `None` when
    /// below it.
    TransformerLimit(Option<f64>),
    /// Whether this node sees a majority of the cluster.
    Quorum(bool),
    /// Whether the segment is being handed from one node to another (`true` from the moment
    /// the old owner lets go until the new owner has taken it): ChargeOnly meanwhile, held for
    /// the hold time after, as any cleared cause.
    Handoff(bool),
    /// An inverter's core temperature could not be read the configured number of times in
    /// a row: it counts as over-temperature, fully derated (a missing reading is never a cool
    /// one). The next good [`Fault::InverterTemperature`] replaces it.
    InverterTemperatureLost {
        /// The inverter's id.
        inverter: String,
    },
    /// The level a checkpoint recorded before a restart. A restarted segment does not know
    /// whether the cause is gone, so the level is held for the hold time, as if its cause
    /// had cleared at the moment of the restart.
    Restored(SafeState),
    /// A supervisor of the segment exceeded its restart intensity (`true`) or was restarted
    /// and runs again (`false`).
    RestartIntensity {
        /// The supervisor's path.
        supervisor: String,
        /// Exceeded now.
        exceeded: bool,
    },
}

/// A change of the segment's level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// When (the injected clock).
    #[serde(serialize_with = "ser_ms")]
    pub at: Duration,
    /// The level before.
    pub from: SafeState,
    /// The level after.
    pub to: SafeState,
    /// The fault sources asking for a level now, most severe first.
    pub causes: Vec<FaultKey>,
    /// True when a supervisor gave up: operators must be alarmed, not only informed.
    pub alarm: bool,
    /// Set when this transition ends a lockout: who ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<Reset>,
}

/// Who ended a lockout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reset {
    /// An operator ([`SafeStateLadder::reset`]).
    Operator,
    /// The configured automatic reclose ([`LadderConfig::auto_reclose`]).
    AutoReclose,
}

/// Why [`SafeStateLadder::reset`] refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResetRefused {
    /// The segment is not locked out: there is nothing to reset.
    #[error("the segment is not locked out (its level is {0})")]
    NotLockedOut(SafeState),
    /// A cause of the trip is still present.
    #[error("the trip's causes have not cleared: {}", kinds(.0))]
    CausesPresent(Vec<FaultKey>),
    /// The trip's causes cleared, but their hold time has not passed.
    #[error("the trip's causes cleared, but their hold time runs until {} ms: {}", .until.as_millis(), kinds(.causes))]
    Holding {
        /// The causes still holding.
        causes: Vec<FaultKey>,
        /// When the last of them ends (the injected clock).
        until: Duration,
    },
}

fn kinds(keys: &[FaultKey]) -> String {
    let names: Vec<&str> = keys.iter().map(FaultKey::kind).collect();
    names.join(", ")
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[derive(Debug, Clone)]
struct Demand {
    state: SafeState,
    /// `None` while the cause is present; `Some(t)` once it cleared at `t`.
    cleared_at: Option<Duration>,
}

/// The ladder of one segment. Not shared: it lives in the segment's safety actor.
#[derive(Debug, Clone)]
pub struct SafeStateLadder {
    config: LadderConfig,
    demands: BTreeMap<FaultKey, Demand>,
    /// Since when each trip band has been exceeded (index: voltage bands, then frequency).
    beyond_since: Vec<Option<Duration>>,
    /// The metered frequency series the ROCOF is taken over.
    rocof: RocofWindow,
    /// When the last good grid reading came; None before the first reading and the first
    /// tick (the age counts from whichever comes first).
    last_reading: Option<Duration>,
    last_keepalive: Duration,
    level: SafeState,
    /// Set by whatever ends a lockout, taken by the transition that follows.
    released: Option<Reset>,
}

impl SafeStateLadder {
    /// A ladder at Normal; the keep-alive clock starts at `now`.
    pub fn new(config: LadderConfig, now: Duration) -> Self {
        let bands = config.voltage_bands.len() + config.frequency_bands.len();
        SafeStateLadder {
            rocof: RocofWindow::new(config.rocof_window),
            config,
            demands: BTreeMap::new(),
            beyond_since: vec![None; bands],
            last_reading: None,
            last_keepalive: now,
            level: SafeState::Normal,
            released: None,
        }
    }

    /// The current level.
    pub fn level(&self) -> SafeState {
        self.level
    }

    /// Clamp a remote setpoint by the current level (local safety always wins).
    pub fn clamp(&self, setpoint_kw: f64) -> f64 {
        self.level.clamp(setpoint_kw)
    }

    /// The fault sources currently asking for a level (present, or cleared and holding).
    pub fn causes(&self) -> Vec<FaultKey> {
        self.demands.keys().cloned().collect()
    }

    /// Feed an observation at `now`; returns the transition if the level changed.
    pub fn observe(&mut self, fault: Fault, now: Duration) -> Option<Transition> {
        match fault {
            Fault::GridReading {
                voltage_pu,
                frequency_hz,
                exporting,
            } => {
                let abnormal = self.grid_abnormal(voltage_pu, frequency_hz, now);
                if voltage_pu.is_finite() && frequency_hz.is_finite() {
                    self.last_reading = Some(now);
                    self.set(FaultKey::MeterStale, None, now);
                }
                // Exporting into an abnormal grid trips (IEEE 1547 cease to energize). Once
                // tripped the segment no longer exports, but the grid is no better: the trip
                // stays while the grid is abnormal (its hold time, the enter-service delay,
                // starts only once the grid is back in its bands); a new abnormal reading
                // during that hold (the ROCOF of the grid's return, say) trips again rather
                // than weakening the held trip. A segment that was not exporting must not
                // start to either: ChargeOnly.
                let tripped = self
                    .demands
                    .get(&FaultKey::Islanding)
                    .is_some_and(|d| d.state == SafeState::Tripped);
                let demand = abnormal.then_some(if exporting || tripped {
                    SafeState::Tripped
                } else {
                    SafeState::ChargeOnly
                });
                self.set(FaultKey::Islanding, demand, now);
            }
            Fault::ClockOffset(offset) => {
                let demand = if offset > self.config.ptp_trip {
                    Some(SafeState::Tripped)
                } else if offset > self.config.ptp_charge_only {
                    Some(SafeState::ChargeOnly)
                } else {
                    None
                };
                self.set(FaultKey::ClockDrift, demand, now);
            }
            Fault::ClockUnsynchronised(unsynchronised) => {
                let demand = unsynchronised.then_some(SafeState::ChargeOnly);
                self.set(FaultKey::ClockUnsynchronised, demand, now);
            }
            Fault::KeepAlive => {
                self.last_keepalive = now;
                self.set(FaultKey::KeepAlive, None, now);
            }
            Fault::InverterTemperature {
                inverter,
                celsius,
                rated_kw,
            } => {
                let demand = self.derate(celsius, rated_kw);
                self.set(FaultKey::OverTemperature(inverter), demand, now);
            }
            Fault::TransformerLimit(allowance) => {
                let demand = allowance.map(|a| {
                    if a.is_finite() {
                        SafeState::Limited { cap_kw: a.max(0.0) }
                    } else {
                        // An allowance that is not a number: when in doubt, no discharge.
                        SafeState::ChargeOnly
                    }
                });
                self.set(FaultKey::TransformerThermal, demand, now);
            }
            Fault::Restored(level) => {
                if level != SafeState::Normal {
                    self.set(FaultKey::Restored, Some(level), now);
                    self.set(FaultKey::Restored, None, now);
                }
            }
            Fault::InverterTemperatureLost { inverter } => {
                let fully_derated = SafeState::Limited { cap_kw: 0.0 };
                self.set(
                    FaultKey::OverTemperature(inverter),
                    Some(fully_derated),
                    now,
                );
            }
            Fault::Quorum(majority) => {
                self.set(
                    FaultKey::Quorum,
                    (!majority).then_some(SafeState::ChargeOnly),
                    now,
                );
            }
            Fault::Handoff(moving) => {
                self.set(
                    FaultKey::Handoff,
                    moving.then_some(SafeState::ChargeOnly),
                    now,
                );
            }
            Fault::RestartIntensity {
                supervisor,
                exceeded,
            } => {
                let demand = exceeded.then_some(SafeState::ChargeOnly);
                self.set(FaultKey::RestartIntensity(supervisor), demand, now);
            }
        }
        self.settle(now)
    }

    /// Whether the segment is locked out (Tripped until a reset or the automatic reclose).
    pub fn locked_out(&self) -> bool {
        self.demands.contains_key(&FaultKey::Lockout)
    }

    /// An operator's reset of a lockout at `now`: refused while a cause of the trip is present
    /// or still holding (which, and until when), and when there is no lockout. Returns the
    /// transition out of Tripped (None if other causes keep the segment Tripped: impossible,
    /// since those would refuse the reset).
    pub fn reset(&mut self, now: Duration) -> Result<Option<Transition>, ResetRefused> {
        if !self.locked_out() {
            return Err(ResetRefused::NotLockedOut(self.level));
        }
        // Holds that ended by now are gone first. While locked out that moves nothing, unless
        // the automatic reclose ended the lockout at this very moment.
        if let Some(t) = self.settle(now) {
            return Ok(Some(t));
        }
        let tripping = |d: &Demand| d.state == SafeState::Tripped;
        let causes = |present: bool| -> Vec<FaultKey> {
            self.demands
                .iter()
                .filter(|(k, d)| **k != FaultKey::Lockout && tripping(d))
                .filter(|(_, d)| d.cleared_at.is_none() == present)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let present = causes(true);
        if !present.is_empty() {
            return Err(ResetRefused::CausesPresent(present));
        }
        let holding = causes(false);
        if !holding.is_empty() {
            let hold = self.config.hold_time;
            let until = holding
                .iter()
                .filter_map(|k| self.demands.get(k)?.cleared_at)
                .max()
                .map_or(now, |t| t + hold);
            return Err(ResetRefused::Holding {
                causes: holding,
                until,
            });
        }
        self.demands.remove(&FaultKey::Lockout);
        self.released = Some(Reset::Operator);
        Ok(self.settle(now))
    }

    /// Advance time without an observation: checks the keep-alive watchdog, the age of the
    /// last good grid reading and the trip bands' clearing times, and lets held faults expire.
    pub fn tick(&mut self, now: Duration) -> Option<Transition> {
        let silent = now.saturating_sub(self.last_keepalive) > self.config.keepalive_timeout;
        if silent {
            self.set(FaultKey::KeepAlive, Some(SafeState::ChargeOnly), now);
        }
        let stale = self.reading_age(now) > self.config.max_reading_age;
        self.set(
            FaultKey::MeterStale,
            stale.then_some(SafeState::ChargeOnly),
            now,
        );
        self.settle(now)
    }

    /// How old the last good grid reading is at `now` (counted from the first tick when no
    /// reading came yet, which starts the count).
    pub fn reading_age(&mut self, now: Duration) -> Duration {
        now.saturating_sub(*self.last_reading.get_or_insert(now))
    }

    /// Whether this reading, with those before it, means the grid at the point of
    /// connection is abnormal: a reading beyond a trip band for its clearing time, a voltage
    /// under the lost threshold, a frequency changing faster than the ROCOF threshold over
    /// its window, or a reading that is not a number (which says nothing good about the grid).
    fn grid_abnormal(&mut self, voltage_pu: f64, frequency_hz: f64, now: Duration) -> bool {
        let rocof = self.rocof.push(now, frequency_hz);
        if !voltage_pu.is_finite() || !frequency_hz.is_finite() {
            return true;
        }
        let rocof_trip = rocof.is_some_and(|r| r.abs() > self.config.rocof_hz_per_s);
        let bands = self.config.voltage_bands.iter().map(|b| (b, voltage_pu));
        let bands = bands.chain(
            self.config
                .frequency_bands
                .iter()
                .map(|b| (b, frequency_hz)),
        );
        let mut tripped = false;
        for (i, (band, value)) in bands.enumerate() {
            if band.beyond(value) {
                let since = *self.beyond_since[i].get_or_insert(now);
                tripped |= now.saturating_sub(since) >= band.clearing_time;
            } else {
                self.beyond_since[i] = None;
            }
        }
        let lost = voltage_pu < self.config.voltage_lost_pu;
        tripped || lost || rocof_trip
    }

    fn derate(&self, celsius: f64, rated_kw: f64) -> Option<SafeState> {
        let (start, zero) = (self.config.derate_start_c, self.config.derate_zero_c);
        if !celsius.is_finite() || !rated_kw.is_finite() {
            return Some(SafeState::ChargeOnly);
        }
        if celsius <= start {
            return None;
        }
        let fraction = if zero > start {
            ((zero - celsius) / (zero - start)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Some(SafeState::Limited {
            cap_kw: rated_kw.max(0.0) * fraction,
        })
    }

    fn set(&mut self, key: FaultKey, demand: Option<SafeState>, now: Duration) {
        match demand {
            Some(state) => {
                // Present: a new or renewed cause; a cleared one that comes back restarts.
                self.demands.insert(
                    key,
                    Demand {
                        state,
                        cleared_at: None,
                    },
                );
            }
            None => {
                if let Some(d) = self.demands.get_mut(&key) {
                    d.cleared_at.get_or_insert(now);
                }
            }
        }
    }

    /// A demand for Tripped (present or holding) locks the segment out; once none is left,
    /// the lockout ends only by a reset, or by the automatic reclose `auto_reclose` after.
    fn lock_out(&mut self, now: Duration) {
        let tripping = self
            .demands
            .iter()
            .any(|(k, d)| *k != FaultKey::Lockout && d.state == SafeState::Tripped);
        let lockout = Demand {
            state: SafeState::Tripped,
            cleared_at: None,
        };
        if tripping {
            self.demands.insert(FaultKey::Lockout, lockout);
            return;
        }
        let Some(reclose) = self.config.auto_reclose else {
            return;
        };
        if let Some(d) = self.demands.get_mut(&FaultKey::Lockout) {
            let since = *d.cleared_at.get_or_insert(now);
            if now.saturating_sub(since) >= reclose {
                self.demands.remove(&FaultKey::Lockout);
                self.released = Some(Reset::AutoReclose);
            }
        }
    }

    fn settle(&mut self, now: Duration) -> Option<Transition> {
        let hold = self.config.hold_time;
        self.demands.retain(|k, d| {
            *k == FaultKey::Lockout || d.cleared_at.is_none_or(|t| now.saturating_sub(t) < hold)
        });
        self.lock_out(now);
        let level = self
            .demands
            .values()
            .fold(SafeState::Normal, |acc, d| acc.most_restrictive(d.state));
        let released = self.released.take();
        if level == self.level {
            return None;
        }
        let reset = released.filter(|_| self.level == SafeState::Tripped);
        let from = std::mem::replace(&mut self.level, level);
        let mut causes: Vec<(u8, FaultKey)> = self
            .demands
            .iter()
            .map(|(k, d)| (d.state.severity(), k.clone()))
            .collect();
        causes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let alarm = self
            .demands
            .keys()
            .any(|k| matches!(k, FaultKey::RestartIntensity(_)));
        Some(Transition {
            at: now,
            from,
            to: level,
            causes: causes.into_iter().map(|(_, k)| k).collect(),
            alarm,
            reset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A ladder whose reading age matters only to the tests about it (the others tick
    /// without grid readings).
    fn ladder() -> SafeStateLadder {
        let config = LadderConfig {
            max_reading_age: Duration::from_secs(3600),
            ..LadderConfig::default()
        };
        SafeStateLadder::new(config, Duration::ZERO)
    }

    fn ladder_at(grid: GridFrequency) -> SafeStateLadder {
        let config = LadderConfig {
            keepalive_timeout: Duration::from_secs(3600),
            ..LadderConfig::for_grid(grid)
        };
        SafeStateLadder::new(config, Duration::ZERO)
    }

    fn grid(v: f64, f: f64, exporting: bool) -> Fault {
        Fault::GridReading {
            voltage_pu: v,
            frequency_hz: f,
            exporting,
        }
    }

    #[test]
    fn a_restored_level_is_held_for_the_hold_time_then_released() {
        let config = LadderConfig {
            keepalive_timeout: Duration::from_secs(3600),
            ..LadderConfig::default()
        };
        let mut l = SafeStateLadder::new(config, Duration::ZERO);
        let t = l
            .observe(Fault::Restored(SafeState::ChargeOnly), ms(0))
            .unwrap();
        assert_eq!(t.to, SafeState::ChargeOnly);
        assert_eq!(t.causes, vec![FaultKey::Restored]);
        assert_eq!(l.tick(ms(299_999)), None);
        assert_eq!(l.level(), SafeState::ChargeOnly);
        let t = l.tick(ms(300_000)).unwrap();
        assert_eq!(t.to, SafeState::Normal);
        // Restoring Normal is no fault at all.
        assert_eq!(
            l.observe(Fault::Restored(SafeState::Normal), ms(300_001)),
            None
        );
    }

    #[test]
    fn a_grid_reading_older_than_the_bound_means_charge_only() {
        let mut l = ladder_at(GridFrequency::Hz60);
        assert_eq!(l.observe(grid(1.0, 60.0, true), ms(100)), None);
        assert_eq!(l.tick(ms(600)), None, "exactly 500 ms old is still fresh");
        let t = l.tick(ms(601)).expect("stale");
        assert_eq!(t.to, SafeState::ChargeOnly);
        assert_eq!(t.causes, vec![FaultKey::MeterStale]);
        assert_eq!(l.clamp(-5.0), 0.0);
        // A good reading clears the cause; it is held for the hold time like any other.
        assert_eq!(l.observe(grid(1.0, 60.0, true), ms(700)), None, "held");
        assert_eq!(l.tick(ms(701)), None);
        l.observe(grid(1.0, 60.0, true), ms(300_600));
        assert_eq!(l.tick(ms(300_700)).map(|t| t.to), Some(SafeState::Normal));
    }

    #[test]
    fn no_reading_at_all_is_stale_counted_from_the_first_tick() {
        let mut l = ladder_at(GridFrequency::Hz50);
        assert_eq!(l.tick(ms(1_000)), None, "the first tick starts the count");
        assert_eq!(l.reading_age(ms(1_400)), ms(400));
        assert_eq!(l.tick(ms(1_500)), None);
        assert_eq!(l.tick(ms(1_501)).map(|t| t.to), Some(SafeState::ChargeOnly));
    }

    #[test]
    fn a_reading_that_is_not_a_number_is_no_reading() {
        let mut l = ladder_at(GridFrequency::Hz60);
        l.observe(grid(1.0, 60.0, false), ms(0));
        // Garbage is unsafe (ChargeOnly, not exporting) and does not make the reading newer.
        for at in (50..=500).step_by(50) {
            l.observe(grid(f64::NAN, 60.0, false), ms(at));
            l.observe(grid(1.0, f64::INFINITY, false), ms(at));
        }
        l.tick(ms(501));
        assert!(
            l.causes().contains(&FaultKey::MeterStale),
            "{:?}",
            l.causes()
        );
    }

    #[test]
    fn an_inverter_whose_temperature_cannot_be_read_counts_as_fully_derated() {
        let mut l = ladder();
        let lost = Fault::InverterTemperatureLost {
            inverter: "i-1".into(),
        };
        let t = l.observe(lost, ms(0)).unwrap();
        assert_eq!(t.to, SafeState::Limited { cap_kw: 0.0 });
        assert_eq!(t.causes, vec![FaultKey::OverTemperature("i-1".into())]);
        assert_eq!((l.clamp(-10.0), l.clamp(10.0)), (0.0, 0.0));
        // A good, cool reading clears it (after the hold); a hot one replaces it.
        let temp = |c: f64| Fault::InverterTemperature {
            inverter: "i-1".into(),
            celsius: c,
            rated_kw: 100.0,
        };
        assert_eq!(
            l.observe(temp(70.0), ms(1)).unwrap().to,
            SafeState::Limited { cap_kw: 75.0 }
        );
        assert_eq!(l.observe(temp(40.0), ms(2)), None, "held");
        l.observe(Fault::KeepAlive, ms(300_000));
        assert_eq!(l.tick(ms(300_002)).map(|t| t.to), Some(SafeState::Normal));
    }

    /// Feed `hz` every 50 ms from `from` to `to` (exclusive) while exporting; the last
    /// transition.
    fn feed(
        l: &mut SafeStateLadder,
        from: u64,
        to: u64,
        hz: impl Fn(u64) -> f64,
    ) -> Option<Transition> {
        let mut last = None;
        for at in (from..to).step_by(50) {
            last = l.observe(grid(1.0, hz(at), true), ms(at)).or(last);
        }
        last
    }

    #[test]
    fn a_60_hz_ladder_trips_a_healthy_50_hz_grid_which_is_why_nominal_hz_exists() {
        let mut wrong = ladder_at(GridFrequency::Hz60);
        let t = feed(&mut wrong, 0, 400, |_| 50.0).expect("below UF2 56.5 Hz");
        assert_eq!(t.to, SafeState::Tripped);
        let mut right = ladder_at(GridFrequency::Hz50);
        assert_eq!(
            feed(&mut right, 0, 600_000, |at| 50.0
                + 0.01 * ((at / 100) % 3) as f64),
            None
        );
        assert_eq!(right.level(), SafeState::Normal);
    }

    #[test]
    fn each_50_hz_band_trips_after_its_clearing_time_and_not_before() {
        // (frequency, clearing time): OF2 52.0/0.1 s, OF1 51.5/2 s, UF1 47.5/2 s, UF2 47.0/0.1 s.
        for (hz, clearing) in [(52.1, 100), (51.6, 2_000), (47.4, 2_000), (46.9, 100)] {
            // Steps, with ROCOF out of the way (it would trip on a step: tested below).
            let config = LadderConfig {
                keepalive_timeout: Duration::from_secs(3600),
                rocof_hz_per_s: 1e9,
                ..LadderConfig::for_grid(GridFrequency::Hz50)
            };
            let mut l = SafeStateLadder::new(config, Duration::ZERO);
            let t0 = 1_000;
            let value = |at: u64| if at < t0 { 50.0 } else { hz };
            assert_eq!(feed(&mut l, 0, t0, value), None, "{hz} Hz: healthy first");
            let within = feed(&mut l, t0, t0 + clearing, value);
            assert_eq!(within, None, "{hz} Hz within {clearing} ms");
            let t = feed(&mut l, t0 + clearing, t0 + clearing + 50, value);
            assert_eq!(t.map(|t| t.to), Some(SafeState::Tripped), "{hz} Hz");
            assert_eq!(l.causes(), vec![FaultKey::Islanding, FaultKey::Lockout]);
        }
    }

    #[test]
    fn voltage_bands_stay_per_unit_at_50_hz() {
        let mut l = ladder_at(GridFrequency::Hz50);
        assert_eq!(feed(&mut l, 0, 1_000, |_| 50.0), None);
        l.observe(grid(1.25, 50.0, true), ms(1_000));
        assert_eq!(l.observe(grid(1.25, 50.0, true), ms(1_159)), None);
        let t = l.observe(grid(1.25, 50.0, true), ms(1_160));
        assert_eq!(
            t.map(|t| t.to),
            Some(SafeState::Tripped),
            "OV2 1.20 pu / 0.16 s"
        );
    }

    #[test]
    fn rocof_beyond_the_threshold_trips_within_the_bands() {
        // 3 Hz/s from 50 Hz for 400 ms: 51.2 Hz, inside every band, but a loss of mains.
        let mut l = ladder_at(GridFrequency::Hz50);
        assert_eq!(feed(&mut l, 0, 1_000, |_| 50.0), None);
        let ramp = |at: u64| 50.0 + 3.0 * (at.saturating_sub(1_000).min(400)) as f64 / 1_000.0;
        let t = feed(&mut l, 1_000, 1_500, ramp).expect("ROCOF trip");
        assert_eq!(t.to, SafeState::Tripped);
        assert_eq!(t.causes, vec![FaultKey::Islanding, FaultKey::Lockout]);
        // 1.5 Hz/s (below 2.0) for 1 s at 60 Hz: no trip (61.5 Hz is beyond OF1 only after 300 s).
        let mut l = ladder_at(GridFrequency::Hz60);
        assert_eq!(feed(&mut l, 0, 1_000, |_| 60.0), None);
        let slow = |at: u64| 60.0 + 1.5 * (at.saturating_sub(1_000).min(1_000)) as f64 / 1_000.0;
        assert_eq!(feed(&mut l, 1_000, 5_000, slow), None);
        // The same change at 2.5 Hz/s trips.
        let mut l = ladder_at(GridFrequency::Hz60);
        feed(&mut l, 0, 1_000, |_| 60.0);
        let fast = |at: u64| 60.0 - 2.5 * (at.saturating_sub(1_000).min(600)) as f64 / 1_000.0;
        assert!(feed(&mut l, 1_000, 2_000, fast).is_some_and(|t| t.to == SafeState::Tripped));
    }

    #[test]
    fn an_abnormal_reading_during_a_trips_hold_keeps_it_tripped() {
        let mut l = ladder_at(GridFrequency::Hz50);
        feed(&mut l, 0, 1_000, |_| 50.0);
        // A step to 51.3 Hz trips on ROCOF; steady there, the ROCOF clears and the trip holds.
        let t = l.observe(grid(1.0, 51.3, true), ms(1_000)).unwrap();
        assert_eq!(t.to, SafeState::Tripped);
        for at in (1_050..3_000).step_by(50) {
            assert_eq!(l.observe(grid(1.0, 51.3, false), ms(at)), None);
        }
        // The grid steps back (ROCOF again) while the trip holds: still Tripped, not
        // ChargeOnly.
        for at in (3_000..4_000).step_by(50) {
            assert_eq!(
                l.observe(grid(1.0, 50.0, false), ms(at)),
                None,
                "at {at} ms"
            );
        }
        assert_eq!(l.level(), SafeState::Tripped);
    }

    #[test]
    fn the_rocof_window_needs_a_span_and_starts_again_after_a_gap() {
        let mut w = RocofWindow::new(ms(500));
        assert_eq!(w.push(ms(0), 50.0), None);
        assert_eq!(w.push(ms(250), 50.5), None, "half a window");
        let r = w.push(ms(500), 51.0).expect("a whole window");
        assert!((r - 2.0).abs() < 1e-9, "{r}");
        // The anchor is the newest reading at least a window older.
        let r = w.push(ms(750), 51.0).unwrap();
        assert!((r - 1.0).abs() < 1e-9, "(51 - 50.5) / 0.5 s: {r}");
        // Out of order: left out.
        assert_eq!(w.push(ms(700), 99.0), None);
        // A gap longer than the window: no rate across it.
        assert_eq!(w.push(ms(1_300), 40.0), None);
        assert_eq!(w.push(ms(1_500), 40.0), None);
        assert_eq!(w.push(ms(1_800), 40.0), Some(0.0));
        // Not a number: starts again.
        assert_eq!(w.push(ms(1_850), f64::NAN), None);
        assert_eq!(w.push(ms(1_900), 40.0), None);
    }

    #[test]
    fn the_rocof_window_keeps_a_bounded_series() {
        let mut w = RocofWindow::new(Duration::from_secs(10));
        for us in 0..10_000u64 {
            w.push(Duration::from_micros(us * 100), 50.0);
        }
        assert!(w.samples.len() <= ROCOF_MAX_SAMPLES);
    }

    #[test]
    fn islanding_trips_at_once_when_the_grid_is_lost_while_exporting() {
        let mut l = ladder();
        assert_eq!(l.observe(grid(1.0, 60.0, true), ms(0)), None);
        let t = l
            .observe(grid(0.0, 60.0, true), ms(1))
            .expect("a transition");
        assert_eq!((t.from, t.to), (SafeState::Normal, SafeState::Tripped));
        assert_eq!(t.causes, vec![FaultKey::Islanding, FaultKey::Lockout]);
        assert_eq!(l.clamp(-50.0), 0.0);
        assert_eq!(l.clamp(11.0), 0.0);
    }

    #[test]
    fn fast_frequency_band_trips_after_its_clearing_time_slow_band_waits() {
        let mut l = ladder();
        // 62.5 Hz is beyond OF2 (62.0 Hz, 0.16 s) and OF1 (61.2 Hz, 300 s).
        assert_eq!(l.observe(grid(1.0, 62.5, true), ms(0)), None);
        assert_eq!(l.observe(grid(1.0, 62.5, true), ms(159)), None);
        assert_eq!(
            l.observe(grid(1.0, 62.5, true), ms(160)).unwrap().to,
            SafeState::Tripped
        );
        // 61.5 Hz is beyond OF1 only: trips after 300 s, not before.
        let mut l = ladder();
        assert_eq!(l.observe(grid(1.0, 61.5, true), ms(0)), None);
        assert_eq!(
            l.observe(grid(1.0, 61.5, true), Duration::from_secs(299)),
            None
        );
        assert_eq!(
            l.observe(grid(1.0, 61.5, true), Duration::from_secs(300))
                .unwrap()
                .to,
            SafeState::Tripped
        );
    }

    #[test]
    fn an_abnormal_grid_while_not_exporting_allows_no_discharge_but_no_trip() {
        let mut l = ladder();
        assert_eq!(
            l.observe(grid(0.0, 57.0, false), ms(0)).unwrap().to,
            SafeState::ChargeOnly
        );
        assert_eq!(l.observe(grid(0.0, 57.0, false), S), None);
        assert_eq!(l.level(), SafeState::ChargeOnly);
        // Exporting into it trips.
        assert_eq!(
            l.observe(grid(0.0, 57.0, true), S + ms(1)).unwrap().to,
            SafeState::Tripped
        );
    }

    #[test]
    fn a_trip_stays_while_the_grid_is_abnormal_and_holds_after_it_returns() {
        // The hold (enter-service delay) is 300 s by default.
        let mut l = ladder();
        assert_eq!(
            l.observe(grid(0.0, 60.0, true), ms(0)).unwrap().to,
            SafeState::Tripped
        );
        // Tripped, the segment no longer exports; the grid is still gone for ten minutes.
        for s in 1..=600 {
            l.observe(Fault::KeepAlive, Duration::from_secs(s));
            assert_eq!(
                l.observe(grid(0.0, 60.0, false), Duration::from_secs(s)),
                None,
                "at {s} s"
            );
            assert_eq!(l.tick(Duration::from_secs(s)), None);
        }
        assert_eq!(l.level(), SafeState::Tripped);
        // Back in its bands: the trip holds for the hold time from then, not from the trip.
        let back = Duration::from_secs(601);
        assert_eq!(l.observe(grid(1.0, 60.0, false), back), None);
        l.observe(Fault::KeepAlive, back + Duration::from_secs(299));
        assert_eq!(l.tick(back + Duration::from_secs(299)), None);
        let early = l.reset(back + Duration::from_secs(299));
        assert_eq!(
            early,
            Err(ResetRefused::Holding {
                causes: vec![FaultKey::Islanding],
                until: back + Duration::from_secs(300)
            })
        );
        // The hold passed: still Tripped, locked out until a reset.
        assert_eq!(l.tick(back + Duration::from_secs(300)), None);
        assert_eq!(l.causes(), vec![FaultKey::Lockout]);
        let t = l.reset(back + Duration::from_secs(300)).unwrap().unwrap();
        assert_eq!((t.from, t.to), (SafeState::Tripped, SafeState::Normal));
        assert_eq!(t.reset, Some(Reset::Operator));
    }

    #[test]
    fn a_trip_locks_out_until_an_operator_resets_it() {
        let mut l = ladder();
        let alive = |l: &mut SafeStateLadder, s: u64| l.observe(Fault::KeepAlive, S * s as u32);
        assert_eq!(
            l.reset(ms(0)),
            Err(ResetRefused::NotLockedOut(SafeState::Normal))
        );
        let t = l.observe(Fault::ClockOffset(ms(150)), ms(0)).unwrap();
        assert_eq!(t.to, SafeState::Tripped);
        assert!(l.locked_out());
        assert_eq!(
            t.causes,
            vec![FaultKey::ClockDrift, FaultKey::Lockout],
            "the lockout is a cause from the trip on"
        );
        let refused = l.reset(ms(1)).unwrap_err();
        assert_eq!(
            refused,
            ResetRefused::CausesPresent(vec![FaultKey::ClockDrift])
        );
        assert!(refused.to_string().contains("clock_drift"), "{refused}");
        // Down to the ChargeOnly band: a cause of the trip still asks for ChargeOnly, and the
        // Tripped demand it made holds; the level stays Tripped long after the hold.
        l.observe(Fault::ClockOffset(ms(5)), S);
        for s in 2..=900 {
            assert_eq!(alive(&mut l, s), None, "at {s} s");
        }
        assert_eq!(l.level(), SafeState::Tripped);
        // The reset leaves the lockout; what is left asks for ChargeOnly.
        let t = l.reset(S * 900).unwrap().unwrap();
        assert_eq!((t.from, t.to), (SafeState::Tripped, SafeState::ChargeOnly));
        assert_eq!(t.causes, vec![FaultKey::ClockDrift]);
        assert!(!l.locked_out());
        assert_eq!(
            l.reset(S * 901),
            Err(ResetRefused::NotLockedOut(SafeState::ChargeOnly))
        );
    }

    #[test]
    fn a_lesser_level_does_not_lock_out() {
        let mut l = ladder();
        l.observe(Fault::Quorum(false), ms(0));
        assert!(!l.locked_out());
        l.observe(Fault::Quorum(true), ms(1));
        l.observe(Fault::KeepAlive, S * 300);
        assert_eq!(l.tick(S * 300 + ms(1)).unwrap().to, SafeState::Normal);
    }

    #[test]
    fn a_restored_trip_is_locked_out_again() {
        // A node that restarts while locked out does not forget it: the checkpointed level
        // is restored, and a restored Tripped locks out like any trip.
        let mut l = ladder();
        l.observe(Fault::Restored(SafeState::Tripped), ms(0));
        assert!(l.locked_out());
        l.observe(Fault::KeepAlive, S * 400);
        assert_eq!(l.tick(S * 400), None);
        assert_eq!(l.level(), SafeState::Tripped);
        assert_eq!(l.reset(S * 400).unwrap().unwrap().to, SafeState::Normal);
    }

    #[test]
    fn automatic_reclose_ends_the_lockout_after_its_delay() {
        let config = LadderConfig {
            hold_time: S * 10,
            auto_reclose: Some(S * 5),
            keepalive_timeout: S * 3600,
            // No readings after the trip: staleness would hold ChargeOnly past the reclose.
            max_reading_age: S * 3600,
            ..LadderConfig::default()
        };
        let mut l = SafeStateLadder::new(config, Duration::ZERO);
        l.observe(grid(0.0, 60.0, true), ms(0));
        l.observe(grid(1.0, 60.0, false), S);
        // Cleared at 1 s, held until 11 s; the reclose delay runs from then.
        assert_eq!(l.tick(S * 11), None);
        assert_eq!(l.tick(S * 16 - ms(1)), None);
        let t = l.tick(S * 16).expect("reclosed");
        assert_eq!(
            (t.to, t.reset),
            (SafeState::Normal, Some(Reset::AutoReclose))
        );
        // A trip that comes back during the reclose delay starts it again.
        let mut l = SafeStateLadder::new(
            LadderConfig {
                auto_reclose: Some(Duration::ZERO),
                ..LadderConfig::default()
            },
            Duration::ZERO,
        );
        l.observe(Fault::ClockOffset(ms(150)), ms(0));
        l.observe(Fault::ClockOffset(ms(0)), ms(1));
        l.observe(Fault::KeepAlive, S * 300);
        let t = l
            .tick(S * 300 + ms(1))
            .expect("a zero delay recloses at the hold's end");
        assert_eq!(t.to, SafeState::Normal);
    }

    #[test]
    fn a_band_excursion_that_returns_resets_its_timer() {
        let mut l = ladder();
        l.observe(grid(1.25, 60.0, true), ms(0));
        l.observe(grid(1.0, 60.0, true), ms(100));
        assert_eq!(l.observe(grid(1.25, 60.0, true), ms(200)), None);
        assert_eq!(
            l.observe(grid(1.25, 60.0, true), ms(300)),
            None,
            "only 100 ms beyond since the return"
        );
        assert_eq!(
            l.observe(grid(1.25, 60.0, true), ms(360)).unwrap().to,
            SafeState::Tripped
        );
    }

    #[test]
    fn ptp_offset_thresholds() {
        let mut l = ladder();
        assert_eq!(
            l.observe(Fault::ClockOffset(Duration::from_micros(900)), ms(0)),
            None
        );
        assert_eq!(
            l.observe(Fault::ClockOffset(ms(2)), ms(1)).unwrap().to,
            SafeState::ChargeOnly
        );
        assert_eq!(
            l.observe(Fault::ClockOffset(ms(101)), ms(2)).unwrap().to,
            SafeState::Tripped
        );
        assert_eq!(l.clamp(-10.0), 0.0);
    }

    #[test]
    fn an_unsynchronised_clock_means_charge_only_and_keeps_the_drift_it_had() {
        let mut l = ladder();
        l.observe(Fault::ClockOffset(ms(150)), ms(0));
        let t = l.observe(Fault::ClockUnsynchronised(true), ms(1));
        assert_eq!(t, None, "already tripped by the drift");
        assert_eq!(l.level(), SafeState::Tripped);
        assert!(l.causes().contains(&FaultKey::ClockUnsynchronised));
        // Synchronised again with a small offset: both causes clear and hold.
        l.observe(Fault::ClockUnsynchronised(false), ms(2));
        l.observe(Fault::ClockOffset(Duration::ZERO), ms(2));
        let hold = l.config.hold_time;
        assert_eq!(l.observe(Fault::KeepAlive, ms(1) + hold), None);
        // The drift tripped: locked out until the operator's reset.
        assert_eq!(
            l.observe(Fault::KeepAlive, ms(2) + hold),
            None,
            "locked out"
        );
        let t = l.reset(ms(2) + hold).unwrap().unwrap();
        assert_eq!(t.to, SafeState::Normal);
        let t = l
            .observe(Fault::ClockUnsynchronised(true), ms(400_000))
            .unwrap();
        assert_eq!(
            (t.to, t.causes),
            (SafeState::ChargeOnly, vec![FaultKey::ClockUnsynchronised])
        );
        assert_eq!(FaultKey::ClockUnsynchronised.kind(), "clock_unsynchronised");
    }

    #[test]
    fn keepalive_missing_for_five_seconds_means_charge_only() {
        let mut l = ladder();
        assert_eq!(
            l.tick(Duration::from_secs(5)),
            None,
            "exactly 5 s is still in time"
        );
        let t = l.tick(Duration::from_millis(5001)).unwrap();
        assert_eq!(t.to, SafeState::ChargeOnly);
        assert_eq!(l.clamp(-7.0), 0.0, "no discharge");
        assert_eq!(l.clamp(7.0), 7.0, "charging allowed");
    }

    #[test]
    fn inverter_over_temperature_derates_linearly() {
        let mut l = ladder();
        let temp = |c: f64| Fault::InverterTemperature {
            inverter: "i-1".into(),
            celsius: c,
            rated_kw: 100.0,
        };
        assert_eq!(l.observe(temp(65.0), ms(0)), None);
        assert_eq!(
            l.observe(temp(70.0), ms(1)).unwrap().to,
            SafeState::Limited { cap_kw: 75.0 }
        );
        assert_eq!(l.clamp(-90.0), -75.0);
        assert_eq!(
            l.observe(temp(85.0), ms(2)).unwrap().to,
            SafeState::Limited { cap_kw: 0.0 }
        );
        // A second, cooler hot inverter does not loosen the tighter cap.
        let other = Fault::InverterTemperature {
            inverter: "i-2".into(),
            celsius: 75.0,
            rated_kw: 100.0,
        };
        assert_eq!(l.observe(other, ms(3)), None);
        assert_eq!(l.level(), SafeState::Limited { cap_kw: 0.0 });
    }

    #[test]
    fn transformer_limit_quorum_and_restart_intensity() {
        let mut l = ladder();
        assert_eq!(
            l.observe(Fault::TransformerLimit(Some(400.0)), ms(0))
                .unwrap()
                .to,
            SafeState::Limited { cap_kw: 400.0 }
        );
        assert_eq!(
            l.observe(Fault::Quorum(false), ms(1)).unwrap().to,
            SafeState::ChargeOnly
        );
        let mut h = ladder();
        assert_eq!(
            h.observe(Fault::Handoff(true), ms(1)).unwrap().to,
            SafeState::ChargeOnly
        );
        assert!(h.causes().contains(&FaultKey::Handoff));
        // The supervisor giving up asks for ChargeOnly too (no change) and raises the alarm
        // on the next transition; on its own it moves the segment and alarms at once.
        let mut l = ladder();
        let gave_up = Fault::RestartIntensity {
            supervisor: "site/tx-17".into(),
            exceeded: true,
        };
        let t = l.observe(gave_up, ms(2)).expect("a transition");
        assert_eq!(t.to, SafeState::ChargeOnly);
        assert!(t.alarm);
        assert_eq!(
            t.causes,
            vec![FaultKey::RestartIntensity("site/tx-17".into())]
        );
        let quorum = l.observe(Fault::TransformerLimit(Some(1.0)), ms(3));
        assert_eq!(quorum, None, "a cap is less restrictive than ChargeOnly");
    }

    #[test]
    fn leaving_needs_the_cause_cleared_and_the_hold_time() {
        let mut l = ladder();
        // The grid controller keeps talking throughout, so only the clock decides.
        let alive = |l: &mut SafeStateLadder, at: Duration| l.observe(Fault::KeepAlive, at);
        l.observe(Fault::ClockOffset(ms(5)), ms(0));
        assert_eq!(l.level(), SafeState::ChargeOnly);
        // Cleared at 10 s: still held until 310 s.
        assert_eq!(
            l.observe(Fault::ClockOffset(Duration::ZERO), Duration::from_secs(10)),
            None
        );
        assert_eq!(alive(&mut l, Duration::from_secs(309)), None);
        // Cause back during the hold: the hold starts again from the next clear.
        l.observe(Fault::ClockOffset(ms(5)), Duration::from_secs(309));
        l.observe(Fault::ClockOffset(Duration::ZERO), Duration::from_secs(310));
        assert_eq!(alive(&mut l, Duration::from_secs(609)), None);
        let t = alive(&mut l, Duration::from_secs(610)).expect("the hold ended");
        assert_eq!((t.from, t.to), (SafeState::ChargeOnly, SafeState::Normal));
        assert!(t.causes.is_empty());
    }

    #[test]
    fn nonsense_readings_are_treated_as_unsafe() {
        let mut l = ladder();
        assert_eq!(
            l.observe(grid(f64::NAN, 60.0, true), ms(0)).unwrap().to,
            SafeState::Tripped
        );
        let mut l = ladder();
        let hot = Fault::InverterTemperature {
            inverter: "i".into(),
            celsius: f64::NAN,
            rated_kw: 10.0,
        };
        assert_eq!(l.observe(hot, ms(0)).unwrap().to, SafeState::ChargeOnly);
        assert_eq!(SafeState::Normal.clamp(f64::NAN), 0.0);
        assert_eq!(SafeState::Limited { cap_kw: f64::NAN }.clamp(5.0), 0.0);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn fault() -> impl Strategy<Value = Fault> {
        prop_oneof![
            (0.0f64..1.5, 55.0f64..65.0, any::<bool>()).prop_map(|(v, f, e)| Fault::GridReading {
                voltage_pu: v,
                frequency_hz: f,
                exporting: e
            }),
            (0u64..200_000).prop_map(|us| Fault::ClockOffset(Duration::from_micros(us))),
            any::<bool>().prop_map(Fault::ClockUnsynchronised),
            Just(Fault::KeepAlive),
            (0usize..3, 20.0f64..100.0).prop_map(|(i, c)| Fault::InverterTemperature {
                inverter: format!("i-{i}"),
                celsius: c,
                rated_kw: 50.0
            }),
            proptest::option::of(0.0f64..1000.0).prop_map(Fault::TransformerLimit),
            any::<bool>().prop_map(Fault::Quorum),
            any::<bool>().prop_map(Fault::Handoff),
            any::<bool>().prop_map(|e| Fault::RestartIntensity {
                supervisor: "s".into(),
                exceeded: e
            }),
            (0usize..3).prop_map(|i| Fault::InverterTemperatureLost {
                inverter: format!("i-{i}")
            }),
        ]
    }

    /// Increasing times with steps of 1..=`max_step_ms`.
    fn times(max_step_ms: u64) -> impl Strategy<Value = Vec<Duration>> {
        prop::collection::vec(1..=max_step_ms, 2..80).prop_map(|steps| {
            let mut t = 0;
            steps
                .into_iter()
                .map(|s| {
                    t += s;
                    Duration::from_millis(t)
                })
                .collect()
        })
    }

    proptest! {
        /// Over a linear ramp read at any times (no gap longer than the window), the ROCOF is
        /// the ramp's slope whenever there is one, and there is one once a window is spanned.
        #[test]
        fn rocof_of_a_ramp_is_its_slope(
            slope in -10.0f64..10.0,
            start in 45.0f64..65.0,
            at in times(500),
        ) {
            let mut w = RocofWindow::new(Duration::from_millis(500));
            let first = at[0];
            for t in &at {
                let hz = start + slope * (*t - first).as_secs_f64();
                let r = w.push(*t, hz);
                if *t - first >= Duration::from_millis(500) {
                    let r = r.expect("a window is spanned");
                    prop_assert!((r - slope).abs() < 1e-6, "{} vs {}", r, slope);
                } else {
                    prop_assert_eq!(r, None);
                }
            }
        }

        /// A healthy grid (nominal within noise, voltage 1 pu) read at any rate never takes a
        /// segment out of Normal at either frequency, and a reading every poll keeps it fresh.
        #[test]
        fn a_healthy_grid_stays_normal(
            fifty in any::<bool>(),
            noise in prop::collection::vec(-0.02f64..0.02, 80),
            at in times(450),
        ) {
            let grid = if fifty { GridFrequency::Hz50 } else { GridFrequency::Hz60 };
            let config = LadderConfig {
                keepalive_timeout: Duration::from_secs(3600),
                ..LadderConfig::for_grid(grid)
            };
            let mut l = SafeStateLadder::new(config, Duration::ZERO);
            for (t, n) in at.iter().zip(noise.iter().cycle()) {
                let reading = Fault::GridReading {
                    voltage_pu: 1.0 + n,
                    frequency_hz: grid.hz() + n,
                    exporting: true,
                };
                prop_assert_eq!(l.observe(reading, *t), None);
                prop_assert_eq!(l.tick(*t + Duration::from_millis(40)), None);
            }
        }

        /// Whatever happens, a clamped setpoint never exceeds what the level allows, the level
        /// is the most restrictive demand, and transitions report the level they leave.
        #[test]
        fn clamp_never_exceeds_the_level(
            steps in prop::collection::vec((fault(), 0u64..400_000, -500.0f64..500.0), 1..60)
        ) {
            let mut l = SafeStateLadder::new(LadderConfig::default(), Duration::ZERO);
            let mut now = Duration::ZERO;
            for (f, dt_ms, setpoint) in steps {
                now += Duration::from_millis(dt_ms);
                let before = l.level();
                let t = match dt_ms % 7 {
                    0 | 3 => l.tick(now),
                    // An operator's reset: it ends the lockout only, never a present cause.
                    1 => match l.reset(now) {
                        Ok(t) => {
                            prop_assert!(l.level() != SafeState::Tripped && !l.locked_out());
                            t
                        }
                        Err(_) => {
                            prop_assert_eq!(l.level(), before);
                            None
                        }
                    },
                    _ => l.observe(f, now),
                };
                if l.level() == SafeState::Tripped {
                    prop_assert!(l.locked_out(), "every trip locks out");
                }
                if let Some(t) = &t {
                    prop_assert_eq!(t.from, before);
                    prop_assert_eq!(t.to, l.level());
                    prop_assert!(t.from != t.to);
                }
                let p = l.clamp(setpoint);
                match l.level() {
                    SafeState::Normal => prop_assert_eq!(p, setpoint),
                    SafeState::Limited { cap_kw } => prop_assert!(p.abs() <= cap_kw + 1e-9),
                    SafeState::ChargeOnly => prop_assert!(p >= 0.0),
                    SafeState::Tripped => prop_assert_eq!(p, 0.0),
                }
                if l.level() != SafeState::Normal {
                    prop_assert!(!l.causes().is_empty(), "a restriction always has a cause");
                }
            }
        }
    }
}
