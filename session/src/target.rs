//! The target half's file protocol: which files are on their way, what each arriving frame
//! means for its file, when a file is complete and may be committed, and the one error a failed
//! file reports.
//!
//! No I/O happens here. The shell (`blitx_storage::target`, or the simulator) owns temporary
//! files, writes and renames; it asks this machine what a frame means ([`Receiving::chunk`]),
//! tells it what the write did ([`Receiving::written`]), and carries out the [`Step`]s it
//! returns. Every decision about a file's fate is made here, on one thread at a time (the shell
//! holds it behind one lock, taken briefly per frame), so the rules below hold whatever the
//! order in which frames and control messages arrive:
//!
//! - a file is committed only when every chunk was written and verified, no write into it is
//!   still running, and the source said it read the file unchanged (`FileRead`);
//! - a chunk that fails its checksum discards the file; the error names the source's account if
//!   it gives one (`FileFailed`), else "corrupted in transit" once the source vouched for the
//!   file;
//! - a chunk that is misaligned, of the wrong length, past the end or repeated is a protocol
//!   violation (a bug or an attack, never a file problem), and ends the session;
//! - when the data ends, every file neither committed nor failed is incomplete;
//! - a resumed file (its partial file kept from an interrupted transfer, some of its chunks
//!   offered to the source) takes a `Same` frame only for a chunk offered with the hash the
//!   source names, needs checksums on all of its chunks, and is committed only after every
//!   chunk of the finished file was read back and matched the source's hash of it
//!   ([`Step::Commit`]'s `verify`);
//! - when a session is given up with partials kept ([`Receiving::keeping_partials`]), a chunked
//!   file's temporary file stays with the chunks it holds ([`Receiving::abandon`]), and while
//!   it is written its journal is saved every [`JOURNAL_EVERY_BYTES`] ([`Step::Journal`]).

use blitx_core::RelPath;
use blitx_core::frame::{FLAG_UNCHECKED, FrameHeader, FrameKind};
use blitx_core::itemize::Changes;
use blitx_core::manifest::{FileId, IdMap};

use crate::chunkset::ChunkSet;
use crate::error::{Cause, FileError, FileOp, Violation};
use crate::resume::{JOURNAL_EVERY_BYTES, Journal};

/// Chunks as (first, count) runs, ascending.
pub type Runs = Vec<(u64, u64)>;

/// A file the target asked for.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub path: RelPath,
    pub size_bytes: u64,
    pub sparse: bool,
    /// It travels in a bundle (one piece) rather than in chunks.
    pub small: bool,
    /// What its commit changes at the target (reported with it, `--itemize-changes`).
    pub changes: Changes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Data is arriving.
    Open,
    /// Every condition held; the shell is committing it.
    Committing,
    /// Given up: its temporary file is (being) removed, and later frames for it are dropped.
    Failed,
}

#[derive(Debug)]
struct FileState<M> {
    wanted: Wanted,
    shell: M,
    chunks: ChunkSet,
    phase: Phase,
    /// The source said every byte was read and the file did not change.
    read_done: bool,
    /// A chunk failed its checksum before the source's verdict: which explanation is reported
    /// waits for it.
    mismatch: Option<u64>,
    /// Writes into the temporary file in progress (a repeated chunk still being written must
    /// not land in the renamed file).
    writing_now: u32,
    /// The shell has been told to create the temporary file (or it exists: resumed).
    temp: bool,
    /// A resumed file: what it offered and what its final check compares.
    resumed: Option<Box<Resumed>>,
    /// Chunks marked when the journal was last saved.
    journaled: u64,
    /// The target has an old copy (a basis): chunks may come as recipes (`Delta` frames).
    delta: bool,
}

/// A resumed file's state.
#[derive(Debug)]
struct Resumed {
    /// (chunk index, hash) offered, ascending.
    offered: Vec<(u64, u64)>,
    /// The source's hash of each chunk (from its Same frame or its chunk's checksum).
    hashes: Vec<u64>,
    /// Chunks the partial file holds: offered ones and those written since (its journal).
    kept: ChunkSet,
    /// Bytes of chunks the source confirmed (not sent again).
    reused_bytes: u64,
}

/// What the shell does next for a file.
#[derive(Debug)]
pub enum Step<M> {
    /// Apply metadata and rename the temporary file into place; report with
    /// [`Receiving::commit_result`]. `verify` (a resumed file): first read the whole file
    /// back, and commit only if each chunk's [`blitx_core::frame::checksum`] equals its entry.
    Commit { id: FileId, shell: M, verify: Option<Vec<u64>> },
    /// Remove the temporary file (if one was created): the file is given up.
    Discard { id: FileId, shell: M },
    /// Every chunk is written and verified and the source's verdict has not come yet: close
    /// the file's descriptors (reopen it to commit). Files waiting for their verdicts then
    /// cost no descriptor each, however many there are.
    Park { id: FileId, shell: M },
    /// The file is complete (committed, or verified in a memory session); `reused_bytes` of
    /// it came from its partial file rather than over the wire.
    Done { id: FileId, path: RelPath, size_bytes: u64, reused_bytes: u64, changes: Changes },
    /// Save the journal of the file's temporary file: it holds the chunks `runs` (see
    /// [`Journal`]). Skip it if the temporary file is gone (committed or discarded); saved
    /// out of order it only records fewer chunks than there are.
    Journal { id: FileId, shell: M, runs: Vec<(u64, u64)> },
    /// Report this failure.
    Fail(FileError),
}

