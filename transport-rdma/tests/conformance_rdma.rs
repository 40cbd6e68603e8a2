//! The transport conformance suite over RDMA, plus the transport's own
//! device tests (abort, stall, link failure, counters).
//!
//! Sender and receiver run in this process on one device, each side with its
//! own context, PD, CQ and QPs (as two processes would have), connected
//! through the JSON form of `ReceiverInfo` / `SenderInfo`.
//!
//! Without a usable device each test prints `SKIPPED: <typed error>` and
//! returns; with `BLIT_RDMA_REQUIRE=1` (the VM stage) that is a failure.
//! `BLIT_RDMA_DEVICE` picks the device.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blitx_core::BufferPool;
use blitx_core::frame::{FLAG_UNCHECKED, FrameError, FrameHeader, FrameKind, checksum};
use blitx_core::frame_suite::{FrameHarness, FramePair, run_frame_suite};
use blitx_core::session::SessionParams;
use blitx_core::transport::{
    FileRegion, Frame, FrameReceiver, FrameSender, Payload, PayloadPref, TransportError,
};
use blitx_storage::conformance::{Harness, Pair, run_suite};
use blitx_transport_rdma::{
    CqMode, Error, RdmaConfig, RdmaReceiver, RdmaSender, ReceiverInfo, ReceiverSetup, SenderInfo,
    SenderSetup, WcStatus, probe, rdma_error,
};

fn device() -> Option<String> {
    std::env::var("BLIT_RDMA_DEVICE").ok()
}

fn device_or_skip(test: &str) -> bool {
    match probe(device().as_deref()) {
        Ok(_) => true,
        Err(e) if e.is_unavailable() => {
            if std::env::var("BLIT_RDMA_REQUIRE").is_ok_and(|v| v == "1") {
                panic!("{test}: RDMA required (BLIT_RDMA_REQUIRE=1) but unavailable: {e:?}");
            }
            // straight to the stderr handle: libtest captures eprintln! of
            // passing tests, and a skip must never be silent
            let _ =
                writeln!(std::io::stderr(), "{test}: SKIPPED: no usable RDMA device: {e} [{e:?}]");
            false
        }
        Err(e) => panic!("{test}: probing the device failed: {e:?}"),
    }
}

fn config(qps: u32, chunk_bytes: u32, cq_mode: CqMode) -> RdmaConfig {
    RdmaConfig { device: device(), cq_mode, ..RdmaConfig::new(qps, chunk_bytes) }
}

/// Both setups, the infos through JSON (as the control plane carries them),
/// sender connected first, then the receiver.
fn connect(cfg: &RdmaConfig) -> (RdmaSender, RdmaReceiver) {
    let (receiver, info) = ReceiverSetup::new(cfg).unwrap();
    let (sender, hello) = SenderSetup::new(cfg).unwrap();
    let info: ReceiverInfo = serde_json::from_str(&serde_json::to_string(&info).unwrap()).unwrap();
    let hello: SenderInfo = serde_json::from_str(&serde_json::to_string(&hello).unwrap()).unwrap();
    let tx = sender.connect(&info).unwrap();
    let rx = receiver.connect(&hello).unwrap();
    (tx, rx)
}

struct Rdma {
    qps: u32,
    cq_mode: CqMode,
}

impl Harness for Rdma {
    fn name(&self) -> String {
        format!("rdma qps={} cq={:?}", self.qps, self.cq_mode)
    }
    fn pair(&self, params: &SessionParams) -> Pair {
        let (tx, rx) = connect(&config(self.qps, params.chunk_bytes, self.cq_mode));
        (Box::new(tx), Box::new(rx))
    }
    fn breaking_pair(&self, params: &SessionParams, frames: u64) -> Pair {
        let (tx, rx) = connect(&config(self.qps, params.chunk_bytes, self.cq_mode));
        tx.fail_link_after_frames(frames);
        (Box::new(tx), Box::new(rx))
    }
}

