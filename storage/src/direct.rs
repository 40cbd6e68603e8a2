//! Direct I/O (`--io auto|buffered|direct`): which files bypass the page cache, and their
//! aligned reads and writes.
//!
//! A file that qualifies gets a second descriptor opened with `O_DIRECT` next to its ordinary
//! one (same inode, checked). Chunks move between that descriptor and the transport's pool
//! slots — page-aligned, chunk-sized — through io_uring ([`crate::uring`]), with the file's
//! last, partial chunk rounded up to the alignment: a read stops at the end of the file, a
//! write pads with zeros and the target cuts the file back to its size before the rename. The
//! ordinary descriptor keeps everything else (metadata, `fsync`, preallocation).
//!
//! Which files: chunked, non-sparse ones (small files travel in bundles; a sparse file's holes
//! are kept by skipping zero blocks, which needs the page cache), on a file system that accepts
//! `O_DIRECT` with an alignment our 4 KiB-aligned buffers meet. `auto` also requires
//! [`DIRECT_IO_AUTO_MIN_BYTES`] and a local disk file system it knows (ext4, XFS, F2FS: not
//! tmpfs, where direct I/O only adds a copy, nor network, FUSE or btrfs file systems).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::fsys;
use blitx_core::session::{DIRECT_IO_AUTO_MIN_BYTES, IoMode};
use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};

use crate::uring;

/// The largest alignment a file system may demand: pool slots are page-aligned, chunk sizes are
/// multiples of 4096.
const ALIGN_MAX: usize = 4096;

/// `statfs` magic numbers of the file systems whose "blocks" are page-cache pages.
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// `statfs` magic numbers of the disk file systems `auto` goes direct on: ext2/3/4, XFS, F2FS.
/// Not network or FUSE file systems (their `O_DIRECT` is uncached synchronous I/O with no
/// alignment report), and not btrfs (data checksums: a buffer that changes during a direct
/// write, as a remote-writable RDMA ring can, leaves checksum errors behind). `--io direct`
/// still goes direct wherever the file system accepts it.
const EXT4_MAGIC: u64 = 0xEF53;
const XFS_MAGIC: u64 = 0x5846_5342;
const F2FS_MAGIC: u64 = 0xF2F5_2010;

/// Whether `auto` may go direct on `file`'s file system.
fn auto_direct_fs(file: &File) -> bool {
    rustix::fs::fstatfs(file)
        .is_ok_and(|st| matches!(st.f_type as u64, EXT4_MAGIC | XFS_MAGIC | F2FS_MAGIC))
}

