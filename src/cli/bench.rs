//! `sift bench`: load runs against Sift and its peers, whole suites with reports.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sift_bench::procs::{pid_listening_on, Pinning};
use sift_bench::suite::{run_suite, standard_variants, SuiteConfig};
use sift_bench::{Params, RunOptions, Scenario, Target, TargetKind};

use super::common::{self, ClusterArgs};
use super::{err, out};

/// `sift bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// One scenario against one target; ends with one JSON line per result on stdout.
    Run(Box<RunArgs>),
    /// Every scenario against every available target, several times, with the servers
    /// started here; writes results.jsonl, report.md and report.html.
    Suite(SuiteArgs),
    /// Simulates dissemination strategies on thousands of virtual nodes (the gossip nodes'
    /// own state machines); `--reproduce` checks them against published results.
    Sim(Box<super::sim::SimArgs>),
    /// The same workload on a partitioned cluster and on a gossip cluster (separate
    /// processes on loopback), and both designs in the simulator at 1,000–100,000 nodes;
    /// writes results.json, tables.md and plots.
    CompareModes(CompareArgs),
    /// A real cluster (separate coordinator and matcher processes) under SDK load while a
    /// seeded schedule of faults hits it; checks every subscriber's history for missing,
    /// duplicated and reordered events and writes chaos.json, chaos.md and a timeline plot.
    /// Exits with status 1 when an acknowledged event is missing or duplicated.
    Chaos(ChaosArgs),
    /// Writes report.md and report.html again from DIR/results.jsonl.
    Report {
        /// The suite's output directory.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
    },
}

/// Arguments of `sift bench run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// fanin, fanout, latency, patterns, filters or scale.
    pub scenario: Scenario,
    /// sift, nats, redis or mqtt.
    #[arg(long, default_value = "sift")]
    pub target: TargetKind,
    /// The server, `host:port` (for Sift, the coordinator). Default: the target's usual
    /// loopback port, or a local `sift dev`.
    #[arg(long)]
    pub addr: Option<String>,
    /// How long to publish (e.g. 10s).
    #[arg(long, value_parser = common::duration)]
    pub duration: Option<Duration>,
    /// Publisher connections.
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscribers (subscriptions; for patterns, pattern subscriptions).
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Topics.
    #[arg(long)]
    pub topics: Option<usize>,
    /// Subscriber connections the subscriptions are spread over.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Payload bytes (at least 32).
    #[arg(long)]
    pub payload: Option<usize>,
    /// Offered events per second (open loop); without it, max rate in a closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: most notifications in flight.
    #[arg(long)]
    pub in_flight: Option<u64>,
    /// At-least-once delivery (Sift: acked publishes and acknowledged subscriptions; MQTT:
    /// QoS 1).
    #[arg(long)]
    pub at_least_once: bool,
    /// Scale: matcher counts, e.g. 1,2,4.
    #[arg(long, value_delimiter = ',')]
    pub matchers: Vec<usize>,
    /// Sift: spread connections over these nodes, `host:port,…` (a gossip cluster's nodes:
    /// publisher i on node i, subscriber connection i on node i+1).
    #[arg(long, value_delimiter = ',')]
    pub spread: Vec<String>,
    /// Server processes to measure (CPU, peak memory); found by port on loopback otherwise.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Also append the result lines to DIR/results.jsonl.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Scale: first port of the clusters it starts.
    #[arg(long, default_value_t = 7700)]
    pub scale_port: u16,
    /// Scale: where the clusters' certificates and logs go.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Scale: `taskset -c` cores for the cluster's processes.
    #[arg(long)]
    pub server_cpus: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Arguments of `sift bench compare-modes`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Matchers (partitioned) and nodes (gossip), 2 to 16.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// The gossip cluster's strategy.
    #[arg(long, default_value = "rumor:2+anti-entropy:push-pull")]
    pub strategy: sift_matcher_core::gossip::Strategy,
    /// The gossip tick.
    #[arg(long, default_value = "100ms", value_parser = common::duration)]
    pub period: Duration,
    /// First port (the partitioned cluster takes PORT..=PORT+N, the gossip cluster PORT+20..).
    #[arg(long, default_value_t = 7900)]
    pub port: u16,
    /// Where results.json, tables.md and plots/ go.
    #[arg(long, default_value = "compare-modes")]
    pub out: PathBuf,
    /// Where the clusters' certificates and logs go (default: a directory under the system's
    /// temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Subscriptions loaded for the memory and traffic figures.
    #[arg(long, default_value_t = 2000)]
    pub subscriptions: usize,
    /// How long the latency and throughput runs publish.
    #[arg(long, default_value = "3s", value_parser = common::duration)]
    pub duration: Duration,
    /// Subscriptions timed for propagation.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Simulated cluster sizes.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub sim_sizes: Vec<usize>,
    /// `taskset -c` cores for the servers (e.g. 0).
    #[arg(long)]
    pub cpus: Option<String>,
}

