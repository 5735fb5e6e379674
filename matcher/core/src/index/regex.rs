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
const REGEX_SET_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Lazy-DFA cache of a set, in bytes per pattern (capped): many patterns need more states.
const REGEX_SET_DFA_BYTES_PER_PATTERN: usize = 16 * 1024;
const REGEX_SET_DFA_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A pending pattern check is worth about 1/REBUY_FACTOR of compiling one pattern into a set.
const REBUY_FACTOR: u64 = 100;
/// Most pending patterns before a rebuild is forced regardless of queries.
const PENDING_MAX: usize = 64;

#[derive(Debug)]
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
    /// How many patterns the last build failed with (too large together), 0 if it did not
    /// fail: no new attempt until the patterns drop to half that, so a set that cannot be
    /// built is not recompiled on every change or every few events.
    failed_at: usize,
    /// Set builds attempted (for tests and statistics).
    builds: u32,
    /// Cap on the set's compiled size, in bytes (tests lower it).
    set_bytes_max: usize,
}

impl Default for RegexIndex {
    fn default() -> RegexIndex {
        RegexIndex {
            entries: BTreeMap::new(),
            set: None,
            pending: Vec::new(),
            stale: 0,
            pending_checks: 0,
            failed_at: 0,
            builds: 0,
            set_bytes_max: REGEX_SET_BYTES_MAX,
        }
    }
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
        if self.blocked() {
            return;
        }
        if self.pending.len() > PENDING_MAX.max(set_len / 4) || self.stale * 2 > set_len {
            self.rebuild(pool);
        }
    }

    /// True while the last failed build is still too recent to retry.
    fn blocked(&self) -> bool {
        self.failed_at != 0 && self.entries.len() > self.failed_at / 2
    }

    /// Rebuilds when the pending checks paid since the last build would have paid for it.
    pub(crate) fn tune(&mut self, pool: &RegexPool) {
        if self.pending.is_empty() || self.entries.len() < REGEX_SET_MIN || self.blocked() {
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
            .min(self.set_bytes_max);
        let dfa = REGEX_SET_DFA_BYTES_PER_PATTERN
            .saturating_mul(ids.len())
            .clamp(REGEX_DFA_BYTES_MAX, REGEX_SET_DFA_BYTES_MAX);
        let built = RegexSetBuilder::new(patterns)
            .size_limit(size)
            .dfa_size_limit(dfa)
            .build();
        self.stale = 0;
        self.pending_checks = 0;
        self.builds += 1;
        match built {
            Ok(set) => {
                self.set = Some((set, ids));
                self.pending.clear();
                self.failed_at = 0;
            }
            // Too large together: match them one by one rather than fail.
            Err(_) => {
                self.set = None;
                self.failed_at = ids.len();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn query(ix: &RegexIndex, v: &str, pool: &RegexPool) -> Vec<Slot> {
        let mut out = vec![];
        ix.query(v, pool, |s| out.push(s));
        out.sort();
        out
    }

    #[test]
    fn a_set_serves_many_patterns_and_churn_does_not_rebuild_each_time() {
        let mut pool = RegexPool::default();
        let mut ix = RegexIndex::default();
        let ids: Vec<RegexId> = (0..40).map(|i| pool.acquire(&format!("x{i}y"))).collect();
        for (slot, id) in ids.iter().enumerate() {
            ix.insert(*id, slot as Slot, &pool);
        }
        for _ in 0..10_000 {
            ix.tune(&pool);
        }
        assert!(
            ix.set.is_some() && ix.pending.is_empty(),
            "queries paid for a set"
        );
        assert_eq!(query(&ix, "ax7yb", &pool), vec![7]);
        assert_eq!(query(&ix, "x12y x3y", &pool), vec![3, 12]);
        let builds = ix.builds;
        for (slot, id) in ids.iter().enumerate().take(5) {
            assert!(ix.remove(*id, slot as Slot, &pool));
        }
        assert_eq!(ix.builds, builds, "a few removals are ignored in place");
        assert_eq!(query(&ix, "x3y", &pool), Vec::<Slot>::new());
    }

    #[test]
    fn a_set_too_large_to_build_is_not_retried_on_every_change() {
        let mut pool = RegexPool::default();
        let mut ix = RegexIndex {
            set_bytes_max: 1,
            ..RegexIndex::default()
        };
        let ids: Vec<RegexId> = (0..200).map(|i| pool.acquire(&format!("p{i}q"))).collect();
        for (slot, id) in ids.iter().enumerate() {
            ix.insert(*id, slot as Slot, &pool);
            ix.tune(&pool);
        }
        assert!(ix.set.is_none());
        assert!(ix.builds <= 2, "{} failed builds", ix.builds);
        // Still exact, one pattern at a time.
        assert_eq!(query(&ix, "p150q", &pool), vec![150]);
    }
}
