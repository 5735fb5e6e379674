//! Property tests: for random subscription sets, events and add / remove / renew / replace /
//! expire sequences, the engine's answers equal the reference evaluator's (a scan over every
//! live subscription with `Pattern::matches` and `Filter::matches`).
//!
//! Small vocabularies make matches frequent; up to 80 subscriptions over a few topics push
//! buckets past the indexing threshold, so both the scan and the index paths are compared.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sift_matcher_core::{Engine, EngineConfig, Match, NewSubscription, RenewError, Timestamp};
use sift_protocol::frame::ExpirySpec;
use sift_protocol::{Attributes, DeliveryMode, Filter, Pattern, SubscriptionId, Topic, Value};

const ATTRS: [&str; 4] = ["a", "b", "c", "d"];
const STRS: [&str; 6] = ["", "x", "xy", "yx", "y", "xyz"];
const FLOATS: [f64; 4] = [0.5, 2.0, 2.5, -1.5];
const REGEXES: [&str; 6] = ["x", "^y", "y$", "x|y", "^$", "^x.z$"];
const TOPICS: [&str; 6] = ["t", "u", "t.u", "t.t", "u.t.u", "t.u.t"];
const PATTERNS: [&str; 8] = ["t", "t.u", "*", "t.*", "*.u", ">", "t.>", "*.t.>"];

fn lit() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&STRS[..]).prop_map(|s| format!("{s:?}")),
        (-1i64..4).prop_map(|i| i.to_string()),
        prop::sample::select(&FLOATS[..]).prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
    ]
}

fn num_or_str_lit() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&STRS[..]).prop_map(|s| format!("{s:?}")),
        (-1i64..4).prop_map(|i| i.to_string()),
        prop::sample::select(&FLOATS[..]).prop_map(|f| format!("{f:?}")),
    ]
}

fn predicate() -> impl Strategy<Value = String> {
    let attr = prop::sample::select(&ATTRS[..3]);
    prop_oneof![
        4 => (attr.clone(), prop_oneof![Just("=="), Just("!=")], lit())
            .prop_map(|(a, op, l)| format!("{a} {op} {l}")),
        3 => (attr.clone(), prop_oneof![Just("<"), Just("<="), Just(">"), Just(">=")], num_or_str_lit())
            .prop_map(|(a, op, l)| format!("{a} {op} {l}")),
        2 => (attr.clone(), any::<bool>(), prop::collection::vec(lit(), 1..4))
            .prop_map(|(a, neg, items)| format!("{a} {}in [{}]", if neg { "not " } else { "" }, items.join(", "))),
        1 => (attr.clone(), prop::sample::select(&REGEXES[..]))
            .prop_map(|(a, r)| format!("{a} ~ {r:?}")),
        2 => (attr.clone(), prop_oneof![Just(">"), Just(">=")], num_or_str_lit(),
               prop_oneof![Just("<"), Just("<=")], num_or_str_lit())
            .prop_map(|(a, lo, x, hi, y)| format!("({a} {lo} {x} && {a} {hi} {y})")),
        1 => attr.clone().prop_map(|a| format!("exists({a})")),
        1 => (attr.clone(), prop::sample::select(&STRS[..4]))
            .prop_map(|(a, s)| format!("prefix({a}, {s:?})")),
        1 => (attr, prop::sample::select(&STRS[..4]))
            .prop_map(|(a, s)| format!("suffix({a}, {s:?})")),
    ]
}

fn filter_text() -> impl Strategy<Value = String> {
    let leaf = predicate();
    let tree = leaf.prop_recursive(3, 8, 3, |inner| {
        prop_oneof![
            3 => prop::collection::vec(inner.clone(), 2..4).prop_map(|v| format!("({})", v.join(" && "))),
            2 => prop::collection::vec(inner.clone(), 2..3).prop_map(|v| format!("({})", v.join(" || "))),
            1 => inner.prop_map(|e| format!("!({e})")),
        ]
    });
    prop_oneof![1 => Just(String::new()), 8 => tree]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(&STRS[..]).prop_map(|s| Value::Str(s.into())),
        3 => (-1i64..4).prop_map(Value::Int),
        2 => prop::sample::select(&FLOATS[..]).prop_map(Value::Float),
        1 => Just(Value::Float(f64::NAN)),
        1 => any::<bool>().prop_map(Value::Bool),
    ]
}

fn attrs() -> impl Strategy<Value = Attributes> {
    prop::collection::btree_map(
        prop::sample::select(&ATTRS[..]).prop_map(String::from),
        value(),
        0..4,
    )
}

