//! `sift bench compare-modes`: the same workload on a partitioned cluster (a coordinator and
//! N matcher processes) and on a gossip cluster (N `sift matcher --gossip` processes), and the
//! same questions asked of the simulator at 1,000–100,000 nodes.
//!
//! Measured on the real clusters: how long a new subscription takes to be visible from every
//! node (probes published at every node until each one's first probe arrives), gossip
//! messages and bytes per subscribe (the nodes' own counters, minus their idle traffic),
//! resident memory per node for S subscriptions, publish → notify latency with the publisher
//! and the subscriber on different nodes, delivered notifications per second (fan-in across
//! nodes), and what subscribers see when a node is killed (SIGKILL) under load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde::Serialize;
use sift_client::{Client, ClientConfig, Message, Value};
use sift_matcher_core::gossip::Strategy;
use sift_protocol::ring::Placement;

use crate::cluster::{start_cluster, start_gossip_cluster};
use crate::plan::{Params, Scenario};
use crate::procs::{rss_bytes, ServerProcess};
use crate::report::{bar_chart, spread, Spread};
use crate::run::{run, RunOptions};
use crate::sim::{simulate, Clock, SimConfig, Topology};
use crate::target::Target;

/// What to compare.
#[derive(Debug, Clone)]
pub struct ModesConfig {
    /// The `sift` binary the clusters run.
    pub exe: PathBuf,
    /// Matchers (partitioned) and nodes (gossip).
    pub nodes: usize,
    /// The gossip strategy.
    pub strategy: Strategy,
    /// The gossip tick.
    pub period: Duration,
    /// First port; the partitioned cluster takes `port ..= port + nodes`, the gossip cluster
    /// `port + 20 ..`.
    pub port: u16,
    /// The clusters' certificates and logs go here.
    pub dir: PathBuf,
    /// Subscriptions loaded for the memory and traffic measurement.
    pub subscriptions: usize,
    /// How long each load run publishes.
    pub duration: Duration,
    /// Subscriptions timed for propagation.
    pub trials: usize,
    /// Simulated cluster sizes.
    pub sim_sizes: Vec<usize>,
    /// `taskset -c` cores for the servers.
    pub cpus: Option<String>,
}

/// A cluster design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Coordinator + consistent-hash ring.
    Partitioned,
    /// No coordinator; every node holds every subscription.
    Gossip,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Partitioned => "partitioned",
            Mode::Gossip => "gossip",
        }
    }
}

/// What killing a node under load did to the subscribers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KillOutcome {
    /// The process killed.
    pub killed: String,
    /// Events published after the kill.
    pub published_after: u64,
    /// Subscribers connected to nodes that stayed up.
    pub survivors: usize,
    /// …their longest time without a notification after the kill (ms, the worst one).
    pub survivors_gap_ms: f64,
    /// …and events they missed (summed over them).
    pub survivors_missed: u64,
    /// Subscribers connected to the killed node (partitioned: every subscriber, all on the
    /// topic's owner).
    pub orphans: usize,
    /// …their longest gap (ms; the rest of the run when they never recovered).
    pub orphans_gap_ms: f64,
    /// …events they missed (summed over them).
    pub orphans_missed: u64,
    /// …and whether every one of them got notifications again before the end.
    pub orphans_recovered: bool,
}

