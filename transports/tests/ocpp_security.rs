//! The CSMS's security rules through real sockets on loopback: per-station passwords (hashed,
//! over ws and wss), one live connection per station until the first fails its ping, a
//! revoked profile 3 certificate refused at the TLS handshake, and the handshake budgets (per
//! address, global, timeout) that keep a flood from crowding out a real station.

use crate::ocpp_support;

use std::net::SocketAddr;
use std::time::Duration;

use gridvisor_transports::ocpp::auth::BasicAuthError;
use gridvisor_transports::ocpp::client::{connect, ClientConfig, ConnectError};
use gridvisor_transports::ocpp::connection::{DisconnectReason, RpcConfig};
use gridvisor_transports::ocpp::server::{HandshakeRejection, ServerEvent};
use gridvisor_transports::ocpp::{auth, tls};
use ocpp_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn ws(csms: &Csms, id: &str, password: &str) -> ClientConfig {
    ws_to(csms.ws.port(), id, password)
}

fn ws_to(port: u16, id: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new("127.0.0.1", port, id);
    c.password = Some(password.as_bytes().to_vec());
    c
}

fn wss(pki: &Pki, csms: &Csms, id: &str, password: &str) -> ClientConfig {
    wss_to(pki, csms.wss.port(), id, password)
}

fn wss_to(pki: &Pki, port: u16, id: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new("127.0.0.1", port, id);
    c.password = Some(password.as_bytes().to_vec());
    c.tls = Some(tls::client_config(pki.ca_pem.as_bytes(), None).unwrap());
    c
}

