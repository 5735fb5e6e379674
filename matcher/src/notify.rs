//! One notification stream per client connection: the connection's outbox knows its
//! subscriptions' queues, and one writer task takes turns at those with something to send
//! (round robin, each within its credit), coalescing what it took into one stream write per
//! flush, the way a TCP broker writes its buffer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hashbrown::HashMap;
use sift_protocol::frame::{Frame, SubscriptionId};
use sift_protocol::net::{FrameWriter, RESET_SLOW_CONSUMER};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::queue::{DeliveryQueue, Item, Turn};

/// Most items taken from one queue per turn, so that a busy subscription does not keep the
/// others waiting behind it on the stream.
const TURN_MAX: usize = 64;
/// What the writer has encoded is written once it holds this many bytes (or when no queue
/// has anything ready), so it buffers at most about this much beyond what the stream holds.
const BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct State {
    /// Queues with something sendable, in the order they became ready.
    ready: VecDeque<Arc<DeliveryQueue>>,
    /// The connection's subscriptions, for credit.
    subs: HashMap<SubscriptionId, Arc<DeliveryQueue>>,
    /// The writer task runs.
    writing: bool,
}

/// A client connection's notifications: what its writer task takes turns at.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    /// A subscription without credit was cut off as a slow consumer: if the stream is
    /// blocked, it is what blocks it.
    abort: AtomicBool,
    aborted: Notify,
    /// The connection is gone: the writer stops.
    closed: AtomicBool,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches subscription `sub`'s queue with `credit`; true the first time, when the
    /// caller starts the writer task.
    pub(crate) fn attach(
        self: &Arc<Self>,
        sub: SubscriptionId,
        queue: Arc<DeliveryQueue>,
        credit: Option<u32>,
    ) -> bool {
        let start = {
            let mut s = self.lock();
            s.subs.insert(sub, queue.clone());
            !std::mem::replace(&mut s.writing, true)
        };
        queue.attach(self, sub, credit);
        start
    }

    /// The client has room for `n` more notifications of `sub` (unknown ones are ignored:
    /// the subscription ended or moved).
    pub(crate) fn grant(&self, sub: SubscriptionId, n: u32) {
        let queue = self.lock().subs.get(&sub).cloned();
        if let Some(q) = queue {
            q.grant(n);
        }
    }

    /// `queue` has something sendable.
    pub(crate) fn ready(&self, queue: Arc<DeliveryQueue>) {
        self.lock().ready.push_back(queue);
        self.wake.notify_one();
    }

    /// The writer task ended: the next attach starts another (what is ready waits for it).
    fn stopped(&self) {
        self.lock().writing = false;
    }

    /// The connection is gone: its writer stops.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        self.aborted.notify_one();
    }

    pub(crate) fn abort_blocked(&self) {
        self.abort.store(true, Ordering::Release);
        self.aborted.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn ready_len(&self) -> usize {
        self.lock().ready.len()
    }

    fn take_ready(&self) -> VecDeque<Arc<DeliveryQueue>> {
        std::mem::take(&mut self.lock().ready)
    }

    /// `sub` ended here: its queue leaves the outbox (unless a newer one took its place).
    fn ended(&self, sub: SubscriptionId, queue: &Arc<DeliveryQueue>) {
        let mut s = self.lock();
        if s.subs.get(&sub).is_some_and(|q| Arc::ptr_eq(q, queue)) {
            s.subs.remove(&sub);
        }
    }
}

/// How a flush went.
enum Flushed {
    Written,
    /// The stream was blocked by a subscription without credit that was cut off: it was
    /// reset, and what comes next goes on a new one.
    Reset,
    /// The client stopped the stream (or it failed): what comes next goes on a new one.
    Stopped,
    /// The connection is gone or the matcher stops.
    Gone,
}

