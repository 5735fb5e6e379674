//! The node stepped in virtual time, alone or in pairs wired by hand (the cluster with a
//! coordinator and clients is `tests/cluster.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use bytes::Bytes;
use sift_protocol::frame::Frame;
use sift_protocol::peer::{PeerMsg, SubImage, SubTail, TailItem};
use sift_protocol::{Attributes, PublisherId};

use super::*;

#[derive(Debug, Default)]
struct Rec {
    items: Mutex<Vec<(u64, bool, EventId)>>,
    /// What `take_waiting` may take back (everything pushed and not taken yet).
    waiting: Mutex<Vec<Arc<EncodedEvent>>>,
    ended: Mutex<Option<EndReason>>,
}

impl Outlet for Rec {
    fn open(_: usize, _: usize) -> Arc<Self> {
        Arc::new(Rec::default())
    }
    fn push(&self, delivery: u64, redelivered: bool, event: Arc<EncodedEvent>, _: bool) -> Pushed {
        let id = event.decode().unwrap().id;
        self.items.lock().unwrap().push((delivery, redelivered, id));
        self.waiting.lock().unwrap().push(event);
        Pushed::Queued
    }
    fn end(&self, reason: EndReason) {
        *self.ended.lock().unwrap() = Some(reason);
    }
    fn take_waiting(&self) -> Vec<Arc<EncodedEvent>> {
        let taken = std::mem::take(&mut *self.waiting.lock().unwrap());
        let ids: Vec<EventId> = taken.iter().map(|e| e.decode().unwrap().id).collect();
        self.items
            .lock()
            .unwrap()
            .retain(|(_, _, id)| !ids.contains(id));
        taken
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

/// An acknowledged publish of event `seq` to `topic` at `n`, routed with ring `version`: it
/// is answered at once.
fn publish_acked(n: &mut Node<Rec>, now: u64, topic: &str, seq: u64, version: u64) {
    let t = Topic::parse(topic).unwrap();
    n.handle_publish(
        Timestamp(now),
        t,
        event(seq, topic),
        true,
        version,
        Some(77),
    );
    assert!(answers(n).contains(&(77, Ok(()))), "the publish was acked");
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
    assert!(
        n.next_deadline().is_none_or(|t| t.0 > 50_000),
        "only the lease check"
    );
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

fn seqs(q: &Rec) -> Vec<(bool, u64)> {
    q.items
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r, id)| (*r, id.seq))
        .collect()
}

#[test]
fn an_at_least_once_subscriber_that_reconnects_gets_what_it_had_not_acked() {
    let mut n = node("a", ring(1, &["a"], 1));
    let t = Topic::parse("t").unwrap();
    let (_, old) = n
        .handle_subscribe(
            Timestamp(0),
            1,
            sub(1, "t", DeliveryMode::AtLeastOnce),
            "".into(),
            1,
        )
        .unwrap();
    for seq in 1..=3 {
        n.handle_publish(Timestamp(1), t.clone(), event(seq, "t"), true, 1, Some(seq));
    }
    n.handle_ack(Timestamp(2), 1, SubscriptionId(1), event(1, "t").id);
    assert_eq!(seqs(&old), [(false, 1), (false, 2), (false, 3)]);
    // The connection dies; an event comes while the client is away.
    n.handle_closed(Timestamp(3), 1);
    assert_eq!(*old.ended.lock().unwrap(), Some(EndReason::Moved));
    n.handle_publish(Timestamp(4), t.clone(), event(4, "t"), true, 1, Some(4));
    let (_, new) = n
        .handle_subscribe(
            Timestamp(5),
            2,
            sub(1, "t", DeliveryMode::AtLeastOnce),
            "".into(),
            1,
        )
        .unwrap();
    assert_eq!(
        seqs(&new),
        [(true, 2), (true, 3), (false, 4)],
        "the unacked ones again, then what came meanwhile"
    );
    // From a second live connection without a close in between: the same.
    let (_, third) = n
        .handle_subscribe(
            Timestamp(6),
            3,
            sub(1, "t", DeliveryMode::AtLeastOnce),
            "".into(),
            1,
        )
        .unwrap();
    assert_eq!(seqs(&third), [(true, 2), (true, 3), (true, 4)]);
    // At-most-once subscriptions end with their connection.
    n.handle_subscribe(
        Timestamp(7),
        4,
        sub(2, "t", DeliveryMode::AtMostOnce),
        "".into(),
        1,
    )
    .unwrap();
    n.handle_closed(Timestamp(8), 4);
    assert_eq!(n.stats().subscriptions, 1);
}

/// Ring 1 is `a` alone, ring 2 (announced at `b`, a joiner) adds `b`; a topic ring 2 moves
/// to `b`.
fn joining() -> (Ring, Ring, String, Node<Rec>, Node<Rec>) {
    let r1 = ring(1, &["a"], 1);
    let r2 = ring(2, &["a", "b"], 1);
    let topic = (0..100)
        .map(|i| format!("t.{i}"))
        .find(|t| Placement::new(&r2).owner(t).unwrap().id == "b")
        .unwrap();
    let a = node("a", r1.clone());
    let mut b = node("b", Ring::empty());
    b.handle_cluster(Timestamp(0), r1.clone(), Some(r2.clone()));
    (r1, r2, topic, a, b)
}

#[test]
fn a_handoff_sent_again_keeps_what_the_held_subscription_queued() {
    let (r1, r2, topic, mut a, mut b) = joining();
    a.handle_subscribe(
        Timestamp(0),
        1,
        sub(1, &topic, DeliveryMode::AtLeastOnce),
        "".into(),
        1,
    )
    .unwrap();
    a.handle_cluster(Timestamp(1), r1.clone(), Some(r2.clone()));
    let handoff = a
        .take_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::Peer { to, frame } if to.id == "b" => Some(frame),
            _ => None,
        })
        .expect("a hands the subscription to b");
    b.handle_peer(Timestamp(2), "a", handoff.clone(), 1);
    // Ring 2 active at b (a publisher there already), and an event for the held copy.
    publish_acked(&mut b, 3, &topic, 1, 2);
    // The same handoff again (a retransmission after a reconnect).
    b.handle_peer(Timestamp(4), "a", handoff, 2);
    let _ = b.take_effects();
    let (_, q) = b
        .handle_subscribe(
            Timestamp(5),
            9,
            sub(1, &topic, DeliveryMode::AtLeastOnce),
            "".into(),
            2,
        )
        .unwrap();
    assert_eq!(
        seqs(&q),
        [(false, 1)],
        "the queued event survived the repeat"
    );
}

