//! A verified RDMA stream, used by `examples/verbs_selftest.rs`, the loopback
//! integration test and (later) `blit`'s diagnostics.
//!
//! Protocol (the shape the real transport will have):
//! - The **receiver** owns a registered region split into `slots` fixed slots,
//!   pre-posts one zero-SGE RECV per slot and advertises the region
//!   (addr, rkey) and geometry ([`ReceiverAdvert`]).
//! - The **sender** owns a registered source region with the same geometry and
//!   posts RDMA WRITE_WITH_IMM of message `seq` into slot `seq % slots`, with
//!   `imm = seq`, keeping at most `window` writes outstanding and at most
//!   `slots` messages un-credited.
//! - For each message the receiver checks opcode, immediate, length and every
//!   byte, re-posts the RECV, and returns a cumulative credit by SEND
//!   (alternating inline and registered-memory SENDs to exercise both).
//!
//! Only safe API of this crate is used here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cq::{Completion, CompletionQueue, CqMode, WcOpcode};
use crate::device::Context;
use crate::error::Error;
use crate::pd_mr::{OwnedRegion, ProtectionDomain, RemoteRegion};
use crate::queue_pair::{
    CHAIN_MAX, QpConfig, QueuePair, RecvRequest, RemoteQpParams, SendPayload, SendRequest,
    WriteWithImm,
};
use crate::types::Access;

/// Bytes of one credit message: magic, reserved, cumulative count (LE).
pub const CREDIT_BYTES: usize = 16;
const CREDIT_MAGIC: u32 = 0x524c_4342; // "BCLR" little-endian
/// Spacing of credit buffers in their small regions (one cache line each).
const CREDIT_STRIDE_BYTES: usize = 64;
/// Completions taken per poll.
const POLL_BATCH: usize = 32;
/// How long one `poll_wait` sleeps/spins before the stall check runs.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// Largest slot count (bounds every queue this test creates).
pub const SLOTS_MAX: usize = 1024;

const _: () = assert!(CREDIT_BYTES <= CREDIT_STRIDE_BYTES);

// wr_id = kind << 56 | index
const KIND_SHIFT: u32 = 56;
const KIND_WRITE: u64 = 1;
const KIND_CREDIT_SEND: u64 = 2;
const KIND_DATA_RECV: u64 = 3;
const KIND_CREDIT_RECV: u64 = 4;

fn wr_id(kind: u64, index: u64) -> u64 {
    (kind << KIND_SHIFT) | (index & ((1 << KIND_SHIFT) - 1))
}

fn wr_kind(wr_id: u64) -> u64 {
    wr_id >> KIND_SHIFT
}

fn wr_index(wr_id: u64) -> u64 {
    wr_id & ((1 << KIND_SHIFT) - 1)
}

/// What a selftest run can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelftestError {
    /// A verbs error (including "RDMA unavailable").
    #[error(transparent)]
    Verbs(#[from] Error),
    /// A payload byte differs from the pattern.
    #[error("message {seq}: byte {offset} is {found:#04x}, expected {expected:#04x}")]
    DataMismatch {
        /// Message number.
        seq: u64,
        /// First differing byte.
        offset: usize,
        /// Pattern byte.
        expected: u8,
        /// Received byte.
        found: u8,
    },
    /// The immediate is not the expected sequence number.
    #[error("message {seq}: immediate {found:?}, expected {expected:#x}")]
    ImmMismatch {
        /// Message number.
        seq: u64,
        /// Expected immediate.
        expected: u32,
        /// Received immediate.
        found: Option<u32>,
    },
    /// The completion's byte count is not the message length.
    #[error("message {seq}: {found} bytes, expected {expected}")]
    LengthMismatch {
        /// Message number.
        seq: u64,
        /// Expected length.
        expected: u64,
        /// `byte_len` of the completion.
        found: u64,
    },
    /// A completion that this side did not expect (kind, opcode or order).
    #[error("unexpected completion: {0}")]
    Unexpected(String),
    /// The peer sent something malformed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The other side (same process) failed, so this side stopped.
    #[error("stopped because the peer side failed")]
    PeerFailed,
    /// Nothing happened for too long.
    #[error("no progress for {waited_ms} ms: {state}")]
    Stalled {
        /// How long nothing completed.
        waited_ms: u128,
        /// Counters at that point.
        state: String,
    },
    /// A bad configuration.
    #[error("invalid selftest configuration: {0}")]
    Config(String),
}

