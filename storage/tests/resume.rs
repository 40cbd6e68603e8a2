//! Partial files found on the target: used only as far as both sides hashed the same bytes,
//! never when their journal does not fit, and never when they are not plainly this user's own
//! (a file linked in under a temporary name from elsewhere is left alone).

#![allow(clippy::unwrap_used)]

use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use blitx_core::BufferPool;
use blitx_core::cancel::Cancel;
use blitx_core::manifest::Timestamp;
use blitx_core::session::SessionParams;
use blitx_core::transport::{MemFaults, PayloadPref, mem_pair};
use blitx_session::resume::Journal;
use blitx_storage::local::{PairProgress, run_pair};
use blitx_storage::report::Quiet;
use blitx_storage::source::SourceOptions;
use blitx_storage::target::TargetOptions;
use blitx_storage::testkit::{self, Rng, write_random};
use blitx_storage::{RootDir, SourceReport, TargetReport, fsys};

const CHUNK: u64 = 1 << 20;
const SIZE: u64 = 8 * CHUNK - 1000;

fn params() -> SessionParams {
    SessionParams {
        chunk_bytes: CHUNK as u32,
        small_file_bytes_max: 64 << 10,
        bundle_bytes: 256 << 10,
        ..SessionParams::default()
    }
}

fn copy(src: &Path, dst: &Path) -> (SourceReport, TargetReport) {
    let p = params();
    let pool = BufferPool::new(16, p.chunk_bytes as usize, false).unwrap();
    let (tx, rx) = mem_pair(pool, PayloadPref::FileRegion, p.chunk_bytes, 8, MemFaults::default());
    let source = SourceOptions {
        single: None,
        root: RootDir::open(src).unwrap(),
        params: p.clone(),
        walk_threads: 2,
        read_threads: 2,
        confine: false,
        privileged_xattrs: true,
        limits: blitx_storage::limits::Limits::none(),
    };
    let target = TargetOptions::new(RootDir::open(dst).unwrap(), p, 2);
    let cancel = Cancel::new();
    let r = run_pair(&source, &target, &tx, &rx, &Quiet, &PairProgress::default(), &cancel);
    let (s, t) = r.unwrap();
    assert_eq!((s.error_count, t.error_count), (0, 0), "{:?} {:?}", s.errors, t.errors);
    (s, t)
}

/// `src/big` and an empty target directory.
fn setup(t: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let (src, dst) = (t.join("src"), t.join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    write_random(&src.join("big"), SIZE, &mut Rng::new(11));
    let bytes = std::fs::read(src.join("big")).unwrap();
    (src, dst, bytes)
}

fn mtime(p: &Path) -> Timestamp {
    let m = std::fs::metadata(p).unwrap();
    Timestamp { sec: m.mtime(), nsec: m.mtime_nsec() as u32 }
}

/// Marks `path` as a partial file of `big` in `src` whose journal records `runs`.
fn plant(path: &Path, src: &Path, runs: Vec<(u64, u64)>) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    fsys::mark_temp(f.as_fd());
    let journal = Journal {
        chunk_bytes: CHUNK as u32,
        size_bytes: SIZE,
        mtime: mtime(&src.join("big")),
        saved_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        name: b"big".to_vec(),
        runs,
    };
    fsys::save_journal(f.as_fd(), &journal).unwrap();
}

#[test]
fn a_partial_file_is_used_where_its_chunks_hash_the_same_and_repaired_where_not() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, mut bytes) = setup(t.path());
    // What a crash left: the journal says chunks 0..6 were written, but chunk 2 was damaged
    // since and chunk 4 never reached the disk (zeros).
    bytes[2 * CHUNK as usize + 17] ^= 0xff;
    bytes[4 * CHUNK as usize..5 * CHUNK as usize].fill(0);
    bytes[6 * CHUNK as usize..].fill(0);
    let partial = dst.join(".big.0.0.blit-tmp");
    std::fs::write(&partial, &bytes).unwrap();
    plant(&partial, &src, vec![(0, 6)]);
    let (s, t) = copy(&src, &dst);
    testkit::compare_trees(&src, &dst).unwrap();
    assert!(testkit::temp_files(&dst).is_empty());
    // Chunks 0, 1, 3 and 5 came from the partial file; 2, 4, 6 and 7 over the wire.
    assert_eq!(t.bytes_reused, 4 * CHUNK);
    assert_eq!(s.bytes_reused, 4 * CHUNK);
    assert_eq!(s.bytes_sent, SIZE - 4 * CHUNK);
}

