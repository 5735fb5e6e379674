//! A partitioned cluster in virtual time: matcher [`Node`]s, the coordinator's real
//! [`Membership`], a network that delays every message (and loses what is sent to a dead
//! node), and clients that behave like the SDK (subscriptions on every owner, re-subscribed
//! as repair, acknowledged publishes retried and hedged to the next owner, duplicates
//! dropped by event id). Random sequences of joins, drains, crashes (with restarts),
//! publishes and subscribes are checked against the model "every live matching
//! subscription gets every acknowledged event".
//!
//! Nothing here sleeps: the world jumps from one due time to the next.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// `CLUSTER_TRACE` prints a run to read (a test harness, not a service: no subscriber to log to).
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sift_coordinator::membership::{Membership, TransitionConfig};
use sift_matcher_core::node::{Effect, Node, NodeConfig, Outlet, Pushed, Refusal, Token};
use sift_matcher_core::{NewSubscription, Timestamp};
use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::{EndReason, ExpirySpec, Ring, RingMember};
use sift_protocol::peer::PeerFrame;
use sift_protocol::ring::Placement;
use sift_protocol::{
    Attributes, DeliveryMode, Event, EventId, Filter, Pattern, PublisherId, SubscriptionId, Topic,
};

/// A subscription's queue as a test sees it: everything pushed, in order.
#[derive(Debug, Default)]
struct Recorder {
    state: Mutex<(VecDeque<Out>, bool)>,
}

#[derive(Debug)]
enum Out {
    Notify { event: Event },
    End(EndReason),
}

impl Outlet for Recorder {
    fn open(_len_max: usize, _bytes_max: usize) -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    fn push(&self, _d: u64, _r: bool, event: Arc<EncodedEvent>, _drop: bool) -> Pushed {
        let mut s = self.state.lock().unwrap();
        if s.1 {
            return Pushed::Refused;
        }
        s.0.push_back(Out::Notify {
            event: event.decode().unwrap(),
        });
        Pushed::Queued
    }

    fn end(&self, reason: EndReason) {
        let mut s = self.state.lock().unwrap();
        if !s.1 {
            s.1 = true;
            s.0.push_back(Out::End(reason));
        }
    }

    fn take_waiting(&self) -> Vec<Arc<EncodedEvent>> {
        let mut s = self.state.lock().unwrap();
        let mut taken = Vec::new();
        s.0.retain(|o| match o {
            Out::Notify { event } => {
                taken.push(Arc::new(EncodedEvent::new(event).unwrap()));
                false
            }
            Out::End(_) => true,
        });
        taken
    }
}

impl Recorder {
    fn take(&self) -> Vec<Out> {
        self.state.lock().unwrap().0.drain(..).collect()
    }
}

/// Milliseconds.
const HEARTBEAT_EVERY: u64 = 100;
const DEAD_AFTER: u64 = 1_000;
/// The SDK hedges an unanswered acknowledged publish to the next owner after this.
const FAILOVER_AFTER: u64 = 300;
/// Clients look at their subscriptions' placement this often.
const REPAIR_EVERY: u64 = 50;
const ACK_TIMEOUT: u64 = 500;
/// Subscribers read what their matchers queued this often: what a matcher queued and a
/// subscriber has not read yet dies with the matcher.
const READ_EVERY: u64 = 10;

#[derive(Debug)]
enum Msg {
    /// Matcher to matcher (to one incarnation of it).
    Peer {
        from: String,
        to: String,
        incarnation: u64,
        frame: PeerFrame,
    },
    PeerAnswer {
        from: String,
        to: String,
        incarnation: u64,
        frame: PeerFrame,
    },
    /// Coordinator to matcher.
    Cluster {
        to: String,
        incarnation: u64,
        active: Ring,
        pending: Option<Ring>,
        /// The answer to a registration: the coordinator's verdict.
        restarted: bool,
    },
    Confirm {
        from: String,
        version: u64,
    },
    /// Publishers learn the active ring.
    ClientRing(Ring),
    /// Subscribers learn it (each client on its own time: later, here).
    SubscriberRing(Ring),
    Publish {
        to: String,
        incarnation: u64,
        publish: usize,
        ring_version: u64,
    },
    PublishAnswer {
        publish: usize,
        result: Result<(), Refusal>,
    },
    Ack {
        to: String,
        incarnation: u64,
        conn: u64,
        sub: SubscriptionId,
        event: EventId,
    },
}

