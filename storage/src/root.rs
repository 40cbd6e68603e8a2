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

use crate::fsys;
use blitx_core::RelPath;
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
    ///
    /// The name is random (128 bits from the kernel): with a guessable one, any local user could
    /// create it first and make every dry run fail, or hand over a directory of their own. The
    /// directory is made 0700, opened without following a symlink and checked to be an empty
    /// directory of ours before its name is removed; a name that exists is retried.
    pub fn empty_stand_in() -> io::Result<Self> {
        use rustix::io::Errno;
        const TRIES_MAX: u32 = 16;
        let base_path = std::env::temp_dir();
        let base = rustix::fs::open(
            &base_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for _ in 0..TRIES_MAX {
            let name = stand_in_name()?;
            match rustix::fs::mkdirat(&base, &name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
            let opened = rustix::fs::openat(
                &base,
                &name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            // Removed whatever happens: the name was only needed to get a handle.
            let removed = rustix::fs::unlinkat(&base, &name, rustix::fs::AtFlags::REMOVEDIR);
            let fd = opened?;
            removed?;
            let st = rustix::fs::fstat(&fd)?;
            let ours = st.st_uid == rustix::process::geteuid().as_raw()
                && rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory
                && st.st_mode & 0o077 == 0;
            let mut entries = rustix::fs::Dir::read_from(&fd)?;
            let mut empty = true;
            while let Some(entry) = entries.read() {
                let n = entry?.file_name().to_bytes().to_vec();
                empty &= n == b"." || n == b"..";
            }
            if !ours || !empty {
                return Err(io::Error::other(format!(
                    "the dry-run scratch directory {}/{name} was replaced by someone else's",
                    base_path.display()
                )));
            }
            return Ok(RootDir { fd: Arc::new(fd), display: "(missing target)".into() });
        }
        Err(io::Error::other(format!(
            "cannot create a dry-run scratch directory in {}: {TRIES_MAX} random names existed",
            base_path.display()
        )))
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

/// `.blit-empty-` and 32 random hex digits.
fn stand_in_name() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(".blit-empty-{hex}"))
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

    #[test]
    fn stand_in_names_are_unpredictable() {
        let a = stand_in_name().unwrap();
        let b = stand_in_name().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), ".blit-empty-".len() + 32);
    }

    /// The old names were `.blit-empty-<pid>-<0..100>`: any local user could create them all
    /// (as directories, files or symlinks) and make every dry run of a process fail.
    #[test]
    fn stand_in_is_not_stopped_by_names_planted_in_tmp() {
        let base = std::env::temp_dir();
        let victim = tempfile::tempdir().unwrap();
        let planted: Vec<_> = (0..100u32)
            .map(|i| base.join(format!(".blit-empty-{}-{i}", std::process::id())))
            .collect();
        for (i, p) in planted.iter().enumerate() {
            let _ = std::fs::remove_dir(p);
            let _ = std::fs::remove_file(p);
            if i % 2 == 0 {
                std::os::unix::fs::symlink(victim.path(), p).unwrap();
            } else {
                std::fs::create_dir(p).unwrap();
            }
        }
        let r = RootDir::empty_stand_in();
        for p in &planted {
            let _ = std::fs::remove_dir(p);
            let _ = std::fs::remove_file(p);
        }
        let r = r.unwrap();
        // Empty, and nothing can be created in it (its name is gone).
        let entries: Vec<_> = rustix::fs::Dir::read_from(r.fd())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        assert!(entries.is_empty(), "{entries:?}");
        let created = rustix::fs::openat(
            r.fd(),
            "x",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        assert!(created.is_err());
        assert!(std::fs::read_dir(victim.path()).unwrap().next().is_none());
    }
}
