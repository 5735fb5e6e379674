//! Subscriptions: the builder, the `Stream` of notifications, acknowledgements, lease renewal,
//! and placing a subscription again when its matcher goes away or its topic moves.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hashbrown::HashSet;
use sift_protocol::frame::{
    DeliveryMode, EndReason, ErrorCode, ExpirySpec, Frame, GroupSpec, Subscribe,
};
use sift_protocol::limits::LEASE_DEFAULT_MS;
use sift_protocol::{Event, Filter, Pattern, SubscriptionId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::client::{refusal, Client, Inner, SubState};
use crate::node::CreditLine;
use crate::seen::SeenIds;
use crate::ClientError;

/// What a subscription asked for, kept to place it again.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) pattern: Pattern,
    pub(crate) filter: String,
    pub(crate) expiry: ExpirySpec,
    /// For a hard deadline: when it falls, so that placing the subscription again (after a
    /// move) asks only for what is left.
    pub(crate) deadline_at: Option<Instant>,
    pub(crate) group: Option<GroupSpec>,
    pub(crate) mode: DeliveryMode,
}

/// Event ids are remembered to drop repeats for this long after their publisher was last
/// heard from (and within `seen::WINDOW` numbers of its newest).
const SEEN_TTL_MS: u64 = 10 * 60 * 1000;

/// One notification: the subscription's handle and the event.
#[derive(Debug)]
pub struct Notification {
    /// The subscription it is for.
    pub handle: SubscriptionId,
    /// The event.
    pub event: Event,
    /// True when the matcher sent it before (it was not acked in time). The SDK already drops
    /// events it delivered before, so the application sees each event once.
    pub redelivered: bool,
    pub(crate) acker: Option<Acker>,
    /// The matcher's credit for it, given back as the application takes it.
    pub(crate) credit: Option<Arc<CreditLine>>,
}

impl Notification {
    /// Acknowledges an at-least-once notification so the matcher stops redelivering it
    /// (a no-op for at-most-once subscriptions).
    pub async fn ack(&self) -> Result<(), ClientError> {
        match &self.acker {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }

    /// True when the notification waits for [`Notification::ack`].
    pub fn needs_ack(&self) -> bool {
        self.acker.is_some()
    }
}

/// Where an ack goes.
#[derive(Debug, Clone)]
pub(crate) struct Acker {
    pub(crate) inner: Weak<Inner>,
    pub(crate) addr: String,
    pub(crate) sub: SubscriptionId,
    pub(crate) delivery: u64,
    pub(crate) event: sift_protocol::EventId,
}

impl Acker {
    async fn ack(&self) -> Result<(), ClientError> {
        let inner = self.inner.upgrade().ok_or(ClientError::Closed)?;
        let now = inner.now();
        if let Some(s) = inner.subs().get_mut(&self.sub) {
            if let Some((_, acked)) = &mut s.seen {
                acked.first_time(now, self.event);
            }
        }
        inner
            .send(
                &self.addr,
                Frame::Ack {
                    sub: self.sub,
                    delivery: self.delivery,
                    event: self.event,
                },
            )
            .await
    }

    pub(crate) fn spawn_ack(self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.tasks.spawn(async move {
                let _ = self.ack().await;
            });
        }
    }
}

/// Builds a subscription: `client.subscribe("orders.*").filter("price > 10").start()`.
#[must_use = "a subscription starts with `start()`"]
pub struct SubscribeBuilder {
    client: Client,
    pattern: String,
    filter: String,
    expiry: ExpirySpec,
    group: Option<GroupSpec>,
    mode: DeliveryMode,
}

impl Client {
    /// Starts building a subscription to a topic or pattern (`orders.eu`, `orders.*`,
    /// `orders.>`).
    pub fn subscribe(&self, topic_or_pattern: impl Into<String>) -> SubscribeBuilder {
        SubscribeBuilder {
            client: self.clone(),
            pattern: topic_or_pattern.into(),
            filter: String::new(),
            expiry: ExpirySpec::LeaseMs(LEASE_DEFAULT_MS),
            group: None,
            mode: DeliveryMode::AtMostOnce,
        }
    }

