//! Attribute names interned to small ids, and an event's attributes viewed by id: filter
//! programs and indexes refer to attributes by id, so a lookup during evaluation is a scan of
//! a few integers instead of string comparisons.

use hashbrown::HashMap;
use slab::Slab;
use smallvec::SmallVec;

use sift_protocol::{Attributes, Value};

/// An interned attribute name.
pub(crate) type AttrId = u16;

/// Most distinct attribute names the filters of one engine may use.
pub(crate) const ATTR_NAMES_MAX: usize = AttrId::MAX as usize;

#[derive(Debug, Default)]
pub(crate) struct AttrNames {
    by_name: HashMap<Box<str>, AttrId>,
    /// Name and reference count per id.
    names: Slab<(Box<str>, u32)>,
}

impl AttrNames {
    /// How many of `names` are not interned yet (to check capacity before acquiring).
    pub(crate) fn missing<'a>(&self, names: impl Iterator<Item = &'a str>) -> usize {
        let mut seen: SmallVec<[&str; 8]> = SmallVec::new();
        for n in names {
            if !self.by_name.contains_key(n) && !seen.contains(&n) {
                seen.push(n);
            }
        }
        seen.len()
    }

    /// Room left for new names.
    pub(crate) fn room(&self) -> usize {
        ATTR_NAMES_MAX - self.by_name.len()
    }

    /// Takes a reference to `name`, interning it if new. The caller has checked [`room`].
    pub(crate) fn acquire(&mut self, name: &str) -> AttrId {
        if let Some(&id) = self.by_name.get(name) {
            if let Some((_, refs)) = self.names.get_mut(id as usize) {
                *refs += 1;
            }
            return id;
        }
        debug_assert!(self.names.len() < ATTR_NAMES_MAX, "caller checks room()");
        let id = self.names.insert((Box::from(name), 1)) as AttrId;
        self.by_name.insert(name.into(), id);
        id
    }

    /// Drops one reference; forgets the name with the last one.
    pub(crate) fn release(&mut self, id: AttrId) {
        let Some((_, refs)) = self.names.get_mut(id as usize) else {
            debug_assert!(false, "release of a free attribute id");
            return;
        };
        *refs -= 1;
        if *refs == 0 {
            if let Some((name, _)) = self.names.try_remove(id as usize) {
                self.by_name.remove(&name);
            }
        }
    }

    /// The id of `name`, if any filter uses it.
    pub(crate) fn get(&self, name: &str) -> Option<AttrId> {
        self.by_name.get(name).copied()
    }
}

/// An event's attributes that some filter refers to, by id, sorted by id.
#[derive(Debug, Default)]
pub(crate) struct EventView<'a> {
    items: SmallVec<[(AttrId, &'a Value); 8]>,
}

impl<'a> EventView<'a> {
    pub(crate) fn new(names: &AttrNames, attrs: &'a Attributes) -> EventView<'a> {
        let mut items: SmallVec<[(AttrId, &'a Value); 8]> = attrs
            .iter()
            .filter_map(|(n, v)| names.get(n).map(|id| (id, v)))
            .collect();
        items.sort_unstable_by_key(|(id, _)| *id);
        EventView { items }
    }

    /// The value of attribute `id`, if the event has it.
    #[inline]
    pub(crate) fn get(&self, id: AttrId) -> Option<&'a Value> {
        if self.items.len() <= 16 {
            self.items.iter().find(|(i, _)| *i == id).map(|(_, v)| *v)
        } else {
            let i = self.items.binary_search_by_key(&id, |(i, _)| *i).ok()?;
            Some(self.items[i].1)
        }
    }

    /// The attributes, sorted by id.
    pub(crate) fn items(&self) -> &[(AttrId, &'a Value)] {
        &self.items
    }
}
