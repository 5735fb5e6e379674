//! The classic interface: `subscribe(filter, notify_callback, expiry) -> handle`, then
//! `unsubscribe(handle)`; here with a consumer group that keeps each customer on one member.
//!
//! Run a cluster with `cargo run --release -- dev`, then
//! `cargo run -p sift-client --example callback`.

// An example program: printing to stdout is its output.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use sift_client::{Client, ClientConfig, ClientError, Message};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let client = Client::connect(ClientConfig::from_env_or_dev()?).await?;
    let (seen, mut shipped) = tokio::sync::mpsc::unbounded_channel();
    let mut handles = vec![];
    for worker in 0..3 {
        let seen = seen.clone();
        let builder = client
            .subscribe("shipments")
            .group_by_key("shippers", "customer")
            .expiry(Duration::from_secs(10));
        let handle = client
            .subscribe_with(builder, move |handle, event| {
                let _ = seen.send(());
                println!(
                    "worker {worker} ({handle}) ships for {}",
                    event.attrs["customer"]
                );
            })
            .await?;
        handles.push(handle);
    }
    for i in 0..12 {
        let customer = format!("c{}", i % 4);
        client
            .publish_acked(Message::new("shipments").attr("customer", customer))
            .await?;
    }
    for _ in 0..12 {
        shipped.recv().await;
    }
    for h in handles {
        client.unsubscribe(h).await?;
    }
    client.close().await;
    Ok(())
}
