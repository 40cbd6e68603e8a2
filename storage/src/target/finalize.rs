//! Finalizing, once every file is committed or failed: carrying out, in order, what
//! [`Planning`](blitx_session::plan::Planning) kept for the end — hard links whose leader is
//! in place, mirror deletions (it decides whether any may run), directory metadata deepest
//! first — then `--fsync` of touched directories.

#[allow(clippy::wildcard_imports)]
use super::*;

/// `not_done`: the needed files that were not committed (their links are not made).
pub(super) fn finalize(shared: &Shared<'_>, plan: &mut Plan, not_done: &[FileId]) {
    let dry = shared.dry_run();
    let c = &shared.counters;
    for link in plan.links(not_done.iter().copied()) {
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                shared.error(e);
                continue;
            }
        };
        let (path, leader) = (&link.path, &link.leader);
        c.hardlinks.fetch_add(1, Ordering::Relaxed);
        shared.event(EventKind::Hardlinked, path, 0, Some(format!("=> {leader}")));
        shared.touched(path);
        if !dry && let Err(e) = make_hardlink(shared, path, leader) {
            shared.error(FileError::io(path.clone(), e.0, e.1));
        }
    }
    match plan.deletions(shared.errors.count()) {
        Deletions::Skipped { count, failures } => {
            if count > 0 {
                tracing::warn!("{count} deletions skipped because {failures} errors occurred");
            }
        }
        Deletions::Delete(deletions) => {
            // A dry run walks what each deletion would remove exactly as the real run does
            // (everything below a deleted directory, less what the filters protect), so both
            // report the same count.
            for (path, kind) in &deletions {
                let Some((dir, name)) = path.split_last() else { continue };
                if !dry {
                    shared.touched(path);
                }
                let r = shared.dirs.get(&dir).and_then(|fd| {
                    if !dry {
                        shared.dirs.forget(path);
                    }
                    remove_unprotected(fd.as_fd(), name, path, plan.filters(), dry)
                });
                match r {
                    Ok(removed) => {
                        c.deleted.fetch_add(removed.entries, Ordering::Relaxed);
                        if removed.kept == 0 {
                            let what = blitx_core::itemize::Changes::new(*kind, 0);
                            shared.event_changed(EventKind::Deleted, path, 0, None, what);
                        } else {
                            tracing::warn!(
                                "{path}: {} entries below it are excluded (protected); \
                                 the directory stays",
                                removed.kept
                            );
                        }
                    }
                    Err(e) => shared.error(FileError::io(path.clone(), FileOp::Delete, e)),
                }
            }
        }
    }
    if dry {
        return;
    }
    // Directory metadata last and deepest first: nothing changes a directory after its times
    // are set.
    let (dirs, root_meta) = plan.directories();
    for DirMeta { path, meta, fresh } in &dirs {
        let Some((dir, name)) = path.split_last() else { continue };
        let r = shared.dirs.get(&dir).and_then(|fd| {
            // One stat instead of changing a directory that is already right (a run that
            // changed nothing in it); one made in this run never is.
            if !fresh && dir_meta_matches(fd.as_fd(), name, meta, shared.owners && shared.id.root) {
                return Ok(());
            }
            meta::apply_to_dir(fd.as_fd(), name, meta, &shared.id, shared.owners)
        });
        if let Err(e) = r {
            shared.error(FileError::io(path.clone(), FileOp::DirMetadata, e));
        }
    }
    if let Some(meta) = root_meta {
        let r = meta::apply_to_dir_fd(shared.dirs.root(), &meta, &shared.id, shared.owners);
        if let Err(e) = r {
            shared.error(FileError::io(RelPath::root(), FileOp::RootMetadata, e));
        }
    }
    // --fsync: every directory that gained or lost a name, deepest first (a new directory's
    // own entry is in its parent, synced after it).
    let mut dirs: Vec<RelPath> = lock(&shared.touched_dirs).drain().collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.depth()));
    for dir in dirs {
        // A directory deleted by --mirror since is gone, and so is the need to sync it.
        let r = match shared.dirs.get(&dir) {
            Ok(fd) => rustix::fs::fsync(fd.as_fd()).map_err(io::Error::from),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            shared.error(FileError::io(dir.clone(), FileOp::SyncDir, e));
        }
    }
}

/// True when `name` in `dir` is a directory (not a symlink) whose mode, mtime and (with
/// `owners`) owner already are `meta`'s.
pub(super) fn dir_meta_matches(
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    owners: bool,
) -> bool {
    fsys::stat_at(dir, name).is_ok_and(|st| {
        fsys::kind_of(u32::from(st.stx_mode)) == EntryKind::Dir
            && u32::from(st.stx_mode) & 0o7777 == meta.mode
            && fsys::mtime_of(&st) == meta.mtime
            && (!owners || (st.stx_uid, st.stx_gid) == (meta.uid, meta.gid))
    })
}

pub(super) fn make_hardlink(
    shared: &Shared<'_>,
    path: &RelPath,
    leader: &RelPath,
) -> Result<(), (FileOp, io::Error)> {
    let root = || (FileOp::Hardlink, io::Error::from(io::ErrorKind::InvalidInput));
    let (ldir, lname) = leader.split_last().ok_or_else(root)?;
    let (dir, name) = path.split_last().ok_or_else(root)?;
    let lfd = shared.dirs.get(&ldir).map_err(|e| (FileOp::OpenDir, e))?;
    let fd = shared.dirs.get(&dir).map_err(|e| (FileOp::OpenDir, e))?;
    let tmp = temp_name(name);
    rustix::fs::linkat(lfd.as_fd(), fsys::os(lname), fd.as_fd(), fsys::os(&tmp), AtFlags::empty())
        .map_err(|e| (FileOp::Hardlink, e.into()))?;
    rustix::fs::renameat(fd.as_fd(), fsys::os(&tmp), fd.as_fd(), fsys::os(name)).map_err(|e| {
        let _ = rustix::fs::unlinkat(fd.as_fd(), fsys::os(&tmp), AtFlags::empty());
        (FileOp::HardlinkRename, e.into())
    })
}
