//! A node whose chargers are real OCPP charge points (the simulator's, over WebSocket on
//! loopback): they connect to the node's CSMS, their transactions start the sessions, grid
//! requests reach them as charging profiles, a resend after a link restart changes nothing on
//! the charger, a dropped connection restarts the link and the charger is driven again after
//! it reconnects, and an unknown charge point or a wrong password is refused.

use crate::common;

use std::time::{Duration, SystemTime};

use common::*;
use gridvisor_actors::runtime::{Node, Scope};
use gridvisor_sim::ocpp::charge_point::{ChargePoint, ChargePointConfig};
use gridvisor_sim::ocpp::fault::Fault;
use gridvisor_sim::ocpp::vehicle::Vehicle;
use gridvisor_transports::ocpp::client::{connect, ClientConfig};
use gridvisor_transports::ocpp::credentials::{CredentialsFile, MIN_ITERATIONS};

/// Each charger's own password.
fn password(id: &str) -> String {
    format!("{id}-s3cret-charger-pw")
}

/// A credentials file for evse-0..evse-9 in `dir` (hashed with the fewest iterations the
/// file allows: the tests' CPU), as its `[ocpp]` line.
fn passwords_line(dir: &std::path::Path) -> String {
    let mut file = CredentialsFile::default();
    for i in 0..10 {
        let id = format!("evse-{i}");
        file.set(&id, password(&id).as_bytes(), MIN_ITERATIONS)
            .unwrap();
    }
    let path = dir.join("stations.cred");
    file.write_atomic(&path).unwrap();
    format!("passwords = {:?}\n", path.display().to_string())
}

/// The site with the CSMS on loopback, and the folder of its credentials file.
fn site() -> (String, tempfile::TempDir) {
    let creds = tempfile::tempdir().unwrap();
    let mut t = site_toml(1, 2, "", "");
    t.push_str(&format!(
        "\n[ocpp]\nlisten = \"127.0.0.1:0\"\n{}heartbeat_s = 5\n",
        passwords_line(creds.path())
    ));
    (t, creds)
}

