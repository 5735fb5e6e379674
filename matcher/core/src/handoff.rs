//! The rules of a ring transition, pure: how a request's ring version is judged against the
//! matcher's own (epochs), which subscriptions a matcher hands over when the next ring is
//! announced and to whom, when it may confirm, and which handed-over subscriptions a receiver
//! keeps once the transition activates or aborts.
//!
//! The shell (`sift-matcher`'s core task) moves the bytes: it sends what [`plan`] and
//! [`Outgoing`] decide as peer messages and feeds the answers back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sift_protocol::ring::Placement;
use sift_protocol::SubscriptionId;

/// How a request made at some ring version is to be judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epoch {
    /// At this matcher's active ring (the newer of the two): the request's version is not
    /// newer than it.
    Active,
    /// The request was made at the announced ring this matcher is handing over to: the
    /// coordinator has activated it (clients only ever see active rings), so it is active
    /// here from now on, and the request is judged at it.
    ActivatePending,
    /// The request is newer than anything this matcher knows: it missed ring changes and
    /// cannot judge ownership (answer `not-owner` with its version; the client retries).
    Ahead,
}

/// Judges a request made at ring `request` by a matcher whose active ring is `active` and
/// whose announced next ring (if any) is `pending`.
pub fn judge(request: u64, active: u64, pending: Option<u64>) -> Epoch {
    if request <= active {
        Epoch::Active
    } else if Some(request) == pending {
        Epoch::ActivatePending
    } else {
        Epoch::Ahead
    }
}

/// What a matcher's subscription is, for placement: an exact topic or a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed<'a> {
    /// An exact topic: it lives on the topic's owner.
    Topic(&'a str),
    /// A pattern: it lives on every matcher of the ring.
    Pattern,
}

/// Where this matcher (`me`) hands its subscriptions over when `pending` replaces `active`:
/// receiver id → subscriptions, in id order. An exact-topic subscription goes to each owner
/// its topic gains in `pending` (its R successive owners; one with R = 1); a pattern subscription goes to every matcher that
/// `pending` adds (each member sends its own copy; receivers keep one per id).
pub fn plan<'a>(
    me: &str,
    active: &Placement,
    pending: &Placement,
    subs: impl IntoIterator<Item = (SubscriptionId, Placed<'a>)>,
) -> BTreeMap<String, Vec<SubscriptionId>> {
    let joiners: Vec<&str> = pending
        .members()
        .iter()
        .filter(|m| m.id != me && !active.contains(&m.id))
        .map(|m| m.id.as_str())
        .collect();
    let mut out: BTreeMap<String, Vec<SubscriptionId>> = BTreeMap::new();
    for (id, placed) in subs {
        match placed {
            Placed::Topic(t) => {
                // Every owner it gains (with R ≥ 2 each owner holds a copy).
                for owner in pending.owners(t) {
                    if owner.id != me && !active.is_owner(t, &owner.id) {
                        out.entry(owner.id.clone()).or_default().push(id);
                    }
                }
            }
            Placed::Pattern => {
                for j in &joiners {
                    out.entry((*j).to_owned()).or_default().push(id);
                }
            }
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

/// The receiver a subscription change made during a transition must be mirrored to (the
/// subscription's handoff is under way): the owner of `placed` in `pending` when that is not
/// `me`, and the matchers `pending` adds for a pattern.
pub fn mirror_to(
    me: &str,
    active: &Placement,
    pending: &Placement,
    placed: Placed<'_>,
) -> Vec<String> {
    plan(me, active, pending, [(SubscriptionId(0), placed)])
        .into_keys()
        .collect()
}

/// The sending side of one transition: handoff messages sent and not yet answered, and
/// whether the coordinator has been told.
#[derive(Debug)]
pub struct Outgoing {
    version: u64,
    /// Sequence number → receiver.
    unanswered: BTreeMap<u64, String>,
    confirmed: bool,
}

impl Outgoing {
    /// A transition to ring `version`.
    pub fn new(version: u64) -> Outgoing {
        Outgoing {
            version,
            unanswered: BTreeMap::new(),
            confirmed: false,
        }
    }

    /// The announced ring this is for.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Message `seq` (the sender's sequence numbers never repeat, so a late answer is never
    /// mistaken) was sent to `to`; it must be answered before the handoff is complete.
    pub fn sent(&mut self, seq: u64, to: &str) {
        self.unanswered.insert(seq, to.to_owned());
    }

    /// The message `seq` was taken; true if it was one of this transition's.
    pub fn acked(&mut self, seq: u64) -> bool {
        self.unanswered.remove(&seq).is_some()
    }

    /// Messages still unanswered.
    pub fn unanswered(&self) -> usize {
        self.unanswered.len()
    }

    /// Receivers with unanswered messages.
    pub fn waiting_for(&self) -> BTreeSet<&str> {
        self.unanswered.values().map(String::as_str).collect()
    }

    /// True when the coordinator may be told that this matcher's handoff is complete:
    /// every message answered. It may be told again (after the link to the coordinator
    /// was re-established, the coordinator announces again).
    pub fn complete(&self) -> bool {
        self.unanswered.is_empty()
    }

    /// True once the coordinator has been told the handoff is complete.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Marks the confirmation sent; true the first time.
    pub fn confirm(&mut self) -> bool {
        !std::mem::replace(&mut self.confirmed, true)
    }
}

/// The receiving side: subscriptions handed over for an announced ring, held (not yet
/// served) until that ring is active, and dropped if the transition is abandoned.
#[derive(Debug, Default)]
pub struct Incoming {
    /// Subscription → the announced ring it was handed over for.
    held: HashMap<SubscriptionId, u64>,
}

impl Incoming {
    /// An empty set.
    pub fn new() -> Incoming {
        Incoming::default()
    }

    /// `id` was handed over for ring `version` (again: the latest version wins).
    pub fn hold(&mut self, id: SubscriptionId, version: u64) {
        self.held.insert(id, version);
    }

    /// The announced ring `id` is held for, if it is.
    pub fn held_for(&self, id: SubscriptionId) -> Option<u64> {
        self.held.get(&id).copied()
    }

    /// True when `id` is held for a transition that has not activated.
    pub fn is_held(&self, id: SubscriptionId) -> bool {
        self.held.contains_key(&id)
    }

    /// `id` is settled here for good (its client attached, or it went away).
    pub fn settle(&mut self, id: SubscriptionId) {
        self.held.remove(&id);
    }

    /// Held subscriptions.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The ring is now `active` with `pending` announced: subscriptions held for a ring
    /// that is now active are settled; those held for a ring that is neither active nor the
    /// announced one (the transition was abandoned) are returned, to be dropped.
    pub fn ring(&mut self, active: u64, pending: Option<u64>) -> Vec<SubscriptionId> {
        let mut dropped = Vec::new();
        self.held.retain(|id, v| {
            if *v <= active {
                false
            } else if Some(*v) == pending {
                true
            } else {
                dropped.push(*id);
                false
            }
        });
        dropped.sort_unstable();
        dropped
    }
}

#[cfg(test)]
mod tests;
