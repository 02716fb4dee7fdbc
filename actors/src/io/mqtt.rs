//! Telemetry export to an MQTT broker (`[mqtt]`), on rumqttc.
//!
//! Every period the node publishes one message per segment and one per charger, QoS 0 and
//! retained: telemetry is a series of snapshots, the newest matters and not every one, and a
//! subscriber that arrives later gets the last snapshot of every topic from the broker at once.
//!
//! | topic | payload (JSON) |
//! | --- | --- |
//! | `{prefix}/segments/{segment}` | [`SegmentMessage`] |
//! | `{prefix}/chargers/{charger}` | [`ChargerMessage`] |
//! | `{prefix}/status` | `online`, retained; the broker publishes the will `offline` when the node's connection ends without a DISCONNECT (a crash, a stop) |
//!
//! # Limits
//!
//! The node never waits for the broker. A publish goes into rumqttc's request channel, which
//! is bounded ([`request_capacity`]: two periods' worth of messages, within
//! [`MQTT_MIN_REQUEST_CAPACITY`]..=[`MQTT_MAX_REQUEST_CAPACITY`]), with `try_publish`: a
//! message that does not fit is dropped and counted (`gridvisor_mqtt_dropped_total`). The
//! connection lives in its own task ([`Publisher`]), which polls rumqttc's event loop; when the
//! broker cannot be reached it tries again every [`MQTT_RECONNECT_DELAY`], each attempt
//! bounded by [`MQTT_CONNECT_TIMEOUT_S`]. Messages that were queued when a connection dropped
//! are dropped (and counted) rather than sent late: the next period has newer values.
//!
//! # TLS
//!
//! With `[mqtt.tls]` the connection is TLS (rustls with the ring provider, TLS 1.2 or 1.3):
//! the broker's certificate must chain to `ca` and name `server_name` (by default the broker's
//! IP address), and `cert`/`key` are the client's certificate for brokers that require one.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use rumqttc::{
    AsyncClient, ClientError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Request,
    TlsConfiguration, Transport,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::{Mqtt, MqttTls};
use crate::ladder::SafeState;
use crate::runtime::{SegmentShared, SiteShared};
use crate::setpoint::SetpointKey;

/// The smallest request channel (messages queued for the broker).
pub const MQTT_MIN_REQUEST_CAPACITY: usize = 64;
/// The largest request channel: beyond it a period's messages are dropped rather than queued.
pub const MQTT_MAX_REQUEST_CAPACITY: usize = 65_536;
/// How long the publisher waits before it tries to reach the broker again.
pub const MQTT_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How long one connection attempt (TCP, TLS, CONNECT/CONNACK) may take, s.
pub const MQTT_CONNECT_TIMEOUT_S: u64 = 5;
/// The MQTT keep-alive: a broker that does not answer a ping for this long is gone.
pub const MQTT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The request channel's capacity for `messages_per_period` messages each period: two
/// periods' worth, within [`MQTT_MIN_REQUEST_CAPACITY`]..=[`MQTT_MAX_REQUEST_CAPACITY`].
pub fn request_capacity(messages_per_period: usize) -> usize {
    messages_per_period
        .saturating_mul(2)
        .clamp(MQTT_MIN_REQUEST_CAPACITY, MQTT_MAX_REQUEST_CAPACITY)
}

/// The export's metrics, registered once per node.
#[derive(Clone)]
pub struct MqttMetrics {
    /// Messages written to the broker connection.
    pub published: IntCounter,
    /// Messages dropped: the request channel was full, or they were queued when the connection
    /// dropped.
    pub dropped: IntCounter,
    /// 1 while connected to the broker, else 0.
    pub connected: IntGauge,
}

