//! The receiving half: a ring of registered slots the sender writes frames
//! into, a poller thread that turns completions into frames, and a credit
//! thread that returns slots to the sender as writers drop them.
//!
//! Owns the receiver's QPs, CQ, ring registration and the threads. It never
//! copies payload bytes: a frame's payload is the slot's lease itself.
//!
//! ```text
//! sender WRITE_WITH_IMM ──► slot k (lease in `table[k]`) ──► RECV completion (imm k, byte_len)
//!   poller: take table[k], decode header at byte_len-32, Frame{Buffer(lease)} ──► channel ──► writers
//!   writer drops lease ──► pool ──► credit thread acquire() ──► table[k] ──► SEND credit {k, ...}
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blitx_core::BufLease;
use blitx_core::frame::{FRAME_HEADER_BYTES, FrameError, FrameKind, ReceiveRules};
use blitx_core::transport::{Frame, FrameReceiver, Payload, TransportError};
use blitx_verbs::{
    Access, Completion, CompletionQueue, Context, CqMode, Error, QpConfig, QueuePair, RecvRequest,
    RegisteredPool, Result, SendPayload, SendRequest, WcOpcode,
};
use crossbeam_channel::Sender;

use crate::config::{RdmaConfig, ReceiverInfo, SenderInfo};
use crate::counters::{Counters, RdmaCounters, add};
use crate::domain::RdmaDomain;
use crate::link::{
    ABORT_GRACE, Fault, FaultSlot, POLL_BATCH, Poller, keepalive_after, lock, peer_name,
    transport_timers, wake_on_cancel,
};
use crate::wire::{
    CONTROL_BYTES, Control, CreditBatch, Imm, WrKind, parse_wr_id, split_write, wr_id,
};

/// Signal one control SEND in this many (they carry no buffer to release;
/// signals only free send-queue entries).
const CONTROL_SIGNAL_INTERVAL: u32 = 8;

/// A receiver before it is connected: QPs in INIT with their RECVs posted,
/// the ring registered. Send [`ReceiverInfo`] to the sender, then call
/// [`ReceiverSetup::connect`] with its [`SenderInfo`].
#[derive(Debug)]
pub struct ReceiverSetup {
    cfg: RdmaConfig,
    info: ReceiverInfo,
    // Field order is drop order: QP → CQ → MR (+ pool) → context (the PD is
    // held by the QPs and the MR).
    qps: Vec<QueuePair>,
    cq: Arc<CompletionQueue>,
    ring: RegisteredPool,
    ctx: Arc<Context>,
}

impl ReceiverSetup {
    /// Opens the device, registers the ring (`cfg.slots` slots of
    /// `chunk_bytes` + one page, REMOTE_WRITE), creates `cfg.qps` RC QPs
    /// and pre-posts their RECVs. Errors with [`Error::is_unavailable`] mean
    /// "no RDMA here": fall back to TCP.
    pub fn new(cfg: &RdmaConfig) -> Result<(ReceiverSetup, ReceiverInfo)> {
        cfg.validate()?;
        Self::in_domain(&RdmaDomain::open(cfg, 0)?, cfg)
    }

