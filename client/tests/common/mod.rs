//! An in-process cluster on loopback QUIC: a coordinator, matchers, and clients, all with
//! certificates from a CA generated per test.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use sift_client::{Client, ClientConfig};
use sift_coordinator::{Coordinator, CoordinatorConfig};
use sift_matcher::{Matcher, MatcherConfig};
use sift_protocol::net::tls::{client_config, server_config, CertAuthority};

pub const LIMIT: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub ca: CertAuthority,
    pub coordinator: Coordinator,
    pub matchers: Vec<Matcher>,
    next_id: usize,
}

impl Cluster {
    /// A coordinator and `n` matchers, waiting until the ring has them all.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: usize, tweak: impl Fn(&mut MatcherConfig)) -> Cluster {
        Cluster::start_full(n, |_| {}, tweak).await
    }

    pub async fn start_full(
        n: usize,
        coordinator_tweak: impl FnOnce(&mut CoordinatorConfig),
        tweak: impl Fn(&mut MatcherConfig),
    ) -> Cluster {
        // RUST_LOG=debug shows what the nodes and the client do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let ca = CertAuthority::generate("test CA").unwrap();
        let cert = ca.issue(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let mut config = CoordinatorConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            dead_after: Duration::from_millis(1500),
            ..CoordinatorConfig::default()
        };
        coordinator_tweak(&mut config);
        let coordinator = Coordinator::start(config, server_config(&cert, None).unwrap()).unwrap();
        let mut cluster = Cluster {
            ca,
            coordinator,
            matchers: vec![],
            next_id: 1,
        };
        for _ in 0..n {
            cluster.add_matcher_with(&tweak).await;
        }
        cluster
    }

    /// Adds a matcher and waits until the ring includes it.
    pub async fn add_matcher(&mut self) -> usize {
        self.add_matcher_with(|_| {}).await
    }

    pub async fn add_matcher_with(&mut self, tweak: impl Fn(&mut MatcherConfig)) -> usize {
        let id = format!("m{}", self.next_id);
        self.next_id += 1;
        let cert = self
            .ca
            .issue(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let mut config = MatcherConfig::for_test(&id);
        config.coordinator = Some((self.coordinator.local_addr().unwrap(), "localhost".into()));
        config.heartbeat_interval = Duration::from_millis(200);
        tweak(&mut config);
        let tls = server_config(&cert, None).unwrap();
        let coord_tls = client_config(&self.ca.cert_pem, None).unwrap();
        let m = Matcher::start(config, tls, Some(coord_tls)).unwrap();
        let mut ring = self.coordinator.watch();
        tokio::time::timeout(
            LIMIT,
            ring.wait_for(|r| r.members.iter().any(|x| x.id == id)),
        )
        .await
        .unwrap()
        .unwrap();
        self.matchers.push(m);
        self.matchers.len() - 1
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(
            self.coordinator.local_addr().unwrap(),
            self.ca.cert_pem.clone(),
        )
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.client_config()).await.unwrap()
    }

    pub async fn shutdown(self) {
        for m in self.matchers {
            m.shutdown().await;
        }
        self.coordinator.shutdown().await;
    }
}

/// Runs `f` with the test time limit.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the test took too long")
}