/// The connection's writer: runs until the connection closes or the matcher stops.
pub(crate) async fn run(
    conn: quinn::Connection,
    outbox: Arc<Outbox>,
    max_frame_bytes: usize,
    cancel: CancellationToken,
) {
    let mut items = Vec::with_capacity(TURN_MAX);
    // The stream is opened with the first notification, so an idle connection costs none.
    let mut writer: Option<FrameWriter> = None;
    loop {
        if outbox.closed.load(Ordering::Acquire) {
            break;
        }
        let mut ready = outbox.take_ready();
        if ready.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = outbox.wake.notified() => continue,
            }
        }
        while let Some(queue) = ready.pop_front() {
            items.clear();
            let Turn::Took { sub, more } = queue.take_turn(&outbox, TURN_MAX, &mut items) else {
                continue;
            };
            if writer.is_none() {
                match conn.open_uni().await {
                    Ok(send) => writer = Some(FrameWriter::new(send, max_frame_bytes)),
                    Err(e) => {
                        debug!(error = %e, "cannot open the notification stream");
                        return outbox.stopped();
                    }
                }
            }
            let Some(w) = writer.as_mut() else {
                return outbox.stopped();
            };
            for item in items.drain(..) {
                let pushed = match item {
                    Item::Notify {
                        delivery,
                        redelivered,
                        event,
                    } => w.push_notify(sub, delivery, redelivered, &event),
                    Item::End(reason) => {
                        outbox.ended(sub, &queue);
                        w.push(&Frame::Ended { sub, reason })
                    }
                };
                if let Err(e) = pushed {
                    debug!(%sub, error = %e, "notification not encoded");
                }
            }
            if more {
                // Round robin: its next turn comes after the others'.
                outbox.ready(queue);
            }
            if w.pending_bytes() >= BATCH_BYTES {
                match flush(&mut writer, &outbox, &cancel).await {
                    Flushed::Written | Flushed::Reset | Flushed::Stopped => {}
                    Flushed::Gone => return outbox.stopped(),
                }
            }
            // What became ready meanwhile joins this round.
            ready.extend(outbox.take_ready());
        }
        if writer.as_ref().is_some_and(|w| w.pending_bytes() > 0) {
            match flush(&mut writer, &outbox, &cancel).await {
                Flushed::Written | Flushed::Reset | Flushed::Stopped => {}
                Flushed::Gone => return outbox.stopped(),
            }
        }
    }
    outbox.stopped();
    if let Some(w) = writer {
        // The matcher stops (or the connection is gone): a peer that does not read must not
        // hold it up.
        let _ = w.finish().await;
    }
}

/// Writes what is pending, unless the connection goes or the matcher stops first (a peer
/// that does not read would hold the write forever). A stream blocked by a subscription
/// without credit that was cut off as a slow consumer is reset, so that its `Ended` and the
/// other subscriptions' notifications get through on a new one.
async fn flush(
    writer: &mut Option<FrameWriter>,
    outbox: &Outbox,
    cancel: &CancellationToken,
) -> Flushed {
    let Some(w) = writer.as_mut() else {
        return Flushed::Written;
    };
    let aborted = async {
        loop {
            let notified = outbox.aborted.notified();
            if outbox.closed.load(Ordering::Acquire) {
                return;
            }
            if outbox.abort.swap(false, Ordering::AcqRel) {
                return;
            }
            notified.await;
        }
    };
    let result = tokio::select! {
        biased;
        r = w.flush() => match r {
            Ok(()) => Flushed::Written,
            Err(e) => {
                debug!(error = %e, "notification stream closed; going on with a new one");
                Flushed::Stopped
            }
        },
        _ = cancel.cancelled() => Flushed::Gone,
        () = aborted => if outbox.closed.load(Ordering::Acquire) {
            Flushed::Gone
        } else {
            Flushed::Reset
        },
    };
    match result {
        Flushed::Reset => {
            if let Some(mut w) = writer.take() {
                let _ = w.stream().reset(RESET_SLOW_CONSUMER.into());
            }
            Flushed::Reset
        }
        Flushed::Written => {
            // A cut-off subscription while the stream flowed did not block it.
            outbox.abort.store(false, Ordering::Release);
            Flushed::Written
        }
        Flushed::Stopped => {
            *writer = None;
            Flushed::Stopped
        }
        Flushed::Gone => Flushed::Gone,
    }
}
