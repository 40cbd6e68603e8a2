//! The target half of a transfer: diff, create, write, commit, finalize.
//!
//! The calling thread handles the control messages in order: for each source listing it stats
//! the same names on the target (through one directory handle per directory), asks the pure
//! [`Differ`] what to do, applies directory/symlink/metadata actions at once, and answers with the
//! files whose contents it needs. `write_threads` writers take frames from the transport
//! concurrently: a large file's chunks land in one temporary file (preallocated, holes kept);
//! a bundle's small files are each written and committed in one go.
//!
//! Every decision about a needed file — what a frame means for it, when it is complete, the
//! commit, the one error it reports — is made by [`Receiving`] (`blitx-session`, sans-IO, run
//! by the simulator too); this shell holds it behind one lock taken briefly per frame and
//! carries out the steps it returns. A file is renamed into place only when every chunk was
//! written and verified, no write into it is running, and the source vouched that the file did
//! not change while it was read. Hard links, mirror deletions and directory metadata come last,
//! in that order, so directory times survive everything else; deletions only happen when
//! nothing failed.
//!
//! By job: [`plan`] (listings → actions and needs), [`write`] (frames → temporary files),
//! [`commit`] (the steps: rename, discard, count, report), [`finalize`] (the end).

use blitx_core::itemize::Changes;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::fsys;
use crate::xattr::{self, XattrSel};
use blitx_core::RelPath;
use blitx_core::cancel::Cancel;
use blitx_core::frame::{self, FrameKind};
use blitx_core::manifest::{Entry, EntryKind, FileId, Special, TargetEntry};
use blitx_core::session::{SessionParams, SourceMsg, TargetMsg};
use blitx_core::transport::{Frame, FrameReceiver, Payload, PayloadStream, TransportError};
use blitx_planner::Filters;
use blitx_planner::diff::{Action, Clear, DiffOptions, Differ, needs_target_hash};
use crossbeam_channel::{Receiver, Sender};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::dircache::DirCache;
use crate::direct::{self, DirectFile};
use crate::limits::{self, Exhausted, IdleClock, Limits};
use crate::meta::{self, Identity, Meta, Privileges};
use crate::report::{ErrorLog, Event, EventKind, Progress, Reporter, Stage, TargetReport};
use crate::root::RootDir;
use blitx_session::Violation;
pub use blitx_session::chunkset::ChunkSet;
use blitx_session::{FileError, FileOp};

mod commit;
mod delta;
mod finalize;
mod plan;
mod resume;
mod write;

use blitx_session::listing::{self, Verdict};
use blitx_session::plan::{Deletions, DirMeta, Planning, Scan};
use blitx_session::target::{Admit, Receiving, Step, Wanted, Written};
use commit::*;
use delta::*;
use finalize::*;
use plan::*;
use resume::*;
use write::*;

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
    /// A single-file session (`blit xfer FILE TARGET`): the source sends one regular file of
    /// its root and nothing else, and it lands in `root`.
    pub single: Option<SingleFile>,
}

/// Where a single-file session's one file lands: in the target root, under `name` (`None`:
/// the source's name). See [`Planning::single_file`] for what the target then refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleFile {
    pub name: Option<Vec<u8>>,
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
            single: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot open target root {path}")]
    OpenRoot { path: String, source: io::Error },
    #[error(transparent)]
    Filter(#[from] blitx_planner::FilterError),
    #[error("data transport failed")]
    Transport(#[source] TransportError),
    #[error("the source half went away before the transfer finished")]
    ControlClosed,
    #[error("protocol violation by the source: {0}")]
    Protocol(Violation),
    #[error("protocol violation by the source: {0}")]
    Listing(listing::Violation),
    #[error(transparent)]
    Limit(Exhausted),
    #[error("nothing arrived from the source for {secs} s (idle timeout)")]
    Idle { secs: u64 },
    #[error("the transfer was cancelled")]
    Cancelled,
}

impl From<listing::Violation> for TargetError {
    fn from(v: listing::Violation) -> Self {
        match v {
            listing::Violation::TooManyEntries { limit } => {
                TargetError::Limit(Exhausted::Entries { limit })
            }
            other => TargetError::Listing(other),
        }
    }
}

/// Live temp files are named `.NAME.PID.N.blit-tmp` (`fsys::TEMP_SUFFIX`) in the file's own
/// directory, and carry the mark of `fsys::mark_temp` while they are written.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_name(name: &[u8]) -> Vec<u8> {
    temp_name_of(name, std::process::id())
}

