//! The cluster changing under the client: a matcher joins (topics move, requests are
//! redirected), a matcher is drained (its subscriptions move), a matcher dies.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{bounded, Cluster};
use futures::StreamExt;
use sift_client::{Message, Subscription, Value};
use sift_protocol::frame::{Frame, Ring, RingMember};
use sift_protocol::limits::FRAME_BYTES_MAX;
use sift_protocol::net::tls::client_config;
use sift_protocol::net::{client_endpoint, FrameReader, FrameWriter};
use sift_protocol::ring::Placement;

/// A topic that `owner` owns in a ring of `ids` (ring placement depends on ids only).
fn topic_owned_by(ids: &[&str], owner: &str) -> String {
    let ring = Ring::new(
        1,
        ids.iter()
            .map(|id| RingMember {
                id: (*id).into(),
                addr: "x:1".into(),
                weight: 1,
            })
            .collect(),
    );
    let p = Placement::new(&ring);
    (0..)
        .map(|i| format!("moving.{i}"))
        .find(|t| p.owner(t).unwrap().id == owner)
        .unwrap()
}

/// Reads `sub` until it has every number of `want` (bounded by the test's limit), and returns
/// the numbers received, in order, with any repeat.
async fn collect(sub: &mut Subscription, want: std::ops::Range<i64>) -> Vec<i64> {
    let mut got = Vec::new();
    let mut missing: std::collections::BTreeSet<i64> = want.clone().collect();
    while !missing.is_empty() {
        let n = sub.next().await.unwrap();
        let Value::Int(k) = n.event.attrs["n"] else {
            panic!()
        };
        if want.contains(&k) {
            missing.remove(&k);
            got.push(k);
        }
    }
    got
}

/// Publishes numbered events until `sub` receives one, returning its number. The client may
/// need a moment to place the subscription again; each try waits for an event, bounded.
async fn publish_until_received(
    client: &sift_client::Client,
    topic: &str,
    sub: &mut Subscription,
    from: i64,
) -> i64 {
    for n in from.. {
        client
            .publish_acked(Message::new(topic).attr("n", n))
            .await
            .unwrap();
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            let Value::Int(k) = got.event.attrs["n"] else {
                panic!()
            };
            return k;
        }
    }
    unreachable!()
}

