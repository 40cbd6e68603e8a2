//! Reliable-connected queue pairs: creation, the INIT → RTR → RTS transitions
//! from a peer's [`RemoteQpParams`], and posting work requests.
//!
//! Owns `ibv_qp`. A QP holds `Arc`s to its PD and CQs, so it is always
//! destroyed before them. Work requests name memory only through
//! [`LocalSlice`] (registered local memory; its owner is kept alive) and
//! [`RemoteSlice`] (a bounds-checked range of what the peer advertised).
//!
//! Why posting is safe (a safe `fn`, unlike rust-ibverbs' `post_send`): the
//! device may read or write a WR's local memory until the WR completes or is
//! flushed, which this layer cannot observe (completions are polled
//! elsewhere). So every post hands the owners of the slices it names
//! (registration + memory, see `pd_mr`) to the QP, which holds them until
//! `ibv_destroy_qp` returned: after that no WR of the QP can touch memory, and
//! only then can the memory be deregistered and unmapped. Which slot of a
//! pool the device may still read is the pool's business (`pool_mr`'s
//! `PostedLease` gives up the lease's bytes while it is posted).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::mem;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cq::CompletionQueue;
use crate::error::{Error, QueueKind, Result};
use crate::pd_mr::{Keep, LocalSlice, ProtectionDomain, RemoteSlice};
use crate::sys::{self, ibv_qp, ibv_qp_attr, ibv_qp_init_attr, ibv_recv_wr, ibv_send_wr, ibv_sge};
use crate::types::{Access, Gid, LinkLayer, Mtu, PortState, imm_to_wire};

/// Work requests linked into one `ibv_post_*` call (stack arrays); longer
/// slices are posted in several chains.
pub const CHAIN_MAX: usize = 16;
/// Most local SGEs one [`RdmaWrite`] may gather (the transport uses two:
/// payload and frame header). Also bounded by the QP's `max_send_sge`.
pub const WRITE_SGE_MAX: usize = 4;
/// PSNs and QP numbers are 24-bit.
const PSN_MASK: u32 = 0x00ff_ffff;

/// Transport timers and retry counts for RTR/RTS. The defaults are the
/// values verified on Soft-RoCE and common on hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpTimers {
    /// RNR NAK timer code the responder advertises (12 = 0.64 ms).
    pub min_rnr_timer: u8,
    /// Local ACK timeout code: 4.096 µs × 2^timeout (14 ≈ 67 ms).
    pub timeout: u8,
    /// Transport retries before `IBV_WC_RETRY_EXC_ERR`.
    pub retry_cnt: u8,
    /// RNR retries (7 = retry forever).
    pub rnr_retry: u8,
}

impl Default for QpTimers {
    fn default() -> Self {
        QpTimers { min_rnr_timer: 12, timeout: 14, retry_cnt: 7, rnr_retry: 7 }
    }
}

impl QpTimers {
    /// One try's local ACK timeout: 4.096 µs × 2^`timeout`.
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_nanos(4096u64 << self.timeout.min(31))
    }

    /// How long a QP retries an unanswered work request before it fails with
    /// `IBV_WC_RETRY_EXC_ERR`: 1 + `retry_cnt` ACK timeouts (`retry_cnt` 7
    /// means "forever" on Soft-RoCE).
    pub fn retries_give_up_after(&self) -> Duration {
        self.ack_timeout() * (u32::from(self.retry_cnt) + 1)
    }
}

/// How to create a QP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QpConfig {
    /// The device port (1-based).
    pub port_num: u8,
    /// Source GID index; `None` picks the port's preferred one (RoCE v2 +
    /// IPv4-mapped first).
    pub gid_index: Option<u32>,
    /// Send queue depth (outstanding WRITE/SEND work requests).
    pub max_send_wr: u32,
    /// Receive queue depth (posted RECVs).
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Largest inline SEND payload.
    pub max_inline_bytes: u32,
    /// What the peer may do to this side's memory through this QP.
    pub access: Access,
    /// RTR/RTS timers.
    pub timers: QpTimers,
}

impl Default for QpConfig {
    fn default() -> Self {
        QpConfig {
            port_num: 1,
            gid_index: None,
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_bytes: 64,
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            timers: QpTimers::default(),
        }
    }
}

/// What one side tells the other to connect an RC QP pair. A QP's own values
/// come from [`QueuePair::endpoint`]; the peer's arrive over the control
/// channel and go to [`QueuePair::connect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteQpParams {
    /// QP number (24 bits).
    pub qpn: u32,
    /// Initial packet sequence number (24 bits) of that side's send queue.
    pub psn: u32,
    /// That side's source GID (the destination GID for this side).
    pub gid: Gid,
    /// That side's GID index (informational; indices are per device).
    pub gid_index: u32,
    /// That side's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// That side's active MTU; the path MTU is the smaller of both.
    pub mtu: Mtu,
}

