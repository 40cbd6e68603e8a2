//! `blit xfer FILE TARGET`: one regular file, locally, pushed to and pulled from a daemon on
//! loopback, with cp's and rsync's placement (TARGET a directory: TARGET/NAME; otherwise the
//! file's new name, whose directory must exist), the quick check, `--mirror` that touches no
//! sibling, and the confinement of the daemon's side.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use blitx_storage::testkit::{Rng, temp_files, write_random};

const BLIT: &str = env!("CARGO_BIN_EXE_blit");

/// A daemon process, killed on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(root: &Path, extra: &[&str]) -> Daemon {
        let mut c = Command::new(BLIT);
        c.arg("daemon").arg("--root").arg(root).args(["--listen", "127.0.0.1:0"]).args(extra);
        c.stderr(Stdio::piped()).stdout(Stdio::null()).env_remove("RUST_LOG");
        let mut child = c.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("daemon exited before listening").unwrap();
            if let Some(a) = line.strip_prefix("blit daemon listening on ") {
                break a.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Daemon { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("blit://{}/{}", self.addr, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xfer(src: &str, dst: &str, extra: &[&str]) -> Output {
    Command::new(BLIT)
        .args(["xfer", src, dst, "--no-progress", "--json"])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Fails with exit code 1 and `needle` in its message.
fn fails(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// A source directory with a chunked file `big.bin` (3 chunks of 1 MiB and a bit), a small
/// file `small` and a sibling that must never travel.
fn source(root: &Path) -> std::path::PathBuf {
    let src = root.join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = Rng::new(7);
    write_random(&src.join("big.bin"), 3 * (1 << 20) + 123, &mut rng);
    std::fs::write(src.join("small"), b"small file").unwrap();
    std::fs::write(src.join("not-sent"), b"x").unwrap();
    std::fs::set_permissions(src.join("small"), std::fs::Permissions::from_mode(0o640)).unwrap();
    src
}

fn same(a: &Path, b: &Path) {
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{a:?} vs {b:?}");
    let (ma, mb) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    assert_eq!(ma.permissions().mode(), mb.permissions().mode());
    assert_eq!(ma.modified().unwrap(), mb.modified().unwrap());
}

const CHUNKS: [&str; 2] = ["--chunk-size", "1M"];

#[test]
fn local_file_lands_like_cp_and_rsync() {
    let t = tempfile::tempdir().unwrap();
    let src = source(t.path());
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("sibling"), b"keep").unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o750)).unwrap();
    let big = s(&src.join("big.bin")).to_string();
    // Into an existing directory, under its own name; then again: nothing to copy.
    let j = ok(&xfer(&big, s(&dst), &CHUNKS));
    assert_eq!(j["files"], 1, "{j}");
    same(&src.join("big.bin"), &dst.join("big.bin"));
    let j = ok(&xfer(&big, s(&dst), &CHUNKS));
    assert_eq!(j["files"], 0, "{j}");
    // Under a new name, with --mirror: the sibling, and the directory's mode, stay.
    let small = s(&src.join("small")).to_string();
    let j = ok(&xfer(&small, s(&dst.join("renamed")), &["--mirror"]));
    assert_eq!((j["files"].as_u64(), j["deleted"].as_u64()), (Some(1), Some(0)), "{j}");
    same(&src.join("small"), &dst.join("renamed"));
    assert_eq!(names(&dst), ["big.bin", "renamed", "sibling"]);
    assert_eq!(std::fs::metadata(&dst).unwrap().permissions().mode() & 0o7777, 0o750);
    // An existing file is replaced; a symlink at the name is replaced, never written through.
    let outside = t.path().join("outside");
    std::fs::write(&outside, b"untouched").unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("link")).unwrap();
    ok(&xfer(&small, s(&dst.join("link")), &[]));
    assert!(std::fs::symlink_metadata(dst.join("link")).unwrap().file_type().is_file());
    assert_eq!(std::fs::read(&outside).unwrap(), b"untouched");
    // A trailing slash names a directory, made if missing.
    ok(&xfer(&small, &format!("{}/", s(&dst.join("made"))), &[]));
    same(&src.join("small"), &dst.join("made/small"));
    // A dry run changes nothing.
    let j = ok(&xfer(&small, s(&dst.join("dry")), &["--dry-run"]));
    assert_eq!(j["files"], 1);
    assert!(!dst.join("dry").exists());
    assert!(temp_files(&dst).is_empty());
}

#[test]
fn local_bad_single_files_are_clear_errors_and_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = source(t.path());
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let small = s(&src.join("small")).to_string();
    fails(&xfer(&small, s(&dst.join("missing/new")), &[]), "does not exist");
    assert!(!dst.join("missing").exists());
    fails(&xfer(&small, &small, &[]), "are the same file");
    fails(&xfer(&small, s(&src), &[]), "are the same file");
    let fifo = src.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    fails(&xfer(s(&fifo), s(&dst), &[]), "is a special file");
    fails(&xfer(s(&src.join("nothing")), s(&dst), &[]), "cannot read SOURCE");
    assert!(names(&dst).is_empty());
}

