//! The HTTP interfaces of a running node: the grid API (9090) and the admin API (9464).
//!
//! Every body is parsed by hand from bytes so that a bad body gets a 4xx with a JSON error
//! naming what was wrong (serde's message carries the field, line and column), never a
//! panic and never a silent default. Bodies are bounded by [`BODY_LIMIT`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gridvisor_actors::authorization::{AuthStore, Contract, StoreError, TokenId};
use gridvisor_actors::runtime::{Format, GridRequest, KillError, Node, RequestError, ResetError};
use serde::Serialize;
use tracing::Instrument;

use crate::api_auth::kill_limit::KillLimiter;
use crate::api_auth::middleware::Caller;

mod ocpp_actions;

/// The largest request body accepted, bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The OpenAPI description of the grid API, served at `/api/v1/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../docs/grid-api.openapi.yaml");

#[derive(Serialize)]
struct ApiError {
    error: &'static str,
    message: String,
}

/// A JSON error answer: `{"error": kind, "message": ...}` (shared by the admin and grid APIs).
pub(crate) fn error(
    status: StatusCode,
    kind: &'static str,
    message: impl Into<String>,
) -> Response {
    (
        status,
        Json(ApiError {
            error: kind,
            message: message.into(),
        }),
    )
        .into_response()
}

/// The HTTP status of a refused grid request.
pub(crate) fn request_status(e: &RequestError) -> StatusCode {
    match e {
        RequestError::Invalid { .. } => StatusCode::BAD_REQUEST,
        RequestError::UnknownScope { .. } => StatusCode::NOT_FOUND,
        RequestError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
        RequestError::Unavailable | RequestError::NotDriven => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn request_error(e: RequestError) -> Response {
    (request_status(&e), Json(e)).into_response()
}

async fn dispatch(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    // serde_path_to_error names the field a type error is in ("target_kw: invalid type").
    let mut de = serde_json::Deserializer::from_slice(&body);
    let request: GridRequest = match serde_path_to_error::deserialize(&mut de) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("dispatch request: {e}"),
            )
        }
    };
    // The site assigns the dispatch id and logs it under its `dispatch` span; this span ties
    // the HTTP request to it by the request's id.
    let span = tracing::info_span!("grid_request", request = %request.id);
    match node.request(request).instrument(span.clone()).await {
        Ok(receipt) => Json(receipt).into_response(),
        Err(e) => {
            span.in_scope(|| tracing::info!(error = %e, "grid request refused"));
            request_error(e)
        }
    }
}

/// The answer to `DELETE /api/v1/dispatch/{id}`.
#[derive(Serialize)]
struct Cancelled {
    request: String,
    /// True when this call cancelled it; false when there was nothing left to cancel.
    cancelled: bool,
    /// What the request was: `scheduled`, `active`, `already_cancelled` or `ended`.
    state: gridvisor_actors::runtime::Cancel,
}

/// `DELETE /api/v1/dispatch/{id}`: cancel a scheduled or active grid request, idempotently:
/// 200 `cancelled: true` the first time, 200 `cancelled: false` with `state`
/// `already_cancelled` or `ended` after, 404 for an id this node does not know.
async fn cancel(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    use gridvisor_actors::runtime::Cancel;
    match node.cancel(&id).await {
        Ok(Cancel::Unknown) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no grid request {id:?} is known here (never accepted, or forgotten since it ended)"),
        ),
        Ok(state) => Json(Cancelled {
            request: id,
            cancelled: matches!(state, Cancel::Scheduled | Cancel::Active),
            state,
        })
        .into_response(),
        Err(e) => request_error(e),
    }
}

