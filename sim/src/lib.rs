//! A deterministic simulator of whole transfers (TigerBeetle's VOPR is the model).
//!
//! One seed decides everything: the source tree, the target's old files, the faults, and the
//! order of every event in virtual time. The session's decisions are made by the same code
//! users run — [`blitx_session::target::Receiving`] (what a frame means, when a file commits,
//! which error it reports), [`blitx_session::plan::Planning`] (listings checked, each entry's
//! verdict, hard links, `--mirror` deletions, directory metadata at the end),
//! [`blitx_session::source::Answers`] (listings and their answers),
//! [`blitx_session::source::Reading`] (a chunked file's reads, its check and its verdict),
//! [`blitx_session::idle::Idle`] and the planner's [`blitx_planner::Differ`] and
//! [`blitx_planner::Chunker`]; this crate supplies what the threads, files and sockets supply
//! in production: an in-memory file system on each side, a data channel that reorders,
//! duplicates, drops, corrupts and truncates frames, an ordered control channel, writes and
//! renames that take time and can fail (a full disk), source files that change, vanish or fail
//! to read while they are read, a peer that stalls or dies, cancellation, a lost control
//! message (either direction), and a hostile target's malformed offer.
//!
//! Resume: in a quarter of the seeds the first run is killed at a random point — SIGKILL of
//! the target's process (every completed write survives, each temporary file keeps the
//! journal last saved by a [`Step::Journal`]), of the source's (the target gives up as usual,
//! keeping its partial files with their final journals), or a crash of the target's machine
//! (in addition, each written chunk may read back as zeros or stale bytes). A second run
//! (resume on) over the same target follows, as it does after a first run given up with
//! partial files kept; between the two, time passes (sometimes past a journal's age limit)
//! and the source may change — with its mtime, or in place with its size and mtime put back,
//! so the journal fits and only the hashes tell. The target's shell does what production's
//! does (`storage/src/target/resume.rs`): searches a directory for partial files before its
//! entries are decided, takes over one whose journal fits and offers the chunks it records,
//! hashed as they are now; sweeps debris; removes the rest; reads a resumed file back before
//! its commit. The source's does what `storage/src/source.rs` does: checks offers
//! ([`resume::check_offer`]) and sends a `Same` frame for an offered chunk whose hash it
//! shares, which the data channel may lose, repeat or damage like any frame.
//!
//! After every run the invariants are checked ([`check`]): each target path holds either its
//! old contents or the complete new file, never a mix; no temporary file is left; nothing was
//! written outside the listed paths; a file reported done is identical in bytes and metadata;
//! a needed file that is not done has an error reported (or the session failed); a session
//! that reports success with no errors left the target identical to the source, directories'
//! metadata included. The tree is nested, with hard links, and the target may hold extra
//! files, directories and symlinks: with `--mirror` every extra is gone exactly when the
//! session succeeded without errors, and without it (or after any error) every extra is
//! untouched; nothing the source lists is deleted, no deletion is outside a listed directory;
//! a hard-link group is one file on the target unless one of its names reported an error; a
//! file already up to date is not rewritten. With resume: only a session given up (or killed)
//! leaves partial files, a clean one none; a journal records only chunks its file holds; a
//! partial file whose journal fits a needed file is taken over and any other removed, never
//! renamed into place; a resumed file done equals the source as it is now; bytes reused never
//! exceed what its journal recorded; without a crash or a change, no chunk a journal recorded
//! is sent again; the read-back check fails only for a partial file that changed on disk; the
//! source refuses every malformed offer. Each run of a seed is checked.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use blitx_core::RelPath;
use blitx_core::frame::{self, FLAG_FILE_VERIFIED, FrameHeader, FrameKind};
use blitx_core::manifest::{Entry, EntryKind, FileId, InodeKey, TargetEntry, Timestamp};
use blitx_core::session::{NEED_OFFERED_CHUNKS_MAX, Offer};
use blitx_planner::diff::{Action, DiffOptions, Differ};
use blitx_planner::{Chunker, Filters, NeededFile, Unit};
use blitx_session::idle::Idle;
use blitx_session::listing::Verdict;
use blitx_session::plan::{Deletions, Planning};
use blitx_session::resume::{self, Journal, PARTIAL_AGE_MAX_SECS};
use blitx_session::source::{
    self as source_session, Answers, Begin, Counted, Listed, Reading, Seen,
};
use blitx_session::target::{Admit, Receiving, Runs, Step, Wanted, Written};
use blitx_session::{Cause, FileError, FileOp, Violation};

/// Small chunks keep runs fast while files still span several of them.
const CHUNK_BYTES: u32 = 4096;
const SMALL_FILE_BYTES: u32 = 1024;
const BUNDLE_BYTES: u32 = 4096;
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// What the simulator may break, per run (each fault is on in a share of seeds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Per mille of frames: delivered twice, lost, payload flipped, payload cut short.
    pub duplicate: u32,
    pub drop: u32,
    pub corrupt: u32,
    pub truncate: u32,
    /// Per mille of source reads after which the file changes; of files that vanish.
    pub change: u32,
    pub vanish: u32,
    /// Per mille of source reads that fail (EIO).
    pub read_error: u32,
    /// Target capacity for temporary data, if limited (a full disk).
    pub disk_bytes: Option<u64>,
    /// Per mille of commits (renames) that fail.
    pub commit_fail: u32,
    /// The source stops sending (control and data) after this many events: it stalled, or
    /// (with `dies`) its process died and its channels closed.
    pub stall_after: Option<u64>,
    pub dies: bool,
    /// The user cancels after this many events.
    pub cancel_after: Option<u64>,
    /// The control message with this number (both directions, counted as sent) is lost.
    pub lose_control: Option<u64>,
    /// The target's first offer is malformed (a hostile target): the source must refuse it.
    pub bad_offer: Option<BadOffer>,
    /// Per mille of resumed files whose partial file changes on disk after its chunks were
    /// hashed (bit rot, another writer): only the read-back check before the commit sees it.
    pub rot: u32,
}

/// How an offer is made malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadOffer {
    /// A chunk past the file's end.
    PastEnd,
    /// A chunk offered twice.
    Repeated,
    /// A file the answer does not need.
    NotInAnswer,
    /// The same file offered twice.
    Twice,
}

/// How the first run of a seed is killed (no clean-up runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kill {
    /// SIGKILL of the target's process: every completed write survives (page cache), each
    /// temporary file keeps its last saved journal.
    Target,
    /// SIGKILL of the source's process: the target sees the peer gone and gives up as usual.
    Source,
    /// The target's machine crashes: as a kill of its process, and in addition each chunk
    /// written to a temporary file (never fsynced) may read back as zeros or stale bytes.
    Crash,
}

impl Faults {
    fn pick(rng: &mut fastrand::Rng) -> Self {
        let mut f = Faults::default();
        let on = |rng: &mut fastrand::Rng, share: u32| rng.u32(0..100) < share;
        if on(rng, 40) {
            f.duplicate = rng.u32(1..60);
        }
        if on(rng, 30) {
            f.drop = rng.u32(1..60);
        }
        if on(rng, 40) {
            f.corrupt = rng.u32(1..100);
        }
        if on(rng, 15) {
            f.truncate = rng.u32(1..40);
        }
        if on(rng, 40) {
            f.change = rng.u32(1..150);
        }
        if on(rng, 20) {
            f.vanish = rng.u32(1..200);
        }
        if on(rng, 20) {
            f.disk_bytes = Some(rng.u64(0..64 * 1024));
        }
        if on(rng, 20) {
            f.commit_fail = rng.u32(1..300);
        }
        if on(rng, 10) {
            f.stall_after = Some(rng.u64(0..400));
            f.dies = rng.bool();
        }
        if on(rng, 10) {
            f.cancel_after = Some(rng.u64(0..400));
        }
        if on(rng, 15) {
            f.read_error = rng.u32(1..100);
        }
        if on(rng, 10) {
            f.lose_control = Some(rng.u64(1..24));
        }
        if on(rng, 10) {
            let kinds =
                [BadOffer::PastEnd, BadOffer::Repeated, BadOffer::NotInAnswer, BadOffer::Twice];
            f.bad_offer = Some(kinds[rng.usize(0..kinds.len())]);
        }
        if on(rng, 20) {
            f.rot = rng.u32(1..500);
        }
        f
    }
}

/// A file's contents and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub data: Vec<u8>,
    pub mtime: i64,
    pub mode: u32,
}

/// A directory's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirAttr {
    pub mtime: i64,
    pub mode: u32,
}

impl DirAttr {
    fn of(e: &Entry) -> Self {
        DirAttr { mtime: e.mtime.sec, mode: e.mode }
    }
}

/// The target's file system: names of files point at inodes (hard links share one),
/// directories, and symlinks (which may point anywhere, outside the root too).
#[derive(Debug, Clone, Default)]
pub struct Fs {
    files: BTreeMap<RelPath, u64>,
    inodes: HashMap<u64, Content>,
    dirs: BTreeMap<RelPath, DirAttr>,
    symlinks: BTreeMap<RelPath, Vec<u8>>,
    root: DirAttr,
    next_ino: u64,
    /// Partial (temporary) files, by the path they are for: the data, and the journal last
    /// saved (encoded; none: crash debris without one).
    partials: BTreeMap<RelPath, Partial>,
}

#[derive(Debug, Clone)]
struct Partial {
    data: Vec<u8>,
    journal: Option<Vec<u8>>,
}

/// A temporary file being written.
#[derive(Debug, Clone)]
struct Temp {
    data: Vec<u8>,
    /// The journal last saved on it (encoded).
    journal: Option<Vec<u8>>,
    /// Chunks some write landed in (a crash may lose them).
    written: Vec<bool>,
    /// Chunks it holds whole and verified (written with a matching checksum, a hole, or held
    /// by the partial file it was taken over from): all a journal may record.
    good: Vec<bool>,
}

impl Temp {
    fn new(size_bytes: u64) -> Self {
        let chunks = size_bytes.div_ceil(u64::from(CHUNK_BYTES)).max(1) as usize;
        Temp {
            // Preallocated, or extended and kept sparse: either way it reads zeros.
            data: vec![0; size_bytes as usize],
            journal: None,
            written: vec![false; chunks],
            good: vec![false; chunks],
        }
    }
}

impl Fs {
    fn content(&self, path: &RelPath) -> Option<&Content> {
        self.files.get(path).and_then(|i| self.inodes.get(i))
    }

    /// Every file by name, resolved.
    fn contents(&self) -> BTreeMap<RelPath, Content> {
        self.files.iter().map(|(p, i)| (p.clone(), self.inodes[i].clone())).collect()
    }

    /// A new file renamed into place at `path`: a new inode under that name.
    fn place(&mut self, path: &RelPath, c: Content) -> u64 {
        self.next_ino += 1;
        self.inodes.insert(self.next_ino, c);
        self.files.insert(path.clone(), self.next_ino);
        self.next_ino
    }

    fn exists(&self, path: &RelPath) -> bool {
        self.files.contains_key(path)
            || self.dirs.contains_key(path)
            || self.symlinks.contains_key(path)
    }

    fn paths(&self) -> impl Iterator<Item = &RelPath> {
        self.files.keys().chain(self.dirs.keys()).chain(self.symlinks.keys())
    }

