//! The audit log: every command to the grid and admin APIs (dispatch, keep-alive, reset,
//! kill), answered or refused, with who sent it, a digest of its body and its outcome.
//!
//! One redb table in its own file (`audit.redb` in the data directory). Each record is
//! committed with immediate durability *before* the response leaves (the middleware awaits
//! [`AuditLog::record`]), so an answered command is never missing after a crash. Records are
//! numbered from 1; the oldest beyond [`AUDIT_RETENTION`] are removed as new ones come.
//!
//! Keep-alives come every second or so from each controller: the log keeps one per
//! (caller, outcome) per [`KEEPALIVE_AUDIT_EVERY`] ([`Coalescer`]), so that a day of
//! keep-alives does not push the commands out of the retention, while a change of controller
//! or of outcome (a refused keep-alive) is recorded at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Records kept; older ones are removed as new ones are written.
pub const AUDIT_RETENTION: u64 = 1_000_000;
/// The most records one `GET /api/v1/audit` returns (and its default `limit`).
pub const AUDIT_PAGE_MAX: usize = 1_000;
/// A keep-alive with the same caller and outcome as one recorded less than this long ago is
/// not recorded again.
pub const KEEPALIVE_AUDIT_EVERY: Duration = Duration::from_secs(60);
/// Callers the keep-alive coalescer remembers at most (then it forgets them all: the next
/// keep-alive of each is recorded).
pub const COALESCER_CALLERS_MAX: usize = 4_096;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// The identity recorded for a request that presented no valid credential.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// One command and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Its number (from 1, increasing).
    pub seq: u64,
    /// When it was answered, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who sent it ([`UNAUTHENTICATED`] without a valid credential).
    pub identity: String,
    /// The client's address (for a forwarded command: the node that forwarded it).
    pub peer: String,
    /// `grid` or `admin`.
    pub api: String,
    /// `POST /api/v1/dispatch`.
    pub request: String,
    /// The hex SHA-256 of the request's body.
    pub body_sha256: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The error kind of a refused command (`unauthenticated`, `forbidden`, `busy`, ...).
    pub error: Option<String>,
    /// The node that forwarded it (in a cluster), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_by: Option<String>,
}

/// The durable log.
pub struct AuditLog {
    db: Database,
    path: PathBuf,
    next: Mutex<u64>,
}

fn failed(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("audit log {}: {what}: {e}", path.display())
}

impl AuditLog {
    /// Open (or create) the log at `path`.
    pub fn open(path: &Path) -> Result<Arc<AuditLog>, String> {
        let db = Database::create(path).map_err(|e| failed(path, "open", e))?;
        let txn = db.begin_write().map_err(|e| failed(path, "begin", e))?;
        txn.open_table(TABLE)
            .map_err(|e| failed(path, "table", e))?;
        txn.commit().map_err(|e| failed(path, "commit", e))?;
        let last = {
            let read = db.begin_read().map_err(|e| failed(path, "read", e))?;
            let table = read
                .open_table(TABLE)
                .map_err(|e| failed(path, "table", e))?;
            let last = table.last().map_err(|e| failed(path, "last", e))?;
            last.map_or(0, |(k, _)| k.value())
        };
        Ok(Arc::new(AuditLog {
            db,
            path: path.to_owned(),
            next: Mutex::new(last + 1),
        }))
    }

