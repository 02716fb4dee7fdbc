//! A vehicle's charging session: an ISO 15118-like state machine and the battery's energy
//! book-keeping. Pure: no actors, no clocks, no I/O.
//!
//! ```text
//!  Plugged ─Authorize─▶ Authorized ─Power(kw)─▶ Charging     (kw >  IDLE_KW)
//!                        │                      Discharging  (kw < -IDLE_KW)
//!                        │                      Paused       (otherwise)
//!                        └─Pause─▶ Paused
//!  Charging / Discharging / Paused ──Power(kw)──▶ one of the three above
//!  Charging / Discharging ──Pause──▶ Paused
//!  any state but Ended ──Unplug──▶ Ended (final)
//! ```
//!
//! Every other pair of state and event is refused with a [`TransitionError`] and leaves the
//! session as it was; so is a `Power` event whose value is not a finite number.
//!
//! Invariants:
//! * `Ended` is final: no event leaves it.
//! * A session only takes power after it was authorized and before it ended:
//!   [`Session::charge_limit_kw`] and [`Session::discharge_limit_kw`] are 0 in `Plugged` and
//!   `Ended`.
//! * The state of charge stays within 0..=100 %: [`Session::integrate`] clamps it and says so,
//!   since a model that has to clamp disagrees with the battery.
//! * Discharging at [`Session::discharge_limit_kw`]`(h)` for `h` seconds never takes the
//!   battery below its minimum state of charge, nor the session's discharge beyond the EV's
//!   energy offer; charging at [`Session::charge_limit_kw`]`(h)`
//!   for `h` seconds never takes it above 100 %. (Both limits keep [`ENERGY_GUARD_KWH`] in
//!   reserve so that floating-point rounding cannot cross the line.)
//! * Inputs that are not finite numbers are refused with an error and change nothing.
//!
//! The EV's own data (issue 21): [`Session::take_ev`] takes what the EV reported through its
//! charge point ([`EvReport`]): a reported SoC replaces the estimate (which metered energy
//! then carries on), the departure is kept on the wall clock (`depart_unix_s`) and put on the
//! node's clock each time, the minimum SoC is the higher of the contract's and the EV's V2X
//! minimum and never falls during a session. [`Sources`] says where each value came from.
//! The EV's energy offer (OCPP 2.1 `evEnergyOffer`, integrated by [`offered_discharge_kwh`])
//! caps the energy discharged over the session ([`Session::dischargeable_kwh`]); the
//! schedule it computed (NotifyEVChargingSchedule) is kept as [`EvSchedule`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Vehicle;

/// Power within ±`IDLE_KW` of zero counts as idle: the session is `Paused`, kW.
pub const IDLE_KW: f64 = 0.05;
/// Energy the power limits keep in reserve against rounding, kWh (1 Wh).
pub const ENERGY_GUARD_KWH: f64 = 1e-3;
/// Seconds per hour: energy (kWh) = power (kW) × time (s) / `SECONDS_PER_HOUR`.
pub const SECONDS_PER_HOUR: f64 = 3_600.0;
/// The full state of charge, %.
pub const FULL_SOC_PCT: f64 = 100.0;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Plugged in, not yet authorized: no power.
    Plugged,
    /// Authorized, no power requested yet.
    Authorized,
    /// Taking power from the grid.
    Charging,
    /// Giving power to the grid.
    Discharging,
    /// Authorized and idle.
    Paused,
    /// Unplugged. Final.
    Ended,
}

impl SessionState {
    /// Every state, in [`SessionState::code`] order.
    pub const ALL: [SessionState; 6] = [
        SessionState::Plugged,
        SessionState::Authorized,
        SessionState::Charging,
        SessionState::Discharging,
        SessionState::Paused,
        SessionState::Ended,
    ];

    /// The snake_case name (as in serde and metrics labels).
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionState::Plugged => "plugged",
            SessionState::Authorized => "authorized",
            SessionState::Charging => "charging",
            SessionState::Discharging => "discharging",
            SessionState::Paused => "paused",
            SessionState::Ended => "ended",
        }
    }

    /// A number for gauges: 0 (plugged) to 5 (ended), in declaration order.
    pub fn code(&self) -> u8 {
        match self {
            SessionState::Plugged => 0,
            SessionState::Authorized => 1,
            SessionState::Charging => 2,
            SessionState::Discharging => 3,
            SessionState::Paused => 4,
            SessionState::Ended => 5,
        }
    }

    /// True once no event can change the state.
    pub fn is_final(&self) -> bool {
        *self == SessionState::Ended
    }

    /// True when the session may take or give power (authorized and not ended).
    pub fn may_flow(&self) -> bool {
        !matches!(self, SessionState::Plugged | SessionState::Ended)
    }

    /// The state after `event`, or the refusal.
    pub fn next(self, event: SessionEvent) -> Result<SessionState, TransitionError> {
        use SessionState::*;
        let refuse = Err(TransitionError { from: self, event });
        match (self, event) {
            (Ended, _) => refuse,
            (_, SessionEvent::Unplug) => Ok(Ended),
            (Plugged, SessionEvent::Authorize) => Ok(Authorized),
            (Authorized | Charging | Discharging | Paused, SessionEvent::Power { kw }) => {
                if !kw.is_finite() {
                    refuse
                } else if kw > IDLE_KW {
                    Ok(Charging)
                } else if kw < -IDLE_KW {
                    Ok(Discharging)
                } else {
                    Ok(Paused)
                }
            }
            (Authorized | Charging | Discharging, SessionEvent::Pause) => Ok(Paused),
            _ => refuse,
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can happen to a session.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SessionEvent {
    /// The vehicle was authorized (ISO 15118 authorization finished).
    Authorize,
    /// Power is flowing at `kw` (positive charges the vehicle, negative discharges it).
    Power {
        /// The power, kW.
        kw: f64,
    },
    /// Power was stopped, the session stays authorized.
    Pause,
    /// The vehicle was unplugged.
    Unplug,
}

impl fmt::Display for SessionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEvent::Authorize => f.write_str("authorize"),
            SessionEvent::Power { kw } => write!(f, "power({kw} kW)"),
            SessionEvent::Pause => f.write_str("pause"),
            SessionEvent::Unplug => f.write_str("unplug"),
        }
    }
}

/// An event the session's state does not allow (or a power that is not a number).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("a session in state {from} cannot take the event {event}{}", non_finite_note(.event))]
pub struct TransitionError {
    /// The state the session was (and stays) in.
    pub from: SessionState,
    /// The refused event.
    pub event: SessionEvent,
}

fn non_finite_note(event: &SessionEvent) -> &'static str {
    match event {
        SessionEvent::Power { kw } if !kw.is_finite() => " (the power is not a finite number)",
        _ => "",
    }
}

/// An energy update [`Session::integrate`] refused; the session is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum EnergyError {
    /// The energy delta is not a finite number.
    #[error("energy delta {0} kWh is not a finite number")]
    NonFiniteEnergy(f64),
    /// The session's capacity cannot turn energy into state of charge.
    #[error("battery capacity {0} kWh is not a positive finite number")]
    InvalidCapacity(f64),
    /// The session's state of charge is not a number, so there is nothing to add to.
    #[error("state of charge {0} % is not a finite number")]
    InvalidSoc(f64),
}

