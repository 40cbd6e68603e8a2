//! Remote operations on what a daemon holds: list (`blit ls`), disk usage (`blit du`), remove
//! (`blit rm`) and make a directory (`blit mkdir`), every one confined to a [`RootDir`].
//!
//! This module owns the file-system side only; the daemon's service (control/src/ops.rs) turns
//! requests into calls here and results into pages. Confinement is the sessions': the path's
//! directory is opened with [`fsys::open_dir_beneath`] (openat2 RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS), its last component is looked at with `statx(AT_SYMLINK_NOFOLLOW)`, and
//! everything below is reached from an open directory handle by one name at a time with
//! `O_NOFOLLOW`: a symlink is listed or removed as a link, never followed.
//!
//! Back of the envelope: a listing page is at most [`PAGE_ENTRIES_MAX`] entries of at most
//! 255 + 4096 bytes (name and link target), under 5 MiB, far below the 64 MiB control message.
//! Memory is the names of the directories on the current path (a recursive walk sorts each
//! directory's names, as `ls` does), bounded by the entry limit the caller passes.
//!
//! `rm -r` ([`Remover`]) removes depth-first through directory descriptors: each step opens a
//! child with `openat(parent, name, O_DIRECTORY | O_NOFOLLOW)`, so a directory swapped for a
//! symlink between the listing and the step fails to open as a directory and is unlinked as the
//! link it now is; the walk never leaves the tree it started in. It never crosses into another
//! file system (a mount point below is refused), takes the target lock of the directory it
//! removes (a transfer writing there or below excludes it), and holds at most
//! [`REMOVE_DEPTH_MAX`] descriptors.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use blitx_core::RelPath;
use blitx_core::cancel::Cancel;
use blitx_core::manifest::Timestamp;
use rustix::fs::{AtFlags, Mode, OFlags, Statx};
use rustix::io::Errno;

use crate::RootDir;
use crate::fsys;
use crate::lock::{LockError, TargetLock};

/// Entries in one listing page at most (see the module's envelope).
pub const PAGE_ENTRIES_MAX: usize = 1024;
/// Directories below the removed one, at most, that `rm -r` descends (one descriptor each).
pub const REMOVE_DEPTH_MAX: usize = 256;
/// Per-directory usage records in one page at most.
pub const USAGE_PAGE_MAX: usize = 1024;

const _: () = assert!(PAGE_ENTRIES_MAX * (255 + 4096 + 128) < 64 << 20);

/// File types as `ls -l` tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileType {
    /// The type of a `st_mode`; `None` for type bits Linux does not define.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & 0o170000 {
            0o100000 => FileType::File,
            0o040000 => FileType::Dir,
            0o120000 => FileType::Symlink,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            _ => return None,
        })
    }

    /// `st_mode`'s type bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::File => 0o100000,
            FileType::Dir => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::Fifo => 0o010000,
            FileType::Socket => 0o140000,
            FileType::CharDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
        }
    }

    /// The first letter of `ls -l`'s mode column.
    pub fn letter(self) -> char {
        match self {
            FileType::File => '-',
            FileType::Dir => 'd',
            FileType::Symlink => 'l',
            FileType::Fifo => 'p',
            FileType::Socket => 's',
            FileType::CharDevice => 'c',
            FileType::BlockDevice => 'b',
        }
    }
}

/// One listed name with what `ls -l` shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The name in its directory (one component).
    pub name: Vec<u8>,
    pub file_type: FileType,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub size_bytes: u64,
    /// Space allocated on disk (`st_blocks * 512`).
    pub allocated_bytes: u64,
    pub mtime: Timestamp,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub link_target: Option<Vec<u8>>,
}

/// One page of a listing: entries of directory `dir` (sorted by name), or, with `is_file`, the
/// one non-directory the request named (`dir` is then its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub dir: RelPath,
    pub entries: Vec<Stat>,
    /// The last page of `dir`.
    pub last_part: bool,
    pub is_file: bool,
}

/// What `du` counts for a tree (hard-linked files once, like du).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Sum of sizes (`du -b`).
    pub apparent_bytes: u64,
    /// Sum of allocated space (`du -B1`).
    pub allocated_bytes: u64,
    /// Non-directories (files, symlinks, special files).
    pub files: u64,
    /// Directories, the tree's top included.
    pub dirs: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.apparent_bytes = self.apparent_bytes.saturating_add(o.apparent_bytes);
        self.allocated_bytes = self.allocated_bytes.saturating_add(o.allocated_bytes);
        self.files = self.files.saturating_add(o.files);
        self.dirs = self.dirs.saturating_add(o.dirs);
    }
}

