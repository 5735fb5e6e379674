//! Membership and ring transitions: which matchers are registered, alive, draining or dead,
//! the ring clients route by (the *active* ring), and the two-step change to the next one.
//!
//! Pure: time comes in as milliseconds, nothing here does I/O. A change of membership (a
//! join, a drain, a death) does not replace the ring at once. The next ring is *announced*
//! (pending); every live matcher of the active ring hands over what the next ring moves away
//! from it, matcher to matcher, and confirms; when all have confirmed, the pending ring is
//! *activated*. A transition that does not complete within the handoff timeout, or during
//! which one of its matchers dies, is aborted (the active ring stays) and tried again.
//! Versions only grow: every announced ring takes a new one, aborted or not.

use std::collections::{BTreeMap, BTreeSet};

use sift_protocol::frame::{NodeState, NodeStatus, Ring, RingMember};
use sift_protocol::ring::{REPLICAS_MAX, WEIGHT_MAX};

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
    /// An operator asked to remove a matcher that is still in the active ring (not drained,
    /// or its drain has not completed yet).
    #[error(
        "matcher {0:?} is still in the ring: drain it first and wait for the drain to complete"
    )]
    NotDrained(String),
}

/// What a transition did, for the shell's logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A ring was announced; the listed matchers must confirm their handoff.
    Announced {
        /// The pending ring's version.
        version: u64,
        /// Who must confirm.
        waiting: Vec<String>,
    },
    /// The pending ring became the active one.
    Activated {
        /// Its version.
        version: u64,
    },
    /// A transition was abandoned; the active ring stays.
    Aborted {
        /// The abandoned ring's version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// A matcher missed its heartbeats and was dropped.
    Died {
        /// Its id.
        node: String,
    },
    /// A restarted coordinator took the ring the matchers already serve with.
    Adopted {
        /// Its version.
        version: u64,
    },
}

#[derive(Clone, Debug)]
struct Node {
    member: RingMember,
    state: NodeState,
    last_seen_ms: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    ring: Ring,
    started_ms: u64,
    /// Matchers of the active ring that have not confirmed their handoff yet.
    waiting: BTreeSet<String>,
}

/// Timing of transitions.
#[derive(Clone, Copy, Debug)]
pub struct TransitionConfig {
    /// A matcher silent for this long is dead and leaves the ring.
    pub dead_after_ms: u64,
    /// A transition not confirmed by every matcher within this is aborted.
    pub handoff_timeout_ms: u64,
    /// After an abort, the next attempt waits this long.
    pub retry_after_ms: u64,
    /// The replication factor, 1 ..= [`REPLICAS_MAX`].
    pub replicas: u32,
    /// Wait this long after start for matchers to report the ring they serve with before
    /// changing anything (0: a fresh cluster, nothing to recover).
    pub recovery_ms: u64,
}

impl TransitionConfig {
    /// Defaults for a coordinator whose matchers die after `dead_after_ms` of silence: a
    /// 10 s handoff timeout, 1 s between attempts, R = 1, and a recovery window of one
    /// `dead_after_ms`.
    pub fn new(dead_after_ms: u64) -> TransitionConfig {
        TransitionConfig {
            dead_after_ms,
            handoff_timeout_ms: 10_000,
            retry_after_ms: 1_000,
            replicas: 1,
            recovery_ms: dead_after_ms,
        }
    }
}

/// The coordinator's membership table and ring transitions.
#[derive(Clone, Debug)]
pub struct Membership {
    nodes: BTreeMap<String, Node>,
    /// Removed matchers, with when they were removed: their heartbeats are refused (so a
    /// running matcher learns it was removed instead of registering again) until they have
    /// been silent for `dead_after_ms`.
    removed: BTreeMap<String, u64>,
    /// Matchers that came back from a restart while still in the ring: they lost what they
    /// held, so they leave the ring through a transition (their replicas take over) and join
    /// again through another (the replicas hand their topics back) instead of serving empty.
    restarted: BTreeSet<String>,
    active: Ring,
    pending: Option<Pending>,
    /// The last version handed out (active or pending); the next ring gets one more.
    last_version: u64,
    config: TransitionConfig,
    /// Until then, rings reported by registering matchers may be adopted and no transition
    /// starts (cleared early once every member of the adopted ring has registered).
    recovering_until: Option<u64>,
    /// After an abort: no new transition before this.
    retry_at: Option<u64>,
    /// The version (as reported) of the ring adopted during recovery, if any.
    adopted: Option<u64>,
    /// Bumped whenever the active or pending ring changes.
    generation: u64,
    changes: Vec<Change>,
}