#[tokio::test]
async fn a_joining_matcher_takes_its_topics_and_clients_follow() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let topic = topic_owned_by(&["m1", "m2"], "m2");
    bounded(async {
        let mut sub = client.subscribe(topic.clone()).start().await.unwrap();
        let mut pattern = client.subscribe("moving.*").start().await.unwrap();
        client
            .publish_acked(Message::new(&topic).attr("n", 0))
            .await
            .unwrap();
        assert_eq!(sub.next().await.unwrap().event.attrs["n"], Value::Int(0));
        assert_eq!(
            pattern.next().await.unwrap().event.attrs["n"],
            Value::Int(0)
        );
        // m2 joins and owns the topic now, while events keep coming: the subscriptions are
        // handed over to m2 before its ring is active, so every acknowledged event reaches
        // both, exactly once.
        for n in 1..50 {
            client
                .publish_acked(Message::new(&topic).attr("n", n))
                .await
                .unwrap();
        }
        cluster.add_matcher().await;
        for n in 50..200 {
            client
                .publish_acked(Message::new(&topic).attr("n", n))
                .await
                .unwrap();
        }
        assert_eq!(
            collect(&mut sub, 1..200).await,
            (1..200).collect::<Vec<_>>()
        );
        assert_eq!(
            collect(&mut pattern, 1..200).await,
            (1..200).collect::<Vec<_>>()
        );
        // Steady again: every event arrives.
        for n in 1000..1010 {
            client
                .publish_acked(Message::new(&topic).attr("n", n))
                .await
                .unwrap();
            assert_eq!(sub.next().await.unwrap().event.attrs["n"], Value::Int(n));
        }
        let m2 = cluster
            .matchers
            .iter()
            .find(|m| m.member().id == "m2")
            .unwrap();
        // The pattern subscription joins m2 too and sees the events of m2's topics.
        publish_until_pattern_sees_new(&client, &topic, &mut pattern).await;
        assert_eq!(
            m2.stats().await.unwrap().subscriptions,
            2,
            "the exact subscription moved to m2, and the pattern subscription joined it there"
        );
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

/// Publishes numbered events (from 100) until `pattern` receives one of them: older events may
/// still be queued before them, and the subscription may need a moment to be placed again.
async fn publish_until_pattern_sees_new(
    client: &sift_client::Client,
    topic: &str,
    pattern: &mut Subscription,
) {
    for m in 100.. {
        client
            .publish_acked(Message::new(topic).attr("n", m))
            .await
            .unwrap();
        while let Ok(Some(n)) =
            tokio::time::timeout(Duration::from_millis(300), pattern.next()).await
        {
            if matches!(n.event.attrs["n"], Value::Int(k) if k >= 100) {
                return;
            }
        }
    }
}

async fn admin(cluster: &Cluster, frame: Frame) -> Frame {
    let endpoint = client_endpoint(client_config(&cluster.ca.cert_pem, None).unwrap()).unwrap();
    let conn = endpoint
        .connect(cluster.coordinator.local_addr().unwrap(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(send, FRAME_BYTES_MAX);
    let mut r = FrameReader::new(recv, FRAME_BYTES_MAX);
    w.send(&frame).await.unwrap();
    r.next().await.unwrap().unwrap()
}

#[tokio::test]
async fn a_subscription_survives_its_matcher_being_drained() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    let topic = topic_owned_by(&["m1", "m2"], "m1");
    bounded(async {
        let mut sub = client
            .subscribe(topic.clone())
            .filter("n >= 0")
            .start()
            .await
            .unwrap();
        let mut pattern = client.subscribe("moving.*").start().await.unwrap();
        client
            .publish_acked(Message::new(&topic).attr("n", 0))
            .await
            .unwrap();
        assert!(sub.next().await.is_some());
        assert!(pattern.next().await.is_some());
        assert_eq!(
            admin(
                &cluster,
                Frame::AdminDrain {
                    req: 1,
                    node: "m1".into()
                }
            )
            .await,
            Frame::Ok { req: 1 }
        );
        // m1 leaves the ring while events keep coming: its topics and its pattern
        // subscriptions move to m2 through the handoff, and nothing acknowledged is lost.
        for n in 1..200 {
            client
                .publish_acked(Message::new(&topic).attr("n", n))
                .await
                .unwrap();
        }
        assert_eq!(
            collect(&mut sub, 1..200).await,
            (1..200).collect::<Vec<_>>()
        );
        assert_eq!(
            collect(&mut pattern, 1..200).await,
            (1..200).collect::<Vec<_>>()
        );
        let mut ring = client.watch_ring();
        ring.wait_for(|p| p.as_ref().is_some_and(|p| p.members().len() == 1))
            .await
            .unwrap();
        for n in 200..210 {
            client
                .publish_acked(Message::new(&topic).attr("n", n))
                .await
                .unwrap();
        }
        assert_eq!(
            collect(&mut sub, 200..210).await,
            (200..210).collect::<Vec<_>>()
        );
        assert_eq!(
            collect(&mut pattern, 200..210).await,
            (200..210).collect::<Vec<_>>()
        );
        let m2 = cluster
            .matchers
            .iter()
            .find(|m| m.member().id == "m2")
            .unwrap();
        assert_eq!(m2.stats().await.unwrap().subscriptions, 2);
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn group_key_affinity_end_to_end() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    bounded(async {
        let mut members = vec![];
        for _ in 0..3 {
            members.push(
                client
                    .subscribe("orders")
                    .group_by_key("shippers", "customer")
                    .start()
                    .await
                    .unwrap(),
            );
        }
        for round in 0..5 {
            for c in 0..30 {
                client
                    .publish(
                        Message::new("orders")
                            .attr("customer", format!("c{c}"))
                            .attr("round", round),
                    )
                    .await
                    .unwrap();
            }
        }
        client
            .publish_acked(Message::new("orders").attr("customer", "end"))
            .await
            .unwrap();
        let mut streams = futures::stream::select_all(
            members
                .into_iter()
                .enumerate()
                .map(|(k, s)| s.map(move |n| (k, n))),
        );
        let mut owner = std::collections::HashMap::new();
        for _ in 0..151 {
            let (k, n) = streams.next().await.unwrap();
            let customer = n.event.attrs["customer"].clone();
            assert_eq!(
                *owner.entry(format!("{customer:?}")).or_insert(k),
                k,
                "{customer:?} moved between members"
            );
        }
        let used: std::collections::HashSet<_> = owner.values().collect();
        assert_eq!(used.len(), 3, "keys spread over all members");
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn at_least_once_end_to_end_sees_each_event_once() {
    let cluster = Cluster::start_with(1, |c| c.ack_timeout = Duration::from_millis(100)).await;
    let client = cluster.client().await;
    bounded(async {
        let mut sub = client
            .subscribe("work")
            .at_least_once()
            .start()
            .await
            .unwrap();
        for i in 0..20 {
            client
                .publish_acked(Message::new("work").attr("i", i))
                .await
                .unwrap();
        }
        // The first few are held unacked past the timeout: redelivered by the matcher,
        // dropped as duplicates by the SDK; then acked.
        let mut held = vec![];
        for i in 0..20 {
            let n = sub.next().await.unwrap();
            assert_eq!(n.event.attrs["i"], Value::Int(i));
            if i < 5 {
                held.push(n);
            } else {
                n.ack().await.unwrap();
            }
        }
        // Wait until the matcher has redelivered the held ones (they must not surface).
        while cluster.matchers[0].stats().await.unwrap().redelivered < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in held {
            assert!(n.needs_ack());
            n.ack().await.unwrap();
        }
        client
            .publish_acked(Message::new("work").attr("i", 99))
            .await
            .unwrap();
        let last = sub.next().await.unwrap();
        assert_eq!(
            last.event.attrs["i"],
            Value::Int(99),
            "no duplicate surfaced before it"
        );
        last.ack().await.unwrap();
        let stats = cluster.matchers[0].stats().await.unwrap();
        assert!(stats.redelivered >= 5, "{stats:?}");
        assert_eq!(stats.notified, 21, "{stats:?}");
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_subscription_survives_its_matcher_dying() {
    let mut cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    let topic = topic_owned_by(&["m1", "m2"], "m1");
    bounded(async {
        let mut sub = client.subscribe(topic.clone()).start().await.unwrap();
        let mut pattern = client.subscribe("moving.>").start().await.unwrap();
        client
            .publish_acked(Message::new(&topic).attr("n", 0))
            .await
            .unwrap();
        assert!(sub.next().await.is_some());
        assert!(pattern.next().await.is_some());
        // m1 stops without a word to the coordinator: the ring keeps it until its heartbeats
        // are missed (1.5 s here), and the client must keep trying until then.
        let i = cluster
            .matchers
            .iter()
            .position(|m| m.member().id == "m1")
            .unwrap();
        cluster.matchers.remove(i).shutdown().await;
        let mut ring = cluster.coordinator.watch();
        ring.wait_for(|r| r.members.iter().all(|m| m.id != "m1"))
            .await
            .unwrap();
        publish_until_received(&client, &topic, &mut sub, 1).await;
        assert!(sub.end_reason().is_none());
        // The pattern subscription lives on m2 and sees the topic's new events too.
        publish_until_pattern_sees_new(&client, &topic, &mut pattern).await;
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}
