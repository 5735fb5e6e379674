//! `prefix(a, s)` and `suffix(a, s)`: postings keyed by the hash of `s`, plus the distinct
//! lengths in use, so a query hashes one slice of the value per distinct length.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use super::postings::{Postings, Slot};
use crate::keys::bytes_hash;

#[derive(Debug, Default)]
pub(crate) struct AffixIndex {
    postings: Postings,
    /// Distinct affix length → how many entries have it.
    lengths: BTreeMap<usize, u32>,
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
        *self.lengths.entry(affix.len()).or_default() += 1;
    }

    pub(crate) fn remove<S: BuildHasher>(&mut self, state: &S, affix: &[u8], slot: Slot) -> bool {
        if !self.postings.remove(bytes_hash(state, affix), slot) {
            return false;
        }
        if let Some(n) = self.lengths.get_mut(&affix.len()) {
            *n -= 1;
            if *n == 0 {
                self.lengths.remove(&affix.len());
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
        for &len in self.lengths.keys() {
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
