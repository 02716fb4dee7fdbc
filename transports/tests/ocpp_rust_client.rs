//! Our Rust charge-point client against our CSMS, and raw WebSocket peers that misbehave:
//! real sockets on 127.0.0.1, real TLS, real frames.

use crate::ocpp_support;

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gridvisor_transports::ocpp::client::{connect, ClientConfig, ConnectError};
use gridvisor_transports::ocpp::connection::{serve_calls, CallError, DisconnectReason, RpcConfig};
use gridvisor_transports::ocpp::frame::{ErrorCode, MAX_FRAME_BYTES};
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::server::{
    HandshakeRejection, ListenerConfig, Security, Server, ServerConfig, ServerEvent,
};
use gridvisor_transports::ocpp::setpoint::{setpoint_profile, Setpoint};
use gridvisor_transports::ocpp::{auth, tls, OcppVersion};
use ocpp_support::*;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

fn boot() -> BootNotificationRequest {
    BootNotificationRequest {
        charging_station: ChargingStation {
            serial_number: None,
            model: "RustCP".to_owned(),
            modem: None,
            vendor_name: "gridvisor".to_owned(),
            firmware_version: Some("1.0".to_owned()),
            extra: Map::new(),
        },
        reason: BootReason::PowerUp,
        extra: Map::new(),
    }
}

fn client(csms: &Csms, id: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new("127.0.0.1", csms.ws.port(), id);
    c.password = Some(password.as_bytes().to_vec());
    c
}

