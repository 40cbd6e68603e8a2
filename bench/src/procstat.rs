//! Reading another process's CPU time from `/proc/<pid>/stat`, and its live children.
//!
//! This is how the harness charges CPU to a long-lived server (the embedded `blit daemon`, the
//! rsync daemon, the iperf3 server) without stopping it: sample utime+stime (its threads, live
//! and exited) plus cutime+cstime (children it has reaped, e.g. rsync's per-connection forks)
//! before and after a run and take the difference. The resolution is one clock tick (usually
//! 10 ms), which the report states; short runs on a fast link need `--repeat`.
//!
//! Owns parsing only; never signals or waits for the process.

use std::path::PathBuf;

/// CPU time counters of one process, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcTimes {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// User time of waited-for children.
    pub cutime_ticks: u64,
    /// System time of waited-for children.
    pub cstime_ticks: u64,
    pub threads: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("malformed /proc stat line: {reason}")]
    Malformed { reason: &'static str },
}

impl ProcTimes {
    /// Ticks of the process and its reaped children together.
    pub fn total_ticks(&self) -> u64 {
        self.utime_ticks + self.stime_ticks + self.cutime_ticks + self.cstime_ticks
    }

    /// CPU seconds spent between `earlier` and `self` (0 if the counters went backwards, which
    /// only happens when the pid was reused).
    pub fn seconds_since(&self, earlier: &ProcTimes, ticks_per_s: u64) -> f64 {
        let ticks = self.total_ticks().saturating_sub(earlier.total_ticks());
        ticks as f64 / ticks_per_s.max(1) as f64
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Result<ProcTimes, StatError> {
    let close = text.rfind(')').ok_or(StatError::Malformed { reason: "no ')' after comm" })?;
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // rest[0] is field 3 (state), so field N is rest[N - 3].
    let field = |n: usize| -> Result<u64, StatError> {
        let s = rest.get(n - 3).ok_or(StatError::Malformed { reason: "too few fields" })?;
        // cutime/cstime are signed in the kernel's format ("long"); they are never negative in
        // practice, but parse them as i64 so a '-' is an error rather than a panic.
        let v: i64 = s.parse().map_err(|_| StatError::Malformed { reason: "non-numeric field" })?;
        u64::try_from(v).map_err(|_| StatError::Malformed { reason: "negative time" })
    };
    Ok(ProcTimes {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        cutime_ticks: field(16)?,
        cstime_ticks: field(17)?,
        threads: field(20)?,
    })
}

/// Reads and parses `/proc/<pid>/stat`.
pub fn read_stat(pid: u32) -> Result<ProcTimes, StatError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = std::fs::read_to_string(&path).map_err(|source| StatError::Read { path, source })?;
    parse_stat(&text)
}

/// The kernel's clock tick rate (`sysconf(_SC_CLK_TCK)`, from the auxiliary vector).
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// Live children of `pid` (from `/proc/<pid>/task/*/children`). Empty when the kernel lacks
/// that file (CONFIG_PROC_CHILDREN) or the process is gone.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(text.split_ascii_whitespace().filter_map(|s| s.parse::<u32>().ok()));
        }
    }
    out
}

/// Waits (polling every 5 ms, at most `timeout`) until `pid` has no live children, so a forking
/// server's per-connection child has been reaped and its CPU shows up in cutime/cstime.
/// Returns false on timeout.
pub fn wait_children_gone(pid: u32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if children(pid).is_empty() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line from a `blit daemon` (fields 14..17 = 1523 411 7 3, 20 = 9 threads).
    const LINE: &str = "4242 (blit) S 1 4242 4242 0 -1 4194560 2345 0 0 0 1523 411 7 3 20 0 9 0 \
                        123456 1234567168 4321 18446744073709551615 1 1 0 0 0 0 0 4096 17003 0 0 \
                        0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn parses_the_time_fields() {
        let t = parse_stat(LINE).unwrap();
        assert_eq!(
            t,
            ProcTimes {
                utime_ticks: 1523,
                stime_ticks: 411,
                cutime_ticks: 7,
                cstime_ticks: 3,
                threads: 9
            }
        );
        assert_eq!(t.total_ticks(), 1944);
    }

    #[test]
    fn comm_with_spaces_and_parens_does_not_shift_fields() {
        let line = LINE.replace("(blit)", "(we(ird) n) ame)");
        assert_eq!(parse_stat(&line).unwrap().utime_ticks, 1523);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("1 (x) S 1 2 3").is_err());
        assert!(parse_stat(&LINE.replace(" 1523 ", " abc ")).is_err());
        assert!(parse_stat(&LINE.replace(" 1523 ", " -5 ")).is_err());
    }

    #[test]
    fn deltas_are_in_seconds_and_never_negative() {
        let a = ProcTimes { utime_ticks: 100, stime_ticks: 50, ..Default::default() };
        let b = ProcTimes { utime_ticks: 130, stime_ticks: 60, cutime_ticks: 10, ..a };
        assert!((b.seconds_since(&a, 100) - 0.5).abs() < 1e-12);
        assert_eq!(a.seconds_since(&b, 100), 0.0);
    }

    #[test]
    fn reads_our_own_stat() {
        let t = read_stat(std::process::id()).unwrap();
        assert!(t.threads >= 1);
        assert!(clock_ticks_per_second() >= 1);
    }
}