/// One design's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// The design.
    pub mode: Mode,
    /// Matchers or gossip nodes.
    pub nodes: usize,
    /// Server processes (the coordinator included).
    pub processes: usize,
    /// Gossip strategy and tick, for gossip.
    pub strategy: Option<String>,
    /// Subscribe call round trip, ms (median over trials).
    pub subscribe_ms: f64,
    /// Until every node's probes reach the subscriber, ms: median, min, max over trials.
    pub propagation_ms: Spread,
    /// Gossip messages sent by all nodes while the subscriptions loaded.
    pub load_messages: u64,
    /// …of which the idle rate accounts for (anti-entropy digests that flow anyway).
    pub load_idle_messages: f64,
    /// Gossip bytes per loaded subscription, all nodes together, idle traffic removed.
    pub bytes_per_subscribe: f64,
    /// Gossip messages per second per node with nothing changing (anti-entropy digests).
    pub idle_messages_per_s: f64,
    /// Subscriptions loaded.
    pub subscriptions: usize,
    /// Resident memory per node after loading them, MiB (mean over nodes).
    pub rss_mib_per_node: f64,
    /// Its growth from loading them, bytes per loaded subscription per node.
    pub rss_growth_per_subscription: f64,
    /// Subscriptions each node holds (mean).
    pub held_per_node: f64,
    /// Publish → notify latency at 2,000 events/s, µs (publisher and subscriber on different
    /// nodes for gossip).
    pub latency_p50_us: f64,
    /// p99 of the same.
    pub latency_p99_us: f64,
    /// Fan-in across nodes: one publisher and one subscriber connection per node, 16 topics,
    /// every subscriber on every topic; delivered notifications per second.
    pub delivered_per_s: f64,
    /// Its delivery ratio.
    pub delivery_ratio: f64,
    /// The kill experiment.
    pub kill: KillOutcome,
}

/// A simulated cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct SimRow {
    /// Nodes.
    pub nodes: usize,
    /// Gossip: until the last node knows a new subscription, ms (period and latency as
    /// configured).
    pub gossip_propagation_ms: f64,
    /// Gossip: messages carrying the new subscription, whole cluster.
    pub gossip_carrying: f64,
    /// Gossip: every message sent while it spread (anti-entropy digests included, which
    /// flow whether or not anything changed).
    pub gossip_messages: f64,
    /// Gossip: bytes per subscribe, whole cluster.
    pub gossip_bytes: f64,
    /// Gossip: fraction of nodes reached.
    pub gossip_coverage: f64,
    /// Partitioned: one request/answer to the owner, ms.
    pub partitioned_propagation_ms: f64,
    /// Partitioned: messages per subscribe (request and answer; a pattern goes to every
    /// matcher).
    pub partitioned_messages: f64,
    /// Subscriptions held per node for 1,000,000 in the cluster: gossip.
    pub gossip_held_per_node: f64,
    /// The same, partitioned (exact topics).
    pub partitioned_held_per_node: f64,
}

/// Everything compare-modes measured.
#[derive(Debug, Clone, Serialize)]
pub struct ModesReport {
    /// Real clusters.
    pub clusters: Vec<ModeResult>,
    /// Simulator.
    pub sim: Vec<SimRow>,
    /// Simulated one-way latency, ms.
    pub sim_latency_ms: f64,
}