/// Rings 1 = [a], 2 = [a, b] (b joins) and 3 = [a, c] (b drains, c joins), and a topic that
/// ring 2 places on b and ring 3 on c.
fn three_rings() -> (Ring, Ring, Ring, String) {
    let r1 = ring(1, &["a"], 1);
    let r2 = ring(2, &["a", "b"], 1);
    let r3 = ring(3, &["a", "c"], 1);
    let topic = topic_owned(&[(&r2, "b"), (&r3, "c")]);
    (r1, r2, r3, topic)
}

/// A topic whose primary owner at each ring is the one named with it.
fn topic_owned(owners: &[(&Ring, &str)]) -> String {
    (0..200)
        .map(|i| format!("t.{i}"))
        .find(|t| {
            owners
                .iter()
                .all(|(r, id)| Placement::new(r).owner(t).unwrap().id == *id)
        })
        .unwrap()
}

/// Step one of the move from `active` to `next`: both learn of it, `from` hands over to `to`
/// (at `now`) and `to` answers (at `now + 1`).
fn announce(from: &mut Node<Rec>, to: &mut Node<Rec>, active: &Ring, next: &Ring, now: u64) {
    to.handle_cluster(Timestamp(now), active.clone(), Some(next.clone()));
    from.handle_cluster(Timestamp(now), active.clone(), Some(next.clone()));
    let frames = sent_to(from, &to.me.id.clone());
    exchange(from, to, frames, now + 1);
}

