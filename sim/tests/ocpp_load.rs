//! The `bench ocpp` engine against the real CSMS of gridvisor-transports.
//!
//! The CSMS runs in a child process (this test binary re-executed with
//! `GRIDVISOR_SIM_OCPP_CSMS=1`), so the engine's memory per connection is the client side
//! only, the CSMS reports its own, and 10,000 connections fit the file descriptor limit
//! (each process holds one end). N comes from `GRIDVISOR_SIM_OCPP_CLIENTS` (default 200) and
//! the steady state from `GRIDVISOR_SIM_OCPP_SECONDS` (default 3). Figures are printed; only
//! the functional outcome is asserted (everyone connected and booted, no failed request).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gridvisor_sim::ocpp::load::{self, rss_bytes, LoadConfig};
use gridvisor_transports::ocpp::client::ClientConfig;
use gridvisor_transports::ocpp::connection::serve_calls;
use gridvisor_transports::ocpp::server::{
    ListenerConfig, Security, Server, ServerConfig, ServerEvent,
};
use tokio::sync::mpsc;

use crate::ocpp_support;

/// Bound on waiting for a line from the CSMS child.
const CHILD_WAIT: Duration = Duration::from_secs(120);
const CHILD_ENV: &str = "GRIDVISOR_SIM_OCPP_CSMS";
const PASSWORD: &str = "load-secret";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The CSMS role: answers every charge point with the standard answers, prints its port,
/// then its RSS once `n` sessions are open, and exits when stdin closes.
async fn csms_child(n: usize) {
    let mut config = ServerConfig::new(vec![ListenerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        security: Security::BasicAuth(Arc::new(|_: &str, pw: &[u8]| pw == PASSWORD.as_bytes())),
    }]);
    config.max_connections = n + 16;
    let mut server = Server::bind(config).await.unwrap();
    println!("PORT {}", server.local_addrs()[0].port());
    let before = rss_bytes();
    let (eof_tx, mut eof) = mpsc::channel::<()>(1);
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|r| r > 0) {}
        let _ = eof_tx.blocking_send(());
    });
    let mut sessions = Vec::with_capacity(n);
    let mut open = 0usize;
    let mut reported = false;
    loop {
        tokio::select! {
            _ = eof.recv() => return,
            e = server.next_event() => match e {
                Some(ServerEvent::Connected(s)) => {
                    serve_calls(s.calls, |r| async move { Ok(ocpp_support::standard_answer(&r)) });
                    // The connection closes when its last handle drops: keep it.
                    sessions.push(s.connection);
                    open += 1;
                    if open == n && !reported {
                        reported = true;
                        let after = rss_bytes();
                        println!("RSS {before} {after} {}", after.saturating_sub(before) / n as u64);
                    }
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

/// The next line from the child starting with `prefix`, without it (bounded by CHILD_WAIT).
async fn next_line(lines: &mut mpsc::UnboundedReceiver<String>, prefix: &str) -> String {
    loop {
        let line = tokio::time::timeout(CHILD_WAIT, lines.recv())
            .await
            .expect("CSMS child line within the bound")
            .expect("CSMS child ended");
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_engine_against_the_real_csms() {
    let n = env_or("GRIDVISOR_SIM_OCPP_CLIENTS", 200) as usize;
    if std::env::var_os(CHILD_ENV).is_some() {
        csms_child(n).await;
        return;
    }
    // The test's full name in this binary (tests/integration.rs makes this file a module).
    let name = format!(
        "{}::load_engine_against_the_real_csms",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name.trim_start_matches("::"),
            "--nocapture",
            "--quiet",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the CSMS child");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let port: u16 = next_line(&mut lines, "PORT ").await.parse().unwrap();
    eprintln!("CSMS child on 127.0.0.1:{port}");

    let mut client = ClientConfig::new("127.0.0.1", port, "template");
    client.password = Some(PASSWORD.as_bytes().to_vec());
    let mut config = LoadConfig::new(client, n);
    config.duration = Duration::from_secs(env_or("GRIDVISOR_SIM_OCPP_SECONDS", 3));
    config.heartbeat_interval = Duration::from_secs(2);
    config.meter_interval = Duration::from_secs(1);
    config.connect_rate = env_or("GRIDVISOR_SIM_OCPP_RATE", 1000) as u32;
    let report = load::run(config).await.expect("valid load config");
    let server_rss = next_line(&mut lines, "RSS ").await;
    eprintln!("bench ocpp, N = {n}: {report}");
    eprintln!("CSMS child RSS (before, with N open, per connection) bytes: {server_rss}");

    drop(child.stdin.take());
    let _ = child.wait();
    assert_eq!(report.ready, n, "{report}");
    assert_eq!(report.connect_failures, 0, "{report}");
    assert_eq!(report.request_failures, 0, "{report}");
    // Boot + status per client, plus the steady state's heartbeats and meter values.
    assert!(report.request.count >= 2 * n as u64, "{report}");
    assert!(report.rss_ready >= report.rss_before);
    let _ = std::io::stderr().flush();
}
