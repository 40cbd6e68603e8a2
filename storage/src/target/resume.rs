//! Resuming: partial files kept by interrupted transfers found again, checked against their
//! journals and the file now listed, taken over and offered to the source; journals saved
//! while files are written; partial files kept when a session is given up; a resumed file read
//! back and compared with the source's hashes before it is renamed into place.
//!
//! What may be trusted is decided in `blitx_session::resume` (the journal, [`Journal::fits`])
//! and `blitx_session::target` (offers, `Same` frames, the final check); this is the shell.

#[allow(clippy::wildcard_imports)]
use super::*;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use blitx_core::session::{NEED_OFFERED_CHUNKS_MAX, OFFER_CHUNKS_MAX, Offer};
use blitx_session::resume::Journal;

/// Partial files one directory may hold for resuming; past it, the rest are debris.
const PARTIALS_PER_DIR_MAX: usize = 1024;

/// A partial file found in a directory, waiting for its file's listing.
struct Found {
    temp_name: Vec<u8>,
    journal: Journal,
}

/// The partial files found in the directories being listed (by final name), until each
/// directory's last listing part: then those not taken over are removed.
#[derive(Default)]
pub(super) struct Partials {
    dirs: HashMap<RelPath, HashMap<Vec<u8>, Found>>,
}

impl Partials {
    /// Whether `name` in `dir` is a partial file kept for a later part of its listing.
    pub(super) fn holds(&self, dir: &RelPath, temp_name: &[u8]) -> bool {
        self.dirs.get(dir).is_some_and(|m| m.values().any(|f| f.temp_name == temp_name))
    }
}

/// What one listing's answer carries: the files needed and the offers for resumed ones.
#[derive(Debug, Default)]
pub(super) struct Answer {
    pub(super) ids: Vec<FileId>,
    pub(super) offers: Vec<Offer>,
    offered_chunks: usize,
    /// Signature messages of the files sent as deltas (sent before the Need).
    pub(super) signatures: Vec<(FileId, Vec<u8>)>,
    pub(super) signature_bytes: u64,
}

pub(super) fn now_unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads `dir` once for partial files (crash debris with a journal) when its listing has a
/// file that could resume.
pub(super) fn scan(shared: &Shared<'_>, plan: &mut Plan, dir: &RelPath, fd: &OwnedFd) {
    if !plan.scan_partials(dir) {
        return;
    }
    let Ok(names) = fsys::read_dir_names(fd) else { return };
    let ours = std::process::id();
    let mut found = HashMap::new();
    for name in names {
        if found.len() >= PARTIALS_PER_DIR_MAX
            || fsys::temp_pid(&name) == Some(ours)
            || !fsys::is_debris(fd.as_fd(), &name)
        {
            continue;
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let Ok(file) = rustix::fs::openat(fd, fsys::os(&name), flags, Mode::empty()) else {
            continue;
        };
        if let Some(journal) = fsys::load_journal(file.as_fd()) {
            found.insert(journal.name.clone(), Found { temp_name: name, journal });
        }
    }
    if !found.is_empty() {
        lock(&shared.partials).dirs.insert(dir.clone(), found);
    }
}

/// At a directory's last listing part: the partial files no file took over are removed.
pub(super) fn drop_unclaimed(shared: &Shared<'_>, dir: &RelPath, fd: &OwnedFd) {
    let Some(left) = lock(&shared.partials).dirs.remove(dir) else { return };
    for f in left.into_values() {
        if !shared.dry_run() {
            let _ = rustix::fs::unlinkat(fd, fsys::os(&f.temp_name), AtFlags::empty());
        }
    }
}

/// Takes over the partial file of `entry`, if one was found and its journal fits: it gets a
/// temporary name of this process, and the chunks its journal records are hashed as they are
/// on disk now. `None`: the file starts over (an unusable partial file is removed).
pub(super) fn adopt(
    shared: &Shared<'_>,
    dfd: &Arc<OwnedFd>,
    entry: &Entry,
    mode: u32,
    answer: &mut Answer,
) -> Option<(Parked, Vec<(u64, u64)>)> {
    let (dir, name) = entry.path.split_last()?;
    let found = lock(&shared.partials).dirs.get_mut(&dir)?.remove(name)?;
    let params = &shared.opts.params;
    let chunk = u64::from(params.chunk_bytes);
    let remove = || {
        let _ = rustix::fs::unlinkat(dfd, fsys::os(&found.temp_name), AtFlags::empty());
    };
    let room = NEED_OFFERED_CHUNKS_MAX.saturating_sub(answer.offered_chunks);
    let total = entry.size_bytes.div_ceil(chunk).max(1);
    if let Err(why) =
        found.journal.fits(name, entry.size_bytes, entry.mtime, params.chunk_bytes, now_unix_secs())
    {
        tracing::debug!("partial file of {} not used: {why}", entry.path);
        remove();
        return None;
    }
    if room == 0 || total > OFFER_CHUNKS_MAX as u64 {
        remove();
        return None;
    }
    let (parked, file) = match take_over(dfd, &found, entry, mode) {
        Ok(Some(taken)) => taken,
        Ok(None) => {
            tracing::debug!(
                "partial file of {} not used: its name was given to another file",
                entry.path
            );
            return None;
        }
        Err(e) => {
            tracing::debug!("partial file of {} not used: {e}", entry.path);
            remove();
            return None;
        }
    };
    // Hash what the journal says was written, as it is on disk now (a crash may have lost
    // some of it: those chunks then differ from the source's and are sent again).
    let mut offered = Vec::new();
    let mut buf = vec![0u8; params.chunk_bytes as usize];
    'runs: for &(first, count) in &found.journal.runs {
        for i in first..first + count {
            if offered.len() >= room.min(OFFER_CHUNKS_MAX) {
                break 'runs;
            }
            let at = i * chunk;
            let len = entry.size_bytes.saturating_sub(at).min(chunk) as usize;
            if file.read_exact_at(&mut buf[..len], at).is_err() {
                break 'runs;
            }
            offered.push((i, frame::checksum(&buf[..len])));
        }
    }
    if offered.is_empty() {
        let _ = rustix::fs::unlinkat(dfd, fsys::os(&parked.name), AtFlags::empty());
        return None;
    }
    answer.offered_chunks += offered.len();
    answer.offers.push(Offer { id: entry.id, chunks: offered.clone() });
    // Its descriptor goes now: the first chunk written into it reopens it (`temp_of`), so
    // files waiting for their data hold no descriptor each, however many resume.
    drop(file);
    Some((parked, offered))
}

