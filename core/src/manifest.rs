//! Manifest entries: what the source side knows about each path it walked.

use serde::{Deserialize, Serialize};

use crate::path::RelPath;

/// Identifies one source entry within a session. Assigned by the source walker, unique and
/// never reused within a session; frames and need lists refer to files by it.
pub type FileId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// FIFOs, sockets and device nodes: listed so they can be reported, never copied.
    Special,
}

/// Modification time as seconds and nanoseconds since the epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// Device and inode of a file with more than one link, so hard links can be recreated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

/// One walked path and its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: FileId,
    pub path: RelPath,
    pub kind: EntryKind,
    pub size_bytes: u64,
    pub mtime: Timestamp,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Symlink target bytes, verbatim.
    pub link_target: Option<Vec<u8>>,
    /// Set for regular files whose link count is above one.
    pub inode: Option<InodeKey>,
    /// The file allocates fewer blocks than its size: it has holes worth preserving.
    pub sparse: bool,
    /// Content hash (xxh3-128), present only in `--checksum` sessions.
    pub content_hash: Option<u128>,
}

impl Entry {
    /// An entry with no metadata to speak of (size 0, mtime 0, mode 0, owner 0, no link, no
    /// inode, not sparse, no hash): what generators and tests start from, setting the fields
    /// they care about with `..Entry::new(id, path, kind)`.
    pub fn new(id: FileId, path: RelPath, kind: EntryKind) -> Self {
        Entry {
            id,
            path,
            kind,
            size_bytes: 0,
            mtime: Timestamp::default(),
            mode: 0,
            uid: 0,
            gid: 0,
            link_target: None,
            inode: None,
            sparse: false,
            content_hash: None,
        }
    }

    pub fn is_file(&self) -> bool {
        self.kind == EntryKind::File
    }
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// What the target side knows about an existing path (the counterpart of [`Entry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEntry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub size_bytes: u64,
    pub mtime: Timestamp,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub link_target: Option<Vec<u8>>,
    pub inode: Option<InodeKey>,
    pub content_hash: Option<u128>,
}

impl TargetEntry {
    /// The target-side counterpart of [`Entry::new`].
    pub fn new(name: Vec<u8>, kind: EntryKind) -> Self {
        TargetEntry {
            name,
            kind,
            size_bytes: 0,
            mtime: Timestamp::default(),
            mode: 0,
            uid: 0,
            gid: 0,
            link_target: None,
            inode: None,
            content_hash: None,
        }
    }
}

/// Hasher for maps keyed by [`FileId`]: ids are small unique integers chosen by our own walker
/// (a peer choosing them adversarially only slows its own session), so one
/// multiplication spreads them well; SipHash would cost more than the lookup.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by file id.
pub type IdMap<V> = std::collections::HashMap<FileId, V, std::hash::BuildHasherDefault<IdHasher>>;
