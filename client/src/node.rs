//! One task per matcher connection: it owns the request stream (requests out in order, answers
//! routed back by request id), accepts the notification streams the matcher opens, and tells
//! the client when the connection is lost so that subscriptions move on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use hashbrown::HashMap;
use sift_protocol::frame::{Frame, RequestId, SubscriptionId};
use sift_protocol::net::{FrameReader, FrameWriter, NetError, RESET_SLOW_CONSUMER};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::client::Inner;

/// A request for a node task.
pub(crate) struct Request {
    pub(crate) frame: Frame,
    /// Where the answer goes; `None` for frames without one (fire-and-forget, acks).
    pub(crate) reply: Option<(RequestId, oneshot::Sender<Frame>)>,
}

/// Requests written per stream write at most.
const BATCH_MAX: usize = 256;

/// The request id an answer carries, if any.
fn answers(frame: &Frame) -> Option<RequestId> {
    match frame {
        Frame::Ok { req }
        | Frame::Subscribed { req, .. }
        | Frame::PublishAck { req, .. }
        | Frame::Nodes { req, .. }
        | Frame::Ring { req: Some(req), .. } => Some(*req),
        Frame::Error(e) => e.req,
        _ => None,
    }
}

/// A subscription's credit at one matcher: notifications taken from the subscription (or
/// dropped by the SDK) are counted, and given back to the matcher in batches of `batch`.
#[derive(Debug)]
pub(crate) struct CreditLine {
    sub: SubscriptionId,
    requests: mpsc::WeakSender<Request>,
    used: AtomicU32,
    batch: u32,
}

impl CreditLine {
    /// One notification left the SDK's buffer: its room is the matcher's again.
    pub(crate) fn consumed(&self) {
        let n = self.used.fetch_add(1, Ordering::AcqRel) + 1;
        if n < self.batch
            || self
                .used
                .compare_exchange(n, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Some(tx) = self.requests.upgrade() else {
            // The connection is gone: so is the credit.
            return;
        };
        let request = Request {
            frame: Frame::Credit { sub: self.sub, n },
            reply: None,
        };
        match tx.try_send(request) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(request)) => {
                // Behind a burst of requests: it must still go, or a matcher that used up the
                // credit would wait for it forever.
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            let _ = tx.send(request).await;
                        });
                    }
                    // No runtime to wait in: given back with the next notification.
                    Err(_) => {
                        self.used.fetch_add(n, Ordering::AcqRel);
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

pub(crate) async fn run(
    conn: quinn::Connection,
    requests: mpsc::WeakSender<Request>,
    credit: u32,
    mut rx: mpsc::Receiver<Request>,
    inner: Weak<Inner>,
    addr: String,
    max_frame_bytes: usize,
) {
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            debug!(%addr, error = %e, "no request stream");
            return lost(&inner, &addr);
        }
    };
    let mut writer = FrameWriter::new(send, max_frame_bytes);
    let mut reader = FrameReader::new(recv, max_frame_bytes);
    let mut pending: HashMap<RequestId, oneshot::Sender<Frame>> = HashMap::new();
    loop {
        tokio::select! {
            req = rx.recv() => {
                let Some(first) = req else { break };
                let mut next = Some(first);
                let mut n = 0;
                while let Some(r) = next.take() {
                    if let Some((id, reply)) = r.reply {
                        pending.insert(id, reply);
                    }
                    if let Err(e) = writer.push(&r.frame) {
                        debug!(%addr, error = %e, "request not encoded");
                    }
                    n += 1;
                    if n < BATCH_MAX {
                        next = rx.try_recv().ok();
                    }
                }
                if writer.flush().await.is_err() {
                    break;
                }
            }
            frame = reader.next() => match frame {
                Ok(Some(frame)) => match answers(&frame).and_then(|id| pending.remove(&id)) {
                    Some(reply) => { let _ = reply.send(frame); }
                    None => unsolicited(&inner, &addr, frame),
                },
                Ok(None) => break,
                Err(e) if e.recoverable() => debug!(%addr, error = %e, "bad frame skipped"),
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let reader = FrameReader::new(recv, max_frame_bytes);
                    let lines = Lines { requests: requests.clone(), batch: (credit / 2).max(1), by_sub: HashMap::new() };
                    tokio::spawn(notifications(reader, lines, inner.clone(), addr.clone()));
                }
                Err(_) => break,
            },
        }
    }
    // Closing the request side lets the matcher finish; unanswered requests fail as their
    // senders drop.
    let _ = writer.finish().await;
    drop(pending);
    lost(&inner, &addr);
}

fn lost(inner: &Weak<Inner>, addr: &str) {
    if let Some(inner) = inner.upgrade() {
        inner.node_lost(addr);
    }
}

fn unsolicited(inner: &Weak<Inner>, addr: &str, frame: Frame) {
    match frame {
        // A fire-and-forget publish was refused (e.g. not the owner): refresh the ring.
        Frame::Error(e) => {
            debug!(%addr, code = %e.code, message = %e.message, "refusal without a request");
            if let (Some(inner), Some(v)) = (inner.upgrade(), e.ring_version) {
                inner.hint_ring(v);
            }
        }
        other => debug!(%addr, frame = ?other, "unexpected frame"),
    }
}

/// The credit lines of the subscriptions on one notification stream.
struct Lines {
    requests: mpsc::WeakSender<Request>,
    batch: u32,
    by_sub: HashMap<SubscriptionId, Arc<CreditLine>>,
}

impl Lines {
    fn of(&mut self, sub: SubscriptionId) -> &Arc<CreditLine> {
        self.by_sub.entry(sub).or_insert_with(|| {
            Arc::new(CreditLine {
                sub,
                requests: self.requests.clone(),
                used: AtomicU32::new(0),
                batch: self.batch,
            })
        })
    }
}

/// Reads a connection's notification stream (all its subscriptions' notifications and ends)
/// until it finishes or is reset; a matcher that resets a blocked stream opens a new one.
async fn notifications(
    mut reader: FrameReader,
    mut lines: Lines,
    inner: Weak<Inner>,
    addr: String,
) {
    loop {
        match reader.next().await {
            Ok(Some(Frame::Notify(n))) => match inner.upgrade() {
                Some(inner) => {
                    let line = lines.of(n.sub).clone();
                    inner.deliver(&addr, n, line)
                }
                None => return,
            },
            Ok(Some(Frame::Ended { sub, reason })) => {
                lines.by_sub.remove(&sub);
                if let Some(inner) = inner.upgrade() {
                    inner.ended(&addr, sub, reason);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) if e.recoverable() => {}
            Err(NetError::Read(quinn::ReadError::Reset(code)))
                if code.into_inner() == u64::from(RESET_SLOW_CONSUMER) =>
            {
                // The matcher gave up on a stream we did not read fast enough; the ends of
                // the subscriptions it cut off come on the next one.
                debug!(%addr, "notification stream reset by the matcher");
                return;
            }
            Err(_) => return,
        }
    }
}
