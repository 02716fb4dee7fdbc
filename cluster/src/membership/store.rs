//! The membership group's storage: openraft's log store and state machine over one redb file.
//!
//! Raft's safety rests on a node never forgetting its vote or an entry it acknowledged, so
//! every write (vote, log, committed index, snapshot) is a redb write transaction committed
//! with redb's default `Durability::Immediate` (fsynced) before openraft hears it is done. A
//! node killed with -9 restarts with its vote and log; it rebuilds its state machine from the
//! stored snapshot plus the log up to the stored committed index (openraft re-applies it), so
//! the applied state itself is not written on every apply.
//!
//! The file also holds the configured voter list: a voter's raft id is its index in that list,
//! so a node started with another list would talk about other nodes under the same ids.
//! [`open`] refuses it.
//!
//! redb is synchronous: every access runs on tokio's blocking pool, not on a runtime thread.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Mutex};

use super::types::{AppliedState, CommittedView, RaftNodeId, TypeConfig};
use super::Storage;

/// Small records by name (voters, vote, committed, last purged, snapshot).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The raft log, by index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

const KEY_VOTERS: &str = "voters";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

type Sto = StorageError<RaftNodeId>;

/// The open database. When the last handle drops (the raft core, its replication tasks and
/// its state machine worker all hold one), the file is closed and then `closed` fires, so
/// [`super::Membership::shutdown`] can wait until the file may be opened again.
pub(crate) struct Db {
    // Field order matters: the database closes before the signal goes out.
    db: Database,
    _closed: oneshot::Sender<()>,
}

/// A storage failure inside this module.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("encoding a stored record: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding a stored record (corrupt file?): {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("the blocking storage task failed: {0}")]
    Blocking(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why the store cannot be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The file holds another voter list.
    VoterMismatch { stored: Vec<String> },
    /// Anything else, with context.
    Storage(String),
}

/// The snapshot as stored: openraft's metadata and the encoded [`AppliedState`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftNodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    Ok(rmp_serde::to_vec_named(v)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

