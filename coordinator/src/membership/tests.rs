//! Membership and transitions stepped through virtual time.

use super::*;

fn member(id: &str, weight: u32) -> RingMember {
    RingMember {
        id: id.into(),
        addr: format!("127.0.0.1:{}", 7400 + weight),
        weight,
    }
}

fn fresh(dead_after_ms: u64) -> Membership {
    let config = TransitionConfig {
        recovery_ms: 0,
        ..TransitionConfig::new(dead_after_ms)
    };
    Membership::new(config, 0, 0)
}

fn ids(r: &Ring) -> Vec<String> {
    r.members.iter().map(|m| m.id.clone()).collect()
}

fn active(m: &Membership) -> Vec<String> {
    ids(&m.ring())
}

fn pending(m: &Membership) -> Option<Vec<String>> {
    m.pending().map(ids)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn the_first_ring_is_active_at_once_and_a_join_waits_for_confirmations() {
    let mut m = fresh(2500);
    m.register(0, member("a", 1), None, false).unwrap();
    // Nobody holds anything yet: active at once.
    assert_eq!((active(&m), m.version()), (s(&["a"]), 1));
    assert!(m.pending().is_none());
    m.register(10, member("b", 1), None, false).unwrap();
    // b joins: announced, a must hand over first.
    assert_eq!(active(&m), s(&["a"]));
    assert_eq!(pending(&m), Some(s(&["a", "b"])));
    assert_eq!(m.waiting(), s(&["a"]));
    let v = m.pending().unwrap().version;
    assert_eq!(v, 2);
    // A confirmation for another version is stale.
    m.confirm(20, "a", 1);
    assert!(m.pending().is_some());
    m.confirm(30, "a", v);
    assert_eq!((active(&m), m.version()), (s(&["a", "b"]), 2));
    assert!(m.pending().is_none());
    let changes = m.drain_changes();
    assert!(
        changes.contains(&Change::Activated { version: 2 }),
        "{changes:?}"
    );
}

#[test]
fn a_drain_is_a_transition_the_draining_matcher_confirms() {
    let mut m = fresh(2500);
    for (t, id) in [(0, "a"), (1, "b"), (2, "c")] {
        m.register(t, member(id, 1), None, false).unwrap();
        if let Some(p) = m.pending().cloned() {
            for w in m.waiting() {
                m.confirm(t, &w, p.version);
            }
        }
    }
    assert_eq!(active(&m), s(&["a", "b", "c"]));
    let v = m.version();
    assert_eq!(m.drain(100, "b"), Ok(true));
    assert_eq!(m.drain(100, "b"), Ok(false));
    assert_eq!(pending(&m), Some(s(&["a", "c"])));
    // b is still in the active ring until its handoff is confirmed: it cannot be removed.
    assert_eq!(
        m.remove(110, "b"),
        Err(MembershipError::NotDrained("b".into()))
    );
    let waiting = m.waiting();
    assert_eq!(waiting, s(&["a", "b", "c"]));
    for w in waiting {
        m.confirm(120, &w, v + 1);
    }
    assert_eq!((active(&m), m.version()), (s(&["a", "c"]), v + 1));
    assert_eq!(m.remove(130, "b"), Ok(()));
    assert_eq!(
        m.heartbeat(140, "b"),
        Err(MembershipError::Removed("b".into()))
    );
}

#[test]
fn a_missing_confirmation_aborts_and_the_transition_is_tried_again() {
    let mut m = fresh(100_000);
    m.register(0, member("a", 1), None, false).unwrap();
    m.register(0, member("b", 1), None, false).unwrap();
    let first = m.pending().unwrap().version;
    assert_eq!(m.next_deadline(), Some(10_000), "the handoff timeout");
    m.tick(9_999);
    assert!(m.pending().is_some());
    m.tick(10_000);
    assert!(m.pending().is_none(), "aborted");
    assert_eq!(active(&m), s(&["a"]), "the active ring stays");
    assert!(matches!(
        m.drain_changes().last(),
        Some(Change::Aborted { version, .. }) if *version == first
    ));
    // Retried after the pause, under a new version; a late confirmation of the old one
    // changes nothing.
    m.confirm(10_500, "a", first);
    assert!(m.pending().is_none());
    m.tick(11_000);
    let second = m.pending().unwrap().version;
    assert!(second > first);
    m.confirm(11_100, "a", second);
    assert_eq!((active(&m), m.version()), (s(&["a", "b"]), second));
}

#[test]
fn a_death_during_a_handoff_aborts_and_starts_over_without_the_dead() {
    let mut m = fresh(1000);
    m.register(0, member("a", 1), None, false).unwrap();
    m.register(0, member("b", 1), None, false).unwrap();
    m.confirm(0, "a", m.pending().unwrap().version);
    assert_eq!(active(&m), s(&["a", "b"]));
    // c joins; while a and b hand over, b dies.
    m.register(500, member("c", 1), None, false).unwrap();
    let v = m.pending().unwrap().version;
    m.heartbeat(900, "a").unwrap();
    m.heartbeat(900, "c").unwrap();
    m.confirm(900, "a", v);
    m.tick(1000); // b silent since 0
    let changes = m.drain_changes();
    assert!(
        changes.contains(&Change::Died { node: "b".into() }),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Aborted { version, .. } if *version == v)),
        "{changes:?}"
    );
    // The next ring is announced at once, without b; a (alive) must confirm again.
    let p = m.pending().unwrap().clone();
    assert_eq!(ids(&p), s(&["a", "c"]));
    assert!(p.version > v);
    assert_eq!(m.waiting(), s(&["a"]));
    m.confirm(1000, "a", p.version);
    assert_eq!(active(&m), s(&["a", "c"]));
}

