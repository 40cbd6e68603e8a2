//! Descriptors a delta transfer holds: one per file whose data is on its way is the whole
//! listing part (up to 4096 files) before the first byte arrives. Alone in its own test binary:
//! it lowers this process's soft RLIMIT_NOFILE.

#![allow(clippy::unwrap_used)]

use blitx_core::BufferPool;
use blitx_core::cancel::Cancel;
use blitx_core::session::SessionParams;
use blitx_core::transport::{MemFaults, PayloadPref, mem_pair};
use blitx_storage::RootDir;
use blitx_storage::local::{PairProgress, run_pair};
use blitx_storage::report::Quiet;
use blitx_storage::source::SourceOptions;
use blitx_storage::target::TargetOptions;
use blitx_storage::testkit::{self, Rng, write_random};

/// Soft descriptor limit for the transfer: generous for what a plain copy of these files needs
/// (threads, pools, a few open files), far below the number of changed files.
const NOFILE: u64 = 256;
const FILES: usize = 600;

/// With `--delta`, a directory of many changed files (each chunked, each with an old copy)
/// copies under an ordinary descriptor limit, as it does without `--delta`.
#[test]
fn many_changed_files_with_delta_fit_an_ordinary_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let mut rng = Rng::new(7);
    for i in 0..FILES {
        let name = format!("f{i:04}");
        write_random(&src.join(&name), 80 << 10, &mut rng);
        let mut old = std::fs::read(src.join(&name)).unwrap();
        old[..4096].fill(1);
        std::fs::write(dst.join(&name), &old).unwrap();
        testkit::set_mtime(&dst.join(&name), 1_500_000_000, 0);
    }
    let old = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(NOFILE), maximum: old.maximum }).unwrap();
    let p = SessionParams {
        chunk_bytes: 1 << 20,
        small_file_bytes_max: 64 << 10,
        bundle_bytes: 256 << 10,
        delta: true,
        ..SessionParams::default()
    };
    let pool = BufferPool::new(16, p.chunk_bytes as usize, false).unwrap();
    let (tx, rx) = mem_pair(pool, PayloadPref::Buffer, p.chunk_bytes, 8, MemFaults::default());
    let source = SourceOptions {
        single: None,
        root: RootDir::open(&src).unwrap(),
        params: p.clone(),
        walk_threads: 2,
        read_threads: 2,
        confine: false,
        privileged_xattrs: true,
        limits: blitx_storage::limits::Limits::none(),
    };
    let target = TargetOptions::new(RootDir::open(&dst).unwrap(), p, 2);
    let r = run_pair(&source, &target, &tx, &rx, &Quiet, &PairProgress::default(), &Cancel::new());
    setrlimit(Resource::Nofile, old).unwrap();
    let (s, t) = r.unwrap();
    assert_eq!((s.error_count, t.error_count), (0, 0), "{:?} {:?}", s.errors, t.errors);
    testkit::compare_trees(&src, &dst).unwrap();
    assert!(t.signature_bytes > 0);
}
