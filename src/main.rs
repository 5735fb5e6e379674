//! `sift`: the one binary. A thin dispatcher over the crates; each subcommand lives in
//! `src/cli/`.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sift: a distributed publish/subscribe matching service.
#[derive(Parser, Debug)]
#[command(name = "sift", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work with filter expressions.
    Filter {
        #[command(subcommand)]
        command: cli::filter::FilterCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Filter { command } => cli::filter::run(command),
    }
}