#[test]
fn when_every_holder_is_dead_the_next_ring_is_active_at_once() {
    let mut m = fresh(1000);
    m.register(0, member("a", 1), None, false).unwrap();
    m.register(900, member("b", 1), None, false).unwrap();
    assert_eq!(m.waiting(), s(&["a"]));
    m.heartbeat(950, "b").unwrap();
    // a dies before confirming: nobody is left to hand anything over.
    m.tick(1000);
    assert_eq!(active(&m), s(&["b"]));
    assert!(m.pending().is_none());
}

#[test]
fn a_restarted_coordinator_adopts_the_ring_its_matchers_serve_with() {
    let config = TransitionConfig::new(2500);
    let mut m = Membership::new(config, 5_000, 0);
    let old = Ring {
        version: 42,
        members: vec![member("a", 1), member("b", 1)],
        replicas: 1,
    };
    let older = Ring {
        version: 40,
        members: vec![member("a", 1)],
        replicas: 1,
    };
    m.register(10, member("b", 1), Some(&older), false).unwrap();
    assert_eq!(active(&m), s(&["a"]));
    m.register(20, member("a", 1), Some(&old), false).unwrap();
    // The newest report wins, under a version above everything seen; a and b are both back,
    // so recovery ends and nothing needs to move.
    assert_eq!(active(&m), s(&["a", "b"]));
    assert!(m.version() > 5_000);
    assert!(m.pending().is_none());
    m.register(30, member("c", 1), Some(&older), false).unwrap();
    assert_eq!(pending(&m), Some(s(&["a", "b", "c"])), "c joins as usual");
}

#[test]
fn recovery_waits_for_the_adopted_members_then_moves_on_without_the_missing() {
    let mut m = Membership::new(TransitionConfig::new(2500), 0, 0);
    let old = Ring {
        version: 7,
        members: vec![member("a", 1), member("b", 1)],
        replicas: 1,
    };
    m.register(100, member("a", 1), Some(&old), false).unwrap();
    assert_eq!(active(&m), s(&["a", "b"]));
    assert!(m.pending().is_none(), "b may still report");
    m.heartbeat(2000, "a").unwrap();
    m.tick(2500);
    // b never came back: the ring moves on without it (a must hand over b's replicas).
    assert_eq!(pending(&m), Some(s(&["a"])));
}

#[test]
fn draining_matchers_register_as_draining() {
    let mut m = fresh(2500);
    m.register(0, member("a", 1), None, false).unwrap();
    m.register(0, member("b", 1), None, true).unwrap();
    assert!(m.pending().is_none(), "b stays out of the ring");
    assert_eq!(active(&m), s(&["a"]));
    assert_eq!(m.status(0)[1].state, NodeState::Draining);
}

#[test]
fn heartbeats_keep_a_member_alive() {
    let mut m = fresh(1000);
    m.register(0, member("a", 1), None, false).unwrap();
    for t in (500..10_000).step_by(500) {
        m.heartbeat(t, "a").unwrap();
        m.tick(t);
    }
    assert_eq!(m.version(), 1);
    assert_eq!(active(&m), s(&["a"]));
}

#[test]
fn bad_members_are_refused() {
    let mut m = fresh(1000);
    assert!(m.register(0, member("", 1), None, false).is_err());
    assert!(m.register(0, member("a", 0), None, false).is_err());
    assert!(m
        .register(0, member("a", WEIGHT_MAX + 1), None, false)
        .is_err());
    for addr in [
        String::new(),
        "host".into(),
        ":7401".into(),
        "host:".into(),
        "host:99999".into(),
        format!("{}:1", "h".repeat(NODE_ADDR_BYTES_MAX)),
    ] {
        let bad = RingMember {
            id: "a".into(),
            addr: addr.clone(),
            weight: 1,
        };
        assert!(
            matches!(
                m.register(0, bad, None, false),
                Err(MembershipError::Invalid(_))
            ),
            "{addr:?}"
        );
    }
    let ok = RingMember {
        id: "a".into(),
        addr: "[::1]:7401".into(),
        weight: 1,
    };
    assert_eq!(m.register(0, ok, None, false), Ok(false));
    assert_eq!(m.version(), 1);
}

