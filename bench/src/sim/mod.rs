//! The dissemination simulator behind `sift bench sim`: the very state machines the gossip
//! nodes run ([`sift_matcher_core::gossip::Gossip`]), on thousands of virtual nodes over a
//! virtual network, in synchronous rounds or in continuous time with latency, with message
//! loss and churn.
//!
//! One trial injects one update at a random node at time 0 and runs until every node knows it,
//! or nothing is left to do (push strategies die out by themselves; anti-entropy never does),
//! or a time limit. A [`SimReport`] holds the means over the trials.
//!
//! Rounds (Demers et al.'s cycles): every live node ticks (a rumor monger pushes to one
//! random neighbour, an anti-entropy node opens one exchange), then every message of the round
//! is delivered — answers within an exchange in the same round, relays (flooding) in the next.
//! A node only passes on what it knew at the start of the round, so the model is synchronous.
//!
//! Continuous time: each node ticks every `period` (fixed, with a random phase) or at the
//! events of a Poisson clock of that mean, and every message takes `latency`.

pub mod reproduce;
mod topology;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sift_matcher_core::gossip::{Config, Effects, Gossip, NodeId, PeerSet, Send, Strategy};

pub use topology::{Graph, Topology, TopologyError};

/// How time advances.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Clock {
    /// Synchronous rounds.
    Rounds,
    /// Continuous time, microseconds.
    Continuous {
        /// Mean time between two ticks of a node, µs.
        period_us: u64,
        /// One-way message latency, µs.
        latency_us: u64,
        /// Exponential times between ticks (a Poisson clock) instead of a fixed period.
        poisson: bool,
    },
}

/// One simulation: a strategy on a topology.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes.
    pub nodes: usize,
    /// The strategy.
    pub strategy: Strategy,
    /// The network.
    pub topology: Topology,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Rounds: probability that a node is down for a round (it neither ticks nor receives).
    pub churn: f64,
    /// Independent trials (a new graph, origin and seeds each).
    pub trials: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Rounds or continuous time.
    pub clock: Clock,
    /// Give up after this many rounds (continuous: periods).
    pub rounds_max: u64,
    /// Anti-entropy every this many ticks.
    pub anti_entropy_every: u32,
    /// Worker threads for trials (0: one per core).
    pub threads: usize,
}

impl SimConfig {
    /// A round-based simulation with no loss or churn, 10 trials, seed 1.
    pub fn new(nodes: usize, strategy: Strategy, topology: Topology) -> SimConfig {
        SimConfig {
            nodes,
            strategy,
            topology,
            loss: 0.0,
            churn: 0.0,
            trials: 10,
            seed: 1,
            clock: Clock::Rounds,
            rounds_max: 1_000,
            anti_entropy_every: 1,
            threads: 0,
        }
    }
}

/// A simulation that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Fewer than two nodes, or too many.
    #[error("nodes must be between 2 and 10,000,000, not {0}")]
    Nodes(usize),
    /// A probability outside [0, 1).
    #[error("{what} must be in [0, 1), not {value}")]
    Probability {
        /// loss or churn.
        what: &'static str,
        /// As given.
        value: f64,
    },
    /// No trials.
    #[error("trials must be at least 1")]
    Trials,
    /// The topology cannot be built.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Churn is only modelled in rounds.
    #[error("churn is only simulated in rounds")]
    ChurnInContinuousTime,
    /// A worker thread panicked (a bug).
    #[error("a simulation worker failed")]
    Worker,
}

/// What one trial measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trial {
    /// Nodes that learned the update (the origin included).
    pub reached: usize,
    /// When the trial ended (rounds, or µs).
    pub end: u64,
    /// Mean time at which nodes other than the origin learned it.
    pub t_avg: f64,
    /// When the last node learned it.
    pub t_last: u64,
    /// Messages of every kind.
    pub messages: u64,
    /// Messages carrying the update (Demers' traffic).
    pub update_messages: u64,
    /// Estimated bytes.
    pub bytes: u64,
    /// Messages lost (loss, or sent to a node that was down).
    pub lost: u64,
}

