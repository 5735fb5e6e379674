//! The bounded queue between the matcher's core and one subscription's notifications on its
//! connection's shared stream. The core never waits on it: when it is full the slow-consumer
//! policy decides, so a slow subscriber cannot slow the publishers or the other subscribers.
//! Its credit (what the client has room for) decides how much the connection's writer may
//! take from it per turn, so one subscription the application does not read never holds up
//! the others on the stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use sift_matcher_core::node::Outlet;
use sift_protocol::codec::EncodedEvent;
use sift_protocol::frame::{EndReason, SubscriptionId};

use crate::notify::Outbox;

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
    /// Ended as a slow consumer.
    aborted: bool,
    /// Notifications the client has room for; `None`: no credit (the stream paces it).
    credit: Option<u64>,
    /// The connection it is attached to, and its subscription's id there; `None` while it
    /// is held for a client that has not come yet.
    outbox: Option<(Weak<Outbox>, SubscriptionId)>,
    /// In its outbox's ready list (or being written from).
    scheduled: bool,
}

impl State {
    /// The writer could take something now.
    fn sendable(&self) -> bool {
        match self.items.front() {
            None => false,
            Some(Item::End(_)) => true,
            // An ended subscription's last notifications go without credit.
            Some(Item::Notify { .. }) => self.ended || self.credit.is_none_or(|c| c > 0),
        }
    }
}

pub(crate) use sift_matcher_core::node::Pushed;

#[derive(Debug)]
pub(crate) struct DeliveryQueue {
    state: Mutex<State>,
    cap: usize,
    bytes_cap: usize,
    /// Itself, to put itself in its outbox's ready list.
    me: Weak<DeliveryQueue>,
}

/// What a writer's turn at a queue gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Items were moved out; `more`: it has more it could send now (it stays scheduled).
    Took { sub: SubscriptionId, more: bool },
    /// The queue belongs to another connection now (or to none): nothing taken.
    NotHere,
}

