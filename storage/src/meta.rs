//! Applying metadata: owner (first — chown clears setuid bits), mode, then times.
//!
//! Metadata is only ever applied through a descriptor: either the open file this process just
//! wrote, or a path pinned with `O_PATH | O_NOFOLLOW` and checked to be of the expected kind.
//! A name that was swapped for a symlink (by a peer's listing or by a local user) between the
//! check and the change therefore never redirects a chmod, chown or utimens to another file.
//! Which owner and mode bits a peer may ask for is the operator's decision ([`Privileges`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use std::sync::Arc;

use crate::fsys::{self, os};
use crate::limits::Held;
use crate::xattr::{self, On, XattrSel};
use blitx_core::manifest::{Entry, EntryKind, Timestamp, Xattr, XattrClass};
use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT, Uid};

/// The metadata a target path ends up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// The attributes it gets (names ascending; charged to the session's budget while held) ...
    pub xattrs: Option<Arc<Held<Vec<Xattr>>>>,
    /// ... in these classes: others it has are left alone, these it lacks are removed.
    pub xattr_sel: XattrSel,
}

impl Meta {
    /// The attributes to set.
    pub fn xattrs(&self) -> &[Xattr] {
        self.xattrs.as_deref().map_or(&[], |h| &h.value)
    }

    /// `xattr_sel`: the classes the target half carries (see [`Privileges::xattr_sel`]); the
    /// attributes themselves are added by the caller, which charges them ([`Limits::hold`]).
    pub fn of(entry: &Entry, xattr_sel: XattrSel) -> Self {
        Meta {
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            xattrs: None,
            // Linux keeps no attributes of ours on symlinks (user.* is refused there).
            xattr_sel: if entry.kind == EntryKind::Symlink {
                XattrSel::default()
            } else {
                xattr_sel
            },
        }
    }
}

/// setuid and setgid: the bits that turn a file into a privilege.
pub const SETID_BITS: u32 = 0o6000;

/// What a target half may do on a peer's behalf. A local copy does what `cp -a` would; a root
/// daemon by default gives everything a client creates to the export root's owner and strips
/// setuid/setgid, so a client cannot create a root-owned or setuid file unless the operator
/// said so (`--allow-owners`, `--allow-setid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// Apply the source's owner and group (only as root, and only when the session asks).
    pub take_owners: bool,
    /// Keep setuid/setgid bits on files.
    pub keep_setid: bool,
    /// Owner and group of what this half creates when owners are not taken; `None`: this
    /// process's own.
    pub owner: Option<(u32, u32)>,
    /// Set `trusted.*` and `security.*` attributes (`security.capability` makes a file
    /// privileged), when this process is root.
    pub xattrs_privileged: bool,
    /// Make device nodes (`mknod`), when this process is root.
    pub devices: bool,
}

impl Privileges {
    /// Local copies and pulls: the user's own transfer, with the user's own rights.
    pub fn local() -> Self {
        Privileges {
            take_owners: true,
            keep_setid: true,
            owner: None,
            xattrs_privileged: true,
            devices: true,
        }
    }

    /// The attribute classes this half sets in a session with `params`.
    pub fn xattr_sel(&self, id: &Identity, xattrs: bool, acls: bool) -> XattrSel {
        XattrSel { user: xattrs, privileged: xattrs && self.xattrs_privileged && id.root, acls }
    }

    /// Device nodes can be made: allowed, and this process may (`CAP_MKNOD`: root).
    pub fn makes_devices(&self, id: &Identity) -> bool {
        self.devices && id.root
    }

    /// Drops the attributes of `entry` this half will not set (classes outside `sel`, blit's
    /// own journal, `user.*` where Linux refuses it: on symlinks and special files). Returns
    /// how many were dropped (the summary reports them).
    pub fn restrict_xattrs(entry: &mut Entry, sel: XattrSel) -> u64 {
        if entry.xattrs.is_empty() {
            return 0;
        }
        let before = entry.xattrs.len();
        let kind = entry.kind;
        entry.xattrs.retain(|x| {
            sel.wants(&x.name)
                && kind != EntryKind::Symlink
                && !(kind == EntryKind::Special && XattrClass::of(&x.name) == XattrClass::User)
        });
        (before - entry.xattrs.len()) as u64
    }

