//! The sending half: readers fill leases of a registered pool, `send` posts
//! one WRITE_WITH_IMM per frame ([payload lease, 32-byte header] → the start
//! of a credited receiver slot, `imm` = slot), and a progress thread polls
//! completions (releasing leases) and credits (freeing slots).
//!
//! Owns the sender's QPs, CQ, pool registration, header ring and control
//! receive buffers. Buffer lifetime is structural: a lease is posted only as
//! the verbs crate's `PostedLease` (no access to its bytes, the slot kept out
//! of the pool), which sits in its QP's in-flight queue until a completion
//! at or after it was polled (or the QP is destroyed), so its slot cannot be
//! reused while the NIC may still read it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blitx_core::frame::FrameHeader;
use blitx_core::transport::{
    Frame, FrameSender, Payload, PayloadPref, TransportError, TransportStats, check_outgoing,
};
use blitx_core::{BufLease, BufferPool};
use blitx_verbs::{
    Access, Completion, CompletionQueue, Context, CqMode, Error, LocalSlice, OwnedRegion,
    PostedLease, QpConfig, QueuePair, RdmaWrite, RecvRequest, RegisteredPool, RemoteSlice, Result,
    WcOpcode,
};

use crate::config::{RdmaConfig, ReceiverInfo, SenderInfo};
use crate::counters::{Counters, RdmaCounters, add};
use crate::domain::RdmaDomain;
use crate::link::{
    ABORT_GRACE, Fault, FaultSlot, POLL_BATCH, Poller, keepalive_after, lock, peer_name,
    transport_timers, wake_on_cancel,
};
use crate::window::{Blocked, Grant, SenderWindow};
use crate::wire::{CONTROL_BYTES, Control, HEADER_BYTES, Imm, WrKind, parse_wr_id, wr_id};

/// Spacing of header-ring entries (one cache line each).
const HEADER_STRIDE_BYTES: usize = 64;
/// How often the progress thread looks at its clocks (stall, keepalive, an
/// unsignalled tail to retire) while no completion arrives. A timer for those
/// deadlines only: cancellation and stop wake the thread at once (the CQ's
/// wake), and completions end its sleep as they arrive.
const STALL_CHECK: Duration = Duration::from_millis(50);

const _: () = assert!(HEADER_BYTES <= HEADER_STRIDE_BYTES);

/// A sender before it is connected: QPs in INIT with control RECVs posted,
/// the pool registered. Send [`SenderInfo`] to the receiver and call
/// [`SenderSetup::connect`] with its [`ReceiverInfo`].
#[derive(Debug)]
pub struct SenderSetup {
    cfg: RdmaConfig,
    info: SenderInfo,
    sq_depth: u32,
    recv_depth: u32,
    // Field order is drop order: QP → CQ → MRs (+ pool) → context (the PD is
    // held by the QPs and the MRs).
    qps: Vec<QueuePair>,
    cq: Arc<CompletionQueue>,
    headers: OwnedRegion,
    control: OwnedRegion,
    pool: RegisteredPool,
    ctx: Arc<Context>,
}

impl SenderSetup {
    /// Opens the device, registers a pool of `cfg.pool_slots` buffers of
    /// `chunk_bytes` (readers fill them), creates `cfg.qps` RC QPs and
    /// pre-posts their control RECVs. `cfg.slots` is the largest receiver
    /// ring this sender accepts (it sizes the queues). Errors with
    /// [`Error::is_unavailable`] mean "no RDMA here": fall back to TCP.
    pub fn new(cfg: &RdmaConfig) -> Result<(SenderSetup, SenderInfo)> {
        cfg.validate()?;
        Self::in_domain(&RdmaDomain::open(cfg, 0)?, cfg)
    }