/// One vehicle's session: its state and its battery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The vehicle's id.
    pub vehicle: String,
    /// Where the session is.
    pub state: SessionState,
    /// Battery capacity, kWh.
    pub capacity_kwh: f64,
    /// State of charge, % (0..=100).
    pub soc_pct: f64,
    /// Discharging must not go below this state of charge, %.
    pub min_soc_pct: f64,
    /// The state of charge the driver wants on departure, %.
    pub target_soc_pct: f64,
    /// The vehicle's own power limit in both directions, kW.
    pub max_kw: f64,
    /// When the vehicle leaves, s since the run's start.
    pub depart_s: f64,
    /// Net energy delivered into the vehicle so far, kWh (negative after net discharge).
    pub energy_kwh: f64,
    // Fields below were added with issue 21; `default` keeps older checkpoints readable
    // (rmp-serde writes structs as arrays: a shorter array takes the defaults).
    /// Whether the vehicle may be discharged (its contract's `v2g`; configured vehicles:
    /// true). When false [`Session::discharge_limit_kw`] is 0.
    #[serde(default = "yes")]
    pub discharge_allowed: bool,
    /// The charger it is plugged into (token sessions; empty for older checkpoints).
    #[serde(default)]
    pub charger: String,
    /// When it leaves, wall clock (s since the Unix epoch), when known: a node restart
    /// converts it to the new run's clock, so the departure does not move.
    #[serde(default)]
    pub depart_unix_s: Option<f64>,
    /// The contract's name (driver or fleet) and priority class, for token sessions.
    #[serde(default)]
    pub contract: Option<(String, u8)>,
    /// The EV's own charge power limit, kW (from NotifyEVChargingNeeds), if it gave one.
    #[serde(default)]
    pub ev_max_charge_kw: Option<f64>,
    /// The EV's own discharge power limit, kW, if it gave one.
    #[serde(default)]
    pub ev_max_discharge_kw: Option<f64>,
    /// The energy the EV requested (to its target), kWh, when it said.
    #[serde(default)]
    pub requested_kwh: Option<f64>,
    /// When the newest NotifyEVChargingNeeds taken was received (wall clock, Unix s).
    #[serde(default)]
    pub needs_at_unix_s: Option<f64>,
    /// Where each value came from (the session API shows it).
    #[serde(default)]
    pub sources: Sources,
    /// The energy the EV offers to discharge over the session, kWh (its `evEnergyOffer`
    /// integrated by [`offered_discharge_kwh`]); `None`: it made no offer, only the other
    /// limits apply.
    #[serde(default)]
    pub ev_offer_kwh: Option<f64>,
    /// Energy taken out of the battery so far in this session, kWh (>= 0; metered
    /// discharge only, charging does not give it back): what counts against the offer.
    #[serde(default)]
    pub discharged_kwh: f64,
    /// The charging schedule the EV computed (NotifyEVChargingSchedule), when it sent one.
    #[serde(default)]
    pub ev_schedule: Option<EvSchedule>,
}

/// The charging schedule an EV computed (NotifyEVChargingSchedule), as the session keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvSchedule {
    /// The periods start this long after this time (wall clock, Unix s).
    pub time_base_unix_s: f64,
    /// The schedule's id.
    pub id: i32,
    /// The schedule the EV selected from the CSMS's profile (OCPP 2.1), if it said.
    pub selected_id: Option<i32>,
    /// `W` or `A`: the unit of the limits.
    pub unit: String,
    /// Its periods, in order.
    pub periods: Vec<EvSchedulePeriod>,
    /// Its total duration, s, if it said.
    pub duration_s: Option<f64>,
    /// When the CSMS received it (wall clock, Unix s).
    pub at_unix_s: f64,
}

/// A period of an [`EvSchedule`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvSchedulePeriod {
    /// Its start, s after the schedule's time base.
    pub start_s: f64,
    /// The charge limit, in the schedule's unit (optional in OCPP 2.1).
    pub limit: Option<f64>,
    /// The discharge limit (<= 0), in the schedule's unit (OCPP 2.1), if given.
    pub discharge_limit: Option<f64>,
}

/// The energy an EV offers to discharge, kWh, from its `evEnergyOffer` power schedule:
/// `(duration s, power W)` entries, negative power being what it is willing to give. An
/// entry with a positive power (nothing to offer then), or a duration or power that is not a
/// finite number, or a negative duration, adds nothing.
pub fn offered_discharge_kwh(entries: &[(f64, f64)]) -> f64 {
    entries
        .iter()
        .filter(|(d, p)| d.is_finite() && p.is_finite() && *d > 0.0 && *p < 0.0)
        .map(|(d, p)| -p / 1000.0 * d / SECONDS_PER_HOUR)
        .sum()
}

/// Who said a session's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The EV, through its charge point (NotifyEVChargingNeeds, MeterValues' `SoC`).
    Reported,
    /// The token's contract (the authorization list).
    Contract,
    /// The topology's `[[vehicles]]` (the simulated demo, benchmarks).
    Config,
    /// Nobody: a safe assumption (`crate::authorization`'s `ASSUMED_*`, or the minimum SoC
    /// as the state of charge, which leaves nothing to discharge).
    #[default]
    Assumed,
}

/// A value's source and, when reported, when (wall clock, Unix s).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Source {
    /// Who said it.
    pub kind: SourceKind,
    /// When the EV reported it.
    pub at_unix_s: Option<f64>,
}

impl Source {
    fn of(kind: SourceKind) -> Source {
        Source {
            kind,
            at_unix_s: None,
        }
    }

    fn reported(at: f64) -> Source {
        Source {
            kind: SourceKind::Reported,
            at_unix_s: Some(at),
        }
    }
}

/// The source of each value of a session that dispatch uses.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Sources {
    /// `soc_pct` (a reported one is then carried on by metered energy).
    pub soc: Source,
    /// `capacity_kwh`.
    pub capacity: Source,
    /// `min_soc_pct`.
    pub min_soc: Source,
    /// `target_soc_pct`.
    pub target_soc: Source,
    /// `depart_s` / `depart_unix_s`.
    pub departure: Source,
    /// `max_kw` and the EV's own limits.
    pub max_power: Source,
    /// `discharge_allowed`.
    pub discharge: Source,
    /// `ev_offer_kwh`.
    #[serde(default)]
    pub offer: Source,
    /// `ev_schedule`.
    #[serde(default)]
    pub schedule: Source,
}

/// What the EV reported through its charge point (the CSMS keeps the newest per charger).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvReport {
    /// The `SoC` measurand of its newest meter values: (%, received at, Unix s).
    pub soc: Option<(f64, f64)>,
    /// Its newest NotifyEVChargingNeeds.
    pub needs: Option<EvNeeds>,
    /// The token's contract as the list has it now: (V2G allowed, minimum SoC %). A change
    /// only tightens a running session (no discharge once V2G is withdrawn, a higher
    /// minimum); nothing here loosens it.
    pub terms: Option<(bool, f64)>,
    /// Its newest NotifyEVChargingSchedule.
    pub schedule: Option<EvSchedule>,
}

