//! The chaos harness's cluster: a coordinator and matchers as separate `sift` processes,
//! each of which can be started, stopped (SIGTERM, SIGKILL), paused (SIGSTOP/SIGCONT),
//! drained, removed and restarted; with network namespaces, a matcher can be cut off the
//! network (its veth link down) and healed.
//!
//! Addressing, when namespaces are used: every process in the host namespace listens on
//! `0.0.0.0` and advertises `10.231.0.1` (an address added to the host's loopback, reached
//! from a namespace through its veth pair); a matcher in namespace *k* listens on and
//! advertises `10.231.k.2`, its host side is `10.231.k.1`. Without namespaces everything is
//! on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cluster::{generate_certs, Certs};
use crate::procs::ServerProcess;

/// The host's address when namespaces are used.
const HOST_IP: &str = "10.231.0.1";

/// One network namespace with a veth pair to the host.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    /// The matcher's address inside.
    pub ip: String,
}

impl Netns {
    fn create(tag: &str, k: usize) -> Result<Netns> {
        let name = format!("sift-{tag}-{k}");
        let host_if = format!("sc{tag}h{k}");
        let ns_if = format!("sc{tag}n{k}");
        let ip = format!("10.231.{k}.2");
        let host_ip = format!("10.231.{k}.1");
        let _ = run_ip(&["netns", "del", &name]);
        run_ip(&["netns", "add", &name])?;
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            ip: ip.clone(),
        };
        run_ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        run_ip(&["link", "set", &ns_if, "netns", &name])?;
        run_ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        run_ip(&["link", "set", &host_if, "up"])?;
        let exec = |args: &[&str]| -> Result<()> {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            run_ip(&all)
        };
        exec(&["addr", "add", &format!("{ip}/30"), "dev", &ns_if])?;
        exec(&["link", "set", &ns_if, "up"])?;
        exec(&["link", "set", "lo", "up"])?;
        exec(&["route", "add", "default", "via", &host_ip])?;
        Ok(ns)
    }

    /// Cuts (`false`) or restores (`true`) the namespace's only link.
    pub fn set_link(&self, up: bool) -> Result<()> {
        run_ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_ip(&["link", "del", &self.host_if]);
        let _ = run_ip(&["netns", "del", &self.name]);
    }
}

fn run_ip(args: &[&str]) -> Result<()> {
    // `ip netns exec NS ip …` runs `ip` inside; the first word is always `ip`.
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether network namespaces can be made here (root, `ip netns` works); why not otherwise.
pub fn netns_available() -> Result<(), String> {
    let probe = format!("sift-probe-{}", std::process::id());
    match run_ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = run_ip(&["netns", "del", &probe]);
            Ok(())
        }
        Err(e) => Err(format!("network namespaces are not available here: {e}")),
    }
}

/// One matcher of the cluster.
#[derive(Debug)]
pub struct MatcherProc {
    /// Its ring id.
    pub id: String,
    /// Its port.
    pub port: u16,
    /// The process, while it runs.
    pub process: Option<ServerProcess>,
    /// Its namespace, when it runs in one.
    pub netns: Option<Netns>,
    /// True while SIGSTOPped.
    pub paused: bool,
}

/// The cluster.
#[derive(Debug)]
pub struct ChaosCluster {
    exe: PathBuf,
    dir: PathBuf,
    certs: Certs,
    /// The coordinator's port.
    pub coordinator_port: u16,
    coordinator: Option<ServerProcess>,
    /// By id.
    pub matchers: BTreeMap<String, MatcherProc>,
    next_port: u16,
    next_id: usize,
    /// Namespaces in use (matchers get one each).
    namespaces: bool,
    tag: String,
    host_ip_added: bool,
    /// `net.ipv4.ip_forward` before the harness set it (namespaces talk through the host).
    ip_forward_was: Option<String>,
    /// Extra `sift matcher` flags.
    matcher_flags: Vec<String>,
    /// Extra `sift coordinator` flags.
    coordinator_flags: Vec<String>,
}

impl ChaosCluster {
    /// Starts a coordinator on `port` and `matchers` matchers after it (in namespaces when
    /// `namespaces`).
    pub fn start(
        exe: &Path,
        dir: &Path,
        port: u16,
        matchers: usize,
        namespaces: bool,
        coordinator_flags: Vec<String>,
        matcher_flags: Vec<String>,
    ) -> Result<ChaosCluster> {
        let certs = generate_certs(dir)?;
        let tag = format!("{:x}", std::process::id() % 0xfff);
        let mut c = ChaosCluster {
            exe: exe.to_owned(),
            dir: dir.to_owned(),
            certs,
            coordinator_port: port,
            coordinator: None,
            matchers: BTreeMap::new(),
            next_port: port + 1,
            next_id: 1,
            namespaces,
            tag,
            host_ip_added: false,
            ip_forward_was: None,
            matcher_flags,
            coordinator_flags,
        };
        if namespaces {
            run_ip(&["addr", "add", &format!("{HOST_IP}/32"), "dev", "lo"]).or_else(|e| {
                if e.to_string().contains("File exists") {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            c.host_ip_added = true;
            // The host routes between the namespaces.
            let path = "/proc/sys/net/ipv4/ip_forward";
            let was = std::fs::read_to_string(path).context("cannot read ip_forward")?;
            std::fs::write(path, "1").context("cannot enable ip_forward")?;
            c.ip_forward_was = Some(was.trim().to_owned());
        }
        c.start_coordinator()?;
        for _ in 0..matchers {
            c.add_matcher()?;
        }
        Ok(c)
    }

    fn host(&self) -> &str {
        if self.namespaces {
            HOST_IP
        } else {
            "127.0.0.1"
        }
    }

    /// The coordinator's address for clients.
    pub fn coordinator_addr(&self) -> String {
        format!("{}:{}", self.host(), self.coordinator_port)
    }

    /// The CA clients trust.
    pub fn ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.certs.ca)?)
    }

