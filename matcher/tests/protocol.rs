//! A matcher spoken to with raw frames over real QUIC on loopback: at-least-once redelivery,
//! not-owner answers, slow subscribers, bad input, limits and tokens.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use sift_coordinator::{Coordinator, CoordinatorConfig};
use sift_matcher::{Matcher, MatcherConfig};
use sift_protocol::frame::*;
use sift_protocol::limits::{FRAME_BYTES_MAX, LEASE_DEFAULT_MS};
use sift_protocol::net::tls::{client_config, server_config, CertAuthority};
use sift_protocol::net::{client_endpoint, FrameReader, FrameWriter};
use sift_protocol::ring::Placement;
use sift_protocol::{Attributes, Event, EventId, PublisherId, Value};

const LIMIT: Duration = Duration::from_secs(20);

struct Raw {
    conn: quinn::Connection,
    w: FrameWriter,
    r: FrameReader,
    req: u64,
}

impl Raw {
    async fn connect(endpoint: &quinn::Endpoint, addr: std::net::SocketAddr) -> Raw {
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        Raw {
            conn,
            w: FrameWriter::new(send, FRAME_BYTES_MAX),
            r: FrameReader::new(recv, FRAME_BYTES_MAX),
            req: 0,
        }
    }

    fn next_req(&mut self) -> u64 {
        self.req += 1;
        self.req
    }

    async fn call(&mut self, frame: Frame) -> Frame {
        self.w.send(&frame).await.unwrap();
        self.r.next().await.unwrap().unwrap()
    }

    async fn subscribe(&mut self, id: u64, pattern: &str, mode: DeliveryMode) -> Frame {
        let req = self.next_req();
        self.call(Frame::Subscribe(Subscribe {
            req,
            id: SubscriptionId(id),
            pattern: pattern.into(),
            filter: String::new(),
            expiry: ExpirySpec::LeaseMs(LEASE_DEFAULT_MS),
            group: None,
            mode,
            ring_version: 0,
            credit: None,
        }))
        .await
    }

    async fn publish(&mut self, topic: &str, seq: u64, payload: usize) -> Frame {
        let req = self.next_req();
        self.call(Frame::Publish(Publish {
            req: Some(req),
            ring_version: 0,
            event: event(topic, seq, payload),
        }))
        .await
    }
}

fn event(topic: &str, seq: u64, payload: usize) -> Event {
    let mut attrs = Attributes::new();
    attrs.insert("seq".into(), Value::Int(seq as i64));
    Event {
        id: EventId {
            publisher: PublisherId(7),
            seq,
        },
        topic: topic.into(),
        attrs,
        payload: Bytes::from(vec![0u8; payload]),
    }
}

struct Setup {
    matcher: Matcher,
    client: quinn::Endpoint,
}

fn standalone(tweak: impl FnOnce(&mut MatcherConfig)) -> Setup {
    let ca = CertAuthority::generate("test CA").unwrap();
    let cert = ca.issue(&["localhost".into()]).unwrap();
    let mut config = MatcherConfig::for_test("solo");
    tweak(&mut config);
    let matcher = Matcher::start(config, server_config(&cert, None).unwrap(), None).unwrap();
    let client = client_endpoint(client_config(&ca.cert_pem, None).unwrap()).unwrap();
    Setup { matcher, client }
}

async fn next_notify(r: &mut FrameReader) -> Notify {
    match r.next().await.unwrap().unwrap() {
        Frame::Notify(n) => n,
        other => panic!("expected a notification, got {other:?}"),
    }
}

