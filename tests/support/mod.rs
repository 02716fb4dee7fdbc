//! What the root package's process tests share: the demo node as a child process (its
//! stdout read line by line, killed on drop), a process killed on drop, and a minimal
//! HTTP/1.1 client. Every wait is bounded by [`LIMIT`].
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every wait of a process test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A child process killed when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo node (`gridvisor run` without a config) on loopback, every port picked by the
/// system; its stdout is read on a thread (a node whose stdout closes keeps running, but its
/// lines would be lost).
pub struct DemoNode {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DemoNode {
    /// Start it with its checkpoints in `data`, `global` arguments (e.g. `--log-format json`) before `run`.
    /// Its vehicles keep the fixed bays of configs/demo.toml (`--arrivals off`): the tests
    /// that use it look for `ev-1` at `evse-1` (tests/demo_arrivals.rs runs the default).
    pub fn start_with(data: &Path, global: &[&str]) -> DemoNode {
        DemoNode::start_args(
            data,
            global,
            &["--ocpp", "127.0.0.1:0", "--arrivals", "off"],
        )
    }

    /// Start it with `global` arguments before `run` and `extra` ones after it (e.g.
    /// `--config site.toml`; the embedded demo's CSMS needs `--ocpp 127.0.0.1:0`).
    pub fn start_args(data: &Path, global: &[&str], extra: &[&str]) -> DemoNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
            .args(global)
            .arg("run")
            .args(extra)
            .args(["--grid", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gridvisor starts");
        let lines = stdout_lines(&mut child);
        DemoNode {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Start it with its checkpoints in `data`.
    pub fn start(data: &Path) -> DemoNode {
        DemoNode::start_with(data, &[])
    }

    /// Wait for a stdout line containing `needle`.
    pub fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The grid and admin API addresses (host:port), once the node is serving.
    pub fn addresses(&mut self) -> (String, String) {
        let grid = addr_of(&self.line("grid API"));
        let admin = addr_of(&self.line("metrics"));
        self.line("Ctrl-C");
        (grid, admin)
    }
}

/// The host:port of the first `http://` or `https://` URL in `line`.
pub fn addr_of(line: &str) -> String {
    let url = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://").or(w.strip_prefix("https://")))
        .expect("a URL");
    url.split('/').next().expect("host:port").to_string()
}

/// A minimal HTTP/1.1 exchange, one request per connection: (status, body).
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(LIMIT))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {raw}")))?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// [`try_http`] that panics on a connection error.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    try_http(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// [`try_http`] with extra request headers (`name`, `value`).
pub fn try_http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(LIMIT))?;
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(s, "{head}\r\n{body}")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {raw}")))?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The lines `child` writes to its (piped) stdout, read by a thread of their own.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("a piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    lines
}

/// `gridvisor certs --out OUT --nodes A,B,…`: a development CA, a certificate and key per
/// name (`{name}.pem`, `{name}-key.pem`), `ca.pem` and a cookie, in `out`.
#[allow(dead_code)] // not every test binary makes certificates
pub fn make_certs(out: &Path, names: &[&str]) {
    let made = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .args(["certs", "--out"])
        .arg(out)
        .args(["--nodes", &names.join(",")])
        .output()
        .expect("gridvisor certs runs");
    assert!(
        made.status.success(),
        "gridvisor certs: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}
