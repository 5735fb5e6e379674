use super::*;
use std::collections::VecDeque;

/// A minimal synchronous-round driver over a complete graph (the full simulator lives in
/// `sift-bench`): ticks first, then every message of the round in order; relays go to the
/// next round.
struct Net {
    nodes: Vec<Gossip<Vec<u8>>>,
    peers: Vec<Vec<NodeId>>,
    next: VecDeque<(NodeId, Send<Vec<u8>>)>,
    trace: Vec<String>,
    learned_at: Vec<Option<u64>>,
}

impl Net {
    fn new(n: u64, strategy: &str, seed: u64) -> Net {
        let strategy: Strategy = strategy.parse().expect("strategy");
        let nodes = (0..n)
            .map(|i| Gossip::new(i, Config::new(strategy, seed)))
            .collect();
        let peers = (0..n)
            .map(|i| (0..n).filter(|&j| j != i).collect())
            .collect();
        Net {
            nodes,
            peers,
            next: VecDeque::new(),
            trace: Vec::new(),
            learned_at: vec![None; n as usize],
        }
    }

    fn originate(&mut self, node: u64, key: u64, body: Option<Vec<u8>>) -> Update<Vec<u8>> {
        let mut out = Effects::default();
        let i = node as usize;
        let u = self.nodes[i].originate(key, body, 0, &self.peers[i], &mut out);
        self.learned_at[i] = Some(0);
        for s in out.sends {
            self.next.push_back((node, s));
        }
        u
    }

    fn round(&mut self, now: u64) {
        let mut queue: VecDeque<(NodeId, Send<Vec<u8>>)> = std::mem::take(&mut self.next);
        for i in 0..self.nodes.len() {
            let mut out = Effects::default();
            self.nodes[i].tick(now, &self.peers[i], &mut out);
            queue.extend(out.sends.into_iter().map(|s| (i as u64, s)));
        }
        while let Some((from, send)) = queue.pop_front() {
            self.trace
                .push(format!("{now} {from}->{} {:?}", send.to, send.msg));
            let to = send.to as usize;
            let mut out = Effects::default();
            self.nodes[to].on_message(from, send.msg, now, &self.peers[to], &mut out);
            if !out.learned.is_empty() && self.learned_at[to].is_none() {
                self.learned_at[to] = Some(now);
            }
            for s in out.sends {
                if s.relay {
                    self.next.push_back((send.to, s));
                } else {
                    queue.push_back((send.to, s));
                }
            }
        }
    }

    fn knowing(&self, id: UpdateId) -> usize {
        self.nodes.iter().filter(|g| g.knows(id)).count()
    }

    fn run_until_all(&mut self, id: UpdateId, max: u64) -> u64 {
        for r in 1..=max {
            self.round(r);
            if self.knowing(id) == self.nodes.len() {
                return r;
            }
        }
        max + 1
    }
}

const ALL: [&str; 9] = [
    "flood",
    "bcrm:2,2",
    "rumor:2",
    "rumor-coin:2",
    "rumor-blind-coin:2",
    "anti-entropy:push",
    "anti-entropy:pull",
    "anti-entropy:push-pull",
    "rumor:2+anti-entropy:push-pull",
];

#[test]
fn same_seed_same_trace_and_other_seed_other_trace() {
    for name in ALL {
        let run = |seed| {
            let mut net = Net::new(40, name, seed);
            net.originate(3, 7, Some(vec![1, 2, 3]));
            for r in 1..=12 {
                net.round(r);
            }
            net.trace
        };
        let a = run(1);
        assert!(!a.is_empty(), "{name} sent nothing");
        assert_eq!(a, run(1), "{name} is not deterministic");
        if name != "flood" {
            assert_ne!(a, run(2), "{name} ignores its seed");
        }
    }
}

