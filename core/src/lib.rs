//! Types every blit component shares.
//!
//! This crate owns the vocabulary of a transfer: validated relative paths ([`path`]), manifest
//! entries ([`manifest`]), the session messages between the source and target halves
//! ([`session`]), the data-plane frame format ([`frame`]), the bounded pool of aligned buffers
//! ([`pool`]), the NUMA [`placer`] hook and the [`transport`] trait with its in-process
//! implementation. It performs no file or network I/O of its own (the pool maps anonymous
//! memory, nothing else).
#![deny(unsafe_code)]

pub mod frame;
pub mod manifest;
pub mod path;
pub mod placer;
#[allow(unsafe_code)]
pub mod pool;
pub mod session;
pub mod transport;

pub use frame::{FrameHeader, FrameKind};
pub use manifest::{Entry, EntryKind, FileId};
pub use path::RelPath;
pub use pool::{BufLease, BufferPool};
