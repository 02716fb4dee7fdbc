//! The live view on the admin port, like Erlang's observer: the page at `/` (HTML, script
//! and style compiled into the binary: a site without internet still gets all of it), the
//! event stream it follows (`GET /api/live`, Server-Sent Events) and the pruned tree it
//! draws (`GET /api/live/tree`).
//!
//! ## The stream
//! One task per client sends, as SSE events with JSON data:
//! - `hello` once: the root's name, the tick and the limits below;
//! - `segments` every [`LIVE_TICK`]: every segment's level, power, limits and counts;
//! - `transition` for each safe-state transition the node records (the last
//!   [`LIVE_BACKLOG`] first), polled every [`LIVE_EVENT_POLL`] from the node's event log
//!   with a cursor;
//! - `report` for each supervisor report (started, exited, restarted, start failed, gave up,
//!   escalated) as it is published, at most [`LIVE_REPORTS_PER_TICK`] per tick;
//! - `dropped` when reports were lost (over that budget, or lagging behind the tree's
//!   bounded report channel), with the counts, so that the page knows to reload the tree.
//!
//! Nothing here can slow the node: reports come from a lossy broadcast, and a client that
//! does not read fills its queue ([`LIVE_QUEUE`] events) and then loses events, counted.
//! At most [`LIVE_MAX_CLIENTS`] streams run at once. Every stream ends when the server stops
//! (the `stop` signal), so that an open page never holds up an ordered stop.
//!
//! ## The tree
//! `/api/live/tree` takes the same data as `/api/tree` ([`Node::tree`]; with `path`,
//! [`Node::subtree`] asks that supervisor alone) and sends only what the page shows: the
//! subtree at `path` down to `depth` levels, at most
//! [`TREE_CHILDREN_LIMIT`] children per node (from `offset` at the top), each node with its
//! number of children and of nodes below it; or, with `filter`, at most [`TREE_MATCH_LIMIT`]
//! nodes whose path contains the filter. A page over 100,000 actors thus holds a few hundred
//! rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gridvisor_actors::ladder::SafeState;
use gridvisor_actors::runtime::{EventCursor, Node, SegmentView, ROOT};
use gridvisor_supervisors::report::Received;
use gridvisor_supervisors::TreeNode;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

/// The page.
pub const INDEX_HTML: &str = include_str!("index.html");
/// The page's script.
pub const LIVE_JS: &str = include_str!("live.js");
/// The page's style.
pub const LIVE_CSS: &str = include_str!("live.css");

/// How often a client gets the segments' snapshot.
pub const LIVE_TICK: Duration = Duration::from_millis(250);
/// How often the node's safe-state event log is polled for new transitions (a lock and a
/// look at the newest entry when nothing is new).
pub const LIVE_EVENT_POLL: Duration = Duration::from_millis(50);
/// Events queued per client; past it the client loses events (counted, never waited for).
pub const LIVE_QUEUE: usize = 512;
/// Streams open at once; one more is refused with 503.
pub const LIVE_MAX_CLIENTS: usize = 16;
/// Supervisor reports forwarded per client per tick; the rest are counted as dropped (a
/// restart of 100,000 sessions must not bury the browser).
pub const LIVE_REPORTS_PER_TICK: usize = 256;
/// Safe-state transitions replayed to a new client.
pub const LIVE_BACKLOG: usize = 64;
/// Idle keep-alive comments on the stream (proxies close silent connections).
pub const LIVE_KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a browser waits before it reconnects a broken stream (SSE `retry`).
pub const LIVE_RETRY: Duration = Duration::from_secs(1);
/// The deepest `depth` `/api/live/tree` accepts.
pub const TREE_DEPTH_LIMIT: usize = 32;
/// Children sent per node by `/api/live/tree`; the rest are counted in `more`.
pub const TREE_CHILDREN_LIMIT: usize = 200;
/// Matches sent for a `filter`; the rest are counted.
pub const TREE_MATCH_LIMIT: usize = 500;
/// The longest `path` or `filter` accepted, bytes.
pub const TREE_QUERY_MAX_LEN: usize = 1_024;

