//! The ptp4l management decoder against arbitrary bytes and mutations of real answers
//! (captured from ptp4l 3.1.1): a typed answer or a typed error, never a panic; a mutation
//! that still decodes must still be a consistent answer. Case counts scale with
//! GRIDVISOR_FUZZ_CASES (default 2,000).
//! A long run: `GRIDVISOR_FUZZ_CASES=1000000 cargo test --release -p gridvisor-transports --test integration ptp_codec_fuzz`

use gridvisor_transports::ptp::codec::{
    captures, decode_answer, encode_get, Body, ManagementId, PortIdentity, MANAGEMENT_BYTES,
    TLV_HEADER_BYTES,
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("GRIDVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn answers() -> Vec<Vec<u8>> {
    captures()
        .into_iter()
        .filter(|(n, _)| n.ends_with(".answer"))
        .map(|(_, b)| b)
        .collect()
}

/// A captured answer with up to 8 bytes overwritten, then maybe cut or extended.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let all = answers();
    (
        prop::sample::select(all),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        prop_oneof![Just(None), (0usize..200).prop_map(Some)],
        prop::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(mut b, edits, cut, tail)| {
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            if let Some(n) = cut {
                b.truncate(n.min(b.len()));
            }
            b.extend(tail);
            b
        })
}

fn consistent(bytes: &[u8]) {
    let Ok(a) = decode_answer(bytes) else {
        return;
    };
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        bytes.len()
    );
    if let Some(id) = match a.body {
        Body::TimeStatus(_) => Some(ManagementId::TimeStatusNp),
        Body::PortDataSet(_) => Some(ManagementId::PortDataSet),
        Body::CurrentDataSet(_) => Some(ManagementId::CurrentDataSet),
        Body::Error { .. } => None,
    } {
        assert_eq!(
            bytes.len(),
            MANAGEMENT_BYTES + TLV_HEADER_BYTES + id.data_len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
        consistent(&bytes);
    }

    #[test]
    fn mutated_answers_decode_or_fail_typed(bytes in mutated()) {
        consistent(&bytes);
    }

    #[test]
    fn a_get_turned_into_an_answer_decodes_with_zeroed_data(
        which in 0usize..3, port in any::<u16>(), domain in any::<u8>(), seq in any::<u16>(),
    ) {
        let id = ManagementId::ALL[which];
        let source = PortIdentity { port, ..PortIdentity::default() };
        let mut b = encode_get(id, source, PortIdentity::ALL, domain, seq);
        b[46] = 2; // RESPONSE
        match decode_answer(&b) {
            // A zeroed port data set has port state 0, which is no state.
            Err(e) => prop_assert!(id == ManagementId::PortDataSet, "{id}: {e}"),
            Ok(a) => {
                prop_assert_eq!((a.sequence_id, a.domain, a.source), (seq, domain, source));
                prop_assert_eq!(a.target, PortIdentity::ALL);
            }
        }
    }
}
