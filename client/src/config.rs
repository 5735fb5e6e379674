//! Client settings.

use std::net::SocketAddr;
use std::time::Duration;

use sift_protocol::net::tls::CertifiedKey;

use crate::ClientError;

/// How a [`crate::Client`] reaches the cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Where the ring comes from: the coordinator (or, for a standalone matcher or a gossip
    /// node, the node itself).
    pub coordinator: SocketAddr,
    /// Other entry points, tried in turn when the current one cannot be reached: a gossip
    /// cluster's other nodes, so that a client whose node dies moves to another one and
    /// subscribes again there. (`SIFT_COORDINATOR` takes them comma-separated after the
    /// first.) Default none.
    pub fallbacks: Vec<SocketAddr>,
    /// The TLS server name the nodes' certificates carry. Default `"localhost"`.
    pub server_name: String,
    /// The CA that signed the nodes' certificates, PEM.
    pub ca_pem: String,
    /// A client certificate for clusters that require mutual TLS.
    pub client_cert: Option<CertifiedKey>,
    /// A token for clusters that require one.
    pub token: Option<String>,
    /// How long to wait for an answer. Default 5 s.
    pub request_timeout: Duration,
    /// How long to wait for a matcher or the coordinator to answer a connection attempt.
    /// A matcher that does not is retried with exponential backoff (50 ms doubling to 2 s,
    /// with jitter) while requests go where the ring says. Default 2 s.
    pub connect_timeout: Duration,
    /// How many times a request refused with `not-owner` (or lost with a connection) is
    /// retried after the ring is refreshed. Default 8.
    pub retries_max: u32,
    /// Notifications each matcher may have waiting in the client for one subscription (the
    /// credit it is given; it gets more as the application takes them). A subscription the
    /// application does not read stops getting them, and meets its matcher's slow-consumer
    /// policy, without holding up the others on the connection. Default 4,096.
    pub buffer_len: usize,
    /// With replicas (R ≥ 2), an acknowledged publish the topic's primary has not answered
    /// within this long is sent to its next owner too (same event id: matchers drop the
    /// repeat), so a crashed primary costs about this much, not a request timeout.
    /// Default 300 ms.
    pub failover_after: Duration,
}

impl ClientConfig {
    /// A configuration for `coordinator`, trusting `ca_pem`.
    pub fn new(coordinator: SocketAddr, ca_pem: impl Into<String>) -> ClientConfig {
        ClientConfig {
            coordinator,
            fallbacks: Vec::new(),
            server_name: "localhost".into(),
            ca_pem: ca_pem.into(),
            client_cert: None,
            token: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retries_max: 8,
            buffer_len: 4096,
            failover_after: Duration::from_millis(300),
        }
    }

    /// From the environment: `SIFT_COORDINATOR` (`host:port`, or several comma-separated:
    /// the first, then [`ClientConfig::fallbacks`]) and `SIFT_CA` (a PEM file); `SIFT_TOKEN`
    /// and `SIFT_SERVER_NAME` when set.
    pub fn from_env() -> Result<ClientConfig, ClientError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| ClientError::Config(format!("{name} is not set")))
        };
        let (coordinator, fallbacks) = resolve_list(&var("SIFT_COORDINATOR")?)?;
        let ca_path = var("SIFT_CA")?;
        let ca_pem = std::fs::read_to_string(&ca_path)
            .map_err(|e| ClientError::Config(format!("cannot read SIFT_CA {ca_path}: {e}")))?;
        let mut config = ClientConfig::new(coordinator, ca_pem);
        config.fallbacks = fallbacks;
        config.token = std::env::var("SIFT_TOKEN").ok();
        if let Ok(name) = std::env::var("SIFT_SERVER_NAME") {
            config.server_name = name;
        }
        Ok(config)
    }
}

impl ClientConfig {
    /// The cluster of a local `sift dev` whose data directory is `dir` (its `coordinator` and
    /// `ca.pem` files).
    pub fn local_dev(dir: impl AsRef<std::path::Path>) -> Result<ClientConfig, ClientError> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                ClientError::Config(format!(
                    "{}: {e} (is `sift dev` running?)",
                    dir.join(name).display()
                ))
            })
        };
        let (coordinator, fallbacks) = resolve_list(read("coordinator")?.trim())?;
        let mut config = ClientConfig::new(coordinator, read("ca.pem")?);
        config.fallbacks = fallbacks;
        Ok(config)
    }

    /// [`ClientConfig::from_env`] when `SIFT_COORDINATOR` is set, else the local `sift dev`
    /// cluster in `./.sift-dev`.
    pub fn from_env_or_dev() -> Result<ClientConfig, ClientError> {
        if std::env::var_os("SIFT_COORDINATOR").is_some() {
            ClientConfig::from_env()
        } else {
            ClientConfig::local_dev(".sift-dev")
        }
    }
}

/// Resolves `host:port[,host:port…]`: the first address and the others.
pub(crate) fn resolve_list(list: &str) -> Result<(SocketAddr, Vec<SocketAddr>), ClientError> {
    let mut all = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(resolve)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let first = all
        .next()
        .ok_or_else(|| ClientError::Config("no address given".into()))?;
    Ok((first, all.collect()))
}

/// Resolves `host:port` to a socket address.
pub(crate) fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| ClientError::Config(format!("cannot resolve {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Config(format!("{addr:?} resolves to nothing")))
}
