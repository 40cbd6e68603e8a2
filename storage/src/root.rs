//! The directory a transfer half works in, held open as a handle.
//!
//! Everything below it is resolved relative to this handle. A daemon opens a session's directory
//! with [`RootDir::beneath`], which refuses `..`, absolute paths and symlinks on the way (the
//! kernel enforces it with openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so a client can never
//! reach outside the export root.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use blitx_core::RelPath;
use blitx_planner::fsys;
use rustix::fs::{Mode, OFlags};

#[derive(Debug, Clone)]
pub struct RootDir {
    fd: Arc<OwnedFd>,
    display: String,
}

impl RootDir {
    /// Opens a directory by path (local transfers and the daemon's export root).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(RootDir { fd: Arc::new(fd), display: path.display().to_string() })
    }

    /// Opens `rel` below `base`, never leaving `base` and never following a symlink. With
    /// `create`, missing directories are created (mode 0755, like `mkdir -p`).
    pub fn beneath(base: &RootDir, rel: &RelPath, create: bool) -> io::Result<Self> {
        let display = if rel.is_root() {
            base.display.clone()
        } else {
            format!("{}/{}", base.display.trim_end_matches('/'), rel.display())
        };
        if !create {
            let fd = fsys::open_dir_beneath(base.fd(), rel, true)?;
            return Ok(RootDir { fd: Arc::new(fd), display });
        }
        let mut cur = base.dup()?;
        for c in rel.components() {
            match rustix::fs::mkdirat(&cur, fsys::os(c), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let name = RelPath::root().join(c).map_err(io::Error::other)?;
            cur = fsys::open_dir_beneath(cur.as_fd(), &name, true)?;
        }
        Ok(RootDir { fd: Arc::new(cur), display })
    }

    /// An empty directory that no path leads to (a fresh temporary directory, opened and then
    /// removed): the stand-in target of a dry run whose target does not exist. Every lookup in it
    /// finds nothing, and nothing can be created in it.
    pub fn empty_stand_in() -> io::Result<Self> {
        let base = std::env::temp_dir();
        for i in 0..100u32 {
            let path = base.join(format!(".blit-empty-{}-{i}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let r = RootDir::open(&path);
                    let _ = std::fs::remove_dir(&path);
                    let mut r = r?;
                    r.display = "(missing target)".into();
                    return Ok(r);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("cannot create a scratch directory"))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// An independent handle on the same directory.
    pub fn dup(&self) -> io::Result<OwnedFd> {
        Ok(rustix::io::fcntl_dupfd_cloexec(self.fd.as_fd(), 0)?)
    }

    pub fn display(&self) -> &str {
        &self.display
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beneath_refuses_escapes_and_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("out")).unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        let root = RootDir::open(t.path()).unwrap();
        let p = |s: &str| RelPath::parse_str(s).unwrap();
        assert!(RootDir::beneath(&root, &p("out"), false).is_err());
        assert!(RootDir::beneath(&root, &p("out/x"), true).is_err());
        assert!(!outside.path().join("x").exists());
        assert!(RootDir::beneath(&root, &p("real"), false).is_ok());
        let made = RootDir::beneath(&root, &p("new/a/b"), true).unwrap();
        assert!(t.path().join("new/a/b").is_dir());
        assert!(made.display().ends_with("new/a/b"));
    }
}