    /// Like [`ReceiverSetup::new`], in an open domain: its device and PD, and
    /// a ring it kept from an earlier session (or prewarmed) when one has this
    /// shape.
    pub fn in_domain(
        domain: &RdmaDomain,
        cfg: &RdmaConfig,
    ) -> Result<(ReceiverSetup, ReceiverInfo)> {
        cfg.validate()?;
        let (ctx, port_num, pd) = (Arc::clone(domain.ctx()), domain.port_num(cfg), domain.pd());
        let recv_depth = RdmaConfig::recv_depth(cfg.slots);
        let sq_depth = cfg.receiver_sq_depth();
        let cq_depth = cfg.qps * (recv_depth + sq_depth);
        let cq = CompletionQueue::new(&ctx, cq_depth, CqMode::Event)?; // see link::Poller
        let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
        let ring = domain.receiver_ring(cfg)?;
        let qp_cfg = QpConfig {
            port_num,
            gid_index: cfg.gid_index,
            max_send_wr: sq_depth,
            max_recv_wr: recv_depth,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_bytes: CONTROL_BYTES as u32,
            access,
            timers: transport_timers(),
        };
        let mut qps = Vec::with_capacity(cfg.qps as usize);
        for q in 0..cfg.qps {
            let qp = QueuePair::create_rc(pd, &cq, &cq, &qp_cfg)?;
            let recvs: Vec<RecvRequest> = (0..recv_depth)
                .map(|_| RecvRequest { wr_id: wr_id(WrKind::DataRecv, q as u8, 0), buf: None })
                .collect();
            qp.post_recv(&recvs)?;
            qps.push(qp);
        }
        let info = ReceiverInfo {
            qps: qps.iter().map(QueuePair::endpoint).collect(),
            ring: ring.remote()?,
            slot_bytes: cfg.slot_bytes(),
            slots: cfg.slots,
            chunk_bytes: cfg.chunk_bytes,
        };
        let setup = ReceiverSetup { cfg: cfg.clone(), info: info.clone(), qps, cq, ring, ctx };
        Ok((setup, info))
    }

    /// What to send to the sender.
    pub fn info(&self) -> &ReceiverInfo {
        &self.info
    }

    /// Connects every QP to the sender's and starts the poller and credit
    /// threads; the credit thread then credits every slot. Call this after
    /// the sender connected (it needs the receiver's info first), or within
    /// about half a second of it: the first credits are sent at once, and a
    /// sender QP that is not ready yet gets only the transport's retries.
    pub fn connect(mut self, peer: &SenderInfo) -> Result<RdmaReceiver> {
        peer.validate(&self.cfg)?;
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
        let slots = self.cfg.slots;
        let shared = Arc::new(RecvShared {
            table: Mutex::new((0..slots).map(|_| None).collect()),
            sq: Mutex::new(ControlSq {
                posted: vec![0; n],
                unsignaled_run: vec![0; n],
                next_qp: 0,
            }),
            sq_room: Condvar::new(),
            sq_completed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sq_cap: u64::from(self.cfg.receiver_sq_depth()),
            slot_bytes: self.cfg.slot_bytes(),
            peers,
            fault: FaultSlot::default(),
            ended: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            logged: AtomicBool::new(false),
            counters: Counters::default(),
            started: Instant::now(),
            last_rx_ns: AtomicU64::new(0),
            first_rx_ns: AtomicU64::new(0),
            cfg: self.cfg.clone(),
            qps: std::mem::take(&mut self.qps),
            cq: Arc::clone(&self.cq),
            ring: self.ring,
            ctx: self.ctx,
        });
        // Every frame in the channel holds a slot, except Hole/End frames;
        // when writers fall behind, the poller waits on the channel and the
        // sender on credits.
        // Every thread of this side is woken by the session's cancel, none polls for it: the
        // poller sleeps on the CQ (its wake), the credit thread on the ring (closing it), and a
        // control SEND waiting for send-queue room on `sq_room`.
        wake_on_cancel(&shared.cq, shared.fault.cancel());
        {
            let ring = shared.ring.pool().clone();
            shared.fault.cancel().on_fire(move || ring.close());
            let weak = Arc::downgrade(&shared);
            shared.fault.cancel().on_fire(move || {
                if let Some(shared) = weak.upgrade() {
                    shared.wake_sq_waiters();
                }
            });
        }
        let (tx, rx) = crossbeam_channel::bounded(slots as usize);
        let poller = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("rdma-recv-poll".into())
                .spawn(blitx_core::placer::worker(
                    blitx_core::placer::WorkerRole::RdmaReceive,
                    move || shared.poll_loop(tx),
                ))
                .map_err(|e| Error::verbs("spawn the RDMA receive poller", e))?
        };
        let credits = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name("rdma-recv-credit".into()).spawn(
                blitx_core::placer::worker(blitx_core::placer::WorkerRole::RdmaCredit, move || {
                    shared.credit_loop()
                }),
            )
        };
        let credits = match credits {
            Ok(handle) => handle,
            Err(e) => {
                shared.stop.store(true, Ordering::Release);
                shared.cq.waker().wake();
                let _ = poller.join();
                return Err(Error::verbs("spawn the RDMA credit thread", e));
            }
        };
        Ok(RdmaReceiver { shared, frames: rx, threads: vec![poller, credits] })
    }
}

