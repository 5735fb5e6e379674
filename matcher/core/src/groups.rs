//! Consumer groups: each matching event goes to exactly one member of each group. Without a
//! key the members take turns (round robin over the members that matched); with a key
//! attribute, rendezvous hashing sends every event with the same key value to the same member
//! while the membership is stable.

use hashbrown::HashMap;
use sift_protocol::Attributes;
use slab::Slab;

use crate::keys::{mix64, stable_hash, KeyRef};

/// Index of a group in the table.
pub(crate) type GroupId = u32;
/// "No group" in a record.
pub(crate) const NO_GROUP: GroupId = GroupId::MAX;

#[derive(Debug)]
struct Group {
    name: Box<str>,
    key: Option<Box<str>>,
    members: u32,
    turn: u64,
}

/// The group a subscription asked for conflicts with the group's existing members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyConflict {
    pub(crate) existing: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Groups {
    by_name: HashMap<Box<str>, GroupId>,
    groups: Slab<Group>,
}

impl Groups {
    /// Adds a member to `name` (creating it); all members must agree on the key attribute.
    pub(crate) fn join(&mut self, name: &str, key: Option<&str>) -> Result<GroupId, KeyConflict> {
        if let Some(&id) = self.by_name.get(name) {
            let Some(g) = self.groups.get_mut(id as usize) else {
                unreachable!("named groups exist")
            };
            if g.key.as_deref() != key {
                return Err(KeyConflict {
                    existing: g.key.as_deref().map(str::to_owned),
                });
            }
            g.members += 1;
            return Ok(id);
        }
        let g = Group {
            name: name.into(),
            key: key.map(Into::into),
            members: 1,
            turn: 0,
        };
        let id = self.groups.insert(g) as GroupId;
        self.by_name.insert(name.into(), id);
        Ok(id)
    }

    /// Removes a member; the group goes with its last member.
    pub(crate) fn leave(&mut self, id: GroupId) {
        let Some(g) = self.groups.get_mut(id as usize) else {
            debug_assert!(false, "leave of a free group");
            return;
        };
        g.members -= 1;
        if g.members == 0 {
            if let Some(g) = self.groups.try_remove(id as usize) {
                self.by_name.remove(&g.name);
            }
        }
    }

    /// The group's name.
    pub(crate) fn name(&self, id: GroupId) -> &str {
        self.groups.get(id as usize).map_or("", |g| &g.name)
    }

    /// Number of groups.
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Picks one of `members` (the matched members of group `id`, as `(subscription id,
    /// payload)`, in a deterministic order) for an event with `attrs`. With `salt` (a hash of
    /// the event's id), a group without a key picks by rendezvous hashing of the salt: every
    /// matcher holding the same members picks the same one for the same event, so an event
    /// delivered again after a failover reaches the member that had it (which drops the
    /// repeat).
    pub(crate) fn choose<T: Copy>(
        &mut self,
        id: GroupId,
        members: &[(u64, T)],
        attrs: &Attributes,
        salt: Option<u64>,
    ) -> T {
        debug_assert!(!members.is_empty());
        let Some(g) = self.groups.get_mut(id as usize) else {
            return members[0].1;
        };
        let key_value = g
            .key
            .as_deref()
            .and_then(|k| attrs.get(k))
            .and_then(KeyRef::from_value);
        match key_value.map(stable_hash).or(salt) {
            Some(h) => {
                // Rendezvous hashing: the member with the highest score for this key wins;
                // adding or removing one member only moves the keys that member wins or had.
                let best = members
                    .iter()
                    .max_by_key(|(sub, _)| (mix64(h ^ mix64(*sub)), *sub));
                best.map_or(members[0].1, |(_, t)| *t)
            }
            None => {
                let pick = (g.turn % members.len() as u64) as usize;
                g.turn = g.turn.wrapping_add(1);
                members[pick].1
            }
        }
    }
}
