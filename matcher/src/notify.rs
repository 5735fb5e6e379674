//! One task per subscription: it opens the subscription's notification stream and writes
//! what the core queued, several notifications per write when they pile up.

use std::sync::Arc;

use sift_protocol::frame::{Frame, SubscriptionId};
use sift_protocol::net::FrameWriter;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::queue::{DeliveryQueue, Item};

/// Most notifications written per stream write.
const BATCH_MAX: usize = 256;

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
        }
        if let Err(e) = w.flush().await {
            return debug!(%sub, error = %e, "notification stream closed");
        }
        if ended {
            break;
        }
    }
    if let Some(w) = writer {
        let _ = w.finish().await;
    }
}
