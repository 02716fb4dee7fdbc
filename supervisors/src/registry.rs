//! Stable addresses: a path such as `site/tx-17/evse-3/session` resolves to the current
//! incarnation of the actor at that place in the tree.
//!
//! ractor gives a restarted actor a new `ActorRef`; holding the old one after a restart means
//! talking to a dead actor. The registry maps a path to whichever incarnation runs there now.
//! Supervisors keep it current: they register a child when it starts, mark it *restarting*
//! when it exits and will be restarted, and unregister it when it is gone for good.
//!
//! ## What a message sent during a restart gets
//! Never silence:
//! - [`Registry::send`] delivers to the running incarnation, or returns the message to the
//!   sender inside a [`SendError`] saying why ([`AddressError::Restarting`] between an exit
//!   and the next start, [`AddressError::Unknown`] if nothing lives at the path).
//! - [`Registry::send_when_ready`] and [`Registry::resolve`] wait, up to an explicit limit,
//!   for the next incarnation and deliver to it; past the limit the sender gets
//!   [`AddressError::TimedOut`] and its message back.
//! - A message an incarnation accepted into its mailbox but had not handled when it crashed
//!   is lost with that incarnation, as in Erlang. Requests that need an answer use calls,
//!   whose callers see the failure; state-changing commands are absolute and keyed so that a
//!   resend after a restart is harmless.
//!
//! ## Concurrency protocol (checked by the loom models in `tests/loom.rs`)
//! Every write bumps `epoch` (SeqCst) *after* changing the table and then reads `waiters`;
//! a waiter increments `waiters` *before* it reads `epoch` and looks at the table. Whichever
//! comes second in the SeqCst order sees the other: either the writer sees the waiter and
//! wakes it, or the waiter sees the new epoch and with it the table change. No lost wake-ups.
//! A stale writer cannot undo a newer incarnation: `mark_restarting` and `unregister` take
//! the incarnation they mean and do nothing if the path has moved on.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, Message};

use crate::path::ActorPath;
use crate::sync::{AtomicU64, AtomicUsize, ChangeSignal, Map};

/// Why a path could not be resolved to a running actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing is registered at the path.
    #[error("no actor at {0}")]
    Unknown(String),
    /// The actor at the path exited and its supervisor will start it again.
    #[error("{0} is restarting")]
    Restarting(String),
    /// No incarnation was running at the path within the limit.
    #[error("no running actor at {path} within {waited:?}")]
    TimedOut {
        /// The path.
        path: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The actor at the path takes another message type.
    #[error("the actor at {0} does not take this message type")]
    WrongType(String),
}

/// A message that could not be delivered, handed back with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendError<M> {
    /// Why it was not delivered.
    pub error: AddressError,
    /// The message, returned to the sender.
    pub message: M,
}

#[derive(Clone)]
struct Slot<H> {
    /// The running incarnation, `None` while restarting.
    handle: Option<H>,
    incarnation: u64,
}

/// The registry's table and its change protocol, generic over the handle type so that the
/// loom models can run it without actors. [`Registry`] is this table with `ActorCell`s.
pub struct Table<H> {
    slots: Map<ActorPath, Slot<H>>,
    next_incarnation: AtomicU64,
    epoch: AtomicU64,
    waiters: AtomicUsize,
    signal: ChangeSignal,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<H> {
    /// A running incarnation.
    Running(H, u64),
    /// The path is between incarnations.
    Restarting(u64),
    /// Nothing at the path.
    Unknown,
}

impl<H: Clone> Default for Table<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Clone> Table<H> {
    /// An empty table.
    pub fn new() -> Self {
        Table {
            slots: Map::new(),
            next_incarnation: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            signal: ChangeSignal::new(),
        }
    }

    fn changed(&self) {
        self.epoch.fetch_add(1, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            self.signal.wake_all();
        }
    }

    /// Make `handle` the running incarnation at `path`; returns its incarnation number, which
    /// is larger than any earlier one.
    pub fn register(&self, path: ActorPath, handle: H) -> u64 {
        // The number is taken while the path's entry is locked. Taken before the lock (as it
        // once was), two racing registrations of one path could store in the opposite order
        // of their numbers, leaving the older incarnation in the slot over the newer one (found
        // by the loom model `concurrent_registrations_the_newest_wins`).
        let mut incarnation = 0;
        self.slots.insert_with(path, || {
            incarnation = self.next_incarnation.fetch_add(1, SeqCst);
            Slot {
                handle: Some(handle),
                incarnation,
            }
        });
        self.changed();
        incarnation
    }

