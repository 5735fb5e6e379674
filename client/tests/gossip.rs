//! Gossip mode end to end: real gossip nodes (SWIM membership, dissemination, forwarding)
//! over QUIC on loopback, driven through the unchanged SDK. Every wait is bounded; waits on
//! another node's state poll that node's own counters.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{bounded, LIMIT};
use futures::StreamExt;
use sift_client::{Client, ClientConfig, Message, Value};
use sift_matcher::{GossipConfig, Matcher, MatcherConfig, MatcherStats};
use sift_protocol::net::tls::{client_config, server_config, CertAuthority};

struct Gossip {
    ca: CertAuthority,
    nodes: Vec<Option<Matcher>>,
    seed: Option<SocketAddr>,
}

impl Gossip {
    async fn start(n: usize, tweak: impl Fn(&mut GossipConfig)) -> Gossip {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut g = Gossip {
            ca: CertAuthority::generate("test CA").unwrap(),
            nodes: Vec::new(),
            seed: None,
        };
        for _ in 0..n {
            g.add(&tweak);
        }
        g.wait_all(|s, n| s.members + 1 == n).await;
        g
    }

    fn add(&mut self, tweak: &impl Fn(&mut GossipConfig)) {
        let cert = self
            .ca
            .issue(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let mut config = MatcherConfig::for_test(&format!("g{}", self.nodes.len() + 1));
        let mut gossip = GossipConfig {
            seeds: self.seed.into_iter().collect(),
            period: Duration::from_millis(50),
            probe_period: Duration::from_millis(200),
            lease_grace: Duration::from_millis(300),
            ..GossipConfig::default()
        };
        tweak(&mut gossip);
        config.gossip = Some(gossip);
        let m = Matcher::start(
            config,
            server_config(&cert, None).unwrap(),
            Some(client_config(&self.ca.cert_pem, None).unwrap()),
        )
        .unwrap();
        self.seed.get_or_insert(m.local_addr().unwrap());
        self.nodes.push(Some(m));
    }

    fn node(&self, i: usize) -> &Matcher {
        self.nodes[i].as_ref().unwrap()
    }

    async fn stats(&self, i: usize) -> MatcherStats {
        self.node(i).stats().await.unwrap()
    }

    /// Waits until every live node's counters satisfy `ok(stats, live nodes)`.
    async fn wait_all(&self, ok: impl Fn(&MatcherStats, usize) -> bool) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        self.wait(&live, ok).await;
    }