impl RemoteQpParams {
    /// Rejects values a well-behaved peer cannot send.
    pub fn validate(&self, link_layer: LinkLayer) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidRemote { reason });
        if self.qpn == 0 || self.qpn > PSN_MASK {
            return bad(format!("QP number {:#x} is not a 24-bit number above 0", self.qpn));
        }
        if self.psn > PSN_MASK {
            return bad(format!("PSN {:#x} exceeds 24 bits", self.psn));
        }
        if link_layer == LinkLayer::Ethernet && self.gid.is_zero() {
            return bad("RoCE needs the peer's GID, got ::".into());
        }
        if link_layer != LinkLayer::Ethernet && self.lid == 0 && self.gid.is_zero() {
            return bad("InfiniBand needs the peer's LID or GID".into());
        }
        Ok(())
    }
}

/// The QP state as this wrapper drove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Created, before INIT (only during creation).
    Reset,
    /// RECVs may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Moved to the error state; outstanding WRs are flushed.
    Error,
}

impl QpState {
    fn from_u8(raw: u8) -> Self {
        match raw {
            0 => QpState::Reset,
            1 => QpState::Init,
            2 => QpState::Rtr,
            3 => QpState::Rts,
            _ => QpState::Error,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            QpState::Reset => 0,
            QpState::Init => 1,
            QpState::Rtr => 2,
            QpState::Rts => 3,
            QpState::Error => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            QpState::Reset => "RESET",
            QpState::Init => "INIT",
            QpState::Rtr => "RTR",
            QpState::Rts => "RTS",
            QpState::Error => "ERROR",
        }
    }
}

/// The capacities the provider granted (at least those requested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Inline payload limit.
    pub max_inline_bytes: u32,
}

/// One RDMA WRITE_WITH_IMM: `local` is copied to `remote`, then the peer's
/// next RECV completes with `imm` (`IBV_WC_RECV_RDMA_WITH_IMM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteWithImm {
    /// Returned in this side's completion.
    pub wr_id: u64,
    /// Source bytes (this side's registered memory).
    pub local: LocalSlice,
    /// Destination (the peer's memory); must be at least `local`'s length.
    pub remote: RemoteSlice,
    /// Immediate data in host order (converted to network order here).
    pub imm: u32,
    /// Whether this WR produces a completion on this side. Unsignalled WRs
    /// still occupy the send queue until a later signalled WR completes.
    pub signaled: bool,
}

/// One RDMA WRITE, with or without immediate data, gathering up to
/// [`WRITE_SGE_MAX`] local pieces into one contiguous remote range.
///
/// - `local` may be empty: a zero-length WRITE moves no data (the responder
///   does not check the rkey for it) and still needs an ACK, which makes it
///   a cheap liveness probe, or with `imm` a data-less notification.
/// - With `imm`, the peer's next RECV completes with
///   `IBV_WC_RECV_RDMA_WITH_IMM`, `byte_len` = the total length and the
///   immediate in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RdmaWrite<'a> {
    /// Returned in this side's completion.
    pub wr_id: u64,
    /// Source pieces (this side's registered memory), written back to back.
    pub local: &'a [LocalSlice],
    /// Destination; must be at least the sum of `local`'s lengths.
    pub remote: RemoteSlice,
    /// Immediate data in host order (`None`: a plain RDMA WRITE).
    pub imm: Option<u32>,
    /// Whether this WR produces a completion on this side.
    pub signaled: bool,
}

impl RdmaWrite<'_> {
    /// Total bytes the WRITE moves.
    pub fn len_bytes(&self) -> u64 {
        self.local.iter().map(|s| u64::from(s.len_bytes())).sum()
    }
}

/// The payload of a SEND.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendPayload<'a> {
    /// Bytes in registered memory, read by the device after posting.
    Registered(LocalSlice),
    /// Bytes copied into the WR at post time (at most the QP's inline limit);
    /// the slice may be reused as soon as the call returns.
    Inline(&'a [u8]),
}

/// One SEND (e.g. a credit return).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendRequest<'a> {
    /// Returned in this side's completion.
    pub wr_id: u64,
    /// What to send.
    pub payload: SendPayload<'a>,
    /// Whether this WR produces a completion on this side.
    pub signaled: bool,
}

/// One RECV: zero-SGE (consumes only the immediate of a WRITE_WITH_IMM) or
/// with a buffer for an incoming SEND.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvRequest {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Where an incoming SEND lands; `None` for immediates only.
    pub buf: Option<LocalSlice>,
}