/// What to do with an arriving chunk or hole frame.
#[derive(Debug)]
pub enum Admit<M> {
    /// Write it; `create`: the file's temporary file does not exist yet (create it first).
    /// Report with [`Receiving::written`] in every case, `Written::Failed` if creating failed.
    Write { shell: M, create: bool },
    /// A memory session: verify the payload and report with [`Receiving::written`].
    Verify,
    /// A `Same` frame for an offered chunk: nothing to write; report `Written::Verified`.
    Same,
    /// The file failed or is committed already: drop the frame (its payload is discarded).
    Drop,
}

/// What writing (or verifying) a chunk did.
#[derive(Debug)]
pub enum Written {
    Verified,
    /// Its checksum did not match.
    Mismatch,
    /// The temporary file could not be created (`FileOp::Create`) or written.
    Failed(FileOp, std::io::Error),
}

/// The files of one session whose data is on its way.
#[derive(Debug)]
pub struct Receiving<M> {
    chunk_bytes: u64,
    /// A memory session: chunks are verified and dropped, nothing is created.
    sink: bool,
    /// Partial files are kept when the session is given up, with their journals.
    keep: bool,
    /// A journal is saved after every this many bytes of new chunks.
    journal_every_bytes: u64,
    files: IdMap<FileState<M>>,
}

impl<M: Clone> Receiving<M> {
    pub fn new(chunk_bytes: u32, sink: bool) -> Self {
        assert!(chunk_bytes > 0, "a session's chunk size is validated before it starts");
        Receiving {
            chunk_bytes: u64::from(chunk_bytes),
            sink,
            keep: false,
            journal_every_bytes: JOURNAL_EVERY_BYTES,
            files: IdMap::default(),
        }
    }

    /// Saves journals after every `bytes` of new chunks rather than [`JOURNAL_EVERY_BYTES`]
    /// (the simulator's files are a few KiB: at the default, none would ever be saved while
    /// it is written).
    pub fn journal_every(mut self, bytes: u64) -> Self {
        self.journal_every_bytes = bytes;
        self
    }

    /// Keep partial files for resuming (`SessionParams::resume`): journals are saved while
    /// files are written, and [`Receiving::abandon`] names the chunks each partial file holds.
    pub fn keeping_partials(mut self, keep: bool) -> Self {
        self.keep = keep && !self.sink;
        self
    }

    /// Files neither committed nor given up.
    pub fn waiting(&self) -> usize {
        self.files.len()
    }

    /// The size of file `id`, while it is on its way.
    pub fn size_of(&self, id: FileId) -> Option<u64> {
        self.files.get(&id).map(|f| f.wanted.size_bytes)
    }

    /// The target asks for file `id`; `shell` is whatever the shell needs to write and commit it.
    pub fn want(&mut self, id: FileId, wanted: Wanted, shell: M) -> Result<(), Violation> {
        if self.files.contains_key(&id) {
            // Two files of this session share an id: one would silently go missing.
            return Err(Violation::DuplicateId { id, path: wanted.path });
        }
        let chunks =
            if wanted.small { 1 } else { wanted.size_bytes.div_ceil(self.chunk_bytes).max(1) };
        self.files.insert(
            id,
            FileState {
                wanted,
                shell,
                chunks: ChunkSet::new(chunks),
                phase: Phase::Open,
                read_done: false,
                mismatch: None,
                writing_now: 0,
                temp: false,
                resumed: None,
                journaled: 0,
                delta: false,
            },
        );
        Ok(())
    }

    /// The target asks for file `id`, whose temporary file exists already (kept from an
    /// interrupted transfer) and holds the chunks `offered` (index, hash; ascending, each
    /// inside the file) — what the [`blitx_core::session::Offer`] sent with the need says.
    pub fn want_resumed(
        &mut self,
        id: FileId,
        wanted: Wanted,
        shell: M,
        offered: Vec<(u64, u64)>,
    ) -> Result<(), Violation> {
        assert!(!wanted.small && !wanted.sparse && !self.sink, "only dense chunked files resume");
        self.want(id, wanted, shell)?;
        let chunk_bytes = self.chunk_bytes;
        let f = self.files.get_mut(&id).expect("just wanted");
        let total = f.wanted.size_bytes.div_ceil(chunk_bytes).max(1);
        let mut kept = ChunkSet::new(total);
        for &(i, _) in &offered {
            assert!(kept.mark(i), "offered chunks are ascending and inside the file");
        }
        f.temp = true;
        f.resumed = Some(Box::new(Resumed {
            offered,
            hashes: vec![0; total as usize],
            kept,
            reused_bytes: 0,
        }));
        Ok(())
    }

    /// The target asks for file `id`, of which it has an old copy (the basis whose signature
    /// it sent): its chunks may come as recipes (`Delta` frames), all of them carry checksums,
    /// and it is read back and checked against them before its commit, like a resumed file.
    pub fn want_delta(&mut self, id: FileId, wanted: Wanted, shell: M) -> Result<(), Violation> {
        assert!(!wanted.small && !wanted.sparse && !self.sink, "only dense chunked files");
        self.want(id, wanted, shell)?;
        let total = {
            let f = self.files.get(&id).expect("just wanted");
            f.wanted.size_bytes.div_ceil(self.chunk_bytes).max(1)
        };
        let f = self.files.get_mut(&id).expect("just wanted");
        f.delta = true;
        f.resumed = Some(Box::new(Resumed {
            offered: Vec::new(),
            hashes: vec![0; total as usize],
            kept: ChunkSet::new(total),
            reused_bytes: 0,
        }));
        Ok(())
    }

