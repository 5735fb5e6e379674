//! Local server processes: starting the peers and Sift clusters a suite needs (pinned to a core
//! with `taskset` when asked), stopping them for sure, and reading what they cost from `/proc`
//! (CPU seconds, peak resident memory).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What a process has cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcStats {
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident set size (VmHWM), bytes.
    pub rss_peak_bytes: u64,
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; `None` when the process is gone.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcStats {
        cpu_s: cpu_ticks(&stat)? as f64 / clock_ticks(),
        rss_peak_bytes: std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| vm_hwm_bytes(&s))
            .unwrap_or(0),
    })
}

/// utime + stime from the text of `/proc/PID/stat` (fields 14 and 15; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmHWM from the text of `/proc/PID/status`, in bytes.
pub fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Current resident set size (VmRSS) of process `pid`, bytes; `None` when it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The process that has a socket bound to local `port` (a TCP listener or a UDP socket), by
/// way of `/proc/net` and the processes' file descriptors.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for (file, tcp) in [
        ("/proc/net/tcp", true),
        ("/proc/net/tcp6", true),
        ("/proc/net/udp", false),
        ("/proc/net/udp6", false),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        inodes.extend(socket_inodes(&text, port, tcp));
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Inodes of the sockets in a `/proc/net/{tcp,udp}` table bound to local `port` (listening
/// ones only for TCP).
pub fn socket_inodes(table: &str, port: u16, tcp: bool) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let listening = !tcp || *f.get(3)? == "0A";
            (local_port == port && listening).then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// Cores to pin servers and the load generator to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pinning {
    /// `taskset -c` list for servers.
    pub servers: Option<String>,
    /// `taskset -c` list for the generator.
    pub generator: Option<String>,
}

impl Pinning {
    /// Servers on core 0 and the generator on core 1 when there are two cores or more and
    /// `taskset` exists; no pinning otherwise.
    pub fn split() -> Pinning {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores >= 2 && which("taskset").is_some() {
            Pinning {
                servers: Some("0".into()),
                generator: Some("1".into()),
            }
        } else {
            Pinning::default()
        }
    }
}

/// A command, run under `taskset -c cpus` when `cpus` is given.
pub fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Finds `name` on the PATH (and in /usr/sbin, where Debian puts some servers).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A server this harness started. Dropping it kills it.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
}

impl ServerProcess {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(name: &str, cmd: Command, log: &Path) -> Result<ServerProcess> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        ServerProcess::spawn_to(name, cmd, out)
    }

    /// Starts `cmd` with its output appended to `log`.
    pub fn spawn_to(name: &str, mut cmd: Command, log: std::fs::File) -> Result<ServerProcess> {
        let err = log.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(ServerProcess {
            name: name.into(),
            child,
        })
    }

    /// Its exit, if it has exited: `Some(code)` (`code` is `None` when a signal ended it).
    pub fn exit_status(&mut self) -> Result<Option<Option<i32>>> {
        Ok(self.child.try_wait()?.map(|s| s.code()))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it has cost so far.
    pub fn stats(&self) -> Option<ProcStats> {
        proc_stats(self.pid())
    }

    /// Fails when the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited early ({status})", self.name),
            None => Ok(()),
        }
    }

    /// Kills it and waits for it to go.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until a TCP listener accepts on `addr` (a server process starting up).
pub fn wait_tcp(addr: &str, server: &mut ServerProcess, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let sock: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    loop {
        if TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        server.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "{} did not accept connections on {addr} within {timeout:?}",
                server.name()
            );
        }
        // Polling an external process: there is nothing to wait on but its port.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` exists (a `sift dev` writes its address file once its ring is whole).
pub fn wait_file(path: &Path, server: &mut ServerProcess, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        server.check_running()?;
        if Instant::now() > deadline {
            return Err(anyhow!(
                "{} did not write {} within {timeout:?}",
                server.name(),
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_text_is_read_right() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(
            vm_hwm_bytes("Name:\tx\nVmHWM:\t   2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1CE8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n   1: 0100007F:1CE8 0100007F:9999 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n";
        assert_eq!(socket_inodes(tcp, 7400, true), vec![4242]);
        assert_eq!(socket_inodes(tcp, 7400, false), vec![4242, 4343]);
        assert!(socket_inodes(tcp, 7401, true).is_empty());
    }

    #[test]
    fn this_process_is_found_by_its_port_and_measured() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
        let s = proc_stats(std::process::id()).unwrap();
        assert!(s.rss_peak_bytes > 0);
    }
}
