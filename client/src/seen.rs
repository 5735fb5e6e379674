//! Event ids a subscription has seen, to drop repeats (a redelivery, a replica's takeover, a
//! hedged publish delivered twice). A publisher numbers its events in order, so per publisher
//! the SDK keeps the highest number seen and a bitmap of the `WINDOW` numbers below it:
//! 8 KiB per publisher, instead of a hashed entry per event.

use std::collections::VecDeque;

use hashbrown::HashMap;
use sift_protocol::{EventId, PublisherId};

/// Sequence numbers below a publisher's highest that are remembered.
pub(crate) const WINDOW: u64 = 65_536;
const WORDS: usize = (WINDOW / 64) as usize;
/// Publishers remembered per subscription; beyond that the one heard from least recently is
/// forgotten.
pub(crate) const PUBLISHERS_MAX: usize = 256;

#[derive(Debug)]
struct Publisher {
    /// The highest sequence number seen.
    high: u64,
    /// Bit `seq % WINDOW` is set when `seq` (one of the `WINDOW` numbers up to `high`) was seen.
    bits: Box<[u64; WORDS]>,
    /// When it was last heard from (ms).
    used: u64,
    /// Bits set in `bits`: how many of its events in the window this subscription saw.
    count: u64,
}

impl Publisher {
    fn new(seq: u64, now: u64) -> Publisher {
        let mut p = Publisher {
            high: seq,
            bits: Box::new([0; WORDS]),
            used: now,
            count: 0,
        };
        p.set(seq);
        p
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Self::slot(seq);
        if self.bits[w] & b == 0 {
            self.count += 1;
        }
        self.bits[w] |= b;
    }

    /// An id falling out of the window is worth keeping elsewhere when the window holds
    /// few of this subscription's events (its publisher's numbers move on faster); when it
    /// holds many, the window already covers the subscription's recent deliveries.
    fn sparse(&self) -> bool {
        self.count < WINDOW / 2
    }

    /// `Some(seen)` for a number inside the window, `None` for one too old to tell.
    fn seen(&self, seq: u64) -> Option<bool> {
        if seq > self.high {
            return Some(false);
        }
        if self.high - seq >= WINDOW {
            return None;
        }
        let (w, b) = Self::slot(seq);
        Some(self.bits[w] & b != 0)
    }

    /// Moves the window up to `seq` (newer than `high`); the numbers it lets go of that were
    /// seen go to `fell_out`.
    fn advance(&mut self, seq: u64, mut fell_out: impl FnMut(u64)) {
        let low = self.high.saturating_sub(WINDOW - 1);
        let keep = self.sparse();
        if seq - self.high >= WINDOW {
            // Every number of the old window falls out.
            if keep {
                for q in low..=self.high {
                    if self.seen(q) == Some(true) {
                        fell_out(q);
                    }
                }
            }
            self.bits.fill(0);
            self.count = 0;
        } else {
            for q in self.high + 1..=seq {
                // Slot q held q - WINDOW, which falls out now.
                let (w, b) = Self::slot(q);
                if self.bits[w] & b != 0 {
                    self.count -= 1;
                    if keep && q >= WINDOW {
                        fell_out(q - WINDOW);
                    }
                }
                self.bits[w] &= !b;
            }
        }
        self.high = seq;
    }
}

/// The ids one subscription has seen, by publisher, remembered for `ttl_ms` after their
/// publisher was last heard from.
#[derive(Debug)]
pub(crate) struct SeenIds {
    by: HashMap<PublisherId, Publisher>,
    /// Ids that fell out of their publisher's window (its numbers moved on faster than this
    /// subscription's events), the last `OLDER_MAX` of them: so that a late repeat is still
    /// known, as with a window of this subscription's own last deliveries.
    older: hashbrown::HashSet<EventId>,
    older_order: VecDeque<EventId>,
    ttl_ms: u64,
}

/// Ids kept after they fell out of their publisher's window.
pub(crate) const OLDER_MAX: usize = 65_536;

impl SeenIds {
    pub(crate) fn new(ttl_ms: u64) -> SeenIds {
        SeenIds {
            by: HashMap::new(),
            older: hashbrown::HashSet::new(),
            older_order: VecDeque::new(),
            ttl_ms,
        }
    }

    /// True when `id` was recorded and is still remembered. An id more than `WINDOW` numbers
    /// below its publisher's newest is not: a repeat that late gets through, rather than
    /// risk dropping an event never seen.
    pub(crate) fn contains(&self, id: &EventId) -> bool {
        match self.by.get(&id.publisher).and_then(|p| p.seen(id.seq)) {
            Some(seen) => seen,
            None => self.older.contains(id),
        }
    }

    fn keep_older(&mut self, id: EventId) {
        if self.older_order.len() >= OLDER_MAX {
            if let Some(old) = self.older_order.pop_front() {
                self.older.remove(&old);
            }
        }
        if self.older.insert(id) {
            self.older_order.push_back(id);
        }
    }

