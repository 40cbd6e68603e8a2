//! Types every blit component shares.
//!
//! This crate owns the vocabulary of a transfer: validated relative paths ([`path`]), manifest
//! entries ([`manifest`]), the session messages between the source and target halves
//! ([`session`]), the data-plane frame format ([`frame`]) and the one validation of received
//! frames, the bounded pool of aligned buffers ([`pool`]), the NUMA [`placer`] hook, the
//! [`transport`] seam (frames: [`transport`]; set-up: [`plane`]; cancellation and the first
//! failure: [`cancel`]) with its in-process implementation, bandwidth limits ([`rate`]: a token
//! bucket and the pacing wrappers of a transport's halves), and the frame-level conformance
//! suite every backend runs ([`frame_suite`]). It performs no file or network I/O of its own (the pool maps anonymous
//! memory, nothing else).
#![deny(unsafe_code)]

pub mod cancel;
pub mod filter;
pub mod frame;
pub mod frame_suite;
pub mod itemize;
pub mod manifest;
pub mod path;
pub mod placer;
pub mod plane;
#[allow(unsafe_code)]
pub mod pool;
pub mod rate;
pub mod session;
pub mod transport;

pub use frame::{FrameHeader, FrameKind};
pub use manifest::{Entry, EntryKind, FileId};
pub use path::RelPath;
pub use pool::{BufLease, BufferPool};
