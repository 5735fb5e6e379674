//! The client handle and its shared state: the ring (watched), connections to matchers,
//! publishing with routing and retries, and the subscriptions' bookkeeping.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use sift_protocol::frame::{EndReason, ErrorCode, Frame, Notify, Publish, RequestId, Ring};
use sift_protocol::limits::FRAME_BYTES_MAX;
use sift_protocol::net::tls::client_config;
use sift_protocol::net::{client_endpoint, FrameReader, FrameWriter, NetError};
use sift_protocol::ring::Placement;
use sift_protocol::{Attributes, Event, EventId, PublisherId, SubscriptionId, Topic, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::backoff::{self, Backoff};
use crate::node::{self, CreditLine, Request};
use crate::seen::SeenIds;
use crate::subscription::{Acker, Notification, Spec};
use crate::{ClientConfig, ClientError};

/// An event to publish: a topic, attributes and a payload.
///
/// ```
/// let msg = sift_client::Message::new("orders.eu").attr("price", 12.5).attr("tier", "gold").payload("hi");
/// assert_eq!(msg.topic(), "orders.eu");
/// ```
#[derive(Clone, Debug)]
pub struct Message {
    topic: String,
    attrs: Attributes,
    payload: Bytes,
}

impl Message {
    /// A message for `topic` with no attributes and an empty payload.
    pub fn new(topic: impl Into<String>) -> Message {
        Message {
            topic: topic.into(),
            attrs: Attributes::new(),
            payload: Bytes::new(),
        }
    }

    /// Adds attribute `name` (a string, integer, float or boolean).
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<AttrValue>) -> Message {
        self.attrs.insert(name.into(), value.into().0);
        self
    }

    /// Replaces all attributes.
    pub fn attrs(mut self, attrs: Attributes) -> Message {
        self.attrs = attrs;
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Message {
        self.payload = payload.into();
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// An attribute value; `From` strings, integers, floats and booleans.
#[derive(Clone, Debug)]
pub struct AttrValue(pub Value);

impl From<&str> for AttrValue {
    fn from(v: &str) -> AttrValue {
        AttrValue(Value::Str(v.into()))
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> AttrValue {
        AttrValue(Value::Str(v))
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> AttrValue {
        AttrValue(Value::Int(v))
    }
}
impl From<i32> for AttrValue {
    fn from(v: i32) -> AttrValue {
        AttrValue(Value::Int(v.into()))
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> AttrValue {
        AttrValue(Value::Float(v))
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> AttrValue {
        AttrValue(Value::Bool(v))
    }
}
impl From<Value> for AttrValue {
    fn from(v: Value) -> AttrValue {
        AttrValue(v)
    }
}

#[derive(Clone)]
struct NodeHandle {
    tx: mpsc::Sender<Request>,
    conn: quinn::Connection,
}

/// One matcher address: its live connection, or when the next attempt may be made after
/// failed ones. Each address has its own slot, so a matcher that does not answer delays
/// only the requests meant for it.
#[derive(Default)]
struct NodeSlot {
    handle: Option<NodeHandle>,
    backoff: Backoff,
    retry_at: Option<Instant>,
}

/// A subscription's bookkeeping in the client.
pub(crate) struct SubState {
    pub(crate) spec: Spec,
    pub(crate) tx: mpsc::UnboundedSender<Notification>,
    pub(crate) end: Arc<Mutex<Option<EndReason>>>,
    /// Matchers (addresses) where it is live.
    pub(crate) nodes: HashSet<String>,
    /// Event ids delivered to the application, and (at-least-once) those it acked.
    pub(crate) seen: Option<(SeenIds, SeenIds)>,
    /// At-least-once: the application acks each notification.
    pub(crate) alo: bool,
    /// When the lease should next be renewed.
    pub(crate) renew_at: Option<Instant>,
    /// A placement task is running for it.
    pub(crate) moving: bool,
    /// Another placement was asked for while one ran.
    pub(crate) move_again: bool,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    endpoint: quinn::Endpoint,
    publisher: PublisherId,
    seq: AtomicU64,
    req: AtomicU64,
    ring: watch::Sender<Option<Arc<Placement>>>,
    nodes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<NodeSlot>>>>,
    /// A connection to the coordinator for fetches and admin requests, kept while it lives.
    coordinator: tokio::sync::Mutex<Option<quinn::Connection>>,
    /// One ring fetch at a time; callers that waited find the ring already fresh.
    refreshing: tokio::sync::Mutex<()>,
    /// Rings taken so far (versions from different entry points are not comparable).
    ring_gen: AtomicU64,
    /// Which entry point (the coordinator, then the fallbacks) is in use.
    entry: std::sync::atomic::AtomicUsize,
    /// Where the current ring came from: versions are only comparable from one source.
    ring_source: Mutex<Option<SocketAddr>>,
    pub(crate) subs: Mutex<HashMap<SubscriptionId, SubState>>,
    pub(crate) closed: AtomicBool,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    start: Instant,
}

/// A connection to a Sift cluster: a cheap, cloneable handle.
///
/// ```no_run
/// # async fn example() -> Result<(), sift_client::ClientError> {
/// use futures::StreamExt;
/// use sift_client::{Client, ClientConfig, Message};
///
/// let client = Client::connect(ClientConfig::from_env()?).await?;
/// let mut orders = client.subscribe("orders.*").filter("price > 10").start().await?;
/// client.publish(Message::new("orders.eu").attr("price", 12.5)).await?;
/// if let Some(n) = orders.next().await {
///     println!("{}: {:?}", n.event.topic, n.event.attrs);
/// }
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// How long `close` lets the endpoint send its connection closes.
const CLOSE_GRACE: Duration = Duration::from_millis(250);
/// How often a client polls a node that cannot push the ring (a standalone matcher).
const RING_POLL: Duration = Duration::from_secs(1);

impl Client {
    /// Connects: builds the QUIC endpoint, starts watching the ring and waits for the first
    /// one (up to the request timeout).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let tls = client_config(&config.ca_pem, config.client_cert.as_ref())
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let endpoint = client_endpoint(tls).map_err(|e| ClientError::Connection(e.to_string()))?;
        let (ring_tx, mut ring_rx) = watch::channel(None);
        let inner = Arc::new(Inner {
            publisher: PublisherId(rand::random()),
            seq: AtomicU64::new(1),
            req: AtomicU64::new(1),
            ring: ring_tx,
            nodes: Mutex::new(HashMap::new()),
            coordinator: tokio::sync::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            ring_gen: AtomicU64::new(0),
            entry: std::sync::atomic::AtomicUsize::new(0),
            ring_source: Mutex::new(None),
            subs: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            start: Instant::now(),
            endpoint,
            config,
        });
        inner.tasks.spawn(watch_ring(Arc::downgrade(&inner)));
        inner
            .tasks
            .spawn(crate::subscription::renew_leases(Arc::downgrade(&inner)));
        // Each unreachable entry point costs a connect timeout before the next is tried.
        let timeout = inner.config.request_timeout
            + inner.config.connect_timeout * inner.config.fallbacks.len() as u32;
        let first = tokio::time::timeout(
            timeout,
            ring_rx.wait_for(|r| r.as_ref().is_some_and(|p| !p.members().is_empty())),
        );
        if first.await.is_err() {
            inner.cancel.cancel();
            return Err(ClientError::NoMatcher(format!(
                "no ring from {} within {timeout:?}",
                inner.config.coordinator
            )));
        }
        Ok(Client { inner })
    }

    /// [`Client::connect`] with [`ClientConfig::from_env`].
    pub async fn from_env() -> Result<Client, ClientError> {
        Client::connect(ClientConfig::from_env()?).await
    }

    /// This client's publisher id (event ids are this plus a sequence number).
    pub fn publisher(&self) -> PublisherId {
        self.inner.publisher
    }

    /// Publishes without waiting for the matcher (at most once). Returns the event's id.
    pub async fn publish(&self, message: Message) -> Result<EventId, ClientError> {
        let (topic, event) = self.inner.event(message)?;
        let id = event.id;
        let addr = self.inner.owner(&topic)?;
        let ring_version = self.inner.ring_version();
        let frame = Frame::Publish(Publish {
            req: None,
            ring_version,
            event,
        });
        self.inner.send(&addr, frame).await?;
        Ok(id)
    }

    /// Publishes and waits for the owning matcher to accept it. Retried with the same event
    /// id after a `not-owner` answer, a timeout or a lost connection; the matcher drops
    /// repeats, so a retry never notifies twice.
    pub async fn publish_acked(&self, message: Message) -> Result<EventId, ClientError> {
        let (topic, event) = self.inner.event(message)?;
        let id = event.id;
        let mut attempt = 0;
        // Owners that did not answer are skipped on the next attempt: with replicas the
        // next owner takes the publish without waiting for the ring to change.
        let mut skip = 0;
        loop {
            attempt += 1;
            match self.publish_once(&topic, &event, skip).await {
                Ok(()) => return Ok(id),
                Err(e)
                    if attempt <= self.inner.config.retries_max
                        && self.inner.retryable(&e, attempt).await =>
                {
                    // Unreachable, or not serving the topic (a matcher restarted and
                    // waiting to be moved back in): with replicas the next owner takes it.
                    if matches!(
                        e,
                        ClientError::Timeout
                            | ClientError::Connection(_)
                            | ClientError::Refused {
                                code: ErrorCode::NotOwner | ErrorCode::ShuttingDown,
                                ..
                            }
                    ) {
                        skip += 1;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try of an acknowledged publish: to the topic's primary (or the owner after the
    /// `skip` that failed) and, with replicas, also to the next owner if the first has not
    /// answered within `failover_after`; the first acknowledgement wins.
    async fn publish_once(
        &self,
        topic: &str,
        event: &Event,
        skip: usize,
    ) -> Result<(), ClientError> {
        let owners: Vec<String> = self
            .inner
            .placement()?
            .owners(topic)
            .iter()
            .map(|m| m.addr.clone())
            .collect();
        if owners.is_empty() {
            return Err(ClientError::NoMatcher("the ring is empty".into()));
        }
        let first = owners[skip % owners.len()].clone();
        let primary = self.publish_to(first, event);
        if owners.len() < 2 {
            return primary.await;
        }
        let second = owners[(skip + 1) % owners.len()].clone();
        tokio::pin!(primary);
        tokio::select! {
            r = &mut primary => r,
            _ = tokio::time::sleep(self.inner.config.failover_after) => {
                let hedge = self.publish_to(second, event);
                tokio::pin!(hedge);
                match futures::future::select(primary, hedge).await {
                    futures::future::Either::Left((Ok(()), _))
                    | futures::future::Either::Right((Ok(()), _)) => Ok(()),
                    // The primary failed: the hedge is the answer.
                    futures::future::Either::Left((Err(_), other)) => other.await,
                    // The next owner refused while the primary is silent: try again now (the
                    // ring refreshed) rather than wait out the primary's request timeout.
                    futures::future::Either::Right((Err(e), _)) => Err(e),
                }
            }
        }
    }

    async fn publish_to(&self, addr: String, event: &Event) -> Result<(), ClientError> {
        let req = self.inner.next_req();
        let frame = Frame::Publish(Publish {
            req: Some(req),
            ring_version: self.inner.ring_version(),
            event: event.clone(),
        });
        match self.inner.request(&addr, req, frame).await? {
            Frame::PublishAck { .. } => Ok(()),
            other => Err(refusal(other)),
        }
    }

    /// The current ring, if known.
    pub fn ring(&self) -> Option<Ring> {
        self.inner.ring.borrow().as_ref().map(|p| p.ring())
    }

    /// A receiver of ring changes, for applications that follow the topology.
    pub fn watch_ring(&self) -> watch::Receiver<Option<Arc<Placement>>> {
        self.inner.ring.subscribe()
    }

    /// Closes the client: ends every subscription (unsubscribing on the matchers), lets the
    /// connections finish what they were sending, and waits for them.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let ids: Vec<SubscriptionId> = self.inner.subs().keys().copied().collect();
        for id in ids {
            let _ = self.unsubscribe(id).await;
        }
        self.inner.cancel.cancel();
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner.tasks.close();
        let _ =
            tokio::time::timeout(self.inner.config.request_timeout, self.inner.tasks.wait()).await;
        // The requests are answered and the streams finished by now; closing sends each peer
        // its CONNECTION_CLOSE at once. Waiting for idle only lets those packets out: bounded
        // short, because a handshake abandoned with an unreachable matcher lingers in quinn
        // for its draining period (seconds) with nothing left to say.
        self.inner.endpoint.close(0u32.into(), b"closed");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.inner.endpoint.wait_idle()).await;
    }
}

/// Turns a non-success answer into an error.
pub(crate) fn refusal(frame: Frame) -> ClientError {
    match frame {
        Frame::Error(e) => ClientError::Refused {
            code: e.code,
            message: e.message,
        },
        other => ClientError::Connection(format!("unexpected answer {other:?}")),
    }
}

impl Drop for Inner {
    /// The last handle is gone (without `close`): stop the background tasks.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Inner {
    pub(crate) fn subs(&self) -> MutexGuard<'_, HashMap<SubscriptionId, SubState>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_req(&self) -> RequestId {
        self.req.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since the client started.
    pub(crate) fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn event(&self, m: Message) -> Result<(Topic, Event), ClientError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(ClientError::Closed);
        }
        let topic = Topic::parse(&m.topic)?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            id: EventId {
                publisher: self.publisher,
                seq,
            },
            topic: m.topic,
            attrs: m.attrs,
            payload: m.payload,
        };
        Ok((topic, event))
    }

    pub(crate) fn placement(&self) -> Result<Arc<Placement>, ClientError> {
        self.ring
            .borrow()
            .clone()
            .ok_or_else(|| ClientError::NoMatcher("no ring yet".into()))
    }

    pub(crate) fn ring_version(&self) -> u64 {
        self.ring.borrow().as_ref().map_or(0, |p| p.version())
    }

    /// The address of `topic`'s owner.
    pub(crate) fn owner(&self, topic: &str) -> Result<String, ClientError> {
        let p = self.placement()?;
        p.owner(topic)
            .map(|m| m.addr.clone())
            .ok_or_else(|| ClientError::NoMatcher("the ring is empty".into()))
    }

    /// Whether `e` is worth retry number `attempt`; refreshes the ring first when it may be
    /// stale, and backs off (exponentially, with jitter) when a matcher could not be reached.
    pub(crate) async fn retryable(self: &Arc<Self>, e: &ClientError, attempt: u32) -> bool {
        match e {
            // A matcher stopping (its lame-duck drain is over) is not the owner any more
            // either: the ring says where to go.
            ClientError::Refused {
                code: ErrorCode::NotOwner | ErrorCode::ShuttingDown,
                message,
            } => {
                debug!(%message, "not the owner; refreshing the ring");
                if attempt > 1 {
                    // The ring did not settle it at once: do not spin while it converges
                    // (a new ring is news: try at once).
                    let mut ring = self.ring.subscribe();
                    tokio::select! {
                        _ = self.cancel.cancelled() => return false,
                        _ = tokio::time::sleep(backoff::random_delay(attempt - 1)) => {}
                        _ = ring.changed() => {}
                    }
                }
                self.refresh_ring().await;
                true
            }
            ClientError::Timeout | ClientError::Connection(_) | ClientError::NoMatcher(_) => {
                // Backs off while the matcher is away, but a new ring (it is back, or its
                // topics moved) ends the wait: a held copy waiting for this client to attach
                // must not fill up meanwhile.
                let mut ring = self.ring.subscribe();
                tokio::select! {
                    _ = self.cancel.cancelled() => return false,
                    _ = tokio::time::sleep(backoff::random_delay(attempt)) => {}
                    _ = ring.changed() => {}
                }
                self.refresh_ring().await;
                !self.closed.load(Ordering::Relaxed)
            }
            _ => false,
        }
    }

    /// Fetches the ring from the coordinator now (the watch may lag).
    pub(crate) async fn refresh_ring(self: &Arc<Self>) {
        let seen = self.ring_gen.load(Ordering::Acquire);
        let _one = self.refreshing.lock().await;
        if self.ring_gen.load(Ordering::Acquire) != seen {
            return; // a ring came while we waited
        }
        match fetch_ring(self).await {
            Ok((ring, source)) => self.set_ring(ring, source),
            Err(e) => debug!(error = %e, "ring fetch failed"),
        }
    }

    /// Takes `ring` (from entry point `source`) if it is newer than ours or comes from
    /// another entry point than ours did (after a failover: versions of different gossip
    /// nodes are not comparable), and moves subscriptions to where it says they belong.
    fn set_ring(self: &Arc<Self>, ring: Ring, source: SocketAddr) {
        {
            // Decided and published under one lock, so two rings cannot cross.
            let mut from = self.ring_source.lock().unwrap_or_else(|e| e.into_inner());
            let take = ring.version > self.ring_version() || from.is_some_and(|f| f != source);
            if !take {
                return;
            }
            *from = Some(source);
            let before = self
                .ring
                .send_replace(Some(Arc::new(Placement::new(&ring))));
            self.ring_gen.fetch_add(1, Ordering::AcqRel);
            // A matcher that joins the ring may be a new process at an address this client
            // still has a connection to (a killed matcher, declared dead, that came back):
            // that connection is to the dead one and would linger until its idle timeout,
            // and the subscriptions placed on the new process would go to it. Closed now;
            // the next request connects afresh. (A matcher that leaves keeps its connection:
            // a draining one is still sending what it queued.)
            if let Some(before) = before {
                for m in &ring.members {
                    if !before.contains(&m.id) {
                        self.close_node(&m.addr);
                    }
                }
            }
        }
        crate::subscription::reconcile(self);
    }

    /// The entry point in use, and its index (for [`Inner::next_entry_point`]).
    fn entry_point(&self) -> (usize, SocketAddr) {
        let n = 1 + self.config.fallbacks.len();
        let i = self.entry.load(Ordering::Acquire);
        let addr = match i % n {
            0 => self.config.coordinator,
            k => self.config.fallbacks[k - 1],
        };
        (i, addr)
    }

    /// Entry point `failed` failed: the next one is tried from now on (once, however many
    /// callers saw it fail).
    fn next_entry_point(&self, failed: usize) {
        if !self.config.fallbacks.is_empty()
            && self
                .entry
                .compare_exchange(failed, failed + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            debug!(next = %self.entry_point().1, "trying the next entry point");
        }
    }

    /// A node said its ring is at `version`: fetch if ours is older (one fetch at a time).
    pub(crate) fn hint_ring(self: &Arc<Self>, version: u64) {
        if version > self.ring_version() && self.refreshing.try_lock().is_ok() {
            let me = self.clone();
            self.tasks.spawn(async move { me.refresh_ring().await });
        }
    }

    /// One request to the coordinator on the kept connection (made again if it was lost).
    pub(crate) async fn coordinator_request(&self, frame: Frame) -> Result<Frame, ClientError> {
        self.entry_request(frame, self.config.request_timeout)
            .await
            .map(|(answer, _)| answer)
    }

    /// One request to the entry point in use, within `timeout`; the answer and who gave it.
    /// A request that times out drops the kept connection, so the next one finds out whether
    /// the entry point is still there (and moves to the next one if not).
    async fn entry_request(
        &self,
        frame: Frame,
        timeout: Duration,
    ) -> Result<(Frame, SocketAddr), ClientError> {
        let conn = {
            let mut kept = self.coordinator.lock().await;
            match kept.as_ref().filter(|c| c.close_reason().is_none()) {
                Some(c) => c.clone(),
                None => {
                    let c = connect_coordinator(self).await?;
                    *kept = Some(c.clone());
                    c
                }
            }
        };
        let source = conn.remote_address();
        let exchange = async {
            let (send, recv) = conn.open_bi().await.map_err(NetError::from)?;
            let mut w = FrameWriter::new(send, FRAME_BYTES_MAX);
            let mut r = FrameReader::new(recv, FRAME_BYTES_MAX);
            w.send(&frame).await?;
            r.next().await
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Some(answer))) => Ok((answer, source)),
            Ok(Ok(None)) => Err(ClientError::Connection(
                "the coordinator closed the stream".into(),
            )),
            Ok(Err(e)) => Err(ClientError::Connection(format!("coordinator: {e}"))),
            Err(_) => Err(ClientError::Timeout),
        };
        if result.is_err() && !self.config.fallbacks.is_empty() {
            let mut kept = self.coordinator.lock().await;
            if kept
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                *kept = None;
            }
        }
        result
    }

    /// The connection to the matcher at `addr`, made if needed. After a failed attempt the
    /// next one waits out a backoff; requests in the meantime fail at once with
    /// [`ClientError::Connection`] (callers retry, usually on a newer ring).
    async fn node(self: &Arc<Self>, addr: &str) -> Result<NodeHandle, ClientError> {
        let slot = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr.to_owned())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(n) = &slot.handle {
            if !n.tx.is_closed() {
                return Ok(n.clone());
            }
        }
        // A closing client still uses its connections (to unsubscribe) but makes no new ones.
        if self.closed.load(Ordering::Relaxed) {
            return Err(ClientError::Closed);
        }
        let now = Instant::now();
        if let Some(at) = slot.retry_at.filter(|at| *at > now) {
            return Err(ClientError::Connection(format!(
                "{addr} is unreachable; next attempt in {} ms",
                (at - now).as_millis()
            )));
        }
        match self.connect_node(addr).await {
            Ok(handle) => {
                slot.backoff.reset();
                slot.retry_at = None;
                slot.handle = Some(handle.clone());
                Ok(handle)
            }
            Err(e) => {
                slot.handle = None;
                let wait = slot.backoff.failed(rand::random());
                slot.retry_at = Some(Instant::now() + wait);
                debug!(%addr, error = %e, retry_in_ms = wait.as_millis() as u64, "matcher unreachable");
                Err(e)
            }
        }
    }

    /// Closes the connection to `addr`, if there is one; the next request makes a new one.
    fn close_node(&self, addr: &str) {
        let slot = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned();
        if let Some(slot) = slot {
            if let Ok(mut slot) = slot.try_lock() {
                if let Some(h) = slot.handle.take() {
                    h.conn.close(0u32.into(), b"left the ring");
                }
            } else {
                // A connection attempt holds the slot: it is to the current process.
                debug!(%addr, "matcher left the ring while connecting to it");
            }
        }
    }

    /// Connects to a matcher, presents the token if there is one, and starts the connection's
    /// task.
    async fn connect_node(self: &Arc<Self>, addr: &str) -> Result<NodeHandle, ClientError> {
        let sock = crate::config::resolve(addr)?;
        let connecting = self
            .endpoint
            .connect(sock, &self.config.server_name)
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        let conn = tokio::time::timeout(self.config.connect_timeout, connecting)
            .await
            .map_err(|_| ClientError::Connection(format!("{addr}: no answer to the handshake")))?
            .map_err(|e| ClientError::Connection(format!("{addr}: {e}")))?;
        let (tx, rx) = mpsc::channel(4096);
        let requests = tx.downgrade();
        let handle = NodeHandle {
            tx,
            conn: conn.clone(),
        };
        let hello = self.config.token.as_ref().map(|token| {
            let req = self.next_req();
            let (reply_tx, reply_rx) = oneshot::channel();
            let frame = Frame::Hello {
                req,
                token: Some(token.clone()),
            };
            (
                Request {
                    frame,
                    reply: Some((req, reply_tx)),
                },
                reply_rx,
            )
        });
        self.tasks.spawn(node::run(
            conn,
            requests,
            self.credit(),
            rx,
            Arc::downgrade(self),
            addr.to_owned(),
            FRAME_BYTES_MAX,
        ));
        if let Some((request, reply_rx)) = hello {
            let _ = handle.tx.send(request).await;
            match tokio::time::timeout(self.config.request_timeout, reply_rx).await {
                Ok(Ok(Frame::Ok { .. })) => {}
                _ => {
                    return Err(ClientError::Refused {
                        code: ErrorCode::Unauthorized,
                        message: "token refused".into(),
                    })
                }
            }
        }
        Ok(handle)
    }

    /// Sends a frame that gets no answer.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: &str,
        frame: Frame,
    ) -> Result<(), ClientError> {
        let node = self.node(addr).await?;
        node.tx
            .send(Request { frame, reply: None })
            .await
            .map_err(|_| ClientError::Connection(format!("{addr} lost")))
    }

    /// Sends a request and waits for its answer.
    pub(crate) async fn request(
        self: &Arc<Self>,
        addr: &str,
        req: RequestId,
        frame: Frame,
    ) -> Result<Frame, ClientError> {
        let node = self.node(addr).await?;
        let (tx, rx) = oneshot::channel();
        node.tx
            .send(Request {
                frame,
                reply: Some((req, tx)),
            })
            .await
            .map_err(|_| ClientError::Connection(format!("{addr} lost")))?;
        match tokio::time::timeout(self.config.request_timeout, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(ClientError::Connection(format!("{addr} lost"))),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// A connection to `addr` ended: its subscriptions must be placed again.
    pub(crate) fn node_lost(self: &Arc<Self>, addr: &str) {
        let affected: Vec<SubscriptionId> = {
            let mut subs = self.subs();
            subs.iter_mut()
                .filter_map(|(id, s)| s.nodes.remove(addr).then_some(*id))
                .collect()
        };
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if !affected.is_empty() {
            warn!(%addr, subscriptions = affected.len(), "connection lost; subscribing again");
        }
        for id in affected {
            crate::subscription::spawn_replace(self.clone(), id);
        }
    }

    /// A notification arrived from `addr`.
    pub(crate) fn deliver(self: &Arc<Self>, addr: &str, n: Notify, credit: Arc<CreditLine>) {
        let now = self.now();
        let mut subs = self.subs();
        let Some(sub) = subs.get_mut(&n.sub) else {
            drop(subs);
            return credit.consumed();
        };
        let acker = sub.alo.then(|| Acker {
            inner: Arc::downgrade(self),
            addr: addr.to_owned(),
            sub: n.sub,
            delivery: n.delivery,
            event: n.event.id,
        });
        if let Some((delivered, acked)) = &mut sub.seen {
            if delivered.contains(&n.event.id) {
                // The application has it already. If it acked, the ack was lost: ack again.
                // If not, it still holds the notification and will ack it. Either way it does
                // not see the event twice.
                let acked = acked.contains(&n.event.id);
                drop(subs);
                credit.consumed();
                if let (true, Some(a)) = (acked, acker) {
                    a.spawn_ack();
                }
                return;
            }
        }
        let id = n.event.id;
        let notification = Notification {
            handle: n.sub,
            event: n.event,
            redelivered: n.redelivered,
            acker,
            credit: Some(credit),
        };
        // Unbounded: what each matcher may send is bounded by the credit it was given (the
        // subscription's buffer), so a matcher never sends more than there is room for.
        match sub.tx.send(notification) {
            Ok(()) => {
                if let Some((delivered, _)) = &mut sub.seen {
                    delivered.first_time(now, id);
                }
            }
            // The subscription's stream was dropped: nobody reads it any more.
            Err(e) => {
                drop(subs);
                if let Some(c) = e.0.credit {
                    c.consumed();
                }
            }
        }
    }

    /// The credit each matcher gets for a subscription: its buffer.
    pub(crate) fn credit(&self) -> u32 {
        u32::try_from(self.config.buffer_len.max(2)).unwrap_or(u32::MAX)
    }

    /// A subscription stream from `addr` ended.
    pub(crate) fn ended(self: &Arc<Self>, addr: &str, id: SubscriptionId, reason: EndReason) {
        // A node the subscription has left (re-placed elsewhere) speaks for a copy that no
        // longer matters: its end does not end the subscription.
        if self
            .subs()
            .get(&id)
            .is_some_and(|sub| !sub.nodes.contains(addr))
        {
            debug!(sub = %id, node = addr, ?reason, "end from a node the subscription left");
            return;
        }
        debug!(sub = %id, node = addr, ?reason, "subscription stream ended");
        match reason {
            EndReason::Moved | EndReason::Shutdown => {
                {
                    let mut subs = self.subs();
                    let Some(sub) = subs.get_mut(&id) else { return };
                    sub.nodes.remove(addr);
                }
                if !self.closed.load(Ordering::Relaxed) {
                    crate::subscription::spawn_replace(self.clone(), id);
                }
            }
            EndReason::Expired | EndReason::Unsubscribed | EndReason::SlowConsumer => {
                self.finish(id, reason);
            }
        }
    }

    /// Ends a subscription on the client side with `reason`.
    pub(crate) fn finish(&self, id: SubscriptionId, reason: EndReason) -> Option<HashSet<String>> {
        let sub = self.subs().remove(&id)?;
        let mut end = sub.end.lock().unwrap_or_else(|e| e.into_inner());
        end.get_or_insert(reason);
        Some(sub.nodes)
    }
}

/// Fetches the ring once from the coordinator.
/// The ring from the entry point in use, and who gave it. With fallbacks, a ring fetch waits
/// at most the connect timeout: an entry point that does not answer that fast is treated as
/// gone.
async fn fetch_ring(inner: &Inner) -> Result<(Ring, SocketAddr), ClientError> {
    let timeout = if inner.config.fallbacks.is_empty() {
        inner.config.request_timeout
    } else {
        inner
            .config
            .request_timeout
            .min(inner.config.connect_timeout)
    };
    match inner
        .entry_request(Frame::RingFetch { req: 1 }, timeout)
        .await?
    {
        (Frame::Ring { ring, .. }, source) => Ok((ring, source)),
        (other, _) => Err(refusal(other)),
    }
}

/// Connects to the entry point in use; when that fails and there are fallbacks, to each of
/// the others in turn.
pub(crate) async fn connect_coordinator(inner: &Inner) -> Result<quinn::Connection, ClientError> {
    let mut last = None;
    for _ in 0..=inner.config.fallbacks.len() {
        let (i, addr) = inner.entry_point();
        match connect_entry(inner, addr).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                debug!(entry = %addr, error = %e, "entry point unreachable");
                inner.next_entry_point(i);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(ClientError::Closed))
}

async fn connect_entry(inner: &Inner, addr: SocketAddr) -> Result<quinn::Connection, ClientError> {
    let connecting = inner
        .endpoint
        .connect(addr, &inner.config.server_name)
        .map_err(|e| ClientError::Connection(e.to_string()))?;
    let conn = tokio::time::timeout(inner.config.connect_timeout, connecting)
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Connection(format!("coordinator {addr}: {e}")))?;
    if let Some(token) = &inner.config.token {
        // A coordinator that requires a token serves a connection once it has seen it.
        let hello = async {
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(sift_protocol::net::NetError::from)?;
            let mut w = FrameWriter::new(send, FRAME_BYTES_MAX);
            let mut r = FrameReader::new(recv, FRAME_BYTES_MAX);
            w.send(&Frame::Hello {
                req: 0,
                token: Some(token.clone()),
            })
            .await?;
            r.next().await
        };
        match tokio::time::timeout(inner.config.request_timeout, hello).await {
            Ok(Ok(Some(Frame::Ok { .. }))) => {}
            Ok(Ok(Some(Frame::Error(e)))) => {
                return Err(ClientError::Refused {
                    code: e.code,
                    message: e.message,
                })
            }
            Ok(_) => {
                return Err(ClientError::Refused {
                    code: ErrorCode::Unauthorized,
                    message: "the coordinator refused the token".into(),
                })
            }
            Err(_) => return Err(ClientError::Timeout),
        }
    }
    Ok(conn)
}

/// Keeps the ring current: watches it on the coordinator, or polls a node that cannot push
/// it (a standalone matcher), reconnecting as needed.
async fn watch_ring(inner: std::sync::Weak<Inner>) {
    let mut backoff = Backoff::default();
    loop {
        // Only a weak hold while waiting: a client dropped without `close` still goes away
        // (its `Drop` cancels this task).
        let Some(cancel) = inner.upgrade().map(|me| me.cancel.clone()) else {
            return;
        };
        let mut got_ring = false;
        let session = async {
            let conn = {
                let me = inner.upgrade().ok_or(ClientError::Closed)?;
                connect_coordinator(&me).await?
            };
            let source = conn.remote_address();
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))?;
            let mut w = FrameWriter::new(send, FRAME_BYTES_MAX);
            let mut r = FrameReader::new(recv, FRAME_BYTES_MAX);
            w.send(&Frame::Watch { req: 1 })
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))?;
            loop {
                match r
                    .next()
                    .await
                    .map_err(|e| ClientError::Connection(e.to_string()))?
                {
                    Some(Frame::Ring { ring, .. }) => {
                        got_ring = true;
                        let Some(me) = inner.upgrade() else {
                            return Ok(());
                        };
                        me.set_ring(ring, source);
                    }
                    Some(Frame::Error(e)) if e.code == ErrorCode::Unauthorized => {
                        return Err(ClientError::Refused {
                            code: e.code,
                            message: e.message,
                        })
                    }
                    Some(Frame::Error(_)) => {
                        // Not a coordinator (a standalone matcher): poll instead.
                        loop {
                            let Some(me) = inner.upgrade() else {
                                return Ok(());
                            };
                            me.refresh_ring().await;
                            drop(me);
                            tokio::time::sleep(RING_POLL).await;
                        }
                    }
                    Some(_) => {}
                    None => return Err::<(), _>(ClientError::Connection("watch ended".into())),
                }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = session => if let Err(e) = r { debug!(error = %e, "ring watch lost") },
        }
        if got_ring {
            backoff.reset();
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.failed(rand::random())) => {}
        }
    }
}