    fn stat(&self, path: &RelPath) -> Option<TargetEntry> {
        let t = |kind, size_bytes, mtime, mode, inode, link_target| TargetEntry {
            name: path.file_name().to_vec(),
            kind,
            size_bytes,
            mtime: Timestamp { sec: mtime, nsec: 0 },
            mode,
            uid: 0,
            gid: 0,
            inode,
            link_target,
            content_hash: None,
            xattrs: None,
            special: None,
        };
        if let Some(&ino) = self.files.get(path) {
            let c = &self.inodes[&ino];
            let key = Some(InodeKey { dev: 2, ino });
            return Some(t(EntryKind::File, c.data.len() as u64, c.mtime, c.mode, key, None));
        }
        if let Some(a) = self.dirs.get(path) {
            return Some(t(EntryKind::Dir, 0, a.mtime, a.mode, None, None));
        }
        let link = self.symlinks.get(path)?;
        Some(t(EntryKind::Symlink, 0, 0, 0o777, None, Some(link.clone())))
    }

    /// The names directly in `dir`.
    fn children(&self, dir: &RelPath) -> Vec<Vec<u8>> {
        self.paths()
            .filter(|p| p.split_last().is_some_and(|(d, _)| &d == dir))
            .map(|p| p.file_name().to_vec())
            .collect()
    }

    /// Removes `path` and everything below it; a symlink is removed, never followed.
    fn remove_tree(&mut self, path: &RelPath) {
        let below = |p: &RelPath| {
            p == path
                || (p.as_bytes().starts_with(path.as_bytes())
                    && p.as_bytes().get(path.as_bytes().len()) == Some(&b'/'))
        };
        self.files.retain(|p, _| !below(p));
        self.dirs.retain(|p, _| !below(p));
        self.symlinks.retain(|p, _| !below(p));
    }
}

#[derive(Debug, Clone)]
struct SourceFile {
    entry: Entry,
    /// Current contents (`None`: it vanished); `version` counts changes.
    data: Option<Vec<u8>>,
    version: u32,
}

#[derive(Debug, Clone)]
struct Needed {
    id: FileId,
    size_bytes: u64,
}

impl Listed for Needed {
    fn id(&self) -> FileId {
        self.id
    }
    fn of(e: &Entry) -> Option<Self> {
        Some(Needed { id: e.id, size_bytes: e.size_bytes })
    }
}

/// A frame in flight on the data channel.
#[derive(Debug, Clone)]
struct SimFrame {
    header: FrameHeader,
    payload: Vec<u8>,
}

#[derive(Debug)]
enum SourceMsg {
    Listing { seq: u64, dir: RelPath, entries: Vec<Entry>, last_part: bool },
    FileRead(FileId),
    FileFailed { id: FileId, message: String },
    DataEnd,
}

#[derive(Debug)]
enum TargetMsg {
    /// `tampered`: the offers were made malformed on purpose (the source must refuse them).
    Need { seq: u64, ids: Vec<FileId>, offers: Vec<Offer>, tampered: Option<BadOffer> },
}

#[derive(Debug)]
enum Event {
    /// The source reads (and sends) its next unit of work.
    SourceStep,
    Frame(SimFrame),
    ToTarget(SourceMsg),
    ToSource(TargetMsg),
    /// A write admitted for this header is over.
    WriteDone(SimFrame),
    CommitDone(FileId),
    /// The target checks its idle timer.
    Tick,
}

/// Events ordered by virtual time, then by when they were scheduled (ties are deterministic).
#[derive(Debug)]
struct Queued {
    at: Duration,
    seq: u64,
    event: Event,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq)) // min-heap
    }
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Finished,
    Violation(String),
    Idle,
    PeerGone,
    Cancelled,
    /// The target's process was killed, or its machine crashed: nothing was cleaned up.
    Killed,
}

/// The result of one run, for the invariant check and the report.
#[derive(Debug)]
pub struct Run {
    pub seed: u64,
    pub faults: Faults,
    pub ending: Ending,
    pub done: Vec<RelPath>,
    pub errors: Vec<FileError>,
    pub trace: String,
    /// The run before this one over the same target (killed, or given up with partial files
    /// kept): its own invariants are checked too.
    pub first: Option<Box<Run>>,
    /// How this run was killed, if it was.
    pub kill: Option<Kill>,
    /// Partial files were kept for resuming (`SessionParams::resume`).
    pub resume: bool,
    /// Resume's counts: files taken over, bytes the partial files held that the source
    /// confirmed, bytes of chunks a journal recorded that were sent again.
    pub resumed: u64,
    pub reused_bytes: u64,
    pub resent_bytes: u64,
    /// A control message was lost.
    pub lost_control: bool,
    source: BTreeMap<RelPath, Content>,
    /// The target before and after.
    old: BTreeMap<RelPath, Content>,
    new: BTreeMap<RelPath, Content>,
    temps_left: usize,
    broken: Option<String>,
    needed: Vec<RelPath>,
    listed: Vec<RelPath>,
    /// `--mirror` was asked for.
    pub mirror: bool,
    /// The target's file systems before and after (directories, links, inodes).
    old_fs: Fs,
    new_fs: Fs,
    source_dirs: BTreeMap<RelPath, DirAttr>,
    source_root: DirAttr,
    /// The source's hard-link groups: paths of one inode.
    groups: Vec<Vec<RelPath>>,
    /// Directories in which this run needed a file.
    wrote_dirs: HashSet<RelPath>,
}

impl Run {
    /// This run and the one before it, if any.
    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.first.as_deref().into_iter().chain([self])
    }
}

#[derive(Debug, Clone)]
struct Handle {
    path: RelPath,
}

/// A file taken over from its partial file.
#[derive(Debug)]
struct Adopted {
    /// Bytes and chunks its journal recorded.
    journal_bytes: u64,
    journaled: Vec<bool>,
    /// Nothing may have changed those chunks (no crash, no change of the source since, none
    /// while this run reads): none of them may be sent again.
    exact: bool,
}

struct Sim {
    rng: fastrand::Rng,
    faults: Faults,
    now: Duration,
    seq: u64,
    events_run: u64,
    queue: BinaryHeap<Queued>,
    /// The control channel is ordered: each message is delivered after the one before it.
    to_target_at: Duration,
    to_source_at: Duration,
    base: Instant,
    trace: String,
    tracing: bool,
    /// Control messages sent (both directions), and whether one was lost.
    control_sent: u64,
    lost_control: bool,
    /// When the run kills the target or the source (after this many events), and whether it
    /// did.
    kill: Option<(u64, Kill)>,
    killed: Option<Kill>,

    // Source.
    files: Vec<SourceFile>,
    answers: Answers<Needed>,
    /// Listing parts to send: the directory, its entries, whether it is the last part.
    listings: VecDeque<(RelPath, Vec<Entry>, bool)>,
    chunker: Chunker,
    needs_done: bool,
    /// The chunked files being read (the handle is nothing: a read sees the file as it is).
    reading: Reading<()>,
    bundle_seq: u64,
    source_silent: bool,
    /// What the target offered of each resumed file: (chunk, hash), ascending.
    offers: HashMap<FileId, Vec<(u64, u64)>>,

    // Target.
    recv: Receiving<Handle>,
    plan: Planning<DirAttr>,
    idle: Idle,
    fs: Fs,
    resume: bool,
    /// The wall clock (seconds since the epoch) when the run began: journals carry it.
    unix_secs: u64,
    /// Directories the source listed (the root too): deletions happen only in them.
    listed_dirs: HashSet<RelPath>,
    /// Every path the source listed: none is ever deleted.
    listed_paths: HashSet<RelPath>,
    temps: HashMap<FileId, Temp>,
    temp_bytes: u64,
    /// Files being committed, with the hashes their read-back check compares (resumed).
    committing: HashMap<FileId, Option<Vec<u64>>>,
    /// Committed files by id: a write still running lands in the renamed file (its inode).
    renamed: HashMap<FileId, u64>,
    failed_now: Vec<RelPath>,
    /// An invariant broken while the run went on.
    broken: Option<String>,
    wanted: HashMap<FileId, Entry>,
    data_end: bool,
    frames_in_flight: u64,
    writes_in_flight: u64,
    ending: Option<Ending>,
    done: Vec<RelPath>,
    errors: Vec<FileError>,
    moved: u64,
    /// Partial files found in the directories being listed, not yet taken over.
    found: BTreeSet<RelPath>,
    adopted: HashMap<FileId, Adopted>,
    /// Resumed files whose partial file changed on disk after it was hashed.
    rotted: HashSet<FileId>,
    /// The run before ended in a machine crash; files changed in place since (their size and
    /// mtime kept, so their journals still fit).
    crashed_before: bool,
    changed_in_place: HashSet<FileId>,
    reused_bytes: u64,
    resent_bytes: u64,
    wrote_dirs: HashSet<RelPath>,
}

/// What a seed's runs share: the source's directories and links, `--mirror`.
struct World {
    dirs: Vec<Entry>,
    mirror: bool,
    root: DirAttr,
    groups: Vec<Vec<RelPath>>,
}

/// One run over the target `fs`.
struct Setup<'a> {
    seed: u64,
    tracing: bool,
    world: &'a World,
    files: Vec<SourceFile>,
    fs: Fs,
    faults: Faults,
    resume: bool,
    kill: Option<(u64, Kill)>,
    unix_secs: u64,
    crashed_before: bool,
    changed_in_place: HashSet<FileId>,
}

/// Runs the transfer that `seed` describes. In a share of seeds the first run is killed (the
/// target's process, the source's, or the target's machine) and a second run over the same
/// target follows, resuming what the first left; a second run also follows a first one given
/// up with partial files kept. The source may change between the two.
pub fn run(seed: u64, tracing: bool) -> Run {
    let mut rng = fastrand::Rng::with_seed(seed);
    let faults = Faults::pick(&mut rng);
    let Tree { files, dirs, old_fs, mirror, root, groups } = tree(&mut rng);
    let kill = (rng.u32(0..4) == 0).then(|| {
        let how = [Kill::Target, Kill::Source, Kill::Crash][rng.usize(0..3)];
        (rng.u64(1..50), how)
    });
    let resume = if kill.is_some() { rng.u32(0..8) != 0 } else { rng.bool() };
    let world = World { dirs, mirror, root, groups };
    let unix_secs = 1_800_000_000;
    let setup = Setup {
        seed,
        tracing,
        world: &world,
        files,
        fs: old_fs,
        faults,
        resume,
        kill,
        unix_secs,
        crashed_before: false,
        changed_in_place: HashSet::new(),
    };
    let (first, mut files, ended_at) = session(&mut rng, setup);
    let given_up = !matches!(first.ending, Ending::Finished | Ending::Killed);
    let kept = given_up && !first.new_fs.partials.is_empty();
    if kill.is_none() && !kept {
        return first;
    }
    // Between the runs: time passes (sometimes more than a partial file may wait), the source
    // settles and may change.
    let gap_secs =
        if rng.u32(0..8) == 0 { PARTIAL_AGE_MAX_SECS + rng.u64(1..1000) } else { rng.u64(1..3600) };
    let changed_in_place = between(&mut rng, &mut files, &world.groups, &first.new_fs);
    let faults = if rng.bool() { Faults::default() } else { Faults::pick(&mut rng) };
    let setup = Setup {
        seed,
        tracing,
        world: &world,
        files,
        fs: first.new_fs.clone(),
        faults,
        resume: true,
        kill: None,
        unix_secs: unix_secs + ended_at.as_secs() + gap_secs,
        crashed_before: first.kill == Some(Kill::Crash),
        changed_in_place,
    };
    let (mut second, _, _) = session(&mut rng, setup);
    if tracing {
        second.trace = format!("{}--- the second run ---\n{}", first.trace, second.trace);
    }
    second.first = Some(Box::new(first));
    second
}

