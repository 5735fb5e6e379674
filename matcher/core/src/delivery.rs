//! Delivery bookkeeping, pure: the at-least-once window of a subscription (deliveries sent and
//! not yet acknowledged, redelivered after a timeout) and the window of recently seen event
//! ids that makes acknowledged publishes idempotent.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::Hash;

use crate::types::Timestamp;

/// The unacknowledged deliveries of one at-least-once subscription.
///
/// Each delivery gets a sequence number from 1 and is known by its key (the event's id: an
/// ack names the event, so a notification handed over from another matcher is acked by the
/// same name). It stays in the window until acked and is due for redelivery every
/// `ack_timeout_ms` until then. The window holds at most `max` deliveries:
/// [`AckWindow::offer`] refuses more, and the caller keeps the event queued until an ack
/// makes room, so nothing is dropped.
#[derive(Debug)]
pub struct AckWindow<K, T> {
    next: u64,
    max: usize,
    ack_timeout_ms: u64,
    /// Delivery → entry.
    unacked: BTreeMap<u64, Entry<K, T>>,
    /// Key → delivery.
    by_key: HashMap<K, u64>,
    /// (When due, delivery), earliest first.
    due: BTreeSet<(u64, u64)>,
}

#[derive(Debug)]
struct Entry<K, T> {
    key: K,
    item: T,
    due: u64,
    sent: u32,
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

/// One unacknowledged delivery taken out of a window (to hand it over).
#[derive(Debug, PartialEq, Eq)]
pub struct Taken<K, T> {
    /// Its key.
    pub key: K,
    /// The item.
    pub item: T,
    /// When it is due again.
    pub due: Timestamp,
}

impl<K: Hash + Eq + Clone, T> AckWindow<K, T> {
    /// An empty window of `max` deliveries (at least 1) redelivered after `ack_timeout_ms`.
    pub fn new(max: usize, ack_timeout_ms: u64) -> AckWindow<K, T> {
        AckWindow {
            next: 1,
            max: max.max(1),
            ack_timeout_ms,
            unacked: BTreeMap::new(),
            by_key: HashMap::new(),
            due: BTreeSet::new(),
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

    /// True when `key` waits for an ack.
    pub fn contains(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }

    /// Takes `item` as a new delivery sent at `now`; returns its sequence number, or gives
    /// the item back when the window is full.
    pub fn offer(&mut self, now: Timestamp, key: K, item: T) -> Result<u64, T> {
        self.offer_due(key, item, now.plus_millis(self.ack_timeout_ms), 1)
    }

    /// Takes `item` as a delivery due (again) at `due`, sent `sent` times already (a
    /// delivery handed over from another matcher keeps its redelivery state).
    pub fn offer_due(&mut self, key: K, item: T, due: Timestamp, sent: u32) -> Result<u64, T> {
        if self.is_full() || self.by_key.contains_key(&key) {
            return Err(item);
        }
        let delivery = self.next;
        self.next += 1;
        self.by_key.insert(key.clone(), delivery);
        self.due.insert((due.0, delivery));
        self.unacked.insert(
            delivery,
            Entry {
                key,
                item,
                due: due.0,
                sent,
            },
        );
        Ok(delivery)
    }

    /// Acknowledges the delivery of `key`; returns whether it was waiting (repeats and
    /// unknown keys are ignored).
    pub fn ack(&mut self, key: &K) -> bool {
        let Some(delivery) = self.by_key.remove(key) else {
            return false;
        };
        if let Some(e) = self.unacked.remove(&delivery) {
            self.due.remove(&(e.due, delivery));
        }
        true
    }

    /// The deliveries whose ack is overdue at `now`, oldest first; each is due again one
    /// timeout later.
    pub fn due(&mut self, now: Timestamp) -> Vec<Due<'_, T>> {
        let mut fired = Vec::new();
        while let Some(&(due, delivery)) = self.due.first() {
            if due > now.0 {
                break;
            }
            self.due.pop_first();
            fired.push(delivery);
        }
        let again = now.0 + self.ack_timeout_ms;
        for &delivery in &fired {
            if let Some(e) = self.unacked.get_mut(&delivery) {
                e.due = again;
                e.sent += 1;
                self.due.insert((again, delivery));
            }
        }
        fired
            .into_iter()
            .filter_map(|delivery| {
                self.unacked.get(&delivery).map(|e| Due {
                    delivery,
                    item: &e.item,
                    redelivered: true,
                })
            })
            .collect()
    }

    /// Every unacknowledged delivery, oldest first, as a redelivery due at once (the
    /// subscriber moved to a new connection: what it had not acked goes there now).
    pub fn resend_all(&mut self, now: Timestamp) -> Vec<Due<'_, T>> {
        let again = now.0 + self.ack_timeout_ms;
        self.due.clear();
        for (&delivery, e) in self.unacked.iter_mut() {
            e.due = again;
            e.sent += 1;
            self.due.insert((again, delivery));
        }
        self.unacked
            .iter()
            .map(|(&delivery, e)| Due {
                delivery,
                item: &e.item,
                redelivered: true,
            })
            .collect()
    }