/// A temporary name carrying process id `pid` (0 for partial files kept on purpose: no live
/// process has it).
fn temp_name_of(name: &[u8], pid: u32) -> Vec<u8> {
    let tag = format!(".{pid}.{}{}", TEMP_SEQ.fetch_add(1, Ordering::Relaxed), fsys::TEMP_SUFFIX);
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

/// Where a chunked file's temporary file stands. Only the first state may become the second,
/// so a writer admitted just before the file was given up never creates a new one.
enum TempSlot {
    NotYet,
    Open(Temp),
    /// Complete and waiting for the source's verdict: its descriptors are closed (files
    /// waiting for verdicts cost no descriptor each), and it is reopened by name to commit.
    Parked(Parked),
    /// Discarded, or renamed into place.
    Gone,
}

/// A temporary file whose descriptors were closed: enough to find it again, and to be sure it
/// is the same file (its device and inode).
struct Parked {
    name: Vec<u8>,
    dir: Arc<OwnedFd>,
    dev: u64,
    ino: u64,
    /// Written through the direct descriptor: its last chunk is padded (cut at commit).
    direct: bool,
    widened: bool,
}

/// A file whose contents are on their way: what the shell needs to write and commit it. Its
/// fate (chunks counted, verdicts, the commit) is decided by [`Receiving`].
struct Pending {
    path: RelPath,
    meta: Meta,
    size_bytes: u64,
    sparse: bool,
    /// The old copy its chunks may be rebuilt from (delta).
    basis: Option<Basis>,
    temp: Mutex<TempSlot>,
    /// Held around each write into the file. The kernel lets one buffered write into a file
    /// run at a time (the inode lock), and writers waiting for it spin on their CPUs: measured
    /// on tmpfs with four streams, a fifth of the receiver's CPU. Waiting here, they sleep.
    writing: Mutex<()>,
}

/// What a file waiting for data is charged to the session's budget.
fn pending_cost(path: &RelPath) -> u64 {
    limits::PENDING_FILE_BYTES + path.as_bytes().len() as u64
}

impl Pending {
    /// Removes the temporary file, if there is one; none is created after this.
    fn discard(&self) {
        match std::mem::replace(&mut *lock(&self.temp), TempSlot::Gone) {
            TempSlot::Open(t) => {
                let _ = rustix::fs::unlinkat(t.dir.as_fd(), fsys::os(&t.name), AtFlags::empty());
            }
            TempSlot::Parked(pk) => {
                let _ = rustix::fs::unlinkat(pk.dir.as_fd(), fsys::os(&pk.name), AtFlags::empty());
            }
            TempSlot::NotYet | TempSlot::Gone => {}
        }
    }
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
    /// FIFOs, sockets and device nodes made.
    specials: AtomicU64,
    /// Extended attributes of the source's entries this half did not set.
    xattrs_dropped: AtomicU64,
    /// Bytes of resumed files their partial files already held.
    bytes_reused: AtomicU64,
    /// Signature bytes sent (delta).
    signature_bytes: AtomicU64,
}

struct Shared<'a> {
    opts: &'a TargetOptions,
    dirs: DirCache,
    id: Identity,
    /// The files on their way, and every decision about them.
    files: Mutex<Receiving<Arc<Pending>>>,
    reporter: &'a dyn Reporter,
    progress: &'a Progress,
    cancel: &'a Cancel,
    errors: ErrorLog,
    counters: Counters,
    fatal: Mutex<Option<TargetError>>,
    transport: &'a dyn FrameReceiver,
    /// Owners are applied (taken from the source, or the operator's configured owner).
    owners: bool,
    /// The classes of extended attributes this half sets.
    xattr_sel: XattrSel,
    /// With `--fsync`: the directories that gained or lost names, made durable at the end.
    touched_dirs: Mutex<HashSet<RelPath>>,
    /// Partial files found, waiting for their files' listings.
    partials: Mutex<Partials>,
    /// `--remove-source-files`: the files committed or found up to date, reported to the
    /// source at the end (8 bytes per file; bounded by the session's entry limit).
    committed: Mutex<Vec<FileId>>,
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
    cancel: &Cancel,
) -> Result<TargetReport, TargetError> {
    let filters = Filters::new(&opts.params.filter)?;
    let root_fd = opts
        .root
        .dup()
        .map_err(|e| TargetError::OpenRoot { path: opts.root.display().to_string(), source: e })?;
    let id = Identity::current();
    // A daemon's cap also holds what it receives: frames wait for it before the writers take
    // them, so the transport's window closes and the peer slows down.
    let paced = blitx_core::rate::PacedReceiver::new(
        transport,
        opts.limits.pacer.iter().cloned().collect(),
        cancel.clone(),
    );
    let transport: &dyn FrameReceiver = &paced;
    let shared = Shared {
        opts,
        dirs: DirCache::new(root_fd, opts.confine),
        id,
        files: Mutex::new(
            Receiving::new(opts.params.chunk_bytes, opts.params.mem_bytes.is_some())
                .keeping_partials(opts.params.resume && !opts.params.dry_run),
        ),
        reporter,
        progress,
        cancel,
        errors: ErrorLog::default(),
        counters: Counters::default(),
        fatal: Mutex::new(None),
        transport,
        owners: opts.privileges.applies_owners(opts.params.preserve_owner),
        xattr_sel: opts.privileges.xattr_sel(&id, opts.params.xattrs, opts.params.acls),
        touched_dirs: Mutex::default(),
        partials: Mutex::default(),
        committed: Mutex::default(),
    };
    let diff_opts = DiffOptions {
        compare: opts.params.compare,
        mirror: opts.params.mirror,
        owner: shared.owners && id.root,
    };
    let mut plan = Planning::new(
        Differ::new(diff_opts, filters),
        opts.limits.entries_max,
        opts.params.mem_bytes.is_some(),
        limits::NAME_BYTES,
    );
    if let Some(single) = &opts.single {
        plan = plan.single_file(single.name.clone());
    }

    std::thread::scope(|s| {
        let writers: Vec<_> = (0..opts.write_threads.max(1))
            .map(|_| {
                s.spawn(blitx_core::placer::worker(blitx_core::placer::WorkerRole::Writer, || {
                    writer(&shared)
                }))
            })
            .collect();
        if let Err(e) = control_loop(&shared, &mut plan, &from_source, &to_source) {
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
    if cancel.is_fired() {
        cleanup_temps(&shared);
        return Err(TargetError::Cancelled);
    }
    // Every needed file must have been committed or reported failed by the source.
    let mut steps = Vec::new();
    let left = lock(&shared.files).end(&mut steps);
    for (_, p) in &left {
        shared.opts.limits.release(pending_cost(&p.path));
    }
    carry_out(&shared, steps);
    let finalizing = Instant::now();
    // A memory session made nothing to finalize.
    if opts.params.mem_bytes.is_none() {
        let not_done: Vec<FileId> = left.iter().map(|(id, _)| *id).collect();
        finalize(&shared, &mut plan, &not_done);
    }
    progress.stages.add(Stage::Finalize, finalizing);
    if opts.params.reports_commits() {
        report_commits(&shared, &to_source);
    }

    let c = &shared.counters;
    let (errors, error_count) = shared.errors.take();
    let mirror_skipped = plan.deletions_skipped();
    Ok(TargetReport {
        files_copied: c.files_copied.load(Ordering::Relaxed),
        bytes_copied: c.bytes_copied.load(Ordering::Relaxed),
        meta_updated: c.meta_updated.load(Ordering::Relaxed),
        dirs_created: c.dirs_created.load(Ordering::Relaxed),
        symlinks: c.symlinks.load(Ordering::Relaxed),
        hardlinks: c.hardlinks.load(Ordering::Relaxed),
        deleted: c.deleted.load(Ordering::Relaxed),
        unsupported: c.unsupported.load(Ordering::Relaxed),
        specials: c.specials.load(Ordering::Relaxed),
        xattrs_dropped: c.xattrs_dropped.load(Ordering::Relaxed),
        bytes_reused: c.bytes_reused.load(Ordering::Relaxed),
        signature_bytes: c.signature_bytes.load(Ordering::Relaxed),
        deletions_skipped: mirror_skipped,
        errors,
        error_count,
    })
}

/// `--remove-source-files`: tells the source which files are at the target now, in bounded
/// messages, the last one marked. A source that went away keeps its files.
fn report_commits(shared: &Shared<'_>, to_source: &Sender<TargetMsg>) {
    use blitx_core::session::COMMITTED_IDS_MAX;
    let ids = std::mem::take(&mut *lock(&shared.committed));
    let mut parts = ids.chunks(COMMITTED_IDS_MAX).peekable();
    if parts.peek().is_none() {
        let _ =
            send_to_source(shared, to_source, TargetMsg::Committed { ids: Vec::new(), last: true });
        return;
    }
    while let Some(part) = parts.next() {
        let msg = TargetMsg::Committed { ids: part.to_vec(), last: parts.peek().is_none() };
        if send_to_source(shared, to_source, msg).is_err() {
            return;
        }
    }
}

impl Shared<'_> {
    /// `--remove-source-files`: file `id` is at the target (committed, or up to date).
    fn committed(&self, id: FileId) {
        if self.opts.params.reports_commits() {
            lock(&self.committed).push(id);
        }
    }

    /// The metadata `entry` gets, its attributes charged to the session's budget while held.
    fn meta(&self, entry: &Entry) -> Result<Meta, TargetError> {
        let mut meta = Meta::of(entry, self.xattr_sel);
        if !entry.xattrs.is_empty() {
            let bytes = blitx_core::manifest::xattr_bytes(&entry.xattrs);
            let held = self
                .opts
                .limits
                .hold("extended attributes", bytes, entry.xattrs.clone())
                .map_err(TargetError::Limit)?;
            meta.xattrs = Some(Arc::new(held));
        }
        Ok(meta)
    }

    /// Rewrites a peer's entry to what this half will apply (owners, setid bits, the
    /// attributes it may set), counting the attributes dropped.
    fn restrict(&self, entry: &mut Entry) {
        let p = &self.opts.privileges;
        p.restrict(entry, &self.id, self.opts.params.preserve_owner);
        let dropped = Privileges::restrict_xattrs(entry, self.xattr_sel);
        if dropped > 0 {
            self.counters.xattrs_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

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
        self.cancel.fire();
        self.transport.abort();
    }

    fn event(&self, kind: EventKind, path: &RelPath, bytes: u64, message: Option<String>) {
        self.event_changed(kind, path, bytes, message, kind.default_changes());
    }

    fn event_changed(
        &self,
        kind: EventKind,
        path: &RelPath,
        bytes: u64,
        message: Option<String>,
        changes: Changes,
    ) {
        self.reporter.event(Event { kind, path: path.clone(), bytes, message, changes });
    }

    fn error(&self, e: FileError) {
        let message = e.to_string();
        self.event(EventKind::Failed, &e.path, 0, Some(message.clone()));
        self.errors.push(e.path, message);
    }

    fn dry_run(&self) -> bool {
        self.opts.params.dry_run
    }
}

fn control_loop(
    shared: &Shared<'_>,
    plan: &mut Plan,
    from_source: &Receiver<SourceMsg>,
    to_source: &Sender<TargetMsg>,
) -> Result<(), TargetError> {
    let mut idle =
        IdleClock::new(shared.opts.limits.idle_timeout_for(&shared.opts.params), shared.progress);
    let mut timer = idle.timer();
    loop {
        // Woken by the source's message, the cancel (a failure of this half fires it too), or
        // the idle timer; nothing else runs the clock.
        let msg = match crate::recv_woken(from_source, shared.cancel, &timer) {
            crate::Heard::Msg(m) => m,
            crate::Heard::Cancelled => return Err(TargetError::Cancelled),
            crate::Heard::Closed => return Err(TargetError::ControlClosed),
            crate::Heard::Timer => {
                // Idle: no control message and no data for the whole timeout.
                if let Some(secs) = idle.expired(shared.progress) {
                    return Err(TargetError::Idle { secs });
                }
                timer = idle.timer();
                continue;
            }
        };
        idle.heard();
        match msg {
            SourceMsg::Root(mut entry) => {
                shared.restrict(&mut entry);
                plan.root(entry.kind, shared.meta(&entry)?)?;
            }
            SourceMsg::Listing { seq, dir, mut entries, last_part } => {
                plan.single_entry(&dir, &mut entries)?;
                let planning = Instant::now();
                let mut answer = handle_listing(shared, plan, &dir, entries, last_part)?;
                shared.progress.stages.add(Stage::Plan, planning);
                // Signatures go first: the source takes them with the Need naming their files.
                let signed = answer.signature_bytes;
                shared.counters.signature_bytes.fetch_add(signed, Ordering::Relaxed);
                for (id, part) in std::mem::take(&mut answer.signatures) {
                    send_to_source(shared, to_source, TargetMsg::Signature { id, part })?;
                }
                let need = TargetMsg::Need { listing: seq, ids: answer.ids, offers: answer.offers };
                send_to_source(shared, to_source, need)?;
            }
            SourceMsg::WalkError { path, message } => {
                plan.walk_error();
                shared.error(FileError::source(path, message));
            }
            SourceMsg::ManifestEnd => {
                // The whole listing is known: totals stop growing (progress shows no
                // "scanning" on this side either).
                shared.progress.walk_done.store(true, std::sync::atomic::Ordering::Release);
                send_to_source(shared, to_source, TargetMsg::NeedEnd)?;
            }
            SourceMsg::FileFailed { id, message, .. } => {
                let mut steps = Vec::new();
                lock(&shared.files).file_failed(id, message, &mut steps);
                carry_out(shared, steps);
            }
            SourceMsg::FileRead { id } => {
                let mut steps = Vec::new();
                lock(&shared.files).file_read(id, &mut steps);
                carry_out(shared, steps);
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

#[cfg(test)]
mod tests {
    use super::*;

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
