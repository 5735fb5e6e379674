//! Helpers for tests that run the `sift` binary as users do.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

/// How long a child may take to come up or answer.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The `sift` binary run in `dir`, with no cluster settings inherited from the environment.
pub fn sift(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sift"));
    c.current_dir(dir)
        .env_remove("SIFT_COORDINATOR")
        .env_remove("SIFT_CA")
        .env_remove("SIFT_DATA_DIR");
    c
}

/// Lines of a child's stdout, read on a thread.
pub fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills the child when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sift dev ARGS` in `dir` and waits until it says it is up; the child dies with the
/// returned guard.
pub fn start_dev(dir: &Path, args: &[&str]) -> Kill {
    let mut dev = sift(dir)
        .arg("dev")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(&mut dev);
    let dev = Kill(dev);
    loop {
        let line = out.recv_timeout(LIMIT).expect("sift dev did not come up");
        if line.contains("stop with Ctrl-C") {
            return dev;
        }
    }
}

/// Runs a command to completion, killing it past `limit`.
pub fn run_bounded(mut c: Command, limit: Duration) -> std::process::Output {
    // A process group of its own, so a timeout can stop the suite and what it started.
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!("{c:?} took longer than {limit:?}");
        }
    }
}
