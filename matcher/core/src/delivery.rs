//! Delivery bookkeeping, pure: the at-least-once window of a subscription (deliveries sent and
//! not yet acknowledged, redelivered after a timeout) and the window of recently seen event
//! ids that makes acknowledged publishes idempotent.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::Hash;

use crate::types::Timestamp;

/// The unacknowledged deliveries of one at-least-once subscription.
///
/// Each delivery gets a sequence number from 1; it stays in the window until acked and is due
/// for redelivery every `ack_timeout_ms` until then. The window holds at most `max` deliveries:
/// [`AckWindow::offer`] refuses more, and the caller keeps the event queued until an ack makes
/// room, so nothing is dropped.
#[derive(Debug)]
pub struct AckWindow<T> {
    next: u64,
    max: usize,
    ack_timeout_ms: u64,
    /// Delivery → (item, when it is due again, times sent).
    unacked: BTreeMap<u64, (T, u64, u32)>,
}

/// A delivery to (re)send.
#[derive(Debug, PartialEq, Eq)]
pub struct Due<'a, T> {
    /// Its sequence number.
    pub delivery: u64,
    /// The item.
    pub item: &'a T,
    /// True when it was sent before.
    pub redelivered: bool,
}

impl<T> AckWindow<T> {
    /// An empty window of `max` deliveries (at least 1) redelivered after `ack_timeout_ms`.
    pub fn new(max: usize, ack_timeout_ms: u64) -> AckWindow<T> {
        AckWindow {
            next: 1,
            max: max.max(1),
            ack_timeout_ms,
            unacked: BTreeMap::new(),
        }
    }

    /// Deliveries waiting for an ack.
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// True when nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// True when the window is full.
    pub fn is_full(&self) -> bool {
        self.unacked.len() >= self.max
    }

    /// Takes `item` as a new delivery sent at `now`; returns its sequence number, or gives
    /// the item back when the window is full.
    pub fn offer(&mut self, now: Timestamp, item: T) -> Result<u64, T> {
        if self.is_full() {
            return Err(item);
        }
        let delivery = self.next;
        self.next += 1;
        self.unacked
            .insert(delivery, (item, now.0 + self.ack_timeout_ms, 1));
        Ok(delivery)
    }

    /// Acknowledges `delivery`; returns whether it was waiting (repeats and unknown numbers
    /// are ignored).
    pub fn ack(&mut self, delivery: u64) -> bool {
        self.unacked.remove(&delivery).is_some()
    }

    /// The deliveries whose ack is overdue at `now`, oldest first; each is due again one
    /// timeout later.
    pub fn due(&mut self, now: Timestamp) -> Vec<Due<'_, T>> {
        let timeout = self.ack_timeout_ms;
        let mut out = Vec::new();
        for (&delivery, (item, due, sent)) in self.unacked.iter_mut() {
            if *due <= now.0 {
                *due = now.0 + timeout;
                *sent += 1;
                out.push(Due {
                    delivery,
                    item: &*item,
                    redelivered: true,
                });
            }
        }
        out
    }

    /// When the next redelivery falls due.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.unacked
            .values()
            .map(|(_, due, _)| Timestamp(*due))
            .min()
    }
}

/// Recently seen ids, for at most `ttl_ms` and at most `max` of them (oldest forgotten first).
#[derive(Debug)]
pub struct DedupWindow<K> {
    seen: HashSet<K>,
    order: VecDeque<(u64, K)>,
    ttl_ms: u64,
    max: usize,
}

impl<K: Hash + Eq + Clone> DedupWindow<K> {
    /// A window remembering ids for `ttl_ms`, at most `max` of them.
    pub fn new(ttl_ms: u64, max: usize) -> DedupWindow<K> {
        DedupWindow {
            seen: HashSet::new(),
            order: VecDeque::new(),
            ttl_ms,
            max: max.max(1),
        }
    }

    /// Records `id` at `now`; returns true the first time, false for a repeat in the window.
    pub fn first_time(&mut self, now: Timestamp, id: K) -> bool {
        self.forget_old(now);
        if self.seen.contains(&id) {
            return false;
        }
        if self.order.len() >= self.max {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.clone());
        self.order.push_back((now.0, id));
        true
    }

    /// True when `id` is remembered (as of the last call that took a time).
    pub fn contains(&self, id: &K) -> bool {
        self.seen.contains(id)
    }

    fn forget_old(&mut self, now: Timestamp) {
        while let Some((t, _)) = self.order.front() {
            if now.0.saturating_sub(*t) < self.ttl_ms {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacked_deliveries_come_back_until_acked() {
        let mut w = AckWindow::new(2, 100);
        assert_eq!(w.offer(Timestamp(0), "a"), Ok(1));
        assert_eq!(w.offer(Timestamp(10), "b"), Ok(2));
        assert_eq!(w.offer(Timestamp(20), "c"), Err("c"), "the window is full");
        assert_eq!(w.next_deadline(), Some(Timestamp(100)));
        assert!(w.due(Timestamp(99)).is_empty());
        assert_eq!(
            w.due(Timestamp(100)),
            vec![Due {
                delivery: 1,
                item: &"a",
                redelivered: true
            }]
        );
        assert!(w.ack(2));
        assert!(!w.ack(2), "a repeated ack is ignored");
        assert!(!w.ack(77));
        assert_eq!(w.offer(Timestamp(150), "c"), Ok(3));
        let due: Vec<u64> = w
            .due(Timestamp(250))
            .into_iter()
            .map(|d| d.delivery)
            .collect();
        assert_eq!(due, vec![1, 3]);
        assert!(w.ack(1) && w.ack(3));
        assert!(w.is_empty() && w.next_deadline().is_none());
    }

    #[test]
    fn repeats_are_seen_within_the_window_only() {
        let mut d = DedupWindow::new(1000, 3);
        assert!(d.first_time(Timestamp(0), 1));
        assert!(!d.first_time(Timestamp(10), 1));
        assert!(d.first_time(Timestamp(20), 2));
        assert!(d.first_time(Timestamp(30), 3));
        // Capacity: the oldest (1) is forgotten to remember 4.
        assert!(d.first_time(Timestamp(40), 4));
        assert!(d.first_time(Timestamp(50), 1));
        // Time: everything older than the ttl is forgotten.
        assert!(d.first_time(Timestamp(2000), 2));
        assert_eq!(d.len(), 1);
    }
}
