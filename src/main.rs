//! `sift`: the one binary. A thin dispatcher over the crates; each subcommand lives in
//! `src/cli/`.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The servers allocate per notification and per packet; mimalloc keeps that cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sift: a distributed publish/subscribe matching service.
#[derive(Parser, Debug)]
#[command(name = "sift", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a coordinator and matchers in this process on loopback, with generated
    /// certificates (the way to try Sift).
    Dev(cli::dev::DevArgs),
    /// Run a coordinator.
    Coordinator(cli::serve::CoordinatorArgs),
    /// Run a matcher.
    Matcher(Box<cli::serve::MatcherArgs>),
    /// Publish events.
    Pub(cli::pubsub::PubArgs),
    /// Subscribe and print one JSON object per notification.
    Sub(cli::pubsub::SubArgs),
    /// Show the ring: members, weights, shares of the hash space, version.
    Ring(cli::cluster::RingArgs),
    /// Operator commands: list, drain or remove matchers.
    Admin {
        #[command(subcommand)]
        command: cli::cluster::AdminCommand,
    },
    /// Load tests: one scenario against Sift or a peer, or a whole suite with reports.
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCommand,
    },
    /// Work with filter expressions.
    Filter {
        #[command(subcommand)]
        command: cli::filter::FilterCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Filter { command } => return cli::filter::run(command),
        Command::Dev(args) => cli::dev::run(args),
        Command::Coordinator(args) => cli::serve::coordinator(args),
        Command::Matcher(args) => cli::serve::matcher(*args),
        Command::Pub(args) => cli::pubsub::publish(args),
        Command::Sub(args) => cli::pubsub::subscribe(args),
        Command::Ring(args) => cli::cluster::ring(args),
        Command::Admin { command } => cli::cluster::admin(command),
        Command::Bench { command } => cli::bench::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::err(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
