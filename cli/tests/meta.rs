//! Extended attributes, POSIX ACLs and special files (issue 19, item 2): a tree copied by blit
//! locally, pushed and pulled ends up as `rsync -aAXD` makes it, as `getfattr`, `getfacl` and
//! `stat` see it; daemons drop what their operator did not allow and say so.
//!
//! Needs rsync, getfattr (attr) and getfacl/setfacl (acl) — ci/deps.sh installs them; without
//! them each test says why it did not run. Root-only parts (trusted.*, device nodes) run as
//! root, as CI does.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BLIT: &str = env!("CARGO_BIN_EXE_blit");

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The tools the comparison needs, or why it cannot run.
fn tools() -> Result<(), String> {
    for tool in ["rsync", "getfattr", "setfattr", "getfacl", "setfacl"] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        if !found {
            return Err(format!("{tool} is not installed (ci/deps.sh installs it)"));
        }
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("probe"), b"").unwrap();
    if !run("setfattr", &["-n", "user.probe", "-v", "1", s(&t.path().join("probe"))]) {
        return Err(format!("{} has no user extended attributes", t.path().display()));
    }
    Ok(())
}

macro_rules! require_tools {
    () => {
        if let Err(why) = tools() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).status().is_ok_and(|st| st.success())
}

fn must(cmd: &str, args: &[&str]) {
    assert!(run(cmd, args), "{cmd} {args:?} failed");
}

/// A tree with every kind of metadata this item carries: user.* (and trusted.*/security.* as
/// root) on a file and a directory, an access ACL on a file, access and default ACLs on a
/// directory, a FIFO, a socket, a symlink and (as root) character and block devices.
fn meta_tree(root: &Path) {
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::write(root.join("f"), b"hello").unwrap();
    std::fs::write(root.join("d/sub/g"), b"inner").unwrap();
    std::fs::write(root.join("plain"), b"no attributes").unwrap();
    let p = |n: &str| root.join(n).to_str().unwrap().to_string();
    must("setfattr", &["-n", "user.color", "-v", "blue", &p("f")]);
    must("setfattr", &["-n", "user.empty", &p("f")]);
    must("setfattr", &["-n", "user.bin", "-v", "0x00ff10", &p("d/sub/g")]);
    must("setfattr", &["-n", "user.dir", "-v", "yes", &p("d")]);
    must("setfacl", &["-m", "u:65534:rx,g:65534:r", &p("f")]);
    must("setfacl", &["-m", "u:65534:rwx", &p("d")]);
    must("setfacl", &["-d", "-m", "u:65534:rx,o::-", &p("d")]);
    if is_root() {
        must("setfattr", &["-n", "trusted.note", "-v", "t", &p("f")]);
        // cap_net_bind_service=ep
        let cap = "0s AQAAAgAEAAAAAAAAAAAAAAAAAAA=".replace(' ', "");
        must("setfattr", &["-n", "security.capability", "-v", &cap, &p("plain")]);
        must("mknod", &[&p("d/null"), "c", "1", "3"]);
        must("mknod", &[&p("loop"), "b", "7", "200"]);
    }
    must("mkfifo", &[&p("d/fifo")]);
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    std::os::unix::fs::symlink("f", root.join("link")).unwrap();
    // Fixed times, so that a copy's times are its own doing (rsync leaves a node made in the
    // second its source was made with the time mknod gave it).
    let specials = ["d/fifo", "sock", "link", "d/null", "loop"].map(p);
    let specials: Vec<&str> =
        specials.iter().map(String::as_str).filter(|p| Path::new(p).exists()).collect();
    must("touch", &[&["-h", "-d", "2021-02-03 04:05:06.789"][..], &specials].concat());
    must("touch", &["-d", "2021-02-03 04:05:06.789", &p("f"), &p("d/sub/g"), &p("d/sub")]);
}

