//! `sift bench suite`: starts what it needs on loopback (a `sift dev` from the same build,
//! `nats-server`, `redis-server`, `mosquitto` when installed), runs every scenario against
//! every available target several times — each run in a child `sift bench run` pinned to the
//! generator's core, each server restarted for each run and pinned to the servers' core — stops
//! everything it started, and writes `results.jsonl`, `report.md` and `report.html`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cluster::start_dev;
use crate::plan::{Params, Scenario};
use crate::procs::{pinned, wait_tcp, which, Pinning, ServerProcess};
use crate::run::RunResult;
use crate::target::TargetKind;

/// What a suite runs.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Where results, reports, logs and server files go.
    pub out: PathBuf,
    /// Targets to try (those not installed are skipped, with a word on how to install them).
    pub targets: Vec<TargetKind>,
    /// The runs of one repetition.
    pub variants: Vec<Params>,
    /// Repetitions.
    pub reps: usize,
    /// Cores for servers and generator.
    pub pinning: Pinning,
    /// The `sift` binary (this one).
    pub sift_exe: PathBuf,
    /// Added to every port the suite's servers listen on (to run suites side by side).
    pub port_offset: u16,
}

/// The standard runs: fan-in 4/4/16 (at most once, and at least once for Sift and MQTT QoS 1),
/// fan-out to 100 and 1,000, latency at 10,000/s, 10 / 1,000 / 10,000 patterns, 10,000
/// filtered subscribers, and Sift at 1 → 2 → 4 matchers.
pub fn standard_variants(duration: Duration, payload: usize) -> Vec<Params> {
    let with = |scenario, subscribers: Option<usize>| {
        let mut p = Params::new(scenario);
        if let Some(s) = subscribers {
            p.subscribers = s;
            if scenario == Scenario::Fanout {
                p.connections = s;
            }
            if scenario == Scenario::Patterns {
                p.topics = s;
            }
        }
        p.duration = duration;
        p.payload = payload;
        p
    };
    let mut alo = with(Scenario::Fanin, None);
    alo.at_least_once = true;
    vec![
        with(Scenario::Fanin, None),
        alo,
        with(Scenario::Fanout, Some(100)),
        with(Scenario::Fanout, Some(1_000)),
        with(Scenario::Latency, None),
        with(Scenario::Patterns, Some(10)),
        with(Scenario::Patterns, Some(1_000)),
        with(Scenario::Patterns, Some(10_000)),
        with(Scenario::Filters, None),
        with(Scenario::Scale, None),
    ]
}

/// A run that did not produce a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The scenario.
    pub scenario: Scenario,
    /// The target.
    pub target: TargetKind,
    /// Its variant.
    pub variant: String,
    /// The repetition.
    pub rep: usize,
    /// What went wrong.
    pub error: String,
}

/// What a suite did.
#[derive(Debug, Default)]
pub struct SuiteOutcome {
    /// Results written.
    pub results: usize,
    /// Runs that failed.
    pub failures: Vec<Failure>,
    /// Targets skipped, with why.
    pub skipped: Vec<String>,
}

/// Ports of the suite's own servers on loopback (away from the usual ones).
const SIFT_PORT: u16 = 7450;
const NATS_PORT: u16 = 4322;
const REDIS_PORT: u16 = 6479;
const MQTT_PORT: u16 = 1983;
const SCALE_PORT: u16 = 7750;

/// The program a target's server needs, and how to install it.
fn server_program(kind: TargetKind) -> Option<(&'static str, &'static str)> {
    match kind {
        TargetKind::Sift => None,
        TargetKind::Nats => Some(("nats-server", "apt-get install nats-server")),
        TargetKind::Redis => Some(("redis-server", "apt-get install redis-server")),
        TargetKind::Mqtt => Some(("mosquitto", "apt-get install mosquitto")),
    }
}

/// A target's server for one run, and the flags that point `sift bench run` at it.
struct Started {
    servers: Vec<ServerProcess>,
    args: Vec<String>,
}

