//! The benchmark workloads (W1, W2, W3), generated from a fixed seed. Each generator returns
//! subscriptions as (topic or pattern, filter text) and events as (topic, attributes), so the
//! engine and the naive baseline see exactly the same input.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use sift_protocol::{Attributes, Value};

pub type Rng8 = ChaCha8Rng;

pub fn rng(seed: u64) -> Rng8 {
    ChaCha8Rng::seed_from_u64(seed)
}

pub struct Sub {
    pub pattern: String,
    pub filter: String,
}

pub struct Ev {
    pub topic: String,
    pub attrs: Attributes,
}

fn s(v: String) -> Value {
    Value::Str(v)
}

// ---------- W1: 1M subscriptions, 100k topics, Zipf 1.0 ----------

pub const W1_TOPICS: usize = 100_000;
const W1_REGIONS: usize = 16;
const W1_CUSTOMERS: usize = 100_000;
const W1_SKUS: usize = 1_000_000;
/// Distinct regex patterns in W1: users' regexes repeat (the same app deployed many times),
/// and each distinct pattern is compiled once. `Variant::UniqueRegexes` is the other extreme.
const W1_REGEX_VOCAB: usize = 2000;

/// Which W1 variant to generate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    /// Selective filters, as content-based subscriptions usually are: each tracks an entity
    /// (a customer, a sku) or a narrow range; about 1-2 matches per event.
    Selective,
    /// The same shapes with broader literals (narrower value domains, wider ranges): about
    /// 13 matches per event, to show how throughput follows the number of matches.
    Dense,
    /// Selective, but every regex pattern distinct (no sharing of compiled regexes).
    UniqueRegexes,
}

pub struct W1 {
    zipf: Zipf<f64>,
    variant: Variant,
    /// `qty` takes values 1..=qty_max.
    qty_max: i64,
}

impl W1 {
    pub fn new(variant: Variant) -> W1 {
        let qty_max = if variant == Variant::Dense {
            1000
        } else {
            10_000
        };
        W1 {
            zipf: Zipf::new(W1_TOPICS as f64, 1.0).expect("valid zipf"),
            variant,
            qty_max,
        }
    }

    fn dense(&self) -> bool {
        self.variant == Variant::Dense
    }

    fn topic(&self, r: &mut Rng8) -> String {
        format!("w1.t{}", self.zipf.sample(r) as usize - 1)
    }

    pub fn event(&self, r: &mut Rng8) -> Ev {
        let mut attrs = Attributes::new();
        attrs.insert(
            "region".into(),
            s(format!("r{}", r.random_range(0..W1_REGIONS))),
        );
        attrs.insert(
            "customer".into(),
            s(format!("c{}", r.random_range(0..W1_CUSTOMERS))),
        );
        attrs.insert(
            "sku".into(),
            s(format!("sku-{:07}", r.random_range(0..W1_SKUS))),
        );
        let cents: i64 = r.random_range(0..100_000);
        attrs.insert("price".into(), Value::Float(cents as f64 / 100.0));
        attrs.insert("qty".into(), Value::Int(r.random_range(1..=self.qty_max)));
        Ev {
            topic: self.topic(r),
            attrs,
        }
    }

    /// A filter of 1-3 predicates: a primary predicate (60% equality/in, 30% range, 10%
    /// regex/prefix) and 0-2 broader ones drawn from the same mix.
    pub fn sub(&self, r: &mut Rng8) -> Sub {
        let n = r.random_range(1..=3usize);
        let (mut preds, mut count) = self.primary(r);
        while count < n {
            preds.push(self.secondary(r));
            count += 1;
        }
        let filter = if r.random_bool(0.1) && preds.len() >= 2 {
            // Some users write disjunctions: keep the primary, OR the rest.
            let first = preds.remove(0);
            format!("{first} && ({})", preds.join(" || "))
        } else {
            preds.join(" && ")
        };
        Sub {
            pattern: self.topic(r),
            filter,
        }
    }

    /// Returns the predicate text and how many predicates it counts as.
    fn primary(&self, r: &mut Rng8) -> (Vec<String>, usize) {
        let p: f64 = r.random();
        let one = |t: String| (vec![t], 1);
        let qty = |r: &mut Rng8| r.random_range(1..=self.qty_max);
        if p < 0.60 {
            match r.random_range(0..20) {
                0..=4 => one(format!(
                    "customer == \"c{}\"",
                    r.random_range(0..W1_CUSTOMERS)
                )),
                5..=7 => one(format!("sku == \"sku-{:07}\"", r.random_range(0..W1_SKUS))),
                8..=11 => one(format!("qty == {}", qty(r))),
                12..=16 => {
                    let k = r.random_range(2..=8);
                    let items: Vec<String> = (0..k)
                        .map(|_| format!("\"c{}\"", r.random_range(0..W1_CUSTOMERS)))
                        .collect();
                    one(format!("customer in [{}]", items.join(", ")))
                }
                _ => {
                    let k = r.random_range(2..=4);
                    let items: Vec<String> = (0..k).map(|_| qty(r).to_string()).collect();
                    one(format!("qty in [{}]", items.join(", ")))
                }
            }
        } else if p < 0.90 {
            let widths: [f64; 3] = if self.dense() {
                [0.5, 1.0, 2.0]
            } else {
                [0.1, 0.5, 1.0]
            };
            match r.random_range(0..3) {
                0 => {
                    let lo = r.random_range(0..99_800) as f64 / 100.0;
                    let w = widths[r.random_range(0..3)];
                    // Two predicates that stay together (an OR never splits them).
                    (vec![format!("price >= {lo:?} && price < {:?}", lo + w)], 2)
                }
                1 => {
                    let span = if self.dense() { 5 } else { 20 };
                    one(format!("qty > {}", self.qty_max - r.random_range(1..=span)))
                }
                _ => {
                    let top = if self.dense() { 100 } else { 20 };
                    one(format!(
                        "price < {:?}",
                        r.random_range(1..top) as f64 / 100.0
                    ))
                }
            }
        } else if r.random_bool(0.5) {
            let fixed = if self.dense() { 5 } else { 6 };
            let id = match self.variant {
                Variant::UniqueRegexes => r.random_range(0..10usize.pow(fixed)),
                _ => r.random_range(0..W1_REGEX_VOCAB),
            };
            let free = 7 - fixed;
            one(format!(
                "sku ~ \"^sku-{id:0width$}[0-9]{{{free}}}$\"",
                width = fixed as usize
            ))
        } else {
            let digits = if self.dense() {
                100..1000
            } else {
                1000..10_000
            };
            one(format!("prefix(customer, \"c{}\")", r.random_range(digits)))
        }
    }