#[derive(Clone)]
struct Live {
    node: Arc<Node>,
    clients: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
}

/// The live view's routes but the page itself (`/live.js`, `/live.css`, `/api/live`,
/// `/api/live/tree`); every stream ends once `stop` turns true.
pub fn router(node: Arc<Node>, stop: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/live.js", get(script))
        .route("/live.css", get(style))
        .route("/api/live", get(stream))
        .route("/api/live/tree", get(tree))
        .with_state(Live {
            node,
            clients: Arc::new(AtomicUsize::new(0)),
            stop,
        })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", LIVE_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", LIVE_CSS)
}

use crate::server::error;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A segment as the live view draws it: its level flat, and the power the level allows.
#[derive(Debug, Serialize)]
struct SegmentSnapshot {
    id: String,
    substation: String,
    /// `normal`, `limited`, `charge_only` or `tripped`.
    level: &'static str,
    /// 0 (normal) to 3 (tripped).
    severity: u8,
    rated_kw: f64,
    /// Import (charging) the level allows, kW.
    import_limit_kw: f64,
    /// Export (discharge) the level allows, kW (magnitude).
    export_limit_kw: f64,
    metered_kw: f64,
    target_kw: f64,
    setpoint_kw: f64,
    hot_spot_c: f64,
    headroom: f64,
    /// The grid frequency of the last good meter reading, Hz (null: none yet).
    frequency_hz: Option<f64>,
    /// The frequency response (droop) in the last batch, kW (> 0 more charge).
    droop_kw: f64,
    sessions: usize,
    links: usize,
    causes: Vec<gridvisor_actors::ladder::FaultKey>,
}

fn level_name(level: &SafeState) -> &'static str {
    match level {
        SafeState::Normal => "normal",
        SafeState::Limited { .. } => "limited",
        SafeState::ChargeOnly => "charge_only",
        SafeState::Tripped => "tripped",
    }
}

/// The (import, export) power `level` allows a segment rated `rated` kW.
fn limits(level: &SafeState, rated: f64) -> (f64, f64) {
    match *level {
        SafeState::Normal => (rated, rated),
        SafeState::Limited { cap_kw } => (cap_kw.min(rated), cap_kw.min(rated)),
        SafeState::ChargeOnly => (rated, 0.0),
        SafeState::Tripped => (0.0, 0.0),
    }
}

fn snapshot(v: SegmentView) -> SegmentSnapshot {
    let rated = v.rated_kw;
    let (import, export) = limits(&v.level, rated);
    SegmentSnapshot {
        level: level_name(&v.level),
        severity: v.level.severity(),
        import_limit_kw: import,
        export_limit_kw: export,
        rated_kw: rated,
        metered_kw: v.telemetry.metered_kw,
        target_kw: v.telemetry.target_kw,
        setpoint_kw: v.telemetry.setpoint_kw,
        hot_spot_c: v.telemetry.hot_spot_c,
        headroom: v.telemetry.headroom,
        frequency_hz: v.telemetry.frequency_hz,
        droop_kw: v.telemetry.droop_kw,
        sessions: v.sessions,
        links: v.links,
        causes: v.causes,
        id: v.id,
        substation: v.substation,
    }
}

#[derive(Serialize)]
struct Snapshot {
    at_ms: u64,
    segments: Vec<SegmentSnapshot>,
}

#[derive(Serialize)]
struct Hello {
    root: &'static str,
    tick_ms: u64,
    reports_per_tick: usize,
    max_clients: usize,
    children_limit: usize,
    match_limit: usize,
    at_ms: u64,
}

#[derive(Serialize)]
struct TransitionEvent<'a> {
    #[serde(flatten)]
    event: &'a gridvisor_actors::runtime::shared::Event,
    /// When the stream saw it (wall clock, ms since the epoch).
    seen_ms: u64,
}

