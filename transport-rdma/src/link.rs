//! Plumbing both halves of the transport share: opening the device, the
//! session's first fault and how it becomes a `TransportError`, the CQ
//! polling loop with its idle back-off, and the wake-up that lets the
//! session's `Cancel` end a poller's sleep at once.
//!
//! Owns no verbs object; the sender and receiver modules do.

use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use blitx_core::cancel::{Cancel, FirstFailure};
use blitx_core::frame::FrameError;
use blitx_core::transport::TransportError;

use crate::config::RdmaConfig;
use crate::counters::{Counters, add};
use blitx_verbs::{
    Completion, CompletionQueue, Context, CqMode, Error, PortState, QpTimers, QueuePair,
    RemoteQpParams, Result,
};

/// Completions taken per poll.
pub(crate) const POLL_BATCH: usize = 32;
/// After a local abort, how long the abort notices get to leave before the
/// QPs are moved to the error state (which would flush them).
pub(crate) const ABORT_GRACE: Duration = Duration::from_millis(250);
/// Busy-poll: empty polls before yielding the CPU once (see `cq.rs`: on 2
/// vCPUs with Soft-RoCE the "NIC" is kernel work that needs this CPU).
const SPINS_BEFORE_YIELD: u32 = 4;
/// Busy-poll: after this long without a completion the poller stops spinning
/// and sleeps on the CQ's completion channel until the next one, so an idle
/// session costs no CPU (perftest's busy-poll, then blocking). Spinning at
/// all is for latency: a completion is seen within a poll instead of after a
/// channel event, an interrupt and a wake-up (~5-20 µs each, per burst). A
/// 100 Gb/s link with 4 MiB frames completes a WRITE every ~330 µs, so a busy
/// session never gets to sleep. Cancellation does not depend on it: a
/// sleeping poller is woken by its CQ's [`CqWake`](blitx_verbs::CqWake).
const IDLE_SPIN: Duration = Duration::from_millis(2);

