//! The cluster scenario file: a `[cluster]` table (the nodes, the site they run, the run's
//! length), `[bounds]`, `[workload]` and `[[faults]]` between nodes.
//!
//! ```toml
//! name = "cluster-kill-node"
//! description = "..."
//! seed = 1                          # the default seed (`--seed` overrides)
//! [cluster]
//! nodes = 3                         # node-a, node-b, node-c
//! site = "../../cluster/site.toml"  # relative to this file
//! duration_s = 15                   # after the cluster settled
//! settle_limit_s = 30               # every segment driven by exactly one node within this
//! [cluster.lease]                   # optional: the cluster file's [lease]
//! heartbeat_ms = 100
//! charge_only_after_ms = 500
//! lease_ms = 1500
//! [bounds]
//! charge_only_s = 1.0               # a cut-off node's lease leaves Driving within this
//! takeover_s = 5.0                  # a dead or cut-off node's segments driven again within this
//! max_handoffs = 0                  # optional: adoptions after the settle, at most
//! acknowledged_monotone = true      # default: acknowledged dispatch ids never go back
//! [workload]
//! dispatch_every_s = 1.0            # a site request to a seeded-random live node
//! [[faults]]
//! at_s = 3
//! kind = "kill_node"                # node; also restart_node (node), partition (isolate),
//!                                   # drop_links (nodes), delay_links (nodes, delay_ms), heal
//! node = "node-c"
//! ```
//!
//! `partition` blackholes every link between `isolate` and the other nodes (bytes stop, the
//! connections stay open, new ones are accepted and starved), as a real network partition
//! does; `drop_links` closes every connection to and from `nodes` and refuses new ones;
//! `delay_links` adds `delay_ms` of latency to every byte to and from `nodes`; `heal` ends
//! every link fault. Unknown keys and bad values are errors naming the file and the field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The most nodes of a cluster scenario (the cluster file's own limit).
pub const MAX_NODES: usize = 9;
/// The longest run accepted, seconds.
pub const MAX_DURATION_S: f64 = 3_600.0;
/// The largest link delay accepted, ms.
pub const MAX_DELAY_MS: u64 = 10_000;
/// The most faults a scenario may schedule.
pub const MAX_FAULTS: usize = 1_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default = "default_seed")]
    seed: u64,
    cluster: ClusterTable,
    #[serde(default)]
    bounds: Bounds,
    #[serde(default)]
    workload: Workload,
    #[serde(default)]
    faults: Vec<FaultEntry>,
}

fn default_seed() -> u64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterTable {
    nodes: usize,
    site: PathBuf,
    duration_s: f64,
    #[serde(default = "default_settle")]
    settle_limit_s: f64,
    #[serde(default)]
    lease: Option<Lease>,
}

fn default_settle() -> f64 {
    30.0
}

/// The cluster file's `[lease]`, when the scenario sets it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// How often a node confirms its lease, ms.
    pub heartbeat_ms: Option<u64>,
    /// ChargeOnly after this long without a majority's confirmation, ms.
    pub charge_only_after_ms: Option<u64>,
    /// The lease, ms.
    pub lease_ms: Option<u64>,
    /// Clock drift allowed, ppm.
    pub max_drift_ppm: Option<u32>,
}

/// The bounds the invariants are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bounds {
    /// A node cut off from a majority has its lease leave Driving within this, s.
    pub charge_only_s: f64,
    /// After a kill or a cut, every segment is driven by exactly one node of the majority
    /// within this, s.
    pub takeover_s: f64,
    /// Adoptions after the cluster first settled, at most (None: not checked).
    pub max_handoffs: Option<u64>,
    /// Check `acknowledged_monotone` (a segment's acknowledged dispatch ids never go back).
    pub acknowledged_monotone: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            charge_only_s: 1.0,
            takeover_s: 5.0,
            max_handoffs: None,
            acknowledged_monotone: true,
        }
    }
}

