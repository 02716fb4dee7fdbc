//! # gridvisor-supervisors
//!
//! Erlang/OTP supervision on top of [ractor]: child specifications, the four OTP strategies,
//! restart intensity, exponential backoff with jitter, escalation hooks, a registry of stable
//! addresses, introspection and Prometheus metrics. Nothing in this crate knows about energy;
//! it is a general framework, and `gridvisor-actors` is its first user.
//!
//! ## The pieces, one idea each
//! | module | idea |
//! | --- | --- |
//! | [`spec`] | what a child is: id, async start function, restart type, shutdown, kind |
//! | [`intensity`] | when to give up ([`RestartIntensity`]) and how long to wait ([`Backoff`]) |
//! | [`exit`] | how a ractor exit maps to an OTP exit reason (normal, shutdown, killed, failed) |
//! | [`escalation`] | a hook that maps a child's exit to another action than a restart |
//! | [`supervisor`] | the supervisor actor: its state machine for every strategy |
//! | [`handle`] | typed handles to talk to a running supervisor |
//! | [`registry`] | stable paths (`site/tx-17/evse-3/session`) to the current incarnation |
//! | [`introspect`] | which_children, count_children and the tree as serde data |
//! | [`metrics`] | starts, restarts, exits by reason, messages and mailbox depth per actor path |
//! | [`report`] | supervisor and progress reports (OTP's SASL reports) as a bounded, lossy broadcast |
//! | [`exposition`] | the Prometheus text format and OpenMetrics, negotiated from `Accept` |
//! | [`config`] | a supervisor's strategy and flags |
//! | [`tree`] | what every supervisor of a tree shares: registry, metrics, reports |
//!
//! ## Example
//! ```
//! use gridvisor_supervisors::prelude::*;
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//!
//! struct Worker;
//! impl Actor for Worker {
//!     type Msg = ();
//!     type State = ();
//!     type Arguments = ();
//!     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let children = vec![
//!     ChildSpec::worker("a", |ctx: ChildContext, ()| async move { ctx.spawn(Worker, ()).await }),
//!     ChildSpec::worker("b", |ctx: ChildContext, ()| async move { ctx.spawn(Worker, ()).await }),
//! ];
//! let sup = Supervisor::start(
//!     SupervisorConfig::new("demo", Strategy::OneForOne),
//!     children,
//! )
//! .await
//! .unwrap();
//! assert_eq!(sup.count_children().await.unwrap().active, 2);
//! sup.shutdown().await;
//! # }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod config;
pub mod escalation;
pub mod exit;
pub mod exposition;
pub mod handle;
pub mod intensity;
pub mod introspect;
pub mod metrics;
mod msg;
pub mod path;
pub mod registry;
pub mod report;
pub mod spec;
pub mod supervisor;
mod sync;
pub mod tree;

pub use escalation::{
    ChildExit, ChildExitNotice, EscalationHook, ExitAction, HookDecision, Notifier,
};
pub use exit::{ExitClass, ExitReason};
pub use handle::{DynamicSupervisorRef, StartedChild, SupervisorRef};
pub use intensity::{Backoff, RestartIntensity, RestartWindow};
pub use introspect::{ChildCounts, ChildInfo, ChildState, TreeNode};
pub use metrics::{CountedRef, Mailbox, MailboxCounters, MetricsGranularity, SupervisionMetrics};
pub use path::ActorPath;
pub use registry::{AddressError, Registry};
pub use report::{ReportEvent, ReportSubscriber, SupervisorReport, SupervisorReports};
pub use spec::{ChildContext, ChildKind, ChildSpec, Restart, Shutdown, StartError};
pub use supervisor::{
    Strategy, Supervisor, SupervisorConfig, SupervisorError, SupervisorMsg, TreeContext,
};

/// Everything a user of the crate usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        ActorPath, Backoff, ChildContext, ChildKind, ChildSpec, DynamicSupervisorRef, ExitAction,
        ExitReason, HookDecision, Registry, Restart, RestartIntensity, Shutdown, Strategy,
        Supervisor, SupervisorConfig, SupervisorRef, TreeContext,
    };
}