struct Matcher {
    member: RingMember,
    /// `None` while dead.
    node: Option<Node<Recorder>>,
    incarnation: u64,
    /// Who asked what, for the answers' way back.
    peer_tokens: HashMap<Token, String>,
    publish_tokens: HashMap<Token, usize>,
    next_beat: u64,
}

struct Placed {
    node: String,
    incarnation: u64,
    conn: u64,
    queue: Arc<Recorder>,
}

struct Subscriber {
    id: SubscriptionId,
    pattern: Pattern,
    mode: DeliveryMode,
    placed: Vec<Placed>,
    /// When it was first on every place the ring wanted (what the model checks from).
    established: Option<u64>,
    received: HashSet<EventId>,
    spurious: Vec<EventId>,
    ended: Option<EndReason>,
}

struct Publish {
    event: Event,
    topic: Topic,
    started: u64,
    attempts: u32,
    /// Next hedge or retry.
    retry_at: Option<u64>,
    acked: Option<u64>,
}

struct World {
    now: u64,
    rng: ChaCha8Rng,
    coord: Membership,
    generation: u64,
    matchers: BTreeMap<String, Matcher>,
    /// (due, sequence) → message.
    net: BTreeMap<(u64, u64), Msg>,
    seq: u64,
    client_ring: Ring,
    client_placement: Placement,
    /// The subscribers' ring.
    sub_placement: Placement,
    subs: Vec<Subscriber>,
    publishes: Vec<Publish>,
    /// (due, publish): hedges and retries (an entry whose publish moved on is stale).
    retries: BTreeSet<(u64, usize)>,
    next_conn: u64,
    next_token: Token,
    next_repair: u64,
    next_read: u64,
    publisher: PublisherId,
    /// Peer messages sent, to report.
    peer_messages: u64,
    /// What to print while it runs, for reading a counterexample.
    trace: Option<Trace>,
}

/// `CLUSTER_TRACE=sub:11,event:3` prints ring changes, matcher-to-matcher messages, what
/// subscription 11 is placed on and receives, and the attempts of the publish of event 3.
#[derive(Default)]
struct Trace {
    sub: Option<u64>,
    event: Option<u64>,
}

impl Trace {
    fn from_env() -> Option<Trace> {
        let spec = std::env::var("CLUSTER_TRACE").ok()?;
        let mut t = Trace::default();
        for part in spec.split(',') {
            match part.split_once(':') {
                Some(("sub", n)) => t.sub = n.parse().ok(),
                Some(("event", n)) => t.event = n.parse().ok(),
                _ => {}
            }
        }
        Some(t)
    }
}

impl World {
    fn new(seed: u64, replicas: u32, matchers: usize) -> World {
        let mut config = TransitionConfig::new(DEAD_AFTER);
        config.replicas = replicas;
        config.recovery_ms = 0;
        let mut w = World {
            now: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            coord: Membership::new(config, 1, 0),
            generation: 0,
            matchers: BTreeMap::new(),
            net: BTreeMap::new(),
            seq: 0,
            client_ring: Ring::empty(),
            client_placement: Placement::new(&Ring::empty()),
            sub_placement: Placement::new(&Ring::empty()),
            subs: Vec::new(),
            publishes: Vec::new(),
            retries: BTreeSet::new(),
            next_conn: 0,
            next_token: 0,
            next_repair: 0,
            next_read: 0,
            publisher: PublisherId(7),
            peer_messages: 0,
            trace: Trace::from_env(),
        };
        for _ in 0..matchers {
            w.join();
        }
        w.settle(3_000);
        w
    }

    fn send(&mut self, msg: Msg) {
        let delay = self.rng.random_range(1..=5);
        self.seq += 1;
        self.net.insert((self.now + delay, self.seq), msg);
    }

    fn node_config() -> NodeConfig {
        let mut c = NodeConfig::for_test();
        c.ack_timeout_ms = ACK_TIMEOUT;
        c
    }

