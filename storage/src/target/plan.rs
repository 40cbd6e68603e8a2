//! Planning's shell: each listing handed to [`Planning`](blitx_session::plan::Planning) (which
//! checks it, decides per entry, and keeps what waits for the end), the target side stat'ed
//! for it, and its decisions applied — directories and symlinks made, metadata fixed, what is
//! in the way cleared, the files whose data is needed registered with
//! [`Receiving`](blitx_session::target::Receiving), directories listed for `--mirror`.

use super::*;
#[allow(clippy::wildcard_imports)]
use blitx_core::itemize::Changes;

/// Listings at least this long are stat'ed by two threads.
pub(super) const PARALLEL_STAT_MIN: usize = 256;

/// The session's planning, with the metadata each directory gets at the end.
pub(super) type Plan = Planning<Meta>;

/// Stats `name` in `dir` on the target; `None` when absent.
pub(super) fn target_entry(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<TargetEntry>> {
    match fsys::stat_at(dir, name) {
        Ok(st) => Ok(Some(fsys::target_from_stat(dir, name, &st)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn handle_listing(
    shared: &Shared<'_>,
    plan: &mut Plan,
    dir: &RelPath,
    mut entries: Vec<Entry>,
    last_part: bool,
) -> Result<Answer, TargetError> {
    let mut needs = Answer::default();
    let started = plan.listing(dir, &entries, last_part)?;
    if shared.opts.params.mem_bytes.is_some() {
        return sink_listing(shared, plan, &entries);
    }
    // A directory arriving in parts keeps its names until the last part (the duplicate check,
    // and --mirror's deletions); they count against the session's memory.
    if started.charge_bytes > 0 {
        shared
            .opts
            .limits
            .charge("a directory listed in parts", started.charge_bytes)
            .map_err(TargetError::Limit)?;
    }
    let end = |plan: &mut Plan, opened: bool, fd: Option<&OwnedFd>| {
        if !last_part {
            return None;
        }
        if let Some(fd) = fd {
            drop_unclaimed(shared, dir, fd);
        }
        let ended = plan.listing_end(dir, opened);
        shared.opts.limits.release(ended.release_bytes);
        ended.scan
    };
    if started.verdict == Verdict::Skip {
        end(plan, false, None);
        return Ok(needs);
    }
    for e in &mut entries {
        shared.restrict(e);
    }
    let entries = &entries[..];
    let fresh = started.fresh;
    let dfd = if fresh && shared.dry_run() {
        None
    } else {
        match shared.dirs.get(dir) {
            Ok(fd) => Some(fd),
            Err(e) => {
                shared.error(FileError::io(dir.clone(), FileOp::OpenDir, e));
                end(plan, false, None);
                return Ok(needs);
            }
        }
    };
    // Stat (and, for --checksum, hash) the target side of every entry first, in parallel for
    // big listings: this is the whole cost of a no-op run.
    let compare = shared.opts.params.compare;
    let look = |entry: &Entry| -> io::Result<Option<TargetEntry>> {
        let Some(fd) = dfd.as_ref().filter(|_| !fresh) else { return Ok(None) };
        let name = entry.path.file_name();
        let mut t = target_entry(fd.as_fd(), name)?;
        if let Some(t) = t.as_mut()
            && needs_target_hash(compare, entry, t)
        {
            t.content_hash = fsys::hash_file(fd.as_fd(), name).ok();
        }
        // Attributes decide "up to date" for files and special files (directories get theirs
        // at the end in any case); unreadable ones are not taken for a difference.
        if let Some(t) = t.as_mut()
            && shared.xattr_sel.any()
            && t.kind == entry.kind
            && matches!(t.kind, EntryKind::File | EntryKind::Special)
        {
            t.xattrs = xattr::read(xattr::On::At(fd.as_fd(), name), shared.xattr_sel).ok();
        }
        Ok(t)
    };
    let targets: Vec<io::Result<Option<TargetEntry>>> =
        if fresh || entries.len() < PARALLEL_STAT_MIN {
            entries.iter().map(look).collect()
        } else {
            let half = entries.len() / 2;
            std::thread::scope(|s| {
                let second = s.spawn(|| entries[half..].iter().map(look).collect::<Vec<_>>());
                let mut first: Vec<_> = entries[..half].iter().map(look).collect();
                // A panic there is a bug: carried on here, never half a listing dropped.
                first.extend(second.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                first
            })
        };
    for (entry, target) in entries.iter().zip(targets) {
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                shared.error(FileError::io(entry.path.clone(), FileOp::Stat, e));
                continue;
            }
        };
        let decision = plan.entry(entry, target.as_ref());
        let changes = blitx_planner::itemize::changes(
            entry,
            target.as_ref(),
            compare,
            shared.owners && shared.id.root,
        );
        // Partial files of interrupted transfers, searched for once the first file that could
        // resume is needed (a run that writes nothing pays nothing).
        let params = &shared.opts.params;
        if decision.action == Action::CopyFile
            && params.resume
            && !fresh
            && !shared.dry_run()
            && !entry.sparse
            && !params.is_small(entry.size_bytes)
            && let Some(fd) = &dfd
        {
            scan(shared, plan, dir, fd);
        }
        apply(shared, plan, dfd.as_deref(), entry, decision, changes, &mut needs)?;
    }
    // Crash debris goes when a transfer writes into its directory again (or, with --mirror,
    // when the directory is read for deletions); a run that writes nothing pays nothing.
    if !needs.ids.is_empty()
        && let Some(fd) = &dfd
        && plan.sweep_debris(dir)
    {
        // Partial files that files of later parts of this listing may take over are held,
        // not swept (they go at the last part if none does).
        if shared.opts.params.resume && !shared.dry_run() {
            scan(shared, plan, dir, fd);
        }
        if let Ok(names) = fsys::read_dir_names(fd) {
            remove_debris(shared, fd, dir, &names);
        }
    }
    if let Some(scan) = end(plan, dfd.is_some(), dfd.as_deref())
        && let Some(fd) = &dfd
    {
        collect_deletions(shared, plan, fd, scan);
    }
    Ok(needs)
}

/// Lists a directory for `--mirror` and hands its extra entries (not listed by the source) to
/// [`Planning::extras`], which decides what is deleted.
pub(super) fn collect_deletions(shared: &Shared<'_>, plan: &mut Plan, fd: &OwnedFd, scan: Scan) {
    let dir = scan.dir();
    let names = match fsys::read_dir_names(fd) {
        Ok(n) => n,
        Err(e) => {
            shared.error(FileError::io(dir.clone(), FileOp::ListDir, e));
            return;
        }
    };
    remove_debris(shared, fd, dir, &names);
    let mut extra = Vec::new();
    for name in names {
        // Marked temporary files left now are this process's own, still being written.
        if scan.listed(&name) || fsys::is_debris(fd.as_fd(), &name) {
            continue;
        }
        match target_entry(fd.as_fd(), &name) {
            Ok(Some(t)) => extra.push(t),
            Ok(None) => {}
            Err(e) => {
                let path = dir.join(&name).unwrap_or_else(|_| dir.clone());
                shared.error(FileError::io(path, FileOp::Stat, e))
            }
        }
    }
    plan.extras(scan, &extra);
}

/// Removes the temporary files an interrupted transfer left among `names` of `dir` (only
/// marked ones, never a user's file; never this process's own). This transfer holds the target
/// lock, so no other blit transfer can be writing here.
pub(super) fn remove_debris(shared: &Shared<'_>, fd: &OwnedFd, dir: &RelPath, names: &[Vec<u8>]) {
    let ours = std::process::id();
    let mut removed = 0u64;
    let debris = names.iter().filter(|n| {
        fsys::temp_pid(n) != Some(ours)
            && fsys::is_debris(fd.as_fd(), n)
            && !lock(&shared.partials).holds(dir, n)
    });
    for name in debris {
        if shared.dry_run() {
            removed += 1;
            continue;
        }
        match rustix::fs::unlinkat(fd, fsys::os(name), AtFlags::empty()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(
                "cannot remove {:?} in {dir}, left by an interrupted transfer: {e}",
                String::from_utf8_lossy(name)
            ),
        }
    }
    if removed > 0 {
        let verb = if shared.dry_run() { "would remove" } else { "removed" };
        tracing::info!("{verb} {removed} temporary files left in {dir} by an interrupted transfer");
    }
}

pub(super) fn apply(
    shared: &Shared<'_>,
    plan: &mut Plan,
    dfd: Option<&OwnedFd>,
    entry: &Entry,
    decision: blitx_planner::Decision,
    changes: Changes,
    needs: &mut Answer,
) -> Result<(), TargetError> {
    let path = &entry.path;
    let name = entry.path.file_name();
    let meta = shared.meta(entry)?;
    let dry = shared.dry_run();
    let c = &shared.counters;
    if !dry
        && decision.clear != Clear::Nothing
        && let Some(fd) = dfd
        && let Err(e) = clear(shared, fd, path, decision.clear)
    {
        shared.error(FileError::io(path.clone(), e.0, e.1));
        plan.failed(path);
        return Ok(());
    }
    // A file already up to date (or needing only metadata) is at the target as much as one
    // copied: `--remove-source-files` removes its source too, as rsync does.
    let up_to_date =
        entry.kind == EntryKind::File && matches!(decision.action, Action::Skip | Action::FixMeta);
    let res: Result<(), (FileOp, io::Error)> = match decision.action {
        Action::Skip => Ok(()),
        Action::Unsupported => {
            c.unsupported.fetch_add(1, Ordering::Relaxed);
            shared.event(EventKind::Unsupported, path, 0, Some("special file not copied".into()));
            Ok(())
        }
        Action::MakeSpecial => match entry.special {
            Some(s) if s.is_device() && !shared.opts.privileges.makes_devices(&shared.id) => {
                c.unsupported.fetch_add(1, Ordering::Relaxed);
                let why = if shared.id.root {
                    "device node not made (this daemon does not allow them: --allow-devices)"
                } else {
                    "device node not made (only root can)"
                };
                shared.event(EventKind::Unsupported, path, 0, Some(why.into()));
                Ok(())
            }
            Some(s) => {
                c.specials.fetch_add(1, Ordering::Relaxed);
                shared.event(EventKind::SpecialMade, path, 0, Some(s.name().into()));
                match dfd {
                    Some(fd) if !dry => {
                        shared.touched(path);
                        make_special(shared, fd, entry, s, &meta)
                    }
                    _ => Ok(()),
                }
            }
            // The planner decides Unsupported for these.
            None => Ok(()),
        },
        Action::KeepDir => {
            keep_dir(shared, plan, path, meta, false)?;
            Ok(())
        }
        Action::MakeDir => {
            c.dirs_created.fetch_add(1, Ordering::Relaxed);
            shared.event_changed(EventKind::DirCreated, path, 0, None, changes);
            let made = match dfd {
                Some(fd) if !dry => {
                    // Owner-writable until finalization sets the real mode.
                    rustix::fs::mkdirat(fd, fsys::os(name), Mode::from_raw_mode(0o700))
                        .map_err(|e| (FileOp::MakeDir, e.into()))
                }
                _ => Ok(()),
            };
            if made.is_ok() {
                shared.touched(path);
                keep_dir(shared, plan, path, meta, true)?;
            }
            made
        }
        Action::MakeSymlink => {
            c.symlinks.fetch_add(1, Ordering::Relaxed);
            shared.event_changed(EventKind::Symlinked, path, 0, None, changes);
            match dfd {
                Some(fd) if !dry => {
                    shared.touched(path);
                    make_symlink(shared, fd, entry, &meta)
                }
                _ => Ok(()),
            }
        }
        Action::FixMeta => {
            c.meta_updated.fetch_add(1, Ordering::Relaxed);
            shared.event_changed(EventKind::MetaUpdated, path, 0, None, changes);
            match dfd {
                Some(fd) if !dry => {
                    meta::apply_at(fd.as_fd(), name, entry.kind, &meta, &shared.id, shared.owners)
                        .map_err(|e| (FileOp::Metadata, e))
                }
                _ => Ok(()),
            }
        }
        // Kept by `Planning` for the end, once the leader is in place.
        Action::Hardlink { .. } => Ok(()),
        Action::CopyFile => {
            if dry {
                c.files_copied.fetch_add(1, Ordering::Relaxed);
                c.bytes_copied.fetch_add(entry.size_bytes, Ordering::Relaxed);
                shared.event_changed(EventKind::Copied, path, entry.size_bytes, None, changes);
            } else {
                need_file(shared, entry, meta, changes, needs)?;
            }
            Ok(())
        }
    };
    match res {
        Err((op, e)) => {
            shared.error(FileError::io(path.clone(), op, e));
            plan.failed(path);
        }
        Ok(()) if up_to_date => shared.committed(entry.id),
        Ok(()) => {}
    }
    Ok(())
}

/// Asks the source for a file: it is pending (charged to the session's budget) until committed
/// or failed.
pub(super) fn need_file(
    shared: &Shared<'_>,
    entry: &Entry,
    meta: Meta,
    changes: Changes,
    needs: &mut Answer,
) -> Result<(), TargetError> {
    let params = &shared.opts.params;
    let chunked = !params.is_small(entry.size_bytes) && !entry.sparse && params.mem_bytes.is_none();
    let dir = entry.path.split_last().and_then(|(dir, _)| shared.dirs.get(&dir).ok());
    // A partial file kept by an interrupted transfer is taken over (dense chunked files only);
    // else, with --delta, the old copy is signed for the source.
    let resumed = match &dir {
        Some(dfd) if params.resume && chunked => adopt(shared, dfd, entry, meta.mode, needs),
        _ => None,
    };
    let mut basis = None;
    if let Some(dfd) = &dir
        && resumed.is_none()
        && params.delta
        && chunked
        && let Some((b, file)) = open_basis(dfd, entry.path.file_name())
    {
        match sign(&b, &file, needs.signature_bytes) {
            Ok(Some(messages)) => {
                needs.signature_bytes += messages.iter().map(|m| m.len() as u64).sum::<u64>();
                needs.signatures.extend(messages.into_iter().map(|m| (entry.id, m)));
                basis = Some(b);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("{}: its old copy could not be signed: {e}", entry.path),
        }
    }
    let delta = basis.is_some();
    let p = Arc::new(Pending {
        path: entry.path.clone(),
        meta,
        size_bytes: entry.size_bytes,
        sparse: entry.sparse,
        basis,
        temp: Mutex::new(TempSlot::NotYet),
        writing: Mutex::new(()),
    });
    let cost = pending_cost(&p.path);
    shared
        .opts
        .limits
        .charge("files whose data is on its way", cost)
        .map_err(TargetError::Limit)?;
    let wanted = Wanted {
        path: entry.path.clone(),
        size_bytes: entry.size_bytes,
        sparse: entry.sparse,
        small: shared.opts.params.is_small(entry.size_bytes),
        changes,
    };
    let wanted_now = match resumed {
        Some((parked, offered)) => {
            *lock(&p.temp) = TempSlot::Parked(parked);
            lock(&shared.files).want_resumed(entry.id, wanted, Arc::clone(&p), offered)
        }
        None if delta => lock(&shared.files).want_delta(entry.id, wanted, Arc::clone(&p)),
        None => lock(&shared.files).want(entry.id, wanted, Arc::clone(&p)),
    };
    if let Err(v) = wanted_now {
        // A partial file taken over for it must not stay under this process's name (which
        // a daemon's later sessions neither sweep nor take over).
        p.discard();
        shared.opts.limits.release(cost);
        return Err(TargetError::Protocol(v));
    }
    needs.ids.push(entry.id);
    Progress::add(&shared.progress.files_needed, 1);
    Progress::add(&shared.progress.bytes_needed, entry.size_bytes);
    Ok(())
}

/// A listing in a memory-to-memory session (`--mem`): checked like any other, then every
/// chunked file in it is needed; nothing is looked up or created on disk.
pub(super) fn sink_listing(
    shared: &Shared<'_>,
    plan: &mut Plan,
    entries: &[Entry],
) -> Result<Answer, TargetError> {
    let mut needs = Answer::default();
    for e in entries {
        let small = shared.opts.params.is_small(e.size_bytes);
        if plan.sink_entry(e, small).map_err(TargetError::Protocol)? {
            let changes = Changes::new(e.kind, Changes::NEW);
            need_file(shared, e, shared.meta(e)?, changes, &mut needs)?;
        }
    }
    Ok(needs)
}

/// Records a directory made (`made`) or verified in this session: its listing may come now,
/// and its metadata is applied at the end.
pub(super) fn keep_dir(
    shared: &Shared<'_>,
    plan: &mut Plan,
    path: &RelPath,
    meta: Meta,
    made: bool,
) -> Result<(), TargetError> {
    let cost = limits::DIR_BYTES + path.as_bytes().len() as u64;
    shared.opts.limits.charge("directories", cost).map_err(TargetError::Limit)?;
    plan.dir_ready(path, meta, made);
    Ok(())
}

pub(super) fn clear(
    shared: &Shared<'_>,
    fd: &OwnedFd,
    path: &RelPath,
    how: Clear,
) -> Result<(), (FileOp, io::Error)> {
    let name = fsys::os(path.file_name());
    match how {
        Clear::Nothing => Ok(()),
        Clear::NonDir => rustix::fs::unlinkat(fd, name, AtFlags::empty())
            .map_err(|e| (FileOp::ClearFile, e.into())),
        Clear::Dir { recursive } => {
            shared.dirs.forget(path);
            if recursive {
                remove_tree(fd.as_fd(), path.file_name())
                    .map(|_| ())
                    .map_err(|e| (FileOp::ClearDir, e))
            } else {
                rustix::fs::unlinkat(fd, name, AtFlags::REMOVEDIR)
                    .map_err(|e| (FileOp::ClearNonEmpty, e.into()))
            }
        }
    }
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, without ever
/// following a symlink. Returns how many paths were removed.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<u64> {
    let os = fsys::os(name);
    match rustix::fs::unlinkat(dir, os, AtFlags::empty()) {
        Ok(()) => return Ok(1),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(0),
        Err(e) => return Err(e.into()),
    }
    let sub = rustix::fs::openat(
        dir,
        os,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut removed = 1;
    for child in fsys::read_dir_names(&sub)? {
        removed += remove_tree(sub.as_fd(), &child)?;
    }
    rustix::fs::unlinkat(dir, os, AtFlags::REMOVEDIR)?;
    Ok(removed)
}

/// What [`remove_unprotected`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Removed {
    /// Entries removed, the named one included when it went.
    pub entries: u64,
    /// Entries below it that the filters protect (and so the directories above them stay).
    pub kept: u64,
}

/// `--mirror`'s deletion of `name` in `dir` (the target's `path`): it and everything below it
/// that the filters do not protect (rsync's rule: an excluded name inside a deleted directory
/// stays, and so does the directory). With `dry`, nothing is removed and the same walk counts
/// what would be, so a dry run reports the real run's numbers. Never follows a symlink.
pub fn remove_unprotected(
    dir: BorrowedFd<'_>,
    name: &[u8],
    path: &RelPath,
    filters: &blitx_planner::Filters,
    dry: bool,
) -> io::Result<Removed> {
    let os = fsys::os(name);
    let st = match fsys::stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::default()),
        Err(e) => return Err(e),
    };
    if fsys::kind_of(u32::from(st.stx_mode)) != EntryKind::Dir {
        if !dry {
            match rustix::fs::unlinkat(dir, os, AtFlags::empty()) {
                Ok(()) => {}
                Err(rustix::io::Errno::NOENT) => return Ok(Removed::default()),
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Removed { entries: 1, kept: 0 });
    }
    let sub = rustix::fs::openat(
        dir,
        os,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut removed = Removed::default();
    for child in fsys::read_dir_names(&sub)? {
        let protected = match (path.join(&child), fsys::stat_at(sub.as_fd(), &child)) {
            (Ok(p), Ok(cst)) => {
                let kind = fsys::kind_of(u32::from(cst.stx_mode));
                if filters.deletable(&p, kind, cst.stx_size) {
                    let r = remove_unprotected(sub.as_fd(), &child, &p, filters, dry)?;
                    removed.entries += r.entries;
                    removed.kept += r.kept;
                    false
                } else {
                    true
                }
            }
            (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => false,
            (_, Err(e)) => return Err(e),
            // A name no path can hold is not the filters' to judge: it stays.
            (Err(_), Ok(_)) => true,
        };
        removed.kept += u64::from(protected);
    }
    if removed.kept == 0 {
        if !dry {
            rustix::fs::unlinkat(dir, os, AtFlags::REMOVEDIR)?;
        }
        removed.entries += 1;
    }
    Ok(removed)
}

/// Makes a FIFO, socket or device node under a temporary name, applies its metadata through a
/// pinned descriptor, and renames it into place (over a file or symlink there).
pub(super) fn make_special(
    shared: &Shared<'_>,
    fd: &OwnedFd,
    entry: &Entry,
    special: Special,
    meta: &Meta,
) -> Result<(), (FileOp, io::Error)> {
    let name = entry.path.file_name();
    let tmp = temp_name(name);
    let (format, dev) = special.mknod_args();
    rustix::fs::mknodat(
        fd,
        fsys::os(&tmp),
        rustix::fs::FileType::from_raw_mode(format),
        Mode::from_raw_mode(0o600),
        dev,
    )
    .map_err(|e| (FileOp::MakeSpecial, e.into()))?;
    let done =
        meta::apply_at(fd.as_fd(), &tmp, EntryKind::Special, meta, &shared.id, shared.owners)
            .map_err(|e| (FileOp::Metadata, e))
            .and_then(|()| {
                rustix::fs::renameat(fd, fsys::os(&tmp), fd, fsys::os(name))
                    .map_err(|e| (FileOp::MakeSpecial, e.into()))
            });
    if done.is_err() {
        let _ = rustix::fs::unlinkat(fd, fsys::os(&tmp), AtFlags::empty());
    }
    done
}

pub(super) fn make_symlink(
    shared: &Shared<'_>,
    fd: &OwnedFd,
    entry: &Entry,
    meta: &Meta,
) -> Result<(), (FileOp, io::Error)> {
    let name = entry.path.file_name();
    let target = entry.link_target.as_deref().unwrap_or_default();
    let tmp = temp_name(name);
    rustix::fs::symlinkat(fsys::os(target), fd, fsys::os(&tmp))
        .map_err(|e| (FileOp::Symlink, e.into()))?;
    let done =
        meta::apply_at(fd.as_fd(), &tmp, EntryKind::Symlink, meta, &shared.id, shared.owners)
            .map_err(|e| (FileOp::SymlinkMetadata, e))
            .and_then(|()| {
                rustix::fs::renameat(fd, fsys::os(&tmp), fd, fsys::os(name))
                    .map_err(|e| (FileOp::SymlinkRename, e.into()))
            });
    if done.is_err() {
        let _ = rustix::fs::unlinkat(fd, fsys::os(&tmp), AtFlags::empty());
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_counts_what_a_deletion_removes_and_protected_names_stay() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for p in ["gone/a", "gone/sub/b", "half/x.keep", "half/y", "half/deep/z"] {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"1").unwrap();
        }
        let filters = blitx_planner::Filters::excluding(&["*.keep"]).unwrap();
        let dir = std::fs::File::open(root).unwrap();
        let run = |name: &str, dry| {
            let path = RelPath::parse_str(name).unwrap();
            remove_unprotected(dir.as_fd(), name.as_bytes(), &path, &filters, dry).unwrap()
        };
        // gone, gone/a, gone/sub, gone/sub/b.
        let dry = run("gone", true);
        assert_eq!(dry, Removed { entries: 4, kept: 0 });
        assert!(root.join("gone/sub/b").exists());
        assert_eq!(run("gone", false), dry);
        assert!(!root.join("gone").exists());
        // half/y, half/deep, half/deep/z go; half/x.keep and so half stay.
        let dry = run("half", true);
        assert_eq!(dry, Removed { entries: 3, kept: 1 });
        assert_eq!(run("half", false), dry);
        assert!(root.join("half/x.keep").exists() && !root.join("half/y").exists());
        assert_eq!(run("missing", false), Removed::default());
    }
}