/// Subscription 1's client subscribes (or attaches) at `n` on connection `conn` at `now`,
/// routed with ring `version`.
fn attach(
    n: &mut Node<Rec>,
    now: u64,
    conn: ConnId,
    topic: &str,
    mode: DeliveryMode,
    version: u64,
) -> Arc<Rec> {
    n.handle_subscribe(
        Timestamp(now),
        conn,
        sub(1, topic, mode),
        "".into(),
        version,
    )
    .unwrap()
    .1
}

/// Step two: `ring` activates at `from`, then at `to`; returns what `from` sends `to` (its tail).
fn activate(from: &mut Node<Rec>, to: &mut Node<Rec>, ring: &Ring, now: u64) -> Vec<PeerFrame> {
    from.handle_cluster(Timestamp(now), ring.clone(), None);
    to.handle_cluster(Timestamp(now), ring.clone(), None);
    sent_to(from, &to.me.id.clone())
}

/// An at-most-once subscription handed from a to b (a joins b), then on from b to c (b
/// drains, c joins) before its client ever attached at b: what waited for it at b goes on to
/// c, and the client gets it there.
#[test]
fn a_subscription_handed_on_before_its_client_came_keeps_what_waited_for_it() {
    let (r1, r2, r3, topic) = three_rings();
    let (mut a, mut b, mut c) = (
        node("a", r1.clone()),
        node("b", Ring::empty()),
        node("c", Ring::empty()),
    );
    a.handle_subscribe(
        Timestamp(0),
        1,
        sub(1, &topic, DeliveryMode::AtMostOnce),
        "".into(),
        1,
    )
    .unwrap();
    // Ring 2: a hands the subscription to b, then the ring activates.
    announce(&mut a, &mut b, &r1, &r2, 1);
    let frames = activate(&mut a, &mut b, &r2, 3);
    exchange(&mut a, &mut b, frames, 4);
    // b owns the topic; its client has not come yet. An event waits for it.
    publish_acked(&mut b, 5, &topic, 1, 2);
    // Ring 3: b drains, c joins; b hands the subscription on to c.
    announce(&mut b, &mut c, &r2, &r3, 6);
    let frames = activate(&mut b, &mut c, &r3, 8);
    exchange(&mut b, &mut c, frames, 9);
    let q = attach(&mut c, 10, 3, &topic, DeliveryMode::AtMostOnce, 3);
    assert_eq!(
        q.items
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.2.seq)
            .collect::<Vec<_>>(),
        [1],
        "the event that waited at b reaches the client at c"
    );
}

#[test]
fn a_repeat_of_a_publish_waiting_for_its_replica_is_answered_with_it_not_before() {
    let r = ring(1, &["a", "b"], 2);
    let mut a = node("a", r.clone());
    let topic = (0..100)
        .map(|i| format!("t.{i}"))
        .find(|t| Placement::new(&r).owner(t).unwrap().id == "a")
        .unwrap();
    let t = Topic::parse(&topic).unwrap();
    a.handle_publish(Timestamp(1), t.clone(), event(1, &topic), true, 1, Some(1));
    let hold_seq = a
        .take_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::Peer { frame, .. } => match frame.msg {
                PeerMsg::Hold { seq, .. } => Some(seq),
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    // The client's retry (or hedge) of the same event.
    a.handle_publish(Timestamp(2), t, event(1, &topic), true, 1, Some(2));
    assert_eq!(
        answers(&mut a),
        vec![],
        "not acked while b does not hold it"
    );
    let acked = PeerFrame {
        epoch: 1,
        msg: PeerMsg::Acked {
            seqs: vec![hold_seq],
        },
    };
    a.handle_peer_answer(Timestamp(3), "b", acked);
    assert_eq!(answers(&mut a), vec![(1, Ok(())), (2, Ok(()))]);
}

/// What `n` sends to `to`, in order.
fn sent_to(n: &mut Node<Rec>, to: &str) -> Vec<PeerFrame> {
    n.take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Peer { to: m, frame } if m.id == to => Some(frame),
            _ => None,
        })
        .collect()
}

