//! Raw pushes to a real `blit daemon`: listings, ids, modes, owners and sizes no honest client
//! sends (TESTS.md rows 1, 3, 4, 9 and 13).

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use blitx_hostile::msg::{self, Kind};
use blitx_hostile::process::{DaemonProc, s, xfer};
use blitx_hostile::raw::{DataStreams, End, RawClient, Session, tcp_endpoint};
use blitx_hostile::{is_root, pb, scratch};
use blitx_storage::testkit::{compare_trees, mixed_tree};

const STEP: Duration = Duration::from_secs(10);

fn start(root: &Path, extra: &[&str]) -> DaemonProc {
    DaemonProc::start(root, extra).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `parts` (listing parts after the root entry), answering each Need with the bytes of
/// the needed files found in `contents` (one Bundle frame per part), then ManifestEnd, End on
/// every data stream and DataEnd, and reads until the session ends. A step the daemon no longer
/// takes (it refused the session) cuts the script short; the end tells what happened.
fn push_script(
    s: &mut Session,
    data: &mut DataStreams,
    root: pb::Entry,
    parts: Vec<pb::SourceMsg>,
    contents: &[(u64, &[u8])],
) -> (End, Vec<String>) {
    let mut notes = Vec::new();
    let run = || -> Result<(), String> {
        s.send_source(msg::root(root))?;
        for p in parts {
            s.send_source(p)?;
            let ids = s.need(STEP)?;
            notes.push(format!("daemon needs {ids:?}"));
            let files: Vec<(u64, &[u8])> =
                contents.iter().filter(|(id, _)| ids.contains(id)).copied().collect();
            if !files.is_empty() {
                data.send_bundle(0, &files).map_err(|e| format!("data plane: {e}"))?;
            }
        }
        s.send_source(msg::manifest_end())?;
        s.need_end(STEP)?;
        data.end_all().map_err(|e| format!("data plane: {e}"))?;
        s.send_source(msg::data_end())?;
        Ok(())
    };
    if let Err(e) = run() {
        notes.push(format!("script cut short: {e}"));
    }
    (s.finish(STEP), notes)
}

#[test]
fn daemon_never_chmods_through_a_symlink_swapped_in_a_listing() {
    let t = scratch("row1");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let victim = t.path().join("outside-file");
    std::fs::write(&victim, b"not the daemon's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::metadata(&victim).unwrap();
    let d = start(&root, &[]);
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(msg::open_push("t")).unwrap();
    // Part 1 names directory `y` (setuid, setgid, world-writable, someone else's); part 2 of
    // the same directory names `y` again, now a symlink to a file outside the export.
    let parts = vec![
        msg::listing("", vec![msg::entry(1, "y", Kind::Dir, 0, 0o6777, 4242, 4242)], false),
        msg::listing("", vec![msg::symlink(2, "y", victim.as_os_str().as_encoded_bytes())], true),
    ];
    let (end, notes) = push_script(&mut sess, &mut data, msg::root_entry(0o755), parts, &[]);
    let after = std::fs::metadata(&victim).unwrap();
    let ctx = format!("session end: {}; {notes:?}", end.describe());
    let mut bad = Vec::new();
    if after.mode() & 0o7777 != 0o600 {
        bad.push(format!(
            "the daemon changed the mode of a file outside its export through a symlink: {:o} -> {:o}",
            before.mode() & 0o7777,
            after.mode() & 0o7777
        ));
    }
    if (after.uid(), after.gid()) != (before.uid(), before.gid()) {
        bad.push(format!(
            "the daemon changed the owner of a file outside its export through a symlink: {}:{} -> {}:{}",
            before.uid(),
            before.gid(),
            after.uid(),
            after.gid()
        ));
    }
    assert!(bad.is_empty(), "{}; {ctx}", bad.join("; "));
    assert!(
        end.is_refusal(),
        "a listing naming `y` twice in one directory was accepted (expected a fatal summary or an error); {ctx}"
    );
}

/// The push of row 3: `s` (setuid root, 5 bytes) and `o` (owned by 4321) into the export root.
fn push_setuid_and_foreign_owner(d: &DaemonProc) -> (End, Vec<String>) {
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(msg::open_push("")).unwrap();
    let parts = vec![msg::listing(
        "",
        vec![
            msg::entry(1, "s", Kind::File, 5, 0o4755, 0, 0),
            msg::entry(2, "o", Kind::File, 3, 0o644, 4321, 4321),
        ],
        true,
    )];
    let root = msg::entry(0, "", Kind::Dir, 0, 0o755, 65534, 65534);
    push_script(&mut sess, &mut data, root, parts, &[(1, b"12345"), (2, b"abc")])
}

fn export_owned_by_nobody(t: &Path) -> std::path::PathBuf {
    let root = t.join("export");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    rustix::fs::chown(
        &root,
        Some(rustix::process::Uid::from_raw(65534)),
        Some(rustix::process::Gid::from_raw(65534)),
    )
    .unwrap();
    root
}

#[test]
fn root_daemon_does_not_create_setuid_or_client_owned_files() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (a root daemon, chown of the export root)");
        return;
    }
    let t = scratch("row3");
    let root = export_owned_by_nobody(t.path());
    let d = start(&root, &[]);
    let (end, notes) = push_setuid_and_foreign_owner(&d);
    let ctx = format!("session end: {}; {notes:?}", end.describe());
    let sm = std::fs::symlink_metadata(root.join("s"))
        .unwrap_or_else(|e| panic!("`s` was not created: {e}; {ctx}"));
    let om = std::fs::symlink_metadata(root.join("o"))
        .unwrap_or_else(|e| panic!("`o` was not created: {e}; {ctx}"));
    let mut bad = Vec::new();
    if sm.mode() & 0o6000 != 0 {
        bad.push(format!("`s` has mode {:o} (setuid/setgid kept)", sm.mode() & 0o7777));
    }
    for (name, m) in [("s", &sm), ("o", &om)] {
        if (m.uid(), m.gid()) != (65534, 65534) {
            bad.push(format!(
                "`{name}` is owned by {}:{} (the client's choice), not by the export root's owner 65534:65534",
                m.uid(),
                m.gid()
            ));
        }
    }
    assert!(bad.is_empty(), "{}; {ctx}", bad.join("; "));
}

