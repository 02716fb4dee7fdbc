//! Typed handles to running supervisors: OTP's `supervisor` module functions as methods.

use std::marker::PhantomData;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef, RpcReplyPort};

use crate::introspect::{ChildCounts, ChildInfo, ChildState, TreeNode};
pub use crate::msg::StartedChild;
use crate::msg::{Request, StartRequest, SupervisorError, SupervisorMsg};
use crate::path::ActorPath;
use crate::spec::{ChildKind, ChildSpec};

/// How long a call to a supervisor may take before the caller gets
/// [`SupervisorError::Unreachable`]. Generous, because a call waits behind whatever the
/// supervisor is doing (starting a slow child, stopping children within their limits).
pub const SUPERVISOR_CALL_LIMIT: Duration = Duration::from_secs(60);

/// A handle to a running supervisor.
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
/// let worker = |id: &str| {
///     ChildSpec::worker(id, |ctx: ChildContext, ()| async move { ctx.spawn(Worker, ()).await })
/// };
/// let sup = Supervisor::start(
///     SupervisorConfig::new("app", Strategy::RestForOne),
///     vec![worker("db"), worker("cache")],
/// )
/// .await
/// .unwrap();
/// // OTP's supervisor API as methods.
/// sup.start_child(worker("web")).await.unwrap();
/// sup.terminate_child("cache").await.unwrap();
/// let ids: Vec<_> = sup.which_children().await.unwrap().into_iter().map(|c| c.id).collect();
/// assert_eq!(ids, ["db", "cache", "web"]);
/// assert_eq!(sup.count_children().await.unwrap().active, 2);
/// sup.restart_child("cache").await.unwrap();
/// assert_eq!(sup.tree().await.unwrap().children.len(), 3);
/// sup.shutdown().await;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SupervisorRef {
    actor: ActorRef<SupervisorMsg>,
    path: ActorPath,
}

impl SupervisorRef {
    pub(crate) fn new(actor: ActorRef<SupervisorMsg>, path: ActorPath) -> Self {
        SupervisorRef { actor, path }
    }

    /// A handle for a supervisor's cell (from the registry, or a `StartedChild`). Fails if the
    /// actor is not a gridvisor supervisor.
    pub fn from_cell(cell: ActorCell, path: ActorPath) -> Result<Self, SupervisorError> {
        if cell.is_message_type_of::<SupervisorMsg>() != Some(true) {
            return Err(SupervisorError::BadRequest {
                path,
                what: "not a supervisor".into(),
            });
        }
        Ok(SupervisorRef {
            actor: cell.into(),
            path,
        })
    }

    /// The supervisor's path.
    pub fn path(&self) -> &ActorPath {
        &self.path
    }

    /// The supervisor's ractor cell (to link, monitor or kill it).
    pub fn cell(&self) -> ActorCell {
        self.actor.get_cell()
    }

    async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> Request,
    ) -> Result<T, SupervisorError> {
        match self
            .actor
            .call(|r| SupervisorMsg(msg(r)), Some(SUPERVISOR_CALL_LIMIT))
            .await
        {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(CallResult::Timeout) => Err(SupervisorError::Unreachable {
                path: self.path.clone(),
                error: format!("no answer within {SUPERVISOR_CALL_LIMIT:?}"),
            }),
            Ok(CallResult::SenderError) => Err(SupervisorError::Unreachable {
                path: self.path.clone(),
                error: "the supervisor stopped before it answered".into(),
            }),
            Err(e) => Err(SupervisorError::Unreachable {
                path: self.path.clone(),
                error: e.to_string(),
            }),
        }
    }

    /// Add `spec` and start it (static supervisors; OTP's `start_child/2` with a spec).
    pub async fn start_child(&self, spec: ChildSpec<()>) -> Result<StartedChild, SupervisorError> {
        self.call(|r| Request::StartChild(StartRequest::Spec(Box::new(spec)), r))
            .await?
    }

    /// Stop a child by its shutdown policy (OTP's `terminate_child`). A static child stays
    /// listed as terminated; a dynamic or temporary child is removed.
    pub async fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_string();
        self.call(|r| Request::TerminateChild(id, r)).await?
    }

    /// Start a terminated static child again (OTP's `restart_child`).
    pub async fn restart_child(&self, id: &str) -> Result<StartedChild, SupervisorError> {
        let id = id.to_string();
        self.call(|r| Request::RestartChild(id, r)).await?
    }

    /// Forget a terminated static child (OTP's `delete_child`).
    pub async fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_string();
        self.call(|r| Request::DeleteChild(id, r)).await?
    }

    /// The children, in start order (OTP's `which_children`).
    pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.call(Request::WhichChildren).await
    }

    /// Counts of children (OTP's `count_children`).
    pub async fn count_children(&self) -> Result<ChildCounts, SupervisorError> {
        self.call(Request::CountChildren).await
    }

    /// The whole tree below this supervisor, as data. Nested supervisors are asked in turn,
    /// from the caller's task, so no supervisor ever waits on another.
    pub async fn tree(&self) -> Result<TreeNode, SupervisorError> {
        let info = self.call(Request::Describe).await?;
        let children = describe_children(info.children).await;
        Ok(TreeNode {
            path: info.path,
            kind: ChildKind::Supervisor,
            strategy: Some(info.strategy.as_str().to_string()),
            state: ChildState::Running,
            restarts: 0,
            last_exit: None,
            uptime_ms: 0,
            children,
        })
    }

    /// Stop the supervisor and wait: its children stop in reverse start order, each within
    /// its shutdown limit.
    pub async fn shutdown(&self) {
        let _ = self
            .actor
            .stop_and_wait(Some("shutdown".to_string()), None)
            .await;
    }

    /// Kill the supervisor abruptly (ractor kills its linked children in turn).
    pub fn kill(&self) {
        self.actor.kill();
    }
}

