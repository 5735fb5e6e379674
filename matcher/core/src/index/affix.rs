//! `prefix(a, s)` and `suffix(a, s)`: postings keyed by the hash of `s`, plus the distinct
//! lengths in use, so a query hashes one slice of the value per distinct length.

use std::hash::BuildHasher;

use smallvec::SmallVec;

use super::postings::{Postings, Slot};
use crate::keys::bytes_hash;

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

impl AffixIndex {
    pub(crate) fn insert<S: BuildHasher>(&mut self, state: &S, affix: &[u8], slot: Slot) {
        self.postings.insert(bytes_hash(state, affix), slot);
        match self.lengths.binary_search_by_key(&affix.len(), |(l, _)| *l) {
            Ok(i) => self.lengths[i].1 += 1,
            Err(i) => self.lengths.insert(i, (affix.len(), 1)),
        }
    }

    pub(crate) fn remove<S: BuildHasher>(&mut self, state: &S, affix: &[u8], slot: Slot) -> bool {
        if !self.postings.remove(bytes_hash(state, affix), slot) {
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
        for &(len, _) in &self.lengths {
            if len > v.len() {
                break;
            }
            let part = match end {
                End::Prefix => &v[..len],
                End::Suffix => &v[v.len() - len..],
            };
            self.postings.get(bytes_hash(state, part), &mut f);
        }
    }
}
