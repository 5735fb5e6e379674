//! The engine's public vocabulary: time, subscriptions in and matches out, errors, config
//! and statistics.

use sift_protocol::frame::{ExpirySpec, GroupSpec};
use sift_protocol::limits::{LEASE_MAX_MS, TOPIC_BYTES_MAX};
use sift_protocol::{DeliveryMode, ErrorCode, Filter, Pattern, SubscriptionId};

/// A point in time in milliseconds on the shell's monotonic clock (any fixed origin).
/// The engine never reads a clock; every call that needs time takes a `Timestamp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This timestamp plus `ms` milliseconds (saturating).
    pub const fn plus_millis(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

/// A subscription to add.
#[derive(Clone, Debug)]
pub struct NewSubscription {
    /// The client-chosen handle; unique in the engine.
    pub id: SubscriptionId,
    /// Topic or pattern.
    pub pattern: Pattern,
    /// The filter ([`Filter::match_all`] for none).
    pub filter: Filter,
    /// Lease (renewable) or hard deadline, in milliseconds from now.
    pub expiry: ExpirySpec,
    /// Optional consumer group.
    pub group: Option<GroupSpec>,
    /// Delivery mode, reported with each match.
    pub mode: DeliveryMode,
}

impl NewSubscription {
    /// A subscription with a match-all filter, the default lease, no group, at-most-once.
    pub fn new(id: SubscriptionId, pattern: Pattern) -> NewSubscription {
        NewSubscription {
            id,
            pattern,
            filter: Filter::match_all(),
            expiry: ExpirySpec::LeaseMs(sift_protocol::limits::LEASE_DEFAULT_MS),
            group: None,
            mode: DeliveryMode::AtMostOnce,
        }
    }

    /// Sets the filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the expiry.
    pub fn expiry(mut self, expiry: ExpirySpec) -> Self {
        self.expiry = expiry;
        self
    }

    /// Joins a group, optionally with a key attribute for affinity.
    pub fn group(mut self, name: &str, key: Option<&str>) -> Self {
        self.group = Some(GroupSpec {
            name: name.to_owned(),
            key: key.map(str::to_owned),
        });
        self
    }

    /// Sets the delivery mode.
    pub fn mode(mut self, mode: DeliveryMode) -> Self {
        self.mode = mode;
        self
    }
}

/// One subscription matched by an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Match {
    /// The subscription.
    pub id: SubscriptionId,
    /// Its delivery mode.
    pub mode: DeliveryMode,
}

/// What the engine knows of a live subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionInfo<'a> {
    /// Topic or pattern.
    pub pattern: &'a str,
    /// When it expires unless renewed.
    pub deadline: Timestamp,
    /// True when renewals extend it (a lease), false for a hard deadline.
    pub renewable: bool,
    /// The lease length renewals extend it by, in milliseconds (0 for a hard deadline).
    pub lease_ms: u64,
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// Group name, if any.
    pub group: Option<&'a str>,
}

/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = TOPIC_BYTES_MAX;

/// Why a subscription was not added. Nothing changed in the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// A subscription with this id already exists.
    #[error("subscription {0} already exists")]
    Duplicate(SubscriptionId),
    /// The engine is at its subscription limit.
    #[error("the subscription limit of {max} is reached")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The lease or deadline is zero or longer than the maximum.
    #[error("expiry of {ms} ms is out of range (1 ..= {max} ms)")]
    InvalidExpiry {
        /// The requested expiry, in milliseconds.
        ms: u64,
        /// The maximum, in milliseconds.
        max: u64,
    },
    /// The group name or key attribute is invalid.
    #[error("invalid group: {0}")]
    InvalidGroup(String),
    /// The filters of this engine already use the most distinct attribute names it tracks.
    #[error("the filters use {max} distinct attribute names, the limit")]
    TooManyAttributeNames {
        /// The limit.
        max: usize,
    },
    /// The group exists with a different key attribute.
    #[error("group {group:?} uses key attribute {existing:?}; this subscription asked for {requested:?}")]
    GroupConflict {
        /// The group.
        group: String,
        /// The key its members use.
        existing: Option<String>,
        /// The key this subscription asked for.
        requested: Option<String>,
    },
}

