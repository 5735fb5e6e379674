//! The published results the gossip design relies on, reproduced by the simulator running the
//! nodes' own state machines (`sift bench sim --reproduce` writes the same as a report).

use sift_bench::sim::reproduce::{
    anti_entropy, bcrm_vs_flood, bimodal, coin, demers, expected_rounds, RESIDUE_TOLERANCE,
};

#[test]
fn demers_table_1_rumor_mongering_with_feedback_and_counter() {
    for row in demers(1, 400).expect("sim") {
        let (residue, traffic, _, t_last) = row.theirs;
        let r = &row.ours;
        let d = (r.residue - residue) / residue;
        assert!(
            d.abs() <= RESIDUE_TOLERANCE,
            "k={}: residue {} vs {residue}",
            row.k,
            r.residue
        );
        assert!(
            (r.traffic - traffic).abs() / traffic <= 0.05,
            "k={}: traffic {} vs {traffic}",
            row.k,
            r.traffic
        );
        assert!(
            (r.t_last - t_last).abs() <= 1.0,
            "k={}: t_last {} vs {t_last}",
            row.k,
            r.t_last
        );
    }
}

#[test]
fn coin_variants_follow_their_closed_forms() {
    for (name, k, ours, closed) in coin(1, 10_000, 6).expect("sim") {
        let d = (ours - closed) / closed;
        assert!(
            d.abs() <= RESIDUE_TOLERANCE,
            "{name} k={k}: {ours} vs {closed}"
        );
    }
}

#[test]
fn anti_entropy_rounds_grow_as_log_n_and_push_pull_is_fastest() {
    let rows = anti_entropy(1, &[(1_000, 30), (10_000, 8)]).expect("sim");
    for n in [1_000, 10_000] {
        let at = |mode: &str| {
            rows.iter()
                .find(|(m, size, _)| *m == mode && *size == n)
                .map(|(_, _, r)| r.rounds_mean)
                .expect("row")
        };
        let (push, pull, push_pull) = (at("push"), at("pull"), at("push-pull"));
        assert!(
            push_pull < pull && pull < push,
            "N={n}: push {push}, pull {pull}, push-pull {push_pull}"
        );
        let expected = expected_rounds("push-pull", n as f64);
        assert!(
            (push_pull - expected).abs() <= 1.0,
            "N={n}: push-pull {push_pull} vs {expected}"
        );
        assert!(
            (push - expected_rounds("push", n as f64)).abs() <= 2.0,
            "N={n}: push {push}"
        );
    }
    for (_, _, r) in &rows {
        assert_eq!(r.residue, 0.0, "anti-entropy reaches everyone");
    }
}

#[test]
fn bcrm_sends_about_half_of_floodings_messages_and_takes_longer() {
    let rows = bcrm_vs_flood(1, 10_000, 3).expect("sim");
    let (flood, bcrm) = &rows[0];
    assert_eq!(flood.topology, "random-regular:8");
    let ratio = bcrm.messages_per_node / flood.messages_per_node;
    assert!((0.45..=0.65).contains(&ratio), "messages ratio {ratio}");
    assert!(
        bcrm.coverage >= 0.9 && bcrm.coverage < 1.0,
        "coverage {}",
        bcrm.coverage
    );
    let slower = bcrm.t_last / flood.t_last;
    assert!((1.5..=3.5).contains(&slower), "rounds ratio {slower}");
}

#[test]
fn a_lossy_rumor_is_bimodal_and_anti_entropy_completes_every_trial() {
    let rows = bimodal(1, 1_000, 100).expect("sim");
    let (alone, h) = &rows[0];
    assert_eq!(h[10], 0, "the lossy rumor alone never reaches everyone");
    let low = h[0];
    let high: usize = h[5..].iter().sum();
    assert!(low > 0 && high > 0, "{h:?}");
    assert!(low + high >= 95, "few trials in between: {h:?}");
    assert!(alone.coverage < 0.9);
    let (repaired, h) = &rows[1];
    assert_eq!(h[10], 100, "every trial complete: {h:?}");
    assert_eq!(repaired.residue, 0.0);
}
