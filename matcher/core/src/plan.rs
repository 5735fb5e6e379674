//! Access planning: for each filter, a set of index keys such that the filter can only be true
//! when the event hits at least one of them. Only those subscriptions are evaluated.
//!
//! - a predicate `a == v`, `a in [..]`, a range, `prefix`, `suffix`, `~` or `exists` gives its
//!   own keys; `!=`, `not in` and anything under `!` give none;
//! - `x && y` takes the child whose keys the fewest events are expected to hit, or merges a
//!   lower and an upper bound on the same attribute into one interval;
//! - `x || y` needs keys from every child and takes their union;
//! - a filter without keys is "residual" and evaluated for every event of its topic.
//!
//! Which child of an `and` to use is a guess of selectivity from [`BucketStats`], gathered
//! from the literals of all the bucket's filters (subscribers ask for values that occur). The
//! guess is made by [`choose`] and recorded in the program, and [`plan`] only reads the
//! record, so removing a subscription removes exactly the keys that adding it inserted, however
//! the statistics have moved since.

use std::hash::BuildHasher;

use hashbrown::{HashMap, HashSet};
use sift_protocol::filter::CmpOp;
use smallvec::SmallVec;

use crate::attrs::AttrId;
use crate::keys::{KeyRef, NumKey};
use crate::prog::{Lit, Node, PredTest, Prog, NO_CHOICE};
use crate::regex_pool::{Anchor, RegexId, RegexPool};

/// A bound of a range: the key and whether it is inclusive.
pub(crate) type Bound<K> = Option<(K, bool)>;

/// One index key of a plan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Access<'p> {
    /// Equality (also each item of an `in` list): the hash of the normalised value.
    Eq { attr: AttrId, key: u64 },
    /// A numeric range (at least one bound).
    Num {
        attr: AttrId,
        lo: Bound<NumKey>,
        hi: Bound<NumKey>,
    },
    /// A string range, by bytes (at least one bound).
    Str {
        attr: AttrId,
        lo: Bound<&'p [u8]>,
        hi: Bound<&'p [u8]>,
    },
    /// `prefix(attr, bytes)`.
    Prefix { attr: AttrId, bytes: &'p [u8] },
    /// `suffix(attr, bytes)`.
    Suffix { attr: AttrId, bytes: &'p [u8] },
    /// `attr ~ regex`.
    Regex { attr: AttrId, id: RegexId },
    /// `exists(attr)`.
    Exists { attr: AttrId },
}

impl Access<'_> {
    pub(crate) fn attr(&self) -> AttrId {
        match self {
            Access::Eq { attr, .. }
            | Access::Num { attr, .. }
            | Access::Str { attr, .. }
            | Access::Prefix { attr, .. }
            | Access::Suffix { attr, .. }
            | Access::Regex { attr, .. }
            | Access::Exists { attr } => *attr,
        }
    }
}

/// Where a subscription goes in its bucket's index.
#[derive(Debug, PartialEq)]
pub(crate) enum Plan<'p> {
    /// Empty filter: every event of the topic matches without evaluation.
    All,
    /// No usable keys: evaluate for every event of the topic.
    Residual,
    /// Evaluate only when the event hits one of these keys.
    Keys(SmallVec<[Access<'p>; 2]>),
}

type Keys<'p> = SmallVec<[Access<'p>; 2]>;

// ---------- statistics and selectivity guesses ----------

/// What the literals of one attribute's predicates say about its values.
#[derive(Clone, Debug, Default)]
pub(crate) struct AttrStats {
    /// Distinct literals in `==` and `in` predicates.
    distinct: u32,
    /// Smallest and largest numeric literal in any predicate.
    min: f64,
    max: f64,
}

/// Per-attribute statistics of one bucket's filters.
#[derive(Clone, Debug, Default)]
pub(crate) struct BucketStats {
    attrs: HashMap<AttrId, AttrStats>,
}

fn lit_f64(lit: Lit<'_>) -> Option<f64> {
    match lit {
        Lit::Int(i) => Some(i as f64),
        Lit::Float(f) => Some(f),
        _ => None,
    }
}

