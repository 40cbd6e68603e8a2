//! The bounds a transfer half works within, set by whoever runs it (the daemon's operator for
//! sessions it serves; nothing for a user's own local copy).
//!
//! Back of the envelope: a target half keeps, per file whose data is still on its way, about
//! [`PENDING_FILE_BYTES`] plus its path, and per directory (until finalization sets its times)
//! about [`DIR_BYTES`] plus its path. A hostile peer that lists ten million files and never sends
//! their data would hold ~2.5 GB without a bound; with a session budget of 1 GiB it is refused
//! at ~4 M files. Buffer pools are charged to the same budgets when a session's data plane is
//! built, so a client cannot pick streams × chunk size beyond what the operator allowed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blitx_core::rate::{FRAME_SECS_MAX, Pacer};
use blitx_core::session::SessionParams;

use crate::report::Progress;

/// Approximate bytes a target keeps per file whose data has not arrived (bookkeeping, without
/// the path).
pub const PENDING_FILE_BYTES: u64 = 256;
/// Approximate bytes a target keeps per directory until finalization (without the path).
pub const DIR_BYTES: u64 = 96;
/// Approximate bytes per name while a directory's listing is still arriving in parts.
pub const NAME_BYTES: u64 = 48;

/// The shortest idle timeout of a paced session: twice the longest a chunk may take at its limit.
pub const PACED_IDLE_MIN: Duration = Duration::from_secs(2 * FRAME_SECS_MAX);

/// A limit was reached; the session is refused or ended (gRPC RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    #[error("{what} needs more than the {limit_bytes}-byte memory limit {scope}")]
    Memory { what: &'static str, limit_bytes: u64, scope: &'static str },
    #[error("the source listed more than {limit} entries (the limit for one session)")]
    Entries { limit: u64 },
}

/// A byte budget shared by everything that charges it. A session's budget has the daemon's as
/// its parent: a charge must fit both, and whatever a session still holds when it ends goes
/// back to the parent.
#[derive(Debug)]
pub struct Budget {
    scope: &'static str,
    max_bytes: u64,
    used_bytes: AtomicU64,
    parent: Option<Arc<Budget>>,
}

impl Budget {
    pub fn new(scope: &'static str, max_bytes: u64, parent: Option<Arc<Budget>>) -> Arc<Self> {
        Arc::new(Budget { scope, max_bytes, used_bytes: AtomicU64::new(0), parent })
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }

    /// Charges `bytes`, or refuses without charging anything.
    pub fn charge(&self, what: &'static str, bytes: u64) -> Result<(), Exhausted> {
        let refused = || Exhausted::Memory { what, limit_bytes: self.max_bytes, scope: self.scope };
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.max_bytes)
            })
            .map_err(|_| refused())?;
        if let Some(p) = &self.parent
            && let Err(e) = p.charge(what, bytes)
        {
            self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(e);
        }
        Ok(())
    }

    pub fn release(&self, bytes: u64) {
        let mut released = 0;
        let _ = self.used_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            released = bytes.min(used);
            Some(used - released)
        });
        if let Some(p) = &self.parent {
            p.release(released);
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        if let Some(p) = &self.parent {
            p.release(*self.used_bytes.get_mut());
        }
    }
}

/// What one transfer half may use.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Listing entries the source may send in one session (0: no limit).
    pub entries_max: u64,
    /// Memory for bookkeeping (and, charged by the caller, buffers); `None`: unbounded.
    pub budget: Option<Arc<Budget>>,
    /// End the session when nothing arrives on the control channel and no data moves for this
    /// long; `None`: wait as long as the peer stays connected.
    pub idle_timeout: Option<Duration>,
    /// A daemon's `--bwlimit`: one bucket shared by all its sessions, paced on what each sends
    /// and what each receives; `None`: no cap.
    pub pacer: Option<Pacer>,
}

impl Limits {
    /// No bounds: a user's own local transfer.
    pub fn none() -> Self {
        Limits::default()
    }

    pub fn charge(&self, what: &'static str, bytes: u64) -> Result<(), Exhausted> {
        match &self.budget {
            Some(b) => b.charge(what, bytes),
            None => Ok(()),
        }
    }

    /// The idle timeout this half applies: a paced session (its own `--bwlimit` or this side's
    /// cap) moves a chunk at most every [`FRAME_SECS_MAX`] s by design, so its limit is at
    /// least [`PACED_IDLE_MIN`] — the user's limit must not look like a dead peer.
    pub fn idle_timeout_for(&self, params: &SessionParams) -> Option<Duration> {
        let paced = params.bwlimit_bytes_per_s.is_some() || self.pacer.is_some();
        self.idle_timeout.map(|t| if paced { t.max(PACED_IDLE_MIN) } else { t })
    }

    /// What a sending half waits for: the session's own limit (`--bwlimit`, a bucket of its
    /// own) and this side's cap.
    pub fn pacers(&self, params: &SessionParams) -> Vec<Pacer> {
        params.bwlimit_bytes_per_s.map(Pacer::new).into_iter().chain(self.pacer.clone()).collect()
    }

    pub fn release(&self, bytes: u64) {
        if let Some(b) = &self.budget {
            b.release(bytes);
        }
    }

