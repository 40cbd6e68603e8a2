//! Applying metadata: owner (first — chown clears setuid bits), mode, then times.

use std::io;
use std::os::fd::BorrowedFd;

use blitx_core::manifest::{Entry, EntryKind, Timestamp};
use blitx_planner::fsys::os;
use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, UTIME_OMIT, Uid};

/// The metadata a target path ends up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
}

impl Meta {
    pub fn of(entry: &Entry) -> Self {
        Meta { mode: entry.mode, uid: entry.uid, gid: entry.gid, mtime: entry.mtime }
    }
}

/// Process-wide facts that decide which metadata calls are needed.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Effective uid is 0: owners can be set.
    pub root: bool,
    pub euid: u32,
    pub egid: u32,
    /// The umask in force when files are created.
    pub umask: u32,
}

impl Identity {
    pub fn current() -> Self {
        // umask can only be read by setting it; put it straight back.
        let umask = rustix::process::umask(Mode::from_raw_mode(0o022));
        rustix::process::umask(umask);
        let euid = rustix::process::geteuid().as_raw();
        Identity {
            root: euid == 0,
            euid,
            egid: rustix::process::getegid().as_raw(),
            umask: umask.bits(),
        }
    }

    /// True when a file created with `mode` still needs a chmod afterwards.
    pub fn chmod_needed(&self, mode: u32) -> bool {
        mode & self.umask != 0 || mode & 0o7000 != 0
    }

    /// True when an owner change is wanted and possible.
    pub fn chown_needed(&self, preserve_owner: bool, meta: &Meta) -> bool {
        preserve_owner && self.root && (meta.uid != self.euid || meta.gid != self.egid)
    }
}

fn times(mtime: Timestamp) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: mtime.sec, tv_nsec: i64::from(mtime.nsec) },
    }
}

/// Applies metadata to an open regular file that this process just created.
pub fn apply_to_new_file(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    id: &Identity,
    preserve_owner: bool,
) -> io::Result<()> {
    if id.chown_needed(preserve_owner, meta) {
        rustix::fs::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))?;
    }
    if id.chmod_needed(meta.mode) || id.chown_needed(preserve_owner, meta) {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    }
    rustix::fs::futimens(fd, &times(meta.mtime))?;
    Ok(())
}

/// Applies metadata to an existing path `name` in `dir` (never following a final symlink).
/// Symlinks get owner and times only (Linux has no symlink modes).
pub fn apply_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    kind: EntryKind,
    meta: &Meta,
    id: &Identity,
    preserve_owner: bool,
) -> io::Result<()> {
    let name = os(name);
    if id.chown_needed(preserve_owner, meta) || (preserve_owner && id.root) {
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if kind != EntryKind::Symlink {
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
    }
    rustix::fs::utimensat(dir, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}