#[test]
fn root_daemon_applies_owners_and_setid_only_when_allowed() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (a root daemon, chown of the export root)");
        return;
    }
    let t = scratch("row3b");
    let root = export_owned_by_nobody(t.path());
    let d = start(&root, &["--allow-owners", "--allow-setid"]);
    let (end, notes) = push_setuid_and_foreign_owner(&d);
    let ctx = format!("session end: {}; {notes:?}", end.describe());
    let sm = std::fs::symlink_metadata(root.join("s")).unwrap_or_else(|e| panic!("{e}; {ctx}"));
    let om = std::fs::symlink_metadata(root.join("o")).unwrap_or_else(|e| panic!("{e}; {ctx}"));
    assert_eq!(sm.mode() & 0o7777, 0o4755, "{ctx}");
    assert_eq!((sm.uid(), sm.gid()), (0, 0), "{ctx}");
    assert_eq!((om.uid(), om.gid()), (4321, 4321), "{ctx}");
}

#[test]
fn declared_huge_size_does_not_abort_the_daemon() {
    let t = scratch("row4");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let mut d = start(&root, &[]);
    for (i, size) in [u64::MAX, 1 << 62].into_iter().enumerate() {
        let c = RawClient::connect(&d.addr)
            .unwrap_or_else(|e| panic!("daemon unreachable before size {size}: {e}"));
        let (mut sess, mut data) = match c.open_with_data(msg::open_push(format!("huge{i}"))) {
            Ok(x) => x,
            Err(e) => panic!("cannot open a push: {e}; {}", d.describe()),
        };
        let parts = vec![msg::listing("", vec![msg::file(1, "big", size, 0o644)], true)];
        let (end, notes) = push_script(&mut sess, &mut data, msg::root_entry(0o755), parts, &[]);
        drop(sess);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            d.is_alive(),
            "the daemon died after a listing declared a file of {size} bytes (session end: {}; {notes:?}); {}",
            end.describe(),
            d.describe()
        );
    }
    let src = t.path().join("src");
    mixed_tree(&src, 4, 20, 1, 300_000);
    let r = xfer(&[s(&src), &d.url("after")], Duration::from_secs(15));
    assert_eq!(r.code(), Some(0), "a normal push after the huge sizes failed: {}", r.describe());
    compare_trees(&src, &root.join("after")).unwrap();
}