/// The parameters of `GET /api/v1/flexibility`: the scope, or the first parameter that is
/// missing, unknown or not a number, named.
fn flexibility_query(
    q: &std::collections::HashMap<String, String>,
) -> Result<(gridvisor_actors::runtime::Scope, f64, f64), String> {
    use gridvisor_actors::runtime::Scope;
    const KNOWN: [&str; 4] = ["scope", "id", "horizon_s", "step_s"];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "{k}: unknown parameter (known: {})",
            KNOWN.join(", ")
        ));
    }
    let id = || {
        q.get("id")
            .filter(|id| !id.is_empty())
            .cloned()
            .ok_or_else(|| "id: required with this scope".to_string())
    };
    let scope = match q.get("scope").map(String::as_str) {
        Some("site") if q.contains_key("id") => return Err("id: not taken with scope=site".into()),
        Some("site") => Scope::Site,
        Some("substation") => Scope::Substation(id()?),
        Some("segment") => Scope::Segment(id()?),
        Some(other) => {
            return Err(format!(
                "scope: {other:?} is not site, substation or segment"
            ))
        }
        None => return Err("scope: required (site, substation or segment)".into()),
    };
    let number = |name: &str| -> Result<f64, String> {
        let raw = q
            .get(name)
            .ok_or_else(|| format!("{name}: required (seconds)"))?;
        raw.parse::<f64>()
            .map_err(|_| format!("{name}: {raw:?} is not a number"))
    };
    Ok((scope, number("horizon_s")?, number("step_s")?))
}

/// `GET /api/v1/flexibility?scope=site|substation|segment&id=&horizon_s=&step_s=`: the
/// forecast; 400 naming the parameter, 404 for an unknown substation or segment.
async fn flexibility(
    State(node): State<Arc<Node>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    use gridvisor_actors::runtime::FlexQueryError;
    let (scope, horizon_s, step_s) = match flexibility_query(&q) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_query", m),
    };
    match node.flexibility(scope, horizon_s, step_s) {
        Ok(view) => Json(view).into_response(),
        Err(e @ FlexQueryError::Invalid(_)) => {
            error(StatusCode::BAD_REQUEST, "bad_query", e.to_string())
        }
        Err(e @ FlexQueryError::UnknownScope { .. }) => {
            error(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
    }
}

/// `POST /api/v1/keepalive`: the watchdog's keep-alive; from an authenticated controller
/// (the guard checked its role) it names the controller in the segments' views.
async fn keepalive(
    State(node): State<Arc<Node>>,
    caller: Option<axum::Extension<Caller>>,
    body: Bytes,
) -> Response {
    if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "keep-alive: the body must be empty or JSON",
        );
    }
    let sent = match caller {
        Some(c) => node.keepalive_from(&c.identity.name),
        None => node.keepalive(),
    };
    match sent {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => request_error(e),
    }
}

async fn segments(State(node): State<Arc<Node>>) -> Response {
    Json(node.segments()).into_response()
}

async fn segment(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    match node.segment(&id) {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no segment {id:?}"),
        ),
    }
}

/// `POST /api/v1/segments/{id}/reset`: 200 with the segment, 404, 409 saying why not
/// (`causes_present`, `holding` with `until_ms`, `not_locked_out`), 503.
async fn reset(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    use gridvisor_actors::ladder::ResetRefused;
    let e = match node.reset_segment(&id) {
        Ok(view) => return Json(view).into_response(),
        Err(e) => e,
    };
    let message = e.to_string();
    let body = match e {
        ResetError::Unknown(_) => return error(StatusCode::NOT_FOUND, "not_found", message),
        ResetError::NotDriven(_) | ResetError::Unavailable(_) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
        ResetError::Refused(ResetRefused::CausesPresent(causes)) => serde_json::json!({
            "error": "causes_present", "message": message, "causes": kinds(&causes),
        }),
        ResetError::Refused(ResetRefused::Holding { causes, until }) => serde_json::json!({
            "error": "holding", "message": message, "causes": kinds(&causes),
            "until_ms": until.as_millis() as u64,
        }),
        ResetError::Refused(ResetRefused::NotLockedOut(level)) => serde_json::json!({
            "error": "not_locked_out", "message": message, "level": level,
        }),
    };
    (StatusCode::CONFLICT, Json(body)).into_response()
}

