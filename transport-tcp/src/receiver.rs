//! The receiving half: one thread per stream reads frames into pooled buffers and hands them to
//! the target's writer threads through one bounded channel.
//!
//! A stream thread reads a header, decodes it against the session's chunk size (a peer cannot
//! make us allocate or read more), and then either leases a slot from this side's pool, reads
//! the payload into it and queues the frame ([`Delivery::Buffered`], and always for bundles),
//! or queues the frame with its socket lent as a [`Payload::Stream`] ([`Delivery::Lent`], the
//! default for chunks) and waits until the writer has read the payload: the bytes then go from
//! the socket through a cache-sized piece straight to the file, instead of through a
//! chunk-sized buffer filled on one core and written out on another. Checksums are left to the consumer, which verifies every buffer
//! payload (one place for every backend). End on a stream ends its thread; when every stream
//! ended, the channel closes and every caller of `recv` gets `None`. A stream that closes or
//! breaks before its End fails the session with `PeerGone`, and one that stops moving mid-frame
//! for the stall timeout fails it with `Stalled`.
//!
//! In flight on this side: `pool_slots` buffers (one per stream being read, the channel's
//! `streams × queue_frames` frames, and what the writers hold).

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use blitx_core::cancel::{Cancel, FirstFailure};
use blitx_core::frame::{FRAME_HEADER_BYTES, FrameKind, ReceiveRules};
use blitx_core::pool::BufferPool;
use blitx_core::transport::{
    Frame, FrameReceiver, Payload, PayloadStream, TransportError, TransportStats,
};
use crossbeam_channel::{Receiver, Sender};

use crate::TRANSPORT_NAME;
use crate::config::{Delivery, TcpConfig};
use crate::error::{ConfigError, Failure, SetupError};
use crate::tune::{self, Role};
use crate::wire::{Link, Pipe};

struct Shared {
    /// Fired by `abort` and by the first failure (`failure` holds a clone).
    cancel: Cancel,
    failure: FirstFailure<Failure>,
    sockets: Vec<TcpStream>,
    pool: BufferPool,
    chunk_bytes: u32,
    delivery: Delivery,
    streams: u32,
    streams_ended: AtomicU32,
    frames: AtomicU64,
    payload_bytes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single read or assignment; poisoning cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Records the first failure, wakes every thread (blocked reads via shutdown, blocked pool
    /// leases via close, blocked channel operations via the canceller).
    fn fail(&self, failure: Failure) {
        let shown = format!("{failure:?}");
        if self.failure.fail(failure) {
            tracing::debug!(failure = %shown, "tcp receiver failed");
        }
        self.pool.close();
        for s in &self.sockets {
            let _ = s.shutdown(Shutdown::Both);
            // A FIN alone does not stop a sender blocked on a full window (our unread bytes
            // keep it shut, and a half-closed peer may legally go on writing): it would wait
            // for its stall timeout. Disconnecting (connect to AF_UNSPEC) resets the
            // connection, so that sender fails at once with ECONNRESET.
            let _ = rustix::net::connect_unspec(s);
        }
    }

    fn failure_error(&self) -> Option<TransportError> {
        self.failure.get().as_ref().map(Failure::to_error)
    }
}

/// The receiving half of a TCP data session.
pub struct TcpReceiver {
    shared: Arc<Shared>,
    frames: Receiver<Frame>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpReceiver {
    /// Takes over a session's connected streams; `config.streams` must match their number.
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
            tune::apply_session(&link.stream, Role::Receive, config, &link.name)
                .map_err(opt_err)?;
            sockets.push(link.stream.try_clone().map_err(opt_err)?);
            links.push(link);
        }
        let cancel = Cancel::new();
        let shared = Arc::new(Shared {
            failure: FirstFailure::new(cancel.clone()),
            cancel,
            sockets,
            pool,
            chunk_bytes: config.chunk_bytes,
            delivery: config.delivery,
            streams: config.streams,
            streams_ended: AtomicU32::new(0),
            frames: AtomicU64::new(0),
            payload_bytes: AtomicU64::new(0),
        });
        let depth = config.streams as usize * config.queue_frames;
        let (tx, rx) = crossbeam_channel::bounded(depth);
        let receiver = TcpReceiver {
            shared: Arc::clone(&shared),
            frames: rx,
            threads: Mutex::new(Vec::with_capacity(links.len())),
        };
        for (i, link) in links.into_iter().enumerate() {
            let (tx, shared) = (tx.clone(), Arc::clone(&shared));
            let link = Arc::new(link);
            let handle = std::thread::Builder::new()
                .name(format!("blit-tcp-rx{i}"))
                .spawn(blitx_core::placer::worker(
                    blitx_core::placer::WorkerRole::TcpReceive,
                    move || stream_main(&link, &tx, &shared),
                ))
                // Dropping `receiver` stops and joins the threads spawned so far.
                .map_err(SetupError::Thread)?;
            lock(&receiver.threads).push(handle);
        }
        Ok(receiver)
    }