/// `to` takes `frames` from `from`; `from` takes the answers. Returns `from`'s effects.
fn exchange(
    from: &mut Node<Rec>,
    to: &mut Node<Rec>,
    frames: Vec<PeerFrame>,
    now: u64,
) -> Vec<Effect> {
    let from_id = from.me.id.clone();
    let to_id = to.me.id.clone();
    for (i, f) in frames.into_iter().enumerate() {
        to.handle_peer(Timestamp(now), &from_id, f, i as u64);
    }
    for e in to.take_effects() {
        if let Effect::PeerReply { frame, .. } = e {
            from.handle_peer_answer(Timestamp(now), &to_id, frame);
        }
    }
    from.take_effects()
}

/// An at-least-once subscription at `a` with one unacknowledged notification, on a topic
/// that ring 2 (a joins b) moves to b; both have ring 2 announced and `a` has handed over.
/// Returns the nodes, the topic, the event's id and `a`'s effects once b answered.
fn announced_with_one_unacked() -> (Node<Rec>, Node<Rec>, String, EventId, Vec<Effect>) {
    let (r1, r2, topic, mut a, mut b) = joining();
    let _ = b.take_effects();
    let (_, q) = a
        .handle_subscribe(
            Timestamp(0),
            1,
            sub(1, &topic, DeliveryMode::AtLeastOnce),
            "".into(),
            1,
        )
        .unwrap();
    let t = Topic::parse(&topic).unwrap();
    a.handle_publish(Timestamp(1), t, event(1, &topic), true, 1, Some(1));
    let _ = a.take_effects();
    let id = q.items.lock().unwrap()[0].2;
    a.handle_cluster(Timestamp(2), r1, Some(r2));
    let effects = a.take_effects();
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Confirm(_))),
        "no confirmation before b holds what moves"
    );
    let frames: Vec<PeerFrame> = effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Peer { to, frame } if to.id == "b" => Some(frame),
            _ => None,
        })
        .collect();
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.msg, PeerMsg::Unacked { subs, .. } if subs[0].unacked.len() == 1)),
        "step one carries a copy of the unacked notification: {frames:?}"
    );
    // b takes and answers the handoff of the subscription: not enough to confirm.
    let (handoffs, copies): (Vec<PeerFrame>, Vec<PeerFrame>) = frames
        .into_iter()
        .partition(|f| matches!(f.msg, PeerMsg::Handoff { .. }));
    assert_eq!((handoffs.len(), copies.len()), (1, 1));
    let effects = exchange(&mut a, &mut b, handoffs, 3);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Confirm(_))),
        "not confirmed while the copies are unanswered"
    );
    let effects = exchange(&mut a, &mut b, copies, 3);
    (a, b, topic, id, effects)
}

#[test]
fn a_handoff_copies_unacked_notifications_to_the_new_owner_before_it_confirms() {
    let (_a, mut b, topic, id, effects) = announced_with_one_unacked();
    assert!(
        effects.iter().any(|e| matches!(e, Effect::Confirm(2))),
        "confirmed once b holds the subscription and the copy"
    );
    // a dies once ring 2 is active, before its tail: b redelivers the copy to the client
    // that attaches there, 5 s (at least an ack timeout) after the activation, not before.
    b.handle_cluster(Timestamp(10), ring(2, &["a", "b"], 1), None);
    let (_, q) = b
        .handle_subscribe(
            Timestamp(11),
            9,
            sub(1, &topic, DeliveryMode::AtLeastOnce),
            "".into(),
            2,
        )
        .unwrap();
    b.tick(Timestamp(5_009));
    assert!(q.items.lock().unwrap().is_empty(), "held aside until then");
    assert_eq!(b.next_deadline(), Some(Timestamp(5_010)));
    b.tick(Timestamp(5_010));
    let items = q.items.lock().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].2, id);
    assert!(items[0].1, "marked redelivered: it was sent before");
    assert_eq!(b.stats().redelivered_copies, 1);
}

