//! The engine of `gridvisor bench ocpp`: N concurrent charge points against one CSMS, each
//! connecting, booting, then sending heartbeats and meter values; measures request latency,
//! connect failures and this process's memory per connection.
//!
//! How it runs: clients connect at most [`LoadConfig::connect_rate`] per second with at most
//! [`LoadConfig::max_connecting`] handshakes in flight; each boots and sends a
//! StatusNotification, then waits. Once every client is ready or has failed, the resident set
//! size is read (`VmRSS` of `/proc/self/status`) and compared with the one before the first
//! connect: that difference over the connected clients is the memory per connection (of this
//! process: when the CSMS runs in the same process, both ends count). Then every client sends
//! heartbeats and meter values for [`LoadConfig::duration`], and all close.
//!
//! Invariants: N ≤ [`MAX_LOAD_CLIENTS`], duration ≤ [`MAX_LOAD_DURATION`]; each client has
//! one request in flight at a time (OCPP-J), so at most N requests are in flight; each request
//! is bounded by the client's CALL timeout and each connect by its connect timeout, so `run`
//! ends within ramp + connect timeout + call timeout + duration + call timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gridvisor_transports::ocpp::client::{connect, ClientConfig};
use gridvisor_transports::ocpp::connection::Connection;
use gridvisor_transports::ocpp::messages::*;
use serde_json::Map;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::reports;

/// Most clients one run may start.
pub const MAX_LOAD_CLIENTS: usize = 20_000;
/// Longest steady-state duration.
pub const MAX_LOAD_DURATION: Duration = Duration::from_secs(3600);
/// Highest connect rate accepted, per second.
pub const MAX_CONNECT_RATE: u32 = 100_000;
/// Default connect rate, per second.
pub const DEFAULT_CONNECT_RATE: u32 = 500;
/// Default handshakes in flight.
pub const DEFAULT_MAX_CONNECTING: usize = 256;
/// Default steady-state duration.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// Default heartbeat interval in the steady state.
pub const DEFAULT_LOAD_HEARTBEAT: Duration = Duration::from_secs(10);
/// Default meter value interval in the steady state.
pub const DEFAULT_LOAD_METER: Duration = Duration::from_secs(5);
/// Longest charge point id prefix (ids must stay within OCPP's 48 characters).
pub const MAX_ID_PREFIX_LEN: usize = 36;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The connection template: host, port, TLS, password, versions, limits. The charge point
    /// id is replaced by `{id_prefix}{index}`.
    pub client: ClientConfig,
    /// Number of charge points (≤ [`MAX_LOAD_CLIENTS`]).
    pub clients: usize,
    /// Id prefix (≤ [`MAX_ID_PREFIX_LEN`] characters).
    pub id_prefix: String,
    /// Connects started per second ([`DEFAULT_CONNECT_RATE`], ≤ [`MAX_CONNECT_RATE`]).
    pub connect_rate: u32,
    /// Handshakes in flight at once ([`DEFAULT_MAX_CONNECTING`]).
    pub max_connecting: usize,
    /// Steady state after every client is ready ([`DEFAULT_DURATION`]).
    pub duration: Duration,
    /// Heartbeat interval in the steady state ([`DEFAULT_LOAD_HEARTBEAT`]).
    pub heartbeat_interval: Duration,
    /// Meter value interval in the steady state ([`DEFAULT_LOAD_METER`]).
    pub meter_interval: Duration,
}

impl LoadConfig {
    /// `clients` charge points against `client`'s CSMS with default pacing.
    pub fn new(client: ClientConfig, clients: usize) -> Self {
        LoadConfig {
            client,
            clients,
            id_prefix: "LOAD-".to_owned(),
            connect_rate: DEFAULT_CONNECT_RATE,
            max_connecting: DEFAULT_MAX_CONNECTING,
            duration: DEFAULT_DURATION,
            heartbeat_interval: DEFAULT_LOAD_HEARTBEAT,
            meter_interval: DEFAULT_LOAD_METER,
        }
    }
}

/// Why a run could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// N is 0 or above [`MAX_LOAD_CLIENTS`].
    #[error("clients = {0} must be in 1..={MAX_LOAD_CLIENTS}")]
    Clients(usize),
    /// The duration is above [`MAX_LOAD_DURATION`].
    #[error("duration {0:?} exceeds {MAX_LOAD_DURATION:?}")]
    Duration(Duration),
    /// The connect rate is 0 or above [`MAX_CONNECT_RATE`].
    #[error("connect_rate = {0}/s must be in 1..={MAX_CONNECT_RATE}")]
    ConnectRate(u32),
    /// No handshake may be in flight.
    #[error("max_connecting must be >= 1")]
    MaxConnecting,
    /// An interval is zero.
    #[error("{0} must be non-zero")]
    Interval(&'static str),
    /// The id prefix is too long.
    #[error("id_prefix has {0} characters, more than {MAX_ID_PREFIX_LEN}")]
    IdPrefix(usize),
}

