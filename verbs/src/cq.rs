//! Completion queues: polling (busy, the default) and waiting on a completion
//! channel (event mode), and the typed [`Completion`].
//!
//! Owns `ibv_cq` and `ibv_comp_channel`. QPs hold an `Arc<CompletionQueue>`,
//! so a CQ is destroyed only after every QP that uses it.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::device::Context;
use crate::error::{Error, Result};
use crate::sys::{self, ibv_comp_channel, ibv_cq, ibv_wc};
use crate::types::{WcStatus, imm_from_wire};

/// Completions read from the provider per `ibv_poll_cq` call (stack buffer).
const POLL_BATCH: usize = 32;
/// Empty polls before a busy-polling waiter yields its CPU once. Small on
/// purpose: with Soft-RoCE (and on oversubscribed cores) the "NIC" is kernel
/// work that needs this CPU; in the 2-vCPU lab, 64 spins per yield halved
/// loopback throughput under host load, 4 did not. `sched_yield` with nothing
/// else runnable returns at once, so hardware NICs lose little.
const SPINS_BEFORE_YIELD: u32 = 4;

/// How a CQ reports new completions. Serialized as `"busy-poll"` / `"event"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CqMode {
    /// Spin on `ibv_poll_cq` (lowest latency, burns a core while waiting).
    #[default]
    BusyPoll,
    /// Sleep on a completion channel between bursts.
    Event,
}

/// What a completion was for (`enum ibv_wc_opcode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WcOpcode {
    /// A SEND finished on the sender.
    Send,
    /// An RDMA WRITE (with or without immediate) finished on the sender.
    RdmaWrite,
    /// An RDMA READ finished.
    RdmaRead,
    /// A RECV consumed an incoming SEND.
    Recv,
    /// A RECV consumed the immediate of an incoming RDMA WRITE_WITH_IMM.
    RecvRdmaWithImm,
    /// Anything else, or the opcode of an error completion (not reported by
    /// the hardware then).
    #[default]
    Other,
}

impl WcOpcode {
    fn from_raw(raw: u32) -> Self {
        use rdma_sys::ibv_wc_opcode as op;
        match raw {
            op::IBV_WC_SEND => WcOpcode::Send,
            op::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            op::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            op::IBV_WC_RECV => WcOpcode::Recv,
            op::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
            _ => WcOpcode::Other,
        }
    }
}

/// One work completion, copied out of `ibv_wc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Completion {
    /// The `wr_id` given when posting.
    pub wr_id: u64,
    /// Success or the error status; see [`Completion::check`].
    pub status: WcStatus,
    /// What completed (only meaningful on success).
    pub opcode: WcOpcode,
    /// Bytes received (RECV, RECV_RDMA_WITH_IMM: the WRITE's length).
    pub byte_len: u32,
    /// Immediate data in host order, when the completion carries one.
    pub imm: Option<u32>,
    /// The local QP number.
    pub qp_num: u32,
    /// Provider-specific error detail.
    pub vendor_err: u32,
}

impl Completion {
    fn from_raw(wc: &ibv_wc) -> Self {
        let with_imm = wc.wc_flags & rdma_sys::ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0;
        let status = WcStatus(wc.status);
        // SAFETY: `imm_data` and `invalidated_rkey` are both u32, so reading
        // either member of the union is defined; it is used only with WITH_IMM.
        let imm_wire = unsafe { wc.imm_data_invalidated_rkey_union.imm_data };
        Completion {
            wr_id: wc.wr_id,
            status,
            opcode: if status.is_success() {
                WcOpcode::from_raw(wc.opcode)
            } else {
                WcOpcode::Other
            },
            byte_len: wc.byte_len,
            imm: with_imm.then(|| imm_from_wire(imm_wire)),
            qp_num: wc.qp_num,
            vendor_err: wc.vendor_err,
        }
    }

    /// True when the work request succeeded.
    pub fn is_ok(&self) -> bool {
        self.status.is_success()
    }