    /// Subscribes and calls `callback(handle, event)` for each notification, from a task of
    /// its own (at-least-once notifications are acked when the callback returns). Returns the
    /// handle; [`Client::unsubscribe`] ends it. The classic `subscribe(filter, notify, expiry)`.
    pub async fn subscribe_with(
        &self,
        builder: SubscribeBuilder,
        mut callback: impl FnMut(SubscriptionId, Event) + Send + 'static,
    ) -> Result<SubscriptionId, ClientError> {
        let mut sub = builder.start().await?;
        let handle = sub.handle();
        self.inner.tasks.spawn(async move {
            use futures::StreamExt;
            while let Some(n) = sub.next().await {
                let ack = n.acker.clone();
                callback(n.handle, n.event);
                if let Some(a) = ack {
                    let _ = a.ack().await;
                }
            }
        });
        Ok(handle)
    }

    /// Ends a subscription (on every matcher that holds it).
    pub async fn unsubscribe(&self, handle: SubscriptionId) -> Result<(), ClientError> {
        let nodes = self
            .inner
            .finish(handle, EndReason::Unsubscribed)
            .ok_or_else(|| ClientError::Refused {
                code: ErrorCode::UnknownSubscription,
                message: format!("unknown subscription {handle}"),
            })?;
        for addr in nodes {
            let req = self.inner.next_req();
            if let Err(e) = self
                .inner
                .request(&addr, req, Frame::Unsubscribe { req, sub: handle })
                .await
            {
                debug!(%addr, error = %e, "unsubscribe not confirmed");
            }
        }
        Ok(())
    }

    /// Replaces a subscription's filter in place: from the matcher's answer on, events are
    /// matched against the new filter, without a gap or a duplicate.
    pub async fn set_filter(
        &self,
        handle: SubscriptionId,
        filter: &str,
    ) -> Result<(), ClientError> {
        Filter::parse(filter)?;
        let nodes: Vec<String> = {
            let mut subs = self.inner.subs();
            let sub = subs.get_mut(&handle).ok_or_else(|| ClientError::Refused {
                code: ErrorCode::UnknownSubscription,
                message: format!("unknown subscription {handle}"),
            })?;
            sub.spec.filter = filter.to_owned();
            sub.nodes.iter().cloned().collect()
        };
        for addr in nodes {
            let req = self.inner.next_req();
            match self
                .inner
                .request(
                    &addr,
                    req,
                    Frame::SetFilter {
                        req,
                        sub: handle,
                        filter: filter.to_owned(),
                    },
                )
                .await?
            {
                Frame::Ok { .. } => {}
                other => return Err(refusal(other)),
            }
        }
        Ok(())
    }
}

