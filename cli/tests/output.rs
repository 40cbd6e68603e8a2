//! What `blit` prints: usage errors, `--progress` without a terminal, `--color`,
//! `--itemize-changes` (local, push, pull), shell completions and man pages.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BLIT: &str = env!("CARGO_BIN_EXE_blit");

fn blit(args: &[&str]) -> Output {
    Command::new(BLIT).args(args).env_remove("RUST_LOG").env_remove("NO_COLOR").output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("blit-output-").tempdir().unwrap()
}

/// A loopback daemon, killed on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(root: &Path) -> Daemon {
        let mut child = Command::new(BLIT)
            .args(["daemon", "--listen", "127.0.0.1:0", "--root", s(root)])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap();
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
        format!("blit://{}/{path}", self.addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn out_of_range_values_are_usage_errors_and_change_nothing() {
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let dst = t.path().join("dst");
    for bad in [
        &["--stall-timeout", "0"][..],
        &["--small-file-max", "2M"],
        &["--chunk-size", "3K"],
        &["--chunk-size", "128M"],
        &["--threads", "0"],
        &["--idle-timeout", "-1"],
        &["--io-depth", "65"],
        &["--color", "sometimes"],
        &["--mem", "0"],
    ] {
        let mut args = vec!["xfer", s(&src), s(&dst)];
        args.extend_from_slice(bad);
        let out = blit(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{bad:?}: the error says why");
        assert!(!dst.exists(), "{bad:?} created TARGET");
    }
    let out = blit(&["xfer", "blit://127.0.0.1:1/a", "blit://127.0.0.1:1/b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn progress_without_a_terminal_prints_plain_lines() {
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("big"), vec![7u8; 24 << 20]).unwrap();
    let out = blit(&["xfer", "--progress", s(&src), s(&t.path().join("dst"))]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().find(|l| l.ends_with(" done")).unwrap_or_else(|| panic!("{err}"));
    assert!(last.contains("24.0 MiB / 24.0 MiB 100%") && last.contains("files 1/1"), "{last}");
    assert!(!err.contains('\r') && !err.contains('\x1b'), "a pipe gets no bar: {err:?}");
    // Without --progress a pipe gets no progress at all.
    let quiet = blit(&["xfer", s(&src), s(&t.path().join("dst2"))]);
    assert!(!stderr(&quiet).contains(" done"), "{}", stderr(&quiet));
}

#[test]
fn log_lines_have_colours_only_when_asked_or_on_a_terminal() {
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // --streams on a local copy logs an info line.
    let args = |color: &'static str, dst: &'static str| {
        let d = t.path().join(dst);
        blit(&["-v", "--color", color, "xfer", "--streams", "2", s(&src), s(&d)])
    };
    let plain = args("auto", "a");
    assert!(stderr(&plain).contains("INFO") && !stderr(&plain).contains('\x1b'), "{plain:?}");
    let never = args("never", "b");
    assert!(!stderr(&never).contains('\x1b'));
    let always = args("always", "c");
    assert!(stderr(&always).contains("\x1b["), "{:?}", stderr(&always));
}

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("d/new"), b"new file").unwrap();
    std::fs::write(root.join("same"), b"same").unwrap();
    std::fs::write(root.join("grows"), b"0123456789").unwrap();
    std::os::unix::fs::symlink("same", root.join("link")).unwrap();
}

/// The target side before the run: `same` with other permissions, `grows` shorter, `d` and
/// `link` missing, `stale` extra.
fn old_copy(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    let out = blit(&["xfer", s(src), s(dst)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::remove_dir_all(dst.join("d")).unwrap();
    std::fs::remove_file(dst.join("link")).unwrap();
    std::fs::write(dst.join("grows"), b"01234").unwrap();
    std::fs::write(dst.join("stale"), b"x").unwrap();
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o640);
    std::fs::set_permissions(dst.join("same"), perms).unwrap();
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn itemized_changes_are_one_rsync_line_each_local_push_and_pull() {
    let t = scratch();
    let src = t.path().join("src");
    tree(&src);
    let expect = |y: char| {
        sorted_lines(&format!(
            "cd+++++++++ d/\n{y}f+++++++++ d/new\n{y}f.st...... grows\ncL+++++++++ link\n\
             .f...p..... same\n*deleting   stale\n"
        ))
    };
    // Local: a dry run says exactly what the real run then does.
    let local = t.path().join("local");
    old_copy(&src, &local);
    let dry = blit(&["xfer", "-i", "-n", "--mirror", s(&src), s(&local)]);
    assert_eq!(sorted_lines(&stdout(&dry)), expect('>'), "{}", stderr(&dry));
    let real = blit(&["xfer", "-i", "--mirror", s(&src), s(&local)]);
    assert_eq!(sorted_lines(&stdout(&real)), expect('>'), "{}", stderr(&real));
    let again = blit(&["xfer", "-i", "--mirror", s(&src), s(&local)]);
    assert_eq!(stdout(&again), "", "nothing changed, nothing itemized");

    // Push: the daemon's events, `<` for sent.
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    old_copy(&src, &root.join("pushed"));
    let d = Daemon::start(&root);
    let push = blit(&["xfer", "-i", "--mirror", s(&src), &d.url("pushed")]);
    assert_eq!(sorted_lines(&stdout(&push)), expect('<'), "{}", stderr(&push));

    // Pull: received here.
    let pulled = t.path().join("pulled");
    old_copy(&root.join("pushed"), &pulled);
    let pull = blit(&["xfer", "-i", "--mirror", &d.url("pushed"), s(&pulled)]);
    assert_eq!(sorted_lines(&stdout(&pull)), expect('>'), "{}", stderr(&pull));
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions_as_help() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = blit(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("xfer"), "{shell}");
    }
    assert_eq!(blit(&["completions", "tcsh"]).status.code(), Some(2));
    let t = scratch();
    let out = blit(&["man", "--out", s(&t.path().join("man1"))]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let xfer = std::fs::read_to_string(t.path().join("man1/blit-xfer.1")).unwrap();
    let help = stdout(&blit(&["xfer", "--help"]));
    for flag in help.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = flag.trim_end_matches([',', '.']).split(['=', '[', '<']).next().unwrap();
        if flag.len() > 2 {
            let roff = flag.replace('-', "\\-");
            assert!(xfer.contains(&roff), "{flag} is in --help but not in blit-xfer.1");
        }
    }
    let main = stdout(&blit(&["man"]));
    assert!(main.starts_with(".ie") || main.contains(".TH"), "{main}");
}