fn kinds(causes: &[gridvisor_actors::FaultKey]) -> Vec<&'static str> {
    causes.iter().map(|c| c.kind()).collect()
}

async fn session(State(node): State<Arc<Node>>, Path(vehicle): Path<String>) -> Response {
    match node.session(&vehicle) {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session for vehicle {vehicle:?}"),
        ),
    }
}

// --- The authorization list (issue 21): operator reads, admin changes (src/api_auth). ---

/// The list, or the 404 that says the site has none.
fn auth_list(node: &Node) -> Result<Arc<AuthStore>, Box<Response>> {
    node.authorization().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "no_authorization_list",
            "this site has no [authorization] table: its vehicles are configured in [[vehicles]]",
        ))
    })
}

/// The list and the token of a `/api/v1/tokens/{type}/{value}` path, or the answer.
fn list_and_token(
    node: &Node,
    kind: &str,
    value: &str,
) -> Result<(Arc<AuthStore>, TokenId), Box<Response>> {
    let list = auth_list(node)?;
    let id = TokenId::new(kind, value)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "bad_token", e)))?;
    Ok((list, id))
}

#[derive(Serialize)]
struct TokenEntry {
    #[serde(flatten)]
    id: TokenId,
    contract: Contract,
}

/// `GET /api/v1/tokens`: every entry, in token order.
async fn tokens(State(node): State<Arc<Node>>) -> Response {
    let list = match auth_list(&node) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let entries: Vec<TokenEntry> = list
        .list()
        .into_iter()
        .map(|(id, contract)| TokenEntry { id, contract })
        .collect();
    Json(entries).into_response()
}

/// `GET /api/v1/tokens/{type}/{value}`.
async fn token(
    State(node): State<Arc<Node>>,
    Path((kind, value)): Path<(String, String)>,
) -> Response {
    let (list, id) = match list_and_token(&node, &kind, &value) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    match list.get(&id) {
        Some(contract) => Json(TokenEntry { id, contract }).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such token"),
    }
}

/// `PUT /api/v1/tokens/{type}/{value}`: add or replace (201 added, 200 replaced). Takes
/// effect at the token's next Authorize or TransactionEvent.
async fn put_token(
    State(node): State<Arc<Node>>,
    Path((kind, value)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (list, id) = match list_and_token(&node, &kind, &value) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let contract: Contract = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_body", e.to_string()),
    };
    match tokio::task::spawn_blocking(move || list.put(id, contract)).await {
        Ok(Ok(replaced)) => {
            let status = if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(serde_json::json!({ "replaced": replaced }))).into_response()
        }
        Ok(Err(e)) => store_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}

/// `DELETE /api/v1/tokens/{type}/{value}`: 204, or 404 if it was not listed. The token is
/// unknown from its next Authorize or TransactionEvent on (refused, and its session ends).
async fn delete_token(
    State(node): State<Arc<Node>>,
    Path((kind, value)): Path<(String, String)>,
) -> Response {
    let (list, id) = match list_and_token(&node, &kind, &value) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    match tokio::task::spawn_blocking(move || list.delete(&id)).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, "not_found", "no such token"),
        Ok(Err(e)) => store_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}

fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid", m.clone()),
        StoreError::Full => error(StatusCode::INSUFFICIENT_STORAGE, "full", e.to_string()),
        StoreError::Io { .. } => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}

// --- end of the authorization list ---

/// `GET /api/v1/openadr`: the OpenADR VEN's registration, events and reports.
async fn openadr(State(node): State<Arc<Node>>) -> Response {
    match node.openadr() {
        Some(v) => Json(v).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node has no [openadr] table",
        ),
    }
}

