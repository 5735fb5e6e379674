//! What a gossip node tells the others about one of its subscriptions.

use crate::gossip::WireSize;
use crate::NewSubscription;
use serde::{Deserialize, Serialize};
use sift_protocol::frame::{ExpirySpec, GroupSpec};
use sift_protocol::{DeliveryMode, Filter, Pattern, SubscriptionId};

/// A subscription as replicated to every gossip node: enough to match events against it
/// there; notifications still go out from its home node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRecord {
    /// Topic or pattern.
    pub pattern: String,
    /// Filter source.
    pub filter: String,
    /// Group, if any.
    pub group: Option<GroupSpec>,
    /// Delivery mode (kept for groups' bookkeeping; delivery happens at home).
    pub mode: DeliveryMode,
    /// When the subscription lapses unless renewed, Unix milliseconds on its home node's
    /// clock.
    pub deadline_unix_ms: u64,
    /// When its home node took it (Unix ms). Two homes claiming one subscription id (a
    /// client that moved) are ordered by this, then by node id: the later one wins.
    pub since_unix_ms: u64,
}

impl WireSize for SubRecord {
    fn wire_size(&self) -> usize {
        self.pattern.len()
            + self.filter.len()
            + self.group.as_ref().map_or(1, |g| g.name.len() + 8)
            + 16
    }
}

impl SubRecord {
    /// A fingerprint of what matching depends on (pattern, filter, group, mode): two
    /// versions with the same one differ only in their deadline.
    pub fn shape(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let group = self.group.as_ref().map(|g| (&g.name, &g.key));
        (&self.pattern, &self.filter, group, self.mode).hash(&mut h);
        h.finish()
    }
}

/// A record that cannot become a subscription here.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The pattern does not parse.
    #[error("invalid pattern: {0}")]
    Pattern(String),
    /// The filter does not parse.
    #[error("invalid filter: {0}")]
    Filter(String),
}

impl SubRecord {
    /// The engine's subscription for this record, lapsing in `remaining_ms`.
    pub fn to_subscription(
        &self,
        id: SubscriptionId,
        remaining_ms: u64,
    ) -> Result<NewSubscription, RecordError> {
        let pattern =
            Pattern::parse(&self.pattern).map_err(|e| RecordError::Pattern(e.to_string()))?;
        let filter = Filter::parse(&self.filter).map_err(|e| RecordError::Filter(e.to_string()))?;
        Ok(NewSubscription {
            id,
            pattern,
            filter,
            expiry: ExpirySpec::DeadlineMs(remaining_ms.max(1)),
            group: self.group.clone(),
            mode: self.mode,
        })
    }
}
