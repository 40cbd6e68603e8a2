//! The one data-plane abstraction every transport implements, and the in-process backend.
//!
//! A transfer's readers hand [`Frame`]s to a [`FrameSender`]; the target's writers take them from
//! a [`FrameReceiver`]. Setting a pair up (listen, dial, accept with the session's parameters)
//! is the other half of the seam, [`crate::plane::DataPlane`]. The trait is shaped for zero-copy
//! backends:
//! - payloads are either a leased slot of the sender's [`BufferPool`] (which an RDMA backend has
//!   registered with the NIC, so the reader fills registered memory directly) or a
//!   [`FileRegion`] (which TCP can `sendfile`, and the in-process backend hands to
//!   `copy_file_range` on the target), never a `Vec<u8>`;
//! - the sender says which form it wants ([`FrameSender::payload_pref`]);
//! - every backend bounds the frames in flight, so `send` blocks when the window is full.
//!
//! Both halves are `Sync`: several reader threads share one sender and several writer threads
//! share one receiver; a backend with N streams spreads frames over them internally.
//!
//! # Rules every backend follows (checked by [`crate::frame_suite`])
//! - **Sending**: [`check_outgoing`] runs on every frame: no End frame through `send` (only
//!   `finish` ends a session), no payload longer than [`FrameSender::frame_bytes_max`], and the
//!   header's length is the payload's. A [`Payload::Stream`] cannot be sent.
//! - **Receiving**: [`ReceiveRules`](crate::frame::ReceiveRules) runs on every header before a
//!   payload is allocated or read: the payload fits the session's chunk size; `FLAG_UNCHECKED`
//!   only where the sender said it needs no checksums (in-process; RDMA without frame
//!   checksums); never over TCP. Payload checksums are verified by the consumer (the storage
//!   writer), in one place for every backend.
//! - **End**: `finish` sends one End per stream; a receiver never delivers End frames: `recv`
//!   returns `Ok(None)` once every stream ended and every frame was delivered, on every thread,
//!   and a frame after a stream's End is a protocol error. A stream that closes without its End
//!   is `PeerGone`.
//! - **File regions**: a sender reads a region when it sends it (TCP: hash, then `sendfile`;
//!   RDMA: read into registered memory; in-process: the receiver's consumer reads it). A region
//!   that cannot be read in full is the file's failure, not the session's: the sender calls
//!   [`FileRegion::failed`] and skips the frame (or, once its header left, pads the payload so the
//!   target's checksum fails).
//! - **Failure and cancellation**: the first failure of any stream or queue pair is the one every
//!   caller sees ([`crate::cancel::FirstFailure`]); `abort` and that first failure fire the
//!   session's [`Cancel`](crate::cancel::Cancel), which *wakes* every blocked call (no call
//!   sleeps and re-checks a flag).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::cancel::{Cancel, FirstFailure};
use crate::frame::{FrameError, FrameHeader, FrameKind};
use crate::pool::{BufLease, BufferPool, PoolError};

/// What form of payload the sender wants readers to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadPref {
    /// Data in a slot leased from [`FrameSender::pool`].
    Buffer,
    /// A reference to the file range; the transport moves the bytes itself.
    FileRegion,
}

/// A byte range of an open file.
#[derive(Debug, Clone)]
pub struct FileRegion {
    pub file: Arc<File>,
    pub offset_bytes: u64,
    pub len_bytes: u32,
    /// Shared by every region of one source file: dropped with the last of them, once the
    /// transport has read them all (or given up on them), it tells the source.
    pub done: Option<Arc<ReadDone>>,
}

impl FileRegion {
    pub fn new(file: Arc<File>, offset_bytes: u64, len_bytes: u32) -> Self {
        FileRegion { file, offset_bytes, len_bytes, done: None }
    }

    /// Records that this region could not be read in full (the file shrank, a read failed):
    /// the frame that carries it is sent anyway (its checksum no longer matches, so the target
    /// discards the file), and the source reports the file as failed.
    pub fn failed(&self, reason: String) {
        if let Some(d) = &self.done {
            d.fail(reason);
        }
    }

    /// Reads the whole region into `buf` (`len_bytes` long) for a transport that sends from
    /// memory. `false`: it could not (the file shrank, a read failed); the region was marked
    /// [`FileRegion::failed`] and the frame must be skipped, not the session failed.
    pub fn read_into(&self, buf: &mut [u8]) -> bool {
        match self.file.read_exact_at(buf, self.offset_bytes) {
            Ok(()) => true,
            Err(e) => {
                self.failed(format!(
                    "reading {} bytes at offset {} failed: {e} (did the file shrink?)",
                    buf.len(),
                    self.offset_bytes
                ));
                false
            }
        }
    }
}

