//! The authorization list: which id tokens may charge at this site, and the contract each
//! one brings (issue 21: identities, not bays).
//!
//! A token (its OCPP `type` and value) maps to a [`Contract`]: the driver or fleet, the
//! minimum state of charge discharging must respect, whether V2G is allowed at all, a
//! priority class, and the defaults used while the EV reports nothing (departure, target
//! SoC, capacity). Any accepted token may charge at any charger of the site.
//!
//! The pure core is [`decide`] (a token's entry and the site's [`UnknownTokens`] policy →
//! a [`Decision`]) and [`Contract::departure`] (time as an argument). [`AuthStore`] keeps
//! the list in its own redb file (values as JSON, so a field added later reads old
//! entries with its default) and a copy in memory: the CSMS's answers read the copy and
//! never wait on the disk; a change is committed durably before it is visible.
//!
//! # Invariants
//! - An unknown token is refused, or accepted with [`Contract::unknown`] (charge only: no
//!   discharge, ever), as `[authorization] unknown` says; never silently with more.
//! - A blocked entry is refused (`Blocked`); a deleted one is unknown from the next answer on.
//! - The seed file is read only when the store is new: the API's changes are not undone by
//!   a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::config::{DEFAULT_MIN_SOC_PCT, DEFAULT_TARGET_SOC_PCT, MAX_CAPACITY_KWH};

/// The longest token value or type accepted (OCPP 2.1's `idToken` is at most 255
/// characters; its `type` at most 20 in 2.0.1, a string in 2.1).
pub const MAX_TOKEN_CHARS: usize = 255;
/// The most entries the list holds (a bound on the store and on `GET /api/v1/tokens`).
pub const MAX_TOKENS: usize = 100_000;
/// The longest stay a contract may give as its default, s (7 days).
pub const MAX_STAY_S: u64 = 7 * 24 * 3600;
/// The capacity assumed for an EV whose contract and EV give none, kWh (a mid-size car).
pub const ASSUMED_CAPACITY_KWH: f64 = 60.0;
/// The stay assumed when neither the EV nor its contract gives a departure, s (8 h).
pub const ASSUMED_STAY_S: u64 = 8 * 3600;
/// Seconds in a day (time-of-day departures are in UTC).
const DAY_S: u64 = 24 * 3600;

const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The meta key set once the seed file was applied.
const SEEDED: &str = "seeded";

/// What the site does with a token it does not know (`[authorization] unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTokens {
    /// Refused (`Unknown`).
    Refuse,
    /// Accepted with [`Contract::unknown`]: charge only.
    ChargeOnly,
}

/// A token as OCPP names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenId {
    /// Its type (`ISO14443`, `eMAID`, `Central`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its value.
    pub value: String,
}

impl TokenId {
    /// A checked token id: both parts non-empty, at most [`MAX_TOKEN_CHARS`], no control
    /// characters and no `/` in the type (it is a path segment of the API).
    pub fn new(kind: &str, value: &str) -> Result<TokenId, String> {
        for (field, s) in [("type", kind), ("value", value)] {
            if s.is_empty() || s.chars().count() > MAX_TOKEN_CHARS {
                return Err(format!(
                    "token {field} must have 1 to {MAX_TOKEN_CHARS} characters"
                ));
            }
            if s.chars().any(char::is_control) {
                return Err(format!("token {field} has a control character"));
            }
        }
        if kind.contains('/') {
            return Err("token type must not contain `/`".into());
        }
        Ok(TokenId {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.kind, self.value)
    }
}

/// A driver's or fleet's contract: what the node may do with the vehicle the token brings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// The driver or fleet.
    pub name: String,
    /// Discharging never goes below this state of charge, % (0..=100).
    #[serde(default = "default_min_soc")]
    pub min_soc_pct: f64,
    /// Whether the vehicle may be discharged (V2G); default false.
    #[serde(default)]
    pub v2g: bool,
    /// Priority class, 0 (normal) to 9 (first served).
    #[serde(default)]
    pub priority: u8,
    /// Default departure as a time of day, `HH:MM` in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depart_at: Option<String>,
    /// Default departure as a stay from arrival, s (at most [`MAX_STAY_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stay_s: Option<u64>,
    /// The state of charge to leave with when the EV gives none, %.
    #[serde(default = "default_target_soc")]
    pub target_soc_pct: f64,
    /// The battery capacity when the EV reports none, kWh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_kwh: Option<f64>,
    /// Refused (`Blocked`) while true; default false.
    #[serde(default)]
    pub blocked: bool,
}

