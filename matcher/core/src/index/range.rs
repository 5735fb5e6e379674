//! Range predicates: `a > k` style half-ranges in ordered maps (the satisfied ones are a
//! contiguous run), and two-sided intervals in a stabbing structure. Both are output-sensitive:
//! a query costs about the number of satisfied ranges, not the number stored.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound::{Included, Unbounded};

use smallvec::SmallVec;

use super::postings::Slot;

type Entries = SmallVec<[(Slot, bool); 2]>;

/// All range keys of one attribute and one kind (numbers, or strings by bytes).
/// `K` is the stored key, `Q` the borrowed form events are queried with.
#[derive(Debug)]
pub(crate) struct RangeIndex<K> {
    /// `a > k` (`incl = false`) and `a >= k` (`incl = true`), by `k`.
    lower: BTreeMap<K, Entries>,
    /// `a < k` and `a <= k`, by `k`.
    upper: BTreeMap<K, Entries>,
    /// `lo < a < hi` with either end inclusive.
    both: IntervalSet<K>,
}

impl<K: Ord + Clone> Default for RangeIndex<K> {
    fn default() -> Self {
        RangeIndex {
            lower: BTreeMap::new(),
            upper: BTreeMap::new(),
            both: IntervalSet::default(),
        }
    }
}

fn remove_entry<K: Ord>(map: &mut BTreeMap<K, Entries>, key: &K, slot: Slot) -> bool {
    let Some(list) = map.get_mut(key) else {
        return false;
    };
    let Some(i) = list.iter().position(|(s, _)| *s == slot) else {
        return false;
    };
    list.swap_remove(i);
    if list.is_empty() {
        map.remove(key);
    }
    true
}

impl<K: Ord + Clone> RangeIndex<K> {
    pub(crate) fn insert(&mut self, lo: Option<(K, bool)>, hi: Option<(K, bool)>, slot: Slot) {
        match (lo, hi) {
            (Some((k, incl)), None) => self.lower.entry(k).or_default().push((slot, incl)),
            (None, Some((k, incl))) => self.upper.entry(k).or_default().push((slot, incl)),
            (Some(lo), Some(hi)) => self.both.insert(Interval { lo, hi, slot }),
            (None, None) => debug_assert!(false, "a range needs a bound"),
        }
    }

    pub(crate) fn remove(
        &mut self,
        lo: Option<(K, bool)>,
        hi: Option<(K, bool)>,
        slot: Slot,
    ) -> bool {
        match (lo, hi) {
            (Some((k, _)), None) => remove_entry(&mut self.lower, &k, slot),
            (None, Some((k, _))) => remove_entry(&mut self.upper, &k, slot),
            (Some(lo), Some(hi)) => self.both.remove(&Interval { lo, hi, slot }),
            (None, None) => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lower.is_empty() && self.upper.is_empty() && self.both.is_empty()
    }

    /// Calls `f` for every range that `v` satisfies.
    pub(crate) fn query<Q>(&self, v: &Q, mut f: impl FnMut(Slot))
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        // k < v, or k == v when inclusive.
        for (k, list) in self.lower.range::<Q, _>((Unbounded, Included(v))) {
            let at_v = k.borrow() == v;
            list.iter()
                .filter(|(_, incl)| !at_v || *incl)
                .for_each(|(s, _)| f(*s));
        }
        // k > v, or k == v when inclusive.
        for (k, list) in self.upper.range::<Q, _>((Included(v), Unbounded)) {
            let at_v = k.borrow() == v;
            list.iter()
                .filter(|(_, incl)| !at_v || *incl)
                .for_each(|(s, _)| f(*s));
        }
        self.both.query(v, f);
    }
}

/// A two-sided range with its slot.
#[derive(Clone, Debug)]
pub(crate) struct Interval<K> {
    lo: (K, bool),
    hi: (K, bool),
    slot: Slot,
}

impl<K: Ord> Interval<K> {
    fn contains<Q>(&self, v: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let lo_ok = match self.lo.0.borrow().cmp(v) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.lo.1,
            std::cmp::Ordering::Greater => false,
        };
        let hi_ok = match self.hi.0.borrow().cmp(v) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => self.hi.1,
            std::cmp::Ordering::Less => false,
        };
        lo_ok && hi_ok
    }
}

const DEAD: Slot = Slot::MAX;
const NONE: u32 = u32::MAX;

/// Stabbing queries over intervals: a sorted array with a max-of-upper-bound segment tree,
/// plus a small unsorted "pending" list for recent inserts. The array is rebuilt when the
/// pending list outgrows `2 * sqrt(n)` or half the array is dead, so inserts cost O(sqrt(n)
/// log n) amortised and queries O((k + 1) log n + sqrt(n)).
#[derive(Debug)]
pub(crate) struct IntervalSet<K> {
    /// Sorted by `lo`; removed entries have `slot == DEAD`.
    built: Vec<Interval<K>>,
    /// Implicit segment tree over `built`: per node, the index of the entry with the
    /// greatest `hi` (or `NONE`). Leaves start at `leaves`.
    tree: Vec<u32>,
    leaves: usize,
    pending: Vec<Interval<K>>,
    dead: usize,
}

impl<K> Default for IntervalSet<K> {
    fn default() -> Self {
        IntervalSet {
            built: Vec::new(),
            tree: Vec::new(),
            leaves: 0,
            pending: Vec::new(),
            dead: 0,
        }
    }
}