/// Between two runs: each source file as it is now is what the next run lists (one that
/// vanished is back, empty; the names of a hard-link group one file again); in some seeds a
/// file changes with its mtime, and one whose partial file the target kept changes in place
/// with its size and mtime put back (its journal still fits: only the hashes tell). Returns
/// the files changed in place.
fn between(
    rng: &mut fastrand::Rng,
    files: &mut [SourceFile],
    groups: &[Vec<RelPath>],
    target: &Fs,
) -> HashSet<FileId> {
    for f in files.iter_mut() {
        let data = f.data.get_or_insert_with(Vec::new);
        f.entry.size_bytes = data.len() as u64;
        f.entry.mtime.sec += i64::from(f.version);
        f.version = 0;
    }
    for g in groups {
        let Some(lead) = files.iter().position(|f| f.entry.path == g[0]) else { continue };
        let (data, size, mtime) =
            (files[lead].data.clone(), files[lead].entry.size_bytes, files[lead].entry.mtime);
        for f in files.iter_mut().filter(|f| g.contains(&f.entry.path)) {
            (f.data, f.entry.size_bytes, f.entry.mtime) = (data.clone(), size, mtime);
        }
    }
    let alone: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].entry.inode.is_none() && files[i].entry.size_bytes > 0)
        .collect();
    if !alone.is_empty() && rng.u32(0..3) == 0 {
        // Changed, and its mtime with it (sometimes its size too).
        let f = &mut files[alone[rng.usize(0..alone.len())]];
        let data = f.data.get_or_insert_with(Vec::new);
        let at = rng.usize(0..data.len());
        data[at] ^= 0x3C;
        if rng.bool() {
            data.push(0x11);
        }
        f.entry.size_bytes = data.len() as u64;
        f.entry.mtime.sec += 1;
    }
    let mut in_place = HashSet::new();
    let kept: Vec<usize> =
        alone.into_iter().filter(|&i| target.partials.contains_key(&files[i].entry.path)).collect();
    if !kept.is_empty() && rng.u32(0..3) == 0 {
        // Changed in place, its size and mtime put back.
        let f = &mut files[kept[rng.usize(0..kept.len())]];
        let data = f.data.get_or_insert_with(Vec::new);
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(0..data.len());
            data[at] = data[at].wrapping_add(1);
        }
        in_place.insert(f.entry.id);
    }
    in_place
}

/// One session from `setup`; returns its run, the source files as they are at its end, and
/// the virtual time it took.
fn session(rng: &mut fastrand::Rng, setup: Setup<'_>) -> (Run, Vec<SourceFile>, Duration) {
    let Setup {
        seed,
        tracing,
        world,
        files,
        fs: old_fs,
        faults,
        resume,
        kill,
        unix_secs,
        crashed_before,
        changed_in_place,
    } = setup;
    let World { dirs, mirror, root, groups } = world;
    let (mirror, root) = (*mirror, *root);
    let base = Instant::now();
    let old = old_fs.contents();
    let source: BTreeMap<RelPath, Content> = files
        .iter()
        .map(|f| {
            (f.entry.path.clone(), content_of(&f.entry, f.data.as_deref().unwrap_or_default()))
        })
        .collect();
    let opts = DiffOptions { compare: Default::default(), mirror, owner: false };
    let excludes = Filters::default();
    let journal_every = u64::from(CHUNK_BYTES) * rng.u64(1..4);
    let mut sim = Sim {
        rng: rng.fork(),
        faults,
        now: Duration::ZERO,
        seq: 0,
        events_run: 0,
        queue: BinaryHeap::new(),
        to_target_at: Duration::ZERO,
        to_source_at: Duration::ZERO,
        base,
        trace: String::new(),
        tracing,
        control_sent: 0,
        lost_control: false,
        kill,
        killed: None,
        answers: Answers::with_limit(2),
        listings: VecDeque::new(),
        chunker: Chunker::new(&params()),
        needs_done: false,
        reading: Reading::new(CHUNK_BYTES),
        bundle_seq: 0,
        source_silent: false,
        offers: HashMap::new(),
        recv: Receiving::new(CHUNK_BYTES, false)
            .keeping_partials(resume)
            .journal_every(journal_every),
        plan: Planning::new(Differ::new(opts, excludes), 0, false, 48),
        idle: Idle::new(Some(IDLE_LIMIT), base, 0),
        fs: old_fs.clone(),
        resume,
        unix_secs,
        listed_dirs: dirs.iter().map(|d| d.path.clone()).chain([RelPath::root()]).collect(),
        listed_paths: HashSet::new(),
        temps: HashMap::new(),
        temp_bytes: 0,
        committing: HashMap::new(),
        renamed: HashMap::new(),
        failed_now: Vec::new(),
        broken: None,
        wanted: HashMap::new(),
        data_end: false,
        frames_in_flight: 0,
        writes_in_flight: 0,
        ending: None,
        done: Vec::new(),
        errors: Vec::new(),
        moved: 0,
        files,
        found: BTreeSet::new(),
        adopted: HashMap::new(),
        rotted: HashSet::new(),
        crashed_before,
        changed_in_place,
        reused_bytes: 0,
        resent_bytes: 0,
        wrote_dirs: HashSet::new(),
    };
    let mut listed: Vec<RelPath> = sim.files.iter().map(|f| f.entry.path.clone()).collect();
    listed.extend(dirs.iter().map(|d| d.path.clone()));
    sim.listed_paths = listed.iter().cloned().collect();
    if let Err(v) = sim.plan.root(EntryKind::Dir, root) {
        sim.fatal(Ending::Violation(v.to_string()));
    }
    // The walk: each directory (parents first) in parts of a few entries.
    let all: Vec<&Entry> = sim.files.iter().map(|f| &f.entry).chain(dirs).collect();
    for dir in [RelPath::root()].iter().chain(dirs.iter().map(|d| &d.path)) {
        let entries: Vec<Entry> = all
            .iter()
            .filter(|e| e.path.split_last().is_some_and(|(d, _)| &d == dir))
            .map(|e| (*e).clone())
            .collect();
        let parts = entries.len().div_ceil(3).max(1);
        for (i, part) in entries.chunks(3).chain(entries.is_empty().then_some(&[][..])).enumerate()
        {
            sim.listings.push_back((dir.clone(), part.to_vec(), i + 1 == parts));
        }
    }
    sim.send_listings();
    sim.schedule(IDLE_LIMIT / 2, Event::Tick);
    sim.main_loop();
    if resume {
        sim.check_taken_over(&old_fs);
    }
    let needed = sim.wanted.values().map(|e| e.path.clone()).collect();
    let run = Run {
        seed,
        faults,
        ending: sim.ending.clone().unwrap_or(Ending::Finished),
        done: sim.done,
        errors: sim.errors,
        trace: sim.trace,
        first: None,
        kill: sim.killed,
        resume,
        resumed: sim.adopted.len() as u64,
        reused_bytes: sim.reused_bytes,
        resent_bytes: sim.resent_bytes,
        lost_control: sim.lost_control,
        source,
        old,
        new: sim.fs.contents(),
        temps_left: sim.temps.len(),
        broken: sim.broken,
        needed,
        listed,
        mirror,
        old_fs,
        new_fs: sim.fs,
        source_dirs: dirs.iter().map(|d| (d.path.clone(), DirAttr::of(d))).collect(),
        source_root: root,
        groups: groups.clone(),
        wrote_dirs: sim.wrote_dirs,
    };
    (run, sim.files, sim.now)
}

/// A source tree and the target it is copied onto.
struct Tree {
    files: Vec<SourceFile>,
    /// Source directories below the root, each after its parent.
    dirs: Vec<Entry>,
    old_fs: Fs,
    mirror: bool,
    root: DirAttr,
    groups: Vec<Vec<RelPath>>,
}

