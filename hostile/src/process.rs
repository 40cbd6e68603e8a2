//! The real binaries: `blit daemon` started on 127.0.0.1 (killed on drop), the stock
//! `blit xfer` run with a deadline, and a process's threads and memory from `/proc`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a daemon may take to print its address.
const DAEMON_START_WAIT: Duration = Duration::from_secs(15);
/// Daemon stderr lines kept for diagnostics.
const STDERR_LINES_KEPT: usize = 20_000;

/// The `blit` binary: `$BLIT_BIN`, else `$CARGO_TARGET_DIR/debug/blit`, else
/// `target/debug/blit` of this workspace. Panics with a hint when it is missing.
pub fn blit_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BLIT_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug/blit"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/blit"));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "the blit binary is missing (looked at {candidates:?}): run `cargo build -p blitx-cli` \
         first, or set BLIT_BIN"
    );
}

/// A `blit daemon` process on 127.0.0.1 (port chosen by the kernel), killed on drop.
#[derive(Debug)]
pub struct DaemonProc {
    pub child: Child,
    /// `"127.0.0.1:PORT"`.
    pub addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl DaemonProc {
    /// `blit daemon --root ROOT --listen 127.0.0.1:0 EXTRA...`; `Err` (with the daemon's stderr)
    /// when it exits or says nothing before listening, e.g. on a flag this build lacks.
    pub fn start(root: &Path, extra: &[&str]) -> Result<DaemonProc, String> {
        Self::start_with(root, extra, None)
    }

    /// Like [`DaemonProc::start`], with the daemon's soft RLIMIT_NOFILE set to `soft_nofile`
    /// (the hard limit is left alone), as a service manager would (systemd's default is 1024).
    pub fn start_with(
        root: &Path,
        extra: &[&str],
        soft_nofile: Option<u64>,
    ) -> Result<DaemonProc, String> {
        let mut c = match soft_nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("ulimit -Sn {n} && exec \"$0\" \"$@\"")).arg(blit_bin());
                c
            }
            None => Command::new(blit_bin()),
        };
        c.arg("daemon").arg("--root").arg(root).args(["--listen", "127.0.0.1:0"]).args(extra);
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // Its last lines should say what went wrong, not walk a backtrace.
        c.env_remove("RUST_LOG").env("RUST_BACKTRACE", "0");
        // Debugging a test: HOSTILE_DAEMON_LOG=debug gives the daemon that RUST_LOG filter.
        if let Some(filter) = std::env::var_os("HOSTILE_DAEMON_LOG") {
            c.env("RUST_LOG", filter);
        }
        let mut child = c.spawn().map_err(|e| format!("cannot start the daemon: {e}"))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no stderr pipe".into());
        };
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (addr_tx, addr_rx) = std_mpsc::channel::<String>();
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(a) = line.strip_prefix("blit daemon listening on ") {
                        let _ = addr_tx.send(a.trim().to_string());
                    }
                    let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
                    if l.len() < STDERR_LINES_KEPT {
                        l.push(line);
                    }
                }
            });
        }
        match addr_rx.recv_timeout(DAEMON_START_WAIT) {
            Ok(addr) => Ok(DaemonProc { child, addr, stderr: lines }),
            Err(_) => {
                let _ = child.kill();
                let status = match child.wait() {
                    Ok(s) => describe_status(&s),
                    Err(e) => e.to_string(),
                };
                let text = lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                Err(format!(
                    "the daemon did not start ({status}); `blit daemon {}` said: {text}",
                    extra.join(" ")
                ))
            }
        }
    }

    /// `blit://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("blit://{}/{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (`false` once it exited or was killed).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How it exited, if it did.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `Threads:` of /proc/PID/status.
    pub fn threads(&self) -> Option<u64> {
        proc_status(self.pid(), "Threads")
    }

    /// `VmRSS:` of /proc/PID/status, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status(self.pid(), "VmRSS")
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    pub fn fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).ok().map(|d| d.count())
    }

    /// The daemon's stderr so far (its last `n` lines).
    pub fn stderr_tail(&self, n: usize) -> String {
        let l = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        l[l.len().saturating_sub(n)..].join("\n")
    }

    /// Describes the process's state for assertion messages.
    pub fn describe(&mut self) -> String {
        let state = match self.exit_status() {
            Some(s) => format!("exited: {}", describe_status(&s)),
            None => "running".into(),
        };
        format!("daemon {} ({state}); stderr tail:\n{}", self.addr, self.stderr_tail(15))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A numeric field of /proc/PID/status (the first number after `NAME:`).
pub fn proc_status(pid: u32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{name}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn describe_status(s: &ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// It ran past its deadline and was killed.
    pub timed_out: bool,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn describe(&self) -> String {
        let how = if self.timed_out {
            format!("still running after {:.1} s (killed)", self.elapsed.as_secs_f64())
        } else {
            match &self.status {
                Some(s) => {
                    format!("{} after {:.1} s", describe_status(s), self.elapsed.as_secs_f64())
                }
                None => "unknown status".into(),
            }
        };
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(12)..].join("\n")
        };
        format!("{how}; stderr:\n{}\nstdout:\n{}", tail(&self.stderr), tail(&self.stdout))
    }
}

/// A command started with piped stdout/stderr (drained in the background).
#[derive(Debug)]
pub struct Running {
    pub child: Child,
    started: Instant,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

fn drain(r: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        Running { child, started, out, err }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Waits at most `timeout` (from now), killing the process after that.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break None,
            }
        };
        let elapsed = self.started.elapsed();
        let join =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        Finished {
            status,
            stdout: join(self.out.take()),
            stderr: join(self.err.take()),
            elapsed,
            timed_out,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `blit xfer ARGS... --no-progress` as a command (RUST_LOG cleared).
pub fn xfer_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(blit_bin());
    c.arg("xfer").args(args).arg("--no-progress").env_remove("RUST_LOG").env("RUST_BACKTRACE", "0");
    c
}

/// Runs `blit xfer ARGS... --no-progress`, killing it after `timeout`.
pub fn xfer(args: &[&str], timeout: Duration) -> Finished {
    Running::spawn(xfer_cmd(args)).wait(timeout)
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_else(|| panic!("not UTF-8: {}", p.display()))
}
