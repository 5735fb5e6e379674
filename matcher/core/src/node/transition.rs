//! Partitioned mode: ring epochs, the two-step handoff (announce → hand over → confirm →
//! activate) and the peer messages that carry it. The rules are `sift_matcher_core::handoff`;
//! this applies them to the core's subscriptions and sends what they decide.

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::HashSet;

use crate::delivery::AckWindow;
use crate::handoff::{self, Epoch, Outgoing};
use crate::{NewSubscription, Timestamp};
use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::{EndReason, ErrorCode, Ring, RingMember};
use sift_protocol::peer::{PeerFrame, PeerMsg, SubImage, SubTail, TailItem};
use sift_protocol::ring::Placement;
use sift_protocol::DeliveryMode;
use sift_protocol::{Event, EventId, Filter, Pattern, SubscriptionId, Topic};
use tracing::{debug, info, warn};

use super::{placed, Alo, Effect, Node, Outlet, Refusal, Spec, Sub, Token, HANDOFF_CHUNK};
use std::collections::VecDeque;

/// Copies of another matcher's unacknowledged notifications for a subscription moving here
/// (step one of a handoff), kept aside, undelivered, until that matcher's tail replaces them.
#[derive(Debug)]
pub(super) struct Copies {
    /// The announced ring they were sent for.
    version: u64,
    items: Vec<TailItem>,
    /// Their events' ids (a message sent again adds nothing).
    ids: HashSet<EventId>,
    /// Once that ring is active here: when they are redelivered if no tail has come.
    due: Option<Timestamp>,
}

/// How long after a ring's activation copies wait for their sender's tail before they are
/// redelivered (at least an ack timeout): a live sender's tail can trail the activation by
/// its link's reconnect backoff and the messages queued before it.
const COPIES_WAIT_MS: u64 = 5_000;

/// Members that left the ring are remembered (for releases of events they hold) for 30 s
/// after they left (until the next ring change after that), at most 64 of them.
const DEPARTED_MAX: usize = 64;
const DEPARTED_MS: u64 = 30_000;

/// Encoded event bytes per `Unacked` or `Tail` message (a frame holds 1.5 MiB; one event of
/// up to 1 MiB goes alone).
const TAIL_BYTES: usize = 512 * 1024;

