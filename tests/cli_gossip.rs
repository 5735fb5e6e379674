//! The `sift` binary in gossip mode as users run it: `sift dev --gossip` in a child process,
//! `sift sub` on one node and `sift pub` on another, `sift admin stats` on each.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{lines, sift, start_dev, Kill};

#[test]
fn dev_gossip_sub_on_one_node_pub_on_another() {
    let dir = std::env::temp_dir().join(format!("sift-cli-gossip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A port range of its own (cli_cluster uses 20,000–39,999).
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let _dev = start_dev(
        &dir,
        &["--gossip", "--matchers", "3", "--port", &port.to_string()],
    );
    let node = |i: u16| format!("127.0.0.1:{}", port + i);

    // The subscriber on the first node (found through the data directory).
    let mut sub = sift(&dir)
        .args(["sub", "orders.>", "--filter", "price > 10", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sub_out = lines(&mut sub);
    let mut sub = Kill(sub);
    // Publish on the third node until the subscription has spread there and the
    // notification arrives.
    let mut printed = None;
    for round in 0.. {
        assert!(round < 100, "no notification arrived");
        let attrs = format!("{{\"price\": 12.5, \"round\": {round}}}");
        let status = sift(&dir)
            .env("SIFT_COORDINATOR", node(2))
            .args([
                "pub",
                "orders.eu",
                "--attrs",
                &attrs,
                "--payload",
                "hi",
                "--ack",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        if let Ok(line) = sub_out.recv_timeout(Duration::from_millis(200)) {
            printed = Some(line);
            break;
        }
    }
    let status = sub.0.wait().unwrap();
    assert!(status.success(), "sift sub exits after --count");
    let v: serde_json::Value = serde_json::from_str(&printed.unwrap()).unwrap();
    assert_eq!(v["topic"], "orders.eu");
    assert_eq!(v["payload"], "hi");

    // Every node's counters: three members, and the third node forwarded to the first.
    let mut forwarded = 0;
    for i in 0..3 {
        let out = sift(&dir)
            .args(["admin", "stats", "--node", &node(i)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["members"], 2, "node {i}: {v}");
        forwarded += v["forwarded"].as_u64().unwrap();
    }
    assert!(forwarded >= 1);
}