impl MqttMetrics {
    /// Register the export's metrics in `r`.
    pub fn register(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let published = IntCounter::new(
            "gridvisor_mqtt_published_total",
            "Telemetry messages written to the MQTT broker connection",
        )?;
        r.register(Box::new(published.clone()))?;
        let dropped = IntCounter::new(
            "gridvisor_mqtt_dropped_total",
            "Telemetry messages dropped (queue full or connection lost)",
        )?;
        r.register(Box::new(dropped.clone()))?;
        let connected = IntGauge::new(
            "gridvisor_mqtt_connected",
            "1 while the telemetry export is connected to the MQTT broker",
        )?;
        r.register(Box::new(connected.clone()))?;
        Ok(MqttMetrics {
            published,
            dropped,
            connected,
        })
    }
}

/// `{prefix}/segments/{segment}`.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentMessage {
    /// The safe-state level (`"level": "normal"`, `"limited"` with `"cap_kw"`,
    /// `"charge_only"`, `"tripped"`).
    #[serde(flatten)]
    pub level: SafeState,
    /// Metered power at the transformer, kW (positive = import).
    pub metered_kw: f64,
    /// Sum of the setpoints the dispatcher sent this cycle, kW.
    pub setpoint_kw: f64,
    /// The segment's share of the grid requests, kW.
    pub target_kw: f64,
    /// The transformer's rating, kW.
    pub rated_kw: f64,
    /// The transformer's hot-spot temperature (thermal model), °C.
    pub hot_spot_c: f64,
    /// Sessions running.
    pub sessions: usize,
    /// Charger links running.
    pub links: usize,
    /// When this was read: seconds on the node's clock (since the node started).
    pub at_s: f64,
}

/// `{prefix}/chargers/{charger}`.
#[derive(Debug, Clone, Serialize)]
pub struct ChargerMessage {
    /// The charger's segment.
    pub segment: String,
    /// The setpoint the charger holds after local clamps, kW (null before the first).
    pub commanded_kw: Option<f64>,
    /// What it delivered at the last reading, kW (null before the first).
    pub measured_kw: Option<f64>,
    /// The key of the last applied setpoint (`{"dispatch", "revision"}`), or null.
    pub applied: Option<SetpointKey>,
    /// The vehicle plugged in, or null.
    pub vehicle: Option<String>,
    /// The vehicle's state of charge while its session runs, %, or null.
    pub soc_pct: Option<f64>,
}

/// A segment's message now.
pub fn segment_message(seg: &SegmentShared, at_s: f64) -> SegmentMessage {
    let t = seg.telemetry();
    SegmentMessage {
        level: seg.level(),
        metered_kw: t.metered_kw,
        setpoint_kw: t.setpoint_kw,
        target_kw: t.target_kw,
        rated_kw: seg.config.rated_kw,
        hot_spot_c: t.hot_spot_c,
        sessions: seg.session_actors.len(),
        links: seg.links.len(),
        at_s,
    }
}

/// A charger's message now, from its segment's boards and the plugged-in vehicles.
pub fn charger_message(shared: &SiteShared, seg: &SegmentShared, charger: &str) -> ChargerMessage {
    let status = seg.links.get(charger).map(|e| e.status);
    let session = seg
        .sessions
        .get(charger)
        .map(|s| (s.session.vehicle.clone(), s.session.soc_pct));
    // Plugged in says which vehicle is there; the session (its board entry lives until the
    // session ends) says its state of charge.
    let vehicle = shared
        .plugged
        .get(charger)
        .map(|v| v.value().clone())
        .or_else(|| session.as_ref().map(|(v, _)| v.clone()));
    let soc_pct = session
        .filter(|(v, _)| Some(v) == vehicle.as_ref())
        .map(|(_, soc)| soc);
    ChargerMessage {
        segment: seg.id.clone(),
        commanded_kw: status.and_then(|s| s.commanded_kw),
        measured_kw: status.and_then(|s| s.measured_kw),
        applied: status.and_then(|s| s.applied),
        vehicle,
        soc_pct,
    }
}

