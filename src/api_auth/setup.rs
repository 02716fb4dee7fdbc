//! From the topology's `[api]` and the command line to what the servers run with: the binding
//! rule, the TLS configuration, the credentials, and the APIs' own metrics.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};

use gridvisor_actors::config::Api as ApiConfig;
use gridvisor_actors::runtime::Node;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use tokio_rustls::rustls;

use super::middleware::Mode;
use super::Credentials;

/// What the grid and admin servers run with.
pub struct ApiSecurity {
    /// How callers are identified.
    pub mode: Mode,
    /// TLS of both servers, if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--insecure-no-auth` was given and matters (no `[api.tls]`, an address off loopback).
    pub insecure: bool,
}

/// The binding rule: without authentication, both APIs on loopback, unless
/// `insecure_no_auth`. The error names the address and the fixes.
pub fn bind_rule(
    authenticated: bool,
    addrs: &[(&str, SocketAddr)],
    insecure_no_auth: bool,
) -> Result<bool, String> {
    if authenticated {
        return Ok(false);
    }
    let off_loopback = |a: &SocketAddr| !a.ip().to_canonical().is_loopback();
    let Some((what, addr)) = addrs.iter().find(|(_, a)| off_loopback(a)) else {
        return Ok(false);
    };
    if insecure_no_auth {
        return Ok(true);
    }
    Err(format!(
        "refusing to serve the {what} on {addr}, not a loopback address, without authentication: \
         anyone who reaches it could command the site. Add [api.tls] (cert, key) with `tokens` \
         (make one with `gridvisor token`) or `client_ca` to the topology, bind it to 127.0.0.1, \
         or run with --insecure-no-auth to accept the risk"
    ))
}

/// Read `[api]`'s files and apply the binding rule.
pub fn setup(
    api: &ApiConfig,
    addrs: &[(&str, SocketAddr)],
    insecure_no_auth: bool,
) -> Result<ApiSecurity, String> {
    let insecure = bind_rule(api.tls.is_some(), addrs, insecure_no_auth)?;
    let Some(tls) = &api.tls else {
        return Ok(ApiSecurity {
            mode: Mode::Open,
            tls: None,
            insecure,
        });
    };
    let credentials = match &api.tokens {
        None => Credentials::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("[api] tokens: cannot read {}: {e}", path.display()))?;
            Credentials::parse(&path.display().to_string(), &text)?
        }
    };
    Ok(ApiSecurity {
        mode: Mode::Enforced(Arc::new(credentials)),
        tls: Some(super::serve::tls_config(tls)?),
        insecure,
    })
}

/// The APIs' metrics, read at each scrape: `gridvisor_api_insecure_no_auth` (1 when the node
/// serves off loopback without authentication) and `gridvisor_keepalive_controller_info
/// {identity}` (1 for the controller whose keep-alive is current).
pub struct ApiMetrics {
    insecure: bool,
    node: OnceLock<Weak<Node>>,
    descs: Vec<Desc>,
}

impl ApiMetrics {
    /// Register them in `registry`; [`ApiMetrics::set_node`] once the node runs.
    pub fn register(
        registry: &prometheus::Registry,
        insecure: bool,
    ) -> Result<Arc<ApiMetrics>, String> {
        let descs = vec![
            Desc::new(
                "gridvisor_api_insecure_no_auth".into(),
                INSECURE_HELP.into(),
                vec![],
                Default::default(),
            ),
            Desc::new(
                "gridvisor_keepalive_controller_info".into(),
                CONTROLLER_HELP.into(),
                vec!["identity".into()],
                Default::default(),
            ),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
        let m = Arc::new(ApiMetrics {
            insecure,
            node: OnceLock::new(),
            descs,
        });
        registry
            .register(Box::new(Shared(m.clone())))
            .map_err(|e| e.to_string())?;
        Ok(m)
    }

    /// The node whose keep-alive controller the metric names.
    pub fn set_node(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }
}

const INSECURE_HELP: &str =
    "1: the APIs serve off loopback without authentication (--insecure-no-auth)";
const CONTROLLER_HELP: &str = "The grid controller whose keep-alive is current (1), by identity";

struct Shared(Arc<ApiMetrics>);

impl Collector for Shared {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        if let Ok(g) = prometheus::IntGauge::new("gridvisor_api_insecure_no_auth", INSECURE_HELP) {
            g.set(i64::from(self.0.insecure));
            out.extend(g.collect());
        }
        let controller = self
            .0
            .node
            .get()
            .and_then(Weak::upgrade)
            .and_then(|n| n.keepalive_controller());
        if let Some(who) = controller {
            let opts =
                prometheus::Opts::new("gridvisor_keepalive_controller_info", CONTROLLER_HELP);
            if let Ok(g) = prometheus::IntGaugeVec::new(opts, &["identity"]) {
                g.with_label_values(&[who.as_str()]).set(1);
                out.extend(g.collect());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::bind_rule;

    #[test]
    fn off_loopback_needs_authentication_or_the_flag() {
        let lo = [
            ("grid API", "127.0.0.1:9090".parse().unwrap()),
            ("admin API", "[::1]:9464".parse().unwrap()),
        ];
        assert_eq!(bind_rule(false, &lo, false), Ok(false));
        let open = [
            ("grid API", "127.0.0.1:9090".parse().unwrap()),
            ("admin API", "0.0.0.0:9464".parse().unwrap()),
        ];
        let e = bind_rule(false, &open, false).unwrap_err();
        assert!(
            e.contains("admin API on 0.0.0.0:9464")
                && e.contains("--insecure-no-auth")
                && e.contains("[api.tls]"),
            "{e}"
        );
        assert_eq!(bind_rule(false, &open, true), Ok(true));
        assert_eq!(bind_rule(true, &open, false), Ok(false));
    }
}
