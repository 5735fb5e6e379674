//! The matcher's core task: it alone owns the engine, the subscriptions' delivery state and
//! the ring, and reads a closed set of inputs from a bounded channel together with its next
//! deadline. Connection tasks validate and forward; notification tasks only write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::{HashMap, HashSet};
use sift_matcher_core::delivery::{AckWindow, DedupWindow};
use sift_matcher_core::{Engine, EngineConfig, Match, NewSubscription, SetFilterError, Timestamp};
use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::{EndReason, ErrorCode, ErrorFrame, Ring, RingMember};
use sift_protocol::ring::Placement;
use sift_protocol::{DeliveryMode, Event, EventId, Filter, Pattern, SubscriptionId, Topic};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{MatcherConfig, SlowConsumer};
use crate::queue::{DeliveryQueue, Item, Pushed};

/// A client connection, as the core knows it.
pub(crate) type ConnId = u64;

/// A refusal, ready to become an error frame.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) ring_version: Option<u64>,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            ring_version: None,
        }
    }

    pub(crate) fn frame(self, req: Option<u64>) -> ErrorFrame {
        ErrorFrame {
            req,
            code: self.code,
            message: self.message,
            ring_version: self.ring_version,
        }
    }
}

/// Inputs of the core task.
pub(crate) enum Input {
    Subscribe {
        conn: ConnId,
        sub: NewSubscription,
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
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Publish {
        topic: Topic,
        event: Event,
        acked: bool,
        reply: Option<oneshot::Sender<Result<(), Refusal>>>,
    },
    Ack {
        conn: ConnId,
        id: SubscriptionId,
        delivery: u64,
    },
    Closed {
        conn: ConnId,
    },
    Ring(Ring),
    RingNow {
        reply: oneshot::Sender<Ring>,
    },
    Stats {
        reply: oneshot::Sender<MatcherStats>,
    },
}

struct Alo {
    window: AckWindow<Arc<EncodedEvent>>,
    /// Events waiting for room in the window.
    backlog: VecDeque<Arc<EncodedEvent>>,
    /// Encoded bytes in `backlog`.
    backlog_bytes: usize,
}

struct Sub {
    conn: ConnId,
    queue: Arc<DeliveryQueue>,
    /// The exact topic, or `None` for a pattern.
    topic: Option<Box<str>>,
    next_delivery: u64,
    alo: Option<Alo>,
}

/// Counters the shell exports.
#[derive(Debug, Default, Clone)]
pub struct MatcherStats {
    /// Events accepted for matching.
    pub published: u64,
    /// Acknowledged publishes dropped as repeats.
    pub duplicates: u64,
    /// Notifications queued.
    pub notified: u64,
    /// Notifications dropped by the slow-consumer policy.
    pub dropped: u64,
    /// Notifications sent again after an ack timeout.
    pub redelivered: u64,
    /// Subscriptions ended because their consumer was too slow.
    pub slow_consumers: u64,
    /// Live subscriptions.
    pub subscriptions: usize,
}

pub(crate) struct Core {
    me: RingMember,
    config: MatcherConfig,
    engine: Engine,
    placement: Placement,
    subs: HashMap<SubscriptionId, Sub>,
    conns: HashMap<ConnId, HashSet<SubscriptionId>>,
    dedup: DedupWindow<EventId>,
    start: Instant,
    stats: MatcherStats,
    matches: Vec<Match>,
    expired: Vec<SubscriptionId>,
    /// At-least-once subscriptions with unacked notifications: the only ones the redelivery
    /// scan visits.
    alo_pending: HashSet<SubscriptionId>,
    /// When the next redelivery scan is due (while `alo_pending` is not empty).
    redeliver_at: Option<Instant>,
}

/// How often at-least-once windows are checked for overdue acks.
const REDELIVERY_SCAN: Duration = Duration::from_millis(50);

impl Core {
    pub(crate) fn new(me: RingMember, config: MatcherConfig, ring: Ring) -> Core {
        let dedup = DedupWindow::new(config.dedup_window.as_millis() as u64, config.dedup_ids_max);
        let engine = Engine::new(EngineConfig {
            subscriptions_max: config.subscriptions_max,
            ..EngineConfig::default()
        });
        Core {
            me,
            placement: Placement::new(&ring),
            config,
            engine,
            subs: HashMap::new(),
            conns: HashMap::new(),
            dedup,
            start: Instant::now(),
            stats: MatcherStats::default(),
            matches: Vec::new(),
            expired: Vec::new(),
            alo_pending: HashSet::new(),
            redeliver_at: None,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.start.elapsed().as_millis() as u64)
    }

