//! The transfer session's decisions as sans-IO state machines (the model is quinn-proto).
//!
//! Nothing here opens a file, touches a socket, reads the clock or spawns a thread: the shells
//! in `blitx-storage` (threads, files, the transport) and the simulator in `blitx-sim` (an
//! in-memory file system, a faulty transport, virtual time) feed events in and carry out the
//! steps that come back. That is what lets the simulator run thousands of whole transfers from
//! seeds, with faults, and check that the code users run keeps its promises.
//!
//! - [`target`]: the target's per-file protocol — frames admitted or refused, chunks counted,
//!   the commit decision, the one error a failed file reports.
//! - [`source`]: the source's answers protocol — listings awaiting their answer, in order,
//!   bounded, and needs checked against the listing they answer.
//! - [`plan`]: the target's planning — each listing checked ([`listing`]), each entry's
//!   verdict, and what waits for the end: hard links after their leader, `--mirror`
//!   deletions only after a clean session, directory metadata deepest first.
//! - [`resume`]: a partial file's journal, when it may be used, and the checks on an offer.
//! - [`chunkset`]: which chunks of a file have arrived, as runs.
//! - [`error`]: typed per-file failures ([`FileError`]) and protocol violations ([`Violation`]).

pub mod chunkset;
pub mod error;
pub mod idle;
pub mod listing;
pub mod plan;
pub mod resume;
pub mod source;
pub mod target;

pub use error::{Cause, FileError, FileOp, Violation};
