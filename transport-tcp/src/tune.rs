//! Socket tuning: buffer sizes from the bandwidth-delay product, Nagle, timeouts, keepalive.
//!
//! The sizing decision is a pure function ([`plan_buffer`]); the rest applies it to sockets.
//!
//! Why buffers are usually left alone: setting SO_RCVBUF/SO_SNDBUF turns Linux's autotuning off
//! for that socket, and a plain setsockopt is silently clamped to `net.core.{r,w}mem_max`
//! (often 208 KiB), which is far *smaller* than what autotuning would reach (`tcp_rmem[2]`,
//! 6–32 MiB). So buffers are set only when the user asks (`--tcp-buffer`, applied before the
//! SYN so the window scale can cover it, with SO_*BUFFORCE when privileged) or when the measured
//! BDP exceeds what autotuning may reach.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::net::sockopt;

use crate::config::{SOCKET_BUFFER_BYTES_MAX, TcpConfig};
use crate::sys;

/// Which way data flows through a socket (decides which buffer matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Send,
    Receive,
}

/// What to do with one socket's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferPlan {
    /// Leave Linux's autotuning on.
    Autotune,
    /// Set the buffer to this many bytes (the kernel doubles it for bookkeeping).
    Set { bytes: usize },
}

/// Bytes in flight one stream needs to keep its share of a `link_gbps` link busy at `rtt_us`.
pub fn bdp_bytes(link_gbps: u32, rtt_us: u32, streams: u32) -> u64 {
    // Gb/s × µs = 1e9/8 B/s × 1e-6 s = 125 B per (Gb/s·µs).
    u64::from(link_gbps).saturating_mul(125).saturating_mul(u64::from(rtt_us))
        / u64::from(streams.max(1))
}

/// Decides a socket's buffer size.
///
/// `autotune_max_bytes` is `tcp_rmem[2]` (receive) or `tcp_wmem[2]` (send); autotuning can give a
/// connection a window of about half of it (the rest is skb overhead), so the buffer is set only
/// when the BDP exceeds that.
pub fn plan_buffer(
    explicit_bytes: Option<usize>,
    bdp_bytes: u64,
    autotune_max_bytes: Option<usize>,
) -> BufferPlan {
    if let Some(bytes) = explicit_bytes {
        return BufferPlan::Set { bytes };
    }
    let autotune_window = autotune_max_bytes.map_or(u64::MAX, |b| b as u64 / 2);
    if bdp_bytes > autotune_window {
        let bytes = bdp_bytes.min(SOCKET_BUFFER_BYTES_MAX as u64) as usize;
        return BufferPlan::Set { bytes };
    }
    BufferPlan::Autotune
}