/// The grid requests sent while the faults run.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// A site-scope request this often, s (0: none).
    pub dispatch_every_s: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            dispatch_every_s: 1.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultEntry {
    at_s: f64,
    kind: String,
    node: Option<String>,
    nodes: Option<Vec<String>>,
    isolate: Option<Vec<String>>,
    delay_ms: Option<u64>,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL a node.
    KillNode(String),
    /// Start a killed node again (same data folder).
    RestartNode(String),
    /// Blackhole every link between these nodes and the others.
    Partition(BTreeSet<String>),
    /// Close and refuse every link to and from these nodes.
    DropLinks(BTreeSet<String>),
    /// Delay every byte to and from these nodes by this many ms.
    DelayLinks(BTreeSet<String>, u64),
    /// End every link fault.
    Heal,
}

impl FaultKind {
    /// The kind's name in the scenario file.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::KillNode(_) => "kill_node",
            FaultKind::RestartNode(_) => "restart_node",
            FaultKind::Partition(_) => "partition",
            FaultKind::DropLinks(_) => "drop_links",
            FaultKind::DelayLinks(..) => "delay_links",
            FaultKind::Heal => "heal",
        }
    }

    /// One line about it.
    pub fn describe(&self) -> String {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        match self {
            FaultKind::KillNode(n) => format!("SIGKILL {n}"),
            FaultKind::RestartNode(n) => format!("restart {n}"),
            FaultKind::Partition(s) => format!("partition {} from the others", list(s)),
            FaultKind::DropLinks(s) => format!("drop every link of {}", list(s)),
            FaultKind::DelayLinks(s, ms) => format!("delay every link of {} by {ms} ms", list(s)),
            FaultKind::Heal => "heal every link".to_string(),
        }
    }
}

/// A fault at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// After the cluster settled, s.
    pub at_s: f64,
    /// What.
    pub kind: FaultKind,
}

/// A cluster scenario, read and checked.
#[derive(Debug, Clone)]
pub struct ClusterScenario {
    /// The file as given (what the replay command names).
    pub file: String,
    /// Its name.
    pub name: String,
    /// What it is about.
    pub description: String,
    /// The default seed.
    pub seed: u64,
    /// The node names (node-a, node-b, ...).
    pub nodes: Vec<String>,
    /// The site every node runs.
    pub site: PathBuf,
    /// The run's length after the cluster settled, s.
    pub duration_s: f64,
    /// The cluster settles within this, s (at the start, after a heal or a restart).
    pub settle_limit_s: f64,
    /// The cluster file's `[lease]`.
    pub lease: Option<Lease>,
    /// The bounds.
    pub bounds: Bounds,
    /// The workload.
    pub workload: Workload,
    /// The faults, by time (file order for equal times).
    pub faults: Vec<Fault>,
}

/// Whether the TOML at `path` is a cluster scenario (it has a `[cluster]` table). False
/// when it cannot be read or parsed: the in-process loader then reports why.
pub fn is_cluster_scenario(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .is_some_and(|t| t.get("cluster").is_some_and(toml::Value::is_table))
}

/// Read and check a cluster scenario.
pub fn load(path: &Path) -> Result<ClusterScenario, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the scenario: {e}", path.display()))?;
    parse(
        &path.display().to_string(),
        &text,
        path.parent().unwrap_or(Path::new(".")),
    )
}

