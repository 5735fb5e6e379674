//! `sift pub` and `sift sub`.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use sift_client::{Client, Message, Notification, Value};

use super::common::{self, ClusterArgs};
use super::filter::parse_attrs;
use super::out;

/// Arguments of `sift pub`.
#[derive(Args, Debug)]
pub struct PubArgs {
    /// The topic.
    pub topic: String,
    /// Attributes, a JSON object of strings, numbers and booleans.
    #[arg(long, default_value = "{}")]
    pub attrs: String,
    /// The payload, as text.
    #[arg(long, default_value = "")]
    pub payload: String,
    /// How many events to publish (the attribute `seq` counts them when N > 1).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Events per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Wait for each event to be accepted (retried on not-owner and timeouts, never twice).
    #[arg(long)]
    pub ack: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Arguments of `sift sub`.
#[derive(Args, Debug)]
pub struct SubArgs {
    /// The topic or pattern (`orders.*`, `orders.>`).
    pub topic: String,
    /// A filter expression over the attributes.
    #[arg(long, default_value = "")]
    pub filter: String,
    /// The lease, renewed while `sift sub` runs (e.g. 30s).
    #[arg(long, value_parser = common::duration)]
    pub expiry: Option<Duration>,
    /// Join this consumer group.
    #[arg(long)]
    pub group: Option<String>,
    /// With --group: events with the same value of this attribute go to the same member.
    #[arg(long, requires = "group")]
    pub key: Option<String>,
    /// At-least-once delivery (acked after printing).
    #[arg(long)]
    pub at_least_once: bool,
    /// Exit after this many notifications.
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Publishes.
pub fn publish(args: PubArgs) -> Result<()> {
    common::init_logs(false, "warn");
    let attrs = parse_attrs(&args.attrs).map_err(anyhow::Error::msg)?;
    let config = args.cluster.client_config()?;
    common::runtime()?.block_on(async move {
        let client = Client::connect(config)
            .await
            .context("cannot reach the cluster")?;
        let mut ticker = args
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
        for seq in 1..=args.count {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let mut a = attrs.clone();
            if args.count > 1 {
                a.entry("seq".into()).or_insert(Value::Int(seq as i64));
            }
            let msg = Message::new(&args.topic)
                .attrs(a)
                .payload(args.payload.clone().into_bytes());
            if args.ack {
                client.publish_acked(msg).await?;
            } else {
                client.publish(msg).await?;
            }
        }
        client.close().await;
        out(&format!(
            "published {} event{} to {}",
            args.count,
            if args.count == 1 { "" } else { "s" },
            args.topic
        ));
        Ok(())
    })
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Str(s) => json!(s),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Bool(b) => json!(b),
    }
}

/// One notification as a JSON object.
pub fn notification_json(n: &Notification) -> serde_json::Value {
    let attrs: serde_json::Map<String, serde_json::Value> = n
        .event
        .attrs
        .iter()
        .map(|(k, v)| (k.clone(), value_json(v)))
        .collect();
    let mut o = json!({
        "handle": n.handle.to_string(),
        "topic": n.event.topic,
        "attrs": attrs,
        "id": n.event.id.to_string(),
    });
    match std::str::from_utf8(&n.event.payload) {
        Ok(text) => o["payload"] = json!(text),
        Err(_) => {
            let hex: String = n.event.payload.iter().map(|b| format!("{b:02x}")).collect();
            o["payload_hex"] = json!(hex);
        }
    }
    if n.redelivered {
        o["redelivered"] = json!(true);
    }
    o
}

/// Subscribes and prints one JSON object per notification.
pub fn subscribe(args: SubArgs) -> Result<()> {
    common::init_logs(false, "warn");
    let config = args.cluster.client_config()?;
    common::runtime()?.block_on(async move {
        let client = Client::connect(config)
            .await
            .context("cannot reach the cluster")?;
        let mut b = client.subscribe(&args.topic).filter(&args.filter);
        if let Some(d) = args.expiry {
            b = b.expiry(d);
        }
        b = match (&args.group, &args.key) {
            (Some(g), Some(k)) => b.group_by_key(g, k),
            (Some(g), None) => b.group(g),
            _ => b,
        };
        if args.at_least_once {
            b = b.at_least_once();
        }
        let mut sub = b.start().await?;
        let mut seen = 0;
        loop {
            let n = tokio::select! {
                n = sub.next() => n,
                _ = common::shutdown_signal() => break,
            };
            let Some(n) = n else {
                anyhow::bail!("subscription ended: {:?}", sub.end_reason());
            };
            out(&notification_json(&n).to_string());
            n.ack().await?;
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                break;
            }
        }
        drop(sub);
        client.close().await;
        Ok(())
    })
}
