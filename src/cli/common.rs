//! What the subcommands share: finding a cluster (flags, environment, or a local `sift dev`
//! data directory), logging, and the runtime.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sift_client::ClientConfig;

/// Where the cluster is. Flags win over environment variables, which win over the files of a
/// local `sift dev` cluster in `--data-dir`.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The coordinator, `host:port` (a gossip cluster: any node; several comma-separated
    /// nodes to fail over between).
    #[arg(long, env = "SIFT_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The CA certificate (PEM) that signed the nodes' certificates.
    #[arg(long, env = "SIFT_CA")]
    pub ca: Option<PathBuf>,
    /// A token, for clusters that require one.
    #[arg(long, env = "SIFT_TOKEN")]
    pub token: Option<String>,
    /// A client certificate (PEM), for clusters that require mutual TLS.
    #[arg(long, env = "SIFT_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SIFT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The TLS name on the nodes' certificates.
    #[arg(long, env = "SIFT_SERVER_NAME", default_value = "localhost")]
    pub server_name: String,
    /// The data directory of a local `sift dev` cluster.
    #[arg(long, env = "SIFT_DATA_DIR", default_value = ".sift-dev")]
    pub data_dir: PathBuf,
}

/// The file in a dev data directory that holds the coordinator's address.
pub const COORDINATOR_FILE: &str = "coordinator";
/// The CA certificate in a dev data directory.
pub const CA_FILE: &str = "ca.pem";

impl ClusterArgs {
    /// The client configuration these arguments describe.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let addr = match &self.coordinator {
            Some(a) => a.clone(),
            None => {
                let path = self.data_dir.join(COORDINATOR_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no --coordinator, no SIFT_COORDINATOR, and no local cluster ({} not found); \
                             start one with `sift dev`",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        // `host:port`, or several comma-separated: the first, then fallbacks (a gossip
        // cluster's other nodes).
        let mut addrs = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(resolve)
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let coordinator = addrs.next().context("no cluster address given")?;
        let fallbacks: Vec<_> = addrs.collect();
        let ca_path = self
            .ca
            .clone()
            .unwrap_or_else(|| self.data_dir.join(CA_FILE));
        let ca_pem = std::fs::read_to_string(&ca_path)
            .with_context(|| format!("cannot read the CA certificate {}", ca_path.display()))?;
        let mut config = ClientConfig::new(coordinator, ca_pem);
        config.fallbacks = fallbacks;
        config.token = self.token.clone();
        config.server_name = self.server_name.clone();
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            config.client_cert = Some(sift_protocol::net::tls::CertifiedKey {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            });
        }
        Ok(config)
    }
}

/// Resolves `host:port`.
pub fn resolve(addr: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr:?}"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to nothing"))
}

/// Logs to stderr: human-readable, or JSON lines for servers that ask for it. `RUST_LOG`
/// overrides `default`.
pub fn init_logs(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The async runtime for a subcommand.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() -> Signal {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return Signal::Interrupt;
                }
            };
        tokio::select! {
            _ = ctrl_c => Signal::Interrupt,
            _ = term.recv() => Signal::Terminate,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        Signal::Interrupt
    }
}

/// Which signal asked a server to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C (SIGINT): stop now.
    Interrupt,
    /// SIGTERM: a matcher drains first (lame duck).
    Terminate,
}

/// Parses a duration like `30s`, `500ms`, `2m`.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}
