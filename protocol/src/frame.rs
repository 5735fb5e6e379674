//! Wire frames: every message a client, matcher or coordinator sends.
//!
//! Requests travel on bidirectional streams and carry a [`RequestId`] that the answer echoes;
//! notifications travel on server-opened streams, one per subscription. Only these types
//! derive `Serialize`; the rest of the code works on parsed domain types.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{Event, EventId};

/// Correlates a request with its answer; chosen by the requester, unique per connection.
pub type RequestId = u64;

/// A subscription's handle, chosen by the client (random 64 bits) so that it stays the same
/// when the subscription moves between matchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubscriptionId(pub u64);

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How notifications of a subscription are delivered.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum DeliveryMode {
    /// No acks; a notification may be lost (like core NATS). The default.
    #[default]
    AtMostOnce,
    /// The subscriber acks each notification; unacked ones are redelivered.
    AtLeastOnce,
}

/// How long a subscription lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpirySpec {
    /// A lease of this many milliseconds, renewed by the client.
    LeaseMs(u64),
    /// A hard deadline this many milliseconds from now; never renewed.
    DeadlineMs(u64),
}

/// A consumer group: each matching event goes to exactly one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// The group's name.
    pub name: String,
    /// Optional key attribute: events with the same value go to the same member while the
    /// group's membership is stable.
    pub key: Option<String>,
}

/// Subscribe request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Request id.
    pub req: RequestId,
    /// The handle the client chose.
    pub id: SubscriptionId,
    /// Topic or pattern.
    pub pattern: String,
    /// Filter text; empty matches all.
    pub filter: String,
    /// Lease or hard deadline.
    pub expiry: ExpirySpec,
    /// Optional consumer group.
    pub group: Option<GroupSpec>,
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// The ring version the client routed with.
    pub ring_version: u64,
    /// Flow control: how many notifications the matcher may send this subscription before
    /// the client grants more with [`Frame::Credit`]. `None`: no per-subscription credit
    /// (the connection's notification stream paces it, and one such subscription that is not
    /// read can hold up the others on its connection).
    #[serde(default)]
    pub credit: Option<u32>,
}

/// Publish request. With `req = Some(..)` the matcher answers [`Frame::PublishAck`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Publish {
    /// Request id when the publish is acknowledged; `None` for fire-and-forget.
    pub req: Option<RequestId>,
    /// The ring version the client routed with.
    pub ring_version: u64,
    /// The event.
    pub event: Event,
}

/// A notification: one matching event for one subscription.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notify {
    /// The subscription.
    pub sub: SubscriptionId,
    /// Delivery sequence within the subscription; acks name it.
    pub delivery: u64,
    /// True when this is a redelivery of an unacked notification.
    pub redelivered: bool,
    /// The event.
    pub event: Event,
}

/// Why a subscription ended (sent on its notification stream before it closes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The lease or deadline ran out.
    Expired,
    /// The client unsubscribed.
    Unsubscribed,
    /// The subscriber was too slow and the policy is to disconnect.
    SlowConsumer,
    /// The node is shutting down.
    Shutdown,
    /// The topic moved to another matcher (ring change); the client subscribes again there.
    Moved,
}

/// One matcher in the ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMember {
    /// Stable node identity (hashed onto the ring).
    pub id: String,
    /// Where clients reach it (`host:port`).
    pub addr: String,
    /// Relative weight; virtual nodes are proportional to it.
    pub weight: u32,
}

/// The ring as the coordinator publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// Only grows.
    pub version: u64,
    /// Members, ordered by id.
    pub members: Vec<RingMember>,
    /// The replication factor R: an exact topic's subscriptions live on its R distinct
    /// successive owners (fewer when the ring has fewer members). At least 1.
    pub replicas: u32,
}

impl Ring {
    /// A ring of `members` at `version` with one owner per topic.
    pub fn new(version: u64, members: Vec<RingMember>) -> Ring {
        Ring {
            version,
            members,
            replicas: 1,
        }
    }

    /// The empty ring a node starts with before it hears from the coordinator (version 0).
    pub fn empty() -> Ring {
        Ring::new(0, Vec::new())
    }

    /// True when `id` is a member.
    pub fn contains(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }
}

/// A matcher's state as the coordinator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Heartbeating and in the ring.
    Alive,
    /// Heartbeating, taken out of the ring by an operator.
    Draining,
}

/// One matcher in an admin listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Identity, address and weight.
    pub member: RingMember,
    /// Alive or draining.
    pub state: NodeState,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The request it answers, when it answers one.
    pub req: Option<RequestId>,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// With [`ErrorCode::NotOwner`]: the ring version the node has.
    pub ring_version: Option<u64>,
}