async fn events(State(node): State<Arc<Node>>) -> Response {
    Json(node.events()).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The grid API router.
pub fn grid_api(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/v1/dispatch", post(dispatch))
        .route("/api/v1/dispatch/{id}", axum::routing::delete(cancel))
        .route("/api/v1/flexibility", get(flexibility))
        .route("/api/v1/keepalive", post(keepalive))
        .route("/api/v1/segments", get(segments))
        .route("/api/v1/segments/{id}", get(segment))
        .route("/api/v1/segments/{id}/reset", post(reset))
        .route("/api/v1/sessions/{vehicle}", get(session))
        .route("/api/v1/tokens", get(tokens))
        .route(
            "/api/v1/tokens/{kind}/{value}",
            get(token).put(put_token).delete(delete_token),
        )
        .route("/api/v1/events", get(events))
        .route("/api/v1/openadr", get(openadr))
        // OCPP actions on a charger (issue 21): keep these two together.
        .route("/api/v1/chargers/{id}/start", post(ocpp_actions::start))
        .route("/api/v1/chargers/{id}/stop", post(ocpp_actions::stop))
        .route("/api/v1/openapi.yaml", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(node)
}

/// `/metrics`: OpenMetrics when the scraper ranks it first in `Accept` (Prometheus does),
/// the Prometheus text format otherwise. Rendering 100,000 actors takes tens of
/// milliseconds of CPU, so it runs on the blocking pool rather than on a runtime worker.
async fn metrics(State(node): State<Arc<Node>>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let format = Format::negotiate(accept.as_deref());
    match tokio::task::spawn_blocking(move || node.metrics_exposition(format)).await {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()),
    }
}

async fn tree(State(node): State<Arc<Node>>) -> Response {
    match node.tree().await {
        Ok(t) => Json(t).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "tree", e.to_string()),
    }
}

/// `/api/ready`: 200 while the tree runs (a cluster node adds its lease and membership, see
/// `crate::cluster::route`).
async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.running() {
        Json(serde_json::json!({"ready": true})).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the supervision tree is not running",
        )
    }
}

/// `/`: the live view (see [`crate::live`]).
async fn admin_index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        crate::live::INDEX_HTML,
    )
        .into_response()
}

/// The header a kill request must carry, with the value [`KILL_CONFIRM_VALUE`]. A browser
/// sends no custom header across origins without asking first (a CORS preflight this server
/// never grants), so a page from elsewhere cannot kill actors through an operator's browser.
pub const KILL_CONFIRM_HEADER: &str = "x-gridvisor-confirm";
/// The value of [`KILL_CONFIRM_HEADER`].
pub const KILL_CONFIRM_VALUE: &str = "kill";

/// Whether the admin API kills actors (`[api] actor_kill`), and its rate limit.
pub struct KillPolicy {
    enabled: bool,
    limiter: std::sync::Mutex<KillLimiter>,
    started: std::time::Instant,
}

impl KillPolicy {
    /// Kills served (rate-limited) when `enabled`, else refused.
    pub fn new(enabled: bool) -> Arc<KillPolicy> {
        Arc::new(KillPolicy {
            enabled,
            limiter: Default::default(),
            started: std::time::Instant::now(),
        })
    }
}

