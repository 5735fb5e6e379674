//! What every benchmark payload starts with: the run's nonce, the send time on the run's one
//! clock, a sequence number and the filter key. Peers carry it in their payload; Sift carries
//! it in the payload too (and the key also as an attribute), so every target moves the same
//! bytes.

use std::time::Instant;

/// Bytes the stamp takes at the start of a payload; payloads are at least this long.
pub const STAMP_LEN: usize = 32;

/// The header of a benchmark payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The run's nonce: deliveries from an earlier run are recognised and not counted.
    pub nonce: u64,
    /// Nanoseconds since the run's clock started, when the event was handed to the client.
    pub sent_ns: u64,
    /// The publisher's sequence number.
    pub seq: u64,
    /// The value of the `k` attribute filters select on.
    pub k: i64,
}

impl Stamp {
    /// Writes the stamp followed by `len - STAMP_LEN` filler bytes.
    pub fn payload(&self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len.max(STAMP_LEN));
        out.extend_from_slice(&self.nonce.to_le_bytes());
        out.extend_from_slice(&self.sent_ns.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.k.to_le_bytes());
        out.resize(len.max(STAMP_LEN), b'x');
        out
    }

    /// Reads the stamp at the start of `payload`; `None` when it is too short.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let word = |i: usize| -> Option<[u8; 8]> { payload.get(i..i + 8)?.try_into().ok() };
        Some(Stamp {
            nonce: u64::from_le_bytes(word(0)?),
            sent_ns: u64::from_le_bytes(word(8)?),
            seq: u64::from_le_bytes(word(16)?),
            k: i64::from_le_bytes(word(24)?),
        })
    }
}

/// The run's one clock: publishers stamp with it and subscribers read it, in one process.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the clock started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_pads_to_the_payload_size() {
        let s = Stamp {
            nonce: 7,
            sent_ns: 123_456_789,
            seq: 42,
            k: -3,
        };
        let p = s.payload(128);
        assert_eq!(p.len(), 128);
        assert_eq!(Stamp::read(&p), Some(s));
        assert_eq!(s.payload(4).len(), STAMP_LEN);
        assert_eq!(Stamp::read(&p[..31]), None);
    }
}
