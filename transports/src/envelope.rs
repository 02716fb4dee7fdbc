//! Versioned wire envelopes: how gridvisor nodes frame the messages they send each other
//! (cluster membership, checkpoint replication, routed grid requests).
//!
//! A frame is a fixed 8-byte header and a MessagePack body (rmp-serde, named fields, so a
//! newer sender can add optional fields without breaking an older reader):
//!
//! ```text
//! +------+------+---------+----------------+-------------------------+
//! | 'G'  | 'V'  | version | body length    | body (rmp-serde, named) |
//! | 1 B  | 1 B  | u16 BE  | u32 BE         | `length` bytes          |
//! +------+------+---------+----------------+-------------------------+
//! ```
//!
//! Invariants the decoder keeps, whatever the bytes:
//! - it never panics and never allocates more than the frame's declared length, which is
//!   refused above [`MAX_BODY_BYTES`] before anything is read into memory;
//! - a version outside [`SUPPORTED_VERSIONS`] is [`EnvelopeError::UnsupportedVersion`]
//!   naming both, so an operator mixing releases sees exactly why two nodes cannot talk;
//! - a body must decode to the expected type and use every byte of it (no trailing bytes),
//!   nested at most [`MAX_DEPTH`] deep (a deeply nested body cannot exhaust the stack).
//!
//! ```
//! use gridvisor_transports::envelope::{decode, encode};
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Lease { segment: String, until_ms: u64 }
//! let frame = encode(&Lease { segment: "tx-1".into(), until_ms: 1500 }).unwrap();
//! let back: Lease = decode(&frame).unwrap();
//! assert_eq!(back, Lease { segment: "tx-1".into(), until_ms: 1500 });
//! ```

use std::io::Cursor;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"GV";
/// The version this build writes.
pub const VERSION: u16 = 1;
/// The versions this build reads.
pub const SUPPORTED_VERSIONS: RangeInclusive<u16> = 1..=1;
/// The header's length in bytes.
pub const HEADER_BYTES: usize = 8;
/// The largest body accepted or produced (a checkpoint record of a large segment fits).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The deepest nesting of arrays and maps a body may have.
pub const MAX_DEPTH: usize = 64;

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Fewer bytes than a header, or than the header's declared body length.
    #[error("truncated frame: {got} bytes, {needed} needed")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes the header (or its length field) calls for.
        needed: usize,
    },
    /// The frame does not start with [`MAGIC`]: not a gridvisor peer, or a desynchronised stream.
    #[error("not a gridvisor frame: starts with {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic {
        /// The first two bytes.
        found: [u8; 2],
    },
    /// The peer speaks a version this build does not read.
    #[error("unsupported envelope version {got}: this node reads versions {supported:?}")]
    UnsupportedVersion {
        /// The frame's version.
        got: u16,
        /// What this build reads.
        supported: RangeInclusive<u16>,
    },
    /// The declared or produced body is larger than [`MAX_BODY_BYTES`].
    #[error("frame body of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The body's size.
        bytes: usize,
        /// [`MAX_BODY_BYTES`].
        limit: usize,
    },
    /// Bytes after the end the header declares.
    #[error("{extra} bytes after the frame's body")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The body is not a valid encoding of the expected message.
    #[error("frame body does not decode as {expected}: {reason}")]
    Body {
        /// The expected type's name.
        expected: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
    /// The stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent nothing (or too little) for too long.
    #[error("no complete frame within {0:?}")]
    Timeout(Duration),
}

/// Encode `msg` as one frame of the current [`VERSION`].
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, EnvelopeError> {
    let mut frame = vec![0u8; HEADER_BYTES];
    rmp_serde::encode::write_named(&mut frame, msg)
        .map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    let body = frame.len() - HEADER_BYTES;
    if body > MAX_BODY_BYTES {
        return Err(EnvelopeError::TooLarge {
            bytes: body,
            limit: MAX_BODY_BYTES,
        });
    }
    let len = u32::try_from(body).map_err(|_| EnvelopeError::TooLarge {
        bytes: body,
        limit: MAX_BODY_BYTES,
    })?;
    frame[..2].copy_from_slice(&MAGIC);
    frame[2..4].copy_from_slice(&VERSION.to_be_bytes());
    frame[4..8].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// A frame's header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The envelope version.
    pub version: u16,
    /// The body's length in bytes (at most [`MAX_BODY_BYTES`]).
    pub body_len: usize,
}

/// Check a header: magic, version, length limit.
pub fn decode_header(bytes: &[u8; HEADER_BYTES]) -> Result<Header, EnvelopeError> {
    let found = [bytes[0], bytes[1]];
    if found != MAGIC {
        return Err(EnvelopeError::BadMagic { found });
    }
    let version = u16::from_be_bytes([bytes[2], bytes[3]]);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(EnvelopeError::UnsupportedVersion {
            got: version,
            supported: SUPPORTED_VERSIONS,
        });
    }
    // u32 → usize cannot truncate on the 32- and 64-bit targets gridvisor builds for.
    let body_len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if body_len > MAX_BODY_BYTES {
        return Err(EnvelopeError::TooLarge {
            bytes: body_len,
            limit: MAX_BODY_BYTES,
        });
    }
    Ok(Header { version, body_len })
}