#[derive(Serialize)]
struct Dropped {
    /// Reports over this client's per-tick budget, since it connected.
    over_budget: u64,
    /// Reports this client lost behind the tree's report channel, since it connected.
    lagged: u64,
    /// Events this client's queue had no room for, since it connected.
    queue_full: u64,
}

/// Holds one of the [`LIVE_MAX_CLIENTS`] places while a stream runs.
struct ClientSlot(Arc<AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn sse_event(name: &'static str, data: &impl Serialize) -> Option<Event> {
    match serde_json::to_string(data) {
        Ok(json) => Some(Event::default().event(name).data(json)),
        Err(e) => {
            tracing::warn!(event = name, error = %e, "live view: an event did not serialize");
            None
        }
    }
}

/// What one client's task keeps.
struct Client {
    tx: mpsc::Sender<Event>,
    dropped: Dropped,
    reported_dropped: (u64, u64, u64),
}

enum Sent {
    Ok,
    Full,
    Gone,
}

impl Client {
    fn send(&mut self, event: Option<Event>) -> Sent {
        let Some(event) = event else { return Sent::Ok };
        match self.tx.try_send(event) {
            Ok(()) => Sent::Ok,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.queue_full += 1;
                Sent::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Gone,
        }
    }

    /// New safe-state transitions, if any.
    fn transitions(&mut self, node: &Node, cursor: &mut EventCursor) -> Sent {
        let seen_ms = now_ms();
        for event in node.events_since(cursor, LIVE_BACKLOG) {
            let e = sse_event(
                "transition",
                &TransitionEvent {
                    event: &event,
                    seen_ms,
                },
            );
            if let Sent::Gone = self.send(e) {
                return Sent::Gone;
            }
        }
        Sent::Ok
    }

    /// One tick: the segments' snapshot, and the drop counts if they moved.
    fn tick(&mut self, node: &Node) -> Sent {
        let snap = Snapshot {
            at_ms: now_ms(),
            segments: node.segments().into_iter().map(snapshot).collect(),
        };
        if let Sent::Gone = self.send(sse_event("segments", &snap)) {
            return Sent::Gone;
        }
        let d = &self.dropped;
        let now = (d.over_budget, d.lagged, d.queue_full);
        if now != self.reported_dropped {
            self.reported_dropped = now;
            let e = sse_event("dropped", &self.dropped);
            return self.send(e);
        }
        Sent::Ok
    }
}

/// The per-client task: see the module docs.
async fn follow(live: Live, tx: mpsc::Sender<Event>, slot: ClientSlot) {
    let _slot = slot;
    let node = live.node;
    let mut stop = live.stop;
    let mut reports = node.reports().subscribe();
    let mut cursor = EventCursor::default();
    let mut client = Client {
        tx,
        dropped: Dropped {
            over_budget: 0,
            lagged: 0,
            queue_full: 0,
        },
        reported_dropped: (0, 0, 0),
    };
    let hello = Hello {
        root: ROOT,
        tick_ms: LIVE_TICK.as_millis() as u64,
        reports_per_tick: LIVE_REPORTS_PER_TICK,
        max_clients: LIVE_MAX_CLIENTS,
        children_limit: TREE_CHILDREN_LIMIT,
        match_limit: TREE_MATCH_LIMIT,
        at_ms: now_ms(),
    };
    let hello = sse_event("hello", &hello).map(|e| e.retry(LIVE_RETRY));
    if let Sent::Gone = client.send(hello) {
        return;
    }
    // The backlog of transitions first, then the first snapshot.
    if let Sent::Gone = client.transitions(&node, &mut cursor) {
        return;
    }
    let mut tick = tokio::time::interval(LIVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut poll = tokio::time::interval(LIVE_EVENT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut budget = LIVE_REPORTS_PER_TICK;
    loop {
        let sent = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = client.tx.closed() => return,
            _ = tick.tick() => {
                budget = LIVE_REPORTS_PER_TICK;
                client.tick(&node)
            }
            _ = poll.tick() => client.transitions(&node, &mut cursor),
            r = reports.recv() => match r {
                None => return,
                Some(Received::Lagged(n)) => {
                    client.dropped.lagged += n;
                    Sent::Ok
                }
                Some(Received::Report(r)) if budget > 0 => {
                    budget -= 1;
                    let e = sse_event("report", &r);
                    client.send(e)
                }
                Some(Received::Report(_)) => {
                    client.dropped.over_budget += 1;
                    Sent::Ok
                }
            },
        };
        if let Sent::Gone = sent {
            return;
        }
    }
}

async fn stream(State(live): State<Live>) -> Response {
    if *live.stop.borrow() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the node is stopping",
        );
    }
    let taken = live.clients.fetch_add(1, Ordering::AcqRel);
    let slot = ClientSlot(live.clients.clone());
    if taken >= LIVE_MAX_CLIENTS {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_clients",
            format!("the live view serves at most {LIVE_MAX_CLIENTS} streams at once"),
        );
    }
    let (tx, mut rx) = mpsc::channel(LIVE_QUEUE);
    tokio::spawn(follow(live, tx, slot));
    let events = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|e| e.map(Ok::<Event, std::convert::Infallible>))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(LIVE_KEEPALIVE))
        .into_response()
}

