//! Per-station OCPP passwords (security profiles 1 and 2), stored as salted PBKDF2 hashes in
//! a credentials file, and the [`Credentials`] authenticator that checks them.
//!
//! # The file
//! One line per charge point, `id:pbkdf2-sha256:iterations:salt:hash` (salt and hash in
//! standard base64; ids never contain `:`, see [`super::server::check_charge_point_id`]).
//! Blank lines and lines starting with `#` are ignored. Every error names `file:line` and what
//! is wrong; a password never appears in the file, in an error or in a log.
//! `gridvisor ocpp-password` adds or rotates a line ([`CredentialsFile::set`],
//! [`CredentialsFile::write_atomic`]: temporary file, mode 0600, rename).
//!
//! # Cost and the cache
//! A verification costs [`DEFAULT_ITERATIONS`] HMAC-SHA256 rounds by design (tens to hundreds
//! of milliseconds), so the CSMS runs it off the async runtime on a bounded pool
//! ([`super::server::CsmsLimits::max_verifications`]). So that a reconnect storm (every
//! station of a site after a network blip) does not cost one PBKDF2 run per station, a
//! successful verification is remembered as `HMAC(process key, salt ‖ password)` for that
//! station ([`Authenticator::verify_fast`]); the next connection with the same password costs
//! one HMAC. The trade-off: a memory dump of the running CSMS holds, per recently verified
//! station, a fast keyed hash of its password together with the key, which can be attacked
//! faster than the PBKDF2 line (the file itself is unchanged). Generated passwords carry
//! [`GENERATED_PASSWORD_BYTES`] random bytes, out of reach of any brute force either way; a
//! weak chosen password is the exposure. The cache holds at most one entry per station of the
//! file (its bound), never a failed attempt, and dies with the process.
//!
//! Unknown stations are refused without hashing ([`Authenticator::knows`]): station ids are
//! not secrets (they are in the URL and on the device's label), and a flood of made-up ids
//! must not cost PBKDF2 runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hmac, pbkdf2};
use subtle::ConstantTimeEq;

use super::auth::Authenticator;
use super::server::check_charge_point_id;

/// The only algorithm of the file's second field.
pub const ALGORITHM: &str = "pbkdf2-sha256";
/// PBKDF2-HMAC-SHA256 rounds for a new password (OWASP's 2023 recommendation).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Fewest rounds a line may have (a line under it is an error). Lines between it and
/// [`DEFAULT_ITERATIONS`] are for random generated passwords, where the rounds add nothing a
/// brute force could notice: `bench ocpp` (10,000 stations), the embedded demo and the
/// tests; the CSMS counts them at start ([`CredentialsFile::below_default`]) and warns.
pub const MIN_ITERATIONS: u32 = 1_000;
/// Most rounds a line may have (a bound on one verification's CPU).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Random salt per line, bytes.
pub const SALT_BYTES: usize = 16;
/// PBKDF2 output, bytes (SHA-256's).
pub const HASH_BYTES: usize = 32;
/// Longest password accepted (OCPP 2.0.1's BasicAuthPassword is at most 40 characters; some
/// slack for 2.1 and other firmware).
pub const MAX_PASSWORD_BYTES: usize = 64;
/// Shortest password an operator may choose with `gridvisor ocpp-password` (OCPP 2.0.1's
/// BasicAuthPassword has at least 16 characters); see [`check_new_password`].
pub const MIN_PASSWORD_BYTES: usize = 16;
/// Random bytes of a generated password (printed as 32 base64url characters).
pub const GENERATED_PASSWORD_BYTES: usize = 24;
/// Largest credentials file read (about 100,000 stations).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A problem with a credentials file, or with a password for one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct CredentialsError {
    /// The file (as given).
    pub file: String,
    /// The line, from 1 (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// One station's stored hash.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: [u8; HASH_BYTES],
}

impl Entry {
    fn new(password: &[u8], iterations: NonZeroU32, rng: &dyn SecureRandom) -> Entry {
        let mut salt = vec![0u8; SALT_BYTES];
        // The system's random source does not fail on Linux once booted; a zero salt would
        // still be a valid (if weaker) hash, so there is nothing better to do than carry on.
        let _ = rng.fill(&mut salt);
        let mut hash = [0u8; HASH_BYTES];
        pbkdf2::derive(PBKDF2, iterations, &salt, password, &mut hash);
        Entry {
            iterations,
            salt,
            hash,
        }
    }

    /// Constant time in the password: PBKDF2's own verify compares in constant time.
    fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(PBKDF2, self.iterations, &self.salt, password, &self.hash).is_ok()
    }
}

