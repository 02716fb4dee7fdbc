//! `gridvisor run`: a node of a site (the embedded demo site without `--config`), with the
//! grid API and the admin API, until Ctrl-C (or SIGTERM); then an ordered stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gridvisor_actors::checkpoint::{CheckpointStore, StoreLimits};
use gridvisor_actors::clock::Clock;
use gridvisor_actors::config;
use gridvisor_actors::config::Granularity;
use gridvisor_actors::runtime::{Node, NodeOptions};

use crate::demo::{DemoSite, DEMO_CONNECT_LIMIT};

use crate::api_auth::audit::AuditLog;
use crate::api_auth::middleware::{audit_router, Guard, Mode};
use crate::api_auth::serve::{self, bounded, HttpLimits};
use crate::api_auth::setup::{ApiMetrics, ApiSecurity};
use crate::api_auth::Api as ApiKind;
use crate::server;
use crate::stdout::outln;

/// How often `run` checks that the tree still runs.
const TREE_WATCH: Duration = Duration::from_millis(500);

/// Options of `gridvisor run`.
pub struct RunOptions {
    /// A topology file; None: the embedded demo site.
    pub config: Option<PathBuf>,
    /// Where the checkpoints live.
    pub data: PathBuf,
    /// Grid API address.
    pub grid: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Stop by itself after this long (smoke runs).
    pub exit_after: Option<Duration>,
    /// The CSMS's ws address (overrides `[ocpp] listen`; the demo's default is
    /// [`DEMO_OCPP_LISTEN`]).
    pub ocpp: Option<SocketAddr>,
    /// A cluster file and this node's name in it: run as a node of that cluster.
    pub cluster: Option<(PathBuf, String)>,
    /// Serve the APIs off loopback without authentication (announced in the banner and in
    /// `gridvisor_api_insecure_no_auth`).
    pub insecure_no_auth: bool,
    /// The demo as an OpenADR VEN of this VTN (`--openadr-vtn`; see
    /// [`crate::demo::demo_openadr`]).
    pub openadr_vtn: Option<String>,
    /// The demo's arrivals (`--arrivals`: a seed or `off`; see
    /// [`crate::demo::arrivals_mode`]).
    pub demo_arrivals: Option<String>,
}

/// Where the demo's CSMS listens unless `--ocpp` says otherwise (OCPP's usual ws port).
pub const DEMO_OCPP_LISTEN: &str = "127.0.0.1:8080";
/// How often the demo looks whether every charge point is connected, at start.
const CONNECT_POLL: Duration = Duration::from_millis(20);

async fn stop_signal(exit_after: Option<Duration>) -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let timer = async {
        match exit_after {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => "Ctrl-C",
        _ = term => "SIGTERM",
        _ = timer => "--exit-after",
    }
}

/// How often the demo prints its devices' state.
const DEMO_STATUS_EVERY: Duration = Duration::from_secs(10);

/// One line per segment: its level and metered power (read over Modbus), its chargers online
/// over OCPP, and the Modbus requests served.
fn print_status(node: &Node, reporter: &crate::demo::Reporter) {
    let hub = node.shared.devices.ocpp.clone();
    let served = reporter.modbus_requests();
    for seg in node.segments() {
        let online = node.shared.segments.get(&seg.id).map_or(0, |s| {
            s.config
                .chargers
                .iter()
                .filter(|c| hub.as_ref().is_some_and(|h| h.is_connected(&c.id)))
                .count()
        });
        outln!(
            "  {:<6} {:<12} meter {:>7.1} kW (Modbus)  chargers {online}/{} online (OCPP)  sessions {}",
            seg.id,
            format!("{:?}", seg.level),
            seg.telemetry.metered_kw,
            node.shared.segments.get(&seg.id).map_or(0, |s| s.config.chargers.len()),
            seg.sessions,
        );
    }
    outln!("  modbus requests served by the simulated devices: {served}");
}

