//! The matching engine: subscriptions in, matches out, expiry by deadline. A pure state
//! machine: no clock, no I/O, no randomness beyond the configured hash seed.

use std::hash::{BuildHasher, BuildHasherDefault};

use foldhash::fast::FixedState;
use hashbrown::HashMap;
use sift_protocol::event::check_attr_name;
use sift_protocol::frame::ExpirySpec;
use sift_protocol::{Attributes, DeliveryMode, Filter, SubscriptionId, Topic};
use slab::Slab;

use crate::attrs::{AttrNames, EventView, ATTR_NAMES_MAX};
use crate::groups::{GroupId, Groups, NO_GROUP};
use crate::index::{Bucket, IdentityHasher, Index, Slot};
use crate::plan::{choose, plan, BucketStats};
use crate::prog::{attr_names, Prog};
use crate::regex_pool::RegexPool;
use crate::trie::{BucketId, Trie};
use crate::types::*;
use crate::wheel::Wheel;

/// The hash exact topics are looked up by. (Unit tests can make every topic collide.)
fn topic_hash(state: &FixedState, text: &str) -> u64 {
    #[cfg(test)]
    if tests::COLLIDE.with(|c| c.get()) {
        return 42;
    }
    state.hash_one(text.as_bytes())
}

/// Forgets the exact-topic bucket `id` (its text is still in `buckets`); a topic that had
/// collided with it takes its place in the main map.
fn remove_topic(
    topics: &mut HashMap<u64, BucketId, BuildHasherDefault<IdentityHasher>>,
    collisions: &mut HashMap<Box<str>, BucketId>,
    buckets: &Slab<Bucket>,
    state: &FixedState,
    id: BucketId,
) {
    let Some(bucket) = buckets.get(id as usize) else {
        return;
    };
    let text = bucket.key.as_str();
    if collisions.remove(text).is_some() {
        return;
    }
    let h = topic_hash(state, text);
    if topics.get(&h) == Some(&id) {
        topics.remove(&h);
        let heir = collisions
            .keys()
            .find(|k| topic_hash(state, k) == h)
            .cloned();
        if let Some(k) = heir {
            if let Some(b) = collisions.remove(&k) {
                topics.insert(h, b);
            }
        }
    }
}

/// (Re)builds a bucket's index: gathers statistics from all its filters, chooses every
/// filter's access keys with them, and indexes everything anew. O(n); callers make it
/// amortised O(1) by rebuilding only when the bucket doubles or quarters.
fn rebuild_index(
    bucket: &mut Bucket,
    records: &mut [Record],
    state: &FixedState,
    pool: &RegexPool,
) {
    let stats = BucketStats::gather(
        bucket.slots.iter().map(|&s| &records[s as usize].prog),
        state,
    );
    let mut index = Box::new(Index::new(stats, bucket.slots.len()));
    for &s in &bucket.slots {
        let prog = &mut records[s as usize].prog;
        choose(prog, &index.stats, pool);
        index.insert(&plan(prog, state, pool), s, state, pool);
    }
    bucket.index = Some(index);
}

/// The part of a subscription that matching touches, in one cache line with the program
/// inline when it is small: a candidate costs one memory access.
#[derive(Debug)]
#[repr(C, align(64))]
struct Record {
    id: SubscriptionId,
    /// Expires when `now >= deadline` (ms).
    deadline: u64,
    /// Last match call that considered this record (deduplicates index hits).
    stamp: u32,
    /// Group id in the low 31 bits ([`GROUP_BITS`] all set for none); the top bit marks
    /// at-least-once delivery.
    group_mode: u32,
    prog: Prog,
}

const MODE_BIT: u32 = 1 << 31;
const GROUP_BITS: u32 = !MODE_BIT;

impl Record {
    fn new(
        id: SubscriptionId,
        deadline: u64,
        group: GroupId,
        mode: DeliveryMode,
        prog: Prog,
    ) -> Record {
        debug_assert!(group == NO_GROUP || group < GROUP_BITS);
        let mode_bit = if mode == DeliveryMode::AtLeastOnce {
            MODE_BIT
        } else {
            0
        };
        Record {
            id,
            deadline,
            stamp: 0,
            group_mode: (group & GROUP_BITS) | mode_bit,
            prog,
        }
    }

    fn group(&self) -> GroupId {
        match self.group_mode & GROUP_BITS {
            GROUP_BITS => NO_GROUP,
            g => g,
        }
    }

    fn mode(&self) -> DeliveryMode {
        if self.group_mode & MODE_BIT != 0 {
            DeliveryMode::AtLeastOnce
        } else {
            DeliveryMode::AtMostOnce
        }
    }
}

