//! Client connections: each bidirectional stream carries requests in and answers out (in
//! request order); bad input gets a typed error frame and the stream goes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use sift_protocol::event::EventError;
use sift_protocol::frame::{ErrorCode, ErrorFrame, Frame, Publish, RequestId};
use sift_protocol::net::{FrameReader, FrameWriter, NetError};
use sift_protocol::Filter;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::MatcherConfig;
use crate::core::{parse_subscribe, ConnId, Input, PublishReply, Refusal};
use crate::notify::Outbox;

/// What a connection task needs.
pub(crate) struct Shared {
    pub(crate) core: mpsc::Sender<Input>,
    pub(crate) config: MatcherConfig,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) next_conn: AtomicU64,
    /// Gossip mode: the mesh task, for membership packets.
    pub(crate) mesh: Option<mpsc::Sender<crate::mesh::MeshCmd>>,
    /// Gossip mode: drop traffic from other nodes (fault injection).
    pub(crate) isolated: Arc<AtomicBool>,
}

impl Shared {
    /// The token gossip peers present, when one is configured.
    fn peer_token(&self) -> Option<&String> {
        self.config.gossip.as_ref()?.peer_token.as_ref()
    }
}

type Answer = Pin<Box<dyn Future<Output = Option<Frame>> + Send>>;

/// Answers in flight per stream before reading pauses.
const ANSWERS_IN_FLIGHT_MAX: usize = 1024;

pub(crate) async fn serve(conn: quinn::Connection, shared: Arc<Shared>) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let authed = Arc::new(AtomicBool::new(shared.config.token.is_none()));
    let peer = Arc::new(AtomicBool::new(false));
    // Notifications of all its subscriptions, on one stream.
    let outbox = Arc::new(Outbox::default());
    loop {
        let (send, recv) = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => break },
        };
        let stream = RequestStream {
            conn: conn.clone(),
            id,
            shared: shared.clone(),
            authed: authed.clone(),
            peer: peer.clone(),
            peer_node: std::sync::OnceLock::new(),
            outbox: outbox.clone(),
        };
        shared.tasks.spawn(stream.serve(send, recv));
    }
    outbox.close();
    // Its subscriptions cannot be delivered any more.
    let _ = shared.core.send(Input::Closed { conn: id }).await;
}

struct RequestStream {
    conn: quinn::Connection,
    id: ConnId,
    shared: Arc<Shared>,
    authed: Arc<AtomicBool>,
    /// This connection presented the gossip peer token.
    peer: Arc<AtomicBool>,
    /// The matcher this stream speaks for, once it sent `PeerHello` (partitioned mode).
    peer_node: std::sync::OnceLock<String>,
    /// The connection's notifications.
    outbox: Arc<Outbox>,
}

fn error(req: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::Error(ErrorFrame {
        req,
        code,
        message: message.into(),
        ring_version: None,
    })
}

fn now(frame: Frame) -> Answer {
    Box::pin(async move { Some(frame) })
}

/// An answer that waits for the core.
fn later<T: Send + 'static>(
    req: Option<RequestId>,
    rx: oneshot::Receiver<Result<T, Refusal>>,
    ok: impl FnOnce(T) -> Option<Frame> + Send + 'static,
) -> Answer {
    Box::pin(async move {
        match rx.await {
            Ok(Ok(v)) => ok(v),
            Ok(Err(refusal)) => Some(Frame::Error(refusal.frame(req))),
            Err(_) => Some(error(
                req,
                ErrorCode::ShuttingDown,
                "the matcher is stopping",
            )),
        }
    })
}

