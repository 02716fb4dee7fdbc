//! Per-node checkpoints: durable, group-committed, in one redb file.
//!
//! An actor checkpoints its state (last applied setpoint keys, session state, safe state)
//! under its stable path, e.g. `site/tx-1/chargers/evse-3/link`, and reads it back when it
//! restarts. Values are any `Serialize` type, encoded as MessagePack with field names
//! (`rmp_serde::to_vec_named`), so a field added later does not break an old checkpoint; they
//! live in one table, `checkpoints`, keyed by the path.
//!
//! # Writes: one writer thread, group commit
//!
//! Every write ([`CheckpointStore::put`], [`CheckpointStore::remove`]) is queued to a single
//! writer, a plain OS thread because a redb commit blocks on `fsync`. The writer takes the
//! first queued write, drains whatever else is already queued (at most
//! [`StoreLimits::batch`] writes), applies them in queue order in one write transaction and
//! commits it with [`Durability::Immediate`]; only then does each write's future complete.
//! Under load many writes share one `fsync` ([`CheckpointStore::stats`] counts both).
//! If a batch's transaction fails, the writer retries its writes one transaction each, so one
//! bad write cannot fail its neighbours.
//!
//! The queue is bounded by [`StoreLimits::queue`] pending writes (queued or in the batch being
//! committed): when it is full, `put` waits (backpressure) and
//! [`CheckpointStore::try_put`] returns [`CheckpointError::QueueFull`].
//!
//! # Invariants
//!
//! - **Acked means durable.** A `put` or `remove` that returned `Ok` is in a committed,
//!   fsynced transaction: a reopened store (after a crash too) sees it.
//! - **Reads see every completed write.** [`CheckpointStore::get`] opens its own read
//!   transaction, without the queue; a write completes only after its commit.
//! - **Queue order is commit order.** There is one queue and one writer, and a batch applies
//!   its writes in order: of two writes to one key, the later one queued wins.
//! - **Nothing queued is lost on close.** [`CheckpointStore::close`], and dropping the last
//!   handle, stop taking writes, let the writer drain and commit everything queued, and join
//!   it.
//! - **A corrupt value is an error naming its key** ([`CheckpointError::Decode`]), never a
//!   panic or a silent default.
//!
//! A write whose future is dropped before it completes may still be committed (it was queued);
//! await it, or [`CheckpointStore::flush`], to know.
//!
//! # In memory
//!
//! [`CheckpointStore::in_memory`] has the same API over a map in memory, without the writer
//! thread: a write is applied (and "durable") when its call returns. It is for deterministic
//! runs (the chaos simulator, on a paused current-thread runtime), where a second OS thread
//! completing writes at wall-clock moments would make the order of events depend on the
//! machine. Its values are encoded exactly as on disk, so a value that would not encode or
//! decode fails the same way. It keeps nothing after the process ends.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, TableDefinition, TableError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The one table all checkpoints live in: actor path → MessagePack value.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

/// The name of the writer thread.
const WRITER_THREAD_NAME: &str = "gridvisor-checkpoint-writer";

/// The default for [`StoreLimits::queue`]: pending writes.
pub const DEFAULT_QUEUE: usize = 65_536;
/// The default for [`StoreLimits::batch`]: writes per transaction.
pub const DEFAULT_BATCH: usize = 8_192;
/// The largest [`StoreLimits::queue`] accepted (the queue's slots are allocated up front).
pub const MAX_QUEUE: usize = 1 << 20;
/// The largest [`StoreLimits::batch`] accepted.
pub const MAX_BATCH: usize = 1 << 20;
/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest encoded value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// How much the store queues and batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// The most writes pending at once (queued, or in the batch being committed); a `put`
    /// beyond it waits. 1 to [`MAX_QUEUE`]; default [`DEFAULT_QUEUE`].
    pub queue: usize,
    /// The most writes committed in one transaction. 1 to [`MAX_BATCH`]; default
    /// [`DEFAULT_BATCH`].
    pub batch: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            queue: DEFAULT_QUEUE,
            batch: DEFAULT_BATCH,
        }
    }
}

impl StoreLimits {
    /// Check both limits are within their bounds.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        for (field, value, max) in [
            ("queue", self.queue, MAX_QUEUE),
            ("batch", self.batch, MAX_BATCH),
        ] {
            if value == 0 || value > max {
                return Err(CheckpointError::InvalidLimits { field, value, max });
            }
        }
        Ok(())
    }
}

/// What the writer has done since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes (puts and removes) committed.
    pub writes: u64,
}