    /// Counters so far (the trait only asks the sender for them).
    pub fn stats(&self) -> TransportStats {
        TransportStats {
            name: TRANSPORT_NAME.into(),
            streams: self.shared.streams,
            frames: self.shared.frames.load(Ordering::Relaxed),
            payload_bytes: self.shared.payload_bytes.load(Ordering::Relaxed),
        }
    }

    /// Segments the kernel retransmitted on this session's streams so far (`TCP_INFO`'s
    /// `tcpi_total_retrans`, summed); an error where the option cannot be read.
    pub fn retransmits(&self) -> std::io::Result<u64> {
        crate::sys::retransmits(&self.shared.sockets)
    }

    /// The pool frames' payloads are leased from (for tests and diagnostics).
    pub fn pool(&self) -> &BufferPool {
        &self.shared.pool
    }
}

impl FrameReceiver for TcpReceiver {
    fn recv(&self) -> Result<Option<Frame>, TransportError> {
        if let Some(e) = self.shared.failure_error() {
            return Err(e);
        }
        crossbeam_channel::select! {
            recv(self.frames) -> frame => match frame {
                Ok(frame) => Ok(Some(frame)),
                // Every stream thread is gone and every queued frame was delivered.
                Err(_) => match self.shared.failure_error() {
                    Some(e) => Err(e),
                    None if self.shared.streams_ended.load(Ordering::Acquire) == self.shared.streams => {
                        Ok(None)
                    }
                    None => Err(TransportError::PeerGone {
                        detail: "every stream ended, some without an End frame".into(),
                    }),
                },
            },
            recv(self.shared.cancel.wake()) -> _ => {
                Err(self.shared.failure_error().unwrap_or(TransportError::Cancelled))
            }
        }
    }

    fn abort(&self) {
        self.shared.fail(Failure::Cancelled);
    }
}

impl Drop for TcpReceiver {
    fn drop(&mut self) {
        if self.shared.streams_ended.load(Ordering::Acquire) != self.shared.streams {
            self.shared.fail(Failure::Cancelled);
        }
        let handles = std::mem::take(&mut *lock(&self.threads));
        for h in handles {
            let _ = h.join();
        }
    }
}

fn stream_main(link: &Arc<Link>, tx: &Sender<Frame>, shared: &Arc<Shared>) {
    match receive_frames(link, tx, shared) {
        Ok(()) => {
            shared.streams_ended.fetch_add(1, Ordering::AcqRel);
        }
        Err(f) => shared.fail(f),
    }
}

