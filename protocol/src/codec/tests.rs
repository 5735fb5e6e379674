//! Round-trip and malformed-input tests of the framing.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::event::{Attributes, Event, EventId, PublisherId};
use crate::frame::*;
use crate::limits::FRAME_BYTES_MAX;
use crate::value::Value;

fn event(payload: &[u8]) -> Event {
    let mut attrs = Attributes::new();
    attrs.insert("s".into(), Value::Str("x".into()));
    attrs.insert("i".into(), Value::Int(-5));
    attrs.insert("f".into(), Value::Float(0.25));
    attrs.insert("b".into(), Value::Bool(true));
    Event {
        id: EventId {
            publisher: PublisherId(u128::MAX - 3),
            seq: 42,
        },
        topic: "orders.eu".into(),
        attrs,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn every_frame() -> Vec<Frame> {
    let sub = SubscriptionId(0xdead_beef);
    vec![
        Frame::Subscribe(Subscribe {
            req: 1,
            id: sub,
            pattern: "orders.*".into(),
            filter: "a == 1".into(),
            expiry: ExpirySpec::LeaseMs(60_000),
            group: Some(GroupSpec {
                name: "g".into(),
                key: Some("customer".into()),
            }),
            mode: DeliveryMode::AtLeastOnce,
            ring_version: 3,
            credit: Some(4096),
        }),
        Frame::Credit { sub, n: 2048 },
        Frame::Unsubscribe { req: 2, sub },
        Frame::Renew { req: 3, sub },
        Frame::SetFilter {
            req: 4,
            sub,
            filter: "b > 2".into(),
        },
        Frame::Publish(Publish {
            req: Some(5),
            ring_version: 3,
            event: event(b"hello"),
        }),
        Frame::Publish(Publish {
            req: None,
            ring_version: 0,
            event: event(b""),
        }),
        Frame::PublishAck {
            req: 5,
            event: EventId {
                publisher: PublisherId(1),
                seq: 2,
            },
        },
        Frame::Ok { req: 6 },
        Frame::Subscribed {
            req: 1,
            sub,
            expires_in_ms: 60_000,
        },
        Frame::Notify(Notify {
            sub,
            delivery: 9,
            redelivered: true,
            event: event(&[0, 255]),
        }),
        Frame::Ack {
            sub,
            delivery: 9,
            event: EventId {
                publisher: PublisherId(7),
                seq: 3,
            },
        },
        Frame::Ended {
            sub,
            reason: EndReason::Expired,
        },
        Frame::RingFetch { req: 7 },
        Frame::Ring {
            req: None,
            ring: Ring {
                version: 12,
                members: vec![RingMember {
                    id: "m1".into(),
                    addr: "127.0.0.1:7401".into(),
                    weight: 2,
                }],
                replicas: 2,
            },
        },
        Frame::Error(ErrorFrame {
            req: Some(8),
            code: ErrorCode::NotOwner,
            message: "not the owner".into(),
            ring_version: Some(12),
        }),
        Frame::Error(ErrorFrame {
            req: None,
            code: ErrorCode::Other(777),
            message: String::new(),
            ring_version: None,
        }),
        Frame::Hello {
            req: 9,
            token: Some("secret".into()),
        },
        Frame::Register {
            req: 10,
            member: RingMember {
                id: "m2".into(),
                addr: "[::1]:7402".into(),
                weight: 1,
            },
            active: Some(Ring::new(3, vec![])),
            draining: true,
        },
        Frame::Cluster {
            active: Ring::new(3, vec![]),
            pending: Some(Ring::new(4, vec![])),
            restarted: true,
        },
        Frame::Confirm {
            req: 14,
            node: "m2".into(),
            version: 4,
        },
        Frame::PeerHello {
            req: 15,
            node: "m1".into(),
            token: Some("cluster".into()),
        },
        Frame::Peer(crate::peer::PeerFrame {
            epoch: 3,
            msg: crate::peer::PeerMsg::Hold {
                seq: 1,
                dispatcher: "m1".into(),
                events: vec![event(&[1])],
            },
        }),
        Frame::Peer(crate::peer::PeerFrame {
            epoch: 3,
            msg: crate::peer::PeerMsg::Tail {
                seq: 2,
                subs: vec![crate::peer::SubTail {
                    image: crate::peer::SubImage {
                        id: sub,
                        pattern: "a.>".into(),
                        filter: "x > 1".into(),
                        group: None,
                        mode: DeliveryMode::AtLeastOnce,
                        expiry: crate::frame::ExpirySpec::LeaseMs(30_000),
                        remaining_ms: 1000,
                    },
                    unacked: vec![crate::peer::TailItem {
                        event: event(&[2]),
                        sent: true,
                        due_in_ms: 5,
                    }],
                }],
            },
        }),
        Frame::Heartbeat {
            req: 11,
            node: "m2".into(),
        },
        Frame::Watch { req: 12 },
        Frame::AdminNodes { req: 13 },
        Frame::Nodes {
            req: 13,
            nodes: vec![NodeStatus {
                member: RingMember {
                    id: "m2".into(),
                    addr: "x:1".into(),
                    weight: 3,
                },
                state: NodeState::Draining,
                last_seen_ms: 120,
            }],
        },
        Frame::AdminDrain {
            req: 14,
            node: "m2".into(),
        },
        Frame::AdminRemove {
            req: 15,
            node: "m2".into(),
        },
        Frame::Ended {
            sub,
            reason: EndReason::Moved,
        },
    ]
}

#[test]
fn every_frame_round_trips() {
    for frame in every_frame() {
        let bytes = encode_to_vec(&frame, FRAME_BYTES_MAX).unwrap();
        let (back, used) = decode(&bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn the_notify_fast_path_is_byte_for_byte_serde() {
    for (sub, delivery, redelivered) in [
        (0u64, 0u64, false),
        (u64::MAX, 1, true),
        (300, 70_000, false),
    ] {
        let e = event(b"payload");
        let frame = Frame::Notify(Notify {
            sub: SubscriptionId(sub),
            delivery,
            redelivered,
            event: e.clone(),
        });
        let want = encode_to_vec(&frame, FRAME_BYTES_MAX).unwrap();
        let mut got = vec![9];
        encode_notify(
            SubscriptionId(sub),
            delivery,
            redelivered,
            &EncodedEvent::new(&e).unwrap(),
            FRAME_BYTES_MAX,
            &mut got,
        )
        .unwrap();
        assert_eq!(&got[1..], &want[..]);
    }
    let big = EncodedEvent::new(&event(&[0; 4096])).unwrap();
    let mut out = vec![1];
    assert!(encode_notify(SubscriptionId(1), 1, false, &big, 1024, &mut out).is_err());
    assert_eq!(out, vec![1]);
}

#[test]
fn partial_input_needs_more_bytes() {
    let bytes = encode_to_vec(&every_frame()[0], FRAME_BYTES_MAX).unwrap();
    for cut in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..cut], FRAME_BYTES_MAX),
            Ok(None),
            "cut at {cut}"
        );
    }
}

#[test]
fn back_to_back_frames_decode_in_order() {
    let mut buf = Vec::new();
    for f in every_frame() {
        encode(&f, FRAME_BYTES_MAX, &mut buf).unwrap();
    }
    let mut at = 0;
    for want in every_frame() {
        let (got, used) = decode(&buf[at..], FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(got, want);
        at += used;
    }
    assert_eq!(at, buf.len());
}

#[test]
fn oversize_is_refused_from_the_prefix_alone() {
    // Only the 4-byte prefix is present: the decoder refuses without waiting for 4 GiB.
    let prefix = u32::MAX.to_be_bytes();
    assert_eq!(
        decode(&prefix, 1024),
        Err(DecodeError::TooLarge {
            len: u32::MAX as usize,
            max: 1024
        })
    );
    let big = Frame::Publish(Publish {
        req: None,
        ring_version: 0,
        event: event(&[7; 2048]),
    });
    assert!(matches!(
        encode_to_vec(&big, 1024),
        Err(EncodeError::TooLarge { .. })
    ));
    let mut out = vec![1, 2, 3];
    assert!(encode(&big, 1024, &mut out).is_err());
    assert_eq!(
        out,
        vec![1, 2, 3],
        "a failed encode leaves the buffer as it was"
    );
}

#[test]
fn wrong_version_and_garbage_are_typed_errors() {
    let mut bytes = encode_to_vec(&Frame::Ok { req: 1 }, FRAME_BYTES_MAX).unwrap();
    bytes[5] = 9;
    let e = decode(&bytes, FRAME_BYTES_MAX).unwrap_err();
    assert_eq!(
        e,
        DecodeError::UnsupportedVersion {
            version: 9,
            frame_bytes: bytes.len()
        }
    );
    assert_eq!(e.code(), ErrorCode::UnsupportedVersion);

    let garbage = [0, 0, 0, 4, 0, 1, 0xc1, 0xc1];
    let e = decode(&garbage, FRAME_BYTES_MAX).unwrap_err();
    assert!(
        matches!(e, DecodeError::Malformed { frame_bytes: 8, .. }),
        "{e}"
    );
    assert_eq!(e.code(), ErrorCode::Malformed);

    let short = [0, 0, 0, 1, 0];
    assert!(matches!(
        decode(&short, FRAME_BYTES_MAX),
        Err(DecodeError::Malformed { .. })
    ));

    // A valid body followed by junk inside the same frame.
    let mut bytes = encode_to_vec(&Frame::Ok { req: 1 }, FRAME_BYTES_MAX).unwrap();
    bytes.push(0xc0);
    let len = (bytes.len() - LENGTH_BYTES) as u32;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    let e = decode(&bytes, FRAME_BYTES_MAX).unwrap_err();
    assert!(e.to_string().contains("trailing"), "{e}");

    // A string whose declared length runs past the frame: refused, not allocated.
    let mut body = vec![
        0, 1, 0x81, 0xa2, b'O', b'k', 0x91, 0xdb, 0xff, 0xff, 0xff, 0xff,
    ];
    let len = body.len() as u32;
    let mut framed = len.to_be_bytes().to_vec();
    framed.append(&mut body);
    assert!(matches!(
        decode(&framed, FRAME_BYTES_MAX),
        Err(DecodeError::Malformed { .. })
    ));

    // An integer attribute above i64::MAX is refused with a message.
    let e = DecodeError::Malformed {
        message: String::new(),
        frame_bytes: 0,
    };
    assert_eq!(e.code(), ErrorCode::Malformed);
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,8}".prop_map(Value::Str),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        any::<u128>(),
        any::<u64>(),
        "[a-z]{1,5}(\\.[a-z]{1,5}){0,3}",
        prop::collection::btree_map("[a-z_]{1,6}", arb_value(), 0..6),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(p, seq, topic, attrs, payload)| Event {
            id: EventId {
                publisher: PublisherId(p),
                seq,
            },
            topic,
            attrs,
            payload: Bytes::from(payload),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes, 4096);
    }

    #[test]
    fn random_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        // Valid prefix and version, random body: exercises the MessagePack decoder.
        let mut framed = ((body.len() + 2) as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        framed.extend_from_slice(&body);
        match decode(&framed, 4096) {
            Ok(Some((_, used))) => prop_assert_eq!(used, framed.len()),
            Ok(None) => prop_assert!(false, "a whole frame must decode or fail"),
            Err(e) => prop_assert!(matches!(e, DecodeError::Malformed { .. }), "{}", e),
        }
    }

    #[test]
    fn mutated_frames_never_panic(idx in 0usize..32, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let frames = every_frame();
        let mut bytes = encode_to_vec(&frames[idx % frames.len()], FRAME_BYTES_MAX).unwrap();
        for (at, b) in flips {
            let i = LENGTH_BYTES + at % (bytes.len() - LENGTH_BYTES);
            bytes[i] ^= b;
        }
        let _ = decode(&bytes, FRAME_BYTES_MAX);
    }

    #[test]
    fn events_round_trip(event in arb_event(), req in any::<Option<u64>>()) {
        let frame = Frame::Publish(Publish { req, ring_version: 1, event });
        let bytes = encode_to_vec(&frame, FRAME_BYTES_MAX).unwrap();
        let (back, _) = decode(&bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        prop_assert_eq!(back, frame);
    }
}
