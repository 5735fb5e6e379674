//! Links to other matchers (partitioned mode): one task per peer moves peer messages over a
//! QUIC stream that opened with `PeerHello` and the cluster token, reconnects with backoff,
//! and sends again what was not answered (peer messages are idempotent). Answers go back to
//! the core. What to send and when is the core's business; this only moves bytes.

use std::collections::BTreeMap;
use std::time::Duration;

use hashbrown::HashMap;
use sift_protocol::frame::{ErrorCode, Frame, RingMember};
use sift_protocol::net::{FrameReader, FrameWriter};
use sift_protocol::peer::{PeerFrame, PeerMsg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn, Instrument};

use crate::core::Input;

/// First and largest pause between attempts to reach a peer.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What every link needs.
#[derive(Clone)]
pub(crate) struct PeerSetup {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) server_name: String,
    /// The cluster token, presented in `PeerHello`.
    pub(crate) token: Option<String>,
    /// This matcher's id.
    pub(crate) me: String,
    pub(crate) max_frame_bytes: usize,
    pub(crate) core: mpsc::Sender<Input>,
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
}

/// The links this matcher has to its peers, by peer id.
pub(crate) struct PeerLinks {
    setup: PeerSetup,
    links: HashMap<String, LinkHandle>,
}

struct LinkHandle {
    addr: String,
    tx: mpsc::UnboundedSender<PeerFrame>,
}

impl PeerLinks {
    pub(crate) fn new(setup: PeerSetup) -> PeerLinks {
        PeerLinks {
            setup,
            links: HashMap::new(),
        }
    }

    /// Queues `frame` for `to` (a link is started on first use, or again when the peer's
    /// address changed).
    pub(crate) fn send(&mut self, to: &RingMember, frame: PeerFrame) {
        let stale = self
            .links
            .get(&to.id)
            .is_none_or(|l| l.addr != to.addr || l.tx.is_closed());
        if stale {
            let (tx, rx) = mpsc::unbounded_channel();
            let span = tracing::info_span!("peer", to = %to.id);
            let link = run(self.setup.clone(), to.clone(), rx).instrument(span);
            self.setup.tasks.spawn(link);
            self.links.insert(
                to.id.clone(),
                LinkHandle {
                    addr: to.addr.clone(),
                    tx,
                },
            );
        }
        if let Some(l) = self.links.get(&to.id) {
            let _ = l.tx.send(frame);
        }
    }

    /// Closes the links to peers `keep` rejects (they left the ring).
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.links.retain(|id, _| keep(id));
    }
}