/// Shape of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Size of one slot (and of a full message).
    pub slot_bytes: usize,
    /// Slots per region; a region is `slot_bytes * slots`.
    pub slots: usize,
    /// Outstanding WRITEs on the sender (≤ slots).
    pub window: usize,
    /// Stream at least this many bytes.
    pub total_bytes: u64,
    /// Pattern seed.
    pub seed: u64,
    /// Busy-poll or event CQs.
    pub cq_mode: CqMode,
    /// Fail when nothing completes for this long.
    pub stall_timeout: Duration,
    /// QP settings (port, GID index); queue depths are derived from the shape.
    pub port_num: u8,
    /// Source GID index (`None`: the port's preferred).
    pub gid_index: Option<u32>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            slot_bytes: 1 << 20,
            slots: 16,
            window: 8,
            total_bytes: 64 << 20,
            seed: 0x0b11_7000,
            cq_mode: CqMode::BusyPoll,
            stall_timeout: Duration::from_secs(30),
            port_num: 1,
            gid_index: None,
        }
    }
}

impl StreamConfig {
    /// Checks the relations between the fields.
    pub fn validate(&self) -> Result<(), SelftestError> {
        let bad = |m: String| Err(SelftestError::Config(m));
        if self.slots == 0 || self.slots > SLOTS_MAX {
            return bad(format!("slots = {} outside 1..={SLOTS_MAX}", self.slots));
        }
        if self.window == 0 || self.window > self.slots {
            return bad(format!("window = {} outside 1..=slots ({})", self.window, self.slots));
        }
        if self.slot_bytes < 2 || u32::try_from(self.slot_bytes).is_err() {
            return bad(format!("slot_bytes = {} outside 2..4 GiB", self.slot_bytes));
        }
        if self.slot_bytes.checked_mul(self.slots).is_none() {
            return bad("slot_bytes * slots overflows".into());
        }
        if self.total_bytes == 0 {
            return bad("total_bytes must be > 0".into());
        }
        Ok(())
    }

    /// Bytes of one region.
    pub fn region_bytes(&self) -> usize {
        self.slot_bytes * self.slots
    }

    fn qp_config(&self, max_send_wr: usize, max_recv_wr: usize) -> QpConfig {
        QpConfig {
            port_num: self.port_num,
            gid_index: self.gid_index,
            // bounded by SLOTS_MAX (validated), so these fit u32
            max_send_wr: max_send_wr as u32,
            max_recv_wr: max_recv_wr as u32,
            max_inline_bytes: CREDIT_BYTES as u32,
            ..QpConfig::default()
        }
    }
}

/// Length of message `seq`: a full slot, except every 7th message, which is
/// shorter and of odd length, so length bugs cannot hide behind full slots.
pub fn message_len(slot_bytes: usize, seq: u64) -> usize {
    if seq % 7 == 3 {
        let cut = (seq.wrapping_mul(7919) as usize) % (slot_bytes / 2);
        (slot_bytes - cut) | 1
    } else {
        slot_bytes
    }
    .min(slot_bytes)
}

