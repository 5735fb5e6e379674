//! Publish → notify latency at a fixed offered rate (open loop), one clock: the publish time
//! travels in the payload. Prints p50 / p99 / p99.9 in microseconds.
//!
//! `cargo run --release -p sift-client --example latency -- [RATE_PER_S] [SECONDS]`
//! against `sift dev`.

// An example program: printing to stdout is its output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use sift_client::{Client, ClientConfig, ClientError, Message};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let rate: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000.0);
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let config = ClientConfig::from_env_or_dev()?;
    let topic = format!("latency.{}", std::process::id());
    let subscriber = Client::connect(config.clone()).await?;
    let mut sub = subscriber.subscribe(&topic).start().await?;
    let publisher = Client::connect(config).await?;
    let epoch = Instant::now();
    let total = (rate * seconds) as u64;
    let receiver = tokio::spawn(async move {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        let mut got = 0u64;
        while got < total {
            let Ok(Some(n)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else {
                break;
            };
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&n.event.payload[..8]);
            let sent_us = u64::from_le_bytes(sent);
            let now_us = epoch.elapsed().as_micros() as u64;
            let _ = h.record(now_us.saturating_sub(sent_us).max(1));
            got += 1;
        }
        (h, got)
    });
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..total {
        ticker.tick().await;
        let mut payload = (epoch.elapsed().as_micros() as u64).to_le_bytes().to_vec();
        payload.resize(128, 0);
        publisher
            .publish(Message::new(&topic).payload(payload))
            .await?;
    }
    let (h, got) = receiver
        .await
        .map_err(|e| ClientError::Connection(e.to_string()))?;
    println!(
        "{{\"scenario\":\"latency\",\"rate\":{rate},\"events\":{total},\"delivered\":{got},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    Ok(())
}
