//! The other matchers as one matcher sees them: whether each is alive (a failure detector fed
//! by everything heard from it, probed with pings), and a reliable channel to each — numbered
//! messages kept until the peer answers, sent again when the link to it comes back.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use sift_protocol::peer::PeerMsg;

use crate::types::Timestamp;

/// One peer's standing.
#[derive(Debug)]
struct PeerState {
    /// When anything was last heard from it.
    heard: u64,
    /// As the detector last judged.
    live: bool,
    /// When to probe it next.
    next_ping: u64,
    /// Reliable messages sent and not answered, by sequence number.
    unanswered: BTreeMap<u64, PeerMsg>,
    next_seq: u64,
}

/// Liveness and reliable channels for every peer.
#[derive(Debug)]
pub struct Peers {
    peers: HashMap<String, PeerState>,
    ping_every_ms: u64,
    timeout_ms: u64,
    unanswered_max: usize,
    nonce: u64,
}

/// What the detector decided at one tick.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Peers now judged dead.
    pub down: Vec<String>,
    /// Peers to probe now, with the nonce to send.
    pub pings: Vec<(String, u64)>,
}

impl Peers {
    /// No peers yet: each probed every `ping_every_ms`, judged down after `timeout_ms` of
    /// silence, with at most `unanswered_max` messages kept unanswered per peer.
    pub fn new(ping_every_ms: u64, timeout_ms: u64, unanswered_max: usize) -> Peers {
        Peers {
            peers: HashMap::new(),
            ping_every_ms: ping_every_ms.max(1),
            timeout_ms: timeout_ms.max(1),
            unanswered_max: unanswered_max.max(1),
            nonce: 0,
        }
    }

    /// Watches exactly `ids` from now on (peers no longer in any ring are forgotten, with
    /// their unanswered messages, which are returned).
    pub fn track(
        &mut self,
        now: Timestamp,
        ids: impl Iterator<Item = String>,
    ) -> Vec<(String, Vec<(u64, PeerMsg)>)> {
        let keep: hashbrown::HashSet<String> = ids.collect();
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        let mut dropped = Vec::new();
        for id in gone {
            if let Some(p) = self.peers.remove(&id) {
                dropped.push((id, p.unanswered.into_iter().collect()));
            }
        }
        for id in keep {
            self.peers.entry(id).or_insert_with(|| PeerState {
                // A new peer is presumed alive: it gets a full timeout to speak.
                heard: now.0,
                live: true,
                next_ping: now.0,
                unanswered: BTreeMap::new(),
                next_seq: 1,
            });
        }
        dropped
    }

    /// Something arrived from `id`. True when this brings a dead peer back.
    pub fn heard(&mut self, now: Timestamp, id: &str) -> bool {
        match self.peers.get_mut(id) {
            Some(p) => {
                p.heard = p.heard.max(now.0);
                let back = !p.live;
                p.live = true;
                back
            }
            None => false,
        }
    }

    /// Whether `id` is judged alive (unknown peers are not).
    pub fn is_live(&self, id: &str) -> bool {
        self.peers.get(id).is_some_and(|p| p.live)
    }

    /// Runs the detector at `now`.
    pub fn tick(&mut self, now: Timestamp) -> Verdicts {
        let mut v = Verdicts::default();
        for (id, p) in self.peers.iter_mut() {
            if p.live && now.0.saturating_sub(p.heard) >= self.timeout_ms {
                p.live = false;
                v.down.push(id.clone());
            }
            if p.next_ping <= now.0 {
                self.nonce += 1;
                p.next_ping = now.0 + self.ping_every_ms;
                v.pings.push((id.clone(), self.nonce));
            }
        }
        v.down.sort_unstable();
        v.pings.sort_unstable();
        v
    }