    /// Starts (or restarts) the coordinator.
    pub fn start_coordinator(&mut self) -> Result<()> {
        let listen = if self.namespaces {
            format!("0.0.0.0:{}", self.coordinator_port)
        } else {
            self.coordinator_addr()
        };
        let mut cmd = Command::new(&self.exe);
        cmd.args(["coordinator", "--listen", &listen])
            .arg("--cert")
            .arg(&self.certs.cert)
            .arg("--key")
            .arg(&self.certs.key)
            .args(&self.coordinator_flags)
            .env("RUST_LOG", "info");
        let log = self.dir.join("coordinator.log");
        let log = append_log(&log)?;
        self.coordinator = Some(ServerProcess::spawn_to("sift coordinator", cmd, log)?);
        Ok(())
    }

    /// SIGKILLs the coordinator.
    pub fn kill_coordinator(&mut self) {
        if let Some(p) = self.coordinator.take() {
            p.stop();
        }
    }

    /// Starts a new matcher; its id.
    pub fn add_matcher(&mut self) -> Result<String> {
        let id = format!("m{}", self.next_id);
        let k = self.next_id;
        self.next_id += 1;
        let port = self.next_port;
        self.next_port += 1;
        let netns = if self.namespaces {
            Some(Netns::create(&self.tag, k)?)
        } else {
            None
        };
        self.matchers.insert(
            id.clone(),
            MatcherProc {
                id: id.clone(),
                port,
                process: None,
                netns,
                paused: false,
            },
        );
        self.start_matcher(&id)?;
        Ok(id)
    }

    /// Starts matcher `id` again (same id, port and namespace).
    pub fn start_matcher(&mut self, id: &str) -> Result<()> {
        let coordinator = self.coordinator_addr();
        let Some(m) = self.matchers.get_mut(id) else {
            bail!("no matcher {id}");
        };
        let (listen, advertise) = match (&m.netns, self.namespaces) {
            (Some(ns), _) => (
                format!("{}:{}", ns.ip, m.port),
                format!("{}:{}", ns.ip, m.port),
            ),
            (None, true) => (
                format!("0.0.0.0:{}", m.port),
                format!("{HOST_IP}:{}", m.port),
            ),
            (None, false) => {
                let a = format!("127.0.0.1:{}", m.port);
                (a.clone(), a)
            }
        };
        let mut cmd = match &m.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.args([
            "matcher",
            "--id",
            id,
            "--listen",
            &listen,
            "--advertise",
            &advertise,
        ])
        .args(["--coordinator", &coordinator])
        .arg("--ca")
        .arg(&self.certs.ca)
        .arg("--cert")
        .arg(&self.certs.cert)
        .arg("--key")
        .arg(&self.certs.key)
        .args(&self.matcher_flags)
        .env("RUST_LOG", "info");
        let log = append_log(&self.dir.join(format!("{id}.log")))?;
        m.process = Some(ServerProcess::spawn_to(
            &format!("sift matcher {id}"),
            cmd,
            log,
        )?);
        m.paused = false;
        Ok(())
    }

    /// Sends `signal` (a `kill` name: TERM, KILL, STOP, CONT) to matcher `id`.
    pub fn signal(&mut self, id: &str, signal: &str) -> Result<()> {
        let m = self.matchers.get_mut(id).context("no such matcher")?;
        let p = m.process.as_ref().context("not running")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(p.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", p.pid());
        }
        m.paused = signal == "STOP";
        Ok(())
    }

    /// Waits (bounded) for matcher `id` to exit by itself (after SIGTERM): its exit code,
    /// `None` if a signal ended it. Past `timeout` it is killed, and that is an error.
    pub async fn wait_exit(&mut self, id: &str, timeout: Duration) -> Result<Option<i32>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = self.matchers.get_mut(id).context("no such matcher")?;
            let Some(p) = m.process.as_mut() else {
                return Ok(None);
            };
            if let Some(code) = p.exit_status()? {
                m.process = None;
                return Ok(code);
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill_matcher(id);
                bail!("matcher {id} did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs matcher `id`.
    pub fn kill_matcher(&mut self, id: &str) {
        if let Some(m) = self.matchers.get_mut(id) {
            if let Some(p) = m.process.take() {
                p.stop();
            }
        }
    }

    /// The matchers running and not paused.
    pub fn running(&self) -> Vec<String> {
        self.matchers
            .values()
            .filter(|m| m.process.is_some() && !m.paused)
            .map(|m| m.id.clone())
            .collect()
    }

    /// Stops everything.
    pub fn stop(mut self) {
        for m in self.matchers.values_mut() {
            if m.paused {
                if let Some(p) = &m.process {
                    let _ = Command::new("kill")
                        .arg("-CONT")
                        .arg(p.pid().to_string())
                        .status();
                }
            }
            if let Some(p) = m.process.take() {
                p.stop();
            }
        }
        self.kill_coordinator();
        self.matchers.clear();
        if self.host_ip_added {
            let _ = run_ip(&["addr", "del", &format!("{HOST_IP}/32"), "dev", "lo"]);
        }
        if let Some(was) = self.ip_forward_was.take() {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", was);
        }
    }
}

fn append_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}