#[test]
fn idle_connections_on_the_data_port_do_not_reset_the_session() {
    let t = scratch("row9");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = start(&root, &[]);
    let c = RawClient::connect(&d.addr).unwrap();
    let mut sess = c.session(Some(msg::open_push("p")));
    let accept = sess.accept(STEP).unwrap();
    let (addr, _, _) = tcp_endpoint(&accept).unwrap();
    // Strangers connect to the data port first and say nothing.
    let idle: Vec<TcpStream> = (0..500)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect();
    eprintln!("{} idle connections open on the data port {addr}", idle.len());
    let mut data = Session::connect_data(&accept, STEP).unwrap_or_else(|e| {
        panic!(
            "with {} idle connections on the data port, the session's own streams were refused: {e}",
            idle.len()
        )
    });
    let files: [(u64, &[u8]); 3] = [(1, b"alpha"), (2, b"beta"), (3, b"")];
    let parts = vec![msg::listing(
        "",
        vec![msg::file(1, "a", 5, 0o644), msg::file(2, "b", 4, 0o644), msg::file(3, "c", 0, 0o644)],
        true,
    )];
    let (end, notes) = push_script(&mut sess, &mut data, msg::root_entry(0o755), parts, &files);
    drop(idle);
    assert!(end.is_success_summary(), "the push did not complete: {}; {notes:?}", end.describe());
    assert_eq!(std::fs::read(root.join("p/a")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(root.join("p/b")).unwrap(), b"beta");
    assert_eq!(std::fs::read(root.join("p/c")).unwrap(), b"");
}

#[test]
fn duplicate_ids_in_a_listing_are_refused() {
    let t = scratch("row13");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = start(&root, &[]);
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(msg::open_push("dup")).unwrap();
    let parts = vec![msg::listing(
        "",
        vec![msg::file(5, "a", 3, 0o644), msg::file(5, "b", 3, 0o644)],
        true,
    )];
    let (end, notes) =
        push_script(&mut sess, &mut data, msg::root_entry(0o755), parts, &[(5, b"abc")]);
    assert!(
        end.is_refusal(),
        "two entries with id 5 were accepted (expected a fatal summary or an error): {}; {notes:?}",
        end.describe()
    );
}

/// Issue 16, item 1: a chunk whose payload was damaged on the wire (its checksum fails) costs
/// its file, not the session. The file is not committed and the summary names it; the other
/// file of the push is committed.
#[test]
fn a_chunk_damaged_on_the_wire_discards_its_file_only() {
    let t = scratch("corrupt-chunk");
    let root = t.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    let d = start(&root, &[]);
    let c = RawClient::connect(&d.addr).unwrap();
    let mut open = msg::open_push("dst");
    open.tcp_streams = 1;
    let (mut sess, mut data) = c.open_with_data(open).unwrap();
    let chunk = msg::CHUNK_BYTES as usize;
    let good: Vec<u8> = (0..chunk + chunk / 2).map(|i| (i * 7 % 253) as u8).collect();
    let bad: Vec<u8> = (0..chunk + 1000).map(|i| (i * 13 % 241) as u8).collect();
    sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
    let listing = vec![
        msg::file(1, "good", good.len() as u64, 0o644),
        msg::file(2, "bad", bad.len() as u64, 0o644),
    ];
    sess.send_source(msg::listing("", listing, true)).unwrap();
    let mut ids = sess.need(STEP).unwrap();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    data.send_file_chunks(1, &good, msg::CHUNK_BYTES).unwrap();
    sess.send_source(msg::file_read(1)).unwrap();
    for (i, mut f) in
        blitx_hostile::frames::file_chunks(2, &bad, msg::CHUNK_BYTES).into_iter().enumerate()
    {
        if i == 1 {
            // One bit flipped in the payload after its checksum was computed.
            f[blitx_core::frame::FRAME_HEADER_BYTES + 500] ^= 0x04;
        }
        data.send_raw(0, &f).unwrap();
    }
    sess.send_source(msg::file_read(2)).unwrap();
    let end = sess.end_push(&mut data, STEP).unwrap();
    let End::Summary(summary) = &end else { panic!("no summary: {}", end.describe()) };
    assert!(summary.fatal.is_empty(), "one damaged chunk ended the session: {}", end.describe());
    assert_eq!(summary.error_count, 1, "{}", end.describe());
    let e = &summary.errors[0];
    assert!(
        e.path == b"bad" && e.message.contains("checksum") && e.message.contains("in transit"),
        "{}",
        end.describe()
    );
    assert_eq!(std::fs::read(root.join("dst/good")).unwrap(), good);
    assert!(!root.join("dst/bad").exists(), "the damaged file was committed");
    let left: Vec<_> = std::fs::read_dir(root.join("dst")).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "temp files left: {left:?}");
}