/// The client's answers to the CSMS's CALLs.
async fn cp_answer(
    request: Request,
) -> Result<Response, gridvisor_transports::ocpp::frame::RpcError> {
    Ok(match request {
        Request::SetChargingProfile(_) => SetChargingProfileResponse {
            status: ChargingProfileStatus::Accepted,
            status_info: None,
            extra: Map::new(),
        }
        .into(),
        Request::Reset(_) => ResetResponse {
            status: ResetStatus::Accepted,
            status_info: None,
            extra: Map::new(),
        }
        .into(),
        other => {
            return Err(gridvisor_transports::ocpp::frame::RpcError::new(
                ErrorCode::NotSupported,
                format!("{} not supported here", other.action()),
            ))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_talks_both_ways_over_ws() {
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let (cp, calls) = connect(&client(&csms, "RUST-1", "rust-secret"))
        .await
        .unwrap();
    assert_eq!(cp.info().version, OcppVersion::V21);
    let _answering = serve_calls(calls, cp_answer);
    let session = expect_connected(&mut csms.server).await;
    assert_eq!(session.connection.info().charge_point_id, "RUST-1");
    let mut seen = answer_calls(session.calls);

    let booted = cp.call(boot()).await.unwrap();
    assert_eq!(booted.status, RegistrationStatus::Accepted);
    assert!(
        matches!(recv(&mut seen).await, Request::BootNotification(b) if b.charging_station.model == "RustCP")
    );
    let beat = cp.call(HeartbeatRequest::default()).await.unwrap();
    assert!(beat.current_time.as_str().ends_with('Z'));

    let from = std::time::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let sp = Setpoint {
        dispatch_id: "d-9",
        revision: 1,
        power_kw: -22.0,
        valid_from: from,
        valid_until: from + Duration::from_secs(60),
        evse_id: 2,
    };
    let answer = session
        .connection
        .call(setpoint_profile(OcppVersion::V21, &sp).unwrap())
        .await
        .unwrap();
    assert_eq!(answer.status, ChargingProfileStatus::Accepted);
    // The client's handler refuses GetVariables: the CSMS sees the CALLERROR, typed.
    let refused = session
        .connection
        .call(GetVariablesRequest {
            get_variable_data: vec![GetVariableData {
                attribute_type: None,
                component: Component {
                    name: "X".into(),
                    instance: None,
                    evse: None,
                    extra: Map::new(),
                },
                variable: Variable {
                    name: "Y".into(),
                    instance: None,
                    extra: Map::new(),
                },
                extra: Map::new(),
            }],
            extra: Map::new(),
        })
        .await;
    assert!(
        matches!(refused, Err(CallError::Rejected { error, .. }) if error.code == ErrorCode::NotSupported)
    );

    // A CSMS may not send BootNotification, a charge point may not send Reset.
    assert!(matches!(
        session.connection.call(boot()).await,
        Err(CallError::WrongDirection { .. })
    ));
    let reset = ResetRequest {
        kind: ResetType::Immediate,
        evse_id: None,
        extra: Map::new(),
    };
    assert!(matches!(
        cp.call(reset).await,
        Err(CallError::WrongDirection { .. })
    ));

    // The client closes: the CSMS learns it.
    cp.close();
    assert_eq!(cp.closed().await, DisconnectReason::ClosedByOwner);
    match next_event(&mut csms.server).await {
        ServerEvent::Disconnected {
            charge_point_id,
            reason,
        } => {
            assert_eq!(charge_point_id, "RUST-1");
            assert!(
                matches!(
                    reason,
                    DisconnectReason::PeerClosed {
                        code: Some(1000),
                        ..
                    }
                ),
                "{reason:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        session
            .connection
            .call(ResetRequest {
                kind: ResetType::Immediate,
                evse_id: None,
                extra: Map::new()
            })
            .await,
        Err(CallError::Disconnected)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_over_wss_and_mutual_tls() {
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;

    let mut wss = client(&csms, "RUST-1", "rust-secret");
    wss.port = csms.wss.port();
    wss.tls = Some(tls::client_config(pki.ca_pem.as_bytes(), None).unwrap());
    let (cp, _calls) = connect(&wss).await.unwrap();
    let s = expect_connected(&mut csms.server).await;
    assert_eq!(s.security_profile, 2);
    let _seen = answer_calls(s.calls);
    cp.call(HeartbeatRequest::default()).await.unwrap();

    let mut mtls = ClientConfig::new("127.0.0.1", csms.mtls.port(), "CP-MTLS");
    mtls.tls = Some(
        tls::client_config(
            pki.ca_pem.as_bytes(),
            Some((
                pki.client_cert_pem.as_bytes(),
                pki.client_key_pem.as_bytes(),
            )),
        )
        .unwrap(),
    );
    let (cp3, _calls3) = connect(&mtls).await.unwrap();
    let s3 = expect_connected(&mut csms.server).await;
    assert_eq!(s3.security_profile, 3);
    let _seen3 = answer_calls(s3.calls);
    cp3.call(HeartbeatRequest::default()).await.unwrap();

    // A valid certificate of another charge point does not open this one's path (403).
    let mut impostor = mtls.clone();
    impostor.charge_point_id = "CP-OTHER".to_owned();
    assert!(
        connect(&impostor).await.is_err(),
        "CP-MTLS's certificate opened CP-OTHER"
    );
    loop {
        match next_event(&mut csms.server).await {
            ServerEvent::Rejected {
                reason:
                    HandshakeRejection::IdentityMismatch {
                        charge_point_id,
                        certificate,
                    },
                ..
            } => {
                assert_eq!(
                    (charge_point_id.as_str(), certificate.as_str()),
                    ("CP-OTHER", "CP-MTLS")
                );
                break;
            }
            ServerEvent::Disconnected { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    // Without a client certificate, profile 3 refuses the connection.
    let mut anonymous = mtls.clone();
    anonymous.tls = Some(tls::client_config(pki.ca_pem.as_bytes(), None).unwrap());
    let refused = connect(&anonymous).await;
    assert!(refused.is_err(), "connected without a client certificate");
    loop {
        match next_event(&mut csms.server).await {
            ServerEvent::Rejected {
                reason: HandshakeRejection::Tls(_),
                ..
            } => break,
            ServerEvent::Disconnected { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    // A server certificate from an unknown CA is refused by the client.
    let mut untrusting = wss.clone();
    untrusting.tls = Some(tls::client_config(pki.rogue_cert_pem.as_bytes(), None).unwrap());
    assert!(matches!(
        connect(&untrusting).await,
        Err(ConnectError::Handshake(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_negotiation_and_refusals() {
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let mut only201 = client(&csms, "RUST-1", "rust-secret");
    only201.versions = vec![OcppVersion::V201];
    let (cp, _c) = connect(&only201).await.unwrap();
    assert_eq!(cp.info().version, OcppVersion::V201);
    let s1 = expect_connected(&mut csms.server).await;
    assert_eq!(s1.connection.info().version, OcppVersion::V201);
    // One live connection per station: this one ends before the next comes.
    drop((cp, _c, s1));
    assert!(matches!(
        next_event(&mut csms.server).await,
        ServerEvent::Disconnected { .. }
    ));

    let mut both = client(&csms, "RUST-1", "rust-secret");
    both.versions = vec![OcppVersion::V201, OcppVersion::V21];
    let (cp, _c) = connect(&both).await.unwrap();
    assert_eq!(
        cp.info().version,
        OcppVersion::V21,
        "the server prefers 2.1"
    );
    let _s2 = expect_connected(&mut csms.server).await;

    // Percent-encoded ids arrive decoded.
    let (_cp, _c) = connect(&client(&csms, "caf\u{e9} 7", "unicode-secret"))
        .await
        .unwrap();
    let s3 = expect_connected(&mut csms.server).await;
    assert_eq!(s3.connection.info().charge_point_id, "caf\u{e9} 7");

    let wrong = client(&csms, "RUST-1", "guess");
    assert!(matches!(
        connect(&wrong).await,
        Err(ConnectError::Refused { status: 401 })
    ));
    let mut none = client(&csms, "RUST-1", "rust-secret");
    none.password = None;
    assert!(matches!(
        connect(&none).await,
        Err(ConnectError::Refused { status: 401 })
    ));

    let mut rejections = Vec::new();
    while rejections.len() < 2 {
        if let ServerEvent::Rejected { reason, .. } = next_event(&mut csms.server).await {
            rejections.push(reason);
        }
    }
    assert!(matches!(
        &rejections[0],
        HandshakeRejection::Unauthorized {
            reason: auth::BasicAuthError::BadPassword,
            ..
        }
    ));
    assert!(matches!(
        &rejections[1],
        HandshakeRejection::Unauthorized {
            reason: auth::BasicAuthError::Missing,
            ..
        }
    ));

    // No common subprotocol: a raw upgrade offering only ocpp1.6 gets HTTP 400.
    let mut req = format!("ws://127.0.0.1:{}/ocpp/RUST-1", csms.ws.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "ocpp1.6".parse().unwrap());
    req.headers_mut().insert(
        "Authorization",
        auth::basic_header("RUST-1", b"rust-secret")
            .parse()
            .unwrap(),
    );
    let tcp = TcpStream::connect(csms.ws).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 400),
        other => panic!(
            "expected HTTP 400, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    loop {
        if let ServerEvent::Rejected { reason, .. } = next_event(&mut csms.server).await {
            assert_eq!(
                reason,
                HandshakeRejection::NoSubprotocol {
                    offered: vec!["ocpp1.6".into()]
                }
            );
            break;
        }
    }
}

type RawWs = WebSocketStream<TcpStream>;

/// A hand-driven charge point: raw frames in and out.
async fn raw_client(csms: &Csms, protocol: &str) -> RawWs {
    let mut req = format!("ws://127.0.0.1:{}/ocpp/RUST-1", csms.ws.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    req.headers_mut().insert(
        "Authorization",
        auth::basic_header("RUST-1", b"rust-secret")
            .parse()
            .unwrap(),
    );
    let tcp = TcpStream::connect(csms.ws).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    ws
}

async fn raw_next(ws: &mut RawWs) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

async fn raw_send(ws: &mut RawWs, text: impl Into<String>) {
    ws.send(Message::Text(text.into().into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_callerror_and_the_connection_lives() {
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let mut ws = raw_client(&csms, "ocpp2.0.1").await;
    let s = expect_connected(&mut csms.server).await;
    let _seen = answer_calls(s.calls);

    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "-1", "RpcFrameworkError"),
        (r#"[2,"a1","Heartbeat",[]]"#.into(), "a1", "FormatViolation"),
        (r#"[2,"a2","Heartbeat",{"surprise":1}]"#.into(), "a2", "FormatViolation"),
        (r#"[2,"a3","StatusNotification",{"timestamp":"2026-01-01T00:00:00Z","connectorStatus":"Available","evseId":"one","connectorId":1}]"#.into(), "a3", "TypeConstraintViolation"),
        (r#"[2,"a4","StatusNotification",{"timestamp":"2026-01-01T00:00:00Z","connectorStatus":"Sleepy","evseId":1,"connectorId":1}]"#.into(), "a4", "PropertyConstraintViolation"),
        (r#"[2,"a5","MeterValues",{"evseId":1,"meterValue":[]}]"#.into(), "a5", "OccurrenceConstraintViolation"),
        (r#"[2,"a6","Reset",{"type":"Immediate"}]"#.into(), "a6", "NotSupported"),
        (r#"[2,"a7","DataTransfer",{"vendorId":"x"}]"#.into(), "a7", "NotImplemented"),
        (r#"[5,"a8","InternalError","",{}]"#.into(), "a8", "MessageTypeNotSupported"),
        (r#"[2,"0123456789012345678901234567890123456789","Heartbeat",{}]"#.into(), "-1", "RpcFrameworkError"),
        (format!(r#"[2,"a9","Heartbeat",{{"pad":"{}"}}]"#, "x".repeat(MAX_FRAME_BYTES)), "-1", "FormatViolation"),
        (r#"[2,"a10","BootNotification",{"chargingStation":{"model":"m","vendorName":"v"},"reason":"PowerUp","x":{"deep":[1,2,3]}}]"#.into(), "a10", "FormatViolation"),
        (r#"[2,"a11","Heartbeat",{"customData":{"vendorId":"acme","anything":true}}]"#.into(), "a11", "ok"),
        (r#"[2,"a12","StatusNotification",{"timestamp":"2026-01-01T00:00:00Z","connectorStatus":"Available","evseId":3000000000,"connectorId":1}]"#.into(), "a12", "TypeConstraintViolation"),
    ];
    for (text, id, code) in cases {
        raw_send(&mut ws, text.clone()).await;
        let answer = raw_next(&mut ws).await;
        assert_eq!(answer[1], id, "{text:.80}: {answer}");
        if code == "ok" {
            assert_eq!(answer[0], 3, "{answer}");
        } else {
            assert_eq!(
                (answer[0].clone(), answer[2].clone()),
                (json!(4), json!(code)),
                "{text:.80}: {answer}"
            );
            assert!(answer[3].as_str().unwrap().len() <= 255);
        }
    }
    ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    let answer = raw_next(&mut ws).await;
    assert_eq!(
        (answer[1].clone(), answer[2].clone()),
        (json!("-1"), json!("RpcFrameworkError"))
    );
    // Answers are never answered: a bogus CALLRESULT produces nothing, the next CALL works.
    raw_send(&mut ws, r#"[3,"nobody-asked",{}]"#).await;
    raw_send(&mut ws, r#"[2,"ok-1","Heartbeat",{}]"#).await;
    let answer = raw_next(&mut ws).await;
    assert_eq!(
        (answer[0].clone(), answer[1].clone()),
        (json!(3), json!("ok-1"))
    );
    assert!(answer[2]["currentTime"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_outstanding_call_a_bounded_queue_and_timeouts() {
    let pki = pki();
    let rpc = RpcConfig {
        call_timeout: Duration::from_millis(400),
        call_queue_capacity: 2,
        ..RpcConfig::default()
    };
    let mut csms = start_csms(&pki, rpc).await;
    let mut ws = raw_client(&csms, "ocpp2.1").await;
    let s = expect_connected(&mut csms.server).await;
    let conn = s.connection.clone();
    let reset = || ResetRequest {
        kind: ResetType::Immediate,
        evse_id: Some(1),
        extra: Map::new(),
    };

    // Three calls at once: one goes out, two queue; a fourth finds the queue full.
    let c1 = tokio::spawn({
        let c = conn.clone();
        async move { c.call(reset()).await }
    });
    let first = raw_next(&mut ws).await;
    assert_eq!(first[2], "Reset");
    // Poll c2 and c3 once: each enqueues synchronously and then waits for its answer.
    let mut c2 = Box::pin(conn.call(reset()));
    let mut c3 = Box::pin(conn.call(reset()));
    assert!(futures::poll!(&mut c2).is_pending());
    assert!(futures::poll!(&mut c3).is_pending());
    let full = match conn.call(reset()).await {
        Err(CallError::QueueFull { capacity }) => capacity,
        other => panic!("a fourth call should find the queue full, got {other:?}"),
    };
    assert_eq!(full, 2);
    // Nothing else is sent while the first CALL is outstanding (a bounded negative check)...
    let quiet = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
    assert!(
        quiet.is_err(),
        "a second CALL went out while one was outstanding: {quiet:?}"
    );
    // ... answer it, then the next one comes.
    raw_send(
        &mut ws,
        json!([3, first[1], {"status": "Accepted"}]).to_string(),
    )
    .await;
    assert_eq!(c1.await.unwrap().unwrap().status, ResetStatus::Accepted);
    let second = raw_next(&mut ws).await;
    assert_ne!(second[1], first[1], "message ids are unique");
    // Leave the second unanswered: it times out, then the third goes out.
    assert!(matches!(
        c2.await,
        Err(CallError::Timeout {
            action: Action::Reset,
            ..
        })
    ));
    let third = raw_next(&mut ws).await;
    // A late answer to the second is ignored; the third's answer is delivered.
    raw_send(
        &mut ws,
        json!([3, second[1], {"status": "Rejected"}]).to_string(),
    )
    .await;
    raw_send(
        &mut ws,
        json!([4, third[1], "GenericError", "busy", {}]).to_string(),
    )
    .await;
    match c3.await {
        Err(CallError::Rejected { error, .. }) => assert_eq!(
            (error.code, error.description.as_str()),
            (ErrorCode::GenericError, "busy")
        ),
        other => panic!("{other:?}"),
    }
    // An answer that breaks the schema is reported as such.
    let c4 = tokio::spawn({
        let c = conn.clone();
        async move { c.call(reset()).await }
    });
    let fourth = raw_next(&mut ws).await;
    raw_send(
        &mut ws,
        json!([3, fourth[1], {"status": "Maybe"}]).to_string(),
    )
    .await;
    match c4.await.unwrap() {
        Err(CallError::InvalidResponse(v)) => assert_eq!(
            (v.code, v.path.as_str()),
            (ErrorCode::PropertyConstraintViolation, "/status")
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_specific_payloads_are_checked_before_sending() {
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let mut only201 = client(&csms, "RUST-1", "rust-secret");
    only201.versions = vec![OcppVersion::V201];
    let (_cp, _calls) = connect(&only201).await.unwrap();
    let s = expect_connected(&mut csms.server).await;
    let from = std::time::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let sp = Setpoint {
        dispatch_id: "d",
        revision: 1,
        power_kw: -5.0,
        valid_from: from,
        valid_until: from + Duration::from_secs(60),
        evse_id: 1,
    };
    // The 2.1 discharge profile cannot go to a 2.0.1 charger: refused before sending, naming the field.
    let v21_profile = setpoint_profile(OcppVersion::V21, &sp).unwrap();
    match s.connection.call(v21_profile).await {
        Err(CallError::InvalidRequest(v)) => {
            assert!(v.path.contains("chargingSchedulePeriod/0"), "{v}");
            assert_eq!(v.version, OcppVersion::V201);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_handler_idle_peer_and_slow_handshake_are_bounded() {
    let pki = pki();
    let rpc = RpcConfig {
        idle_timeout: Duration::from_millis(600),
        handler_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    };
    let mut csms = start_csms(&pki, rpc.clone()).await;

    // The owner never answers: the peer gets InternalError after the handler timeout.
    let mut ws = raw_client(&csms, "ocpp2.1").await;
    let s = expect_connected(&mut csms.server).await;
    let _held = s.calls; // received but never answered
    raw_send(&mut ws, r#"[2,"h1","Heartbeat",{}]"#).await;
    let answer = raw_next(&mut ws).await;
    assert_eq!(
        (answer[0].clone(), answer[1].clone(), answer[2].clone()),
        (json!(4), json!("h1"), json!("InternalError"))
    );

    // Then silence: the CSMS closes after the idle limit.
    match next_event(&mut csms.server).await {
        ServerEvent::Disconnected { reason, .. } => assert_eq!(
            reason,
            DisconnectReason::Idle {
                after: rpc.idle_timeout
            }
        ),
        other => panic!("{other:?}"),
    }
    drop(ws);

    // A TCP peer that never starts the handshake is dropped after the handshake timeout.
    let mut c = ServerConfig::new(vec![ListenerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        security: Security::BasicAuth(Arc::new(|_: &str, _: &[u8]| true)),
    }]);
    c.handshake_timeout = Duration::from_millis(300);
    let mut server = Server::bind(c).await.unwrap();
    let addr = server.local_addrs()[0];
    let _silent = TcpStream::connect(addr).await.unwrap();
    match next_event(&mut server).await {
        ServerEvent::Rejected { reason, .. } => assert_eq!(
            reason,
            HandshakeRejection::Timeout(Duration::from_millis(300))
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_session_closes_the_connection() {
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let (cp, _calls) = connect(&client(&csms, "RUST-1", "rust-secret"))
        .await
        .unwrap();
    let session = expect_connected(&mut csms.server).await;
    drop(session);
    assert!(matches!(
        cp.closed().await,
        DisconnectReason::PeerClosed {
            code: Some(1000),
            ..
        }
    ));
    match next_event(&mut csms.server).await {
        ServerEvent::Disconnected { reason, .. } => {
            assert_eq!(reason, DisconnectReason::ClosedByOwner)
        }
        other => panic!("{other:?}"),
    }
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Many concurrent Rust charge points against one CSMS: boot, heartbeat, meter values. Scales
/// with `GRIDVISOR_OCPP_CLIENTS` (default 200); prints the RSS growth per connection pair (both
/// ends live in this process; only meaningful when the test runs alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_charge_points() {
    let n: usize = std::env::var("GRIDVISOR_OCPP_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut config = ServerConfig::new(vec![ListenerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        security: Security::BasicAuth(Arc::new(|id: &str, pw: &[u8]| {
            pw == format!("pw-{id}").as_bytes()
        })),
    }]);
    config.event_queue_capacity = 64;
    let mut server = Server::bind(config).await.unwrap();
    let addr = server.local_addrs()[0];
    let before = rss_kib();
    let owner = tokio::spawn(async move {
        let mut sessions = Vec::new();
        while sessions.len() < n {
            match next_event(&mut server).await {
                ServerEvent::Connected(s) => {
                    let seen = answer_calls(s.calls);
                    sessions.push((s.connection, seen));
                }
                other => panic!("{other:?}"),
            }
        }
        (server, sessions)
    });
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("SIM-{i}");
        let mut c = ClientConfig::new("127.0.0.1", addr.port(), id.clone());
        c.password = Some(format!("pw-{id}").into_bytes());
        clients.push(tokio::spawn(async move {
            let (cp, calls) = connect(&c).await.unwrap();
            cp.call(boot()).await.unwrap();
            cp.call(HeartbeatRequest::default()).await.unwrap();
            let t = DateTime::now();
            cp.call(MeterValuesRequest {
                evse_id: 1,
                meter_value: vec![MeterValue {
                    timestamp: t,
                    sampled_value: vec![SampledValue {
                        value: i as f64,
                        measurand: None,
                        context: None,
                        phase: None,
                        location: None,
                        unit_of_measure: None,
                        extra: Map::new(),
                    }],
                    extra: Map::new(),
                }],
                extra: Map::new(),
            })
            .await
            .unwrap();
            (cp, calls)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for c in clients {
        held.push(
            tokio::time::timeout(WAIT, c)
                .await
                .expect("client in time")
                .unwrap(),
        );
    }
    let (_server, sessions) = tokio::time::timeout(WAIT, owner)
        .await
        .expect("owner in time")
        .unwrap();
    assert_eq!(sessions.len(), n);
    if let (Some(b), Some(a)) = (before, rss_kib()) {
        eprintln!(
            "{n} connections (client + server ends): RSS +{} KiB, {:.1} KiB per connection pair",
            a.saturating_sub(b),
            a.saturating_sub(b) as f64 / n as f64
        );
    }
}