    /// A new matcher registers.
    fn join(&mut self) -> String {
        let id = format!("m{}", self.matchers.len() + 1);
        let member = RingMember {
            id: id.clone(),
            addr: format!("{id}:1"),
            weight: 100,
        };
        self.start(member);
        id
    }

    fn start(&mut self, member: RingMember) {
        let node = Node::new(member.clone(), Self::node_config(), Ring::empty());
        let id = member.id.clone();
        let incarnation = self.matchers.get(&id).map_or(1, |m| m.incarnation + 1);
        self.matchers.insert(
            id.clone(),
            Matcher {
                member: member.clone(),
                node: Some(node),
                incarnation,
                peer_tokens: HashMap::new(),
                publish_tokens: HashMap::new(),
                next_beat: self.now,
            },
        );
        let restarted = self.coord.register(self.now, member, None, false).unwrap();
        // The coordinator answers a registration with the cluster's state.
        let (active, pending) = (self.coord.ring(), self.coord.pending().cloned());
        self.send(Msg::Cluster {
            to: id,
            incarnation,
            active,
            pending,
            restarted,
        });
    }

    fn drain(&mut self, id: &str) {
        let _ = self.coord.drain(self.now, id);
    }

    /// SIGKILL: what the matcher held is gone.
    fn crash(&mut self, id: &str) {
        if let Some(m) = self.matchers.get_mut(id) {
            m.node = None;
            m.peer_tokens.clear();
            m.publish_tokens.clear();
        }
    }

