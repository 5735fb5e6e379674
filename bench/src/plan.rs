//! Scenarios and their plans: which subscriptions each connection holds, which topics the
//! publishers cycle through, and how many notifications each event should produce. Pure, so
//! the expected counts are checked against Sift's own pattern and filter semantics.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use crate::stamp::STAMP_LEN;
use crate::target::{SubSpec, TargetKind};

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// P publishers, S subscribers, T topics; every subscriber takes every topic; max rate.
    Fanin,
    /// One topic, S subscribers (one connection each); max rate.
    Fanout,
    /// A fixed offered rate; latency percentiles.
    Latency,
    /// S pattern subscriptions (`p<i>.*`), each event matching one; publish throughput.
    Patterns,
    /// S subscribers of one topic with 1%-selective filters (`k == n`); peers filter on the
    /// subscriber side.
    Filters,
    /// A Sift cluster of N matcher processes under the fan-in load.
    Scale,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 6] = [
        Scenario::Fanin,
        Scenario::Fanout,
        Scenario::Latency,
        Scenario::Patterns,
        Scenario::Filters,
        Scenario::Scale,
    ];

    /// Its name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::Patterns => "patterns",
            Scenario::Filters => "filters",
            Scenario::Scale => "scale",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Scenario::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                anyhow!(
                    "unknown scenario {s:?}: fanin, fanout, latency, patterns, filters or scale"
                )
            })
    }
}

/// Filter keys run over `0..FILTER_KEYS`; a subscriber's filter `k == n` picks one of them,
/// so each filter selects 1% of events.
pub const FILTER_KEYS: i64 = 100;

/// A run's parameters, with each scenario's defaults filled in by [`Params::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// The scenario.
    pub scenario: Scenario,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscribers (subscriptions).
    pub subscribers: usize,
    /// Topics published to.
    pub topics: usize,
    /// Subscriber connections the subscriptions are spread over.
    pub connections: usize,
    /// Payload bytes per event (at least the 32-byte stamp).
    pub payload: usize,
    /// Offered events per second over all publishers; `None` for a closed loop at max rate.
    pub rate: Option<f64>,
    /// How long publishers publish.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Closed loop: most notifications in flight.
    pub in_flight: u64,
    /// Scale: matcher counts to step through.
    pub matchers: Vec<usize>,
    /// At-least-once delivery: Sift's acked publishes and acknowledged subscriptions, MQTT
    /// QoS 1. NATS core and Redis pub/sub have no such mode.
    #[serde(default)]
    pub at_least_once: bool,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v.max(0.0)).map_err(serde::de::Error::custom)
    }
}

impl Params {
    /// The scenario's defaults: fanin 4/4/16, fanout 1/100, latency at 10,000/s, patterns
    /// 1,000, filters 10,000 over 100 connections, scale 1 → 2 → 4 matchers; 128-byte
    /// payloads, 10 s, 10,000 copies in flight (100,000 for filters).
    pub fn new(scenario: Scenario) -> Params {
        let (publishers, subscribers, topics, connections, rate) = match scenario {
            Scenario::Fanin => (4, 4, 16, 4, None),
            Scenario::Fanout => (1, 100, 1, 100, None),
            Scenario::Latency => (1, 1, 1, 1, Some(10_000.0)),
            Scenario::Patterns => (1, 1_000, 1_000, 100, None),
            Scenario::Filters => (1, 10_000, 1, 100, None),
            Scenario::Scale => (4, 4, 64, 4, None),
        };
        Params {
            scenario,
            publishers,
            subscribers,
            topics,
            connections,
            payload: 128,
            rate,
            duration: Duration::from_secs(10),
            // Filters: peers' subscribers each get every message (10,000 copies an event),
            // so the window holds ten events for them.
            in_flight: if scenario == Scenario::Filters {
                100_000
            } else {
                10_000
            },
            matchers: if scenario == Scenario::Scale {
                vec![1, 2, 4]
            } else {
                vec![]
            },
            at_least_once: false,
        }
    }

    /// Whether this run applies to `target` at all: the scale scenario is Sift's, and NATS
    /// core and Redis pub/sub have no at-least-once mode.
    pub fn runs_on(&self, target: TargetKind) -> bool {
        (self.scenario != Scenario::Scale || target == TargetKind::Sift)
            && (!self.at_least_once || matches!(target, TargetKind::Sift | TargetKind::Mqtt))
    }

