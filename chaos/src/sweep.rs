//! Seed sweeps: which seeds to run, a progress bar, and quiet injected panics.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::devices::PANIC_PREFIX;

/// The most seeds one sweep may run.
pub const MAX_SEEDS: u64 = 1_000_000;

/// Parse `A..B` (A to B−1) or `A..=B` (A to B) into the seeds it names.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let bad = || {
        format!("--seeds {text:?}: expected A..B (B excluded) or A..=B, with A and B non-negative integers")
    };
    let (a, b, inclusive) = if let Some((a, b)) = text.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = text.split_once("..") {
        (a, b, false)
    } else {
        return Err(bad());
    };
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    let end = if inclusive {
        b.checked_add(1).ok_or_else(bad)?
    } else {
        b
    };
    if end <= a {
        return Err(format!("--seeds {text:?} names no seed"));
    }
    if end - a > MAX_SEEDS {
        return Err(format!(
            "--seeds {text:?} names {} seeds, more than the limit of {MAX_SEEDS}",
            end - a
        ));
    }
    Ok((a..end).collect())
}

/// A progress bar on stderr for `len` runs, hidden when stderr is not a terminal.
pub fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} runs, {elapsed} elapsed, eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Keep the default panic message for every panic but the injected ones (a chaos run
/// injects them on purpose; the report says where).
pub fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with(PANIC_PREFIX));
        if !injected {
            default(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_are_half_open_or_inclusive_and_bad_ones_are_named() {
        assert_eq!(parse_seeds("1..4").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("1..=4").unwrap(), vec![1, 2, 3, 4]);
        assert!(parse_seeds("4..4").unwrap_err().contains("no seed"));
        assert!(parse_seeds("x..4").unwrap_err().contains("A..B"));
        assert!(parse_seeds("7").unwrap_err().contains("A..B"));
        assert!(parse_seeds("0..2000000").unwrap_err().contains("limit"));
    }
}