    /// Write `record` (its `seq` is assigned here) durably; returns its number. Blocking:
    /// call from a blocking thread.
    pub fn record_blocking(&self, mut record: AuditRecord) -> Result<u64, String> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        record.seq = *next;
        let bytes = serde_json::to_vec(&record).map_err(|e| failed(&self.path, "encode", e))?;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| failed(&self.path, "begin", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| failed(&self.path, "durability", e))?;
        {
            let mut table = txn
                .open_table(TABLE)
                .map_err(|e| failed(&self.path, "table", e))?;
            table
                .insert(record.seq, bytes.as_slice())
                .map_err(|e| failed(&self.path, "insert", e))?;
            // One record in, the one past the retention out.
            if record.seq > AUDIT_RETENTION {
                table
                    .remove(record.seq - AUDIT_RETENTION)
                    .map_err(|e| failed(&self.path, "retention", e))?;
            }
        }
        txn.commit().map_err(|e| failed(&self.path, "commit", e))?;
        *next += 1;
        Ok(record.seq)
    }

    /// [`AuditLog::record_blocking`] on the blocking pool.
    pub async fn record(self: &Arc<Self>, record: AuditRecord) -> Result<u64, String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.record_blocking(record))
            .await
            .map_err(|e| format!("audit log: {e}"))?
    }

    /// Records after number `since` (exclusive), oldest first, at most `limit`; without
    /// `since`, the newest `limit`, oldest first.
    pub fn list(&self, since: Option<u64>, limit: usize) -> Result<Vec<AuditRecord>, String> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| failed(&self.path, "read", e))?;
        let table = read
            .open_table(TABLE)
            .map_err(|e| failed(&self.path, "table", e))?;
        let decode = |r: Result<(redb::AccessGuard<u64>, redb::AccessGuard<&[u8]>), _>| {
            let (_, v) = r.map_err(|e| failed(&self.path, "scan", e))?;
            serde_json::from_slice::<AuditRecord>(v.value())
                .map_err(|e| failed(&self.path, "decode", e))
        };
        match since {
            Some(s) => {
                let range = table
                    .range(s.saturating_add(1)..)
                    .map_err(|e| failed(&self.path, "range", e))?;
                range.take(limit).map(decode).collect()
            }
            None => {
                let range = table.iter().map_err(|e| failed(&self.path, "scan", e))?;
                let mut newest: Vec<AuditRecord> = range
                    .rev()
                    .take(limit)
                    .map(decode)
                    .collect::<Result<_, _>>()?;
                newest.reverse();
                Ok(newest)
            }
        }
    }
}

/// Which keep-alives to record: one per (caller, status) per [`KEEPALIVE_AUDIT_EVERY`].
/// Pure: time is an argument.
#[derive(Debug, Default)]
pub struct Coalescer {
    last: HashMap<(String, u16), Duration>,
}

impl Coalescer {
    /// Whether a keep-alive from `caller` answered `status` at `now` is to be recorded (and
    /// if so, remember it).
    pub fn keep(&mut self, caller: &str, status: u16, now: Duration) -> bool {
        let key = (caller.to_owned(), status);
        if let Some(at) = self.last.get(&key) {
            if now.saturating_sub(*at) < KEEPALIVE_AUDIT_EVERY {
                return false;
            }
        }
        if self.last.len() >= COALESCER_CALLERS_MAX {
            self.last.clear();
        }
        self.last.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(identity: &str, status: u16) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at_ms: 1,
            identity: identity.into(),
            peer: "127.0.0.1:1".into(),
            api: "grid".into(),
            request: "POST /api/v1/dispatch".into(),
            body_sha256: super::super::hex(&super::super::hash_token("")),
            status,
            error: None,
            forwarded_by: None,
        }
    }

    #[test]
    fn records_are_numbered_kept_across_a_reopen_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        {
            let log = AuditLog::open(&path).unwrap();
            for i in 0..5 {
                assert_eq!(
                    log.record_blocking(record("a", 200 + i)).unwrap(),
                    u64::from(i) + 1
                );
            }
        }
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.record_blocking(record("b", 403)).unwrap(), 6);
        let newest: Vec<u64> = log.list(None, 2).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(newest, [5, 6]);
        let after: Vec<u64> = log
            .list(Some(3), 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(after, [4, 5, 6]);
        assert_eq!(
            log.list(Some(1), 1).unwrap()[0],
            AuditRecord {
                seq: 2,
                ..record("a", 201)
            }
        );
    }

    #[test]
    fn keep_alives_are_coalesced_per_caller_and_outcome() {
        let mut c = Coalescer::default();
        let s = Duration::from_secs;
        assert!(c.keep("scada", 204, s(0)));
        assert!(!c.keep("scada", 204, s(1)));
        assert!(c.keep("other", 204, s(1)), "another controller: at once");
        assert!(c.keep("scada", 403, s(2)), "another outcome: at once");
        assert!(!c.keep("scada", 204, s(59)));
        assert!(c.keep("scada", 204, s(60)));
    }
}
