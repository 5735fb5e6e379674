//! The per-topic filter index. Each exact topic and each pattern has a [`Bucket`] holding its
//! subscriptions. Small buckets are scanned; past `EngineConfig::index_min_len` subscriptions
//! a bucket builds an [`Index`] so that an event only evaluates the filters it could satisfy.

mod affix;
mod postings;
mod range;
mod regex;

use std::hash::BuildHasher;

use sift_protocol::Value;

use crate::attrs::{AttrId, EventView};
use crate::keys::{KeyRef, NumKey};
use crate::plan::{Access, BucketStats, Plan};
use crate::regex_pool::RegexPool;
use affix::{AffixIndex, End};
use postings::Postings;
pub(crate) use postings::{Slot, SlotList};
use range::RangeIndex;
use regex::RegexIndex;

/// The subscriptions of one exact topic or one pattern.
#[derive(Debug)]
pub(crate) struct Bucket {
    /// The topic or pattern text.
    pub(crate) key: Box<str>,
    /// True when `key` is a pattern (lives in the trie).
    pub(crate) pattern: bool,
    /// Every subscription of the bucket; each record knows its position here.
    pub(crate) slots: Vec<Slot>,
    /// Present once the bucket is large enough to be worth indexing.
    pub(crate) index: Option<Box<Index>>,
}

impl Bucket {
    pub(crate) fn new(key: &str, pattern: bool) -> Bucket {
        Bucket {
            key: key.into(),
            pattern,
            slots: Vec::new(),
            index: None,
        }
    }
}

/// The index of one bucket.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Statistics the access keys were chosen with.
    pub(crate) stats: BucketStats,
    /// How many subscriptions the bucket had when this index was built.
    pub(crate) built_len: usize,
    /// Empty filters: match without evaluation.
    always: SlotList,
    /// Filters without access keys: evaluated for every event.
    residual: SlotList,
    /// Per attribute, sorted by attribute id.
    attrs: Vec<(AttrId, AttrIndex)>,
}

#[derive(Debug, Default)]
struct AttrIndex {
    eq: Postings,
    exists: SlotList,
    num: Option<Box<RangeIndex<NumKey>>>,
    str: Option<Box<RangeIndex<Box<[u8]>>>>,
    prefix: Option<Box<AffixIndex>>,
    suffix: Option<Box<AffixIndex>>,
    regex: Option<Box<RegexIndex>>,
}

impl AttrIndex {
    fn is_empty(&self) -> bool {
        self.eq.is_empty()
            && self.exists.is_empty()
            && self.num.as_ref().is_none_or(|r| r.is_empty())
            && self.str.as_ref().is_none_or(|r| r.is_empty())
            && self.prefix.as_ref().is_none_or(|r| r.is_empty())
            && self.suffix.as_ref().is_none_or(|r| r.is_empty())
            && self.regex.as_ref().is_none_or(|r| r.is_empty())
    }

    fn query<S: BuildHasher>(
        &mut self,
        v: &Value,
        state: &S,
        pool: &RegexPool,
        f: &mut impl FnMut(Slot),
    ) {
        if let Some(k) = KeyRef::from_value(v) {
            self.eq.get(k.hash_with(state), &mut *f);
        }
        self.exists.for_each(&mut *f);
        match v {
            Value::Str(s) => {
                if let Some(r) = &self.str {
                    r.query::<[u8]>(s.as_bytes(), &mut *f);
                }
                if let Some(a) = &self.prefix {
                    a.query(state, End::Prefix, s.as_bytes(), &mut *f);
                }
                if let Some(a) = &self.suffix {
                    a.query(state, End::Suffix, s.as_bytes(), &mut *f);
                }
                if let Some(r) = &mut self.regex {
                    r.tune(pool);
                    r.query(s, pool, &mut *f);
                }
            }
            Value::Int(_) | Value::Float(_) => {
                if let (Some(r), Some(n)) = (&self.num, NumKey::from_value(v)) {
                    r.query(&n, &mut *f);
                }
            }
            Value::Bool(_) => {}
        }
    }
}

fn owned(b: Option<(&[u8], bool)>) -> Option<(Box<[u8]>, bool)> {
    b.map(|(k, incl)| (Box::from(k), incl))
}

impl Index {
    pub(crate) fn new(stats: BucketStats, built_len: usize) -> Index {
        Index {
            stats,
            built_len,
            ..Index::default()
        }
    }

    fn attr_mut(&mut self, attr: AttrId) -> &mut AttrIndex {
        let i = match self.attrs.binary_search_by_key(&attr, |(a, _)| *a) {
            Ok(i) => i,
            Err(i) => {
                self.attrs.insert(i, (attr, AttrIndex::default()));
                i
            }
        };
        &mut self.attrs[i].1
    }

