//! deploy/ for a three-node cluster: the systemd unit, the Kubernetes manifests and the
//! Prometheus config for Kubernetes agree with each other and with the binary. No cluster runs.
//!
//! The manifests are read by a small reader of the block YAML they are written in (no YAML
//! crate in the main package). Every document is also parsed by PyYAML (in the tests' own
//! venv, gridvisor-testkit) and must read the same. promtool (Debian's `prometheus` package)
//! and systemd-analyze are skipped with a note when missing, unless
//! GRIDVISOR_REQUIRE_PROMTOOL=1 and GRIDVISOR_REQUIRE_SYSTEMD=1 make them required.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use gridvisor_testkit::{needs, Requirement};
use serde_json::{json, Map, Value};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn k8s(file: &str) -> PathBuf {
    root().join("deploy/kubernetes").join(file)
}

/// A tool of the machine, or None (with a note) when it is not installed and `require` is not
/// set in the environment.
fn tool(name: &str, need: &Requirement) -> Option<Command> {
    gridvisor_testkit::tool(need, &[name]).map(Command::new)
}

// ---------------------------------------------------------------------------------------------
// A reader of the YAML subset deploy/ is written in: block mappings and sequences, plain and
// quoted scalars, one-line flow sequences and mappings, comments, `---`. Anything else (block
// scalars, anchors, multi-line flow) is an error, so a file that grows beyond it fails loudly.

struct Line {
    no: usize,
    indent: usize,
    text: String,
}

fn strip_comment(s: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &s[..i],
            _ => {}
        }
        prev = c;
    }
    s
}

/// The documents of a YAML file.
fn yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.contains('\t') {
            return Err(format!("line {}: a tab", i + 1));
        }
        if raw == "---" {
            if !lines.is_empty() {
                docs.push(std::mem::take(&mut lines));
            }
            continue;
        }
        let body = strip_comment(raw).trim_end();
        if body.trim().is_empty() {
            continue;
        }
        let indent = body.len() - body.trim_start().len();
        lines.push(Line {
            no: i + 1,
            indent,
            text: body.trim_start().to_string(),
        });
    }
    if !lines.is_empty() {
        docs.push(lines);
    }
    docs.into_iter()
        .map(|mut lines| {
            let mut at = 0;
            let indent = lines[0].indent;
            let v = block(&mut lines, &mut at, indent)?;
            match lines.get(at) {
                Some(l) => Err(format!("line {}: unexpected `{}`", l.no, l.text)),
                None => Ok(v),
            }
        })
        .collect()
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

fn block(lines: &mut [Line], at: &mut usize, indent: usize) -> Result<Value, String> {
    if is_item(&lines[*at].text) {
        sequence(lines, at, indent)
    } else {
        mapping(lines, at, indent)
    }
}

fn sequence(lines: &mut [Line], at: &mut usize, indent: usize) -> Result<Value, String> {
    let mut items = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent && is_item(&lines[*at].text) {
        let rest = lines[*at].text[1..].to_string();
        let item = rest.trim_start();
        if item.is_empty() {
            *at += 1;
            match lines.get(*at) {
                Some(l) if l.indent > indent => {
                    let i = l.indent;
                    items.push(block(lines, at, i)?)
                }
                _ => items.push(Value::Null),
            }
        } else if key_of(item).is_some() && !item.starts_with(['[', '{', '"', '\'']) {
            // `- key: value` opens a mapping at the column of `key`.
            let column = indent + 1 + (rest.len() - item.len());
            lines[*at].indent = column;
            lines[*at].text = item.to_string();
            items.push(mapping(lines, at, column)?);
        } else {
            items.push(scalar(item, lines[*at].no)?);
            *at += 1;
        }
    }
    Ok(Value::Array(items))
}

/// `key: value` or `key:` -> (key, value text).
fn key_of(text: &str) -> Option<(String, &str)> {
    let (key, rest) = if let Some(q) = text.strip_prefix('"') {
        let end = q.find('"')?;
        (q[..end].to_string(), &q[end + 1..])
    } else {
        let end = text
            .find(": ")
            .or_else(|| text.ends_with(':').then(|| text.len() - 1))?;
        (text[..end].to_string(), &text[end..])
    };
    let value = rest.strip_prefix(':')?;
    (value.is_empty() || value.starts_with(' ')).then(|| (key, value.trim()))
}

