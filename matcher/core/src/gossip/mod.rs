//! Dissemination without a coordinator: how updates (a subscription's creation, renewal or
//! removal) spread from the node where they happen to every other node.
//!
//! [`Gossip`] is one node's state machine. It does no I/O and reads no clock: the shell calls
//! [`Gossip::originate`] for a local change, [`Gossip::tick`] periodically and
//! [`Gossip::on_message`] for each message from a peer, always with the current time and the
//! node's current neighbours ([`PeerSet`]); the messages to send and the updates newly learned
//! come back in [`Effects`]. Randomness comes from a seeded generator, so a node fed the same
//! calls produces the same trace. The live nodes and the simulator (`sift bench sim`) run this
//! very code.
//!
//! Updates are `(origin, key, version)` with a body; versions are one sequence per origin
//! (1, 2, 3…), so a node summarises what it holds of an origin by one number — the version up
//! to which it misses nothing ([`Have`]) — and anti-entropy exchanges these summaries (digests)
//! and sends only what the other side lacks. A removal is an update with no body (a
//! tombstone), collected after [`Config::tombstone_ttl`]; a copy older than the summary is
//! never taken back after that.
//!
//! Strategies ([`Strategy`]): flooding, blind counter rumor mongering (`bcrm:B,F`), rumor
//! mongering with feedback or blind, counter or coin (Demers et al. 1987), anti-entropy by
//! push, pull or push-pull, and a push strategy combined with anti-entropy.

mod store;
mod strategy;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::VecDeque;

use store::{Applied, Store};
pub use strategy::{AeMode, Loss, Push, Strategy, StrategyError};

/// A node's identity in dissemination.
pub type NodeId = u64;

/// Names one version of one key of one origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UpdateId {
    /// The node where the change happened.
    pub origin: NodeId,
    /// The key at that origin (a subscription id).
    pub key: u64,
    /// The origin's sequence number for this change.
    pub version: u64,
}

/// One change: a new version of `(origin, key)`; no body is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update<P> {
    /// The node where the change happened.
    pub origin: NodeId,
    /// The key at that origin.
    pub key: u64,
    /// The origin's sequence number (1, 2, 3… across all its keys).
    pub version: u64,
    /// The new value; `None` removes the key.
    pub body: Option<P>,
}

impl<P> Update<P> {
    /// This update's id.
    pub fn id(&self) -> UpdateId {
        UpdateId {
            origin: self.origin,
            key: self.key,
            version: self.version,
        }
    }
}

/// A summary entry: of `origin`'s updates, everything up to `upto` is held (or superseded);
/// `max` is the highest version seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    /// The origin.
    pub origin: NodeId,
    /// Contiguous version.
    pub upto: u64,
    /// Highest version seen.
    pub max: u64,
}

/// A message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<P> {
    /// Updates pushed by flooding or rumor mongering; with `feedback` the receiver answers
    /// [`Message::Feedback`].
    Push {
        /// The updates.
        updates: Vec<Update<P>>,
        /// Whether the sender wants to hear which of them were already known.
        feedback: bool,
    },
    /// Answers a push: which of its updates the receiver already knew, and which were news.
    Feedback {
        /// Already known (before the current instant).
        known: Vec<UpdateId>,
        /// News to the receiver.
        news: Vec<UpdateId>,
    },
    /// Opens an anti-entropy exchange with the initiator's summary.
    Digest {
        /// Push, pull or push-pull.
        mode: AeMode,
        /// The initiator's summary.
        summary: Vec<Have>,
    },
    /// What the other side lacks, and (push-pull, push) this side's summary when it lacks
    /// something itself.
    Deltas {
        /// The updates.
        updates: Vec<Update<P>>,
        /// Origins now held in full up to `upto` (see [`Have`]).
        covered: Vec<Have>,
        /// This side's summary, asking for what it lacks.
        request: Option<Vec<Have>>,
    },
}

impl<P> Message<P> {
    /// Number of updates carried.
    pub fn updates(&self) -> usize {
        match self {
            Message::Push { updates, .. } | Message::Deltas { updates, .. } => updates.len(),
            _ => 0,
        }
    }
}