impl<K: Ord + Clone> IntervalSet<K> {
    fn is_empty(&self) -> bool {
        self.built.len() == self.dead && self.pending.is_empty()
    }

    fn insert(&mut self, iv: Interval<K>) {
        self.pending.push(iv);
        let live = self.built.len() - self.dead;
        let limit = 32usize.max(2 * (live as f64).sqrt() as usize);
        if self.pending.len() > limit {
            self.rebuild();
        }
    }

    fn remove(&mut self, iv: &Interval<K>) -> bool {
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.slot == iv.slot && p.lo.0 == iv.lo.0)
        {
            self.pending.swap_remove(i);
            return true;
        }
        let start = self.built.partition_point(|b| b.lo.0 < iv.lo.0);
        let found = self.built[start..]
            .iter()
            .take_while(|b| b.lo.0 == iv.lo.0)
            .position(|b| b.slot == iv.slot);
        let Some(i) = found else { return false };
        self.built[start + i].slot = DEAD;
        self.dead += 1;
        if self.dead * 2 > self.built.len() {
            self.rebuild();
        }
        true
    }

    fn rebuild(&mut self) {
        let mut all: Vec<Interval<K>> = std::mem::take(&mut self.built);
        all.retain(|iv| iv.slot != DEAD);
        all.append(&mut self.pending);
        all.sort_by(|a, b| a.lo.0.cmp(&b.lo.0));
        self.dead = 0;
        self.leaves = all.len().next_power_of_two();
        self.tree = vec![NONE; 2 * self.leaves];
        for i in 0..all.len() {
            self.tree[self.leaves + i] = i as u32;
        }
        self.built = all;
        for node in (1..self.leaves).rev() {
            self.tree[node] = self.max_of(self.tree[2 * node], self.tree[2 * node + 1]);
        }
    }

    fn max_of(&self, a: u32, b: u32) -> u32 {
        match (a, b) {
            (NONE, x) | (x, NONE) => x,
            (a, b) if self.built[b as usize].hi.0 > self.built[a as usize].hi.0 => b,
            (a, _) => a,
        }
    }

    fn query<Q>(&self, v: &Q, mut f: impl FnMut(Slot))
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        for iv in &self.pending {
            if iv.contains(v) {
                f(iv.slot);
            }
        }
        if self.built.is_empty() {
            return;
        }
        // Only entries with lo <= v can contain v; they form a prefix of `built`.
        let end = self.built.partition_point(|b| b.lo.0.borrow() <= v);
        if end > 0 {
            self.visit(1, 0, self.leaves, end, v, &mut f);
        }
    }

    /// Visits tree `node` covering `[from, to)`, restricted to indexes below `end`.
    fn visit<Q>(
        &self,
        node: usize,
        from: usize,
        to: usize,
        end: usize,
        v: &Q,
        f: &mut impl FnMut(Slot),
    ) where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if from >= end {
            return;
        }
        let best = self.tree[node];
        if best == NONE || self.built[best as usize].hi.0.borrow() < v {
            return;
        }
        if to - from == 1 {
            let iv = &self.built[from];
            if iv.slot != DEAD && iv.contains(v) {
                f(iv.slot);
            }
            return;
        }
        let mid = (from + to) / 2;
        self.visit(2 * node, from, mid, end, v, f);
        self.visit(2 * node + 1, mid, to, end, v, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn query(r: &RangeIndex<i64>, v: i64) -> Vec<Slot> {
        let mut out = vec![];
        r.query(&v, |s| out.push(s));
        out.sort();
        out
    }

    type Spec = (Option<(i64, bool)>, Option<(i64, bool)>);

    fn satisfies(spec: &Spec, v: i64) -> bool {
        let lo_ok = spec.0.is_none_or(|(k, incl)| k < v || (incl && k == v));
        let hi_ok = spec.1.is_none_or(|(k, incl)| k > v || (incl && k == v));
        lo_ok && hi_ok
    }

    fn arb_spec() -> impl Strategy<Value = Spec> {
        let b = (-20i64..20, any::<bool>());
        prop_oneof![
            b.clone().prop_map(|b| (Some(b), None)),
            b.clone().prop_map(|b| (None, Some(b))),
            (b.clone(), b).prop_map(|(x, y)| (Some(x), Some(y))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Inserting and removing ranges in any order, every query equals a linear scan.
        #[test]
        fn ranges_equal_a_scan(
            specs in prop::collection::vec(arb_spec(), 1..300),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
        ) {
            let mut r = RangeIndex::default();
            let mut live: Vec<(Slot, Spec)> = vec![];
            for (i, s) in specs.iter().enumerate() {
                r.insert(s.0, s.1, i as Slot);
                live.push((i as Slot, *s));
            }
            for idx in removals {
                if live.is_empty() { break; }
                let (slot, spec) = live.swap_remove(idx.index(live.len()));
                prop_assert!(r.remove(spec.0, spec.1, slot));
            }
            for v in -22..22 {
                let mut want: Vec<Slot> =
                    live.iter().filter(|(_, s)| satisfies(s, v)).map(|(slot, _)| *slot).collect();
                want.sort();
                prop_assert_eq!(query(&r, v), want, "v = {}", v);
            }
        }
    }
}
