//! Blocking frame I/O on one data connection, with the stall detector built into every call.
//!
//! Every socket has SO_SNDTIMEO/SO_RCVTIMEO set to a slice of the stall timeout (see
//! [`crate::tune`]), so a call that moves no byte returns EAGAIN within a second. A read that is
//! waiting for the *next* frame treats that as idleness (the sender may simply have nothing to
//! send) and waits on; anything else — a partly received frame, or a write the peer does not
//! drain — is a stall once no byte moved for the whole stall timeout.

use std::fs::File;
use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use blitx_core::frame::FRAME_HEADER_BYTES;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};

use crate::error::{Failure, classify};
use blitx_core::cancel::Cancel;

/// Bytes hashed per `pread` when checksumming a file region: small enough to stay in L2, so the
/// copy out of the page cache costs little more than the hash reading it.
pub(crate) const SCRATCH_BYTES: usize = 256 << 10;
const _: () = assert!(SCRATCH_BYTES >= blitx_core::frame::HASH_PIECE_BYTES);

/// One data connection and how to name it in errors. Used by one thread at a time.
pub(crate) struct Link {
    pub(crate) stream: TcpStream,
    /// "stream 2 (10.0.0.5:41234)".
    pub(crate) name: String,
    stall_timeout: Duration,
}

impl Link {
    pub(crate) fn new(stream: TcpStream, index: usize, stall_timeout: Duration) -> Self {
        let peer =
            stream.peer_addr().map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
        Link { stream, name: format!("stream {index} ({peer})"), stall_timeout }
    }

    /// True while an operation whose last byte moved at `moved_at` may keep waiting.
    fn within_stall(&self, moved_at: Instant) -> bool {
        moved_at.elapsed() < self.stall_timeout
    }

    /// Classifies the error of an operation whose last byte moved at `moved_at`.
    ///
    /// A connection the kernel tore down after a timeout (keepalive) reports ETIMEDOUT once and
    /// EPIPE after that, and `sendfile` returns a partial count instead of the first error; so a
    /// broken connection after a whole stall timeout without progress on a pending frame is a
    /// stall, whatever the errno says.
    fn fail(&self, op: &'static str, err: Errno, moved_at: Instant) -> Failure {
        let stall_secs = self.stall_timeout.as_millis().div_ceil(1000) as u64;
        match classify(&io::Error::from(err), op, &self.name, stall_secs) {
            Failure::PeerGone { .. } if moved_at.elapsed() >= self.stall_timeout => {
                Failure::Stalled { idle_secs: stall_secs }
            }
            f => f,
        }
    }