    /// Mark `path` as restarting if `incarnation` is still the one registered there.
    pub fn mark_restarting(&self, path: &str, incarnation: u64) -> bool {
        let done = self.slots.update(path, |slot| {
            if slot.incarnation == incarnation {
                slot.handle = None;
                true
            } else {
                false
            }
        });
        if done {
            self.changed();
        }
        done
    }

    /// Remove `path` if `incarnation` is still the one registered there.
    pub fn unregister(&self, path: &str, incarnation: u64) -> bool {
        let done = self
            .slots
            .remove_if(path, |slot| slot.incarnation == incarnation);
        if done {
            self.changed();
        }
        done
    }

    /// What runs at `path` now.
    pub fn lookup(&self, path: &str) -> Lookup<H> {
        match self.slots.get(path) {
            Some(Slot {
                handle: Some(h),
                incarnation,
            }) => Lookup::Running(h, incarnation),
            Some(Slot {
                handle: None,
                incarnation,
            }) => Lookup::Restarting(incarnation),
            None => Lookup::Unknown,
        }
    }

    /// Paths registered (running or restarting).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Block the calling thread until `path` runs an incarnation newer than `after` (or any,
    /// if `after` is 0). Only in loom models, where waiting is modelled with threads.
    #[cfg(gridvisor_loom)]
    pub fn wait_running_blocking(&self, path: &str, after: u64) -> (H, u64) {
        self.waiters.fetch_add(1, SeqCst);
        loop {
            let ticket = self.epoch.load(SeqCst);
            if let Lookup::Running(h, inc) = self.lookup(path) {
                if inc > after {
                    self.waiters.fetch_sub(1, SeqCst);
                    return (h, inc);
                }
            }
            self.signal.wait_past(&self.epoch, ticket);
        }
    }
}

#[cfg(not(gridvisor_loom))]
impl<H: Clone> Table<H> {
    /// Wait until `path` runs an incarnation newer than `after`, up to `limit`.
    async fn wait_running(&self, path: &str, after: u64, limit: Duration) -> Option<(H, u64)> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let deadline = tokio::time::Instant::now() + limit;
        self.waiters.fetch_add(1, SeqCst);
        let _waiting = Waiting(&self.waiters);
        loop {
            let notified = self.signal.notify.notified();
            tokio::pin!(notified);
            // Enabled before the check: a change after the check wakes this future.
            notified.as_mut().enable();
            let _ticket = self.epoch.load(SeqCst);
            if let Lookup::Running(h, inc) = self.lookup(path) {
                if inc > after {
                    return Some((h, inc));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Paths to current incarnations. Cheap to clone; every supervisor of a tree shares one.
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
/// use gridvisor_supervisors::{registry::Lookup, TreeContext};
///
/// let registry = Registry::new();
/// let tree = TreeContext { registry: Some(registry.clone()), ..TreeContext::default() };
/// let spec = ChildSpec::worker("w", |ctx: ChildContext, ()| async move { ctx.spawn(Worker, ()).await });
/// let sup = Supervisor::start(SupervisorConfig::new("app", Strategy::OneForOne).tree(tree), vec![spec])
///     .await
///     .unwrap();
/// // A stable path finds whichever incarnation runs now.
/// let Lookup::Running(first, incarnation) = registry.lookup_incarnation("app/w") else {
///     panic!("app/w runs")
/// };
/// first.kill();
/// let (second, _) = registry
///     .resolve_newer("app/w", incarnation, Duration::from_secs(5))
///     .await
///     .unwrap();
/// assert_ne!(first.get_id(), second.get_id());
/// registry.send("app/w", ()).unwrap();
/// assert!(registry.lookup("app/nobody").is_err());
/// sup.shutdown().await;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    table: Arc<Table<ActorCell>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("paths", &self.table.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn table(&self) -> &Table<ActorCell> {
        &self.table
    }

    /// The running incarnation at `path`.
    pub fn lookup(&self, path: &str) -> Result<ActorCell, AddressError> {
        match self.table.lookup(path) {
            Lookup::Running(cell, _) => Ok(cell),
            Lookup::Restarting(_) => Err(AddressError::Restarting(path.to_string())),
            Lookup::Unknown => Err(AddressError::Unknown(path.to_string())),
        }
    }

    /// The running incarnation at `path` and its incarnation number.
    pub fn lookup_incarnation(&self, path: &str) -> Lookup<ActorCell> {
        self.table.lookup(path)
    }

    /// The running incarnation at `path`, waiting up to `limit` through a restart (or for a
    /// first start).
    #[cfg(not(gridvisor_loom))]
    pub async fn resolve(&self, path: &str, limit: Duration) -> Result<ActorCell, AddressError> {
        self.table
            .wait_running(path, 0, limit)
            .await
            .map(|(cell, _)| cell)
            .ok_or_else(|| AddressError::TimedOut {
                path: path.to_string(),
                waited: limit,
            })
    }

    /// The first incarnation at `path` newer than `after`, waiting up to `limit`.
    #[cfg(not(gridvisor_loom))]
    pub async fn resolve_newer(
        &self,
        path: &str,
        after: u64,
        limit: Duration,
    ) -> Result<(ActorCell, u64), AddressError> {
        self.table
            .wait_running(path, after, limit)
            .await
            .ok_or_else(|| AddressError::TimedOut {
                path: path.to_string(),
                waited: limit,
            })
    }

    /// Send `message` to the running incarnation at `path`, or hand it back with the reason.
    pub fn send<M: Message>(&self, path: &str, message: M) -> Result<(), SendError<M>> {
        match self.table.lookup(path) {
            Lookup::Running(cell, _) => deliver(path, &cell, message),
            Lookup::Restarting(_) => Err(SendError {
                error: AddressError::Restarting(path.to_string()),
                message,
            }),
            Lookup::Unknown => Err(SendError {
                error: AddressError::Unknown(path.to_string()),
                message,
            }),
        }
    }

    /// Send `message` to the incarnation at `path`, waiting up to `limit` for one to be
    /// running (through a restart). The message is delivered to exactly one incarnation's
    /// mailbox, or handed back.
    #[cfg(not(gridvisor_loom))]
    pub async fn send_when_ready<M: Message>(
        &self,
        path: &str,
        mut message: M,
        limit: Duration,
    ) -> Result<(), SendError<M>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut after = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some((cell, inc)) = self.table.wait_running(path, after, left).await else {
                return Err(SendError {
                    error: AddressError::TimedOut {
                        path: path.to_string(),
                        waited: limit,
                    },
                    message,
                });
            };
            match deliver(path, &cell, message) {
                Ok(()) => return Ok(()),
                // That incarnation died before the registry heard; wait for a newer one.
                Err(SendError {
                    error: AddressError::Restarting(_),
                    message: m,
                }) => {
                    message = m;
                    after = inc;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Paths currently registered (running or restarting) under `prefix`, sorted.
    pub fn paths_under(&self, prefix: &ActorPath) -> Vec<ActorPath> {
        let mut v = self.table.slots.collect(|k, _| {
            if k.starts_with(prefix) {
                Some(k.clone())
            } else {
                None
            }
        });
        v.sort();
        v
    }

    /// Number of registered paths.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn deliver<M: Message>(path: &str, cell: &ActorCell, message: M) -> Result<(), SendError<M>> {
    // Checked first: ractor drops a message of the wrong type instead of returning it.
    // Registered cells are local, so the check always has an answer.
    if cell.is_message_type_of::<M>() != Some(true) {
        return Err(SendError {
            error: AddressError::WrongType(path.to_string()),
            message,
        });
    }
    match cell.send_message(message) {
        Ok(()) => Ok(()),
        Err(ractor::MessagingErr::SendErr(message)) => Err(SendError {
            error: AddressError::Restarting(path.to_string()),
            message,
        }),
        // For a local actor whose type matched, ractor 0.16 returns only SendErr: boxing a
        // local message cannot fail and ChannelClosed is for signals.
        Err(e) => unreachable!("ractor send to a local actor of the right type failed: {e:?}"),
    }
}
