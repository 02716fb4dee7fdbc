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
//! | islanding: voltage or frequency outside an IEEE 1547-2018 trip band for its clearing time, or grid voltage lost, while exporting | Tripped |
//! | PTP offset over 1 ms / over 100 ms | ChargeOnly / Tripped |
//! | grid controller keep-alive missing for 5 s | ChargeOnly |
//! | inverter core over 65 °C | Limited, derated linearly to 0 at 85 °C |
//! | transformer at its thermal limit | Limited to the transformer's allowance |
//! | node cannot see a majority of the cluster | ChargeOnly |
//! | a supervisor of the segment exceeded its restart intensity | ChargeOnly (and an alarm) |
//!
//! **Tripped locks out**, as protection relays do: whatever tripped the segment, it stays
//! Tripped (the cause [`FaultKey::Lockout`]) after its causes cleared and held, until an
//! operator resets it ([`SafeStateLadder::reset`], refused while a cause of the trip is
//! present or holding) or, when configured ([`LadderConfig::auto_reclose`]), until the
//! reclose delay has passed after the hold.

use std::collections::BTreeMap;
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
    const fn over(threshold: f64, ms: u64) -> Self {
        TripBand {
            threshold,
            over: true,
            clearing_time: Duration::from_millis(ms),
        }
    }
    const fn under(threshold: f64, ms: u64) -> Self {
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

/// The ladder's thresholds. Defaults follow DESIGN.md's fault table and IEEE 1547-2018's
/// default trip settings (voltage: Category II; frequency: 60 Hz systems).
#[derive(Debug, Clone, PartialEq)]
pub struct LadderConfig {
    /// How long a cleared fault keeps its level (IEEE 1547's enter-service delay).
    pub hold_time: Duration,
    /// Voltage trip bands, per unit: OV2 1.20/0.16 s, OV1 1.10/2 s, UV1 0.70/10 s,
    /// UV2 0.45/0.16 s.
    pub voltage_bands: Vec<TripBand>,
    /// Frequency trip bands, Hz: OF2 62.0/0.16 s, OF1 61.2/300 s, UF1 58.5/300 s,
    /// UF2 56.5/0.16 s.
    pub frequency_bands: Vec<TripBand>,
    /// Below this voltage (per unit) the grid is lost: islanding at once when exporting.
    pub voltage_lost_pu: f64,
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

impl Default for LadderConfig {
    fn default() -> Self {
        LadderConfig {
            hold_time: Duration::from_secs(300),
            voltage_bands: vec![
                TripBand::over(1.20, 160),
                TripBand::over(1.10, 2_000),
                TripBand::under(0.70, 10_000),
                TripBand::under(0.45, 160),
            ],
            frequency_bands: vec![
                TripBand::over(62.0, 160),
                TripBand::over(61.2, 300_000),
                TripBand::under(58.5, 300_000),
                TripBand::under(56.5, 160),
            ],
            voltage_lost_pu: 0.10,
            ptp_charge_only: Duration::from_millis(1),
            ptp_trip: Duration::from_millis(100),
            keepalive_timeout: Duration::from_secs(5),
            derate_start_c: 65.0,
            derate_zero_c: 85.0,
            auto_reclose: None,
        }
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
    /// The segment's meter cannot be read: nothing would see islanding or the transformer's
    /// load.
    Metering,
    /// The segment tripped and is locked out: Tripped until an operator resets it (or the
    /// configured automatic reclose), after the trip's causes cleared and held.
    Lockout,
}

impl FaultKey {
    /// Every kind of fault source, as [`FaultKey::kind`] names it.
    pub const KINDS: [&'static str; 11] = [
        "islanding",
        "clock_drift",
        "keepalive",
        "over_temperature",
        "transformer_thermal",
        "quorum",
        "restart_intensity",
        "restored",
        "metering",
        "handoff",
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
            FaultKey::Metering => Self::KINDS[8],
            FaultKey::Handoff => Self::KINDS[9],
            FaultKey::Lockout => Self::KINDS[10],
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
    /// Whether the segment's meter can be read (false after repeated failures): a segment
    /// that cannot see the grid must not export.
    Metering(bool),
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
            config,
            demands: BTreeMap::new(),
            beyond_since: vec![None; bands],
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
                // Exporting into an abnormal grid trips (IEEE 1547 cease to energize). Once
                // tripped the segment no longer exports, but the grid is no better: the trip
                // stays while the grid is abnormal (its hold time, the enter-service delay,
                // starts only once the grid is back in its bands). A segment that was not
                // exporting must not start to either: ChargeOnly.
                let tripped = self
                    .demands
                    .get(&FaultKey::Islanding)
                    .is_some_and(|d| d.cleared_at.is_none() && d.state == SafeState::Tripped);
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
            Fault::Metering(ok) => {
                self.set(
                    FaultKey::Metering,
                    (!ok).then_some(SafeState::ChargeOnly),
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

    /// Advance time without an observation: checks the keep-alive watchdog and the trip
    /// bands' clearing times, and lets held faults expire.
    pub fn tick(&mut self, now: Duration) -> Option<Transition> {
        let silent = now.saturating_sub(self.last_keepalive) > self.config.keepalive_timeout;
        if silent {
            self.set(FaultKey::KeepAlive, Some(SafeState::ChargeOnly), now);
        }
        self.settle(now)
    }

    /// True when this reading, with those before it, means the segment is islanded.
    /// Whether the grid at the point of connection is abnormal: a reading beyond a trip band
    /// for its clearing time, a voltage under the lost threshold, or a reading that is not a
    /// number (which says nothing good about the grid).
    fn grid_abnormal(&mut self, voltage_pu: f64, frequency_hz: f64, now: Duration) -> bool {
        if !voltage_pu.is_finite() || !frequency_hz.is_finite() {
            return true;
        }
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
        tripped || lost
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

    fn ladder() -> SafeStateLadder {
        SafeStateLadder::new(LadderConfig::default(), Duration::ZERO)
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
    fn a_meter_that_cannot_be_read_means_charge_only() {
        let mut l = ladder();
        let t = l.observe(Fault::Metering(false), ms(0)).unwrap();
        assert_eq!(t.to, SafeState::ChargeOnly);
        assert_eq!(t.causes, vec![FaultKey::Metering]);
        assert_eq!(l.observe(Fault::Metering(true), ms(10)), None, "held");
        l.observe(Fault::KeepAlive, ms(299_000));
        assert_eq!(l.tick(ms(300_010)).map(|t| t.to), Some(SafeState::Normal));
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
        ]
    }

    proptest! {
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
