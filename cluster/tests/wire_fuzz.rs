//! The cluster's wire against arbitrary and mutated input: the handshake messages
//! ([`Hello`], [`HelloReply`]) and the link frames ([`Frame`]) carrying a message shaped like
//! the node runtime's `Wire` (heartbeats, acks, release votes, calls and replies with byte
//! bodies and nested results). Decoding gives a typed value or a typed error, never a panic;
//! a declared length beyond the limit is refused before any body byte is read; valid
//! messages round-trip, in memory and through a running transport over loopback.
//!
//! Case counts scale with GRIDVISOR_FUZZ_CASES (default 2,000; the socket test runs a
//! twentieth of them, at least 50 and at most 1,000 connections). A long run:
//! `GRIDVISOR_FUZZ_CASES=1000000 cargo test --release -p gridvisor-cluster --test integration wire_fuzz`

use crate::transport_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;

use gridvisor_cluster::transport::{
    Frame, Hello, HelloReply, Inbound, Security, Transport, PROTOCOL,
};
use gridvisor_transports::envelope::{
    self, decode, decode_header, encode, EnvelopeError, HEADER_BYTES, MAX_BODY_BYTES,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use transport_support::*;

fn cases() -> u32 {
    std::env::var("GRIDVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Connections the socket test opens: a twentieth of the cases, within 50..=1000.
fn socket_cases() -> u32 {
    (cases() / 20).clamp(50, 1_000)
}

/// A message of the node runtime's shape (src/cluster/mod.rs `Wire`, `Call`, `Reply`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Wire {
    Heartbeat {
        round: u64,
        epoch: u64,
        driving: Vec<String>,
    },
    HeartbeatAck {
        round: u64,
    },
    ReleaseAsk {
        holder: String,
    },
    ReleaseVote {
        holder: String,
        granted: bool,
    },
    Call {
        id: u64,
        call: Call,
    },
    Reply {
        id: u64,
        reply: Reply,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Call {
    Raft(Vec<u8>),
    Replicate {
        segment: String,
        record: Vec<u8>,
        version: (u64, u64, u64),
    },
    Http {
        method: String,
        path: String,
        body: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Reply {
    Raft(Vec<u8>),
    Replicated(Result<(), String>),
    Http { status: u16, body: Vec<u8> },
    Failed(String),
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9-]{0,12}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        bytes().prop_map(Call::Raft),
        (name(), bytes(), any::<(u64, u64, u64)>()).prop_map(|(segment, record, version)| {
            Call::Replicate {
                segment,
                record,
                version,
            }
        }),
        ("GET|POST", "/[a-z/]{0,20}", bytes()).prop_map(|(method, path, body)| Call::Http {
            method,
            path,
            body
        }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        bytes().prop_map(Reply::Raft),
        prop::result::maybe_ok(Just(()), name()).prop_map(Reply::Replicated),
        (any::<u16>(), bytes()).prop_map(|(status, body)| Reply::Http { status, body }),
        name().prop_map(Reply::Failed),
    ]
}

fn wire() -> impl Strategy<Value = Wire> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(name(), 0..6)
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

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), name(), "[ -~]{0,40}", "[ -~]{0,80}").prop_map(
        |(protocol, node, cookie, settings)| Hello {
            protocol,
            node,
            cookie,
            settings,
        },
    )
}

/// Overwrites up to 8 bytes of `frame` at positions and values the strategy chose.
fn mutate(frame: &mut [u8], flips: &[(prop::sample::Index, u8)]) {
    for (i, b) in flips {
        let i = i.index(frame.len());
        frame[i] = *b;
    }
}

fn flips() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn link_frames_round_trip(w in wire()) {
        let f = encode(&Frame::Message(w.clone())).unwrap();
        prop_assert_eq!(decode::<Frame<Wire>>(&f).unwrap(), Frame::Message(w));
    }

    #[test]
    fn handshake_messages_round_trip(h in hello(), reason in "[ -~]{0,60}") {
        let f = encode(&h).unwrap();
        prop_assert!(decode::<Hello>(&f).unwrap() == h);
        let refused = HelloReply::Refused { reason };
        prop_assert_eq!(decode::<HelloReply>(&encode(&refused).unwrap()).unwrap(), refused);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<Frame<Wire>>(&bytes);
        let _ = decode::<Hello>(&bytes);
        let _ = decode::<HelloReply>(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_are_typed_errors(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut f = encode(&Frame::<Wire>::Ping).unwrap()[..HEADER_BYTES].to_vec();
        f[4..8].copy_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        for r in [
            decode::<Frame<Wire>>(&f).err(),
            decode::<Hello>(&f).err(),
            decode::<HelloReply>(&f).err(),
        ].into_iter().flatten() {
            prop_assert!(
                matches!(r, EnvelopeError::Body { .. } | EnvelopeError::TrailingBytes { .. }),
                "a valid header gave {}", r
            );
        }
    }

    #[test]
    fn mutated_frames_never_panic(w in wire(), h in hello(), flips in flips(), cut in any::<prop::sample::Index>()) {
        let mut f = encode(&Frame::Message(w)).unwrap();
        mutate(&mut f, &flips);
        let _ = decode::<Frame<Wire>>(&f);
        // Cut short: an error, never a value.
        let n = cut.index(f.len());
        prop_assert!(decode::<Frame<Wire>>(&f[..n]).is_err());
        let mut f = encode(&h).unwrap();
        mutate(&mut f, &flips);
        let _ = decode::<Hello>(&f);
    }

    #[test]
    fn any_declared_length_above_the_limit_is_refused_from_the_header(len in (MAX_BODY_BYTES as u32 + 1)..=u32::MAX) {
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&encode(&Frame::<Wire>::Ping).unwrap()[..HEADER_BYTES]);
        header[4..8].copy_from_slice(&len.to_be_bytes());
        let refused = matches!(decode_header(&header), Err(EnvelopeError::TooLarge { bytes, .. }) if bytes == len as usize);
        prop_assert!(refused);
    }
}

/// Set when a thread of the socket test's runtime panics (a transport task's panic would
/// otherwise only end that task, and look like a closed link).
static PANICKED: AtomicBool = AtomicBool::new(false);
const RUNTIME_THREADS: &str = "wire-fuzz";

fn watch_for_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(RUNTIME_THREADS) {
                PANICKED.store(true, Ordering::SeqCst);
            }
            previous(info)
        }));
    });
}

