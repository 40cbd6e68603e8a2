//! The source half's protocol, in two machines.
//!
//! [`Answers`]: every listing sent waits for the target's answer (the files it needs from it),
//! answers come in order and each names the listing it answers, a need must name a file of that
//! listing, and at most [`UNANSWERED_LISTINGS_MAX`] listings wait at once (a target that reads
//! listings and never answers cannot make the source hold the whole tree). The shell asks
//! [`Answers::may_send`] before it sends a listing (and waits for an answer while it may not),
//! records it with [`Answers::sent`], and turns an answer into work with [`Answers::answer`].
//!
//! [`Reading`]: the fate of each chunked file being read — when it is opened, which reads of
//! it count, that its first failure is the one reported and the rest of it is dropped from the
//! plan, that it is looked at again (size, mtime) once every read of it is over, and the one
//! verdict the target is told: `FileRead` or `FileFailed`, exactly once.
//!
//! No I/O happens here: the shell (`blitx_storage::source`, or the simulator) opens, reads,
//! stats and sends, and carries out the [`Step`]s that come back.

use std::collections::VecDeque;

use blitx_core::RelPath;
use blitx_core::manifest::{Entry, EntryKind, FileId, IdMap, Timestamp};

use crate::error::{Cause, FileError, FileOp, Violation};

/// Listings sent and not yet answered at most before the walk waits.
pub const UNANSWERED_LISTINGS_MAX: usize = 1024;

/// What the source remembers of a listed file until the target has decided about it.
pub trait Listed: Sized {
    fn id(&self) -> FileId;
    /// The file of a listing entry; `None` for entries that are not files.
    fn of(entry: &Entry) -> Option<Self>;
}

#[derive(Debug)]
struct Unanswered<F> {
    seq: u64,
    files: Vec<F>,
}

/// Listings awaiting their answers.
#[derive(Debug)]
pub struct Answers<F> {
    queue: VecDeque<Unanswered<F>>,
    next_seq: u64,
    limit: usize,
    /// The last listing is sent (`ManifestEnd`): only now may the target end its needs.
    manifest_ended: bool,
}

impl<F: Listed> Default for Answers<F> {
    fn default() -> Self {
        Self::with_limit(UNANSWERED_LISTINGS_MAX)
    }
}

impl<F: Listed> Answers<F> {
    pub fn with_limit(limit: usize) -> Self {
        assert!(limit > 0);
        Answers { queue: VecDeque::new(), next_seq: 0, limit, manifest_ended: false }
    }

    /// Whether another listing may be sent now.
    pub fn may_send(&self) -> bool {
        self.queue.len() < self.limit
    }

    pub fn unanswered(&self) -> usize {
        self.queue.len()
    }

    /// A listing with `entries` is sent; returns its sequence number (which its answer names).
    pub fn sent(&mut self, entries: &[Entry]) -> u64 {
        debug_assert!(self.may_send(), "the shell waits while may_send() is false");
        let seq = self.next_seq;
        self.next_seq += 1;
        let files =
            entries.iter().filter(|e| e.kind == EntryKind::File).filter_map(F::of).collect();
        self.queue.push_back(Unanswered { seq, files });
        seq
    }

    /// The last listing was sent (the shell sends `ManifestEnd` next).
    pub fn manifest_end(&mut self) {
        self.manifest_ended = true;
    }

    /// The target says it needs nothing more (`NeedEnd`): only true once every listing is sent
    /// and answered. Earlier, it would leave the walk waiting for answers that never come,
    /// with nothing left to time the wait.
    pub fn need_end(&self) -> Result<(), Violation> {
        if !self.manifest_ended || !self.queue.is_empty() {
            return Err(Violation::NeedEndEarly { unanswered: self.queue.len() as u64 });
        }
        Ok(())
    }

