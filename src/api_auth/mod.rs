//! Who may call the grid and admin APIs, and what each caller may do.
//!
//! The pure core of the APIs' security (no IO but [`new_token`]'s random bytes): the roles, the
//! tokens file and its parser, token hashing and the constant-time lookup, and the table of
//! which route needs which role. The HTTP side (TLS, the accept loop, the middleware, the
//! audit log) lives in [`serve`], [`middleware`] and [`audit`].
//!
//! Roles: `controller` (POST dispatch, DELETE a dispatch request, POST keepalive, POST a charger's start/stop), `operator` (every GET: segments,
//! sessions, events, audit, the OpenADR VEN, the live view, /metrics, the tree; the flexibility forecast is
//! read by `operator` or `controller`), `admin` (actor kill, segment
//! reset). One hierarchy only: **admin implies operator** (who may kill or reset must see what
//! they act on). A controller reads nothing unless it also has `operator`.
//!
//! Tokens are 256-bit random values, shown once by `gridvisor token` and stored only as the
//! hex SHA-256 of their text. A client certificate (mTLS) names its identity by its subject
//! CN (or, without one, its first DNS SAN); its roles are that identity's roles in the tokens
//! file (a line with `-` in place of a hash gives a certificate-only identity its roles).

pub mod audit;
pub mod kill_limit;
pub mod middleware;
pub mod serve;
pub mod setup;

use std::collections::BTreeMap;
use std::fmt;

/// The identity every request runs as when the APIs have no `[api]` credentials and are bound
/// to loopback (or the node runs with `--insecure-no-auth`): every role.
pub const LOCAL_IDENTITY: &str = "local";
/// The longest identity name a tokens file may give, bytes.
pub const MAX_IDENTITY_LEN: usize = 64;
/// Random bytes in a token (256 bits).
pub const TOKEN_BYTES: usize = 32;

/// A role a credential carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Dispatch and keep-alive.
    Controller,
    /// Every read.
    Operator,
    /// Actor kill and segment reset (implies operator).
    Admin,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 3] = [Role::Controller, Role::Operator, Role::Admin];

    /// The name in the tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role {s:?} (controller, operator, admin)"))
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    /// Every role.
    pub fn all() -> Roles {
        Roles(Role::ALL.iter().fold(0, |b, r| b | r.bit()))
    }

    /// These roles and `r`.
    pub fn with(self, r: Role) -> Roles {
        Roles(self.0 | r.bit())
    }

    /// Whether these roles allow what `needed` allows (admin implies operator).
    pub fn allow(self, needed: Role) -> bool {
        self.0 & needed.bit() != 0 || (needed == Role::Operator && self.0 & Role::Admin.bit() != 0)
    }

    /// `controller,operator`.
    pub fn names(self) -> String {
        let names: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| self.0 & r.bit() != 0)
            .map(Role::name)
            .collect();
        names.join(",")
    }

    fn parse(text: &str) -> Result<Roles, String> {
        text.split(',')
            .try_fold(Roles::default(), |rs, r| Ok(rs.with(r.trim().parse()?)))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its name (from the tokens file or the client certificate).
    pub name: String,
    /// Its roles.
    pub roles: Roles,
}

impl Identity {
    /// [`LOCAL_IDENTITY`] with every role.
    pub fn local() -> Identity {
        Identity {
            name: LOCAL_IDENTITY.to_owned(),
            roles: Roles::all(),
        }
    }
}

/// The hex SHA-256 of a token's text: what the tokens file stores.
pub fn hash_token(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Equal without an early exit: the time taken does not depend on where they differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A new token: [`TOKEN_BYTES`] random bytes from the system's generator, hex.
pub fn new_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; TOKEN_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random generator failed".to_owned())?;
    Ok(hex(&bytes))
}

/// The tokens file's line for `token` (its hash, never the token).
pub fn token_line(token: &str, identity: &str, roles: Roles) -> String {
    format!("{} {identity} {}", hex(&hash_token(token)), roles.names())
}