    /// Rewrites a peer's entry to what this side will actually apply. Called on every entry at
    /// the edge, before the diff, so "up to date" is judged on the same values that are set.
    pub fn restrict(&self, entry: &mut Entry, id: &Identity, preserve_owner: bool) {
        if !self.keep_setid && entry.kind != EntryKind::Dir {
            entry.mode &= !SETID_BITS;
        }
        if !(self.take_owners && preserve_owner) {
            let (uid, gid) = self.owner.unwrap_or((id.euid, id.egid));
            entry.uid = uid;
            entry.gid = gid;
        }
    }

    /// Whether owners are applied at all (taken from the source, or the configured owner).
    pub fn applies_owners(&self, preserve_owner: bool) -> bool {
        (self.take_owners && preserve_owner) || self.owner.is_some()
    }
}

/// Process-wide facts that decide which metadata calls are needed.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Effective uid is 0: owners can be set.
    pub root: bool,
    pub euid: u32,
    pub egid: u32,
    /// The umask in force when files are created.
    pub umask: u32,
}

impl Identity {
    pub fn current() -> Self {
        // umask can only be read by setting it; put it straight back.
        let umask = rustix::process::umask(Mode::from_raw_mode(0o022));
        rustix::process::umask(umask);
        let euid = rustix::process::geteuid().as_raw();
        Identity {
            root: euid == 0,
            euid,
            egid: rustix::process::getegid().as_raw(),
            umask: umask.bits(),
        }
    }

    /// True when a file created with `mode` still needs a chmod afterwards.
    pub fn chmod_needed(&self, mode: u32) -> bool {
        mode & self.umask != 0 || mode & 0o7000 != 0
    }

    /// True when an owner change is wanted and possible.
    pub fn chown_needed(&self, owners: bool, meta: &Meta) -> bool {
        owners && self.root && (meta.uid != self.euid || meta.gid != self.egid)
    }
}

/// Makes the attributes equal to `meta`'s; an owner that is not root and whose file is not
/// writable (a read-only file or directory kept in place) gets write permission for as long as
/// it takes (`chmod` sets the real mode afterwards). Returns whether an ACL changed.
fn sync_xattrs(
    on: On<'_>,
    meta: &Meta,
    id: &Identity,
    chmod: impl Fn(u32) -> io::Result<()>,
) -> io::Result<bool> {
    match xattr::sync(on, meta.xattrs(), meta.xattr_sel) {
        Err(e) if e.is_access_denied() && !id.root => {
            chmod(meta.mode | 0o200)?;
            xattr::sync(on, meta.xattrs(), meta.xattr_sel)?;
            Ok(true)
        }
        other => Ok(other?),
    }
}

fn times(mtime: Timestamp) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: mtime.sec, tv_nsec: i64::from(mtime.nsec) },
    }
}

/// Applies metadata to an open file or directory this process holds (a file it just wrote, the
/// transfer root). `owners`: whether owners are applied (see [`Privileges::applies_owners`]).
pub fn apply_to_fd(fd: BorrowedFd<'_>, meta: &Meta, id: &Identity, owners: bool) -> io::Result<()> {
    let chown = id.chown_needed(owners, meta);
    if chown {
        rustix::fs::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))?;
    }
    // After the chown (which clears security.capability), before the chmod (user.* needs a
    // writable mode of a process that is not root).
    let chmod = |mode| Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?);
    let acl = sync_xattrs(On::Fd(fd), meta, id, chmod)?;
    if id.chmod_needed(meta.mode) || chown || acl {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    }
    rustix::fs::futimens(fd, &times(meta.mtime))?;
    Ok(())
}

/// Applies metadata to a regular file this process just created and wrote.
pub fn apply_to_new_file(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    id: &Identity,
    owners: bool,
) -> io::Result<()> {
    apply_to_fd(fd, meta, id, owners)
}

/// A path in a directory, opened without following it (`O_PATH | O_NOFOLLOW`) and checked to
/// be of the kind the caller expects: every later change lands on exactly this inode.
#[derive(Debug)]
pub struct Pinned {
    fd: OwnedFd,
}

