//! Sift servers the harness starts itself, from the same build: `sift dev` for the suite's
//! runs, and a real cluster of separate `sift coordinator` and `sift matcher` processes for the
//! scale scenario.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sift_client::{Client, ClientConfig};
use sift_protocol::net::tls::CertAuthority;

use crate::procs::{pinned, wait_file, ServerProcess};

/// The files of a local CA and node certificate.
#[derive(Debug, Clone)]
pub struct Certs {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Node certificate (PEM).
    pub cert: PathBuf,
    /// Node key (PEM).
    pub key: PathBuf,
}

impl Certs {
    /// Adds `--ca`, `--cert` and `--key` for these files to a server's command.
    fn add_to(&self, cmd: &mut std::process::Command) {
        cmd.arg("--ca")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key);
    }
}

/// Generates a CA and a node certificate for loopback into `dir`.
pub fn generate_certs(dir: &Path) -> Result<Certs> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = CertAuthority::generate("sift bench CA")?;
    let node = ca.issue(&["localhost".into(), "127.0.0.1".into()])?;
    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
    };
    std::fs::write(&certs.ca, &ca.cert_pem)?;
    std::fs::write(&certs.cert, &node.cert_pem)?;
    std::fs::write(&certs.key, &node.key_pem)?;
    Ok(certs)
}

/// `sift dev` in a child process (coordinator and matchers in one process), started with the
/// `sift` binary at `exe`; returns the process and the client configuration to reach it.
pub fn start_dev(
    exe: &Path,
    port: u16,
    dir: &Path,
    cpus: Option<&str>,
) -> Result<(ServerProcess, ClientConfig)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let address_file = dir.join("coordinator");
    let _ = std::fs::remove_file(&address_file);
    let mut cmd = pinned(exe, cpus);
    cmd.arg("dev")
        .arg("--data-dir")
        .arg(dir)
        .arg("--port")
        .arg(port.to_string())
        .env("RUST_LOG", "warn");
    let mut server = ServerProcess::spawn("sift dev", cmd, &dir.join("sift-dev.log"))?;
    wait_file(&address_file, &mut server, Duration::from_secs(20))?;
    let ca = std::fs::read_to_string(dir.join("ca.pem"))?;
    let config = ClientConfig::new(([127, 0, 0, 1], port).into(), ca);
    Ok((server, config))
}

/// A cluster of separate processes: one coordinator on `port` and `matchers` matchers on the
/// ports after it. Returns once a client sees every matcher in the ring; the coordinator comes
/// first in the list.
pub async fn start_cluster(
    exe: &Path,
    matchers: usize,
    port: u16,
    dir: &Path,
    cpus: Option<&str>,
) -> Result<(Vec<ServerProcess>, ClientConfig)> {
    let certs = generate_certs(dir)?;
    let coordinator = format!("127.0.0.1:{port}");
    let mut procs = Vec::new();
    let mut cmd = pinned(exe, cpus);
    cmd.args(["coordinator", "--listen", &coordinator])
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .env("RUST_LOG", "warn");
    procs.push(ServerProcess::spawn(
        "sift coordinator",
        cmd,
        &dir.join("coordinator.log"),
    )?);
    for i in 1..=matchers {
        let listen = format!("127.0.0.1:{}", usize::from(port) + i);
        let mut cmd = pinned(exe, cpus);
        cmd.args(["matcher", "--id", &format!("m{i}"), "--listen", &listen])
            .args(["--coordinator", &coordinator])
            .env("RUST_LOG", "warn");
        certs.add_to(&mut cmd);
        procs.push(ServerProcess::spawn(
            &format!("sift matcher m{i}"),
            cmd,
            &dir.join(format!("m{i}.log")),
        )?);
    }
    let config = ClientConfig::new(
        ([127, 0, 0, 1], port).into(),
        std::fs::read_to_string(&certs.ca)?,
    );
    // The coordinator may not listen yet: the client retries its connection.
    let client = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(c) = Client::connect(config.clone()).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the coordinator did not answer within 20 s")?;
    let mut ring = client.watch_ring();
    let whole = tokio::time::timeout(
        Duration::from_secs(20),
        ring.wait_for(|p| p.as_ref().is_some_and(|p| p.members().len() == matchers)),
    )
    .await;
    client.close().await;
    for p in &mut procs {
        p.check_running()?;
    }
    match whole {
        Ok(Ok(_)) => Ok((procs, config)),
        _ => bail!("the ring did not reach {matchers} matchers within 20 s"),
    }
}

/// A gossip cluster of separate processes: `nodes` `sift matcher --gossip` nodes on `port`,
/// `port + 1`, …, each seeded with the first, spreading subscriptions by `strategy` every
/// `period`. Returns once every node sees all the others, with the SDK configuration for the
/// first node and every node's address.
pub async fn start_gossip_cluster(
    exe: &Path,
    nodes: usize,
    port: u16,
    dir: &Path,
    cpus: Option<&str>,
    strategy: &str,
    period: Duration,
) -> Result<(Vec<ServerProcess>, ClientConfig, Vec<std::net::SocketAddr>)> {
    let certs = generate_certs(dir)?;
    let first = format!("127.0.0.1:{port}");
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..nodes {
        let listen = format!("127.0.0.1:{}", usize::from(port) + i);
        addrs.push(listen.parse()?);
        let mut cmd = pinned(exe, cpus);
        cmd.args([
            "matcher",
            "--gossip",
            "--id",
            &format!("g{i}"),
            "--listen",
            &listen,
        ])
        .args(["--seeds", &first, "--strategy", strategy])
        .args(["--gossip-period", &format!("{}ms", period.as_millis())])
        .env("RUST_LOG", "warn");
        certs.add_to(&mut cmd);
        procs.push(ServerProcess::spawn(
            &format!("sift matcher --gossip g{i}"),
            cmd,
            &dir.join(format!("g{i}.log")),
        )?);
    }
    let ca = std::fs::read_to_string(&certs.ca)?;
    let config = ClientConfig::new(addrs[0], ca);
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        for &addr in &addrs {
            let mut c = config.clone();
            c.coordinator = addr;
            loop {
                if let Ok(client) = Client::connect(c.clone()).await {
                    let members = client
                        .node_stats()
                        .await
                        .ok()
                        .and_then(|s| s.into_iter().find(|(k, _)| k == "members"))
                        .map_or(0, |(_, v)| v);
                    client.close().await;
                    if members as usize + 1 == nodes {
                        break;
                    }
                }
                // The node is still starting or joining: ask again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    for p in &mut procs {
        p.check_running()?;
    }
    match joined {
        Ok(()) => Ok((procs, config, addrs)),
        Err(_) => bail!("the {nodes} gossip nodes did not all see each other within 30 s"),
    }
}
