//! `sift dev`: a coordinator and N matchers in one process on loopback, with a CA and node
//! certificates generated into the data directory — the zero-configuration way to try Sift.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use sift_coordinator::{Coordinator, CoordinatorConfig};
use sift_matcher::{GossipConfig, Matcher, MatcherConfig};
use sift_matcher_core::gossip::Strategy;
use sift_protocol::net::tls::{client_config, server_config, CertAuthority, CertifiedKey};

use super::common::{self, CA_FILE, COORDINATOR_FILE};
use super::out;

/// Arguments of `sift dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Matchers to run.
    #[arg(long, default_value_t = 3)]
    pub matchers: u16,
    /// Where the CA, the node certificate and the cluster's address are written.
    #[arg(long, default_value = ".sift-dev")]
    pub data_dir: PathBuf,
    /// UDP port of the coordinator; matchers take the next ones.
    #[arg(long, default_value_t = 7400)]
    pub port: u16,
    /// Partitioned mode: the replication factor R (exact-topic subscriptions on R owners,
    /// acknowledged publishes held on R owners), 1 to 5.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Logs as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Gossip mode: no coordinator; the nodes listen on PORT, PORT+1, … and clients may use
    /// any of them.
    #[arg(long)]
    pub gossip: bool,
    /// Gossip mode: the dissemination strategy.
    #[arg(long, default_value = "rumor:2+anti-entropy:push-pull")]
    pub strategy: Strategy,
    /// Gossip mode: the dissemination tick.
    #[arg(long, default_value = "100ms", value_parser = common::duration)]
    pub gossip_period: Duration,
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs a local cluster until Ctrl-C.
pub fn run(args: DevArgs) -> Result<()> {
    common::init_logs(args.log_json, "info");
    if args.matchers == 0 || args.matchers > 64 {
        bail!("--matchers must be 1 to 64");
    }
    let max = sift_protocol::ring::REPLICAS_MAX;
    if !(1..=max).contains(&args.replicas) {
        bail!("--replicas must be 1 to {max}");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let ca = CertAuthority::generate("sift dev CA")?;
    let node = ca.issue(&["localhost".into(), "127.0.0.1".into()])?;
    write(&args.data_dir, CA_FILE, &ca.cert_pem)?;
    write(&args.data_dir, "node.pem", &node.cert_pem)?;
    write(&args.data_dir, "node.key", &node.key_pem)?;
    if args.gossip {
        return gossip(args, &ca, &node);
    }
    common::runtime()?.block_on(async move {
        let coordinator_addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
        let config = CoordinatorConfig {
            listen: coordinator_addr,
            replicas: args.replicas,
            ..CoordinatorConfig::default()
        };
        let coordinator = Coordinator::start(config, server_config(&node, None)?)
            .with_context(|| format!("cannot listen on {coordinator_addr} (is another `sift dev` running? try --port)"))?;
        let mut matchers = Vec::new();
        for i in 1..=args.matchers {
            let mut config = MatcherConfig::for_test(&format!("m{i}"));
            config.listen = ([127, 0, 0, 1], args.port + i).into();
            config.coordinator = Some((coordinator_addr, "localhost".into()));
            let tls = server_config(&node, None)?;
            let to_coordinator = client_config(&ca.cert_pem, None)?;
            let m = Matcher::start(config, tls, Some(to_coordinator))
                .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port + i))?;
            matchers.push(m);
        }
        let mut ring = coordinator.watch();
        let n = usize::from(args.matchers);
        tokio::time::timeout(Duration::from_secs(10), ring.wait_for(|r| r.members.len() == n))
            .await
            .context("the matchers did not join the ring within 10 s")??;
        write(&args.data_dir, COORDINATOR_FILE, &coordinator_addr.to_string())?;
        let dir = args.data_dir.display();
        out(&format!("sift dev: coordinator on {coordinator_addr}, {n} matchers on 127.0.0.1:{}..{}", args.port + 1, args.port + args.matchers));
        out(&format!("  certificates and address in {dir}/ (sift pub/sub/ring find them there)"));
        out("  try:   sift sub 'orders.>' --filter 'price > 10'");
        out("         sift pub orders.eu --attrs '{\"price\": 12.5}' --payload hello");
        out(&format!("  SDK:   SIFT_COORDINATOR={coordinator_addr} SIFT_CA={dir}/{CA_FILE}  (Client::from_env())"));
        out("  stop with Ctrl-C");
        common::shutdown_signal().await;
        out("sift dev: stopping");
        for m in matchers {
            m.shutdown().await;
        }
        coordinator.shutdown().await;
        let _ = std::fs::remove_file(args.data_dir.join(COORDINATOR_FILE));
        Ok(())
    })
}

/// `sift dev --gossip`: N gossip nodes, each seeded with the first.
fn gossip(args: DevArgs, ca: &CertAuthority, node: &CertifiedKey) -> Result<()> {
    common::runtime()?.block_on(async move {
        let first = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
        let mut nodes = Vec::new();
        for i in 0..args.matchers {
            let mut config = MatcherConfig::for_test(&format!("g{}", i + 1));
            config.listen = ([127, 0, 0, 1], args.port + i).into();
            config.gossip = Some(GossipConfig {
                seeds: vec![first],
                strategy: args.strategy,
                period: args.gossip_period,
                ..GossipConfig::default()
            });
            let tls = server_config(node, None)?;
            let to_peers = client_config(&ca.cert_pem, None)?;
            let m = Matcher::start(config, tls, Some(to_peers))
                .with_context(|| format!("cannot listen on 127.0.0.1:{} (is another `sift dev` running? try --port)", args.port + i))?;
            nodes.push(m);
        }
        let n = nodes.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut joined = 0;
            for m in &nodes {
                if m.stats().await.is_some_and(|s| s.members + 1 == n) {
                    joined += 1;
                }
            }
            if joined == n {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the gossip nodes did not all see each other within 10 s");
            }
            // Polls the nodes' own membership view (no event to wait on across nodes).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every node: clients use the first and fail over to the others.
        let all: Vec<String> = nodes
            .iter()
            .filter_map(|m| m.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        write(&args.data_dir, COORDINATOR_FILE, &all.join(","))?;
        let dir = args.data_dir.display();
        let last = args.port + args.matchers - 1;
        out(&format!("sift dev --gossip: {n} gossip nodes on 127.0.0.1:{}..{last}, strategy {}", args.port, args.strategy));
        out(&format!("  certificates and address in {dir}/ (sift pub/sub find them there; any node serves)"));
        out("  try:   sift sub 'orders.>' --filter 'price > 10'");
        out(&format!("         SIFT_COORDINATOR=127.0.0.1:{last} sift pub orders.eu --attrs '{{\"price\": 12.5}}' --payload hello"));
        out(&format!("  SDK:   SIFT_COORDINATOR={} SIFT_CA={dir}/{CA_FILE}  (Client::from_env(); any node, the others as fallbacks)", all.join(",")));
        out("  stop with Ctrl-C");
        common::shutdown_signal().await;
        out("sift dev: stopping");
        for m in nodes {
            m.shutdown().await;
        }
        let _ = std::fs::remove_file(args.data_dir.join(COORDINATOR_FILE));
        Ok(())
    })
}