/// What an operation may visit at most, and when it must stop.
#[derive(Debug, Clone)]
pub struct OpLimits {
    /// Entries an operation may visit (0: no limit; the daemon's `--max-entries`).
    pub entries_max: u64,
    pub cancel: Cancel,
}

/// What `rm` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub files: u64,
    pub dirs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The path, or a directory on the way, cannot be opened beneath the root.
    #[error("cannot resolve {path} below the root: {}", resolve_why(source))]
    Resolve { path: String, source: io::Error },
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: is a directory (remove it with -r)")]
    IsDirectory { path: String },
    #[error("{path}: not a directory")]
    NotDirectory { path: String },
    #[error("{path}: already exists")]
    Exists { path: String },
    #[error("the root itself cannot be removed")]
    RemoveRoot,
    #[error(
        "{path}: another blit transfer is writing into this directory, one above or one below it"
    )]
    Locked { path: String },
    #[error("{path}: on another file system (a mount point); not crossed")]
    MountPoint { path: String },
    #[error("{path}: more than {REMOVE_DEPTH_MAX} directory levels deep; remove it in parts")]
    TooDeep { path: String },
    #[error("more than {max} entries (the daemon's --max-entries)")]
    TooManyEntries { max: u64 },
    #[error("cancelled")]
    Cancelled,
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl OpError {
    /// The errno below, when the error came from one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            OpError::Resolve { source, .. } | OpError::Io { source, .. } => {
                source.raw_os_error().map(Errno::from_raw_os_error)
            }
            _ => None,
        }
    }
}

fn resolve_why(e: &io::Error) -> String {
    match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => {
            "a component is a symlink or not a directory (symlinks are never followed below the root)".into()
        }
        _ => e.to_string(),
    }
}

fn show(p: &RelPath) -> String {
    if p.is_root() { ".".into() } else { p.display() }
}

fn io_err(op: &'static str, path: &RelPath) -> impl FnOnce(Errno) -> OpError + use<> {
    let path = show(path);
    move |e| OpError::Io { op, path, source: e.into() }
}

/// Opens the directory that holds `rel` (beneath `root`); `rel` must not be the root.
fn open_parent(root: &RootDir, rel: &RelPath) -> Result<(OwnedFd, Vec<u8>), OpError> {
    let (parent, name) = rel.split_last().ok_or(OpError::RemoveRoot)?;
    let fd = fsys::open_dir_beneath(root.fd(), &parent, true).map_err(|e| resolved(rel, e))?;
    Ok((fd, name.to_vec()))
}

fn resolved(rel: &RelPath, e: io::Error) -> OpError {
    if e.kind() == io::ErrorKind::NotFound {
        OpError::NotFound { path: show(rel) }
    } else {
        OpError::Resolve { path: show(rel), source: e }
    }
}

fn stat_name(dir: BorrowedFd<'_>, name: &[u8], path: &RelPath) -> Result<Statx, OpError> {
    match fsys::stat_at(dir, name) {
        Ok(st) => Ok(st),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(OpError::NotFound { path: show(path) })
        }
        Err(source) => Err(OpError::Io { op: "stat", path: show(path), source }),
    }
}

fn stat_of(dir: BorrowedFd<'_>, name: &[u8], st: &Statx) -> Stat {
    let mode = u32::from(st.stx_mode);
    // Linux defines no other type bits; a file system that reports others is shown as a file.
    let file_type = FileType::from_mode(mode).unwrap_or(FileType::File);
    let link_target =
        (file_type == FileType::Symlink).then(|| fsys::read_link(dir, name).unwrap_or_default());
    Stat {
        name: name.to_vec(),
        file_type,
        mode: mode & 0o7777,
        size_bytes: st.stx_size,
        allocated_bytes: st.stx_blocks.saturating_mul(512),
        mtime: fsys::mtime_of(st),
        uid: st.stx_uid,
        gid: st.stx_gid,
        nlink: u64::from(st.stx_nlink),
        link_target,
    }
}

/// Counts visited entries against the limit.
struct Budget {
    seen: u64,
    max: u64,
}

impl Budget {
    fn take(&mut self, n: usize) -> Result<(), OpError> {
        self.seen = self.seen.saturating_add(n as u64);
        if self.max > 0 && self.seen > self.max {
            return Err(OpError::TooManyEntries { max: self.max });
        }
        Ok(())
    }
}