#[derive(Clone, Debug)]
enum Op {
    Subscribe {
        id: u64,
        pattern: &'static str,
        filter: String,
        lease: u64,
        hard: bool,
        group: u8,
        alo: bool,
    },
    Unsubscribe(u64),
    Renew(u64),
    SetFilter(u64, String),
    Advance(u64),
    Match(&'static str, Attributes),
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u64..90;
    let pattern = prop_oneof![2 => Just(PATTERNS[0]), 3 => prop::sample::select(&PATTERNS[..])];
    prop_oneof![
        10 => (id.clone(), pattern, filter_text(), 1u64..1000, prop::bool::weighted(0.2),
               0u8..4, any::<bool>())
            .prop_map(|(id, pattern, filter, lease, hard, group, alo)| {
                Op::Subscribe { id, pattern, filter, lease, hard, group, alo }
            }),
        2 => id.clone().prop_map(Op::Unsubscribe),
        2 => id.clone().prop_map(Op::Renew),
        1 => (id, filter_text()).prop_map(|(id, f)| Op::SetFilter(id, f)),
        2 => (0u64..60).prop_map(Op::Advance),
        8 => (prop::sample::select(&TOPICS[..]), attrs()).prop_map(|(t, a)| Op::Match(t, a)),
    ]
}

struct ModelSub {
    pattern: Pattern,
    filter: Filter,
    deadline: u64,
    lease: Option<u64>,
    group: Option<&'static str>,
    mode: DeliveryMode,
}

fn group_of(g: u8) -> Option<(&'static str, Option<&'static str>)> {
    match g {
        1 => Some(("g1", None)),
        2 => Some(("g2", Some("a"))),
        _ => None,
    }
}

/// Runs `ops` on an engine and the model side by side; returns the engine's outputs.
fn run(ops: &[Op], index_min_len: usize) -> Result<Vec<Vec<Match>>, TestCaseError> {
    let mut engine = Engine::new(EngineConfig {
        index_min_len,
        ..EngineConfig::for_test()
    });
    let mut model: BTreeMap<u64, ModelSub> = BTreeMap::new();
    let mut now = 0u64;
    let mut outputs = vec![];
    for op in ops {
        match op {
            Op::Subscribe {
                id,
                pattern,
                filter,
                lease,
                hard,
                group,
                alo,
            } => {
                let pattern = Pattern::parse(pattern).unwrap();
                let filter = Filter::parse(filter).unwrap();
                let expiry = if *hard {
                    ExpirySpec::DeadlineMs(*lease)
                } else {
                    ExpirySpec::LeaseMs(*lease)
                };
                let mode = if *alo {
                    DeliveryMode::AtLeastOnce
                } else {
                    DeliveryMode::AtMostOnce
                };
                let mut sub = NewSubscription::new(SubscriptionId(*id), pattern.clone())
                    .filter(filter.clone())
                    .expiry(expiry)
                    .mode(mode);
                if let Some((g, key)) = group_of(*group) {
                    sub = sub.group(g, key);
                }
                let got = engine.subscribe(Timestamp(now), sub);
                // The model: ids are unique among subscriptions not yet collected by expire.
                if model.contains_key(id) {
                    prop_assert!(got.is_err(), "duplicate id {} accepted", id);
                } else {
                    prop_assert!(got.is_ok(), "{:?}", got);
                    let group = group_of(*group).map(|(g, _)| g);
                    let deadline = now + lease;
                    let lease = (!hard).then_some(*lease);
                    model.insert(
                        *id,
                        ModelSub {
                            pattern,
                            filter,
                            deadline,
                            lease,
                            group,
                            mode,
                        },
                    );
                }
            }
            Op::Unsubscribe(id) => {
                let got = engine.unsubscribe(SubscriptionId(*id));
                prop_assert_eq!(got.is_ok(), model.remove(id).is_some());
            }
            Op::Renew(id) => {
                let got = engine.renew(Timestamp(now), SubscriptionId(*id));
                match model.get_mut(id) {
                    None => prop_assert_eq!(got, Err(RenewError::Unknown(SubscriptionId(*id)))),
                    Some(m) => match m.lease {
                        None => {
                            prop_assert_eq!(got, Err(RenewError::NotRenewable(SubscriptionId(*id))))
                        }
                        Some(_) if m.deadline <= now => {
                            prop_assert_eq!(got, Err(RenewError::Unknown(SubscriptionId(*id))))
                        }
                        Some(lease) => {
                            m.deadline = now + lease;
                            prop_assert_eq!(got, Ok(Timestamp(m.deadline)));
                        }
                    },
                }
            }
            Op::SetFilter(id, text) => {
                let filter = Filter::parse(text).unwrap();
                let got = engine.set_filter(SubscriptionId(*id), &filter);
                match model.get_mut(id) {
                    None => prop_assert!(got.is_err()),
                    Some(m) => {
                        prop_assert!(got.is_ok());
                        m.filter = filter;
                    }
                }
            }
            Op::Advance(dt) => {
                now += dt;
                let mut expired = vec![];
                engine.expire(Timestamp(now), &mut expired);
                let got: BTreeSet<u64> = expired.iter().map(|s| s.0).collect();
                prop_assert_eq!(got.len(), expired.len(), "an id expired twice");
                let want: BTreeSet<u64> = model
                    .iter()
                    .filter(|(_, m)| m.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(&got, &want, "expired at {}", now);
                model.retain(|_, m| m.deadline > now);
                if let Some(next) = engine.next_deadline() {
                    if let Some(earliest) = model.values().map(|m| m.deadline).min() {
                        prop_assert!(
                            next.0 <= earliest.max(now),
                            "next_deadline {} after {}",
                            next.0,
                            earliest
                        );
                    }
                }
            }
            Op::Match(topic, attrs) => {
                let topic = Topic::parse(topic).unwrap();
                let mut out = vec![];
                engine.match_event(Timestamp(now), &topic, attrs, &mut out);
                check_match(&model, now, &topic, attrs, &out)?;
                outputs.push(out);
            }
        }
        prop_assert_eq!(engine.len(), model.len());
        let stats = engine.stats();
        prop_assert!(
            stats.indexed_buckets <= stats.topics + stats.patterns,
            "{:?}",
            stats
        );
    }
    Ok(outputs)
}

fn check_match(
    model: &BTreeMap<u64, ModelSub>,
    now: u64,
    topic: &Topic,
    attrs: &Attributes,
    out: &[Match],
) -> Result<(), TestCaseError> {
    let got: BTreeSet<u64> = out.iter().map(|m| m.id.0).collect();
    prop_assert_eq!(
        got.len(),
        out.len(),
        "a subscription was returned twice: {:?}",
        out
    );
    let matching: Vec<(&u64, &ModelSub)> = model
        .iter()
        .filter(|(_, m)| m.deadline > now && m.pattern.matches(topic) && m.filter.matches(attrs))
        .collect();
    let plain: BTreeSet<u64> = matching
        .iter()
        .filter(|(_, m)| m.group.is_none())
        .map(|(id, _)| **id)
        .collect();
    let got_plain: BTreeSet<u64> = got
        .iter()
        .copied()
        .filter(|id| model.get(id).is_some_and(|m| m.group.is_none()))
        .collect();
    prop_assert_eq!(&got_plain, &plain, "topic {} attrs {:?}", topic, attrs);
    for g in ["g1", "g2"] {
        let members: BTreeSet<u64> = matching
            .iter()
            .filter(|(_, m)| m.group == Some(g))
            .map(|(id, _)| **id)
            .collect();
        let chosen: Vec<u64> = got
            .iter()
            .copied()
            .filter(|id| model.get(id).is_some_and(|m| m.group == Some(g)))
            .collect();
        if members.is_empty() {
            prop_assert!(
                chosen.is_empty(),
                "group {} got {:?} with no matching member",
                g,
                chosen
            );
        } else {
            prop_assert_eq!(
                chosen.len(),
                1,
                "group {} must get exactly one of {:?}",
                g,
                members
            );
            prop_assert!(members.contains(&chosen[0]));
        }
    }
    for m in out {
        prop_assert_eq!(m.mode, model[&m.id.0].mode);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, max_shrink_iters: 50_000, ..ProptestConfig::default() })]