const PBKDF2: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// The parsed credentials file: station id → its salted hash. Prints no hash when debugged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CredentialsFile {
    entries: BTreeMap<String, Entry>,
}

impl fmt::Debug for CredentialsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsFile")
            .field("stations", &self.entries.len())
            .finish()
    }
}

impl CredentialsFile {
    /// Reads `path` ([`MAX_FILE_BYTES`] at most).
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        use std::io::Read as _;
        let file = path.display().to_string();
        let whole = |message: String| CredentialsError {
            file: file.clone(),
            line: 0,
            message,
        };
        let handle = std::fs::File::open(path).map_err(|e| whole(format!("cannot open: {e}")))?;
        let mut text = String::new();
        handle
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| whole(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(whole(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        Self::parse(&file, &text)
    }

    /// Parses the text of a file named `file` (for the errors). The first error wins.
    pub fn parse(file: &str, text: &str) -> Result<Self, CredentialsError> {
        let mut entries = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let at = |message: String| CredentialsError {
                file: file.to_owned(),
                line: index + 1,
                message,
            };
            if raw.trim().is_empty() || raw.starts_with('#') {
                continue;
            }
            let (id, entry) = parse_line(raw).map_err(at)?;
            if entries.insert(id.clone(), entry).is_some() {
                return Err(at(format!("station {id:?} appears twice")));
            }
        }
        Ok(CredentialsFile { entries })
    }

    /// The file's text: one line per station, sorted by id, under a comment header.
    pub fn to_text(&self) -> String {
        let mut text = String::from(
            "# gridvisor OCPP station credentials: id:pbkdf2-sha256:iterations:salt:hash\n\
             # Managed by `gridvisor ocpp-password`; holds no password.\n",
        );
        for (id, e) in &self.entries {
            text.push_str(&format!(
                "{id}:{ALGORITHM}:{}:{}:{}\n",
                e.iterations,
                STANDARD.encode(&e.salt),
                STANDARD.encode(e.hash)
            ));
        }
        text
    }

    /// Adds or replaces the password of `station` (a new salt every time). Refuses an id the
    /// CSMS would refuse, an empty password, one above [`MAX_PASSWORD_BYTES`] or with a control
    /// character, and iterations outside the file's bounds. (The CLI also asks
    /// [`check_new_password`] for a chosen one.)
    pub fn set(&mut self, station: &str, password: &[u8], iterations: u32) -> Result<(), String> {
        check_charge_point_id(station).map_err(|e| format!("station id {station:?}: {e}"))?;
        check_password(password)?;
        let iterations = check_iterations(iterations)?;
        let entry = Entry::new(password, iterations, &SystemRandom::new());
        self.entries.insert(station.to_owned(), entry);
        Ok(())
    }

    /// Whether `station` has a line.
    pub fn contains(&self, station: &str) -> bool {
        self.entries.contains_key(station)
    }

    /// How many stations have a line.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Stations hashed with fewer than [`DEFAULT_ITERATIONS`] rounds.
    pub fn below_default(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.iterations.get() < DEFAULT_ITERATIONS)
            .count()
    }

