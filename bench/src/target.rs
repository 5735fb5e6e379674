//! The systems a run drives, behind one small interface: connect a publisher, open a
//! subscriber connection with some subscriptions. Sift through its SDK; NATS, Redis pub/sub and
//! MQTT through their own Rust clients (async-nats, redis, rumqttc).
//!
//! Peers have no content filters: a subscription with a filter is emulated on the subscriber
//! side — the subscriber subscribes to the topic, receives its own copy of every message and
//! evaluates its filter on it (with Sift's evaluator), which is what an application on a peer
//! would have to do. Bytes that reached a subscriber whose filter rejected them are counted as
//! wasted.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sift_client::{Client, ClientConfig, Message};
use sift_protocol::{Attributes, Filter, Value};
use tokio::task::JoinHandle;

use crate::collect::Collector;
use crate::stamp::Stamp;

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Sift, through `sift-client`.
    Sift,
    /// NATS core, through async-nats.
    Nats,
    /// Redis pub/sub, through redis-rs.
    Redis,
    /// An MQTT broker (Mosquitto), QoS 0, through rumqttc.
    Mqtt,
}

impl TargetKind {
    /// Every kind, Sift first.
    pub const ALL: [TargetKind; 4] = [
        TargetKind::Sift,
        TargetKind::Nats,
        TargetKind::Redis,
        TargetKind::Mqtt,
    ];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Sift => "sift",
            TargetKind::Nats => "nats",
            TargetKind::Redis => "redis",
            TargetKind::Mqtt => "mqtt",
        }
    }

    /// The server's usual address on loopback.
    pub fn default_addr(self) -> &'static str {
        match self {
            TargetKind::Sift => "127.0.0.1:7400",
            TargetKind::Nats => "127.0.0.1:4222",
            TargetKind::Redis => "127.0.0.1:6379",
            TargetKind::Mqtt => "127.0.0.1:1883",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TargetKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        TargetKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| anyhow!("unknown target {s:?}: sift, nats, redis or mqtt"))
    }
}

/// A system to drive, with where it is.
#[derive(Clone)]
pub enum Target {
    /// A Sift cluster: the SDK configuration (coordinator, CA, token).
    Sift(Box<ClientConfig>),
    /// A Sift gossip cluster (or any set of entry points): connections are spread over the
    /// nodes, publisher `i` on node `i mod n` and subscriber connection `i` on node
    /// `i + 1 mod n`, so events cross nodes.
    SiftNodes(Box<ClientConfig>, Vec<std::net::SocketAddr>),
    /// A NATS server, `host:port`.
    Nats(String),
    /// A Redis server, `host:port`.
    Redis(String),
    /// An MQTT broker, `host:port`.
    Mqtt(String),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Sift(c) => write!(f, "Sift({})", c.coordinator),
            Target::SiftNodes(_, nodes) => write!(f, "Sift({nodes:?})"),
            Target::Nats(a) => write!(f, "Nats({a})"),
            Target::Redis(a) => write!(f, "Redis({a})"),
            Target::Mqtt(a) => write!(f, "Mqtt({a})"),
        }
    }
}

impl Target {
    /// Sift's SDK configuration for connection number `id`.
    fn sift_config(&self, id: usize, subscriber: bool) -> Option<ClientConfig> {
        match self {
            Target::Sift(config) => Some((**config).clone()),
            Target::SiftNodes(config, nodes) if !nodes.is_empty() => {
                let mut config = (**config).clone();
                config.coordinator = nodes[(id + usize::from(subscriber)) % nodes.len()];
                Some(config)
            }
            Target::SiftNodes(config, _) => Some((**config).clone()),
            _ => None,
        }
    }

