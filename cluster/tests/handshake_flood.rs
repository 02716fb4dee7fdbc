//! The cluster port's handshake budget over real sockets on loopback: idle TCP connections
//! (no TLS ClientHello) and TLS connections that never send a hello, from other loopback
//! addresses (127.0.0.2, 127.0.0.3), hold the budget while a real peer on 127.0.0.1 still
//! gets in; one address past its share is refused at once; every pending handshake is closed
//! at the handshake timeout, which the tests set short through `TransportLimits`.

use crate::transport_support;

use std::net::SocketAddr;
use std::time::Duration;

use gridvisor_cluster::certs::generate;
use gridvisor_cluster::transport::TransportLimits;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use transport_support::*;

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all loopback).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    tokio::time::timeout(DEADLINE, socket.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Waits until the server closes `s` (end of stream or a reset), bounded by [`DEADLINE`].
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(s: &mut S, what: &str) {
    let mut buf = [0u8; 256];
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "{what} was never closed by the server");
}

fn flood_limits(handshake_timeout: Duration) -> TransportLimits {
    TransportLimits {
        handshake_timeout,
        pending_handshakes: 4,
        pending_handshakes_per_ip: 2,
        ..limits()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_leaves_room_for_a_real_peer() {
    let certs = generate(&names(&["node-a", "node-b"]), &[]).unwrap();
    let (la, lb) = (bind().await, bind().await);
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let cookie = certs.cookie.as_str();
    // Longer than the test: the flood stays pending unless the budget lets it go.
    let mut cfg_a = config("node-a", &[("node-b", ab)], cookie, tls(&certs, "node-a"));
    cfg_a.limits = flood_limits(Duration::from_secs(120));
    let mut a = start(cfg_a, la);

    // One address takes its share of the budget; its next connection is refused at once.
    let mut flood = Vec::new();
    for _ in 0..2 {
        flood.push(connect_from([127, 0, 0, 2], aa).await);
    }
    until("two pending handshakes", || a.t.pending_handshakes() == 2).await;
    let mut over = connect_from([127, 0, 0, 2], aa).await;
    let reason = rejected(&mut a.events, "too many pending handshakes from 127.0.0.2").await;
    assert!(reason.contains("limit 2 per address"), "{reason}");
    closed_by_server(&mut over, "the connection past the address's share").await;

    // A second address fills the whole budget.
    for _ in 0..2 {
        flood.push(connect_from([127, 0, 0, 3], aa).await);
    }
    until("four pending handshakes", || a.t.pending_handshakes() == 4).await;

    // A real peer still gets in: it evicts the oldest pending handshake.
    let b = start(
        config("node-b", &[("node-a", aa)], cookie, tls(&certs, "node-b")),
        lb,
    );
    let reason = rejected(&mut a.events, "handshake evicted").await;
    assert!(reason.contains("all 4 handshake slots"), "{reason}");
    until("node-b's link to node-a", || {
        b.t.connected().contains("node-a")
    })
    .await;
    b.t.send("node-a", msg("node-b", 1)).unwrap();
    let got = recv(&mut a.rx).await;
    assert_eq!((got.from.as_str(), got.msg), ("node-b", msg("node-b", 1)));
    closed_by_server(&mut flood[0], "the oldest flood connection").await;
    assert!(a.t.stats().evicted_handshakes >= 1);
    assert!(a.t.pending_handshakes() <= 4);
    a.t.shutdown();
    b.t.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_are_closed_at_the_timeout() {
    let certs = generate(&names(&["node-a", "node-b"]), &[]).unwrap();
    let la = bind().await;
    let aa = la.local_addr().unwrap();
    let timeout = Duration::from_millis(400);
    let mut cfg_a = config(
        "node-a",
        &[("node-b", dead_addr().await)],
        &certs.cookie,
        tls(&certs, "node-a"),
    );
    cfg_a.limits = flood_limits(timeout);
    let mut a = start(cfg_a, la);

    // No TLS at all, and TLS done with a valid certificate but no hello.
    let mut idle = connect_from([127, 0, 0, 2], aa).await;
    let (cert, key) = &certs.nodes["node-b"];
    let mut silent = raw_tls(aa, &certs.ca_pem, cert, key, "node-a")
        .await
        .expect("TLS with node-a");
    closed_by_server(&mut idle, "the idle TCP connection").await;
    closed_by_server(&mut silent, "the TLS connection without a hello").await;
    let expected = format!("handshake not finished within {timeout:?}");
    rejected(&mut a.events, &expected).await;
    rejected(&mut a.events, &expected).await;
    until("an empty handshake budget", || {
        a.t.pending_handshakes() == 0
    })
    .await;
    assert_eq!(a.t.stats().rejected_handshakes, 2);
    a.t.shutdown();
}
