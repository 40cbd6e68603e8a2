//! Hostile raw-gRPC clients of the remote operations (RemoteList, RemoteUsage, RemoteRemove,
//! RemoteMakeDir): path tricks, symlinks out of the root, the root itself, a read-only daemon,
//! huge listings against the daemon's limits, operations that hold the session slots, and a
//! removal of a directory a push is writing into.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use blitx_hostile::pb;
use blitx_hostile::process::DaemonProc;
use blitx_hostile::raw::{RawClient, runtime};
use blitx_hostile::{msg, scratch, wait_until};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn version(c: &RawClient) -> u32 {
    c.daemon_version().unwrap_or(blitx_hostile::PROTOCOL_VERSION)
}

/// Every page of a listing, or the status that ended it.
fn list(
    c: &RawClient,
    path: &[u8],
    recursive: bool,
) -> Result<Vec<pb::RemoteListPage>, tonic::Status> {
    let mut g = c.grpc();
    let req =
        pb::RemoteListRequest { protocol_version: version(c), path: path.to_vec(), recursive };
    runtime().block_on(async {
        tokio::time::timeout(WAIT, async {
            let mut s = g.remote_list(req).await?.into_inner();
            let mut pages = Vec::new();
            while let Some(p) = s.message().await? {
                pages.push(p);
            }
            Ok(pages)
        })
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("test: no end of the listing")))
    })
}

fn usage(c: &RawClient, path: &[u8]) -> Result<Vec<pb::RemoteUsage>, tonic::Status> {
    let mut g = c.grpc();
    let req = pb::RemoteUsageRequest {
        protocol_version: version(c),
        path: path.to_vec(),
        summarize: false,
    };
    runtime().block_on(async {
        let mut s = g.remote_usage(req).await?.into_inner();
        let mut all = Vec::new();
        while let Some(p) = s.message().await? {
            all.extend(p.totals);
        }
        Ok(all)
    })
}

fn remove(
    c: &RawClient,
    path: &[u8],
    recursive: bool,
) -> Result<pb::RemoteRemoveReply, tonic::Status> {
    let mut g = c.grpc();
    let req =
        pb::RemoteRemoveRequest { protocol_version: version(c), path: path.to_vec(), recursive };
    runtime().block_on(async { g.remote_remove(req).await.map(|r| r.into_inner()) })
}