    /// A chunk or hole frame arrived with `payload_bytes` of payload.
    pub fn chunk(&mut self, h: &FrameHeader, payload_bytes: u64) -> Result<Admit<M>, Violation> {
        let chunk_bytes = self.chunk_bytes;
        let f = self.files.get_mut(&h.file_id).ok_or(Violation::NotNeeded(h.file_id))?;
        let size = f.wanted.size_bytes;
        // Both ends agree on chunk boundaries; anything else is a peer bug, not a file problem.
        let expected_len = size.saturating_sub(h.offset_bytes).min(chunk_bytes);
        if f.wanted.small
            || !h.offset_bytes.is_multiple_of(chunk_bytes)
            || (h.offset_bytes >= size && size > 0)
            || (h.kind == FrameKind::Chunk && u64::from(h.len_bytes) != expected_len)
            || (matches!(h.kind, FrameKind::Hole | FrameKind::Same) && h.len_bytes != 0)
            || (h.kind == FrameKind::Delta && u64::from(h.len_bytes) >= expected_len)
            || payload_bytes != u64::from(h.len_bytes)
        {
            return Err(Violation::BadChunk {
                path: f.wanted.path.clone(),
                offset_bytes: h.offset_bytes,
                len_bytes: u64::from(h.len_bytes),
            });
        }
        if self.sink && h.kind == FrameKind::Hole {
            // A hole would count its chunks as verified without a byte moved.
            return Err(Violation::HoleInMemorySession);
        }
        if h.kind == FrameKind::Hole && !f.wanted.sparse {
            // Only a file listed as sparse has holes; for any other a hole frame would count
            // chunks as written for the price of a header.
            return Err(Violation::HoleInDenseFile(f.wanted.path.clone()));
        }
        if h.kind == FrameKind::Delta && !f.delta {
            // A recipe refers to a basis only a file with a signature has.
            return Err(Violation::NotDelta(f.wanted.path.clone()));
        }
        if h.kind == FrameKind::Same {
            // Only for a chunk this side offered, with the hash it offered.
            let index = h.offset_bytes / chunk_bytes;
            let offered = f.resumed.as_ref().is_some_and(|r| {
                r.offered
                    .binary_search_by_key(&index, |&(i, _)| i)
                    .is_ok_and(|at| r.offered[at].1 == h.checksum)
            });
            if !offered {
                return Err(Violation::NotOffered {
                    path: f.wanted.path.clone(),
                    offset_bytes: h.offset_bytes,
                });
            }
        } else if f.resumed.is_some() && h.flags & FLAG_UNCHECKED != 0 {
            // Its final check compares every chunk with the source's hash of it.
            return Err(Violation::UncheckedResumed(f.wanted.path.clone()));
        }
        if f.phase != Phase::Open {
            return Ok(Admit::Drop);
        }
        f.writing_now += 1;
        if self.sink {
            return Ok(Admit::Verify);
        }
        if h.kind == FrameKind::Same {
            return Ok(Admit::Same);
        }
        let create = !std::mem::replace(&mut f.temp, true);
        Ok(Admit::Write { shell: f.shell.clone(), create })
    }

    /// The write (or verification) admitted by [`Receiving::chunk`] for `h` is over.
    pub fn written(
        &mut self,
        h: &FrameHeader,
        outcome: Written,
        steps: &mut Vec<Step<M>>,
    ) -> Result<(), Violation> {
        let chunk_bytes = self.chunk_bytes;
        let Some(f) = self.files.get_mut(&h.file_id) else { return Ok(()) };
        debug_assert!(f.writing_now > 0, "written without an admitted write");
        f.writing_now = f.writing_now.saturating_sub(1);
        if f.phase != Phase::Open {
            return Ok(());
        }
        match outcome {
            Written::Verified => {}
            Written::Mismatch => {
                f.phase = Phase::Failed;
                steps.push(Step::Discard { id: h.file_id, shell: f.shell.clone() });
                if f.read_done {
                    steps.push(Step::Fail(corrupted(&f.wanted.path, h.offset_bytes)));
                } else {
                    // Reported when the source's verdict says whether the file changed.
                    f.mismatch = Some(h.offset_bytes);
                }
                return Ok(());
            }
            Written::Failed(op, e) => {
                f.phase = Phase::Failed;
                steps.push(Step::Discard { id: h.file_id, shell: f.shell.clone() });
                steps.push(Step::Fail(FileError::io(f.wanted.path.clone(), op, e)));
                return Ok(());
            }
        }
        // A hole frame covers a run of chunks (a sparse file's empty stretch in one frame).
        let chunks = if h.kind == FrameKind::Hole { h.hole_chunks() } else { 1 };
        let index = h.offset_bytes / chunk_bytes;
        if !f.chunks.mark_run(index, chunks) {
            return Err(Violation::ChunkTwice {
                path: f.wanted.path.clone(),
                offset_bytes: h.offset_bytes,
                chunks,
            });
        }
        if let Some(r) = f.resumed.as_mut() {
            // Only chunk and Same frames reach a resumed file (it is dense).
            r.hashes[index as usize] = h.checksum;
            r.kept.mark(index);
            if h.kind == FrameKind::Same {
                r.reused_bytes +=
                    f.wanted.size_bytes.saturating_sub(h.offset_bytes).min(chunk_bytes);
            }
        }
        if self.keep && !f.wanted.small {
            // A journal every `journal_every_bytes` of new chunks (at least every chunk).
            let every = (self.journal_every_bytes / chunk_bytes).max(1);
            if f.chunks.done() - f.journaled >= every && !f.chunks.is_complete() {
                f.journaled = f.chunks.done();
                let runs = journal_runs(f);
                steps.push(Step::Journal { id: h.file_id, shell: f.shell.clone(), runs });
            }
        }
        if f.chunks.is_complete() && !f.read_done && f.writing_now == 0 && !self.sink {
            steps.push(Step::Park { id: h.file_id, shell: f.shell.clone() });
        }
        self.try_commit(h.file_id, steps);
        Ok(())
    }