/// Every frame of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Subscribe (client → matcher).
    Subscribe(Subscribe),
    /// Unsubscribe (client → matcher).
    Unsubscribe {
        /// Request id.
        req: RequestId,
        /// The subscription.
        sub: SubscriptionId,
    },
    /// Renew a lease (client → matcher).
    Renew {
        /// Request id.
        req: RequestId,
        /// The subscription.
        sub: SubscriptionId,
    },
    /// Replace a subscription's filter in place (client → matcher).
    SetFilter {
        /// Request id.
        req: RequestId,
        /// The subscription.
        sub: SubscriptionId,
        /// The new filter text.
        filter: String,
    },
    /// Publish (client → matcher).
    Publish(Publish),
    /// Acknowledged publish accepted (matcher → client).
    PublishAck {
        /// The request answered.
        req: RequestId,
        /// The event's id.
        event: EventId,
    },
    /// A request succeeded (any → any).
    Ok {
        /// The request answered.
        req: RequestId,
    },
    /// A subscription is live (matcher → client).
    Subscribed {
        /// The request answered.
        req: RequestId,
        /// The subscription.
        sub: SubscriptionId,
        /// Milliseconds until it expires unless renewed.
        expires_in_ms: u64,
    },
    /// A notification (matcher → subscriber).
    Notify(Notify),
    /// Acknowledge a notification (subscriber → matcher, at-least-once).
    Ack {
        /// The subscription.
        sub: SubscriptionId,
        /// The delivery acknowledged.
        delivery: u64,
        /// The event acknowledged: what the matcher goes by, since a notification handed
        /// over from another matcher keeps its event but not its delivery number.
        event: EventId,
    },
    /// More notifications the matcher may send subscription `sub` on this connection
    /// (subscriber → matcher; the subscription's client-side buffer has room for them).
    Credit {
        /// The subscription.
        sub: SubscriptionId,
        /// Notifications granted, on top of what is left.
        n: u32,
    },
    /// A subscription ended (matcher → subscriber).
    Ended {
        /// The subscription.
        sub: SubscriptionId,
        /// Why.
        reason: EndReason,
    },
    /// Ask for the current ring (client or matcher → coordinator).
    RingFetch {
        /// Request id.
        req: RequestId,
    },
    /// The ring: an answer to `RingFetch` (with `req`) or a pushed update (without).
    Ring {
        /// The request answered, if any.
        req: Option<RequestId>,
        /// The ring.
        ring: Ring,
    },
    /// An error.
    Error(ErrorFrame),
    /// First frame of a client connection: optional token for authentication.
    Hello {
        /// Request id.
        req: RequestId,
        /// The shared secret, if the node requires one.
        token: Option<String>,
    },
    /// A matcher joins (or updates its address or weight) (matcher → coordinator). The
    /// coordinator answers with [`Frame::Cluster`] and pushes every later change on the same
    /// stream, which then carries the matcher's heartbeats and confirmations.
    Register {
        /// Request id.
        req: RequestId,
        /// Identity, address and weight.
        member: RingMember,
        /// The ring this matcher serves with, if it has one: a restarted coordinator adopts
        /// the newest of these instead of building a ring from scratch.
        active: Option<Ring>,
        /// The matcher is in lame-duck drain: it stays out of the ring.
        draining: bool,
    },
    /// The cluster's rings (coordinator → matcher, on its register stream): the active ring,
    /// and the next one while a transition is under way (announced, not yet active: old
    /// owners hand their moving topics over, then confirm).
    Cluster {
        /// The ring clients route by.
        active: Ring,
        /// The announced next ring, if a transition is under way.
        pending: Option<Ring>,
        /// In the answer to `Register` only: the coordinator takes this matcher for one that
        /// restarted while still in the ring (it registered without a ring of its own while
        /// the rings have it). It lost what it held, so it serves nothing at the active ring
        /// until the coordinator has moved it out and back in.
        #[serde(default)]
        restarted: bool,
    },
    /// A matcher has handed over everything the pending ring `version` moves away from it
    /// and its receivers confirmed it (matcher → coordinator, on its register stream).
    Confirm {
        /// Request id.
        req: RequestId,
        /// The matcher's id.
        node: String,
        /// The pending ring's version.
        version: u64,
    },
    /// First frame of a matcher-to-matcher stream: who is speaking and the cluster
    /// credential. Peer frames are taken only on streams that presented it.
    PeerHello {
        /// Request id.
        req: RequestId,
        /// The sending matcher's id.
        node: String,
        /// The cluster token.
        token: Option<String>,
    },
    /// A matcher-to-matcher message (handoff, replication, liveness), no answer frame: the
    /// answers are peer messages themselves.
    Peer(crate::peer::PeerFrame),
    /// A matcher is alive (matcher → coordinator, on its register stream).
    Heartbeat {
        /// Request id.
        req: RequestId,
        /// The matcher's id.
        node: String,
    },
    /// Send the ring now and after every change, on this stream (any → coordinator).
    Watch {
        /// Request id.
        req: RequestId,
    },
    /// List the matchers (operator → coordinator).
    AdminNodes {
        /// Request id.
        req: RequestId,
    },
    /// The matchers (coordinator → operator).
    Nodes {
        /// The request answered.
        req: RequestId,
        /// Every registered matcher.
        nodes: Vec<NodeStatus>,
    },
    /// Take a matcher out of the ring; it keeps serving until its topics have moved
    /// (operator → coordinator).
    AdminDrain {
        /// Request id.
        req: RequestId,
        /// The matcher's id.
        node: String,
    },
    /// Forget a matcher (operator → coordinator).
    AdminRemove {
        /// Request id.
        req: RequestId,
        /// The matcher's id.
        node: String,
    },
    /// Ask a matcher or gossip node for its counters (operator → node).
    StatsFetch {
        /// Request id.
        req: RequestId,
    },
    /// A node's counters, by name (node → operator).
    Stats {
        /// The request answered.
        req: RequestId,
        /// Counter name and value.
        counters: Vec<(String, u64)>,
    },
    /// Membership (SWIM) data between gossip nodes; opaque to the protocol.
    Swim {
        /// The membership layer's packet.
        data: Bytes,
    },
    /// A dissemination message between gossip nodes (MessagePack of
    /// `sift_matcher_core::gossip::Message`), no answer.
    Gossip {
        /// The sending node's gossip id.
        from: u64,
        /// The encoded message.
        data: Bytes,
    },
    /// An event a gossip node matched against subscriptions held at the receiving node
    /// (gossip node → gossip node), no answer.
    Forward {
        /// The receiver's subscriptions the event goes to.
        subs: Vec<SubscriptionId>,
        /// The event.
        event: Event,
    },
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $n:expr,)*) => {
        /// Typed error codes. Unknown codes from a newer peer decode as [`ErrorCode::Other`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
            /// A code this version does not know.
            Other(u16),
        }

        impl ErrorCode {
            /// The numeric code on the wire.
            pub fn as_u16(self) -> u16 {
                match self { $(ErrorCode::$name => $n,)* ErrorCode::Other(n) => n }
            }

            /// The code for a number.
            pub fn from_u16(n: u16) -> ErrorCode {
                match n { $($n => ErrorCode::$name,)* n => ErrorCode::Other(n) }
            }
        }
    };
}