/// The defaults: two QPs, busy-poll CQs.
#[test]
fn conformance_rdma_two_qps() {
    if !device_or_skip("conformance 2 QPs") {
        return;
    }
    let t = Instant::now();
    run_suite(&Rdma { qps: 2, cq_mode: CqMode::BusyPoll });
    println!("conformance rdma qps=2 busy-poll: {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn conformance_rdma_one_qp_event_mode() {
    if !device_or_skip("conformance 1 QP") {
        return;
    }
    let t = Instant::now();
    run_suite(&Rdma { qps: 1, cq_mode: CqMode::Event });
    println!("conformance rdma qps=1 event: {:.1} s", t.elapsed().as_secs_f64());
}

/// The core's frame-level suite (`blitx_core::frame_suite`) over RDMA: two
/// QPs busy-polled without frame checksums (unchecked frames allowed), one QP
/// event-driven with them (unchecked frames refused).
struct RdmaFrames {
    qps: u32,
    cq_mode: CqMode,
    checksums: bool,
}

impl FrameHarness for RdmaFrames {
    fn name(&self) -> String {
        format!("rdma qps={} cq={:?} checksums={}", self.qps, self.cq_mode, self.checksums)
    }
    fn pair(&self, chunk_bytes: u32) -> FramePair {
        let cfg = RdmaConfig {
            frame_checksums: self.checksums,
            ..config(self.qps, chunk_bytes, self.cq_mode)
        };
        let (tx, rx) = connect(&cfg);
        (Box::new(tx), Box::new(rx))
    }
}

#[test]
fn frame_suite_rdma_two_qps() {
    if !device_or_skip("frame suite 2 QPs") {
        return;
    }
    run_frame_suite(&RdmaFrames { qps: 2, cq_mode: CqMode::BusyPoll, checksums: false });
}

#[test]
fn frame_suite_rdma_one_qp_event_checksums() {
    if !device_or_skip("frame suite 1 QP") {
        return;
    }
    run_frame_suite(&RdmaFrames { qps: 1, cq_mode: CqMode::Event, checksums: true });
}

fn chunk_header(id: u64, data: &[u8]) -> FrameHeader {
    FrameHeader {
        kind: FrameKind::Chunk,
        flags: 0,
        file_id: id,
        offset_bytes: 0,
        len_bytes: data.len() as u32,
        checksum: checksum(data),
    }
}

fn pattern(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(31).wrapping_add(id * 7) as u8).collect()
}

/// Sends `pattern(id, len)` as frame `id` in a lease of the sender's own pool.
fn send_pattern(tx: &RdmaSender, id: u64, len: usize) -> Result<(), TransportError> {
    let data = pattern(id, len);
    let mut lease = tx.pool().acquire().unwrap();
    lease.full_mut()[..len].copy_from_slice(&data);
    lease.set_len(len);
    tx.send(Frame { header: chunk_header(id, &data), payload: Payload::Buffer(lease) })
}

