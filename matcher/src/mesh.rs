//! Gossip mode's network side: SWIM membership (the `foca` crate) and one QUIC link per peer.
//!
//! The mesh task owns the membership state machine and the links; the core task owns the
//! dissemination state machine and hands it messages to send (`MeshCmd::Send`). Membership
//! packets travel on one link (connection) to a peer and gossip messages and forwarded events
//! on another (`Frame::Swim`; `Frame::Gossip`, `Frame::Forward`), so a peer slow to take data
//! never holds up membership; the mesh task also reads membership input on its own channel,
//! ahead of data. A node's own server accepts these streams like any request stream. Links are
//! one-way: a node sends on its own links to a peer and receives on the peer's links to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foca::{
    AccumulatingRuntime, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sift_matcher_core::gossip::NodeId;
use sift_protocol::frame::Frame;
use sift_protocol::net::{FrameReader, FrameWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::core::Input;

/// What the mesh task is asked to do. `Send` comes from the core on the data channel;
/// `Swim` and `Timer` on the control channel, which the mesh reads first.
pub(crate) enum MeshCmd {
    /// Send a frame to a member.
    Send { to: NodeId, frame: Frame },
    /// A membership packet arrived.
    Swim(Bytes),
    /// A membership timer fired.
    Timer(Timer<PeerId>),
}

/// A gossip node's identity in membership: its gossip id, its QUIC address, when it started
/// and how often it rejoined (a restarted node wins over its old self at the same address).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct PeerId {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) started: u64,
    pub(crate) bump: u16,
}

impl Identity for PeerId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(PeerId {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.started, self.bump) > (adversary.started, adversary.bump)
    }
}

/// Data frames queued per link before new ones are dropped (gossip tolerates loss;
/// anti-entropy repairs it).
const LINK_QUEUE_LEN: usize = 16_384;
/// Membership packets queued per link.
const LINK_SWIM_QUEUE_LEN: usize = 256;
/// How often to announce to the seeds while no other member is known.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(500);
/// How long a link waits for a connection or a stream.
const LINK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Mesh {
    pub(crate) me: PeerId,
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) server_name: String,
    pub(crate) token: Option<String>,
    pub(crate) probe_period: Duration,
    pub(crate) max_frame_bytes: usize,
    pub(crate) core: mpsc::Sender<Input>,
    /// Control input (membership packets, timers): read before data.
    pub(crate) control_tx: mpsc::Sender<MeshCmd>,
    pub(crate) control_rx: mpsc::Receiver<MeshCmd>,
    /// Data input from the core (frames to send).
    pub(crate) rx: mpsc::Receiver<MeshCmd>,
    pub(crate) tasks: TaskTracker,
    pub(crate) isolated: Arc<AtomicBool>,
}

/// The sending ends of one link.
struct LinkTx {
    swim: mpsc::Sender<Frame>,
    data: mpsc::Sender<Frame>,
}

struct State {
    foca: Foca<PeerId, PostcardCodec, StdRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<PeerId>,
    members: HashMap<NodeId, SocketAddr>,
    links: HashMap<SocketAddr, LinkTx>,
    /// The core has not been told the latest membership yet.
    members_unsent: bool,
}