impl BucketStats {
    /// Gathers statistics from the literals of `progs`.
    pub(crate) fn gather<'a, S: BuildHasher>(
        progs: impl Iterator<Item = &'a Prog>,
        state: &S,
    ) -> BucketStats {
        let mut eq: HashMap<AttrId, HashSet<u64>> = HashMap::new();
        let mut ranges: HashMap<AttrId, (f64, f64)> = HashMap::new();
        for prog in progs {
            prog.for_each_predicate(|attr, test| {
                let mut num = |lit: Lit<'_>| {
                    if let Some(x) = lit_f64(lit) {
                        let r = ranges.entry(attr).or_insert((x, x));
                        *r = (r.0.min(x), r.1.max(x));
                    }
                };
                match test {
                    PredTest::Cmp(CmpOp::Eq, lit) => {
                        eq.entry(attr)
                            .or_default()
                            .insert(lit_key(*lit).hash_with(state));
                        num(*lit);
                    }
                    PredTest::In { items, .. } => {
                        for lit in items.clone() {
                            eq.entry(attr)
                                .or_default()
                                .insert(lit_key(lit).hash_with(state));
                            num(lit);
                        }
                    }
                    PredTest::Cmp(_, lit) => num(*lit),
                    _ => {}
                }
            });
        }
        let mut attrs: HashMap<AttrId, AttrStats> = HashMap::new();
        for (a, set) in eq {
            attrs.entry(a).or_default().distinct = set.len() as u32;
        }
        for (a, (min, max)) in ranges {
            let s = attrs.entry(a).or_default();
            (s.min, s.max) = (min, max);
        }
        BucketStats { attrs }
    }

    fn get(&self, attr: AttrId) -> Option<&AttrStats> {
        self.attrs.get(&attr)
    }

    /// Guessed fraction of events with `attr == v` for one given `v`.
    fn eq(&self, attr: AttrId) -> f64 {
        match self.get(attr) {
            Some(s) if s.distinct > 0 => 1.0 / f64::from(s.distinct),
            _ => GUESS_EQ_UNKNOWN,
        }
    }

    /// Guessed fraction of events inside a numeric range, from the literals' span.
    fn num_range(&self, attr: AttrId, lo: Option<f64>, hi: Option<f64>) -> f64 {
        let default = if lo.is_some() && hi.is_some() {
            GUESS_INTERVAL
        } else {
            GUESS_HALF_RANGE
        };
        let Some(s) = self.get(attr).filter(|s| s.max > s.min) else {
            return default;
        };
        let lo = lo.unwrap_or(s.min).max(s.min);
        let hi = hi.unwrap_or(s.max).min(s.max);
        ((hi - lo) / (s.max - s.min)).clamp(GUESS_FLOOR, 1.0)
    }
}

/// Guesses where statistics say nothing (fractions of events hitting the key).
const GUESS_EQ_UNKNOWN: f64 = 0.1;
const GUESS_HALF_RANGE: f64 = 0.3;
const GUESS_INTERVAL: f64 = 0.1;
const GUESS_AFFIX: f64 = 0.05;
const GUESS_REGEX: f64 = 0.05;
const GUESS_EXISTS: f64 = 0.9;
/// No key is assumed more selective than this.
const GUESS_FLOOR: f64 = 1e-6;

