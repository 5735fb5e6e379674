//! The coordinator's QUIC shell: accepts connections and streams, feeds the membership core
//! (owned by one task), and pushes every new ring to the streams that watch it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sift_protocol::frame::{ErrorCode, ErrorFrame, Frame, RequestId, Ring, RingMember};
use sift_protocol::limits::FRAME_BYTES_MAX;
use sift_protocol::net::{server_endpoint, FrameReader, FrameWriter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::membership::{Change, Membership, MembershipError, TransitionConfig};

/// Coordinator settings. `CoordinatorConfig::default()` is for production defaults; see each
/// field for its unit and bounds.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Where to listen (UDP). Default `0.0.0.0:7400`.
    pub listen: SocketAddr,
    /// A matcher silent for this long is dead and leaves the ring. Default 2.5 s; must be
    /// several heartbeat intervals.
    pub dead_after: Duration,
    /// Largest frame accepted, in bytes.
    pub frame_bytes_max: usize,
    /// Most client connections at once; more are refused. Default 10,000.
    pub connections_max: usize,
    /// When set, every connection (matchers, clients, operators) must present this token in
    /// `Hello` on a stream of its own before anything else.
    pub token: Option<String>,
    /// The replication factor R, 1 ..= 5: an exact topic's subscriptions live on its R
    /// successive owners, and acknowledged publishes are held by all of them. Default 1.
    pub replicas: u32,
    /// A ring transition whose handoff is not confirmed by every matcher within this is
    /// aborted (the active ring stays) and tried again a second later. Default 10 s.
    pub handoff_timeout: Duration,
    /// After start, how long to wait for matchers to report the ring they serve with (a
    /// restarted coordinator adopts it) before changing the ring. Default: `dead_after`;
    /// zero for a cluster known to be new.
    pub recovery: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> CoordinatorConfig {
        CoordinatorConfig {
            listen: ([0, 0, 0, 0], 7400).into(),
            dead_after: Duration::from_millis(2500),
            frame_bytes_max: 64 * 1024,
            connections_max: 10_000,
            token: None,
            replicas: 1,
            handoff_timeout: Duration::from_secs(10),
            recovery: Duration::from_millis(2500),
        }
    }
}

/// The rings a matcher follows: the active one and, during a transition, the next.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterState {
    /// The ring clients route by.
    pub active: Ring,
    /// The announced next ring, while a transition is under way.
    pub pending: Option<Ring>,
}

impl ClusterState {
    fn frame(&self) -> Frame {
        self.frame_for(false)
    }

    /// The frame for one matcher, with the coordinator's verdict on its registration.
    fn frame_for(&self, restarted: bool) -> Frame {
        Frame::Cluster {
            active: self.active.clone(),
            pending: self.pending.clone(),
            restarted,
        }
    }
}

enum Input {
    Register {
        member: RingMember,
        active: Option<Ring>,
        draining: bool,
        reply: oneshot::Sender<Result<bool, MembershipError>>,
    },
    Heartbeat {
        node: String,
        reply: oneshot::Sender<Result<(), MembershipError>>,
    },
    Confirm {
        node: String,
        version: u64,
    },
    Nodes {
        reply: oneshot::Sender<Vec<sift_protocol::frame::NodeStatus>>,
    },
    Drain {
        node: String,
        reply: oneshot::Sender<Result<(), MembershipError>>,
    },
    Remove {
        node: String,
        reply: oneshot::Sender<Result<(), MembershipError>>,
    },
}