/// NotifyEVChargingNeeds in the session's units (energies kWh, powers kW, times Unix s).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvNeeds {
    /// When the CSMS received it.
    pub at_unix_s: f64,
    /// `departureTime`.
    pub departure_unix_s: Option<f64>,
    /// `evEnergyCapacity`.
    pub capacity_kwh: Option<f64>,
    /// `stateOfCharge` (DC parameters).
    pub soc_pct: Option<f64>,
    /// `targetSoC` (V2X parameters).
    pub target_soc_pct: Option<f64>,
    /// Energy to the target: `evTargetEnergyRequest`, else `energyAmount`.
    pub requested_kwh: Option<f64>,
    /// `maxChargePower` (V2X), else `evMaxPower` (DC).
    pub max_charge_kw: Option<f64>,
    /// `maxDischargePower` (V2X).
    pub max_discharge_kw: Option<f64>,
    /// `evMinV2XEnergyRequest`: energy to the lowest state of charge the EV allows V2X
    /// down to (negative: it is above it by that much).
    pub min_v2x_kwh: Option<f64>,
    /// `evEnergyOffer` integrated ([`offered_discharge_kwh`]), kWh.
    pub offer_kwh: Option<f64>,
}

fn yes() -> bool {
    true
}

fn contract_or_assumed(given: bool) -> SourceKind {
    if given {
        SourceKind::Contract
    } else {
        SourceKind::Assumed
    }
}

/// `a` capped by `b` when given; anything not a finite non-negative number counts as 0.
fn finite_min(a: f64, b: Option<f64>) -> f64 {
    let ok = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    b.map_or(ok(a), |b| ok(a).min(ok(b)))
}

impl Session {
    /// A new session (state `Plugged`, no energy delivered) for a configured vehicle.
    pub fn from_vehicle(vehicle: &Vehicle) -> Session {
        Session {
            vehicle: vehicle.id.clone(),
            state: SessionState::Plugged,
            capacity_kwh: vehicle.capacity_kwh,
            soc_pct: vehicle.soc_pct,
            min_soc_pct: vehicle.min_soc_pct,
            target_soc_pct: vehicle.target_soc_pct,
            max_kw: vehicle.max_kw,
            depart_s: vehicle.depart_s,
            energy_kwh: 0.0,
            discharge_allowed: true,
            charger: vehicle.charger.clone(),
            depart_unix_s: None,
            contract: None,
            ev_max_charge_kw: None,
            ev_max_discharge_kw: None,
            requested_kwh: None,
            needs_at_unix_s: None,
            sources: Sources {
                soc: Source::of(SourceKind::Config),
                capacity: Source::of(SourceKind::Config),
                min_soc: Source::of(SourceKind::Config),
                target_soc: Source::of(SourceKind::Config),
                departure: Source::of(SourceKind::Config),
                max_power: Source::of(SourceKind::Config),
                discharge: Source::of(SourceKind::Config),
                offer: Source::of(SourceKind::Assumed),
                schedule: Source::of(SourceKind::Assumed),
            },
            ev_offer_kwh: None,
            discharged_kwh: 0.0,
            ev_schedule: None,
        }
    }

    /// A new session for `token` at `charger` from its contract, arriving now (`now_s` on
    /// the node's clock, `now_wall` on the wall clock). Until the EV reports, its state of
    /// charge is assumed to be the contract's minimum (nothing to discharge, which is
    /// safe), its capacity the contract's or [`crate::authorization::ASSUMED_CAPACITY_KWH`],
    /// its power limit the charger's.
    pub fn from_contract(
        token: &str,
        charger: &str,
        contract: &crate::authorization::Contract,
        charger_max_kw: f64,
        now_s: f64,
        now_wall: std::time::SystemTime,
    ) -> Session {
        let (depart, depart_given) = contract.departure(now_wall);
        let stay = depart
            .duration_since(now_wall)
            .unwrap_or_default()
            .as_secs_f64();
        let unix = depart
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Session {
            vehicle: token.to_owned(),
            state: SessionState::Plugged,
            capacity_kwh: contract
                .capacity_kwh
                .unwrap_or(crate::authorization::ASSUMED_CAPACITY_KWH),
            soc_pct: contract.min_soc_pct,
            min_soc_pct: contract.min_soc_pct,
            target_soc_pct: contract.target_soc_pct,
            max_kw: charger_max_kw,
            depart_s: now_s + stay,
            energy_kwh: 0.0,
            discharge_allowed: contract.v2g,
            charger: charger.to_owned(),
            depart_unix_s: Some(unix),
            contract: Some((contract.name.clone(), contract.priority)),
            ev_max_charge_kw: None,
            ev_max_discharge_kw: None,
            requested_kwh: None,
            needs_at_unix_s: None,
            sources: Sources {
                soc: Source::of(SourceKind::Assumed),
                capacity: Source::of(contract_or_assumed(contract.capacity_kwh.is_some())),
                min_soc: Source::of(SourceKind::Contract),
                target_soc: Source::of(SourceKind::Contract),
                departure: Source::of(contract_or_assumed(depart_given)),
                max_power: Source::of(SourceKind::Config),
                discharge: Source::of(SourceKind::Contract),
                offer: Source::of(SourceKind::Assumed),
                schedule: Source::of(SourceKind::Assumed),
            },
            ev_offer_kwh: None,
            discharged_kwh: 0.0,
            ev_schedule: None,
        }
    }

    /// Take what the EV reported (newer than what the session has) and put the departure
    /// on the node's clock now (`now_s` on the node's clock is `now_unix_s` on the wall
    /// clock), so that a departure kept as a wall-clock time never moves with a restart.
    /// Returns whether anything changed.
    ///
    /// The minimum state of charge only rises: it is the higher of the contract's and the
    /// one the EV's `evMinV2XEnergyRequest` implies with its capacity.
    pub fn take_ev(&mut self, report: &EvReport, now_s: f64, now_unix_s: f64) -> bool {
        let before = self.clone();
        if let Some(n) = &report.needs {
            if self.needs_at_unix_s.is_none_or(|t| n.at_unix_s > t) {
                self.take_needs(n);
            }
        }
        if let Some((soc, at)) = report.soc {
            self.take_soc(soc, at);
        }
        if let Some(sch) = &report.schedule {
            if self
                .sources
                .schedule
                .at_unix_s
                .is_none_or(|t| sch.at_unix_s > t)
            {
                self.ev_schedule = Some(sch.clone());
                self.sources.schedule = Source::reported(sch.at_unix_s);
            }
        }
        if let Some((v2g, min)) = report.terms {
            if !v2g && self.discharge_allowed {
                self.discharge_allowed = false;
                self.sources.discharge = Source::of(SourceKind::Contract);
            }
            if min.is_finite() && min > self.min_soc_pct && min <= FULL_SOC_PCT {
                self.min_soc_pct = min;
                self.sources.min_soc = Source::of(SourceKind::Contract);
            }
        }
        if let Some(d) = self.depart_unix_s.filter(|d| d.is_finite()) {
            let s = now_s + (d - now_unix_s);
            if s.is_finite() {
                self.depart_s = s;
            }
        }
        *self != before
    }

