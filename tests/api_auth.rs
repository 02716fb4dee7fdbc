//! The grid and admin APIs' authentication, roles and audit log through a real node process:
//! TLS with bearer tokens and client certificates (`gridvisor certs`, `gridvisor token`), a
//! real TLS client (rustls), the audit log read back after a kill -9 and a restart, the kill
//! endpoint off and then rate-limited, and the binding rule (`--insecure-no-auth`).

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{stdout_lines, LIMIT};
use tokio_rustls::rustls;

fn gridvisor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gridvisor"))
}

/// `gridvisor token`: the token it prints once.
fn token(file: &Path, identity: &str, roles: &str) -> String {
    let out = gridvisor()
        .args(["token", "--identity", identity, "--roles", roles, "--file"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A site of one segment, simulated in process, and its `[api]`.
fn topology(dir: &Path, api: &str) -> PathBuf {
    let text = format!(
        "[site]\nid = \"auth\"\nkeepalive_required = false\n[safety]\nhold_s = 0.3\n\
         [[substations]]\nid = \"sub\"\n[[substations.segments]]\nid = \"tx\"\nrated_kw = 50\n\
         [[substations.segments.chargers]]\nid = \"c1\"\nmax_kw = 11\nbidirectional = true\n\
         [[substations.segments.meters]]\nid = \"m1\"\n{api}"
    );
    let path = dir.join(format!("site-{}.toml", text.len()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The `[api]` table of TLS with tokens and client certificates from `pki`.
fn tls_api(pki: &Path, tokens: &Path, actor_kill: bool) -> String {
    format!(
        "[api]\ntokens = {:?}\nactor_kill = {actor_kill}\n[api.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        tokens,
        pki.join("api.pem"),
        pki.join("api-key.pem"),
        pki.join("ca.pem")
    )
}

/// A node process; killed (SIGKILL) on drop.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    grid: String,
    admin: String,
    banner: Vec<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_port(line: &str) -> String {
    let url = line
        .split_whitespace()
        .find(|w| w.contains("://"))
        .expect("a URL");
    url.split("://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

impl Node {
    fn start(config: &Path, data: &Path, extra: &[&str]) -> Node {
        Node::start_on("127.0.0.1:0", config, data, extra)
    }

    fn start_on(grid: &str, config: &Path, data: &Path, extra: &[&str]) -> Node {
        let mut cmd = gridvisor();
        cmd.args(["run", "--grid", grid, "--admin", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--data")
            .arg(data)
            .args(extra);
        Node::spawn(cmd)
    }

    /// Start `cmd` (a `gridvisor run`, perhaps behind `ip netns exec`) and read its banner.
    fn spawn(mut cmd: Command) -> Node {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let lines = stdout_lines(&mut child);
        let mut node = Node {
            child,
            lines,
            grid: String::new(),
            admin: String::new(),
            banner: Vec::new(),
        };
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = node.lines.recv_timeout(left).expect("the banner");
            if line.contains("grid API") {
                node.grid = host_port(&line);
            }
            if line.contains("  metrics ") {
                node.admin = host_port(&line);
            }
            node.banner.push(line.clone());
            if line.contains("Ctrl-C") {
                return node;
            }
        }
    }

    fn banner_line(&self, needle: &str) -> &str {
        self.banner
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {:#?}", self.banner))
    }
}

/// A TLS client trusting the dev CA, with the client certificate `cert` if given.
fn client(pki: &Path, cert: Option<&str>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        None => b.with_no_client_auth(),
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(pki.join(format!("{name}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(pki.join(format!("{name}-key.pem"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    })
}

/// One HTTPS request: (status, headers and body as text).
fn https(
    tls: &Arc<rustls::ClientConfig>,
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    try_https(tls, addr, method, path, bearer, headers, body)
        .unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"))
}

/// [`https`], or the connection's error.
fn try_https(
    tls: &Arc<rustls::ClientConfig>,
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(LIMIT))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(t) = bearer {
        head.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{head}\r\n{body}").as_bytes())?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        // A peer that closes without close_notify: what was read is the answer.
        Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => return Err(e),
        _ => {}
    }
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer {raw:?}")))?;
    Ok((status, raw))
}

fn json_body(raw: &str) -> Value {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn sha256_hex(body: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const DISPATCH: &str = r#"{"id":"auth-1","scope":"site","target_kw":5,"duration_s":60}"#;

#[test]
fn commands_need_their_roles_and_every_one_is_audited_durably() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    support::make_certs(&pki, &["api", "scada-1", "intruder"]);
    let tokens = dir.path().join("tokens.txt");
    let controller = token(&tokens, "scada-1", "controller");
    let operator = token(&tokens, "ops", "operator");
    let admin = token(&tokens, "root-admin", "admin");
    let file = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        !file.contains(&controller) && file.contains("scada-1 controller"),
        "{file}"
    );
    let data = dir.path().join("data");
    let config = topology(dir.path(), &tls_api(&pki, &tokens, false));
    let node = Node::start(&config, &data, &[]);
    assert!(node
        .banner_line("  auth  ")
        .contains("bearer tokens or client certificates"));
    assert!(node.banner_line("grid API").contains("https://"));
    let (plain, mtls) = (client(&pki, None), client(&pki, Some("scada-1")));
    let grid =
        |t: Option<&str>, m: &str, p: &str, b: &str| https(&plain, &node.grid, m, p, t, &[], b);

    // Reads need a credential (operator); the API's description does not.
    assert_eq!(grid(None, "GET", "/api/v1/segments", "").0, 401);
    assert_eq!(grid(None, "GET", "/api/v1/openapi.yaml", "").0, 200);
    let (status, raw) = grid(Some("not-a-token"), "GET", "/api/v1/segments", "");
    assert!(
        status == 401 && raw.contains("not in the tokens file"),
        "{raw}"
    );
    // Commands need their role.
    let (status, raw) = grid(None, "POST", "/api/v1/dispatch", DISPATCH);
    assert!(
        status == 401
            && raw
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
        "{raw}"
    );
    let (status, raw) = grid(Some(&operator), "POST", "/api/v1/dispatch", DISPATCH);
    assert!(
        status == 403 && raw.contains("needs the controller role"),
        "{raw}"
    );
    let (status, raw) = grid(Some(&controller), "POST", "/api/v1/dispatch", DISPATCH);
    assert_eq!(status, 200, "{raw}");
    // A keep-alive by client certificate (mTLS): the segments name the controller.
    assert_eq!(
        https(
            &mtls,
            &node.grid,
            "POST",
            "/api/v1/keepalive",
            None,
            &[],
            ""
        )
        .0,
        204
    );
    let (status, raw) = grid(Some(&operator), "GET", "/api/v1/segments", "");
    assert_eq!(status, 200, "{raw}");
    assert_eq!(
        json_body(&raw)[0]["keepalive_controller"],
        "scada-1",
        "{raw}"
    );
    // A certificate from the CA whose name has no roles is refused.
    let intruder = client(&pki, Some("intruder"));
    let (status, raw) = https(
        &intruder,
        &node.grid,
        "POST",
        "/api/v1/keepalive",
        None,
        &[],
        "",
    );
    assert!(
        status == 401 && raw.contains("names \\\"intruder\\\""),
        "{raw}"
    );
    // The admin port: metrics for operators, kill for admins, and kill is off.
    let admin_call = |t: Option<&str>, m: &str, p: &str| {
        https(
            &plain,
            &node.admin,
            m,
            p,
            t,
            &[("x-gridvisor-confirm", "kill")],
            "",
        )
    };
    let (status, metrics) = admin_call(Some(&operator), "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("gridvisor_keepalive_controller_info{identity=\"scada-1\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gridvisor_api_insecure_no_auth 0"));
    assert_eq!(admin_call(None, "GET", "/metrics").0, 401);
    let kill = "/api/actors/kill?path=node/site";
    let (status, raw) = admin_call(Some(&operator), "POST", kill);
    assert!(
        status == 403 && raw.contains("needs the admin role"),
        "{raw}"
    );
    let (status, raw) = admin_call(Some(&admin), "POST", kill);
    assert!(
        status == 403 && raw.contains("actor_kill_disabled") && raw.contains("actor_kill = true"),
        "{raw}"
    );

    // The audit log: operators read it, controllers do not.
    assert_eq!(grid(Some(&controller), "GET", "/api/v1/audit", "").0, 403);
    let expected = [
        (
            "unauthenticated",
            "POST /api/v1/dispatch",
            401,
            Some("unauthenticated"),
        ),
        ("ops", "POST /api/v1/dispatch", 403, Some("forbidden")),
        ("scada-1", "POST /api/v1/dispatch", 200, None),
        ("scada-1", "POST /api/v1/keepalive", 204, None),
        (
            "unauthenticated",
            "POST /api/v1/keepalive",
            401,
            Some("unauthenticated"),
        ),
        ("ops", "POST /api/actors/kill", 403, Some("forbidden")),
        (
            "root-admin",
            "POST /api/actors/kill",
            403,
            Some("actor_kill_disabled"),
        ),
    ];
    let check = |records: &Value| {
        let got: Vec<(&str, &str, u64, Option<&str>)> = records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["identity"].as_str().unwrap(),
                    r["request"].as_str().unwrap(),
                    r["status"].as_u64().unwrap(),
                    r["error"].as_str(),
                )
            })
            .collect();
        let want: Vec<_> = expected
            .iter()
            .map(|(i, r, s, e)| (*i, *r, *s as u64, *e))
            .collect();
        assert_eq!(got, want, "{records:#}");
        assert_eq!(records[2]["body_sha256"], sha256_hex(DISPATCH));
        assert!(records[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    };
    let (status, raw) = grid(Some(&operator), "GET", "/api/v1/audit", "");
    assert_eq!(status, 200, "{raw}");
    let before = json_body(&raw);
    check(&before);
    let (_, raw) = grid(Some(&operator), "GET", "/api/v1/audit?since=6&limit=1", "");
    assert_eq!(json_body(&raw)[0]["seq"], 7, "{raw}");
    assert_eq!(
        grid(Some(&operator), "GET", "/api/v1/audit?limit=0", "").0,
        400
    );

    // kill -9, then the same data with actor kill on: the records are all there.
    drop(node);
    let config = topology(dir.path(), &tls_api(&pki, &tokens, true));
    let node = Node::start(&config, &data, &[]);
    let grid =
        |t: Option<&str>, m: &str, p: &str, b: &str| https(&plain, &node.grid, m, p, t, &[], b);
    let (_, raw) = grid(Some(&operator), "GET", "/api/v1/audit", "");
    check(&json_body(&raw));

    // Kills of the root's children: at most half its intensity per window, then 429.
    let mut killed = 0;
    let deadline = Instant::now() + LIMIT;
    let refused = loop {
        let (status, raw) = https(
            &plain,
            &node.admin,
            "POST",
            kill,
            Some(&admin),
            &[("x-gridvisor-confirm", "kill")],
            "",
        );
        match status {
            200 => killed += 1,
            404 | 409 => std::thread::sleep(Duration::from_millis(5)),
            429 => break raw,
            _ => panic!("{raw}"),
        }
        assert!(Instant::now() < deadline, "never rate-limited");
    };
    assert_eq!(killed, 5, "{refused}");
    assert!(
        refused.contains("rate_limited") && refused.to_ascii_lowercase().contains("retry-after:"),
        "{refused}"
    );
    let (_, raw) = grid(Some(&operator), "GET", "/api/v1/audit", "");
    let last = json_body(&raw).as_array().unwrap().last().cloned().unwrap();
    assert_eq!(
        (
            last["identity"].as_str(),
            last["status"].as_u64(),
            last["seq"].as_u64() > Some(7)
        ),
        (Some("root-admin"), Some(429), true),
        "{last}"
    );
}

#[test]
fn off_loopback_without_authentication_the_node_refuses_unless_told_and_then_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = topology(dir.path(), "");
    let out = gridvisor()
        .args([
            "run",
            "--grid",
            "0.0.0.0:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refusing to serve the grid API on 0.0.0.0:0")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );

    // Told: it runs, and says so in its banner and its metrics. It binds 0.0.0.0 only in a
    // network namespace of its own, whose one interface is its loopback: the test opens
    // nothing on this machine's interfaces, and reaches the node from inside the namespace.
    let Some(()) = gridvisor_testkit::probe(
        &gridvisor_testkit::needs::NETNS,
        gridvisor_testkit::net::netns_available(),
    ) else {
        return;
    };
    let ns = Netns::new();
    let data = dir.path().join("data");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_gridvisor")])
        .args(["run", "--grid", "0.0.0.0:0", "--admin", "127.0.0.1:0"])
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .arg("--insecure-no-auth");
    let mut node = Node::spawn(cmd);
    node.grid = node.grid.replace("0.0.0.0", "127.0.0.1");
    assert!(node.banner_line("--insecure-no-auth").contains("!!!"));
    assert!(node.banner_line("  auth  ").contains("anyone who reaches"));
    let (status, metrics) = ns.http("GET", &format!("http://{}/metrics", node.admin));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("gridvisor_api_insecure_no_auth 1"),
        "{metrics}"
    );
    let (status, _) = ns.http("POST", &format!("http://{}/api/v1/keepalive", node.grid));
    assert_eq!(status, 204);
}

/// A network namespace with only its loopback up; removed on drop. The name carries the pid.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let ns = Netns(format!("gv-auth-{}", std::process::id()));
        gridvisor_testkit::net::sh(&["ip", "netns", "add", &ns.0]);
        gridvisor_testkit::net::sh(&[
            "ip", "netns", "exec", &ns.0, "ip", "link", "set", "lo", "up",
        ]);
        ns
    }

    /// An HTTP request from inside the namespace (Python's standard library as the client,
    /// bounded by its timeout): (status, body).
    fn http(&self, method: &str, url: &str) -> (u16, String) {
        const CLIENT: &str = "import sys, urllib.request, urllib.error\n\
            req = urllib.request.Request(sys.argv[2], method=sys.argv[1], data=b'' if sys.argv[1] == 'POST' else None)\n\
            try:\n    r = urllib.request.urlopen(req, timeout=10); print(r.status); print(r.read().decode())\n\
            except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n";
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "python3", "-c", CLIENT, method, url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{method} {url}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
        (status.trim().parse().unwrap(), body.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn on_loopback_without_api_every_request_is_the_local_identity() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&topology(dir.path(), ""), &dir.path().join("data"), &[]);
    assert!(node
        .banner_line("  auth  ")
        .contains("\"local\" with every role"));
    assert_eq!(
        support::http(&node.grid, "POST", "/api/v1/keepalive", None).0,
        204
    );
    let (_, segs) = support::http(&node.grid, "GET", "/api/v1/segments", None);
    assert!(
        segs.contains("\"keepalive_controller\":\"local\""),
        "{segs}"
    );
    let (status, body) = support::try_http_with(
        &node.admin,
        "POST",
        "/api/actors/kill?path=node/site",
        &[("x-gridvisor-confirm", "kill")],
        None,
    )
    .unwrap();
    assert!(
        status == 403 && body.contains("actor_kill_disabled"),
        "{body}"
    );
    let (_, audit) = support::http(&node.grid, "GET", "/api/v1/audit", None);
    assert!(audit.contains("\"identity\":\"local\""), "{audit}");
}

/// The operations of docs/grid-api.openapi.yaml: (path, method, `x-gridvisor-role`).
fn documented_operations() -> Vec<(String, String, Option<String>)> {
    // A real YAML reader (PyYAML, from the tests' own venv): a document that only looks
    // right line by line is refused here too.
    const READ: &str = "import json, sys, yaml\n\
        doc = yaml.safe_load(open(sys.argv[1]))\n\
        print(json.dumps([[p, m.upper(), op.get('x-gridvisor-role')]\n\
            for p, ops in doc['paths'].items() for m, op in ops.items()\n\
            if m in ('get', 'post', 'put', 'delete')]))\n";
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grid-api.openapi.yaml");
    let out = Command::new(gridvisor_testkit::python())
        .args(["-c", READ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} is not YAML: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_openapi_document_names_each_operations_role_as_the_node_enforces_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    support::make_certs(&pki, &["api"]);
    let tokens = dir.path().join("tokens.txt");
    let token_of = |role: &str| token(&tokens, &format!("{role}-1"), role);
    let (controller, operator, admin) = (
        token_of("controller"),
        token_of("operator"),
        token_of("admin"),
    );
    let node = Node::start(
        &topology(dir.path(), &tls_api(&pki, &tokens, false)),
        &dir.path().join("data"),
        &[],
    );
    let tls = client(&pki, None);
    let ops = documented_operations();
    assert_eq!(ops.len(), 18, "{ops:?}");
    for (path, method, role) in ops {
        let path = path
            .replace("{id}", "tx")
            .replace("{vehicle}", "ev-none")
            .replace("{type}", "ISO14443")
            .replace("{value}", "none");
        let body = if path.ends_with("dispatch") {
            DISPATCH
        } else {
            ""
        };
        let call = |t: Option<&str>| https(&tls, &node.grid, &method, &path, t, &[], body);
        let (with, without) = match role.as_deref() {
            None => (None, None),
            Some("controller") => (Some(&controller), Some(&operator)),
            Some("operator") => (Some(&operator), Some(&controller)),
            Some("admin") => (Some(&admin), Some(&operator)),
            // Either role reads it: each one is tried, and no credential is refused.
            Some("operator, controller") => {
                for t in [&operator, &controller] {
                    let (status, raw) = call(Some(t));
                    assert!(![401, 403].contains(&status), "{method} {path}: {raw}");
                }
                assert_eq!(call(None).0, 401, "{method} {path} without a credential");
                (Some(&operator), None)
            }
            Some(other) => panic!("{path}: unknown role {other}"),
        };
        let (status, raw) = call(with.map(String::as_str));
        assert!(
            ![401, 403].contains(&status) && !raw.contains("no such endpoint"),
            "{method} {path} as {role:?}: {raw}"
        );
        if let Some(t) = without {
            let (status, raw) = call(Some(t));
            assert_eq!(status, 403, "{method} {path} without {role:?}: {raw}");
            assert_eq!(call(None).0, 401, "{method} {path} without a credential");
        }
    }
}

#[test]
fn the_systemd_example_serves_its_apis_with_tls_and_authentication() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/site.toml");
    let site = gridvisor_actors::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let tls = site.api.tls.expect("[api.tls]");
    assert!(tls.cert.starts_with("/etc/gridvisor/") && tls.client_ca.is_some());
    assert!(site
        .api
        .tokens
        .is_some_and(|t| t.starts_with("/etc/gridvisor/")));
    assert!(!site.api.actor_kill);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_forwarded_command_is_audited_on_the_other_node_as_its_original_caller() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("certs");
    support::make_certs(&pki, &["node-a", "node-b", "api"]);
    let tokens = dir.path().join("tokens.txt");
    let (controller, operator) = (
        token(&tokens, "scada-1", "controller"),
        token(&tokens, "ops", "operator"),
    );
    let site = topology(dir.path(), &tls_api(&pki, &tokens, false));
    let mut file = String::from(
        "cookie_file = \"certs/cookie\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{node}.pem\"\nkey = \"certs/{node}-key.pem\"\n",
    );
    let mut apis = BTreeMap::new();
    for name in ["node-a", "node-b"] {
        let (grid, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        file.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\ncluster = \"127.0.0.1:{}\"\ngrid = \"{grid}\"\nadmin = \"{admin}\"\n",
            free_port()
        ));
        apis.insert(name, (grid, admin));
    }
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, file).unwrap();
    let _nodes: Vec<support::Killed> = ["node-a", "node-b"]
        .iter()
        .map(|name| {
            let child = gridvisor()
                .args(["run", "--config"])
                .arg(&site)
                .arg("--cluster")
                .arg(&cluster)
                .args(["--node", name, "--data"])
                .arg(dir.path().join(format!("data-{name}")))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            support::Killed(child)
        })
        .collect();
    let tls = client(&pki, None);
    let deadline = Instant::now() + LIMIT;
    for (_, admin) in apis.values() {
        // `/api/ready` needs no credential (the probes).
        while try_https(&tls, admin, "GET", "/api/ready", None, &[], "")
            .map(|r| r.0)
            .ok()
            != Some(200)
        {
            assert!(Instant::now() < deadline, "{admin} never ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (grid_a, grid_b) = (&apis["node-a"].0, &apis["node-b"].0);
    assert_eq!(
        https(
            &tls,
            grid_a,
            "POST",
            "/api/v1/keepalive",
            Some(&controller),
            &[],
            ""
        )
        .0,
        204
    );
    let (status, raw) = https(
        &tls,
        grid_b,
        "GET",
        "/api/v1/audit",
        Some(&operator),
        &[],
        "",
    );
    assert_eq!(status, 200, "{raw}");
    let records = json_body(&raw);
    let forwarded = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request"] == "POST /api/v1/keepalive")
        .unwrap_or_else(|| panic!("node-b has no keep-alive record: {records:#}"));
    assert_eq!(
        (
            &forwarded["identity"],
            &forwarded["forwarded_by"],
            &forwarded["status"]
        ),
        (
            &Value::from("scada-1"),
            &Value::from("node-a"),
            &Value::from(204)
        ),
        "{forwarded}"
    );
    let (_, raw) = https(
        &tls,
        grid_b,
        "GET",
        "/api/v1/segments",
        Some(&operator),
        &[],
        "",
    );
    assert_eq!(
        json_body(&raw)[0]["keepalive_controller"],
        "scada-1",
        "{raw}"
    );
    // A node answers another's forwarded call only over the cluster link: a client cannot
    // claim to be one.
    assert_eq!(
        https(
            &tls,
            grid_b,
            "POST",
            "/api/v1/keepalive",
            None,
            &[("x-gridvisor-forwarded", "node-a")],
            ""
        )
        .0,
        401
    );
}
