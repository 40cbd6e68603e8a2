//! The payload checksum (xxh3-64, `blitx_core::frame::checksum`): computed by the sender and
//! verified by the receiver for every network frame, so its GB/s bounds a single-core stream.

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
        g.bench_with_input(BenchmarkId::from_parameter(name), &data, |b, d| {
            b.iter(|| black_box(blitx_core::frame::checksum(black_box(d))))
        });
        assert_eq!(blitx_core::frame::checksum(&data), xxhash_rust::xxh3::xxh3_64(&data));
    }
    g.finish();
}

criterion_group!(benches, checksums);
criterion_main!(benches);
