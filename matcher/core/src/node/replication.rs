//! Partitioned mode with R ≥ 2 replicas: the first live owner of a topic dispatches; an
//! acknowledged publish is answered once the topic's other live owners hold the event; a
//! replica keeps what it holds until the dispatcher releases it (every at-least-once
//! notification acked) and, when the dispatcher goes silent, delivers it itself. The rules
//! are `sift_matcher_core::replica` and `peers`; this applies them and moves the messages.

use crate::replica;
use crate::Timestamp;
use sift_protocol::frame::ErrorCode;
use sift_protocol::peer::{PeerFrame, PeerMsg};
use sift_protocol::{Event, Topic};
use tracing::{debug, info, warn};

use super::{Effect, Node, Outlet, Refusal, Token};

/// Who waits for an answer.
pub(crate) enum Answer {
    /// Nobody (fire and forget, or a takeover).
    None,
    /// A client's publish, as the shell named it.
    Client(Token),
    /// Another matcher's `Dispatch` message `seq`, as the shell named it.
    Peer { token: Token, seq: u64 },
}

/// A request waiting for other matchers.
pub(crate) struct Wait {
    answer: Answer,
    /// The matchers whose answer is still missing.
    from: Vec<String>,
    /// A relayed publish (the dispatcher is another owner): its event, delivered here if the
    /// dispatcher goes down or refuses before it answers.
    relay: Option<(Topic, Event)>,
    /// The event the holders are to hold (not for a relay): a repeat of its publish that
    /// arrives meanwhile waits here too, instead of being answered before it is held.
    holding: Option<sift_protocol::EventId>,
    /// Those repeats' answers.
    also: Vec<Answer>,
}

/// Events per `Release` message.
const RELEASE_CHUNK: usize = 1024;

impl<Q: Outlet> Node<Q> {
    pub(super) fn finish(&mut self, answer: Answer, result: Result<(), Refusal>) {
        let epoch = self.placement.version();
        match answer {
            Answer::None => {}
            Answer::Client(token) => self.effects.push(Effect::Answer { token, result }),
            Answer::Peer { token, seq } => {
                let msg = match result {
                    Ok(()) => PeerMsg::Acked { seqs: vec![seq] },
                    Err(r) => PeerMsg::Refused {
                        seq,
                        code: r.code,
                        message: r.message,
                    },
                };
                let frame = PeerFrame { epoch, msg };
                self.effects.push(Effect::PeerReply { token, frame });
            }
        }
    }

    /// The topic's dispatcher: its first owner that answers (this matcher always does).
    fn dispatcher_of(&self, topic: &str) -> Option<String> {
        let owners = self.placement.owners(topic);
        let ids: Vec<&str> = owners.iter().map(|m| m.id.as_str()).collect();
        replica::dispatcher(&ids, |id| id == self.me.id || self.live.is_live(id)).map(str::to_owned)
    }

    /// The topic's other owners that answer: where the events it dispatches are held.
    fn holders_of(&self, topic: &str) -> Vec<String> {
        self.placement
            .owners(topic)
            .iter()
            .filter(|m| m.id != self.me.id && self.live.is_live(&m.id))
            .map(|m| m.id.clone())
            .collect()
    }

    /// A client's publish with R ≥ 2.
    pub(super) fn publish_replicated(
        &mut self,
        topic: Topic,
        event: Event,
        acked: bool,
        ring_version: u64,
        answer: Answer,
    ) {
        if let Err(r) = self.epoch(ring_version) {
            return self.finish(answer, Err(r));
        }
        if !self.owns(&topic) {
            if !acked && ring_version < self.placement.version() && self.forward(&topic, &event) {
                return self.finish(answer, Ok(()));
            }
            let refusal = self.not_owner(&topic);
            return self.finish(answer, Err(refusal));
        }
        match self.dispatcher_of(&topic) {
            Some(d) if d != self.me.id => {
                // A replica reached first (the publisher failed over, or hedged): the
                // dispatcher delivers, and answers once the replicas hold the event.
                let seq = self.next_seq();
                let msg = PeerMsg::Dispatch {
                    seq,
                    event: event.clone(),
                    redeliver: false,
                };
                if !self.peer_send(&d, msg) {
                    return self.dispatch_here(topic, event, acked, answer, false);
                }
                if acked {
                    self.waits.insert(
                        seq,
                        Wait {
                            answer,
                            from: vec![d],
                            relay: Some((topic, event)),
                            holding: None,
                            also: Vec::new(),
                        },
                    );
                } else {
                    self.finish(answer, Ok(()));
                }
            }
            _ => self.dispatch_here(topic, event, acked, answer, false),
        }
    }