/// `FileRead` is peer input too: ids that are not waiting (unknown, repeated) change nothing,
/// and a chunked file whose chunks all arrived but whose `FileRead` never came is reported
/// incomplete, never committed.
#[test]
fn file_read_for_strangers_twice_or_never_commits_nothing_extra() {
    let t = scratch("file-read");
    let root = t.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    let d = start(&root, &[]);
    let c = RawClient::connect(&d.addr).unwrap();
    let mut open = msg::open_push("dst");
    open.tcp_streams = 1;
    let (mut sess, mut data) = c.open_with_data(open).unwrap();
    let chunk = msg::CHUNK_BYTES as usize;
    let a: Vec<u8> = (0..chunk + 77).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..chunk + 99).map(|i| (i % 239) as u8).collect();
    sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
    let listing =
        vec![msg::file(1, "a", a.len() as u64, 0o644), msg::file(2, "b", b.len() as u64, 0o644)];
    sess.send_source(msg::listing("", listing, true)).unwrap();
    let mut ids = sess.need(STEP).unwrap();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    sess.send_source(msg::file_read(999)).unwrap();
    data.send_file_chunks(1, &a, msg::CHUNK_BYTES).unwrap();
    data.send_file_chunks(2, &b, msg::CHUNK_BYTES).unwrap();
    sess.send_source(msg::file_read(1)).unwrap();
    sess.send_source(msg::file_read(1)).unwrap();
    let end = sess.end_push(&mut data, STEP).unwrap();
    let End::Summary(summary) = &end else { panic!("no summary: {}", end.describe()) };
    assert!(summary.fatal.is_empty(), "{}", end.describe());
    assert_eq!(summary.error_count, 1, "{}", end.describe());
    assert!(
        summary.errors[0].path == b"b" && summary.errors[0].message.contains("incomplete"),
        "{}",
        end.describe()
    );
    assert_eq!(std::fs::read(root.join("dst/a")).unwrap(), a);
    assert!(!root.join("dst/b").exists(), "a file without FileRead was committed");
}