/// Names of directory `fd`, sorted bytewise (as `LC_ALL=C ls`).
fn sorted_names(
    fd: &OwnedFd,
    path: &RelPath,
    budget: &mut Budget,
) -> Result<Vec<Vec<u8>>, OpError> {
    let failed =
        |e: Errno| OpError::Io { op: "read directory", path: show(path), source: e.into() };
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::read_from(fd.as_fd()).map_err(failed)?;
    while let Some(item) = d.read() {
        let item = item.map_err(failed)?;
        let name = item.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        // Counted as read: a huge directory stops at the limit, not after it was held whole.
        budget.take(1)?;
        names.push(name.to_vec());
    }
    names.sort_unstable();
    Ok(names)
}

/// Lists `rel` (a directory's entries, or the one non-directory it names), recursively with
/// `recursive`, handing `page` one page at a time. `page` returning false stops the walk (the
/// reader is gone). Directories are visited in `ls -R` order (a directory, then its
/// subdirectories in name order), each reopened from the root with confinement, so a
/// subdirectory swapped for a symlink during the walk is refused, not followed.
pub fn list(
    root: &RootDir,
    rel: &RelPath,
    recursive: bool,
    limits: &OpLimits,
    page: &mut dyn FnMut(ListPage) -> bool,
) -> Result<(), OpError> {
    let mut budget = Budget { seen: 0, max: limits.entries_max };
    if let Some((parent, name)) = rel.split_last() {
        let pfd = fsys::open_dir_beneath(root.fd(), &parent, true).map_err(|e| resolved(rel, e))?;
        let st = stat_name(pfd.as_fd(), name, rel)?;
        if FileType::from_mode(u32::from(st.stx_mode)) != Some(FileType::Dir) {
            let entry = stat_of(pfd.as_fd(), name, &st);
            let p =
                ListPage { dir: rel.clone(), entries: vec![entry], last_part: true, is_file: true };
            page(p);
            return Ok(());
        }
    }
    let mut pending = vec![rel.clone()];
    while let Some(dir) = pending.pop() {
        if limits.cancel.is_fired() {
            return Err(OpError::Cancelled);
        }
        let fd = match fsys::open_dir_beneath(root.fd(), &dir, true) {
            Ok(fd) => fd,
            // The top must open; a subdirectory that vanished or was swapped for a symlink
            // since it was listed is skipped, as `ls -R` skips what it cannot open.
            Err(e) if dir == *rel => return Err(resolved(rel, e)),
            Err(e) => {
                tracing::debug!("ls -R: skipped {}: {e}", dir.display());
                continue;
            }
        };
        let names = sorted_names(&fd, &dir, &mut budget)?;
        let mut subdirs = Vec::new();
        let mut entries = Vec::with_capacity(names.len().min(PAGE_ENTRIES_MAX));
        let total = names.len();
        for (i, name) in names.into_iter().enumerate() {
            // A name removed since the directory was read is left out.
            let Ok(st) = fsys::stat_at(fd.as_fd(), &name) else { continue };
            let s = stat_of(fd.as_fd(), &name, &st);
            if recursive && s.file_type == FileType::Dir {
                let child = dir.join(&name).map_err(|e| OpError::Io {
                    op: "list",
                    path: show(&dir),
                    source: io::Error::other(e),
                })?;
                subdirs.push(child);
            }
            entries.push(s);
            if entries.len() == PAGE_ENTRIES_MAX && i + 1 < total {
                let p = ListPage {
                    dir: dir.clone(),
                    entries: std::mem::take(&mut entries),
                    last_part: false,
                    is_file: false,
                };
                if !page(p) {
                    return Err(OpError::Cancelled);
                }
            }
        }
        let p = ListPage { dir: dir.clone(), entries, last_part: true, is_file: false };
        if !page(p) {
            return Err(OpError::Cancelled);
        }
        // Popped last first: the first subdirectory is listed next.
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Disk usage of `rel` (a directory tree, or one file). With `each_dir`, every directory's
/// total is handed over once its subtree is counted (`du` without `-s`), the top's last;
/// returning false stops the walk. Hard-linked files are counted once. Mount points below are
/// counted like any directory (as `du` does without `-x`).
pub fn usage(
    root: &RootDir,
    rel: &RelPath,
    limits: &OpLimits,
    each_dir: &mut dyn FnMut(&RelPath, &Usage) -> bool,
) -> Result<Usage, OpError> {
    let mut budget = Budget { seen: 0, max: limits.entries_max };
    let mut linked: HashSet<(u32, u32, u64)> = HashSet::new();
    let mut count = |st: &Statx, u: &mut Usage| {
        if st.stx_nlink > 1
            && FileType::from_mode(u32::from(st.stx_mode)) != Some(FileType::Dir)
            && !linked.insert((st.stx_dev_major, st.stx_dev_minor, st.stx_ino))
        {
            return;
        }
        u.apparent_bytes = u.apparent_bytes.saturating_add(st.stx_size);
        u.allocated_bytes = u.allocated_bytes.saturating_add(st.stx_blocks.saturating_mul(512));
        if FileType::from_mode(u32::from(st.stx_mode)) == Some(FileType::Dir) {
            u.dirs += 1;
        } else {
            u.files += 1;
        }
    };
    if let Some((parent, name)) = rel.split_last() {
        let pfd = fsys::open_dir_beneath(root.fd(), &parent, true).map_err(|e| resolved(rel, e))?;
        let st = stat_name(pfd.as_fd(), name, rel)?;
        if FileType::from_mode(u32::from(st.stx_mode)) != Some(FileType::Dir) {
            let mut u = Usage::default();
            count(&st, &mut u);
            return Ok(u);
        }
    }
    struct Frame {
        path: RelPath,
        subdirs: Vec<Vec<u8>>,
        total: Usage,
    }
    let open = |path: &RelPath,
                budget: &mut Budget,
                count: &mut dyn FnMut(&Statx, &mut Usage)|
     -> Result<Option<Frame>, OpError> {
        let fd = match fsys::open_dir_beneath(root.fd(), path, true) {
            Ok(fd) => fd,
            Err(e) if path == rel => return Err(resolved(rel, e)),
            Err(e) => {
                tracing::debug!("du: skipped {}: {e}", path.display());
                return Ok(None);
            }
        };
        let st =
            rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, rustix::fs::StatxFlags::BASIC_STATS)
                .map_err(io_err("stat", path))?;
        let mut total = Usage::default();
        count(&st, &mut total);
        let mut subdirs = Vec::new();
        for name in sorted_names(&fd, path, budget)? {
            let Ok(st) = fsys::stat_at(fd.as_fd(), &name) else { continue };
            if FileType::from_mode(u32::from(st.stx_mode)) == Some(FileType::Dir) {
                subdirs.push(name);
            } else {
                count(&st, &mut total);
            }
        }
        subdirs.reverse();
        Ok(Some(Frame { path: path.clone(), subdirs, total }))
    };
    let Some(top) = open(rel, &mut budget, &mut count)? else { return Ok(Usage::default()) };
    let mut stack = vec![top];
    loop {
        if limits.cancel.is_fired() {
            return Err(OpError::Cancelled);
        }
        let Some(frame) = stack.last_mut() else { return Ok(Usage::default()) };
        if let Some(name) = frame.subdirs.pop() {
            let child = frame.path.join(&name).map_err(|e| OpError::Io {
                op: "du",
                path: show(&frame.path),
                source: io::Error::other(e),
            })?;
            if let Some(f) = open(&child, &mut budget, &mut count)? {
                stack.push(f);
            }
            continue;
        }
        let Some(done) = stack.pop() else { return Ok(Usage::default()) };
        if !each_dir(&done.path, &done.total) {
            return Err(OpError::Cancelled);
        }
        match stack.last_mut() {
            Some(parent) => parent.total.add(&done.total),
            None => return Ok(done.total),
        }
    }
}

/// Makes directory `rel` (mode 0755 less the umask). With `parents`, missing directories on the
/// way are made and an existing directory is no error (`mkdir -p`). `owner`: who the made
/// directories belong to (a root daemon gives them the export root's owner). Returns how many
/// directories were made.
pub fn make_dir(
    root: &RootDir,
    rel: &RelPath,
    parents: bool,
    owner: Option<(u32, u32)>,
) -> Result<u64, OpError> {
    if rel.is_root() {
        return if parents { Ok(0) } else { Err(OpError::Exists { path: ".".into() }) };
    }
    let mode = Mode::from_raw_mode(0o755);
    let mut made = 0;
    let mut cur =
        root.dup().map_err(|source| OpError::Io { op: "open", path: ".".into(), source })?;
    let mut walked = RelPath::root();
    let last = rel.depth();
    for (i, c) in rel.components().enumerate() {
        walked = walked.join(c).map_err(|e| OpError::Io {
            op: "mkdir",
            path: show(rel),
            source: io::Error::other(e),
        })?;
        let is_last = i + 1 == last;
        if parents || is_last {
            match rustix::fs::mkdirat(&cur, fsys::os(c), mode) {
                Ok(()) => {
                    made += 1;
                    if let Some((u, g)) = owner {
                        let flags =
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                        let fd = rustix::fs::openat(&cur, fsys::os(c), flags, Mode::empty())
                            .map_err(io_err("open", &walked))?;
                        rustix::fs::fchown(
                            &fd,
                            Some(rustix::process::Uid::from_raw(u)),
                            Some(rustix::process::Gid::from_raw(g)),
                        )
                        .map_err(io_err("chown", &walked))?;
                    }
                }
                Err(Errno::EXIST) if is_last && !parents => {
                    return Err(OpError::Exists { path: show(rel) });
                }
                Err(Errno::EXIST) => {}
                Err(Errno::NOENT) => return Err(OpError::NotFound { path: show(&walked) }),
                Err(e) => return Err(io_err("mkdir", &walked)(e)),
            }
        }
        let name = RelPath::root().join(c).map_err(|e| OpError::Io {
            op: "mkdir",
            path: show(rel),
            source: io::Error::other(e),
        })?;
        cur = match fsys::open_dir_beneath(cur.as_fd(), &name, true) {
            Ok(fd) => fd,
            // O_NOFOLLOW | O_DIRECTORY says ENOTDIR for a symlink too: tell them apart.
            Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                let link = fsys::stat_at(cur.as_fd(), c).is_ok_and(|st| {
                    FileType::from_mode(u32::from(st.stx_mode)) == Some(FileType::Symlink)
                });
                return Err(if link {
                    OpError::Resolve { path: show(&walked), source: Errno::LOOP.into() }
                } else {
                    OpError::NotDirectory { path: show(&walked) }
                });
            }
            Err(e) => return Err(resolved(&walked, e)),
        };
    }
    Ok(made)
}