    /// Delivers `event` from here and has the topic's other live owners hold it; `answer`
    /// gets its answer once they do (at once if there are none). `dedup`: a repeat of an id
    /// seen before is dropped (acknowledged publishes).
    fn dispatch_here(
        &mut self,
        topic: Topic,
        event: Event,
        dedup: bool,
        answer: Answer,
        redelivered: bool,
    ) {
        let now = self.now();
        if dedup && !self.dedup.first_time(now, event.id) {
            self.stats.duplicates += 1;
            // Still waiting for its holders: the repeat is answered with the first.
            if let Some(w) = self
                .waits
                .values_mut()
                .find(|w| w.holding == Some(event.id))
            {
                w.also.push(answer);
                return;
            }
            return self.finish(answer, Ok(()));
        }
        self.stats.published += 1;
        let outstanding = match self.match_and_deliver(now, &topic, &event, redelivered) {
            Ok(n) => n,
            Err(r) => return self.finish(answer, Err(r)),
        };
        let holders = self.holders_of(&topic);
        let waits_for_holders = !matches!(answer, Answer::None) && dedup;
        if holders.is_empty() || (!waits_for_holders && outstanding == 0) {
            return self.finish(answer, Ok(()));
        }
        let seq = self.next_seq();
        for h in &holders {
            let msg = PeerMsg::Hold {
                seq,
                dispatcher: self.me.id.clone(),
                events: vec![event.clone()],
            };
            self.peer_send(h, msg);
        }
        self.releases
            .dispatched(event.id, outstanding, holders.clone());
        if waits_for_holders {
            self.waits.insert(
                seq,
                Wait {
                    answer,
                    from: holders,
                    relay: None,
                    holding: Some(event.id),
                    also: Vec::new(),
                },
            );
        } else {
            self.finish(answer, Ok(()));
        }
    }

    /// A `Dispatch` from another matcher (R ≥ 2): deliver from here.
    pub(super) fn dispatch_from_peer(
        &mut self,
        seq: u64,
        event: Event,
        redeliver: bool,
        epoch: u64,
        token: Token,
    ) {
        let answer = Answer::Peer { token, seq };
        let topic = match event.validate(&self.config.limits) {
            Ok(t) => t,
            Err(e) => {
                return self.finish(
                    answer,
                    Err(Refusal::new(ErrorCode::InvalidEvent, e.to_string())),
                )
            }
        };
        if let Err(r) = self.epoch(epoch) {
            return self.finish(answer, Err(r));
        }
        if !self.owns(&topic) {
            let refusal = self.not_owner(&topic);
            return self.finish(answer, Err(refusal));
        }
        // A takeover's redelivery goes out even if this id was seen (subscribers drop
        // repeats); a relayed publish is dropped as a repeat.
        self.dispatch_here(topic, event, !redeliver, answer, redeliver);
    }

    /// `Hold` from a dispatcher.
    pub(super) fn hold(&mut self, dispatcher: &str, events: Vec<Event>) {
        for e in events {
            self.held.hold(dispatcher, e.id, e);
        }
    }

    /// `Release` from a dispatcher.
    pub(super) fn release(&mut self, ids: &[sift_protocol::EventId]) {
        for id in ids {
            self.held.release(id);
        }
    }

    /// An answer to a message sent to `from` that a request waits for.
    pub(super) fn answered(&mut self, from: &str, seq: u64, refused: Option<Refusal>) {
        let Some(mut w) = self.waits.remove(&seq) else {
            return;
        };
        if let (Some(r), Some((topic, event))) = (&refused, w.relay.take()) {
            // The dispatcher would not take it: deliver from here.
            debug!(peer = from, error = %r.message, "relay refused; dispatching here");
            return self.dispatch_here(topic, event, true, w.answer, false);
        }
        w.from.retain(|f| f != from);
        if w.from.is_empty() {
            self.complete(w);
        } else {
            self.waits.insert(seq, w);
        }
    }

