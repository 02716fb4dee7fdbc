//! The node's own OCPP actions (issue 21) against the simulator's charge point over WebSocket
//! on loopback: TriggerMessage after the connect, the standard read-back (GetChargingProfiles
//! answered by ReportChargingProfiles) learned and used by the link, RequestStop/Start-
//! Transaction through the hub ending and starting the vehicle's session, and
//! ClearChargingProfile of the dispatch profiles when the session ends; and a station that
//! never answers TriggerMessage, whose reads and setpoints go on regardless.

use crate::common;

use std::time::{Duration, SystemTime};

use common::*;
use gridvisor_actors::io::ocpp::{ActionError, ReadBack, RemoteStart};
use gridvisor_sim::ocpp::charge_point::{ChargePoint, ChargePointConfig, ChargePointEvent};
use gridvisor_sim::ocpp::vehicle::Vehicle;
use gridvisor_sim::ocpp::Fault;
use gridvisor_transports::ocpp::client::ClientConfig;
use gridvisor_transports::ocpp::connection::CallError;
use gridvisor_transports::ocpp::credentials::{CredentialsFile, MIN_ITERATIONS};
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::setpoint::DISPATCH_STACK_LEVEL;
use serde_json::Map;
use tokio::sync::broadcast;

const PASSWORD: &str = "evse-0-actions-pw";

fn site() -> (String, tempfile::TempDir) {
    let creds = tempfile::tempdir().unwrap();
    let mut file = CredentialsFile::default();
    for id in ["evse-0", "evse-1"] {
        file.set(id, PASSWORD.as_bytes(), MIN_ITERATIONS).unwrap();
    }
    let path = creds.path().join("stations.cred");
    file.write_atomic(&path).unwrap();
    let mut t = site_toml(1, 2, "", "");
    t.push_str(&format!(
        "\n[ocpp]\nlisten = \"127.0.0.1:0\"\npasswords = {:?}\nheartbeat_s = 5\n",
        path.display().to_string()
    ));
    (t, creds)
}

async fn until(
    events: &mut broadcast::Receiver<ChargePointEvent>,
    what: &str,
    want: impl Fn(&ChargePointEvent) -> bool,
) -> ChargePointEvent {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    };
    tokio::time::timeout(LIMIT, wait)
        .await
        .unwrap_or_else(|_| panic!("{what} within {LIMIT:?}"))
}

fn token(value: &str) -> IdToken {
    IdToken {
        id_token: value.to_owned(),
        kind: "ISO14443".to_owned(),
        additional_info: None,
        extra: Map::new(),
    }
}