fn mkdir(
    c: &RawClient,
    path: &[u8],
    parents: bool,
) -> Result<pb::RemoteMakeDirReply, tonic::Status> {
    let mut g = c.grpc();
    let req =
        pb::RemoteMakeDirRequest { protocol_version: version(c), path: path.to_vec(), parents };
    runtime().block_on(async { g.remote_make_dir(req).await.map(|r| r.into_inner()) })
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// A listing of every path below `dir` (names and file types), to show nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ty = e.file_type().unwrap();
            out.push((e.path().display().to_string(), ty.is_dir()));
            if ty.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

struct Setup {
    _t: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn setup(tag: &str) -> Setup {
    let t = scratch(tag);
    let root = t.path().join("export");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    std::fs::write(root.join("d/f"), b"data").unwrap();
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    std::fs::write(outside.join("sub/deep"), b"s").unwrap();
    symlink(&outside, root.join("esc")).unwrap();
    symlink("../outside/secret", root.join("d/rel-esc")).unwrap();
    Setup { _t: t, root, outside }
}

#[test]
fn path_tricks_are_refused_by_every_operation_and_change_nothing() {
    let s = setup("ops-paths");
    let d = DaemonProc::start(&s.root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    let before = (snapshot(&s.root), snapshot(&s.outside));
    let bad: &[&[u8]] = &[
        b"..",
        b"../outside",
        b"d/../..",
        b"/etc",
        b"/",
        b"d\0x",
        b"./d",
        b"d//e",
        b"esc/secret",
        b"esc/sub",
    ];
    for p in bad {
        let want = Code::InvalidArgument;
        assert_eq!(code(list(&c, p, true)), want, "ls {p:?}");
        assert_eq!(code(usage(&c, p)), want, "du {p:?}");
        assert_eq!(code(remove(&c, p, true)), want, "rm {p:?}");
        assert_eq!(code(mkdir(&c, p, true)), want, "mkdir {p:?}");
        let below = [*p, b"/new"].concat();
        assert_ne!(
            mkdir(&c, &below, true).map(|_| ()).map_err(|s| s.code()),
            Ok(()),
            "mkdir {below:?}"
        );
    }
    // The root itself is never removed.
    assert_eq!(code(remove(&c, b"", true)), Code::FailedPrecondition);
    assert_eq!(code(remove(&c, b"", false)), Code::FailedPrecondition);
    // A directory without -r.
    assert_eq!(code(remove(&c, b"d", false)), Code::FailedPrecondition);
    assert_eq!(code(remove(&c, b"nope", false)), Code::NotFound);
    assert_eq!(code(mkdir(&c, b"d", false)), Code::AlreadyExists);
    assert_eq!(code(mkdir(&c, b"d/f/x", true)), Code::FailedPrecondition);
    // Another protocol version.
    let mut g = c.grpc();
    let old =
        pb::RemoteRemoveRequest { protocol_version: 1, path: b"d/f".to_vec(), recursive: false };
    let r = runtime().block_on(async { g.remote_remove(old).await });
    assert_eq!(code(r), Code::OutOfRange);
    assert_eq!(
        (snapshot(&s.root), snapshot(&s.outside)),
        before,
        "a refused operation changed something"
    );

    // Symlinks are listed and removed as links, never followed.
    let pages = list(&c, b"esc", true).unwrap();
    assert_eq!(pages.len(), 1);
    assert!(pages[0].is_file && pages[0].entries[0].mode & 0o170000 == 0o120000);
    let r = remove(&c, b"esc", true).unwrap();
    assert_eq!((r.files, r.dirs), (1, 0));
    let r = remove(&c, b"d", true).unwrap();
    assert_eq!((r.files, r.dirs), (2, 2));
    assert_eq!(snapshot(&s.outside), before.1, "the removal reached outside the root");
    assert!(snapshot(&s.root).is_empty());
}

#[test]
fn read_only_daemon_refuses_rm_and_mkdir_but_lists() {
    let s = setup("ops-ro");
    let d = DaemonProc::start(&s.root, &["--read-only"]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    let before = snapshot(&s.root);
    let st = remove(&c, b"d/f", false).unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert!(st.message().contains("--read-only"), "{}", st.message());
    assert_eq!(code(remove(&c, b"d", true)), Code::PermissionDenied);
    assert_eq!(code(mkdir(&c, b"n", true)), Code::PermissionDenied);
    assert_eq!(snapshot(&s.root), before);
    assert!(!list(&c, b"", true).unwrap().is_empty());
    assert!(!usage(&c, b"").unwrap().is_empty());
}

#[test]
fn huge_listings_come_in_bounded_pages_within_max_entries() {
    let t = scratch("ops-huge");
    let root = t.path().join("export");
    std::fs::create_dir_all(root.join("big")).unwrap();
    for i in 0..3000 {
        std::fs::write(root.join(format!("big/{i:05}")), b"").unwrap();
    }
    let d = DaemonProc::start(&root, &["--max-entries", "2500"]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    assert_eq!(code(list(&c, b"", true)), Code::ResourceExhausted);
    assert_eq!(code(usage(&c, b"")), Code::ResourceExhausted);
    assert_eq!(code(remove(&c, b"big", true)), Code::ResourceExhausted);
    assert_eq!(
        std::fs::read_dir(root.join("big")).unwrap().count(),
        3000,
        "rm -r past the limit removed files"
    );
    drop(d);
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    let pages = list(&c, b"big", false).unwrap();
    assert!(pages.iter().all(|p| p.entries.len() <= 1024), "a page over 1024 entries");
    assert_eq!(pages.iter().map(|p| p.entries.len()).sum::<usize>(), 3000);
    assert_eq!(pages.iter().filter(|p| p.last_part).count(), 1);
}

/// Operations hold session slots: with `--max-sessions 1`, a listing that its client does not
/// read holds the slot, a second operation is refused; once the first client goes away, the
/// daemon cancels the listing and the slot is free again.
#[test]
fn operations_hold_session_slots_until_their_client_goes_away() {
    let t = scratch("ops-slots");
    let root = t.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    for d in 0..40 {
        std::fs::create_dir_all(root.join(format!("d{d:02}"))).unwrap();
        for f in 0..300 {
            std::fs::write(root.join(format!("d{d:02}/{f:04}-{}", "x".repeat(180))), b"").unwrap();
        }
    }
    let d = DaemonProc::start(&root, &["--max-sessions", "1"]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    let mut g = c.grpc();
    let req =
        pb::RemoteListRequest { protocol_version: version(&c), path: Vec::new(), recursive: true };
    // Started, one page taken, then left unread.
    let stream = runtime().block_on(async {
        let mut s = g.remote_list(req).await.unwrap().into_inner();
        s.message().await.unwrap().unwrap();
        s
    });
    let other = RawClient::connect(&d.addr).unwrap();
    assert_eq!(code(mkdir(&other, b"x", false)), Code::ResourceExhausted);
    drop(stream);
    assert!(
        wait_until(WAIT, || mkdir(&other, b"x", true).is_ok()),
        "the slot was not freed after the client went away"
    );
}

/// `rm -r` of a directory that a push is writing into is refused (the target lock), and so is
/// the removal of a directory above it.
#[test]
fn rm_refuses_a_directory_a_push_writes_into() {
    let t = scratch("ops-lock");
    let root = t.path().join("export");
    std::fs::create_dir_all(root.join("up/busy")).unwrap();
    std::fs::write(root.join("up/busy/old"), b"keep").unwrap();
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    let (sess, _data) = c.open_with_data(msg::open_push("up/busy")).unwrap();
    assert_eq!(code(remove(&c, b"up/busy", true)), Code::Aborted);
    assert_eq!(code(remove(&c, b"up", true)), Code::Aborted);
    assert_eq!(code(remove(&c, b"up/busy/old", false)), Code::Aborted);
    assert!(root.join("up/busy/old").exists());
    drop(sess);
    drop(_data);
    assert!(
        wait_until(WAIT, || remove(&c, b"up", true).is_ok()),
        "still locked after the push ended"
    );
    assert!(!root.join("up").exists());
}