    /// The target answered listing `seq` with the files it needs: they are returned in the
    /// order asked, and the rest of the listing is forgotten.
    pub fn answer(&mut self, seq: u64, needed: &[FileId]) -> Result<Vec<F>, Violation> {
        let Some(front) = self.queue.front() else { return Err(Violation::AnswerForNoListing) };
        if front.seq != seq {
            return Err(Violation::AnswerOutOfOrder { answered: seq, expected: front.seq });
        }
        let Some(listing) = self.queue.pop_front() else {
            return Err(Violation::AnswerForNoListing);
        };
        if needed.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_id: IdMap<F> = listing.files.into_iter().map(|f| (f.id(), f)).collect();
        needed.iter().map(|id| by_id.remove(id).ok_or(Violation::NeedNotListed(*id))).collect()
    }
}

/// Chunked files held open at once at most (each holds a descriptor, two with `--io`). The
/// shell stays far below it: the chunker hands out one large file at a time, so files with
/// reads left number at most one per reader plus one, and a file whose reads are over is
/// closed then (its regions still in the transport keep the file, not the machine). A file
/// begun past the limit fails as the kernel would fail its open (`EMFILE`), and is forgotten
/// once its chunks already handed out are counted.
pub const FILES_OPEN_MAX: usize = 4096;

/// `EMFILE`: what a file begun past [`FILES_OPEN_MAX`] reports.
const TOO_MANY_OPEN_FILES: i32 = 24;

/// A file's size and modification time: as listed, or as seen once it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub size_bytes: u64,
    pub mtime: Timestamp,
}