/// Runs the whole comparison; `progress` hears each step.
pub async fn compare_modes(
    config: &ModesConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<ModesReport> {
    if config.nodes < 2 || config.nodes > 16 {
        bail!("--nodes must be 2 to 16");
    }
    if usize::from(config.port) + 40 > usize::from(u16::MAX) {
        bail!("--port leaves no room for the clusters");
    }
    let mut clusters = Vec::new();
    for mode in [Mode::Partitioned, Mode::Gossip] {
        progress(&format!("{}: starting {} nodes", mode.name(), config.nodes));
        clusters.push(measure(config, mode, progress).await?);
    }
    progress("simulator");
    let sim_latency_ms = 0.5;
    let mut sim = Vec::new();
    for &n in &config.sim_sizes {
        let mut c = SimConfig::new(n, config.strategy, Topology::Complete);
        c.trials = if n >= 100_000 { 1 } else { 3 };
        c.clock = Clock::Continuous {
            period_us: config.period.as_micros() as u64,
            latency_us: (sim_latency_ms * 1000.0) as u64,
            poisson: false,
        };
        let r = simulate(&c)?;
        sim.push(SimRow {
            nodes: n,
            gossip_propagation_ms: r.t_last,
            gossip_carrying: r.traffic * n as f64,
            gossip_messages: r.messages,
            gossip_bytes: r.bytes,
            gossip_coverage: r.coverage,
            partitioned_propagation_ms: 2.0 * sim_latency_ms,
            partitioned_messages: 2.0,
            gossip_held_per_node: 1e6,
            partitioned_held_per_node: 1e6 / n as f64,
        });
    }
    Ok(ModesReport {
        clusters,
        sim,
        sim_latency_ms,
    })
}

struct Running {
    procs: Vec<ServerProcess>,
    /// Index in `procs` of each node (matcher or gossip node).
    node_procs: Vec<usize>,
    /// Each node's address (for a gossip cluster, where clients connect).
    node_addrs: Vec<SocketAddr>,
    config: ClientConfig,
}

impl Running {
    /// The SDK configuration for a client "at" node `i`: the node itself for gossip (the
    /// other nodes as fallbacks), the coordinator for the partitioned cluster (the SDK routes
    /// by topic).
    fn client_config(&self, mode: Mode, i: usize) -> ClientConfig {
        let mut c = self.config.clone();
        if mode == Mode::Gossip {
            let n = self.node_addrs.len();
            c.coordinator = self.node_addrs[i % n];
            c.fallbacks = (1..n).map(|k| self.node_addrs[(i + k) % n]).collect();
        }
        c
    }

    fn node_pids(&self) -> Vec<u32> {
        self.node_procs
            .iter()
            .map(|&i| self.procs[i].pid())
            .collect()
    }
}

async fn start(config: &ModesConfig, mode: Mode) -> Result<Running> {
    let dir = config.dir.join(mode.name());
    match mode {
        Mode::Partitioned => {
            let (procs, client) = start_cluster(
                &config.exe,
                config.nodes,
                config.port,
                &dir,
                config.cpus.as_deref(),
            )
            .await?;
            let node_addrs = (1..=config.nodes)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], config.port + i as u16)))
                .collect();
            Ok(Running {
                procs,
                node_procs: (1..=config.nodes).collect(),
                node_addrs,
                config: client,
            })
        }
        Mode::Gossip => {
            let (procs, client, node_addrs) = start_gossip_cluster(
                &config.exe,
                config.nodes,
                config.port + 20,
                &dir,
                config.cpus.as_deref(),
                &config.strategy.to_string(),
                config.period,
            )
            .await?;
            Ok(Running {
                procs,
                node_procs: (0..config.nodes).collect(),
                node_addrs,
                config: client,
            })
        }
    }
}

async fn connect(config: ClientConfig) -> Result<Client> {
    tokio::time::timeout(Duration::from_secs(20), Client::connect(config))
        .await
        .context("connecting took over 20 s")?
        .context("cannot connect")
}

/// Every counter summed over the nodes, read in one pass, and when the pass was halfway.
async fn counters(running: &Running) -> Result<(BTreeMap<String, u64>, Instant)> {
    let mut clients = Vec::new();
    for &addr in &running.node_addrs {
        let mut c = running.config.clone();
        c.coordinator = addr;
        clients.push(connect(c).await?);
    }
    let started = Instant::now();
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for client in &clients {
        for (k, v) in client.node_stats().await.context("node stats")? {
            *total.entry(k).or_default() += v;
        }
    }
    let at = started + started.elapsed() / 2;
    for client in clients {
        client.close().await;
    }
    Ok((total, at))
}