    /// `Ok` on success, else [`Error::WorkCompletion`] with the library's text
    /// for the status (`ibv_wc_status_str`).
    pub fn check(&self) -> Result<()> {
        if self.is_ok() {
            return Ok(());
        }
        let text = match sys::verbs() {
            Ok(verbs) => verbs.wc_status_text(self.status.0),
            Err(_) => self.status.name().to_owned(),
        };
        Err(Error::WorkCompletion {
            status: self.status,
            text,
            wr_id: self.wr_id,
            vendor_err: self.vendor_err,
        })
    }
}

/// A completion channel (`ibv_comp_channel`), non-blocking.
struct CompChannel {
    raw: NonNull<ibv_comp_channel>,
    ctx: Arc<Context>,
}

impl CompChannel {
    fn new(ctx: &Arc<Context>) -> Result<Self> {
        // SAFETY: the context is open.
        let raw = unsafe { (ctx.verbs().create_comp_channel)(ctx.as_ptr()) };
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::verbs("ibv_create_comp_channel", io::Error::last_os_error()))?;
        let channel = CompChannel { raw, ctx: Arc::clone(ctx) };
        let fd = channel.fd();
        // SAFETY: fcntl on the channel's own fd; O_NONBLOCK makes
        // ibv_get_cq_event return EAGAIN instead of blocking after a
        // spurious wake-up.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(Error::verbs(
                "fcntl(O_NONBLOCK) on the completion channel",
                io::Error::last_os_error(),
            ));
        }
        Ok(channel)
    }

    fn fd(&self) -> RawFd {
        // SAFETY: the channel is live; `fd` is immutable after creation.
        unsafe { (*self.raw.as_ptr()).fd }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once, after the CQ that used it
        // (CompletionQueue drops its channel field after destroying the CQ).
        let rc = unsafe { (self.ctx.verbs().destroy_comp_channel)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(error = %sys::rc_error(rc), "ibv_destroy_comp_channel failed");
        }
    }
}

/// A completion queue (`ibv_cq`).
pub struct CompletionQueue {
    raw: NonNull<ibv_cq>,
    depth: u32,
    mode: CqMode,
    ctx: Arc<Context>,
    /// Written by [`CqWake::wake`]; polled together with the channel.
    wake: Arc<WakeFd>,
    // Dropped after the CQ is destroyed (Drop::drop runs before fields drop).
    channel: Option<CompChannel>,
}