impl RequestStream {
    async fn serve(self, send: quinn::SendStream, recv: quinn::RecvStream) {
        let max = self.shared.config.limits.frame_bytes_max;
        let mut reader = FrameReader::new(recv, max);
        let (tx, rx) = mpsc::channel::<Queued>(ANSWERS_IN_FLIGHT_MAX);
        let writer = tokio::spawn(write_answers(FrameWriter::new(send, max), rx));
        loop {
            let frame = tokio::select! {
                _ = self.shared.cancel.cancelled() => break,
                f = reader.next() => f,
            };
            // Peer messages carry their sequence number and are answered as they complete:
            // an answer that waits on another matcher must not hold up the ones behind it
            // (two matchers relaying to each other would wait on each other's streams).
            let in_order = !matches!(frame, Ok(Some(Frame::Peer(_))));
            let answer = match frame {
                Ok(Some(frame)) => self.handle(frame, &tx).await,
                Ok(None) => break,
                Err(e) => {
                    let code = match &e {
                        NetError::Decode(d) => d.code(),
                        _ => ErrorCode::Malformed,
                    };
                    let fatal = !e.recoverable();
                    let answer = now(error(None, code, e.to_string()));
                    let _ = tx.send(Queued::ordered(answer)).await;
                    if fatal {
                        break;
                    }
                    continue;
                }
            };
            if let Some(answer) = answer {
                if tx.send(Queued { answer, in_order }).await.is_err() {
                    break;
                }
            }
        }
        drop(tx);
        let _ = writer.await;
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        // If the core is gone, the receiver reports it.
        let _ = self.shared.core.send(make(tx)).await;
        rx
    }

