//! Completion queues: polling (busy, the default) and waiting on a completion
//! channel (event mode), and the typed [`Completion`].
//!
//! Owns `ibv_cq` and `ibv_comp_channel`. QPs hold an `Arc<CompletionQueue>`,
//! so a CQ is destroyed only after every QP that uses it.

use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;
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
    /// mode arms the CQ and sleeps on the completion channel.
    pub fn poll_wait(&self, out: &mut [Completion], timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        loop {
            let n = self.poll(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            match &self.channel {
                None => {
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
                    self.wait_event(channel, deadline - now)?;
                }
            }
        }
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

    /// Sleeps until the channel is readable or `timeout`; consumes and acks
    /// the event. Spurious wake-ups are fine: the caller polls again.
    fn wait_event(&self, channel: &CompChannel, timeout: Duration) -> Result<()> {
        let mut pfd = libc::pollfd { fd: channel.fd(), events: libc::POLLIN, revents: 0 };
        let timeout_ms =
            libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(Error::verbs("poll(completion channel)", err));
        }
        if rc == 0 {
            return Ok(());
        }
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
