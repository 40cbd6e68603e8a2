//! Open directory handles on one side of a transfer, opened once per directory (not per file)
//! and reused for every `openat`/`renameat` below it. With `confine`, every handle is opened
//! with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS so nothing can lead outside the root.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::fsys;
use blitx_core::RelPath;

/// Handles kept open at most; beyond this the cache is emptied (directories are visited in
/// walk order, so recent handles are the ones still needed).
const DIRS_OPEN_MAX: usize = 512;

#[derive(Debug)]
pub struct DirCache {
    root: OwnedFd,
    confine: bool,
    open: Mutex<HashMap<RelPath, Arc<OwnedFd>>>,
}

impl DirCache {
    pub fn new(root: OwnedFd, confine: bool) -> Self {
        DirCache { root, confine, open: Mutex::new(HashMap::new()) }
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    pub fn confine(&self) -> bool {
        self.confine
    }

    /// A handle on directory `dir` (the root for `RelPath::root()`).
    pub fn get(&self, dir: &RelPath) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.lock().get(dir) {
            return Ok(Arc::clone(fd));
        }
        let fd = Arc::new(fsys::open_dir_beneath(self.root.as_fd(), dir, self.confine)?);
        let mut open = self.lock();
        if open.len() >= DIRS_OPEN_MAX {
            open.clear();
        }
        open.insert(dir.clone(), Arc::clone(&fd));
        Ok(fd)
    }

    /// Forgets `dir` and everything below it (after it was removed or replaced).
    pub fn forget(&self, dir: &RelPath) {
        self.lock().retain(|p, _| !p.starts_with(dir));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RelPath, Arc<OwnedFd>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