/// A random tree: directories a few levels deep; files, some small (bundled), some chunked,
/// some sparse, some hard-linked (several names, one inode); on the target, old versions of
/// some files, identical copies of others (up to date: not rewritten), some of the
/// directories, and — whether or not `--mirror` is asked — extra files, directories and
/// symlinks the source does not have.
fn tree(rng: &mut fastrand::Rng) -> Tree {
    let mut dirs: Vec<Entry> = Vec::new();
    let mut fs = Fs { root: DirAttr { mtime: 3, mode: 0o755 }, ..Fs::default() };
    // Directories: each below the root or an earlier one, at most three levels deep.
    let dir_count = if rng.u32(0..3) == 0 { 0 } else { rng.usize(1..5) };
    for j in 0..dir_count {
        let parents: Vec<RelPath> = [RelPath::root()]
            .into_iter()
            .chain(dirs.iter().map(|d| d.path.clone()).filter(|p| p.depth() < 3))
            .collect();
        let parent = &parents[rng.usize(0..parents.len())];
        let path = parent.join(format!("d{j}").as_bytes()).expect("a plain name");
        let e = Entry {
            mtime: Timestamp { sec: 2_000 + rng.i64(0..100), nsec: 0 },
            mode: 0o700 | rng.u32(0..0o100),
            // Directory ids after every file's (the source finds a file by its id).
            ..Entry::new(1001 + j as FileId, path, EntryKind::Dir)
        };
        // Some exist on the target already (where their parent does), some with their
        // metadata right.
        if fs.dirs.contains_key(parent) || parent.is_root() {
            match rng.u32(0..3) {
                0 => {}
                1 => {
                    fs.dirs.insert(e.path.clone(), DirAttr { mtime: 9, mode: 0o755 });
                }
                _ => {
                    fs.dirs.insert(e.path.clone(), DirAttr::of(&e));
                }
            }
        }
        dirs.push(e);
    }
    let places: Vec<RelPath> =
        [RelPath::root()].into_iter().chain(dirs.iter().map(|d| d.path.clone())).collect();
    let on_target = |fs: &Fs, p: &RelPath| {
        p.split_last().is_some_and(|(d, _)| d.is_root() || fs.dirs.contains_key(&d))
    };
    let count = rng.usize(1..10);
    let mut files: Vec<SourceFile> = Vec::with_capacity(count + 2);
    for i in 0..count {
        let size = match rng.u32(0..4) {
            0 => rng.u64(0..=u64::from(SMALL_FILE_BYTES)),
            1 => u64::from(CHUNK_BYTES) * rng.u64(1..4),
            _ => rng.u64(u64::from(SMALL_FILE_BYTES) + 1..6 * u64::from(CHUNK_BYTES)),
        };
        let sparse = rng.u32(0..4) == 0;
        let mut data = vec![0u8; size as usize];
        for (c, piece) in data.chunks_mut(CHUNK_BYTES as usize).enumerate() {
            // A sparse file keeps some chunks empty (holes).
            if !(sparse && c % 2 == 1) {
                rng.fill(piece);
            }
        }
        let dir = &places[rng.usize(0..places.len())];
        let path = dir.join(format!("f{i}").as_bytes()).expect("a plain name");
        let entry = Entry {
            size_bytes: size,
            mtime: Timestamp { sec: 1_000 + rng.i64(0..100), nsec: 0 },
            mode: 0o600 | rng.u32(0..0o100),
            sparse,
            ..Entry::new(i as FileId + 1, path.clone(), EntryKind::File)
        };
        if on_target(&fs, &path) {
            match rng.u32(0..3) {
                0 => {}
                1 => {
                    // An old version: different contents, maybe another size.
                    let mut o = data.clone();
                    o.truncate(rng.usize(0..=o.len()));
                    o.push(0xA5);
                    fs.place(&path, Content { data: o, mtime: 5, mode: 0o644 });
                }
                _ => {
                    // Already identical: the diff skips it.
                    fs.place(&path, content_of(&entry, &data));
                }
            }
        }
        files.push(SourceFile { entry, data: Some(data), version: 0 });
    }
    // A hard-link group: one file and one or two more names of it, elsewhere in the tree.
    let mut groups = Vec::new();
    if rng.u32(0..3) == 0 {
        let first = rng.usize(0..files.len());
        let key = InodeKey { dev: 1, ino: first as u64 + 1 };
        files[first].entry.inode = Some(key);
        let mut group = vec![files[first].entry.path.clone()];
        for k in 0..rng.usize(1..3) {
            let dir = &places[rng.usize(0..places.len())];
            let mut entry = files[first].entry.clone();
            entry.id = files.len() as FileId + 1;
            entry.path = dir.join(format!("h{k}").as_bytes()).expect("a plain name");
            if on_target(&fs, &entry.path) && rng.bool() {
                // Already another name of the first one's target file, or a stale copy.
                match (fs.files.get(&group[0]).copied(), rng.bool()) {
                    (Some(ino), true) => {
                        fs.files.insert(entry.path.clone(), ino);
                    }
                    _ => {
                        fs.place(&entry.path, Content { data: vec![1], mtime: 5, mode: 0o644 });
                    }
                }
            }
            group.push(entry.path.clone());
            let data = files[first].data.clone();
            files.push(SourceFile { entry, data, version: 0 });
        }
        groups.push(group);
    }
    // Extras: names the source does not have, in directories the target already has.
    if rng.bool() {
        let mut existing: Vec<RelPath> = vec![RelPath::root()];
        existing.extend(fs.dirs.keys().cloned());
        for k in 0..rng.usize(1..4) {
            let dir = existing[rng.usize(0..existing.len())].clone();
            match rng.u32(0..3) {
                0 => {
                    let p = dir.join(format!("x{k}").as_bytes()).expect("a plain name");
                    fs.place(
                        &p,
                        Content { data: vec![7; rng.usize(0..100)], mtime: 4, mode: 0o644 },
                    );
                }
                1 => {
                    let p = dir.join(format!("xd{k}").as_bytes()).expect("a plain name");
                    fs.dirs.insert(p.clone(), DirAttr { mtime: 4, mode: 0o755 });
                    let inner = p.join(b"inner").expect("a plain name");
                    fs.place(&inner, Content { data: vec![8; 10], mtime: 4, mode: 0o644 });
                }
                _ => {
                    // A symlink out of the root: deleting it must not follow it.
                    let p = dir.join(format!("xl{k}").as_bytes()).expect("a plain name");
                    fs.symlinks.insert(p, b"/outside".to_vec());
                }
            }
        }
    }
    let root = DirAttr { mtime: 3_000 + rng.i64(0..100), mode: 0o755 };
    Tree { files, dirs, old_fs: fs, mirror: rng.u32(0..3) == 0, root, groups }
}

fn params() -> blitx_core::session::SessionParams {
    blitx_core::session::SessionParams {
        chunk_bytes: CHUNK_BYTES,
        small_file_bytes_max: SMALL_FILE_BYTES,
        bundle_bytes: BUNDLE_BYTES,
        ..Default::default()
    }
}

fn listed(e: &Entry) -> Seen {
    Seen { size_bytes: e.size_bytes, mtime: e.mtime }
}

fn content_of(e: &Entry, data: &[u8]) -> Content {
    Content { data: data.to_vec(), mtime: e.mtime.sec, mode: e.mode }
}

