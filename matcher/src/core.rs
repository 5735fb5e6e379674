//! The matcher's core task: it alone owns the engine, the subscriptions' delivery state and
//! the ring, and reads a closed set of inputs from a bounded channel together with its next
//! deadline. Connection tasks validate and forward; notification tasks only write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::{HashMap, HashSet};
use sift_matcher_core::delivery::{AckWindow, DedupWindow};
use sift_matcher_core::gossip::{self, Effects, Gossip, Message, NodeId, Update};
use sift_matcher_core::handoff::{Incoming, Outgoing, Placed};
use sift_matcher_core::peers::Peers;
use sift_matcher_core::replica::{Held, Releases};
use sift_matcher_core::{Engine, EngineConfig, Match, NewSubscription, SetFilterError, Timestamp};
use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::{
    EndReason, ErrorCode, ErrorFrame, ExpirySpec, Frame, GroupSpec, Ring, RingMember,
};
use sift_protocol::peer::PeerFrame;
use sift_protocol::ring::Placement;
use sift_protocol::{DeliveryMode, Event, EventId, Filter, Pattern, SubscriptionId, Topic};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod replication;
mod transition;

use crate::config::{GossipConfig, MatcherConfig, SlowConsumer};
use crate::mesh::MeshCmd;
use crate::peer::PeerLinks;
use crate::queue::{DeliveryQueue, Item, Pushed};
use crate::replica::{unix_ms, SubRecord};

/// A client connection, as the core knows it.
pub(crate) type ConnId = u64;

/// A refusal, ready to become an error frame.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) ring_version: Option<u64>,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            ring_version: None,
        }
    }

    pub(crate) fn frame(self, req: Option<u64>) -> ErrorFrame {
        ErrorFrame {
            req,
            code: self.code,
            message: self.message,
            ring_version: self.ring_version,
        }
    }
}