fn start_server(config: &SuiteConfig, kind: TargetKind, log: &mut ProcessLog) -> Result<Started> {
    let work = config.out.join("work");
    std::fs::create_dir_all(&work)?;
    let cpus = config.pinning.servers.as_deref();
    let logs = config.out.join("logs");
    let started = match kind {
        TargetKind::Sift => {
            let dir = work.join("sift-dev");
            let port = SIFT_PORT + config.port_offset;
            let (server, _) = start_dev(&config.sift_exe, port, &dir, cpus)?;
            log.started(&server)?;
            let ca = dir.join("ca.pem");
            Started {
                args: vec![
                    "--addr".into(),
                    format!("127.0.0.1:{port}"),
                    "--ca".into(),
                    ca.display().to_string(),
                    "--server-pid".into(),
                    server.pid().to_string(),
                ],
                servers: vec![server],
            }
        }
        TargetKind::Nats | TargetKind::Redis | TargetKind::Mqtt => {
            let (program, _) = server_program(kind).context("no server program")?;
            let exe = which(program).with_context(|| format!("{program} not found"))?;
            let (port, mut cmd) = match kind {
                TargetKind::Nats => {
                    let port = NATS_PORT + config.port_offset;
                    let mut c = pinned(&exe, cpus);
                    c.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
                    (port, c)
                }
                TargetKind::Redis => {
                    let port = REDIS_PORT + config.port_offset;
                    let mut c = pinned(&exe, cpus);
                    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                        .args(["--save", "", "--appendonly", "no", "--maxclients", "20000"]);
                    (port, c)
                }
                _ => {
                    let port = MQTT_PORT + config.port_offset;
                    let conf = work.join("mosquitto.conf");
                    std::fs::write(
                        &conf,
                        // Nagle off, as NATS and Redis have it.
                        format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"),
                    )?;
                    let mut c = pinned(&exe, cpus);
                    c.arg("-c").arg(&conf);
                    (port, c)
                }
            };
            cmd.current_dir(&work);
            let mut server =
                ServerProcess::spawn(program, cmd, &logs.join(format!("{program}.log")))?;
            log.started(&server)?;
            let addr = format!("127.0.0.1:{port}");
            wait_tcp(&addr, &mut server, Duration::from_secs(10))?;
            Started {
                args: vec![
                    "--addr".into(),
                    addr,
                    "--server-pid".into(),
                    server.pid().to_string(),
                ],
                servers: vec![server],
            }
        }
    };
    Ok(started)
}

/// Every process the suite started, one `pid name` line each, in `processes.txt`: a record to
/// check that none is left behind.
struct ProcessLog {
    file: std::fs::File,
}

impl ProcessLog {
    fn started(&mut self, p: &ServerProcess) -> Result<()> {
        writeln!(self.file, "{} {}", p.pid(), p.name())?;
        Ok(())
    }
}

