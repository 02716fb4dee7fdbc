//! `gridvisor bench supervision --children N`: the work of ../shared/bench/otp_baseline.escript,
//! through the real supervisor, printing the same figure names (`name value unit`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gridvisor_supervisors::prelude::*;
use gridvisor_supervisors::TreeContext;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::alloc;

/// Calls averaged for call_roundtrip (as the escript).
const CALLS: usize = 200_000;
/// Messages for messages_per_second (as the escript).
const MESSAGES: usize = 2_000_000;
/// Single restarts timed for restart_one_* (as the escript).
const SINGLE_RESTARTS: usize = 1000;
/// The longest any one phase may wait for its acknowledgements before the benchmark fails.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

/// What a bench child tells the collector.
#[derive(Debug)]
enum Event {
    Started,
    Ack,
}

/// A bench child's messages: the escript's `{setpoint, From, Key, Kw}` and `{call, From, Ref}`.
pub enum ChildMsg {
    /// An absolute setpoint, acknowledged to the collector.
    Setpoint {
        /// Idempotency key.
        key: u32,
        /// Target kW.
        kw: f64,
    },
    /// A request answered at once.
    Call(RpcReplyPort<()>),
}

struct BenchChild {
    collector: mpsc::UnboundedSender<Event>,
}

struct ChildState {
    #[allow(dead_code)]
    id: u64,
    applied: HashMap<u32, f64>,
    collector: mpsc::UnboundedSender<Event>,
}

impl Actor for BenchChild {
    type Msg = ChildMsg;
    type State = ChildState;
    type Arguments = u64;

