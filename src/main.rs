//! The gridvisor binary: CLI and wiring.

mod alloc;
mod bench;
mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// gridvisor: an Erlang/OTP-style supervision runtime for vehicle-to-grid infrastructure.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. Without a config: the demonstration tree (crashes and restarts children,
    /// prints the tree, shuts down in order).
    Run,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
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
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers {
        b.worker_threads(w.max(1));
    }
    b.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (workers, job): (Option<usize>, Box<dyn FnOnce() -> _>) =
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => (None, Box::new(|| tokio::spawn(demo::run()))),
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
