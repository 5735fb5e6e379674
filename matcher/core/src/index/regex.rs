//! All regexes of one attribute in one bucket, matched in one `regex::RegexSet` pass.
//!
//! The set is rebuilt lazily, "rent or buy": new patterns wait in a pending list, each
//! checked with its own interned `Regex` (rent), until the checks spent on pending patterns
//! since the last build reach [`REBUY_FACTOR`] times the set's size, about what a rebuild costs
//! (buy). So a stable set is rebuilt once and then queried in one pass, and heavy churn
//! cannot force a rebuild per change. The pending list is also capped, bounding a query's
//! cost. Removed patterns stay in the set (ignored) until they are half of it. Below
//! [`REGEX_SET_MIN`] patterns there is no set at all.

use std::collections::BTreeMap;

use regex::{RegexSet, RegexSetBuilder};
use sift_protocol::limits::{REGEX_COMPILED_BYTES_MAX, REGEX_DFA_BYTES_MAX};

use super::postings::{Slot, SlotList};
use crate::regex_pool::{RegexId, RegexPool};

/// Fewest distinct patterns worth a `RegexSet`.
pub(crate) const REGEX_SET_MIN: usize = 8;
/// Cap on a set's compiled size, in bytes; a larger set is split off into the pending list.
const REGEX_SET_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Lazy-DFA cache of a set, in bytes per pattern (capped): many patterns need more states.
const REGEX_SET_DFA_BYTES_PER_PATTERN: usize = 16 * 1024;
const REGEX_SET_DFA_BYTES_MAX: usize = 32 * 1024 * 1024;
/// A pending pattern check is worth about 1/REBUY_FACTOR of compiling one pattern into a set.
const REBUY_FACTOR: u64 = 100;
/// Most pending patterns before a rebuild is forced regardless of queries.
const PENDING_MAX: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct RegexIndex {
    /// Regex id → subscriptions using it as their access key. Ordered for determinism.
    entries: BTreeMap<RegexId, SlotList>,
    /// The compiled set and, per set pattern, its regex id.
    set: Option<(RegexSet, Vec<RegexId>)>,
    /// Ids with entries that are not in the set.
    pending: Vec<RegexId>,
    /// Ids in the set that no longer have entries.
    stale: usize,
    /// Pending-pattern checks done by queries since the last build.
    pending_checks: u64,
}

impl RegexIndex {
    pub(crate) fn insert(&mut self, id: RegexId, slot: Slot, pool: &RegexPool) {
        let list = self.entries.entry(id).or_default();
        let fresh = list.is_empty();
        list.insert(slot);
        if fresh {
            // Ids are reused by the pool, so membership also checks the pattern.
            let pattern = pool.pattern(id);
            let in_set = self.set.as_ref().is_some_and(|(set, ids)| {
                ids.iter()
                    .zip(set.patterns())
                    .any(|(i, p)| *i == id && p == pattern)
            });
            if in_set {
                self.stale -= 1;
            } else {
                self.pending.push(id);
            }
            self.maybe_rebuild(pool);
        }
    }

    pub(crate) fn remove(&mut self, id: RegexId, slot: Slot, pool: &RegexPool) -> bool {
        let Some(list) = self.entries.get_mut(&id) else {
            return false;
        };
        let was = list.remove(slot);
        if list.is_empty() {
            self.entries.remove(&id);
            if let Some(i) = self.pending.iter().position(|p| *p == id) {
                self.pending.swap_remove(i);
            } else {
                self.stale += 1;
            }
            self.maybe_rebuild(pool);
        }
        was
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn maybe_rebuild(&mut self, pool: &RegexPool) {
        let set_len = self.set.as_ref().map_or(0, |(_, ids)| ids.len());
        if self.entries.len() < REGEX_SET_MIN {
            if self.set.take().is_some() {
                self.pending = self.entries.keys().copied().collect();
                self.stale = 0;
            }
            return;
        }
        if self.pending.len() > PENDING_MAX.max(set_len / 4) || self.stale * 2 > set_len {
            self.rebuild(pool);
        }
    }

    /// Rebuilds when the pending checks paid since the last build would have paid for it.
    pub(crate) fn tune(&mut self, pool: &RegexPool) {
        if self.pending.is_empty() || self.entries.len() < REGEX_SET_MIN {
            return;
        }
        self.pending_checks += self.pending.len() as u64;
        if self.pending_checks > REBUY_FACTOR * self.entries.len() as u64 {
            self.rebuild(pool);
        }
    }

    fn rebuild(&mut self, pool: &RegexPool) {
        let ids: Vec<RegexId> = self.entries.keys().copied().collect();
        let patterns = ids.iter().map(|id| pool.pattern(*id));
        let size = REGEX_COMPILED_BYTES_MAX
            .saturating_mul(ids.len())
            .min(REGEX_SET_BYTES_MAX);
        let dfa = REGEX_SET_DFA_BYTES_PER_PATTERN
            .saturating_mul(ids.len())
            .clamp(REGEX_DFA_BYTES_MAX, REGEX_SET_DFA_BYTES_MAX);
        let built = RegexSetBuilder::new(patterns)
            .size_limit(size)
            .dfa_size_limit(dfa)
            .build();
        self.stale = 0;
        self.pending_checks = 0;
        match built {
            Ok(set) => {
                self.set = Some((set, ids));
                self.pending.clear();
            }
            // Too large together: match them one by one rather than fail.
            Err(_) => {
                self.set = None;
                self.pending = ids;
            }
        }
    }

    /// Calls `f` for every subscription whose regex matches `v`.
    pub(crate) fn query(&self, v: &str, pool: &RegexPool, mut f: impl FnMut(Slot)) {
        if let Some((set, ids)) = &self.set {
            if set.is_match(v) {
                for i in set.matches(v).iter() {
                    if let Some(list) = self.entries.get(&ids[i]) {
                        list.for_each(&mut f);
                    }
                }
            }
        }
        for id in &self.pending {
            if pool.is_match(*id, v) {
                if let Some(list) = self.entries.get(id) {
                    list.for_each(&mut f);
                }
            }
        }
    }
}
