//! Frames over QUIC streams: a reader that buffers until a whole frame is in (refusing an
//! oversize frame from its length prefix alone) and a writer that batches several frames into
//! one stream write.

use crate::codec::{self, DecodeError, EncodeError};
use crate::frame::Frame;

/// Why a stream could not carry a frame.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The peer sent a frame that does not decode. With `Malformed` or `UnsupportedVersion`
    /// the frame was skipped and the stream can go on; with `TooLarge` it cannot.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded (too large).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Reading failed (connection lost, stream reset).
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed (connection lost, stream stopped).
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

impl NetError {
    /// True when the stream can be read on after this error (one bad frame was skipped).
    pub fn recoverable(&self) -> bool {
        matches!(
            self,
            NetError::Decode(
                DecodeError::Malformed { .. } | DecodeError::UnsupportedVersion { .. }
            )
        )
    }
}

/// Reads frames from a receive stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
    start: usize,
    max_bytes: usize,
}

/// Bytes asked of the stream per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

impl FrameReader {
    /// Reads frames of at most `max_bytes` from `recv`.
    pub fn new(recv: quinn::RecvStream, max_bytes: usize) -> FrameReader {
        FrameReader {
            recv,
            buf: Vec::new(),
            start: 0,
            max_bytes,
        }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, NetError> {
        loop {
            match codec::decode(&self.buf[self.start..], self.max_bytes) {
                Ok(Some((frame, used))) => {
                    self.start += used;
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => {
                    if let DecodeError::Malformed { frame_bytes, .. }
                    | DecodeError::UnsupportedVersion { frame_bytes, .. } = e
                    {
                        self.start += frame_bytes;
                    }
                    return Err(e.into());
                }
            }
            // Need more bytes: drop what was consumed, then read.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            match self.recv.read_chunk(READ_CHUNK_BYTES, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(NetError::Truncated),
            }
        }
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut quinn::RecvStream {
        &mut self.recv
    }
}

/// Writes frames to a send stream, several per write when batched.
pub struct FrameWriter {
    send: quinn::SendStream,
    buf: Vec<u8>,
    max_bytes: usize,
}

impl FrameWriter {
    /// Writes frames of at most `max_bytes` to `send`.
    pub fn new(send: quinn::SendStream, max_bytes: usize) -> FrameWriter {
        FrameWriter {
            send,
            buf: Vec::new(),
            max_bytes,
        }
    }

    /// Adds a frame to the pending batch (nothing is sent until [`FrameWriter::flush`]).
    pub fn push(&mut self, frame: &Frame) -> Result<(), NetError> {
        codec::encode(frame, self.max_bytes, &mut self.buf)?;
        Ok(())
    }

    /// Adds a notification of a pre-encoded event to the pending batch.
    pub fn push_notify(
        &mut self,
        sub: crate::frame::SubscriptionId,
        delivery: u64,
        redelivered: bool,
        event: &crate::codec::EncodedEvent,
    ) -> Result<(), NetError> {
        codec::encode_notify(
            sub,
            delivery,
            redelivered,
            event,
            self.max_bytes,
            &mut self.buf,
        )?;
        Ok(())
    }

    /// Bytes waiting in the batch.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Sends the pending batch in one write.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        if !self.buf.is_empty() {
            self.send.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Sends one frame now.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), NetError> {
        self.push(frame)?;
        self.flush().await
    }

    /// Flushes and finishes the stream (the peer sees a clean end), then waits until the peer
    /// has acknowledged all of it (or stopped the stream, or the connection ended), so that
    /// closing the connection right after loses nothing.
    pub async fn finish(mut self) -> Result<(), NetError> {
        self.flush().await?;
        // Finishing an already-reset stream is not an error worth reporting.
        if self.send.finish().is_ok() {
            let _ = self.send.stopped().await;
        }
        Ok(())
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut quinn::SendStream {
        &mut self.send
    }
}
