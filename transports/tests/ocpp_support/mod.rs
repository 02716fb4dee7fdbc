//! Shared fixtures of the OCPP tests: a test PKI (rcgen), a CSMS with the three security
//! profiles on 127.0.0.1, a standard answering of charge-point CALLs, and a runner for the
//! Python charge point that reads its JSON lines with bounded waits.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gridvisor_transports::ocpp::connection::{IncomingCall, RpcConfig};
use gridvisor_transports::ocpp::credentials::{Credentials, CredentialsFile, MIN_ITERATIONS};
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::server::{
    ListenerConfig, Security, Server, ServerConfig, ServerEvent, Session,
};
use gridvisor_transports::ocpp::{crl, tls};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Bound on every wait for an event or a line in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// Passwords known to the test CSMS.
pub const PASSWORDS: &[(&str, &str)] = &[
    ("CP-201", "pw-201-secret"),
    ("CP-21", "pw-21-secret"),
    ("RUST-1", "rust-secret"),
    ("caf\u{e9} 7", "unicode-secret"),
];

/// PEM material and files of a test PKI: one CA issuing the server and a client certificate,
/// and a second, unrelated CA issuing a "rogue" client certificate.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub rogue_cert_pem: String,
    pub rogue_key_pem: String,
    /// A client certificate of the test CA for `CP-REVOKED`, revoked by `crl_pem`.
    pub revoked_cert_pem: String,
    pub revoked_key_pem: String,
    /// The test CA's CRL (PEM), revoking `revoked_cert_pem`'s serial.
    pub crl_pem: String,
}

/// The serial number of the revoked test certificate.
pub const REVOKED_SERIAL: u64 = 0x0bad_cafe;

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    leaf_with_serial(issuer, names, usage, None)
}