/// Why a path could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot open without following: {0}")]
    Open(#[source] io::Error),
    #[error("is now a {found}, not a {expected} (changed since it was checked; left alone)")]
    Kind { expected: &'static str, found: &'static str },
}

impl From<PinError> for io::Error {
    fn from(e: PinError) -> Self {
        match e {
            PinError::Open(e) => e,
            kind @ PinError::Kind { .. } => io::Error::other(kind),
        }
    }
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Special => "special file",
    }
}

impl Pinned {
    pub fn at(dir: BorrowedFd<'_>, name: &[u8], kind: EntryKind) -> Result<Self, PinError> {
        let fd = rustix::fs::openat(
            dir,
            os(name),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| PinError::Open(e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| PinError::Open(e.into()))?;
        let found = fsys::kind_of(st.st_mode);
        if found != kind {
            return Err(PinError::Kind { expected: kind_name(kind), found: kind_name(found) });
        }
        Ok(Pinned { fd })
    }

    /// The pinned inode as a path the kernel resolves to exactly it (`/proc/self/fd/N`), for
    /// the one call that has no descriptor form on an `O_PATH` handle (chmod).
    fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    /// Applies metadata; symlinks get owner and times only (Linux has no symlink modes).
    pub fn apply(
        &self,
        kind: EntryKind,
        meta: &Meta,
        id: &Identity,
        owners: bool,
    ) -> io::Result<()> {
        let fd = self.fd.as_fd();
        // An existing path may belong to anyone: with owners, a root process always sets them.
        if owners && id.root {
            rustix::fs::chownat(
                fd,
                "",
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::EMPTY_PATH,
            )?;
        }
        if kind != EntryKind::Symlink {
            let path = self.proc_path();
            let chmod = |mode| {
                let mode = Mode::from_raw_mode(mode);
                Ok(rustix::fs::chmodat(rustix::fs::CWD, path.as_str(), mode, AtFlags::empty())?)
            };
            sync_xattrs(On::Pinned(fd), meta, id, chmod)?;
        }
        if kind != EntryKind::Symlink {
            rustix::fs::chmodat(
                rustix::fs::CWD,
                self.proc_path().as_str(),
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )?;
        }
        match rustix::fs::utimensat(fd, "", &times(meta.mtime), AtFlags::EMPTY_PATH) {
            Ok(()) => Ok(()),
            // Kernels before AT_EMPTY_PATH support in utimensat: the magic link names the same
            // inode (for a symlink it is the link itself, never its target).
            Err(rustix::io::Errno::INVAL) => Ok(rustix::fs::utimensat(
                rustix::fs::CWD,
                self.proc_path().as_str(),
                &times(meta.mtime),
                AtFlags::empty(),
            )?),
            Err(e) => Err(e.into()),
        }
    }
}

/// Applies metadata to the directory `name` in `dir` through a descriptor opened
/// `O_DIRECTORY | O_NOFOLLOW` (the kernel refuses a symlink or a non-directory swapped in);
/// a directory this user cannot open for reading is pinned with `O_PATH` instead.
pub fn apply_to_dir(
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    id: &Identity,
    owners: bool,
) -> io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, os(name), flags, Mode::empty()) {
        Ok(fd) => fd,
        // Not readable by this user, or not a directory any more: the pinned path decides
        // (and names what is there now).
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            return apply_at(dir, name, EntryKind::Dir, meta, id, owners);
        }
        Err(e) => return Err(e.into()),
    };
    apply_to_dir_fd(fd.as_fd(), meta, id, owners)
}

/// Applies metadata to an open directory (one opened above, or the transfer root): it may
/// belong to anyone, so with owners a root process always sets them; mode and times always.
pub fn apply_to_dir_fd(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    id: &Identity,
    owners: bool,
) -> io::Result<()> {
    if owners && id.root {
        rustix::fs::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))?;
    }
    let chmod = |mode| Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?);
    sync_xattrs(On::Fd(fd), meta, id, chmod)?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    rustix::fs::futimens(fd, &times(meta.mtime))?;
    Ok(())
}

