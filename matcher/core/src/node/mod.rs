//! The matcher's state machine, pure: it alone owns the engine, the subscriptions' delivery
//! state (at-least-once windows, backlogs, redelivery), the ring and its transitions (epochs,
//! handoff, confirmation), replication with R ≥ 2 (dispatch, hold, release, takeover) and
//! gossip mode's replicated subscriptions.
//!
//! No tokio and no I/O: every `handle_*` takes the time (`now`, milliseconds on the node's
//! own monotonic clock) and returns its answer; what must go out to other matchers, to the
//! coordinator or to a waiting publisher is queued as an [`Effect`] the caller takes with
//! [`Node::take_effects`]. [`Node::next_deadline`] says when [`Node::tick`] is due next.
//! Notifications go into each subscription's [`Outlet`], the bounded queue in front of its
//! stream (the shell's, or a test's recorder).
//!
//! The shell (`sift-matcher`'s core task) is a dispatcher: it reads its inputs, calls the
//! node, and moves the effects' bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::{
    EndReason, ErrorCode, ErrorFrame, ExpirySpec, Frame, GroupSpec, Ring, RingMember,
};
use sift_protocol::peer::PeerFrame;
use sift_protocol::ring::Placement;
use sift_protocol::{DeliveryMode, Event, EventId, Filter, Limits, Pattern, SubscriptionId, Topic};
use tracing::{debug, info, warn};

use crate::delivery::{AckWindow, DedupWindow};
use crate::gossip::{self, Effects, Gossip, Message, NodeId, Strategy, Update};
use crate::handoff::{self, Incoming, Outgoing, Placed};
use crate::peers::Peers;
use crate::replica::{Held, Releases};
use crate::{Engine, EngineConfig, Match, NewSubscription, SetFilterError, Timestamp};

mod gossip_mode;
mod record;
mod replication;
mod transition;

pub use record::{RecordError, SubRecord};

/// A client connection, as the node knows it (the shell numbers them).
pub type ConnId = u64;

/// Names a request whose answer comes later as an [`Effect`] (the shell keeps the waiter).
pub type Token = u64;

/// A refusal, ready to become an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code the client sees.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The node's ring version, for `not-owner`.
    pub ring_version: Option<u64>,
}

impl Refusal {
    /// A refusal without a ring version.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            ring_version: None,
        }
    }

    /// The error frame answering request `req`.
    pub fn frame(self, req: Option<u64>) -> ErrorFrame {
        ErrorFrame {
            req,
            code: self.code,
            message: self.message,
            ring_version: self.ring_version,
        }
    }
}

/// What happened to a notification pushed into an [`Outlet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued after dropping the oldest one.
    DroppedOldest,
    /// Not queued: the queue is full (the node ends the subscription) or already ended.
    Refused,
}

/// The bounded queue in front of one subscription's notification stream. The node never
/// waits on it: when it is full the slow-consumer policy decides.
pub trait Outlet {
    /// A new queue of at most `len_max` notifications and `bytes_max` encoded bytes.
    fn open(len_max: usize, bytes_max: usize) -> Arc<Self>;
    /// Queues a notification; when full, drops the oldest if `drop_oldest`, else refuses.
    fn push(
        &self,
        delivery: u64,
        redelivered: bool,
        event: Arc<EncodedEvent>,
        drop_oldest: bool,
    ) -> Pushed;
    /// Ends the stream (after what is queued, unless the reason makes it moot).
    fn end(&self, reason: EndReason);
    /// Takes back the notifications still waiting in the queue, oldest first. The node asks
    /// only of a queue no client has attached to (a handed-over subscription that moves on
    /// before its client came): what waits there goes on with the subscription.
    fn take_waiting(&self) -> Vec<Arc<EncodedEvent>>;
}

/// What to do when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Drop the oldest queued notification and count it (at-most-once subscriptions only;
    /// an at-least-once subscription is ended instead, since dropping would break its promise).
    #[default]
    DropOldest,
    /// End the subscription with `SlowConsumer`.
    Disconnect,
}