/// Locks a mutex; a panic while holding one of the transport's locks leaves
/// only counters and queues behind, which the fault path discards anyway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A verbs error shared by every caller that reports the session's fault
/// (`Error` itself is not `Clone`: it carries `io::Error`s).
#[derive(Debug, Clone)]
pub(crate) struct SharedError(pub(crate) Arc<Error>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The typed verbs error behind a `TransportError` of this transport, if it
/// has one (for example `Error::WorkCompletion` with the status text when a
/// WRITE failed). `TransportError::Io { source, .. }` carries it.
pub fn rdma_error(err: &TransportError) -> Option<&Error> {
    match err {
        TransportError::Io { source, .. } => {
            source.get_ref()?.downcast_ref::<SharedError>().map(|e| &*e.0)
        }
        _ => None,
    }
}

/// The first thing that went wrong in a session; every later call reports it.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// `abort()` on this side.
    Cancelled,
    /// The peer sent its abort notice.
    PeerAborted { detail: String },
    /// Nothing progressed for the stall timeout.
    Stalled { idle_secs: u64 },
    /// A verbs call or a work completion failed.
    Verbs { op: &'static str, peer: String, error: Arc<Error> },
    /// The peer broke the protocol.
    Protocol { peer: String, detail: String },
    /// The peer sent a frame that breaks the core's rules (`ReceiveRules`).
    BadFrame { peer: String, error: FrameError },
}

impl Fault {
    pub(crate) fn verbs(op: &'static str, peer: &str, error: Error) -> Self {
        Fault::Verbs { op, peer: peer.to_owned(), error: Arc::new(error) }
    }

    pub(crate) fn protocol(peer: &str, detail: impl fmt::Display) -> Self {
        Fault::Protocol { peer: peer.to_owned(), detail: detail.to_string() }
    }

    pub(crate) fn to_transport(&self) -> TransportError {
        match self {
            Fault::Cancelled => TransportError::Cancelled,
            Fault::PeerAborted { detail } => TransportError::PeerGone { detail: detail.clone() },
            Fault::Stalled { idle_secs } => TransportError::Stalled { idle_secs: *idle_secs },
            Fault::Verbs { op, peer, error } => TransportError::Io {
                op,
                peer: peer.clone(),
                source: io::Error::other(SharedError(Arc::clone(error))),
            },
            Fault::Protocol { peer, detail } => {
                TransportError::Protocol { peer: peer.clone(), detail: detail.clone() }
            }
            Fault::BadFrame { peer, error } => {
                TransportError::BadFrame { peer: peer.clone(), source: error.clone() }
            }
        }
    }

    /// Whether the peer should be told (it already knows when it aborted).
    pub(crate) fn notify_peer(&self) -> bool {
        !matches!(self, Fault::PeerAborted { .. })
    }
}

/// The session's first fault (first one wins: the core's [`FirstFailure`], which fires the
/// session's [`Cancel`] and so wakes every blocked caller), and whether the side that raised it
/// has posted its abort notices yet.
#[derive(Debug)]
pub(crate) struct FaultSlot {
    first: FirstFailure<Fault>,
    /// Set once the notices are posted; `notices_posted` is notified then.
    notices_done: Mutex<bool>,
    notices_posted: Condvar,
}

impl Default for FaultSlot {
    fn default() -> Self {
        FaultSlot {
            first: FirstFailure::new(Cancel::new()),
            notices_done: Mutex::new(false),
            notices_posted: Condvar::new(),
        }
    }
}

impl FaultSlot {
    /// Records `fault` unless one is already recorded; true if it was.
    pub(crate) fn raise(&self, fault: Fault) -> bool {
        let shown = format!("{fault:?}");
        let first = self.first.fail(fault);
        if first {
            tracing::debug!(target: "blit::rdma", fault = %shown, "session fault");
        }
        first
    }

    /// Fired by the first fault.
    pub(crate) fn cancel(&self) -> &Cancel {
        self.first.cancel()
    }

    /// The thread that raised the fault has posted its abort notices (or had
    /// none to post).
    pub(crate) fn notices_done(&self) {
        *lock(&self.notices_done) = true;
        self.notices_posted.notify_all();
    }

    /// Waits up to `limit` for [`FaultSlot::notices_done`]. A thread that
    /// moves the QPs to the error state after a fault calls this first: QPs
    /// moved earlier flush the notices, and the peer learns of the fault only
    /// from its transport retries (~1.9 s) instead of at once.
    /// Woken by [`FaultSlot::notices_done`]; `limit` is a deadline, not a poll.
    pub(crate) fn wait_notices(&self, limit: Duration) -> bool {
        let done = lock(&self.notices_done);
        let (done, _) = self
            .notices_posted
            .wait_timeout_while(done, limit, |done| !*done)
            .unwrap_or_else(|p| p.into_inner());
        *done
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.first.is_failed()
    }

    pub(crate) fn get(&self) -> Option<Fault> {
        self.first.get()
    }

    pub(crate) fn check(&self) -> std::result::Result<(), TransportError> {
        self.first.check(Fault::to_transport)
    }
}

/// Opens the configured device and picks the port.
pub(crate) fn open_device(cfg: &RdmaConfig) -> Result<(Arc<Context>, u8)> {
    let ctx = match &cfg.device {
        Some(name) => Context::open(name)?,
        None => Context::open_first_active()?,
    };
    let port = match cfg.port_num {
        Some(port) => port,
        None => ctx.first_active_port()?.ok_or_else(|| Error::PortDown {
            device: ctx.name().to_owned(),
            port: 1,
            state: PortState::Down,
        })?,
    };
    Ok((ctx, port))
}

/// Longest silence before a side that is waiting on its peer probes it.
const KEEPALIVE_MAX: Duration = Duration::from_secs(2);

/// How long a side waits in silence before probing the peer: a quarter of
/// the stall timeout, at most 2 s. A probe to a peer that is gone fails after
/// the transport retries (~1.9 s, see [`TRANSPORT_ACK_TIMEOUT`]), before the
/// stall timeout.
pub(crate) fn keepalive_after(stall_timeout: Duration) -> Duration {
    (stall_timeout / 4).min(KEEPALIVE_MAX)
}

/// Transport retries of the session's QPs: 6, not the verbs layer's 7.
/// Soft-RoCE's completer treats `retry_cnt = 7` like `rnr_retry = 7`, "retry
/// forever" (`if (qp->comp.retry_cnt != 7) qp->comp.retry_cnt--;` in
/// rxe_comp.c), so a dead peer would never fail a WRITE or SEND there and only
/// the stall timeout would notice.
pub(crate) const TRANSPORT_RETRIES: u8 = 6;

/// Local ACK timeout code of the session's QPs: 4.096 µs × 2^16 ≈ 268 ms per
/// try, so 7 tries (1 + [`TRANSPORT_RETRIES`]) take ~1.9 s on any device.
/// perftest's 14 (67 ms) is shorter than one 4 MiB WRITE takes on Soft-RoCE
/// under a software-emulated CPU (~70 ms): rxe's retransmit timer then fired
/// about once per WRITE while ACKs were still being processed, and every
/// spurious retry re-sent ~30 packets (64-76 retries and 2,000-2,800 duplicate
/// packets per 256 MiB, ~3% of the NIC's packets, for blit and `ib_write_bw`
/// alike). With 16 it fires ~15 times, with 18 ~4 (rxe hw_counters
/// `completer_retry_err` / `duplicate_request`, docs/rdma.md). NCCL and UCX
/// use ACK timeouts of about a second on hardware too; 16 keeps a dead peer's
/// detection under 2 s.
pub(crate) const TRANSPORT_ACK_TIMEOUT: u8 = 16;

/// The QP timers of the transport's QPs.
pub(crate) fn transport_timers() -> QpTimers {
    QpTimers { retry_cnt: TRANSPORT_RETRIES, timeout: TRANSPORT_ACK_TIMEOUT, ..QpTimers::default() }
}

/// Wakes whoever sleeps on `cq` (a poller thread) when `cancel` fires: the
/// CQ's eventfd is polled together with its completion channel (see the
/// verbs crate's [`CqWake`](blitx_verbs::CqWake)), so the poller sees the fault at once instead of
/// at its next completion or timer.
pub(crate) fn wake_on_cancel(cq: &CompletionQueue, cancel: &Cancel) {
    let wake = cq.waker();
    cancel.on_fire(move || wake.wake());
}

/// How errors name the connection of one QP.
pub(crate) fn peer_name(device: &str, local: &QueuePair, remote: &RemoteQpParams) -> String {
    format!("RDMA {device} qp {} <-> {} qp {}", local.qpn(), remote.gid, remote.qpn)
}

/// A busy-poll or event-mode polling loop step. The CQ must have been
/// created with a completion channel ([`CqMode::Event`] at the verbs layer)
/// whatever the session's mode: busy-poll spins only while completions flow
/// and sleeps on the channel once idle.
#[derive(Debug)]
pub(crate) struct Poller {
    mode: CqMode,
    spins: u32,
    empty_since: Option<Instant>,
}

impl Poller {
    pub(crate) fn new(mode: CqMode) -> Self {
        Poller { mode, spins: 0, empty_since: None }
    }

    /// One poll: returns the completions read. 0 after a spin or a yield
    /// (busy-poll, not idle yet), or after sleeping on the channel until
    /// `until` (`None`: no deadline) or until the CQ's [`CqWake`](blitx_verbs::CqWake) was woken
    /// (cancellation, stop). Callers re-check their flags and clocks on 0.
    pub(crate) fn poll(
        &mut self,
        cq: &CompletionQueue,
        out: &mut [Completion],
        counters: &Counters,
        until: Option<Instant>,
    ) -> Result<usize> {
        let n = match self.mode {
            CqMode::BusyPoll => {
                let n = cq.poll(out)?;
                if n == 0 {
                    let since = *self.empty_since.get_or_insert_with(Instant::now);
                    self.spins = self.spins.wrapping_add(1);
                    if since.elapsed() >= IDLE_SPIN {
                        cq.poll_wait_until(out, until)?
                    } else {
                        if self.spins.is_multiple_of(SPINS_BEFORE_YIELD) {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                        0
                    }
                } else {
                    n
                }
            }
            CqMode::Event => cq.poll_wait_until(out, until)?,
        };
        if n > 0 {
            self.empty_since = None;
            add(&counters.completions, n as u64);
        } else {
            add(&counters.empty_polls, 1);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_verbs::WcStatus;

    #[test]
    fn keepalive_is_well_below_the_stall_timeout() {
        assert_eq!(keepalive_after(Duration::from_secs(30)), KEEPALIVE_MAX);
        assert_eq!(keepalive_after(Duration::from_secs(4)), Duration::from_secs(1));
        assert!(transport_timers().retry_cnt < 7, "7 means forever on Soft-RoCE");
        // Seven tries of the ACK timeout stay well inside the 8 s stall timeout of the
        // conformance suite's dead-peer tests, with the 2 s keepalive before them.
        let detect = transport_timers().retries_give_up_after();
        assert!(detect > Duration::from_secs(1) && detect < Duration::from_secs(3), "{detect:?}");
    }

    #[test]
    fn first_fault_wins_and_maps_to_transport_errors() {
        let slot = FaultSlot::default();
        assert!(slot.check().is_ok());
        assert!(slot.raise(Fault::Stalled { idle_secs: 3 }));
        assert!(!slot.raise(Fault::Cancelled));
        assert!(matches!(slot.check(), Err(TransportError::Stalled { idle_secs: 3 })));
        assert!(!slot.wait_notices(Duration::from_millis(20)), "no notices posted yet");
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                slot.notices_done();
            });
            assert!(slot.wait_notices(Duration::from_secs(10)));
        });
        assert!(matches!(Fault::Cancelled.to_transport(), TransportError::Cancelled));
        let gone = Fault::PeerAborted { detail: "x".into() }.to_transport();
        assert!(matches!(gone, TransportError::PeerGone { .. }));
        assert!(!Fault::PeerAborted { detail: "x".into() }.notify_peer());
        let p = Fault::protocol("peer", "bad credit").to_transport();
        assert!(matches!(p, TransportError::Protocol { .. }));
    }

    #[test]
    fn work_completion_errors_stay_typed_through_transport_error() {
        let wc = Error::WorkCompletion {
            status: WcStatus::RETRY_EXC_ERR,
            text: "transport retry counter exceeded".into(),
            wr_id: 1,
            vendor_err: 0,
        };
        let fault = Fault::verbs("RDMA WRITE_WITH_IMM", "RDMA rxe0 qp 1 <-> ::1 qp 2", wc);
        // every caller gets the same typed error
        for _ in 0..2 {
            let err = fault.to_transport();
            let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(text.contains("RDMA WRITE_WITH_IMM failed on RDMA rxe0"), "{text}");
            assert!(text.contains("transport retry counter exceeded"), "{text}");
            match rdma_error(&err) {
                Some(Error::WorkCompletion { status, .. }) => {
                    assert_eq!(*status, WcStatus::RETRY_EXC_ERR)
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(rdma_error(&TransportError::Cancelled).is_none());
    }
}
