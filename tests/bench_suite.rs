//! `sift bench` as users run it: a small suite against a `sift dev` it starts itself, and a
//! suite whose run fails — in both, every process the suite started is gone afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use common::run_bounded;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A port offset of this test process's own, so tests and parallel runs do not collide.
fn offset(salt: u16) -> u16 {
    // sift dev takes its port and the next three; salts 10 apart keep tests apart.
    10_000 + ((std::process::id() % 500) as u16) * 20 + salt * 10
}

fn suite(out: &Path, extra: &[&str], salt: u16) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sift"));
    c.args(["bench", "suite", "--out"])
        .arg(out)
        .args(["--targets", "sift", "--reps", "1", "--no-pin"])
        .args(["--port-offset", &offset(salt).to_string()])
        .args(extra);
    run_bounded(c, Duration::from_secs(120))
}

/// Every process listed in `processes.txt` has exited.
fn assert_all_stopped(out: &Path) {
    let list = std::fs::read_to_string(out.join("processes.txt")).unwrap();
    let pids: Vec<u32> = list
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(!pids.is_empty(), "the suite recorded no process");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there: {list}"
        );
    }
}

#[test]
fn a_small_suite_measures_sift_and_writes_its_reports() {
    let dir = tempdir("ok");
    let out = suite(&dir, &["--scenarios", "latency", "--duration", "1s"], 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let results = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{results}");
    let r = &lines[0];
    assert_eq!(r["scenario"], "latency");
    assert_eq!(r["target"], "sift");
    let s = &r["summary"];
    // 10,000 events/s for a second to one subscriber, every one delivered.
    assert!(s["published"].as_u64().unwrap() >= 9_000, "{r}");
    assert_eq!(s["delivered"], s["expected"], "{r}");
    assert_eq!(s["delivery_ratio"].as_f64().unwrap(), 1.0);
    assert!(s["latency_p50_us"].as_u64().unwrap() > 0);
    // The server was a local process: its CPU and memory are in the line.
    assert!(r["server_cpu_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["server_rss_peak_bytes"].as_u64().unwrap() > 1 << 20,
        "{r}"
    );
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("## latency") && md.contains("| sift | 1 |"),
        "{md}"
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg"), "no plot in the HTML report");
    assert_all_stopped(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_run_is_reported_and_leaves_no_process_behind() {
    let dir = tempdir("fail");
    // A payload too small for the timing stamp: the server starts, the run fails.
    let out = suite(
        &dir,
        &[
            "--scenarios",
            "latency",
            "--duration",
            "1s",
            "--payload",
            "8",
        ],
        1,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 run(s) failed"), "{stderr}");
    let failures = std::fs::read_to_string(dir.join("failures.jsonl")).unwrap();
    assert!(
        failures.contains("--payload must be at least 32"),
        "{failures}"
    );
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("Failed runs"), "{md}");
    assert_all_stopped(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sift-bench-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
