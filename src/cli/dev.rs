//! `sift dev`: a coordinator and N matchers in one process on loopback, with a CA and node
//! certificates generated into the data directory — the zero-configuration way to try Sift.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use sift_coordinator::{Coordinator, CoordinatorConfig};
use sift_matcher::{Matcher, MatcherConfig};
use sift_protocol::net::tls::{client_config, server_config, CertAuthority};

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
    /// Logs as JSON lines.
    #[arg(long)]
    pub log_json: bool,
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
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let ca = CertAuthority::generate("sift dev CA")?;
    let node = ca.issue(&["localhost".into(), "127.0.0.1".into()])?;
    write(&args.data_dir, CA_FILE, &ca.cert_pem)?;
    write(&args.data_dir, "node.pem", &node.cert_pem)?;
    write(&args.data_dir, "node.key", &node.key_pem)?;
    common::runtime()?.block_on(async move {
        let coordinator_addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
        let config = CoordinatorConfig { listen: coordinator_addr, ..CoordinatorConfig::default() };
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