/// `/api/live/tree`'s parameters, checked.
#[derive(Debug, PartialEq)]
struct TreeQuery {
    path: Option<String>,
    depth: usize,
    offset: usize,
    filter: Option<String>,
}

/// The default `depth`: the root, its children, the segments and each segment's actors.
const DEFAULT_TREE_DEPTH: usize = 3;

fn tree_query(params: &HashMap<String, String>) -> Result<TreeQuery, String> {
    let mut q = TreeQuery {
        path: None,
        depth: DEFAULT_TREE_DEPTH,
        offset: 0,
        filter: None,
    };
    for (k, v) in params {
        match k.as_str() {
            "path" | "filter" => {
                if v.len() > TREE_QUERY_MAX_LEN {
                    return Err(format!(
                        "{k}: {} bytes, at most {TREE_QUERY_MAX_LEN}",
                        v.len()
                    ));
                }
                if v.is_empty() {
                    return Err(format!("{k}: empty"));
                }
                if k == "path" {
                    q.path = Some(v.clone());
                } else {
                    q.filter = Some(v.clone());
                }
            }
            "depth" => {
                q.depth = v
                    .parse()
                    .ok()
                    .filter(|d| *d <= TREE_DEPTH_LIMIT)
                    .ok_or_else(|| {
                        format!("depth: {v:?} is not a whole number in 0..={TREE_DEPTH_LIMIT}")
                    })?;
            }
            "offset" => {
                q.offset = v
                    .parse()
                    .map_err(|_| format!("offset: {v:?} is not a whole number"))?;
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?} (path, depth, offset, filter)"
                ))
            }
        }
    }
    Ok(q)
}

/// A tree node as the page gets it: `children` is `null` below the depth asked for.
#[derive(Debug, Serialize)]
struct LiveNode<'a> {
    path: &'a str,
    id: &'a str,
    kind: gridvisor_supervisors::ChildKind,
    strategy: Option<&'a str>,
    state: gridvisor_supervisors::ChildState,
    restarts: u32,
    last_exit: Option<&'a str>,
    uptime_ms: u64,
    /// Direct children.
    child_count: usize,
    /// Nodes below this one.
    descendants: usize,
    children: Option<Vec<LiveNode<'a>>>,
    /// Children not sent (over [`TREE_CHILDREN_LIMIT`], or before `offset`).
    more: usize,
}

/// Nodes below `n` (itself excluded), by path; one pass over the tree.
fn count_below<'a>(n: &'a TreeNode, into: &mut HashMap<&'a str, usize>) -> usize {
    let below = n.children.iter().map(|c| 1 + count_below(c, into)).sum();
    into.insert(n.path.as_str(), below);
    below
}