#[tokio::test]
async fn at_least_once_redelivers_until_acked() {
    let s = standalone(|c| c.ack_timeout = Duration::from_millis(150));
    let run = async {
        let mut sub = Raw::connect(&s.client, s.matcher.local_addr().unwrap()).await;
        assert!(matches!(
            sub.subscribe(1, "jobs", DeliveryMode::AtLeastOnce).await,
            Frame::Subscribed { .. }
        ));
        let mut publisher = Raw::connect(&s.client, s.matcher.local_addr().unwrap()).await;
        assert!(matches!(
            publisher.publish("jobs", 1, 8).await,
            Frame::PublishAck { .. }
        ));
        let mut stream = FrameReader::new(sub.conn.accept_uni().await.unwrap(), FRAME_BYTES_MAX);
        let first = next_notify(&mut stream).await;
        assert_eq!((first.delivery, first.redelivered), (1, false));
        // Not acked: it comes again, same delivery number.
        let again = next_notify(&mut stream).await;
        assert_eq!(
            (again.delivery, again.redelivered, again.event.id),
            (1, true, first.event.id)
        );
        sub.w
            .send(&Frame::Ack {
                sub: SubscriptionId(1),
                delivery: 1,
                event: first.event.id,
            })
            .await
            .unwrap();
        assert!(matches!(
            publisher.publish("jobs", 2, 8).await,
            Frame::PublishAck { .. }
        ));
        // After the ack only new deliveries come (a redelivery already in flight may precede).
        loop {
            let n = next_notify(&mut stream).await;
            if n.delivery == 2 {
                assert!(!n.redelivered);
                break;
            }
            assert_eq!(n.delivery, 1);
        }
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    s.matcher.shutdown().await;
}

#[tokio::test]
async fn repeated_acked_publishes_notify_once() {
    let s = standalone(|_| {});
    let run = async {
        let addr = s.matcher.local_addr().unwrap();
        let mut sub = Raw::connect(&s.client, addr).await;
        sub.subscribe(1, "t", DeliveryMode::AtMostOnce).await;
        let mut publisher = Raw::connect(&s.client, addr).await;
        for _ in 0..3 {
            // The same event id three times (a client retrying): acked each time.
            assert!(matches!(
                publisher.publish("t", 5, 0).await,
                Frame::PublishAck { .. }
            ));
        }
        assert!(matches!(
            publisher.publish("t", 6, 0).await,
            Frame::PublishAck { .. }
        ));
        let mut stream = FrameReader::new(sub.conn.accept_uni().await.unwrap(), FRAME_BYTES_MAX);
        assert_eq!(next_notify(&mut stream).await.event.id.seq, 5);
        assert_eq!(next_notify(&mut stream).await.event.id.seq, 6);
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    s.matcher.shutdown().await;
}

#[tokio::test]
async fn a_slow_subscriber_does_not_stall_the_others() {
    let s = standalone(|c| c.queue_len_max = 500);
    let run = async {
        let addr = s.matcher.local_addr().unwrap();
        // The slow one subscribes and never reads its notifications.
        let mut slow = Raw::connect(&s.client, addr).await;
        slow.subscribe(1, "feed", DeliveryMode::AtMostOnce).await;
        let mut fast = Raw::connect(&s.client, addr).await;
        fast.subscribe(2, "feed", DeliveryMode::AtMostOnce).await;
        let fast_conn = fast.conn.clone();
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream =
                FrameReader::new(fast_conn.accept_uni().await.unwrap(), FRAME_BYTES_MAX);
            loop {
                let n = next_notify(&mut stream).await;
                if seen_tx.send(n.event.id.seq).is_err() {
                    break;
                }
            }
        });
        // Rounds of 100 × 4 KiB: the publisher goes on, and the fast subscriber gets every
        // event of every round, while the slow one's stream window and queue overflow.
        let mut publisher = Raw::connect(&s.client, addr).await;
        let mut seq = 0;
        for _round in 0..30 {
            for _ in 0..100 {
                seq += 1;
                let req = publisher.next_req();
                let frame = Frame::Publish(Publish {
                    req: Some(req),
                    ring_version: 0,
                    event: event("feed", seq, 4096),
                });
                publisher.w.push(&frame).unwrap();
            }
            publisher.w.flush().await.unwrap();
            for _ in 0..100 {
                assert!(matches!(
                    publisher.r.next().await.unwrap(),
                    Some(Frame::PublishAck { .. })
                ));
            }
            for want in seq - 99..=seq {
                assert_eq!(seen_rx.recv().await, Some(want));
            }
        }
        let stats = s.matcher.stats().await.unwrap();
        assert!(
            stats.dropped > 0,
            "the slow subscriber's queue overflowed: {stats:?}"
        );
        assert_eq!(stats.published, 3000);
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    s.matcher.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_the_connection_goes_on() {
    let s = standalone(|c| {
        c.subscriptions_per_connection_max = 3;
        c.limits.payload_bytes_max = 100;
    });
    let run = async {
        let addr = s.matcher.local_addr().unwrap();
        let mut c = Raw::connect(&s.client, addr).await;
        let code = |f: Frame| match f {
            Frame::Error(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(
            code(c.subscribe(1, "a..b", DeliveryMode::AtMostOnce).await),
            ErrorCode::InvalidTopic
        );
        let req = c.next_req();
        let bad_filter = Frame::Subscribe(Subscribe {
            req,
            id: SubscriptionId(2),
            pattern: "a".into(),
            filter: "x ==".into(),
            expiry: ExpirySpec::LeaseMs(1000),
            group: None,
            mode: DeliveryMode::AtMostOnce,
            ring_version: 0,
            credit: None,
        });
        assert_eq!(code(c.call(bad_filter).await), ErrorCode::InvalidFilter);
        assert_eq!(
            code(c.publish("a", 1, 101).await),
            ErrorCode::PayloadTooLarge
        );
        assert_eq!(code(c.publish("a.*", 1, 1).await), ErrorCode::InvalidTopic);
        let req = c.next_req();
        assert_eq!(
            code(
                c.call(Frame::Unsubscribe {
                    req,
                    sub: SubscriptionId(99)
                })
                .await
            ),
            ErrorCode::UnknownSubscription
        );
        let req = c.next_req();
        assert_eq!(
            code(
                c.call(Frame::Renew {
                    req,
                    sub: SubscriptionId(99)
                })
                .await
            ),
            ErrorCode::UnknownSubscription
        );
        // Garbage: a malformed frame, then the stream goes on.
        c.w.stream()
            .write_all(&[0, 0, 0, 3, 0, 1, 0xc1])
            .await
            .unwrap();
        assert_eq!(
            code(c.r.next().await.unwrap().unwrap()),
            ErrorCode::Malformed
        );
        // A flood past the per-connection limit.
        for id in 10..13 {
            assert!(matches!(
                c.subscribe(id, "a", DeliveryMode::AtMostOnce).await,
                Frame::Subscribed { .. }
            ));
        }
        assert_eq!(
            code(c.subscribe(13, "a", DeliveryMode::AtMostOnce).await),
            ErrorCode::TooManySubscriptions
        );
        assert_eq!(
            code(c.subscribe(10, "a", DeliveryMode::AtMostOnce).await),
            ErrorCode::TooManySubscriptions
        );
        // An oversize frame ends that stream; a new connection is served.
        c.w.stream()
            .write_all(&(FRAME_BYTES_MAX as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert_eq!(
            code(c.r.next().await.unwrap().unwrap()),
            ErrorCode::FrameTooLarge
        );
        let mut d = Raw::connect(&s.client, addr).await;
        assert!(matches!(
            d.subscribe(20, "a", DeliveryMode::AtMostOnce).await,
            Frame::Subscribed { .. }
        ));
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    s.matcher.shutdown().await;
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let s = standalone(|c| c.token = Some("s3cret".into()));
    let run = async {
        let addr = s.matcher.local_addr().unwrap();
        let mut c = Raw::connect(&s.client, addr).await;
        let Frame::Error(e) = c.subscribe(1, "a", DeliveryMode::AtMostOnce).await else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert_eq!(
            c.call(Frame::Hello {
                req: 100,
                token: Some("s3cret".into())
            })
            .await,
            Frame::Ok { req: 100 }
        );
        assert!(matches!(
            c.subscribe(1, "a", DeliveryMode::AtMostOnce).await,
            Frame::Subscribed { .. }
        ));
        // A wrong token closes the connection.
        let mut d = Raw::connect(&s.client, addr).await;
        d.w.send(&Frame::Hello {
            req: 1,
            token: Some("nope".into()),
        })
        .await
        .unwrap();
        assert!(d.r.next().await.is_err());
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    s.matcher.shutdown().await;
}

#[tokio::test]
async fn requests_for_another_matchers_topic_get_not_owner() {
    let ca = CertAuthority::generate("test CA").unwrap();
    let cert = ca.issue(&["localhost".into()]).unwrap();
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..CoordinatorConfig::default()
        },
        server_config(&cert, None).unwrap(),
    )
    .unwrap();
    let mut ring = coordinator.watch();
    let mut matchers = vec![];
    for id in ["a", "b"] {
        let mut config = MatcherConfig::for_test(id);
        config.coordinator = Some((coordinator.local_addr().unwrap(), "localhost".into()));
        let tls = server_config(&cert, None).unwrap();
        matchers.push(
            Matcher::start(
                config,
                tls,
                Some(client_config(&ca.cert_pem, None).unwrap()),
            )
            .unwrap(),
        );
    }
    let client = client_endpoint(client_config(&ca.cert_pem, None).unwrap()).unwrap();
    let run = async {
        let ring = ring
            .wait_for(|r| r.members.len() == 2)
            .await
            .unwrap()
            .clone();
        let placement = Placement::new(&ring);
        // A topic of b's, asked of a.
        let topic = (0..)
            .map(|i| format!("t.{i}"))
            .find(|t| placement.owner(t).unwrap().id == "b")
            .unwrap();
        let a = matchers.iter().find(|m| m.member().id == "a").unwrap();
        // a learns the ring from the coordinator a moment after the coordinator has it.
        let mut c = Raw::connect(&client, a.local_addr().unwrap()).await;
        let answer = loop {
            let answer = c.publish(&topic, 1, 0).await;
            match &answer {
                Frame::Error(e)
                    if e.code == ErrorCode::NotOwner && e.ring_version == Some(ring.version) =>
                {
                    break answer
                }
                _ => tokio::task::yield_now().await,
            }
        };
        let Frame::Error(e) = answer else { panic!() };
        assert!(e.message.contains("belongs to b"), "{}", e.message);
        // A fire-and-forget publish is refused too (without a request id), and the stream
        // goes on.
        let Frame::Error(e) = c
            .call(Frame::Publish(Publish {
                req: None,
                ring_version: ring.version,
                event: event(&topic, 2, 0),
            }))
            .await
        else {
            panic!("a fire-and-forget publish to a non-owner was not refused")
        };
        assert_eq!((e.code, e.req), (ErrorCode::NotOwner, None));
        let Frame::Error(e) = c.subscribe(1, &topic, DeliveryMode::AtMostOnce).await else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::NotOwner);
        // Patterns are held by every matcher.
        assert!(matches!(
            c.subscribe(2, "t.*", DeliveryMode::AtMostOnce).await,
            Frame::Subscribed { .. }
        ));
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    for m in matchers {
        m.shutdown().await;
    }
    coordinator.shutdown().await;
}

#[tokio::test]
async fn peer_frames_are_taken_only_from_cluster_members_with_the_cluster_token() {
    let ca = CertAuthority::generate("test CA").unwrap();
    let cert = ca.issue(&["localhost".into()]).unwrap();
    let token = "cluster-s3cret";
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            token: Some(token.into()),
            ..CoordinatorConfig::default()
        },
        server_config(&cert, None).unwrap(),
    )
    .unwrap();
    let mut ring = coordinator.watch();
    let mut config = MatcherConfig::for_test("a");
    config.coordinator = Some((coordinator.local_addr().unwrap(), "localhost".into()));
    config.coordinator_token = Some(token.into());
    let matcher = Matcher::start(
        config,
        server_config(&cert, None).unwrap(),
        Some(client_config(&ca.cert_pem, None).unwrap()),
    )
    .unwrap();
    let client = client_endpoint(client_config(&ca.cert_pem, None).unwrap()).unwrap();
    let run = async {
        let ring = ring
            .wait_for(|r| r.members.len() == 1)
            .await
            .unwrap()
            .clone();
        // A handoff that would install a subscription at ring `ring.version + 1`.
        let handoff = Frame::Peer(sift_protocol::peer::PeerFrame {
            epoch: ring.version,
            msg: sift_protocol::peer::PeerMsg::Handoff {
                seq: 1,
                version: ring.version + 1,
                subs: vec![sift_protocol::peer::SubImage {
                    id: SubscriptionId(42),
                    pattern: "stolen".into(),
                    filter: String::new(),
                    group: None,
                    mode: DeliveryMode::AtMostOnce,
                    expiry: ExpirySpec::LeaseMs(LEASE_DEFAULT_MS),
                    remaining_ms: LEASE_DEFAULT_MS,
                }],
                gone: Vec::new(),
            },
        });
        let addr = matcher.local_addr().unwrap();
        // Without PeerHello.
        let mut c = Raw::connect(&client, addr).await;
        let Frame::Error(e) = c.call(handoff.clone()).await else {
            panic!("a peer frame from a client was taken")
        };
        assert_eq!(e.code, ErrorCode::Unauthorized);
        // With a wrong cluster token, and with none.
        for presented in [Some("guess".to_owned()), None] {
            let mut d = Raw::connect(&client, addr).await;
            let Frame::Error(e) = d
                .call(Frame::PeerHello {
                    req: 1,
                    node: "m-evil".into(),
                    token: presented,
                })
                .await
            else {
                panic!("PeerHello without the cluster token was accepted")
            };
            assert_eq!(e.code, ErrorCode::Unauthorized);
            let Frame::Error(e) = d.call(handoff.clone()).await else {
                panic!("a peer frame after a refused PeerHello was taken")
            };
            assert_eq!(e.code, ErrorCode::Unauthorized);
        }
        // The matcher installed nothing and still serves.
        assert_eq!(matcher.stats().await.unwrap().subscriptions, 0);
        assert!(matches!(
            c.subscribe(1, "t.*", DeliveryMode::AtMostOnce).await,
            Frame::Subscribed { .. }
        ));
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    matcher.shutdown().await;
    coordinator.shutdown().await;
}

#[tokio::test]
async fn a_client_vanishing_mid_frame_loses_its_subscriptions_and_others_go_on() {
    let s = standalone(|_| {});
    let run = async {
        let addr = s.matcher.local_addr().unwrap();
        let mut gone = Raw::connect(&s.client, addr).await;
        // Two at-most-once subscriptions end with the connection; an at-least-once one waits
        // for its client to come back (until its lease ends).
        for (id, mode) in [
            (1, DeliveryMode::AtMostOnce),
            (2, DeliveryMode::AtMostOnce),
            (3, DeliveryMode::AtLeastOnce),
        ] {
            assert!(matches!(
                gone.subscribe(id, "news", mode).await,
                Frame::Subscribed { .. }
            ));
        }
        let mut stay = Raw::connect(&s.client, addr).await;
        assert!(matches!(
            stay.subscribe(9, "news", DeliveryMode::AtMostOnce).await,
            Frame::Subscribed { .. }
        ));
        assert_eq!(s.matcher.stats().await.unwrap().subscriptions, 4);
        // Half a frame: the length says 100 bytes, 10 arrive, then the connection is gone.
        let mut partial = 100u32.to_be_bytes().to_vec();
        partial.extend_from_slice(&[0, 1, 0x82, 0xa1, b'x', 0, 0, 0, 0, 0]);
        gone.w.stream().write_all(&partial).await.unwrap();
        gone.conn.close(0u32.into(), b"gone");
        drop(gone);
        // The matcher forgets the vanished client's at-most-once subscriptions...
        loop {
            if s.matcher.stats().await.unwrap().subscriptions == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // ...and keeps serving the others.
        assert!(matches!(
            stay.publish("news", 1, 16).await,
            Frame::PublishAck { .. }
        ));
        let mut stream = FrameReader::new(stay.conn.accept_uni().await.unwrap(), FRAME_BYTES_MAX);
        assert_eq!(next_notify(&mut stream).await.event.id.seq, 1);
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    s.matcher.shutdown().await;
}

/// Publishes 4 KiB events to `topic`, acknowledged, until `done` holds for the matcher's
/// stats (at most `max` events).
async fn publish_until(
    s: &Setup,
    publisher: &mut Raw,
    topic: &str,
    max: u64,
    done: impl Fn(&sift_matcher::MatcherStats) -> bool,
) {
    for seq in 1..=max {
        assert!(matches!(
            publisher.publish(topic, seq, 4096).await,
            Frame::PublishAck { .. }
        ));
        if done(&s.matcher.stats().await.unwrap()) {
            return;
        }
    }
    panic!("the condition did not hold after {max} events");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_under_the_disconnect_policy() {
    let s = standalone(|c| {
        c.queue_len_max = 64;
        c.slow_consumer = sift_matcher::SlowConsumer::Disconnect;
    });
    let run = async {
        let addr = s.matcher.local_addr().unwrap();
        let mut stuck = Raw::connect(&s.client, addr).await;
        stuck.subscribe(1, "feed", DeliveryMode::AtMostOnce).await;
        let mut publisher = Raw::connect(&s.client, addr).await;
        // The stream's flow-control window fills, then the queue: the subscription ends.
        publish_until(&s, &mut publisher, "feed", 10_000, |st| {
            st.slow_consumers == 1
        })
        .await;
        assert_eq!(s.matcher.stats().await.unwrap().subscriptions, 0);
        // Its stream is reset with the slow-consumer code, since `Ended` cannot get through.
        let mut stream = FrameReader::new(stuck.conn.accept_uni().await.unwrap(), FRAME_BYTES_MAX);
        let err = loop {
            match stream.next().await {
                Ok(Some(Frame::Notify(_))) => continue,
                Ok(other) => panic!("expected notifications then a reset, got {other:?}"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                err,
                sift_protocol::net::NetError::Read(quinn::ReadError::Reset(code))
                    if code.into_inner() == u64::from(sift_protocol::net::RESET_SLOW_CONSUMER)
            ),
            "{err:?}"
        );
        // The connection goes on.
        assert!(matches!(
            stuck.subscribe(2, "feed", DeliveryMode::AtMostOnce).await,
            Frame::Subscribed { .. }
        ));
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    s.matcher.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_cannot_hold_a_shutdown() {
    let s = standalone(|_| {});
    let addr = s.matcher.local_addr().unwrap();
    let run = async {
        let mut stuck = Raw::connect(&s.client, addr).await;
        stuck.subscribe(1, "feed", DeliveryMode::AtMostOnce).await;
        let mut publisher = Raw::connect(&s.client, addr).await;
        // Enough to fill the stream's window and leave the writer waiting on the peer.
        publish_until(&s, &mut publisher, "feed", 2_000, |st| {
            st.published == 2_000
        })
        .await;
        stuck
    };
    let _stuck = tokio::time::timeout(LIMIT, run).await.unwrap();
    tokio::time::timeout(LIMIT, s.matcher.shutdown())
        .await
        .expect("shutdown finishes while a subscriber does not read");
}

#[tokio::test]
async fn a_subscription_follows_its_client_to_a_new_connection() {
    let s = standalone(|_| {});
    let run = async {
        let addr = s.matcher.local_addr().unwrap();
        // The client's old connection is gone as far as it knows, but the matcher has not
        // noticed yet; the client subscribes again, same id, on a new connection.
        let mut old = Raw::connect(&s.client, addr).await;
        old.subscribe(7, "jobs", DeliveryMode::AtMostOnce).await;
        let mut new = Raw::connect(&s.client, addr).await;
        assert!(matches!(
            new.subscribe(7, "jobs", DeliveryMode::AtMostOnce).await,
            Frame::Subscribed { .. }
        ));
        // Again on the same connection it is a duplicate.
        let Frame::Error(e) = new.subscribe(7, "jobs", DeliveryMode::AtMostOnce).await else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::DuplicateSubscription);
        assert_eq!(s.matcher.stats().await.unwrap().subscriptions, 1);
        assert!(matches!(
            new.publish("jobs", 1, 8).await,
            Frame::PublishAck { .. }
        ));
        let mut stream = FrameReader::new(new.conn.accept_uni().await.unwrap(), FRAME_BYTES_MAX);
        assert_eq!(next_notify(&mut stream).await.event.id.seq, 1);
        // The old connection's stream says the subscription went elsewhere.
        let mut gone = FrameReader::new(old.conn.accept_uni().await.unwrap(), FRAME_BYTES_MAX);
        assert_eq!(
            gone.next().await.unwrap(),
            Some(Frame::Ended {
                sub: SubscriptionId(7),
                reason: EndReason::Moved
            })
        );
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    s.matcher.shutdown().await;
}
