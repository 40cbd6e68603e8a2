//! The transport conformance suite: the same transfers, run over every backend.
//!
//! A backend provides a [`Harness`] that makes connected sender/receiver pairs; [`run_suite`]
//! copies real trees through it with the real source and target halves and compares the result
//! byte for byte and by metadata. Scenarios: one large file, many small files, empty files and
//! directories, a mixed tree, cancellation mid-way, a peer that disappears, a file that changes
//! while it is read, a chunk damaged after its checksum was computed, and a rate-limited copy
//! (paced at the source and at the target). A backend is done when
//! it passes all of them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blitx_core::BufferPool;
use blitx_core::cancel::Cancel;
use blitx_core::frame::FrameKind;
use blitx_core::session::SessionParams;
use blitx_core::transport::{
    Frame, FrameReceiver, FrameSender, Payload, PayloadPref, TransportError, TransportStats,
};

use crate::local::{LocalError, PairProgress, run_pair};
use crate::report::{Quiet, SourceReport, TargetReport};
use crate::root::RootDir;
use crate::source::SourceOptions;
use crate::target::TargetOptions;
use crate::testkit;

pub type Pair = (Box<dyn FrameSender>, Box<dyn FrameReceiver>);

/// What a backend supplies to the suite.
pub trait Harness {
    fn name(&self) -> String;
    /// A connected pair able to carry frames of `params.chunk_bytes`.
    fn pair(&self, params: &SessionParams) -> Pair;
    /// A pair whose link breaks (the peer vanishes) after roughly `frames` frames.
    fn breaking_pair(&self, params: &SessionParams, frames: u64) -> Pair;
}

fn params() -> SessionParams {
    SessionParams {
        chunk_bytes: 1 << 20,
        small_file_bytes_max: 64 << 10,
        bundle_bytes: 256 << 10,
        ..SessionParams::default()
    }
}

fn transfer(
    h: &dyn Harness,
    pair: Pair,
    src: &Path,
    dst: &Path,
    params: &SessionParams,
    cancel: &Cancel,
) -> Result<(SourceReport, TargetReport), LocalError> {
    let source = SourceOptions {
        single: None,
        root: RootDir::open(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())),
        params: params.clone(),
        walk_threads: 2,
        read_threads: 2,
        confine: false,
        privileged_xattrs: true,
        limits: crate::limits::Limits::none(),
    };
    let target = TargetOptions::new(
        RootDir::open(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display())),
        params.clone(),
        2,
    );
    let (tx, rx) = pair;
    let r = run_pair(
        &source,
        &target,
        tx.as_ref(),
        rx.as_ref(),
        &Quiet,
        &PairProgress::default(),
        cancel,
    );
    if let Ok((s, t)) = &r {
        assert_eq!(t.error_count, 0, "{}: target errors {:?}", h.name(), t.errors);
        assert_eq!(s.error_count, 0, "{}: source errors {:?}", h.name(), s.errors);
    }
    r
}

/// Temporary files under `root` other than partial files kept for resuming (named for process
/// 0, with a journal that decodes).
fn unkept_temps(root: &Path) -> Vec<std::path::PathBuf> {
    testkit::temp_files(root)
        .into_iter()
        .filter(|p| {
            let kept = p
                .file_name()
                .is_some_and(|n| crate::fsys::temp_pid(n.as_encoded_bytes()) == Some(0));
            let journal = std::fs::File::open(root.join(p))
                .is_ok_and(|f| crate::fsys::load_journal(std::os::fd::AsFd::as_fd(&f)).is_some());
            !(kept && journal)
        })
        .collect()
}

/// After an interrupted transfer (`first`): only resumable partial files are left, and the
/// same transfer again completes the tree, taking the chunks they hold from them.
fn resumes(h: &dyn Harness, src: &Path, dst: &Path, what: &str) {
    let left = unkept_temps(dst);
    assert!(left.is_empty(), "{}: {what}: temp files left that are not kept: {left:?}", h.name());
    let kept = testkit::temp_files(dst).len();
    eprintln!("{}: {what}: {kept} partial files kept", h.name());
    let p = params();
    let (s, t) = transfer(h, h.pair(&p), src, dst, &p, &Cancel::new())
        .unwrap_or_else(|e| panic!("{}: {what}: the resumed transfer failed: {e:?}", h.name()));
    testkit::compare_trees(src, dst)
        .unwrap_or_else(|e| panic!("{}: {what}: trees differ after resuming: {e}", h.name()));
    assert!(testkit::temp_files(dst).is_empty(), "{}: {what}: temp files after resuming", h.name());
    assert_eq!(s.bytes_reused, t.bytes_reused, "{}: {what}: both halves count reuse", h.name());
    eprintln!("{}: {what}: {} bytes reused", h.name(), t.bytes_reused);
    assert!(
        kept == 0 || t.bytes_reused > 0,
        "{}: {what}: {kept} partial files kept, nothing reused",
        h.name()
    );
}