/// Means over the trials of one simulation; `sift bench sim --json` prints one per line.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SimReport {
    /// Strategy name.
    pub strategy: String,
    /// Topology name.
    pub topology: String,
    /// Nodes.
    pub nodes: usize,
    /// Trials.
    pub trials: usize,
    /// `rounds` or `continuous`.
    pub clock: &'static str,
    /// Unit of `t_avg`, `t_last`: `rounds` or `ms`.
    pub time_unit: &'static str,
    /// Message loss probability.
    pub loss: f64,
    /// Churn probability.
    pub churn: f64,
    /// Fraction of nodes never reached.
    pub residue: f64,
    /// 1 − residue.
    pub coverage: f64,
    /// Fraction of trials in which every node was reached.
    pub complete_trials: f64,
    /// Update-carrying messages per node (Demers' traffic).
    pub traffic: f64,
    /// Messages of every kind per trial.
    pub messages: f64,
    /// Messages of every kind per node.
    pub messages_per_node: f64,
    /// Estimated bytes per trial.
    pub bytes: f64,
    /// Estimated bytes per node.
    pub bytes_per_node: f64,
    /// Mean delivery delay (nodes other than the origin).
    pub t_avg: f64,
    /// Last delivery.
    pub t_last: f64,
    /// Rounds (continuous: periods) until the trial ended: nothing left to push (rumors
    /// dead, relays delivered) and, with anti-entropy, every node reached.
    pub rounds_mean: f64,
    /// Median of the same over the trials.
    pub rounds_p50: f64,
    /// 99th percentile of the same over the trials.
    pub rounds_p99: f64,
    /// Messages lost per trial.
    pub lost: f64,
    /// Wall-clock time of the whole simulation, ms.
    pub wall_ms: u64,
}

/// Runs every trial of `config` and averages them.
pub fn simulate(config: &SimConfig) -> Result<SimReport, SimError> {
    let started = Instant::now();
    let trials = simulate_trials(config)?;
    Ok(summarise(
        config,
        &trials,
        started.elapsed().as_millis() as u64,
    ))
}

/// Runs every trial of `config`, in trial order (spread over threads; the numbers do not
/// depend on how many).
pub fn simulate_trials(config: &SimConfig) -> Result<Vec<Trial>, SimError> {
    if config.nodes < 2 || config.nodes > 10_000_000 {
        return Err(SimError::Nodes(config.nodes));
    }
    for (what, value) in [("loss", config.loss), ("churn", config.churn)] {
        if !(0.0..1.0).contains(&value) {
            return Err(SimError::Probability { what, value });
        }
    }
    if config.trials == 0 {
        return Err(SimError::Trials);
    }
    if config.churn > 0.0 && config.clock != Clock::Rounds {
        return Err(SimError::ChurnInContinuousTime);
    }
    config.topology.check(config.nodes)?;
    let threads = if config.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.threads
    }
    .min(config.trials);
    let trials: Result<Vec<Vec<Numbered>>, SimError> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..config.trials)
                        .step_by(threads)
                        .map(|i| (i, run_trial(config, i as u64)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| SimError::Worker))
            .collect()
    });
    let mut trials: Vec<Numbered> = trials?.into_iter().flatten().collect();
    trials.sort_by_key(|(i, _)| *i);
    trials.into_iter().map(|(_, t)| t).collect()
}

/// A trial's number and outcome.
type Numbered = (usize, Result<Trial, SimError>);

/// Means over `trials` of `config`.
pub fn summarise(config: &SimConfig, trials: &[Trial], wall_ms: u64) -> SimReport {
    let k = trials.len() as f64;
    let n = config.nodes as f64;
    let mean = |f: &dyn Fn(&Trial) -> f64| trials.iter().map(f).sum::<f64>() / k;
    let (time_unit, scale, period) = match config.clock {
        Clock::Rounds => ("rounds", 1.0, 1.0),
        Clock::Continuous { period_us, .. } => ("ms", 1e-3, period_us as f64),
    };
    let mut rounds: Vec<f64> = trials.iter().map(|t| t.end as f64 / period).collect();
    rounds.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        let rank = ((p * rounds.len() as f64).ceil() as usize).clamp(1, rounds.len());
        rounds[rank - 1]
    };
    let residue = mean(&|t| (n - t.reached as f64) / n);
    let messages = mean(&|t| t.messages as f64);
    let bytes = mean(&|t| t.bytes as f64);
    SimReport {
        strategy: config.strategy.to_string(),
        topology: config.topology.to_string(),
        nodes: config.nodes,
        trials: trials.len(),
        clock: if config.clock == Clock::Rounds {
            "rounds"
        } else {
            "continuous"
        },
        time_unit,
        loss: config.loss,
        churn: config.churn,
        residue,
        coverage: 1.0 - residue,
        complete_trials: mean(&|t| if t.reached == config.nodes { 1.0 } else { 0.0 }),
        traffic: mean(&|t| t.update_messages as f64 / n),
        messages,
        messages_per_node: messages / n,
        bytes,
        bytes_per_node: bytes / n,
        t_avg: mean(&|t| t.t_avg) * scale,
        t_last: mean(&|t| t.t_last as f64) * scale,
        rounds_mean: rounds.iter().sum::<f64>() / k,
        rounds_p50: pct(0.5),
        rounds_p99: pct(0.99),
        lost: mean(&|t| t.lost as f64),
        wall_ms,
    }
}