/// A reliable-connected queue pair (`ibv_qp`, `IBV_QPT_RC`).
pub struct QueuePair {
    raw: NonNull<ibv_qp>,
    pd: Arc<ProtectionDomain>,
    // The CQs must outlive the QP; held only to keep them alive.
    _send_cq: Arc<CompletionQueue>,
    _recv_cq: Arc<CompletionQueue>,
    endpoint: RemoteQpParams,
    port_num: u8,
    link_layer: LinkLayer,
    caps: QpCaps,
    access: Access,
    timers: QpTimers,
    // Atomic so that `set_error` works through `&self`: a transport moves a
    // QP that other threads post to into the error state (abort, injected
    // link failure). Transitions are INIT → RTR → RTS (through `&mut self`)
    // and anything → ERROR.
    state: AtomicU8,
    remote: Option<RemoteQpParams>,
    /// The owners of every slice ever posted here (one entry per owner, so
    /// as many as the distinct regions the caller posts from: a handful),
    /// dropped only after `ibv_destroy_qp` (Drop runs before the fields).
    attached: Mutex<Vec<Keep>>,
}

// SAFETY: ibv_post_send/ibv_post_recv/ibv_modify_qp are thread-safe in
// rdma-core (providers lock the queues); `state` is an atomic.
unsafe impl Send for QueuePair {}
// SAFETY: see above.
unsafe impl Sync for QueuePair {}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("endpoint", &self.endpoint)
            .field("state", &self.state())
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

fn random_psn() -> u32 {
    // RandomState is seeded from the OS RNG per process and per instance;
    // the PSN only has to differ between connections, not be secret.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    (hasher.finish() as u32) & PSN_MASK
}