    fn in_ring(&self) -> bool {
        self.placement.members().iter().any(|m| m.id == self.me.id)
    }

    fn owns(&self, topic: &str) -> bool {
        self.placement
            .owner(topic)
            .is_some_and(|m| m.id == self.me.id)
    }

    fn not_owner(&self, topic: &str) -> Refusal {
        let owner = self
            .placement
            .owner(topic)
            .map_or("nobody (empty ring)".into(), |m| m.id.clone());
        Refusal {
            code: ErrorCode::NotOwner,
            message: format!(
                "topic {topic:?} belongs to {owner} at ring version {}",
                self.placement.version()
            ),
            ring_version: Some(self.placement.version()),
        }
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
                _ = tokio::time::sleep_until(wake) => self.tick(),
            }
        }
        for (_, sub) in self.subs.drain() {
            sub.queue.end(EndReason::Shutdown);
        }
        debug!("core stopped");
    }

    fn next_wakeup(&self) -> Instant {
        let engine = self
            .engine
            .next_deadline()
            .map(|t| self.start + Duration::from_millis(t.0));
        let far = Instant::now() + Duration::from_secs(3600);
        engine
            .into_iter()
            .chain(self.redeliver_at)
            .min()
            .unwrap_or(far)
    }

    fn tick(&mut self) {
        let now = self.now();
        let mut expired = std::mem::take(&mut self.expired);
        self.engine.expire(now, &mut expired);
        for id in expired.drain(..) {
            self.forget(id, EndReason::Expired);
        }
        self.expired = expired;
        if self.redeliver_at.is_some_and(|at| at <= Instant::now()) {
            self.redeliver(now);
            self.redeliver_at =
                (!self.alo_pending.is_empty()).then(|| Instant::now() + REDELIVERY_SCAN);
        }
    }

    /// Notes that `id` has unacked notifications, so the redelivery scan visits it.
    fn awaiting_acks(&mut self, id: SubscriptionId) {
        self.alo_pending.insert(id);
        if self.redeliver_at.is_none() {
            self.redeliver_at = Some(Instant::now() + REDELIVERY_SCAN);
        }
    }

    fn redeliver(&mut self, now: Timestamp) {
        for id in &self.alo_pending {
            let Some(sub) = self.subs.get_mut(id) else {
                continue;
            };
            let Some(alo) = &mut sub.alo else { continue };
            for due in alo.window.due(now) {
                let item = Item::Notify {
                    delivery: due.delivery,
                    redelivered: true,
                    event: due.item.clone(),
                };
                if sub.queue.push(item, false) == Pushed::Refused {
                    debug!(sub = %id, "redelivery refused by a full queue");
                }
                self.stats.redelivered += 1;
            }
        }
    }

    /// Drops a subscription from the engine and ends its stream.
    fn forget(&mut self, id: SubscriptionId, reason: EndReason) {
        if let Some(sub) = self.subs.remove(&id) {
            self.alo_pending.remove(&id);
            let _ = self.engine.unsubscribe(id);
            sub.queue.end(reason);
            if let Some(set) = self.conns.get_mut(&sub.conn) {
                set.remove(&id);
            }
        }
    }

    fn handle(&mut self, msg: Input) {
        // A dropped reply means the requester went away; nothing to undo.
        match msg {
            Input::Subscribe { conn, sub, reply } => {
                let _ = reply.send(self.subscribe(conn, sub));
            }
            Input::Unsubscribe { conn, id, reply } => {
                let _ = reply.send(
                    self.own(conn, id)
                        .map(|_| self.forget(id, EndReason::Unsubscribed)),
                );
            }
            Input::Renew { conn, id, reply } => {
                let now = self.now();
                let result = self.own(conn, id).and_then(|_| {
                    let deadline = self
                        .engine
                        .renew(now, id)
                        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
                    Ok(deadline.0.saturating_sub(now.0))
                });
                let _ = reply.send(result);
            }
            Input::SetFilter {
                conn,
                id,
                filter,
                reply,
            } => {
                let result = self.own(conn, id).and_then(|_| {
                    self.engine
                        .set_filter(id, &filter)
                        .map_err(|e: SetFilterError| Refusal::new(e.code(), e.to_string()))
                });
                let _ = reply.send(result);
            }
            Input::Publish {
                topic,
                event,
                acked,
                reply,
            } => {
                let result = self.publish(&topic, event, acked);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Input::Ack { conn, id, delivery } => self.ack(conn, id, delivery),
            Input::Closed { conn } => {
                for id in self.conns.remove(&conn).unwrap_or_default() {
                    self.forget(id, EndReason::Shutdown);
                }
            }
            Input::Ring(ring) => self.ring_changed(ring),
            Input::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.subscriptions = self.subs.len();
                let _ = reply.send(stats);
            }
            Input::RingNow { reply } => {
                let ring = Ring {
                    version: self.placement.version(),
                    members: self.placement.members().to_vec(),
                };
                let _ = reply.send(ring);
            }
        }
    }

    /// The subscription exists and belongs to `conn`.
    fn own(&self, conn: ConnId, id: SubscriptionId) -> Result<(), Refusal> {
        match self.subs.get(&id) {
            Some(s) if s.conn == conn => Ok(()),
            _ => Err(Refusal::new(
                ErrorCode::UnknownSubscription,
                format!("unknown subscription {id}"),
            )),
        }
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        sub: NewSubscription,
    ) -> Result<(u64, Arc<DeliveryQueue>), Refusal> {
        let topic = sub.pattern.as_topic();
        match &topic {
            Some(t) if !self.owns(t) => return Err(self.not_owner(t)),
            None if !self.in_ring() => {
                return Err(Refusal {
                    code: ErrorCode::NotOwner,
                    message: format!(
                        "{} is not in the ring at version {}",
                        self.me.id,
                        self.placement.version()
                    ),
                    ring_version: Some(self.placement.version()),
                })
            }
            _ => {}
        }
        if self.subs.get(&sub.id).is_some_and(|s| s.conn != conn) {
            // The client subscribes again from a new connection before this matcher noticed
            // its old one was gone: the subscription moves to the new connection.
            self.forget(sub.id, EndReason::Moved);
        }
        let per_conn = self.conns.get(&conn).map_or(0, HashSet::len);
        if per_conn >= self.config.subscriptions_per_connection_max {
            let max = self.config.subscriptions_per_connection_max;
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let (id, mode) = (sub.id, sub.mode);
        let now = self.now();
        self.engine
            .subscribe(now, sub)
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        let deadline = self.engine.get(id).map_or(now, |i| i.deadline);
        let queue = DeliveryQueue::new(self.config.queue_len_max, self.config.queue_bytes_max);
        let alo = (mode == DeliveryMode::AtLeastOnce).then(|| Alo {
            window: AckWindow::new(
                self.config.redelivery_window,
                self.config.ack_timeout.as_millis() as u64,
            ),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        });
        let topic = topic.map(|t| t.as_str().into());
        self.subs.insert(
            id,
            Sub {
                conn,
                queue: queue.clone(),
                topic,
                next_delivery: 1,
                alo,
            },
        );
        self.conns.entry(conn).or_default().insert(id);
        Ok((deadline.0.saturating_sub(now.0), queue))
    }

    fn publish(&mut self, topic: &Topic, event: Event, acked: bool) -> Result<(), Refusal> {
        if !self.owns(topic) {
            return Err(self.not_owner(topic));
        }
        let now = self.now();
        if acked && !self.dedup.first_time(now, event.id) {
            self.stats.duplicates += 1;
            return Ok(());
        }
        self.stats.published += 1;
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.engine
            .match_event(now, topic, &event.attrs, &mut matches);
        if !matches.is_empty() {
            let encoded = EncodedEvent::new(&event).map_err(|e| {
                Refusal::new(ErrorCode::Internal, format!("cannot encode the event: {e}"))
            })?;
            let encoded = Arc::new(encoded);
            for m in &matches {
                self.deliver(now, m.id, &encoded);
            }
        }
        self.matches = matches;
        Ok(())
    }

    fn deliver(&mut self, now: Timestamp, id: SubscriptionId, event: &Arc<EncodedEvent>) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        let drop_oldest = self.config.slow_consumer == SlowConsumer::DropOldest;
        let mut awaiting = false;
        let pushed = match &mut sub.alo {
            Some(alo) => {
                if alo.backlog.is_empty() && !alo.window.is_full() {
                    match alo.window.offer(now, event.clone()) {
                        Ok(delivery) => {
                            awaiting = true;
                            sub.queue.push(
                                Item::Notify {
                                    delivery,
                                    redelivered: false,
                                    event: event.clone(),
                                },
                                false,
                            )
                        }
                        Err(e) => {
                            alo.backlog_bytes += e.len();
                            alo.backlog.push_back(e);
                            Pushed::Queued
                        }
                    }
                } else if alo.backlog.len() < self.config.queue_len_max
                    && alo.backlog_bytes + event.len() <= self.config.queue_bytes_max
                {
                    alo.backlog_bytes += event.len();
                    alo.backlog.push_back(event.clone());
                    Pushed::Queued
                } else {
                    // Dropping would break at-least-once: end the subscription instead.
                    Pushed::Refused
                }
            }
            None => {
                let delivery = sub.next_delivery;
                sub.next_delivery += 1;
                sub.queue.push(
                    Item::Notify {
                        delivery,
                        redelivered: false,
                        event: event.clone(),
                    },
                    drop_oldest,
                )
            }
        };
        if awaiting {
            self.awaiting_acks(id);
        }
        match pushed {
            Pushed::Queued => self.stats.notified += 1,
            Pushed::DroppedOldest => {
                self.stats.notified += 1;
                self.stats.dropped += 1;
            }
            Pushed::Refused => {
                self.stats.slow_consumers += 1;
                warn!(sub = %id, "slow consumer: subscription ended");
                self.forget(id, EndReason::SlowConsumer);
            }
        }
    }

    fn ack(&mut self, conn: ConnId, id: SubscriptionId, delivery: u64) {
        let now = self.now();
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if sub.conn != conn {
            return;
        }
        let Some(alo) = &mut sub.alo else { return };
        if !alo.window.ack(delivery) {
            return;
        }
        // Room in the window: send what waited.
        while !alo.window.is_full() {
            let Some(event) = alo.backlog.pop_front() else {
                break;
            };
            alo.backlog_bytes -= event.len();
            match alo.window.offer(now, event.clone()) {
                Ok(delivery) => {
                    sub.queue.push(
                        Item::Notify {
                            delivery,
                            redelivered: false,
                            event,
                        },
                        false,
                    );
                }
                Err(e) => {
                    alo.backlog_bytes += e.len();
                    alo.backlog.push_front(e);
                    break;
                }
            }
        }
        if alo.window.is_empty() {
            self.alo_pending.remove(&id);
        }
    }

    /// A new ring: subscriptions whose topic moved away end with `Moved` (the client
    /// subscribes again at the new owner); if this matcher left the ring, its pattern
    /// subscriptions go too.
    fn ring_changed(&mut self, ring: Ring) {
        if ring.version <= self.placement.version() && self.placement.version() != 0 {
            return;
        }
        self.placement = Placement::new(&ring);
        let in_ring = self.in_ring();
        let moved: Vec<SubscriptionId> = self
            .subs
            .iter()
            .filter(|(_, s)| match &s.topic {
                Some(t) => !self.owns(t),
                None => !in_ring,
            })
            .map(|(id, _)| *id)
            .collect();
        info!(
            version = ring.version,
            members = ring.members.len(),
            moved = moved.len(),
            "ring changed"
        );
        for id in moved {
            self.forget(id, EndReason::Moved);
        }
    }
}

/// Parses a subscription request into the engine's terms; typed refusals for bad input.
pub(crate) fn parse_subscribe(
    s: &sift_protocol::frame::Subscribe,
) -> Result<NewSubscription, Refusal> {
    let pattern = Pattern::parse(&s.pattern)
        .map_err(|e| Refusal::new(ErrorCode::InvalidTopic, e.to_string()))?;
    let filter = Filter::parse(&s.filter)
        .map_err(|e| Refusal::new(ErrorCode::InvalidFilter, e.to_string()))?;
    Ok(NewSubscription {
        id: s.id,
        pattern,
        filter,
        expiry: s.expiry,
        group: s.group.clone(),
        mode: s.mode,
    })
}
