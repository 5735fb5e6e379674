//! `sift bench chaos`: a real cluster of separate `sift coordinator` and `sift matcher`
//! processes under SDK load (acknowledged publishes pipelined; exact, pattern, filtered and
//! group subscribers in both delivery modes) while a seeded schedule of faults hits it —
//! join, drain, remove, SIGTERM (lame-duck drain), SIGKILL, SIGSTOP/SIGCONT, a coordinator
//! SIGKILL, a network partition of one matcher (network namespaces). Then the client-side
//! histories are checked (`history`) and written as JSON, markdown and a timeline plot.

pub mod history;
pub mod procs;
pub mod report;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sift_client::{Client, ClientConfig, Message};
use tokio::sync::watch;
use tracing::{info, warn};

use self::history::{DeliveryRecord, PublishRecord, SubscriberHistory, Verdict};
use self::procs::{netns_available, ChaosCluster};

/// A fault the harness can apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A new matcher joins.
    Join,
    /// `sift admin drain` of a matcher (it keeps running, out of the ring).
    Drain,
    /// A drained matcher is removed (`sift admin remove`) and stopped.
    Remove,
    /// SIGTERM: the matcher's lame-duck drain, then it exits; it is started again.
    Term,
    /// SIGKILL of a matcher, started again 2 s later.
    Kill,
    /// SIGSTOP of a matcher for 3 s, then SIGCONT.
    Pause,
    /// SIGKILL of the coordinator, started again 1.5 s later.
    CoordinatorKill,
    /// A matcher cut off the network (its namespace's link down) for the partition time.
    Partition,
}

impl FaultKind {
    /// Every fault, in the default schedule's order.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Join,
        FaultKind::Drain,
        FaultKind::Remove,
        FaultKind::Term,
        FaultKind::Pause,
        FaultKind::CoordinatorKill,
        FaultKind::Kill,
        FaultKind::Partition,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::Join => "join",
            FaultKind::Drain => "drain",
            FaultKind::Remove => "remove",
            FaultKind::Term => "term",
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::CoordinatorKill => "coordinator-kill",
            FaultKind::Partition => "partition",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<FaultKind, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {s:?}; one of {}", names.join(", "))
            })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// The `sift` binary.
    pub exe: PathBuf,
    /// Certificates, logs and reports go here.
    pub dir: PathBuf,
    /// The coordinator's port; matchers take the ports after it.
    pub port: u16,
    /// Matchers at the start.
    pub matchers: usize,
    /// How long publishers publish.
    pub duration: Duration,
    /// Seeds the choice of targets (and the order, with `shuffle`).
    pub seed: u64,
    /// The faults, spread evenly over the run.
    pub faults: Vec<FaultKind>,
    /// Shuffle the faults' order (seeded).
    pub shuffle: bool,
    /// Publisher clients.
    pub publishers: usize,
    /// Acknowledged publishes in flight per publisher.
    pub in_flight: usize,
    /// Publishes per second per publisher.
    pub rate: u32,
    /// Topics (`chaos.t0` …).
    pub topics: usize,
    /// How long a partition lasts.
    pub partition: Duration,
    /// After the last publish, how long subscribers keep reading (redeliveries).
    pub settle: Duration,
    /// Extra `sift coordinator` flags.
    pub coordinator_flags: Vec<String>,
    /// Extra `sift matcher` flags.
    pub matcher_flags: Vec<String>,
    /// The replication factor the coordinator was given (for the report).
    pub replicas: u32,
    /// Idle exact-topic subscriptions loaded before the faults (`load.<i>`, never
    /// published to), so that handoffs and drains move a realistic amount.
    pub load: usize,
}

impl ChaosConfig {
    /// Defaults for the `sift` binary `exe`, writing into `dir`.
    pub fn new(exe: PathBuf, dir: PathBuf) -> ChaosConfig {
        ChaosConfig {
            exe,
            dir,
            port: 7700,
            matchers: 3,
            duration: Duration::from_secs(30),
            seed: 1,
            faults: FaultKind::ALL.to_vec(),
            shuffle: false,
            publishers: 4,
            in_flight: 64,
            rate: 250,
            topics: 8,
            partition: Duration::from_secs(10),
            settle: Duration::from_secs(4),
            coordinator_flags: Vec::new(),
            matcher_flags: vec!["--drain-grace".into(), "1s".into()],
            replicas: 1,
            load: 0,
        }
    }
}