/// Applies metadata to `name` in `dir`, which must still be of `kind` (never following a
/// final symlink, never touching anything a swapped-in symlink points to).
pub fn apply_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    kind: EntryKind,
    meta: &Meta,
    id: &Identity,
    owners: bool,
) -> io::Result<()> {
    Pinned::at(dir, name, kind)?.apply(kind, meta, id, owners)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn meta(mode: u32) -> Meta {
        let id = Identity::current();
        Meta {
            mode,
            uid: id.euid,
            gid: id.egid,
            mtime: Timestamp { sec: 1_000_000, nsec: 5 },
            xattrs: None,
            xattr_sel: XattrSel::default(),
        }
    }

    /// Row 1 of the hardening review: chmodat(dir, name) followed a symlink swapped in for a
    /// directory, so a directory's mode (06777 from a peer) landed on any file of the host.
    #[test]
    fn directory_meta_never_follows_a_swapped_in_symlink() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let export = t.path().join("export");
        std::fs::create_dir(&export).unwrap();
        // The listing said "directory y"; by finalization y is a symlink to the victim.
        std::os::unix::fs::symlink(&victim, export.join("y")).unwrap();
        let dir =
            rustix::fs::open(&export, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let id = Identity::current();
        let err =
            apply_at(dir.as_fd(), b"y", EntryKind::Dir, &meta(0o6777), &id, true).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let err = apply_to_dir(dir.as_fd(), b"y", &meta(0o6777), &id, true).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let m = std::fs::metadata(&victim).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_ne!(m.mtime(), 1_000_000);
    }

    #[test]
    fn pinned_paths_get_mode_and_times() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("nowhere", t.path().join("l")).unwrap();
        let dir =
            rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let id = Identity::current();
        apply_at(dir.as_fd(), b"d", EntryKind::Dir, &meta(0o705), &id, false).unwrap();
        apply_to_dir(dir.as_fd(), b"d", &meta(0o751), &id, false).unwrap();
        apply_at(dir.as_fd(), b"f", EntryKind::File, &meta(0o640), &id, false).unwrap();
        apply_at(dir.as_fd(), b"l", EntryKind::Symlink, &meta(0o777), &id, false).unwrap();
        let d = std::fs::metadata(t.path().join("d")).unwrap();
        assert_eq!((d.mode() & 0o7777, d.mtime()), (0o751, 1_000_000));
        let f = std::fs::metadata(t.path().join("f")).unwrap();
        assert_eq!((f.mode() & 0o7777, f.mtime(), f.mtime_nsec()), (0o640, 1_000_000, 5));
        let l = std::fs::symlink_metadata(t.path().join("l")).unwrap();
        assert_eq!(l.mtime(), 1_000_000);
        // A file where a directory was expected is refused, not changed.
        assert!(apply_at(dir.as_fd(), b"f", EntryKind::Dir, &meta(0o700), &id, false).is_err());
        assert_eq!(std::fs::metadata(t.path().join("f")).unwrap().mode() & 0o7777, 0o640);
    }

    #[test]
    fn restrict_strips_setid_and_owners_unless_allowed() {
        let id = Identity { root: true, euid: 0, egid: 0, umask: 0o022 };
        let mut e = Entry {
            id: 1,
            path: blitx_core::RelPath::parse_str("s").unwrap(),
            kind: EntryKind::File,
            size_bytes: 5,
            mtime: Timestamp::default(),
            mode: 0o4755,
            uid: 0,
            gid: 0,
            link_target: None,
            inode: None,
            sparse: false,
            content_hash: None,
            xattrs: Vec::new(),
            special: None,
        };
        let daemon = Privileges {
            take_owners: false,
            keep_setid: false,
            owner: Some((7, 8)),
            xattrs_privileged: false,
            devices: false,
        };
        let mut d = e.clone();
        daemon.restrict(&mut d, &id, true);
        assert_eq!((d.mode, d.uid, d.gid), (0o755, 7, 8));
        assert!(daemon.applies_owners(true));
        Privileges::local().restrict(&mut e, &id, true);
        assert_eq!((e.mode, e.uid, e.gid), (0o4755, 0, 0));
    }
}
