//! `sift-matcher`: a matcher node. The QUIC server around the matching engine: clients
//! subscribe, unsubscribe, renew, replace filters and publish on request streams; each
//! subscription's notifications flow on a stream the server opens; the node registers with
//! the coordinator, heartbeats and follows the ring.
//!
//! Tasks: one core task owns the engine and all delivery state (`core.rs`); one task per
//! request stream parses and validates (`conn.rs`); one task per subscription writes its
//! notifications (`notify.rs`); one task keeps the coordinator link (`link.rs`).

mod config;
mod conn;
mod core;
mod link;
mod mesh;
mod notify;
mod peer;
mod queue;
mod replica;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use sift_protocol::frame::{Ring, RingMember};
use sift_protocol::net::{client_endpoint, server_endpoint};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

pub use crate::config::{GossipConfig, MatcherConfig, SlowConsumer};
pub use crate::core::MatcherStats;

/// Bound of the queue into the core task.
const CORE_QUEUE_LEN_MAX: usize = 4096;
/// Confirmations of completed handoffs waiting for the coordinator link.
const CONFIRM_QUEUE_LEN_MAX: usize = 16;

/// Bound of the queue into a gossip node's mesh task (gossip messages and forwarded events
/// on their way to peers; past it they are dropped and counted as `peer_dropped`).
const MESH_QUEUE_LEN_MAX: usize = 65_536;
/// Bound of the mesh task's control queue (membership packets and timers, read first).
const MESH_CONTROL_QUEUE_LEN_MAX: usize = 4096;

/// A running matcher.
pub struct Matcher {
    endpoint: quinn::Endpoint,
    core: mpsc::Sender<crate::core::Input>,
    me: RingMember,
    cancel: CancellationToken,
    tasks: TaskTracker,
    isolated: Arc<AtomicBool>,
    /// True once a lame-duck drain started (what the link registers).
    draining: watch::Sender<bool>,
    /// The active ring, as the core has it.
    ring: watch::Receiver<Ring>,
}

