//! Long-lived server processes the harness starts and charges CPU to: the embedded
//! `blit daemon`, an rsync daemon, an iperf3 server.
//!
//! Owns starting them on loopback (port 0 or a free port), knowing when they listen, sampling
//! their CPU (`/proc/<pid>/stat`) and counters around each run, and stopping them (SIGTERM,
//! then SIGKILL) — also on drop, so an error never leaves a daemon behind.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::counters::{Attached, CounterSupport, CounterValues, Start};
use crate::procstat::{self, ProcTimes};

/// Lines of a server's stderr kept for error messages.
const STDERR_LINES_KEPT: usize = 20;
/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a run's server-side work may take to wind down after the client exits.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A port that was free a moment ago on 127.0.0.1 (servers that cannot take port 0 need one).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// Whether something listens on TCP `port` (any address), from /proc/net/tcp and tcp6.
pub fn is_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .any(|f| std::fs::read_to_string(f).map(|t| listening_in(&t, port)).unwrap_or(false))
}

/// Parses the text of /proc/net/tcp{,6}: a `local_address` ending in `:PORT` (hex) with state
/// 0A (LISTEN).
fn listening_in(text: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_ascii_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

/// CPU and counters of a server at one moment.
#[derive(Debug, Clone, Copy)]
pub struct ServerSample {
    pub times: ProcTimes,
    pub counters: CounterValues,
}

/// What a server cost over one run.
#[derive(Debug, Clone, Copy)]
pub struct ServerCost {
    pub cpu_s: f64,
    pub counters: CounterValues,
}

/// A running server process.
pub struct ServerProcess {
    pub name: String,
    child: Option<Child>,
    pid: u32,
    counters: Attached,
    stderr: Arc<Mutex<VecDeque<String>>>,
    ticks_per_s: u64,
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess").field("name", &self.name).field("pid", &self.pid).finish()
    }
}

