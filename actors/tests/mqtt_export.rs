//! Telemetry export to MQTT against a real broker: Debian's mosquitto, started as a child
//! process on a free loopback port. A node with `[mqtt]` publishes one retained message per
//! segment and per charger; a subscriber (rumqttc) checks the payloads; the broker is stopped
//! (the node keeps running, the connected gauge and the drop counter say so) and started again
//! on the same port (the export resumes by itself). Over TLS, the broker requires a client
//! certificate and its own certificate names a DNS name that is not the address the node
//! connects to (`server_name`).
//!
//! A missing mosquitto fails the tests when `GRIDVISOR_REQUIRE_MOSQUITTO=1` (the CI sets it);
//! otherwise they say so loudly and pass. `GRIDVISOR_MOSQUITTO` names the binary if it is not
//! on the PATH or in /usr/sbin.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gridvisor_actors::config::MqttTls;
use gridvisor_actors::io::mqtt::client_tls;
use gridvisor_actors::runtime::{Node, Scope};
use gridvisor_testkit::{find_executable, needs, probe};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;

/// The broker binary (`GRIDVISOR_MOSQUITTO`, else found on PATH or in sbin), or None after
/// the skip is recorded (a failure with `GRIDVISOR_REQUIRE_MOSQUITTO=1`, as in CI).
fn mosquitto() -> Option<PathBuf> {
    let given = std::env::var_os("GRIDVISOR_MOSQUITTO").map(PathBuf::from);
    let found = given.map_or_else(|| find_executable(&["mosquitto"]), Ok);
    probe(&needs::MOSQUITTO, found)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A mosquitto process with its configuration in `dir`; killed on drop.
struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    /// The ports it listens on (the first is where it is waited for).
    ports: Vec<u16>,
    child: Option<Child>,
}

impl Broker {
    /// Write `mosquitto.conf` (anonymous clients, no persistence, `listeners` as given) and
    /// start it; returns when its first port accepts connections.
    async fn start(bin: &Path, dir: &Path, ports: Vec<u16>, listeners: &str) -> Broker {
        let conf = format!(
            "# gridvisor test broker\n\
             user root\n\
             persistence false\n\
             allow_anonymous true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             {listeners}\n"
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            ports,
            child: None,
        };
        b.restart().await;
        b
    }