/// What the tools say about a tree (paths relative to it): every attribute (not following
/// symlinks), every ACL, and each path's type, mode, owner, device number and mtime.
fn snapshot(root: &Path) -> String {
    let tool = |cmd: &str, args: &[&str]| -> String {
        let out = Command::new(cmd).args(args).current_dir(root).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let xattrs = tool("getfattr", &["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."]);
    let acls = tool("getfacl", &["-R", "-P", "-p", "-n", "."]);
    let stat = tool(
        "sh",
        &["-c", "find . -mindepth 1 -exec stat -c '%n %F %a %u:%g %t:%T %.9Y' {} + | sort"],
    );
    // getfattr and getfacl print directories in readdir order: compare sorted blocks.
    let blocks = |text: &str| {
        let mut b: Vec<String> = text.split("\n\n").map(|s| s.trim().to_string()).collect();
        b.sort();
        b.join("\n\n")
    };
    format!(
        "== xattrs\n{}\n== acls\n{}\n== stat (top-level dir aside)\n{stat}",
        blocks(&xattrs),
        blocks(&acls)
    )
}

fn rsync_copy(src: &Path, dst: &Path) {
    let from = format!("{}/", s(src));
    must("rsync", &["-aAXD", "--numeric-ids", &from, s(dst)]);
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

const ALLOW_ALL: &[&str] =
    &["--allow-owners", "--allow-setid", "--allow-xattrs-privileged", "--allow-devices"];

#[test]
fn local_push_and_pull_match_rsync_aaxd() {
    require_tools!();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    meta_tree(&src);
    let reference = t.path().join("rsync");
    rsync_copy(&src, &reference);
    let want = snapshot(&reference);
    assert!(want.contains("user.color") && want.contains("default:user:65534:r-x"), "{want}");

    let local = t.path().join("local");
    let j = ok(&xfer(s(&src), s(&local), &[]));
    assert_eq!(snapshot(&local), want, "local copy differs from rsync -aAXD");
    let specials = if is_root() { 4 } else { 2 };
    assert_eq!((j["specials"].as_u64(), j["xattrs_dropped"].as_u64()), (Some(specials), Some(0)));

    let export = t.path().join("export");
    std::fs::create_dir(&export).unwrap();
    let d = Daemon::start(&export, ALLOW_ALL);
    ok(&xfer(s(&src), &d.url("pushed"), &[]));
    assert_eq!(snapshot(&export.join("pushed")), want, "push differs from rsync -aAXD");
    let pulled = t.path().join("pulled");
    ok(&xfer(&d.url("pushed"), s(&pulled), &[]));
    assert_eq!(snapshot(&pulled), want, "pull differs from rsync -aAXD");

    // A second run finds everything up to date.
    for (from, to) in
        [(s(&src).to_string(), s(&local).to_string()), (d.url("pushed"), s(&pulled).into())]
    {
        let j = ok(&xfer(&from, &to, &[]));
        assert_eq!((j["files"].as_u64(), j["specials"].as_u64()), (Some(0), Some(0)), "{j}");
        assert_eq!(j["meta_updated"].as_u64(), Some(0), "{j}");
    }
}

/// A change of attributes or ACLs alone is a metadata update (rsync -X/-A do the same): set,
/// changed and removed attributes reach the copy without its data being sent again.
#[test]
fn attribute_only_changes_are_metadata_updates() {
    require_tools!();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    meta_tree(&src);
    let dst = t.path().join("dst");
    ok(&xfer(s(&src), s(&dst), &[]));
    let f = src.join("f");
    must("setfattr", &["-n", "user.color", "-v", "red", s(&f)]);
    must("setfattr", &["-x", "user.empty", s(&f)]);
    must("setfattr", &["-n", "user.new", "-v", "1", s(&src.join("plain"))]);
    must("setfacl", &["-b", s(&f)]);
    must("touch", &["-d", "2021-02-03 04:05:06.789", s(&f)]);
    let j = ok(&xfer(s(&src), s(&dst), &[]));
    assert_eq!(j["files"].as_u64(), Some(0), "{j}");
    assert_eq!(j["meta_updated"].as_u64(), Some(2), "{j}");
    let reference = t.path().join("rsync");
    rsync_copy(&src, &reference);
    assert_eq!(snapshot(&dst), snapshot(&reference));
}

#[test]
fn no_xattrs_and_no_acls_opt_out() {
    require_tools!();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    meta_tree(&src);
    let a = t.path().join("a");
    ok(&xfer(s(&src), s(&a), &["--no-xattrs"]));
    let snap = snapshot(&a);
    assert!(!snap.contains("user.color") && !snap.contains("trusted."), "{snap}");
    assert!(snap.contains("user:65534:r-x"), "ACLs still copied: {snap}");
    let b = t.path().join("b");
    ok(&xfer(s(&src), s(&b), &["--no-acls"]));
    let snap = snapshot(&b);
    assert!(snap.contains("user.color") && !snap.contains("user:65534"), "{snap}");
}

/// A default daemon (as root) keeps user.* and ACLs, makes FIFOs and sockets, and drops
/// trusted.*/security.* and device nodes, which the client reports.
#[test]
fn a_default_daemon_drops_privileged_attributes_and_devices() {
    require_tools!();
    if !is_root() {
        eprintln!("skipped: needs root (trusted.* and device nodes)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    meta_tree(&src);
    let export = t.path().join("export");
    std::fs::create_dir(&export).unwrap();
    let d = Daemon::start(&export, &[]);
    let out = xfer(s(&src), &d.url("p"), &[]);
    let j = ok(&out);
    // trusted.note and security.capability dropped; both devices refused.
    assert_eq!((j["xattrs_dropped"].as_u64(), j["unsupported"].as_u64()), (Some(2), Some(2)));
    assert_eq!(j["specials"].as_u64(), Some(2), "{j}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("device node not made"), "{stderr}");
    let snap = snapshot(&export.join("p"));
    assert!(!snap.contains("trusted.") && !snap.contains("security.capability"), "{snap}");
    assert!(snap.contains("user.color") && snap.contains("default:user:65534:r-x"), "{snap}");
    assert!(!export.join("p/d/null").exists() && !export.join("p/loop").exists());
    assert!(export.join("p/d/fifo").exists() && export.join("p/sock").exists());
    let text =
        Command::new(BLIT).args(["xfer", s(&src), &d.url("q"), "--no-progress"]).output().unwrap();
    let line = String::from_utf8_lossy(&text.stderr);
    assert!(line.contains("dropped 2 extended attributes"), "{line}");
    // Nor does it serve its root-only attributes to whoever pulls.
    meta_tree(&export.join("served"));
    let pulled = t.path().join("pulled");
    ok(&xfer(&d.url("served"), s(&pulled), &[]));
    let snap = snapshot(&pulled);
    assert!(!snap.contains("trusted.") && !snap.contains("security.capability"), "{snap}");
    assert!(snap.contains("user.color"), "{snap}");
}

/// An unprivileged user copies FIFOs and sockets and user.* attributes; device nodes it
/// cannot make are reported, not failed.
#[test]
fn unprivileged_copies_report_device_nodes_as_skipped() {
    require_tools!();
    if !is_root() || !run("setpriv", &["--help"]) {
        eprintln!("skipped: needs root (to make a device node) and setpriv");
        return;
    }
    let t = tempfile::Builder::new().prefix("blit-meta-").tempdir_in("/tmp").unwrap();
    must("chmod", &["0755", s(t.path())]);
    let src = t.path().join("src");
    meta_tree(&src);
    must("chmod", &["-R", "a+rX", s(&src)]);
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    must("chown", &["65534:65534", s(&dst)]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BLIT, "xfer"])
        .args([s(&src), s(&dst), "--no-progress", "--json"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let j = ok(&out);
    assert_eq!((j["unsupported"].as_u64(), j["specials"].as_u64()), (Some(2), Some(2)), "{j}");
    assert!(dst.join("d/fifo").exists() && dst.join("sock").exists());
    assert!(!dst.join("d/null").exists());
    let snap = snapshot(&dst);
    assert!(snap.contains("user.color") && !snap.contains("trusted."), "{snap}");
}
