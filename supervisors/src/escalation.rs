//! Escalation hooks: map a child's exit to an action other than the default restart.
//!
//! OTP supervisors only restart. A grid needs more: an inverter that reports over-temperature
//! must not simply be restarted; its segment's safe-state supervisor must hear of it. A hook
//! sees every child exit and returns a [`HookDecision`]: what to do with the child
//! ([`ExitAction`]) and, optionally, whom to tell ([`Notifier`]).

use std::fmt;
use std::sync::Arc;

use ractor::{ActorRef, Message};

use crate::exit::ExitReason;
use crate::path::ActorPath;
use crate::spec::Restart;

/// A child exit, as a hook sees it.
#[derive(Debug)]
pub struct ChildExit<'a> {
    /// The child's id within its supervisor.
    pub id: &'a str,
    /// The child's stable path.
    pub path: &'a ActorPath,
    /// The child's restart type.
    pub restart: Restart,
    /// Why it ended.
    pub reason: &'a ExitReason,
}

/// What the supervisor does with an exited child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Follow the child's restart type and the strategy (the OTP default).
    Restart,
    /// Leave the child down: it stays listed as terminated (a dynamic child is removed), so it
    /// can be restarted by hand. Unlike a temporary child it is not forgotten, so a later
    /// one_for_all / rest_for_one group restart starts it again, as OTP does for terminated
    /// children.
    Ignore,
    /// Give up: stop all children and fail the supervisor with
    /// [`SupervisorError::Escalated`](crate::SupervisorError::Escalated), so the parent decides.
    Escalate,
}

/// A notice sent to a [`Notifier`] about a child exit.
#[derive(Debug, Clone)]
pub struct ChildExitNotice {
    /// The child's stable path.
    pub path: ActorPath,
    /// Why it ended.
    pub reason: ExitReason,
    /// What the supervisor did about it.
    pub action: ExitAction,
}

/// Somewhere to send [`ChildExitNotice`]s: an actor, or any function.
#[derive(Clone)]
pub struct Notifier(Arc<dyn Fn(ChildExitNotice) + Send + Sync>);

impl Notifier {
    /// Notify an actor whose message type can be built from a notice. A notice that cannot be
    /// delivered (the actor is gone) is logged as a warning.
    pub fn actor<M>(target: ActorRef<M>) -> Self
    where
        M: Message + From<ChildExitNotice>,
    {
        Notifier(Arc::new(move |notice: ChildExitNotice| {
            let path = notice.path.clone();
            if let Err(e) = target.send_message(M::from(notice)) {
                tracing::warn!(%path, error = %e, "exit notice could not be delivered");
            }
        }))
    }

    /// Notify by calling `f` (on the supervisor's task: keep it short).
    pub fn function(f: impl Fn(ChildExitNotice) + Send + Sync + 'static) -> Self {
        Notifier(Arc::new(f))
    }

    pub(crate) fn notify(&self, notice: ChildExitNotice) {
        (self.0)(notice)
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Notifier")
    }
}

/// A hook's answer: an action and an optional notification.
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
/// use std::sync::{Arc, Mutex};
///
/// // Leave a child down after a failure instead of restarting it, and tell somebody.
/// let told = Arc::new(Mutex::new(Vec::new()));
/// let log = told.clone();
/// let config = SupervisorConfig::new("app", Strategy::OneForOne).hook(move |exit| {
///     let log = log.clone();
///     if exit.reason.is_abnormal() {
///         HookDecision::ignore().notify(gridvisor_supervisors::Notifier::function(move |n| {
///             log.lock().unwrap().push(n.path.to_string())
///         }))
///     } else {
///         HookDecision::restart()
///     }
/// });
/// let spec = ChildSpec::worker("w", |ctx: ChildContext, ()| async move { ctx.spawn(Worker, ()).await });
/// let sup = Supervisor::start(config, vec![spec]).await.unwrap();
/// sup.which_children().await.unwrap()[0].actor.as_ref().unwrap().kill();
/// let gone = tokio::time::timeout(std::time::Duration::from_secs(5), async {
///     loop {
///         let c = sup.count_children().await.unwrap();
///         if c.active == 0 { break c; }
///         tokio::task::yield_now().await;
///     }
/// })
/// .await
/// .expect("the killed child is seen within 5 s");
/// assert_eq!(gone.specs, 1); // still listed, terminated
/// assert_eq!(*told.lock().unwrap(), ["app/w"]);
/// sup.shutdown().await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HookDecision {
    /// What to do with the child.
    pub action: ExitAction,
    /// Whom to tell (after the action was decided, before it is carried out).
    pub notify: Option<Notifier>,
}

impl HookDecision {
    /// The default: follow the restart type.
    pub fn restart() -> Self {
        HookDecision {
            action: ExitAction::Restart,
            notify: None,
        }
    }

    /// Leave the child down.
    pub fn ignore() -> Self {
        HookDecision {
            action: ExitAction::Ignore,
            notify: None,
        }
    }

    /// Fail the supervisor.
    pub fn escalate() -> Self {
        HookDecision {
            action: ExitAction::Escalate,
            notify: None,
        }
    }

    /// Also send a notice to `notifier`.
    pub fn notify(mut self, notifier: Notifier) -> Self {
        self.notify = Some(notifier);
        self
    }
}

/// A supervisor's escalation hook.
pub type EscalationHook = Arc<dyn Fn(&ChildExit<'_>) -> HookDecision + Send + Sync>;