/// Per-QP accounting of the control SENDs (credits, pings, abort notices).
#[derive(Debug)]
struct ControlSq {
    posted: Vec<u64>,
    unsignaled_run: Vec<u32>,
    next_qp: usize,
}

#[derive(Debug)]
struct RecvShared {
    // Field order is drop order: QPs (no more remote writes) → CQ → the
    // leases of advertised slots → ring MR and pool → context. The PD is
    // held by the QPs and the MR, so it goes right before the context.
    qps: Vec<QueuePair>,
    cq: Arc<CompletionQueue>,
    /// `Some(lease)`: slot credited to the sender, which may write it.
    table: Mutex<Vec<Option<BufLease>>>,
    ring: RegisteredPool,
    ctx: Arc<Context>,
    cfg: RdmaConfig,
    slot_bytes: u64,
    peers: Vec<String>,
    sq: Mutex<ControlSq>,
    /// Notified when control SENDs complete (room in a send queue), on a
    /// fault and on stop: wakes [`RecvShared::post_control_wait`].
    sq_room: Condvar,
    sq_completed: Vec<AtomicU64>,
    sq_cap: u64,
    fault: FaultSlot,
    /// Every QP delivered its End frame.
    ended: AtomicBool,
    stop: AtomicBool,
    logged: AtomicBool,
    counters: Counters,
    started: Instant,
    last_rx_ns: AtomicU64,
    /// When the first completion arrived (0: none yet), for `data_ns`.
    first_rx_ns: AtomicU64,
}

