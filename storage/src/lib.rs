//! The storage engine and the two halves of a transfer.
//!
//! - [`source`]: the source half — runs the walk, answers the target's needs by reading files
//!   into the transport's buffers (or handing it file regions), and re-checks every file after
//!   reading so a file that changes mid-copy is reported, never committed.
//! - [`target`]: the target half — diffs each listing against the target directory, creates
//!   directories and links, writes frames into temporary files (preallocated except on tmpfs, holes kept),
//!   renames each file into place only when all of it arrived, applies metadata, and finalizes
//!   (hard links, mirror deletions, directory times).
//! - [`local`]: both halves in one process over the in-process transport (`blit xfer A B`).
//!
//! Remote transfers run one half here and the other in a daemon; the control plane carries the
//! [`blitx_core::session`] messages and a network transport carries the frames.

pub mod chunkset;
#[cfg(feature = "testkit")]
pub mod conformance;
pub mod dircache;
pub mod limits;
pub mod listing;
pub mod local;
pub mod lock;
pub mod meta;
pub mod report;
pub mod root;
pub mod source;
pub mod target;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use report::{Event, EventKind, Progress, Reporter, SourceReport, TargetReport};
pub use root::RootDir;

/// Threads that move file data on each side: the machine's cores, at least two (one can block in
/// I/O while the other works), at most eight (beyond that, threads only contend).
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8)
}