fn default_min_soc() -> f64 {
    DEFAULT_MIN_SOC_PCT
}

fn default_target_soc() -> f64 {
    DEFAULT_TARGET_SOC_PCT
}

impl Contract {
    /// The contract of an unknown token accepted by `unknown = "charge_only"`: no
    /// discharge, lowest priority, the assumed defaults.
    pub fn unknown() -> Contract {
        Contract {
            name: "unknown".into(),
            min_soc_pct: DEFAULT_MIN_SOC_PCT,
            v2g: false,
            priority: 0,
            depart_at: None,
            stay_s: None,
            target_soc_pct: DEFAULT_TARGET_SOC_PCT,
            capacity_kwh: None,
            blocked: false,
        }
    }

    /// Every field in range, or the first field that is not (named).
    pub fn validate(&self) -> Result<(), String> {
        let pct = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
        if self.name.trim().is_empty() || self.name.chars().count() > MAX_TOKEN_CHARS {
            return Err(format!("name: must have 1 to {MAX_TOKEN_CHARS} characters"));
        }
        if !pct(self.min_soc_pct) {
            return Err(format!(
                "min_soc_pct: {} is not in 0..=100",
                self.min_soc_pct
            ));
        }
        if !pct(self.target_soc_pct) || self.target_soc_pct < self.min_soc_pct {
            return Err(format!(
                "target_soc_pct: {} is not in min_soc_pct..=100",
                self.target_soc_pct
            ));
        }
        if self.priority > 9 {
            return Err(format!("priority: {} is not in 0..=9", self.priority));
        }
        if let Some(c) = self.capacity_kwh {
            if !(c.is_finite() && c > 0.0 && c <= MAX_CAPACITY_KWH) {
                return Err(format!(
                    "capacity_kwh: {c} is not in (0, {MAX_CAPACITY_KWH}]"
                ));
            }
        }
        match (&self.depart_at, self.stay_s) {
            (Some(_), Some(_)) => Err("depart_at and stay_s: give one, not both".into()),
            (Some(t), None) => time_of_day(t).map(|_| ()),
            (None, Some(s)) if s == 0 || s > MAX_STAY_S => {
                Err(format!("stay_s: {s} is not in 1..={MAX_STAY_S}"))
            }
            _ => Ok(()),
        }
    }

    /// When a vehicle arriving at `arrival` (wall clock) leaves by this contract: its
    /// `depart_at` time of day (UTC, the next one after arrival), its `stay_s`, or
    /// [`ASSUMED_STAY_S`]. The second item says whether the contract gave it.
    pub fn departure(&self, arrival: SystemTime) -> (SystemTime, bool) {
        if let Some(s) = self.stay_s {
            return (arrival + Duration::from_secs(s), true);
        }
        if let Some(at) = self.depart_at.as_deref().and_then(|t| time_of_day(t).ok()) {
            let now = arrival
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let day = now - now % DAY_S;
            let mut t = day + at;
            if t <= now {
                t += DAY_S;
            }
            return (UNIX_EPOCH + Duration::from_secs(t), true);
        }
        (arrival + Duration::from_secs(ASSUMED_STAY_S), false)
    }
}

