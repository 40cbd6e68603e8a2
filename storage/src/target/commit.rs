//! Committing: carrying out what [`Receiving`](blitx_session::target::Receiving) decided —
//! a complete file's metadata applied and its temporary file renamed into place, a given-up
//! file's temporary file removed, files done counted, errors reported.

use super::*;
#[allow(clippy::wildcard_imports)]
use blitx_core::itemize::Changes;

/// The session failed or was cancelled: every file not committed is given up (no error per
/// file) and its temporary file removed.
pub(super) fn cleanup_temps(shared: &Shared<'_>) {
    let all = lock(&shared.files).abandon();
    for (_, p, runs) in all {
        shared.opts.limits.release(pending_cost(&p.path));
        keep_or_discard(shared, &p, runs);
    }
}

/// Carries out what [`Receiving`] decided: commits, discards, files done, errors.
pub(super) fn carry_out(shared: &Shared<'_>, mut steps: Vec<Step<Arc<Pending>>>) {
    while !steps.is_empty() {
        let mut more = Vec::new();
        for step in steps {
            match step {
                Step::Commit { id, shell: p, verify: hashes } => {
                    let slot = std::mem::replace(&mut *lock(&p.temp), TempSlot::Gone);
                    let slot = match slot {
                        TempSlot::Parked(pk) => unpark(&p, pk),
                        other => Ok(other),
                    };
                    let result = match slot {
                        Err(e) => Err(e),
                        Ok(TempSlot::Open(temp)) => {
                            let checked = match &hashes {
                                Some(h) => verify(shared, &p, &temp, h),
                                None => Ok(()),
                            };
                            let r = checked.and_then(|()| commit(shared, &p, &temp));
                            if r.is_err() {
                                let _ = rustix::fs::unlinkat(
                                    temp.dir.as_fd(),
                                    fsys::os(&temp.name),
                                    AtFlags::empty(),
                                );
                            }
                            r
                        }
                        Ok(_) => Err(io::Error::other("its temporary file is gone")),
                    };
                    lock(&shared.files).commit_result(id, result, &mut more);
                }
                Step::Discard { shell: p, .. } => p.discard(),
                Step::Park { shell: p, .. } => park(shared, &p),
                Step::Journal { shell: p, runs, .. } => save(shared, &p, runs),
                Step::Done { id, path, size_bytes, reused_bytes, changes } => {
                    shared.committed(id);
                    shared.counters.bytes_reused.fetch_add(reused_bytes, Ordering::Relaxed);
                    shared.opts.limits.release(pending_cost(&path));
                    file_done(shared, &path, size_bytes, changes);
                }
                Step::Fail(e) => shared.error(e),
            }
        }
        steps = more;
    }
}

// ---------------------------------------------------------------------------------------------
// Writers

/// Applies metadata and renames the temp file into place.
pub(super) fn commit(shared: &Shared<'_>, p: &Pending, temp: &Temp) -> io::Result<()> {
    if temp.direct.is_some() {
        // Direct writes of the last chunk were padded to the block size.
        rustix::fs::ftruncate(&temp.file, p.size_bytes)?;
    }
    if temp.widened {
        // Created writable for the direct descriptor (`create_temp`). The temp mark goes while
        // the file is still writable (removing a user xattr needs write permission), then the
        // metadata, then the real mode.
        fsys::unmark_temp(temp.file.as_fd())?;
        meta::apply_to_new_file(temp.file.as_fd(), &p.meta, &shared.id, shared.owners)?;
        rustix::fs::fchmod(&temp.file, Mode::from_raw_mode(p.meta.mode))?;
    } else {
        meta::apply_to_new_file(temp.file.as_fd(), &p.meta, &shared.id, shared.owners)?;
        fsys::unmark_temp(temp.file.as_fd())?;
    }
    shared.sync_file(temp.file.as_fd())?;
    shared.touched(&p.path);
    let name = p.path.file_name();
    rustix::fs::renameat(temp.dir.as_fd(), fsys::os(&temp.name), temp.dir.as_fd(), fsys::os(name))?;
    Ok(())
}

pub(super) fn file_done(shared: &Shared<'_>, path: &RelPath, size_bytes: u64, changes: Changes) {
    Progress::add(&shared.progress.files_done, 1);
    let c = &shared.counters;
    c.files_copied.fetch_add(1, Ordering::Relaxed);
    c.bytes_copied.fetch_add(size_bytes, Ordering::Relaxed);
    shared.event_changed(EventKind::Copied, path, size_bytes, None, changes);
}

/// Closes the descriptors of a complete file that waits for its verdict (see [`Step::Park`]).
fn park(shared: &Shared<'_>, p: &Pending) {
    let mut slot = lock(&p.temp);
    let TempSlot::Open(t) = &*slot else { return };
    save_complete(shared, p, &t.file);
    // Without its identity it could not be found again safely: it stays open.
    let Ok(st) = rustix::fs::fstat(&*t.file) else { return };
    let TempSlot::Open(t) = std::mem::replace(&mut *slot, TempSlot::Gone) else { return };
    *slot = TempSlot::Parked(Parked {
        dev: st.st_dev,
        ino: st.st_ino,
        direct: t.direct.is_some(),
        widened: t.widened,
        name: t.name,
        dir: t.dir,
    });
}

/// Reopens a parked temporary file to commit it: beneath its directory handle, never through
/// a symlink, and only if it is still the same file.
fn unpark(p: &Pending, pk: Parked) -> io::Result<TempSlot> {
    // Write access only for the cut of a padded last chunk (the file is owner-writable then);
    // metadata, the temp mark and fsync work through a read-only descriptor.
    let access = if pk.direct { OFlags::RDWR } else { OFlags::RDONLY };
    let fd = rustix::fs::openat(
        pk.dir.as_fd(),
        fsys::os(&pk.name),
        access | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if (st.st_dev, st.st_ino) != (pk.dev, pk.ino) {
        return Err(io::Error::other("its temporary file was replaced while it waited"));
    }
    let file = File::from(fd);
    if pk.direct {
        rustix::fs::ftruncate(&file, p.size_bytes)?;
    }
    Ok(TempSlot::Open(Temp {
        file: Arc::new(file),
        direct: None,
        widened: pk.widened,
        name: pk.name,
        dir: pk.dir,
    }))
}