#[test]
fn every_strategy_with_a_complete_rule_reaches_every_node() {
    for name in [
        "flood",
        "anti-entropy:push",
        "anti-entropy:pull",
        "anti-entropy:push-pull",
        "rumor:2+anti-entropy",
    ] {
        let mut net = Net::new(60, name, 5);
        let u = net.originate(0, 1, Some(b"sub".to_vec()));
        let rounds = net.run_until_all(u.id(), 60);
        assert!(rounds <= 60, "{name} did not reach every node in 60 rounds");
        for g in &net.nodes {
            assert_eq!(g.get(0, 1), Some((1, Some(&b"sub".to_vec()))), "{name}");
        }
    }
}

#[test]
fn flooding_takes_one_round_on_a_complete_graph_and_relays_to_all_but_the_sender() {
    let mut net = Net::new(10, "flood", 1);
    let u = net.originate(0, 1, None);
    assert_eq!(net.next.len(), 9, "the origin sends to its 9 neighbours");
    net.round(1);
    assert_eq!(net.knowing(u.id()), 10);
    // Each of the 9 relays to its 8 neighbours other than the origin.
    assert_eq!(net.next.len(), 9 * 8);
}

#[test]
fn rumors_die_out_and_leave_a_residue_mostly_small() {
    let mut net = Net::new(200, "rumor:1", 9);
    let u = net.originate(0, 1, None);
    for r in 1..=200 {
        net.round(r);
    }
    assert!(
        net.nodes.iter().all(|g| !g.is_active()),
        "rumor mongering must stop by itself"
    );
    let knowing = net.knowing(u.id());
    assert!(
        knowing > 100 && knowing < 200,
        "k=1 reaches most but (almost surely) not all: {knowing}"
    );
}

#[test]
fn bcrm_pushes_at_most_b_per_tick_for_f_ticks() {
    let mut net = Net::new(100, "bcrm:2,2", 3);
    let u = net.originate(0, 1, None);
    for r in 1..=50 {
        net.round(r);
    }
    assert!(net.nodes.iter().all(|g| !g.is_active()));
    let pushed = net
        .nodes
        .iter()
        .map(|g| g.stats().messages)
        .max()
        .unwrap_or(0);
    assert!(
        pushed <= 4,
        "a node sends an update at most B·F = 4 times: {pushed}"
    );
    assert!(net.knowing(u.id()) > 50);
}

#[test]
fn feedback_counter_k1_stops_after_one_unnecessary_contact() {
    let peers: Vec<NodeId> = vec![1];
    let mut a: Gossip<Vec<u8>> = Gossip::new(0, Config::new("rumor:1".parse().expect("s"), 1));
    let mut b: Gossip<Vec<u8>> = Gossip::new(1, Config::new("rumor:1".parse().expect("s"), 1));
    let mut out = Effects::default();
    let u = a.originate(1, None, 0, &peers, &mut out);
    // First contact: b did not know; no interest lost.
    a.tick(1, &peers, &mut out);
    let push = out.sends.pop().expect("push").msg;
    let mut back = Effects::default();
    b.on_message(0, push, 1, &[0u64][..], &mut back);
    assert_eq!(back.learned.len(), 1);
    let Message::Feedback { known, news } = back.sends.remove(0).msg else {
        panic!("feedback expected")
    };
    assert!(known.is_empty());
    a.on_message(1, Message::Feedback { known, news }, 1, &peers, &mut out);
    assert!(a.is_active());
    // Second contact: b knew since before now → a loses interest.
    out.clear();
    a.tick(2, &peers, &mut out);
    let push = out.sends.pop().expect("push").msg;
    let mut back = Effects::default();
    b.on_message(0, push, 2, &[0u64][..], &mut back);
    let Message::Feedback { known, news } = back.sends.remove(0).msg else {
        panic!("feedback expected")
    };
    assert_eq!(known, vec![u.id()]);
    a.on_message(1, Message::Feedback { known, news }, 2, &peers, &mut out);
    assert!(!a.is_active());
}