/// `gridvisor token`: a new token for `identity` with `roles`, its line appended to `file`
/// (created with mode 0600). The file must parse before and after; the token is returned to
/// be shown once.
pub fn add_token(file: &std::path::Path, identity: &str, roles: &str) -> Result<String, String> {
    use std::io::Write;
    let name = file.display().to_string();
    let roles = Roles::parse(roles).map_err(|e| format!("--roles: {e}"))?;
    if !valid_identity(identity) {
        return Err(format!(
            "--identity {identity:?}: 1 to {MAX_IDENTITY_LEN} letters, digits or .-_@"
        ));
    }
    let old = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{name}: {e}")),
    };
    let token = new_token()?;
    let line = token_line(&token, identity, roles);
    let sep = if old.is_empty() || old.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    Credentials::parse(&name, &format!("{old}{sep}{line}\n"))?;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(file).map_err(|e| format!("{name}: {e}"))?;
    f.write_all(format!("{sep}{line}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(token)
}

/// Whether `name` may name an identity: 1 to [`MAX_IDENTITY_LEN`] bytes of ASCII letters,
/// digits and `.-_@`.
pub fn valid_identity(name: &str) -> bool {
    (1..=MAX_IDENTITY_LEN).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_@".contains(c))
}

/// The parsed tokens file.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    tokens: Vec<([u8; 32], String)>,
    roles: BTreeMap<String, Roles>,
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tokens, {} identities",
            self.tokens.len(),
            self.roles.len()
        )
    }
}

impl Credentials {
    /// Parse a tokens file: `# comments`, blank lines, and `<hash|-> <identity> <roles>`
    /// lines. Errors name `file:line:col`. An identity on several lines (several tokens, for
    /// rotation) must carry the same roles on each.
    pub fn parse(file: &str, text: &str) -> Result<Credentials, String> {
        let mut c = Credentials::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default();
            let fields: Vec<(usize, &str)> = fields(line);
            if fields.is_empty() {
                continue;
            }
            let at =
                |i: usize| format!("{file}:{}:{}", n + 1, fields.get(i).map_or(1, |f| f.0 + 1));
            let [(_, hash), (_, name), (_, roles)] = fields[..] else {
                return Err(format!(
                    "{}: expected `<sha256 hex or -> <identity> <role>[,<role>...]`, found {} fields",
                    at(0),
                    fields.len()
                ));
            };
            if !valid_identity(name) {
                return Err(format!(
                    "{}: identity {name:?}: 1 to {MAX_IDENTITY_LEN} letters, digits or .-_@",
                    at(1)
                ));
            }
            let roles = Roles::parse(roles).map_err(|e| format!("{}: {e}", at(2)))?;
            if let Some(old) = c.roles.insert(name.to_owned(), roles) {
                if old != roles {
                    return Err(format!(
                        "{}: identity {name:?} has roles {} on an earlier line",
                        at(2),
                        old.names()
                    ));
                }
            }
            if hash == "-" {
                continue;
            }
            let h = unhex32(hash).ok_or_else(|| {
                format!("{}: a token hash is 64 hex digits (the SHA-256 of the token; `gridvisor token` writes it)", at(0))
            })?;
            if c.tokens.iter().any(|(t, _)| constant_time_eq(t, &h)) {
                return Err(format!("{}: this token hash is on an earlier line", at(0)));
            }
            c.tokens.push((h, name.to_owned()));
        }
        Ok(c)
    }

    /// The identity a bearer token belongs to. Every entry is compared, each in constant time.
    pub fn by_token(&self, token: &str) -> Option<Identity> {
        let h = hash_token(token);
        let mut found = None;
        for (t, name) in &self.tokens {
            if constant_time_eq(t, &h) {
                found = Some(name);
            }
        }
        found.and_then(|n| self.by_name(n))
    }

    /// The identity a verified client certificate names, if the file gives it roles.
    pub fn by_name(&self, name: &str) -> Option<Identity> {
        self.roles.get(name).map(|roles| Identity {
            name: name.to_owned(),
            roles: *roles,
        })
    }
}