/// Every payload form arrives intact, `None` reaches every receiving thread,
/// and the counters show no copy on the `Buffer` path.
#[test]
fn every_payload_form_arrives_and_buffer_frames_are_not_copied() {
    if !device_or_skip("payload forms") {
        return;
    }
    let chunk = 256 << 10;
    let (tx, rx) = connect(&config(2, chunk, CqMode::BusyPoll));
    assert_eq!(tx.payload_pref(), PayloadPref::Buffer);
    assert_eq!(tx.frame_bytes_max(), chunk);
    let file = tempfile::tempfile().unwrap();
    let file_bytes = pattern(99, 100_000);
    std::os::unix::fs::FileExt::write_all_at(&file, &file_bytes, 0).unwrap();
    let file = std::sync::Arc::new(file);
    let foreign = BufferPool::new(1, chunk as usize, false).unwrap();
    let frames = 40u64;
    let got = AtomicU64::new(0);
    let nones = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    match rx.recv().unwrap() {
                        None => {
                            nones.fetch_add(1, Ordering::Relaxed);
                            // and again: None is sticky
                            assert!(rx.recv().unwrap().is_none());
                            return;
                        }
                        Some(f) => {
                            match (&f.header.kind, &f.payload) {
                                (FrameKind::Hole, Payload::Empty) => {}
                                (FrameKind::Chunk, Payload::Buffer(l)) => {
                                    let id = f.header.file_id;
                                    let want = if id == 1_000 {
                                        file_bytes[..l.len()].to_vec()
                                    } else {
                                        pattern(id, l.len())
                                    };
                                    assert_eq!(l.data(), &want[..], "frame {id}");
                                    f.header.verify(l.data()).unwrap();
                                }
                                other => panic!("unexpected {other:?}"),
                            }
                            got.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        for id in 0..frames {
            let len = match id % 5 {
                0 => chunk as usize,
                1 => 1,
                2 => 4097,
                _ => (id as usize * 7919) % chunk as usize,
            };
            send_pattern(&tx, id, len).unwrap();
        }
        let hole = FrameHeader {
            kind: FrameKind::Hole,
            len_bytes: 0,
            checksum: 0,
            ..chunk_header(500, &[])
        };
        tx.send(Frame { header: hole, payload: Payload::Empty }).unwrap();
        let region = FileRegion::new(file.clone(), 0, 100_000);
        tx.send(Frame { header: chunk_header(1_000, &file_bytes), payload: Payload::File(region) })
            .unwrap();
        let data = pattern(2_000, 5000);
        let mut lease = foreign.acquire().unwrap();
        lease.full_mut()[..5000].copy_from_slice(&data);
        lease.set_len(5000);
        tx.send(Frame { header: chunk_header(2_000, &data), payload: Payload::Buffer(lease) })
            .unwrap();
        // a header that disagrees with its payload is refused, not sent
        let mut lease = tx.pool().acquire().unwrap();
        lease.set_len(10);
        let bad =
            tx.send(Frame { header: chunk_header(3, &[0; 9]), payload: Payload::Buffer(lease) });
        assert!(
            matches!(bad, Err(TransportError::Frame(FrameError::PayloadLength { .. }))),
            "{bad:?}"
        );
        tx.finish().unwrap();
    });
    assert_eq!(got.load(Ordering::Relaxed), frames + 3);
    assert_eq!(nones.load(Ordering::Relaxed), 3);
    let c = tx.counters();
    println!("sender counters: {c:?}");
    println!("receiver counters: {:?}", rx.counters());
    assert_eq!(c.frames, frames + 3 + 2, "data frames, hole, file, foreign, 2 Ends");
    assert_eq!(c.wr_write_imm, c.frames);
    assert_eq!(c.payload_copies, 1, "only the foreign lease is copied");
    assert_eq!(c.payload_copy_bytes, 5000);
    assert_eq!(c.file_reads, 1);
    assert_eq!(c.nic_write_bytes, c.payload_bytes + 32 * c.frames);
    assert_eq!(rx.counters().nic_write_bytes, c.nic_write_bytes);
    assert_eq!(rx.counters().payload_copy_bytes, 0);
    assert!(c.wr_signaled < c.wr_write_imm, "completions are batched");
    assert_eq!(tx.stats().frames, c.frames);
    assert!(tx.send(Frame { header: FrameHeader::end(), payload: Payload::Empty }).is_err());
}

