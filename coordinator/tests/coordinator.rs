//! The coordinator over real QUIC on loopback: registration, ring pushes to watchers,
//! heartbeats, failure detection, admin listing, drain and remove.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sift_coordinator::{Coordinator, CoordinatorConfig};
use sift_protocol::frame::{ErrorCode, Frame, NodeState, Ring, RingMember};
use sift_protocol::limits::FRAME_BYTES_MAX;
use sift_protocol::net::tls::{client_config, server_config, CertAuthority};
use sift_protocol::net::{client_endpoint, FrameReader, FrameWriter};

const LIMIT: Duration = Duration::from_secs(10);

struct Fixture {
    coordinator: Coordinator,
    client: quinn::Endpoint,
    conn: quinn::Connection,
}

async fn fixture(dead_after: Duration) -> Fixture {
    fixture_with(dead_after, None).await
}

async fn fixture_with(dead_after: Duration, token: Option<&str>) -> Fixture {
    let ca = CertAuthority::generate("test CA").unwrap();
    let cert = ca.issue(&["localhost".into()]).unwrap();
    let config = CoordinatorConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        dead_after,
        token: token.map(Into::into),
        recovery: Duration::ZERO,
        ..Default::default()
    };
    let coordinator = Coordinator::start(config, server_config(&cert, None).unwrap()).unwrap();
    let client = client_endpoint(client_config(&ca.cert_pem, None).unwrap()).unwrap();
    let conn = client
        .connect(coordinator.local_addr().unwrap(), "localhost")
        .unwrap()
        .await
        .unwrap();
    Fixture {
        coordinator,
        client,
        conn,
    }
}

async fn open(conn: &quinn::Connection) -> (FrameWriter, FrameReader) {
    let (send, recv) = conn.open_bi().await.unwrap();
    (
        FrameWriter::new(send, FRAME_BYTES_MAX),
        FrameReader::new(recv, FRAME_BYTES_MAX),
    )
}

async fn request(conn: &quinn::Connection, frame: Frame) -> Frame {
    let (mut w, mut r) = open(conn).await;
    w.send(&frame).await.unwrap();
    r.next().await.unwrap().unwrap()
}

fn member(id: &str) -> RingMember {
    RingMember {
        id: id.into(),
        addr: format!("127.0.0.1:{}", 7401),
        weight: 1,
    }
}

async fn next_ring(r: &mut FrameReader) -> Ring {
    match r.next().await.unwrap().unwrap() {
        Frame::Ring { ring, .. } => ring,
        other => panic!("expected a ring, got {other:?}"),
    }
}

/// The next cluster state pushed on a register stream (answers to heartbeats skipped).
async fn next_cluster(r: &mut FrameReader) -> (Ring, Option<Ring>) {
    loop {
        match r.next().await.unwrap().unwrap() {
            Frame::Cluster {
                active, pending, ..
            } => return (active, pending),
            Frame::Ok { .. } => continue,
            other => panic!("expected the cluster state, got {other:?}"),
        }
    }
}

fn register(id: &str, req: u64) -> Frame {
    Frame::Register {
        req,
        member: member(id),
        active: None,
        draining: false,
    }
}

fn ids(r: &Ring) -> Vec<&str> {
    r.members.iter().map(|m| m.id.as_str()).collect()
}

