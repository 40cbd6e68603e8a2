//! blit's control plane: the gRPC protocol (proto/blit.proto, specified in docs/protocol.md),
//! the daemon's service and the client's side of a session.
//!
//! The generated protobuf types stay in this crate ([`pb`] is private): every message from a
//! peer is turned into a validated domain type ([`convert`]) before the rest of the code sees it,
//! and anything a peer sends can produce an error, never a panic. The data itself never travels
//! here; the control plane negotiates a data plane ([`dataplane`]: TCP streams now, RDMA queue
//! pairs next) and then carries the source and target halves' messages while the data moves.

pub mod cancel;
pub mod client;
pub mod conns;
pub mod convert;
pub mod dataplane;
/// Entry points for the fuzz targets in fuzz/: they decode and convert without exposing `pb`.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod metrics;
pub mod metrics_http;
pub mod negotiate;
pub mod ops;
pub mod server;
pub mod url;

#[allow(clippy::all, missing_docs, unreachable_pub)]
mod pb {
    tonic::include_proto!("blit.v1");
}

/// Version of the control protocol. Two builds talk only when they speak the same version; the
/// daemon answers a mismatch with `VERSION_MISMATCH` and both versions in the message.
/// Version 2: a `Hole` frame covers a run of chunks (its last 8 bytes count them), and the
/// target refuses listings that contradict earlier ones (docs/protocol.md).
/// Version 3: a chunked file is committed only after the source's `FileRead` message (which
/// replaces the `FILE_VERIFIED` flag on chunk frames), whatever the payload form; a chunk whose
/// checksum fails discards its file instead of ending the session.
/// Version 4: listings carry their number (`Listing.seq`) and each `Need` names the listing it
/// answers (`Need.listing`); the source refuses an answer out of order.
/// Version 5: resume (offers, `Same` frames) and delta (signatures, `Delta` frames).
/// Version 6: single files, moves (`TargetMsg.committed`), filter rules replacing `excludes`,
/// `bwlimit`, extended attributes, ACLs and special files in entries, itemized changes in
/// events, and the remote `ls`/`du`/`rm`/`mkdir` calls.
pub const PROTOCOL_VERSION: u32 = 6;

/// The daemon's default control port.
pub const DEFAULT_PORT: u16 = 9031;

/// This build's version, sent in Open/Accept for diagnostics.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest control message either side accepts (a listing part of 4096 entries with long paths
/// stays far below this).
pub const CONTROL_MESSAGE_BYTES_MAX: usize = 64 << 20;
