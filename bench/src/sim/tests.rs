use super::*;

fn config(nodes: usize, strategy: &str, topology: &str) -> SimConfig {
    let mut c = SimConfig::new(
        nodes,
        strategy.parse().expect("strategy"),
        topology.parse().expect("topology"),
    );
    c.trials = 4;
    c
}

fn without_wall(mut r: SimReport) -> SimReport {
    r.wall_ms = 0;
    r
}

#[test]
fn the_same_seed_gives_the_same_numbers_on_any_number_of_threads() {
    for strategy in [
        "rumor:2",
        "bcrm:2,2",
        "anti-entropy:push-pull",
        "rumor:1+anti-entropy",
    ] {
        let mut a = config(500, strategy, "random-regular:6");
        a.threads = 1;
        let mut b = a.clone();
        b.threads = 3;
        let ra = without_wall(simulate(&a).expect("sim"));
        assert_eq!(ra, without_wall(simulate(&b).expect("sim")), "{strategy}");
        let mut c = a.clone();
        c.seed = 99;
        assert_ne!(
            ra,
            without_wall(simulate(&c).expect("sim")),
            "{strategy} ignores the seed"
        );
    }
}

#[test]
fn topologies_have_the_asked_shape() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let g = Topology::RandomRegular(8)
        .build(2000, &mut rng)
        .expect("graph")
        .expect("materialised");
    assert!((g.mean_degree() - 8.0).abs() < 0.1, "{}", g.mean_degree());
    for i in 0..g.len() {
        let n = g.neighbours(i);
        assert!(!n.contains(&(i as NodeId)), "no self-loop");
        assert!(n.windows(2).all(|w| w[0] < w[1]), "no repeated edge");
    }
    let g = Topology::ErdosRenyi(0.005)
        .build(2000, &mut rng)
        .expect("graph")
        .expect("materialised");
    let expected = 0.005 * 1999.0;
    assert!(
        (g.mean_degree() - expected).abs() < 0.5,
        "{} vs {expected}",
        g.mean_degree()
    );
    assert!(Topology::Complete
        .build(10, &mut rng)
        .expect("complete")
        .is_none());
    assert_eq!(
        "random-regular:8".parse::<Topology>(),
        Ok(Topology::RandomRegular(8))
    );
    assert!("ring".parse::<Topology>().is_err());
    assert!(matches!(
        Topology::RandomRegular(10).check(10),
        Err(TopologyError::Degree(10))
    ));
    assert!(matches!(
        Topology::ErdosRenyi(0.0).check(10),
        Err(TopologyError::Probability(_))
    ));
}

#[test]
fn bad_configs_are_typed_errors() {
    let mut c = config(1, "flood", "complete");
    assert!(matches!(simulate(&c), Err(SimError::Nodes(1))));
    c.nodes = 10;
    c.loss = 1.0;
    assert!(matches!(
        simulate(&c),
        Err(SimError::Probability { what: "loss", .. })
    ));
    c.loss = 0.0;
    c.trials = 0;
    assert!(matches!(simulate(&c), Err(SimError::Trials)));
    c.trials = 1;
    c.churn = 0.1;
    c.clock = Clock::Continuous {
        period_us: 1000,
        latency_us: 10,
        poisson: false,
    };
    assert!(matches!(simulate(&c), Err(SimError::ChurnInContinuousTime)));
}

#[test]
fn flooding_a_connected_graph_reaches_everyone_in_about_its_diameter() {
    let r = simulate(&config(2000, "flood", "random-regular:6")).expect("sim");
    assert_eq!(r.residue, 0.0);
    assert_eq!(r.complete_trials, 1.0);
    // Every node relays to its other 5 neighbours once (the origin to all 6).
    assert!(
        (r.messages_per_node - 5.0).abs() < 0.05,
        "{}",
        r.messages_per_node
    );
    assert!(r.t_last >= 4.0 && r.t_last <= 9.0, "{}", r.t_last);
}

#[test]
fn loss_and_churn_cost_coverage_or_time() {
    let clean = simulate(&config(1000, "rumor:2", "complete")).expect("sim");
    let mut lossy = config(1000, "rumor:2", "complete");
    lossy.loss = 0.3;
    let lossy = simulate(&lossy).expect("sim");
    assert!(lossy.lost > 0.0);
    assert!(
        lossy.t_last > clean.t_last,
        "{} vs {}",
        lossy.t_last,
        clean.t_last
    );
    let mut churn = config(1000, "anti-entropy:push-pull", "complete");
    churn.churn = 0.2;
    let churned = simulate(&churn).expect("sim");
    let calm = simulate(&config(1000, "anti-entropy:push-pull", "complete")).expect("sim");
    assert_eq!(churned.residue, 0.0, "anti-entropy still reaches everyone");
    assert!(churned.rounds_mean > calm.rounds_mean);
}

#[test]
fn continuous_time_reports_milliseconds_and_periods() {
    let mut c = config(1000, "anti-entropy:push-pull", "complete");
    c.clock = Clock::Continuous {
        period_us: 100_000,
        latency_us: 5_000,
        poisson: false,
    };
    let r = simulate(&c).expect("sim");
    assert_eq!(r.time_unit, "ms");
    assert_eq!(r.residue, 0.0);
    // About as many periods as rounds (a bit more: exchanges are spread over the period and
    // take 2–3 latencies), and t_last in ms is periods × 100.
    assert!(
        r.rounds_mean > 5.0 && r.rounds_mean < 20.0,
        "{}",
        r.rounds_mean
    );
    assert!(
        (r.t_last - r.rounds_mean * 100.0).abs() < 1.0,
        "{} vs {}",
        r.t_last,
        r.rounds_mean
    );
}

#[test]
fn ten_thousand_nodes_run_for_every_strategy() {
    for strategy in [
        "flood",
        "bcrm:2,2",
        "rumor:2",
        "rumor-blind-coin:2",
        "anti-entropy:pull",
        "rumor:2+anti-entropy",
    ] {
        let mut c = config(10_000, strategy, "random-regular:8");
        c.trials = 1;
        let r = simulate(&c).expect("sim");
        assert!(r.coverage > 0.5, "{strategy}: {}", r.coverage);
        assert!(r.messages > 0.0);
        assert!(r.bytes > r.messages, "{strategy}: bytes are counted");
    }
}
