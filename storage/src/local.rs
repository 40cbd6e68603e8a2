//! A local transfer: both halves in this process, joined by channels and the in-process
//! transport (file regions, so large files move with copy_file_range and never pass through
//! user space; small-file bundles move as pooled buffers without copying).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use blitx_core::BufferPool;
use blitx_core::session::SessionParams;
use blitx_core::transport::{MemFaults, PayloadPref, mem_pair};

use crate::report::{Progress, Reporter, SourceReport, TargetReport};
use crate::source::{SourceError, SourceOptions, run_source};
use crate::target::{TargetError, TargetOptions, run_target};

/// Control messages queued between the halves at most (each is one listing part or one answer).
pub const CONTROL_QUEUE_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub source: PathBuf,
    /// Must exist (the caller creates it, or points a dry run at an empty stand-in).
    pub target: PathBuf,
    pub params: SessionParams,
    pub threads: usize,
    /// How readers hand data over: file regions (kernel copy) or buffers (the network path).
    pub payload: PayloadPref,
    /// Fault injection (tests only; default none).
    pub faults: MemFaults,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("source side: {0}")]
    Source(#[source] SourceError),
    #[error("target side: {0}")]
    Target(#[source] TargetError),
    #[error("cannot allocate the buffer pool")]
    Pool(#[from] blitx_core::pool::PoolError),
}

/// Runs a local transfer. `progress` is the target's (what has been written).
pub fn run_local(
    opts: &LocalOptions,
    reporter: &dyn Reporter,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<(SourceReport, TargetReport), LocalError> {
    let threads = opts.threads.max(1);
    let slots = 2 * threads + 4;
    let pool = BufferPool::new(slots, opts.params.chunk_bytes as usize, true)?;
    let (tx, rx) = mem_pair(pool, opts.payload, opts.params.chunk_bytes, slots, opts.faults);
    let (to_target, from_source) = crossbeam_channel::bounded(CONTROL_QUEUE_MAX);
    let (to_source, from_target) = crossbeam_channel::bounded(CONTROL_QUEUE_MAX);
    let source_opts = SourceOptions {
        root: opts.source.clone(),
        params: opts.params.clone(),
        walk_threads: threads,
        read_threads: threads,
        confine: false,
    };
    let target_opts = TargetOptions {
        root: opts.target.clone(),
        params: opts.params.clone(),
        write_threads: threads,
        confine: false,
    };
    let source_progress = Progress::default();
    let (s, t) = std::thread::scope(|sc| {
        let source = sc.spawn(|| {
            let r = run_source(&source_opts, to_target, from_target, &tx, &source_progress, cancel);
            if r.is_err() {
                blitx_core::transport::FrameSender::abort(&tx);
            }
            r
        });
        let t = run_target(&target_opts, from_source, to_source, &rx, reporter, progress, cancel);
        if t.is_err() {
            blitx_core::transport::FrameReceiver::abort(&rx);
        }
        let s = source.join().unwrap_or(Err(SourceError::Cancelled));
        (s, t)
    });
    // The target's error is the more specific one when both failed (the source usually only
    // saw the other half go away).
    let t = t.map_err(LocalError::Target)?;
    let s = s.map_err(LocalError::Source)?;
    Ok((s, t))
}