/// The rest of a subscription: touched on subscribe, unsubscribe, renew and expiry only.
#[derive(Debug)]
struct Meta {
    bucket: BucketId,
    /// Position in the bucket's slot list.
    pos: u32,
    /// Bumped when the slot is reused, so stale timer entries are recognised.
    gen: u32,
    /// Lease length for renewals; 0 for a hard deadline.
    lease_ms: u32,
    live: bool,
}

/// The matching engine. See the crate documentation for the index design.
///
/// ```
/// use sift_matcher_core::{Engine, EngineConfig, NewSubscription, Timestamp};
/// use sift_protocol::{Attributes, Filter, Pattern, SubscriptionId, Topic, Value};
///
/// let mut engine = Engine::new(EngineConfig::for_test());
/// let now = Timestamp::from_millis(0);
/// let sub = NewSubscription::new(SubscriptionId(1), Pattern::parse("orders.*").unwrap())
///     .filter(Filter::parse("price > 10").unwrap());
/// engine.subscribe(now, sub).unwrap();
///
/// let mut attrs = Attributes::new();
/// attrs.insert("price".into(), Value::Int(12));
/// let mut out = Vec::new();
/// engine.match_event(now, &Topic::parse("orders.eu").unwrap(), &attrs, &mut out);
/// assert_eq!(out[0].id, SubscriptionId(1));
/// ```
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    state: FixedState,
    records: Vec<Record>,
    meta: Vec<Meta>,
    free: Vec<Slot>,
    by_id: HashMap<SubscriptionId, Slot>,
    /// Exact topics by the hash of their text (the bucket holds the text to check against).
    topics: HashMap<u64, BucketId, BuildHasherDefault<IdentityHasher>>,
    /// Topics whose hash another topic already has (practically never: the hash is 64-bit
    /// and seeded).
    topic_collisions: HashMap<Box<str>, BucketId>,
    buckets: Slab<Bucket>,
    trie: Trie,
    pool: RegexPool,
    names: AttrNames,
    groups: Groups,
    wheel: Wheel<(Slot, u32)>,
    /// Timer entries already taken from the wheel, waiting for `expire`.
    fired: Vec<(Slot, u32)>,
    epoch: u32,
    indexed: usize,
    scratch_buckets: Vec<BucketId>,
    scratch_groups: Vec<(GroupId, u64, Slot)>,
    scratch_members: Vec<(u64, Slot)>,
    /// Candidates of the current event: (slot, needs evaluation).
    scratch_candidates: Vec<(Slot, bool)>,
    counters: Stats,
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::new(EngineConfig::default())
    }
}

