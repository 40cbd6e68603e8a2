//! The storage engine and the two halves of a transfer.
//!
//! - [`source`]: the source half — runs the walk, answers the target's needs by reading files
//!   into the transport's buffers (or handing it file regions), and re-checks every file after
//!   reading so a file that changes mid-copy is reported, never committed.
//! - [`target`]: the target half — diffs each listing against the target directory, creates
//!   directories and links, writes frames into temporary files (preallocated except on tmpfs, holes kept),
//!   renames each file into place only when all of it arrived, applies metadata, and finalizes
//!   (hard links, mirror deletions, directory times).
//! - [`local`]: both halves in one process over the in-process transport (`blit xfer A B`).
//!
//! Remote transfers run one half here and the other in a daemon; the control plane carries the
//! [`blitx_core::session`] messages and a network transport carries the frames.

#[cfg(feature = "testkit")]
pub mod conformance;
pub mod dircache;
pub mod direct;
pub mod fsys;
pub mod limits;
pub mod local;
pub mod lock;
pub mod meta;
pub mod ops;
mod remove;
pub mod report;
pub mod root;
pub mod source;
pub mod target;
#[cfg(feature = "testkit")]
pub mod testkit;
#[allow(unsafe_code)]
pub mod uring;
pub mod walk;
pub mod xattr;

pub use report::{Event, EventKind, Progress, Reporter, SourceReport, TargetReport};
pub use root::RootDir;

/// Why a control message could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// The other half is gone.
    Closed,
    /// The transfer was cancelled (or failed) while the other half was not reading.
    Cancelled,
}

/// Sends a control message to the other half, waiting while its queue is full but never past a
/// cancellation: a half that stopped reading (it failed) must not hold this one forever. The
/// wait is woken by `cancel`, never polled; a queue with room costs no `select!`, and a full
/// one is retried for a short spin first (see [`recv_woken`] for why).
pub(crate) fn send_or_cancel<T>(
    tx: &crossbeam_channel::Sender<T>,
    msg: T,
    cancel: &blitx_core::cancel::Cancel,
) -> Result<(), Unsent> {
    let backoff = crossbeam_utils::Backoff::new();
    let mut msg = msg;
    loop {
        match tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(Unsent::Closed),
            Err(crossbeam_channel::TrySendError::Full(m)) if backoff.is_completed() => {
                msg = m;
                break;
            }
            Err(crossbeam_channel::TrySendError::Full(m)) => {
                msg = m;
                backoff.snooze();
            }
        }
    }
    crossbeam_channel::select! {
        send(tx, msg) -> r => r.map_err(|_| Unsent::Closed),
        recv(cancel.wake()) -> _ => Err(Unsent::Cancelled),
    }
}

/// What a wait for the other half's next control message ended with.
pub(crate) enum Heard<T> {
    Msg(T),
    /// The other half is gone.
    Closed,
    /// The session was cancelled (or failed).
    Cancelled,
    /// The idle timer fired.
    Timer,
}

/// Waits for the next message on `rx`: woken by the message, by `cancel`, or by `timer`, never
/// polled. It spins briefly first (`Backoff`, as crossbeam's own `recv` does), because
/// `select!` parks at once: on a control channel whose messages come microseconds apart, a futex
/// wait and a wake-up per message made the 55,001-entry no-op copy 25% slower (24,000 context
/// switches against 5,000).
pub(crate) fn recv_woken<T>(
    rx: &crossbeam_channel::Receiver<T>,
    cancel: &blitx_core::cancel::Cancel,
    timer: &crossbeam_channel::Receiver<std::time::Instant>,
) -> Heard<T> {
    let backoff = crossbeam_utils::Backoff::new();
    let got = loop {
        match rx.try_recv() {
            Ok(m) => break Ok(m),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return Heard::Closed,
            Err(crossbeam_channel::TryRecvError::Empty) if backoff.is_completed() => {
                break crossbeam_channel::select! {
                    recv(rx) -> m => m,
                    recv(cancel.wake()) -> _ => return Heard::Cancelled,
                    recv(timer) -> _ => return Heard::Timer,
                };
            }
            Err(crossbeam_channel::TryRecvError::Empty) => backoff.snooze(),
        }
    };
    match got {
        Ok(_) if cancel.is_fired() => Heard::Cancelled,
        Ok(m) => Heard::Msg(m),
        Err(_) => Heard::Closed,
    }
}

/// Wakes the waiters of a condition variable when `cancel` fires. The waker takes the mutex
/// before notifying, so a waiter between its check of [`Cancel::is_fired`] and its wait cannot
/// miss the wake-up. It holds the state weakly: a finished session's state is not kept alive by
/// a longer-lived signal (the CLI's, or a daemon's).
///
/// [`Cancel::is_fired`]: blitx_core::cancel::Cancel::is_fired
pub(crate) fn notify_on_cancel<T: Send + 'static>(
    cancel: &blitx_core::cancel::Cancel,
    mutex: &std::sync::Arc<std::sync::Mutex<T>>,
    condvar: &std::sync::Arc<std::sync::Condvar>,
) {
    let (m, cv) = (std::sync::Arc::downgrade(mutex), std::sync::Arc::downgrade(condvar));
    cancel.on_fire(move || {
        if let (Some(m), Some(cv)) = (m.upgrade(), cv.upgrade()) {
            drop(m.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            cv.notify_all();
        }
    });
}

/// Threads that move file data on each side: the machine's cores, at least two (one can block in
/// I/O while the other works), at most eight (beyond that, threads only contend).
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8)
}