/// A running coordinator.
pub struct Coordinator {
    endpoint: quinn::Endpoint,
    ring: watch::Receiver<Ring>,
    cluster: watch::Receiver<ClusterState>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// Bound of the queue into the membership task.
const INPUT_QUEUE_LEN_MAX: usize = 1024;

impl Coordinator {
    /// Starts a coordinator with `tls` on `config.listen`.
    pub fn start(
        config: CoordinatorConfig,
        tls: quinn::ServerConfig,
    ) -> std::io::Result<Coordinator> {
        let endpoint = server_endpoint(config.listen, tls)?;
        // Ring versions start at the wall clock in milliseconds, so that after a restart they
        // are still above anything clients and matchers saw from the previous run.
        let first_version = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let timing = TransitionConfig {
            dead_after_ms: config.dead_after.as_millis() as u64,
            handoff_timeout_ms: config.handoff_timeout.as_millis() as u64,
            retry_after_ms: 1000,
            replicas: config.replicas,
            recovery_ms: config.recovery.as_millis() as u64,
        };
        let membership = Membership::new(timing, first_version, 0);
        let (ring_tx, ring_rx) = watch::channel(membership.ring());
        let (cluster_tx, cluster_rx) = watch::channel(ClusterState {
            active: membership.ring(),
            pending: None,
        });
        let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE_LEN_MAX);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let outputs = Outputs {
            ring: ring_tx,
            cluster: cluster_tx,
        };
        tasks.spawn(core_task(membership, input_rx, outputs, cancel.clone()));
        let watches = Watches {
            ring: ring_rx.clone(),
            cluster: cluster_rx.clone(),
        };
        tasks.spawn(accept_loop(
            endpoint.clone(),
            input_tx,
            watches,
            config,
            cancel.clone(),
            tasks.clone(),
        ));
        info!(addr = %endpoint.local_addr()?, "coordinator listening");
        Ok(Coordinator {
            endpoint,
            ring: ring_rx,
            cluster: cluster_rx,
            cancel,
            tasks,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The current ring.
    pub fn ring(&self) -> Ring {
        self.ring.borrow().clone()
    }

    /// A receiver that sees every new active ring.
    pub fn watch(&self) -> watch::Receiver<Ring> {
        self.ring.clone()
    }

    /// A receiver that sees every change of the active or pending ring.
    pub fn watch_cluster(&self) -> watch::Receiver<ClusterState> {
        self.cluster.clone()
    }

    /// Stops accepting, closes connections and waits for the tasks to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.endpoint.close(0u32.into(), b"shutdown");
        self.tasks.close();
        self.tasks.wait().await;
        // The closes are sent; waiting for idle only lets them out, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Where the core task publishes rings.
struct Outputs {
    /// The active ring, for clients.
    ring: watch::Sender<Ring>,
    /// Active and pending, for matchers.
    cluster: watch::Sender<ClusterState>,
}

/// The receiving ends of [`Outputs`], for the streams.
#[derive(Clone)]
struct Watches {
    ring: watch::Receiver<Ring>,
    cluster: watch::Receiver<ClusterState>,
}

async fn core_task(
    mut m: Membership,
    mut input: mpsc::Receiver<Input>,
    out: Outputs,
    cancel: CancellationToken,
) {
    let start = Instant::now();
    let now_ms = |start: Instant| start.elapsed().as_millis() as u64;
    loop {
        let deadline = m
            .next_deadline()
            .map(|ms| start + Duration::from_millis(ms));
        let generation = m.generation();
        tokio::select! {
            _ = cancel.cancelled() => break,
            msg = input.recv() => match msg {
                None => break,
                Some(msg) => handle(&mut m, now_ms(start), msg),
            },
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                m.tick(now_ms(start));
            }
        }
        log_changes(&mut m);
        if m.generation() != generation {
            let state = ClusterState {
                active: m.ring(),
                pending: m.pending().cloned(),
            };
            if *out.ring.borrow() != state.active {
                out.ring.send_replace(state.active.clone());
            }
            out.cluster.send_replace(state);
        }
    }
}

fn log_changes(m: &mut Membership) {
    for change in m.drain_changes() {
        match change {
            Change::Announced { version, waiting } => {
                let ring = m.pending().map_or(0, |r| r.members.len());
                info!(
                    version,
                    members = ring,
                    ?waiting,
                    "next ring announced; waiting for handoffs"
                )
            }
            Change::Activated { version } => {
                info!(version, members = m.ring().members.len(), "ring activated")
            }
            Change::Aborted { version, reason } => {
                warn!(version, %reason, "ring transition aborted; the active ring stays")
            }
            Change::Died { node } => {
                warn!(%node, "matcher missed its heartbeats; it leaves the ring")
            }
            Change::Adopted { version } => {
                info!(
                    version,
                    members = m.ring().members.len(),
                    "adopted the ring the matchers serve with"
                )
            }
        }
    }
}

fn handle(m: &mut Membership, now: u64, msg: Input) {
    // A dropped reply means the requester went away; nothing to do.
    match msg {
        Input::Register {
            member,
            active,
            draining,
            reply,
        } => {
            let _ = reply.send(m.register(now, member, active.as_ref(), draining));
        }
        Input::Heartbeat { node, reply } => {
            let _ = reply.send(m.heartbeat(now, &node));
        }
        Input::Confirm { node, version } => m.confirm(now, &node, version),
        Input::Nodes { reply } => {
            let _ = reply.send(m.status(now));
        }
        Input::Drain { node, reply } => {
            let _ = reply.send(m.drain(now, &node).map(|_| ()));
        }
        Input::Remove { node, reply } => {
            let _ = reply.send(m.remove(now, &node));
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    input: mpsc::Sender<Input>,
    watches: Watches,
    config: CoordinatorConfig,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(config.connections_max));
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(
                max = config.connections_max,
                "connection refused: too many connections"
            );
            incoming.refuse();
            continue;
        };
        let (input, watches2, cancel2, tasks2) = (
            input.clone(),
            watches.clone(),
            cancel.clone(),
            tasks.clone(),
        );
        let max = config.frame_bytes_max;
        let token = config.token.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return debug!(error = %e, "handshake failed"),
            };
            let span = tracing::info_span!("conn", peer = %conn.remote_address());
            serve_connection(conn, input, watches2, max, token, cancel2, tasks2)
                .instrument(span)
                .await;
        });
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    input: mpsc::Sender<Input>,
    watches: Watches,
    max: usize,
    token: Option<String>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let auth = Arc::new(Auth {
        token,
        passed: AtomicBool::new(false),
        conn: conn.clone(),
    });
    loop {
        let (send, recv) = tokio::select! {
            _ = cancel.cancelled() => break,
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => break },
        };
        let stream = Stream {
            reader: FrameReader::new(recv, max),
            // What the coordinator sends (rings) may be larger than what it accepts.
            writer: FrameWriter::new(send, FRAME_BYTES_MAX),
            input: input.clone(),
            auth: auth.clone(),
        };
        tasks.spawn(stream.serve(watches.clone(), cancel.clone()));
    }
}