/// Number of messages and bytes needed to stream at least `total_bytes`.
pub fn plan(slot_bytes: usize, total_bytes: u64) -> (u64, u64) {
    let (mut messages, mut bytes) = (0u64, 0u64);
    while bytes < total_bytes {
        bytes += message_len(slot_bytes, messages) as u64;
        messages += 1;
    }
    (messages, bytes)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills `buf` with the pattern of message `seq` (different for every seq,
/// so stale slot contents fail verification).
pub fn fill_pattern(seed: u64, seq: u64, buf: &mut [u8]) {
    let base = seed ^ seq.rotate_left(32) ^ 0xb117_b117;
    let mut chunks = buf.chunks_exact_mut(8);
    let mut k = 0u64;
    for chunk in &mut chunks {
        chunk.copy_from_slice(&splitmix64(base.wrapping_add(k)).to_le_bytes());
        k += 1;
    }
    let tail = chunks.into_remainder();
    let last = splitmix64(base.wrapping_add(k)).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

fn encode_credit(consumed: u64) -> [u8; CREDIT_BYTES] {
    let mut msg = [0u8; CREDIT_BYTES];
    msg[..4].copy_from_slice(&CREDIT_MAGIC.to_le_bytes());
    msg[8..].copy_from_slice(&consumed.to_le_bytes());
    msg
}

fn decode_credit(msg: &[u8]) -> Result<u64, SelftestError> {
    let bad = || SelftestError::Protocol(format!("malformed credit message {msg:02x?}"));
    let magic = msg.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if msg.len() != CREDIT_BYTES || magic != Some(CREDIT_MAGIC) {
        return Err(bad());
    }
    let count = msg.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    count.ok_or_else(bad)
}

/// What the receiver tells the sender (over the control channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverAdvert {
    /// The receiver's QP.
    pub qp: RemoteQpParams,
    /// The receiver's slot region.
    pub region: RemoteRegion,
    /// Slot size.
    pub slot_bytes: u64,
    /// Slot count.
    pub slots: u32,
}

/// What the sender tells the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderHello {
    /// The sender's QP.
    pub qp: RemoteQpParams,
    /// Messages that will be sent.
    pub messages: u64,
    /// Pattern seed.
    pub seed: u64,
}

/// The outcome of one side of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    /// "sender" or "receiver".
    pub role: String,
    /// Messages transferred and verified.
    pub messages: u64,
    /// Payload bytes transferred and verified.
    pub bytes: u64,
    /// From the first post (sender) / connect (receiver) to the last credit.
    pub elapsed_s: f64,
    /// `bytes / elapsed` in MiB/s (2^20, as perftest's "MB/sec").
    pub mib_per_s: f64,
    /// Credit messages sent (receiver) or received (sender).
    pub credit_messages: u64,
    /// Of those, sent inline (receiver only).
    pub inline_credits: u64,
    /// Of those, sent from registered memory (receiver only).
    pub registered_credits: u64,
    /// This side's QP.
    pub local: RemoteQpParams,
    /// The peer's QP.
    pub remote: RemoteQpParams,
    /// The slot region written into (the receiver's).
    pub target_region: RemoteRegion,
}

fn report(
    role: &str,
    messages: u64,
    bytes: u64,
    elapsed: Duration,
    credits: (u64, u64, u64),
    qp: &QueuePair,
    target_region: RemoteRegion,
) -> StreamReport {
    let elapsed_s = elapsed.as_secs_f64();
    StreamReport {
        role: role.to_owned(),
        messages,
        bytes,
        elapsed_s,
        mib_per_s: if elapsed_s > 0.0 {
            bytes as f64 / f64::from(1 << 20) / elapsed_s
        } else {
            0.0
        },
        credit_messages: credits.0,
        inline_credits: credits.1,
        registered_credits: credits.2,
        local: qp.endpoint(),
        remote: qp.remote().copied().unwrap_or(qp.endpoint()),
        target_region,
    }
}

/// Progress watchdog shared by both sides.
struct Watchdog {
    last_progress: Instant,
    limit: Duration,
}

impl Watchdog {
    fn new(limit: Duration) -> Self {
        Watchdog { last_progress: Instant::now(), limit }
    }

    fn progress(&mut self) {
        self.last_progress = Instant::now();
    }

    fn check(&self, state: impl FnOnce() -> String) -> Result<(), SelftestError> {
        let waited = self.last_progress.elapsed();
        if waited > self.limit {
            return Err(SelftestError::Stalled { waited_ms: waited.as_millis(), state: state() });
        }
        Ok(())
    }
}

/// The receiving side: slot region, zero-SGE RECVs, verification, credits.
#[derive(Debug)]
pub struct Receiver {
    cfg: StreamConfig,
    cq: Arc<CompletionQueue>,
    qp: QueuePair,
    slots_region: OwnedRegion,
    credit_region: OwnedRegion,
    messages: u64,
    seed: u64,
    next_seq: u64,
    bytes: u64,
    credits_sent_upto: u64,
    credit_sends_posted: u64,
    credit_sends_done: u64,
    inline_credits: u64,
    registered_credits: u64,
    started: Option<Instant>,
}

