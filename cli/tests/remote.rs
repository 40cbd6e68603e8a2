//! End-to-end tests with a real `blit daemon` process on loopback (and, when run as root with
//! iproute2 and iptables, between two network namespaces with packet loss).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use blitx_storage::testkit::{Rng, compare_trees, edge_tree, mixed_tree, temp_files, write_random};

const BLIT: &str = env!("CARGO_BIN_EXE_blit");

/// A daemon process, killed on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(root: &Path, extra: &[&str]) -> Daemon {
        Self::start_in(root, extra, None, "127.0.0.1:0")
    }

    fn start_in(root: &Path, extra: &[&str], netns: Option<&str>, listen: &str) -> Daemon {
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BLIT]);
                c
            }
            None => Command::new(BLIT),
        };
        c.arg("daemon").arg("--root").arg(root).args(["--listen", listen]).args(extra);
        c.stderr(Stdio::piped()).stdout(Stdio::null()).env_remove("RUST_LOG");
        let mut child = c.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("daemon exited before listening").unwrap();
            if let Some(a) = line.strip_prefix("blit daemon listening on ") {
                break a.trim().to_string();
            }
        };
        // Keep draining stderr so the daemon never blocks on a full pipe.
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("blit-remote-").tempdir().unwrap()
}

#[test]
fn push_and_pull_round_trip_with_metadata() {
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    edge_tree(&src);
    mixed_tree(&src.join("mixed"), 11, 120, 1, 6 << 20);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &[]);

    for streams in ["1", "4"] {
        let dest = format!("pushed-{streams}/deeper");
        let j = ok(&xfer(s(&src), &d.url(&dest), &["--streams", streams]));
        assert_eq!(j["transport"], "tcp");
        assert_eq!(j["streams"].as_u64().unwrap(), streams.parse::<u64>().unwrap());
        compare_trees(&src, &root.join(&dest)).unwrap();
        assert!(temp_files(&root).is_empty());
        // Second push copies nothing.
        let j = ok(&xfer(s(&src), &d.url(&dest), &["--streams", streams]));
        assert_eq!(j["files"], 0, "{j}");
    }
    // Pull back what was pushed.
    let pulled = t.path().join("pulled");
    let j = ok(&xfer(&d.url("pushed-4/deeper"), s(&pulled), &[]));
    assert!(j["files"].as_u64().unwrap() > 100);
    compare_trees(&src, &pulled).unwrap();
    let j = ok(&xfer(&d.url("pushed-4/deeper"), s(&pulled), &[]));
    assert_eq!(j["files"], 0);
}

#[test]
fn remote_mirror_and_dry_run() {
    let t = scratch();
    let src = t.path().join("src");
    mixed_tree(&src, 12, 60, 1, 200_000);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &[]);
    ok(&xfer(s(&src), &d.url("m"), &[]));
    std::fs::create_dir_all(root.join("m/stale/deeper")).unwrap();
    std::fs::write(root.join("m/stale/deeper/f"), b"x").unwrap();
    std::fs::write(root.join("m/d0/extra"), b"x").unwrap();
    let j = ok(&xfer(s(&src), &d.url("m"), &["--mirror", "--dry-run"]));
    // What the real run will remove (a deleted directory counts with everything below it).
    assert_eq!(j["deleted"], 4, "{j}");
    assert!(root.join("m/stale/deeper/f").exists(), "dry run changed the target");
    let j = ok(&xfer(s(&src), &d.url("m"), &["--mirror"]));
    assert_eq!(j["deleted"], 4, "{j}");
    compare_trees(&src, &root.join("m")).unwrap();
    // Pull with --mirror deletes locally.
    let local = t.path().join("local");
    ok(&xfer(&d.url("m"), s(&local), &[]));
    std::fs::write(local.join("junk"), b"x").unwrap();
    ok(&xfer(&d.url("m"), s(&local), &["--mirror"]));
    compare_trees(&src, &local).unwrap();
}

