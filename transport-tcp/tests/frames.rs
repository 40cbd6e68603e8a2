//! Frame movement beyond the conformance suite: many consumers, file regions, early ends,
//! aborts, and a peer that sends what it must not.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitx_core::frame::{FrameError, FrameHeader, FrameKind, checksum};
use blitx_core::transport::{
    FileRegion, Frame, FrameReceiver, FrameSender, Payload, PayloadPref, TransportError,
};
use blitx_transport_tcp::{TcpReceiver, TcpSender};

use common::{chunk, pair, stream_sets, test_config, verify};

#[test]
fn every_consumer_sees_the_end() {
    let cfg = test_config(4, 256 << 10);
    let (tx, rx) = pair(&cfg, false);
    let rx = Arc::new(rx);
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let rx = Arc::clone(&rx);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                while let Some(f) = rx.recv().unwrap() {
                    verify(&f);
                    ids.push(f.header.file_id);
                }
                // Still the end, however often asked.
                assert!(rx.recv().unwrap().is_none());
                ids
            })
        })
        .collect();
    for id in 0..300 {
        tx.send(chunk(&tx, id, 1 + (id as usize * 997) % (256 << 10))).unwrap();
    }
    // A hole carries no payload.
    let hole = FrameHeader {
        kind: FrameKind::Hole,
        flags: 0,
        file_id: 999,
        offset_bytes: 0,
        len_bytes: 0,
        checksum: 0,
    };
    tx.send(Frame { header: hole, payload: Payload::Empty }).unwrap();
    tx.finish().unwrap();
    let mut ids: Vec<u64> = consumers.into_iter().flat_map(|c| c.join().unwrap()).collect();
    ids.sort_unstable();
    let mut want: Vec<u64> = (0..300).collect();
    want.push(999);
    assert_eq!(ids, want);
    let stats = tx.stats();
    assert_eq!(stats.streams, 4);
    // 301 frames plus one End per stream.
    assert_eq!(stats.frames, 305);
    assert_eq!(rx.stats().frames, 301);
    assert_eq!(rx.stats().payload_bytes, stats.payload_bytes);
}

