//! The per-topic filter index. Each exact topic and each pattern has a [`Bucket`] holding its
//! subscriptions. Small buckets are scanned; past `EngineConfig::index_min_len` subscriptions
//! a bucket builds an [`Index`] so that an event only evaluates the filters it could satisfy.

mod affix;
mod postings;
mod range;
mod regex;

use std::hash::BuildHasher;

use sift_protocol::Value;
use smallvec::SmallVec;

use crate::attrs::{AttrId, EventView};
use crate::keys::{KeyRef, NumKey};
use crate::plan::{Access, BucketStats, Plan};
use crate::regex_pool::RegexPool;
use affix::{AffixIndex, End};
use postings::Postings;
pub(crate) use postings::{IdentityHasher, Slot, SlotList};
use range::{NumRangeIndex, StrRangeIndex};
use regex::RegexIndex;

/// A topic or pattern, inline when short, so that checking a lookup against it costs no
/// extra memory access.
#[derive(Debug)]
pub(crate) enum BucketKey {
    Inline { len: u8, bytes: [u8; 38] },
    Heap(Box<str>),
}

impl BucketKey {
    fn new(s: &str) -> BucketKey {
        let mut bytes = [0; 38];
        match bytes.get_mut(..s.len()) {
            Some(b) => {
                b.copy_from_slice(s.as_bytes());
                BucketKey::Inline {
                    len: s.len() as u8,
                    bytes,
                }
            }
            None => BucketKey::Heap(s.into()),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            BucketKey::Inline { len, bytes } => &bytes[..*len as usize],
            BucketKey::Heap(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Built from a `&str`, so always UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

/// The subscriptions of one exact topic or one pattern.
#[derive(Debug)]
pub(crate) struct Bucket {
    /// The topic or pattern text.
    pub(crate) key: BucketKey,
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
            key: BucketKey::new(key),
            pattern,
            slots: Vec::new(),
            index: None,
        }
    }
}

/// The index of one bucket.
///
/// Equality keys of every attribute share one postings table (keyed by attribute and value),
/// so the common case — an event probing a few equality keys — touches one table; the other
/// kinds of keys sit per attribute behind one pointer.
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
    /// Equality keys of all attributes: hash of (attribute, value) → slots.
    eq: Postings,
    /// Attributes with equality keys, sorted, with their key counts.
    eq_attrs: SmallVec<[(AttrId, u32); 4]>,
    /// The other kinds of keys, per attribute, sorted by attribute id.
    attrs: Vec<(AttrId, Box<AttrIndex>)>,
}

#[derive(Debug, Default)]
struct AttrIndex {
    exists: SlotList,
    num: Option<Box<NumRangeIndex>>,
    str: Option<Box<StrRangeIndex<Box<[u8]>>>>,
    prefix: AffixIndex,
    suffix: AffixIndex,
    regex: Option<Box<RegexIndex>>,
}

/// The equality key of `attr == value` with value hash `h`.
fn eq_key(attr: AttrId, h: u64) -> u64 {
    h ^ crate::keys::mix64(u64::from(attr) + 1)
}

impl AttrIndex {
    fn is_empty(&self) -> bool {
        self.exists.is_empty()
            && self.num.as_ref().is_none_or(|r| r.is_empty())
            && self.str.as_ref().is_none_or(|r| r.is_empty())
            && self.prefix.is_empty()
            && self.suffix.is_empty()
            && self.regex.as_ref().is_none_or(|r| r.is_empty())
    }