/// The sequence number a message must be answered with, if any.
fn seq_of(msg: &PeerMsg) -> Option<u64> {
    match msg {
        PeerMsg::Hold { seq, .. }
        | PeerMsg::Dispatch { seq, .. }
        | PeerMsg::Handoff { seq, .. }
        | PeerMsg::Tail { seq, .. }
        | PeerMsg::Unacked { seq, .. }
        | PeerMsg::Release { seq, .. } => Some(*seq),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
enum PeerLinkError {
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Net(#[from] sift_protocol::net::NetError),
    #[error("address {0:?} is not an IP address and port")]
    Addr(String),
    #[error("refused: {0}")]
    Refused(String),
}

async fn run(setup: PeerSetup, to: RingMember, mut rx: mpsc::UnboundedReceiver<PeerFrame>) {
    let mut unanswered: BTreeMap<u64, PeerFrame> = BTreeMap::new();
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = session(&setup, &to, &mut rx, &mut unanswered);
        let result = tokio::select! {
            _ = setup.cancel.cancelled() => return,
            r = session => r,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                debug!(error = %e, peer = %to.id, unanswered = unanswered.len(), "peer link lost; retrying")
            }
        }
        // Keep taking what the core sends meanwhile, so nothing is lost when the link is back.
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = setup.cancel.cancelled() => return,
                _ = &mut pause => break,
                f = rx.recv() => match f {
                    Some(f) => keep(&mut unanswered, f),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Adds `frame` to the pending write and keeps it until answered. One that cannot be encoded
/// (larger than a frame) is dropped and reported to the core as refused, so that nothing waits
/// for it and the link goes on.
async fn push(
    setup: &PeerSetup,
    to: &RingMember,
    w: &mut FrameWriter,
    unanswered: &mut BTreeMap<u64, PeerFrame>,
    frame: PeerFrame,
) -> Result<(), PeerLinkError> {
    match w.push(&Frame::Peer(frame.clone())) {
        Ok(()) => {
            keep(unanswered, frame);
            Ok(())
        }
        Err(sift_protocol::net::NetError::Encode(e)) => {
            error!(peer = %to.id, error = %e, "a peer message does not fit in a frame; dropped");
            if let Some(seq) = seq_of(&frame.msg) {
                unanswered.remove(&seq);
                let refused = PeerFrame {
                    epoch: frame.epoch,
                    msg: PeerMsg::Refused {
                        seq,
                        code: ErrorCode::FrameTooLarge,
                        message: e.to_string(),
                    },
                };
                let input = Input::PeerAnswer {
                    from: to.id.clone(),
                    frame: refused,
                };
                let _ = setup.core.send(input).await;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn keep(unanswered: &mut BTreeMap<u64, PeerFrame>, frame: PeerFrame) {
    if let Some(seq) = seq_of(&frame.msg) {
        unanswered.insert(seq, frame);
    }
}

async fn session(
    setup: &PeerSetup,
    to: &RingMember,
    rx: &mut mpsc::UnboundedReceiver<PeerFrame>,
    unanswered: &mut BTreeMap<u64, PeerFrame>,
) -> Result<(), PeerLinkError> {
    let addr = to
        .addr
        .parse()
        .map_err(|_| PeerLinkError::Addr(to.addr.clone()))?;
    let conn = setup.endpoint.connect(addr, &setup.server_name)?.await?;
    let (send, recv) = conn.open_bi().await?;
    let mut w = FrameWriter::new(send, setup.max_frame_bytes);
    let mut r = FrameReader::new(recv, setup.max_frame_bytes);
    w.send(&Frame::PeerHello {
        req: 1,
        node: setup.me.clone(),
        token: setup.token.clone(),
    })
    .await?;
    match r.next().await? {
        Some(Frame::Ok { .. }) => {}
        Some(Frame::Error(e)) => return Err(PeerLinkError::Refused(e.message)),
        other => return Err(PeerLinkError::Refused(format!("unexpected {other:?}"))),
    }
    // What the last session left unanswered, in order.
    let again: Vec<PeerFrame> = unanswered.values().cloned().collect();
    for frame in again {
        push(setup, to, &mut w, unanswered, frame).await?;
    }
    w.flush().await?;
    loop {
        tokio::select! {
            f = rx.recv() => {
                let Some(f) = f else { return Ok(()) };
                push(setup, to, &mut w, unanswered, f).await?;
                // Take what else is waiting into the same write.
                while let Ok(f) = rx.try_recv() {
                    push(setup, to, &mut w, unanswered, f).await?;
                }
                w.flush().await?;
            }
            a = r.next() => match a? {
                Some(Frame::Peer(answer)) => {
                    match &answer.msg {
                        PeerMsg::Acked { seqs } => {
                            for s in seqs {
                                unanswered.remove(s);
                            }
                        }
                        PeerMsg::Refused { seq, .. } => {
                            unanswered.remove(seq);
                        }
                        _ => {}
                    }
                    let input = Input::PeerAnswer { from: to.id.clone(), frame: answer };
                    if setup.core.send(input).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Frame::Error(e)) => warn!(peer = %to.id, code = ?e.code, message = %e.message, "peer refused a frame"),
                Some(_) => {}
                None => return Err(PeerLinkError::Refused("the peer closed the stream".into())),
            },
        }
    }
}