/// One directory being emptied: its handle and the names still to remove.
struct Level {
    fd: OwnedFd,
    path: RelPath,
    names: Vec<Vec<u8>>,
}

/// `rm [-r]` as a sequence of small steps ([`Remover::step`]), each one system call or two
/// relative to a directory handle already inside the tree (tests interleave changes between
/// steps to check that no swap can lead the removal out of it).
pub struct Remover {
    /// The directory that holds the removed path (never itself removed).
    top: OwnedFd,
    name: Vec<u8>,
    path: RelPath,
    recursive: bool,
    /// The file system the removal stays on.
    dev: (u32, u32),
    stack: Vec<Level>,
    budget: Budget,
    removed: Removed,
    done: bool,
    _lock: Option<TargetLock>,
}

impl std::fmt::Debug for Remover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remover({})", self.path.display())
    }
}

impl Remover {
    /// Resolves `rel` beneath `root` and checks what can be checked before anything is removed:
    /// not the root, present, a directory only with `recursive`, and (for a directory) not
    /// written into by a transfer: its target lock is taken and held until the end. A file's
    /// directory is locked shared, so a transfer writing into it (or above it) excludes the
    /// removal, and one writing beside or below it does not.
    pub fn new(
        root: &RootDir,
        rel: &RelPath,
        recursive: bool,
        limits: &OpLimits,
    ) -> Result<Remover, OpError> {
        let (top, name) = open_parent(root, rel)?;
        let st = stat_name(top.as_fd(), &name, rel)?;
        let is_dir = FileType::from_mode(u32::from(st.stx_mode)) == Some(FileType::Dir);
        if is_dir && !recursive {
            return Err(OpError::IsDirectory { path: show(rel) });
        }
        let locked = |e: LockError| match e {
            LockError::Busy => OpError::Locked { path: show(rel) },
            LockError::Cancelled => OpError::Cancelled,
            LockError::Io(source) => OpError::Io { op: "lock", path: show(rel), source },
        };
        let mut stack = Vec::new();
        let lock = if is_dir {
            let fd = open_child_dir(top.as_fd(), &name).map_err(io_err("open", rel))?;
            let lock = TargetLock::acquire(fd.as_fd(), None, &limits.cancel).map_err(locked)?;
            stack.push(Level { fd, path: rel.clone(), names: Vec::new() });
            lock
        } else {
            TargetLock::acquire_shared(top.as_fd(), None, &limits.cancel).map_err(locked)?
        };
        let mut r = Remover {
            top,
            name,
            path: rel.clone(),
            recursive,
            dev: (st.stx_dev_major, st.stx_dev_minor),
            stack: Vec::new(),
            budget: Budget { seen: 0, max: limits.entries_max },
            removed: Removed::default(),
            done: false,
            _lock: Some(lock),
        };
        if let Some(level) = stack.pop() {
            let names = sorted_names(&level.fd, rel, &mut r.budget)?;
            r.stack.push(Level { names, ..level });
        }
        Ok(r)
    }