/// Many threads send at once over three QPs, with few slots and credits:
/// each QP's WRs are posted in the order the window numbered them while
/// posts to different QPs overlap. Every frame arrives once and intact, and
/// `finish()` (which waits until no WR is outstanding) succeeds.
#[test]
fn concurrent_senders_on_several_qps_deliver_every_frame_once() {
    if !device_or_skip("concurrent senders") {
        return;
    }
    let chunk = 64 << 10;
    let cfg = RdmaConfig { slots: 4, signal_interval: 3, ..config(3, chunk, CqMode::BusyPoll) };
    let (tx, rx) = connect(&cfg);
    let (senders, per_sender) = (4u64, 60u64);
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(f) = rx.recv().unwrap() {
                    let id = f.header.file_id;
                    let Payload::Buffer(l) = &f.payload else { panic!("frame {id}: {f:?}") };
                    assert_eq!(l.data(), &pattern(id, l.len())[..], "frame {id}");
                    assert!(seen.lock().unwrap().insert(id), "frame {id} arrived twice");
                }
            });
        }
        let tx = &tx;
        let sending: Vec<_> = (0..senders)
            .map(|t| {
                s.spawn(move || {
                    for k in 0..per_sender {
                        let id = t * 1_000 + k;
                        let len = 1 + (id as usize * 7919) % chunk as usize;
                        send_pattern(tx, id, len).unwrap();
                    }
                })
            })
            .collect();
        for h in sending {
            h.join().unwrap();
        }
        tx.finish().unwrap();
    });
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len() as u64, senders * per_sender);
    let c = tx.counters();
    assert_eq!(c.frames, senders * per_sender + 3, "data frames and one End per QP");
    assert!(c.send_waits > 0, "4 slots for 4 senders: some waited for credits ({c:?})");
    assert_eq!(rx.counters().payload_copy_bytes, 0);
}