    async fn wait(&self, which: &[usize], ok: impl Fn(&MatcherStats, usize) -> bool) {
        let n = self.nodes.iter().flatten().count();
        bounded(async {
            loop {
                let mut all = true;
                for &i in which {
                    all &= ok(&self.stats(i).await, n);
                }
                if all {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    async fn client(&self, i: usize) -> Client {
        let addr = self.node(i).local_addr().unwrap();
        Client::connect(ClientConfig::new(addr, self.ca.cert_pem.clone()))
            .await
            .unwrap()
    }

    /// A client at node `i` that knows the other nodes as fallbacks.
    async fn client_with_fallbacks(&self, i: usize) -> Client {
        let mut config =
            ClientConfig::new(self.node(i).local_addr().unwrap(), self.ca.cert_pem.clone());
        config.fallbacks = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| self.node(j).local_addr().unwrap())
            .collect();
        Client::connect(config).await.unwrap()
    }

    async fn kill(&mut self, i: usize) {
        self.nodes[i].take().unwrap().shutdown().await;
    }

    async fn shutdown(self) {
        for m in self.nodes.into_iter().flatten() {
            m.shutdown().await;
        }
    }
}

#[tokio::test]
async fn subscribe_on_one_node_publish_on_another() {
    let g = Gossip::start(3, |_| {}).await;
    let sub_client = g.client(0).await;
    let pub_client = g.client(2).await;
    bounded(async {
        let mut exact = sub_client
            .subscribe("orders.eu")
            .filter("price > 10")
            .start()
            .await
            .unwrap();
        let mut pattern = sub_client.subscribe("orders.*").start().await.unwrap();
        // Both copies reach the other nodes.
        g.wait(&[1, 2], |s, _| s.remote_subscriptions == 2).await;
        for price in [5, 50] {
            pub_client
                .publish_acked(Message::new("orders.eu").attr("price", price).payload("p"))
                .await
                .unwrap();
        }
        let n = exact.next().await.unwrap();
        assert_eq!(
            n.event.attrs["price"],
            Value::Int(50),
            "the filter holds across nodes"
        );
        assert_eq!(n.event.payload.as_ref(), b"p");
        let mut prices = vec![];
        for _ in 0..2 {
            prices.push(pattern.next().await.unwrap().event.attrs["price"].clone());
        }
        assert_eq!(prices, vec![Value::Int(5), Value::Int(50)]);
    })
    .await;
    // Node 2 forwarded each matching event once to node 0 (one forward per event, however
    // many of node 0's subscriptions matched).
    assert_eq!(g.stats(2).await.forwarded, 2);
    sub_client.close().await;
    pub_client.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn unsubscribing_removes_the_copies_everywhere() {
    let g = Gossip::start(3, |_| {}).await;
    let client = g.client(1).await;
    let sub = client.subscribe("t").start().await.unwrap();
    g.wait(&[0, 2], |s, _| s.remote_subscriptions == 1).await;
    client.unsubscribe(sub.handle()).await.unwrap();
    g.wait(&[0, 2], |s, _| s.remote_subscriptions == 0).await;
    client.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn every_strategy_spreads_a_subscription_to_every_node() {
    for strategy in [
        "flood",
        "bcrm:2,2",
        "rumor:1",
        "anti-entropy:push",
        "anti-entropy:pull",
        "anti-entropy:push-pull",
    ] {
        let g = Gossip::start(4, |c| c.strategy = strategy.parse().unwrap()).await;
        let client = g.client(0).await;
        let _sub = client.subscribe("s").start().await.unwrap();
        if strategy.starts_with("anti-entropy") || strategy == "flood" {
            // Complete strategies reach everyone.
            g.wait(&[1, 2, 3], |s, _| s.remote_subscriptions == 1).await;
        } else {
            // Push-only strategies may leave a residue; at least one other node has it.
            bounded(async {
                loop {
                    let mut reached = 0;
                    for i in 1..4 {
                        reached += g.stats(i).await.remote_subscriptions;
                    }
                    if reached >= 1 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
        client.close().await;
        g.shutdown().await;
    }
}

#[tokio::test]
async fn a_killed_nodes_subscriptions_expire_everywhere() {
    let mut g = Gossip::start(3, |_| {}).await;
    let client = g.client(1).await;
    let _sub = client
        .subscribe("k")
        .expiry(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    g.wait(&[0, 2], |s, _| s.remote_subscriptions == 1).await;
    // Node 1 goes away without a word about its subscriptions (no tombstones); the copies
    // lapse at their announced deadline plus the grace.
    g.kill(1).await;
    // Out of the engines once membership notices, and gone altogether once the lease ran
    // out.
    g.wait(&[0, 2], |s, _| {
        s.remote_subscriptions == 0 && s.suspended_subscriptions == 0
    })
    .await;
    // And membership notices.
    g.wait_all(|s, n| s.members + 1 == n).await;
    client.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn renewals_keep_copies_alive_past_the_first_lease() {
    let g = Gossip::start(2, |_| {}).await;
    let client = g.client(0).await;
    let mut sub = client
        .subscribe("r")
        .expiry(Duration::from_millis(600))
        .start()
        .await
        .unwrap();
    g.wait(&[1], |s, _| s.remote_subscriptions == 1).await;
    let publisher = g.client(1).await;
    // Well past the first lease (and its grace), the SDK's renewals have kept the copy.
    let start = tokio::time::Instant::now();
    bounded(async {
        while start.elapsed() < Duration::from_millis(2000) {
            assert_eq!(
                g.stats(1).await.remote_subscriptions,
                1,
                "the copy lapsed despite renewals"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    publisher
        .publish_acked(Message::new("r").payload("late"))
        .await
        .unwrap();
    let n = bounded(sub.next()).await.unwrap();
    assert_eq!(n.event.payload.as_ref(), b"late");
    client.close().await;
    publisher.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_partitioned_node_catches_up_by_anti_entropy_after_it_heals() {
    let g = Gossip::start(3, |_| {}).await;
    g.node(2).set_isolated(true);
    let client = g.client(0).await;
    let mut subs = Vec::new();
    for i in 0..20 {
        subs.push(client.subscribe(format!("p.{i}")).start().await.unwrap());
    }
    g.wait(&[1], |s, _| s.remote_subscriptions == 20).await;
    assert_eq!(
        g.stats(2).await.remote_subscriptions,
        0,
        "the partitioned node heard nothing"
    );
    g.node(2).set_isolated(false);
    g.wait(&[2], |s, _| s.remote_subscriptions == 20).await;
    // It now forwards to node 0.
    let publisher = g.client(2).await;
    publisher
        .publish_acked(Message::new("p.7").payload("healed"))
        .await
        .unwrap();
    let n = bounded(subs[7].next()).await.unwrap();
    assert_eq!(n.event.payload.as_ref(), b"healed");
    client.close().await;
    publisher.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_group_spread_over_nodes_gets_each_event_once() {
    let g = Gossip::start(3, |_| {}).await;
    let a = g.client(0).await;
    let b = g.client(1).await;
    let mut ma = a.subscribe("jobs").group("workers").start().await.unwrap();
    let mut mb = b.subscribe("jobs").group("workers").start().await.unwrap();
    g.wait(&[2], |s, _| s.remote_subscriptions == 2).await;
    let publisher = g.client(2).await;
    const N: usize = 200;
    for i in 0..N {
        publisher
            .publish_acked(Message::new("jobs").attr("i", i as i64).payload("j"))
            .await
            .unwrap();
    }
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    bounded(async {
        while seen_a.len() + seen_b.len() < N {
            tokio::select! {
                Some(n) = ma.next() => seen_a.push(n.event.attrs["i"].clone()),
                Some(n) = mb.next() => seen_b.push(n.event.attrs["i"].clone()),
            }
        }
    })
    .await;
    let mut all: Vec<Value> = seen_a.iter().chain(&seen_b).cloned().collect();
    all.sort_by_key(|v| format!("{v:?}"));
    all.dedup();
    assert_eq!(all.len(), N, "every event exactly once across the group");
    assert!(
        !seen_a.is_empty() && !seen_b.is_empty(),
        "both members get work"
    );
    let _ = LIMIT;
    a.close().await;
    b.close().await;
    publisher.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_client_whose_node_dies_moves_to_another_and_subscribes_again() {
    let mut g = Gossip::start(3, |_| {}).await;
    let client = g.client_with_fallbacks(0).await;
    let mut sub = client.subscribe("f").start().await.unwrap();
    g.wait(&[1, 2], |s, _| s.remote_subscriptions == 1).await;
    let publisher = g.client(2).await;
    publisher
        .publish_acked(Message::new("f").attr("n", 0).payload("before"))
        .await
        .unwrap();
    assert_eq!(
        bounded(sub.next()).await.unwrap().event.payload.as_ref(),
        b"before"
    );
    g.kill(0).await;
    // The client moves to a live node and subscribes there again; publish until a
    // notification arrives through the new node.
    let got = bounded(async {
        for n in 1i64.. {
            publisher
                .publish_acked(Message::new("f").attr("n", n).payload("after"))
                .await
                .unwrap();
            if let Ok(Some(note)) =
                tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                return note;
            }
        }
        unreachable!()
    })
    .await;
    assert_eq!(got.event.payload.as_ref(), b"after");
    client.close().await;
    publisher.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn with_a_peer_token_only_peers_may_send_node_to_node_frames() {
    use sift_protocol::event::{Event, EventId, PublisherId};
    use sift_protocol::frame::{ErrorCode, Frame};
    use sift_protocol::net::{client_endpoint, FrameReader, FrameWriter};
    let g = Gossip::start(2, |c| c.peer_token = Some("between-nodes".into())).await;
    // The nodes themselves still spread subscriptions and forward events.
    let client = g.client(0).await;
    let mut sub = client.subscribe("pt").start().await.unwrap();
    g.wait(&[1], |s, _| s.remote_subscriptions == 1).await;
    let publisher = g.client(1).await;
    publisher
        .publish_acked(Message::new("pt").payload("from a peer"))
        .await
        .unwrap();
    assert_eq!(
        bounded(sub.next()).await.unwrap().event.payload.as_ref(),
        b"from a peer"
    );
    // A client cannot push an event into that subscription by pretending to be a node.
    let endpoint = client_endpoint(client_config(&g.ca.cert_pem, None).unwrap()).unwrap();
    let conn = endpoint
        .connect(g.node(0).local_addr().unwrap(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let (mut w, mut r) = (
        FrameWriter::new(send, 1 << 20),
        FrameReader::new(recv, 1 << 20),
    );
    let forged = Frame::Forward {
        subs: vec![sub.handle()],
        event: Event {
            id: EventId {
                publisher: PublisherId(7),
                seq: 1,
            },
            topic: "pt".into(),
            attrs: Default::default(),
            payload: bytes::Bytes::from_static(b"forged"),
        },
    };
    w.send(&forged).await.unwrap();
    match bounded(r.next()).await.unwrap() {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::Unauthorized),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    // The next real event arrives, not the forged one.
    publisher
        .publish_acked(Message::new("pt").payload("real"))
        .await
        .unwrap();
    assert_eq!(
        bounded(sub.next()).await.unwrap().event.payload.as_ref(),
        b"real"
    );
    client.close().await;
    publisher.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn once_membership_notices_a_dead_node_its_group_member_gets_nothing_more() {
    let mut g = Gossip::start(3, |_| {}).await;
    let doomed = g.client(1).await;
    let survivor = g.client(2).await;
    // Default leases (60 s): the copies of the dead node's subscription would linger that
    // long; membership sets them aside as soon as it declares the node down.
    let _lost = doomed.subscribe("work").group("w").start().await.unwrap();
    let mut kept = survivor.subscribe("work").group("w").start().await.unwrap();
    g.wait(&[0], |s, _| s.remote_subscriptions == 2).await;
    g.kill(1).await;
    g.wait(&[0], |s, _| {
        s.remote_subscriptions == 1 && s.suspended_subscriptions == 1
    })
    .await;
    let publisher = g.client(0).await;
    const N: i64 = 50;
    for i in 0..N {
        publisher
            .publish_acked(Message::new("work").attr("i", i).payload("w"))
            .await
            .unwrap();
    }
    // Every event goes to the member that is still there.
    let mut seen = Vec::new();
    bounded(async {
        while seen.len() < N as usize {
            seen.push(kept.next().await.unwrap().event.attrs["i"].clone());
        }
    })
    .await;
    assert_eq!(seen, (0..N).map(Value::Int).collect::<Vec<_>>());
    doomed.close().await;
    survivor.close().await;
    publisher.close().await;
    g.shutdown().await;
}

#[tokio::test]
async fn after_set_filter_no_node_delivers_by_the_old_filter() {
    let g = Gossip::start(2, |_| {}).await;
    let client = g.client(0).await;
    let mut sub = client
        .subscribe("sf")
        .filter("x == 1")
        .start()
        .await
        .unwrap();
    g.wait(&[1], |s, _| s.remote_subscriptions == 1).await;
    let publisher = g.client(1).await;
    sub.set_filter("x == 2").await.unwrap();
    // Node 1 may still hold the old filter for a moment and forward x == 1 events; the home
    // node checks them against the current filter. Publish both until an x == 2 arrives.
    let got = bounded(async {
        loop {
            for x in [1, 2] {
                publisher
                    .publish_acked(Message::new("sf").attr("x", x))
                    .await
                    .unwrap();
            }
            if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await
            {
                return n;
            }
        }
    })
    .await;
    assert_eq!(got.event.attrs["x"], Value::Int(2));
    client.close().await;
    publisher.close().await;
    g.shutdown().await;
}