#[test]
fn the_tail_at_activation_replaces_the_copies_with_what_is_still_unacked() {
    let (mut a, mut b, topic, id, _) = announced_with_one_unacked();
    // The client acks at a between step one and the activation.
    a.handle_ack(Timestamp(4), 1, SubscriptionId(1), id);
    let r2 = ring(2, &["a", "b"], 1);
    a.handle_cluster(Timestamp(5), r2.clone(), None);
    b.handle_cluster(Timestamp(5), r2, None);
    let _ = b.take_effects();
    let frames = sent_to(&mut a, "b");
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.msg, PeerMsg::Tail { subs, .. } if subs[0].unacked.is_empty())),
        "an empty tail: nothing is left unacked"
    );
    let _ = exchange(&mut a, &mut b, frames, 6);
    let (_, q) = b
        .handle_subscribe(
            Timestamp(7),
            9,
            sub(1, &topic, DeliveryMode::AtLeastOnce),
            "".into(),
            2,
        )
        .unwrap();
    b.tick(Timestamp(20_000));
    assert!(
        q.items.lock().unwrap().is_empty(),
        "the acked notification is not redelivered"
    );
    assert_eq!(b.stats().redelivered_copies, 0);
}

#[test]
fn copies_for_an_abandoned_transition_are_dropped() {
    let (_a, mut b, _, _, _) = announced_with_one_unacked();
    b.handle_cluster(Timestamp(10), ring(1, &["a"], 1), None);
    assert!(b.copies.is_empty());
    assert_eq!(b.stats().subscriptions, 0, "the held subscription too");
}

#[test]
fn copies_sent_again_after_the_activation_are_ignored() {
    let (r1, r2, topic, mut a, mut b) = joining();
    a.handle_subscribe(
        Timestamp(0),
        1,
        sub(1, &topic, DeliveryMode::AtLeastOnce),
        "".into(),
        1,
    )
    .unwrap();
    a.handle_publish(
        Timestamp(1),
        Topic::parse(&topic).unwrap(),
        event(1, &topic),
        true,
        1,
        Some(1),
    );
    let _ = a.take_effects();
    a.handle_cluster(Timestamp(2), r1, Some(r2.clone()));
    let copies: Vec<PeerFrame> = sent_to(&mut a, "b")
        .into_iter()
        .filter(|f| matches!(f.msg, PeerMsg::Unacked { .. }))
        .collect();
    b.handle_cluster(Timestamp(3), r2, None);
    let _ = exchange(&mut a, &mut b, copies, 4);
    assert!(b.copies.is_empty(), "a resend for an active ring");
}

