//! The event model: topic, attributes, payload and id, with the limits of DESIGN.md.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::topic::{Topic, TopicError};
use crate::value::Value;

/// An event's attributes: name → value, ordered by name.
pub type Attributes = BTreeMap<String, Value>;

/// The random 128-bit id a client connection chooses once and stamps on its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublisherId(pub u128);

/// An event's id: the publisher plus a sequence number counting from 1 per publisher.
/// Matchers drop acknowledged publishes whose id they have already seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId {
    /// Who published it.
    pub publisher: PublisherId,
    /// The publisher's sequence number, from 1.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}-{}", self.publisher.0, self.seq)
    }
}

/// An event as it travels on the wire. The topic is kept as text here and checked with
/// [`Event::validate`] when a node receives it, so that a bad topic gets a typed error reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The event's id.
    pub id: EventId,
    /// The topic (never a pattern).
    pub topic: String,
    /// The attributes filters are evaluated against.
    pub attrs: Attributes,
    /// The opaque payload.
    pub payload: Bytes,
}

/// Why an event was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The topic is invalid (or is a pattern).
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The payload is larger than the limit.
    #[error("payload is {len} bytes; the limit is {max} bytes")]
    PayloadTooLarge {
        /// Payload size, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// More attributes than the limit.
    #[error("event has {count} attributes; the limit is {max}")]
    TooManyAttrs {
        /// How many the event has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An attribute name that is not `[A-Za-z_][A-Za-z0-9_.-]*` or is too long.
    #[error("attribute name {name:?} is invalid: {reason}")]
    AttrName {
        /// The name (cut to 64 bytes for the message).
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A string value longer than the limit.
    #[error("attribute {name:?} has a {len}-byte string; the limit is {max} bytes")]
    AttrValueTooLong {
        /// The attribute.
        name: String,
        /// The value's length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
}

/// Checks an attribute name against the filter grammar's `name` rule and the length limit.
pub fn check_attr_name(name: &str, max_bytes: usize) -> Result<(), EventError> {
    let bad = |reason: String| {
        let mut shown = name.to_owned();
        if shown.len() > 64 {
            let mut cut = 64;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
        }
        Err(EventError::AttrName {
            name: shown,
            reason,
        })
    };
    if name.len() > max_bytes {
        return bad(format!(
            "{} bytes long; the limit is {max_bytes} bytes",
            name.len()
        ));
    }
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return bad("it is empty".into()),
        Some(b) if !(b.is_ascii_alphabetic() || b == b'_') => {
            return bad("it must start with a letter or '_'".into())
        }
        _ => {}
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return bad("only letters, digits, '_', '.' and '-' are allowed".into());
    }
    Ok(())
}

impl Event {
    /// Checks the event against `limits` and returns its parsed topic.
    pub fn validate(&self, limits: &Limits) -> Result<Topic, EventError> {
        let topic = Topic::parse(&self.topic)?;
        if self.payload.len() > limits.payload_bytes_max {
            return Err(EventError::PayloadTooLarge {
                len: self.payload.len(),
                max: limits.payload_bytes_max,
            });
        }
        if self.attrs.len() > limits.attrs_max {
            return Err(EventError::TooManyAttrs {
                count: self.attrs.len(),
                max: limits.attrs_max,
            });
        }
        for (name, value) in &self.attrs {
            check_attr_name(name, limits.attr_name_bytes_max)?;
            if let Value::Str(s) = value {
                if s.len() > limits.attr_string_bytes_max {
                    return Err(EventError::AttrValueTooLong {
                        name: name.clone(),
                        len: s.len(),
                        max: limits.attr_string_bytes_max,
                    });
                }
            }
        }
        Ok(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let mut attrs = Attributes::new();
        attrs.insert("region".into(), Value::Str("eu".into()));
        Event {
            id: EventId {
                publisher: PublisherId(7),
                seq: 1,
            },
            topic: "orders.eu".into(),
            attrs,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits::default();
        assert!(event().validate(&limits).is_ok());

        let mut e = event();
        e.topic = "orders.*".into();
        assert!(matches!(e.validate(&limits), Err(EventError::Topic(_))));

        let mut e = event();
        e.payload = Bytes::from(vec![0; limits.payload_bytes_max + 1]);
        assert!(matches!(
            e.validate(&limits),
            Err(EventError::PayloadTooLarge { .. })
        ));

        let mut e = event();
        for i in 0..64 {
            e.attrs.insert(format!("a{i}"), Value::Int(i));
        }
        assert!(matches!(
            e.validate(&limits),
            Err(EventError::TooManyAttrs { count: 65, .. })
        ));

        let mut e = event();
        e.attrs.insert("bad name".into(), Value::Int(1));
        assert!(matches!(
            e.validate(&limits),
            Err(EventError::AttrName { .. })
        ));
        let mut e = event();
        e.attrs.insert("n".repeat(129), Value::Int(1));
        assert!(matches!(
            e.validate(&limits),
            Err(EventError::AttrName { .. })
        ));

        let mut e = event();
        e.attrs.insert("s".into(), Value::Str("x".repeat(4097)));
        assert!(matches!(
            e.validate(&limits),
            Err(EventError::AttrValueTooLong { .. })
        ));
    }

    #[test]
    fn attr_names_follow_the_grammar() {
        for ok in ["a", "_x", "a.b-c_d9"] {
            assert!(check_attr_name(ok, 128).is_ok(), "{ok}");
        }
        for bad in ["", "9a", "-a", "a b", "é"] {
            assert!(check_attr_name(bad, 128).is_err(), "{bad}");
        }
    }
}