/// The whitespace-separated fields of a line, with their byte offsets.
fn fields(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, ch) in line
        .char_indices()
        .chain(std::iter::once((line.len(), ' ')))
    {
        match (ch.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &line[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    out
}

/// Which API a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The grid API (9090).
    Grid,
    /// The admin API (9464).
    Admin,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing (the OpenAPI file, `/api/ready`).
    Public,
    /// This role.
    Role(Role),
    /// Either of these roles (a read both a controller and an operator need).
    Either(Role, Role),
}

/// The role `method path` needs on `api` (`post`: any method that changes something, i.e.
/// POST, PUT, DELETE; GET and HEAD read). Anything not listed (including unknown paths)
/// needs `operator`, so that an unauthenticated caller learns nothing of the routes.
pub fn need(api: Api, post: bool, path: &str) -> Need {
    match (api, post, path) {
        // The API's description, readiness, and the live view's page (no data: the page
        // reads it from the streams, which need operator).
        (Api::Grid, false, "/api/v1/openapi.yaml")
        | (Api::Admin, false, "/api/ready" | "/" | "/live.js" | "/live.css") => Need::Public,
        (Api::Grid, true, "/api/v1/dispatch" | "/api/v1/keepalive") => Need::Role(Role::Controller),
        (Api::Grid, true, p) if is_reset(p) => Need::Role(Role::Admin),
        // The authorization list (issue 21): operator reads it, admin changes it.
        (Api::Grid, true, p) if is_token_item(p) => Need::Role(Role::Admin),
        (Api::Grid, true, p) if is_charger_action(p) => Need::Role(Role::Controller),
        (Api::Grid, true, p) if is_dispatch_item(p) => Need::Role(Role::Controller),
        // A controller bids with the forecast before it dispatches (issue 22).
        (Api::Grid, false, "/api/v1/flexibility") => Need::Either(Role::Operator, Role::Controller),
        (Api::Admin, true, "/api/actors/kill") => Need::Role(Role::Admin),
        _ => Need::Role(Role::Operator),
    }
}

/// Whether `method path` is a command: it is recorded in the audit log, answered or refused.
pub fn is_command(api: Api, post: bool, path: &str) -> bool {
    post && matches!(
        need(api, post, path),
        Need::Role(Role::Controller | Role::Admin)
    )
}

/// `/api/v1/tokens/{type}/{value}` (the value may not be empty).
fn is_token_item(path: &str) -> bool {
    path.strip_prefix("/api/v1/tokens/")
        .and_then(|p| p.split_once('/'))
        .is_some_and(|(kind, value)| !kind.is_empty() && !value.is_empty())
}

fn is_reset(path: &str) -> bool {
    path.strip_prefix("/api/v1/segments/")
        .and_then(|p| p.strip_suffix("/reset"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// `/api/v1/dispatch/{id}`: cancel a grid request (issue 22).
fn is_dispatch_item(path: &str) -> bool {
    path.strip_prefix("/api/v1/dispatch/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// `/api/v1/chargers/{id}/start` or `/stop`: OCPP remote start and stop (issue 21).
fn is_charger_action(path: &str) -> bool {
    path.strip_prefix("/api/v1/chargers/")
        .and_then(|p| p.strip_suffix("/start").or_else(|| p.strip_suffix("/stop")))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Credentials, String> {
        Credentials::parse("tokens.txt", text)
    }

    #[test]
    fn a_token_is_found_by_its_hash_only() {
        let token = new_token().unwrap();
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert_ne!(token, new_token().unwrap());
        let line = token_line(&token, "scada-1", Roles::default().with(Role::Controller));
        assert!(!line.contains(&token), "{line}");
        let c = file(&format!("# the site's controllers\n\n{line}  # primary\n")).unwrap();
        let id = c.by_token(&token).expect("found");
        assert_eq!(
            (id.name.as_str(), id.roles.names()),
            ("scada-1", "controller".into())
        );
        assert_eq!(c.by_token("x"), None);
        assert_eq!(c.by_token(&token[1..]), None);
    }

    #[test]
    fn sha256_is_the_known_digest() {
        assert_eq!(
            hex(&hash_token("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = hash_token("a");
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }

    #[test]
    fn bad_lines_are_named_by_line_and_column() {
        let h = hex(&hash_token("t"));
        let cases = [
            (
                "abc ops operator\n",
                "tokens.txt:1:1: a token hash is 64 hex digits",
            ),
            (&format!("\n{h} ops\n") as &str, "tokens.txt:2:1: expected"),
            (
                &format!("{h} ops operator,root\n"),
                "tokens.txt:1:70: unknown role \"root\"",
            ),
            (
                &format!("{h} o/ps operator\n"),
                "tokens.txt:1:66: identity \"o/ps\"",
            ),
            (
                &format!("{h} a admin\n{h} b admin\n"),
                "tokens.txt:2:1: this token hash is on an earlier line",
            ),
            (
                &format!("- a admin\n{h} a operator\n"),
                "tokens.txt:2:68: identity \"a\" has roles admin",
            ),
        ];
        for (text, want) in cases {
            let e = file(text).unwrap_err();
            assert!(e.starts_with(want), "{e}\nwanted {want}");
        }
    }

    #[test]
    fn certificate_identities_take_their_roles_by_name() {
        let c = file("- scada-2 controller,operator\n").unwrap();
        let id = c.by_name("scada-2").unwrap();
        assert!(id.roles.allow(Role::Controller) && id.roles.allow(Role::Operator));
        assert!(!id.roles.allow(Role::Admin));
        assert_eq!(c.by_name("nobody"), None);
    }

    #[test]
    fn admin_implies_operator_and_nothing_else_implies_anything() {
        let admin = Roles::default().with(Role::Admin);
        assert!(admin.allow(Role::Operator) && !admin.allow(Role::Controller));
        let controller = Roles::default().with(Role::Controller);
        assert!(!controller.allow(Role::Operator) && !controller.allow(Role::Admin));
        let operator = Roles::default().with(Role::Operator);
        assert!(!operator.allow(Role::Admin) && !operator.allow(Role::Controller));
        assert!(Role::ALL.iter().all(|r| Roles::all().allow(*r)));
    }

    #[test]
    fn routes_need_their_roles() {
        use self::Role::{Admin, Controller, Operator};
        use Need::{Public, Role};
        let cases = [
            (Api::Grid, true, "/api/v1/dispatch", Role(Controller), true),
            (Api::Grid, true, "/api/v1/keepalive", Role(Controller), true),
            (
                Api::Grid,
                true,
                "/api/v1/dispatch/req-1",
                Role(Controller),
                true,
            ),
            (
                Api::Grid,
                false,
                "/api/v1/dispatch/req-1",
                Role(Operator),
                false,
            ),
            (
                Api::Grid,
                true,
                "/api/v1/dispatch/a/b",
                Role(Operator),
                false,
            ),
            (
                Api::Grid,
                false,
                "/api/v1/flexibility",
                Need::Either(Operator, Controller),
                false,
            ),
            (
                Api::Grid,
                true,
                "/api/v1/segments/tx-1/reset",
                Role(Admin),
                true,
            ),
            (
                Api::Grid,
                false,
                "/api/v1/segments/tx-1",
                Role(Operator),
                false,
            ),
            (Api::Grid, false, "/api/v1/audit", Role(Operator), false),
            (Api::Grid, false, "/api/v1/openadr", Role(Operator), false),
            (Api::Grid, false, "/api/v1/tokens", Role(Operator), false),
            (
                Api::Grid,
                false,
                "/api/v1/tokens/eMAID/X",
                Role(Operator),
                false,
            ),
            (Api::Grid, true, "/api/v1/tokens/eMAID/X", Role(Admin), true),
            (
                Api::Grid,
                true,
                "/api/v1/tokens/eMAID/",
                Role(Operator),
                false,
            ),
            (
                Api::Grid,
                true,
                "/api/v1/chargers/cp-1/start",
                Role(Controller),
                true,
            ),
            (
                Api::Grid,
                true,
                "/api/v1/chargers/cp-1/stop",
                Role(Controller),
                true,
            ),
            (
                Api::Grid,
                true,
                "/api/v1/chargers/a/b/stop",
                Role(Operator),
                false,
            ),
            (Api::Grid, false, "/api/v1/openapi.yaml", Public, false),
            (Api::Grid, true, "/api/v1/nope", Role(Operator), false),
            (Api::Admin, true, "/api/actors/kill", Role(Admin), true),
            (Api::Admin, false, "/metrics", Role(Operator), false),
            (Api::Admin, false, "/api/live/stream", Role(Operator), false),
            (Api::Admin, false, "/api/ready", Public, false),
            (Api::Admin, false, "/live.js", Public, false),
            (Api::Admin, false, "/api/live", Role(Operator), false),
        ];
        for (api, post, path, want, command) in cases {
            assert_eq!(need(api, post, path), want, "{path}");
            assert_eq!(is_command(api, post, path), command, "{path}");
        }
    }
}
