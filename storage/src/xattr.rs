//! Extended attributes and POSIX ACLs (carried as their `system.posix_acl_*` attributes): read
//! on the source side, made equal on the target side — always through a descriptor, or through
//! the `/proc/self/fd/N` magic link of a descriptor (which names exactly that inode).
//!
//! Cost: a path with no attributes costs one `listxattr` on either side; each attribute one
//! more call. Symlinks are never read or written (Linux refuses `user.*` on them).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;

use blitx_core::manifest::{
    XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX, Xattr, XattrClass, XattrError, check_xattrs,
};
use rustix::fs::XattrFlags;
use rustix::io::Errno;

/// Which classes of attributes a session carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XattrSel {
    pub user: bool,
    /// `trusted.*` and `security.*`.
    pub privileged: bool,
    pub acls: bool,
}

impl XattrSel {
    pub fn any(self) -> bool {
        self.user || self.privileged || self.acls
    }

    pub fn wants(self, name: &[u8]) -> bool {
        match XattrClass::of(name) {
            XattrClass::User => self.user,
            XattrClass::Privileged => self.privileged,
            XattrClass::Acl => self.acls,
            XattrClass::Other => false,
        }
    }
}

/// Attributes a target never removes even when the source lacks them: the kernel's own label,
/// set on every file created where SELinux runs.
fn kept_on_target(name: &[u8]) -> bool {
    name == b"security.selinux"
}

/// Where attributes are read or set.
#[derive(Clone, Copy)]
pub enum On<'a> {
    /// An open file or directory (not `O_PATH`).
    Fd(BorrowedFd<'a>),
    /// `name` in the directory `dir`, never following a final symlink (`l*xattr` on
    /// `/proc/self/fd/DIR/NAME`): for the source's walk and the target's compare.
    At(BorrowedFd<'a>, &'a [u8]),
    /// An `O_PATH` descriptor (a pinned path): the magic link is followed to exactly its inode.
    Pinned(BorrowedFd<'a>),
}

#[derive(Debug, thiserror::Error)]
pub enum XattrIoError {
    #[error("cannot list extended attributes: {0}")]
    List(#[source] io::Error),
    #[error("cannot read extended attribute {name}: {source}")]
    Read { name: String, source: io::Error },
    #[error("cannot set extended attribute {name}: {source}")]
    Set { name: String, source: io::Error },
    #[error("cannot remove extended attribute {name}: {source}")]
    Remove { name: String, source: io::Error },
    #[error("extended attributes beyond the limits: {0}")]
    Bounds(#[from] XattrError),
}

impl XattrIoError {
    /// Setting `user.*` needs write permission on the inode (not only a writable descriptor).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, XattrIoError::Set { source, .. } | XattrIoError::Remove { source, .. }
            if source.raw_os_error() == Some(Errno::ACCESS.raw_os_error()))
    }
}

impl From<XattrIoError> for io::Error {
    fn from(e: XattrIoError) -> Self {
        io::Error::other(e)
    }
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn proc_path(fd: BorrowedFd<'_>, name: Option<&[u8]>) -> OsString {
    let mut p = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(n) = name {
        p.push(b'/');
        p.extend_from_slice(n);
    }
    OsString::from_vec(p)
}

/// File systems without extended attributes answer "not supported": nothing to read.
fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

impl On<'_> {
    fn list(self, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            On::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            On::At(dir, name) => {
                rustix::fs::llistxattr(proc_path(dir, Some(name)).as_os_str(), buf)
            }
            On::Pinned(fd) => rustix::fs::listxattr(proc_path(fd, None).as_os_str(), buf),
        }
    }

    fn get(self, attr: &[u8], buf: &mut [u8]) -> Result<usize, Errno> {
        let attr = crate::fsys::os(attr);
        match self {
            On::Fd(fd) => rustix::fs::fgetxattr(fd, attr, buf),
            On::At(dir, name) => {
                rustix::fs::lgetxattr(proc_path(dir, Some(name)).as_os_str(), attr, buf)
            }
            On::Pinned(fd) => rustix::fs::getxattr(proc_path(fd, None).as_os_str(), attr, buf),
        }
    }

    fn set(self, attr: &[u8], value: &[u8]) -> Result<(), Errno> {
        let attr = crate::fsys::os(attr);
        let f = XattrFlags::empty();
        match self {
            On::Fd(fd) => rustix::fs::fsetxattr(fd, attr, value, f),
            On::At(dir, name) => {
                rustix::fs::lsetxattr(proc_path(dir, Some(name)).as_os_str(), attr, value, f)
            }
            On::Pinned(fd) => rustix::fs::setxattr(proc_path(fd, None).as_os_str(), attr, value, f),
        }
    }

    fn remove(self, attr: &[u8]) -> Result<(), Errno> {
        let attr = crate::fsys::os(attr);
        match self {
            On::Fd(fd) => rustix::fs::fremovexattr(fd, attr),
            On::At(dir, name) => {
                rustix::fs::lremovexattr(proc_path(dir, Some(name)).as_os_str(), attr)
            }
            On::Pinned(fd) => rustix::fs::removexattr(proc_path(fd, None).as_os_str(), attr),
        }
    }

    /// Every attribute name (bounded: a listing is at most 64 KiB on Linux).
    fn names(self) -> Result<Vec<Vec<u8>>, XattrIoError> {
        let mut small = [0u8; 1024];
        let list = match self.list(&mut small) {
            Ok(n) => small[..n].to_vec(),
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(Errno::RANGE) => {
                let mut big = vec![0u8; 64 << 10];
                let n = self.list(&mut big).map_err(|e| XattrIoError::List(e.into()))?;
                big.truncate(n);
                big
            }
            Err(e) => return Err(XattrIoError::List(e.into())),
        };
        Ok(list.split(|&b| b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect())
    }
}

/// Reads the attributes `sel` wants, names ascending, within the bounds of
/// [`check_xattrs`]. An attribute that vanished between the listing and the read is left out.
pub fn read(on: On<'_>, sel: XattrSel) -> Result<Vec<Xattr>, XattrIoError> {
    if !sel.any() {
        return Ok(Vec::new());
    }
    let mut names: Vec<Vec<u8>> = on.names()?.into_iter().filter(|n| sel.wants(n)).collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    names.sort_unstable();
    names.dedup();
    let mut buf = vec![0u8; XATTR_VALUE_BYTES_MAX];
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if name.len() > XATTR_NAME_BYTES_MAX {
            return Err(XattrError::BadName.into());
        }
        match on.get(&name, &mut buf) {
            Ok(n) => out.push(Xattr { name, value: buf[..n].to_vec() }),
            Err(Errno::NODATA) => {}
            Err(e) => return Err(XattrIoError::Read { name: lossy(&name), source: e.into() }),
        }
    }
    check_xattrs(&out)?;
    Ok(out)
}

