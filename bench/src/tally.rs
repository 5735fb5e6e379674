//! Delivery accounting: the pure part of every run. Subscribers record what reached them; the
//! run adds what was published and what should have arrived; [`Tally::summary`] turns that into
//! the figures a report shows (rates, the delivery ratio, latency percentiles).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to this bound (60 s); longer ones are
/// clamped to it.
pub const LATENCY_MAX_US: u64 = 60_000_000;

/// What subscribers saw.
#[derive(Debug, Clone)]
pub struct Tally {
    latency_us: Histogram<u64>,
    /// Notifications counted as delivered (for client-side filtering: matching subscribers).
    pub delivered: u64,
    /// Payload bytes that reached subscriber connections.
    pub received_bytes: u64,
    /// Of those, bytes no subscriber wanted (client-side filtering threw them away).
    pub wasted_bytes: u64,
    /// Payloads of another run (a different nonce) or without a stamp; not counted.
    pub foreign: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("1 µs to 60 s at 3 significant digits are valid bounds"),
            delivered: 0,
            received_bytes: 0,
            wasted_bytes: 0,
            foreign: 0,
        }
    }

    /// Records one delivery that took `latency_ns`.
    pub fn record(&mut self, latency_ns: u64) {
        self.delivered += 1;
        let us = (latency_ns / 1_000).clamp(1, LATENCY_MAX_US);
        // Within bounds after the clamp, so the histogram accepts it.
        let _ = self.latency_us.record(us);
    }

    /// Adds another tally's counts and latencies to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.received_bytes += other.received_bytes;
        self.wasted_bytes += other.wasted_bytes;
        self.foreign += other.foreign;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }

    /// The latency at quantile `q` (0..=1) in µs; 0 with no samples.
    pub fn latency_quantile_us(&self, q: f64) -> u64 {
        if self.latency_us.is_empty() {
            0
        } else {
            self.latency_us.value_at_quantile(q)
        }
    }

    /// The run's figures, given what the publishers did.
    pub fn summary(&self, published: &Published) -> Summary {
        let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Summary {
            published: published.events,
            published_per_s: rate(published.events, published.publish_secs),
            expected: published.expected_deliveries,
            delivered: self.delivered,
            delivered_per_s: rate(self.delivered, published.receive_secs),
            delivery_ratio: if published.expected_deliveries == 0 {
                0.0
            } else {
                self.delivered as f64 / published.expected_deliveries as f64
            },
            latency_p50_us: self.latency_quantile_us(0.50),
            latency_p99_us: self.latency_quantile_us(0.99),
            latency_p999_us: self.latency_quantile_us(0.999),
            latency_max_us: if self.latency_us.is_empty() {
                0
            } else {
                self.latency_us.max()
            },
            received_bytes: self.received_bytes,
            wasted_bytes: self.wasted_bytes,
            foreign: self.foreign,
        }
    }
}

/// What the publishers did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Published {
    /// Events handed to the client library.
    pub events: u64,
    /// Notifications those events should produce (events × matching subscribers).
    pub expected_deliveries: u64,
    /// How long publishing ran.
    pub publish_secs: f64,
    /// From the first publish to the last delivery (at least the publishing time): the window
    /// deliveries are counted in.
    pub receive_secs: f64,
}

/// A run's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Events published.
    pub published: u64,
    /// Events published per second.
    pub published_per_s: f64,
    /// Notifications that should have arrived.
    pub expected: u64,
    /// Notifications that arrived.
    pub delivered: u64,
    /// Notifications per second, over the receive window.
    pub delivered_per_s: f64,
    /// delivered ÷ expected: below 1 something was lost, above 1 something came twice.
    pub delivery_ratio: f64,
    /// Publish → notify latency, median, µs.
    pub latency_p50_us: u64,
    /// 99th percentile, µs.
    pub latency_p99_us: u64,
    /// 99.9th percentile, µs.
    pub latency_p999_us: u64,
    /// Largest, µs.
    pub latency_max_us: u64,
    /// Payload bytes that reached subscribers.
    pub received_bytes: u64,
    /// Payload bytes no subscriber wanted.
    pub wasted_bytes: u64,
    /// Deliveries from another run, not counted.
    pub foreign: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_stream_gives_the_known_figures() {
        // 1..=1000 µs, once each, split over two subscribers and merged.
        let mut a = Tally::new();
        let mut b = Tally::new();
        for us in 1..=1000u64 {
            let t = if us % 2 == 0 { &mut a } else { &mut b };
            t.record(us * 1_000);
            t.received_bytes += 128;
        }
        a.merge(&b);
        let s = a.summary(&Published {
            events: 500,
            expected_deliveries: 1000,
            publish_secs: 0.5,
            receive_secs: 2.0,
        });
        assert_eq!(s.delivered, 1000);
        assert_eq!(s.published_per_s, 1000.0);
        assert_eq!(s.delivered_per_s, 500.0);
        assert_eq!(s.delivery_ratio, 1.0);
        assert_eq!(s.received_bytes, 128_000);
        // hdrhistogram at 3 significant digits is exact below 2048.
        assert_eq!(s.latency_p50_us, 500);
        assert_eq!(s.latency_p99_us, 990);
        assert_eq!(s.latency_p999_us, 999);
        assert_eq!(s.latency_max_us, 1000);
    }

    #[test]
    fn the_delivery_ratio_catches_one_lost_message() {
        let mut t = Tally::new();
        for _ in 0..9_999 {
            t.record(100_000);
        }
        let s = t.summary(&Published {
            events: 100,
            expected_deliveries: 10_000,
            publish_secs: 1.0,
            receive_secs: 1.0,
        });
        assert!(s.delivery_ratio < 1.0, "{}", s.delivery_ratio);
        assert_eq!(s.expected - s.delivered, 1);
    }

    #[test]
    fn sub_microsecond_and_huge_latencies_are_clamped_not_lost() {
        let mut t = Tally::new();
        t.record(10);
        t.record(u64::MAX);
        assert_eq!(t.delivered, 2);
        assert_eq!(t.latency_quantile_us(0.0), 1);
        assert!(t.latency_quantile_us(1.0) >= LATENCY_MAX_US);
        let empty = Tally::new().summary(&Published::default());
        assert_eq!((empty.latency_p50_us, empty.delivery_ratio), (0, 0.0));
    }
}
