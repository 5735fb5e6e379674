//! Fan-out: S subscribers (each its own connection) on one topic, one publisher, 128-byte
//! payloads; prints delivered notifications per second.
//!
//! `cargo run --release -p sift-client --example fanout -- [SUBSCRIBERS] [EVENTS]`
//! against `sift dev` (pin them apart: `taskset -c 0 sift dev`, `taskset -c 1 … fanout`).

// An example program: printing to stdout is its output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use sift_client::{Client, ClientConfig, ClientError, Message};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let config = ClientConfig::from_env_or_dev()?;
    let topic = format!("fanout.{}", std::process::id());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = vec![];
    for _ in 0..subscribers {
        let mut c = config.clone();
        c.buffer_len = 65_536;
        let client = Client::connect(c).await?;
        let mut sub = client.subscribe(&topic).start().await?;
        let done = done_tx.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while n < events {
                if sub.next().await.is_none() {
                    break;
                }
                n += 1;
            }
            let _ = done.send((n, Instant::now()));
        });
        clients.push(client);
    }
    let publisher = Client::connect(config).await?;
    let payload = vec![b'x'; 128];
    let start = Instant::now();
    for i in 0..events {
        let msg = Message::new(&topic)
            .attr("i", i as i64)
            .payload(payload.clone());
        // Every 256th publish waits for its ack: a closed loop that bounds what is in flight.
        if i % 256 == 255 {
            publisher.publish_acked(msg).await?;
        } else {
            publisher.publish(msg).await?;
        }
    }
    let published = start.elapsed();
    let mut delivered = 0;
    let mut last = start;
    for _ in 0..subscribers {
        match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
            Ok(Some((n, at))) => {
                delivered += n;
                last = last.max(at);
            }
            _ => break,
        }
    }
    let secs = (last - start).as_secs_f64();
    println!(
        "{{\"scenario\":\"fanout\",\"subscribers\":{subscribers},\"events\":{events},\"published_per_s\":{:.0},\"delivered\":{delivered},\"delivered_per_s\":{:.0},\"delivery_ratio\":{:.4}}}",
        events as f64 / published.as_secs_f64(),
        delivered as f64 / secs,
        delivered as f64 / (events * subscribers) as f64
    );
    Ok(())
}
