//! The matching engine: subscriptions in, matches out, expiry by deadline. A pure state
//! machine: no clock, no I/O, no randomness beyond the configured hash seed.

use foldhash::fast::FixedState;
use hashbrown::HashMap;
use sift_protocol::event::check_attr_name;
use sift_protocol::frame::ExpirySpec;
use sift_protocol::{Attributes, DeliveryMode, Filter, SubscriptionId, Topic};

use crate::groups::{GroupId, Groups, NO_GROUP};
use crate::index::{Bucket, Index, Slot};
use crate::plan::{choose, plan, BucketStats};
use crate::prog::Prog;
use crate::regex_pool::RegexPool;
use crate::trie::{BucketId, Trie};
use crate::types::*;
use crate::wheel::Wheel;

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
        choose(prog, &index.stats);
        index.insert(&plan(prog, state), s, state, pool);
    }
    bucket.index = Some(index);
}

#[derive(Debug)]
struct Record {
    id: SubscriptionId,
    /// Expires when `now >= deadline` (ms).
    deadline: u64,
    prog: Prog,
    bucket: BucketId,
    /// Position in the bucket's slot list.
    pos: u32,
    /// Last match call that considered this record (deduplicates index hits).
    stamp: u32,
    /// Bumped when the slot is reused, so stale timer entries are recognised.
    gen: u32,
    /// Lease length for renewals; 0 for a hard deadline.
    lease_ms: u32,
    group: GroupId,
    mode: DeliveryMode,
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
    free: Vec<Slot>,
    by_id: HashMap<SubscriptionId, Slot>,
    topics: HashMap<Box<str>, BucketId>,
    buckets: Vec<Option<Bucket>>,
    free_buckets: Vec<BucketId>,
    trie: Trie,
    pool: RegexPool,
    groups: Groups,
    wheel: Wheel<(Slot, u32)>,
    /// Timer entries already taken from the wheel, waiting for `expire`.
    fired: Vec<(Slot, u32)>,
    epoch: u32,
    indexed: usize,
    scratch_buckets: Vec<BucketId>,
    scratch_groups: Vec<(GroupId, u64, Slot)>,
    scratch_members: Vec<(u64, Slot)>,
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
            free: Vec::new(),
            by_id: HashMap::new(),
            topics: HashMap::new(),
            buckets: Vec::new(),
            free_buckets: Vec::new(),
            trie: Trie::default(),
            pool: RegexPool::default(),
            groups: Groups::default(),
            wheel: Wheel::new(0),
            fired: Vec::new(),
            epoch: 0,
            indexed: 0,
            scratch_buckets: Vec::new(),
            scratch_groups: Vec::new(),
            scratch_members: Vec::new(),
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
        let rec = &self.records[*self.by_id.get(&id)? as usize];
        let bucket = self.bucket(rec.bucket);
        Some(SubscriptionInfo {
            pattern: &bucket.key,
            deadline: Timestamp(rec.deadline),
            renewable: rec.lease_ms != 0,
            mode: rec.mode,
            group: (rec.group != NO_GROUP).then(|| self.groups.name(rec.group)),
        })
    }

    fn bucket(&self, id: BucketId) -> &Bucket {
        match &self.buckets[id as usize] {
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
        if self.by_id.contains_key(&sub.id) {
            return Err(SubscribeError::Duplicate(sub.id));
        }
        let max = self.config.subscriptions_max.min(i32::MAX as usize);
        if self.by_id.len() >= max {
            return Err(SubscribeError::TooMany { max });
        }
        let (ms, lease_ms) = self.check_expiry(sub.expiry)?;
        let group = self.join_group(&sub)?;
        self.sync_wheel(now);

        let prog = Prog::compile(sub.filter.expr(), &mut self.pool);
        let bucket = self.bucket_for(&sub);
        let deadline = now.0.saturating_add(ms);
        let slot = self.alloc_record(Record {
            id: sub.id,
            deadline,
            prog,
            bucket,
            pos: 0,
            stamp: 0,
            gen: 0,
            lease_ms,
            group,
            mode: sub.mode,
            live: true,
        });
        self.attach(slot);
        self.wheel
            .insert(deadline, (slot, self.records[slot as usize].gen));
        self.by_id.insert(sub.id, slot);
        Ok(())
    }

    fn alloc_record(&mut self, mut rec: Record) -> Slot {
        match self.free.pop() {
            Some(slot) => {
                let old = &self.records[slot as usize];
                debug_assert!(!old.live);
                rec.gen = old.gen.wrapping_add(1);
                self.records[slot as usize] = rec;
                slot
            }
            None => {
                self.records.push(rec);
                (self.records.len() - 1) as Slot
            }
        }
    }

    /// The bucket for a new subscription's topic or pattern, created if needed.
    fn bucket_for(&mut self, sub: &NewSubscription) -> BucketId {
        let text = sub.pattern.as_str();
        let existing = if sub.pattern.is_literal() {
            self.topics.get(text).copied()
        } else {
            self.trie.get(&sub.pattern)
        };
        if let Some(b) = existing {
            return b;
        }
        let bucket = Bucket::new(text, !sub.pattern.is_literal());
        let id = match self.free_buckets.pop() {
            Some(id) => {
                self.buckets[id as usize] = Some(bucket);
                id
            }
            None => {
                self.buckets.push(Some(bucket));
                (self.buckets.len() - 1) as BucketId
            }
        };
        if sub.pattern.is_literal() {
            self.topics.insert(text.into(), id);
        } else {
            self.trie.insert(&sub.pattern, id);
        }
        id
    }

    /// Puts a record into its bucket (and the bucket's index).
    fn attach(&mut self, slot: Slot) {
        let Engine {
            records,
            buckets,
            state,
            pool,
            indexed,
            config,
            ..
        } = self;
        let rec = &mut records[slot as usize];
        let Some(bucket) = buckets[rec.bucket as usize].as_mut() else {
            unreachable!("a new record's bucket exists")
        };
        rec.pos = bucket.slots.len() as u32;
        bucket.slots.push(slot);
        let len = bucket.slots.len();
        match &mut bucket.index {
            Some(index) if len < 2 * index.built_len => {
                choose(&mut rec.prog, &index.stats);
                index.insert(&plan(&rec.prog, state), slot, state, pool);
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
            buckets,
            state,
            pool,
            indexed,
            topics,
            trie,
            free_buckets,
            config,
            ..
        } = self;
        let rec = &records[slot as usize];
        let bucket_id = rec.bucket;
        let pos = rec.pos as usize;
        let Some(bucket) = buckets[bucket_id as usize].as_mut() else {
            unreachable!("a live record's bucket exists")
        };
        if let Some(index) = &mut bucket.index {
            index.remove(&plan(&rec.prog, state), slot, state, pool);
        }
        debug_assert_eq!(bucket.slots[pos], slot);
        bucket.slots.swap_remove(pos);
        if let Some(&moved) = bucket.slots.get(pos) {
            records[moved as usize].pos = pos as u32;
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
        if bucket.slots.is_empty() {
            if bucket.pattern {
                trie.remove(&bucket.key);
            } else {
                topics.remove(&bucket.key);
            }
            buckets[bucket_id as usize] = None;
            free_buckets.push(bucket_id);
        }
    }

    fn remove_slot(&mut self, slot: Slot) {
        self.detach(slot);
        let rec = &mut self.records[slot as usize];
        rec.live = false;
        let prog = std::mem::take(&mut rec.prog);
        prog.release(&mut self.pool);
        if rec.group != NO_GROUP {
            self.groups.leave(rec.group);
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
        let rec = &mut self.records[slot as usize];
        if rec.lease_ms == 0 {
            return Err(RenewError::NotRenewable(id));
        }
        if rec.deadline <= now.0 {
            // Already due: it expires at the next `expire`, like a lease that ran out.
            return Err(RenewError::Unknown(id));
        }
        // The timer entry stays where it is; when it fires, `expire` sees the later deadline
        // and re-arms it. So a renewal is O(1) and adds no timer entry.
        rec.deadline = now.0.saturating_add(u64::from(rec.lease_ms));
        Ok(Timestamp(rec.deadline))
    }

    /// Replaces a subscription's filter in place: from this call on, events are matched
    /// against the new filter; no event sees neither or both.
    pub fn set_filter(
        &mut self,
        id: SubscriptionId,
        filter: &Filter,
    ) -> Result<(), UnknownSubscription> {
        let slot = *self.by_id.get(&id).ok_or(UnknownSubscription(id))?;
        let Engine {
            records,
            buckets,
            state,
            pool,
            ..
        } = self;
        let rec = &mut records[slot as usize];
        let Some(bucket) = buckets[rec.bucket as usize].as_mut() else {
            unreachable!("a live record's bucket exists")
        };
        let mut new = Prog::compile(filter.expr(), pool);
        if let Some(index) = &mut bucket.index {
            index.remove(&plan(&rec.prog, state), slot, state, pool);
            choose(&mut new, &index.stats);
            index.insert(&plan(&new, state), slot, state, pool);
        }
        let old = std::mem::replace(&mut rec.prog, new);
        old.release(pool);
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
            let rec = &self.records[slot as usize];
            if !rec.live || rec.gen != gen {
                continue; // the subscription went away; its timer entry is stale
            }
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
        self.next_epoch();
        self.counters.events += 1;
        self.scratch_buckets.clear();
        if let Some(&b) = self.topics.get(topic.as_str()) {
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
            counters,
            ..
        } = self;
        let start = out.len();
        scratch_groups.clear();
        let epoch = *epoch;
        let mut consider = |slot: Slot, needs_eval: bool| {
            let rec = &mut records[slot as usize];
            if rec.stamp == epoch {
                return;
            }
            rec.stamp = epoch;
            counters.candidates += 1;
            if rec.deadline <= now.0 {
                return;
            }
            if needs_eval && !rec.prog.is_empty() {
                counters.evaluations += 1;
                if !rec.prog.eval(attrs, pool) {
                    return;
                }
            }
            if rec.group == NO_GROUP {
                out.push(Match {
                    id: rec.id,
                    mode: rec.mode,
                });
            } else {
                scratch_groups.push((rec.group, rec.id.0, slot));
            }
        };
        for &b in scratch_buckets.iter() {
            let Some(bucket) = &mut buckets[b as usize] else {
                continue;
            };
            match &mut bucket.index {
                None => bucket.slots.iter().for_each(|&s| consider(s, true)),
                Some(index) => index.candidates(attrs, state, pool, &mut consider),
            }
        }
        if !self.scratch_groups.is_empty() {
            self.choose_group_members(attrs, out);
        }
        self.counters.matches += (out.len() - start) as u64;
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
    fn choose_group_members(&mut self, attrs: &Attributes, out: &mut Vec<Match>) {
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
            let slot = groups.choose(run[0].0, scratch_members, attrs);
            let rec = &records[slot as usize];
            out.push(Match {
                id: rec.id,
                mode: rec.mode,
            });
        }
    }

    /// Sizes and counters.
    pub fn stats(&self) -> Stats {
        Stats {
            subscriptions: self.by_id.len(),
            topics: self.topics.len(),
            patterns: self.trie.len(),
            indexed_buckets: self.indexed,
            groups: self.groups.len(),
            regexes: self.pool.len(),
            ..self.counters.clone()
        }
    }

    /// Bytes of compiled filter code held (for memory accounting).
    pub fn filter_code_bytes(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.live)
            .map(|r| r.prog.len())
            .sum()
    }

    /// Number of timer entries (live and stale) in the expiry wheel.
    pub fn timer_entries(&self) -> usize {
        self.wheel.len()
    }
}
