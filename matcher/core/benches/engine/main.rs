//! `cargo bench -p sift-matcher-core`: the engine against a naive baseline, side by side in
//! one run, on the workloads of the foundation issue (W1, W2, W3), plus add / remove /
//! expire throughput and measured memory per subscription.
//!
//! The naive baseline is the reference evaluator (`Filter::matches`) over every subscription
//! of the event's topic (W1, W2) or `Pattern::matches` over every pattern (W3). Runs of the
//! engine and the baseline are interleaved and the median is reported, because the machine is
//! shared and noisy.
//!
//! Arguments (after `--`): workload names to run (`w1 w1-dense w1-unique w2 w3 churn`,
//! default all; `w1` includes its variants unless `--quick`), `--quick` for a smaller,
//! faster run (smoke test, not for reported figures).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod measure;
mod workloads;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use measure::{fmt_rate, median, rate, retained, spread, time};
use sift_matcher_core::{Engine, EngineConfig, Match, NewSubscription, Timestamp};
use sift_protocol::frame::ExpirySpec;
use sift_protocol::{Filter, Pattern, SubscriptionId, Topic};
use workloads::*;

struct Opts {
    quick: bool,
    only: Vec<String>,
}

impl Opts {
    fn parse() -> Opts {
        let mut quick = false;
        let mut only = vec![];
        for a in std::env::args().skip(1) {
            match a.as_str() {
                "--quick" => quick = true,
                "--bench" => {}
                a if a.starts_with('-') => {}
                a => only.push(a.to_lowercase()),
            }
        }
        Opts { quick, only }
    }

    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    fn reps(&self) -> usize {
        if self.quick {
            3
        } else {
            5
        }
    }
}

/// One line of the final report.
struct Row {
    name: String,
    engine: String,
    baseline: String,
    ratio: String,
    goal: String,
}

fn main() {
    let opts = Opts::parse();
    let mut rows = vec![];
    println!(
        "sift-matcher-core benchmarks{}",
        if opts.quick {
            " (--quick: smoke run)"
        } else {
            ""
        }
    );
    if opts.wants("w1") {
        w1(&opts, Variant::Selective, &mut rows);
    }
    if opts.wants("w1-dense") || opts.wants("w1") && !opts.quick {
        w1(&opts, Variant::Dense, &mut rows);
    }
    if opts.wants("w1-unique") || opts.wants("w1") && !opts.quick {
        w1(&opts, Variant::UniqueRegexes, &mut rows);
    }
    if opts.wants("w2") {
        w2(&opts, &mut rows);
    }
    if opts.wants("w3") {
        w3(&opts, &mut rows);
    }
    if opts.wants("churn") {
        churn(&opts, &mut rows);
    }
    println!();
    println!("| workload | engine | naive baseline | ratio | goal |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.engine, r.baseline, r.ratio, r.goal
        );
    }
}

fn new_engine() -> Engine {
    Engine::new(EngineConfig::for_test())
}

fn lease() -> ExpirySpec {
    ExpirySpec::LeaseMs(24 * 3600 * 1000)
}

/// Subscribes everything in `subs` (parsing each filter) and returns the engine.
fn build(subs: &[Sub]) -> Engine {
    let mut engine = new_engine();
    for (i, s) in subs.iter().enumerate() {
        let sub = NewSubscription::new(
            SubscriptionId(i as u64),
            Pattern::parse(&s.pattern).unwrap(),
        )
        .filter(Filter::parse(&s.filter).unwrap())
        .expiry(lease());
        engine.subscribe(Timestamp(0), sub).unwrap();
    }
    engine
}

struct Parsed {
    topic: Topic,
    attrs: sift_protocol::Attributes,
}

fn parse_events(events: Vec<Ev>) -> Vec<Parsed> {
    events
        .into_iter()
        .map(|e| Parsed {
            topic: Topic::parse(&e.topic).unwrap(),
            attrs: e.attrs,
        })
        .collect()
}

/// Matches every event once; returns the total number of matches.
fn run_engine(engine: &mut Engine, events: &[Parsed]) -> usize {
    let mut out: Vec<Match> = Vec::with_capacity(1024);
    let mut total = 0;
    for e in events {
        out.clear();
        engine.match_event(Timestamp(1), &e.topic, &e.attrs, &mut out);
        total += out.len();
    }
    black_box(total)
}