fn prune<'a>(
    n: &'a TreeNode,
    depth: usize,
    offset: usize,
    below: &HashMap<&'a str, usize>,
) -> LiveNode<'a> {
    let (children, more) = if depth == 0 {
        (None, n.children.len())
    } else {
        let sent: Vec<LiveNode<'a>> = n
            .children
            .iter()
            .skip(offset)
            .take(TREE_CHILDREN_LIMIT)
            .map(|c| prune(c, depth - 1, 0, below))
            .collect();
        let more = n.children.len() - sent.len();
        (Some(sent), more)
    };
    LiveNode {
        path: n.path.as_str(),
        id: n.path.leaf(),
        kind: n.kind,
        strategy: n.strategy.as_deref(),
        state: n.state,
        restarts: n.restarts,
        last_exit: n.last_exit.as_deref(),
        uptime_ms: n.uptime_ms,
        child_count: n.children.len(),
        descendants: below.get(n.path.as_str()).copied().unwrap_or(0),
        children,
        more,
    }
}

fn collect_matches<'a>(
    n: &'a TreeNode,
    needle: &str,
    below: &HashMap<&'a str, usize>,
    out: &mut Vec<LiveNode<'a>>,
    total: &mut usize,
) {
    if n.path.as_str().to_lowercase().contains(needle) {
        *total += 1;
        if out.len() < TREE_MATCH_LIMIT {
            out.push(prune(n, 0, 0, below));
        }
    }
    for c in &n.children {
        collect_matches(c, needle, below, out, total);
    }
}

#[derive(Serialize)]
struct TreeAnswer<'a> {
    /// Nodes in the whole tree.
    total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<LiveNode<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    matches: Option<Vec<LiveNode<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_matches: Option<usize>,
}

/// The answer to `q` from `t`: the whole tree, or already the subtree at `q.path` when
/// `total` (the whole tree's size) is given. A filter searches below `q.path` (or all).
fn tree_answer(
    t: &TreeNode,
    q: &TreeQuery,
    total: Option<usize>,
) -> Result<String, (StatusCode, &'static str, String)> {
    let at = match &q.path {
        Some(p) if t.path.as_str() != p => t.find(p).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("path: no node {p:?} in the tree"),
            )
        })?,
        _ => t,
    };
    let mut below = HashMap::new();
    let counted = 1 + count_below(at, &mut below);
    let total = total.unwrap_or(counted);
    let answer = match &q.filter {
        Some(filter) => {
            let mut matches = Vec::new();
            let mut n = 0;
            collect_matches(at, &filter.to_lowercase(), &below, &mut matches, &mut n);
            TreeAnswer {
                total,
                node: None,
                matches: Some(matches),
                total_matches: Some(n),
            }
        }
        None => TreeAnswer {
            total,
            node: Some(prune(at, q.depth, q.offset, &below)),
            matches: None,
            total_matches: None,
        },
    };
    serde_json::to_string(&answer)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, "tree", e.to_string()))
}

