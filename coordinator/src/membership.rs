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
    /// The table is full.
    #[error("the cluster already has {MEMBERS_MAX} matchers")]
    Full,
    /// An operator removed this matcher; it must restart to join again.
    #[error("matcher {0:?} was removed by an operator; restart it to join again")]
    Removed(String),
    /// An operator asked to remove a matcher that is still alive and in the ring.
    #[error("matcher {0:?} is alive and in the ring: drain it first")]
    NotDrained(String),
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
    /// Removed matchers, with when they were removed: their heartbeats are refused (so a
    /// running matcher learns it was removed instead of registering again) until they have
    /// been silent for `dead_after_ms`.
    removed: BTreeMap<String, u64>,
    version: u64,
    /// A matcher silent for this long is dead and leaves the ring.
    dead_after_ms: u64,
}

/// Longest matcher id, in bytes.
pub const NODE_ID_BYTES_MAX: usize = 128;
/// Longest matcher address (`host:port`), in bytes.
pub const NODE_ADDR_BYTES_MAX: usize = 255;
/// Most matchers in a cluster (a ring of this many still fits well inside one frame).
pub const MEMBERS_MAX: usize = 1024;

impl Membership {
    /// An empty table; matchers silent for `dead_after_ms` are dropped. The version starts at
    /// `first_version` (a coordinator passes its start time in milliseconds, so versions keep
    /// growing across its restarts).
    pub fn new(dead_after_ms: u64, first_version: u64) -> Membership {
        Membership {
            nodes: BTreeMap::new(),
            removed: BTreeMap::new(),
            version: first_version,
            dead_after_ms,
        }
    }

    /// The ring version.
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
        if !valid_addr(&member.addr) {
            return Err(MembershipError::Invalid(format!(
                "address must be host:port, at most {NODE_ADDR_BYTES_MAX} bytes"
            )));
        }
        if !self.nodes.contains_key(&member.id) && self.nodes.len() >= MEMBERS_MAX {
            return Err(MembershipError::Full);
        }
        // Registering is a (re)start: it lifts a removal.
        self.removed.remove(&member.id);
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
        if self.removed.contains_key(id) {
            return Err(MembershipError::Removed(id.into()));
        }
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

    /// Forgets matcher `id`, which must be draining (its topics already moved) or silent.
    /// If it is still running, its next heartbeat is refused with
    /// [`MembershipError::Removed`] so that it stops instead of registering again. Returns
    /// whether the ring changed.
    pub fn remove(&mut self, now_ms: u64, id: &str) -> Result<bool, MembershipError> {
        let n = self
            .nodes
            .get(id)
            .ok_or_else(|| MembershipError::UnknownNode(id.into()))?;
        if n.state == NodeState::Alive {
            return Err(MembershipError::NotDrained(id.into()));
        }
        self.nodes.remove(id);
        self.removed.insert(id.into(), now_ms);
        Ok(false)
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
        let dead_after = self.dead_after_ms;
        self.removed
            .retain(|_, at| now_ms.saturating_sub(*at) < dead_after);
        dead
    }

    /// When [`Membership::expire`] may next drop someone.
    pub fn next_deadline(&self) -> Option<u64> {
        self.nodes
            .values()
            .map(|n| n.last_seen_ms)
            .chain(self.removed.values().copied())
            .map(|t| t + self.dead_after_ms)
            .min()
    }
}

/// `host:port` with a non-empty host and a port number, within the length limit.
fn valid_addr(addr: &str) -> bool {
    addr.len() <= NODE_ADDR_BYTES_MAX
        && addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
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
        let mut m = Membership::new(2500, 0);
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
            m.remove(200, "a"),
            Ok(false),
            "a draining member is already out of the ring"
        );
        assert_eq!(
            m.remove(200, "a"),
            Err(MembershipError::UnknownNode("a".into()))
        );
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
        let mut m = Membership::new(1000, 0);
        m.register(0, member("a", 1)).unwrap();
        for t in (500..10_000).step_by(500) {
            m.heartbeat(t, "a").unwrap();
            assert!(m.expire(t).is_empty());
        }
        assert_eq!(m.version(), 1);
    }

    #[test]
    fn bad_members_are_refused() {
        let mut m = Membership::new(1000, 0);
        assert!(m.register(0, member("", 1)).is_err());
        assert!(m.register(0, member("a", 0)).is_err());
        assert!(m.register(0, member("a", WEIGHT_MAX + 1)).is_err());
        for addr in [
            String::new(),
            "host".into(),
            ":7401".into(),
            "host:".into(),
            "host:99999".into(),
            format!("{}:1", "h".repeat(NODE_ADDR_BYTES_MAX)),
        ] {
            let bad = RingMember {
                id: "a".into(),
                addr: addr.clone(),
                weight: 1,
            };
            assert!(
                matches!(m.register(0, bad), Err(MembershipError::Invalid(_))),
                "{addr:?}"
            );
        }
        let ok = RingMember {
            id: "a".into(),
            addr: "[::1]:7401".into(),
            weight: 1,
        };
        assert_eq!(m.register(0, ok), Ok(true));
        assert_eq!(m.version(), 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut m = Membership::new(1000, 0);
        for i in 0..MEMBERS_MAX {
            m.register(0, member(&format!("m{i}"), 1)).unwrap();
        }
        assert_eq!(
            m.register(0, member("one-more", 1)),
            Err(MembershipError::Full)
        );
        // A member already in may still register again.
        assert_eq!(m.register(0, member("m0", 1)), Ok(false));
    }

    #[test]
    fn versions_start_where_the_coordinator_says() {
        let mut m = Membership::new(1000, 1_700_000_000_000);
        m.register(0, member("a", 1)).unwrap();
        assert_eq!(m.ring().version, 1_700_000_000_001);
    }

    #[test]
    fn removal_needs_a_drain_and_stops_a_running_matcher() {
        let mut m = Membership::new(1000, 0);
        m.register(0, member("a", 1)).unwrap();
        m.register(0, member("b", 1)).unwrap();
        assert_eq!(
            m.remove(10, "a"),
            Err(MembershipError::NotDrained("a".into()))
        );
        m.drain("a").unwrap();
        assert_eq!(m.remove(20, "a"), Ok(false));
        assert_eq!(m.status(20).len(), 1);
        // Still running, a's next heartbeat tells it it was removed (not "unknown", which
        // would make it register again).
        assert_eq!(
            m.heartbeat(30, "a"),
            Err(MembershipError::Removed("a".into()))
        );
        // The refusal lasts until a has been silent for dead_after...
        m.heartbeat(500, "b").unwrap();
        assert!(m.expire(500).is_empty());
        assert_eq!(m.next_deadline(), Some(1020));
        m.heartbeat(1000, "b").unwrap();
        assert!(m.expire(1020).is_empty());
        assert_eq!(
            m.heartbeat(1020, "a"),
            Err(MembershipError::UnknownNode("a".into()))
        );
        // ...and a restarted a registers as new.
        let v = m.version();
        assert_eq!(m.register(1100, member("a", 1)), Ok(true));
        assert_eq!(m.version(), v + 1);
    }

    #[test]
    fn a_restart_lifts_a_removal_at_once() {
        let mut m = Membership::new(1000, 0);
        m.register(0, member("a", 1)).unwrap();
        m.drain("a").unwrap();
        m.remove(10, "a").unwrap();
        assert_eq!(m.register(20, member("a", 1)), Ok(true));
        assert_eq!(m.heartbeat(30, "a"), Ok(()));
    }
}