/// What the node asks the world to do.
#[derive(Debug)]
pub enum Effect {
    /// Send `frame` to matcher `to` (retransmitted by the link until answered).
    Peer {
        /// The receiver.
        to: RingMember,
        /// The message.
        frame: PeerFrame,
    },
    /// The answer to the acknowledged publish the shell named `token`.
    Answer {
        /// The publish.
        token: Token,
        /// Its outcome.
        result: Result<(), Refusal>,
    },
    /// The answer to the peer message the shell named `token`.
    PeerReply {
        /// The message answered.
        token: Token,
        /// The answer.
        frame: PeerFrame,
    },
    /// The handoff for ring `version` is complete: tell the coordinator.
    Confirm(u64),
    /// `ring` is active here; links to matchers other than `keep` may close.
    RingActive {
        /// The ring now active.
        ring: Ring,
        /// Matchers of the active and the announced ring (this one excluded).
        keep: Vec<String>,
    },
    /// Gossip mode: a frame (dissemination, or a forwarded event) for node `to`.
    Mesh {
        /// The receiver.
        to: NodeId,
        /// The frame.
        frame: Frame,
    },
}

/// The node's settings (the shell's `MatcherConfig`, in the node's terms).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Most subscriptions held (local and replicated).
    pub subscriptions_max: usize,
    /// Most subscriptions per client connection.
    pub subscriptions_per_connection_max: usize,
    /// Most notifications queued per subscription.
    pub queue_len_max: usize,
    /// Most encoded bytes queued per subscription.
    pub queue_bytes_max: usize,
    /// What a full queue does.
    pub slow_consumer: SlowConsumer,
    /// At-least-once: milliseconds before an unacknowledged notification is sent again.
    pub ack_timeout_ms: u64,
    /// At-least-once: most unacknowledged notifications per subscription.
    pub redelivery_window: usize,
    /// Milliseconds an acknowledged publish's id is remembered to drop repeats.
    pub dedup_window_ms: u64,
    /// Most ids remembered for that.
    pub dedup_ids_max: usize,
    /// Event limits (for events other matchers send).
    pub limits: Limits,
    /// Whether there are links to other matchers (a coordinator is configured).
    pub linked: bool,
    /// Wall-clock Unix milliseconds at `now` = 0 (gossip records carry wall-clock times).
    pub unix_base_ms: u64,
    /// Gossip mode, if this node is a gossip node.
    pub gossip: Option<GossipNodeConfig>,
}

impl NodeConfig {
    /// Defaults as the matcher's, for tests and simulations.
    pub fn for_test() -> NodeConfig {
        NodeConfig {
            subscriptions_max: 1_000_000,
            subscriptions_per_connection_max: 10_000,
            queue_len_max: 10_000,
            queue_bytes_max: 64 << 20,
            slow_consumer: SlowConsumer::DropOldest,
            ack_timeout_ms: 2_000,
            redelivery_window: 1_024,
            dedup_window_ms: 60_000,
            dedup_ids_max: 1 << 20,
            limits: Limits::default(),
            linked: true,
            unix_base_ms: 0,
            gossip: None,
        }
    }
}

/// Gossip mode settings.
#[derive(Clone, Debug)]
pub struct GossipNodeConfig {
    /// This node's gossip id.
    pub id: NodeId,
    /// How subscriptions spread.
    pub strategy: Strategy,
    /// Milliseconds between dissemination rounds.
    pub period_ms: u64,
    /// Anti-entropy every this many rounds.
    pub anti_entropy_every: u32,
    /// Milliseconds a replicated subscription outlives its home's deadline.
    pub lease_grace_ms: u64,
    /// Seed of the dissemination's random choices.
    pub seed: u64,
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

struct Sub<Q> {
    /// The client connection it is delivered on; `None` for one handed over from another
    /// matcher whose client has not attached here yet (notifications wait in its queue).
    conn: Option<ConnId>,
    queue: Arc<Q>,
    spec: Spec,
    /// The exact topic, or `None` for a pattern.
    topic: Option<Box<str>>,
    next_delivery: u64,
    alo: Option<Alo>,
}

/// Counters the node keeps (the shell exports them).
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
    /// Partitioned mode: copies of unacknowledged notifications sent to moving
    /// subscriptions' new owners in step one of a handoff (before the ring activates).
    pub copied_unacked: u64,
    /// Partitioned mode: copied notifications redelivered here because their sender's tail
    /// never came (it died after the ring activated).
    pub redelivered_copies: u64,
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
            ("copied_unacked", self.copied_unacked),
            ("redelivered_copies", self.redelivered_copies),
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
    period_ms: u64,
    next_tick: Timestamp,
    grace_ms: u64,
    effects: Effects<SubRecord>,
}

