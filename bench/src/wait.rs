//! `wait4(2)`: reaping one child and getting *its* resource usage.
//!
//! std's `Child::wait` drops the rusage, and `getrusage(RUSAGE_CHILDREN)` mixes every child
//! reaped so far; `wait4` gives exactly the one process (plus the descendants it reaped itself,
//! e.g. both halves of `tar | tar` under `sh -c`). This is the crate's only `unsafe` file.

#![allow(unsafe_code)]

use std::io;

/// How a reaped child ended, and what it cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reaped {
    /// Exit code, `None` when a signal ended the process.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
}

fn seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Blocks until child `pid` exits and reaps it. The caller must own `pid` (a child it spawned
/// and has not reaped); after this returns, std's `Child` for it must not be waited on again.
pub fn wait4(pid: u32) -> io::Result<Reaped> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain C struct of integers and timevals, for which all-zero bytes
    // are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable, properly aligned locals that outlive
        // the call; wait4 writes only within them.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(Reaped {
        exit_code,
        signal,
        user_s: seconds(usage.ru_utime),
        sys_s: seconds(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}

#[cfg(test)]
// The children are reaped by `wait4`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
mod tests {
    use super::*;

    #[test]
    fn reaps_exit_code_and_cpu_time_of_one_child() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 7"])
            .spawn()
            .unwrap();
        let r = wait4(child.id()).unwrap();
        assert_eq!(r.exit_code, Some(7));
        assert!(r.user_s + r.sys_s > 0.0, "{r:?}");
        assert!(r.max_rss_kib > 0);
    }

    #[test]
    fn reports_the_killing_signal() {
        let child =
            std::process::Command::new("/bin/sh").args(["-c", "kill -9 $$"]).spawn().unwrap();
        let r = wait4(child.id()).unwrap();
        assert_eq!((r.exit_code, r.signal), (None, Some(9)));
    }
}