impl<P: WireSize> Message<P> {
    /// An estimate of the encoded size in bytes (MessagePack, as the live nodes send it):
    /// what the simulator counts as bytes sent.
    pub fn wire_size(&self) -> usize {
        const UPDATE: usize = 3 * 9 + 2;
        const HAVE: usize = 3 * 9 + 1;
        let updates = |u: &[Update<P>]| -> usize {
            u.iter()
                .map(|u| UPDATE + u.body.as_ref().map_or(1, WireSize::wire_size))
                .sum::<usize>()
                + 5
        };
        4 + match self {
            Message::Push { updates: u, .. } => updates(u) + 2,
            Message::Feedback { known, news } => (known.len() + news.len()) * 28 + 6,
            Message::Digest { summary, .. } => summary.len() * HAVE + 6,
            Message::Deltas {
                updates: u,
                covered,
                request,
            } => {
                updates(u)
                    + covered.len() * HAVE
                    + request.as_ref().map_or(1, |r| r.len() * HAVE + 5)
                    + 5
            }
        }
    }
}

/// Estimated encoded size of one update.
pub(crate) fn update_size<P: WireSize>(u: &Update<P>) -> usize {
    3 * 9 + 2 + u.body.as_ref().map_or(1, WireSize::wire_size)
}

/// Size on the wire of an update body, for the simulator's byte counts.
pub trait WireSize {
    /// Encoded size in bytes.
    fn wire_size(&self) -> usize;
}

impl WireSize for () {
    fn wire_size(&self) -> usize {
        1
    }
}

impl WireSize for Vec<u8> {
    fn wire_size(&self) -> usize {
        self.len() + 5
    }
}

/// A node's current neighbours. The live node passes its membership list; the simulator a
/// topology (the complete graph without materialising it).
pub trait PeerSet {
    /// How many neighbours.
    fn len(&self) -> usize;
    /// The `i`-th neighbour, `i < len()`.
    fn get(&self, i: usize) -> NodeId;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PeerSet for [NodeId] {
    fn len(&self) -> usize {
        <[NodeId]>::len(self)
    }
    fn get(&self, i: usize) -> NodeId {
        self[i]
    }
}

impl PeerSet for Vec<NodeId> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn get(&self, i: usize) -> NodeId {
        self[i]
    }
}

/// A message to send.
#[derive(Clone, Debug)]
pub struct Send<P> {
    /// The peer.
    pub to: NodeId,
    /// The message.
    pub msg: Message<P>,
    /// True for messages relayed because something arrived (flooding, pushes of updates
    /// learned just now) as opposed to ticks' contacts and answers within an exchange. A
    /// round-based simulator delivers relays in the next round and everything else in the
    /// current one; live nodes send everything at once.
    pub relay: bool,
}

/// What a call produced.
#[derive(Debug)]
pub struct Effects<P> {
    /// Messages to send, in order.
    pub sends: Vec<Send<P>>,
    /// Updates this node learned (new versions of a key, tombstones included), in order.
    pub learned: Vec<Update<P>>,
}

impl<P> Default for Effects<P> {
    fn default() -> Self {
        Effects {
            sends: Vec::new(),
            learned: Vec::new(),
        }
    }
}

impl<P> Effects<P> {
    /// Nothing to send and nothing learned.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.learned.is_empty()
    }

    /// Empties both lists.
    pub fn clear(&mut self) {
        self.sends.clear();
        self.learned.clear();
    }
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct Config {
    /// The strategy.
    pub strategy: Strategy,
    /// Run an anti-entropy exchange every this many ticks (≥ 1).
    pub anti_entropy_every: u32,
    /// How long a tombstone is kept before it is collected, in the caller's time unit. It
    /// must outlive the longest lease, so that an older copy offered after collection has
    /// lapsed on its own.
    pub tombstone_ttl: u64,
    /// At most this many updates per message (the rest goes in a later exchange).
    pub updates_per_message_max: usize,
    /// At most about this many encoded bytes of updates per message (by [`WireSize`]); one
    /// update alone may exceed it.
    pub bytes_per_message_max: usize,
    /// Seed of this node's random choices.
    pub seed: u64,
}

impl Config {
    /// A config with defaults: anti-entropy every tick, tombstones kept for `u64::MAX`
    /// (never collected), 4,096 updates per message.
    pub fn new(strategy: Strategy, seed: u64) -> Config {
        Config {
            strategy,
            anti_entropy_every: 1,
            tombstone_ttl: u64::MAX,
            updates_per_message_max: 4096,
            bytes_per_message_max: 1 << 20,
            seed,
        }
    }
}

/// An update a node is still actively pushing.
#[derive(Clone, Debug)]
struct Hot {
    id: UpdateId,
    /// Rumor: unnecessary contacts so far. Bcrm: ticks left.
    count: u32,
    /// Bcrm: peers known to have it.
    told: SmallVec<[NodeId; 4]>,
}