#[test]
fn a_journal_that_does_not_fit_the_file_listed_now_is_not_used() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, bytes) = setup(t.path());
    let partial = dst.join(".big.0.0.blit-tmp");
    std::fs::write(&partial, &bytes).unwrap();
    plant(&partial, &src, vec![(0, 8)]);
    // The source changed since the journal was saved (its mtime).
    let later = mtime(&src.join("big")).sec + 10;
    testkit::set_mtime(&src.join("big"), later, 0);
    let (_, t) = copy(&src, &dst);
    assert_eq!(t.bytes_reused, 0);
    testkit::compare_trees(&src, &dst).unwrap();
    assert!(testkit::temp_files(&dst).is_empty(), "the unusable partial file is removed");
}

#[test]
fn a_file_linked_in_under_a_temporary_name_is_never_taken_over() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, bytes) = setup(t.path());
    // Someone links a file from elsewhere in under a partial file's name, mark and journal
    // included: taken over, it would be written into, chmod'ed and renamed into place.
    let outside = t.path().join("outside");
    std::fs::write(&outside, &bytes).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let partial = dst.join(".big.0.0.blit-tmp");
    std::fs::hard_link(&outside, &partial).unwrap();
    plant(&partial, &src, vec![(0, 8)]);
    let before = std::fs::metadata(&outside).unwrap();
    let (_, t) = copy(&src, &dst);
    assert_eq!(t.bytes_reused, 0, "a file with two names is nobody's partial file");
    testkit::compare_trees(&src, &dst).unwrap();
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), bytes);
    assert_eq!(after.mode(), before.mode());
    assert_ne!(after.ino(), std::fs::metadata(dst.join("big")).unwrap().ino());
}

#[test]
fn an_unmarked_file_with_a_temporary_name_is_a_users_file() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, bytes) = setup(t.path());
    // The journal without the temporary-file mark: not blit's.
    let users = dst.join(".big.0.0.blit-tmp");
    std::fs::write(&users, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&users).unwrap();
    let journal = Journal {
        chunk_bytes: CHUNK as u32,
        size_bytes: SIZE,
        mtime: mtime(&src.join("big")),
        saved_unix_secs: u64::MAX / 2,
        name: b"big".to_vec(),
        runs: vec![(0, 8)],
    };
    fsys::save_journal(f.as_fd(), &journal).unwrap();
    let (_, t) = copy(&src, &dst);
    assert_eq!(t.bytes_reused, 0);
    assert_eq!(std::fs::read(&users).unwrap(), bytes, "a user's file is left alone");
}

/// A scripted source for the target half: the target runs in a thread, listings are sent one
/// by one and each answer is read back, so the test can act on the target's directory between
/// two listing parts.
struct Scripted {
    to_target: crossbeam_channel::Sender<blitx_core::session::SourceMsg>,
    from_target: crossbeam_channel::Receiver<blitx_core::session::TargetMsg>,
    cancel: Cancel,
}

impl Scripted {
    /// Sends a listing part of the root directory and returns the target's answer.
    fn listing(
        &self,
        seq: u64,
        entries: Vec<blitx_core::manifest::Entry>,
        last_part: bool,
    ) -> Option<blitx_core::session::TargetMsg> {
        use blitx_core::session::SourceMsg;
        let dir = blitx_core::RelPath::root();
        self.to_target.send(SourceMsg::Listing { seq, dir, entries, last_part }).ok()?;
        self.from_target.recv_timeout(std::time::Duration::from_secs(10)).ok()
    }
}

/// Runs the target half into `dst` while `script` plays the source; the session is cancelled
/// once the script is done.
fn scripted_target(dst: &Path, script: impl FnOnce(&Scripted)) {
    use blitx_core::manifest::{Entry, EntryKind};
    use blitx_core::session::SourceMsg;
    use blitx_storage::target::run_target;
    let p = params();
    let pool = BufferPool::new(8, p.chunk_bytes as usize, false).unwrap();
    let (_tx, rx) = mem_pair(pool, PayloadPref::Buffer, p.chunk_bytes, 4, MemFaults::default());
    let opts = TargetOptions::new(RootDir::open(dst).unwrap(), p, 2);
    let (to_target, from_source) = crossbeam_channel::bounded(16);
    let (to_source, from_target) = crossbeam_channel::bounded(16);
    let s = Scripted { to_target, from_target, cancel: Cancel::new() };
    let progress = blitx_storage::report::Progress::default();
    std::thread::scope(|scope| {
        let target = scope
            .spawn(|| run_target(&opts, from_source, to_source, &rx, &Quiet, &progress, &s.cancel));
        let root =
            Entry { mode: 0o755, ..Entry::new(0, blitx_core::RelPath::root(), EntryKind::Dir) };
        s.to_target.send(SourceMsg::Root(root)).unwrap();
        script(&s);
        s.cancel.fire();
        let _ = target.join().unwrap();
    });
}