struct Cp {
    cp: ChargePoint,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn client(node: &Node, id: &str, password: &str) -> ClientConfig {
    let addr = node.ocpp_addr().expect("the CSMS is listening");
    let mut c = ClientConfig::new("127.0.0.1", addr.port(), id);
    c.password = Some(password.as_bytes().to_vec());
    c
}

/// A simulated charge point for `charger` with vehicle `vehicle` plugged in, physics in real
/// time, meter values every second.
fn charge_point(node: &Node, charger: &str, vehicle: &str) -> Cp {
    let mut config = ChargePointConfig::new(client(node, charger, &password(charger)));
    config.id_token = vehicle.to_owned();
    config.meter_interval = Duration::from_secs(1);
    config.reconnect_initial = Duration::from_millis(100);
    config.reconnect_max = Duration::from_millis(400);
    config.max_power_kw = 11.0;
    config.default_limit_kw = 11.0;
    config.offline_limit_kw = 3.7;
    let (cp, task) = ChargePoint::start(config, SystemTime::now()).unwrap();
    let driver = cp.spawn_realtime_driver(Duration::from_millis(50));
    cp.plug_in(Vehicle::new(60.0, 0.5, 0.2, 11.0, 11.0, true).unwrap())
        .unwrap();
    Cp {
        cp,
        _tasks: vec![task, driver],
    }
}

fn link_id(t: &TestNode, charger: &str) -> Option<ractor::ActorId> {
    let seg = t.node.shared.charger_segment(charger)?;
    let seg = t.node.shared.segments.get(seg)?;
    seg.links.get(charger).map(|e| e.actor.get_id())
}

fn online(t: &TestNode, charger: &str) -> bool {
    t.node
        .shared
        .devices
        .ocpp
        .as_ref()
        .is_some_and(|h| h.is_connected(charger))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chargers_over_ocpp_are_dispatched_and_survive_a_dropped_connection() {
    let (toml, _creds) = site();
    let t = start(&toml).await;
    let a = charge_point(&t.node, "evse-0", "ev-0");
    let b = charge_point(&t.node, "evse-1", "ev-1");
    wait(&t.node, "both charge points connected", || {
        online(&t, "evse-0") && online(&t, "evse-1")
    })
    .await;
    let hub = t.node.shared.devices.ocpp.clone().unwrap();
    assert_eq!(hub.connected_count(), 2);
    assert!(t
        .node
        .metrics_text()
        .unwrap()
        .contains("gridvisor_ocpp_connected_chargers 2"));
    // Their transactions (id token = vehicle id) start the sessions.
    wait(&t.node, "sessions from the transactions", || {
        t.node.session("ev-0").is_some() && t.node.session("ev-1").is_some()
    })
    .await;

    // A discharge request reaches both as OCPP 2.1 charging profiles.
    let r = request_until_acked(&t.node, "r1", -10.0, 2).await;
    for c in [&a.cp, &b.cp] {
        let p = c.applied_profile();
        assert!(p.contains("\"setpointW\""), "{}: {p}", c.id());
        assert!(p.contains(&format!("\"scheduleId\":{}", r.revision)), "{p}");
    }
    let installed = a.cp.snapshot().profile_changes;

    // The link restarts (killed): it reads the charger back (read before write) and the
    // charger holds the same profile; nothing is installed again.
    let before = link_id(&t, "evse-0").unwrap();
    let seg = t.node.shared.segments.get("tx-0").unwrap();
    seg.links.get("evse-0").unwrap().actor.kill();
    wait(&t.node, "link restarted", || {
        link_id(&t, "evse-0").is_some_and(|id| id != before)
    })
    .await;
    assert_eq!(a.cp.snapshot().profile_changes, installed);

    // The same request id again: answered from the first receipt, no write.
    let again = t
        .node
        .request(request(&r.request, Scope::Site, -10.0, 60.0))
        .await
        .unwrap();
    assert!(again.repeat);
    assert_eq!(a.cp.snapshot().profile_changes, installed);

    // The connection drops: the link restarts and is driven again once the charger is back.
    let before = link_id(&t, "evse-0").unwrap();
    a.cp.set_fault(Fault::Drop(Duration::from_millis(300)))
        .unwrap();
    wait(&t.node, "link restarted on the drop", || {
        link_id(&t, "evse-0").is_some_and(|id| id != before)
    })
    .await;
    assert!(
        t.node.session("ev-0").is_some(),
        "the session holds through the drop"
    );
    wait(&t.node, "charge point back", || online(&t, "evse-0")).await;
    assert_eq!(hub.connected_count(), 2);
    a.cp.set_fault(Fault::None).unwrap();
    let r2 = request_until_acked(&t.node, "r2", 5.0, 2).await;
    let p = a.cp.applied_profile();
    assert!(
        p.contains(&format!("\"scheduleId\":{}", r2.revision)),
        "{p}"
    );
    // The session integrates the energy the charger reports in its meter values.
    wait(
        &t.node,
        "energy reported over OCPP reaches the session",
        || {
            t.node.session("ev-0").is_some_and(|s| {
                serde_json::to_value(&s).unwrap()["register_kwh"]
                    .as_f64()
                    .is_some_and(|kwh| kwh > 0.0)
            })
        },
    )
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_charge_points_and_wrong_passwords_are_refused() {
    let (toml, _creds) = site();
    let t = start(&toml).await;
    let unknown = connect(&client(&t.node, "evse-99", &password("evse-99"))).await;
    assert!(unknown.is_err(), "an unconfigured id must not get in");
    let wrong = connect(&client(&t.node, "evse-0", "not-the-password")).await;
    assert!(wrong.is_err(), "a wrong password must not get in");
    let borrowed = connect(&client(&t.node, "evse-0", &password("evse-1"))).await;
    assert!(
        borrowed.is_err(),
        "another charger's password must not get in"
    );
    let right = connect(&client(&t.node, "evse-0", &password("evse-0"))).await;
    assert!(right.is_ok(), "{:?}", right.err());
    let second = connect(&client(&t.node, "evse-0", &password("evse-0"))).await;
    assert!(
        matches!(
            second,
            Err(gridvisor_transports::ocpp::ConnectError::Refused { status: 409 })
        ),
        "a live charger is not taken over: {:?}",
        second.err()
    );
    t.node.shutdown().await;
}

/// A CA, the CSMS's certificate for 127.0.0.1 and a charge point certificate whose subject CN
/// is `charger`, as PEM files in `dir`.
fn pki(dir: &std::path::Path, charger: &str) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "site CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: &[&str], usage| {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        p.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client, client_key) = leaf(&[charger], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    for (name, text) in [
        ("ca.pem", ca.pem()),
        ("csms.pem", server),
        ("csms.key", server_key),
        ("cp.pem", client),
        ("cp.key", client_key),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_over_mutual_tls_is_dispatched_and_its_certificate_is_its_identity() {
    let certs = tempfile::tempdir().unwrap();
    pki(certs.path(), "evse-0");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let mut toml = site_toml(1, 1, "", "");
    toml.push_str(&format!(
        "\n[ocpp]\n[ocpp.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        path("csms.pem"),
        path("csms.key"),
        path("ca.pem")
    ));
    let t = start(&toml).await;
    let hub = t.node.shared.devices.ocpp.clone().unwrap();
    let (ws, wss) = hub.listeners();
    assert_eq!(ws, None, "no plaintext listener beside [ocpp.tls]");
    let wss = wss.expect("the wss listener");
    let read = |f: &str| std::fs::read(certs.path().join(f)).unwrap();
    let tls_for = |id: &str| {
        let mut c = ClientConfig::new("127.0.0.1", wss.port(), id);
        c.tls = Some(
            gridvisor_transports::ocpp::tls::client_config(
                &read("ca.pem"),
                Some((&read("cp.pem"), &read("cp.key"))),
            )
            .unwrap(),
        );
        c
    };
    // evse-0's certificate does not open evse-1... nor an unconfigured id.
    assert!(connect(&tls_for("evse-99")).await.is_err());

    let mut config = ChargePointConfig::new(tls_for("evse-0"));
    config.id_token = "ev-0".to_owned();
    config.meter_interval = Duration::from_secs(1);
    config.max_power_kw = 11.0;
    config.default_limit_kw = 11.0;
    let (cp, _task) = ChargePoint::start(config, SystemTime::now()).unwrap();
    let _driver = cp.spawn_realtime_driver(Duration::from_millis(50));
    cp.plug_in(Vehicle::new(60.0, 0.5, 0.2, 11.0, 11.0, true).unwrap())
        .unwrap();
    wait(&t.node, "the session over wss", || {
        t.node.session("ev-0").is_some()
    })
    .await;
    // A discharge profile carries OCPP 2.1's offline limit: cut off, the charger drops it.
    // The site's loop feeds the meter's other load forward, so a site request's first
    // setpoint may still be a charge: ask again until the charger holds a discharge (a
    // charge profile must carry no offline limit meanwhile).
    let started = std::time::Instant::now();
    let p = loop {
        request_until_acked(&t.node, "tls", -8.0, 1).await;
        let installed = cp.snapshot();
        assert_eq!(installed.profiles.len(), 1, "{:#?}", installed.profiles);
        let p = installed.profiles.iter().next().unwrap().clone();
        let setpoint = p.profile.charging_schedule[0].charging_schedule_period[0].setpoint;
        if setpoint.is_some_and(|w| w < 0.0) {
            break p;
        }
        assert_eq!(p.profile.max_offline_duration, None, "{p:#?}");
        assert!(started.elapsed() < LIMIT, "never a discharge: {p:#?}");
    };
    assert_eq!(p.profile.max_offline_duration, Some(10), "{p:#?}");
    assert_eq!(p.profile.invalid_after_offline_duration, Some(true));
    t.node.shutdown().await;
}

/// A free loopback port (bound and released: both nodes of a restart listen on it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resumes_the_session_of_a_charging_vehicle_and_ends_it_when_it_leaves() {
    let port = free_port();
    let creds = tempfile::tempdir().unwrap();
    let mut toml = site_toml(1, 1, "", "");
    toml.push_str(&format!(
        "\n[ocpp]\nlisten = \"127.0.0.1:{port}\"\n{}",
        passwords_line(creds.path())
    ));
    let t = start(&toml).await;
    let a = charge_point(&t.node, "evse-0", "ev-0");
    wait(&t.node, "the session", || t.node.session("ev-0").is_some()).await;

    // The node stops; the charge point keeps its vehicle and retries.
    let TestNode { node, store, dir } = t;
    node.shutdown().await;
    let topology = node.shared.topology.clone();
    store.close();
    drop(node);
    let t = start_in(topology, dir).await;
    // The session is back from its checkpoint at once, before the charger reconnects.
    assert!(
        t.node.session("ev-0").is_some(),
        "resumed from the checkpoint"
    );
    wait(&t.node, "the charge point reconnects", || {
        online(&t, "evse-0")
    })
    .await;
    request_until_acked(&t.node, "after", 6.0, 1).await;
    assert!(t.node.session("ev-0").is_some());

    // The vehicle leaves: the transaction ends, and so does the session.
    a.cp.unplug().unwrap();
    wait(&t.node, "the session ends with the transaction", || {
        t.node.session("ev-0").is_none()
    })
    .await;
    t.node.shutdown().await;
}
