//! The sending half: frames from many reader threads, spread over N streams.
//!
//! Each stream has a thread and a bounded queue. `send` puts a frame whole on the least-loaded
//! stream (bytes queued or being written), so a slow stream gets less, and blocks when every
//! queue is full. The stream thread writes the header and then the payload: a pooled buffer in
//! one `sendmsg` (header and data as two iovecs), or a file region with `sendfile` after
//! hashing it through a small scratch buffer (the checksum goes in the header, so it must be
//! known before the first payload byte leaves).
//!
//! In flight on this side: the pool (`pool_slots` buffers) bounds `Buffer` frames; the queues
//! (`queue_frames` per stream, plus the one being written) bound `File` frames.
//!
//! With [`PayloadPref::FileRegion`] the region is hashed through a cache-sized scratch buffer
//! and then leaves by `sendfile`, so the payload is never copied into user memory (on loopback
//! this measured slower than the default `Buffer`, see docs/benchmarks.md). A region that cannot be read (the file shrank) is not the session's failure: the
//! frame is skipped, or filled up with zeros when `sendfile` found the file shorter (the
//! target's checksum then fails), and the source is told through
//! [`blitx_core::transport::FileRegion::failed`]. The
//! source says a file is complete and unchanged only after the transport has read all of its
//! regions (`blitx_core::transport::ReadDone`), whatever the payload form.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;

use blitx_core::cancel::{Cancel, FirstFailure};
use blitx_core::frame::{FRAME_HEADER_BYTES, FrameHeader};
use blitx_core::pool::BufferPool;
use blitx_core::transport::{
    Frame, FrameSender, Payload, PayloadPref, TransportError, TransportStats, check_outgoing,
};
use crossbeam_channel::{Receiver, Select, Sender, TrySendError};

use crate::TRANSPORT_NAME;
use crate::config::TcpConfig;
use crate::error::{ConfigError, Failure, SetupError};
use crate::tune::{self, Role};
use crate::wire::{self, Link};

enum Job {
    Frame(Frame),
    /// The last job of a stream: write the End frame, then close the write side.
    End,
}