/// One fault as applied.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    /// When it started (ms since the run started).
    pub at_ms: u64,
    /// When it was over (the process back, the partition healed…).
    pub until_ms: u64,
    /// What.
    pub kind: FaultKind,
    /// On which matcher (or the coordinator).
    pub target: String,
    /// What happened (exit status, drain time…).
    pub detail: String,
    /// The longest stretch without any delivery around it, in ms.
    pub gap_ms: u64,
    /// The longest pause of one topic's deliveries to one subscription (or group) in the
    /// fault's window (from the fault to 2 s after it was over), in ms.
    #[serde(default)]
    pub topic_pause_ms: u64,
}

/// How long topics' deliveries paused, per (subscription or group, topic) and window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopicPauses {
    /// Around joins, drains, removals and SIGTERM drains (the handoffs).
    pub handoffs: Option<history::Spread>,
    /// Around the other faults (kills, pauses, partitions, coordinator kills).
    pub other_faults: Option<history::Spread>,
    /// In windows of the same length with no fault (the box's own jitter).
    pub quiet: Option<history::Spread>,
}

/// A run's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// Matchers at the start.
    pub matchers: usize,
    /// The replication factor.
    pub replicas: u32,
    /// Publishing time, ms.
    pub duration_ms: u64,
    /// Publishers × rate.
    pub publish_rate: u64,
    /// The faults.
    pub faults: Vec<FaultRecord>,
    /// Faults asked for that could not run here, and why.
    pub skipped: Vec<String>,
    /// The histories' verdict.
    pub verdict: Verdict,
    /// Subscriptions that ended during the run (none should: the SDK renews leases and
    /// places subscriptions again), with when.
    pub ended: Vec<(String, u64)>,
    /// Acknowledged publishes that failed (the SDK gave up).
    pub failed_publishes: u64,
    /// Up to five of their errors.
    pub publish_errors: Vec<String>,
    /// Notifications received in all.
    pub delivered: usize,
    /// Deliveries per 100 ms.
    pub timeline: Vec<u64>,
    /// Per-topic delivery pauses around faults and in quiet windows.
    #[serde(default)]
    pub topic_pauses: TopicPauses,
}

/// One subscription the harness holds.
struct SubPlan {
    name: String,
    unit: String,
    pattern: String,
    k_in: Option<Vec<i64>>,
    alo: bool,
    group: Option<String>,
}

fn plans(topics: usize) -> Vec<SubPlan> {
    let mut v = Vec::new();
    for alo in [false, true] {
        let mode = if alo { "alo" } else { "amo" };
        for t in 0..topics {
            let name = format!("exact-t{t}-{mode}");
            v.push(SubPlan {
                unit: name.clone(),
                name,
                pattern: format!("chaos.t{t}"),
                k_in: None,
                alo,
                group: None,
            });
        }
        v.push(SubPlan {
            name: format!("pattern-{mode}"),
            unit: format!("pattern-{mode}"),
            pattern: "chaos.>".into(),
            k_in: None,
            alo,
            group: None,
        });
        v.push(SubPlan {
            name: format!("filtered-{mode}"),
            unit: format!("filtered-{mode}"),
            pattern: "chaos.*".into(),
            k_in: Some(vec![1]),
            alo,
            group: None,
        });
        for member in 0..2 {
            v.push(SubPlan {
                name: format!("group-{mode}-{member}"),
                unit: format!("group-{mode}"),
                pattern: "chaos.>".into(),
                k_in: None,
                alo,
                group: Some(format!("workers-{mode}")),
            });
        }
    }
    v
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Runs the harness.
pub async fn run_chaos(config: &ChaosConfig) -> Result<ChaosReport> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("cannot create {}", config.dir.display()))?;
    let mut faults = config.faults.clone();
    let mut skipped = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    if config.shuffle {
        faults.shuffle(&mut rng);
    }
    let mut namespaces = false;
    if faults.contains(&FaultKind::Partition) {
        match netns_available() {
            Ok(()) => namespaces = true,
            Err(why) => {
                warn!(%why, "partition faults skipped");
                skipped.push(format!("partition: {why}"));
                faults.retain(|f| *f != FaultKind::Partition);
            }
        }
    }
    let mut cluster = ChaosCluster::start(
        &config.exe,
        &config.dir,
        config.port,
        config.matchers,
        namespaces,
        config.coordinator_flags.clone(),
        config.matcher_flags.clone(),
    )?;
    let result = drive(config, &mut cluster, &faults, &mut rng).await;
    cluster.stop();
    let Histories {
        publishes,
        subscribers: histories,
        faults: records,
        duration_ms,
        failed,
        errors,
    } = result?;
    let mut verdict = history::check(&publishes, &histories);
    verdict.units.sort_by(|a, b| a.unit.cmp(&b.unit));
    let until = histories
        .iter()
        .flat_map(|h| h.deliveries.iter().map(|d| d.at_ms))
        .max()
        .unwrap_or(0);
    let mut faults_out = records;
    for (i, f) in faults_out.clone().iter().enumerate() {
        let next = faults_out
            .get(i + 1)
            .map_or(until, |n| n.at_ms)
            .max(f.until_ms);
        faults_out[i].gap_ms = history::gap_around(&histories, f.at_ms, next - f.at_ms);
    }
    let topic_pauses = pauses(&publishes, &histories, &mut faults_out, until);
    let report = ChaosReport {
        seed: config.seed,
        matchers: config.matchers,
        replicas: config.replicas,
        duration_ms,
        publish_rate: config.publishers as u64 * u64::from(config.rate),
        faults: faults_out,
        skipped,
        failed_publishes: failed,
        publish_errors: errors,
        delivered: histories.iter().map(|h| h.deliveries.len()).sum(),
        ended: histories
            .iter()
            .filter_map(|h| h.ended_ms.map(|at| (h.name.clone(), at)))
            .collect(),
        timeline: history::timeline(&histories, 100, until),
        verdict,
        topic_pauses,
    };
    report::write(&config.dir, &report)?;
    let raw = serde_json::json!({ "publishes": publishes, "subscribers": histories });
    std::fs::write(config.dir.join("chaos-histories.json"), raw.to_string())?;
    Ok(report)
}