fn mapping(lines: &mut [Line], at: &mut usize, indent: usize) -> Result<Value, String> {
    let mut map = Map::new();
    while *at < lines.len() && lines[*at].indent == indent && !is_item(&lines[*at].text) {
        let no = lines[*at].no;
        let text = lines[*at].text.clone();
        let (key, value) = key_of(&text).ok_or_else(|| format!("line {no}: not `key: value`"))?;
        *at += 1;
        let v = if !value.is_empty() {
            scalar(value, no)?
        } else {
            match lines.get(*at) {
                Some(l) if l.indent > indent => {
                    let i = l.indent;
                    block(lines, at, i)?
                }
                Some(l) if l.indent == indent && is_item(&l.text) => sequence(lines, at, indent)?,
                _ => Value::Null,
            }
        };
        if map.insert(key.clone(), v).is_some() {
            return Err(format!("line {no}: duplicate key {key}"));
        }
    }
    if *at < lines.len() && lines[*at].indent > indent {
        return Err(format!("line {}: bad indentation", lines[*at].no));
    }
    Ok(Value::Object(map))
}

/// Splits a flow collection's inside at top-level commas.
fn split_flow(s: &str) -> Vec<&str> {
    let (mut depth, mut quote, mut start, mut out) = (0, None, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('[' | '{', None) => depth += 1,
            (']' | '}', None) => depth -= 1,
            (',', None) if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = s[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

fn scalar(s: &str, no: usize) -> Result<Value, String> {
    let err = |what: &str| {
        Err(format!(
            "line {no}: {what} `{s}` (outside this reader's YAML)"
        ))
    };
    if let Some(inner) = s.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return err("an unclosed flow sequence");
        };
        return split_flow(inner)
            .into_iter()
            .map(|x| scalar(x, no))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if let Some(inner) = s.strip_prefix('{') {
        let Some(inner) = inner.strip_suffix('}') else {
            return err("an unclosed flow mapping");
        };
        let mut map = Map::new();
        for entry in split_flow(inner) {
            let Some((k, v)) = key_of(entry) else {
                return err("a flow mapping entry");
            };
            map.insert(k, scalar(v, no)?);
        }
        return Ok(Value::Object(map));
    }
    if let Some(q) = s.strip_prefix('"') {
        let Some(body) = q.strip_suffix('"') else {
            return err("a multi-line string");
        };
        return Ok(Value::String(
            body.replace("\\\"", "\"").replace("\\\\", "\\"),
        ));
    }
    if let Some(q) = s.strip_prefix('\'') {
        let Some(body) = q.strip_suffix('\'') else {
            return err("a multi-line string");
        };
        return Ok(Value::String(body.replace("''", "'")));
    }
    if s.starts_with(['|', '>', '&', '*', '!', '@', '`']) {
        return err("a block scalar, anchor, alias or tag");
    }
    // YAML 1.1, as PyYAML and Kubernetes read it.
    match s {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "on" | "On" => return Ok(json!(true)),
        "false" | "False" | "FALSE" | "no" | "No" | "off" | "Off" => return Ok(json!(false)),
        "null" | "Null" | "NULL" | "~" => return Ok(Value::Null),
        _ => {}
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let sign = if s.starts_with('-') { -1 } else { 1 };
        let n = if digits.len() > 1 && digits.starts_with('0') {
            i64::from_str_radix(digits, 8).map_err(|e| format!("line {no}: {e}"))?
        } else {
            digits
                .parse::<i64>()
                .map_err(|e| format!("line {no}: {e}"))?
        };
        return Ok(json!(sign * n));
    }
    if s.contains('.') && !s.ends_with('.') {
        if let Ok(f) = s.parse::<f64>() {
            if s.bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
            {
                return Ok(json!(f));
            }
        }
    }
    Ok(Value::String(s.to_string()))
}

fn yaml_file(path: &Path) -> Vec<Value> {
    yaml_docs(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML file of deploy/kubernetes and the Kubernetes scrape config.
fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s(""))
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "deploy/kubernetes: {files:?}");
    files.push(root().join("deploy/prometheus/prometheus-kubernetes.yml"));
    files
}

#[test]
fn the_yaml_reader_reads_what_it_must() {
    let docs = yaml_docs(
        "a: 1 # c\nb:\n  - x\n  - name: y\n    port: 0440\n  -\n    z: 'q''s'\nc:\n- [a, \"b c\"]\nd: {k: v, n: 2}\n---\ne: yes\nf: \"#x\"\n",
    )
    .unwrap();
    assert_eq!(
        docs,
        vec![
            json!({"a": 1, "b": ["x", {"name": "y", "port": 288}, {"z": "q's"}],
                   "c": [["a", "b c"]], "d": {"k": "v", "n": 2}}),
            json!({"e": true, "f": "#x"}),
        ]
    );
    assert!(yaml_docs("a: |\n  text\n").is_err());
    assert!(yaml_docs("a:\n  b: 1\n   c: 2\n").is_err());
    assert!(yaml_docs("a: 1\na: 2\n").is_err());
}

/// PyYAML's reading of a file, as JSON (PyYAML is pinned in the tests' venv).
fn pyyaml(path: &Path) -> Vec<Value> {
    const SCRIPT: &str =
        "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let python = gridvisor_testkit::python();
    let out = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "PyYAML rejects {}:\n{stderr}",
        path.display()
    );
    serde_json::from_slice(&out.stdout).expect("PyYAML's JSON")
}

