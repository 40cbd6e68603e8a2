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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limits::Budget;
    use std::sync::Arc;

    fn entry(root: &std::path::Path, id: FileId, name: &str) -> Entry {
        let dir = std::fs::File::open(root).unwrap();
        let st = fsys::stat_at(dir.as_fd(), name.as_bytes()).unwrap();
        let path = RelPath::parse_str(name).unwrap();
        fsys::entry_from_stat(dir.as_fd(), id, path, name.as_bytes(), &st).unwrap()
    }

    /// Files replaced, swapped, edited behind a restored mtime or turned into a directory
    /// between their listing and the target's report are kept; ids never listed (a hostile
    /// target's) remove nothing; the rest is removed, and the memory is given back.
    #[test]
    fn only_the_files_listed_and_unchanged_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        for name in ["same", "swapped", "edited", "gone", "sub/nested", "dir"] {
            std::fs::write(root.join(name), name.as_bytes()).unwrap();
        }
        let ids = ["same", "swapped", "edited", "gone", "sub/nested", "dir"];
        let entries: Vec<Entry> =
            ids.iter().enumerate().map(|(i, n)| entry(root, i as u64 + 1, n)).collect();
        let dirs = DirCache::new(
            rustix::fs::open(
                root,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap(),
            true,
        );
        let budget = Budget::new("test", 1 << 20, None);
        let limits = Limits { budget: Some(Arc::clone(&budget)), ..Limits::none() };
        let removals = Removals::default();
        removals.record(&dirs, &limits, &entries);
        assert!(budget.used_bytes() > 0);
        // Swapped: another file of the same size and mtime renamed over it.
        std::fs::write(root.join("other"), b"SWAPPED").unwrap();
        let mtime = std::fs::metadata(root.join("swapped")).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(root.join("other"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(root.join("other"), root.join("swapped")).unwrap();
        // Edited in place, its mtime put back: its change time tells.
        let mtime = std::fs::metadata(root.join("edited")).unwrap().modified().unwrap();
        std::fs::write(root.join("edited"), b"EDITED").unwrap();
        let f = std::fs::File::options().write(true).open(root.join("edited")).unwrap();
        f.set_modified(mtime).unwrap();
        std::fs::remove_file(root.join("gone")).unwrap();
        std::fs::remove_file(root.join("dir")).unwrap();
        std::fs::create_dir(root.join("dir")).unwrap();
        let r = removals.remove(&dirs, &limits, &[1, 2, 3, 4, 5, 6, 99, 1]);
        assert_eq!(r, Removed { removed: 2, kept: 4 });
        assert!(!root.join("same").exists() && !root.join("sub/nested").exists());
        assert_eq!(std::fs::read(root.join("swapped")).unwrap(), b"SWAPPED");
        assert_eq!(std::fs::read(root.join("edited")).unwrap(), b"EDITED");
        assert!(root.join("dir").is_dir() && root.join("sub").is_dir());
        assert_eq!(removals.left(&limits), 0);
        assert_eq!(budget.used_bytes(), 0);
    }

    /// A file that changed before it was even recorded (size or mtime no longer the
    /// listing's) is never recorded.
    #[test]
    fn a_file_changed_since_its_listing_is_not_recorded() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"one").unwrap();
        let e = entry(t.path(), 1, "f");
        std::fs::write(t.path().join("f"), b"longer").unwrap();
        let fd = rustix::fs::open(
            t.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let dirs = DirCache::new(fd, true);
        let removals = Removals::default();
        removals.record(&dirs, &Limits::none(), &[e]);
        assert_eq!(removals.remove(&dirs, &Limits::none(), &[1]), Removed::default());
        assert!(t.path().join("f").exists());
    }
}
