//! The helpers that wait for a busy target lock are bounded: a client that opens and abandons
//! `--wait-lock` sessions against a target a long transfer holds cannot pile up threads and
//! descriptors in the daemon. (Its own test binary: the bound is per process.)
#![allow(clippy::unwrap_used)]

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use blitx_core::cancel::Cancel;
use blitx_storage::lock::{LOCK_WAITERS_MAX, LockError, TargetLock, lock_waiters};
use rustix::fs::{Mode, OFlags};

fn open(p: &std::path::Path) -> OwnedFd {
    rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
}

#[test]
fn abandoned_lock_waits_leave_at_most_the_bound_of_helpers_behind() {
    let t = tempfile::tempdir().unwrap();
    let held = TargetLock::acquire(open(t.path()).as_fd(), None, &Cancel::new()).unwrap();

    // Waits that give up at their deadline each leave a helper blocked in flock, up to the bound.
    let short = Some(Duration::from_millis(1));
    for _ in 0..LOCK_WAITERS_MAX + 8 {
        let r = TargetLock::acquire(open(t.path()).as_fd(), short, &Cancel::new());
        assert!(matches!(r, Err(LockError::Busy)), "{r:?}");
    }
    assert_eq!(lock_waiters(), LOCK_WAITERS_MAX);

    // Past the bound, even a long wait is answered busy at once.
    let asked = Instant::now();
    let hour = Some(Duration::from_secs(3600));
    let r = TargetLock::acquire(open(t.path()).as_fd(), hour, &Cancel::new());
    assert!(matches!(r, Err(LockError::Busy)), "{r:?}");
    assert!(asked.elapsed() < Duration::from_secs(2), "waited {:?}", asked.elapsed());

    // The holder lets go: every helper takes the lock in turn, drops it and ends.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    while lock_waiters() > 0 {
        assert!(Instant::now() < deadline, "{} helpers still blocked", lock_waiters());
        std::thread::sleep(Duration::from_millis(10));
    }
    let again = TargetLock::acquire(open(t.path()).as_fd(), hour, &Cancel::new());
    assert!(again.is_ok(), "{again:?}");
}
