//! `sift ring` and `sift admin`: what the cluster looks like, and the operator's levers.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sift_client::Client;
use sift_protocol::ring::Placement;

use super::common::{self, ClusterArgs};
use super::out;

/// Arguments of `sift ring`.
#[derive(Args, Debug)]
pub struct RingArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `sift admin` subcommands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// List the matchers, their state and their last heartbeat.
    Nodes {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Take a matcher out of the ring; its topics move to the others.
    Drain {
        /// The matcher's id.
        id: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// A node's counters as JSON (a gossip node, or a matcher): subscriptions held, copies
    /// of other nodes' subscriptions, gossip traffic, forwarded events, drops.
    Stats {
        /// The node, `host:port` (default: the cluster address, which for a gossip
        /// cluster is a node).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Forget a matcher.
    Remove {
        /// The matcher's id.
        id: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// Prints the ring: version, members, weights and the share of the hash space each owns.
pub fn ring(args: RingArgs) -> Result<()> {
    common::init_logs(false, "warn");
    let config = args.cluster.client_config()?;
    common::runtime()?.block_on(async move {
        let client = Client::connect(config)
            .await
            .context("cannot reach the cluster")?;
        let ring = client.ring().context("no ring")?;
        let shares = Placement::new(&ring).shares();
        out(&format!("ring version {}", ring.version));
        out(&format!(
            "{:<16} {:<24} {:>6} {:>8}",
            "MATCHER", "ADDRESS", "WEIGHT", "SHARE"
        ));
        for (m, share) in ring.members.iter().zip(shares) {
            out(&format!(
                "{:<16} {:<24} {:>6} {:>7.1}%",
                m.id,
                m.addr,
                m.weight,
                share * 100.0
            ));
        }
        client.close().await;
        Ok(())
    })
}

/// Runs an admin command.
pub fn admin(command: AdminCommand) -> Result<()> {
    common::init_logs(false, "warn");
    let cluster = match &command {
        AdminCommand::Nodes { cluster }
        | AdminCommand::Drain { cluster, .. }
        | AdminCommand::Remove { cluster, .. }
        | AdminCommand::Stats { cluster, .. } => cluster,
    };
    let mut config = cluster.client_config()?;
    if let AdminCommand::Stats {
        node: Some(node), ..
    } = &command
    {
        config.coordinator = common::resolve(node)?;
    }
    common::runtime()?.block_on(async move {
        let client = Client::connect(config)
            .await
            .context("cannot reach the cluster")?;
        match &command {
            AdminCommand::Nodes { .. } => {
                out(&format!(
                    "{:<16} {:<24} {:>6} {:<9} {:>10}",
                    "MATCHER", "ADDRESS", "WEIGHT", "STATE", "LAST SEEN"
                ));
                for n in client.admin_nodes().await? {
                    let state = format!("{:?}", n.state).to_lowercase();
                    out(&format!(
                        "{:<16} {:<24} {:>6} {:<9} {:>8}ms",
                        n.member.id, n.member.addr, n.member.weight, state, n.last_seen_ms
                    ));
                }
            }
            AdminCommand::Drain { id, .. } => {
                client.admin_drain(id).await?;
                out(&format!(
                    "{id} is draining: it left the ring and its topics move to the others"
                ));
            }
            AdminCommand::Stats { .. } => {
                let counters: serde_json::Map<String, serde_json::Value> = client
                    .node_stats()
                    .await?
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::from(v)))
                    .collect();
                out(&serde_json::to_string(&counters)?);
            }
            AdminCommand::Remove { id, .. } => {
                client.admin_remove(id).await?;
                out(&format!("{id} removed"));
            }
        }
        client.close().await;
        Ok(())
    })
}