/// Whether `file` lives in memory (tmpfs, ramfs).
pub fn in_memory_fs(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|st| {
        let kind = st.f_type as u64;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

/// Whether a file of this shape is a candidate for direct I/O under `mode` (the file system
/// still has to accept it).
pub fn wants_direct(mode: IoMode, size_bytes: u64, sparse: bool) -> bool {
    match mode {
        IoMode::Buffered => false,
        IoMode::Direct => !sparse && size_bytes > 0,
        IoMode::Auto => !sparse && size_bytes >= DIRECT_IO_AUTO_MIN_BYTES,
    }
}

/// A file's `O_DIRECT` descriptor.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    align: usize,
    depth: u32,
}

impl DirectFile {
    /// Opens `name` in `dir` again with `O_DIRECT`, for writing or for reading, when `mode`
    /// and the file system allow it; `file` is the descriptor already open on that name (the
    /// new one must reach the same inode). `None`: use the page cache.
    pub fn open(
        dir: BorrowedFd<'_>,
        name: &[u8],
        file: &File,
        mode: IoMode,
        depth: u32,
        write: bool,
    ) -> Option<DirectFile> {
        if mode == IoMode::Auto && !auto_direct_fs(file) {
            return None;
        }
        let access = if write { OFlags::WRONLY } else { OFlags::RDONLY };
        // NONBLOCK: a FIFO swapped in under the name must not hold this thread in open().
        let flags = access | OFlags::DIRECT | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        // EINVAL: this file system does not do direct I/O.
        let fd = rustix::fs::openat(dir, fsys::os(name), flags, Mode::empty()).ok()?;
        let direct = File::from(fd);
        let (a, b) = (rustix::fs::fstat(file).ok()?, rustix::fs::fstat(&direct).ok()?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            // Renamed over since it was opened: not the file we are copying.
            return None;
        }
        // The same regular file: now blocking I/O (io_uring honours O_NONBLOCK on regular files
        // on kernels before 5.13 and would fail reads with EAGAIN).
        rustix::fs::fcntl_setfl(&direct, OFlags::DIRECT).ok()?;
        let align = dio_align(&direct)?;
        Some(DirectFile { file: direct, align, depth })
    }

    /// Whether a buffer at `ptr` holding `len` bytes in `capacity` can move directly.
    pub fn fits(&self, ptr: *const u8, capacity: usize, len: usize) -> bool {
        (ptr as usize).is_multiple_of(self.align) && len.next_multiple_of(self.align) <= capacity
    }

    /// Writes `buf[..len]` at `offset` (a multiple of the alignment), padding to the alignment
    /// with zeros inside `buf`; `during` runs while the requests are in flight. The caller
    /// checked [`fits`](Self::fits).
    pub fn write(
        &self,
        buf: &mut [u8],
        len: usize,
        offset: u64,
        during: impl FnOnce(&[u8]),
    ) -> io::Result<()> {
        let padded = len.next_multiple_of(self.align);
        buf[len..padded].fill(0);
        let data = &buf[..padded];
        uring::write_all_at(self.file.as_fd(), data, offset, self.depth, || during(&data[..len]))
    }

    /// Reads `len` bytes at `offset` into `buf` (whose capacity [`fits`](Self::fits) the padded
    /// length); returns how many of them the file had (fewer: it shrank).
    pub fn read(&self, buf: &mut [u8], len: usize, offset: u64) -> io::Result<usize> {
        let padded = len.next_multiple_of(self.align);
        let n = uring::read_at(self.file.as_fd(), &mut buf[..padded], offset, self.depth)?;
        Ok(n.min(len))
    }
}

/// The alignment direct I/O needs on this descriptor (`statx` `STATX_DIOALIGN`, Linux 6.1;
/// 4096 where the kernel does not say). `None` when it is larger than our buffers guarantee.
fn dio_align(file: &File) -> Option<usize> {
    let st = rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if st.stx_mask & StatxFlags::DIOALIGN.bits() == 0 {
        return Some(ALIGN_MAX);
    }
    let (mem, off) = (st.stx_dio_mem_align as usize, st.stx_dio_offset_align as usize);
    if off == 0 {
        // The file system reports no direct I/O support for this file.
        return None;
    }
    let align = mem.max(off);
    (align.is_power_of_two() && align <= ALIGN_MAX).then_some(align)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_files_go_direct() {
        let big = DIRECT_IO_AUTO_MIN_BYTES;
        assert!(!wants_direct(IoMode::Buffered, big, false));
        assert!(wants_direct(IoMode::Direct, 1, false));
        assert!(!wants_direct(IoMode::Direct, 0, false));
        assert!(!wants_direct(IoMode::Direct, big, true), "sparse files keep their holes");
        assert!(wants_direct(IoMode::Auto, big, false));
        assert!(!wants_direct(IoMode::Auto, big - 1, false));
    }

    /// On a disk file system (the test's temp dir, when it is one) a written file reads back
    /// exactly, with its padded tail cut off by the caller's truncate; on tmpfs `auto` declines.
    #[test]
    fn write_then_read_round_trips_through_the_direct_descriptor() {
        let base = std::env::var_os("BLIT_DIRECT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into());
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        let dfd = rustix::fs::open(dir.path(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
            .expect("open dir");
        let path = dir.path().join("f");
        let file = File::create(&path).expect("create");
        let Some(w) = DirectFile::open(dfd.as_fd(), b"f", &file, IoMode::Direct, 4, true) else {
            eprintln!("SKIPPED: {} does not take O_DIRECT", dir.path().display());
            return;
        };
        let pool = blitx_core::pool::BufferPool::new(2, 1 << 20, false).expect("pool");
        let mut lease = pool.acquire().expect("lease");
        let len = 1_000_003 - 2 * 4096 * 100;
        for (i, b) in lease.full_mut().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        assert!(w.fits(lease.as_ptr(), lease.capacity(), len));
        let mut hashed = 0;
        w.write(lease.full_mut(), len, 0, |d| hashed = d.len()).expect("write");
        assert_eq!(hashed, len);
        rustix::fs::ftruncate(&file, len as u64).expect("truncate");
        let back = std::fs::read(&path).expect("read back");
        assert_eq!(back.len(), len);
        assert!(back.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        let r =
            DirectFile::open(dfd.as_fd(), b"f", &file, IoMode::Direct, 4, false).expect("reopen");
        let mut l2 = pool.acquire().expect("lease");
        l2.full_mut().fill(0);
        let n = r.read(l2.full_mut(), len + 100, 0).expect("read");
        assert_eq!(n, len, "a read past the end stops at the file's size");
        assert!(l2.full()[..len].iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
}