fn leaf_with_serial(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
    serial: Option<u64>,
) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    params.serial_number = serial.map(rcgen::SerialNumber::from);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = ca("gridvisor test CA");
    let (server_cert_pem, server_key_pem) = leaf(
        &ca1,
        &["localhost", "127.0.0.1"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert_pem, client_key_pem) = leaf(
        &ca1,
        &["CP-MTLS"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (revoked_cert_pem, revoked_key_pem) = leaf_with_serial(
        &ca1,
        &["CP-REVOKED"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        Some(REVOKED_SERIAL),
    );
    let crl_pem = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(REVOKED_SERIAL),
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca1)
    .unwrap()
    .pem()
    .unwrap();
    let ca2 = ca("some other CA");
    let (rogue_cert_pem, rogue_key_pem) = leaf(
        &ca2,
        &["CP-ROGUE"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let pki = Pki {
        ca_pem: ca1.pem(),
        dir,
        server_cert_pem,
        server_key_pem,
        client_cert_pem,
        client_key_pem,
        rogue_cert_pem,
        rogue_key_pem,
        revoked_cert_pem,
        revoked_key_pem,
        crl_pem,
    };
    for (name, text) in [
        ("ca.pem", &pki.ca_pem),
        ("client.pem", &pki.client_cert_pem),
        ("client.key", &pki.client_key_pem),
        ("rogue.pem", &pki.rogue_cert_pem),
        ("rogue.key", &pki.rogue_key_pem),
        ("revoked.pem", &pki.revoked_cert_pem),
        ("revoked.key", &pki.revoked_key_pem),
        ("crl.pem", &pki.crl_pem),
    ] {
        std::fs::write(pki.path(name), text).unwrap();
    }
    pki
}

/// A CSMS with ws (profile 1), wss (profile 2) and wss + mTLS (profile 3) on free ports.
pub struct Csms {
    pub server: Server,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    pub mtls: SocketAddr,
}

/// A credentials file of `stations` (id, password), hashed with the fewest iterations the
/// file allows (the tests' CPU; the hashing is the same).
pub fn credentials_file(stations: &[(&str, &str)]) -> CredentialsFile {
    let mut file = CredentialsFile::default();
    for (id, pw) in stations {
        file.set(id, pw.as_bytes(), MIN_ITERATIONS).unwrap();
    }
    file
}

/// The authenticator of `stations`: per-station salted hashes, as a node loads them.
pub fn credentials(stations: &[(&str, &str)]) -> Arc<Credentials> {
    let text = credentials_file(stations).to_text();
    let file = CredentialsFile::parse("test.cred", &text).unwrap();
    Arc::new(Credentials::new(file).unwrap())
}

pub async fn start_csms(pki: &Pki, rpc: RpcConfig) -> Csms {
    start_csms_with(pki, rpc, |_| {}).await
}

/// [`start_csms`] with changes to the server's configuration.
pub async fn start_csms_with(
    pki: &Pki,
    rpc: RpcConfig,
    change: impl FnOnce(&mut ServerConfig),
) -> Csms {
    let auth: Arc<dyn gridvisor_transports::ocpp::auth::Authenticator> = credentials(PASSWORDS);
    let server_tls = tls::server_config(
        pki.server_cert_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
        None,
    )
    .unwrap();
    // Profile 3 with the test CA's CRL: CP-REVOKED is refused at the TLS handshake.
    let mtls = crl::mutual_tls_server_config(
        pki.server_cert_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
        pki.ca_pem.as_bytes(),
        crl::crls(pki.crl_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let local = "127.0.0.1:0".parse().unwrap();
    let mut config = ServerConfig::new(vec![
        ListenerConfig {
            addr: local,
            security: Security::BasicAuth(Arc::clone(&auth)),
        },
        ListenerConfig {
            addr: local,
            security: Security::TlsBasicAuth {
                tls: server_tls,
                authenticator: auth,
            },
        },
        ListenerConfig {
            addr: local,
            security: Security::MutualTls(mtls),
        },
    ]);
    config.rpc = rpc;
    change(&mut config);
    let server = Server::bind(config).await.unwrap();
    let a = server.local_addrs().to_vec();
    Csms {
        ws: a[0],
        wss: a[1],
        mtls: a[2],
        server,
    }
}

pub async fn next_event(server: &mut Server) -> ServerEvent {
    tokio::time::timeout(WAIT, server.next_event())
        .await
        .expect("no server event within the wait bound")
        .expect("server event channel closed")
}

pub async fn expect_connected(server: &mut Server) -> Session {
    match next_event(server).await {
        ServerEvent::Connected(s) => s,
        other => panic!("expected Connected, got {other:?}"),
    }
}

fn status_ok() -> Map<String, Value> {
    Map::new()
}

/// The CSMS's standard answers to charge-point CALLs.
pub fn standard_answer(request: &Request) -> Response {
    let now = DateTime::now();
    let accepted = IdTokenInfo {
        status: AuthorizationStatus::Accepted,
        cache_expiry_date_time: None,
        charging_priority: None,
        language1: None,
        evse_id: None,
        group_id_token: None,
        language2: None,
        personal_message: None,
        extra: Map::new(),
    };
    match request {
        Request::BootNotification(_) => BootNotificationResponse {
            current_time: now,
            interval: 300,
            status: RegistrationStatus::Accepted,
            status_info: None,
            extra: status_ok(),
        }
        .into(),
        Request::Heartbeat(_) => HeartbeatResponse {
            current_time: now,
            extra: Map::new(),
        }
        .into(),
        Request::StatusNotification(_) => StatusNotificationResponse::default().into(),
        Request::Authorize(_) => AuthorizeResponse {
            id_token_info: accepted,
            certificate_status: None,
            allowed_energy_transfer: None,
            extra: Map::new(),
        }
        .into(),
        Request::TransactionEvent(_) => TransactionEventResponse {
            id_token_info: Some(accepted),
            ..Default::default()
        }
        .into(),
        Request::MeterValues(_) => MeterValuesResponse::default().into(),
        Request::NotifyEVChargingNeeds(_) => NotifyEVChargingNeedsResponse {
            status: NotifyEVChargingNeedsStatus::Accepted,
            status_info: None,
            extra: Map::new(),
        }
        .into(),
        Request::ReportChargingProfiles(_) => ReportChargingProfilesResponse::default().into(),
        other => panic!("the CSMS does not receive {:?}", other.action()),
    }
}

/// Answers a session's CALLs with [`standard_answer`] and forwards each typed request.
pub fn answer_calls(mut calls: mpsc::Receiver<IncomingCall>) -> mpsc::UnboundedReceiver<Request> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(call) = calls.recv().await {
            let answer = standard_answer(&call.request);
            let _ = tx.send(call.request.clone());
            call.respond(Ok(answer));
        }
    });
    rx
}

pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("nothing within the wait bound")
        .expect("channel closed")
}

/// The tests' Python: their own venv from the pinned requirements (`GRIDVISOR_PYTHON`
/// overrides).
pub use gridvisor_testkit::python;

/// Fails (never skips) when Python or the pinned packages are missing.
pub fn require_python_ocpp() {
    let out = Command::new(python())
        .args([
            "-c",
            "import ocpp, websockets, importlib.metadata as m; print(m.version('ocpp'))",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            assert_eq!(v, "2.1.0", "the interop tests need ocpp==2.1.0, found {v} in {}", python().display());
        }
        Ok(o) => panic!(
            "python `ocpp`/`websockets` missing from {} ({}): are they in transports/tests/py/requirements.txt?",
            python().display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("cannot run {} ({e})", python().display()),
    }
}

/// The Python charge point as a child process; killed on drop.
pub struct PyCp {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl PyCp {
    pub fn spawn(args: &[String]) -> PyCp {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/ocpp_charge_point.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the python charge point");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| Value::String(format!("non-JSON line: {line}")));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = stderr_pipe.read_to_string(&mut buf);
            if let Ok(mut s) = sink.lock() {
                *s = buf;
            }
        });
        PyCp {
            child,
            lines,
            stderr,
        }
    }

    /// The next JSON line (panics with the script's stderr when it ends or the wait expires).
    pub async fn next(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.lines.recv()).await {
            Ok(Some(v)) => {
                if v["event"] == "missing" {
                    panic!("python packages missing: {v}: are they in transports/tests/py/requirements.txt?");
                }
                v
            }
            Ok(None) => {
                let _ = self.child.wait();
                panic!(
                    "python charge point ended; stderr:\n{}",
                    self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
                )
            }
            Err(_) => panic!("no line from the python charge point within {WAIT:?}"),
        }
    }

    /// Lines up to and including the first whose event is `event`.
    pub async fn until(&mut self, event: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let v = self.next().await;
            let done = v["event"] == event;
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for PyCp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
