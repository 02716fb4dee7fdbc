//! The cluster file (`gridvisor run --cluster FILE --node NAME`): the nodes of a cluster, its
//! certificates, cookie and lease timing. One file, shared by every node; `--node` says which
//! entry is this process.
//!
//! ```toml
//! cookie_file = "certs/cookie"     # relative to this file; GRIDVISOR_COOKIE overrides it
//! [tls]
//! ca = "certs/ca.pem"
//! cert = "certs/{node}.pem"        # {node}: the node's name
//! key = "certs/{node}-key.pem"
//! [lease]                          # optional, these are the defaults
//! heartbeat_ms = 100
//! charge_only_after_ms = 500
//! lease_ms = 1500
//! max_drift_ppm = 10000
//! [[nodes]]
//! name = "node-a"
//! cluster = "127.0.0.1:4697"       # where the others reach it (a DNS name is resolved on connect)
//! grid = "127.0.0.1:9090"
//! admin = "127.0.0.1:9464"
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridvisor_cluster::lease::LeaseConfig;
use gridvisor_cluster::tls::TlsFiles;
use serde::Deserialize;

/// The environment variable that overrides `cookie_file`.
pub const COOKIE_ENV: &str = "GRIDVISOR_COOKIE";
/// Shortest cookie accepted, characters (`gridvisor certs` writes 64).
pub const MIN_COOKIE_CHARS: usize = 16;
/// Most nodes in a cluster (a Raft group of more voters only slows commits down).
pub const MAX_NODES: usize = 9;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cookie_file: Option<PathBuf>,
    tls: TlsSection,
    #[serde(default)]
    lease: LeaseSection,
    nodes: Vec<NodeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    ca: String,
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LeaseSection {
    heartbeat_ms: u64,
    charge_only_after_ms: u64,
    lease_ms: u64,
    max_drift_ppm: u32,
}

impl Default for LeaseSection {
    fn default() -> Self {
        LeaseSection {
            heartbeat_ms: 100,
            charge_only_after_ms: 500,
            lease_ms: 1500,
            max_drift_ppm: 10_000,
        }
    }
}

/// One node of the cluster, as the file lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Its name: a DNS label, the name its certificate carries.
    pub name: String,
    /// `host:port` where the other nodes reach it.
    pub cluster: String,
    /// Where it listens for them (default: `cluster` if that is an IP address, else
    /// 0.0.0.0 and `cluster`'s port).
    pub bind: Option<SocketAddr>,
    /// Its grid API.
    pub grid: SocketAddr,
    /// Its admin API.
    pub admin: SocketAddr,
}

/// A checked cluster file, seen from one node.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node.
    pub me: NodeEntry,
    /// Every node, this one included, sorted by name.
    pub nodes: Vec<NodeEntry>,
    /// The shared secret every node presents.
    pub cookie: String,
    /// This node's certificate files.
    pub tls: TlsFiles,
    /// Lease timing.
    pub lease: LeaseConfig,
    /// How often a node confirms its lease.
    pub heartbeat: Duration,
    /// Where this node listens for the others.
    pub bind: SocketAddr,
}

impl ClusterConfig {
    /// The other nodes.
    pub fn peers(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.iter().filter(|n| n.name != self.me.name)
    }

    /// Every node's name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// What every node of the cluster must agree on, as text: the lease timings and the
    /// node names (not their addresses: each node may reach the others differently). The
    /// transport refuses a peer whose text differs and names both, so a node configured with
    /// another lease cannot count on grants computed with other numbers.
    pub fn shared_settings(&self) -> String {
        format!(
            "lease_ms={} charge_only_after_ms={} max_drift_ppm={} heartbeat_ms={} nodes={}",
            self.lease.lease.as_millis(),
            self.lease.charge_only_after.as_millis(),
            self.lease.max_drift_ppm,
            self.heartbeat.as_millis(),
            self.names().join(",")
        )
    }
}

