//! The matcher's link to the coordinator: register, heartbeat on the same stream, watch the
//! ring on another, and start over with backoff when anything fails. While the coordinator is
//! unreachable the matcher keeps serving with the ring it has.

use std::net::SocketAddr;
use std::time::Duration;

use sift_protocol::frame::{ErrorCode, Frame, RingMember};
use sift_protocol::net::{FrameReader, FrameWriter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::core::Input;

/// First and largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Link {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) coordinator: SocketAddr,
    pub(crate) server_name: String,
    pub(crate) me: RingMember,
    pub(crate) heartbeat: Duration,
    pub(crate) max_frame_bytes: usize,
    pub(crate) token: Option<String>,
    pub(crate) core: mpsc::Sender<Input>,
    /// Pending ring versions this matcher has finished handing over (from the core).
    pub(crate) confirms: mpsc::Receiver<u64>,
    /// True during a lame-duck drain: registrations say so, and the coordinator keeps this
    /// matcher out of the ring. A change registers again at once.
    pub(crate) draining: watch::Receiver<bool>,
}

/// Why one session with the coordinator ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Net(#[from] sift_protocol::net::NetError),
    #[error("coordinator refused: {0}")]
    Refused(String),
    #[error("the coordinator closed the stream")]
    Closed,
    /// An operator removed this matcher: it stays out until it is restarted.
    #[error("{0}")]
    Removed(String),
    #[error("lame-duck drain started")]
    Draining,
}

impl Link {
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.session() => r,
            };
            match result {
                Ok(()) => backoff = BACKOFF_MIN,
                // Registers again at once, now draining.
                Err(LinkError::Draining) => continue,
                Err(LinkError::Removed(message)) => {
                    return error!(%message, "removed from the cluster; restart this matcher to join again")
                }
                Err(e) => warn!(error = %e, "coordinator link lost; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn open(
        &self,
        conn: &quinn::Connection,
    ) -> Result<(FrameWriter, FrameReader), LinkError> {
        let (send, recv) = conn.open_bi().await?;
        Ok((
            FrameWriter::new(send, self.max_frame_bytes),
            FrameReader::new(recv, self.max_frame_bytes),
        ))
    }

    async fn session(&mut self) -> Result<(), LinkError> {
        let conn = self
            .endpoint
            .connect(self.coordinator, &self.server_name)?
            .await?;
        if let Some(token) = &self.token {
            let (mut w, mut r) = self.open(&conn).await?;
            w.send(&Frame::Hello {
                req: 1,
                token: Some(token.clone()),
            })
            .await?;
            match r.next().await? {
                Some(Frame::Ok { .. }) => {}
                Some(Frame::Error(e)) => return Err(LinkError::Refused(e.message)),
                _ => return Err(LinkError::Refused("token refused".into())),
            }
        }
        let (mut reg_w, mut reg_r) = self.open(&conn).await?;
        // The ring this matcher serves with: a restarted coordinator adopts it.
        let (tx, rx) = oneshot::channel();
        let _ = self.core.send(Input::RingNow { reply: tx }).await;
        let active = rx.await.ok().filter(|r| r.version > 0);
        let draining = *self.draining.borrow_and_update();
        reg_w
            .send(&Frame::Register {
                req: 1,
                member: self.me.clone(),
                active,
                draining,
            })
            .await?;
        match reg_r.next().await? {
            Some(Frame::Cluster {
                active,
                pending,
                restarted,
            }) => {
                let input = Input::Cluster {
                    active,
                    pending,
                    restarted,
                };
                let _ = self.core.send(input).await;
            }
            Some(Frame::Error(e)) if e.code == ErrorCode::Forbidden => {
                return Err(LinkError::Removed(e.message))
            }
            Some(Frame::Error(e)) => return Err(LinkError::Refused(e.message)),
            _ => return Err(LinkError::Closed),
        }
        info!(coordinator = %self.coordinator, id = %self.me.id, "registered");
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut req = 3;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    reg_w.send(&Frame::Heartbeat { req, node: self.me.id.clone() }).await?;
                    req += 1;
                }
                answer = reg_r.next() => match answer? {
                    Some(Frame::Ok { .. }) => {}
                    Some(Frame::Cluster {
                        active, pending, ..
                    }) => {
                        let input = Input::Cluster {
                            active,
                            pending,
                            restarted: false,
                        };
                        let _ = self.core.send(input).await;
                    }
                    // Declared dead meanwhile: register again from scratch.
                    Some(Frame::Error(e)) if e.code == ErrorCode::UnknownNode => return Err(LinkError::Refused(e.message)),
                    Some(Frame::Error(e)) if e.code == ErrorCode::Forbidden => return Err(LinkError::Removed(e.message)),
                    Some(other) => warn!(frame = ?other, "unexpected answer to a heartbeat"),
                    None => return Err(LinkError::Closed),
                },
                changed = self.draining.changed() => {
                    return Err(match changed {
                        Ok(()) => LinkError::Draining,
                        Err(_) => LinkError::Closed,
                    });
                }
                version = self.confirms.recv() => {
                    let Some(version) = version else { return Ok(()) };
                    reg_w.send(&Frame::Confirm { req, node: self.me.id.clone(), version }).await?;
                    req += 1;
                }
            }
        }
    }
}