    /// Removes one name (or empties one more level); `Ok(true)` once everything is removed.
    pub fn step(&mut self) -> Result<bool, OpError> {
        if self.done {
            return Ok(true);
        }
        let Some(level) = self.stack.last_mut() else {
            // A non-directory: one unlink.
            let st = stat_name(self.top.as_fd(), &self.name, &self.path)?;
            if FileType::from_mode(u32::from(st.stx_mode)) == Some(FileType::Dir) {
                // Swapped for a directory since it was checked.
                if !self.recursive {
                    return Err(OpError::IsDirectory { path: show(&self.path) });
                }
            }
            rustix::fs::unlinkat(&self.top, fsys::os(&self.name), AtFlags::empty())
                .map_err(io_err("remove", &self.path))?;
            self.removed.files += 1;
            self.done = true;
            return Ok(true);
        };
        let Some(name) = level.names.pop() else {
            // Emptied: remove it from its parent.
            let Some(level) = self.stack.pop() else { return Ok(false) };
            drop(level.fd);
            let parent = self.stack.last().map_or(self.top.as_fd(), |l| l.fd.as_fd());
            let name = level.path.file_name().to_vec();
            rustix::fs::unlinkat(parent, fsys::os(&name), AtFlags::REMOVEDIR)
                .map_err(io_err("remove directory", &level.path))?;
            self.removed.dirs += 1;
            self.done = self.stack.is_empty();
            return Ok(self.done);
        };
        let path = level.path.join(&name).map_err(|e| OpError::Io {
            op: "remove",
            path: show(&level.path),
            source: io::Error::other(e),
        })?;
        let dir = level.fd.as_fd();
        let st = match fsys::stat_at(dir, &name) {
            Ok(st) => st,
            // Gone already: nothing to do.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(OpError::Io { op: "stat", path: show(&path), source }),
        };
        if FileType::from_mode(u32::from(st.stx_mode)) == Some(FileType::Dir) {
            match open_child_dir(dir, &name) {
                Ok(fd) => {
                    let fst = rustix::fs::fstat(&fd).map_err(io_err("stat", &path))?;
                    let dev = (rustix::fs::major(fst.st_dev), rustix::fs::minor(fst.st_dev));
                    if dev != self.dev {
                        return Err(OpError::MountPoint { path: show(&path) });
                    }
                    if self.stack.len() > REMOVE_DEPTH_MAX {
                        return Err(OpError::TooDeep { path: show(&path) });
                    }
                    let names = sorted_names(&fd, &path, &mut self.budget)?;
                    self.stack.push(Level { fd, path, names });
                    return Ok(false);
                }
                // Swapped for a symlink (or a file) since the stat: removed as what it is now.
                Err(Errno::NOTDIR | Errno::LOOP) => {}
                Err(Errno::NOENT) => return Ok(false),
                Err(e) => return Err(io_err("open", &path)(e)),
            }
        }
        let dir = self.stack.last().map_or(self.top.as_fd(), |l| l.fd.as_fd());
        match rustix::fs::unlinkat(dir, fsys::os(&name), AtFlags::empty()) {
            Ok(()) => self.removed.files += 1,
            Err(Errno::NOENT) => {}
            // Swapped for a directory since the stat: look again at the next step.
            Err(Errno::ISDIR) => {
                if let Some(l) = self.stack.last_mut() {
                    l.names.push(name);
                }
            }
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        Ok(false)
    }

    /// Runs every step, stopping at the first error or a cancel.
    pub fn run(mut self, cancel: &Cancel) -> Result<Removed, OpError> {
        while !self.step()? {
            if cancel.is_fired() {
                return Err(OpError::Cancelled);
            }
        }
        Ok(self.removed)
    }

    pub fn removed(&self) -> Removed {
        self.removed
    }
}

/// Opens `name` in `dir` as a directory, never following a symlink.
fn open_child_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, fsys::os(name), flags, Mode::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn p(s: &str) -> RelPath {
        RelPath::parse_str(s).unwrap()
    }