fn file_entry(
    id: u64,
    name: &str,
    size_bytes: u64,
    mtime: Timestamp,
) -> blitx_core::manifest::Entry {
    use blitx_core::manifest::{Entry, EntryKind};
    let path = blitx_core::RelPath::parse(name.as_bytes()).unwrap();
    Entry { size_bytes, mtime, mode: 0o644, ..Entry::new(id, path, EntryKind::File) }
}

/// Found in a listing's first part, a partial file's name is swapped for another file of the
/// same owner before the part that names its file arrives (a user who may rename files in the
/// directory; the source can delay that part as long as it likes). The file now under the
/// partial file's name was never read for a journal: taking it over would hash it for the
/// source (whose `Same` frames would then copy it into the new file, with the mode the source
/// lists) and chmod it. It is left alone.
#[test]
fn a_partial_file_swapped_after_its_journal_was_read_is_not_taken_over() {
    use blitx_core::session::TargetMsg;
    let t = tempfile::tempdir().unwrap();
    let (src, dst, bytes) = setup(t.path());
    let partial = dst.join(".big.0.0.blit-tmp");
    std::fs::write(&partial, &bytes).unwrap();
    plant(&partial, &src, vec![(0, 8)]);
    let secret: Vec<u8> = bytes.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(dst.join("secret"), &secret).unwrap();
    std::fs::set_permissions(dst.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret_ino = std::fs::metadata(dst.join("secret")).unwrap().ino();
    let big_mtime = mtime(&src.join("big"));
    let mut offered = Vec::new();
    scripted_target(&dst, |s| {
        // The first part needs a chunked file: the directory is searched for partial files.
        let first = s.listing(0, vec![file_entry(1, "a", 2 * CHUNK, big_mtime)], false).unwrap();
        assert!(matches!(first, TargetMsg::Need { ref ids, .. } if ids == &[1]), "{first:?}");
        std::fs::rename(dst.join("secret"), &partial).unwrap();
        match s.listing(1, vec![file_entry(2, "big", SIZE, big_mtime)], true).unwrap() {
            TargetMsg::Need { ids, offers, .. } => {
                assert_eq!(ids, vec![2]);
                offered = offers;
            }
            other => panic!("{other:?}"),
        }
    });
    assert!(
        offered.is_empty(),
        "the swapped-in file was offered as big's partial file: {offered:?}"
    );
    let now = std::fs::metadata(&partial).unwrap();
    assert_eq!(now.ino(), secret_ino, "the swapped-in file keeps its name");
    assert_eq!(now.mode() & 0o7777, 0o600, "the swapped-in file was chmod'ed");
    assert_eq!(std::fs::read(&partial).unwrap(), secret);
}

/// A source that lists a file under an id it used before (a protocol violation, found only
/// once the file is wanted) ends the session; the partial file taken over for it by then is
/// not left under this process's temporary name, which no later session of a daemon (the
/// same process) would ever remove or take over again.
#[test]
fn a_partial_file_taken_over_for_a_refused_file_is_not_left_under_this_process_name() {
    use blitx_core::session::TargetMsg;
    let t = tempfile::tempdir().unwrap();
    let (src, dst, bytes) = setup(t.path());
    let partial = dst.join(".big.0.0.blit-tmp");
    std::fs::write(&partial, &bytes).unwrap();
    plant(&partial, &src, vec![(0, 8)]);
    let big_mtime = mtime(&src.join("big"));
    scripted_target(&dst, |s| {
        let first = s.listing(0, vec![file_entry(1, "a", 2 * CHUNK, big_mtime)], false).unwrap();
        assert!(matches!(first, TargetMsg::Need { ref ids, .. } if ids == &[1]), "{first:?}");
        // `big` under the id `a` has: refused.
        let second = s.listing(1, vec![file_entry(1, "big", SIZE, big_mtime)], true);
        assert!(second.is_none(), "a repeated id was answered: {second:?}");
    });
    let ours = std::process::id();
    let left: Vec<_> = testkit::temp_files(&dst)
        .into_iter()
        .filter(|p| fsys::temp_pid(p.file_name().unwrap().as_encoded_bytes()) == Some(ours))
        .collect();
    assert!(left.is_empty(), "left under this process's name: {left:?}");
}
