//! Small file-system helpers shared by the walk (source side) and the storage engine (target
//! side): confined directory opening and stat → manifest conversion. All path resolution is
//! relative to an open directory handle; nothing here canonicalizes paths.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use blitx_core::RelPath;
use blitx_core::manifest::{Entry, EntryKind, InodeKey, Special, TargetEntry, Timestamp};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Statx, StatxFlags};

/// Opens directory `rel` below the directory `root`. With `confine`, the kernel refuses any
/// resolution that leaves `root` or crosses a symlink (openat2 RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS), which is how a daemon keeps clients inside its export root.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &RelPath, confine: bool) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if confine {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(root, rel.as_path(), flags, Mode::empty(), how) {
            Err(rustix::io::Errno::NOSYS) => {}
            other => return other.map_err(io::Error::from),
        }
        // openat2 missing (kernel < 5.6): walk component by component with O_NOFOLLOW, which
        // gives the same guarantee for paths that RelPath already validated.
        let mut fd = rustix::fs::openat(root, ".", flags, Mode::empty())?;
        for c in rel.components() {
            fd = rustix::fs::openat(&fd, c, flags, Mode::empty())?;
        }
        return Ok(fd);
    }
    Ok(rustix::fs::openat(root, rel.as_path(), flags, Mode::empty())?)
}

/// Stats `name` in directory `dir` without following a final symlink.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Statx> {
    Ok(rustix::fs::statx(dir, os(name), AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)?)
}

/// A file name as an `OsStr` (Unix names are bytes).
pub fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

pub fn kind_of(mode: u32) -> EntryKind {
    match mode & libc_s::S_IFMT {
        libc_s::S_IFREG => EntryKind::File,
        libc_s::S_IFDIR => EntryKind::Dir,
        libc_s::S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Special,
    }
}

/// What a special file is (`None` for files, directories and symlinks).
pub fn special_of(st: &Statx) -> Option<Special> {
    let rdev = || rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor);
    match u32::from(st.stx_mode) & libc_s::S_IFMT {
        0o010000 => Some(Special::Fifo),
        0o140000 => Some(Special::Socket),
        0o020000 => Some(Special::Char { rdev: rdev() }),
        0o060000 => Some(Special::Block { rdev: rdev() }),
        _ => None,
    }
}

mod libc_s {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFLNK: u32 = 0o120000;
}

pub fn mtime_of(st: &Statx) -> Timestamp {
    Timestamp { sec: st.stx_mtime.tv_sec, nsec: st.stx_mtime.tv_nsec }
}

fn dev_of(st: &Statx) -> u64 {
    (u64::from(st.stx_dev_major) << 32) | u64::from(st.stx_dev_minor)
}

/// The inode key of a file with several links (used for hard-link detection).
pub fn inode_of(st: &Statx) -> Option<InodeKey> {
    let kind = kind_of(u32::from(st.stx_mode));
    (kind == EntryKind::File && st.stx_nlink > 1)
        .then(|| InodeKey { dev: dev_of(st), ino: st.stx_ino })
}

/// Builds a source manifest entry from a stat of `name` in `dir`.
pub fn entry_from_stat(
    dir: BorrowedFd<'_>,
    id: u64,
    path: RelPath,
    name: &[u8],
    st: &Statx,
) -> io::Result<Entry> {
    let mode = u32::from(st.stx_mode);
    let kind = kind_of(mode);
    let link_target = if kind == EntryKind::Symlink { Some(read_link(dir, name)?) } else { None };
    let size_bytes = if kind == EntryKind::File { st.stx_size } else { 0 };
    Ok(Entry {
        id,
        path,
        kind,
        size_bytes,
        mtime: mtime_of(st),
        mode: mode & 0o7777,
        uid: st.stx_uid,
        gid: st.stx_gid,
        link_target,
        inode: inode_of(st),
        sparse: kind == EntryKind::File && st.stx_blocks.saturating_mul(512) < st.stx_size,
        content_hash: None,
        xattrs: Vec::new(),
        special: special_of(st),
    })
}

/// Builds the target-side view of an existing path.
pub fn target_from_stat(dir: BorrowedFd<'_>, name: &[u8], st: &Statx) -> io::Result<TargetEntry> {
    let mode = u32::from(st.stx_mode);
    let kind = kind_of(mode);
    let link_target = if kind == EntryKind::Symlink { Some(read_link(dir, name)?) } else { None };
    Ok(TargetEntry {
        name: name.to_vec(),
        kind,
        size_bytes: if kind == EntryKind::File { st.stx_size } else { 0 },
        mtime: mtime_of(st),
        mode: mode & 0o7777,
        uid: st.stx_uid,
        gid: st.stx_gid,
        link_target,
        inode: (kind == EntryKind::File).then(|| InodeKey { dev: dev_of(st), ino: st.stx_ino }),
        content_hash: None,
        xattrs: None,
        special: special_of(st),
    })
}

