//! System tools: found by name, or skipped with the reason, or required.

use std::path::PathBuf;

use crate::skips;

/// Directories searched after `PATH`: daemons such as mosquitto live in sbin, which a
/// non-root `PATH` often leaves out.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// Something a group of tests needs from the machine.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// What it is, for people: `"Chromium (the live view's browser test)"`.
    pub what: &'static str,
    /// The variable that makes its absence a failure when set to `1`:
    /// `"GRIDVISOR_REQUIRE_CHROMIUM"`.
    pub env: &'static str,
    /// How to get it: `"apt-get install chromium"`.
    pub install: &'static str,
}

impl Requirement {
    /// Whether this run must fail instead of skipping: `<env>=1` or `GRIDVISOR_REQUIRE_ALL=1`.
    pub fn required(&self) -> bool {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        set(self.env) || set(skips::REQUIRE_ALL)
    }
}

/// The first of `names` found on `PATH` or in the sbin directories.
pub fn find_executable(names: &[&str]) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{} not found on PATH or in sbin", names.join(" / ")))
}

/// The tool's path, or `None` after recording a skip (or a panic when it is required).
pub fn tool(req: &Requirement, names: &[&str]) -> Option<PathBuf> {
    probe(req, find_executable(names))
}

/// The outcome of a probe for `req`: its value, or `None` after recording a skip that names
/// `why` (or a panic when `req` is required).
pub fn probe<T>(req: &Requirement, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            assert!(
                !req.required(),
                "{} is required here ({}=1 or {}=1) but unavailable: {why}; {}",
                req.what,
                req.env,
                skips::REQUIRE_ALL,
                req.install
            );
            skips::record(&format!("{} [{}]", req.what, req.install), &why);
            None
        }
    }
}

/// The machine's tools the suite uses, each with its variable (CI sets them all).
pub mod needs {
    use super::Requirement;

    /// Headless Chromium: the live view's browser test.
    pub const CHROMIUM: Requirement = Requirement {
        what: "chromium (the live view's browser test)",
        env: "GRIDVISOR_REQUIRE_CHROMIUM",
        install: "apt-get install chromium",
    };
    /// The mosquitto broker: the MQTT telemetry test.
    pub const MOSQUITTO: Requirement = Requirement {
        what: "mosquitto (the MQTT telemetry test's broker)",
        env: "GRIDVISOR_REQUIRE_MOSQUITTO",
        install: "apt-get install mosquitto",
    };
    /// Prometheus's promtool: /metrics, the alert rules and the scrape configs checked.
    pub const PROMTOOL: Requirement = Requirement {
        what: "promtool (Prometheus's checks of /metrics and deploy/)",
        env: "GRIDVISOR_REQUIRE_PROMTOOL",
        install: "apt-get install prometheus",
    };
    /// `ip netns` as root: the cluster partition test's network namespaces.
    pub const NETNS: Requirement = Requirement {
        what: "network namespaces (`ip netns` as root: the partition test)",
        env: "GRIDVISOR_REQUIRE_NETNS",
        install: "apt-get install iproute2, and run as root",
    };
    /// systemd-analyze: the unit files of deploy/ verified.
    pub const SYSTEMD: Requirement = Requirement {
        what: "systemd-analyze (deploy/'s unit files)",
        env: "GRIDVISOR_REQUIRE_SYSTEMD",
        install: "apt-get install systemd",
    };
    /// linuxptp's ptp4l in network namespaces: the real clock source's test.
    pub const PTP: Requirement = Requirement {
        what: "ptp4l in network namespaces (the PTP clock source's test)",
        env: "GRIDVISOR_REQUIRE_PTP",
        install: "apt-get install linuxptp iproute2, and run as root",
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_every_machine_has_and_names_what_it_did_not_find() {
        assert!(find_executable(&["no-such-tool-gv", "sh"]).is_ok());
        let err = find_executable(&["no-such-tool-gv", "nor-this-gv"]).unwrap_err();
        assert!(err.contains("no-such-tool-gv / nor-this-gv"), "{err}");
    }
}