/// The banner's line on the clock source in force (`[safety.clock]`).
fn clock_banner(node: &Node) -> String {
    use gridvisor_actors::config::ClockSourceKind;
    let c = &node.shared.time_source.config;
    for w in node.shared.topology.warnings() {
        tracing::warn!("{w}");
    }
    match c.source {
        ClockSourceKind::Ptp4l => format!(
            "source ptp4l at {} (poll {} ms, stale after {} ms{})",
            c.path.display(),
            c.poll_ms,
            c.stale_ms,
            if c.accept_uncalibrated {
                ", UNCALIBRATED accepted"
            } else {
                ""
            }
        ),
        ClockSourceKind::None => {
            "source none: the PTP rows of the safe-state ladder are OFF".into()
        }
        ClockSourceKind::Simulated => "source simulated (no real PTP clock is read)".into(),
    }
}

/// The banner's lines on who may call the APIs.
fn auth_banner(
    security: &ApiSecurity,
    api: &config::Api,
    grid: SocketAddr,
    admin: SocketAddr,
) -> Vec<String> {
    let kill = if api.actor_kill {
        "actor kill on (rate-limited)"
    } else {
        "actor kill off"
    };
    match (&security.mode, security.insecure) {
        (Mode::Enforced(c), _) => vec![format!(
            "  auth       TLS; {}{}; roles controller, operator, admin ({c}); {kill}",
            if api.tokens.is_some() { "bearer tokens" } else { "" },
            match (api.tokens.is_some(), api.tls.as_ref().and_then(|t| t.client_ca.as_ref())) {
                (true, Some(_)) => " or client certificates",
                (false, Some(_)) => "client certificates",
                _ => "",
            }
        )],
        (Mode::Open, true) => vec![
            "  !!!!!!!!!! --insecure-no-auth !!!!!!!!!!".to_owned(),
            format!(
                "  auth       NONE, OFF LOOPBACK: anyone who reaches {grid} or {admin} can command \
                 the site and kill actors (gridvisor_api_insecure_no_auth 1); {kill}"
            ),
        ],
        (Mode::Open, false) => vec![format!(
            "  auth       none (loopback only): every request runs as the identity {:?} with every role; {kill}",
            crate::api_auth::LOCAL_IDENTITY
        )],
    }
}

