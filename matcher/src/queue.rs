//! The bounded queue between the matcher's core and one subscription's notification stream.
//! The core never waits on it: when it is full the slow-consumer policy decides, so a slow
//! subscriber cannot slow the publishers or the other subscribers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sift_matcher_core::node::Outlet;
use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::EndReason;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

impl Item {
    /// Encoded bytes this item holds.
    fn bytes(&self) -> usize {
        match self {
            Item::Notify { event, .. } => event.len(),
            Item::End(_) => 0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    /// Encoded bytes in `items`.
    bytes: usize,
    ended: bool,
}

pub(crate) use sift_matcher_core::node::Pushed;

#[derive(Debug)]
pub(crate) struct DeliveryQueue {
    state: Mutex<State>,
    ready: Notify,
    cap: usize,
    bytes_cap: usize,
    /// Cancelled when the subscription ends as a slow consumer: the stream writer stops
    /// waiting on a peer that does not read and resets the stream.
    aborted: CancellationToken,
}

impl DeliveryQueue {
    /// A queue of at most `cap` notifications and `bytes_cap` encoded bytes (one notification
    /// larger than that still fits in an empty queue).
    pub(crate) fn new(cap: usize, bytes_cap: usize) -> Arc<DeliveryQueue> {
        Arc::new(DeliveryQueue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            cap: cap.max(1),
            bytes_cap,
            aborted: CancellationToken::new(),
        })
    }

    /// Whether the subscription was ended as a slow consumer.
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.is_cancelled()
    }

    /// Resolves when the subscription was ended as a slow consumer.
    pub(crate) async fn aborted(&self) {
        self.aborted.cancelled().await
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
        let add = item.bytes();
        while !s.items.is_empty() && (s.items.len() >= self.cap || s.bytes + add > self.bytes_cap) {
            if !drop_oldest {
                return Pushed::Refused;
            }
            if let Some(old) = s.items.pop_front() {
                s.bytes -= old.bytes();
            }
            result = Pushed::DroppedOldest;
        }
        s.bytes += add;
        s.items.push_back(item);
        drop(s);
        self.ready.notify_one();
        result
    }