fn receive_frames(
    link: &Arc<Link>,
    tx: &Sender<Frame>,
    shared: &Arc<Shared>,
) -> Result<(), Failure> {
    let mut raw = [0u8; FRAME_HEADER_BYTES];
    loop {
        link.read_exact(&mut raw, true, &shared.cancel)?;
        // TCP's 16-bit checksum does not protect the bytes well enough: every frame is hashed
        // (no unchecked frames).
        let rules = ReceiveRules { chunk_bytes: shared.chunk_bytes, unchecked_allowed: false };
        let header = rules
            .header(&raw)
            .map_err(|error| Failure::BadFrame { peer: link.name.clone(), error })?;
        let mut returned = None;
        let payload = match header.kind {
            FrameKind::End => return Ok(()),
            FrameKind::Hole | FrameKind::Same => Payload::Empty,
            FrameKind::Chunk if shared.delivery != Delivery::Buffered && header.len_bytes > 0 => {
                let (back, wait) = crossbeam_channel::bounded(1);
                returned = Some(wait);
                Payload::Stream(Box::new(Lent {
                    link: Arc::clone(link),
                    shared: Arc::clone(shared),
                    remaining: u64::from(header.len_bytes),
                    back: Some(back),
                    pipe: None,
                }))
            }
            FrameKind::Chunk | FrameKind::Bundle | FrameKind::Delta => {
                // Blocks while the writers hold every buffer: back-pressure onto the socket.
                let mut lease = shared.pool.acquire().map_err(|_| Failure::Cancelled)?;
                let len = header.len_bytes as usize;
                link.read_exact(&mut lease.full_mut()[..len], false, &shared.cancel)?;
                lease.set_len(len);
                Payload::Buffer(lease)
            }
        };
        shared.frames.fetch_add(1, Ordering::Relaxed);
        shared.payload_bytes.fetch_add(u64::from(header.len_bytes), Ordering::Relaxed);
        let frame = Frame { header, payload };
        crossbeam_channel::select! {
            send(tx, frame) -> sent => if sent.is_err() { return Err(Failure::Cancelled) },
            recv(shared.cancel.wake()) -> _ => return Err(Failure::Cancelled),
        }
        if let Some(wait) = returned {
            // The socket is the writer's until it has read (or discarded) the payload. The
            // lent payload's reads carry the stall detector, so this wait is bounded too.
            crossbeam_channel::select! {
                recv(wait) -> _ => {}
                recv(shared.cancel.wake()) -> _ => return Err(Failure::Cancelled),
            }
            if let Some(f) = shared.failure.get() {
                return Err(f);
            }
        }
    }
}

/// A chunk's payload still in its socket, lent to a writer.
struct Lent {
    link: Arc<Link>,
    shared: Arc<Shared>,
    remaining: u64,
    /// Dropped (or sent on) when the payload has been read: the stream thread goes on.
    back: Option<Sender<()>>,
    /// `Delivery::Spliced`: the pipe the payload goes through (made at the first splice).
    pipe: Option<Pipe>,
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent")
            .field("link", &self.link.name)
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl PayloadStream for Lent {
    fn remaining(&self) -> u64 {
        self.remaining
    }

    fn splice_to(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Option<Result<std::io::Result<()>, TransportError>> {
        if self.shared.delivery != Delivery::Spliced || len as u64 > self.remaining {
            return None;
        }
        if let Some(e) = self.shared.failure_error() {
            return Some(Err(e));
        }
        let (link, shared) = (Arc::clone(&self.link), Arc::clone(&self.shared));
        let pipe = self.pipe().ok()?;
        let moved = link.splice_to_file(pipe, file, offset, len, &shared.cancel);
        match moved {
            Ok((consumed, written)) => {
                self.remaining -= consumed as u64;
                Some(Ok(written))
            }
            Err(f) => {
                let e = f.to_error();
                shared.fail(f);
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        if buf.len() as u64 > self.remaining {
            return Err(TransportError::Protocol {
                peer: "local writer".into(),
                detail: format!(
                    "asked for {} bytes of a payload with {} left",
                    buf.len(),
                    self.remaining
                ),
            });
        }
        if let Some(e) = self.shared.failure_error() {
            return Err(e);
        }
        match self.link.read_exact(buf, false, &self.shared.cancel) {
            Ok(()) => {
                self.remaining -= buf.len() as u64;
                Ok(())
            }
            Err(f) => {
                let e = f.to_error();
                self.shared.fail(f);
                self.remaining = 0;
                Err(e)
            }
        }
    }
}

/// Pipe capacity asked for: 1 MiB (what an unprivileged process may set by default).
const PIPE_BYTES: usize = 1 << 20;

impl Lent {
    fn pipe(&mut self) -> std::io::Result<&Pipe> {
        if self.pipe.is_none() {
            self.pipe = Some(Pipe::new(PIPE_BYTES)?);
        }
        Ok(self.pipe.as_ref().expect("made above"))
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Whatever the writer did not read (a failed or already complete file) is read and
        // discarded, so the next header is where the stream thread expects it.
        let mut scratch = [0u8; 16 << 10];
        while self.remaining > 0 && self.shared.failure_error().is_none() {
            let n = self.remaining.min(scratch.len() as u64) as usize;
            if self.read_exact(&mut scratch[..n]).is_err() {
                break;
            }
        }
        if let Some(back) = self.back.take() {
            let _ = back.send(());
        }
    }
}