/// How long after a fault is over its window for per-topic pauses lasts (a join's handoff
/// happens after the process started; a drain's clients move after the ring changed).
const PAUSE_WINDOW_AFTER_MS: u64 = 2_000;

/// Per-topic pauses in each fault's window (written into `faults`) and, as a baseline, in
/// windows of the same length between them with no fault running.
fn pauses(
    publishes: &[PublishRecord],
    histories: &[SubscriberHistory],
    faults: &mut [FaultRecord],
    until: u64,
) -> TopicPauses {
    let mut windows = Vec::new();
    let mut quiet = Vec::new();
    // Before the first fault, once subscriptions are flowing.
    let mut free_from = 1_000u64;
    for (i, f) in faults.iter().enumerate() {
        let next = faults.get(i + 1).map_or(until, |n| n.at_ms);
        if f.at_ms >= free_from + 500 {
            quiet.push((free_from, f.at_ms.min(free_from + PAUSE_WINDOW_AFTER_MS)));
        }
        let end = (f.until_ms.max(f.at_ms) + PAUSE_WINDOW_AFTER_MS).min(next.max(f.at_ms + 1));
        windows.push((f.at_ms, end));
        free_from = end;
    }
    if until >= free_from + 500 {
        quiet.push((free_from, until.min(free_from + PAUSE_WINDOW_AFTER_MS)));
    }
    // Pairs with fewer than 100 deliveries over the run are too sparse to measure a pause.
    let per_fault = history::topic_pauses(publishes, histories, &windows, 100);
    let per_quiet = history::topic_pauses(publishes, histories, &quiet, 100);
    let mut handoffs = Vec::new();
    let mut other = Vec::new();
    for (f, p) in faults.iter_mut().zip(&per_fault) {
        f.topic_pause_ms = p.iter().copied().max().unwrap_or(0);
        let handoff = matches!(
            f.kind,
            FaultKind::Join | FaultKind::Drain | FaultKind::Remove | FaultKind::Term
        );
        if handoff { &mut handoffs } else { &mut other }.extend(p.iter().copied());
    }
    TopicPauses {
        handoffs: history::Spread::of(handoffs),
        other_faults: history::Spread::of(other),
        quiet: history::Spread::of(per_quiet.into_iter().flatten()),
    }
}

struct Histories {
    publishes: Vec<PublishRecord>,
    subscribers: Vec<SubscriberHistory>,
    faults: Vec<FaultRecord>,
    duration_ms: u64,
    failed: u64,
    errors: Vec<String>,
}

