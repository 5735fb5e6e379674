//! Membership: which matchers are registered, alive, draining or dead, and the ring they make.
//! Pure: time comes in as milliseconds, and every change that alters the ring bumps its
//! version, which only grows.

use std::collections::BTreeMap;

use sift_protocol::frame::{NodeState, NodeStatus, Ring, RingMember};
use sift_protocol::ring::WEIGHT_MAX;

/// Why a membership request was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// No matcher has this id.
    #[error("unknown matcher {0:?}")]
    UnknownNode(String),
    /// The member's id, address or weight is not acceptable.
    #[error("invalid member: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug)]
struct Node {
    member: RingMember,
    state: NodeState,
    last_seen_ms: u64,
}

/// The coordinator's membership table.
#[derive(Clone, Debug)]
pub struct Membership {
    nodes: BTreeMap<String, Node>,
    version: u64,
    /// A matcher silent for this long is dead and leaves the ring.
    dead_after_ms: u64,
}

/// Longest matcher id, in bytes.
pub const NODE_ID_BYTES_MAX: usize = 128;

impl Membership {
    /// An empty table; matchers silent for `dead_after_ms` are dropped.
    pub fn new(dead_after_ms: u64) -> Membership {
        Membership {
            nodes: BTreeMap::new(),
            version: 0,
            dead_after_ms,
        }
    }

