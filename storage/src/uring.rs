//! Direct I/O requests through io_uring: the storage crate's only `unsafe`.
//!
//! One ring per reader or writer thread (thread-local, created on first use). A call splits its
//! buffer into at most `depth` aligned pieces, submits them all, runs the caller's work (hashing
//! the chunk) while the device moves them, and returns only when every piece has completed.
//! That last rule is what makes the borrowed buffer sound: the kernel never holds a pointer into
//! it after the call returns. If the ring ever fails in a way that could leave requests in
//! flight, the process aborts rather than hand the memory back.
//!
//! Where the kernel refuses io_uring (`ENOSYS`, `EPERM` under seccomp profiles such as
//! Docker's default) or `BLIT_IO_URING=0` is set, the same calls fall back to `pread`/`pwrite`
//! on the same `O_DIRECT` descriptor, one request at a time per thread.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;

/// Requests per ring: the largest `--io-depth`.
const RING_ENTRIES: u32 = blitx_core::session::IO_DEPTH_MAX;
// A request's tag keeps its piece number in the low 8 bits.
const _: () = assert!(RING_ENTRIES <= 256);
/// Direct I/O lengths and offsets are multiples of this (the largest logical block size we
/// accept; see `direct::DirectFile`).
const PIECE_ALIGN: usize = 4096;

thread_local! {
    static RING: RefCell<Option<io_uring::IoUring>> = const { RefCell::new(None) };
    static NEXT_CALL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether io_uring is usable here: probed once per process.
fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("BLIT_IO_URING").is_some_and(|v| v == "0") {
            tracing::info!("io_uring disabled by BLIT_IO_URING=0: direct I/O uses pread/pwrite");
            return false;
        }
        let ring = match io_uring::IoUring::new(RING_ENTRIES) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!("io_uring unavailable ({e}): direct I/O uses pread/pwrite");
                return false;
            }
        };
        // READ and WRITE came in Linux 5.6; probing came in 5.6 too.
        let mut probe = io_uring::Probe::new();
        let ok = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(io_uring::opcode::Read::CODE)
            && probe.is_supported(io_uring::opcode::Write::CODE);
        if !ok {
            tracing::info!("io_uring without READ/WRITE here: direct I/O uses pread/pwrite");
        }
        ok
    })
}

/// The engine behind direct I/O, for reports.
pub fn engine() -> &'static str {
    if available() { "io_uring" } else { "pread/pwrite" }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

