//! Typed per-file failures and the session's protocol violations.
//!
//! A file's failure names the file, the operation that failed and its cause; the message a user
//! reads is the `Display` of that, and every decision (the exit code, whether a mirror's
//! deletions may run, which of two explanations wins) is made on the variants.

use std::fmt;
use std::sync::Arc;

use blitx_core::RelPath;
use blitx_core::manifest::FileId;

/// What was being done to a file when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// Creating its temporary file.
    Create,
    /// Writing its data.
    Write,
    /// Applying metadata and renaming it into place.
    Commit,
    /// Receiving its data (checksums, completeness).
    Receive,
    /// The source reading it (its account, relayed).
    SourceRead,
    /// Opening it to read it (source side).
    Open,
    /// Reading it (source side).
    Read,
    /// Looking at it again once every byte was read (source side: did it change?).
    ReadCheck,
    /// Opening a directory of the target.
    OpenDir,
    /// Looking at what the target holds under its name.
    Stat,
    /// Listing a target directory (for `--mirror`).
    ListDir,
    MakeDir,
    /// Applying metadata to an existing path.
    Metadata,
    /// Removing a file that stands where a directory must go (or the reverse).
    ClearFile,
    ClearDir,
    /// A non-empty directory stands where a file must go, and `--mirror` is off.
    ClearNonEmpty,
    Symlink,
    SymlinkMetadata,
    SymlinkRename,
    Hardlink,
    HardlinkRename,
    /// A `--mirror` deletion.
    Delete,
    DirMetadata,
    RootMetadata,
    /// `--fsync` of a directory that gained or lost names.
    SyncDir,
    /// Reading the target's old copy of a file to rebuild a chunk from its recipe (delta).
    ReadBasis,
    /// Making a FIFO, socket or device node (`mknod`) and renaming it into place.
    MakeSpecial,
}

impl FileOp {
    fn verb(self) -> &'static str {
        match self {
            FileOp::Create => "cannot create",
            FileOp::Write => "cannot write",
            FileOp::Commit => "cannot commit",
            FileOp::Receive => "not received",
            FileOp::SourceRead => "source",
            FileOp::Open => "cannot open",
            FileOp::Read => "read failed",
            FileOp::ReadCheck => "cannot stat after reading",
            FileOp::OpenDir => "cannot open target directory",
            FileOp::Stat => "cannot stat target",
            FileOp::ListDir => "cannot list target directory for --mirror",
            FileOp::MakeDir => "cannot create directory",
            FileOp::MakeSpecial => "cannot make special file",
            FileOp::Metadata => "cannot update metadata",
            FileOp::ClearFile => "cannot remove the file in the way",
            FileOp::ClearDir => "cannot remove the directory in the way",
            FileOp::ClearNonEmpty => {
                "a non-empty directory is in the way (use --mirror to replace it)"
            }
            FileOp::Symlink => "cannot create symlink",
            FileOp::SymlinkMetadata => "cannot set symlink metadata",
            FileOp::SymlinkRename => "cannot rename symlink into place",
            FileOp::Hardlink => "cannot link to its first name",
            FileOp::HardlinkRename => "cannot rename link into place",
            FileOp::Delete => "cannot delete",
            FileOp::DirMetadata => "cannot set directory metadata",
            FileOp::RootMetadata => "cannot set root metadata",
            FileOp::SyncDir => "cannot make the directory durable (fsync)",
            FileOp::ReadBasis => "cannot read the old copy to rebuild a chunk",
        }
    }
}

/// Why it failed.
#[derive(Debug, Clone)]
pub enum Cause {
    /// A system call failed (shared: the same failure may be logged and reported).
    Io(Arc<std::io::Error>),
    /// The source's own account (it could not read the file, or the file changed).
    Source(String),
    /// A chunk failed its checksum, and the source read the file unchanged: damaged on the way.
    CorruptedInTransit { offset_bytes: u64 },
    /// The data ended before every chunk of the file arrived.
    Incomplete,
    /// The file ended before its listed size while it was read (source side).
    Shrank,
    /// Once read, the file's size or modification time differs from its listing (source side).
    Changed { size_bytes_listed: u64, size_bytes_now: u64 },
    /// The transport's own account of a part of the file it could not send (a region that
    /// could not be read in full, a pool that closed).
    Transport(String),
    /// A hard link whose first name (`leader`) was not transferred: it is not made.
    LeaderFailed { leader: RelPath },
}

/// A file that was not transferred.
#[derive(Debug, Clone)]
pub struct FileError {
    pub path: RelPath,
    pub op: FileOp,
    pub cause: Cause,
}

impl FileError {
    pub fn io(path: RelPath, op: FileOp, e: impl Into<std::io::Error>) -> Self {
        FileError { path, op, cause: Cause::Io(Arc::new(e.into())) }
    }

