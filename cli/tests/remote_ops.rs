//! `blit ls`, `du`, `rm` and `mkdir` against a real `blit daemon` process on loopback: output,
//! JSON, exit codes, and bad input (paths out of the root, the root itself, directories without
//! -r, a read-only daemon), each a clear error with nothing changed.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BLIT: &str = env!("CARGO_BIN_EXE_blit");

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

fn blit(args: &[&str]) -> Output {
    Command::new(BLIT).args(args).env_remove("RUST_LOG").output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn refused(o: &Output, code: i32, says: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(says), "stderr does not say {says:?}: {err}");
}

/// Every path below `dir`, sorted (to show that nothing changed).
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn tree(t: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = t.join("export");
    let outside = t.join("outside");
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    std::fs::write(root.join("d/f"), vec![7u8; 10_000]).unwrap();
    std::fs::write(root.join("d/e/g"), b"abc").unwrap();
    std::fs::write(root.join("d/bad\x1b[31mname\n"), b"x").unwrap();
    symlink(&outside, root.join("esc")).unwrap();
    (root, outside)
}

#[test]
fn ls_du_mkdir_rm_against_a_daemon() {
    let t = tempfile::tempdir().unwrap();
    let (root, outside) = tree(t.path());
    let d = Daemon::start(&root, &[]);

    let names = stdout(&blit(&["ls", &d.url("")]));
    assert_eq!(names, "d\nesc\n");
    let names = stdout(&blit(&["ls", &d.url("d")]));
    // Control characters are escaped, never printed raw.
    assert_eq!(names, "bad\\x1b[31mname\\n\ne\nf\n");
    let long = stdout(&blit(&["ls", "-l", &d.url("")]));
    let lines: Vec<_> = long.lines().collect();
    assert!(lines[0].starts_with("drwx") && lines[0].ends_with(" d"), "{long}");
    assert!(
        lines[1].starts_with("lrwxrwxrwx")
            && lines[1].ends_with(&format!("esc -> {}", outside.display()))
    );
    let file = stdout(&blit(&["ls", "-l", &d.url("d/f")]));
    assert!(
        file.starts_with("-rw") && file.contains(" 10000 ") && file.ends_with(" d/f\n"),
        "{file}"
    );
    let rec = stdout(&blit(&["ls", "-R", &d.url("d")]));
    assert_eq!(rec, "d:\nbad\\x1b[31mname\\n\ne\nf\n\nd/e:\ng\n");
    let json = stdout(&blit(&["ls", "-R", "--json", &d.url("")]));
    let entries: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let f = entries.iter().find(|e| e["path"] == "d/f").unwrap();
    assert_eq!((f["type"].as_str(), f["size_bytes"].as_u64()), (Some("file"), Some(10_000)));
    assert!(entries.iter().any(|e| e["path"] == "d/e/g"));
    assert!(entries.iter().any(|e| e["path"] == "esc" && e["type"] == "symlink"));

    let du = stdout(&blit(&["du", "-s", "-b", &d.url("d")]));
    let (bytes, path) = du.trim_end().split_once('\t').unwrap();
    let dir_bytes = |p: &Path| std::fs::metadata(p).unwrap().len();
    let want = 10_000 + 3 + 1 + dir_bytes(&root.join("d")) + dir_bytes(&root.join("d/e"));
    assert_eq!((bytes.parse::<u64>().unwrap(), path), (want, "d"));
    let du = stdout(&blit(&["du", "--json", &d.url("")]));
    let totals: Vec<serde_json::Value> =
        du.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        totals.iter().map(|t| t["path"].as_str().unwrap()).collect::<Vec<_>>(),
        ["d/e", "d", "."]
    );
    assert_eq!((totals[2]["files"].as_u64(), totals[2]["dirs"].as_u64()), (Some(4), Some(3)));

    let made = stdout(&blit(&["mkdir", "-p", "--json", &d.url("n/a/b")]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&made).unwrap()["made"], 3);
    assert!(root.join("n/a/b").is_dir());
    stdout(&blit(&["mkdir", &d.url("n/c")]));
    assert!(root.join("n/c").is_dir());

    stdout(&blit(&["rm", &d.url("d/f")]));
    assert!(!root.join("d/f").exists());
    let gone = stdout(&blit(&["rm", "-r", "--json", &d.url("d")]));
    let gone: serde_json::Value = serde_json::from_str(&gone).unwrap();
    assert_eq!((gone["files"].as_u64(), gone["dirs"].as_u64()), (Some(2), Some(2)));
    assert!(!root.join("d").exists());
    // A symlink goes as a link; what it points to stays.
    stdout(&blit(&["rm", "-r", &d.url("esc")]));
    assert!(!root.join("esc").exists() && outside.join("secret").exists());
}

