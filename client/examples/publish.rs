//! Publishes a few orders, fire-and-forget and acknowledged.
//!
//! Run a cluster with `cargo run --release -- dev`, then
//! `cargo run -p sift-client --example publish`.

// An example program: printing to stdout is its output.
#![allow(clippy::print_stdout)]

use sift_client::{Client, ClientConfig, ClientError, Message};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let client = Client::connect(ClientConfig::from_env_or_dev()?).await?;
    for (region, price) in [("eu", 12.5), ("us", 8.0), ("eu", 99.0)] {
        let topic = format!("orders.{region}.created");
        let msg = Message::new(topic)
            .attr("price", price)
            .attr("customer", "c42")
            .payload("{\"items\": 3}");
        // Acknowledged: retried with the same id on not-owner or timeout, never notified twice.
        let id = client.publish_acked(msg).await?;
        println!("published {id}");
    }
    // Fire and forget: at most once, no round trip.
    client
        .publish(Message::new("orders.eu.cancelled").attr("price", 1))
        .await?;
    client.close().await;
    Ok(())
}