    /// Handles one request; `answers` is the stream's answer writer (a fire-and-forget
    /// publish's refusal goes there directly).
    async fn handle(&self, frame: Frame, answers: &mpsc::Sender<Queued>) -> Option<Answer> {
        if let Frame::PeerHello { req, node, token } = &frame {
            // Another matcher (partitioned mode): it presents the cluster token.
            let ok = self.shared.config.coordinator.is_some()
                && self
                    .shared
                    .config
                    .coordinator_token
                    .as_ref()
                    .is_none_or(|t| Some(t) == token.as_ref());
            if !ok {
                return Some(now(error(
                    Some(*req),
                    ErrorCode::Unauthorized,
                    "peer frames need a matcher of a cluster and the cluster token",
                )));
            }
            self.authed.store(true, Ordering::Relaxed);
            let _ = self.peer_node.set(node.clone());
            return Some(now(Frame::Ok { req: *req }));
        }
        if let Frame::Peer(pf) = frame {
            let Some(from) = self.peer_node.get().cloned() else {
                return Some(now(error(
                    None,
                    ErrorCode::Unauthorized,
                    "send PeerHello with the cluster token first",
                )));
            };
            let (tx, rx) = oneshot::channel();
            let input = Input::Peer {
                from,
                frame: pf,
                reply: tx,
            };
            let _ = self.shared.core.send(input).await;
            return Some(Box::pin(async move { rx.await.ok().map(Frame::Peer) }));
        }
        if let Frame::Hello { req, token } = &frame {
            let peer = self
                .shared
                .peer_token()
                .is_some_and(|t| Some(t) == token.as_ref());
            if peer {
                self.peer.store(true, Ordering::Relaxed);
            }
            let ok = peer
                || self
                    .shared
                    .config
                    .token
                    .as_ref()
                    .is_none_or(|t| Some(t) == token.as_ref());
            if ok {
                self.authed.store(true, Ordering::Relaxed);
                return Some(now(Frame::Ok { req: *req }));
            }
            self.conn.close(1u32.into(), b"unauthorized");
            return None;
        }
        if !self.authed.load(Ordering::Relaxed) {
            let answer = error(
                None,
                ErrorCode::Unauthorized,
                "send Hello with the token first",
            );
            return Some(now(answer));
        }
        let conn = self.id;
        Some(match frame {
            Frame::Publish(p) => return self.publish(p, answers).await,
            Frame::Subscribe(s) => {
                let req = Some(s.req);
                let new = match parse_subscribe(&s) {
                    Ok(new) => new,
                    Err(r) => return Some(now(Frame::Error(r.frame(req)))),
                };
                let rx = self
                    .ask(|reply| Input::Subscribe {
                        conn,
                        sub: new,
                        filter_source: s.filter.clone(),
                        ring_version: s.ring_version,
                        reply,
                    })
                    .await;
                let (quic, sub, shared) = (self.conn.clone(), s.id, self.shared.clone());
                let (outbox, credit) = (self.outbox.clone(), s.credit);
                later(req, rx, move |(expires_in_ms, queue)| {
                    if outbox.attach(sub, queue, credit) {
                        let max = shared.config.limits.frame_bytes_max;
                        shared.tasks.spawn(crate::notify::run(
                            quic,
                            outbox,
                            max,
                            shared.cancel.clone(),
                        ));
                    }
                    Some(Frame::Subscribed {
                        req: s.req,
                        sub,
                        expires_in_ms,
                    })
                })
            }
            Frame::Unsubscribe { req, sub } => {
                let rx = self
                    .ask(|reply| Input::Unsubscribe {
                        conn,
                        id: sub,
                        reply,
                    })
                    .await;
                later(Some(req), rx, move |()| Some(Frame::Ok { req }))
            }
            Frame::Renew { req, sub } => {
                let rx = self
                    .ask(|reply| Input::Renew {
                        conn,
                        id: sub,
                        reply,
                    })
                    .await;
                later(Some(req), rx, move |expires_in_ms| {
                    Some(Frame::Subscribed {
                        req,
                        sub,
                        expires_in_ms,
                    })
                })
            }
            Frame::SetFilter { req, sub, filter } => {
                let source = filter.clone();
                let filter = match Filter::parse(&filter) {
                    Ok(f) => f,
                    Err(e) => {
                        return Some(now(error(
                            Some(req),
                            ErrorCode::InvalidFilter,
                            e.to_string(),
                        )))
                    }
                };
                let rx = self
                    .ask(|reply| Input::SetFilter {
                        conn,
                        id: sub,
                        filter,
                        source,
                        reply,
                    })
                    .await;
                later(Some(req), rx, move |()| Some(Frame::Ok { req }))
            }
            Frame::Ack { sub, event, .. } => {
                let _ = self
                    .shared
                    .core
                    .send(Input::Ack {
                        conn,
                        id: sub,
                        event,
                    })
                    .await;
                return None;
            }
            Frame::Credit { sub, n } => {
                self.outbox.grant(sub, n);
                return None;
            }
            Frame::StatsFetch { req } => {
                let (tx, rx) = oneshot::channel();
                let _ = self.shared.core.send(Input::Stats { reply: tx }).await;
                Box::pin(async move {
                    Some(Frame::Stats {
                        req,
                        counters: rx.await.ok()?.counters(),
                    })
                })
            }
            Frame::RingFetch { req } => {
                let (tx, rx) = oneshot::channel();
                let _ = self.shared.core.send(Input::RingNow { reply: tx }).await;
                Box::pin(async move {
                    Some(Frame::Ring {
                        req: Some(req),
                        ring: rx.await.ok()?,
                    })
                })
            }
            Frame::Swim { .. } | Frame::Gossip { .. } | Frame::Forward { .. }
                if self.shared.isolated.load(Ordering::Relaxed) =>
            {
                return None;
            }
            Frame::Swim { .. } | Frame::Gossip { .. } | Frame::Forward { .. }
                if self.shared.peer_token().is_some() && !self.peer.load(Ordering::Relaxed) =>
            {
                return Some(now(error(
                    None,
                    ErrorCode::Unauthorized,
                    "node-to-node frames need the peer token",
                )));
            }
            Frame::Swim { data } => {
                let Some(mesh) = &self.shared.mesh else {
                    return Some(now(not_gossip()));
                };
                // Membership tolerates loss: never wait on a busy mesh.
                let _ = mesh.try_send(crate::mesh::MeshCmd::Swim(data));
                return None;
            }
            Frame::Gossip { from, data } => {
                if self.shared.mesh.is_none() {
                    return Some(now(not_gossip()));
                }
                let msg = match rmp_serde::from_slice(&data) {
                    Ok(msg) => msg,
                    Err(e) => {
                        return Some(now(error(
                            None,
                            ErrorCode::Malformed,
                            format!("undecodable gossip message: {e}"),
                        )))
                    }
                };
                let _ = self.shared.core.send(Input::Gossip { from, msg }).await;
                return None;
            }
            Frame::Forward { subs, event } => {
                if self.shared.mesh.is_none() {
                    return Some(now(not_gossip()));
                }
                let topic = match event.validate(&self.shared.config.limits) {
                    Ok(topic) => topic,
                    Err(e) => {
                        return Some(now(error(None, ErrorCode::InvalidEvent, e.to_string())))
                    }
                };
                let _ = self
                    .shared
                    .core
                    .send(Input::Forwarded { subs, topic, event })
                    .await;
                return None;
            }
            other => now(error(
                None,
                ErrorCode::Malformed,
                format!("a matcher does not serve {}", name(&other)),
            )),
        })
    }