    /// Checks the parameters make sense for `target`.
    pub fn validate(&self, target: TargetKind) -> Result<()> {
        if self.payload < STAMP_LEN {
            bail!("--payload must be at least {STAMP_LEN} bytes (the timing stamp)");
        }
        if self.publishers == 0 || self.subscribers == 0 || self.topics == 0 {
            bail!("--publishers, --subscribers and --topics must be at least 1");
        }
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than zero");
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                bail!("--rate must be a positive number of events per second");
            }
        }
        if self.scenario == Scenario::Scale {
            if target != TargetKind::Sift {
                bail!("the scale scenario runs Sift clusters only");
            }
            if self.matchers.is_empty() || self.matchers.contains(&0) {
                bail!("--matchers must list matcher counts of at least 1");
            }
        }
        if self.at_least_once && !matches!(target, TargetKind::Sift | TargetKind::Mqtt) {
            bail!("{target} has no at-least-once delivery: compare at-least-once Sift with MQTT QoS 1");
        }
        Ok(())
    }
}

/// What a run does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The subscriptions of each subscriber connection.
    pub connections: Vec<Vec<SubSpec>>,
    /// Topics publishers cycle through (event `seq` goes to `topics[seq % len]`).
    pub topics: Vec<String>,
    /// Whether events carry the `k` attribute (a filter scenario).
    pub attrs: bool,
    expected: Expected,
}

#[derive(Debug, Clone, PartialEq)]
enum Expected {
    /// Every event reaches this many subscriptions.
    Each(u64),
    /// Indexed by the event's `k`.
    ByKey(Vec<u64>),
}

impl Plan {
    /// The plan for `params` with topics under the prefix `b<nonce>`.
    pub fn new(params: &Params, nonce: u64) -> Plan {
        let root = format!("b{nonce:x}");
        let s = params.subscribers;
        let spread = |specs: Vec<SubSpec>, conns: usize| -> Vec<Vec<SubSpec>> {
            let conns = conns.clamp(1, specs.len().max(1));
            let mut out = vec![Vec::new(); conns];
            for (i, spec) in specs.into_iter().enumerate() {
                out[i % conns].push(spec);
            }
            out
        };
        let topic = |j: usize| format!("{root}.t{j}");
        match params.scenario {
            Scenario::Fanin | Scenario::Scale | Scenario::Fanout | Scenario::Latency => {
                let topics: Vec<String> = (0..params.topics).map(topic).collect();
                // Every subscriber takes every topic, on its own connection (or shared ones).
                let per_subscriber: Vec<Vec<SubSpec>> = (0..s)
                    .map(|_| {
                        topics
                            .iter()
                            .map(|t| SubSpec {
                                subject: t.clone(),
                                filter: None,
                            })
                            .collect()
                    })
                    .collect();
                let conns = params.connections.clamp(1, s);
                let mut connections = vec![Vec::new(); conns];
                for (i, subs) in per_subscriber.into_iter().enumerate() {
                    connections[i % conns].extend(subs);
                }
                Plan {
                    connections,
                    topics,
                    attrs: false,
                    expected: Expected::Each(s as u64),
                }
            }
            Scenario::Patterns => {
                let specs = (0..s)
                    .map(|i| SubSpec {
                        subject: format!("{root}.p{i}.*"),
                        filter: None,
                    })
                    .collect();
                // One topic under each pattern (cycled if there are more topics than
                // patterns), so each event matches exactly one subscription.
                let topics = (0..params.topics)
                    .map(|j| format!("{root}.p{}.t", j % s))
                    .collect();
                Plan {
                    connections: spread(specs, params.connections),
                    topics,
                    attrs: false,
                    expected: Expected::Each(1),
                }
            }
            Scenario::Filters => {
                let t = topic(0);
                // Subscriber i sits on connection i % conns; its key is chosen so each
                // connection holds a mix of keys (an event wanted on one connection is
                // wanted on many), as independent subscribers would.
                let conns = params.connections.clamp(1, s.max(1));
                let key = |i: usize| ((i / conns) as i64 + i as i64) % FILTER_KEYS;
                let specs = (0..s)
                    .map(|i| SubSpec {
                        subject: t.clone(),
                        filter: Some(format!("k == {}", key(i))),
                    })
                    .collect();
                let mut by_key = vec![0u64; FILTER_KEYS as usize];
                for i in 0..s {
                    by_key[key(i) as usize] += 1;
                }
                Plan {
                    connections: spread(specs, params.connections),
                    topics: vec![t],
                    attrs: true,
                    expected: Expected::ByKey(by_key),
                }
            }
        }
    }

