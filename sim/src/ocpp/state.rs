//! The state of one simulated charge point that the OCPP side and the physics share: the
//! simulated clock, the vehicle, the energy register, the installed profiles, the limits and
//! the injected fault; and the pure decision of what power to deliver.
//!
//! Invariants:
//! - time only moves through [`SimState::step`] (injectable: tests and chaos runs step it as
//!   fast as they like; the real-time driver steps it with wall-clock intervals);
//! - the delivered power is [`target_kw`] clamped by the vehicle ([`super::vehicle`]); with no
//!   profile in force the charger uses its default limit online and its offline limit offline
//!   (the fallback after a lease's `validTo`, too);
//! - the energy register integrates exactly the power the vehicle accepted.

use std::time::{Duration, SystemTime};

use super::fault::Fault;
use super::profile::{Command, ProfileSet};
use super::vehicle::{EnergyRegister, Vehicle};

/// The power to aim for: the profile's command, or `fallback_kw` with no profile in force;
/// always within ±`max_power_kw` (the charger's hardware). Pure.
pub fn target_kw(command: Option<Command>, fallback_kw: f64, max_power_kw: f64) -> f64 {
    let kw = match command {
        Some(Command::Setpoint {
            kw,
            charge_limit_kw,
            discharge_limit_kw,
        }) => kw.min(charge_limit_kw).max(-discharge_limit_kw),
        Some(Command::Limit { charge_limit_kw }) => charge_limit_kw,
        None => fallback_kw,
    };
    if kw.is_finite() {
        kw.clamp(-max_power_kw, max_power_kw)
    } else {
        max_power_kw.copysign(kw)
    }
}

/// An open transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// Its id (`{chargePointId}-{n}`).
    pub id: String,
    /// The next TransactionEvent sequence number.
    pub seq_no: i32,
    /// Whether the Started event reached the CSMS.
    pub started_sent: bool,
    /// Whether the vehicle was plugged in while offline.
    pub began_offline: bool,
    /// The id token the driver presents for it (None: the charge point's configured one).
    pub id_token: Option<String>,
    /// The token's type on the wire (None: `ISO14443`, an RFID card).
    pub id_token_type: Option<String>,
    /// The CSMS's `remoteStartId`, for a transaction it started (RequestStartTransaction).
    pub remote_start_id: Option<i32>,
    /// What the EV reports once the transaction started (NotifyEVChargingNeeds).
    pub needs: Option<super::vehicle::EvNeeds>,
}

/// The shared state (behind a mutex in [`super::charge_point::ChargePoint`]).
#[derive(Debug, Clone)]
pub struct SimState {
    /// The simulated wall clock.
    pub now: SystemTime,
    /// The plugged-in vehicle.
    pub vehicle: Option<Vehicle>,
    /// The meter.
    pub register: EnergyRegister,
    /// Power delivered over the last step, kW.
    pub power_kw: f64,
    /// Installed charging profiles.
    pub profiles: ProfileSet,
    /// Hardware limit, kW.
    pub max_power_kw: f64,
    /// Charge power with no profile in force while connected, kW.
    pub default_limit_kw: f64,
    /// Charge power with no profile in force while disconnected, kW.
    pub offline_limit_kw: f64,
    /// When (simulated time) the connection was lost; `None` while connected.
    pub offline_since: Option<SystemTime>,
    /// Heartbeat interval (from the BootNotification answer, or SetVariables).
    pub heartbeat_interval: Duration,
    /// Meter value interval.
    pub meter_interval: Duration,
    /// The fault in force.
    pub fault: Fault,
    /// The open transaction.
    pub transaction: Option<Transaction>,
    /// Transactions started so far (for ids).
    pub transactions_started: u64,
    /// Profile installs that changed something (a resend of the same profile does not count).
    pub profile_changes: u64,
    /// Accepted BootNotifications so far.
    pub boots: u64,
}

impl SimState {
    /// How long the charger has been offline at the simulated now.
    pub fn offline_for(&self) -> Option<Duration> {
        self.offline_since
            .map(|t| self.now.duration_since(t).unwrap_or_default())
    }

    /// The profile command in force now.
    pub fn command(&self) -> Option<Command> {
        self.profiles.command(self.now, self.offline_for())
    }

    /// The power the charger aims for now (before the vehicle's own limits).
    pub fn target_kw(&self) -> f64 {
        let fallback = if self.offline_since.is_some() {
            self.offline_limit_kw
        } else {
            self.default_limit_kw
        };
        target_kw(self.command(), fallback, self.max_power_kw)
    }

    /// Advances the simulated time by `dt`: the vehicle takes the target power (as far as it
    /// can) and the register integrates what it took. Profiles that 2.1 invalidates after a
    /// long offline period are dropped.
    pub fn step(&mut self, dt: Duration) {
        let target = self.target_kw();
        let power = match &self.vehicle {
            Some(v) => {
                let s = v.step(target, dt);
                self.vehicle = Some(s.vehicle);
                s.power_kw
            }
            None => 0.0,
        };
        self.power_kw = power;
        self.register = self.register.step(power, dt);
        self.now += dt;
        if let Some(off) = self.offline_for() {
            self.profiles.drop_invalid_after_offline(off);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_follows_setpoint_within_limits() {
        let sp = |kw, c, d| Command::Setpoint {
            kw,
            charge_limit_kw: c,
            discharge_limit_kw: d,
        };
        assert_eq!(target_kw(Some(sp(-7.0, 0.0, 7.0)), 11.0, 22.0), -7.0);
        assert_eq!(target_kw(Some(sp(-7.0, 0.0, 3.0)), 11.0, 22.0), -3.0);
        assert_eq!(target_kw(Some(sp(50.0, 50.0, 0.0)), 11.0, 22.0), 22.0);
        assert_eq!(
            target_kw(
                Some(Command::Limit {
                    charge_limit_kw: 4.0
                }),
                11.0,
                22.0
            ),
            4.0
        );
        assert_eq!(target_kw(None, 11.0, 22.0), 11.0);
        assert_eq!(
            target_kw(
                Some(Command::Limit {
                    charge_limit_kw: f64::INFINITY
                }),
                0.0,
                22.0
            ),
            22.0
        );
    }
}
