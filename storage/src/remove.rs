//! `--remove-source-files` (a move), the source's side: which listed files may be removed,
//! and their removal once the target reported them committed (or up to date).
//!
//! Each regular file of a listing is looked at once more as it is sent to the target (its
//! device, inode and change time, through the directory's handle, never following a
//! symlink); one that no longer matches its listing is never recorded. When the target's
//! report names it (after the whole session's data, [`TargetMsg::Committed`]), the file is
//! removed with `unlinkat` through its directory's handle (confined below the root on a
//! daemon) only if it is still that file: the same device, inode, size, modification and
//! change time. A file changed, replaced or swapped since it was listed is kept. Directories
//! are never removed. What is recorded is charged to the session's memory budget (a daemon's
//! `--session-memory`); a file that does not fit is kept.
//!
//! [`TargetMsg::Committed`]: blitx_core::session::TargetMsg::Committed

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use blitx_core::RelPath;
use blitx_core::manifest::{Entry, EntryKind, FileId, Timestamp};
use rustix::fs::{AtFlags, Statx};

use crate::dircache::DirCache;
use crate::fsys;
use crate::limits::Limits;

/// What one recorded file costs besides its path's bytes (the map entry, the stat fields).
const RECORD_BYTES: u64 = 96;

/// What a file was when it was listed: it is removed only if it still is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    dev: (u32, u32),
    ino: u64,
    size_bytes: u64,
    mtime: Timestamp,
    ctime: Timestamp,
}

impl Identity {
    fn of(st: &Statx) -> Option<Self> {
        let regular = rustix::fs::FileType::from_raw_mode(u32::from(st.stx_mode))
            == rustix::fs::FileType::RegularFile;
        regular.then(|| Identity {
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size_bytes: st.stx_size,
            mtime: fsys::mtime_of(st),
            ctime: Timestamp { sec: st.stx_ctime.tv_sec, nsec: st.stx_ctime.tv_nsec },
        })
    }
}

#[derive(Debug)]
struct Recorded {
    path: RelPath,
    was: Identity,
}

/// The files a move may remove, from their listing to the target's report.
#[derive(Debug, Default)]
pub(crate) struct Removals {
    files: Mutex<HashMap<FileId, Recorded>>,
    /// One warning for files not recorded for want of memory.
    warned: AtomicBool,
}

/// What became of the files the target reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed {
    pub removed: u64,
    /// Changed, replaced or gone since they were listed, or not removable: kept.
    pub kept: u64,
}

impl Removals {
    /// Records the regular files of one listing that still match it.
    pub(crate) fn record(&self, dirs: &DirCache, limits: &Limits, entries: &[Entry]) {
        for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
            let Some((dir, name)) = e.path.split_last() else { continue };
            let Ok(fd) = dirs.get(&dir) else { continue };
            let Ok(st) = fsys::stat_at(fd.as_fd(), name) else { continue };
            let Some(was) = Identity::of(&st) else { continue };
            if was.size_bytes != e.size_bytes || was.mtime != e.mtime {
                continue;
            }
            let cost = RECORD_BYTES + e.path.as_bytes().len() as u64;
            if limits.charge("files to remove after the move", cost).is_err() {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "--remove-source-files: the session's memory is spent; further files are kept"
                    );
                }
                continue;
            }
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = files.insert(e.id, Recorded { path: e.path.clone(), was }) {
                limits.release(RECORD_BYTES + old.path.as_bytes().len() as u64);
            }
        }
    }

    /// Removes the files `ids` names that are still what was listed; an id never recorded (or
    /// named twice) removes nothing.
    pub(crate) fn remove(&self, dirs: &DirCache, limits: &Limits, ids: &[FileId]) -> Removed {
        let mut out = Removed::default();
        for id in ids {
            let Some(r) = self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(id) else {
                continue;
            };
            limits.release(RECORD_BYTES + r.path.as_bytes().len() as u64);
            match remove_one(dirs, &r) {
                Ok(true) => out.removed += 1,
                Ok(false) => {
                    out.kept += 1;
                    tracing::warn!(path = %r.path, "kept: it changed since it was sent");
                }
                Err(e) => {
                    out.kept += 1;
                    tracing::warn!(path = %r.path, "kept: cannot remove it: {e}");
                }
            }
        }
        out
    }

    /// Files recorded and not (yet) reported: kept.
    pub(crate) fn left(&self, limits: &Limits) -> u64 {
        let files = std::mem::take(&mut *self.files.lock().unwrap_or_else(|p| p.into_inner()));
        for r in files.values() {
            limits.release(RECORD_BYTES + r.path.as_bytes().len() as u64);
        }
        files.len() as u64
    }
}

/// Removes `r`'s file if it is still the one recorded: `Ok(false)` when it is not.
fn remove_one(dirs: &DirCache, r: &Recorded) -> std::io::Result<bool> {
    let Some((dir, name)) = r.path.split_last() else { return Ok(false) };
    let fd = dirs.get(&dir)?;
    let st = match fsys::stat_at(fd.as_fd(), name) {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if Identity::of(&st).as_ref() != Some(&r.was) {
        return Ok(false);
    }
    rustix::fs::unlinkat(fd.as_fd(), fsys::os(name), AtFlags::empty())?;
    Ok(true)
}
