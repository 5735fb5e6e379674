//! The bounded queue between the matcher's core and one subscription's notification stream.
//! The core never waits on it: when it is full the slow-consumer policy decides, so a slow
//! subscriber cannot slow the publishers or the other subscribers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::EndReason;
use tokio::sync::Notify;

/// One item for the notification stream.
#[derive(Debug)]
pub(crate) enum Item {
    Notify {
        delivery: u64,
        redelivered: bool,
        event: Arc<EncodedEvent>,
    },
    End(EndReason),
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    ended: bool,
}

/// What happened to a pushed notification.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued after dropping the oldest one.
    DroppedOldest,
    /// Not queued: the queue is full (the caller ends the subscription) or already ended.
    Refused,
}

#[derive(Debug)]
pub(crate) struct DeliveryQueue {
    state: Mutex<State>,
    ready: Notify,
    cap: usize,
}

impl DeliveryQueue {
    pub(crate) fn new(cap: usize) -> Arc<DeliveryQueue> {
        Arc::new(DeliveryQueue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            cap: cap.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug elsewhere; the data stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a notification; when full, drops the oldest if `drop_oldest`, else refuses.
    pub(crate) fn push(&self, item: Item, drop_oldest: bool) -> Pushed {
        let mut s = self.lock();
        if s.ended {
            return Pushed::Refused;
        }
        let mut result = Pushed::Queued;
        if s.items.len() >= self.cap {
            if !drop_oldest {
                return Pushed::Refused;
            }
            s.items.pop_front();
            result = Pushed::DroppedOldest;
        }
        s.items.push_back(item);
        drop(s);
        self.ready.notify_one();
        result
    }

    /// Ends the stream after what is queued (or at once for `Moved` and `SlowConsumer`, which
    /// make the queued notifications moot).
    pub(crate) fn end(&self, reason: EndReason) {
        let mut s = self.lock();
        if s.ended {
            return;
        }
        if matches!(reason, EndReason::SlowConsumer) {
            s.items.clear();
        }
        s.items.push_back(Item::End(reason));
        s.ended = true;
        drop(s);
        self.ready.notify_one();
    }

    /// Waits for items and moves up to `max` of them into `out`.
    pub(crate) async fn pop_batch(&self, max: usize, out: &mut Vec<Item>) {
        loop {
            {
                let mut s = self.lock();
                if !s.items.is_empty() {
                    let n = s.items.len().min(max);
                    out.extend(s.items.drain(..n));
                    return;
                }
            }
            self.ready.notified().await;
        }
    }
}
