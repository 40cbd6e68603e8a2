//! The source half of a transfer: walk, answer needs, read, send.
//!
//! Threads (all blocking, none spinning): the walk pool; a forwarder that records each listing's
//! files and passes the listing on to the target; this thread, which turns the target's needs
//! into work units; and `read_threads` readers that fill the transport's buffers (or describe
//! file regions for transports that move bytes themselves) and send frames.
//!
//! A chunked file's fate is decided by [`Reading`] (`blitx_session::source`): which reads of it
//! count, its first failure, the rest of it dropped from the plan, the check that it did not
//! change, and its one verdict. This shell opens, reads, stats and sends, under one lock taken
//! twice per chunk (before the read and after it). Every read holds the file's [`ReadDone`],
//! as does every region of it the transport has not sent yet; the last one dropped tells the
//! machine, which then asks for the check (fstat: size and mtime). Then, and only then, the
//! target is told [`SourceMsg::FileRead`] (the file may be committed) or
//! [`SourceMsg::FileFailed`]. The same fact travels the same way whatever form the payload
//! took. A bundle's files are read and re-checked by the one reader that fills it, and the
//! bundle frame carries the flag.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use crate::fsys;
use crate::walk::{self, WalkOptions};
use blitx_core::cancel::Cancel;
use blitx_core::frame::{
    self, BUNDLE_FLAG_FAILED, FLAG_FILE_VERIFIED, FLAG_UNCHECKED, FrameHeader, FrameKind,
};
use blitx_core::manifest::{Entry, EntryKind, FileId, IdMap, Timestamp};
use blitx_core::session::{NEED_OFFERED_CHUNKS_MAX, Offer, SessionParams, SourceMsg, TargetMsg};
use blitx_core::transport::{
    FileRegion, Frame, FrameSender, Payload, PayloadPref, ReadDone, TransportError,
};
use blitx_core::{BufLease, RelPath};
use blitx_planner::{Chunker, Filters, NeededFile, Unit};
use blitx_session::resume::check_offer;
use blitx_session::source::{
    self as machine, Answers, Begin, Counted, Listed, Reading, Seen, Step,
};
use blitx_session::{Cause, FileError, FileOp, Violation};

use crate::direct::{self, DirectFile};
use crossbeam_channel::{Receiver, Sender};

use crate::dircache::DirCache;
use crate::limits::{IdleClock, Limits};
use crate::report::{ErrorLog, Progress, SourceReport, Stage};
use crate::root::RootDir;

#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub root: RootDir,
    pub params: SessionParams,
    pub walk_threads: usize,
    pub read_threads: usize,
    /// Keep every path inside `root` (daemon exports).
    pub confine: bool,
    /// List `trusted.*` and `security.*` attributes (a daemon only with
    /// `--allow-xattrs-privileged`: root-only attributes are not served to anyone who asks).
    pub privileged_xattrs: bool,
    pub limits: Limits,
    /// A single-file session: send only this regular file of `root` (`blit xfer FILE TARGET`).
    pub single: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Walk(#[from] walk::WalkError),
    #[error(transparent)]
    Filter(#[from] blitx_planner::FilterError),
    /// A `--files-from` path that is missing or leads through a symlink (out of the source).
    #[error("--files-from path {path}: {why}")]
    FilesFrom { path: RelPath, why: &'static str, source: std::io::Error },
    #[error("data transport failed")]
    Transport(#[source] TransportError),
    #[error("the target half went away before the transfer finished")]
    ControlClosed,
    #[error("protocol violation by the target: {0}")]
    Protocol(Violation),
    #[error("nothing arrived from the target for {secs} s (idle timeout)")]
    Idle { secs: u64 },
    #[error("the transfer was cancelled")]
    Cancelled,
}

/// Needed files queued for the readers at most before the source stops taking answers.
const QUEUED_FILES_MAX: usize = 32 * 1024;
/// What the source remembers about a walked file until the target has decided about it.
#[derive(Debug, Clone)]
struct FileRef {
    id: FileId,
    path: RelPath,
    size_bytes: u64,
    mtime: Timestamp,
    sparse: bool,
    /// The chunks the target's partial file holds, with its hashes (index, hash; ascending):
    /// each is read and hashed, and a `Same` frame replaces it where the hashes agree.
    offer: Option<Arc<Vec<(u64, u64)>>>,
    /// The signature of the target's old copy (delta): each chunk goes as a recipe where that
    /// is shorter.
    delta: Option<Arc<HeldIndex>>,
}

/// A basis's index, counted against the signature bytes a source holds while it lives.
struct HeldIndex {
    index: blitx_delta::Index,
    /// Its memory, estimated ([`INDEX_BYTES_PER_BLOCK`]): counted in `held` and charged to the
    /// session's budget while it lives.
    bytes: u64,
    held: Arc<AtomicU64>,
    budget: Option<Arc<crate::limits::Budget>>,
}

/// Memory of an assembled signature per block (its entry and the assembler's overhead),
/// counted per wire byte: a block is 12 bytes on the wire.
const ASSEMBLING_BYTES_PER_WIRE_BYTE: u64 = 2;
/// Memory of a basis's index per block, a generous estimate (`blitx_delta::Index`: the block's
/// sums, a sorted entry, its share of the directory and the filter).
const INDEX_BYTES_PER_BLOCK: u64 = 64;

impl std::fmt::Debug for HeldIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldIndex({} bytes)", self.bytes)
    }
}

impl Drop for HeldIndex {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
        if let Some(b) = &self.budget {
            b.release(self.bytes);
        }
    }
}

/// Signatures the target sent for files of its next answer: assembled until it comes.
#[derive(Default)]
struct Signatures {
    building: IdMap<(blitx_delta::SignatureAssembler, u64)>,
    /// Files whose signature did not fit what a source holds: sent whole.
    declined: std::collections::HashSet<FileId>,
    /// Memory held now for signatures (assembling, and indexes of files not yet read), at
    /// most `SIGNATURE_BYTES_HELD_MAX`.
    held: Arc<AtomicU64>,
}

/// Files one answer may have signatures for (a listing part's entries).
const SIGNED_FILES_MAX: usize = 4096;

impl FileRef {
    fn of(e: &Entry) -> Self {
        FileRef {
            id: e.id,
            path: e.path.clone(),
            size_bytes: e.size_bytes,
            mtime: e.mtime,
            sparse: e.sparse,
            offer: None,
            delta: None,
        }
    }

    /// The hash the target offered for chunk `index`, if it offered it.
    fn offered(&self, index: u64) -> Option<u64> {
        let offer = self.offer.as_deref()?;
        offer.binary_search_by_key(&index, |&(i, _)| i).ok().map(|at| offer[at].1)
    }
}

impl FileRef {
    fn listed(&self) -> Seen {
        Seen { size_bytes: self.size_bytes, mtime: self.mtime }
    }
}

impl Listed for FileRef {
    fn id(&self) -> FileId {
        self.id
    }
    fn of(e: &Entry) -> Option<Self> {
        Some(FileRef::of(e))
    }
}