/// Opens a partial file to write on, only if it is a regular file this user owns with no
/// other name (never someone's file linked in under a temporary name), renamed to a temporary
/// name of this process and cut to the file's size. `None`: the name now holds a file other
/// than the one whose journal was read (left alone).
fn take_over(
    dfd: &Arc<OwnedFd>,
    found: &Found,
    entry: &Entry,
    mode: u32,
) -> io::Result<Option<(Parked, File)>> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(dfd, fsys::os(&found.temp_name), flags, Mode::empty())?;
    fsys::check_regular(&fd)?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_nlink != 1 || st.st_uid != rustix::process::geteuid().as_raw() {
        return Err(io::Error::other("not a partial file of this user's (owner or links)"));
    }
    // The journal was read through another descriptor (`scan`, maybe a listing part ago):
    // whoever may rename in this directory could have swapped the name since. Only the file
    // that carries that journal is taken over; any other is not hashed, written or chmod'ed.
    if fsys::load_journal(fd.as_fd()).as_ref() != Some(&found.journal) {
        return Ok(None);
    }
    let tmp = temp_name(entry.path.file_name());
    rustix::fs::renameat(dfd, fsys::os(&found.temp_name), dfd, fsys::os(&tmp))?;
    let file = File::from(fd);
    let setup = (|| -> io::Result<()> {
        // Writable by its owner until the commit applies the real mode (as a direct
        // descriptor's temporary file is).
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode | 0o200))?;
        rustix::fs::ftruncate(&file, entry.size_bytes)?;
        Ok(())
    })();
    if let Err(e) = setup {
        let _ = rustix::fs::unlinkat(dfd, fsys::os(&tmp), AtFlags::empty());
        return Err(e);
    }
    let parked = Parked {
        name: tmp,
        dir: Arc::clone(dfd),
        dev: st.st_dev,
        ino: st.st_ino,
        direct: false,
        widened: true,
    };
    Ok(Some((parked, file)))
}

/// The journal of `p`'s partial file, holding `runs`.
fn journal(shared: &Shared<'_>, p: &Pending, runs: Vec<(u64, u64)>) -> Journal {
    Journal {
        chunk_bytes: shared.opts.params.chunk_bytes,
        size_bytes: p.size_bytes,
        mtime: p.meta.mtime,
        saved_unix_secs: now_unix_secs(),
        name: p.path.file_name().to_vec(),
        runs,
    }
}