    /// Adds `slot` under every key of its plan.
    pub(crate) fn insert<S: BuildHasher>(
        &mut self,
        plan: &Plan<'_>,
        slot: Slot,
        state: &S,
        pool: &RegexPool,
    ) {
        let keys = match plan {
            Plan::All => return self.always.insert(slot),
            Plan::Residual => return self.residual.insert(slot),
            Plan::Keys(keys) => keys,
        };
        for key in keys {
            let ai = self.attr_mut(key.attr());
            match key {
                Access::Eq { key, .. } => ai.eq.insert(*key, slot),
                Access::Exists { .. } => ai.exists.insert(slot),
                Access::Num { lo, hi, .. } => ai.num.get_or_insert_default().insert(*lo, *hi, slot),
                Access::Str { lo, hi, .. } => {
                    ai.str
                        .get_or_insert_default()
                        .insert(owned(*lo), owned(*hi), slot)
                }
                Access::Prefix { bytes, .. } => {
                    ai.prefix.get_or_insert_default().insert(state, bytes, slot)
                }
                Access::Suffix { bytes, .. } => {
                    ai.suffix.get_or_insert_default().insert(state, bytes, slot)
                }
                Access::Regex { id, .. } => {
                    ai.regex.get_or_insert_default().insert(*id, slot, pool)
                }
            }
        }
    }

    /// Removes `slot` from every key of its plan (the same plan `insert` got).
    pub(crate) fn remove<S: BuildHasher>(
        &mut self,
        plan: &Plan<'_>,
        slot: Slot,
        state: &S,
        pool: &RegexPool,
    ) {
        let keys = match plan {
            Plan::All => {
                let was = self.always.remove(slot);
                debug_assert!(was, "slot {slot} missing from the match-all list");
                return;
            }
            Plan::Residual => {
                let was = self.residual.remove(slot);
                debug_assert!(was, "slot {slot} missing from the residual list");
                return;
            }
            Plan::Keys(keys) => keys,
        };
        for key in keys {
            let Ok(i) = self.attrs.binary_search_by_key(&key.attr(), |(a, _)| *a) else {
                debug_assert!(false, "attribute {} missing from the index", key.attr());
                continue;
            };
            let ai = &mut self.attrs[i].1;
            let was = match key {
                Access::Eq { key, .. } => ai.eq.remove(*key, slot),
                Access::Exists { .. } => ai.exists.remove(slot),
                Access::Num { lo, hi, .. } => {
                    ai.num.as_mut().is_some_and(|r| r.remove(*lo, *hi, slot))
                }
                Access::Str { lo, hi, .. } => ai
                    .str
                    .as_mut()
                    .is_some_and(|r| r.remove(owned(*lo), owned(*hi), slot)),
                Access::Prefix { bytes, .. } => ai
                    .prefix
                    .as_mut()
                    .is_some_and(|a| a.remove(state, bytes, slot)),
                Access::Suffix { bytes, .. } => ai
                    .suffix
                    .as_mut()
                    .is_some_and(|a| a.remove(state, bytes, slot)),
                Access::Regex { id, .. } => {
                    ai.regex.as_mut().is_some_and(|r| r.remove(*id, slot, pool))
                }
            };
            debug_assert!(was, "slot {slot} missing under {key:?}");
            if ai.is_empty() {
                self.attrs.remove(i);
            }
        }
    }

    /// Calls `f(slot, needs_eval)` for every subscription the event could match. A slot may
    /// be reported more than once (several keys hit); the caller deduplicates. Takes `&mut`
    /// only to let regex sets rebuild themselves when queries have paid for it.
    pub(crate) fn candidates<S: BuildHasher>(
        &mut self,
        attrs: &EventView<'_>,
        state: &S,
        pool: &RegexPool,
        mut f: impl FnMut(Slot, bool),
    ) {
        self.always.for_each(|s| f(s, false));
        self.residual.for_each(|s| f(s, true));
        if self.attrs.is_empty() {
            return;
        }
        let mut report = |s| f(s, true);
        // Both sides are sorted by attribute id: walk them together.
        let mut mine = self.attrs.iter_mut().peekable();
        for &(attr, value) in attrs.items() {
            while mine.next_if(|(a, _)| *a < attr).is_some() {}
            match mine.peek_mut() {
                None => return,
                Some((a, ai)) if *a == attr => ai.query(value, state, pool, &mut report),
                Some(_) => {}
            }
        }
    }
}
