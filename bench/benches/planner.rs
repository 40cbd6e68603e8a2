//! Planner bundling (`blitx_planner::Chunker`): 100k small files pushed and drained into
//! bundles, plus one large file into chunks — the per-file CPU the source side pays.

use std::hint::black_box;

use blitx_core::session::SessionParams;
use blitx_planner::{Chunker, NeededFile, Unit};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const FILES: u64 = 100_000;

fn drain(chunker: &mut Chunker) -> usize {
    let mut units = 0;
    while let Some(u) = chunker.next(true) {
        if let Unit::Bundle(files) = &u {
            black_box(files.len());
        }
        units += 1;
    }
    units
}

fn bundling(c: &mut Criterion) {
    let params = SessionParams::default();
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Elements(FILES));
    g.bench_function("100k_small_files", |b| {
        b.iter_batched(
            || Chunker::new(&params),
            |mut ch| {
                for id in 0..FILES {
                    ch.push(NeededFile { id, size_bytes: 512 + (id * 37) % 8192 });
                }
                black_box(drain(&mut ch))
            },
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_64GiB_file_into_chunks", |b| {
        b.iter_batched(
            || Chunker::new(&params),
            |mut ch| {
                ch.push(NeededFile { id: 1, size_bytes: 64 << 30 });
                black_box(drain(&mut ch))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let mut ch = Chunker::new(&params);
    for id in 0..FILES {
        ch.push(NeededFile { id, size_bytes: 4096 });
    }
    assert!(drain(&mut ch) > 0 && ch.is_empty());
}

criterion_group!(benches, bundling);
criterion_main!(benches);
