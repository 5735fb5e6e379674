//! A hierarchical timing wheel for subscription deadlines: insert is O(1), and each entry is
//! moved at most once per level before it fires, so the cost per expiry does not depend on how
//! many subscriptions there are.
//!
//! Level `L` has 64 slots of `64^L` ms each. An entry with deadline `d` sits at the level of
//! the highest 6-bit digit in which `d` differs from the wheel's current time, in slot
//! `d`'s digit at that level. Advancing empties every slot whose start is reached: level-0
//! entries fire, higher entries cascade down.

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Deadlines further than this from "now" are clamped to it (63 top-level slots, about 2.1
/// years), so a top-level entry never shares the current top slot with "now".
pub(crate) const HORIZON_MS: u64 = 63 << (SLOT_BITS as usize * (LEVELS - 1));

#[derive(Debug)]
pub(crate) struct Wheel<E> {
    /// Every entry with a deadline at or before `now` has been returned.
    now: u64,
    slots: Vec<Vec<(u64, E)>>,
    occupied: [u64; LEVELS],
    /// Entries inserted with a deadline at or before `now`.
    due: Vec<E>,
    len: usize,
}

fn level_for(now: u64, deadline: u64) -> usize {
    let masked = (now ^ deadline) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    (significant / SLOT_BITS as usize).min(LEVELS - 1)
}

fn slot_for(level: usize, deadline: u64) -> usize {
    ((deadline >> (level * SLOT_BITS as usize)) as usize) & (SLOTS - 1)
}

impl<E> Wheel<E> {
    pub(crate) fn new(now: u64) -> Wheel<E> {
        Wheel {
            now,
            slots: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; LEVELS],
            due: Vec::new(),
            len: 0,
        }
    }

    /// Number of entries held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, deadline: u64, entry: E) {
        self.len += 1;
        if deadline <= self.now {
            self.due.push(entry);
            return;
        }
        let deadline = deadline.min(self.now + HORIZON_MS - 1);
        self.place(deadline, entry);
    }

    fn place(&mut self, deadline: u64, entry: E) {
        let level = level_for(self.now, deadline);
        let slot = slot_for(level, deadline);
        self.slots[level * SLOTS + slot].push((deadline, entry));
        self.occupied[level] |= 1 << slot;
    }

    /// The earliest time at which [`Wheel::advance`] may return something: a lower bound on
    /// the next deadline, exact for near ones.
    pub(crate) fn next_wakeup(&self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(self.now);
        }
        (0..LEVELS)
            .filter_map(|l| self.next_slot(l))
            .map(|(_, start)| start)
            .min()
    }

    /// The next occupied slot of `level` from the current position on, with its start.
    /// Only the top level can wrap (an entry in the next top-level cycle, when a deadline's
    /// digits carried past the top); lower levels always hold slots at or after the position.
    fn next_slot(&self, level: usize) -> Option<(usize, u64)> {
        if self.occupied[level] == 0 {
            return None;
        }
        let shift = level * SLOT_BITS as usize;
        let pos = ((self.now >> shift) as usize) & (SLOTS - 1);
        let zeros = self.occupied[level]
            .rotate_right(pos as u32)
            .trailing_zeros() as usize;
        let slot = (pos + zeros) % SLOTS;
        let level_range = 1u64 << (shift + SLOT_BITS as usize);
        let base = self.now & !(level_range - 1);
        let mut start = base + ((slot as u64) << shift);
        if slot < pos {
            start += level_range;
        }
        Some((slot, start.max(self.now)))
    }

    /// Moves time to `to` and appends every entry whose deadline is at or before it.
    pub(crate) fn advance(&mut self, to: u64, out: &mut Vec<E>) {
        self.len -= self.due.len();
        out.append(&mut self.due);
        if to <= self.now {
            return;
        }
        loop {
            let next = (0..LEVELS)
                .filter_map(|l| self.next_slot(l).map(|(s, start)| (start, l, s)))
                .min_by_key(|(start, l, _)| (*start, *l));
            let Some((start, level, slot)) = next else {
                break;
            };
            if start > to {
                break;
            }
            self.now = start;
            self.occupied[level] &= !(1 << slot);
            let entries = std::mem::take(&mut self.slots[level * SLOTS + slot]);
            for (deadline, e) in entries {
                if deadline <= self.now {
                    self.len -= 1;
                    out.push(e);
                } else {
                    self.place(deadline, e);
                }
            }
        }
        self.now = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut w = Wheel::new(0);
        w.insert(100, 'a');
        w.insert(5000, 'b');
        w.insert(70, 'c');
        let mut out = vec![];
        w.advance(69, &mut out);
        assert!(out.is_empty());
        w.advance(70, &mut out);
        assert_eq!(out, vec!['c']);
        w.advance(4999, &mut out);
        assert_eq!(out, vec!['c', 'a']);
        w.advance(5000, &mut out);
        assert_eq!(out, vec!['c', 'a', 'b']);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_wakeup(), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Against a model (including deadlines that carry past the top level): after each advance, exactly the entries with deadline <= now have
        /// fired, and `next_wakeup` never skips past a pending deadline.
        #[test]
        fn equals_a_sorted_model(
            start in prop_oneof![0u64..1_000_000, Just((1u64 << 36) - 3), Just((1u64 << 30) * 63 - 2)],
            ops in prop::collection::vec(
                (prop_oneof![0u64..300_000, 0u64..(1 << 32)], prop_oneof![0u64..100_000, 0u64..(1 << 31)]),
                1..200,
            ),
        ) {
            let mut w = Wheel::new(start);
            let mut now = start;
            let mut pending: Vec<(u64, usize)> = vec![];
            let mut fired = vec![];
            for (i, (delta, step)) in ops.into_iter().enumerate() {
                let deadline = now + delta;
                w.insert(deadline, i);
                pending.push((deadline, i));
                if let Some(wake) = w.next_wakeup() {
                    let earliest = pending.iter().map(|(d, _)| *d).min().unwrap();
                    prop_assert!(wake <= earliest.max(now));
                }
                now += step;
                w.advance(now, &mut fired);
                let mut want: Vec<usize> = pending.iter().filter(|(d, _)| *d <= now).map(|(_, i)| *i).collect();
                pending.retain(|(d, _)| *d > now);
                want.sort();
                fired.sort();
                prop_assert_eq!(&fired, &want);
                fired.clear();
                prop_assert_eq!(w.len(), pending.len());
            }
        }
    }
}
