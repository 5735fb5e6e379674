//! `sift coordinator` and `sift matcher`: the real processes. Each setting comes from a flag,
//! else an environment variable, else the TOML file given with `--config`, else its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use sift_coordinator::{Coordinator, CoordinatorConfig};
use sift_matcher::{GossipConfig, Matcher, MatcherConfig, SlowConsumer};
use sift_matcher_core::gossip::Strategy;
use sift_protocol::net::tls::{client_config, server_config, CertifiedKey};

use super::common;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn load<T: for<'de> Deserialize<'de> + Default>(path: Option<&PathBuf>) -> Result<T> {
    match path {
        None => Ok(T::default()),
        Some(p) => {
            toml::from_str(&read(p)?).with_context(|| format!("invalid config {}", p.display()))
        }
    }
}

/// The node's TLS: its certificate and key, and the CA client certificates must be signed by
/// when mutual TLS is on.
fn node_tls(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<(CertifiedKey, quinn::ServerConfig)> {
    let (Some(cert), Some(key)) = (cert, key) else {
        bail!("a certificate and its key are required (--cert and --key, or cert/key in the config file)");
    };
    let cert = CertifiedKey {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    };
    let client_ca = client_ca.map(|p| read(&p)).transpose()?;
    let tls = server_config(&cert, client_ca.as_deref())?;
    Ok((cert, tls))
}

/// How long a lame-duck drain waits for clients to move once out of the ring.
const DRAIN_GRACE_DEFAULT: Duration = Duration::from_secs(2);
/// The longest a lame-duck drain waits to leave the ring.
const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// Arguments of `sift coordinator`.
#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// A TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "SIFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where to listen (UDP), `ip:port`. Default 0.0.0.0:7400.
    #[arg(long, env = "SIFT_LISTEN")]
    pub listen: Option<String>,
    /// The node certificate (PEM).
    #[arg(long, env = "SIFT_CERT")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SIFT_KEY")]
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, env = "SIFT_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// A matcher silent this long leaves the ring (e.g. 2500ms).
    #[arg(long, env = "SIFT_DEAD_AFTER", value_parser = common::duration)]
    pub dead_after: Option<Duration>,
    /// Replication factor R, cluster-wide: every exact-topic subscription is stored on its
    /// topic's R successive owners, and with R ≥ 2 an acknowledged publish is acknowledged
    /// once R owners hold the event (1 to 5; default 1, 2 recommended).
    #[arg(long, env = "SIFT_REPLICAS")]
    pub replicas: Option<u32>,
    /// How long a ring transition waits for the old owners to confirm their handoff before
    /// it is abandoned and tried again (e.g. 10s).
    #[arg(long, env = "SIFT_HANDOFF_TIMEOUT", value_parser = common::duration)]
    pub handoff_timeout: Option<Duration>,
    /// After a restart, how long the coordinator waits for the matchers to report the ring
    /// they serve with before it builds one itself (e.g. 2500ms).
    #[arg(long, env = "SIFT_RECOVERY", value_parser = common::duration)]
    pub recovery: Option<Duration>,
    /// Require this token from every connection (matchers, clients, operators).
    #[arg(long, env = "SIFT_TOKEN")]
    pub token: Option<String>,
    /// Most connections at once.
    #[arg(long, env = "SIFT_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Logs as JSON lines.
    #[arg(long, env = "SIFT_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    dead_after: Option<String>,
    handoff_timeout: Option<String>,
    recovery: Option<String>,
    replicas: Option<u32>,
    token: Option<String>,
    connections_max: Option<usize>,
}