    /// A reported state of charge newer than the one the session has.
    fn take_soc(&mut self, soc: f64, at: f64) {
        let newer = self.sources.soc.at_unix_s.is_none_or(|t| at > t);
        if newer && soc.is_finite() && (0.0..=FULL_SOC_PCT).contains(&soc) {
            self.soc_pct = soc;
            self.sources.soc = Source::reported(at);
        }
    }

    fn take_needs(&mut self, n: &EvNeeds) {
        let at = n.at_unix_s;
        self.needs_at_unix_s = Some(at);
        if let Some(c) = n.capacity_kwh.filter(|c| c.is_finite() && *c > 0.0) {
            self.capacity_kwh = c;
            self.sources.capacity = Source::reported(at);
        }
        if let Some(soc) = n.soc_pct {
            self.take_soc(soc, at);
        }
        if let Some(d) = n.departure_unix_s.filter(|d| d.is_finite()) {
            self.depart_unix_s = Some(d);
            self.sources.departure = Source::reported(at);
        }
        let kw = |x: Option<f64>| x.filter(|x| x.is_finite() && *x >= 0.0);
        if let Some(c) = kw(n.max_charge_kw) {
            self.ev_max_charge_kw = Some(c);
            self.sources.max_power = Source::reported(at);
        }
        if let Some(d) = kw(n.max_discharge_kw) {
            self.ev_max_discharge_kw = Some(d);
            self.sources.max_power = Source::reported(at);
        }
        let to_pct = |kwh: f64| kwh / self.capacity_kwh * FULL_SOC_PCT;
        if let Some(e) = n.min_v2x_kwh.filter(|e| e.is_finite()) {
            let floor = (self.soc_pct + to_pct(e)).clamp(0.0, FULL_SOC_PCT);
            if floor > self.min_soc_pct {
                self.min_soc_pct = floor;
                self.sources.min_soc = Source::reported(at);
            }
        }
        let target = n.target_soc_pct.or_else(|| {
            n.requested_kwh
                .filter(|e| e.is_finite())
                .map(|e| self.soc_pct + to_pct(e))
        });
        if let Some(t) = target.filter(|t| t.is_finite()) {
            self.target_soc_pct = t.clamp(self.min_soc_pct, FULL_SOC_PCT);
            self.sources.target_soc = Source::reported(at);
        }
        if let Some(e) = n.requested_kwh.filter(|e| e.is_finite()) {
            self.requested_kwh = Some(e);
        }
        if let Some(e) = n.offer_kwh.filter(|e| e.is_finite() && *e >= 0.0) {
            self.ev_offer_kwh = Some(e);
            self.sources.offer = Source::reported(at);
        }
    }

    /// The state of charge below which the target can no longer be reached by departure
    /// at the most the vehicle can charge, % (`now_s` on the node's clock): discharging
    /// below it would break the promise to the driver. 0 when the departure has passed or
    /// is unknown, and for a configured vehicle (`[[vehicles]]`: the demo and benchmarks
    /// keep their behaviour).
    pub fn departure_floor_pct(&self, now_s: f64) -> f64 {
        let hours = (self.depart_s - now_s) / SECONDS_PER_HOUR;
        let kw = self.max_charge_kw();
        let configured = self.sources.departure.kind == SourceKind::Config;
        if configured || !(hours.is_finite() && hours > 0.0 && self.capacity_kwh > 0.0) {
            return 0.0;
        }
        let reachable = kw * hours / self.capacity_kwh * FULL_SOC_PCT;
        (self.target_soc_pct - reachable).clamp(0.0, FULL_SOC_PCT)
    }

    /// The energy the vehicle will lack at its departure even at its full charge power from
    /// `now_s` on (the node's clock), kWh: 0 while its target can still be met. A positive
    /// value is what the session shows when safety (a trip, a transformer limit) keeps the
    /// must-charge obligation from being met ([`crate::dispatch::must_charge_kw`]).
    pub fn departure_shortfall_kwh(&self, now_s: f64) -> f64 {
        let need = (self.target_soc_pct.min(FULL_SOC_PCT) - self.soc_pct) / 100.0
            * self.capacity_kwh.max(0.0);
        let hours = ((self.depart_s - now_s) / SECONDS_PER_HOUR).max(0.0);
        let short = need - self.max_charge_kw() * hours;
        if short.is_finite() {
            short.max(0.0)
        } else {
            0.0
        }
    }

    /// The most the vehicle charges at, kW: its own limit and the EV's reported one.
    pub fn max_charge_kw(&self) -> f64 {
        finite_min(self.max_kw, self.ev_max_charge_kw)
    }

    /// The most the vehicle discharges at, kW (0 without V2G, or once the EV's energy offer
    /// is used up: so dispatch and the flexibility it reports do not count on it).
    pub fn max_discharge_kw(&self) -> f64 {
        if self.discharge_allowed && !self.offer_used_up() {
            finite_min(self.max_kw, self.ev_max_discharge_kw)
        } else {
            0.0
        }
    }

    /// Apply an event; returns the new state. A refused event changes nothing.
    pub fn apply(&mut self, event: SessionEvent) -> Result<SessionState, TransitionError> {
        let next = self.state.next(event)?;
        self.state = next;
        Ok(next)
    }

    /// Account for `delta_kwh` delivered into the battery (negative: taken out). The energy
    /// counter takes the measured delta as is; the state of charge follows it, clamped to
    /// 0..=100 %. Returns `Ok(true)` when it had to clamp (the model and the battery
    /// disagree), `Ok(false)` when not. A delta that is not a finite number, or a session
    /// whose capacity or state of charge is unusable, is refused and changes nothing.
    pub fn integrate(&mut self, delta_kwh: f64) -> Result<bool, EnergyError> {
        if !delta_kwh.is_finite() {
            return Err(EnergyError::NonFiniteEnergy(delta_kwh));
        }
        if !(self.capacity_kwh.is_finite() && self.capacity_kwh > 0.0) {
            return Err(EnergyError::InvalidCapacity(self.capacity_kwh));
        }
        if !self.soc_pct.is_finite() {
            return Err(EnergyError::InvalidSoc(self.soc_pct));
        }
        let soc = self.soc_pct + delta_kwh / self.capacity_kwh * FULL_SOC_PCT;
        let energy = self.energy_kwh + delta_kwh;
        if delta_kwh < 0.0 {
            self.discharged_kwh -= delta_kwh;
        }
        // A non-finite energy counter (possible only if it was already extreme) is not kept.
        if energy.is_finite() {
            self.energy_kwh = energy;
        }
        let clamped = soc.clamp(0.0, FULL_SOC_PCT);
        self.soc_pct = clamped;
        Ok(clamped != soc)
    }

