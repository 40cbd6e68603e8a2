//! Messages between the two halves of a transfer.
//!
//! A transfer has a *source* half (walks, reads, sends) and a *target* half (diffs, writes,
//! finalizes). In a local copy both run in one process and exchange these messages over
//! channels; in a remote transfer the control plane carries them. The data itself travels as
//! frames over a [`crate::transport`] and never in these messages.

use serde::{Deserialize, Serialize};

use crate::manifest::{Entry, FileId};
use crate::path::RelPath;

/// Default size of one chunk of a large file (a frame's payload). Chosen by measurement: see
/// docs/benchmarks.md.
pub const CHUNK_BYTES_DEFAULT: u32 = 4 << 20;
/// Files up to this size travel packed into bundles.
pub const SMALL_FILE_BYTES_DEFAULT: u32 = 256 << 10;
/// Target payload of one bundle.
pub const BUNDLE_BYTES_DEFAULT: u32 = 1 << 20;
/// Largest chunk any peer may ask for; bounds every buffer allocation a peer can cause.
pub const CHUNK_BYTES_MAX: u32 = 64 << 20;
/// Smallest chunk (one page, so chunks stay page aligned).
pub const CHUNK_BYTES_MIN: u32 = 4096;

const _: () = assert!(CHUNK_BYTES_DEFAULT.is_multiple_of(CHUNK_BYTES_MIN));
const _: () = assert!(SMALL_FILE_BYTES_DEFAULT <= BUNDLE_BYTES_DEFAULT);
const _: () = assert!(BUNDLE_BYTES_DEFAULT <= CHUNK_BYTES_DEFAULT);

/// How a file is judged up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Compare {
    /// Same size and same modification time (rsync's quick check).
    #[default]
    SizeMtime,
    /// Same content hash.
    Checksum,
}

/// How file data meets the disk (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum IoMode {
    /// Direct I/O for large files on local disk file systems (ext4, XFS, F2FS); the page cache
    /// for small files, sparse files and every other file system (tmpfs, network, FUSE, btrfs).
    #[default]
    Auto,
    /// Always through the page cache.
    Buffered,
    /// `O_DIRECT` for every chunked, non-sparse file whose file system accepts it.
    Direct,
}

/// Files from this size up use direct I/O under [`IoMode::Auto`]: below it the page cache's
/// write-behind is cheaper than waiting for the device.
pub const DIRECT_IO_AUTO_MIN_BYTES: u64 = 64 << 20;
/// Default and largest number of direct I/O requests one writer or reader keeps in flight.
pub const IO_DEPTH_DEFAULT: u32 = 4;
pub const IO_DEPTH_MAX: u32 = 64;