/// Writes all of `data` at `offset`, with up to `depth` requests in flight, calling `during`
/// once the requests are submitted (and before waiting for them).
pub fn write_all_at(
    fd: BorrowedFd<'_>,
    data: &[u8],
    offset: u64,
    depth: u32,
    during: impl FnOnce(),
) -> io::Result<()> {
    let done =
        transfer(fd, data.as_ptr().cast_mut(), data.len(), offset, depth, Dir::Write, during)?;
    if done < data.len() {
        // A short direct write (e.g. the disk filled up mid-request): finish it synchronously,
        // which reports the error.
        let mut rest = &data[done..];
        let mut at = offset + done as u64;
        while !rest.is_empty() {
            match rustix::io::pwrite(fd, rest, at) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote nothing"));
                }
                Ok(n) => {
                    rest = &rest[n..];
                    at += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Reads into `buf` from `offset` with up to `depth` requests in flight; returns the number of
/// leading bytes filled (less than `buf.len()` only at the end of the file).
pub fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64, depth: u32) -> io::Result<usize> {
    transfer(fd, buf.as_mut_ptr(), buf.len(), offset, depth, Dir::Read, || {})
}

/// Piece sizes: `len` split into at most `depth` pieces, each a multiple of `PIECE_ALIGN`
/// except possibly the last (which ends where the caller's aligned buffer ends).
fn piece_bytes(len: usize, depth: u32) -> usize {
    len.div_ceil(depth.clamp(1, RING_ENTRIES) as usize)
        .next_multiple_of(PIECE_ALIGN)
        .max(PIECE_ALIGN)
}

/// Moves `len` bytes at `ptr` to or from the file. Returns how many leading bytes moved: all
/// of them, or fewer when a piece came back short (end of file, a full disk); pieces after a
/// short one are not counted.
fn transfer(
    fd: BorrowedFd<'_>,
    ptr: *mut u8,
    len: usize,
    offset: u64,
    depth: u32,
    dir: Dir,
    during: impl FnOnce(),
) -> io::Result<usize> {
    RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() && len > 0 && available() {
            *slot = io_uring::IoUring::new(RING_ENTRIES).ok();
        }
        match slot.as_mut().filter(|_| len > 0) {
            Some(ring) => submit_and_reap(ring, fd, ptr, len, offset, depth, dir, during),
            // No ring here (or nothing to move): the caller's work, then plain system calls.
            None => {
                during();
                sync_transfer(fd, ptr, len, offset, dir)
            }
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn submit_and_reap(
    ring: &mut io_uring::IoUring,
    fd: BorrowedFd<'_>,
    ptr: *mut u8,
    len: usize,
    offset: u64,
    depth: u32,
    dir: Dir,
    during: impl FnOnce(),
) -> io::Result<usize> {
    let piece = piece_bytes(len, depth);
    let pieces = len.div_ceil(piece);
    // Each call tags its requests with a number of its own, so a completion can never be taken
    // for another call's (every call reaps all of its own before it returns).
    let call = NEXT_CALL.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n
    });
    let tag = |i: usize| (call << 8) | i as u64;
    let target = io_uring::types::Fd(fd.as_raw_fd());
    {
        let mut sq = ring.submission();
        for i in 0..pieces {
            let at = i * piece;
            let n = piece.min(len - at) as u32;
            // SAFETY: `ptr + at .. + n` lies within the caller's buffer, which outlives every
            // request: this function returns only after all `pieces` completions are reaped
            // (or aborts the process).
            let entry = match dir {
                Dir::Write => {
                    io_uring::opcode::Write::new(target, unsafe { ptr.add(at) }.cast_const(), n)
                        .offset(offset + at as u64)
                        .build()
                }
                Dir::Read => io_uring::opcode::Read::new(target, unsafe { ptr.add(at) }, n)
                    .offset(offset + at as u64)
                    .build(),
            }
            .user_data(tag(i));
            // SAFETY: as above; the queue has RING_ENTRIES ≥ pieces free entries because every
            // earlier call reaped all of its requests.
            if unsafe { sq.push(&entry) }.is_err() {
                std::process::abort();
            }
        }
    }
    // The caller's work runs while the device moves the data. Should it panic, every request
    // is still reaped before the panic goes on: the buffer is never handed back in flight.
    let during = std::panic::catch_unwind(std::panic::AssertUnwindSafe(during));
    let mut results = [0i32; RING_ENTRIES as usize];
    let mut reaped = 0;
    while reaped < pieces {
        match ring.submit_and_wait(pieces - reaped) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(
                        rustix::io::Errno::INTR
                            | rustix::io::Errno::AGAIN
                            | rustix::io::Errno::BUSY
                    )
                ) => {}
            Err(e) => {
                // Requests may be in flight into the caller's buffer; it cannot be handed back.
                eprintln!("blit: io_uring_enter failed with requests in flight ({e}); aborting");
                std::process::abort();
            }
        }
        for cqe in ring.completion() {
            let (c, i) = (cqe.user_data() >> 8, (cqe.user_data() & 0xff) as usize);
            if c == call && i < pieces {
                results[i] = cqe.result();
                reaped += 1;
            }
        }
    }
    if let Err(panic) = during {
        std::panic::resume_unwind(panic);
    }
    let mut done = 0;
    for (i, &r) in results[..pieces].iter().enumerate() {
        let want = piece.min(len - i * piece);
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r));
        }
        done += r as usize;
        if (r as usize) < want {
            break;
        }
    }
    Ok(done)
}

/// The fallback: one `pread`/`pwrite` loop on the direct descriptor.
fn sync_transfer(
    fd: BorrowedFd<'_>,
    ptr: *mut u8,
    len: usize,
    offset: u64,
    dir: Dir,
) -> io::Result<usize> {
    let mut done = 0;
    while done < len {
        // SAFETY: `ptr .. ptr + len` is the caller's buffer (shared for writes, exclusive for
        // reads), borrowed for this call.
        let r = match dir {
            Dir::Write => {
                let s = unsafe { std::slice::from_raw_parts(ptr.add(done), len - done) };
                rustix::io::pwrite(fd, s, offset + done as u64)
            }
            Dir::Read => {
                let s = unsafe { std::slice::from_raw_parts_mut(ptr.add(done), len - done) };
                rustix::io::pread(fd, s, offset + done as u64)
            }
        };
        match r {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pieces_are_aligned_and_at_most_depth() {
        for (len, depth) in [(4 << 20, 4), (4 << 20, 1), (4096, 8), (12288, 64), (4 << 20, 3)] {
            let p = piece_bytes(len, depth);
            assert_eq!(p % PIECE_ALIGN, 0);
            assert!(len.div_ceil(p) <= depth as usize, "{len} {depth}");
        }
    }

    /// A panic in the caller's work while requests are in flight is carried on only after all
    /// of them completed, and the thread's ring is still right for the next call (its stale
    /// completions cannot be taken for a later call's).
    #[test]
    fn a_panic_during_the_requests_waits_for_them() {
        let f = tempfile::tempfile().expect("temp file");
        let data = vec![7u8; 1 << 20];
        let r = std::panic::catch_unwind(|| {
            write_all_at(f.as_fd(), &data, 0, 8, || panic!("hashing failed"))
        });
        assert!(r.is_err(), "the panic was swallowed");
        let other = vec![9u8; 256 << 10];
        write_all_at(f.as_fd(), &other, 1 << 20, 4, || {}).expect("write after a panic");
        let mut back = vec![0u8; (1 << 20) + (256 << 10)];
        let n = read_at(f.as_fd(), &mut back, 0, 4).expect("read");
        assert_eq!(n, back.len());
        assert!(back[..1 << 20].iter().all(|&b| b == 7) && back[1 << 20..].iter().all(|&b| b == 9));
    }
}