impl Mesh {
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let mut config = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(7));
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_period / 2;
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.probe_period / 2,
            num_members: std::num::NonZeroUsize::MIN.saturating_add(2),
        });
        config.suspect_to_down_after = self.probe_period * 4;
        let rng = StdRng::from_rng(&mut rand::rng());
        let mut state = State {
            foca: Foca::new(self.me.clone(), config, rng, PostcardCodec),
            runtime: AccumulatingRuntime::new(),
            members: HashMap::new(),
            links: HashMap::new(),
            members_unsent: false,
        };
        let mut announce = tokio::time::interval(ANNOUNCE_EVERY);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(id = self.me.id, addr = %self.me.addr, seeds = self.seeds.len(), "gossip node joining");
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                cmd = self.control_rx.recv() => match cmd {
                    Some(cmd) => self.handle(&mut state, cmd),
                    None => break,
                },
                _ = announce.tick() => {
                    if state.members.is_empty() {
                        for &seed in &self.seeds {
                            if seed == self.me.addr {
                                continue;
                            }
                            let dst = PeerId { id: 0, addr: seed, started: 0, bump: 0 };
                            if let Err(e) = state.foca.announce(dst, &mut state.runtime) {
                                debug!(error = %e, "announce failed");
                            }
                        }
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(&mut state, cmd),
                    None => break,
                },
            }
            self.drain(&mut state, &cancel).await;
        }
        let _ = state.foca.leave_cluster(&mut state.runtime);
        while let Some((to, data)) = state.runtime.to_send() {
            self.send(&mut state, to.addr, Frame::Swim { data });
        }
        // Dropping the links' senders ends them once they have written what they hold.
        state.links.clear();
    }

    fn handle(&self, state: &mut State, cmd: MeshCmd) {
        match cmd {
            MeshCmd::Send { to, frame } => {
                if let Some(&addr) = state.members.get(&to) {
                    self.send(state, addr, frame);
                }
            }
            MeshCmd::Swim(data) => {
                if let Err(e) = state.foca.handle_data(&data, &mut state.runtime) {
                    debug!(error = %e, "bad membership packet");
                }
            }
            MeshCmd::Timer(timer) => {
                if let Err(e) = state.foca.handle_timer(timer, &mut state.runtime) {
                    debug!(error = %e, "membership timer");
                }
            }
        }
    }

    /// Acts on what the membership state machine produced.
    async fn drain(&self, state: &mut State, cancel: &CancellationToken) {
        while let Some((to, data)) = state.runtime.to_send() {
            self.send(state, to.addr, Frame::Swim { data });
        }
        while let Some((after, timer)) = state.runtime.to_schedule() {
            let tx = self.control_tx.clone();
            let cancel = cancel.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(after) => { let _ = tx.send(MeshCmd::Timer(timer)).await; }
                }
            });
        }
        let mut changed = false;
        while let Some(note) = state.runtime.to_notify() {
            match note {
                OwnedNotification::MemberUp(p) => {
                    info!(node = p.id, addr = %p.addr, "gossip member up");
                    state.members.insert(p.id, p.addr);
                    changed = true;
                }
                OwnedNotification::MemberDown(p) => {
                    info!(node = p.id, addr = %p.addr, "gossip member down");
                    if state.members.get(&p.id) == Some(&p.addr) {
                        state.members.remove(&p.id);
                        state.links.remove(&p.addr);
                    }
                    changed = true;
                }
                // Only an active member's new identity is a member (foca also renames
                // identities that are down).
                OwnedNotification::Rename(old, new) if state.members.contains_key(&old.id) => {
                    state.members.remove(&old.id);
                    state.members.insert(new.id, new.addr);
                    changed = true;
                }
                OwnedNotification::Defunct => warn!("declared down by the cluster; rejoining"),
                _ => {}
            }
        }
        // Never wait on a busy core (membership must keep answering probes): if its queue
        // is full, tell it after the next input.
        if changed || state.members_unsent {
            let mut peers: Vec<NodeId> = state.members.keys().copied().collect();
            peers.sort_unstable();
            state.members_unsent = self.core.try_send(Input::Members(peers)).is_err();
        }
    }

    /// Queues a frame on the link to `addr`, starting the link if needed.
    fn send(&self, state: &mut State, addr: SocketAddr, frame: Frame) {
        if self.isolated.load(Ordering::Relaxed) {
            return;
        }
        let link = state.links.entry(addr).or_insert_with(|| {
            let (swim, swim_rx) = mpsc::channel(LINK_SWIM_QUEUE_LEN);
            let (data, data_rx) = mpsc::channel(LINK_QUEUE_LEN);
            // Two links, each its own connection: a peer that is slow to take data (flow
            // control) never holds up its probes.
            for rx in [swim_rx, data_rx] {
                let link = Link {
                    endpoint: self.endpoint.clone(),
                    addr,
                    server_name: self.server_name.clone(),
                    token: self.token.clone(),
                    max_frame_bytes: self.max_frame_bytes,
                };
                self.tasks.spawn(link.run(rx));
            }
            LinkTx { swim, data }
        });
        let queue = if matches!(frame, Frame::Swim { .. }) {
            &link.swim
        } else {
            &link.data
        };
        if queue.try_send(frame).is_err() {
            debug!(peer = %addr, "link queue full; frame dropped");
        }
    }
}

/// One outgoing link to a peer: a QUIC connection and one stream of frames, re-established
/// with backoff while there is something to send. Ends when the mesh drops its sender. A
/// peer has two: one for membership packets, one for data.
struct Link {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    token: Option<String>,
    max_frame_bytes: usize,
}

impl Link {
    async fn run(self, mut rx: mpsc::Receiver<Frame>) {
        let mut backoff = Duration::from_millis(100);
        let mut pending: Option<Frame> = None;
        loop {
            if pending.is_none() {
                pending = rx.recv().await;
                if pending.is_none() {
                    return;
                }
            }
            let (conn, mut writer) = match self.connect().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(peer = %self.addr, error = %e, "gossip link down");
                    // What queued while the peer was unreachable is stale; anti-entropy and
                    // membership catch up.
                    pending = None;
                    while rx.try_recv().is_ok() {}
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                if let Some(frame) = pending.take() {
                    if writer.push(&frame).is_err() {
                        debug!(peer = %self.addr, "frame not encodable; dropped");
                    }
                }
                while let Ok(f) = rx.try_recv() {
                    if writer.push(&f).is_err() {
                        debug!(peer = %self.addr, "frame not encodable; dropped");
                    }
                }
                let flushed = tokio::time::timeout(LINK_CONNECT_TIMEOUT, writer.flush()).await;
                if !matches!(flushed, Ok(Ok(()))) {
                    break;
                }
                pending = rx.recv().await;
                if pending.is_none() {
                    let _ = tokio::time::timeout(LINK_CONNECT_TIMEOUT, writer.finish()).await;
                    conn.close(0u32.into(), b"done");
                    return;
                }
            }
            conn.close(0u32.into(), b"reconnect");
        }
    }

    async fn connect(&self) -> Result<(quinn::Connection, FrameWriter), String> {
        tokio::time::timeout(LINK_CONNECT_TIMEOUT, self.open())
            .await
            .map_err(|_| "connect timed out".to_string())?
    }

    async fn open(&self) -> Result<(quinn::Connection, FrameWriter), String> {
        let conn = self
            .endpoint
            .connect(self.addr, &self.server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut writer = FrameWriter::new(send, self.max_frame_bytes);
        if self.token.is_some() {
            writer
                .push(&Frame::Hello {
                    req: 1,
                    token: self.token.clone(),
                })
                .map_err(|e| e.to_string())?;
        }
        // The peer only answers the Hello (and errors); read them so its stream never blocks.
        let mut reader = FrameReader::new(recv, self.max_frame_bytes);
        let peer = self.addr;
        tokio::spawn(async move {
            while let Ok(Some(frame)) = reader.next().await {
                if let Frame::Error(e) = frame {
                    debug!(%peer, code = ?e.code, message = %e.message, "peer refused a gossip frame");
                }
            }
        });
        Ok((conn, writer))
    }
}