/// abort() on the sender reaches a receiver blocked in recv(), and abort()
/// on the receiver reaches a sender blocked on credits.
#[test]
fn abort_on_either_side_fails_the_other_promptly() {
    if !device_or_skip("abort") {
        return;
    }
    let cfg = RdmaConfig { slots: 2, ..config(1, 64 << 10, CqMode::BusyPoll) };
    let (tx, rx) = connect(&cfg);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let t = Instant::now();
            let r = rx.recv();
            (r.map(|f| f.is_some()), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        tx.abort();
        let (r, waited) = waiter.join().unwrap();
        assert!(matches!(r, Err(TransportError::PeerGone { .. })), "{r:?}");
        assert!(waited < Duration::from_secs(3), "took {waited:?}");
    });
    assert!(matches!(
        tx.send(Frame { header: FrameHeader::end(), payload: Payload::Empty }),
        Err(TransportError::Cancelled)
    ));

    let (tx, rx) = connect(&cfg);
    let held: Vec<Frame> = (0..2)
        .map(|id| {
            let mut lease = tx.pool().acquire().unwrap();
            lease.set_len(100);
            let header = chunk_header(id, lease.data());
            tx.send(Frame { header, payload: Payload::Buffer(lease) }).unwrap();
            rx.recv().unwrap().unwrap() // held: the receiver has no free slot
        })
        .collect();
    std::thread::scope(|s| {
        let blocked = s.spawn(|| {
            let mut lease = tx.pool().acquire().unwrap();
            lease.set_len(100);
            let header = chunk_header(9, lease.data());
            let t = Instant::now();
            (tx.send(Frame { header, payload: Payload::Buffer(lease) }), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        rx.abort();
        let (r, waited) = blocked.join().unwrap();
        assert!(matches!(r, Err(TransportError::PeerGone { .. })), "{r:?}");
        assert!(waited < Duration::from_secs(3), "took {waited:?}");
    });
    drop(held);
}

/// `frame_checksums` decides whether readers hash (`needs_checksums`), and a
/// receiver that asked for checksums refuses an unchecked frame with a
/// protocol error; a checked one still arrives.
#[test]
fn frame_checksums_are_asked_for_and_enforced() {
    if !device_or_skip("frame checksums") {
        return;
    }
    let plain = config(1, 64 << 10, CqMode::BusyPoll);
    let (tx, rx) = connect(&plain);
    assert!(!tx.needs_checksums(), "frame checksums are off by default on RDMA");
    drop((tx, rx));
    let cfg = RdmaConfig { frame_checksums: true, ..plain };
    let (tx, rx) = connect(&cfg);
    assert!(tx.needs_checksums());
    let data = pattern(1, 4096);
    let mut lease = tx.pool().acquire().unwrap();
    lease.full_mut()[..data.len()].copy_from_slice(&data);
    lease.set_len(data.len());
    tx.send(Frame { header: chunk_header(1, &data), payload: Payload::Buffer(lease) }).unwrap();
    let f = rx.recv().unwrap().unwrap();
    match &f.payload {
        Payload::Buffer(l) => f.header.verify(l.data()).unwrap(),
        other => panic!("expected a buffer, got {other:?}"),
    }
    drop(f);
    let mut lease = tx.pool().acquire().unwrap();
    lease.full_mut()[..data.len()].copy_from_slice(&data);
    lease.set_len(data.len());
    let header = FrameHeader { flags: FLAG_UNCHECKED, checksum: 0, ..chunk_header(2, &data) };
    tx.send(Frame { header, payload: Payload::Buffer(lease) }).unwrap();
    match rx.recv() {
        Err(TransportError::BadFrame { source: FrameError::Unchecked { .. }, .. }) => {}
        other => panic!("expected a refused unchecked frame, got {other:?}"),
    }
}

/// A receiver that never credits anything: the sender stalls with the typed
/// error after its stall timeout, not forever.
#[test]
fn no_credit_for_the_stall_timeout_is_a_stall() {
    if !device_or_skip("stall") {
        return;
    }
    let cfg = RdmaConfig {
        stall_timeout: Duration::from_millis(500),
        ..config(1, 64 << 10, CqMode::BusyPoll)
    };
    let (_receiver, info) = ReceiverSetup::new(&cfg).unwrap(); // never connected
    let (sender, _) = SenderSetup::new(&cfg).unwrap();
    let tx = sender.connect(&info).unwrap();
    let mut lease = tx.pool().acquire().unwrap();
    lease.set_len(10);
    let header = chunk_header(1, lease.data());
    let t = Instant::now();
    let r = tx.send(Frame { header, payload: Payload::Buffer(lease) });
    assert!(matches!(r, Err(TransportError::Stalled { .. })), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(500) && t.elapsed() < Duration::from_secs(5));
    assert!(matches!(tx.finish(), Err(TransportError::Stalled { .. })));
}

/// The link breaks (the sender's QPs go to the error state without a word):
/// the sender fails with a typed work-completion error, the receiver when its
/// credits or keepalive run out of transport retries; neither hangs.
#[test]
fn a_broken_link_fails_both_ends_with_typed_errors() {
    if !device_or_skip("broken link") {
        return;
    }
    let cfg = RdmaConfig {
        slots: 4,
        stall_timeout: Duration::from_secs(8),
        ..config(1, 64 << 10, CqMode::BusyPoll)
    };
    let (tx, rx) = connect(&cfg);
    tx.fail_link_after_frames(3);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let t = Instant::now();
            loop {
                match rx.recv() {
                    Ok(Some(_)) => continue,
                    other => return (other.map(|f| f.is_some()), t.elapsed()),
                }
            }
        });
        let mut sent = Err(TransportError::Cancelled);
        for id in 0..50 {
            let mut lease = match tx.pool().acquire() {
                Ok(l) => l,
                Err(e) => {
                    sent = Err(e.into());
                    break;
                }
            };
            lease.set_len(1000);
            let header = chunk_header(id, lease.data());
            sent = tx.send(Frame { header, payload: Payload::Buffer(lease) });
            if sent.is_err() {
                break;
            }
        }
        let sent = sent.and_then(|()| tx.finish());
        let err = sent.expect_err("the sender must fail");
        println!("sender: {err}");
        if let Some(e) = rdma_error(&err) {
            println!("sender verbs error: {e:?}");
        }
        let (r, waited) = reader.join().unwrap();
        let err = r.expect_err("the receiver must fail");
        println!("receiver after {waited:?}: {err}");
        assert_retry_exceeded("receiver", &err);
        assert!(waited < Duration::from_secs(15), "took {waited:?}");
    });
}

fn assert_retry_exceeded(side: &str, err: &TransportError) {
    match rdma_error(err) {
        Some(Error::WorkCompletion { status, .. }) => {
            assert_eq!(*status, WcStatus::RETRY_EXC_ERR, "{side}: {err}")
        }
        other => panic!("{side}: expected a work-completion error, got {other:?} / {err:?}"),
    }
}