    /// Waits until `subscriptions` subscriptions are visible from every node: a gossip
    /// cluster's nodes learn other nodes' subscriptions by gossip, after the subscribe
    /// call returned; elsewhere a subscription is in place when its call returns.
    pub async fn settle(&self, subscriptions: usize) -> Result<()> {
        let Target::SiftNodes(config, nodes) = self else {
            return Ok(());
        };
        let want = (subscriptions * nodes.len()) as u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut clients = Vec::new();
        for &addr in nodes {
            let mut c = (**config).clone();
            c.coordinator = addr;
            clients.push(
                Client::connect(c)
                    .await
                    .context("cannot connect to a gossip node")?,
            );
        }
        let result = async {
            loop {
                let mut held = 0;
                for c in &clients {
                    for (k, v) in c.node_stats().await? {
                        if k == "subscriptions" || k == "remote_subscriptions" {
                            held += v;
                        }
                    }
                }
                if held >= want {
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("only {held} of {want} subscription copies after 60 s");
                }
                // Gossip spreads in ticks; ask again shortly.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        .await;
        for c in clients {
            c.close().await;
        }
        result
    }

    /// Which system this is.
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Sift(_) | Target::SiftNodes(..) => TargetKind::Sift,
            Target::Nats(_) => TargetKind::Nats,
            Target::Redis(_) => TargetKind::Redis,
            Target::Mqtt(_) => TargetKind::Mqtt,
        }
    }
}

/// One subscription: a topic or pattern in Sift's syntax, and maybe a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubSpec {
    /// Topic or pattern (`a.b`, `a.*`, `a.>`).
    pub subject: String,
    /// A filter expression over the event's attributes.
    pub filter: Option<String>,
}