/// Check a cluster scenario's text; `file` names it in errors, `dir` is where relative paths
/// start.
pub fn parse(file: &str, text: &str, dir: &Path) -> Result<ClusterScenario, String> {
    let f: File = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let err = |field: &str, msg: String| Err(format!("{file}: {field}: {msg}"));
    let n = f.cluster.nodes;
    if !(3..=MAX_NODES).contains(&n) {
        return err(
            "cluster.nodes",
            format!(
                "{n} nodes; 3 to {MAX_NODES} are supported (a majority must survive one fault)"
            ),
        );
    }
    let nodes: Vec<String> = (0..n)
        .map(|i| format!("node-{}", (b'a' + i as u8) as char))
        .collect();
    let d = f.cluster.duration_s;
    if !(d > 0.0 && d <= MAX_DURATION_S) {
        return err(
            "cluster.duration_s",
            format!("{d} is not in (0, {MAX_DURATION_S}]"),
        );
    }
    let s = f.cluster.settle_limit_s;
    if !(s > 0.0 && s <= MAX_DURATION_S) {
        return err(
            "cluster.settle_limit_s",
            format!("{s} is not in (0, {MAX_DURATION_S}]"),
        );
    }
    let site = dir.join(&f.cluster.site);
    if !site.is_file() {
        return err("cluster.site", format!("{} is not a file", site.display()));
    }
    for (field, v) in [
        ("bounds.charge_only_s", f.bounds.charge_only_s),
        ("bounds.takeover_s", f.bounds.takeover_s),
    ] {
        if !(v > 0.0 && v.is_finite()) {
            return err(field, format!("{v} must be a positive number of seconds"));
        }
    }
    let w = f.workload.dispatch_every_s;
    if !(w == 0.0 || (w >= 0.05 && w.is_finite())) {
        return err(
            "workload.dispatch_every_s",
            format!("{w} must be 0 (no requests) or at least 0.05"),
        );
    }
    if f.faults.len() > MAX_FAULTS {
        return err("faults", format!("more than {MAX_FAULTS} faults"));
    }
    let known: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    let mut faults = Vec::new();
    for (i, e) in f.faults.iter().enumerate() {
        let at = format!("faults[{i}]");
        if !(e.at_s >= 0.0 && e.at_s <= d) {
            return err(
                &format!("{at}.at_s"),
                format!("{} is not within the run (0 to duration_s {d})", e.at_s),
            );
        }
        let allowed: &[&str] = match e.kind.as_str() {
            "kill_node" | "restart_node" => &["node"],
            "partition" => &["isolate"],
            "drop_links" => &["nodes"],
            "delay_links" => &["nodes", "delay_ms"],
            "heal" => &[],
            other => {
                return err(
                    &format!("{at}.kind"),
                    format!("unknown kind {other:?}; expected kill_node, restart_node, partition, drop_links, delay_links or heal"),
                )
            }
        };
        for (key, set) in [
            ("node", e.node.is_some()),
            ("nodes", e.nodes.is_some()),
            ("isolate", e.isolate.is_some()),
            ("delay_ms", e.delay_ms.is_some()),
        ] {
            if set && !allowed.contains(&key) {
                return err(
                    &format!("{at}.{key}"),
                    format!("not a key of kind {:?}", e.kind),
                );
            }
            if !set && allowed.contains(&key) {
                return err(
                    &format!("{at}.{key}"),
                    format!("missing (kind {:?} needs it)", e.kind),
                );
            }
        }
        let node = |v: &str, field: &str| -> Result<String, String> {
            if known.contains(v) {
                Ok(v.to_string())
            } else {
                Err(format!(
                    "{file}: {at}.{field}: unknown node {v:?} (the nodes are {})",
                    nodes.join(", ")
                ))
            }
        };
        let set = |v: &Option<Vec<String>>, field: &str| -> Result<BTreeSet<String>, String> {
            let v = v.as_deref().unwrap_or_default();
            let s: BTreeSet<String> = v.iter().map(|x| node(x, field)).collect::<Result<_, _>>()?;
            if s.is_empty() || s.len() == n {
                return Err(format!(
                    "{file}: {at}.{field}: name at least one node and not all of them"
                ));
            }
            Ok(s)
        };
        let kind = match e.kind.as_str() {
            "kill_node" => FaultKind::KillNode(node(e.node.as_deref().unwrap_or(""), "node")?),
            "restart_node" => {
                FaultKind::RestartNode(node(e.node.as_deref().unwrap_or(""), "node")?)
            }
            "partition" => FaultKind::Partition(set(&e.isolate, "isolate")?),
            "drop_links" => FaultKind::DropLinks(set(&e.nodes, "nodes")?),
            "delay_links" => {
                let ms = e.delay_ms.unwrap_or(0);
                if ms == 0 || ms > MAX_DELAY_MS {
                    return err(
                        &format!("{at}.delay_ms"),
                        format!("{ms} is not in 1..={MAX_DELAY_MS}"),
                    );
                }
                FaultKind::DelayLinks(set(&e.nodes, "nodes")?, ms)
            }
            _ => FaultKind::Heal,
        };
        faults.push((i, Fault { at_s: e.at_s, kind }));
    }
    faults.sort_by(|a, b| a.1.at_s.total_cmp(&b.1.at_s).then(a.0.cmp(&b.0)));
    // Kills and restarts must alternate per node.
    let mut dead: BTreeSet<String> = BTreeSet::new();
    for (i, fault) in &faults {
        match &fault.kind {
            FaultKind::KillNode(x) if !dead.insert(x.clone()) => {
                return err(
                    &format!("faults[{i}].node"),
                    format!("{x} is already killed at {} s", fault.at_s),
                )
            }
            FaultKind::RestartNode(x) if !dead.remove(x) => {
                return err(
                    &format!("faults[{i}].node"),
                    format!(
                        "{x} is running at {} s (restart_node follows a kill_node)",
                        fault.at_s
                    ),
                )
            }
            _ => {}
        }
    }
    let name = f.name.unwrap_or_else(|| {
        Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cluster".into())
    });
    Ok(ClusterScenario {
        file: file.to_string(),
        name,
        description: f.description,
        seed: f.seed,
        nodes,
        site,
        duration_s: d,
        settle_limit_s: s,
        lease: f.cluster.lease,
        bounds: f.bounds,
        workload: f.workload,
        faults: faults.into_iter().map(|(_, f)| f).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/chaos/cluster")
    }

    const GOOD: &str = r#"
name = "t"
[cluster]
nodes = 3
site = "../../cluster/site.toml"
duration_s = 10
[bounds]
takeover_s = 4
[[faults]]
at_s = 5
kind = "restart_node"
node = "node-c"
[[faults]]
at_s = 2
kind = "kill_node"
node = "node-c"
[[faults]]
at_s = 3
kind = "delay_links"
nodes = ["node-b"]
delay_ms = 200
"#;

    #[test]
    fn a_good_scenario_is_read_and_its_faults_sorted() {
        let s = parse("t.toml", GOOD, &site_dir()).unwrap();
        assert_eq!(s.nodes, ["node-a", "node-b", "node-c"]);
        assert_eq!(s.bounds.takeover_s, 4.0);
        assert_eq!(s.bounds.charge_only_s, 1.0);
        let kinds: Vec<&str> = s.faults.iter().map(|f| f.kind.name()).collect();
        assert_eq!(kinds, ["kill_node", "delay_links", "restart_node"]);
    }

    #[test]
    fn bad_scenarios_name_the_file_and_the_field() {
        let e = |t: &str| parse("t.toml", t, &site_dir()).unwrap_err();
        let unknown = e(&GOOD.replace("takeover_s = 4", "takeover = 4"));
        assert!(
            unknown.contains("t.toml") && unknown.contains("takeover"),
            "{unknown}"
        );
        assert!(unknown.contains("line"), "{unknown}");
        let node = e(&GOOD.replace(
            "node = \"node-c\"\n[[faults]]\nat_s = 2",
            "node = \"node-z\"\n[[faults]]\nat_s = 2",
        ));
        assert!(
            node.contains("faults[0].node") && node.contains("node-z"),
            "{node}"
        );
        let key = e(&GOOD.replace("delay_ms = 200", "delay_ms = 200\nnode = \"node-a\""));
        assert!(
            key.contains("faults[2].node") && key.contains("not a key"),
            "{key}"
        );
        let order = e(&GOOD.replace("at_s = 5", "at_s = 1"));
        assert!(order.contains("running"), "{order}");
        let delay = e(&GOOD.replace("delay_ms = 200", "delay_ms = 0"));
        assert!(delay.contains("faults[2].delay_ms"), "{delay}");
        let site = e(&GOOD.replace("../../cluster/site.toml", "nope.toml"));
        assert!(site.contains("cluster.site"), "{site}");
        let kind = e(&GOOD.replace("\"kill_node\"", "\"kill\""));
        assert!(kind.contains("faults[1].kind"), "{kind}");
        assert!(!is_cluster_scenario(Path::new("/nonexistent")));
    }
}
