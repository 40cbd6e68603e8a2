//! The parallel directory walk (an I/O shell around the pure planner).
//!
//! A small pool of threads (sized to the machine, blocking on a condition variable when idle)
//! reads directories through handles opened relative to the root, stats each entry once, and
//! streams [`SourceMsg::Listing`]s into a bounded channel while the walk is still running. A
//! directory is queued for reading only after the listing that names it was sent, so the
//! consumer always sees a parent before its children.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use blitx_core::RelPath;
use blitx_core::cancel::Cancel;
use blitx_core::manifest::{Entry, EntryKind};
use blitx_core::session::SourceMsg;
use crossbeam_channel::Sender;

use crate::fsys;
use crate::xattr::{self, XattrSel};
use blitx_planner::Filters;

/// Largest number of entries in one listing message; bigger directories are sent in parts.
pub const LISTING_ENTRIES_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct WalkOptions {
    pub threads: usize,
    pub filters: Filters,
    /// Compute content hashes (`--checksum`).
    pub checksum: bool,
    /// Refuse to resolve through symlinks or out of the root (daemon exports).
    pub confine: bool,
    /// A single-file session (`blit xfer FILE TARGET`): list only this name of the root, which
    /// must be a regular file (never followed if it is a symlink), and nothing below.
    pub single: Option<Vec<u8>>,
    /// Extended attributes and ACLs to list with each entry (none: no syscall spent on them).
    pub xattrs: XattrSel,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot open source root {path}")]
    OpenRoot { path: String, source: std::io::Error },
    #[error("source root {path} is not a directory")]
    RootNotDir { path: String },
    #[error("cannot read the source file {path}")]
    SingleFile { path: String, source: std::io::Error },
    #[error("the source {path} is {what}: a single-file transfer copies one regular file")]
    NotAFile { path: String, what: &'static str },
}

/// What the walk saw, for the summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalkStats {
    pub entries: u64,
    pub dirs: u64,
    pub file_bytes: u64,
    pub errors: u64,
}

struct Queue {
    dirs: VecDeque<RelPath>,
    busy: usize,
    done: bool,
}

struct Shared<'a> {
    root: OwnedFd,
    opts: &'a WalkOptions,
    out: &'a Sender<SourceMsg>,
    cancel: &'a Cancel,
    next_id: &'a AtomicU64,
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Mutex<WalkStats>,
}

impl Shared<'_> {
    /// Sends to the forwarder, waiting while its queue is full but never past the cancel.
    fn send(&self, msg: SourceMsg) -> Result<(), crate::Unsent> {
        crate::send_or_cancel(self.out, msg, self.cancel)
    }
}

/// Walks `root`, sending `Root`, `Listing`s, `WalkError`s and finally `ManifestEnd` to `out`.
/// Entry ids are drawn from `next_id`. Returns early (without `ManifestEnd`) when `cancel` fires
/// set or the receiver goes away.
pub fn walk(
    root: BorrowedFd<'_>,
    opts: &WalkOptions,
    out: &Sender<SourceMsg>,
    cancel: &Cancel,
    next_id: &AtomicU64,
) -> Result<WalkStats, WalkError> {
    let fail = |source: std::io::Error| WalkError::OpenRoot { path: ".".into(), source };
    let root_fd = rustix::io::fcntl_dupfd_cloexec(root, 0).map_err(|e| fail(e.into()))?;
    let st = rustix::fs::statx(
        &root_fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::BASIC_STATS,
    )
    .map_err(|e| fail(e.into()))?;
    if fsys::kind_of(u32::from(st.stx_mode)) != EntryKind::Dir {
        return Err(WalkError::RootNotDir { path: ".".into() });
    }
    let mut root_entry = fsys::entry_from_stat(
        root_fd.as_fd(),
        next_id.fetch_add(1, Ordering::Relaxed),
        RelPath::root(),
        b".",
        &st,
    )
    .map_err(fail)?;
    root_entry.inode = None;
    match xattr::read(xattr::On::Fd(root_fd.as_fd()), opts.xattrs) {
        Ok(x) => root_entry.xattrs = x,
        Err(e) => {
            let msg = SourceMsg::WalkError { path: RelPath::root(), message: e.to_string() };
            let _ = crate::send_or_cancel(out, msg, cancel);
        }
    }
    if crate::send_or_cancel(out, SourceMsg::Root(root_entry), cancel).is_err() {
        return Ok(WalkStats::default());
    }
    if let Some(name) = &opts.single {
        let stats = walk_single(root_fd.as_fd(), name, opts, out, cancel, next_id)?;
        if !cancel.is_fired() {
            let _ = crate::send_or_cancel(out, SourceMsg::ManifestEnd, cancel);
        }
        return Ok(stats);
    }
    let shared = Shared {
        root: root_fd,
        opts,
        out,
        cancel,
        next_id,
        queue: Mutex::new(Queue { dirs: VecDeque::from([RelPath::root()]), busy: 0, done: false }),
        wake: Condvar::new(),
        stats: Mutex::new(WalkStats { dirs: 1, ..WalkStats::default() }),
    };
    let threads = opts.threads.max(1);
    std::thread::scope(|s| {
        for i in 1..threads {
            let shared = &shared;
            std::thread::Builder::new()
                .name(format!("blit-walk-{i}"))
                .spawn_scoped(s, move || worker(shared))
                .map(|_| ())
                .unwrap_or_else(|e| tracing::warn!("walk thread not started: {e}"));
        }
        worker(&shared);
    });
    let stats = *shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    if !cancel.is_fired() {
        let _ = crate::send_or_cancel(out, SourceMsg::ManifestEnd, cancel);
    }
    Ok(stats)
}

