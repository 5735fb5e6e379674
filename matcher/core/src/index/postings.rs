//! Slot lists and hash-keyed postings: the index's building blocks for equality, prefixes,
//! suffixes and plain lists. Removal is O(1) for large lists.

use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::{HashMap, HashSet};

/// A subscription's slot in the engine's record table.
pub(crate) type Slot = u32;

/// Lists longer than this become hash sets (O(1) removal).
const LIST_TO_SET_LEN: usize = 64;
/// Sets shorter than this go back to lists.
const SET_TO_LIST_LEN: usize = 16;

/// A multiset-free collection of slots: a vector while small, a hash set when large.
#[derive(Debug)]
pub(crate) enum SlotList {
    Vec(Vec<Slot>),
    Set(HashSet<Slot, BuildHasherDefault<SlotHasher>>),
}

impl Default for SlotList {
    fn default() -> SlotList {
        SlotList::Vec(Vec::new())
    }
}

impl SlotList {
    pub(crate) fn insert(&mut self, slot: Slot) {
        match self {
            SlotList::Vec(v) => {
                debug_assert!(!v.contains(&slot), "slot {slot} inserted twice");
                v.push(slot);
                if v.len() > LIST_TO_SET_LEN {
                    *self = SlotList::Set(v.iter().copied().collect());
                }
            }
            SlotList::Set(s) => {
                let fresh = s.insert(slot);
                debug_assert!(fresh, "slot {slot} inserted twice");
            }
        }
    }

    /// Removes `slot`; returns whether it was there.
    pub(crate) fn remove(&mut self, slot: Slot) -> bool {
        match self {
            SlotList::Vec(v) => match v.iter().position(|s| *s == slot) {
                Some(i) => {
                    v.swap_remove(i);
                    true
                }
                None => false,
            },
            SlotList::Set(s) => {
                let was = s.remove(&slot);
                if s.len() < SET_TO_LIST_LEN {
                    let mut v: Vec<Slot> = s.iter().copied().collect();
                    v.sort_unstable();
                    *self = SlotList::Vec(v);
                }
                was
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            SlotList::Vec(v) => v.len(),
            SlotList::Set(s) => s.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(Slot)) {
        match self {
            SlotList::Vec(v) => v.iter().for_each(|s| f(*s)),
            SlotList::Set(s) => s.iter().for_each(|s| f(*s)),
        }
    }
}

/// A fixed, seedless hasher for slot numbers (assigned by the engine, not by users), so that
/// iteration order and therefore match output order are deterministic.
#[derive(Default)]
pub(crate) struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = crate::keys::mix64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = crate::keys::mix64(n);
    }
}

/// Keys that are already hashes pass through.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Marks a map value as an index into `lists` rather than a single slot.
const LIST_BIT: u32 = 1 << 31;

/// Hash → slots, compact for the common case of one slot per key: the map holds the slot
/// itself, and only keys with several slots own a [`SlotList`].
#[derive(Debug, Default)]
pub(crate) struct Postings {
    map: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>,
    lists: Vec<SlotList>,
    free: Vec<u32>,
}

impl Postings {
    pub(crate) fn insert(&mut self, key: u64, slot: Slot) {
        debug_assert!(slot & LIST_BIT == 0);
        match self.map.entry(key) {
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(slot);
            }
            hashbrown::hash_map::Entry::Occupied(mut o) => {
                let cur = *o.get();
                if cur & LIST_BIT != 0 {
                    self.lists[(cur & !LIST_BIT) as usize].insert(slot);
                } else {
                    debug_assert_ne!(cur, slot, "slot inserted twice under one key");
                    let list = SlotList::Vec(vec![cur, slot]);
                    let idx = match self.free.pop() {
                        Some(i) => {
                            self.lists[i as usize] = list;
                            i
                        }
                        None => {
                            self.lists.push(list);
                            (self.lists.len() - 1) as u32
                        }
                    };
                    *o.get_mut() = idx | LIST_BIT;
                }
            }
        }
    }

    /// Removes `slot` from `key`; returns whether it was there.
    pub(crate) fn remove(&mut self, key: u64, slot: Slot) -> bool {
        let Some(cur) = self.map.get_mut(&key) else {
            return false;
        };
        if *cur & LIST_BIT == 0 {
            if *cur != slot {
                return false;
            }
            self.map.remove(&key);
            return true;
        }
        let idx = *cur & !LIST_BIT;
        let list = &mut self.lists[idx as usize];
        let was = list.remove(slot);
        if list.len() == 1 {
            let mut last = 0;
            list.for_each(|s| last = s);
            *cur = last;
            self.lists[idx as usize] = SlotList::default();
            self.free.push(idx);
        }
        was
    }

    pub(crate) fn get(&self, key: u64, f: impl FnMut(Slot)) {
        let Some(&cur) = self.map.get(&key) else {
            return;
        };
        if cur & LIST_BIT == 0 {
            let mut f = f;
            f(cur);
        } else {
            self.lists[(cur & !LIST_BIT) as usize].for_each(f);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(p: &Postings, key: u64) -> Vec<Slot> {
        let mut v = vec![];
        p.get(key, |s| v.push(s));
        v.sort();
        v
    }

    #[test]
    fn postings_grow_and_shrink() {
        let mut p = Postings::default();
        p.insert(1, 10);
        assert_eq!(collect(&p, 1), vec![10]);
        for s in 11..200 {
            p.insert(1, s);
        }
        assert_eq!(collect(&p, 1).len(), 190);
        for s in 11..200 {
            assert!(p.remove(1, s));
        }
        assert_eq!(collect(&p, 1), vec![10]);
        assert!(!p.remove(1, 11));
        assert!(p.remove(1, 10));
        assert!(p.is_empty());
        assert!(!p.remove(2, 1));
    }
}