    /// The `k` of event `seq`: keys cycle, so each is equally frequent.
    pub fn key(seq: u64) -> i64 {
        (seq % FILTER_KEYS as u64) as i64
    }

    /// Notifications event `seq` should produce.
    pub fn expected(&self, seq: u64) -> u64 {
        match &self.expected {
            Expected::Each(n) => *n,
            Expected::ByKey(v) => v[Plan::key(seq) as usize],
        }
    }

    /// Copies of event `seq` that reach subscribers: the expected notifications when the
    /// target filters on the server, every subscriber of the topic when subscribers filter
    /// on their side (peers in the filters scenario). The closed-loop window counts these.
    pub fn copies(&self, seq: u64, server_side_filters: bool) -> u64 {
        match &self.expected {
            Expected::ByKey(v) if !server_side_filters => v.iter().sum(),
            _ => self.expected(seq),
        }
    }

    /// The topic of event `seq`.
    pub fn topic(&self, seq: u64) -> &str {
        &self.topics[(seq % self.topics.len() as u64) as usize]
    }

    /// Subscriptions over all connections.
    pub fn subscriptions(&self) -> usize {
        self.connections.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sift_protocol::{Attributes, Filter, Pattern, Topic, Value};

    /// Counts, by Sift's semantics, the subscriptions that event `seq` matches.
    fn matching(plan: &Plan, seq: u64) -> u64 {
        let topic = Topic::parse(plan.topic(seq)).unwrap();
        let mut attrs = Attributes::new();
        attrs.insert("k".into(), Value::Int(Plan::key(seq)));
        plan.connections
            .iter()
            .flatten()
            .filter(|s| {
                let on_topic = match Pattern::parse(&s.subject) {
                    Ok(p) => p.matches(&topic),
                    Err(_) => s.subject == topic.as_str(),
                };
                on_topic
                    && s.filter
                        .as_ref()
                        .is_none_or(|f| Filter::parse(f).unwrap().matches(&attrs))
            })
            .count() as u64
    }

    #[test]
    fn expected_counts_agree_with_sift_semantics_for_every_scenario() {
        for scenario in Scenario::ALL {
            let mut p = Params::new(scenario);
            if scenario == Scenario::Filters {
                p.subscribers = 1_000;
            }
            let plan = Plan::new(&p, 0xabc);
            for seq in 0..250 {
                assert_eq!(
                    plan.expected(seq),
                    matching(&plan, seq),
                    "{scenario} seq {seq}"
                );
            }
        }
    }

    #[test]
    fn filters_select_one_percent_and_spread_over_connections() {
        let plan = Plan::new(&Params::new(Scenario::Filters), 1);
        assert_eq!(plan.connections.len(), 100);
        assert_eq!(plan.subscriptions(), 10_000);
        assert!(plan.connections.iter().all(|c| c.len() == 100));
        assert_eq!(plan.expected(7), 100);
        assert_eq!(plan.copies(7, true), 100);
        assert_eq!(plan.copies(7, false), 10_000);
        assert!(plan.attrs);
        // Every connection holds every key once: an event is wanted on every connection.
        for c in &plan.connections {
            let mut keys: Vec<&str> = c.iter().filter_map(|s| s.filter.as_deref()).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), 100);
        }
    }

    #[test]
    fn fanout_gives_each_subscriber_its_connection() {
        let plan = Plan::new(&Params::new(Scenario::Fanout), 1);
        assert_eq!(plan.connections.len(), 100);
        assert!(plan.connections.iter().all(|c| c.len() == 1));
        assert_eq!(plan.expected(0), 100);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut p = Params::new(Scenario::Fanin);
        p.payload = 8;
        assert!(p.validate(TargetKind::Sift).is_err());
        assert!(Params::new(Scenario::Scale)
            .validate(TargetKind::Nats)
            .is_err());
        let mut alo = Params::new(Scenario::Fanin);
        alo.at_least_once = true;
        assert!(alo.validate(TargetKind::Mqtt).is_ok());
        assert!(alo.validate(TargetKind::Redis).is_err());
        assert!("nope".parse::<Scenario>().is_err());
    }
}