impl Sim {
    fn schedule(&mut self, after: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Queued { at: self.now + after, seq: self.seq, event });
    }

    fn jitter(&mut self, max_us: u64) -> Duration {
        Duration::from_micros(self.rng.u64(1..=max_us))
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        if self.tracing {
            let line = what();
            let _ = writeln!(self.trace, "{:>9} us  {line}", self.now.as_micros());
        }
    }

    fn fatal(&mut self, e: Ending) {
        if self.ending.is_none() {
            self.log(|| format!("session ends: {e:?}"));
            self.ending = Some(e);
        }
    }

    /// Whether the control message being sent is the one lost.
    fn control_lost(&mut self) -> bool {
        self.control_sent += 1;
        let lost = self.faults.lose_control == Some(self.control_sent);
        if lost {
            self.log(|| "a control message is lost".into());
            self.lost_control = true;
        }
        lost
    }

    fn send_to_target(&mut self, msg: SourceMsg) {
        if self.source_silent || self.control_lost() {
            return;
        }
        let at = self.to_target_at.max(self.now) + self.jitter(200);
        self.to_target_at = at;
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, event: Event::ToTarget(msg) });
    }

    fn send_to_source(&mut self, msg: TargetMsg) {
        if self.control_lost() {
            return;
        }
        let at = self.to_source_at.max(self.now) + self.jitter(200);
        self.to_source_at = at;
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, event: Event::ToSource(msg) });
    }

    fn main_loop(&mut self) {
        while let Some(q) = self.queue.pop() {
            self.now = q.at;
            self.events_run += 1;
            if self.faults.cancel_after == Some(self.events_run) {
                self.fatal(Ending::Cancelled);
            }
            if let Some((after, how)) = self.kill
                && after == self.events_run
            {
                self.log(|| format!("killed: {how:?}"));
                if how == Kill::Source {
                    self.killed = Some(how);
                    self.source_silent = true;
                    self.fatal(Ending::PeerGone);
                } else {
                    self.killed = Some(how);
                    self.ending = Some(Ending::Killed);
                    self.die(how == Kill::Crash);
                    return;
                }
            }
            if self.faults.stall_after == Some(self.events_run) && !self.source_silent {
                self.log(|| "the source stalls".into());
                self.source_silent = true;
                if self.faults.dies {
                    self.fatal(Ending::PeerGone);
                }
            }
            match q.event {
                Event::SourceStep => self.source_step(),
                Event::Frame(f) => {
                    self.frames_in_flight -= 1;
                    self.frame_arrived(f);
                }
                Event::ToTarget(m) => self.target_control(m),
                Event::ToSource(m) => self.source_control(m),
                Event::WriteDone(f) => self.write_done(f),
                Event::CommitDone(id) => self.commit_done(id),
                Event::Tick => self.tick(),
            }
            self.maybe_end();
        }
        // Nothing is left to happen: a session that has not ended waits forever without a
        // timer, which the idle timeout must have prevented.
        if self.ending.is_none() {
            self.fatal(Ending::Violation("the session hung: no event left and no ending".into()));
        }
    }

    /// The target's end of data: the source said so and every frame was delivered or lost.
    fn maybe_end(&mut self) {
        let failed = self.ending.is_some();
        let drained = self.data_end && self.frames_in_flight == 0;
        if !(failed || drained) || self.writes_in_flight > 0 || !self.committing.is_empty() {
            return;
        }
        if failed {
            // The shell's clean-up: every file not committed is given up, its temp removed
            // (or, with partials kept, kept with its final journal).
            let mut left = self.recv.abandon();
            left.sort_by_key(|l| l.0);
            for (id, _, runs) in left {
                self.keep_or_discard(id, runs);
            }
        } else {
            let mut steps = Vec::new();
            let mut not_done = Vec::new();
            for (id, _) in self.recv.end(&mut steps) {
                self.discard(id);
                not_done.push(id);
            }
            self.steps(steps);
            self.finalize(not_done);
            self.ending = Some(Ending::Finished);
        }
        self.queue.clear();
    }

    // -- source ---------------------------------------------------------------------------

    fn send_listings(&mut self) {
        while self.answers.may_send() {
            let Some((dir, entries, last_part)) = self.listings.pop_front() else { break };
            let seq = self.answers.sent(&entries);
            self.send_to_target(SourceMsg::Listing { seq, dir, entries, last_part });
        }
    }

    fn source_control(&mut self, msg: TargetMsg) {
        if self.source_silent {
            return;
        }
        let TargetMsg::Need { seq, ids, offers, tampered } = msg;
        match self.answers.answer(seq, &ids) {
            Ok(files) => {
                if let Err(v) = self.attach_offers(&files, offers) {
                    return self.fatal(Ending::Violation(format!("at the source: {v}")));
                }
                if let Some(how) = tampered
                    && self.broken.is_none()
                {
                    self.broken = Some(format!("the source accepted a malformed offer ({how:?})"));
                }
                for f in files {
                    self.chunker.push(NeededFile { id: f.id, size_bytes: f.size_bytes });
                }
                if self.listings.is_empty() && self.answers.unanswered() == 0 {
                    self.needs_done = true;
                }
                self.send_listings();
                let t = self.jitter(50);
                self.schedule(t, Event::SourceStep);
            }
            Err(v) => self.fatal(Ending::Violation(format!("at the source: {v}"))),
        }
    }

    /// What the production source checks of the target's offers (`attach_offers`): within
    /// the limit, each for a file of this answer, once, and sound ([`resume::check_offer`]).
    fn attach_offers(&mut self, files: &[Needed], offers: Vec<Offer>) -> Result<(), Violation> {
        let total: usize = offers.iter().map(|o| o.chunks.len()).sum();
        if total > NEED_OFFERED_CHUNKS_MAX {
            return Err(Violation::OfferTooLarge { limit: NEED_OFFERED_CHUNKS_MAX });
        }
        for offer in offers {
            if !files.iter().any(|f| f.id == offer.id) || self.offers.contains_key(&offer.id) {
                return Err(Violation::OfferNotNeeded(offer.id));
            }
            let e = &self.files[(offer.id - 1) as usize].entry;
            let small = e.size_bytes <= u64::from(SMALL_FILE_BYTES);
            resume::check_offer(&offer, &e.path, e.size_bytes, CHUNK_BYTES, small, e.sparse)?;
            self.offers.insert(offer.id, offer.chunks);
        }
        Ok(())
    }

    fn source_step(&mut self) {
        if self.source_silent || self.ending.is_some() {
            return;
        }
        let Some(unit) = self.chunker.next(self.needs_done) else {
            if self.needs_done
                && self.chunker.is_empty()
                && self.reading.is_empty()
                && !self.data_end_sent()
            {
                self.bundle_seq = u64::MAX; // DataEnd sent once
                self.send_to_target(SourceMsg::DataEnd);
            }
            return;
        };
        match unit {
            Unit::Bundle(items) => self.send_bundle(items.iter().map(|f| f.id).collect()),
            Unit::Chunk { file, offset_bytes, len_bytes } => {
                self.send_chunk(file.id, offset_bytes, len_bytes)
            }
        }
        let t = self.jitter(30);
        self.schedule(t, Event::SourceStep);
    }

    fn data_end_sent(&self) -> bool {
        self.bundle_seq == u64::MAX
    }

    fn file(&mut self, id: FileId) -> &mut SourceFile {
        &mut self.files[(id - 1) as usize]
    }

    /// After a read, the file may change (or vanish) under the source.
    fn maybe_mutate(&mut self, id: FileId) {
        let (change, vanish) = (self.faults.change, self.faults.vanish);
        if self.rng.u32(0..1000) < change {
            let f = self.file(id);
            if let Some(d) = f.data.as_mut().filter(|d| !d.is_empty()) {
                let at = (u64::from(f.version) * 7919) as usize % d.len();
                d[at] ^= 0x5A;
                f.version += 1;
            }
        } else if self.rng.u32(0..1000) < vanish {
            let f = self.file(id);
            f.data = None;
            f.version += 1;
        }
    }

    fn send_bundle(&mut self, ids: Vec<FileId>) {
        let mut items = Vec::new();
        let mut bytes = Vec::new();
        for id in ids {
            // A bundled file is read whole and checked unchanged at once.
            let read = self.read_range(id, 0, u32::MAX).and_then(|data| {
                let f = &self.files[(id - 1) as usize];
                source_session::unchanged(&f.entry.path, listed(&f.entry), self.seen_again(id))?;
                Ok(data)
            });
            match read {
                Ok(d) => {
                    items.push((id, d.len() as u32, 0));
                    bytes.extend_from_slice(&d);
                }
                Err(e) => {
                    items.push((id, 0, frame::BUNDLE_FLAG_FAILED));
                    let message = e.to_string();
                    self.send_to_target(SourceMsg::FileFailed { id, message });
                }
            }
            self.maybe_mutate(id);
        }
        let mut payload = vec![0u8; frame::bundle_index_bytes(items.len())];
        frame::write_bundle_index(&mut payload, &items);
        payload.extend_from_slice(&bytes);
        self.bundle_seq += 1;
        let header = FrameHeader {
            kind: FrameKind::Bundle,
            flags: FLAG_FILE_VERIFIED,
            file_id: self.bundle_seq,
            offset_bytes: 0,
            len_bytes: payload.len() as u32,
            checksum: frame::checksum(&payload),
        };
        self.send_frame(SimFrame { header, payload });
    }

    /// Reads `len_bytes` at `offset_bytes` of file `id` (to its end if it is shorter than
    /// that and `len_bytes` is `u32::MAX`), as it is now: it may have vanished, shrunk, or the
    /// read may fail.
    fn read_range(
        &mut self,
        id: FileId,
        offset_bytes: u64,
        len_bytes: u32,
    ) -> Result<Vec<u8>, FileError> {
        let fails = self.rng.u32(0..1000) < self.faults.read_error;
        let f = &self.files[(id - 1) as usize];
        let path = f.entry.path.clone();
        let Some(d) = &f.data else {
            return Err(FileError::io(path, FileOp::Read, std::io::Error::from_raw_os_error(2)));
        };
        if fails {
            return Err(FileError::io(path, FileOp::Read, std::io::Error::from_raw_os_error(5)));
        }
        let start = (offset_bytes as usize).min(d.len());
        let end = start.saturating_add(len_bytes as usize).min(d.len());
        if len_bytes != u32::MAX && end - start != len_bytes as usize {
            return Err(FileError { path, op: FileOp::Read, cause: Cause::Shrank });
        }
        Ok(d[start..end].to_vec())
    }

    /// File `id` looked at again (fstat): each change moves its mtime on; a vanished file is
    /// seen empty.
    fn seen_again(&self, id: FileId) -> Seen {
        let f = &self.files[(id - 1) as usize];
        let mut mtime = f.entry.mtime;
        mtime.sec += i64::from(f.version);
        Seen { size_bytes: f.data.as_ref().map_or(0, |d| d.len() as u64), mtime }
    }

    fn send_chunk(&mut self, id: FileId, offset_bytes: u64, len_bytes: u32) {
        let entry = &self.files[(id - 1) as usize].entry;
        let (path, sparse, listed) = (entry.path.clone(), entry.sparse, listed(entry));
        let mut steps = Vec::new();
        let read = match self.reading.begin(id, &path, listed, &mut steps) {
            Begin::Read(()) => true,
            Begin::Skip => false,
            Begin::Open => {
                let opened = match self.files[(id - 1) as usize].data {
                    Some(_) => Ok(()),
                    None => Err(FileError::io(
                        path.clone(),
                        FileOp::Open,
                        std::io::Error::from_raw_os_error(2),
                    )),
                };
                let read = opened.is_ok();
                self.reading.opened(id, opened, &mut steps);
                read
            }
        };
        if read {
            let data = self.read_range(id, offset_bytes, len_bytes);
            let outcome = data.as_ref().map(|_| ()).map_err(Clone::clone);
            let counted = self.reading.read(id, 1, outcome, &mut steps);
            if let (Counted::Send { .. }, Ok(data)) = (counted, data) {
                let index = offset_bytes / u64::from(CHUNK_BYTES);
                let offered = self.offers.get(&id).and_then(|o| {
                    o.binary_search_by_key(&index, |&(i, _)| i).ok().map(|at| o[at].1)
                });
                let hash = frame::checksum(&data);
                let frame = if sparse && data.iter().all(|&b| b == 0) {
                    SimFrame { header: FrameHeader::hole(id, offset_bytes, 1), payload: Vec::new() }
                } else if offered == Some(hash) {
                    // The target's partial file holds this chunk already.
                    SimFrame {
                        header: FrameHeader::same(id, offset_bytes, hash),
                        payload: Vec::new(),
                    }
                } else {
                    self.resent(id, index, data.len() as u64);
                    let header = FrameHeader {
                        kind: FrameKind::Chunk,
                        flags: 0,
                        file_id: id,
                        offset_bytes,
                        len_bytes,
                        checksum: hash,
                    };
                    SimFrame { header, payload: data }
                };
                self.send_frame(frame);
            }
            self.maybe_mutate(id);
        }
        self.source_steps(steps);
    }

    /// Carries out what [`Reading`] asked for.
    fn source_steps(&mut self, steps: Vec<source_session::Step<()>>) {
        use source_session::Step as S;
        for step in steps {
            let mut more = Vec::new();
            match step {
                // No transport holds a region here: the last hold goes with the last read.
                S::Close(id, ()) => self.reading.released(id, None, &mut more),
                S::DropRest(id) => {
                    if let Some((from, to)) = self.chunker.skip_large(id, u64::MAX) {
                        let chunks = self.reading.chunks(from, to);
                        self.reading.dropped(id, chunks, &mut more);
                    }
                }
                S::Check(id) => {
                    let now = self.seen_again(id);
                    self.reading.checked(id, Ok(now), &mut more);
                }
                S::Read(id) => self.send_to_target(SourceMsg::FileRead(id)),
                S::Failed(id, e) => {
                    let message = e.to_string();
                    self.send_to_target(SourceMsg::FileFailed { id, message });
                }
            }
            self.source_steps(more);
        }
    }

    /// Puts a frame on the data channel, where it may be duplicated, lost, damaged or cut —
    /// each copy of a duplicate on its own (a hostile peer may send a chunk twice, differently).
    fn send_frame(&mut self, f: SimFrame) {
        if self.source_silent {
            return;
        }
        let copies = if self.rng.u32(0..1000) < self.faults.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let mut f = f.clone();
            let r = self.rng.u32(0..1000);
            let fl = self.faults;
            let what = (f.header.kind, f.header.file_id, f.header.offset_bytes);
            if r < fl.drop {
                self.log(|| format!("frame {what:?} lost"));
                continue;
            }
            if r < fl.drop + fl.corrupt && !f.payload.is_empty() {
                let at = self.rng.usize(0..f.payload.len());
                f.payload[at] ^= 1 << self.rng.u32(0..8);
                self.log(|| format!("frame {what:?} corrupted"));
            } else if r < fl.drop + fl.corrupt && f.header.kind == FrameKind::Same {
                // A Same frame's hash is all it carries.
                f.header.checksum ^= 1 << self.rng.u32(0..64);
                self.log(|| format!("frame {what:?} corrupted"));
            } else if r < fl.drop + fl.corrupt + fl.truncate && !f.payload.is_empty() {
                let keep = self.rng.usize(0..f.payload.len());
                f.payload.truncate(keep);
                self.log(|| format!("frame {what:?} truncated"));
            }
            self.frames_in_flight += 1;
            let t = self.jitter(400);
            self.schedule(t, Event::Frame(f));
        }
    }

    // -- target ---------------------------------------------------------------------------

    fn heard(&mut self) {
        let now = self.base + self.now;
        self.idle.heard(now);
    }

    fn tick(&mut self) {
        if self.ending.is_some() {
            return;
        }
        let now = self.base + self.now;
        if self.idle.expired(now, self.moved).is_some() {
            self.fatal(Ending::Idle);
            return;
        }
        self.schedule(IDLE_LIMIT / 4, Event::Tick);
    }

    fn target_control(&mut self, msg: SourceMsg) {
        if self.ending.is_some() {
            return;
        }
        self.heard();
        let mut steps = Vec::new();
        match msg {
            SourceMsg::Listing { seq, dir, entries, last_part } => {
                return self.listing(seq, &dir, entries, last_part);
            }
            SourceMsg::FileRead(id) => self.recv.file_read(id, &mut steps),
            SourceMsg::FileFailed { id, message } => self.recv.file_failed(id, message, &mut steps),
            SourceMsg::DataEnd => self.data_end = true,
        }
        self.steps(steps);
    }

    /// A listing part: checked and decided by [`Planning`], carried out on the target's file
    /// system; the needed files registered with [`Receiving`].
    fn listing(&mut self, seq: u64, dir: &RelPath, entries: Vec<Entry>, last_part: bool) {
        let started = match self.plan.listing(dir, &entries, last_part) {
            Ok(s) => s,
            Err(v) => return self.fatal(Ending::Violation(v.to_string())),
        };
        let mut ids = Vec::new();
        let mut offers = Vec::new();
        let apply = started.verdict == Verdict::Apply;
        // Partial files of interrupted transfers, for the files that may resume (found before
        // the entries are decided, as the production shell's `scan`).
        if apply
            && self.resume
            && !started.fresh
            && entries.iter().any(|e| {
                e.kind == EntryKind::File && !e.sparse && e.size_bytes > u64::from(SMALL_FILE_BYTES)
            })
        {
            self.scan_partials(dir);
        }
        if apply {
            for e in entries {
                let t = if started.fresh { None } else { self.fs.stat(&e.path) };
                let d = self.plan.entry(&e, t.as_ref());
                self.log(|| {
                    format!("{}: {:?} (target {:?})", e.path, d, t.as_ref().map(|t| t.inode))
                });
                match d.clear {
                    blitx_planner::diff::Clear::Nothing => {}
                    _ => self.fs.remove_tree(&e.path),
                }
                match d.action {
                    Action::CopyFile => {
                        let wanted = Wanted {
                            path: e.path.clone(),
                            size_bytes: e.size_bytes,
                            sparse: e.sparse,
                            small: e.size_bytes <= u64::from(SMALL_FILE_BYTES),
                            changes: Default::default(),
                        };
                        let handle = Handle { path: e.path.clone() };
                        let adopted = if self.resume && !wanted.small && !wanted.sparse {
                            self.adopt(&e)
                        } else {
                            None
                        };
                        let r = match adopted {
                            Some(chunks) => {
                                offers.push(Offer { id: e.id, chunks: chunks.clone() });
                                self.recv.want_resumed(e.id, wanted, handle, chunks)
                            }
                            None => self.recv.want(e.id, wanted, handle),
                        };
                        if let Err(v) = r {
                            return self.violation(v);
                        }
                        ids.push(e.id);
                        self.wrote_dirs.insert(dir.clone());
                        self.wanted.insert(e.id, e);
                    }
                    Action::FixMeta => {
                        if let Some(c) =
                            self.fs.files.get(&e.path).and_then(|i| self.fs.inodes.get_mut(i))
                        {
                            (c.mtime, c.mode) = (e.mtime.sec, e.mode);
                        }
                    }
                    Action::MakeDir => {
                        self.fs.dirs.insert(e.path.clone(), DirAttr { mtime: 0, mode: 0o700 });
                        self.plan.dir_ready(&e.path, DirAttr::of(&e), true);
                    }
                    Action::KeepDir => self.plan.dir_ready(&e.path, DirAttr::of(&e), false),
                    // Links wait for the end; the tree has no symlinks or special files.
                    Action::Skip
                    | Action::Hardlink { .. }
                    | Action::MakeSymlink
                    | Action::MakeSpecial
                    | Action::Unsupported => {}
                }
            }
        }
        // Crash debris goes when a transfer writes into its directory again; partial files are
        // searched for first (production's `scan` before `remove_debris`), so one that a file
        // of a later part may take over is held, not swept.
        if apply && !ids.is_empty() && self.plan.sweep_debris(dir) {
            if self.resume && !started.fresh {
                self.scan_partials(dir);
            }
            self.remove_debris(dir, true);
        }
        if apply && last_part {
            // The partial files no file took over (production's `drop_unclaimed`).
            let unclaimed: Vec<RelPath> = self
                .found
                .iter()
                .filter(|p| p.split_last().is_some_and(|(d, _)| &d == dir))
                .cloned()
                .collect();
            for p in unclaimed {
                self.log(|| format!("{p}: partial file not taken over, removed"));
                self.found.remove(&p);
                self.fs.partials.remove(&p);
            }
        }
        if last_part && let Some(scan) = self.plan.listing_end(dir, apply).scan {
            // --mirror reads the directory at its listing's end: what is left of blit's is
            // debris now (the partial files its files could use were taken over).
            self.remove_debris(dir, false);
            let extra: Vec<TargetEntry> = self
                .fs
                .children(dir)
                .into_iter()
                .filter(|n| !scan.listed(n))
                .filter_map(|n| dir.join(&n).ok().and_then(|p| self.fs.stat(&p)))
                .collect();
            self.plan.extras(scan, &extra);
        }
        let tampered = self.tamper(&ids, &mut offers);
        self.send_to_source(TargetMsg::Need { seq, ids, offers, tampered });
    }

    /// Production's `scan`: once per directory (not one made in this session), the partial
    /// files with a journal that decodes are found and held for the files of its listing.
    fn scan_partials(&mut self, dir: &RelPath) {
        if !self.plan.scan_partials(dir) {
            return;
        }
        let found: Vec<RelPath> = self
            .fs
            .partials
            .iter()
            .filter(|(p, part)| {
                p.split_last().is_some_and(|(d, _)| &d == dir)
                    && part.journal.as_deref().and_then(Journal::decode).is_some()
            })
            .map(|(p, _)| p.clone())
            .collect();
        self.found.extend(found);
    }

    /// Resume saves what it can: a partial file the run began with, whose journal fits its
    /// file as listed now, is taken over if that file was needed.
    fn check_taken_over(&mut self, before: &Fs) {
        for (path, partial) in &before.partials {
            let Some(j) = partial.journal.as_deref().and_then(Journal::decode) else { continue };
            let Some((&id, e)) = self.wanted.iter().find(|(_, e)| &e.path == path) else {
                continue;
            };
            let fits = j.size_bytes == e.size_bytes
                && j.mtime == e.mtime
                && !e.sparse
                && e.size_bytes > u64::from(SMALL_FILE_BYTES)
                && self.unix_secs.saturating_sub(j.saved_unix_secs) <= PARTIAL_AGE_MAX_SECS;
            if fits && !self.adopted.contains_key(&id) && self.broken.is_none() {
                self.broken = Some(format!("{path}: its partial file fit, but was not taken over"));
            }
        }
    }

    /// Removes the partial files in `dir` an interrupted transfer left (production's
    /// `remove_debris`), but not those found for resuming and not yet taken over.
    ///
    /// A sweep (`sweep`) with resume on searched the directory first: a partial file with a
    /// journal that decodes is never removed by it (that would lose it to resume; seed 1384
    /// found it).
    fn remove_debris(&mut self, dir: &RelPath, sweep: bool) {
        let gone: Vec<RelPath> = self
            .fs
            .partials
            .keys()
            .filter(|p| !self.found.contains(*p) && p.split_last().is_some_and(|(d, _)| &d == dir))
            .cloned()
            .collect();
        for p in gone {
            let partial = self.fs.partials.remove(&p).expect("listed");
            if sweep
                && self.resume
                && partial.journal.as_deref().and_then(Journal::decode).is_some()
                && self.broken.is_none()
            {
                self.broken =
                    Some(format!("{p}: partial file removed as debris, never searched for"));
            }
        }
    }

    /// Makes the first offers malformed, as a hostile target would ([`Faults::bad_offer`]).
    fn tamper(&mut self, ids: &[FileId], offers: &mut Vec<Offer>) -> Option<BadOffer> {
        let how = self.faults.bad_offer?;
        let first = offers.first_mut()?;
        self.faults.bad_offer = None;
        let last = *first.chunks.last()?;
        match how {
            BadOffer::PastEnd => {
                let size = self.wanted.get(&first.id).map_or(0, |e| e.size_bytes);
                let total = size.div_ceil(u64::from(CHUNK_BYTES)).max(1);
                first.chunks.push((total, last.1));
            }
            BadOffer::Repeated => first.chunks.push(last),
            BadOffer::NotInAnswer => {
                let stranger = (1..).find(|i| !ids.contains(i)).unwrap_or(0);
                offers.push(Offer { id: stranger, chunks: vec![(0, 0)] });
            }
            BadOffer::Twice => {
                let again = first.clone();
                offers.push(again);
            }
        }
        self.log(|| format!("offers made malformed: {how:?}"));
        Some(how)
    }

    /// Takes over the partial file of `e` if one was found and its journal fits (production's
    /// `adopt`): the chunks its journal records are hashed as they are on disk now and offered.
    /// `None`: the file starts over, and an unusable partial file is removed.
    fn adopt(&mut self, e: &Entry) -> Option<Vec<(u64, u64)>> {
        if !self.found.remove(&e.path) {
            return None;
        }
        let partial = self.fs.partials.remove(&e.path)?;
        let journal = partial.journal.as_deref().and_then(Journal::decode)?;
        let now = self.unix_secs + self.now.as_secs();
        let name = e.path.file_name();
        let fits = journal.fits(name, e.size_bytes, e.mtime, CHUNK_BYTES, now).is_ok();
        // The same rule, written out here: a journal fits only the file it was written for,
        // unchanged since (size, mtime), in chunks of this size, not too old.
        let should = journal.name == name
            && journal.size_bytes == e.size_bytes
            && journal.mtime == e.mtime
            && journal.chunk_bytes == CHUNK_BYTES
            && now.saturating_sub(journal.saved_unix_secs) <= PARTIAL_AGE_MAX_SECS
            && !journal.runs.is_empty();
        if fits != should && self.broken.is_none() {
            self.broken = Some(format!(
                "{}: the partial file's journal {} but was {}",
                e.path,
                if should { "fits" } else { "does not fit" },
                if fits { "taken over" } else { "removed" }
            ));
        }
        if !fits {
            self.log(|| format!("{}: partial file does not fit, removed", e.path));
            return None;
        }
        let size = e.size_bytes as usize;
        let chunk = CHUNK_BYTES as usize;
        let mut temp = Temp::new(e.size_bytes);
        // Cut (or extended) to the file's size.
        let held = partial.data.len().min(size);
        temp.data[..held].copy_from_slice(&partial.data[..held]);
        temp.journal = partial.journal;
        let mut journaled = vec![false; temp.good.len()];
        let (mut offered, mut journal_bytes) = (Vec::new(), 0u64);
        for &(first, count) in &journal.runs {
            for i in first..first + count {
                let at = i as usize * chunk;
                let end = (at + chunk).min(size);
                offered.push((i, frame::checksum(&temp.data[at..end])));
                temp.good[i as usize] = true;
                journaled[i as usize] = true;
                journal_bytes += (end - at) as u64;
            }
        }
        if self.rng.u32(0..1000) < self.faults.rot {
            // The partial file changes on disk after it was hashed.
            let at = self.rng.usize(0..size);
            temp.data[at] ^= 0x80;
            self.rotted.insert(e.id);
            self.log(|| format!("{}: its partial file changes at {at}", e.path));
        }
        self.log(|| format!("{}: partial file taken over, offers {offered:?}", e.path));
        self.temps.insert(e.id, temp);
        let exact = !self.crashed_before
            && !self.changed_in_place.contains(&e.id)
            && self.faults.change == 0;
        self.adopted.insert(e.id, Adopted { journal_bytes, journaled, exact });
        Some(offered)
    }

    /// The source sends chunk `index` of file `id` (`len_bytes`) as data: counted if its
    /// partial file's journal recorded it, an invariant broken if nothing can have changed it.
    fn resent(&mut self, id: FileId, index: u64, len_bytes: u64) {
        let Some(a) = self.adopted.get(&id) else { return };
        if !a.journaled.get(index as usize).copied().unwrap_or(false) {
            return;
        }
        self.resent_bytes += len_bytes;
        if a.exact && self.broken.is_none() {
            let path = &self.files[(id - 1) as usize].entry.path;
            self.broken = Some(format!(
                "{path}: chunk {index} sent again, though its partial file's journal recorded it \
                 and nothing changed it"
            ));
        }
    }

    /// The journal of file `id`'s temporary file, recording `runs`.
    fn journal(&self, id: FileId, runs: Runs) -> Journal {
        let e = &self.wanted[&id];
        Journal {
            chunk_bytes: CHUNK_BYTES,
            size_bytes: e.size_bytes,
            mtime: e.mtime,
            saved_unix_secs: self.unix_secs + self.now.as_secs(),
            name: e.path.file_name().to_vec(),
            runs,
        }
    }

    /// Whether every chunk `runs` names is held whole by file `id`'s temporary file; if not,
    /// an invariant is broken (a journal may record only what its file holds).
    fn holds(&mut self, id: FileId, runs: &Runs) -> bool {
        let t = &self.temps[&id];
        let missing = runs.iter().flat_map(|&(f, n)| f..f + n).find(|&i| !t.good[i as usize]);
        if let Some(i) = missing {
            let path = &self.wanted[&id].path;
            if self.broken.is_none() {
                self.broken = Some(format!(
                    "{path}: a journal records chunk {i}, which its temporary file does not hold"
                ));
            }
            return false;
        }
        true
    }

    /// Saves the journal of file `id`'s temporary file (skipped if it is gone).
    fn save_journal(&mut self, id: FileId, runs: Runs) {
        if !self.temps.contains_key(&id) || !self.holds(id, &runs) {
            return;
        }
        let journal = self.journal(id, runs).encode();
        if let Some(t) = self.temps.get_mut(&id) {
            t.journal = Some(journal);
        }
    }

    /// The session was given up: file `id`'s partial file is kept with its final journal
    /// (`runs` non-empty), or removed (production's `keep_or_discard`).
    fn keep_or_discard(&mut self, id: FileId, runs: Runs) {
        if runs.is_empty() {
            return self.discard(id);
        }
        let path = self.wanted[&id].path.clone();
        if !self.temps.contains_key(&id) {
            if self.broken.is_none() {
                self.broken = Some(format!(
                    "{path}: its partial file is kept ({runs:?}), but it was given up and removed"
                ));
            }
            return;
        }
        if !self.holds(id, &runs) {
            return self.discard(id);
        }
        let journal = Some(self.journal(id, runs).encode());
        let t = self.temps.remove(&id).expect("checked above");
        self.temp_bytes -= t.data.len().min(self.temp_bytes as usize) as u64;
        self.log(|| format!("{path}: partial file kept"));
        self.fs.partials.insert(path, Partial { data: t.data, journal });
    }

    /// The target's process is killed (or its machine crashes): its temporary files stay as
    /// they are, each with its last saved journal; a crash loses some written chunks.
    fn die(&mut self, crash: bool) {
        let mut ids: Vec<FileId> = self.temps.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let mut t = self.temps.remove(&id).expect("listed");
            if crash {
                let chunk = CHUNK_BYTES as usize;
                for i in 0..t.written.len() {
                    if !t.written[i] || self.rng.u32(0..10) >= 3 {
                        continue;
                    }
                    let at = i * chunk;
                    let end = (at + chunk).min(t.data.len());
                    // Never reached the disk: zeros, or what the blocks held before.
                    let stale = self.rng.bool();
                    let piece = &mut t.data[at..end];
                    if stale {
                        self.rng.fill(piece);
                    } else {
                        piece.fill(0);
                    }
                }
            }
            let path = self.wanted[&id].path.clone();
            self.fs.partials.insert(path, Partial { data: t.data, journal: t.journal });
        }
    }

    /// Reads a resumed file back before its commit (production's `verify`): every chunk must
    /// hash as the source's did. A mismatch nothing explains (no change to its partial file
    /// since it was hashed) means the session admitted something the source never vouched for.
    fn read_back(&mut self, id: FileId, hashes: &[u64]) -> std::io::Result<()> {
        let size = self.wanted[&id].size_bytes as usize;
        let chunk = CHUNK_BYTES as usize;
        let bad = match self.temps.get(&id) {
            None => Some(0),
            Some(t) => hashes.iter().enumerate().find_map(|(i, &want)| {
                let at = i * chunk;
                let end = (at + chunk).min(size);
                (frame::checksum(&t.data[at.min(end)..end]) != want).then_some(at)
            }),
        };
        let Some(at) = bad else { return Ok(()) };
        let path = self.wanted[&id].path.clone();
        if !self.rotted.contains(&id) && self.broken.is_none() {
            self.broken = Some(format!(
                "{path}: its read-back check failed at {at}, though nothing changed its partial \
                 file: a chunk was admitted that the source did not vouch for"
            ));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the resumed file differs from the source's at offset {at}"),
        ))
    }

    /// The end of a session that finished: what [`Planning`] kept for it, in its order.
    fn finalize(&mut self, not_done: Vec<FileId>) {
        for link in self.plan.links(not_done) {
            match link {
                Ok(l) => match self.fs.files.get(&l.leader).copied() {
                    Some(ino) => {
                        self.fs.files.insert(l.path, ino);
                    }
                    None => self.errors.push(FileError::io(
                        l.path,
                        FileOp::Hardlink,
                        std::io::Error::from_raw_os_error(2),
                    )),
                },
                Err(e) => {
                    self.log(|| format!("{}: {e}", e.path));
                    self.errors.push(e);
                }
            }
        }
        if let Deletions::Delete(deletions) = self.plan.deletions(self.errors.len() as u64) {
            for (path, _) in deletions {
                // Only below a directory the source listed, never a listed name.
                let inside = path.split_last().is_some_and(|(d, _)| self.listed_dirs.contains(&d));
                let listed = self.listed_paths.contains(&path);
                if (!inside || listed) && self.broken.is_none() {
                    self.broken = Some(format!("--mirror deleted {path}, not an extra"));
                }
                self.log(|| format!("{path}: deleted (--mirror)"));
                self.fs.remove_tree(&path);
            }
        }
        let (dirs, root) = self.plan.directories();
        for d in dirs {
            self.fs.dirs.insert(d.path, d.meta);
        }
        if let Some(root) = root {
            self.fs.root = root;
        }
    }

    fn violation(&mut self, v: Violation) {
        self.fatal(Ending::Violation(v.to_string()));
    }

    fn frame_arrived(&mut self, f: SimFrame) {
        if self.ending.is_some() {
            return;
        }
        self.log(|| {
            format!(
                "frame {:?} {} @{} arrives",
                f.header.kind, f.header.file_id, f.header.offset_bytes
            )
        });
        match f.header.kind {
            FrameKind::Bundle => self.bundle_arrived(f),
            FrameKind::Chunk | FrameKind::Hole | FrameKind::Same | FrameKind::Delta => {
                match self.recv.chunk(&f.header, f.payload.len() as u64) {
                    Err(v) => self.violation(v),
                    Ok(Admit::Drop) => {}
                    Ok(Admit::Verify) => self.violation(Violation::HoleInMemorySession),
                    // The partial file holds it: nothing to write.
                    Ok(Admit::Same) => {
                        let mut steps = Vec::new();
                        let r = self.recv.written(&f.header, Written::Verified, &mut steps);
                        if let Err(v) = r {
                            self.violation(v);
                        }
                        self.steps(steps);
                    }
                    Ok(Admit::Write { create, .. }) => {
                        let id = f.header.file_id;
                        if create {
                            let size = self.wanted.get(&id).map_or(0, |e| e.size_bytes);
                            self.temps.insert(id, Temp::new(size));
                        }
                        self.writes_in_flight += 1;
                        let t = self.jitter(300);
                        self.schedule(t, Event::WriteDone(f));
                    }
                }
            }
            FrameKind::End => {}
        }
    }

    fn write_done(&mut self, f: SimFrame) {
        self.writes_in_flight -= 1;
        let h = f.header;
        let id = h.file_id;
        let at = h.offset_bytes as usize;
        // The shell writes first and verifies the checksum as it goes (a mismatch discards the
        // file), so the bytes land whatever they are: in the temporary file, or — if it was
        // renamed meanwhile — in the committed file itself.
        let full = self
            .faults
            .disk_bytes
            .is_some_and(|cap| self.temp_bytes + f.payload.len() as u64 > cap);
        let mut landed = false;
        let index = (h.offset_bytes / u64::from(CHUNK_BYTES)) as usize;
        let sound = frame::checksum(&f.payload) == h.checksum;
        if h.kind == FrameKind::Hole {
            // A hole's chunks read zeros in the temporary file already.
            if let Some(t) = self.temps.get_mut(&id) {
                let end = (index + h.hole_chunks() as usize).min(t.good.len());
                t.good[index.min(end)..end].iter_mut().for_each(|g| *g = true);
            }
        } else if !full {
            if let Some(t) = self.temps.get_mut(&id) {
                t.data[at..at + f.payload.len()].copy_from_slice(&f.payload);
                t.written[index] = true;
                t.good[index] = sound;
                self.temp_bytes += f.payload.len() as u64;
                landed = true;
            } else if let Some(ino) = self.renamed.get(&id)
                && let Some(c) = self.fs.inodes.get_mut(ino)
            {
                let end = (at + f.payload.len()).min(c.data.len());
                c.data[at..end].copy_from_slice(&f.payload[..end - at]);
            }
        }
        let outcome = if h.kind == FrameKind::Hole {
            Written::Verified
        } else if full && self.temps.contains_key(&id) {
            Written::Failed(FileOp::Write, std::io::Error::from_raw_os_error(28))
        } else if !sound {
            Written::Mismatch
        } else {
            if landed {
                self.moved += f.payload.len() as u64;
            }
            Written::Verified
        };
        let mut steps = Vec::new();
        if let Err(v) = self.recv.written(&h, outcome, &mut steps) {
            self.violation(v);
        }
        self.steps(steps);
    }

    fn bundle_arrived(&mut self, f: SimFrame) {
        if frame::checksum(&f.payload) != f.header.checksum
            || f.payload.len() != f.header.len_bytes as usize
        {
            return self.violation(Violation::BadChunk {
                path: RelPath::root(),
                offset_bytes: 0,
                len_bytes: u64::from(f.header.len_bytes),
            });
        }
        let Ok(items) = frame::parse_bundle(&f.payload) else {
            return self.fatal(Ending::Violation("malformed bundle".into()));
        };
        let mut steps = Vec::new();
        for item in items {
            if item.failed() {
                continue;
            }
            match self.recv.bundled(item.file_id, u64::from(item.len_bytes)) {
                Err(v) => return self.violation(v),
                Ok(None) => {}
                Ok(Some(h)) => {
                    let data = f.payload
                        [item.data_offset..item.data_offset + item.len_bytes as usize]
                        .to_vec();
                    let e = &self.wanted[&item.file_id];
                    let c = content_of(e, &data);
                    // Written under no name and linked into place whole (O_TMPFILE), or failing.
                    let result = if self
                        .faults
                        .disk_bytes
                        .is_some_and(|cap| self.temp_bytes + data.len() as u64 > cap)
                    {
                        Err(std::io::Error::from_raw_os_error(28))
                    } else {
                        self.moved += data.len() as u64;
                        self.fs.place(&h.path, c);
                        Ok(())
                    };
                    self.recv.small_written(item.file_id, result, &mut steps);
                }
            }
        }
        self.steps(steps);
    }

    fn commit_done(&mut self, id: FileId) {
        let Some(verify) = self.committing.remove(&id) else { return };
        let mut steps = Vec::new();
        let checked = match &verify {
            Some(hashes) => self.read_back(id, hashes),
            None => Ok(()),
        };
        let result = if let Err(e) = checked {
            // The production shell removes the temporary file whose check failed.
            self.discard(id);
            Err(e)
        } else if self.rng.u32(0..1000) < self.faults.commit_fail {
            Err(std::io::Error::from_raw_os_error(5))
        } else {
            // Truncated to its size, metadata applied, renamed into place.
            let e = &self.wanted[&id];
            let path = e.path.clone();
            let mut data = self.temps.remove(&id).map(|t| t.data).unwrap_or_default();
            self.temp_bytes = self.temp_bytes.saturating_sub(data.len() as u64);
            data.truncate(e.size_bytes as usize);
            let c = content_of(e, &data);
            let ino = self.fs.place(&path, c);
            self.renamed.insert(id, ino);
            Ok(())
        };
        self.recv.commit_result(id, result, &mut steps);
        self.steps(steps);
    }

    fn discard(&mut self, id: FileId) {
        if let Some(t) = self.temps.remove(&id) {
            self.temp_bytes -= t.data.len().min(self.temp_bytes as usize) as u64;
        }
    }

    fn steps(&mut self, steps: Vec<Step<Handle>>) {
        self.steps_inner(steps);
        // A file given up loses its temporary file at once (not only at the end: a long
        // session must not keep the space of every failed file).
        for path in std::mem::take(&mut self.failed_now) {
            let temp = self.wanted.iter().find(|(_, e)| e.path == path).map(|(id, _)| *id);
            if temp.is_some_and(|id| self.temps.contains_key(&id)) && self.broken.is_none() {
                self.broken = Some(format!("{path} failed but its temporary file was kept"));
            }
        }
    }

    fn steps_inner(&mut self, steps: Vec<Step<Handle>>) {
        for s in steps {
            match s {
                Step::Commit { id, verify, .. } => {
                    self.committing.insert(id, verify);
                    let t = self.jitter(100);
                    self.schedule(t, Event::CommitDone(id));
                }
                Step::Discard { id, .. } => self.discard(id),
                // Descriptors are not modelled: a parked file keeps its contents. Its journal
                // says it is complete (production's `save_complete`).
                Step::Park { id, .. } => {
                    if self.resume {
                        let size = self.wanted.get(&id).map_or(0, |e| e.size_bytes);
                        let total = size.div_ceil(u64::from(CHUNK_BYTES)).max(1);
                        self.save_journal(id, vec![(0, total)]);
                    }
                }
                Step::Journal { id, runs, .. } => self.save_journal(id, runs),
                Step::Done { id, path, reused_bytes, .. } => {
                    let recorded = self.adopted.get(&id).map_or(0, |a| a.journal_bytes);
                    if reused_bytes > recorded && self.broken.is_none() {
                        self.broken = Some(format!(
                            "{path}: {reused_bytes} bytes reused, its journal recorded {recorded}"
                        ));
                    }
                    self.reused_bytes += reused_bytes;
                    self.done.push(path)
                }
                Step::Fail(e) => {
                    self.log(|| format!("{}: {e}", e.path));
                    self.failed_now.push(e.path.clone());
                    self.errors.push(e);
                }
            }
        }
    }
}

