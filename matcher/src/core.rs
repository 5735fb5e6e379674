//! The matcher's core task: a dispatcher around the pure [`Node`] (`sift-matcher-core`),
//! which owns the engine, the subscriptions' delivery state, the ring and its transitions,
//! and replication. The task reads a closed set of inputs from a bounded channel, calls the
//! node with the time, sleeps until the node's next deadline, and moves what the node
//! decided (peer messages, answers, confirmations, gossip frames) onto links and channels.
//! Connection tasks validate and forward; notification tasks only write.

use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use sift_matcher_core::gossip::{Message, NodeId};
use sift_matcher_core::node::{Effect, GossipNodeConfig, Node, NodeConfig, SubRecord, Token};
use sift_matcher_core::{NewSubscription, Timestamp};
use sift_protocol::frame::{Frame, Ring, RingMember};
use sift_protocol::peer::PeerFrame;
use sift_protocol::{Event, EventId, Filter, SubscriptionId, Topic};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{GossipConfig, MatcherConfig};
use crate::mesh::MeshCmd;
use crate::peer::PeerLinks;
use crate::queue::DeliveryQueue;
use crate::replica::unix_ms;

pub use sift_matcher_core::node::MatcherStats;
pub(crate) use sift_matcher_core::node::{parse_subscribe, ConnId, Refusal};

/// Inputs of the core task.
/// Where the outcome of a publish goes.
pub(crate) enum PublishReply {
    /// An acknowledged publish: its outcome, for the `PublishAck` or the error.
    Ack(oneshot::Sender<Result<(), Refusal>>),
    /// Fire and forget: nothing on success; a refusal (e.g. not the owner) is queued on the
    /// request stream's answer writer, out of order. No per-event channel or answer slot.
    Refusals(mpsc::Sender<crate::conn::Queued>),
}

