//! Committing: carrying out what [`Receiving`](blitx_session::target::Receiving) decided —
//! a complete file's metadata applied and its temporary file renamed into place, a given-up
//! file's temporary file removed, files done counted, errors reported.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The session failed or was cancelled: every file not committed is given up (no error per
/// file) and its temporary file removed.
pub(super) fn cleanup_temps(shared: &Shared<'_>) {
    let all = lock(&shared.files).abandon();
    for (_, p) in all {
        shared.opts.limits.release(pending_cost(&p.path));
        p.discard();
    }
}

/// Carries out what [`Receiving`] decided: commits, discards, files done, errors.
pub(super) fn carry_out(shared: &Shared<'_>, mut steps: Vec<Step<Arc<Pending>>>) {
    while !steps.is_empty() {
        let mut more = Vec::new();
        for step in steps {
            match step {
                Step::Commit { id, shell: p } => {
                    let slot = std::mem::replace(&mut *lock(&p.temp), TempSlot::Gone);
                    let result = match slot {
                        TempSlot::Open(temp) => {
                            let r = commit(shared, &p, &temp);
                            if r.is_err() {
                                let _ = rustix::fs::unlinkat(
                                    temp.dir.as_fd(),
                                    fsys::os(&temp.name),
                                    AtFlags::empty(),
                                );
                            }
                            r
                        }
                        _ => Err(io::Error::other("its temporary file is gone")),
                    };
                    lock(&shared.files).commit_result(id, result, &mut more);
                }
                Step::Discard { shell: p, .. } => p.discard(),
                Step::Done { path, size_bytes, .. } => {
                    shared.opts.limits.release(pending_cost(&path));
                    file_done(shared, &path, size_bytes);
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

pub(super) fn file_done(shared: &Shared<'_>, path: &RelPath, size_bytes: u64) {
    Progress::add(&shared.progress.files_done, 1);
    let c = &shared.counters;
    c.files_copied.fetch_add(1, Ordering::Relaxed);
    c.bytes_copied.fetch_add(size_bytes, Ordering::Relaxed);
    shared.event(EventKind::Copied, path, size_bytes, None);
}