struct Shared {
    /// Fired by `abort` and by the first failure (`failure` holds a clone).
    cancel: Cancel,
    failure: FirstFailure<Failure>,
    /// Duplicates of the stream sockets, to wake blocked threads on abort or failure.
    sockets: Vec<TcpStream>,
    /// Header and payload bytes queued or being written, per stream.
    queued_bytes: Vec<AtomicU64>,
    frames: AtomicU64,
    payload_bytes: AtomicU64,
    pool: BufferPool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single read or assignment; poisoning cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Records the session's first failure and wakes every thread; later failures are
    /// consequences (e.g. EPIPE after our own shutdown) and are dropped.
    fn fail(&self, failure: Failure) {
        let shown = format!("{failure:?}");
        if self.failure.fail(failure) {
            tracing::debug!(failure = %shown, "tcp sender failed");
        }
        for s in &self.sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn check(&self) -> Result<(), TransportError> {
        self.failure.check(Failure::to_error)
    }

    fn failure_error(&self) -> TransportError {
        self.failure.get().as_ref().map_or(TransportError::Cancelled, Failure::to_error)
    }
}

/// The sending half of a TCP data session.
pub struct TcpSender {
    shared: Arc<Shared>,
    queues: Vec<Sender<Job>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Set by `finish`. Sends hold the read side while they queue, so no frame can slip in
    /// behind a stream's End.
    finished: RwLock<bool>,
    /// Rotates the starting stream among equally loaded ones.
    next: AtomicUsize,
    chunk_bytes: u32,
    payload: PayloadPref,
}

impl TcpSender {
    /// Takes over a session's connected streams (from [`crate::connect_streams`] or
    /// [`crate::DataListener::accept_streams`]); `config.streams` must match their number.
    pub fn new(streams: Vec<TcpStream>, config: &TcpConfig) -> Result<Self, SetupError> {
        config.validate()?;
        if streams.len() != config.streams as usize {
            return Err(ConfigError::StreamCount {
                connected: streams.len(),
                configured: config.streams,
            }
            .into());
        }
        let pool = BufferPool::new(config.pool_slots, config.chunk_bytes as usize, true)?;
        let mut links = Vec::with_capacity(streams.len());
        let mut sockets = Vec::with_capacity(streams.len());
        for (i, stream) in streams.into_iter().enumerate() {
            let link = Link::new(stream, i, config.stall_timeout);
            let opt_err = |source| SetupError::SocketOption {
                op: "session options",
                peer: link.name.clone(),
                source,
            };
            tune::apply_session(&link.stream, Role::Send, config, &link.name).map_err(opt_err)?;
            sockets.push(link.stream.try_clone().map_err(opt_err)?);
            links.push(link);
        }
        let cancel = Cancel::new();
        let shared = Arc::new(Shared {
            failure: FirstFailure::new(cancel.clone()),
            cancel,
            sockets,
            queued_bytes: links.iter().map(|_| AtomicU64::new(0)).collect(),
            frames: AtomicU64::new(0),
            payload_bytes: AtomicU64::new(0),
            pool,
        });
        let mut sender = TcpSender {
            shared: Arc::clone(&shared),
            queues: Vec::with_capacity(links.len()),
            threads: Mutex::new(Vec::with_capacity(links.len())),
            finished: RwLock::new(false),
            next: AtomicUsize::new(0),
            chunk_bytes: config.chunk_bytes,
            payload: config.payload,
        };
        for (i, link) in links.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(config.queue_frames);
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("blit-tcp-tx{i}"))
                .spawn(blitx_core::placer::worker(
                    blitx_core::placer::WorkerRole::TcpSend,
                    move || stream_main(&link, i, &rx, &shared),
                ))
                // Dropping `sender` stops and joins the threads spawned so far.
                .map_err(SetupError::Thread)?;
            sender.queues.push(tx);
            lock(&sender.threads).push(handle);
        }
        Ok(sender)
    }

    /// Streams ordered by load, least first; ties rotate so idle streams share the work.
    fn by_load(&self) -> Vec<usize> {
        let n = self.queues.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        order.sort_by_key(|&i| self.shared.queued_bytes[i].load(Ordering::Relaxed));
        order
    }

    /// Queues `job` on stream `i` if there is room. Accounts its bytes while queued.
    fn try_queue(&self, i: usize, job: Job, bytes: u64) -> Result<(), Job> {
        self.shared.queued_bytes[i].fetch_add(bytes, Ordering::Relaxed);
        match self.queues[i].try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.shared.queued_bytes[i].fetch_sub(bytes, Ordering::Relaxed);
                Err(job)
            }
        }
    }

    /// Stops and joins every stream thread; idempotent.
    fn join_threads(&self) {
        let handles = std::mem::take(&mut *lock(&self.threads));
        for h in handles {
            let _ = h.join();
        }
    }

    pub fn streams(&self) -> u32 {
        self.queues.len() as u32
    }

    /// Segments the kernel retransmitted on this session's streams so far (`TCP_INFO`'s
    /// `tcpi_total_retrans`, summed); an error where the option cannot be read.
    pub fn retransmits(&self) -> std::io::Result<u64> {
        crate::sys::retransmits(&self.shared.sockets)
    }
}

impl FrameSender for TcpSender {
    fn payload_pref(&self) -> PayloadPref {
        self.payload
    }

    fn pool(&self) -> &BufferPool {
        &self.shared.pool
    }

    fn frame_bytes_max(&self) -> u32 {
        self.chunk_bytes
    }

