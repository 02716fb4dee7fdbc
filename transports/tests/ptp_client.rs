//! The ptp4l management client against a peer on a real Unix datagram socket that answers
//! with bytes captured from ptp4l 3.1.1 (re-addressed to the client), or hangs, or lies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gridvisor_transports::ptp::codec::{captures, decode_answer};
use gridvisor_transports::ptp::{
    ClientOptions, ManagementId, PortState, PtpClient, PtpError, DEFAULT_REQUEST_TIMEOUT,
};
use tokio::net::UnixDatagram;

/// The captured answer `name`, re-addressed to the asker of `request` (its source port
/// identity becomes the target, its sequence id the answer's) as ptp4l does.
fn answer_to(name: &str, request: &[u8]) -> Vec<u8> {
    let mut a = captures()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no capture {name}"));
    a[34..44].copy_from_slice(&request[20..30]);
    a[30..32].copy_from_slice(&request[30..32]);
    a
}

/// A fake ptp4l: each request is answered by `reply` with zero or more datagrams.
fn peer(
    path: &Path,
    reply: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let socket = UnixDatagram::bind(path).unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Some(to) = from.as_pathname().map(Path::to_owned) else {
                continue;
            };
            for d in reply(&buf[..n]) {
                let _ = socket.send_to(&d, &to).await;
            }
        }
    })
}

fn options(dir: &Path, timeout: Duration) -> ClientOptions {
    ClientOptions {
        socket_dir: dir.to_owned(),
        timeout,
        ..ClientOptions::default()
    }
}

fn by_id(request: &[u8], state: &str) -> Vec<u8> {
    let id = match u16::from_be_bytes([request[52], request[53]]) {
        0xC000 => "time_status_np",
        0x2004 => "port_data_set",
        _ => "current_data_set",
    };
    answer_to(&format!("{state}.{id}.answer"), request)
}

fn server(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("ptp4l")
}

#[tokio::test]
async fn reads_the_three_data_sets_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let _peer = peer(&server(&dir), |r| vec![by_id(r, "asymmetry_3ms")]);
    let mut c =
        PtpClient::bind(server(&dir), options(dir.path(), DEFAULT_REQUEST_TIMEOUT)).unwrap();
    let local = c.local_path().to_owned();
    assert!(local.exists());
    let t = c.time_status().await.unwrap();
    assert_eq!(t.master_offset_ns, -3_000_046);
    assert!(t.gm_present);
    let p = c.port_data_set().await.unwrap();
    assert_eq!(p.port_state, PortState::Uncalibrated);
    let cds = c.current_data_set().await.unwrap();
    assert_eq!(cds.offset_from_master_ns(), -2_999_949.0);
    drop(c);
    assert!(!local.exists(), "the client's socket is removed on drop");
}

#[tokio::test]
async fn a_silent_peer_is_a_timeout_and_a_missing_one_a_send_error() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_millis(100);
    let mut c = PtpClient::bind(server(&dir), options(dir.path(), limit)).unwrap();
    let e = c.time_status().await.unwrap_err();
    assert!(matches!(e, PtpError::Send { .. }), "{e}");
    assert!(e.to_string().contains("TIME_STATUS_NP"), "{e}");
    let _peer = peer(&server(&dir), |_| Vec::new());
    let e = c.port_data_set().await.unwrap_err();
    assert!(
        matches!(e, PtpError::Timeout { id: ManagementId::PortDataSet, timeout, .. } if timeout == limit),
        "{e}"
    );
}

#[tokio::test]
async fn a_late_answer_is_skipped_and_the_right_one_taken() {
    let dir = tempfile::tempdir().unwrap();
    // Each request is answered twice: an answer to the previous request first.
    let _peer = peer(&server(&dir), |r| {
        let mut late = by_id(r, "synchronised");
        let seq = u16::from_be_bytes([r[30], r[31]]).wrapping_sub(1);
        late[30..32].copy_from_slice(&seq.to_be_bytes());
        vec![late, by_id(r, "asymmetry_3ms")]
    });
    let mut c =
        PtpClient::bind(server(&dir), options(dir.path(), DEFAULT_REQUEST_TIMEOUT)).unwrap();
    for _ in 0..3 {
        assert_eq!(c.time_status().await.unwrap().master_offset_ns, -3_000_046);
    }
}

#[tokio::test]
async fn foreign_garbage_and_refused_answers_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let _peer = peer(&server(&dir), |r| {
        let kind = u16::from_be_bytes([r[52], r[53]]);
        vec![match kind {
            // TIME_STATUS_NP: answered with a port data set.
            0xC000 => answer_to("synchronised.port_data_set.answer", r),
            // PORT_DATA_SET: garbage.
            0x2004 => b"not a ptp message at all".to_vec(),
            // CURRENT_DATA_SET: a management error status.
            _ => answer_to("error.no_such_id.answer", r),
        }]
    });
    let mut c =
        PtpClient::bind(server(&dir), options(dir.path(), DEFAULT_REQUEST_TIMEOUT)).unwrap();
    let e = c.time_status().await.unwrap_err();
    assert!(
        matches!(&e, PtpError::Foreign { what, .. } if what.contains("PORT_DATA_SET")),
        "{e}"
    );
    let e = c.port_data_set().await.unwrap_err();
    assert!(matches!(e, PtpError::Decode { .. }), "{e}");
    let e = c.current_data_set().await.unwrap_err();
    assert!(
        matches!(
            e,
            PtpError::Refused {
                error: 2,
                name: "NO_SUCH_ID",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn an_answer_addressed_to_someone_else_is_foreign() {
    let dir = tempfile::tempdir().unwrap();
    let _peer = peer(&server(&dir), |r| {
        let mut a = by_id(r, "synchronised");
        a[43] ^= 0x55; // another port number
        vec![a]
    });
    let mut c =
        PtpClient::bind(server(&dir), options(dir.path(), DEFAULT_REQUEST_TIMEOUT)).unwrap();
    let e = c.time_status().await.unwrap_err();
    assert!(
        matches!(&e, PtpError::Foreign { what, .. } if what.contains("not to this client")),
        "{e}"
    );
}

#[tokio::test]
async fn a_socket_path_too_long_is_refused_before_binding() {
    let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
    let e = PtpClient::bind(&long, ClientOptions::default()).unwrap_err();
    assert!(matches!(e, PtpError::PathTooLong(_)), "{e}");
}

#[test]
fn every_captured_answer_decodes() {
    for (name, bytes) in captures() {
        if name.ends_with(".answer") {
            decode_answer(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
