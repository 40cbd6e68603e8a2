//! Buffer pool acquire/release (`blitx_core::BufferPool`): every chunk on every transport
//! takes a slot and gives it back.

use std::hint::black_box;

use blitx_core::BufferPool;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn pool(c: &mut Criterion) {
    let pool = match BufferPool::new(64, 1 << 20, false) {
        Ok(p) => p,
        Err(e) => panic!("cannot map the pool: {e}"),
    };
    let mut g = c.benchmark_group("buffer_pool");
    g.throughput(Throughput::Elements(1));
    g.bench_function("acquire_release", |b| {
        b.iter(|| {
            let lease = pool.acquire();
            black_box(lease.map(|l| l.index()).ok())
        })
    });
    g.bench_function("try_acquire_release", |b| {
        b.iter(|| black_box(pool.try_acquire().map(|l| l.index())))
    });
    // Two threads taking and returning slots: the mutex/condvar hand-off under contention.
    g.throughput(Throughput::Elements(2 * 1000));
    g.bench_function("two_threads_1000_each", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..1000 {
                            black_box(pool.acquire().map(|l| l.index()).ok());
                        }
                    });
                }
            })
        })
    });
    g.finish();
    assert_eq!(pool.available(), pool.slots());
}

criterion_group!(benches, pool);
criterion_main!(benches);