/// Checks the invariants of a finished run (and of the run before it, if any); `Err` names the
/// first one broken.
pub fn check(run: &Run) -> Result<(), String> {
    if let Some(first) = &run.first {
        check_one(first).map_err(|e| format!("the first run: {e}"))?;
    }
    check_one(run)
}

fn check_one(run: &Run) -> Result<(), String> {
    if let Ending::Violation(v) = &run.ending
        && v.starts_with("the session hung")
    {
        return Err(v.clone());
    }
    if let Some(b) = &run.broken {
        return Err(b.clone());
    }
    if run.temps_left > 0 {
        return Err(format!("{} temporary files left behind", run.temps_left));
    }
    check_partials(run)?;
    for (path, c) in &run.new {
        if !run.listed.contains(path) && run.old.get(path) != Some(c) {
            return Err(format!("{path} was written but never listed"));
        }
        let old = run.old.get(path);
        let new = run.source.get(path);
        if Some(c) != old && Some(c) != new {
            return Err(format!("{path} is neither its old contents nor the complete new file"));
        }
    }
    for path in &run.done {
        if run.new.get(path) != run.source.get(path) {
            return Err(format!("{path} was reported done but differs from the source"));
        }
        if run.errors.iter().any(|e| &e.path == path) {
            return Err(format!("{path} was reported done and failed"));
        }
    }
    if run.ending == Ending::Finished {
        for path in &run.needed {
            if !run.done.contains(path) && !run.errors.iter().any(|e| &e.path == path) {
                return Err(format!("{path} was needed, is not done and has no error"));
            }
        }
        if run.errors.is_empty() {
            for (path, c) in &run.source {
                if run.new.get(path) != Some(c) {
                    return Err(format!("success without errors, but {path} differs"));
                }
            }
        }
    }
    check_tree(run)?;
    // A file that failed for lack of data is attributed to the right cause.
    for e in &run.errors {
        if matches!(e.cause, Cause::Incomplete)
            && run.faults.drop == 0
            && run.faults.stall_after.is_none()
            && !run.lost_control
        {
            return Err(format!("{}: incomplete without a lost frame or a stall", e.path));
        }
    }
    Ok(())
}