type ReadDoneAction = Box<dyn FnOnce(Option<String>) + Send>;

/// Runs an action once, when the last clone of its `Arc` is dropped: the source learns when a
/// file's regions have all been read by the transport (they are read when they are sent, long
/// after the reader handed them over), and whether one of them failed. The source then checks
/// that the file did not change while it was read, and says so to the target: the same
/// protocol fact whatever form the payload took.
pub struct ReadDone {
    failure: std::sync::Mutex<Option<String>>,
    action: std::sync::Mutex<Option<ReadDoneAction>>,
}

impl ReadDone {
    pub fn new(action: impl FnOnce(Option<String>) + Send + 'static) -> Arc<Self> {
        Arc::new(ReadDone {
            failure: std::sync::Mutex::new(None),
            action: std::sync::Mutex::new(Some(Box::new(action))),
        })
    }

    /// Records a failure; the first one is kept.
    pub fn fail(&self, reason: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(reason);
        }
    }
}

impl std::fmt::Debug for ReadDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadDone").finish_non_exhaustive()
    }
}

impl Drop for ReadDone {
    fn drop(&mut self) {
        let action = self.action.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let failure = self.failure.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(action) = action {
            action(failure);
        }
    }
}

/// A payload that is still in the transport (a TCP receiver lends its socket): the consumer
/// reads it straight to where it belongs, a piece at a time while each piece is in cache,
/// instead of the transport copying it into a buffer first. Until it is consumed or dropped,
/// the stream it arrives on carries nothing else; dropping it unread discards the rest.
pub trait PayloadStream: Send + std::fmt::Debug {
    /// Payload bytes not yet read.
    fn remaining(&self) -> u64;
    /// Reads exactly `buf.len()` (at most `remaining()`) next payload bytes.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError>;
    /// Moves the next `len` bytes into `file` at `offset` without user-space copies, where the
    /// transport can (`None`: it cannot, use `read_exact`). `Some(Ok(Err(_)))`: the file could
    /// not be written (the stream is still usable; the rest is discarded when it is dropped).
    fn splice_to(
        &mut self,
        _file: &File,
        _offset: u64,
        _len: usize,
    ) -> Option<Result<std::io::Result<()>, TransportError>> {
        None
    }
}

#[derive(Debug)]
pub enum Payload {
    Empty,
    Buffer(BufLease),
    File(FileRegion),
    Stream(Box<dyn PayloadStream>),
}

impl Payload {
    pub fn len_bytes(&self) -> u64 {
        match self {
            Payload::Empty => 0,
            Payload::Buffer(b) => b.len() as u64,
            Payload::File(r) => u64::from(r.len_bytes),
            Payload::Stream(s) => s.remaining(),
        }
    }
}

/// A header and its payload. For `Buffer` payloads the header's checksum covers `data()`.
#[derive(Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Payload,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the transfer was cancelled")]
    Cancelled,
    #[error("the peer went away: {detail}")]
    PeerGone { detail: String },
    #[error("no data moved for {idle_secs} s (stall timeout); the peer or the network is stuck")]
    Stalled { idle_secs: u64 },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{op} failed on {peer}")]
    Io { op: &'static str, peer: String, source: std::io::Error },
    #[error("transport not available: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("protocol violation by {peer}: {detail}")]
    Protocol { peer: String, detail: String },
    /// The peer sent a frame that breaks the rules ([`crate::frame::ReceiveRules`]).
    #[error("bad frame from {peer}")]
    BadFrame { peer: String, source: FrameError },
    /// A bug in the caller (a frame no backend may send), never the peer's doing.
    #[error("misuse of the data plane: {0}")]
    Misuse(&'static str),
}

/// The checks every sender runs on every frame before it queues it (see the module docs).
pub fn check_outgoing(frame: &Frame, frame_bytes_max: u32) -> Result<(), TransportError> {
    let h = &frame.header;
    if h.kind == FrameKind::End {
        return Err(TransportError::Misuse("End frames are sent by finish(), not send()"));
    }
    if matches!(frame.payload, Payload::Stream(_)) {
        return Err(TransportError::Misuse("a received payload stream cannot be sent"));
    }
    if h.len_bytes > frame_bytes_max {
        return Err(
            FrameError::TooLong { len_bytes: h.len_bytes, max_bytes: frame_bytes_max }.into()
        );
    }
    let carried_bytes = frame.payload.len_bytes();
    if u64::from(h.len_bytes) != carried_bytes {
        return Err(FrameError::PayloadLength {
            kind: h.kind,
            len_bytes: h.len_bytes,
            carried_bytes,
        }
        .into());
    }
    Ok(())
}

/// Counters every backend keeps, reported in the transfer summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub name: String,
    pub streams: u32,
    pub frames: u64,
    pub payload_bytes: u64,
}

