//! Cancellation for the control plane: the one signal of `blitx_core::cancel` (what the engines
//! and the data plane wait on), with what the async control plane needs on top: a future that
//! completes when it fires, children, and signal handling. Nothing here polls.
//!
//! There is one signal, not a flag and a channel set together: [`Cancel::cancel`] fires the core
//! signal, and a waker registered on it wakes the tokio side (a watch channel). A signal
//! handler does nothing itself; [`Cancel::watch_signals`] has a thread blocked on
//! signal-hook's self-pipe fire the signal, which wakes every waiter at once.

use std::sync::Arc;

use tokio::sync::watch;

/// A cancellation signal with async wake-ups. Clones share it.
#[derive(Clone, Debug)]
pub struct Cancel {
    /// The signal itself: what the engines, the data plane's set-up and the transports wait on.
    core: blitx_core::cancel::Cancel,
    /// Set to true by the core signal's waker, for [`Cancel::cancelled`].
    woken: Arc<watch::Sender<bool>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl From<blitx_core::cancel::Cancel> for Cancel {
    /// The async view of an existing signal (fired by whoever else holds it).
    fn from(core: blitx_core::cancel::Cancel) -> Self {
        let woken = Arc::new(watch::channel(false).0);
        let w = Arc::clone(&woken);
        core.on_fire(move || {
            w.send_replace(true);
        });
        Cancel { core, woken }
    }
}

impl Cancel {
    pub fn new() -> Self {
        Cancel::from(blitx_core::cancel::Cancel::new())
    }

    /// Fires the signal: wakes every waiter, sync and async.
    pub fn cancel(&self) {
        self.core.fire();
    }

    /// The signal itself, for the engines, the data plane's set-up and the transports.
    pub fn plane(&self) -> &blitx_core::cancel::Cancel {
        &self.core
    }

    pub fn is_cancelled(&self) -> bool {
        self.core.is_fired()
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
    /// cancelled, so a finished session cancels its own token to let it go. (A waker on the
    /// parent would do without the task, but a daemon's shutdown would then keep one waker per
    /// session it ever served.)
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

    /// Cancels on SIGINT and SIGTERM: signal-hook's handler writes to its self-pipe
    /// (async-signal-safe), and a thread blocked on the pipe fires the signal.
    pub fn watch_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let me = self.clone();
        std::thread::Builder::new().name("blit-signals".into()).spawn(move || {
            if signals.forever().next().is_some() {
                me.cancel();
            }
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
    fn the_async_side_wakes_on_the_core_signal() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let core = blitx_core::cancel::Cancel::new();
        let c = Cancel::from(core.clone());
        assert!(!c.is_cancelled());
        let fire = std::thread::spawn(move || core.fire());
        rt.block_on(c.cancelled());
        assert!(c.is_cancelled() && c.plane().is_fired());
        fire.join().expect("fire");
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
