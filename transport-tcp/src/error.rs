//! Errors of session set-up and configuration, and the record of why a running session failed.
//!
//! Once frames move, errors are the core's [`TransportError`]; a session's first failure is
//! kept as a `Failure` (cloneable, unlike `io::Error`) so every caller on every thread gets
//! the same error.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use blitx_core::frame::FrameError;
use blitx_core::pool::PoolError;
use blitx_core::transport::TransportError;

use crate::handshake::HandshakeError;
use crate::token::TokenError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{streams} TCP streams requested; 1..={max} are allowed", max = crate::STREAMS_MAX)]
    Streams { streams: u32 },
    #[error("chunk size {chunk_bytes} bytes is out of range or not a multiple of 4096")]
    ChunkBytes { chunk_bytes: u32 },
    #[error("queue depth {queue_frames} frames per stream is out of range")]
    QueueFrames { queue_frames: usize },
    #[error(
        "a pool of {pool_slots} slots ({pool_bytes} bytes) does not fit {streams} streams or exceeds the memory bound"
    )]
    PoolSlots { pool_slots: usize, streams: u32, pool_bytes: u64 },
    #[error("socket buffer of {bytes} bytes is out of range")]
    SocketBuffer { bytes: usize },
    #[error("stall timeout {timeout:?} is out of range")]
    StallTimeout { timeout: Duration },
    #[error("link speed {link_gbps} Gb/s is out of range")]
    LinkGbps { link_gbps: u32 },
    #[error("{connected} connected streams handed over for a session of {configured}")]
    StreamCount { connected: usize, configured: u32 },
}

/// Why setting up a session's data connections failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot listen for data connections on {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("accepting data connections on {addr} failed")]
    Accept { addr: SocketAddr, source: io::Error },
    #[error("only {arrived} of {expected} data connections arrived on {addr} before the deadline")]
    AcceptTimeout { addr: SocketAddr, arrived: u32, expected: u32 },
    #[error("waiting for data connections on {addr} was cancelled")]
    Cancelled { addr: SocketAddr },
    #[error("data connection {stream} to {addr} failed")]
    Connect { addr: SocketAddr, stream: u32, source: io::Error },
    #[error("data connection {stream} to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr, stream: u32 },
    #[error(
        "{addr} refused data connection {stream} (wrong session token, protocol version or stream count; see the peer's log)"
    )]
    Refused { addr: SocketAddr, stream: u32 },
    #[error("bad handshake answer from {addr}")]
    Handshake { addr: SocketAddr, source: HandshakeError },
    #[error("setting {op} on a data connection to {peer} failed")]
    SocketOption { op: &'static str, peer: String, source: io::Error },
    #[error("cannot create the buffer pool")]
    Pool(#[from] PoolError),
    #[error("cannot start a stream thread")]
    Thread(#[source] io::Error),
}

/// The first reason a running session failed, replayable to every caller.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Cancelled,
    PeerGone { detail: String },
    Stalled { idle_secs: u64 },
    Protocol { peer: String, detail: String },
    BadFrame { peer: String, error: FrameError },
    Io { op: &'static str, peer: String, kind: io::ErrorKind, message: String },
}

impl Failure {
    pub(crate) fn to_error(&self) -> TransportError {
        match self {
            Failure::Cancelled => TransportError::Cancelled,
            Failure::PeerGone { detail } => TransportError::PeerGone { detail: detail.clone() },
            Failure::Stalled { idle_secs } => TransportError::Stalled { idle_secs: *idle_secs },
            Failure::Protocol { peer, detail } => {
                TransportError::Protocol { peer: peer.clone(), detail: detail.clone() }
            }
            Failure::BadFrame { peer, error } => {
                TransportError::BadFrame { peer: peer.clone(), source: error.clone() }
            }
            Failure::Io { op, peer, kind, message } => TransportError::Io {
                op,
                peer: peer.clone(),
                source: io::Error::new(*kind, message.clone()),
            },
        }
    }
}

/// Maps an I/O error on stream `link` to what went wrong, in the core's vocabulary.
///
/// `WouldBlock` reaches here only once nothing moved for the whole stall timeout (the socket
/// timeouts are slices of it, retried in `wire`), and `TimedOut` (keepalive gave up on the
/// peer): both are stalls.
pub(crate) fn classify(err: &io::Error, op: &'static str, link: &str, stall_secs: u64) -> Failure {
    use io::ErrorKind as K;
    match err.kind() {
        K::WouldBlock | K::TimedOut => Failure::Stalled { idle_secs: stall_secs },
        K::BrokenPipe
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::UnexpectedEof => Failure::PeerGone { detail: format!("{link}: {op}: {err}") },
        kind => Failure::Io { op, peer: link.to_string(), kind, message: err.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_the_core_vocabulary() {
        let c = |k| classify(&io::Error::from(k), "write", "stream 0 (peer)", 30).to_error();
        assert!(matches!(c(io::ErrorKind::WouldBlock), TransportError::Stalled { idle_secs: 30 }));
        assert!(matches!(c(io::ErrorKind::TimedOut), TransportError::Stalled { .. }));
        assert!(matches!(c(io::ErrorKind::BrokenPipe), TransportError::PeerGone { .. }));
        assert!(matches!(c(io::ErrorKind::ConnectionReset), TransportError::PeerGone { .. }));
        assert!(matches!(c(io::ErrorKind::UnexpectedEof), TransportError::PeerGone { .. }));
        match c(io::ErrorKind::PermissionDenied) {
            TransportError::Io { op: "write", peer, source } => {
                assert_eq!(peer, "stream 0 (peer)");
                assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
