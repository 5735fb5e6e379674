//! `sift bench chaos` as an operator would run it, short: a coordinator and three matcher
//! processes under acknowledged load while a matcher joins, one is drained, a drained one is
//! removed and one gets SIGTERM (its lame-duck drain); and with two replicas, while a matcher
//! is SIGKILLed and another SIGSTOPped. The client-side histories must show no acknowledged
//! event missing at any live matching subscription — exact, pattern, filtered and group, in
//! both delivery modes — and none twice past the SDK.

#![allow(clippy::unwrap_used)]

mod common;

use common::run_bounded;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn tempdir(salt: u32) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sift-chaos-test-{}-{salt}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `sift bench chaos` with `args` (bounded), returns its JSON report and stdout.
fn chaos(args: &[&str], salt: u32) -> (serde_json::Value, String, PathBuf) {
    let out = tempdir(salt);
    // A port range of this process's own.
    let port = 30_000 + ((std::process::id() % 400) as u16) * 40 + (salt as u16) * 20;
    let mut c = Command::new(env!("CARGO_BIN_EXE_sift"));
    c.args(["bench", "chaos"])
        .args(args)
        .args(["--port", &port.to_string()])
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "warn");
    let output = run_bounded(c, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "sift bench chaos failed:\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("chaos.json")).unwrap()).unwrap();
    (report, stdout, out)
}

/// No acknowledged event missing or duplicated anywhere, and every kind of subscription
/// in both modes was owed events.
fn assert_nothing_lost(report: &serde_json::Value, stdout: &str) {
    let verdict = &report["verdict"];
    assert_eq!(verdict["missing"], 0, "{stdout}");
    assert_eq!(verdict["duplicates"], 0, "{stdout}");
    assert_eq!(verdict["spurious"], 0, "{stdout}");
    assert!(verdict["acked"].as_u64().unwrap() > 500, "{stdout}");
    assert_eq!(report["ended"], serde_json::json!([]), "{stdout}");
    let units = verdict["units"].as_array().unwrap();
    for unit in [
        "pattern-amo",
        "pattern-alo",
        "filtered-amo",
        "filtered-alo",
        "group-amo",
        "group-alo",
        "exact-t0-amo",
        "exact-t0-alo",
    ] {
        let u = units.iter().find(|u| u["unit"] == unit).unwrap();
        assert!(u["owed"].as_u64().unwrap() > 0, "{unit} was owed nothing");
        assert_eq!(u["missing"], 0, "{unit}: {stdout}");
    }
}

#[test]
fn operators_scaling_under_load_lose_nothing() {
    let (report, stdout, out) = chaos(
        &[
            "--duration",
            "12s",
            "--rate",
            "100",
            "--faults",
            "join,drain,remove,term",
        ],
        0,
    );
    assert_nothing_lost(&report, &stdout);
    // Every fault ran (none skipped for lack of matchers).
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 4);
    for f in faults {
        assert!(!f["detail"].as_str().unwrap().starts_with("skipped"), "{f}");
    }
    let term = faults.iter().find(|f| f["kind"] == "term").unwrap();
    assert!(
        term["detail"]
            .as_str()
            .unwrap()
            .contains("exit Ok(Some(0))"),
        "{term}"
    );
    assert!(out.join("chaos.md").exists() && out.join("chaos-timeline.svg").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn with_two_replicas_a_crashed_or_paused_matcher_loses_no_acknowledged_event() {
    let (report, stdout, out) = chaos(
        &[
            "--duration",
            "12s",
            "--rate",
            "100",
            "--replicas",
            "2",
            "--faults",
            "kill,pause",
        ],
        1,
    );
    assert_nothing_lost(&report, &stdout);
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 2);
    for f in faults {
        assert!(!f["detail"].as_str().unwrap().starts_with("skipped"), "{f}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
