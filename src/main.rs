//! The gridvisor binary: CLI and wiring.

mod alloc;
mod api_auth;
mod bench;
mod bench_ocpp;
mod bench_site;
mod chaos_cli;
mod cluster;
mod demo;
mod live;
mod ocpp_password;
mod run;
mod server;
mod stdout;
mod tree_cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use stdout::outln;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// gridvisor: an Erlang/OTP-style supervision runtime for vehicle-to-grid infrastructure.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format on stderr: `human` (default) or `json` (one object per line, for log
    /// collectors). `RUST_LOG` sets the level (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

/// How logs are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Coloured lines for a person.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node of a site: the grid API, the admin API and the supervision tree, until
    /// Ctrl-C. Without --config: the embedded demo site (configs/demo.toml).
    Run(RunArgs),
    /// Make a development CA, a certificate and key per node, and a cookie for a cluster
    /// (`gridvisor run --cluster`): start a cluster in one minute. Production clusters bring
    /// certificates from their own CA (CN or a SAN DNS name = the node's name).
    Certs {
        /// The folder to write into (created if needed).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The node names, comma-separated (DNS labels: they are the names the certificates
        /// carry).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Further names or addresses every node certificate carries (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make an API token for an identity: print it once, append its SHA-256 (never the token)
    /// to the tokens file that the topology's `[api] tokens` names.
    Token {
        /// The tokens file (created with mode 0600 if absent).
        #[arg(long)]
        file: std::path::PathBuf,
        /// The identity the token stands for (letters, digits, `.-_@`).
        #[arg(long)]
        identity: String,
        /// Its roles, comma-separated: controller, operator, admin.
        #[arg(long)]
        roles: String,
    },
    /// Add or rotate a charge point's OCPP password in a credentials file (`[ocpp]
    /// passwords`): read from stdin, or generated and printed once with --generate; the file
    /// keeps only a salted PBKDF2 hash and is written atomically with mode 0600.
    OcppPassword(ocpp_password::Args),
    /// Validate a topology file; errors name the file, line and field.
    CheckConfig {
        /// The TOML topology file.
        file: std::path::PathBuf,
    },
    /// A running node's supervision tree in the terminal (from its admin API), coloured by
    /// each segment's safe-state level.
    Tree {
        /// The node's admin API.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: std::net::SocketAddr,
        /// The node's grid API (for the segments' levels).
        #[arg(long, default_value = "127.0.0.1:9090")]
        grid: std::net::SocketAddr,
        /// Show only actors whose path contains this text (with their ancestors and
        /// descendants).
        #[arg(long)]
        path: Option<String>,
        /// Print the tree as JSON.
        #[arg(long)]
        json: bool,
        /// No colours.
        #[arg(long)]
        no_color: bool,
        /// Redraw every this many seconds until Ctrl-C.
        #[arg(long)]
        watch: Option<f64>,
    },
    /// Run a chaos scenario in process, deterministically: faults over time against the
    /// real supervision tree on simulated devices, invariants checked on every step. Exit 0
    /// only if every invariant held.
    Chaos {
        /// The scenario file (TOML; see configs/chaos/).
        file: std::path::PathBuf,
        /// The seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// A range of seeds: A..B (B excluded) or A..=B.
        #[arg(long)]
        seeds: Option<String>,
        /// Write a JSON and an HTML report per run into this folder.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A topology file (default: the embedded demo site).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The checkpoint directory.
    #[arg(long, default_value = "gridvisor-data")]
    data: std::path::PathBuf,
    /// Grid API address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    grid: std::net::SocketAddr,
    /// Admin API address (/metrics, /api/tree).
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin: std::net::SocketAddr,
    /// Stop by itself after this many seconds (smoke runs); default: until Ctrl-C.
    #[arg(long)]
    exit_after: Option<f64>,
    /// The CSMS's ws address for OCPP charge points (overrides the config's `[ocpp] listen`;
    /// the demo's default is 127.0.0.1:8080; port 0 picks a free port).
    #[arg(long)]
    ocpp: Option<std::net::SocketAddr>,
    /// Run as a node of a cluster: the cluster file (nodes, certificates, cookie, leases; see
    /// configs/cluster/cluster.toml). Its entry for --node gives the grid and admin addresses.
    #[arg(long, requires = "node")]
    cluster: Option<std::path::PathBuf>,
    /// This node's name in the cluster file.
    #[arg(long, requires = "cluster")]
    node: Option<String>,
    /// Serve the grid and admin APIs on a non-loopback address without authentication
    /// (no `[api.tls]` in the topology): anyone who reaches them can command the site. The
    /// node says so in its banner and in `gridvisor_api_insecure_no_auth`.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Run the demo as an OpenADR 2.0b VEN of this VTN (its Simple-HTTP base URL, e.g.
    /// http://127.0.0.1:8000/OpenADR2/Simple/2.0b); a topology file says so in [openadr].
    #[arg(long, conflicts_with = "config")]
    openadr_vtn: Option<String>,
    /// The demo's vehicles: drivers known by token (configs/demo-tokens.toml, the demo's
    /// authorization list) arrive at random free chargers over an hour, drawn from this seed
    /// (default 315, or GRIDVISOR_DEMO_ARRIVALS); `off`: the fixed bays of configs/demo.toml.
    #[arg(long, value_name = "SEED|off", conflicts_with = "config")]
    arrivals: Option<String>,
}

#[derive(Subcommand)]
enum Bench {
    /// The work of shared/bench/otp_baseline.escript through gridvisor's supervisor; prints
    /// `name value unit` lines with the escript's figure names.
    Supervision {
        /// Number of children of the dynamic supervisor.
        #[arg(long, default_value_t = 100_000)]
        children: usize,
        /// Tokio worker threads (default: one per core, as Erlang's schedulers).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// A whole simulated site on one node: memory per session, dispatch cycle, grid request
    /// to every device acknowledged (p50/p99), islanding to every device commanded.
    Site {
        /// Vehicle sessions (one charger each).
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Transformer segments.
        #[arg(long, default_value_t = 10)]
        segments: usize,
        /// Grid requests to time.
        #[arg(long, default_value_t = 50)]
        requests: usize,
        /// Percent of the chargers that hang (never answer) during the islanding run.
        #[arg(long, default_value_t = 10)]
        hung_pct: u8,
        /// The steady site's window for `idle_cpu_pct`, seconds.
        #[arg(long, default_value_t = bench_site::IDLE_WINDOW.as_secs_f64())]
        idle_seconds: f64,
        /// The longest any phase may take before the run fails with a summary, seconds.
        #[arg(long, default_value_t = bench_site::PHASE_LIMIT.as_secs_f64())]
        phase_limit_seconds: f64,
    },
    /// N concurrent OCPP charge points (boot, status, heartbeats, meter values) against a
    /// node in a child process: request latency, memory per connection on both sides.
    Ocpp {
        /// Charge points.
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Steady state (heartbeats and meter values) after every client is ready, seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

/// Raise this process's soft limit on open files to its hard limit (a CSMS holds one socket
/// per charge point); an error when `needed` descriptors would still not fit.
pub(crate) fn raise_fd_limit(needed: usize) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        ));
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(format!(
                "setrlimit(RLIMIT_NOFILE, {}): {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            ));
        }
    }
    // Room for the runtime, logs and the store besides the sockets.
    let wanted = needed as u64 + 256;
    if lim.rlim_cur < wanted {
        return Err(format!(
            "{needed} connections need about {wanted} open files; the limit is {} (raise it with `ulimit -Hn`)",
            lim.rlim_cur
        ));
    }
    Ok(())
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers {
        b.worker_threads(w.max(1));
    }
    b.enable_all().build()
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match gridvisor_actors::config::load(file) {
        Ok(t) => {
            let chargers: usize = t.segments().map(|(_, s)| s.chargers.len()).sum();
            outln!(
                "{}: ok: site {}, {} substations, {} segments, {chargers} chargers, {} vehicles",
                file.display(),
                t.site.id,
                t.substations.len(),
                t.segments().count(),
                t.vehicles.len()
            );
            for w in t.warnings() {
                outln!("{}: warning: {w}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: `info` and above by default, `RUST_LOG` overrides (e.g.
/// `RUST_LOG=gridvisor_actors=debug`). Colour only on a terminal, and never with `NO_COLOR`
/// set (<https://no-color.org>): a log file or a pipe gets plain text.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether logs are coloured: on a terminal, unless `NO_COLOR` is set to anything but "".
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // No subcommand: `run` with its defaults (the embedded demo site).
    let Some(command) = cli
        .command
        .or_else(|| Cli::parse_from(["gridvisor", "run"]).command)
    else {
        eprintln!("gridvisor: no command");
        return ExitCode::FAILURE;
    };
    let (workers, job): (Option<usize>, Box<dyn FnOnce() -> _>) = match command {
        Command::Run(a) => {
            let exit_after = match a.exit_after {
                Some(s) if !(s.is_finite() && s > 0.0) => {
                    eprintln!(
                        "gridvisor: --exit-after must be a positive number of seconds, not {s}"
                    );
                    return ExitCode::FAILURE;
                }
                s => s.map(std::time::Duration::from_secs_f64),
            };
            let o = run::RunOptions {
                config: a.config,
                data: a.data,
                grid: a.grid,
                admin: a.admin,
                exit_after,
                ocpp: a.ocpp,
                cluster: a.cluster.zip(a.node),
                insecure_no_auth: a.insecure_no_auth,
                openadr_vtn: a.openadr_vtn,
                demo_arrivals: a.arrivals,
            };
            (None, Box::new(move || tokio::spawn(run::run(o))))
        }
        Command::CheckConfig { file } => return check_config(&file),
        Command::Token {
            file,
            identity,
            roles,
        } => {
            return match api_auth::add_token(&file, &identity, &roles) {
                Ok(token) => {
                    outln!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gridvisor token: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::OcppPassword(a) => return ocpp_password::run(a),
        Command::Certs {
            out,
            nodes,
            hosts,
            force,
        } => {
            return match gridvisor_cluster::certs::write_dev_certs(&out, &nodes, &hosts, force) {
                Ok(paths) => {
                    for p in paths {
                        outln!("wrote {}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gridvisor certs: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Chaos {
            file,
            seed,
            seeds,
            report,
        } => {
            // Its own current-thread runtime per run, on a paused clock.
            return chaos_cli::chaos(chaos_cli::ChaosOptions {
                file,
                seed,
                seeds,
                report,
            });
        }
        Command::Tree {
            admin,
            grid,
            path,
            json,
            no_color,
            watch,
        } => {
            let watch = match watch {
                Some(s) if !(s.is_finite() && s >= 0.1) => {
                    eprintln!("gridvisor: --watch must be at least 0.1 seconds, not {s}");
                    return ExitCode::FAILURE;
                }
                s => s.map(std::time::Duration::from_secs_f64),
            };
            let o = tree_cli::TreeOptions {
                admin,
                grid,
                path,
                json,
                no_color,
                watch,
            };
            (Some(1), Box::new(move || tokio::spawn(tree_cli::tree(o))))
        }
        Command::Bench {
            which:
                Bench::Site {
                    sessions,
                    segments,
                    requests,
                    hung_pct,
                    idle_seconds,
                    phase_limit_seconds,
                },
        } => {
            let bench = bench_site::SiteBench {
                sessions,
                segments,
                requests,
                hung_pct,
                idle_seconds,
                phase_limit_seconds,
            };
            (
                None,
                Box::new(move || tokio::spawn(bench_site::site(bench))),
            )
        }
        Command::Bench {
            which: Bench::Ocpp { clients, seconds },
        } => (
            None,
            Box::new(move || tokio::spawn(bench_ocpp::ocpp(clients, seconds))),
        ),
        Command::Bench {
            which: Bench::Supervision { children, workers },
        } => (
            workers,
            Box::new(move || tokio::spawn(bench::supervision(children))),
        ),
    };
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gridvisor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The job runs as a task on the runtime's workers (not on the main thread), so that
    // messages between it and actors are worker-to-worker, as between Erlang processes.
    let result = rt.block_on(async move { job().await });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("gridvisor: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("gridvisor: task failed: {e}");
            ExitCode::FAILURE
        }
    }
}
