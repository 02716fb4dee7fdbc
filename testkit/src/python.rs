//! The tests' own Python: a virtual environment made once from the pinned requirements.
//!
//! The interop tests run independent implementations (PyPI `ocpp`, pymodbus, pysunspec2,
//! PyYAML) as child processes. They run in a venv made from `requirements.txt` alone, never in
//! the machine's site-packages, so a requirement missing from the file fails everywhere, not
//! only on machines that happen to lack the package.
//!
//! The venv is `<target>/py-peers` (`GRIDVISOR_PY_PEERS` moves it). Test binaries and their
//! threads run at once, so creation holds an exclusive lock on `<venv>.lock`; a stamp file in
//! the venv holds the requirements it was made from, and a venv whose stamp differs (or that
//! a crash left half made) is made again from nothing. `GRIDVISOR_PYTHON` names an
//! interpreter to use instead, as is.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// An interpreter to use instead of the venv's.
const OVERRIDE_ENV: &str = "GRIDVISOR_PYTHON";
/// Where to make the venv instead of `<target>/py-peers`.
const LOCATION_ENV: &str = "GRIDVISOR_PY_PEERS";
/// The interpreter the venv is made with.
const BASE_PYTHON: &str = "python3";
/// pip's per-connection timeout, seconds (pip's own default is 15).
const PIP_TIMEOUT_S: &str = "60";
/// pip's retries of a failed download.
const PIP_RETRIES: &str = "5";
/// The stamp file, inside the venv, written last.
const STAMP: &str = "gridvisor-requirements.txt";

static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The pinned requirements of the Python peers.
pub fn requirements_file() -> PathBuf {
    crate::workspace_root().join("transports/tests/py/requirements.txt")
}

/// The Python interpreter for the tests' peers: `GRIDVISOR_PYTHON`, else the venv's (made on
/// first use). Panics, saying what is missing, when the venv cannot be made: python3 with its
/// venv module is a requirement of the test suite, not an optional peer.
pub fn python() -> PathBuf {
    let made = PYTHON.get_or_init(|| match std::env::var_os(OVERRIDE_ENV) {
        Some(p) => Ok(PathBuf::from(p)),
        None => provision(&venv_dir()),
    });
    match made {
        Ok(p) => p.clone(),
        Err(e) => panic!("the tests' Python peers: {e}"),
    }
}

fn venv_dir() -> PathBuf {
    std::env::var_os(LOCATION_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::target_dir().join("py-peers"))
}

/// The venv at `dir`, made from the requirements unless its stamp says it already is.
fn provision(dir: &Path) -> Result<PathBuf, String> {
    let reqs_path = requirements_file();
    let reqs = std::fs::read_to_string(&reqs_path)
        .map_err(|e| format!("cannot read {}: {e}", reqs_path.display()))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let lock_path = dir.with_extension("lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    let python = dir.join("bin").join("python");
    let stamp = dir.join(STAMP);
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == reqs) {
        return Ok(python);
    }
    say(&format!(
        "making the tests' Python peers: {} from {} (once; GRIDVISOR_PYTHON overrides)",
        dir.display(),
        reqs_path.display()
    ));
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    }
    run(Command::new(BASE_PYTHON).args(["-m", "venv"]).arg(dir))
        .map_err(|e| format!("{e} (install python3 with its venv module)"))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args([
            "--no-input",
            "--timeout",
            PIP_TIMEOUT_S,
            "--retries",
            PIP_RETRIES,
        ])
        .arg("-r")
        .arg(&reqs_path))?;
    std::fs::write(&stamp, &reqs).map_err(|e| format!("{}: {e}", stamp.display()))?;
    say(&format!(
        "made the tests' Python peers in {}",
        dir.display()
    ));
    Ok(python)
}

/// A line on the process's stderr itself, past the test harness's capture: provisioning is
/// news for whoever watches the run, whichever test happened to trigger it.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs `cmd` to its end; an error names the command and holds its stderr.
fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}