/// Decode one whole frame (header and body, nothing after it) as a `T`.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, EnvelopeError> {
    let header: &[u8; HEADER_BYTES] = frame
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(EnvelopeError::Truncated {
            got: frame.len(),
            needed: HEADER_BYTES,
        })?;
    let h = decode_header(header)?;
    let needed = HEADER_BYTES + h.body_len;
    if frame.len() < needed {
        return Err(EnvelopeError::Truncated {
            got: frame.len(),
            needed,
        });
    }
    if frame.len() > needed {
        return Err(EnvelopeError::TrailingBytes {
            extra: frame.len() - needed,
        });
    }
    decode_body(&frame[HEADER_BYTES..])
}

/// Decode a body (the bytes after a checked header) as a `T`, using all of it.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, EnvelopeError> {
    let expected = std::any::type_name::<T>();
    let mut de = rmp_serde::Deserializer::new(Cursor::new(body));
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de).map_err(|e| EnvelopeError::Body {
        expected,
        reason: e.to_string(),
    })?;
    let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if used < body.len() {
        return Err(EnvelopeError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    Ok(value)
}

/// Write `msg` as one frame to `w` (flushed).
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), EnvelopeError>
where
    W: AsyncWrite + Unpin,
    T: Serialize + ?Sized,
{
    let frame = encode(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame from `r` and decode it as a `T`, giving up after `limit` (a peer that
/// sends half a frame and hangs does not hold the reader forever). The body is read into
/// memory only after its header was checked, so a hostile length costs nothing.
pub async fn read_frame<R, T>(r: &mut R, limit: Duration) -> Result<T, EnvelopeError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let read = async {
        let mut header = [0u8; HEADER_BYTES];
        r.read_exact(&mut header).await?;
        let h = decode_header(&header)?;
        let mut body = vec![0u8; h.body_len];
        r.read_exact(&mut body).await?;
        decode_body(&body)
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| EnvelopeError::Timeout(limit))?
}

/// A message wrapped with its kind and sender, for peers that multiplex several kinds over
/// one stream. Kinds are strings so an unknown kind from a newer peer is reported by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tagged<T> {
    /// What the body is (for example `"lease"`, `"checkpoint"`).
    pub kind: String,
    /// The sending node's id.
    pub from: String,
    /// The message.
    pub body: T,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Msg {
        segment: String,
        kw: f64,
        keys: Vec<u64>,
    }

    fn msg() -> Msg {
        Msg {
            segment: "tx-17".into(),
            kw: -12.5,
            keys: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_frame_round_trips() {
        let f = encode(&msg()).unwrap();
        assert_eq!(&f[..2], b"GV");
        assert_eq!(decode::<Msg>(&f).unwrap(), msg());
    }

    #[test]
    fn each_kind_of_bad_frame_has_its_error() {
        let f = encode(&msg()).unwrap();
        assert!(matches!(
            decode::<Msg>(&f[..5]),
            Err(EnvelopeError::Truncated { got: 5, needed: 8 })
        ));
        assert!(matches!(
            decode::<Msg>(&f[..f.len() - 1]),
            Err(EnvelopeError::Truncated { .. })
        ));
        let mut extra = f.clone();
        extra.push(0);
        assert!(matches!(
            decode::<Msg>(&extra),
            Err(EnvelopeError::TrailingBytes { extra: 1 })
        ));
        let mut magic = f.clone();
        magic[0] = b'X';
        assert!(matches!(
            decode::<Msg>(&magic),
            Err(EnvelopeError::BadMagic { .. })
        ));
        let mut version = f.clone();
        version[2..4].copy_from_slice(&7u16.to_be_bytes());
        let e = decode::<Msg>(&version).unwrap_err();
        assert!(matches!(
            e,
            EnvelopeError::UnsupportedVersion { got: 7, .. }
        ));
        assert!(e.to_string().contains("version 7"), "{e}");
        let mut huge = f.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode::<Msg>(&huge),
            Err(EnvelopeError::TooLarge { .. })
        ));
        let wrong_type = encode(&("not", "a", "msg")).unwrap();
        let e = decode::<Msg>(&wrong_type).unwrap_err();
        assert!(matches!(e, EnvelopeError::Body { .. }), "{e}");
        assert!(e.to_string().contains("Msg"), "{e}");
    }

    #[test]
    fn a_body_with_bytes_left_over_is_refused() {
        // Two messages in one body: the header covers both, the type only one.
        let one = encode(&7u32).unwrap();
        let mut body = one[HEADER_BYTES..].to_vec();
        body.extend_from_slice(&one[HEADER_BYTES..]);
        assert!(matches!(
            decode_body::<u32>(&body),
            Err(EnvelopeError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // 100,000 nested one-element arrays (0x91), then nil.
        let mut body = vec![0x91u8; 100_000];
        body.push(0xc0);
        let e = decode_body::<serde_json::Value>(&body).unwrap_err();
        assert!(matches!(e, EnvelopeError::Body { .. }), "{e}");
    }

    #[test]
    fn tagged_messages_round_trip() {
        let t = Tagged {
            kind: "lease".into(),
            from: "node-a".into(),
            body: msg(),
        };
        assert_eq!(decode::<Tagged<Msg>>(&encode(&t).unwrap()).unwrap(), t);
    }

    #[tokio::test]
    async fn frames_cross_a_stream_and_a_hanging_peer_times_out() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &msg()).await.unwrap();
        let got: Msg = read_frame(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, msg());
        // Half a frame, then silence.
        let f = encode(&msg()).unwrap();
        a.write_all(&f[..HEADER_BYTES + 2]).await.unwrap();
        let e = read_frame::<_, Msg>(&mut b, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, EnvelopeError::Timeout(_)), "{e}");
    }
}
