//! One writer per target: a transfer that writes into a directory holds an exclusive `flock`
//! on it and a shared one on every directory above it, up to `/`. Two transfers into the same
//! directory, or into one directory and a directory below it, therefore never interleave their
//! files; readers (pulls, the source side) take no lock. Local copies and daemon sessions take
//! the same locks, so they exclude each other too.
//!
//! Locks are taken without blocking, all or nothing, and retried until a deadline: nothing is
//! held while waiting, so two waiters can never deadlock. They are released when the
//! [`TargetLock`] is dropped (or the process dies: `flock` locks belong to open files).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};

/// How often a waiting transfer tries again.
const RETRY_EVERY: Duration = Duration::from_millis(100);
/// Directories above a target, at most, that are locked shared (deeper trees are unusual; the
/// bound keeps a pathological mount from making this walk long).
const ANCESTORS_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another blit transfer is writing into this directory or one above or below it")]
    Busy,
    #[error("the transfer was cancelled while waiting for the target lock")]
    Cancelled,
    #[error("cannot lock the target")]
    Io(#[source] io::Error),
}

/// Held while a transfer writes; dropping it releases the locks.
#[derive(Debug)]
pub struct TargetLock {
    _held: Vec<OwnedFd>,
}

impl TargetLock {
    /// Locks the directory `dir` for writing. With `wait`, retries until then (or `cancel`);
    /// without, fails at once with [`LockError::Busy`].
    pub fn acquire(
        dir: BorrowedFd<'_>,
        wait: Option<Duration>,
        cancel: &AtomicBool,
    ) -> Result<Self, LockError> {
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            match Self::try_once(dir) {
                Ok(lock) => return Ok(lock),
                Err(LockError::Busy) => {}
                Err(e) => return Err(e),
            }
            match deadline {
                Some(d) if Instant::now() < d => {}
                _ => return Err(LockError::Busy),
            }
            if cancel.load(Ordering::Acquire) {
                return Err(LockError::Cancelled);
            }
            std::thread::sleep(RETRY_EVERY);
        }
    }

    fn try_once(dir: BorrowedFd<'_>) -> Result<Self, LockError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        // A fresh open file of its own: flock locks belong to open files, and the caller's
        // handle may be shared.
        let own = rustix::fs::openat(dir, ".", flags, Mode::empty())
            .map_err(|e| LockError::Io(e.into()))?;
        let mut held = Vec::new();
        lock(&own, FlockOperation::NonBlockingLockExclusive)?;
        let mut st = rustix::fs::fstat(&own).map_err(|e| LockError::Io(e.into()))?;
        held.push(own);
        for _ in 0..ANCESTORS_MAX {
            let Some(current) = held.last() else { break };
            let parent = match rustix::fs::openat(current.as_fd(), "..", flags, Mode::empty()) {
                Ok(p) => p,
                // An ancestor this user cannot read cannot be locked by it either; others that
                // can read it still exclude each other below it.
                Err(rustix::io::Errno::ACCESS) => break,
                Err(e) => return Err(LockError::Io(e.into())),
            };
            let pst = rustix::fs::fstat(&parent).map_err(|e| LockError::Io(e.into()))?;
            if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino) {
                break; // "/" is its own parent
            }
            lock(&parent, FlockOperation::NonBlockingLockShared)?;
            st = pst;
            held.push(parent);
        }
        Ok(TargetLock { _held: held })
    }
}

fn lock(fd: &OwnedFd, op: FlockOperation) -> Result<(), LockError> {
    match rustix::fs::flock(fd, op) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Busy),
        Err(rustix::io::Errno::INTR) => Err(LockError::Busy),
        Err(e) => Err(LockError::Io(e.into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn open(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    /// Row 15 of the hardening review: two pushes to one target interleaved file by file.
    #[test]
    fn one_writer_per_target_and_per_subtree() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        std::fs::create_dir_all(t.path().join("c")).unwrap();
        let no = AtomicBool::new(false);
        let first = TargetLock::acquire(open(&a).as_fd(), None, &no).unwrap();
        assert!(matches!(TargetLock::acquire(open(&a).as_fd(), None, &no), Err(LockError::Busy)));
        // Below and above a locked target are busy too; a sibling is free.
        let below = TargetLock::acquire(open(&a.join("b")).as_fd(), None, &no);
        assert!(matches!(below, Err(LockError::Busy)));
        let above = TargetLock::acquire(open(t.path()).as_fd(), None, &no);
        assert!(matches!(above, Err(LockError::Busy)));
        let sibling = TargetLock::acquire(open(&t.path().join("c")).as_fd(), None, &no).unwrap();
        drop(sibling);
        // A waiter gets the lock once the first writer is done.
        let waiter = std::thread::spawn(move || {
            let no = AtomicBool::new(false);
            TargetLock::acquire(open(&a).as_fd(), Some(Duration::from_secs(10)), &no).is_ok()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        assert!(waiter.join().unwrap());
    }
}