    /// The source read file `id` whole and unchanged (`FileRead`). Unknown ids (a bundled or
    /// finished file) change nothing.
    pub fn file_read(&mut self, id: FileId, steps: &mut Vec<Step<M>>) {
        let Some(f) = self.files.get_mut(&id) else { return };
        f.read_done = true;
        if let Some(offset_bytes) = f.mismatch.take() {
            // The source read an unchanged file: the bytes were damaged on the way.
            steps.push(Step::Fail(corrupted(&f.wanted.path, offset_bytes)));
            return;
        }
        self.try_commit(id, steps);
    }

    /// The source could not read file `id`, or it changed (`FileFailed`): its account is the
    /// error reported, replacing a checksum failure it explains. Reported under the path this
    /// side wanted (not one the source names), and only for a file still open or whose checksum
    /// failure waits for this verdict: a file already committing or finished, one that reported
    /// its own failure, or an id never wanted reports nothing more (a source sends one verdict
    /// per file; a second, or one for a stranger, must not count an error twice or report a
    /// done file as failed).
    pub fn file_failed(&mut self, id: FileId, message: String, steps: &mut Vec<Step<M>>) {
        let Some(f) = self.files.get_mut(&id) else { return };
        let explains_mismatch = f.mismatch.take().is_some();
        let report = match f.phase {
            Phase::Open => true,
            Phase::Failed => explains_mismatch,
            Phase::Committing => false,
        };
        if !report {
            return;
        }
        f.phase = Phase::Failed;
        steps.push(Step::Discard { id, shell: f.shell.clone() });
        steps.push(Step::Fail(FileError {
            path: f.wanted.path.clone(),
            op: FileOp::SourceRead,
            cause: Cause::Source(message),
        }));
    }

    /// The shell committed file `id` (or could not).
    pub fn commit_result(
        &mut self,
        id: FileId,
        result: std::io::Result<()>,
        steps: &mut Vec<Step<M>>,
    ) {
        let Some(f) = self.files.get_mut(&id) else { return };
        debug_assert_eq!(f.phase, Phase::Committing);
        match result {
            Ok(()) => {
                self.done(id, steps);
            }
            Err(e) => {
                f.phase = Phase::Failed;
                steps.push(Step::Discard { id, shell: f.shell.clone() });
                steps.push(Step::Fail(FileError::io(f.wanted.path.clone(), FileOp::Commit, e)));
            }
        }
    }

    /// A bundle carries file `id` whole (`len_bytes` of data). `Ok(Some(shell))`: write it and
    /// report with [`Receiving::small_written`]; `Ok(None)`: drop it (the file failed already).
    pub fn bundled(&mut self, id: FileId, len_bytes: u64) -> Result<Option<M>, Violation> {
        let f = self.files.get_mut(&id).ok_or(Violation::NotNeeded(id))?;
        if !f.wanted.small || self.sink {
            return Err(Violation::BadChunk {
                path: f.wanted.path.clone(),
                offset_bytes: 0,
                len_bytes,
            });
        }
        if len_bytes != f.wanted.size_bytes {
            return Err(Violation::BundleSize {
                path: f.wanted.path.clone(),
                len_bytes,
                size_bytes: f.wanted.size_bytes,
            });
        }
        if f.phase != Phase::Open {
            return Ok(None);
        }
        if !f.chunks.mark(0) {
            return Err(Violation::FileTwice(f.wanted.path.clone()));
        }
        // A bundled file is written and named in one go by the shell (its bundle vouches that
        // the source read it unchanged).
        f.phase = Phase::Committing;
        Ok(Some(f.shell.clone()))
    }

    /// The shell wrote (and named) a bundled file, or could not.
    pub fn small_written(
        &mut self,
        id: FileId,
        result: std::io::Result<()>,
        steps: &mut Vec<Step<M>>,
    ) {
        let Some(f) = self.files.get_mut(&id) else { return };
        match result {
            Ok(()) => {
                self.done(id, steps);
            }
            Err(e) => {
                f.phase = Phase::Failed;
                steps.push(Step::Fail(FileError::io(f.wanted.path.clone(), FileOp::Write, e)));
            }
        }
    }

    /// No more data or verdicts will come: every file still open is incomplete. Returns the
    /// files left (failed ones included) for the shell to forget.
    pub fn end(&mut self, steps: &mut Vec<Step<M>>) -> Vec<(FileId, M)> {
        let mut left = Vec::with_capacity(self.files.len());
        for (id, f) in self.files.drain() {
            if f.phase == Phase::Open || f.phase == Phase::Committing {
                steps.push(Step::Discard { id, shell: f.shell.clone() });
                steps.push(Step::Fail(FileError {
                    path: f.wanted.path.clone(),
                    op: FileOp::Receive,
                    cause: Cause::Incomplete,
                }));
            } else if let Some(offset_bytes) = f.mismatch {
                // Its checksum failed and the source's verdict never came: reported as the
                // damage it is, never silently left out.
                steps.push(Step::Fail(corrupted(&f.wanted.path, offset_bytes)));
            }
            left.push((id, f.shell));
        }
        left
    }