/// Arguments of `sift bench suite`.
#[derive(Args, Debug)]
pub struct SuiteArgs {
    /// Where results, reports, plots and logs go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Targets, e.g. sift,nats (default: all that are installed).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<TargetKind>,
    /// Scenarios (default: all).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// Repetitions of every run.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// How long each run publishes.
    #[arg(long, default_value = "3s", value_parser = common::duration)]
    pub duration: Duration,
    /// Payload bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Do not pin servers and generator to separate cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Added to the ports of the servers the suite starts (sift 7450, nats 4322, redis 6479,
    /// mqtt 1983, scale clusters 7750 and up).
    #[arg(long, default_value_t = 0)]
    pub port_offset: u16,
}

/// Runs a `sift bench` subcommand.
pub fn run(command: BenchCommand) -> Result<()> {
    common::init_logs(false, "warn");
    match command {
        BenchCommand::Run(args) => run_one(*args),
        BenchCommand::Suite(args) => suite(args),
        BenchCommand::Sim(args) => super::sim::run(*args),
        BenchCommand::CompareModes(args) => compare_modes(args),
        BenchCommand::Chaos(args) => chaos(args),
        BenchCommand::Report { out: dir } => {
            sift_bench::report::write_reports(&dir)?;
            out(&format!(
                "wrote {0}/report.md and {0}/report.html",
                dir.display()
            ));
            Ok(())
        }
    }
}

fn run_one(args: RunArgs) -> Result<()> {
    let mut params = Params::new(args.scenario);
    if let Some(v) = args.publishers {
        params.publishers = v;
    }
    if let Some(v) = args.subscribers {
        params.subscribers = v;
        // Fan-out means one connection per subscriber unless told otherwise.
        if args.scenario == Scenario::Fanout && args.connections.is_none() {
            params.connections = v;
        }
        if args.scenario == Scenario::Patterns && args.topics.is_none() {
            params.topics = v;
        }
    }
    if let Some(v) = args.topics {
        params.topics = v;
    }
    if let Some(v) = args.connections {
        params.connections = v;
    }
    if let Some(v) = args.payload {
        params.payload = v;
    }
    if args.rate.is_some() {
        params.rate = args.rate;
    }
    if let Some(v) = args.in_flight {
        params.in_flight = v;
    }
    if let Some(v) = args.duration {
        params.duration = v;
    }
    params.at_least_once = args.at_least_once;
    if !args.matchers.is_empty() {
        params.matchers = args.matchers.clone();
    }
    params.validate(args.target)?;
    let addr = args
        .addr
        .clone()
        .unwrap_or_else(|| args.target.default_addr().to_string());
    let target = match args.target {
        TargetKind::Sift => {
            let mut cluster = args.cluster.clone();
            if args.addr.is_some() {
                cluster.coordinator = args.addr.clone();
            }
            if args.scenario == Scenario::Scale {
                // The scenario starts its own clusters.
                None
            } else if !args.spread.is_empty() {
                let nodes = args
                    .spread
                    .iter()
                    .map(|a| common::resolve(a))
                    .collect::<Result<Vec<_>>>()?;
                let mut config = cluster.client_config()?;
                config.coordinator = nodes[0];
                Some(Target::SiftNodes(Box::new(config), nodes))
            } else {
                Some(Target::Sift(Box::new(cluster.client_config()?)))
            }
        }
        TargetKind::Nats => Some(Target::Nats(addr.clone())),
        TargetKind::Redis => Some(Target::Redis(addr.clone())),
        TargetKind::Mqtt => Some(Target::Mqtt(addr.clone())),
    };
    let mut server_pids = args.server_pids.clone();
    if server_pids.is_empty() && args.scenario != Scenario::Scale {
        let local = match &target {
            Some(Target::Sift(c)) => Some(c.coordinator),
            _ => common::resolve(&addr).ok(),
        };
        if let Some(sock) = local.filter(|s| s.ip().is_loopback()) {
            server_pids.extend(pid_listening_on(sock.port()));
        }
    }
    let opts = RunOptions {
        server_pids,
        quiet: args.quiet,
        sift_exe: Some(std::env::current_exe().context("cannot find the sift binary")?),
        work_dir: args.work_dir.clone(),
        scale_port: args.scale_port,
        server_cpus: args.server_cpus.clone(),
    };
    let results = common::runtime()?.block_on(async {
        match &target {
            Some(t) => sift_bench::run(t, &params, &opts).await,
            None => sift_bench::run::run_scale(&params, &opts).await,
        }
    })?;
    let mut file = match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("results.jsonl"))?,
            )
        }
        None => None,
    };
    for r in &results {
        let line = serde_json::to_string(r)?;
        out(&line);
        if let Some(f) = &mut file {
            use std::io::Write;
            writeln!(f, "{line}")?;
        }
        if r.summary.delivery_ratio < 0.999 && !args.quiet {
            err(&format!(
                "note: delivery ratio {:.4}: {} of {} notifications did not arrive",
                r.summary.delivery_ratio,
                r.summary.expected.saturating_sub(r.summary.delivered),
                r.summary.expected
            ));
        }
    }
    Ok(())
}