/// Splits tails into messages of at most [`TAIL_BYTES`] of events and [`HANDOFF_CHUNK`]
/// subscriptions; a subscription with more than that is split across messages.
pub(super) fn chunk_tails(subs: Vec<SubTail>) -> Vec<Vec<SubTail>> {
    let mut out = Vec::new();
    let mut cur: Vec<SubTail> = Vec::new();
    // Event bytes in `cur` and `part`.
    let mut bytes = 0usize;
    for SubTail { image, unacked } in subs {
        let mut part = Vec::new();
        for item in unacked {
            let n = EncodedEvent::new(&item.event).map_or(0, |e| e.len());
            if bytes > 0 && bytes + n > TAIL_BYTES {
                // This message is full: it closes with this subscription's share so far.
                if !part.is_empty() {
                    cur.push(SubTail {
                        image: image.clone(),
                        unacked: std::mem::take(&mut part),
                    });
                }
                out.push(std::mem::take(&mut cur));
                bytes = 0;
            }
            bytes += n;
            part.push(item);
        }
        cur.push(SubTail {
            image,
            unacked: part,
        });
        if cur.len() >= HANDOFF_CHUNK {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Copies {
    pub(super) fn due(&self) -> Option<Timestamp> {
        self.due
    }
}

/// Per receiver, the unacknowledged notifications of subscriptions that ring `after` does
/// not place on `me`: an exact topic's go to its owner at `after`, a pattern's to the owner
/// of each event's topic.
fn route(
    me: &str,
    after: &Placement,
    collected: Vec<(SubImage, Option<Box<str>>, Vec<TailItem>)>,
) -> BTreeMap<String, Vec<SubTail>> {
    let mut tails: BTreeMap<String, Vec<SubTail>> = BTreeMap::new();
    for (image, topic, items) in collected {
        let mut per: BTreeMap<String, Vec<TailItem>> = BTreeMap::new();
        match &topic {
            Some(t) => {
                if let Some(owner) = after.owner(t) {
                    per.insert(owner.id.clone(), items);
                }
            }
            None => {
                for item in items {
                    if let Some(owner) = after.owner(&item.event.topic) {
                        per.entry(owner.id.clone()).or_default().push(item);
                    }
                }
            }
        }
        for (to, unacked) in per {
            if to != me {
                tails.entry(to).or_default().push(SubTail {
                    image: image.clone(),
                    unacked,
                });
            }
        }
    }
    tails
}

impl<Q: Outlet> Node<Q> {
    /// Judges a request made at ring `version` (DESIGN.md, ring epochs): the announced ring
    /// this matcher is handing over to becomes active here when a request names it; a ring
    /// newer than anything known is refused with `not-owner` and this matcher's version.
    pub(super) fn epoch(&mut self, version: u64) -> Result<(), Refusal> {
        if self.gossip.is_some() {
            // Gossip nodes' ring versions are their own; nothing to fence.
            return Ok(());
        }
        let pending = self.pending.as_ref().map(Placement::version);
        match handoff::judge(version, self.placement.version(), pending) {
            Epoch::Active => Ok(()),
            Epoch::ActivatePending => {
                if let Some(p) = self.pending.take() {
                    debug!(version, "a request names the announced ring: active here");
                    self.activate(p.ring());
                }
                Ok(())
            }
            Epoch::Ahead => Err(Refusal {
                code: ErrorCode::NotOwner,
                message: format!(
                    "ring version {version} is newer than this matcher's {}; retry shortly",
                    self.placement.version()
                ),
                ring_version: Some(self.placement.version()),
            }),
        }
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A member of the active or the announced ring (or one that left lately), by id.
    fn member(&self, id: &str) -> Option<RingMember> {
        let find = |p: &Placement| p.members().iter().find(|m| m.id == id).cloned();
        find(&self.placement)
            .or_else(|| self.pending.as_ref().and_then(find))
            .or_else(|| {
                self.departed
                    .iter()
                    .rev()
                    .find(|(m, _)| m.id == id)
                    .map(|(m, _)| m.clone())
            })
    }

    /// Sends `msg` to matcher `to`; false if there is no way to (no such member, no links).
    pub(super) fn peer_send(&mut self, to: &str, msg: PeerMsg) -> bool {
        let Some(member) = self.member(to) else {
            warn!(peer = to, "no address for a peer message");
            return false;
        };
        let frame = PeerFrame {
            epoch: self.placement.version(),
            msg,
        };
        if !self.config.linked {
            return false;
        }
        self.effects.push(Effect::Peer { to: member, frame });
        true
    }

    fn image(&self, id: SubscriptionId, sub: &Sub<Q>, now: Timestamp) -> SubImage {
        let remaining_ms = self
            .engine
            .get(id)
            .map_or(0, |i| i.deadline.0.saturating_sub(now.0));
        SubImage {
            id,
            pattern: sub.spec.pattern.clone(),
            filter: sub.spec.filter.clone(),
            group: sub.spec.group.clone(),
            mode: sub.spec.mode,
            expiry: sub.spec.expiry,
            remaining_ms,
        }
    }

    /// The coordinator's view of the cluster: activate a newer ring, and hand over for an
    /// announced one (or give up a transition the coordinator abandoned).
    pub(super) fn cluster(&mut self, active: Ring, pending: Option<Ring>) {
        if active.version > self.placement.version() {
            self.activate(active);
        }
        let active_v = self.placement.version();
        let pending = pending.filter(|p| p.version > active_v);
        for id in self
            .incoming
            .ring(active_v, pending.as_ref().map(|p| p.version))
        {
            self.drop_held(id);
        }
        match pending {
            None => {
                if let Some(o) = self.outgoing.take() {
                    info!(version = o.version(), "transition abandoned");
                }
                self.pending = None;
                self.copied.clear();
            }
            Some(p) if self.outgoing.as_ref().map(Outgoing::version) == Some(p.version) => {
                // Announced again (the coordinator link was re-established): confirm again
                // if done.
                self.maybe_confirm(true);
            }
            Some(p) => self.start_handoff(p),
        }
        self.drop_abandoned_copies();
    }

    /// Step one of a transition: everything the announced ring moves away from here (or
    /// copies to a joining matcher) goes to its new owner.
    fn start_handoff(&mut self, ring: Ring) {
        let pending = Placement::new(&ring);
        let plan = handoff::plan(
            &self.me.id,
            &self.placement,
            &pending,
            self.subs.iter().map(|(id, s)| (*id, placed(&s.topic))),
        );
        self.pending = Some(pending);
        self.outgoing = Some(Outgoing::new(ring.version));
        self.track_peers();
        let now = self.now();
        let mut moving = 0;
        for (to, ids) in plan {
            for chunk in ids.chunks(HANDOFF_CHUNK) {
                let subs: Vec<SubImage> = chunk
                    .iter()
                    .filter_map(|id| self.subs.get(id).map(|s| self.image(*id, s, now)))
                    .collect();
                moving += subs.len();
                let seq = self.next_seq();
                let msg = PeerMsg::Handoff {
                    seq,
                    version: ring.version,
                    subs,
                    gone: Vec::new(),
                };
                if self.peer_send(&to, msg) {
                    if let Some(o) = &mut self.outgoing {
                        o.sent(seq, &to);
                    }
                }
            }
        }
        self.stats.handed_over += moving as u64;
        let copied = self.send_copies(ring.version);
        info!(
            version = ring.version,
            moving, copied, "ring announced; handing over what it moves"
        );
        self.maybe_confirm(false);
    }

    /// Step one for at-least-once notifications: copies of what the subscriptions the
    /// pending ring moves away from here have not had acknowledged go to their new owners,
    /// which hold them before the ring activates (this matcher keeps delivering them until
    /// then; its tail at activation says what is still unacknowledged). Returns how many.
    fn send_copies(&mut self, version: u64) -> u64 {
        self.copied.clear();
        let Some(pending) = &self.pending else {
            return 0;
        };
        let stays = pending.contains(&self.me.id);
        let now = self.now();
        let mut collected = Vec::new();
        for (id, sub) in &self.subs {
            let Some(alo) = &sub.alo else { continue };
            let aside = !self.copies.is_empty() && self.copies.keys().any(|(_, s)| s == id);
            if alo.window.is_empty() && alo.backlog.is_empty() && !aside {
                continue;
            }
            let moves = match &sub.topic {
                Some(t) => !pending.is_owner(t, &self.me.id),
                None => !stays,
            };
            if moves {
                let mut items = copy_unacked(*id, alo, now);
                self.aside_for(*id, &mut items);
                collected.push((self.image(*id, sub, now), sub.topic.clone(), items));
            }
        }
        let tails = route(&self.me.id, pending, collected);
        let mut copied = 0u64;
        for (to, subs) in tails {
            for t in &subs {
                copied += t.unacked.len() as u64;
                self.copied
                    .entry(t.image.id)
                    .or_default()
                    .insert(to.clone());
            }
            for chunk in chunk_tails(subs) {
                let seq = self.next_seq();
                let msg = PeerMsg::Unacked {
                    seq,
                    version,
                    subs: chunk,
                };
                if self.peer_send(&to, msg) {
                    if let Some(o) = &mut self.outgoing {
                        o.sent(seq, &to);
                    }
                }
            }
        }
        self.stats.copied_unacked += copied;
        copied
    }

    /// Copies another matcher sent for a ring that is neither active nor announced any more
    /// (the transition was abandoned) are dropped.
    fn drop_abandoned_copies(&mut self) {
        let active = self.placement.version();
        let pending = self.pending.as_ref().map(Placement::version);
        // Copies armed at an activation wait for their tail; unarmed ones are for the ring
        // being activated or the announced one; any other ring's were superseded.
        self.copies
            .retain(|_, c| c.due.is_some() || c.version == active || Some(c.version) == pending);
    }

    /// Copies held for ring `version` (now active): redelivered an ack timeout from now
    /// unless their sender's tail replaces them first.
    fn copies_due(&mut self, version: u64) {
        let due = self
            .now()
            .plus_millis(self.config.ack_timeout_ms.max(COPIES_WAIT_MS));
        for c in self.copies.values_mut() {
            if c.version == version && c.due.is_none() {
                c.due = Some(due);
            }
        }
    }

    /// Adds the copies held aside here for subscription `id` (from any sender) to `items`,
    /// leaving out events already there.
    fn aside_for(&self, id: SubscriptionId, items: &mut Vec<TailItem>) {
        if self.copies.is_empty() {
            return;
        }
        let mut have: HashSet<EventId> = items.iter().map(|i| i.event.id).collect();
        for ((_, s), c) in &self.copies {
            if *s == id {
                for item in &c.items {
                    if have.insert(item.event.id) {
                        items.push(item.clone());
                    }
                }
            }
        }
    }

    /// The same, removing them: the subscription moves on before their tail came, and its
    /// next owner gets them.
    fn take_aside(&mut self, id: SubscriptionId, items: &mut Vec<TailItem>) {
        self.aside_for(id, items);
        if !self.copies.is_empty() {
            self.copies.retain(|(_, s), _| *s != id);
        }
    }

    /// Step one at the receiver: copies of `from`'s unacknowledged notifications of
    /// subscriptions ring `version` moves here, held (their subscriptions too) undelivered.
    fn take_copies(&mut self, from: &str, version: u64, subs: Vec<SubTail>) {
        if version <= self.placement.version() {
            // Sent again after the ring activated: its tail is what counts now.
            debug!(peer = from, version, "copies for an active ring ignored");
            return;
        }
        for tail in subs {
            let id = tail.image.id;
            if !self.subs.contains_key(&id) {
                if let Err(e) = self.install(tail.image, Some(version)) {
                    warn!(sub = %id, error = %e.message, "a handed-over subscription was refused");
                    continue;
                }
            }
            let c = self
                .copies
                .entry((from.to_owned(), id))
                .or_insert_with(|| Copies {
                    version,
                    items: Vec::new(),
                    ids: HashSet::new(),
                    due: None,
                });
            if c.version != version {
                // For a newer announced ring: these replace the older ring's.
                *c = Copies {
                    version,
                    items: Vec::new(),
                    ids: HashSet::new(),
                    due: None,
                };
            }
            for item in tail.unacked {
                if c.ids.insert(item.event.id) {
                    c.items.push(item);
                }
            }
        }
    }

    /// Copies whose sender's tail never came (it died after the ring activated): what they
    /// hold is redelivered here; subscribers drop what they had acknowledged by event id.
    pub(super) fn redeliver_copies(&mut self, now: Timestamp) {
        if self.copies.is_empty() {
            return;
        }
        let due: Vec<(String, SubscriptionId)> = self
            .copies
            .iter()
            .filter(|(_, c)| c.due.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(c) = self.copies.remove(&key) else {
                continue;
            };
            let (from, id) = key;
            if !self.subs.contains_key(&id) {
                continue;
            }
            warn!(peer = %from, sub = %id, n = c.items.len(), "no tail came for a handoff: redelivering the copies of its unacknowledged notifications");
            self.stats.redelivered_copies += c.items.len() as u64;
            self.deliver_items(id, c.items);
        }
    }

    /// Queues handed-over notifications for subscription `id` (it redelivers them).
    fn deliver_items(&mut self, id: SubscriptionId, items: Vec<TailItem>) {
        let now = self.now();
        for item in items {
            match EncodedEvent::new(&item.event) {
                Ok(encoded) => {
                    let encoded = Arc::new(encoded);
                    self.deliver(now, id, item.event.id, &encoded, item.sent);
                }
                Err(e) => warn!(sub = %id, error = %e, "a handed-over event does not encode"),
            }
        }
    }

    /// Tells the coordinator (through the link) that the handoff is complete, once.
    fn maybe_confirm(&mut self, again: bool) {
        let Some(out) = &mut self.outgoing else {
            return;
        };
        if !out.complete() {
            return;
        }
        let first = out.confirm();
        if first || again {
            let version = out.version();
            self.effects.push(Effect::Confirm(version));
            if first {
                info!(version, "handoff complete; confirmed");
            }
        }
    }

    /// During a transition, a change of subscription `id` (its new state, or that it is
    /// `gone`) is mirrored to the matchers it is being handed over to.
    pub(super) fn mirror(&mut self, id: SubscriptionId, gone: bool) {
        let (Some(pending), Some(version)) =
            (&self.pending, self.outgoing.as_ref().map(Outgoing::version))
        else {
            return;
        };
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let to = handoff::mirror_to(&self.me.id, &self.placement, pending, placed(&sub.topic));
        if to.is_empty() {
            return;
        }
        let image = (!gone).then(|| self.image(id, sub, self.now()));
        for t in to {
            let seq = self.next_seq();
            let msg = PeerMsg::Handoff {
                seq,
                version,
                subs: image.clone().into_iter().collect(),
                gone: if gone { vec![id] } else { Vec::new() },
            };
            if self.peer_send(&t, msg) {
                if let Some(o) = &mut self.outgoing {
                    o.sent(seq, &t);
                }
            }
        }
    }

    /// Step two: `ring` is active. Subscriptions no longer placed here end with `Moved`
    /// (their clients attach at the new owner, which holds them), and their unacknowledged
    /// notifications go to the new owner of each event's topic to be redelivered there.
    pub(super) fn activate(&mut self, ring: Ring) {
        let version = ring.version;
        let now = self.now();
        let recent = Timestamp(now.0.saturating_sub(DEPARTED_MS));
        self.departed
            .retain(|(m, left)| *left >= recent && !ring.contains(&m.id));
        for m in self.placement.members() {
            if !ring.contains(&m.id) && m.id != self.me.id {
                self.departed.retain(|(d, _)| d.id != m.id);
                self.departed.push_back((m.clone(), now));
                if self.departed.len() > DEPARTED_MAX {
                    self.departed.pop_front();
                }
            }
        }
        self.placement = Placement::new(&ring);
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.version() <= version)
        {
            self.pending = None;
        }
        if self
            .outgoing
            .as_ref()
            .is_some_and(|o| o.version() <= version)
        {
            self.outgoing = None;
        }
        let pending = self.pending.as_ref().map(Placement::version);
        for id in self.incoming.ring(version, pending) {
            self.drop_held(id);
        }
        self.drop_abandoned_copies();
        self.copies_due(version);
        // Links stay up to members of both rings and to those that left lately (releases
        // of events they hold, a tail, may still be on the way to them).
        let mut keep: Vec<String> = self.departed.iter().map(|(m, _)| m.id.clone()).collect();
        for p in std::iter::once(&self.placement).chain(self.pending.as_ref()) {
            for m in p.members() {
                if m.id != self.me.id && !keep.contains(&m.id) {
                    keep.push(m.id.clone());
                }
            }
        }
        self.effects.push(Effect::RingActive { ring, keep });
        self.track_peers();
        let in_ring = self.in_ring();
        let mut moved: Vec<SubscriptionId> = self
            .subs
            .iter()
            .filter(|(_, s)| !self.placed_here(s, in_ring))
            .map(|(id, _)| *id)
            .collect();
        moved.sort_unstable();
        let (collected, unacked_moved) = self.collect_moving(&moved);
        let mut tails = route(&self.me.id, &self.placement, collected);
        // Whoever got copies in step one gets a tail, empty if nothing is left unacknowledged,
        // so that it lets go of them.
        let copied = std::mem::take(&mut self.copied);
        let images: BTreeMap<SubscriptionId, SubImage> = tails
            .values()
            .flatten()
            .map(|t| (t.image.id, t.image.clone()))
            .chain(
                moved
                    .iter()
                    .filter_map(|id| self.subs.get(id).map(|s| (*id, self.image(*id, s, now)))),
            )
            .collect();
        for (id, receivers) in copied {
            let Some(image) = images.get(&id) else {
                continue;
            };
            for to in receivers {
                let list = tails.entry(to).or_default();
                if !list.iter().any(|t| t.image.id == id) {
                    list.push(SubTail {
                        image: image.clone(),
                        unacked: Vec::new(),
                    });
                }
            }
        }
        for (to, subs) in tails {
            if to == self.me.id {
                continue;
            }
            for chunk in chunk_tails(subs) {
                let seq = self.next_seq();
                self.peer_send(&to, PeerMsg::Tail { seq, subs: chunk });
            }
        }
        self.stats.handed_over_unacked += unacked_moved;
        info!(
            version,
            members = self.placement.members().len(),
            moved = moved.len(),
            unacked_moved,
            "ring active"
        );
        for id in moved {
            self.forget(id, EndReason::Moved);
        }
    }

    /// True when the active ring places subscription `sub` on this matcher (`in_ring`: this
    /// matcher is a member).
    fn placed_here(&self, sub: &Sub<Q>, in_ring: bool) -> bool {
        match &sub.topic {
            Some(t) => self.owns(t),
            None => in_ring,
        }
    }

    /// The images of subscriptions `moving` away, each with what it has not had
    /// acknowledged or still waits for its client; and how many of those there are.
    #[allow(clippy::type_complexity)]
    fn collect_moving(
        &mut self,
        moving: &[SubscriptionId],
    ) -> (Vec<(SubImage, Option<Box<str>>, Vec<TailItem>)>, u64) {
        let now = self.now();
        let mut collected = Vec::new();
        let mut unacked = 0u64;
        for id in moving {
            let Some(sub) = self.subs.get(id) else {
                continue;
            };
            let image = self.image(*id, sub, now);
            let topic = sub.topic.clone();
            // Handed over here and moving on before its client came: an at-most-once
            // subscription's notifications wait only in its queue, and go on with it (an
            // at-least-once one's are in its window too).
            let waiting = if sub.conn.is_none() && sub.alo.is_none() {
                waiting_items(*id, sub.queue.take_waiting())
            } else {
                Vec::new()
            };
            let mut items = self.take_unacked(*id, now);
            items.extend(waiting);
            self.take_aside(*id, &mut items);
            unacked += items.len() as u64;
            collected.push((image, topic, items));
        }
        (collected, unacked)
    }

    /// Takes the unacknowledged notifications (sent or waiting for room) out of an
    /// at-least-once subscription, oldest first.
    fn take_unacked(&mut self, id: SubscriptionId, now: Timestamp) -> Vec<TailItem> {
        let Some(alo) = self.subs.get_mut(&id).and_then(|s| s.alo.as_mut()) else {
            return Vec::new();
        };
        let mut items = Vec::new();
        let mut keys = Vec::new();
        for t in alo.window.take_all() {
            keys.push(t.key);
            match t.item.decode() {
                Ok(event) => items.push(TailItem {
                    event,
                    sent: true,
                    due_in_ms: t.due.0.saturating_sub(now.0),
                }),
                Err(e) => warn!(sub = %id, error = %e, "an unacked notification does not decode"),
            }
        }
        for (key, e) in alo.backlog.drain(..) {
            keys.push(key);
            match e.decode() {
                Ok(event) => items.push(TailItem {
                    event,
                    sent: false,
                    due_in_ms: 0,
                }),
                Err(e) => warn!(sub = %id, error = %e, "a waiting notification does not decode"),
            }
        }
        alo.backlog_bytes = 0;
        // They are the new owner's now: this matcher's replicas may let go.
        for k in &keys {
            self.releases.acked(k);
        }
        items
    }

    /// Forgets a handed-over subscription no client attached to (its transition was
    /// abandoned, or a newer image replaces it).
    fn drop_held(&mut self, id: SubscriptionId) {
        if !self.copies.is_empty() {
            self.copies.retain(|(_, s), _| *s != id);
        }
        if self.subs.get(&id).is_some_and(|s| s.conn.is_none()) {
            if let Some(mut sub) = self.subs.remove(&id) {
                let _ = self.engine.unsubscribe(id);
                self.settled(id);
                if let Some(alo) = &mut sub.alo {
                    for t in alo.window.take_all() {
                        self.releases.acked(&t.key);
                    }
                    for (key, _) in alo.backlog.drain(..) {
                        self.releases.acked(&key);
                    }
                }
                sub.queue.end(EndReason::Moved);
            }
        }
        self.incoming.settle(id);
    }

    /// Installs a subscription handed over from another matcher, detached (no client yet),
    /// held for the announced ring `hold` if it is not active yet.
    fn install(&mut self, image: SubImage, hold: Option<u64>) -> Result<(), Refusal> {
        let pattern = Pattern::parse(&image.pattern)
            .map_err(|e| Refusal::new(ErrorCode::InvalidTopic, e.to_string()))?;
        let filter = Filter::parse(&image.filter)
            .map_err(|e| Refusal::new(ErrorCode::InvalidFilter, e.to_string()))?;
        let id = image.id;
        let topic = pattern.as_topic().map(|t| t.as_str().into());
        let now = self.now();
        let deadline = Timestamp(now.0.saturating_add(image.remaining_ms.max(1)));
        let new = NewSubscription {
            id,
            pattern,
            filter,
            expiry: image.expiry,
            group: image.group.clone(),
            mode: image.mode,
        };
        self.engine
            .subscribe_until(now, new, Some(deadline))
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        let queue = Q::open(self.config.queue_len_max, self.config.queue_bytes_max);
        let alo = (image.mode == DeliveryMode::AtLeastOnce).then(|| Alo {
            window: AckWindow::new(self.config.redelivery_window, self.config.ack_timeout_ms),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        });
        self.subs.insert(
            id,
            Sub {
                conn: None,
                queue,
                spec: Spec {
                    pattern: image.pattern,
                    filter: image.filter,
                    group: image.group,
                    mode: image.mode,
                    expiry: image.expiry,
                },
                topic,
                next_delivery: 1,
                alo,
            },
        );
        if let Some(v) = hold {
            self.incoming.hold(id, v);
        }
        self.stats.taken_over += 1;
        Ok(())
    }

    /// A handoff message: hold these subscriptions for ring `version`, forget `gone`.
    fn take_handoff(
        &mut self,
        version: u64,
        subs: Vec<SubImage>,
        gone: Vec<SubscriptionId>,
    ) -> Result<(), Refusal> {
        let hold = (version > self.placement.version()).then_some(version);
        let mut refused = None;
        for image in subs {
            match self.subs.get(&image.id) {
                // Its client is here already (it attached, or subscribed afresh).
                Some(s) if s.conn.is_some() => continue,
                // A newer image (a mirrored change, or a message sent again) of one held
                // here: updated in place, so that what it queued since stays queued.
                Some(_) => self.update_held(image, hold),
                None => {
                    let id = image.id;
                    if let Err(r) = self.install(image, hold) {
                        warn!(sub = %id, error = %r.message, "a handed-over subscription was refused");
                        refused.get_or_insert(r);
                    }
                }
            }
        }
        for id in gone {
            self.drop_held(id);
        }
        // One refused: the sender does not count this message as taken (and logs why).
        refused.map_or(Ok(()), Err)
    }

    /// A newer image of detached subscription `id`: its filter and deadline move, its queue
    /// and unacknowledged notifications stay.
    fn update_held(&mut self, image: SubImage, hold: Option<u64>) {
        let now = self.now();
        let id = image.id;
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if sub.spec.filter != image.filter {
            match Filter::parse(&image.filter) {
                Ok(f) if self.engine.set_filter(id, &f).is_ok() => sub.spec.filter = image.filter,
                _ => warn!(sub = %id, "a handed-over filter change was refused"),
            }
        }
        let deadline = Timestamp(now.0.saturating_add(image.remaining_ms.max(1)));
        self.engine.extend(now, id, deadline);
        // Held for the newest announced ring it was handed over for.
        if let Some(v) = hold {
            if self.incoming.held_for(id).is_some_and(|held| v > held) {
                self.incoming.hold(id, v);
            }
        }
    }

    /// The last of a handoff, from `from`: unacknowledged notifications to redeliver from
    /// here. They replace the copies `from` sent in step one.
    ///
    /// A tail can come after a newer ring moved the subscription on from here (it was in
    /// flight while this matcher handed over and activated again): then it follows the
    /// subscription to its owner at the active ring, rather than wait here for a client
    /// that will attach elsewhere.
    fn take_tail(&mut self, from: &str, subs: Vec<SubTail>) {
        let in_ring = self.in_ring();
        let mut onward = Vec::new();
        for tail in subs {
            let id = tail.image.id;
            self.copies.remove(&(from.to_owned(), id));
            if !self.subs.contains_key(&id) {
                if let Err(e) = self.install(tail.image, None) {
                    warn!(sub = %id, error = %e.message, "a handed-over subscription was refused");
                    continue;
                }
            }
            self.deliver_items(id, tail.unacked);
            if self.subs.get(&id).is_some_and(|s| {
                s.conn.is_none()
                    && !self.placed_here(s, in_ring)
                    && s.topic
                        .as_deref()
                        .is_none_or(|t| self.placement.owner(t).is_some_and(|o| o.id != self.me.id))
            }) {
                onward.push(id);
            }
        }
        if onward.is_empty() {
            return;
        }
        let (collected, unacked) = self.collect_moving(&onward);
        for (to, subs) in route(&self.me.id, &self.placement, collected) {
            for chunk in chunk_tails(subs) {
                let seq = self.next_seq();
                self.peer_send(&to, PeerMsg::Tail { seq, subs: chunk });
            }
        }
        self.stats.handed_over_unacked += unacked;
        info!(
            moved = onward.len(),
            unacked, "a tail came for subscriptions the ring has moved on: sent on"
        );
        for id in onward {
            self.forget_here(id, EndReason::Moved);
        }
    }

    /// Sends a publish of a topic this matcher no longer owns on to its owner.
    pub(super) fn forward(&mut self, topic: &Topic, event: &Event) -> bool {
        let Some(owner) = self.placement.owner(topic).map(|m| m.id.clone()) else {
            return false;
        };
        if owner == self.me.id {
            return false;
        }
        let seq = self.next_seq();
        let msg = PeerMsg::Dispatch {
            seq,
            event: event.clone(),
            redeliver: false,
        };
        let sent = self.peer_send(&owner, msg);
        if sent {
            self.stats.forwarded_publishes += 1;
        }
        sent
    }

    /// A message from matcher `from`; `reply` takes the answer (now, or once what it asks
    /// for is done).
    pub(super) fn peer(&mut self, from: &str, frame: PeerFrame, token: Token) {
        self.heard(from);
        // A peer speaking at the announced ring: it is active.
        let _ = self.epoch(frame.epoch);
        let msg = match frame.msg {
            PeerMsg::Dispatch {
                seq,
                event,
                redeliver,
            } if self.placement.replicas() >= 2 => {
                return self.dispatch_from_peer(seq, event, redeliver, frame.epoch, token);
            }
            PeerMsg::Hold {
                seq,
                dispatcher,
                events,
            } => {
                self.hold(&dispatcher, events);
                PeerMsg::Acked { seqs: vec![seq] }
            }
            PeerMsg::Release { seq, ids } => {
                self.release(&ids);
                PeerMsg::Acked { seqs: vec![seq] }
            }
            PeerMsg::Ping { nonce } => PeerMsg::Pong { nonce },
            PeerMsg::Handoff {
                seq,
                version,
                subs,
                gone,
            } => {
                let n = subs.len();
                match self.take_handoff(version, subs, gone) {
                    Ok(()) => {
                        debug!(peer = from, version, subs = n, "handoff taken");
                        PeerMsg::Acked { seqs: vec![seq] }
                    }
                    Err(r) => PeerMsg::Refused {
                        seq,
                        code: r.code,
                        message: r.message,
                    },
                }
            }
            PeerMsg::Tail { seq, subs } => {
                self.take_tail(from, subs);
                PeerMsg::Acked { seqs: vec![seq] }
            }
            PeerMsg::Unacked { seq, version, subs } => {
                self.take_copies(from, version, subs);
                PeerMsg::Acked { seqs: vec![seq] }
            }
            PeerMsg::Dispatch { seq, event, .. } => {
                let result = event
                    .validate(&self.config.limits)
                    .map_err(|e| Refusal::new(ErrorCode::InvalidEvent, e.to_string()))
                    .and_then(|topic| self.publish(&topic, event, true, frame.epoch));
                match result {
                    Ok(()) => PeerMsg::Acked { seqs: vec![seq] },
                    Err(r) => PeerMsg::Refused {
                        seq,
                        code: r.code,
                        message: r.message,
                    },
                }
            }
            PeerMsg::Pong { .. } | PeerMsg::Acked { .. } | PeerMsg::Refused { .. } => {
                PeerMsg::Acked { seqs: Vec::new() }
            }
            PeerMsg::Ring { ring } => {
                if ring.version > self.placement.version() {
                    self.activate(ring);
                }
                PeerMsg::Acked { seqs: Vec::new() }
            }
        };
        let frame = PeerFrame {
            epoch: self.placement.version(),
            msg,
        };
        self.effects.push(Effect::PeerReply { token, frame });
    }

    /// An answer to a message sent to `from`.
    pub(super) fn peer_answer(&mut self, from: &str, frame: PeerFrame) {
        self.heard(from);
        match frame.msg {
            PeerMsg::Acked { seqs } => {
                for s in seqs {
                    if let Some(o) = &mut self.outgoing {
                        o.acked(s);
                    }
                    self.answered(from, s, None);
                }
                self.maybe_confirm(false);
            }
            PeerMsg::Refused { seq, code, message } => {
                warn!(peer = from, seq, ?code, %message, "a peer refused a message");
                if let Some(o) = &mut self.outgoing {
                    o.acked(seq);
                }
                self.answered(from, seq, Some(Refusal::new(code, message)));
                self.maybe_confirm(false);
            }
            PeerMsg::Ring { ring } if ring.version > self.placement.version() => {
                self.activate(ring)
            }
            _ => {}
        }
    }
}

/// Copies of an at-least-once subscription's unacknowledged notifications (sent, or waiting
/// for room), oldest first, left in place.
fn copy_unacked(id: SubscriptionId, alo: &Alo, now: Timestamp) -> Vec<TailItem> {
    let sent = alo.window.peek_all().map(|(_, e, due)| (e, true, due));
    let waiting = alo.backlog.iter().map(|(_, e)| (e, false, now));
    sent.chain(waiting)
        .filter_map(|(e, sent, due)| match e.decode() {
            Ok(event) => Some(TailItem {
                event,
                sent,
                due_in_ms: due.0.saturating_sub(now.0),
            }),
            Err(err) => {
                warn!(sub = %id, error = %err, "an unacked notification does not decode");
                None
            }
        })
        .collect()
}

/// What waited in the queue of an at-most-once subscription no client attached to, as tail
/// items (never sent).
fn waiting_items(id: SubscriptionId, waiting: Vec<Arc<EncodedEvent>>) -> Vec<TailItem> {
    waiting
        .into_iter()
        .filter_map(|e| match e.decode() {
            Ok(event) => Some(TailItem {
                event,
                sent: false,
                due_in_ms: 0,
            }),
            Err(err) => {
                warn!(sub = %id, error = %err, "a waiting notification does not decode");
                None
            }
        })
        .collect()
}