    /// The source's account of `path` (a walk error, a file it could not read).
    pub fn source(path: RelPath, message: String) -> Self {
        FileError { path, op: FileOp::SourceRead, cause: Cause::Source(message) }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Io(e) => write!(f, "{}: {e}", self.op.verb()),
            Cause::Source(m) => write!(f, "source: {m}"),
            Cause::CorruptedInTransit { offset_bytes } => {
                write!(f, "the chunk at {offset_bytes} failed its checksum: corrupted in transit")
            }
            Cause::Incomplete => f.write_str("incomplete: not all of its data arrived"),
            Cause::Shrank => f.write_str("file shrank while being read; not copied, run again"),
            Cause::Changed { size_bytes_listed, size_bytes_now } => write!(
                f,
                "changed while being read (size {size_bytes_listed} -> {size_bytes_now}); \
                 not copied, run again"
            ),
            Cause::Transport(m) => f.write_str(m),
            Cause::LeaderFailed { leader } => {
                write!(f, "{}: {leader}, its first name, was not transferred", self.op.verb())
            }
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Io(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// Something the peer sent that no correct peer sends: the session ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// `--remove-source-files`' report before the session's data ended, or in a session
    /// that did not ask for it.
    #[error("a report of committed files before the end of the data, or unasked for")]
    CommittedEarly,
    #[error("data for file {0}, which was not needed")]
    NotNeeded(FileId),
    #[error("file id {id} of {path} was already used by another file")]
    DuplicateId { id: FileId, path: RelPath },
    #[error("bad chunk for {path}: offset {offset_bytes} length {len_bytes}")]
    BadChunk { path: RelPath, offset_bytes: u64, len_bytes: u64 },
    #[error("chunks at {offset_bytes} (+{chunks}) of {path} sent twice or past its end")]
    ChunkTwice { path: RelPath, offset_bytes: u64, chunks: u64 },
    #[error("a hole frame in a memory session")]
    HoleInMemorySession,
    #[error("a hole frame for {0}, which was not listed as sparse")]
    HoleInDenseFile(RelPath),
    #[error("bundle carries {len_bytes} bytes for {path}, expected {size_bytes}")]
    BundleSize { path: RelPath, len_bytes: u64, size_bytes: u64 },
    #[error("file {0} sent twice")]
    FileTwice(RelPath),
    #[error("a need answer for no listing")]
    AnswerForNoListing,
    #[error("the target ended its needs with {unanswered} listings unanswered or more to come")]
    NeedEndEarly { unanswered: u64 },
    #[error("answer to listing {answered} arrived while listing {expected} was unanswered")]
    AnswerOutOfOrder { answered: u64, expected: u64 },
    #[error("need for file {0}, which is not a file of that listing")]
    NeedNotListed(FileId),
    #[error("a bundle in a memory session")]
    BundleInMemorySession,
    #[error("{0} is bundled: a memory session moves chunked files only")]
    SmallInMemorySession(RelPath),
    #[error("{0} is sparse: a memory session moves generated data, no holes")]
    SparseInMemorySession(RelPath),
    #[error("bundle without a buffer payload")]
    BundleNotBuffered,
    #[error("bundle length differs from its header")]
    BundleLength,
    #[error("bad bundle: {0}")]
    Bundle(#[from] blitx_core::frame::FrameError),
    #[error("file data for the root")]
    DataForRoot,
    #[error("an offer for file {0}, which that answer does not need, or a second offer for it")]
    OfferNotNeeded(FileId),
    #[error("an offer for {path}: {why}")]
    BadOffer { path: RelPath, why: &'static str },
    #[error("the answer offers more chunks than the limit of {limit}")]
    OfferTooLarge { limit: usize },
    #[error(
        "a same-chunk frame for {path} at {offset_bytes}, which was not offered with that hash"
    )]
    NotOffered { path: RelPath, offset_bytes: u64 },
    #[error("an unchecked chunk of {0}, a resumed file (its chunks must carry checksums)")]
    UncheckedResumed(RelPath),
    #[error("a recipe chunk for {0}, whose basis this side did not offer")]
    NotDelta(RelPath),
    #[error("a bad recipe for {path} at {offset_bytes}: {why}")]
    BadRecipe { path: RelPath, offset_bytes: u64, why: String },
    #[error("a signature for file {0}, which the answer that followed did not need")]
    SignatureNotNeeded(FileId),
    #[error("a bad signature for file {id}: {why}")]
    BadSignature { id: FileId, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_operation_and_keep_the_cause() {
        let p = RelPath::parse(b"a/b").unwrap();
        let e = FileError::io(p.clone(), FileOp::Create, std::io::Error::from_raw_os_error(28));
        assert!(e.to_string().starts_with("cannot create: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        let c = FileError {
            path: p,
            op: FileOp::Receive,
            cause: Cause::CorruptedInTransit { offset_bytes: 8 },
        };
        assert_eq!(c.to_string(), "the chunk at 8 failed its checksum: corrupted in transit");
    }
}