    /// Empties the window, oldest first (to hand its deliveries to another matcher).
    pub fn take_all(&mut self) -> Vec<Taken<K, T>> {
        self.by_key.clear();
        self.due.clear();
        std::mem::take(&mut self.unacked)
            .into_values()
            .map(|e| Taken {
                key: e.key,
                item: e.item,
                due: Timestamp(e.due),
            })
            .collect()
    }

    /// When the next redelivery falls due.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.due.first().map(|&(due, _)| Timestamp(due))
    }

    /// Every unacknowledged delivery, oldest first, left in place (to copy it to another
    /// matcher ahead of a handoff): its key, item and when it is due again.
    pub fn peek_all(&self) -> impl Iterator<Item = (&K, &T, Timestamp)> + '_ {
        self.unacked
            .values()
            .map(|e| (&e.key, &e.item, Timestamp(e.due)))
    }
}

/// Recently seen ids, for at most `ttl_ms` and at most `max` of them (oldest forgotten first).
#[derive(Debug)]
pub struct DedupWindow<K> {
    // foldhash (hashbrown's default): an id is looked up for every notification the SDK
    // takes and every acknowledged publish a matcher takes; SipHash showed in profiles.
    seen: hashbrown::HashSet<K>,
    order: VecDeque<(u64, K)>,
    ttl_ms: u64,
    max: usize,
}

impl<K: Hash + Eq + Clone> DedupWindow<K> {
    /// A window remembering ids for `ttl_ms`, at most `max` of them.
    pub fn new(ttl_ms: u64, max: usize) -> DedupWindow<K> {
        DedupWindow {
            seen: hashbrown::HashSet::new(),
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
        assert_eq!(w.offer(Timestamp(0), 'a', "a"), Ok(1));
        assert_eq!(w.offer(Timestamp(10), 'b', "b"), Ok(2));
        assert_eq!(
            w.offer(Timestamp(20), 'c', "c"),
            Err("c"),
            "the window is full"
        );
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
        assert!(w.ack(&'b'));
        assert!(!w.ack(&'b'), "a repeated ack is ignored");
        assert!(!w.ack(&'z'));
        assert_eq!(w.offer(Timestamp(150), 'c', "c"), Ok(3));
        let due: Vec<u64> = w
            .due(Timestamp(250))
            .into_iter()
            .map(|d| d.delivery)
            .collect();
        assert_eq!(due, vec![1, 3]);
        assert!(w.ack(&'a') && w.ack(&'c'));
        assert!(w.is_empty() && w.next_deadline().is_none());
    }

    #[test]
    fn handed_over_deliveries_keep_their_due_time_and_keys_are_unique() {
        let mut w = AckWindow::new(10, 100);
        assert_eq!(w.offer_due('x', 1, Timestamp(40), 3), Ok(1));
        assert_eq!(
            w.offer_due('x', 2, Timestamp(40), 1),
            Err(2),
            "one delivery per key"
        );
        assert_eq!(w.offer(Timestamp(0), 'y', 5), Ok(2));
        assert_eq!(w.next_deadline(), Some(Timestamp(40)));
        let all: Vec<u64> = w
            .resend_all(Timestamp(50))
            .iter()
            .map(|d| d.delivery)
            .collect();
        assert_eq!(all, vec![1, 2]);
        assert_eq!(w.next_deadline(), Some(Timestamp(150)));
        let taken = w.take_all();
        assert_eq!(
            taken.iter().map(|t| t.key).collect::<Vec<_>>(),
            vec!['x', 'y']
        );
        assert_eq!(taken[0].due, Timestamp(150));
        assert!(w.is_empty() && !w.contains(&'x'));
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
