//! Child specifications: what a supervisor needs to know to start, restart and stop a child.
//!
//! This mirrors OTP's `child_spec()`: an id, a start function, a restart type, a shutdown
//! policy and a kind. A spec is generic over `A`, the arguments a dynamic supervisor passes to
//! each child it starts (OTP's `simple_one_for_one` extra arguments); static children use
//! `A = ()`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, SpawnErr};

use crate::intensity::Backoff;
use crate::path::ActorPath;
use crate::tree::TreeContext;

/// When a terminated child is restarted (OTP's `restart` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit (a failure or a kill).
    Transient,
    /// Never restarted; removed from the supervisor when it exits.
    Temporary,
}

/// How a child is stopped when its supervisor stops it (OTP's `shutdown` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Killed at once: no cleanup code runs (OTP's `brutal_kill`).
    Brutal,
    /// Asked to stop; killed if it has not stopped within the limit.
    Timeout(Duration),
    /// Asked to stop and waited for without limit; meant for supervisors, which need the time
    /// to stop their own children in order.
    Infinity,
}

/// OTP's default shutdown limit for workers.
pub const DEFAULT_WORKER_SHUTDOWN: Duration = Duration::from_secs(5);

/// Whether a child is a worker or itself a supervisor (OTP's `type` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    /// A leaf actor.
    Worker,
    /// A supervisor (see [`Supervisor::child_spec`](crate::Supervisor::child_spec)); introspection descends into it.
    Supervisor,
}

/// Why a start function could not start its child.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The actor's `pre_start` failed or panicked.
    #[error("start failed: {0}")]
    Failed(String),
    /// The start function returned an actor that is not linked to the supervisor; the
    /// supervisor would never hear of its exit, so it is refused (and stopped).
    #[error("the started actor is not linked to its supervisor (use ChildContext::spawn)")]
    NotLinked,
}

impl From<SpawnErr> for StartError {
    fn from(e: SpawnErr) -> Self {
        StartError::Failed(e.to_string())
    }
}

/// The boxed start function of a child.
pub type StartFn<A> =
    Arc<dyn Fn(ChildContext, A) -> BoxFuture<'static, Result<ActorCell, StartError>> + Send + Sync>;

/// What a start function gets: where the child lives and what it must link to.
#[derive(Clone)]
pub struct ChildContext {
    pub(crate) supervisor: ActorCell,
    pub(crate) path: ActorPath,
    pub(crate) tree: TreeContext,
}

impl ChildContext {
    /// The child's stable path.
    pub fn path(&self) -> &ActorPath {
        &self.path
    }

    /// The supervisor's cell; a child must be linked to it.
    pub fn supervisor(&self) -> &ActorCell {
        &self.supervisor
    }

    /// The tree-wide services (registry, metrics) the supervisor was started with.
    pub fn tree(&self) -> &TreeContext {
        &self.tree
    }

    /// Spawn `handler` linked to the supervisor; its `pre_start` has run when this returns.
    pub async fn spawn<T: Actor>(
        &self,
        handler: T,
        args: T::Arguments,
    ) -> Result<ActorCell, StartError> {
        let (actor, _join) = T::spawn_linked(None, handler, args, self.supervisor.clone()).await?;
        Ok(actor.get_cell())
    }
}

/// A child specification (OTP's `child_spec()`).
///
/// ```
/// # use gridvisor_supervisors::prelude::*;
/// # use ractor::{Actor, ActorProcessingErr, ActorRef};
/// # struct Worker;
/// # impl Actor for Worker {
/// #     type Msg = ();
/// #     type State = ();
/// #     type Arguments = ();
/// #     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
/// #         Ok(())
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
///
/// // A worker restarted only after an abnormal exit, with backoff, given 1 s to stop.
/// let spec = ChildSpec::worker("reader", |ctx: ChildContext, ()| async move {
///     ctx.spawn(Worker, ()).await
/// })
/// .restart(Restart::Transient)
/// .shutdown(Shutdown::Timeout(Duration::from_secs(1)))
/// .backoff(Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5)));
/// assert_eq!(spec.id(), "reader");
/// assert_eq!(spec.restart_type(), Restart::Transient);
///
/// let sup = Supervisor::start(SupervisorConfig::new("app", Strategy::OneForOne), vec![spec])
///     .await
///     .unwrap();
/// assert_eq!(sup.count_children().await.unwrap().active, 1);
/// sup.shutdown().await;
/// # }
/// ```
pub struct ChildSpec<A = ()> {
    pub(crate) id: Arc<str>,
    pub(crate) start: StartFn<A>,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) kind: ChildKind,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) metrics_label: Option<ActorPath>,
}

impl<A> Clone for ChildSpec<A> {
    fn clone(&self) -> Self {
        ChildSpec {
            id: self.id.clone(),
            start: self.start.clone(),
            restart: self.restart,
            shutdown: self.shutdown,
            kind: self.kind,
            backoff: self.backoff.clone(),
            metrics_label: self.metrics_label.clone(),
        }
    }
}

impl<A> fmt::Debug for ChildSpec<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("kind", &self.kind)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl<A: Send + 'static> ChildSpec<A> {
    /// A permanent worker with OTP's default shutdown (5 s, then killed).
    ///
    /// `start` must spawn the actor linked to `ctx.supervisor()`; [`ChildContext::spawn`] does.
    pub fn worker<F, Fut>(id: &str, start: F) -> Self
    where
        F: Fn(ChildContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, StartError>> + Send + 'static,
    {
        ChildSpec {
            id: Arc::from(id),
            start: Arc::new(move |ctx, args| Box::pin(start(ctx, args))),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(DEFAULT_WORKER_SHUTDOWN),
            kind: ChildKind::Worker,
            backoff: None,
            metrics_label: None,
        }
    }

    /// Set the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Set the shutdown policy.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Delay restarts of this child with exponential backoff (beyond OTP: a device that is
    /// offline must not cause a restart storm).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Count this child's starts, restarts and exits under `label`, shared with every child
    /// given the same label, instead of under its own path: many alike children (a session
    /// per vehicle, say) then cost one series, not one each.
    pub fn metrics_label(mut self, label: impl Into<ActorPath>) -> Self {
        self.metrics_label = Some(label.into());
        self
    }

    /// Mark the child as a supervisor (introspection descends into it).
    pub fn kind(mut self, kind: ChildKind) -> Self {
        self.kind = kind;
        self
    }

    /// The child's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The child's restart type.
    pub fn restart_type(&self) -> Restart {
        self.restart
    }
}