    /// Like [`SenderSetup::new`], in an open domain: its device and PD, and a
    /// pool it kept from an earlier session when one has this shape. The
    /// pool is registered one slot at a time after the first, in the
    /// background: [`SenderSetup::pool`] hands out slots as they are ready.
    pub fn in_domain(domain: &RdmaDomain, cfg: &RdmaConfig) -> Result<(SenderSetup, SenderInfo)> {
        cfg.validate()?;
        let (ctx, port_num, pd) = (Arc::clone(domain.ctx()), domain.port_num(cfg), domain.pd());
        let sq_depth = cfg.sender_sq_depth(cfg.slots);
        let recv_depth = RdmaConfig::recv_depth(cfg.slots);
        let cq_depth = cfg.qps * (sq_depth + recv_depth);
        let cq = CompletionQueue::new(&ctx, cq_depth, CqMode::Event)?; // see link::Poller
        let pool = domain.sender_pool(cfg)?;
        let n = cfg.qps as usize;
        let headers =
            OwnedRegion::new(pd, n * sq_depth as usize * HEADER_STRIDE_BYTES, Access::NONE)?;
        let control =
            OwnedRegion::new(pd, n * recv_depth as usize * CONTROL_BYTES, Access::LOCAL_WRITE)?;
        let qp_cfg = QpConfig {
            port_num,
            gid_index: cfg.gid_index,
            max_send_wr: sq_depth,
            max_recv_wr: recv_depth,
            max_send_sge: 2,
            max_recv_sge: 1,
            max_inline_bytes: 0,
            access: Access::NONE, // the receiver never touches this side's memory
            timers: transport_timers(),
        };
        let mut qps = Vec::with_capacity(n);
        for q in 0..n {
            let qp = QueuePair::create_rc(pd, &cq, &cq, &qp_cfg)?;
            let recvs = (0..recv_depth as usize)
                .map(|i| {
                    let buf = q * recv_depth as usize + i;
                    let slice = control.slice(buf * CONTROL_BYTES, CONTROL_BYTES)?;
                    Ok(RecvRequest {
                        wr_id: wr_id(WrKind::ControlRecv, q as u8, buf as u64),
                        buf: Some(slice),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            qp.post_recv(&recvs)?;
            qps.push(qp);
        }
        let info = SenderInfo {
            qps: qps.iter().map(QueuePair::endpoint).collect(),
            chunk_bytes: cfg.chunk_bytes,
        };
        let setup = SenderSetup {
            cfg: cfg.clone(),
            info: info.clone(),
            sq_depth,
            recv_depth,
            qps,
            cq,
            headers,
            control,
            pool,
            ctx,
        };
        Ok((setup, info))
    }

    /// What to send to the receiver.
    pub fn info(&self) -> &SenderInfo {
        &self.info
    }

    /// The pool readers fill (available before connecting, e.g. to start
    /// reading early).
    pub fn pool(&self) -> &BufferPool {
        self.pool.pool()
    }

    /// Validates the receiver's info (peer input), connects every QP and
    /// starts the progress thread. Nothing is written until the receiver's
    /// first credits arrive (after its own `connect`).
    pub fn connect(mut self, peer: &ReceiverInfo) -> Result<RdmaSender> {
        peer.validate(&self.cfg)?;
        if peer.slots > self.cfg.slots {
            return Err(Error::InvalidRemote {
                reason: format!(
                    "the receiver's ring has {} slots; this sender was set up for at most {}",
                    peer.slots, self.cfg.slots
                ),
            });
        }
        for (qp, remote) in self.qps.iter_mut().zip(&peer.qps) {
            qp.connect(remote)?;
        }
        let peers: Vec<String> = self
            .qps
            .iter()
            .zip(&peer.qps)
            .map(|(qp, remote)| peer_name(self.ctx.name(), qp, remote))
            .collect();
        let n = self.qps.len();
        let window = SenderWindow::new(n, peer.slots, self.sq_depth, self.cfg.signal_interval);
        let state = SendState {
            window,
            inflight: (0..n).map(|_| VecDeque::with_capacity(self.sq_depth as usize)).collect(),
            headers: self.headers,
            notices_posted: false,
            waiters: 0,
        };
        let shared = Arc::new(SendShared {
            qps: std::mem::take(&mut self.qps),
            cq: Arc::clone(&self.cq),
            turns: (0..n).map(|_| PostTurn::default()).collect(),
            state: Mutex::new(state),
            wake: Condvar::new(),
            control: self.control,
            pool: self.pool,
            ctx: self.ctx,
            cfg: self.cfg.clone(),
            remote: peer.clone(),
            peers,
            sq_depth: u64::from(self.sq_depth),
            recv_depth: self.recv_depth,
            fault: FaultSlot::default(),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            thread_running: AtomicBool::new(true),
            logged: AtomicBool::new(false),
            data_frames: AtomicU64::new(0),
            break_after_frames: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            first_post_ns: AtomicU64::new(0),
        });
        // The progress thread sleeps on the CQ: the session's cancel wakes it.
        wake_on_cancel(&shared.cq, shared.fault.cancel());
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("rdma-send-progress".into())
                .spawn(blitx_core::placer::worker(
                    blitx_core::placer::WorkerRole::RdmaSend,
                    move || shared.progress_loop(),
                ))
                .map_err(|e| Error::verbs("spawn the RDMA send progress thread", e))?
        };
        Ok(RdmaSender { shared, thread: Mutex::new(Some(thread)) })
    }
}

#[derive(Debug)]
struct SendState {
    window: SenderWindow,
    /// Per QP, the posted lease of every outstanding WRITE in posting order
    /// (`None` for header-only frames and notices).
    inflight: Vec<VecDeque<Option<PostedLease>>>,
    /// Per QP, `sq_depth` header entries; WR `seq` uses entry `seq % sq_depth`,
    /// free because at most `sq_depth` WRs are outstanding (the window).
    headers: OwnedRegion,
    notices_posted: bool,
    /// Callers blocked in `send`/`finish` waiting for the window.
    waiters: usize,
}

#[derive(Debug)]
struct SendShared {
    // Field order is drop order: QPs → CQ → in-flight leases and the header
    // MR (in `state`) → control MR → pool MR and pool → context (the PD,
    // held by the QPs and MRs, goes with the last of them).
    qps: Vec<QueuePair>,
    cq: Arc<CompletionQueue>,
    /// Per QP, the posting turn: WRs reach each send queue in the order the
    /// window numbered them. A QP's turn is held across the post itself,
    /// which can be slow (Soft-RoCE does the NIC's work inside
    /// `ibv_post_send`), while `state` is not: the progress thread keeps
    /// retiring WRITEs and applying credits meanwhile, and another QP's post
    /// runs at the same time. Lock order: a turn, then `state`; a thread
    /// holding `state` only `try_lock`s a turn.
    turns: Vec<PostTurn>,
    state: Mutex<SendState>,
    wake: Condvar,
    control: OwnedRegion,
    pool: RegisteredPool,
    ctx: Arc<Context>,
    cfg: RdmaConfig,
    remote: ReceiverInfo,
    peers: Vec<String>,
    sq_depth: u64,
    recv_depth: u32,
    fault: FaultSlot,
    counters: Counters,
    stop: AtomicBool,
    finished: AtomicBool,
    thread_running: AtomicBool,
    logged: AtomicBool,
    data_frames: AtomicU64,
    break_after_frames: AtomicU64,
    started: Instant,
    /// When the first data WRITE was posted (0: none yet), for `data_ns`.
    first_post_ns: AtomicU64,
}

/// A data WRITE prepared under the window lock, posted after releasing it.
#[derive(Debug)]
struct PreparedWrite {
    qp: usize,
    wr_id: u64,
    sges: [LocalSlice; 2],
    sge_count: usize,
    remote: RemoteSlice,
    imm: u32,
    signaled: bool,
    payload_len: usize,
}

/// What [`SendShared::wait_grant`] hands back: the window lock and the grant
/// (`None`: every QP already sent its End frame).
type Granted<'a> = (MutexGuard<'a, SendState>, Option<Grant>);

/// The posting order of one QP: `next` is the `seq` of the next WR to hand
/// to the NIC; the thread that holds WR `seq` waits for `next == seq`, marks
/// the turn `posting`, lets go of the mutex for the post itself (slow on
/// Soft-RoCE), then advances `next` and notifies `turn`.
#[derive(Debug, Default)]
struct PostTurn {
    next: Mutex<TurnState>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct TurnState {
    next: u64,
    /// WR `next` is being handed to the NIC right now.
    posting: bool,
}

impl PostTurn {
    /// The turn's state once no post is running on it, within `limit` (a
    /// deadline; woken by the poster's notify), or `None`.
    fn idle_within(&self, limit: Duration) -> Option<MutexGuard<'_, TurnState>> {
        let st = lock(&self.next);
        let (st, _) = self
            .turn
            .wait_timeout_while(st, limit, |t| t.posting)
            .unwrap_or_else(|p| p.into_inner());
        (!st.posting).then_some(st)
    }
}

/// Tracks how long one caller has waited for the window.
struct WaitClock {
    since: Option<Instant>,
}

impl WaitClock {
    fn new() -> Self {
        WaitClock { since: None }
    }

    /// Starts (or continues) a wait; `Err` once it exceeded `limit`.
    fn tick(&mut self, limit: Duration) -> Result<(), Fault> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() > limit {
            return Err(Fault::Stalled { idle_secs: limit.as_secs() });
        }
        Ok(())
    }

    /// What is left of `limit` (at least 1 ms, so a wait with it is never a spin).
    fn left(&self, limit: Duration) -> Duration {
        let spent = self.since.map_or(Duration::ZERO, |s| s.elapsed());
        limit.saturating_sub(spent).max(Duration::from_millis(1))
    }

    fn finish(self, counters: &Counters) {
        if let Some(since) = self.since {
            add(&counters.send_waits, 1);
            add(&counters.send_wait_ns, u64::try_from(since.elapsed().as_nanos()).unwrap_or(0));
        }
    }
}

impl SendShared {
    fn peer(&self, qp: usize) -> &str {
        self.peers.get(qp).map_or("RDMA peer", String::as_str)
    }

