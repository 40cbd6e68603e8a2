//! `--io auto|buffered|direct` (issue 16, item 4): direct I/O copies exactly — aligned and
//! unaligned sizes, sparse files kept sparse — and leaves the page cache empty on both ends of a
//! local copy, a push and a pull; io_uring carries it, and `pread`/`pwrite` where io_uring is
//! refused. The page cache is read with `fincore` (util-linux), the system calls with strace.
//!
//! Runs in /var/tmp (a disk file system here and on CI; tmpfs would make every check moot):
//! skipped with a reason where that directory does not take O_DIRECT.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use blitx_storage::testkit::compare_trees;

const BLIT: &str = env!("CARGO_BIN_EXE_blit");
const O_DIRECT: i32 = 0o40000;

/// The tests of this file drop the page cache and then read it: they run one at a time (a
/// concurrent drop would evict what another test expects to find cached).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A scratch directory on a disk file system that takes O_DIRECT, or `None` (skip).
fn disk_scratch() -> Option<tempfile::TempDir> {
    let base = std::env::var_os("BLIT_DIRECT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into());
    let t = tempfile::Builder::new().prefix("blit-direct-").tempdir_in(&base).ok()?;
    let probe = t.path().join("probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(O_DIRECT)
        .open(&probe)
        .is_ok();
    let tmpfs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(t.path())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs");
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
        eprintln!("SKIPPED: cannot drop the page cache (not root), so cannot tell what filled it");
        return None;
    }
    if !ok || tmpfs {
        eprintln!(
            "SKIPPED: {} does not take O_DIRECT on a disk file system",
            Path::new(&base).display()
        );
        return None;
    }
    std::fs::remove_file(probe).unwrap();
    Some(t)
}

/// Bytes of `path` in the page cache.
fn cached_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux)");
    assert!(
        out.status.success(),
        "fincore {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn drop_caches() {
    // Written source files are dirty pages until written back: sync first. As root (tests run
    // as root here and on CI); otherwise the cache just stays.
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Deterministic, incompressible-enough contents.
fn write_file(path: &Path, len: usize, seed: u8) {
    let data: Vec<u8> =
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed).collect();
    std::fs::write(path, data).unwrap();
}

/// Sizes around every alignment edge: whole chunks, a partial last chunk, a tail under one
/// block, a file shorter than a block, and a sparse file (which stays buffered and sparse).
fn source_tree(src: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(src.join("d")).unwrap();
    let sizes = [(4 << 20) * 2, (4 << 20) + (1 << 20), (5 << 20) + 1234, 3 * 4096 + 1, 3];
    let mut big = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let p = src.join(format!("d/f{i}"));
        write_file(&p, n, i as u8);
        if n >= 4096 {
            big.push(p);
        }
    }
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    drop(sparse);
    std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("sparse"))
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"data", 32 << 20))
        .unwrap();
    big
}

fn xfer(src: &str, dst: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BLIT);
    c.args(["xfer", src, dst, "--no-progress", "--small-file-max", "0"]).args(extra);
    c.env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

fn rel<'a>(files: &'a [PathBuf], src: &Path) -> impl Iterator<Item = &'a Path> {
    files.iter().map(move |p| p.strip_prefix(src).unwrap())
}

/// Every large file of `dst` (named relative to `src`) is out of the page cache — or, with
/// `expect_cached`, in it (the check can tell the two apart).
fn assert_cache(files: &[PathBuf], src: &Path, dst: &Path, expect_cached: bool, what: &str) {
    for f in rel(files, src) {
        let cached = cached_bytes(&dst.join(f));
        if expect_cached {
            assert!(cached > 0, "{what}: {} is not in the page cache", f.display());
        } else {
            assert_eq!(cached, 0, "{what}: {} left {cached} bytes in the page cache", f.display());
        }
    }
}

fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn local_copy_direct_is_exact_and_bypasses_the_page_cache() {
    let _serial = serial();
    let Some(t) = disk_scratch() else { return };
    let src = t.path().join("src");
    let big = source_tree(&src);
    for (mode, cached) in [("direct", false), ("buffered", true)] {
        drop_caches();
        let dst = t.path().join(mode);
        assert_ok(&xfer(src.to_str().unwrap(), dst.to_str().unwrap(), &["--io", mode], &[]));
        // Before anything reads the copies.
        assert_cache(&big, &src, &dst, cached, mode);
        assert_cache(&big, &src, &src, cached, &format!("{mode} (the source's reads)"));
        compare_trees(&src, &dst).unwrap();
        assert!(
            allocated_bytes(&dst.join("sparse")) < 1 << 20,
            "{mode}: the sparse file was filled"
        );
    }
}