pub fn read_link(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    let target = rustix::fs::readlinkat(dir, os(name), Vec::new())?;
    Ok(target.into_bytes())
}

/// Reads every entry name of an open directory (without `.` and `..`).
pub fn read_dir_names(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir.as_fd())?;
    while let Some(item) = d.read() {
        let item = item?;
        let name = item.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(name.to_vec());
    }
    Ok(names)
}

/// Temporary files are named `.NAME.PID.N.blit-tmp` in their file's directory.
pub const TEMP_SUFFIX: &str = ".blit-tmp";
/// ... and carry this extended attribute while they are written, so a file left behind by a
/// crash is told apart from a user's file that merely has such a name.
pub const TEMP_XATTR: &str = "user.blit.tmp";

/// True for names of blit's temporary files (see [`is_debris`] for the marker).
pub fn is_temp_name(name: &[u8]) -> bool {
    name.first() == Some(&b'.') && name.ends_with(TEMP_SUFFIX.as_bytes())
}

/// The process id in a temporary file's name (`.NAME.PID.N.blit-tmp`).
pub fn temp_pid(name: &[u8]) -> Option<u32> {
    let stem = name.strip_suffix(TEMP_SUFFIX.as_bytes())?;
    let mut parts = stem.rsplitn(3, |&b| b == b'.');
    let _seq = parts.next()?;
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

/// Marks an open temporary file as blit's. File systems without user extended attributes
/// cannot carry the mark; files there are never taken for debris.
pub fn mark_temp(fd: BorrowedFd<'_>) {
    let _ = rustix::fs::fsetxattr(fd, TEMP_XATTR, b"1", rustix::fs::XattrFlags::empty());
}

/// Removes the mark (and a resumable file's journal) before a temporary file gets its real
/// name.
pub fn unmark_temp(fd: BorrowedFd<'_>) -> io::Result<()> {
    for attr in [PART_XATTR, TEMP_XATTR] {
        match rustix::fs::fremovexattr(fd, attr) {
            Ok(()) | Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A kept partial file's journal ([`blitx_session::resume::Journal`]): which chunks it holds,
/// and of which source file.
pub const PART_XATTR: &str = "user.blit.part";

/// Saves a partial file's journal (replacing the last one).
pub fn save_journal(
    fd: BorrowedFd<'_>,
    journal: &blitx_session::resume::Journal,
) -> io::Result<()> {
    rustix::fs::fsetxattr(fd, PART_XATTR, &journal.encode(), rustix::fs::XattrFlags::empty())?;
    Ok(())
}

/// The journal of a partial file, if it has one that decodes.
pub fn load_journal(fd: BorrowedFd<'_>) -> Option<blitx_session::resume::Journal> {
    let mut buf = vec![0u8; blitx_session::resume::JOURNAL_BYTES_MAX];
    let n = rustix::fs::fgetxattr(fd, PART_XATTR, &mut buf[..]).ok()?;
    blitx_session::resume::Journal::decode(&buf[..n])
}

/// True when `name` in `dir` is a temporary file left by a blit transfer that never finished:
/// a regular file with a temporary name *and* the mark. Never true for a user's file.
pub fn is_debris(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    if !is_temp_name(name) {
        return false;
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rustix::fs::openat(dir, os(name), flags, Mode::empty()) else { return false };
    check_regular(&fd).is_ok() && rustix::fs::fgetxattr(&fd, TEMP_XATTR, &mut [0u8; 8][..]).is_ok()
}

/// A file that was expected to be regular and is not (it was swapped since it was listed).
#[derive(Debug, thiserror::Error)]
#[error("is no longer a regular file (now a {0}); not read")]
pub struct NotRegular(&'static str);

/// Checks that an open descriptor is a regular file. Opened with `O_NONBLOCK`, a FIFO or
/// device swapped in for a listed file is refused here instead of blocking a reader forever.
pub fn check_regular(fd: &OwnedFd) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let kind = match st.st_mode & libc_s::S_IFMT {
        libc_s::S_IFREG => return Ok(()),
        libc_s::S_IFDIR => "directory",
        libc_s::S_IFLNK => "symlink",
        0o010000 => "FIFO",
        0o140000 => "socket",
        0o020000 => "character device",
        0o060000 => "block device",
        _ => "special file",
    };
    Err(io::Error::new(io::ErrorKind::InvalidData, NotRegular(kind)))
}

/// Opens a listed regular file for reading, relative to its directory: never following a
/// symlink, never blocking in open (FIFOs), and refusing anything but a regular file.
pub fn open_regular(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(dir, os(name), flags, Mode::empty())?;
    check_regular(&fd)?;
    Ok(fd)
}

/// xxh3-128 of a whole file (for `--checksum`), read in bounded pieces.
pub fn hash_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<u128> {
    let fd = open_regular(dir, name)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = rustix::io::read(&fd, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.digest128())
}
