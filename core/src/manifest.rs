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
    /// FIFOs, sockets and device nodes: which one is in [`Entry::special`].
    Special,
}

/// What a [`EntryKind::Special`] entry is (`rsync -D`): FIFOs and sockets are made by anyone,
/// device nodes only by a root target that allows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Special {
    Fifo,
    Socket,
    /// A character device and its `st_rdev`.
    Char {
        rdev: u64,
    },
    /// A block device and its `st_rdev`.
    Block {
        rdev: u64,
    },
}

impl Special {
    pub fn is_device(self) -> bool {
        matches!(self, Special::Char { .. } | Special::Block { .. })
    }

    /// The `S_IFMT` bits and the device number `mknod` takes.
    pub fn mknod_args(self) -> (u32, u64) {
        match self {
            Special::Fifo => (0o010000, 0),
            Special::Socket => (0o140000, 0),
            Special::Char { rdev } => (0o020000, rdev),
            Special::Block { rdev } => (0o060000, rdev),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Special::Fifo => "FIFO",
            Special::Socket => "socket",
            Special::Char { .. } => "character device",
            Special::Block { .. } => "block device",
        }
    }
}

/// One extended attribute (ACLs travel as `system.posix_acl_access`/`_default`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Linux's limits: a name of at most 255 bytes, a value of at most 64 KiB.
pub const XATTR_NAME_BYTES_MAX: usize = 255;
pub const XATTR_VALUE_BYTES_MAX: usize = 64 << 10;
/// Extended attributes of one entry: at most this many, of at most this many bytes (names
/// and values) together. ext4 fits one block's worth; XFS and tmpfs allow more, but a tree
/// with more per file is not what a copy tool meets (and a peer may not make a target hold it).
pub const XATTRS_PER_ENTRY_MAX: usize = 128;
pub const XATTR_ENTRY_BYTES_MAX: usize = 256 << 10;
/// The journal of a kept partial file and the mark of a temporary file (the target's own; never
/// copied, never taken from a peer: a forged mark would make a file look like crash debris).
pub const XATTR_RESUME_JOURNAL: &[u8] = b"user.blit.part";
pub const XATTR_TEMP_MARK: &[u8] = b"user.blit.tmp";
pub const XATTR_ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const XATTR_ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// The namespaces of extended attributes, for the decision of who may set which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrClass {
    /// `user.*`: anyone who may write the file (regular files and directories only).
    User,
    /// `trusted.*` and `security.*` (file capabilities!): root only.
    Privileged,
    /// `system.posix_acl_access` / `system.posix_acl_default`.
    Acl,
    /// Everything else (other `system.*`, blit's own journal, unknown namespaces): never copied.
    Other,
}

impl XattrClass {
    pub fn of(name: &[u8]) -> Self {
        if name == XATTR_RESUME_JOURNAL || name == XATTR_TEMP_MARK {
            XattrClass::Other
        } else if name.starts_with(b"user.") {
            XattrClass::User
        } else if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
            XattrClass::Privileged
        } else if name == XATTR_ACL_ACCESS || name == XATTR_ACL_DEFAULT {
            XattrClass::Acl
        } else {
            XattrClass::Other
        }
    }
}

/// Why a set of extended attributes is refused (a peer's listing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrError {
    #[error("more than {XATTRS_PER_ENTRY_MAX} extended attributes")]
    TooMany,
    #[error("extended attributes of more than {XATTR_ENTRY_BYTES_MAX} bytes together")]
    TooBig,
    #[error(
        "an extended attribute name that is empty, longer than {XATTR_NAME_BYTES_MAX} bytes or holds a NUL"
    )]
    BadName,
    #[error("an extended attribute value longer than {XATTR_VALUE_BYTES_MAX} bytes")]
    BadValue,
    #[error("extended attribute names not strictly ascending (a name twice?)")]
    Order,
}