    /// The session failed or was cancelled: every file not committed is given up, without
    /// reporting one error per file. With partials kept, each returns the chunks its
    /// temporary file holds (the runs of its final journal; empty: remove it). Call it once
    /// no write is running (the writers are done).
    pub fn abandon(&mut self) -> Vec<(FileId, M, Runs)> {
        let keep = self.keep;
        self.files
            .drain()
            .map(|(id, f)| {
                let kept = keep
                    && !f.wanted.small
                    && f.temp
                    && f.phase == Phase::Open
                    && f.writing_now == 0;
                let runs = if kept { journal_runs(&f) } else { Vec::new() };
                (id, f.shell, runs)
            })
            .collect()
    }

    fn try_commit(&mut self, id: FileId, steps: &mut Vec<Step<M>>) {
        let Some(f) = self.files.get_mut(&id) else { return };
        if f.phase != Phase::Open || !f.read_done || !f.chunks.is_complete() || f.writing_now > 0 {
            return;
        }
        if self.sink {
            // Nothing to commit in a memory session: every chunk was verified.
            self.done(id, steps);
            return;
        }
        f.phase = Phase::Committing;
        let verify = f.resumed.as_mut().map(|r| std::mem::take(&mut r.hashes));
        steps.push(Step::Commit { id, shell: f.shell.clone(), verify });
    }
}

/// The chunks a file's temporary file holds, as its journal records them (at most as many runs
/// as a journal keeps).
fn journal_runs<M>(f: &FileState<M>) -> Vec<(u64, u64)> {
    let max = Journal::runs_max(f.wanted.path.file_name().len());
    match &f.resumed {
        Some(r) => r.kept.run_list(max),
        None => f.chunks.run_list(max),
    }
}

impl<M> Receiving<M> {
    /// File `id` is complete (committed, written whole, or verified in a memory session): it
    /// leaves the machine and is reported done.
    fn done(&mut self, id: FileId, steps: &mut Vec<Step<M>>) {
        if let Some(f) = self.files.remove(&id) {
            let reused_bytes = f.resumed.map_or(0, |r| r.reused_bytes);
            steps.push(Step::Done {
                id,
                path: f.wanted.path,
                size_bytes: f.wanted.size_bytes,
                reused_bytes,
                changes: f.wanted.changes,
            });
        }
    }
}

