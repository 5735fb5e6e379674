//! Replication rules, pure (partitioned mode with R ≥ 2): which owner of a topic dispatches
//! (the first live one), what a replica holds for a dispatcher until it is released, and
//! when a dispatcher may release an event (every at-least-once notification for it
//! acknowledged).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

/// The dispatcher among a topic's `owners` (primary first): the first one `live` accepts.
pub fn dispatcher<'a>(owners: &[&'a str], live: impl Fn(&str) -> bool) -> Option<&'a str> {
    owners.iter().copied().find(|o| live(o))
}

/// Events a replica holds for their dispatchers until released, at most `max` in all (the
/// oldest go first past that, and are counted).
#[derive(Debug)]
pub struct Held<K, E> {
    by_dispatcher: HashMap<String, BTreeMap<u64, (K, E)>>,
    index: HashMap<K, (String, u64)>,
    order: VecDeque<(String, u64)>,
    next: u64,
    max: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, E> Held<K, E> {
    /// An empty store of at most `max` events.
    pub fn new(max: usize) -> Held<K, E> {
        Held {
            by_dispatcher: HashMap::new(),
            index: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            max: max.max(1),
            evicted: 0,
        }
    }

    /// Holds `event` (known as `key`) for `dispatcher`; a key held already is kept as is.
    pub fn hold(&mut self, dispatcher: &str, key: K, event: E) {
        if self.index.contains_key(&key) {
            return;
        }
        while self.index.len() >= self.max {
            let Some((d, n)) = self.order.pop_front() else {
                break;
            };
            if let Some((k, _)) = self.by_dispatcher.get_mut(&d).and_then(|m| m.remove(&n)) {
                self.index.remove(&k);
                self.evicted += 1;
            }
        }
        self.next += 1;
        let n = self.next;
        self.by_dispatcher
            .entry(dispatcher.to_owned())
            .or_default()
            .insert(n, (key.clone(), event));
        self.index.insert(key, (dispatcher.to_owned(), n));
        self.order.push_back((dispatcher.to_owned(), n));
    }

    /// The dispatcher released `key`.
    pub fn release(&mut self, key: &K) -> bool {
        match self.index.remove(key) {
            Some((d, n)) => {
                if let Some(m) = self.by_dispatcher.get_mut(&d) {
                    m.remove(&n);
                }
                self.compact();
                true
            }
            None => false,
        }
    }

    /// Takes everything held for `dispatcher` (it died), oldest first.
    pub fn take(&mut self, dispatcher: &str) -> Vec<(K, E)> {
        let Some(m) = self.by_dispatcher.remove(dispatcher) else {
            return Vec::new();
        };
        let out: Vec<(K, E)> = m.into_values().collect();
        for (k, _) in &out {
            self.index.remove(k);
        }
        self.compact();
        out
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Events dropped to stay within the bound.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Drops the order entries of events no longer held once they pile up (amortized).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.index.len() + 1024 {
            let by = &self.by_dispatcher;
            self.order
                .retain(|(d, n)| by.get(d).is_some_and(|m| m.contains_key(n)));
        }
    }
}

/// The dispatcher's side: per event, the holders to release it at and how many of its
/// at-least-once notifications are unacknowledged. At most `max` events are tracked (the
/// oldest is released early past that).
#[derive(Debug)]
pub struct Releases<K> {
    pending: HashMap<K, (u32, Vec<String>)>,
    order: VecDeque<K>,
    ready: BTreeMap<String, Vec<K>>,
    max: usize,
}

impl<K: Hash + Eq + Clone> Releases<K> {
    /// Nothing tracked.
    pub fn new(max: usize) -> Releases<K> {
        Releases {
            pending: HashMap::new(),
            order: VecDeque::new(),
            ready: BTreeMap::new(),
            max: max.max(1),
        }
    }

    /// `key` was dispatched with `unacked` at-least-once notifications and is held at
    /// `holders`. With nothing to wait for it is ready at once.
    pub fn dispatched(&mut self, key: K, unacked: u32, holders: Vec<String>) {
        if holders.is_empty() {
            return;
        }
        if unacked == 0 {
            self.ready_at(&key, holders);
            return;
        }
        while self.pending.len() >= self.max {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, h)) = self.pending.remove(&old) {
                self.ready_at(&old, h);
            }
        }
        self.order.push_back(key.clone());
        self.pending.insert(key, (unacked, holders));
    }

    /// One at-least-once notification of `key` was acknowledged (or handed over).
    pub fn acked(&mut self, key: &K) {
        let done = match self.pending.get_mut(key) {
            Some((n, _)) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if done {
            if let Some((_, h)) = self.pending.remove(key) {
                self.ready_at(key, h);
            }
        }
        if self.order.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.order.retain(|k| pending.contains_key(k));
        }
    }

    fn ready_at(&mut self, key: &K, holders: Vec<String>) {
        for h in holders {
            self.ready.entry(h).or_default().push(key.clone());
        }
    }

    /// What to release now, per holder.
    pub fn take_ready(&mut self) -> BTreeMap<String, Vec<K>> {
        std::mem::take(&mut self.ready)
    }

    /// Events still waiting for acknowledgements.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_live_owner_dispatches() {
        let owners = ["a", "b", "c"];
        assert_eq!(dispatcher(&owners, |_| true), Some("a"));
        assert_eq!(dispatcher(&owners, |o| o != "a"), Some("b"));
        assert_eq!(dispatcher(&owners, |_| false), None);
    }

    #[test]
    fn a_replica_holds_until_released_and_hands_a_dead_dispatchers_events_over_in_order() {
        let mut h: Held<u32, &str> = Held::new(10);
        h.hold("a", 1, "e1");
        h.hold("a", 2, "e2");
        h.hold("b", 3, "e3");
        h.hold("a", 1, "again");
        assert_eq!(h.len(), 3);
        assert!(h.release(&2));
        assert!(!h.release(&2));
        h.hold("a", 4, "e4");
        assert_eq!(h.take("a"), vec![(1, "e1"), (4, "e4")]);
        assert_eq!(h.len(), 1);
        assert!(h.take("a").is_empty());
    }

    #[test]
    fn holding_is_bounded_oldest_first() {
        let mut h: Held<u32, ()> = Held::new(2);
        h.hold("a", 1, ());
        h.hold("a", 2, ());
        h.hold("a", 3, ());
        assert_eq!(h.len(), 2);
        assert_eq!(h.evicted(), 1);
        assert_eq!(h.take("a"), vec![(2, ()), (3, ())]);
    }

    #[test]
    fn an_event_is_released_once_every_notification_is_acked() {
        let mut r: Releases<u32> = Releases::new(10);
        r.dispatched(1, 2, vec!["b".into()]);
        r.dispatched(2, 0, vec!["b".into(), "c".into()]);
        r.dispatched(3, 1, Vec::new());
        let ready = r.take_ready();
        assert_eq!(ready.get("b"), Some(&vec![2]));
        assert_eq!(ready.get("c"), Some(&vec![2]));
        r.acked(&1);
        assert!(r.take_ready().is_empty());
        r.acked(&1);
        assert_eq!(r.take_ready().get("b"), Some(&vec![1]));
        assert!(r.is_empty());
    }

    #[test]
    fn tracking_is_bounded_by_releasing_early() {
        let mut r: Releases<u32> = Releases::new(1);
        r.dispatched(1, 5, vec!["b".into()]);
        r.dispatched(2, 5, vec!["b".into()]);
        assert_eq!(r.take_ready().get("b"), Some(&vec![1]));
        assert_eq!(r.len(), 1);
    }
}