    /// Whether the file has no station.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the file atomically: a temporary file with mode 0600 next to `path`, synced,
    /// then renamed over it (a reader sees the old file or the new one, never half of one).
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        // A temporary file left by a crash is replaced, never reused with its old mode.
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let result = (|| {
            let mut file = options.open(&tmp)?;
            file.write_all(self.to_text().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// One non-comment line → (id, entry); the message says which field is wrong.
fn parse_line(line: &str) -> Result<(String, Entry), String> {
    let fields: Vec<&str> = line.split(':').collect();
    let [id, algorithm, iterations, salt, hash] = fields[..] else {
        return Err(format!(
            "expected 5 fields `id:{ALGORITHM}:iterations:salt:hash`, found {}",
            fields.len()
        ));
    };
    check_charge_point_id(id).map_err(|e| format!("station id {id:?}: {e}"))?;
    if algorithm != ALGORITHM {
        return Err(format!(
            "station {id:?}: algorithm {algorithm:?} is not {ALGORITHM:?}"
        ));
    }
    let iterations = iterations
        .parse::<u32>()
        .map_err(|e| format!("station {id:?}: iterations {iterations:?}: {e}"))
        .and_then(|n| check_iterations(n).map_err(|e| format!("station {id:?}: {e}")))?;
    let salt = STANDARD
        .decode(salt)
        .map_err(|e| format!("station {id:?}: salt is not base64: {e}"))?;
    if salt.len() < SALT_BYTES {
        return Err(format!(
            "station {id:?}: salt has {} bytes, fewer than {SALT_BYTES}",
            salt.len()
        ));
    }
    let hash = STANDARD
        .decode(hash)
        .map_err(|e| format!("station {id:?}: hash is not base64: {e}"))?;
    let hash: [u8; HASH_BYTES] = hash.try_into().map_err(|h: Vec<u8>| {
        format!(
            "station {id:?}: hash has {} bytes, not {HASH_BYTES}",
            h.len()
        )
    })?;
    let entry = Entry {
        iterations,
        salt,
        hash,
    };
    Ok((id.to_owned(), entry))
}

fn check_iterations(n: u32) -> Result<NonZeroU32, String> {
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&n) {
        return Err(format!(
            "iterations {n} outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
        ));
    }
    NonZeroU32::new(n).ok_or_else(|| "iterations must not be 0".to_owned())
}

/// A password the file can hold: 1 to [`MAX_PASSWORD_BYTES`] bytes, no control character
/// (it travels in an HTTP header).
pub fn check_password(password: &[u8]) -> Result<(), String> {
    if !(1..=MAX_PASSWORD_BYTES).contains(&password.len()) {
        return Err(format!(
            "a password must have 1 to {MAX_PASSWORD_BYTES} bytes, not {}",
            password.len()
        ));
    }
    if password.iter().any(|b| b.is_ascii_control()) {
        return Err("a password must not contain control characters".to_owned());
    }
    Ok(())
}

/// A password an operator chooses for a new line: [`check_password`], and at least
/// [`MIN_PASSWORD_BYTES`].
pub fn check_new_password(password: &[u8]) -> Result<(), String> {
    check_password(password)?;
    if password.len() < MIN_PASSWORD_BYTES {
        return Err(format!(
            "a password must have at least {MIN_PASSWORD_BYTES} bytes (OCPP 2.0.1), not {}",
            password.len()
        ));
    }
    Ok(())
}

/// A strong random password: [`GENERATED_PASSWORD_BYTES`] from the system's source, base64url.
pub fn generate_password() -> Result<String, String> {
    let mut bytes = [0u8; GENERATED_PASSWORD_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random source failed".to_owned())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The authenticator over a [`CredentialsFile`], with the cache of recent successes (module
/// docs: cost and the cache).
pub struct Credentials {
    file: CredentialsFile,
    cache_key: hmac::Key,
    /// Station → HMAC(cache_key, salt ‖ password) of its last verified password.
    cache: Mutex<HashMap<String, hmac::Tag>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("stations", &self.file.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The authenticator for `file`, with a fresh random cache key.
    pub fn new(file: CredentialsFile) -> Result<Self, String> {
        let cache_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| "the system's random source failed".to_owned())?;
        Ok(Credentials {
            file,
            cache_key,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The file it checks against.
    pub fn file(&self) -> &CredentialsFile {
        &self.file
    }

    fn tag(&self, entry: &Entry, password: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.cache_key);
        ctx.update(&entry.salt);
        ctx.update(password);
        ctx.sign()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, hmac::Tag>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stations in the cache now (at most [`CredentialsFile::len`]).
    pub fn cached(&self) -> usize {
        self.cache().len()
    }
}

impl Authenticator for Credentials {
    fn knows(&self, charge_point_id: &str) -> bool {
        self.file.contains(charge_point_id)
    }

    fn verify_fast(&self, charge_point_id: &str, password: &[u8]) -> Option<bool> {
        let Some(entry) = self.file.entries.get(charge_point_id) else {
            return Some(false);
        };
        let known = self
            .cache()
            .get(charge_point_id)
            .map(|t| t.as_ref().to_vec())?;
        let tag = self.tag(entry, password);
        // A miss is not a refusal: the password may have changed; PBKDF2 decides.
        bool::from(tag.as_ref().ct_eq(&known)).then_some(true)
    }

    fn verify(&self, charge_point_id: &str, password: &[u8]) -> bool {
        let Some(entry) = self.file.entries.get(charge_point_id) else {
            return false;
        };
        if password.len() > MAX_PASSWORD_BYTES || !entry.verify(password) {
            return false;
        }
        let tag = self.tag(entry, password);
        self.cache().insert(charge_point_id.to_owned(), tag);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &[u8] = b"correct horse battery";

    fn file_with(ids: &[&str]) -> CredentialsFile {
        let mut f = CredentialsFile::default();
        for id in ids {
            f.set(id, PW, MIN_ITERATIONS).unwrap();
        }
        f
    }

    #[test]
    fn round_trip_through_text() {
        let f = file_with(&["cp-1", "café x"]);
        assert_eq!(f.below_default(), 2);
        let text = f.to_text();
        assert!(!text.contains("correct horse"));
        let back = CredentialsFile::parse("c.txt", &text).unwrap();
        assert_eq!(back, f);
        let creds = Credentials::new(back).unwrap();
        assert!(creds.verify("cp-1", PW));
        assert!(creds.verify("café x", PW));
        assert!(!creds.verify("cp-1", b"wrong password here"));
        assert!(!creds.verify("cp-9", PW));
        assert!(!creds.knows("cp-9"));
    }

    #[test]
    fn a_new_salt_per_set() {
        let mut f = file_with(&["a"]);
        let before = f.entries["a"].clone();
        f.set("a", PW, MIN_ITERATIONS).unwrap();
        assert_ne!(before.salt, f.entries["a"].salt);
        assert_ne!(before.hash, f.entries["a"].hash);
    }

    #[test]
    fn the_cache_remembers_only_successes() {
        let creds = Credentials::new(file_with(&["a", "b"])).unwrap();
        assert_eq!(creds.verify_fast("a", PW), None, "nothing cached yet");
        assert_eq!(creds.verify_fast("zz", PW), Some(false), "unknown station");
        assert!(!creds.verify("a", b"not the password!"));
        assert_eq!(creds.cached(), 0);
        assert!(creds.verify("a", PW));
        assert_eq!(creds.verify_fast("a", PW), Some(true));
        // Another password for a cached station goes to PBKDF2 again.
        assert_eq!(creds.verify_fast("a", b"not the password!"), None);
        assert_eq!(creds.verify_fast("b", PW), None);
        assert_eq!(creds.cached(), 1);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let good = file_with(&["ok"]).to_text();
        let good_line = good.lines().last().unwrap();
        let salt = STANDARD.encode([0u8; SALT_BYTES]);
        let hash = STANDARD.encode([0u8; HASH_BYTES]);
        let cases = [
            ("a:b:c".to_owned(), "expected 5 fields"),
            (format!("x:md5:{MIN_ITERATIONS}:{salt}:{hash}"), "algorithm"),
            (
                format!("x:{ALGORITHM}:10:{salt}:{hash}"),
                "iterations 10 outside",
            ),
            (
                format!("x:{ALGORITHM}:ten:{salt}:{hash}"),
                "iterations \"ten\"",
            ),
            (
                format!("x:{ALGORITHM}:{MIN_ITERATIONS}:!!:{hash}"),
                "salt is not base64",
            ),
            (
                format!("x:{ALGORITHM}:{MIN_ITERATIONS}:AAAA:{hash}"),
                "salt has 3 bytes",
            ),
            (
                format!("x:{ALGORITHM}:{MIN_ITERATIONS}:{salt}:AAAA"),
                "hash has 3 bytes",
            ),
            (
                format!(":{ALGORITHM}:{MIN_ITERATIONS}:{salt}:{hash}"),
                "station id \"\"",
            ),
            (good_line.to_owned(), "appears twice"),
        ];
        for (line, expected) in cases {
            let text = format!("# header\n\n{good_line}\n{line}\n");
            let e = CredentialsFile::parse("creds.txt", &text).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("creds.txt", 4), "{line}");
            assert!(e.message.contains(expected), "{line}: {e}");
            assert!(e.to_string().starts_with("creds.txt:4: "), "{e}");
        }
    }

    #[test]
    fn set_refuses_bad_ids_passwords_and_iterations() {
        let mut f = CredentialsFile::default();
        assert!(f.set("a:b", PW, MIN_ITERATIONS).is_err());
        assert!(f.set("a", b"", MIN_ITERATIONS).is_err());
        assert!(check_new_password(b"short").is_err());
        assert!(f
            .set("a", &[b'x'; MAX_PASSWORD_BYTES + 1], MIN_ITERATIONS)
            .is_err());
        assert!(f.set("a", b"sixteen bytes\n!!", MIN_ITERATIONS).is_err());
        assert!(f.set("a", PW, MIN_ITERATIONS - 1).is_err());
        assert!(f.is_empty());
        let generated = generate_password().unwrap();
        assert_eq!(generated.len(), 32);
        assert!(check_new_password(generated.as_bytes()).is_ok());
    }

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stations.cred");
        std::fs::write(&path, "old").unwrap();
        let f = file_with(&["cp-1"]);
        f.write_atomic(&path).unwrap();
        assert_eq!(CredentialsFile::load(&path).unwrap(), f);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );
        let missing = CredentialsFile::load(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.line, 0);
        assert!(missing.message.contains("cannot open"), "{missing}");
    }
}