/// Each sent listing's files, until the target's answer to it arrives (in order): the
/// decisions are [`Answers`]'; this adds the wait of a walk that is too far ahead.
#[derive(Default)]
struct Unanswered {
    answers: Arc<Mutex<Answers<FileRef>>>,
    /// Signalled when an answer took one off (or on cancel), for a walk waiting at the bound.
    answered: Arc<Condvar>,
}

/// A chunked file's handle while it is read (possibly by several readers): what [`Reading`]
/// keeps for the shell from its first read to its last.
#[derive(Clone)]
struct Held {
    /// `None` for a generated file (`--mem`).
    file: Option<Arc<File>>,
    /// Held by every read of the file in progress and every region of it not yet sent; the
    /// last one dropped tells the machine ([`Reading::released`]).
    done: Arc<ReadDone>,
    /// Its `O_DIRECT` descriptor, when it is read around the page cache (`--io`).
    direct: Option<Arc<DirectFile>>,
}

struct Work {
    chunker: Chunker,
    needed: IdMap<FileRef>,
    needs_done: bool,
    busy_readers: usize,
}

struct Shared<'a> {
    opts: &'a SourceOptions,
    dirs: DirCache,
    work: Arc<Mutex<Work>>,
    /// Signalled when work arrives or is taken, and on cancel.
    more_work: Arc<Condvar>,
    /// The chunked files being read. A file's last hold reports to it from any thread, so it
    /// is shared; the holds keep a `Weak`, or every file still open when a session fails would
    /// keep the machine (and itself) alive.
    reading: Arc<Mutex<Reading<Held>>>,
    transport: &'a dyn FrameSender,
    progress: &'a Progress,
    cancel: &'a Cancel,
    errors: Arc<ErrorLog>,
    /// Files' verdicts on their way to the target (see [`Verdicts`]).
    verdicts: Arc<Verdicts>,
    fatal: Mutex<Option<SourceError>>,
    /// Pool slots already holding the generated pattern (`--mem`).
    generated: Mutex<std::collections::HashSet<u32>>,
    files_sent: AtomicU64,
    /// Bytes of offered chunks the target's partial files held already (sent as `Same`).
    bytes_reused: AtomicU64,
    /// Signatures for the next answer (delta).
    signatures: Mutex<Signatures>,
    bundle_seq: AtomicU64,
    /// `--remove-source-files`: the listed files that may be removed at the end.
    removals: crate::remove::Removals,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Verdicts (`FileRead` / `FileFailed`) of files whose reads are over, queued for the target.
/// A file's check runs on whichever thread drops its last read: a reader, a transport's stream
/// thread, or, in process, the target's writer. None of those may wait for the control channel
/// (the target may be waiting for them to drain frames before it reads control messages
/// again), so the check only queues its verdict, and a pump thread of the source sends it.
/// The queue holds at most one verdict per chunked file being sent.
#[derive(Default)]
struct Verdicts {
    /// Queued verdicts, and whether the queue is closed.
    queue: Arc<Mutex<(VecDeque<SourceMsg>, bool)>>,
    /// Signalled when a verdict is queued, the queue closes, or on cancel.
    ready: Arc<Condvar>,
    /// The session failed: the pump stops even with verdicts queued.
    abandoned: AtomicBool,
    /// Set by the pump when it returns.
    pumped: Mutex<bool>,
    pumped_cv: Condvar,
}

impl Verdicts {
    fn push(&self, msg: SourceMsg) {
        lock(&self.queue).0.push_back(msg);
        self.ready.notify_one();
    }

    /// No more verdicts will come: the pump sends what is queued and returns.
    fn close(&self) {
        lock(&self.queue).1 = true;
        self.ready.notify_one();
    }

    fn stopped(&self, cancel: &Cancel) -> bool {
        cancel.is_fired() || self.abandoned.load(Ordering::Acquire)
    }

