//! Filters (`--include`, `--exclude`, `--*-from`, `--filter`, `--files-from`, `--min-size`,
//! `--max-size`, `--delete-excluded`) on local copies, pushes and pulls, checked against what
//! rsync itself selects and deletes with the same rules on the same tree; and the dry run's
//! counts against the real run's.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use blitx_storage::testkit::list;

const BLIT: &str = env!("CARGO_BIN_EXE_blit");

/// A daemon process on loopback, killed on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(root: &Path) -> Daemon {
        let mut c = Command::new(BLIT);
        c.arg("daemon").arg("--root").arg(root).args(["--listen", "127.0.0.1:0"]);
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

#[derive(Debug, Clone, Copy)]
enum Mode {
    Local,
    Push,
    Pull,
}

const MODES: [Mode; 3] = [Mode::Local, Mode::Push, Mode::Pull];

/// One transfer of `src` to `dst` (both local directories) the `mode` way: a push puts `dst`
/// under the daemon's root, a pull serves `src` from it (the daemon's root is their parent).
fn xfer(mode: Mode, d: &Daemon, root: &Path, src: &Path, dst: &Path, extra: &[&str]) -> Output {
    let rel = |p: &Path| p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
    let (s, t) = match mode {
        Mode::Local => (src.to_str().unwrap().to_string(), dst.to_str().unwrap().to_string()),
        Mode::Push => (src.to_str().unwrap().to_string(), d.url(&rel(dst))),
        Mode::Pull => (d.url(&rel(src)), dst.to_str().unwrap().to_string()),
    };
    Command::new(BLIT)
        .args(["xfer", &s, &t, "--no-progress", "--json"])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn paths(root: &Path) -> BTreeSet<PathBuf> {
    if !root.exists() {
        return BTreeSet::new();
    }
    list(root).unwrap().into_keys().collect()
}

fn write(p: &Path, bytes: usize) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, vec![b'x'; bytes]).unwrap();
}

/// A tree with names every rule below has something to say about.
fn tree(src: &Path) {
    for (p, n) in [
        ("top.txt", 5),
        ("top.o", 1),
        ("keep.o", 2),
        ("a.txt", 30),
        ("b.txt", 3000),
        ("c.txt", 0),
        ("src/main.c", 50),
        ("src/main.h", 20),
        ("src/lib/util.c", 10),
        ("src/lib/util.o", 9),
        ("doc/a.pdf", 100),
        ("doc/sub/b.pdf", 100),
        ("x/doc/c.pdf", 100),
        ("build/out.bin", 2048),
        ("src/build/gen.c", 10),
        ("a/b/c/z", 1),
        ("a/z", 1),
        ("weird[1].txt", 4),
        ("deep/1/2/3/4.txt", 12),
    ] {
        write(&src.join(p), n);
    }
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("top.txt", src.join("link")).unwrap();
}