impl SubscribeBuilder {
    /// Only events whose attributes satisfy `filter` (the filter language of DESIGN.md).
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = filter.into();
        self
    }

    /// A lease of `d`, renewed by the SDK while the subscription lives (default 60 s).
    pub fn expiry(mut self, d: Duration) -> Self {
        self.expiry = ExpirySpec::LeaseMs(d.as_millis().max(1) as u64);
        self
    }

    /// A hard deadline `d` from now; never renewed.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.expiry = ExpirySpec::DeadlineMs(d.as_millis().max(1) as u64);
        self
    }

    /// Joins consumer group `name`: each matching event goes to one member.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(GroupSpec {
            name: name.into(),
            key: None,
        });
        self
    }

    /// Joins group `name` with affinity on attribute `key`: events with the same key value go
    /// to the same member while the group is stable.
    pub fn group_by_key(mut self, name: impl Into<String>, key: impl Into<String>) -> Self {
        self.group = Some(GroupSpec {
            name: name.into(),
            key: Some(key.into()),
        });
        self
    }

    /// At-least-once delivery: each notification must be acked, or it is sent again.
    pub fn at_least_once(mut self) -> Self {
        self.mode = DeliveryMode::AtLeastOnce;
        self
    }

    /// Subscribes on the owning matcher (every matcher, for a pattern) and returns the stream
    /// of notifications.
    pub async fn start(self) -> Result<Subscription, ClientError> {
        let pattern = Pattern::parse(&self.pattern)?;
        Filter::parse(&self.filter)?;
        let inner = self.client.inner.clone();
        let id = SubscriptionId(rand::random());
        let (tx, rx) = mpsc::unbounded_channel();
        let end = Arc::new(Mutex::new(None));
        let deadline_at = match self.expiry {
            ExpirySpec::DeadlineMs(ms) => Some(Instant::now() + Duration::from_millis(ms)),
            ExpirySpec::LeaseMs(_) => None,
        };
        let spec = Spec {
            pattern,
            filter: self.filter,
            expiry: self.expiry,
            deadline_at,
            group: self.group,
            mode: self.mode,
        };
        let alo = spec.mode == DeliveryMode::AtLeastOnce;
        inner.subs().insert(
            id,
            SubState {
                spec,
                tx,
                end: end.clone(),
                nodes: HashSet::new(),
                // Every mode drops repeats by id: with replicas, a takeover delivers again
                // what the failed dispatcher may have delivered.
                seen: Some((SeenIds::new(SEEN_TTL_MS), SeenIds::new(SEEN_TTL_MS))),
                alo,
                renew_at: None,
                moving: false,
                move_again: false,
            },
        );
        if let Err(e) = place(&inner, id, Some(inner.config.retries_max)).await {
            if let Some(nodes) = inner.finish(id, EndReason::Unsubscribed) {
                for addr in nodes {
                    let req = inner.next_req();
                    let _ = inner
                        .request(&addr, req, Frame::Unsubscribe { req, sub: id })
                        .await;
                }
            }
            return Err(e);
        }
        Ok(Subscription {
            handle: id,
            rx,
            client: self.client,
            end,
            closed: false,
        })
    }
}

/// The matchers a subscription must live on now: the owner of its topic, or every matcher for
/// a pattern.
fn targets(inner: &Inner, spec: &Spec) -> Result<Vec<String>, ClientError> {
    let p = inner.placement()?;
    match spec.pattern.as_topic() {
        // Its topic's R owners, primary first.
        Some(t) => Ok(p.owners(&t).iter().map(|m| m.addr.clone()).collect()),
        None => Ok(p.members().iter().map(|m| m.addr.clone()).collect()),
    }
}

