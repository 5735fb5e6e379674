//! Gossip mode: this node's subscriptions announced to the others, theirs held here for
//! matching (suspended while their home is down), and events forwarded to the homes of
//! matching copies.

use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::Frame;
use sift_protocol::{Event, SubscriptionId, Topic};
use std::sync::Arc;
use tracing::{info, warn};

use super::{Effect, Node, Outlet, Replica, SubRecord};
use crate::gossip::{NodeId, Update};

impl<Q: Outlet> Node<Q> {
    /// An event matched at another gossip node for subscriptions held here.
    pub(super) fn forwarded(&mut self, subs: &[SubscriptionId], topic: &Topic, event: &Event) {
        let now = self.now();
        // Checked again against the subscriptions as they are here: the sender matched its
        // copies, which may be a filter change behind.
        let mut subs = subs.to_vec();
        subs.retain(|&id| {
            self.subs.contains_key(&id)
                && self.engine.matches_one(now, id, topic, &event.attrs) == Some(true)
        });
        if subs.is_empty() {
            return;
        }
        let encoded = match EncodedEvent::new(event) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                warn!(error = %e, "cannot encode a forwarded event");
                return;
            }
        };
        for id in subs {
            self.deliver(now, id, event.id, &encoded, false);
        }
    }

    /// Gossip mode: announces a change of this node's subscription `id` (`None`: gone).
    pub(super) fn originate(&mut self, id: SubscriptionId, body: Option<SubRecord>) {
        let now = self.now();
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        match &body {
            Some(record) => {
                g.local.insert(id, record.clone());
            }
            None => {
                if g.local.remove(&id).is_none() {
                    return;
                }
            }
        }
        g.machine
            .originate(id.0, body, now.0, &g.peers, &mut g.effects);
        self.gossip_flush();
    }

    /// Gossip mode: announces a new version of local subscription `id`.
    pub(super) fn reannounce(&mut self, id: SubscriptionId, change: impl FnOnce(&mut SubRecord)) {
        let Some(mut record) = self.gossip.as_ref().and_then(|g| g.local.get(&id).cloned()) else {
            return;
        };
        change(&mut record);
        self.originate(id, Some(record));
    }

    /// Sends what the gossip state machine produced and applies what it learned.
    pub(super) fn gossip_flush(&mut self) {
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        let mut effects = std::mem::take(&mut g.effects);
        for send in effects.sends.drain(..) {
            let data = match rmp_serde::to_vec(&send.msg) {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot encode a gossip message");
                    continue;
                }
            };
            let bytes = data.len() as u64;
            let frame = Frame::Gossip {
                from: g.id,
                data: data.into(),
            };
            self.stats.gossip_sent += 1;
            self.stats.gossip_bytes += bytes;
            self.effects.push(Effect::Mesh { to: send.to, frame });
        }
        let learned: Vec<Update<SubRecord>> = effects.learned.drain(..).collect();
        g.effects = effects;
        for update in learned {
            self.apply_remote(update);
        }
    }

    /// Gossip mode: another node's subscription changed.
    pub(super) fn apply_remote(&mut self, update: Update<SubRecord>) {
        let id = SubscriptionId(update.key);
        let now = self.now();
        let unix = self.unix_ms();
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        if self.subs.contains_key(&id) {
            // Held here for a local client: that one wins; keep the record in case it goes.
            match &update.body {
                Some(_) => {
                    g.shadowed.insert(id, update);
                }
                None => {
                    if g.shadowed
                        .get(&id)
                        .is_some_and(|s| s.origin == update.origin)
                    {
                        g.shadowed.remove(&id);
                    }
                }
            }
            return;
        }
        let remaining = update.body.as_ref().map_or(0, |r| {
            r.deadline_unix_ms
                .saturating_add(g.grace_ms)
                .saturating_sub(unix)
                .min(sift_protocol::limits::LEASE_MAX_MS)
        });
        // A renewal of a copy in the engine: only its deadline moves.
        if let (Some(copy), Some(record)) = (g.remote.get_mut(&id), &update.body) {
            if copy.home == update.origin
                && remaining > 0
                && copy.since == record.since_unix_ms
                && copy.shape == record.shape()
            {
                let deadline = now.plus_millis(remaining);
                if self.engine.extend(now, id, deadline) {
                    copy.version = update.version;
                    copy.until = unix.saturating_add(remaining);
                    return;
                }
            }
        }
        if let Some(copy) = g
            .remote
            .get(&id)
            .copied()
            .or_else(|| g.suspended.get(&id).copied())
        {
            if copy.home != update.origin {
                // Two homes claim this id (its client moved): the later subscription wins,
                // and the loser is dropped from the store so this node does not pass it on.
                let incoming = update
                    .body
                    .as_ref()
                    .map(|r| (r.since_unix_ms, update.origin));
                match incoming {
                    Some(order) if remaining > 0 && order > (copy.since, copy.home) => {
                        g.machine.retire(copy.home, id.0, copy.version);
                    }
                    _ => {
                        g.machine.retire(update.origin, update.key, update.version);
                        return;
                    }
                }
            }
            if g.remote.remove(&id).is_some() {
                let _ = self.engine.unsubscribe(id);
            }
            g.suspended.remove(&id);
        }
        let Some(record) = update.body else {
            return;
        };
        if remaining == 0 {
            g.machine.retire(update.origin, update.key, update.version);
            return;
        }
        let copy = Replica {
            home: update.origin,
            version: update.version,
            since: record.since_unix_ms,
            until: unix.saturating_add(remaining),
            shape: record.shape(),
        };
        if !g.members.contains(&update.origin) {
            g.suspended.insert(id, copy);
            return;
        }
        let sub = match record.to_subscription(id, remaining) {
            Ok(sub) => sub,
            Err(e) => {
                warn!(sub = %id, node = update.origin, error = %e, "ignoring a replicated subscription");
                return;
            }
        };
        match self.engine.subscribe(now, sub) {
            Ok(()) => {
                g.remote.insert(id, copy);
            }
            Err(e) => {
                warn!(sub = %id, node = update.origin, error = %e, "cannot hold a replicated subscription");
                g.machine.retire(update.origin, update.key, update.version);
            }
        }
    }

    /// Gossip mode: membership changed. Copies of nodes now down leave the engine (kept aside
    /// until they lapse); copies of nodes back up return.
    pub(super) fn members_changed(&mut self, peers: Vec<NodeId>) {
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        info!(members = peers.len(), "gossip membership changed");
        g.members = peers.iter().copied().collect();
        g.peers = peers;
        let gone: Vec<SubscriptionId> = g
            .remote
            .iter()
            .filter(|(_, c)| !g.members.contains(&c.home))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(copy) = g.remote.remove(&id) {
                let _ = self.engine.unsubscribe(id);
                g.suspended.insert(id, copy);
            }
        }
        let back: Vec<(SubscriptionId, Replica)> = g
            .suspended
            .iter()
            .filter(|(_, c)| g.members.contains(&c.home))
            .map(|(id, c)| (*id, *c))
            .collect();
        let mut reinstall = Vec::new();
        for (id, copy) in back {
            g.suspended.remove(&id);
            if let Some((version, Some(body))) = g.machine.get(copy.home, id.0) {
                reinstall.push(Update {
                    origin: copy.home,
                    key: id.0,
                    version,
                    body: Some(body.clone()),
                });
            }
        }
        for update in reinstall {
            self.apply_remote(update);
        }
    }

    /// Gossip mode: set-aside copies whose lease ran out are forgotten.
    pub(super) fn expire_suspended(&mut self) {
        let now = self.unix_ms();
        let Some(g) = self.gossip.as_deref_mut() else {
            return;
        };
        let lapsed: Vec<(SubscriptionId, Replica)> = g
            .suspended
            .iter()
            .filter(|(_, c)| c.until <= now)
            .map(|(id, c)| (*id, *c))
            .collect();
        for (id, copy) in lapsed {
            g.suspended.remove(&id);
            g.machine.retire(copy.home, id.0, copy.version);
        }
    }

    /// Gossip mode: another node's subscription lapsed here.
    pub(super) fn drop_remote(&mut self, id: SubscriptionId) {
        if let Some(g) = self.gossip.as_deref_mut() {
            if let Some(copy) = g.remote.remove(&id) {
                g.machine.retire(copy.home, id.0, copy.version);
            }
        }
    }
}
