//! The APIs of a cluster node: every node answers for the whole site.
//!
//! A request that arrives from a client is routed; one that another node forwarded (it
//! carries the [`Forwarded`] extension, which only this process can set: a client cannot
//! claim to be a node) is answered from this node's own state, so nothing is forwarded twice.
//! Routing:
//!
//! | request | where it goes |
//! | --- | --- |
//! | `POST /api/v1/dispatch`, scope segment | the segment's owner |
//! | `POST /api/v1/dispatch`, scope site or substation | every owner, each with the share of the target that its segments' ratings carry; the receipts merged |
//! | `POST /api/v1/keepalive` | every node |
//! | `GET /api/v1/segments` | every node; each segment from the node that drives it |
//! | `GET /api/v1/segments/{id}` | the segment's owner |
//! | `POST /api/v1/segments/{id}/reset` | the segment's owner |
//! | `GET /api/v1/sessions/{vehicle}` | the owner of the vehicle's segment |
//! | admin `GET /api/tree` | every node, under one `cluster` root |
//! | admin `GET /api/cluster` | this node's view of the cluster |
//! | admin `GET /api/ready` | this node: 200 once it has a view and a confirmed lease |
//!
//! Everything else is answered locally.

use std::collections::BTreeMap;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gridvisor_actors::runtime::{GridRequest, Scope};
use gridvisor_cluster::lease::LeaseState;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{Api, Cluster, ForwardedFrom, LocalApi, Reply};
use crate::api_auth::middleware::{Caller, Guard};
use crate::api_auth::{Identity, Roles};
use crate::server::{error, BODY_LIMIT};

/// Marks a request another node forwarded (a request extension, set only by
/// [`answer_locally`]).
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// The identity of a request's caller (the guard's [`Caller`] extension), to forward with it.
fn caller_of(extensions: &axum::http::Extensions) -> Option<String> {
    extensions.get::<Caller>().map(|c| c.identity.name.clone())
}

/// This node's grid and admin routers, answering the calls other nodes forward here.
struct LocalRouters {
    grid: axum::Router,
    admin: axum::Router,
}

impl LocalApi for LocalRouters {
    fn answer(
        &self,
        api: Api,
        method: String,
        path: String,
        body: Vec<u8>,
        from: ForwardedFrom,
    ) -> futures::future::BoxFuture<'static, Reply> {
        let router = match api {
            Api::Grid => self.grid.clone(),
            Api::Admin => self.admin.clone(),
        };
        Box::pin(async move { answer_locally(router, &method, &path, body, from).await })
    }
}

/// Answer a forwarded call from this node's own router.
async fn answer_locally(
    router: axum::Router,
    method: &str,
    path: &str,
    body: Vec<u8>,
    from: ForwardedFrom,
) -> Reply {
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Reply::Failed(format!("bad method {method:?}"));
    };
    let request = match Request::builder()
        .method(method)
        .uri(path)
        .extension(Forwarded)
        .extension(Caller {
            identity: Identity {
                name: from
                    .caller
                    .unwrap_or_else(|| crate::api_auth::audit::UNAUTHENTICATED.to_owned()),
                roles: Roles::default(),
            },
            via: Some(from.node),
        })
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
    {
        Ok(r) => r,
        Err(e) => return Reply::Failed(format!("bad request {path:?}: {e}")),
    };
    let response = match router.oneshot(request).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let status = response.status().as_u16();
    match to_bytes(response.into_body(), super::MAX_FORWARDED_ANSWER).await {
        Ok(b) => Reply::Http {
            status,
            body: b.to_vec(),
        },
        Err(e) => Reply::Failed(format!(
            "the answer to {path:?} is over {} bytes, the most one node sends another: {e}",
            super::MAX_FORWARDED_ANSWER
        )),
    }
}

/// Largest answer forwarded between nodes (a large tree is tens of MB).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