impl Receiver {
    /// Creates the CQ, QP (pre-posting one RECV per slot) and both regions.
    pub fn new(pd: &Arc<ProtectionDomain>, cfg: &StreamConfig) -> Result<Self, SelftestError> {
        cfg.validate()?;
        let ctx = pd.context();
        // receives: one per slot; sends: credits, at most one per slot
        let cq = CompletionQueue::new(ctx, (2 * cfg.slots) as u32, cfg.cq_mode)?;
        let qp = QueuePair::create_rc(pd, &cq, &cq, &cfg.qp_config(cfg.slots, cfg.slots))?;
        let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
        let slots_region = OwnedRegion::new(pd, cfg.region_bytes(), access)?;
        let credit_region =
            OwnedRegion::new(pd, cfg.slots * CREDIT_STRIDE_BYTES, Access::LOCAL_WRITE)?;
        let recvs: Vec<RecvRequest> = (0..cfg.slots as u64)
            .map(|i| RecvRequest { wr_id: wr_id(KIND_DATA_RECV, i), buf: None })
            .collect();
        qp.post_recv(&recvs)?;
        Ok(Receiver {
            cfg: cfg.clone(),
            cq,
            qp,
            slots_region,
            credit_region,
            messages: 0,
            seed: 0,
            next_seq: 0,
            bytes: 0,
            credits_sent_upto: 0,
            credit_sends_posted: 0,
            credit_sends_done: 0,
            inline_credits: 0,
            registered_credits: 0,
            started: None,
        })
    }

    /// What the sender needs.
    pub fn advert(&self) -> ReceiverAdvert {
        ReceiverAdvert {
            qp: self.qp.endpoint(),
            region: self.slots_region.mr().remote(),
            slot_bytes: self.cfg.slot_bytes as u64,
            slots: self.cfg.slots as u32,
        }
    }

    /// Connects to the sender described by `hello`.
    pub fn connect(&mut self, hello: &SenderHello) -> Result<(), SelftestError> {
        self.qp.connect(&hello.qp)?;
        self.messages = hello.messages;
        self.seed = hello.seed;
        self.started = Some(Instant::now());
        Ok(())
    }

    fn done(&self) -> bool {
        self.next_seq == self.messages
            && self.credits_sent_upto == self.messages
            && self.credit_sends_done == self.credit_sends_posted
    }

    /// Receives and verifies every message, returning credits; ends when the
    /// last credit's SEND has completed.
    pub fn run(&mut self) -> Result<StreamReport, SelftestError> {
        self.run_until(&AtomicBool::new(false))
    }

    /// [`Receiver::run`], giving up with [`SelftestError::PeerFailed`] once
    /// `abort` is set.
    pub fn run_until(&mut self, abort: &AtomicBool) -> Result<StreamReport, SelftestError> {
        let mut wcs = [Completion::default(); POLL_BATCH];
        let mut got = vec![0u8; self.cfg.slot_bytes];
        let mut want = vec![0u8; self.cfg.slot_bytes];
        let mut watchdog = Watchdog::new(self.cfg.stall_timeout);
        while !self.done() {
            if abort.load(Ordering::Relaxed) {
                return Err(SelftestError::PeerFailed);
            }
            self.send_credit()?;
            let n = self.cq.poll_wait(&mut wcs, POLL_SLICE)?;
            if n == 0 {
                watchdog.check(|| self.state())?;
                continue;
            }
            watchdog.progress();
            for c in &wcs[..n] {
                c.check()?;
                match wr_kind(c.wr_id) {
                    KIND_DATA_RECV => self.on_message(c, &mut got, &mut want)?,
                    KIND_CREDIT_SEND if c.opcode == WcOpcode::Send => {
                        if wr_index(c.wr_id) != self.credit_sends_done {
                            return Err(SelftestError::Unexpected(format!(
                                "credit SEND {} completed, expected {}",
                                wr_index(c.wr_id),
                                self.credit_sends_done
                            )));
                        }
                        self.credit_sends_done += 1;
                    }
                    _ => return Err(SelftestError::Unexpected(format!("receiver got {c:?}"))),
                }
            }
        }
        let elapsed = self.started.map_or(Duration::ZERO, |t| t.elapsed());
        let credits = (self.credit_sends_posted, self.inline_credits, self.registered_credits);
        Ok(report(
            "receiver",
            self.messages,
            self.bytes,
            elapsed,
            credits,
            &self.qp,
            self.advert().region,
        ))
    }