/// Longest matcher id, in bytes.
pub const NODE_ID_BYTES_MAX: usize = 128;
/// Longest matcher address (`host:port`), in bytes.
pub const NODE_ADDR_BYTES_MAX: usize = 255;
/// Most matchers in a cluster (a ring of this many still fits well inside one frame).
pub const MEMBERS_MAX: usize = 1024;

impl Membership {
    /// An empty table with timing `config`. Versions start above `first_version` (a
    /// coordinator passes its start time in milliseconds, so versions keep growing across
    /// its restarts). `now_ms` starts the recovery window.
    pub fn new(config: TransitionConfig, first_version: u64, now_ms: u64) -> Membership {
        let replicas = config.replicas.clamp(1, REPLICAS_MAX);
        Membership {
            nodes: BTreeMap::new(),
            removed: BTreeMap::new(),
            restarted: BTreeSet::new(),
            active: Ring {
                version: first_version,
                members: Vec::new(),
                replicas,
            },
            pending: None,
            last_version: first_version,
            config: TransitionConfig { replicas, ..config },
            recovering_until: (config.recovery_ms > 0).then(|| now_ms + config.recovery_ms),
            retry_at: None,
            adopted: None,
            generation: 0,
            changes: Vec::new(),
        }
    }

    /// The active ring's version.
    pub fn version(&self) -> u64 {
        self.active.version
    }

    /// Bumped whenever the active or the pending ring changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The active ring: what clients route by.
    pub fn ring(&self) -> Ring {
        self.active.clone()
    }

    /// The ring announced next, while a transition is under way.
    pub fn pending(&self) -> Option<&Ring> {
        self.pending.as_ref().map(|p| &p.ring)
    }

