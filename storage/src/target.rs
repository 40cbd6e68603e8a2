//! The target half of a transfer: diff, create, write, commit, finalize.
//!
//! The calling thread handles the control messages in order: for each source listing it stats
//! the same names on the target (through one directory handle per directory), asks the pure
//! [`Differ`] what to do, applies directory/symlink/metadata actions at once, and answers with the
//! files whose contents it needs. `write_threads` writers take frames from the transport
//! concurrently: a large file's chunks land in one temporary file (preallocated, holes kept);
//! a bundle's small files are each written and committed in one go.
//!
//! A file is renamed into place only when every chunk arrived and the source vouched that the
//! file did not change while it was read (or, for file-region frames, the target re-checked the
//! source file itself). Hard links, mirror deletions and directory metadata come last, in that
//! order, so directory times survive everything else; deletions only happen when nothing failed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use blitx_core::RelPath;
use blitx_core::frame::{self, FrameKind};
use blitx_core::manifest::{Entry, EntryKind, FileId, IdMap, TargetEntry};
use blitx_core::session::{SessionParams, SourceMsg, TargetMsg};
use blitx_core::transport::{Frame, FrameReceiver, Payload, PayloadStream, TransportError};
use blitx_planner::diff::{Action, Clear, DiffOptions, Differ, needs_target_hash};
use blitx_planner::{Excludes, fsys};
use crossbeam_channel::{Receiver, Sender};
use rustix::fs::{AtFlags, Mode, OFlags};

pub use crate::chunkset::ChunkSet;
use crate::dircache::DirCache;
use crate::direct::{self, DirectFile};
use crate::limits::{self, Exhausted, IdleClock, Limits};
use crate::listing::{ListingCheck, Verdict, Violation};
use crate::meta::{self, Identity, Meta, Privileges};
use crate::report::{ErrorLog, Event, EventKind, Progress, Reporter, Stage, TargetReport};
use crate::root::RootDir;

#[derive(Debug, Clone)]
pub struct TargetOptions {
    pub root: RootDir,
    pub params: SessionParams,
    pub write_threads: usize,
    /// Resolve every path beneath `root` without crossing a symlink. Always on: the target
    /// distrusts its source whether that is a client (daemon) or a daemon (pull).
    pub confine: bool,
    /// Which owners and mode bits a source may ask for.
    pub privileges: Privileges,
    pub limits: Limits,
}