/// One matcher's state: see the module documentation.
pub struct Node<Q> {
    me: RingMember,
    config: NodeConfig,
    engine: Engine,
    placement: Placement,
    subs: HashMap<SubscriptionId, Sub<Q>>,
    conns: HashMap<ConnId, HashSet<SubscriptionId>>,
    dedup: DedupWindow<EventId>,
    /// The time of the call being handled.
    clock: Timestamp,
    stats: MatcherStats,
    matches: Vec<Match>,
    expired: Vec<SubscriptionId>,
    /// What the caller is to do.
    effects: Vec<Effect>,
    /// R ≥ 2: which peers answer (probed every 100 ms, down after 500 ms of silence).
    live: Peers,
    /// R ≥ 2: events held for other owners (their dispatchers) until released.
    held: Held<EventId, Event>,
    /// R ≥ 2: events dispatched here, until their replicas may let go.
    releases: Releases<EventId>,
    /// Requests waiting for other matchers' answers, by the sequence number sent.
    waits: HashMap<u64, replication::Wait>,
    /// At-least-once subscriptions with unacknowledged notifications, and when each is
    /// next looked at for redelivery (its entry in `redeliveries`).
    alo_pending: HashMap<SubscriptionId, Timestamp>,
    /// The same, ordered by time: the next redelivery is the first.
    redeliveries: BTreeSet<(Timestamp, SubscriptionId)>,
    /// Gossip mode.
    gossip: Option<Box<Replication>>,
    /// Partitioned mode: the announced next ring, while a transition is under way.
    pending: Option<Placement>,
    /// What this matcher has handed over for `pending` and awaits answers for.
    outgoing: Option<Outgoing>,
    /// Subscriptions other matchers handed over here for an announced ring.
    incoming: Incoming,
    /// Copies of other matchers' unacknowledged notifications for subscriptions moving here,
    /// by (sender, subscription), until the sender's tail replaces them.
    copies: BTreeMap<(String, SubscriptionId), transition::Copies>,
    /// Members that left the ring lately (newest last), still reachable for what is owed to
    /// them: a drained matcher that still runs holds replicated events until released.
    departed: VecDeque<(RingMember, Timestamp)>,
    /// Which matchers got copies of each subscription's unacknowledged notifications for
    /// `pending` (each gets a tail at activation, even an empty one, to let go of them).
    copied: BTreeMap<SubscriptionId, BTreeSet<String>>,
    /// Sequence number of the last peer message sent.
    seq: u64,
    /// Restarted while still in the ring at this version: not an owner at it (until the
    /// time given, at most: a coordinator that restarted too keeps the ring as it is).
    stale_floor: Option<(u64, Timestamp)>,
}

/// The longest a restarted matcher waits to be moved out of the ring and back in (ms).
const STALE_MAX_MS: u64 = 30_000;

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

