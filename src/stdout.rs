//! Lines on standard output for every subcommand.
//!
//! `println!` panics when stdout is gone (`gridvisor chaos … | head`, a log pipe that was
//! closed). Here a line that cannot be written is dropped and the command goes on, so that
//! its exit status still says what happened (a chaos sweep still exits 1 when an invariant
//! broke) and a node never stops because nobody reads its stdout. SIGPIPE stays ignored, as
//! Rust sets it: restoring it process-wide would also reach the node's sockets and pipes.

/// `println!` that drops the line when stdout is gone instead of panicking; true when the
/// line was written.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        $crate::stdout::written(writeln!(std::io::stdout().lock(), $($t)*))
    }};
}

/// `print!` that drops the text when stdout is gone, and flushes (a screen redraw must
/// show); true when the text was written.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        $crate::stdout::written(write!(stdout, $($t)*).and_then(|()| stdout.flush()))
    }};
}

pub(crate) use {out, outln};

/// Whether a write went through. A plain function, not `Result::is_ok`, so that a statement
/// `outln!(…);` that does not care is not an unused `#[must_use]` value.
pub(crate) fn written(result: std::io::Result<()>) -> bool {
    result.is_ok()
}
