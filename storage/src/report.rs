//! What a transfer tells its caller: per-path events, live progress counters and final reports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use blitx_core::RelPath;
use blitx_core::itemize::Changes;
use blitx_core::manifest::EntryKind as Kind;
use serde::Serialize;

/// Errors kept verbatim in a report; beyond this only the count grows (bounded memory).
pub const ERRORS_KEPT_MAX: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// File contents were transferred (or would be, in a dry run).
    Copied,
    /// Only metadata (mode, times, owner) was updated.
    MetaUpdated,
    DirCreated,
    Symlinked,
    /// A FIFO, socket or device node was made.
    SpecialMade,
    Hardlinked,
    Deleted,
    /// Not copied: a device node this target may not make, a special file of unknown type.
    Unsupported,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub path: RelPath,
    pub bytes: u64,
    pub message: Option<String>,
    /// What changed, attribute by attribute (`--itemize-changes`).
    pub changes: Changes,
}

impl EventKind {
    /// What an event of this kind changed when nothing more precise is known: a new file,
    /// directory or link; nothing for the rest.
    pub fn default_changes(self) -> Changes {
        match self {
            EventKind::Copied | EventKind::Hardlinked => Changes::new(Kind::File, Changes::NEW),
            EventKind::DirCreated => Changes::new(Kind::Dir, Changes::NEW),
            EventKind::Symlinked => Changes::new(Kind::Symlink, Changes::NEW),
            EventKind::SpecialMade => Changes::new(Kind::Special, Changes::NEW),
            EventKind::Unsupported => Changes::new(Kind::Special, 0),
            EventKind::MetaUpdated | EventKind::Deleted | EventKind::Failed => Changes::default(),
        }
    }
}

/// Receives events as they happen (printing, JSON, or the control plane).
pub trait Reporter: Send + Sync {
    fn event(&self, event: Event);
}

/// A reporter that drops everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _event: Event) {}
}

/// Live counters, read by progress bars while the transfer runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub entries_seen: AtomicU64,
    pub files_needed: AtomicU64,
    pub bytes_needed: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub walk_done: std::sync::atomic::AtomicBool,
    /// Where the time went (`blit xfer --profile`).
    pub stages: Stages,
}

/// The pipeline's stages, for `--profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Source: from the start until the walk finished (wall time).
    Walk,
    /// Target: stat'ing, diffing and applying each listing (thread time).
    Plan,
    /// Source readers: opening and reading files into buffers (thread time, summed).
    Read,
    /// Source readers: handing frames to the transport, including waiting for its window.
    Send,
    /// Source readers: idle, waiting for the target to say what it needs.
    ReadIdle,
    /// Target writers: waiting for the transport to deliver a frame.
    Receive,
    /// Target writers: writing, committing (metadata + rename/link).
    Write,
    /// Target: hard links, deletions, directory metadata (wall time).
    Finalize,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Walk,
        Stage::Plan,
        Stage::Read,
        Stage::Send,
        Stage::ReadIdle,
        Stage::Receive,
        Stage::Write,
        Stage::Finalize,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Stage::Walk => "walk",
            Stage::Plan => "plan",
            Stage::Read => "read",
            Stage::Send => "send",
            Stage::ReadIdle => "read-idle",
            Stage::Receive => "receive",
            Stage::Write => "write",
            Stage::Finalize => "finalize",
        }
    }
    pub fn explain(self) -> &'static str {
        match self {
            Stage::Walk => "wall time of the source walk",
            Stage::Plan => "target stat + diff + mkdir/symlink/metadata per listing",
            Stage::Read => "readers opening and reading files",
            Stage::Send => {
                "readers handing frames to the transport (waiting = transport is the bottleneck)"
            }
            Stage::ReadIdle => "readers waiting for needs (waiting = walk/diff is the bottleneck)",
            Stage::Receive => {
                "writers waiting for frames (waiting = sender/network is the bottleneck)"
            }
            Stage::Write => "writers writing and committing files",
            Stage::Finalize => "hard links, deletions, directory times (wall time)",
        }
    }
}

/// Nanoseconds per stage, summed over threads.
#[derive(Debug, Default)]
pub struct Stages {
    ns: [AtomicU64; 8],
}

impl Stages {
    pub fn add(&self, stage: Stage, since: std::time::Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.ns[stage as usize].fetch_add(ns, Ordering::Relaxed);
    }
    pub fn seconds(&self, stage: Stage) -> f64 {
        self.ns[stage as usize].load(Ordering::Relaxed) as f64 / 1e9
    }
    /// (stage, seconds) for every stage that saw any time.
    pub fn snapshot(&self) -> Vec<(Stage, f64)> {
        Stage::ALL.iter().map(|&s| (s, self.seconds(s))).filter(|(_, t)| *t > 0.0).collect()
    }
}

impl Progress {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Changes whenever anything moves (entries walked, files or bytes done): idle timeouts
    /// compare it over time.
    pub fn moved(&self) -> u64 {
        Self::read(&self.entries_seen)
            .wrapping_add(Self::read(&self.files_done))
            .wrapping_add(Self::read(&self.bytes_done))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: RelPath,
    pub message: String,
}

impl Serialize for FileError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("FileError", 2)?;
        st.serialize_field("path", &self.path.display())?;
        st.serialize_field("message", &self.message)?;
        st.end()
    }
}

/// A bounded list of errors plus the total count.
#[derive(Debug, Default)]
pub struct ErrorLog {
    inner: Mutex<(Vec<FileError>, u64)>,
}

impl ErrorLog {
    pub fn push(&self, path: RelPath, message: String) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        if g.0.len() < ERRORS_KEPT_MAX {
            g.0.push(FileError { path, message });
        }
    }
    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1
    }
    pub fn take(&self) -> (Vec<FileError>, u64) {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What the source half did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceReport {
    pub entries: u64,
    pub dirs: u64,
    pub source_bytes: u64,
    pub files_sent: u64,
    pub bytes_sent: u64,
    /// Bytes of chunks the target's partial files held already (confirmed, not sent).
    pub bytes_reused: u64,
    pub errors: Vec<FileError>,
    pub error_count: u64,
    /// `--remove-source-files`: source files removed after the target reported them, and
    /// those kept (changed since they were listed, or never reported).
    pub files_removed: u64,
    pub files_kept: u64,
}

/// What the target half did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetReport {
    pub files_copied: u64,
    pub bytes_copied: u64,
    pub meta_updated: u64,
    pub dirs_created: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub deleted: u64,
    /// Special files not made (device nodes where not allowed or not root).
    pub unsupported: u64,
    /// FIFOs, sockets and device nodes made.
    pub specials: u64,
    /// Extended attributes (and ACLs) of the source this half did not set.
    pub xattrs_dropped: u64,
    /// Bytes of copied files that partial files kept by an interrupted transfer already held
    /// (confirmed by the source, not sent again).
    pub bytes_reused: u64,
    /// Bytes of block signatures of old copies sent to the source (delta), on the control
    /// channel.
    pub signature_bytes: u64,
    /// Mirror deletions were skipped because something failed.
    pub deletions_skipped: bool,
    pub errors: Vec<FileError>,
    pub error_count: u64,
}