impl DeliveryQueue {
    /// A queue of at most `cap` notifications and `bytes_cap` encoded bytes (one notification
    /// larger than that still fits in an empty queue).
    pub(crate) fn new(cap: usize, bytes_cap: usize) -> Arc<DeliveryQueue> {
        Arc::new_cyclic(|me| DeliveryQueue {
            state: Mutex::new(State::default()),
            cap: cap.max(1),
            bytes_cap,
            me: me.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug elsewhere; the data stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts it in its outbox's ready list if it has something sendable and is not there yet.
    /// Returns the outbox to wake, once the lock is released.
    fn schedule(&self, s: &mut State) -> Option<Arc<Outbox>> {
        if s.scheduled || !s.sendable() {
            return None;
        }
        let outbox = s.outbox.as_ref()?.0.upgrade()?;
        s.scheduled = true;
        Some(outbox)
    }

    fn wake(&self, outbox: Option<Arc<Outbox>>) {
        if let (Some(outbox), Some(me)) = (outbox, self.me.upgrade()) {
            outbox.ready(me);
        }
    }

    /// Attaches the queue to connection `outbox` as its subscription `sub`, with `credit`
    /// (`None`: none). What waited in it (a subscription handed over before its client came)
    /// goes out from here.
    pub(crate) fn attach(&self, outbox: &Arc<Outbox>, sub: SubscriptionId, credit: Option<u32>) {
        let mut s = self.lock();
        let same = s
            .outbox
            .as_ref()
            .is_some_and(|(o, _)| std::ptr::eq(o.as_ptr(), Arc::as_ptr(outbox)));
        if !same {
            // Any place it had in another connection's ready list is void there.
            s.scheduled = false;
        }
        s.outbox = Some((Arc::downgrade(outbox), sub));
        s.credit = credit.map(u64::from);
        let wake = self.schedule(&mut s);
        drop(s);
        self.wake(wake);
    }

    /// The client has room for `n` more.
    pub(crate) fn grant(&self, n: u32) {
        let mut s = self.lock();
        if let Some(c) = &mut s.credit {
            *c = c.saturating_add(u64::from(n));
        }
        let wake = self.schedule(&mut s);
        drop(s);
        self.wake(wake);
    }

    /// Whether the subscription was ended as a slow consumer.
    #[cfg(test)]
    pub(crate) fn is_aborted(&self) -> bool {
        self.lock().aborted
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
        let wake = self.schedule(&mut s);
        drop(s);
        self.wake(wake);
        result
    }

    /// Ends the stream after what is queued (or at once for `SlowConsumer`, which makes the
    /// queued notifications moot). Only `SlowConsumer` clears what waits.
    pub(crate) fn end(&self, reason: EndReason) {
        let mut s = self.lock();
        if s.ended {
            return;
        }
        let slow = matches!(reason, EndReason::SlowConsumer);
        if slow {
            s.items.clear();
            s.bytes = 0;
            s.aborted = true;
        }
        s.items.push_back(Item::End(reason));
        s.ended = true;
        // A subscription without credit that was not read may be what blocks its
        // connection's stream: the writer may reset it, so that the end gets through.
        let blocking = slow && s.credit.is_none();
        let outbox = s.outbox.as_ref().and_then(|(o, _)| o.upgrade());
        let wake = self.schedule(&mut s);
        drop(s);
        if let (true, Some(o)) = (blocking, outbox) {
            o.abort_blocked();
        }
        self.wake(wake);
    }

    /// A writer's turn for connection `outbox`: moves up to `max` sendable items into `out`
    /// (each notification spends one credit; an end needs none).
    pub(crate) fn take_turn(&self, outbox: &Outbox, max: usize, out: &mut Vec<Item>) -> Turn {
        let mut s = self.lock();
        let sub = match &s.outbox {
            Some((o, sub)) if std::ptr::eq(o.as_ptr(), outbox) => *sub,
            _ => return Turn::NotHere,
        };
        let mut taken = 0;
        while taken < max && s.sendable() {
            let Some(item) = s.items.pop_front() else {
                break;
            };
            s.bytes -= item.bytes();
            let end = matches!(item, Item::End(_));
            if !end && !s.ended {
                if let Some(c) = &mut s.credit {
                    *c -= 1;
                }
            }
            out.push(item);
            taken += 1;
            if end {
                break;
            }
        }
        let more = s.sendable();
        s.scheduled = more;
        Turn::Took { sub, more }
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

    fn taken(q: &DeliveryQueue, outbox: &Outbox) -> (Vec<u64>, Turn) {
        let mut out = vec![];
        let turn = q.take_turn(outbox, 64, &mut out);
        let seqs = out
            .iter()
            .map(|i| match i {
                Item::Notify { delivery, .. } => *delivery,
                Item::End(_) => 0,
            })
            .collect();
        (seqs, turn)
    }

    const SUB: SubscriptionId = SubscriptionId(9);

    #[test]
    fn credit_bounds_what_a_turn_takes_and_a_grant_brings_it_back() {
        let outbox = Arc::new(Outbox::default());
        let q = DeliveryQueue::new(100, usize::MAX);
        for s in 1..=5 {
            q.push(item(s, 500), true);
        }
        assert!(
            outbox.attach(SUB, q.clone(), Some(2)),
            "the first attach starts a writer"
        );
        assert_eq!(outbox.ready_len(), 1, "what waited is ready at once");
        let (seqs, turn) = taken(&q, &outbox);
        assert_eq!(seqs, [1, 2]);
        assert_eq!(
            turn,
            Turn::Took {
                sub: SUB,
                more: false
            },
            "no credit left"
        );
        assert_eq!(
            q.lock().bytes,
            3 * item(3, 500).bytes(),
            "taken bytes are given back"
        );
        q.push(item(6, 500), true);
        assert_eq!(outbox.ready_len(), 1, "not ready again without credit");
        outbox.grant(SUB, 3);
        assert_eq!(outbox.ready_len(), 2, "a grant makes it ready");
        assert_eq!(taken(&q, &outbox).0, [3, 4, 5]);
    }

    #[test]
    fn an_end_and_what_precedes_it_go_without_credit() {
        let outbox = Arc::new(Outbox::default());
        let q = DeliveryQueue::new(100, usize::MAX);
        outbox.attach(SUB, q.clone(), Some(0));
        q.push(item(1, 10), true);
        q.push(item(2, 10), true);
        assert_eq!(outbox.ready_len(), 0);
        q.end(EndReason::Moved);
        assert_eq!(outbox.ready_len(), 1);
        let (seqs, turn) = taken(&q, &outbox);
        assert_eq!(seqs, [1, 2, 0], "the notifications, then the end");
        assert_eq!(
            turn,
            Turn::Took {
                sub: SUB,
                more: false
            }
        );
    }

    #[test]
    fn a_queue_that_moved_to_another_connection_is_not_written_by_the_old_one() {
        let old = Arc::new(Outbox::default());
        let new = Arc::new(Outbox::default());
        let q = DeliveryQueue::new(100, usize::MAX);
        old.attach(SUB, q.clone(), None);
        new.attach(SUB, q.clone(), None);
        q.push(item(1, 10), true);
        assert_eq!(taken(&q, &old).1, Turn::NotHere);
        assert_eq!(taken(&q, &new).0, [1]);
    }

    #[test]
    fn without_credit_a_turn_takes_up_to_its_most() {
        let outbox = Arc::new(Outbox::default());
        let q = DeliveryQueue::new(1000, usize::MAX);
        outbox.attach(SUB, q.clone(), None);
        for s in 1..=100 {
            q.push(item(s, 10), true);
        }
        let (seqs, turn) = taken(&q, &outbox);
        assert_eq!(seqs.len(), 64);
        assert_eq!(
            turn,
            Turn::Took {
                sub: SUB,
                more: true
            },
            "it stays scheduled"
        );
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