#[tokio::test]
async fn rings_change_in_two_steps_and_watchers_see_only_active_rings() {
    let f = fixture(Duration::from_secs(5)).await;
    let run = async {
        let (mut watch_w, mut watch_r) = open(&f.conn).await;
        watch_w.send(&Frame::Watch { req: 1 }).await.unwrap();
        // Versions start high (the coordinator's start time), and only grow.
        let v0 = next_ring(&mut watch_r).await.version;
        assert!(v0 > 1_600_000_000_000, "{v0}");

        let (mut m1, mut m1r) = open(&f.conn).await;
        m1.send(&register("m1", 2)).await.unwrap();
        // The first ring has nobody to hand over from: active at once.
        let (mut active, mut pending) = next_cluster(&mut m1r).await;
        if active.members.is_empty() {
            (active, pending) = next_cluster(&mut m1r).await;
        }
        assert_eq!((active.version, ids(&active)), (v0 + 1, vec!["m1"]));
        assert_eq!(pending, None);
        assert_eq!(next_ring(&mut watch_r).await.version, v0 + 1);

        // m2 joins: the next ring is announced to both, not yet active.
        let (mut m2, mut m2r) = open(&f.conn).await;
        m2.send(&register("m2", 3)).await.unwrap();
        let (active, pending) = next_cluster(&mut m1r).await;
        let pending = pending.expect("announced");
        assert_eq!((active.version, ids(&pending)), (v0 + 1, vec!["m1", "m2"]));
        let (_, p2) = next_cluster(&mut m2r).await;
        assert_eq!(p2.as_ref(), Some(&pending));
        // Clients still see the active ring.
        let Frame::Ring { ring, .. } = request(&f.conn, Frame::RingFetch { req: 40 }).await else {
            panic!()
        };
        assert_eq!(ring.version, v0 + 1);
        // m2 cannot confirm for m1; m1 confirms its handoff and the ring activates.
        m2.send(&Frame::Confirm {
            req: 41,
            node: "m1".into(),
            version: pending.version,
        })
        .await
        .unwrap();
        let Some(Frame::Error(e)) = m2r.next().await.unwrap() else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Forbidden);
        m1.send(&Frame::Confirm {
            req: 42,
            node: "m1".into(),
            version: pending.version,
        })
        .await
        .unwrap();
        let (active, pending_after) = next_cluster(&mut m1r).await;
        assert_eq!((active.version, pending_after), (pending.version, None));
        assert_eq!(next_ring(&mut watch_r).await.version, v0 + 2);

        // Heartbeats are answered on the register stream.
        m1.send(&Frame::Heartbeat {
            req: 4,
            node: "m1".into(),
        })
        .await
        .unwrap();
        assert_eq!(m1r.next().await.unwrap(), Some(Frame::Ok { req: 4 }));

        // Admin: list, drain, remove.
        let Frame::Nodes { nodes, .. } = request(&f.conn, Frame::AdminNodes { req: 5 }).await
        else {
            panic!()
        };
        assert_eq!(nodes.len(), 2);
        // A live matcher in the ring cannot be removed before it is drained.
        let Frame::Error(e) = request(
            &f.conn,
            Frame::AdminRemove {
                req: 50,
                node: "m2".into(),
            },
        )
        .await
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(
            request(
                &f.conn,
                Frame::AdminDrain {
                    req: 6,
                    node: "m2".into()
                }
            )
            .await,
            Frame::Ok { req: 6 }
        );
        // The drain is a transition: both hand over, then it is active.
        let pending = loop {
            // m2 first sees the activation of the ring it joined.
            if let (_, Some(p)) = next_cluster(&mut m2r).await {
                break p;
            }
        };
        assert_eq!(ids(&pending), vec!["m1"]);
        // Not removable while its drain is under way.
        let Frame::Error(e) = request(
            &f.conn,
            Frame::AdminRemove {
                req: 51,
                node: "m2".into(),
            },
        )
        .await
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Forbidden);
        for (w, id, req) in [(&mut m1, "m1", 60), (&mut m2, "m2", 61)] {
            w.send(&Frame::Confirm {
                req,
                node: id.into(),
                version: pending.version,
            })
            .await
            .unwrap();
        }
        let ring = next_ring(&mut watch_r).await;
        assert_eq!((ring.version, ring.members.len()), (v0 + 3, 1));
        let Frame::Nodes { nodes, .. } = request(&f.conn, Frame::AdminNodes { req: 7 }).await
        else {
            panic!()
        };
        assert_eq!(
            nodes.iter().find(|n| n.member.id == "m2").unwrap().state,
            NodeState::Draining
        );
        assert_eq!(
            request(
                &f.conn,
                Frame::AdminRemove {
                    req: 8,
                    node: "m2".into()
                }
            )
            .await,
            Frame::Ok { req: 8 }
        );
        let Frame::Error(e) = request(
            &f.conn,
            Frame::AdminRemove {
                req: 9,
                node: "m2".into(),
            },
        )
        .await
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::UnknownNode);
        // m2, still running, learns on its next heartbeat that it was removed.
        m2.send(&Frame::Heartbeat {
            req: 11,
            node: "m2".into(),
        })
        .await
        .unwrap();
        let e = loop {
            match m2r.next().await.unwrap() {
                Some(Frame::Error(e)) => break e,
                Some(Frame::Cluster { .. } | Frame::Ok { .. }) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!((e.req, e.code), (Some(11), ErrorCode::Forbidden));
        let Frame::Ring { ring, .. } = request(&f.conn, Frame::RingFetch { req: 10 }).await else {
            panic!()
        };
        assert_eq!(ids(&ring), vec!["m1"]);
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    f.coordinator.shutdown().await;
    f.client.wait_idle().await;
}

#[tokio::test]
async fn a_silent_matcher_is_declared_dead() {
    let f = fixture(Duration::from_millis(300)).await;
    let run = async {
        let (mut watch_w, mut watch_r) = open(&f.conn).await;
        watch_w.send(&Frame::Watch { req: 1 }).await.unwrap();
        assert_eq!(next_ring(&mut watch_r).await.members.len(), 0);
        let (mut m1, mut m1r) = open(&f.conn).await;
        m1.send(&register("m1", 2)).await.unwrap();
        next_cluster(&mut m1r).await;
        assert_eq!(next_ring(&mut watch_r).await.members.len(), 1);
        // No heartbeat: the next push is the ring without it.
        let ring = next_ring(&mut watch_r).await;
        assert!(ring.members.is_empty());
        // Its late heartbeat is refused with a typed error, so it knows to register again.
        m1.send(&Frame::Heartbeat {
            req: 3,
            node: "m1".into(),
        })
        .await
        .unwrap();
        let e = loop {
            match m1r.next().await.unwrap() {
                Some(Frame::Error(e)) => break e,
                Some(Frame::Cluster { .. }) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(e.code, ErrorCode::UnknownNode);
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    f.coordinator.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_typed_errors_and_the_coordinator_keeps_serving() {
    let f = fixture(Duration::from_secs(5)).await;
    let run = async {
        let bad = RingMember {
            id: "x".into(),
            addr: "a:1".into(),
            weight: 0,
        };
        let (mut w, mut r) = open(&f.conn).await;
        w.send(&Frame::Register {
            req: 1,
            member: bad,
            active: None,
            draining: false,
        })
        .await
        .unwrap();
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Error(_))));
        // Garbage on a fresh stream gets an error frame.
        let (mut w, mut r) = open(&f.conn).await;
        w.stream()
            .write_all(&[0, 0, 0, 3, 0, 1, 0xc1])
            .await
            .unwrap();
        let Some(Frame::Error(e)) = r.next().await.unwrap() else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Malformed);
        // A frame that is not for a coordinator.
        let Frame::Error(e) = request(&f.conn, Frame::Ok { req: 1 }).await else {
            panic!()
        };
        assert!(e.message.contains("does not serve"), "{}", e.message);
        // Still serving.
        let Frame::Ring { .. } = request(&f.conn, Frame::RingFetch { req: 2 }).await else {
            panic!()
        };
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    f.coordinator.shutdown().await;
}

#[tokio::test]
async fn a_token_guards_every_request() {
    let f = fixture_with(Duration::from_secs(5), Some("s3cret")).await;
    let run = async {
        // Without the token: refused, typed.
        for frame in [
            Frame::RingFetch { req: 1 },
            Frame::AdminDrain {
                req: 2,
                node: "m1".into(),
            },
            register("m1", 3),
        ] {
            let Frame::Error(e) = request(&f.conn, frame).await else {
                panic!()
            };
            assert_eq!(e.code, ErrorCode::Unauthorized);
        }
        // With it, the connection is served.
        assert_eq!(
            request(
                &f.conn,
                Frame::Hello {
                    req: 4,
                    token: Some("s3cret".into())
                }
            )
            .await,
            Frame::Ok { req: 4 }
        );
        assert!(matches!(
            request(&f.conn, Frame::RingFetch { req: 5 }).await,
            Frame::Ring { .. }
        ));
        // A wrong token closes the connection.
        let other = f
            .client
            .connect(f.coordinator.local_addr().unwrap(), "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut w, mut r) = open(&other).await;
        w.send(&Frame::Hello {
            req: 1,
            token: Some("guess".into()),
        })
        .await
        .unwrap();
        assert!(r.next().await.is_err());
        assert!(other.closed().await.to_string().contains("unauthorized"));
    };
    tokio::time::timeout(LIMIT, run).await.unwrap();
    f.coordinator.shutdown().await;
}