/// The link frame limit of the socket test's transport: small, so that a mutated length
/// is often over it.
const MAX_FRAME: usize = 4096;
const COOKIE: &str = "wire-fuzz-cookie";

/// Connects to `addr` and completes the (plaintext, test-only) hello as node-b.
async fn hello_as_b(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let hello = Hello {
        protocol: PROTOCOL,
        node: "node-b".into(),
        cookie: COOKIE.into(),
        settings: SETTINGS.into(),
    };
    envelope::write_frame(&mut s, &hello).await.expect("hello");
    let reply: HelloReply = envelope::read_frame(&mut s, DEADLINE).await.expect("reply");
    assert!(matches!(reply, HelloReply::Welcome { .. }), "{reply:?}");
    s
}

/// What became of one mutated frame followed by a valid marker and the end of the stream:
/// the marker was delivered (the mutated frame decoded, or was a ping), or the link closed.
async fn outcome(s: &mut TcpStream, rx: &mut mpsc::Receiver<Inbound<Wire>>, marker: &Wire) -> bool {
    let mut buf = [0u8; 512];
    let closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // pings
            }
        }
    };
    let delivered = async {
        while let Some(m) = rx.recv().await {
            assert_eq!(m.from, "node-b");
            if &m.msg == marker {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            _ = delivered => true,
            _ = closed => false,
        }
    })
    .await
    .expect("neither delivered nor closed")
}

async fn mutated_frames_over_a_socket(cases: u32) {
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let mut cfg = config(
        "node-a",
        &[("node-b", dead_addr().await)],
        COOKIE,
        Security::PlaintextForTests,
    );
    cfg.limits.max_frame = MAX_FRAME;
    let (tx, mut rx) = mpsc::channel(INBOUND);
    let t: Transport<Wire> = Transport::start(cfg, listener, tx).expect("start");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (wire(), flips());
    let (mut delivered, mut closed) = (0u32, 0u32);
    for n in 0..cases {
        let (w, fl) = strategy.new_tree(&mut runner).expect("case").current();
        let mut frame = encode(&Frame::Message(w)).unwrap();
        mutate(&mut frame, &fl);
        let marker = Wire::HeartbeatAck {
            round: u64::from(n),
        };
        frame.extend(encode(&Frame::Message(marker.clone())).unwrap());
        let mut s = hello_as_b(addr).await;
        s.write_all(&frame).await.expect("write");
        // End of our stream: a frame whose mutated length runs past the marker ends there.
        s.shutdown().await.expect("shutdown");
        if outcome(&mut s, &mut rx, &marker).await {
            delivered += 1;
        } else {
            closed += 1;
        }
    }
    assert_eq!(delivered + closed, cases);

    // A declared length over the link's limit is refused without sending a body byte.
    let mut events = t.events();
    let mut s = hello_as_b(addr).await;
    let mut header = encode(&Frame::<Wire>::Ping).unwrap()[..HEADER_BYTES].to_vec();
    header[4..8].copy_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
    s.write_all(&header).await.unwrap();
    let reason = rejected(
        &mut events,
        &format!("exceeds the limit of {MAX_FRAME} bytes"),
    )
    .await;
    assert!(reason.starts_with("node-b:"), "{reason}");

    // After all that, a valid message still round-trips.
    let mut s = hello_as_b(addr).await;
    let last = Wire::Call {
        id: 7,
        call: Call::Http {
            method: "GET".into(),
            path: "/api/v1/segments".into(),
            body: vec![1, 2, 3],
        },
    };
    envelope::write_frame(&mut s, &Frame::Message(last.clone()))
        .await
        .unwrap();
    assert!(
        outcome(&mut s, &mut rx, &last).await,
        "a valid message was not delivered"
    );
    assert!(
        t.stats().bad_frames > 0,
        "no mutated frame was refused: the fuzz did nothing"
    );
    t.shutdown();
}

#[test]
fn mutated_frames_on_a_live_link_never_panic_and_valid_ones_round_trip() {
    watch_for_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RUNTIME_THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(mutated_frames_over_a_socket(socket_cases()));
    rt.shutdown_timeout(Duration::from_secs(5));
    assert!(
        !PANICKED.load(Ordering::SeqCst),
        "a transport task panicked (see the output above)"
    );
}