async fn tree(State(live): State<Live>, Query(params): Query<HashMap<String, String>>) -> Response {
    let q = match tree_query(&params) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", e),
    };
    // A subtree is asked of its supervisor alone: a click on one charger of 100,000 does
    // not walk the other 99,999.
    let (t, total) = match &q.path {
        Some(p) => match live.node.subtree(p).await {
            Ok(Some(t)) => (t, Some(live.node.registry().len() + 1)),
            Ok(None) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("path: no node {p:?} in the tree"),
                )
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "tree", e.to_string()),
        },
        None => match live.node.tree().await {
            Ok(t) => (t, None),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "tree", e.to_string()),
        },
    };
    // Pruning and encoding 100,000 nodes is CPU work: off the runtime's workers.
    match tokio::task::spawn_blocking(move || tree_answer(&t, &q, total)).await {
        Ok(Ok(json)) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Ok(Err((status, kind, message))) => error(status, kind, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "tree", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridvisor_supervisors::{ActorPath, ChildKind, ChildState};

    fn node(path: &str, children: Vec<TreeNode>) -> TreeNode {
        TreeNode {
            path: ActorPath::root(path),
            kind: if children.is_empty() {
                ChildKind::Worker
            } else {
                ChildKind::Supervisor
            },
            strategy: None,
            state: ChildState::Running,
            restarts: 0,
            last_exit: None,
            uptime_ms: 0,
            children,
        }
    }

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// node → s → s/c-0 .. s/c-(n-1), each with one leaf.
    fn wide(n: usize) -> TreeNode {
        let kids = (0..n)
            .map(|i| {
                let p = format!("node/s/c-{i}");
                node(&p.clone(), vec![node(&format!("{p}/leaf"), vec![])])
            })
            .collect();
        node("node", vec![node("node/s", kids)])
    }

    fn answer(t: &TreeNode, kv: &[(&str, &str)]) -> serde_json::Value {
        let q = tree_query(&params(kv)).unwrap();
        let json = tree_answer(t, &q, None).unwrap();
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn a_wide_tree_is_cut_to_the_limit_and_counted() {
        let n = TREE_CHILDREN_LIMIT + 50;
        let t = wide(n);
        let a = answer(&t, &[("depth", "2")]);
        assert_eq!(a["total"], 2 + 2 * n);
        let s = &a["node"]["children"][0];
        assert_eq!(s["path"], "node/s");
        assert_eq!(s["child_count"], n);
        assert_eq!(s["descendants"], 2 * n);
        assert_eq!(s["children"].as_array().unwrap().len(), TREE_CHILDREN_LIMIT);
        assert_eq!(s["more"], 50);
        // Below the depth asked for: counts, no children.
        let c = &s["children"][0];
        assert!(c["children"].is_null());
        assert_eq!(c["child_count"], 1);
        assert_eq!(c["more"], 1);
        // The rest, from an offset.
        let b = answer(
            &t,
            &[
                ("path", "node/s"),
                ("depth", "1"),
                ("offset", &TREE_CHILDREN_LIMIT.to_string()),
            ],
        );
        assert_eq!(b["node"]["children"].as_array().unwrap().len(), 50);
        assert_eq!(b["node"]["more"], TREE_CHILDREN_LIMIT);
    }

    /// A site of 100,000 actors: what the page gets stays small.
    #[test]
    fn at_100k_actors_the_page_gets_a_few_hundred_rows() {
        const SEGMENTS: usize = 10;
        const CHARGERS: usize = 3_333;
        let segments = (0..SEGMENTS)
            .map(|s| {
                let seg = format!("node/segments/tx-{s}");
                let chargers = (0..CHARGERS)
                    .map(|c| {
                        let ch = format!("{seg}/chargers/evse-{c}");
                        node(
                            &ch.clone(),
                            vec![
                                node(&format!("{ch}/link"), vec![]),
                                node(&format!("{ch}/ev-{c}"), vec![]),
                            ],
                        )
                    })
                    .collect();
                node(
                    &seg.clone(),
                    vec![
                        node(&format!("{seg}/safety"), vec![]),
                        node(&format!("{seg}/dispatcher"), vec![]),
                        node(&format!("{seg}/chargers"), chargers),
                    ],
                )
            })
            .collect();
        let t = node("node", vec![node("node/segments", segments)]);
        let total = t.size();
        assert!(total > 100_000, "{total}");
        let started = std::time::Instant::now();
        let q = tree_query(&params(&[])).unwrap();
        let first = tree_answer(&t, &q, None).unwrap();
        let took = started.elapsed();
        let v: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(v["total"], total);
        let chargers = &v["node"]["children"][0]["children"][0]["children"][2];
        assert_eq!(chargers["child_count"], CHARGERS);
        assert_eq!(chargers["descendants"], 3 * CHARGERS);
        assert!(
            chargers["children"].is_null(),
            "collapsed below the segments"
        );
        assert!(first.len() < 16 * 1024, "{} bytes", first.len());
        let q = tree_query(&params(&[
            ("path", "node/segments/tx-3/chargers"),
            ("depth", "1"),
        ]))
        .unwrap();
        let open = tree_answer(&t, &q, None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&open).unwrap();
        assert_eq!(
            v["node"]["children"].as_array().unwrap().len(),
            TREE_CHILDREN_LIMIT
        );
        assert_eq!(v["node"]["more"], CHARGERS - TREE_CHILDREN_LIMIT);
        assert!(open.len() < 128 * 1024, "{} bytes", open.len());
        println!(
            "live tree at {total} actors: first answer {} bytes in {:.1} ms, one open chargers list {} bytes",
            first.len(),
            took.as_secs_f64() * 1e3,
            open.len()
        );
    }

    #[test]
    fn a_filter_finds_paths_and_caps_the_matches() {
        let t = wide(TREE_MATCH_LIMIT + 10);
        let a = answer(&t, &[("filter", "LEAF")]);
        assert_eq!(a["total_matches"], TREE_MATCH_LIMIT + 10);
        assert_eq!(a["matches"].as_array().unwrap().len(), TREE_MATCH_LIMIT);
        let one = answer(&t, &[("filter", "c-7/")]);
        assert_eq!(one["total_matches"], 1);
        assert_eq!(one["matches"][0]["path"], "node/s/c-7/leaf");
    }

    #[test]
    fn a_client_that_does_not_read_loses_events_counted_and_a_gone_one_ends() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut c = Client {
            tx,
            dropped: Dropped {
                over_budget: 0,
                lagged: 0,
                queue_full: 0,
            },
            reported_dropped: (0, 0, 0),
        };
        let ev = || sse_event("segments", &1);
        assert!(matches!(c.send(ev()), Sent::Ok));
        assert!(matches!(c.send(ev()), Sent::Ok));
        assert!(matches!(c.send(ev()), Sent::Full));
        assert!(matches!(c.send(ev()), Sent::Full));
        assert_eq!(c.dropped.queue_full, 2);
        assert!(rx.try_recv().is_ok());
        assert!(matches!(c.send(ev()), Sent::Ok), "room again");
        drop(rx);
        assert!(matches!(c.send(ev()), Sent::Gone));
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = |kv: &[(&str, &str)]| tree_query(&params(kv)).unwrap_err();
        assert!(e(&[("depth", "x")]).starts_with("depth:"));
        assert!(e(&[("depth", "99")]).starts_with("depth:"));
        assert!(e(&[("offset", "-1")]).starts_with("offset:"));
        assert!(e(&[("path", "")]).starts_with("path: empty"));
        let long = "a".repeat(TREE_QUERY_MAX_LEN + 1);
        assert!(e(&[("filter", &long)]).starts_with("filter:"));
        assert!(e(&[("paths", "node")]).contains("unknown parameter \"paths\""));
        let t = wide(1);
        let q = tree_query(&params(&[("path", "node/nope")])).unwrap();
        assert_eq!(
            tree_answer(&t, &q, None).unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn a_level_sets_the_limits_drawn() {
        let l = |level| (level_name(&level), limits(&level, 100.0));
        assert_eq!(l(SafeState::Normal), ("normal", (100.0, 100.0)));
        assert_eq!(
            l(SafeState::Limited { cap_kw: 40.0 }),
            ("limited", (40.0, 40.0))
        );
        assert_eq!(
            l(SafeState::Limited { cap_kw: 400.0 }),
            ("limited", (100.0, 100.0))
        );
        assert_eq!(l(SafeState::ChargeOnly), ("charge_only", (100.0, 0.0)));
        assert_eq!(l(SafeState::Tripped), ("tripped", (0.0, 0.0)));
    }
}
