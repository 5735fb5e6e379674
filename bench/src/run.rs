//! One run: connect subscribers, publish (closed loop at max rate, or open loop at a fixed
//! rate), drain, and turn what was seen into a [`RunResult`] — the JSON line every run ends
//! with.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::cluster::start_cluster;
use crate::collect::Collector;
use crate::plan::{Params, Plan, Scenario};
use crate::procs::{proc_stats, ProcStats};
use crate::progress::Progress;
use crate::stamp::{Clock, Stamp};
use crate::tally::{Published, Summary};
use crate::target::{Publisher, SubscriberConn, Target, TargetKind};
use crate::window::Window;

/// What every run reports: one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The scenario.
    pub scenario: Scenario,
    /// The system driven.
    pub target: TargetKind,
    /// The scenario's variant in a few words (`S=100`, `10000/s`, `N=2`).
    pub variant: String,
    /// The parameters.
    pub params: Params,
    /// Rates, the delivery ratio, latencies, bytes. (Not flattened: serde_json's
    /// arbitrary-precision numbers do not survive a flattened round trip.)
    pub summary: Summary,
    /// CPU seconds the server processes used during the run (when they are local processes).
    pub server_cpu_s: Option<f64>,
    /// Their peak resident memory, bytes (summed over processes).
    pub server_rss_peak_bytes: Option<u64>,
    /// CPU seconds of the load generator (this process) during the run.
    pub generator_cpu_s: f64,
    /// The generator used (nearly) all the CPU it had: the figures are lower bounds ("≥").
    pub generator_saturated: bool,
    /// Times a publisher gave up waiting for the closed-loop window (lost notifications).
    pub stalls: u64,
    /// Scale: matchers in the cluster.
    pub matchers: Option<usize>,
    /// Scale: CPU seconds of each matcher process.
    pub per_node_cpu_s: Option<Vec<f64>>,
    /// The suite's repetition this run belongs to.
    #[serde(default)]
    pub rep: Option<usize>,
}

/// How to run, beyond the parameters.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Server processes to measure (CPU, memory).
    pub server_pids: Vec<u32>,
    /// Show nothing while running.
    pub quiet: bool,
    /// The `sift` binary, for the scale scenario's clusters.
    pub sift_exe: Option<PathBuf>,
    /// Where the scale scenario writes certificates and logs.
    pub work_dir: Option<PathBuf>,
    /// First port of the scale scenario's clusters.
    pub scale_port: u16,
    /// `taskset -c` cores for the scale scenario's servers.
    pub server_cpus: Option<String>,
}

/// Runs `params` against `target` (for the scale scenario, see [`run_scale`]).
pub async fn run(target: &Target, params: &Params, opts: &RunOptions) -> Result<Vec<RunResult>> {
    if params.scenario == Scenario::Scale {
        return run_scale(params, opts).await;
    }
    params.validate(target.kind())?;
    Ok(vec![run_once(target, params, opts, None).await?])
}

/// The scale scenario: for each matcher count, starts a cluster of separate coordinator and
/// matcher processes from `opts.sift_exe`, runs the fan-in load against it, stops it. One
/// result per matcher count, with each matcher's CPU seconds.
pub async fn run_scale(params: &Params, opts: &RunOptions) -> Result<Vec<RunResult>> {
    params.validate(TargetKind::Sift)?;
    let exe = opts
        .sift_exe
        .clone()
        .context("the scale scenario needs the sift binary")?;
    let work = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sift-bench-{}", std::process::id())));
    let port = if opts.scale_port == 0 {
        7700
    } else {
        opts.scale_port
    };
    let most = params.matchers.iter().copied().max().unwrap_or(0);
    if usize::from(port) + most > usize::from(u16::MAX) {
        anyhow::bail!("--scale-port {port} leaves no room for {most} matchers below 65536");
    }
    let mut out = Vec::new();
    for &n in &params.matchers {
        let dir = work.join(format!("scale-{n}"));
        let (procs, config) =
            start_cluster(&exe, n, port, &dir, opts.server_cpus.as_deref()).await?;
        let mut step_opts = opts.clone();
        step_opts.server_pids = procs.iter().map(|p| p.pid()).collect();
        let matcher_pids: Vec<u32> = procs[1..].iter().map(|p| p.pid()).collect();
        let result = run_once(
            &Target::Sift(Box::new(config)),
            params,
            &step_opts,
            Some(&matcher_pids),
        )
        .await;
        for p in procs {
            p.stop();
        }
        let mut r = result?;
        r.matchers = Some(n);
        r.variant = format!("N={n}");
        out.push(r);
    }
    Ok(out)
}