/// Checks a set of extended attributes against the bounds above: names valid and strictly
/// ascending (one value per name), sizes within Linux's limits and the entry's budget.
pub fn check_xattrs(xattrs: &[Xattr]) -> Result<(), XattrError> {
    if xattrs.len() > XATTRS_PER_ENTRY_MAX {
        return Err(XattrError::TooMany);
    }
    let mut total = 0usize;
    for (i, x) in xattrs.iter().enumerate() {
        if x.name.is_empty() || x.name.len() > XATTR_NAME_BYTES_MAX || x.name.contains(&0) {
            return Err(XattrError::BadName);
        }
        if x.value.len() > XATTR_VALUE_BYTES_MAX {
            return Err(XattrError::BadValue);
        }
        if i > 0 && xattrs[i - 1].name >= x.name {
            return Err(XattrError::Order);
        }
        total += x.name.len() + x.value.len();
    }
    if total > XATTR_ENTRY_BYTES_MAX {
        return Err(XattrError::TooBig);
    }
    Ok(())
}

/// Bytes a set of extended attributes holds (what a target charges to its memory budget).
pub fn xattr_bytes(xattrs: &[Xattr]) -> u64 {
    xattrs.iter().map(|x| (x.name.len() + x.value.len() + 48) as u64).sum()
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
    /// Extended attributes (and ACLs as theirs), names strictly ascending; empty when the
    /// session carries none.
    pub xattrs: Vec<Xattr>,
    /// What a [`EntryKind::Special`] entry is; `None` for every other kind.
    pub special: Option<Special>,
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
            xattrs: Vec::new(),
            special: None,
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
    /// The path's extended attributes as the target would compare them with the source's
    /// (only the classes the session carries); `None` when not read.
    pub xattrs: Option<Vec<Xattr>>,
    pub special: Option<Special>,
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
            xattrs: None,
            special: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_classes_keep_blit_s_own_out() {
        assert_eq!(XattrClass::of(b"user.color"), XattrClass::User);
        assert_eq!(XattrClass::of(b"trusted.x"), XattrClass::Privileged);
        assert_eq!(XattrClass::of(b"security.capability"), XattrClass::Privileged);
        assert_eq!(XattrClass::of(b"system.posix_acl_default"), XattrClass::Acl);
        for own in [XATTR_RESUME_JOURNAL, XATTR_TEMP_MARK, b"system.nfs4_acl", b"usr.x"] {
            assert_eq!(XattrClass::of(own), XattrClass::Other);
        }
    }

    #[test]
    fn attribute_bounds() {
        let x = |n: &[u8], len: usize| Xattr { name: n.to_vec(), value: vec![0; len] };
        assert_eq!(check_xattrs(&[x(b"user.a", 0), x(b"user.b", XATTR_VALUE_BYTES_MAX)]), Ok(()));
        assert_eq!(check_xattrs(&[x(b"user.b", 0), x(b"user.a", 0)]), Err(XattrError::Order));
        assert_eq!(check_xattrs(&[x(b"user.a", 0), x(b"user.a", 0)]), Err(XattrError::Order));
        assert_eq!(check_xattrs(&[x(b"", 0)]), Err(XattrError::BadName));
        assert_eq!(check_xattrs(&[x(&[b'u'; 256], 0)]), Err(XattrError::BadName));
        assert_eq!(check_xattrs(&[x(b"user.a", 65537)]), Err(XattrError::BadValue));
        let many: Vec<Xattr> =
            (0..=XATTRS_PER_ENTRY_MAX).map(|i| x(format!("user.{i:04}").as_bytes(), 0)).collect();
        assert_eq!(check_xattrs(&many), Err(XattrError::TooMany));
        let big: Vec<Xattr> = (0..5).map(|i| x(format!("user.{i}").as_bytes(), 60_000)).collect();
        assert_eq!(check_xattrs(&big), Err(XattrError::TooBig));
    }
}