    fn lock_state(&self) -> MutexGuard<'_, SendState> {
        lock(&self.state)
    }

    /// Records the fault; on the first one, sends the abort notice (unless
    /// the receiver aborted), wakes every waiter and closes the pool so
    /// readers blocked on it fail at once.
    /// Must not be called while holding a turn or `state`.
    fn fail(&self, fault: Fault) {
        let notify = fault.notify_peer();
        if !self.fault.raise(fault) {
            return;
        }
        // waiters (for the window or a turn) wake, see the fault and give up; each
        // mutex is taken before its notification, so a waiter between its fault
        // check and its wait cannot miss it
        self.wake_state();
        self.wake_turns();
        if notify {
            self.post_notices();
        }
        self.fault.notices_done();
        self.wake_state();
        self.pool.pool().close();
        if !self.thread_running.load(Ordering::Acquire) {
            for qp in &self.qps {
                let _ = qp.set_error();
            }
        }
    }

    fn wake_turns(&self) {
        for t in &self.turns {
            drop(lock(&t.next));
            t.turn.notify_all();
        }
    }

    /// Wakes every caller waiting for the window (see [`SendShared::fail`]).
    fn wake_state(&self) {
        drop(self.lock_state());
        self.wake.notify_all();
    }

    /// A zero-byte WRITE_WITH_IMM(IMM_ABORT) on every QP (best effort: a QP
    /// that is full or already in error is skipped, and so is one whose turn
    /// is not free within `ABORT_GRACE`). Called after the fault was raised:
    /// WRs numbered and not yet posted are abandoned (their callers see the
    /// fault instead of their turn), so the notice takes the next number and
    /// moves the turn past them; its completion retires their leases.
    fn post_notices(&self) {
        let Ok(target) = self.remote.ring.slice(0, 0) else { return };
        for q in 0..self.qps.len() {
            let Some(mut turn) = self.turns[q].idle_within(ABORT_GRACE) else { continue };
            let mut st = self.lock_state();
            let Ok(g) = st.window.reserve_notice(q) else { continue };
            turn.next = g.seq + 1;
            let write = RdmaWrite {
                wr_id: wr_id(WrKind::Write, q as u8, g.seq),
                local: &[],
                remote: target,
                imm: Some(Imm::Abort.encode()),
                signaled: true,
            };
            st.inflight[q].push_back(None);
            if self.qps[q].post_writes(&[write]).is_ok() {
                add(&self.counters.wr_write_imm, 1);
                add(&self.counters.wr_signaled, 1);
                st.notices_posted = true;
            }
        }
    }