pub(crate) enum Input {
    Subscribe {
        conn: ConnId,
        sub: NewSubscription,
        /// The filter as the client wrote it (what gossip replicates).
        filter_source: String,
        /// The ring version the client placed it by.
        ring_version: u64,
        reply: oneshot::Sender<Result<(u64, Arc<DeliveryQueue>), Refusal>>,
    },
    Unsubscribe {
        conn: ConnId,
        id: SubscriptionId,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Renew {
        conn: ConnId,
        id: SubscriptionId,
        reply: oneshot::Sender<Result<u64, Refusal>>,
    },
    SetFilter {
        conn: ConnId,
        id: SubscriptionId,
        filter: Filter,
        source: String,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Publish {
        topic: Topic,
        event: Event,
        acked: bool,
        /// The ring version the publisher routed by.
        ring_version: u64,
        reply: PublishReply,
    },
    Ack {
        conn: ConnId,
        id: SubscriptionId,
        event: EventId,
    },
    Closed {
        conn: ConnId,
    },
    /// The coordinator's view: the active ring and the announced next one.
    Cluster {
        active: Ring,
        pending: Option<Ring>,
        /// The coordinator's verdict on this matcher's registration (in its answer only).
        restarted: bool,
    },
    /// A message from another matcher, answered with one.
    Peer {
        from: String,
        frame: PeerFrame,
        reply: oneshot::Sender<PeerFrame>,
    },
    /// An answer from another matcher to a message this one sent.
    PeerAnswer {
        from: String,
        frame: PeerFrame,
    },
    RingNow {
        reply: oneshot::Sender<Ring>,
    },
    Stats {
        reply: oneshot::Sender<MatcherStats>,
    },
    /// A dissemination message from another gossip node.
    Gossip {
        from: NodeId,
        msg: Message<SubRecord>,
    },
    /// An event another gossip node matched against subscriptions held here.
    Forwarded {
        subs: Vec<SubscriptionId>,
        topic: Topic,
        event: Event,
    },
    /// The gossip nodes currently alive (this one excluded).
    Members(Vec<NodeId>),
}

/// What the core needs to run as a gossip node.
pub(crate) struct GossipSetup {
    pub(crate) id: NodeId,
    pub(crate) config: GossipConfig,
    pub(crate) mesh: mpsc::Sender<MeshCmd>,
}

pub(crate) struct Core {
    node: Node<DeliveryQueue>,
    /// The node's clock starts here.
    start: Instant,
    /// Links to the other matchers (with a coordinator).
    peers: Option<PeerLinks>,
    /// Completed handoffs, for the coordinator link to confirm.
    confirms: Option<mpsc::Sender<u64>>,
    /// The active ring, for those who wait on it (a lame-duck drain).
    ring_watch: watch::Sender<Ring>,
    /// Gossip mode: the mesh that carries frames to other nodes.
    mesh: Option<mpsc::Sender<MeshCmd>>,
    /// Publishers waiting for the node's answer.
    answers: HashMap<Token, oneshot::Sender<Result<(), Refusal>>>,
    /// Fire-and-forget publishes in flight: where a refusal of each is written.
    refusals: HashMap<Token, mpsc::Sender<crate::conn::Queued>>,
    /// Peers waiting for the node's answer.
    peer_replies: HashMap<Token, oneshot::Sender<PeerFrame>>,
    next_token: Token,
    /// Gossip mode: frames dropped because the mesh's queue was full.
    mesh_dropped: u64,
}

impl Core {
    pub(crate) fn new(
        me: RingMember,
        config: MatcherConfig,
        ring: Ring,
        gossip: Option<GossipSetup>,
        peers: Option<PeerLinks>,
        confirms: Option<mpsc::Sender<u64>>,
        ring_watch: watch::Sender<Ring>,
    ) -> Core {
        let node_config = NodeConfig {
            subscriptions_max: config.subscriptions_max,
            subscriptions_per_connection_max: config.subscriptions_per_connection_max,
            queue_len_max: config.queue_len_max,
            queue_bytes_max: config.queue_bytes_max,
            slow_consumer: config.slow_consumer,
            ack_timeout_ms: config.ack_timeout.as_millis() as u64,
            redelivery_window: config.redelivery_window,
            dedup_window_ms: config.dedup_window.as_millis() as u64,
            dedup_ids_max: config.dedup_ids_max,
            limits: config.limits,
            linked: peers.is_some(),
            unix_base_ms: unix_ms(),
            gossip: gossip.as_ref().map(|g| GossipNodeConfig {
                id: g.id,
                strategy: g.config.strategy,
                period_ms: g.config.period.as_millis() as u64,
                anti_entropy_every: g.config.anti_entropy_every,
                lease_grace_ms: g.config.lease_grace.as_millis() as u64,
                seed: g.id ^ unix_ms(),
            }),
        };
        Core {
            node: Node::new(me, node_config, ring),
            start: Instant::now(),
            peers,
            confirms,
            ring_watch,
            mesh: gossip.map(|g| g.mesh),
            answers: HashMap::new(),
            refusals: HashMap::new(),
            peer_replies: HashMap::new(),
            next_token: 0,
            mesh_dropped: 0,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.start.elapsed().as_millis() as u64)
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    pub(crate) async fn run(mut self, mut input: mpsc::Receiver<Input>, cancel: CancellationToken) {
        loop {
            let wake = self.next_wakeup();
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = input.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = self.now();
                    self.node.tick(now);
                }
            }
            self.apply_effects();
        }
        self.node.shutdown();
        debug!("core stopped");
    }

    fn next_wakeup(&self) -> Instant {
        match self.node.next_deadline() {
            Some(t) => self.start + Duration::from_millis(t.0),
            None => Instant::now() + Duration::from_secs(3600),
        }
    }

    fn handle(&mut self, msg: Input) {
        let now = self.now();
        // A dropped reply means the requester went away; nothing to undo.
        match msg {
            Input::Subscribe {
                conn,
                sub,
                filter_source,
                ring_version,
                reply,
            } => {
                let result =
                    self.node
                        .handle_subscribe(now, conn, sub, filter_source, ring_version);
                let _ = reply.send(result);
            }
            Input::Unsubscribe { conn, id, reply } => {
                let _ = reply.send(self.node.handle_unsubscribe(now, conn, id));
            }
            Input::Renew { conn, id, reply } => {
                let _ = reply.send(self.node.handle_renew(now, conn, id));
            }
            Input::SetFilter {
                conn,
                id,
                filter,
                source,
                reply,
            } => {
                let result = self.node.handle_set_filter(now, conn, id, &filter, source);
                let _ = reply.send(result);
            }
            Input::Publish {
                topic,
                event,
                acked,
                ring_version,
                reply,
            } => {
                let token = self.token();
                match reply {
                    PublishReply::Ack(reply) => {
                        self.answers.insert(token, reply);
                    }
                    PublishReply::Refusals(tx) => {
                        self.refusals.insert(token, tx);
                    }
                }
                let token = Some(token);
                self.node
                    .handle_publish(now, topic, event, acked, ring_version, token);
            }
            Input::Ack { conn, id, event } => self.node.handle_ack(now, conn, id, event),
            Input::Closed { conn } => self.node.handle_closed(now, conn),
            Input::Cluster {
                active,
                pending,
                restarted,
            } => {
                if restarted {
                    self.node.handle_restarted(now, &active);
                }
                self.node.handle_cluster(now, active, pending)
            }
            Input::Peer { from, frame, reply } => {
                let token = self.token();
                self.peer_replies.insert(token, reply);
                self.node.handle_peer(now, &from, frame, token);
            }
            Input::PeerAnswer { from, frame } => self.node.handle_peer_answer(now, &from, frame),
            Input::RingNow { reply } => {
                let _ = reply.send(self.node.ring());
            }
            Input::Stats { reply } => {
                let mut stats = self.node.stats();
                stats.peer_dropped += self.mesh_dropped;
                let _ = reply.send(stats);
            }
            Input::Gossip { from, msg } => self.node.handle_gossip(now, from, msg),
            Input::Forwarded { subs, topic, event } => {
                self.node.handle_forwarded(now, &subs, &topic, &event)
            }
            Input::Members(peers) => self.node.handle_members(now, peers),
        }
    }

    /// Moves what the node decided.
    fn apply_effects(&mut self) {
        for effect in self.node.take_effects() {
            match effect {
                Effect::Peer { to, frame } => {
                    if let Some(p) = &mut self.peers {
                        p.send(&to, frame);
                    }
                }
                Effect::Answer { token, result } => {
                    if let Some(reply) = self.answers.remove(&token) {
                        let _ = reply.send(result);
                    } else if let (Some(tx), Err(r)) = (self.refusals.remove(&token), result) {
                        // A full answer queue drops it: the client is not reading answers.
                        let _ =
                            tx.try_send(crate::conn::Queued::refusal(Frame::Error(r.frame(None))));
                    }
                }
                Effect::PeerReply { token, frame } => {
                    if let Some(reply) = self.peer_replies.remove(&token) {
                        let _ = reply.send(frame);
                    }
                }
                Effect::Confirm(version) => {
                    if let Some(tx) = &self.confirms {
                        if tx.try_send(version).is_err() {
                            warn!(
                                version,
                                "confirmation not queued; the coordinator will announce again"
                            );
                        }
                    }
                }
                Effect::RingActive { ring, keep } => {
                    self.ring_watch.send_replace(ring);
                    if let Some(p) = &mut self.peers {
                        p.retain(|id| keep.iter().any(|k| k == id));
                    }
                }
                Effect::Mesh { to, frame } => {
                    let sent = self
                        .mesh
                        .as_ref()
                        .is_some_and(|m| m.try_send(MeshCmd::Send { to, frame }).is_ok());
                    if !sent {
                        self.mesh_dropped += 1;
                    }
                }
            }
        }
    }
}
