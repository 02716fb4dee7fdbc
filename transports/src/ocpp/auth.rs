//! HTTP Basic authentication of charge points (OCPP security profiles 1 and 2).
//!
//! Invariants:
//! - the user name must equal the charge point id of the URL (OCPP 2.0.1 A00.FR.2xx): a
//!   charge point cannot log in as another;
//! - passwords are compared in constant time ([`subtle`]), and an unknown id costs the same
//!   comparison as a known one;
//! - an `Authorization` header longer than [`MAX_AUTHORIZATION_HEADER_BYTES`] is refused before
//!   it is decoded.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use subtle::ConstantTimeEq;

/// Longest `Authorization` header accepted (OCPP passwords are at most 64 bytes; ids 48).
pub const MAX_AUTHORIZATION_HEADER_BYTES: usize = 1024;

/// Decides whether a charge point may connect with a password.
///
/// The CSMS asks [`Authenticator::knows`] first (an unknown station is refused at once), then
/// [`Authenticator::verify_fast`] on the async runtime, and only when that cannot decide,
/// [`Authenticator::verify`] on a bounded blocking pool: `verify` may be slow by design
/// (a password hash, see [`super::credentials`]).
pub trait Authenticator: Send + Sync + 'static {
    /// Whether `password` is valid for `charge_point_id` (compare in constant time).
    fn verify(&self, charge_point_id: &str, password: &[u8]) -> bool;

    /// Whether the station has credentials at all (ids are not secrets; default: yes).
    fn knows(&self, _charge_point_id: &str) -> bool {
        true
    }

    /// A cheap answer when there is one (a cached success, an unknown id); `None`: ask
    /// [`Authenticator::verify`]. Must not block.
    fn verify_fast(&self, _charge_point_id: &str, _password: &[u8]) -> Option<bool> {
        None
    }
}

impl<F> Authenticator for F
where
    F: Fn(&str, &[u8]) -> bool + Send + Sync + 'static,
{
    fn verify(&self, charge_point_id: &str, password: &[u8]) -> bool {
        self(charge_point_id, password)
    }
}

/// A fixed table of charge point passwords.
#[derive(Clone, Default)]
pub struct StaticPasswords {
    passwords: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for StaticPasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the passwords.
        f.debug_struct("StaticPasswords")
            .field("ids", &self.passwords.len())
            .finish()
    }
}

impl StaticPasswords {
    /// An empty table (rejects everyone).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a charge point's password.
    pub fn insert(&mut self, charge_point_id: impl Into<String>, password: impl Into<Vec<u8>>) {
        self.passwords
            .insert(charge_point_id.into(), password.into());
    }
}

impl Authenticator for StaticPasswords {
    fn verify(&self, charge_point_id: &str, password: &[u8]) -> bool {
        match self.passwords.get(charge_point_id) {
            Some(expected) => bool::from(expected.as_slice().ct_eq(password)),
            None => {
                // Same work for an unknown id, then refuse.
                let _ = password.ct_eq(password);
                false
            }
        }
    }
}

/// Why Basic authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BasicAuthError {
    /// No `Authorization` header.
    #[error("no Authorization header")]
    Missing,
    /// The header is too long, not UTF-8, or not `Basic <base64>`.
    #[error("Authorization header is not `Basic <base64>`")]
    Malformed,
    /// The credentials have no `:` separator.
    #[error("credentials have no user:password separator")]
    NoSeparator,
    /// The user name is not the charge point id of the URL.
    #[error("user name does not match the charge point id")]
    UserMismatch,
    /// The password is wrong.
    #[error("invalid password")]
    BadPassword,
    /// The station has no credentials (it is not in the credentials file).
    #[error("no credentials for this charge point")]
    UnknownStation,
}

/// Parses an `Authorization: Basic ...` value into (user, password).
pub fn parse_basic(header: &[u8]) -> Result<(String, Vec<u8>), BasicAuthError> {
    if header.len() > MAX_AUTHORIZATION_HEADER_BYTES {
        return Err(BasicAuthError::Malformed);
    }
    let header = std::str::from_utf8(header).map_err(|_| BasicAuthError::Malformed)?;
    let (scheme, rest) = header
        .trim()
        .split_once(' ')
        .ok_or(BasicAuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicAuthError::Malformed);
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .map_err(|_| BasicAuthError::Malformed)?;
    let colon = decoded
        .iter()
        .position(|b| *b == b':')
        .ok_or(BasicAuthError::NoSeparator)?;
    let user =
        String::from_utf8(decoded[..colon].to_vec()).map_err(|_| BasicAuthError::Malformed)?;
    Ok((user, decoded[colon + 1..].to_vec()))
}

/// Checks a header against the URL's charge point id and the authenticator.
pub fn check_basic(
    header: Option<&[u8]>,
    charge_point_id: &str,
    authenticator: &dyn Authenticator,
) -> Result<(), BasicAuthError> {
    let (user, password) = parse_basic(header.ok_or(BasicAuthError::Missing)?)?;
    if user != charge_point_id {
        return Err(BasicAuthError::UserMismatch);
    }
    if authenticator.verify(charge_point_id, &password) {
        Ok(())
    } else {
        Err(BasicAuthError::BadPassword)
    }
}

/// The `Authorization` header value a charge point sends.
pub fn basic_header(charge_point_id: &str, password: &[u8]) -> String {
    let mut credentials = Vec::with_capacity(charge_point_id.len() + 1 + password.len());
    credentials.extend_from_slice(charge_point_id.as_bytes());
    credentials.push(b':');
    credentials.extend_from_slice(password);
    format!("Basic {}", STANDARD.encode(credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let mut table = StaticPasswords::new();
        table.insert("cp-1", "s3cret:with:colons");
        let h = basic_header("cp-1", b"s3cret:with:colons");
        assert_eq!(check_basic(Some(h.as_bytes()), "cp-1", &table), Ok(()));
        assert_eq!(
            check_basic(Some(h.as_bytes()), "cp-2", &table),
            Err(BasicAuthError::UserMismatch)
        );
        let wrong = basic_header("cp-1", b"nope");
        assert_eq!(
            check_basic(Some(wrong.as_bytes()), "cp-1", &table),
            Err(BasicAuthError::BadPassword)
        );
        let unknown = basic_header("cp-9", b"x");
        assert_eq!(
            check_basic(Some(unknown.as_bytes()), "cp-9", &table),
            Err(BasicAuthError::BadPassword)
        );
        assert_eq!(
            check_basic(None, "cp-1", &table),
            Err(BasicAuthError::Missing)
        );
        assert_eq!(parse_basic(b"Bearer abc"), Err(BasicAuthError::Malformed));
        assert_eq!(parse_basic(b"Basic !!!"), Err(BasicAuthError::Malformed));
        assert_eq!(
            parse_basic(format!("Basic {}", STANDARD.encode("nocolon")).as_bytes()),
            Err(BasicAuthError::NoSeparator)
        );
        assert_eq!(
            parse_basic(&vec![b'a'; MAX_AUTHORIZATION_HEADER_BYTES + 1]),
            Err(BasicAuthError::Malformed)
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse_basic(&bytes);
        }
    }
}