fn rsync_available() -> bool {
    Command::new("rsync").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn rsync(src: &Path, dst: &Path, extra: &[&str]) {
    let out = Command::new("rsync")
        .arg("-a")
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "rsync {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Rule sets whose selection must equal rsync's (each as blit's and rsync's arguments).
fn cases(dir: &Path) -> Vec<Vec<String>> {
    let from = dir.join("rules");
    std::fs::write(&from, "# comment\n; comment\n\n+ keep.o\n*.o\n- build/\n").unwrap();
    let files = dir.join("files");
    std::fs::write(&files, "src/lib/util.c\ndoc\n./a.txt\n").unwrap();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        s(&["--exclude", "*.o"]),
        s(&["--include", "*/", "--include", "*.c", "--exclude", "*"]),
        s(&["--include", "*.c", "--exclude", "*"]),
        s(&["--exclude", "/top*", "--exclude", "doc/*.pdf", "--exclude", "build/"]),
        s(&["--include", "keep.o", "--exclude", "*.o", "--exclude", "/a/**/z"]),
        s(&["--exclude", "*.o", "--include", "keep.o"]),
        s(&["--exclude", "[ab].txt", "--exclude", "weird\\[1\\].txt", "--exclude", "src/***"]),
        s(&["--exclude", "?.txt", "--exclude", "deep/**/*.txt"]),
        s(&["--min-size", "10", "--max-size", "1K"]),
        s(&["--filter", "+ */", "--filter", "- *.h", "--exclude", "x/"]),
        vec!["--exclude-from".into(), from.to_str().unwrap().into()],
        vec![
            "--include-from".into(),
            from.to_str().unwrap().into(),
            "--exclude".into(),
            "*".into(),
        ],
    ]
}

#[test]
fn selection_equals_rsync_on_local_push_and_pull() {
    if !rsync_available() {
        eprintln!("SKIPPED: rsync is not installed; the rsync comparison cannot run");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("export");
    let src = root.join("src");
    tree(&src);
    let d = Daemon::start(&root);
    for (i, args) in cases(t.path()).iter().enumerate() {
        let want_dir = t.path().join(format!("rsync{i}"));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        rsync(&src, &want_dir, &a);
        let want = paths(&want_dir);
        for mode in MODES {
            let dst = root.join(format!("got{i}-{mode:?}"));
            ok(&xfer(mode, &d, &root, &src, &dst, &a));
            assert_eq!(paths(&dst), want, "{mode:?} with {args:?}");
        }
    }
}

#[test]
fn files_from_equals_rsync_and_implies_directories() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("export");
    let src = root.join("src");
    tree(&src);
    let list = t.path().join("files");
    std::fs::write(&list, "src/lib/util.c\ndoc\n./a.txt\n# not a path\n").unwrap();
    let l = list.to_str().unwrap();
    let want: BTreeSet<PathBuf> = [
        ".",
        "a.txt",
        "src",
        "src/lib",
        "src/lib/util.c",
        "doc",
        "doc/a.pdf",
        "doc/sub",
        "doc/sub/b.pdf",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if rsync_available() {
        // rsync needs -r for a listed directory's contents (blit always recurses).
        let r = t.path().join("rsync");
        rsync(&src, &r, &["-r", "--files-from", l]);
        assert_eq!(paths(&r), want, "rsync itself");
    }
    let d = Daemon::start(&root);
    for mode in MODES {
        let dst = root.join(format!("got-{mode:?}"));
        ok(&xfer(mode, &d, &root, &src, &dst, &["--files-from", l]));
        assert_eq!(paths(&dst), want, "{mode:?}");
    }
}

/// A target with extra entries for `--mirror` to delete: some protected by `*.keep`, one inside
/// a deleted directory (rsync keeps it, and so the directory).
fn extras(dst: &Path) {
    for p in ["old", "gone/a", "gone/b/c", "x.keep", "half/y.keep", "half/z", "src/stale.c"] {
        write(&dst.join(p), 1);
    }
}

#[test]
fn mirror_deletions_respect_filters_like_rsync_and_dry_runs_count_the_same() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("export");
    let src = root.join("src");
    tree(&src);
    let d = Daemon::start(&root);
    for (extra, with_rsync) in [
        (vec!["--exclude", "*.keep"], true),
        (vec!["--exclude", "*.keep", "--delete-excluded"], true),
        (vec!["--exclude", "*.keep", "--exclude", "*.o"], true),
        (vec![], false),
    ] {
        let want = if with_rsync && rsync_available() {
            let r = t.path().join("rsync");
            let _ = std::fs::remove_dir_all(&r);
            rsync(&src, &r, &extra);
            extras(&r);
            let mut a = extra.clone();
            a.push("--delete");
            rsync(&src, &r, &a);
            Some(paths(&r))
        } else {
            None
        };
        for mode in MODES {
            let dst = root.join(format!("m-{mode:?}"));
            let _ = std::fs::remove_dir_all(&dst);
            ok(&xfer(mode, &d, &root, &src, &dst, &extra));
            extras(&dst);
            let before = paths(&dst);
            let mut a = extra.clone();
            a.push("--mirror");
            let mut dry = a.clone();
            dry.push("--dry-run");
            let dry = ok(&xfer(mode, &d, &root, &src, &dst, &dry));
            assert_eq!(paths(&dst), before, "{mode:?} {extra:?}: the dry run changed the target");
            let real = ok(&xfer(mode, &d, &root, &src, &dst, &a));
            let removed = before.difference(&paths(&dst)).count() as u64;
            assert_eq!(real["deleted"], removed, "{mode:?} {extra:?}: {real}");
            assert_eq!(
                dry["deleted"], real["deleted"],
                "{mode:?} {extra:?}: dry {dry} real {real}"
            );
            assert!(removed > 0, "{mode:?} {extra:?}");
            if let Some(want) = &want {
                assert_eq!(&paths(&dst), want, "{mode:?} {extra:?} against rsync --delete");
            }
        }
    }
}

#[test]
fn bad_filters_are_usage_errors_that_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("export");
    let src = root.join("src");
    tree(&src);
    std::os::unix::fs::symlink("/etc", src.join("out")).unwrap();
    let d = Daemon::start(&root);
    let w = |name: &str, text: &str| {
        let p = t.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let dotdot = w("dotdot", "a.txt\n../secret\n");
    let abs = w("abs", "/etc/passwd\n");
    let via_link = w("via-link", "out/passwd\n");
    let missing = w("missing", "no/such/file\n");
    let bad_rules = w("bad-rules", "*.o\n[oops\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--exclude", "[abc"], "unmatched '['"),
        (vec!["--include", "a\\"], "escapes nothing"),
        (vec!["--filter", "P secret"], "unknown or unsupported rule kind"),
        (vec!["--filter", ": .rsync-filter"], "unknown or unsupported rule kind"),
        (vec!["--exclude-from", "/no/such/rules"], "cannot open"),
        (vec!["--exclude-from", &bad_rules], "unmatched '['"),
        (vec!["--files-from", "/no/such/list"], "cannot open"),
        (vec!["--files-from", &dotdot], "leaves SOURCE"),
        (vec!["--files-from", &abs], "not beneath SOURCE"),
        (vec!["--min-size", "2X"], "not a size"),
        (vec!["--min-size", "2K", "--max-size", "1K"], "above --max-size"),
    ];
    for mode in MODES {
        for (args, says) in &cases {
            let dst = root.join(format!("bad-{mode:?}"));
            let out = xfer(mode, &d, &root, &src, &dst, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{mode:?} {args:?}: {err}");
            assert!(err.contains(says), "{mode:?} {args:?}: {err}");
            assert!(!dst.exists(), "{mode:?} {args:?} created the target");
        }
        // Checked by the side that walks: the client for local copies and pushes (a usage
        // error), the daemon for pulls (the session fails before anything is listed).
        for (list, says) in [(&via_link, "symlink"), (&missing, "no such")] {
            let dst = root.join(format!("bad-{mode:?}"));
            let out = xfer(mode, &d, &root, &src, &dst, &["--files-from", list]);
            let err = String::from_utf8_lossy(&out.stderr);
            let want = if matches!(mode, Mode::Pull) { 1 } else { 2 };
            assert_eq!(out.status.code(), Some(want), "{mode:?} {list}: {err}");
            assert!(err.contains(says), "{mode:?} {list}: {err}");
            assert!(paths(&dst).len() <= 1, "{mode:?} {list}: something was transferred");
        }
    }
}