    /// Charges `bytes` for as long as `value` is held (released when the [`Held`] drops).
    pub fn hold<T>(&self, what: &'static str, bytes: u64, value: T) -> Result<Held<T>, Exhausted> {
        self.charge(what, bytes)?;
        Ok(Held { value, bytes, budget: self.budget.clone() })
    }
}

/// A value whose bytes are charged to a budget while it lives.
#[derive(Debug)]
pub struct Held<T> {
    pub value: T,
    bytes: u64,
    budget: Option<Arc<Budget>>,
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.bytes);
        }
    }
}

impl<T: PartialEq> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Held<T> {}

/// Tells when a half has heard nothing from its peer and moved no data for its idle timeout:
/// [`blitx_session::idle::Idle`] read with this process's clock.
#[derive(Debug)]
pub struct IdleClock {
    idle: blitx_session::idle::Idle,
    /// How often a waiting half looks at the data counters (an eighth of the limit).
    look_every: Option<Duration>,
}

/// A look at the counters at least this far apart, whatever the limit (a zero limit must not
/// make a waiting half spin).
const LOOK_EVERY_MIN: Duration = Duration::from_millis(10);

impl IdleClock {
    pub fn new(limit: Option<Duration>, progress: &Progress) -> Self {
        IdleClock {
            idle: blitx_session::idle::Idle::new(limit, Instant::now(), progress.moved()),
            look_every: limit.map(|l| (l / 8).max(LOOK_EVERY_MIN)),
        }
    }

    /// A message from the peer arrived.
    pub fn heard(&mut self) {
        self.idle.heard(Instant::now());
    }

    /// Called while waiting: `Some(limit in seconds)` once the timeout ran out.
    pub fn expired(&mut self, progress: &Progress) -> Option<u64> {
        self.idle.expired(Instant::now(), progress.moved())
    }

    /// The one timer a waiting half selects on besides its peer's messages and its cancel
    /// (never ready without a limit). It is ready when the limit runs out if nothing is heard,
    /// and every eighth of the limit before that: data moving announces itself to no one, so
    /// the counters are looked at often enough that the limit is measured from the last byte
    /// moved to within an eighth. A message heard after the timer was made only makes it early
    /// (the caller calls [`IdleClock::expired`], then makes a new one), never late.
    pub fn timer(&self) -> crossbeam_channel::Receiver<Instant> {
        match (self.idle.deadline(), self.look_every) {
            (Some(deadline), Some(every)) => {
                crossbeam_channel::at(deadline.min(Instant::now() + every))
            }
            _ => crossbeam_channel::never(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn charges_fit_both_budgets_and_return_on_drop() {
        let daemon = Budget::new("for the whole daemon", 100, None);
        let a = Budget::new("per session", 60, Some(Arc::clone(&daemon)));
        let b = Budget::new("per session", 60, Some(Arc::clone(&daemon)));
        a.charge("listing", 50).unwrap();
        assert!(matches!(a.charge("listing", 11), Err(Exhausted::Memory { limit_bytes: 60, .. })));
        // b fits its own budget, but not the daemon's.
        let e = b.charge("buffers", 55).unwrap_err();
        assert!(e.to_string().contains("100-byte"), "{e}");
        assert_eq!((b.used_bytes(), daemon.used_bytes()), (0, 50));
        a.release(20);
        assert_eq!(daemon.used_bytes(), 30);
        drop(a);
        assert_eq!(daemon.used_bytes(), 0);
        b.charge("buffers", 55).unwrap();
        assert_eq!(daemon.used_bytes(), 55);
    }

    #[test]
    fn a_paced_session_never_has_an_idle_timeout_below_twice_a_chunks_time() {
        let short = Limits { idle_timeout: Some(Duration::from_secs(1)), ..Limits::none() };
        let plain = SessionParams::default();
        let limited = SessionParams { bwlimit_bytes_per_s: Some(1 << 20), ..plain.clone() };
        assert_eq!(short.idle_timeout_for(&plain), Some(Duration::from_secs(1)));
        assert_eq!(short.idle_timeout_for(&limited), Some(PACED_IDLE_MIN));
        let capped = Limits { pacer: Some(Pacer::new(1 << 20)), ..short.clone() };
        assert_eq!(capped.idle_timeout_for(&plain), Some(PACED_IDLE_MIN));
        let long = Limits { idle_timeout: Some(Duration::from_secs(300)), ..capped };
        assert_eq!(long.idle_timeout_for(&limited), Some(Duration::from_secs(300)));
        assert_eq!(Limits::none().idle_timeout_for(&limited), None);
    }

    #[test]
    fn the_idle_timer_is_never_ready_without_a_limit_and_ready_within_one_with_one() {
        let progress = Progress::default();
        let none = IdleClock::new(None, &progress);
        assert!(none.timer().recv_timeout(Duration::from_millis(20)).is_err());
        let limit = Duration::from_millis(80);
        let mut clock = IdleClock::new(Some(limit), &progress);
        let start = Instant::now();
        let mut looks = 0;
        while clock.expired(&progress).is_none() {
            clock.timer().recv().unwrap();
            looks += 1;
        }
        assert!(start.elapsed() >= limit);
        // An eighth of the limit apart: about eight looks, not one per 100 ms tick.
        assert!((1..=16).contains(&looks), "{looks} looks");
    }
}