/// The autotuning ceiling for `role` (third field of /proc/sys/net/ipv4/tcp_{r,w}mem).
pub fn autotune_max_bytes(role: Role) -> Option<usize> {
    let path = match role {
        Role::Receive => "/proc/sys/net/ipv4/tcp_rmem",
        Role::Send => "/proc/sys/net/ipv4/tcp_wmem",
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace().nth(2)?.parse().ok()
}

/// Sets both buffers of a socket before it connects or listens (the user's `--tcp-buffer`).
/// Tries the privileged SO_*BUFFORCE first, which is not clamped to `net.core.*mem_max`.
pub(crate) fn set_buffers_before_connect<Fd: AsFd>(fd: Fd, bytes: usize) -> io::Result<()> {
    set_buffer(&fd, Role::Send, bytes)?;
    set_buffer(&fd, Role::Receive, bytes)?;
    Ok(())
}

/// Sets one buffer; returns the size the kernel actually granted (already doubled).
pub(crate) fn set_buffer<Fd: AsFd>(fd: &Fd, role: Role, bytes: usize) -> io::Result<usize> {
    let fd = fd.as_fd();
    let (forced, granted) = match role {
        Role::Send => (
            sockopt::set_socket_send_buffer_size_force(fd, bytes)
                .or_else(|_| sockopt::set_socket_send_buffer_size(fd, bytes)),
            sockopt::socket_send_buffer_size(fd),
        ),
        Role::Receive => (
            sockopt::set_socket_recv_buffer_size_force(fd, bytes)
                .or_else(|_| sockopt::set_socket_recv_buffer_size(fd, bytes)),
            sockopt::socket_recv_buffer_size(fd),
        ),
    };
    forced?;
    let granted = granted?;
    // The kernel stores twice the requested size (half is bookkeeping); less means clamped.
    if granted < bytes.saturating_mul(2) {
        tracing::warn!(
            requested_bytes = bytes,
            granted_bytes = granted,
            ?role,
            "the kernel granted a smaller socket buffer than requested; raise net.core.rmem_max/wmem_max or run privileged"
        );
    }
    Ok(granted)
}

/// Options every data connection gets right after it is established.
pub(crate) fn apply_connected(stream: &TcpStream) -> io::Result<()> {
    // Frames are written whole (header and payload in one writev, or MSG_MORE before sendfile),
    // so Nagle only ever delays the last small segment of a frame and the End frame.
    stream.set_nodelay(true)
}

/// How long one blocking socket call waits before the stall detector looks at the clock.
pub(crate) fn stall_slice(stall: Duration) -> Duration {
    (stall / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Role-specific settings once the session starts: stall detection timeouts, keepalive, and the
/// buffer plan from the measured RTT. `peer` names the stream in logs.
pub(crate) fn apply_session(
    stream: &TcpStream,
    role: Role,
    cfg: &TcpConfig,
    peer: &str,
) -> io::Result<()> {
    let stall = cfg.stall_timeout;
    // A blocked read or write returns EAGAIN after a slice of the stall timeout: the stall
    // detector (see `wire`) counts the time since the last byte moved and fails the session
    // once it reaches the stall timeout, so a stall is reported one slice after it, not up to
    // twice the timeout (a call that moved a few bytes early in a whole-timeout wait used to
    // start the next wait from its return).
    let slice = stall_slice(stall);
    stream.set_read_timeout(Some(slice))?;
    stream.set_write_timeout(Some(slice))?;
    let fd = stream.as_fd();
    // No TCP_USER_TIMEOUT: it would tear the connection down under a blocked `sendfile`,
    // which then reports a partial count followed by a bare EPIPE, hiding that this was a stall.
    // The socket timeouts above cover a peer that stops acknowledging while a frame is pending.
    // Keepalive notices a peer host that vanished while the stream is idle between frames.
    let idle = Duration::from_secs(stall.as_secs().max(1));
    sockopt::set_socket_keepalive(fd, true)?;
    sockopt::set_tcp_keepidle(fd, idle)?;
    sockopt::set_tcp_keepintvl(fd, Duration::from_secs((idle.as_secs() / 3).max(1)))?;
    sockopt::set_tcp_keepcnt(fd, 3)?;

    let info = sys::tcp_info(fd)?;
    let bdp = bdp_bytes(cfg.link_gbps, info.rtt_us, cfg.streams);
    match plan_buffer(cfg.socket_buffer_bytes, bdp, autotune_max_bytes(role)) {
        BufferPlan::Autotune => {
            tracing::debug!(
                peer,
                rtt_us = info.rtt_us,
                bdp_bytes = bdp,
                "socket buffers autotuned"
            );
        }
        // Regression (netem VM pair, 2 ms + 0.5% loss): raising SO_RCVBUF on an established
        // connection locks the buffer and switches autotuning off, but the window clamp the
        // kernel fixed at the handshake stays (~64 KB), so the advertised window stuck at 56 KB
        // and one stream ran at a tenth of the link. A receive buffer is therefore only ever
        // set before the connection exists (an explicit --tcp-buffer, on the listener or the
        // connecting socket); here we only say that the BDP calls for one.
        BufferPlan::Set { bytes } if role == Role::Receive && cfg.socket_buffer_bytes.is_none() => {
            tracing::info!(
                peer,
                rtt_us = info.rtt_us,
                bdp_bytes = bdp,
                wanted_bytes = bytes,
                "the bandwidth-delay product exceeds what receive-buffer autotuning reaches; pass --tcp-buffer {bytes} (or raise net.ipv4.tcp_rmem) for full speed on this path"
            );
        }
        BufferPlan::Set { bytes } => {
            let granted = set_buffer(&fd, role, bytes)?;
            let window_max = 65_535usize << info.rcv_wscale.min(14);
            if role == Role::Receive && bytes > window_max {
                tracing::warn!(
                    peer,
                    buffer_bytes = bytes,
                    window_max_bytes = window_max,
                    "the receive window is capped by the window scale negotiated at connect; pass an explicit --tcp-buffer (applied before connecting) or raise net.ipv4.tcp_rmem"
                );
            }
            tracing::debug!(
                peer,
                rtt_us = info.rtt_us,
                bdp_bytes = bdp,
                granted,
                "socket buffer set"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdp_arithmetic() {
        // 100 Gb/s × 100 µs = 1.25 MB, split over 4 streams.
        assert_eq!(bdp_bytes(100, 100, 1), 1_250_000);
        assert_eq!(bdp_bytes(100, 100, 4), 312_500);
        assert_eq!(bdp_bytes(25, 0, 4), 0);
        assert_eq!(bdp_bytes(u32::MAX, u32::MAX, 0), u64::MAX);
    }

    #[test]
    fn buffers_are_set_only_when_asked_or_needed() {
        let six_mib = Some(6 << 20);
        // LAN: autotuning reaches it.
        assert_eq!(plan_buffer(None, bdp_bytes(100, 50, 4), six_mib), BufferPlan::Autotune);
        // Explicit always wins, even when small.
        assert_eq!(plan_buffer(Some(1 << 20), 0, six_mib), BufferPlan::Set { bytes: 1 << 20 });
        // WAN: 100 Gb/s × 10 ms / 4 streams = 31 MB > 3 MiB autotuned window.
        assert_eq!(
            plan_buffer(None, bdp_bytes(100, 10_000, 4), six_mib),
            BufferPlan::Set { bytes: 31_250_000 }
        );
        // Clamped to the bound.
        assert_eq!(
            plan_buffer(None, u64::MAX, six_mib),
            BufferPlan::Set { bytes: SOCKET_BUFFER_BYTES_MAX }
        );
        // Unknown autotuning ceiling: leave the kernel alone.
        assert_eq!(plan_buffer(None, 1 << 30, None), BufferPlan::Autotune);
    }

    #[test]
    fn autotune_ceilings_are_readable_on_linux() {
        assert!(autotune_max_bytes(Role::Receive).is_some_and(|b| b >= 4096));
        assert!(autotune_max_bytes(Role::Send).is_some_and(|b| b >= 4096));
    }
}