/// The sending half of a data plane.
pub trait FrameSender: Send + Sync {
    fn payload_pref(&self) -> PayloadPref;
    /// Pool that `Buffer` payloads must be leased from.
    fn pool(&self) -> &BufferPool;
    /// Largest payload one frame may carry.
    fn frame_bytes_max(&self) -> u32;
    /// Whether frames need payload checksums. Only a transport whose bytes never leave the
    /// process may say no (readers then mark frames `FLAG_UNCHECKED` and skip hashing).
    fn needs_checksums(&self) -> bool {
        true
    }
    /// Sends one frame; blocks while the in-flight window is full.
    fn send(&self, frame: Frame) -> Result<(), TransportError>;
    /// No more frames will be sent: flush and tell the receiver.
    fn finish(&self) -> Result<(), TransportError>;
    /// Cancels: blocked and later calls on either side fail promptly.
    fn abort(&self);
    fn stats(&self) -> TransportStats;
}

/// The receiving half of a data plane.
pub trait FrameReceiver: Send + Sync {
    /// The next frame, or `None` after the sender finished and every frame was delivered.
    /// Payload checksums are verified by the consumer (the storage writer), in one place for
    /// every backend.
    fn recv(&self) -> Result<Option<Frame>, TransportError>;
    fn abort(&self);
}

/// Fault injection for the in-process backend, so failures replay from a seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemFaults {
    /// Deliver frames out of order within a window of this many (simulates N streams).
    pub reorder_window: usize,
    /// Seed for the reordering.
    pub seed: u64,
    /// After this many frames the "peer disappears": both ends fail with `PeerGone`.
    pub vanish_after_frames: Option<u64>,
}

/// Why an in-process session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemFailure {
    Cancelled,
    Vanished,
}

impl MemFailure {
    fn to_error(self) -> TransportError {
        match self {
            MemFailure::Cancelled => TransportError::Cancelled,
            MemFailure::Vanished => {
                TransportError::PeerGone { detail: "in-process peer vanished".into() }
            }
        }
    }
}

struct MemShared {
    failure: FirstFailure<MemFailure>,
    /// The End frame was delivered: every later `recv`, on any thread, returns `None`.
    ended: AtomicBool,
    /// `finish` was called: later sends are refused.
    finished: AtomicBool,
    /// Dropped (set to `None`) when the End frame is delivered, which wakes every receiver
    /// thread blocked on `end_rx` at once.
    end_tx: std::sync::Mutex<Option<Sender<()>>>,
    frames: AtomicU64,
    bytes: AtomicU64,
    faults: MemFaults,
    /// File-region frames sent and not yet dropped by the receiver.
    regions: Arc<(std::sync::Mutex<u64>, std::sync::Condvar)>,
}

impl MemShared {
    fn check(&self) -> Result<(), TransportError> {
        self.failure.check(|f| f.to_error())
    }
    fn cancel(&self) -> &Cancel {
        self.failure.cancel()
    }
}

/// In-process sender: frames move through a bounded channel without copying.
pub struct MemSender {
    tx: Sender<Frame>,
    pool: BufferPool,
    pref: PayloadPref,
    frame_bytes_max: u32,
    shared: Arc<MemShared>,
}

/// In-process receiver.
pub struct MemReceiver {
    rx: Receiver<Frame>,
    end_rx: Receiver<()>,
    shared: Arc<MemShared>,
    reorder: std::sync::Mutex<Reorder>,
}

struct Reorder {
    held: Vec<Frame>,
    rng: u64,
    ended: bool,
}