impl Matcher {
    /// Starts a matcher: `tls` for its server side, and `coordinator_tls` to reach the
    /// coordinator when `config.coordinator` is set — or, for a gossip node
    /// (`config.gossip`), to reach its peers.
    pub fn start(
        config: MatcherConfig,
        tls: quinn::ServerConfig,
        coordinator_tls: Option<quinn::ClientConfig>,
    ) -> std::io::Result<Matcher> {
        if config.gossip.is_some() && config.coordinator.is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a gossip node has no coordinator",
            ));
        }
        if config.gossip.is_some() && coordinator_tls.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a gossip node needs client TLS settings to reach its peers",
            ));
        }
        let endpoint = server_endpoint(config.listen, tls)?;
        let local = endpoint.local_addr()?;
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| advertised(local));
        let me = RingMember {
            id: config.id.clone(),
            addr,
            weight: config.weight,
        };
        // Standalone, a matcher owns everything; with a coordinator it waits for the ring.
        let ring = match config.coordinator {
            None => Ring::new(1, vec![me.clone()]),
            Some(_) => Ring::empty(),
        };
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (core_tx, core_rx) = mpsc::channel(CORE_QUEUE_LEN_MAX);
        let span = tracing::info_span!("matcher", id = %me.id);
        let mut mesh_tx = None;
        let isolated = Arc::new(AtomicBool::new(false));
        let gossip = match (&config.gossip, &coordinator_tls) {
            (Some(g), Some(tls)) => {
                let (tx, rx) = mpsc::channel(MESH_QUEUE_LEN_MAX);
                let (control_tx, control_rx) = mpsc::channel(MESH_CONTROL_QUEUE_LEN_MAX);
                let id: u64 = rand::random();
                let advertised: SocketAddr = me.addr.parse().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "a gossip node advertises an IP address and port, not {:?}",
                            me.addr
                        ),
                    )
                })?;
                let mesh = mesh::Mesh {
                    me: mesh::PeerId {
                        id,
                        addr: advertised,
                        started: replica::unix_ms(),
                        bump: 0,
                    },
                    seeds: g.seeds.clone(),
                    endpoint: client_endpoint(tls.clone())?,
                    server_name: g.server_name.clone(),
                    // Peers present the peer token, or else the clients' one (if any).
                    token: g.peer_token.clone().or_else(|| config.token.clone()),
                    probe_period: g.probe_period,
                    max_frame_bytes: config.limits.frame_bytes_max,
                    core: core_tx.clone(),
                    control_tx: control_tx.clone(),
                    control_rx,
                    rx,
                    tasks: tasks.clone(),
                    isolated: isolated.clone(),
                };
                tasks.spawn(mesh.run(cancel.clone()).instrument(span.clone()));
                mesh_tx = Some(control_tx);
                Some(crate::core::GossipSetup {
                    id,
                    config: g.clone(),
                    mesh: tx,
                })
            }
            _ => None,
        };
        let (draining, draining_rx) = watch::channel(false);
        let (ring_tx, ring_rx) = watch::channel(ring.clone());
        let (confirm_tx, confirm_rx) = mpsc::channel(CONFIRM_QUEUE_LEN_MAX);
        let peers = match (&config.coordinator, &coordinator_tls) {
            (Some((_, name)), Some(tls)) => Some(peer::PeerLinks::new(peer::PeerSetup {
                endpoint: client_endpoint(tls.clone())?,
                // Matchers present certificates for the same name as the coordinator's.
                server_name: name.clone(),
                token: config.coordinator_token.clone(),
                me: me.id.clone(),
                max_frame_bytes: config.limits.frame_bytes_max,
                core: core_tx.clone(),
                tasks: tasks.clone(),
                cancel: cancel.clone(),
            })),
            _ => None,
        };
        let core = crate::core::Core::new(
            me.clone(),
            config.clone(),
            ring,
            gossip,
            peers,
            Some(confirm_tx),
            ring_tx,
        );
        tasks.spawn(core.run(core_rx, cancel.clone()).instrument(span.clone()));
        if let (Some((addr, name)), Some(tls)) = (config.coordinator.clone(), coordinator_tls) {
            let link = link::Link {
                confirms: confirm_rx,
                draining: draining_rx,
                endpoint: client_endpoint(tls)?,
                coordinator: addr,
                server_name: name,
                me: me.clone(),
                heartbeat: config.heartbeat_interval,
                max_frame_bytes: config.limits.frame_bytes_max,
                token: config.coordinator_token.clone(),
                core: core_tx.clone(),
            };
            tasks.spawn(link.run(cancel.clone()).instrument(span.clone()));
        }
        let shared = Arc::new(conn::Shared {
            core: core_tx.clone(),
            config,
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            next_conn: AtomicU64::new(1),
            mesh: mesh_tx,
            isolated: isolated.clone(),
        });
        tasks.spawn(accept(endpoint.clone(), shared).instrument(span));
        info!(addr = %local, id = %me.id, "matcher listening");
        Ok(Matcher {
            endpoint,
            core: core_tx,
            me,
            cancel,
            tasks,
            isolated,
            draining,
            ring: ring_rx,
        })
    }

    /// Gossip mode, fault injection: while isolated, the node drops every membership, gossip
    /// and forwarded-event frame it would send or receive — a network partition between it and
    /// the other nodes, while its clients still reach it. For failure drills and tests.
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated
            .store(isolated, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lame-duck drain, what SIGTERM does: the matcher registers again as draining, so the
    /// coordinator takes it out of the ring through the two-step handoff (its subscriptions
    /// and unacknowledged notifications move to their new owners), and it keeps serving
    /// meanwhile. Returns once the active ring no longer includes it and `grace` (for its
    /// clients to move) has passed — true — or after `timeout` without leaving the ring —
    /// false. A matcher without a coordinator has no ring to leave: true at once.
    pub async fn drain(&self, grace: Duration, timeout: Duration) -> bool {
        if *self.draining.borrow() && !self.ring.borrow().contains(&self.me.id) {
            return true;
        }
        self.draining.send_replace(true);
        if self.ring.borrow().version == 1 && self.ring.borrow().members == [self.me.clone()] {
            // Standalone.
            return true;
        }
        let me = self.me.id.clone();
        let mut ring = self.ring.clone();
        let left = tokio::time::timeout(timeout, ring.wait_for(|r| !r.contains(&me)))
            .await
            .is_ok_and(|r| r.is_ok());
        if left {
            info!(
                grace_ms = grace.as_millis() as u64,
                "out of the ring; waiting for clients to move"
            );
            tokio::time::sleep(grace).await;
        }
        left
    }

    /// True once a lame-duck drain started: readiness fails from then on.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The active ring as this matcher serves with it.
    pub fn ring(&self) -> Ring {
        self.ring.borrow().clone()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Its identity, address and weight in the ring.
    pub fn member(&self) -> &RingMember {
        &self.me
    }

    /// Counters since start (`None` once stopped).
    pub async fn stats(&self) -> Option<MatcherStats> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.core
            .send(crate::core::Input::Stats { reply: tx })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Stops: ends every subscription stream, closes connections, waits for the tasks.
    /// Subscribers that read get their `Ended { Shutdown }` within this; one that does not
    /// cannot hold the shutdown longer.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::debug!("streams still busy at shutdown; closing the connections");
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        self.tasks.wait().await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
    }
}

/// How long a stopping matcher lets its streams finish, and its connections close.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The address to advertise for a socket bound to `local` (an unspecified IP becomes
/// loopback, for local setups).
fn advertised(local: SocketAddr) -> String {
    let ip = if local.ip().is_unspecified() {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        local.ip()
    };
    SocketAddr::new(ip, local.port()).to_string()
}

async fn accept(endpoint: quinn::Endpoint, shared: Arc<conn::Shared>) {
    let max = shared.config.connections_max;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(max, "connection refused: too many connections");
            incoming.refuse();
            continue;
        };
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            let _slot = slot;
            match incoming.await {
                Ok(conn) => {
                    let span = tracing::info_span!("conn", peer = %conn.remote_address());
                    conn::serve(conn, shared2).instrument(span).await;
                }
                Err(e) => tracing::debug!(error = %e, "handshake failed"),
            }
        });
    }
}
