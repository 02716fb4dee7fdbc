//! One summary of what a test run skipped.
//!
//! `cargo test` runs each test binary as its own process, so no process sees the whole run.
//! A skip is appended to `<target>/test-skips/<run>.tsv`, where `<run>` names the process
//! that started the binaries (cargo: its pid and start time, so that a reused pid is another
//! run). A binary that skipped something prints, as it exits, one line with every skip of the
//! run so far; the binaries that cannot skip print nothing, so the last such line of a run
//! lists them all. `GRIDVISOR_REQUIRE_ALL=1` turns every skip into a failure instead.

use std::{
    fs::OpenOptions,
    io::Write,
    path::PathBuf,
    sync::{Mutex, Once},
};

/// Set to `1`: every requirement is required, and no test skips.
pub const REQUIRE_ALL: &str = "GRIDVISOR_REQUIRE_ALL";
/// The summary line's prefix, for people and for `grep`.
pub const SUMMARY_PREFIX: &str = "gridvisor tests skipped";

static AT_EXIT: Once = Once::new();
/// Serialises appends from this process's test threads.
static FILE_LOCK: Mutex<()> = Mutex::new(());

/// The file of this run's skips.
pub fn run_file() -> PathBuf {
    crate::target_dir()
        .join("test-skips")
        .join(format!("{}.tsv", run_key()))
}

/// The parent process (cargo, when run by `cargo test`): its pid and its start time in clock
/// ticks since boot (`/proc/<pid>/stat`, field 22), or 0 where there is no /proc.
fn run_key() -> String {
    let ppid = std::os::unix::process::parent_id();
    let started = std::fs::read_to_string(format!("/proc/{ppid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name (field 2) is in parentheses and may hold spaces: split after it.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(19).map(str::to_owned)
        })
        .unwrap_or_else(|| "0".into());
    format!("run-{ppid}-{started}")
}

/// Records that `what` was skipped because `why`, and says so now (in the test's output) and
/// in the summary when this binary exits.
pub fn record(what: &str, why: &str) {
    eprintln!("SKIPPED: {what}: {why}");
    let line = format!("{}\t{}\n", one_line(what), one_line(why));
    let path = run_file();
    let _guard = FILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| OpenOptions::new().create(true).append(true).open(&path))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot record the skip in {}: {e}", path.display());
    }
    AT_EXIT.call_once(|| {
        // SAFETY: `print_summary` is a plain `extern "C" fn()` that never unwinds (it catches
        // nothing and only writes to stderr, ignoring errors); atexit only stores the pointer.
        unsafe { atexit(print_summary) };
    });
}

/// Every skip of this run so far: each requirement once, in the order first seen, with the
/// distinct reasons given for it.
pub fn run_skips() -> Vec<(String, Vec<String>)> {
    group(&std::fs::read_to_string(run_file()).unwrap_or_default())
}

/// The lines `what\twhy` grouped by `what`, in the order first seen.
fn group(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (what, why) in text.lines().filter_map(|l| l.split_once('\t')) {
        let at = match out.iter().position(|(w, _)| w == what) {
            Some(at) => at,
            None => {
                out.push((what.to_owned(), Vec::new()));
                out.len() - 1
            }
        };
        if !out[at].1.iter().any(|w| w == why) {
            out[at].1.push(why.to_owned());
        }
    }
    out
}

/// The summary line: `gridvisor tests skipped 2: A: why | B: why, other why`.
pub fn summary() -> String {
    let skips = run_skips();
    let listed: Vec<String> = skips
        .iter()
        .map(|(what, whys)| format!("{what}: {}", whys.join(", ")))
        .collect();
    format!(
        "{SUMMARY_PREFIX} {}: {} [{REQUIRE_ALL}=1 makes a skip fail]",
        skips.len(),
        listed.join(" | ")
    )
}

fn one_line(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

extern "C" fn print_summary() {
    let _ = writeln!(std::io::stderr(), "\n{}", summary());
}

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_group_by_requirement_in_order_with_distinct_reasons() {
        let text = "b\tnot found\na\tno root\nb\tnot found\nb\ttoo old\nnot a record\n";
        assert_eq!(
            group(text),
            vec![
                (
                    "b".to_owned(),
                    vec!["not found".to_owned(), "too old".to_owned()]
                ),
                ("a".to_owned(), vec!["no root".to_owned()]),
            ]
        );
    }

    #[test]
    fn a_record_stays_on_one_line() {
        assert_eq!(one_line("a\tb\nc\r"), "a b c ");
    }
}