/// `HH:MM` → seconds after midnight.
fn time_of_day(t: &str) -> Result<u64, String> {
    let bad = || format!("depart_at: {t:?} is not a time of day HH:MM (UTC)");
    let (h, m) = t.split_once(':').ok_or_else(bad)?;
    let h: u64 = h.parse().map_err(|_| bad())?;
    let m: u64 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 || t.len() != 5 {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

/// What the CSMS answers for a token.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Accepted, with its contract; `listed` is false for an unknown token accepted
    /// charge-only.
    Accepted {
        /// The contract that applies.
        contract: Contract,
        /// Whether the token is on the list.
        listed: bool,
    },
    /// On the list and blocked.
    Blocked,
    /// Not on the list, and the site refuses unknown tokens.
    Unknown,
}

/// The pure decision: a token's entry (None: not listed) under the site's policy.
pub fn decide(entry: Option<&Contract>, unknown: UnknownTokens) -> Decision {
    match (entry, unknown) {
        (Some(c), _) if c.blocked => Decision::Blocked,
        (Some(c), _) => Decision::Accepted {
            contract: c.clone(),
            listed: true,
        },
        (None, UnknownTokens::ChargeOnly) => Decision::Accepted {
            contract: Contract::unknown(),
            listed: false,
        },
        (None, UnknownTokens::Refuse) => Decision::Unknown,
    }
}

/// One entry of the seed file (`[[tokens]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedEntry {
    #[serde(rename = "type")]
    kind: String,
    value: String,
    #[serde(flatten)]
    contract: Contract,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(default)]
    tokens: Vec<SeedEntry>,
}

/// Parse a seed file's text (`file` names it in errors, with the line and column).
pub fn parse_seed(file: &str, text: &str) -> Result<Vec<(TokenId, Contract)>, String> {
    let seed: SeedFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or_else(String::new, |s| {
            let before = &text[..s.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(":{line}:{col}")
        });
        format!("{file}{at}: {}", e.message())
    })?;
    seed.tokens
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let id =
                TokenId::new(&e.kind, &e.value).map_err(|m| format!("{file}: tokens[{i}]: {m}"))?;
            e.contract
                .validate()
                .map_err(|m| format!("{file}: tokens[{i}].{m}"))?;
            Ok((id, e.contract))
        })
        .collect()
}

/// An error of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened, read or written.
    #[error("authorization store {path}: {reason}")]
    Io {
        /// The store's file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A value was refused (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The list holds [`MAX_TOKENS`] entries already.
    #[error("the authorization list is full ({MAX_TOKENS} tokens)")]
    Full,
}

/// The list in its redb file, with a copy in memory.
pub struct AuthStore {
    path: PathBuf,
    db: Database,
    tokens: RwLock<BTreeMap<TokenId, Contract>>,
    /// The site's policy for tokens not on the list.
    pub unknown: UnknownTokens,
}