    /// The ring version (0 before any matcher registered).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The ring: alive (not draining) members, ordered by id.
    pub fn ring(&self) -> Ring {
        let members = self
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Alive)
            .map(|n| n.member.clone())
            .collect();
        Ring {
            version: self.version,
            members,
        }
    }

    /// Every registered matcher, for operators.
    pub fn status(&self, now_ms: u64) -> Vec<NodeStatus> {
        self.nodes
            .values()
            .map(|n| NodeStatus {
                member: n.member.clone(),
                state: n.state,
                last_seen_ms: now_ms.saturating_sub(n.last_seen_ms),
            })
            .collect()
    }

    /// A matcher registers (or re-registers with a new address or weight). Returns whether
    /// the ring changed. A draining matcher that registers again stays draining.
    pub fn register(&mut self, now_ms: u64, member: RingMember) -> Result<bool, MembershipError> {
        if member.id.is_empty() || member.id.len() > NODE_ID_BYTES_MAX {
            return Err(MembershipError::Invalid(format!(
                "id must be 1 to {NODE_ID_BYTES_MAX} bytes"
            )));
        }
        if member.weight == 0 || member.weight > WEIGHT_MAX {
            return Err(MembershipError::Invalid(format!(
                "weight must be 1 to {WEIGHT_MAX}"
            )));
        }
        if member.addr.is_empty() {
            return Err(MembershipError::Invalid("address is empty".into()));
        }
        let changed = match self.nodes.get_mut(&member.id) {
            Some(n) => {
                n.last_seen_ms = now_ms;
                let changed = n.member != member && n.state == NodeState::Alive;
                n.member = member;
                changed
            }
            None => {
                let id = member.id.clone();
                self.nodes.insert(
                    id,
                    Node {
                        member,
                        state: NodeState::Alive,
                        last_seen_ms: now_ms,
                    },
                );
                true
            }
        };
        if changed {
            self.version += 1;
        }
        Ok(changed)
    }

    /// A heartbeat from matcher `id`.
    pub fn heartbeat(&mut self, now_ms: u64, id: &str) -> Result<(), MembershipError> {
        let n = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| MembershipError::UnknownNode(id.into()))?;
        n.last_seen_ms = now_ms;
        Ok(())
    }

    /// Takes matcher `id` out of the ring; it stays registered (and heartbeating) as draining.
    /// Returns whether the ring changed.
    pub fn drain(&mut self, id: &str) -> Result<bool, MembershipError> {
        let n = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| MembershipError::UnknownNode(id.into()))?;
        if n.state == NodeState::Draining {
            return Ok(false);
        }
        n.state = NodeState::Draining;
        self.version += 1;
        Ok(true)
    }

    /// Forgets matcher `id`. Returns whether the ring changed.
    pub fn remove(&mut self, id: &str) -> Result<bool, MembershipError> {
        let n = self
            .nodes
            .remove(id)
            .ok_or_else(|| MembershipError::UnknownNode(id.into()))?;
        let changed = n.state == NodeState::Alive;
        if changed {
            self.version += 1;
        }
        Ok(changed)
    }

    /// Drops the matchers silent for too long; returns their ids (the ring changed if any was
    /// alive).
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let dead: Vec<String> = self
            .nodes
            .values()
            .filter(|n| now_ms.saturating_sub(n.last_seen_ms) >= self.dead_after_ms)
            .map(|n| n.member.id.clone())
            .collect();
        let mut changed = false;
        for id in &dead {
            if let Some(n) = self.nodes.remove(id) {
                changed |= n.state == NodeState::Alive;
            }
        }
        if changed {
            self.version += 1;
        }
        dead
    }

    /// When [`Membership::expire`] may next drop someone.
    pub fn next_deadline(&self) -> Option<u64> {
        self.nodes
            .values()
            .map(|n| n.last_seen_ms + self.dead_after_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, weight: u32) -> RingMember {
        RingMember {
            id: id.into(),
            addr: format!("127.0.0.1:{}", 7400 + weight),
            weight,
        }
    }

    fn ids(m: &Membership) -> Vec<String> {
        m.ring().members.into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn join_drain_remove_and_death_bump_the_version() {
        let mut m = Membership::new(2500);
        assert_eq!(m.register(0, member("b", 1)), Ok(true));
        assert_eq!(m.register(0, member("a", 2)), Ok(true));
        assert_eq!(
            (ids(&m), m.version()),
            (vec!["a".to_string(), "b".to_string()], 2)
        );
        // The same registration again changes nothing.
        assert_eq!(m.register(100, member("a", 2)), Ok(false));
        assert_eq!(m.version(), 2);
        // A new weight is a new ring.
        assert_eq!(m.register(100, member("a", 3)), Ok(true));
        assert_eq!(m.version(), 3);
        assert_eq!(m.drain("a"), Ok(true));
        assert_eq!((ids(&m), m.version()), (vec!["b".to_string()], 4));
        assert_eq!(m.drain("a"), Ok(false));
        assert_eq!(m.status(200)[0].state, NodeState::Draining);
        assert_eq!(
            m.remove("a"),
            Ok(false),
            "a draining member is already out of the ring"
        );
        assert_eq!(m.remove("a"), Err(MembershipError::UnknownNode("a".into())));
        // b stops heartbeating and dies at 2500 ms after its last sign of life.
        assert_eq!(m.next_deadline(), Some(2500));
        assert!(m.expire(2499).is_empty());
        assert_eq!(m.expire(2500), vec!["b".to_string()]);
        assert_eq!((ids(&m), m.version()), (Vec::<String>::new(), 5));
        assert_eq!(
            m.heartbeat(3000, "b"),
            Err(MembershipError::UnknownNode("b".into()))
        );
    }

    #[test]
    fn heartbeats_keep_a_member_alive() {
        let mut m = Membership::new(1000);
        m.register(0, member("a", 1)).unwrap();
        for t in (500..10_000).step_by(500) {
            m.heartbeat(t, "a").unwrap();
            assert!(m.expire(t).is_empty());
        }
        assert_eq!(m.version(), 1);
    }

    #[test]
    fn bad_members_are_refused() {
        let mut m = Membership::new(1000);
        assert!(m.register(0, member("", 1)).is_err());
        assert!(m.register(0, member("a", 0)).is_err());
        assert!(m.register(0, member("a", WEIGHT_MAX + 1)).is_err());
        assert!(m
            .register(
                0,
                RingMember {
                    id: "a".into(),
                    addr: String::new(),
                    weight: 1
                }
            )
            .is_err());
        assert_eq!(m.version(), 0);
    }
}