#[test]
fn file_regions_travel_with_their_checksum() {
    let mut cfg = test_config(2, 1 << 20);
    cfg.payload = PayloadPref::FileRegion;
    let (tx, rx) = pair(&cfg, true);
    assert_eq!(tx.payload_pref(), PayloadPref::FileRegion);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("region");
    let data: Vec<u8> =
        (0..3_500_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    let regions = [
        (0u64, 1u32 << 20),
        (1 << 20, 1 << 20),
        (3 << 20, 3_500_000 - (3 << 20)),
        (17, 0),
        (5, 12_345),
    ];
    let t = {
        let file = Arc::clone(&file);
        std::thread::spawn(move || {
            for (i, (offset_bytes, len_bytes)) in regions.into_iter().enumerate() {
                let header = FrameHeader {
                    kind: FrameKind::Chunk,
                    flags: 0,
                    file_id: i as u64,
                    offset_bytes,
                    len_bytes,
                    checksum: 0,
                };
                let region = FileRegion::new(Arc::clone(&file), offset_bytes, len_bytes);
                tx.send(Frame { header, payload: Payload::File(region) }).unwrap();
            }
            tx.finish().unwrap();
        })
    };
    let mut seen = 0;
    while let Some(f) = rx.recv().unwrap() {
        let (off, len) = regions[f.header.file_id as usize];
        let Payload::Buffer(lease) = &f.payload else { panic!("expected a buffer") };
        assert_eq!(lease.data(), &data[off as usize..(off + u64::from(len)) as usize]);
        assert_eq!(f.header.checksum, checksum(lease.data()));
        seen += 1;
    }
    assert_eq!(seen, regions.len());
    t.join().unwrap();
}

/// With `Delivery::Lent` a chunk's payload is read by the consumer from the socket; one it
/// drops unread is discarded, and the frames after it arrive intact.
#[test]
fn lent_payloads_are_read_or_discarded_in_place() {
    let mut cfg = test_config(1, 1 << 20);
    cfg.delivery = blitx_transport_tcp::Delivery::Lent;
    let (tx, rx) = pair(&cfg, false);
    let sizes = [1usize << 20, 5000, 1 << 20, 1, 777_777];
    let t = std::thread::spawn(move || {
        for (id, len) in sizes.into_iter().enumerate() {
            tx.send(chunk(&tx, id as u64, len)).unwrap();
        }
        tx.finish().unwrap();
    });
    let mut seen = 0;
    while let Some(mut f) = rx.recv().unwrap() {
        let id = f.header.file_id as usize;
        assert_eq!(f.payload.len_bytes(), sizes[id] as u64);
        let Payload::Stream(stream) = &mut f.payload else { panic!("expected a lent payload") };
        if id.is_multiple_of(2) {
            // Read in uneven pieces, as a writer with a small buffer would.
            let mut data = vec![0u8; sizes[id]];
            let mut at = 0;
            while at < data.len() {
                let n = (data.len() - at).min(100_003);
                stream.read_exact(&mut data[at..at + n]).unwrap();
                at += n;
            }
            assert_eq!(stream.remaining(), 0);
            f.header.verify(&data).unwrap();
            assert!(stream.read_exact(&mut [0u8; 1]).is_err(), "read past the payload");
        }
        seen += 1;
    }
    assert_eq!(seen, sizes.len());
    t.join().unwrap();
}

#[test]
fn dropping_the_sender_unfinished_fails_the_receiver() {
    let cfg = test_config(2, 1 << 20);
    let (tx, rx) = pair(&cfg, false);
    for id in 0..4 {
        tx.send(chunk(&tx, id, 1000)).unwrap();
    }
    drop(tx);
    let start = Instant::now();
    let outcome = loop {
        match rx.recv() {
            Ok(Some(f)) => verify(&f),
            other => break other,
        }
    };
    assert!(matches!(outcome, Err(TransportError::PeerGone { .. })), "{outcome:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn receiver_abort_fails_the_sender_promptly() {
    let cfg = test_config(2, 1 << 20);
    let (tx, rx) = pair(&cfg, true);
    let t = std::thread::spawn(move || {
        for id in 0.. {
            if let Err(e) = tx.send(chunk(&tx, id, 1 << 20)) {
                return (e, Instant::now());
            }
        }
        unreachable!()
    });
    // Let the pipes fill up, then give up on the receiving side.
    std::thread::sleep(Duration::from_millis(200));
    rx.abort();
    let aborted_at = Instant::now();
    assert!(matches!(rx.recv(), Err(TransportError::Cancelled)));
    let (err, failed_at) = t.join().unwrap();
    assert!(matches!(err, TransportError::PeerGone { .. }), "{err:?}");
    assert!(failed_at.saturating_duration_since(aborted_at) < Duration::from_secs(3));
}

#[test]
fn sender_abort_wakes_a_blocked_send() {
    let cfg = test_config(1, 1 << 20);
    let (tx, rx) = pair(&cfg, false);
    let tx = Arc::new(tx);
    let t = {
        let tx = Arc::clone(&tx);
        std::thread::spawn(move || {
            for id in 0.. {
                // Nobody receives: eventually the queue, pool and socket buffers are full.
                let frame = match tx.pool().acquire() {
                    Ok(_) => chunk(tx.as_ref(), id, 1 << 20),
                    Err(_) => return TransportError::Cancelled,
                };
                if let Err(e) = tx.send(frame) {
                    return e;
                }
            }
            unreachable!()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    tx.abort();
    let err = t.join().unwrap();
    assert!(matches!(err, TransportError::Cancelled), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(tx.send(chunk_unpooled()), Err(TransportError::Cancelled)));
    assert!(matches!(tx.finish(), Err(TransportError::Cancelled)));
    // The receiver sees its peer end early.
    let outcome = loop {
        match rx.recv() {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(matches!(outcome, Err(TransportError::PeerGone { .. })), "{outcome:?}");
}

fn chunk_unpooled() -> Frame {
    let header = FrameHeader {
        kind: FrameKind::Hole,
        flags: 0,
        file_id: 1,
        offset_bytes: 0,
        len_bytes: 0,
        checksum: 0,
    };
    Frame { header, payload: Payload::Empty }
}

#[test]
fn send_refuses_malformed_frames() {
    let cfg = test_config(1, 64 << 10);
    let (tx, _rx) = pair(&cfg, false);
    let end = Frame { header: FrameHeader::end(), payload: Payload::Empty };
    assert!(matches!(tx.send(end), Err(TransportError::Misuse(_))));
    let mut f = chunk(&tx, 1, 100);
    f.header.len_bytes = 99;
    assert!(matches!(
        tx.send(f),
        Err(TransportError::Frame(FrameError::PayloadLength { len_bytes: 99, .. }))
    ));
    tx.finish().unwrap();
    assert!(matches!(tx.send(chunk(&tx, 2, 10)), Err(TransportError::Misuse(_))));
}

#[test]
fn a_peer_sending_oversized_frames_is_refused() {
    let cfg = test_config(1, 64 << 10);
    let (daemon, mut client) = stream_sets(&cfg);
    let rx = TcpReceiver::new(daemon, &cfg).unwrap();
    let h = FrameHeader {
        kind: FrameKind::Chunk,
        flags: 0,
        file_id: 1,
        offset_bytes: 0,
        len_bytes: (64 << 10) + 1,
        checksum: 0,
    };
    client[0].write_all(&h.encode()).unwrap();
    match rx.recv() {
        Err(TransportError::BadFrame { peer, source: FrameError::TooLong { .. } }) => {
            assert!(peer.starts_with("stream 0 (127.0.0.1:"), "{peer}");
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn a_peer_sending_unchecked_frames_is_refused() {
    // FLAG_UNCHECKED is for the in-process transport only: over TCP every payload is hashed.
    let cfg = test_config(1, 64 << 10);
    let (daemon, mut client) = stream_sets(&cfg);
    let rx = TcpReceiver::new(daemon, &cfg).unwrap();
    let payload = vec![7u8; 4096];
    let h = FrameHeader {
        kind: FrameKind::Chunk,
        flags: blitx_core::frame::FLAG_UNCHECKED,
        file_id: 1,
        offset_bytes: 0,
        len_bytes: 4096,
        checksum: 0,
    };
    // One write: the receiver resets the connection as soon as it has read the header.
    let _ = client[0].write_all(&[&h.encode()[..], &payload].concat());
    match rx.recv() {
        Err(TransportError::BadFrame { source: FrameError::Unchecked { .. }, .. }) => {}
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn a_peer_closing_without_end_is_gone() {
    let cfg = test_config(2, 64 << 10);
    let (daemon, client) = stream_sets(&cfg);
    let rx = TcpReceiver::new(daemon, &cfg).unwrap();
    let mut c = client;
    // Stream 0 ends properly, stream 1 just closes.
    c[0].write_all(&FrameHeader::end().encode()).unwrap();
    drop(c);
    match rx.recv() {
        Err(TransportError::PeerGone { detail }) => {
            assert!(detail.contains("before its End frame"), "{detail}")
        }
        other => panic!("expected PeerGone, got {other:?}"),
    }
}

#[test]
fn sender_works_with_the_daemon_side_too() {
    // Pull: the accepted streams send.
    let cfg = test_config(3, 128 << 10);
    let (daemon, client) = stream_sets(&cfg);
    let tx = TcpSender::new(daemon, &cfg).unwrap();
    let rx = TcpReceiver::new(client, &cfg).unwrap();
    let t = std::thread::spawn(move || {
        for id in 0..50 {
            tx.send(chunk(&tx, id, 128 << 10)).unwrap();
        }
        tx.finish().unwrap();
    });
    let mut n = 0;
    while let Some(f) = rx.recv().unwrap() {
        verify(&f);
        n += 1;
    }
    assert_eq!(n, 50);
    t.join().unwrap();
}
