//! The history checker, pure: from what publishers and subscribers saw (client side), which
//! acknowledged events a live matching subscription missed, which it got twice past the SDK,
//! which arrived out of order per (publisher, topic), and how deliveries flowed around each
//! fault.
//!
//! A subscription is *live* for an event (DESIGN.md, "what nothing lost means") if its
//! subscribe was answered before the event was published and it was not ended before the
//! event's acknowledgement. Members of one group form one *unit*: each event matching the
//! group is owed to the unit once, whichever member gets it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sift_protocol::EventId;

/// One publish, as its publisher saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishRecord {
    /// The event's id (publisher and sequence number: the order per publisher).
    pub id: EventId,
    /// Its topic.
    pub topic: String,
    /// The attribute filtered subscribers select on.
    pub k: i64,
    /// When the publish was sent (ms since the run started).
    pub sent_ms: u64,
    /// When the matcher acknowledged it; `None` if it never did (those are not owed).
    pub acked_ms: Option<u64>,
}

/// One notification handed to the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The event.
    pub id: EventId,
    /// When it arrived (ms since the run started).
    pub at_ms: u64,
}

/// One subscription's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscriberHistory {
    /// Its name in the report.
    pub name: String,
    /// The unit it belongs to: its group's name, or its own name.
    pub unit: String,
    /// Topic or pattern.
    pub pattern: String,
    /// Filtered subscribers take only events whose `k` is one of these.
    pub k_in: Option<Vec<i64>>,
    /// `at-most-once` or `at-least-once`.
    pub mode: String,
    /// When its subscribe was answered (`None`: never).
    pub live_from_ms: Option<u64>,
    /// When it ended (`None`: live to the end).
    pub ended_ms: Option<u64>,
    /// What it got, in arrival order.
    pub deliveries: Vec<DeliveryRecord>,
}

/// What one unit (a subscription, or a group) saw against what it was owed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitVerdict {
    /// The unit.
    pub unit: String,
    /// Its delivery mode.
    pub mode: String,
    /// Acknowledged events it was owed.
    pub owed: usize,
    /// Distinct owed events it got.
    pub got: usize,
    /// Owed events it never got.
    pub missing: usize,
    /// Up to ten of them.
    pub missing_examples: Vec<EventId>,
    /// Deliveries of an event it had already got (past the SDK).
    pub duplicates: usize,
    /// Deliveries older (per publisher and topic) than one it had already got.
    pub out_of_order: usize,
    /// Deliveries of events it does not match.
    pub spurious: usize,
    /// Deliveries of events with no publish record (their publisher saw the publish fail:
    /// it may have reached the cluster anyway, as an error does not say it did not).
    pub unknown: usize,
}

/// The whole verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Publishes acknowledged.
    pub acked: usize,
    /// Publishes never acknowledged (not owed to anyone).
    pub unacked: usize,
    /// Per unit.
    pub units: Vec<UnitVerdict>,
    /// Totals over the units.
    pub missing: usize,
    /// Totals over the units.
    pub duplicates: usize,
    /// Totals over the units.
    pub out_of_order: usize,
    /// Totals over the units.
    pub spurious: usize,
    /// Totals over the units.
    pub unknown: usize,
}

/// True when `h` (its pattern and filter) matches `p`.
pub fn matches(h: &SubscriberHistory, p: &PublishRecord) -> bool {
    let (Ok(pattern), Ok(topic)) = (
        sift_protocol::Pattern::parse(&h.pattern),
        sift_protocol::Topic::parse(&p.topic),
    ) else {
        return false;
    };
    pattern.matches(&topic) && h.k_in.as_ref().is_none_or(|ks| ks.contains(&p.k))
}