/// The arguments of `sift bench run` for `params`.
fn run_args(params: &Params, kind: TargetKind) -> Vec<String> {
    let mut a = vec![
        "bench".into(),
        "run".into(),
        params.scenario.name().into(),
        "--target".into(),
        kind.name().into(),
        "--duration".into(),
        format!("{}ms", params.duration.as_millis()),
        "--publishers".into(),
        params.publishers.to_string(),
        "--subscribers".into(),
        params.subscribers.to_string(),
        "--topics".into(),
        params.topics.to_string(),
        "--connections".into(),
        params.connections.to_string(),
        "--payload".into(),
        params.payload.to_string(),
        "--in-flight".into(),
        params.in_flight.to_string(),
        "--quiet".into(),
    ];
    if params.at_least_once {
        a.push("--at-least-once".into());
    }
    if let Some(r) = params.rate {
        a.push("--rate".into());
        a.push(r.to_string());
    }
    if !params.matchers.is_empty() {
        a.push("--matchers".into());
        a.push(
            params
                .matchers
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    a
}

/// Runs the suite. Servers are stopped whatever happens to a run; a failed run is recorded
/// and the suite goes on.
pub fn run_suite(config: &SuiteConfig, say: &mut dyn FnMut(&str)) -> Result<SuiteOutcome> {
    if u32::from(SCALE_PORT) + u32::from(config.port_offset) + 64 > u32::from(u16::MAX) {
        bail!(
            "--port-offset {} puts the suite's ports past 65535 (at most {})",
            config.port_offset,
            u16::MAX - SCALE_PORT - 64
        );
    }
    std::fs::create_dir_all(config.out.join("logs"))
        .with_context(|| format!("cannot create {}", config.out.display()))?;
    let mut outcome = SuiteOutcome::default();
    let mut targets = Vec::new();
    for &kind in &config.targets {
        match server_program(kind) {
            Some((program, install)) if which(program).is_none() => {
                let why = format!("{kind}: {program} not installed (install it with `{install}`)");
                say(&format!("skipping {why}"));
                outcome.skipped.push(why);
            }
            _ => targets.push(kind),
        }
    }
    if targets.is_empty() {
        bail!("no target to run");
    }
    let results_path = config.out.join("results.jsonl");
    let failures_path = config.out.join("failures.jsonl");
    let mut results = std::fs::File::create(&results_path)?;
    let mut failures = std::fs::File::create(&failures_path)?;
    let mut log = ProcessLog {
        file: std::fs::File::create(config.out.join("processes.txt"))?,
    };
    let started_at = Instant::now();
    for rep in 0..config.reps {
        for params in &config.variants {
            for &kind in &targets {
                if !params.runs_on(kind) {
                    continue;
                }
                let label = format!(
                    "rep {}/{} {} {kind} {}",
                    rep + 1,
                    config.reps,
                    params.scenario,
                    crate::run::variant(params)
                );
                say(&format!(
                    "{label} ({:.0}s in)",
                    started_at.elapsed().as_secs_f64()
                ));
                match one_run(config, params, kind, rep, &mut log) {
                    Ok(lines) => {
                        for mut r in lines {
                            r.rep = Some(rep);
                            writeln!(results, "{}", serde_json::to_string(&r)?)?;
                            outcome.results += 1;
                            say(&format!(
                                "  delivered {:.0}/s, published {:.0}/s, ratio {:.4}, p50 {} µs, p99 {} µs",
                                r.summary.delivered_per_s,
                                r.summary.published_per_s,
                                r.summary.delivery_ratio,
                                r.summary.latency_p50_us,
                                r.summary.latency_p99_us
                            ));
                        }
                    }
                    Err(e) => {
                        let f = Failure {
                            scenario: params.scenario,
                            target: kind,
                            variant: crate::run::variant(params),
                            rep,
                            error: format!("{e:#}"),
                        };
                        say(&format!("  failed: {}", f.error));
                        writeln!(failures, "{}", serde_json::to_string(&f)?)?;
                        outcome.failures.push(f);
                    }
                }
            }
        }
    }
    crate::report::write_reports(&config.out)?;
    Ok(outcome)
}

fn one_run(
    config: &SuiteConfig,
    params: &Params,
    kind: TargetKind,
    rep: usize,
    log: &mut ProcessLog,
) -> Result<Vec<RunResult>> {
    // A fresh server for every run: no backlog or slow path left by an earlier one. Dropped
    // (killed) on every way out of this function.
    let started = if params.scenario == Scenario::Scale {
        Started {
            servers: vec![],
            args: vec![
                "--scale-port".into(),
                (SCALE_PORT + config.port_offset).to_string(),
                "--work-dir".into(),
                config.out.join("work").join("scale").display().to_string(),
            ]
            .into_iter()
            .chain(
                config
                    .pinning
                    .servers
                    .iter()
                    .flat_map(|c| ["--server-cpus".to_string(), c.clone()]),
            )
            .collect(),
        }
    } else {
        start_server(config, kind, log)?
    };
    let mut cmd: Command = pinned(&config.sift_exe, config.pinning.generator.as_deref());
    cmd.args(run_args(params, kind)).args(&started.args);
    let log_path = config.out.join("logs").join(format!(
        "run-{}-{kind}-{}-{rep}.log",
        params.scenario,
        crate::run::variant(params)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
    ));
    let stderr = std::fs::File::create(&log_path)?;
    // Its own process group: the clusters a scale run starts are its children, and killing
    // the group takes them too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("cannot start `sift bench run`")?;
    let mut child = GroupGuard(child);
    let child = &mut child.0;
    let pid = child.id();
    writeln!(log.file, "{pid} sift bench run")?;
    let limit = params.duration * (params.matchers.len().max(1) as u32) + Duration::from_secs(180);
    let stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the run took longer than {limit:?} and was stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = reader.join().unwrap_or_default();
    for server in started.servers {
        server.stop();
    }
    if !status.success() {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let last = tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("`sift bench run` failed ({status}): {last}");
    }
    let results: Vec<RunResult> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("unreadable result line")?;
    if results.is_empty() {
        bail!("the run printed no result");
    }
    Ok(results)
}

/// A child in a process group of its own; dropping it kills the group (unless the child
/// already exited) and reaps the child.
struct GroupGuard(std::process::Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let group = format!("-{}", self.0.id());
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The out directory's files.
pub fn results_path(out: &Path) -> PathBuf {
    out.join("results.jsonl")
}