    /// A zero-byte RDMA WRITE (no immediate: the receiver sees nothing) on
    /// each of `qps`, signalled. The receiver's NIC acknowledges it; a
    /// receiver that is gone makes it fail with `IBV_WC_RETRY_EXC_ERR`.
    /// A QP is skipped while another thread is posting on it (then it is
    /// busy anyway) or has a WR numbered and not yet posted.
    fn post_probes(&self, st: &mut SendState, qps: &[usize]) {
        let Ok(target) = self.remote.ring.slice(0, 0) else { return };
        for &q in qps {
            // `try_lock` while holding `state` cannot deadlock; a free turn
            // whose `next` is the window's next number means no other thread
            // is between numbering a WR on this QP and posting it
            let Ok(mut turn) = self.turns[q].next.try_lock() else { continue };
            if turn.posting || turn.next != st.window.granted_on(q) {
                continue;
            }
            let Ok(g) = st.window.reserve_notice(q) else { continue };
            turn.next += 1;
            let write = RdmaWrite {
                wr_id: wr_id(WrKind::Write, q as u8, g.seq),
                local: &[],
                remote: target,
                imm: None,
                signaled: true,
            };
            st.inflight[q].push_back(None);
            if let Err(e) = self.qps[q].post_writes(&[write]) {
                tracing::debug!(target: "blit::rdma", error = %e, "keepalive probe not posted");
                continue;
            }
            add(&self.counters.pings, 1);
            add(&self.counters.wr_signaled, 1);
        }
    }

