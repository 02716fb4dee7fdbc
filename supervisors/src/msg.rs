//! What goes to and comes from a supervisor: the (opaque) message, the answers and the errors.

use std::any::Any;
use std::time::Duration;

use ractor::{ActorCell, RpcReplyPort};

use crate::config::Strategy;
use crate::exit::ExitReason;
use crate::introspect::{ChildCounts, ChildInfo};
use crate::path::ActorPath;
use crate::spec::StartError;

/// A child that was started.
#[derive(Debug, Clone)]
pub struct StartedChild {
    /// Its id.
    pub id: String,
    /// Its stable path.
    pub path: ActorPath,
    /// Its current incarnation.
    pub cell: ActorCell,
}

/// Why a supervisor failed, or why a request to it was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    /// More than `max_restarts` restarts within `period`: the supervisor gave up.
    #[error("{path}: reached max restart intensity ({max_restarts} restarts in {period:?}); last exit of {child}: {reason}")]
    ReachedMaxRestartIntensity {
        /// The supervisor.
        path: ActorPath,
        /// Its limit.
        max_restarts: u32,
        /// Its period.
        period: Duration,
        /// The child whose exit crossed the limit.
        child: String,
        /// That exit.
        reason: String,
    },
    /// An escalation hook escalated a child's exit.
    #[error("{path}: escalated exit of {child}: {reason}")]
    Escalated {
        /// The supervisor.
        path: ActorPath,
        /// The child.
        child: String,
        /// The child's exit (its error can be downcast).
        reason: ExitReason,
    },
    /// A child failed to start while the supervisor started (or on `start_child`).
    #[error("{path}: child {child} failed to start: {error}")]
    StartFailed {
        /// The supervisor.
        path: ActorPath,
        /// The child.
        child: String,
        /// The start error.
        error: StartError,
    },
    /// No child with this id.
    #[error("{path}: no child {id}")]
    UnknownChild {
        /// The supervisor.
        path: ActorPath,
        /// The id asked for.
        id: String,
    },
    /// The child is running (`restart_child`, `delete_child` need it terminated).
    #[error("{path}: child {id} is running")]
    Running {
        /// The supervisor.
        path: ActorPath,
        /// The child.
        id: String,
    },
    /// A child with this id exists already.
    #[error("{path}: a child {id} exists already")]
    AlreadyPresent {
        /// The supervisor.
        path: ActorPath,
        /// The child.
        id: String,
    },
    /// The request does not fit the supervisor (a spec for a dynamic supervisor, arguments
    /// of the wrong type, `restart_child` on a dynamic child...).
    #[error("{path}: {what}")]
    BadRequest {
        /// The supervisor.
        path: ActorPath,
        /// What was wrong.
        what: String,
    },
    /// The supervisor could not be reached (it stopped, or did not answer in time).
    #[error("{path}: unreachable: {error}")]
    Unreachable {
        /// The supervisor.
        path: ActorPath,
        /// What the call returned.
        error: String,
    },
}

/// What to start: a spec (static supervisors) or arguments (dynamic supervisors).
pub(crate) enum StartRequest {
    /// Add and start a child with this spec (static supervisors).
    Spec(Box<dyn Any + Send>),
    /// Start a child of the template spec with these arguments (dynamic supervisors).
    Args {
        /// The child's id; generated (`<spec id>-<n>`) if `None`.
        id: Option<String>,
        /// The arguments, of the supervisor's argument type.
        args: Box<dyn Any + Send>,
    },
}

/// What a supervisor answers to `Describe`.
#[derive(Debug, Clone)]
pub struct SupervisorInfo {
    /// Its path.
    pub path: ActorPath,
    /// Its strategy.
    pub strategy: Strategy,
    /// Its children in start order.
    pub children: Vec<ChildInfo>,
}

/// A message to a supervisor. It is opaque: talk to a supervisor through
/// [`SupervisorRef`](crate::SupervisorRef) or [`DynamicSupervisorRef`](crate::DynamicSupervisorRef).
pub struct SupervisorMsg(pub(crate) Request);

/// What a supervisor handles (the inside of [`SupervisorMsg`]).
pub(crate) enum Request {
    /// OTP's `start_child`.
    StartChild(
        StartRequest,
        RpcReplyPort<Result<StartedChild, SupervisorError>>,
    ),
    /// OTP's `terminate_child`.
    TerminateChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    /// OTP's `restart_child` (of a terminated static child).
    RestartChild(String, RpcReplyPort<Result<StartedChild, SupervisorError>>),
    /// OTP's `delete_child` (of a terminated static child).
    DeleteChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    /// OTP's `which_children`.
    WhichChildren(RpcReplyPort<Vec<ChildInfo>>),
    /// OTP's `count_children`.
    CountChildren(RpcReplyPort<ChildCounts>),
    /// Path, strategy and children, for the tree.
    Describe(RpcReplyPort<SupervisorInfo>),
    /// A scheduled restart is due (sent by the supervisor to itself).
    RestartDue(RestartToken),
}

/// Identifies one scheduled restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RestartToken(pub(crate) u64);