fn json_response(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

fn bad_gateway(e: String) -> Response {
    error(StatusCode::BAD_GATEWAY, "cluster", e)
}

/// `request`, answered here or on `owner`.
async fn to_owner(cluster: &Cluster, owner: Option<String>, req: Request, next: Next) -> Response {
    let Some(owner) = owner.filter(|o| o != cluster.me()) else {
        return next.run(req).await;
    };
    let method = req.method().to_string();
    let caller = caller_of(req.extensions());
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let body = match to_bytes(req.into_body(), BODY_LIMIT).await {
        Ok(b) => b.to_vec(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, "bad_body", e.to_string()),
    };
    match cluster
        .forward(&owner, Api::Grid, &method, &path, body, caller.as_deref())
        .await
    {
        Ok((status, body)) => json_response(status, body),
        Err(e) => bad_gateway(e),
    }
}

/// The grid API's routing layer (`axum::middleware::from_fn_with_state`).
pub async fn grid(State(cluster): State<Cluster>, req: Request, next: Next) -> Response {
    if req.extensions().get::<Forwarded>().is_some() {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::POST, "/api/v1/dispatch") => dispatch(&cluster, req, next).await,
        (Method::POST, "/api/v1/keepalive") => everywhere(&cluster, req, next, true).await,
        (Method::GET, "/api/v1/segments") => segments(&cluster, req, next).await,
        (Method::POST, p) if reset_target(p).is_some() => {
            let owner = reset_target(p).and_then(|id| cluster.owner(id));
            to_owner(&cluster, owner, req, next).await
        }
        (Method::GET, p) if p.starts_with("/api/v1/segments/") => {
            let id = p.trim_start_matches("/api/v1/segments/").to_string();
            let owner = cluster.owner(&id);
            to_owner(&cluster, owner, req, next).await
        }
        (Method::GET, p) if p.starts_with("/api/v1/sessions/") => {
            let vehicle = p.trim_start_matches("/api/v1/sessions/");
            let t = &cluster.node().shared.topology;
            let segment = t.vehicles.iter().find(|v| v.id == vehicle).and_then(|v| {
                t.segments()
                    .find(|(_, s)| s.chargers.iter().any(|c| c.id == v.charger))
                    .map(|(_, s)| s.id.clone())
            });
            let owner = segment.and_then(|s| cluster.owner(&s));
            to_owner(&cluster, owner, req, next).await
        }
        _ => next.run(req).await,
    }
}

/// The segment of `POST /api/v1/segments/{id}/reset`.
fn reset_target(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/segments/")?
        .strip_suffix("/reset")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Send the same request to every node (this one through `next`); answer with this node's
/// answer, or the first failure when `all_must_succeed`.
async fn everywhere(
    cluster: &Cluster,
    req: Request,
    next: Next,
    all_must_succeed: bool,
) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    let caller = caller_of(&parts.extensions);
    let body = match to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, "bad_body", e.to_string()),
    };
    let peers: Vec<String> = cluster
        .view()
        .members
        .into_iter()
        .filter(|m| m != cluster.me())
        .collect();
    let bytes = body.to_vec();
    let calls = peers.iter().map(|p| {
        let (m, path, b, c) = (method.clone(), path.clone(), bytes.clone(), caller.clone());
        async move {
            let answer = cluster.forward(p, Api::Grid, &m, &path, b, c.as_deref());
            (p.clone(), answer.await)
        }
    });
    let local = next.run(Request::from_parts(parts, Body::from(body)));
    let (local, remote) = futures::join!(local, futures::future::join_all(calls));
    if all_must_succeed {
        for (peer, r) in remote {
            match r {
                Ok((status, _)) if status < 300 => {}
                Ok((status, body)) => {
                    return json_response(status, body);
                }
                Err(e) => return bad_gateway(format!("{peer}: {e}")),
            }
        }
    }
    local
}

