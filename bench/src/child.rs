//! Running one measured command: a gated start, counters, wall clock, `wait4` usage, captured
//! output, and a timeout.
//!
//! Every measured command — `blit xfer`, `cp -a`, `tar | tar`, an rsync or iperf3 client — runs
//! the same way, so the numbers are comparable:
//!
//! 1. `sh -c 'read -r _ && exec "$@"' ARGV…` is spawned with its stdin on a pipe, so it sits
//!    blocked before the tool exists;
//! 2. counters are attached to that pid with `enable_on_exec` and `inherit` — they start at
//!    the `exec` and follow every thread and child the tool creates, and the shell's own start
//!    is not counted;
//! 3. the clock starts and one line on stdin releases the gate;
//! 4. `wait4` reaps the process: its own CPU time (user and system) and peak RSS;
//! 5. the clock stops.
//!
//! The wall time therefore includes the tool's start-up and (for remote transfers) connection
//! set-up, as a user would experience it; `blit xfer --json` also reports its own seconds.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::counters::{Attached, CounterSupport, CounterValues, Start};
use crate::wait::wait4;

/// Output kept per stream; the rest is read and dropped so the child never blocks on a pipe.
const CAPTURE_BYTES_MAX: usize = 16 << 20;

/// The result of one measured command.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Exit code, `None` when a signal ended the process.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
    pub counters: CounterValues,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Measured {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// User + system CPU seconds.
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    /// The last few lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let from = lines.len().saturating_sub(3);
        lines[from..].join(" / ")
    }

    /// `exit 3: <stderr tail>`-style description of a failure.
    pub fn failure(&self) -> String {
        let how = match (self.timed_out, self.exit_code, self.signal) {
            (true, _, _) => "timed out".to_string(),
            (_, Some(c), _) => format!("exit {c}"),
            (_, None, Some(s)) => format!("killed by signal {s}"),
            _ => "ended abnormally".to_string(),
        };
        let tail = self.stderr_tail();
        if tail.is_empty() { how } else { format!("{how}: {tail}") }
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut r) = r else { return kept };
        let mut buf = [0u8; 64 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = CAPTURE_BYTES_MAX.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        kept
    })
}

/// Runs `argv` (program first) measured, killing it after `timeout`. `env` is added to the
/// inherited environment (RUST_LOG is removed so logs do not slow the tool down).
pub fn run_measured(
    argv: &[OsString],
    env: &[(&str, &str)],
    support: &CounterSupport,
    timeout: Duration,
) -> std::io::Result<Measured> {
    if argv.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"));
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"read -r _ || exit 127; exec "$@""#)
        .arg("blit-bench-gate")
        .args(argv)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let mut counters = Attached::attach(support, pid, Start::OnExec);
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    // A pidfd names this process even after it is reaped, so the watchdog can never signal a
    // recycled pid.
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&child),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    let timed_out = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let timed_out = Arc::clone(&timed_out);
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout)
                && let Some(fd) = &pidfd
            {
                timed_out.store(true, Ordering::Release);
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
        })
    };
    let start = Instant::now();
    let released = child.stdin.take().map(|mut s| s.write_all(b"go\n"));
    let reaped = wait4(pid);
    let wall_s = start.elapsed().as_secs_f64();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let reaped = reaped?;
    // A failed gate write means the shell exited before reading it; the exit status that
    // wait4 returned already says why, so the write error adds nothing.
    drop(released);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Measured {
        exit_code: reaped.exit_code,
        signal: reaped.signal,
        timed_out: timed_out.load(Ordering::Acquire),
        wall_s,
        user_s: reaped.user_s,
        sys_s: reaped.sys_s,
        max_rss_kib: reaped.max_rss_kib,
        counters: counters.read(),
        stdout,
        stderr,
    })
}

/// `argv` from string-like parts.
pub fn argv<I, S>(parts: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    parts.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn support() -> CounterSupport {
        CounterSupport::probe()
    }

    #[test]
    fn captures_output_exit_code_and_time() {
        let m = run_measured(
            &argv(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
            &[],
            &support(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(m.exit_code, Some(3));
        assert_eq!(m.stdout, b"out\n");
        assert_eq!(m.stderr_tail(), "err");
        assert!(!m.success());
        assert!(m.failure().starts_with("exit 3"));
        assert!(m.wall_s > 0.0);
    }

    #[test]
    fn arguments_pass_through_unchanged() {
        let m = run_measured(
            &argv(["printf", "%s|", "a b", "$HOME", "'q'"]),
            &[],
            &support(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&m.stdout), "a b|$HOME|'q'|");
    }

    #[test]
    fn a_hung_command_is_killed_at_the_timeout() {
        let m = run_measured(&argv(["sleep", "30"]), &[], &support(), Duration::from_millis(200))
            .unwrap();
        assert!(m.timed_out);
        assert_eq!(m.signal, Some(9));
        assert!(m.wall_s < 10.0);
    }

    #[test]
    fn software_counters_cover_the_tool_when_the_kernel_allows() {
        let s = support();
        let m = run_measured(
            &argv(["/bin/sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"]),
            &[],
            &s,
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(m.success());
        if s.software_available {
            assert!(m.counters.task_clock_ns.unwrap_or(0) > 0, "{:?}", m.counters);
        } else {
            assert_eq!(m.counters.task_clock_ns, None);
        }
    }
}