// SAFETY: ibv_poll_cq/ibv_req_notify_cq are thread-safe in rdma-core (the
// providers lock the CQ); the channel is only used through libibverbs calls.
unsafe impl Send for CompletionQueue {}
// SAFETY: see above.
unsafe impl Sync for CompletionQueue {}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("depth", &self.depth)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl CompletionQueue {
    /// Creates a CQ with room for at least `depth` completions. `depth` must
    /// cover every WR that can complete before it is polled (signalled sends
    /// plus receives of all QPs that use it), or the CQ overruns and the QPs
    /// go to the error state.
    pub fn new(ctx: &Arc<Context>, depth: u32, mode: CqMode) -> Result<Arc<Self>> {
        let max = ctx.limits().max_cqe;
        if depth == 0 || depth > max {
            return Err(Error::InvalidConfig {
                reason: format!("CQ depth {depth} outside 1..={max} for {}", ctx.name()),
            });
        }
        let wake = Arc::new(WakeFd::new()?);
        let channel = match mode {
            CqMode::BusyPoll => None,
            CqMode::Event => Some(CompChannel::new(ctx)?),
        };
        let channel_ptr = channel.as_ref().map_or(ptr::null_mut(), |c| c.raw.as_ptr());
        let cqe = libc::c_int::try_from(depth).unwrap_or(libc::c_int::MAX);
        // SAFETY: the context is open; the channel (if any) belongs to it.
        let raw =
            unsafe { (ctx.verbs().create_cq)(ctx.as_ptr(), cqe, ptr::null_mut(), channel_ptr, 0) };
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::verbs("ibv_create_cq", io::Error::last_os_error()))?;
        // SAFETY: the CQ is live; `cqe` holds the size actually allocated.
        let actual = unsafe { (*raw.as_ptr()).cqe };
        Ok(Arc::new(CompletionQueue {
            raw,
            depth: u32::try_from(actual).unwrap_or(depth),
            mode,
            ctx: Arc::clone(ctx),
            wake,
            channel,
        }))
    }

    /// The depth the provider allocated (at least the one requested).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Busy-poll or event mode.
    pub fn mode(&self) -> CqMode {
        self.mode
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_cq {
        self.raw.as_ptr()
    }

    /// Reads up to `out.len()` completions without waiting; returns how many.
    /// Error completions are returned like the others (check
    /// [`Completion::check`]); `Err` means the poll itself failed.
    pub fn poll(&self, out: &mut [Completion]) -> Result<usize> {
        // SAFETY: ibv_wc is plain old data; all-zero is valid.
        let mut raw: [ibv_wc; POLL_BATCH] = unsafe { mem::zeroed() };
        let mut filled = 0;
        while filled < out.len() {
            let want = (out.len() - filled).min(POLL_BATCH);
            // SAFETY: the CQ is live and `raw` has room for `want` entries.
            let n = unsafe { sys::poll_cq(self.as_ptr(), want as libc::c_int, raw.as_mut_ptr()) };
            if n < 0 {
                return Err(Error::verbs("ibv_poll_cq", sys::rc_error(n)));
            }
            let n = n as usize; // 0 <= n <= want
            for (slot, wc) in out[filled..].iter_mut().zip(&raw[..n]) {
                *slot = Completion::from_raw(wc);
            }
            filled += n;
            if n < want {
                break;
            }
        }
        Ok(filled)
    }

    /// Polls until at least one completion arrives or `timeout` passes
    /// (then returns 0). Busy-poll mode spins (yielding now and then); event
    /// mode arms the CQ and sleeps on the completion channel. A
    /// [`CqWake::wake`] also ends the wait with 0.
    pub fn poll_wait(&self, out: &mut [Completion], timeout: Duration) -> Result<usize> {
        self.poll_wait_until(out, Some(Instant::now() + timeout))
    }

    /// Polls until at least one completion arrives, [`CqWake::wake`] is
    /// called (from any thread) or `deadline` passes (`None`: no deadline);
    /// returns 0 in the last two cases, so the caller re-checks whatever it
    /// was woken for. Event mode arms the CQ and sleeps in `poll(2)` on both
    /// the completion channel and the CQ's wake eventfd, so the wake takes
    /// effect at once and an idle waiter costs no CPU. Busy-poll mode spins
    /// (yielding now and then) and sees a wake through an atomic flag.
    pub fn poll_wait_until(
        &self,
        out: &mut [Completion],
        deadline: Option<Instant>,
    ) -> Result<usize> {
        let mut spins = 0u32;
        loop {
            let n = self.poll(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(0);
            }
            match &self.channel {
                None => {
                    if self.wake.take_pending() {
                        return Ok(0);
                    }
                    spins += 1;
                    if spins.is_multiple_of(SPINS_BEFORE_YIELD) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                Some(channel) => {
                    self.arm()?;
                    // A completion that arrived before arming raises no event:
                    // poll once more before sleeping.
                    let n = self.poll(out)?;
                    if n > 0 {
                        return Ok(n);
                    }
                    match wait_fds(Some(channel.fd()), &self.wake, deadline)? {
                        Woke::Wake => return Ok(0),
                        Woke::Event => self.take_event(channel)?,
                        Woke::Nothing => {}
                    }
                }
            }
        }
    }

    /// A handle that wakes this CQ's waiters (see [`CqWake`]).
    pub fn waker(&self) -> CqWake {
        CqWake { inner: Arc::clone(&self.wake) }
    }

    /// `ibv_req_notify_cq(cq, 0)`: raise one event for the next completion.
    fn arm(&self) -> Result<()> {
        // SAFETY: the CQ is live.
        let rc = unsafe { sys::req_notify_cq(self.as_ptr(), false) };
        if rc != 0 {
            return Err(Error::verbs("ibv_req_notify_cq", sys::rc_error(rc)));
        }
        Ok(())
    }

    /// Consumes and acks the channel's event (the channel was readable).
    /// Spurious wake-ups are fine: the caller polls again.
    fn take_event(&self, channel: &CompChannel) -> Result<()> {
        let mut cq: *mut ibv_cq = ptr::null_mut();
        let mut cq_context: *mut libc::c_void = ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; out-pointers valid.
        let rc = unsafe {
            (self.ctx.verbs().get_cq_event)(channel.raw.as_ptr(), &mut cq, &mut cq_context)
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            return Err(Error::verbs("ibv_get_cq_event", err));
        }
        // Each event must be acked before the CQ is destroyed; ack at once.
        // SAFETY: `cq` is the CQ the event was for (this channel serves only
        // this CQ), and it is live.
        unsafe { (self.ctx.verbs().ack_cq_events)(cq, 1) };
        Ok(())
    }
}

/// Wakes whoever waits in [`CompletionQueue::poll_wait_until`] on one CQ,
/// without a completion: for cancellation (register `wake` with the session's
/// `Cancel::on_fire`) and stop requests. A CQ has no way in from user space
/// but completions, so the waiter sleeps in `poll(2)` on the completion
/// channel *and* this eventfd. A wake with nobody waiting is kept: the next
/// wait returns at once (with 0), later ones sleep again. Cheap to clone;
/// `wake` never blocks.
#[derive(Clone, Debug)]
pub struct CqWake {
    inner: Arc<WakeFd>,
}

impl CqWake {
    /// Ends the current (or the next) wait on the CQ with 0 completions.
    pub fn wake(&self) {
        self.inner.wake();
    }
}

/// A non-blocking eventfd and a flag that says a wake is pending (busy-poll
/// waiters read the flag, sleepers the fd).
#[derive(Debug)]
struct WakeFd {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl WakeFd {
    fn new() -> Result<Self> {
        // SAFETY: plain system call, no pointers.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(Error::verbs("eventfd (CQ wake)", io::Error::last_os_error()));
        }
        // SAFETY: `raw` was just returned by eventfd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(WakeFd { fd, pending: AtomicBool::new(false) })
    }

    fn wake(&self) {
        // One write per pending wake: the counter never grows past 1 per wait.
        if self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let one = 1u64;
        // SAFETY: writes the 8 bytes of a live u64 to our own eventfd. It can
        // fail only with EAGAIN (counter at its maximum: readable already), so
        // the wake is never lost.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// A busy-poll waiter consumes a pending wake (the fd may stay readable:
    /// the next sleep then returns once, early, which callers tolerate).
    fn take_pending(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }

    /// A sleeper found the fd readable: clear the flag, then drain the
    /// counter. In this order, a wake between the two writes again and is
    /// consumed by this read (its waiter is this one); a wake after the read
    /// leaves the fd readable for the next wait.
    fn drain(&self) {
        self.pending.store(false, Ordering::SeqCst);
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking
        // eventfd; EAGAIN (already drained) is harmless.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut count).cast(), 8) };
    }
}

/// What ended a [`wait_fds`].
#[derive(Debug, PartialEq, Eq)]
enum Woke {
    /// The completion channel has an event.
    Event,
    /// [`CqWake::wake`] was called (the wake was consumed).
    Wake,
    /// The deadline passed, or a signal interrupted the wait.
    Nothing,
}

/// Sleeps in `poll(2)` until the wake fd or the channel fd (if any) is
/// readable, or `deadline` (`None`: none). The wake is checked first, so a
/// cancelled waiter does not first drain a flood of completion events.
fn wait_fds(channel: Option<RawFd>, wake: &WakeFd, deadline: Option<Instant>) -> Result<Woke> {
    let timeout_ms = match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Woke::Nothing);
            }
            // rounded up, so a wait is never a spin
            let ms = left.as_micros().div_ceil(1000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    };
    let mut pfds = [
        libc::pollfd { fd: wake.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        // poll(2) ignores negative fds
        libc::pollfd { fd: channel.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: two valid pollfds, owned by this frame for the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(Woke::Nothing);
        }
        return Err(Error::verbs("poll(completion channel, CQ wake)", err));
    }
    if pfds[0].revents != 0 {
        wake.drain();
        return Ok(Woke::Wake);
    }
    if pfds[1].revents != 0 {
        return Ok(Woke::Event);
    }
    Ok(Woke::Nothing)
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; every QP using it holds an
        // Arc, so none is left, and every channel event was acked.
        let rc = unsafe { (self.ctx.verbs().destroy_cq)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(error = %sys::rc_error(rc), "ibv_destroy_cq failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wc(status: u32, opcode: u32, flags: u32, imm_wire: u32) -> ibv_wc {
        // SAFETY: ibv_wc is plain old data; all-zero is valid.
        let mut wc: ibv_wc = unsafe { mem::zeroed() };
        wc.wr_id = 42;
        wc.status = status;
        wc.opcode = opcode;
        wc.wc_flags = flags;
        wc.byte_len = 1 << 20;
        wc.imm_data_invalidated_rkey_union.imm_data = imm_wire;
        wc
    }

    #[test]
    fn a_wake_before_the_wait_is_kept_for_it_and_consumed() {
        let w = WakeFd::new().unwrap();
        w.wake();
        w.wake(); // coalesced
        assert_eq!(wait_fds(None, &w, None).unwrap(), Woke::Wake);
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(wait_fds(None, &w, Some(soon)).unwrap(), Woke::Nothing);
        assert!(Instant::now() >= soon, "a timed wait sleeps until its deadline");
        assert!(!w.take_pending());
    }

    #[test]
    fn a_blocked_wait_without_deadline_is_woken_at_once() {
        let w = Arc::new(WakeFd::new().unwrap());
        let sleeper = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || wait_fds(None, &w, None).unwrap())
        };
        // No sleep needed for correctness: whether the wake lands before or
        // during the wait, the wait returns Wake.
        let waker = CqWake { inner: Arc::clone(&w) };
        waker.wake();
        assert_eq!(sleeper.join().unwrap(), Woke::Wake);
        // a busy-poll waiter sees a wake through the flag
        waker.wake();
        assert!(w.take_pending());
        assert!(!w.take_pending());
    }

    #[test]
    fn recv_with_imm_decodes_host_order() {
        use rdma_sys::ibv_wc_opcode as op;
        let flags = rdma_sys::ibv_wc_flags::IBV_WC_WITH_IMM.0;
        let c = Completion::from_raw(&wc(0, op::IBV_WC_RECV_RDMA_WITH_IMM, flags, 7u32.to_be()));
        assert_eq!(c.opcode, WcOpcode::RecvRdmaWithImm);
        assert_eq!(c.imm, Some(7));
        assert_eq!(c.byte_len, 1 << 20);
        assert!(c.check().is_ok());
    }

    #[test]
    fn no_imm_flag_means_no_imm() {
        let c = Completion::from_raw(&wc(0, rdma_sys::ibv_wc_opcode::IBV_WC_RECV, 0, 99));
        assert_eq!(c.opcode, WcOpcode::Recv);
        assert_eq!(c.imm, None);
    }

    #[test]
    fn error_completion_maps_to_typed_error() {
        let c = Completion::from_raw(&wc(12, rdma_sys::ibv_wc_opcode::IBV_WC_SEND, 0, 0));
        assert_eq!(c.opcode, WcOpcode::Other);
        match c.check() {
            Err(Error::WorkCompletion { status, wr_id, text, .. }) => {
                assert_eq!(status, WcStatus::RETRY_EXC_ERR);
                assert_eq!(wr_id, 42);
                assert!(!text.is_empty());
            }
            other => panic!("expected WorkCompletion, got {other:?}"),
        }
    }
}