error_codes! {
    /// The frame could not be decoded.
    Malformed = 1,
    /// The frame's protocol version is not supported.
    UnsupportedVersion = 2,
    /// The frame is larger than the node accepts.
    FrameTooLarge = 3,
    /// The topic or pattern is invalid.
    InvalidTopic = 10,
    /// The filter does not parse or breaks a limit.
    InvalidFilter = 11,
    /// The event's attributes break a rule or limit.
    InvalidEvent = 12,
    /// The payload is larger than the limit.
    PayloadTooLarge = 13,
    /// The expiry is zero or longer than the maximum.
    InvalidExpiry = 14,
    /// The matcher id is not registered.
    UnknownNode = 26,
    /// The subscription handle is not known here.
    UnknownSubscription = 20,
    /// A subscription with this handle already exists.
    DuplicateSubscription = 21,
    /// The node's subscription limit is reached.
    TooManySubscriptions = 22,
    /// The subscription has a hard deadline and cannot be renewed.
    NotRenewable = 23,
    /// The group's key attribute differs from the one its members use.
    GroupConflict = 24,
    /// A node-wide limit other than the subscription count is reached.
    LimitReached = 25,
    /// This node does not own the topic at its ring version; refresh the ring and retry.
    NotOwner = 30,
    /// Authentication failed.
    Unauthorized = 40,
    /// The client may not publish or subscribe to this topic.
    Forbidden = 41,
    /// The subscriber is too slow.
    SlowConsumer = 50,
    /// The node is overloaded; retry later.
    Overloaded = 51,
    /// The node is shutting down.
    ShuttingDown = 52,
    /// A bug on the node.
    Internal = 99,
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(ErrorCode::from_u16)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Other(n) => write!(f, "error {n}"),
            known => write!(f, "{known:?}"),
        }
    }
}