/// A single-file session's listing: the root's one file `name`, unless excluded.
fn walk_single(
    root: BorrowedFd<'_>,
    name: &[u8],
    opts: &WalkOptions,
    out: &Sender<SourceMsg>,
    cancel: &Cancel,
    next_id: &AtomicU64,
) -> Result<WalkStats, WalkError> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let not_a_file = |what| WalkError::NotAFile { path: shown.clone(), what };
    let path = RelPath::root().join(name).map_err(|_| not_a_file("an unusable name"))?;
    let fail = |source: std::io::Error| WalkError::SingleFile { path: shown.clone(), source };
    let st = fsys::stat_at(root, name).map_err(fail)?;
    match fsys::kind_of(u32::from(st.stx_mode)) {
        EntryKind::File => {}
        EntryKind::Dir => return Err(not_a_file("a directory")),
        EntryKind::Symlink => return Err(not_a_file("a symlink")),
        EntryKind::Special => return Err(not_a_file("a special file")),
    }
    let mut entries = Vec::with_capacity(1);
    let mut stats = WalkStats { dirs: 1, ..WalkStats::default() };
    if opts.filters.selects(&path, EntryKind::File, st.stx_size) {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let mut entry = fsys::entry_from_stat(root, id, path, name, &st).map_err(fail)?;
        if opts.checksum {
            entry.content_hash = Some(fsys::hash_file(root, name).map_err(fail)?);
        }
        stats.entries = 1;
        stats.file_bytes = entry.size_bytes;
        entries.push(entry);
    }
    let msg = SourceMsg::Listing { seq: 0, dir: RelPath::root(), entries, last_part: true };
    if crate::send_or_cancel(out, msg, cancel).is_err() {
        cancel.fire();
    }
    Ok(stats)
}