    /// When [`Peers::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.peers
            .values()
            .map(|p| {
                let suspect = if p.live {
                    p.heard + self.timeout_ms
                } else {
                    u64::MAX
                };
                p.next_ping.min(suspect)
            })
            .min()
            .map(Timestamp)
    }

    /// The next sequence number for a reliable message to `to`.
    pub fn next_seq(&mut self, to: &str) -> Option<u64> {
        let p = self.peers.get_mut(to)?;
        let seq = p.next_seq;
        p.next_seq += 1;
        Some(seq)
    }

    /// Keeps reliable message `seq` to `to` until it is answered. Returns the oldest
    /// message dropped to stay within the bound, if any (its waiter has failed).
    pub fn keep(&mut self, to: &str, seq: u64, msg: PeerMsg) -> Option<u64> {
        let p = self.peers.get_mut(to)?;
        p.unanswered.insert(seq, msg);
        if p.unanswered.len() > self.unanswered_max {
            return p.unanswered.pop_first().map(|(s, _)| s);
        }
        None
    }

    /// `to` answered message `seq`; returns whether it was waiting.
    pub fn answered(&mut self, to: &str, seq: u64) -> bool {
        self.peers
            .get_mut(to)
            .is_some_and(|p| p.unanswered.remove(&seq).is_some())
    }

    /// The messages still unanswered by `to`, oldest first (to send again on a new link).
    pub fn unanswered(&self, to: &str) -> Vec<PeerMsg> {
        self.peers
            .get(to)
            .map(|p| p.unanswered.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes the unanswered messages to `to` that `pick` selects (a dead peer's holds, say).
    pub fn take_unanswered(
        &mut self,
        to: &str,
        mut pick: impl FnMut(&PeerMsg) -> bool,
    ) -> Vec<(u64, PeerMsg)> {
        let Some(p) = self.peers.get_mut(to) else {
            return Vec::new();
        };
        let seqs: Vec<u64> = p
            .unanswered
            .iter()
            .filter(|(_, m)| pick(m))
            .map(|(s, _)| *s)
            .collect();
        seqs.into_iter()
            .filter_map(|s| p.unanswered.remove(&s).map(|m| (s, m)))
            .collect()
    }

    /// The peers watched, live or not.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.peers.keys()
    }

    /// Messages kept for all peers.
    pub fn unanswered_len(&self) -> usize {
        self.peers.values().map(|p| p.unanswered.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_timeout_is_death_and_any_word_is_life() {
        let mut p = Peers::new(100, 500, 10);
        p.track(Timestamp(0), ["b".to_string()].into_iter());
        assert!(p.is_live("b"));
        let v = p.tick(Timestamp(0));
        assert_eq!(v.pings.len(), 1);
        assert_eq!(p.next_deadline(), Some(Timestamp(100)));
        p.heard(Timestamp(300), "b");
        assert!(p.tick(Timestamp(799)).down.is_empty());
        assert_eq!(p.tick(Timestamp(800)).down, vec!["b".to_string()]);
        assert!(!p.is_live("b"));
        assert!(p.heard(Timestamp(900), "b"), "back");
        assert!(p.is_live("b"));
        assert!(!p.is_live("nobody"));
    }

    #[test]
    fn reliable_messages_wait_for_their_answer_within_a_bound() {
        let mut p = Peers::new(100, 500, 2);
        p.track(Timestamp(0), ["b".to_string()].into_iter());
        let msg = |nonce| PeerMsg::Ping { nonce };
        for _ in 0..2 {
            let s = p.next_seq("b").unwrap();
            assert_eq!(p.keep("b", s, msg(s)), None);
        }
        let s = p.next_seq("b").unwrap();
        assert_eq!(p.keep("b", s, msg(s)), Some(1), "the oldest is dropped");
        assert_eq!(p.unanswered("b"), vec![msg(2), msg(3)]);
        assert!(p.answered("b", 2));
        assert!(!p.answered("b", 2));
        assert_eq!(p.unanswered("b"), vec![msg(3)]);
        let dropped = p.track(Timestamp(10), std::iter::empty());
        assert_eq!(dropped, vec![("b".to_string(), vec![(3, msg(3))])]);
        assert!(p.next_seq("b").is_none());
    }
}
