//! The node-to-node transport over real sockets on 127.0.0.1: three nodes exchanging
//! messages and surviving a restart, every kind of refused peer (with its reason), bad
//! frames on an authenticated link, a full queue, and the development certificates.

use crate::transport_support;

use std::time::Duration;

use gridvisor_cluster::certs::{self, generate, node_files, write_dev_certs};
use gridvisor_cluster::tls::{peer_names, NodeTls};
use gridvisor_cluster::transport::{
    Frame, Hello, HelloReply, SendError, Transport, TransportConfig, TransportEvent, PROTOCOL,
};
use gridvisor_transports::envelope;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncReadExt;
use transport_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_messages_and_a_restarted_node_is_reconnected() {
    let certs = generate(&names(&["node-a", "node-b", "node-c"]), &[]).unwrap();
    let (la, lb, lc) = (bind().await, bind().await, bind().await);
    let (aa, ab, ac) = (
        la.local_addr().unwrap(),
        lb.local_addr().unwrap(),
        lc.local_addr().unwrap(),
    );
    let cookie = certs.cookie.as_str();
    let cfg_c = || {
        config(
            "node-c",
            &[("node-a", aa), ("node-b", ab)],
            cookie,
            tls(&certs, "node-c"),
        )
    };
    let mut a = start(
        config(
            "node-a",
            &[("node-b", ab), ("node-c", ac)],
            cookie,
            tls(&certs, "node-a"),
        ),
        la,
    );
    let mut b = start(
        config(
            "node-b",
            &[("node-a", aa), ("node-c", ac)],
            cookie,
            tls(&certs, "node-b"),
        ),
        lb,
    );
    let mut c = start(cfg_c(), lc);
    until("a full mesh", || {
        a.t.connected() == set(&["node-b", "node-c"])
            && b.t.connected() == set(&["node-a", "node-c"])
            && c.t.connected() == set(&["node-a", "node-b"])
    })
    .await;

    // Every node to every other, both ways.
    for (n, from) in [(&a, "node-a"), (&b, "node-b"), (&c, "node-c")] {
        for to in ["node-a", "node-b", "node-c"] {
            if to != from {
                n.t.send(to, msg(from, 1)).unwrap();
            }
        }
    }
    for (n, me) in [(&mut a, "node-a"), (&mut b, "node-b"), (&mut c, "node-c")] {
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = recv(&mut n.rx).await;
            assert_eq!(m.from, m.msg.from, "the authenticated name is the sender");
            assert_eq!(m.msg, msg(&m.from, 1));
            got.push(m.from);
        }
        got.sort();
        let expected: Vec<String> = ["node-a", "node-b", "node-c"]
            .iter()
            .filter(|n| **n != me)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, expected);
    }
    // (Counted just after the write and the delivery: poll.)
    until("a's counters", || {
        let st = a.t.stats();
        st.frames_sent == 2 && st.frames_received == 2
    })
    .await;

    // node-c goes away: the others see it down and cannot send to it.
    c.t.shutdown();
    down(&mut a.events, "node-c", "").await;
    down(&mut b.events, "node-c", "").await;
    until("a sees c gone", || a.t.connected() == set(&["node-b"])).await;
    assert_eq!(
        a.t.send("node-c", msg("node-a", 2)),
        Err(SendError::NotConnected("node-c".into()))
    );
    assert_eq!(a.t.stats().dropped_not_connected, 1);

    // It comes back on the same address and is reconnected to.
    let mut c = start(cfg_c(), rebind(ac).await);
    event(
        &mut a.events,
        "a up to c again",
        |e| matches!(e, TransportEvent::Up { peer } if peer == "node-c"),
    )
    .await;
    until("the mesh again", || {
        a.t.connected() == set(&["node-b", "node-c"])
            && b.t.connected() == set(&["node-a", "node-c"])
            && c.t.connected() == set(&["node-a", "node-b"])
    })
    .await;
    a.t.send("node-c", msg("node-a", 3)).unwrap();
    c.t.send("node-a", msg("node-c", 3)).unwrap();
    assert_eq!(recv(&mut c.rx).await.msg, msg("node-a", 3));
    assert_eq!(recv(&mut a.rx).await.msg, msg("node-c", 3));
    for n in [&a, &b, &c] {
        n.t.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_unconnected_peers_fail_at_once_in_plaintext_too() {
    let (la, lb) = (bind().await, bind().await);
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let sec = || gridvisor_cluster::transport::Security::PlaintextForTests;
    let a = start(config("node-a", &[("node-b", ab)], "secret", sec()), la);
    assert_eq!(
        a.t.send("node-z", msg("node-a", 1)),
        Err(SendError::UnknownPeer("node-z".into()))
    );
    assert_eq!(
        a.t.send("node-b", msg("node-a", 1)),
        Err(SendError::NotConnected("node-b".into()))
    );
    let mut b = start(config("node-b", &[("node-a", aa)], "secret", sec()), lb);
    until("a to b", || a.t.connected() == set(&["node-b"])).await;
    a.t.send("node-b", msg("node-a", 7)).unwrap();
    let got = recv(&mut b.rx).await;
    assert_eq!((got.from.as_str(), got.msg), ("node-a", msg("node-a", 7)));
    // The plaintext mode still checks the cookie.
    let lc = bind().await;
    // (A second "node-b" with another cookie: plaintext has no certificate to tell them apart.)
    let mut c = start(config("node-b", &[("node-a", aa)], "other", sec()), lc);
    let reason = down(&mut c.events, "node-a", "cookie").await;
    assert!(reason.contains("refused by node-a"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_cannot_join() {
    let ours = generate(&names(&["node-a", "node-b"]), &[]).unwrap();
    let foreign = generate(&names(&["node-b"]), &[]).unwrap();
    let (la, lb) = (bind().await, bind().await);
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let cookie = ours.cookie.as_str();
    let mut a = start(
        config("node-a", &[("node-b", ab)], cookie, tls(&ours, "node-a")),
        la,
    );
    let mut b = start(
        config("node-b", &[("node-a", aa)], cookie, tls(&foreign, "node-b")),
        lb,
    );

    // As acceptor: a dials the impostor and refuses its server certificate.
    let reason = down(&mut a.events, "node-b", "TLS handshake").await;
    assert!(
        reason.contains("invalid peer certificate: UnknownIssuer"),
        "{reason}"
    );
    // As dialer: the impostor's handshake with a fails; a reports it.
    let reason = rejected(&mut a.events, "TLS handshake failed").await;
    assert!(
        reason.contains("alert") || reason.contains("certificate"),
        "{reason}"
    );
    let reason = down(&mut b.events, "node-a", "TLS handshake").await;
    assert!(
        reason.contains("invalid peer certificate: UnknownIssuer"),
        "{reason}"
    );

    // A client that trusts our CA but presents the foreign certificate: a's verifier says why.
    let (cert, key) = &foreign.nodes["node-b"];
    let client = raw_tls(aa, &ours.ca_pem, cert, key, "node-a").await;
    // TLS 1.3: the client may finish before the server checked its certificate.
    if let Ok(mut s) = client {
        let _ = envelope::write_frame(
            &mut s,
            &Hello {
                protocol: PROTOCOL,
                node: "node-b".into(),
                cookie: cookie.into(),
                settings: SETTINGS.into(),
            },
        )
        .await;
    }
    let reason = rejected(&mut a.events, "UnknownIssuer").await;
    assert!(
        reason.contains("TLS handshake failed: invalid peer certificate"),
        "{reason}"
    );
    assert!(a.t.connected().is_empty() && b.t.connected().is_empty());
    assert!(a.t.stats().rejected_handshakes >= 2);
}

/// node-a configured right and node-b configured by `alter`: node-a refuses node-b with a
/// reason containing `expected`, node-b hears that refusal, and no link comes up. Returns
/// node-a's reason.
async fn refused_pair(alter: impl FnOnce(&mut TransportConfig), expected: &str) -> String {
    let certs = generate(&names(&["node-a", "node-b"]), &[]).unwrap();
    let (la, lb) = (bind().await, bind().await);
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let mut a = start(
        config(
            "node-a",
            &[("node-b", ab)],
            &certs.cookie,
            tls(&certs, "node-a"),
        ),
        la,
    );
    let mut b_config = config(
        "node-b",
        &[("node-a", aa)],
        &certs.cookie,
        tls(&certs, "node-b"),
    );
    alter(&mut b_config);
    let mut b = start(b_config, lb);
    let reason = rejected(&mut a.events, expected).await;
    assert!(reason.contains("node-b"), "{reason}");
    let heard = down(&mut b.events, "node-a", expected).await;
    assert!(heard.starts_with("refused by node-a"), "{heard}");
    assert!(a.t.connected().is_empty() && b.t.connected().is_empty());
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_is_refused() {
    refused_pair(|c| c.cookie = "not-the-cookie".into(), "wrong cookie").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_other_cluster_settings_is_refused_and_both_are_named() {
    let reason = refused_pair(
        |c| c.settings = "lease_ms=3000 nodes=a,b".into(),
        "other cluster settings",
    )
    .await;
    assert!(reason.contains("[lease_ms=3000 nodes=a,b]"), "{reason}");
    assert!(reason.contains(&format!("[{SETTINGS}]")), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_one_node_cannot_claim_another() {
    let certs = generate(&names(&["node-a", "node-b", "node-c"]), &[]).unwrap();
    let la = bind().await;
    let aa = la.local_addr().unwrap();
    let (db, dc) = (dead_addr().await, dead_addr().await);
    let mut a = start(
        config(
            "node-a",
            &[("node-b", db), ("node-c", dc)],
            &certs.cookie,
            tls(&certs, "node-a"),
        ),
        la,
    );
    let (cert, key) = &certs.nodes["node-b"];
    let mut s = raw_tls(aa, &certs.ca_pem, cert, key, "node-a")
        .await
        .unwrap();
    let hello = Hello {
        protocol: PROTOCOL,
        node: "node-c".into(),
        cookie: certs.cookie.clone(),
        settings: SETTINGS.into(),
    };
    envelope::write_frame(&mut s, &hello).await.unwrap();
    let reply: HelloReply = envelope::read_frame(&mut s, DEADLINE).await.unwrap();
    let HelloReply::Refused { reason } = reply else {
        panic!("{reply:?}")
    };
    assert!(reason.contains("claims to be \"node-c\""), "{reason}");
    assert!(reason.contains("node-b"), "{reason}");
    let event_reason = rejected(&mut a.events, "claims to be").await;
    assert_eq!(event_reason, reason);

    // An unsupported handshake protocol is refused first, whatever else is wrong.
    let mut s = raw_tls(aa, &certs.ca_pem, cert, key, "node-a")
        .await
        .unwrap();
    let hello = Hello {
        protocol: PROTOCOL + 1,
        node: "node-c".into(),
        cookie: "x".into(),
        settings: String::new(),
    };
    envelope::write_frame(&mut s, &hello).await.unwrap();
    let reply: HelloReply = envelope::read_frame(&mut s, DEADLINE).await.unwrap();
    assert!(
        matches!(&reply, HelloReply::Refused { reason } if reason.contains(&format!("unsupported protocol version {}", PROTOCOL + 1))),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_not_in_the_peer_list_is_refused() {
    let certs = generate(&names(&["node-a", "node-b", "node-d"]), &[]).unwrap();
    let (la, ld) = (bind().await, bind().await);
    let aa = la.local_addr().unwrap();
    let db = dead_addr().await;
    let mut a = start(
        config(
            "node-a",
            &[("node-b", db)],
            &certs.cookie,
            tls(&certs, "node-a"),
        ),
        la,
    );
    let mut d = start(
        config(
            "node-d",
            &[("node-a", aa)],
            &certs.cookie,
            tls(&certs, "node-d"),
        ),
        ld,
    );
    let reason = rejected(&mut a.events, "not a configured peer").await;
    assert!(reason.contains("\"node-d\""), "{reason}");
    let reason = down(&mut d.events, "node-a", "not a configured peer").await;
    assert!(reason.starts_with("refused by node-a"), "{reason}");
    assert!(d.t.connected().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_by_the_tls_handshake() {
    let certs = generate(&names(&["node-a", "node-b"]), &[]).unwrap();
    let la = bind().await;
    let aa = la.local_addr().unwrap();
    let db = dead_addr().await;
    let mut a = start(
        config(
            "node-a",
            &[("node-b", db)],
            &certs.cookie,
            tls(&certs, "node-a"),
        ),
        la,
    );
    let mut s = tokio::net::TcpStream::connect(aa).await.unwrap();
    let hello = Hello {
        protocol: PROTOCOL,
        node: "node-b".into(),
        cookie: certs.cookie.clone(),
        settings: SETTINGS.into(),
    };
    envelope::write_frame(&mut s, &hello).await.unwrap();
    let reason = rejected(&mut a.events, "TLS handshake failed").await;
    assert!(!reason.is_empty());
    // The connection is closed (perhaps after a TLS alert).
    let mut buf = [0u8; 256];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the plaintext connection was not closed");
}

/// Completes the TLS and hello handshake as `node` and returns the stream.
async fn authenticated(
    certs: &certs::GeneratedCerts,
    addr: std::net::SocketAddr,
    node: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (cert, key) = &certs.nodes[node];
    let mut s = raw_tls(addr, &certs.ca_pem, cert, key, "node-a")
        .await
        .unwrap();
    let hello = Hello {
        protocol: PROTOCOL,
        node: node.into(),
        cookie: certs.cookie.clone(),
        settings: SETTINGS.into(),
    };
    envelope::write_frame(&mut s, &hello).await.unwrap();
    let reply: HelloReply = envelope::read_frame(&mut s, DEADLINE).await.unwrap();
    assert!(matches!(reply, HelloReply::Welcome { .. }), "{reply:?}");
    s
}

/// Reads until the server closes the stream (pings may come first).
async fn closed(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the link was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_link() {
    use tokio::io::AsyncWriteExt;
    let certs = generate(&names(&["node-a", "node-b", "node-c"]), &[]).unwrap();
    let (la, lb) = (bind().await, bind().await);
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let dc = dead_addr().await;
    let mut a = start(
        config(
            "node-a",
            &[("node-b", ab), ("node-c", dc)],
            &certs.cookie,
            tls(&certs, "node-a"),
        ),
        la,
    );
    let mut b = start(
        config(
            "node-b",
            &[("node-a", aa)],
            &certs.cookie,
            tls(&certs, "node-b"),
        ),
        lb,
    );
    until("a and b linked", || {
        a.t.connected() == set(&["node-b"]) && b.t.connected() == set(&["node-a"])
    })
    .await;

    // An envelope version this build does not read.
    let mut s = authenticated(&certs, aa, "node-c").await;
    let mut frame = envelope::encode(&Frame::Message(msg("node-c", 1))).unwrap();
    frame[2..4].copy_from_slice(&7u16.to_be_bytes());
    s.write_all(&frame).await.unwrap();
    s.flush().await.unwrap();
    let reason = rejected(&mut a.events, "version 7").await;
    assert!(
        reason.starts_with("node-c: unsupported envelope version 7"),
        "{reason}"
    );
    closed(&mut s).await;

    // Garbage.
    let mut s = authenticated(&certs, aa, "node-c").await;
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    s.flush().await.unwrap();
    let reason = rejected(&mut a.events, "not a gridvisor frame").await;
    assert!(reason.starts_with("node-c:"), "{reason}");
    closed(&mut s).await;

    // A valid envelope of the wrong type.
    let mut s = authenticated(&certs, aa, "node-c").await;
    envelope::write_frame(&mut s, &("not", "a", "frame"))
        .await
        .unwrap();
    let reason = rejected(&mut a.events, "does not decode").await;
    assert!(reason.contains("Frame"), "{reason}");
    closed(&mut s).await;

    // A declared length beyond the link's limit is refused before it is read.
    let mut s = authenticated(&certs, aa, "node-c").await;
    let mut header =
        envelope::encode(&Frame::<()>::Ping).unwrap()[..envelope::HEADER_BYTES].to_vec();
    header[4..8].copy_from_slice(&(u32::MAX).to_be_bytes());
    s.write_all(&header).await.unwrap();
    s.flush().await.unwrap();
    rejected(&mut a.events, "exceeds the limit").await;
    closed(&mut s).await;

    assert_eq!(a.t.stats().bad_frames, 4);
    // The good peers never noticed.
    assert_eq!(a.t.connected(), set(&["node-b"]));
    b.t.send("node-a", msg("node-b", 9)).unwrap();
    a.t.send("node-b", msg("node-a", 9)).unwrap();
    assert_eq!(recv(&mut a.rx).await.msg, msg("node-b", 9));
    assert_eq!(recv(&mut b.rx).await.msg, msg("node-a", 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_fills_the_queue_and_send_fails_fast() {
    const QUEUE: usize = 16;
    const MAX_SENDS: usize = 5_000;
    const STABLE: usize = 200;
    let certs = generate(&names(&["node-a", "node-b"]), &[]).unwrap();
    let (la, lb) = (bind().await, bind().await);
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let mut cfg = config(
        "node-a",
        &[("node-b", ab)],
        &certs.cookie,
        tls(&certs, "node-a"),
    );
    cfg.limits.queue = QUEUE;
    let a = start(cfg, la);
    // node-b's inbound channel holds one message and nobody drains it: its reader waits, the
    // socket fills, then node-a's queue.
    let mut b = start_with(
        config(
            "node-b",
            &[("node-a", aa)],
            &certs.cookie,
            tls(&certs, "node-b"),
        ),
        lb,
        1,
    );
    until("a to b", || a.t.connected() == set(&["node-b"])).await;
    let big = |n: u64| Msg {
        from: "node-a".into(),
        n,
        text: "x".repeat(64 * 1024),
    };
    // Send until the queue has been full for STABLE attempts in a row (the writer may
    // drain a little more while the socket buffers fill). No send may block.
    let mut sent = 0u64;
    let mut full_in_a_row = 0;
    for _ in 0..MAX_SENDS {
        let started = std::time::Instant::now();
        match a.t.send("node-b", big(sent)) {
            Ok(()) => {
                sent += 1;
                full_in_a_row = 0;
            }
            Err(SendError::QueueFull { peer, limit }) => {
                assert_eq!((peer.as_str(), limit), ("node-b", QUEUE));
                full_in_a_row += 1;
                if full_in_a_row == STABLE {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1), "send blocked");
        // Let the writer drain into the socket meanwhile.
        tokio::task::yield_now().await;
    }
    assert_eq!(
        full_in_a_row, STABLE,
        "{MAX_SENDS} sends and the queue never stayed full"
    );
    assert!(sent >= QUEUE as u64, "{sent}");
    assert!(a.t.stats().dropped_queue_full >= STABLE as u64);
    // The link stays up (pings flow the other way), and once node-b reads, sends work again:
    // every accepted message arrives, in order.
    assert_eq!(a.t.connected(), set(&["node-b"]));
    let mut next = 0;
    fn check(next: &mut u64, m: gridvisor_cluster::transport::Inbound<Msg>) {
        assert_eq!(m.msg.n, *next, "in order, none lost");
        *next += 1;
    }
    until("room again", || {
        while let Ok(m) = b.rx.try_recv() {
            check(&mut next, m);
        }
        a.t.send("node-b", big(sent)).is_ok()
    })
    .await;
    let total = sent + 1;
    tokio::time::timeout(DEADLINE, async {
        while next < total {
            match b.rx.recv().await {
                Some(m) => check(&mut next, m),
                None => panic!("inbound closed"),
            }
        }
    })
    .await
    .expect("not everything was delivered");
    assert_eq!(next, total);
    assert_eq!(a.t.stats().frames_sent, total);
}

#[test]
fn dev_certs_are_written_private_and_not_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let nodes = names(&["node-a", "node-b"]);
    let pod = "gridvisor-0.gridvisor.default.svc.cluster.local";
    let extra = names(&[pod, "10.0.0.7"]);
    let written = write_dev_certs(&out, &nodes, &extra, false).unwrap();
    let files: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        [
            "ca.pem",
            "ca-key.pem",
            "node-a.pem",
            "node-a-key.pem",
            "node-b.pem",
            "node-b-key.pem",
            "cookie"
        ]
    );
    for p in &written {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let name = p.file_name().unwrap().to_string_lossy();
        if name.ends_with("-key.pem") || name == "cookie" {
            assert_eq!(mode, 0o600, "{name}");
        } else {
            assert_eq!(mode & 0o077 & !0o044, 0, "{name}: {mode:o}");
        }
    }
    let cookie = certs::read_cookie(&out.join("cookie")).unwrap();
    assert_eq!(cookie.len(), 2 * certs::COOKIE_BYTES);
    assert!(cookie.bytes().all(|b| b.is_ascii_hexdigit()));

    // No overwrite without force: the error names the file, nothing changed.
    let before = std::fs::read_to_string(out.join("ca.pem")).unwrap();
    let e = write_dev_certs(&out, &nodes, &extra, false).unwrap_err();
    assert!(
        e.to_string().contains("ca.pem") && e.to_string().contains("already exists"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(out.join("ca.pem")).unwrap(), before);
    write_dev_certs(&out, &nodes, &extra, true).unwrap();
    assert_ne!(std::fs::read_to_string(out.join("ca.pem")).unwrap(), before);

    for node in ["node-a", "node-b"] {
        let t = NodeTls::load(&node_files(&out, node), node).unwrap();
        assert_eq!(t.node(), node);
        let der = CertificateDer::pem_file_iter(out.join(format!("{node}.pem")))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let names = peer_names(&der).unwrap();
        assert_eq!(
            names,
            [node, "localhost", pod],
            "CN first, then SAN DNS names"
        );
    }
    let e = NodeTls::load(&node_files(&out, "node-a"), "node-b")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node-a.pem") && e.contains("not node \"node-b\""),
        "{e}"
    );
    let mut missing = node_files(&out, "node-a");
    missing.key = out.join("nope-key.pem");
    let e = NodeTls::load(&missing, "node-a").unwrap_err().to_string();
    assert!(e.contains("nope-key.pem"), "{e}");
    // A certificate file cut short, and a key file with no key: the file and what is wrong.
    let cut = out.join("cut.pem");
    let pem = std::fs::read_to_string(out.join("node-a.pem")).unwrap();
    std::fs::write(&cut, &pem[..pem.len() / 2]).unwrap();
    let mut truncated = node_files(&out, "node-a");
    truncated.cert = cut.clone();
    let e = NodeTls::load(&truncated, "node-a").unwrap_err().to_string();
    assert!(
        e.contains("cut.pem") && e.contains("`-----END CERTIFICATE-----`"),
        "{e}"
    );
    let mut keyless = node_files(&out, "node-a");
    keyless.key = out.join("node-a.pem");
    let e = NodeTls::load(&keyless, "node-a").unwrap_err().to_string();
    assert!(e.contains("node-a.pem") && e.contains("key"), "{e}");
    // The key of another node does not match the certificate.
    let mut swapped = node_files(&out, "node-a");
    swapped.key = out.join("node-b-key.pem");
    assert!(NodeTls::load(&swapped, "node-a").is_err());
    // A certificate from another CA.
    let other = generate(&names(&["node-a"]), &[]).unwrap();
    let (cert, key) = &other.nodes["node-a"];
    let ca = std::fs::read_to_string(out.join("ca.pem")).unwrap();
    let e = NodeTls::from_pem(&ca, cert, key, "node-a")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a valid client certificate under the cluster CA"),
        "{e}"
    );
}

#[test]
fn bad_node_names_and_hosts_are_named() {
    for bad in ["Node_A", "node.a", "-a", "ca"] {
        let e = generate(&names(&["node-a", bad]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{bad:?}")), "{e}");
    }
    let e = generate(&names(&["node-a", "node-a"]), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    let e = generate(&names(&["node-a"]), &names(&["bad host!"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad host!"), "{e}");
}

#[tokio::test]
async fn a_configuration_that_cannot_work_is_an_error_at_start() {
    let certs = generate(&names(&["node-a", "node-b"]), &[]).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel::<gridvisor_cluster::transport::Inbound<Msg>>(1);
    let ab = dead_addr().await;
    // The TLS identity of another node.
    let e = Transport::start(
        config(
            "node-a",
            &[("node-b", ab)],
            &certs.cookie,
            tls(&certs, "node-b"),
        ),
        bind().await,
        tx.clone(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("identity is for \"node-b\""), "{e}");
    let mut cfg = config(
        "node-a",
        &[("node-b", ab)],
        &certs.cookie,
        tls(&certs, "node-a"),
    );
    cfg.limits.queue = 0;
    assert!(Transport::<Msg>::start(cfg, bind().await, tx.clone()).is_err());
    let mut cfg = config(
        "node-a",
        &[("node-b", ab)],
        &certs.cookie,
        tls(&certs, "node-a"),
    );
    cfg.peers.insert("node-b".into(), "node-b.local".into());
    let e = Transport::<Msg>::start(cfg, bind().await, tx.clone()).unwrap_err();
    assert!(e.to_string().contains("is not host:port"), "{e}");
    let cfg = config(
        "node-a",
        &[("node-a", ab)],
        &certs.cookie,
        tls(&certs, "node-a"),
    );
    assert!(Transport::<Msg>::start(cfg, bind().await, tx).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_declared_dead_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(300);
    let certs = generate(&names(&["node-a", "node-b"]), &[]).unwrap();
    let (la, lb) = (bind().await, bind().await);
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let mut cfg = config(
        "node-a",
        &[("node-b", ab)],
        &certs.cookie,
        tls(&certs, "node-a"),
    );
    cfg.limits.idle_timeout = IDLE;
    let mut a = start(cfg, la);

    // As dialer: node-b accepts and welcomes node-a, then never sends a frame.
    let (cert, key) = &certs.nodes["node-b"];
    let b_tls = NodeTls::from_pem(&certs.ca_pem, cert, key, "node-b").unwrap();
    let (tcp, _) = tokio::time::timeout(DEADLINE, lb.accept())
        .await
        .unwrap()
        .unwrap();
    let mut silent_acceptor = tokio_rustls::TlsAcceptor::from(b_tls.server_config())
        .accept(tcp)
        .await
        .unwrap();
    let hello: Hello = envelope::read_frame(&mut silent_acceptor, DEADLINE)
        .await
        .unwrap();
    assert_eq!(hello.node, "node-a");
    let welcome = HelloReply::Welcome {
        protocol: PROTOCOL,
        node: "node-b".into(),
    };
    envelope::write_frame(&mut silent_acceptor, &welcome)
        .await
        .unwrap();
    event(
        &mut a.events,
        "Up node-b",
        |e| matches!(e, TransportEvent::Up { peer } if peer == "node-b"),
    )
    .await;
    let reason = down(&mut a.events, "node-b", "the link is dead").await;
    assert!(reason.contains("300ms"), "{reason}");
    assert!(a.t.connected().is_empty());

    // As acceptor: a dialer that authenticates and then goes silent is dropped.
    let mut silent_dialer = authenticated(&certs, aa, "node-b").await;
    closed(&mut silent_dialer).await;
    drop(silent_acceptor);
}