fn worker(shared: &Shared<'_>) {
    loop {
        let dir = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if q.done {
                    return;
                }
                if let Some(d) = q.dirs.pop_front() {
                    q.busy += 1;
                    break d;
                }
                if q.busy == 0 {
                    q.done = true;
                    shared.wake.notify_all();
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let children = if shared.cancel.is_fired() { Vec::new() } else { read_one(shared, &dir) };
        let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.busy -= 1;
        if shared.cancel.is_fired() {
            q.done = true;
        }
        q.dirs.extend(children);
        shared.wake.notify_all();
    }
}

/// Reads one directory, sends its listing, returns its subdirectories to walk next.
fn read_one(shared: &Shared<'_>, dir: &RelPath) -> Vec<RelPath> {
    let fail = |message: String| {
        shared.stats.lock().unwrap_or_else(|p| p.into_inner()).errors += 1;
        let msg = SourceMsg::WalkError { path: dir.clone(), message };
        let _ = shared.send(msg);
        Vec::new()
    };
    let fd = match fsys::open_dir_beneath(shared.root.as_fd(), dir, shared.opts.confine) {
        Ok(fd) => fd,
        Err(e) => return fail(format!("cannot open directory: {e}")),
    };
    let mut names = match fsys::read_dir_names(&fd) {
        Ok(n) => n,
        Err(e) => return fail(format!("cannot read directory: {e}")),
    };
    names.sort_unstable();
    let mut entries: Vec<Entry> = Vec::with_capacity(names.len().min(LISTING_ENTRIES_MAX));
    let mut children = Vec::new();
    let mut local = WalkStats::default();
    let total_parts = names.len().div_ceil(LISTING_ENTRIES_MAX).max(1);
    let mut parts_sent = 0;
    for name in names {
        let Ok(path) = dir.join(&name) else {
            local.errors += 1;
            let _ = shared.send(SourceMsg::WalkError {
                path: dir.clone(),
                message: format!("skipping unusable name {:?}", String::from_utf8_lossy(&name)),
            });
            continue;
        };
        // A transfer that crashed left its temporary file here: never send it as a file.
        if fsys::is_debris(fd.as_fd(), &name) {
            tracing::debug!(%path, "skipping a temporary file left by an interrupted transfer");
            continue;
        }
        let st = match fsys::stat_at(fd.as_fd(), &name) {
            Ok(st) => st,
            Err(e) => {
                local.errors += 1;
                let _ = shared.send(SourceMsg::WalkError {
                    path,
                    message: format!("vanished or unreadable: {e}"),
                });
                continue;
            }
        };
        // After the stat: a rule may be for directories only, a size limit for files only.
        let kind = fsys::kind_of(u32::from(st.stx_mode));
        if !shared.opts.filters.selects(&path, kind, st.stx_size) {
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut entry = match fsys::entry_from_stat(fd.as_fd(), id, path.clone(), &name, &st) {
            Ok(e) => e,
            Err(e) => {
                local.errors += 1;
                let _ = shared.send(SourceMsg::WalkError {
                    path,
                    message: format!("cannot read symlink: {e}"),
                });
                continue;
            }
        };
        if entry.kind != EntryKind::Symlink && shared.opts.xattrs.any() {
            match xattr::read(xattr::On::At(fd.as_fd(), &name), shared.opts.xattrs) {
                Ok(x) => entry.xattrs = x,
                // The entry goes without them (its data and other metadata still count).
                Err(e) => {
                    local.errors += 1;
                    let _ = shared
                        .send(SourceMsg::WalkError { path: path.clone(), message: e.to_string() });
                }
            }
        }
        if shared.opts.checksum && entry.kind == EntryKind::File {
            match fsys::hash_file(fd.as_fd(), &name) {
                Ok(h) => entry.content_hash = Some(h),
                Err(e) => {
                    local.errors += 1;
                    let _ = shared.send(SourceMsg::WalkError {
                        path,
                        message: format!("cannot read for --checksum: {e}"),
                    });
                    continue;
                }
            }
        }
        local.entries += 1;
        match entry.kind {
            EntryKind::Dir => {
                local.dirs += 1;
                children.push(path);
            }
            EntryKind::File => local.file_bytes += entry.size_bytes,
            _ => {}
        }
        entries.push(entry);
        if entries.len() == LISTING_ENTRIES_MAX {
            parts_sent += 1;
            let last_part = parts_sent == total_parts;
            // The source half numbers listings as it sends them (`seq`).
            let msg = SourceMsg::Listing {
                seq: 0,
                dir: dir.clone(),
                entries: std::mem::take(&mut entries),
                last_part,
            };
            if shared.send(msg).is_err() {
                shared.cancel.fire();
                return Vec::new();
            }
            if last_part {
                break;
            }
        }
    }
    if parts_sent < total_parts || parts_sent == 0 {
        let msg = SourceMsg::Listing { seq: 0, dir: dir.clone(), entries, last_part: true };
        if shared.send(msg).is_err() {
            shared.cancel.fire();
            return Vec::new();
        }
    }
    let mut stats = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    stats.entries += local.entries;
    stats.dirs += local.dirs;
    stats.file_bytes += local.file_bytes;
    stats.errors += local.errors;
    children
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn walks_tree_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/b/c/f"), b"x").unwrap();
        std::fs::write(root.join("top"), b"hello").unwrap();
        std::fs::write(root.join("skip.tmp"), b"no").unwrap();
        std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
        let opts = WalkOptions {
            threads: 2,
            filters: Filters::excluding(&["*.tmp"]).unwrap(),
            checksum: true,
            confine: true,
            single: None,
            xattrs: XattrSel::default(),
        };
        let (tx, rx) = crossbeam_channel::bounded(4);
        let cancel = Cancel::new();
        let ids = AtomicU64::new(0);
        let mut msgs = Vec::new();
        let stats = std::thread::scope(|s| {
            let root_fd = std::fs::File::open(root).unwrap();
            let h = s.spawn(move || walk(root_fd.as_fd(), &opts, &tx, &cancel, &ids).unwrap());
            while let Ok(m) = rx.recv() {
                let end = m == SourceMsg::ManifestEnd;
                msgs.push(m);
                if end {
                    break;
                }
            }
            h.join().unwrap()
        });
        assert!(matches!(msgs[0], SourceMsg::Root(_)));
        let mut seen_dirs: HashSet<RelPath> = HashSet::from([RelPath::root()]);
        let mut all = Vec::new();
        for m in &msgs {
            if let SourceMsg::Listing { dir, entries, last_part, .. } = m {
                assert!(seen_dirs.contains(dir), "listing of {dir} before its parent");
                assert!(last_part);
                for e in entries {
                    if e.is_dir() {
                        seen_dirs.insert(e.path.clone());
                    }
                    all.push(e.clone());
                }
            }
        }
        let names: HashSet<String> = all.iter().map(|e| e.path.display()).collect();
        assert!(names.contains("a/b/c/f") && names.contains("dangling") && names.contains("top"));
        assert!(!names.contains("skip.tmp"));
        let link = all.iter().find(|e| e.path.display() == "dangling").unwrap();
        assert_eq!(link.link_target.as_deref(), Some(&b"nowhere"[..]));
        let top = all.iter().find(|e| e.path.display() == "top").unwrap();
        assert_eq!(top.content_hash, Some(xxhash_rust::xxh3::xxh3_128(b"hello")));
        assert_eq!(stats.entries, 6);
        let mut ids: Vec<u64> = all.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
    }
}