impl QueuePair {
    /// Creates an RC QP and moves it to INIT, so RECVs can be pre-posted
    /// before [`QueuePair::connect`]. Fails with [`Error::PortDown`] unless
    /// the port is ACTIVE.
    pub fn create_rc(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        cfg: &QpConfig,
    ) -> Result<Self> {
        let ctx = pd.context();
        let limits = ctx.limits();
        for (name, value, max) in [
            ("max_send_wr", cfg.max_send_wr, limits.max_qp_wr),
            ("max_recv_wr", cfg.max_recv_wr, limits.max_qp_wr),
            ("max_send_sge", cfg.max_send_sge, limits.max_sge),
            ("max_recv_sge", cfg.max_recv_sge, limits.max_sge),
        ] {
            if value == 0 || value > max {
                return Err(Error::InvalidConfig {
                    reason: format!("{name} = {value} outside 1..={max} for {}", ctx.name()),
                });
            }
        }
        let port = ctx.query_port(cfg.port_num)?;
        if port.state != PortState::Active {
            return Err(Error::PortDown {
                device: ctx.name().to_owned(),
                port: cfg.port_num,
                state: port.state,
            });
        }
        let gid_index = cfg.gid_index.or(port.chosen_gid_index);
        let gid = gid_index.and_then(|i| port.gids.iter().find(|e| e.index == i)).map(|e| e.gid);
        let (gid_index, gid) = match (gid_index, gid) {
            (Some(index), Some(gid)) => (index, gid),
            _ if port.link_layer != LinkLayer::Ethernet => (0, Gid::ZERO),
            _ => return Err(Error::NoGid { device: ctx.name().to_owned(), port: cfg.port_num }),
        };
        let mtu = port.active_mtu.unwrap_or(Mtu::Mtu1024);

        // SAFETY: ibv_qp_init_attr is plain old data; all-zero is valid.
        let mut init: ibv_qp_init_attr = unsafe { mem::zeroed() };
        init.send_cq = send_cq.as_ptr();
        init.recv_cq = recv_cq.as_ptr();
        init.qp_type = rdma_sys::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        init.cap.max_send_wr = cfg.max_send_wr;
        init.cap.max_recv_wr = cfg.max_recv_wr;
        init.cap.max_send_sge = cfg.max_send_sge;
        init.cap.max_recv_sge = cfg.max_recv_sge;
        init.cap.max_inline_data = cfg.max_inline_bytes;
        // SAFETY: PD and CQs belong to the same open context and are kept alive
        // by the Arcs stored below; `init` is valid for the call.
        let raw = unsafe { (ctx.verbs().create_qp)(pd.as_ptr(), &mut init) };
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::verbs("ibv_create_qp", io::Error::last_os_error()))?;
        // SAFETY: the QP is live; qp_num is immutable.
        let qpn = unsafe { (*raw.as_ptr()).qp_num };
        let caps = QpCaps {
            max_send_wr: init.cap.max_send_wr,
            max_recv_wr: init.cap.max_recv_wr,
            max_send_sge: init.cap.max_send_sge,
            max_recv_sge: init.cap.max_recv_sge,
            max_inline_bytes: init.cap.max_inline_data,
        };
        let mut qp = QueuePair {
            raw,
            pd: Arc::clone(pd),
            _send_cq: Arc::clone(send_cq),
            _recv_cq: Arc::clone(recv_cq),
            endpoint: RemoteQpParams { qpn, psn: random_psn(), gid, gid_index, lid: port.lid, mtu },
            port_num: cfg.port_num,
            link_layer: port.link_layer,
            caps,
            access: cfg.access,
            timers: cfg.timers,
            state: AtomicU8::new(QpState::Reset.as_u8()),
            remote: None,
            attached: Mutex::new(Vec::new()),
        };
        qp.modify_to_init()?; // on error `qp` drops and destroys the QP
        Ok(qp)
    }

    /// What the peer needs to connect to this QP (send it over the control
    /// channel; the peer passes it to its own `connect`).
    pub fn endpoint(&self) -> RemoteQpParams {
        self.endpoint
    }

    /// The QP number.
    pub fn qpn(&self) -> u32 {
        self.endpoint.qpn
    }

    /// The granted queue capacities.
    pub fn caps(&self) -> QpCaps {
        self.caps
    }

    /// The current state.
    pub fn state(&self) -> QpState {
        QpState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: QpState) {
        self.state.store(state.as_u8(), Ordering::Release);
    }

    /// The link layer of its port.
    pub fn link_layer(&self) -> LinkLayer {
        self.link_layer
    }

    /// The peer it is connected to.
    pub fn remote(&self) -> Option<&RemoteQpParams> {
        self.remote.as_ref()
    }

    /// The PD (for registering memory this QP will use).
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    fn modify(&self, attr: &mut ibv_qp_attr, mask: u32, op: &'static str) -> Result<()> {
        let verbs = self.pd.context().verbs();
        // SAFETY: the QP is live and `attr` is a valid, fully initialised
        // attribute struct for the bits in `mask`.
        let rc = unsafe { (verbs.modify_qp)(self.raw.as_ptr(), attr, mask as libc::c_int) };
        if rc != 0 {
            return Err(Error::verbs(op, sys::rc_error(rc)));
        }
        Ok(())
    }

    fn modify_to_init(&mut self) -> Result<()> {
        use rdma_sys::ibv_qp_attr_mask as m;
        // SAFETY: ibv_qp_attr is plain old data; all-zero is valid.
        let mut attr: ibv_qp_attr = unsafe { mem::zeroed() };
        attr.qp_state = rdma_sys::ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = self.port_num;
        attr.qp_access_flags = self.access.bits();
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_PKEY_INDEX.0
            | m::IBV_QP_PORT.0
            | m::IBV_QP_ACCESS_FLAGS.0;
        self.modify(&mut attr, mask, "ibv_modify_qp(INIT)")?;
        self.set_state(QpState::Init);
        Ok(())
    }

    /// Connects to the peer: INIT → RTR (with the peer's QPN, PSN, GID and the
    /// smaller MTU) → RTS (with this side's PSN). Only valid in INIT.
    pub fn connect(&mut self, remote: &RemoteQpParams) -> Result<()> {
        use rdma_sys::ibv_qp_attr_mask as m;
        if self.state() != QpState::Init {
            return Err(self.wrong_state("connect", "INIT"));
        }
        remote.validate(self.link_layer)?;
        let t = self.timers;

        // SAFETY: ibv_qp_attr is plain old data; all-zero is valid.
        let mut rtr: ibv_qp_attr = unsafe { mem::zeroed() };
        rtr.qp_state = rdma_sys::ibv_qp_state::IBV_QPS_RTR;
        rtr.path_mtu = self.endpoint.mtu.min(remote.mtu).raw();
        rtr.dest_qp_num = remote.qpn;
        rtr.rq_psn = remote.psn;
        rtr.max_dest_rd_atomic = 1;
        rtr.min_rnr_timer = t.min_rnr_timer;
        rtr.ah_attr.dlid = remote.lid;
        rtr.ah_attr.sl = 0;
        rtr.ah_attr.src_path_bits = 0;
        rtr.ah_attr.port_num = self.port_num;
        // RoCE always routes by GID; IB only when the peer sent one.
        if self.link_layer == LinkLayer::Ethernet || !remote.gid.is_zero() {
            rtr.ah_attr.is_global = 1;
            rtr.ah_attr.grh.dgid.raw = remote.gid.to_bytes();
            rtr.ah_attr.grh.sgid_index =
                u8::try_from(self.endpoint.gid_index).map_err(|_| Error::InvalidConfig {
                    reason: format!(
                        "GID index {} does not fit sgid_index (u8)",
                        self.endpoint.gid_index
                    ),
                })?;
            rtr.ah_attr.grh.hop_limit = 64;
            rtr.ah_attr.grh.flow_label = 0;
            rtr.ah_attr.grh.traffic_class = 0;
        }
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_AV.0
            | m::IBV_QP_PATH_MTU.0
            | m::IBV_QP_DEST_QPN.0
            | m::IBV_QP_RQ_PSN.0
            | m::IBV_QP_MAX_DEST_RD_ATOMIC.0
            | m::IBV_QP_MIN_RNR_TIMER.0;
        self.modify(&mut rtr, mask, "ibv_modify_qp(RTR)")?;
        self.set_state(QpState::Rtr);
        self.remote = Some(*remote);

        // SAFETY: as above.
        let mut rts: ibv_qp_attr = unsafe { mem::zeroed() };
        rts.qp_state = rdma_sys::ibv_qp_state::IBV_QPS_RTS;
        rts.timeout = t.timeout;
        rts.retry_cnt = t.retry_cnt;
        rts.rnr_retry = t.rnr_retry;
        rts.sq_psn = self.endpoint.psn;
        rts.max_rd_atomic = 1;
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_TIMEOUT.0
            | m::IBV_QP_RETRY_CNT.0
            | m::IBV_QP_RNR_RETRY.0
            | m::IBV_QP_SQ_PSN.0
            | m::IBV_QP_MAX_QP_RD_ATOMIC.0;
        self.modify(&mut rts, mask, "ibv_modify_qp(RTS)")?;
        self.set_state(QpState::Rts);
        Ok(())
    }

    /// Moves the QP to the error state: every outstanding WR completes with
    /// `IBV_WC_WR_FLUSH_ERR`, so their buffers can be reclaimed after polling.
    /// The peer is not told; it notices when its next work request to this
    /// QP runs out of transport retries (`IBV_WC_RETRY_EXC_ERR`). Callable
    /// while other threads post (they then get [`Error::WrongState`] or a
    /// flushed completion).
    pub fn set_error(&self) -> Result<()> {
        use rdma_sys::ibv_qp_attr_mask as m;
        // SAFETY: ibv_qp_attr is plain old data; all-zero is valid.
        let mut attr: ibv_qp_attr = unsafe { mem::zeroed() };
        attr.qp_state = rdma_sys::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut attr, m::IBV_QP_STATE.0, "ibv_modify_qp(ERR)")?;
        self.set_state(QpState::Error);
        Ok(())
    }

    /// Keeps the owners of `slices` alive until this QP is destroyed (before
    /// they are posted, so a WR never names memory the QP does not hold).
    fn attach<'s>(&self, slices: impl IntoIterator<Item = &'s LocalSlice>) {
        let mut held = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        for s in slices {
            // data pointers only: two `dyn` pointers to one owner may carry
            // different vtable pointers
            let owner = Arc::as_ptr(s.keep()).cast::<()>();
            if !held.iter().any(|k| std::ptr::eq(Arc::as_ptr(k).cast::<()>(), owner)) {
                held.push(Arc::clone(s.keep()));
            }
        }
    }

    /// How many owners of posted memory this QP holds (tests).
    pub fn attached_owners(&self) -> usize {
        self.attached.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn wrong_state(&self, op: &'static str, needed: &'static str) -> Error {
        Error::WrongState { qpn: self.qpn(), op, needed, state: self.state().name() }
    }

    /// Posts RDMA WRITE_WITH_IMM requests, linked in chains of up to
    /// [`CHAIN_MAX`]. On error, the requests before `posted` were posted.
    pub fn post_write_with_imm(&self, wrs: &[WriteWithImm]) -> Result<()> {
        if self.state() != QpState::Rts {
            return Err(self.wrong_state("post_write_with_imm", "RTS"));
        }
        for w in wrs {
            if w.local.len_bytes() > w.remote.len_bytes() {
                return Err(Error::OutOfBounds {
                    what: "remote slice of a WRITE",
                    offset: 0,
                    len_bytes: u64::from(w.local.len_bytes()),
                    region_bytes: u64::from(w.remote.len_bytes()),
                });
            }
        }
        self.attach(wrs.iter().map(|w| &w.local));
        let mut done = 0;
        for chunk in wrs.chunks(CHAIN_MAX) {
            // SAFETY: plain old data (pointers, integers, unions of those).
            let mut sges: [ibv_sge; CHAIN_MAX] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut chain: [ibv_send_wr; CHAIN_MAX] = unsafe { mem::zeroed() };
            for (i, w) in chunk.iter().enumerate() {
                sges[i] = ibv_sge {
                    addr: w.local.addr(),
                    length: w.local.len_bytes(),
                    lkey: w.local.lkey(),
                };
                let wr = &mut chain[i];
                wr.wr_id = w.wr_id;
                wr.num_sge = 1;
                wr.opcode = rdma_sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                wr.send_flags = signaled_flag(w.signaled);
                wr.imm_data_invalidated_rkey_union.imm_data = imm_to_wire(w.imm);
                wr.wr.rdma =
                    rdma_sys::rdma_t { remote_addr: w.remote.addr(), rkey: w.remote.rkey() };
            }
            self.post_send_chain(&mut chain[..chunk.len()], &mut sges, done, wrs.len())?;
            done += chunk.len();
        }
        Ok(())
    }

    /// Posts RDMA WRITEs (gathering several local pieces each, with or
    /// without immediate), linked in chains of up to [`CHAIN_MAX`]. On error,
    /// the requests before `posted` were posted.
    pub fn post_writes(&self, wrs: &[RdmaWrite<'_>]) -> Result<()> {
        if self.state() != QpState::Rts {
            return Err(self.wrong_state("post_writes", "RTS"));
        }
        let sge_max = WRITE_SGE_MAX.min(self.caps.max_send_sge as usize);
        for w in wrs {
            if w.local.len() > sge_max {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "a WRITE with {} SGEs exceeds the QP's limit of {sge_max}",
                        w.local.len()
                    ),
                });
            }
            if w.len_bytes() > u64::from(w.remote.len_bytes()) {
                return Err(Error::OutOfBounds {
                    what: "remote slice of a WRITE",
                    offset: 0,
                    len_bytes: w.len_bytes(),
                    region_bytes: u64::from(w.remote.len_bytes()),
                });
            }
        }
        self.attach(wrs.iter().flat_map(|w| w.local));
        let mut done = 0;
        for chunk in wrs.chunks(CHAIN_MAX) {
            // SAFETY: plain old data (pointers, integers, unions of those).
            let mut sges: [[ibv_sge; WRITE_SGE_MAX]; CHAIN_MAX] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut chain: [ibv_send_wr; CHAIN_MAX] = unsafe { mem::zeroed() };
            for (i, w) in chunk.iter().enumerate() {
                for (sge, piece) in sges[i].iter_mut().zip(w.local) {
                    *sge = ibv_sge {
                        addr: piece.addr(),
                        length: piece.len_bytes(),
                        lkey: piece.lkey(),
                    };
                }
                let wr = &mut chain[i];
                wr.wr_id = w.wr_id;
                wr.num_sge = w.local.len() as i32; // <= WRITE_SGE_MAX, checked above
                wr.send_flags = signaled_flag(w.signaled);
                wr.opcode = match w.imm {
                    Some(imm) => {
                        wr.imm_data_invalidated_rkey_union.imm_data = imm_to_wire(imm);
                        rdma_sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM
                    }
                    None => rdma_sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                };
                wr.wr.rdma =
                    rdma_sys::rdma_t { remote_addr: w.remote.addr(), rkey: w.remote.rkey() };
            }
            let len = chunk.len();
            let base = chain.as_mut_ptr();
            for (i, sg_list) in sges.iter_mut().enumerate().take(len) {
                // SAFETY: `i < len <= CHAIN_MAX`, so every offset is in bounds
                // of `chain`; `chain` and `sges` outlive the post call below.
                unsafe {
                    let wr = base.add(i);
                    (*wr).sg_list = sg_list.as_mut_ptr();
                    (*wr).next = if i + 1 < len { base.add(i + 1) } else { ptr::null_mut() };
                }
            }
            let mut bad: *mut ibv_send_wr = ptr::null_mut();
            // SAFETY: the QP is live and in RTS; every SGE comes from a
            // LocalSlice, i.e. a bounds-checked range of registered memory
            // whose owner this QP now holds until it is destroyed (`attach`
            // above), so the device cannot reach freed memory; `chain` and
            // `sges` outlive the call.
            let rc = unsafe { sys::post_send(self.raw.as_ptr(), base, &mut bad) };
            if rc != 0 {
                let posted = done + chain_index(base, bad, len);
                return Err(post_error(QueueKind::Send, rc, posted, wrs.len()));
            }
            done += len;
        }
        Ok(())
    }

    /// Posts one SEND (registered or inline payload).
    pub fn post_send(&self, req: SendRequest<'_>) -> Result<()> {
        self.post_sends(std::slice::from_ref(&req))
    }

    /// Posts SENDs, linked in chains of up to [`CHAIN_MAX`].
    pub fn post_sends(&self, reqs: &[SendRequest<'_>]) -> Result<()> {
        if self.state() != QpState::Rts {
            return Err(self.wrong_state("post_send", "RTS"));
        }
        for r in reqs {
            if let SendPayload::Inline(bytes) = r.payload
                && bytes.len() > self.caps.max_inline_bytes as usize
            {
                return Err(Error::InlineTooLarge {
                    len_bytes: bytes.len(),
                    max_bytes: self.caps.max_inline_bytes,
                });
            }
        }
        self.attach(reqs.iter().filter_map(|r| match &r.payload {
            SendPayload::Registered(s) => Some(s),
            SendPayload::Inline(_) => None,
        }));
        let mut done = 0;
        for chunk in reqs.chunks(CHAIN_MAX) {
            // SAFETY: plain old data.
            let mut sges: [ibv_sge; CHAIN_MAX] = unsafe { mem::zeroed() };
            // SAFETY: plain old data.
            let mut chain: [ibv_send_wr; CHAIN_MAX] = unsafe { mem::zeroed() };
            for (i, r) in chunk.iter().enumerate() {
                let mut flags = signaled_flag(r.signaled);
                sges[i] = match &r.payload {
                    SendPayload::Registered(s) => {
                        ibv_sge { addr: s.addr(), length: s.len_bytes(), lkey: s.lkey() }
                    }
                    SendPayload::Inline(bytes) => {
                        flags |= rdma_sys::ibv_send_flags::IBV_SEND_INLINE.0;
                        // length <= max_inline_bytes (checked above) fits u32
                        ibv_sge { addr: bytes.as_ptr() as u64, length: bytes.len() as u32, lkey: 0 }
                    }
                };
                let wr = &mut chain[i];
                wr.wr_id = r.wr_id;
                wr.num_sge = i32::from(sges[i].length > 0);
                wr.opcode = rdma_sys::ibv_wr_opcode::IBV_WR_SEND;
                wr.send_flags = flags;
            }
            self.post_send_chain(&mut chain[..chunk.len()], &mut sges, done, reqs.len())?;
            done += chunk.len();
        }
        Ok(())
    }

    /// Points WR `i` at SGE `i`, links `chain` and posts it. `done`/`total`
    /// are for the error report.
    fn post_send_chain(
        &self,
        chain: &mut [ibv_send_wr],
        sges: &mut [ibv_sge; CHAIN_MAX],
        done: usize,
        total: usize,
    ) -> Result<()> {
        let len = chain.len();
        let base = chain.as_mut_ptr();
        let sge_base = sges.as_mut_ptr();
        for i in 0..len {
            // SAFETY: `i < len <= CHAIN_MAX`, so every offset is in bounds of
            // `chain` and `sges`; both outlive the post call below.
            unsafe {
                let wr = base.add(i);
                (*wr).sg_list = sge_base.add(i);
                (*wr).next = if i + 1 < len { base.add(i + 1) } else { ptr::null_mut() };
            }
        }
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is live and in RTS; every WR's SGE points into
        // registered memory whose owner this QP holds until it is destroyed
        // (`attach` in the callers), or at inline bytes that live for this
        // call (copied into the WQE by the provider); `chain` and `sges`
        // outlive the call.
        let rc = unsafe { sys::post_send(self.raw.as_ptr(), base, &mut bad) };
        if rc == 0 {
            return Ok(());
        }
        let posted = done + chain_index(base, bad, chain.len());
        Err(post_error(QueueKind::Send, rc, posted, total))
    }

    /// Posts RECVs (zero-SGE or with a buffer), linked in chains of up to
    /// [`CHAIN_MAX`]. Valid from INIT on, so they can be pre-posted before
    /// `connect`.
    pub fn post_recv(&self, reqs: &[RecvRequest]) -> Result<()> {
        if !matches!(self.state(), QpState::Init | QpState::Rtr | QpState::Rts) {
            return Err(self.wrong_state("post_recv", "INIT, RTR or RTS"));
        }
        self.attach(reqs.iter().filter_map(|r| r.buf.as_ref()));
        let mut done = 0;
        for chunk in reqs.chunks(CHAIN_MAX) {
            // SAFETY: plain old data.
            let mut sges: [ibv_sge; CHAIN_MAX] = unsafe { mem::zeroed() };
            // SAFETY: plain old data.
            let mut chain: [ibv_recv_wr; CHAIN_MAX] = unsafe { mem::zeroed() };
            for (i, r) in chunk.iter().enumerate() {
                chain[i].wr_id = r.wr_id;
                if let Some(buf) = &r.buf {
                    sges[i] =
                        ibv_sge { addr: buf.addr(), length: buf.len_bytes(), lkey: buf.lkey() };
                    chain[i].sg_list = &mut sges[i];
                    chain[i].num_sge = 1;
                }
            }
            let base = chain.as_mut_ptr();
            for i in 1..chunk.len() {
                // SAFETY: in bounds; `chain` outlives the post call.
                chain[i - 1].next = unsafe { base.add(i) };
            }
            let mut bad: *mut ibv_recv_wr = ptr::null_mut();
            // SAFETY: the QP is live; every buffer is registered memory whose
            // owner this QP holds until it is destroyed (`attach` above), and
            // `chain`/`sges` outlive the call.
            let rc = unsafe { sys::post_recv(self.raw.as_ptr(), base, &mut bad) };
            if rc != 0 {
                let posted = done + chain_index(base, bad, chunk.len());
                return Err(post_error(QueueKind::Recv, rc, posted, reqs.len()));
            }
            done += chunk.len();
        }
        Ok(())
    }
}