/// A run's variant in a few words (`S=100`, `10000/s`, `P=4 S=4 T=16 ALO`).
pub fn variant(params: &Params) -> String {
    let v = base_variant(params);
    if params.at_least_once {
        format!("{v} ALO").trim().to_string()
    } else {
        v
    }
}

fn base_variant(params: &Params) -> String {
    match params.scenario {
        Scenario::Fanin => format!(
            "P={} S={} T={}",
            params.publishers, params.subscribers, params.topics
        ),
        Scenario::Fanout | Scenario::Patterns | Scenario::Filters => {
            format!("S={}", params.subscribers)
        }
        Scenario::Latency => format!("{}/s", params.rate.unwrap_or(0.0)),
        Scenario::Scale => String::new(),
    }
}

fn cpu(pids: &[u32]) -> Vec<Option<ProcStats>> {
    pids.iter().map(|&p| proc_stats(p)).collect()
}

async fn run_once(
    target: &Target,
    params: &Params,
    opts: &RunOptions,
    per_node: Option<&[u32]>,
) -> Result<RunResult> {
    let nonce: u64 = rand::random();
    let clock = Clock::start();
    let plan = Arc::new(Plan::new(params, nonce));
    let label = format!("{} {} {}", params.scenario, target.kind(), variant(params));
    let progress = Progress::new(&label, params.duration, opts.quiet);
    let in_flight = if params.rate.is_some() {
        u64::MAX / 4
    } else {
        params.in_flight
    };
    let collector = Collector::new(nonce, clock, Window::new(in_flight, Duration::from_secs(1)));

    progress.note(&format!(
        "connecting {} subscriptions over {} connections",
        plan.subscriptions(),
        plan.connections.len()
    ));
    let subscribers: Vec<SubscriberConn> = stream::iter(plan.connections.iter().enumerate())
        .map(|(i, specs)| SubscriberConn::open(target, i, specs, &collector, params.at_least_once))
        .buffer_unordered(16)
        .try_collect()
        .await?;
    target.settle(plan.subscriptions()).await?;
    let mut publishers = Vec::new();
    for i in 0..params.publishers {
        publishers
            .push(Publisher::connect(target, nonce, i, plan.attrs, params.at_least_once).await?);
    }

    let server_before = cpu(&opts.server_pids);
    let node_before = per_node.map(cpu);
    let gen_before = proc_stats(std::process::id());
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let start_ns = clock.now_ns();
    let stop_at = start + params.duration;
    let rate_each = params.rate.map(|r| r / params.publishers as f64);
    let tasks: Vec<_> = publishers
        .into_iter()
        .map(|p| {
            let plan = plan.clone();
            let collector = collector.clone();
            let counters = counters.clone();
            let payload = params.payload;
            tokio::spawn(async move {
                publish_loop(p, &plan, &collector, &counters, payload, stop_at, rate_each).await
            })
        })
        .collect();

    // The live view, until the publishers are done.
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let (mut last_pub, mut last_del) = (0, 0);
    while Instant::now() < stop_at {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::time::sleep_until(stop_at.into()) => break,
        }
        let (p, d) = (
            counters.events.load(Ordering::Relaxed),
            collector.delivered(),
        );
        progress.tick(
            start.elapsed(),
            p,
            d,
            (p - last_pub) as f64,
            (d - last_del) as f64,
        );
        (last_pub, last_del) = (p, d);
    }
    let mut publish_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => publish_error = Some(e),
            Err(e) => publish_error = Some(anyhow::anyhow!("publisher task failed: {e}")),
        }
    }
    // Publishing ended when the last publisher stopped publishing (not when it finished
    // closing its connection).
    let publish_secs = (counters
        .end_ns
        .load(Ordering::Relaxed)
        .saturating_sub(start_ns)) as f64
        / 1e9;

    // Drain: wait for what is in flight, a bounded time.
    progress.note("draining");
    let expected = counters.expected.load(Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), collector.window().drained()).await;
    let server_after = cpu(&opts.server_pids);
    let node_after = per_node.map(cpu);
    let gen_after = proc_stats(std::process::id());
    let wall = start.elapsed().as_secs_f64();
    progress.finish();
    // All at once: a client's close waits a short grace for its connections to finish.
    futures::future::join_all(subscribers.into_iter().map(SubscriberConn::close)).await;
    if let Some(e) = publish_error {
        return Err(e.context("publishing failed"));
    }

    let last = collector.last_delivery_ns().max(start_ns);
    let receive_secs = ((last - start_ns) as f64 / 1e9).max(publish_secs.min(wall));
    let summary = collector.tally().summary(&Published {
        events: counters.events.load(Ordering::Relaxed),
        expected_deliveries: expected,
        publish_secs,
        receive_secs,
    });
    let delta = |before: &[Option<ProcStats>], after: &[Option<ProcStats>]| -> Option<(f64, u64)> {
        if before.is_empty() {
            return None;
        }
        let mut cpu_s = 0.0;
        let mut rss = 0;
        for (b, a) in before.iter().zip(after) {
            let (b, a) = ((*b)?, (*a)?);
            cpu_s += a.cpu_s - b.cpu_s;
            rss += a.rss_peak_bytes;
        }
        Some((cpu_s, rss))
    };
    let server = delta(&server_before, &server_after);
    let generator_cpu_s = match (gen_before, gen_after) {
        (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
        _ => 0.0,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let per_node_cpu_s = match (node_before, node_after) {
        (Some(b), Some(a)) => Some(
            b.iter()
                .zip(&a)
                .map(|(b, a)| match (b, a) {
                    (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
                    _ => 0.0,
                })
                .collect(),
        ),
        _ => None,
    };
    Ok(RunResult {
        scenario: params.scenario,
        target: target.kind(),
        variant: variant(params),
        params: params.clone(),
        summary,
        server_cpu_s: server.map(|s| s.0),
        server_rss_peak_bytes: server.map(|s| s.1),
        generator_cpu_s,
        generator_saturated: generator_cpu_s >= 0.9 * cores * wall,
        stalls: collector.window().stalls(),
        matchers: None,
        per_node_cpu_s,
        rep: None,
    })
}

#[derive(Debug, Default)]
struct Counters {
    seq: AtomicU64,
    end_ns: AtomicU64,
    events: AtomicU64,
    expected: AtomicU64,
}

const BATCH: u64 = 32;

async fn publish_loop(
    mut publisher: Publisher,
    plan: &Plan,
    collector: &Collector,
    counters: &Counters,
    payload: usize,
    stop_at: Instant,
    rate: Option<f64>,
) -> Result<()> {
    let clock = collector.clock();
    let nonce = collector.nonce();
    let server_filters = publisher.filters_on_server();
    let one = async |publisher: &mut Publisher| -> Result<()> {
        let seq = counters.seq.fetch_add(1, Ordering::Relaxed);
        let n = plan.expected(seq);
        let copies = plan.copies(seq, server_filters);
        if rate.is_none() && !collector.window().try_acquire(copies) {
            // Before waiting for deliveries, send what the client may still hold (a Redis
            // pipeline), or the wait would be for events not yet sent.
            publisher.flush().await?;
            collector.window().acquire(copies).await;
        }
        let k = Plan::key(seq);
        let stamp = Stamp {
            nonce,
            sent_ns: clock.now_ns(),
            seq,
            k,
        };
        publisher
            .publish(plan.topic(seq), stamp.payload(payload), k)
            .await?;
        counters.events.fetch_add(1, Ordering::Relaxed);
        counters.expected.fetch_add(n, Ordering::Relaxed);
        Ok(())
    };
    let result = async {
        match rate {
            None => {
                while Instant::now() < stop_at {
                    for _ in 0..BATCH {
                        one(&mut publisher).await?;
                    }
                    publisher.flush().await?;
                }
            }
            Some(rate) => {
                // Open loop: every millisecond, send what is owed by the offered rate.
                let start = Instant::now();
                let mut sent = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while Instant::now() < stop_at {
                    tick.tick().await;
                    let owed = (start.elapsed().as_secs_f64() * rate) as u64;
                    while sent < owed {
                        one(&mut publisher).await?;
                        sent += 1;
                    }
                    publisher.flush().await?;
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    counters.end_ns.fetch_max(clock.now_ns(), Ordering::Relaxed);
    publisher.close().await;
    result
}