    fn secondary(&self, r: &mut Rng8) -> String {
        let p: f64 = r.random();
        if p < 0.60 {
            match r.random_range(0..3) {
                0 => format!("region == \"r{}\"", r.random_range(0..W1_REGIONS)),
                1 => {
                    let a = r.random_range(0..W1_REGIONS);
                    let b = (a + 1 + r.random_range(0..W1_REGIONS - 1)) % W1_REGIONS;
                    format!("region in [\"r{a}\", \"r{b}\"]")
                }
                _ => format!("region != \"r{}\"", r.random_range(0..W1_REGIONS)),
            }
        } else if p < 0.90 {
            if r.random_bool(0.5) {
                format!("qty > {}", r.random_range(1..self.qty_max))
            } else {
                format!("price <= {:?}", r.random_range(1..1000) as f64)
            }
        } else if r.random_bool(0.5) {
            format!("region ~ \"^r1[0-{}]$\"", r.random_range(0..6))
        } else {
            format!("prefix(sku, \"sku-{}\")", r.random_range(0..10))
        }
    }
}

// ---------- W2: one hot topic, 100k subscriptions of a given selectivity ----------

pub const W2_TOPIC: &str = "w2.hot";

/// Events carry uniform attributes from which filters of any selectivity can be built.
pub fn w2_event(r: &mut Rng8) -> Ev {
    let mut attrs = Attributes::new();
    for n in [10i64, 100, 1000, 10_000, 100_000] {
        attrs.insert(format!("u{n}"), Value::Int(r.random_range(0..n)));
    }
    attrs.insert("x".into(), Value::Float(r.random::<f64>()));
    attrs.insert(
        "code".into(),
        s(format!("{:06}", r.random_range(0..1_000_000))),
    );
    Ev {
        topic: W2_TOPIC.into(),
        attrs,
    }
}

/// A filter matching a fraction `10^-digits` of events (digits = 1..=4), varied in kind:
/// 30% equality, 20% `in`, 30% range, 10% prefix, 10% regex.
pub fn w2_sub(r: &mut Rng8, digits: u32) -> Sub {
    let card = 10i64.pow(digits);
    let filter = match r.random_range(0..10) {
        0..=2 => format!("u{card} == {}", r.random_range(0..card)),
        3 | 4 => {
            // 10 distinct values out of 10 * card.
            let items: Vec<String> = (0..10)
                .map(|i| (i * card + r.random_range(0..card)).to_string())
                .collect();
            format!("u{} in [{}]", card * 10, items.join(", "))
        }
        5..=7 => {
            let w = 1.0 / card as f64;
            let lo = r.random_range(0.0..1.0 - w);
            format!("x >= {lo:?} && x < {:?}", lo + w)
        }
        8 => format!(
            "prefix(code, \"{:0width$}\")",
            r.random_range(0..card),
            width = digits as usize
        ),
        _ => format!(
            "code ~ \"{:0width$}$\"",
            r.random_range(0..card),
            width = digits as usize
        ),
    };
    Sub {
        pattern: W2_TOPIC.into(),
        filter,
    }
}

// ---------- W3: 10k pattern subscriptions, 100k distinct topics ----------

const W3_TOKENS: [(char, usize); 4] = [('a', 10), ('b', 100), ('c', 100), ('d', 100)];

pub fn w3_topic(r: &mut Rng8) -> String {
    let tokens: Vec<String> = W3_TOKENS
        .iter()
        .map(|(p, n)| format!("{p}{}", r.random_range(0..*n)))
        .collect();
    tokens.join(".")
}

/// A pattern: a random topic with tokens replaced by `*` (15% each) and, for 25% of the
/// patterns, the tail cut after two or three tokens and replaced by `>`.
pub fn w3_sub(r: &mut Rng8) -> Sub {
    let mut tokens: Vec<String> = w3_topic(r).split('.').map(String::from).collect();
    for t in tokens.iter_mut() {
        if r.random_bool(0.15) {
            *t = "*".into();
        }
    }
    if r.random_bool(0.25) {
        let keep = r.random_range(2..tokens.len());
        tokens.truncate(keep);
        tokens.push(">".into());
    }
    Sub {
        pattern: tokens.join("."),
        filter: String::new(),
    }
}
