//! Real QUIC on loopback: TLS from a generated CA, frames both ways, batching, refusal of an
//! oversize frame, skipping of a malformed one, and mutual TLS.

use std::net::SocketAddr;

use super::tls::{client_config, server_config, CertAuthority};
use super::*;
use crate::frame::Frame;
use crate::limits::FRAME_BYTES_MAX;

const TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn loopback() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

struct Pair {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    ca_pem: String,
}

fn pair(mtls: bool) -> Pair {
    let ca = CertAuthority::generate("test CA").unwrap();
    let node = ca.issue(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let client_cert = ca.issue(&["client".into()]).unwrap();
    let server = server_endpoint(
        loopback(),
        server_config(&node, mtls.then_some(ca.cert_pem.as_str())).unwrap(),
    )
    .unwrap();
    let client =
        client_endpoint(client_config(&ca.cert_pem, mtls.then_some(&client_cert)).unwrap())
            .unwrap();
    Pair {
        server,
        client,
        ca_pem: ca.cert_pem,
    }
}

#[tokio::test]
async fn frames_round_trip_over_quic() {
    let Pair { server, client, .. } = pair(false);
    let addr = server.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let mut reader = FrameReader::new(recv, FRAME_BYTES_MAX);
        let mut writer = FrameWriter::new(send, FRAME_BYTES_MAX);
        let mut seen = 0;
        loop {
            match reader.next().await {
                Ok(Some(f)) => {
                    seen += 1;
                    writer.send(&f).await.unwrap();
                }
                Ok(None) => break,
                Err(e) if e.recoverable() => {
                    writer.send(&Frame::Ok { req: 999 }).await.unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        writer.finish().await.unwrap();
        // Keep the connection until the client has read everything and closed it.
        conn.closed().await;
        seen
    });
    let run = async {
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut writer = FrameWriter::new(send, FRAME_BYTES_MAX);
        let mut reader = FrameReader::new(recv, FRAME_BYTES_MAX);
        // A batch of 100 frames in one write.
        for req in 0..100 {
            writer.push(&Frame::Ok { req }).unwrap();
        }
        writer.flush().await.unwrap();
        for req in 0..100 {
            assert_eq!(reader.next().await.unwrap(), Some(Frame::Ok { req }));
        }
        // A malformed frame is skipped with an error, and the stream goes on.
        writer
            .stream()
            .write_all(&[0, 0, 0, 3, 0, 1, 0xc1])
            .await
            .unwrap();
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Ok { req: 999 }));
        writer.send(&Frame::Ok { req: 7 }).await.unwrap();
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Ok { req: 7 }));
        writer.finish().await.unwrap();
        assert_eq!(reader.next().await.unwrap(), None);
        conn.close(0u32.into(), b"done");
    };
    tokio::time::timeout(TEST_TIMEOUT, run).await.unwrap();
    assert_eq!(echo.await.unwrap(), 101);
}

#[tokio::test]
async fn an_oversize_frame_is_refused_from_its_prefix() {
    let Pair { server, client, .. } = pair(false);
    let addr = server.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (_send, recv) = conn.accept_bi().await.unwrap();
        let mut reader = FrameReader::new(recv, 1024);
        let err = reader.next().await.unwrap_err();
        assert!(!err.recoverable());
        err.to_string()
    });
    let run = async {
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        // Only the prefix of a 1 GiB frame is ever sent.
        send.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        srv.await.unwrap()
    };
    let msg = tokio::time::timeout(TEST_TIMEOUT, run).await.unwrap();
    assert!(msg.contains("exceeds the maximum"), "{msg}");
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let Pair {
        server,
        client,
        ca_pem,
    } = pair(true);
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        // Serve handshakes until the test ends.
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    let run = async {
        // With its certificate the client gets in.
        let ok = client.connect(addr, "localhost").unwrap().await;
        assert!(ok.is_ok(), "{ok:?}");
        // Trusting the server but presenting nothing, another client is refused.
        let anonymous = client_endpoint(client_config(&ca_pem, None).unwrap()).unwrap();
        let conn = anonymous.connect(addr, "localhost").unwrap().await;
        // TLS 1.3 finishes the client side first; the refusal arrives as the connection closes.
        match conn {
            Err(_) => {}
            Ok(c) => {
                let err = c.accept_uni().await.unwrap_err();
                assert!(
                    err.to_string().contains("certificate") || err.to_string().contains("closed"),
                    "{err}"
                );
            }
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, run).await.unwrap();
    accept.abort();
}
