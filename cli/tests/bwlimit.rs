//! `--bwlimit`: limited transfers are complete and correct on every transport (local, push and
//! pull over TCP with buffers and with sendfile), a daemon's cap holds its sessions both ways,
//! bad rates are usage errors that change nothing, a limited transfer still ends at once on
//! SIGINT, and a limit slower than the stall timeout between chunks does not trip it.
//!
//! Speed is measured by bench/bwlimit.sh; the only timing asserted here is a lower bound (a
//! transfer of N bytes at R bytes/s cannot end much before N/R), which no load can break.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use blitx_storage::testkit::{Rng, compare_trees, temp_files, write_random};

const BLIT: &str = env!("CARGO_BIN_EXE_blit");
/// 20 MB at 10 MB/s: at least 2 s less one burst (50 ms of the rate).
const DATA_BYTES: u64 = 20_000_000;
const RATE: &str = "10M";
const AT_LEAST: Duration = Duration::from_millis(1900);

/// A daemon process, killed on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(root: &Path, extra: &[&str]) -> Daemon {
        let mut child = Command::new(BLIT)
            .arg("daemon")
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
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
        format!("blit://{}/{}", self.addr, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xfer(src: &str, dst: &str, extra: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let out = Command::new(BLIT)
        .args(["xfer", src, dst, "--no-progress", "--json"])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (out, t0.elapsed())
}

fn ok(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A source of one large file and a few small ones (bundles are paced too).
fn source(dir: &Path) {
    std::fs::create_dir_all(dir.join("small")).unwrap();
    let mut rng = Rng::new(19);
    write_random(&dir.join("big.bin"), DATA_BYTES - 100_000, &mut rng);
    for i in 0..10 {
        write_random(&dir.join(format!("small/{i}")), 10_000, &mut rng);
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("blit-bwlimit-").tempdir().unwrap()
}

#[test]
fn limited_transfers_are_correct_and_paced_on_every_transport() {
    let t = scratch();
    let src = t.path().join("src");
    source(&src);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &[]);
    let limit = ["--bwlimit", RATE, "--chunk-size", "1M"];

    let local = t.path().join("local");
    let (out, took) = xfer(s(&src), s(&local), &limit);
    assert_eq!(ok(&out)["transport"], "local");
    compare_trees(&src, &local).unwrap();
    assert!(took >= AT_LEAST, "a local copy at {RATE} took {took:?}");

    for (name, extra) in [("buffers", &[][..]), ("zero-copy", &["--tcp-zero-copy"][..])] {
        let args = [&limit[..], extra].concat();
        let (out, took) = xfer(s(&src), &d.url(name), &args);
        assert_eq!(ok(&out)["transport"], "tcp");
        compare_trees(&src, &root.join(name)).unwrap();
        assert!(took >= AT_LEAST, "a push ({name}) at {RATE} took {took:?}");

        // A pull: the client's limit travels in the Open and the daemon sends at it.
        let pulled = t.path().join(format!("pulled-{name}"));
        let (out, took) = xfer(&d.url(name), s(&pulled), &args);
        assert_eq!(ok(&out)["transport"], "tcp");
        compare_trees(&src, &pulled).unwrap();
        assert!(took >= AT_LEAST, "a pull ({name}) at {RATE} took {took:?}");
    }
    assert!(temp_files(&root).is_empty());
}

/// The daemon's cap holds both directions without any limit on the client: what it sends
/// (pull) and what it receives (push: frames wait before its writers take them, so the
/// client's sender blocks on a closed window).
#[test]
fn a_daemon_cap_paces_pushes_and_pulls() {
    let t = scratch();
    let src = t.path().join("src");
    source(&src);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &["--bwlimit", RATE]);
    let chunk = ["--chunk-size", "1M"];

    let (out, took) = xfer(s(&src), &d.url("pushed"), &chunk);
    ok(&out);
    compare_trees(&src, &root.join("pushed")).unwrap();
    assert!(took >= AT_LEAST, "a push to a daemon capped at {RATE} took {took:?}");

    let pulled = t.path().join("pulled");
    let (out, took) = xfer(&d.url("pushed"), s(&pulled), &chunk);
    ok(&out);
    compare_trees(&src, &pulled).unwrap();
    assert!(took >= AT_LEAST, "a pull from a daemon capped at {RATE} took {took:?}");
}

/// Chunks 2 s apart with a 1 s stall timeout: the gaps are the user's limit, not a stall, on
/// either side of a push and a pull.
#[test]
fn a_limit_slower_than_the_stall_timeout_is_not_a_stall() {
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_random(&src.join("f"), 8 << 20, &mut Rng::new(7));
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &["--stall-timeout", "1", "--idle-timeout", "1"]);
    let args = ["--bwlimit", "2M", "--chunk-size", "4M", "--stall-timeout", "1"];
    let (out, _) = xfer(s(&src), &d.url("pushed"), &args);
    ok(&out);
    compare_trees(&src, &root.join("pushed")).unwrap();
    let pulled = t.path().join("pulled");
    let (out, _) = xfer(&d.url("pushed"), s(&pulled), &args);
    ok(&out);
    compare_trees(&src, &pulled).unwrap();
}

#[test]
fn bad_rates_are_usage_errors_that_change_nothing() {
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_random(&src.join("f"), 10_000, &mut Rng::new(3));
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &[]);
    let local = t.path().join("local");
    for rate in ["0", "0M", "garbage", "1000", "-1M", "10X", "1.5.5M", "99999999999999T"] {
        for target in [s(&local).to_string(), d.url("pushed")] {
            let (out, _) = xfer(s(&src), &target, &[&format!("--bwlimit={rate}")]);
            assert_eq!(out.status.code(), Some(2), "--bwlimit {rate} to {target}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("--bwlimit"), "{rate}");
        }
        let (out, _) = xfer(&d.url("."), s(&local), &[&format!("--bwlimit={rate}")]);
        assert_eq!(out.status.code(), Some(2), "pull with --bwlimit {rate}");
    }
    // Too slow for the chunk size: one 4 MiB chunk would take 40 s.
    for target in [s(&local).to_string(), d.url("pushed")] {
        let (out, _) = xfer(s(&src), &target, &["--bwlimit", "100K"]);
        assert_eq!(out.status.code(), Some(2), "to {target}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("chunk size of at most 499712 bytes"), "{err}");
    }
    assert!(!local.exists());
    assert!(!root.join("pushed").exists());
    // A daemon refuses a cap of 0, garbage, or one below a default chunk in 5 s.
    for rate in ["0", "x", "100K"] {
        let out = Command::new(BLIT)
            .args(["daemon", "--root", s(&root), "--listen", "127.0.0.1:0", "--bwlimit", rate])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "daemon --bwlimit {rate}");
    }
}

/// A reader waiting for its tokens wakes on SIGINT: with 1 MB/s and 4 MiB chunks, each of the
/// readers' reservations waits seconds (queued behind each other, tens of seconds), so an
/// interrupt that had to wait them out would take far longer than the bound here.
#[test]
fn sigint_ends_a_limited_transfer_at_once() {
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = Rng::new(5);
    for i in 0..4 {
        write_random(&src.join(format!("f{i}")), 16 << 20, &mut rng);
    }
    let dst = t.path().join("dst");
    let mut child = Command::new(BLIT)
        .args(["xfer", s(&src), s(&dst), "--no-progress", "--bwlimit", "1M", "--threads", "4"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let the readers take their first chunks and queue their reservations.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("a limited transfer did not end within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(3), "SIGINT took {:?}", t0.elapsed());
}