    fn state(&self) -> String {
        format!(
            "receiver: {} of {} messages verified, credits sent up to {}, credit SENDs {}/{}",
            self.next_seq,
            self.messages,
            self.credits_sent_upto,
            self.credit_sends_done,
            self.credit_sends_posted
        )
    }

    fn on_message(
        &mut self,
        c: &Completion,
        got: &mut [u8],
        want: &mut [u8],
    ) -> Result<(), SelftestError> {
        let seq = self.next_seq;
        if c.opcode != WcOpcode::RecvRdmaWithImm {
            return Err(SelftestError::Unexpected(format!(
                "expected RECV_RDMA_WITH_IMM, got {c:?}"
            )));
        }
        if seq >= self.messages {
            return Err(SelftestError::Unexpected(format!(
                "message beyond the announced {}",
                self.messages
            )));
        }
        let expected_imm = seq as u32; // imm carries seq mod 2^32
        if c.imm != Some(expected_imm) {
            return Err(SelftestError::ImmMismatch { seq, expected: expected_imm, found: c.imm });
        }
        let len = message_len(self.cfg.slot_bytes, seq);
        if c.byte_len as usize != len {
            return Err(SelftestError::LengthMismatch {
                seq,
                expected: len as u64,
                found: c.byte_len.into(),
            });
        }
        let slot = (seq % self.cfg.slots as u64) as usize;
        let (got, want) = (&mut got[..len], &mut want[..len]);
        self.slots_region.read_at(slot * self.cfg.slot_bytes, got)?;
        fill_pattern(self.seed, seq, want);
        if got != want {
            let offset = got.iter().zip(want.iter()).position(|(g, w)| g != w).unwrap_or(0);
            return Err(SelftestError::DataMismatch {
                seq,
                offset,
                expected: want[offset],
                found: got[offset],
            });
        }
        self.qp.post_recv(&[RecvRequest { wr_id: c.wr_id, buf: None }])?;
        self.next_seq += 1;
        self.bytes += len as u64;
        Ok(())
    }

    /// Sends one cumulative credit if there is something to credit and the
    /// send queue has room.
    fn send_credit(&mut self) -> Result<(), SelftestError> {
        let outstanding = self.credit_sends_posted - self.credit_sends_done;
        if self.credits_sent_upto == self.next_seq || outstanding >= self.cfg.slots as u64 {
            return Ok(());
        }
        let msg = encode_credit(self.next_seq);
        let n = self.credit_sends_posted;
        let id = wr_id(KIND_CREDIT_SEND, n);
        if n.is_multiple_of(2) {
            self.qp.post_send(SendRequest {
                wr_id: id,
                payload: SendPayload::Inline(&msg),
                signaled: true,
            })?;
            self.inline_credits += 1;
        } else {
            // buffer n % slots is free: fewer than `slots` sends are outstanding
            // and they complete in order
            let offset = (n % self.cfg.slots as u64) as usize * CREDIT_STRIDE_BYTES;
            self.credit_region.write_at(offset, &msg)?;
            let buf = self.credit_region.mr().slice(offset, CREDIT_BYTES)?;
            self.qp.post_send(SendRequest {
                wr_id: id,
                payload: SendPayload::Registered(buf),
                signaled: true,
            })?;
            self.registered_credits += 1;
        }
        self.credit_sends_posted += 1;
        self.credits_sent_upto = self.next_seq;
        Ok(())
    }
}

