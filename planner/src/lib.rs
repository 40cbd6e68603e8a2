//! The planner: what must happen to make a target a copy of a source.
//!
//! Pure throughout — [`diff`] decides per path, [`chunker`] turns needed files into work
//! units, [`hardlink`] groups hard links, [`filter`] selects paths (rsync's include/exclude rules); none of them touch the
//! file system, a clock or a thread. The walk that feeds them and the `openat2`/`statx` layer
//! live with the rest of the I/O in `blitx-storage` (`walk`, `fsys`).

pub mod chunker;
pub mod diff;
pub mod filter;
pub mod hardlink;
pub mod itemize;

pub use chunker::{Chunker, NeededFile, Unit};
pub use diff::{Action, Clear, Decision, DiffOptions, Differ, DirPlan};
pub use filter::{FilterError, Filters};