impl SubscribeError {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            SubscribeError::Duplicate(_) => ErrorCode::DuplicateSubscription,
            SubscribeError::TooMany { .. } => ErrorCode::TooManySubscriptions,
            SubscribeError::InvalidExpiry { .. } => ErrorCode::InvalidExpiry,
            SubscribeError::InvalidGroup(_) => ErrorCode::GroupConflict,
            SubscribeError::GroupConflict { .. } => ErrorCode::GroupConflict,
            SubscribeError::TooManyAttributeNames { .. } => ErrorCode::LimitReached,
        }
    }
}

/// Why a renewal failed. Nothing changed in the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    /// No such subscription (it may have expired).
    #[error("unknown subscription {0}")]
    Unknown(SubscriptionId),
    /// The subscription has a hard deadline.
    #[error("subscription {0} has a hard deadline and cannot be renewed")]
    NotRenewable(SubscriptionId),
}

impl RenewError {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            RenewError::Unknown(_) => ErrorCode::UnknownSubscription,
            RenewError::NotRenewable(_) => ErrorCode::NotRenewable,
        }
    }
}

/// Why a filter was not replaced. Nothing changed in the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetFilterError {
    /// No such subscription.
    #[error("unknown subscription {0}")]
    Unknown(SubscriptionId),
    /// The new filter's attribute names do not fit in the name table.
    #[error("the filters use {max} distinct attribute names, the limit")]
    TooManyAttributeNames {
        /// The limit.
        max: usize,
    },
}

impl SetFilterError {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            SetFilterError::Unknown(_) => ErrorCode::UnknownSubscription,
            SetFilterError::TooManyAttributeNames { .. } => ErrorCode::LimitReached,
        }
    }
}

/// No subscription has this id. Nothing changed in the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown subscription {0}")]
pub struct UnknownSubscription(pub SubscriptionId);

/// Engine configuration. `EngineConfig::default()` draws a random hash seed;
/// [`EngineConfig::for_test`] fixes it so runs repeat exactly.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most live subscriptions. Bounds: 1 ..= 2^31 - 1.
    pub subscriptions_max: usize,
    /// Longest lease or hard deadline, in milliseconds. Bounds: 1 ..= 24 h.
    pub expiry_max_ms: u64,
    /// Seed of the index's value hashes (random by default, so users cannot aim collisions).
    pub hash_seed: u64,
    /// A topic or pattern with more subscriptions than this gets a filter index; below half
    /// of it the index is dropped again and the few filters are scanned. Default 16; 0
    /// indexes every bucket (tests use it to reach the index with tiny cases).
    pub index_min_len: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        use std::hash::{BuildHasher, RandomState};
        EngineConfig {
            subscriptions_max: 10_000_000,
            expiry_max_ms: LEASE_MAX_MS,
            hash_seed: RandomState::new().hash_one(0x5eed_u64),
            index_min_len: 16,
        }
    }
}

impl EngineConfig {
    /// Defaults with a fixed hash seed: the same operations give the same outputs in the same
    /// order, run after run.
    pub fn for_test() -> EngineConfig {
        EngineConfig {
            hash_seed: 0x5157_5eed,
            ..EngineConfig::default()
        }
    }
}

/// Counters and sizes the shell exports as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live subscriptions.
    pub subscriptions: usize,
    /// Exact topics with subscriptions.
    pub topics: usize,
    /// Distinct patterns with subscriptions.
    pub patterns: usize,
    /// Buckets (topics or patterns) large enough to be indexed.
    pub indexed_buckets: usize,
    /// Live consumer groups.
    pub groups: usize,
    /// Distinct regexes held.
    pub regexes: usize,
    /// Of those, how many are compiled (a regex is compiled the first time an event needs it).
    pub regexes_compiled: usize,
    /// Events matched since start.
    pub events: u64,
    /// Subscriptions considered (index hits and scans) since start.
    pub candidates: u64,
    /// Filter evaluations since start.
    pub evaluations: u64,
    /// Matches returned since start.
    pub matches: u64,
    /// Subscriptions expired since start.
    pub expired: u64,
}