    /// Waits for a grant from `reserve` (credit and send-queue room) and
    /// returns it with `state` held, for [`SendShared::grant_and_post`]. Returns the
    /// session's fault, or `Stalled` after the stall timeout, which the
    /// caller raises with [`SendShared::fail`] once it let go of the locks.
    fn wait_grant(
        &self,
        mut reserve: impl FnMut(&mut SendState, &BufferPool) -> Result<Grant, Blocked>,
    ) -> Result<Granted<'_>, Fault> {
        let mut clock = WaitClock::new();
        loop {
            let mut st = self.lock_state();
            if let Some(f) = self.fault.get() {
                clock.finish(&self.counters);
                return Err(f);
            }
            match reserve(&mut st, self.pool.pool()) {
                Ok(g) => {
                    clock.finish(&self.counters);
                    return Ok((st, Some(g)));
                }
                Err(Blocked::Ended) => {
                    clock.finish(&self.counters);
                    return Ok((st, None));
                }
                Err(Blocked::NoCredit | Blocked::SendQueueFull) => {
                    if let Err(stalled) = clock.tick(self.cfg.stall_timeout) {
                        clock.finish(&self.counters);
                        return Err(stalled);
                    }
                    // Woken by completions and credits (the progress thread) and by
                    // the first fault; the timeout is the stall clock, not a poll.
                    st.waiters += 1;
                    let left = clock.left(self.cfg.stall_timeout);
                    st = self.wake.wait_timeout(st, left).map(|(g, _)| g).unwrap_or_else(|p| {
                        let (g, _) = p.into_inner();
                        g
                    });
                    st.waiters -= 1;
                }
            }
        }
    }

    /// Prepares one frame under the window lock: header into the ring, the
    /// lease into the QP's in-flight queue, the WRITE_WITH_IMM of [payload,
    /// header] into slot `grant.slot` ready to post.
    fn prepare_frame(
        &self,
        st: &mut SendState,
        g: Grant,
        header: &FrameHeader,
        lease: Option<BufLease>,
    ) -> Result<PreparedWrite, Fault> {
        let peer = self.peer(g.qp);
        let slot = g.slot.ok_or_else(|| Fault::protocol(peer, "a frame grant without a slot"))?;
        let entry = g.qp * self.sq_depth as usize + (g.seq % self.sq_depth) as usize;
        let at = entry * HEADER_STRIDE_BYTES;
        let verbs = |e| Fault::verbs("post an RDMA WRITE_WITH_IMM", peer, e);
        st.headers.write_at(at, &header.encode()).map_err(verbs)?;
        let header_sge = st.headers.slice(at, HEADER_BYTES).map_err(verbs)?;
        let payload_len = lease.as_ref().map_or(0, BufLease::len);
        let posted = lease.map(|l| self.pool.post_lease(l)).transpose().map_err(verbs)?;
        let (sges, n) = match &posted {
            Some(p) if payload_len > 0 => ([p.slice().clone(), header_sge], 2),
            _ => ([header_sge.clone(), header_sge], 1),
        };
        let len_bytes = (payload_len + HEADER_BYTES) as u32; // <= chunk + 32 (checked by send)
        let remote = self
            .remote
            .ring
            .slice(u64::from(slot) * self.remote.slot_bytes, len_bytes)
            .map_err(verbs)?;
        // in flight before posting: its completion cannot come earlier
        st.inflight[g.qp].push_back(posted);
        Ok(PreparedWrite {
            qp: g.qp,
            wr_id: wr_id(WrKind::Write, g.qp as u8, g.seq),
            sges,
            sge_count: n,
            remote,
            imm: Imm::Slot(slot).encode(),
            signaled: g.signaled,
            payload_len,
        })
    }

    /// Waits for a grant from `reserve`, prepares the frame under the window
    /// lock and posts it in its QP's turn. `Ok(false)`: every QP already sent
    /// its End frame, nothing was posted.
    fn grant_and_post(
        &self,
        reserve: impl FnMut(&mut SendState, &BufferPool) -> Result<Grant, Blocked>,
        header: &FrameHeader,
        lease: Option<BufLease>,
    ) -> Result<bool, Fault> {
        let (mut st, Some(grant)) = self.wait_grant(reserve)? else { return Ok(false) };
        let (qp, seq) = (grant.qp, grant.seq);
        let prepared = self.prepare_frame(&mut st, grant, header, lease);
        drop(st); // the progress thread goes on while the NIC takes the WR
        self.post_in_turn(qp, seq, prepared)?;
        Ok(true)
    }

    /// Posts WR `seq` of `qp` (prepared under `state`, which the caller let
    /// go) once every earlier WR of the QP was posted, and passes the turn on.
    /// A WR whose preparation failed passes the turn on too.
    fn post_in_turn(
        &self,
        qp: usize,
        seq: u64,
        prepared: Result<PreparedWrite, Fault>,
    ) -> Result<(), Fault> {
        let turn = &self.turns[qp];
        let mut t = lock(&turn.next);
        while t.next != seq || t.posting {
            if let Some(f) = self.fault.get() {
                return Err(f);
            }
            // Woken by the poster before us, or by the first fault (`wake_turns`).
            t = turn.turn.wait(t).unwrap_or_else(|p| p.into_inner());
        }
        t.posting = true;
        drop(t); // a probe or a notice sees `posting` and waits or skips
        let posted = prepared.and_then(|w| self.post_prepared(&w));
        let mut t = lock(&turn.next);
        t.posting = false;
        t.next += 1;
        drop(t);
        turn.turn.notify_all();
        posted
    }

    /// Posts a prepared WRITE (in its QP's turn, not holding `state`).
    fn post_prepared(&self, w: &PreparedWrite) -> Result<(), Fault> {
        let write = RdmaWrite {
            wr_id: w.wr_id,
            local: &w.sges[..w.sge_count],
            remote: w.remote,
            imm: Some(w.imm),
            signaled: w.signaled,
        };
        // The data phase starts when the first data WRITE is handed to the NIC, as perftest
        // counts (on Soft-RoCE the post itself runs the NIC and lasts tens of ms).
        let first = w.payload_len > 0
            && self.first_post_ns.load(Ordering::Relaxed) == 0
            && self
                .first_post_ns
                .compare_exchange(0, self.now_ns().max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        self.qps[w.qp]
            .post_writes(&[write])
            .map_err(|e| Fault::verbs("post an RDMA WRITE_WITH_IMM", self.peer(w.qp), e))?;
        if first {
            tracing::debug!(target: "blit::rdma", "first data WRITE posted");
        }
        let c = &self.counters;
        add(&c.wr_write_imm, 1);
        add(if w.signaled { &c.wr_signaled } else { &c.wr_unsignaled }, 1);
        add(&c.nic_write_bytes, write.len_bytes());
        add(&c.header_copy_bytes, HEADER_BYTES as u64);
        add(&c.frames, 1);
        add(&c.payload_bytes, w.payload_len as u64);
        Ok(())
    }

    /// Fault injection: the link "breaks" (QPs to error, no notice).
    fn maybe_break_link(&self) {
        let n = self.data_frames.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.break_after_frames.load(Ordering::Acquire) {
            tracing::debug!(target: "blit::rdma", frames = n, "injected link failure");
            for qp in &self.qps {
                let _ = qp.set_error();
            }
        }
    }

    /// The progress thread: polls the CQ, retires WRITEs (releasing their
    /// leases), applies credits, reposts control RECVs, detects stalls.
    fn progress_loop(&self) {
        let mut wcs = [Completion::default(); POLL_BATCH];
        let mut poller = Poller::new(self.cfg.cq_mode);
        let mut released: Vec<PostedLease> = Vec::with_capacity(POLL_BATCH * 4);
        let mut last_progress = Instant::now();
        let mut last_check = Instant::now();
        let keepalive = keepalive_after(self.cfg.stall_timeout);
        while !self.stop.load(Ordering::Acquire) && !self.fault.is_raised() {
            // sleeps until a completion, the CQ's wake (fault, stop) or the next clock check
            let until = last_check + STALL_CHECK;
            let n = match poller.poll(&self.cq, &mut wcs, &self.counters, Some(until)) {
                Ok(n) => n,
                Err(e) => {
                    self.fail(Fault::verbs("ibv_poll_cq", self.peer(0), e));
                    break;
                }
            };
            if n > 0 {
                last_progress = Instant::now();
                let mut fault = None;
                {
                    let mut st = self.lock_state();
                    for c in &wcs[..n] {
                        if let Err(f) = self.on_completion(&mut st, c, &mut released) {
                            fault = Some(f);
                            break;
                        }
                    }
                }
                released.clear(); // leases go back to the pool outside the lock
                self.wake.notify_all();
                if let Some(f) = fault {
                    self.fail(f);
                }
            } else if last_check.elapsed() >= STALL_CHECK {
                last_check = Instant::now();
                let mut st = self.lock_state();
                let outstanding = st.window.outstanding();
                let tails: Vec<usize> =
                    (0..self.qps.len()).filter(|&q| st.window.has_unsignaled_tail(q)).collect();
                if !tails.is_empty() && last_progress.elapsed() >= STALL_CHECK {
                    // Quiet, with unsignalled WRITEs that only a later
                    // signalled WR retires: post one, so their leases come
                    // back and an idle sender is not mistaken for a stall.
                    self.post_probes(&mut st, &tails);
                } else if st.waiters > 0 {
                    // Callers wait for credits (with or without WRs in flight)
                    // and nothing completes: is the receiver still there? A
                    // dead one fails the probe; a live one acknowledges it,
                    // which also retires an unsignalled tail. (A receiver that
                    // is alive but never credits is the waiters' own stall
                    // timeout.) Nothing outstanding must not restart this
                    // clock: with every WR retired, the probe is the only way
                    // to learn that the receiver is gone.
                    if last_progress.elapsed() > keepalive {
                        let all: Vec<usize> = (0..self.qps.len()).collect();
                        self.post_probes(&mut st, &all);
                        last_progress = last_check;
                    }
                } else if outstanding == 0 {
                    last_progress = last_check;
                } else if last_progress.elapsed() > self.cfg.stall_timeout {
                    drop(st);
                    self.fail(Fault::Stalled { idle_secs: self.cfg.stall_timeout.as_secs() });
                }
            }
        }
        if self.fault.is_raised() {
            self.shutdown_after_fault(&mut poller, &mut wcs);
        }
        self.thread_running.store(false, Ordering::Release);
    }

    /// After a fault: give the abort notices up to `ABORT_GRACE` to leave
    /// (they are the last WR of each QP, so "nothing outstanding" means they
    /// did), move the QPs to the error state, and retire what gets flushed
    /// (bounded by another `ABORT_GRACE`; leases still in flight then go back
    /// only when the QPs are destroyed).
    fn shutdown_after_fault(&self, poller: &mut Poller, wcs: &mut [Completion]) {
        // the thread that raised the fault may still be posting the notices
        self.fault.wait_notices(ABORT_GRACE);
        let mut released = Vec::new();
        let mut drain = |until: Instant, released: &mut Vec<PostedLease>| {
            while Instant::now() < until {
                if self.lock_state().window.outstanding() == 0 {
                    return;
                }
                let n = poller.poll(&self.cq, wcs, &self.counters, Some(until)).unwrap_or(0);
                let mut st = self.lock_state();
                for c in &wcs[..n] {
                    if let Some((WrKind::Write, qp, seq)) = parse_wr_id(c.wr_id) {
                        // flushed WRs retire too; stale ones are ignored
                        let _ = self.retire(&mut st, usize::from(qp), seq, released);
                    }
                }
                drop(st);
                released.clear();
            }
        };
        if self.lock_state().notices_posted {
            drain(Instant::now() + ABORT_GRACE, &mut released);
        }
        for qp in &self.qps {
            let _ = qp.set_error();
        }
        drain(Instant::now() + ABORT_GRACE, &mut released);
        self.wake.notify_all();
        self.log_counters();
    }

    /// WR `seq` on `qp` and all before it are done: release their leases.
    fn retire(
        &self,
        st: &mut SendState,
        qp: usize,
        seq: u64,
        released: &mut Vec<PostedLease>,
    ) -> Result<(), Fault> {
        let retired =
            st.window.on_completion(qp, seq).map_err(|e| Fault::protocol(self.peer(qp), e))?;
        let inflight = st
            .inflight
            .get_mut(qp)
            .ok_or_else(|| Fault::protocol(self.peer(qp), "completion for no QP"))?;
        for _ in 0..retired {
            if let Some(Some(lease)) = inflight.pop_front() {
                released.push(lease);
            }
        }
        Ok(())
    }

    fn on_completion(
        &self,
        st: &mut SendState,
        c: &Completion,
        released: &mut Vec<PostedLease>,
    ) -> Result<(), Fault> {
        let Some((kind, qp, index)) = parse_wr_id(c.wr_id) else {
            return Err(Fault::protocol(self.peer(0), format!("unknown completion {c:?}")));
        };
        let q = usize::from(qp);
        let peer = self.peer(q);
        match kind {
            WrKind::Write => {
                if let Err(e) = c.check() {
                    return Err(Fault::verbs("RDMA WRITE_WITH_IMM to the receiver", peer, e));
                }
                self.retire(st, q, index, released)
            }
            WrKind::ControlRecv => {
                if let Err(e) = c.check() {
                    return Err(Fault::verbs("receive of a control message", peer, e));
                }
                if c.opcode != WcOpcode::Recv {
                    return Err(Fault::protocol(peer, format!("unexpected completion {c:?}")));
                }
                let buf = usize::try_from(index).unwrap_or(usize::MAX);
                let len = c.byte_len as usize;
                if buf >= self.qps.len() * self.recv_depth as usize || len > CONTROL_BYTES {
                    return Err(Fault::protocol(peer, format!("bad control receive {c:?}")));
                }
                let mut msg = [0u8; CONTROL_BYTES];
                let at = buf * CONTROL_BYTES;
                self.control
                    .read_at(at, &mut msg[..len])
                    .map_err(|e| Fault::verbs("read a control message", peer, e))?;
                let control = Control::decode(&msg[..len]).map_err(|e| Fault::protocol(peer, e))?;
                let slice = self
                    .control
                    .slice(at, CONTROL_BYTES)
                    .map_err(|e| Fault::verbs("post a RECV", peer, e))?;
                self.qps[q]
                    .post_recv(&[RecvRequest { wr_id: c.wr_id, buf: Some(slice) }])
                    .map_err(|e| Fault::verbs("post a RECV", peer, e))?;
                add(&self.counters.wr_recv, 1);
                match control {
                    Control::Credits(batch) => {
                        for &slot in batch.slots() {
                            st.window.on_credit(slot).map_err(|e| Fault::protocol(peer, e))?;
                        }
                        add(&self.counters.credit_messages, 1);
                        add(&self.counters.credits, batch.slots().len() as u64);
                        Ok(())
                    }
                    Control::Ping => Ok(()),
                    Control::Abort => Err(Fault::PeerAborted {
                        detail: format!("{peer}: the receiver aborted the transfer"),
                    }),
                }
            }
            _ => Err(Fault::protocol(peer, format!("unexpected completion {c:?}"))),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The counters, with what only this side knows filled in.
    fn snapshot(&self) -> RdmaCounters {
        let mut c = self.counters.snapshot();
        c.registered_bytes = self.pool.registered_here_bytes();
        c
    }

    fn log_counters(&self) {
        if !self.logged.swap(true, Ordering::AcqRel) {
            self.snapshot().log("sender", self.qps.len());
        }
    }
}

/// The sending half of an RDMA session (a [`FrameSender`]).
#[derive(Debug)]
pub struct RdmaSender {
    shared: Arc<SendShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl RdmaSender {
    /// A snapshot of this side's counters.
    pub fn counters(&self) -> RdmaCounters {
        self.shared.snapshot()
    }

    /// Number of QPs.
    pub fn qps(&self) -> usize {
        self.shared.qps.len()
    }

    /// The device in use.
    pub fn device(&self) -> &str {
        self.shared.ctx.name()
    }

    /// Fault injection (the conformance suite's "peer disappears"): after
    /// `frames` data frames were posted (at once for 0), this side's QPs go
    /// to the error state without telling the receiver, as if the link
    /// broke. The sender then fails on its flushed WRITEs, the receiver when
    /// its next credit or keepalive SEND runs out of transport retries.
    pub fn fail_link_after_frames(&self, frames: u64) {
        if frames == 0 {
            for qp in &self.shared.qps {
                let _ = qp.set_error();
            }
            return;
        }
        self.shared.break_after_frames.store(frames, Ordering::Release);
    }

    fn stop_thread(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.cq.waker().wake(); // it may sleep on the CQ
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    /// Turns a payload (already checked by `check_outgoing`) into a lease of
    /// this side's registered pool. `Ok(None)`: a file region that could not
    /// be read; it was marked failed and the frame is skipped (the file's
    /// failure, not the session's, as over TCP).
    fn own_lease(&self, payload: Payload) -> Result<Option<Option<BufLease>>, TransportError> {
        let shared = &self.shared;
        match payload {
            Payload::Empty => Ok(Some(None)),
            Payload::Buffer(lease) if shared.pool.owns(&lease) => Ok(Some(Some(lease))),
            Payload::Buffer(foreign) => {
                // Not from `pool()`: the NIC cannot read it, so copy (counted).
                let len = foreign.len();
                let mut own = shared.pool.pool().acquire()?;
                own.full_mut()[..len].copy_from_slice(foreign.data());
                own.set_len(len);
                add(&shared.counters.payload_copies, 1);
                add(&shared.counters.payload_copy_bytes, len as u64);
                Ok(Some(Some(own)))
            }
            Payload::Stream(_) => {
                Err(TransportError::Misuse("a received payload stream cannot be sent"))
            }
            Payload::File(region) => {
                let len = region.len_bytes as usize;
                let mut own = shared.pool.pool().acquire()?;
                if !region.read_into(&mut own.full_mut()[..len]) {
                    return Ok(None);
                }
                own.set_len(len);
                add(&shared.counters.file_reads, 1);
                add(&shared.counters.file_read_bytes, len as u64);
                Ok(Some(Some(own)))
            }
        }
    }
}

impl FrameSender for RdmaSender {
    fn payload_pref(&self) -> PayloadPref {
        PayloadPref::Buffer
    }

    fn pool(&self) -> &BufferPool {
        self.shared.pool.pool()
    }

    fn frame_bytes_max(&self) -> u32 {
        self.shared.cfg.chunk_bytes
    }

    fn needs_checksums(&self) -> bool {
        self.shared.cfg.frame_checksums
    }

    fn send(&self, frame: Frame) -> Result<(), TransportError> {
        let shared = &self.shared;
        shared.fault.check()?;
        if shared.finished.load(Ordering::Acquire) {
            return Err(TransportError::Misuse("send after finish"));
        }
        check_outgoing(&frame, shared.cfg.chunk_bytes)?;
        let Frame { header, payload } = frame;
        let Some(lease) = self.own_lease(payload)? else { return Ok(()) };
        // An empty pool forces a signal (see window.rs).
        let reserve =
            |st: &mut SendState, pool: &BufferPool| st.window.reserve_frame(pool.available() == 0);
        match shared.grant_and_post(reserve, &header, lease) {
            Ok(true) => {}
            Ok(false) => return Err(TransportError::Misuse("send after finish")),
            Err(fault) => {
                shared.fail(fault);
                return shared.fault.check();
            }
        }
        shared.maybe_break_link();
        Ok(())
    }

    fn finish(&self) -> Result<(), TransportError> {
        let shared = &self.shared;
        shared.fault.check()?;
        if shared.finished.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        for q in 0..shared.qps.len() {
            let end =
                shared.grant_and_post(|st, _| st.window.reserve_end(q), &FrameHeader::end(), None);
            if let Err(fault) = end {
                shared.fail(fault);
                return shared.fault.check();
            }
        }
        let mut st = shared.lock_state();
        // Every End is signalled: once all retire, everything was delivered.
        let mut clock = WaitClock::new();
        while st.window.outstanding() > 0 {
            if let Some(f) = shared.fault.get() {
                return Err(f.to_transport());
            }
            if let Err(stalled) = clock.tick(shared.cfg.stall_timeout) {
                drop(st);
                shared.fail(stalled);
                return shared.fault.check();
            }
            // Woken by completions and by the first fault; the timeout is the stall clock.
            let left = clock.left(shared.cfg.stall_timeout);
            st = shared.wake.wait_timeout(st, left).map(|(g, _)| g).unwrap_or_else(|p| {
                let (g, _) = p.into_inner();
                g
            });
        }
        drop(st);
        let first = shared.first_post_ns.load(Ordering::Acquire);
        if first > 0 {
            add(&shared.counters.data_ns, shared.now_ns().saturating_sub(first));
        }
        self.stop_thread();
        shared.fault.check()?;
        shared.log_counters();
        Ok(())
    }

    fn abort(&self) {
        self.shared.fail(Fault::Cancelled);
    }

    fn stats(&self) -> TransportStats {
        let c = self.shared.snapshot();
        TransportStats {
            name: "rdma".into(),
            streams: self.shared.qps.len() as u32,
            frames: c.frames,
            payload_bytes: c.payload_bytes,
        }
    }
}

impl Drop for RdmaSender {
    fn drop(&mut self) {
        if !self.shared.finished.load(Ordering::Acquire) {
            self.shared.fail(Fault::Cancelled);
        }
        self.stop_thread();
        self.shared.log_counters();
        // `shared` drops next: QPs are destroyed before the in-flight leases
        // go back to the pool and before any MR is deregistered.
    }
}
