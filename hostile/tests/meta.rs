//! Extended attributes and special files a peer sends (issue 19, item 2): a raw client pushing
//! file capabilities, trusted.* attributes, device nodes, blit's own resume journal, 10,000
//! attributes or a 1 MiB value to a default daemon, and a scripted daemon sending the same to
//! the stock client on a pull. Each is dropped, refused or bounded, with nothing else changed.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use blitx_hostile::daemon::{Behaviour, HostileDaemon, PullScript};
use blitx_hostile::msg::{self, Kind};
use blitx_hostile::process::{DaemonProc, Finished, s, xfer};
use blitx_hostile::raw::{DataStreams, End, RawClient, Session};
use blitx_hostile::{is_root, pb, scratch};

const STEP: Duration = Duration::from_secs(10);
const CLIENT_WAIT: Duration = Duration::from_secs(20);

fn x(name: &str, value: &[u8]) -> pb::MetaXattr {
    pb::MetaXattr { name: name.as_bytes().to_vec(), value: value.to_vec() }
}

/// cap_net_bind_service=ep, as `setcap` writes it.
const CAPABILITY: &[u8] = &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn device(id: u64, path: &str, rdev: u64) -> pb::Entry {
    let (uid, gid) = msg::my_ids();
    let mut e = msg::entry(id, path, Kind::Special, 0, 0o666, uid, gid);
    e.special = pb::MetaSpecial::Block as i32;
    e.rdev = rdev;
    e
}

fn fifo(id: u64, path: &str) -> pb::Entry {
    let (uid, gid) = msg::my_ids();
    let mut e = msg::entry(id, path, Kind::Special, 0, 0o644, uid, gid);
    e.special = pb::MetaSpecial::Fifo as i32;
    e
}

/// Sends one listing of the root, answers the Need with `contents`, and ends the push.
fn push_one(
    s: &mut Session,
    data: &mut DataStreams,
    entries: Vec<pb::Entry>,
    contents: &[(u64, &[u8])],
) -> (End, Vec<String>) {
    let mut notes = Vec::new();
    let run = |notes: &mut Vec<String>| -> Result<(), String> {
        s.send_source(msg::root(msg::root_entry(0o755)))?;
        s.send_source(msg::listing("", entries, true))?;
        let ids = s.need(STEP)?;
        notes.push(format!("daemon needs {ids:?}"));
        let files: Vec<(u64, &[u8])> =
            contents.iter().filter(|(id, _)| ids.contains(id)).copied().collect();
        if !files.is_empty() {
            data.send_bundle(0, &files).map_err(|e| format!("data plane: {e}"))?;
        }
        s.send_source(msg::manifest_end())?;
        s.need_end(STEP)?;
        data.end_all().map_err(|e| format!("data plane: {e}"))?;
        s.send_source(msg::data_end())?;
        Ok(())
    };
    if let Err(e) = run(&mut notes) {
        notes.push(format!("script cut short: {e}"));
    }
    (s.finish(STEP), notes)
}

