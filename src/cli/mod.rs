//! Subcommands of the `sift` binary and their terminal output.

pub mod filter;

use std::io::Write;

/// Writes one line to stdout (the CLI's own output). A closed pipe is not an error.
pub fn out(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Writes one line to stderr.
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