fn copy_and_compare(h: &dyn Harness, build: impl Fn(&Path), what: &str) {
    let src = tempdir();
    let dst = tempdir();
    build(src.path());
    let p = params();
    let cancel = Cancel::new();
    transfer(h, h.pair(&p), src.path(), dst.path(), &p, &cancel)
        .unwrap_or_else(|e| panic!("{}: {what}: transfer failed: {e:?}", h.name()));
    testkit::compare_trees(src.path(), dst.path())
        .unwrap_or_else(|e| panic!("{}: {what}: trees differ: {e}", h.name()));
    assert!(testkit::temp_files(dst.path()).is_empty());
}

fn tempdir() -> tempfile::TempDir {
    let base = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    tempfile::Builder::new()
        .prefix("blit-conf-")
        .tempdir_in(base)
        .unwrap_or_else(|e| panic!("tempdir: {e}"))
}

pub fn large_file(h: &dyn Harness) {
    copy_and_compare(
        h,
        |root| {
            let mut rng = testkit::Rng::new(1);
            testkit::write_random(&root.join("large.bin"), 24 * 1024 * 1024 + 4321, &mut rng);
        },
        "large file",
    );
}

pub fn many_small_files(h: &dyn Harness) {
    copy_and_compare(
        h,
        |root| testkit::mixed_tree(root, 2, 2000, 1, 16 * 1024),
        "many small files",
    );
}

