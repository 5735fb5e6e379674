//! Framing: `[length: u32 BE][version: u16 BE][MessagePack body]`.
//!
//! Pure functions over byte buffers. "Need more bytes" is `Ok(None)`, not an error; the length
//! is checked against the maximum before anything is allocated; trailing bytes inside a frame
//! are an error.

use serde::Deserialize;

use crate::frame::{ErrorCode, Frame};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Bytes of the version field (counted in the length).
pub const VERSION_BYTES: usize = 2;

/// Why a frame could not be decoded. The connection can go on after `Malformed` and
/// `UnsupportedVersion` (the frame's extent is known); after `TooLarge` the reader should
/// close the stream, since skipping the frame means reading it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announces more than the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced length, in bytes.
        len: usize,
        /// The maximum, in bytes.
        max: usize,
    },
    /// The frame's version is not [`PROTOCOL_VERSION`].
    #[error("protocol version {version} is not supported (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        version: u16,
        /// Total bytes of the frame, to skip it.
        frame_bytes: usize,
    },
    /// The body is not a valid frame.
    #[error("malformed frame: {message}")]
    Malformed {
        /// What the decoder saw.
        message: String,
        /// Total bytes of the frame, to skip it.
        frame_bytes: usize,
    },
}

impl DecodeError {
    /// The error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::Malformed { .. } => ErrorCode::Malformed,
        }
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would exceed the maximum; nothing was appended.
    #[error("encoded frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The encoded length, in bytes.
        len: usize,
        /// The maximum, in bytes.
        max: usize,
    },
    /// Serialization failed (a bug: every `Frame` is serializable).
    #[error("cannot encode frame: {0}")]
    Serialize(#[from] rmp_serde::encode::Error),
}

/// Appends the encoding of `frame` to `out`. On error `out` is left as it was.
pub fn encode(frame: &Frame, max_bytes: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    if let Err(e) = rmp_serde::encode::write(out, frame) {
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - start - LENGTH_BYTES;
    if len > max_bytes || u32::try_from(len).is_err() {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            max: max_bytes,
        });
    }
    // Infallible: checked above.
    let prefix = (len as u32).to_be_bytes();
    out[start..start + LENGTH_BYTES].copy_from_slice(&prefix);
    Ok(())
}

/// Encodes `frame` into a new buffer.
pub fn encode_to_vec(frame: &Frame, max_bytes: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode(frame, max_bytes, &mut out)?;
    Ok(out)
}

/// An event encoded once (MessagePack), to be sent to many subscriptions without encoding it
/// again for each: see [`encode_notify`].
#[derive(Clone, Debug)]
pub struct EncodedEvent {
    bytes: bytes::Bytes,
}

impl EncodedEvent {
    /// Encodes `event`.
    pub fn new(event: &crate::event::Event) -> Result<EncodedEvent, EncodeError> {
        Ok(EncodedEvent {
            bytes: rmp_serde::to_vec(event)?.into(),
        })
    }

    /// Bytes of the encoded event.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty encoding (never, for a real event).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The event back, decoded (to hand an unacknowledged notification to another matcher).
    pub fn decode(&self) -> Result<crate::event::Event, rmp_serde::decode::Error> {
        rmp_serde::from_slice(&self.bytes)
    }
}

/// Appends a `Frame::Notify` for `event` to `out`: byte for byte what [`encode`] produces for
/// the same frame, without re-encoding the event. On error `out` is left as it was.
pub fn encode_notify(
    sub: crate::frame::SubscriptionId,
    delivery: u64,
    redelivered: bool,
    event: &EncodedEvent,
    max_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    // {"Notify": [sub, delivery, redelivered, event]}, as rmp-serde writes the enum variant.
    let head = rmp::encode::write_map_len(out, 1)
        .and_then(|_| rmp::encode::write_str(out, "Notify").map_err(|_| unreachable_write()))
        .and_then(|_| rmp::encode::write_array_len(out, 4))
        .map(|_| ());
    let body = head
        .and_then(|_| rmp::encode::write_uint(out, sub.0).map(|_| ()))
        .and_then(|_| rmp::encode::write_uint(out, delivery).map(|_| ()))
        .and_then(|_| rmp::encode::write_bool(out, redelivered).map_err(|_| unreachable_write()));
    if body.is_err() {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len: 0,
            max: max_bytes,
        });
    }
    out.extend_from_slice(&event.bytes);
    let len = out.len() - start - LENGTH_BYTES;
    if len > max_bytes || u32::try_from(len).is_err() {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            max: max_bytes,
        });
    }
    out[start..start + LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Writing to a `Vec` cannot fail; this stands in for the error type where one is required.
fn unreachable_write() -> rmp::encode::ValueWriteError {
    rmp::encode::ValueWriteError::InvalidMarkerWrite(std::io::Error::other("write to a Vec failed"))
}

/// The total length (prefix included) of the frame at the start of `buf`, once the prefix is
/// in; refuses a length above `max_bytes` at once.
pub fn frame_extent(buf: &[u8], max_bytes: usize) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.get(..LENGTH_BYTES) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; LENGTH_BYTES];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max_bytes {
        return Err(DecodeError::TooLarge {
            len,
            max: max_bytes,
        });
    }
    Ok(Some(LENGTH_BYTES + len))
}

/// Decodes the frame at the start of `buf`. Returns the frame and the bytes it used, or
/// `Ok(None)` when `buf` does not hold a whole frame yet.
pub fn decode(buf: &[u8], max_bytes: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(total) = frame_extent(buf, max_bytes)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(LENGTH_BYTES..total) else {
        return Ok(None);
    };
    let malformed = |message: String| DecodeError::Malformed {
        message,
        frame_bytes: total,
    };
    let Some(version) = frame.get(..VERSION_BYTES) else {
        return Err(malformed("frame is shorter than its version field".into()));
    };
    let version = u16::from_be_bytes([version[0], version[1]]);
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version,
            frame_bytes: total,
        });
    }
    let body = &frame[VERSION_BYTES..];
    // A reader over the body: declared string and binary lengths are read with `take`, so a
    // lying length fails at the end of the body instead of being allocated up front.
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
    let parsed = Frame::deserialize(&mut de).map_err(|e| malformed(e.to_string()))?;
    let rest = body.len() as u64 - de.position();
    if rest != 0 {
        return Err(malformed(format!(
            "{rest} trailing bytes after the frame body"
        )));
    }
    Ok(Some((parsed, total)))
}

#[cfg(test)]
mod tests;