/// Counters of one node's dissemination work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Messages produced.
    pub messages: u64,
    /// Messages produced that carried at least one update.
    pub update_messages: u64,
    /// Updates carried in all messages.
    pub updates_sent: u64,
    /// Estimated bytes produced.
    pub bytes: u64,
    /// Tombstones collected.
    pub collected: u64,
}

/// One node's dissemination state machine.
#[derive(Debug)]
pub struct Gossip<P> {
    me: NodeId,
    config: Config,
    rng: ChaCha8Rng,
    store: Store<P>,
    hot: Vec<Hot>,
    seq: u64,
    ticks: u64,
    tombstones: VecDeque<(u64, UpdateId)>,
    stats: GossipStats,
}

impl<P: Clone + WireSize> Gossip<P> {
    /// A node `me` with nothing known yet.
    pub fn new(me: NodeId, config: Config) -> Gossip<P> {
        let rng = ChaCha8Rng::seed_from_u64(config.seed ^ me.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Gossip {
            me,
            config,
            rng,
            store: Store::new(),
            hot: Vec::new(),
            seq: 0,
            ticks: 0,
            tombstones: VecDeque::new(),
            stats: GossipStats::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.config.strategy
    }

    /// Counters so far.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// Entries held (live and tombstones).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    /// Live entries held.
    pub fn live(&self) -> usize {
        self.store.live()
    }

    /// The body held for `(origin, key)`: `Some(None)` for a tombstone.
    pub fn get(&self, origin: NodeId, key: u64) -> Option<(u64, Option<&P>)> {
        self.store
            .get(origin, key)
            .map(|h| (h.version, h.body.as_ref()))
    }

    /// Whether this version (or a newer one) of `(origin, key)` is known here.
    pub fn knows(&self, id: UpdateId) -> bool {
        self.store
            .get(id.origin, id.key)
            .is_some_and(|h| h.version >= id.version)
    }

    /// Whether this node is still actively pushing anything (rumors, bcrm).
    pub fn is_active(&self) -> bool {
        !self.hot.is_empty()
    }

    /// This node's summary.
    pub fn summary(&self) -> Vec<Have> {
        self.store.summary()
    }

    /// A local change: the next version of `key` with `body` (`None` removes it). Returns the
    /// update, already stored here and (for push strategies) on its way.
    pub fn originate(
        &mut self,
        key: u64,
        body: Option<P>,
        now: u64,
        peers: &(impl PeerSet + ?Sized),
        out: &mut Effects<P>,
    ) -> Update<P> {
        self.seq += 1;
        let update = Update {
            origin: self.me,
            key,
            version: self.seq,
            body,
        };
        if self.store.apply(&update, now) == Applied::New {
            self.stored(&update, now);
            self.spread(std::slice::from_ref(&update), self.me, peers, out);
        }
        update
    }

    /// Learns a subscription as this node's own without spreading it (a node restarting with
    /// the same id continues its sequence above `version`).
    pub fn resume_sequence(&mut self, version: u64) {
        self.seq = self.seq.max(version);
    }

    /// Forgets `(origin, key)` if it is still at `version` (a lease that lapsed here), without
    /// spreading anything.
    pub fn retire(&mut self, origin: NodeId, key: u64, version: u64) -> bool {
        self.store.remove(origin, key, version)
    }

    /// A periodic step: pushes hot updates, starts an anti-entropy exchange, collects old
    /// tombstones.
    pub fn tick(&mut self, now: u64, peers: &(impl PeerSet + ?Sized), out: &mut Effects<P>) {
        self.ticks += 1;
        while let Some(&(at, id)) = self.tombstones.front() {
            if at > now {
                break;
            }
            self.tombstones.pop_front();
            if self
                .store
                .get(id.origin, id.key)
                .is_some_and(|h| h.version == id.version && h.body.is_none())
                && self.store.remove(id.origin, id.key, id.version)
            {
                self.stats.collected += 1;
            }
        }
        if peers.is_empty() {
            return;
        }
        match self.config.strategy.push {
            Some(Push::Rumor { k, feedback, loss }) => {
                self.rumor_tick(k, feedback, loss, peers, out)
            }
            Some(Push::Bcrm { b, .. }) => self.bcrm_tick(b, peers, out),
            Some(Push::Flood) | None => {}
        }
        if let Some(mode) = self.config.strategy.anti_entropy {
            if self
                .ticks
                .is_multiple_of(u64::from(self.config.anti_entropy_every.max(1)))
            {
                let to = self.random_peer(peers);
                let summary = self.store.summary();
                self.send(out, to, Message::Digest { mode, summary }, false);
            }
        }
    }

    /// A message from `from`.
    pub fn on_message(
        &mut self,
        from: NodeId,
        msg: Message<P>,
        now: u64,
        peers: &(impl PeerSet + ?Sized),
        out: &mut Effects<P>,
    ) {
        match msg {
            Message::Push { updates, feedback } => {
                let mut known = Vec::new();
                let mut news = Vec::new();
                let mut fresh = Vec::new();
                for update in updates {
                    match self.store.apply(&update, now) {
                        Applied::New => {
                            self.stored(&update, now);
                            news.push(update.id());
                            fresh.push(update);
                        }
                        Applied::Known { before_now: true } => known.push(update.id()),
                        Applied::Known { before_now: false } => news.push(update.id()),
                    }
                }
                if feedback {
                    self.send(out, from, Message::Feedback { known, news }, false);
                }
                self.spread(&fresh, from, peers, out);
                out.learned.extend(fresh);
            }
            Message::Feedback { known, news } => self.feedback(&known, &news),
            Message::Digest { mode, mut summary } => {
                summary.sort_unstable_by_key(|h| h.origin);
                match mode {
                    AeMode::Pull | AeMode::PushPull => {
                        let (updates, covered) = self.store.deltas(&summary, now, self.limits());
                        let request = (mode == AeMode::PushPull && self.store.behind(&summary))
                            .then(|| self.store.summary());
                        if !updates.is_empty() || !covered.is_empty() || request.is_some() {
                            self.send(
                                out,
                                from,
                                Message::Deltas {
                                    updates,
                                    covered,
                                    request,
                                },
                                false,
                            );
                        }
                    }
                    AeMode::Push => {
                        if self.store.behind(&summary) {
                            let request = Some(self.store.summary());
                            let msg = Message::Deltas {
                                updates: Vec::new(),
                                covered: Vec::new(),
                                request,
                            };
                            self.send(out, from, msg, false);
                        }
                    }
                }
            }
            Message::Deltas {
                updates,
                covered,
                request,
            } => {
                for update in updates {
                    if self.store.apply(&update, now) == Applied::New {
                        self.stored(&update, now);
                        out.learned.push(update);
                    }
                }
                for have in covered {
                    self.store.cover(have.origin, have.upto);
                }
                if let Some(mut theirs) = request {
                    theirs.sort_unstable_by_key(|h| h.origin);
                    let (updates, covered) = self.store.deltas(&theirs, now, self.limits());
                    if !updates.is_empty() || !covered.is_empty() {
                        self.send(
                            out,
                            from,
                            Message::Deltas {
                                updates,
                                covered,
                                request: None,
                            },
                            false,
                        );
                    }
                }
            }
        }
    }

    fn stored(&mut self, update: &Update<P>, now: u64) {
        if update.body.is_none() && self.config.tombstone_ttl != u64::MAX {
            self.tombstones
                .push_back((now.saturating_add(self.config.tombstone_ttl), update.id()));
        }
    }

    /// New updates (from `from`, or originated here when `from == me`) start spreading.
    fn spread(
        &mut self,
        fresh: &[Update<P>],
        from: NodeId,
        peers: &(impl PeerSet + ?Sized),
        out: &mut Effects<P>,
    ) {
        if fresh.is_empty() {
            return;
        }
        match self.config.strategy.push {
            None => {}
            Some(Push::Flood) => {
                let chunks = self.chunks(fresh.to_vec());
                for i in 0..peers.len() {
                    let to = peers.get(i);
                    if to != from && to != self.me {
                        for chunk in &chunks {
                            let msg = Message::Push {
                                updates: chunk.clone(),
                                feedback: false,
                            };
                            self.send(out, to, msg, true);
                        }
                    }
                }
            }
            Some(Push::Bcrm { f, .. }) => {
                for u in fresh {
                    let mut told = SmallVec::new();
                    if from != self.me {
                        told.push(from);
                    }
                    self.hot.push(Hot {
                        id: u.id(),
                        count: f,
                        told,
                    });
                }
            }
            Some(Push::Rumor { .. }) => {
                for u in fresh {
                    self.hot.push(Hot {
                        id: u.id(),
                        count: 0,
                        told: SmallVec::new(),
                    });
                }
            }
        }
    }

    /// Drops hot entries superseded since they became hot; returns the bodies of the rest.
    fn hot_updates(&mut self) -> Vec<Update<P>> {
        let store = &self.store;
        self.hot.retain(|h| {
            store
                .get(h.id.origin, h.id.key)
                .is_some_and(|held| held.version == h.id.version)
        });
        self.hot
            .iter()
            .filter_map(|h| {
                let held = store.get(h.id.origin, h.id.key)?;
                Some(Update {
                    origin: h.id.origin,
                    key: h.id.key,
                    version: h.id.version,
                    body: held.body.clone(),
                })
            })
            .collect()
    }

    fn rumor_tick(
        &mut self,
        k: u32,
        feedback: bool,
        loss: Loss,
        peers: &(impl PeerSet + ?Sized),
        out: &mut Effects<P>,
    ) {
        let updates = self.hot_updates();
        if updates.is_empty() {
            return;
        }
        let to = self.random_peer(peers);
        for updates in self.chunks(updates) {
            self.send(out, to, Message::Push { updates, feedback }, false);
        }
        if !feedback {
            // Blind: every contact counts as unnecessary.
            let ids: Vec<UpdateId> = self.hot.iter().map(|h| h.id).collect();
            self.lose_interest(&ids, k, loss);
        }
    }

    fn feedback(&mut self, known: &[UpdateId], news: &[UpdateId]) {
        if let Some(Push::Rumor { k, loss, .. }) = self.config.strategy.push {
            self.lose_interest(known, k, loss);
            // The counter counts consecutive unnecessary contacts: a useful one resets it.
            let news: hashbrown::HashSet<&UpdateId> = news.iter().collect();
            for h in &mut self.hot {
                if news.contains(&h.id) {
                    h.count = 0;
                }
            }
        }
    }

    fn lose_interest(&mut self, ids: &[UpdateId], k: u32, loss: Loss) {
        let ids: hashbrown::HashSet<&UpdateId> = ids.iter().collect();
        let rng = &mut self.rng;
        self.hot.retain_mut(|h| {
            if !ids.contains(&h.id) {
                return true;
            }
            match loss {
                Loss::Counter => {
                    h.count += 1;
                    h.count < k
                }
                Loss::Coin => !rng.random_ratio(1, k),
            }
        });
    }

    fn bcrm_tick(&mut self, b: u32, peers: &(impl PeerSet + ?Sized), out: &mut Effects<P>) {
        let updates = self.hot_updates();
        if updates.is_empty() {
            return;
        }
        // Per peer, the updates it gets this tick.
        let mut batches: Vec<(NodeId, Vec<Update<P>>)> = Vec::new();
        for (hot, update) in self.hot.iter_mut().zip(updates) {
            let mut chosen = 0;
            let mut tries = 0;
            while chosen < b && tries < 4 * b + 8 {
                tries += 1;
                let to = peers.get(self.rng.random_range(0..peers.len()));
                if to == self.me || hot.told.contains(&to) {
                    continue;
                }
                hot.told.push(to);
                chosen += 1;
                match batches.iter_mut().find(|(p, _)| *p == to) {
                    Some((_, list)) => list.push(update.clone()),
                    None => batches.push((to, vec![update.clone()])),
                }
            }
            hot.count = hot.count.saturating_sub(1);
        }
        self.hot.retain(|h| h.count > 0);
        for (to, updates) in batches {
            for updates in self.chunks(updates) {
                self.send(
                    out,
                    to,
                    Message::Push {
                        updates,
                        feedback: false,
                    },
                    false,
                );
            }
        }
    }

    /// The per-message limits (updates, bytes).
    fn limits(&self) -> (usize, usize) {
        (
            self.config.updates_per_message_max.max(1),
            self.config.bytes_per_message_max,
        )
    }

    /// `updates` split into messages within the per-message limits.
    fn chunks(&self, updates: Vec<Update<P>>) -> Vec<Vec<Update<P>>> {
        let (count_max, bytes_max) = self.limits();
        let mut chunks = Vec::new();
        let mut current = Vec::new();
        let mut bytes = 0;
        for u in updates {
            let size = update_size(&u);
            if !current.is_empty() && (current.len() >= count_max || bytes + size > bytes_max) {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += size;
            current.push(u);
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    fn random_peer(&mut self, peers: &(impl PeerSet + ?Sized)) -> NodeId {
        loop {
            let to = peers.get(self.rng.random_range(0..peers.len()));
            if to != self.me || peers.len() == 1 {
                return to;
            }
        }
    }

    fn send(&mut self, out: &mut Effects<P>, to: NodeId, msg: Message<P>, relay: bool) {
        self.stats.messages += 1;
        let n = msg.updates() as u64;
        if n > 0 {
            self.stats.update_messages += 1;
            self.stats.updates_sent += n;
        }
        self.stats.bytes += msg.wire_size() as u64;
        out.sends.push(Send { to, msg, relay });
    }
}

#[cfg(test)]
mod tests;