/// `POST /api/actors/kill?path=...`: kill the actor's current incarnation (observer's "kill
/// process"); its supervisor restarts it as after any other kill. Off (403
/// `actor_kill_disabled`) unless the topology sets `[api] actor_kill = true`; beyond the
/// limit of [`crate::api_auth::kill_limit`], 429 with `retry-after`.
async fn kill(
    State((node, policy)): State<(Arc<Node>, Arc<KillPolicy>)>,
    headers: axum::http::HeaderMap,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if !policy.enabled {
        return error(
            StatusCode::FORBIDDEN,
            "actor_kill_disabled",
            "actor kill is off on this node: set `actor_kill = true` in the topology's [api] table",
        );
    }
    if headers
        .get(KILL_CONFIRM_HEADER)
        .and_then(|v| v.to_str().ok())
        != Some(KILL_CONFIRM_VALUE)
    {
        return error(
            StatusCode::FORBIDDEN,
            "unconfirmed",
            format!("a kill needs the header {KILL_CONFIRM_HEADER}: {KILL_CONFIRM_VALUE}"),
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // By address only: a site's own name can be made to point at this machine (DNS
    // rebinding), and its page would then be same-origin with the admin port.
    if !host_is_address(host) {
        return error(
            StatusCode::FORBIDDEN,
            "by_address_only",
            format!(
                "a kill is refused on host {host:?}: reach the admin port by its IP address or localhost"
            ),
        );
    }
    // Same origin only: a browser names the page's origin on a cross-site request.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(origin);
        if origin_host != host {
            return error(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!("a kill from origin {origin:?} is refused on host {host:?}"),
            );
        }
    }
    if let Some(other) = params.keys().find(|k| k.as_str() != "path") {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown parameter {other:?} (path)"),
        );
    }
    let Some(path) = params.get("path").filter(|p| !p.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "path: missing (e.g. ?path=node/segments/tx-1/safety)",
        );
    };
    let mut limiter = policy.limiter.lock().unwrap_or_else(|p| p.into_inner());
    let now = policy.started.elapsed();
    if let Some(wait) = limiter.check(path, now) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many kills: at most {} per {:?} ({} of the root's children); retry in {:.1} s",
                crate::api_auth::kill_limit::KILLS_PER_WINDOW,
                crate::api_auth::kill_limit::KILL_WINDOW,
                crate::api_auth::kill_limit::ROOT_CHILD_KILLS_PER_WINDOW,
                wait.as_secs_f64()
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, (wait.as_secs() + 1).into());
        return r;
    }
    match node.kill(path) {
        Ok(killed) => {
            limiter.record(path, now);
            Json(killed).into_response()
        }
        Err(e) => {
            let status = match e {
                KillError::Root(_) => StatusCode::BAD_REQUEST,
                KillError::Unknown(_) => StatusCode::NOT_FOUND,
                KillError::Restarting(_) => StatusCode::CONFLICT,
            };
            error(status, "kill", e.to_string())
        }
    }
}

