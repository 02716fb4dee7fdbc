//! Shared by the Modbus tests: the pymodbus server of tests/py/modbus_server.py, and a
//! hand-rolled Modbus TCP peer over a raw TcpListener that can misbehave on purpose.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU8, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use gridvisor_transports::modbus::{ClientConfig, ModbusClient};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The tests' Python: their own venv from the pinned requirements (`GRIDVISOR_PYTHON`
/// overrides).
pub use gridvisor_testkit::python;

/// Fails (never skips) when pymodbus 3.16.1 or pysunspec2 is missing from the tests' venv:
/// the interop tests are part of the suite.
pub fn require_pymodbus() {
    let out = Command::new(python())
        .args([
            "-c",
            "import pymodbus, sunspec2; assert pymodbus.__version__ == '3.16.1', pymodbus.__version__",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "pymodbus 3.16.1 / pysunspec2 missing from {} ({}): are they in transports/tests/py/requirements.txt?",
            python().display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {} ({e})",
            python().display()
        ),
    }
}

pub fn py_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// tests/py/modbus_server.py, running; killed when dropped.
pub struct PyServer {
    child: Child,
    /// The first line it printed.
    pub info: Value,
    lines: mpsc::Receiver<Value>,
}

impl PyServer {
    pub fn start(args: &[&str]) -> Self {
        Self::start_script("modbus_server.py", args)
    }

    /// Another server script of tests/py (e.g. `modbus_relay.py`), with the same protocol:
    /// a first JSON line with the port, then one line per write.
    pub fn start_script(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(py_dir().join(script))
            .args(args)
            .args(["--timeout", "120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("a test server printed {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let info = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                panic!("{script} did not start within 30 s: {e}");
            }
        };
        Self {
            child,
            info,
            lines: rx,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        let port = self.info["port"].as_u64().expect("port") as u16;
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The write reports printed so far (waits up to `wait` for at least `n`).
    pub fn writes(&self, n: usize, wait: Duration) -> Vec<Value> {
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => out.push(v["write"].clone()),
                Err(_) => break,
            }
        }
        while let Ok(v) = self.lines.try_recv() {
            out.push(v["write"].clone());
        }
        out
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tests' request time-out: short enough for a quick run, long enough that a good peer
/// answers in time on a loaded CI machine.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// The tests' first back-off: long enough that "the next request fails at once while backing
/// off" holds however slowly the test itself runs.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// A client config for tests: short time-outs and back-off (see the constants).
pub fn test_config(addr: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(addr);
    c.connect_timeout = Duration::from_secs(2);
    c.request_timeout = REQUEST_TIMEOUT;
    c.backoff_initial = BACKOFF;
    c.backoff_max = 4 * BACKOFF;
    c
}

pub fn client(addr: SocketAddr) -> ModbusClient {
    ModbusClient::new(test_config(addr))
}

/// How the raw peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// A correct Modbus TCP server over registers whose value is their address.
    Good = 0,
    /// Reads requests, never answers.
    Silent = 1,
    /// Answers every request with bytes that are no Modbus frame.
    Garbage = 2,
    /// Reads one request, then closes the connection.
    Close = 3,
    /// Answers with another transaction id.
    WrongTransaction = 4,
    /// Answers read requests with one register fewer than asked.
    ShortRead = 5,
    /// Answers with a Modbus exception 0x02 (illegal data address).
    Exception = 6,
    /// Answers correctly after 400 ms.
    Slow = 7,
    /// Answers with a frame whose protocol id is not 0.
    BadProtocol = 8,
    /// Answers with another function code.
    WrongFunction = 9,
    /// Answers with a short frame of noise (length 3, protocol id 0xBEEF).
    Noise = 10,
}

/// A raw Modbus TCP peer on 127.0.0.1; its mode can change while it runs (a connection
/// keeps the mode it was accepted with, so that "a good server appears" is a reconnection).
pub struct Peer {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Connections the client closed (EOF seen by the peer).
    pub closed_by_client: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, mode)
    }