/// Runs a coordinator until SIGTERM or Ctrl-C.
pub fn coordinator(args: CoordinatorArgs) -> Result<()> {
    common::init_logs(args.log_json, "info");
    let file: CoordinatorFile = load(args.config.as_ref())?;
    let mut config = CoordinatorConfig::default();
    if let Some(l) = args.listen.or(file.listen) {
        config.listen = common::resolve(&l)?;
    }
    if let Some(d) = args
        .dead_after
        .map(Ok)
        .or(file.dead_after.map(|d| common::duration(&d)))
    {
        config.dead_after = d.map_err(anyhow::Error::msg)?;
    }
    if let Some(d) = args
        .handoff_timeout
        .map(Ok)
        .or(file.handoff_timeout.map(|d| common::duration(&d)))
    {
        config.handoff_timeout = d.map_err(anyhow::Error::msg)?;
        if config.handoff_timeout.is_zero() {
            bail!("--handoff-timeout must be above zero");
        }
    }
    if let Some(d) = args
        .recovery
        .map(Ok)
        .or(file.recovery.map(|d| common::duration(&d)))
    {
        config.recovery = d.map_err(anyhow::Error::msg)?;
    }
    if let Some(r) = args.replicas.or(file.replicas) {
        let max = sift_protocol::ring::REPLICAS_MAX;
        if !(1..=max).contains(&r) {
            bail!("--replicas must be 1 to {max}");
        }
        config.replicas = r;
    }
    config.token = args.token.or(file.token);
    if let Some(n) = args.connections_max.or(file.connections_max) {
        config.connections_max = n;
    }
    let (_, tls) = node_tls(
        args.cert.as_ref().or(file.cert.as_ref()),
        args.key.as_ref().or(file.key.as_ref()),
        args.client_ca.or(file.client_ca),
    )?;
    common::runtime()?.block_on(async move {
        let c = Coordinator::start(config, tls).context("cannot start the coordinator")?;
        common::shutdown_signal().await;
        tracing::info!("stopping");
        c.shutdown().await;
        Ok(())
    })
}

