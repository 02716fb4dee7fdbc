//! The VEN's durable state in its own redb file (`[openadr] store`): the registration the
//! VTN gave (ven id, registration id) and the [`EventBook`], as JSON values, so a restarted
//! node keeps its registration, answers repeated events as before and resumes a running
//! event's dispatch. Every write is one committed transaction; callers run it off the async
//! runtime (`spawn_blocking`), the file being small.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::book::EventBook;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("openadr");
const REGISTRATION: &str = "registration";
const BOOK: &str = "events";

/// What the VTN gave the VEN when it registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// `venID`.
    pub ven_id: String,
    /// `registrationID`.
    pub registration_id: String,
    /// `vtnID`.
    pub vtn_id: String,
}

/// The VEN's redb file.
pub struct VenStore {
    path: PathBuf,
    db: Database,
}

impl VenStore {
    /// Open (or create) the file.
    pub fn open(path: &Path) -> Result<VenStore, String> {
        let db = Database::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(VenStore {
            path: path.to_path_buf(),
            db,
        })
    }

    fn err(&self, e: &dyn std::fmt::Display) -> String {
        format!("{}: {e}", self.path.display())
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, String> {
        let txn = self.db.begin_read().map_err(|e| self.err(&e))?;
        let table = match txn.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(&e)),
        };
        let Some(v) = redb::ReadableTable::get(&table, key).map_err(|e| self.err(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| self.err(&format!("{key}: {e}")))
    }

    fn put<T: Serialize>(&self, key: &str, value: Option<&T>) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| self.err(&e))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.err(&e))?;
            match value {
                Some(v) => {
                    let bytes = serde_json::to_vec(v).map_err(|e| self.err(&e))?;
                    table
                        .insert(key, bytes.as_slice())
                        .map_err(|e| self.err(&e))?;
                }
                None => {
                    table.remove(key).map_err(|e| self.err(&e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(&e))
    }

    /// The stored registration.
    pub fn registration(&self) -> Result<Option<Registration>, String> {
        self.get(REGISTRATION)
    }

    /// Store (or with None forget) the registration.
    pub fn set_registration(&self, r: Option<&Registration>) -> Result<(), String> {
        self.put(REGISTRATION, r)
    }

    /// The stored events.
    pub fn book(&self) -> Result<EventBook, String> {
        Ok(self.get(BOOK)?.unwrap_or_default())
    }

    /// Store the events.
    pub fn set_book(&self, b: &EventBook) -> Result<(), String> {
        self.put(BOOK, Some(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_and_events_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ven.redb");
        let reg = Registration {
            ven_id: "v".into(),
            registration_id: "r".into(),
            vtn_id: "t".into(),
        };
        {
            let s = VenStore::open(&path).unwrap();
            assert_eq!(s.registration().unwrap(), None);
            s.set_registration(Some(&reg)).unwrap();
            s.set_book(&EventBook::default()).unwrap();
        }
        let s = VenStore::open(&path).unwrap();
        assert_eq!(s.registration().unwrap(), Some(reg));
        assert_eq!(s.book().unwrap(), EventBook::default());
        s.set_registration(None).unwrap();
        assert_eq!(s.registration().unwrap(), None);
    }
}