/// A receiver waiting in recv() with every slot credited sends nothing; its
/// keepalive ping finds out that the sender is gone.
#[test]
fn an_idle_receiver_notices_a_dead_sender_by_its_keepalive() {
    if !device_or_skip("receiver keepalive") {
        return;
    }
    let cfg = RdmaConfig {
        stall_timeout: Duration::from_secs(8),
        ..config(1, 64 << 10, CqMode::BusyPoll)
    };
    let (tx, rx) = connect(&cfg);
    std::thread::sleep(Duration::from_millis(300)); // the first credits are through
    tx.fail_link_after_frames(0);
    let t = Instant::now();
    let err = rx.recv().expect_err("the receiver must fail");
    let waited = t.elapsed();
    println!("receiver after {waited:?}: {err}; {:?}", rx.counters());
    assert_retry_exceeded("receiver", &err);
    assert!(rx.counters().pings >= 1);
    assert!(waited < Duration::from_secs(8), "took {waited:?}");
}

/// A sender blocked on credits (the receiver holds every slot) probes the
/// receiver and finds out that it is gone, before its stall timeout.
#[test]
fn a_blocked_sender_notices_a_dead_receiver_by_its_keepalive() {
    if !device_or_skip("sender keepalive") {
        return;
    }
    let cfg = RdmaConfig {
        slots: 2,
        stall_timeout: Duration::from_secs(8),
        ..config(1, 64 << 10, CqMode::BusyPoll)
    };
    let (tx, rx) = connect(&cfg);
    let send = |id| {
        let mut lease = tx.pool().acquire().unwrap();
        lease.set_len(100);
        let header = chunk_header(id, lease.data());
        tx.send(Frame { header, payload: Payload::Buffer(lease) })
    };
    let held: Vec<Frame> = (0..2)
        .map(|id| {
            send(id).unwrap();
            rx.recv().unwrap().unwrap()
        })
        .collect();
    rx.fail_link_now();
    let t = Instant::now();
    let err = send(2).expect_err("the sender must fail");
    let waited = t.elapsed();
    println!("sender after {waited:?}: {err}; {:?}", tx.counters());
    assert_retry_exceeded("sender", &err);
    assert!(tx.counters().pings >= 1);
    assert!(waited < Duration::from_secs(8), "took {waited:?}");
    drop(held);
}

/// A sender that goes quiet after WRITEs that were not signalled (fewer than
/// `signal_interval`) gets their buffers back and is not mistaken for a
/// stall, however long it stays quiet.
#[test]
fn an_idle_sender_with_an_unsignalled_tail_is_not_a_stall() {
    if !device_or_skip("idle tail") {
        return;
    }
    let cfg = RdmaConfig {
        pool_slots: 6,
        signal_interval: 4,
        stall_timeout: Duration::from_millis(600),
        ..config(1, 64 << 10, CqMode::BusyPoll)
    };
    let (tx, rx) = connect(&cfg);
    // The pool registers its slots on demand; take every one once, so that
    // the sends below find free buffers and leave their WRITEs unsignalled
    // (an empty pool would force a signal).
    drop((0..6).map(|_| tx.pool().acquire().unwrap()).collect::<Vec<_>>());
    assert_eq!(tx.pool().parked(), 0);
    let send = |id| {
        let mut lease = tx.pool().acquire().unwrap();
        lease.set_len(100);
        let header = chunk_header(id, lease.data());
        tx.send(Frame { header, payload: Payload::Buffer(lease) })
    };
    for id in 0..2 {
        send(id).unwrap();
        drop(rx.recv().unwrap().unwrap());
    }
    std::thread::sleep(Duration::from_millis(1500)); // quiet for 2.5 stall timeouts
    assert_eq!(tx.pool().available(), 6, "the tail's buffers came back");
    for id in 2..10 {
        send(id).unwrap();
        drop(rx.recv().unwrap().unwrap());
    }
    tx.finish().unwrap();
    assert!(rx.recv().unwrap().is_none());
    assert!(tx.counters().pings >= 1, "{:?}", tx.counters());
}