async fn connect(config: &ClientConfig) -> Result<Client> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(c) = Client::connect(config.clone()).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the coordinator did not answer within 20 s")
}

async fn drive(
    config: &ChaosConfig,
    cluster: &mut ChaosCluster,
    faults: &[FaultKind],
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Histories> {
    let addr = cluster
        .coordinator_addr()
        .parse()
        .context("coordinator address")?;
    let client_config = ClientConfig::new(addr, cluster.ca_pem()?);
    let admin = connect(&client_config).await?;
    let mut ring = admin.watch_ring();
    let n = config.matchers;
    tokio::time::timeout(
        Duration::from_secs(20),
        ring.wait_for(|p| p.as_ref().is_some_and(|p| p.members().len() == n)),
    )
    .await
    .context("the ring did not reach its matchers within 20 s")?
    .context("ring watch")?;
    let start = Instant::now();

    // Subscribers. A roomy client buffer: an at-most-once notification the application
    // does not take in time is dropped by design, and the harness measures the cluster, not
    // its own recorder.
    let mut sub_config = client_config.clone();
    sub_config.buffer_len = 1 << 16;
    let subscriber = connect(&sub_config).await?;
    let mut recorders = Vec::new();
    for plan in plans(config.topics) {
        let mut b = subscriber.subscribe(plan.pattern.clone());
        if let Some(ks) = &plan.k_in {
            let list: Vec<String> = ks.iter().map(i64::to_string).collect();
            b = b.filter(format!("k in [{}]", list.join(", ")));
        }
        if let Some(g) = &plan.group {
            b = b.group(g.clone());
        }
        if plan.alo {
            b = b.at_least_once();
        }
        let mut sub = b
            .start()
            .await
            .with_context(|| format!("subscribe {}", plan.name))?;
        let history = Arc::new(Mutex::new(SubscriberHistory {
            name: plan.name.clone(),
            unit: plan.unit.clone(),
            pattern: plan.pattern.clone(),
            k_in: plan.k_in.clone(),
            mode: if plan.alo {
                "at-least-once"
            } else {
                "at-most-once"
            }
            .into(),
            live_from_ms: Some(ms(start)),
            ended_ms: None,
            deliveries: Vec::new(),
        }));
        let h = history.clone();
        let task = tokio::spawn(async move {
            while let Some(n) = sub.next().await {
                let rec = DeliveryRecord {
                    id: n.event.id,
                    at_ms: ms(start),
                };
                h.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .deliveries
                    .push(rec);
                if n.needs_ack() {
                    let _ = n.ack().await;
                }
            }
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            h.ended_ms = Some(ms(start));
            warn!(sub = %h.name, reason = ?sub.end_reason(), "subscription ended");
            drop(h);
            sub
        });
        recorders.push((history, task));
    }

    // Idle load: subscriptions to hand over.
    let mut loaded = Vec::new();
    if config.load > 0 {
        let t0 = Instant::now();
        loaded = load(&client_config, config.load).await?;
        info!(
            subscriptions = config.load,
            ms = t0.elapsed().as_millis() as u64,
            "idle subscriptions loaded"
        );
    }

    // Publishers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut publishers = Vec::new();
    for p in 0..config.publishers {
        let client = connect(&client_config).await?;
        let mut stop = stop_rx.clone();
        let (topics, rate, in_flight) =
            (config.topics, config.rate.max(1), config.in_flight.max(1));
        publishers.push(tokio::spawn(async move {
            let mut records = Vec::new();
            let mut failed = 0u64;
            let mut errors: Vec<String> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pending = FuturesUnordered::new();
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick(), if pending.len() < in_flight => {
                        let topic = format!("chaos.t{}", (n as usize + p) % topics);
                        let k = (n % 4) as i64;
                        n += 1;
                        let sent = ms(start);
                        let msg = Message::new(topic.clone()).attr("k", k).attr("p", p as i64);
                        let c = &client;
                        pending.push(async move {
                            let r = c.publish_acked(msg).await;
                            (r, topic, k, sent, ms(start))
                        });
                    }
                    Some(done) = pending.next(), if !pending.is_empty() => {
                        record(done, &mut records, &mut failed, &mut errors);
                    }
                }
            }
            while let Some(done) = pending.next().await {
                record(done, &mut records, &mut failed, &mut errors);
            }
            drop(pending);
            client.close().await;
            (records, failed, errors)
        }));
    }

    // Faults, evenly spread between 2 s in and 2 s before the end.
    let warm = Duration::from_secs(2).min(config.duration / 4);
    let span = config.duration.saturating_sub(warm * 2);
    let step = span / (faults.len() as u32 + 1).max(1);
    let mut records = Vec::new();
    let mut drained: Vec<String> = Vec::new();
    for (i, &kind) in faults.iter().enumerate() {
        let at = warm + step * (i as u32 + 1);
        let now = start.elapsed();
        if at > now {
            tokio::time::sleep(at - now).await;
        }
        let at_ms = ms(start);
        let in_ring: Vec<String> = admin
            .ring()
            .map(|r| r.members.into_iter().map(|m| m.id).collect())
            .unwrap_or_default();
        let pick = |rng: &mut rand_chacha::ChaCha8Rng, among: &[String]| among.choose(rng).cloned();
        let serving: Vec<String> = cluster
            .running()
            .into_iter()
            .filter(|id| in_ring.contains(id))
            .collect();
        info!(%kind, at_ms, "fault");
        let (target, detail) = match kind {
            FaultKind::Join => {
                let id = cluster.add_matcher()?;
                (id, "started".to_owned())
            }
            FaultKind::Drain | FaultKind::Remove if serving.len() < 2 && drained.is_empty() => (
                "-".into(),
                "skipped: fewer than two matchers serving".into(),
            ),
            FaultKind::Drain => {
                let id = pick(rng, &serving).context("no matcher")?;
                let t0 = Instant::now();
                match admin.admin_drain(&id).await {
                    Ok(()) => {
                        let left = wait_ring(
                            &mut ring,
                            |m| !m.contains(&id.as_str()),
                            Duration::from_secs(30),
                        )
                        .await;
                        drained.push(id.clone());
                        let took = t0.elapsed().as_millis();
                        let what = if left {
                            "left the ring"
                        } else {
                            "still in the ring"
                        };
                        (id, format!("{what} after {took} ms"))
                    }
                    Err(e) => (id, format!("drain refused: {e}")),
                }
            }
            FaultKind::Remove => {
                let id = match drained.pop() {
                    Some(id) => id,
                    None => {
                        let id = pick(rng, &serving).context("no matcher")?;
                        admin.admin_drain(&id).await.context("admin drain")?;
                        wait_ring(
                            &mut ring,
                            |m| !m.contains(&id.as_str()),
                            Duration::from_secs(30),
                        )
                        .await;
                        id
                    }
                };
                match admin.admin_remove(&id).await {
                    Ok(()) => {
                        cluster.signal(&id, "TERM").ok();
                        let code = cluster.wait_exit(&id, Duration::from_secs(30)).await;
                        (id, format!("removed; exit {code:?}"))
                    }
                    Err(e) => (id, format!("remove refused: {e}")),
                }
            }
            FaultKind::Term | FaultKind::Kill | FaultKind::Pause | FaultKind::Partition
                if serving.len() < 2 =>
            {
                (
                    "-".into(),
                    "skipped: fewer than two matchers serving".into(),
                )
            }
            FaultKind::Term => {
                let id = pick(rng, &serving).context("no matcher")?;
                let t0 = Instant::now();
                cluster.signal(&id, "TERM")?;
                let code = cluster.wait_exit(&id, Duration::from_secs(60)).await;
                let took = t0.elapsed().as_millis();
                cluster.start_matcher(&id)?;
                (
                    id,
                    format!("lame-duck drain and exit in {took} ms, exit {code:?}; started again"),
                )
            }
            FaultKind::Kill => {
                let id = pick(rng, &serving).context("no matcher")?;
                cluster.kill_matcher(&id);
                tokio::time::sleep(Duration::from_secs(2)).await;
                cluster.start_matcher(&id)?;
                (id, "SIGKILL; started again after 2 s".into())
            }
            FaultKind::Pause => {
                let id = pick(rng, &serving).context("no matcher")?;
                cluster.signal(&id, "STOP")?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.signal(&id, "CONT")?;
                (id, "SIGSTOP for 3 s".into())
            }
            FaultKind::CoordinatorKill => {
                cluster.kill_coordinator();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                cluster.start_coordinator()?;
                (
                    "coordinator".into(),
                    "SIGKILL; started again after 1.5 s".into(),
                )
            }
            FaultKind::Partition => {
                let id = pick(rng, &serving).context("no matcher")?;
                let ns = cluster
                    .matchers
                    .get(&id)
                    .and_then(|m| m.netns.as_ref())
                    .context("the matcher has no namespace")?;
                ns.set_link(false)?;
                tokio::time::sleep(config.partition).await;
                let ns = cluster
                    .matchers
                    .get(&id)
                    .and_then(|m| m.netns.as_ref())
                    .context("the matcher has no namespace")?;
                ns.set_link(true)?;
                (
                    id,
                    format!("cut off for {} ms", config.partition.as_millis()),
                )
            }
        };
        info!(%kind, %target, %detail, "fault done");
        records.push(FaultRecord {
            at_ms,
            until_ms: ms(start),
            kind,
            target,
            detail,
            gap_ms: 0,
            topic_pause_ms: 0,
        });
    }
    let now = start.elapsed();
    if config.duration > now {
        tokio::time::sleep(config.duration - now).await;
    }
    let duration_ms = ms(start);
    let _ = stop_tx.send(true);
    let mut publishes = Vec::new();
    let mut failed = 0;
    let mut errors = Vec::new();
    for p in publishers {
        let (r, f, e) = p.await.context("publisher task")?;
        publishes.extend(r);
        failed += f;
        errors.extend(e);
    }
    errors.truncate(5);
    if failed > 0 {
        info!(failed, "publishes never acknowledged");
    }
    tokio::time::sleep(config.settle).await;
    let histories: Vec<SubscriberHistory> = recorders
        .iter()
        .map(|(h, _)| h.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .collect();
    for (_, task) in recorders {
        task.abort();
    }
    for (client, subs) in loaded {
        drop(subs);
        client.close().await;
    }
    subscriber.close().await;
    admin.close().await;
    if publishes.is_empty() {
        bail!("no publish was acknowledged");
    }
    Ok(Histories {
        publishes,
        subscribers: histories,
        faults: records,
        duration_ms,
        failed,
        errors,
    })
}

