//! `prefix(a, s)` and `suffix(a, s)`: postings keyed by a hash of `s`, plus the distinct
//! lengths in use. The hash is incremental (a seeded FNV-1a walk, finished with the length), so
//! one pass over a value yields the keys of all its prefixes (or, walking backwards, suffixes):
//! a query costs the value's length plus one probe per distinct length, however many lengths.

use std::hash::BuildHasher;

use smallvec::SmallVec;

use super::postings::{Postings, Slot};
use crate::keys::mix64;

#[derive(Debug, Default)]
pub(crate) struct AffixIndex {
    postings: Postings,
    /// Distinct affix lengths, ascending, with how many entries have each.
    lengths: SmallVec<[(usize, u32); 4]>,
}

/// Which end of the value an [`AffixIndex`] looks at.
#[derive(Clone, Copy, Debug)]
pub(crate) enum End {
    Prefix,
    Suffix,
}

const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn seed<S: BuildHasher>(state: &S, end: End) -> u64 {
    state.hash_one(matches!(end, End::Prefix))
}

fn step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

fn finish(h: u64, len: usize) -> u64 {
    mix64(h ^ (len as u64).rotate_left(32))
}

/// The key of an affix: its bytes walked from the value's end inwards.
fn key<S: BuildHasher>(state: &S, end: End, affix: &[u8]) -> u64 {
    let h = match end {
        End::Prefix => affix.iter().fold(seed(state, end), |h, b| step(h, *b)),
        End::Suffix => affix
            .iter()
            .rev()
            .fold(seed(state, end), |h, b| step(h, *b)),
    };
    finish(h, affix.len())
}

impl AffixIndex {
    pub(crate) fn insert<S: BuildHasher>(&mut self, state: &S, end: End, affix: &[u8], slot: Slot) {
        self.postings.insert(key(state, end, affix), slot);
        match self.lengths.binary_search_by_key(&affix.len(), |(l, _)| *l) {
            Ok(i) => self.lengths[i].1 += 1,
            Err(i) => self.lengths.insert(i, (affix.len(), 1)),
        }
    }

    pub(crate) fn remove<S: BuildHasher>(
        &mut self,
        state: &S,
        end: End,
        affix: &[u8],
        slot: Slot,
    ) -> bool {
        if !self.postings.remove(key(state, end, affix), slot) {
            return false;
        }
        if let Ok(i) = self.lengths.binary_search_by_key(&affix.len(), |(l, _)| *l) {
            self.lengths[i].1 -= 1;
            if self.lengths[i].1 == 0 {
                self.lengths.remove(i);
            }
        }
        true
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.postings.is_empty()
    }

    /// Calls `f` for each entry whose affix is at the given end of `v` (hash hits; the caller
    /// evaluates the filter, which checks the bytes).
    pub(crate) fn query<S: BuildHasher>(
        &self,
        state: &S,
        end: End,
        v: &[u8],
        mut f: impl FnMut(Slot),
    ) {
        if self.lengths.is_empty() {
            return;
        }
        let mut h = seed(state, end);
        let mut walked = 0;
        for &(len, _) in &self.lengths {
            if len > v.len() {
                break;
            }
            let part = match end {
                End::Prefix => &v[walked..len],
                End::Suffix => &v[v.len() - len..v.len() - walked],
            };
            h = match end {
                End::Prefix => part.iter().fold(h, |h, b| step(h, *b)),
                End::Suffix => part.iter().rev().fold(h, |h, b| step(h, *b)),
            };
            walked = len;
            self.postings.get(finish(h, len), &mut f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_is_found_in_one_pass() {
        let state = foldhash::fast::FixedState::with_seed(3);
        for end in [End::Prefix, End::Suffix] {
            let mut ix = AffixIndex::default();
            let value = b"abcdefghij";
            for len in 0..=10usize {
                let affix = match end {
                    End::Prefix => &value[..len],
                    End::Suffix => &value[10 - len..],
                };
                ix.insert(&state, end, affix, len as Slot);
            }
            ix.insert(&state, end, b"zz", 99);
            let mut hits = vec![];
            ix.query(&state, end, value, |s| hits.push(s));
            hits.sort();
            assert_eq!(hits, (0..=10).collect::<Vec<Slot>>(), "{end:?}");
            assert!(ix.remove(&state, end, b"zz", 99));
            assert!(!ix.remove(&state, end, b"zz", 99));
        }
    }
}