#[test]
fn bad_paths_and_refusals_are_clear_errors_that_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (root, outside) = tree(t.path());
    let d = Daemon::start(&root, &[]);
    let before = (snapshot(&root), snapshot(&outside));

    for cmd in ["ls", "du", "rm", "mkdir"] {
        // `..` and absolute paths never leave the client.
        refused(&blit(&[cmd, &d.url("../outside")]), 2, "'..'");
        refused(&blit(&[cmd, &d.url("d/../../outside")]), 2, "'..'");
        refused(&blit(&[cmd, &d.url("/etc")]), 2, "absolute");
        // A symlink out of the root is refused by the daemon.
        refused(&blit(&[cmd, &d.url("esc/secret")]), 1, "symlink");
        refused(&blit(&[cmd, "/local/path"]), 2, "blit://");
    }
    refused(&blit(&["rm", "-r", &d.url("esc/x")]), 1, "symlink");
    refused(&blit(&["mkdir", "-p", &d.url("esc/x")]), 1, "symlink");
    refused(&blit(&["rm", "-r", &d.url("")]), 2, "root");
    refused(&blit(&["rm", &d.url("d")]), 1, "is a directory");
    refused(&blit(&["rm", &d.url("nope")]), 1, "no such file");
    refused(&blit(&["ls", &d.url("nope")]), 1, "no such file");
    refused(&blit(&["mkdir", &d.url("d")]), 1, "already exists");
    refused(&blit(&["mkdir", &d.url("x/y")]), 1, "no such file");
    assert_eq!((snapshot(&root), snapshot(&outside)), before);

    let ro = Daemon::start(&root, &["--read-only"]);
    refused(&blit(&["rm", &ro.url("d/f")]), 1, "read-only");
    refused(&blit(&["rm", "-r", &ro.url("d")]), 1, "read-only");
    refused(&blit(&["mkdir", &ro.url("new")]), 1, "read-only");
    assert_eq!(stdout(&blit(&["ls", &ro.url("")])), "d\nesc\n");
    assert_eq!((snapshot(&root), snapshot(&outside)), before);
}

/// SIGINT while the daemon does not answer (a listener that never speaks HTTP/2) ends the
/// command at once with exit code 130.
#[test]
fn sigint_cancels_a_waiting_operation() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("blit://{}/x", silent.local_addr().unwrap());
    for cmd in [&["ls", "-R"][..], &["du"], &["rm", "-r"], &["mkdir", "-p"]] {
        let mut child = Command::new(BLIT)
            .args(cmd)
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap();
        // The signal handler is installed before the connect: once connected, it is there.
        let (_conn, _) = silent.accept().unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{cmd:?} did not end on SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(130), "{cmd:?}");
    }
}

/// SIGINT while the output blocks on a pipe nobody reads (`blit ls -R ... | less`, paused):
/// the command still ends with exit code 130.
#[test]
fn sigint_ends_a_listing_blocked_on_its_output() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..3000 {
        std::fs::write(root.join(format!("{i:05}-{}", "n".repeat(60))), b"").unwrap();
    }
    let d = Daemon::start(&root, &[]);
    let mut child = Command::new(BLIT)
        .args(["ls", "-l", &d.url("")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    // The first bytes arrived: the listing runs; the rest fills the pipe and blocks.
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "did not end on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    drop(out);
}
