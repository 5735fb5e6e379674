//! The node stepped in virtual time, alone or in pairs wired by hand (the cluster with a
//! coordinator and clients is `tests/cluster.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use bytes::Bytes;
use sift_protocol::peer::PeerMsg;
use sift_protocol::{Attributes, PublisherId};

use super::*;

#[derive(Debug, Default)]
struct Rec {
    items: Mutex<Vec<(u64, bool, EventId)>>,
    ended: Mutex<Option<EndReason>>,
}

impl Outlet for Rec {
    fn open(_: usize, _: usize) -> Arc<Self> {
        Arc::new(Rec::default())
    }
    fn push(&self, delivery: u64, redelivered: bool, event: Arc<EncodedEvent>, _: bool) -> Pushed {
        let id = event.decode().unwrap().id;
        self.items.lock().unwrap().push((delivery, redelivered, id));
        Pushed::Queued
    }
    fn end(&self, reason: EndReason) {
        *self.ended.lock().unwrap() = Some(reason);
    }
}

fn member(id: &str) -> RingMember {
    RingMember {
        id: id.into(),
        addr: format!("{id}:1"),
        weight: 100,
    }
}

fn ring(version: u64, ids: &[&str], replicas: u32) -> Ring {
    let mut r = Ring::new(version, ids.iter().map(|i| member(i)).collect());
    r.replicas = replicas;
    r
}

fn node(id: &str, ring: Ring) -> Node<Rec> {
    let mut c = NodeConfig::for_test();
    c.ack_timeout_ms = 500;
    Node::new(member(id), c, ring)
}

fn event(seq: u64, topic: &str) -> Event {
    Event {
        id: EventId {
            publisher: PublisherId(1),
            seq,
        },
        topic: topic.into(),
        attrs: Attributes::new(),
        payload: Bytes::from_static(b"p"),
    }
}

fn sub(id: u64, pattern: &str, mode: DeliveryMode) -> NewSubscription {
    let mut s = NewSubscription::new(SubscriptionId(id), Pattern::parse(pattern).unwrap());
    s.mode = mode;
    s
}

fn answers(n: &mut Node<Rec>) -> Vec<(Token, Result<(), Refusal>)> {
    n.take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Answer { token, result } => Some((token, result)),
            _ => None,
        })
        .collect()
}

#[test]
fn redelivery_is_due_one_ack_timeout_after_the_send_not_on_a_scan() {
    let mut n = node("a", ring(1, &["a"], 1));
    let (_, q) = n
        .handle_subscribe(
            Timestamp(0),
            1,
            sub(1, "t", DeliveryMode::AtLeastOnce),
            "".into(),
            1,
        )
        .unwrap();
    assert_eq!(
        n.next_deadline().filter(|t| t.0 < 1000),
        None,
        "nothing unacked"
    );
    n.handle_publish(
        Timestamp(10),
        Topic::parse("t").unwrap(),
        event(1, "t"),
        true,
        1,
        Some(7),
    );
    assert_eq!(answers(&mut n), vec![(7, Ok(()))]);
    assert_eq!(n.next_deadline(), Some(Timestamp(510)));
    n.tick(Timestamp(509));
    assert_eq!(q.items.lock().unwrap().len(), 1, "not due yet");
    n.tick(Timestamp(510));
    let items = q.items.lock().unwrap().clone();
    assert_eq!(items.len(), 2);
    assert!(items[1].1, "the second send is marked redelivered");
    assert_eq!(
        n.next_deadline(),
        Some(Timestamp(1010)),
        "backs off by one more timeout"
    );
    n.handle_ack(Timestamp(600), 1, SubscriptionId(1), items[0].2);
    assert!(
        n.next_deadline().is_none_or(|t| t.0 > 50_000),
        "acked: no redelivery due (only the lease's expiry check)"
    );
    n.tick(Timestamp(1010));
    assert_eq!(q.items.lock().unwrap().len(), 2, "acked: never sent again");
    assert!(n.next_deadline().is_none_or(|t| t.0 > 100_000));
}

#[test]
fn a_request_at_a_newer_ring_is_refused_with_the_version_and_the_announced_one_activates() {
    let mut n = node("a", ring(3, &["a"], 1));
    n.handle_publish(
        Timestamp(0),
        Topic::parse("t").unwrap(),
        event(1, "t"),
        true,
        5,
        Some(1),
    );
    let a = answers(&mut n);
    let err = a[0].1.clone().unwrap_err();
    assert_eq!(err.code, ErrorCode::NotOwner);
    assert_eq!(err.ring_version, Some(3));
    // Ring 4 announced (a joins b): a request at ring 4 means it is active.
    n.handle_cluster(
        Timestamp(1),
        ring(3, &["a"], 1),
        Some(ring(4, &["a", "b"], 1)),
    );
    let _ = n.take_effects();
    n.handle_publish(
        Timestamp(2),
        Topic::parse("t").unwrap(),
        event(2, "t"),
        true,
        4,
        Some(2),
    );
    let _ = n.take_effects();
    assert_eq!(n.ring().version, 4);
}

#[test]
fn with_two_replicas_an_acked_publish_is_answered_once_the_replica_holds_it() {
    let r = ring(1, &["a", "b"], 2);
    let mut a = node("a", r.clone());
    let mut b = node("b", r.clone());
    // A topic whose primary is a.
    let topic = (0..100)
        .map(|i| format!("t.{i}"))
        .find(|t| Placement::new(&r).owner(t).unwrap().id == "a")
        .unwrap();
    let t = Topic::parse(&topic).unwrap();
    a.handle_subscribe(
        Timestamp(0),
        1,
        sub(1, &topic, DeliveryMode::AtLeastOnce),
        "".into(),
        1,
    )
    .unwrap();
    b.handle_subscribe(
        Timestamp(0),
        2,
        sub(1, &topic, DeliveryMode::AtLeastOnce),
        "".into(),
        1,
    )
    .unwrap();
    a.handle_publish(Timestamp(1), t, event(1, &topic), true, 1, Some(9));
    let effects = a.take_effects();
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Answer { .. })),
        "not answered before the replica holds the event"
    );
    let hold = effects
        .into_iter()
        .find_map(|e| match e {
            Effect::Peer { to, frame } if to.id == "b" => match frame.msg {
                PeerMsg::Hold { .. } => Some(frame),
                _ => None,
            },
            _ => None,
        })
        .expect("a Hold for b");
    b.handle_peer(Timestamp(2), "a", hold, 1);
    let reply = b
        .take_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::PeerReply { token: 1, frame } => Some(frame),
            _ => None,
        })
        .unwrap();
    assert_eq!(b.stats().held_events, 1);
    a.handle_peer_answer(Timestamp(3), "b", reply);
    assert_eq!(answers(&mut a), vec![(9, Ok(()))]);
    // a silent for long: b takes over what it holds and delivers it itself.
    for ms in (100..=1_000).step_by(100) {
        b.tick(Timestamp(ms));
        let _ = b.take_effects();
    }
    assert_eq!(b.stats().taken_over_events, 1);
}