/// Latency percentiles of one kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Clients started.
    pub clients: usize,
    /// Clients connected and booted.
    pub ready: usize,
    /// Connects that failed (refused, timed out, TLS).
    pub connect_failures: u64,
    /// Requests that failed (CALLERROR, timeout, disconnect).
    pub request_failures: u64,
    /// Connect (TCP + TLS + upgrade) latency.
    pub connect: Latency,
    /// Request latency (BootNotification, StatusNotification, Heartbeat, MeterValues).
    pub request: Latency,
    /// Time from the first connect until every client was ready or failed.
    pub ramp: Duration,
    /// Resident set size before the first connect, bytes.
    pub rss_before: u64,
    /// Resident set size with every client ready, bytes.
    pub rss_ready: u64,
    /// (rss_ready − rss_before) / ready, bytes.
    pub memory_per_connection: u64,
    /// The whole run.
    pub elapsed: Duration,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{}/{} ready in {:.1} s, {} connect failures, {} request failures; \
             connect p50 {:.2} ms p99 {:.2} ms; request ({}) p50 {:.2} ms p99 {:.2} ms max {:.2} ms; \
             RSS {:.1} -> {:.1} MiB, {:.1} KiB per connection",
            self.ready,
            self.clients,
            self.ramp.as_secs_f64(),
            self.connect_failures,
            self.request_failures,
            ms(self.connect.p50),
            ms(self.connect.p99),
            self.request.count,
            ms(self.request.p50),
            ms(self.request.p99),
            ms(self.request.max),
            self.rss_before as f64 / 1048576.0,
            self.rss_ready as f64 / 1048576.0,
            self.memory_per_connection as f64 / 1024.0
        )
    }
}

/// Log-scale histogram buckets: each is 5 % wider than the last, from 1 µs.
const BUCKET_GROWTH: f64 = 1.05;
/// Buckets: 1.05^500 µs ≈ 39,000 s covers any bounded request.
const BUCKETS: usize = 500;

/// A lock-free latency histogram (5 % resolution).
struct Histogram {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }

    fn record(&self, d: Duration) {
        let us = d.as_micros().max(1) as f64;
        let i = ((us.ln() / BUCKET_GROWTH.ln()) as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.max_us
            .fetch_max(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn latency(&self) -> Latency {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let at = |q: f64| -> Duration {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // The bucket's upper edge.
                    return Duration::from_micros(BUCKET_GROWTH.powi(i as i32 + 1) as u64);
                }
            }
            Duration::ZERO
        };
        if count == 0 {
            return Latency::default();
        }
        Latency {
            count,
            p50: at(0.5),
            p99: at(0.99),
            max: Duration::from_micros(self.max_us.load(Ordering::Relaxed)),
        }
    }
}

/// This process's resident set size in bytes (`VmRSS`), 0 where /proc is missing.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

struct Shared {
    connect: Histogram,
    request: Histogram,
    connect_failures: AtomicU64,
    request_failures: AtomicU64,
}

impl Shared {
    async fn timed<R: OcppRequest>(&self, conn: &Connection, req: R) -> bool {
        let t = Instant::now();
        match conn.call(req).await {
            Ok(_) => {
                self.request.record(t.elapsed());
                true
            }
            Err(_) => {
                self.request_failures.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

fn check(config: &LoadConfig) -> Result<(), LoadError> {
    if config.clients == 0 || config.clients > MAX_LOAD_CLIENTS {
        return Err(LoadError::Clients(config.clients));
    }
    if config.duration > MAX_LOAD_DURATION {
        return Err(LoadError::Duration(config.duration));
    }
    if config.connect_rate == 0 || config.connect_rate > MAX_CONNECT_RATE {
        return Err(LoadError::ConnectRate(config.connect_rate));
    }
    if config.max_connecting == 0 {
        return Err(LoadError::MaxConnecting);
    }
    if config.heartbeat_interval.is_zero() {
        return Err(LoadError::Interval("heartbeat_interval"));
    }
    if config.meter_interval.is_zero() {
        return Err(LoadError::Interval("meter_interval"));
    }
    let len = config.id_prefix.chars().count();
    if len > MAX_ID_PREFIX_LEN {
        return Err(LoadError::IdPrefix(len));
    }
    Ok(())
}

/// Runs the load and reports what it measured.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    check(&config)?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        connect: Histogram::new(),
        request: Histogram::new(),
        connect_failures: AtomicU64::new(0),
        request_failures: AtomicU64::new(0),
    });
    let rss_before = rss_bytes();
    let connecting = Arc::new(Semaphore::new(config.max_connecting));
    // Ready clients report here; the steady state starts when `go` is set, ends at `stop`.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(config.clients);
    let (go_tx, go_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let pace = Duration::from_secs(1) / config.connect_rate;
    let mut next = Instant::now();
    let mut tasks = Vec::with_capacity(config.clients);
    for i in 0..config.clients {
        tokio::time::sleep_until(next).await;
        next += pace;
        let mut client = config.client.clone();
        client.charge_point_id = format!("{}{i}", config.id_prefix);
        let permit = Arc::clone(&connecting).acquire_owned().await;
        let shared = Arc::clone(&shared);
        let ready = ready_tx.clone();
        let (go, stop) = (go_rx.clone(), stop_rx.clone());
        let (hb, mv) = (config.heartbeat_interval, config.meter_interval);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let conn = match connect(&client).await {
                Ok((conn, _calls)) => {
                    shared.connect.record(t.elapsed());
                    conn
                }
                Err(_) => {
                    shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    let _ = ready.send(false).await;
                    return;
                }
            };
            drop(permit);
            let booted = shared
                .timed(&conn, reports::boot(BootReason::PowerUp))
                .await
                && shared.timed(&conn, available(1)).await;
            let _ = ready.send(booted).await;
            if booted {
                steady(&shared, &conn, go, stop, hb, mv, i as f64).await;
            }
            conn.close();
        }));
    }
    drop(ready_tx);
    // Exactly one report per client; count them (the senders live on into the steady state,
    // so the channel does not close here). `None` only if every client task is gone.
    let mut ready = 0;
    for _ in 0..config.clients {
        match ready_rx.recv().await {
            Some(ok) => ready += usize::from(ok),
            None => break,
        }
    }
    let ramp = started.elapsed();
    let rss_ready = rss_bytes();
    let _ = go_tx.send(true);
    tokio::time::sleep(config.duration).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(LoadReport {
        clients: config.clients,
        ready,
        connect_failures: shared.connect_failures.load(Ordering::Relaxed),
        request_failures: shared.request_failures.load(Ordering::Relaxed),
        connect: shared.connect.latency(),
        request: shared.request.latency(),
        ramp,
        rss_before,
        rss_ready,
        memory_per_connection: rss_ready.saturating_sub(rss_before) / ready.max(1) as u64,
        elapsed: started.elapsed(),
    })
}

