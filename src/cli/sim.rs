//! `sift bench sim`: the dissemination simulator.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use sift_bench::sim::{self, Clock, SimConfig, Topology};
use sift_matcher_core::gossip::Strategy;

use super::common;
use super::out;

/// Rounds or continuous time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimeModel {
    /// Synchronous rounds (Demers' cycles).
    Rounds,
    /// Continuous time: ticks every period, messages take the latency.
    Continuous,
}

/// Arguments of `sift bench sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Virtual nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Strategies (repeat the flag): flood, bcrm:B,F, rumor:k, rumor-coin:k, rumor-blind:k,
    /// rumor-blind-coin:k, anti-entropy:push|pull|push-pull, or a push strategy
    /// `+anti-entropy:MODE`.
    #[arg(long = "strategy", default_value = "anti-entropy:push-pull")]
    pub strategies: Vec<Strategy>,
    /// Topologies (repeat the flag): complete, random-regular:D, erdos-renyi:P.
    #[arg(long = "topology", default_value = "complete")]
    pub topologies: Vec<Topology>,
    /// Probability that a message is lost.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Probability that a node is down in a round (rounds only).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Independent trials; results are means over them.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Seed: the same seed gives the same numbers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Rounds or continuous time.
    #[arg(long, value_enum, default_value = "rounds")]
    pub time: TimeModel,
    /// Continuous time: mean time between a node's ticks.
    #[arg(long, default_value = "100ms", value_parser = common::duration)]
    pub period: Duration,
    /// Continuous time: one-way message latency.
    #[arg(long, default_value = "1ms", value_parser = common::duration)]
    pub latency: Duration,
    /// Continuous time: exponential gaps between ticks (Poisson clocks) instead of a fixed
    /// period with a random phase.
    #[arg(long)]
    pub poisson: bool,
    /// Give up after this many rounds (continuous: periods).
    #[arg(long, default_value_t = 1000)]
    pub rounds_max: u64,
    /// Anti-entropy exchange every this many ticks.
    #[arg(long, default_value_t = 1)]
    pub anti_entropy_every: u32,
    /// One JSON object per strategy and topology.
    #[arg(long)]
    pub json: bool,
    /// Reproduce published results (Demers et al. 1987, Karp et al. 2000, Birman et al.
    /// 1999) and write a markdown report; the other options are ignored.
    #[arg(long)]
    pub reproduce: bool,
    /// With --reproduce: where the markdown goes (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `sift bench sim`.
pub fn run(args: SimArgs) -> Result<()> {
    if args.reproduce {
        let report = sim::reproduce::reproduce(args.seed, &mut |line| super::err(line))?;
        match &args.out {
            Some(path) => {
                std::fs::write(path, &report.markdown)?;
                out(&format!("wrote {}", path.display()));
            }
            None => out(&report.markdown),
        }
        if !report.failed.is_empty() {
            bail!("outside the published bounds: {}", report.failed.join("; "));
        }
        return Ok(());
    }
    let clock = match args.time {
        TimeModel::Rounds => Clock::Rounds,
        TimeModel::Continuous => Clock::Continuous {
            period_us: args.period.as_micros().max(1) as u64,
            latency_us: args.latency.as_micros() as u64,
            poisson: args.poisson,
        },
    };
    if !args.json {
        out("strategy                         topology            nodes  trials  residue   traffic  msgs/node  bytes/node  t_avg   t_last  rounds(mean/p99)  wall");
    }
    for strategy in &args.strategies {
        for topology in &args.topologies {
            let mut config = SimConfig::new(args.nodes, *strategy, *topology);
            config.loss = args.loss;
            config.churn = args.churn;
            config.trials = args.trials;
            config.seed = args.seed;
            config.clock = clock;
            config.rounds_max = args.rounds_max;
            config.anti_entropy_every = args.anti_entropy_every.max(1);
            let r = sim::simulate(&config)?;
            if args.json {
                out(&serde_json::to_string(&r)?);
            } else {
                out(&format!(
                    "{:<32} {:<18} {:>6} {:>7}  {:<8.4}  {:>7.2}  {:>9.2}  {:>10.1}  {:>5.1}  {:>6.1}  {:>6.1} / {:<6.1}  {:.2}s",
                    r.strategy,
                    r.topology,
                    r.nodes,
                    r.trials,
                    r.residue,
                    r.traffic,
                    r.messages_per_node,
                    r.bytes_per_node,
                    r.t_avg,
                    r.t_last,
                    r.rounds_mean,
                    r.rounds_p99,
                    r.wall_ms as f64 / 1000.0
                ));
            }
        }
    }
    Ok(())
}
