//! One task per subscription: it opens the subscription's notification stream and writes
//! what the core queued, several notifications per write when they pile up.

use std::sync::Arc;

use sift_protocol::frame::{Frame, SubscriptionId};
use sift_protocol::net::{FrameWriter, RESET_SLOW_CONSUMER};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::queue::{DeliveryQueue, Item};

/// Most notifications written per stream write.
const BATCH_MAX: usize = 256;
/// A batch is written once it holds this many bytes, so a writer buffers at most about this
/// much beyond what the stream itself holds.
const BATCH_BYTES: usize = 256 * 1024;

pub(crate) async fn run(
    conn: quinn::Connection,
    sub: SubscriptionId,
    queue: Arc<DeliveryQueue>,
    max_frame_bytes: usize,
    cancel: CancellationToken,
) {
    let mut items = Vec::with_capacity(BATCH_MAX);
    // The stream is opened with the first notification, so an idle subscription costs none.
    let mut writer: Option<FrameWriter> = None;
    loop {
        items.clear();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = queue.aborted() => break,
            _ = queue.pop_batch(BATCH_MAX, &mut items) => {}
        }
        if writer.is_none() {
            match conn.open_uni().await {
                Ok(send) => writer = Some(FrameWriter::new(send, max_frame_bytes)),
                Err(e) => return debug!(%sub, error = %e, "cannot open the notification stream"),
            }
        }
        let Some(w) = writer.as_mut() else { return };
        let mut ended = false;
        for item in items.drain(..) {
            let pushed = match item {
                Item::Notify {
                    delivery,
                    redelivered,
                    event,
                } => w.push_notify(sub, delivery, redelivered, &event),
                Item::End(reason) => {
                    ended = true;
                    w.push(&Frame::Ended { sub, reason })
                }
            };
            if let Err(e) = pushed {
                debug!(%sub, error = %e, "notification not encoded");
            }
            if w.pending_bytes() >= BATCH_BYTES && !write(w, sub, &queue, &cancel).await {
                return abandon(writer, &queue);
            }
        }
        if !write(w, sub, &queue, &cancel).await {
            return abandon(writer, &queue);
        }
        if ended {
            break;
        }
    }
    if queue.is_aborted() {
        return abandon(writer, &queue);
    }
    if let Some(w) = writer {
        let _ = w.finish().await;
    }
}

/// Writes the pending batch unless the subscription is aborted or the matcher stops first
/// (a peer that does not read would hold the write forever). False when it was not written.
async fn write(
    w: &mut FrameWriter,
    sub: SubscriptionId,
    queue: &DeliveryQueue,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        r = w.flush() => match r {
            Ok(()) => true,
            Err(e) => {
                debug!(%sub, error = %e, "notification stream closed");
                false
            }
        },
        _ = queue.aborted() => false,
        _ = cancel.cancelled() => false,
    }
}

/// Gives up on the stream: reset it (with the slow-consumer code when that is why), so the
/// peer learns the subscription's notifications stop here.
fn abandon(writer: Option<FrameWriter>, queue: &DeliveryQueue) {
    if let Some(mut w) = writer {
        let code = if queue.is_aborted() {
            RESET_SLOW_CONSUMER
        } else {
            0
        };
        let _ = w.stream().reset(code.into());
    }
}
