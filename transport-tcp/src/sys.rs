//! The one socket option rustix does not wrap: `TCP_INFO`. This is the crate's only `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The parts of the kernel's `struct tcp_info` this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpInfo {
    /// Smoothed round-trip time.
    pub rtt_us: u32,
    /// Window scale this end advertised at connect time: the receive window can never exceed
    /// `65535 << rcv_wscale`, whatever SO_RCVBUF is set to later.
    pub rcv_wscale: u8,
    /// Segments retransmitted over the connection's life (`tcpi_total_retrans`).
    pub total_retrans: u32,
}

/// Segments the kernel retransmitted on these connections together (their `TCP_INFO`).
pub(crate) fn retransmits(sockets: &[std::net::TcpStream]) -> io::Result<u64> {
    use std::os::fd::AsFd;
    sockets.iter().try_fold(0u64, |sum, s| Ok(sum + u64::from(tcp_info(s.as_fd())?.total_retrans)))
}

pub(crate) fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    // SAFETY: `tcp_info` is a plain C struct of integers, for which all-zero bytes are valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is a live descriptor for the duration of the borrow; `info` is writable for
    // `len` bytes and the kernel writes at most `len` bytes, reporting the amount back in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpInfo {
        rtt_us: info.tcpi_rtt,
        rcv_wscale: info.tcpi_snd_rcv_wscale >> 4,
        total_retrans: info.tcpi_total_retrans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn loopback_rtt_is_small_and_wscale_sane() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let info = tcp_info(c.as_fd()).unwrap();
        assert!(info.rtt_us < 1_000_000, "{info:?}");
        assert!(info.rcv_wscale <= 14, "{info:?}");
        // Nothing was sent on a fresh loopback connection: nothing can have been retransmitted.
        assert_eq!(info.total_retrans, 0, "{info:?}");
    }
}