    pub fn on(listener: TcpListener, mode: Mode) -> Self {
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (m, a, c) = (mode.clone(), accepted.clone(), closed_by_client.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let mode = m.load(Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    if serve(stream, mode).await {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            mode,
            accepted,
            closed_by_client,
            task,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn closed_by_client(&self) -> usize {
        self.closed_by_client.load(Ordering::SeqCst)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one MBAP frame: (transaction id, unit id, PDU); `None` at EOF.
async fn read_frame(s: &mut TcpStream) -> Option<(u16, u8, Vec<u8>)> {
    let mut head = [0u8; 7];
    s.read_exact(&mut head).await.ok()?;
    let len = u16::from_be_bytes([head[4], head[5]]) as usize;
    let mut pdu = vec![0u8; len.checked_sub(1)?];
    s.read_exact(&mut pdu).await.ok()?;
    Some((u16::from_be_bytes([head[0], head[1]]), head[6], pdu))
}

fn frame(tid: u16, protocol: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(7 + pdu.len());
    f.extend(tid.to_be_bytes());
    f.extend(protocol.to_be_bytes());
    f.extend(((pdu.len() + 1) as u16).to_be_bytes());
    f.push(unit);
    f.extend(pdu);
    f
}

/// The correct answer to a request PDU: registers hold their own address; writes are echoed.
pub fn good_answer(pdu: &[u8]) -> Vec<u8> {
    let u16_at = |i: usize| u16::from_be_bytes([pdu[i], pdu[i + 1]]);
    match pdu.first() {
        Some(&f @ (3 | 4)) if pdu.len() >= 5 => {
            let (addr, count) = (u16_at(1), u16_at(3));
            let mut out = vec![f, (count * 2) as u8];
            for i in 0..count {
                out.extend(addr.wrapping_add(i).to_be_bytes());
            }
            out
        }
        Some(6) if pdu.len() >= 5 => pdu[..5].to_vec(),
        Some(16) if pdu.len() >= 5 => pdu[..5].to_vec(),
        Some(&f) => vec![f | 0x80, 0x01],
        None => vec![0x80, 0x01],
    }
}

/// Serves one connection; `true` when the client closed it.
async fn serve(mut s: TcpStream, mode: u8) -> bool {
    loop {
        let Some((tid, unit, pdu)) = read_frame(&mut s).await else {
            return true;
        };
        let reply = match mode {
            m if m == Mode::Good as u8 => frame(tid, 0, unit, &good_answer(&pdu)),
            m if m == Mode::Silent as u8 => continue,
            m if m == Mode::Garbage as u8 => b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            m if m == Mode::Noise as u8 => vec![0xDE, 0xAD, 0xBE, 0xEF, 0, 3, 0xFF, 0x42, 0x42],
            m if m == Mode::Close as u8 => return false,
            m if m == Mode::WrongTransaction as u8 => {
                frame(tid.wrapping_add(7), 0, unit, &good_answer(&pdu))
            }
            m if m == Mode::ShortRead as u8 => {
                let mut a = good_answer(&pdu);
                if matches!(a.first(), Some(3 | 4)) && a[1] >= 2 {
                    a[1] -= 2;
                    a.truncate(a.len() - 2);
                }
                frame(tid, 0, unit, &a)
            }
            m if m == Mode::Exception as u8 => frame(tid, 0, unit, &[pdu[0] | 0x80, 0x02]),
            m if m == Mode::Slow as u8 => {
                tokio::time::sleep(Duration::from_millis(400)).await;
                frame(tid, 0, unit, &good_answer(&pdu))
            }
            m if m == Mode::BadProtocol as u8 => frame(tid, 1, unit, &good_answer(&pdu)),
            m if m == Mode::WrongFunction as u8 => {
                let mut a = good_answer(&pdu);
                a[0] = if a[0] == 3 { 4 } else { 3 };
                frame(tid, 0, unit, &a)
            }
            _ => return false,
        };
        if s.write_all(&reply).await.is_err() {
            return false;
        }
    }
}

/// A free port on 127.0.0.1 with nothing listening (bound, then released).
pub async fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The field's example of a plain register profile (a battery inverter without SunSpec):
/// active and reactive power at 40001 and 40002, a discharge limit at 0x4001 up to 15.0 kW.
pub const FIELD_PROFILE: &str =
    include_str!("../../../configs/modbus-profiles/field-battery-inverter.toml");
