//! Access planning: for each filter, a set of index keys such that the filter can only be true
//! when the event hits at least one of them. Only those subscriptions are evaluated.
//!
//! - a predicate `a == v`, `a in [..]`, a range, `prefix`, `suffix`, `~` or `exists` gives its
//!   own keys; `!=`, `not in` and anything under `!` give none;
//! - `x && y` takes the cheapest child's keys, and merges a lower and an upper bound on the
//!   same attribute into one interval;
//! - `x || y` needs keys from every child and takes their union;
//! - a filter without keys is "residual" and evaluated for every event of its topic.
//!
//! The plan is a pure function of the program and the hash seed, so removing a subscription
//! recomputes exactly the keys that adding it inserted.

use std::hash::BuildHasher;

use sift_protocol::filter::CmpOp;
use smallvec::SmallVec;

use crate::keys::{KeyRef, NumKey};
use crate::prog::{Lit, Node, PredTest, Prog};
use crate::regex_pool::RegexId;

/// A bound of a range: the key and whether it is inclusive.
pub(crate) type Bound<K> = Option<(K, bool)>;

/// One index key of a plan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Access<'p> {
    /// Equality (also each item of an `in` list): the hash of the normalised value.
    Eq { attr: &'p str, key: u64 },
    /// A numeric range (at least one bound).
    Num {
        attr: &'p str,
        lo: Bound<NumKey>,
        hi: Bound<NumKey>,
    },
    /// A string range, by bytes (at least one bound).
    Str {
        attr: &'p str,
        lo: Bound<&'p [u8]>,
        hi: Bound<&'p [u8]>,
    },
    /// `prefix(attr, bytes)`.
    Prefix { attr: &'p str, bytes: &'p [u8] },
    /// `suffix(attr, bytes)`.
    Suffix { attr: &'p str, bytes: &'p [u8] },
    /// `attr ~ regex`.
    Regex { attr: &'p str, id: RegexId },
    /// `exists(attr)`.
    Exists { attr: &'p str },
}

impl Access<'_> {
    pub(crate) fn attr(&self) -> &str {
        match self {
            Access::Eq { attr, .. }
            | Access::Num { attr, .. }
            | Access::Str { attr, .. }
            | Access::Prefix { attr, .. }
            | Access::Suffix { attr, .. }
            | Access::Regex { attr, .. }
            | Access::Exists { attr } => attr,
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

/// Static cost estimates: lower is assumed more selective. (No statistics: the same
/// program must always give the same plan.)
const COST_EQ: u32 = 1;
const COST_AFFIX: u32 = 2;
const COST_INTERVAL: u32 = 3;
const COST_HALF_RANGE: u32 = 5;
const COST_REGEX: u32 = 6;
const COST_EMPTY_AFFIX: u32 = 8;
const COST_EXISTS: u32 = 10;

type Keys<'p> = SmallVec<[Access<'p>; 2]>;

/// Computes the plan of `prog` under the hash seed `state`.
pub(crate) fn plan<'p, S: BuildHasher>(prog: &'p Prog, state: &S) -> Plan<'p> {
    if prog.is_empty() {
        return Plan::All;
    }
    match analyze(prog, 0, state) {
        Some((_, keys)) => Plan::Keys(keys),
        None => Plan::Residual,
    }
}

fn analyze<'p, S: BuildHasher>(prog: &'p Prog, pos: usize, state: &S) -> Option<(u32, Keys<'p>)> {
    match prog.node(pos) {
        Node::Not(_) => None,
        Node::Pred { attr, test } => predicate(attr, test, state),
        Node::Or(children) => {
            let mut cost = 0u32;
            let mut keys = Keys::new();
            for c in children {
                let (c_cost, c_keys) = analyze(prog, c, state)?;
                cost = cost.saturating_add(c_cost);
                for k in c_keys {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            Some((cost, keys))
        }
        Node::And(children) => {
            let mut best: Option<(u32, Keys<'p>)> = None;
            let mut halves: SmallVec<[Access<'p>; 4]> = SmallVec::new();
            for c in children {
                let Some((cost, keys)) = analyze(prog, c, state) else {
                    continue;
                };
                if keys.len() == 1 && matches!(keys[0], Access::Num { .. } | Access::Str { .. }) {
                    halves.push(keys[0].clone());
                }
                if best.as_ref().is_none_or(|(b, _)| cost < *b) {
                    best = Some((cost, keys));
                }
            }
            if best.as_ref().is_some_and(|(b, _)| *b > COST_INTERVAL) {
                if let Some(iv) = interval(&halves) {
                    best = Some((COST_INTERVAL, SmallVec::from_iter([iv])));
                }
            }
            best
        }
    }
}

/// The first pair of a lower and an upper bound on the same attribute and kind, merged.
fn interval<'p>(halves: &[Access<'p>]) -> Option<Access<'p>> {
    for (i, a) in halves.iter().enumerate() {
        for b in &halves[i + 1..] {
            match (a, b) {
                (
                    Access::Num {
                        attr,
                        lo: l1,
                        hi: h1,
                    },
                    Access::Num {
                        attr: attr2,
                        lo: l2,
                        hi: h2,
                    },
                ) if attr == attr2 => {
                    if let (Some(lo), Some(hi)) = (l1.or(*l2), h1.or(*h2)) {
                        return Some(Access::Num {
                            attr,
                            lo: Some(lo),
                            hi: Some(hi),
                        });
                    }
                }
                (
                    Access::Str {
                        attr,
                        lo: l1,
                        hi: h1,
                    },
                    Access::Str {
                        attr: attr2,
                        lo: l2,
                        hi: h2,
                    },
                ) if attr == attr2 => {
                    if let (Some(lo), Some(hi)) = (l1.or(*l2), h1.or(*h2)) {
                        return Some(Access::Str {
                            attr,
                            lo: Some(lo),
                            hi: Some(hi),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn lit_key(lit: Lit<'_>) -> KeyRef<'_> {
    match lit {
        Lit::Str(b) => KeyRef::Str(b),
        Lit::Int(i) => KeyRef::Num(NumKey::from_int(i)),
        // Literal floats are finite, never NaN.
        Lit::Float(f) => KeyRef::Num(NumKey::from_float(f).unwrap_or(NumKey::Int(0))),
        Lit::Bool(b) => KeyRef::Bool(b),
    }
}

fn predicate<'p, S: BuildHasher>(
    attr: &'p str,
    test: PredTest<'p>,
    state: &S,
) -> Option<(u32, Keys<'p>)> {
    let one = |cost, a| Some((cost, SmallVec::from_iter([a])));
    match test {
        PredTest::Cmp(CmpOp::Eq, lit) => one(
            COST_EQ,
            Access::Eq {
                attr,
                key: lit_key(lit).hash_with(state),
            },
        ),
        PredTest::Cmp(CmpOp::Ne, _) => None,
        PredTest::Cmp(op, lit) => {
            let incl = matches!(op, CmpOp::Le | CmpOp::Ge);
            let lower = matches!(op, CmpOp::Gt | CmpOp::Ge);
            let access = match lit_key(lit) {
                KeyRef::Num(n) => {
                    let b = Some((n, incl));
                    if lower {
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
                    }
                }
                KeyRef::Str(s) => {
                    let b = Some((s, incl));
                    if lower {
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
                    }
                }
                // The parser refuses ordering against booleans.
                KeyRef::Bool(_) => return None,
            };
            one(COST_HALF_RANGE, access)
        }
        PredTest::In { negated: true, .. } => None,
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
            Some((keys.len() as u32 * COST_EQ, keys))
        }
        PredTest::Regex(id) => one(COST_REGEX, Access::Regex { attr, id }),
        PredTest::Exists => one(COST_EXISTS, Access::Exists { attr }),
        PredTest::Prefix(bytes) => {
            let cost = if bytes.is_empty() {
                COST_EMPTY_AFFIX
            } else {
                COST_AFFIX
            };
            one(cost, Access::Prefix { attr, bytes })
        }
        PredTest::Suffix(bytes) => {
            let cost = if bytes.is_empty() {
                COST_EMPTY_AFFIX
            } else {
                COST_AFFIX
            };
            one(cost, Access::Suffix { attr, bytes })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regex_pool::RegexPool;
    use sift_protocol::Filter;

    fn plan_of(text: &str, f: impl FnOnce(Plan<'_>)) {
        let mut pool = RegexPool::default();
        let filter = Filter::parse(text).unwrap();
        let prog = Prog::compile(filter.expr(), &mut pool);
        let state = foldhash::fast::FixedState::with_seed(7);
        f(plan(&prog, &state));
    }

    #[test]
    fn plans() {
        plan_of("", |p| assert_eq!(p, Plan::All));
        plan_of("a != 1", |p| assert_eq!(p, Plan::Residual));
        plan_of("!(a == 1)", |p| assert_eq!(p, Plan::Residual));
        plan_of("a == 1 || b != 2", |p| assert_eq!(p, Plan::Residual));
        plan_of("a > 1 && b == 2", |p| {
            let Plan::Keys(k) = p else { panic!() };
            assert!(matches!(k[..], [Access::Eq { attr: "b", .. }]));
        });
        plan_of("a > 1 && a <= 5", |p| {
            let Plan::Keys(k) = p else { panic!() };
            assert_eq!(
                k[..],
                [Access::Num {
                    attr: "a",
                    lo: Some((NumKey::Int(1), false)),
                    hi: Some((NumKey::Int(5), true))
                }]
            );
        });
        plan_of("a in [1, 1.0, 2] || b ~ \"x\"", |p| {
            let Plan::Keys(k) = p else { panic!() };
            assert_eq!(k.len(), 3, "{k:?}");
        });
        plan_of("a != 1 && prefix(s, \"ab\")", |p| {
            let Plan::Keys(k) = p else { panic!() };
            assert!(matches!(k[..], [Access::Prefix { attr: "s", .. }]));
        });
    }
}
