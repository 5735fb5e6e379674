use super::*;
use sift_protocol::PublisherId;

fn id(p: u128, seq: u64) -> EventId {
    EventId {
        publisher: PublisherId(p),
        seq,
    }
}

fn publish(p: u128, seq: u64, topic: &str, sent: u64, acked: Option<u64>) -> PublishRecord {
    PublishRecord {
        id: id(p, seq),
        topic: topic.into(),
        k: seq as i64 % 4,
        sent_ms: sent,
        acked_ms: acked,
    }
}

fn sub(name: &str, pattern: &str, from: u64, got: &[(u128, u64, u64)]) -> SubscriberHistory {
    SubscriberHistory {
        name: name.into(),
        unit: name.into(),
        pattern: pattern.into(),
        k_in: None,
        mode: "at-least-once".into(),
        live_from_ms: Some(from),
        ended_ms: None,
        deliveries: got
            .iter()
            .map(|&(p, seq, at)| DeliveryRecord {
                id: id(p, seq),
                at_ms: at,
            })
            .collect(),
    }
}

fn three() -> Vec<PublishRecord> {
    vec![
        publish(1, 1, "a.x", 10, Some(11)),
        publish(1, 2, "a.x", 20, Some(21)),
        publish(1, 3, "a.x", 30, Some(31)),
    ]
}

#[test]
fn a_clean_history_passes() {
    let v = check(
        &three(),
        &[sub("s", "a.x", 0, &[(1, 1, 12), (1, 2, 22), (1, 3, 32)])],
    );
    assert_eq!(
        (v.missing, v.duplicates, v.out_of_order, v.spurious),
        (0, 0, 0, 0)
    );
    assert_eq!((v.units[0].owed, v.units[0].got, v.acked), (3, 3, 3));
}

#[test]
fn a_loss_is_found_and_named() {
    let v = check(&three(), &[sub("s", "a.*", 0, &[(1, 1, 12), (1, 3, 32)])]);
    assert_eq!(v.missing, 1);
    assert_eq!(v.units[0].missing_examples, vec![id(1, 2)]);
}

#[test]
fn a_duplicate_and_a_reorder_are_counted() {
    let v = check(
        &three(),
        &[sub(
            "s",
            "a.x",
            0,
            &[(1, 1, 12), (1, 3, 32), (1, 2, 33), (1, 3, 34)],
        )],
    );
    assert_eq!((v.missing, v.duplicates, v.out_of_order), (0, 1, 1));
}

#[test]
fn a_subscription_that_was_not_live_is_owed_nothing_it_missed() {
    // Subscribed after the first publish was sent; ended before the third was acked.
    let mut s = sub("s", "a.x", 15, &[(1, 2, 22)]);
    s.ended_ms = Some(25);
    let v = check(&three(), &[s]);
    assert_eq!((v.units[0].owed, v.missing), (1, 0));
    // An event never acknowledged is owed to nobody.
    let mut publishes = three();
    publishes[1].acked_ms = None;
    let v = check(&publishes, &[sub("t", "a.x", 0, &[(1, 1, 12), (1, 3, 32)])]);
    assert_eq!((v.missing, v.unacked), (0, 1));
}

#[test]
fn filters_and_groups_decide_what_is_owed() {
    let mut filtered = sub("f", "a.>", 0, &[(1, 1, 12)]);
    filtered.k_in = Some(vec![1]);
    let mut g1 = sub("g1", "a.x", 0, &[(1, 1, 12), (1, 3, 32)]);
    let mut g2 = sub("g2", "a.x", 0, &[(1, 2, 22)]);
    g1.unit = "g".into();
    g2.unit = "g".into();
    let v = check(&three(), &[filtered, g1, g2]);
    let f = v.units.iter().find(|u| u.unit == "f").unwrap();
    assert_eq!((f.owed, f.missing), (1, 0));
    let g = v.units.iter().find(|u| u.unit == "g").unwrap();
    assert_eq!((g.owed, g.got, g.duplicates), (3, 3, 0));
    // A delivery the filter does not allow is spurious.
    let mut wrong = sub("w", "a.x", 0, &[(1, 2, 22)]);
    wrong.k_in = Some(vec![1]);
    assert_eq!(check(&three(), &[wrong]).spurious, 1);
}

#[test]
fn timeline_and_gaps() {
    let s = sub("s", "a.x", 0, &[(1, 1, 100), (1, 2, 150), (1, 3, 900)]);
    assert_eq!(timeline(std::slice::from_ref(&s), 500, 999), vec![2, 1]);
    // A fault at 200: nothing from 150 until 900.
    assert_eq!(gap_around(std::slice::from_ref(&s), 200, 1000), 750);
    // Nothing at all after the fault: the gap runs to the window's end.
    assert_eq!(gap_around(std::slice::from_ref(&s), 1000, 500), 600);
}

#[test]
fn a_delivery_of_an_event_whose_publish_failed_is_unknown_not_spurious() {
    let v = check(
        &three(),
        &[sub(
            "s",
            "a.x",
            0,
            &[(1, 1, 12), (1, 2, 22), (1, 3, 32), (2, 9, 40)],
        )],
    );
    assert_eq!((v.unknown, v.spurious, v.missing), (1, 0, 0));
}

#[test]
fn a_pause_of_one_topic_at_one_unit_is_found_in_its_window_only() {
    // Topics a.x and a.y, one event each every 10 ms from 0 to 990 ms; subscription "x"
    // takes a.x, "all" takes a.* — except that a.y reaches "all" nothing from 400 to 700 ms.
    let mut publishes = Vec::new();
    let (mut x, mut all) = (Vec::new(), Vec::new());
    for i in 0..100u64 {
        let t = i * 10;
        publishes.push(publish(1, 2 * i, "a.x", t, Some(t)));
        publishes.push(publish(1, 2 * i + 1, "a.y", t, Some(t)));
        x.push((1, 2 * i, t + 1));
        all.push((1, 2 * i, t + 1));
        if !(400..700).contains(&t) {
            all.push((1, 2 * i + 1, t + 2));
        }
    }
    let mut filtered = sub("f", "a.*", 0, &[(1, 1, 2), (1, 199, 992)]);
    filtered.k_in = Some(vec![1]);
    let subs = [sub("x", "a.x", 0, &x), sub("all", "a.*", 0, &all), filtered];
    let p = topic_pauses(&publishes, &subs, &[(100, 300), (450, 500), (800, 900)], 10);
    // (all, a.x), (all, a.y), (x, a.x); the filtered one is left out.
    assert_eq!(p[0], vec![10, 10, 10]);
    assert_eq!(p[1], vec![10, 310, 10], "the a.y pause at 'all', whole");
    assert_eq!(p[2], vec![10, 10, 10]);
    let s = Spread::of(p.into_iter().flatten()).unwrap();
    assert_eq!((s.n, s.p50, s.max), (9, 10, 310));
    assert_eq!(Spread::of([]), None);
    assert_eq!(Spread::of(1..=100).unwrap().p99, 99);
}
