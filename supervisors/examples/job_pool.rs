//! A pool of workers whose jobs sometimes crash, kept alive by a dynamic supervisor.
//!
//! Nothing here knows about energy. A dispatcher hands numbered jobs to the workers of a
//! `simple_one_for_one` pool by their stable paths (`pool/worker-0` …) through the registry.
//! A "poison" job makes its worker fail; the pool restarts that worker after a short backoff
//! and the dispatcher's next send reaches the new incarnation, because the registry always
//! resolves a path to the newest one. Every job but the poison ones is answered exactly once.
//!
//! Run it with `cargo run -p gridvisor-supervisors --example job_pool`. It exits non-zero if
//! anything went otherwise than described above, so CI runs it as a check.

use std::time::Duration;

use gridvisor_supervisors::prelude::*;
use gridvisor_supervisors::TreeContext;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// How many workers the pool holds.
const WORKERS: usize = 4;
/// How many jobs the dispatcher hands out.
const JOBS: u64 = 40;
/// Every job whose number is a multiple of this crashes its worker.
const POISON_EVERY: u64 = 7;
/// How long a send may wait for a worker that is restarting.
const SEND_LIMIT: Duration = Duration::from_secs(5);

/// A job: a number to square, and where to send the answer.
struct Job {
    n: u64,
    reply: RpcReplyPort<u64>,
}

/// A worker squares numbers, and fails on poison.
struct Worker;

impl Actor for Worker {
    type Msg = Job;
    type State = usize;
    type Arguments = usize;

    async fn pre_start(&self, _: ActorRef<Job>, index: usize) -> Result<usize, ActorProcessingErr> {
        Ok(index)
    }

    async fn handle(
        &self,
        _: ActorRef<Job>,
        job: Job,
        _index: &mut usize,
    ) -> Result<(), ActorProcessingErr> {
        if job.n % POISON_EVERY == 0 {
            // Dropping the reply port tells the caller that this job was lost with its worker.
            return Err(format!("job {} is poison", job.n).into());
        }
        let _ = job.reply.send(job.n * job.n);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tree = TreeContext {
        registry: Some(Registry::new()),
        ..TreeContext::default()
    };
    let registry = tree.registry.clone().expect("set above");
    let worker = ChildSpec::worker("worker", |ctx: ChildContext, index: usize| async move {
        ctx.spawn(Worker, index).await
    })
    .backoff(Backoff::exponential(
        Duration::from_millis(10),
        Duration::from_millis(200),
    ));
    // Room for every poison job's restart: this pool expects its workers to crash.
    let config = SupervisorConfig::new("pool", Strategy::SimpleOneForOne)
        .intensity(JOBS as u32, Duration::from_secs(10))
        .tree(tree);
    let pool = Supervisor::start_dynamic(config, worker).await?;
    for i in 0..WORKERS {
        pool.start_child_named(&format!("worker-{i}"), i).await?;
    }

    let (answered, lost) = dispatch(&registry).await?;
    let restarts: u32 = pool
        .which_children()
        .await?
        .iter()
        .map(|c| c.restarts)
        .sum();
    println!("jobs answered: {answered}, lost with a crashed worker: {lost}, restarts: {restarts}");
    pool.shutdown().await;

    let poison = JOBS.div_ceil(POISON_EVERY); // 0, 7, 14, … are poison
    if lost != poison || answered != JOBS - poison || u64::from(restarts) != poison {
        return Err(format!(
            "expected {poison} lost jobs and as many restarts, {} answered",
            JOBS - poison
        )
        .into());
    }
    Ok(())
}

/// Hands out the jobs round-robin by path and counts answered and lost ones.
async fn dispatch(registry: &Registry) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let (mut answered, mut lost) = (0, 0);
    for n in 0..JOBS {
        let path = format!("pool/worker-{}", n as usize % WORKERS);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            n,
            reply: tx.into(),
        };
        registry
            .send_when_ready(&path, job, SEND_LIMIT)
            .await
            .map_err(|e| format!("job {n} to {path}: {}", e.error))?;
        match rx.await {
            Ok(square) if square == n * n => answered += 1,
            Ok(other) => return Err(format!("job {n}: wrong answer {other}").into()),
            Err(_) => lost += 1,
        }
    }
    Ok((answered, lost))
}
