//! The closed loop of max-rate runs: publishers may have at most `max` notifications in flight
//! (issued but not yet delivered), so queues stay bounded and the delivery ratio means
//! something. A notification that never arrives (a peer dropped it) would hold the window
//! forever, so a publisher that waited longer than the stall timeout writes what is in flight
//! off and goes on; the run counts those stalls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Notifications in flight, shared by publishers and subscribers.
#[derive(Debug)]
pub struct Window {
    issued: AtomicU64,
    done: AtomicU64,
    max: u64,
    stall: Duration,
    waiting: AtomicBool,
    notify: Notify,
    stalls: AtomicU64,
}

impl Window {
    /// At most `max` in flight; a wait longer than `stall` writes the flight off.
    pub fn new(max: u64, stall: Duration) -> Window {
        Window {
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            max: max.max(1),
            stall,
            waiting: AtomicBool::new(false),
            notify: Notify::new(),
            stalls: AtomicU64::new(0),
        }
    }

    /// Notifications issued and not yet delivered (or written off).
    pub fn in_flight(&self) -> u64 {
        self.issued
            .load(Ordering::Acquire)
            .saturating_sub(self.done.load(Ordering::Acquire))
    }

    /// Times a publisher gave up waiting.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Issues `n` notifications if they fit now (or the window is empty).
    pub fn try_acquire(&self, n: u64) -> bool {
        let in_flight = self.in_flight();
        if in_flight == 0 || in_flight + n <= self.max {
            self.issued.fetch_add(n, Ordering::AcqRel);
            true
        } else {
            false
        }
    }

    /// Waits until `n` more notifications fit, then issues them. An empty window always
    /// admits, so one event with more matches than `max` still goes out.
    pub async fn acquire(&self, n: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Announce the wait before looking, so a release between the look and the wait
            // still notifies (the notification is captured: `notified` is enabled).
            self.waiting.store(true, Ordering::SeqCst);
            let in_flight = self.in_flight();
            if in_flight == 0 || in_flight + n <= self.max {
                self.issued.fetch_add(n, Ordering::AcqRel);
                return;
            }
            if tokio::time::timeout(self.stall, notified).await.is_err() {
                // Whatever is still in flight after a stall is taken as lost.
                self.stalls.fetch_add(1, Ordering::Relaxed);
                let issued = self.issued.load(Ordering::Acquire);
                self.done.fetch_max(issued, Ordering::AcqRel);
            }
        }
    }

    /// Returns once nothing is in flight (every copy arrived, or was written off by a stall).
    pub async fn drained(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// `n` notifications arrived.
    pub fn release(&self, n: u64) {
        // Never past what was issued: late arrivals of a flight written off by a stall must
        // not widen the window for good.
        let issued = self.issued.load(Ordering::Acquire);
        let _ = self
            .done
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                Some((d + n).min(issued.max(d)))
            });
        if self.waiting.load(Ordering::SeqCst) && self.in_flight() <= self.max / 2 {
            self.waiting.store(false, Ordering::SeqCst);
            self.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_full_window_waits_for_deliveries() {
        let w = Arc::new(Window::new(10, Duration::from_secs(5)));
        w.acquire(10).await;
        assert_eq!(w.in_flight(), 10);
        let w2 = w.clone();
        let waiter = tokio::spawn(async move { w2.acquire(1).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        w.release(6);
        waiter.await.unwrap();
        assert_eq!(w.in_flight(), 5);
        assert_eq!(w.stalls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_never_waits() {
        let w = Window::new(4, Duration::from_secs(1));
        assert!(w.try_acquire(3));
        assert!(!w.try_acquire(2));
        w.release(3);
        assert!(w.try_acquire(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_notification_costs_one_stall_not_the_run() {
        let w = Window::new(4, Duration::from_millis(100));
        w.acquire(4).await;
        w.release(3); // one never arrives
        w.acquire(4).await; // waits out the stall, then goes on
        assert_eq!(w.stalls(), 1);
        assert_eq!(w.in_flight(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn late_arrivals_after_a_stall_do_not_widen_the_window() {
        let w = Window::new(4, Duration::from_millis(100));
        w.acquire(4).await;
        w.acquire(4).await; // stalls: the first 4 are written off
        assert_eq!(w.stalls(), 1);
        w.release(4); // the written-off ones arrive late
        w.release(4); // and the second flight
        assert_eq!(w.in_flight(), 0);
        assert!(w.try_acquire(4));
        assert!(!w.try_acquire(1), "the window is still 4 wide");
    }

    #[tokio::test(start_paused = true)]
    async fn drained_returns_when_the_last_copy_arrives() {
        let w = Arc::new(Window::new(10, Duration::from_secs(5)));
        w.acquire(3).await;
        let w2 = w.clone();
        let drain = tokio::spawn(async move { w2.drained().await });
        tokio::task::yield_now().await;
        w.release(2);
        tokio::task::yield_now().await;
        assert!(!drain.is_finished());
        w.release(1);
        drain.await.unwrap();
        assert_eq!(w.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_larger_than_the_window_still_goes_out() {
        let w = Window::new(4, Duration::from_secs(1));
        w.acquire(100).await;
        assert_eq!(w.in_flight(), 100);
    }
}