#[test]
fn path_escapes_are_refused() {
    use blitx_control::client::{ClientError, raw_open_for_tests};
    use blitx_control::url::RemoteSpec;
    let t = scratch();
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let d = Daemon::start(&root, &[]);
    let remote = RemoteSpec::parse(&d.url("")).unwrap();
    for (path, push) in [
        (&b"../outside"[..], true),
        (b"/etc", false),
        (b"a/../../outside", true),
        (b"ok\0bad", true),
        (b"escape", true),
        (b"escape/sub", true),
        (b"escape", false),
    ] {
        match raw_open_for_tests(&remote, path, push) {
            Err(ClientError::Refused(e)) => {
                assert!(!e.message.is_empty());
            }
            other => panic!("{:?} was not refused: {other:?}", String::from_utf8_lossy(path)),
        }
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the root"
    );
    // The CLI refuses such URLs before contacting anyone, with a clear message.
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let out = xfer(s(&src), &format!("blit://{}/../x", d.addr), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(".."));
    // Through the CLI, the symlink out of the root is refused by the daemon.
    let out = xfer(s(&src), &d.url("escape/x"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    assert!(!outside.join("x").exists());
}

#[test]
fn read_only_daemon_refuses_pushes() {
    let t = scratch();
    let root = t.path().join("export");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/f"), b"x").unwrap();
    let d = Daemon::start(&root, &["--read-only"]);
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let out = xfer(s(&src), &d.url("data"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    ok(&xfer(&d.url("data"), s(&t.path().join("copy")), &[]));
    assert_eq!(std::fs::read(t.path().join("copy/f")).unwrap(), b"x");
}

#[test]
fn rdma_request_without_rdma_fails_with_exit_3() {
    let t = scratch();
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &[]);
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let out = xfer(s(&src), &d.url("x"), &["--transport", "rdma"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("rdma"));
}

#[test]
fn unreachable_daemon_is_a_clear_error() {
    let t = scratch();
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let out = xfer(s(t.path()), &format!("blit://127.0.0.1:{port}/x"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the blit daemon"));
}

fn big_tree(dir: &Path, files: usize, size: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(77);
    for i in 0..files {
        write_random(&dir.join(format!("big{i}.bin")), size, &mut rng);
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("NOTE: gave up waiting for {what}");
    false
}

/// Files under `root` whose names are real (not temporary) and whose size differs from the
/// source's: a partial file under a real name.
fn partial_real_files(root: &Path, src: &Path) -> Vec<PathBuf> {
    let mut bad = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".blit-tmp") {
            continue;
        }
        let want = std::fs::metadata(src.join(&name)).map(|m| m.len()).unwrap_or(u64::MAX);
        if e.metadata().unwrap().len() != want {
            bad.push(e.path());
        }
    }
    bad
}

#[test]
fn daemon_killed_mid_push_gives_a_clear_error() {
    let t = scratch();
    let src = t.path().join("src");
    big_tree(&src, 8, 64 << 20);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let mut d = Daemon::start(&root, &[]);
    let dest = root.join("dst");
    let client = Command::new(BLIT)
        .args([
            "xfer",
            s(&src),
            &d.url("dst"),
            "--no-progress",
            "--streams",
            "1",
            "--chunk-size",
            "256K",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = wait_for("a temp file on the daemon", Duration::from_secs(20), || {
        dest.is_dir() && !temp_files(&dest).is_empty()
    });
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let out = client.wait_with_output().unwrap();
    if !started && out.status.success() {
        eprintln!("NOTE: the push finished before the daemon could be killed");
        return;
    }
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lost the connection") || err.contains("went away") || err.contains("peer"),
        "unclear error: {err}"
    );
    assert!(partial_real_files(&dest, &src).is_empty(), "partial files under real names");
}

/// Temporary files left under `root` that are not partial files kept for resuming (named for
/// process 0, with a journal).
fn unkept_temp_files(root: &Path) -> Vec<PathBuf> {
    temp_files(root)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let kept = name.rsplitn(3, '.').nth(2).is_some_and(|stem| stem.ends_with(".0"));
            // `temp_files` names them relative to `root`.
            let journal = std::fs::File::open(root.join(p)).is_ok_and(|f| {
                rustix::fs::fgetxattr(&f, "user.blit.part", &mut [0u8; 4096][..]).is_ok()
            });
            !(kept && journal)
        })
        .collect()
}

#[test]
fn daemon_killed_mid_pull_keeps_partial_files_that_the_next_pull_resumes() {
    let t = scratch();
    let root = t.path().join("export");
    big_tree(&root.join("data"), 8, 64 << 20);
    let mut d = Daemon::start(&root, &[]);
    let local = t.path().join("local");
    let client = Command::new(BLIT)
        .args([
            "xfer",
            &d.url("data"),
            s(&local),
            "--no-progress",
            "--streams",
            "1",
            "--chunk-size",
            "256K",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once a temporary file's journal records 32 MiB (one is saved every 32 MiB).
    let started = wait_for("a journal in the local target", Duration::from_secs(20), || {
        blitx_storage::testkit::journaled_bytes(&local) >= 32 << 20
    });
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let out = client.wait_with_output().unwrap();
    if !started && out.status.success() {
        eprintln!("NOTE: the pull finished before the daemon could be killed");
        return;
    }
    assert_ne!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    assert!(partial_real_files(&local, &root.join("data")).is_empty());
    assert!(unkept_temp_files(&local).is_empty(), "not kept: {:?}", unkept_temp_files(&local));
    assert!(!temp_files(&local).is_empty(), "the interrupted file was not kept");
    // The same pull again: the kept chunks are not sent again, and the tree is whole.
    let d = Daemon::start(&root, &[]);
    let v = ok(&xfer(&d.url("data"), s(&local), &["--streams", "1", "--chunk-size", "256K"]));
    assert!(v["bytes_reused"].as_u64().unwrap() >= 32 << 20, "{v}");
    let total = 8 * (64u64 << 20);
    assert_eq!(
        v["bytes_moved"].as_u64().unwrap() + v["bytes_reused"].as_u64().unwrap(),
        total,
        "{v}"
    );
    compare_trees(&root.join("data"), &local).unwrap();
    assert!(temp_files(&local).is_empty(), "{:?}", temp_files(&local));
}

#[test]
fn sigterm_ends_sessions_and_keeps_only_resumable_partial_files() {
    let t = scratch();
    let src = t.path().join("src");
    big_tree(&src, 8, 64 << 20);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let mut d = Daemon::start(&root, &[]);
    let dest = root.join("dst");
    let mut client = Command::new(BLIT)
        .args([
            "xfer",
            s(&src),
            &d.url("dst"),
            "--no-progress",
            "--streams",
            "1",
            "--chunk-size",
            "256K",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = wait_for("a temp file on the daemon", Duration::from_secs(20), || {
        dest.is_dir() && !temp_files(&dest).is_empty()
    });
    // Freeze the client so the session is mid-transfer when the daemon is told to stop.
    let cpid = rustix::process::Pid::from_child(&client);
    let _ = rustix::process::kill_process(cpid, rustix::process::Signal::STOP);
    let dpid = rustix::process::Pid::from_child(&d.child);
    rustix::process::kill_process(dpid, rustix::process::Signal::TERM).unwrap();
    let exited = wait_for("the daemon to exit", Duration::from_secs(15), || {
        matches!(d.child.try_wait(), Ok(Some(_)))
    });
    let _ = rustix::process::kill_process(cpid, rustix::process::Signal::KILL);
    let _ = client.wait();
    assert!(exited, "the daemon did not exit on SIGTERM");
    if started {
        assert!(
            unkept_temp_files(&root).is_empty(),
            "temp files left: {:?}",
            unkept_temp_files(&root)
        );
        assert!(partial_real_files(&dest, &src).is_empty());
    }
    // With --no-resume the next push removes what was kept and sends everything.
    let d = Daemon::start(&root, &[]);
    let v = ok(&xfer(s(&src), &d.url("dst"), &["--no-resume"]));
    assert_eq!(v["bytes_reused"].as_u64(), Some(0), "{v}");
    compare_trees(&src, &dest).unwrap();
    assert!(temp_files(&root).is_empty(), "{:?}", temp_files(&root));
}

/// Two hosts in network namespaces joined by a veth pair, with 0.5% packet loss injected by
/// iptables on both ends. Created and removed by the test.
struct NetnsPair {
    a: String,
    b: String,
}

impl NetnsPair {
    fn create() -> Result<NetnsPair, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("needs root".into());
        }
        for tool in ["ip", "iptables"] {
            if Command::new(tool).arg("-V").output().is_err()
                && Command::new(tool).arg("--version").output().is_err()
            {
                return Err(format!("{tool} is not installed"));
            }
        }
        let tag = std::process::id() % 100_000;
        let pair = NetnsPair { a: format!("blitA{tag}"), b: format!("blitB{tag}") };
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
            }
        };
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        let va = format!("vb{tag}a");
        let vb = format!("vb{tag}b");
        run(&["ip", "netns", "add", a])?;
        run(&["ip", "netns", "add", b])?;
        run(&["ip", "link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        run(&["ip", "link", "set", &va, "netns", a])?;
        run(&["ip", "link", "set", &vb, "netns", b])?;
        run(&["ip", "-n", a, "addr", "add", "10.213.0.1/24", "dev", &va])?;
        run(&["ip", "-n", b, "addr", "add", "10.213.0.2/24", "dev", &vb])?;
        for (ns, dev) in [(a, &va), (b, &vb)] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "iptables",
                "-A",
                "INPUT",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.005",
                "-j",
                "DROP",
            ])?;
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

#[test]
fn two_hosts_with_packet_loss() {
    let pair = match NetnsPair::create() {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("SKIPPED: two-host test needs network namespaces: {reason}");
            return;
        }
    };
    let t = tempfile::Builder::new().prefix("blit-netns-").tempdir_in("/tmp").unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    edge_tree(&src);
    mixed_tree(&src.join("m"), 13, 200, 1, 8 << 20);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start_in(&root, &[], Some(&pair.a), "10.213.0.1:9031");
    assert_eq!(d.addr, "10.213.0.1:9031");
    for (streams, dest) in [("1", "one"), ("4", "four")] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.b,
                BLIT,
                "xfer",
                s(&src),
                &d.url(dest),
                "--no-progress",
                "--json",
                "--streams",
                streams,
            ])
            .output()
            .unwrap();
        let j = ok(&out);
        assert_eq!(j["error_count"], 0);
        compare_trees(&src, &root.join(dest)).unwrap();
    }
    // And back (pull) through the lossy link.
    let pulled = t.path().join("pulled");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.b,
            BLIT,
            "xfer",
            &d.url("four"),
            s(&pulled),
            "--no-progress",
            "--json",
        ])
        .output()
        .unwrap();
    ok(&out);
    compare_trees(&src, &pulled).unwrap();
    drop(d);
    assert!(temp_files(&root).is_empty());
}