async fn next_rejection(csms: &mut Csms) -> HandshakeRejection {
    loop {
        match next_event(&mut csms.server).await {
            ServerEvent::Rejected { reason, .. } => return reason,
            ServerEvent::Disconnected { .. } => continue,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

async fn next_disconnect(csms: &mut Csms) -> DisconnectReason {
    match next_event(&mut csms.server).await {
        ServerEvent::Disconnected { reason, .. } => reason,
        other => panic!("expected a disconnect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_station_has_its_own_password_on_ws_and_wss() {
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let (ws_port, wss_port) = (csms.ws.port(), csms.wss.port());
    for transport in ["ws", "wss"] {
        let make = |id: &str, pw: &str| match transport {
            "ws" => ws_to(ws_port, id, pw),
            _ => wss_to(&pki, wss_port, id, pw),
        };
        // Another station's (valid) password does not open this one.
        let borrowed = make("CP-21", "pw-201-secret");
        assert!(
            matches!(
                connect(&borrowed).await,
                Err(ConnectError::Refused { status: 401 })
            ),
            "{transport}"
        );
        assert!(matches!(
            next_rejection(&mut csms).await,
            HandshakeRejection::Unauthorized { ref charge_point_id, reason: BasicAuthError::BadPassword }
                if charge_point_id == "CP-21"
        ));
        // A station absent from the file is refused without a hash, named in the event.
        let unknown = make("CP-NOBODY", "pw-201-secret");
        assert!(matches!(
            connect(&unknown).await,
            Err(ConnectError::Refused { status: 401 })
        ));
        let rejection = next_rejection(&mut csms).await;
        assert!(matches!(
            rejection,
            HandshakeRejection::Unauthorized {
                reason: BasicAuthError::UnknownStation,
                ..
            }
        ));
        assert!(rejection.to_string().contains("CP-NOBODY"), "{rejection}");
        // No password at all.
        let mut none = make("CP-21", "");
        none.password = None;
        assert!(matches!(
            connect(&none).await,
            Err(ConnectError::Refused { status: 401 })
        ));
        assert!(matches!(
            next_rejection(&mut csms).await,
            HandshakeRejection::Unauthorized {
                reason: BasicAuthError::Missing,
                ..
            }
        ));
        // Its own password, twice in a row (the second from the cache): both get in.
        for _ in 0..2 {
            let (cp, _calls) = connect(&make("CP-21", "pw-21-secret")).await.unwrap();
            let session = expect_connected(&mut csms.server).await;
            assert_eq!(session.connection.info().charge_point_id, "CP-21");
            drop((cp, _calls, session));
            next_disconnect(&mut csms).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_station_cannot_be_taken_over_with_its_password() {
    let pki = pki();
    let grace = Duration::from_millis(300);
    let mut csms = start_csms_with(&pki, RpcConfig::default(), |c| c.takeover_grace = grace).await;
    let (first, _calls) = connect(&ws(&csms, "RUST-1", "rust-secret")).await.unwrap();
    let session = expect_connected(&mut csms.server).await;
    // The right password, over ws and over wss: 409 while the first connection lives.
    for attempt in [
        ws(&csms, "RUST-1", "rust-secret"),
        wss(&pki, &csms, "RUST-1", "rust-secret"),
    ] {
        assert!(matches!(
            connect(&attempt).await,
            Err(ConnectError::Refused { status: 409 })
        ));
        assert!(matches!(
            next_rejection(&mut csms).await,
            HandshakeRejection::AlreadyConnected { ref charge_point_id } if charge_point_id == "RUST-1"
        ));
    }
    assert!(!first.is_closed(), "the live connection is untouched");
    // A station that closes and reconnects at once (as after a Reset) is not refused: the
    // new connection waits (within the grace) for the old one to end.
    first.close();
    let (again, _c) = connect(&ws(&csms, "RUST-1", "rust-secret")).await.unwrap();
    // The old one's end and the new one's start, in either order.
    let (mut ended, mut started) = (false, None);
    while !ended || started.is_none() {
        match next_event(&mut csms.server).await {
            ServerEvent::Disconnected { .. } => ended = true,
            ServerEvent::Connected(s) => started = Some(s),
            other => panic!("{other:?}"),
        }
    }
    // Once it ends, the station gets in again.
    drop((again, _c, started, _calls, session));
    next_disconnect(&mut csms).await;
    let (_cp, _c) = connect(&ws(&csms, "RUST-1", "rust-secret")).await.unwrap();
    expect_connected(&mut csms.server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_station_is_released_when_its_ping_goes_unanswered() {
    let pki = pki();
    let rpc = RpcConfig {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    };
    let mut csms = start_csms(&pki, rpc.clone()).await;
    // A peer that upgrades and then never reads: it never answers a ping (a station that
    // rebooted behind a half-open TCP connection looks the same to the CSMS).
    let mut req = format!("ws://127.0.0.1:{}/ocpp/RUST-1", csms.ws.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "ocpp2.1".parse().unwrap());
    req.headers_mut().insert(
        "Authorization",
        auth::basic_header("RUST-1", b"rust-secret")
            .parse()
            .unwrap(),
    );
    let tcp = TcpStream::connect(csms.ws).await.unwrap();
    let (_frozen, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let _session = expect_connected(&mut csms.server).await;
    assert_eq!(
        next_disconnect(&mut csms).await,
        DisconnectReason::PingUnanswered {
            after: rpc.pong_timeout
        }
    );
    let (_cp, _c) = connect(&ws(&csms, "RUST-1", "rust-secret")).await.unwrap();
    expect_connected(&mut csms.server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_at_the_tls_handshake() {
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let mtls_port = csms.mtls.port();
    let mtls = |id: &str, cert: &str, key: &str| {
        let mut c = ClientConfig::new("127.0.0.1", mtls_port, id);
        c.tls = Some(
            tls::client_config(
                pki.ca_pem.as_bytes(),
                Some((cert.as_bytes(), key.as_bytes())),
            )
            .unwrap(),
        );
        c
    };
    let revoked = mtls("CP-REVOKED", &pki.revoked_cert_pem, &pki.revoked_key_pem);
    match connect(&revoked).await {
        Err(ConnectError::Handshake(_) | ConnectError::Io(_)) => {}
        Err(e) => panic!("expected a failed handshake, got {e:?}"),
        Ok(_) => panic!("a revoked certificate got in"),
    }
    match next_rejection(&mut csms).await {
        HandshakeRejection::Tls(why) => assert!(why.contains("Revoked"), "{why}"),
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
    // A certificate of the same CA that the CRL does not list still gets in, no password.
    let good = mtls("CP-MTLS", &pki.client_cert_pem, &pki.client_key_pem);
    let (_cp, _c) = connect(&good).await.unwrap();
    assert_eq!(expect_connected(&mut csms.server).await.security_profile, 3);
}

/// A TCP connection from `source` (a loopback address other than 127.0.0.1) to `to`.
async fn tcp_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `tcp` (EOF or reset) within the wait bound.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(WAIT, tcp.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_address_leaves_room_for_a_station() {
    const PER_IP: usize = 4;
    let pki = pki();
    let mut csms = start_csms_with(&pki, RpcConfig::default(), |c| {
        c.per_ip_exempt_loopback = false;
        c.max_handshakes_per_ip = PER_IP;
    })
    .await;
    // PER_IP slow handshakes from 127.0.0.2: half a request head each, then nothing.
    let mut flood = Vec::new();
    for _ in 0..PER_IP {
        let mut tcp = tcp_from("127.0.0.2", csms.ws).await;
        tcp.write_all(b"GET /ocpp/RUST-1 HTTP/1.1\r\n")
            .await
            .unwrap();
        flood.push(tcp);
    }
    // The next one from that address is closed at accept.
    let mut extra = tcp_from("127.0.0.2", csms.ws).await;
    assert!(closed_by_server(&mut extra).await);
    assert_eq!(
        next_rejection(&mut csms).await,
        HandshakeRejection::TooManyFromAddress {
            what: "handshakes",
            limit: PER_IP
        }
    );
    // A real station from another address authenticates and connects meanwhile.
    let (_cp, _c) = connect(&ws(&csms, "RUST-1", "rust-secret")).await.unwrap();
    expect_connected(&mut csms.server).await;
    for tcp in &flood {
        assert!(
            tcp.peer_addr().is_ok(),
            "the flood's handshakes are still pending"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_cut_off_and_give_their_slots_back() {
    const BUDGET: usize = 2;
    let timeout = Duration::from_millis(500);
    let pki = pki();
    let mut csms = start_csms_with(&pki, RpcConfig::default(), |c| {
        c.max_handshakes = BUDGET;
        c.handshake_timeout = timeout;
    })
    .await;
    // Two stalled handshakes hold the whole budget: one sends nothing, one half a head.
    let mut silent = TcpStream::connect(csms.ws).await.unwrap();
    let mut slow = TcpStream::connect(csms.ws).await.unwrap();
    slow.write_all(b"GET /ocpp/RUST-1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Wait until the server has accepted both: a third is refused for the budget.
    let mut third = TcpStream::connect(csms.ws).await.unwrap();
    assert!(closed_by_server(&mut third).await);
    assert_eq!(
        next_rejection(&mut csms).await,
        HandshakeRejection::TooManyHandshakes(BUDGET)
    );
    // Both stalled ones are cut off after the handshake timeout...
    for _ in 0..BUDGET {
        assert_eq!(
            next_rejection(&mut csms).await,
            HandshakeRejection::Timeout(timeout)
        );
    }
    assert!(closed_by_server(&mut silent).await);
    assert!(closed_by_server(&mut slow).await);
    // ...and their slots serve a station.
    let (_cp, _c) = connect(&ws(&csms, "RUST-1", "rust-secret")).await.unwrap();
    expect_connected(&mut csms.server).await;
}