/// A median rate, the run times behind it, and the matches counted in the last run.
type Measured = (f64, Vec<Duration>, usize);

/// Interleaves `reps` runs of the engine and of the baseline; returns the median rates
/// (events/s) with their spreads.
fn side_by_side(
    reps: usize,
    mut engine_run: impl FnMut() -> (usize, usize),
    mut naive_run: impl FnMut() -> (usize, usize),
) -> (Measured, Measured) {
    let (mut e_times, mut n_times) = (vec![], vec![]);
    let (mut e_events, mut n_events, mut e_matches, mut n_matches) = (0, 0, 0, 0);
    for _ in 0..reps {
        let ((ev, m), d) = time(&mut engine_run);
        e_times.push(d);
        (e_events, e_matches) = (ev, m);
        let ((ev, m), d) = time(&mut naive_run);
        n_times.push(d);
        (n_events, n_matches) = (ev, m);
    }
    let e_rate = rate(e_events, median(e_times.clone()));
    let n_rate = rate(n_events, median(n_times.clone()));
    ((e_rate, e_times, e_matches), (n_rate, n_times, n_matches))
}

/// Runs the engine over all `events` and the baseline over the first `n_naive`, side by side,
/// and checks that both count the same matches on the baseline's sample.
fn against_baseline(
    opts: &Opts,
    engine: &mut Engine,
    events: &[Parsed],
    n_naive: usize,
    naive: impl Fn(&Parsed) -> usize,
) -> (Measured, (f64, Vec<Duration>)) {
    let sample = &events[..n_naive];
    let (engine_figures, (n_rate, n_times, n_matches)) = side_by_side(
        opts.reps(),
        || (events.len(), run_engine(engine, events)),
        || (sample.len(), black_box(sample.iter().map(&naive).sum())),
    );
    assert_eq!(
        run_engine(engine, sample),
        n_matches,
        "engine and baseline disagree"
    );
    (engine_figures, (n_rate, n_times))
}

fn spread_pct(times: &[Duration]) -> String {
    let (min, max) = spread(times);
    let med = median(times.to_vec());
    format!(
        "-{:.0}%/+{:.0}%",
        100.0 * (1.0 - min.as_secs_f64() / med.as_secs_f64()),
        100.0 * (max.as_secs_f64() / med.as_secs_f64() - 1.0)
    )
}