fn compare_modes(args: CompareArgs) -> Result<()> {
    if args.trials == 0 || args.subscriptions == 0 {
        bail!("--trials and --subscriptions must be at least 1");
    }
    let config = sift_bench::modes::ModesConfig {
        exe: std::env::current_exe().context("cannot find the sift binary")?,
        nodes: args.nodes,
        strategy: args.strategy,
        period: args.period,
        port: args.port,
        dir: args.work_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("sift-compare-modes-{}", std::process::id()))
        }),
        subscriptions: args.subscriptions,
        duration: args.duration,
        trials: args.trials,
        sim_sizes: args.sim_sizes.clone(),
        cpus: args.cpus.clone(),
    };
    let report = common::runtime()?
        .block_on(sift_bench::modes::compare_modes(&config, &mut |line| {
            err(line)
        }))?;
    sift_bench::modes::write_report(&report, &args.out)?;
    out(&sift_bench::modes::tables(&report));
    out(&format!(
        "wrote {0}/results.json, {0}/tables.md and {0}/plots/ (cluster logs in {1})",
        args.out.display(),
        config.dir.display()
    ));
    Ok(())
}

fn suite(args: SuiteArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    let targets = if args.targets.is_empty() {
        TargetKind::ALL.to_vec()
    } else {
        args.targets.clone()
    };
    let config = SuiteConfig {
        out: args.out.clone(),
        targets,
        variants: standard_variants(args.duration, args.payload)
            .into_iter()
            .filter(|p| scenarios.contains(&p.scenario))
            .collect(),
        reps: args.reps,
        pinning: if args.no_pin {
            Pinning::default()
        } else {
            Pinning::split()
        },
        sift_exe: std::env::current_exe().context("cannot find the sift binary")?,
        port_offset: args.port_offset,
    };
    let outcome = run_suite(&config, &mut |line| err(line))?;
    let dir = args.out.display();
    out(&format!(
        "{} results in {dir}/results.jsonl; reports {dir}/report.md, {dir}/report.html",
        outcome.results
    ));
    if !outcome.failures.is_empty() {
        bail!(
            "{} run(s) failed (listed in {dir}/failures.jsonl and the report)",
            outcome.failures.len()
        );
    }
    Ok(())
}

/// Arguments of `sift bench chaos`.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Matchers at the start.
    #[arg(long, default_value_t = 3)]
    pub matchers: usize,
    /// How long publishers publish (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = common::duration)]
    pub duration: Duration,
    /// The faults, in order, spread evenly over the run: join, drain, remove, term, kill,
    /// pause, coordinator-kill, partition (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<sift_bench::chaos::FaultKind>,
    /// Seeds the choice of targets (and the order with --shuffle).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Shuffle the faults' order (seeded).
    #[arg(long)]
    pub shuffle: bool,
    /// Publisher clients.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Acknowledged publishes in flight per publisher.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Publishes per second per publisher.
    #[arg(long, default_value_t = 250)]
    pub rate: u32,
    /// Topics.
    #[arg(long, default_value_t = 8)]
    pub topics: usize,
    /// How long a partition lasts (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = common::duration)]
    pub partition: Duration,
    /// Idle exact-topic subscriptions loaded before the faults, for handoffs and drains to
    /// move (e.g. 100000).
    #[arg(long, default_value_t = 0)]
    pub load: usize,
    /// The cluster's replication factor (`sift coordinator --replicas`).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// The coordinator's port; matchers take the ports after it.
    #[arg(long, default_value_t = 7700)]
    pub port: u16,
    /// Where reports, certificates and logs go.
    #[arg(long, default_value = "chaos-out")]
    pub out: PathBuf,
}

fn chaos(args: ChaosArgs) -> Result<()> {
    if args.matchers == 0 || args.publishers == 0 || args.topics == 0 {
        bail!("--matchers, --publishers and --topics must be at least 1");
    }
    let mut config = sift_bench::chaos::ChaosConfig::new(
        std::env::current_exe().context("cannot find the sift binary")?,
        args.out.clone(),
    );
    config.matchers = args.matchers;
    config.duration = args.duration;
    if !args.faults.is_empty() {
        config.faults = args.faults.clone();
    }
    config.seed = args.seed;
    config.shuffle = args.shuffle;
    config.publishers = args.publishers;
    config.in_flight = args.in_flight;
    config.rate = args.rate;
    config.topics = args.topics;
    config.partition = args.partition;
    config.port = args.port;
    config.replicas = args.replicas;
    config.load = args.load;
    config
        .coordinator_flags
        .extend(["--replicas".to_owned(), args.replicas.to_string()]);
    let report = common::runtime()?.block_on(sift_bench::chaos::run_chaos(&config))?;
    out(&sift_bench::chaos::report::markdown(&report));
    out(&format!(
        "wrote {0}/chaos.json, {0}/chaos.md and {0}/chaos-timeline.svg (logs in {0})",
        args.out.display()
    ));
    if report.verdict.missing > 0 || report.verdict.duplicates > 0 || !report.ended.is_empty() {
        bail!(
            "{} acknowledged events missing, {} duplicated, {} subscriptions ended",
            report.verdict.missing,
            report.verdict.duplicates,
            report.ended.len()
        );
    }
    Ok(())
}