#[test]
fn a_pattern_subscription_leaving_with_a_drained_matcher_lets_its_copies_go() {
    let r1 = ring(1, &["a", "b"], 1);
    let r2 = ring(2, &["b"], 1);
    // A topic of a's at ring 1.
    let topic = (0..100)
        .map(|i| format!("t.{i}"))
        .find(|t| Placement::new(&r1).owner(t).unwrap().id == "a")
        .unwrap();
    let mut a = node("a", r1.clone());
    let mut b = node("b", r1.clone());
    // The client's pattern subscription, at both (the SDK places a pattern everywhere).
    let (_, qa) = a
        .handle_subscribe(
            Timestamp(0),
            1,
            sub(5, "t.*", DeliveryMode::AtLeastOnce),
            "".into(),
            1,
        )
        .unwrap();
    let (_, qb) = b
        .handle_subscribe(
            Timestamp(0),
            2,
            sub(5, "t.*", DeliveryMode::AtLeastOnce),
            "".into(),
            1,
        )
        .unwrap();
    a.handle_publish(
        Timestamp(1),
        Topic::parse(&topic).unwrap(),
        event(1, &topic),
        true,
        1,
        Some(1),
    );
    let _ = a.take_effects();
    let id = qa.items.lock().unwrap()[0].2;
    // a drains: ring 2 without it. Its pattern copy's unacked event goes to b, the topic's
    // next owner, as a copy.
    b.handle_cluster(Timestamp(2), r1.clone(), Some(r2.clone()));
    let _ = b.take_effects();
    a.handle_cluster(Timestamp(2), r1, Some(r2.clone()));
    let copies: Vec<PeerFrame> = sent_to(&mut a, "b");
    assert!(copies
        .iter()
        .any(|f| matches!(&f.msg, PeerMsg::Unacked { subs, .. } if subs[0].unacked.len() == 1)));
    let _ = exchange(&mut a, &mut b, copies, 3);
    assert_eq!(b.copies.len(), 1);
    // The client acks at a; then ring 2 is active. Nothing is left unacked at a, and still
    // b gets a tail (empty) for the pattern subscription: it lets go of the copy.
    a.handle_ack(Timestamp(4), 1, SubscriptionId(5), id);
    a.handle_cluster(Timestamp(5), r2.clone(), None);
    b.handle_cluster(Timestamp(5), r2, None);
    let _ = b.take_effects();
    let tails = sent_to(&mut a, "b");
    assert!(
        tails
            .iter()
            .any(|f| matches!(&f.msg, PeerMsg::Tail { subs, .. } if subs.len() == 1 && subs[0].unacked.is_empty())),
        "{tails:?}"
    );
    let _ = exchange(&mut a, &mut b, tails, 6);
    assert!(b.copies.is_empty());
    b.tick(Timestamp(20_000));
    assert!(
        qb.items.lock().unwrap().is_empty(),
        "the acked event is not redelivered by b"
    );
}

#[test]
fn a_holder_that_left_the_ring_still_gets_its_releases() {
    // R = 2: a dispatches a topic that b holds; b is drained (ring 2 has a and c) but runs
    // on, holding the event. Once the subscriber acks, a releases it at b, not nobody.
    let r1 = ring(1, &["a", "b"], 2);
    let r2 = ring(2, &["a", "c"], 2);
    let topic = topic_owned(&[(&r1, "a"), (&r2, "a")]);
    let mut a = node("a", r1.clone());
    let (_, q) = a
        .handle_subscribe(
            Timestamp(0),
            1,
            sub(1, &topic, DeliveryMode::AtLeastOnce),
            "".into(),
            1,
        )
        .unwrap();
    a.handle_publish(
        Timestamp(1),
        Topic::parse(&topic).unwrap(),
        event(1, &topic),
        true,
        1,
        Some(1),
    );
    let hold = sent_to(&mut a, "b");
    assert!(hold.iter().any(|f| matches!(f.msg, PeerMsg::Hold { .. })));
    a.handle_cluster(Timestamp(2), r2, None);
    let _ = a.take_effects();
    let id = q.items.lock().unwrap()[0].2;
    a.handle_ack(Timestamp(3), 1, SubscriptionId(1), id);
    let release = sent_to(&mut a, "b");
    assert!(
        release
            .iter()
            .any(|f| matches!(&f.msg, PeerMsg::Release { ids, .. } if ids == &vec![id])),
        "{release:?}"
    );
}

