//! `gridvisor ocpp-password` as an operator runs it: a generated password printed once, a
//! chosen one from stdin, a rotation, the file's mode, and errors that name what is wrong.
//! The written file is then checked with the CSMS's own verifier.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use gridvisor_transports::ocpp::auth::Authenticator;
use gridvisor_transports::ocpp::credentials::{Credentials, CredentialsFile, MIN_ITERATIONS};

fn ocpp_password(file: &std::path::Path, station: &str, extra: &[&str], stdin: &str) -> Output {
    let iterations = MIN_ITERATIONS.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .arg("ocpp-password")
        .arg("--file")
        .arg(file)
        .args(["--station", station, "--iterations", &iterations])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn verifier(file: &std::path::Path) -> Credentials {
    Credentials::new(CredentialsFile::load(file).unwrap()).unwrap()
}

#[test]
fn adds_generates_and_rotates_station_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stations.cred");

    let chosen = "a-chosen-password-for-cp1";
    let out = ocpp_password(&file, "CP-1", &[], &format!("{chosen}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "a chosen password is not echoed");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(chosen), "the file holds no password");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let out = ocpp_password(&file, "CP-2", &["--generate"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(generated.len(), 32, "{generated:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&generated));

    let creds = verifier(&file);
    assert!(creds.verify("CP-1", chosen.as_bytes()));
    assert!(creds.verify("CP-2", generated.as_bytes()));
    assert!(!creds.verify("CP-2", chosen.as_bytes()));

    // Rotation: the new password works, the old one no longer, CP-2 untouched.
    let out = ocpp_password(&file, "CP-1", &[], "the-rotated-password-cp1\r\n");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rotated"));
    let creds = verifier(&file);
    assert!(creds.verify("CP-1", b"the-rotated-password-cp1"));
    assert!(!creds.verify("CP-1", chosen.as_bytes()));
    assert!(creds.verify("CP-2", generated.as_bytes()));
    assert_eq!(CredentialsFile::load(&file).unwrap().len(), 2);
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stations.cred");
    let out = ocpp_password(&file, "CP-1", &["--generate"], "");
    assert!(out.status.success());
    let before = std::fs::read_to_string(&file).unwrap();

    for (station, stdin, expected) in [
        ("CP-1", "short\n", "at least 16 bytes"),
        ("CP-1", "", "no password on stdin"),
        (
            "bad:id",
            "a-long-enough-password\n",
            "station id \"bad:id\"",
        ),
    ] {
        let out = ocpp_password(&file, station, &[], stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    // A broken file is named with its line, and left alone.
    std::fs::write(&file, format!("{before}CP-9:md5:1:x:y\n")).unwrap();
    let out = ocpp_password(&file, "CP-1", &[], "a-long-enough-password\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = before.lines().count() + 1;
    assert!(
        !out.status.success() && stderr.contains(&format!("stations.cred:{line}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("algorithm"), "{stderr}");
}