/// Parameters both halves agree on before any data moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    pub chunk_bytes: u32,
    pub small_file_bytes_max: u32,
    pub bundle_bytes: u32,
    pub compare: Compare,
    /// Delete target paths that the source lacks (after everything else succeeded).
    pub mirror: bool,
    pub dry_run: bool,
    /// What is transferred (and, in mirror mode, what is left alone on the target). Boxed:
    /// rarely set, and it would double the size of every message that carries the params.
    pub filter: Box<crate::filter::FilterParams>,
    /// Apply owner and group (only effective when the target runs as root).
    pub preserve_owner: bool,
    /// Make each file's data durable (`fsync`) before it is renamed into place, and the
    /// directories that received new names durable before the transfer reports success.
    pub fsync: bool,
    /// Direct or buffered file I/O, on both halves (the source's reads, the target's writes).
    pub io: IoMode,
    /// Direct I/O requests in flight per reader or writer thread (1..=`IO_DEPTH_MAX`).
    pub io_depth: u32,
    /// Memory to memory (`--mem`): the source sends one generated file of this many bytes
    /// instead of reading its root, and the target verifies every chunk and writes nothing.
    pub mem_bytes: Option<u64>,
    /// Resume interrupted files (unset by `--no-resume`): the target keeps a chunked file's
    /// partial temporary file with a journal of its written chunks when a transfer is
    /// interrupted, and the next transfer offers those chunks ([`Offer`]) instead of asking
    /// for them again. Unset, partial files are removed and every file starts over.
    pub resume: bool,
    /// Delta transfer (`--delta`): for a chunked file the target has an older copy of, the
    /// target sends the copy's block signature ([`TargetMsg::Signature`]) and the source sends
    /// each chunk as a recipe of copies from it and literal bytes where that is shorter.
    pub delta: bool,
    /// `--bwlimit`: the most bytes per second the sending half moves (frame headers and
    /// payloads), shared by all its streams; `None`: no limit. At least one chunk per
    /// [`crate::rate::FRAME_SECS_MAX`] s ([`crate::rate::check_rate`]).
    #[serde(default)]
    pub bwlimit_bytes_per_s: Option<u64>,
    /// `--remove-source-files` (a move): the target reports the files it committed or found
    /// up to date ([`TargetMsg::Committed`], after the source's `DataEnd`), and the source
    /// removes each of them that is still the file it listed. Never in a dry run.
    pub remove_source_files: bool,
    /// Carry extended attributes (`user.*`; `trusted.*`/`security.*` where the target may set
    /// them), unset by `--no-xattrs`.
    pub xattrs: bool,
    /// Carry POSIX ACLs (as their `system.posix_acl_*` attributes), unset by `--no-acls`.
    pub acls: bool,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            chunk_bytes: CHUNK_BYTES_DEFAULT,
            small_file_bytes_max: SMALL_FILE_BYTES_DEFAULT,
            bundle_bytes: BUNDLE_BYTES_DEFAULT,
            compare: Compare::SizeMtime,
            mirror: false,
            dry_run: false,
            filter: Box::default(),
            preserve_owner: true,
            fsync: false,
            io: IoMode::Auto,
            io_depth: IO_DEPTH_DEFAULT,
            mem_bytes: None,
            resume: true,
            delta: false,
            bwlimit_bytes_per_s: None,
            remove_source_files: false,
            xattrs: true,
            acls: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error(
        "chunk size {0} bytes is outside {CHUNK_BYTES_MIN}..={CHUNK_BYTES_MAX} or not a multiple of 4096"
    )]
    ChunkBytes(u32),
    #[error("small-file limit {small} bytes exceeds the bundle size {bundle} bytes")]
    SmallFile { small: u32, bundle: u32 },
    #[error("bundle size {bundle} bytes exceeds the chunk size {chunk} bytes")]
    Bundle { bundle: u32, chunk: u32 },
    #[error("I/O depth {0} is outside 1..={IO_DEPTH_MAX}")]
    IoDepth(u32),
    #[error(
        "a memory session moves one chunked file: {0} bytes is empty or within the small-file limit"
    )]
    MemBytes(u64),
    #[error(transparent)]
    BwLimit(#[from] crate::rate::RateError),
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterBoundError),
}

impl SessionParams {
    /// Checks the relationships every later stage relies on: a bundle fits in one chunk-sized
    /// buffer, a small file fits in a bundle, chunks are page multiples and bounded.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let chunk = self.chunk_bytes;
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk)
            || !chunk.is_multiple_of(CHUNK_BYTES_MIN)
        {
            return Err(ParamsError::ChunkBytes(chunk));
        }
        if self.bundle_bytes > chunk {
            return Err(ParamsError::Bundle { bundle: self.bundle_bytes, chunk });
        }
        if !(1..=IO_DEPTH_MAX).contains(&self.io_depth) {
            return Err(ParamsError::IoDepth(self.io_depth));
        }
        if let Some(n) = self.mem_bytes
            && (n == 0 || self.is_small(n))
        {
            return Err(ParamsError::MemBytes(n));
        }
        if let Some(rate) = self.bwlimit_bytes_per_s {
            crate::rate::check_rate(rate, chunk)?;
        }
        self.filter.validate()?;
        if self.small_file_bytes_max > self.bundle_bytes {
            return Err(ParamsError::SmallFile {
                small: self.small_file_bytes_max,
                bundle: self.bundle_bytes,
            });
        }
        Ok(())
    }

    /// True when the target reports what it committed ([`TargetMsg::Committed`]) and the
    /// source removes it: `--remove-source-files`, unless the session writes nothing.
    pub fn reports_commits(&self) -> bool {
        self.remove_source_files && !self.dry_run && self.mem_bytes.is_none()
    }

    /// True when a file of this size travels inside a bundle rather than as chunks.
    pub fn is_small(&self, size_bytes: u64) -> bool {
        size_bytes <= u64::from(self.small_file_bytes_max)
    }

    /// Number of frames a non-bundled file of `size_bytes` is split into (at least one).
    pub fn chunk_count(&self, size_bytes: u64) -> u64 {
        size_bytes.div_ceil(u64::from(self.chunk_bytes)).max(1)
    }
}