/// `--mem` (issue 16, item 7): generated data to a verifying sink, both directions, without
/// touching the daemon's path or any local directory; a local side other than `-` is refused.
#[test]
fn memory_sessions_push_and_pull_without_files() {
    let t = scratch();
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root, &["--read-only"]);
    let n: u64 = 9 * (1 << 20) + 4321;
    let size = n.to_string();
    for (src, dst) in [("-".to_string(), d.url("never")), (d.url("never"), "-".to_string())] {
        for streams in ["1", "3"] {
            let j = ok(&xfer(&src, &dst, &["--mem", &size, "--streams", streams]));
            assert_eq!((j["files"].as_u64(), j["bytes"].as_u64()), (Some(1), Some(n)), "{j}");
            assert_eq!(j["error_count"], 0, "{j}");
        }
    }
    let j = ok(&xfer("-", "-", &["--mem", &size]));
    assert_eq!(j["bytes"].as_u64(), Some(n), "{j}");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "the daemon's root changed");
    let out = xfer(s(t.path()), &d.url("x"), &["--mem", &size]);
    assert_eq!(out.status.code(), Some(2), "a directory as the local side of --mem: usage");
    let out = xfer("-", &d.url("x"), &["--mem", "0"]);
    assert_eq!(out.status.code(), Some(2), "--mem 0: usage");
}