    /// Ends the stream after what is queued (or at once for `SlowConsumer`, which makes the
    /// queued notifications moot).
    pub(crate) fn end(&self, reason: EndReason) {
        let mut s = self.lock();
        if s.ended {
            return;
        }
        if matches!(reason, EndReason::SlowConsumer) {
            s.items.clear();
            s.bytes = 0;
            self.aborted.cancel();
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
                    let start = out.len();
                    out.extend(s.items.drain(..n));
                    s.bytes -= out[start..].iter().map(Item::bytes).sum::<usize>();
                    return;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// The node's view of a subscription's queue.
impl Outlet for DeliveryQueue {
    fn open(len_max: usize, bytes_max: usize) -> Arc<Self> {
        DeliveryQueue::new(len_max, bytes_max)
    }

    fn push(
        &self,
        delivery: u64,
        redelivered: bool,
        event: Arc<EncodedEvent>,
        drop_oldest: bool,
    ) -> Pushed {
        let item = Item::Notify {
            delivery,
            redelivered,
            event,
        };
        DeliveryQueue::push(self, item, drop_oldest)
    }

    fn end(&self, reason: EndReason) {
        DeliveryQueue::end(self, reason)
    }

    fn take_waiting(&self) -> Vec<Arc<EncodedEvent>> {
        let mut s = self.lock();
        let mut out = Vec::new();
        let mut kept = VecDeque::new();
        for item in s.items.drain(..) {
            match item {
                Item::Notify { event, .. } => out.push(event),
                end @ Item::End(_) => kept.push_back(end),
            }
        }
        s.items = kept;
        s.bytes = 0;
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sift_protocol::{Attributes, Event, EventId, PublisherId};

    fn item(seq: u64, payload: usize) -> Item {
        let event = Event {
            id: EventId {
                publisher: PublisherId(1),
                seq,
            },
            topic: "t".into(),
            attrs: Attributes::new(),
            payload: Bytes::from(vec![0u8; payload]),
        };
        Item::Notify {
            delivery: seq,
            redelivered: false,
            event: Arc::new(EncodedEvent::new(&event).unwrap()),
        }
    }

    fn seqs(q: &DeliveryQueue) -> Vec<u64> {
        q.lock()
            .items
            .iter()
            .map(|i| match i {
                Item::Notify { delivery, .. } => *delivery,
                Item::End(_) => 0,
            })
            .collect()
    }

    #[test]
    fn full_by_count_drops_the_oldest_or_refuses() {
        let q = DeliveryQueue::new(2, usize::MAX);
        assert_eq!(q.push(item(1, 0), true), Pushed::Queued);
        assert_eq!(q.push(item(2, 0), true), Pushed::Queued);
        assert_eq!(q.push(item(3, 0), true), Pushed::DroppedOldest);
        assert_eq!(seqs(&q), [2, 3]);
        assert_eq!(q.push(item(4, 0), false), Pushed::Refused);
        assert_eq!(seqs(&q), [2, 3]);
    }

    #[test]
    fn full_by_bytes_drops_as_many_as_needed() {
        let one = item(0, 1000).bytes();
        let q = DeliveryQueue::new(100, 3 * one);
        for s in 1..=3 {
            assert_eq!(q.push(item(s, 1000), true), Pushed::Queued);
        }
        // A notification twice the size evicts two.
        assert_eq!(q.push(item(4, 2000), true), Pushed::DroppedOldest);
        assert_eq!(seqs(&q), [3, 4]);
        assert!(q.lock().bytes <= 3 * one);
        assert_eq!(q.push(item(5, 1000), false), Pushed::Refused);
        // One larger than the whole budget still goes into an empty queue.
        let q = DeliveryQueue::new(100, 10);
        assert_eq!(q.push(item(1, 1000), false), Pushed::Queued);
        assert_eq!(q.push(item(2, 1000), false), Pushed::Refused);
    }

    #[tokio::test]
    async fn popping_gives_back_the_bytes() {
        let q = DeliveryQueue::new(100, usize::MAX);
        q.push(item(1, 500), true);
        q.push(item(2, 500), true);
        let mut out = vec![];
        q.pop_batch(1, &mut out).await;
        assert_eq!(out.len(), 1);
        assert_eq!(q.lock().bytes, item(2, 500).bytes());
        q.pop_batch(10, &mut out).await;
        assert_eq!(q.lock().bytes, 0);
    }

    #[test]
    fn a_slow_consumer_end_clears_and_aborts() {
        let q = DeliveryQueue::new(100, usize::MAX);
        q.push(item(1, 10), true);
        q.end(EndReason::Expired);
        assert!(!q.is_aborted(), "a normal end lets the queue drain");
        let q = DeliveryQueue::new(100, usize::MAX);
        q.push(item(1, 10), true);
        q.end(EndReason::SlowConsumer);
        assert!(q.is_aborted());
        assert_eq!(q.lock().bytes, 0);
        assert_eq!(q.push(item(2, 10), true), Pushed::Refused);
    }

    #[test]
    fn what_waits_is_taken_back_in_order_and_frees_the_room() {
        let q = DeliveryQueue::new(2, usize::MAX);
        q.push(item(1, 10), false);
        q.push(item(2, 10), false);
        assert_eq!(q.push(item(3, 10), false), Pushed::Refused);
        let taken: Vec<u64> = Outlet::take_waiting(&*q)
            .iter()
            .map(|e| e.decode().unwrap().id.seq)
            .collect();
        assert_eq!(taken, [1, 2]);
        assert_eq!(q.lock().bytes, 0);
        assert_eq!(q.push(item(3, 10), false), Pushed::Queued);
    }
}