/// Creates a connected in-process pair. `depth` bounds frames queued between the halves.
pub fn mem_pair(
    pool: BufferPool,
    pref: PayloadPref,
    frame_bytes_max: u32,
    depth: usize,
    faults: MemFaults,
) -> (MemSender, MemReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(depth.max(1));
    let (end_tx, end_rx) = crossbeam_channel::bounded(0);
    let regions: Arc<(std::sync::Mutex<u64>, std::sync::Condvar)> = Arc::default();
    let cancel = Cancel::new();
    {
        // `finish` waits on this condvar for the receiver to drop the regions: a failure or an
        // abort wakes it (taking the mutex first, so a waiter between its check and its wait
        // cannot miss the notification).
        let regions = Arc::clone(&regions);
        cancel.on_fire(move || {
            drop(regions.0.lock().unwrap_or_else(|p| p.into_inner()));
            regions.1.notify_all();
        });
        // Readers blocked waiting for a buffer fail at once too, as over TCP and RDMA.
        let pool = pool.clone();
        cancel.on_fire(move || pool.close());
    }
    let shared = Arc::new(MemShared {
        failure: FirstFailure::new(cancel),
        ended: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        end_tx: std::sync::Mutex::new(Some(end_tx)),
        frames: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        faults,
        regions,
    });
    let rng = faults.seed | 1;
    (
        MemSender { tx, pool, pref, frame_bytes_max, shared: Arc::clone(&shared) },
        MemReceiver {
            rx,
            end_rx,
            shared,
            reorder: std::sync::Mutex::new(Reorder { held: Vec::new(), rng, ended: false }),
        },
    )
}

impl MemSender {
    fn put(&self, frame: Frame) -> Result<(), TransportError> {
        self.shared.check()?;
        crossbeam_channel::select! {
            send(self.tx, frame) -> sent => match sent {
                Ok(()) => Ok(()),
                Err(_) => Err(TransportError::PeerGone { detail: "receiver dropped".into() }),
            },
            recv(self.shared.cancel().wake()) -> _ => self.shared.check(),
        }
    }
}

impl FrameSender for MemSender {
    fn payload_pref(&self) -> PayloadPref {
        self.pref
    }
    fn pool(&self) -> &BufferPool {
        &self.pool
    }
    fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }
    fn needs_checksums(&self) -> bool {
        false
    }
    fn send(&self, frame: Frame) -> Result<(), TransportError> {
        check_outgoing(&frame, self.frame_bytes_max)?;
        if self.shared.finished.load(Ordering::Acquire) {
            return Err(TransportError::Misuse("send after finish"));
        }
        let mut frame = frame;
        let n = self.shared.frames.fetch_add(1, Ordering::AcqRel);
        if let Some(limit) = self.shared.faults.vanish_after_frames
            && n >= limit
        {
            self.shared.failure.fail(MemFailure::Vanished);
        }
        self.shared.bytes.fetch_add(frame.payload.len_bytes(), Ordering::Relaxed);
        if let Payload::File(region) = &mut frame.payload {
            // The receiver reads a region when it writes it: `finish` waits for that, so the
            // source's checks (run when its regions are dropped) come before its end.
            let regions = Arc::clone(&self.shared.regions);
            *regions.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            let inner = region.done.take();
            region.done = Some(ReadDone::new(move |failure| {
                if let (Some(inner), Some(reason)) = (&inner, failure) {
                    inner.fail(reason);
                }
                drop(inner);
                let (count, cv) = &*regions;
                *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
                cv.notify_all();
            }));
        }
        self.put(frame)
    }
    fn finish(&self) -> Result<(), TransportError> {
        if self.shared.finished.swap(true, Ordering::AcqRel) {
            return self.shared.check();
        }
        self.shared.frames.fetch_add(1, Ordering::AcqRel);
        self.put(Frame { header: FrameHeader::end(), payload: Payload::Empty })?;
        let (count, cv) = &*self.shared.regions;
        let mut left = count.lock().unwrap_or_else(|p| p.into_inner());
        while *left > 0 {
            self.shared.check()?;
            left = cv.wait(left).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }
    fn abort(&self) {
        self.shared.failure.fail(MemFailure::Cancelled);
    }
    fn stats(&self) -> TransportStats {
        TransportStats {
            name: "in-process".into(),
            streams: 1,
            frames: self.shared.frames.load(Ordering::Relaxed),
            payload_bytes: self.shared.bytes.load(Ordering::Relaxed),
        }
    }
}

impl MemReceiver {
    fn next_raw(&self) -> Result<Option<Frame>, TransportError> {
        loop {
            if self.shared.ended.load(Ordering::Acquire) {
                return Ok(None);
            }
            self.shared.check()?;
            crossbeam_channel::select! {
                recv(self.rx) -> got => match got {
                    Ok(f) if f.header.kind == FrameKind::End => {
                        self.shared.ended.store(true, Ordering::Release);
                        // Wake the other writer threads now: they see `ended` and return.
                        self.shared.end_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
                        return Ok(None);
                    }
                    Ok(f) => return Ok(Some(f)),
                    Err(_) => {
                        self.shared.check()?;
                        return Err(TransportError::PeerGone {
                            detail: "sender dropped without finishing".into(),
                        });
                    }
                },
                // Only ever disconnects (nothing is sent on it): the loop re-checks `ended`.
                recv(self.end_rx) -> _ => continue,
                // Fired by an abort or the first failure: the loop reports it.
                recv(self.shared.cancel().wake()) -> _ => continue,
            }
        }
    }
}

