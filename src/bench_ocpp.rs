//! `gridvisor bench ocpp --clients N`: N concurrent charge points (boot, status, then
//! heartbeats and meter values) against one gridvisor node.
//!
//! The node is a real `gridvisor run` child process with a generated site of N chargers and
//! an `[ocpp]` listener on a free loopback port (its own process: its memory is measured
//! apart from the clients', and N connections on each side stay within the file descriptor
//! limit of one process). The clients are the load engine of `gridvisor-sim`
//! ([`gridvisor_sim::ocpp::load`]), in this process, with ids `evse-0` .. `evse-{N-1}`, the
//! generated chargers' ids.
//!
//! Prints `name value unit` lines:
//! - `ocpp_clients_ready`, `ocpp_connect_failures`, `ocpp_request_failures`;
//! - `ocpp_connect_p50` / `_p99` (TCP + WebSocket upgrade), `ocpp_request_p50` / `_p99` /
//!   `_max` (BootNotification, StatusNotification, Heartbeat, MeterValues: CALL to answer);
//! - `ocpp_node_memory_per_connection`: the node's peak resident set (`VmHWM`) with every
//!   client connected, less its resident set before the first connect, over the clients;
//! - `ocpp_client_memory_per_connection`: the same for the load engine's side.
//!
//! Every wait is bounded: the node's start by [`NODE_START_LIMIT`], the load by the engine's
//! own bounds (ramp, CALL time-outs, the steady-state duration).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gridvisor_actors::config::{self, Ocpp};
use gridvisor_sim::ocpp::load::{self, LoadConfig, MAX_LOAD_CLIENTS};
use gridvisor_transports::ocpp::client::ClientConfig;
use gridvisor_transports::ocpp::{credentials, server};

use crate::stdout::outln;

/// How long the node child may take to listen.
pub const NODE_START_LIMIT: Duration = Duration::from_secs(300);
/// Chargers per generated segment.
const CHARGERS_PER_SEGMENT: usize = 1_000;
/// PBKDF2 rounds of the bench's credentials file: the file's minimum, so that writing and
/// checking 10,000 lines stays a few seconds (its password is random, generated per run:
/// the rounds add nothing there). Production files carry `credentials::DEFAULT_ITERATIONS`.
const BENCH_PASSWORD_ITERATIONS: u32 = credentials::MIN_ITERATIONS;
/// The marker of the CSMS line `gridvisor run` prints.
const OCPP_LINE: &str = "  ocpp       ws://";

fn line(name: &str, value: f64, unit: &str) {
    outln!("{name} {value:.3} {unit}");
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`), 0 where /proc is missing.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Kills the node child when the benchmark ends, however it ends.
struct NodeChild(Child);

impl Drop for NodeChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the node child and return it with its CSMS address.
fn start_node(
    dir: &std::path::Path,
    clients: usize,
    password: &str,
) -> Result<(NodeChild, SocketAddr), String> {
    let mut topology = config::generated(clients.div_ceil(CHARGERS_PER_SEGMENT), clients, 7);
    topology.site.keepalive_required = false;
    // Every charger gets its own line (own salt and hash) in the node's credentials file.
    let passwords = dir.join("stations.cred");
    let mut file = credentials::CredentialsFile::default();
    for (_, c) in topology.chargers() {
        file.set(&c.id, password.as_bytes(), BENCH_PASSWORD_ITERATIONS)
            .map_err(|e| format!("charger {}: {e}", c.id))?;
    }
    file.write_atomic(&passwords)
        .map_err(|e| format!("{}: {e}", passwords.display()))?;
    // All clients come from 127.0.0.1: loopback is exempt from the per-address caps
    // (`ServerConfig::per_ip_exempt_loopback`), so the defaults stay.
    topology.ocpp = Some(Ocpp {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        tls: None,
        passwords: Some(passwords),
        credentials: None,
        allow_plaintext: false,
        max_connections_per_ip: server::DEFAULT_MAX_CONNECTIONS_PER_IP as u64,
        max_handshakes_per_ip: server::DEFAULT_MAX_HANDSHAKES_PER_IP as u64,
        heartbeat_s: config::DEFAULT_OCPP_HEARTBEAT_S,
    });
    let text = toml::to_string(&topology).map_err(|e| format!("bench topology: {e}"))?;
    let path = dir.join("bench-ocpp.toml");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let log = std::fs::File::create(dir.join("node.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .arg("--data")
        .arg(dir.join("data"))
        .args(["--grid", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start the node: {e}"))?;
    let stdout = child.stdout.take().ok_or("the node's stdout")?;
    let node = NodeChild(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = l.strip_prefix(OCPP_LINE) {
                let addr = rest.split('/').next().unwrap_or_default().to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx.recv_timeout(NODE_START_LIMIT).map_err(|_| {
        format!(
            "the node did not listen within {NODE_START_LIMIT:?} (see {}/node.log)",
            dir.display()
        )
    })?;
    let addr = addr
        .parse()
        .map_err(|e| format!("the node's CSMS address {addr:?}: {e}"))?;
    Ok((node, addr))
}

/// Run the OCPP benchmark.
pub async fn ocpp(clients: usize, seconds: f64) -> Result<(), String> {
    if clients == 0 || clients > MAX_LOAD_CLIENTS {
        return Err(format!(
            "--clients must be 1..={MAX_LOAD_CLIENTS}, not {clients}"
        ));
    }
    let duration =
        Duration::try_from_secs_f64(seconds).map_err(|e| format!("--seconds {seconds}: {e}"))?;
    crate::raise_fd_limit(clients)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // One random password for the run: the load engine gives every client the template's.
    let password = credentials::generate_password()?;
    let (node, addr) = tokio::task::block_in_place(|| start_node(dir.path(), clients, &password))?;
    let pid = node.0.id();
    let node_before = proc_status_bytes(pid, "VmRSS:");
    let mut client = ClientConfig::new("127.0.0.1", addr.port(), "template");
    client.password = Some(password.into_bytes());
    let mut config = LoadConfig::new(client, clients);
    config.id_prefix = "evse-".to_owned();
    config.duration = duration;
    let report = load::run(config).await.map_err(|e| e.to_string())?;
    let node_peak = proc_status_bytes(pid, "VmHWM:");
    drop(node);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    line("ocpp_clients", clients as f64, "count");
    line("ocpp_clients_ready", report.ready as f64, "count");
    line(
        "ocpp_connect_failures",
        report.connect_failures as f64,
        "count",
    );
    line(
        "ocpp_request_failures",
        report.request_failures as f64,
        "count",
    );
    line("ocpp_ramp", report.ramp.as_secs_f64(), "s");
    line("ocpp_connect_p50", ms(report.connect.p50), "ms");
    line("ocpp_connect_p99", ms(report.connect.p99), "ms");
    line("ocpp_requests", report.request.count as f64, "count");
    line("ocpp_request_p50", ms(report.request.p50), "ms");
    line("ocpp_request_p99", ms(report.request.p99), "ms");
    line("ocpp_request_max", ms(report.request.max), "ms");
    let ready = report.ready.max(1) as f64;
    line(
        "ocpp_node_memory_per_connection",
        node_peak.saturating_sub(node_before) as f64 / ready,
        "bytes",
    );
    line(
        "ocpp_client_memory_per_connection",
        report.memory_per_connection as f64,
        "bytes",
    );
    if report.ready < clients {
        return Err(format!(
            "only {} of {clients} charge points got ready: {report}",
            report.ready
        ));
    }
    Ok(())
}
