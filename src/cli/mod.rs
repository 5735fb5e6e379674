//! Subcommands of the `sift` binary and their terminal output.

pub mod bench;
pub mod cluster;
pub mod common;
pub mod dev;
pub mod filter;
pub mod pubsub;
pub mod serve;
pub mod sim;

use std::io::Write;

/// Writes one line to stdout (the CLI's own output). A closed pipe is not an error.
pub fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Writes one line to stderr.
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