    /// Closes the queue and waits until the pump has sent everything queued (or gave up).
    fn close_and_wait(&self) {
        self.close();
        let mut done = lock(&self.pumped);
        while !*done {
            done = self.pumped_cv.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sends queued verdicts until closed and empty, the target is gone, or `cancel`.
    fn pump(&self, to_target: &Sender<SourceMsg>, cancel: &Cancel) {
        self.pump_queue(to_target, cancel);
        *lock(&self.pumped) = true;
        self.pumped_cv.notify_all();
    }

    fn pump_queue(&self, to_target: &Sender<SourceMsg>, cancel: &Cancel) {
        loop {
            let msg = {
                let mut q = lock(&self.queue);
                loop {
                    if let Some(m) = q.0.pop_front() {
                        break m;
                    }
                    if q.1 || self.stopped(cancel) {
                        return;
                    }
                    // Woken by a push, the close, or the cancel (`notify_on_cancel`).
                    q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            if crate::send_or_cancel(to_target, msg, cancel).is_err() {
                return;
            }
        }
    }
}

/// Every `--files-from` path must exist beneath the source root, reached through directories
/// only: a symlink on the way could lead out of the root (the walk would never follow it, so
/// the path would silently not be sent). Checked before anything is listed, so a bad list
/// transfers nothing.
pub fn check_files_from(root: BorrowedFd<'_>, paths: &[RelPath]) -> Result<(), SourceError> {
    for path in paths {
        let Some((dir, name)) = path.split_last() else { continue };
        let fail = |why, source| SourceError::FilesFrom { path: path.clone(), why, source };
        let fd = crate::fsys::open_dir_beneath(root, &dir, true).map_err(|e| {
            use rustix::io::Errno;
            let why = match Errno::from_io_error(&e) {
                Some(Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => {
                    "a directory on the way is a symlink or not a directory"
                }
                Some(Errno::NOENT) => "no such directory in SOURCE",
                _ => "cannot open its directory",
            };
            fail(why, e)
        })?;
        crate::fsys::stat_at(fd.as_fd(), name).map_err(|e| fail("no such path in SOURCE", e))?;
    }
    Ok(())
}

/// Runs the source half to completion. Returns when every needed file was sent (or failed) and
/// the transport was finished, or on the first fatal error.
pub fn run_source(
    opts: &SourceOptions,
    to_target: Sender<SourceMsg>,
    from_target: Receiver<TargetMsg>,
    transport: &dyn FrameSender,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<SourceReport, SourceError> {
    let filters = Filters::new(&opts.params.filter)?;
    if let Some(paths) = &opts.params.filter.files_from {
        let root = opts.root.dup().map_err(|e| walk::WalkError::OpenRoot {
            path: opts.root.display().to_string(),
            source: e,
        })?;
        check_files_from(root.as_fd(), paths)?;
    }
    let walk_opts = WalkOptions {
        threads: opts.walk_threads,
        filters,
        checksum: opts.params.compare == blitx_core::session::Compare::Checksum,
        confine: opts.confine,
        single: opts.single.clone(),
        xattrs: crate::xattr::XattrSel {
            user: opts.params.xattrs,
            privileged: opts.params.xattrs && opts.privileged_xattrs,
            acls: opts.params.acls,
        },
    };
    let root_fd = opts.root.dup().map_err(|e| walk::WalkError::OpenRoot {
        path: opts.root.display().to_string(),
        source: e,
    })?;
    // `--bwlimit` and the daemon's cap: every frame waits for them before the transport takes
    // it, whichever transport it is (one bucket per session, shared by every reader).
    let pacers = opts.limits.pacers(&opts.params);
    let paced = blitx_core::rate::PacedSender::new(transport, pacers, cancel.clone());
    let transport: &dyn FrameSender = &paced;
    let shared = Shared {
        opts,
        dirs: DirCache::new(root_fd, opts.confine),
        work: Arc::new(Mutex::new(Work {
            chunker: Chunker::new(&opts.params),
            needed: IdMap::default(),
            needs_done: false,
            busy_readers: 0,
        })),
        more_work: Arc::default(),
        reading: Arc::new(Mutex::new(Reading::new(opts.params.chunk_bytes))),
        transport,
        progress,
        cancel,
        errors: Arc::default(),
        verdicts: Arc::default(),
        fatal: Mutex::new(None),
        generated: Mutex::default(),
        files_sent: AtomicU64::new(0),
        bytes_reused: AtomicU64::new(0),
        signatures: Mutex::default(),
        bundle_seq: AtomicU64::new(0),
        removals: crate::remove::Removals::default(),
    };
    let next_id = AtomicU64::new(1);
    // Every condition variable a thread of this half waits on is woken by the cancel.
    crate::notify_on_cancel(cancel, &shared.work, &shared.more_work);
    crate::notify_on_cancel(cancel, &shared.verdicts.queue, &shared.verdicts.ready);

    // The verdict pump outlives the readers: file regions' checks run while the transport
    // finishes, and every verdict must be sent before DataEnd.
    std::thread::scope(|outer| {
        let verdicts = Arc::clone(&shared.verdicts);
        let pump_to = to_target.clone();
        let pump = outer.spawn(move || verdicts.pump(&pump_to, cancel));
        let r = source_session(&shared, &walk_opts, &to_target, &from_target, &next_id);
        if r.is_err() {
            shared.verdicts.abandoned.store(true, Ordering::Release);
        }
        shared.verdicts.close();
        let _ = pump.join();
        r
    })
}

/// The source half's threads, then the transport's end, then DataEnd.
fn source_session(
    shared: &Shared<'_>,
    walk_opts: &WalkOptions,
    to_target: &Sender<SourceMsg>,
    from_target: &Receiver<TargetMsg>,
    next_id: &AtomicU64,
) -> Result<SourceReport, SourceError> {
    let (opts, progress, cancel, transport) =
        (shared.opts, shared.progress, shared.cancel, shared.transport);
    let pending = Unanswered::default();
    crate::notify_on_cancel(cancel, &pending.answers, &pending.answered);
    let (walk_tx, walk_rx) = crossbeam_channel::bounded::<SourceMsg>(64);
    let outcome = std::thread::scope(|s| -> Result<walk::WalkStats, SourceError> {
        let walker = s.spawn(|| {
            let started = Instant::now();
            let r = match opts.params.mem_bytes {
                Some(n) => Ok(generate_listing(n, &walk_tx, next_id)),
                None => walk::walk(opts.root.fd(), walk_opts, &walk_tx, cancel, next_id),
            };
            progress.stages.add(Stage::Walk, started);
            drop(walk_tx);
            // A walk that cannot start (its root, or a single file that is not one) ends the
            // session at once: the target would wait for listings that never come.
            r.or_else(|e| {
                shared.fail(SourceError::Walk(e));
                Ok::<_, walk::WalkError>(walk::WalkStats::default())
            })
        });
        let forwarder =
            s.spawn(|| forward(shared, &walk_rx, &pending, to_target, progress, cancel));
        let readers: Vec<_> = (0..opts.read_threads.max(1))
            .map(|_| {
                s.spawn(blitx_core::placer::worker(blitx_core::placer::WorkerRole::Reader, || {
                    reader(shared)
                }))
            })
            .collect();

        let dispatched = dispatch(shared, from_target, &pending);
        if let Err(e) = dispatched {
            shared.fail(e);
        }
        for r in readers {
            let _ = r.join();
        }
        let walked = walker.join().unwrap_or_else(|_| Ok(walk::WalkStats::default()));
        let _ = forwarder.join();
        if let Some(e) = lock(&shared.fatal).take() {
            return Err(e);
        }
        if cancel.is_fired() {
            return Err(SourceError::Cancelled);
        }
        Ok(walked?)
    });
    let stats = match outcome {
        Ok(stats) => stats,
        Err(e) => {
            // Dropped outside the lock: a file's last hold reports to the machine.
            let held = lock(&shared.reading).abandon();
            drop(held);
            transport.abort();
            return Err(e);
        }
    };
    transport.finish().map_err(SourceError::Transport)?;
    // Every read is over now (the transport dropped its last region): the pump sends what is
    // queued, then DataEnd follows it.
    shared.verdicts.close_and_wait();
    if crate::send_or_cancel(to_target, SourceMsg::DataEnd, cancel).is_err() {
        return Err(SourceError::ControlClosed);
    }
    let moved = if opts.params.reports_commits() {
        remove_committed(shared, from_target)?
    } else {
        crate::remove::Removed::default()
    };
    let (errors, error_count) = shared.errors.take();
    let t = transport.stats();
    Ok(SourceReport {
        entries: stats.entries,
        dirs: stats.dirs,
        source_bytes: stats.file_bytes,
        files_sent: shared.files_sent.load(Ordering::Relaxed),
        bytes_reused: shared.bytes_reused.load(Ordering::Relaxed),
        bytes_sent: t.payload_bytes,
        errors,
        error_count: error_count + stats.errors,
        files_removed: moved.removed,
        files_kept: moved.kept,
    })
}

/// `--remove-source-files`, after `DataEnd`: takes the target's reports of what it committed
/// until the last one, removing each file that is still what was listed. A target that goes
/// away first leaves the rest kept.
fn remove_committed(
    shared: &Shared<'_>,
    from_target: &Receiver<TargetMsg>,
) -> Result<crate::remove::Removed, SourceError> {
    let mut idle = IdleClock::new(shared.opts.limits.idle_timeout, shared.progress);
    let mut timer = idle.timer();
    let mut done = crate::remove::Removed::default();
    let limits = &shared.opts.limits;
    loop {
        let msg = match crate::recv_woken(from_target, shared.cancel, &timer) {
            crate::Heard::Msg(m) => m,
            crate::Heard::Cancelled => return Err(SourceError::Cancelled),
            crate::Heard::Closed => break,
            crate::Heard::Timer => {
                if let Some(secs) = idle.expired(shared.progress) {
                    return Err(SourceError::Idle { secs });
                }
                timer = idle.timer();
                continue;
            }
        };
        idle.heard();
        match msg {
            TargetMsg::Committed { ids, last } => {
                let r = shared.removals.remove(&shared.dirs, limits, &ids);
                done.removed += r.removed;
                done.kept += r.kept;
                if last {
                    break;
                }
            }
            other => {
                tracing::warn!(
                    kind = other.kind(),
                    "unexpected after the data ended; moving stops"
                );
                break;
            }
        }
    }
    done.kept += shared.removals.left(limits);
    Ok(done)
}

/// Records each listing's files (in the order the target will answer) and passes it on.
fn forward(
    shared: &Shared<'_>,
    walk_rx: &Receiver<SourceMsg>,
    pending: &Unanswered,
    to_target: &Sender<SourceMsg>,
    progress: &Progress,
    cancel: &Cancel,
) {
    loop {
        let mut msg = match crate::recv_woken(walk_rx, cancel, &crossbeam_channel::never()) {
            crate::Heard::Msg(m) => m,
            // The walk is over, or the session cancelled.
            crate::Heard::Closed | crate::Heard::Cancelled | crate::Heard::Timer => return,
        };
        if let SourceMsg::Listing { seq, entries, .. } = &mut msg {
            Progress::add(&progress.entries_seen, entries.len() as u64);
            let mut answers = lock(&pending.answers);
            while !answers.may_send() {
                if cancel.is_fired() {
                    return;
                }
                // Woken by each answer, and by the cancel.
                answers = pending.answered.wait(answers).unwrap_or_else(|p| p.into_inner());
            }
            *seq = answers.sent(entries);
            drop(answers);
            if shared.opts.params.reports_commits() {
                shared.removals.record(&shared.dirs, &shared.opts.limits, entries);
            }
        }
        if matches!(msg, SourceMsg::ManifestEnd) {
            lock(&pending.answers).manifest_end();
            progress.walk_done.store(true, Ordering::Release);
        }
        if crate::send_or_cancel(to_target, msg, cancel).is_err() {
            cancel.fire();
            return;
        }
    }
}

/// Turns the target's answers into work for the readers.
fn dispatch(
    shared: &Shared<'_>,
    from_target: &Receiver<TargetMsg>,
    pending: &Unanswered,
) -> Result<(), SourceError> {
    let mut idle =
        IdleClock::new(shared.opts.limits.idle_timeout_for(&shared.opts.params), shared.progress);
    let mut timer = idle.timer();
    loop {
        // Woken by the target's message, the cancel (a failure of this half fires it too), or
        // the idle timer; nothing else runs the clock.
        let msg = match crate::recv_woken(from_target, shared.cancel, &timer) {
            crate::Heard::Msg(m) => m,
            crate::Heard::Cancelled => return Err(SourceError::Cancelled),
            crate::Heard::Closed => return Err(SourceError::ControlClosed),
            crate::Heard::Timer => {
                if let Some(secs) = idle.expired(shared.progress) {
                    return Err(SourceError::Idle { secs });
                }
                timer = idle.timer();
                continue;
            }
        };
        idle.heard();
        match msg {
            TargetMsg::Need { listing, ids, offers } => {
                tracing::trace!(listing, files = ids.len(), "needs from the target");
                let answered = lock(&pending.answers).answer(listing, &ids);
                pending.answered.notify_one();
                let mut files = answered.map_err(SourceError::Protocol)?;
                attach_offers(shared, &mut files, offers).map_err(SourceError::Protocol)?;
                attach_signatures(shared, &mut files).map_err(SourceError::Protocol)?;
                let mut work = lock(&shared.work);
                // Back-pressure: while the readers are this far behind, stop taking answers, so
                // the target stops diffing and the walk stops listing (memory stays bounded
                // whatever the number of files).
                while work.chunker.queued() >= QUEUED_FILES_MAX && !shared.cancel.is_fired() {
                    // Woken by a reader taking work, and by the cancel.
                    work = shared.more_work.wait(work).unwrap_or_else(|p| p.into_inner());
                }
                for f in files {
                    Progress::add(&shared.progress.files_needed, 1);
                    Progress::add(&shared.progress.bytes_needed, f.size_bytes);
                    work.chunker.push(NeededFile { id: f.id, size_bytes: f.size_bytes });
                    work.needed.insert(f.id, f);
                }
                drop(work);
                shared.more_work.notify_all();
            }
            TargetMsg::Signature { id, part } => {
                signature_part(shared, id, &part).map_err(SourceError::Protocol)?;
            }
            TargetMsg::Committed { .. } => {
                return Err(SourceError::Protocol(Violation::CommittedEarly));
            }
            TargetMsg::NeedEnd => {
                lock(&pending.answers).need_end().map_err(SourceError::Protocol)?;
                let sigs = lock(&shared.signatures);
                if let Some(id) = sigs.building.keys().chain(sigs.declined.iter()).next() {
                    return Err(SourceError::Protocol(Violation::SignatureNotNeeded(*id)));
                }
                drop(sigs);
                lock(&shared.work).needs_done = true;
                shared.more_work.notify_all();
                return Ok(());
            }
        }
    }
}

/// Checks the target's offers (it may be hostile: each names a dense chunked file of this
/// answer, at most once, its chunks in order and inside the file, all of them together within
/// [`NEED_OFFERED_CHUNKS_MAX`]) and attaches each to its file.
fn attach_offers(
    shared: &Shared<'_>,
    files: &mut [FileRef],
    offers: Vec<Offer>,
) -> Result<(), Violation> {
    if offers.is_empty() {
        return Ok(());
    }
    let total: usize = offers.iter().map(|o| o.chunks.len()).sum();
    if total > NEED_OFFERED_CHUNKS_MAX {
        return Err(Violation::OfferTooLarge { limit: NEED_OFFERED_CHUNKS_MAX });
    }
    let params = &shared.opts.params;
    let at: IdMap<usize> = files.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
    for offer in offers {
        let Some(&i) = at.get(&offer.id) else { return Err(Violation::OfferNotNeeded(offer.id)) };
        let f = &mut files[i];
        if f.offer.is_some() {
            return Err(Violation::OfferNotNeeded(offer.id));
        }
        // A memory session's file is generated: nothing of it is on the target's disk.
        let small = params.is_small(f.size_bytes) || params.mem_bytes.is_some();
        check_offer(&offer, &f.path, f.size_bytes, params.chunk_bytes, small, f.sparse)?;
        f.offer = Some(Arc::new(offer.chunks));
    }
    Ok(())
}

/// One signature message from the target (which may be hostile: every message is decoded
/// within its bounds, and what a source holds is bounded — a signature past that is declined
/// and its file sent whole).
fn signature_part(shared: &Shared<'_>, id: FileId, part: &[u8]) -> Result<(), Violation> {
    use blitx_core::session::{SIGNATURE_BYTES_HELD_MAX, SIGNATURE_MESSAGE_BYTES_MAX};
    let bad = |why: String| Violation::BadSignature { id, why };
    if part.len() > SIGNATURE_MESSAGE_BYTES_MAX {
        return Err(bad(format!("a message of {} bytes", part.len())));
    }
    let mut sigs = lock(&shared.signatures);
    if sigs.declined.contains(&id) {
        return Ok(());
    }
    if !sigs.building.contains_key(&id)
        && sigs.building.len() + sigs.declined.len() >= SIGNED_FILES_MAX
    {
        return Err(bad(format!("more than {SIGNED_FILES_MAX} signatures for one answer")));
    }
    let bytes = part.len() as u64 * ASSEMBLING_BYTES_PER_WIRE_BYTE;
    if sigs.held.load(Ordering::Relaxed) + bytes > SIGNATURE_BYTES_HELD_MAX {
        if let Some((_, had)) = sigs.building.remove(&id) {
            sigs.held.fetch_sub(had, Ordering::Relaxed);
        }
        sigs.declined.insert(id);
        return Ok(());
    }
    let limits = blitx_delta::SignatureLimits {
        message_bytes_max: SIGNATURE_MESSAGE_BYTES_MAX,
        blocks_max: SIGNATURE_BYTES_HELD_MAX / blitx_delta::SIGNATURE_ENTRY_BYTES as u64,
    };
    let held = Arc::clone(&sigs.held);
    let (assembler, had) = sigs
        .building
        .entry(id)
        .or_insert_with(|| (blitx_delta::SignatureAssembler::new(limits), 0));
    assembler.push_message(part).map_err(|e| bad(e.to_string()))?;
    *had += bytes;
    held.fetch_add(bytes, Ordering::Relaxed);
    Ok(())
}

/// Every signature that came since the last answer must be for a dense chunked file this
/// answer needs, without an offer; each is indexed and attached to its file.
fn attach_signatures(shared: &Shared<'_>, files: &mut [FileRef]) -> Result<(), Violation> {
    let mut sigs = lock(&shared.signatures);
    if sigs.building.is_empty() && sigs.declined.is_empty() {
        return Ok(());
    }
    let params = &shared.opts.params;
    let at: IdMap<usize> = files.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
    for id in std::mem::take(&mut sigs.declined) {
        if !at.contains_key(&id) {
            return Err(Violation::SignatureNotNeeded(id));
        }
    }
    let held = Arc::clone(&sigs.held);
    for (id, (assembler, bytes)) in std::mem::take(&mut sigs.building) {
        let bad = |why: String| Violation::BadSignature { id, why };
        // Counted until the index goes (or now, if it is refused).
        let release = HeldIndexBytes { bytes, held: Arc::clone(&held) };
        let Some(&i) = at.get(&id) else { return Err(Violation::SignatureNotNeeded(id)) };
        let f = &mut files[i];
        if params.is_small(f.size_bytes) || f.sparse || params.mem_bytes.is_some() {
            return Err(bad("its file is bundled, sparse or generated".into()));
        }
        if f.offer.is_some() {
            return Err(bad("its file is also resumed".into()));
        }
        let signature = assembler.finish().map_err(|e| bad(e.to_string()))?;
        let mem = signature.blocks().len() as u64 * INDEX_BYTES_PER_BLOCK;
        drop(release);
        // The index in place of the assembled signature: past what a source holds, or past the
        // session's budget, the file is sent whole (declined, not refused).
        let limits = &shared.opts.limits;
        let room =
            held.load(Ordering::Relaxed) + mem <= blitx_core::session::SIGNATURE_BYTES_HELD_MAX;
        if !room || limits.charge("delta signatures", mem).is_err() {
            continue;
        }
        let index = match blitx_delta::Index::new(signature) {
            Ok(i) => i,
            Err(e) => {
                limits.release(mem);
                return Err(bad(e.to_string()));
            }
        };
        held.fetch_add(mem, Ordering::Relaxed);
        let budget = limits.budget.clone();
        f.delta = Some(Arc::new(HeldIndex { index, bytes: mem, held: Arc::clone(&held), budget }));
    }
    Ok(())
}

/// Releases signature bytes if an index is not made after all.
struct HeldIndexBytes {
    bytes: u64,
    held: Arc<AtomicU64>,
}

impl Drop for HeldIndexBytes {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Shared<'_> {
    fn fail(&self, e: SourceError) {
        let mut f = lock(&self.fatal);
        if f.is_none() {
            *f = Some(e);
        }
        drop(f);
        self.cancel.fire();
        self.transport.abort();
        lock(&self.work).needs_done = true;
        self.more_work.notify_all();
    }

    /// Carries out the steps of [`Reading`] that a reader's events produced (outside its lock).
    fn carry_out(&self, f: &FileRef, steps: Vec<Step<Held>>) {
        if steps.is_empty() {
            return;
        }
        let mut closed = None;
        let mut verdicts = Vec::new();
        for step in steps {
            match step {
                Step::Close(_, h) => closed = Some(h),
                Step::DropRest(_) => {
                    if let Some((from, to)) = take_from_plan(self, f, u64::MAX) {
                        let mut more = Vec::new();
                        let mut reading = lock(&self.reading);
                        let chunks = reading.chunks(from, to);
                        reading.dropped(f.id, chunks, &mut more);
                        drop(reading);
                        self.carry_out(f, more);
                    }
                }
                other => verdicts.push(other),
            }
        }
        let again = match &closed {
            Some(Held { file: Some(file), .. }) => Again::File(file),
            Some(Held { file: None, .. }) => Again::Generated,
            None => Again::Gone,
        };
        report(&self.reading, &self.verdicts, &self.errors, f, again, verdicts);
        drop(closed);
    }

    /// Opens a chunked file for its reads (under the machine's lock: the first read of it).
    fn open_held(&self, f: &FileRef) -> Result<Held, FileError> {
        if self.opts.params.mem_bytes.is_some() {
            // Generated: nothing to open.
            return Ok(Held { file: None, done: file_check(self, f, None), direct: None });
        }
        let file = self.open_file(f).map_err(|e| FileError::io(f.path.clone(), FileOp::Open, e))?;
        let direct = self.open_direct(f, &file);
        let file = Arc::new(file);
        let done = file_check(self, f, Some(&file));
        Ok(Held { file: Some(file), done, direct })
    }

    /// Opens a source file relative to its directory handle.
    fn open_file(&self, f: &FileRef) -> std::io::Result<File> {
        let (dir, name) =
            f.path.split_last().ok_or_else(|| std::io::Error::other("the root is not a file"))?;
        let dfd = self.dirs.get(&dir)?;
        // A FIFO swapped in since the walk must not hold the reader in open() forever.
        let fd: OwnedFd = fsys::open_regular(dfd.as_fd(), name)?;
        Ok(File::from(fd))
    }

    /// The file's direct-I/O descriptor, when `--io` and its file system call for one and the
    /// transport takes buffers.
    fn open_direct(&self, f: &FileRef, file: &File) -> Option<Arc<DirectFile>> {
        let params = &self.opts.params;
        if self.transport.payload_pref() != PayloadPref::Buffer
            || !direct::wants_direct(params.io, f.size_bytes, f.sparse)
        {
            return None;
        }
        let (dir, name) = f.path.split_last()?;
        let dfd = self.dirs.get(&dir).ok()?;
        DirectFile::open(dfd.as_fd(), name, file, params.io, params.io_depth, false).map(Arc::new)
    }
}

/// A file's size and mtime now, through the descriptor it was read from.
fn seen(file: &File, f: &FileRef) -> Result<Seen, FileError> {
    let st = rustix::fs::statx(
        file.as_fd(),
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::BASIC_STATS,
    )
    .map_err(|e| FileError::io(f.path.clone(), FileOp::ReadCheck, e))?;
    Ok(Seen { size_bytes: st.stx_size, mtime: fsys::mtime_of(&st) })
}

/// Where [`Step::Check`] looks at a file again.
#[derive(Clone, Copy)]
enum Again<'a> {
    File(&'a File),
    /// A generated file (`--mem`) cannot change: it is what was listed.
    Generated,
    /// No descriptor came with the step (the machine asks for the check when the last hold
    /// goes, and every read's hold carries the file: not expected).
    Gone,
}

/// Carries out the verdict steps of [`Reading`]: the check, `FileRead`, `FileFailed`. Runs on
/// whichever thread dropped a file's last hold, or on a reader; it only queues the verdict.
fn report(
    reading: &Mutex<Reading<Held>>,
    verdicts: &Verdicts,
    errors: &ErrorLog,
    f: &FileRef,
    again: Again<'_>,
    steps: Vec<Step<Held>>,
) {
    for step in steps {
        match step {
            Step::Check(id) => {
                let now = match again {
                    Again::File(file) => seen(file, f),
                    Again::Generated => Ok(f.listed()),
                    Again::Gone => Err(FileError::io(
                        f.path.clone(),
                        FileOp::ReadCheck,
                        std::io::Error::from(std::io::ErrorKind::NotFound),
                    )),
                };
                let mut more = Vec::new();
                lock(reading).checked(id, now, &mut more);
                report(reading, verdicts, errors, f, Again::Gone, more);
            }
            Step::Read(id) => verdicts.push(SourceMsg::FileRead { id }),
            Step::Failed(id, e) => file_failed(verdicts, errors, id, e),
            // A reader's events close files and drop their rest (`Shared::carry_out`); the
            // release and the check do neither.
            Step::Close(_, h) => drop(h),
            Step::DropRest(_) => {}
        }
    }
}

fn file_failed(verdicts: &Verdicts, errors: &ErrorLog, id: FileId, e: FileError) {
    let message = e.to_string();
    errors.push(e.path.clone(), message.clone());
    verdicts.push(SourceMsg::FileFailed { id, path: e.path, message });
}

/// Reads `len` bytes at `offset` into `buf` exactly; a short read means the file shrank.
fn read_exact_at(
    file: &File,
    buf: &mut [u8],
    offset: u64,
    path: &RelPath,
) -> Result<(), FileError> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(FileError {
                    path: path.clone(),
                    op: FileOp::Read,
                    cause: Cause::Shrank,
                });
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(FileError::io(path.clone(), FileOp::Read, e)),
        }
    }
    Ok(())
}

fn reader(shared: &Shared<'_>) {
    let stages = &shared.progress.stages;
    loop {
        let idle = Instant::now();
        let (unit, input) = {
            let mut work = lock(&shared.work);
            loop {
                if shared.cancel.is_fired() {
                    return;
                }
                // Hold a partial bundle back only while more needs may arrive and other readers
                // still have work (they may produce more input soon).
                let flush = work.needs_done || work.busy_readers == 0;
                if let Some(unit) = work.chunker.next(flush) {
                    let input = unit_files(&unit, &mut work.needed);
                    work.busy_readers += 1;
                    break (unit, input);
                }
                if work.needs_done && work.chunker.is_empty() {
                    return;
                }
                work = shared.more_work.wait(work).unwrap_or_else(|p| p.into_inner());
            }
        };
        stages.add(Stage::ReadIdle, idle);
        let result = match unit {
            Unit::Bundle(_) => send_bundle(shared, &input),
            Unit::Chunk { offset_bytes, len_bytes, .. } => {
                send_chunk(shared, &input[0], offset_bytes, len_bytes)
            }
        };
        lock(&shared.work).busy_readers -= 1;
        shared.more_work.notify_all();
        if let Err(e) = result {
            shared.fail(SourceError::Transport(e));
            return;
        }
    }
}

/// The file references a unit needs; a chunked file's reference stays until its last chunk.
fn unit_files(unit: &Unit, needed: &mut IdMap<FileRef>) -> Vec<FileRef> {
    match unit {
        Unit::Bundle(files) => files.iter().filter_map(|f| needed.remove(&f.id)).collect(),
        Unit::Chunk { file, offset_bytes, len_bytes } => {
            let last = offset_bytes + u64::from(*len_bytes) >= file.size_bytes;
            let r = if last { needed.remove(&file.id) } else { needed.get(&file.id).cloned() };
            r.into_iter().collect()
        }
    }
}

fn send_bundle(shared: &Shared<'_>, files: &[FileRef]) -> Result<(), TransportError> {
    let waited = Instant::now();
    let mut lease: BufLease = shared.transport.pool().acquire()?;
    shared.progress.stages.add(Stage::Send, waited);
    let reading = Instant::now();
    let index_bytes = frame::bundle_index_bytes(files.len());
    let mut items = Vec::with_capacity(files.len());
    let mut at = index_bytes;
    let buf = lease.full_mut();
    for f in files {
        let len = f.size_bytes as usize;
        let read = shared.open_file(f).map_err(|e| FileError::io(f.path.clone(), FileOp::Open, e));
        let read = read.and_then(|file| {
            read_exact_at(&file, &mut buf[at..at + len], 0, &f.path)?;
            machine::unchanged(&f.path, f.listed(), seen(&file, f)?)
        });
        match read {
            Ok(()) => {
                items.push((f.id, len as u32, 0));
                at += len;
            }
            Err(e) => {
                items.push((f.id, 0, BUNDLE_FLAG_FAILED));
                file_failed(&shared.verdicts, &shared.errors, f.id, e);
            }
        }
    }
    frame::write_bundle_index(buf, &items);
    lease.set_len(at);
    let checked = shared.transport.needs_checksums();
    let header = FrameHeader {
        kind: FrameKind::Bundle,
        flags: FLAG_FILE_VERIFIED | if checked { 0 } else { FLAG_UNCHECKED },
        file_id: shared.bundle_seq.fetch_add(1, Ordering::Relaxed),
        offset_bytes: 0,
        len_bytes: at as u32,
        checksum: if checked { frame::checksum(lease.data()) } else { 0 },
    };
    let sent_files = items.iter().filter(|i| i.2 == 0).count() as u64;
    let sent_bytes = (at - index_bytes) as u64;
    shared.progress.stages.add(Stage::Read, reading);
    let sending = Instant::now();
    shared.transport.send(Frame { header, payload: Payload::Buffer(lease) })?;
    shared.progress.stages.add(Stage::Send, sending);
    shared.files_sent.fetch_add(sent_files, Ordering::Relaxed);
    Progress::add(&shared.progress.files_done, sent_files);
    Progress::add(&shared.progress.bytes_done, sent_bytes);
    Ok(())
}

fn send_chunk(
    shared: &Shared<'_>,
    f: &FileRef,
    offset_bytes: u64,
    len_bytes: u32,
) -> Result<(), TransportError> {
    let reading = Instant::now();
    let result = read_chunk(shared, f, offset_bytes, len_bytes);
    shared.progress.stages.add(Stage::Read, reading);
    // Every chunk counts, read or not (and a hole run counts the chunks it took out of the
    // plan), so the machine's bookkeeping ends with the file.
    let (out, outcome, failed_hold) = match result {
        // Not read (the file failed): counted already.
        Ok(None) => return Ok(()),
        Ok(Some(out)) => (Some(out), Ok(()), None),
        Err((e, done)) => (None, Err(e), Some(done)),
    };
    let chunks = 1 + out.as_ref().map_or(0, |r| r.run_chunks);
    let mut steps = Vec::new();
    let counted = lock(&shared.reading).read(f.id, chunks, outcome, &mut steps);
    shared.carry_out(f, steps);
    // The failed read's hold goes once its failure is recorded: then the verdict may follow.
    drop(failed_hold);
    let (Counted::Send { last }, Some(out)) = (counted, out) else { return Ok(()) };
    let ReadOut { header, payload, done: _done, run, run_chunks: _ } = out;
    if header.kind == FrameKind::Same {
        shared.bytes_reused.fetch_add(u64::from(len_bytes), Ordering::Relaxed);
    }
    // `_done` is dropped after the frame was handed over: if this was the file's last read
    // and its payload is a buffer, the file's check runs right here.
    let sending = Instant::now();
    shared.transport.send(Frame { header, payload })?;
    if let Some((h, _)) = run {
        shared.transport.send(Frame { header: h, payload: Payload::Empty })?;
    }
    shared.progress.stages.add(Stage::Send, sending);
    Progress::add(&shared.progress.bytes_done, u64::from(len_bytes));
    if let Some((_, bytes)) = run {
        Progress::add(&shared.progress.bytes_done, bytes);
    }
    if last {
        shared.files_sent.fetch_add(1, Ordering::Relaxed);
        Progress::add(&shared.progress.files_done, 1);
    }
    Ok(())
}

/// One chunk read (or described), and the hole run a sparse file's empty stretch added.
struct ReadOut {
    header: FrameHeader,
    payload: Payload,
    /// This read's hold on the file's check (see [`ReadDone`]).
    done: Arc<ReadDone>,
    /// A second hole frame (and the bytes it covers) for chunks taken out of the plan that do
    /// not directly follow this one.
    run: Option<(FrameHeader, u64)>,
    /// Chunks this read took out of the plan beyond its own.
    run_chunks: u64,
}

/// A chunked file's hold, shared by its reads: dropped with the last of them, it tells the
/// machine (with the transport's failure, if a region of it could not be sent), and carries
/// out the verdict steps that come back.
fn file_check(shared: &Shared<'_>, f: &FileRef, file: Option<&Arc<File>>) -> Arc<ReadDone> {
    let reading: Weak<Mutex<Reading<Held>>> = Arc::downgrade(&shared.reading);
    let (verdicts, errors, f, file) =
        (Arc::clone(&shared.verdicts), Arc::clone(&shared.errors), f.clone(), file.cloned());
    ReadDone::new(move |failure| {
        // Gone: the session is over and its files were forgotten.
        let Some(reading) = reading.upgrade() else { return };
        let failure = failure.map(|message| FileError {
            path: f.path.clone(),
            op: FileOp::Read,
            cause: Cause::Transport(message),
        });
        let mut steps = Vec::new();
        lock(&reading).released(f.id, failure, &mut steps);
        let again = file.as_deref().map_or(Again::Generated, Again::File);
        report(&reading, &verdicts, &errors, &f, again, steps);
    })
}

/// A read's failure, with its hold on the file (which goes once the failure is recorded).
type ReadFailure = (FileError, Arc<ReadDone>);

/// Reads (or describes) one chunk. `Ok(None)`: the file failed (before, or as it opened), and
/// the chunk is counted; `Err`: it fails now.
fn read_chunk(
    shared: &Shared<'_>,
    f: &FileRef,
    offset_bytes: u64,
    len_bytes: u32,
) -> Result<Option<ReadOut>, ReadFailure> {
    let mut steps = Vec::new();
    let held = {
        let mut reading = lock(&shared.reading);
        match reading.begin(f.id, &f.path, f.listed(), &mut steps) {
            Begin::Read(h) => Some(h),
            Begin::Skip => None,
            Begin::Open => {
                // Opened under the lock, by the file's first read: another reader of it waits
                // rather than opening it twice.
                let opened = shared.open_held(f);
                let h = opened.as_ref().ok().cloned();
                reading.opened(f.id, opened, &mut steps);
                h
            }
        }
    };
    shared.carry_out(f, steps);
    let Some(Held { file, done, direct }) = held else { return Ok(None) };
    let mut header = FrameHeader {
        kind: FrameKind::Chunk,
        flags: 0,
        file_id: f.id,
        offset_bytes,
        len_bytes,
        checksum: 0,
    };
    let out = |header, payload| ReadOut {
        header,
        payload,
        done: Arc::clone(&done),
        run: None,
        run_chunks: 0,
    };
    let Some(file) = file else {
        let (header, payload) = generate_chunk(shared, header, len_bytes).map_err(|e| {
            let e =
                FileError { path: f.path.clone(), op: FileOp::Read, cause: Cause::Transport(e) };
            (e, Arc::clone(&done))
        })?;
        return Ok(Some(out(header, payload)));
    };
    if f.sparse
        && let Some(data_at) = hole_until(&file, offset_bytes, len_bytes)
    {
        // The hole may go on well past this chunk: take the chunks it covers out of the plan
        // and cover them with one frame (a 4 EiB sparse file is one frame, not 2^40).
        let chunk = u64::from(shared.opts.params.chunk_bytes);
        let end = if data_at >= f.size_bytes { f.size_bytes } else { data_at / chunk * chunk };
        let own_end = offset_bytes + u64::from(len_bytes);
        let mut r = out(FrameHeader::hole(f.id, offset_bytes, 1), Payload::Empty);
        if end > own_end
            && let Some((from, to)) = take_from_plan(shared, f, end)
        {
            let n = (to - from).div_ceil(chunk);
            r.run_chunks = n;
            if from == own_end {
                r.header.checksum = 1 + n;
            } else {
                r.run = Some((FrameHeader::hole(f.id, from, n), to - from));
            }
        }
        return Ok(Some(r));
    }
    // An offered chunk is read and hashed here, whatever the transport prefers.
    if shared.transport.payload_pref() == PayloadPref::FileRegion
        && f.offer.is_none()
        && f.delta.is_none()
    {
        let mut region = FileRegion::new(Arc::clone(&file), offset_bytes, len_bytes);
        region.done = Some(Arc::clone(&done));
        return Ok(Some(out(header, Payload::File(region))));
    }
    let fail = |e: FileError| (e, Arc::clone(&done));
    let mut lease = shared.transport.pool().acquire().map_err(|e| {
        fail(FileError {
            path: f.path.clone(),
            op: FileOp::Read,
            cause: Cause::Transport(e.to_string()),
        })
    })?;
    let len = len_bytes as usize;
    // A resumed file's chunks all carry checksums: its target compares each with the file.
    let hashed = shared.transport.needs_checksums() || f.offer.is_some() || f.delta.is_some();
    let mut hasher = hashed.then(frame::Hasher::default);
    match direct.filter(|d| d.fits(lease.as_ptr(), lease.capacity(), len)) {
        Some(d) => {
            // Around the page cache, in up to `--io-depth` requests; hashed once it is all in.
            let n = d
                .read(lease.full_mut(), len, offset_bytes)
                .map_err(|e| fail(FileError::io(f.path.clone(), FileOp::Read, e)))?;
            if n < len {
                let shrank =
                    FileError { path: f.path.clone(), op: FileOp::Read, cause: Cause::Shrank };
                return Err(fail(shrank));
            }
            if let Some(h) = hasher.as_mut() {
                for piece in lease.full()[..len].chunks(frame::HASH_PIECE_BYTES) {
                    h.update(piece);
                }
            }
        }
        None => {
            // Read and hash piece by piece, so each piece is hashed while it is still in cache.
            let mut at = offset_bytes;
            for piece in lease.full_mut()[..len].chunks_mut(frame::HASH_PIECE_BYTES) {
                read_exact_at(&file, piece, at, &f.path).map_err(fail)?;
                at += piece.len() as u64;
                if let Some(h) = hasher.as_mut() {
                    h.update(piece);
                }
            }
        }
    }
    lease.set_len(len);
    match hasher {
        Some(h) => header.checksum = h.finish(),
        None => header.flags |= FLAG_UNCHECKED,
    }
    let index = offset_bytes / u64::from(shared.opts.params.chunk_bytes);
    if f.offered(index) == Some(header.checksum) {
        // The target's partial file holds this chunk already: say so instead of sending it.
        drop(lease);
        let same = FrameHeader::same(f.id, offset_bytes, header.checksum);
        return Ok(Some(out(same, Payload::Empty)));
    }
    if let Some(d) = &f.delta
        && let blitx_delta::ChunkPlan::Delta(recipe) =
            blitx_delta::encode_chunk(&d.index, lease.data())
    {
        // Shorter than the chunk: the recipe replaces its bytes in the same buffer; the
        // checksum stays the chunk's, which the target checks the rebuilt chunk against.
        let n = recipe.encode_into(lease.full_mut());
        lease.set_len(n);
        header.kind = FrameKind::Delta;
        header.len_bytes = n as u32;
    }
    Ok(Some(out(header, Payload::Buffer(lease))))
}

/// The name of the one file a memory-to-memory session (`--mem`) moves.
pub const MEM_FILE_NAME: &[u8] = b"blit-mem";

/// A chunk of a generated file (`--mem`): a pool slot filled with a pattern the first time it
/// is leased (the slots are never written after that: the pattern stays), hashed like a read.
fn generate_chunk(
    shared: &Shared<'_>,
    mut header: FrameHeader,
    len_bytes: u32,
) -> Result<(FrameHeader, Payload), String> {
    let mut lease = shared.transport.pool().acquire().map_err(|e| e.to_string())?;
    let len = len_bytes as usize;
    let fresh = lock(&shared.generated).insert(lease.index());
    if fresh {
        let seed = u64::from(lease.index()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for (i, w) in lease.full_mut().chunks_mut(8).enumerate() {
            let v = (seed ^ i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93).to_le_bytes();
            w.copy_from_slice(&v[..w.len()]);
        }
    }
    lease.set_len(len);
    if shared.transport.needs_checksums() {
        header.checksum = frame::checksum(lease.data());
    } else {
        header.flags |= FLAG_UNCHECKED;
    }
    Ok((header, Payload::Buffer(lease)))
}

/// The "walk" of a memory-to-memory session: a root and one generated file of `size_bytes`.
fn generate_listing(
    size_bytes: u64,
    out: &Sender<SourceMsg>,
    next_id: &AtomicU64,
) -> walk::WalkStats {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let entry = |path: RelPath, kind: EntryKind, size_bytes: u64, mode: u32| Entry {
        id: next_id.fetch_add(1, Ordering::Relaxed),
        path,
        kind,
        size_bytes,
        mtime: Timestamp { sec: now.as_secs() as i64, nsec: now.subsec_nanos() },
        mode,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        link_target: None,
        inode: None,
        sparse: false,
        content_hash: None,
        xattrs: Vec::new(),
        special: None,
    };
    let root = entry(RelPath::root(), EntryKind::Dir, 0, 0o755);
    let file = match RelPath::root().join(MEM_FILE_NAME) {
        Ok(path) => entry(path, EntryKind::File, size_bytes, 0o644),
        Err(_) => unreachable!("a constant, valid file name"),
    };
    let _ = out.send(SourceMsg::Root(root));
    let _ = out.send(SourceMsg::Listing {
        seq: 0,
        dir: RelPath::root(),
        entries: vec![file],
        last_part: true,
    });
    let _ = out.send(SourceMsg::ManifestEnd);
    walk::WalkStats { entries: 1, dirs: 1, file_bytes: size_bytes, errors: 0 }
}

/// Takes the planned chunks of `f` up to `to_bytes` out of the chunker; the byte range taken.
fn take_from_plan(shared: &Shared<'_>, f: &FileRef, to_bytes: u64) -> Option<(u64, u64)> {
    let mut work = lock(&shared.work);
    let taken = work.chunker.skip_large(f.id, to_bytes)?;
    if taken.1 >= f.size_bytes {
        // The unit that would have released the file's reference is never made now.
        work.needed.remove(&f.id);
    }
    Some(taken)
}

/// When `[offset, offset+len)` of a sparse file holds no data: where the next data starts
/// (`u64::MAX` when none follows).
fn hole_until(file: &File, offset_bytes: u64, len_bytes: u32) -> Option<u64> {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(offset_bytes)) {
        Ok(next_data) => (next_data >= offset_bytes + u64::from(len_bytes)).then_some(next_data),
        Err(rustix::io::Errno::NXIO) => Some(u64::MAX),
        Err(_) => None,
    }
}
