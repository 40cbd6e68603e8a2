//! Hostile peers for blit's end-to-end security tests.
//!
//! Everything here speaks blit's wire protocols *from their specification*
//! (`control/proto/blit.proto`, `docs/protocol.md`, `core/src/frame.rs`), not through the
//! engine, so a test can send what no honest blit would:
//!
//! - [`raw::RawClient`]: connects to a daemon's control port and drives a `Session` stream
//!   frame by frame (any `Open`, any listing, any ids, modes, owners and sizes), then connects
//!   the data streams with the session token and writes valid or garbage data-plane frames.
//! - [`daemon::HostileDaemon`]: a scripted gRPC server that the *stock* `blit xfer` client pulls
//!   from (symlink tricks, listings below symlinks, data for what the client needs), or that
//!   never sends `Accept`; [`daemon::SilentListener`] accepts TCP and never answers.
//! - [`process`]: starts the real `blit daemon` binary (killed on drop), runs the stock client
//!   with a deadline, and reads a process's threads and RSS from `/proc`.
//! - [`msg`] and [`frames`]: builders for protocol messages and data-plane frames.
//!
//! The tests in `tests/` are listed, with what each checks, in `TESTS.md`.

pub mod daemon;
pub mod frames;
pub mod msg;
pub mod process;
pub mod raw;

/// Code generated from `control/proto/blit.proto` (client and server).
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("blit.v1");
}

/// The protocol version this suite speaks by default (docs/protocol.md). A [`raw::RawClient`]
/// sends the version its daemon announces instead, so the suite also runs against older builds.
pub const PROTOCOL_VERSION: u32 = 6;

/// Largest control message either side accepts (as the daemon does).
pub const CONTROL_MESSAGE_BYTES_MAX: usize = 64 << 20;

/// `ErrorCode.RESOURCE_EXHAUSTED` (7): "too many sessions / too much memory asked for". A
/// constant, so the expectation holds whatever the generated enum of a given build contains.
pub const ERROR_CODE_RESOURCE_EXHAUSTED: i32 = 7;

/// Whether this process runs as root; root-only tests print `SKIPPED: ...` and return otherwise.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A scratch directory for one test (removed on drop).
pub fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("blit-hostile-{tag}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a scratch directory: {e}"))
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