    /// Energy that can be taken out before reaching the minimum state of charge, kWh (>= 0).
    pub fn energy_above_min_kwh(&self) -> f64 {
        self.energy_between(self.min_soc_pct, self.soc_pct)
    }

    /// Whether the EV made an energy offer and no more than the rounding reserve is left.
    fn offer_used_up(&self) -> bool {
        self.ev_offer_kwh.is_some_and(|offer| {
            let left = offer - self.discharged_kwh;
            left.is_nan() || left <= ENERGY_GUARD_KWH
        })
    }

    /// Energy that may still be discharged: above the minimum state of charge and, when the
    /// EV made an offer, within what remains of it, kWh (>= 0).
    pub fn dischargeable_kwh(&self) -> f64 {
        let above_min = self.energy_above_min_kwh();
        match self.ev_offer_kwh {
            Some(offer) => {
                let left = offer - self.discharged_kwh;
                if left.is_finite() {
                    above_min.min(left.max(0.0))
                } else {
                    0.0
                }
            }
            None => above_min,
        }
    }

    /// Energy that can be put in before the battery is full, kWh (>= 0).
    pub fn energy_to_full_kwh(&self) -> f64 {
        self.energy_between(self.soc_pct, FULL_SOC_PCT)
    }

    /// Energy still needed to reach the target state of charge, kWh (>= 0).
    pub fn energy_to_target_kwh(&self) -> f64 {
        self.energy_between(self.soc_pct, self.target_soc_pct)
    }

    /// The energy of going from `low` to `high` % of capacity; 0 when negative or when any
    /// input is not a usable number.
    fn energy_between(&self, low_pct: f64, high_pct: f64) -> f64 {
        let capacity = self.capacity_kwh;
        if !(capacity.is_finite() && capacity > 0.0) {
            return 0.0;
        }
        let energy = (high_pct - low_pct) / FULL_SOC_PCT * capacity;
        if energy.is_finite() {
            energy.max(0.0)
        } else {
            0.0
        }
    }

    /// The most the vehicle may discharge, kW (>= 0), if that power is held for `horizon_s`
    /// seconds: it must not go below its minimum state of charge, nor beyond what is left
    /// of the EV's energy offer, nor above its own limit. 0 when the session may not take
    /// power, or `horizon_s` is not a positive finite number.
    pub fn discharge_limit_kw(&self, horizon_s: f64) -> f64 {
        self.power_limit(self.dischargeable_kwh(), self.max_discharge_kw(), horizon_s)
    }

    /// The most the vehicle may charge, kW (>= 0), if that power is held for `horizon_s`
    /// seconds: it must not go above 100 %, nor above its own limit. 0 when the session may
    /// not take power, or `horizon_s` is not a positive finite number.
    pub fn charge_limit_kw(&self, horizon_s: f64) -> f64 {
        self.power_limit(self.energy_to_full_kwh(), self.max_charge_kw(), horizon_s)
    }

