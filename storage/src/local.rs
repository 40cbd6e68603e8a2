//! A transfer with both halves in this process.
//!
//! [`run_pair`] joins a source half and a target half with channels for the control messages
//! and any transport for the frames; the transport conformance suite uses it with every backend.
//! [`run_local`] is `blit xfer A B`: the in-process transport with file regions, so large files
//! move with copy_file_range and never pass through user space, while small-file bundles move as
//! pooled buffers without copying.

use blitx_core::cancel::Cancel;
use std::path::PathBuf;

use blitx_core::BufferPool;
use blitx_core::session::SessionParams;
use blitx_core::transport::{FrameReceiver, FrameSender, MemFaults, PayloadPref, mem_pair};

use crate::report::{Progress, Reporter, SourceReport, TargetReport};
use crate::root::RootDir;
use crate::source::{SourceError, SourceOptions, run_source};
use crate::target::{TargetError, TargetOptions, run_target};

/// Control messages queued between the halves at most, per direction (each is one listing part
/// of up to 4096 entries, or one answer): bounds the manifest held in flight.
pub const CONTROL_QUEUE_MAX: usize = 32;

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub source: PathBuf,
    /// Must exist (the caller creates it).
    pub target: PathBuf,
    /// An already opened target (e.g. the empty stand-in of a dry run); `target` is only
    /// displayed then.
    pub target_root: Option<RootDir>,
    pub params: SessionParams,
    pub threads: usize,
    /// How readers hand data over: file regions (kernel copy) or buffers (the network path).
    pub payload: PayloadPref,
    /// Fault injection (tests only; default none).
    pub faults: MemFaults,
    /// A single-file copy: `source` is the file's directory and this its name; the target
    /// side says where it lands.
    pub single: Option<(Vec<u8>, crate::target::SingleFile)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("source side: {0}")]
    Source(#[source] SourceError),
    #[error("target side: {0}")]
    Target(#[source] TargetError),
    #[error("cannot open {path}")]
    Open { path: String, source: std::io::Error },
    #[error("cannot allocate the buffer pool")]
    Pool(#[from] blitx_core::pool::PoolError),
}

/// Buffer slots for `threads` readers and writers: each side can hold one per thread while the
/// queue between them holds as many again.
pub fn pool_slots(threads: usize) -> usize {
    2 * threads.max(1) + 4
}

/// Live counters of both halves.
#[derive(Debug, Default)]
pub struct PairProgress {
    pub source: Progress,
    pub target: Progress,
}

/// Runs both halves over the given transport halves.
#[allow(clippy::too_many_arguments)]
pub fn run_pair(
    source: &SourceOptions,
    target: &TargetOptions,
    tx: &dyn FrameSender,
    rx: &dyn FrameReceiver,
    reporter: &dyn Reporter,
    progress: &PairProgress,
    cancel: &Cancel,
) -> Result<(SourceReport, TargetReport), LocalError> {
    let (to_target, from_source) = crossbeam_channel::bounded(CONTROL_QUEUE_MAX);
    let (to_source, from_target) = crossbeam_channel::bounded(CONTROL_QUEUE_MAX);
    let source_progress = &progress.source;
    let (s, t) = std::thread::scope(|sc| {
        // The source half starts the readers: it carries the placement (blitx_core::placer).
        let s = sc.spawn(blitx_core::placer::inherit(|| {
            let r = run_source(source, to_target, from_target, tx, source_progress, cancel);
            if r.is_err() {
                tx.abort();
            }
            r
        }));
        let t = run_target(target, from_source, to_source, rx, reporter, &progress.target, cancel);
        if t.is_err() {
            rx.abort();
        }
        let s = s.join().unwrap_or(Err(SourceError::Cancelled));
        (s, t)
    });
    // The target's error is the more specific one when both failed (the source usually only
    // saw the other half go away).
    let t = t.map_err(LocalError::Target)?;
    let s = s.map_err(LocalError::Source)?;
    Ok((s, t))
}

/// Runs a local transfer.
pub fn run_local(
    opts: &LocalOptions,
    reporter: &dyn Reporter,
    progress: &PairProgress,
    cancel: &Cancel,
) -> Result<(SourceReport, TargetReport), LocalError> {
    let threads = opts.threads.max(1);
    let slots = pool_slots(threads);
    let pool = BufferPool::new(slots, opts.params.chunk_bytes as usize, true)?;
    let (tx, rx) = mem_pair(pool, opts.payload, opts.params.chunk_bytes, slots, opts.faults);
    let open = |p: &std::path::Path| {
        RootDir::open(p).map_err(|e| LocalError::Open { path: p.display().to_string(), source: e })
    };
    let source = SourceOptions {
        single: opts.single.as_ref().map(|(name, _)| name.clone()),
        // A memory session (`--mem`) generates its data: the source has nothing to open.
        root: if opts.params.mem_bytes.is_some() {
            RootDir::empty_stand_in()
                .map_err(|e| LocalError::Open { path: "(memory)".into(), source: e })?
        } else {
            open(&opts.source)?
        },
        params: opts.params.clone(),
        walk_threads: threads,
        read_threads: threads,
        confine: false,
        privileged_xattrs: true,
        limits: crate::limits::Limits::none(),
    };
    let target_root = match &opts.target_root {
        Some(r) => r.clone(),
        None => open(&opts.target)?,
    };
    let mut target = TargetOptions::new(target_root, opts.params.clone(), threads);
    target.single = opts.single.as_ref().map(|(_, single)| single.clone());
    run_pair(&source, &target, &tx, &rx, reporter, progress, cancel)
}
