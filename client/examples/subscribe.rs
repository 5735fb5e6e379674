//! Subscribes to a pattern with a filter and prints what arrives.
//!
//! Run a cluster with `cargo run --release -- dev`, then
//! `cargo run -p sift-client --example subscribe` and, in another terminal,
//! `cargo run -p sift-client --example publish`.

// An example program: printing to stdout is its output.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use futures::StreamExt;
use sift_client::{Client, ClientConfig, ClientError};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let client = Client::connect(ClientConfig::from_env_or_dev()?).await?;
    let mut orders = client
        .subscribe("orders.*.created")
        .filter("price > 10 && customer ~ \"^c4\"")
        .expiry(Duration::from_secs(30)) // a lease the SDK renews while we run
        .at_least_once()
        .start()
        .await?;
    println!(
        "subscribed as {}; waiting for orders over 10",
        orders.handle()
    );
    while let Some(n) = orders.next().await {
        let attrs: Vec<String> = n
            .event
            .attrs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{} [{}] {}",
            n.event.topic,
            attrs.join(" "),
            String::from_utf8_lossy(&n.event.payload)
        );
        n.ack().await?;
    }
    println!("ended: {:?}", orders.end_reason());
    Ok(())
}
