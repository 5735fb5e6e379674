//! Where subscribers' deliveries go: live counters (for the closed loop and the progress line)
//! and a [`Tally`] that per-task [`Recorder`]s fill in batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::stamp::{Clock, Stamp};
use crate::tally::Tally;
use crate::window::Window;

/// Shared by every subscriber task of a run.
#[derive(Debug)]
pub struct Collector {
    nonce: u64,
    clock: Clock,
    window: Window,
    delivered: AtomicU64,
    last_ns: AtomicU64,
    tally: Mutex<Tally>,
}

impl Collector {
    /// A collector for the run with `nonce`, timing on `clock`.
    pub fn new(nonce: u64, clock: Clock, window: Window) -> Arc<Collector> {
        Arc::new(Collector {
            nonce,
            clock,
            window,
            delivered: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            tally: Mutex::new(Tally::new()),
        })
    }

    /// The closed-loop window.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// The run's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The run's nonce.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Deliveries so far (live).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// When the last delivery arrived, on the run's clock.
    pub fn last_delivery_ns(&self) -> u64 {
        self.last_ns.load(Ordering::Relaxed)
    }

    /// A recorder for one subscriber task.
    pub fn recorder(self: &Arc<Self>) -> Recorder {
        Recorder {
            collector: self.clone(),
            local: Tally::new(),
            pending: 0,
        }
    }

    /// Everything recorded so far by recorders that flushed (all of them, once dropped).
    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// One subscriber task's batch of deliveries; flushed every few thousand and when dropped.
#[derive(Debug)]
pub struct Recorder {
    collector: Arc<Collector>,
    local: Tally,
    pending: u64,
}

const FLUSH_EVERY: u64 = 4_096;

impl Recorder {
    /// A payload reached a subscriber, and `matches` of the subscribers it stands for wanted
    /// it (1 for a server-side match; 0 or 1 under client-side filtering). Returns the payload's stamp when
    /// it belongs to this run.
    pub fn deliver(&mut self, payload: &[u8], matches: u64) -> Option<Stamp> {
        let now = self.collector.clock.now_ns();
        let len = payload.len() as u64;
        let stamp = match Stamp::read(payload) {
            Some(s) if s.nonce == self.collector.nonce => s,
            _ => {
                self.local.foreign += 1;
                return None;
            }
        };
        self.local.received_bytes += len;
        if matches == 0 {
            self.local.wasted_bytes += len;
        }
        let latency = now.saturating_sub(stamp.sent_ns);
        for _ in 0..matches {
            self.local.record(latency);
        }
        // The window counts copies on the wire, wanted or not.
        self.collector.window.release(1);
        if matches > 0 {
            self.collector.last_ns.fetch_max(now, Ordering::Relaxed);
            self.collector
                .delivered
                .fetch_add(matches, Ordering::Relaxed);
        }
        self.pending += 1;
        if self.pending >= FLUSH_EVERY {
            self.flush();
        }
        Some(stamp)
    }

    /// Moves the batch into the collector's tally.
    pub fn flush(&mut self) {
        if let Ok(mut t) = self.collector.tally.lock() {
            t.merge(&self.local);
        }
        self.local = Tally::new();
        self.pending = 0;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::Stamp;
    use std::time::Duration;

    #[test]
    fn recorders_count_matches_waste_and_foreign_payloads() {
        let c = Collector::new(9, Clock::start(), Window::new(100, Duration::from_secs(1)));
        let mine = Stamp {
            nonce: 9,
            sent_ns: 0,
            seq: 1,
            k: 0,
        }
        .payload(64);
        let old = Stamp {
            nonce: 8,
            sent_ns: 0,
            seq: 1,
            k: 0,
        }
        .payload(64);
        {
            let mut r = c.recorder();
            r.deliver(&mine, 1);
            r.deliver(&mine, 3);
            r.deliver(&mine, 0);
            r.deliver(&old, 1);
            r.deliver(b"short", 1);
            assert_eq!(c.delivered(), 4);
        }
        let t = c.tally();
        assert_eq!(t.delivered, 4);
        assert_eq!(t.received_bytes, 3 * 64);
        assert_eq!(t.wasted_bytes, 64);
        assert_eq!(t.foreign, 2);
    }
}
