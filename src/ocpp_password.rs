//! `gridvisor ocpp-password --file FILE --station ID [--generate]`: adds a charge point's
//! password to a credentials file (`[ocpp] passwords`), or rotates it.
//!
//! The password comes from stdin (its first line), or with `--generate` from the system's
//! random source ([`credentials::generate_password`]), printed once on stdout and nowhere
//! else. The file holds only the salted PBKDF2 hash; it is rewritten atomically (temporary
//! file, mode 0600, rename), so a node reading it sees the old file or the new one. A running
//! node reads the file when its CSMS starts: restart it to apply a rotation.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use gridvisor_transports::ocpp::credentials::{self, CredentialsFile};

use crate::stdout::outln;

/// Longest line read from stdin for a password (the password's own limit is checked after).
const MAX_STDIN_LINE_BYTES: u64 = 1024;

/// The arguments of `gridvisor ocpp-password`.
#[derive(clap::Args)]
pub struct Args {
    /// The credentials file (created if missing).
    #[arg(long)]
    file: PathBuf,
    /// The charge point id (as in `/ocpp/{id}` and the topology).
    #[arg(long)]
    station: String,
    /// Generate a strong random password and print it once, instead of reading stdin.
    #[arg(long)]
    generate: bool,
    /// PBKDF2-HMAC-SHA256 rounds.
    #[arg(long, default_value_t = credentials::DEFAULT_ITERATIONS)]
    iterations: u32,
}

/// Runs the command: 0 done, 1 an error (named on stderr).
pub fn run(args: Args) -> ExitCode {
    match set(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gridvisor ocpp-password: {e}");
            ExitCode::FAILURE
        }
    }
}

fn set(args: &Args) -> Result<(), String> {
    let mut file = if args.file.exists() {
        CredentialsFile::load(&args.file).map_err(|e| e.to_string())?
    } else {
        CredentialsFile::default()
    };
    let password = if args.generate {
        credentials::generate_password()?
    } else {
        read_stdin()?
    };
    credentials::check_new_password(password.as_bytes())?;
    let rotated = file.contains(&args.station);
    file.set(&args.station, password.as_bytes(), args.iterations)?;
    file.write_atomic(&args.file)
        .map_err(|e| format!("{}: {e}", args.file.display()))?;
    if args.generate {
        outln!("{password}");
    }
    let what = if rotated { "rotated" } else { "added" };
    eprintln!(
        "{what} the password of {:?} in {} ({} stations); a running node applies it when its CSMS restarts",
        args.station,
        args.file.display(),
        file.len()
    );
    Ok(())
}

/// The first line of stdin, without its line end.
fn read_stdin() -> Result<String, String> {
    use std::io::Read as _;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_LINE_BYTES)
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err("no password on stdin (give one line, or use --generate)".to_owned());
    }
    Ok(password)
}