/// The site's one station, `evse-0` with its password, whose driver presents `ev-0`.
fn station(port: u16) -> ChargePointConfig {
    let mut client = ClientConfig::new("127.0.0.1", port, "evse-0");
    client.password = Some(PASSWORD.as_bytes().to_vec());
    let mut config = ChargePointConfig::new(client);
    config.id_token = "ev-0".to_owned();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocpp_actions_against_the_simulated_charge_point() {
    let (toml, _creds) = site();
    let t = start(&toml).await;
    let hub = t.node.ocpp_hub().cloned().unwrap();
    let addr = t.node.ocpp_addr().unwrap();
    let mut config = station(addr.port());
    // No periodic meter values: the only MeterValues is the one the node triggers.
    config.meter_interval = Duration::from_secs(3600);
    config.max_power_kw = 11.0;
    config.default_limit_kw = 11.0;
    let (cp, _task) = ChargePoint::start(config, SystemTime::now()).unwrap();
    let mut events = cp.subscribe();
    let _driver = cp.spawn_realtime_driver(Duration::from_millis(50));

    // After the connect the node triggers MeterValues (and StatusNotification).
    until(&mut events, "the triggered MeterValues", |e| {
        matches!(e, ChargePointEvent::CallSucceeded(Action::MeterValues))
    })
    .await;

    cp.plug_in(Vehicle::new(60.0, 0.5, 0.2, 11.0, 11.0, true).unwrap())
        .unwrap();
    wait(&t.node, "ev-0's session", || {
        t.node.session("ev-0").is_some()
    })
    .await;

    // The link reads through GetChargingProfiles, and a request is acknowledged with it.
    request_until_acked(&t.node, "actions", 6.0, 1).await;
    assert_eq!(hub.read_back("evse-0"), ReadBack::Standard);
    let reported = hub.charging_profiles("evse-0").await.unwrap().unwrap();
    let held: Vec<ChargingProfile> = cp
        .snapshot()
        .profiles
        .iter()
        .map(|p| p.profile.clone())
        .collect();
    assert!(!reported.is_empty(), "the dispatch profile is reported");
    assert!(reported.iter().all(|p| held.contains(p)), "{reported:?}");
    assert!(reported
        .iter()
        .all(|p| p.stack_level == DISPATCH_STACK_LEVEL));

    // RequestStopTransaction: the station ends it, the session ends, the profiles are cleared.
    let stop = hub.request_stop("evse-0", None).await.unwrap();
    assert_eq!(stop.status, "Accepted", "{stop:?}");
    until(
        &mut events,
        "the dispatch profiles cleared",
        |e| matches!(e, ChargePointEvent::ProfilesCleared(n) if *n > 0),
    )
    .await;
    wait(&t.node, "ev-0's session ended", || {
        t.node.session("ev-0").is_none()
    })
    .await;

    // RequestStartTransaction with the vehicle's token: the session comes back.
    let start = RemoteStart {
        id_token: token("ev-0"),
        evse_id: Some(1),
        charging_profile: None,
    };
    let answer = hub.request_start("evse-0", start.clone()).await.unwrap();
    assert_eq!(answer.status, "Accepted", "{answer:?}");
    wait(&t.node, "ev-0's session again", || {
        t.node.session("ev-0").is_some()
    })
    .await;
    // A second start while it runs: the station's refusal, with its reason.
    let again = hub.request_start("evse-0", start.clone()).await.unwrap();
    assert_eq!(
        (again.status, again.reason.as_deref()),
        ("Rejected", Some("TxInProgress"))
    );

    // What cannot be delivered is an error naming why.
    assert!(matches!(
        hub.request_start("nope", start.clone()).await,
        Err(ActionError::UnknownCharger(_))
    ));
    assert!(matches!(
        hub.request_stop("evse-1", None).await,
        Err(ActionError::NotConnected(_))
    ));
    let mut long = start;
    long.id_token.id_token = "x".repeat(300);
    let e = hub.request_start("evse-0", long).await.unwrap_err();
    assert!(
        matches!(e, ActionError::Invalid { .. }) && e.to_string().contains("/idToken/idToken"),
        "{e}"
    );
    cp.stop().unwrap();
    t.node.shutdown().await;
}

/// Waits for the `n`th event that `want` accepts.
async fn nth(
    events: &mut broadcast::Receiver<ChargePointEvent>,
    what: &str,
    n: usize,
    want: impl Fn(&ChargePointEvent) -> bool,
) {
    for _ in 0..n {
        until(events, what, &want).await;
    }
}

/// TriggerMessage is optional: a station that never answers it holds the CALL slot only
/// until the link needs it (issue 21: it used to stall every read for the CALL timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_that_ignores_trigger_message_never_stalls_reads() {
    let (toml, _creds) = site();
    let t = start(&toml).await;
    let hub = t.node.ocpp_hub().cloned().unwrap();
    let addr = t.node.ocpp_addr().unwrap();
    let mut config = station(addr.port());
    config.max_power_kw = 11.0;
    config.default_limit_kw = 11.0;
    let (cp, _task) = ChargePoint::start(config, SystemTime::now()).unwrap();
    // Set before the connection exists (it needs a TCP and WebSocket handshake first).
    cp.set_fault(Fault::IgnoreTrigger).unwrap();
    let mut events = cp.subscribe();
    let _driver = cp.spawn_realtime_driver(Duration::from_millis(50));
    let held = |e: &ChargePointEvent| matches!(e, ChargePointEvent::Held(Action::TriggerMessage));

    // The node's two triggers after the connect are both held, never answered ...
    nth(&mut events, "both triggers after the connect held", 2, held).await;
    // ... and the readings flow: a session is read and a request acknowledged.
    cp.plug_in(Vehicle::new(60.0, 0.5, 0.2, 11.0, 11.0, true).unwrap())
        .unwrap();
    wait(&t.node, "ev-0's session", || {
        t.node.session("ev-0").is_some()
    })
    .await;
    request_until_acked(&t.node, "triggers ignored", 6.0, 1).await;
    assert_eq!(hub.read_back("evse-0"), ReadBack::Standard);

    // The node's own trigger, held by the station, gives the slot up to a read at once.
    let trigger = {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.trigger_optional("evse-0", MessageTrigger::MeterValues)
                .await
        })
    };
    nth(&mut events, "the third trigger held", 1, held).await;
    let profiles = hub.charging_profiles("evse-0").await.unwrap();
    assert!(profiles.is_some_and(|p| !p.is_empty()), "the read answered");
    let outcome = trigger.await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(ActionError::Call {
                error: CallError::Preempted {
                    action: Action::TriggerMessage
                },
                ..
            })
        ),
        "{outcome:?}"
    );
    cp.stop().unwrap();
    t.node.shutdown().await;
}