fn dns_label_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    (!ok).then(|| {
        format!("{name:?} is not a DNS label (1 to 63 of a-z, 0-9 and inner '-'): certificates name nodes by it")
    })
}

/// Read and check the cluster file at `path` for node `node`.
pub fn load(path: &Path, node: &str) -> Result<ClusterConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the cluster file {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let cookie_env = std::env::var(COOKIE_ENV).ok();
    parse(&text, base, node, cookie_env.as_deref()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Check a cluster file's text; relative paths are taken from `base`; `cookie_env`
/// overrides `cookie_file`.
pub fn parse(
    text: &str,
    base: &Path,
    node: &str,
    cookie_env: Option<&str>,
) -> Result<ClusterConfig, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    if file.nodes.is_empty() {
        return Err("[[nodes]]: no nodes listed".into());
    }
    if file.nodes.len() > MAX_NODES {
        return Err(format!(
            "[[nodes]]: {} nodes, more than the {MAX_NODES} supported",
            file.nodes.len()
        ));
    }
    let mut names = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for n in &file.nodes {
        if let Some(p) = dns_label_problem(&n.name) {
            return Err(format!("[[nodes]] name: {p}"));
        }
        if !names.insert(n.name.clone()) {
            return Err(format!("[[nodes]]: node {:?} is listed twice", n.name));
        }
        if n.cluster
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!(
                "node {:?}: cluster = {:?} is not host:port",
                n.name, n.cluster
            ));
        }
        for (what, a) in [
            ("cluster", n.cluster.clone()),
            ("grid", n.grid.to_string()),
            ("admin", n.admin.to_string()),
        ] {
            // The same address twice on one host would make two nodes fight over a port.
            if !a.starts_with("0.0.0.0") && !addrs.insert(a.clone()) {
                return Err(format!(
                    "node {:?}: {what} address {a} is used twice",
                    n.name
                ));
            }
        }
    }
    let me = file
        .nodes
        .iter()
        .find(|n| n.name == node)
        .cloned()
        .ok_or_else(|| {
            format!(
                "--node {node:?} is not one of the nodes listed ({})",
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
    let cookie = match (cookie_env, &file.cookie_file) {
        (Some(c), _) => c.trim().to_string(),
        (None, Some(f)) => {
            let p = base.join(f);
            std::fs::read_to_string(&p)
                .map_err(|e| format!("cookie_file {}: {e}", p.display()))?
                .trim()
                .to_string()
        }
        (None, None) => {
            return Err(format!(
                "no cookie: set cookie_file or the environment variable {COOKIE_ENV}"
            ))
        }
    };
    if cookie.chars().count() < MIN_COOKIE_CHARS {
        return Err(format!(
            "the cookie has {} characters; at least {MIN_COOKIE_CHARS} are needed",
            cookie.chars().count()
        ));
    }
    let l = &file.lease;
    let lease = LeaseConfig {
        lease: Duration::from_millis(l.lease_ms),
        charge_only_after: Duration::from_millis(l.charge_only_after_ms),
        max_drift_ppm: l.max_drift_ppm,
    };
    lease.validate().map_err(|e| format!("[lease]: {e}"))?;
    let heartbeat = Duration::from_millis(l.heartbeat_ms);
    if heartbeat.is_zero() || heartbeat * 2 > lease.charge_only_after {
        return Err(format!(
            "[lease]: heartbeat_ms {} must be above 0 and at most half of charge_only_after_ms {}: a node must get two chances to confirm its lease before it stops discharging",
            l.heartbeat_ms, l.charge_only_after_ms
        ));
    }
    let path = |template: &str| base.join(template.replace("{node}", node));
    let tls = TlsFiles {
        ca: path(&file.tls.ca),
        cert: path(&file.tls.cert),
        key: path(&file.tls.key),
    };
    let bind = match me.bind {
        Some(b) => b,
        None => match me.cluster.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let port = me
                    .cluster
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .unwrap_or(4697);
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
            }
        },
    };
    let mut nodes = file.nodes;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ClusterConfig {
        me,
        nodes,
        cookie,
        tls,
        lease,
        heartbeat,
        bind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
cookie_file = "cookie"
[tls]
ca = "certs/ca.pem"
cert = "certs/{node}.pem"
key = "certs/{node}-key.pem"
[[nodes]]
name = "node-b"
cluster = "127.0.0.1:4698"
grid = "127.0.0.1:9091"
admin = "127.0.0.1:9465"
[[nodes]]
name = "node-a"
cluster = "gridvisor-0.gridvisor:4697"
grid = "0.0.0.0:9090"
admin = "0.0.0.0:9464"
"#;

    #[test]
    fn a_node_sees_itself_its_peers_and_its_files() {
        let c = parse(
            FILE,
            Path::new("/etc/gv"),
            "node-a",
            Some("0123456789abcdef0123"),
        )
        .unwrap();
        assert_eq!(c.me.name, "node-a");
        assert_eq!(c.names(), vec!["node-a", "node-b"]);
        assert_eq!(
            c.peers().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["node-b"]
        );
        assert_eq!(c.tls.cert, Path::new("/etc/gv/certs/node-a.pem"));
        assert_eq!(c.bind, "0.0.0.0:4697".parse::<SocketAddr>().unwrap());
        assert_eq!(c.heartbeat, Duration::from_millis(100));
        let b = parse(
            FILE,
            Path::new("/etc/gv"),
            "node-b",
            Some("0123456789abcdef0123"),
        )
        .unwrap();
        assert_eq!(b.bind, "127.0.0.1:4698".parse::<SocketAddr>().unwrap());
        // Both views of one file agree on what the transport compares; another lease does not.
        assert_eq!(c.shared_settings(), b.shared_settings());
        assert_eq!(
            c.shared_settings(),
            "lease_ms=1500 charge_only_after_ms=500 max_drift_ppm=10000 heartbeat_ms=100 nodes=node-a,node-b"
        );
        let longer = format!("{FILE}\n[lease]\nlease_ms = 3000\n");
        let other = parse(
            &longer,
            Path::new("/etc/gv"),
            "node-b",
            Some("0123456789abcdef0123"),
        );
        assert_ne!(other.unwrap().shared_settings(), c.shared_settings());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = |text: &str, node: &str, cookie: Option<&str>| {
            parse(text, Path::new("."), node, cookie).unwrap_err()
        };
        let c = Some("0123456789abcdef0123");
        assert!(err(FILE, "node-z", c).contains("--node \"node-z\" is not one of"));
        assert!(err(FILE, "node-a", Some("short")).contains("at least 16"));
        assert!(err(&FILE.replace("node-b", "Node_B"), "node-a", c).contains("not a DNS label"));
        assert!(err(&FILE.replace("node-b", "node-a"), "node-a", c).contains("listed twice"));
        assert!(err(&FILE.replace("4698", "x"), "node-a", c).contains("not host:port"));
        // [lease] must come before the first [[nodes]] (after it, TOML reads it as a table
        // of that node).
        let early = FILE.replacen(
            "[[nodes]]",
            "[lease]\ncharge_only_after_ms = 2000\n\n[[nodes]]",
            1,
        );
        assert!(
            err(&early, "node-a", c).contains("charge_only_after"),
            "{}",
            err(&early, "node-a", c)
        );
        let hb = FILE.replacen("[[nodes]]", "[lease]\nheartbeat_ms = 400\n\n[[nodes]]", 1);
        assert!(err(&hb, "node-a", c).contains("at most half"));
        let unknown = FILE.replacen("[[nodes]]", "[lease]\nheartbeat = 4\n\n[[nodes]]", 1);
        assert!(err(&unknown, "node-a", c).contains("unknown field"));
        assert!(err(FILE, "node-a", None).contains("cookie_file"));
    }
}