/// An MQTT topic or topic filter for a Sift topic or pattern.
pub fn mqtt_topic(subject: &str) -> String {
    subject
        .split('.')
        .map(|t| match t {
            "*" => "+",
            ">" => "#",
            other => other,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A Redis channel pattern for a Sift pattern (`*` and `>` both become `*`), or `None` for a
/// plain topic.
pub fn redis_pattern(subject: &str) -> Option<String> {
    if subject.split('.').any(|t| t == "*" || t == ">") {
        Some(
            subject
                .split('.')
                .map(|t| if t == ">" { "*" } else { t })
                .collect::<Vec<_>>()
                .join("."),
        )
    } else {
        None
    }
}

fn is_pattern(subject: &str) -> bool {
    redis_pattern(subject).is_some()
}

/// Sends events to one target.
pub enum Publisher {
    /// Sift's client; `attrs` says whether events carry the `k` attribute.
    Sift {
        /// The client.
        client: Client,
        /// Whether to attach the `k` attribute.
        attrs: bool,
        /// At-least-once: acked publishes, up to [`ACKED_IN_FLIGHT`] awaiting their ack.
        acks: Option<FuturesUnordered<AckFuture>>,
    },
    /// async-nats (it buffers and flushes by itself).
    Nats(async_nats::Client),
    /// redis-rs: PUBLISH commands go out in pipelines of up to 64.
    Redis {
        /// The connection.
        conn: redis::aio::MultiplexedConnection,
        /// Commands waiting for the next flush.
        pipe: redis::Pipeline,
        /// How many.
        queued: usize,
    },
    /// rumqttc, QoS 0 (or 1 for at-least-once); its event loop runs on its own task.
    Mqtt {
        /// The client.
        client: rumqttc::AsyncClient,
        /// The event loop.
        task: JoinHandle<()>,
        /// QoS of its publishes.
        qos: rumqttc::QoS,
    },
}

const REDIS_PIPELINE: usize = 64;

/// Acked publishes a Sift publisher keeps outstanding at once (rumqttc keeps up to 100 QoS 1
/// publishes in flight by default).
pub const ACKED_IN_FLIGHT: usize = 64;

/// An acked publish awaiting its ack.
pub type AckFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), sift_client::ClientError>> + Send>,
>;

fn qos(at_least_once: bool) -> rumqttc::QoS {
    if at_least_once {
        rumqttc::QoS::AtLeastOnce
    } else {
        rumqttc::QoS::AtMostOnce
    }
}

impl Publisher {
    /// Connects publisher number `id` of run `nonce`; `attrs` makes Sift events carry the
    /// filter attribute; `at_least_once` makes publishes acknowledged (Sift) or QoS 1 (MQTT).
    pub async fn connect(
        target: &Target,
        nonce: u64,
        id: usize,
        attrs: bool,
        at_least_once: bool,
    ) -> Result<Publisher> {
        Ok(match target {
            Target::Sift(_) | Target::SiftNodes(..) => Publisher::Sift {
                client: Client::connect(target.sift_config(id, false).context("not Sift")?)
                    .await
                    .context("cannot connect to the Sift cluster")?,
                attrs,
                acks: at_least_once.then(FuturesUnordered::new),
            },
            Target::Nats(addr) => Publisher::Nats(nats(addr).await?),
            Target::Redis(addr) => {
                let client = redis::Client::open(format!("redis://{addr}/"))?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("cannot connect to Redis at {addr}"))?;
                // A PUBLISH to thousands of subscribers can take a while to answer.
                conn.set_response_timeout(Duration::from_secs(60));
                Publisher::Redis {
                    conn,
                    pipe: redis::pipe(),
                    queued: 0,
                }
            }
            Target::Mqtt(addr) => {
                let (client, mut events) = mqtt(addr, &format!("pub-{nonce:x}-{id}"))?;
                // Wait for the broker's ConnAck before publishing.
                wait_mqtt_connected(&mut events, addr).await?;
                let task = tokio::spawn(async move {
                    loop {
                        if events.poll().await.is_err() {
                            break;
                        }
                    }
                });
                Publisher::Mqtt {
                    client,
                    task,
                    qos: qos(at_least_once),
                }
            }
        })
    }

    /// Whether the target applies subscription filters itself (Sift); peers' subscribers
    /// filter on their side.
    pub fn filters_on_server(&self) -> bool {
        matches!(self, Publisher::Sift { .. })
    }

    /// Publishes one event (a peer may hold it until [`Publisher::flush`]).
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>, k: i64) -> Result<()> {
        match self {
            Publisher::Sift {
                client,
                attrs,
                acks,
            } => {
                let mut m = Message::new(topic).payload(payload);
                if *attrs {
                    m = m.attr("k", k);
                }
                match acks {
                    None => {
                        client.publish(m).await?;
                    }
                    Some(acks) => {
                        if acks.len() >= ACKED_IN_FLIGHT {
                            if let Some(r) = acks.next().await {
                                r?;
                            }
                        }
                        let client = client.clone();
                        acks.push(Box::pin(async move {
                            client.publish_acked(m).await.map(|_| ())
                        }));
                    }
                }
            }
            Publisher::Nats(c) => c.publish(topic.to_owned(), Bytes::from(payload)).await?,
            Publisher::Redis { pipe, queued, .. } => {
                pipe.cmd("PUBLISH").arg(topic).arg(payload).ignore();
                *queued += 1;
                if *queued >= REDIS_PIPELINE {
                    self.flush().await?;
                }
            }
            Publisher::Mqtt { client, qos, .. } => {
                client
                    .publish_bytes(mqtt_topic(topic), *qos, false, Bytes::from(payload))
                    .await?
            }
        }
        Ok(())
    }

    /// Sends whatever the client still holds.
    pub async fn flush(&mut self) -> Result<()> {
        match self {
            Publisher::Redis { conn, pipe, queued } if *queued > 0 => {
                pipe.query_async::<()>(conn).await?;
                pipe.clear();
                *queued = 0;
            }
            Publisher::Sift {
                acks: Some(acks), ..
            } => {
                while let Some(r) = acks.next().await {
                    r?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Flushes and disconnects.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        match self {
            Publisher::Sift { client, .. } => client.close().await,
            Publisher::Nats(c) => {
                let _ = c.flush().await;
            }
            Publisher::Redis { .. } => {}
            Publisher::Mqtt { client, task, .. } => {
                let _ = client.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
            }
        }
    }
}

async fn nats(addr: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .subscription_capacity(65_536)
        .client_capacity(65_536)
        .connect(addr)
        .await
        .with_context(|| format!("cannot connect to NATS at {addr}"))
}

fn mqtt(addr: &str, id: &str) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("MQTT address {addr:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("bad port in {addr:?}"))?;
    let mut options = rumqttc::MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 65_536);
    // As NATS and Redis do on their sockets: no Nagle delay on small messages.
    events.network_options.set_tcp_nodelay(true);
    Ok((client, events))
}

async fn wait_mqtt_connected(events: &mut rumqttc::EventLoop, addr: &str) -> Result<()> {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow!("cannot connect to MQTT at {addr}: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| anyhow!("no ConnAck from MQTT at {addr} within 10 s"))?
}

/// Client-side filters of one peer connection: per subscribed subject, its subscribers'
/// filters. An empty list means "no filter": each message is one delivery.
#[derive(Default)]
struct LocalFilters {
    by_subject: HashMap<String, Vec<Filter>>,
}

impl LocalFilters {
    /// Matching subscribers for a message on `subject` whose stamp carries `k`.
    fn matches(&self, subject: &str, payload: &[u8]) -> u64 {
        match self.by_subject.get(subject) {
            Some(filters) if !filters.is_empty() => {
                let Some(stamp) = Stamp::read(payload) else {
                    return 0;
                };
                let mut attrs = Attributes::new();
                attrs.insert("k".into(), Value::Int(stamp.k));
                filters.iter().filter(|f| f.matches(&attrs)).count() as u64
            }
            _ => 1,
        }
    }
}

/// Groups subscriptions by subject for one peer connection: each subject is subscribed once
/// and its filters are applied locally.
fn group_for_peer(specs: &[SubSpec]) -> Result<(Vec<String>, LocalFilters)> {
    let mut subjects = Vec::new();
    let mut local = LocalFilters::default();
    for spec in specs {
        let filters = local
            .by_subject
            .entry(spec.subject.clone())
            .or_insert_with(|| {
                subjects.push(spec.subject.clone());
                Vec::new()
            });
        if let Some(f) = &spec.filter {
            if is_pattern(&spec.subject) {
                bail!("client-side filters are emulated on topics, not patterns");
            }
            filters.push(parse_filter(f)?);
        }
    }
    Ok((subjects, local))
}

fn parse_filter(f: &str) -> Result<Filter> {
    Filter::parse(f).map_err(|e| anyhow!("bad filter {f:?}: {e}"))
}

/// Splits subscriptions into layers with no subject twice. Redis and MQTT merge identical
/// subscriptions on one connection, so each layer is a connection of its own there: every
/// subscriber keeps its own subscription and receives its own copy, as independent
/// subscribers would.
pub fn layers(specs: &[SubSpec]) -> Vec<Vec<SubSpec>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Vec<SubSpec>> = Vec::new();
    for spec in specs {
        let n = seen.entry(spec.subject.as_str()).or_insert(0);
        if out.len() <= *n {
            out.push(Vec::new());
        }
        out[*n].push(spec.clone());
        *n += 1;
    }
    out
}

/// A subscriber connection with its subscriptions (for Redis and MQTT, maybe several peer
/// connections, see [`layers`]), delivering into a collector until closed.
pub struct SubscriberConn {
    tasks: Vec<JoinHandle<()>>,
    closers: Vec<Closer>,
}

enum Closer {
    Sift(Client),
    Nats(async_nats::Client),
    Mqtt(rumqttc::AsyncClient),
}

impl SubscriberConn {
    /// Opens connection number `id` and subscribes `specs`; returns once every subscription is
    /// in place on the server.
    ///
    /// With `at_least_once`, Sift subscriptions are acknowledged ones (each notification is
    /// acked) and MQTT subscriptions are QoS 1.
    pub async fn open(
        target: &Target,
        id: usize,
        specs: &[SubSpec],
        collector: &Arc<Collector>,
        at_least_once: bool,
    ) -> Result<SubscriberConn> {
        match target {
            Target::Sift(_) | Target::SiftNodes(..) => {
                let mut config = target.sift_config(id, true).context("not Sift")?;
                config.buffer_len = 65_536;
                let client = Client::connect(config)
                    .await
                    .context("cannot connect to the Sift cluster")?;
                let subscribing = specs.iter().map(|spec| {
                    let mut b = client.subscribe(&spec.subject);
                    if let Some(f) = &spec.filter {
                        b = b.filter(f);
                    }
                    if at_least_once {
                        b = b.at_least_once();
                    }
                    b.start()
                });
                let subs = futures::future::try_join_all(subscribing)
                    .await
                    .context("subscribe")?;
                let tasks = subs
                    .into_iter()
                    .map(|mut sub| {
                        let mut rec = collector.recorder();
                        tokio::spawn(async move {
                            while let Some(n) = sub.next().await {
                                rec.deliver(&n.event.payload, 1);
                                if n.needs_ack() && n.ack().await.is_err() {
                                    break;
                                }
                            }
                        })
                    })
                    .collect();
                Ok(SubscriberConn {
                    tasks,
                    closers: vec![Closer::Sift(client)],
                })
            }
            Target::Nats(addr) => {
                // NATS gives every subscription its own copy, even on one connection: one
                // subscription per subscriber, its filter applied to its own copies.
                let client = nats(addr).await?;
                let mut tasks = Vec::new();
                for spec in specs {
                    let filter = spec.filter.as_deref().map(parse_filter).transpose()?;
                    let mut sub = client.subscribe(spec.subject.clone()).await?;
                    let mut rec = collector.recorder();
                    tasks.push(tokio::spawn(async move {
                        while let Some(m) = sub.next().await {
                            let n = match &filter {
                                None => 1,
                                Some(f) => u64::from(f.matches(&attrs_of(&m.payload))),
                            };
                            rec.deliver(&m.payload, n);
                        }
                    }));
                }
                // The server has every SUB once it answered the flush's PING.
                client.flush().await?;
                Ok(SubscriberConn {
                    tasks,
                    closers: vec![Closer::Nats(client)],
                })
            }
            Target::Redis(addr) => {
                let opened = layers(specs)
                    .into_iter()
                    .map(|layer| open_redis(addr, layer, collector));
                let tasks = futures::future::try_join_all(opened).await?;
                Ok(SubscriberConn {
                    tasks,
                    closers: vec![],
                })
            }
            Target::Mqtt(addr) => {
                let opened = layers(specs).into_iter().enumerate().map(|(l, layer)| {
                    let client_id = format!("sub-{:x}-{id}-{l}", collector.nonce());
                    open_mqtt(addr, client_id, layer, collector, at_least_once)
                });
                let (tasks, closers) = futures::future::try_join_all(opened)
                    .await?
                    .into_iter()
                    .unzip();
                Ok(SubscriberConn { tasks, closers })
            }
        }
    }

    /// Stops delivering and disconnects; the recorders flush as their tasks end.
    pub async fn close(self) {
        for closer in self.closers {
            match closer {
                Closer::Sift(c) => c.close().await,
                Closer::Nats(c) => drop(c),
                Closer::Mqtt(c) => {
                    let _ = c.disconnect().await;
                }
            }
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// The attributes a peer's subscriber filters on: `k`, from the payload's stamp.
fn attrs_of(payload: &[u8]) -> Attributes {
    let mut attrs = Attributes::new();
    if let Some(stamp) = Stamp::read(payload) {
        attrs.insert("k".into(), Value::Int(stamp.k));
    }
    attrs
}

/// One Redis connection subscribed to a layer's subjects.
async fn open_redis(
    addr: &str,
    layer: Vec<SubSpec>,
    collector: &Arc<Collector>,
) -> Result<JoinHandle<()>> {
    let (subjects, local) = group_for_peer(&layer)?;
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .with_context(|| format!("cannot connect to Redis at {addr}"))?;
    for subject in subjects {
        match redis_pattern(&subject) {
            Some(p) => pubsub.psubscribe(p).await?,
            None => pubsub.subscribe(subject).await?,
        }
    }
    let mut stream = pubsub.into_on_message();
    let mut rec = collector.recorder();
    Ok(tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            let payload = m.get_payload_bytes();
            let n = local.matches(m.get_channel_name(), payload);
            rec.deliver(payload, n);
        }
    }))
}

/// One MQTT connection subscribed to a layer's subjects; returns once the broker acknowledged
/// every subscription.
async fn open_mqtt(
    addr: &str,
    client_id: String,
    layer: Vec<SubSpec>,
    collector: &Arc<Collector>,
    at_least_once: bool,
) -> Result<(JoinHandle<()>, Closer)> {
    let (subjects, local) = group_for_peer(&layer)?;
    let local = LocalFilters {
        by_subject: local
            .by_subject
            .into_iter()
            .map(|(s, f)| (mqtt_topic(&s), f))
            .collect(),
    };
    let (client, mut events) = mqtt(addr, &client_id)?;
    wait_mqtt_connected(&mut events, addr).await?;
    let filters: Vec<rumqttc::SubscribeFilter> = subjects
        .iter()
        .map(|s| rumqttc::SubscribeFilter::new(mqtt_topic(s), qos(at_least_once)))
        .collect();
    let mut acks_needed = 0usize;
    for chunk in filters.chunks(100) {
        client.subscribe_many(chunk.to_vec()).await?;
        acks_needed += 1;
    }
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut rec = collector.recorder();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut acks = 0;
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let n = local.matches(&p.topic, &p.payload);
                    rec.deliver(&p.payload, n);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    acks += 1;
                    if acks >= acks_needed {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| anyhow!("MQTT subscriptions not acknowledged within 30 s"))?
        .map_err(|_| anyhow!("the MQTT connection closed while subscribing"))?;
    Ok((task, Closer::Mqtt(client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_to_each_peer() {
        assert_eq!(mqtt_topic("orders.*.eu"), "orders/+/eu");
        assert_eq!(mqtt_topic("orders.>"), "orders/#");
        assert_eq!(redis_pattern("orders.*"), Some("orders.*".into()));
        assert_eq!(redis_pattern("orders.>"), Some("orders.*".into()));
        assert_eq!(redis_pattern("orders.eu"), None);
        assert_eq!("mqtt".parse::<TargetKind>().unwrap(), TargetKind::Mqtt);
        assert!("kafka".parse::<TargetKind>().is_err());
    }

    #[test]
    fn layers_never_hold_a_subject_twice() {
        let spec = |s: &str| SubSpec {
            subject: s.into(),
            filter: None,
        };
        let l = layers(&[spec("a"), spec("b"), spec("a"), spec("a")]);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0], vec![spec("a"), spec("b")]);
        assert_eq!(l[1], vec![spec("a")]);
        assert_eq!(l[2], vec![spec("a")]);
    }

    #[test]
    fn client_side_filters_count_the_subscribers_that_want_a_message() {
        let specs: Vec<SubSpec> = (0..10)
            .map(|i| SubSpec {
                subject: "t".into(),
                filter: Some(format!("k == {}", i % 5)),
            })
            .collect();
        let (subjects, local) = group_for_peer(&specs).unwrap();
        assert_eq!(subjects, vec!["t".to_string()]);
        let payload = |k| {
            Stamp {
                nonce: 1,
                sent_ns: 0,
                seq: 0,
                k,
            }
            .payload(64)
        };
        assert_eq!(local.matches("t", &payload(3)), 2);
        assert_eq!(local.matches("t", &payload(7)), 0);
        assert_eq!(local.matches("other", &payload(3)), 1);
    }
}
