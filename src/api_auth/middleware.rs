//! The authentication, authorisation and audit layer of the grid and admin APIs.
//!
//! Every request: who is calling ([`Mode`]: the local identity, or a bearer token, or a
//! verified client certificate), whether their roles allow the route ([`super::need`]), and
//! for a command ([`super::is_command`]) a durable audit record, answered or refused, written
//! before the answer leaves. The handlers find the caller as a [`Caller`] extension.
//!
//! A request another cluster node forwarded was authorised there: it carries the original
//! caller ([`Caller`] with `via`), set only in process by the cluster's answer path, and is
//! audited here as that caller (the peer link is mutually authenticated).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::audit::{AuditLog, AuditRecord, Coalescer, UNAUTHENTICATED};
use super::serve::ConnInfo;
use super::{hex, is_command, need, Api, Credentials, Identity, Need, Role};
use crate::server::{error, BODY_LIMIT};

/// The largest error answer read back for its error kind, bytes.
const ERROR_ANSWER_MAX: usize = 64 * 1024;

/// How callers are identified.
#[derive(Debug, Clone)]
pub enum Mode {
    /// No credentials: every request runs as [`super::LOCAL_IDENTITY`] with every role
    /// (loopback without `[api]`, or `--insecure-no-auth`).
    Open,
    /// Bearer tokens and/or client certificates, from the tokens file.
    Enforced(Arc<Credentials>),
}

/// The caller of a request, for the handlers (a request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub identity: Identity,
    /// The cluster node that forwarded the request, if another one did.
    pub via: Option<String>,
}

/// The layer's state.
pub struct Guard {
    api: Api,
    mode: Mode,
    audit: Arc<AuditLog>,
    keepalives: Mutex<Coalescer>,
    started: Instant,
}

impl Guard {
    /// A guard of `api`.
    pub fn new(api: Api, mode: Mode, audit: Arc<AuditLog>) -> Arc<Guard> {
        Arc::new(Guard {
            api,
            mode,
            audit,
            keepalives: Mutex::new(Coalescer::default()),
            started: Instant::now(),
        })
    }

    /// `router` behind this guard.
    pub fn layer(self: &Arc<Self>, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), guard))
    }

    /// The caller, None when no credential came, or the refusal of a bad one.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        conn: Option<&ConnInfo>,
    ) -> Result<Option<Identity>, Refusal> {
        let credentials = match &self.mode {
            Mode::Open => return Ok(Some(Identity::local())),
            Mode::Enforced(c) => c,
        };
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or(Refusal::unauthenticated(
                    "the Authorization header is not `Bearer <token>`",
                ))?;
            return match credentials.by_token(token) {
                Some(id) => Ok(Some(id)),
                None => Err(Refusal::unauthenticated(
                    "the bearer token is not in the tokens file",
                )),
            };
        }
        match conn.and_then(|c| c.cert_name.as_deref()) {
            None => Ok(None),
            Some(name) => credentials.by_name(name).map(Some).ok_or_else(|| {
                Refusal::unauthenticated(format!(
                    "the client certificate names {name:?}, an identity the tokens file has no roles for"
                ))
            }),
        }
    }
}

/// A refused request: status, error kind, message.
struct Refusal(StatusCode, &'static str, String);

impl Refusal {
    fn unauthenticated(message: impl Into<String>) -> Refusal {
        Refusal(StatusCode::UNAUTHORIZED, "unauthenticated", message.into())
    }

    fn response(self) -> Response {
        let mut r = error(self.0, self.1, self.2);
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"gridvisor\""),
            );
        }
        r
    }
}

/// Who may pass, or why not.
fn authorise(
    g: &Guard,
    req: &Request,
    needed: Need,
) -> Result<Option<Caller>, (Option<Caller>, Refusal)> {
    if let Some(c) = req.extensions().get::<Caller>().filter(|c| c.via.is_some()) {
        return Ok(Some(c.clone())); // forwarded: authorised at the first node
    }
    let identity = g
        .authenticate(req.headers(), req.extensions().get::<ConnInfo>())
        .map_err(|r| (None, r))?;
    let caller = identity.map(|identity| Caller {
        identity,
        via: None,
    });
    let roles: &[Role] = match &needed {
        Need::Public => return Ok(caller),
        Need::Role(r) => std::slice::from_ref(r),
        Need::Either(a, b) => &[*a, *b],
    };
    let role = roles
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(" or the ");
    match caller {
        None => Err((
            None,
            Refusal::unauthenticated(format!(
                "{} {} needs the {} role: present a bearer token or a client certificate",
                req.method(),
                req.uri().path(),
                role
            )),
        )),
        Some(c) if !roles.iter().any(|r| c.identity.roles.allow(*r)) => {
            let message = format!(
                "identity {:?} (roles {}) may not {} {}: it needs the {} role",
                c.identity.name,
                c.identity.roles.names(),
                req.method(),
                req.uri().path(),
                role
            );
            Err((
                Some(c),
                Refusal(StatusCode::FORBIDDEN, "forbidden", message),
            ))
        }
        Some(c) => Ok(Some(c)),
    }
}