/// Inputs of the core task.
pub(crate) enum Input {
    Subscribe {
        conn: ConnId,
        sub: NewSubscription,
        /// The filter as the client wrote it (what gossip replicates).
        filter_source: String,
        /// The ring version the client placed it by.
        ring_version: u64,
        reply: oneshot::Sender<Result<(u64, Arc<DeliveryQueue>), Refusal>>,
    },
    Unsubscribe {
        conn: ConnId,
        id: SubscriptionId,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Renew {
        conn: ConnId,
        id: SubscriptionId,
        reply: oneshot::Sender<Result<u64, Refusal>>,
    },
    SetFilter {
        conn: ConnId,
        id: SubscriptionId,
        filter: Filter,
        source: String,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Publish {
        topic: Topic,
        event: Event,
        acked: bool,
        /// The ring version the publisher routed by.
        ring_version: u64,
        reply: Option<oneshot::Sender<Result<(), Refusal>>>,
    },
    Ack {
        conn: ConnId,
        id: SubscriptionId,
        event: EventId,
    },
    Closed {
        conn: ConnId,
    },
    /// The coordinator's view: the active ring and the announced next one.
    Cluster {
        active: Ring,
        pending: Option<Ring>,
    },
    /// A message from another matcher, answered with one.
    Peer {
        from: String,
        frame: PeerFrame,
        reply: oneshot::Sender<PeerFrame>,
    },
    /// An answer from another matcher to a message this one sent.
    PeerAnswer {
        from: String,
        frame: PeerFrame,
    },
    RingNow {
        reply: oneshot::Sender<Ring>,
    },
    Stats {
        reply: oneshot::Sender<MatcherStats>,
    },
    /// A dissemination message from another gossip node.
    Gossip {
        from: NodeId,
        msg: Message<SubRecord>,
    },
    /// An event another gossip node matched against subscriptions held here.
    Forwarded {
        subs: Vec<SubscriptionId>,
        topic: Topic,
        event: Event,
    },
    /// The gossip nodes currently alive (this one excluded).
    Members(Vec<NodeId>),
}

struct Alo {
    window: AckWindow<EventId, Arc<EncodedEvent>>,
    /// Events waiting for room in the window.
    backlog: VecDeque<(EventId, Arc<EncodedEvent>)>,
    /// Encoded bytes in `backlog`.
    backlog_bytes: usize,
}

/// A subscription as its client asked for it: what a handoff sends.
struct Spec {
    pattern: String,
    filter: String,
    group: Option<GroupSpec>,
    mode: DeliveryMode,
    expiry: ExpirySpec,
}

struct Sub {
    /// The client connection it is delivered on; `None` for one handed over from another
    /// matcher whose client has not attached here yet (notifications wait in its queue).
    conn: Option<ConnId>,
    queue: Arc<DeliveryQueue>,
    spec: Spec,
    /// The exact topic, or `None` for a pattern.
    topic: Option<Box<str>>,
    next_delivery: u64,
    alo: Option<Alo>,
}

/// Counters the shell exports.
#[derive(Debug, Default, Clone)]
pub struct MatcherStats {
    /// Events accepted for matching.
    pub published: u64,
    /// Acknowledged publishes dropped as repeats.
    pub duplicates: u64,
    /// Notifications queued.
    pub notified: u64,
    /// Notifications dropped by the slow-consumer policy.
    pub dropped: u64,
    /// Notifications sent again after an ack timeout.
    pub redelivered: u64,
    /// Subscriptions ended because their consumer was too slow.
    pub slow_consumers: u64,
    /// Live subscriptions of this node's clients.
    pub subscriptions: usize,
    /// Gossip mode: subscriptions of other nodes' clients held here for matching.
    pub remote_subscriptions: usize,
    /// Gossip mode: copies set aside because their home node is down.
    pub suspended_subscriptions: usize,
    /// Gossip mode: other nodes alive, as membership sees them.
    pub members: usize,
    /// Gossip mode: dissemination messages sent.
    pub gossip_sent: u64,
    /// Gossip mode: encoded bytes of the dissemination messages sent.
    pub gossip_bytes: u64,
    /// Gossip mode: events forwarded to other nodes (once per node with matching
    /// subscribers).
    pub forwarded: u64,
    /// Gossip mode: messages to peers dropped because the link's queue was full.
    pub peer_dropped: u64,
    /// Partitioned mode: subscriptions handed over to other matchers for announced rings.
    pub handed_over: u64,
    /// Partitioned mode: subscriptions taken over from other matchers.
    pub taken_over: u64,
    /// Partitioned mode: unacknowledged notifications handed over with moving subscriptions.
    pub handed_over_unacked: u64,
    /// Partitioned mode: publishes of publishers on an older ring forwarded to the owner.
    pub forwarded_publishes: u64,
    /// Partitioned mode, R ≥ 2: held events delivered here after their dispatcher died.
    pub taken_over_events: u64,
    /// Partitioned mode, R ≥ 2: events held for other dispatchers.
    pub held_events: u64,
    /// Partitioned mode: the active ring's version.
    pub ring_version: u64,
    /// Partitioned mode: 1 while a handoff for an announced ring is under way.
    pub handoffs_in_progress: u64,
}

impl MatcherStats {
    /// The counters by name, as `sift admin stats` shows them.
    pub fn counters(&self) -> Vec<(String, u64)> {
        [
            ("published", self.published),
            ("duplicates", self.duplicates),
            ("notified", self.notified),
            ("dropped", self.dropped),
            ("redelivered", self.redelivered),
            ("slow_consumers", self.slow_consumers),
            ("subscriptions", self.subscriptions as u64),
            ("remote_subscriptions", self.remote_subscriptions as u64),
            (
                "suspended_subscriptions",
                self.suspended_subscriptions as u64,
            ),
            ("members", self.members as u64),
            ("gossip_sent", self.gossip_sent),
            ("gossip_bytes", self.gossip_bytes),
            ("forwarded", self.forwarded),
            ("peer_dropped", self.peer_dropped),
            ("handed_over", self.handed_over),
            ("taken_over", self.taken_over),
            ("handed_over_unacked", self.handed_over_unacked),
            ("forwarded_publishes", self.forwarded_publishes),
            ("taken_over_events", self.taken_over_events),
            ("held_events", self.held_events),
            ("ring_version", self.ring_version),
            ("handoffs_in_progress", self.handoffs_in_progress),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// What the core needs to run as a gossip node.
pub(crate) struct GossipSetup {
    pub(crate) id: NodeId,
    pub(crate) config: GossipConfig,
    pub(crate) mesh: mpsc::Sender<MeshCmd>,
}

/// Another node's subscription held in the engine here.
#[derive(Clone, Copy, Debug)]
struct Replica {
    home: NodeId,
    version: u64,
    since: u64,
    /// When it lapses unless renewed (Unix ms, grace included).
    until: u64,
    /// `SubRecord::shape` of the version held.
    shape: u64,
}

/// A gossip node's replication state.
struct Replication {
    id: NodeId,
    machine: Gossip<SubRecord>,
    peers: Vec<NodeId>,
    /// Subscriptions of other nodes held in the engine.
    remote: HashMap<SubscriptionId, Replica>,
    /// Other nodes' records for ids held here locally (a client that moved here): installed
    /// if the local subscription goes.
    shadowed: HashMap<SubscriptionId, Update<SubRecord>>,
    /// Copies whose home membership has declared down (or not yet seen): out of the engine
    /// (nothing is forwarded to a dead node, no group picks a member there), back in if the
    /// home comes back before they lapse.
    suspended: HashMap<SubscriptionId, Replica>,
    /// The nodes membership says are alive.
    members: HashSet<NodeId>,
    /// This node's subscriptions as announced (to announce renewals and new filters).
    local: HashMap<SubscriptionId, SubRecord>,
    mesh: mpsc::Sender<MeshCmd>,
    period: Duration,
    next_tick: Instant,
    grace_ms: u64,
    effects: Effects<SubRecord>,
}

pub(crate) struct Core {
    me: RingMember,
    config: MatcherConfig,
    engine: Engine,
    placement: Placement,
    subs: HashMap<SubscriptionId, Sub>,
    conns: HashMap<ConnId, HashSet<SubscriptionId>>,
    dedup: DedupWindow<EventId>,
    start: Instant,
    stats: MatcherStats,
    matches: Vec<Match>,
    expired: Vec<SubscriptionId>,
    /// R ≥ 2: which peers answer (probed every 100 ms, down after 500 ms of silence).
    live: Peers,
    /// R ≥ 2: events held for other owners (their dispatchers) until released.
    held: Held<EventId, Event>,
    /// R ≥ 2: events dispatched here, until their replicas may let go.
    releases: Releases<EventId>,
    /// Requests waiting for other matchers' answers, by the sequence number sent.
    waits: HashMap<u64, replication::Wait>,
    /// At-least-once subscriptions with unacked notifications: the only ones the redelivery
    /// scan visits.
    alo_pending: HashSet<SubscriptionId>,
    /// When the next redelivery scan is due (while `alo_pending` is not empty).
    redeliver_at: Option<Instant>,
    /// Gossip mode.
    gossip: Option<Box<Replication>>,
    /// Partitioned mode: the announced next ring, while a transition is under way.
    pending: Option<Placement>,
    /// What this matcher has handed over for `pending` and awaits answers for.
    outgoing: Option<Outgoing>,
    /// Subscriptions other matchers handed over here for an announced ring.
    incoming: Incoming,
    /// Sequence number of the last peer message sent.
    seq: u64,
    /// Links to the other matchers (with a coordinator).
    peers: Option<PeerLinks>,
    /// Completed handoffs, for the coordinator link to confirm.
    confirms: Option<mpsc::Sender<u64>>,
    /// The active ring, for those who wait on it (a lame-duck drain).
    ring_watch: watch::Sender<Ring>,
    /// Restarted while still in the ring at this version: not an owner at it (until then, at
    /// most: a coordinator that restarted too keeps the ring as it is).
    stale_floor: Option<(u64, Instant)>,
}

/// The longest a restarted matcher waits to be moved out of the ring and back in.
const STALE_MAX: Duration = Duration::from_secs(30);

/// R ≥ 2: how often peers are probed, and after how long without a word one is down.
const PING_EVERY_MS: u64 = 100;
const PEER_DOWN_AFTER_MS: u64 = 500;
/// R ≥ 2: most events held for other dispatchers (and tracked for release here).
const HELD_MAX: usize = 1 << 20;

/// A group pick's salt for an event: the same on every owner.
fn event_salt(id: EventId) -> u64 {
    let p = id.publisher.0;
    (p as u64) ^ ((p >> 64) as u64) ^ id.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Subscriptions per handoff message, and handed-over subscriptions per tail message.
const HANDOFF_CHUNK: usize = 256;

fn placed(topic: &Option<Box<str>>) -> Placed<'_> {
    match topic {
        Some(t) => Placed::Topic(t),
        None => Placed::Pattern,
    }
}

/// How often at-least-once windows are checked for overdue acks.
const REDELIVERY_SCAN: Duration = Duration::from_millis(50);

impl Core {
    pub(crate) fn new(
        me: RingMember,
        config: MatcherConfig,
        ring: Ring,
        gossip: Option<GossipSetup>,
        peers: Option<PeerLinks>,
        confirms: Option<mpsc::Sender<u64>>,
        ring_watch: watch::Sender<Ring>,
    ) -> Core {
        let dedup = DedupWindow::new(config.dedup_window.as_millis() as u64, config.dedup_ids_max);
        let engine = Engine::new(EngineConfig {
            subscriptions_max: config.subscriptions_max,
            ..EngineConfig::default()
        });
        Core {
            me,
            placement: Placement::new(&ring),
            config,
            engine,
            subs: HashMap::new(),
            conns: HashMap::new(),
            dedup,
            start: Instant::now(),
            stats: MatcherStats::default(),
            matches: Vec::new(),
            expired: Vec::new(),
            alo_pending: HashSet::new(),
            redeliver_at: None,
            live: Peers::new(PING_EVERY_MS, PEER_DOWN_AFTER_MS, 1),
            held: Held::new(HELD_MAX),
            releases: Releases::new(HELD_MAX),
            waits: HashMap::new(),
            pending: None,
            outgoing: None,
            incoming: Incoming::new(),
            seq: 0,
            peers,
            confirms,
            ring_watch,
            stale_floor: None,
            gossip: gossip.map(|setup| {
                let mut machine_config =
                    gossip::Config::new(setup.config.strategy, setup.id ^ unix_ms());
                machine_config.anti_entropy_every = setup.config.anti_entropy_every.max(1);
                // A tombstone outlives the longest lease, so an older copy offered after
                // it is collected has lapsed by itself.
                machine_config.tombstone_ttl = sift_protocol::limits::LEASE_MAX_MS
                    + setup.config.lease_grace.as_millis() as u64;
                Box::new(Replication {
                    id: setup.id,
                    machine: Gossip::new(setup.id, machine_config),
                    peers: Vec::new(),
                    remote: HashMap::new(),
                    shadowed: HashMap::new(),
                    suspended: HashMap::new(),
                    members: HashSet::new(),
                    local: HashMap::new(),
                    mesh: setup.mesh,
                    period: setup.config.period,
                    next_tick: Instant::now() + setup.config.period,
                    grace_ms: setup.config.lease_grace.as_millis() as u64,
                    effects: Effects::default(),
                })
            }),
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.start.elapsed().as_millis() as u64)
    }

    fn in_ring(&self) -> bool {
        !self.stale() && self.placement.members().iter().any(|m| m.id == self.me.id)
    }

    /// True when this matcher is one of the topic's owners (its R successive owners).
    fn owns(&self, topic: &str) -> bool {
        !self.stale() && self.placement.is_owner(topic, &self.me.id)
    }

    /// Restarted while the ring still had it: it serves nothing at that ring (what it held is
    /// gone; its replicas serve), until the coordinator moves it out and back in.
    fn stale(&self) -> bool {
        self.stale_floor
            .is_some_and(|(v, until)| self.placement.version() <= v && Instant::now() < until)
    }

    fn not_owner(&self, topic: &str) -> Refusal {
        let owner = self
            .placement
            .owner(topic)
            .map_or("nobody (empty ring)".into(), |m| m.id.clone());
        Refusal {
            code: ErrorCode::NotOwner,
            message: format!(
                "topic {topic:?} belongs to {owner} at ring version {}",
                self.placement.version()
            ),
            ring_version: Some(self.placement.version()),
        }
    }

    pub(crate) async fn run(mut self, mut input: mpsc::Receiver<Input>, cancel: CancellationToken) {
        loop {
            let wake = self.next_wakeup();
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = input.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => self.tick(),
            }
            self.flush_releases();
        }
        for (_, sub) in self.subs.drain() {
            sub.queue.end(EndReason::Shutdown);
        }
        debug!("core stopped");
    }

    fn next_wakeup(&self) -> Instant {
        let engine = self
            .engine
            .next_deadline()
            .map(|t| self.start + Duration::from_millis(t.0));
        let far = Instant::now() + Duration::from_secs(3600);
        engine
            .into_iter()
            .chain(self.redeliver_at)
            .chain(self.gossip.as_ref().map(|g| g.next_tick))
            .chain(
                self.liveness_deadline()
                    .map(|t| self.start + Duration::from_millis(t.0)),
            )
            .min()
            .unwrap_or(far)
    }

    fn tick(&mut self) {
        self.liveness_tick();
        let now = self.now();
        let mut expired = std::mem::take(&mut self.expired);
        self.engine.expire(now, &mut expired);
        for id in expired.drain(..) {
            if let Some(sub) = self.subs.get(&id) {
                if sub.conn.is_none() {
                    info!(sub = %id, "a handed-over subscription expired before its client attached");
                } else {
                    debug!(sub = %id, "subscription expired");
                }
                self.forget(id, EndReason::Expired);
            } else {
                self.drop_remote(id);
            }
        }
        self.expired = expired;
        if let Some(g) = self.gossip.as_deref_mut() {
            if g.next_tick <= Instant::now() {
                g.machine.tick(now.0, &g.peers, &mut g.effects);
                g.next_tick = Instant::now() + g.period;
                self.gossip_flush();
                self.expire_suspended();
            }
        }
        if self.redeliver_at.is_some_and(|at| at <= Instant::now()) {
            self.redeliver(now);
            self.redeliver_at =
                (!self.alo_pending.is_empty()).then(|| Instant::now() + REDELIVERY_SCAN);
        }
    }

    /// Notes that `id` has unacked notifications, so the redelivery scan visits it.
    fn awaiting_acks(&mut self, id: SubscriptionId) {
        self.alo_pending.insert(id);
        if self.redeliver_at.is_none() {
            self.redeliver_at = Some(Instant::now() + REDELIVERY_SCAN);
        }
    }

    fn redeliver(&mut self, now: Timestamp) {
        for id in &self.alo_pending {
            let Some(sub) = self.subs.get_mut(id) else {
                continue;
            };
            // Not attached yet: what it has waits in its queue; redeliveries start once its
            // client is here.
            if sub.conn.is_none() {
                continue;
            }
            let Some(alo) = &mut sub.alo else { continue };
            for due in alo.window.due(now) {
                let item = Item::Notify {
                    delivery: due.delivery,
                    redelivered: true,
                    event: due.item.clone(),
                };
                if sub.queue.push(item, false) == Pushed::Refused {
                    debug!(sub = %id, "redelivery refused by a full queue");
                }
                self.stats.redelivered += 1;
            }
        }
    }

    /// Drops a subscription from the engine and ends its stream.
    fn forget(&mut self, id: SubscriptionId, reason: EndReason) {
        // A subscription being handed over: its receivers forget it too.
        self.mirror(id, true);
        if let Some(mut sub) = self.subs.remove(&id) {
            self.alo_pending.remove(&id);
            self.incoming.settle(id);
            // Its unacknowledged notifications will never be acked: replicas may let go.
            if let Some(alo) = &mut sub.alo {
                for t in alo.window.take_all() {
                    self.releases.acked(&t.key);
                }
                for (key, _) in alo.backlog.drain(..) {
                    self.releases.acked(&key);
                }
            }
            let _ = self.engine.unsubscribe(id);
            sub.queue.end(reason);
            if let Some(set) = sub.conn.and_then(|c| self.conns.get_mut(&c)) {
                set.remove(&id);
            }
            self.originate(id, None);
            // Another node's record for the same id waited behind the local one.
            if let Some(shadowed) = self
                .gossip
                .as_deref_mut()
                .and_then(|g| g.shadowed.remove(&id))
            {
                self.apply_remote(shadowed);
            }
        }
    }

    fn handle(&mut self, msg: Input) {
        // A dropped reply means the requester went away; nothing to undo.
        match msg {
            Input::Subscribe {
                conn,
                sub,
                filter_source,
                ring_version,
                reply,
            } => {
                let id = sub.id;
                let result = self.subscribe(conn, sub, filter_source, ring_version);
                if result.is_ok() {
                    self.mirror(id, false);
                }
                let _ = reply.send(result);
            }
            Input::Unsubscribe { conn, id, reply } => {
                let _ = reply.send(
                    self.own(conn, id)
                        .map(|_| self.forget(id, EndReason::Unsubscribed)),
                );
            }
            Input::Renew { conn, id, reply } => {
                let now = self.now();
                let result = self.own(conn, id).and_then(|_| {
                    let deadline = self
                        .engine
                        .renew(now, id)
                        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
                    Ok(deadline.0.saturating_sub(now.0))
                });
                if let Ok(remaining) = result {
                    self.reannounce(id, |r| r.deadline_unix_ms = unix_ms() + remaining);
                    self.mirror(id, false);
                }
                let _ = reply.send(result);
            }
            Input::SetFilter {
                conn,
                id,
                filter,
                source,
                reply,
            } => {
                let result = self.own(conn, id).and_then(|_| {
                    self.engine
                        .set_filter(id, &filter)
                        .map_err(|e: SetFilterError| Refusal::new(e.code(), e.to_string()))
                });
                if result.is_ok() {
                    if let Some(sub) = self.subs.get_mut(&id) {
                        sub.spec.filter = source.clone();
                    }
                    self.reannounce(id, |r| r.filter = source);
                    self.mirror(id, false);
                }
                let _ = reply.send(result);
            }
            Input::Publish {
                topic,
                event,
                acked,
                ring_version,
                reply,
            } => {
                if self.placement.replicas() >= 2 && self.gossip.is_none() {
                    self.publish_replicated(topic, event, acked, ring_version, reply);
                } else {
                    let result = self.publish(&topic, event, acked, ring_version);
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
            }
            Input::Ack { conn, id, event } => self.ack(conn, id, event),
            Input::Cluster { active, pending } => self.cluster(active, pending),
            Input::Peer { from, frame, reply } => self.peer(&from, frame, reply),
            Input::PeerAnswer { from, frame } => self.peer_answer(&from, frame),
            Input::Closed { conn } => {
                for id in self.conns.remove(&conn).unwrap_or_default() {
                    self.forget(id, EndReason::Shutdown);
                }
            }
            Input::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.subscriptions = self.subs.len();
                stats.ring_version = self.placement.version();
                stats.held_events = self.held.len() as u64;
                stats.handoffs_in_progress = u64::from(self.outgoing.is_some());
                if let Some(g) = &self.gossip {
                    stats.remote_subscriptions = g.remote.len();
                    stats.suspended_subscriptions = g.suspended.len();
                    stats.members = g.peers.len();
                }
                let _ = reply.send(stats);
            }
            Input::Gossip { from, msg } => {
                let now = self.now();
                if let Some(g) = self.gossip.as_deref_mut() {
                    g.machine
                        .on_message(from, msg, now.0, &g.peers, &mut g.effects);
                    self.gossip_flush();
                }
            }
            Input::Forwarded { subs, topic, event } => self.forwarded(&subs, &topic, &event),
            Input::Members(peers) => self.members_changed(peers),
            Input::RingNow { reply } => {
                let _ = reply.send(self.placement.ring());
            }
        }
    }

    /// The subscription exists and belongs to `conn`.
    fn own(&self, conn: ConnId, id: SubscriptionId) -> Result<(), Refusal> {
        match self.subs.get(&id) {
            Some(s) if s.conn == Some(conn) => Ok(()),
            _ => Err(Refusal::new(
                ErrorCode::UnknownSubscription,
                format!("unknown subscription {id}"),
            )),
        }
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        sub: NewSubscription,
        filter_source: String,
        ring_version: u64,
    ) -> Result<(u64, Arc<DeliveryQueue>), Refusal> {
        self.epoch(ring_version)?;
        let topic = sub.pattern.as_topic();
        match &topic {
            Some(t) if !self.owns(t) => return Err(self.not_owner(t)),
            None if !self.in_ring() => {
                return Err(Refusal {
                    code: ErrorCode::NotOwner,
                    message: format!(
                        "{} is not in the ring at version {}",
                        self.me.id,
                        self.placement.version()
                    ),
                    ring_version: Some(self.placement.version()),
                })
            }
            _ => {}
        }
        let per_conn = self.conns.get(&conn).map_or(0, HashSet::len);
        if let Some(held) = self.subs.get_mut(&sub.id).filter(|s| s.conn.is_none()) {
            // Handed over from another matcher: the client attaches, and what waited for it
            // in the queue goes out first.
            if per_conn >= self.config.subscriptions_per_connection_max {
                let max = self.config.subscriptions_per_connection_max;
                return Err(Refusal::new(
                    ErrorCode::TooManySubscriptions,
                    format!("at most {max} subscriptions per connection"),
                ));
            }
            held.conn = Some(conn);
            let queue = held.queue.clone();
            if held.spec.filter != filter_source
                && self.engine.set_filter(sub.id, &sub.filter).is_ok()
            {
                held.spec.filter = filter_source;
            }
            self.incoming.settle(sub.id);
            self.conns.entry(conn).or_default().insert(sub.id);
            let now = self.now();
            let remaining = self
                .engine
                .get(sub.id)
                .map_or(0, |i| i.deadline.0.saturating_sub(now.0));
            return Ok((remaining, queue));
        }
        if self.subs.get(&sub.id).is_some_and(|s| s.conn != Some(conn)) {
            // The client subscribes again from a new connection before this matcher noticed
            // its old one was gone: the subscription moves to the new connection.
            self.forget(sub.id, EndReason::Moved);
        }
        let per_conn = self.conns.get(&conn).map_or(0, HashSet::len);
        if per_conn >= self.config.subscriptions_per_connection_max {
            let max = self.config.subscriptions_per_connection_max;
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let (id, mode) = (sub.id, sub.mode);
        let spec = Spec {
            pattern: sub.pattern.as_str().to_owned(),
            filter: filter_source.clone(),
            group: sub.group.clone(),
            mode,
            expiry: sub.expiry,
        };
        let now = self.now();
        let record = self.gossip.as_ref().map(|_| SubRecord {
            pattern: sub.pattern.as_str().to_owned(),
            filter: filter_source,
            group: sub.group.clone(),
            mode,
            deadline_unix_ms: 0,
            // Now: a client that moves here (again) wins over its earlier homes.
            since_unix_ms: unix_ms(),
        });
        if let Some(g) = self.gossip.as_deref_mut() {
            // Another node's copy with the same id (the client moved here): the local one
            // replaces it, and the copy waits in `shadowed` in case the local one goes.
            if let Some(copy) = g.remote.remove(&id) {
                let _ = self.engine.unsubscribe(id);
                if let Some((version, Some(body))) = g.machine.get(copy.home, id.0) {
                    let update = Update {
                        origin: copy.home,
                        key: id.0,
                        version,
                        body: Some(body.clone()),
                    };
                    g.shadowed.insert(id, update);
                }
            }
        }
        if let Err(e) = self.engine.subscribe(now, sub) {
            // Refused: the copy it would have replaced comes back.
            if let Some(copy) = self
                .gossip
                .as_deref_mut()
                .and_then(|g| g.shadowed.remove(&id))
            {
                self.apply_remote(copy);
            }
            return Err(Refusal::new(e.code(), e.to_string()));
        }
        let deadline = self.engine.get(id).map_or(now, |i| i.deadline);
        if let Some(mut record) = record {
            record.deadline_unix_ms = unix_ms() + deadline.0.saturating_sub(now.0);
            self.originate(id, Some(record));
        }
        let queue = DeliveryQueue::new(self.config.queue_len_max, self.config.queue_bytes_max);
        let alo = (mode == DeliveryMode::AtLeastOnce).then(|| Alo {
            window: AckWindow::new(
                self.config.redelivery_window,
                self.config.ack_timeout.as_millis() as u64,
            ),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        });
        let topic = topic.map(|t| t.as_str().into());
        self.subs.insert(
            id,
            Sub {
                conn: Some(conn),
                queue: queue.clone(),
                spec,
                topic,
                next_delivery: 1,
                alo,
            },
        );
        self.conns.entry(conn).or_default().insert(id);
        Ok((deadline.0.saturating_sub(now.0), queue))
    }

    fn publish(
        &mut self,
        topic: &Topic,
        event: Event,
        acked: bool,
        ring_version: u64,
    ) -> Result<(), Refusal> {
        self.epoch(ring_version)?;
        if !self.owns(topic) {
            // A fire-and-forget publisher on an older ring reached a former owner: nothing
            // would tell it to retry, so the event goes on to the owner. An acknowledged
            // publish is refused: the SDK retries it at the owner.
            if !acked && ring_version < self.placement.version() && self.forward(topic, &event) {
                return Ok(());
            }
            return Err(self.not_owner(topic));
        }
        let now = self.now();
        if acked && !self.dedup.first_time(now, event.id) {
            self.stats.duplicates += 1;
            return Ok(());
        }
        self.stats.published += 1;
        self.match_and_deliver(now, topic, &event, false)?;
        Ok(())
    }

    /// Matches `event` and delivers it to the matching subscriptions here (in gossip mode,
    /// forwards it to the nodes of the matching copies); the at-least-once notifications
    /// that now wait for an ack.
    fn match_and_deliver(
        &mut self,
        now: Timestamp,
        topic: &Topic,
        event: &Event,
        redelivered: bool,
    ) -> Result<u32, Refusal> {
        let mut outstanding = 0;
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        // With replicas, a group picks its member by the event's id, so that a takeover
        // redelivers to the member the failed dispatcher picked (the SDK drops the repeat).
        let salt = (self.placement.replicas() >= 2).then(|| event_salt(event.id));
        self.engine
            .match_event_salted(now, topic, &event.attrs, salt, &mut matches);
        if !matches.is_empty() {
            let encoded = EncodedEvent::new(event).map_err(|e| {
                Refusal::new(ErrorCode::Internal, format!("cannot encode the event: {e}"))
            })?;
            let encoded = Arc::new(encoded);
            let mut forwards: Vec<(NodeId, Vec<SubscriptionId>)> = Vec::new();
            for m in &matches {
                if self.subs.contains_key(&m.id) {
                    if self.deliver(now, m.id, event.id, &encoded, redelivered) {
                        outstanding += 1;
                    }
                } else if let Some(home) = self
                    .gossip
                    .as_ref()
                    .and_then(|g| g.remote.get(&m.id))
                    .map(|c| c.home)
                {
                    match forwards.iter_mut().find(|(n, _)| *n == home) {
                        Some((_, subs)) => subs.push(m.id),
                        None => forwards.push((home, vec![m.id])),
                    }
                }
            }
            if let Some(g) = self.gossip.as_deref() {
                for (to, subs) in forwards {
                    let frame = Frame::Forward {
                        subs,
                        event: event.clone(),
                    };
                    if g.mesh.try_send(MeshCmd::Send { to, frame }).is_ok() {
                        self.stats.forwarded += 1;
                    } else {
                        self.stats.peer_dropped += 1;
                    }
                }
            }
        }
        self.matches = matches;
        Ok(outstanding)
    }

    /// An event matched at another gossip node for subscriptions held here.
    fn forwarded(&mut self, subs: &[SubscriptionId], topic: &Topic, event: &Event) {
        let now = self.now();
        // Checked again against the subscriptions as they are here: the sender matched its
        // copies, which may be a filter change behind.
        let mut subs = subs.to_vec();
        subs.retain(|&id| {
            self.subs.contains_key(&id)
                && self.engine.matches_one(now, id, topic, &event.attrs) == Some(true)
        });
        if subs.is_empty() {
            return;
        }
        let encoded = match EncodedEvent::new(event) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                warn!(error = %e, "cannot encode a forwarded event");
                return;
            }
        };
        for id in subs {
            self.deliver(now, id, event.id, &encoded, false);
        }
    }

    /// Gossip mode: announces a change of this node's subscription `id` (`None`: gone).
    fn originate(&mut self, id: SubscriptionId, body: Option<SubRecord>) {
        let now = self.now();
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        match &body {
            Some(record) => {
                g.local.insert(id, record.clone());
            }
            None => {
                if g.local.remove(&id).is_none() {
                    return;
                }
            }
        }
        g.machine
            .originate(id.0, body, now.0, &g.peers, &mut g.effects);
        self.gossip_flush();
    }

    /// Gossip mode: announces a new version of local subscription `id`.
    fn reannounce(&mut self, id: SubscriptionId, change: impl FnOnce(&mut SubRecord)) {
        let Some(mut record) = self.gossip.as_ref().and_then(|g| g.local.get(&id).cloned()) else {
            return;
        };
        change(&mut record);
        self.originate(id, Some(record));
    }

    /// Sends what the gossip state machine produced and applies what it learned.
    fn gossip_flush(&mut self) {
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        let mut effects = std::mem::take(&mut g.effects);
        for send in effects.sends.drain(..) {
            let data = match rmp_serde::to_vec(&send.msg) {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot encode a gossip message");
                    continue;
                }
            };
            let bytes = data.len() as u64;
            let frame = Frame::Gossip {
                from: g.id,
                data: data.into(),
            };
            if g.mesh
                .try_send(MeshCmd::Send { to: send.to, frame })
                .is_ok()
            {
                self.stats.gossip_sent += 1;
                self.stats.gossip_bytes += bytes;
            } else {
                self.stats.peer_dropped += 1;
            }
        }
        let learned: Vec<Update<SubRecord>> = effects.learned.drain(..).collect();
        g.effects = effects;
        for update in learned {
            self.apply_remote(update);
        }
    }

    /// Gossip mode: another node's subscription changed.
    fn apply_remote(&mut self, update: Update<SubRecord>) {
        let id = SubscriptionId(update.key);
        let now = self.now();
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        if self.subs.contains_key(&id) {
            // Held here for a local client: that one wins; keep the record in case it goes.
            match &update.body {
                Some(_) => {
                    g.shadowed.insert(id, update);
                }
                None => {
                    if g.shadowed
                        .get(&id)
                        .is_some_and(|s| s.origin == update.origin)
                    {
                        g.shadowed.remove(&id);
                    }
                }
            }
            return;
        }
        let remaining = update.body.as_ref().map_or(0, |r| {
            r.deadline_unix_ms
                .saturating_add(g.grace_ms)
                .saturating_sub(unix_ms())
                .min(sift_protocol::limits::LEASE_MAX_MS)
        });
        // A renewal of a copy in the engine: only its deadline moves.
        if let (Some(copy), Some(record)) = (g.remote.get_mut(&id), &update.body) {
            if copy.home == update.origin
                && remaining > 0
                && copy.since == record.since_unix_ms
                && copy.shape == record.shape()
            {
                let deadline = now.plus_millis(remaining);
                if self.engine.extend(now, id, deadline) {
                    copy.version = update.version;
                    copy.until = unix_ms().saturating_add(remaining);
                    return;
                }
            }
        }
        if let Some(copy) = g
            .remote
            .get(&id)
            .copied()
            .or_else(|| g.suspended.get(&id).copied())
        {
            if copy.home != update.origin {
                // Two homes claim this id (its client moved): the later subscription wins,
                // and the loser is dropped from the store so this node does not pass it on.
                let incoming = update
                    .body
                    .as_ref()
                    .map(|r| (r.since_unix_ms, update.origin));
                match incoming {
                    Some(order) if remaining > 0 && order > (copy.since, copy.home) => {
                        g.machine.retire(copy.home, id.0, copy.version);
                    }
                    _ => {
                        g.machine.retire(update.origin, update.key, update.version);
                        return;
                    }
                }
            }
            if g.remote.remove(&id).is_some() {
                let _ = self.engine.unsubscribe(id);
            }
            g.suspended.remove(&id);
        }
        let Some(record) = update.body else {
            return;
        };
        if remaining == 0 {
            g.machine.retire(update.origin, update.key, update.version);
            return;
        }
        let copy = Replica {
            home: update.origin,
            version: update.version,
            since: record.since_unix_ms,
            until: unix_ms().saturating_add(remaining),
            shape: record.shape(),
        };
        if !g.members.contains(&update.origin) {
            g.suspended.insert(id, copy);
            return;
        }
        let sub = match record.to_subscription(id, remaining) {
            Ok(sub) => sub,
            Err(e) => {
                warn!(sub = %id, node = update.origin, error = %e, "ignoring a replicated subscription");
                return;
            }
        };
        match self.engine.subscribe(now, sub) {
            Ok(()) => {
                g.remote.insert(id, copy);
            }
            Err(e) => {
                warn!(sub = %id, node = update.origin, error = %e, "cannot hold a replicated subscription");
                g.machine.retire(update.origin, update.key, update.version);
            }
        }
    }

    /// Gossip mode: membership changed. Copies of nodes now down leave the engine (kept aside
    /// until they lapse); copies of nodes back up return.
    fn members_changed(&mut self, peers: Vec<NodeId>) {
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        info!(members = peers.len(), "gossip membership changed");
        g.members = peers.iter().copied().collect();
        g.peers = peers;
        let gone: Vec<SubscriptionId> = g
            .remote
            .iter()
            .filter(|(_, c)| !g.members.contains(&c.home))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(copy) = g.remote.remove(&id) {
                let _ = self.engine.unsubscribe(id);
                g.suspended.insert(id, copy);
            }
        }
        let back: Vec<(SubscriptionId, Replica)> = g
            .suspended
            .iter()
            .filter(|(_, c)| g.members.contains(&c.home))
            .map(|(id, c)| (*id, *c))
            .collect();
        let mut reinstall = Vec::new();
        for (id, copy) in back {
            g.suspended.remove(&id);
            if let Some((version, Some(body))) = g.machine.get(copy.home, id.0) {
                reinstall.push(Update {
                    origin: copy.home,
                    key: id.0,
                    version,
                    body: Some(body.clone()),
                });
            }
        }
        for update in reinstall {
            self.apply_remote(update);
        }
    }

    /// Gossip mode: set-aside copies whose lease ran out are forgotten.
    fn expire_suspended(&mut self) {
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        let now = unix_ms();
        let lapsed: Vec<(SubscriptionId, Replica)> = g
            .suspended
            .iter()
            .filter(|(_, c)| c.until <= now)
            .map(|(id, c)| (*id, *c))
            .collect();
        for (id, copy) in lapsed {
            g.suspended.remove(&id);
            g.machine.retire(copy.home, id.0, copy.version);
        }
    }

    /// Gossip mode: another node's subscription lapsed here.
    fn drop_remote(&mut self, id: SubscriptionId) {
        if let Some(g) = self.gossip.as_deref_mut() {
            if let Some(copy) = g.remote.remove(&id) {
                g.machine.retire(copy.home, id.0, copy.version);
            }
        }
    }

    fn deliver(
        &mut self,
        now: Timestamp,
        id: SubscriptionId,
        event_id: EventId,
        event: &Arc<EncodedEvent>,
        redelivered: bool,
    ) -> bool {
        let Some(sub) = self.subs.get_mut(&id) else {
            return false;
        };
        let drop_oldest = self.config.slow_consumer == SlowConsumer::DropOldest;
        let mut awaiting = false;
        // An at-least-once notification now waits for its ack (sent or queued for room).
        let mut outstanding = false;
        let pushed = match &mut sub.alo {
            Some(alo) => {
                if alo.window.contains(&event_id) {
                    // Handed over again (a retried tail): it is in the window already.
                    Pushed::Queued
                } else if alo.backlog.is_empty() && !alo.window.is_full() {
                    match alo.window.offer(now, event_id, event.clone()) {
                        Ok(delivery) => {
                            awaiting = true;
                            outstanding = true;
                            sub.queue.push(
                                Item::Notify {
                                    delivery,
                                    redelivered,
                                    event: event.clone(),
                                },
                                false,
                            )
                        }
                        Err(e) => {
                            alo.backlog_bytes += e.len();
                            alo.backlog.push_back((event_id, e));
                            outstanding = true;
                            Pushed::Queued
                        }
                    }
                } else if alo.backlog.len() < self.config.queue_len_max
                    && alo.backlog_bytes + event.len() <= self.config.queue_bytes_max
                {
                    alo.backlog_bytes += event.len();
                    alo.backlog.push_back((event_id, event.clone()));
                    outstanding = true;
                    Pushed::Queued
                } else {
                    // Dropping would break at-least-once: end the subscription instead.
                    Pushed::Refused
                }
            }
            None => {
                let delivery = sub.next_delivery;
                sub.next_delivery += 1;
                sub.queue.push(
                    Item::Notify {
                        delivery,
                        redelivered,
                        event: event.clone(),
                    },
                    drop_oldest,
                )
            }
        };
        if awaiting {
            self.awaiting_acks(id);
        }
        match pushed {
            Pushed::Queued => self.stats.notified += 1,
            Pushed::DroppedOldest => {
                self.stats.notified += 1;
                self.stats.dropped += 1;
            }
            Pushed::Refused => {
                self.stats.slow_consumers += 1;
                warn!(sub = %id, "slow consumer: subscription ended");
                self.forget(id, EndReason::SlowConsumer);
                return false;
            }
        }
        outstanding
    }

    fn ack(&mut self, conn: ConnId, id: SubscriptionId, event_id: EventId) {
        let now = self.now();
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if sub.conn != Some(conn) {
            return;
        }
        let Some(alo) = &mut sub.alo else { return };
        if !alo.window.ack(&event_id) {
            return;
        }
        self.releases.acked(&event_id);
        // Room in the window: send what waited.
        while !alo.window.is_full() {
            let Some((key, event)) = alo.backlog.pop_front() else {
                break;
            };
            alo.backlog_bytes -= event.len();
            match alo.window.offer(now, key, event.clone()) {
                Ok(delivery) => {
                    sub.queue.push(
                        Item::Notify {
                            delivery,
                            redelivered: false,
                            event,
                        },
                        false,
                    );
                }
                Err(e) => {
                    alo.backlog_bytes += e.len();
                    alo.backlog.push_front((key, e));
                    break;
                }
            }
        }
        if alo.window.is_empty() {
            self.alo_pending.remove(&id);
        }
    }
}

/// Parses a subscription request into the engine's terms; typed refusals for bad input.
pub(crate) fn parse_subscribe(
    s: &sift_protocol::frame::Subscribe,
) -> Result<NewSubscription, Refusal> {
    let pattern = Pattern::parse(&s.pattern)
        .map_err(|e| Refusal::new(ErrorCode::InvalidTopic, e.to_string()))?;
    let filter = Filter::parse(&s.filter)
        .map_err(|e| Refusal::new(ErrorCode::InvalidFilter, e.to_string()))?;
    Ok(NewSubscription {
        id: s.id,
        pattern,
        filter,
        expiry: s.expiry,
        group: s.group.clone(),
        mode: s.mode,
    })
}