impl ServerProcess {
    /// Spawns `argv`, keeps draining its stderr (last lines kept), sends each stderr line to
    /// `lines` until it is dropped, and attaches counters.
    pub fn spawn(
        name: &str,
        argv: &[OsString],
        support: &CounterSupport,
        lines: Option<std::sync::mpsc::Sender<String>>,
    ) -> anyhow::Result<ServerProcess> {
        let (program, args) = argv.split_first().context("empty server command")?;
        let mut child = Command::new(program)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.to_string_lossy()))?;
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let keep = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut lines = lines;
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Some(tx) = &lines
                        && tx.send(line.clone()).is_err()
                    {
                        lines = None;
                    }
                    let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
                    if k.len() == STDERR_LINES_KEPT {
                        k.pop_front();
                    }
                    k.push_back(line);
                }
            });
        }
        let counters = Attached::attach(support, pid, Start::Now);
        Ok(ServerProcess {
            name: name.to_string(),
            child: Some(child),
            pid,
            counters,
            stderr,
            ticks_per_s: procstat::clock_ticks_per_second(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines the server wrote on stderr, joined.
    pub fn stderr_tail(&self) -> String {
        let k = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        k.iter().rev().take(3).rev().cloned().collect::<Vec<_>>().join(" / ")
    }

    /// Fails if the server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child
            && let Some(st) = c.try_wait()?
        {
            self.child = None;
            bail!("{} exited ({st}): {}", self.name, self.stderr_tail());
        }
        Ok(())
    }

    /// Waits until the server listens on `port`.
    pub fn wait_listening(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !is_listening(port) {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("{} did not listen on port {port} within {START_TIMEOUT:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn sample(&mut self) -> anyhow::Result<ServerSample> {
        let times = procstat::read_stat(self.pid)
            .with_context(|| format!("cannot sample {} CPU time", self.name))?;
        Ok(ServerSample { times, counters: self.counters.read() })
    }

    /// After a run: waits (bounded) until per-connection children are reaped and per-session
    /// threads have exited, so their CPU is in the next sample, then returns the cost since
    /// `before`.
    pub fn cost_since(&mut self, before: &ServerSample) -> anyhow::Result<ServerCost> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        procstat::wait_children_gone(self.pid, SETTLE_TIMEOUT);
        loop {
            let now = self.sample()?;
            if now.times.threads <= before.times.threads || Instant::now() >= deadline {
                return Ok(ServerCost {
                    cpu_s: now.times.seconds_since(&before.times, self.ticks_per_s),
                    counters: now.counters.since(&before.counters),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, up to 5 s for a clean exit, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The embedded `blit daemon` on 127.0.0.1, port chosen by the kernel.
pub fn start_blit_daemon(
    blit: &Path,
    root: &Path,
    numa: Option<&str>,
    rdma_device: Option<&str>,
    support: &CounterSupport,
) -> anyhow::Result<(ServerProcess, String)> {
    let mut argv: Vec<OsString> = vec![
        blit.into(),
        "daemon".into(),
        "--root".into(),
        root.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    if let Some(n) = numa {
        argv.push("--numa".into());
        argv.push(n.into());
    }
    if let Some(d) = rdma_device {
        argv.push("--rdma-device".into());
        argv.push(d.into());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut server = ServerProcess::spawn("blit daemon", &argv, support, Some(tx))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                if let Some(addr) = line.trim().strip_prefix("blit daemon listening on ") {
                    // Dropping `rx` stops the forwarding; stderr is still drained.
                    return Ok((server, addr.trim().to_string()));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                server.check_alive()?;
                if left.is_zero() {
                    bail!("blit daemon did not report its address within {START_TIMEOUT:?}");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                server.check_alive()?;
                bail!("blit daemon closed stderr before listening: {}", server.stderr_tail());
            }
        }
    }
}

/// An rsync daemon on 127.0.0.1 serving `[push]` (writable, `push_dir`) and `[datasets]`
/// (read-only, `datasets_dir`), configured in `conf_dir`.
pub fn start_rsync_daemon(
    conf_dir: &Path,
    push_dir: &Path,
    datasets_dir: &Path,
    support: &CounterSupport,
) -> anyhow::Result<(ServerProcess, u16)> {
    std::fs::create_dir_all(conf_dir)?;
    std::fs::create_dir_all(push_dir)?;
    let port = free_port()?;
    let conf = conf_dir.join("rsyncd.conf");
    // As root, rsync would switch to `nobody` for module access, and then fail to write our
    // root-owned directories and to set owners: stay root, as blit's daemon does.
    let mut text = String::from("# written by blit bench\nuse chroot = no\nmax connections = 8\n");
    if rustix::process::geteuid().is_root() {
        // Module defaults: as root, rsync would otherwise switch to `nobody` and then fail to
        // write our root-owned directories and to set owners. Stay root, as blit's daemon does.
        text.push_str("uid = 0\ngid = 0\n");
    }
    text.push_str(&format!(
        "[push]\n    path = {}\n    read only = no\n[datasets]\n    path = {}\n    read only = yes\n",
        push_dir.display(),
        datasets_dir.display(),
    ));
    std::fs::write(&conf, text).context("cannot write rsyncd.conf")?;
    let argv: Vec<OsString> = vec![
        "rsync".into(),
        "--daemon".into(),
        "--no-detach".into(),
        "--address".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string().into(),
        "--config".into(),
        conf.into(),
        "--log-file".into(),
        conf_dir.join("rsyncd.log").into(),
    ];
    let mut server = ServerProcess::spawn("rsync daemon", &argv, support, None)?;
    server.wait_listening(port)?;
    Ok((server, port))
}

/// An `iperf3 -s` on 127.0.0.1.
pub fn start_iperf3_server(support: &CounterSupport) -> anyhow::Result<(ServerProcess, u16)> {
    let port = free_port()?;
    let argv: Vec<OsString> = vec![
        "iperf3".into(),
        "-s".into(),
        "-B".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string().into(),
    ];
    let mut server = ServerProcess::spawn("iperf3 server", &argv, support, None)?;
    server.wait_listening(port)?;
    Ok((server, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2352 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:A0C4 0100007F:2352 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1\n";

    #[test]
    fn listening_ports_are_found_and_connections_are_not() {
        assert!(listening_in(TCP, 0x2352));
        assert!(!listening_in(TCP, 0xA0C4), "an established socket is not a listener");
        assert!(!listening_in(TCP, 80));
    }

    #[test]
    fn a_real_listener_is_seen() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        assert!(is_listening(l.local_addr().unwrap().port()));
    }
}