impl Db {
    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(META)?;
        let v = table.get(key)?;
        v.map(|g| decode(g.value())).transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode(value)?;
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(META)?;
            table.insert(key, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn read_log(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOG)?;
        let mut out = Vec::new();
        for item in table.range(range)? {
            let (_, v) = item?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId<RaftNodeId>> = self.get_meta(KEY_PURGED)?;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOG)?;
        let last = match table.last()? {
            Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value())?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    fn append(&self, entries: &[Entry<TypeConfig>]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(LOG)?;
            for e in entries {
                let bytes = encode(e)?;
                table.insert(e.log_id.index, bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes the entries from `from` on (conflicting ones a new leader overwrites).
    fn truncate(&self, from: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(LOG)?;
            table.retain_in(from.., |_, _| false)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records `upto` as purged and deletes the entries up to it, in one transaction so a
    /// crash never leaves a gap the log state does not explain.
    fn purge(&self, upto: &LogId<RaftNodeId>) -> Result<(), StoreError> {
        let bytes = encode(&Some(*upto))?;
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            meta.insert(KEY_PURGED, bytes.as_slice())?;
            let mut table = tx.open_table(LOG)?;
            table.retain_in(..=upto.index, |_, _| false)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Runs `f` on the blocking pool (redb fsyncs; a runtime thread must not wait for a disk).
async fn blocking<T, F>(db: &Arc<Db>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
{
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::Blocking(e.to_string()))?
}

/// Opens (or creates) the store and checks its voter list against `voters`; a fresh store
/// records them. Also returns the signal that the file has been closed.
pub(crate) fn open(
    storage: &Storage,
    voters: &[String],
) -> Result<(Arc<Db>, oneshot::Receiver<()>), OpenError> {
    let (db, what) = match storage {
        Storage::Redb(path) => {
            let db = Database::create(path).map_err(|e| {
                let hint = if matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) {
                    " (another Membership of this process still has it open)"
                } else {
                    ""
                };
                OpenError::Storage(format!("opening {}: {e}{hint}", path.display()))
            })?;
            (db, path.display().to_string())
        }
        Storage::InMemory => {
            let db = Database::builder()
                .create_with_backend(InMemoryBackend::new())
                .map_err(|e| OpenError::Storage(format!("creating the in-memory store: {e}")))?;
            (db, "the in-memory store".to_string())
        }
    };
    let ctx = |e: StoreError| OpenError::Storage(format!("{what}: {e}"));
    let stored = (|| -> Result<Option<Vec<String>>, StoreError> {
        let tx = db.begin_write()?;
        let stored = {
            let mut meta = tx.open_table(META)?;
            // Creating the log table here lets every later read open it.
            tx.open_table(LOG)?;
            let stored: Option<Vec<String>> = meta
                .get(KEY_VOTERS)?
                .map(|g| decode(g.value()))
                .transpose()?;
            if stored.is_none() {
                meta.insert(KEY_VOTERS, encode(&voters)?.as_slice())?;
            }
            stored
        };
        tx.commit()?;
        Ok(stored)
    })()
    .map_err(ctx)?;
    if let Some(stored) = stored {
        if stored != voters {
            return Err(OpenError::VoterMismatch { stored });
        }
    }
    let (tx, rx) = oneshot::channel();
    Ok((Arc::new(Db { db, _closed: tx }), rx))
}

/// openraft's log store over [`Db`]; clones share the database (the log reader is one).
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        LogStore { db }
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Sto> {
        let r = bounds(&range);
        blocking(&self.db, move |db| db.read_log(r))
            .await
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Sto> {
        blocking(&self.db, |db| db.log_state())
            .await
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> Result<(), Sto> {
        let vote = *vote;
        blocking(&self.db, move |db| db.put_meta(KEY_VOTE, &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftNodeId>>, Sto> {
        blocking(&self.db, |db| db.get_meta(KEY_VOTE))
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftNodeId>>) -> Result<(), Sto> {
        blocking(&self.db, move |db| db.put_meta(KEY_COMMITTED, &committed))
            .await
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<RaftNodeId>>, Sto> {
        blocking(&self.db, |db| {
            Ok(db
                .get_meta::<Option<LogId<RaftNodeId>>>(KEY_COMMITTED)?
                .flatten())
        })
        .await
        .map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Sto>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        blocking(&self.db, move |db| db.append(&entries))
            .await
            .map_err(|e| -> Sto { StorageIOError::write_logs(&e).into() })?;
        // Committed with Durability::Immediate: the entries are on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), Sto> {
        blocking(&self.db, move |db| db.truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), Sto> {
        blocking(&self.db, move |db| db.purge(&log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// What the state machine holds in memory.
struct SmState {
    last_applied: Option<LogId<RaftNodeId>>,
    last_membership: StoredMembership<RaftNodeId, openraft::BasicNode>,
    data: AppliedState,
}

struct SmShared {
    db: Arc<Db>,
    /// The configured voters: commands naming anyone else are ignored (the proposer checks
    /// already; applying is deterministic either way since every node has the same list).
    voters: BTreeSet<String>,
    state: Mutex<SmState>,
    view: Arc<watch::Sender<CommittedView>>,
    /// Distinguishes snapshots built at the same log id.
    snapshot_seq: AtomicU64,
}

/// openraft's state machine: the up members and their epoch. Clones share it (the snapshot
/// builder is one).
#[derive(Clone)]
pub(crate) struct StateMachine {
    shared: Arc<SmShared>,
}

impl StateMachine {
    /// The state machine of `db`: its stored snapshot if any (openraft re-applies the log
    /// after it up to the committed index), else every voter up at epoch 0.
    pub(crate) async fn load(
        db: Arc<Db>,
        voters: &[String],
        view: Arc<watch::Sender<CommittedView>>,
    ) -> Result<Self, StoreError> {
        let stored: Option<StoredSnapshot> = blocking(&db, |db| db.get_meta(KEY_SNAPSHOT)).await?;
        let voters: BTreeSet<String> = voters.iter().cloned().collect();
        let state = match stored {
            Some(s) => SmState {
                last_applied: s.meta.last_log_id,
                last_membership: s.meta.last_membership,
                data: decode(&s.data)?,
            },
            None => SmState {
                last_applied: None,
                last_membership: StoredMembership::default(),
                data: AppliedState {
                    members: voters.clone(),
                    epoch: 0,
                },
            },
        };
        let sm = StateMachine {
            shared: Arc::new(SmShared {
                db,
                voters,
                state: Mutex::new(state),
                view,
                snapshot_seq: AtomicU64::new(0),
            }),
        };
        sm.publish(&sm.shared.state.lock().await.data);
        Ok(sm)
    }

    /// Shows `data` in the view, keeping the leader the metrics put there.
    fn publish(&self, data: &AppliedState) {
        self.shared.view.send_if_modified(|v| {
            if v.members == data.members && v.epoch == data.epoch {
                return false;
            }
            v.members = data.members.clone();
            v.epoch = data.epoch;
            true
        });
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Sto> {
        let (meta, data) = {
            let st = self.shared.state.lock().await;
            let data = encode(&st.data).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match &st.last_applied {
                Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
                None => format!("--{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.last_membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let sig = meta.signature();
        blocking(&self.shared.db, move |db| {
            db.put_meta(KEY_SNAPSHOT, &stored)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<RaftNodeId>>,
            StoredMembership<RaftNodeId, openraft::BasicNode>,
        ),
        Sto,
    > {
        let st = self.shared.state.lock().await;
        Ok((st.last_applied, st.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<AppliedState>, Sto>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut st = self.shared.state.lock().await;
        let mut out = Vec::new();
        for entry in entries {
            st.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => {
                    if self.shared.voters.contains(cmd.node()) {
                        st.data.apply(&cmd, entry.log_id.index);
                    } else {
                        tracing::warn!(?cmd, "ignoring a committed command about an unknown node");
                    }
                }
                EntryPayload::Membership(m) => {
                    st.last_membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            out.push(st.data.clone());
        }
        self.publish(&st.data);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Sto> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Sto> {
        let bytes = snapshot.into_inner();
        let data: AppliedState = decode(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        let sig = meta.signature();
        // Persisted before the state changes: a crash in between restarts from this snapshot.
        blocking(&self.shared.db, move |db| {
            db.put_meta(KEY_SNAPSHOT, &stored)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e))?;
        let mut st = self.shared.state.lock().await;
        st.last_applied = meta.last_log_id;
        st.last_membership = meta.last_membership.clone();
        st.data = data;
        self.publish(&st.data);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Sto> {
        let stored: Option<StoredSnapshot> =
            blocking(&self.shared.db, |db| db.get_meta(KEY_SNAPSHOT))
                .await
                .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