/// Whether a file, seen again once it was read (or, bundled, right after), is the one listed:
/// the same size and the same modification time.
pub fn unchanged(path: &RelPath, listed: Seen, now: Seen) -> Result<(), FileError> {
    if now.size_bytes != listed.size_bytes || now.mtime != listed.mtime {
        return Err(FileError {
            path: path.clone(),
            op: FileOp::ReadCheck,
            cause: Cause::Changed {
                size_bytes_listed: listed.size_bytes,
                size_bytes_now: now.size_bytes,
            },
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The first reader of it is opening it.
    Opening,
    /// Being read (or its reads are over and the shell's holds on it not yet released).
    Reading,
    /// Given up: no more of it is read, and its verdict is (or will be) `FileFailed`.
    Failed,
    /// Every read is over, every hold released, nothing failed: the shell is looking at it
    /// again.
    Checking,
}

#[derive(Debug)]
struct ReadFile<M> {
    path: RelPath,
    listed: Seen,
    /// Chunk reads not yet counted: handed to readers, or still in the plan.
    reads_left: u64,
    stage: Stage,
    /// The shell's handle (its descriptors, the hold its reads share) while reads are left.
    handle: Option<M>,
    /// It opened: the shell holds it, and its verdict waits for [`Reading::released`].
    held: bool,
    /// The shell's last hold on it is gone.
    released: bool,
    /// The first failure: the one reported.
    failure: Option<FileError>,
}

/// What a reader does with the chunk of a file it took from the plan.
#[derive(Debug)]
pub enum Begin<M> {
    /// The file's first read: open it, and report with [`Reading::opened`].
    Open,
    /// Read the chunk with this handle, and report with [`Reading::read`].
    Read(M),
    /// Do not read it (the file failed): the chunk is counted already.
    Skip,
}

/// What a read that is over means for its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Send it; `last`: it was the file's last read.
    Send { last: bool },
    /// Do not send it: the file failed (now or before), or is not being read.
    Skip,
}

/// What the shell does next for a file being read.
#[derive(Debug)]
pub enum Step<M> {
    /// The file failed: take its chunks not yet handed to a reader out of the plan, and count
    /// them with [`Reading::dropped`] (a huge file that failed early costs no further work).
    DropRest(FileId),
    /// Every read of the file is counted: drop its handle, outside any lock the shell holds
    /// around this machine (the last hold going may report [`Reading::released`] at once).
    Close(FileId, M),
    /// Look at the file again (size and mtime, through the descriptor it was read from), and
    /// report with [`Reading::checked`].
    Check(FileId),
    /// Tell the target `FileRead`: every byte was read and the file did not change.
    Read(FileId),
    /// Tell the target `FileFailed` with this error (and log it).
    Failed(FileId, FileError),
}

/// The chunked files being read, each from its first chunk to its verdict.
///
/// One verdict per file, whatever the order of events: `FileRead` only when every read of it
/// succeeded, every hold on it was released and it was seen unchanged afterwards; otherwise
/// `FileFailed` with its first failure. Events for a file that has its verdict, and repeated
/// events, change nothing.
#[derive(Debug)]
pub struct Reading<M> {
    files: IdMap<ReadFile<M>>,
    chunk_bytes: u64,
    open_max: usize,
    open_now: usize,
}

impl<M: Clone> Reading<M> {
    pub fn new(chunk_bytes: u32) -> Self {
        Self::with_limit(chunk_bytes, FILES_OPEN_MAX)
    }

    pub fn with_limit(chunk_bytes: u32, open_max: usize) -> Self {
        assert!(chunk_bytes > 0 && open_max > 0);
        Reading {
            files: IdMap::default(),
            chunk_bytes: u64::from(chunk_bytes),
            open_max,
            open_now: 0,
        }
    }

    /// Files not yet given their verdict (none when every read is over and every verdict out).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Files whose handle is open.
    pub fn open_now(&self) -> usize {
        self.open_now
    }

    /// The chunks that cover bytes `from_bytes .. to_bytes` of a file.
    pub fn chunks(&self, from_bytes: u64, to_bytes: u64) -> u64 {
        to_bytes.saturating_sub(from_bytes).div_ceil(self.chunk_bytes)
    }

    /// A reader took a chunk of file `id` (listed as `listed`) from the plan.
    pub fn begin(
        &mut self,
        id: FileId,
        path: &RelPath,
        listed: Seen,
        steps: &mut Vec<Step<M>>,
    ) -> Begin<M> {
        let Some(f) = self.files.get_mut(&id) else {
            let reads_left = listed.size_bytes.div_ceil(self.chunk_bytes).max(1);
            let f = ReadFile {
                path: path.clone(),
                listed,
                reads_left,
                stage: Stage::Opening,
                handle: None,
                held: false,
                released: false,
                failure: None,
            };
            self.files.insert(id, f);
            if self.open_now >= self.open_max {
                let e = std::io::Error::from_raw_os_error(TOO_MANY_OPEN_FILES);
                self.opened(id, Err(FileError::io(path.clone(), FileOp::Open, e)), steps);
                return Begin::Skip;
            }
            return Begin::Open;
        };
        match (f.stage, &f.handle) {
            (Stage::Reading, Some(h)) => Begin::Read(h.clone()),
            (Stage::Failed, _) => {
                // Reported once already; the chunk was handed out before the rest was dropped.
                self.count(id, 1, steps);
                Begin::Skip
            }
            // A chunk past the file's reads (its handle closed), or begun while its first
            // reader opens it (the shell reports `opened` before it lets go of the machine):
            // not a read of the plan, nothing is counted.
            _ => Begin::Skip,
        }
    }

    /// The file [`Begin::Open`] asked for opened (`Ok`: the shell's handle, shared by its
    /// reads), or could not (its verdict goes at once, and the chunk that began is counted).
    pub fn opened(&mut self, id: FileId, result: Result<M, FileError>, steps: &mut Vec<Step<M>>) {
        let Some(f) = self.files.get_mut(&id).filter(|f| f.stage == Stage::Opening) else {
            if let Ok(m) = result {
                steps.push(Step::Close(id, m));
            }
            return;
        };
        match result {
            Ok(m) => {
                f.handle = Some(m);
                f.held = true;
                f.stage = Stage::Reading;
                self.open_now += 1;
            }
            Err(e) => {
                // Nothing holds it: no release will come, so the verdict cannot wait for one.
                f.stage = Stage::Failed;
                steps.push(Step::Failed(id, e));
                steps.push(Step::DropRest(id));
                self.count(id, 1, steps);
            }
        }
    }

    /// `chunks` reads of file `id` are over (the chunk [`Begin::Read`] handed out, and any
    /// run of chunks it took out of the plan with it), with `outcome`.
    pub fn read(
        &mut self,
        id: FileId,
        chunks: u64,
        outcome: Result<(), FileError>,
        steps: &mut Vec<Step<M>>,
    ) -> Counted {
        let Some(f) = self.files.get_mut(&id) else { return Counted::Skip };
        let counted = match (f.stage, outcome) {
            (Stage::Reading, Ok(())) => Counted::Send { last: f.reads_left <= chunks },
            (Stage::Reading, Err(e)) => {
                // The first failure: its verdict waits for the file's holds to go.
                f.stage = Stage::Failed;
                f.failure = Some(e);
                steps.push(Step::DropRest(id));
                Counted::Skip
            }
            // Reported once already, by the read that saw the first failure.
            (Stage::Failed, _) => Counted::Skip,
            // Not a read this machine handed out: nothing is counted.
            (Stage::Opening | Stage::Checking, _) => return Counted::Skip,
        };
        self.count(id, chunks, steps);
        counted
    }

    /// [`Step::DropRest`] took the chunks `chunks` of file `id` out of the plan.
    pub fn dropped(&mut self, id: FileId, chunks: u64, steps: &mut Vec<Step<M>>) {
        if self.files.get(&id).is_some_and(|f| f.stage == Stage::Failed) {
            self.count(id, chunks, steps);
        }
    }

    /// The shell's last hold on file `id` is gone (every read of it is over and every region
    /// of it sent or given up); `transport`: a failure the transport recorded on the way.
    pub fn released(&mut self, id: FileId, transport: Option<FileError>, steps: &mut Vec<Step<M>>) {
        let Some(f) = self.files.get_mut(&id).filter(|f| f.held && !f.released) else { return };
        f.released = true;
        if let Some(e) = transport
            && f.failure.is_none()
        {
            f.failure = Some(e);
        }
        if f.reads_left == 0 {
            self.verdict(id, steps);
        }
    }

    /// What the shell saw when it looked at file `id` again ([`Step::Check`]).
    pub fn checked(&mut self, id: FileId, seen: Result<Seen, FileError>, steps: &mut Vec<Step<M>>) {
        let Some(f) = self.files.get(&id).filter(|f| f.stage == Stage::Checking) else { return };
        let verdict = seen.and_then(|now| unchanged(&f.path, f.listed, now));
        self.files.remove(&id);
        steps.push(match verdict {
            Ok(()) => Step::Read(id),
            Err(e) => Step::Failed(id, e),
        });
    }

    /// The session ends before its reads did (cancelled, or failed): every file is forgotten
    /// without a verdict; the handles still open are returned, to be dropped outside the lock.
    pub fn abandon(&mut self) -> Vec<M> {
        self.open_now = 0;
        self.files.drain().filter_map(|(_, f)| f.handle).collect()
    }

    /// Counts `chunks` reads of file `id` as over.
    fn count(&mut self, id: FileId, chunks: u64, steps: &mut Vec<Step<M>>) {
        let Some(f) = self.files.get_mut(&id) else { return };
        f.reads_left = f.reads_left.saturating_sub(chunks);
        if f.reads_left > 0 {
            return;
        }
        if let Some(m) = f.handle.take() {
            self.open_now -= 1;
            steps.push(Step::Close(id, m));
        }
        if !f.held {
            // Failed before it opened: its verdict went then.
            self.files.remove(&id);
        } else if f.released {
            self.verdict(id, steps);
        }
    }

    /// Every read of a held file is over and every hold released: it failed, or it is
    /// looked at again.
    fn verdict(&mut self, id: FileId, steps: &mut Vec<Step<M>>) {
        let Some(f) = self.files.get_mut(&id) else { return };
        if let Some(e) = f.failure.take() {
            self.files.remove(&id);
            steps.push(Step::Failed(id, e));
            return;
        }
        f.stage = Stage::Checking;
        steps.push(Step::Check(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_core::RelPath;

    #[derive(Debug, PartialEq)]
    struct F(FileId);
    impl Listed for F {
        fn id(&self) -> FileId {
            self.0
        }
        fn of(e: &Entry) -> Option<Self> {
            Some(F(e.id))
        }
    }

    fn file(id: FileId) -> Entry {
        let path = RelPath::parse(format!("f{id}").as_bytes()).unwrap();
        Entry { size_bytes: 1, mode: 0o644, ..Entry::new(id, path, EntryKind::File) }
    }

    #[test]
    fn answers_come_in_order_and_name_their_listing() {
        let mut a: Answers<F> = Answers::with_limit(2);
        let s0 = a.sent(&[file(1), file(2)]);
        let s1 = a.sent(&[file(3)]);
        assert!(!a.may_send());
        assert_eq!(
            a.answer(s1, &[3]),
            Err(Violation::AnswerOutOfOrder { answered: s1, expected: s0 })
        );
        assert_eq!(a.answer(s0, &[2]).unwrap(), vec![F(2)]);
        assert!(a.may_send());
        assert_eq!(a.answer(s1, &[1]), Err(Violation::NeedNotListed(1)));
        assert_eq!(a.answer(s1 + 1, &[]), Err(Violation::AnswerForNoListing));
    }

    #[test]
    fn a_file_is_needed_once() {
        let mut a: Answers<F> = Answers::default();
        let s = a.sent(&[file(7)]);
        assert_eq!(a.answer(s, &[7, 7]), Err(Violation::NeedNotListed(7)));
    }

    /// Review of 2026-12-07: a target that sent `NeedEnd` with listings unanswered (or before
    /// the last listing) left the walk waiting for answers forever, with no timer running.
    #[test]
    fn needs_end_only_after_the_last_listing_is_answered() {
        let mut a: Answers<F> = Answers::default();
        let s = a.sent(&[file(1)]);
        assert_eq!(a.need_end(), Err(Violation::NeedEndEarly { unanswered: 1 }));
        a.answer(s, &[]).unwrap();
        assert_eq!(a.need_end(), Err(Violation::NeedEndEarly { unanswered: 0 }), "walk not over");
        let s = a.sent(&[file(2)]);
        a.manifest_end();
        assert_eq!(a.need_end(), Err(Violation::NeedEndEarly { unanswered: 1 }));
        a.answer(s, &[2]).unwrap();
        assert_eq!(a.need_end(), Ok(()));
    }

    // -- Reading ----------------------------------------------------------------------------

    const CHUNK: u32 = 4;

    fn seen(size_bytes: u64, sec: i64) -> Seen {
        Seen { size_bytes, mtime: blitx_core::manifest::Timestamp { sec, nsec: 0 } }
    }

    fn path(id: FileId) -> RelPath {
        RelPath::parse(format!("f{id}").as_bytes()).unwrap()
    }

    /// The handle is a number: which open of the file it came from.
    type R = Reading<u32>;

    fn begin(r: &mut R, id: FileId, size: u64, steps: &mut Vec<Step<u32>>) -> Begin<u32> {
        r.begin(id, &path(id), seen(size, 7), steps)
    }

    fn io_error(id: FileId, op: FileOp) -> FileError {
        FileError::io(path(id), op, std::io::Error::from_raw_os_error(5))
    }

    /// The verdicts among `steps`: (id, Ok for FileRead / the error of FileFailed).
    fn verdicts(steps: &[Step<u32>]) -> Vec<(FileId, Result<(), &FileError>)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Read(id) => Some((*id, Ok(()))),
                Step::Failed(id, e) => Some((*id, Err(e))),
                _ => None,
            })
            .collect()
    }

    /// Opens file `id` (`size` bytes) through its first chunk's begin.
    fn open(r: &mut R, id: FileId, size: u64) {
        let mut steps = Vec::new();
        assert!(matches!(begin(r, id, size, &mut steps), Begin::Open));
        r.opened(id, Ok(1), &mut steps);
        assert!(steps.is_empty(), "{steps:?}");
    }

    #[test]
    fn a_file_read_whole_and_seen_unchanged_is_read_once() {
        let mut r = R::new(CHUNK);
        let mut steps = Vec::new();
        open(&mut r, 1, 10); // 3 chunks; the first is begun
        assert!(matches!(begin(&mut r, 1, 10, &mut steps), Begin::Read(1)));
        assert!(matches!(begin(&mut r, 1, 10, &mut steps), Begin::Read(1)));
        assert_eq!(r.read(1, 1, Ok(()), &mut steps), Counted::Send { last: false });
        assert_eq!(r.read(1, 1, Ok(()), &mut steps), Counted::Send { last: false });
        assert!(steps.is_empty());
        assert_eq!(r.read(1, 1, Ok(()), &mut steps), Counted::Send { last: true });
        assert!(matches!(steps[..], [Step::Close(1, 1)]), "{steps:?}");
        assert_eq!(r.open_now(), 0);
        steps.clear();
        // Regions of it are still in the transport: no verdict before the last hold goes.
        r.checked(1, Ok(seen(10, 7)), &mut steps);
        assert!(steps.is_empty());
        r.released(1, None, &mut steps);
        assert!(matches!(steps[..], [Step::Check(1)]), "{steps:?}");
        steps.clear();
        r.released(1, None, &mut steps);
        assert!(steps.is_empty(), "a second release is ignored");
        r.checked(1, Ok(seen(10, 7)), &mut steps);
        assert!(matches!(verdicts(&steps)[..], [(1, Ok(()))]), "{steps:?}");
        steps.clear();
        r.checked(1, Ok(seen(10, 7)), &mut steps);
        r.released(1, None, &mut steps);
        assert_eq!(r.read(1, 1, Ok(()), &mut steps), Counted::Skip);
        assert!(steps.is_empty(), "late events after the verdict change nothing: {steps:?}");
        assert!(r.is_empty());
    }

    #[test]
    fn a_read_error_fails_the_file_once_and_drops_the_rest() {
        let mut r = R::new(CHUNK);
        let mut steps = Vec::new();
        open(&mut r, 1, 40); // 10 chunks
        assert!(matches!(begin(&mut r, 1, 40, &mut steps), Begin::Read(1)));
        assert!(matches!(begin(&mut r, 1, 40, &mut steps), Begin::Read(1)));
        assert_eq!(r.read(1, 1, Err(io_error(1, FileOp::Read)), &mut steps), Counted::Skip);
        assert!(matches!(steps[..], [Step::DropRest(1)]), "{steps:?}");
        steps.clear();
        // Another read of it in flight fails too: the first failure is the one reported.
        assert_eq!(r.read(1, 1, Err(io_error(1, FileOp::Open)), &mut steps), Counted::Skip);
        // A chunk handed out before the rest was dropped is skipped, and counted.
        assert!(matches!(begin(&mut r, 1, 40, &mut steps), Begin::Skip));
        // The rest, taken out of the plan, is counted: every read is over, the handle goes.
        r.dropped(1, r.chunks(16, 40), &mut steps);
        assert!(steps.is_empty(), "{steps:?}");
        // A read that succeeded after the failure (it started before) is not sent either;
        // it was the last: the handle goes.
        assert_eq!(r.read(1, 1, Ok(()), &mut steps), Counted::Skip);
        assert!(matches!(steps[..], [Step::Close(1, 1)]), "{steps:?}");
        steps.clear();
        r.released(1, None, &mut steps);
        let v = verdicts(&steps);
        assert_eq!(v.len(), 1, "{steps:?}");
        let Err(e) = v[0].1 else { panic!("{steps:?}") };
        assert_eq!((v[0].0, e.op), (1, FileOp::Read));
        assert!(!steps.iter().any(|s| matches!(s, Step::Check(_))), "no check of a failed file");
        steps.clear();
        r.released(1, None, &mut steps);
        r.checked(1, Ok(seen(40, 7)), &mut steps);
        assert!(steps.is_empty() && r.is_empty(), "{steps:?}");
    }

    #[test]
    fn a_file_seen_changed_fails_with_the_change() {
        let mut r = R::new(CHUNK);
        let mut steps = Vec::new();
        for (id, now) in [(1, seen(4, 7)), (2, seen(5, 7)), (3, seen(4, 8))] {
            open(&mut r, id, 4);
            assert_eq!(r.read(id, 1, Ok(()), &mut steps), Counted::Send { last: true });
            r.released(id, None, &mut steps);
            r.checked(id, Ok(now), &mut steps);
        }
        open(&mut r, 4, 4);
        r.read(4, 1, Ok(()), &mut steps);
        r.released(4, None, &mut steps);
        r.checked(4, Err(io_error(4, FileOp::ReadCheck)), &mut steps);
        let v = verdicts(&steps);
        assert!(matches!(v[0], (1, Ok(()))), "{v:?}");
        let causes: Vec<_> = v[1..].iter().map(|(id, e)| (*id, e.map_err(|e| &e.cause))).collect();
        assert!(
            matches!(
                causes[..],
                [
                    (2, Err(Cause::Changed { size_bytes_listed: 4, size_bytes_now: 5 })),
                    (3, Err(Cause::Changed { size_bytes_listed: 4, size_bytes_now: 4 })),
                    (4, Err(Cause::Io(_)))
                ]
            ),
            "{causes:?}"
        );
        let e = v[1].1.unwrap_err();
        assert_eq!(e.to_string(), "changed while being read (size 4 -> 5); not copied, run again");
        assert!(r.is_empty());
    }

    #[test]
    fn a_file_that_cannot_open_fails_at_once_and_is_not_opened_again() {
        let mut r = R::new(CHUNK);
        let mut steps = Vec::new();
        assert!(matches!(begin(&mut r, 1, 12, &mut steps), Begin::Open));
        assert!(matches!(begin(&mut r, 1, 12, &mut steps), Begin::Skip), "not while it opens");
        r.opened(1, Err(io_error(1, FileOp::Open)), &mut steps);
        assert!(matches!(steps[..], [Step::Failed(1, _), Step::DropRest(1)]), "{steps:?}");
        steps.clear();
        assert!(matches!(begin(&mut r, 1, 12, &mut steps), Begin::Skip));
        assert!(steps.is_empty(), "reported once: {steps:?}");
        r.dropped(1, 1, &mut steps);
        assert!(r.is_empty() && steps.is_empty(), "every chunk counted, nothing held: {steps:?}");
        r.released(1, None, &mut steps);
        r.opened(1, Ok(3), &mut steps);
        assert!(matches!(steps[..], [Step::Close(1, 3)]), "a late handle is closed: {steps:?}");
    }

    #[test]
    fn the_transport_s_failure_counts_unless_a_read_failed_first() {
        let mut r = R::new(CHUNK);
        let mut steps = Vec::new();
        let lost = |id| FileError {
            path: path(id),
            op: FileOp::Read,
            cause: Cause::Transport("the file ends inside a chunk being sent".into()),
        };
        open(&mut r, 1, 4);
        r.read(1, 1, Ok(()), &mut steps);
        r.released(1, Some(lost(1)), &mut steps);
        open(&mut r, 2, 8);
        r.read(2, 1, Err(io_error(2, FileOp::Read)), &mut steps);
        r.read(2, 1, Ok(()), &mut steps);
        r.released(2, Some(lost(2)), &mut steps);
        let v = verdicts(&steps);
        assert!(matches!(v[0].1, Err(FileError { cause: Cause::Transport(_), .. })), "{v:?}");
        assert!(matches!(v[1].1, Err(FileError { cause: Cause::Io(_), .. })), "{v:?}");
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn a_hold_released_before_the_reads_are_counted_waits_for_them() {
        let mut r = R::new(CHUNK);
        let mut steps = Vec::new();
        open(&mut r, 1, 20); // 5 chunks; a sparse run takes 4 at once
        r.released(1, None, &mut steps);
        assert!(steps.is_empty());
        assert_eq!(
            r.read(1, 1 + r.chunks(4, 20), Ok(()), &mut steps),
            Counted::Send { last: true }
        );
        assert!(matches!(steps[..], [Step::Close(1, 1), Step::Check(1)]), "{steps:?}");
    }

    #[test]
    fn files_held_open_are_bounded() {
        let mut r = R::with_limit(CHUNK, 1);
        let mut steps = Vec::new();
        open(&mut r, 1, 8);
        assert!(matches!(begin(&mut r, 2, 4, &mut steps), Begin::Skip));
        let Some((2, Err(e))) = verdicts(&steps).pop() else { panic!("{steps:?}") };
        assert_eq!((e.op, e.to_string().starts_with("cannot open: ")), (FileOp::Open, true));
        assert_eq!(r.len(), 1, "the refused file is forgotten once its chunk is counted");
        steps.clear();
        r.read(1, 2, Ok(()), &mut steps);
        assert_eq!(r.open_now(), 0);
        open(&mut r, 3, 4);
        assert_eq!(r.abandon(), vec![1]);
        assert!(r.is_empty() && r.open_now() == 0);
    }
}