#[test]
fn every_yaml_document_parses_and_pyyaml_reads_it_the_same() {
    for path in yaml_files() {
        let ours = yaml_file(&path);
        assert!(!ours.is_empty(), "{}: no document", path.display());
        for doc in &ours {
            assert!(
                doc.is_object(),
                "{}: a document is not a mapping",
                path.display()
            );
        }
        let theirs = pyyaml(&path);
        assert_eq!(
            ours,
            theirs,
            "{}: read differently by PyYAML",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

struct Manifests {
    docs: Vec<Value>,
}

impl Manifests {
    fn load() -> Manifests {
        let kustomization = yaml_file(&k8s("kustomization.yaml")).remove(0);
        let mut docs = Vec::new();
        for r in kustomization["resources"].as_array().expect("resources") {
            docs.extend(yaml_file(&k8s(r.as_str().unwrap())));
        }
        docs.push(kustomization);
        Manifests { docs }
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .docs
            .iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} {name}");
        found[0]
    }

    fn kustomization(&self) -> &Value {
        self.docs.last().unwrap()
    }
}

fn cluster_toml() -> toml::Table {
    read(&k8s("cluster.toml"))
        .parse()
        .expect("deploy/kubernetes/cluster.toml is TOML")
}

/// host:port -> port
fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr}: no port"))
}

/// `--flag value` in an argument list.
fn flag<'a>(args: &'a [&str], name: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| *a == name)
        .unwrap_or_else(|| panic!("{name} missing from {args:?}"));
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{name} has no value"))
}