/// GET /api/v1/segments: each segment from the node that drives it.
async fn segments(cluster: &Cluster, req: Request, next: Next) -> Response {
    let caller = caller_of(req.extensions());
    let local = next.run(req).await;
    let local: Vec<Value> = match to_bytes(local.into_body(), MAX_ANSWER_BYTES).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(e) => return bad_gateway(e.to_string()),
    };
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for v in local {
        if let Some(id) = v.get("id").and_then(Value::as_str) {
            by_id.insert(id.to_string(), v);
        }
    }
    let peers: Vec<String> = cluster
        .view()
        .members
        .into_iter()
        .filter(|m| m != cluster.me())
        .collect();
    let caller = caller.as_deref();
    let calls = peers.iter().map(|p| async move {
        cluster
            .forward(p, Api::Grid, "GET", "/api/v1/segments", Vec::new(), caller)
            .await
    });
    for r in futures::future::join_all(calls).await {
        let Ok((200, body)) = r else { continue };
        let remote: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
        for v in remote {
            let owned = v.get("owned").and_then(Value::as_bool).unwrap_or(false);
            if let Some(id) = v.get("id").and_then(Value::as_str) {
                let here_owned = by_id
                    .get(id)
                    .and_then(|l| l.get("owned"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if owned && !here_owned {
                    by_id.insert(id.to_string(), v);
                }
            }
        }
    }
    Json(by_id.into_values().collect::<Vec<_>>()).into_response()
}

/// POST /api/v1/dispatch.
async fn dispatch(cluster: &Cluster, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let caller = caller_of(&parts.extensions);
    let body: Bytes = match to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, "bad_body", e.to_string()),
    };
    // A body that does not parse gets the local handler's precise error.
    let Ok(request) = serde_json::from_slice::<GridRequest>(&body) else {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    let t = cluster.node().shared.topology.clone();
    let scope: Vec<(String, f64)> = match &request.scope {
        Scope::Segment(id) => {
            let owner = cluster.owner(id);
            return to_owner(
                cluster,
                owner,
                Request::from_parts(parts, Body::from(body)),
                next,
            )
            .await;
        }
        Scope::Site => t
            .segments()
            .map(|(_, s)| (s.id.clone(), s.rated_kw))
            .collect(),
        Scope::Substation(id) => match t.substations.iter().find(|s| &s.id == id) {
            Some(sub) => sub
                .segments
                .iter()
                .map(|s| (s.id.clone(), s.rated_kw))
                .collect(),
            None => return next.run(Request::from_parts(parts, Body::from(body))).await,
        },
    };
    // Each owner's share of the target: what its segments' ratings carry of the scope's.
    let total: f64 = scope.iter().map(|(_, r)| r).sum();
    let mut shares: BTreeMap<String, f64> = BTreeMap::new();
    for (seg, rated) in &scope {
        if let Some(owner) = cluster.owner(seg) {
            *shares.entry(owner).or_insert(0.0) += if total > 0.0 {
                request.target_kw * rated / total
            } else {
                0.0
            };
        }
    }
    let caller = caller.as_deref();
    let calls = shares.iter().map(|(owner, share)| {
        let mut r = request.clone();
        r.target_kw = *share;
        let body = serde_json::to_vec(&r).unwrap_or_default();
        let owner = owner.clone();
        async move {
            let answer = if owner == cluster.me() {
                match cluster.node().request(r).await {
                    Ok(receipt) => Ok((200, serde_json::to_vec(&receipt).unwrap_or_default())),
                    Err(e) => Ok((
                        crate::server::request_status(&e).as_u16(),
                        serde_json::to_vec(&e).unwrap_or_default(),
                    )),
                }
            } else {
                cluster
                    .forward(&owner, Api::Grid, "POST", "/api/v1/dispatch", body, caller)
                    .await
            };
            (owner, answer)
        }
    });
    let answers = futures::future::join_all(calls).await;
    merge_receipts(&request, answers)
}

/// A node's HTTP answer (status, body), or why there was none.
type NodeAnswer = Result<(u16, Vec<u8>), String>;

/// One receipt from the per-node receipts: counts summed, segments concatenated, each
/// node's own receipt (or error) kept under `nodes`.
fn merge_receipts(request: &GridRequest, answers: Vec<(String, NodeAnswer)>) -> Response {
    let mut segments = Vec::new();
    let (mut acked, mut not_acked, mut unallocated) = (0u64, 0u64, 0.0f64);
    let mut repeat = true;
    let mut nodes = serde_json::Map::new();
    let mut failures = 0;
    for (node, answer) in answers {
        match answer {
            Ok((200, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                acked += v["acknowledged"].as_u64().unwrap_or(0);
                not_acked += v["not_acknowledged"].as_u64().unwrap_or(0);
                unallocated += v["unallocated_kw"].as_f64().unwrap_or(0.0);
                repeat &= v["repeat"].as_bool().unwrap_or(false);
                if let Some(s) = v["segments"].as_array() {
                    segments.extend(s.iter().cloned());
                }
                nodes.insert(node, v);
            }
            Ok((status, body)) => {
                failures += 1;
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                nodes.insert(node, json!({"status": status, "error": v}));
            }
            Err(e) => {
                failures += 1;
                nodes.insert(node, json!({"status": 502, "error": e}));
            }
        }
    }
    let body = json!({
        "request": request.id,
        "target_kw": request.target_kw,
        "segments": segments,
        "acknowledged": acked,
        "not_acknowledged": not_acked,
        "unallocated_kw": unallocated,
        "repeat": repeat,
        "nodes": nodes,
    });
    let status = if failures > 0 && acked == 0 {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// The admin API's routing layer.
pub async fn admin(State(cluster): State<Cluster>, req: Request, next: Next) -> Response {
    if req.extensions().get::<Forwarded>().is_some() {
        return next.run(req).await;
    }
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/api/tree") => tree(&cluster, req, next).await,
        (Method::GET, "/api/cluster") => match cluster.status() {
            Some(s) => Json(s).into_response(),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "no heartbeat period yet",
            ),
        },
        (Method::GET, "/api/ready") => ready(&cluster),
        _ => next.run(req).await,
    }
}

fn ready(cluster: &Cluster) -> Response {
    let Some(s) = cluster.status() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "starting");
    };
    let why = if !cluster.node().running() {
        Some("the supervision tree is not running".to_string())
    } else if s.lease != LeaseState::Driving {
        Some(format!(
            "no majority confirmed this node's lease (lease {:?})",
            s.lease
        ))
    } else if !s.members.contains(&s.node) {
        Some("not a committed member yet".to_string())
    } else {
        None
    };
    match why {
        None => Json(json!({"ready": true, "node": s.node, "epoch": s.epoch, "leader": s.leader}))
            .into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "node": s.node, "reason": why})),
        )
            .into_response(),
    }
}