    fn restart(&mut self, id: &str) {
        let member = self.matchers[id].member.clone();
        self.start(member);
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    /// Routes what matcher `id` decided.
    fn effects(&mut self, id: &str) {
        let Some(m) = self.matchers.get_mut(id) else {
            return;
        };
        let Some(node) = m.node.as_mut() else { return };
        let effects = node.take_effects();
        for e in effects {
            match e {
                Effect::Peer { to, frame } => {
                    self.peer_messages += 1;
                    let incarnation = self.matchers.get(&to.id).map_or(0, |m| m.incarnation);
                    self.send(Msg::Peer {
                        from: id.to_owned(),
                        to: to.id,
                        incarnation,
                        frame,
                    });
                }
                Effect::PeerReply { token, frame } => {
                    let Some(to) = self
                        .matchers
                        .get_mut(id)
                        .and_then(|m| m.peer_tokens.remove(&token))
                    else {
                        continue;
                    };
                    let incarnation = self.matchers.get(&to).map_or(0, |m| m.incarnation);
                    self.send(Msg::PeerAnswer {
                        from: id.to_owned(),
                        to,
                        incarnation,
                        frame,
                    });
                }
                Effect::Answer { token, result } => {
                    if let Some(publish) = self
                        .matchers
                        .get_mut(id)
                        .and_then(|m| m.publish_tokens.remove(&token))
                    {
                        self.send(Msg::PublishAnswer { publish, result });
                    }
                }
                Effect::Confirm(version) => self.send(Msg::Confirm {
                    from: id.to_owned(),
                    version,
                }),
                Effect::RingActive { .. } | Effect::Mesh { .. } => {}
            }
        }
    }

    fn with_node(&mut self, id: &str, incarnation: u64, f: impl FnOnce(&mut Node<Recorder>, u64)) {
        let now = self.now;
        let Some(m) = self.matchers.get_mut(id) else {
            return;
        };
        if m.incarnation != incarnation {
            return;
        }
        let Some(node) = m.node.as_mut() else { return };
        f(node, now);
        self.effects(id);
    }

    fn deliver(&mut self, msg: Msg) {
        let now = Timestamp(self.now);
        if let Some(t) = &self.trace {
            let text = format!("{msg:?}");
            let keep = match &msg {
                Msg::Publish { publish, .. } | Msg::PublishAnswer { publish, .. } => {
                    t.event == Some(*publish as u64 + 1)
                }
                Msg::Cluster { .. } | Msg::ClientRing(_) | Msg::SubscriberRing(_) => true,
                Msg::Confirm { .. } => true,
                Msg::Peer { .. } | Msg::PeerAnswer { .. } => !text.contains("Acked"),
                Msg::Ack { .. } => false,
            };
            if keep {
                eprintln!("{} {text}", self.now);
            }
        }
        match msg {
            Msg::Peer {
                from,
                to,
                incarnation,
                frame,
            } => {
                let token = self.token();
                if let Some(m) = self.matchers.get_mut(&to) {
                    m.peer_tokens.insert(token, from.clone());
                }
                self.with_node(&to, incarnation, |n, _| {
                    n.handle_peer(now, &from, frame, token)
                });
            }
            Msg::PeerAnswer {
                from,
                to,
                incarnation,
                frame,
            } => self.with_node(&to, incarnation, |n, _| {
                n.handle_peer_answer(now, &from, frame)
            }),
            Msg::Cluster {
                to,
                incarnation,
                active,
                pending,
                restarted,
            } => self.with_node(&to, incarnation, |n, _| {
                if restarted {
                    n.handle_restarted(now, &active);
                }
                n.handle_cluster(now, active, pending)
            }),
            Msg::Confirm { from, version } => {
                if self.matchers.get(&from).is_some_and(|m| m.node.is_some()) {
                    self.coord.confirm(self.now, &from, version);
                }
            }
            Msg::ClientRing(ring) => {
                if ring.version > self.client_ring.version {
                    self.client_placement = Placement::new(&ring);
                    self.client_ring = ring;
                }
            }
            Msg::SubscriberRing(ring) => {
                if ring.version > self.sub_placement.version() {
                    self.sub_placement = Placement::new(&ring);
                    self.next_repair = self.now;
                }
            }
            Msg::Publish {
                to,
                incarnation,
                publish,
                ring_version,
            } => {
                let token = self.token();
                let p = &self.publishes[publish];
                let (topic, event) = (p.topic.clone(), p.event.clone());
                if let Some(m) = self.matchers.get_mut(&to) {
                    m.publish_tokens.insert(token, publish);
                }
                self.with_node(&to, incarnation, |n, _| {
                    n.handle_publish(now, topic, event, true, ring_version, Some(token))
                });
            }
            Msg::PublishAnswer { publish, result } => {
                let p = &mut self.publishes[publish];
                if p.acked.is_some() {
                    return;
                }
                match result {
                    Ok(()) => {
                        p.acked = Some(self.now);
                        p.retry_at = None;
                    }
                    // Not the owner (or another refusal): retry soon with the newest ring.
                    Err(_) => {
                        p.retry_at = Some(self.now + 20);
                        self.retries.insert((self.now + 20, publish));
                    }
                }
            }
            Msg::Ack {
                to,
                incarnation,
                conn,
                sub,
                event,
            } => self.with_node(&to, incarnation, |n, _| n.handle_ack(now, conn, sub, event)),
        }
    }

    /// The SDK's attempt `attempt` of publish `i`: the owners in order, primary first.
    fn attempt(&mut self, i: usize) {
        let placement = &self.client_placement;
        let version = placement.version();
        let p = &mut self.publishes[i];
        let owners: Vec<String> = placement
            .owners(p.topic.as_str())
            .iter()
            .map(|m| m.id.clone())
            .collect();
        p.retry_at = Some(self.now + FAILOVER_AFTER);
        self.retries.insert((self.now + FAILOVER_AFTER, i));
        if owners.is_empty() {
            return;
        }
        let to = owners[p.attempts as usize % owners.len()].clone();
        p.attempts += 1;
        let incarnation = self.matchers.get(&to).map_or(0, |m| m.incarnation);
        self.send(Msg::Publish {
            to,
            incarnation,
            publish: i,
            ring_version: version,
        });
    }

    fn publish(&mut self, topic: &str) {
        let seq = self.publishes.len() as u64 + 1;
        let mut attrs = Attributes::new();
        attrs.insert("n".into(), sift_protocol::Value::Int(seq as i64));
        let event = Event {
            id: EventId {
                publisher: self.publisher,
                seq,
            },
            topic: topic.into(),
            attrs,
            payload: Bytes::from_static(b"x"),
        };
        self.publishes.push(Publish {
            topic: Topic::parse(topic).unwrap(),
            event,
            started: self.now,
            attempts: 0,
            retry_at: None,
            acked: None,
        });
        let i = self.publishes.len() - 1;
        self.attempt(i);
    }

    fn subscribe(&mut self, pattern: &str, mode: DeliveryMode) {
        let id = SubscriptionId(self.subs.len() as u64 + 1);
        self.subs.push(Subscriber {
            id,
            pattern: Pattern::parse(pattern).unwrap(),
            mode,
            placed: Vec::new(),
            established: None,
            received: HashSet::new(),
            spurious: Vec::new(),
            ended: None,
        });
        self.next_repair = self.now;
    }

    /// The SDK's repair: every subscription on every matcher the ring places it on.
    fn repair(&mut self) {
        let placement = self.sub_placement.clone();
        for s in 0..self.subs.len() {
            if self.subs[s].ended.is_some() {
                continue;
            }
            let want: Vec<String> = match self.subs[s].pattern.as_topic() {
                Some(t) => placement
                    .owners(t.as_str())
                    .iter()
                    .map(|m| m.id.clone())
                    .collect(),
                None => placement.members().iter().map(|m| m.id.clone()).collect(),
            };
            let mut all = !want.is_empty();
            for node in want {
                let inc = self.matchers.get(&node).map_or(0, |m| m.incarnation);
                let here = self.subs[s]
                    .placed
                    .iter()
                    .any(|p| p.node == node && p.incarnation == inc);
                if here {
                    continue;
                }
                self.next_conn += 1;
                let conn = self.next_conn;
                let sub = &self.subs[s];
                let new = NewSubscription {
                    id: sub.id,
                    pattern: sub.pattern.clone(),
                    filter: Filter::match_all(),
                    expiry: ExpirySpec::LeaseMs(3_600_000),
                    group: None,
                    mode: sub.mode,
                };
                let mut got = None;
                let version = placement.version();
                self.with_node(&node, inc, |n, now| {
                    got = n
                        .handle_subscribe(Timestamp(now), conn, new, String::new(), version)
                        .ok();
                });
                if self
                    .trace
                    .as_ref()
                    .is_some_and(|t| t.sub == Some(self.subs[s].id.0))
                {
                    let placed = got.is_some();
                    eprintln!(
                        "{} subscribe on {node} at ring {version}: {placed}",
                        self.now
                    );
                }
                match got {
                    Some((_, queue)) => self.subs[s].placed.push(Placed {
                        node,
                        incarnation: inc,
                        conn,
                        queue,
                    }),
                    None => all = false,
                }
            }
            if all && self.subs[s].established.is_none() {
                self.subs[s].established = Some(self.now);
            }
        }
    }

    /// Subscribers read their queues and acknowledge.
    fn read(&mut self) {
        let mut acks = Vec::new();
        let (now, trace_sub) = (self.now, self.trace.as_ref().and_then(|t| t.sub));
        for s in &mut self.subs {
            // A matcher that died takes its connections (and what they had not sent) with it.
            let matchers = &self.matchers;
            s.placed.retain(|p| {
                matchers
                    .get(&p.node)
                    .is_some_and(|m| m.node.is_some() && m.incarnation == p.incarnation)
            });
            let mut gone = Vec::new();
            for (k, p) in s.placed.iter().enumerate() {
                for out in p.queue.take() {
                    match out {
                        Out::Notify { event } => {
                            if trace_sub == Some(s.id.0) {
                                eprintln!("{now} got {} from {}", event.id.seq, p.node);
                            }
                            let topic = Topic::parse(&event.topic).unwrap();
                            if !s.pattern.matches(&topic) {
                                s.spurious.push(event.id);
                            }
                            s.received.insert(event.id);
                            if s.mode == DeliveryMode::AtLeastOnce {
                                acks.push((p.node.clone(), p.incarnation, p.conn, s.id, event.id));
                            }
                        }
                        Out::End(EndReason::Moved) | Out::End(EndReason::Shutdown) => {
                            if trace_sub == Some(s.id.0) {
                                eprintln!("{now} ended on {}", p.node);
                            }
                            gone.push(k)
                        }
                        Out::End(other) => {
                            s.ended = Some(other);
                            gone.push(k);
                        }
                    }
                }
            }
            for k in gone.into_iter().rev() {
                s.placed.remove(k);
            }
        }
        // Subscribers take a while to process what they read before they acknowledge.
        for (to, incarnation, conn, sub, event) in acks {
            let delay = self.rng.random_range(10..=60);
            self.seq += 1;
            let msg = Msg::Ack {
                to,
                incarnation,
                conn,
                sub,
                event,
            };
            self.net.insert((self.now + delay, self.seq), msg);
        }
    }

    /// The earliest time something is due.
    fn next_due(&self) -> u64 {
        let mut due = self.next_repair.min(self.next_read);
        if let Some(((t, _), _)) = self.net.first_key_value() {
            due = due.min(*t);
        }
        for m in self.matchers.values() {
            if let Some(n) = &m.node {
                due = due.min(m.next_beat);
                if let Some(t) = n.next_deadline() {
                    due = due.min(t.0);
                }
            }
        }
        if let Some(t) = self.coord.next_deadline() {
            due = due.min(t);
        }
        if let Some((t, _)) = self.retries.first() {
            due = due.min(*t);
        }
        due.max(self.now)
    }

    /// Runs everything due up to `until`.
    fn run_until(&mut self, until: u64) {
        loop {
            let due = self.next_due();
            if due > until {
                self.now = until;
                return;
            }
            self.now = due;
            self.step();
        }
    }

    fn settle(&mut self, ms: u64) {
        let until = self.now + ms;
        self.run_until(until);
    }

    fn step(&mut self) {
        let now = self.now;
        // The network.
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let msg = entry.remove();
            self.deliver(msg);
        }
        // Matchers' timers and heartbeats.
        let ids: Vec<String> = self.matchers.keys().cloned().collect();
        for id in &ids {
            let m = &self.matchers[id];
            let inc = m.incarnation;
            let beat = m.node.is_some() && m.next_beat <= now;
            self.with_node(id, inc, |n, now| {
                if n.next_deadline().is_some_and(|t| t.0 <= now) {
                    n.tick(Timestamp(now));
                }
            });
            if beat {
                let _ = self.coord.heartbeat(now, id);
                if let Some(m) = self.matchers.get_mut(id) {
                    m.next_beat = now + HEARTBEAT_EVERY;
                }
            }
        }
        // The coordinator.
        self.coord.tick(now);
        self.coord.drain_changes();
        if self.coord.generation() != self.generation {
            self.generation = self.coord.generation();
            let (active, pending) = (self.coord.ring(), self.coord.pending().cloned());
            for (id, m) in &self.matchers {
                if m.node.is_some() {
                    let msg = Msg::Cluster {
                        to: id.clone(),
                        incarnation: m.incarnation,
                        active: active.clone(),
                        pending: pending.clone(),
                        restarted: false,
                    };
                    self.seq += 1;
                    let delay = self.rng.random_range(1..=5);
                    self.net.insert((now + delay, self.seq), msg);
                }
            }
            self.send(Msg::ClientRing(active.clone()));
            let delay = self.rng.random_range(5..=150);
            self.seq += 1;
            self.net
                .insert((now + delay, self.seq), Msg::SubscriberRing(active));
        }
        // Clients.
        while let Some(&(t, i)) = self.retries.first() {
            if t > now {
                break;
            }
            self.retries.pop_first();
            let p = &self.publishes[i];
            if p.acked.is_none() && p.retry_at == Some(t) {
                self.attempt(i);
            }
        }
        if self.next_read <= now {
            self.read();
            self.next_read = now + READ_EVERY;
        }
        if self.next_repair <= now {
            self.repair();
            self.next_repair = now + REPAIR_EVERY;
        }
    }

