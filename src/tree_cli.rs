//! `gridvisor tree`: a running node's supervision tree in the terminal.
//!
//! Reads `/api/tree` from the admin API and, when the grid API answers, `/api/v1/segments` for
//! each segment's safe-state level. Each line is one actor: its name, kind, state and restarts,
//! coloured by the level of the segment it belongs to (green Normal, yellow Limited, magenta
//! ChargeOnly, red Tripped) and by its own state (a restarting actor is yellow, a terminated
//! one dim). `--path` keeps the actors whose path contains the text, with their ancestors and
//! descendants; `--json` prints the (filtered) tree as JSON; `--watch` redraws every so often
//! until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stdout::out;

/// Bound on one HTTP exchange with the node (connect, send, read the whole answer).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (a 100,000-session tree is a few tens of MB).
pub const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// What `gridvisor tree` was asked.
pub struct TreeOptions {
    /// The admin API.
    pub admin: SocketAddr,
    /// The grid API (for the segments' levels); unreachable: no level colours.
    pub grid: SocketAddr,
    /// Keep actors whose path contains this.
    pub path: Option<String>,
    /// Print JSON instead of the drawing.
    pub json: bool,
    /// No ANSI colours.
    pub no_color: bool,
    /// Redraw every this long.
    pub watch: Option<Duration>,
}

/// GET `path` from `addr`: the body of a 200 answer, or an error naming what went wrong.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        if answer.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(format!(
                "{addr}{path}: answer larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{addr}{path}: no answer within {HTTP_TIMEOUT:?}"))??;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr}{path}: not an HTTP answer"))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("{addr}{path}: HTTP {status}"));
    }
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Err(format!("{addr}{path}: chunked answers are not read"));
    }
    Ok(answer[split + 4..].to_vec())
}

/// Keep the nodes whose path contains `filter`, their ancestors and their descendants.
fn filter(node: &Value, text: &str) -> Option<Value> {
    let path = node["path"].as_str().unwrap_or_default();
    if path.contains(text) {
        return Some(node.clone());
    }
    let kept: Vec<Value> = node["children"]
        .as_array()
        .map(|c| c.iter().filter_map(|n| filter(n, text)).collect())
        .unwrap_or_default();
    if kept.is_empty() {
        return None;
    }
    let mut n = node.clone();
    n["children"] = Value::Array(kept);
    Some(n)
}

/// The segment a path is in (`node/segments/<id>/...`).
fn segment_of(path: &str) -> Option<&str> {
    let mut parts = path.split('/');
    while let Some(p) = parts.next() {
        if p == "segments" {
            return parts.next();
        }
    }
    None
}

const RESET: &str = "\x1b[0m";

fn level_colour(level: &str) -> &'static str {
    match level {
        "normal" => "\x1b[32m",
        "limited" => "\x1b[33m",
        "charge_only" => "\x1b[35m",
        "tripped" => "\x1b[31m",
        _ => "",
    }
}

fn draw(
    node: &Value,
    prefix: &str,
    last: bool,
    root: bool,
    levels: &std::collections::HashMap<String, String>,
    colour: bool,
    out: &mut String,
) {
    let path = node["path"].as_str().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or(path);
    let state = node["state"].as_str().unwrap_or("?");
    let restarts = node["restarts"].as_u64().unwrap_or(0);
    let kind = node["kind"].as_str().unwrap_or("?");
    let level = segment_of(path).and_then(|s| levels.get(s));
    let (on, off) = if colour {
        let c = match state {
            "restarting" => "\x1b[33m",
            "terminated" => "\x1b[2m",
            _ => level.map_or("", |l| level_colour(l)),
        };
        (c, if c.is_empty() { "" } else { RESET })
    } else {
        ("", "")
    };
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let mut line = format!("{prefix}{branch}{on}{name}{off}  {kind} {state}");
    if let Some(s) = node["strategy"].as_str() {
        line.push_str(&format!(" {s}"));
    }
    if restarts > 0 {
        line.push_str(&format!(" restarts={restarts}"));
    }
    if let (Some(l), true) = (level, path.ends_with(segment_of(path).unwrap_or("\0"))) {
        line.push_str(&format!(" [{l}]"));
    }
    out.push_str(&line);
    out.push('\n');
    let children = node["children"].as_array().cloned().unwrap_or_default();
    let next_prefix = if root {
        String::new()
    } else {
        format!("{prefix}{}", if last { "   " } else { "│  " })
    };
    for (i, c) in children.iter().enumerate() {
        draw(
            c,
            &next_prefix,
            i + 1 == children.len(),
            false,
            levels,
            colour,
            out,
        );
    }
}

async fn render(o: &TreeOptions) -> Result<String, String> {
    let body = http_get(o.admin, "/api/tree").await?;
    let tree: Value =
        serde_json::from_slice(&body).map_err(|e| format!("/api/tree is not JSON: {e}"))?;
    let tree = match &o.path {
        Some(text) => {
            filter(&tree, text).ok_or_else(|| format!("no actor's path contains {text:?}"))?
        }
        None => tree,
    };
    if o.json {
        return serde_json::to_string_pretty(&tree).map_err(|e| e.to_string());
    }
    // Levels are a nicety: a grid API that does not answer leaves the tree uncoloured.
    let mut levels = std::collections::HashMap::new();
    if let Ok(body) = http_get(o.grid, "/api/v1/segments").await {
        if let Ok(Value::Array(segs)) = serde_json::from_slice::<Value>(&body) {
            for s in segs {
                if let (Some(id), Some(level)) = (s["id"].as_str(), s["level"]["level"].as_str()) {
                    levels.insert(id.to_owned(), level.to_owned());
                }
            }
        }
    }
    let mut out = String::new();
    draw(&tree, "", true, true, &levels, !o.no_color, &mut out);
    Ok(out)
}

/// Run `gridvisor tree`.
pub async fn tree(o: TreeOptions) -> Result<(), String> {
    match o.watch {
        None => {
            let text = render(&o).await?;
            out!("{text}");
            Ok(())
        }
        Some(every) => loop {
            let text = render(&o).await?;
            // Clear the screen and draw from the top; stop when nobody reads any more.
            if !out!("\x1b[2J\x1b[H{text}") {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        },
    }
}