/// The sending side: source slots, WRITE_WITH_IMM window, credit RECVs.
#[derive(Debug)]
pub struct Sender {
    cfg: StreamConfig,
    cq: Arc<CompletionQueue>,
    qp: QueuePair,
    source: OwnedRegion,
    credit_region: OwnedRegion,
    target: Option<ReceiverAdvert>,
    messages: u64,
    total_bytes: u64,
    next_seq: u64,
    writes_done: u64,
    credited: u64,
    credit_msgs: u64,
}

impl Sender {
    /// Creates the CQ, QP (pre-posting one credit RECV per slot) and regions.
    pub fn new(pd: &Arc<ProtectionDomain>, cfg: &StreamConfig) -> Result<Self, SelftestError> {
        cfg.validate()?;
        let ctx = pd.context();
        let cq = CompletionQueue::new(ctx, (cfg.window + cfg.slots) as u32, cfg.cq_mode)?;
        let qp = QueuePair::create_rc(pd, &cq, &cq, &cfg.qp_config(cfg.window, cfg.slots))?;
        let source = OwnedRegion::new(pd, cfg.region_bytes(), Access::NONE)?;
        let credit_region =
            OwnedRegion::new(pd, cfg.slots * CREDIT_STRIDE_BYTES, Access::LOCAL_WRITE)?;
        let recvs = (0..cfg.slots)
            .map(|i| {
                let buf = credit_region.mr().slice(i * CREDIT_STRIDE_BYTES, CREDIT_STRIDE_BYTES)?;
                Ok(RecvRequest { wr_id: wr_id(KIND_CREDIT_RECV, i as u64), buf: Some(buf) })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        qp.post_recv(&recvs)?;
        let (messages, total_bytes) = plan(cfg.slot_bytes, cfg.total_bytes);
        Ok(Sender {
            cfg: cfg.clone(),
            cq,
            qp,
            source,
            credit_region,
            target: None,
            messages,
            total_bytes,
            next_seq: 0,
            writes_done: 0,
            credited: 0,
            credit_msgs: 0,
        })
    }

    /// What the receiver needs.
    pub fn hello(&self) -> SenderHello {
        SenderHello { qp: self.qp.endpoint(), messages: self.messages, seed: self.cfg.seed }
    }

    /// Validates the receiver's advert (peer input) and connects to it.
    pub fn connect(&mut self, advert: &ReceiverAdvert) -> Result<(), SelftestError> {
        if advert.slot_bytes != self.cfg.slot_bytes as u64
            || advert.slots as usize != self.cfg.slots
        {
            return Err(SelftestError::Protocol(format!(
                "receiver has {} slots of {} bytes, this sender {} of {}",
                advert.slots, advert.slot_bytes, self.cfg.slots, self.cfg.slot_bytes
            )));
        }
        let needed = advert.slot_bytes.checked_mul(u64::from(advert.slots));
        if needed.is_none_or(|n| n > advert.region.len_bytes) {
            return Err(SelftestError::Protocol(format!(
                "advertised region of {} bytes is smaller than its slots",
                advert.region.len_bytes
            )));
        }
        self.qp.connect(&advert.qp)?;
        self.target = Some(*advert);
        Ok(())
    }

    fn done(&self) -> bool {
        self.writes_done == self.messages && self.credited == self.messages
    }

    /// Streams every message; ends when the receiver has credited the last.
    pub fn run(&mut self) -> Result<StreamReport, SelftestError> {
        self.run_until(&AtomicBool::new(false))
    }

    /// [`Sender::run`], giving up with [`SelftestError::PeerFailed`] once
    /// `abort` is set.
    pub fn run_until(&mut self, abort: &AtomicBool) -> Result<StreamReport, SelftestError> {
        let target =
            self.target.ok_or_else(|| SelftestError::Config("run() before connect()".into()))?;
        let mut wcs = [Completion::default(); POLL_BATCH];
        let mut scratch = vec![0u8; self.cfg.slot_bytes];
        let mut watchdog = Watchdog::new(self.cfg.stall_timeout);
        let started = Instant::now();
        while !self.done() {
            if abort.load(Ordering::Relaxed) {
                return Err(SelftestError::PeerFailed);
            }
            self.post_writes(&target, &mut scratch)?;
            let n = self.cq.poll_wait(&mut wcs, POLL_SLICE)?;
            if n == 0 {
                watchdog.check(|| self.state())?;
                continue;
            }
            watchdog.progress();
            for c in &wcs[..n] {
                c.check()?;
                match wr_kind(c.wr_id) {
                    KIND_WRITE if c.opcode == WcOpcode::RdmaWrite => {
                        // RC completes signalled WRs of one QP in order
                        if wr_index(c.wr_id) != self.writes_done {
                            return Err(SelftestError::Unexpected(format!(
                                "WRITE {} completed, expected {}",
                                wr_index(c.wr_id),
                                self.writes_done
                            )));
                        }
                        self.writes_done += 1;
                    }
                    KIND_CREDIT_RECV if c.opcode == WcOpcode::Recv => self.on_credit(c)?,
                    _ => return Err(SelftestError::Unexpected(format!("sender got {c:?}"))),
                }
            }
        }
        let credits = (self.credit_msgs, 0, 0);
        Ok(report(
            "sender",
            self.messages,
            self.total_bytes,
            started.elapsed(),
            credits,
            &self.qp,
            target.region,
        ))
    }

    fn state(&self) -> String {
        format!(
            "sender: {} of {} messages posted, {} writes completed, {} credited",
            self.next_seq, self.messages, self.writes_done, self.credited
        )
    }

    /// Posts as many writes as the window and the credits allow, chained.
    fn post_writes(
        &mut self,
        target: &ReceiverAdvert,
        scratch: &mut [u8],
    ) -> Result<(), SelftestError> {
        let slots = self.cfg.slots as u64;
        let mut batch = Vec::with_capacity(CHAIN_MAX);
        while self.next_seq < self.messages
            && self.next_seq - self.writes_done < self.cfg.window as u64
            && self.next_seq - self.credited < slots
            && batch.len() < CHAIN_MAX
        {
            let seq = self.next_seq;
            let slot = (seq % slots) as usize;
            let len = message_len(self.cfg.slot_bytes, seq);
            let offset = slot * self.cfg.slot_bytes;
            // The source slot is free: fewer than `window` (≤ slots) writes
            // are outstanding, and they complete in order.
            fill_pattern(self.cfg.seed, seq, &mut scratch[..len]);
            self.source.write_at(offset, &scratch[..len])?;
            batch.push(WriteWithImm {
                wr_id: wr_id(KIND_WRITE, seq),
                local: self.source.mr().slice(offset, len)?,
                remote: target.region.slice(offset as u64, len as u32)?,
                imm: seq as u32,
                signaled: true,
            });
            self.next_seq += 1;
        }
        if !batch.is_empty() {
            self.qp.post_write_with_imm(&batch)?;
        }
        Ok(())
    }

    fn on_credit(&mut self, c: &Completion) -> Result<(), SelftestError> {
        let index = wr_index(c.wr_id) as usize;
        if index >= self.cfg.slots || c.byte_len as usize != CREDIT_BYTES {
            return Err(SelftestError::Protocol(format!("bad credit completion {c:?}")));
        }
        let mut msg = [0u8; CREDIT_BYTES];
        self.credit_region.read_at(index * CREDIT_STRIDE_BYTES, &mut msg)?;
        let consumed = decode_credit(&msg)?;
        if consumed < self.credited || consumed > self.next_seq {
            return Err(SelftestError::Protocol(format!(
                "credit for {consumed} messages, but {} were credited and {} sent",
                self.credited, self.next_seq
            )));
        }
        self.credited = consumed;
        self.credit_msgs += 1;
        let buf =
            self.credit_region.mr().slice(index * CREDIT_STRIDE_BYTES, CREDIT_STRIDE_BYTES)?;
        self.qp.post_recv(&[RecvRequest { wr_id: c.wr_id, buf: Some(buf) }])?;
        Ok(())
    }
}

/// Both sides in one process on one device (two RC QPs connected to each
/// other), each side in its own thread. Returns (sender, receiver) reports.
pub fn run_loopback(
    ctx: &Arc<Context>,
    cfg: &StreamConfig,
) -> Result<(StreamReport, StreamReport), SelftestError> {
    let pd = ProtectionDomain::new(ctx)?;
    let mut receiver = Receiver::new(&pd, cfg)?;
    let mut sender = Sender::new(&pd, cfg)?;
    receiver.connect(&sender.hello())?;
    sender.connect(&receiver.advert())?;
    // Whichever side fails first stops the other, and its error is reported
    // (not the other's PeerFailed).
    let abort = AtomicBool::new(false);
    let stop_on_error = |result: Result<StreamReport, SelftestError>| {
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        result
    };
    let (tx, rx) = std::thread::scope(|s| {
        let rx = s.spawn(|| stop_on_error(receiver.run_until(&abort)));
        let tx = stop_on_error(sender.run_until(&abort));
        let rx = rx
            .join()
            .unwrap_or_else(|_| Err(SelftestError::Unexpected("receiver thread panicked".into())));
        (tx, rx)
    });
    match (tx, rx) {
        (Ok(tx), Ok(rx)) => Ok((tx, rx)),
        (Err(SelftestError::PeerFailed), Err(e)) | (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lengths_vary_and_stay_in_the_slot() {
        let slot = 1 << 20;
        for seq in 0..200 {
            let len = message_len(slot, seq);
            assert!(len >= slot / 2 && len <= slot, "seq {seq}: {len}");
        }
        assert_eq!(message_len(slot, 0), slot);
        assert_eq!(message_len(slot, 3) % 2, 1);
        assert!(message_len(2, 3) <= 2);
    }

    #[test]
    fn plan_covers_the_total() {
        let (messages, bytes) = plan(1 << 20, 64 << 20);
        assert!(bytes >= 64 << 20);
        assert!(bytes - message_len(1 << 20, messages - 1) as u64 <= 64 << 20);
        assert_eq!(plan(1 << 20, 1), (1, 1 << 20));
    }

    #[test]
    fn pattern_depends_on_seq_and_handles_odd_lengths() {
        let mut a = vec![0u8; 1001];
        let mut b = vec![0u8; 1001];
        fill_pattern(1, 5, &mut a);
        fill_pattern(1, 6, &mut b);
        assert_ne!(a, b);
        let mut c = vec![0u8; 1001];
        fill_pattern(1, 5, &mut c);
        assert_eq!(a, c);
        let mut prefix = vec![0u8; 13];
        fill_pattern(1, 5, &mut prefix);
        assert_eq!(prefix[..], a[..13]);
    }

    #[test]
    fn credit_messages_round_trip_and_reject_garbage() {
        assert_eq!(decode_credit(&encode_credit(12345)).unwrap(), 12345);
        assert!(decode_credit(&[0u8; CREDIT_BYTES]).is_err());
        assert!(decode_credit(&encode_credit(1)[..8]).is_err());
    }

    #[test]
    fn wr_ids_keep_kind_and_index() {
        let id = wr_id(KIND_CREDIT_RECV, 77);
        assert_eq!(wr_kind(id), KIND_CREDIT_RECV);
        assert_eq!(wr_index(id), 77);
    }

    #[test]
    fn config_relations_are_checked() {
        assert!(StreamConfig::default().validate().is_ok());
        let too_wide = StreamConfig { window: 17, ..StreamConfig::default() };
        assert!(too_wide.validate().is_err());
        let no_slots = StreamConfig { slots: 0, ..StreamConfig::default() };
        assert!(no_slots.validate().is_err());
    }

    #[test]
    fn adverts_are_json() {
        let advert = ReceiverAdvert {
            qp: RemoteQpParams {
                qpn: 18,
                psn: 5,
                gid: "::ffff:10.77.0.1".parse().unwrap(),
                gid_index: 1,
                lid: 0,
                mtu: crate::types::Mtu::Mtu4096,
            },
            region: RemoteRegion { addr: 0x7f00_0000_0000, len_bytes: 16 << 20, rkey: 0x99 },
            slot_bytes: 1 << 20,
            slots: 16,
        };
        let json = serde_json::to_string(&advert).unwrap();
        assert_eq!(serde_json::from_str::<ReceiverAdvert>(&json).unwrap(), advert);
    }
}
