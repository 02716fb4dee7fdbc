//! The demonstration tree `gridvisor run` starts until the embedded demo site exists: a small
//! supervision tree whose children crash and are restarted, printed after each step.

use std::time::Duration;

use gridvisor_supervisors::prelude::*;
use gridvisor_supervisors::registry::Lookup;
use gridvisor_supervisors::TreeContext;
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// How long the demo waits for any restart before it reports a failure.
const RESTART_LIMIT: Duration = Duration::from_secs(5);

/// What the demo sends its workers.
pub enum DemoMsg {
    /// Fail with this error (an abnormal exit: the supervisor restarts the worker).
    Crash(String),
}

struct DemoWorker;

impl Actor for DemoWorker {
    type Msg = DemoMsg;
    type State = ActorPath;
    type Arguments = (ActorPath, String);

    async fn pre_start(
        &self,
        _: ActorRef<DemoMsg>,
        (path, note): (ActorPath, String),
    ) -> Result<ActorPath, ActorProcessingErr> {
        println!("  start  {path}{note}");
        Ok(path)
    }

    async fn handle(
        &self,
        _: ActorRef<DemoMsg>,
        msg: DemoMsg,
        path: &mut ActorPath,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DemoMsg::Crash(why) => {
                println!("  crash  {path}: {why}");
                Err(why.into())
            }
        }
    }

    async fn post_stop(
        &self,
        _: ActorRef<DemoMsg>,
        path: &mut ActorPath,
    ) -> Result<(), ActorProcessingErr> {
        println!("  stop   {path}");
        Ok(())
    }
}

fn worker(id: &str) -> ChildSpec<()> {
    ChildSpec::worker(id, |ctx: ChildContext, ()| async move {
        let path = ctx.path().clone();
        ctx.spawn(DemoWorker, (path, String::new())).await
    })
}

async fn crash_and_wait(registry: &Registry, path: &str, also: &[&str]) -> Result<(), String> {
    let before = |p: &str| match registry.lookup_incarnation(p) {
        Lookup::Running(_, inc) => Ok(inc),
        other => Err(format!("{p} is not running: {other:?}")),
    };
    let mut watched = vec![(path.to_string(), before(path)?)];
    for p in also {
        watched.push((p.to_string(), before(p)?));
    }
    registry
        .send(path, DemoMsg::Crash("injected fault".into()))
        .map_err(|e| e.to_string())?;
    for (p, inc) in watched {
        registry
            .resolve_newer(&p, inc, RESTART_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Run the demonstration; returns an error naming the step that went wrong.
pub async fn run() -> Result<(), String> {
    let prometheus = prometheus::Registry::new();
    let tree = TreeContext::with_metrics(&prometheus).map_err(|e| e.to_string())?;
    let registry = tree
        .registry
        .clone()
        .expect("with_metrics makes a registry");

    println!("gridvisor demonstration tree (the V2G demo site comes with the domain actors)\n");
    println!("starting: children start in order");
    let sessions = ChildSpec::worker("session", |ctx: ChildContext, vehicle: String| async move {
        let path = ctx.path().clone();
        ctx.spawn(DemoWorker, (path, format!(" (vehicle {vehicle})")))
            .await
    });
    let children = vec![
        worker("telemetry"),
        Supervisor::child_spec(
            "segment-1",
            SupervisorConfig::new("segment-1", Strategy::RestForOne)
                .intensity(5, Duration::from_secs(10)),
            vec![worker("safety"), worker("meter"), worker("dispatcher")],
        ),
        Supervisor::dynamic_child_spec(
            "sessions",
            SupervisorConfig::new("sessions", Strategy::SimpleOneForOne)
                .intensity(5, Duration::from_secs(10)),
            sessions,
        ),
    ];
    let root = Supervisor::start(
        SupervisorConfig::new("demo", Strategy::OneForOne)
            .intensity(5, Duration::from_secs(10))
            .tree(tree),
        children,
    )
    .await
    .map_err(|e| e.to_string())?;
    let sessions_cell = registry
        .lookup("demo/sessions")
        .map_err(|e| e.to_string())?;
    let sessions = DynamicSupervisorRef::<String>::from_cell(sessions_cell, "demo/sessions".into())
        .map_err(|e| e.to_string())?;
    for vehicle in ["EV-1001", "EV-1002", "EV-1003"] {
        sessions
            .start_child(vehicle.to_string())
            .await
            .map_err(|e| e.to_string())?;
    }
    print_tree(&root).await?;

    println!("\nstep 1: the meter of segment-1 crashes; rest_for_one restarts it and the dispatcher after it");
    crash_and_wait(
        &registry,
        "demo/segment-1/meter",
        &["demo/segment-1/dispatcher"],
    )
    .await?;
    print_tree(&root).await?;

    println!("\nstep 2: a vehicle session crashes; its dynamic supervisor restarts it with the same vehicle");
    crash_and_wait(&registry, "demo/sessions/session-2", &[]).await?;
    print_tree(&root).await?;

    println!("\nstep 3: telemetry crashes; one_for_one restarts only telemetry");
    crash_and_wait(&registry, "demo/telemetry", &[]).await?;
    print_tree(&root).await?;

    println!("\nmetrics (restarts by path):");
    for family in prometheus.gather() {
        if family.name() != "gridvisor_actor_restarts_total" {
            continue;
        }
        for m in family.get_metric() {
            let path = m
                .get_label()
                .iter()
                .find(|l| l.name() == "path")
                .map(|l| l.value())
                .unwrap_or("?");
            println!(
                "  {} {{path=\"{path}\"}} {}",
                family.name(),
                m.get_counter().get_value()
            );
        }
    }

    println!("\nshutting down: children stop in reverse start order");
    root.shutdown().await;
    if !registry.is_empty() {
        return Err(format!(
            "{} paths still registered after shutdown",
            registry.len()
        ));
    }
    println!("done");
    Ok(())
}

async fn print_tree(root: &SupervisorRef) -> Result<(), String> {
    let tree = root.tree().await.map_err(|e| e.to_string())?;
    println!("\n{}", tree.render().trim_end());
    Ok(())
}