async fn measure(
    config: &ModesConfig,
    mode: Mode,
    progress: &mut dyn FnMut(&str),
) -> Result<ModeResult> {
    let running = start(config, mode).await?;
    let n = config.nodes;

    progress(&format!(
        "{}: propagation of {} subscriptions",
        mode.name(),
        config.trials
    ));
    let (subscribe_ms, propagation) = propagation(&running, mode, config.trials).await?;

    progress(&format!(
        "{}: loading {} subscriptions",
        mode.name(),
        config.subscriptions
    ));
    let get = |c: &BTreeMap<String, u64>, k: &str| c.get(k).copied().unwrap_or(0);
    let (c0, t0) = counters(&running).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c1, t1) = counters(&running).await?;
    let idle_s = (t1 - t0).as_secs_f64();
    let (sent1, bytes1) = (get(&c1, "gossip_sent"), get(&c1, "gossip_bytes"));
    let idle_rate = sent1.saturating_sub(get(&c0, "gossip_sent")) as f64 / idle_s;
    let idle_bytes_rate = bytes1.saturating_sub(get(&c0, "gossip_bytes")) as f64 / idle_s;
    let rss0: Vec<u64> = running
        .node_pids()
        .iter()
        .map(|&p| rss_bytes(p).unwrap_or(0))
        .collect();
    let (loaders, loaded) = load_subscriptions(&running, mode, config.subscriptions).await?;
    let held = if mode == Mode::Gossip {
        // Every node holds the others' subscriptions.
        settled(
            &running,
            config.subscriptions as u64,
            Duration::from_secs(60),
        )
        .await?;
        config.subscriptions as f64
    } else {
        config.subscriptions as f64 / n as f64
    };
    let (c2, t2) = counters(&running).await?;
    let elapsed = (t2 - t1).as_secs_f64();
    let (sent2, bytes2) = (get(&c2, "gossip_sent"), get(&c2, "gossip_bytes"));
    let rss1: Vec<u64> = running
        .node_pids()
        .iter()
        .map(|&p| rss_bytes(p).unwrap_or(0))
        .collect();
    let s = config.subscriptions as f64;
    let load_messages = sent2.saturating_sub(sent1);
    let load_idle_messages = idle_rate * elapsed;
    let bytes_per_subscribe =
        (bytes2.saturating_sub(bytes1) as f64 - idle_bytes_rate * elapsed).max(0.0) / s;
    let rss_mib_per_node = rss1.iter().sum::<u64>() as f64 / n as f64 / (1024.0 * 1024.0);
    let growth: f64 = rss1
        .iter()
        .zip(&rss0)
        .map(|(a, b)| a.saturating_sub(*b) as f64)
        .sum::<f64>()
        / n as f64;
    for c in loaders {
        c.close().await;
    }
    drop(loaded);

    progress(&format!("{}: latency and throughput", mode.name()));
    let target = match mode {
        Mode::Partitioned => Target::Sift(Box::new(running.config.clone())),
        Mode::Gossip => {
            Target::SiftNodes(Box::new(running.config.clone()), running.node_addrs.clone())
        }
    };
    let opts = RunOptions {
        server_pids: running.procs.iter().map(|p| p.pid()).collect(),
        quiet: true,
        ..RunOptions::default()
    };
    let mut latency = Params::new(Scenario::Latency);
    latency.rate = Some(2_000.0);
    latency.duration = config.duration;
    let lat = run(&target, &latency, &opts).await?.remove(0);
    let mut fanin = Params::new(Scenario::Fanin);
    fanin.publishers = n;
    fanin.subscribers = n;
    fanin.connections = n;
    fanin.topics = 16;
    fanin.duration = config.duration;
    let thr = run(&target, &fanin, &opts).await?.remove(0);

    progress(&format!("{}: killing a node under load", mode.name()));
    let kill = kill_under_load(running, mode).await?;
    Ok(ModeResult {
        mode,
        nodes: n,
        processes: if mode == Mode::Partitioned { n + 1 } else { n },
        strategy: (mode == Mode::Gossip)
            .then(|| format!("{} every {} ms", config.strategy, config.period.as_millis())),
        subscribe_ms,
        propagation_ms: propagation,
        load_messages,
        load_idle_messages,
        bytes_per_subscribe,
        idle_messages_per_s: idle_rate / n as f64,
        subscriptions: config.subscriptions,
        rss_mib_per_node,
        rss_growth_per_subscription: growth / held.max(1.0),
        held_per_node: held,
        latency_p50_us: lat.summary.latency_p50_us as f64,
        latency_p99_us: lat.summary.latency_p99_us as f64,
        delivered_per_s: thr.summary.delivered_per_s,
        delivery_ratio: thr.summary.delivery_ratio,
        kill,
    })
}