impl FrameReceiver for MemReceiver {
    fn recv(&self) -> Result<Option<Frame>, TransportError> {
        let window = self.shared.faults.reorder_window;
        if window <= 1 {
            return self.next_raw();
        }
        let mut st = self.reorder.lock().unwrap_or_else(|p| p.into_inner());
        while !st.ended && st.held.len() < window {
            match self.next_raw()? {
                Some(f) => st.held.push(f),
                None => st.ended = true,
            }
        }
        if st.held.is_empty() {
            return Ok(None);
        }
        // xorshift64: deterministic from the seed, good enough to shuffle delivery order.
        st.rng ^= st.rng << 13;
        st.rng ^= st.rng >> 7;
        st.rng ^= st.rng << 17;
        let i = (st.rng % st.held.len() as u64) as usize;
        Ok(Some(st.held.swap_remove(i)))
    }
    fn abort(&self) {
        self.shared.failure.fail(MemFailure::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::checksum;

    fn chunk(pool: &BufferPool, id: u64, byte: u8) -> Frame {
        let mut lease = pool.acquire().unwrap();
        lease.full_mut()[..10].fill(byte);
        lease.set_len(10);
        let header = FrameHeader {
            kind: FrameKind::Chunk,
            flags: 0,
            file_id: id,
            offset_bytes: 0,
            len_bytes: 10,
            checksum: checksum(lease.data()),
        };
        Frame { header, payload: Payload::Buffer(lease) }
    }

    #[test]
    fn frames_arrive_then_end() {
        let pool = BufferPool::new(4, 4096, false).unwrap();
        let (tx, rx) = mem_pair(pool.clone(), PayloadPref::Buffer, 4096, 2, MemFaults::default());
        let t = std::thread::spawn(move || {
            for i in 0..10 {
                tx.send(chunk(&pool, i, i as u8)).unwrap();
            }
            tx.finish().unwrap();
            tx.stats()
        });
        let mut ids = Vec::new();
        while let Some(f) = rx.recv().unwrap() {
            ids.push(f.header.file_id);
        }
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert_eq!(t.join().unwrap().frames, 11);
    }

    #[test]
    fn reordering_is_seeded_and_complete() {
        let run = |seed| {
            let pool = BufferPool::new(8, 4096, false).unwrap();
            let faults = MemFaults { reorder_window: 4, seed, vanish_after_frames: None };
            let (tx, rx) = mem_pair(pool.clone(), PayloadPref::Buffer, 4096, 2, faults);
            let t = std::thread::spawn(move || {
                for i in 0..20 {
                    tx.send(chunk(&pool, i, 0)).unwrap();
                }
                tx.finish().unwrap();
            });
            let mut ids = Vec::new();
            while let Some(f) = rx.recv().unwrap() {
                ids.push(f.header.file_id);
            }
            t.join().unwrap();
            ids
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, (0..20).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }

    struct MemHarness;
    impl crate::frame_suite::FrameHarness for MemHarness {
        fn name(&self) -> String {
            "in-process".into()
        }
        fn pair(&self, chunk_bytes: u32) -> crate::frame_suite::FramePair {
            let pool = BufferPool::new(12, chunk_bytes as usize, false).unwrap();
            let (tx, rx) =
                mem_pair(pool, PayloadPref::Buffer, chunk_bytes, 8, MemFaults::default());
            (Box::new(tx), Box::new(rx))
        }
    }

    #[test]
    fn frame_suite_in_process() {
        crate::frame_suite::run_frame_suite(&MemHarness);
    }

    #[test]
    fn vanishing_peer_fails_both_sides() {
        let pool = BufferPool::new(8, 4096, false).unwrap();
        let faults = MemFaults { vanish_after_frames: Some(3), ..MemFaults::default() };
        let (tx, rx) = mem_pair(pool.clone(), PayloadPref::Buffer, 4096, 8, faults);
        let mut failed = false;
        for i in 0..10 {
            if tx.send(chunk(&pool, i, 0)).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        let mut got_err = false;
        for _ in 0..10 {
            match rx.recv() {
                Err(TransportError::PeerGone { .. }) => {
                    got_err = true;
                    break;
                }
                Ok(Some(_)) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(got_err);
    }
}