    /// Matchers whose handoff for the pending ring is not confirmed yet.
    pub fn waiting(&self) -> Vec<String> {
        self.pending
            .as_ref()
            .map(|p| p.waiting.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What happened since the last call, oldest first.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
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

    /// A matcher registers (or re-registers with a new address or weight). `active` is the
    /// ring it serves with, which a recovering coordinator may adopt; `draining` keeps it out
    /// of the next ring (a matcher in lame-duck drain). A matcher draining here stays so.
    /// Returns whether it is taken for a restart inside the ring (it registered without a
    /// ring while the rings still have it): it is moved out and back in, and must serve
    /// nothing at the active ring meanwhile.
    pub fn register(
        &mut self,
        now_ms: u64,
        member: RingMember,
        active: Option<&Ring>,
        draining: bool,
    ) -> Result<bool, MembershipError> {
        validate(&member)?;
        if !self.nodes.contains_key(&member.id) && self.nodes.len() >= MEMBERS_MAX {
            return Err(MembershipError::Full);
        }
        // Registering is a (re)start: it lifts a removal.
        self.removed.remove(&member.id);
        let recovering = self.recovering(now_ms);
        if let (Some(ring), true) = (active, recovering) {
            self.adopt(ring);
        }
        // A matcher with no ring of its own just started; if the ring still has it, it is a
        // restart faster than `dead_after`.
        let in_rings = self.active.contains(&member.id)
            || self
                .pending
                .as_ref()
                .is_some_and(|p| p.ring.contains(&member.id));
        let restarted = active.is_none() && !recovering && in_rings;
        if restarted {
            self.restarted.insert(member.id.clone());
        }
        let state = match self.nodes.get(&member.id) {
            Some(n) if n.state == NodeState::Draining => NodeState::Draining,
            _ if draining => NodeState::Draining,
            _ => NodeState::Alive,
        };
        self.nodes.insert(
            member.id.clone(),
            Node {
                member,
                state,
                last_seen_ms: now_ms,
            },
        );
        self.step(now_ms);
        Ok(restarted)
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

    /// Matcher `id` confirms its handoff for the pending ring `version` (a confirmation for
    /// another version is stale and ignored).
    pub fn confirm(&mut self, now_ms: u64, id: &str, version: u64) {
        if let Some(p) = &mut self.pending {
            if p.ring.version == version {
                p.waiting.remove(id);
            }
        }
        self.step(now_ms);
    }

    /// Takes matcher `id` out of the next ring; it stays registered (and heartbeating) as
    /// draining, and hands over its topics through a transition. Returns whether it was not
    /// draining before.
    pub fn drain(&mut self, now_ms: u64, id: &str) -> Result<bool, MembershipError> {
        let n = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| MembershipError::UnknownNode(id.into()))?;
        if n.state == NodeState::Draining {
            return Ok(false);
        }
        n.state = NodeState::Draining;
        self.step(now_ms);
        Ok(true)
    }

    /// Forgets matcher `id`, which must be out of the active ring (drained, with the drain
    /// completed) or dead. If it is still running, its next heartbeat is refused with
    /// [`MembershipError::Removed`] so that it stops instead of registering again.
    pub fn remove(&mut self, now_ms: u64, id: &str) -> Result<(), MembershipError> {
        let n = self
            .nodes
            .get(id)
            .ok_or_else(|| MembershipError::UnknownNode(id.into()))?;
        let in_flight = self
            .pending
            .as_ref()
            .is_some_and(|p| p.waiting.contains(id) || p.ring.contains(id));
        if n.state == NodeState::Alive || self.active.contains(id) || in_flight {
            return Err(MembershipError::NotDrained(id.into()));
        }
        self.nodes.remove(id);
        self.removed.insert(id.into(), now_ms);
        Ok(())
    }

    /// Advances time: drops matchers silent for too long, aborts transitions that timed out
    /// or lost a matcher, activates confirmed ones, and starts the next one when the members
    /// that should be in the ring differ from the active ring's.
    pub fn tick(&mut self, now_ms: u64) {
        self.step(now_ms);
    }

    /// When [`Membership::tick`] may next have something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let dead_after = self.config.dead_after_ms;
        self.nodes
            .values()
            .map(|n| n.last_seen_ms + dead_after)
            .chain(self.removed.values().map(|t| t + dead_after))
            .chain(
                self.pending
                    .as_ref()
                    .map(|p| p.started_ms + self.config.handoff_timeout_ms),
            )
            .chain(self.retry_at)
            .chain(self.recovering_until)
            .min()
    }

    fn recovering(&self, now_ms: u64) -> bool {
        self.recovering_until.is_some_and(|t| now_ms < t)
    }

    /// A restarted coordinator takes the newest ring its matchers report, under a version of
    /// its own (above both), so that nothing moves and every version still only grows.
    fn adopt(&mut self, ring: &Ring) {
        if ring.members.is_empty() || self.adopted.is_some_and(|v| v >= ring.version) {
            return;
        }
        self.adopted = Some(ring.version);
        self.last_version = self.last_version.max(ring.version) + 1;
        self.active = Ring {
            version: self.last_version,
            members: ring.members.clone(),
            replicas: self.config.replicas,
        };
        self.generation += 1;
        self.changes.push(Change::Adopted {
            version: self.active.version,
        });
    }

    /// The ring the members say it should be: alive (not draining) members, ordered by id.
    /// A drain never empties the ring: while no other matcher is alive to take their topics,
    /// the draining members of the active ring stay in it (their drain waits), so that what
    /// they hold has somewhere to go.
    fn desired(&self) -> Vec<RingMember> {
        let alive: Vec<RingMember> = self
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Alive && !self.restarted.contains(&n.member.id))
            .map(|n| n.member.clone())
            .collect();
        if !alive.is_empty() {
            return alive;
        }
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Draining && self.active.contains(&n.member.id))
            .map(|n| n.member.clone())
            .collect()
    }

    fn step(&mut self, now_ms: u64) {
        self.expire(now_ms);
        if self.recovering(now_ms) {
            let all_back = !self.active.members.is_empty()
                && self
                    .active
                    .members
                    .iter()
                    .all(|m| self.nodes.contains_key(&m.id));
            if !all_back {
                return;
            }
        }
        self.recovering_until = None;
        // A restarted matcher may join again once a ring without it is active.
        let active = &self.active;
        self.restarted.retain(|id| active.contains(id));
        if let Some(p) = &self.pending {
            let lost = p
                .ring
                .members
                .iter()
                .map(|m| &m.id)
                .chain(p.waiting.iter())
                .find(|id| !self.nodes.contains_key(*id))
                .cloned();
            let restarted = p
                .ring
                .members
                .iter()
                .find(|m| self.restarted.contains(&m.id))
                .map(|m| m.id.clone());
            if let Some(id) = restarted {
                self.abort(format!("matcher {id} restarted during the handoff"));
            } else if let Some(id) = lost {
                self.abort(format!("matcher {id} died during the handoff"));
                // Try again at once without it: a death is not a reason to wait.
            } else if p.waiting.is_empty() {
                self.activate();
            } else if now_ms >= p.started_ms + self.config.handoff_timeout_ms {
                let waiting: Vec<&str> = p.waiting.iter().map(String::as_str).collect();
                let reason = format!(
                    "no confirmation from {} within {} ms",
                    waiting.join(", "),
                    self.config.handoff_timeout_ms
                );
                self.abort(reason);
                self.retry_at = Some(now_ms + self.config.retry_after_ms);
                return;
            } else {
                return;
            }
        }
        if self.pending.is_some() || self.retry_at.is_some_and(|t| now_ms < t) {
            return;
        }
        self.retry_at = None;
        let active = &self.active;
        self.restarted.retain(|id| active.contains(id));
        let desired = self.desired();
        if desired == self.active.members {
            return;
        }
        self.last_version += 1;
        let ring = Ring {
            version: self.last_version,
            members: desired,
            replicas: self.config.replicas,
        };
        // The live matchers of the active ring hold what moves; the others (joiners) only
        // receive. A ring with nobody to hand over (the first one, or one after every old
        // member died) is active at once.
        let waiting: BTreeSet<String> = self
            .active
            .members
            .iter()
            .filter(|m| self.nodes.contains_key(&m.id))
            .map(|m| m.id.clone())
            .collect();
        self.changes.push(Change::Announced {
            version: ring.version,
            waiting: waiting.iter().cloned().collect(),
        });
        self.pending = Some(Pending {
            ring,
            started_ms: now_ms,
            waiting,
        });
        self.generation += 1;
        if self.pending.as_ref().is_some_and(|p| p.waiting.is_empty()) {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if let Some(p) = self.pending.take() {
            self.changes.push(Change::Activated {
                version: p.ring.version,
            });
            self.active = p.ring;
            self.generation += 1;
        }
    }

    fn abort(&mut self, reason: String) {
        if let Some(p) = self.pending.take() {
            self.changes.push(Change::Aborted {
                version: p.ring.version,
                reason,
            });
            self.generation += 1;
        }
    }

    /// Drops the matchers silent for too long.
    fn expire(&mut self, now_ms: u64) {
        let dead_after = self.config.dead_after_ms;
        let dead: Vec<String> = self
            .nodes
            .values()
            .filter(|n| now_ms.saturating_sub(n.last_seen_ms) >= dead_after)
            .map(|n| n.member.id.clone())
            .collect();
        for id in dead {
            self.nodes.remove(&id);
            self.changes.push(Change::Died { node: id });
        }
        self.removed
            .retain(|_, at| now_ms.saturating_sub(*at) < dead_after);
    }
}

fn validate(member: &RingMember) -> Result<(), MembershipError> {
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
    Ok(())
}

/// `host:port` with a non-empty host and a port number, within the length limit.
fn valid_addr(addr: &str) -> bool {
    addr.len() <= NODE_ADDR_BYTES_MAX
        && addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests;