fn available(evse_id: i32) -> StatusNotificationRequest {
    StatusNotificationRequest {
        timestamp: DateTime::now(),
        connector_status: ConnectorStatus::Available,
        evse_id,
        connector_id: 1,
        extra: Map::new(),
    }
}

fn meter(register_wh: f64) -> MeterValuesRequest {
    MeterValuesRequest {
        evse_id: 1,
        meter_value: vec![MeterValue {
            timestamp: DateTime::now(),
            sampled_value: vec![SampledValue {
                value: register_wh,
                measurand: Some(Measurand::EnergyActiveImportRegister),
                context: Some(ReadingContext::SamplePeriodic),
                phase: None,
                location: None,
                unit_of_measure: None,
                extra: Map::new(),
            }],
            extra: Map::new(),
        }],
        extra: Map::new(),
    }
}

/// Heartbeats and meter values until `stop`, starting at `go`; the first of each is spread
/// over its interval by the client index so the CSMS does not see N requests at once.
async fn steady(
    shared: &Shared,
    conn: &Connection,
    mut go: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    hb: Duration,
    mv: Duration,
    index: f64,
) {
    if go.wait_for(|g| *g).await.is_err() {
        return;
    }
    let start = Instant::now();
    let spread = |d: Duration| d.mul_f64((index * 0.618_033_988_7).fract());
    let mut next_hb = start + spread(hb);
    let mut next_mv = start + spread(mv);
    let mut register_wh = 0.0;
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
            _ = tokio::time::sleep_until(next_hb) => {
                shared.timed(conn, HeartbeatRequest::default()).await;
                next_hb += hb;
            }
            _ = tokio::time::sleep_until(next_mv) => {
                register_wh += 100.0;
                shared.timed(conn, meter(register_wh)).await;
                next_mv += mv;
            }
        }
        if conn.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        let base = LoadConfig::new(ClientConfig::new("127.0.0.1", 1, "x"), 10);
        assert!(check(&base).is_ok());
        let mut c = base.clone();
        c.clients = MAX_LOAD_CLIENTS + 1;
        assert_eq!(check(&c), Err(LoadError::Clients(MAX_LOAD_CLIENTS + 1)));
        let mut c = base.clone();
        c.connect_rate = 0;
        assert_eq!(check(&c), Err(LoadError::ConnectRate(0)));
        let mut c = base;
        c.duration = MAX_LOAD_DURATION * 2;
        assert!(matches!(check(&c), Err(LoadError::Duration(_))));
    }

    #[test]
    fn histogram_percentiles() {
        let h = Histogram::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let l = h.latency();
        assert_eq!(l.count, 100);
        let within = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 / ms - 1.0).abs() < 0.06;
        assert!(within(l.p50, 50.0), "{:?}", l.p50);
        assert!(within(l.p99, 99.0), "{:?}", l.p99);
        assert_eq!(l.max, Duration::from_millis(100));
        assert_eq!(Histogram::new().latency(), Latency::default());
    }

    #[test]
    fn reads_rss() {
        assert!(rss_bytes() > 0);
    }
}