impl Engine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            state: FixedState::with_seed(config.hash_seed),
            config,
            records: Vec::new(),
            meta: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            topics: HashMap::default(),
            topic_collisions: HashMap::new(),
            buckets: Slab::new(),
            trie: Trie::default(),
            pool: RegexPool::default(),
            names: AttrNames::default(),
            groups: Groups::default(),
            wheel: Wheel::new(0),
            fired: Vec::new(),
            epoch: 0,
            indexed: 0,
            scratch_buckets: Vec::new(),
            scratch_groups: Vec::new(),
            scratch_members: Vec::new(),
            scratch_candidates: Vec::new(),
            counters: Stats::default(),
        }
    }

    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// What the engine knows of subscription `id`.
    pub fn get(&self, id: SubscriptionId) -> Option<SubscriptionInfo<'_>> {
        let slot = *self.by_id.get(&id)? as usize;
        let (rec, meta) = (&self.records[slot], &self.meta[slot]);
        let bucket = self.bucket(meta.bucket);
        Some(SubscriptionInfo {
            pattern: bucket.key.as_str(),
            deadline: Timestamp(rec.deadline),
            renewable: meta.lease_ms != 0,
            lease_ms: u64::from(meta.lease_ms),
            mode: rec.mode(),
            group: (rec.group() != NO_GROUP).then(|| self.groups.name(rec.group())),
        })
    }

    fn bucket(&self, id: BucketId) -> &Bucket {
        match self.buckets.get(id as usize) {
            Some(b) => b,
            None => unreachable!("bucket {id} is referenced by a live subscription"),
        }
    }

    fn check_expiry(&self, expiry: ExpirySpec) -> Result<(u64, u32), SubscribeError> {
        let (ms, renewable) = match expiry {
            ExpirySpec::LeaseMs(ms) => (ms, true),
            ExpirySpec::DeadlineMs(ms) => (ms, false),
        };
        let max = self.config.expiry_max_ms.min(u64::from(u32::MAX));
        if ms == 0 || ms > max {
            return Err(SubscribeError::InvalidExpiry { ms, max });
        }
        // In range of u32 by the check above.
        Ok((ms, if renewable { ms as u32 } else { 0 }))
    }

    /// The bucket of exact topic `text`, if it has subscriptions.
    fn find_topic(&self, text: &str) -> Option<BucketId> {
        let h = topic_hash(&self.state, text);
        if let Some(&b) = self.topics.get(&h) {
            if self.bucket(b).key.as_bytes() == text.as_bytes() {
                return Some(b);
            }
        }
        if self.topic_collisions.is_empty() {
            return None;
        }
        self.topic_collisions.get(text).copied()
    }

    fn insert_topic(&mut self, text: &str, id: BucketId) {
        let h = topic_hash(&self.state, text);
        match self.topics.entry(h) {
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(id);
            }
            hashbrown::hash_map::Entry::Occupied(_) => {
                self.topic_collisions.insert(text.into(), id);
            }
        }
    }

    /// Checks that the filter's new attribute names fit in the name table.
    fn check_names(&self, filter: &Filter) -> Result<(), SubscribeError> {
        let missing = self.names.missing(attr_names(filter.expr()).into_iter());
        if missing > self.names.room() {
            return Err(SubscribeError::TooManyAttributeNames {
                max: ATTR_NAMES_MAX,
            });
        }
        Ok(())
    }

    fn join_group(&mut self, sub: &NewSubscription) -> Result<GroupId, SubscribeError> {
        let Some(g) = &sub.group else {
            return Ok(NO_GROUP);
        };
        if g.name.is_empty() || g.name.len() > GROUP_NAME_BYTES_MAX {
            let why = format!("the name must be 1 to {GROUP_NAME_BYTES_MAX} bytes");
            return Err(SubscribeError::InvalidGroup(why));
        }
        if let Some(key) = &g.key {
            check_attr_name(key, sift_protocol::limits::ATTR_NAME_BYTES_MAX)
                .map_err(|e| SubscribeError::InvalidGroup(format!("key attribute: {e}")))?;
        }
        self.groups
            .join(&g.name, g.key.as_deref())
            .map_err(|c| SubscribeError::GroupConflict {
                group: g.name.clone(),
                existing: c.existing,
                requested: g.key.clone(),
            })
    }

    /// Adds a subscription at time `now`. On error nothing changes.
    pub fn subscribe(
        &mut self,
        now: Timestamp,
        sub: NewSubscription,
    ) -> Result<(), SubscribeError> {
        self.subscribe_until(now, sub, None)
    }

    /// Adds a subscription at time `now` whose first deadline is `deadline` when given (at
    /// most its expiry from now): a subscription handed over from another matcher keeps the
    /// time it had left there, and its lease length for renewals. On error nothing changes.
    pub fn subscribe_until(
        &mut self,
        now: Timestamp,
        sub: NewSubscription,
        deadline: Option<Timestamp>,
    ) -> Result<(), SubscribeError> {
        if self.by_id.contains_key(&sub.id) {
            return Err(SubscribeError::Duplicate(sub.id));
        }
        let max = self.config.subscriptions_max.min(i32::MAX as usize);
        if self.by_id.len() >= max {
            return Err(SubscribeError::TooMany { max });
        }
        let (ms, lease_ms) = self.check_expiry(sub.expiry)?;
        self.check_names(&sub.filter)?;
        let group = self.join_group(&sub)?;
        self.sync_wheel(now);

        let prog = Prog::compile(sub.filter.expr(), &mut self.pool, &mut self.names);
        let bucket = self.bucket_for(&sub);
        let full = now.0.saturating_add(ms);
        let deadline = deadline.map_or(full, |d| d.0.clamp(now.0.saturating_add(1), full));
        let rec = Record::new(sub.id, deadline, group, sub.mode, prog);
        let meta = Meta {
            bucket,
            pos: 0,
            gen: 0,
            lease_ms,
            live: true,
        };
        let slot = self.alloc_record(rec, meta);
        self.attach(slot);
        self.wheel
            .insert(deadline, (slot, self.meta[slot as usize].gen));
        self.by_id.insert(sub.id, slot);
        Ok(())
    }

    fn alloc_record(&mut self, rec: Record, mut meta: Meta) -> Slot {
        match self.free.pop() {
            Some(slot) => {
                let old = &self.meta[slot as usize];
                debug_assert!(!old.live);
                meta.gen = old.gen.wrapping_add(1);
                self.records[slot as usize] = rec;
                self.meta[slot as usize] = meta;
                slot
            }
            None => {
                self.records.push(rec);
                self.meta.push(meta);
                (self.records.len() - 1) as Slot
            }
        }
    }

    /// The bucket for a new subscription's topic or pattern, created if needed.
    fn bucket_for(&mut self, sub: &NewSubscription) -> BucketId {
        let text = sub.pattern.as_str();
        let existing = if sub.pattern.is_literal() {
            self.find_topic(text)
        } else {
            self.trie.get(&sub.pattern)
        };
        if let Some(b) = existing {
            return b;
        }
        let bucket = Bucket::new(text, !sub.pattern.is_literal());
        let id = self.buckets.insert(bucket) as BucketId;
        if sub.pattern.is_literal() {
            self.insert_topic(text, id);
        } else {
            self.trie.insert(&sub.pattern, id);
        }
        id
    }

    /// Puts a record into its bucket (and the bucket's index).
    fn attach(&mut self, slot: Slot) {
        let Engine {
            records,
            meta,
            buckets,
            state,
            pool,
            indexed,
            config,
            ..
        } = self;
        let m = &mut meta[slot as usize];
        let Some(bucket) = buckets.get_mut(m.bucket as usize) else {
            unreachable!("a new record's bucket exists")
        };
        m.pos = bucket.slots.len() as u32;
        bucket.slots.push(slot);
        let len = bucket.slots.len();
        match &mut bucket.index {
            Some(index) if len < 2 * index.built_len => {
                let prog = &mut records[slot as usize].prog;
                choose(prog, &index.stats, pool);
                index.insert(&plan(prog, state, pool), slot, state, pool);
            }
            // Doubled since the last build: re-plan everyone with fresher statistics.
            Some(_) => rebuild_index(bucket, records, state, pool),
            None if len > config.index_min_len => {
                rebuild_index(bucket, records, state, pool);
                *indexed += 1;
            }
            None => {}
        }
    }

    /// Takes a record out of its bucket (and the index); drops the bucket when empty.
    fn detach(&mut self, slot: Slot) {
        let Engine {
            records,
            meta,
            buckets,
            state,
            pool,
            indexed,
            topics,
            topic_collisions,
            trie,
            config,
            ..
        } = self;
        let bucket_id = meta[slot as usize].bucket;
        let pos = meta[slot as usize].pos as usize;
        let Some(bucket) = buckets.get_mut(bucket_id as usize) else {
            unreachable!("a live record's bucket exists")
        };
        if let Some(index) = &mut bucket.index {
            index.remove(
                &plan(&records[slot as usize].prog, state, pool),
                slot,
                state,
                pool,
            );
        }
        debug_assert_eq!(bucket.slots[pos], slot);
        bucket.slots.swap_remove(pos);
        if let Some(&moved) = bucket.slots.get(pos) {
            meta[moved as usize].pos = pos as u32;
        }
        let len = bucket.slots.len();
        match &bucket.index {
            Some(_) if len < config.index_min_len / 2 => {
                bucket.index = None;
                *indexed -= 1;
            }
            // Shrunk to a quarter: rebuild, which re-plans and frees the larger tables.
            Some(index) if len > 0 && len * 4 <= index.built_len => {
                rebuild_index(bucket, records, state, pool)
            }
            _ => {}
        }
        let (empty, pattern) = (bucket.slots.is_empty(), bucket.pattern);
        if empty && bucket.index.is_some() {
            *indexed -= 1;
        }
        if empty {
            if pattern {
                if let Some(b) = buckets.get(bucket_id as usize) {
                    trie.remove(b.key.as_str());
                }
            } else {
                remove_topic(topics, topic_collisions, buckets, state, bucket_id);
            }
            buckets.try_remove(bucket_id as usize);
        }
    }

    fn remove_slot(&mut self, slot: Slot) {
        self.detach(slot);
        self.meta[slot as usize].live = false;
        let rec = &mut self.records[slot as usize];
        let prog = std::mem::take(&mut rec.prog);
        prog.release(&mut self.pool, &mut self.names);
        if rec.group() != NO_GROUP {
            self.groups.leave(rec.group());
        }
        self.by_id.remove(&rec.id);
        self.free.push(slot);
    }

    /// Removes a subscription.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> Result<(), UnknownSubscription> {
        let slot = *self.by_id.get(&id).ok_or(UnknownSubscription(id))?;
        self.remove_slot(slot);
        Ok(())
    }

    /// Extends a lease to `now` + its length; returns the new deadline.
    pub fn renew(&mut self, now: Timestamp, id: SubscriptionId) -> Result<Timestamp, RenewError> {
        let slot = *self.by_id.get(&id).ok_or(RenewError::Unknown(id))?;
        let lease_ms = self.meta[slot as usize].lease_ms;
        let rec = &mut self.records[slot as usize];
        if lease_ms == 0 {
            return Err(RenewError::NotRenewable(id));
        }
        if rec.deadline <= now.0 {
            // Already due: it expires at the next `expire`, like a lease that ran out.
            return Err(RenewError::Unknown(id));
        }
        // The timer entry stays where it is; when it fires, `expire` sees the later deadline
        // and re-arms it. So a renewal is O(1) and adds no timer entry.
        rec.deadline = now.0.saturating_add(u64::from(lease_ms));
        Ok(Timestamp(rec.deadline))
    }

    /// Moves a live subscription's deadline later, to `deadline` (at most the longest expiry
    /// from `now`): a copy whose home node renewed it. O(1), like [`Engine::renew`]; a
    /// deadline earlier than the current one is ignored. False when `id` is unknown or due.
    pub fn extend(&mut self, now: Timestamp, id: SubscriptionId, deadline: Timestamp) -> bool {
        let Some(&slot) = self.by_id.get(&id) else {
            return false;
        };
        let max = now.0.saturating_add(self.config.expiry_max_ms);
        let rec = &mut self.records[slot as usize];
        if rec.deadline <= now.0 {
            return false;
        }
        rec.deadline = rec.deadline.max(deadline.0.min(max));
        true
    }

    /// Replaces a subscription's filter in place: from this call on, events are matched
    /// against the new filter; no event sees neither or both.
    pub fn set_filter(
        &mut self,
        id: SubscriptionId,
        filter: &Filter,
    ) -> Result<(), SetFilterError> {
        let slot = *self.by_id.get(&id).ok_or(SetFilterError::Unknown(id))?;
        if self.check_names(filter).is_err() {
            return Err(SetFilterError::TooManyAttributeNames {
                max: ATTR_NAMES_MAX,
            });
        }
        let Engine {
            records,
            meta,
            buckets,
            state,
            pool,
            names,
            ..
        } = self;
        let rec = &mut records[slot as usize];
        let Some(bucket) = buckets.get_mut(meta[slot as usize].bucket as usize) else {
            unreachable!("a live record's bucket exists")
        };
        let mut new = Prog::compile(filter.expr(), pool, names);
        if let Some(index) = &mut bucket.index {
            index.remove(&plan(&rec.prog, state, pool), slot, state, pool);
            choose(&mut new, &index.stats, pool);
            index.insert(&plan(&new, state, pool), slot, state, pool);
        }
        let old = std::mem::replace(&mut rec.prog, new);
        old.release(pool, names);
        Ok(())
    }

    fn sync_wheel(&mut self, now: Timestamp) {
        self.wheel.advance(now.0, &mut self.fired);
    }

    /// Removes every subscription whose deadline is at or before `now` and appends their ids.
    /// Each expiry costs O(1) amortised, whatever the number of subscriptions.
    pub fn expire(&mut self, now: Timestamp, out: &mut Vec<SubscriptionId>) {
        self.sync_wheel(now);
        let fired = std::mem::take(&mut self.fired);
        for &(slot, gen) in &fired {
            let m = &self.meta[slot as usize];
            if !m.live || m.gen != gen {
                continue; // the subscription went away; its timer entry is stale
            }
            let rec = &self.records[slot as usize];
            if rec.deadline <= now.0 {
                out.push(rec.id);
                self.counters.expired += 1;
                self.remove_slot(slot);
            } else {
                let deadline = rec.deadline;
                self.wheel.insert(deadline, (slot, gen));
            }
        }
        self.fired = fired;
        self.fired.clear();
    }

    /// When `expire` should next be called: a time at or before the next deadline.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if !self.fired.is_empty() {
            return Some(Timestamp(0));
        }
        self.wheel.next_wakeup().map(Timestamp)
    }

    /// Appends the subscriptions that `topic` and `attrs` match at time `now`: every live
    /// (not yet expired) subscription whose pattern matches and whose filter is true, except
    /// that of each group only one chosen member is returned.
    pub fn match_event(
        &mut self,
        now: Timestamp,
        topic: &Topic,
        attrs: &Attributes,
        out: &mut Vec<Match>,
    ) {
        self.match_event_salted(now, topic, attrs, None, out)
    }

    /// [`Engine::match_event`], with groups without a key choosing their member by `salt`
    /// (a hash of the event's id) instead of taking turns: the same event picks the same
    /// member on every engine that holds the same members.
    pub fn match_event_salted(
        &mut self,
        now: Timestamp,
        topic: &Topic,
        attrs: &Attributes,
        salt: Option<u64>,
        out: &mut Vec<Match>,
    ) {
        self.next_epoch();
        self.counters.events += 1;
        self.scratch_buckets.clear();
        if let Some(b) = self.find_topic(topic.as_str()) {
            self.scratch_buckets.push(b);
        }
        self.trie.matches(topic, &mut self.scratch_buckets);

        let Engine {
            records,
            buckets,
            state,
            pool,
            epoch,
            scratch_buckets,
            scratch_groups,
            scratch_candidates: cands,
            counters,
            names,
            ..
        } = self;
        let start = out.len();
        scratch_groups.clear();
        cands.clear();
        let view = EventView::new(names, attrs);
        for &b in scratch_buckets.iter() {
            let Some(bucket) = buckets.get_mut(b as usize) else {
                continue;
            };
            match &mut bucket.index {
                None => cands.extend(bucket.slots.iter().map(|&s| (s, true))),
                Some(index) => {
                    index.candidates(&view, state, pool, |s, eval| cands.push((s, eval)))
                }
            }
        }
        counters.candidates += cands.len() as u64;
        // Memory-level parallelism: candidates are scattered over the record table, and
        // touching them all in a tight loop with no branches lets the CPU overlap the cache
        // misses, instead of taking them one after the other inside `consider`.
        let mut touched = 0u64;
        for &(slot, _) in cands.iter() {
            touched = touched.wrapping_add(records[slot as usize].deadline);
        }
        for &(slot, _) in cands.iter() {
            touched = touched.wrapping_add(u64::from(records[slot as usize].prog.first_byte()));
        }
        std::hint::black_box(touched);
        let epoch = *epoch;
        for &(slot, needs_eval) in cands.iter() {
            let rec = &mut records[slot as usize];
            if rec.stamp == epoch {
                continue;
            }
            rec.stamp = epoch;
            if rec.deadline <= now.0 {
                continue;
            }
            if needs_eval && !rec.prog.is_empty() {
                counters.evaluations += 1;
                if !rec.prog.eval(&view, pool) {
                    continue;
                }
            }
            match rec.group() {
                NO_GROUP => out.push(Match {
                    id: rec.id,
                    mode: rec.mode(),
                }),
                group => scratch_groups.push((group, rec.id.0, slot)),
            }
        }
        if !self.scratch_groups.is_empty() {
            self.choose_group_members(attrs, salt, out);
        }
        self.counters.matches += (out.len() - start) as u64;
    }

    /// Whether subscription `id` matches an event on `topic` with `attrs` at `now`: live, on
    /// its topic or pattern, and through its filter (groups aside). For an event another node
    /// matched against its copy of the subscription, checked again here against the current
    /// one. `None` when `id` is unknown.
    pub fn matches_one(
        &mut self,
        now: Timestamp,
        id: SubscriptionId,
        topic: &Topic,
        attrs: &Attributes,
    ) -> Option<bool> {
        let slot = *self.by_id.get(&id)? as usize;
        let bucket = self.meta[slot].bucket;
        if self.records[slot].deadline <= now.0 {
            return Some(false);
        }
        let on_topic = self.find_topic(topic.as_str()) == Some(bucket) || {
            let mut found = Vec::new();
            self.trie.matches(topic, &mut found);
            found.contains(&bucket)
        };
        if !on_topic {
            return Some(false);
        }
        let rec = &self.records[slot];
        if rec.prog.is_empty() {
            return Some(true);
        }
        let view = EventView::new(&self.names, attrs);
        Some(rec.prog.eval(&view, &self.pool))
    }

    fn next_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Wrapped: clear every stamp so no record looks already considered.
            self.records.iter_mut().for_each(|r| r.stamp = 0);
            self.epoch = 1;
        }
    }

    /// One member per group among the matched group members in `scratch_groups`.
    fn choose_group_members(
        &mut self,
        attrs: &Attributes,
        salt: Option<u64>,
        out: &mut Vec<Match>,
    ) {
        let Engine {
            scratch_groups,
            scratch_members,
            groups,
            records,
            ..
        } = self;
        scratch_groups.sort_unstable();
        for run in scratch_groups.chunk_by(|a, b| a.0 == b.0) {
            scratch_members.clear();
            scratch_members.extend(run.iter().map(|&(_, id, slot)| (id, slot)));
            let slot = groups.choose(run[0].0, scratch_members, attrs, salt);
            let rec = &records[slot as usize];
            out.push(Match {
                id: rec.id,
                mode: rec.mode(),
            });
        }
    }

    /// Sizes and counters.
    pub fn stats(&self) -> Stats {
        Stats {
            subscriptions: self.by_id.len(),
            topics: self.topics.len() + self.topic_collisions.len(),
            patterns: self.trie.len(),
            indexed_buckets: self.indexed,
            groups: self.groups.len(),
            regexes: self.pool.len(),
            regexes_compiled: self.pool.compiled(),
            ..self.counters.clone()
        }
    }

    /// Bytes of compiled filter code held on the heap, beyond what fits inline in the
    /// subscription records (for memory accounting).
    pub fn filter_heap_bytes(&self) -> usize {
        self.records.iter().map(|r| r.prog.heap_len()).sum()
    }

    /// Number of timer entries (live and stale) in the expiry wheel.
    pub fn timer_entries(&self) -> usize {
        self.wheel.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sift_protocol::{Pattern, Topic, Value};

    fn sub(id: u64, topic: &str) -> NewSubscription {
        NewSubscription::new(SubscriptionId(id), Pattern::parse(topic).unwrap())
    }

    fn matches(e: &mut Engine, topic: &str) -> Vec<u64> {
        let mut out = vec![];
        e.match_event(
            Timestamp(0),
            &Topic::parse(topic).unwrap(),
            &Attributes::new(),
            &mut out,
        );
        out.iter().map(|m| m.id.0).collect()
    }

    #[test]
    fn one_subscription_checked_against_one_event() {
        let mut e = Engine::new(EngineConfig::for_test());
        let filter = sift_protocol::Filter::parse("x == 1").unwrap();
        e.subscribe(Timestamp(0), sub(1, "a.*").filter(filter))
            .unwrap();
        e.subscribe(
            Timestamp(0),
            sub(2, "b").expiry(sift_protocol::frame::ExpirySpec::DeadlineMs(10)),
        )
        .unwrap();
        let attrs = |x: i64| {
            let mut a = Attributes::new();
            a.insert("x".into(), Value::Int(x));
            a
        };
        let t = |s: &str| Topic::parse(s).unwrap();
        let id = SubscriptionId;
        assert_eq!(
            e.matches_one(Timestamp(1), id(1), &t("a.b"), &attrs(1)),
            Some(true)
        );
        assert_eq!(
            e.matches_one(Timestamp(1), id(1), &t("a.b"), &attrs(2)),
            Some(false),
            "filter"
        );
        assert_eq!(
            e.matches_one(Timestamp(1), id(1), &t("c.b"), &attrs(1)),
            Some(false),
            "pattern"
        );
        assert_eq!(
            e.matches_one(Timestamp(1), id(2), &t("b"), &attrs(1)),
            Some(true)
        );
        assert_eq!(
            e.matches_one(Timestamp(10), id(2), &t("b"), &attrs(1)),
            Some(false),
            "expired"
        );
        assert_eq!(e.matches_one(Timestamp(1), id(3), &t("b"), &attrs(1)), None);
    }

    #[test]
    fn extend_moves_a_deadline_later_only() {
        let mut e = Engine::new(EngineConfig::for_test());
        let spec = sift_protocol::frame::ExpirySpec::DeadlineMs(10);
        e.subscribe(Timestamp(0), sub(1, "a").expiry(spec)).unwrap();
        assert!(e.extend(Timestamp(5), SubscriptionId(1), Timestamp(50)));
        assert!(
            !e.extend(Timestamp(5), SubscriptionId(2), Timestamp(50)),
            "unknown"
        );
        assert!(
            e.extend(Timestamp(5), SubscriptionId(1), Timestamp(20)),
            "earlier: ignored"
        );
        let mut gone = vec![];
        e.expire(Timestamp(30), &mut gone);
        assert!(gone.is_empty(), "the timer re-arms for the later deadline");
        e.expire(Timestamp(50), &mut gone);
        assert_eq!(gone, vec![SubscriptionId(1)]);
    }

    thread_local! {
        pub(super) static COLLIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Topics with the same 64-bit hash (here: all of them) still get their own buckets, and
    /// removing the one in the main map hands its place to a collided one.
    #[test]
    fn topic_hash_collisions_are_handled() {
        COLLIDE.with(|c| c.set(true));
        let mut e = Engine::new(EngineConfig::for_test());
        for (id, t) in [(1, "a"), (2, "b"), (3, "c")] {
            e.subscribe(Timestamp(0), sub(id, t)).unwrap();
        }
        assert_eq!((e.topics.len(), e.topic_collisions.len()), (1, 2));
        assert_eq!(matches(&mut e, "a"), vec![1]);
        assert_eq!(matches(&mut e, "b"), vec![2]);
        assert_eq!(matches(&mut e, "c"), vec![3]);
        assert_eq!(matches(&mut e, "d"), Vec::<u64>::new());
        e.unsubscribe(SubscriptionId(1)).unwrap();
        assert_eq!(
            (e.topics.len(), e.topic_collisions.len()),
            (1, 1),
            "an heir moved up"
        );
        assert_eq!(matches(&mut e, "a"), Vec::<u64>::new());
        assert_eq!(matches(&mut e, "b"), vec![2]);
        assert_eq!(matches(&mut e, "c"), vec![3]);
        e.unsubscribe(SubscriptionId(3)).unwrap();
        e.unsubscribe(SubscriptionId(2)).unwrap();
        assert!(e.topics.is_empty() && e.topic_collisions.is_empty());
        COLLIDE.with(|c| c.set(false));
    }

    fn grouped(id: u64, topic: &str, group: &str, key: Option<&str>) -> NewSubscription {
        sub(id, topic).group(group, key)
    }

    fn attrs(pairs: &[(&str, Value)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// One member per group per event, members in turn: four members (three on the topic,
    /// one on a pattern) share 3,000 events exactly evenly, alongside a plain subscriber that
    /// gets every event.
    #[test]
    fn groups_spread_evenly() {
        let mut e = Engine::new(EngineConfig::for_test());
        for id in 1..=3 {
            e.subscribe(Timestamp(0), grouped(id, "jobs", "workers", None))
                .unwrap();
        }
        e.subscribe(Timestamp(0), grouped(4, "*", "workers", None))
            .unwrap();
        e.subscribe(Timestamp(0), sub(9, "jobs")).unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..3000 {
            for id in matches(&mut e, "jobs") {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        let want = [(1, 750), (2, 750), (3, 750), (4, 750), (9, 3000)];
        assert_eq!(counts, want.into_iter().collect());
    }

    /// With a key attribute, the same key always goes to the same member while membership is
    /// stable; keys spread over members; a leaving member only moves its own keys.
    #[test]
    fn group_key_affinity() {
        let mut e = Engine::new(EngineConfig::for_test());
        for id in 1..=4 {
            e.subscribe(Timestamp(0), grouped(id, "orders", "g", Some("customer")))
                .unwrap();
        }
        let topic = Topic::parse("orders").unwrap();
        let mut owner = std::collections::BTreeMap::new();
        let mut per_member = std::collections::BTreeMap::new();
        for round in 0..3 {
            for c in 0..400 {
                let a = attrs(&[("customer", Value::Str(format!("c{c}")))]);
                let mut out = vec![];
                e.match_event(Timestamp(0), &topic, &a, &mut out);
                assert_eq!(out.len(), 1);
                let chosen = out[0].id.0;
                assert_eq!(
                    *owner.entry(c).or_insert(chosen),
                    chosen,
                    "customer c{c} moved"
                );
                if round == 0 {
                    *per_member.entry(chosen).or_insert(0) += 1;
                }
            }
        }
        for (&m, &n) in &per_member {
            assert!((60..=140).contains(&n), "member {m} got {n} of 400 keys");
        }
        e.unsubscribe(SubscriptionId(2)).unwrap();
        for c in 0..400 {
            let a = attrs(&[("customer", Value::Str(format!("c{c}")))]);
            let mut out = vec![];
            e.match_event(Timestamp(0), &topic, &a, &mut out);
            if owner[&c] != 2 {
                assert_eq!(out[0].id.0, owner[&c], "only the leaver's keys move");
            }
        }
        // A member asking for another key attribute is refused; nothing changes.
        let err = e
            .subscribe(Timestamp(0), grouped(7, "orders", "g", Some("region")))
            .unwrap_err();
        assert!(matches!(err, SubscribeError::GroupConflict { .. }), "{err}");
        assert!(e.get(SubscriptionId(7)).is_none());
    }

    #[test]
    fn expiry_renewal_and_hard_deadlines() {
        let mut e = Engine::new(EngineConfig::for_test());
        e.subscribe(Timestamp(0), sub(1, "t").expiry(ExpirySpec::LeaseMs(100)))
            .unwrap();
        e.subscribe(
            Timestamp(0),
            sub(2, "t").expiry(ExpirySpec::DeadlineMs(100)),
        )
        .unwrap();
        assert_eq!(
            e.renew(Timestamp(50), SubscriptionId(1)),
            Ok(Timestamp(150))
        );
        assert_eq!(
            e.renew(Timestamp(50), SubscriptionId(2)),
            Err(RenewError::NotRenewable(SubscriptionId(2)))
        );
        // At 100 the hard deadline has passed: no match even before `expire` runs.
        assert_eq!(matches_at(&mut e, 100, "t"), vec![1]);
        let mut out = vec![];
        e.expire(Timestamp(100), &mut out);
        assert_eq!(out, vec![SubscriptionId(2)]);
        e.expire(Timestamp(149), &mut out);
        assert_eq!(out.len(), 1);
        e.expire(Timestamp(150), &mut out);
        assert_eq!(out, vec![SubscriptionId(2), SubscriptionId(1)]);
        assert!(e.is_empty());
        assert_eq!(
            e.renew(Timestamp(151), SubscriptionId(1)),
            Err(RenewError::Unknown(SubscriptionId(1)))
        );
        let bad = e.subscribe(Timestamp(0), sub(3, "t").expiry(ExpirySpec::LeaseMs(0)));
        assert!(matches!(bad, Err(SubscribeError::InvalidExpiry { .. })));
        let bad = e.subscribe(
            Timestamp(0),
            sub(3, "t").expiry(ExpirySpec::LeaseMs(24 * 3600 * 1000 + 1)),
        );
        assert!(matches!(bad, Err(SubscribeError::InvalidExpiry { .. })));
    }

    fn matches_at(e: &mut Engine, now: u64, topic: &str) -> Vec<u64> {
        let mut out = vec![];
        e.match_event(
            Timestamp(now),
            &Topic::parse(topic).unwrap(),
            &Attributes::new(),
            &mut out,
        );
        out.iter().map(|m| m.id.0).collect()
    }

    #[test]
    fn a_record_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Record>(), 64);
        assert_eq!(std::mem::align_of::<Record>(), 64);
    }
}
