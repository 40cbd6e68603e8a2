//! What one TCP data session is configured with, and the bounds on every knob.
//!
//! Both ends of a session build a [`TcpConfig`] from what the control plane negotiated; the
//! stream count and chunk size must agree, the rest is local to each end.

use std::time::Duration;

use blitx_core::session::{CHUNK_BYTES_DEFAULT, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN};
use blitx_core::transport::PayloadPref;

use crate::error::ConfigError;

/// Most parallel streams one session may open (each costs a thread and a socket on both ends).
pub const STREAMS_MAX: u32 = 64;
/// Streams per session unless the user asks otherwise. Chosen by measurement (README.md,
/// `scripts/bench.sh`): one stream is bound by one core's receive copy (~3.5 GB/s on loopback
/// with 4 MiB chunks), two saturate a 2-core loopback (~4.3 GB/s) and four cost nothing extra
/// there (same GB/s, same CPU per GB) while leaving headroom for 100 GbE (12.5 GB/s) on hosts
/// with the cores for it.
pub const STREAMS_DEFAULT: u32 = 4;
/// No byte moving for this long on a stream with data pending fails the session.
pub const STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Shortest stall timeout accepted (tests use short ones; below this, scheduling noise alone
/// would trip it).
pub const STALL_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Longest stall timeout accepted (kernel keepalive counters are in seconds and u32).
pub const STALL_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Bounds on an explicit socket buffer size (`--tcp-buffer`).
pub const SOCKET_BUFFER_BYTES_MIN: usize = 64 << 10;
pub const SOCKET_BUFFER_BYTES_MAX: usize = 1 << 30;
/// Frames queued per stream on the sending side, waiting for the stream's thread.
pub const QUEUE_FRAMES_DEFAULT: usize = 1;
pub const QUEUE_FRAMES_MAX: usize = 16;
/// Pool slots beyond the streams' own: leases held by readers (sender) or writers (receiver).
pub const POOL_SLOTS_SPARE: usize = 8;
/// Most memory one side's buffer pool may map.
pub const POOL_BYTES_MAX: u64 = 2 << 30;
/// Link speed assumed when sizing socket buffers from the measured RTT.
pub const LINK_GBPS_DEFAULT: u32 = 100;
pub const LINK_GBPS_MAX: u32 = 800;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Parallel TCP connections of the session (`1..=STREAMS_MAX`).
    pub streams: u32,
    /// The session's chunk size: the largest payload of one frame.
    pub chunk_bytes: u32,
    /// Buffers in this side's pool (bounds the data in flight through this side).
    pub pool_slots: usize,
    /// Frames queued per stream on the sending side.
    pub queue_frames: usize,
    /// Explicit SO_SNDBUF/SO_RCVBUF (`--tcp-buffer`). `None` leaves Linux's autotuning on unless
    /// the bandwidth-delay product measured after connecting exceeds what autotuning may reach.
    pub socket_buffer_bytes: Option<usize>,
    /// No byte moving for this long while a frame is pending fails the session with
    /// `TransportError::Stalled`.
    pub stall_timeout: Duration,
    /// Link speed the socket buffers are sized for (with the measured RTT).
    pub link_gbps: u32,
    /// The payload form the sender asks readers for: `Buffer` (the default) leaves by `sendmsg`
    /// from a pooled buffer, `FileRegion` by `sendfile`. Both are complete (the source's checks
    /// do not depend on the form); the default is the one measured faster and cheaper on
    /// loopback (docs/benchmarks.md, "TCP payload paths").
    pub payload: PayloadPref,
    /// How the receiver hands chunk payloads to the writers.
    pub delivery: Delivery,
}

/// How a TCP receiver hands a chunk's payload to the target's writer. `Buffered` is the default
/// (measured faster on loopback: docs/benchmarks.md, "TCP payload paths").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The stream thread reads it into a pooled buffer and queues the buffer.
    Buffered,
    /// The stream thread lends its socket with the frame (`Payload::Stream`): the writer
    /// reads the payload piece by piece into a cache-sized buffer, hashes and writes each
    /// piece while it is hot, and the socket goes back when the payload was read.
    Lent,
    /// Lent, and the writer moves each piece socket → pipe → file with `splice`, then reads
    /// it back to verify its checksum.
    Spliced,
}

/// Pool slots for `streams` streams: one frame on the wire and `queue_frames` queued per stream,
/// plus spares for readers or writers holding leases.
pub fn pool_slots_for(streams: u32, queue_frames: usize) -> usize {
    streams as usize * (queue_frames + 1) + POOL_SLOTS_SPARE
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig::new(STREAMS_DEFAULT, CHUNK_BYTES_DEFAULT)
    }
}