/// Rename a node tree's paths `node/...` to `cluster/<name>/...`.
fn rename(v: &mut Value, name: &str) {
    if let Some(p) = v.get_mut("path") {
        if let Some(s) = p.as_str() {
            let renamed = match s.strip_prefix("node") {
                Some(rest) => format!("cluster/{name}{rest}"),
                None => format!("cluster/{name}/{s}"),
            };
            *p = Value::String(renamed);
        }
    }
    if let Some(children) = v.get_mut("children").and_then(Value::as_array_mut) {
        for c in children {
            rename(c, name);
        }
    }
}

/// GET /api/tree: every node's tree under one `cluster` root.
async fn tree(cluster: &Cluster, req: Request, next: Next) -> Response {
    let caller = caller_of(req.extensions());
    let local = next.run(req).await;
    let local = match to_bytes(local.into_body(), MAX_ANSWER_BYTES).await {
        Ok(b) => serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
        Err(e) => return bad_gateway(e.to_string()),
    };
    let caller = caller.as_deref();
    let names: Vec<String> = cluster
        .status()
        .map(|s| s.nodes)
        .unwrap_or_else(|| vec![cluster.me().to_string()]);
    let calls = names
        .iter()
        .filter(|n| *n != cluster.me())
        .map(|p| async move {
            (
                p.clone(),
                cluster
                    .forward(p, Api::Admin, "GET", "/api/tree", Vec::new(), caller)
                    .await,
            )
        });
    let mut trees: BTreeMap<String, Value> = BTreeMap::new();
    trees.insert(cluster.me().to_string(), local);
    for (name, r) in futures::future::join_all(calls).await {
        let v = match r {
            Ok((200, body)) => serde_json::from_slice(&body).unwrap_or(Value::Null),
            Ok((status, _)) => unreachable_node(&format!("answered {status}")),
            Err(e) => unreachable_node(&e),
        };
        trees.insert(name, v);
    }
    let children: Vec<Value> = trees
        .into_iter()
        .map(|(name, mut v)| {
            rename(&mut v, &name);
            v
        })
        .collect();
    Json(json!({
        "path": "cluster",
        "kind": "supervisor",
        "strategy": "one_for_all",
        "state": "running",
        "restarts": 0,
        "last_exit": null,
        "uptime_ms": 0,
        "children": children,
        "cluster": cluster.status(),
    }))
    .into_response()
}

fn unreachable_node(why: &str) -> Value {
    json!({
        "path": "node",
        "kind": "supervisor",
        "strategy": null,
        "state": "terminated",
        "restarts": 0,
        "last_exit": format!("unreachable: {why}"),
        "uptime_ms": 0,
        "children": [],
    })
}

/// The routers of a cluster node: the grid and admin APIs with the routing layers, each
/// behind its guard (outermost: a request is authenticated and authorised before it is
/// routed, and a forwarded one is audited on the node that answers it).
pub fn routers(
    cluster: &Cluster,
    grid: axum::Router,
    admin: axum::Router,
    guards: (&std::sync::Arc<Guard>, &std::sync::Arc<Guard>),
) -> (axum::Router, axum::Router) {
    let grid = guards
        .0
        .layer(grid.layer(axum::middleware::from_fn_with_state(
            cluster.clone(),
            self::grid,
        )));
    let admin = guards
        .1
        .layer(admin.layer(axum::middleware::from_fn_with_state(
            cluster.clone(),
            self::admin,
        )));
    cluster.set_local_api(std::sync::Arc::new(LocalRouters {
        grid: grid.clone(),
        admin: admin.clone(),
    }));
    (grid, admin)
}
