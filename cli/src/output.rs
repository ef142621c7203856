//! Writing to standard output without panicking: `sluice get … | head -1` closes the pipe early, and
//! `println!` would panic on it. The `outln!` and `out!` macros (main.rs) write through [`write_stdout`] and
//! return the error instead; `main` exits quietly when an error's cause is a broken pipe
//! ([`is_broken_pipe`]), as `kubectl` and the Unix tools do. SIGPIPE stays ignored (Rust's default),
//! because the same binary runs the servers, which must survive a peer closing a socket.

use std::fmt;
use std::io::{self, Write};

/// Writes formatted text to standard output and flushes it (so a closed pipe shows at once, and `get -w`
/// rows appear as they change).
pub(crate) fn write_stdout(text: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(text)?;
    out.flush()
}

/// Whether `error`, or any error it was caused by, is a write to a pipe whose reader has gone.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_found_anywhere_in_the_chain() {
        let pipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::new(pipe())));
        assert!(is_broken_pipe(&anyhow::Error::new(pipe()).context("printing the table").context("get")));
        assert!(!is_broken_pipe(&anyhow::Error::new(io::Error::from(io::ErrorKind::PermissionDenied))));
        assert!(!is_broken_pipe(&anyhow::anyhow!("Broken pipe (os error 32)")), "only the error kind counts");
    }
}