#[test]
fn push_and_pull_one_file() {
    let t = tempfile::tempdir().unwrap();
    let src = source(t.path());
    let root = t.path().join("export");
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/sibling"), b"keep").unwrap();
    let d = Daemon::start(&root, &[]);
    let big = s(&src.join("big.bin")).to_string();
    let small = s(&src.join("small")).to_string();
    // Push into a directory, then under a new name (with --mirror: the sibling stays).
    let j = ok(&xfer(&big, &d.url("dir"), &CHUNKS));
    assert_eq!(j["files"], 1, "{j}");
    same(&src.join("big.bin"), &root.join("dir/big.bin"));
    let j = ok(&xfer(&big, &d.url("dir"), &CHUNKS));
    assert_eq!(j["files"], 0, "a second push copies nothing: {j}");
    ok(&xfer(&small, &d.url("dir/renamed"), &["--mirror"]));
    same(&src.join("small"), &root.join("dir/renamed"));
    assert_eq!(names(&root.join("dir")), ["big.bin", "renamed", "sibling"]);
    // Into the export root itself.
    ok(&xfer(&small, &d.url(""), &[]));
    same(&src.join("small"), &root.join("small"));
    // Pull into a directory, then under a new name; again: nothing to copy.
    let local = t.path().join("local");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("mine"), b"keep").unwrap();
    let j = ok(&xfer(&d.url("dir/big.bin"), s(&local), &CHUNKS));
    assert_eq!(j["files"], 1, "{j}");
    same(&src.join("big.bin"), &local.join("big.bin"));
    let j = ok(&xfer(&d.url("dir/big.bin"), s(&local), &CHUNKS));
    assert_eq!(j["files"], 0, "{j}");
    ok(&xfer(&d.url("dir/renamed"), s(&local.join("again")), &["--mirror"]));
    same(&src.join("small"), &local.join("again"));
    assert_eq!(names(&local), ["again", "big.bin", "mine"]);
    // A pull into a missing directory with a trailing slash makes it.
    ok(&xfer(&d.url("small"), &format!("{}/", s(&t.path().join("new"))), &[]));
    same(&src.join("small"), &t.path().join("new/small"));
    assert!(temp_files(&root).is_empty() && temp_files(&local).is_empty());
}