    fn send(&self, frame: Frame) -> Result<(), TransportError> {
        self.shared.check()?;
        // Poisoning cannot tear a bool.
        let finished = self.finished.read().unwrap_or_else(PoisonError::into_inner);
        if *finished {
            return Err(TransportError::Misuse("send after finish"));
        }
        // Readers hash buffers as they fill them; the target verifies every payload (re-hashing
        // here would cost a full pass over the data, and hide from tests the damage the target
        // must catch).
        check_outgoing(&frame, self.chunk_bytes)?;
        let bytes = frame.payload.len_bytes() + FRAME_HEADER_BYTES as u64;
        let mut job = Job::Frame(frame);
        for i in self.by_load() {
            match self.try_queue(i, job, bytes) {
                Ok(()) => return Ok(()),
                Err(j) => job = j,
            }
        }
        // Every queue is full: wait for whichever stream frees a place first.
        loop {
            let mut sel = Select::new();
            for q in &self.queues {
                sel.send(q);
            }
            let cancelled = sel.recv(self.shared.cancel.wake());
            let op = sel.select();
            let i = op.index();
            if i == cancelled {
                let _ = op.recv(self.shared.cancel.wake());
                return Err(self.shared.failure_error());
            }
            self.shared.queued_bytes[i].fetch_add(bytes, Ordering::Relaxed);
            match op.send(&self.queues[i], job) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // That stream's thread is gone, which only happens after a failure.
                    self.shared.queued_bytes[i].fetch_sub(bytes, Ordering::Relaxed);
                    self.shared.check()?;
                    job = e.into_inner();
                }
            }
        }
    }

    fn finish(&self) -> Result<(), TransportError> {
        let already = std::mem::replace(
            &mut *self.finished.write().unwrap_or_else(PoisonError::into_inner),
            true,
        );
        if already {
            self.join_threads();
            return self.shared.check();
        }
        self.shared.check()?;
        for q in &self.queues {
            crossbeam_channel::select! {
                send(q, Job::End) -> r => if r.is_err() { break },
                recv(self.shared.cancel.wake()) -> _ => break,
            }
        }
        // Each thread exits after writing End (or failing); a peer that stops reading makes
        // its write time out after the stall timeout, so this wait is bounded.
        self.join_threads();
        self.shared.check()
    }

    fn abort(&self) {
        self.shared.fail(Failure::Cancelled);
        // Readers blocked waiting for a buffer fail now instead of after the queues drain.
        self.shared.pool.close();
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            name: TRANSPORT_NAME.into(),
            streams: self.streams(),
            frames: self.shared.frames.load(Ordering::Relaxed),
            payload_bytes: self.shared.payload_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for TcpSender {
    fn drop(&mut self) {
        let running = !lock(&self.threads).is_empty();
        if running {
            // Dropped without finishing: the peer must see the session end early, not hang.
            self.shared.fail(Failure::Cancelled);
            self.join_threads();
        }
    }
}

fn stream_main(link: &Link, index: usize, rx: &Receiver<Job>, shared: &Shared) {
    let mut scratch = Vec::new();
    loop {
        let job = crossbeam_channel::select! {
            recv(rx) -> job => match job {
                Ok(job) => job,
                Err(_) => return,
            },
            recv(shared.cancel.wake()) -> _ => break,
        };
        match job {
            Job::Frame(frame) => {
                let bytes = frame.payload.len_bytes() + FRAME_HEADER_BYTES as u64;
                let written = write_frame(link, frame, &mut scratch);
                shared.queued_bytes[index].fetch_sub(bytes, Ordering::Relaxed);
                match written {
                    Ok(payload_bytes) => {
                        shared.frames.fetch_add(1, Ordering::Relaxed);
                        shared.payload_bytes.fetch_add(payload_bytes, Ordering::Relaxed);
                    }
                    Err(f) => {
                        shared.fail(f);
                        break;
                    }
                }
            }
            Job::End => {
                match link.write_frame(&FrameHeader::end().encode(), &[]) {
                    Ok(()) => {
                        shared.frames.fetch_add(1, Ordering::Relaxed);
                        let _ = link.stream.shutdown(Shutdown::Write);
                    }
                    Err(f) => shared.fail(f),
                }
                return;
            }
        }
    }
    // Failed or cancelled: give queued buffers back to the pool now, so readers blocked on it
    // wake up and see the error.
    while rx.try_recv().is_ok() {}
}

/// Writes one frame; returns its payload bytes.
fn write_frame(link: &Link, frame: Frame, scratch: &mut Vec<u8>) -> Result<u64, Failure> {
    let mut header = frame.header;
    match &frame.payload {
        Payload::Empty => link.write_frame(&header.encode(), &[])?,
        Payload::Buffer(lease) => link.write_frame(&header.encode(), lease.data())?,
        Payload::File(region) => {
            let len_bytes = u64::from(region.len_bytes);
            if scratch.is_empty() {
                scratch.resize(wire::SCRATCH_BYTES, 0);
            }
            header.checksum = match wire::region_checksum(
                &region.file,
                region.offset_bytes,
                len_bytes,
                scratch,
            ) {
                Ok(c) => c,
                Err(reason) => {
                    // A problem of this file, not of the session: the frame is not sent,
                    // and the source reports the file failed (the target drops it).
                    region.failed(reason);
                    return Ok(0);
                }
            };
            if len_bytes == 0 {
                link.write_frame(&header.encode(), &[])?;
            } else {
                link.write_header_more(&header.encode())?;
                let sent = link.sendfile_all(&region.file, region.offset_bytes, len_bytes)?;
                if sent < len_bytes {
                    region.failed(format!(
                        "the file ends at {}, inside a chunk being sent (it shrank); not copied, run again",
                        region.offset_bytes + sent
                    ));
                    link.write_zeros(len_bytes - sent)?;
                }
            }
        }
        Payload::Stream(_) => {
            return Err(Failure::Protocol {
                peer: "local sender".into(),
                detail: "a received payload stream cannot be sent".into(),
            });
        }
    }
    Ok(frame.payload.len_bytes())
}