pub fn empty_files(h: &dyn Harness) {
    copy_and_compare(
        h,
        |root| {
            for d in 0..5 {
                let dir = root.join(format!("empty-dir-{d}/inner"));
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
                for f in 0..50 {
                    std::fs::write(dir.join(format!("empty-{f}")), b"")
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            }
        },
        "empty files",
    );
}

pub fn mixed(h: &dyn Harness) {
    copy_and_compare(
        h,
        |root| {
            testkit::mixed_tree(root, 3, 300, 1, 4 << 20);
            testkit::edge_tree(&root.join("edge"));
        },
        "mixed tree",
    );
}

/// Cancels once data is flowing: both halves stop with an error and no temp file remains.
pub fn cancel_midway(h: &dyn Harness) {
    let src = tempdir();
    let dst = tempdir();
    testkit::mixed_tree(src.path(), 4, 200, 64 << 10, 2 << 20);
    // Resuming off: nothing is left.
    let p = SessionParams { resume: false, ..params() };
    let (r, late) = cancelled_transfer(h, src.path(), dst.path(), &p);
    // Every wait of both halves is woken by the cancel: the transfer ends at once, not after a
    // tick or a timeout (the bound is generous for loaded CI machines).
    assert!(late < Duration::from_secs(2), "{}: ended {late:?} after the cancel", h.name());
    assert!(r.is_err(), "{}: a cancelled transfer must not report success", h.name());
    assert!(
        testkit::temp_files(dst.path()).is_empty(),
        "{}: temp files left after cancel (--no-resume)",
        h.name()
    );
    // Resuming on (the default): cancelled once data is flowing, the partial files stay and
    // the next transfer takes what they hold.
    let dst = tempdir();
    let (r, _) = cancelled_transfer(h, src.path(), dst.path(), &params());
    assert!(r.is_err(), "{}: a cancelled transfer must not report success", h.name());
    resumes(h, src.path(), dst.path(), "cancelled");
}

/// A transfer cancelled as soon as the first files landed in `dst` (or after a while
/// regardless); with how long it ran past the cancel.
fn cancelled_transfer(
    h: &dyn Harness,
    src: &Path,
    dst: &Path,
    p: &SessionParams,
) -> (Result<(SourceReport, TargetReport), LocalError>, Duration) {
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    let dst_path = dst.to_path_buf();
    let watcher = std::thread::spawn(move || {
        for _ in 0..400 {
            if testkit::list(&dst_path).map(|l| l.len() > 3).unwrap_or(false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        c2.fire();
        std::time::Instant::now()
    });
    let r = transfer(h, h.pair(p), src, dst, p, &cancel);
    let returned = std::time::Instant::now();
    let fired = watcher.join().unwrap_or_else(|_| panic!("{}: the watcher panicked", h.name()));
    (r, returned.saturating_duration_since(fired))
}

/// The peer vanishes mid-transfer: an error, never a hang or a success; only resumable partial
/// files are left, and the same transfer again completes from them.
pub fn peer_disappears(h: &dyn Harness) {
    let src = tempdir();
    let dst = tempdir();
    testkit::mixed_tree(src.path(), 5, 100, 256 << 10, 4 << 20);
    let p = params();
    let cancel = Cancel::new();
    let r = transfer(h, h.breaking_pair(&p, 20), src.path(), dst.path(), &p, &cancel);
    assert!(r.is_err(), "{}: a broken link must fail the transfer", h.name());
    resumes(h, src.path(), dst.path(), "the peer vanished");
}

/// What [`Meddler`] does to the first chunk of a chunked file that it sends.
enum Meddle {
    /// Flips a byte of its payload after the reader computed the checksum (the sender asks for
    /// buffer payloads and checksums, whatever the backend prefers).
    Corrupt,
    /// Appends to this file (the only chunked file of the tree) while it is being read.
    Grow(std::path::PathBuf),
}

/// A backend's sender with one frame meddled with.
struct Meddler {
    inner: Box<dyn FrameSender>,
    what: Meddle,
    done: AtomicBool,
}

impl FrameSender for Meddler {
    fn payload_pref(&self) -> PayloadPref {
        match self.what {
            Meddle::Corrupt => PayloadPref::Buffer,
            Meddle::Grow(_) => self.inner.payload_pref(),
        }
    }
    fn pool(&self) -> &BufferPool {
        self.inner.pool()
    }
    fn frame_bytes_max(&self) -> u32 {
        self.inner.frame_bytes_max()
    }
    fn needs_checksums(&self) -> bool {
        true
    }
    fn send(&self, mut frame: Frame) -> Result<(), TransportError> {
        if frame.header.kind == FrameKind::Chunk
            && frame.header.len_bytes > 0
            && !self.done.swap(true, Ordering::AcqRel)
        {
            match (&self.what, &mut frame.payload) {
                (Meddle::Corrupt, Payload::Buffer(lease)) => {
                    let at = lease.len() / 2;
                    lease.full_mut()[at] ^= 0x20;
                }
                (Meddle::Corrupt, _) => panic!("asked for buffers, got {:?}", frame.payload),
                (Meddle::Grow(path), _) => {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(path)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    f.write_all(b"grown while read").unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
        self.inner.send(frame)
    }
    fn finish(&self) -> Result<(), TransportError> {
        self.inner.finish()
    }
    fn abort(&self) {
        self.inner.abort();
    }
    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}

/// Copies a tree of small files and one chunked file through a meddled sender; the transfer
/// must complete, with the chunked file reported (by the side named in the returned reports)
/// and not committed, and every other file copied.
fn meddled(h: &dyn Harness, what: impl FnOnce(&Path) -> Meddle) -> (Vec<String>, Vec<String>) {
    let src = tempdir();
    let dst = tempdir();
    testkit::mixed_tree(&src.path().join("small"), 6, 40, 1, 16 << 10);
    let mut rng = testkit::Rng::new(9);
    testkit::write_random(&src.path().join("big.bin"), 3 * (1 << 20) + 1234, &mut rng);
    let p = params();
    let (inner, rx) = h.pair(&p);
    let tx =
        Meddler { inner, what: what(&src.path().join("big.bin")), done: AtomicBool::new(false) };
    let source = SourceOptions {
        single: None,
        root: RootDir::open(src.path()).unwrap_or_else(|e| panic!("{e}")),
        params: p.clone(),
        walk_threads: 2,
        read_threads: 2,
        confine: false,
        privileged_xattrs: true,
        limits: crate::limits::Limits::none(),
    };
    let target = TargetOptions::new(
        RootDir::open(dst.path()).unwrap_or_else(|e| panic!("{e}")),
        p.clone(),
        2,
    );
    let cancel = Cancel::new();
    let (s, t) =
        run_pair(&source, &target, &tx, rx.as_ref(), &Quiet, &PairProgress::default(), &cancel)
            .unwrap_or_else(|e| panic!("{}: one bad file failed the transfer: {e:?}", h.name()));
    assert!(!dst.path().join("big.bin").exists(), "{}: the bad file was committed", h.name());
    assert!(testkit::temp_files(dst.path()).is_empty(), "{}: temp files left", h.name());
    testkit::compare_trees(&src.path().join("small"), &dst.path().join("small"))
        .unwrap_or_else(|e| panic!("{}: the other files: {e}", h.name()));
    let msgs = |errors: &[crate::report::FileError]| -> Vec<String> {
        errors.iter().map(|e| format!("{}: {}", e.path, e.message)).collect()
    };
    assert_eq!(s.error_count as usize, s.errors.len());
    assert_eq!(t.error_count as usize, t.errors.len());
    (msgs(&s.errors), msgs(&t.errors))
}

/// A file that grows while it is read is reported by the source and never committed, whatever
/// form its payload took; the rest of the transfer goes on.
pub fn file_changed_while_read(h: &dyn Harness) {
    let (source, target) = meddled(h, |big| Meddle::Grow(big.to_path_buf()));
    assert!(
        source.len() == 1 && source[0].starts_with("big.bin") && source[0].contains("changed"),
        "{}: source errors {source:?}",
        h.name()
    );
    assert!(
        target.len() == 1 && target[0].contains("source: changed"),
        "{}: target errors {target:?}",
        h.name()
    );
}

/// A chunk damaged after its checksum was computed is detected by the target, which discards
/// the file and names the damage (the source read it unchanged); the rest goes on.
pub fn corrupted_chunk(h: &dyn Harness) {
    let (source, target) = meddled(h, |_| Meddle::Corrupt);
    assert!(source.is_empty(), "{}: source errors {source:?}", h.name());
    assert!(
        target.len() == 1
            && target[0].starts_with("big.bin")
            && target[0].contains("failed its checksum: corrupted in transit"),
        "{}: target errors {target:?}",
        h.name()
    );
}

/// A memory session (`--mem`): generated chunks (3½ of them) arrive verified and are counted,
/// nothing is created on either side; with one chunk damaged on the way, the sink names it and
/// counts no file.
pub fn memory_session(h: &dyn Harness) {
    let (src, dst) = (tempdir(), tempdir());
    let mut p = params();
    p.small_file_bytes_max = 0;
    let n = 3 * u64::from(p.chunk_bytes) + u64::from(p.chunk_bytes) / 2;
    p.mem_bytes = Some(n);
    for corrupt in [false, true] {
        let (inner, rx) = h.pair(&p);
        let tx: Box<dyn FrameSender> = if corrupt {
            Box::new(Meddler { inner, what: Meddle::Corrupt, done: AtomicBool::new(false) })
        } else {
            inner
        };
        let source = SourceOptions {
            single: None,
            root: RootDir::open(src.path()).unwrap_or_else(|e| panic!("{e}")),
            params: p.clone(),
            walk_threads: 1,
            read_threads: 2,
            confine: false,
            privileged_xattrs: true,
            limits: crate::limits::Limits::none(),
        };
        let root = RootDir::open(dst.path()).unwrap_or_else(|e| panic!("{e}"));
        let target = TargetOptions::new(root, p.clone(), 2);
        let cancel = Cancel::new();
        let progress = PairProgress::default();
        let (s, t) =
            run_pair(&source, &target, tx.as_ref(), rx.as_ref(), &Quiet, &progress, &cancel)
                .unwrap_or_else(|e| panic!("{}: memory session failed: {e:?}", h.name()));
        let name = h.name();
        assert!(s.errors.is_empty(), "{name}: source errors {:?}", s.errors);
        if corrupt {
            assert_eq!(t.files_copied, 0, "{name}: a damaged chunk was accepted");
            assert!(
                t.errors.len() == 1 && t.errors[0].message.contains("corrupted in transit"),
                "{name}: {:?}",
                t.errors
            );
        } else {
            assert_eq!((t.files_copied, t.bytes_copied), (1, n), "{name}: {:?}", t.errors);
            assert_eq!(s.bytes_sent, n, "{name}");
        }
        let left = std::fs::read_dir(dst.path()).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{name}: the sink created files");
    }
}

/// Delta (`SessionParams::delta`): the target holds an old copy of a large file — a few 4 KiB
/// blocks rewritten, 64 bytes inserted near the start. The new file arrives whole and identical
/// while the chunks travel as recipes against the old copy: a small part of it crosses.
pub fn delta_against_an_old_copy(h: &dyn Harness) {
    let (src, dst) = (tempdir(), tempdir());
    let size = 6 << 20;
    let mut rng = testkit::Rng::new(18);
    testkit::write_random(&src.path().join("big"), size, &mut rng);
    let mut old = std::fs::read(src.path().join("big")).expect("the source file just written");
    for block in [3usize, 200, 777, 1400] {
        old[block * 4096..block * 4096 + 4096].fill(block as u8);
    }
    old.splice(1000..1000, [9u8; 64]);
    std::fs::write(dst.path().join("big"), &old).expect("the old copy");
    testkit::set_mtime(&dst.path().join("big"), 1_500_000_000, 0);
    let p = SessionParams { delta: true, ..params() };
    let (s, t) = transfer(h, h.pair(&p), src.path(), dst.path(), &p, &Cancel::new())
        .unwrap_or_else(|e| panic!("{}: delta: transfer failed: {e:?}", h.name()));
    testkit::compare_trees(src.path(), dst.path())
        .unwrap_or_else(|e| panic!("{}: delta: trees differ: {e}", h.name()));
    assert!(testkit::temp_files(dst.path()).is_empty());
    assert_eq!(t.files_copied, 1);
    assert!(t.signature_bytes > 0, "{}: no signature was sent", h.name());
    assert!(
        s.bytes_sent < size / 8,
        "{}: {} of {size} bytes crossed with delta",
        h.name(),
        s.bytes_sent
    );
}

/// `--bwlimit` over this backend: the source's frames wait for the session's bucket before the
/// transport takes them, and a target with a cap (a daemon's) takes frames only as its bucket
/// allows, which closes the transport's window (TCP stops reading, RDMA returns credits later).
/// Either way the tree arrives whole, and no sooner than its bytes allow at the rate (less one
/// burst): a lower bound, which load cannot break.
pub fn rate_limited(h: &dyn Harness) {
    const RATE_BYTES_PER_S: u64 = 20_000_000;
    let size = 8_000_000u64;
    // Bytes at the rate, less the bucket's burst (1/20 s) and a margin for the clock.
    let at_least = Duration::from_millis(300);
    let src = tempdir();
    testkit::write_random(&src.path().join("big"), size, &mut testkit::Rng::new(65));
    testkit::mixed_tree(&src.path().join("small"), 66, 20, 1, 20_000);
    for side in ["source", "target"] {
        let dst = tempdir();
        let mut p = params();
        let mut target = TargetOptions::new(
            RootDir::open(dst.path()).unwrap_or_else(|e| panic!("{}: {e}", dst.path().display())),
            p.clone(),
            2,
        );
        if side == "source" {
            p.bwlimit_bytes_per_s = Some(RATE_BYTES_PER_S);
        } else {
            target.limits.pacer = Some(blitx_core::rate::Pacer::new(RATE_BYTES_PER_S));
        }
        let source = SourceOptions {
            single: None,
            privileged_xattrs: true,
            root: RootDir::open(src.path()).unwrap_or_else(|e| panic!("source root: {e}")),
            params: p.clone(),
            walk_threads: 2,
            read_threads: 2,
            confine: false,
            limits: crate::limits::Limits::none(),
        };
        let (tx, rx) = h.pair(&p);
        let started = std::time::Instant::now();
        let (_, t) = run_pair(
            &source,
            &target,
            tx.as_ref(),
            rx.as_ref(),
            &Quiet,
            &PairProgress::default(),
            &Cancel::new(),
        )
        .unwrap_or_else(|e| panic!("{}: paced at the {side}: transfer failed: {e:?}", h.name()));
        let took = started.elapsed();
        assert_eq!(t.error_count, 0, "{}: paced at the {side}: {:?}", h.name(), t.errors);
        testkit::compare_trees(src.path(), dst.path())
            .unwrap_or_else(|e| panic!("{}: paced at the {side}: trees differ: {e}", h.name()));
        assert!(
            took >= at_least,
            "{}: {size} bytes paced at {RATE_BYTES_PER_S} bytes/s at the {side} took {took:?}",
            h.name()
        );
        eprintln!("{}: paced at the {side}: {size} bytes in {took:?}", h.name());
    }
}

/// A single-file session (`blit xfer FILE TARGET`): `name` of `src` lands in `dst` as
/// `new_name`.
fn transfer_single(
    pair: Pair,
    src: &Path,
    dst: &Path,
    names: (&str, Option<&str>),
    params: &SessionParams,
) -> Result<(SourceReport, TargetReport), LocalError> {
    let source = SourceOptions {
        single: Some(names.0.as_bytes().to_vec()),
        privileged_xattrs: true,
        root: RootDir::open(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())),
        params: params.clone(),
        walk_threads: 2,
        read_threads: 2,
        confine: true,
        limits: crate::limits::Limits::none(),
    };
    let mut target = TargetOptions::new(
        RootDir::open(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display())),
        params.clone(),
        2,
    );
    target.single =
        Some(crate::target::SingleFile { name: names.1.map(|n| n.as_bytes().to_vec()) });
    let (tx, rx) = pair;
    run_pair(
        &source,
        &target,
        tx.as_ref(),
        rx.as_ref(),
        &Quiet,
        &PairProgress::default(),
        &Cancel::new(),
    )
}

/// One file of a directory, renamed on the way, with `--mirror`: nothing else of the source
/// is sent, nothing else of the target's directory is touched (its metadata neither), a second
/// run sends nothing, and a run broken mid-way resumes from its partial file.
pub fn single_file(h: &dyn Harness) {
    let src = tempdir();
    let dst = tempdir();
    let mut rng = testkit::Rng::new(19);
    let size = 12 * 1024 * 1024 + 77;
    testkit::write_random(&src.path().join("one.bin"), size, &mut rng);
    testkit::write_random(&src.path().join("other"), 1000, &mut rng);
    std::fs::write(dst.path().join("sibling"), b"stays").unwrap_or_else(|e| panic!("{e}"));
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(p).unwrap_or_else(|e| panic!("{e}")).permissions(),
        )
    };
    std::fs::set_permissions(dst.path(), std::os::unix::fs::PermissionsExt::from_mode(0o751))
        .unwrap_or_else(|e| panic!("{e}"));
    let p = SessionParams { mirror: true, ..params() };
    let names = ("one.bin", Some("two.bin"));
    // Broken mid-way first: the partial file is kept under the target's name.
    let broken = transfer_single(h.breaking_pair(&p, 4), src.path(), dst.path(), names, &p);
    assert!(broken.is_err(), "{}: a broken link must fail the transfer", h.name());
    let (s, t) = transfer_single(h.pair(&p), src.path(), dst.path(), names, &p)
        .unwrap_or_else(|e| panic!("{}: single file: {e:?}", h.name()));
    assert_eq!(t.error_count, 0, "{}: {:?}", h.name(), t.errors);
    assert_eq!((t.files_copied, t.deleted), (1, 0), "{}", h.name());
    assert_eq!(s.bytes_reused, t.bytes_reused, "{}: both halves count reuse", h.name());
    let copied = std::fs::read(dst.path().join("two.bin")).unwrap_or_else(|e| panic!("{e}"));
    let original = std::fs::read(src.path().join("one.bin")).unwrap_or_else(|e| panic!("{e}"));
    assert!(copied == original, "{}: the single file differs", h.name());
    let mut names_left: Vec<String> = std::fs::read_dir(dst.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    names_left.sort();
    assert_eq!(names_left, ["sibling", "two.bin"], "{}", h.name());
    assert_eq!(std::fs::read(dst.path().join("sibling")).ok().as_deref(), Some(&b"stays"[..]));
    assert_eq!(
        mode(dst.path()) & 0o7777,
        0o751,
        "{}: the target directory's mode changed",
        h.name()
    );
    // Quick check: nothing to send the second time.
    let (_, t) = transfer_single(h.pair(&p), src.path(), dst.path(), names, &p)
        .unwrap_or_else(|e| panic!("{}: single file again: {e:?}", h.name()));
    assert_eq!(t.files_copied, 0, "{}: a file up to date was sent again", h.name());
    // A directory where a file was named: the source refuses, nothing lands.
    std::fs::create_dir(src.path().join("d")).unwrap_or_else(|e| panic!("{e}"));
    let r = transfer_single(h.pair(&p), src.path(), dst.path(), ("d", None), &p);
    assert!(r.is_err(), "{}: a directory sent as a single file", h.name());
    assert!(!dst.path().join("d").exists());
}

/// Runs every scenario against one backend.
pub fn run_suite(h: &dyn Harness) {
    large_file(h);
    many_small_files(h);
    empty_files(h);
    mixed(h);
    cancel_midway(h);
    peer_disappears(h);
    file_changed_while_read(h);
    corrupted_chunk(h);
    memory_session(h);
    delta_against_an_old_copy(h);
    rate_limited(h);
    single_file(h);
}