/// Why a checkpoint operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The store could not be opened.
    #[error("cannot open checkpoint store {}: {reason}", path.display())]
    Open {
        /// The store's file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The limits are out of bounds.
    #[error("checkpoint store limit {field} = {value} is outside 1..={max}")]
    InvalidLimits {
        /// `queue` or `batch`.
        field: &'static str,
        /// The value given.
        value: usize,
        /// The largest value accepted.
        max: usize,
    },
    /// The key is empty or too long.
    #[error("checkpoint key {key:?} is invalid: {reason}")]
    InvalidKey {
        /// The key (cut to [`MAX_KEY_BYTES`] characters at most).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value could not be encoded.
    #[error("cannot encode checkpoint {key}: {reason}")]
    Encode {
        /// The key it was to be stored under.
        key: String,
        /// The encoder's error.
        reason: String,
    },
    /// The encoded value is larger than [`MAX_VALUE_BYTES`].
    #[error("checkpoint {key} is {bytes} bytes encoded, over the limit of {limit}")]
    TooLarge {
        /// The key it was to be stored under.
        key: String,
        /// Its encoded size.
        bytes: usize,
        /// [`MAX_VALUE_BYTES`].
        limit: usize,
    },
    /// A stored value does not decode as the type asked for: corrupt, or written as another
    /// type.
    #[error("cannot decode checkpoint {key}: {reason}")]
    Decode {
        /// The key it is stored under.
        key: String,
        /// The decoder's error.
        reason: String,
    },
    /// The database failed.
    #[error("checkpoint storage failed: {0}")]
    Storage(String),
    /// The store was closed.
    #[error("checkpoint store is closed")]
    Closed,
    /// The write committed here but its replica did not confirm it (see [`Replicator`]): it
    /// must not be acknowledged as durable.
    #[error("checkpoint {key} was not replicated: {reason}")]
    Replication {
        /// The key written.
        key: String,
        /// Why the replica did not confirm it.
        reason: String,
    },
    /// The queue is full ([`CheckpointStore::try_put`] only).
    #[error("checkpoint queue is full ({limit} pending writes)")]
    QueueFull {
        /// [`StoreLimits::queue`].
        limit: usize,
    },
}

fn storage(during: &str, error: impl fmt::Display) -> CheckpointError {
    CheckpointError::Storage(format!("{during}: {error}"))
}

/// Check a key: not empty, at most [`MAX_KEY_BYTES`].
fn check_key(key: &str) -> Result<(), CheckpointError> {
    let reason = if key.is_empty() {
        "empty"
    } else if key.len() > MAX_KEY_BYTES {
        "longer than MAX_KEY_BYTES"
    } else {
        return Ok(());
    };
    Err(CheckpointError::InvalidKey {
        key: key.chars().take(MAX_KEY_BYTES).collect(),
        reason,
    })
}

/// One queued operation.
enum Op {
    Put {
        key: String,
        bytes: Vec<u8>,
    },
    Remove {
        key: String,
    },
    /// Completes once everything queued before it has been committed (or has failed).
    Barrier,
}

impl Op {
    fn is_write(&self) -> bool {
        !matches!(self, Op::Barrier)
    }
}

/// One queued operation with its completion and its place in the queue's bound.
struct Request {
    op: Op,
    done: oneshot::Sender<Result<(), CheckpointError>>,
    /// Released when the request completes, after its commit.
    _permit: OwnedSemaphorePermit,
}

impl Request {
    fn complete(self, result: Result<(), CheckpointError>) {
        // The caller may have stopped waiting; the write stands either way.
        let _ = self.done.send(result);
    }
}

/// What the writer thread and the handles share.
struct Shared {
    db: Database,
    commits: AtomicU64,
    writes: AtomicU64,
}

struct Inner {
    shared: Arc<Shared>,
    /// `None` once closed.
    sender: Mutex<Option<SyncSender<Request>>>,
    /// One permit per pending write: the queue's bound, awaited for backpressure.
    permits: Arc<Semaphore>,
    writer: Mutex<Option<JoinHandle<()>>>,
    limits: StoreLimits,
}

use crate::lock;

impl Inner {
    /// Stop taking writes, let the writer commit everything queued, and join it. Idempotent.
    fn shutdown(&self) {
        self.permits.close();
        drop(lock(&self.sender).take());
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            if writer.join().is_err() {
                tracing::error!("checkpoint writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The completion of one queued write: resolves once the transaction holding it has been
/// committed durably (or has failed). Dropping it does not cancel the write.
#[must_use = "a ticket resolves when its write is durable; dropping it does not cancel the write"]
pub struct CommitTicket {
    done: TicketState,
}

enum TicketState {
    /// The local commit only.
    Local(oneshot::Receiver<Result<(), CheckpointError>>),
    /// The local commit, then the replica's confirmation.
    Replicated(futures::future::BoxFuture<'static, Result<(), CheckpointError>>),
}

impl fmt::Debug for CommitTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.done {
            TicketState::Local(_) => "local",
            TicketState::Replicated(_) => "replicated",
        };
        f.debug_struct("CommitTicket").field("kind", &kind).finish()
    }
}

impl Future for CommitTicket {
    type Output = Result<(), CheckpointError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.done {
            TicketState::Local(done) => Pin::new(done)
                .poll(cx)
                .map(|result| result.unwrap_or(Err(CheckpointError::Closed))),
            TicketState::Replicated(f) => f.as_mut().poll(cx),
        }
    }
}

impl CommitTicket {
    /// This ticket, then the replica's confirmation.
    fn then_replicate(self, copy: ReplicaCopy) -> CommitTicket {
        CommitTicket {
            done: TicketState::Replicated(Box::pin(async move {
                self.await?;
                copy.await
            })),
        }
    }
}

/// A write's copy to the replica, started when the write is queued.
type ReplicaCopy = futures::future::BoxFuture<'static, Result<(), CheckpointError>>;

/// Copies a node's checkpoints to another node before they count as durable (the cluster's
/// checkpoint replication): a write's ticket, and `put`/`remove`, complete only once the
/// local commit *and* `replicate` succeeded. Implementations decide which keys need a copy
/// (answering `Ok` at once for the others) and bound their own wait. `replicate` is called when
/// the write is queued, in write order; the copy is sent when its future is polled, after the
/// local commit (a dropped ticket's copy is never sent, and the write is not acknowledged).
pub trait Replicator: Send + Sync + 'static {
    /// Copy `key`'s new value (`None`: removed) to the replica; `Err` when the replica did
    /// not confirm it ([`CheckpointError::Replication`]).
    fn replicate(
        &self,
        key: String,
        value: Option<Vec<u8>>,
    ) -> futures::future::BoxFuture<'static, Result<(), CheckpointError>>;
}

/// The in-memory backend: the values, the counters and whether it was closed.
#[derive(Default)]
struct Memory {
    values: Mutex<BTreeMap<String, Vec<u8>>>,
    closed: std::sync::atomic::AtomicBool,
    commits: AtomicU64,
    writes: AtomicU64,
}

impl Memory {
    /// Apply one write at once, as its own "transaction".
    fn apply(&self, op: Op) -> Result<(), CheckpointError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CheckpointError::Closed);
        }
        let mut values = lock(&self.values);
        match op {
            Op::Put { key, bytes } => {
                values.insert(key, bytes);
            }
            Op::Remove { key } => {
                values.remove(&key);
            }
            Op::Barrier => return Ok(()),
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Where a store keeps its values.
#[derive(Clone)]
enum Backend {
    /// A redb file and its writer thread.
    Redb(Arc<Inner>),
    /// A map in memory ([`CheckpointStore::in_memory`]).
    Memory(Arc<Memory>),
}

/// A node's checkpoint store. Cheap to clone: every clone is a handle on the same store.
#[derive(Clone)]
pub struct CheckpointStore {
    backend: Backend,
    /// Set once, when the node joins a cluster; shared by every clone of the handle.
    replicator: Arc<std::sync::OnceLock<Arc<dyn Replicator>>>,
}

impl fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("in_memory", &self.is_in_memory())
            .field("limits", &self.limits())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A ticket that is already complete (the in-memory backend's writes).
fn completed(result: Result<(), CheckpointError>) -> CommitTicket {
    let (done, ticket) = oneshot::channel();
    // The receiver is right here: the send cannot fail.
    let _ = done.send(result);
    CommitTicket {
        done: TicketState::Local(ticket),
    }
}

impl CheckpointStore {
    /// Open (or create) the store in the file at `path` and start its writer thread.
    pub fn open(path: &Path, limits: StoreLimits) -> Result<Self, CheckpointError> {
        limits.validate()?;
        let open_error = |reason: String| CheckpointError::Open {
            path: path.to_path_buf(),
            reason,
        };
        let db = Database::create(path).map_err(|e| open_error(e.to_string()))?;
        // Create the table up front, so readers never find it missing.
        let txn = db.begin_write().map_err(|e| open_error(e.to_string()))?;
        txn.open_table(TABLE)
            .map_err(|e| open_error(e.to_string()))?;
        txn.commit().map_err(|e| open_error(e.to_string()))?;

        let shared = Arc::new(Shared {
            db,
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        });
        let (sender, receiver) = mpsc::sync_channel(limits.queue);
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(WRITER_THREAD_NAME.to_owned())
                .spawn(move || run_writer(&shared, &receiver, limits.batch))
                .map_err(|e| open_error(format!("cannot start the writer thread: {e}")))?
        };
        Ok(CheckpointStore {
            replicator: Arc::default(),
            backend: Backend::Redb(Arc::new(Inner {
                shared,
                sender: Mutex::new(Some(sender)),
                permits: Arc::new(Semaphore::new(limits.queue)),
                writer: Mutex::new(Some(writer)),
                limits,
            })),
        })
    }

    /// An empty store in memory, without a writer thread: every write is applied when its
    /// call returns (see the module documentation). For deterministic simulation.
    pub fn in_memory() -> Self {
        CheckpointStore {
            backend: Backend::Memory(Arc::new(Memory::default())),
            replicator: Arc::default(),
        }
    }

    /// Whether this store lives in memory ([`CheckpointStore::in_memory`]).
    pub fn is_in_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }

    /// The limits the store was opened with (the defaults for an in-memory store, which has
    /// no queue).
    pub fn limits(&self) -> StoreLimits {
        match &self.backend {
            Backend::Redb(inner) => inner.limits,
            Backend::Memory(_) => StoreLimits::default(),
        }
    }

    fn redb(&self) -> Option<&Arc<Inner>> {
        match &self.backend {
            Backend::Redb(inner) => Some(inner),
            Backend::Memory(_) => None,
        }
    }

    /// Replicate every later write with `replicator` (once: a store joins one cluster).
    /// Returns false, changing nothing, if a replicator was already set.
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) -> bool {
        self.replicator.set(replicator).is_ok()
    }

    /// The replicator's copy of `op`, if there is a replicator. Called when the write is
    /// queued, so that the replicator sees the writes in their order (it versions them).
    fn replica_of(&self, op: &Op) -> Option<ReplicaCopy> {
        let r = self.replicator.get()?;
        match op {
            Op::Put { key, bytes } => Some(r.replicate(key.clone(), Some(bytes.clone()))),
            Op::Remove { key } => Some(r.replicate(key.clone(), None)),
            Op::Barrier => None,
        }
    }

    /// Apply `op` and wait for it (and its replica): the body of `put` and `remove`.
    async fn write(&self, op: Op) -> Result<(), CheckpointError> {
        let replica = self.replica_of(&op);
        if let Backend::Memory(m) = &self.backend {
            m.apply(op)?;
        } else {
            let permit = self.acquire().await?;
            self.enqueue(op, permit)?.await?;
        }
        match replica {
            Some(copy) => copy.await,
            None => Ok(()),
        }
    }

    /// Store `value` under `key`; completes once it is committed durably (and, in a
    /// cluster, confirmed by its replica). Waits while the queue is full.
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), CheckpointError> {
        self.write(encode_put(key, value)?).await
    }

    /// Store bytes another node replicated here, as they are (they were encoded there) and
    /// without replicating them again. Completes once committed durably.
    pub async fn put_replica(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), CheckpointError> {
        check_key(key)?;
        let op = match value {
            Some(bytes) if bytes.len() > MAX_VALUE_BYTES => {
                return Err(CheckpointError::TooLarge {
                    key: key.to_owned(),
                    bytes: bytes.len(),
                    limit: MAX_VALUE_BYTES,
                })
            }
            Some(bytes) => Op::Put {
                key: key.to_owned(),
                bytes,
            },
            None => Op::Remove {
                key: key.to_owned(),
            },
        };
        if let Backend::Memory(m) = &self.backend {
            return m.apply(op);
        }
        let permit = self.acquire().await?;
        self.enqueue(op, permit)?.await
    }

    /// The raw bytes under `key` (what [`CheckpointStore::put_replica`] takes on another node).
    pub fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        check_key(key)?;
        let inner = match &self.backend {
            Backend::Redb(inner) => inner,
            Backend::Memory(m) => return Ok(lock(&m.values).get(key).cloned()),
        };
        let txn = inner
            .shared
            .db
            .begin_read()
            .map_err(|e| storage("begin read", e))?;
        let table = match txn.open_table(TABLE) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage("open table", e)),
        };
        Ok(table
            .get(key)
            .map_err(|e| storage("read", e))?
            .map(|g| g.value().to_vec()))
    }

    /// Queue `value` under `key` without waiting: [`CheckpointError::QueueFull`] if the queue
    /// is full. The ticket resolves once the write is committed durably (and, in a cluster,
    /// confirmed by its replica).
    pub fn try_put<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<CommitTicket, CheckpointError> {
        self.try_write(encode_put(key, value)?)
    }

    /// Queue the removal of `key` without waiting (a key that is not there is fine):
    /// [`CheckpointError::QueueFull`] if the queue is full. The ticket resolves once the
    /// removal is committed durably (and, in a cluster, confirmed by its replica). Queued
    /// after a `try_put` of the same key, it is committed after it (queue order).
    pub fn try_remove(&self, key: &str) -> Result<CommitTicket, CheckpointError> {
        check_key(key)?;
        self.try_write(Op::Remove {
            key: key.to_owned(),
        })
    }

    /// Queue `op` without waiting: the body of `try_put` and `try_remove`.
    fn try_write(&self, op: Op) -> Result<CommitTicket, CheckpointError> {
        let replica = self.replica_of(&op);
        let ticket = match &self.backend {
            Backend::Redb(inner) => {
                let permit = match Arc::clone(&inner.permits).try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(TryAcquireError::NoPermits) => {
                        return Err(CheckpointError::QueueFull {
                            limit: inner.limits.queue,
                        })
                    }
                    Err(TryAcquireError::Closed) => return Err(CheckpointError::Closed),
                };
                self.enqueue(op, permit)?
            }
            Backend::Memory(m) => {
                m.apply(op)?;
                completed(Ok(()))
            }
        };
        Ok(match replica {
            Some(copy) => ticket.then_replicate(copy),
            None => ticket,
        })
    }

    /// Remove `key` (a key that is not there is fine); completes once the removal is
    /// committed durably (and, in a cluster, confirmed by its replica). Waits while the
    /// queue is full.
    pub async fn remove(&self, key: &str) -> Result<(), CheckpointError> {
        check_key(key)?;
        self.write(Op::Remove {
            key: key.to_owned(),
        })
        .await
    }

    /// Read the value under `key`, decoded as `T`: `None` if there is none,
    /// [`CheckpointError::Decode`] naming the key if it does not decode.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CheckpointError> {
        let Some(bytes) = self.get_raw(key)? else {
            return Ok(None);
        };
        rmp_serde::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CheckpointError::Decode {
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Every key that starts with `prefix` (a plain string prefix), in order.
    pub fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, CheckpointError> {
        let inner = match &self.backend {
            Backend::Redb(inner) => inner,
            Backend::Memory(m) => {
                return Ok(lock(&m.values)
                    .range::<str, _>((
                        std::ops::Bound::Included(prefix),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect())
            }
        };
        let txn = inner
            .shared
            .db
            .begin_read()
            .map_err(|e| storage("begin read", e))?;
        let table = match txn.open_table(TABLE) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage("open table", e)),
        };
        let mut keys = Vec::new();
        for entry in table
            .range::<&str>(prefix..)
            .map_err(|e| storage("scan", e))?
        {
            let (key, _) = entry.map_err(|e| storage("scan", e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    /// Wait until every write queued before this call has been committed (or has failed).
    /// Returns at once on a closed store, whose writes were all committed when it closed.
    pub async fn flush(&self) {
        if self.is_in_memory() {
            // Every write was applied when its call returned.
            return;
        }
        let Ok(permit) = self.acquire().await else {
            return;
        };
        if let Ok(ticket) = self.enqueue(Op::Barrier, permit) {
            // A barrier cannot fail; an error here means the store closed, which drains too.
            let _ = ticket.await;
        }
    }

    /// What the writer has done since the store was opened.
    pub fn stats(&self) -> StoreStats {
        let (commits, writes) = match &self.backend {
            Backend::Redb(inner) => (&inner.shared.commits, &inner.shared.writes),
            Backend::Memory(m) => (&m.commits, &m.writes),
        };
        StoreStats {
            commits: commits.load(Ordering::Relaxed),
            writes: writes.load(Ordering::Relaxed),
        }
    }

    /// Close the store for every handle: further writes get [`CheckpointError::Closed`],
    /// everything queued is committed, and the writer thread is joined. Reads through other
    /// handles still work; the file is released when the last handle is dropped. Dropping
    /// the last handle closes the store the same way.
    pub fn close(self) {
        match &self.backend {
            Backend::Redb(inner) => inner.shutdown(),
            Backend::Memory(m) => m.closed.store(true, Ordering::Release),
        }
    }

    async fn acquire(&self) -> Result<OwnedSemaphorePermit, CheckpointError> {
        let inner = self.redb().ok_or(CheckpointError::Closed)?;
        Arc::clone(&inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| CheckpointError::Closed)
    }

    fn enqueue(
        &self,
        op: Op,
        permit: OwnedSemaphorePermit,
    ) -> Result<CommitTicket, CheckpointError> {
        let Some(inner) = self.redb() else {
            // The in-memory backend applies its writes without a queue; nothing queues there.
            return Err(CheckpointError::Storage(
                "the in-memory store has no write queue".to_owned(),
            ));
        };
        let (done, ticket) = oneshot::channel();
        let request = Request {
            op,
            done,
            _permit: permit,
        };
        let sender = lock(&inner.sender);
        let Some(sender) = sender.as_ref() else {
            return Err(CheckpointError::Closed);
        };
        // A permit bounds the requests in the channel to its capacity, so `Full` cannot
        // happen; report it as what it would mean all the same.
        match sender.try_send(request) {
            Ok(()) => Ok(CommitTicket {
                done: TicketState::Local(ticket),
            }),
            Err(TrySendError::Full(_)) => Err(CheckpointError::QueueFull {
                limit: inner.limits.queue,
            }),
            Err(TrySendError::Disconnected(_)) => Err(CheckpointError::Closed),
        }
    }
}

fn encode_put<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Op, CheckpointError> {
    check_key(key)?;
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| CheckpointError::Encode {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(CheckpointError::TooLarge {
            key: key.to_owned(),
            bytes: bytes.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(Op::Put {
        key: key.to_owned(),
        bytes,
    })
}

/// The writer thread: group-commit batches until every handle's sender is gone and the queue
/// is drained.
fn run_writer(shared: &Shared, queue: &Receiver<Request>, batch_limit: usize) {
    let mut batch: Vec<Request> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut writes = usize::from(first.op.is_write());
        batch.push(first);
        while writes < batch_limit {
            match queue.try_recv() {
                Ok(request) => {
                    writes += usize::from(request.op.is_write());
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        commit_batch(shared, &mut batch, writes);
    }
}

/// Commit `batch` (which holds `writes` writes) in one transaction and complete its requests;
/// if that fails, commit its writes one transaction each. Leaves `batch` empty.
fn commit_batch(shared: &Shared, batch: &mut Vec<Request>, writes: usize) {
    if writes == 0 {
        batch.drain(..).for_each(|request| request.complete(Ok(())));
        return;
    }
    match commit(shared, batch.iter().map(|request| &request.op)) {
        Ok(()) => batch.drain(..).for_each(|request| request.complete(Ok(()))),
        Err(error) if writes == 1 => {
            for request in batch.drain(..) {
                let result = if request.op.is_write() {
                    Err(error.clone())
                } else {
                    Ok(())
                };
                request.complete(result);
            }
        }
        Err(error) => {
            tracing::warn!(%error, writes, "checkpoint batch failed; committing its writes one by one");
            for request in batch.drain(..) {
                let result = if request.op.is_write() {
                    commit(shared, std::iter::once(&request.op))
                } else {
                    Ok(())
                };
                request.complete(result);
            }
        }
    }
}

/// Apply `ops` in order in one durable write transaction.
fn commit<'a>(shared: &Shared, ops: impl Iterator<Item = &'a Op>) -> Result<(), CheckpointError> {
    let mut txn = shared
        .db
        .begin_write()
        .map_err(|e| storage("begin write", e))?;
    let mut count = 0u64;
    let applied = txn
        .set_durability(Durability::Immediate)
        .map_err(|e| storage("set durability", e))
        .and_then(|()| {
            let mut table = txn
                .open_table(TABLE)
                .map_err(|e| storage("open table", e))?;
            for op in ops {
                match op {
                    Op::Put { key, bytes } => {
                        table
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(|e| storage(&format!("write {key}"), e))?;
                    }
                    Op::Remove { key } => {
                        table
                            .remove(key.as_str())
                            .map_err(|e| storage(&format!("remove {key}"), e))?;
                    }
                    Op::Barrier => continue,
                }
                count += 1;
            }
            Ok(())
        });
    if let Err(error) = applied {
        if let Err(abort) = txn.abort() {
            tracing::warn!(%abort, "aborting a failed checkpoint transaction failed");
        }
        return Err(error);
    }
    txn.commit().map_err(|e| storage("commit", e))?;
    shared.commits.fetch_add(1, Ordering::Relaxed);
    shared.writes.fetch_add(count, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Link {
        evse: String,
        last_dispatch: u64,
        kw: f64,
        sessions: Vec<u32>,
    }

    fn link(n: u64) -> Link {
        Link {
            evse: format!("evse-{n}"),
            last_dispatch: n,
            kw: n as f64 * -1.5,
            sessions: vec![1, 2, n as u32],
        }
    }

    fn open(dir: &tempfile::TempDir) -> CheckpointStore {
        CheckpointStore::open(&dir.path().join("checkpoints.redb"), StoreLimits::default())
            .expect("open the store")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_get_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let key = "site/tx-1/chargers/evse-3/link";
        assert_eq!(store.get::<Link>(key).unwrap(), None);
        store.put(key, &link(3)).await.unwrap();
        assert_eq!(store.get::<Link>(key).unwrap(), Some(link(3)));
        store.put(key, &link(4)).await.unwrap();
        assert_eq!(store.get::<Link>(key).unwrap(), Some(link(4)));
        store.put("site/name", "north").await.unwrap();
        assert_eq!(
            store.get::<String>("site/name").unwrap().as_deref(),
            Some("north")
        );
        assert_eq!(
            store.stats(),
            StoreStats {
                commits: 3,
                writes: 3
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_are_group_committed_and_durable() {
        const TASKS: u64 = 8;
        const PER_TASK: u64 = 1_250;
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let puts = (0..PER_TASK).map(|i| {
                    let store = store.clone();
                    async move {
                        let n = t * PER_TASK + i;
                        store
                            .put(&format!("site/tx-{t}/evse-{i:05}"), &link(n))
                            .await
                    }
                });
                futures::future::try_join_all(puts).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.writes, TASKS * PER_TASK);
        assert!(stats.commits < stats.writes, "no group commit: {stats:?}");
        store.close();

        let store = open(&dir);
        for t in 0..TASKS {
            let keys = store.keys_with_prefix(&format!("site/tx-{t}/")).unwrap();
            assert_eq!(keys.len() as u64, PER_TASK);
            for i in 0..PER_TASK {
                let got: Option<Link> = store.get(&format!("site/tx-{t}/evse-{i:05}")).unwrap();
                assert_eq!(got, Some(link(t * PER_TASK + i)));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_writes_win_and_a_reopened_store_sees_everything_acked() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut expected = BTreeMap::new();
        let mut tickets = Vec::new();
        for round in 0..50u64 {
            for k in 0..20u64 {
                let key = format!("site/tx-1/evse-{k}/session");
                tickets.push(store.try_put(&key, &(round, k)).unwrap());
                expected.insert(key, (round, k));
            }
        }
        for ticket in tickets {
            ticket.await.unwrap();
        }
        for (key, value) in &expected {
            assert_eq!(store.get::<(u64, u64)>(key).unwrap(), Some(*value));
        }
        drop(store);
        let store = open(&dir);
        for (key, value) in &expected {
            assert_eq!(store.get::<(u64, u64)>(key).unwrap(), Some(*value));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_commits_everything_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for k in 0..500u64 {
            // The tickets are dropped: the writes still stand.
            drop(store.try_put(&format!("q/{k:03}"), &k).unwrap());
        }
        store.close();
        let store = open(&dir);
        assert_eq!(store.keys_with_prefix("q/").unwrap().len(), 500);
        assert_eq!(store.get::<u64>("q/499").unwrap(), Some(499));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_waits_for_everything_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for k in 0..300u64 {
            drop(store.try_put(&format!("f/{k:03}"), &k).unwrap());
        }
        store.flush().await;
        assert_eq!(store.keys_with_prefix("f/").unwrap().len(), 300);
        assert_eq!(store.stats().writes, 300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_value_is_a_decode_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.redb");
        let store = CheckpointStore::open(&path, StoreLimits::default()).unwrap();
        store.put("site/tx-1/evse-1/link", &link(1)).await.unwrap();
        store.close();

        // Write garbage behind the store's back.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(TABLE).unwrap();
                // 0xc1 is never used by MessagePack.
                table
                    .insert("site/tx-1/evse-2/link", &[0xc1u8, 0x00][..])
                    .unwrap();
            }
            txn.commit().unwrap();
        }

        let store = CheckpointStore::open(&path, StoreLimits::default()).unwrap();
        let err = store.get::<Link>("site/tx-1/evse-2/link").unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Decode { key, .. } if key == "site/tx-1/evse-2/link"),
            "{err:?}"
        );
        assert!(err.to_string().contains("site/tx-1/evse-2/link"), "{err}");
        // A value of another type is an error too, not a default.
        let err = store.get::<u64>("site/tx-1/evse-1/link").unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Decode { key, .. } if key == "site/tx-1/evse-1/link"),
            "{err:?}"
        );
        assert_eq!(
            store.get::<Link>("site/tx-1/evse-1/link").unwrap(),
            Some(link(1))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remove_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.put("a/1", &1u32).await.unwrap();
        store.put("a/2", &2u32).await.unwrap();
        store.remove("a/1").await.unwrap();
        store.remove("a/never-written").await.unwrap();
        assert_eq!(store.get::<u32>("a/1").unwrap(), None);
        assert_eq!(store.get::<u32>("a/2").unwrap(), Some(2));
        store.close();
        let store = open(&dir);
        assert_eq!(
            store.keys_with_prefix("a/").unwrap(),
            vec!["a/2".to_owned()]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn try_remove_is_queued_in_order_with_try_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // Put, remove, put again, remove: queue order is commit order, the last one wins.
        let a = store.try_put("r/1", &1u32).unwrap();
        let b = store.try_remove("r/1").unwrap();
        let c = store.try_put("r/2", &2u32).unwrap();
        let d = store.try_remove("r/2").unwrap();
        let e = store.try_put("r/2", &3u32).unwrap();
        for t in [a, b, c, d, e] {
            t.await.unwrap();
        }
        store.close();
        let store = open(&dir);
        assert_eq!(
            store.keys_with_prefix("r/").unwrap(),
            vec!["r/2".to_owned()]
        );
        assert_eq!(store.get::<u32>("r/2").unwrap(), Some(3));
        let mem = CheckpointStore::in_memory();
        mem.try_put("r/1", &1u32).unwrap().await.unwrap();
        mem.try_remove("r/1").unwrap().await.unwrap();
        assert_eq!(mem.get::<u32>("r/1").unwrap(), None);
        assert!(matches!(
            mem.try_remove(""),
            Err(CheckpointError::InvalidKey { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_with_prefix_is_a_string_prefix_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for key in [
            "site/tx-1/b",
            "site/tx-10/a",
            "site/tx-1/a",
            "site/tx-2/a",
            "other",
        ] {
            store.put(key, &()).await.unwrap();
        }
        assert_eq!(
            store.keys_with_prefix("site/tx-1/").unwrap(),
            vec!["site/tx-1/a".to_owned(), "site/tx-1/b".to_owned()]
        );
        assert_eq!(store.keys_with_prefix("site/tx-1").unwrap().len(), 3);
        assert_eq!(store.keys_with_prefix("").unwrap().len(), 5);
        assert!(store.keys_with_prefix("zzz").unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_refuses_try_put_and_makes_put_wait() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits { queue: 4, batch: 2 };
        let store = CheckpointStore::open(&dir.path().join("checkpoints.redb"), limits).unwrap();
        // Occupy the whole queue.
        let held = Arc::clone(&store.redb().unwrap().permits)
            .try_acquire_many_owned(4)
            .unwrap();
        assert_eq!(
            store.try_put("k", &1u8).unwrap_err(),
            CheckpointError::QueueFull { limit: 4 }
        );
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.put("k", &2u8).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "put did not wait for a free slot");
        drop(held);
        waiting.await.unwrap().unwrap();
        assert_eq!(store.get::<u8>("k").unwrap(), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_store_refuses_writes_but_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.put("k", &7u32).await.unwrap();
        let other = store.clone();
        store.close();
        assert_eq!(other.put("k", &8u32).await, Err(CheckpointError::Closed));
        assert_eq!(other.remove("k").await, Err(CheckpointError::Closed));
        assert_eq!(
            other.try_put("k", &8u32).unwrap_err(),
            CheckpointError::Closed
        );
        other.flush().await;
        assert_eq!(other.get::<u32>("k").unwrap(), Some(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_is_refused_with_what_was_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert!(matches!(
            store.put("", &1u8).await,
            Err(CheckpointError::InvalidKey {
                reason: "empty",
                ..
            })
        ));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            store.get::<u8>(&long),
            Err(CheckpointError::InvalidKey { .. })
        ));
        let big = vec![0u8; MAX_VALUE_BYTES];
        let err = store.put("big", &big).await.unwrap_err();
        assert!(
            matches!(&err, CheckpointError::TooLarge { key, limit, .. } if key == "big" && *limit == MAX_VALUE_BYTES),
            "{err:?}"
        );

        // A type whose Serialize fails is the encode error's case.
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("refused on purpose"))
            }
        }
        let err = store.put("site/x", &Refuses).await.unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Encode { key, reason } if key == "site/x" && reason.contains("refused on purpose")),
            "{err:?}"
        );
        assert_eq!(store.stats().writes, 0);

        for (queue, batch, field) in [
            (0, 1, "queue"),
            (1, 0, "batch"),
            (MAX_QUEUE + 1, 1, "queue"),
        ] {
            let err =
                CheckpointStore::open(&dir.path().join("other.redb"), StoreLimits { queue, batch })
                    .unwrap_err();
            assert!(
                matches!(err, CheckpointError::InvalidLimits { field: f, .. } if f == field),
                "{err:?}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn in_memory_store_has_the_same_api_without_a_writer_thread() {
        let store = CheckpointStore::in_memory();
        assert!(store.is_in_memory());
        assert_eq!(store.get::<Link>("site/tx-1/evse-1/link").unwrap(), None);
        store.put("site/tx-1/evse-1/link", &link(1)).await.unwrap();
        store.put("site/tx-1/evse-2/link", &link(2)).await.unwrap();
        store.put("site/tx-10/evse-1/link", &link(3)).await.unwrap();
        store
            .try_put("site/tx-1/evse-1/link", &link(4))
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            store.get::<Link>("site/tx-1/evse-1/link").unwrap(),
            Some(link(4))
        );
        assert_eq!(
            store.keys_with_prefix("site/tx-1/").unwrap(),
            vec![
                "site/tx-1/evse-1/link".to_owned(),
                "site/tx-1/evse-2/link".to_owned()
            ]
        );
        store.remove("site/tx-1/evse-2/link").await.unwrap();
        store.remove("never-written").await.unwrap();
        assert_eq!(store.get::<Link>("site/tx-1/evse-2/link").unwrap(), None);
        store.flush().await;
        assert_eq!(
            store.stats(),
            StoreStats {
                commits: 6,
                writes: 6
            }
        );
        // A value of another type is a decode error naming the key, as on disk.
        let err = store.get::<u64>("site/tx-1/evse-1/link").unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Decode { key, .. } if key == "site/tx-1/evse-1/link"),
            "{err:?}"
        );
        // Bad keys and values are refused the same way.
        assert!(matches!(
            store.put("", &1u8).await,
            Err(CheckpointError::InvalidKey { .. })
        ));
        // Clones share the store; a closed one refuses writes and still reads.
        let other = store.clone();
        store.close();
        assert_eq!(other.put("k", &8u32).await, Err(CheckpointError::Closed));
        assert_eq!(other.remove("k").await, Err(CheckpointError::Closed));
        assert_eq!(
            other.try_put("k", &8u32).unwrap_err(),
            CheckpointError::Closed
        );
        assert_eq!(
            other.get::<Link>("site/tx-10/evse-1/link").unwrap(),
            Some(link(3))
        );
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("checkpoints.redb");
        let err = CheckpointStore::open(&path, StoreLimits::default()).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Open { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_open_of_the_same_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let _store = open(&dir);
        let err =
            CheckpointStore::open(&dir.path().join("checkpoints.redb"), StoreLimits::default())
                .unwrap_err();
        assert!(matches!(err, CheckpointError::Open { .. }), "{err:?}");
    }
}
