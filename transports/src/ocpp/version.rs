//! The OCPP versions this crate speaks and their WebSocket subprotocol names.
//!
//! Invariant: a connection has exactly one version, fixed at the handshake; it decides which
//! schemas validate its payloads and which frame types (2.1's CALLRESULTERROR and SEND) exist.

use std::fmt;

/// An OCPP version negotiated as a WebSocket subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OcppVersion {
    /// OCPP 2.0.1, subprotocol `ocpp2.0.1`.
    V201,
    /// OCPP 2.1, subprotocol `ocpp2.1` (V2X: discharge limits, setpoints, operation modes).
    V21,
}

/// A subprotocol name that is not an OCPP version this crate speaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported OCPP subprotocol {0:?} (supported: ocpp2.1, ocpp2.0.1)")]
pub struct UnsupportedSubprotocol(pub String);

impl OcppVersion {
    /// Every supported version, most preferred first: the server picks the first one the
    /// charge point offers.
    pub const PREFERENCE: [OcppVersion; 2] = [OcppVersion::V21, OcppVersion::V201];

    /// The WebSocket subprotocol name (`Sec-WebSocket-Protocol`).
    pub fn subprotocol(self) -> &'static str {
        match self {
            OcppVersion::V201 => "ocpp2.0.1",
            OcppVersion::V21 => "ocpp2.1",
        }
    }

    /// Parses a subprotocol name (exact, case-sensitive as the specification writes it).
    pub fn from_subprotocol(name: &str) -> Result<Self, UnsupportedSubprotocol> {
        match name {
            "ocpp2.0.1" => Ok(OcppVersion::V201),
            "ocpp2.1" => Ok(OcppVersion::V21),
            other => Err(UnsupportedSubprotocol(other.to_owned())),
        }
    }

    /// Whether this version has the CALLRESULTERROR (5) and SEND (6) frames.
    pub fn has_v21_frames(self) -> bool {
        self == OcppVersion::V21
    }
}

impl fmt::Display for OcppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subprotocol())
    }
}