    /// Publishes `n` events spread over `ms` milliseconds on random topics.
    fn load(&mut self, topics: &[String], n: usize, ms: u64) {
        let gap = (ms / n.max(1) as u64).max(1);
        for _ in 0..n {
            let t = topics[self.rng.random_range(0..topics.len())].clone();
            self.publish(&t);
            let until = self.now + gap;
            self.run_until(until);
        }
    }

    /// The model: every acknowledged event reaches every subscription that was established
    /// (on every place the ring wanted) before the event was published, and nothing else.
    fn violations(&self, check_at_most_once: bool) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.subs {
            if let Some(reason) = s.ended {
                out.push(format!("{} ended: {reason:?}", s.id));
                continue;
            }
            if !s.spurious.is_empty() {
                out.push(format!("{} got non-matching {:?}", s.id, s.spurious));
            }
            if s.mode == DeliveryMode::AtMostOnce && !check_at_most_once {
                continue;
            }
            let Some(from) = s.established else {
                continue;
            };
            let missing: Vec<u64> = self
                .publishes
                .iter()
                .filter(|p| p.acked.is_some() && p.started > from && s.pattern.matches(&p.topic))
                .filter(|p| !s.received.contains(&p.event.id))
                .map(|p| p.event.id.seq)
                .collect();
            if !missing.is_empty() {
                out.push(format!(
                    "{} ({}, {:?}) missed {} acked events: {:?}",
                    s.id,
                    s.pattern.as_str(),
                    s.mode,
                    missing.len(),
                    &missing[..missing.len().min(10)]
                ));
            }
        }
        out
    }

    /// Notifications matcher `id` queued that no subscriber has read yet.
    fn unread(&self, id: &str) -> usize {
        self.subs
            .iter()
            .flat_map(|s| &s.placed)
            .filter(|p| p.node == id)
            .map(|p| p.queue.state.lock().unwrap().0.len())
            .sum()
    }

    fn acked(&self) -> usize {
        self.publishes.iter().filter(|p| p.acked.is_some()).count()
    }

    fn live_matchers(&self) -> Vec<String> {
        self.matchers
            .iter()
            .filter(|(_, m)| m.node.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn topics(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t.{i}")).collect()
}

fn subscribe_all(w: &mut World, topics: &[String]) {
    for t in topics {
        w.subscribe(t, DeliveryMode::AtLeastOnce);
    }
    w.subscribe("t.>", DeliveryMode::AtLeastOnce);
    w.subscribe("t.*", DeliveryMode::AtMostOnce);
    w.subscribe(&topics[0], DeliveryMode::AtMostOnce);
    w.settle(500);
}

#[test]
fn joins_and_drains_lose_nothing_at_r1() {
    let topics = topics(8);
    let mut w = World::new(1, 1, 3);
    subscribe_all(&mut w, &topics);
    for _ in 0..3 {
        w.join();
        w.load(&topics, 150, 1_500);
        let victim = w.live_matchers()[0].clone();
        w.drain(&victim);
        w.load(&topics, 150, 1_500);
    }
    w.settle(10_000);
    assert!(w.acked() >= 850, "acked {}", w.acked());
    assert_eq!(w.violations(true), Vec::<String>::new());
    assert!(w.peer_messages > 0, "the handoffs went matcher to matcher");
}

#[test]
fn a_crash_loses_nothing_acked_at_r2() {
    let topics = topics(8);
    let mut w = World::new(2, 2, 3);
    subscribe_all(&mut w, &topics);
    for round in 0..3 {
        w.load(&topics, 100, 1_000);
        let live = w.live_matchers();
        let victim = live[round % live.len()].clone();
        w.crash(&victim);
        w.load(&topics, 200, 2_000);
        w.restart(&victim);
        w.load(&topics, 200, 2_000);
    }
    w.settle(15_000);
    assert!(w.acked() >= 1_400, "acked {}", w.acked());
    assert_eq!(w.violations(false), Vec::<String>::new());
}

/// A crash at R = 1 loses what the dead matcher held: the model notices (this is what
/// replication is for).
#[test]
fn the_model_notices_a_crash_at_r1() {
    let topics = topics(8);
    let mut w = World::new(3, 1, 3);
    subscribe_all(&mut w, &topics);
    w.load(&topics, 100, 1_000);
    // Kill the owner of a subscribed topic right after its events were acked, before its
    // subscribers' acks come back.
    let owner = Placement::new(&w.client_ring)
        .owner(&topics[0])
        .unwrap()
        .id
        .clone();
    for _ in 0..20 {
        w.publish(&topics[0]);
    }
    // Until the owner has queued notifications its subscribers have not read.
    for _ in 0..100 {
        if w.unread(&owner) > 0 {
            break;
        }
        w.settle(1);
    }
    assert!(w.unread(&owner) > 0);
    w.crash(&owner);
    // The subscriber's queue on the dead matcher is gone with it.
    w.load(&topics, 100, 1_000);
    w.restart(&owner);
    w.settle(10_000);
    assert!(
        !w.violations(false).is_empty(),
        "unacked notifications on a crashed R = 1 matcher cannot survive it"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Join,
    Drain(usize),
    Crash(usize),
    Subscribe(usize, bool),
    Load(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Join),
        1 => (0..8usize).prop_map(Op::Drain),
        1 => (0..8usize).prop_map(Op::Crash),
        1 => (0..9usize, any::<bool>()).prop_map(|(t, alo)| Op::Subscribe(t, alo)),
        3 => (20..120usize).prop_map(Op::Load),
    ]
}

fn run_ops(seed: u64, r2: bool, ops: Vec<Op>) -> (World, bool) {
    let replicas = if r2 { 2 } else { 1 };
    let topics = topics(6);
    let mut w = World::new(seed, replicas, 3);
    subscribe_all(&mut w, &topics);
    let mut crashed = false;
    for op in ops {
        match op {
            Op::Join => {
                w.join();
            }
            Op::Drain(i) => {
                let live = w.live_matchers();
                // Keep two matchers at least.
                let ring = w.coord.ring();
                if ring.members.len() > 2 {
                    let id = live[i % live.len()].clone();
                    w.drain(&id);
                }
            }
            Op::Crash(i) if replicas == 2 => {
                let ring = w.coord.ring();
                if ring.members.len() > 2 {
                    let live = w.live_matchers();
                    let id = live[i % live.len()].clone();
                    w.crash(&id);
                    w.load(&topics, 60, 1_500);
                    w.restart(&id);
                    crashed = true;
                }
            }
            Op::Crash(_) => {}
            Op::Subscribe(t, alo) => {
                let pattern = if t < topics.len() {
                    topics[t].clone()
                } else {
                    "t.>".into()
                };
                let mode = if alo {
                    DeliveryMode::AtLeastOnce
                } else {
                    DeliveryMode::AtMostOnce
                };
                w.subscribe(&pattern, mode);
            }
            Op::Load(n) => w.load(&topics, n, n as u64 * 10),
        }
    }
    (w, crashed)
}

proptest! {
    // A fixed seed: the same 12 cases on every run (tests are deterministic). Explore other
    // seeds with `PROPTEST_RNG_SEED=… PROPTEST_CASES=…`; counterexamples found that way go into
    // `cluster.proptest-regressions` or, replayed by name, below.
    #![proptest_config(ProptestConfig {
        cases: 12,
        rng_seed: proptest::test_runner::RngSeed::Fixed(
            std::env::var("PROPTEST_RNG_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0x5eed_0010),
        ),
        ..ProptestConfig::default()
    })]

    /// Random joins, drains, crashes (R = 2 only, one at a time, restarted), subscribes and
    /// publishes: every live matching subscription gets every acknowledged event.
    #[test]
    fn every_live_matching_subscription_gets_every_acked_event(
        seed in any::<u64>(),
        r2 in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..10),
    ) {
        let (mut w, crashed) = run_ops(seed, r2, ops);
        w.settle(15_000);
        let unacked = w.publishes.iter().filter(|p| p.acked.is_none()).count();
        prop_assert_eq!(unacked, 0, "every publish is acked in the end");
        // At-most-once subscriptions may lose what a crashed matcher queued for them.
        let v = w.violations(!crashed);
        prop_assert!(v.is_empty(), "violations: {:?}", v);
    }
}

/// A counterexample a random run found: R = 1, no crash; an at-most-once subscription
/// handed over by a draining matcher moved on again (a join) before its client attached, and
/// the event that waited in its queue at the middle matcher was lost (docs/chaos.md).
#[test]
fn drain_drain_join_loses_nothing_at_r1() {
    use Op::*;
    let ops = vec![
        Subscribe(1, false),
        Subscribe(4, false),
        Crash(6),
        Drain(1),
        Drain(1),
        Subscribe(1, true),
        Join,
        Load(92),
        Drain(3),
    ];
    let (mut w, crashed) = run_ops(6003945514292802429, false, ops);
    w.settle(15_000);
    assert_eq!(w.publishes.iter().filter(|p| p.acked.is_none()).count(), 0);
    assert_eq!(w.violations(!crashed), Vec::<String>::new());
}