fn lit_key(lit: Lit<'_>) -> KeyRef<'_> {
    match lit {
        Lit::Str(b) => KeyRef::Str(b),
        Lit::Int(i) => KeyRef::Num(NumKey::from_int(i)),
        // Literal floats are finite, never NaN.
        Lit::Float(f) => KeyRef::Num(NumKey::from_float(f).unwrap_or(NumKey::Int(0))),
        Lit::Bool(b) => KeyRef::Bool(b),
    }
}

/// A half range predicate as the planner sees it, for interval merging.
#[derive(Clone, Copy)]
struct Half {
    numeric: bool,
    lower: bool,
    value: Option<f64>,
}

fn half(test: &PredTest<'_>) -> Option<Half> {
    let PredTest::Cmp(op, lit) = test else {
        return None;
    };
    if !op.is_ordering() {
        return None;
    }
    let lower = matches!(op, CmpOp::Gt | CmpOp::Ge);
    match lit {
        Lit::Str(_) => Some(Half {
            numeric: false,
            lower,
            value: None,
        }),
        Lit::Bool(_) => None,
        _ => Some(Half {
            numeric: true,
            lower,
            value: lit_f64(*lit),
        }),
    }
}

/// Guessed fraction of events that hit a predicate's keys; `None` when it has none.
fn guess_predicate(
    attr: AttrId,
    test: &PredTest<'_>,
    stats: &BucketStats,
    pool: &RegexPool,
) -> Option<f64> {
    Some(match test {
        PredTest::Cmp(CmpOp::Eq, _) => stats.eq(attr),
        PredTest::Cmp(CmpOp::Ne, _) | PredTest::In { negated: true, .. } => return None,
        PredTest::Cmp(..) => {
            let h = half(test)?;
            if !h.numeric {
                GUESS_HALF_RANGE
            } else if h.lower {
                stats.num_range(attr, h.value, None)
            } else {
                stats.num_range(attr, None, h.value)
            }
        }
        PredTest::In { items, .. } => (items.clone().count() as f64 * stats.eq(attr)).min(1.0),
        PredTest::Regex(id) => match pool.anchor(*id) {
            Anchor::Prefix(_) | Anchor::Suffix(_) => GUESS_AFFIX,
            Anchor::None => GUESS_REGEX,
        },
        PredTest::Exists => GUESS_EXISTS,
        PredTest::Prefix(b) | PredTest::Suffix(b) => {
            if b.is_empty() {
                1.0
            } else {
                GUESS_AFFIX
            }
        }
    })
}

/// Chooses access keys for every `and` of `prog` under `stats` and records the choices.
pub(crate) fn choose(prog: &mut Prog, stats: &BucketStats, pool: &RegexPool) {
    if !prog.is_empty() {
        let mut choices = Vec::new();
        guess(prog, 0, stats, pool, &mut choices);
        for (pos, choice) in choices {
            prog.set_choice(pos, choice);
        }
    }
}

/// The guessed hit fraction of the node at `pos`; pushes the choice of each `and` below it.
fn guess(
    prog: &Prog,
    pos: usize,
    stats: &BucketStats,
    pool: &RegexPool,
    choices: &mut Vec<(usize, (u8, u8))>,
) -> Option<f64> {
    match prog.node(pos) {
        Node::Not(_) => None,
        Node::Pred { attr, test } => guess_predicate(attr, &test, stats, pool),
        Node::Or(children) => {
            let mut total = Some(0.0);
            for c in children {
                let g = guess(prog, c, stats, pool, choices);
                total = total.zip(g).map(|(t, g)| (t + g).min(1.0));
            }
            total
        }
        Node::And { children, .. } => {
            let mut best: Option<(f64, (u8, u8))> = None;
            let mut halves: SmallVec<[(u8, AttrId, Half); 4]> = SmallVec::new();
            for (i, c) in children.enumerate() {
                let i = i as u8;
                let Some(g) = guess(prog, c, stats, pool, choices) else {
                    continue;
                };
                if best.is_none_or(|(b, _)| g < b) {
                    best = Some((g, (i, NO_CHOICE)));
                }
                if let Node::Pred { attr, test } = prog.node(c) {
                    if let Some(h) = half(&test) {
                        halves.push((i, attr, h));
                    }
                }
            }
            if let Some((g, pair)) = best_interval(&halves, stats) {
                if best.is_none_or(|(b, _)| g < b) {
                    best = Some((g, pair));
                }
            }
            choices.push((pos, best.map_or((NO_CHOICE, NO_CHOICE), |(_, c)| c)));
            best.map(|(g, _)| g)
        }
    }
}

/// The best pair of a lower and an upper bound on the same attribute and kind.
fn best_interval(halves: &[(u8, AttrId, Half)], stats: &BucketStats) -> Option<(f64, (u8, u8))> {
    let mut best: Option<(f64, (u8, u8))> = None;
    for (i, (ci, attr, a)) in halves.iter().enumerate() {
        for (cj, attr2, b) in &halves[i + 1..] {
            if attr != attr2 || a.numeric != b.numeric || a.lower == b.lower {
                continue;
            }
            let (lo, hi) = if a.lower { (a, b) } else { (b, a) };
            let g = if a.numeric {
                stats.num_range(*attr, lo.value, hi.value)
            } else {
                GUESS_INTERVAL
            };
            if best.is_none_or(|(bg, _)| g < bg) {
                best = Some((g, (*ci, *cj)));
            }
        }
    }
    best
}

// ---------- reading the plan back ----------

/// The plan of `prog`, following the choices recorded by [`choose`] (a program never given to
/// `choose` has no keys under any `and`).
pub(crate) fn plan<'p, S: BuildHasher>(prog: &'p Prog, state: &S, pool: &'p RegexPool) -> Plan<'p> {
    if prog.is_empty() {
        return Plan::All;
    }
    match keys(prog, 0, state, pool) {
        Some(keys) => Plan::Keys(keys),
        None => Plan::Residual,
    }
}

fn keys<'p, S: BuildHasher>(
    prog: &'p Prog,
    pos: usize,
    state: &S,
    pool: &'p RegexPool,
) -> Option<Keys<'p>> {
    match prog.node(pos) {
        Node::Not(_) => None,
        Node::Pred { attr, test } => predicate_keys(attr, test, state, pool),
        Node::Or(children) => {
            let mut all = Keys::new();
            for c in children {
                for k in keys(prog, c, state, pool)? {
                    if !all.contains(&k) {
                        all.push(k);
                    }
                }
            }
            Some(all)
        }
        Node::And {
            mut children,
            choice: (a, b),
        } => {
            if a == NO_CHOICE {
                return None;
            }
            let first = children.nth(a as usize)?;
            let first_keys = keys(prog, first, state, pool)?;
            if b == NO_CHOICE {
                return Some(first_keys);
            }
            let second = children.nth((b - a - 1) as usize)?;
            let second_keys = keys(prog, second, state, pool)?;
            merge_interval(&first_keys[0], &second_keys[0]).map(|iv| SmallVec::from_iter([iv]))
        }
    }
}

