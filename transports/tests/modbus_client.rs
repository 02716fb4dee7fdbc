//! The Modbus client against raw TCP peers over real sockets: a peer that never answers, one
//! that answers garbage or wrong frames, one that closes, one that is slow; time-outs,
//! reconnection with back-off, the in-flight bound, typed exceptions, cancel safety.

use crate::modbus_support;

use std::time::{Duration, Instant};

use gridvisor_transports::modbus::{
    ExceptionCode, ModbusClient, ModbusError, Operation, RegisterWrite,
};
use modbus_support::{client, free_addr, test_config, Mode, Peer, BACKOFF, REQUEST_TIMEOUT};
use tokio::net::TcpListener;

/// Waits until `f` holds (bounded: the peer runs on this runtime).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 2 s: {what}");
}

#[tokio::test]
async fn reads_and_writes_against_a_good_peer() {
    let peer = Peer::start(Mode::Good).await;
    let c = client(peer.addr);
    assert_eq!(
        c.read_holding_registers(100, 3).await.unwrap(),
        vec![100, 101, 102]
    );
    assert_eq!(c.read_input_registers(7, 1).await.unwrap(), vec![7]);
    c.write_single_register(5, 42).await.unwrap();
    c.write_multiple_registers(5, &[1, 2, 3]).await.unwrap();
    c.write_all(&[
        RegisterWrite {
            addr: 1,
            values: vec![9],
        },
        RegisterWrite {
            addr: 2,
            values: vec![9, 9],
        },
    ])
    .await
    .unwrap();
    // 300 registers: three requests (125 + 125 + 50).
    let regs = c.read_holding_range(1000, 300).await.unwrap();
    assert_eq!(regs, (1000..1300).collect::<Vec<u16>>());
    let stats = c.stats();
    assert_eq!((stats.connects, stats.failures), (1, 0));
    assert_eq!(stats.requests, 9);
}

#[tokio::test]
async fn a_silent_peer_times_out_then_a_good_one_is_reconnected() {
    let peer = Peer::start(Mode::Silent).await;
    let c = client(peer.addr);
    let started = Instant::now();
    let err = c.read_holding_registers(0, 2).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            ModbusError::Timeout {
                op: Operation::ReadHoldingRegisters { addr: 0, count: 2 },
                after,
                ..
            } if after == REQUEST_TIMEOUT
        ),
        "{err}"
    );
    assert!(took >= REQUEST_TIMEOUT, "{took:?}");
    // The connection was dropped: the peer sees it closed.
    eventually("the client closes the timed-out connection", || {
        peer.closed_by_client() == 1
    })
    .await;
    assert!(!c.is_connected().await);

    // Backing off: fails at once, nothing sent.
    let started = Instant::now();
    let err = c.read_holding_registers(0, 2).await.unwrap_err();
    assert!(
        matches!(err, ModbusError::Backoff { failures: 1, retry_in, .. } if retry_in <= BACKOFF),
        "{err}"
    );
    // Waiting out the back-off would take about BACKOFF.
    assert!(started.elapsed() < BACKOFF, "no waiting");
    assert_eq!(peer.accepted(), 1);

    // Still silent after the back-off: a second time-out, the back-off doubles.
    c.wait_backoff().await;
    assert!(matches!(
        c.read_holding_registers(0, 2).await,
        Err(ModbusError::Timeout { .. })
    ));
    match c.read_holding_registers(0, 2).await.unwrap_err() {
        ModbusError::Backoff {
            failures: 2,
            retry_in,
            ..
        } => {
            // Doubled, less what passed since.
            assert!(retry_in <= 2 * BACKOFF, "{retry_in:?}")
        }
        e => panic!("{e}"),
    }

    // A good server appears: the next request after the back-off reconnects and succeeds.
    peer.set_mode(Mode::Good);
    c.wait_backoff().await;
    assert_eq!(
        c.read_holding_registers(40000, 2).await.unwrap(),
        vec![40000, 40001]
    );
    assert_eq!(peer.accepted(), 3);
    let stats = c.stats();
    assert_eq!((stats.connects, stats.failures), (3, 2));
    // The success ended the back-off.
    assert_eq!(c.read_holding_registers(1, 1).await.unwrap(), vec![1]);
}