    /// Every holder a wait waited for answered (or died): its publishes are answered.
    fn complete(&mut self, w: Wait) {
        self.finish(w.answer, Ok(()));
        for a in w.also {
            self.finish(a, Ok(()));
        }
    }

    /// Watches the other members of the active and announced rings (R ≥ 2).
    pub(super) fn track_peers(&mut self) {
        let now = self.now();
        let mut ids: Vec<String> = Vec::new();
        if self.placement.replicas() >= 2 {
            let rings = std::iter::once(&self.placement).chain(self.pending.as_ref());
            for p in rings {
                for m in p.members() {
                    if m.id != self.me.id && !ids.contains(&m.id) {
                        ids.push(m.id.clone());
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .live
            .ids()
            .filter(|id| !ids.contains(id))
            .cloned()
            .collect();
        self.live.track(now, ids.into_iter());
        for id in gone {
            self.peer_down(&id);
        }
    }

    /// Something was heard from `from`.
    pub(super) fn heard(&mut self, from: &str) {
        let now = self.now();
        if self.live.heard(now, from) {
            info!(peer = from, "peer answers again");
        }
    }

    /// When the failure detector next has something to do.
    pub(super) fn liveness_deadline(&self) -> Option<Timestamp> {
        (self.placement.replicas() >= 2)
            .then(|| self.live.next_deadline())
            .flatten()
    }

    /// Probes peers and acts on those gone silent.
    pub(super) fn liveness_tick(&mut self) {
        if self.placement.replicas() < 2 {
            return;
        }
        let now = self.now();
        let verdicts = self.live.tick(now);
        for (to, nonce) in verdicts.pings {
            self.peer_send(&to, PeerMsg::Ping { nonce });
        }
        for id in verdicts.down {
            self.peer_down(&id);
        }
    }

    /// `id` stopped answering (or left the rings): what it dispatched and this matcher
    /// holds is delivered by the topics' next live owners, and requests waiting on it stop
    /// waiting.
    fn peer_down(&mut self, id: &str) {
        let held = self.held.take(id);
        warn!(
            peer = id,
            held = held.len(),
            "peer down: taking over what it dispatched"
        );
        for (_, event) in held {
            let Ok(topic) = Topic::parse(&event.topic) else {
                continue;
            };
            match self.dispatcher_of(&topic) {
                Some(d) if d == self.me.id => {
                    self.stats.taken_over_events += 1;
                    self.dispatch_here(topic, event, false, Answer::None, true);
                }
                Some(d) => {
                    let seq = self.next_seq();
                    let msg = PeerMsg::Dispatch {
                        seq,
                        event,
                        redeliver: true,
                    };
                    self.peer_send(&d, msg);
                }
                None => warn!(topic = %topic, "no live owner for a held event"),
            }
        }
        let waiting: Vec<u64> = self
            .waits
            .iter()
            .filter(|(_, w)| w.from.iter().any(|f| f == id))
            .map(|(s, _)| *s)
            .collect();
        for seq in waiting {
            let Some(mut w) = self.waits.remove(&seq) else {
                continue;
            };
            if let Some((topic, event)) = w.relay.take() {
                self.dispatch_here(topic, event, true, w.answer, false);
                continue;
            }
            // A holder died: it cannot hold the event; the answer does not wait for it.
            w.from.retain(|f| f != id);
            if w.from.is_empty() {
                self.complete(w);
            } else {
                self.waits.insert(seq, w);
            }
        }
    }

    /// Tells the holders which events they may let go.
    pub(super) fn flush_releases(&mut self) {
        let ready = self.releases.take_ready();
        for (holder, ids) in ready {
            for chunk in ids.chunks(RELEASE_CHUNK) {
                let seq = self.next_seq();
                self.peer_send(
                    &holder,
                    PeerMsg::Release {
                        seq,
                        ids: chunk.to_vec(),
                    },
                );
            }
        }
    }
}
