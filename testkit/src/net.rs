//! Network namespaces for tests that need several hosts on one machine (as root).

use std::process::Command;

/// Runs a command to its end and fails the test, naming it and its stderr, if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this process can make network namespaces (`ip netns add` works: iproute2 and
/// root); the reason when not. The probe namespace carries the pid and is removed.
pub fn netns_available() -> Result<(), String> {
    let probe = format!("gv-probe-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .map_err(|e| format!("no `ip`: {e}"))?;
    if !ok.status.success() {
        return Err(String::from_utf8_lossy(&ok.stderr).trim().to_owned());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    Ok(())
}