    /// Every bucket indexed: the index path, with counterexamples that shrink to a few ops.
    #[test]
    fn indexed_engine_equals_reference(ops in prop::collection::vec(op(), 1..150)) {
        run(&ops, 0)?;
    }

    /// Nothing indexed: the scan path.
    #[test]
    fn scanning_engine_equals_reference(ops in prop::collection::vec(op(), 1..150)) {
        run(&ops, usize::MAX)?;
    }

    /// The default threshold: buckets cross it both ways as subscriptions come and go.
    #[test]
    fn engine_equals_reference(ops in prop::collection::vec(op(), 1..300)) {
        let first = run(&ops, 4)?;
        // Same operations, same seed: the very same answers in the same order.
        let second = run(&ops, 4)?;
        prop_assert_eq!(first, second);
    }
}

/// Many subscriptions on one topic: the indexed path with every access-key kind at once.
#[test]
fn big_bucket_equals_reference() {
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(
            (prop::sample::select(&PATTERNS[..2]), filter_text()),
            20..200,
        ),
        prop::collection::vec(attrs(), 1..40),
    );
    runner
        .run(&strategy, |(subs, events)| {
            let mut ops: Vec<Op> = subs
                .into_iter()
                .enumerate()
                .map(|(i, (pattern, filter))| Op::Subscribe {
                    id: i as u64 + 1000,
                    pattern,
                    filter,
                    lease: 1000,
                    hard: false,
                    group: 0,
                    alo: false,
                })
                .collect();
            ops.extend(events.into_iter().map(|a| Op::Match("t", a)));
            run(&ops, 16).map(|_| ())
        })
        .unwrap();
}