fn signaled_flag(signaled: bool) -> u32 {
    if signaled { rdma_sys::ibv_send_flags::IBV_SEND_SIGNALED.0 } else { 0 }
}

/// Index of `bad` in the chain starting at `base` (the first WR not posted).
fn chain_index<T>(base: *mut T, bad: *mut T, len: usize) -> usize {
    if bad.is_null() {
        return 0;
    }
    let offset = (bad as usize).wrapping_sub(base as usize) / mem::size_of::<T>();
    offset.min(len)
}

fn post_error(queue: QueueKind, rc: libc::c_int, posted: usize, requested: usize) -> Error {
    let source = sys::rc_error(rc);
    if source.raw_os_error() == Some(libc::ENOMEM) {
        Error::QueueFull { queue, posted, requested }
    } else {
        Error::Post { queue, posted, requested, source }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created in create_rc, destroyed once; the PD and CQs are
        // kept alive by this struct's Arcs until after this returns, and so
        // is every posted memory owner (`attached`): once this returns, no WR
        // of the QP can reach memory.
        let rc = unsafe { (self.pd.context().verbs().destroy_qp)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(qpn = self.endpoint.qpn, error = %sys::rc_error(rc), "ibv_destroy_qp failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_timeout_codes() {
        let t = QpTimers::default();
        assert_eq!(t.ack_timeout(), Duration::from_nanos(4096 << 14)); // ≈ 67.1 ms
        assert_eq!(t.retries_give_up_after(), t.ack_timeout() * 8);
        let long = QpTimers { timeout: 16, retry_cnt: 6, ..t };
        assert_eq!(long.ack_timeout().as_micros(), 268_435);
    }

    fn params() -> RemoteQpParams {
        RemoteQpParams {
            qpn: 17,
            psn: 0x12_3456,
            gid: "::ffff:10.77.0.2".parse().unwrap(),
            gid_index: 1,
            lid: 0,
            mtu: Mtu::Mtu4096,
        }
    }

    #[test]
    fn remote_params_json_round_trip() {
        let p = params();
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"::ffff:10.77.0.2\""), "{json}");
        assert!(json.contains("\"mtu\":4096"), "{json}");
        assert_eq!(serde_json::from_str::<RemoteQpParams>(&json).unwrap(), p);
    }

    #[test]
    fn remote_params_validation() {
        assert!(params().validate(LinkLayer::Ethernet).is_ok());
        let bad_qpn = RemoteQpParams { qpn: 1 << 24, ..params() };
        assert!(matches!(bad_qpn.validate(LinkLayer::Ethernet), Err(Error::InvalidRemote { .. })));
        let zero_qpn = RemoteQpParams { qpn: 0, ..params() };
        assert!(zero_qpn.validate(LinkLayer::Ethernet).is_err());
        let bad_psn = RemoteQpParams { psn: 1 << 24, ..params() };
        assert!(bad_psn.validate(LinkLayer::Ethernet).is_err());
        let no_gid = RemoteQpParams { gid: Gid::ZERO, ..params() };
        assert!(no_gid.validate(LinkLayer::Ethernet).is_err());
        let ib_lid = RemoteQpParams { gid: Gid::ZERO, lid: 5, ..params() };
        assert!(ib_lid.validate(LinkLayer::InfiniBand).is_ok());
        let bad_mtu = r#"{"qpn":1,"psn":1,"gid":"::1","gid_index":0,"lid":0,"mtu":1500}"#;
        assert!(serde_json::from_str::<RemoteQpParams>(bad_mtu).is_err());
    }

    #[test]
    fn psn_is_24_bit_and_varies() {
        let psns: Vec<u32> = (0..8).map(|_| random_psn()).collect();
        assert!(psns.iter().all(|&p| p <= PSN_MASK));
        assert!(psns.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn chain_index_finds_the_failed_wr() {
        let mut chain = [0u64; 4];
        let base = chain.as_mut_ptr();
        // SAFETY: in bounds.
        let third = unsafe { base.add(2) };
        assert_eq!(chain_index(base, third, 4), 2);
        assert_eq!(chain_index(base, ptr::null_mut(), 4), 0);
    }

    #[test]
    fn enomem_on_post_is_queue_full() {
        assert!(matches!(
            post_error(QueueKind::Send, libc::ENOMEM, 3, 8),
            Error::QueueFull { queue: QueueKind::Send, posted: 3, requested: 8 }
        ));
        assert!(matches!(post_error(QueueKind::Recv, libc::EINVAL, 0, 1), Error::Post { .. }));
    }
}