#[test]
fn learned_in_the_same_instant_is_still_news_for_feedback() {
    let mut b: Gossip<Vec<u8>> = Gossip::new(1, Config::new("rumor:1".parse().expect("s"), 1));
    let u = Update {
        origin: 0,
        key: 1,
        version: 1,
        body: None,
    };
    let push = || Message::Push {
        updates: vec![u.clone()],
        feedback: true,
    };
    let mut out = Effects::default();
    b.on_message(0, push(), 5, &[0u64, 2][..], &mut out);
    b.on_message(2, push(), 5, &[0u64, 2][..], &mut out);
    let known: Vec<_> = out
        .sends
        .iter()
        .filter_map(|s| {
            if let Message::Feedback { known, .. } = &s.msg {
                Some(known.len())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        known,
        vec![0, 0],
        "both pushers of the same cycle count as necessary"
    );
    out.clear();
    b.on_message(2, push(), 6, &[0u64, 2][..], &mut out);
    assert!(matches!(&out.sends[0].msg, Message::Feedback { known, .. } if known.len() == 1));
}

#[test]
fn anti_entropy_sends_only_what_the_other_lacks() {
    let strategy: Strategy = "anti-entropy:push-pull".parse().expect("s");
    let mut a: Gossip<Vec<u8>> = Gossip::new(1, Config::new(strategy, 1));
    let mut b: Gossip<Vec<u8>> = Gossip::new(2, Config::new(strategy, 2));
    let none: [NodeId; 0] = [];
    let mut out = Effects::default();
    for key in 0..3 {
        a.originate(key, Some(vec![key as u8]), 0, &none[..], &mut out);
    }
    // b already holds a's first two updates and has one of its own.
    for key in 0..2 {
        let u = Update {
            origin: 1,
            key,
            version: key + 1,
            body: Some(vec![key as u8]),
        };
        b.on_message(
            1,
            Message::Deltas {
                updates: vec![u],
                covered: vec![],
                request: None,
            },
            0,
            &none[..],
            &mut out,
        );
    }
    b.originate(9, Some(vec![9]), 0, &none[..], &mut out);
    out.clear();
    let peers_a = [2u64];
    a.tick(1, &peers_a[..], &mut out);
    let digest = out.sends.remove(0).msg;
    let mut back = Effects::default();
    b.on_message(1, digest, 1, &[1u64][..], &mut back);
    let reply = back.sends.remove(0).msg;
    let Message::Deltas {
        updates, request, ..
    } = &reply
    else {
        panic!("deltas expected: {reply:?}")
    };
    assert_eq!(
        updates.iter().map(Update::id).collect::<Vec<_>>(),
        vec![UpdateId {
            origin: 2,
            key: 9,
            version: 1
        }]
    );
    assert!(
        request.is_some(),
        "b lacks a's third update and asks for it"
    );
    let mut fin = Effects::default();
    a.on_message(2, reply, 1, &peers_a[..], &mut fin);
    assert_eq!(fin.learned.len(), 1);
    let Message::Deltas {
        updates, request, ..
    } = &fin.sends[0].msg
    else {
        panic!("deltas expected")
    };
    assert_eq!(
        updates.iter().map(Update::id).collect::<Vec<_>>(),
        vec![UpdateId {
            origin: 1,
            key: 2,
            version: 3
        }]
    );
    assert!(request.is_none());
    assert_eq!(a.summary(), b.summary_after(fin.sends.remove(0).msg, 1));
}

impl Gossip<Vec<u8>> {
    fn summary_after(&mut self, msg: Message<Vec<u8>>, now: u64) -> Vec<Have> {
        let mut out = Effects::default();
        self.on_message(0, msg, now, &[0u64][..], &mut out);
        self.summary()
    }
}

#[test]
fn push_anti_entropy_is_offer_request_deltas() {
    let mut net = Net::new(2, "anti-entropy:push", 1);
    net.originate(0, 1, Some(vec![1]));
    net.round(1);
    net.round(2);
    let kinds: Vec<&str> = net
        .trace
        .iter()
        .map(|t| {
            if t.contains("Digest") {
                "digest"
            } else if t.contains("request: Some") {
                "request"
            } else {
                "deltas"
            }
        })
        .collect();
    assert!(
        kinds
            .windows(3)
            .any(|w| w == ["digest", "request", "deltas"]),
        "{:?}",
        net.trace
    );
    assert_eq!(
        net.knowing(UpdateId {
            origin: 0,
            key: 1,
            version: 1
        }),
        2
    );
}

#[test]
fn a_superseded_version_never_blocks_the_summary() {
    // Node 1 hears only version 3 of key 5 (versions 1 and 2 of another key it never sees,
    // superseded at the origin); one exchange with the origin brings it level.
    let strategy: Strategy = "anti-entropy:pull".parse().expect("s");
    let mut origin: Gossip<Vec<u8>> = Gossip::new(0, Config::new(strategy, 1));
    let mut other: Gossip<Vec<u8>> = Gossip::new(1, Config::new(strategy, 1));
    let none: [NodeId; 0] = [];
    let mut out = Effects::default();
    origin.originate(4, Some(vec![1]), 0, &none[..], &mut out);
    origin.originate(4, None, 0, &none[..], &mut out);
    let u = origin.originate(5, Some(vec![3]), 0, &none[..], &mut out);
    other.on_message(
        0,
        Message::Push {
            updates: vec![u],
            feedback: false,
        },
        0,
        &none[..],
        &mut out,
    );
    assert_eq!(
        other.summary(),
        vec![Have {
            origin: 0,
            upto: 0,
            max: 3
        }]
    );
    out.clear();
    other.tick(1, &[0u64][..], &mut out);
    let digest = out.sends.remove(0).msg;
    let mut back = Effects::default();
    origin.on_message(1, digest, 1, &[1u64][..], &mut back);
    let reply = back.sends.remove(0).msg;
    other.on_message(0, reply, 1, &[0u64][..], &mut out);
    assert_eq!(
        other.summary(),
        vec![Have {
            origin: 0,
            upto: 3,
            max: 3
        }]
    );
    assert_eq!(other.get(0, 4), Some((2, None)), "the tombstone came along");
}

#[test]
fn tombstones_are_collected_and_an_old_copy_is_not_taken_back() {
    let strategy: Strategy = "anti-entropy:push-pull".parse().expect("s");
    let mut config = Config::new(strategy, 1);
    config.tombstone_ttl = 10;
    let mut node: Gossip<Vec<u8>> = Gossip::new(1, config);
    let none: [NodeId; 0] = [];
    let mut out = Effects::default();
    let live = Update {
        origin: 0,
        key: 1,
        version: 1,
        body: Some(vec![1]),
    };
    let dead = Update {
        origin: 0,
        key: 1,
        version: 2,
        body: None,
    };
    node.on_message(
        0,
        Message::Push {
            updates: vec![live.clone(), dead],
            feedback: false,
        },
        0,
        &none[..],
        &mut out,
    );
    assert_eq!(node.len(), 1);
    assert_eq!(node.live(), 0);
    node.tick(5, &none[..], &mut out);
    assert_eq!(node.len(), 1, "kept until its time is up");
    node.tick(10, &none[..], &mut out);
    assert_eq!(node.len(), 0, "collected");
    assert_eq!(node.stats().collected, 1);
    out.clear();
    node.on_message(
        2,
        Message::Push {
            updates: vec![live],
            feedback: false,
        },
        11,
        &none[..],
        &mut out,
    );
    assert!(
        out.learned.is_empty(),
        "a copy older than the summary is not taken back"
    );
    assert_eq!(node.len(), 0);
}

#[test]
fn a_newer_version_replaces_and_an_older_one_is_ignored() {
    let mut node: Gossip<Vec<u8>> = Gossip::new(1, Config::new(Strategy::FLOOD, 1));
    let none: [NodeId; 0] = [];
    let mut out = Effects::default();
    let v = |version, b: u8| Update {
        origin: 0,
        key: 1,
        version,
        body: Some(vec![b]),
    };
    node.on_message(
        0,
        Message::Push {
            updates: vec![v(2, 2)],
            feedback: false,
        },
        0,
        &none[..],
        &mut out,
    );
    node.on_message(
        0,
        Message::Push {
            updates: vec![v(1, 1)],
            feedback: false,
        },
        0,
        &none[..],
        &mut out,
    );
    assert_eq!(node.get(0, 1), Some((2, Some(&vec![2]))));
    node.on_message(
        0,
        Message::Push {
            updates: vec![v(3, 3)],
            feedback: false,
        },
        0,
        &none[..],
        &mut out,
    );
    assert_eq!(node.get(0, 1), Some((3, Some(&vec![3]))));
    assert_eq!(out.learned.len(), 2);
}

#[test]
fn a_capped_exchange_continues_next_time() {
    let strategy: Strategy = "anti-entropy:pull".parse().expect("s");
    let mut config = Config::new(strategy, 1);
    config.updates_per_message_max = 3;
    let mut a: Gossip<Vec<u8>> = Gossip::new(0, config.clone());
    let mut b: Gossip<Vec<u8>> = Gossip::new(1, config);
    let none: [NodeId; 0] = [];
    let mut out = Effects::default();
    for key in 0..10 {
        a.originate(key, Some(vec![]), 0, &none[..], &mut out);
    }
    let mut exchanges = 0;
    while b.live() < 10 {
        exchanges += 1;
        assert!(exchanges <= 4, "three per exchange: four exchanges at most");
        out.clear();
        b.tick(exchanges, &[0u64][..], &mut out);
        let digest = out.sends.remove(0).msg;
        let mut back = Effects::default();
        a.on_message(1, digest, exchanges, &[1u64][..], &mut back);
        let reply = back.sends.remove(0).msg;
        assert!(reply.updates() <= 3);
        b.on_message(0, reply, exchanges, &[0u64][..], &mut out);
    }
    assert_eq!(b.summary(), a.summary());
}

#[test]
fn messages_stay_within_the_byte_budget() {
    for name in ["flood", "rumor:1", "anti-entropy:pull"] {
        let strategy: Strategy = name.parse().expect("s");
        let mut config = Config::new(strategy, 1);
        config.bytes_per_message_max = 1_000;
        let mut a: Gossip<Vec<u8>> = Gossip::new(0, config.clone());
        let mut b: Gossip<Vec<u8>> = Gossip::new(1, config);
        let (to_b, to_a) = ([1u64], [0u64]);
        let mut out = Effects::default();
        for key in 0..20 {
            // ~330 bytes each: three fit in a message.
            a.originate(key, Some(vec![0; 300]), 0, &to_b[..], &mut out);
        }
        let mut sent = 0;
        for now in 1..50 {
            a.tick(now, &to_b[..], &mut out);
            b.tick(now, &to_a[..], &mut out);
            // Deliver everything in flight until quiet, checking every message's size.
            while !out.sends.is_empty() {
                let sends: Vec<_> = out.sends.drain(..).collect();
                for s in sends {
                    let updates = s.msg.updates();
                    assert!(updates <= 3, "{name}: {updates} updates in one message");
                    sent += updates;
                    let mut back = Effects::default();
                    if s.to == 1 {
                        b.on_message(0, s.msg, now, &to_a[..], &mut back);
                    } else {
                        a.on_message(1, s.msg, now, &to_b[..], &mut back);
                    }
                    out.sends.extend(back.sends);
                }
            }
            if b.live() == 20 {
                break;
            }
        }
        assert_eq!(
            b.live(),
            20,
            "{name}: everything arrived in pieces ({sent} sent)"
        );
    }
}

#[test]
fn a_retired_version_is_not_taken_back() {
    let mut node: Gossip<Vec<u8>> = Gossip::new(1, Config::new(Strategy::FLOOD, 1));
    let none: [NodeId; 0] = [];
    let mut out = Effects::default();
    // Version 5 arrives out of order (a gap below it), its lease lapses here, and an old
    // copy of it comes round again.
    let late = Update {
        origin: 0,
        key: 1,
        version: 5,
        body: Some(vec![1]),
    };
    node.on_message(
        0,
        Message::Push {
            updates: vec![late.clone()],
            feedback: false,
        },
        0,
        &none[..],
        &mut out,
    );
    assert!(node.retire(0, 1, 5));
    out.clear();
    node.on_message(
        2,
        Message::Push {
            updates: vec![late],
            feedback: false,
        },
        1,
        &none[..],
        &mut out,
    );
    assert!(out.learned.is_empty());
    assert_eq!(node.len(), 0);
}
