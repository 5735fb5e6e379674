use super::*;
use sift_protocol::frame::{Ring, RingMember};

fn member(id: &str) -> RingMember {
    RingMember {
        id: id.into(),
        addr: format!("{id}:1"),
        weight: 1,
    }
}

fn ring(version: u64, ids: &[&str]) -> Placement {
    Placement::new(&Ring::new(version, ids.iter().map(|i| member(i)).collect()))
}

#[test]
fn epochs_judge_at_the_newer_ring() {
    assert_eq!(judge(3, 5, None), Epoch::Active);
    assert_eq!(judge(5, 5, Some(6)), Epoch::Active);
    assert_eq!(judge(6, 5, Some(6)), Epoch::ActivatePending);
    assert_eq!(judge(7, 5, Some(6)), Epoch::Ahead);
    assert_eq!(judge(6, 5, None), Epoch::Ahead);
}

#[test]
fn only_moving_topics_are_handed_over_to_their_new_owner() {
    let active = ring(1, &["a", "b"]);
    let pending = ring(2, &["a", "b", "c"]);
    let topics: Vec<String> = (0..300).map(|i| format!("t.{i}")).collect();
    let mine: Vec<(SubscriptionId, &str)> = topics
        .iter()
        .enumerate()
        .filter(|(_, t)| active.owner(t).is_some_and(|o| o.id == "a"))
        .map(|(i, t)| (SubscriptionId(i as u64 + 1), t.as_str()))
        .collect();
    let out = plan(
        "a",
        &active,
        &pending,
        mine.iter().map(|(id, t)| (*id, Placed::Topic(t))),
    );
    // Adding a member moves topics only to it.
    assert!(out.keys().all(|k| k == "c"), "{out:?}");
    let moved = out.get("c").map_or(0, Vec::len);
    let expected = mine
        .iter()
        .filter(|(_, t)| pending.owner(t).is_some_and(|o| o.id == "c"))
        .count();
    assert_eq!(moved, expected);
    assert!(moved > 0 && moved < mine.len());
}

#[test]
fn a_leaving_matcher_hands_everything_over_and_patterns_go_to_joiners_only() {
    let active = ring(1, &["a", "b"]);
    let pending = ring(2, &["b", "c"]);
    // Two topics a owns (it hands over only what it owns).
    let mine: Vec<String> = (0..)
        .map(|i| format!("t.{i}"))
        .filter(|t| active.owner(t).is_some_and(|m| m.id == "a"))
        .take(2)
        .collect();
    let out = plan(
        "a",
        &active,
        &pending,
        [
            (SubscriptionId(1), Placed::Topic(&mine[0])),
            (SubscriptionId(2), Placed::Topic(&mine[1])),
            (SubscriptionId(3), Placed::Pattern),
        ],
    );
    let all: Vec<SubscriptionId> = out.values().flatten().copied().collect();
    assert!(all.contains(&SubscriptionId(1)) && all.contains(&SubscriptionId(2)));
    // The pattern goes to c (joining), not to b (which holds its own copy).
    assert!(out.get("c").is_some_and(|v| v.contains(&SubscriptionId(3))));
    assert!(!out.get("b").is_some_and(|v| v.contains(&SubscriptionId(3))));
    assert_eq!(
        mirror_to("a", &active, &pending, Placed::Pattern),
        vec!["c".to_owned()]
    );
}

#[test]
fn confirmation_waits_for_every_answer_and_ignores_strangers() {
    let mut out = Outgoing::new(2);
    assert!(out.complete());
    let (s1, s2) = (10, 11);
    out.sent(s1, "c");
    out.sent(s2, "c");
    assert!(!out.complete());
    assert!(!out.acked(9));
    assert!(out.acked(s1));
    assert!(!out.acked(s1));
    assert_eq!(out.waiting_for().into_iter().collect::<Vec<_>>(), vec!["c"]);
    assert!(out.acked(s2));
    assert!(out.complete());
    assert!(out.confirm());
    assert!(!out.confirm());
    assert_eq!(out.version(), 2);
}

#[test]
fn held_subscriptions_settle_on_activation_and_go_on_abort() {
    let mut inc = Incoming::new();
    inc.hold(SubscriptionId(1), 6);
    inc.hold(SubscriptionId(2), 6);
    inc.hold(SubscriptionId(3), 7);
    // Still announced: all kept, 7 is not known as pending: dropped.
    assert_eq!(inc.ring(5, Some(6)), vec![SubscriptionId(3)]);
    assert!(inc.is_held(SubscriptionId(1)));
    inc.settle(SubscriptionId(2));
    // 6 activates: 1 is settled.
    assert!(inc.ring(6, None).is_empty());
    assert!(inc.is_empty());
    // Abort: announced 8, then nothing.
    inc.hold(SubscriptionId(4), 8);
    assert_eq!(inc.ring(6, None), vec![SubscriptionId(4)]);
}
