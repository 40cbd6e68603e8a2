//! The planner: what must happen to make a target a copy of a source.
//!
//! The core is pure — [`diff`] decides per path, [`chunker`] turns needed files into work
//! units, [`hardlink`] groups hard links, [`exclude`] matches patterns; none of them touch the
//! file system, a clock or a thread. [`walk`] is the thin I/O shell that feeds the core: a
//! parallel directory walk that streams listings while it is still running.

pub mod chunker;
pub mod diff;
pub mod exclude;
pub mod fsys;
pub mod hardlink;
pub mod walk;

pub use chunker::{Chunker, NeededFile, Unit};
pub use diff::{Action, Clear, Decision, DiffOptions, Differ, DirPlan};
pub use exclude::Excludes;
