//! The node runtime's own [`Wire`] messages against arbitrary and mutated bytes, as the
//! envelope decoder meets them on a link (cluster/tests/wire_fuzz.rs fuzzes the transport's
//! handshake and frames with a message of the same shape; this is the real type). Decoding
//! gives a message or an error, never a panic; every valid message round-trips.
//!
//! Cases scale with GRIDVISOR_FUZZ_CASES (default 2,000).

use gridvisor_cluster::transport::Frame;
use gridvisor_transports::envelope::{decode, encode, HEADER_BYTES};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::replica::{Refusal, Version};
use super::{Api, Call, Reply, Wire};

fn cases() -> u32 {
    std::env::var("GRIDVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9./{}-]{0,24}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..256)
}

fn version() -> impl Strategy<Value = Version> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(epoch, boot, seq)| Version {
        epoch,
        boot,
        seq,
    })
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        bytes().prop_map(Call::Raft),
        (name(), prop::option::of(bytes()), version()).prop_map(|(key, value, version)| {
            Call::Replicate {
                key,
                value,
                version,
            }
        }),
        (
            any::<bool>(),
            name(),
            name(),
            bytes(),
            prop::option::of(name())
        )
            .prop_map(|(grid, method, path, body, caller)| Call::Http {
                api: if grid { Api::Grid } else { Api::Admin },
                method,
                path,
                body,
                caller,
            }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        bytes().prop_map(Reply::Raft),
        Just(Reply::Replicated(Ok(()))),
        (name(), version(), version()).prop_map(|(key, held, sent)| Reply::Replicated(Err(
            Refusal::Stale { key, held, sent }
        ))),
        (any::<u16>(), bytes()).prop_map(|(status, body)| Reply::Http { status, body }),
        name().prop_map(Reply::Failed),
    ]
}

fn wire() -> impl Strategy<Value = Wire> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(name(), 0..8)
        )
            .prop_map(|(round, epoch, driving)| Wire::Heartbeat {
                round,
                epoch,
                driving
            }),
        any::<u64>().prop_map(|round| Wire::HeartbeatAck { round }),
        name().prop_map(|holder| Wire::ReleaseAsk { holder }),
        (name(), any::<bool>()).prop_map(|(holder, granted)| Wire::ReleaseVote { holder, granted }),
        (any::<u64>(), call()).prop_map(|(id, call)| Wire::Call { id, call }),
        (any::<u64>(), reply()).prop_map(|(id, reply)| Wire::Reply { id, reply }),
    ]
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn every_wire_message_round_trips() {
    runner()
        .run(&wire(), |w| {
            let frame = encode(&Frame::Message(&w)).expect("a message within the limit");
            let back: Frame<Wire> = decode(&frame).expect("its own encoding decodes");
            // Wire has no PartialEq (its payloads need none): compare the debug forms.
            prop_assert_eq!(format!("{back:?}"), format!("{:?}", Frame::Message(&w)));
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_and_mutated_frames_decode_or_fail_without_a_panic() {
    let mutated = (
        wire(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    );
    runner()
        .run(&mutated, |(w, flips)| {
            let mut frame = encode(&Frame::Message(&w)).unwrap();
            // Keep the header (a bad one is the envelope's own test): mutate the body.
            let body = frame.len() - HEADER_BYTES;
            for (at, byte) in flips {
                if body > 0 {
                    frame[HEADER_BYTES + at.index(body)] ^= byte | 1;
                }
            }
            let _ = decode::<Frame<Wire>>(&frame);
            Ok(())
        })
        .unwrap();
    runner()
        .run(&prop::collection::vec(any::<u8>(), 0..512), |raw| {
            let _ = decode::<Frame<Wire>>(&raw);
            Ok(())
        })
        .unwrap();
}
