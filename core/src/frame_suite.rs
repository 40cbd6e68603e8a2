//! The frame-level conformance suite: the transport rules of [`crate::transport`], checked the
//! same way against every backend.
//!
//! The session-level suite (`blitx_storage::conformance`) copies trees through a backend; this
//! one talks to a backend's [`FrameSender`] and [`FrameReceiver`] directly: frames round-trip
//! intact and End ends them on every thread; a corrupted payload is never delivered as good;
//! oversize and truncated frames are refused before they leave; End cannot be sent by hand;
//! unchecked frames pass only where the sender needs no checksums; a call blocked in `recv` or
//! `send` is woken by `abort`; a peer that goes away is an error on the other side, never a
//! hang or a clean end. A backend provides a [`FrameHarness`]; [`run_frame_suite`] runs them all.
//!
//! Every wait here is bounded ([`PROMPT`]), so a backend that hangs fails the suite instead of
//! hanging it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::{FLAG_UNCHECKED, FrameError, FrameHeader, FrameKind, checksum};
use crate::transport::{Frame, FrameReceiver, FrameSender, Payload, TransportError};

/// How long a woken call may take to return (generous for a loaded CI machine and Soft-RoCE).
pub const PROMPT: Duration = Duration::from_secs(10);

/// Chunk size of the suite's sessions.
pub const SUITE_CHUNK_BYTES: u32 = 1 << 20;

pub type FramePair = (Box<dyn FrameSender>, Box<dyn FrameReceiver>);

/// What a backend supplies to the suite.
pub trait FrameHarness: Sync {
    fn name(&self) -> String;
    /// A connected pair carrying payloads of up to `chunk_bytes`.
    fn pair(&self, chunk_bytes: u32) -> FramePair;
}

fn pattern(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(131).wrapping_add(id * 7) as u8).collect()
}

/// A chunk frame of `data` in a lease of the sender's pool, with `data`'s checksum.
fn chunk(tx: &dyn FrameSender, id: u64, data: &[u8]) -> Frame {
    let offset_bytes = id * u64::from(SUITE_CHUNK_BYTES);
    try_chunk(tx, id, offset_bytes, data, true).unwrap_or_else(|| panic!("pool: none to lease"))
}

/// A chunk frame of `data` in a leased buffer; `None` once the pool gives none (aborted, or the
/// peer went away). `checked`: carries the payload's checksum (else 0, "unchecked").
fn try_chunk(
    tx: &dyn FrameSender,
    id: u64,
    offset_bytes: u64,
    data: &[u8],
    checked: bool,
) -> Option<Frame> {
    let mut lease = tx.pool().acquire().ok()?;
    lease.full_mut()[..data.len()].copy_from_slice(data);
    lease.set_len(data.len());
    let header = FrameHeader {
        kind: FrameKind::Chunk,
        flags: 0,
        file_id: id,
        offset_bytes,
        len_bytes: data.len() as u32,
        checksum: if checked { checksum(data) } else { 0 },
    };
    Some(Frame { header, payload: Payload::Buffer(lease) })
}

/// The payload bytes of a received frame, whatever form the backend delivered it in.
fn bytes(frame: Frame) -> (FrameHeader, Vec<u8>) {
    let data = match frame.payload {
        Payload::Empty => Vec::new(),
        Payload::Buffer(lease) => lease.data().to_vec(),
        Payload::File(region) => {
            let mut buf = vec![0u8; region.len_bytes as usize];
            assert!(region.read_into(&mut buf), "a delivered file region cannot be read");
            buf
        }
        Payload::Stream(mut s) => {
            let mut buf = vec![0u8; s.remaining() as usize];
            s.read_exact(&mut buf).unwrap_or_else(|e| panic!("payload stream: {e}"));
            buf
        }
    };
    (frame.header, data)
}

/// Runs `f` on a thread; panics with `what` unless it returns within `limit`.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