fn describe_children(children: Vec<ChildInfo>) -> BoxFuture<'static, Vec<TreeNode>> {
    Box::pin(async move {
        let mut out = Vec::with_capacity(children.len());
        for c in children {
            let mut node = TreeNode {
                path: c.path.clone(),
                kind: c.kind,
                strategy: None,
                state: c.state,
                restarts: c.restarts,
                last_exit: c.last_exit,
                uptime_ms: c.uptime_ms,
                children: Vec::new(),
            };
            if let (ChildKind::Supervisor, Some(cell)) = (c.kind, c.actor) {
                if let Ok(sup) = SupervisorRef::from_cell(cell, c.path) {
                    // A supervisor that stops meanwhile is shown without children.
                    if let Ok(info) = sup.call(Request::Describe).await {
                        node.strategy = Some(info.strategy.as_str().to_string());
                        node.children = describe_children(info.children).await;
                    }
                }
            }
            out.push(node);
        }
        out
    })
}

/// A handle to a dynamic (`SimpleOneForOne`) supervisor whose children take arguments `A`.
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
/// // Children of one template, each started with its own arguments (here: a number).
/// let template = ChildSpec::worker("conn", |ctx: ChildContext, _port: u16| async move {
///     ctx.spawn(Worker, ()).await
/// });
/// let pool = Supervisor::start_dynamic(
///     SupervisorConfig::new("conns", Strategy::SimpleOneForOne),
///     template,
/// )
/// .await
/// .unwrap();
/// let a = pool.start_child(8080).await.unwrap();
/// let b = pool.start_child_named("admin", 9464).await.unwrap();
/// assert_eq!((a.id.as_str(), b.id.as_str()), ("conn-1", "admin")); // generated ids count from 1
/// assert_eq!(b.path.as_str(), "conns/admin");
/// pool.shutdown().await;
/// # }
/// ```
#[derive(Debug)]
pub struct DynamicSupervisorRef<A> {
    inner: SupervisorRef,
    _args: PhantomData<fn(A)>,
}

impl<A> Clone for DynamicSupervisorRef<A> {
    fn clone(&self) -> Self {
        DynamicSupervisorRef {
            inner: self.inner.clone(),
            _args: PhantomData,
        }
    }
}

impl<A: Send + 'static> DynamicSupervisorRef<A> {
    pub(crate) fn new(inner: SupervisorRef) -> Self {
        DynamicSupervisorRef {
            inner,
            _args: PhantomData,
        }
    }

    /// A typed handle for a dynamic supervisor's cell. Arguments of another type than the
    /// supervisor's are refused by the supervisor with [`SupervisorError::BadRequest`].
    pub fn from_cell(cell: ActorCell, path: ActorPath) -> Result<Self, SupervisorError> {
        Ok(Self::new(SupervisorRef::from_cell(cell, path)?))
    }

    /// Start a child of the template with `args`; its id is `<spec id>-<n>`.
    pub async fn start_child(&self, args: A) -> Result<StartedChild, SupervisorError> {
        self.inner
            .call(|r| {
                Request::StartChild(
                    StartRequest::Args {
                        id: None,
                        args: Box::new(args),
                    },
                    r,
                )
            })
            .await?
    }

    /// Start a child of the template with `args` under the id `id`.
    pub async fn start_child_named(
        &self,
        id: &str,
        args: A,
    ) -> Result<StartedChild, SupervisorError> {
        let id = Some(id.to_string());
        self.inner
            .call(|r| {
                Request::StartChild(
                    StartRequest::Args {
                        id,
                        args: Box::new(args),
                    },
                    r,
                )
            })
            .await?
    }
}

impl<A> std::ops::Deref for DynamicSupervisorRef<A> {
    type Target = SupervisorRef;
    fn deref(&self) -> &SupervisorRef {
        &self.inner
    }
}
