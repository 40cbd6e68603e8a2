//! A cancel wakes a half wherever it waits: on a silent peer (with an idle timeout of an hour,
//! so only the cancel can end the wait) and on queues the other half stopped reading.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use blitx_core::BufferPool;
use blitx_core::cancel::Cancel;
use blitx_core::session::SessionParams;
use blitx_core::transport::{MemFaults, PayloadPref, mem_pair};
use blitx_storage::RootDir;
use blitx_storage::limits::Limits;
use blitx_storage::report::{Progress, Quiet};
use blitx_storage::source::{SourceError, SourceOptions, run_source};
use blitx_storage::target::{TargetError, TargetOptions, run_target};

/// Generous for a loaded CI machine; an idle timeout (an hour here) is what it guards against.
const WOKEN_WITHIN: Duration = Duration::from_secs(2);
const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

fn params() -> SessionParams {
    SessionParams {
        chunk_bytes: 1 << 20,
        small_file_bytes_max: 64 << 10,
        bundle_bytes: 256 << 10,
        ..SessionParams::default()
    }
}

/// Fires `cancel` once `f` has had time to block, and returns how long `f` ran past the cancel.
fn cancel_while<R: Send>(cancel: &Cancel, f: impl FnOnce() -> R + Send) -> (R, Duration) {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = f();
            (r, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(200));
        let fired = Instant::now();
        cancel.fire();
        let (r, ended) = h.join().unwrap();
        (r, ended.saturating_duration_since(fired))
    })
}

#[test]
fn a_target_waiting_on_a_silent_source_ends_at_the_cancel() {
    let dst = tempfile::tempdir().unwrap();
    let p = params();
    let pool = BufferPool::new(8, p.chunk_bytes as usize, false).unwrap();
    let (_tx, rx) = mem_pair(pool, PayloadPref::Buffer, p.chunk_bytes, 4, MemFaults::default());
    let mut opts = TargetOptions::new(RootDir::open(dst.path()).unwrap(), p, 2);
    opts.limits.idle_timeout = HOUR;
    // The source half: connected, and silent.
    let (_to_target, from_source) = crossbeam_channel::bounded(1);
    let (to_source, _from_target) = crossbeam_channel::bounded(1);
    let cancel = Cancel::new();
    let progress = Progress::default();
    let (r, late) = cancel_while(&cancel, || {
        run_target(&opts, from_source, to_source, &rx, &Quiet, &progress, &cancel)
    });
    assert!(matches!(r, Err(TargetError::Cancelled)), "{r:?}");
    assert!(late < WOKEN_WITHIN, "the target ended {late:?} after the cancel");
}

#[test]
fn a_source_blocked_on_a_full_queue_and_a_silent_target_ends_at_the_cancel() {
    let src = tempfile::tempdir().unwrap();
    // More directories (each one listing) than every queue between the walk and the target
    // holds: the walk, the forwarder and the dispatcher all end up waiting.
    for i in 0..200 {
        let d = src.path().join(format!("d{i:03}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("f"), b"x").unwrap();
    }
    let p = params();
    let pool = BufferPool::new(8, p.chunk_bytes as usize, false).unwrap();
    let (tx, _rx) = mem_pair(pool, PayloadPref::Buffer, p.chunk_bytes, 4, MemFaults::default());
    let opts = SourceOptions {
        single: None,
        root: RootDir::open(src.path()).unwrap(),
        params: p,
        walk_threads: 2,
        read_threads: 2,
        confine: false,
        privileged_xattrs: true,
        limits: Limits { idle_timeout: HOUR, ..Limits::none() },
    };
    // The target half: its queue holds one message and it never reads or answers.
    let (to_target, _from_source) = crossbeam_channel::bounded(1);
    let (_to_source, from_target) = crossbeam_channel::bounded(1);
    let cancel = Cancel::new();
    let progress = Progress::default();
    let (r, late) = cancel_while(&cancel, || {
        run_source(&opts, to_target, from_target, &tx, &progress, &cancel)
    });
    assert!(matches!(r, Err(SourceError::Cancelled)), "{r:?}");
    assert!(late < WOKEN_WITHIN, "the source ended {late:?} after the cancel");
}