/// Chunks of one file an [`Offer`] may name (a 4 TiB file in 4 MiB chunks); a file with more
/// starts over. Bounds what a peer's offer makes the source hold.
pub const OFFER_CHUNKS_MAX: usize = 1 << 20;
/// Chunks all the offers of one [`TargetMsg::Need`] may name together (16 MiB on the wire);
/// the target offers nothing more in that answer.
pub const NEED_OFFERED_CHUNKS_MAX: usize = 1 << 20;

/// A resumed file: chunks the target's partial file already holds, each with its hash
/// ([`crate::frame::checksum`] of the chunk as the target reads it now). The source reads each
/// of them, and sends a [`crate::frame::FrameKind::Same`] frame for one whose hash it shares
/// and the chunk itself for one that differs; chunks not offered are sent as usual.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub id: FileId,
    /// (chunk index, hash), indexes strictly ascending.
    pub chunks: Vec<(u64, u64)>,
}

/// Source half → target half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceMsg {
    /// The source root itself (its metadata is applied to the target root). Always first.
    Root(Entry),
    /// One part of the listing of a source directory (large directories come in several
    /// parts; `last_part` marks the end). A directory's listing always comes after the part
    /// that contains the directory itself.
    /// `seq` numbers the listings of a session in the order sent (0, 1, …; the source half
    /// assigns it as it sends them), and the target's [`TargetMsg::Need`] names the one it
    /// answers.
    Listing { seq: u64, dir: RelPath, entries: Vec<Entry>, last_part: bool },
    /// A source directory that could not be read; the target must not delete anything under it.
    WalkError { path: RelPath, message: String },
    /// No more listings.
    ManifestEnd,
    /// A needed file could not be read (or changed while being read). The target discards
    /// whatever it received for it.
    FileFailed { id: FileId, path: RelPath, message: String },
    /// Every byte of a chunked file was read (by the source, or by the transport for a file
    /// region) and the file did not change while it was read: with all of its chunks
    /// verified, the target may commit it. Whatever form the payload took, this is the only
    /// way a chunked file becomes committable (bundles carry the same fact in their flag).
    FileRead { id: FileId },
    /// Every frame of every needed file has been handed to the transport.
    DataEnd,
}

impl SourceMsg {
    /// The variant's name (for tracing control traffic).
    pub fn kind(&self) -> &'static str {
        match self {
            SourceMsg::Root(_) => "root",
            SourceMsg::Listing { .. } => "listing",
            SourceMsg::WalkError { .. } => "walk-error",
            SourceMsg::ManifestEnd => "manifest-end",
            SourceMsg::FileFailed { .. } => "file-failed",
            SourceMsg::FileRead { .. } => "file-read",
            SourceMsg::DataEnd => "data-end",
        }
    }
}

