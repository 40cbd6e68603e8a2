//! The payload checksum (`blitx_core::frame::checksum`: xxh3-64 of each 256 KiB piece, chained):
//! computed by the sender and verified by the receiver for every network frame, so its GB/s
//! bounds a single-core stream. Plain one-shot xxh3-64 runs next to it as the reference.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn checksums(c: &mut Criterion) {
    let mut g = c.benchmark_group("xxh3_64");
    for (name, bytes) in [("4KiB", 4usize << 10), ("1MiB", 1 << 20), ("4MiB", 4 << 20)] {
        // Non-repeating content, as on the wire.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_with_input(BenchmarkId::new("frame", name), &data, |b, d| {
            b.iter(|| black_box(blitx_core::frame::checksum(black_box(d))))
        });
        g.bench_with_input(BenchmarkId::new("one-shot", name), &data, |b, d| {
            b.iter(|| black_box(xxhash_rust::xxh3::xxh3_64(black_box(d))))
        });
        // Piece-by-piece hashing (what readers and writers do) gives the frame checksum.
        let mut h = blitx_core::frame::Hasher::default();
        for piece in data.chunks(blitx_core::frame::HASH_PIECE_BYTES) {
            h.update(piece);
        }
        assert_eq!(h.finish(), blitx_core::frame::checksum(&data));
    }
    g.finish();
}

criterion_group!(benches, checksums);
criterion_main!(benches);
