//! `sift-client`: the Sift SDK. Publish events to topics; subscribe to topics or patterns with
//! content filters, as a `Stream` or with a callback; at-most-once or at-least-once; consumer
//! groups with optional key affinity.
//!
//! The client fetches and watches the ring, sends each request straight to the matcher that
//! owns the topic (every matcher, for patterns), follows `not-owner` answers and ring changes,
//! renews leases, reconnects and subscribes again when a matcher goes away.
//!
//! Runnable programs are in `client/examples/` (`publish`, `subscribe`, `callback`, and the
//! `fanout` and `latency` measurements).
//!
//! ```no_run
//! # async fn example() -> Result<(), sift_client::ClientError> {
//! use futures::StreamExt;
//! use sift_client::{Client, ClientConfig, Message};
//!
//! let client = Client::connect(ClientConfig::from_env()?).await?;
//! let mut big = client.subscribe("orders.>").filter("price >= 100").start().await?;
//! client.publish_acked(Message::new("orders.eu.created").attr("price", 250)).await?;
//! let n = big.next().await.expect("a notification");
//! assert_eq!(n.event.topic, "orders.eu.created");
//! # Ok(()) }
//! ```

mod admin;
mod backoff;
mod client;
mod config;
mod error;
mod node;
mod seen;
mod subscription;

pub use client::{AttrValue, Client, Message};
pub use config::ClientConfig;
pub use error::ClientError;
pub use sift_protocol::frame::{EndReason, ErrorCode, NodeState, NodeStatus, Ring, RingMember};
pub use sift_protocol::{Attributes, Event, EventId, SubscriptionId, Value};
pub use subscription::{Notification, SubscribeBuilder, Subscription};

/// The README's SDK example, compiled as a doctest so that it stays true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