/// Saves the journal of `p`'s temporary file while it is open (under its slot's lock, so never
/// after its commit took it).
pub(super) fn save(shared: &Shared<'_>, p: &Pending, runs: Vec<(u64, u64)>) {
    let slot = lock(&p.temp);
    if let TempSlot::Open(t) = &*slot
        && let Err(e) = fsys::save_journal(t.file.as_fd(), &journal(shared, p, runs))
    {
        tracing::debug!("cannot save the journal of {}: {e}", p.path);
    }
}

/// A complete file parked for its verdict: its journal says so.
pub(super) fn save_complete(shared: &Shared<'_>, p: &Pending, file: &File) {
    if shared.opts.params.resume {
        let total = p.size_bytes.div_ceil(u64::from(shared.opts.params.chunk_bytes)).max(1);
        let _ = fsys::save_journal(file.as_fd(), &journal(shared, p, vec![(0, total)]));
    }
}

/// The session was given up: a partial file that holds chunks is kept with its journal
/// (`runs`); any other temporary file is removed.
pub(super) fn keep_or_discard(shared: &Shared<'_>, p: &Pending, runs: Vec<(u64, u64)>) {
    if runs.is_empty() || shared.dry_run() {
        p.discard();
        return;
    }
    let mut slot = lock(&p.temp);
    let (dir, name) = match &*slot {
        TempSlot::Open(t) => {
            if fsys::save_journal(t.file.as_fd(), &journal(shared, p, runs)).is_err() {
                drop(slot);
                p.discard();
                return;
            }
            (Arc::clone(&t.dir), t.name.clone())
        }
        // Complete and parked (or resumed and not yet written): kept only if it carries a
        // journal — saved when it was parked, or the one it was taken over with. A file system
        // without user extended attributes has none: the file goes (nothing would ever find
        // or remove it).
        TempSlot::Parked(pk) => {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            let journaled =
                rustix::fs::openat(pk.dir.as_fd(), fsys::os(&pk.name), flags, Mode::empty())
                    .ok()
                    .filter(|fd| {
                        rustix::fs::fstat(fd)
                            .is_ok_and(|st| (st.st_dev, st.st_ino) == (pk.dev, pk.ino))
                    })
                    .and_then(|fd| fsys::load_journal(fd.as_fd()));
            if journaled.is_none() {
                drop(slot);
                p.discard();
                return;
            }
            (Arc::clone(&pk.dir), pk.name.clone())
        }
        TempSlot::NotYet | TempSlot::Gone => return,
    };
    // Kept (closed with the slot), under a name that no live process has: a daemon that goes
    // on serving finds it in its next session like any other process.
    *slot = TempSlot::Gone;
    let kept = kept_name(p.path.file_name());
    let renamed = rustix::fs::renameat_with(
        &*dir,
        fsys::os(&name),
        &*dir,
        fsys::os(&kept),
        rustix::fs::RenameFlags::NOREPLACE,
    );
    // A file system without RENAME_NOREPLACE (some network and FUSE ones): a plain rename,
    // if nothing has the name. Left under this process's name, a daemon would never find it.
    if let Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) = renamed
        && let Err(rustix::io::Errno::NOENT) =
            rustix::fs::statat(&*dir, fsys::os(&kept), AtFlags::SYMLINK_NOFOLLOW)
    {
        let _ = rustix::fs::renameat(&*dir, fsys::os(&name), &*dir, fsys::os(&kept));
    }
}

/// `.NAME.0.N.blit-tmp`: a temporary name whose process id is 0, which no process has.
fn kept_name(name: &[u8]) -> Vec<u8> {
    temp_name_of(name, 0)
}

/// Reads a resumed file back before its commit: every chunk must hash as the source's did.
pub(super) fn verify(
    shared: &Shared<'_>,
    p: &Pending,
    temp: &Temp,
    hashes: &[u64],
) -> io::Result<()> {
    let chunk = u64::from(shared.opts.params.chunk_bytes);
    let mut buf = vec![0u8; chunk as usize];
    for (i, &want) in hashes.iter().enumerate() {
        let at = i as u64 * chunk;
        let len = p.size_bytes.saturating_sub(at).min(chunk) as usize;
        temp.file.read_exact_at(&mut buf[..len], at)?;
        if frame::checksum(&buf[..len]) != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the resumed file differs from the source's at offset {at}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_partial_files_are_named_for_no_live_process() {
        for name in [&b"big.bin"[..], b"123", &[b'x'; 255]] {
            let kept = kept_name(name);
            assert!(fsys::is_temp_name(&kept));
            assert_eq!(fsys::temp_pid(&kept), Some(0), "{:?}", String::from_utf8_lossy(&kept));
            assert!(kept.len() <= 255);
        }
    }
}