fn names(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(path, &mut buf[..]).unwrap();
    buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn entries_in(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_default_daemon_drops_capabilities_trusted_attributes_and_device_nodes() {
    if !is_root() {
        eprintln!("skipped: needs root (a daemon that could set them, to show it does not)");
        return;
    }
    let t = scratch("meta-push-priv");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = DaemonProc::start(&root, &[]).unwrap();
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(msg::open_push("t")).unwrap();
    let mut f = msg::file(1, "tool", 4, 0o755);
    f.xattrs = vec![
        x("security.capability", CAPABILITY),
        x("system.nfs4_acl", b"x"),
        x("trusted.overlay.opaque", b"y"),
        x("user.blit.part", b"forged journal"),
        x("user.ok", b"1"),
    ];
    let entries = vec![f, device(2, "sda", 8 << 8), fifo(3, "pipe")];
    let (end, notes) = push_one(&mut sess, &mut data, entries, &[(1, b"#!/x")]);
    let ctx = format!("session end: {}; {notes:?}", end.describe());
    let End::Summary(sum) = &end else { panic!("no summary: {ctx}") };
    assert!(sum.fatal.is_empty(), "{ctx}");
    assert_eq!((sum.xattrs_dropped, sum.unsupported, sum.specials), (4, 1, 1), "{ctx}");
    assert_eq!(names(&root.join("t/tool")), vec!["user.ok".to_string()], "{ctx}");
    assert_eq!(entries_in(&root.join("t")), vec!["pipe", "tool"], "{ctx}");
}

#[test]
fn a_daemon_refuses_entries_beyond_the_attribute_bounds() {
    let many: Vec<pb::MetaXattr> = (0..10_000).map(|i| x(&format!("user.a{i:05}"), b"v")).collect();
    let cases = [
        ("10,000 attributes", many),
        ("a 1 MiB value", vec![x("user.big", &vec![7u8; 1 << 20])]),
        ("a name of 300 bytes", vec![x(&format!("user.{}", "n".repeat(295)), b"v")]),
        ("a name twice", vec![x("user.a", b"1"), x("user.a", b"2")]),
        ("an empty name", vec![x("", b"1")]),
    ];
    for (what, xattrs) in cases {
        let t = scratch("meta-push-bounds");
        let root = t.path().join("export");
        std::fs::create_dir(&root).unwrap();
        let d = DaemonProc::start(&root, &[]).unwrap();
        let c = RawClient::connect(&d.addr).unwrap();
        let (mut sess, mut data) = c.open_with_data(msg::open_push("t")).unwrap();
        let mut f = msg::file(1, "f", 2, 0o644);
        f.xattrs = xattrs;
        let (end, notes) = push_one(&mut sess, &mut data, vec![f], &[(1, b"hi")]);
        let ctx = format!("{what}: session end: {}; {notes:?}", end.describe());
        assert!(end.is_refusal(), "{ctx}");
        assert!(!root.join("t/f").exists(), "{ctx}");
    }
}

/// Runs the stock client against a daemon following `script`.
fn pull(script: PullScript, target: &Path) -> Finished {
    let hd = HostileDaemon::start(Behaviour::Pull(script)).unwrap();
    let url = hd.url("x");
    xfer(&[&url, s(target), "--json"], CLIENT_WAIT)
}

fn script(entries: Vec<pb::Entry>, contents: HashMap<u64, Vec<u8>>) -> PullScript {
    PullScript {
        messages: vec![msg::root(msg::root_entry(0o755)), msg::listing("", entries, true)],
        contents,
        streams: 1,
        finish: true,
        single_file: false,
    }
}

#[test]
fn a_pulling_client_refuses_entries_beyond_the_attribute_bounds() {
    let many: Vec<pb::MetaXattr> = (0..10_000).map(|i| x(&format!("user.a{i:05}"), b"v")).collect();
    for (what, xattrs) in
        [("10,000 attributes", many), ("a 1 MiB value", vec![x("user.big", &vec![7u8; 1 << 20])])]
    {
        let t = scratch("meta-pull-bounds");
        let local = t.path().join("local");
        let mut f = msg::file(1, "f", 2, 0o644);
        f.xattrs = xattrs;
        let r = pull(script(vec![f], HashMap::from([(1, b"hi".to_vec())])), &local);
        let ctx = format!("{what}: client: {}", r.describe());
        assert!(!r.timed_out, "{ctx}");
        assert_ne!(r.code(), Some(0), "{ctx}");
        assert!(!local.join("f").exists(), "{ctx}");
    }
}

#[test]
fn a_pulling_client_never_takes_the_resume_journal_or_unknown_namespaces() {
    let t = scratch("meta-pull-names");
    let local = t.path().join("local");
    let mut f = msg::file(1, "f", 2, 0o644);
    f.xattrs = vec![
        x("system.nfs4_acl", b"x"),
        x("user.blit.part", b"forged"),
        x("user.blit.tmp", b"1"),
        x("user.ok", b"1"),
    ];
    let r = pull(script(vec![f], HashMap::from([(1, b"hi".to_vec())])), &local);
    let ctx = format!("client: {}", r.describe());
    assert_eq!(r.code(), Some(0), "{ctx}");
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["xattrs_dropped"], 3, "{ctx}");
    assert_eq!(names(&local.join("f")), vec!["user.ok".to_string()], "{ctx}");
}

#[test]
fn a_pulling_client_refuses_inconsistent_special_entries() {
    let (uid, gid) = msg::my_ids();
    let mut typeless = msg::entry(1, "s", Kind::Special, 0, 0o644, uid, gid);
    typeless.special = pb::MetaSpecial::None as i32;
    let mut file_with_type = msg::file(1, "s", 0, 0o644);
    file_with_type.special = pb::MetaSpecial::Char as i32;
    let mut fifo_with_rdev = fifo(1, "s");
    fifo_with_rdev.rdev = 7;
    let mut unknown = fifo(1, "s");
    unknown.special = 99;
    for (what, e) in [
        ("a special file of no type", typeless),
        ("a file with a special type", file_with_type),
        ("a FIFO with a device number", fifo_with_rdev),
        ("an unknown special type", unknown),
    ] {
        let t = scratch("meta-pull-special");
        let local = t.path().join("local");
        let r = pull(script(vec![e], HashMap::new()), &local);
        let ctx = format!("{what}: client: {}", r.describe());
        assert!(!r.timed_out, "{ctx}");
        assert_ne!(r.code(), Some(0), "{ctx}");
        assert!(!local.join("s").exists(), "{ctx}");
    }
}