    async fn pre_start(
        &self,
        _: ActorRef<ChildMsg>,
        id: u64,
    ) -> Result<ChildState, ActorProcessingErr> {
        let _ = self.collector.send(Event::Started);
        Ok(ChildState {
            id,
            applied: HashMap::new(),
            collector: self.collector.clone(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<ChildMsg>,
        msg: ChildMsg,
        state: &mut ChildState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChildMsg::Setpoint { key, kw } => {
                state.applied.insert(key, kw);
                let _ = state.collector.send(Event::Ack);
            }
            ChildMsg::Call(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

/// Counts messages and reports when it has seen `expected` of them.
struct Sink;

impl Actor for Sink {
    type Msg = ();
    type State = (usize, usize, Option<tokio::sync::oneshot::Sender<()>>);
    type Arguments = (usize, tokio::sync::oneshot::Sender<()>);

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        (n, done): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok((0, n, Some(done)))
    }

    async fn handle(
        &self,
        _: ActorRef<()>,
        _: (),
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.0 += 1;
        if state.0 == state.1 {
            if let Some(done) = state.2.take() {
                let _ = done.send(());
            }
        }
        Ok(())
    }
}

async fn drain(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    what: &str,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    for _ in 0..n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("{what}: collector channel closed")),
            Err(_) => return Err(format!("{what}: not all events within {PHASE_LIMIT:?}")),
        }
    }
    Ok(())
}

/// Print one figure. A closed stdout (`| head`) ends the benchmark quietly: nobody reads
/// the rest.
fn out(name: &str, value: f64, unit: &str) {
    if !crate::stdout::outln!("{name} {value:.3} {unit}") {
        std::process::exit(0);
    }
}

/// Run the benchmark with `n` children, printing figures to stdout.
pub async fn supervision(n: usize) -> Result<(), String> {
    if n < 10 {
        return Err(format!("--children must be at least 10 (got {n})"));
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let prometheus = prometheus::Registry::new();
    let tree = TreeContext::with_metrics(&prometheus).map_err(|e| e.to_string())?;
    let registry = tree
        .registry
        .clone()
        .expect("with_metrics makes a registry");
    let collector = tx.clone();
    let template = ChildSpec::worker("session", move |ctx: ChildContext, id: u64| {
        let collector = collector.clone();
        async move { ctx.spawn(BenchChild { collector }, id).await }
    });
    // Intensity high enough that the mass kill measures restarts, not give-up (as the escript).
    let config = SupervisorConfig::new("bench", Strategy::SimpleOneForOne)
        .intensity((n * 10) as u32, Duration::from_secs(5))
        .tree(tree);
    let sup = Supervisor::start_dynamic(config, template)
        .await
        .map_err(|e| e.to_string())?;

    let mem0 = alloc::live_bytes();
    let rss0 = alloc::rss_bytes();
    let t0 = Instant::now();
    let mut cells: Vec<ActorRef<ChildMsg>> = Vec::with_capacity(n);
    for i in 0..n {
        let c = sup.start_child(i as u64).await.map_err(|e| e.to_string())?;
        cells.push(c.cell.into());
    }
    let start_total = t0.elapsed();
    drain(&mut rx, n, "start").await?;
    let mem1 = alloc::live_bytes();
    let rss1 = alloc::rss_bytes();
    out(
        "start_children_total",
        start_total.as_secs_f64() * 1e3,
        "ms",
    );
    out(
        "start_child_each",
        start_total.as_secs_f64() * 1e6 / n as f64,
        "us",
    );
    out("memory_per_child", (mem1 - mem0) as f64 / n as f64, "bytes");
    if let (Some(a), Some(b)) = (rss0, rss1) {
        out(
            "memory_per_child_rss",
            b.saturating_sub(a) as f64 / n as f64,
            "bytes",
        );
    }
    if registry.len() != n {
        return Err(format!(
            "registry holds {} paths, expected {n}",
            registry.len()
        ));
    }

    let t2 = Instant::now();
    for c in &cells {
        c.send_message(ChildMsg::Setpoint { key: 7, kw: -11.0 })
            .map_err(|e| e.to_string())?;
    }
    drain(&mut rx, n, "fanout").await?;
    out(
        "fanout_setpoint_all_acked",
        t2.elapsed().as_secs_f64() * 1e3,
        "ms",
    );

    let mut lat = Vec::with_capacity(SINGLE_RESTARTS);
    for c in cells.iter().take(SINGLE_RESTARTS.min(n)) {
        let t = Instant::now();
        c.kill();
        drain(&mut rx, 1, "single restart").await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pick = |q: usize| lat[(q * lat.len() / 1000).min(lat.len() - 1)].as_secs_f64() * 1e6;
    out("restart_one_median", pick(500), "us");
    out("restart_one_p99", pick(990), "us");

    let victims: Vec<_> = sup
        .which_children()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .take(n / 10)
        .filter_map(|c| c.actor)
        .collect();
    let t4 = Instant::now();
    for v in &victims {
        v.kill();
    }
    drain(&mut rx, victims.len(), "mass restart").await?;
    out(
        "restart_10pct_all_up",
        t4.elapsed().as_secs_f64() * 1e3,
        "ms",
    );

    let one: ActorRef<ChildMsg> = sup
        .which_children()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find_map(|c| c.actor)
        .ok_or("no running child")?
        .into();
    let t6 = Instant::now();
    for _ in 0..CALLS {
        match one.call(ChildMsg::Call, None).await {
            Ok(ractor::rpc::CallResult::Success(())) => {}
            other => return Err(format!("call failed: {other:?}")),
        }
    }
    out(
        "call_roundtrip",
        t6.elapsed().as_secs_f64() * 1e6 / CALLS as f64,
        "us",
    );

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (sink, _) = Actor::spawn(None, Sink, (MESSAGES, done_tx))
        .await
        .map_err(|e| e.to_string())?;
    let t8 = Instant::now();
    for _ in 0..MESSAGES {
        sink.send_message(()).map_err(|e| e.to_string())?;
    }
    tokio::time::timeout(PHASE_LIMIT, done_rx)
        .await
        .map_err(|_| "sink timed out")?
        .map_err(|_| "sink dropped")?;
    out(
        "messages_per_second",
        MESSAGES as f64 / t8.elapsed().as_secs_f64(),
        "msg/s",
    );
    sink.stop(None);

    let t10 = Instant::now();
    sup.shutdown().await;
    out("shutdown_tree", t10.elapsed().as_secs_f64() * 1e3, "ms");
    if !registry.is_empty() {
        return Err(format!(
            "{} paths still registered after shutdown",
            registry.len()
        ));
    }
    out("children", n as f64, "count");
    Ok(())
}
