//! Matcher-to-matcher messages: liveness probes, replication of events to a topic's other
//! owners, and the server-side handoff of subscriptions when the ring changes.
//!
//! They travel as [`crate::Frame::Peer`] on a stream that opened with
//! [`crate::Frame::PeerHello`] and the cluster credential. Messages that need an answer carry a
//! sequence number (one counter per sending matcher and receiver) that the receiver echoes in
//! [`PeerMsg::Acked`] or [`PeerMsg::Refused`]; every such message is idempotent, so a sender
//! that lost its link sends the unanswered ones again.

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventId};
use crate::frame::{DeliveryMode, ErrorCode, GroupSpec, Ring, SubscriptionId};

/// One matcher-to-matcher message with the sender's epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerFrame {
    /// The version of the ring the sender serves with (its epoch). A receiver with a newer
    /// active ring answers with [`PeerMsg::Ring`], so that a matcher that missed a ring change
    /// (it was paused or cut off) learns it from its peers.
    pub epoch: u64,
    /// The message.
    pub msg: PeerMsg,
}

/// What matchers tell each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Liveness probe; answered with `Pong` carrying the same nonce.
    Ping {
        /// Echoed.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The probe's nonce.
        nonce: u64,
    },
    /// Keep these events until `dispatcher` releases them: it has matched and delivered them
    /// (or is about to), and if it dies the holder makes sure they are delivered. Answered
    /// with `Acked` once held.
    Hold {
        /// Sequence number, echoed in the answer.
        seq: u64,
        /// The matcher that delivers them.
        dispatcher: String,
        /// The events.
        events: Vec<Event>,
    },
    /// Deliver this event: the receiver is (or should be) its topic's dispatcher. Sent by a
    /// replica that a client reached instead of the primary, by a former owner that got a
    /// publish after its topic moved, and by a holder whose dispatcher died. Answered with
    /// `Acked` once the receiver has delivered it and its own replicas hold it.
    Dispatch {
        /// Sequence number, echoed in the answer.
        seq: u64,
        /// The event.
        event: Event,
        /// Deliver it even if the receiver has seen its id: the sender cannot tell which
        /// at-least-once subscribers acknowledged it (subscribers drop repeats by id).
        redeliver: bool,
    },
    /// The dispatcher no longer needs these events held: every at-least-once notification
    /// for them was acknowledged (or handed on). Answered with `Acked` (and sent again until
    /// then: a holder that never hears it keeps the events, and delivers them again when the
    /// dispatcher leaves).
    Release {
        /// Sequence number, echoed in the answer.
        seq: u64,
        /// The events.
        ids: Vec<EventId>,
    },
    /// Handoff for the announced ring `version`: hold these subscriptions (an exact topic
    /// that the ring moves to the receiver, every pattern subscription for a joining matcher)
    /// and forget `gone`; the receiver does not deliver for them until that ring is active.
    /// Answered with `Acked`.
    Handoff {
        /// Sequence number, echoed in the answer.
        seq: u64,
        /// The pending ring the handoff is for.
        version: u64,
        /// Subscriptions to hold (added or replaced).
        subs: Vec<SubImage>,
        /// Subscriptions to forget (unsubscribed or expired meanwhile).
        gone: Vec<SubscriptionId>,
    },
    /// The last of a handoff, once the ring is active: the at-least-once notifications the
    /// sender delivered and that were not acknowledged, which the receiver now redelivers.
    /// Answered with `Acked`.
    Tail {
        /// Sequence number, echoed in the answer.
        seq: u64,
        /// Per subscription, its image and its unacknowledged notifications.
        subs: Vec<SubTail>,
    },
    /// Step one of a handoff, next to `Handoff`: copies of the at-least-once notifications
    /// not yet acknowledged of subscriptions the announced ring `version` moves to the
    /// receiver (their topic's new owner). The receiver keeps them aside, without delivering:
    /// the sender's `Tail` at activation replaces them; if no tail comes within an ack timeout
    /// of the ring's activation (the sender died), the receiver redelivers the copies.
    /// Answered with `Acked`; the sender confirms the handoff only once they are taken.
    Unacked {
        /// Sequence number, echoed in the answer.
        seq: u64,
        /// The pending ring the copies are for.
        version: u64,
        /// Per subscription, its image and its unacknowledged notifications.
        subs: Vec<SubTail>,
    },
    /// The messages with these sequence numbers were taken.
    Acked {
        /// Their sequence numbers.
        seqs: Vec<u64>,
    },
    /// A message was refused; its effect did not happen.
    Refused {
        /// Its sequence number.
        seq: u64,
        /// Why, as an error code (`NotOwner` when the receiver's epoch says the sender is not
        /// the one to ask).
        code: ErrorCode,
        /// Details.
        message: String,
    },
    /// The receiver's ring is newer than the sender's epoch: here it is.
    Ring {
        /// The sender's active ring.
        ring: Ring,
    },
}

/// A subscription as it travels between matchers: enough to hold it and deliver to it
/// (the client attaches its connection at the new owner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubImage {
    /// The client's handle.
    pub id: SubscriptionId,
    /// Topic or pattern.
    pub pattern: String,
    /// Filter source text.
    pub filter: String,
    /// Group, if any.
    pub group: Option<GroupSpec>,
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// Its expiry as the client asked for it (a lease's length, for renewals at the
    /// receiver, or a hard deadline).
    pub expiry: crate::frame::ExpirySpec,
    /// Milliseconds it has left at the sender: the receiver keeps that much.
    pub remaining_ms: u64,
}

/// A subscription's unacknowledged notifications, handed over with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubTail {
    /// The subscription (so the receiver can hold it if it does not yet).
    pub image: SubImage,
    /// Its notifications not yet acknowledged, oldest first.
    pub unacked: Vec<TailItem>,
}

/// One unacknowledged notification in a [`SubTail`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailItem {
    /// The event.
    pub event: Event,
    /// True when it was sent to the subscriber at least once (false: it waited in the
    /// backlog for room in the window).
    pub sent: bool,
    /// Milliseconds until it is due for redelivery.
    pub due_in_ms: u64,
}