/// Waits (bounded) until the ring's member ids satisfy `done`; whether they did.
async fn wait_ring(
    ring: &mut watch::Receiver<Option<Arc<sift_protocol::ring::Placement>>>,
    done: impl Fn(&[&str]) -> bool,
    timeout: Duration,
) -> bool {
    tokio::time::timeout(
        timeout,
        ring.wait_for(|p| {
            p.as_ref().is_some_and(|p| {
                let ids: Vec<&str> = p.members().iter().map(|m| m.id.as_str()).collect();
                done(&ids)
            })
        }),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// Loads `n` idle exact-topic subscriptions over clients of 5,000 each (a connection takes at
/// most 10,000), 256 subscribes in flight per client.
async fn load(
    config: &ClientConfig,
    n: usize,
) -> Result<Vec<(Client, Vec<sift_client::Subscription>)>> {
    const PER_CLIENT: usize = 5_000;
    let mut tasks = Vec::new();
    for c in 0..n.div_ceil(PER_CLIENT) {
        let client = connect(config).await?;
        let range = c * PER_CLIENT..((c + 1) * PER_CLIENT).min(n);
        tasks.push(tokio::spawn(async move {
            let mut subs = Vec::with_capacity(range.len());
            let mut pending = FuturesUnordered::new();
            let mut next = range.into_iter();
            loop {
                while pending.len() < 256 {
                    let Some(i) = next.next() else { break };
                    let b = client.subscribe(format!("load.{i}"));
                    pending.push(b.start());
                }
                match pending.next().await {
                    Some(r) => subs.push(r?),
                    None => break,
                }
            }
            drop(pending);
            Ok::<_, sift_client::ClientError>((client, subs))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.context("loader task")?.context("load subscribe")?);
    }
    Ok(out)
}

/// One acknowledged publish's outcome: the result, topic, `k`, when sent and when answered.
type Outcome = (
    Result<sift_protocol::EventId, sift_client::ClientError>,
    String,
    i64,
    u64,
    u64,
);

fn record(
    (r, topic, k, sent_ms, answered_ms): Outcome,
    records: &mut Vec<PublishRecord>,
    failed: &mut u64,
    errors: &mut Vec<String>,
) {
    match r {
        Ok(id) => records.push(PublishRecord {
            id,
            topic,
            k,
            sent_ms,
            acked_ms: Some(answered_ms),
        }),
        Err(e) => {
            *failed += 1;
            if errors.len() < 5 {
                errors.push(e.to_string());
            }
        }
    }
}