impl<Q: Outlet> Node<Q> {
    /// A node known as `me`, at `ring` (empty until the coordinator's first answer).
    pub fn new(me: RingMember, config: NodeConfig, ring: Ring) -> Node<Q> {
        let dedup = DedupWindow::new(config.dedup_window_ms, config.dedup_ids_max);
        let engine = Engine::new(EngineConfig {
            subscriptions_max: config.subscriptions_max,
            ..EngineConfig::default()
        });
        let gossip = config.gossip.as_ref().map(|setup| {
            let mut machine_config = gossip::Config::new(setup.strategy, setup.seed);
            machine_config.anti_entropy_every = setup.anti_entropy_every.max(1);
            // A tombstone outlives the longest lease, so an older copy offered after it is
            // collected has lapsed by itself.
            machine_config.tombstone_ttl =
                sift_protocol::limits::LEASE_MAX_MS + setup.lease_grace_ms;
            Box::new(Replication {
                id: setup.id,
                machine: Gossip::new(setup.id, machine_config),
                peers: Vec::new(),
                remote: HashMap::new(),
                shadowed: HashMap::new(),
                suspended: HashMap::new(),
                members: HashSet::new(),
                local: HashMap::new(),
                period_ms: setup.period_ms.max(1),
                next_tick: Timestamp(setup.period_ms.max(1)),
                grace_ms: setup.lease_grace_ms,
                effects: Effects::default(),
            })
        });
        let mut node = Node {
            me,
            placement: Placement::new(&ring),
            config,
            engine,
            subs: HashMap::new(),
            conns: HashMap::new(),
            dedup,
            clock: Timestamp(0),
            stats: MatcherStats::default(),
            matches: Vec::new(),
            expired: Vec::new(),
            effects: Vec::new(),
            alo_pending: HashMap::new(),
            redeliveries: BTreeSet::new(),
            live: Peers::new(PING_EVERY_MS, PEER_DOWN_AFTER_MS, 1),
            held: Held::new(HELD_MAX),
            releases: Releases::new(HELD_MAX),
            waits: HashMap::new(),
            pending: None,
            outgoing: None,
            incoming: Incoming::new(),
            copies: BTreeMap::new(),
            departed: VecDeque::new(),
            copied: BTreeMap::new(),
            seq: 0,
            stale_floor: None,
            gossip,
        };
        node.track_peers();
        node
    }

    /// The time of the call being handled.
    fn now(&self) -> Timestamp {
        self.clock
    }

    /// Moves the clock to `now` (never back).
    fn at(&mut self, now: Timestamp) {
        self.clock = self.clock.max(now);
    }

    /// Now, in Unix milliseconds (gossip records carry wall-clock times).
    fn unix_ms(&self) -> u64 {
        self.config.unix_base_ms.saturating_add(self.clock.0)
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
            .is_some_and(|(v, until)| self.placement.version() <= v && self.clock < until)
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

    /// What the node asks the world to do, in the order decided (empties the queue).
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.flush_releases();
        std::mem::take(&mut self.effects)
    }

    /// The active ring.
    pub fn ring(&self) -> Ring {
        self.placement.ring()
    }

    /// The node's counters.
    pub fn stats(&self) -> MatcherStats {
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
        stats
    }

    /// Ends every subscription's stream (the node is shutting down).
    pub fn shutdown(&mut self) {
        for (_, sub) in self.subs.drain() {
            sub.queue.end(EndReason::Shutdown);
        }
    }