#[tokio::test]
async fn no_listener_then_a_server_appears() {
    let addr = free_addr().await;
    let c = client(addr);
    let err = c.read_holding_registers(0, 1).await.unwrap_err();
    assert!(
        matches!(&err, ModbusError::Io { op: Operation::Connect, source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err}"
    );
    assert!(matches!(
        c.read_holding_registers(0, 1).await,
        Err(ModbusError::Backoff { .. })
    ));
    let listener = TcpListener::bind(addr).await.unwrap();
    let _peer = Peer::on(listener, Mode::Good);
    c.wait_backoff().await;
    assert_eq!(c.read_holding_registers(3, 1).await.unwrap(), vec![3]);
}

#[tokio::test]
async fn a_peer_that_answers_garbage() {
    let peer = Peer::start(Mode::Garbage).await;
    let c = client(peer.addr);
    let err = c.read_holding_registers(0, 1).await.unwrap_err();
    // "HTTP/1.1 400 ..." read as an MBAP header announces 0x2F31 bytes ("/1") that never come.
    assert!(matches!(err, ModbusError::Timeout { .. }), "{err}");
    eventually("the client drops the connection", || {
        peer.closed_by_client() == 1
    })
    .await;
    peer.set_mode(Mode::Good);
    c.wait_backoff().await;
    assert_eq!(c.read_holding_registers(0, 1).await.unwrap(), vec![0]);
}

#[tokio::test]
async fn wrong_frames_are_protocol_errors() {
    for mode in [
        Mode::Noise,
        Mode::WrongTransaction,
        Mode::BadProtocol,
        Mode::WrongFunction,
        Mode::ShortRead,
    ] {
        let peer = Peer::start(mode).await;
        let c = client(peer.addr);
        let err = c.read_holding_registers(10, 3).await.unwrap_err();
        assert!(
            matches!(err, ModbusError::Protocol { .. }),
            "{mode:?}: {err}"
        );
        assert!(err.is_transient());
        // The stream cannot be trusted any more: dropped, and the client backs off.
        eventually("the connection is dropped", || peer.closed_by_client() == 1).await;
        let again = c.read_holding_registers(10, 3).await;
        assert!(
            matches!(again, Err(ModbusError::Backoff { .. })),
            "{again:?}"
        );
    }
}

#[tokio::test]
async fn a_peer_that_closes() {
    let peer = Peer::start(Mode::Close).await;
    let c = client(peer.addr);
    let err = c.read_holding_registers(0, 1).await.unwrap_err();
    match &err {
        ModbusError::Io {
            op: Operation::ReadHoldingRegisters { .. },
            source,
            ..
        } => {
            assert!(
                matches!(
                    source.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                ),
                "{source:?}"
            );
        }
        e => panic!("{e}"),
    }
    assert!(!c.is_connected().await);
    peer.set_mode(Mode::Good);
    c.wait_backoff().await;
    c.write_single_register(4, 4).await.unwrap();
}

#[tokio::test]
async fn exceptions_are_typed_and_keep_the_connection() {
    let peer = Peer::start(Mode::Exception).await;
    let c = client(peer.addr);
    for _ in 0..3 {
        let err = c.read_holding_registers(0, 1).await.unwrap_err();
        match err {
            ModbusError::Exception { function, code, .. } => {
                assert_eq!(function, 0x03);
                assert_eq!(code, ExceptionCode::IllegalDataAddress);
                assert_eq!(
                    err.exception_code(),
                    Some(ExceptionCode::IllegalDataAddress)
                );
                assert!(!err.is_transient());
            }
            e => panic!("{e}"),
        }
    }
    let err = c.write_single_register(0, 1).await.unwrap_err();
    assert!(
        matches!(err, ModbusError::Exception { function: 0x06, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("illegal data address (0x02)"),
        "{err}"
    );
    assert_eq!(c.stats().connects, 1);
    assert_eq!(c.stats().failures, 0);
    assert!(c.is_connected().await);
}

#[tokio::test]
async fn in_flight_requests_are_bounded() {
    let peer = Peer::start(Mode::Silent).await;
    let mut cfg = test_config(peer.addr);
    cfg.max_in_flight = 2;
    cfg.request_timeout = 2 * REQUEST_TIMEOUT;
    let c = ModbusClient::new(cfg);
    let (a, b) = (c.clone(), c.clone());
    let first = tokio::spawn(async move { a.read_holding_registers(0, 1).await });
    let second = tokio::spawn(async move { b.read_holding_registers(0, 1).await });
    eventually("the first request is on the wire", || peer.accepted() == 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let err = c.read_holding_registers(0, 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            ModbusError::Busy {
                max_in_flight: 2,
                ..
            }
        ),
        "{err}"
    );
    // Waiting for a slot would take the first request's whole time-out.
    assert!(started.elapsed() < REQUEST_TIMEOUT, "no waiting");
    assert!(matches!(
        first.await.unwrap(),
        Err(ModbusError::Timeout { .. })
    ));
    // The queued one found the connection dropped and the client backing off.
    assert!(matches!(
        second.await.unwrap(),
        Err(ModbusError::Backoff { .. })
    ));
}

#[tokio::test]
async fn a_cancelled_request_never_gets_its_answer_taken_for_the_next() {
    let peer = Peer::start(Mode::Slow).await;
    let c = client(peer.addr);
    // The caller gives up before the answer (well before the client's own time-out).
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), c.read_holding_registers(111, 1)).await;
    assert!(cancelled.is_err());
    // The next request is on a new connection: the late answer (111) cannot be read as its.
    peer.set_mode(Mode::Good);
    assert_eq!(c.read_holding_registers(222, 1).await.unwrap(), vec![222]);
    assert_eq!(peer.accepted(), 2);
    eventually("the cancelled connection was closed", || {
        peer.closed_by_client() == 1
    })
    .await;
}

#[tokio::test]
async fn clones_share_one_connection() {
    let peer = Peer::start(Mode::Good).await;
    let c = client(peer.addr);
    let mut tasks = Vec::new();
    for i in 0..4u16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.read_holding_registers(i * 10, 2).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let i = i as u16 * 10;
        assert_eq!(t.await.unwrap().unwrap(), vec![i, i + 1]);
    }
    assert_eq!(peer.accepted(), 1);
    c.close().await;
    assert!(matches!(
        c.read_holding_registers(0, 1).await,
        Err(ModbusError::Disconnected { .. })
    ));
}

#[tokio::test]
async fn a_listener_that_never_accepts_times_out() {
    // The kernel completes the handshake into the backlog; nobody reads the request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = client(listener.local_addr().unwrap());
    let started = Instant::now();
    let err = c.read_holding_registers(0, 1).await.unwrap_err();
    assert!(matches!(err, ModbusError::Timeout { .. }), "{err}");
    assert!(started.elapsed() >= REQUEST_TIMEOUT.min(Duration::from_secs(2)));
    drop(listener);
}