    /// Records `id` at `now` (ms); true the first time.
    pub(crate) fn first_time(&mut self, now: u64, id: EventId) -> bool {
        if let Some(p) = self.by.get_mut(&id.publisher) {
            if now.saturating_sub(p.used) < self.ttl_ms {
                p.used = now;
                let mut fell_out = Vec::new();
                let verdict = match p.seen(id.seq) {
                    Some(true) => Some(false),
                    Some(false) => {
                        if id.seq > p.high {
                            p.advance(id.seq, |q| fell_out.push(q));
                        }
                        p.set(id.seq);
                        Some(true)
                    }
                    // Below the window: the ids kept after they fell out of it decide.
                    None => None,
                };
                for seq in fell_out {
                    self.keep_older(EventId {
                        publisher: id.publisher,
                        seq,
                    });
                }
                return match verdict {
                    Some(first) => first,
                    None if self.older.contains(&id) => false,
                    None => {
                        self.keep_older(id);
                        true
                    }
                };
            }
            // Not heard from for longer than the time to live: start over.
            self.by.remove(&id.publisher);
        }
        if self.by.len() >= PUBLISHERS_MAX {
            self.by
                .retain(|_, p| now.saturating_sub(p.used) < self.ttl_ms);
        }
        if self.by.len() >= PUBLISHERS_MAX {
            if let Some(oldest) = self.by.iter().min_by_key(|(_, p)| p.used).map(|(k, _)| *k) {
                self.by.remove(&oldest);
            }
        }
        self.by.insert(id.publisher, Publisher::new(id.seq, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn id(p: u64, seq: u64) -> EventId {
        EventId {
            publisher: PublisherId(u128::from(p)),
            seq,
        }
    }

    #[test]
    fn repeats_are_dropped_in_any_order_per_publisher() {
        let mut s = SeenIds::new(60_000);
        assert!(s.first_time(0, id(1, 10)));
        assert!(s.first_time(0, id(1, 5)), "older but never seen");
        assert!(!s.first_time(0, id(1, 10)));
        assert!(!s.first_time(0, id(1, 5)));
        assert!(s.first_time(0, id(2, 5)), "another publisher's 5");
        assert!(s.contains(&id(1, 10)) && !s.contains(&id(1, 11)));
    }

    #[test]
    fn a_repeat_far_below_the_newest_is_still_known() {
        let mut s = SeenIds::new(60_000);
        assert!(s.first_time(0, id(1, 1)));
        assert!(
            s.first_time(0, id(1, 1 + 3 * WINDOW)),
            "the publisher moved on far"
        );
        assert!(
            s.contains(&id(1, 1)),
            "kept after it fell out of the window"
        );
        assert!(!s.first_time(0, id(1, 1)));
        assert!(s.first_time(0, id(1, 2)), "never seen: delivered");
        assert!(!s.first_time(0, id(1, 2)));
        assert!(!s.first_time(0, id(1, 1 + 3 * WINDOW)));
    }

    #[test]
    fn a_subscription_that_sees_most_of_a_publisher_keeps_nothing_beside_the_window() {
        let mut s = SeenIds::new(u64::MAX);
        for seq in 0..3 * WINDOW {
            assert!(s.first_time(0, id(1, seq)));
        }
        assert!(
            s.older.is_empty(),
            "the window covers its recent deliveries"
        );
        assert!(!s.first_time(0, id(1, 3 * WINDOW - 1)));
        assert!(!s.first_time(0, id(1, 2 * WINDOW)));
    }

    #[test]
    fn a_publisher_not_heard_from_for_the_ttl_is_forgotten() {
        let mut s = SeenIds::new(1_000);
        assert!(s.first_time(0, id(1, 1)));
        assert!(!s.first_time(999, id(1, 1)));
        assert!(s.first_time(1_999 + 1, id(1, 1)));
    }

    #[test]
    fn publishers_beyond_the_most_evict_the_least_recently_heard() {
        let mut s = SeenIds::new(u64::MAX);
        for p in 0..PUBLISHERS_MAX as u64 {
            s.first_time(p, id(p, 1));
        }
        s.first_time(10_000, id(0, 2)); // publisher 0 heard again
        s.first_time(10_001, id(9_999, 1)); // one more: publisher 1 goes
        assert!(s.contains(&id(0, 1)));
        assert!(!s.contains(&id(1, 1)));
        assert_eq!(s.by.len(), PUBLISHERS_MAX);
    }

    proptest! {
        /// Against a set of everything seen: never drops an id not seen before, and drops
        /// every repeat (fewer ids than the window and the older ids keep).
        #[test]
        fn agrees_with_a_set_inside_the_window(
            ops in proptest::collection::vec((0u64..3, 0u64..200_000), 1..400)
        ) {
            let mut s = SeenIds::new(u64::MAX);
            let mut set = HashSet::new();
            for (p, seq) in ops {
                let e = id(p, seq);
                let first = s.first_time(0, e);
                // Fewer ids than OLDER_MAX: every repeat is known, wherever the window is.
                if !set.contains(&e) {
                    prop_assert!(first, "a new id was dropped: {e:?}");
                } else {
                    prop_assert!(!first, "a repeat got through: {e:?}");
                }
                set.insert(e);
            }
        }
    }
}