/// io_uring moves the data; with io_uring refused (`BLIT_IO_URING=0`, as under a seccomp
/// profile) the same direct descriptors take `pwrite`s and the copy is still exact and uncached.
#[test]
fn direct_io_uses_io_uring_and_falls_back_to_pwrite() {
    let _serial = serial();
    let Some(t) = disk_scratch() else { return };
    let src = t.path().join("src");
    let big = source_tree(&src);
    let count = |dst: &Path, env: &[(&str, &str)]| -> (usize, usize) {
        drop_caches();
        let log = t.path().join("strace.log");
        let mut c = Command::new("strace");
        c.args(["-f", "-qq", "-e", "trace=io_uring_enter,pwrite64", "-o"]).arg(&log).arg(BLIT);
        c.arg("xfer").arg(&src).arg(dst).args([
            "--no-progress",
            "--small-file-max",
            "0",
            "--io",
            "direct",
        ]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("strace (ci/deps.sh installs it)");
        assert_ok(&out);
        assert_cache(&big, &src, dst, false, "direct");
        compare_trees(&src, dst).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let n = |call: &str| text.lines().filter(|l| l.contains(call)).count();
        (n("io_uring_enter("), n("pwrite64("))
    };
    let (enters, pwrites) = count(&t.path().join("uring"), &[]);
    assert!(enters > 0, "no io_uring_enter with --io direct");
    // 8 direct chunks (2 + 2 + 2 + 1 + 1, the 3-byte file padded to a block); the sparse file's
    // one data block is the only buffered write.
    assert!(pwrites <= 2, "{pwrites} pwrites: chunks went through pwrite, not io_uring");
    let (enters, pwrites) = count(&t.path().join("fallback"), &[("BLIT_IO_URING", "0")]);
    assert_eq!(enters, 0, "io_uring used although refused");
    assert!(pwrites > 8, "only {pwrites} pwrites in the fallback");
}

/// A daemon process on loopback, killed on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(root: &Path) -> Daemon {
        let mut child = Command::new(BLIT)
            .arg("daemon")
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0"])
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Push and pull with `--io direct`: the daemon writes (push) and reads (pull) around its page
/// cache, and so does the client.
#[test]
fn push_and_pull_direct_bypass_the_page_cache_on_both_ends() {
    let _serial = serial();
    let Some(t) = disk_scratch() else { return };
    let src = t.path().join("src");
    let big = source_tree(&src);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root);
    let url = format!("blit://{}/pushed", d.addr);
    drop_caches();
    assert_ok(&xfer(src.to_str().unwrap(), &url, &["--io", "direct"], &[]));
    assert_cache(&big, &src, &root.join("pushed"), false, "push, daemon's writes");
    assert_cache(&big, &src, &src, false, "push, client's reads");
    drop_caches();
    let pulled = t.path().join("pulled");
    assert_ok(&xfer(&url, pulled.to_str().unwrap(), &["--io", "direct", "--streams", "1"], &[]));
    assert_cache(&big, &src, &pulled, false, "pull, client's writes");
    assert_cache(&big, &src, &root.join("pushed"), false, "pull, daemon's reads");
    compare_trees(&src, &root.join("pushed")).unwrap();
    compare_trees(&src, &pulled).unwrap();
}

/// `auto` (the default) goes direct for files of 64 MiB and more on a disk, buffered below.
#[test]
fn auto_goes_direct_for_large_files_only() {
    let _serial = serial();
    let Some(t) = disk_scratch() else { return };
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_file(&src.join("large"), 64 << 20, 1);
    write_file(&src.join("medium"), 8 << 20, 2);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = Daemon::start(&root);
    drop_caches();
    assert_ok(&xfer(src.to_str().unwrap(), &format!("blit://{}/p", d.addr), &[], &[]));
    assert_eq!(
        cached_bytes(&root.join("p/large")),
        0,
        "auto: the 64 MiB file went through the cache"
    );
    assert!(cached_bytes(&root.join("p/medium")) > 0, "auto: the 8 MiB file went direct");
    compare_trees(&src, &root.join("p")).unwrap();
}

#[test]
fn io_depth_is_bounded() {
    for bad in ["0", "65"] {
        let out = Command::new(BLIT)
            .args(["xfer", "/nonexistent", "/nonexistent2", "--io-depth", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--io-depth {bad}");
    }
}

/// A read-only file (0444) copied by an unprivileged user still goes direct: its temp file is
/// created writable for the direct descriptor and gets its real mode at commit. (Before, the
/// second open failed with EACCES and the file quietly went through the page cache.)
#[test]
fn read_only_files_go_direct_for_an_unprivileged_user() {
    let _serial = serial();
    let Some(t) = disk_scratch() else { return };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: setpriv (util-linux) is missing");
        return;
    }
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let ro = src.join("ro");
    write_file(&ro, (5 << 20) + 3, 9);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("chown").args(["-R", "65534:65534"]).arg(t.path()).status().unwrap();
    assert!(st.success());
    drop_caches();
    let dst = t.path().join("dst");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BLIT, "xfer"])
        .arg(&src)
        .arg(&dst)
        .args(["--no-progress", "--small-file-max", "0", "--io", "direct"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(cached_bytes(&dst.join("ro")), 0, "the read-only file went through the page cache");
    let mode = std::fs::metadata(dst.join("ro")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o444, "the copy's mode");
    compare_trees(&src, &dst).unwrap();
}