/// Partial files left on the target: none without resume (the run before kept none either);
/// with resume, only a session given up or killed leaves some, and a finished one leaves
/// none where it wrote (each was taken over or removed); a clean one leaves none at all.
fn check_partials(run: &Run) -> Result<(), String> {
    let Some((path, _)) = run.new_fs.partials.iter().next() else { return Ok(()) };
    if !run.resume && !matches!(run.kill, Some(Kill::Target | Kill::Crash)) {
        return Err(format!("{path}: a partial file left without resume"));
    }
    if run.ending == Ending::Finished {
        if run.errors.is_empty() {
            return Err(format!("{path}: a partial file left by a clean run"));
        }
        for path in run.new_fs.partials.keys() {
            if path.split_last().is_some_and(|(d, _)| run.wrote_dirs.contains(&d)) {
                return Err(format!("{path}: a partial file left where a finished run wrote"));
            }
        }
    }
    Ok(())
}

/// The invariants of the tree around the files: `--mirror`'s deletions, hard links,
/// directories, files already up to date.
fn check_tree(run: &Run) -> Result<(), String> {
    let clean = run.ending == Ending::Finished && run.errors.is_empty();
    let failed = |p: &RelPath| run.errors.iter().any(|e| &e.path == p);
    // Extras: on the target before, not listed by the source (with everything below them).
    for path in run.old_fs.paths() {
        if run.listed.contains(path) {
            // Nothing the source lists is ever deleted.
            if !run.new_fs.exists(path) {
                return Err(format!("{path} is listed by the source and was deleted"));
            }
            continue;
        }
        let kept = run.new_fs.exists(path)
            && run.new_fs.content(path) == run.old_fs.content(path)
            && run.new_fs.symlinks.get(path) == run.old_fs.symlinks.get(path);
        match (run.mirror && clean, kept) {
            (true, true) => return Err(format!("{path}: an extra left by a clean --mirror run")),
            (false, false) => {
                return Err(format!(
                    "{path}: an extra deleted or changed (mirror {}, clean {clean})",
                    run.mirror
                ));
            }
            _ => {}
        }
    }
    // Up to date: an unlinked file identical on the target is never rewritten.
    for (path, ino) in &run.old_fs.files {
        let linked = run.groups.iter().any(|g| g.contains(path));
        if !linked
            && run.old_fs.content(path) == run.source.get(path)
            && run.new_fs.files.get(path) != Some(ino)
        {
            return Err(format!("{path} was up to date and was rewritten"));
        }
    }
    // Hard links: one inode per group on the target, or an error for one of its names.
    if run.ending == Ending::Finished {
        for g in &run.groups {
            let inos: Vec<Option<&u64>> = g.iter().map(|p| run.new_fs.files.get(p)).collect();
            if !g.iter().any(failed) && (inos[0].is_none() || inos.iter().any(|i| *i != inos[0])) {
                return Err(format!("{g:?}: not one file on the target, and no error"));
            }
        }
    }
    let mut by_ino: HashMap<u64, Vec<&RelPath>> = HashMap::new();
    for (p, i) in &run.new_fs.files {
        if run.listed.contains(p) {
            by_ino.entry(*i).or_default().push(p);
        }
    }
    for names in by_ino.values().filter(|n| n.len() > 1) {
        let same_group = run.groups.iter().any(|g| names.iter().all(|n| g.contains(n)));
        let untouched = names.iter().all(|n| run.old_fs.files.get(*n) == run.new_fs.files.get(*n));
        if !same_group && !untouched {
            return Err(format!("{names:?} were linked on the target, not on the source"));
        }
    }
    // Directories: a clean run leaves each with the source's metadata, the root's too.
    if clean {
        for (path, a) in &run.source_dirs {
            if run.new_fs.dirs.get(path) != Some(a) {
                return Err(format!("success without errors, but directory {path} differs"));
            }
        }
        if run.new_fs.root != run.source_root {
            return Err("success without errors, but the root's metadata differs".into());
        }
    }
    Ok(())
}