/// A memory session (`--mem`, issue 16 item 7) is peer input like any push: the daemon's sink
/// needs the chunked files of a checked listing, verifies every chunk (a damaged one is named,
/// the session goes on), never creates the session's path or anything else under its root, and
/// refuses a small (bundled) file as a protocol violation.
#[test]
fn memory_push_verifies_creates_nothing_and_refuses_bundles() {
    let t = scratch("mem-push");
    let root = t.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    let d = start(&root, &["--read-only"]);
    let c = RawClient::connect(&d.addr).unwrap();
    let chunk = msg::CHUNK_BYTES as usize;
    let data_of = |n: usize, k: usize| -> Vec<u8> { (0..n).map(|i| (i * k % 251) as u8).collect() };
    let (good, bad) = (data_of(2 * chunk + 100, 7), data_of(chunk + 5, 13));
    let mem_open = |size: u64| {
        let mut open = msg::open_push("never/created");
        open.tcp_streams = 1;
        let p = open.params.as_mut().unwrap();
        p.small_file_bytes_max = 0;
        p.mem_bytes = size;
        open
    };
    let (mut sess, mut data) = c.open_with_data(mem_open(good.len() as u64)).unwrap();
    sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
    let listing = vec![
        msg::file(1, "good", good.len() as u64, 0o644),
        msg::file(2, "bad", bad.len() as u64, 0o644),
    ];
    sess.send_source(msg::listing("", listing, true)).unwrap();
    let mut ids = sess.need(STEP).unwrap();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    data.send_file_chunks(1, &good, msg::CHUNK_BYTES).unwrap();
    sess.send_source(msg::file_read(1)).unwrap();
    let mut frames = blitx_hostile::frames::file_chunks(2, &bad, msg::CHUNK_BYTES);
    frames[0][blitx_core::frame::FRAME_HEADER_BYTES + 9] ^= 0x01;
    for f in &frames {
        data.send_raw(0, f).unwrap();
    }
    sess.send_source(msg::file_read(2)).unwrap();
    let end = sess.end_push(&mut data, STEP).unwrap();
    let End::Summary(summary) = &end else { panic!("no summary: {}", end.describe()) };
    assert!(summary.fatal.is_empty(), "{}", end.describe());
    assert_eq!(summary.error_count, 1, "{}", end.describe());
    assert!(summary.errors[0].path == b"bad" && summary.errors[0].message.contains("in transit"));
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "the sink created something");

    // An empty file is a bundled one: not part of a memory session.
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(mem_open(good.len() as u64)).unwrap();
    sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
    sess.send_source(msg::listing("", vec![msg::file(1, "empty", 0, 0o644)], true)).unwrap();
    let end = sess.end_push(&mut data, STEP).unwrap_or(End::Closed);
    let end = if matches!(end, End::Closed) { sess.finish(STEP) } else { end };
    assert!(end.is_refusal(), "a small file in a memory session was accepted: {}", end.describe());
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "the sink created something");

    // A hole frame would count its chunks as verified without a byte moved: refused.
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(mem_open(good.len() as u64)).unwrap();
    sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
    sess.send_source(msg::listing("", vec![msg::file(1, "h", good.len() as u64, 0o644)], true))
        .unwrap();
    assert_eq!(sess.need(STEP).unwrap(), vec![1]);
    let hole = blitx_core::frame::FrameHeader::hole(1, 0, 3).encode();
    let _ = data.send_raw(0, &hole);
    let _ = sess.send_source(msg::file_read(1));
    let end = sess.end_push(&mut data, STEP).unwrap_or(End::Closed);
    let end = if matches!(end, End::Closed) { sess.finish(STEP) } else { end };
    assert!(end.is_refusal(), "a hole frame in a memory session was accepted: {}", end.describe());
}

/// A recipe (docs/delta.md): `ops` of (basis offset, length) copies, no literals.
fn copy_recipe(ops: &[(u64, u32)]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes());
    for &(at, len) in ops {
        r.push(1);
        r.extend_from_slice(&at.to_le_bytes());
        r.extend_from_slice(&len.to_le_bytes());
    }
    r
}