fn merge_interval<'p>(a: &Access<'p>, b: &Access<'p>) -> Option<Access<'p>> {
    match (a, b) {
        (
            Access::Num {
                attr,
                lo: l1,
                hi: h1,
            },
            Access::Num { lo: l2, hi: h2, .. },
        ) => Some(Access::Num {
            attr: *attr,
            lo: Some(l1.or(*l2)?),
            hi: Some(h1.or(*h2)?),
        }),
        (
            Access::Str {
                attr,
                lo: l1,
                hi: h1,
            },
            Access::Str { lo: l2, hi: h2, .. },
        ) => Some(Access::Str {
            attr: *attr,
            lo: Some(l1.or(*l2)?),
            hi: Some(h1.or(*h2)?),
        }),
        _ => None,
    }
}

fn predicate_keys<'p, S: BuildHasher>(
    attr: AttrId,
    test: PredTest<'p>,
    state: &S,
    pool: &'p RegexPool,
) -> Option<Keys<'p>> {
    let one = |a| Some(SmallVec::from_iter([a]));
    match test {
        PredTest::Cmp(CmpOp::Eq, lit) => one(Access::Eq {
            attr,
            key: lit_key(lit).hash_with(state),
        }),
        PredTest::Cmp(CmpOp::Ne, _) | PredTest::In { negated: true, .. } => None,
        PredTest::Cmp(op, lit) => {
            let bound = Some(incl_of(op));
            let lower = matches!(op, CmpOp::Gt | CmpOp::Ge);
            match lit_key(lit) {
                KeyRef::Num(n) => {
                    let b = bound.map(|incl| (n, incl));
                    one(if lower {
                        Access::Num {
                            attr,
                            lo: b,
                            hi: None,
                        }
                    } else {
                        Access::Num {
                            attr,
                            lo: None,
                            hi: b,
                        }
                    })
                }
                KeyRef::Str(s) => {
                    let b = bound.map(|incl| (s, incl));
                    one(if lower {
                        Access::Str {
                            attr,
                            lo: b,
                            hi: None,
                        }
                    } else {
                        Access::Str {
                            attr,
                            lo: None,
                            hi: b,
                        }
                    })
                }
                // The parser refuses ordering against booleans.
                KeyRef::Bool(_) => None,
            }
        }
        PredTest::In {
            negated: false,
            items,
        } => {
            let mut keys = Keys::new();
            for lit in items {
                let a = Access::Eq {
                    attr,
                    key: lit_key(lit).hash_with(state),
                };
                if !keys.contains(&a) {
                    keys.push(a);
                }
            }
            Some(keys)
        }
        PredTest::Regex(id) => match pool.anchor(id) {
            Anchor::Prefix(bytes) => one(Access::Prefix { attr, bytes }),
            Anchor::Suffix(bytes) => one(Access::Suffix { attr, bytes }),
            Anchor::None => one(Access::Regex { attr, id }),
        },
        PredTest::Exists => one(Access::Exists { attr }),
        PredTest::Prefix(bytes) => one(Access::Prefix { attr, bytes }),
        PredTest::Suffix(bytes) => one(Access::Suffix { attr, bytes }),
    }
}