    /// Writes a header and its payload with as few syscalls as the socket buffer allows.
    pub(crate) fn write_frame(
        &self,
        header: &[u8; FRAME_HEADER_BYTES],
        payload: &[u8],
    ) -> Result<(), Failure> {
        let mut bufs = [IoSlice::new(header), IoSlice::new(payload)];
        // An empty trailing slice would make the last sendmsg write nothing.
        let used = if payload.is_empty() { 1 } else { 2 };
        let mut rest: &mut [IoSlice<'_>] = &mut bufs[..used];
        let mut moved_at = Instant::now();
        while !rest.is_empty() {
            // NOSIGNAL: a vanished peer is an EPIPE error here, not a process-killing SIGPIPE.
            match rustix::net::sendmsg(
                self.stream.as_fd(),
                rest,
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            ) {
                Ok(0) => return Err(self.fail("write", Errno::PIPE, moved_at)),
                Ok(n) => {
                    IoSlice::advance_slices(&mut rest, n);
                    moved_at = Instant::now();
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) if self.within_stall(moved_at) => continue,
                Err(e) => return Err(self.fail("write", e, moved_at)),
            }
        }
        Ok(())
    }

    /// Writes a header that a `sendfile` payload follows; MSG_MORE keeps it from leaving as a
    /// segment of its own.
    pub(crate) fn write_header_more(
        &self,
        header: &[u8; FRAME_HEADER_BYTES],
    ) -> Result<(), Failure> {
        self.send_all(header, SendFlags::NOSIGNAL | SendFlags::MORE)
    }

    /// Sends all of `bytes` with `send(2)` and `flags`, within the stall timeout.
    fn send_all(&self, bytes: &[u8], flags: SendFlags) -> Result<(), Failure> {
        let mut done = 0;
        let mut moved_at = Instant::now();
        while done < bytes.len() {
            match rustix::net::send(self.stream.as_fd(), &bytes[done..], flags) {
                Ok(0) => return Err(self.fail("write", Errno::PIPE, moved_at)),
                Ok(n) => {
                    done += n;
                    moved_at = Instant::now();
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) if self.within_stall(moved_at) => continue,
                Err(e) => return Err(self.fail("write", e, moved_at)),
            }
        }
        Ok(())
    }

    /// Sends `len_bytes` of `file` from `offset_bytes` without copying through user space.
    /// Returns the bytes sent: fewer than asked when the file ended first (it shrank since
    /// it was hashed); the caller must then fill the frame up ([`Link::write_zeros`]).
    pub(crate) fn sendfile_all(
        &self,
        file: &File,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> Result<u64, Failure> {
        let mut offset = offset_bytes;
        let end = offset_bytes + len_bytes;
        let mut moved_at = Instant::now();
        while offset < end {
            let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(1 << 30);
            match rustix::fs::sendfile(self.stream.as_fd(), file, Some(&mut offset), want) {
                Ok(0) => break,
                Ok(_) => moved_at = Instant::now(),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) if self.within_stall(moved_at) => continue,
                Err(e) => return Err(self.fail("sendfile", e, moved_at)),
            }
        }
        Ok(offset - offset_bytes)
    }

    /// Writes `len_bytes` zero bytes: the rest of a frame whose file region could not be read
    /// in full (its checksum then fails at the target, which discards the file).
    pub(crate) fn write_zeros(&self, mut len_bytes: u64) -> Result<(), Failure> {
        let zeros = [0u8; 16 << 10];
        while len_bytes > 0 {
            let n = len_bytes.min(zeros.len() as u64) as usize;
            self.send_all(&zeros[..n], SendFlags::NOSIGNAL)?;
            len_bytes -= n as u64;
        }
        Ok(())
    }

    /// Moves the next `len` payload bytes from the socket into `file` at `offset` through
    /// `pipe` with `splice` (no user-space copy). Returns the socket bytes consumed and whether
    /// the file was written: on a write error what was in the pipe is read out and dropped, and
    /// the bytes still in the socket are the caller's to discard. Carries the stall detector.
    pub(crate) fn splice_to_file(
        &self,
        pipe: &Pipe,
        file: &File,
        offset: u64,
        len: usize,
        cancel: &Cancel,
    ) -> Result<(usize, io::Result<()>), Failure> {
        use rustix::pipe::{SpliceFlags, splice};
        let (pipe_r, pipe_w, pipe_bytes) = (&pipe.r, &pipe.w, pipe.bytes);
        let mut done = 0;
        let mut at = offset;
        let mut moved_at = Instant::now();
        while done < len {
            let want = (len - done).min(pipe_bytes);
            let n = match splice(self.stream.as_fd(), None, pipe_w, None, want, SpliceFlags::MOVE) {
                Ok(0) => {
                    return Err(Failure::PeerGone {
                        detail: format!("{}: the peer closed the connection mid-frame", self.name),
                    });
                }
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) if !cancel.is_fired() && self.within_stall(moved_at) => continue,
                Err(e) => return Err(self.fail("splice from the socket", e, moved_at)),
            };
            moved_at = Instant::now();
            let mut out = 0;
            while out < n {
                match splice(pipe_r, None, file, Some(&mut at), n - out, SpliceFlags::MOVE) {
                    Ok(0) => {
                        drain_pipe(pipe_r, n - out);
                        let e = io::Error::new(io::ErrorKind::WriteZero, "splice wrote nothing");
                        return Ok((done + n, Err(e)));
                    }
                    Ok(k) => out += k,
                    Err(Errno::INTR) => continue,
                    Err(e) => {
                        drain_pipe(pipe_r, n - out);
                        return Ok((done + n, Err(e.into())));
                    }
                }
            }
            done += n;
        }
        Ok((done, Ok(())))
    }