/// Subscribes on node 0, publishes probes at every node every 2 ms, and times each node's
/// first probe to arrive; returns the subscribe round trip (median, ms) and the time until
/// every node's probes arrive (ms, over trials).
async fn propagation(running: &Running, mode: Mode, trials: usize) -> Result<(f64, Spread)> {
    let n = running.node_addrs.len();
    let subscriber = connect(running.client_config(mode, 0)).await?;
    let mut probers = Vec::new();
    for i in 0..n {
        probers.push(connect(running.client_config(mode, i)).await?);
    }
    let mut acks = Vec::new();
    let mut all = Vec::new();
    let nonce: u64 = rand::random();
    for trial in 0..trials {
        let topic = format!("prop.{nonce:x}.{trial}");
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let mut sub = subscriber.subscribe(&topic).start().await?;
        acks.push(t0.elapsed().as_secs_f64() * 1e3);
        let probing = {
            let (stop, topic, probers) = (stop.clone(), topic.clone(), probers.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    for (i, p) in probers.iter().enumerate() {
                        let _ = p
                            .publish(Message::new(topic.clone()).attr("node", i as i64))
                            .await;
                    }
                }
            })
        };
        let mut seen: Vec<Option<f64>> = vec![None; n];
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(note) = sub.next().await {
                if let Some(Value::Int(i)) = note.event.attrs.get("node") {
                    let i = *i as usize;
                    if i < n && seen[i].is_none() {
                        seen[i] = Some(t0.elapsed().as_secs_f64() * 1e3);
                    }
                }
                if seen.iter().all(Option::is_some) {
                    break;
                }
            }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let _ = probing.await;
        let _ = sub.unsubscribe().await;
        if waited.is_err() {
            bail!(
                "{}: a subscription was not visible from every node within 10 s",
                mode.name()
            );
        }
        all.push(seen.iter().flatten().fold(0.0f64, |a, &b| a.max(b)));
    }
    subscriber.close().await;
    for p in probers {
        p.close().await;
    }
    let ack = spread(&acks).map_or(0.0, |s| s.median);
    Ok((ack, spread(&all).context("no trials")?))
}

/// `total` subscriptions, spread over one client per node; returns the clients and the
/// subscriptions (closing the clients ends them).
async fn load_subscriptions(
    running: &Running,
    mode: Mode,
    total: usize,
) -> Result<(Vec<Client>, Vec<sift_client::Subscription>)> {
    let n = running.node_addrs.len();
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for i in 0..n {
        let client = connect(running.client_config(mode, i)).await?;
        let mine = total / n + usize::from(i < total % n);
        let subscribing = (0..mine).map(|j| {
            let c = client.clone();
            async move {
                let topic = format!("load.{i}.{j}");
                c.subscribe(&topic)
                    .filter(format!("k == {j}"))
                    .start()
                    .await
            }
        });
        let subs: Vec<_> = futures::stream::iter(subscribing)
            .buffer_unordered(64)
            .collect()
            .await;
        for s in subs {
            held.push(s?);
        }
        clients.push(client);
    }
    Ok((clients, held))
}