/// Checks the histories.
pub fn check(publishes: &[PublishRecord], subs: &[SubscriberHistory]) -> Verdict {
    let by_id: HashMap<EventId, &PublishRecord> = publishes.iter().map(|p| (p.id, p)).collect();
    let mut units: BTreeMap<&str, Vec<&SubscriberHistory>> = BTreeMap::new();
    for s in subs {
        units.entry(&s.unit).or_default().push(s);
    }
    let mut verdict = Verdict {
        acked: publishes.iter().filter(|p| p.acked_ms.is_some()).count(),
        unacked: publishes.iter().filter(|p| p.acked_ms.is_none()).count(),
        ..Verdict::default()
    };
    for (unit, members) in units {
        let first = members[0];
        // A unit is live from its first member's subscribe to its last member's end.
        let live_from = members.iter().filter_map(|m| m.live_from_ms).min();
        let ended = if members.iter().any(|m| m.ended_ms.is_none()) {
            None
        } else {
            members.iter().filter_map(|m| m.ended_ms).max()
        };
        let owed: Vec<&PublishRecord> = match live_from {
            None => Vec::new(),
            Some(from) => publishes
                .iter()
                .filter(|p| {
                    p.acked_ms.is_some_and(|acked| {
                        from <= p.sent_ms && ended.is_none_or(|end| end > acked)
                    }) && matches(first, p)
                })
                .collect(),
        };
        let mut v = UnitVerdict {
            unit: unit.to_owned(),
            mode: first.mode.clone(),
            owed: owed.len(),
            ..UnitVerdict::default()
        };
        // Deliveries of all members, in arrival order (a stable merge by time).
        let mut deliveries: Vec<DeliveryRecord> = members
            .iter()
            .flat_map(|m| m.deliveries.iter().copied())
            .collect();
        deliveries.sort_by_key(|d| d.at_ms);
        let mut seen: HashSet<EventId> = HashSet::new();
        let mut last: HashMap<(u128, &str), u64> = HashMap::new();
        for d in &deliveries {
            let Some(p) = by_id.get(&d.id) else {
                v.unknown += 1;
                continue;
            };
            if !matches(first, p) {
                v.spurious += 1;
                continue;
            }
            if !seen.insert(d.id) {
                v.duplicates += 1;
                continue;
            }
            let key = (d.id.publisher.0, p.topic.as_str());
            match last.get(&key) {
                Some(&l) if d.id.seq < l => v.out_of_order += 1,
                _ => {
                    last.insert(key, d.id.seq);
                }
            }
        }
        for p in &owed {
            if seen.contains(&p.id) {
                v.got += 1;
            } else {
                v.missing += 1;
                if v.missing_examples.len() < 10 {
                    v.missing_examples.push(p.id);
                }
            }
        }
        verdict.missing += v.missing;
        verdict.duplicates += v.duplicates;
        verdict.out_of_order += v.out_of_order;
        verdict.spurious += v.spurious;
        verdict.unknown += v.unknown;
        verdict.units.push(v);
    }
    verdict
}

/// Deliveries (to every subscription) per bucket of `bucket_ms`, from 0 to `until_ms`.
pub fn timeline(subs: &[SubscriberHistory], bucket_ms: u64, until_ms: u64) -> Vec<u64> {
    let bucket_ms = bucket_ms.max(1);
    let n = (until_ms / bucket_ms + 1) as usize;
    let mut counts = vec![0u64; n];
    for d in subs.iter().flat_map(|s| &s.deliveries) {
        if let Some(c) = counts.get_mut((d.at_ms / bucket_ms) as usize) {
            *c += 1;
        }
    }
    counts
}

/// The longest stretch without any delivery to `subs` that overlaps
/// `[at_ms, at_ms + window_ms]` (the delivery gap a fault at `at_ms` caused), in ms.
pub fn gap_around(subs: &[SubscriberHistory], at_ms: u64, window_ms: u64) -> u64 {
    let mut times: Vec<u64> = subs
        .iter()
        .flat_map(|s| s.deliveries.iter().map(|d| d.at_ms))
        .collect();
    times.sort_unstable();
    gap_in(&times, at_ms, at_ms + window_ms)
}

/// The longest stretch between consecutive `times` (sorted) that overlaps `[from, to]`.
fn gap_in(times: &[u64], from: u64, to: u64) -> u64 {
    // The deliveries just before and after the window bound it.
    let after = times.partition_point(|&t| t <= from);
    let mut prev = if after > 0 { times[after - 1] } else { from };
    let mut gap = 0;
    for &t in &times[after..] {
        gap = gap.max(t - prev);
        prev = t;
        if t >= to {
            return gap;
        }
    }
    // Nothing after the window's end: the gap runs at least to its end.
    gap.max(to.saturating_sub(prev))
}

/// How long each topic's deliveries paused in each window `[from, to]`: per window, one
/// value per (unit, topic) — the longest stretch without a delivery of that topic's events
/// to that unit overlapping the window, in ms. Filtered units are left out (the gaps between
/// the events they select are the filter's, not the cluster's), and so are (unit, topic)
/// pairs with fewer than `min_deliveries` deliveries over the run (too sparse to pause).
pub fn topic_pauses(
    publishes: &[PublishRecord],
    subs: &[SubscriberHistory],
    windows: &[(u64, u64)],
    min_deliveries: usize,
) -> Vec<Vec<u64>> {
    let topic_of: HashMap<EventId, &str> =
        publishes.iter().map(|p| (p.id, p.topic.as_str())).collect();
    let mut series: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for s in subs.iter().filter(|s| s.k_in.is_none()) {
        for d in &s.deliveries {
            if let Some(t) = topic_of.get(&d.id) {
                series.entry((&s.unit, t)).or_default().push(d.at_ms);
            }
        }
    }
    for times in series.values_mut() {
        times.sort_unstable();
    }
    series.retain(|_, times| times.len() >= min_deliveries);
    windows
        .iter()
        .map(|&(from, to)| {
            series
                .values()
                .filter(|times| times.first().is_some_and(|&f| f <= from))
                .map(|times| gap_in(times, from, to))
                .collect()
        })
        .collect()
}

/// A distribution's median, 99th percentile (nearest rank) and maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Values it was taken over.
    pub n: usize,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Spread {
    /// The spread of `values` (`None` when there are none).
    pub fn of(values: impl IntoIterator<Item = u64>) -> Option<Spread> {
        let mut v: Vec<u64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Spread {
            n: v.len(),
            p50: rank(0.5),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests;