impl RecvShared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn peer(&self, qp: usize) -> &str {
        self.peers.get(qp).map_or("RDMA peer", String::as_str)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
            || self.ended.load(Ordering::Acquire)
            || self.fault.is_raised()
    }

    /// Records the fault; on the first one, tells the sender (abort notice on
    /// every QP) unless the sender is the one that aborted.
    fn fail(&self, fault: Fault) {
        let notify = fault.notify_peer();
        if !self.fault.raise(fault) {
            return;
        }
        if notify {
            for qp in 0..self.qps.len() {
                // best effort: a QP in the error state flushes it
                let _ = self.post_control(Some(qp), &Control::Abort, true);
            }
        }
        self.fault.notices_done();
    }

    /// Posts one control SEND; `Ok(false)` when the QP's send queue is full.
    fn post_control(&self, qp: Option<usize>, msg: &Control, force_signal: bool) -> Result<bool> {
        self.post_control_locked(&mut lock(&self.sq), qp, msg, force_signal)
    }

    fn post_control_locked(
        &self,
        sq: &mut ControlSq,
        qp: Option<usize>,
        msg: &Control,
        force_signal: bool,
    ) -> Result<bool> {
        let n = self.qps.len();
        let qp = qp.unwrap_or_else(|| {
            let q = sq.next_qp;
            sq.next_qp = (q + 1) % n;
            q
        });
        let completed = self.sq_completed[qp].load(Ordering::Acquire);
        let outstanding = sq.posted[qp] - completed;
        if outstanding >= self.sq_cap {
            return Ok(false);
        }
        let signaled = force_signal
            || sq.unsignaled_run[qp] + 1 >= CONTROL_SIGNAL_INTERVAL
            || outstanding + 1 >= self.sq_cap / 2;
        let mut buf = [0u8; CONTROL_BYTES];
        let len = msg.encode(&mut buf);
        let seq = sq.posted[qp];
        self.qps[qp].post_send(SendRequest {
            wr_id: wr_id(WrKind::ControlSend, qp as u8, seq),
            payload: SendPayload::Inline(&buf[..len]),
            signaled,
        })?;
        sq.posted[qp] += 1;
        sq.unsignaled_run[qp] = if signaled { 0 } else { sq.unsignaled_run[qp] + 1 };
        add(&self.counters.wr_send, 1);
        add(if signaled { &self.counters.wr_signaled } else { &self.counters.wr_unsignaled }, 1);
        Ok(true)
    }

    /// Posts a control SEND, waiting while the send queue is full: woken by
    /// the poller when control SENDs complete, by the first fault and by stop
    /// (`sq_room`), never by a timer. The poller retires a full queue's
    /// signalled SENDs (at least one in `CONTROL_SIGNAL_INTERVAL`), so a
    /// live peer always makes room.
    fn post_control_wait(&self, qp: Option<usize>, msg: &Control) -> Result<bool> {
        let mut sq = lock(&self.sq);
        loop {
            if self.stop.load(Ordering::Acquire) || self.fault.is_raised() {
                return Ok(false);
            }
            if self.post_control_locked(&mut sq, qp, msg, false)? {
                return Ok(true);
            }
            sq = self.sq_room.wait(sq).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wakes a credit thread waiting for send-queue room (see
    /// [`RecvShared::post_control_wait`]); the mutex is taken first, so a
    /// waiter between its check and its wait cannot miss it.
    fn wake_sq_waiters(&self) {
        drop(lock(&self.sq));
        self.sq_room.notify_all();
    }

    fn control_idle(&self) -> bool {
        let sq = lock(&self.sq);
        sq.posted.iter().zip(&self.sq_completed).all(|(p, c)| c.load(Ordering::Acquire) >= *p)
    }

    /// How long the credit thread may sleep before its keepalive clock needs
    /// it: until `keepalive` after the last completion (then it pings), or,
    /// with a ping out, until the next multiple of `keepalive` since it was
    /// sent (to see whether it completed, so the next one is due) or just past
    /// the stall timeout (its deadline). At least 1 ms, so a wait is never a
    /// spin. A timer for the clock only: cancellation closes the ring.
    fn keepalive_wait(
        &self,
        ping: Option<&(Instant, Vec<Option<u64>>)>,
        keepalive: Duration,
    ) -> Duration {
        let left = match ping {
            Some((sent, _)) => {
                let spent = sent.elapsed();
                let period = keepalive.as_nanos().max(1);
                let into = Duration::from_nanos((spent.as_nanos() % period) as u64);
                let check = keepalive.saturating_sub(into);
                let stall = self.cfg.stall_timeout.saturating_sub(spent) + Duration::from_millis(1);
                check.min(stall)
            }
            None => {
                let quiet_ns =
                    self.now_ns().saturating_sub(self.last_rx_ns.load(Ordering::Acquire));
                keepalive.saturating_sub(Duration::from_nanos(quiet_ns))
            }
        };
        left.max(Duration::from_millis(1))
    }

    /// The credit thread: takes slots back from the pool as writers drop
    /// their leases (the first time: all of them), records them in the table
    /// and credits them, up to 14 per SEND; pings the sender when quiet.
    fn credit_loop(&self) {
        let pool = self.ring.pool();
        // a sender that died is found by a ping's transport retries failing
        let keepalive = keepalive_after(self.cfg.stall_timeout);
        // (when sent, per QP the ping's sequence number if it was posted)
        let mut ping: Option<(Instant, Vec<Option<u64>>)> = None;
        while !self.stopping() {
            // Sleeps until a writer returns a slot or the next keepalive deadline (a timer);
            // a fault, the end of the stream and stop close the ring, which wakes it.
            let first = match pool.acquire_timeout(self.keepalive_wait(ping.as_ref(), keepalive)) {
                Ok(lease) => lease,
                Err(_) => break, // the pool was closed: shutting down
            };
            if let Some(first) = first {
                let mut batch = CreditBatch::default();
                let mut table = lock(&self.table);
                let mut next = Some(first);
                while let Some(lease) = next.take() {
                    let slot = lease.index();
                    batch.push(slot);
                    if let Some(entry) = table.get_mut(slot as usize) {
                        *entry = Some(lease);
                    }
                    if !batch.is_full() {
                        next = pool.try_acquire();
                    }
                }
                drop(table);
                let credits = batch.slots().len() as u64;
                match self.post_control_wait(None, &Control::Credits(batch)) {
                    Ok(true) => {
                        add(&self.counters.credit_messages, 1);
                        add(&self.counters.credits, credits);
                    }
                    Ok(false) => break,
                    Err(e) => {
                        self.fail(Fault::verbs("post a credit SEND", self.peer(0), e));
                        break;
                    }
                }
            }
            // keepalive: after `keepalive` of silence, ping every QP once and
            // expect the pings to complete within the stall timeout
            let now = Instant::now();
            match &ping {
                Some((sent, seqs)) => {
                    let done = seqs
                        .iter()
                        .zip(&self.sq_completed)
                        .all(|(seq, c)| seq.is_none_or(|seq| c.load(Ordering::Acquire) > seq));
                    if done {
                        ping = None;
                    } else if now.duration_since(*sent) > self.cfg.stall_timeout {
                        let idle_secs = self.cfg.stall_timeout.as_secs();
                        self.fail(Fault::Stalled { idle_secs });
                        break;
                    }
                }
                None => {
                    let quiet_ns =
                        self.now_ns().saturating_sub(self.last_rx_ns.load(Ordering::Acquire));
                    if Duration::from_nanos(quiet_ns) > keepalive {
                        let mut seqs = Vec::with_capacity(self.qps.len());
                        for qp in 0..self.qps.len() {
                            let seq = lock(&self.sq).posted[qp];
                            match self.post_control(Some(qp), &Control::Ping, true) {
                                Ok(true) => {
                                    add(&self.counters.pings, 1);
                                    seqs.push(Some(seq));
                                }
                                // queue full: control traffic is pending on it anyway
                                Ok(false) => seqs.push(None),
                                Err(e) => {
                                    self.fail(Fault::verbs(
                                        "post a keepalive ping",
                                        self.peer(qp),
                                        e,
                                    ));
                                    return;
                                }
                            }
                        }
                        ping = Some((now, seqs));
                        self.last_rx_ns.store(self.now_ns(), Ordering::Release);
                    }
                }
            }
        }
    }

    /// The poller thread: completions → frames; ends when every QP ended,
    /// on a fault (after moving the QPs to the error state) or on stop.
    fn poll_loop(&self, tx: Sender<Frame>) {
        let mut wcs = [Completion::default(); POLL_BATCH];
        let mut poller = Poller::new(self.cfg.cq_mode);
        let mut ended = vec![false; self.qps.len()];
        let mut ended_count = 0;
        while !self.stop.load(Ordering::Acquire) && !self.fault.is_raised() {
            // no deadline: completions, and the CQ's wake on a fault or stop, end the sleep
            let n = match poller.poll(&self.cq, &mut wcs, &self.counters, None) {
                Ok(n) => n,
                Err(e) => {
                    self.fail(Fault::verbs("ibv_poll_cq", self.peer(0), e));
                    break;
                }
            };
            if n > 0 {
                let now = self.now_ns().max(1);
                self.last_rx_ns.store(now, Ordering::Release);
                if self
                    .first_rx_ns
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    tracing::debug!(target: "blit::rdma", "first completion received");
                }
            }
            for c in &wcs[..n] {
                if let Err(fault) = self.on_completion(c, &tx, &mut ended, &mut ended_count) {
                    self.fail(fault);
                    break;
                }
            }
            if ended_count == ended.len() {
                self.ended.store(true, Ordering::Release);
                // the credit thread has nothing left to credit: closing the ring wakes it
                self.ring.pool().close();
                let first = self.first_rx_ns.load(Ordering::Acquire);
                add(&self.counters.data_ns, self.now_ns().saturating_sub(first));
                self.log_counters();
                return; // dropping `tx` tells recv() the stream is complete
            }
        }
        drop(tx);
        if self.fault.is_raised() {
            // let the abort notices leave (once the failing thread posted them), then
            // flush everything
            self.fault.wait_notices(ABORT_GRACE);
            let deadline = Instant::now() + ABORT_GRACE;
            while Instant::now() < deadline && !self.control_idle() {
                let n =
                    poller.poll(&self.cq, &mut wcs, &self.counters, Some(deadline)).unwrap_or(0);
                for c in &wcs[..n] {
                    self.note_control_completion(c);
                }
            }
            for qp in &self.qps {
                let _ = qp.set_error();
            }
            self.ring.pool().close(); // wakes the credit thread
            self.log_counters();
        }
    }

    fn note_control_completion(&self, c: &Completion) {
        if let Some((WrKind::ControlSend, qp, seq)) = parse_wr_id(c.wr_id)
            && let Some(done) = self.sq_completed.get(usize::from(qp))
        {
            done.fetch_max(seq + 1, Ordering::AcqRel);
            // one signalled SEND in CONTROL_SIGNAL_INTERVAL completes: cheap
            self.wake_sq_waiters();
        }
    }

    fn on_completion(
        &self,
        c: &Completion,
        tx: &Sender<Frame>,
        ended: &mut [bool],
        ended_count: &mut usize,
    ) -> Result<(), Fault> {
        let Some((kind, qp, _)) = parse_wr_id(c.wr_id) else {
            return Err(Fault::protocol(self.peer(0), format!("unknown completion {c:?}")));
        };
        let q = usize::from(qp);
        let peer = self.peer(q);
        if let Err(e) = c.check() {
            let op = match kind {
                WrKind::ControlSend => "control SEND (credit, ping or abort) to the sender",
                _ => "receive of an RDMA WRITE_WITH_IMM from the sender",
            };
            return Err(Fault::verbs(op, peer, e));
        }
        match kind {
            WrKind::ControlSend => {
                self.note_control_completion(c);
                Ok(())
            }
            WrKind::DataRecv if c.opcode == WcOpcode::RecvRdmaWithImm => {
                let imm = c.imm.unwrap_or(u32::MAX - 1);
                let slot =
                    match Imm::decode(imm, self.cfg.slots).map_err(|e| Fault::protocol(peer, e))? {
                        Imm::Abort => {
                            return Err(Fault::PeerAborted {
                                detail: format!("{peer}: the sender aborted the transfer"),
                            });
                        }
                        Imm::Slot(slot) => slot,
                    };
                // keep the RECVs topped up before anything else
                let qp_ref = self.qps.get(q).ok_or_else(|| Fault::protocol(peer, "no such QP"))?;
                qp_ref
                    .post_recv(&[RecvRequest { wr_id: c.wr_id, buf: None }])
                    .map_err(|e| Fault::verbs("post a RECV", peer, e))?;
                add(&self.counters.wr_recv, 1);
                if ended[q] {
                    return Err(Fault::BadFrame {
                        peer: peer.to_owned(),
                        error: FrameError::AfterEnd,
                    });
                }
                let frame = self.take_frame(slot, c.byte_len, peer)?;
                add(&self.counters.nic_write_bytes, u64::from(c.byte_len));
                add(&self.counters.frames, 1);
                add(&self.counters.payload_bytes, u64::from(frame.header.len_bytes));
                if frame.header.kind == FrameKind::End {
                    ended[q] = true;
                    *ended_count += 1;
                    return Ok(());
                }
                // Writers behind: wait for room, or for the session's cancel (an abort
                // or the first fault; the loop then stops).
                crossbeam_channel::select! {
                    send(tx, frame) -> _ => Ok(()),
                    recv(self.fault.cancel().wake()) -> _ => Ok(()),
                }
            }
            _ => Err(Fault::protocol(peer, format!("unexpected completion {c:?}"))),
        }
    }

    /// The frame that landed in `slot`: header at `byte_len - 32`, payload
    /// before it. Everything in it is peer input.
    fn take_frame(&self, slot: u32, byte_len: u32, peer: &str) -> Result<Frame, Fault> {
        let (payload_len, header_at) =
            split_write(byte_len, self.slot_bytes).map_err(|e| Fault::protocol(peer, e))?;
        let lease = lock(&self.table).get_mut(slot as usize).and_then(Option::take);
        let Some(mut lease) = lease else {
            return Err(Fault::protocol(peer, format!("slot {slot} written without a credit")));
        };
        let mut raw = [0u8; FRAME_HEADER_BYTES];
        // The WRITE that filled the slot completed, and the slot is no longer
        // credited (it left the table), so its bytes are stable.
        raw.copy_from_slice(&lease.full()[header_at..header_at + FRAME_HEADER_BYTES]);
        // Unchecked frames only where this session runs without frame checksums (RoCE's ICRC
        // covers the bytes); the payload is what the WRITE carried.
        let rules = ReceiveRules {
            chunk_bytes: self.cfg.chunk_bytes,
            unchecked_allowed: !self.cfg.frame_checksums,
        };
        let bad = |error| Fault::BadFrame { peer: format!("{peer} slot {slot}"), error };
        let header = rules.header(&raw).map_err(bad)?;
        rules.carried(&header, u64::from(payload_len)).map_err(bad)?;
        let payload = match header.kind {
            FrameKind::Chunk | FrameKind::Bundle | FrameKind::Delta => {
                lease.set_len(payload_len as usize); // <= chunk_bytes < slot (decode bounds it)
                Payload::Buffer(lease)
            }
            FrameKind::Hole | FrameKind::Same | FrameKind::End => Payload::Empty, // the lease goes back now
        };
        Ok(Frame { header, payload })
    }

    /// The counters, with what only this side knows filled in.
    fn snapshot(&self) -> RdmaCounters {
        let mut c = self.counters.snapshot();
        c.registered_bytes = self.ring.registered_here_bytes();
        c
    }

    fn log_counters(&self) {
        if !self.logged.swap(true, Ordering::AcqRel) {
            self.snapshot().log("receiver", self.qps.len());
        }
    }
}

/// The receiving half of an RDMA session (a [`FrameReceiver`]).
#[derive(Debug)]
pub struct RdmaReceiver {
    shared: Arc<RecvShared>,
    frames: crossbeam_channel::Receiver<Frame>,
    threads: Vec<JoinHandle<()>>,
}

impl RdmaReceiver {
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

    /// Fault injection: this side's QPs go to the error state now, without
    /// telling the sender, as if the link broke or this process died. The
    /// sender fails when its next WRITE or keepalive probe runs out of
    /// transport retries.
    pub fn fail_link_now(&self) {
        for qp in &self.shared.qps {
            let _ = qp.set_error();
        }
    }
}

impl FrameReceiver for RdmaReceiver {
    fn recv(&self) -> Result<Option<Frame>, TransportError> {
        self.shared.fault.check()?;
        crossbeam_channel::select! {
            recv(self.frames) -> got => match got {
                Ok(frame) => Ok(Some(frame)),
                Err(_) => {
                    self.shared.fault.check()?;
                    if self.shared.ended.load(Ordering::Acquire) {
                        return Ok(None);
                    }
                    Err(TransportError::PeerGone {
                        detail: "the RDMA receiver stopped before the sender finished".into(),
                    })
                }
            },
            // The first fault (or an abort) fired the session's cancel.
            recv(self.shared.fault.cancel().wake()) -> _ => {
                self.shared.fault.check()?;
                Err(TransportError::Cancelled)
            }
        }
    }

    fn abort(&self) {
        self.shared.fail(Fault::Cancelled);
    }
}

impl Drop for RdmaReceiver {
    fn drop(&mut self) {
        if !self.shared.ended.load(Ordering::Acquire) {
            self.shared.fail(Fault::Cancelled);
        }
        self.shared.stop.store(true, Ordering::Release);
        // wake every thread (the cancel above did unless the stream had ended)
        self.shared.cq.waker().wake();
        self.shared.ring.pool().close();
        self.shared.wake_sq_waiters();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.log_counters();
        // `shared` drops last: QPs, CQ, slot leases, MR, pool, PD, context.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_signals_fit_the_send_queue() {
        let cfg = RdmaConfig::default();
        assert!(u64::from(CONTROL_SIGNAL_INTERVAL) <= u64::from(cfg.receiver_sq_depth()));
    }
}