/// Frames of every size round-trip intact from two threads to two threads; End ends the
/// session on every receiving thread, and `recv` after the end stays `None`.
pub fn roundtrip_and_end(h: &dyn FrameHarness) {
    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    let (tx, rx): (Arc<dyn FrameSender>, Arc<dyn FrameReceiver>) = (tx.into(), rx.into());
    let sizes = [0usize, 1, 4096, 100_003, SUITE_CHUNK_BYTES as usize];
    let name = h.name();
    let senders: Vec<_> = (0..2u64)
        .map(|t| {
            let tx = Arc::clone(&tx);
            std::thread::spawn(move || {
                for i in 0..10u64 {
                    let id = t * 100 + i;
                    let data = pattern(id, sizes[(i as usize) % sizes.len()]);
                    tx.send(chunk(tx.as_ref(), id, &data)).unwrap_or_else(|e| panic!("send: {e}"));
                }
            })
        })
        .collect();
    let receivers: Vec<_> = (0..2)
        .map(|_| {
            let rx = Arc::clone(&rx);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(f) = rx.recv().unwrap_or_else(|e| panic!("recv: {e}")) {
                    got.push(bytes(f));
                }
                assert!(rx.recv().unwrap_or_else(|e| panic!("recv after end: {e}")).is_none());
                got
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap_or_else(|_| panic!("{name}: a sender thread panicked"));
    }
    tx.finish().unwrap_or_else(|e| panic!("{name}: finish: {e}"));
    let mut got: Vec<(FrameHeader, Vec<u8>)> = Vec::new();
    for r in receivers {
        got.extend(r.join().unwrap_or_else(|_| panic!("{name}: a receiver thread panicked")));
    }
    got.sort_by_key(|(h, _)| h.file_id);
    assert_eq!(got.len(), 20, "{name}: frames lost or duplicated");
    for (header, data) in got {
        let id = header.file_id;
        assert_eq!(header.kind, FrameKind::Chunk, "{name}");
        assert_eq!(data, pattern(id, sizes[(id % 100) as usize % sizes.len()]), "{name}: {id}");
        header.verify(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// A payload damaged after its checksum was computed is never delivered as good: the receiver
/// refuses it or delivers it with a checksum that the consumer's check rejects.
pub fn corruption_is_never_good(h: &dyn FrameHarness) {
    let name = h.name();
    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    let data = pattern(1, 50_000);
    let mut frame = chunk(tx.as_ref(), 1, &data);
    if let Payload::Buffer(lease) = &mut frame.payload {
        lease.full_mut()[25_000] ^= 0x40;
    }
    tx.send(frame).unwrap_or_else(|e| panic!("{name}: send: {e}"));
    tx.finish().unwrap_or_else(|e| panic!("{name}: finish: {e}"));
    match rx.recv() {
        Ok(Some(f)) => {
            let (header, got) = bytes(f);
            assert!(
                matches!(header.verify(&got), Err(FrameError::Checksum { .. })),
                "{name}: a corrupted payload passed its checksum"
            );
        }
        Ok(None) => panic!("{name}: the corrupted frame vanished without an error"),
        Err(_) => {}
    }
}

/// Oversize and truncated frames are refused, typed, before anything is sent; the session
/// goes on.
pub fn oversize_and_truncated_are_refused(h: &dyn FrameHarness) {
    let name = h.name();
    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    let mut big = chunk(tx.as_ref(), 1, &pattern(1, 4096));
    big.header.len_bytes = SUITE_CHUNK_BYTES + 4096;
    assert!(
        matches!(tx.send(big), Err(TransportError::Frame(FrameError::TooLong { .. }))),
        "{name}: an oversize frame was not refused"
    );
    let mut short = chunk(tx.as_ref(), 2, &pattern(2, 100));
    short.header.len_bytes = 4096;
    assert!(
        matches!(tx.send(short), Err(TransportError::Frame(FrameError::PayloadLength { .. }))),
        "{name}: a frame shorter than its header was not refused"
    );
    let data = pattern(3, 7000);
    tx.send(chunk(tx.as_ref(), 3, &data)).unwrap_or_else(|e| panic!("{name}: {e}"));
    tx.finish().unwrap_or_else(|e| panic!("{name}: finish: {e}"));
    let (header, got) = bytes(rx.recv().unwrap_or_else(|e| panic!("{name}: {e}")).expect("frame"));
    assert_eq!((header.file_id, got), (3, data), "{name}");
    assert!(rx.recv().unwrap_or_else(|e| panic!("{name}: {e}")).is_none(), "{name}");
}

/// End frames come only from `finish`; nothing is sent after it.
pub fn end_only_from_finish(h: &dyn FrameHarness) {
    let name = h.name();
    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    let end = Frame { header: FrameHeader::end(), payload: Payload::Empty };
    assert!(matches!(tx.send(end), Err(TransportError::Misuse(_))), "{name}: End via send");
    tx.finish().unwrap_or_else(|e| panic!("{name}: finish: {e}"));
    let late = chunk(tx.as_ref(), 9, &pattern(9, 10));
    assert!(matches!(tx.send(late), Err(TransportError::Misuse(_))), "{name}: send after finish");
    assert!(rx.recv().unwrap_or_else(|e| panic!("{name}: {e}")).is_none(), "{name}");
}

/// `FLAG_UNCHECKED` passes only where the sender needs no checksums; elsewhere the session
/// fails on it (typed), it is never delivered.
pub fn unchecked_only_without_checksums(h: &dyn FrameHarness) {
    let name = h.name();
    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    let data = pattern(4, 3000);
    let mut frame = chunk(tx.as_ref(), 4, &data);
    frame.header.flags |= FLAG_UNCHECKED;
    frame.header.checksum = 0;
    let strict = tx.needs_checksums();
    let sent = tx.send(frame);
    if strict {
        if sent.is_ok() {
            let _ = tx.finish();
        }
        let got = within(PROMPT, "recv of an unchecked frame", move || match rx.recv() {
            Ok(Some(f)) => Some(f.header.flags),
            Ok(None) => None,
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        TransportError::BadFrame { source: FrameError::Unchecked { .. }, .. }
                    ),
                    "unexpected error {e:?}"
                );
                None
            }
        });
        assert!(got.is_none(), "{name}: an unchecked frame was delivered over a checked session");
    } else {
        sent.unwrap_or_else(|e| panic!("{name}: {e}"));
        tx.finish().unwrap_or_else(|e| panic!("{name}: finish: {e}"));
        let (header, got) =
            bytes(rx.recv().unwrap_or_else(|e| panic!("{name}: {e}")).expect("frame"));
        assert!(header.flags & FLAG_UNCHECKED != 0, "{name}");
        assert_eq!(got, data, "{name}");
    }
}

/// `abort` wakes a `recv` blocked with nothing to receive, and a `send` blocked on a full
/// window, promptly.
pub fn cancel_wakes_blocked_calls(h: &dyn FrameHarness) {
    let name = h.name();
    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    let rx: Arc<dyn FrameReceiver> = rx.into();
    let r = Arc::clone(&rx);
    let waiting = std::thread::spawn(move || {
        let start = Instant::now();
        let got = r.recv();
        (got.map(|f| f.is_some()), start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    rx.abort();
    let (got, _) = within(PROMPT, "recv woken by abort", move || {
        waiting.join().unwrap_or_else(|_| panic!("recv panicked"))
    });
    assert!(matches!(got, Err(TransportError::Cancelled)), "{name}: recv after abort: {got:?}");
    drop(tx);
    drop(rx);

    // A sender whose receiver reads nothing blocks (window, queues or pool full), then abort.
    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    let tx: Arc<dyn FrameSender> = tx.into();
    let t = Arc::clone(&tx);
    let data = pattern(5, SUITE_CHUNK_BYTES as usize);
    let sending = std::thread::spawn(move || {
        for i in 0..100_000u64 {
            let Some(frame) = try_chunk(t.as_ref(), i, 0, &data, false) else { return Ok(i) };
            t.send(frame)?;
        }
        Ok(u64::MAX)
    });
    std::thread::sleep(Duration::from_millis(500));
    tx.abort();
    let r: Result<u64, TransportError> = within(PROMPT, "send woken by abort", move || {
        sending.join().unwrap_or_else(|_| panic!("send panicked"))
    });
    assert!(r.is_err() || r.as_ref().is_ok_and(|&n| n < u64::MAX), "{name}: send after abort");
    drop(rx);
}

/// A sender that goes away without finishing is an error at the receiver (never a clean end),
/// and a receiver that goes away is an error at the sender; both promptly.
pub fn peer_gone_is_an_error(h: &dyn FrameHarness) {
    let name = h.name();
    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    for i in 0..3 {
        tx.send(chunk(tx.as_ref(), i, &pattern(i, 1000))).unwrap_or_else(|e| panic!("{e}"));
    }
    drop(tx);
    let end = within(PROMPT, "recv after the sender went away", move || {
        loop {
            match rx.recv() {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    assert!(end.is_err(), "{name}: a sender gone without finishing looked like a clean end");

    let (tx, rx) = h.pair(SUITE_CHUNK_BYTES);
    drop(rx);
    let failed = within(PROMPT, "send after the receiver went away", move || {
        let data = pattern(7, 64 << 10);
        for i in 0..10_000u64 {
            let Some(frame) = try_chunk(tx.as_ref(), i, 0, &data, true) else { return true };
            if tx.send(frame).is_err() {
                return true;
            }
        }
        tx.finish().is_err()
    });
    assert!(failed, "{name}: a receiver gone went unnoticed");
}

/// Runs every scenario against one backend.
pub fn run_frame_suite(h: &dyn FrameHarness) {
    roundtrip_and_end(h);
    corruption_is_never_good(h);
    oversize_and_truncated_are_refused(h);
    end_only_from_finish(h);
    unchecked_only_without_checksums(h);
    cancel_wakes_blocked_calls(h);
    peer_gone_is_an_error(h);
}
