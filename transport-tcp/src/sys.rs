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
    Ok(TcpInfo { rtt_us: info.tcpi_rtt, rcv_wscale: info.tcpi_snd_rcv_wscale >> 4 })
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
    }
}