/// Target half → source half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetMsg {
    /// These files of listing `listing` (its `seq`) must be sent; exactly one answer per
    /// listing, in order. `offers`: for some of them (at most one each), the chunks the
    /// target already holds from an interrupted transfer.
    Need { listing: u64, ids: Vec<FileId>, offers: Vec<Offer> },
    /// No more needs will follow (the target has diffed the whole manifest).
    NeedEnd,
    /// One part of the block signature of the target's old copy of file `id`
    /// (`blitx_delta::SignaturePart` encoded, at most [`SIGNATURE_MESSAGE_BYTES_MAX`]): every
    /// part of a file's signature comes before the `Need` that names the file, and a `Need`
    /// must name every file whose signature came since the last one.
    Signature { id: FileId, part: Vec<u8> },
    /// `--remove-source-files` only, after the source's `DataEnd`: these files of the source's
    /// listings are at the target (committed in this session, or found up to date), at most
    /// [`COMMITTED_IDS_MAX`] per message; `last` ends the list. The source removes each that
    /// is still the file it listed.
    Committed { ids: Vec<FileId>, last: bool },
}

/// File ids one [`TargetMsg::Committed`] may carry (512 KiB on the wire).
pub const COMMITTED_IDS_MAX: usize = 64 * 1024;

/// The largest signature message (64 Ki blocks of 12 bytes and a header).
pub const SIGNATURE_MESSAGE_BYTES_MAX: usize = (1 << 20) + 64;
/// Memory a source holds at most for signatures at once (of files not yet read): assembling,
/// twice their bytes on the wire; indexed, 64 bytes per block (five times the wire's 12). A
/// signature past it is declined (its file is sent whole); the index is also charged to the
/// session's memory budget.
pub const SIGNATURE_BYTES_HELD_MAX: u64 = 256 << 20;

impl TargetMsg {
    /// The variant's name (for tracing control traffic).
    pub fn kind(&self) -> &'static str {
        match self {
            TargetMsg::Need { .. } => "need",
            TargetMsg::NeedEnd => "need-end",
            TargetMsg::Signature { .. } => "signature",
            TargetMsg::Committed { .. } => "committed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_params_are_valid() {
        SessionParams::default().validate().unwrap();
    }

    #[test]
    fn invalid_params_are_refused() {
        let p = SessionParams { chunk_bytes: 1000, ..SessionParams::default() };
        assert_eq!(p.validate(), Err(ParamsError::ChunkBytes(1000)));
        let p = SessionParams { bundle_bytes: 8 << 20, ..SessionParams::default() };
        assert!(matches!(p.validate(), Err(ParamsError::Bundle { .. })));
    }

    #[test]
    fn a_bandwidth_limit_must_move_a_chunk_within_the_frame_time() {
        let with = |rate, chunk: u32| SessionParams {
            bwlimit_bytes_per_s: Some(rate),
            chunk_bytes: chunk,
            bundle_bytes: chunk.min(BUNDLE_BYTES_DEFAULT),
            small_file_bytes_max: 0,
            ..SessionParams::default()
        };
        assert!(with(0, 4 << 20).validate().is_err());
        assert!(matches!(with(100_000, 4 << 20).validate(), Err(ParamsError::BwLimit(_))));
        assert!(with(100_000, 256 << 10).validate().is_ok());
        assert!(with(u64::MAX, 64 << 20).validate().is_ok());
        assert!(SessionParams { bwlimit_bytes_per_s: None, ..with(1, 4096) }.validate().is_ok());
    }

    #[test]
    fn chunk_counts() {
        let p = SessionParams { chunk_bytes: 4096, ..SessionParams::default() };
        assert_eq!(p.chunk_count(0), 1);
        assert_eq!(p.chunk_count(4096), 1);
        assert_eq!(p.chunk_count(4097), 2);
    }

    #[test]
    fn io_depth_is_bounded() {
        for (depth, ok) in [(0, false), (1, true), (IO_DEPTH_MAX, true), (IO_DEPTH_MAX + 1, false)]
        {
            let p = SessionParams { io_depth: depth, ..SessionParams::default() };
            assert_eq!(p.validate().is_ok(), ok, "depth {depth}");
        }
    }
}
