//! A one-shot signal that wakes every thread blocked on a channel in this session.
//!
//! Firing drops the only sender of a zero-capacity channel; a `select!` on [`Canceller::wake`]
//! then returns at once on every thread, now and later. Used for abort and for the first
//! failure, so no thread polls a flag on a timer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender};

pub(crate) struct Canceller {
    fired: AtomicBool,
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
}

impl Canceller {
    pub(crate) fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Canceller { fired: AtomicBool::new(false), tx: Mutex::new(Some(tx)), rx }
    }

    /// Wakes every waiter; idempotent.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        // A panic cannot leave an Option half-taken, so a poisoned lock is still usable.
        self.tx.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Becomes ready (disconnected) once fired.
    pub(crate) fn wake(&self) -> &Receiver<()> {
        &self.rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn fire_wakes_a_blocked_select() {
        let c = std::sync::Arc::new(Canceller::new());
        let (_keep, never) = crossbeam_channel::bounded::<u8>(1);
        let c2 = std::sync::Arc::clone(&c);
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            crossbeam_channel::select! {
                recv(never) -> _ => unreachable!(),
                recv(c2.wake()) -> r => assert!(r.is_err()),
            }
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(!c.is_fired());
        c.fire();
        c.fire();
        assert!(c.is_fired());
        assert!(t.join().unwrap() < Duration::from_secs(5));
    }
}