/// Makes the attributes of `on` in the classes of `sel` equal to `want` (names ascending):
/// those `want` lacks are removed, the others set. Attributes outside `sel` are left alone.
/// Returns whether an ACL was set or removed (which changes the mode: the caller's chmod must
/// follow).
pub fn sync(on: On<'_>, want: &[Xattr], sel: XattrSel) -> Result<bool, XattrIoError> {
    if !sel.any() {
        return Ok(false);
    }
    let mut acl = false;
    for name in on.names()? {
        if !sel.wants(&name)
            || kept_on_target(&name)
            || want.binary_search_by(|x| x.name.as_slice().cmp(&name)).is_ok()
        {
            continue;
        }
        acl |= XattrClass::of(&name) == XattrClass::Acl;
        match on.remove(&name) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(XattrIoError::Remove { name: lossy(&name), source: e.into() }),
        }
    }
    for x in want {
        acl |= XattrClass::of(&x.name) == XattrClass::Acl;
        if let Err(e) = on.set(&x.name, &x.value) {
            return Err(XattrIoError::Set { name: lossy(&x.name), source: e.into() });
        }
    }
    Ok(acl)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsFd;

    const ALL: XattrSel = XattrSel { user: true, privileged: true, acls: true };

    fn x(name: &str, value: &str) -> Xattr {
        Xattr { name: name.as_bytes().to_vec(), value: value.as_bytes().to_vec() }
    }

    #[test]
    fn read_and_sync_through_every_kind_of_handle() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let dir =
            rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let at = On::At(dir.as_fd(), b"f");
        if at.set(b"user.probe", b"1").is_err() {
            eprintln!("skipped: {} has no user extended attributes", t.path().display());
            return;
        }
        sync(at, &[x("user.a", "1"), x("user.b", "2")], ALL).unwrap();
        assert_eq!(read(at, ALL).unwrap(), vec![x("user.a", "1"), x("user.b", "2")]);
        let file = std::fs::OpenOptions::new().write(true).open(t.path().join("f")).unwrap();
        sync(On::Fd(file.as_fd()), &[x("user.b", "3")], ALL).unwrap();
        assert_eq!(read(at, ALL).unwrap(), vec![x("user.b", "3")]);
        let pinned = rustix::fs::openat(
            &dir,
            "f",
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        sync(On::Pinned(pinned.as_fd()), &[], ALL).unwrap();
        assert_eq!(read(at, ALL).unwrap(), vec![]);
        // Classes outside the selection are neither read nor removed.
        at.set(b"user.kept", b"k").unwrap();
        let acls_only = XattrSel { acls: true, ..XattrSel::default() };
        sync(at, &[], acls_only).unwrap();
        assert_eq!(read(at, acls_only).unwrap(), vec![]);
        assert_eq!(read(at, ALL).unwrap(), vec![x("user.kept", "k")]);
    }

    #[test]
    fn the_resume_journal_is_never_read_nor_removed() {
        let t = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(t.path().join("f")).unwrap();
        let on = On::Fd(f.as_fd());
        if on.set(b"user.blit.part", b"j").is_err() {
            eprintln!("skipped: no user extended attributes here");
            return;
        }
        assert_eq!(read(on, ALL).unwrap(), vec![]);
        sync(on, &[], ALL).unwrap();
        assert_eq!(on.get(b"user.blit.part", &mut [0u8; 8]), Ok(1));
    }
}
