//! Range predicates: `a > k` style half-ranges in ordered maps (the satisfied ones are a
//! contiguous run), and two-sided intervals in a stabbing structure — grouped by width for
//! numbers, a sorted array with a segment tree for strings. All are output-sensitive: a query
//! costs about the number of satisfied ranges, not the number stored.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound::{Included, Unbounded};

use smallvec::SmallVec;

use super::postings::Slot;
use crate::keys::NumKey;

type Entries = SmallVec<[(Slot, bool); 2]>;

/// One-sided ranges of one attribute: `a > k`/`a >= k` and `a < k`/`a <= k`, by `k`.
#[derive(Debug)]
struct HalfRanges<K> {
    lower: BTreeMap<K, Entries>,
    upper: BTreeMap<K, Entries>,
}

impl<K> Default for HalfRanges<K> {
    fn default() -> Self {
        HalfRanges {
            lower: BTreeMap::new(),
            upper: BTreeMap::new(),
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

impl<K: Ord> HalfRanges<K> {
    fn insert(&mut self, lower: bool, (k, incl): (K, bool), slot: Slot) {
        let map = if lower {
            &mut self.lower
        } else {
            &mut self.upper
        };
        map.entry(k).or_default().push((slot, incl));
    }

    fn remove(&mut self, lower: bool, k: &K, slot: Slot) -> bool {
        remove_entry(
            if lower {
                &mut self.lower
            } else {
                &mut self.upper
            },
            k,
            slot,
        )
    }

    fn is_empty(&self) -> bool {
        self.lower.is_empty() && self.upper.is_empty()
    }

    fn query<Q>(&self, v: &Q, f: &mut impl FnMut(Slot))
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
    }
}

/// Where the two-sided intervals of a [`RangeIndex`] live.
pub(crate) trait IntervalStore<K>: Default {
    fn insert(&mut self, iv: Interval<K>);
    fn remove(&mut self, iv: &Interval<K>) -> bool;
    fn is_empty(&self) -> bool;
}

/// All range keys of one attribute: one-sided ranges in ordered maps, two-sided ones in `B`.
#[derive(Debug)]
pub(crate) struct RangeIndex<K, B> {
    half: HalfRanges<K>,
    /// `lo < a < hi` with either end inclusive.
    both: B,
}

impl<K, B: Default> Default for RangeIndex<K, B> {
    fn default() -> Self {
        RangeIndex {
            half: HalfRanges::default(),
            both: B::default(),
        }
    }
}

/// Ranges over strings by bytes (or any other ordered key).
pub(crate) type StrRangeIndex<K> = RangeIndex<K, IntervalSet<K>>;
/// Ranges over numbers.
pub(crate) type NumRangeIndex = RangeIndex<NumKey, NumIntervals>;

impl<K: Ord, B: IntervalStore<K>> RangeIndex<K, B> {
    pub(crate) fn insert(&mut self, lo: Option<(K, bool)>, hi: Option<(K, bool)>, slot: Slot) {
        match (lo, hi) {
            (Some(b), None) => self.half.insert(true, b, slot),
            (None, Some(b)) => self.half.insert(false, b, slot),
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
            (Some((k, _)), None) => self.half.remove(true, &k, slot),
            (None, Some((k, _))) => self.half.remove(false, &k, slot),
            (Some(lo), Some(hi)) => self.both.remove(&Interval { lo, hi, slot }),
            (None, None) => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.half.is_empty() && self.both.is_empty()
    }
}

impl<K: Ord + Clone> StrRangeIndex<K> {
    /// Calls `f` for every range that `v` satisfies.
    pub(crate) fn query<Q>(&self, v: &Q, mut f: impl FnMut(Slot))
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.half.query(v, &mut f);
        self.both.query(v, f);
    }
}

impl NumRangeIndex {
    /// Calls `f` for every range that `v` satisfies.
    pub(crate) fn query(&self, v: NumKey, mut f: impl FnMut(Slot)) {
        self.half.query(&v, &mut f);
        self.both.query(v, f);
    }
}

/// Numeric intervals grouped by width class: class `c` holds widths in `[2^c, 2^(c+1))`,
/// ordered by lower bound. An interval of width `w` contains `v` only if its lower bound is in
/// `[v - w, v]`, so a query scans, per class, the lower bounds in `[v - 2^(c+1), v]`: at most
/// about twice the intervals that contain `v` when lower bounds are spread, and one ordered
/// seek per class. Widths are computed in f64 and the scanned range is widened by a margin that
/// covers the rounding, so no interval is missed; the final check is exact.
#[derive(Debug, Default)]
pub(crate) struct NumIntervals {
    /// Class → (lower bound, slot) → (lower inclusive, upper bound) of each interval (one
    /// subscription may have several intervals with the same lower bound, under `||`).
    classes: BTreeMap<i32, WidthClass>,
    /// Intervals whose width does not fit in f64 (or is not a number): checked one by one.
    wide: Vec<Interval<NumKey>>,
}

/// The intervals of one width class: (lower bound, slot) → (lower inclusive, upper bound).
type WidthClass = BTreeMap<(NumKey, Slot), SmallVec<[(bool, (NumKey, bool)); 1]>>;

/// Class of zero-width intervals (`lo == hi`, or empty ones).
const POINT_CLASS: i32 = i32::MIN;

fn to_f64(k: NumKey) -> f64 {
    match k {
        NumKey::Int(i) => i as f64,
        NumKey::Float(f) => f,
    }
}

fn width_class(iv: &Interval<NumKey>) -> Option<i32> {
    let w = to_f64(iv.hi.0) - to_f64(iv.lo.0);
    if !w.is_finite() {
        return None;
    }
    if w <= 0.0 {
        return Some(POINT_CLASS);
    }
    Some(w.log2().floor() as i32)
}

impl IntervalStore<NumKey> for NumIntervals {
    fn insert(&mut self, iv: Interval<NumKey>) {
        match width_class(&iv) {
            Some(c) => {
                let class = self.classes.entry(c).or_default();
                class
                    .entry((iv.lo.0, iv.slot))
                    .or_default()
                    .push((iv.lo.1, iv.hi));
            }
            None => self.wide.push(iv),
        }
    }

    fn remove(&mut self, iv: &Interval<NumKey>) -> bool {
        match width_class(iv) {
            Some(c) => {
                let Some(class) = self.classes.get_mut(&c) else {
                    return false;
                };
                let key = (iv.lo.0, iv.slot);
                let Some(list) = class.get_mut(&key) else {
                    return false;
                };
                let Some(i) = list
                    .iter()
                    .position(|&(incl, hi)| incl == iv.lo.1 && hi == iv.hi)
                else {
                    return false;
                };
                list.swap_remove(i);
                if list.is_empty() {
                    class.remove(&key);
                    if class.is_empty() {
                        self.classes.remove(&c);
                    }
                }
                true
            }
            None => match self
                .wide
                .iter()
                .position(|w| w.slot == iv.slot && w.lo.0 == iv.lo.0)
            {
                Some(i) => {
                    self.wide.swap_remove(i);
                    true
                }
                None => false,
            },
        }
    }

    fn is_empty(&self) -> bool {
        self.classes.is_empty() && self.wide.is_empty()
    }
}

impl NumIntervals {
    fn query(&self, v: NumKey, mut f: impl FnMut(Slot)) {
        let vf = to_f64(v);
        for (&c, class) in &self.classes {
            let wmax = if c == POINT_CLASS {
                0.0
            } else {
                (f64::from(c) + 1.0).exp2()
            };
            // Margin for the rounding of v, of the bounds and of the width to f64.
            let margin = (vf.abs() + wmax) * 1e-9 + f64::MIN_POSITIVE;
            let from = vf - wmax - margin;
            let start = match NumKey::from_float(from) {
                Some(k) if from.is_finite() => Included((k, 0)),
                _ => Unbounded,
            };
            for (&(lo, slot), list) in class.range((start, Included((v, Slot::MAX)))) {
                for &(lo_incl, hi) in list {
                    if (Interval {
                        lo: (lo, lo_incl),
                        hi,
                        slot,
                    })
                    .contains(&v)
                    {
                        f(slot);
                    }
                }
            }
        }
        for iv in &self.wide {
            if iv.contains(&v) {
                f(iv.slot);
            }
        }
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

impl<K: Ord + Clone> IntervalStore<K> for IntervalSet<K> {
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
}

impl<K: Ord + Clone> IntervalSet<K> {
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

    fn query(r: &StrRangeIndex<i64>, v: i64) -> Vec<Slot> {
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
            let mut r = StrRangeIndex::default();
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

    fn arb_num() -> impl Strategy<Value = NumKey> {
        prop_oneof![
            (-20i64..20).prop_map(NumKey::Int),
            (-40i32..40).prop_map(|h| NumKey::from_float(f64::from(h) / 2.0).unwrap()),
            prop_oneof![
                Just(1e-300),
                Just(-1e300),
                Just(1e300),
                Just(0.1),
                Just(1e18 + 0.5)
            ]
            .prop_map(|f| NumKey::from_float(f).unwrap()),
            prop_oneof![
                Just(i64::MAX),
                Just(i64::MIN),
                Just((1 << 53) + 1),
                Just(1 << 53),
                Just(1_000_000_000_000_000_000),
                Just(1_000_000_000_000_001_000)
            ]
            .prop_map(NumKey::Int),
        ]
    }

    fn num_satisfies(lo: Option<(NumKey, bool)>, hi: Option<(NumKey, bool)>, v: NumKey) -> bool {
        lo.is_none_or(|(k, incl)| k < v || (incl && k == v))
            && hi.is_none_or(|(k, incl)| k > v || (incl && k == v))
    }

    type NumSpec = (Option<(NumKey, bool)>, Option<(NumKey, bool)>);

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Numeric ranges, including huge, tiny and rounding-prone bounds: equal to a scan.
        #[test]
        fn numeric_ranges_equal_a_scan(
            specs in prop::collection::vec(
                prop_oneof![
                    (arb_num(), any::<bool>()).prop_map(|b| (Some(b), None)),
                    (arb_num(), any::<bool>()).prop_map(|b| (None, Some(b))),
                    ((arb_num(), any::<bool>()), (arb_num(), any::<bool>())).prop_map(|(a, b)| (Some(a), Some(b))),
                ],
                1..200,
            ),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..100),
            values in prop::collection::vec(arb_num(), 1..40),
        ) {
            let mut r = NumRangeIndex::default();
            let mut live: Vec<(Slot, NumSpec)> = vec![];
            for (i, s) in specs.iter().enumerate() {
                r.insert(s.0, s.1, i as Slot);
                live.push((i as Slot, *s));
            }
            for idx in removals {
                if live.is_empty() { break; }
                let (slot, spec) = live.swap_remove(idx.index(live.len()));
                prop_assert!(r.remove(spec.0, spec.1, slot));
            }
            for v in values {
                let mut got = vec![];
                r.query(v, |s| got.push(s));
                got.sort();
                let mut want: Vec<Slot> =
                    live.iter().filter(|(_, s)| num_satisfies(s.0, s.1, v)).map(|(slot, _)| *slot).collect();
                want.sort();
                prop_assert_eq!(got, want, "v = {:?}", v);
            }
        }
    }
}