#[test]
fn tails_are_split_by_bytes_and_keep_every_notification_in_order() {
    let image = |id: u64| SubImage {
        id: SubscriptionId(id),
        pattern: "t".into(),
        filter: String::new(),
        group: None,
        mode: DeliveryMode::AtLeastOnce,
        expiry: sift_protocol::frame::ExpirySpec::LeaseMs(30_000),
        remaining_ms: 30_000,
    };
    let item = |seq: u64, bytes: usize| {
        let mut e = event(seq, "t");
        e.payload = Bytes::from(vec![0u8; bytes]);
        TailItem {
            event: e,
            sent: true,
            due_in_ms: 0,
        }
    };
    // One subscription with 10 events of 200 KiB, one with none, one with a 1 MiB event.
    let subs = vec![
        SubTail {
            image: image(1),
            unacked: (0..10).map(|s| item(s, 200 * 1024)).collect(),
        },
        SubTail {
            image: image(2),
            unacked: Vec::new(),
        },
        SubTail {
            image: image(3),
            unacked: vec![item(99, 1024 * 1024)],
        },
    ];
    let chunks = transition::chunk_tails(subs);
    for c in &chunks {
        let bytes: usize = c
            .iter()
            .flat_map(|t| &t.unacked)
            .map(|i| i.event.payload.len())
            .sum();
        let n: usize = c.iter().map(|t| t.unacked.len()).sum();
        assert!(n == 1 || bytes <= 512 * 1024, "{n} events, {bytes} B");
        let frame = Frame::Peer(PeerFrame {
            epoch: 1,
            msg: PeerMsg::Tail {
                seq: 1,
                subs: c.clone(),
            },
        });
        sift_protocol::codec::encode_to_vec(&frame, sift_protocol::limits::FRAME_BYTES_MAX)
            .expect("every message fits in a frame");
    }
    let flat: Vec<(u64, u64)> = chunks
        .iter()
        .flatten()
        .flat_map(|t| t.unacked.iter().map(|i| (t.image.id.0, i.event.id.seq)))
        .collect();
    let want: Vec<(u64, u64)> = (0..10).map(|s| (1, s)).chain([(3, 99)]).collect();
    assert_eq!(flat, want);
    assert!(
        chunks.iter().flatten().any(|t| t.image.id.0 == 2),
        "the empty one is there"
    );
    assert!(chunks.len() >= 5);
}

/// A tail in flight while its receiver handed the subscription on and activated a newer
/// ring follows the subscription to its owner there: the at-least-once notification a
/// sent after step one (so in no copy) reaches the client that attaches at c.
#[test]
fn a_tail_that_comes_after_the_ring_moved_its_subscription_on_follows_it() {
    let (r1, r2, r3, topic) = three_rings();
    let (mut a, mut b, mut c) = (
        node("a", r1.clone()),
        node("b", Ring::empty()),
        node("c", Ring::empty()),
    );
    let q = attach(&mut a, 0, 1, &topic, DeliveryMode::AtLeastOnce, 1);
    // Ring 2, step one: a hands the subscription to b.
    announce(&mut a, &mut b, &r1, &r2, 1);
    // Until the activation a still delivers: one notification its client does not ack.
    publish_acked(&mut a, 3, &topic, 1, 1);
    let id = q.items.lock().unwrap()[0].2;
    // Ring 2 activates; a's tail is on its way to b, slowly.
    let late_tail = activate(&mut a, &mut b, &r2, 4);
    assert!(late_tail
        .iter()
        .any(|f| matches!(&f.msg, PeerMsg::Tail { subs, .. } if subs[0].unacked.len() == 1)));
    // Meanwhile ring 3 (b drains, c joins) goes all the way through at b and c.
    announce(&mut b, &mut c, &r2, &r3, 5);
    let frames = activate(&mut b, &mut c, &r3, 7);
    exchange(&mut b, &mut c, frames, 8);
    // Now a's tail reaches b, which no longer owns the topic: it sends it on to c.
    for (i, f) in late_tail.into_iter().enumerate() {
        b.handle_peer(Timestamp(9), "a", f, i as u64);
    }
    assert!(
        !b.subs.contains_key(&SubscriptionId(1)),
        "b holds no orphan of the subscription"
    );
    let onward = sent_to(&mut b, "c");
    assert!(
        onward
            .iter()
            .any(|f| matches!(&f.msg, PeerMsg::Tail { subs, .. } if subs[0].unacked.len() == 1)),
        "the tail goes on to c: {onward:?}"
    );
    exchange(&mut b, &mut c, onward, 10);
    let q = attach(&mut c, 11, 3, &topic, DeliveryMode::AtLeastOnce, 3);
    c.tick(Timestamp(2_000));
    let got: Vec<EventId> = q.items.lock().unwrap().iter().map(|i| i.2).collect();
    assert!(
        !got.is_empty() && got.iter().all(|g| *g == id),
        "the unacked notification is redelivered at c (until acked): {got:?}"
    );
}