/// Run a node until it is told to stop.
pub async fn run(mut o: RunOptions) -> Result<(), String> {
    // One socket per charge point: take every file descriptor the system allows.
    if let Err(e) = crate::raise_fd_limit(0) {
        tracing::warn!(error = %e, "file descriptor limit");
    }
    let cluster_config = match &o.cluster {
        Some((file, node)) => {
            if o.config.is_none() {
                return Err(
                    "--cluster needs --config: the site every node of the cluster runs".into(),
                );
            }
            let c = crate::cluster::config::load(file, node)?;
            // The cluster file gives each node its addresses.
            o.grid = c.me.grid;
            o.admin = c.me.admin;
            Some(c)
        }
        None => None,
    };
    let mut topology = match &o.config {
        Some(path) => config::load(path).map_err(|e| e.to_string())?,
        None => config::demo(),
    };
    if let Some(url) = &o.openadr_vtn {
        topology.openadr = Some(crate::demo::demo_openadr(url, &o.data)?);
    }
    // The demo's drivers arrive by token (its authorization list), unless `--arrivals off`.
    let demo_arrivals = match &o.config {
        None => {
            let env = std::env::var(crate::demo::DEMO_ARRIVALS_ENV).ok();
            crate::demo::arrivals_mode(o.demo_arrivals.as_deref(), env.as_deref())?
        }
        Some(_) => None,
    };
    if demo_arrivals.is_some() {
        topology.authorization = Some(crate::demo::demo_authorization(&o.data)?);
    }
    // The demo: its inverters and meters are Modbus TCP servers on loopback, its chargers
    // OCPP charge points (started once the CSMS listens).
    let mut demo = match &o.config {
        None => {
            let listen = match o.ocpp {
                Some(a) => a,
                None => DEMO_OCPP_LISTEN
                    .parse()
                    .map_err(|e| format!("{DEMO_OCPP_LISTEN}: {e}"))?,
            };
            Some(DemoSite::start_devices(&mut topology, listen).await?)
        }
        Some(path) => {
            if let Some(addr) = o.ocpp {
                let ocpp = topology.ocpp.as_mut().ok_or_else(|| {
                    format!("--ocpp {addr}: {} has no [ocpp] table", path.display())
                })?;
                ocpp.listen = Some(addr);
            }
            None
        }
    };
    let topology = Arc::new(topology);
    let security = crate::api_auth::setup::setup(
        &topology.api,
        &[("grid API", o.grid), ("admin API", o.admin)],
        o.insecure_no_auth,
    )?;
    std::fs::create_dir_all(&o.data)
        .map_err(|e| format!("cannot create the data directory {}: {e}", o.data.display()))?;
    let store = CheckpointStore::open(&o.data.join("checkpoints.redb"), StoreLimits::default())
        .map_err(|e| e.to_string())?;
    let audit = AuditLog::open(&o.data.join("audit.redb"))?;
    let grid_listener = server::bind("grid API", o.grid).await?;
    let admin_listener = server::bind("admin API", o.admin).await?;
    let grid_addr = grid_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let registry = prometheus::Registry::new();
    let api_metrics = ApiMetrics::register(&registry, security.insecure)?;
    let node = Node::start(
        topology.clone(),
        store.clone(),
        Clock::tokio(),
        registry,
        NodeOptions {
            per_session_metrics: topology.metrics.sessions == Granularity::PerActor,
            // A cluster node drives only what the committed shard map and its lease give it.
            segments: cluster_config.as_ref().map(|_| Default::default()),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let node = Arc::new(node);
    api_metrics.set_node(&node);
    if let Some(demo) = demo.as_mut() {
        let csms = node
            .ocpp_addr()
            .ok_or("the demo's CSMS did not report its address")?;
        demo.start_chargers(&topology, csms, demo_arrivals)?;
        // Show the site connected, not half-way: wait (bounded) for every charge point.
        let hub = node.shared.devices.ocpp.clone();
        let connected = |id: &str| hub.as_ref().is_some_and(|h| h.is_connected(id));
        let started = std::time::Instant::now();
        loop {
            let (n, all) = demo.status(connected).chargers_connected;
            if n == all || started.elapsed() > DEMO_CONNECT_LIMIT {
                break;
            }
            tokio::time::sleep(CONNECT_POLL).await;
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = HttpLimits::default();
    let serve = |what: &'static str, listener: tokio::net::TcpListener, router: axum::Router| {
        let (rx, tls) = (stop_rx.clone(), security.tls.clone());
        let router = bounded(router, &limits);
        tokio::spawn(async move { serve::serve(what, listener, router, tls, limits, rx).await })
    };
    let cluster = match cluster_config {
        Some(c) => Some(crate::cluster::Cluster::start(c, node.clone(), &store, &o.data).await?),
        None => None,
    };
    let (grid_router, admin_router) = (
        server::grid_api(node.clone()).merge(audit_router(audit.clone())),
        server::admin_api(
            node.clone(),
            stop_rx.clone(),
            server::KillPolicy::new(topology.api.actor_kill),
        ),
    );
    let guards = (
        Guard::new(ApiKind::Grid, security.mode.clone(), audit.clone()),
        Guard::new(ApiKind::Admin, security.mode.clone(), audit.clone()),
    );
    let (grid_router, admin_router) = match &cluster {
        Some(c) => {
            crate::cluster::route::routers(c, grid_router, admin_router, (&guards.0, &guards.1))
        }
        None => (guards.0.layer(grid_router), guards.1.layer(admin_router)),
    };
    let grid = serve("grid API", grid_listener, grid_router);
    let admin = serve("admin API", admin_listener, admin_router);
    if let Some(c) = &cluster {
        outln!(
            "  cluster    node {} of {} (cluster listener {})",
            c.me(),
            c.nodes().join(", "),
            c.local_addr()
                .map_or_else(|| "none".to_string(), |a| a.to_string())
        );
    }

    let sessions = topology.vehicles.len();
    let chargers: usize = topology.segments().map(|(_, s)| s.chargers.len()).sum();
    outln!(
        "gridvisor: site {} running: {} segments, {chargers} chargers, {sessions} vehicles",
        topology.site.id,
        topology.segments().count(),
    );
    outln!("  clock      {}", clock_banner(&node));
    if let Some(hub) = node.shared.devices.ocpp.clone() {
        let connected = hub.connected_count();
        let (ws, wss) = hub.listeners();
        if let Some(addr) = ws {
            outln!("  ocpp       ws://{addr}/ocpp/{{chargerId}}   {connected} of {chargers} chargers connected over OCPP");
        }
        if let Some(addr) = wss {
            outln!("  ocpp       wss://{addr}/ocpp/{{chargerId}}  (TLS)");
        }
    }
    if let Some(demo) = &demo {
        let status = demo.status(|_| false);
        for (id, addr) in status.inverters.iter().chain(status.meters.iter()) {
            outln!("  modbus     {id:<10} SunSpec over Modbus TCP at {addr}");
        }
    }
    for line in auth_banner(&security, &topology.api, grid_addr, admin_addr) {
        outln!("{line}");
    }
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    outln!("  grid API   {scheme}://{grid_addr}/api/v1/segments   (OpenAPI: /api/v1/openapi.yaml)");
    outln!("  live view  {scheme}://{admin_addr}/   (the tree, segments and events in a browser)");
    outln!("  metrics    {scheme}://{admin_addr}/metrics");
    outln!("  tree       {scheme}://{admin_addr}/api/tree");
    outln!(
        "  checkpoints in {}; audit log {}",
        o.data.display(),
        o.data.join("audit.redb").display()
    );
    outln!("try:");
    outln!(
        "  curl -s -X POST http://{grid_addr}/api/v1/dispatch -H 'content-type: application/json' \\\n       -d '{{\"id\":\"req-1\",\"scope\":\"site\",\"target_kw\":-40,\"duration_s\":600}}'"
    );
    outln!("  curl -s -X POST http://{grid_addr}/api/v1/keepalive");
    outln!(
        "  curl -s http://{grid_addr}/api/v1/sessions/{}",
        topology
            .vehicles
            .first()
            .map(|v| v.id.as_str())
            .unwrap_or("ev-1")
    );
    outln!("Ctrl-C stops the tree in order.");

    // The tree can give up on its own (its root past its restart intensity): then the
    // process ends with an error rather than serve a dead node.
    let watched = node.clone();
    let tree_down = async move {
        while watched.running() {
            tokio::time::sleep(TREE_WATCH).await;
        }
    };
    // The demo says how its devices are doing, now and then.
    let status = demo.as_ref().map(|d| {
        let (node, reporter) = (node.clone(), d.reporter());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(DEMO_STATUS_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                print_status(&node, &reporter);
            }
        })
    });
    let why = tokio::select! {
        why = stop_signal(o.exit_after) => why,
        _ = tree_down => {
            let _ = stop_tx.send(true);
            return Err("the supervision tree gave up (see the log above)".into());
        }
    };
    if let Some(s) = status {
        s.abort();
    }
    outln!("gridvisor: {why}: stopping the APIs, then the tree in order");
    let _ = stop_tx.send(true);
    for (name, task) in [("grid API", grid), ("admin API", admin)] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("gridvisor: {name} stopped with an error: {e}"),
            Err(e) => eprintln!("gridvisor: {name} task failed: {e}"),
        }
    }
    if let Some(c) = &cluster {
        // Its segments through ChargeOnly first, then out of the group.
        c.shutdown().await;
    }
    node.shutdown().await;
    if let Some(demo) = demo {
        demo.stop();
    }
    store.close();
    outln!("gridvisor: stopped; every acknowledged setpoint is in the checkpoints");
    Ok(())
}
