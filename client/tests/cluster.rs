//! The partitioned cluster end to end over real QUIC on loopback: a coordinator, matchers and
//! clients in process, no mocks. Every wait is on an event, bounded in time.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{bounded, Cluster};
use futures::StreamExt;
use sift_client::{ClientError, EndReason, ErrorCode, Message, Value};

#[tokio::test]
async fn round_trip_with_filters_and_patterns() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    bounded(async {
        let mut exact = client
            .subscribe("orders.eu")
            .filter("price > 10")
            .start()
            .await
            .unwrap();
        let mut pattern = client
            .subscribe("orders.*")
            .filter("tier == \"gold\"")
            .start()
            .await
            .unwrap();
        let mut tail = client.subscribe("orders.>").start().await.unwrap();
        for (topic, price, tier) in [
            ("orders.eu", 5, "gold"),
            ("orders.eu", 50, "silver"),
            ("orders.us", 1, "gold"),
            ("orders.us.east", 2, "gold"),
        ] {
            client
                .publish_acked(
                    Message::new(topic)
                        .attr("price", price)
                        .attr("tier", tier)
                        .payload("x"),
                )
                .await
                .unwrap();
        }
        let n = exact.next().await.unwrap();
        assert_eq!(
            (n.event.topic.as_str(), n.event.attrs["price"].clone()),
            ("orders.eu", Value::Int(50))
        );
        assert_eq!(n.event.payload.as_ref(), b"x");
        let mut gold = vec![];
        for _ in 0..2 {
            let n = pattern.next().await.unwrap();
            gold.push((n.event.topic.clone(), n.event.attrs["price"].clone()));
        }
        gold.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            gold,
            vec![
                ("orders.eu".to_string(), Value::Int(5)),
                ("orders.us".to_string(), Value::Int(1))
            ]
        );
        let mut all = vec![];
        for _ in 0..4 {
            all.push(tail.next().await.unwrap().event.topic);
        }
        all.sort();
        assert_eq!(
            all,
            vec!["orders.eu", "orders.eu", "orders.us", "orders.us.east"]
        );
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn typed_errors_for_bad_input() {
    let cluster = Cluster::start_with(1, |c| c.limits.payload_bytes_max = 1024).await;
    let client = cluster.client().await;
    bounded(async {
        assert!(matches!(
            client.subscribe("orders..eu").start().await,
            Err(ClientError::InvalidTopic(_))
        ));
        assert!(matches!(
            client.subscribe("orders").filter("price >").start().await,
            Err(ClientError::InvalidFilter(_))
        ));
        assert!(matches!(
            client.publish_acked(Message::new("orders.*")).await,
            Err(ClientError::InvalidTopic(_))
        ));
        let big = client
            .publish_acked(Message::new("orders").payload(vec![0u8; 2048]))
            .await
            .unwrap_err();
        assert_eq!(big.code(), Some(ErrorCode::PayloadTooLarge), "{big}");
        let bad_attr = client
            .publish_acked(Message::new("orders").attr("bad name", 1))
            .await
            .unwrap_err();
        assert_eq!(bad_attr.code(), Some(ErrorCode::InvalidEvent), "{bad_attr}");
        let unknown = client
            .unsubscribe(sift_client::SubscriptionId(42))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Some(ErrorCode::UnknownSubscription));
        assert!(client
            .set_filter(sift_client::SubscriptionId(42), "a == 1")
            .await
            .is_err());
        // Still serving after all that.
        let mut sub = client.subscribe("orders").start().await.unwrap();
        client.publish_acked(Message::new("orders")).await.unwrap();
        assert!(sub.next().await.is_some());
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn leases_are_renewed_and_deadlines_end_the_stream() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    bounded(async {
        let mut leased = client
            .subscribe("t")
            .expiry(Duration::from_millis(300))
            .start()
            .await
            .unwrap();
        let mut hard = client
            .subscribe("t")
            .deadline(Duration::from_millis(300))
            .start()
            .await
            .unwrap();
        // The hard deadline ends its stream with the reason.
        assert!(hard.next().await.is_none());
        assert_eq!(hard.end_reason(), Some(EndReason::Expired));
        // Ended after 300 ms; the leased one, renewed, still gets events well after that.
        client
            .publish_acked(Message::new("t").attr("n", 1))
            .await
            .unwrap();
        assert_eq!(leased.next().await.unwrap().event.attrs["n"], Value::Int(1));
        // Several lease lengths later, still alive (the renewal keeps it).
        let mut ticker = tokio::time::interval(Duration::from_millis(150));
        for i in 2..8 {
            ticker.tick().await;
            client
                .publish_acked(Message::new("t").attr("n", i))
                .await
                .unwrap();
            assert_eq!(leased.next().await.unwrap().event.attrs["n"], Value::Int(i));
        }
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_stops_notifications() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    bounded(async {
        let mut a = client.subscribe("x.y").start().await.unwrap();
        let mut control = client.subscribe("x.y").start().await.unwrap();
        client
            .publish_acked(Message::new("x.y").attr("n", 1))
            .await
            .unwrap();
        assert!(a.next().await.is_some());
        assert!(control.next().await.is_some());
        let handle = a.handle();
        client.unsubscribe(handle).await.unwrap();
        client
            .publish_acked(Message::new("x.y").attr("n", 2))
            .await
            .unwrap();
        assert_eq!(
            control.next().await.unwrap().event.attrs["n"],
            Value::Int(2)
        );
        // The unsubscribed stream ends without the second event.
        assert!(a.next().await.is_none());
        assert_eq!(a.end_reason(), Some(EndReason::Unsubscribed));
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn groups_spread_evenly_and_keys_stick() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    let publisher = cluster.client().await;
    bounded(async {
        let mut members = vec![];
        for _ in 0..4 {
            members.push(
                client
                    .subscribe("jobs")
                    .group("workers")
                    .start()
                    .await
                    .unwrap(),
            );
        }
        let total: usize = 10_000;
        for i in 0..total as i64 {
            publisher
                .publish(Message::new("jobs").attr("i", i))
                .await
                .unwrap();
        }
        publisher
            .publish_acked(Message::new("jobs").attr("i", -1))
            .await
            .unwrap();
        let mut counts = vec![0usize; 4];
        let mut seen = 0;
        let mut streams = futures::stream::select_all(
            members
                .into_iter()
                .enumerate()
                .map(|(k, s)| s.map(move |n| (k, n))),
        );
        while seen < total + 1 {
            let (k, _) = streams.next().await.unwrap();
            counts[k] += 1;
            seen += 1;
        }
        let expected = (total + 1) / 4;
        for c in &counts {
            assert!(c.abs_diff(expected) <= expected / 10, "uneven: {counts:?}");
        }
    })
    .await;
    client.close().await;
    publisher.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn set_filter_switches_without_a_gap_or_a_duplicate() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    let publisher = cluster.client().await;
    bounded(async {
        // Even sequence numbers are "a", odd ones "b". The filter widens from "a" to "a or b"
        // while events keep coming: every "a" must arrive exactly once and in order, and the
        // "b" events must arrive from some point on, all of them, each once.
        let mut sub = client
            .subscribe("switch")
            .filter("k == \"a\"")
            .start()
            .await
            .unwrap();
        let (switched_tx, mut switched_rx) = tokio::sync::oneshot::channel::<()>();
        let p = publisher.clone();
        let producer = tokio::spawn(async move {
            let mut seq: i64 = 0;
            let mut after_switch = 0;
            // Until the switch is confirmed, then 200 more.
            while after_switch < 200 {
                let k = if seq % 2 == 0 { "a" } else { "b" };
                p.publish_acked(Message::new("switch").attr("seq", seq).attr("k", k))
                    .await
                    .unwrap();
                seq += 1;
                if after_switch > 0 || switched_rx.try_recv().is_ok() {
                    after_switch += 1;
                }
            }
            seq // one past the last published
        });
        let mut got = vec![];
        while got.len() < 50 {
            let n = sub.next().await.unwrap();
            got.push(n.event.attrs["seq"].clone());
        }
        sub.set_filter("k == \"a\" || k == \"b\"").await.unwrap();
        switched_tx.send(()).unwrap();
        let end = producer.await.unwrap();
        let last = end - 1;
        loop {
            let n = sub.next().await.unwrap();
            let seq = n.event.attrs["seq"].clone();
            got.push(seq.clone());
            if seq == Value::Int(last) {
                break;
            }
        }
        let seqs: Vec<i64> = got
            .iter()
            .map(|v| match v {
                Value::Int(i) => *i,
                other => panic!("seq is an integer, got {other:?}"),
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in order, no duplicates: {seqs:?}"
        );
        let evens: Vec<i64> = seqs.iter().copied().filter(|s| s % 2 == 0).collect();
        assert_eq!(
            evens,
            (0..end).filter(|s| s % 2 == 0).collect::<Vec<_>>(),
            "every event matching both filters arrived"
        );
        let odds: Vec<i64> = seqs.iter().copied().filter(|s| s % 2 == 1).collect();
        let first_b = *odds.first().expect("events after the switch arrived");
        assert_eq!(
            odds,
            (first_b..end).filter(|s| s % 2 == 1).collect::<Vec<_>>(),
            "from the switch on, every new match arrived"
        );
        assert!(
            end - first_b >= 198,
            "the events published after set_filter returned all match the new filter"
        );
    })
    .await;
    client.close().await;
    publisher.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn close_unsubscribes_on_every_matcher() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    bounded(async {
        let _exact = client.subscribe("a.b").start().await.unwrap();
        let _pattern = client.subscribe("a.*").start().await.unwrap();
        let mut held = 0;
        for m in &cluster.matchers {
            held += m.stats().await.unwrap().subscriptions;
        }
        assert_eq!(held, 3, "the exact one on its owner, the pattern on both");
        client.close().await;
        for m in &cluster.matchers {
            assert_eq!(m.stats().await.unwrap().subscriptions, 0);
        }
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_cluster_that_requires_a_token() {
    let cluster = Cluster::start_full(
        2,
        |c| c.token = Some("s3cret".into()),
        |m| {
            m.coordinator_token = Some("s3cret".into());
            m.token = Some("s3cret".into());
        },
    )
    .await;
    bounded(async {
        let mut anonymous = cluster.client_config();
        anonymous.connect_timeout = Duration::from_secs(1);
        anonymous.request_timeout = Duration::from_secs(1);
        assert!(sift_client::Client::connect(anonymous).await.is_err());
        let mut config = cluster.client_config();
        config.token = Some("s3cret".into());
        let client = sift_client::Client::connect(config).await.unwrap();
        let mut sub = client.subscribe("secured.>").start().await.unwrap();
        client
            .publish_acked(Message::new("secured.a").attr("n", 1))
            .await
            .unwrap();
        assert_eq!(sub.next().await.unwrap().event.topic, "secured.a");
        client.close().await;
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn at_least_once_survives_a_full_client_buffer() {
    let cluster = Cluster::start_with(1, |m| m.ack_timeout = Duration::from_millis(200)).await;
    let mut config = cluster.client_config();
    config.buffer_len = 1;
    let client = sift_client::Client::connect(config).await.unwrap();
    bounded(async {
        let mut sub = client
            .subscribe("work")
            .at_least_once()
            .start()
            .await
            .unwrap();
        // Five events while the application reads nothing: the SDK's buffer holds one.
        for n in 0..5 {
            client
                .publish_acked(Message::new("work").attr("n", n))
                .await
                .unwrap();
        }
        // The ones that did not fit come back (not acked) and are not taken for duplicates.
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 5 {
            let n = sub.next().await.unwrap();
            let Value::Int(k) = n.event.attrs["n"] else {
                panic!()
            };
            assert!(seen.insert(k), "event {k} seen twice");
            n.ack().await.unwrap();
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

/// Two subscriptions on one client, so on one connection and its one notification stream:
/// the application never reads one of them. It gets no more than its credit, its matcher's
/// queue overflows and drops for it, and the other still gets every event, in order.
#[tokio::test]
async fn a_subscription_the_application_does_not_read_never_holds_up_the_others_on_its_connection()
{
    let cluster = Cluster::start_with(1, |c| c.queue_len_max = 128).await;
    let mut config = cluster.client_config();
    config.buffer_len = 64;
    let client = sift_client::Client::connect(config).await.unwrap();
    bounded(async {
        let _unread = client.subscribe("feed").start().await.unwrap();
        let mut read = client.subscribe("feed").start().await.unwrap();
        let payload = vec![7u8; 1024];
        const N: i64 = 3_000;
        for round in 0..(N / 100) {
            for i in 0..100 {
                client
                    .publish_acked(
                        Message::new("feed")
                            .attr("n", round * 100 + i)
                            .payload(payload.clone()),
                    )
                    .await
                    .unwrap();
            }
            // Every event of the round reaches the subscription that is read.
            for i in 0..100 {
                let n = read.next().await.unwrap();
                assert_eq!(n.event.attrs["n"], Value::Int(round * 100 + i));
            }
        }
        let stats = cluster.matchers[0].stats().await.unwrap();
        assert!(
            stats.dropped >= (N as u64) - 64 - 128,
            "the unread subscription got at most its credit, then its queue dropped: {stats:?}"
        );
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}