impl AuthStore {
    /// Open (or create) the store at `path`; a new store takes the entries of `seed`.
    pub fn open(
        path: &Path,
        seed: Option<&Path>,
        unknown: UnknownTokens,
    ) -> Result<AuthStore, StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| io(&e))?;
        let store = AuthStore {
            path: path.to_path_buf(),
            db,
            tokens: RwLock::new(BTreeMap::new()),
            unknown,
        };
        let seeded = store.load()?;
        if !seeded {
            let entries = match seed {
                Some(file) => {
                    let text = std::fs::read_to_string(file).map_err(|e| {
                        StoreError::Invalid(format!("seed file {}: {e}", file.display()))
                    })?;
                    parse_seed(&file.display().to_string(), &text).map_err(StoreError::Invalid)?
                }
                None => Vec::new(),
            };
            store.write(&entries, &[], true)?;
        }
        Ok(store)
    }

    /// Read the file into memory; whether it was seeded.
    fn load(&self) -> Result<bool, StoreError> {
        let io = |e: &dyn std::fmt::Display| self.io(e);
        let txn = self.db.begin_read().map_err(|e| io(&e))?;
        let seeded = match txn.open_table(META) {
            Ok(t) => t.get(SEEDED).map_err(|e| io(&e))?.is_some(),
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(io(&e)),
        };
        let table = match txn.open_table(TOKENS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(seeded),
            Err(e) => return Err(io(&e)),
        };
        let mut map = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        for row in table.iter().map_err(|e| io(&e))? {
            let (k, v) = row.map_err(|e| io(&e))?;
            let (kind, value) = k.value().split_once('/').unwrap_or(("", k.value()));
            let contract: Contract = serde_json::from_str(v.value())
                .map_err(|e| io(&format!("entry {}: {e}", k.value())))?;
            map.insert(TokenId::new(kind, value).map_err(|e| io(&e))?, contract);
        }
        Ok(seeded)
    }

    fn io(&self, e: &dyn std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Commit `put` and `delete` durably, then apply them to the copy in memory.
    fn write(
        &self,
        put: &[(TokenId, Contract)],
        delete: &[TokenId],
        seeded: bool,
    ) -> Result<(), StoreError> {
        let io = |e: &dyn std::fmt::Display| self.io(e);
        let mut map = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(|e| io(&e))?;
        {
            let mut table = txn.open_table(TOKENS).map_err(|e| io(&e))?;
            for (id, c) in put {
                let json = serde_json::to_string(c).map_err(|e| io(&e))?;
                table
                    .insert(id.key().as_str(), json.as_str())
                    .map_err(|e| io(&e))?;
            }
            for id in delete {
                table.remove(id.key().as_str()).map_err(|e| io(&e))?;
            }
            if seeded {
                let mut meta = txn.open_table(META).map_err(|e| io(&e))?;
                meta.insert(SEEDED, "1").map_err(|e| io(&e))?;
            }
        }
        txn.commit().map_err(|e| io(&e))?;
        for (id, c) in put {
            map.insert(id.clone(), c.clone());
        }
        for id in delete {
            map.remove(id);
        }
        Ok(())
    }

    /// A token's contract, if listed.
    pub fn get(&self, id: &TokenId) -> Option<Contract> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The decision for a token now.
    pub fn decide(&self, id: &TokenId) -> Decision {
        decide(self.get(id).as_ref(), self.unknown)
    }

    /// Every entry, in token order.
    pub fn list(&self) -> Vec<(TokenId, Contract)> {
        let map = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Add or replace an entry (validated); true if it replaced one.
    pub fn put(&self, id: TokenId, contract: Contract) -> Result<bool, StoreError> {
        contract.validate().map_err(StoreError::Invalid)?;
        let existed = self.get(&id).is_some();
        let len = self.tokens.read().unwrap_or_else(|p| p.into_inner()).len();
        if !existed && len >= MAX_TOKENS {
            return Err(StoreError::Full);
        }
        self.write(&[(id, contract)], &[], false)?;
        Ok(existed)
    }

    /// Remove an entry; false if it was not listed.
    pub fn delete(&self, id: &TokenId) -> Result<bool, StoreError> {
        if self.get(id).is_none() {
            return Ok(false);
        }
        self.write(&[], std::slice::from_ref(id), false)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Contract {
        Contract {
            name: "fleet-a".into(),
            min_soc_pct: 40.0,
            v2g: true,
            priority: 2,
            depart_at: None,
            stay_s: Some(3600),
            target_soc_pct: 90.0,
            capacity_kwh: Some(75.0),
            blocked: false,
        }
    }

    fn id(v: &str) -> TokenId {
        TokenId::new("ISO14443", v).unwrap()
    }

    #[test]
    fn decisions_follow_the_list_and_the_policy() {
        let c = fleet();
        assert!(matches!(
            decide(Some(&c), UnknownTokens::Refuse),
            Decision::Accepted { listed: true, .. }
        ));
        let blocked = Contract {
            blocked: true,
            ..fleet()
        };
        assert_eq!(
            decide(Some(&blocked), UnknownTokens::ChargeOnly),
            Decision::Blocked
        );
        assert_eq!(decide(None, UnknownTokens::Refuse), Decision::Unknown);
        match decide(None, UnknownTokens::ChargeOnly) {
            Decision::Accepted { contract, listed } => {
                assert!(!listed && !contract.v2g);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_contract_out_of_range_names_its_field() {
        type Change = fn(&mut Contract);
        let cases: [(Change, &str); 6] = [
            (|c| c.min_soc_pct = 120.0, "min_soc_pct"),
            (|c| c.target_soc_pct = 10.0, "target_soc_pct"),
            (|c| c.capacity_kwh = Some(-1.0), "capacity_kwh"),
            (
                |c| c.depart_at = Some("17:30".into()),
                "depart_at and stay_s",
            ),
            (|c| c.priority = 10, "priority"),
            (|c| c.name = " ".into(), "name"),
        ];
        for (change, field) in cases {
            let mut c = fleet();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
        let mut c = fleet();
        c.stay_s = None;
        c.depart_at = Some("25:00".into());
        assert!(c.validate().unwrap_err().contains("HH:MM"));
        assert!(TokenId::new("a/b", "x").is_err());
        assert!(TokenId::new("ISO14443", "").is_err());
    }

    #[test]
    fn departure_is_the_next_time_of_day_or_the_stay() {
        let at = UNIX_EPOCH + Duration::from_secs(10 * DAY_S + 18 * 3600); // 18:00 UTC
        let (d, given) = fleet().departure(at);
        assert!(given);
        assert_eq!(d, at + Duration::from_secs(3600));
        let evening = Contract {
            stay_s: None,
            depart_at: Some("17:30".into()),
            ..fleet()
        };
        let (d, _) = evening.departure(at);
        assert_eq!(
            d,
            UNIX_EPOCH + Duration::from_secs(11 * DAY_S + 17 * 3600 + 1800)
        );
        let night = Contract {
            depart_at: Some("23:00".into()),
            ..evening
        };
        assert_eq!(night.departure(at).0, at + Duration::from_secs(5 * 3600));
        let (d, given) = Contract::unknown().departure(at);
        assert!(!given);
        assert_eq!(d, at + Duration::from_secs(ASSUMED_STAY_S));
    }

    #[test]
    fn the_store_is_durable_seeded_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("tokens.toml");
        std::fs::write(
            &seed,
            "[[tokens]]\ntype = \"ISO14443\"\nvalue = \"AA01\"\nname = \"fleet-a\"\nv2g = true\n",
        )
        .unwrap();
        let path = dir.path().join("tokens.redb");
        {
            let s = AuthStore::open(&path, Some(&seed), UnknownTokens::Refuse).unwrap();
            assert!(s.get(&id("AA01")).unwrap().v2g);
            assert!(!s.put(id("BB02"), fleet()).unwrap());
            assert!(s.delete(&id("AA01")).unwrap());
            assert!(!s.delete(&id("AA01")).unwrap());
        }
        let s = AuthStore::open(&path, Some(&seed), UnknownTokens::Refuse).unwrap();
        assert_eq!(
            s.get(&id("AA01")),
            None,
            "a deleted seed token stays deleted"
        );
        assert_eq!(s.get(&id("BB02")), Some(fleet()));
        assert_eq!(s.decide(&id("AA01")), Decision::Unknown);
        let bad = Contract {
            min_soc_pct: f64::NAN,
            ..fleet()
        };
        assert!(matches!(s.put(id("CC"), bad), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn a_bad_seed_file_names_its_line_and_field() {
        let e = parse_seed(
            "tokens.toml",
            "[[tokens]]\ntype = \"RFID\"\nvalue = \"1\"\nname = \"x\"\ncolour = 3\n",
        )
        .unwrap_err();
        assert!(e.starts_with("tokens.toml:") && e.contains("colour"), "{e}");
        let e = parse_seed(
            "tokens.toml",
            "[[tokens]]\ntype = \"RFID\"\nvalue = \"1\"\nname = \"x\"\nmin_soc_pct = 101\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "tokens.toml: tokens[0].min_soc_pct: 101 is not in 0..=100"
        );
    }
}
