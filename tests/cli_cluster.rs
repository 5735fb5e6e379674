//! The `sift` binary as users run it: `sift dev` in a child process, then `sift ring`,
//! `sift admin nodes`, `sift sub` and `sift pub` finding it through its data directory.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{lines, sift, start_dev, Kill};

#[test]
fn dev_cluster_pub_sub_ring_admin() {
    let dir = std::env::temp_dir().join(format!("sift-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A port range of its own, so parallel runs do not collide.
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let _dev = start_dev(&dir, &["--matchers", "2", "--port", &port.to_string()]);

    let ring = sift(&dir).arg("ring").output().unwrap();
    let ring = String::from_utf8(ring.stdout).unwrap();
    assert!(
        ring.contains("m1") && ring.contains("m2") && ring.contains('%'),
        "{ring}"
    );
    let nodes =
        String::from_utf8(sift(&dir).args(["admin", "nodes"]).output().unwrap().stdout).unwrap();
    assert!(nodes.contains("alive"), "{nodes}");

    let mut sub = sift(&dir)
        .args(["sub", "orders.>", "--filter", "price > 10", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sub_out = lines(&mut sub);
    let sub = Kill(sub);
    // Publish until the subscriber is in place and has printed both matching events.
    let mut printed = vec![];
    for round in 0.. {
        assert!(round < 100, "no notification arrived");
        let attrs = format!(
            "{{\"price\": {}, \"round\": {round}}}",
            5 + 10 * (round % 2)
        );
        let status = sift(&dir)
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
        while let Ok(line) = sub_out.recv_timeout(Duration::from_millis(200)) {
            printed.push(line);
        }
        if printed.len() >= 2 {
            break;
        }
    }
    let mut sub = sub;
    let status = sub.0.wait().unwrap();
    assert!(status.success(), "sift sub exits after --count");
    for line in &printed {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["topic"], "orders.eu");
        assert_eq!(v["payload"], "hi");
        assert!(v["attrs"]["price"].as_i64().unwrap() > 10, "{line}");
        assert!(v["handle"].is_string() && v["id"].is_string());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_cluster_the_cli_says_how_to_start_one() {
    let dir = std::env::temp_dir().join(format!("sift-cli-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = sift(&dir).args(["pub", "t"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("sift dev"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