/// One subscriber per node on one topic, a publisher at 500 events/s for 7 s; after 1 s the
/// node that hurts most is killed (partitioned: the topic's owner; gossip: a node with a
/// subscriber, not the publisher's).
async fn kill_under_load(mut running: Running, mode: Mode) -> Result<KillOutcome> {
    let n = running.node_addrs.len();
    let topic = "kill.t";
    let publisher = connect(running.client_config(mode, 0)).await?;
    let victim = match mode {
        Mode::Partitioned => {
            let ring = publisher.ring().context("no ring")?;
            let owner = Placement::new(&ring)
                .owner(topic)
                .context("empty ring")?
                .addr
                .clone();
            running
                .node_addrs
                .iter()
                .position(|a| a.to_string() == owner)
                .context("owner not found")?
        }
        Mode::Gossip => n - 1,
    };
    let mut arrivals: Vec<Arrivals> = Vec::new();
    let mut subscribers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..n {
        let client = connect(running.client_config(mode, i)).await?;
        let mut sub = client.subscribe(topic).start().await?;
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        arrivals.push(log.clone());
        readers.push(tokio::spawn(async move {
            while let Some(note) = sub.next().await {
                if let Some(Value::Int(seq)) = note.event.attrs.get("seq") {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((*seq as u64, Instant::now()));
                }
            }
        }));
        subscribers.push(client);
    }
    if mode == Mode::Gossip {
        // Every node's copy is in place before the clock starts.
        settled(&running, n as u64, Duration::from_secs(20)).await?;
    }
    let published = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let run_for = Duration::from_secs(7);
    let kill_at = Duration::from_secs(1);
    let pumping = {
        let (publisher, published) = (publisher.clone(), published.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let mut seq = 0i64;
            while start.elapsed() < run_for {
                tick.tick().await;
                seq += 1;
                published.store(seq as u64, Ordering::Relaxed);
                let _ = publisher
                    .publish(Message::new(topic).attr("seq", seq))
                    .await;
            }
        })
    };
    tokio::time::sleep_until((start + kill_at).into()).await;
    let killed_at = Instant::now();
    let seq_at_kill = published.load(Ordering::Relaxed);
    let proc_index = running.node_procs[victim];
    let killed = running.procs[proc_index].name().to_owned();
    running.procs.remove(proc_index).stop();
    let _ = pumping.await;
    let end = Instant::now();
    let last_seq = published.load(Ordering::Relaxed);
    // Let stragglers arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut outcome = KillOutcome {
        killed,
        published_after: last_seq.saturating_sub(seq_at_kill),
        orphans_recovered: true,
        ..KillOutcome::default()
    };
    for (i, log) in arrivals.iter().enumerate() {
        let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut times: Vec<Instant> = log
            .iter()
            .filter(|(_, t)| *t >= killed_at)
            .map(|(_, t)| *t)
            .collect();
        times.sort();
        let mut gap = Duration::ZERO;
        let mut prev = killed_at;
        for &t in &times {
            gap = gap.max(t - prev);
            prev = t;
        }
        gap = gap.max(end.saturating_duration_since(prev));
        let got: std::collections::HashSet<u64> = log
            .iter()
            .map(|(s, _)| *s)
            .filter(|&s| s > seq_at_kill)
            .collect();
        let missed = (seq_at_kill + 1..=last_seq)
            .filter(|s| !got.contains(s))
            .count() as u64;
        // In the partitioned cluster every subscriber sat on the killed owner.
        let orphan = mode == Mode::Partitioned || i == victim;
        let gap_ms = gap.as_secs_f64() * 1e3;
        if orphan {
            outcome.orphans += 1;
            outcome.orphans_gap_ms = outcome.orphans_gap_ms.max(gap_ms);
            outcome.orphans_missed += missed;
            if times.is_empty() || end.saturating_duration_since(prev) > Duration::from_secs(1) {
                outcome.orphans_recovered = false;
            }
        } else {
            outcome.survivors += 1;
            outcome.survivors_gap_ms = outcome.survivors_gap_ms.max(gap_ms);
            outcome.survivors_missed += missed;
        }
    }
    for r in readers {
        r.abort();
    }
    publisher.close().await;
    for c in subscribers {
        c.close().await;
    }
    for p in running.procs {
        p.stop();
    }
    Ok(outcome)
}