    /// Start the process (again, on the same ports).
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        self.child = Some(child);
        let start = Instant::now();
        let port = self.ports[0];
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < LIMIT,
                "mosquitto not listening on {port} within {LIMIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last payload per topic, from a subscriber that (re)subscribes on every connection.
struct Subscriber {
    seen: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    fn start(port: u16, filter: &str) -> Subscriber {
        let mut options = MqttOptions::new(format!("test-sub-{port}"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 16);
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (into, filter) = (seen.clone(), filter.to_owned());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.as_str(), QoS::AtMostOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut seen = into.lock().unwrap();
                        seen.insert(p.topic.clone(), p.payload.to_vec());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Subscriber { seen, task }
    }

    fn json(&self, topic: &str) -> Option<Value> {
        let seen = self.seen.lock().unwrap();
        serde_json::from_slice(seen.get(topic)?).ok()
    }

    fn text(&self, topic: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        seen.get(topic)
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of a metric without labels, from the node's exposition.
fn metric(node: &Node, name: &str) -> f64 {
    let text = node.metrics_text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

const PREFIX: &str = "gridvisor/t";
const SEGMENTS: [&str; 2] = ["tx-0", "tx-1"];

fn charger_topics() -> Vec<(String, &'static str, String)> {
    // site_toml: evse-n with vehicle ev-n, chargers numbered across segments.
    (0..4)
        .map(|n| (format!("evse-{n}"), SEGMENTS[n / 2], format!("ev-{n}")))
        .collect()
}

/// Wait until `check` passes, at most [`LIMIT`]; panics with its last complaint.
async fn wait_ok(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if start.elapsed() > LIMIT => panic!("{what}: not within {LIMIT:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Every segment and charger topic has a message with the documented fields and the node's
/// values (the first snapshots may predate the last links and sessions: retained messages are
/// replaced by newer ones, which is what is waited for).
async fn wait_for_every_topic(node: &Node, sub: &Subscriber) {
    wait_ok(
        "the node's state on every segment and charger topic",
        || {
            for s in SEGMENTS {
                let topic = format!("{PREFIX}/segments/{s}");
                let m = sub.json(&topic).ok_or(format!("nothing on {topic}"))?;
                let view = node.segment(s).unwrap();
                let level = serde_json::to_value(view.level).unwrap()["level"].clone();
                let fine = m["level"] == level
                    && m["level"] == "normal"
                    && m["rated_kw"] == 44.0
                    && m["links"] == 2
                    && m["sessions"] == 2
                    && [
                        "metered_kw",
                        "setpoint_kw",
                        "target_kw",
                        "hot_spot_c",
                        "at_s",
                    ]
                    .iter()
                    .all(|f| m[f].as_f64().is_some_and(f64::is_finite))
                    && m["at_s"].as_f64() > Some(0.0);
                if !fine {
                    return Err(format!("{topic}: {m}"));
                }
            }
            for (c, seg, vehicle) in charger_topics() {
                let topic = format!("{PREFIX}/chargers/{c}");
                let m = sub.json(&topic).ok_or(format!("nothing on {topic}"))?;
                let soc = m["soc_pct"].as_f64().unwrap_or(-1.0);
                let fine = m["segment"] == seg
                    && m["vehicle"] == vehicle.as_str()
                    && (0.0..=100.0).contains(&soc)
                    && ["commanded_kw", "measured_kw", "applied"]
                        .iter()
                        .all(|f| m.get(f).is_some());
                if !fine {
                    return Err(format!("{topic}: {m}"));
                }
            }
            Ok(())
        },
    )
    .await;
}

fn site(broker: &str, extra: &str) -> String {
    let mut toml = site_toml(2, 2, "", "");
    toml.push_str(&format!(
        "\n[mqtt]\nbroker = \"{broker}\"\ninterval_ms = 100\n{extra}\n"
    ));
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_a_real_broker_and_survives_its_restart() {
    let Some(bin) = mosquitto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(
        &bin,
        dir.path(),
        vec![port],
        &format!("listener {port} 127.0.0.1"),
    )
    .await;
    let sub = Subscriber::start(port, &format!("{PREFIX}/#"));
    let t = start(&site(&format!("127.0.0.1:{port}"), "")).await;
    wait(&t.node, "connected", || {
        metric(&t.node, "gridvisor_mqtt_connected") == 1.0
    })
    .await;
    wait_for_every_topic(&t.node, &sub).await;
    assert_eq!(
        sub.text(&format!("{PREFIX}/status")).as_deref(),
        Some("online")
    );

    // A dispatch shows in the chargers' messages: the applied key and the commanded power.
    let receipt = t
        .node
        .request(request("mqtt-1", Scope::Site, 20.0, 600.0))
        .await
        .unwrap();
    let dispatch = receipt.dispatch;
    wait(&t.node, "the dispatch in every charger's message", || {
        charger_topics().iter().all(|(c, _, _)| {
            sub.json(&format!("{PREFIX}/chargers/{c}"))
                .is_some_and(|m| {
                    m["applied"]["dispatch"].as_u64() >= Some(dispatch)
                        && m["commanded_kw"].as_f64().is_some()
                })
        })
    })
    .await;
    let published = metric(&t.node, "gridvisor_mqtt_published_total");
    assert!(published >= 6.0, "published {published}");

    // The broker goes away: the node runs on, says it is disconnected and drops what does not
    // fit its queue instead of waiting.
    broker.stop();
    wait(&t.node, "the connected gauge at 0", || {
        metric(&t.node, "gridvisor_mqtt_connected") == 0.0
    })
    .await;
    let dropped = metric(&t.node, "gridvisor_mqtt_dropped_total");
    wait(&t.node, "drops counted while the broker is down", || {
        metric(&t.node, "gridvisor_mqtt_dropped_total") > dropped
    })
    .await;
    assert!(t.node.running(), "the node must not depend on the broker");
    let again = t
        .node
        .request(request("mqtt-2", Scope::Site, 10.0, 600.0))
        .await
        .expect("dispatch goes on without the broker");
    assert!(again.dispatch > dispatch);

    // The broker is back on the same port (no persistence: nothing retained): the export
    // reconnects by itself and every topic is published again.
    sub.clear();
    broker.restart().await;
    wait(&t.node, "connected again", || {
        metric(&t.node, "gridvisor_mqtt_connected") == 1.0
    })
    .await;
    wait_for_every_topic(&t.node, &sub).await;
    assert!(metric(&t.node, "gridvisor_mqtt_published_total") > published);

    // The node stops: its connection ends without a DISCONNECT, the broker publishes the will.
    t.node.shutdown().await;
    wait(&t.node, "the will `offline` after the node stopped", || {
        sub.text(&format!("{PREFIX}/status")).as_deref() == Some("offline")
    })
    .await;
    assert_eq!(metric(&t.node, "gridvisor_mqtt_connected"), 0.0);
}

/// A CA, the broker's certificate for `broker.test` only, and a client certificate, as PEM
/// files in `dir`.
fn pki(dir: &Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test broker CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, usage| {
        let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf("broker.test", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client, client_key) = leaf("gridvisor-t", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    for (name, text) in [
        ("ca.pem", ca.pem()),
        ("broker.pem", server),
        ("broker.key", server_key),
        ("client.pem", client),
        ("client.key", client_key),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// One connection attempt with `tls` to the broker's TLS port: its CONNACK or its error.
async fn connect_once(port: u16, tls: &MqttTls) -> Result<(), String> {
    let config = client_tls(tls)?;
    let mut options = MqttOptions::new("test-tls-probe", "127.0.0.1", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    let (_client, mut events) = AsyncClient::new(options, 1);
    match tokio::time::timeout(LIMIT, events.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok(()),
        Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {LIMIT:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_over_tls_with_a_client_certificate() {
    let Some(bin) = mosquitto() else { return };
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let file = |f: &str| dir.path().join(f);
    let (tls_port, plain_port) = (free_port(), free_port());
    let _broker = Broker::start(
        &bin,
        dir.path(),
        vec![tls_port, plain_port],
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n\
             listener {plain_port} 127.0.0.1\n",
            file("ca.pem").display(),
            file("broker.pem").display(),
            file("broker.key").display(),
        ),
    )
    .await;

    // The broker's certificate names broker.test, not 127.0.0.1; it wants a client certificate.
    let good = MqttTls {
        ca: file("ca.pem"),
        cert: Some(file("client.pem")),
        key: Some(file("client.key")),
        server_name: "broker.test".into(),
    };
    connect_once(tls_port, &good)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", _broker.log()));
    let wrong_name = MqttTls {
        server_name: "127.0.0.1".into(),
        ..good.clone()
    };
    let e = connect_once(tls_port, &wrong_name).await.unwrap_err();
    eprintln!("a certificate for another name is refused: {e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let no_client_cert = MqttTls {
        cert: None,
        key: None,
        ..good.clone()
    };
    let e = connect_once(tls_port, &no_client_cert).await.unwrap_err();
    eprintln!("a client without a certificate is refused: {e}");

    // The node publishes over TLS; the subscriber reads on the broker's plaintext listener.
    let sub = Subscriber::start(plain_port, &format!("{PREFIX}/#"));
    let tls = format!(
        "[mqtt.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"broker.test\"\n",
        file("ca.pem").display(),
        file("client.pem").display(),
        file("client.key").display(),
    );
    let t = start(&site(&format!("127.0.0.1:{tls_port}"), &tls)).await;
    wait(&t.node, "connected over TLS", || {
        metric(&t.node, "gridvisor_mqtt_connected") == 1.0
    })
    .await;
    wait_for_every_topic(&t.node, &sub).await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_tls_file_fails_the_start_and_names_it() {
    let topology = gridvisor_actors::config::parse(
        "t.toml",
        &site(
            "127.0.0.1:8883",
            "[mqtt.tls]\nca = \"/nonexistent/gridvisor-test/ca.pem\"\n",
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = gridvisor_actors::checkpoint::CheckpointStore::open(
        &dir.path().join("cp.redb"),
        gridvisor_actors::checkpoint::StoreLimits::default(),
    )
    .unwrap();
    let e = Node::start(
        Arc::new(topology),
        store,
        gridvisor_actors::clock::Clock::tokio(),
        prometheus::Registry::new(),
        gridvisor_actors::runtime::NodeOptions::default(),
    )
    .await
    .err()
    .expect("the start must fail");
    assert!(
        e.to_string().contains("/nonexistent/gridvisor-test/ca.pem"),
        "{e}"
    );
}