/// True when `host` (a Host header: name or address, maybe a port) is an IP address or
/// `localhost`.
fn host_is_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split_once(']').map_or("", |(name, _)| name),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The admin router: the live view at `/` (its streams end once `stop` turns true, so that
/// an open page does not hold up an ordered stop), `/metrics`, `/api/tree` and
/// `POST /api/actors/kill`.
pub fn admin_api(
    node: Arc<Node>,
    stop: tokio::sync::watch::Receiver<bool>,
    kill_policy: Arc<KillPolicy>,
) -> Router {
    Router::new()
        .route("/", get(admin_index))
        .route("/metrics", get(metrics))
        .route("/api/tree", get(tree))
        .route("/api/ready", get(ready))
        .with_state(node.clone())
        .merge(
            Router::new()
                .route("/api/actors/kill", post(kill))
                .with_state((node.clone(), kill_policy)),
        )
        .merge(crate::live::router(node, stop))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Bind `addr`, naming it in the error.
pub async fn bind(what: &str, addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for the {what} on {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::host_is_address;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use gridvisor_actors::checkpoint::CheckpointStore;
    use gridvisor_actors::clock::Clock;
    use gridvisor_actors::runtime::{Node, NodeOptions};
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every wait of these tests is bounded by this.
    const LIMIT: Duration = Duration::from_secs(30);

    const SITE: &str = "[site]\nid = \"h\"\nkeepalive_required = false\n[safety]\nhold_s = 0.3\n\
        [[substations]]\nid = \"sub\"\n[[substations.segments]]\nid = \"tx\"\nrated_kw = 50\n\
        trip = {}\n[[substations.segments.chargers]]\nid = \"c1\"\nmax_kw = 11\n\
        [[substations.segments.meters]]\nid = \"m1\"\n";

    /// One HTTP/1.1 request over a real socket; the status and the JSON body.
    async fn call(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, Value) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut text = String::new();
        tokio::time::timeout(LIMIT, s.read_to_string(&mut text))
            .await
            .expect("an answer")
            .unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reset_endpoint_answers_404_409_with_the_reason_then_200() {
        let topology = gridvisor_actors::config::parse("h.toml", SITE).unwrap();
        let node = Node::start(
            Arc::new(topology),
            CheckpointStore::in_memory(),
            Clock::tokio(),
            prometheus::Registry::new(),
            NodeOptions::default(),
        )
        .await
        .unwrap();
        let node = Arc::new(node);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = super::grid_api(node.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let reset = "/api/v1/segments/tx/reset";

        let (status, body) = call(addr, "POST", "/api/v1/segments/nope/reset").await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
        let (status, body) = call(addr, "POST", reset).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("not_locked_out")),
            "{body}"
        );

        node.sim.ptp.set_offset(Duration::from_millis(150));
        let started = Instant::now();
        let body = loop {
            let (status, body) = call(addr, "POST", reset).await;
            if body["error"] == "causes_present" {
                assert_eq!(status, 409);
                break body;
            }
            assert!(started.elapsed() < LIMIT, "never tripped: {status} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(body["causes"], serde_json::json!(["clock_drift"]), "{body}");
        let (_, seg) = call(addr, "GET", "/api/v1/segments/tx").await;
        assert_eq!(
            (seg["locked_out"].as_bool(), seg["trip_relay"].as_str()),
            (Some(true), Some("open")),
            "{seg}"
        );

        node.sim.ptp.set_offset(Duration::ZERO);
        let mut holding = false;
        let seg = loop {
            let (status, body) = call(addr, "POST", reset).await;
            match (status, body["error"].as_str()) {
                (200, _) => break body,
                (409, Some("holding")) => {
                    holding = true;
                    assert!(body["until_ms"].as_u64().is_some(), "{body}");
                }
                (409, Some("causes_present")) => assert!(!holding, "{body}"),
                _ => panic!("{status} {body}"),
            }
            assert!(started.elapsed() < LIMIT, "never reset");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(holding, "the hold was never reported");
        assert_eq!(
            (seg["level"]["level"].as_str(), seg["locked_out"].as_bool()),
            (Some("normal"), Some(false)),
            "{seg}"
        );
        let (_, events) = call(addr, "GET", "/api/v1/events").await;
        let last = events
            .as_array()
            .and_then(|e| e.last())
            .cloned()
            .unwrap_or_default();
        assert_eq!(last["transition"]["reset"], "operator", "{events}");
        server.abort();
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_keepalive_controller_is_named_while_its_keepalive_is_current() {
        let topology = gridvisor_actors::config::parse("h.toml", SITE).unwrap();
        let timeout = topology.safety.ladder_config().keepalive_timeout;
        let clock = Clock::manual();
        let node = Node::start(
            Arc::new(topology),
            CheckpointStore::in_memory(),
            clock.clone(),
            prometheus::Registry::new(),
            NodeOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(node.keepalive_controller(), None);
        node.keepalive().unwrap();
        assert_eq!(
            node.keepalive_controller(),
            None,
            "a keep-alive without a name"
        );
        node.keepalive_from("scada-1").unwrap();
        assert_eq!(
            node.segments()[0].keepalive_controller.as_deref(),
            Some("scada-1")
        );
        clock.advance(timeout);
        assert_eq!(node.keepalive_controller().as_deref(), Some("scada-1"));
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            node.segment("tx").unwrap().keepalive_controller,
            None,
            "expired"
        );
        node.shutdown().await;
    }

    #[test]
    fn kills_are_taken_by_address_only() {
        for ok in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "localhost:9464",
            "LOCALHOST",
            "[::1]:9464",
            "10.1.2.3:80",
        ] {
            assert!(host_is_address(ok), "{ok}");
        }
        for refused in ["evil.example:9464", "evil.example", "", "[::1", "node1:x"] {
            assert!(!host_is_address(refused), "{refused}");
        }
    }
}