#[test]
fn daemon_side_of_a_single_file_stays_confined() {
    let t = tempfile::tempdir().unwrap();
    let src = source(t.path());
    let root = t.path().join("export");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("dir/file-link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("dir/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let d = Daemon::start(&root, &[]);
    let small = s(&src.join("small")).to_string();
    let local = t.path().join("local");
    std::fs::create_dir(&local).unwrap();
    // Pulls: through a symlinked directory, of a symlink, of a FIFO, of `..`: refused.
    for path in ["escape/secret", "dir/file-link", "dir/fifo", "../outside/secret", "missing"] {
        let out = xfer(&d.url(path), s(&local), &[]);
        assert_ne!(out.status.code(), Some(0), "{path}: {}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(names(&local).is_empty());
    // Pushes: through a symlinked directory, into a missing directory: refused; onto a
    // symlink (to a file or a directory): the symlink is replaced, never followed.
    for path in ["escape/new", "escape/secret", "missing/new"] {
        let out = xfer(&small, &d.url(path), &[]);
        assert_ne!(out.status.code(), Some(0), "{path}");
    }
    assert!(!root.join("missing").exists());
    for link in ["dir/file-link", "escape"] {
        ok(&xfer(&small, &d.url(link), &[]));
        assert!(std::fs::symlink_metadata(root.join(link)).unwrap().is_file(), "{link}");
    }
    assert_eq!(names(&outside), ["secret"]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    // A read-only daemon refuses a push of one file too.
    let ro = Daemon::start(&root, &["--read-only"]);
    let out = xfer(&small, &ro.url("dir"), &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!root.join("dir/small").exists());
}

// ---- --remove-source-files (a move)

/// A tree with two files up to date at the target already and the rest new.
fn move_tree(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = root.join("msrc");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    let mut rng = Rng::new(3);
    write_random(&src.join("big.bin"), 2 * (1 << 20) + 5, &mut rng);
    for n in ["a", "sub/b", "sub/deeper/c", "same"] {
        std::fs::write(src.join(n), n.as_bytes()).unwrap();
    }
    let dst = root.join("mdst");
    std::fs::create_dir(&dst).unwrap();
    (src, dst)
}

/// What is left below `dir`, as relative paths (directories end with `/`).
fn left(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

const MOVE: &str = "--remove-source-files";

#[test]
fn local_move_removes_files_committed_or_up_to_date_and_keeps_directories() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = move_tree(t.path());
    // "same" is up to date at the target already: removed too (rsync does the same).
    ok(&xfer(s(&src.join("same")), s(&dst), &[]));
    // A dry run removes nothing.
    ok(&xfer(s(&src), s(&dst), &[MOVE, "--dry-run"]));
    assert_eq!(left(&src).len(), 7);
    let out = xfer(s(&src), s(&dst), &[MOVE, "--chunk-size", "1M"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed 5 source files"));
    assert_eq!(left(&src), ["sub/", "sub/deeper/"]);
    assert_eq!(
        left(&dst),
        ["a", "big.bin", "same", "sub/", "sub/b", "sub/deeper/", "sub/deeper/c"]
    );
    // One file moved under a new name.
    std::fs::write(src.join("one"), b"one").unwrap();
    ok(&xfer(s(&src.join("one")), s(&dst.join("renamed")), &[MOVE]));
    assert!(!src.join("one").exists());
    assert_eq!(std::fs::read(dst.join("renamed")).unwrap(), b"one");
}

#[test]
fn push_and_pull_move() {
    let t = tempfile::tempdir().unwrap();
    let (src, _) = move_tree(t.path());
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &[]);
    // Push: the client removes its files once the daemon reported them committed.
    ok(&xfer(s(&src), &d.url("moved"), &[MOVE, "--dry-run"]));
    assert_eq!(left(&src).len(), 7);
    ok(&xfer(s(&src), &d.url("moved"), &[MOVE, "--chunk-size", "1M"]));
    assert_eq!(left(&src), ["sub/", "sub/deeper/"]);
    assert_eq!(left(&root.join("moved")).len(), 7);
    // Pull: the daemon removes its files below its root.
    let back = t.path().join("back");
    ok(&xfer(&d.url("moved"), s(&back), &[MOVE, "--chunk-size", "1M"]));
    assert_eq!(left(&root.join("moved")), ["sub/", "sub/deeper/"]);
    assert_eq!(left(&back).len(), 7);
    // One file, pulled and moved.
    std::fs::write(root.join("one"), b"one").unwrap();
    ok(&xfer(&d.url("one"), s(&back), &[MOVE]));
    assert!(!root.join("one").exists());
    assert_eq!(std::fs::read(back.join("one")).unwrap(), b"one");
    // A read-only daemon refuses a moving pull, and keeps everything.
    std::fs::write(root.join("kept"), b"kept").unwrap();
    let ro = Daemon::start(&root, &["--read-only"]);
    let out = xfer(&ro.url("kept"), s(&back), &[MOVE]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("read-only"), "{err}");
    assert!(root.join("kept").exists() && !back.join("kept").exists());
}
