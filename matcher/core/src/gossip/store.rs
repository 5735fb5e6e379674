//! What one node knows: the latest version of every (origin, key), per-origin version
//! summaries, and what to send a peer given its summary.

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::HashMap;

use super::{update_size, Have, NodeId, Update, WireSize};

/// One held entry: the latest version of a key, live or tombstone.
#[derive(Clone, Debug)]
pub(super) struct Held<P> {
    pub version: u64,
    pub body: Option<P>,
    /// When this node learned it (the caller's clock).
    pub learned: u64,
}

/// Everything known about one origin's updates.
#[derive(Debug)]
pub(super) struct Origin<P> {
    /// Every version ≤ this is held here or was superseded (or collected) — nothing at or
    /// below it is missing.
    pub upto: u64,
    /// Versions above `upto` seen so far (superseded ones included).
    above: BTreeSet<u64>,
    /// Held entries by version, for "everything above version v" in order.
    by_version: BTreeMap<u64, u64>,
    /// Held entries by key.
    entries: HashMap<u64, Held<P>>,
}

impl<P> Default for Origin<P> {
    fn default() -> Self {
        Origin {
            upto: 0,
            above: BTreeSet::new(),
            by_version: BTreeMap::new(),
            entries: HashMap::new(),
        }
    }
}

impl<P> Origin<P> {
    fn max_seen(&self) -> u64 {
        self.above.last().copied().unwrap_or(self.upto)
    }

    fn mark_seen(&mut self, version: u64) {
        if version > self.upto {
            self.above.insert(version);
        }
        self.advance();
    }

    fn advance(&mut self) {
        while let Some(&first) = self.above.first() {
            if first <= self.upto {
                self.above.pop_first();
            } else if first == self.upto + 1 {
                self.above.pop_first();
                self.upto = first;
            } else {
                break;
            }
        }
    }
}

/// The result of offering an update to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Applied {
    /// Newer than anything held for its key: stored.
    New,
    /// Already known (this version or a newer one, or covered by the origin's summary).
    /// `before_now` is false when the same version was learned at this very instant — for
    /// feedback, judged against the state at the start of the instant, that is still news.
    Known { before_now: bool },
}

/// A node's store.
#[derive(Debug)]
pub(super) struct Store<P> {
    origins: BTreeMap<NodeId, Origin<P>>,
    live: usize,
}

impl<P: Clone + WireSize> Store<P> {
    pub fn new() -> Self {
        Store {
            origins: BTreeMap::new(),
            live: 0,
        }
    }

    /// Entries held (live and tombstones).
    pub fn len(&self) -> usize {
        self.origins.values().map(|o| o.entries.len()).sum()
    }

    /// Live (non-tombstone) entries held.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn get(&self, origin: NodeId, key: u64) -> Option<&Held<P>> {
        self.origins.get(&origin)?.entries.get(&key)
    }

    pub fn apply(&mut self, update: &Update<P>, now: u64) -> Applied {
        let o = self.origins.entry(update.origin).or_default();
        match o.entries.get(&update.key) {
            Some(held) if held.version >= update.version => {
                return Applied::Known {
                    before_now: held.learned < now || held.version > update.version,
                };
            }
            // At or below the summary, or seen before and gone since (retired, collected):
            // never taken back.
            None if update.version <= o.upto || o.above.contains(&update.version) => {
                return Applied::Known { before_now: true }
            }
            _ => {}
        }
        o.mark_seen(update.version);
        let held = Held {
            version: update.version,
            body: update.body.clone(),
            learned: now,
        };
        let was_live = held.body.is_some();
        if let Some(old) = o.entries.insert(update.key, held) {
            o.by_version.remove(&old.version);
            if old.body.is_some() {
                self.live -= 1;
            }
        }
        o.by_version.insert(update.version, update.key);
        if was_live {
            self.live += 1;
        }
        Applied::New
    }

    /// Drops `(origin, key)` if it is still at `version` (a collected tombstone, a lapsed
    /// lease). The origin's summary is kept, so an older copy offered later is not taken back.
    pub fn remove(&mut self, origin: NodeId, key: u64, version: u64) -> bool {
        let Some(o) = self.origins.get_mut(&origin) else {
            return false;
        };
        match o.entries.get(&key) {
            Some(held) if held.version == version => {}
            _ => return false,
        }
        if let Some(held) = o.entries.remove(&key) {
            o.by_version.remove(&held.version);
            if held.body.is_some() {
                self.live -= 1;
            }
        }
        true
    }

    /// Raises an origin's summary to `upto`: the sender held everything of that origin up to
    /// there and has sent all of it that this node lacked.
    pub fn cover(&mut self, origin: NodeId, upto: u64) {
        let o = self.origins.entry(origin).or_default();
        if upto > o.upto {
            o.upto = upto;
            o.advance();
        }
    }

    /// This node's summary: per origin, the contiguous version and the highest seen.
    pub fn summary(&self) -> Vec<Have> {
        self.origins
            .iter()
            .filter(|(_, o)| o.max_seen() > 0)
            .map(|(&origin, o)| Have {
                origin,
                upto: o.upto,
                max: o.max_seen(),
            })
            .collect()
    }

    /// Whether `theirs` shows something this node has not seen.
    pub fn behind(&self, theirs: &[Have]) -> bool {
        theirs.iter().any(|h| match self.origins.get(&h.origin) {
            None => h.max > 0,
            Some(o) => h.upto > o.upto || h.max > o.max_seen(),
        })
    }

    /// What a peer with summary `theirs` lacks: every held entry above its contiguous version,
    /// oldest first, at most `cap` entries; and for each origin sent in full, the version up to
    /// which the peer will then hold everything this node holds (`Have::upto`). Entries learned
    /// at `now` are left for a later exchange (state as of the start of the instant).
    pub fn deltas(
        &self,
        theirs: &[Have],
        now: u64,
        (cap, bytes_cap): (usize, usize),
    ) -> (Vec<Update<P>>, Vec<Have>) {
        let mut updates = Vec::new();
        let mut bytes = 0usize;
        let mut covered = Vec::new();
        for (&origin, o) in &self.origins {
            let their_upto = match theirs.binary_search_by_key(&origin, |h| h.origin) {
                Ok(i) => theirs[i].upto,
                Err(_) => 0,
            };
            if o.upto <= their_upto && o.max_seen() <= their_upto {
                continue;
            }
            let mut claim = o.upto;
            let mut full = true;
            for (&version, key) in o.by_version.range(their_upto.saturating_add(1)..) {
                let Some(held) = o.entries.get(key) else {
                    continue;
                };
                if held.learned >= now {
                    claim = claim.min(version - 1);
                    continue;
                }
                let update = Update {
                    origin,
                    key: *key,
                    version,
                    body: held.body.clone(),
                };
                let size = update_size(&update);
                if updates.len() >= cap || (!updates.is_empty() && bytes + size > bytes_cap) {
                    claim = claim.min(version - 1);
                    full = false;
                    break;
                }
                bytes += size;
                updates.push(update);
            }
            if claim > their_upto {
                covered.push(Have {
                    origin,
                    upto: claim,
                    max: claim,
                });
            }
            if !full {
                break;
            }
        }
        (updates, covered)
    }
}