/// Subscribes on every target where the subscription is not live yet, retrying after
/// `not-owner` answers and lost connections: up to `retries_max` times, or with `None` until
/// it works, the client closes or the cluster refuses it for good.
pub(crate) async fn place(
    inner: &Arc<Inner>,
    id: SubscriptionId,
    retries_max: Option<u32>,
) -> Result<(), ClientError> {
    let may_retry = |attempt: u32| retries_max.is_none_or(|max| attempt <= max);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (spec, live) = {
            let subs = inner.subs();
            let Some(s) = subs.get(&id) else {
                return Err(ClientError::Closed);
            };
            (s.spec.clone(), s.nodes.clone())
        };
        if spec.deadline_at.is_some_and(|at| at <= Instant::now()) {
            // Its deadline passed while it was being moved: it ends as it would have.
            inner.finish(id, EndReason::Expired);
            return Ok(());
        }
        let targets = targets(inner, &spec)?;
        if targets.is_empty() {
            let e = ClientError::NoMatcher("the ring is empty".into());
            if may_retry(attempt) && inner.retryable(&e, attempt).await {
                continue;
            }
            return Err(e);
        }
        let mut failure = None;
        let exact = spec.pattern.as_topic().is_some();
        for (i, addr) in targets
            .iter()
            .enumerate()
            .filter(|(_, a)| !live.contains(*a))
        {
            match subscribe_on(inner, id, &spec, addr).await {
                Ok(expires_in_ms) => {
                    let filter_now = {
                        let mut subs = inner.subs();
                        let Some(s) = subs.get_mut(&id) else {
                            return Err(ClientError::Closed);
                        };
                        s.nodes.insert(addr.clone());
                        if matches!(spec.expiry, ExpirySpec::LeaseMs(_)) {
                            // Never later than it was: the copies placed before (on the
                            // other owners, patterns on other matchers) run on their own
                            // leases, and placements every few seconds (a ring flapping)
                            // must not postpone their renewal past their expiry.
                            let at = renew_at(expires_in_ms);
                            s.renew_at = Some(s.renew_at.map_or(at, |t| t.min(at)));
                        }
                        s.spec.filter.clone()
                    };
                    if filter_now != spec.filter {
                        // set_filter ran while this subscribe was in flight and did not see
                        // this matcher: bring it up to date.
                        let req = inner.next_req();
                        let frame = Frame::SetFilter {
                            req,
                            sub: id,
                            filter: filter_now,
                        };
                        if let Err(e) = inner.request(addr, req, frame).await {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                // A replica that cannot take it now (down, say) does not hold up the
                // subscription: the next ring change places it again.
                Err(e) if exact && i > 0 => {
                    debug!(sub = %id, node = %addr, error = %e, "replica not placed");
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        match failure {
            None => return Ok(()),
            Some(e) if may_retry(attempt) && inner.retryable(&e, attempt).await => continue,
            Some(e) => return Err(e),
        }
    }
}

async fn subscribe_on(
    inner: &Arc<Inner>,
    id: SubscriptionId,
    spec: &Spec,
    addr: &str,
) -> Result<u64, ClientError> {
    let req = inner.next_req();
    let expiry = match (spec.expiry, spec.deadline_at) {
        (ExpirySpec::DeadlineMs(_), Some(at)) => ExpirySpec::DeadlineMs(
            (at.saturating_duration_since(Instant::now()).as_millis() as u64).max(1),
        ),
        (expiry, _) => expiry,
    };
    let frame = Frame::Subscribe(Subscribe {
        req,
        id,
        pattern: spec.pattern.as_str().to_owned(),
        filter: spec.filter.clone(),
        expiry,
        group: spec.group.clone(),
        mode: spec.mode,
        ring_version: inner.ring_version(),
        credit: Some(inner.credit()),
    });
    match inner.request(addr, req, frame).await? {
        Frame::Subscribed { expires_in_ms, .. } => Ok(expires_in_ms),
        // Already live there (a retry whose first answer was lost): fine.
        Frame::Error(e) if e.code == ErrorCode::DuplicateSubscription => Ok(0),
        other => Err(refusal(other)),
    }
}

/// Places a subscription again in the background (its matcher went away, its topic moved, or
/// the ring changed). One task per subscription at a time; a request while it runs makes it
/// run again once done, so no change is missed.
pub(crate) fn spawn_replace(inner: Arc<Inner>, id: SubscriptionId) {
    {
        let mut subs = inner.subs();
        let Some(s) = subs.get_mut(&id) else { return };
        if s.moving {
            s.move_again = true;
            return;
        }
        s.moving = true;
    }
    let tasks = inner.tasks.clone();
    tasks.spawn(async move {
        // A subscription the application holds is not given up while the cluster is away.
        let cancel = inner.cancel.clone();
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = place(&inner, id, None) => r,
            };
            if let Err(e) = result {
                warn!(sub = %id, error = %e, "subscription could not be placed again; ended");
                inner.finish(id, EndReason::Shutdown);
                return;
            }
            let mut subs = inner.subs();
            let Some(s) = subs.get_mut(&id) else { return };
            if !std::mem::take(&mut s.move_again) {
                s.moving = false;
                return;
            }
        }
    });
}

/// After a ring change: every subscription not live on all the matchers it belongs on now is
/// placed there (a pattern on a matcher that joined, an exact topic whose owner changed), and
/// matchers that left the ring are forgotten. A copy on a former owner is left to end by
/// itself (`Moved` when that matcher sees the ring, or its lease), so that publishers still on
/// the old ring reach it meanwhile.
pub(crate) fn reconcile(inner: &Arc<Inner>) {
    let Ok(p) = inner.placement() else { return };
    if inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let members: HashSet<&str> = p.members().iter().map(|m| m.addr.as_str()).collect();
    let misplaced: Vec<SubscriptionId> = {
        let mut subs = inner.subs();
        subs.iter_mut()
            .filter_map(|(id, s)| {
                s.nodes.retain(|a| members.contains(a.as_str()));
                let wanted: Vec<String> = match s.spec.pattern.as_topic() {
                    Some(t) => p.owners(&t).iter().map(|m| m.addr.clone()).collect(),
                    None => p.members().iter().map(|m| m.addr.clone()).collect(),
                };
                wanted.iter().any(|a| !s.nodes.contains(a)).then_some(*id)
            })
            .collect()
    };
    for id in misplaced {
        spawn_replace(inner.clone(), id);
    }
}

/// When to renew a lease that expires in `expires_in_ms`: a third of the way in (bounded,
/// whatever a matcher answers).
fn renew_at(expires_in_ms: u64) -> Instant {
    let ms = (expires_in_ms / 3).min(sift_protocol::limits::LEASE_MAX_MS);
    Instant::now() + Duration::from_millis(ms)
}

/// When a renewal reached no matcher, how soon it is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// How often the renewal task looks for leases to renew.
const RENEW_SCAN: Duration = Duration::from_millis(250);

/// Renews every lease about a third of the way through it.
pub(crate) async fn renew_leases(inner: Weak<Inner>) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        let cancel = me.cancel.clone();
        let now = Instant::now();
        let due: Vec<(SubscriptionId, Vec<String>)> = me
            .subs()
            .iter_mut()
            .filter(|(_, s)| s.renew_at.is_some_and(|t| t <= now))
            .map(|(id, s)| {
                // Tried again soon unless a matcher answers with its lease: a renewal that
                // reaches nobody (its matchers gone, the placement elsewhere already live)
                // must not leave the lease to run out.
                s.renew_at = Some(now + RENEW_RETRY);
                (*id, s.nodes.iter().cloned().collect())
            })
            .collect();
        // All at once: a matcher that does not answer (crashed, paused) costs its own
        // renewals a request timeout, never the others'.
        let renewals = due.into_iter().flat_map(|(id, nodes)| {
            let me = me.clone();
            nodes.into_iter().map(move |addr| {
                let me = me.clone();
                async move {
                    let req = me.next_req();
                    match me.request(&addr, req, Frame::Renew { req, sub: id }).await {
                        Ok(Frame::Subscribed { expires_in_ms, .. }) => {
                            if let Some(s) = me.subs().get_mut(&id) {
                                s.renew_at = Some(renew_at(expires_in_ms));
                            }
                        }
                        // Lost there (expired, or the matcher restarted): place it again.
                        other => {
                            debug!(sub = %id, node = %addr, answer = ?other, "renewal failed; placing again");
                            if let Some(s) = me.subs().get_mut(&id) {
                                s.nodes.remove(&addr);
                            }
                            spawn_replace(me.clone(), id);
                        }
                    }
                }
            })
        });
        futures::future::join_all(renewals).await;
        drop(me);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RENEW_SCAN) => {}
        }
    }
}

/// A live subscription: a `Stream` of [`Notification`]s. Dropping it unsubscribes.
pub struct Subscription {
    handle: SubscriptionId,
    rx: mpsc::UnboundedReceiver<Notification>,
    client: Client,
    end: Arc<Mutex<Option<EndReason>>>,
    closed: bool,
}

impl Subscription {
    /// The subscription's handle.
    pub fn handle(&self) -> SubscriptionId {
        self.handle
    }

    /// Why the stream ended (expired, unsubscribed, slow consumer), once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the filter in place (see [`Client::set_filter`]).
    pub async fn set_filter(&self, filter: &str) -> Result<(), ClientError> {
        self.client.set_filter(self.handle, filter).await
    }

    /// Unsubscribes now; the stream ends after the notifications already received.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.closed = true;
        self.client.unsubscribe(self.handle).await
    }
}

impl Stream for Subscription {
    type Item = Notification;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Notification>> {
        let next = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(n)) = &next {
            if let Some(c) = &n.credit {
                c.consumed();
            }
        }
        next
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.closed || self.end_reason().is_some() {
            return;
        }
        let (client, handle) = (self.client.clone(), self.handle);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.unsubscribe(handle).await;
            });
        }
    }
}