    fn query<S: BuildHasher>(
        &mut self,
        v: &Value,
        state: &S,
        pool: &RegexPool,
        f: &mut impl FnMut(Slot),
    ) {
        self.exists.for_each(&mut *f);
        match v {
            Value::Str(s) => {
                if let Some(r) = &self.str {
                    r.query::<[u8]>(s.as_bytes(), &mut *f);
                }
                self.prefix.query(state, End::Prefix, s.as_bytes(), &mut *f);
                self.suffix.query(state, End::Suffix, s.as_bytes(), &mut *f);
                if let Some(r) = &mut self.regex {
                    r.tune(pool);
                    r.query(s, pool, &mut *f);
                }
            }
            Value::Int(_) | Value::Float(_) => {
                if let (Some(r), Some(n)) = (&self.num, NumKey::from_value(v)) {
                    r.query(n, &mut *f);
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
                self.attrs.insert(i, (attr, Box::default()));
                i
            }
        };
        &mut self.attrs[i].1
    }

    fn eq_insert(&mut self, attr: AttrId, key: u64, slot: Slot) {
        self.eq.insert(eq_key(attr, key), slot);
        match self.eq_attrs.binary_search_by_key(&attr, |(a, _)| *a) {
            Ok(i) => self.eq_attrs[i].1 += 1,
            Err(i) => self.eq_attrs.insert(i, (attr, 1)),
        }
    }

    fn eq_remove(&mut self, attr: AttrId, key: u64, slot: Slot) -> bool {
        if !self.eq.remove(eq_key(attr, key), slot) {
            return false;
        }
        if let Ok(i) = self.eq_attrs.binary_search_by_key(&attr, |(a, _)| *a) {
            self.eq_attrs[i].1 -= 1;
            if self.eq_attrs[i].1 == 0 {
                self.eq_attrs.remove(i);
            }
        }
        true
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
            if let Access::Eq { attr, key } = key {
                self.eq_insert(*attr, *key, slot);
                continue;
            }
            let ai = self.attr_mut(key.attr());
            match key {
                Access::Eq { .. } => {}
                Access::Exists { .. } => ai.exists.insert(slot),
                Access::Num { lo, hi, .. } => ai.num.get_or_insert_default().insert(*lo, *hi, slot),
                Access::Str { lo, hi, .. } => {
                    ai.str
                        .get_or_insert_default()
                        .insert(owned(*lo), owned(*hi), slot)
                }
                Access::Prefix { bytes, .. } => ai.prefix.insert(state, End::Prefix, bytes, slot),
                Access::Suffix { bytes, .. } => ai.suffix.insert(state, End::Suffix, bytes, slot),
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
            if let Access::Eq { attr, key } = key {
                let was = self.eq_remove(*attr, *key, slot);
                debug_assert!(was, "slot {slot} missing under {key:?}");
                continue;
            }
            let Ok(i) = self.attrs.binary_search_by_key(&key.attr(), |(a, _)| *a) else {
                debug_assert!(false, "attribute {} missing from the index", key.attr());
                continue;
            };
            let ai = &mut self.attrs[i].1;
            let was = match key {
                Access::Eq { .. } => false,
                Access::Exists { .. } => ai.exists.remove(slot),
                Access::Num { lo, hi, .. } => {
                    ai.num.as_mut().is_some_and(|r| r.remove(*lo, *hi, slot))
                }
                Access::Str { lo, hi, .. } => ai
                    .str
                    .as_mut()
                    .is_some_and(|r| r.remove(owned(*lo), owned(*hi), slot)),
                Access::Prefix { bytes, .. } => ai.prefix.remove(state, End::Prefix, bytes, slot),
                Access::Suffix { bytes, .. } => ai.suffix.remove(state, End::Suffix, bytes, slot),
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
        let mut report = |s| f(s, true);
        // The event's attributes, the equality attributes and the other indexes are all
        // sorted by attribute id: walk them together.
        let mut eq_attrs = self.eq_attrs.iter().peekable();
        let mut others = self.attrs.iter_mut().peekable();
        for &(attr, value) in attrs.items() {
            while eq_attrs.next_if(|(a, _)| *a < attr).is_some() {}
            if eq_attrs.peek().is_some_and(|(a, _)| *a == attr) {
                if let Some(k) = KeyRef::from_value(value) {
                    self.eq.get(eq_key(attr, k.hash_with(state)), &mut report);
                }
            }
            while others.next_if(|(a, _)| *a < attr).is_some() {}
            if let Some((a, ai)) = others.peek_mut() {
                if *a == attr {
                    ai.query(value, state, pool, &mut report);
                }
            }
        }
    }
}