impl TargetOptions {
    /// A target half confined to `root`, with a local user's privileges and no limits.
    pub fn new(root: RootDir, params: SessionParams, write_threads: usize) -> Self {
        TargetOptions {
            root,
            params,
            write_threads,
            confine: true,
            privileges: Privileges::local(),
            limits: Limits::none(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot open target root {path}")]
    OpenRoot { path: String, source: io::Error },
    #[error(transparent)]
    Exclude(#[from] blitx_planner::exclude::ExcludeError),
    #[error("data transport failed")]
    Transport(#[source] TransportError),
    #[error("the source half went away before the transfer finished")]
    ControlClosed,
    #[error("protocol violation by the source: {0}")]
    Protocol(String),
    #[error("protocol violation by the source: {0}")]
    Listing(Violation),
    #[error(transparent)]
    Limit(Exhausted),
    #[error("nothing arrived from the source for {secs} s (idle timeout)")]
    Idle { secs: u64 },
    #[error("the transfer was cancelled")]
    Cancelled,
}

impl From<Violation> for TargetError {
    fn from(v: Violation) -> Self {
        match v {
            Violation::Limit(e) => TargetError::Limit(e),
            other => TargetError::Listing(other),
        }
    }
}

/// Listings at least this long are stat'ed by two threads.
const PARALLEL_STAT_MIN: usize = 256;

/// Live temp files are named `.NAME.PID.N.blit-tmp` (`fsys::TEMP_SUFFIX`) in the file's own
/// directory, and carry the mark of `fsys::mark_temp` while they are written.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_name(name: &[u8]) -> Vec<u8> {
    let tag = format!(
        ".{}.{}{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed),
        fsys::TEMP_SUFFIX
    );
    // Keep within NAME_MAX: shorten the visible part of long names.
    let keep = name.len().min(blitx_core::path::NAME_BYTES_MAX - 1 - tag.len());
    let mut t = Vec::with_capacity(1 + keep + tag.len());
    t.push(b'.');
    t.extend_from_slice(&name[..keep]);
    t.extend_from_slice(tag.as_bytes());
    t
}

struct Temp {
    file: Arc<File>,
    /// Its `O_DIRECT` descriptor, when chunks are written around the page cache (`--io`).
    direct: Option<Arc<DirectFile>>,
    /// Created with owner write permission its real mode lacks (for the direct descriptor).
    widened: bool,
    name: Vec<u8>,
    dir: Arc<OwnedFd>,
}

struct WriteState {
    temp: Option<Temp>,
    chunks: ChunkSet,
    /// The source said every byte was read and the file did not change (`FileRead`).
    read_done: bool,
    /// A chunk failed its checksum and the file was discarded. Whether it changed while the
    /// source read it or was corrupted on the way is known from the source's verdict, which
    /// decides the one error reported for it.
    mismatch: Option<String>,
    failed: bool,
    committed: bool,
    /// Writes into the temp file in progress: the file is committed only when none is (a
    /// repeated chunk still being written must not land in the renamed file).
    writing_now: u32,
}

impl WriteState {
    /// Gives the file up: it is not committed, and its temporary file goes.
    fn discard(&mut self) {
        self.failed = true;
        if let Some(t) = self.temp.take() {
            let _ = rustix::fs::unlinkat(t.dir.as_fd(), fsys::os(&t.name), AtFlags::empty());
        }
    }
}

/// A file whose contents are on their way.
struct Pending {
    path: RelPath,
    meta: Meta,
    size_bytes: u64,
    sparse: bool,
    state: Mutex<WriteState>,
    /// Held around each write into the file. The kernel lets one buffered write into a file
    /// run at a time (the inode lock), and writers waiting for it spin on their CPUs: measured
    /// on tmpfs with four streams, a fifth of the receiver's CPU. Waiting here, they sleep.
    writing: Mutex<()>,
}

impl Pending {
    /// What it is charged to the session's budget while it waits.
    fn cost_bytes(&self) -> u64 {
        limits::PENDING_FILE_BYTES + self.path.as_bytes().len() as u64
    }
}

/// Forgets a file that no longer waits for data, returning its charge to the budget.
fn unpend(limits: &Limits, p: &Pending) {
    limits.release(p.cost_bytes());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Counters {
    files_copied: AtomicU64,
    bytes_copied: AtomicU64,
    meta_updated: AtomicU64,
    dirs_created: AtomicU64,
    symlinks: AtomicU64,
    hardlinks: AtomicU64,
    deleted: AtomicU64,
    unsupported: AtomicU64,
}

struct Shared<'a> {
    opts: &'a TargetOptions,
    dirs: DirCache,
    id: Identity,
    pending: Mutex<IdMap<Arc<Pending>>>,
    reporter: &'a dyn Reporter,
    progress: &'a Progress,
    cancel: &'a AtomicBool,
    errors: ErrorLog,
    counters: Counters,
    fatal: Mutex<Option<TargetError>>,
    transport: &'a dyn FrameReceiver,
    /// Owners are applied (taken from the source, or the operator's configured owner).
    owners: bool,
    /// With `--fsync`: the directories that gained or lost names, made durable at the end.
    touched_dirs: Mutex<HashSet<RelPath>>,
}

/// A directory listing still arriving in parts (mirror mode needs all of its names).
#[derive(Default)]
struct OpenListing {
    source_names: HashSet<Vec<u8>>,
    /// Bytes charged to the session's budget for this listing's names.
    charged_bytes: u64,
    /// The directory was searched for crash debris in this session.
    debris_checked: bool,
}

/// Everything the diff loop defers to the end.
#[derive(Default)]
struct Deferred {
    dirs: Vec<(RelPath, Meta)>,
    root_meta: Option<Meta>,
    links: Vec<(RelPath, RelPath)>,
    deletions: Vec<(RelPath, EntryKind)>,
    /// Directories created (or, in a dry run, that would be): their target listing is empty.
    fresh_dirs: HashSet<RelPath>,
    listings: HashMap<RelPath, OpenListing>,
    walk_errors: u64,
    check: ListingCheck,
}

/// Runs the target half to completion.
#[allow(clippy::too_many_arguments)]
pub fn run_target(
    opts: &TargetOptions,
    from_source: Receiver<SourceMsg>,
    to_source: Sender<TargetMsg>,
    transport: &dyn FrameReceiver,
    reporter: &dyn Reporter,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<TargetReport, TargetError> {
    let excludes = Excludes::new(&opts.params.excludes)?;
    let root_fd = opts
        .root
        .dup()
        .map_err(|e| TargetError::OpenRoot { path: opts.root.display().to_string(), source: e })?;
    let id = Identity::current();
    let shared = Shared {
        opts,
        dirs: DirCache::new(root_fd, opts.confine),
        id,
        pending: Mutex::new(IdMap::default()),
        reporter,
        progress,
        cancel,
        errors: ErrorLog::default(),
        counters: Counters::default(),
        fatal: Mutex::new(None),
        transport,
        owners: opts.privileges.applies_owners(opts.params.preserve_owner),
        touched_dirs: Mutex::default(),
    };
    let diff_opts = DiffOptions {
        compare: opts.params.compare,
        mirror: opts.params.mirror,
        owner: shared.owners && id.root,
    };
    let mut differ = Differ::new(diff_opts, excludes);
    let mut deferred =
        Deferred { check: ListingCheck::new(opts.limits.entries_max), ..Deferred::default() };

    std::thread::scope(|s| {
        let writers: Vec<_> = (0..opts.write_threads.max(1))
            .map(|_| {
                s.spawn(blitx_core::placer::worker(blitx_core::placer::WorkerRole::Writer, || {
                    writer(&shared)
                }))
            })
            .collect();
        if let Err(e) = control_loop(&shared, &mut differ, &mut deferred, &from_source, &to_source)
        {
            shared.fail(e);
        }
        for w in writers {
            let _ = w.join();
        }
    });

    if let Some(e) = lock(&shared.fatal).take() {
        cleanup_temps(&shared);
        return Err(e);
    }
    if cancel.load(Ordering::Acquire) {
        cleanup_temps(&shared);
        return Err(TargetError::Cancelled);
    }
    // Every needed file must have been committed or reported failed by the source.
    let leftovers: Vec<Arc<Pending>> = lock(&shared.pending).drain().map(|(_, p)| p).collect();
    for p in leftovers {
        unpend(&shared.opts.limits, &p);
        let st = lock(&p.state);
        if !st.committed && !st.failed {
            drop(st);
            abort_file(&p);
            shared.errors.push(p.path.clone(), "incomplete: not all of its data arrived".into());
        }
    }
    let finalizing = Instant::now();
    // A memory session made nothing to finalize.
    if opts.params.mem_bytes.is_none() {
        finalize(&shared, &mut deferred);
    }
    progress.stages.add(Stage::Finalize, finalizing);

    let c = &shared.counters;
    let (errors, error_count) = shared.errors.take();
    let mirror_skipped = opts.params.mirror
        && !deferred.deletions.is_empty()
        && error_count + deferred.walk_errors > 0;
    Ok(TargetReport {
        files_copied: c.files_copied.load(Ordering::Relaxed),
        bytes_copied: c.bytes_copied.load(Ordering::Relaxed),
        meta_updated: c.meta_updated.load(Ordering::Relaxed),
        dirs_created: c.dirs_created.load(Ordering::Relaxed),
        symlinks: c.symlinks.load(Ordering::Relaxed),
        hardlinks: c.hardlinks.load(Ordering::Relaxed),
        deleted: c.deleted.load(Ordering::Relaxed),
        unsupported: c.unsupported.load(Ordering::Relaxed),
        deletions_skipped: mirror_skipped,
        errors,
        error_count,
    })
}

impl Shared<'_> {
    /// With `--fsync`, remembers that `path`'s directory gained or lost a name.
    fn touched(&self, path: &RelPath) {
        if self.opts.params.fsync
            && let Some((dir, _)) = path.split_last()
        {
            lock(&self.touched_dirs).insert(dir);
        }
    }

    /// With `--fsync`, makes a new file's data (and its metadata) durable before its rename.
    fn sync_file(&self, file: BorrowedFd<'_>) -> io::Result<()> {
        if self.opts.params.fsync {
            rustix::fs::fsync(file)?;
        }
        Ok(())
    }

    fn fail(&self, e: TargetError) {
        let mut f = lock(&self.fatal);
        if f.is_none() {
            *f = Some(e);
        }
        drop(f);
        self.cancel.store(true, Ordering::Release);
        self.transport.abort();
    }

    fn event(&self, kind: EventKind, path: &RelPath, bytes: u64, message: Option<String>) {
        self.reporter.event(Event { kind, path: path.clone(), bytes, message });
    }

    fn error(&self, path: &RelPath, message: String) {
        self.event(EventKind::Failed, path, 0, Some(message.clone()));
        self.errors.push(path.clone(), message);
    }

    fn dry_run(&self) -> bool {
        self.opts.params.dry_run
    }
}

fn control_loop(
    shared: &Shared<'_>,
    differ: &mut Differ,
    deferred: &mut Deferred,
    from_source: &Receiver<SourceMsg>,
    to_source: &Sender<TargetMsg>,
) -> Result<(), TargetError> {
    let mut idle = IdleClock::new(shared.opts.limits.idle_timeout, shared.progress);
    loop {
        if shared.cancel.load(Ordering::Acquire) {
            return Err(TargetError::Cancelled);
        }
        let msg = match from_source.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(m) => m,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if lock(&shared.fatal).is_some() {
                    return Ok(());
                }
                // Idle: no control message and no data for the whole timeout.
                if let Some(secs) = idle.expired(shared.progress) {
                    return Err(TargetError::Idle { secs });
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(TargetError::ControlClosed);
            }
        };
        idle.heard();
        match msg {
            SourceMsg::Root(mut entry) => {
                deferred.check.root()?;
                if entry.kind != EntryKind::Dir {
                    return Err(TargetError::Protocol("the source root is not a directory".into()));
                }
                let p = &shared.opts.privileges;
                p.restrict(&mut entry, &shared.id, shared.opts.params.preserve_owner);
                deferred.root_meta = Some(Meta::of(&entry));
            }
            SourceMsg::Listing { dir, entries, last_part } => {
                let planning = Instant::now();
                let needs = handle_listing(shared, differ, deferred, &dir, entries, last_part)?;
                shared.progress.stages.add(Stage::Plan, planning);
                send_to_source(shared, to_source, TargetMsg::Need(needs))?;
            }
            SourceMsg::WalkError { path, message } => {
                deferred.walk_errors += 1;
                shared.error(&path, format!("source: {message}"));
            }
            SourceMsg::ManifestEnd => {
                send_to_source(shared, to_source, TargetMsg::NeedEnd)?;
            }
            SourceMsg::FileFailed { id, path, message } => {
                let p = lock(&shared.pending).get(&id).cloned();
                if let Some(p) = p {
                    let mut st = lock(&p.state);
                    // The source's account replaces a checksum failure it explains.
                    st.mismatch = None;
                    st.discard();
                }
                shared.error(&path, format!("source: {message}"));
            }
            SourceMsg::FileRead { id } => {
                // Unknown ids (a bundled or finished file) change nothing.
                let p = lock(&shared.pending).get(&id).cloned();
                if let Some(p) = p {
                    let mut st = lock(&p.state);
                    st.read_done = true;
                    match st.mismatch.take() {
                        // The source read an unchanged file: the bytes were damaged on the way.
                        Some(m) => {
                            drop(st);
                            shared.error(&p.path, format!("{m}: corrupted in transit"));
                        }
                        None => try_commit(shared, id, &p, st),
                    }
                }
            }
            SourceMsg::DataEnd => return Ok(()),
        }
    }
}

fn send_to_source(
    shared: &Shared<'_>,
    to_source: &Sender<TargetMsg>,
    msg: TargetMsg,
) -> Result<(), TargetError> {
    crate::send_or_cancel(to_source, msg, shared.cancel).map_err(|e| match e {
        crate::Unsent::Closed => TargetError::ControlClosed,
        crate::Unsent::Cancelled => TargetError::Cancelled,
    })
}

/// Stats `name` in `dir` on the target; `None` when absent.
fn target_entry(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<TargetEntry>> {
    match fsys::stat_at(dir, name) {
        Ok(st) => Ok(Some(fsys::target_from_stat(dir, name, &st)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn handle_listing(
    shared: &Shared<'_>,
    differ: &mut Differ,
    deferred: &mut Deferred,
    dir: &RelPath,
    mut entries: Vec<Entry>,
    last_part: bool,
) -> Result<Vec<FileId>, TargetError> {
    let mut needs = Vec::new();
    let verdict = deferred.check.listing(dir, &entries, last_part)?;
    if shared.opts.params.mem_bytes.is_some() {
        return sink_listing(shared, deferred, &entries);
    }
    // Every directory named here counts as failed until `apply` made or verified it, so a
    // listing below one that could not be made is skipped, never applied elsewhere.
    for e in entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        deferred.check.directory(&e.path, false);
    }
    // A directory arriving in parts keeps its names until the last part (the duplicate check,
    // and --mirror's deletions); they count against the session's memory.
    let open = deferred.listings.entry(dir.clone()).or_default();
    if !last_part {
        let names_bytes: u64 =
            entries.iter().map(|e| limits::NAME_BYTES + e.path.file_name().len() as u64).sum();
        open.charged_bytes += names_bytes;
        shared
            .opts
            .limits
            .charge("a directory listed in parts", names_bytes)
            .map_err(TargetError::Limit)?;
    }
    if shared.opts.params.mirror {
        open.source_names.extend(entries.iter().map(|e| e.path.file_name().to_vec()));
    }
    let open_done = |deferred: &mut Deferred| {
        if last_part && let Some(open) = deferred.listings.remove(dir) {
            shared.opts.limits.release(open.charged_bytes);
            return Some(open);
        }
        None
    };
    if verdict == Verdict::Skip {
        open_done(deferred);
        return Ok(needs);
    }
    for e in &mut entries {
        shared.opts.privileges.restrict(e, &shared.id, shared.opts.params.preserve_owner);
    }
    let entries = &entries[..];
    let fresh = deferred.fresh_dirs.contains(dir);
    let dfd = if fresh && shared.dry_run() {
        None
    } else {
        match shared.dirs.get(dir) {
            Ok(fd) => Some(fd),
            Err(e) => {
                shared.error(dir, format!("cannot open target directory: {e}"));
                open_done(deferred);
                return Ok(needs);
            }
        }
    };
    let mirror = shared.opts.params.mirror;
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
                first.extend(second.join().unwrap_or_default());
                first
            })
        };
    for (entry, target) in entries.iter().zip(targets) {
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                shared.error(&entry.path, format!("cannot stat target: {e}"));
                continue;
            }
        };
        let decision = differ.decide(entry, target.as_ref());
        differ.leader_target_inode(entry, target.as_ref());
        apply(shared, deferred, dfd.as_deref(), entry, decision, &mut needs)?;
    }
    // Crash debris goes when a transfer writes into its directory again (or, with --mirror,
    // when the directory is read for deletions); a run that writes nothing pays nothing.
    if !needs.is_empty()
        && !fresh
        && let Some(fd) = &dfd
        && let Some(open) = deferred.listings.get_mut(dir)
        && !std::mem::replace(&mut open.debris_checked, true)
        && let Ok(names) = fsys::read_dir_names(fd)
    {
        remove_debris(shared, fd, dir, &names);
    }
    if let Some(open) = open_done(deferred)
        && mirror
        && let (Some(fd), false) = (&dfd, fresh)
    {
        collect_deletions(shared, differ, deferred, fd, dir, &open.source_names);
    }
    Ok(needs)
}

fn collect_deletions(
    shared: &Shared<'_>,
    differ: &mut Differ,
    deferred: &mut Deferred,
    fd: &OwnedFd,
    dir: &RelPath,
    source_names: &HashSet<Vec<u8>>,
) {
    let names = match fsys::read_dir_names(fd) {
        Ok(n) => n,
        Err(e) => {
            shared.error(dir, format!("cannot list target directory for --mirror: {e}"));
            return;
        }
    };
    remove_debris(shared, fd, dir, &names);
    let mut extra = Vec::new();
    for name in names {
        // Marked temporary files left now are this process's own, still being written.
        if source_names.contains(&name) || fsys::is_debris(fd.as_fd(), &name) {
            continue;
        }
        match target_entry(fd.as_fd(), &name) {
            Ok(Some(t)) => extra.push(t),
            Ok(None) => {}
            Err(e) => {
                shared.error(dir, format!("cannot stat {:?}: {e}", String::from_utf8_lossy(&name)))
            }
        }
    }
    let in_source = |n: &[u8]| source_names.contains(n);
    let plan = differ.diff_dir(dir, &[], &extra, Some(&in_source));
    for (name, kind) in plan.deletions {
        if let Ok(path) = dir.join(&name) {
            deferred.deletions.push((path, kind));
        }
    }
}

/// Removes the temporary files an interrupted transfer left among `names` of `dir` (only
/// marked ones, never a user's file; never this process's own). This transfer holds the target
/// lock, so no other blit transfer can be writing here.
fn remove_debris(shared: &Shared<'_>, fd: &OwnedFd, dir: &RelPath, names: &[Vec<u8>]) {
    let ours = std::process::id();
    let mut removed = 0u64;
    let debris =
        names.iter().filter(|n| fsys::temp_pid(n) != Some(ours) && fsys::is_debris(fd.as_fd(), n));
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

fn apply(
    shared: &Shared<'_>,
    deferred: &mut Deferred,
    dfd: Option<&OwnedFd>,
    entry: &Entry,
    decision: blitx_planner::Decision,
    needs: &mut Vec<FileId>,
) -> Result<(), TargetError> {
    let path = &entry.path;
    let name = entry.path.file_name();
    let meta = Meta::of(entry);
    let dry = shared.dry_run();
    let c = &shared.counters;
    if !dry
        && decision.clear != Clear::Nothing
        && let Some(fd) = dfd
        && let Err(e) = clear(shared, fd, path, decision.clear)
    {
        shared.error(path, e);
        return Ok(());
    }
    let res: Result<(), String> = match decision.action {
        Action::Skip => Ok(()),
        Action::Unsupported => {
            c.unsupported.fetch_add(1, Ordering::Relaxed);
            shared.event(EventKind::Unsupported, path, 0, Some("special file not copied".into()));
            Ok(())
        }
        Action::KeepDir => {
            keep_dir(shared, deferred, path, meta)?;
            Ok(())
        }
        Action::MakeDir => {
            c.dirs_created.fetch_add(1, Ordering::Relaxed);
            shared.event(EventKind::DirCreated, path, 0, None);
            let made = match dfd {
                Some(fd) if !dry => {
                    // Owner-writable until finalization sets the real mode.
                    rustix::fs::mkdirat(fd, fsys::os(name), Mode::from_raw_mode(0o700))
                        .map_err(|e| format!("cannot create directory: {e}"))
                }
                _ => Ok(()),
            };
            if made.is_ok() {
                shared.touched(path);
                deferred.fresh_dirs.insert(path.clone());
                keep_dir(shared, deferred, path, meta)?;
            }
            made
        }
        Action::MakeSymlink => {
            c.symlinks.fetch_add(1, Ordering::Relaxed);
            shared.event(EventKind::Symlinked, path, 0, None);
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
            shared.event(EventKind::MetaUpdated, path, 0, None);
            match dfd {
                Some(fd) if !dry => {
                    meta::apply_at(fd.as_fd(), name, entry.kind, &meta, &shared.id, shared.owners)
                        .map_err(|e| format!("cannot update metadata: {e}"))
                }
                _ => Ok(()),
            }
        }
        Action::Hardlink { leader } => {
            deferred.links.push((path.clone(), leader));
            Ok(())
        }
        Action::CopyFile => {
            if dry {
                c.files_copied.fetch_add(1, Ordering::Relaxed);
                c.bytes_copied.fetch_add(entry.size_bytes, Ordering::Relaxed);
                shared.event(EventKind::Copied, path, entry.size_bytes, None);
            } else {
                need_file(shared, entry, meta, needs)?;
            }
            Ok(())
        }
    };
    if let Err(message) = res {
        shared.error(path, message);
    }
    Ok(())
}

/// Asks the source for a file: it is pending (charged to the session's budget) until committed
/// or failed.
fn need_file(
    shared: &Shared<'_>,
    entry: &Entry,
    meta: Meta,
    needs: &mut Vec<FileId>,
) -> Result<(), TargetError> {
    let chunks = if shared.opts.params.is_small(entry.size_bytes) {
        1
    } else {
        shared.opts.params.chunk_count(entry.size_bytes)
    };
    let p = Arc::new(Pending {
        path: entry.path.clone(),
        meta,
        size_bytes: entry.size_bytes,
        sparse: entry.sparse,
        state: Mutex::new(WriteState {
            temp: None,
            chunks: ChunkSet::new(chunks),
            read_done: false,
            mismatch: None,
            failed: false,
            committed: false,
            writing_now: 0,
        }),
        writing: Mutex::new(()),
    });
    let cost = p.cost_bytes();
    shared
        .opts
        .limits
        .charge("files whose data is on its way", cost)
        .map_err(TargetError::Limit)?;
    if lock(&shared.pending).insert(entry.id, p).is_some() {
        // Two files of this session share an id: one would silently go missing.
        return Err(TargetError::Protocol(format!(
            "file id {} of {} was already used by another file",
            entry.id, entry.path
        )));
    }
    needs.push(entry.id);
    Progress::add(&shared.progress.files_needed, 1);
    Progress::add(&shared.progress.bytes_needed, entry.size_bytes);
    Ok(())
}

/// A listing in a memory-to-memory session (`--mem`): checked like any other, then every
/// chunked file in it is needed; nothing is looked up or created on disk.
fn sink_listing(
    shared: &Shared<'_>,
    deferred: &mut Deferred,
    entries: &[Entry],
) -> Result<Vec<FileId>, TargetError> {
    let mut needs = Vec::new();
    for e in entries {
        match e.kind {
            EntryKind::Dir => deferred.check.directory(&e.path, true),
            EntryKind::File if shared.opts.params.is_small(e.size_bytes) => {
                return Err(TargetError::Protocol(format!(
                    "{} is bundled: a memory session moves chunked files only",
                    e.path
                )));
            }
            EntryKind::File if e.sparse => {
                return Err(TargetError::Protocol(format!(
                    "{} is sparse: a memory session moves generated data, no holes",
                    e.path
                )));
            }
            EntryKind::File => need_file(shared, e, Meta::of(e), &mut needs)?,
            _ => {}
        }
    }
    Ok(needs)
}

/// Records a directory made or verified in this session: its listing may come now, and its
/// metadata is applied at the end.
fn keep_dir(
    shared: &Shared<'_>,
    deferred: &mut Deferred,
    path: &RelPath,
    meta: Meta,
) -> Result<(), TargetError> {
    let cost = limits::DIR_BYTES + path.as_bytes().len() as u64;
    shared.opts.limits.charge("directories", cost).map_err(TargetError::Limit)?;
    deferred.check.directory(path, true);
    deferred.dirs.push((path.clone(), meta));
    Ok(())
}

fn clear(shared: &Shared<'_>, fd: &OwnedFd, path: &RelPath, how: Clear) -> Result<(), String> {
    let name = fsys::os(path.file_name());
    match how {
        Clear::Nothing => Ok(()),
        Clear::NonDir => rustix::fs::unlinkat(fd, name, AtFlags::empty())
            .map_err(|e| format!("cannot remove the file in the way: {e}")),
        Clear::Dir { recursive } => {
            shared.dirs.forget(path);
            if recursive {
                remove_tree(fd.as_fd(), path.file_name())
                    .map(|_| ())
                    .map_err(|e| format!("cannot remove the directory in the way: {e}"))
            } else {
                rustix::fs::unlinkat(fd, name, AtFlags::REMOVEDIR).map_err(|e| {
                    format!("a non-empty directory is in the way ({e}); use --mirror to replace it")
                })
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

fn make_symlink(
    shared: &Shared<'_>,
    fd: &OwnedFd,
    entry: &Entry,
    meta: &Meta,
) -> Result<(), String> {
    let name = entry.path.file_name();
    let target = entry.link_target.as_deref().unwrap_or_default();
    let tmp = temp_name(name);
    rustix::fs::symlinkat(fsys::os(target), fd, fsys::os(&tmp))
        .map_err(|e| format!("cannot create symlink: {e}"))?;
    let done =
        meta::apply_at(fd.as_fd(), &tmp, EntryKind::Symlink, meta, &shared.id, shared.owners)
            .map_err(|e| format!("cannot set symlink metadata: {e}"))
            .and_then(|()| {
                rustix::fs::renameat(fd, fsys::os(&tmp), fd, fsys::os(name))
                    .map_err(|e| format!("cannot rename symlink into place: {e}"))
            });
    if done.is_err() {
        let _ = rustix::fs::unlinkat(fd, fsys::os(&tmp), AtFlags::empty());
    }
    done
}

fn abort_file(p: &Pending) {
    lock(&p.state).discard();
}

fn cleanup_temps(shared: &Shared<'_>) {
    let all: Vec<Arc<Pending>> = lock(&shared.pending).drain().map(|(_, p)| p).collect();
    for p in all {
        unpend(&shared.opts.limits, &p);
        abort_file(&p);
    }
}

// ---------------------------------------------------------------------------------------------
// Writers

fn writer(shared: &Shared<'_>) {
    let stages = &shared.progress.stages;
    loop {
        let waiting = Instant::now();
        let received = shared.transport.recv();
        stages.add(Stage::Receive, waiting);
        let writing = Instant::now();
        let frame = match received {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(TransportError::Cancelled) => return,
            Err(e) => {
                shared.fail(TargetError::Transport(e));
                return;
            }
        };
        let result = match frame.header.kind {
            FrameKind::Bundle => write_bundle(shared, &frame),
            FrameKind::Chunk | FrameKind::Hole => write_chunk(shared, frame),
            FrameKind::End => Ok(()),
        };
        stages.add(Stage::Write, writing);
        if let Err(e) = result {
            shared.fail(e);
            return;
        }
    }
}

fn pending(shared: &Shared<'_>, id: FileId) -> Result<Arc<Pending>, TargetError> {
    lock(&shared.pending)
        .get(&id)
        .cloned()
        .ok_or_else(|| TargetError::Protocol(format!("data for file {id}, which was not needed")))
}

/// Creates the temp file of `p`; a chunked file that may go direct (`--io`) also gets its
/// `O_DIRECT` descriptor.
fn create_temp(shared: &Shared<'_>, p: &Pending, chunked: bool) -> io::Result<Temp> {
    let (dir, name) =
        p.path.split_last().ok_or_else(|| io::Error::other("the root is not a file"))?;
    let dfd = shared.dirs.get(&dir)?;
    let tmp = temp_name(name);
    let params = &shared.opts.params;
    let wants_direct = chunked && direct::wants_direct(params.io, p.size_bytes, p.sparse);
    // The direct descriptor is a second open for writing: the owner needs write permission
    // meanwhile, even for a read-only file (its mode is applied at commit).
    let mode = if wants_direct { p.meta.mode | 0o200 } else { p.meta.mode };
    let fd = rustix::fs::openat(
        dfd.as_fd(),
        fsys::os(&tmp),
        // Read access too: a spliced piece is read back to verify its checksum.
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    fsys::mark_temp(fd.as_fd());
    let file = File::from(fd);
    let direct = wants_direct
        .then(|| DirectFile::open(dfd.as_fd(), &tmp, &file, params.io, params.io_depth, true))
        .flatten()
        .map(Arc::new);
    let widened = mode != p.meta.mode;
    Ok(Temp { file: Arc::new(file), direct, widened, name: tmp, dir: dfd })
}

/// Applies metadata and renames the temp file into place.
fn commit(shared: &Shared<'_>, p: &Pending, temp: &Temp) -> io::Result<()> {
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

fn file_done(shared: &Shared<'_>, p: &Pending) {
    Progress::add(&shared.progress.files_done, 1);
    let c = &shared.counters;
    c.files_copied.fetch_add(1, Ordering::Relaxed);
    c.bytes_copied.fetch_add(p.size_bytes, Ordering::Relaxed);
    shared.event(EventKind::Copied, &p.path, p.size_bytes, None);
}

fn write_bundle(shared: &Shared<'_>, frame: &Frame) -> Result<(), TargetError> {
    if shared.opts.params.mem_bytes.is_some() {
        return Err(TargetError::Protocol("a bundle in a memory session".into()));
    }
    let Payload::Buffer(lease) = &frame.payload else {
        return Err(TargetError::Protocol("bundle without a buffer payload".into()));
    };
    let data = lease.data();
    if data.len() != frame.header.len_bytes as usize {
        return Err(TargetError::Protocol("bundle length differs from its header".into()));
    }
    frame.header.verify(data).map_err(|e| TargetError::Protocol(e.to_string()))?;
    let items = frame::parse_bundle(data).map_err(|e| TargetError::Protocol(e.to_string()))?;
    // One lock for the whole bundle, not one per file.
    let files: Vec<Arc<Pending>> = {
        let pending = lock(&shared.pending);
        items
            .iter()
            .map(|i| {
                pending.get(&i.file_id).cloned().ok_or_else(|| {
                    TargetError::Protocol(format!(
                        "data for file {}, which was not needed",
                        i.file_id
                    ))
                })
            })
            .collect::<Result<_, _>>()?
    };
    let mut committed = Vec::with_capacity(items.len());
    // Consecutive files usually share a directory: keep its handle.
    let mut dir_cache: Option<(RelPath, Arc<OwnedFd>)> = None;
    for (item, p) in items.iter().zip(&files) {
        if item.failed() {
            continue; // the source reports it with FileFailed
        }
        if u64::from(item.len_bytes) != p.size_bytes {
            return Err(TargetError::Protocol(format!(
                "bundle carries {} bytes for {}, expected {}",
                item.len_bytes, p.path, p.size_bytes
            )));
        }
        let bytes = &data[item.data_offset..item.data_offset + item.len_bytes as usize];
        let mut st = lock(&p.state);
        if st.failed || st.committed {
            continue;
        }
        if !st.chunks.mark(0) {
            return Err(TargetError::Protocol(format!("file {} sent twice", p.path)));
        }
        let Some((dir, name)) = p.path.split_last() else {
            return Err(TargetError::Protocol("file data for the root".into()));
        };
        let dfd = match &dir_cache {
            Some((d, fd)) if *d == dir => Ok(Arc::clone(fd)),
            _ => {
                shared.dirs.get(&dir).inspect(|fd| dir_cache = Some((dir.clone(), Arc::clone(fd))))
            }
        };
        let written = dfd.and_then(|dfd| write_small(shared, p, &dfd, name, bytes));
        match written {
            Ok(()) => {
                st.committed = true;
                drop(st);
                committed.push(item.file_id);
                Progress::add(&shared.progress.bytes_done, p.size_bytes);
                file_done(shared, p);
            }
            Err(e) => {
                st.failed = true;
                drop(st);
                shared.error(&p.path, format!("cannot write: {e}"));
            }
        }
    }
    let mut pending = lock(&shared.pending);
    for id in committed {
        if let Some(p) = pending.remove(&id) {
            unpend(&shared.opts.limits, &p);
        }
    }
    Ok(())
}

/// How a small file gets its name. `O_TMPFILE` creates it without any name, and `linkat` gives
/// it its real name only once it is complete, so even SIGKILL leaves nothing behind; where the
/// file system cannot do that, a named temporary file and a rename.
///
/// How `linkat` names an anonymous file depends on the process's privileges (`AT_EMPTY_PATH`
/// needs `CAP_DAC_READ_SEARCH`, else `/proc/self/fd`): learnt once per process.
const LINK_UNKNOWN: u8 = 0;
const LINK_EMPTY_PATH: u8 = 1;
const LINK_PROC: u8 = 2;
static LINK_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(LINK_UNKNOWN);

/// Whether `O_TMPFILE` works depends on the file system: the devices that refused it, so one
/// file system without it (a FUSE or network mount below a daemon's root) does not turn it off
/// for the others. Bounded; past the bound a refusing file system costs one failed `open`
/// per small file.
#[derive(Debug, Default)]
struct NoTmpfile {
    devices: Vec<u64>,
}

impl NoTmpfile {
    const MAX: usize = 64;

    fn refused(&self, dev: u64) -> bool {
        self.devices.contains(&dev)
    }

    fn remember(&mut self, dev: u64) {
        if self.devices.len() < Self::MAX && !self.refused(dev) {
            self.devices.push(dev);
        }
    }
}

static NO_TMPFILE: Mutex<NoTmpfile> = Mutex::new(NoTmpfile { devices: Vec::new() });
/// Set once any file system refused: until then the check costs one atomic load.
static ANY_NO_TMPFILE: AtomicBool = AtomicBool::new(false);

/// Whether `dir`'s file system refused `O_TMPFILE` before (an `fstat` only once any has).
fn tmpfile_refused_in(dir: BorrowedFd<'_>) -> bool {
    if !ANY_NO_TMPFILE.load(Ordering::Relaxed) {
        return false;
    }
    rustix::fs::fstat(dir).is_ok_and(|st| lock(&NO_TMPFILE).refused(st.st_dev))
}

fn remember_tmpfile_refused(dir: BorrowedFd<'_>) {
    if let Ok(st) = rustix::fs::fstat(dir) {
        lock(&NO_TMPFILE).remember(st.st_dev);
        ANY_NO_TMPFILE.store(true, Ordering::Relaxed);
    }
}

/// Writes and commits one small file in `dir` (all of its bytes are in `data`).
fn write_small(
    shared: &Shared<'_>,
    p: &Pending,
    dir: &Arc<OwnedFd>,
    name: &[u8],
    data: &[u8],
) -> io::Result<()> {
    let preserve = shared.owners;
    if !tmpfile_refused_in(dir.as_fd()) {
        match rustix::fs::openat(
            dir.as_fd(),
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(p.meta.mode),
        ) {
            Ok(fd) => {
                let file = File::from(fd);
                write_all_at(&file, data, 0, p.sparse)?;
                meta::apply_to_new_file(file.as_fd(), &p.meta, &shared.id, preserve)?;
                shared.sync_file(file.as_fd())?;
                shared.touched(&p.path);
                return link_anonymous(&file, dir, name);
            }
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL,
            ) => {
                remember_tmpfile_refused(dir.as_fd());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let temp = create_temp(shared, p, false)?;
    let r = write_all_at(&temp.file, data, 0, p.sparse).and_then(|()| commit(shared, p, &temp));
    if r.is_err() {
        let _ = rustix::fs::unlinkat(temp.dir.as_fd(), fsys::os(&temp.name), AtFlags::empty());
    }
    r
}

/// Gives an `O_TMPFILE` file its name. When the name is taken (an update), the file is linked
/// under a temporary name and renamed over the old one, so the replacement stays atomic.
fn link_anonymous(file: &File, dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let link = |target: &[u8]| -> rustix::io::Result<()> {
        loop {
            match LINK_MODE.load(Ordering::Relaxed) {
                LINK_PROC => {
                    let proc_path =
                        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
                    return rustix::fs::linkat(
                        rustix::fs::CWD,
                        proc_path.as_str(),
                        dir,
                        fsys::os(target),
                        AtFlags::SYMLINK_FOLLOW,
                    );
                }
                _ => match rustix::fs::linkat(file, "", dir, fsys::os(target), AtFlags::EMPTY_PATH)
                {
                    // Without CAP_DAC_READ_SEARCH the kernel refuses AT_EMPTY_PATH with ENOENT.
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM)
                        if LINK_MODE.load(Ordering::Relaxed) != LINK_EMPTY_PATH =>
                    {
                        LINK_MODE.store(LINK_PROC, Ordering::Relaxed);
                    }
                    r => {
                        if r.is_ok() {
                            LINK_MODE.store(LINK_EMPTY_PATH, Ordering::Relaxed);
                        }
                        return r;
                    }
                },
            }
        }
    };
    match link(name) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => {
            let tmp = temp_name(name);
            link(&tmp)?;
            rustix::fs::renameat(dir, fsys::os(&tmp), dir, fsys::os(name)).map_err(|e| {
                let _ = rustix::fs::unlinkat(dir, fsys::os(&tmp), AtFlags::empty());
                io::Error::from(e)
            })
        }
        Err(e) => Err(e.into()),
    }
}

fn write_chunk(shared: &Shared<'_>, mut frame: Frame) -> Result<(), TargetError> {
    let h = frame.header;
    let p = pending(shared, h.file_id)?;
    let chunk_bytes = u64::from(shared.opts.params.chunk_bytes);
    // Both ends agree on chunk boundaries; anything else is a peer bug, not a file problem.
    let expected_len = p.size_bytes.saturating_sub(h.offset_bytes).min(chunk_bytes);
    if !h.offset_bytes.is_multiple_of(chunk_bytes)
        || (h.offset_bytes >= p.size_bytes && p.size_bytes > 0)
        || (h.kind == FrameKind::Chunk && u64::from(h.len_bytes) != expected_len)
        || frame.payload.len_bytes() != u64::from(h.len_bytes)
    {
        return Err(TargetError::Protocol(format!(
            "bad chunk for {}: offset {} length {}",
            p.path, h.offset_bytes, h.len_bytes
        )));
    }
    let sink = shared.opts.params.mem_bytes.is_some();
    if sink && h.kind == FrameKind::Hole {
        // A hole would count its chunks as verified without a byte moved.
        return Err(TargetError::Protocol("a hole frame in a memory session".into()));
    }
    let temp = {
        let mut st = lock(&p.state);
        if st.failed || st.committed {
            // Dropping the frame discards its payload (a lent stream is read to its end).
            return Ok(());
        }
        if sink {
            None
        } else {
            if st.temp.is_none() {
                match create_temp(shared, &p, true).and_then(|t| {
                    preallocate(&t.file, p.size_bytes, p.sparse)?;
                    Ok(t)
                }) {
                    Ok(t) => st.temp = Some(t),
                    Err(e) => {
                        st.failed = true;
                        drop(st);
                        shared.error(&p.path, format!("cannot create: {e}"));
                        return Ok(());
                    }
                }
            }
            let temp = st.temp.as_ref().map(|t| (Arc::clone(&t.file), t.direct.clone()));
            if temp.is_some() {
                st.writing_now += 1;
            }
            temp
        }
    };
    let counted = temp.is_some();
    let written = match temp {
        // A memory session's sink: verified, then dropped.
        None if sink => verify_only(&mut frame.payload, &h)?,
        None => return Ok(()),
        Some((temp_file, direct)) => {
            let written = match direct.as_deref() {
                Some(d) => write_direct(d, &mut frame.payload, &h),
                None => None,
            };
            match written {
                Some(w) => w,
                None => write_payload(&temp_file, &p.writing, &mut frame.payload, &h, p.sparse)?,
            }
        }
    };
    drop(frame);
    let mut st = lock(&p.state);
    if counted {
        st.writing_now -= 1;
    }
    if st.failed {
        return Ok(());
    }
    match written {
        Written::Verified => {}
        Written::Mismatch => {
            let m = format!("the chunk at {} failed its checksum", h.offset_bytes);
            st.discard();
            if st.read_done {
                drop(st);
                shared.error(&p.path, format!("{m}: corrupted in transit"));
            } else {
                // Reported when the source's verdict says whether the file changed.
                st.mismatch = Some(m);
            }
            return Ok(());
        }
        Written::Failed(e) => {
            st.discard();
            drop(st);
            shared.error(&p.path, format!("cannot write: {e}"));
            return Ok(());
        }
    }
    // A hole frame covers a run of chunks (a sparse file's empty stretch in one frame).
    let chunks = if h.kind == FrameKind::Hole { h.hole_chunks() } else { 1 };
    if !st.chunks.mark_run(h.offset_bytes / chunk_bytes, chunks) {
        return Err(TargetError::Protocol(format!(
            "chunks at {} (+{chunks}) of {} sent twice or past its end",
            h.offset_bytes, p.path
        )));
    }
    Progress::add(&shared.progress.bytes_done, u64::from(h.len_bytes));
    try_commit(shared, h.file_id, &p, st);
    Ok(())
}

/// Commits the file once every chunk was written and verified and the source said it read the
/// whole file unchanged (`FileRead`), whichever of the two comes last.
fn try_commit(shared: &Shared<'_>, id: FileId, p: &Pending, mut st: MutexGuard<'_, WriteState>) {
    if st.failed || st.committed || !st.read_done || !st.chunks.is_complete() || st.writing_now > 0
    {
        return;
    }
    if shared.opts.params.mem_bytes.is_some() {
        // Nothing to commit in a memory session: every chunk was verified.
        st.committed = true;
        drop(st);
        if let Some(q) = lock(&shared.pending).remove(&id) {
            unpend(&shared.opts.limits, &q);
        }
        file_done(shared, p);
        return;
    }
    let Some(temp) = st.temp.take() else { return };
    match commit(shared, p, &temp) {
        Ok(()) => {
            st.committed = true;
            drop(st);
            if let Some(q) = lock(&shared.pending).remove(&id) {
                unpend(&shared.opts.limits, &q);
            }
            file_done(shared, p);
        }
        Err(e) => {
            st.failed = true;
            drop(st);
            let _ = rustix::fs::unlinkat(temp.dir.as_fd(), fsys::os(&temp.name), AtFlags::empty());
            shared.error(&p.path, format!("cannot commit: {e}"));
        }
    }
}

/// How a chunk's payload ended up in the temporary file.
enum Written {
    /// Written, and its checksum matched (or it never left the kernel: an in-process region).
    Verified,
    /// Its checksum did not match: the file is discarded.
    Mismatch,
    /// The file could not be written.
    Failed(io::Error),
}

/// A memory session's sink: checks a chunk's checksum and writes it nowhere. `Err` only when
/// the transport failed (a lent payload could not be read).
fn verify_only(payload: &mut Payload, h: &frame::FrameHeader) -> Result<Written, TargetError> {
    let ok = match payload {
        Payload::Empty => true,
        Payload::Buffer(lease) => h.verify(lease.data()).is_ok(),
        // Only an in-process transport hands over file regions; no byte of it was exposed.
        Payload::File(_) => true,
        Payload::Stream(stream) => PIECE.with(|piece| {
            let mut piece = piece.borrow_mut();
            if piece.len() < frame::HASH_PIECE_BYTES {
                piece.resize(frame::HASH_PIECE_BYTES, 0);
            }
            let mut hasher = frame::Hasher::default();
            while stream.remaining() > 0 {
                let n = stream.remaining().min(frame::HASH_PIECE_BYTES as u64) as usize;
                stream.read_exact(&mut piece[..n]).map_err(TargetError::Transport)?;
                hasher.update(&piece[..n]);
            }
            Ok::<_, TargetError>(
                h.flags & frame::FLAG_UNCHECKED != 0 || hasher.finish() == h.checksum,
            )
        })?,
    };
    Ok(if ok { Written::Verified } else { Written::Mismatch })
}

/// Writes a buffer payload through the file's direct descriptor, verifying its checksum while
/// the device takes it (a mismatch discards the file, so writing first is safe). `None` when the
/// payload cannot go direct (not a buffer, or not aligned): the caller writes it buffered.
fn write_direct(d: &DirectFile, payload: &mut Payload, h: &frame::FrameHeader) -> Option<Written> {
    let Payload::Buffer(lease) = payload else { return None };
    let len = lease.len();
    if !d.fits(lease.as_ptr(), lease.capacity(), len) {
        return None;
    }
    let mut verified = false;
    let r = d.write(lease.full_mut(), len, h.offset_bytes, |data| {
        verified = h.verify(data).is_ok();
    });
    Some(match r {
        Ok(()) if verified => Written::Verified,
        Ok(()) => Written::Mismatch,
        Err(e) => Written::Failed(e),
    })
}

thread_local! {
    /// A writer thread's piece buffer for lent payloads: one hash piece, small enough to stay
    /// in cache between the socket read, the hash and the write.
    static PIECE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes one chunk's payload at its offset, verifying its checksum. `Err` only when the
/// transport failed (a lent payload could not be read): that ends the session.
fn write_payload(
    file: &File,
    writing: &Mutex<()>,
    payload: &mut Payload,
    h: &frame::FrameHeader,
    sparse: bool,
) -> Result<Written, TargetError> {
    let io = |r: io::Result<bool>| match r {
        Ok(true) => Written::Verified,
        Ok(false) => Written::Mismatch,
        Err(e) => Written::Failed(e),
    };
    let unchecked = h.flags & frame::FLAG_UNCHECKED != 0;
    Ok(match payload {
        Payload::Empty => Written::Verified,
        // Sparse files' writes skip zero blocks, so their payload is verified whole first.
        Payload::Buffer(lease) if sparse => {
            if !unchecked && h.verify(lease.data()).is_err() {
                return Ok(Written::Mismatch);
            }
            let _w = lock(writing);
            io(write_all_at(file, lease.data(), h.offset_bytes, true).map(|()| true))
        }
        // Plain chunks are verified piece by piece as they are written, while each piece is in
        // cache.
        Payload::Buffer(lease) => {
            io(write_verified(file, writing, lease.data(), h.offset_bytes, h))
        }
        // An in-process region is a kernel copy from file to file; no byte passes through
        // memory of ours that could be damaged.
        Payload::File(region) if sparse => {
            let _w = lock(writing);
            io(copy_data_segments(&region.file, file, h.offset_bytes, u64::from(region.len_bytes))
                .map(|()| true))
        }
        Payload::File(region) => {
            let _w = lock(writing);
            io(copy_range(&region.file, file, h.offset_bytes, u64::from(region.len_bytes))
                .map(|()| true))
        }
        Payload::Stream(stream) => PIECE.with(|piece| {
            let mut piece = piece.borrow_mut();
            write_stream(file, writing, stream.as_mut(), h, sparse, &mut piece)
        })?,
    })
}

/// Reads a lent payload from its socket piece by piece, hashing and writing each piece while it
/// is in cache. A failed write stops writing; the rest of the payload is discarded when the
/// stream is dropped.
fn write_stream(
    file: &File,
    writing: &Mutex<()>,
    stream: &mut dyn PayloadStream,
    h: &frame::FrameHeader,
    sparse: bool,
    piece: &mut Vec<u8>,
) -> Result<Written, TargetError> {
    let total = stream.remaining();
    let piece_bytes = if sparse { total as usize } else { frame::HASH_PIECE_BYTES };
    if piece.len() < piece_bytes {
        piece.resize(piece_bytes, 0);
    }
    if sparse {
        // The zero-block skipping needs the whole payload, verified first.
        let data = &mut piece[..total as usize];
        stream.read_exact(data).map_err(TargetError::Transport)?;
        if h.verify(data).is_err() {
            return Ok(Written::Mismatch);
        }
        let _w = lock(writing);
        return Ok(match write_all_at(file, data, h.offset_bytes, true) {
            Ok(()) => Written::Verified,
            Err(e) => Written::Failed(e),
        });
    }
    let mut hasher = frame::Hasher::default();
    let mut at = h.offset_bytes;
    while stream.remaining() > 0 {
        let n = stream.remaining().min(piece_bytes as u64) as usize;
        let data = &mut piece[..n];
        let w = lock(writing);
        let spliced = stream.splice_to(file, at, n);
        drop(w);
        match spliced {
            // Socket → pipe → file without a copy of ours; read back to verify, while the
            // piece is still in cache.
            Some(Ok(Ok(()))) => {
                if let Err(e) = read_back(file, data, at) {
                    return Ok(Written::Failed(e));
                }
                hasher.update(data);
                at += n as u64;
                continue;
            }
            Some(Ok(Err(e))) => return Ok(Written::Failed(e)),
            Some(Err(e)) => return Err(TargetError::Transport(e)),
            None => {}
        }
        stream.read_exact(data).map_err(TargetError::Transport)?;
        hasher.update(data);
        let w = lock(writing);
        let r = pwrite_all(file, data, at);
        drop(w);
        if let Err(e) = r {
            return Ok(Written::Failed(e));
        }
        at += n as u64;
    }
    Ok(if hasher.finish() == h.checksum { Written::Verified } else { Written::Mismatch })
}

/// Reserves the file's extents (`fallocate`), except for sparse files and in memory (tmpfs,
/// ramfs): there `fallocate` is no cheap reservation but allocates and clears every page of the
/// file at once (kernels built with `init_on_alloc`, Debian's default), in the writer that
/// creates the temp file while the other chunks of the file wait. Writing allocates the same
/// pages spread over the transfer instead.
fn preallocate(file: &File, size_bytes: u64, sparse: bool) -> io::Result<()> {
    if size_bytes == 0 {
        return Ok(());
    }
    if !sparse && !direct::in_memory_fs(file) {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size_bytes) {
            Ok(()) => return Ok(()),
            // Not every file system can preallocate; the size is what matters.
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::ftruncate(file, size_bytes)?;
    Ok(())
}

/// Reads back what was just written at `offset` (a spliced piece, to verify it).
fn read_back(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than written",
                ));
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes `data` at `offset` piece by piece, hashing each piece just before writing it; returns
/// whether the checksum matched the header's (always true for unchecked frames).
fn write_verified(
    file: &File,
    writing: &Mutex<()>,
    data: &[u8],
    offset: u64,
    h: &frame::FrameHeader,
) -> io::Result<bool> {
    let unchecked = h.flags & frame::FLAG_UNCHECKED != 0;
    let mut hasher = frame::Hasher::default();
    let mut at = offset;
    for piece in data.chunks(frame::HASH_PIECE_BYTES) {
        if !unchecked {
            hasher.update(piece);
        }
        let _w = lock(writing);
        pwrite_all(file, piece, at)?;
        at += piece.len() as u64;
    }
    Ok(unchecked || hasher.finish() == h.checksum)
}

const ZERO_BLOCK_BYTES: usize = 4096;

/// Writes `data` at `offset`. For sparse files, all-zero 4 KiB blocks are skipped (the file was
/// already extended to its full size), so holes stay holes.
fn write_all_at(file: &File, data: &[u8], offset: u64, sparse: bool) -> io::Result<()> {
    if !sparse {
        return pwrite_all(file, data, offset);
    }
    let mut at = 0;
    while at < data.len() {
        let end = (at + ZERO_BLOCK_BYTES).min(data.len());
        if data[at..end].iter().all(|&b| b == 0) {
            at = end;
            continue;
        }
        // Extend the run over following non-zero blocks and write it in one call.
        let mut run_end = end;
        while run_end < data.len() {
            let next = (run_end + ZERO_BLOCK_BYTES).min(data.len());
            if data[run_end..next].iter().all(|&b| b == 0) {
                break;
            }
            run_end = next;
        }
        pwrite_all(file, &data[at..run_end], offset + at as u64)?;
        at = run_end;
    }
    Ok(())
}

fn pwrite_all(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(file, data, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote nothing")),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies a range between files in the kernel (copy_file_range: no user-space copy, reflinks
/// where the file system can), falling back to read/write when the kernel refuses.
fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = offset + done;
        let mut off_out = offset + done;
        let want = usize::try_from(len - done).unwrap_or(usize::MAX);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source shrank while being copied",
                ));
            }
            Ok(n) => done += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::INVAL,
            ) => {
                return copy_range_buffered(src, dst, offset + done, len - done);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies only the data segments of `[offset, offset+len)` of a sparse source (SEEK_DATA /
/// SEEK_HOLE), so holes stay holes in the target (which was already extended to full size).
fn copy_data_segments(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let data = match rustix::fs::seek(src, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => return Ok(()),
            Err(_) => return copy_range(src, dst, at, end - at),
        };
        if data >= end {
            return Ok(());
        }
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data)).unwrap_or(end).min(end);
        copy_range(src, dst, data, hole - data)?;
        at = hole;
    }
    Ok(())
}

fn copy_range_buffered(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (256 << 10).min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = rustix::io::pread(src, &mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shrank while being copied",
            ));
        }
        pwrite_all(dst, &buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Finalization

fn finalize(shared: &Shared<'_>, deferred: &mut Deferred) {
    let dry = shared.dry_run();
    let c = &shared.counters;
    for (path, leader) in std::mem::take(&mut deferred.links) {
        c.hardlinks.fetch_add(1, Ordering::Relaxed);
        shared.event(EventKind::Hardlinked, &path, 0, Some(format!("=> {leader}")));
        shared.touched(&path);
        if !dry && let Err(e) = make_hardlink(shared, &path, &leader) {
            shared.error(&path, e);
        }
    }
    if shared.opts.params.mirror {
        let failures = shared.errors.count() + deferred.walk_errors;
        if failures > 0 {
            if !deferred.deletions.is_empty() {
                tracing::warn!(
                    "{} deletions skipped because {failures} errors occurred",
                    deferred.deletions.len()
                );
            }
        } else {
            // Deepest first, so a directory is empty by the time its own deletion comes.
            deferred.deletions.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
            for (path, _kind) in &deferred.deletions {
                shared.event(EventKind::Deleted, path, 0, None);
                if dry {
                    c.deleted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some((dir, name)) = path.split_last() else { continue };
                shared.touched(path);
                let r = shared.dirs.get(&dir).and_then(|fd| {
                    shared.dirs.forget(path);
                    remove_tree(fd.as_fd(), name)
                });
                match r {
                    Ok(n) => {
                        c.deleted.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => shared.error(path, format!("cannot delete: {e}")),
                }
            }
        }
    }
    if dry {
        return;
    }
    // Directory metadata last and deepest first: nothing changes a directory after its times
    // are set.
    deferred.dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
    for (path, meta) in &deferred.dirs {
        let Some((dir, name)) = path.split_last() else { continue };
        let r = shared.dirs.get(&dir).and_then(|fd| {
            // One stat instead of changing a directory that is already right (a run that
            // changed nothing in it); one made in this run never is.
            if !deferred.fresh_dirs.contains(path)
                && dir_meta_matches(fd.as_fd(), name, meta, shared.owners && shared.id.root)
            {
                return Ok(());
            }
            meta::apply_to_dir(fd.as_fd(), name, meta, &shared.id, shared.owners)
        });
        if let Err(e) = r {
            shared.error(path, format!("cannot set directory metadata: {e}"));
        }
    }
    if let Some(meta) = deferred.root_meta {
        let r = meta::apply_to_dir_fd(shared.dirs.root(), &meta, &shared.id, shared.owners);
        if let Err(e) = r {
            shared.error(&RelPath::root(), format!("cannot set root metadata: {e}"));
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
            shared.error(&dir, format!("cannot make the directory durable (fsync): {e}"));
        }
    }
}

/// True when `name` in `dir` is a directory (not a symlink) whose mode, mtime and (with
/// `owners`) owner already are `meta`'s.
fn dir_meta_matches(dir: BorrowedFd<'_>, name: &[u8], meta: &Meta, owners: bool) -> bool {
    fsys::stat_at(dir, name).is_ok_and(|st| {
        fsys::kind_of(u32::from(st.stx_mode)) == EntryKind::Dir
            && u32::from(st.stx_mode) & 0o7777 == meta.mode
            && fsys::mtime_of(&st) == meta.mtime
            && (!owners || (st.stx_uid, st.stx_gid) == (meta.uid, meta.gid))
    })
}

fn make_hardlink(shared: &Shared<'_>, path: &RelPath, leader: &RelPath) -> Result<(), String> {
    let (ldir, lname) = leader.split_last().ok_or("bad leader")?;
    let (dir, name) = path.split_last().ok_or("bad path")?;
    let lfd = shared.dirs.get(&ldir).map_err(|e| format!("cannot open {ldir}: {e}"))?;
    let fd = shared.dirs.get(&dir).map_err(|e| format!("cannot open {dir}: {e}"))?;
    let tmp = temp_name(name);
    rustix::fs::linkat(lfd.as_fd(), fsys::os(lname), fd.as_fd(), fsys::os(&tmp), AtFlags::empty())
        .map_err(|e| format!("cannot link to {leader}: {e}"))?;
    rustix::fs::renameat(fd.as_fd(), fsys::os(&tmp), fd.as_fd(), fsys::os(name)).map_err(|e| {
        let _ = rustix::fs::unlinkat(fd.as_fd(), fsys::os(&tmp), AtFlags::empty());
        format!("cannot rename link into place: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_without_tmpfile_leaves_the_others_alone() {
        let mut n = NoTmpfile::default();
        n.remember(7);
        n.remember(7);
        assert!(n.refused(7) && !n.refused(8));
        assert_eq!(n.devices.len(), 1);
        for dev in 100..300 {
            n.remember(dev);
        }
        assert_eq!(n.devices.len(), NoTmpfile::MAX, "bounded");
        assert!(n.refused(7) && n.refused(100) && !n.refused(299));
    }

    #[test]
    fn temp_names_fit_and_are_recognized() {
        let long = vec![b'x'; 255];
        let t = temp_name(&long);
        assert!(t.len() <= 255);
        assert!(fsys::is_temp_name(&t));
        assert!(!fsys::is_temp_name(b"normal"));
        assert_ne!(temp_name(b"a"), temp_name(b"a"));
        // Our own live temps are told apart from a crashed process's by the pid in the name.
        assert_eq!(fsys::temp_pid(&temp_name(b"a.b.c")), Some(std::process::id()));
        assert_eq!(fsys::temp_pid(&t), Some(std::process::id()));
        assert_eq!(fsys::temp_pid(b".x.blit-tmp"), None);
    }
}