struct Stream {
    reader: FrameReader,
    writer: FrameWriter,
    input: mpsc::Sender<Input>,
    auth: Arc<Auth>,
}

/// A connection's standing: whether it presented the token (when one is required).
struct Auth {
    token: Option<String>,
    passed: AtomicBool,
    conn: quinn::Connection,
}

impl Auth {
    fn ok(&self) -> bool {
        self.token.is_none() || self.passed.load(Ordering::Acquire)
    }
}

fn error_frame(req: RequestId, code: ErrorCode, message: String) -> Frame {
    Frame::Error(ErrorFrame {
        req: Some(req),
        code,
        message,
        ring_version: None,
    })
}

fn membership_error(req: RequestId, e: MembershipError) -> Frame {
    let code = match e {
        MembershipError::UnknownNode(_) => ErrorCode::UnknownNode,
        MembershipError::Invalid(_) => ErrorCode::Malformed,
        MembershipError::Full => ErrorCode::LimitReached,
        MembershipError::Removed(_) | MembershipError::NotDrained(_) => ErrorCode::Forbidden,
    };
    error_frame(req, code, e.to_string())
}

impl Stream {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.input.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Serves one stream: its first frame says what it is for.
    async fn serve(mut self, watches: Watches, cancel: CancellationToken) {
        let ring = watches.ring;
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            f = self.reader.next() => f,
        };
        let reply = match first {
            Ok(Some(Frame::Hello { req, token })) => {
                if self.auth.token.is_none() || token == self.auth.token {
                    self.auth.passed.store(true, Ordering::Release);
                    Frame::Ok { req }
                } else {
                    warn!("wrong token; closing the connection");
                    self.auth.conn.close(1u32.into(), b"unauthorized");
                    return;
                }
            }
            Ok(Some(frame)) if !self.auth.ok() => Frame::Error(ErrorFrame {
                req: request_id(&frame),
                code: ErrorCode::Unauthorized,
                message: "this coordinator requires a token: send Hello first".into(),
                ring_version: None,
            }),
            Ok(Some(Frame::Register {
                req,
                member,
                active,
                draining,
            })) => {
                return self
                    .register(req, member, active, draining, watches.cluster, cancel)
                    .await
            }
            Ok(Some(Frame::Watch { req })) => return self.watch(req, ring, cancel).await,
            Ok(Some(Frame::RingFetch { req })) => Frame::Ring {
                req: Some(req),
                ring: ring.borrow().clone(),
            },
            Ok(Some(Frame::AdminNodes { req })) => {
                match self.ask(|reply| Input::Nodes { reply }).await {
                    Some(nodes) => Frame::Nodes { req, nodes },
                    None => return,
                }
            }
            Ok(Some(Frame::AdminDrain { req, node })) => {
                self.admin(req, |reply| Input::Drain { node, reply }).await
            }
            Ok(Some(Frame::AdminRemove { req, node })) => {
                self.admin(req, |reply| Input::Remove { node, reply }).await
            }
            Ok(Some(other)) => Frame::Error(ErrorFrame {
                req: None,
                code: ErrorCode::Malformed,
                message: format!("a coordinator does not serve {}", frame_name(&other)),
                ring_version: None,
            }),
            Ok(None) => return,
            Err(e) => Frame::Error(ErrorFrame {
                req: None,
                code: match &e {
                    sift_protocol::net::NetError::Decode(d) => d.code(),
                    _ => ErrorCode::Malformed,
                },
                message: e.to_string(),
                ring_version: None,
            }),
        };
        let _ = self.writer.send(&reply).await;
        let _ = self.writer.finish().await;
    }

    async fn admin(
        &self,
        req: RequestId,
        make: impl FnOnce(oneshot::Sender<Result<(), MembershipError>>) -> Input,
    ) -> Frame {
        match self.ask(make).await {
            Some(Ok(())) => Frame::Ok { req },
            Some(Err(e)) => membership_error(req, e),
            None => error_frame(
                req,
                ErrorCode::ShuttingDown,
                "the coordinator is stopping".into(),
            ),
        }
    }

    /// A matcher's register stream: the cluster state now and after every change; its
    /// heartbeats and handoff confirmations.
    async fn register(
        mut self,
        req: RequestId,
        member: RingMember,
        active: Option<Ring>,
        draining: bool,
        mut cluster: watch::Receiver<ClusterState>,
        cancel: CancellationToken,
    ) {
        let id = member.id.clone();
        let answer = self
            .ask(|reply| Input::Register {
                member,
                active,
                draining,
                reply,
            })
            .await;
        let reply = match answer {
            // The core publishes right after answering: a state read here that misses this
            // registration is followed at once by the one that has it.
            Some(Ok(restarted)) => cluster.borrow_and_update().frame_for(restarted),
            Some(Err(e)) => membership_error(req, e),
            None => return,
        };
        let refused = matches!(reply, Frame::Error(_));
        if self.writer.send(&reply).await.is_err() || refused {
            return;
        }
        info!(node = %id, "matcher registered");
        loop {
            let frame = tokio::select! {
                _ = cancel.cancelled() => break,
                changed = cluster.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = cluster.borrow_and_update().frame();
                    if self.writer.send(&state).await.is_err() {
                        break;
                    }
                    continue;
                }
                f = self.reader.next() => f,
            };
            let reply = match frame {
                Ok(Some(Frame::Heartbeat { req, node })) => {
                    match self.ask(|reply| Input::Heartbeat { node, reply }).await {
                        Some(Ok(())) => Frame::Ok { req },
                        Some(Err(e)) => membership_error(req, e),
                        None => break,
                    }
                }
                Ok(Some(Frame::Confirm { req, node, version })) => {
                    if node != id {
                        error_frame(
                            req,
                            ErrorCode::Forbidden,
                            format!("{id} cannot confirm for {node}"),
                        )
                    } else if self
                        .input
                        .send(Input::Confirm { node, version })
                        .await
                        .is_err()
                    {
                        break;
                    } else {
                        Frame::Ok { req }
                    }
                }
                Ok(Some(other)) => error_frame(
                    0,
                    ErrorCode::Malformed,
                    format!("expected a heartbeat, got {}", frame_name(&other)),
                ),
                Ok(None) | Err(_) => break,
            };
            if self.writer.send(&reply).await.is_err() {
                break;
            }
        }
        debug!(node = %id, "register stream closed");
    }

    async fn watch(
        mut self,
        req: RequestId,
        mut ring: watch::Receiver<Ring>,
        cancel: CancellationToken,
    ) {
        let first = ring.borrow_and_update().clone();
        if self
            .writer
            .send(&Frame::Ring {
                req: Some(req),
                ring: first,
            })
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = ring.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let next = ring.borrow_and_update().clone();
                    if self.writer.send(&Frame::Ring { req: None, ring: next }).await.is_err() {
                        break;
                    }
                }
                // The watcher closing its side ends the watch.
                end = self.reader.next() => if !matches!(end, Ok(Some(_))) { break },
            }
        }
        let _ = self.writer.finish().await;
    }
}

/// The variant name of a frame, for messages.
/// The request id of a frame a coordinator serves.
fn request_id(f: &Frame) -> Option<RequestId> {
    match f {
        Frame::Register { req, .. }
        | Frame::Heartbeat { req, .. }
        | Frame::Watch { req }
        | Frame::RingFetch { req }
        | Frame::AdminNodes { req }
        | Frame::AdminDrain { req, .. }
        | Frame::AdminRemove { req, .. }
        | Frame::Confirm { req, .. } => Some(*req),
        _ => None,
    }
}

pub(crate) fn frame_name(f: &Frame) -> String {
    let debug = format!("{f:?}");
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("a frame")
        .to_owned()
}
