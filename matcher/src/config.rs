//! Matcher settings: a documented struct with defaults; every field says its unit.

use std::net::SocketAddr;
use std::time::Duration;

use sift_matcher_core::gossip::Strategy;
use sift_protocol::Limits;

pub use sift_matcher_core::node::SlowConsumer;

/// Matcher settings.
#[derive(Clone, Debug)]
pub struct MatcherConfig {
    /// Stable identity in the ring. Default `"matcher"`.
    pub id: String,
    /// Where to listen (UDP). Default `0.0.0.0:7401`.
    pub listen: SocketAddr,
    /// The address clients should use, as `host:port`; default: the listen address.
    pub advertise: Option<String>,
    /// Relative weight in the ring, 1 ..= 100. Default 1.
    pub weight: u32,
    /// The coordinator (address and TLS server name); `None` runs standalone, owning every
    /// topic.
    pub coordinator: Option<(SocketAddr, String)>,
    /// The token the coordinator requires, if it does.
    pub coordinator_token: Option<String>,
    /// How often to heartbeat the coordinator. Default 500 ms (the coordinator's dead-after
    /// default is 2.5 s).
    pub heartbeat_interval: Duration,
    /// Event and frame limits.
    pub limits: Limits,
    /// Most live subscriptions on this matcher. Default 10,000,000.
    pub subscriptions_max: usize,
    /// Most client connections at once; more are refused. Default 10,000.
    pub connections_max: usize,
    /// Most live subscriptions per client connection. Default 10,000 (also the QUIC stream
    /// limit, one stream per subscription).
    pub subscriptions_per_connection_max: usize,
    /// Notifications queued per subscription before the slow-consumer policy applies.
    /// Default 8,192.
    pub queue_len_max: usize,
    /// Encoded bytes of notifications queued per subscription before the slow-consumer policy
    /// applies (the same limit holds an at-least-once subscription's backlog). Default 16 MiB.
    pub queue_bytes_max: usize,
    /// The slow-consumer policy. Default drop-oldest.
    pub slow_consumer: SlowConsumer,
    /// An at-least-once notification not acked within this is sent again. Default 2 s.
    pub ack_timeout: Duration,
    /// Most unacked notifications per at-least-once subscription; more wait in its queue.
    /// Default 1,024.
    pub redelivery_window: usize,
    /// How long an acknowledged publish's id is remembered to drop repeats. Default 60 s.
    pub dedup_window: Duration,
    /// Most ids remembered for deduplication. Default 1,000,000.
    pub dedup_ids_max: usize,
    /// When set, clients must send this token in `Hello` before anything else.
    pub token: Option<String>,
    /// Gossip mode (no coordinator): set to run as a gossip node. `coordinator` must then be
    /// `None`.
    pub gossip: Option<GossipConfig>,
}

/// Settings of a gossip node (coordinator-free mode).
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Nodes to join through (`host:port` of their QUIC listeners); empty for the first node.
    pub seeds: Vec<SocketAddr>,
    /// How subscription updates spread. Default `rumor:2+anti-entropy:push-pull`.
    pub strategy: Strategy,
    /// The dissemination tick (a rumor push, an anti-entropy exchange). Default 100 ms.
    pub period: Duration,
    /// Anti-entropy every this many ticks. Default 1.
    pub anti_entropy_every: u32,
    /// The TLS name peers' certificates are checked against. Default `localhost`.
    pub server_name: String,
    /// The secret gossip nodes present to each other. When set, membership, gossip and
    /// forwarded-event frames are accepted only on connections that presented it (clients
    /// cannot inject subscriptions or events); unset, any connection the node accepts may
    /// send them (and nodes present `token`, if any). Set it in production.
    pub peer_token: Option<String>,
    /// How long a subscription copied from another node outlives the deadline its home node
    /// announced, to absorb gossip delay and clock skew. Default 2 s.
    pub lease_grace: Duration,
    /// SWIM probe period. Default 500 ms.
    pub probe_period: Duration,
}

impl Default for GossipConfig {
    fn default() -> GossipConfig {
        GossipConfig {
            seeds: Vec::new(),
            strategy: Strategy::rumor_anti_entropy(2),
            period: Duration::from_millis(100),
            anti_entropy_every: 1,
            server_name: "localhost".into(),
            peer_token: None,
            lease_grace: Duration::from_secs(2),
            probe_period: Duration::from_millis(500),
        }
    }
}

impl Default for MatcherConfig {
    fn default() -> MatcherConfig {
        MatcherConfig {
            id: "matcher".into(),
            listen: ([0, 0, 0, 0], 7401).into(),
            advertise: None,
            weight: 1,
            coordinator: None,
            coordinator_token: None,
            heartbeat_interval: Duration::from_millis(500),
            limits: Limits::default(),
            subscriptions_max: 10_000_000,
            connections_max: 10_000,
            subscriptions_per_connection_max: 10_000,
            queue_len_max: 8192,
            queue_bytes_max: 16 * 1024 * 1024,
            slow_consumer: SlowConsumer::DropOldest,
            ack_timeout: Duration::from_secs(2),
            redelivery_window: 1024,
            dedup_window: Duration::from_secs(60),
            dedup_ids_max: 1_000_000,
            token: None,
            gossip: None,
        }
    }
}

impl MatcherConfig {
    /// Defaults for a matcher on loopback with an OS-chosen port, for tests.
    pub fn for_test(id: &str) -> MatcherConfig {
        MatcherConfig {
            id: id.into(),
            listen: ([127, 0, 0, 1], 0).into(),
            ..MatcherConfig::default()
        }
    }
}