/// `--tcp-zero-copy` (issue 16, item 2): both ends take the zero-copy paths — in a push the
/// client sends with `sendfile` and the daemon receives with `splice`, in a pull the reverse —
/// and the copies are exact; without the flag neither call is made. Watched with strace on
/// both processes (ci/deps.sh installs it).
#[test]
fn tcp_zero_copy_uses_sendfile_and_splice_on_both_ends() {
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = Rng::new(16);
    write_random(&src.join("big"), 9 * (1 << 20) + 777, &mut rng);
    write_random(&src.join("other"), 5 * (1 << 20), &mut rng);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let dlog = t.path().join("daemon.strace");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=sendfile,splice", "-o"])
        .arg(&dlog)
        .arg(BLIT)
        .arg("daemon")
        .arg("--root")
        .arg(&root)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("strace (ci/deps.sh installs it)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("daemon exited before listening").unwrap();
        if let Some(a) = line.strip_prefix("blit daemon listening on ") {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let d = Daemon { child, addr };
    let calls = |log: &Path, call: &str| -> usize {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines().filter(|l| l.contains(&format!("{call}("))).count()
    };
    let run = |src: &str, dst: &str, extra: &[&str]| -> (usize, usize, usize, usize) {
        let clog = t.path().join("client.strace");
        let before = (calls(&dlog, "sendfile"), calls(&dlog, "splice"));
        let out = Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=sendfile,splice", "-o"])
            .arg(&clog)
            .args([BLIT, "xfer", src, dst, "--no-progress", "--transport", "tcp"])
            .args(extra)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        // The daemon's session threads have ended when the client has its summary.
        let (sf, sp) = (calls(&dlog, "sendfile") - before.0, calls(&dlog, "splice") - before.1);
        (calls(&clog, "sendfile"), calls(&clog, "splice"), sf, sp)
    };
    let (c_sf, _, _, d_sp) = run(s(&src), &d.url("zc"), &["--tcp-zero-copy"]);
    assert!(c_sf > 0 && d_sp > 0, "push: client sendfile {c_sf}, daemon splice {d_sp}");
    compare_trees(&src, &root.join("zc")).unwrap();
    let pulled = t.path().join("pulled");
    let (_, c_sp, d_sf, _) = run(&d.url("zc"), s(&pulled), &["--tcp-zero-copy"]);
    assert!(d_sf > 0 && c_sp > 0, "pull: daemon sendfile {d_sf}, client splice {c_sp}");
    compare_trees(&src, &pulled).unwrap();
    let (c_sf, c_sp, d_sf, d_sp) = run(s(&src), &d.url("plain"), &[]);
    assert_eq!((c_sf, c_sp, d_sf, d_sp), (0, 0, 0, 0), "zero-copy calls without the flag");
    compare_trees(&src, &root.join("plain")).unwrap();
}