async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    // A change (POST, PUT, DELETE) or a read (GET, HEAD): what `need` calls `post`.
    let post = !matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.uri().path().to_owned();
    let needed = need(g.api, post, &path);
    if !is_command(g.api, post, &path) {
        return match authorise(&g, &req, needed) {
            Ok(caller) => run(req, caller, next).await,
            Err((_, refusal)) => refusal.response(),
        };
    }
    let peer = req
        .extensions()
        .get::<ConnInfo>()
        .map_or_else(|| "in-process".to_owned(), |c| c.peer.to_string());
    let request = format!("{} {}", req.method(), path);
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, "bad_body", e.to_string()),
    };
    let digest = hex(ring::digest::digest(&ring::digest::SHA256, &body).as_ref());
    let req = Request::from_parts(parts, Body::from(body));
    let (caller, response) = match authorise(&g, &req, needed) {
        Ok(caller) => (caller.clone(), run(req, caller, next).await),
        Err((caller, refusal)) => (caller, refusal.response()),
    };
    let (response, kind) = error_kind(response).await;
    let record = AuditRecord {
        seq: 0,
        at_ms: unix_ms(),
        identity: caller
            .as_ref()
            .map_or_else(|| UNAUTHENTICATED.to_owned(), |c| c.identity.name.clone()),
        peer,
        api: match g.api {
            Api::Grid => "grid".into(),
            Api::Admin => "admin".into(),
        },
        request,
        body_sha256: digest,
        status: response.status().as_u16(),
        error: kind,
        forwarded_by: caller.and_then(|c| c.via),
    };
    if path == "/api/v1/keepalive" {
        let who = format!(
            "{} {}",
            record.identity,
            record.peer.rsplit_once(':').map_or("", |p| p.0)
        );
        let keep = g.keepalives.lock().unwrap_or_else(|p| p.into_inner()).keep(
            &who,
            record.status,
            g.started.elapsed(),
        );
        if !keep {
            return response;
        }
    }
    match g.audit.record(record).await {
        Ok(_) => response,
        Err(e) => {
            tracing::error!(error = %e, "a command's audit record was not written");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit",
                format!("the command's audit record was not written: {e}"),
            )
        }
    }
}

async fn run(mut req: Request, caller: Option<Caller>, next: Next) -> Response {
    if let Some(c) = caller {
        req.extensions_mut().insert(c);
    }
    next.run(req).await
}

/// The `error` field of an error answer's JSON body (the answer rebuilt).
async fn error_kind(response: Response) -> (Response, Option<String>) {
    if response.status().as_u16() < 400 {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, ERROR_ANSWER_MAX).await.unwrap_or_default();
    let kind = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .or_else(|| {
            Some(
                parts
                    .status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_owned(),
            )
        });
    (Response::from_parts(parts, Body::from(bytes)), kind)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `GET /api/v1/audit?since=&limit=`: records after number `since` (or the newest), at most
/// `limit` (default and most [`super::audit::AUDIT_PAGE_MAX`]), oldest first.
pub fn audit_router(audit: Arc<AuditLog>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/audit", axum::routing::get(list))
        .with_state(audit)
}

async fn list(
    State(audit): State<Arc<AuditLog>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    use super::audit::AUDIT_PAGE_MAX;
    if let Some(other) = q.keys().find(|k| !matches!(k.as_str(), "since" | "limit")) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown parameter {other:?} (since, limit)"),
        );
    }
    let number = |key: &str| -> Result<Option<u64>, String> {
        q.get(key)
            .map(|v| v.parse::<u64>().map_err(|e| format!("{key}={v:?}: {e}")))
            .transpose()
    };
    let (since, limit) = match (number("since"), number("limit")) {
        (Ok(s), Ok(l)) => (s, l.unwrap_or(AUDIT_PAGE_MAX as u64)),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, "bad_query", e),
    };
    if limit == 0 || limit > AUDIT_PAGE_MAX as u64 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("limit={limit}: 1 to {AUDIT_PAGE_MAX}"),
        );
    }
    let audit = audit.clone();
    match tokio::task::spawn_blocking(move || audit.list(since, limit as usize)).await {
        Ok(Ok(records)) => axum::Json(records).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "audit", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "audit", e.to_string()),
    }
}
