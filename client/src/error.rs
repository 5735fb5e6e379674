//! The SDK's errors: what went wrong, in terms callers can match on.

use sift_protocol::frame::ErrorCode;
use sift_protocol::{FilterError, TopicError};

/// A failed client call. Each variant says whether retrying can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The topic or pattern is invalid (checked before sending; retrying will not help).
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// The filter is invalid (checked before sending; retrying will not help).
    #[error("invalid filter: {0}")]
    InvalidFilter(#[from] FilterError),
    /// A node refused the request with a typed code (see [`ErrorCode`]).
    #[error("refused ({code}): {message}")]
    Refused {
        /// The protocol error code.
        code: ErrorCode,
        /// The node's message.
        message: String,
    },
    /// No answer in time (the request may or may not have taken effect).
    #[error("timed out")]
    Timeout,
    /// The ring is empty or unknown: no matcher to send to (retry later).
    #[error("no matcher available: {0}")]
    NoMatcher(String),
    /// A connection could not be made or was lost (retry later).
    #[error("connection: {0}")]
    Connection(String),
    /// The configuration (certificates, addresses) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// The protocol error code, for refusals.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}
