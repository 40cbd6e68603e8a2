//! One writer per target: a transfer that writes into a directory holds an exclusive `flock`
//! on it and a shared one on every directory above it, up to `/`. Two transfers into the same
//! directory, or into one directory and a directory below it, therefore never interleave their
//! files; readers (pulls, the source side) take no lock. Local copies and daemon sessions take
//! the same locks, so they exclude each other too.
//!
//! Locks are taken without blocking, all or nothing. A waiter then holds nothing and waits for
//! the one directory that was busy: so two waiters can never deadlock. They are released when
//! the [`TargetLock`] is dropped (or the process dies: `flock` locks belong to open files).
//!
//! The wait is woken, never polled. The kernel wakes a blocking `flock` when the holder lets
//! go, whichever process it is (nothing else tells another process's release: no inotify
//! event, no file to watch), so a helper thread blocks in `flock` on the busy directory while
//! the waiter `select!`s on that thread's answer, the cancel and the deadline. A blocking
//! `flock` cannot be interrupted but by a signal, so on a cancel or the deadline the waiter
//! returns at once and leaves the helper behind: it takes the lock once the holder lets go and
//! drops it at once (a moment's hold, which at worst makes another waiter wait one turn more).
//! An in-process registry woken by condition variables would see only this process's releases
//! and would still need a timer for the others.
//!
//! Helpers left behind are bounded: at most [`LOCK_WAITERS_MAX`] block at once in a process.
//! Without the bound, a client that opens sessions with `--wait-lock` on a target that a long
//! transfer holds, and abandons each, would pile up threads and descriptors in the daemon until
//! that transfer ends. Past the bound a waiter is answered [`LockError::Busy`] at once.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blitx_core::cancel::Cancel;
use rustix::fs::{FlockOperation, Mode, OFlags};
/// Helper threads blocked in `flock` at once in this process, at most (see the module's doc).
pub const LOCK_WAITERS_MAX: usize = 64;

/// Helper threads blocked in `flock` now (each counted from its start to its end).
static LOCK_WAITERS: AtomicUsize = AtomicUsize::new(0);

/// How many helper threads wait for a busy directory now, in this process.
pub fn lock_waiters() -> usize {
    LOCK_WAITERS.load(Ordering::Acquire)
}

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

/// Why one attempt did not take every lock.
enum Attempt {
    /// This directory is locked by another transfer, in a way that excludes `op`.
    Busy(OwnedFd, FlockOperation),
    Failed(LockError),
}

impl From<LockError> for Attempt {
    fn from(e: LockError) -> Self {
        Attempt::Failed(e)
    }
}

impl TargetLock {
    /// Locks the directory `dir` for writing. With `wait`, waits until then (or `cancel`) for
    /// the other transfers to let go; without, fails at once with [`LockError::Busy`].
    pub fn acquire(
        dir: BorrowedFd<'_>,
        wait: Option<Duration>,
        cancel: &Cancel,
    ) -> Result<Self, LockError> {
        Self::acquire_as(dir, FlockOperation::LockExclusive, wait, cancel)
    }

    /// Locks `dir` shared (and every directory above it): excludes a transfer writing into
    /// `dir` or above it, not one writing into a directory below it or beside it. Removing one
    /// file (`blit rm`) takes this on the file's directory.
    pub fn acquire_shared(
        dir: BorrowedFd<'_>,
        wait: Option<Duration>,
        cancel: &Cancel,
    ) -> Result<Self, LockError> {
        Self::acquire_as(dir, FlockOperation::LockShared, wait, cancel)
    }

    fn acquire_as(
        dir: BorrowedFd<'_>,
        own_op: FlockOperation,
        wait: Option<Duration>,
        cancel: &Cancel,
    ) -> Result<Self, LockError> {
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let (busy, op) = match Self::try_once(dir, own_op) {
                Ok(lock) => return Ok(lock),
                Err(Attempt::Busy(fd, op)) => (fd, op),
                Err(Attempt::Failed(e)) => return Err(e),
            };
            let Some(deadline) = deadline else { return Err(LockError::Busy) };
            if cancel.is_fired() {
                return Err(LockError::Cancelled);
            }
            // Everything else this attempt took is released already: block on the one busy
            // directory only, then try the whole set again.
            let Some(freed) = wait_until_free(busy, op)? else {
                tracing::warn!(
                    waiters = LOCK_WAITERS_MAX,
                    "too many transfers wait for a target lock: answered busy at once"
                );
                return Err(LockError::Busy);
            };
            crossbeam_channel::select! {
                recv(freed) -> r => match r {
                    Ok(Ok(())) | Err(_) => {}
                    Ok(Err(e)) => return Err(LockError::Io(e.into())),
                },
                recv(cancel.wake()) -> _ => return Err(LockError::Cancelled),
                recv(crossbeam_channel::at(deadline)) -> _ => return Err(LockError::Busy),
            }
        }
    }

    fn try_once(dir: BorrowedFd<'_>, own_op: FlockOperation) -> Result<Self, Attempt> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        // A fresh open file of its own: flock locks belong to open files, and the caller's
        // handle may be shared.
        let own = rustix::fs::openat(dir, ".", flags, Mode::empty())
            .map_err(|e| LockError::Io(e.into()))?;
        let mut held = Vec::new();
        let own = lock(own, own_op)?;
        let mut st = rustix::fs::fstat(&own).map_err(|e| LockError::Io(e.into()))?;
        held.push(own);
        for _ in 0..ANCESTORS_MAX {
            let Some(current) = held.last() else { break };
            let parent = match rustix::fs::openat(current.as_fd(), "..", flags, Mode::empty()) {
                Ok(p) => p,
                // An ancestor this user cannot read cannot be locked by it either; others that
                // can read it still exclude each other below it.
                Err(rustix::io::Errno::ACCESS) => break,
                Err(e) => return Err(LockError::Io(e.into()).into()),
            };
            let pst = rustix::fs::fstat(&parent).map_err(|e| LockError::Io(e.into()))?;
            if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino) {
                break; // "/" is its own parent
            }
            let parent = lock(parent, FlockOperation::LockShared)?;
            st = pst;
            held.push(parent);
        }
        Ok(TargetLock { _held: held })
    }
}

