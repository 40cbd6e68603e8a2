//! Frame header encode/decode and bundle index write/parse (`blitx_core::frame`): run once per
//! frame on both sides of every transport.

use std::hint::black_box;

use blitx_core::frame::{
    self, FRAME_HEADER_BYTES, FrameHeader, FrameKind, bundle_index_bytes, write_bundle_index,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn header() -> FrameHeader {
    FrameHeader {
        kind: FrameKind::Chunk,
        flags: frame::FLAG_FILE_VERIFIED,
        file_id: 123_456,
        offset_bytes: 7 << 30,
        len_bytes: 4 << 20,
        checksum: 0x0123_4567_89ab_cdef,
    }
}

fn headers(c: &mut Criterion) {
    let h = header();
    let bytes = h.encode();
    let mut g = c.benchmark_group("frame_header");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(black_box(&h).encode())));
    g.bench_function("decode", |b| {
        b.iter(|| FrameHeader::decode(black_box(&bytes), 64 << 20).map(black_box))
    });
    g.finish();
    assert_eq!(FrameHeader::decode(&bytes, 64 << 20).ok(), Some(h));
    assert_eq!(bytes.len(), FRAME_HEADER_BYTES);
}

/// A bundle payload of `files` files of `file_bytes` each.
fn bundle(files: usize, file_bytes: u32) -> Vec<u8> {
    let items: Vec<(u64, u32, u32)> = (0..files as u64).map(|i| (i, file_bytes, 0)).collect();
    let mut buf = vec![0u8; bundle_index_bytes(files) + files * file_bytes as usize];
    write_bundle_index(&mut buf, &items);
    buf
}

fn bundles(c: &mut Criterion) {
    let mut g = c.benchmark_group("bundle_index");
    // 1 MiB bundles of 4 KiB files (~250) and of 64-byte files (the 16 Ki file cap).
    for (files, file_bytes) in [(252usize, 4096u32), (16 * 1024, 48)] {
        let payload = bundle(files, file_bytes);
        let items: Vec<(u64, u32, u32)> = (0..files as u64).map(|i| (i, file_bytes, 0)).collect();
        g.throughput(Throughput::Elements(files as u64));
        g.bench_with_input(BenchmarkId::new("parse", files), &payload, |b, p| {
            b.iter(|| frame::parse_bundle(black_box(p)).map(|v| black_box(v.len())))
        });
        let mut buf = vec![0u8; bundle_index_bytes(files)];
        g.bench_with_input(BenchmarkId::new("write", files), &items, |b, it| {
            b.iter(|| black_box(write_bundle_index(black_box(&mut buf), black_box(it))))
        });
        assert_eq!(frame::parse_bundle(&payload).map(|v| v.len()).ok(), Some(files));
    }
    g.finish();
}

criterion_group!(benches, headers, bundles);
criterion_main!(benches);
