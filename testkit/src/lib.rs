//! What gridvisor's tests need from the machine, in one place.
//!
//! - [`python`]: the interpreter of the tests' own virtual environment, made once under
//!   `target/py-peers` from the pinned `transports/tests/py/requirements.txt` (the independent
//!   OCPP, Modbus and SunSpec peers the interop tests run against). `GRIDVISOR_PYTHON`
//!   overrides it; `GRIDVISOR_PY_PEERS` moves it.
//! - [`tool`] and [`probe`]: a system tool (Chromium, mosquitto, promtool, `ip netns`, ...)
//!   found, or the test skipped, saying why. `GRIDVISOR_REQUIRE_<NAME>=1` (or
//!   `GRIDVISOR_REQUIRE_ALL=1`) turns that skip into a failure; CI sets them.
//! - [`net`]: network namespaces for tests of several hosts on one machine.
//! - [`skips`]: every skip of one `cargo test` run is written to a file under `target/`, and a
//!   test binary that skipped something prints, as it exits, one line listing every skip of
//!   the run so far: the last such line of a run lists them all.
//!
//! ```no_run
//! use gridvisor_testkit::{tool, Requirement};
//!
//! const MOSQUITTO: Requirement = Requirement {
//!     what: "mosquitto (the MQTT broker)",
//!     env: "GRIDVISOR_REQUIRE_MOSQUITTO",
//!     install: "apt-get install mosquitto",
//! };
//! let Some(broker) = tool(&MOSQUITTO, &["mosquitto"]) else {
//!     return; // skipped, and said so
//! };
//! println!("{}", broker.display());
//! ```

pub mod net;
mod python;
pub mod skips;
mod tools;

pub use python::{python, requirements_file};
pub use tools::{find_executable, needs, probe, tool, Requirement};

use std::path::{Path, PathBuf};

/// The workspace's root (this crate lives in `<root>/testkit`).
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The cargo target directory the running test binary was built into: the binary lives in
/// `<target>/<profile>/deps/`; otherwise `CARGO_TARGET_DIR`, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(Path::to_path_buf))?
    });
    from_exe
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| workspace_root().join("target"))
}
