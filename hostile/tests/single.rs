//! Issue 19's single files and moves, turned against the other end: a hostile daemon that
//! claims to send one file but lists more (the client writes nothing), and a raw client that
//! asks a read-only daemon to remove what it pulls (refused, nothing removed).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use blitx_hostile::daemon::{Behaviour, HostileDaemon, PullScript};
use blitx_hostile::msg;
use blitx_hostile::process::{DaemonProc, s, xfer};
use blitx_hostile::raw::RawClient;
use blitx_hostile::{pb, scratch};

const WAIT: Duration = Duration::from_secs(20);

/// A single-file pull lands in a directory the user named (often a home or a busy directory):
/// a daemon that lists anything but one regular file there is refused before a byte is written.
#[test]
fn a_single_file_pull_that_lists_more_writes_nothing() {
    let t = scratch("single-more");
    let local = t.path().join("local");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join(".bashrc"), b"mine").unwrap();
    let scripts = [
        vec![msg::file(1, "f", 5, 0o644), msg::file(2, ".bashrc", 5, 0o644)],
        vec![msg::dir(1, "d", 0o755)],
        vec![msg::symlink(1, ".bashrc", b"/etc/passwd")],
    ];
    for listing in scripts {
        let script = PullScript {
            messages: vec![msg::root(msg::root_entry(0o755)), msg::listing("", listing, true)],
            contents: HashMap::from([(1, b"owned".to_vec()), (2, b"owned".to_vec())]),
            streams: 1,
            finish: true,
            single_file: true,
        };
        let hd = HostileDaemon::start(Behaviour::Pull(script)).unwrap();
        let r = xfer(&[&hd.url("x/f"), s(&local)], WAIT);
        let ctx = format!("client: {}\ndaemon log: {:?}", r.describe(), hd.log());
        assert!(!r.timed_out, "the client hung; {ctx}");
        assert_ne!(r.code(), Some(0), "a hostile single-file listing was accepted; {ctx}");
        let mut names: Vec<_> = std::fs::read_dir(&local)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".bashrc"], "{ctx}");
        assert_eq!(std::fs::read(local.join(".bashrc")).unwrap(), b"mine");
    }
}

/// `--remove-source-files` on a pull removes the daemon's files: a read-only daemon refuses the
/// Open whatever the client is, with READ_ONLY, and removes nothing.
#[test]
fn a_read_only_daemon_refuses_a_raw_moving_pull() {
    let t = scratch("ro-move");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("f"), b"keep").unwrap();
    let d = DaemonProc::start(&root, &["--read-only"]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    for path in ["", "f"] {
        let mut open = msg::open_pull(path);
        open.params.as_mut().unwrap().remove_source_files = true;
        let mut sess = c.session(Some(open));
        let end = sess.finish(WAIT);
        assert!(end.is_refusal(), "{path:?}: {}", end.describe());
        assert!(
            matches!(&end, blitx_hostile::raw::End::Error(e) if e.code == pb::ErrorCode::ReadOnly as i32),
            "{path:?}: {}",
            end.describe()
        );
    }
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"keep");
    // The same pull without the flag is served.
    let r = xfer(&[&format!("blit://{}/f", d.addr), s(&t.path().join("out"))], WAIT);
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(root.join("f").exists());
}

/// A moving pull's client that reports files committed before the data ended (here, before it
/// answered a single listing) breaks the protocol: the daemon's session fails and removes
/// nothing.
#[test]
fn a_commit_report_before_the_data_ended_removes_nothing() {
    let t = scratch("early-commit");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("f"), b"keep").unwrap();
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    let mut open = msg::open_pull("");
    open.params.as_mut().unwrap().remove_source_files = true;
    let (mut sess, _data) = c.open_with_data(open).unwrap();
    let committed = pb::TargetMsg {
        msg: Some(pb::target_msg::Msg::Committed(pb::SingleCommitted {
            ids: (0..16).collect(),
            last: true,
        })),
    };
    sess.send_target(committed).unwrap();
    let end = sess.finish(WAIT);
    assert!(end.is_refusal(), "{}", end.describe());
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"keep");
}
