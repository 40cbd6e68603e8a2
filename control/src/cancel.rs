//! Cancellation that wakes its waiters: a flag (what the engines look at between steps) and a
//! watch channel (what the control plane's waits select on), set together. Nothing here polls.
//!
//! A signal handler may only set an atomic; [`Cancel::watch_signals`] pairs such a handler with
//! a thread blocked on signal-hook's self-pipe, which calls [`Cancel::cancel`] and so wakes every
//! waiter at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// A cancellation flag with wake-ups. Clones share it.
#[derive(Clone, Debug)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    woken: Arc<watch::Sender<bool>>,
    /// The data plane's form of the same signal (`blitx_core::cancel`), fired with it: a
    /// data-plane set-up blocked in an accept or a connect wakes on it.
    plane: blitx_core::cancel::Cancel,
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl Cancel {
    pub fn new() -> Self {
        Cancel {
            flag: Arc::new(AtomicBool::new(false)),
            woken: Arc::new(watch::channel(false).0),
            plane: blitx_core::cancel::Cancel::new(),
        }
    }

    /// Sets the flag and wakes every waiter.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.woken.send_replace(true);
        self.plane.fire();
    }

    /// The same signal for the data plane's set-up and transports.
    pub fn plane(&self) -> &blitx_core::cancel::Cancel {
        &self.plane
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// The flag itself, for the engines (which look at it between steps).
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Completes once [`Cancel::cancel`] was called (at once if it already was).
    pub async fn cancelled(&self) {
        let mut rx = self.woken.subscribe();
        // `wait_for` looks at the current value first: a cancel before this call is not lost.
        if rx.wait_for(|c| *c).await.is_err() {
            // Unreachable while `self` holds the sender; never complete rather than spin.
            std::future::pending::<()>().await;
        }
    }

    /// A new token cancelled when this one is (and on its own): a session's cancel below the
    /// daemon's shutdown or the caller's interrupt. The forwarding task ends when either is
    /// cancelled, so a finished session cancels its own token to let it go.
    pub fn child(&self, rt: &tokio::runtime::Handle) -> Cancel {
        let child = Cancel::new();
        let (parent, c) = (self.clone(), child.clone());
        rt.spawn(async move {
            tokio::select! {
                _ = parent.cancelled() => c.cancel(),
                _ = c.cancelled() => {}
            }
        });
        child
    }

    /// Cancels on SIGINT and SIGTERM: the handler sets the flag (async-signal-safe), and a
    /// thread blocked on signal-hook's self-pipe wakes the waiters.
    pub fn watch_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&self.flag))?;
        }
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let me = self.clone();
        std::thread::Builder::new().name("blit-signals".into()).spawn(move || {
            if signals.forever().next().is_some() {
                me.cancel();
            }
            // The flag was set by the handler before the pipe woke this thread; `cancel` fired
            // the rest.
        })?;
        Ok(())
    }
}

/// Why a wait ended without its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    Cancelled,
    /// The deadline passed.
    Deadline,
}

impl Cancel {
    /// `fut`'s output, unless this token is cancelled or `deadline` passes first (None: no
    /// deadline): every wait on a peer ends on an interrupt or a shutdown, woken, not polled.
    pub async fn race<F: std::future::Future>(
        &self,
        fut: F,
        deadline: Option<std::time::Instant>,
    ) -> Result<F::Output, Interrupted> {
        let limited = async {
            match deadline {
                Some(d) => {
                    tokio::time::timeout_at(d.into(), fut).await.map_err(|_| Interrupted::Deadline)
                }
                None => Ok(fut.await),
            }
        };
        tokio::select! {
            biased;
            _ = self.cancelled() => Err(Interrupted::Cancelled),
            r = limited => r,
        }
    }
}

/// The next message of an inbound gRPC stream, unless `cancel` is set or `deadline` passes
/// first (so a peer that never closes its side cannot keep a session thread alive).
pub(crate) fn next_or_cancel<T>(
    rt: &tokio::runtime::Handle,
    stream: &mut tonic::Streaming<T>,
    cancel: &Cancel,
    deadline: Option<std::time::Instant>,
) -> Result<Result<Option<T>, tonic::Status>, Interrupted> {
    rt.block_on(cancel.race(stream.message(), deadline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_before_the_wait_is_not_lost() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let c = Cancel::new();
        c.cancel();
        rt.block_on(c.cancelled());
        assert!(c.is_cancelled());
    }

    #[test]
    fn a_child_follows_its_parent_and_not_the_reverse() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let parent = Cancel::new();
        let child = parent.child(rt.handle());
        let other = parent.child(rt.handle());
        other.cancel();
        assert!(!parent.is_cancelled());
        parent.cancel();
        rt.block_on(child.cancelled());
        assert!(child.is_cancelled());
    }

    #[test]
    fn a_race_ends_on_the_cancel_or_the_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let c = Cancel::new();
        let never = std::future::pending::<()>();
        let past = std::time::Instant::now();
        assert_eq!(rt.block_on(c.race(never, Some(past))), Err(Interrupted::Deadline));
        assert_eq!(rt.block_on(c.race(async { 7 }, None)), Ok(7));
        c.cancel();
        let never = std::future::pending::<()>();
        assert_eq!(rt.block_on(c.race(never, None)), Err(Interrupted::Cancelled));
    }
}