    fn power_limit(&self, energy_kwh: f64, max_kw: f64, horizon_s: f64) -> f64 {
        let horizon_ok = horizon_s.is_finite() && horizon_s > 0.0;
        if !(self.state.may_flow() && horizon_ok) {
            return 0.0;
        }
        let usable = (energy_kwh - ENERGY_GUARD_KWH).max(0.0);
        let by_energy = usable * SECONDS_PER_HOUR / horizon_s;
        if by_energy.is_finite() {
            by_energy.min(max_kw)
        } else {
            max_kw
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vehicle() -> Vehicle {
        Vehicle {
            id: "ev-1".into(),
            charger: "evse-1".into(),
            capacity_kwh: 50.0,
            soc_pct: 60.0,
            min_soc_pct: 20.0,
            target_soc_pct: 80.0,
            arrive_s: 0.0,
            depart_s: 3_600.0,
            max_kw: 11.0,
        }
    }

    fn authorized() -> Session {
        let mut s = Session::from_vehicle(&vehicle());
        assert_eq!(
            s.apply(SessionEvent::Authorize),
            Ok(SessionState::Authorized)
        );
        s
    }

    fn power(kw: f64) -> SessionEvent {
        SessionEvent::Power { kw }
    }

    #[test]
    fn from_vehicle_copies_the_battery_and_starts_plugged() {
        let s = Session::from_vehicle(&vehicle());
        assert_eq!(s.vehicle, "ev-1");
        assert_eq!(s.state, SessionState::Plugged);
        assert_eq!(
            (s.capacity_kwh, s.soc_pct, s.min_soc_pct, s.target_soc_pct),
            (50.0, 60.0, 20.0, 80.0)
        );
        assert_eq!((s.max_kw, s.depart_s, s.energy_kwh), (11.0, 3_600.0, 0.0));
    }

    fn contract_session() -> Session {
        let contract = crate::authorization::Contract {
            name: "fleet-a".into(),
            min_soc_pct: 30.0,
            v2g: true,
            priority: 1,
            depart_at: None,
            stay_s: Some(7_200),
            target_soc_pct: 80.0,
            capacity_kwh: Some(50.0),
            blocked: false,
        };
        let wall = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let mut s = Session::from_contract("TOKEN", "cp-9", &contract, 22.0, 100.0, wall);
        s.apply(SessionEvent::Authorize).unwrap();
        s
    }

    #[test]
    fn a_contract_session_assumes_the_minimum_until_the_ev_reports() {
        let s = contract_session();
        assert_eq!(
            (s.soc_pct, s.min_soc_pct, s.capacity_kwh),
            (30.0, 30.0, 50.0)
        );
        assert_eq!(s.depart_s, 7_300.0);
        assert_eq!(s.depart_unix_s, Some(1_007_200.0));
        assert_eq!(s.sources.soc.kind, SourceKind::Assumed);
        assert_eq!(s.sources.departure.kind, SourceKind::Contract);
        assert_eq!(
            s.discharge_limit_kw(60.0),
            0.0,
            "nothing above the assumed SoC"
        );
        let no_v2g = Session {
            discharge_allowed: false,
            soc_pct: 90.0,
            ..contract_session()
        };
        assert_eq!(no_v2g.discharge_limit_kw(60.0), 0.0);
        assert!(no_v2g.charge_limit_kw(60.0) > 0.0);
    }

    #[test]
    fn reported_soc_corrects_the_integrated_estimate_and_the_floor_only_rises() {
        let mut s = contract_session();
        let report = |soc: Option<(f64, f64)>, needs: Option<EvNeeds>| EvReport {
            soc,
            needs,
            terms: None,
            ..EvReport::default()
        };
        // The EV says 50 % at t=1,000,010; then 5 kWh (10 % of 50 kWh) are metered.
        assert!(s.take_ev(&report(Some((50.0, 1_000_010.0)), None), 110.0, 1_000_010.0));
        assert_eq!(
            (s.soc_pct, s.sources.soc.kind),
            (50.0, SourceKind::Reported)
        );
        s.integrate(5.0).unwrap();
        assert!((s.soc_pct - 60.0).abs() < 1e-9);
        // The same report again changes nothing; a newer one corrects the estimate.
        assert!(!s.take_ev(&report(Some((50.0, 1_000_010.0)), None), 120.0, 1_000_020.0));
        assert!(s.take_ev(&report(Some((58.0, 1_000_030.0)), None), 130.0, 1_000_030.0));
        assert_eq!(s.soc_pct, 58.0);
        let needs = EvNeeds {
            at_unix_s: 1_000_040.0,
            departure_unix_s: Some(1_003_640.0),
            capacity_kwh: Some(40.0),
            max_charge_kw: Some(11.0),
            max_discharge_kw: Some(7.0),
            min_v2x_kwh: Some(-4.0), // 10 % of 40 kWh above its V2X minimum: 48 %
            requested_kwh: Some(12.0), // 30 % more: 88 %
            ..EvNeeds::default()
        };
        assert!(s.take_ev(&report(None, Some(needs.clone())), 140.0, 1_000_040.0));
        assert_eq!(s.capacity_kwh, 40.0);
        assert!((s.min_soc_pct - 48.0).abs() < 1e-9, "{}", s.min_soc_pct);
        assert!((s.target_soc_pct - 88.0).abs() < 1e-9);
        assert_eq!((s.max_charge_kw(), s.max_discharge_kw()), (11.0, 7.0));
        // The departure is kept on the wall clock: another run's clock gets the same time.
        assert_eq!(s.depart_s, 140.0 + 3_600.0);
        let mut restarted = s.clone();
        assert!(restarted.take_ev(&EvReport::default(), 5.0, 1_000_100.0));
        assert_eq!(restarted.depart_s, 5.0 + 3_540.0);
        // The contract tightened through the API: a higher minimum, then no V2G.
        let terms = |t| EvReport {
            terms: Some(t),
            ..EvReport::default()
        };
        let mut tightened = s.clone();
        assert!(tightened.take_ev(&terms((true, 55.0)), 150.0, 1_000_050.0));
        assert_eq!(tightened.min_soc_pct, 55.0);
        assert!(!tightened.take_ev(&terms((true, 10.0)), 150.0, 1_000_050.0));
        assert!(tightened.take_ev(&terms((false, 10.0)), 150.0, 1_000_050.0));
        assert_eq!(tightened.discharge_limit_kw(60.0), 0.0);
        // A later report with a lower V2X minimum does not lower the floor.
        let lower = EvNeeds {
            at_unix_s: 1_000_050.0,
            min_v2x_kwh: Some(-20.0),
            ..needs
        };
        s.take_ev(&report(None, Some(lower)), 150.0, 1_000_050.0);
        assert!((s.min_soc_pct - 48.0).abs() < 1e-9);
        // Discharging for an hour never goes below the floor.
        let kw = s.discharge_limit_kw(3_600.0);
        assert!(kw <= 7.0);
        s.integrate(-kw).unwrap();
        assert!(s.soc_pct >= 48.0 - 1e-9, "{}", s.soc_pct);
    }

    #[test]
    fn the_departure_floor_keeps_the_target_reachable() {
        let mut s = contract_session();
        s.soc_pct = 70.0;
        // 80 % target, 50 kWh, 22 kW: 2 h from departure anything reaches it; 10 min before,
        // 22 kW × 1/6 h = 3.67 kWh = 7.33 % of room.
        assert_eq!(s.departure_floor_pct(s.depart_s - 7_200.0), 0.0);
        let floor = s.departure_floor_pct(s.depart_s - 600.0);
        assert!(
            (floor - (80.0 - 22.0 / 6.0 / 50.0 * 100.0)).abs() < 1e-9,
            "{floor}"
        );
        assert_eq!(s.departure_floor_pct(s.depart_s + 1.0), 0.0);
        let configured = Session::from_vehicle(&vehicle());
        assert_eq!(configured.departure_floor_pct(3_599.0), 0.0);
    }

    #[test]
    fn an_older_checkpoint_without_the_new_fields_still_reads() {
        // The session as checkpointed before issue 21: its nine fields, as an array.
        let old = (
            "ev-1",
            SessionState::Charging,
            50.0,
            61.0,
            20.0,
            80.0,
            11.0,
            3_600.0,
            1.5,
        );
        let bytes = rmp_serde::to_vec(&old).unwrap();
        let s: Session = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!((s.soc_pct, s.energy_kwh), (61.0, 1.5));
        assert!(s.discharge_allowed && s.depart_unix_s.is_none());
    }

    #[test]
    fn the_energy_offer_integrates_its_discharge_entries_only() {
        // 30 min at -10 kW = 5 kWh; 15 min at +3 kW offers nothing; 1 h at -2 kW = 2 kWh;
        // a zero, a negative and a non-finite duration add nothing.
        let entries = [
            (1_800.0, -10_000.0),
            (900.0, 3_000.0),
            (3_600.0, -2_000.0),
            (0.0, -50_000.0),
            (-60.0, -50_000.0),
            (f64::NAN, -50_000.0),
            (60.0, f64::NEG_INFINITY),
        ];
        assert!((offered_discharge_kwh(&entries) - 7.0).abs() < 1e-12);
        assert_eq!(offered_discharge_kwh(&[(600.0, 1_000.0)]), 0.0);
        assert_eq!(offered_discharge_kwh(&[]), 0.0);
    }

    #[test]
    fn discharge_never_goes_beyond_the_evs_offer() {
        let mut s = contract_session();
        // 50 kWh at 80 %, minimum 30 %: 25 kWh above it; the EV offers 3 kWh, 22 kW at most.
        let needs = EvNeeds {
            at_unix_s: 1_000_010.0,
            soc_pct: Some(80.0),
            max_discharge_kw: Some(22.0),
            offer_kwh: Some(3.0),
            ..EvNeeds::default()
        };
        let report = EvReport {
            needs: Some(needs),
            ..EvReport::default()
        };
        assert!(s.take_ev(&report, 110.0, 1_000_010.0));
        assert_eq!(s.sources.offer.kind, SourceKind::Reported);
        // Over one hour: (3 kWh - 1 Wh guard) / 1 h = 2.999 kW, not 22 kW.
        assert!((s.discharge_limit_kw(3_600.0) - 2.999).abs() < 1e-9);
        // 2 kWh out, 1.5 kWh back in: 1 kWh of the offer is left (charging gives none back).
        s.integrate(-2.0).unwrap();
        s.integrate(1.5).unwrap();
        assert_eq!(s.discharged_kwh, 2.0);
        assert!((s.dischargeable_kwh() - 1.0).abs() < 1e-9);
        assert!((s.discharge_limit_kw(3_600.0) - 0.999).abs() < 1e-9);
        s.integrate(-1.0).unwrap();
        assert_eq!(s.discharge_limit_kw(1.0), 0.0, "the offer is used up");
        assert_eq!(s.max_discharge_kw(), 0.0, "dispatch does not count on it");
        // Without an offer only the minimum state of charge and the power limits apply.
        s.ev_offer_kwh = None;
        assert!(s.discharge_limit_kw(3_600.0) > 20.0);
    }

    #[test]
    fn the_evs_schedule_is_kept_with_its_source_and_only_a_newer_one_replaces_it() {
        let mut s = contract_session();
        let schedule = |id, at| EvSchedule {
            time_base_unix_s: 1_000_000.0,
            id,
            selected_id: Some(1),
            unit: "W".into(),
            periods: vec![EvSchedulePeriod {
                start_s: 0.0,
                limit: Some(11_000.0),
                discharge_limit: None,
            }],
            duration_s: None,
            at_unix_s: at,
        };
        let report = |sch| EvReport {
            schedule: Some(sch),
            ..EvReport::default()
        };
        assert!(s.take_ev(&report(schedule(7, 1_000_020.0)), 120.0, 1_000_020.0));
        assert_eq!(s.ev_schedule.as_ref().map(|x| x.id), Some(7));
        assert_eq!(s.sources.schedule.kind, SourceKind::Reported);
        assert_eq!(s.sources.schedule.at_unix_s, Some(1_000_020.0));
        assert!(!s.take_ev(&report(schedule(8, 1_000_010.0)), 120.0, 1_000_020.0));
        assert!(s.take_ev(&report(schedule(9, 1_000_030.0)), 130.0, 1_000_030.0));
        assert_eq!(s.ev_schedule.as_ref().map(|x| x.id), Some(9));
    }

    #[test]
    fn a_checkpoint_from_before_the_offer_and_schedule_still_reads() {
        // Today's session, with the fields added for the offer and the schedule cut off the
        // end of the array (and of `sources`): as a node before them checkpointed it.
        let s = contract_session();
        let bytes = rmp_serde::to_vec(&s).unwrap();
        let mut v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        let fields = v.as_array_mut().unwrap();
        fields.truncate(fields.len() - 3);
        let sources = fields.last_mut().unwrap().as_array_mut().unwrap();
        sources.truncate(sources.len() - 2);
        let old = rmp_serde::to_vec(&v).unwrap();
        let back: Session = rmp_serde::from_slice(&old).unwrap();
        assert_eq!((back.ev_offer_kwh, back.discharged_kwh), (None, 0.0));
        assert!(back.ev_schedule.is_none());
        assert_eq!(back.sources.offer, Source::default());
        assert_eq!(back.sources.soc, s.sources.soc);
        assert_eq!(back.discharge_limit_kw(60.0), s.discharge_limit_kw(60.0));
    }

    #[test]
    fn names_and_codes() {
        let names: Vec<&str> = SessionState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "plugged",
                "authorized",
                "charging",
                "discharging",
                "paused",
                "ended"
            ]
        );
        let codes: Vec<u8> = SessionState::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
        for s in SessionState::ALL {
            let json = serde_json::to_string(&s).expect("serializes");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.to_string(), s.as_str());
        }
    }

    #[test]
    fn the_happy_path() {
        let mut s = Session::from_vehicle(&vehicle());
        assert_eq!(
            s.apply(SessionEvent::Authorize),
            Ok(SessionState::Authorized)
        );
        assert_eq!(s.apply(power(11.0)), Ok(SessionState::Charging));
        assert_eq!(s.apply(power(-7.0)), Ok(SessionState::Discharging));
        assert_eq!(s.apply(power(0.0)), Ok(SessionState::Paused));
        assert_eq!(s.apply(power(3.0)), Ok(SessionState::Charging));
        assert_eq!(s.apply(SessionEvent::Pause), Ok(SessionState::Paused));
        assert_eq!(s.apply(SessionEvent::Unplug), Ok(SessionState::Ended));
        assert!(s.state.is_final());
    }

    #[test]
    fn idle_band_is_paused_on_both_sides() {
        for kw in [IDLE_KW, -IDLE_KW, 0.0, 0.01, -0.049] {
            assert_eq!(
                authorized().apply(power(kw)),
                Ok(SessionState::Paused),
                "{kw}"
            );
        }
        assert_eq!(authorized().apply(power(0.051)), Ok(SessionState::Charging));
        assert_eq!(
            authorized().apply(power(-0.051)),
            Ok(SessionState::Discharging)
        );
    }

    #[test]
    fn refused_events_name_state_and_event_and_change_nothing() {
        let mut s = Session::from_vehicle(&vehicle());
        let err = s.apply(power(5.0)).expect_err("power before authorization");
        assert_eq!(err.from, SessionState::Plugged);
        assert_eq!(
            err.to_string(),
            "a session in state plugged cannot take the event power(5 kW)"
        );
        assert_eq!(s.state, SessionState::Plugged);
        assert!(s.apply(SessionEvent::Pause).is_err());
        let mut a = authorized();
        assert!(a.apply(SessionEvent::Authorize).is_err(), "authorize twice");
        a.apply(SessionEvent::Pause).expect("pause from authorized");
        let err = a.apply(SessionEvent::Pause).expect_err("pause from paused");
        assert_eq!(err.from, SessionState::Paused);
        assert_eq!(a.state, SessionState::Paused);
    }

    #[test]
    fn ended_is_final() {
        let mut s = authorized();
        s.apply(SessionEvent::Unplug).expect("unplug");
        for e in [
            SessionEvent::Authorize,
            power(1.0),
            SessionEvent::Pause,
            SessionEvent::Unplug,
        ] {
            let err = s.apply(e).expect_err("nothing leaves ended");
            assert_eq!(err.from, SessionState::Ended);
            assert_eq!(s.state, SessionState::Ended);
        }
        // Unplug works from every other state, including before authorization.
        let mut p = Session::from_vehicle(&vehicle());
        assert_eq!(p.apply(SessionEvent::Unplug), Ok(SessionState::Ended));
    }

    #[test]
    fn non_finite_power_is_refused() {
        let mut s = authorized();
        s.apply(power(11.0)).expect("charging");
        for kw in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = s.apply(power(kw)).expect_err("not a number");
            assert!(err.to_string().contains("not a finite number"), "{err}");
            assert_eq!(s.state, SessionState::Charging);
        }
    }

    #[test]
    fn integrate_moves_soc_and_counts_energy() {
        let mut s = authorized();
        assert_eq!(s.integrate(5.0), Ok(false));
        assert!((s.soc_pct - 70.0).abs() < 1e-12);
        assert_eq!(s.integrate(-10.0), Ok(false));
        assert!((s.soc_pct - 50.0).abs() < 1e-12);
        assert!((s.energy_kwh - -5.0).abs() < 1e-12);
    }

    #[test]
    fn integrate_clamps_and_says_so() {
        let mut s = authorized();
        assert_eq!(s.integrate(100.0), Ok(true), "200 % is not possible");
        assert_eq!(s.soc_pct, 100.0);
        assert_eq!(s.energy_kwh, 100.0, "the measured energy is kept as is");
        assert_eq!(s.integrate(-1_000.0), Ok(true));
        assert_eq!(s.soc_pct, 0.0);
        assert_eq!(s.integrate(0.0), Ok(false), "exactly empty is not a clamp");
    }

    #[test]
    fn integrate_refuses_nonsense_without_poisoning() {
        let mut s = authorized();
        let before = s.clone();
        assert_eq!(s.integrate(f64::NAN).map_err(|_| ()), Err(()));
        assert_eq!(
            s.integrate(f64::INFINITY),
            Err(EnergyError::NonFiniteEnergy(f64::INFINITY))
        );
        assert_eq!(s, before);
        s.capacity_kwh = 0.0;
        assert_eq!(s.integrate(1.0), Err(EnergyError::InvalidCapacity(0.0)));
        assert_eq!(s.soc_pct, before.soc_pct);
    }

    #[test]
    fn energies() {
        let s = authorized(); // 50 kWh at 60 %, min 20 %, target 80 %
        assert!((s.energy_above_min_kwh() - 20.0).abs() < 1e-12);
        assert!((s.energy_to_full_kwh() - 20.0).abs() < 1e-12);
        assert!((s.energy_to_target_kwh() - 10.0).abs() < 1e-12);
        let mut low = s.clone();
        low.soc_pct = 10.0;
        assert_eq!(
            low.energy_above_min_kwh(),
            0.0,
            "below min: nothing to give"
        );
        low.soc_pct = f64::NAN;
        assert_eq!(low.energy_above_min_kwh(), 0.0);
    }

    #[test]
    fn power_limits() {
        let s = authorized(); // 20 kWh above min, 20 kWh to full, max 11 kW
        assert_eq!(s.discharge_limit_kw(60.0), 11.0, "short horizon: own limit");
        // Over 4 h, 20 kWh (less the guard) allows just under 5 kW.
        let four_hours = 4.0 * SECONDS_PER_HOUR;
        let d = s.discharge_limit_kw(four_hours);
        assert!(d < 5.0 && d > 4.999, "{d}");
        let c = s.charge_limit_kw(four_hours);
        assert!(c < 5.0 && c > 4.999, "{c}");
        // Not yet authorized, ended, or a nonsense horizon: nothing.
        let plugged = Session::from_vehicle(&vehicle());
        assert_eq!(plugged.charge_limit_kw(60.0), 0.0);
        assert_eq!(plugged.discharge_limit_kw(60.0), 0.0);
        for h in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(s.discharge_limit_kw(h), 0.0, "{h}");
            assert_eq!(s.charge_limit_kw(h), 0.0, "{h}");
        }
        let mut odd = s.clone();
        odd.max_kw = f64::NAN;
        assert_eq!(odd.charge_limit_kw(60.0), 0.0);
        let mut at_min = s;
        at_min.soc_pct = at_min.min_soc_pct;
        assert_eq!(at_min.discharge_limit_kw(60.0), 0.0);
    }

    #[test]
    fn serde_round_trip() {
        let mut s = authorized();
        s.apply(power(-3.0)).expect("discharging");
        let json = serde_json::to_string(&s).expect("serializes");
        assert!(json.contains("\"state\":\"discharging\""), "{json}");
        let back: Session = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, s);
        let e: SessionEvent = serde_json::from_str(r#"{"event":"power","kw":2.5}"#).expect("event");
        assert_eq!(e, power(2.5));
    }

    fn event() -> impl Strategy<Value = SessionEvent> {
        prop_oneof![
            Just(SessionEvent::Authorize),
            (-30.0f64..30.0).prop_map(power),
            (-0.1f64..0.1).prop_map(power),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
                .prop_map(power),
            Just(SessionEvent::Pause),
            Just(SessionEvent::Unplug),
        ]
    }

    proptest! {
        /// Any sequence of events: no panic, refusals change nothing, every accepted step is
        /// in the table, and once ended the session stays ended.
        #[test]
        fn any_event_sequence_is_safe(events in prop::collection::vec(event(), 0..40)) {
            let mut s = Session::from_vehicle(&vehicle());
            let mut ended = false;
            for e in events {
                let before = s.state;
                match s.apply(e) {
                    Ok(next) => {
                        prop_assert_eq!(next, s.state);
                        prop_assert!(!ended, "left ended via {}", e);
                        let by_power = |kw: f64| {
                            if kw > IDLE_KW {
                                SessionState::Charging
                            } else if kw < -IDLE_KW {
                                SessionState::Discharging
                            } else {
                                SessionState::Paused
                            }
                        };
                        let allowed = match (before, e) {
                            (_, SessionEvent::Unplug) => next == SessionState::Ended,
                            (SessionState::Plugged, SessionEvent::Authorize) => {
                                next == SessionState::Authorized
                            }
                            (SessionState::Plugged, _) => false,
                            (_, SessionEvent::Pause) => {
                                next == SessionState::Paused && before != SessionState::Paused
                            }
                            (_, SessionEvent::Power { kw }) => {
                                kw.is_finite() && next == by_power(kw)
                            }
                            (_, SessionEvent::Authorize) => false,
                        };
                        prop_assert!(allowed, "{} --{}--> {}", before, e, next);
                    }
                    Err(err) => {
                        prop_assert_eq!(err.from, before);
                        prop_assert_eq!(s.state, before, "a refusal changes nothing");
                    }
                }
                ended |= s.state == SessionState::Ended;
                prop_assert_eq!(ended, s.state == SessionState::Ended);
            }
        }

        /// Discharging at the limit for the horizon never goes below the minimum state of
        /// charge, and charging at the limit never goes above 100 %.
        #[test]
        fn limits_respect_the_battery(
            capacity in 1.0f64..1_000.0,
            min in 0.0f64..100.0,
            soc in 0.0f64..100.0,
            max_kw in 0.1f64..500.0,
            horizons in prop::collection::vec(0.001f64..100_000.0, 1..30),
        ) {
            let mut s = Session::from_vehicle(&Vehicle {
                capacity_kwh: capacity,
                soc_pct: soc,
                min_soc_pct: min,
                target_soc_pct: min.max(80.0),
                max_kw,
                ..vehicle()
            });
            s.apply(SessionEvent::Authorize).expect("authorize");
            for (i, h) in horizons.into_iter().enumerate() {
                let start = s.soc_pct;
                if i % 2 == 0 {
                    let kw = s.discharge_limit_kw(h);
                    prop_assert!((0.0..=max_kw).contains(&kw));
                    prop_assert_eq!(s.integrate(-kw * h / SECONDS_PER_HOUR), Ok(false));
                    prop_assert!(
                        s.soc_pct >= min || s.soc_pct == start,
                        "soc {} below min {} (from {}, {} kW for {} s)",
                        s.soc_pct, min, start, kw, h
                    );
                    // The limit is not needlessly conservative: when energy (not the
                    // vehicle's own limit) bound it, the battery ends at the minimum, give
                    // or take the guard.
                    if kw < max_kw && start > min {
                        let guard_pct = 2.0 * ENERGY_GUARD_KWH / capacity * FULL_SOC_PCT;
                        prop_assert!(s.soc_pct - min <= guard_pct, "{} vs {}", s.soc_pct, min);
                    }
                } else {
                    let kw = s.charge_limit_kw(h);
                    prop_assert!((0.0..=max_kw).contains(&kw));
                    prop_assert_eq!(s.integrate(kw * h / SECONDS_PER_HOUR), Ok(false));
                    prop_assert!(s.soc_pct <= FULL_SOC_PCT);
                }
            }
        }
    }
}
