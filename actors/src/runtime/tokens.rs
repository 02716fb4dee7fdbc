//! In-process arrivals and departures of vehicles known by token (issue 21): what the CSMS
//! does when a station's transaction starts or ends, for a site whose chargers are the
//! simulated in-process devices (chaos runs, tests on the paused clock). The session starts
//! from the token's contract and takes the EV's report as a station would pass it on, so
//! dispatch sees the same session a real station's vehicle gets.

use std::time::{SystemTime, UNIX_EPOCH};

use super::charger::{session_checkpoint_key, SessionCheckpoint};
use super::node::{plug, unplug, Node, NodeError};
use crate::authorization::Contract;
use crate::config::Vehicle;
use crate::device::Battery;
use crate::session::{EvReport, Session};

impl Node {
    /// Vehicle `token` arrives at simulated charger `charger` with `battery`, under
    /// `contract`, at `now_wall` (the wall clock the caller keeps: a deterministic run keeps
    /// its own): its session starts from the contract and takes `report` (what its EV says).
    /// Refused for a node whose chargers are real (their transactions start sessions) and
    /// for a charger with a vehicle.
    pub async fn plug_token(
        &self,
        charger: &str,
        token: &str,
        contract: &Contract,
        battery: Battery,
        report: &EvReport,
        now_wall: SystemTime,
    ) -> Result<(), NodeError> {
        let err = |error: String| NodeError::Vehicle {
            vehicle: token.to_owned(),
            error,
        };
        let shared = &self.shared;
        if shared.devices.ocpp.is_some() {
            return Err(err(
                "the chargers are real: a transaction starts a session".into()
            ));
        }
        if let Some(v) = shared.plugged.get(charger) {
            return Err(err(format!(
                "charger {charger} has {} plugged in",
                v.value()
            )));
        }
        let (_, ch) = shared
            .charger(charger)
            .ok_or_else(|| err(format!("charger {charger} is in no segment")))?;
        let now = shared.clock.now();
        let now_s = now.as_secs_f64();
        let mut session =
            Session::from_contract(token, charger, contract, ch.max_kw, now_s, now_wall);
        let unix = now_wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        session.take_ev(report, now_s, unix);
        let checkpoint = SessionCheckpoint {
            session,
            register_kwh: None,
        };
        shared
            .store
            .put(&session_checkpoint_key(token), &checkpoint)
            .await?;
        plug(shared, &stand_in(token, charger, battery), now).await
    }

    /// Vehicle `token` leaves simulated charger `charger`: its session ends.
    pub async fn unplug_token(&self, charger: &str, token: &str) -> Result<(), NodeError> {
        let none = Battery {
            capacity_kwh: 0.0,
            soc_pct: 0.0,
            max_kw: 0.0,
        };
        let now = self.shared.clock.now();
        unplug(&self.shared, &stand_in(token, charger, none), now).await
    }
}

/// The [`Vehicle`] plugging needs: its id, charger and the simulated battery (its data lives
/// in the session's checkpoint).
fn stand_in(token: &str, charger: &str, battery: Battery) -> Vehicle {
    Vehicle {
        id: token.to_owned(),
        charger: charger.to_owned(),
        capacity_kwh: battery.capacity_kwh,
        soc_pct: battery.soc_pct,
        min_soc_pct: 0.0,
        target_soc_pct: 0.0,
        arrive_s: 0.0,
        depart_s: 0.0,
        max_kw: battery.max_kw,
    }
}
