//! Vehicles as they arrive (issue 21): drivers known only by token come to random free
//! chargers on a seeded plan, played on three simulated charge points against the test CSMS
//! of gridvisor-transports (which accepts any token) over OCPP 2.1. Each visit is seen by the
//! CSMS at the planned charger: the driver's token in TransactionEvent(Started) with a `SoC`
//! sample, then NotifyEVChargingNeeds with the visit's departure and the EV's V2X limits, and
//! TransactionEvent(Ended) when the vehicle leaves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gridvisor_sim::ocpp::arrivals::{plan, Arrival, ArrivalConfig, ArrivalDriver, Driver};
use gridvisor_sim::ocpp::{ChargePoint, ChargePointConfig, Vehicle};
use gridvisor_transports::ocpp::client::ClientConfig;
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::OcppVersion;
use tokio::sync::mpsc;

use crate::ocpp_support;
use ocpp_support::{answer_calls, expect_connected, pki, recv, start_csms, PASSWORDS};

/// The next CALL of `action` on one charger's connection (others skipped), within the bound.
async fn next_of(requests: &mut mpsc::UnboundedReceiver<Request>, action: Action) -> Request {
    loop {
        let r = recv(requests).await;
        if r.action() == action {
            return r;
        }
    }
}

fn whole_seconds() -> SystemTime {
    let s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_secs(s.as_secs())
}

#[tokio::test]
async fn drivers_arrive_by_token_at_random_free_chargers() {
    let pki = pki();
    let mut csms = start_csms(&pki, Default::default()).await;
    let start = whole_seconds();
    let ids = ["CP-201", "CP-21", "RUST-1"];
    let mut chargers = Vec::new();
    let mut requests = Vec::new();
    for id in ids {
        let password = PASSWORDS.iter().find(|(i, _)| *i == id).unwrap().1;
        let mut client = ClientConfig::new("127.0.0.1", csms.ws.port(), id);
        client.password = Some(password.as_bytes().to_vec());
        client.versions = vec![OcppVersion::V21];
        let mut config = ChargePointConfig::new(client);
        config.meter_interval = Duration::from_secs(3600);
        let (cp, _task) = ChargePoint::start(config, start).unwrap();
        let mut session = expect_connected(&mut csms.server).await;
        let calls = std::mem::replace(&mut session.calls, mpsc::channel(1).1);
        let mut rx = answer_calls(calls);
        next_of(&mut rx, Action::StatusNotification).await;
        chargers.push(cp);
        requests.push((session, rx));
    }
    let drivers: Vec<Driver> = (0..4)
        .map(|i| Driver {
            token: format!("DRIVER-{i}"),
            vehicle: Vehicle::new(60.0, 0.6, 0.2, 11.0, 11.0, true).unwrap(),
            target_soc: 0.8,
            min_v2x_soc: 0.3,
        })
        .collect();
    // An hour's plan on a one-minute scale: the driver is fed synthetic times.
    let config = ArrivalConfig {
        seed: 21,
        window: Duration::from_secs(60),
        min_stay: Duration::from_secs(5),
        max_stay: Duration::from_secs(15),
    };
    let visits = plan(drivers.len(), chargers.len(), &config).unwrap();
    assert!(visits.len() >= drivers.len(), "{visits:?}");
    let mut driver = ArrivalDriver::new(chargers, drivers, visits.clone(), start);
    let (mut arrived, mut left) = (0, 0);
    for second in 0..=(config.window + config.max_stay).as_secs() {
        for event in driver.tick(Duration::from_secs(second)) {
            match event {
                Arrival::Arrived { token, charger } => {
                    arrived += 1;
                    let visit = visits
                        .iter()
                        .find(|v| {
                            let now = Duration::from_secs(second);
                            v.charger == charger && v.arrive <= now && v.leave > now
                        })
                        .unwrap();
                    let rx = &mut requests[charger].1;
                    let Request::TransactionEvent(ev) = next_of(rx, Action::TransactionEvent).await
                    else {
                        unreachable!()
                    };
                    assert_eq!(ev.event_type, TransactionEventType::Started);
                    assert_eq!(ev.id_token.unwrap().id_token, token);
                    let samples = &ev.meter_value.unwrap()[0].sampled_value;
                    assert!(samples.iter().any(|s| s.measurand == Some(Measurand::SoC)));
                    let Request::NotifyEVChargingNeeds(n) =
                        next_of(rx, Action::NotifyEVChargingNeeds).await
                    else {
                        unreachable!()
                    };
                    let needs = n.charging_needs;
                    let departure =
                        parse_date_time(needs.departure_time.as_ref().unwrap()).unwrap();
                    assert_eq!(
                        departure,
                        start + Duration::from_secs(visit.leave.as_secs())
                    );
                    assert_eq!(needs.requested_energy_transfer, EnergyTransferMode::DcBpt);
                    let v2x = needs.v2x_charging_parameters.unwrap();
                    // 60 kWh at 60 %: 12 kWh to the 80 % target, 18 kWh above the 30 % floor.
                    assert_eq!(v2x.ev_target_energy_request, Some(12_000.0));
                    assert_eq!(v2x.ev_min_v2x_energy_request, Some(-18_000.0));
                    assert_eq!(v2x.max_discharge_power, Some(11_000.0));
                    assert_eq!(v2x.target_soc, Some(80));
                }
                Arrival::Left { charger, .. } => {
                    left += 1;
                    let rx = &mut requests[charger].1;
                    let Request::TransactionEvent(ev) = next_of(rx, Action::TransactionEvent).await
                    else {
                        unreachable!()
                    };
                    assert_eq!(ev.event_type, TransactionEventType::Ended);
                }
                Arrival::Failed { charger, error } => panic!("charger {charger}: {error}"),
            }
        }
    }
    assert_eq!((arrived, left), (visits.len(), visits.len()));
    // The drivers moved between bays: some token was seen at two chargers.
    let moved = (0..4).any(|d| {
        let mut bays: Vec<usize> = visits
            .iter()
            .filter(|v| v.driver == d)
            .map(|v| v.charger)
            .collect();
        bays.sort();
        bays.dedup();
        bays.len() > 1
    });
    assert!(moved, "{visits:?}");
}
