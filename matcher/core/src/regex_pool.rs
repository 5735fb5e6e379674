//! Interned regexes: one compiled `Regex` per distinct pattern in the engine, shared by every
//! subscription that uses it and released when the last one goes.
//!
//! A compiled regex costs kilobytes; subscriptions often repeat patterns, so interning is what
//! keeps memory per subscription bounded when they do.

use hashbrown::HashMap;
use regex::Regex;

/// Index of an interned regex; stable while any subscription holds it.
pub(crate) type RegexId = u32;

#[derive(Debug)]
struct Entry {
    regex: Regex,
    refs: u32,
}

#[derive(Debug, Default)]
pub(crate) struct RegexPool {
    by_pattern: HashMap<Box<str>, RegexId>,
    entries: Vec<Option<Entry>>,
    free: Vec<RegexId>,
}

impl RegexPool {
    /// Takes a reference to `regex`'s pattern, interning it if new.
    pub(crate) fn acquire(&mut self, regex: &Regex) -> RegexId {
        if let Some(&id) = self.by_pattern.get(regex.as_str()) {
            if let Some(e) = self.entries[id as usize].as_mut() {
                e.refs += 1;
            }
            return id;
        }
        let entry = Some(Entry {
            regex: regex.clone(),
            refs: 1,
        });
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as RegexId
            }
        };
        self.by_pattern.insert(regex.as_str().into(), id);
        id
    }

    /// Drops one reference; frees the regex with the last one.
    pub(crate) fn release(&mut self, id: RegexId) {
        let slot = &mut self.entries[id as usize];
        let Some(e) = slot.as_mut() else {
            debug_assert!(false, "release of a free regex id");
            return;
        };
        e.refs -= 1;
        if e.refs == 0 {
            if let Some(e) = slot.take() {
                self.by_pattern.remove(e.regex.as_str());
            }
            self.free.push(id);
        }
    }

    /// The compiled regex of a held id.
    pub(crate) fn get(&self, id: RegexId) -> &Regex {
        match &self.entries[id as usize] {
            Some(e) => &e.regex,
            None => unreachable!("regex id {id} is held by a live subscription"),
        }
    }

    /// Distinct patterns held.
    pub(crate) fn len(&self) -> usize {
        self.by_pattern.len()
    }
}
