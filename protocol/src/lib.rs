//! The Sift wire protocol and languages: topics and patterns, the filter language with its
//! reference evaluator, the event model, wire frames and their framing, and limits.
//!
//! Everything here is plain synchronous code with no I/O. See DESIGN.md for the contract this
//! crate implements to the letter.

pub mod codec;
pub mod event;
pub mod filter;
pub mod frame;
pub mod limits;
pub mod peer;
pub mod ring;
pub mod topic;
pub mod value;

pub use event::{Attributes, Event, EventError, EventId, PublisherId};
pub use filter::{Filter, FilterError, FilterErrorKind};
pub use frame::{DeliveryMode, ErrorCode, Frame, SubscriptionId};
pub use limits::Limits;
pub use topic::{Pattern, PatternToken, Topic, TopicError};
pub use value::Value;
#[cfg(feature = "net")]
pub mod net;
