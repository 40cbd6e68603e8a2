//! blit's TCP data plane: one session = N parallel TCP streams carrying
//! [`blitx_core::frame`] frames, behind the [`FrameSender`]/[`FrameReceiver`] traits.
//!
//! This crate owns the data connections of a session: setting them up ([`DataListener`],
//! [`connect_streams`], the one-time [`SessionToken`]), tuning them ([`TcpConfig`]), and moving
//! frames over them ([`TcpSender`], [`TcpReceiver`]). It does not touch files beyond reading the
//! [`FileRegion`](blitx_core::transport::FileRegion)s it is handed, and knows nothing of the
//! control plane: the daemon's control connection tells the peer the listener's address, the
//! token and the stream count, and hands the connected streams to a sender or a receiver.
//!
//! # Back of the envelope
//! - Network: 25–100 GbE is 3–12.5 GB/s. One TCP stream tops out at one core's worth of
//!   copies (on this class of CPU roughly 2–5 GB/s per direction), so 100 GbE needs several
//!   streams, each served by its own thread on both ends.
//! - Latency: a lab RTT of 20–200 µs gives a bandwidth-delay product of 60 KB–2.5 MB per link,
//!   well inside Linux's receive autotuning (tcp_rmem max 6–32 MiB), so buffers are left to
//!   the kernel unless the RTT measured after connecting says otherwise or the user asks.
//! - Memory: in flight per side = `pool_slots × chunk_bytes` (default `2·streams + 8` slots of
//!   4 MiB: 64 MiB for 4 streams), plus the kernel's socket buffers.
//! - CPU: the receiver must copy every byte out of the socket (no zero-copy receive on plain
//!   TCP); the sender copies once from the page cache (`pread`) or not at all (`sendfile`), and
//!   xxh3 costs about one memory read of the payload.
//!
//! # Wire
//! Each data connection starts with a 48-byte hello from the connecting side (see
//! [`handshake`]) answered by an 8-byte ack; then the sending side writes frames (32-byte header,
//! payload) and ends each stream with an End frame. A chunk travels whole on one stream; the
//! receiver accepts frames in any order.
//!
//! `unsafe` lives in one file, `sys.rs` (the `TCP_INFO` socket option, which rustix lacks).
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod error;
pub mod handshake;
pub mod plane;
mod receiver;
mod sender;
pub mod setup;
#[allow(unsafe_code)]
mod sys;
pub mod token;
pub mod tune;
mod wire;

pub use config::{Delivery, STREAMS_DEFAULT, STREAMS_MAX, TcpConfig};
pub use error::{ConfigError, SetupError};
pub use plane::{TcpOffer, TcpPlane};
pub use receiver::TcpReceiver;
pub use sender::TcpSender;
pub use setup::{DataListener, connect_streams};
pub use token::{SessionToken, TokenError};

/// Name reported in [`TransportStats`](blitx_core::transport::TransportStats).
pub const TRANSPORT_NAME: &str = "tcp";

#[cfg(doc)]
use blitx_core::transport::{FrameReceiver, FrameSender};
