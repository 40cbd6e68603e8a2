//! Cancellation and the first failure of a data-plane session, written once for every backend.
//!
//! This module owns two small primitives; it does no I/O and starts no thread.
//! - [`Cancel`]: a one-shot signal that *wakes* whatever waits on it (never polled on a timer).
//!   Waiting on a channel: `select!` on [`Cancel::wake`], which becomes ready (disconnected) when
//!   the signal fires. Waiting on anything else (a condition variable, a socket, a completion
//!   queue): register a waker with [`Cancel::on_fire`] that unblocks it (notify the condvar,
//!   shut the socket down, post a work request).
//! - [`FirstFailure`]: the session's first failure wins; later failures are consequences (an
//!   EPIPE after our own shutdown, a flushed work request after the QP went to the error state)
//!   and are dropped. Recording the first failure fires the session's [`Cancel`], so every
//!   thread blocked anywhere in the session wakes and reports that same failure.
//!
//! Cost on the data path: [`FirstFailure::check`] and [`Cancel::is_fired`] are one atomic load
//! while nothing failed; the lock is taken only once a failure was recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::{Receiver, Sender};

type Waker = Box<dyn Fn() + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below is a take, a push or an assignment: poisoning cannot leave
    // one torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct CancelInner {
    fired: AtomicBool,
    /// Dropped when fired: every `select!` on `rx` then returns at once, now and later.
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
    /// Run once, by the thread that fires; `None` after firing.
    wakers: Mutex<Option<Vec<Waker>>>,
}

/// A one-shot cancellation signal shared by every thread of a session (clones share it).
#[derive(Clone)]
pub struct Cancel {
    inner: Arc<CancelInner>,
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel").field("fired", &self.is_fired()).finish()
    }
}

impl Cancel {
    pub fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Cancel {
            inner: Arc::new(CancelInner {
                fired: AtomicBool::new(false),
                tx: Mutex::new(Some(tx)),
                rx,
                wakers: Mutex::new(Some(Vec::new())),
            }),
        }
    }

    /// Fires the signal: sets the flag, wakes every `select!` on [`Cancel::wake`] and runs every
    /// registered waker once. Idempotent; the first call does the work.
    pub fn fire(&self) {
        if self.inner.fired.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.inner.tx).take();
        let wakers = lock(&self.inner.wakers).take().unwrap_or_default();
        for w in wakers {
            w();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// Becomes ready (disconnected) once fired: put it in every `select!` that may block.
    pub fn wake(&self) -> &Receiver<()> {
        &self.inner.rx
    }

    /// Runs `waker` when the signal fires (at once, on this thread, if it already fired). A
    /// waker must not block: it unblocks a waiter (notify a condvar, shut a socket down) and
    /// returns. A condvar waker must take the condvar's mutex before notifying, or a waiter
    /// between its check and its wait misses the wake-up.
    pub fn on_fire(&self, waker: impl Fn() + Send + Sync + 'static) {
        let mut wakers = lock(&self.inner.wakers);
        match wakers.as_mut() {
            Some(list) => list.push(Box::new(waker)),
            None => {
                drop(wakers);
                waker();
            }
        }
    }
}

/// The first failure of a session, replayable to every caller on every thread.
///
/// `F` is the backend's own record of a failure (cloneable, unlike `io::Error`), turned into a
/// [`TransportError`](crate::transport::TransportError) by the backend where it reports it.
pub struct FirstFailure<F> {
    raised: AtomicBool,
    failure: Mutex<Option<F>>,
    cancel: Cancel,
}

impl<F: Clone + std::fmt::Debug> FirstFailure<F> {
    /// A slot that fires `cancel` on the first failure.
    pub fn new(cancel: Cancel) -> Self {
        FirstFailure { raised: AtomicBool::new(false), failure: Mutex::new(None), cancel }
    }

    /// Records `failure` unless one is recorded already, then fires the session's [`Cancel`].
    /// Returns true if this was the first (the caller then does what only the first failure
    /// does: tell the peer, tear down).
    pub fn fail(&self, failure: F) -> bool {
        let first = {
            let mut slot = lock(&self.failure);
            if slot.is_some() {
                false
            } else {
                *slot = Some(failure);
                self.raised.store(true, Ordering::Release);
                true
            }
        };
        self.cancel.fire();
        first
    }

    pub fn is_failed(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// The first failure, if any (one atomic load while there is none).
    pub fn get(&self) -> Option<F> {
        if !self.is_failed() {
            return None;
        }
        lock(&self.failure).clone()
    }

    /// `Err(map(first failure))` once the session failed.
    pub fn check<E>(&self, map: impl FnOnce(&F) -> E) -> Result<(), E> {
        match self.get() {
            Some(f) => Err(map(&f)),
            None => Ok(()),
        }
    }

    /// The session's cancellation signal (fired by the first failure, or by an abort).
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for FirstFailure<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstFailure").field("failure", &*lock(&self.failure)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    #[test]
    fn fire_wakes_a_blocked_select_and_later_ones() {
        let c = Cancel::new();
        let (_keep, never) = crossbeam_channel::bounded::<u8>(1);
        let c2 = c.clone();
        let never2 = never.clone();
        let t = std::thread::spawn(move || {
            let never = never2;
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
        // A select after firing returns at once too.
        crossbeam_channel::select! {
            recv(never) -> _ => unreachable!(),
            recv(c.wake()) -> r => assert!(r.is_err()),
        }
    }

    #[test]
    fn wakers_run_once_and_late_ones_at_once() {
        let c = Cancel::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        c.on_fire(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        c.fire();
        c.fire();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let r = Arc::clone(&runs);
        c.on_fire(move || {
            r.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 11);
    }

    #[test]
    fn a_condvar_waiter_is_woken_not_polled() {
        let c = Cancel::new();
        let pair = Arc::new((Mutex::new(()), std::sync::Condvar::new()));
        let p = Arc::clone(&pair);
        c.on_fire(move || {
            drop(lock(&p.0));
            p.1.notify_all();
        });
        let c2 = c.clone();
        let p = Arc::clone(&pair);
        let t = std::thread::spawn(move || {
            let mut g = lock(&p.0);
            while !c2.is_fired() {
                g = p.1.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        c.fire();
        t.join().unwrap();
    }

    #[test]
    fn first_failure_wins_and_fires_the_cancel() {
        let slot = FirstFailure::new(Cancel::new());
        assert!(slot.check(|f: &&str| f.to_string()).is_ok());
        assert!(!slot.cancel().is_fired());
        assert!(slot.fail("stalled"));
        assert!(!slot.fail("broken pipe after our own shutdown"));
        assert!(slot.cancel().is_fired());
        assert_eq!(slot.get(), Some("stalled"));
        assert_eq!(slot.check(|f| f.to_string()), Err("stalled".to_string()));
    }
}