#[test]
fn the_table_is_bounded() {
    let mut m = fresh(1000);
    for i in 0..MEMBERS_MAX {
        m.register(0, member(&format!("m{i}"), 1), None, false)
            .unwrap();
    }
    assert_eq!(
        m.register(0, member("one-more", 1), None, false),
        Err(MembershipError::Full)
    );
    assert_eq!(
        m.register(0, member("m0", 1), None, false),
        Ok(true),
        "a member re-registering is let in (as a restart: it is in the ring)"
    );
}

#[test]
fn versions_start_where_the_coordinator_says() {
    let config = TransitionConfig {
        recovery_ms: 0,
        ..TransitionConfig::new(1000)
    };
    let mut m = Membership::new(config, 1_700_000_000_000, 0);
    m.register(0, member("a", 1), None, false).unwrap();
    assert_eq!(m.ring().version, 1_700_000_000_001);
}

#[test]
fn removal_of_a_dead_or_drained_matcher_and_restart() {
    let mut m = fresh(1000);
    m.register(0, member("a", 1), None, false).unwrap();
    m.register(0, member("b", 1), None, false).unwrap();
    m.confirm(0, "a", m.pending().unwrap().version);
    assert_eq!(
        m.remove(10, "a"),
        Err(MembershipError::NotDrained("a".into()))
    );
    m.drain(10, "a").unwrap();
    let v = m.pending().unwrap().version;
    m.confirm(20, "a", v);
    m.confirm(20, "b", v);
    assert_eq!(m.remove(20, "a"), Ok(()));
    assert_eq!(m.status(20).len(), 1);
    assert_eq!(
        m.heartbeat(30, "a"),
        Err(MembershipError::Removed("a".into()))
    );
    m.heartbeat(500, "b").unwrap();
    m.heartbeat(1000, "b").unwrap();
    m.tick(1020);
    assert_eq!(
        m.heartbeat(1020, "a"),
        Err(MembershipError::UnknownNode("a".into()))
    );
    // A restart lifts a removal at once.
    m.register(1100, member("a", 1), None, false).unwrap();
    assert_eq!(m.heartbeat(1110, "a"), Ok(()));
}

#[test]
fn replicas_are_clamped_and_carried_in_every_ring() {
    let config = TransitionConfig {
        recovery_ms: 0,
        replicas: 99,
        ..TransitionConfig::new(1000)
    };
    let mut m = Membership::new(config, 0, 0);
    m.register(0, member("a", 1), None, false).unwrap();
    assert_eq!(m.ring().replicas, REPLICAS_MAX);
}

#[test]
fn a_matcher_restarted_inside_dead_after_leaves_the_ring_and_joins_again() {
    let mut m = fresh(2500);
    m.register(0, member("a", 1), None, false).unwrap();
    m.register(10, member("b", 1), None, false).unwrap();
    let v = m.pending().unwrap().version;
    m.confirm(20, "a", v);
    assert_eq!(active(&m), s(&["a", "b"]));
    // b reconnects with the ring it serves: nothing changes.
    let ring = m.ring().clone();
    assert_eq!(
        m.register(30, member("b", 1), Some(&ring), false),
        Ok(false)
    );
    assert!(m.pending().is_none());
    // b starts again (no ring of its own) before anyone thought it dead: it lost what it
    // held, so it leaves the ring first (a and b confirm), then joins through a handoff.
    assert_eq!(
        m.register(40, member("b", 1), None, false),
        Ok(true),
        "b is told it restarted inside the ring"
    );
    assert_eq!(pending(&m), Some(s(&["a"])));
    let v = m.pending().unwrap().version;
    m.confirm(50, "a", v);
    m.confirm(50, "b", v);
    assert_eq!(active(&m), s(&["a"]));
    assert_eq!(pending(&m), Some(s(&["a", "b"])));
    assert_eq!(m.waiting(), s(&["a"]));
    let v = m.pending().unwrap().version;
    m.confirm(60, "a", v);
    assert_eq!(active(&m), s(&["a", "b"]));
}

#[test]
fn a_drain_never_empties_the_ring() {
    let mut m = fresh(1000);
    m.register(0, member("a", 1), None, false).unwrap();
    m.register(0, member("b", 1), None, false).unwrap();
    let v = m.pending().map(|p| p.version);
    if let Some(v) = v {
        m.confirm(1, "a", v);
    }
    assert_eq!(active(&m), s(&["a", "b"]));
    m.drain(10, "a").unwrap();
    let v = m.pending().unwrap().version;
    m.confirm(11, "a", v);
    m.confirm(11, "b", v);
    assert_eq!(active(&m), s(&["b"]));
    // The last one drains: nowhere for its topics to go, so it stays (its drain waits).
    m.drain(20, "b").unwrap();
    assert!(m.pending().is_none());
    assert_eq!(active(&m), s(&["b"]));
    // A replacement joins: b hands over to it and leaves.
    m.register(30, member("c", 1), None, false).unwrap();
    assert_eq!(pending(&m), Some(s(&["c"])));
    let v = m.pending().unwrap().version;
    m.confirm(31, "b", v);
    assert_eq!(active(&m), s(&["c"]));
}