fn corrupted(path: &RelPath, offset_bytes: u64) -> FileError {
    FileError {
        path: path.clone(),
        op: FileOp::Receive,
        cause: Cause::CorruptedInTransit { offset_bytes },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 4096;

    fn wanted(size_bytes: u64) -> Wanted {
        Wanted {
            path: RelPath::parse(b"d/f").unwrap(),
            size_bytes,
            sparse: false,
            small: false,
            changes: Changes::default(),
        }
    }

    fn chunk(id: FileId, index: u64, size_bytes: u64) -> FrameHeader {
        let offset_bytes = index * u64::from(CHUNK);
        let len_bytes = size_bytes.saturating_sub(offset_bytes).min(u64::from(CHUNK)) as u32;
        FrameHeader {
            kind: FrameKind::Chunk,
            flags: 0,
            file_id: id,
            offset_bytes,
            len_bytes,
            checksum: 0,
        }
    }

    /// Admits and writes `h` with `outcome`, returning the steps.
    fn deliver(r: &mut Receiving<u8>, h: &FrameHeader, outcome: Written) -> Vec<Step<u8>> {
        match r.chunk(h, u64::from(h.len_bytes)).unwrap() {
            Admit::Write { .. } | Admit::Verify | Admit::Same => {}
            Admit::Drop => return Vec::new(),
        }
        let mut steps = Vec::new();
        r.written(h, outcome, &mut steps).unwrap();
        steps
    }

    #[test]
    fn a_complete_file_waiting_for_its_verdict_is_parked() {
        let mut r = Receiving::new(CHUNK, false);
        let size = 2 * u64::from(CHUNK);
        r.want(1, wanted(size), 0).unwrap();
        let parks = |s: &[Step<u8>]| s.iter().filter(|s| matches!(s, Step::Park { .. })).count();
        assert_eq!(parks(&deliver(&mut r, &chunk(1, 0, size), Written::Verified)), 0);
        assert_eq!(parks(&deliver(&mut r, &chunk(1, 1, size), Written::Verified)), 1);
        let mut steps = Vec::new();
        r.file_read(1, &mut steps);
        assert_eq!(commits(&steps), 1);
        // With the verdict first, the last chunk commits at once: nothing to park.
        r.want(2, wanted(size), 0).unwrap();
        let mut steps = Vec::new();
        r.file_read(2, &mut steps);
        deliver(&mut r, &chunk(2, 0, size), Written::Verified);
        let last = deliver(&mut r, &chunk(2, 1, size), Written::Verified);
        assert_eq!((parks(&last), commits(&last)), (0, 1));
    }

    fn commits(steps: &[Step<u8>]) -> usize {
        steps.iter().filter(|s| matches!(s, Step::Commit { .. })).count()
    }

    #[test]
    fn commits_only_when_every_chunk_and_the_verdict_arrived() {
        let mut r = Receiving::new(CHUNK, false);
        let size = 3 * u64::from(CHUNK) - 5;
        r.want(1, wanted(size), 0).unwrap();
        assert_eq!(commits(&deliver(&mut r, &chunk(1, 2, size), Written::Verified)), 0);
        assert_eq!(commits(&deliver(&mut r, &chunk(1, 0, size), Written::Verified)), 0);
        let mut steps = Vec::new();
        r.file_read(1, &mut steps);
        assert!(steps.is_empty(), "one chunk is still missing");
        assert_eq!(commits(&deliver(&mut r, &chunk(1, 1, size), Written::Verified)), 1);
        r.commit_result(1, Ok(()), &mut steps);
        assert!(matches!(steps[..], [Step::Done { id: 1, .. }]));
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn a_write_still_running_holds_the_commit_back() {
        let mut r = Receiving::new(CHUNK, false);
        r.want(1, wanted(u64::from(CHUNK)), 0).unwrap();
        let h = chunk(1, 0, u64::from(CHUNK));
        let Admit::Write { create: true, .. } = r.chunk(&h, u64::from(h.len_bytes)).unwrap() else {
            panic!()
        };
        // The same chunk again (a duplicate) is admitted while the first is being written …
        let Admit::Write { create: false, .. } = r.chunk(&h, u64::from(h.len_bytes)).unwrap()
        else {
            panic!()
        };
        let mut steps = Vec::new();
        r.file_read(1, &mut steps);
        r.written(&h, Written::Verified, &mut steps).unwrap();
        assert!(steps.is_empty(), "the duplicate is still being written into the temp file");
        // … and is refused when it completes.
        assert!(matches!(
            r.written(&h, Written::Verified, &mut steps),
            Err(Violation::ChunkTwice { .. })
        ));
    }

    #[test]
    fn a_checksum_failure_names_the_source_account_if_it_has_one() {
        let size = 2 * u64::from(CHUNK);
        // The source saw the file change: its account is reported, once.
        let mut r = Receiving::new(CHUNK, false);
        r.want(1, wanted(size), 0).unwrap();
        let steps = deliver(&mut r, &chunk(1, 0, size), Written::Mismatch);
        assert!(matches!(steps[..], [Step::Discard { .. }]));
        let mut steps = Vec::new();
        r.file_failed(1, "changed".into(), &mut steps);
        let fails: Vec<String> = steps
            .iter()
            .filter_map(|s| if let Step::Fail(e) = s { Some(e.to_string()) } else { None })
            .collect();
        assert_eq!(fails, ["source: changed"]);
        // The source read it unchanged: corrupted in transit.
        let mut r = Receiving::new(CHUNK, false);
        r.want(1, wanted(size), 0).unwrap();
        deliver(&mut r, &chunk(1, 0, size), Written::Mismatch);
        let mut steps = Vec::new();
        r.file_read(1, &mut steps);
        assert!(matches!(
            &steps[..],
            [Step::Fail(FileError { cause: Cause::CorruptedInTransit { offset_bytes: 0 }, .. })]
        ));
        // Later frames of a failed file are dropped, never committed.
        let h = chunk(1, 1, size);
        assert!(matches!(r.chunk(&h, u64::from(h.len_bytes)).unwrap(), Admit::Drop));
    }

    #[test]
    fn malformed_chunks_are_violations() {
        let size = 2 * u64::from(CHUNK);
        let mut r = Receiving::new(CHUNK, false);
        r.want(1, wanted(size), 0).unwrap();
        let mut h = chunk(1, 0, size);
        h.offset_bytes = 1;
        assert!(matches!(r.chunk(&h, u64::from(h.len_bytes)), Err(Violation::BadChunk { .. })));
        let h = chunk(1, 2, 3 * u64::from(CHUNK));
        assert!(
            matches!(r.chunk(&h, u64::from(h.len_bytes)), Err(Violation::BadChunk { .. })),
            "past the end"
        );
        let mut h = chunk(1, 0, size);
        h.len_bytes -= 1;
        assert!(
            matches!(r.chunk(&h, u64::from(h.len_bytes)), Err(Violation::BadChunk { .. })),
            "short"
        );
        let h = chunk(1, 0, size);
        assert!(
            matches!(r.chunk(&h, 1), Err(Violation::BadChunk { .. })),
            "payload differs from header"
        );
        assert!(matches!(
            r.chunk(&chunk(9, 0, size), u64::from(CHUNK)),
            Err(Violation::NotNeeded(9))
        ));
        assert!(matches!(r.want(1, wanted(1), 0), Err(Violation::DuplicateId { .. })));
    }

    #[test]
    fn the_end_makes_every_open_file_incomplete_and_a_hole_counts_its_run() {
        let size = 4 * u64::from(CHUNK);
        let mut r = Receiving::new(CHUNK, false);
        r.want(1, wanted(size), 0).unwrap();
        r.want(2, Wanted { sparse: true, ..wanted(size) }, 0).unwrap();
        let hole = FrameHeader::hole(2, 0, 4);
        assert!(matches!(r.chunk(&hole, 0).unwrap(), Admit::Write { .. }));
        let mut steps = Vec::new();
        r.written(&hole, Written::Verified, &mut steps).unwrap();
        r.file_read(2, &mut steps);
        assert_eq!(commits(&steps), 1, "one hole frame covered all four chunks");
        deliver(&mut r, &chunk(1, 0, size), Written::Verified);
        let mut steps = Vec::new();
        let left = r.end(&mut steps);
        assert_eq!(left.len(), 2);
        let incomplete = steps
            .iter()
            .filter(|s| matches!(s, Step::Fail(FileError { cause: Cause::Incomplete, .. })))
            .count();
        assert_eq!(incomplete, 2, "file 2 was still being committed, file 1 lacks chunks");
    }

    #[test]
    fn a_memory_session_verifies_and_creates_nothing() {
        let size = u64::from(CHUNK);
        let mut r = Receiving::new(CHUNK, true);
        r.want(1, wanted(size), 0).unwrap();
        let h = chunk(1, 0, size);
        assert!(matches!(r.chunk(&h, size).unwrap(), Admit::Verify));
        let mut steps = Vec::new();
        r.written(&h, Written::Verified, &mut steps).unwrap();
        r.file_read(1, &mut steps);
        assert!(matches!(steps[..], [Step::Done { .. }]));
        r.want(2, wanted(size), 0).unwrap();
        assert!(matches!(
            r.chunk(&FrameHeader::hole(2, 0, 1), 0),
            Err(Violation::HoleInMemorySession)
        ));
    }

    #[test]
    fn bundled_files_are_checked_and_written_once() {
        let mut r = Receiving::new(CHUNK, false);
        let mut w = wanted(10);
        w.small = true;
        r.want(1, w, 5).unwrap();
        assert!(matches!(r.bundled(1, 9), Err(Violation::BundleSize { .. })));
        assert_eq!(r.bundled(1, 10).unwrap(), Some(5));
        assert!(matches!(r.bundled(1, 10), Ok(None)), "being written: the copy is dropped");
        let mut steps = Vec::new();
        r.small_written(1, Ok(()), &mut steps);
        assert!(matches!(steps[..], [Step::Done { id: 1, .. }]));
        let h = chunk(1, 0, 10);
        assert!(matches!(r.chunk(&h, 10), Err(Violation::NotNeeded(1))));
    }

    /// Review of 2026-12-07: a `FileFailed` for a file whose commit began made it reported
    /// both done and failed, under a path the source chose.
    #[test]
    fn a_verdict_after_the_commit_began_reports_nothing_more() {
        let mut r = Receiving::new(CHUNK, false);
        let size = u64::from(CHUNK);
        r.want(1, wanted(size), 0).unwrap();
        deliver(&mut r, &chunk(1, 0, size), Written::Verified);
        let mut steps = Vec::new();
        r.file_read(1, &mut steps);
        assert!(matches!(steps[..], [Step::Commit { .. }]), "{steps:?}");
        let mut steps = Vec::new();
        r.file_failed(1, "x".into(), &mut steps);
        r.commit_result(1, Ok(()), &mut steps);
        assert!(matches!(steps[..], [Step::Done { .. }]), "{steps:?}");
        // An id never wanted reports nothing either.
        let mut steps = Vec::new();
        r.file_failed(99, "x".into(), &mut steps);
        assert!(steps.is_empty(), "{steps:?}");
    }

    /// Review of 2026-12-07: a file that reported its own write failure was counted again when
    /// the source's verdict came.
    #[test]
    fn a_failed_file_is_reported_once() {
        let mut r = Receiving::new(CHUNK, false);
        let size = u64::from(CHUNK);
        r.want(1, wanted(size), 0).unwrap();
        let io = std::io::Error::other("disk");
        let mut steps = deliver(&mut r, &chunk(1, 0, size), Written::Failed(FileOp::Write, io));
        r.file_failed(1, "x".into(), &mut steps);
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::Fail(_))).count(), 1, "{steps:?}");
    }

    /// Simulator, lost control message: a file whose checksum failed before the source's
    /// verdict, which never came, was left out of the report at the end (needed, not done,
    /// no error).
    #[test]
    fn a_checksum_failure_whose_verdict_never_came_is_reported_at_the_end() {
        let mut r = Receiving::new(CHUNK, false);
        let size = 2 * u64::from(CHUNK);
        r.want(1, wanted(size), 0).unwrap();
        deliver(&mut r, &chunk(1, 1, size), Written::Mismatch);
        let mut steps = Vec::new();
        r.end(&mut steps);
        assert!(
            matches!(
                &steps[..],
                [Step::Fail(FileError {
                    cause: Cause::CorruptedInTransit { offset_bytes: 4096 },
                    ..
                })]
            ),
            "{steps:?}"
        );
    }

    /// Review of 2026-12-07: hole frames were accepted for a file not listed as sparse.
    #[test]
    fn a_hole_in_a_file_not_listed_sparse_is_a_violation() {
        let mut r: Receiving<u8> = Receiving::new(CHUNK, false);
        let size = 4 * u64::from(CHUNK);
        r.want(1, wanted(size), 0).unwrap();
        let hole = FrameHeader::hole(1, 0, 1);
        assert!(matches!(r.chunk(&hole, 0), Err(Violation::HoleInDenseFile(_))));
        r.want(2, Wanted { sparse: true, ..wanted(size) }, 0).unwrap();
        assert!(matches!(r.chunk(&FrameHeader::hole(2, 0, 1), 0), Ok(Admit::Write { .. })));
    }

    fn same(id: FileId, index: u64, hash: u64) -> FrameHeader {
        FrameHeader::same(id, index * u64::from(CHUNK), hash)
    }

    fn checked(id: FileId, index: u64, size_bytes: u64, hash: u64) -> FrameHeader {
        FrameHeader { checksum: hash, ..chunk(id, index, size_bytes) }
    }

    #[test]
    fn a_resumed_file_commits_with_its_offered_chunks_confirmed_and_verifies_them() {
        let size = 4 * u64::from(CHUNK) - 10;
        let mut r = Receiving::new(CHUNK, false).keeping_partials(true);
        r.want_resumed(1, wanted(size), 7u8, vec![(0, 100), (2, 102)]).unwrap();
        // The temporary file exists: no chunk asks for it to be created.
        assert!(matches!(
            r.chunk(&checked(1, 1, size, 201), u64::from(CHUNK)).unwrap(),
            Admit::Write { create: false, .. }
        ));
        let mut steps = Vec::new();
        r.written(&checked(1, 1, size, 201), Written::Verified, &mut steps).unwrap();
        assert!(matches!(r.chunk(&same(1, 0, 100), 0).unwrap(), Admit::Same));
        r.written(&same(1, 0, 100), Written::Verified, &mut steps).unwrap();
        // An offered chunk the source found different comes as data.
        deliver(&mut r, &checked(1, 2, size, 202), Written::Verified);
        deliver(&mut r, &checked(1, 3, size, 203), Written::Verified);
        let mut steps = Vec::new();
        r.file_read(1, &mut steps);
        let Some(Step::Commit { verify: Some(hashes), .. }) = steps.pop() else {
            panic!("commit with a check: {steps:?}")
        };
        assert_eq!(hashes, vec![100, 201, 202, 203], "the source's hash of every chunk");
        let mut steps = Vec::new();
        r.commit_result(1, Ok(()), &mut steps);
        assert!(
            matches!(steps[..], [Step::Done { reused_bytes, .. }] if reused_bytes == u64::from(CHUNK)),
            "{steps:?}"
        );
    }

    #[test]
    fn same_frames_for_chunks_not_offered_or_with_another_hash_are_violations() {
        let size = 4 * u64::from(CHUNK);
        let mut r = Receiving::new(CHUNK, false);
        r.want_resumed(1, wanted(size), 7u8, vec![(0, 100)]).unwrap();
        r.want(2, wanted(size), 8u8).unwrap();
        for h in [same(1, 1, 100), same(1, 0, 99), same(2, 0, 100)] {
            assert!(matches!(r.chunk(&h, 0), Err(Violation::NotOffered { .. })), "{h:?}");
        }
        let unchecked = FrameHeader { flags: FLAG_UNCHECKED, ..chunk(1, 1, size) };
        assert!(matches!(
            r.chunk(&unchecked, u64::from(CHUNK)),
            Err(Violation::UncheckedResumed(_))
        ));
        // A second Same for the same chunk counts it twice.
        deliver(&mut r, &same(1, 0, 100), Written::Verified);
        r.chunk(&same(1, 0, 100), 0).unwrap();
        let mut steps = Vec::new();
        assert!(matches!(
            r.written(&same(1, 0, 100), Written::Verified, &mut steps),
            Err(Violation::ChunkTwice { .. })
        ));
    }

    #[test]
    fn journals_are_saved_as_chunks_arrive_and_abandoned_partials_keep_their_chunks() {
        let chunk = 16u64 << 20;
        let size = 10 * chunk;
        let mut r = Receiving::new(chunk as u32, false).keeping_partials(true);
        r.want(1, wanted(size), 1u8).unwrap();
        r.want(2, Wanted { small: true, ..wanted(100) }, 2u8).unwrap();
        let h = |i: u64| FrameHeader {
            offset_bytes: i * chunk,
            len_bytes: chunk as u32,
            ..chunk_header(1)
        };
        let mut journals = Vec::new();
        for i in [0, 1, 5, 2] {
            r.chunk(&h(i), chunk).unwrap();
            let mut steps = Vec::new();
            r.written(&h(i), Written::Verified, &mut steps).unwrap();
            journals.extend(steps.into_iter().filter_map(|s| match s {
                Step::Journal { runs, .. } => Some(runs),
                _ => None,
            }));
        }
        // Every 32 MiB of new chunks: after the 2nd and the 4th.
        assert_eq!(journals, vec![vec![(0, 2)], vec![(0, 3), (5, 1)]]);
        let mut left = r.abandon();
        left.sort_by_key(|l| l.0);
        assert_eq!(left[0].2, vec![(0, 3), (5, 1)]);
        assert!(left[1].2.is_empty(), "a bundled file keeps nothing");
        // Without partials kept, nothing is.
        let mut r = Receiving::new(chunk as u32, false);
        r.want(1, wanted(size), 1u8).unwrap();
        deliver(&mut r, &h(0), Written::Verified);
        assert!(r.abandon()[0].2.is_empty());
    }

    fn chunk_header(id: FileId) -> FrameHeader {
        chunk(id, 0, 1)
    }

    #[test]
    fn recipe_chunks_only_for_files_with_a_basis_shorter_than_the_chunk_and_checked() {
        let size = 2 * u64::from(CHUNK);
        let mut r = Receiving::new(CHUNK, false);
        r.want_delta(1, wanted(size), 1u8).unwrap();
        r.want(2, wanted(size), 2u8).unwrap();
        let delta = |id: FileId, len: u32, flags: u16| FrameHeader {
            kind: FrameKind::Delta,
            flags,
            len_bytes: len,
            checksum: 5,
            ..chunk(id, 0, size)
        };
        assert!(matches!(r.chunk(&delta(2, 100, 0), 100), Err(Violation::NotDelta(_))));
        assert!(matches!(
            r.chunk(&delta(1, CHUNK, 0), u64::from(CHUNK)),
            Err(Violation::BadChunk { .. })
        ));
        assert!(matches!(
            r.chunk(&delta(1, 100, FLAG_UNCHECKED), 100),
            Err(Violation::UncheckedResumed(_))
        ));
        assert!(matches!(
            r.chunk(&delta(1, 100, 0), 100).unwrap(),
            Admit::Write { create: true, .. }
        ));
        let mut steps = Vec::new();
        r.written(&delta(1, 100, 0), Written::Verified, &mut steps).unwrap();
        deliver(&mut r, &checked(1, 1, size, 6), Written::Verified);
        let mut steps = Vec::new();
        r.file_read(1, &mut steps);
        let Some(Step::Commit { verify: Some(hashes), .. }) = steps.pop() else {
            panic!("a delta file is read back before its commit: {steps:?}")
        };
        assert_eq!(hashes, vec![5, 6]);
    }
}