#[test]
fn the_statefulset_agrees_with_the_cluster_file_and_the_services() {
    let m = Manifests::load();
    let sts = m.one("StatefulSet", "gridvisor");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(labels["app"], "gridvisor");
    assert_eq!(spec["selector"]["matchLabels"], json!({"app": "gridvisor"}));
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let replicas = spec["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, 3);

    // The nodes of the cluster file are the pods, reached through the headless Service.
    let headless_name = spec["serviceName"].as_str().unwrap();
    let headless = m.one("Service", headless_name);
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(headless["spec"]["selector"], json!({"app": "gridvisor"}));
    let cluster = cluster_toml();
    let nodes = cluster["nodes"].as_array().expect("[[nodes]]");
    assert_eq!(nodes.len() as u64, replicas, "one [[nodes]] per replica");

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let port = |name: &str| -> u64 {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("{}-{i}", sts["metadata"]["name"].as_str().unwrap());
        assert_eq!(node["name"].as_str(), Some(name.as_str()));
        let addr = node["cluster"].as_str().unwrap();
        assert_eq!(addr, format!("{name}.{headless_name}:{}", port("cluster")));
        assert_eq!(
            node["bind"].as_str(),
            Some(&*format!("0.0.0.0:{}", port("cluster")))
        );
        assert_eq!(
            node["grid"].as_str(),
            Some(&*format!("0.0.0.0:{}", port("grid")))
        );
        assert_eq!(
            node["admin"].as_str(),
            Some(&*format!("0.0.0.0:{}", port("admin")))
        );
        assert_eq!(port_of(addr), 4697);
    }
    assert_eq!((port("grid"), port("admin")), (9090, 9464));

    // The Services point at the container's ports by name.
    let names: BTreeSet<&str> = ["cluster", "grid", "admin"].into();
    for p in headless["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(names.contains(target), "{target}");
        assert_eq!(p["port"].as_u64(), Some(port(target)));
    }
    assert_eq!(headless["spec"]["ports"].as_array().unwrap().len(), 3);
    let api = m.one("Service", "gridvisor-api");
    assert_eq!(api["spec"]["selector"], json!({"app": "gridvisor"}));
    assert_eq!(api["spec"]["ports"][0]["targetPort"], "grid");
    assert!(api["spec"].get("clusterIP").is_none_or(|v| v != "None"));

    // The flags: the files they name are where the volumes are mounted.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    assert_eq!(flag(&args, "--node"), "$(POD_NAME)");
    let pod_name = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("env POD_NAME");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| -> &Value {
        mounts
            .iter()
            .find(|v| v["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let volume = |name: &str| -> &Value {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let config_map = m.kustomization()["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "gridvisor-config")
        .expect("configMapGenerator gridvisor-config");
    let generated: BTreeSet<&str> = config_map["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for (flag_name, file) in [("--config", "site.toml"), ("--cluster", "cluster.toml")] {
        let m = mount(flag(&args, flag_name));
        assert_eq!(m["subPath"], file);
        assert_eq!(
            volume(m["name"].as_str().unwrap())["configMap"]["name"],
            "gridvisor-config"
        );
        assert!(generated.contains(file), "{file} not in the ConfigMap");
        assert!(k8s(file).is_file());
    }
    let data = mount(flag(&args, "--data"));
    let claims = spec["volumeClaimTemplates"].as_array().unwrap();
    assert!(claims.iter().any(|t| t["metadata"]["name"] == data["name"]));

    // The cookie lands in the mounted Secret gridvisor-cookie; the TLS files in the pod's own
    // certificate volume (cert-manager's CSI driver), the same paths in every pod.
    let cluster_dir = Path::new(flag(&args, "--cluster")).parent().unwrap();
    let mounted_dir = |volume_name: &str| -> &Path {
        let m = mounts
            .iter()
            .find(|v| v["name"] == volume_name)
            .unwrap_or_else(|| panic!("volume {volume_name} is not mounted"));
        assert_eq!(m["readOnly"], true, "{volume_name} is mounted writable");
        Path::new(m["mountPath"].as_str().unwrap())
    };
    assert_eq!(volume("cookie")["secret"]["secretName"], "gridvisor-cookie");
    let cookie = cluster_dir.join(cluster["cookie_file"].as_str().unwrap());
    assert_eq!(cookie.parent(), Some(mounted_dir("cookie")));
    let tls = cluster["tls"].as_table().expect("[tls]");
    for k in ["ca", "cert", "key"] {
        let f = tls[k].as_str().unwrap();
        assert!(
            !f.contains("{node}"),
            "[tls] {k}: the pod's volume has only its own files"
        );
        let at = cluster_dir.join(f);
        assert_eq!(at.parent(), Some(mounted_dir("tls")), "[tls] {k} = {f}");
    }
    pod_certificate(&m, pod, volume("tls"), headless_name, &tls["key"]);
    // The grid API's certificate and tokens: their own Secret, where site.toml says.
    assert_eq!(volume("api")["secret"]["secretName"], "gridvisor-api");
    assert_eq!(mounted_dir("api"), Path::new("/etc/gridvisor/api"));
    assert!(read(&k8s("site.toml")).contains("/etc/gridvisor/api/"));

    // Probes on the admin port.
    let ready = &c["readinessProbe"]["httpGet"];
    assert_eq!(
        (&ready["path"], &ready["port"], &ready["scheme"]),
        (&json!("/api/ready"), &json!("admin"), &json!("HTTPS"))
    );
    // Alive: the admin API answers its one page that needs no credential.
    let live = &c["livenessProbe"];
    assert_eq!(live["httpGet"]["path"], "/");
    assert_eq!(live["httpGet"]["port"], "admin");
    assert_eq!(live["httpGet"]["scheme"], "HTTPS");
    let site: toml::Table = read(&k8s("site.toml")).parse().unwrap();
    let api = site["api"]
        .as_table()
        .expect("site.toml [api]: the pods bind 0.0.0.0");
    assert_eq!(api["actor_kill"].as_bool(), Some(false));
    for f in [
        &api["tokens"],
        &site["api"]["tls"]["cert"],
        &site["api"]["tls"]["key"],
    ] {
        let f = Path::new(f.as_str().unwrap());
        assert_eq!(f.parent(), Some(mounted_dir("api")), "{}", f.display());
    }
    assert!(live["failureThreshold"].as_u64().unwrap() >= 3);

    // Hardening, resources, the stop.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);

    // The PDB lets one pod go: a majority of three stays.
    let pdb = m.one("PodDisruptionBudget", "gridvisor");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        json!({"app": "gridvisor"})
    );
    let max_unavailable = pdb["spec"]["maxUnavailable"].as_u64().unwrap();
    assert!(max_unavailable >= 1 && replicas - max_unavailable > replicas / 2);
}

/// The pod's certificate volume: cert-manager's CSI driver makes the key inside the pod's own
/// volume and has it signed by the CA Issuer for the pod's name, so no Secret and no other pod
/// holds it. The Issuer's CA Secret is mounted by no pod, and no volume is a Secret with keys.
fn pod_certificate(m: &Manifests, pod: &Value, tls: &Value, headless: &str, key: &toml::Value) {
    let csi = &tls["csi"];
    assert_eq!(csi["driver"], "csi.cert-manager.io");
    assert_eq!(csi["readOnly"], true);
    let attr = |k: &str| -> &str {
        csi["volumeAttributes"][format!("csi.cert-manager.io/{k}")]
            .as_str()
            .unwrap_or_else(|| panic!("no CSI attribute {k}"))
    };
    assert_eq!(attr("issuer-kind"), "Issuer");
    let issuer = m.one("Issuer", attr("issuer-name"));
    let ca_secret = issuer["spec"]["ca"]["secretName"]
        .as_str()
        .expect("a CA Issuer");
    // The certificate names the node (its CN and first DNS name, as NodeTls::load checks) and
    // the pod's DNS name under the headless Service; both TLS roles.
    assert_eq!(attr("common-name"), "${POD_NAME}");
    let dns: Vec<&str> = attr("dns-names").split(',').collect();
    assert_eq!(dns[0], "${POD_NAME}");
    assert!(
        dns.contains(&&*format!("${{POD_NAME}}.{headless}")),
        "{dns:?}"
    );
    let usages: Vec<&str> = attr("key-usages").split(',').collect();
    for u in ["server auth", "client auth", "digital signature"] {
        assert!(usages.contains(&u), "key-usages lack {u}: {usages:?}");
    }
    assert_eq!(attr("key-encoding"), "PKCS8");
    assert_eq!(
        key.as_str(),
        Some("tls/tls.key"),
        "the CSI driver's key file"
    );
    assert_eq!(
        attr("fs-group"),
        pod["securityContext"]["fsGroup"].to_string(),
        "the key readable by the pod's group"
    );
    for v in pod["volumes"].as_array().unwrap() {
        let secret = v["secret"]["secretName"].as_str().unwrap_or("");
        assert!(
            secret != ca_secret && secret != "gridvisor-certs",
            "volume {} mounts the Secret {secret}, which holds keys the pod must not have",
            v["name"]
        );
    }
}

#[test]
fn the_network_policy_lets_only_peers_prometheus_and_controllers_in() {
    let m = Manifests::load();
    let np = m.one("NetworkPolicy", "gridvisor");
    let sts = m.one("StatefulSet", "gridvisor");
    let spec = &np["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        json!({"app": "gridvisor"})
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let ports: BTreeSet<&str> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut covered = BTreeSet::new();
    let mut from_of = std::collections::BTreeMap::new();
    for rule in spec["ingress"].as_array().expect("ingress rules") {
        // A rule without `from` or `ports` would let anyone in, or onto every port.
        let from = rule["from"]
            .as_array()
            .expect("every rule names its sources");
        let rule_ports = rule["ports"]
            .as_array()
            .expect("every rule names its ports");
        assert_eq!(rule_ports.len(), 1, "one port per rule: {rule}");
        let port = rule_ports[0]["port"].as_str().expect("a named port");
        assert_eq!(rule_ports[0]["protocol"], "TCP");
        assert!(ports.contains(port), "{port} is not a container port");
        assert!(covered.insert(port), "{port} in two rules");
        assert_eq!(from.len(), 1, "one source per port: {rule}");
        assert!(from[0].get("ipBlock").is_none(), "{rule}");
        from_of.insert(port, from[0].clone());
    }
    assert_eq!(covered, ["admin", "cluster", "grid"].into());
    // The cluster port: the gridvisor pods of this namespace only.
    assert_eq!(
        from_of["cluster"],
        json!({"podSelector": {"matchLabels": {"app": "gridvisor"}}})
    );
    // /metrics: Prometheus, by namespace and pod label.
    let admin = &from_of["admin"];
    assert_eq!(
        admin["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(
        admin["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
    // The grid API: the controllers' namespace and pods (both selectors, so neither alone).
    let grid = &from_of["grid"];
    assert!(grid["namespaceSelector"]["matchLabels"]
        .as_object()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(
        grid["podSelector"]["matchLabels"]["gridvisor.io/role"],
        "grid-controller"
    );
    // The README names the labels an operator must set.
    let readme = read(&root().join("deploy/README.md"));
    for label in [
        "gridvisor.io/grid-controllers",
        "gridvisor.io/role",
        "app.kubernetes.io/name=prometheus",
    ] {
        assert!(
            readme.contains(label),
            "deploy/README.md does not name {label}"
        );
    }
}

#[test]
fn the_site_of_the_config_map_is_a_valid_topology() {
    let out = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .arg("check-config")
        .arg(k8s("site.toml"))
        .output()
        .expect("gridvisor check-config runs");
    assert!(
        out.status.success(),
        "deploy/kubernetes/site.toml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_finds_the_pods_admin_port_as_job_gridvisor() {
    let path = root().join("deploy/prometheus/prometheus-kubernetes.yml");
    let config = yaml_file(&path).remove(0);
    let sts = Manifests::load();
    let sts = sts.one("StatefulSet", "gridvisor");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];

    let jobs = config["scrape_configs"].as_array().unwrap();
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "gridvisor")
        .expect("job gridvisor");
    // The alert rules look for this job.
    assert!(read(&root().join("deploy/prometheus/alerts.yml")).contains("job=\"gridvisor\""));
    assert_eq!(config["rule_files"], json!(["alerts.yml"]));
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    let keep = |label: &str| -> String {
        job["relabel_configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["action"] == "keep" && r["source_labels"] == json!([label]))
            .unwrap_or_else(|| panic!("no keep on {label}"))["regex"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let app = sts["spec"]["template"]["metadata"]["labels"]["app"]
        .as_str()
        .unwrap();
    assert_eq!(keep("__meta_kubernetes_pod_label_app"), app);
    let port = keep("__meta_kubernetes_pod_container_port_name");
    let admin = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port.as_str())
        .expect("the kept port is a container port");
    assert_eq!(admin["containerPort"], 9464);
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], port.as_str());
}

#[test]
fn promtool_accepts_the_kubernetes_config() {
    let Some(_) = tool("promtool", &needs::PROMTOOL) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // promtool wants the token and CA files to exist: the Secret's mount point, here.
    let secret = "/etc/prometheus/secrets/gridvisor-token/";
    let text = read(&root().join("deploy/prometheus/prometheus-kubernetes.yml"));
    assert!(text.contains(secret), "the token and CA from a Secret");
    let text = text.replace(secret, &format!("{}/", dir.path().display()));
    std::fs::write(dir.path().join("token"), "a-token\n").unwrap();
    std::fs::write(dir.path().join("ca.crt"), "").unwrap();
    std::fs::copy(
        root().join("deploy/prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let check = |text: &str| {
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, text).unwrap();
        Command::new("promtool")
            .args(["check", "config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let mut out = check(&text);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() && said.contains("field kubernetes_sd_configs not found") {
        // Debian builds Prometheus without Kubernetes discovery: check the rest of the file
        // with the discovery swapped for a static target (the reader above checked its shape).
        eprintln!("this promtool has no Kubernetes discovery: checking the rest of the config");
        let mut swapped = String::new();
        let mut skipping = false;
        for line in text.lines() {
            if line.trim_start().starts_with("kubernetes_sd_configs:") {
                let indent = " ".repeat(line.len() - line.trim_start().len());
                swapped += &format!(
                    "{indent}static_configs:\n{indent}  - targets: [\"localhost:9464\"]\n"
                );
                skipping = true;
                continue;
            }
            if skipping && (line.trim().is_empty() || line.starts_with("      ")) {
                continue;
            }
            skipping = false;
            swapped += line;
            swapped.push('\n');
        }
        assert!(!swapped.contains("kubernetes_sd"), "{swapped}");
        out = check(&swapped);
    }
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

fn unit() -> String {
    read(&root().join("deploy/systemd/gridvisor@.service"))
}

/// The values of `key=` in a unit file, in order.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter(|l| !l.starts_with(['#', ';']))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

fn exec_start() -> Vec<String> {
    let unit = unit();
    let exec = directive(&unit, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    exec[0].split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_unit_runs_its_instance_as_a_cluster_node_with_only_flags_run_knows() {
    let exec = exec_start();
    let args: Vec<&str> = exec.iter().map(String::as_str).collect();
    assert_eq!(&args[..2], ["/usr/local/bin/gridvisor", "run"]);
    assert_eq!(flag(&args, "--node"), "%i");
    assert_eq!(flag(&args, "--config"), "/etc/gridvisor/site.toml");
    assert_eq!(flag(&args, "--cluster"), "/etc/gridvisor/cluster.toml");
    assert_eq!(flag(&args, "--data"), "/var/lib/gridvisor/%i");

    let help = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .args(["run", "--help"])
        .output()
        .expect("gridvisor run --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let known: BTreeSet<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            known.contains(a),
            "`gridvisor run` has no {a}; it knows {known:?}"
        );
    }
    // The same for the StatefulSet's arguments.
    let m = Manifests::load();
    let c = &m.one("StatefulSet", "gridvisor")["spec"]["template"]["spec"]["containers"][0];
    for a in c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
    {
        if a.starts_with("--") {
            assert!(
                known.contains(a),
                "`gridvisor run` has no {a} (statefulset.yaml)"
            );
        }
    }
}

#[test]
fn the_unit_is_hardened_restarts_and_runs_as_the_sysusers_user() {
    let unit = unit();
    let one = |key: &str| -> &str {
        let v = directive(&unit, key);
        assert_eq!(v.len(), 1, "{key}= once: {v:?}");
        v[0]
    };
    for (key, want) in [
        ("User", "gridvisor"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LimitNOFILE", "1048576"),
        ("Restart", "on-failure"),
        ("RestartSec", "1"),
        ("StateDirectory", "gridvisor/%i"),
        ("Wants", "network-online.target"),
        ("After", "network-online.target"),
    ] {
        assert_eq!(one(key), want, "{key}=");
    }
    assert!(directive(&unit, "DynamicUser").iter().all(|v| *v == "no"));
    assert!(one("StartLimitBurst").parse::<u32>().unwrap() >= 1);
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(
        stop >= 30,
        "TimeoutStopSec={stop}: the ordered stop needs time"
    );

    // The user comes from the sysusers.d file.
    let sysusers = read(&root().join("deploy/systemd/gridvisor.conf"));
    assert!(sysusers
        .lines()
        .any(|l| l.split_whitespace().take(2).eq(["u", "gridvisor"])));
}

#[test]
fn the_example_cluster_file_for_three_machines_is_complete() {
    let cluster: toml::Table = read(&root().join("deploy/systemd/cluster.toml"))
        .parse()
        .expect("deploy/systemd/cluster.toml is TOML");
    let names: Vec<&str> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            for key in ["cluster", "grid", "admin"] {
                port_of(n[key].as_str().unwrap());
            }
            n["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["node-a", "node-b", "node-c"]);
    let tls = cluster["tls"].as_table().unwrap();
    assert!(tls["cert"].as_str().unwrap().contains("{node}"));
    assert!(tls["key"].as_str().unwrap().contains("{node}"));
    assert!(cluster["cookie_file"].is_str());
    // The README's section names what the files name.
    let readme = read(&root().join("deploy/README.md"));
    assert!(readme.contains("## A three-node cluster"));
    for s in [
        "gridvisor@node-a",
        "gridvisor-cookie",
        "apply -k deploy/kubernetes",
    ] {
        assert!(readme.contains(s), "deploy/README.md does not mention {s}");
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(_) = tool("systemd-analyze", &needs::SYSTEMD) else {
        return;
    };
    // An instance of the template, with ExecStart pointing at a binary that exists here
    // (verify checks that it is executable).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gridvisor@node-a.service");
    std::fs::write(
        &file,
        unit().replace("/usr/local/bin/gridvisor", env!("CARGO_BIN_EXE_gridvisor")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}