/// The neighbours of node `me`: the complete graph without materialising it.
struct AllBut {
    n: usize,
    me: usize,
}

impl PeerSet for AllBut {
    fn len(&self) -> usize {
        self.n - 1
    }
    fn get(&self, i: usize) -> NodeId {
        (if i < self.me { i } else { i + 1 }) as NodeId
    }
}

/// Calls a closure with node `i`'s neighbours.
enum Peers<'a> {
    Complete(usize),
    Graph(&'a Graph),
}

impl Peers<'_> {
    fn with<R>(&self, i: usize, f: impl FnOnce(&dyn PeerSetDyn) -> R) -> R {
        match self {
            Peers::Complete(n) => f(&AllBut { n: *n, me: i }),
            Peers::Graph(g) => f(&Slice(g.neighbours(i))),
        }
    }
}

/// `PeerSet` behind a `dyn`.
trait PeerSetDyn {
    fn n(&self) -> usize;
    fn at(&self, i: usize) -> NodeId;
}

impl<T: PeerSet> PeerSetDyn for T {
    fn n(&self) -> usize {
        self.len()
    }
    fn at(&self, i: usize) -> NodeId {
        self.get(i)
    }
}

impl PeerSet for dyn PeerSetDyn + '_ {
    fn len(&self) -> usize {
        self.n()
    }
    fn get(&self, i: usize) -> NodeId {
        self.at(i)
    }
}

struct Slice<'a>(&'a [NodeId]);

impl PeerSet for Slice<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> NodeId {
        self.0[i]
    }
}

const NEVER: u64 = u64::MAX;

/// Per-trial bookkeeping shared by both clocks.
struct World {
    nodes: Vec<Gossip<()>>,
    learned_at: Vec<u64>,
    reached: usize,
    lost: u64,
    rng: ChaCha8Rng,
    loss: f64,
}

impl World {
    fn new(config: &SimConfig, trial: u64) -> World {
        let seed = config.seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
            ^ trial.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut gossip = Config::new(config.strategy, seed);
        gossip.anti_entropy_every = config.anti_entropy_every;
        World {
            nodes: (0..config.nodes)
                .map(|i| Gossip::new(i as NodeId, gossip.clone()))
                .collect(),
            learned_at: vec![NEVER; config.nodes],
            reached: 0,
            lost: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss: config.loss,
        }
    }

    /// Delivers one message unless it is lost; returns what the receiver sends.
    fn deliver(
        &mut self,
        peers: &Peers<'_>,
        from: NodeId,
        send: Send<()>,
        now: u64,
        down: bool,
        out: &mut Effects<()>,
    ) {
        out.clear();
        if down || (self.loss > 0.0 && self.rng.random_bool(self.loss)) {
            self.lost += 1;
            return;
        }
        let to = send.to as usize;
        let node = &mut self.nodes[to];
        peers.with(to, |p| node.on_message(from, send.msg, now, p, out));
        if !out.learned.is_empty() && self.learned_at[to] == NEVER {
            self.learned_at[to] = now;
            self.reached += 1;
        }
    }

    fn active(&self) -> bool {
        self.nodes.iter().any(Gossip::is_active)
    }

    fn finish(&self, origin: usize, end: u64) -> Trial {
        let mut sum = 0.0;
        let mut last = 0;
        for (i, &at) in self.learned_at.iter().enumerate() {
            if at != NEVER && i != origin {
                sum += at as f64;
                last = last.max(at);
            }
        }
        let others = self.reached.saturating_sub(1).max(1) as f64;
        let mut trial = Trial {
            reached: self.reached,
            end,
            t_avg: sum / others,
            t_last: last,
            lost: self.lost,
            ..Trial::default()
        };
        for node in &self.nodes {
            let s = node.stats();
            trial.messages += s.messages;
            trial.update_messages += s.update_messages;
            trial.bytes += s.bytes;
        }
        trial
    }
}

/// Runs trial number `trial` of `config`.
pub fn run_trial(config: &SimConfig, trial: u64) -> Result<Trial, SimError> {
    let mut world = World::new(config, trial);
    let graph = config.topology.build(config.nodes, &mut world.rng)?;
    let peers = match &graph {
        None => Peers::Complete(config.nodes),
        Some(g) => Peers::Graph(g),
    };
    let origin = world.rng.random_range(0..config.nodes);
    let mut out = Effects::default();
    {
        let node = &mut world.nodes[origin];
        peers.with(origin, |p| node.originate(1, Some(()), 0, p, &mut out));
    }
    world.learned_at[origin] = 0;
    world.reached = 1;
    let first: Vec<(NodeId, Send<()>)> =
        out.sends.drain(..).map(|s| (origin as NodeId, s)).collect();
    Ok(match config.clock {
        Clock::Rounds => rounds(config, &mut world, &peers, origin, first),
        Clock::Continuous {
            period_us,
            latency_us,
            poisson,
        } => continuous(
            config,
            &mut world,
            &peers,
            origin,
            first,
            period_us.max(1),
            latency_us,
            poisson,
        ),
    })
}