/// Arguments of `sift matcher`.
#[derive(Args, Debug)]
pub struct MatcherArgs {
    /// A TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "SIFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Stable identity in the ring.
    #[arg(long, env = "SIFT_ID")]
    pub id: Option<String>,
    /// Where to listen (UDP), `ip:port`. Default 0.0.0.0:7401.
    #[arg(long, env = "SIFT_LISTEN")]
    pub listen: Option<String>,
    /// The `host:port` clients should use. Default: the listen address.
    #[arg(long, env = "SIFT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Relative weight in the ring (1..=100).
    #[arg(long, env = "SIFT_WEIGHT")]
    pub weight: Option<u32>,
    /// The coordinator, `host:port`; without it the matcher runs standalone.
    #[arg(long, env = "SIFT_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The TLS name on the coordinator's certificate.
    #[arg(long, env = "SIFT_COORDINATOR_NAME")]
    pub coordinator_name: Option<String>,
    /// The CA that signed the coordinator's certificate (PEM).
    #[arg(long, env = "SIFT_CA")]
    pub ca: Option<PathBuf>,
    /// The node certificate (PEM).
    #[arg(long, env = "SIFT_CERT")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SIFT_KEY")]
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, env = "SIFT_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Require clients to present this token.
    #[arg(long, env = "SIFT_TOKEN")]
    pub token: Option<String>,
    /// The token the coordinator requires.
    #[arg(long, env = "SIFT_COORDINATOR_TOKEN")]
    pub coordinator_token: Option<String>,
    /// Most client connections at once.
    #[arg(long, env = "SIFT_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Notifications queued per subscription before the slow-consumer policy applies.
    #[arg(long, env = "SIFT_QUEUE_LEN")]
    pub queue_len: Option<usize>,
    /// `drop-oldest` or `disconnect`.
    #[arg(long, env = "SIFT_SLOW_CONSUMER")]
    pub slow_consumer: Option<String>,
    /// Redeliver an unacked at-least-once notification after this (e.g. 2s).
    #[arg(long, env = "SIFT_ACK_TIMEOUT", value_parser = common::duration)]
    pub ack_timeout: Option<Duration>,
    /// SIGTERM is a lame-duck drain: the matcher leaves the ring through the handoff, then
    /// waits this long for its clients to move before it exits (e.g. 2s).
    #[arg(long, env = "SIFT_DRAIN_GRACE", value_parser = common::duration)]
    pub drain_grace: Option<Duration>,
    /// The longest a lame-duck drain waits to leave the ring (the coordinator unreachable)
    /// before the matcher exits anyway, with status 1 (e.g. 60s).
    #[arg(long, env = "SIFT_DRAIN_TIMEOUT", value_parser = common::duration)]
    pub drain_timeout: Option<Duration>,
    /// Logs as JSON lines.
    #[arg(long, env = "SIFT_LOG_JSON")]
    pub log_json: bool,
    /// Run as a gossip node: no coordinator; every node holds every subscription, learned
    /// from the others by the dissemination strategy; clients connect to any node.
    #[arg(long, env = "SIFT_GOSSIP")]
    pub gossip: bool,
    /// Gossip: nodes to join through, `host:port` (their advertised addresses).
    #[arg(long, env = "SIFT_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Gossip: dissemination strategy (flood, bcrm:B,F, rumor:k, anti-entropy:push-pull,
    /// rumor:k+anti-entropy, …). Default rumor:2+anti-entropy:push-pull.
    #[arg(long, env = "SIFT_STRATEGY")]
    pub strategy: Option<Strategy>,
    /// Gossip: the dissemination tick. Default 100ms.
    #[arg(long, env = "SIFT_GOSSIP_PERIOD", value_parser = common::duration)]
    pub gossip_period: Option<Duration>,
    /// Gossip: the TLS name on the peers' certificates. Default localhost.
    #[arg(long, env = "SIFT_PEER_NAME")]
    pub peer_name: Option<String>,
    /// Gossip: the secret nodes present to each other; with it, only peers may send
    /// membership, gossip and forwarded events (set it in production).
    #[arg(long, env = "SIFT_PEER_TOKEN")]
    pub peer_token: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct MatcherFile {
    gossip: Option<bool>,
    seeds: Option<Vec<String>>,
    strategy: Option<String>,
    gossip_period: Option<String>,
    peer_name: Option<String>,
    peer_token: Option<String>,
    id: Option<String>,
    listen: Option<String>,
    advertise: Option<String>,
    weight: Option<u32>,
    coordinator: Option<String>,
    coordinator_name: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    token: Option<String>,
    queue_len: Option<usize>,
    slow_consumer: Option<String>,
    ack_timeout: Option<String>,
    drain_grace: Option<String>,
    drain_timeout: Option<String>,
    coordinator_token: Option<String>,
    connections_max: Option<usize>,
}

/// Runs a matcher until SIGTERM or Ctrl-C.
pub fn matcher(args: MatcherArgs) -> Result<()> {
    common::init_logs(args.log_json, "info");
    let f: MatcherFile = load(args.config.as_ref())?;
    let mut config = MatcherConfig::default();
    if let Some(id) = args.id.or(f.id) {
        config.id = id;
    }
    if let Some(l) = args.listen.or(f.listen) {
        config.listen = common::resolve(&l)?;
    }
    config.advertise = args.advertise.or(f.advertise);
    if let Some(w) = args.weight.or(f.weight) {
        if !(1..=sift_protocol::ring::WEIGHT_MAX).contains(&w) {
            bail!("--weight must be 1 to {}", sift_protocol::ring::WEIGHT_MAX);
        }
        config.weight = w;
    }
    config.token = args.token.or(f.token);
    if let Some(q) = args.queue_len.or(f.queue_len) {
        config.queue_len_max = q.max(1);
    }
    if let Some(p) = args.slow_consumer.or(f.slow_consumer) {
        config.slow_consumer = match p.as_str() {
            "drop-oldest" => SlowConsumer::DropOldest,
            "disconnect" => SlowConsumer::Disconnect,
            other => bail!("--slow-consumer must be drop-oldest or disconnect, not {other:?}"),
        };
    }
    if let Some(d) = args
        .ack_timeout
        .map(Ok)
        .or(f.ack_timeout.map(|d| common::duration(&d)))
    {
        config.ack_timeout = d.map_err(anyhow::Error::msg)?;
    }
    let drain_grace = match args
        .drain_grace
        .map(Ok)
        .or(f.drain_grace.map(|d| common::duration(&d)))
    {
        Some(d) => d.map_err(anyhow::Error::msg)?,
        None => DRAIN_GRACE_DEFAULT,
    };
    let drain_timeout = match args
        .drain_timeout
        .map(Ok)
        .or(f.drain_timeout.map(|d| common::duration(&d)))
    {
        Some(d) => d.map_err(anyhow::Error::msg)?,
        None => DRAIN_TIMEOUT_DEFAULT,
    };
    let (cert, tls) = node_tls(
        args.cert.as_ref().or(f.cert.as_ref()),
        args.key.as_ref().or(f.key.as_ref()),
        args.client_ca.or(f.client_ca),
    )?;
    config.coordinator_token = args.coordinator_token.or(f.coordinator_token);
    if let Some(n) = args.connections_max.or(f.connections_max) {
        config.connections_max = n;
    }
    let gossip = args.gossip || f.gossip.unwrap_or(false);
    let coordinator = args.coordinator.or(f.coordinator);
    if gossip && coordinator.is_some() {
        bail!("--gossip and --coordinator exclude each other: a gossip node has no coordinator");
    }
    if gossip {
        let mut g = GossipConfig::default();
        let seeds = if args.seeds.is_empty() {
            f.seeds.unwrap_or_default()
        } else {
            args.seeds
        };
        g.seeds = seeds
            .iter()
            .map(|s| common::resolve(s))
            .collect::<Result<_>>()?;
        if let Some(st) = args.strategy {
            g.strategy = st;
        } else if let Some(st) = f.strategy {
            g.strategy = st.parse()?;
        }
        if let Some(d) = args
            .gossip_period
            .map(Ok)
            .or(f.gossip_period.map(|d| common::duration(&d)))
        {
            g.period = d.map_err(anyhow::Error::msg)?;
            if g.period.is_zero() {
                bail!("--gossip-period must be above zero");
            }
        }
        if let Some(n) = args.peer_name.or(f.peer_name) {
            g.server_name = n;
        }
        g.peer_token = args.peer_token.or(f.peer_token);
        config.gossip = Some(g);
        let ca_path = args
            .ca
            .or(f.ca)
            .context("--ca is required with --gossip (it signs the peers' certificates)")?;
        let to_peers = client_config(&read(&ca_path)?, Some(&cert))?;
        return common::runtime()?.block_on(async move {
            let m = Matcher::start(config, tls, Some(to_peers))
                .context("cannot start the gossip node")?;
            common::shutdown_signal().await;
            tracing::info!("stopping");
            m.shutdown().await;
            Ok(())
        });
    }
    let to_coordinator = match coordinator {
        Some(addr) => {
            let name = args
                .coordinator_name
                .or(f.coordinator_name)
                .unwrap_or_else(|| "localhost".into());
            config.coordinator = Some((common::resolve(&addr)?, name));
            let ca_path = args
                .ca
                .or(f.ca)
                .context("--ca is required with --coordinator")?;
            // The node certificate doubles as the matcher's client certificate, for a
            // coordinator that requires mutual TLS.
            Some(client_config(&read(&ca_path)?, Some(&cert))?)
        }
        None => None,
    };
    common::runtime()?.block_on(async move {
        let m = Matcher::start(config, tls, to_coordinator).context("cannot start the matcher")?;
        let mut left = true;
        if common::shutdown_signal().await == common::Signal::Terminate {
            tracing::info!("SIGTERM: lame-duck drain");
            left = m.drain(drain_grace, drain_timeout).await;
            if !left {
                tracing::warn!(
                    timeout_ms = drain_timeout.as_millis() as u64,
                    "did not leave the ring in time; stopping anyway"
                );
            }
        }
        tracing::info!("stopping");
        m.shutdown().await;
        if !left {
            bail!("the lame-duck drain did not complete");
        }
        Ok(())
    })
}