/// Verifies the broker's certificate with webpki against the configured server name instead
/// of the address rumqttc connected to (an IP address): a broker reached by IP whose
/// certificate carries a DNS name.
#[derive(Debug)]
struct NamedServer {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _connected_to: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls client config of `[mqtt.tls]` (ring provider): the files are read now, and a
/// file that cannot be read or holds no certificate or key is an error naming it.
pub fn client_tls(tls: &MqttTls) -> Result<Arc<rustls::ClientConfig>, String> {
    use gridvisor_transports::ocpp::tls::{certificates, private_key};
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| format!("[mqtt.tls] {what} {}: {e}", p.display()))
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("[mqtt.tls] {what}: {e}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = read(&tls.ca, "ca")?;
    for cert in certificates(&ca, "broker CA").map_err(|e| fail("ca", &e))? {
        roots.add(cert).map_err(|e| fail("ca", &e))?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| fail("ca", &e))?;
    let name =
        ServerName::try_from(tls.server_name.clone()).map_err(|e| fail("server_name", &e))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("protocol versions", &e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedServer { inner, name }));
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(&read(cert, "cert")?, "client certificate")
                .map_err(|e| fail("cert", &e))?;
            let key = private_key(&read(key, "key")?).map_err(|e| fail("key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fail("cert", &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The topic of the node's status (`online`, or the will `offline`).
pub fn status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// A connection to the broker and the task that runs it. Dropping it ends the task.
pub struct Publisher {
    client: AsyncClient,
    task: JoinHandle<()>,
    metrics: MqttMetrics,
    prefix: String,
}

impl Publisher {
    /// Start the connection task for `config` (TLS when `tls` is given) with a request channel
    /// of `capacity` messages. It never fails: an unreachable broker is tried again every
    /// [`MQTT_RECONNECT_DELAY`].
    pub fn start(
        config: &Mqtt,
        tls: Option<Arc<rustls::ClientConfig>>,
        capacity: usize,
        metrics: MqttMetrics,
    ) -> Publisher {
        let host = match config.broker.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut options = MqttOptions::new(config.client_id.clone(), host, config.broker.port());
        options.set_keep_alive(MQTT_KEEP_ALIVE);
        options.set_clean_session(true);
        let status = status_topic(&config.topic_prefix);
        options.set_last_will(LastWill::new(&status, "offline", QoS::AtLeastOnce, true));
        if let Some(tls) = tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        let (client, mut events) = AsyncClient::new(options, capacity.max(1));
        let mut network = events.network_options();
        network.set_connection_timeout(MQTT_CONNECT_TIMEOUT_S);
        events.set_network_options(network);
        let (loop_client, m) = (client.clone(), metrics.clone());
        let broker = config.broker;
        let task = tokio::spawn(async move {
            let mut connected = false;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        m.connected.set(1);
                        tracing::info!(%broker, "telemetry: connected to the MQTT broker");
                        // Behind whatever is queued: the status is not telemetry, it may wait.
                        if loop_client
                            .try_publish(&status, QoS::AtLeastOnce, true, "online")
                            .is_err()
                        {
                            m.dropped.inc();
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => m.published.inc(),
                    Ok(_) => {}
                    Err(e) => {
                        m.connected.set(0);
                        // What was queued for the lost connection is old by the time another
                        // one is up: drop it, the next period has newer values.
                        let stale = events
                            .pending
                            .drain(..)
                            .filter(|r| matches!(r, Request::Publish(_)))
                            .count();
                        m.dropped.inc_by(u64::try_from(stale).unwrap_or(u64::MAX));
                        if connected {
                            tracing::warn!(%broker, error = %e, "telemetry: MQTT connection lost");
                        } else {
                            tracing::debug!(%broker, error = %e, "telemetry: MQTT broker unreachable");
                        }
                        connected = false;
                        tokio::time::sleep(MQTT_RECONNECT_DELAY).await;
                    }
                }
            }
        });
        Publisher {
            client,
            task,
            metrics,
            prefix: config.topic_prefix.clone(),
        }
    }

    /// Queue one message (QoS 0, retained) without waiting; false when it was dropped.
    pub fn publish(&self, topic: String, payload: Vec<u8>) -> bool {
        match self
            .client
            .try_publish(topic, QoS::AtMostOnce, true, payload)
        {
            Ok(()) => true,
            Err(ClientError::TryRequest(_) | ClientError::Request(_)) => {
                self.metrics.dropped.inc();
                false
            }
        }
    }

    /// Queue every segment's and every charger's message; returns how many were queued.
    pub fn publish_site(&self, shared: &SiteShared) -> usize {
        let at_s = shared.clock.now_s();
        let mut queued = 0;
        for seg in shared.segments.values() {
            let topic = format!("{}/segments/{}", self.prefix, seg.id);
            queued += usize::from(self.publish_json(topic, &segment_message(seg, at_s)));
            for c in &seg.config.chargers {
                let topic = format!("{}/chargers/{}", self.prefix, c.id);
                let message = charger_message(shared, seg, &c.id);
                queued += usize::from(self.publish_json(topic, &message));
            }
        }
        queued
    }

    fn publish_json<T: Serialize>(&self, topic: String, message: &T) -> bool {
        match serde_json::to_vec(message) {
            Ok(payload) => self.publish(topic, payload),
            Err(e) => {
                // Plain structs of numbers and strings: cannot happen; never worth a crash.
                tracing::warn!(%topic, error = %e, "telemetry: message not serialized");
                self.metrics.dropped.inc();
                false
            }
        }
    }

    /// End the connection task (the broker then publishes the will, `offline`).
    pub fn stop(&self) {
        self.task.abort();
        self.metrics.connected.set(0);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_channel_holds_two_periods_within_bounds() {
        assert_eq!(request_capacity(0), MQTT_MIN_REQUEST_CAPACITY);
        assert_eq!(request_capacity(100), 200);
        assert_eq!(request_capacity(1_000_000), MQTT_MAX_REQUEST_CAPACITY);
        assert_eq!(request_capacity(usize::MAX), MQTT_MAX_REQUEST_CAPACITY);
    }

    #[test]
    fn messages_are_the_documented_json() {
        let seg = SegmentMessage {
            level: SafeState::Limited { cap_kw: 5.0 },
            metered_kw: 1.5,
            setpoint_kw: 2.0,
            target_kw: 3.0,
            rated_kw: 100.0,
            hot_spot_c: 40.0,
            sessions: 2,
            links: 3,
            at_s: 1.25,
        };
        let v = serde_json::to_value(&seg).unwrap();
        assert_eq!(v["level"], "limited");
        assert_eq!(v["cap_kw"], 5.0);
        assert_eq!(
            (v["sessions"].as_u64(), v["links"].as_u64()),
            (Some(2), Some(3))
        );
        let normal = SegmentMessage {
            level: SafeState::Normal,
            ..seg
        };
        let v = serde_json::to_value(&normal).unwrap();
        assert_eq!(v["level"], "normal");
        assert!(v.get("cap_kw").is_none());
        let c = ChargerMessage {
            segment: "tx".into(),
            commanded_kw: Some(4.0),
            measured_kw: None,
            applied: Some(SetpointKey::new(7, 2)),
            vehicle: None,
            soc_pct: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["applied"],
            serde_json::json!({"dispatch": 7, "revision": 2})
        );
        assert!(v["measured_kw"].is_null() && v["vehicle"].is_null() && v["soc_pct"].is_null());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = MqttTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: None,
            key: None,
            server_name: "127.0.0.1".into(),
        };
        let e = client_tls(&tls).unwrap_err();
        assert!(e.contains("[mqtt.tls] ca /nonexistent/ca.pem"), "{e}");
    }
}