    fn limits() -> OpLimits {
        OpLimits { entries_max: 0, cancel: Cancel::new() }
    }

    fn collect(root: &RootDir, rel: &str, recursive: bool) -> Result<Vec<ListPage>, OpError> {
        let mut pages = Vec::new();
        list(root, &p(rel), recursive, &limits(), &mut |pg| {
            pages.push(pg);
            true
        })?;
        Ok(pages)
    }

    #[test]
    fn list_sorts_pages_and_recurses_in_ls_order() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("b/c")).unwrap();
        std::fs::create_dir_all(t.path().join("a")).unwrap();
        std::fs::write(t.path().join("z"), b"12345").unwrap();
        std::fs::write(t.path().join("b/c/f"), b"1").unwrap();
        symlink("/etc", t.path().join("l")).unwrap();
        for i in 0..PAGE_ENTRIES_MAX + 5 {
            std::fs::write(t.path().join(format!("a/{i:05}")), b"").unwrap();
        }
        let root = RootDir::open(t.path()).unwrap();
        let pages = collect(&root, "", true).unwrap();
        let dirs: Vec<_> =
            pages.iter().map(|pg| (pg.dir.display(), pg.entries.len(), pg.last_part)).collect();
        assert_eq!(
            dirs,
            vec![
                (".".into(), 4, true),
                ("a".into(), PAGE_ENTRIES_MAX, false),
                ("a".into(), 5, true),
                ("b".into(), 1, true),
                ("b/c".into(), 1, true),
            ]
        );
        let names: Vec<_> = pages[0].entries.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, vec![b"a".to_vec(), b"b".to_vec(), b"l".to_vec(), b"z".to_vec()]);
        assert_eq!(pages[0].entries[2].file_type, FileType::Symlink);
        assert_eq!(pages[0].entries[2].link_target.as_deref(), Some(&b"/etc"[..]));
        assert_eq!(pages[0].entries[3].size_bytes, 5);
        // A file names itself; a symlink is listed, not followed.
        let one = collect(&root, "z", false).unwrap();
        assert!(one[0].is_file && one[0].entries[0].name == b"z");
        let link = collect(&root, "l", false).unwrap();
        assert!(link[0].is_file && link[0].entries[0].file_type == FileType::Symlink);
        assert!(matches!(collect(&root, "l/passwd", false), Err(OpError::Resolve { .. })));
        assert!(matches!(collect(&root, "nope", false), Err(OpError::NotFound { .. })));
        // The entry limit holds.
        let few = OpLimits { entries_max: 100, cancel: Cancel::new() };
        let r = list(&root, &p(""), true, &few, &mut |_| true);
        assert!(matches!(r, Err(OpError::TooManyEntries { max: 100 })), "{r:?}");
    }

    #[test]
    fn usage_counts_hard_links_once_and_each_directory_after_its_subtree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d/e")).unwrap();
        std::fs::write(t.path().join("d/f"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(t.path().join("d/f"), t.path().join("d/e/g")).unwrap();
        std::fs::write(t.path().join("h"), b"abc").unwrap();
        let root = RootDir::open(t.path()).unwrap();
        let mut seen = Vec::new();
        let u = usage(&root, &RelPath::root(), &limits(), &mut |path, u| {
            seen.push((path.display(), u.files));
            true
        })
        .unwrap();
        assert_eq!(seen, vec![("d/e".into(), 0), ("d".into(), 1), (".".into(), 2)]);
        assert_eq!((u.files, u.dirs), (2, 3));
        let dir_bytes = std::fs::metadata(t.path()).unwrap().len() * 3;
        assert!(u.apparent_bytes >= 10_003 && u.apparent_bytes <= 10_003 + dir_bytes + 8192);
        assert!(u.allocated_bytes >= 8192, "{u:?}");
        let f = usage(&root, &p("h"), &limits(), &mut |_, _| true).unwrap();
        assert_eq!((f.apparent_bytes, f.files, f.dirs), (3, 1, 0));
    }

    #[test]
    fn make_dir_like_mkdir_and_mkdir_p() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), t.path().join("out")).unwrap();
        std::fs::write(t.path().join("file"), b"").unwrap();
        let root = RootDir::open(t.path()).unwrap();
        assert!(matches!(make_dir(&root, &p("a/b"), false, None), Err(OpError::NotFound { .. })));
        assert_eq!(make_dir(&root, &p("a/b"), true, None).unwrap(), 2);
        assert_eq!(make_dir(&root, &p("a/b"), true, None).unwrap(), 0);
        assert!(matches!(make_dir(&root, &p("a/b"), false, None), Err(OpError::Exists { .. })));
        assert_eq!(make_dir(&root, &p("a/c"), false, None).unwrap(), 1);
        assert!(matches!(
            make_dir(&root, &p("file/x"), true, None),
            Err(OpError::NotDirectory { .. })
        ));
        assert!(make_dir(&root, &p("out/x"), true, None).is_err());
        assert!(make_dir(&root, &p("out/x"), false, None).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(t.path().join("a/c").is_dir());
    }

    fn remove(root: &RootDir, rel: &str, recursive: bool) -> Result<Removed, OpError> {
        Remover::new(root, &p(rel), recursive, &limits())?.run(&Cancel::new())
    }

    #[test]
    fn remove_refuses_the_root_directories_without_r_and_escapes() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        symlink(outside.path(), t.path().join("out")).unwrap();
        std::fs::create_dir_all(t.path().join("d/e")).unwrap();
        std::fs::write(t.path().join("d/e/f"), b"x").unwrap();
        let root = RootDir::open(t.path()).unwrap();
        assert!(matches!(remove(&root, "", true), Err(OpError::RemoveRoot)));
        assert!(matches!(remove(&root, "d", false), Err(OpError::IsDirectory { .. })));
        assert!(matches!(remove(&root, "out/keep", false), Err(OpError::Resolve { .. })));
        assert!(matches!(remove(&root, "nope", false), Err(OpError::NotFound { .. })));
        assert!(t.path().join("d/e/f").exists());
        // The symlink itself goes, its target stays.
        assert_eq!(remove(&root, "out", true).unwrap(), Removed { files: 1, dirs: 0 });
        assert!(outside.path().join("keep").exists());
        assert_eq!(remove(&root, "d", true).unwrap(), Removed { files: 1, dirs: 2 });
        assert!(!t.path().join("d").exists());
    }

    /// The race the design answers: a subdirectory replaced by a symlink to outside the root
    /// after its parent was listed. The removal unlinks the symlink and leaves outside alone.
    #[test]
    fn remove_r_stays_in_the_tree_when_a_directory_is_swapped_for_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        std::fs::create_dir_all(t.path().join("v/sub/deeper")).unwrap();
        std::fs::write(t.path().join("v/sub/deeper/f"), b"x").unwrap();
        std::fs::write(t.path().join("v/a"), b"x").unwrap();
        let root = RootDir::open(t.path()).unwrap();
        let mut r = Remover::new(&root, &p("v"), true, &limits()).unwrap();
        // `v` is listed ("a", "sub"); names go last first, so "sub" is next. Swap it now.
        std::fs::rename(t.path().join("v/sub"), t.path().join("moved")).unwrap();
        symlink(outside.path(), t.path().join("v/sub")).unwrap();
        while !r.step().unwrap() {}
        assert_eq!(r.removed(), Removed { files: 2, dirs: 1 });
        assert!(outside.path().join("keep").exists());
        assert!(!t.path().join("v").exists());
        assert!(t.path().join("moved/deeper/f").exists());

        // Swapped between the stat and the open of a deeper level: the same.
        std::fs::create_dir_all(t.path().join("w/sub")).unwrap();
        std::fs::write(t.path().join("w/sub/f"), b"x").unwrap();
        let mut r = Remover::new(&root, &p("w"), true, &limits()).unwrap();
        std::fs::remove_file(t.path().join("w/sub/f")).unwrap();
        std::fs::remove_dir(t.path().join("w/sub")).unwrap();
        symlink(outside.path(), t.path().join("w/sub")).unwrap();
        while !r.step().unwrap() {}
        assert!(outside.path().join("keep").exists());
        assert!(!t.path().join("w").exists());
    }

    #[test]
    fn remove_refuses_a_directory_a_transfer_writes_into() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d/busy")).unwrap();
        let root = RootDir::open(t.path()).unwrap();
        let fd = rustix::fs::open(
            t.path().join("d/busy"),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        std::fs::write(t.path().join("d/busy/f"), b"x").unwrap();
        std::fs::write(t.path().join("top"), b"x").unwrap();
        let held = TargetLock::acquire(fd.as_fd(), None, &Cancel::new()).unwrap();
        assert!(matches!(remove(&root, "d", true), Err(OpError::Locked { .. })));
        assert!(matches!(remove(&root, "d/busy/f", false), Err(OpError::Locked { .. })));
        assert!(t.path().join("d/busy/f").exists());
        // A file beside (above) the transfer's directory is not in its way.
        remove(&root, "top", false).unwrap();
        drop(held);
        remove(&root, "d", true).unwrap();
    }
}