fn w1(opts: &Opts, variant: Variant, rows: &mut Vec<Row>) {
    let name = match variant {
        Variant::Selective => "W1",
        Variant::Dense => "W1-dense",
        Variant::UniqueRegexes => "W1-unique-regex",
    };
    let main = variant == Variant::Selective;
    let n_subs = std::env::var("SIFT_BENCH_W1_SUBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if opts.quick { 100_000 } else { 1_000_000 });
    let n_events = if opts.quick { 20_000 } else { 200_000 };
    let n_naive = if opts.quick { 200 } else { 2_000 };
    println!("\n== {name}: {n_subs} subscriptions over {W1_TOPICS} topics (Zipf 1.0), 5-attribute events");
    let gen = W1::new(variant);
    let mut r = rng(1);
    let subs: Vec<Sub> = (0..n_subs).map(|_| gen.sub(&mut r)).collect();
    let events = parse_events((0..n_events).map(|_| gen.event(&mut r)).collect());

    let (mut engine, heap, rss) = retained(|| build(&subs));
    let per_sub = heap as f64 / n_subs as f64;
    let st = engine.stats();
    println!(
        "built: {} topics, {} indexed, {} distinct regexes; heap {:.1} MB = {per_sub:.0} B/subscription, RSS +{:.1} MB = {:.0} B/subscription",
        st.topics, st.indexed_buckets, st.regexes, heap as f64 / 1e6, rss as f64 / 1e6, rss as f64 / n_subs as f64
    );

    if std::env::var_os("SIFT_BENCH_KINDS").is_some() {
        let mut by_kind: std::collections::BTreeMap<String, usize> = Default::default();
        let mut naive: HashMap<&str, Vec<(&str, Filter)>> = HashMap::new();
        for s in &subs {
            naive
                .entry(&s.pattern)
                .or_default()
                .push((&s.filter, Filter::parse(&s.filter).unwrap()));
        }
        for e in &events[..2000] {
            for (text, f) in naive.get(e.topic.as_str()).map(|v| &v[..]).unwrap_or(&[]) {
                if f.matches(&e.attrs) {
                    let kind: String = text.split([' ', '(']).take(2).collect::<Vec<_>>().join(" ");
                    *by_kind.entry(kind).or_default() += 1;
                }
            }
        }
        for (k, n) in by_kind {
            println!("{k:30} {:.3}", n as f64 / 2000.0);
        }
        return;
    }
    if let Ok(split) = std::env::var("SIFT_BENCH_SPLIT") {
        let split: usize = split.parse().unwrap();
        let rank = |e: &Parsed| e.topic.as_str()[4..].parse::<usize>().unwrap();
        let hot: Vec<Parsed> = events
            .iter()
            .filter(|e| rank(e) < split)
            .map(|e| Parsed {
                topic: e.topic.clone(),
                attrs: e.attrs.clone(),
            })
            .collect();
        let cold: Vec<Parsed> = events
            .iter()
            .filter(|e| rank(e) >= split)
            .map(|e| Parsed {
                topic: e.topic.clone(),
                attrs: e.attrs.clone(),
            })
            .collect();
        if std::env::var_os("SIFT_BENCH_PROFILE").is_some() {
            let which = if std::env::var_os("SIFT_BENCH_COLD").is_some() {
                &cold
            } else {
                &hot
            };
            for _ in 0..30 {
                run_engine(&mut engine, which);
            }
            return;
        }
        for (name, set) in [("hot", &hot), ("cold", &cold), ("all", &events)] {
            let c0 = engine.stats().candidates;
            let (_, d) = time(|| run_engine(&mut engine, set));
            let (_, d2) = time(|| run_engine(&mut engine, set));
            let d = d.min(d2);
            println!(
                "{name}: {} events, {:.0} ns/event, {:.1} candidates/event",
                set.len(),
                d.as_nanos() as f64 / set.len() as f64,
                (engine.stats().candidates - c0) as f64 / (2 * set.len()) as f64
            );
        }
        return;
    }
    if std::env::var_os("SIFT_BENCH_PROFILE").is_some() {
        // For `perf record`: only the engine's matching loop, for a while.
        for _ in 0..20 {
            run_engine(&mut engine, &events);
        }
        return;
    }
    // The baseline: per topic, every subscription's parsed filter.
    let mut naive: HashMap<String, Vec<Filter>> = HashMap::new();
    for s in &subs {
        naive
            .entry(s.pattern.clone())
            .or_default()
            .push(Filter::parse(&s.filter).unwrap());
    }
    let naive_events = &events[..n_naive];
    // A first pass warms the engine up and measures what it grows while matching (regexes
    // compiled on first use, their caches), on its own: the baseline's regexes grow too.
    let (_, grown, _) = retained(|| run_engine(&mut engine, &events));
    let ((e_rate, e_times, e_matches), (n_rate, n_times, n_matches)) = side_by_side(
        opts.reps(),
        || (events.len(), run_engine(&mut engine, &events)),
        || {
            let mut total = 0;
            for e in naive_events {
                if let Some(fs) = naive.get(e.topic.as_str()) {
                    total += fs.iter().filter(|f| f.matches(&e.attrs)).count();
                }
            }
            (naive_events.len(), black_box(total))
        },
    );
    let per_sub_after = (heap + grown) as f64 / n_subs as f64;
    // Same answers on the baseline's sample (a sanity check of the run, not the test suite).
    let sample_matches = run_engine(&mut engine, naive_events);
    assert_eq!(
        sample_matches, n_matches,
        "engine and baseline disagree on W1"
    );
    let st = engine.stats();
    println!(
        "engine {} events/s ({}), {:.1} matches/event, {:.1} candidates/event; baseline {} events/s ({}), {:.0} filters/event",
        fmt_rate(e_rate), spread_pct(&e_times), e_matches as f64 / events.len() as f64,
        st.candidates as f64 / st.events as f64, fmt_rate(n_rate), spread_pct(&n_times),
        naive_events.iter().map(|e| naive.get(e.topic.as_str()).map_or(0, Vec::len)).sum::<usize>() as f64 / n_naive as f64
    );
    println!(
        "after matching: heap {per_sub_after:.0} B/subscription; {} of {} regexes compiled",
        st.regexes_compiled, st.regexes
    );
    rows.push(Row {
        name: format!("{name} match, events/s"),
        engine: fmt_rate(e_rate),
        baseline: fmt_rate(n_rate),
        ratio: format!("{:.0}x", e_rate / n_rate),
        goal: if main {
            ">= 1,000,000/s and >= 20x"
        } else {
            "(variant)"
        }
        .into(),
    });
    rows.push(Row {
        name: format!("{name} memory, bytes/subscription"),
        // Resident-set growth only means something for the first build of the process: later
        // builds reuse pages the allocator kept from the one before.
        engine: if main {
            format!(
                "{per_sub:.0} heap ({per_sub_after:.0} after matching), {:.0} RSS",
                rss as f64 / n_subs as f64
            )
        } else {
            format!("{per_sub:.0} heap ({per_sub_after:.0} after matching)")
        },
        baseline: "-".into(),
        ratio: "-".into(),
        goal: if main { "<= 300" } else { "(variant)" }.into(),
    });
}

fn w2(opts: &Opts, rows: &mut Vec<Row>) {
    let n_subs = if opts.quick { 20_000 } else { 100_000 };
    let n_events = if opts.quick { 2_000 } else { 20_000 };
    let n_naive = if opts.quick { 20 } else { 100 };
    for digits in 1..=4u32 {
        let pct = 100.0 / 10f64.powi(digits as i32);
        println!("\n== W2 at {pct}% selectivity: {n_subs} subscriptions on one topic");
        let mut r = rng(2 + u64::from(digits));
        let subs: Vec<Sub> = (0..n_subs).map(|_| w2_sub(&mut r, digits)).collect();
        let events = parse_events((0..n_events).map(|_| w2_event(&mut r)).collect());
        let mut engine = build(&subs);
        let filters: Vec<Filter> = subs
            .iter()
            .map(|s| Filter::parse(&s.filter).unwrap())
            .collect();
        let ((e_rate, e_times, e_matches), (n_rate, n_times)) =
            against_baseline(opts, &mut engine, &events, n_naive, |e| {
                filters.iter().filter(|f| f.matches(&e.attrs)).count()
            });
        println!(
            "engine {} events/s ({}), {:.0} matches/event ({:.3}%); baseline {} events/s ({})",
            fmt_rate(e_rate),
            spread_pct(&e_times),
            e_matches as f64 / events.len() as f64,
            100.0 * e_matches as f64 / (events.len() * n_subs) as f64,
            fmt_rate(n_rate),
            spread_pct(&n_times)
        );
        rows.push(Row {
            name: format!("W2 {pct}% selectivity, events/s"),
            engine: fmt_rate(e_rate),
            baseline: fmt_rate(n_rate),
            ratio: format!("{:.0}x", e_rate / n_rate),
            goal: if digits == 2 {
                ">= 50x".into()
            } else {
                "-".into()
            },
        });
    }
}

fn w3(opts: &Opts, rows: &mut Vec<Row>) {
    let n_subs = 10_000;
    let n_topics = if opts.quick { 10_000 } else { 100_000 };
    let n_naive = if opts.quick { 200 } else { 2_000 };
    println!("\n== W3: {n_subs} pattern subscriptions, {n_topics} distinct topics");
    let mut r = rng(3);
    let subs: Vec<Sub> = (0..n_subs).map(|_| w3_sub(&mut r)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut topics = vec![];
    while topics.len() < n_topics {
        let t = w3_topic(&mut r);
        if seen.insert(t.clone()) {
            topics.push(t);
        }
    }
    let events = parse_events(
        topics
            .into_iter()
            .map(|topic| Ev {
                topic,
                attrs: Default::default(),
            })
            .collect(),
    );
    let mut engine = build(&subs);
    let patterns: Vec<Pattern> = subs
        .iter()
        .map(|s| Pattern::parse(&s.pattern).unwrap())
        .collect();
    let ((e_rate, e_times, e_matches), (n_rate, n_times)) =
        against_baseline(opts, &mut engine, &events, n_naive, |e| {
            patterns.iter().filter(|p| p.matches(&e.topic)).count()
        });
    println!(
        "{} distinct patterns; engine {} topics/s ({}), {:.2} matches/topic; linear scan {} topics/s ({})",
        engine.stats().patterns, fmt_rate(e_rate), spread_pct(&e_times), e_matches as f64 / events.len() as f64,
        fmt_rate(n_rate), spread_pct(&n_times)
    );
    rows.push(Row {
        name: "W3 patterns, topics/s".into(),
        engine: fmt_rate(e_rate),
        baseline: fmt_rate(n_rate),
        ratio: format!("{:.0}x", e_rate / n_rate),
        goal: ">= 100x".into(),
    });
}

/// Add, remove and expire throughput; expiry measured at two engine sizes to show that the
/// cost per expiry does not grow with the total count.
fn churn(opts: &Opts, rows: &mut Vec<Row>) {
    let n = if opts.quick { 100_000 } else { 1_000_000 };
    println!("\n== churn: subscribe / unsubscribe / expire ({n} W1 subscriptions)");
    let gen = W1::new(Variant::Selective);
    let mut r = rng(4);
    let subs: Vec<(Pattern, Filter)> = (0..n)
        .map(|_| {
            let s = gen.sub(&mut r);
            (
                Pattern::parse(&s.pattern).unwrap(),
                Filter::parse(&s.filter).unwrap(),
            )
        })
        .collect();
    let new_subs = |expiry: &dyn Fn(usize) -> ExpirySpec| -> Vec<NewSubscription> {
        subs.iter()
            .enumerate()
            .map(|(i, (p, f))| {
                NewSubscription::new(SubscriptionId(i as u64), p.clone())
                    .filter(f.clone())
                    .expiry(expiry(i))
            })
            .collect()
    };
    let (mut adds, mut removes) = (vec![], vec![]);
    for _ in 0..opts.reps() {
        let batch = new_subs(&|_| lease());
        let mut engine = new_engine();
        let (_, d) = time(|| {
            for s in batch {
                engine.subscribe(Timestamp(0), s).unwrap();
            }
        });
        adds.push(d);
        let (_, d) = time(|| {
            for i in 0..n {
                engine.unsubscribe(SubscriptionId(i as u64)).unwrap();
            }
        });
        removes.push(d);
    }
    let add_rate = rate(n, median(adds.clone()));
    let remove_rate = rate(n, median(removes.clone()));
    println!(
        "subscribe {} /s ({}), unsubscribe {} /s ({})",
        fmt_rate(add_rate),
        spread_pct(&adds),
        fmt_rate(remove_rate),
        spread_pct(&removes)
    );
    rows.push(Row {
        name: "subscribe (filter pre-parsed), /s".into(),
        engine: fmt_rate(add_rate),
        baseline: "-".into(),
        ratio: "-".into(),
        goal: "-".into(),
    });
    rows.push(Row {
        name: "unsubscribe, /s".into(),
        engine: fmt_rate(remove_rate),
        baseline: "-".into(),
        ratio: "-".into(),
        goal: "-".into(),
    });

    // Expiry: deadlines spread evenly over 60 s; time advances 1 ms per call over the first
    // second, so about 1/60 of the subscriptions expire during the measurement. Both engines
    // (about 63 MB and 250 MB) are larger than the CPU's last-level cache, so the two figures
    // compare the algorithm rather than the cache. An expiry also removes the subscription
    // from its index, like `unsubscribe`.
    for total in [n / 4, n] {
        let mut rates = vec![];
        let mut expired_count = 0;
        for _ in 0..opts.reps() {
            let batch: Vec<NewSubscription> =
                new_subs(&|i| ExpirySpec::LeaseMs(1 + (i as u64 * 7919) % 60_000))
                    .into_iter()
                    .take(total)
                    .collect();
            let mut engine = new_engine();
            for s in batch {
                engine.subscribe(Timestamp(0), s).unwrap();
            }
            let mut out = vec![];
            let (_, d) = time(|| {
                for ms in 1..=1000 {
                    engine.expire(Timestamp(ms), &mut out);
                }
            });
            expired_count = out.len();
            rates.push(d);
        }
        let r = rate(expired_count, median(rates.clone()));
        println!(
            "expire with {total} subscriptions: {} expiries in {:?} (median) = {} /s ({})",
            expired_count,
            median(rates.clone()),
            fmt_rate(r),
            spread_pct(&rates)
        );
        rows.push(Row {
            name: format!("expire, {total} subscriptions held, /s"),
            engine: fmt_rate(r),
            baseline: "-".into(),
            ratio: "-".into(),
            goal: "flat in the total".into(),
        });
    }
}