/// Waits until a gossip cluster has settled with at least `local` subscriptions: every node
/// holds a copy of every other node's subscriptions (copies = subscriptions × (N − 1)), so
/// leftovers of earlier steps still being removed do not count.
async fn settled(running: &Running, local: u64, within: Duration) -> Result<()> {
    let n = running.node_addrs.len() as u64;
    let deadline = Instant::now() + within;
    loop {
        let (c, _) = counters(running).await?;
        let subs = c.get("subscriptions").copied().unwrap_or(0);
        let remote = c.get("remote_subscriptions").copied().unwrap_or(0);
        if subs >= local && remote == subs * (n - 1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "gossip: {remote} copies of {subs} subscriptions after {within:?}, not {}",
                subs * (n - 1)
            );
        }
        // Gossip spreads in ticks: look again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscriber's (sequence number, arrival time) log.
type Arrivals = Arc<std::sync::Mutex<Vec<(u64, Instant)>>>;

fn one(v: f64) -> Spread {
    Spread {
        median: v,
        min: v,
        max: v,
    }
}

/// Writes `results.json`, `tables.md` and `plots/*.svg` into `out`.
pub fn write_report(report: &ModesReport, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out.join("plots"))?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.join("tables.md"), tables(report))?;
    let by_mode = |f: &dyn Fn(&ModeResult) -> Spread| -> Vec<(String, Spread)> {
        report
            .clusters
            .iter()
            .map(|r| (r.mode.name().to_owned(), f(r)))
            .collect()
    };
    let plots: Vec<(&str, String)> = vec![
        (
            "propagation",
            bar_chart(
                "New subscription visible from every node (ms)",
                &[
                    ("propagation", &by_mode(&|r| r.propagation_ms)),
                    ("subscribe call", &by_mode(&|r| one(r.subscribe_ms))),
                ],
            )?,
        ),
        (
            "latency",
            bar_chart(
                "Publish → notify latency at 2,000/s (µs)",
                &[
                    ("p50", &by_mode(&|r| one(r.latency_p50_us))),
                    ("p99", &by_mode(&|r| one(r.latency_p99_us))),
                ],
            )?,
        ),
        (
            "throughput",
            bar_chart(
                "Fan-in across nodes, delivered/s",
                &[("delivered/s", &by_mode(&|r| one(r.delivered_per_s)))],
            )?,
        ),
        (
            "memory",
            bar_chart(
                "Subscriptions held per node",
                &[("held per node", &by_mode(&|r| one(r.held_per_node)))],
            )?,
        ),
        (
            "kill",
            bar_chart(
                "Longest gap after a node is killed (ms)",
                &[
                    ("survivors", &by_mode(&|r| one(r.kill.survivors_gap_ms))),
                    ("its subscribers", &by_mode(&|r| one(r.kill.orphans_gap_ms))),
                ],
            )?,
        ),
        (
            "sim-propagation",
            bar_chart(
                "Simulated propagation (ms) by cluster size",
                &[
                    (
                        "partitioned",
                        &report
                            .sim
                            .iter()
                            .map(|s| (format!("N={}", s.nodes), one(s.partitioned_propagation_ms)))
                            .collect::<Vec<_>>(),
                    ),
                    (
                        "gossip",
                        &report
                            .sim
                            .iter()
                            .map(|s| (format!("N={}", s.nodes), one(s.gossip_propagation_ms)))
                            .collect::<Vec<_>>(),
                    ),
                ],
            )?,
        ),
        (
            "sim-messages",
            bar_chart(
                "Simulated messages carrying one subscribe, by cluster size",
                &[
                    (
                        "partitioned",
                        &report
                            .sim
                            .iter()
                            .map(|s| (format!("N={}", s.nodes), one(s.partitioned_messages)))
                            .collect::<Vec<_>>(),
                    ),
                    (
                        "gossip",
                        &report
                            .sim
                            .iter()
                            .map(|s| (format!("N={}", s.nodes), one(s.gossip_carrying)))
                            .collect::<Vec<_>>(),
                    ),
                ],
            )?,
        ),
    ];
    for (name, svg) in plots {
        std::fs::write(out.join("plots").join(format!("{name}.svg")), svg)?;
    }
    Ok(())
}