/// A Delta frame for chunk `offset` of file `id`: `recipe`, vouched for by `checksum`.
fn delta_frame(id: u64, offset: u64, recipe: &[u8], checksum: u64) -> Vec<u8> {
    let header = blitx_core::frame::FrameHeader {
        kind: blitx_core::frame::FrameKind::Delta,
        flags: 0,
        file_id: id,
        offset_bytes: offset,
        len_bytes: recipe.len() as u32,
        checksum,
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(recipe);
    out
}

/// Reads the daemon's answer to a listing with one file: its signature messages (delta), then
/// the Need.
fn signatures_then_need(sess: &mut Session) -> (usize, Vec<u64>) {
    let mut signatures = 0;
    loop {
        match sess.recv_skip_events(STEP) {
            blitx_hostile::raw::Recv::Frame(pb::ServerFrame {
                msg: Some(pb::server_frame::Msg::Target(pb::TargetMsg { msg: Some(m) })),
            }) => match m {
                pb::target_msg::Msg::Signature(_) => signatures += 1,
                pb::target_msg::Msg::Need(n) => return (signatures, n.ids),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("no Need: {}", blitx_hostile::raw::describe_recv(&other)),
        }
    }
}

/// Issue 18 (delta): a pushing client's recipes are checked against the chunk and the daemon's
/// old copy. A recipe that copies from past the old copy's end, or a recipe for a file the
/// daemon sent no signature for, ends the session with PROTOCOL_VIOLATION and leaves the old
/// file as it was; an honest recipe rebuilds the chunk from the old copy, checked against the
/// checksum of the real chunk.
#[test]
fn recipes_are_checked_against_the_chunk_and_the_old_copy() {
    let chunk = msg::CHUNK_BYTES as usize;
    let old: Vec<u8> = (0..2 * chunk).map(|i| (i * 7 % 251) as u8).collect();
    // The new file: the old one's second chunk first, then the old first chunk.
    let mut new = old[chunk..].to_vec();
    new.extend_from_slice(&old[..chunk]);
    let cases: [(&str, bool, Vec<u8>); 3] = [
        ("a copy past the old copy's end", true, copy_recipe(&[(old.len() as u64, chunk as u32)])),
        ("a recipe without a signature", false, copy_recipe(&[(chunk as u64, chunk as u32)])),
        ("an honest recipe", true, copy_recipe(&[(chunk as u64, chunk as u32)])),
    ];
    for (what, delta, recipe) in cases {
        let t = scratch("delta-push");
        let root = t.path().join("export");
        std::fs::create_dir_all(root.join("dst")).unwrap();
        std::fs::write(root.join("dst/big"), &old).unwrap();
        let d = start(&root, &[]);
        let c = RawClient::connect(&d.addr).unwrap();
        let mut open = msg::open_push("dst");
        open.params.as_mut().unwrap().delta = delta;
        let (mut sess, mut data) = c.open_with_data(open).unwrap();
        sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
        sess.send_source(msg::listing(
            "",
            vec![msg::file(1, "big", new.len() as u64, 0o644)],
            true,
        ))
        .unwrap();
        let (signatures, ids) = signatures_then_need(&mut sess);
        assert_eq!(ids, vec![1], "{what}");
        assert_eq!(signatures > 0, delta, "{what}: {signatures} signature messages");
        let first = blitx_core::frame::checksum(&new[..chunk]);
        // After a violation the daemon closes the session: later sends may fail.
        let _ = data.send_raw(0, &delta_frame(1, 0, &recipe, first));
        let _ = data.send_raw(0, &blitx_hostile::frames::chunk(1, chunk as u64, &new[chunk..]));
        let _ = sess.send_source(msg::file_read(1));
        let end = match sess.end_push(&mut data, STEP) {
            Ok(end) => end,
            Err(_) => sess.finish(STEP),
        };
        if what == "an honest recipe" {
            assert!(end.is_success_summary(), "{what}: {}", end.describe());
            assert_eq!(std::fs::read(root.join("dst/big")).unwrap(), new, "{what}");
        } else {
            let code = match &end {
                End::Summary(s) if !s.fatal.is_empty() => s.fatal_code,
                End::Error(e) => e.code,
                other => panic!("{what}: no fatal end: {}", other.describe()),
            };
            assert_eq!(code, pb::ErrorCode::ProtocolViolation as i32, "{what}: {}", end.describe());
            assert_eq!(std::fs::read(root.join("dst/big")).unwrap(), old, "{what}: old file");
        }
        let left: Vec<_> = std::fs::read_dir(root.join("dst")).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{what}: temp files left: {left:?}");
    }
}