    async fn publish(&self, p: Publish, answers: &mpsc::Sender<Queued>) -> Option<Answer> {
        let topic = match p.event.validate(&self.shared.config.limits) {
            Ok(t) => t,
            Err(e) => {
                let code = match e {
                    EventError::Topic(_) => ErrorCode::InvalidTopic,
                    EventError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
                    _ => ErrorCode::InvalidEvent,
                };
                return Some(now(error(p.req, code, e.to_string())));
            }
        };
        let id = p.event.id;
        match p.req {
            None => {
                // Fire and forget: only a refusal (e.g. not the owner) is answered, by the
                // core, straight to the answer writer.
                let input = Input::Publish {
                    topic,
                    event: p.event,
                    acked: false,
                    ring_version: p.ring_version,
                    reply: PublishReply::Refusals(answers.clone()),
                };
                let _ = self.shared.core.send(input).await;
                None
            }
            Some(req) => {
                let rx = self
                    .ask(|reply| Input::Publish {
                        topic,
                        event: p.event,
                        acked: true,
                        ring_version: p.ring_version,
                        reply: PublishReply::Ack(reply),
                    })
                    .await;
                Some(later(Some(req), rx, move |()| {
                    Some(Frame::PublishAck { req, event: id })
                }))
            }
        }
    }
}

/// An answer for the writer, and whether it must keep its request's place in line.
pub(crate) struct Queued {
    answer: Answer,
    in_order: bool,
}

impl Queued {
    fn ordered(answer: Answer) -> Queued {
        Queued {
            answer,
            in_order: true,
        }
    }

    /// The refusal of a fire-and-forget publish (it has no place in line).
    pub(crate) fn refusal(frame: Frame) -> Queued {
        Queued {
            answer: now(frame),
            in_order: false,
        }
    }
}

/// Writes answers (client requests' in request order, peer messages' as they complete),
/// batching those already available into one write.
async fn write_answers(mut w: FrameWriter, mut rx: mpsc::Receiver<Queued>) {
    let mut ordered = FuturesOrdered::new();
    let mut any = FuturesUnordered::new();
    let mut open = true;
    let mut dirty = false;
    loop {
        let frame = tokio::select! {
            biased;
            q = rx.recv(), if open => {
                match q {
                    Some(Queued { answer, in_order: true }) => ordered.push_back(answer),
                    Some(Queued { answer, in_order: false }) => any.push(answer),
                    None => open = false,
                }
                continue;
            }
            Some(f) = ordered.next(), if !ordered.is_empty() => f,
            Some(f) = any.next(), if !any.is_empty() => f,
            // Nothing else ready: what was pushed goes out in one write.
            () = std::future::ready(()), if dirty => {
                dirty = false;
                if w.flush().await.is_err() {
                    return;
                }
                continue;
            }
            else => break,
        };
        if let Some(frame) = frame {
            if let Err(e) = w.push(&frame) {
                debug!(error = %e, "answer not encoded");
            }
            dirty = true;
        }
    }
    let _ = w.finish().await;
}

fn not_gossip() -> Frame {
    error(
        None,
        ErrorCode::Malformed,
        "this matcher is not a gossip node",
    )
}

fn name(f: &Frame) -> String {
    let debug = format!("{f:?}");
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("a frame")
        .to_owned()
}