/// The report's tables in markdown.
pub fn tables(report: &ModesReport) -> String {
    let mut rows: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut order = Vec::new();
    let mut add = |name: &'static str, f: &dyn Fn(&ModeResult) -> String| {
        order.push(name);
        rows.insert(name, report.clusters.iter().map(f).collect());
    };
    add("server processes", &|r| r.processes.to_string());
    add("subscribe call (median, ms)", &|r| {
        format!("{:.2}", r.subscribe_ms)
    });
    add("visible from every node (median [min–max], ms)", &|r| {
        format!(
            "{:.1} [{:.1}–{:.1}]",
            r.propagation_ms.median, r.propagation_ms.min, r.propagation_ms.max
        )
    });
    add(
        "gossip messages while loading (idle rate would give)",
        &|r| format!("{} ({:.0})", r.load_messages, r.load_idle_messages),
    );
    add("gossip bytes per subscribe (all nodes)", &|r| {
        format!("{:.0}", r.bytes_per_subscribe)
    });
    add("idle gossip messages/s per node", &|r| {
        format!("{:.1}", r.idle_messages_per_s)
    });
    add("subscriptions held per node", &|r| {
        format!("{:.0} of {}", r.held_per_node, r.subscriptions)
    });
    add("RSS per node after loading (MiB)", &|r| {
        format!("{:.1}", r.rss_mib_per_node)
    });
    add("RSS growth per held subscription (bytes)", &|r| {
        format!("{:.0}", r.rss_growth_per_subscription)
    });
    add("latency p50 / p99 at 2,000/s (µs)", &|r| {
        format!("{:.0} / {:.0}", r.latency_p50_us, r.latency_p99_us)
    });
    add("fan-in across nodes, delivered/s (ratio)", &|r| {
        format!("{:.0} ({:.3})", r.delivered_per_s, r.delivery_ratio)
    });
    add("killed", &|r| r.kill.killed.clone());
    add(
        "subscribers on surviving nodes: longest gap (ms), missed per subscriber",
        &|r| {
            if r.kill.survivors == 0 {
                "– (every subscriber was on the killed owner)".into()
            } else {
                format!(
                    "{:.0}, {:.0}",
                    r.kill.survivors_gap_ms,
                    r.kill.survivors_missed as f64 / r.kill.survivors as f64
                )
            }
        },
    );
    add(
        "subscribers on the killed node: longest gap (ms), missed per subscriber, recovered",
        &|r| {
            format!(
                "{:.0}, {:.0} of {}, {}",
                r.kill.orphans_gap_ms,
                r.kill.orphans_missed as f64 / r.kill.orphans.max(1) as f64,
                r.kill.published_after,
                if r.kill.orphans_recovered {
                    "yes"
                } else {
                    "no"
                }
            )
        },
    );
    let mut md = String::from("| | ");
    md += &report
        .clusters
        .iter()
        .map(|r| r.mode.name())
        .collect::<Vec<_>>()
        .join(" | ");
    md += " |\n|---|";
    md += &"---|".repeat(report.clusters.len());
    md += "\n";
    for name in order {
        md += &format!("| {name} | {} |\n", rows[name].join(" | "));
    }
    md += &format!(
        "\nSimulator (continuous time, one-way latency {} ms; gossip ticks as configured; partitioned figures are one request/answer to the owner):\n\n\
         | nodes | gossip: last node knows (ms) | gossip: messages carrying it | gossip: all messages meanwhile | gossip: bytes meanwhile | gossip coverage | partitioned (ms) | partitioned messages | held per node of 1M: gossip / partitioned |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        report.sim_latency_ms
    );
    for s in &report.sim {
        md += &format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.4} | {:.1} | {:.0} | {:.0} / {:.0} |\n",
            s.nodes,
            s.gossip_propagation_ms,
            s.gossip_carrying,
            s.gossip_messages,
            s.gossip_bytes,
            s.gossip_coverage,
            s.partitioned_propagation_ms,
            s.partitioned_messages,
            s.gossip_held_per_node,
            s.partitioned_held_per_node
        );
    }
    md
}