fn incl_of(op: CmpOp) -> bool {
    matches!(op, CmpOp::Le | CmpOp::Ge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::AttrNames;
    use crate::regex_pool::RegexPool;
    use sift_protocol::Filter;

    struct Ctx {
        pool: RegexPool,
        names: AttrNames,
    }

    impl Ctx {
        fn compile(&mut self, text: &str) -> Prog {
            Prog::compile(
                Filter::parse(text).unwrap().expr(),
                &mut self.pool,
                &mut self.names,
            )
        }

        fn id(&self, name: &str) -> AttrId {
            self.names.get(name).unwrap()
        }
    }

    /// Plans `text` with statistics from `stats_from`; calls `f` with the plan and a name
    /// lookup.
    fn plan_of(text: &str, stats_from: &[&str], f: impl FnOnce(Plan<'_>, &dyn Fn(&str) -> AttrId)) {
        let mut ctx = Ctx {
            pool: RegexPool::default(),
            names: AttrNames::default(),
        };
        let state = foldhash::fast::FixedState::with_seed(7);
        let others: Vec<Prog> = stats_from.iter().map(|t| ctx.compile(t)).collect();
        let stats = BucketStats::gather(others.iter(), &state);
        let mut prog = ctx.compile(text);
        choose(&mut prog, &stats, &ctx.pool);
        f(plan(&prog, &state, &ctx.pool), &|n| ctx.id(n));
    }

    fn only(p: Plan<'_>) -> Access<'_> {
        let Plan::Keys(k) = p else {
            panic!("no keys: {p:?}")
        };
        assert_eq!(k.len(), 1, "{k:?}");
        k[0].clone()
    }

    #[test]
    fn plans_without_statistics() {
        plan_of("", &[], |p, _| assert_eq!(p, Plan::All));
        plan_of("a != 1", &[], |p, _| assert_eq!(p, Plan::Residual));
        plan_of("!(a == 1)", &[], |p, _| assert_eq!(p, Plan::Residual));
        plan_of("a == 1 || b != 2", &[], |p, _| {
            assert_eq!(p, Plan::Residual)
        });
        plan_of("a > 1 && b == 2", &[], |p, id| {
            assert!(matches!(only(p), Access::Eq { attr, .. } if attr == id("b")))
        });
        plan_of("a > 1 && a <= 5", &[], |p, id| {
            assert_eq!(
                only(p),
                Access::Num {
                    attr: id("a"),
                    lo: Some((NumKey::Int(1), false)),
                    hi: Some((NumKey::Int(5), true))
                }
            )
        });
        plan_of("a in [1, 1.0, 2] || b ~ \"x\"", &[], |p, _| {
            let Plan::Keys(k) = p else { panic!() };
            assert_eq!(k.len(), 3, "{k:?}");
        });
        plan_of("a != 1 && prefix(s, \"ab\")", &[], |p, id| {
            assert!(matches!(only(p), Access::Prefix { attr, .. } if attr == id("s")))
        });
    }

    #[test]
    fn statistics_steer_the_choice() {
        // `region` has 2 distinct values among the bucket's filters, `customer` many: the
        // customer key is the more selective one even though both are equalities.
        let others = [
            "region == \"a\"",
            "region == \"b\"",
            "customer in [\"1\", \"2\", \"3\", \"4\", \"5\"]",
        ];
        plan_of("region == \"a\" && customer == \"9\"", &others, |p, id| {
            assert!(matches!(only(p), Access::Eq { attr, .. } if attr == id("customer")))
        });
        // A narrow range beats a common equality value once literals span the domain.
        let others = [
            "qty == 1",
            "qty == 1000",
            "region == \"a\"",
            "region == \"b\"",
        ];
        plan_of("region == \"a\" && qty > 998", &others, |p, id| {
            assert!(matches!(only(p), Access::Num { attr, .. } if attr == id("qty")))
        });
    }
}