    /// Reads exactly `buf.len()` bytes. `at_boundary`: nothing of this frame arrived yet, so a
    /// quiet peer is idle rather than stalled (until `cancel` fires). A clean close is `PeerGone`:
    /// streams end with an End frame, never with a bare close.
    pub(crate) fn read_exact(
        &self,
        buf: &mut [u8],
        at_boundary: bool,
        cancel: &Cancel,
    ) -> Result<(), Failure> {
        let mut done = 0;
        let mut moved_at = Instant::now();
        while done < buf.len() {
            let idle = done == 0 && at_boundary;
            // WAITALL: one syscall per payload in the common case instead of one per segment
            // batch; with SO_RCVTIMEO it still returns what arrived when the timeout runs out.
            match rustix::net::recv(self.stream.as_fd(), &mut buf[done..], RecvFlags::WAITALL) {
                Ok((_, 0)) => {
                    let when = if idle { "before its End frame" } else { "mid-frame" };
                    return Err(Failure::PeerGone {
                        detail: format!("{}: the peer closed the connection {when}", self.name),
                    });
                }
                Ok((_, n)) => {
                    done += n;
                    moved_at = Instant::now();
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) if idle && !cancel.is_fired() => continue,
                Err(Errno::AGAIN) if !idle && !cancel.is_fired() && self.within_stall(moved_at) => {
                    continue;
                }
                // Waiting for the next frame is idleness, not a stall, whatever ends it.
                Err(e) if idle => return Err(self.fail("read", e, Instant::now())),
                Err(e) => return Err(self.fail("read", e, moved_at)),
            }
        }
        Ok(())
    }
}

/// A pipe for splicing payloads from a socket into a file.
pub(crate) struct Pipe {
    r: std::os::fd::OwnedFd,
    w: std::os::fd::OwnedFd,
    /// Its capacity: the most one splice from the socket may move.
    bytes: usize,
}

impl Pipe {
    /// A pipe of `bytes` capacity if the kernel allows it (1 MiB is what an unprivileged
    /// process may set by default), else of the default capacity.
    pub(crate) fn new(bytes: usize) -> io::Result<Pipe> {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let bytes = rustix::pipe::fcntl_setpipe_size(&w, bytes)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&w))?;
        Ok(Pipe { r, w, bytes })
    }
}

/// Reads `len` bytes out of a pipe and drops them (a splice whose write side failed).
fn drain_pipe(pipe_r: &std::os::fd::OwnedFd, mut len: usize) {
    let mut scratch = [0u8; 16 << 10];
    while len > 0 {
        let n = len.min(scratch.len());
        match rustix::io::read(pipe_r, &mut scratch[..n]) {
            Ok(0) => return,
            Ok(k) => len -= k,
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// The frame checksum ([`blitx_core::frame::checksum`]) of `len_bytes` of `file` at
/// `offset_bytes`, read piece by piece through `scratch` (one hash piece, kept hot in cache) so
/// the region is never copied whole. `Err`: the file could not be read (a problem of that
/// file, not of the link).
pub(crate) fn region_checksum(
    file: &File,
    offset_bytes: u64,
    len_bytes: u64,
    scratch: &mut [u8],
) -> Result<u64, String> {
    let piece_bytes = blitx_core::frame::HASH_PIECE_BYTES;
    assert!(scratch.len() >= piece_bytes, "scratch buffer smaller than a hash piece");
    let mut hasher = blitx_core::frame::Hasher::default();
    let mut at = offset_bytes;
    let end = offset_bytes + len_bytes;
    while at < end {
        // Pieces must line up with the payload's own pieces: fill each one completely.
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(piece_bytes);
        let mut filled = 0;
        while filled < want {
            match rustix::io::pread(file, &mut scratch[filled..want], at + filled as u64) {
                Ok(0) => {
                    return Err(format!(
                        "the file ends at {}, inside a chunk being sent (it shrank); not copied, run again",
                        at + filled as u64
                    ));
                }
                Ok(n) => filled += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
        hasher.update(&scratch[..want]);
        at += want as u64;
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn region_checksum_matches_the_frame_checksum() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let mut scratch = vec![0u8; SCRATCH_BYTES];
        for (off, len) in [(0usize, 0usize), (0, 1), (5, 4096), (1000, 600_000), (0, 700_000)] {
            let got = region_checksum(&f, off as u64, len as u64, &mut scratch).unwrap();
            assert_eq!(got, blitx_core::frame::checksum(&data[off..off + len]), "{off}+{len}");
        }
        assert!(region_checksum(&f, 699_000, 2000, &mut scratch).is_err());
    }
}