    /// When [`Node::tick`] is next due (nothing pending: `None`).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.engine
            .next_deadline()
            .into_iter()
            .chain(self.redeliveries.first().map(|(t, _)| *t))
            .chain(self.gossip.as_ref().map(|g| g.next_tick))
            .chain(self.liveness_deadline())
            .chain(self.copies.values().filter_map(transition::Copies::due))
            .min()
    }

    /// A client subscribes on connection `conn` (placed by ring `ring_version`): the time
    /// left on its lease (ms) and the queue its notifications go into.
    pub fn handle_subscribe(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        sub: NewSubscription,
        filter_source: String,
        ring_version: u64,
    ) -> Result<(u64, Arc<Q>), Refusal> {
        self.at(now);
        let id = sub.id;
        let result = self.subscribe(conn, sub, filter_source, ring_version);
        if result.is_ok() {
            self.mirror(id, false);
        }
        result
    }

    /// A client ends its subscription `id`.
    pub fn handle_unsubscribe(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        id: SubscriptionId,
    ) -> Result<(), Refusal> {
        self.at(now);
        self.own(conn, id)
            .map(|_| self.forget(id, EndReason::Unsubscribed))
    }

    /// A client renews the lease of subscription `id`: the time left on it (ms).
    pub fn handle_renew(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        id: SubscriptionId,
    ) -> Result<u64, Refusal> {
        self.at(now);
        let result = self.own(conn, id).and_then(|_| {
            let deadline = self
                .engine
                .renew(now, id)
                .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
            Ok(deadline.0.saturating_sub(now.0))
        });
        if let Ok(remaining) = result {
            let unix = self.unix_ms();
            self.reannounce(id, |r| r.deadline_unix_ms = unix + remaining);
            self.mirror(id, false);
        }
        result
    }

    /// A client replaces the filter of subscription `id` (`source` as written).
    pub fn handle_set_filter(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        id: SubscriptionId,
        filter: &Filter,
        source: String,
    ) -> Result<(), Refusal> {
        self.at(now);
        let result = self.own(conn, id).and_then(|_| {
            self.engine
                .set_filter(id, filter)
                .map_err(|e: SetFilterError| Refusal::new(e.code(), e.to_string()))
        });
        if result.is_ok() {
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.spec.filter = source.clone();
            }
            self.reannounce(id, |r| r.filter = source);
            self.mirror(id, false);
        }
        result
    }

    /// A client publishes `event` (validated, of `topic`) routed by ring `ring_version`. An
    /// acknowledged publish (`acked`) names the waiter `answer`: its outcome comes as
    /// [`Effect::Answer`] (in this call's effects, or later with R ≥ 2).
    pub fn handle_publish(
        &mut self,
        now: Timestamp,
        topic: Topic,
        event: Event,
        acked: bool,
        ring_version: u64,
        answer: Option<Token>,
    ) {
        self.at(now);
        let answer = answer.map_or(replication::Answer::None, replication::Answer::Client);
        if self.placement.replicas() >= 2 && self.gossip.is_none() {
            self.publish_replicated(topic, event, acked, ring_version, answer);
        } else {
            let result = self.publish(&topic, event, acked, ring_version);
            self.finish(answer, result);
        }
    }

    /// A client acknowledges an at-least-once notification.
    pub fn handle_ack(&mut self, now: Timestamp, conn: ConnId, id: SubscriptionId, event: EventId) {
        self.at(now);
        self.ack(conn, id, event);
    }

    /// Connection `conn` closed: its at-most-once subscriptions end; its at-least-once ones
    /// wait (until their lease ends) for their client to subscribe again from another
    /// connection, and get what they had not acknowledged then.
    pub fn handle_closed(&mut self, now: Timestamp, conn: ConnId) {
        self.at(now);
        for id in self.conns.remove(&conn).unwrap_or_default() {
            if self.subs.get(&id).is_some_and(|s| s.alo.is_some()) {
                self.detach(id);
            } else {
                self.forget(id, EndReason::Shutdown);
            }
        }
    }

    /// Subscription `id` loses its connection but lives on: a fresh queue takes what comes
    /// for it, starting with every notification the old stream had not had acknowledged.
    fn detach(&mut self, id: SubscriptionId) {
        let now = self.now();
        let (len, bytes) = (self.config.queue_len_max, self.config.queue_bytes_max);
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if let Some(c) = sub.conn.take() {
            if let Some(set) = self.conns.get_mut(&c) {
                set.remove(&id);
            }
        }
        sub.queue.end(EndReason::Moved);
        let queue = Q::open(len, bytes);
        if let Some(alo) = &mut sub.alo {
            for due in alo.window.resend_all(now) {
                queue.push(due.delivery, true, due.item.clone(), false);
            }
        }
        sub.queue = queue;
    }

    /// The coordinator's verdict on this node's registration: it restarted while `active`
    /// still had it. What it held is gone (its replicas serve), so it serves nothing at that
    /// ring (at most 30 s: a coordinator that restarted too keeps the ring as it is) until the
    /// coordinator has moved it out and back in.
    pub fn handle_restarted(&mut self, now: Timestamp, active: &Ring) {
        self.at(now);
        if active.contains(&self.me.id) && active.version >= self.placement.version() {
            warn!(
                version = active.version,
                "restarted while still in the ring: serving nothing until moved out and back in"
            );
            self.stale_floor = Some((active.version, now.plus_millis(STALE_MAX_MS)));
        }
    }

    /// The coordinator's view: the active ring and the announced next one.
    pub fn handle_cluster(&mut self, now: Timestamp, active: Ring, pending: Option<Ring>) {
        self.at(now);
        self.cluster(active, pending);
    }

    /// A message from matcher `from`; its answer comes as [`Effect::PeerReply`] for `token`.
    pub fn handle_peer(&mut self, now: Timestamp, from: &str, frame: PeerFrame, token: Token) {
        self.at(now);
        self.peer(from, frame, token);
    }

    /// An answer from matcher `from` to a message this node sent.
    pub fn handle_peer_answer(&mut self, now: Timestamp, from: &str, frame: PeerFrame) {
        self.at(now);
        self.peer_answer(from, frame);
    }

    /// Gossip mode: a dissemination message from node `from`.
    pub fn handle_gossip(&mut self, now: Timestamp, from: NodeId, msg: Message<SubRecord>) {
        self.at(now);
        if let Some(g) = self.gossip.as_deref_mut() {
            g.machine
                .on_message(from, msg, now.0, &g.peers, &mut g.effects);
            self.gossip_flush();
        }
    }

    /// Gossip mode: an event another node matched against subscriptions held here.
    pub fn handle_forwarded(
        &mut self,
        now: Timestamp,
        subs: &[SubscriptionId],
        topic: &Topic,
        event: &Event,
    ) {
        self.at(now);
        self.forwarded(subs, topic, event);
    }

    /// Gossip mode: the nodes currently alive (this one excluded).
    pub fn handle_members(&mut self, now: Timestamp, peers: Vec<NodeId>) {
        self.at(now);
        self.members_changed(peers);
    }

    /// Does what falls due by `now`: expiries, redeliveries, gossip rounds, peer probes.
    pub fn tick(&mut self, now: Timestamp) {
        self.at(now);
        self.liveness_tick();
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
            if g.next_tick <= now {
                g.machine.tick(now.0, &g.peers, &mut g.effects);
                g.next_tick = now.plus_millis(g.period_ms);
                self.gossip_flush();
                self.expire_suspended();
            }
        }
        self.redeliver(now);
        self.redeliver_copies(now);
    }

    /// Notes that `id` has unacked notifications, due for redelivery at `due` at the
    /// latest, so the redelivery pass visits it then.
    fn awaiting_acks(&mut self, id: SubscriptionId, due: Timestamp) {
        match self.alo_pending.get(&id) {
            Some(&at) if at <= due => {}
            Some(&at) => {
                self.redeliveries.remove(&(at, id));
                self.redeliveries.insert((due, id));
                self.alo_pending.insert(id, due);
            }
            None => {
                self.redeliveries.insert((due, id));
                self.alo_pending.insert(id, due);
            }
        }
    }

    /// `id` has nothing unacknowledged any more (or is gone).
    fn settled(&mut self, id: SubscriptionId) {
        if let Some(at) = self.alo_pending.remove(&id) {
            self.redeliveries.remove(&(at, id));
        }
    }

    /// Sends again what is overdue, for the subscriptions whose time has come.
    fn redeliver(&mut self, now: Timestamp) {
        while let Some(&(at, id)) = self.redeliveries.first() {
            if at > now {
                break;
            }
            self.redeliveries.pop_first();
            self.alo_pending.remove(&id);
            let Some(sub) = self.subs.get_mut(&id) else {
                continue;
            };
            let Some(alo) = &mut sub.alo else { continue };
            // Not attached yet: what it has waits in its queue; redeliveries start once its
            // client is here (looked at again an ack timeout later).
            if sub.conn.is_some() {
                for due in alo.window.due(now) {
                    if sub.queue.push(due.delivery, true, due.item.clone(), false)
                        == Pushed::Refused
                    {
                        debug!(sub = %id, "redelivery refused by a full queue");
                    }
                    self.stats.redelivered += 1;
                }
            }
            let next = if sub.conn.is_some() {
                alo.window.next_deadline()
            } else {
                (!alo.window.is_empty()).then(|| now.plus_millis(self.config.ack_timeout_ms))
            };
            if let Some(next) = next {
                self.awaiting_acks(id, next.max(now.plus_millis(1)));
            }
        }
    }

    /// Drops a subscription from the engine and ends its stream.
    fn forget(&mut self, id: SubscriptionId, reason: EndReason) {
        // A subscription being handed over: its receivers forget it too.
        self.mirror(id, true);
        self.forget_here(id, reason);
    }

    /// Forgets subscription `id` here only: what it is being handed over to keeps it.
    fn forget_here(&mut self, id: SubscriptionId, reason: EndReason) {
        if let Some(mut sub) = self.subs.remove(&id) {
            self.settled(id);
            self.incoming.settle(id);
            if !self.copies.is_empty() {
                self.copies.retain(|(_, s), _| *s != id);
            }
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

    /// A transition is confirmed here and a subscription of `topic` (`None`: a pattern)
    /// would have to be mirrored to its new owners.
    fn moving_after_confirm(&self, topic: &Option<Topic>) -> bool {
        let (Some(pending), Some(out)) = (&self.pending, &self.outgoing) else {
            return false;
        };
        if !out.is_confirmed() {
            return false;
        }
        let placed = match topic {
            Some(t) => Placed::Topic(t.as_str()),
            None => Placed::Pattern,
        };
        !handoff::mirror_to(&self.me.id, &self.placement, pending, placed).is_empty()
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
    ) -> Result<(u64, Arc<Q>), Refusal> {
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
        if self.moving_after_confirm(&topic) {
            // This matcher told the coordinator its handoff is complete: a new subscription
            // on a moving topic now could reach its new owner after the ring activates (and
            // miss what is published there first). The SDK retries once the ring is active.
            return Err(Refusal {
                code: ErrorCode::NotOwner,
                message: format!(
                    "ring version {} is activating; subscribe again shortly",
                    self.pending.as_ref().map_or(0, Placement::version)
                ),
                ring_version: Some(self.placement.version()),
            });
        }
        if self
            .subs
            .get(&sub.id)
            .is_some_and(|s| s.conn.is_some() && s.conn != Some(conn))
        {
            // The client subscribes again from a new connection before this matcher noticed
            // its old one was gone: the subscription moves to the new connection, with what
            // the old one had not acknowledged.
            self.detach(sub.id);
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
            since_unix_ms: self.unix_ms(),
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
            record.deadline_unix_ms = self.unix_ms() + deadline.0.saturating_sub(now.0);
            self.originate(id, Some(record));
        }
        let queue = Q::open(self.config.queue_len_max, self.config.queue_bytes_max);
        let alo = (mode == DeliveryMode::AtLeastOnce).then(|| Alo {
            window: AckWindow::new(self.config.redelivery_window, self.config.ack_timeout_ms),
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
            for (to, subs) in forwards {
                let frame = Frame::Forward {
                    subs,
                    event: event.clone(),
                };
                self.stats.forwarded += 1;
                self.effects.push(Effect::Mesh { to, frame });
            }
        }
        self.matches = matches;
        Ok(outstanding)
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
                            sub.queue.push(delivery, redelivered, event.clone(), false)
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
                sub.queue
                    .push(delivery, redelivered, event.clone(), drop_oldest)
            }
        };
        if awaiting {
            let due = now.plus_millis(self.config.ack_timeout_ms);
            self.awaiting_acks(id, due);
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
                    sub.queue.push(delivery, false, event, false);
                }
                Err(e) => {
                    alo.backlog_bytes += e.len();
                    alo.backlog.push_front((key, e));
                    break;
                }
            }
        }
        if alo.window.is_empty() {
            self.settled(id);
        }
    }
}

/// Parses a subscription request into the engine's terms; typed refusals for bad input.
pub fn parse_subscribe(s: &sift_protocol::frame::Subscribe) -> Result<NewSubscription, Refusal> {
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

#[cfg(test)]
mod tests;