impl TcpConfig {
    /// A configuration with the defaults for everything but the stream count and chunk size.
    pub fn new(streams: u32, chunk_bytes: u32) -> Self {
        TcpConfig {
            streams,
            chunk_bytes,
            pool_slots: pool_slots_for(streams, QUEUE_FRAMES_DEFAULT),
            queue_frames: QUEUE_FRAMES_DEFAULT,
            socket_buffer_bytes: None,
            stall_timeout: STALL_TIMEOUT_DEFAULT,
            link_gbps: LINK_GBPS_DEFAULT,
            payload: PayloadPref::Buffer,
            delivery: Delivery::Buffered,
        }
    }

    /// Checks every bound; both [`crate::TcpSender::new`] and [`crate::TcpReceiver::new`] call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=STREAMS_MAX).contains(&self.streams) {
            return Err(ConfigError::Streams { streams: self.streams });
        }
        let chunk = self.chunk_bytes;
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk)
            || !chunk.is_multiple_of(CHUNK_BYTES_MIN)
        {
            return Err(ConfigError::ChunkBytes { chunk_bytes: chunk });
        }
        if !(1..=QUEUE_FRAMES_MAX).contains(&self.queue_frames) {
            return Err(ConfigError::QueueFrames { queue_frames: self.queue_frames });
        }
        // Every stream thread of the receiver holds one slot while reading a payload; fewer
        // slots than streams would leave a stream unable to read at all.
        let pool_bytes = (self.pool_slots as u64).saturating_mul(u64::from(chunk));
        if self.pool_slots < self.streams as usize + 1 || pool_bytes > POOL_BYTES_MAX {
            return Err(ConfigError::PoolSlots {
                pool_slots: self.pool_slots,
                streams: self.streams,
                pool_bytes,
            });
        }
        if let Some(b) = self.socket_buffer_bytes
            && !(SOCKET_BUFFER_BYTES_MIN..=SOCKET_BUFFER_BYTES_MAX).contains(&b)
        {
            return Err(ConfigError::SocketBuffer { bytes: b });
        }
        if !(STALL_TIMEOUT_MIN..=STALL_TIMEOUT_MAX).contains(&self.stall_timeout) {
            return Err(ConfigError::StallTimeout { timeout: self.stall_timeout });
        }
        if !(1..=LINK_GBPS_MAX).contains(&self.link_gbps) {
            return Err(ConfigError::LinkGbps { link_gbps: self.link_gbps });
        }
        Ok(())
    }

    /// The stall timeout in whole seconds, rounded up (what `TransportError::Stalled` reports).
    pub fn stall_secs(&self) -> u64 {
        self.stall_timeout.as_millis().div_ceil(1000) as u64
    }
}

const _: () = assert!(STREAMS_DEFAULT >= 1 && STREAMS_DEFAULT <= STREAMS_MAX);
// Stream indices and counts travel as u16 in the handshake.
const _: () = assert!(STREAMS_MAX <= u16::MAX as u32);
const _: () = assert!(QUEUE_FRAMES_DEFAULT <= QUEUE_FRAMES_MAX);
// The default pool for the most streams at the default chunk size fits the pool bound.
const _: () = assert!(
    ((STREAMS_MAX as usize * (QUEUE_FRAMES_DEFAULT + 1) + POOL_SLOTS_SPARE) as u64)
        * (CHUNK_BYTES_DEFAULT as u64)
        <= POOL_BYTES_MAX
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        TcpConfig::default().validate().unwrap();
        for streams in [1, 2, 4, STREAMS_MAX] {
            TcpConfig::new(streams, CHUNK_BYTES_DEFAULT).validate().unwrap();
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let bad = |f: fn(&mut TcpConfig)| {
            let mut c = TcpConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(bad(|c| c.streams = 0), ConfigError::Streams { .. }));
        assert!(matches!(bad(|c| c.streams = STREAMS_MAX + 1), ConfigError::Streams { .. }));
        assert!(matches!(bad(|c| c.chunk_bytes = 1000), ConfigError::ChunkBytes { .. }));
        assert!(matches!(bad(|c| c.pool_slots = 2), ConfigError::PoolSlots { .. }));
        assert!(matches!(bad(|c| c.pool_slots = 100_000), ConfigError::PoolSlots { .. }));
        assert!(matches!(bad(|c| c.queue_frames = 0), ConfigError::QueueFrames { .. }));
        assert!(matches!(
            bad(|c| c.socket_buffer_bytes = Some(10)),
            ConfigError::SocketBuffer { .. }
        ));
        assert!(matches!(
            bad(|c| c.stall_timeout = Duration::ZERO),
            ConfigError::StallTimeout { .. }
        ));
        assert!(matches!(bad(|c| c.link_gbps = 0), ConfigError::LinkGbps { .. }));
    }

    #[test]
    fn stall_secs_rounds_up() {
        let c = TcpConfig { stall_timeout: Duration::from_millis(300), ..TcpConfig::default() };
        assert_eq!(c.stall_secs(), 1);
        assert_eq!(TcpConfig::default().stall_secs(), 30);
    }
}
