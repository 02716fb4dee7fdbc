//! The envelope decoder against arbitrary and mutated frames: a typed value or a typed error,
//! never a panic. Case counts scale with GRIDVISOR_FUZZ_CASES (default 2,000).
//! A long run: `GRIDVISOR_FUZZ_CASES=1000000 cargo test --release -p gridvisor-transports --test envelope_fuzz`

use gridvisor_transports::envelope::{decode, encode, EnvelopeError, Tagged, HEADER_BYTES};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn cases() -> u32 {
    std::env::var("GRIDVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Replicate {
    segment: String,
    dispatch: u64,
    revision: u64,
    kw: Vec<f64>,
    owner: Option<String>,
}

fn replicate() -> impl Strategy<Value = Replicate> {
    (
        "[a-z0-9-]{0,12}",
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(-1e6f64..1e6, 0..20),
        prop::option::of("[a-z]{1,8}"),
    )
        .prop_map(|(segment, dispatch, revision, kw, owner)| Replicate {
            segment,
            dispatch,
            revision,
            kw,
            owner,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn messages_round_trip(m in replicate(), from in "[a-z]{1,8}") {
        let t = Tagged { kind: "replicate".into(), from, body: m };
        let f = encode(&t).unwrap();
        prop_assert_eq!(decode::<Tagged<Replicate>>(&f).unwrap(), t);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<Tagged<Replicate>>(&bytes);
        let _ = decode::<serde_json::Value>(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut f = b"GV\x00\x01".to_vec();
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        match decode::<Tagged<Replicate>>(&f) {
            Ok(_) | Err(EnvelopeError::Body { .. }) | Err(EnvelopeError::TrailingBytes { .. }) => {}
            Err(e) => prop_assert!(false, "a valid header gave {e}"),
        }
        let _ = decode::<serde_json::Value>(&f);
    }

    #[test]
    fn mutated_frames_never_panic(
        m in replicate(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut f = encode(&m).unwrap();
        for (i, b) in flips {
            let i = i.index(f.len());
            f[i] = b;
        }
        let _ = decode::<Replicate>(&f);
        // The same frame cut short: truncated (or a header error), never a value.
        let n = cut.index(f.len());
        if n >= HEADER_BYTES {
            prop_assert!(decode::<Replicate>(&f[..n]).is_err());
        }
    }
}
