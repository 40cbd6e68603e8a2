//! Exit codes (documented in README.md; stable for scripts).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything was transferred.
    Ok,
    /// The transfer could not run or stopped (bad arguments after parsing, I/O failure of the
    /// whole transfer, lost peer).
    Fatal,
    /// Command-line usage error (clap uses 2 as well).
    Usage,
    /// The requested transport is not available on one side.
    TransportUnavailable,
    /// Some files failed; the rest was transferred (rsync uses 23 for this).
    Partial,
    /// The data plane stalled (no progress within the stall timeout).
    Stalled,
    /// Interrupted by SIGINT/SIGTERM; temporary files were removed.
    Interrupted,
}

impl From<Exit> for i32 {
    fn from(e: Exit) -> i32 {
        match e {
            Exit::Ok => 0,
            Exit::Fatal => 1,
            Exit::Usage => 2,
            Exit::TransportUnavailable => 3,
            Exit::Partial => 23,
            Exit::Stalled => 30,
            Exit::Interrupted => 130,
        }
    }
}

/// A value that parsed but does not fit, or a filter-file mistake (exit code 2, like clap's own
/// usage errors): found before anything is transferred, never clamped silently.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