/// The command that replays `seed` with a trace.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p blitx-sim -- --seed {seed} --trace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_seeds_keep_every_invariant() {
        for seed in 0..1000 {
            let run = run(seed, false);
            if let Err(why) = check(&run) {
                panic!("seed {seed}: {why}\nreplay: {}", replay_command(seed));
            }
        }
    }

    #[test]
    fn a_seed_replays_exactly() {
        let (a, b) = (run(42, true), run(42, true));
        assert_eq!(a.trace, b.trace);
        assert_eq!(a.ending, b.ending);
        assert_eq!(a.new, b.new);
    }

    #[test]
    fn faults_show_up_as_the_errors_they_cause() {
        // Across seeds, every kind of ending and every kind of file error occurs: the faults
        // reach the session (a simulator whose faults never fire would prove nothing).
        let mut endings = std::collections::HashSet::new();
        let (mut corrupted, mut incomplete, mut source, mut io) = (0, 0, 0, 0);
        for seed in 0..3000 {
            let r = run(seed, false);
            endings.insert(std::mem::discriminant(&r.ending));
            for e in &r.errors {
                match e.cause {
                    Cause::CorruptedInTransit { .. } => corrupted += 1,
                    Cause::Incomplete => incomplete += 1,
                    Cause::Source(_) => source += 1,
                    Cause::Io(_) | Cause::LeaderFailed { .. } => io += 1,
                    Cause::Shrank | Cause::Changed { .. } | Cause::Transport(_) => {
                        panic!("a source-side cause reported by the target: {e}")
                    }
                }
            }
        }
        assert_eq!(endings.len(), 5, "finished, violation, idle, peer gone, cancelled");
        assert!(corrupted > 0 && incomplete > 0 && source > 0 && io > 0);
    }

    #[test]
    fn kills_and_resumes_reach_every_path() {
        // Across seeds, each kind of kill happens, files resume and reuse bytes, a rotted
        // partial file fails its read-back check, malformed offers are refused, and a lost
        // control message ends in the idle timeout: the resume faults reach the session.
        let mut kills = HashSet::new();
        let (mut resumed, mut reused, mut read_back, mut refused, mut idle) = (0, 0, 0, 0, 0);
        for seed in 0..4000 {
            let r = run(seed, false);
            for one in r.runs() {
                kills.extend(one.kill);
                resumed += one.resumed;
                reused += one.reused_bytes;
                read_back += one
                    .errors
                    .iter()
                    .filter(|e| {
                        matches!(&e.cause, Cause::Io(io) if io.kind() == std::io::ErrorKind::InvalidData)
                    })
                    .count();
                if let Ending::Violation(v) = &one.ending
                    && v.starts_with("at the source")
                    && one.faults.bad_offer.is_some()
                {
                    refused += 1;
                }
                idle += usize::from(one.lost_control && one.ending == Ending::Idle);
            }
        }
        assert_eq!(kills.len(), 3, "{kills:?}");
        assert!(resumed > 0 && reused > 0 && read_back > 0 && refused > 0 && idle > 0);
    }
}