fn rounds(
    config: &SimConfig,
    world: &mut World,
    peers: &Peers<'_>,
    origin: usize,
    first: Vec<(NodeId, Send<()>)>,
) -> Trial {
    let n = config.nodes;
    let mut next: VecDeque<(NodeId, Send<()>)> = first.into();
    let mut queue: VecDeque<(NodeId, Send<()>)> = VecDeque::new();
    let mut down = vec![false; n];
    let mut out = Effects::default();
    let mut end = config.rounds_max;
    for r in 1..=config.rounds_max {
        if config.churn > 0.0 {
            for d in down.iter_mut() {
                *d = world.rng.random_bool(config.churn);
            }
        }
        std::mem::swap(&mut queue, &mut next);
        for (i, &is_down) in down.iter().enumerate() {
            if is_down {
                continue;
            }
            out.clear();
            let node = &mut world.nodes[i];
            peers.with(i, |p| node.tick(r, p, &mut out));
            queue.extend(out.sends.drain(..).map(|s| (i as NodeId, s)));
        }
        while let Some((from, send)) = queue.pop_front() {
            let to = send.to;
            world.deliver(peers, from, send, r, down[to as usize], &mut out);
            for s in out.sends.drain(..) {
                if s.relay {
                    next.push_back((to, s));
                } else {
                    queue.push_back((to, s));
                }
            }
        }
        // Done when nothing is left to push (rumors dead, relays delivered) and either
        // everyone knows or nothing else will spread it (no anti-entropy).
        if next.is_empty()
            && !world.active()
            && (world.reached == n || config.strategy.anti_entropy.is_none())
        {
            end = r;
            break;
        }
    }
    world.finish(origin, end)
}

/// An event in continuous time, ordered by (time, sequence).
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

enum Event {
    Tick(usize),
    Deliver(NodeId, Send<()>),
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[allow(clippy::too_many_arguments)]
fn continuous(
    config: &SimConfig,
    world: &mut World,
    peers: &Peers<'_>,
    origin: usize,
    first: Vec<(NodeId, Send<()>)>,
    period: u64,
    latency: u64,
    poisson: bool,
) -> Trial {
    let n = config.nodes;
    let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::with_capacity(2 * n);
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<Scheduled>>, at: u64, event: Event| {
        seq += 1;
        heap.push(Reverse(Scheduled { at, seq, event }));
    };
    let gap = |rng: &mut ChaCha8Rng| -> u64 {
        if poisson {
            let u: f64 = rng.random::<f64>();
            ((-(1.0 - u).ln()) * period as f64).round().max(1.0) as u64
        } else {
            period
        }
    };
    for i in 0..n {
        let phase = if poisson {
            gap(&mut world.rng)
        } else {
            world.rng.random_range(1..=period)
        };
        push(&mut heap, phase, Event::Tick(i));
    }
    let mut in_flight = 0usize;
    for (from, s) in first {
        in_flight += 1;
        push(&mut heap, latency, Event::Deliver(from, s));
    }
    let limit = config.rounds_max.saturating_mul(period);
    let mut out = Effects::default();
    let mut end = limit;
    let mut checked_quiet_at = 0;
    while let Some(Reverse(Scheduled { at, event, .. })) = heap.pop() {
        if at > limit {
            break;
        }
        let sender = match event {
            Event::Tick(i) => {
                out.clear();
                let node = &mut world.nodes[i];
                peers.with(i, |p| node.tick(at, p, &mut out));
                let next = at + gap(&mut world.rng);
                push(&mut heap, next, Event::Tick(i));
                i as NodeId
            }
            Event::Deliver(from, send) => {
                in_flight -= 1;
                let to = send.to;
                world.deliver(peers, from, send, at, false, &mut out);
                to
            }
        };
        for s in out.sends.drain(..) {
            in_flight += 1;
            push(&mut heap, at + latency, Event::Deliver(sender, s));
        }
        if world.reached == n && config.strategy.push.is_none() {
            end = at;
            break;
        }
        // Done when nothing is left to push (no rumor hot; without anti-entropy, nothing in
        // flight either) and either everyone knows or nothing else will spread it. Checked
        // once a period.
        if at >= checked_quiet_at + period {
            checked_quiet_at = at;
            let ae = config.strategy.anti_entropy.is_some();
            if (in_flight == 0 || ae) && (world.reached == n || !ae) && !world.active() {
                end = at;
                break;
            }
        }
    }
    world.finish(origin, end)
}

#[cfg(test)]
mod tests;