/// Blocks a helper thread in `flock(busy, op)` until the directory is free, then lets go at
/// once; the receiver gets the outcome. The helper holds no lock while it blocks. `None` when
/// [`LOCK_WAITERS_MAX`] helpers block already.
fn wait_until_free(
    busy: OwnedFd,
    op: FlockOperation,
) -> Result<Option<crossbeam_channel::Receiver<rustix::io::Result<()>>>, LockError> {
    /// Counts one helper from its start to its end (its thread, or a failed spawn).
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            LOCK_WAITERS.fetch_sub(1, Ordering::AcqRel);
        }
    }
    if LOCK_WAITERS.fetch_add(1, Ordering::AcqRel) >= LOCK_WAITERS_MAX {
        LOCK_WAITERS.fetch_sub(1, Ordering::AcqRel);
        return Ok(None);
    }
    let counted = Counted;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("blit-lock-wait".into())
        // It only blocks in one system call.
        .stack_size(64 << 10)
        .spawn(move || {
            let _counted = counted;
            let r = loop {
                match rustix::fs::flock(&busy, op) {
                    Err(rustix::io::Errno::INTR) => continue,
                    r => break r,
                }
            };
            // Dropping the descriptor releases the lock before the waiter tries again; a
            // waiter that gave up is gone, and the send fails harmlessly.
            drop(busy);
            let _ = tx.send(r);
        })
        .map_err(LockError::Io)?;
    Ok(Some(rx))
}

/// Takes `op` on `fd` without blocking; if another transfer holds it, hands `fd` back with the
/// blocking form of `op` for the wait.
fn lock(fd: OwnedFd, op: FlockOperation) -> Result<OwnedFd, Attempt> {
    let now = match op {
        FlockOperation::LockShared => FlockOperation::NonBlockingLockShared,
        _ => FlockOperation::NonBlockingLockExclusive,
    };
    match rustix::fs::flock(&fd, now) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => Err(Attempt::Busy(fd, op)),
        Err(e) => Err(LockError::Io(e.into()).into()),
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
        let no = Cancel::new();
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
            let no = Cancel::new();
            TargetLock::acquire(open(&a).as_fd(), Some(Duration::from_secs(10)), &no).is_ok()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        assert!(waiter.join().unwrap());
    }

    /// A waiter for a target held by another transfer (here: a subtree below it, so the wait
    /// is for an exclusive lock on the target itself) ends at once on a cancel or on the
    /// release, never on a retry tick, and never past its deadline.
    #[test]
    fn a_waiter_is_woken_by_the_cancel_the_release_and_the_deadline() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        let hour = Some(Duration::from_secs(3600));
        let bound = Duration::from_secs(2);

        let below = TargetLock::acquire(open(&a.join("b")).as_fd(), None, &Cancel::new()).unwrap();
        let cancel = Cancel::new();
        let c = cancel.clone();
        let dir = a.clone();
        let waiter = std::thread::spawn(move || {
            let r = TargetLock::acquire(open(&dir).as_fd(), hour, &c);
            (r.map(|_| ()), Instant::now())
        });
        std::thread::sleep(Duration::from_millis(50));
        let fired = Instant::now();
        cancel.fire();
        let (r, ended) = waiter.join().unwrap();
        assert!(matches!(r, Err(LockError::Cancelled)), "{r:?}");
        assert!(ended - fired < bound, "ended {:?} after the cancel", ended - fired);

        // Released by the holder: the waiter takes it.
        let dir = a.clone();
        let waiter = std::thread::spawn(move || {
            let r = TargetLock::acquire(open(&dir).as_fd(), hour, &Cancel::new());
            (r.map(|_| ()), Instant::now())
        });
        std::thread::sleep(Duration::from_millis(50));
        let released = Instant::now();
        drop(below);
        let (r, ended) = waiter.join().unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert!(ended - released < bound, "took it {:?} after the release", ended - released);

        // A deadline ends the wait as Busy.
        let held = TargetLock::acquire(open(&a).as_fd(), None, &Cancel::new()).unwrap();
        let short = Some(Duration::from_millis(100));
        let r = TargetLock::acquire(open(&a).as_fd(), short, &Cancel::new());
        assert!(matches!(r, Err(LockError::Busy)), "{r:?}");
        drop(held);
    }
}
