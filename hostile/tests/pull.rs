//! Pulls that a daemon turns against the client (a scripted daemon and the stock client), and a
//! source file swapped for a FIFO under a real daemon (TESTS.md rows 2 and 6).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use blitx_hostile::daemon::{Behaviour, HostileDaemon, PullScript};
use blitx_hostile::msg;
use blitx_hostile::process::{DaemonProc, Finished, s, xfer};
use blitx_hostile::raw::{RawClient, Recv, describe_recv};
use blitx_hostile::{pb, scratch};
use blitx_storage::testkit::{Rng, write_random};

const CLIENT_WAIT: Duration = Duration::from_secs(20);

fn abs(p: &Path) -> Vec<u8> {
    p.as_os_str().as_encoded_bytes().to_vec()
}

/// Runs the stock client against a daemon following `script`; returns how it ended and the
/// daemon's log.
fn pull(script: PullScript, target: &Path, extra: &[&str]) -> (Finished, Vec<String>) {
    let hd = HostileDaemon::start(Behaviour::Pull(script)).unwrap();
    let mut args = vec![hd.url("x")];
    args.push(s(target).to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = xfer(&args, CLIENT_WAIT);
    (r, hd.log())
}

#[test]
fn pull_from_hostile_daemon_stays_inside_target() {
    let t = scratch("row2a");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let local = t.path().join("local");
    // `x` is a symlink to a directory outside the client's target; then listings "below" it.
    let script = PullScript {
        messages: vec![
            msg::root(msg::root_entry(0o755)),
            msg::listing("", vec![msg::symlink(1, "x", abs(&outside))], true),
            msg::listing("x", vec![msg::dir(2, "x/dir", 0o755)], true),
            msg::listing("x/dir", vec![msg::file(3, "x/dir/f", 5, 0o644)], true),
        ],
        contents: HashMap::from([(3, b"owned".to_vec())]),
        streams: 1,
        finish: true,
        single_file: false,
    };
    let (r, log) = pull(script, &local, &[]);
    let ctx = format!("client: {}\ndaemon log: {log:?}", r.describe());
    assert!(!outside.join("dir").exists(), "the client created `dir` outside its target; {ctx}");
    assert!(!outside.join("dir/f").exists(), "the client wrote `f` outside its target; {ctx}");
    assert!(!r.timed_out, "the client hung; {ctx}");
    assert_ne!(r.code(), Some(0), "the client reported success for a hostile listing; {ctx}");
}

#[test]
fn pull_from_hostile_daemon_stays_inside_target_with_mirror() {
    let t = scratch("row2b");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"precious").unwrap();
    let local = t.path().join("local");
    // `x` is a symlink to the outside directory, then an (empty) listing of `x`: with
    // --mirror, everything "in x" that the source lacks would be deleted.
    let script = PullScript {
        messages: vec![
            msg::root(msg::root_entry(0o755)),
            msg::listing("", vec![msg::symlink(1, "x", abs(&outside))], true),
            msg::listing("x", vec![], true),
        ],
        contents: HashMap::new(),
        streams: 1,
        finish: true,
        single_file: false,
    };
    let (r, log) = pull(script, &local, &["--mirror"]);
    let ctx = format!("client: {}\ndaemon log: {log:?}", r.describe());
    assert!(
        outside.join("victim").exists(),
        "a pull with --mirror deleted a file outside its target; {ctx}"
    );
    assert!(!r.timed_out, "the client hung; {ctx}");
}

#[test]
fn pull_from_hostile_daemon_stays_inside_target_modes() {
    let t = scratch("row2c");
    let mut bad = Vec::new();
    // Both orders: `x` a directory (mode 0777, applied at the end) then a symlink to the outside
    // directory, and the other way round.
    for (order, swap_first) in [("dir then symlink", false), ("symlink then dir", true)] {
        let outside = t.path().join(format!("outside-{swap_first}"));
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
        let local = t.path().join(format!("local-{swap_first}"));
        let link = msg::symlink(1, "x", abs(&outside));
        let dir = msg::dir(2, "x", 0o777);
        let (first, second) = if swap_first { (link, dir) } else { (dir, link) };
        let script = PullScript {
            messages: vec![
                msg::root(msg::root_entry(0o755)),
                msg::listing("", vec![first], false),
                msg::listing("", vec![second], true),
            ],
            contents: HashMap::new(),
            streams: 1,
            finish: true,
            single_file: false,
        };
        let (r, log) = pull(script, &local, &[]);
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777;
        if mode != 0o700 {
            bad.push(format!(
                "{order}: the outside directory's mode became {mode:o}; client: {}; daemon log: {log:?}",
                r.describe()
            ));
        }
        if r.timed_out {
            bad.push(format!("{order}: the client hung"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn fifo_swapped_for_a_source_file_does_not_wedge_a_pull() {
    let t = scratch("row6");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let f = root.join("f");
    write_random(&f, 1 << 20, &mut Rng::new(6));
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, data) = c.open_with_data(msg::open_pull("")).unwrap();
    let readers = data.read_in_background(msg::CHUNK_BYTES);
    // The daemon's manifest: the root, then the root's listing naming `f`.
    let listings = read_listings(&mut sess, 1);
    let id = listings[0].entries.iter().find(|e| e.path == b"f").map(|e| e.id);
    let id = id.unwrap_or_else(|| panic!("no listing named `f`: {:?}", listings[0].entries));
    let mut seen = Vec::new();
    // Swap `f` for a FIFO between the listing and the need.
    std::fs::remove_file(&f).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &f,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    sess.send_target(msg::need(&[id])).unwrap();
    read_manifest_end(&mut sess);
    sess.send_target(msg::need_end()).unwrap();
    let asked = Instant::now();
    let mut failed = false;
    let mut summary = None;
    while summary.is_none() && asked.elapsed() < Duration::from_secs(5) {
        let left = Duration::from_secs(5).saturating_sub(asked.elapsed());
        match sess.recv(left) {
            Recv::Frame(pb::ServerFrame { msg: Some(m) }) => match m {
                pb::server_frame::Msg::Source(pb::SourceMsg {
                    msg: Some(pb::source_msg::Msg::FileFailed(ff)),
                }) if ff.id == id => {
                    failed = true;
                    seen.push(format!("FileFailed: {}", ff.message));
                }
                pb::server_frame::Msg::Events(ev) => {
                    if ev.events.iter().any(|e| {
                        e.kind == pb::EventKind::Failed as i32 && e.path.as_slice() == b"f"
                    }) {
                        failed = true;
                    }
                    seen.push(format!("Events({})", ev.events.len()));
                }
                pb::server_frame::Msg::Summary(sm) => {
                    if sm.error_count > 0 && sm.errors.iter().any(|e| e.path.as_slice() == b"f") {
                        failed = true;
                    }
                    summary = Some(msg::describe_summary(&sm));
                }
                other => {
                    seen.push(msg::describe_server(&pb::ServerFrame { msg: Some(other) }));
                }
            },
            Recv::Frame(_) => {}
            other => {
                seen.push(describe_recv(&other));
                break;
            }
        }
    }
    let took = asked.elapsed();
    let summary = summary.unwrap_or_else(|| {
        panic!(
            "no Summary within 5 s of asking for a file that became a FIFO (the pull is wedged); \
             seen {seen:?}; data streams done: {}",
            readers.done()
        )
    });
    assert!(
        failed,
        "the FIFO was not reported as a failed file (after {took:?}): {summary}; seen {seen:?}"
    );
}

/// The first `count` listings a raw pull session receives from the daemon (events and other
/// messages before them are skipped); panics if the session ends or 10 s pass first.
fn read_listings(sess: &mut blitx_hostile::raw::Session, count: usize) -> Vec<pb::Listing> {
    let mut listings = Vec::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while listings.len() < count && Instant::now() < deadline {
        match sess.recv_skip_events(Duration::from_secs(10)) {
            Recv::Frame(pb::ServerFrame {
                msg:
                    Some(pb::server_frame::Msg::Source(pb::SourceMsg {
                        msg: Some(pb::source_msg::Msg::Listing(l)),
                    })),
            }) => listings.push(l),
            Recv::Frame(other) => seen.push(msg::describe_server(&other)),
            other => panic!("the pull ended before its listings: {}", describe_recv(&other)),
        }
    }
    assert_eq!(listings.len(), count, "{count} listings expected; seen {seen:?}");
    listings
}

/// The code of a session's fatal end (a summary with `fatal`, or an error); panics naming
/// `what` on any other end.
fn fatal_code(end: &blitx_hostile::raw::End, what: &str) -> i32 {
    match end {
        blitx_hostile::raw::End::Summary(s) if !s.fatal.is_empty() => s.fatal_code,
        blitx_hostile::raw::End::Error(e) => e.code,
        other => panic!("{what}: no fatal end: {}", other.describe()),
    }
}

/// Reads until the daemon's ManifestEnd: a target says NeedEnd only after the whole manifest
/// (sent earlier, it is a protocol violation — what a test must not provoke by racing the walk).
fn read_manifest_end(sess: &mut blitx_hostile::raw::Session) {
    loop {
        match sess.recv_skip_events(Duration::from_secs(10)) {
            Recv::Frame(pb::ServerFrame {
                msg:
                    Some(pb::server_frame::Msg::Source(pb::SourceMsg {
                        msg: Some(pb::source_msg::Msg::ManifestEnd(_)),
                    })),
            }) => return,
            Recv::Frame(_) => {}
            other => panic!("the pull ended before its ManifestEnd: {}", describe_recv(&other)),
        }
    }
}

/// A target that answers a listing with a `Need` naming the wrong listing (a replay of an
/// answer already given), or naming a file that listing did not contain (it is in the next
/// one): the daemon's source half ends the session with PROTOCOL_VIOLATION and sends no file
/// data at all (docs/protocol.md: "an answer naming another listing than the oldest
/// unanswered one, or a file that listing did not name").
#[test]
fn a_need_naming_the_wrong_listing_or_a_foreign_file_is_a_protocol_violation() {
    for replay in [true, false] {
        let t = scratch("need-replay");
        let root = t.path().join("export");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("a"), b"in the root listing").unwrap();
        std::fs::write(root.join("d/b"), b"in the listing of d").unwrap();
        let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
        let c = RawClient::connect(&d.addr).unwrap();
        let (mut sess, data) = c.open_with_data(msg::open_pull("")).unwrap();
        let readers = data.read_in_background(msg::CHUNK_BYTES);
        let listings = read_listings(&mut sess, 2);
        let (first, second) = (&listings[0], &listings[1]);
        let names = |l: &pb::Listing| l.entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        let holds_b = |l: &pb::Listing| l.entries.iter().any(|e| e.path.ends_with(b"b"));
        assert!(first.dir.is_empty() && !holds_b(first), "root listing first: {:?}", names(first));
        let b = second.entries.iter().find(|e| e.path.ends_with(b"b")).map(|e| e.id);
        let b = b.unwrap_or_else(|| panic!("no `d/b` in {:?}", names(second)));
        if replay {
            // The first listing answered properly, then its answer again for the second.
            sess.send_target(msg::need_for(first.seq, &[])).unwrap();
            sess.send_target(msg::need_for(first.seq, &[b])).unwrap();
        } else {
            // The first listing answered with the second's file.
            sess.send_target(msg::need_for(first.seq, &[b])).unwrap();
        }
        let end = sess.finish(Duration::from_secs(10));
        let code = fatal_code(&end, &format!("replay {replay}"));
        assert_eq!(
            code,
            pb::ErrorCode::ProtocolViolation as i32,
            "replay {replay}: {}",
            end.describe()
        );
        assert!(
            blitx_hostile::wait_until(Duration::from_secs(10), || readers.done()),
            "replay {replay}: the data streams were not closed after the violation"
        );
        let (frames, _) = readers.join();
        let data: Vec<_> = frames
            .iter()
            .filter(|(h, _)| h.kind != blitx_core::frame::FrameKind::End)
            .map(|(h, _)| format!("{:?}", h.kind))
            .collect();
        assert!(data.is_empty(), "replay {replay}: file data sent after a bad Need: {data:?}");
    }
}

/// `TargetMsg.need` answering listing `listing` with `ids`, offering `chunks` (index, hash)
/// of file `offered`.
fn need_offering(listing: u64, ids: &[u64], offered: u64, chunks: &[(u64, u64)]) -> pb::TargetMsg {
    let mut m = msg::need_for(listing, ids);
    if let Some(pb::target_msg::Msg::Need(n)) = m.msg.as_mut() {
        n.offers.push(pb::Offer {
            id: offered,
            chunks: chunks.iter().map(|&(i, _)| i).collect(),
            hashes: chunks.iter().map(|&(_, h)| h).collect(),
        });
    }
    m
}

/// A pulling client (the target) that offers chunks it does not hold, for files it does not
/// need, past a file's end, for a bundled file, in the wrong order or in numbers past the
/// limit: the daemon's source half ends the session with PROTOCOL_VIOLATION and sends no file
/// data. An honest offer gets a `Same` frame for the chunk whose hash matches and the chunk
/// itself where it does not.
#[test]
fn offers_are_checked_by_the_source_and_answered_chunk_by_chunk() {
    let t = scratch("offers");
    let root = t.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    let chunk = u64::from(msg::CHUNK_BYTES);
    write_random(&root.join("big"), 3 * chunk - 100, &mut Rng::new(3));
    std::fs::write(root.join("small"), b"bundled").unwrap();
    let big_bytes = std::fs::read(root.join("big")).unwrap();
    let hash0 = blitx_core::frame::checksum(&big_bytes[..chunk as usize]);
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let limit = blitx_core::session::NEED_OFFERED_CHUNKS_MAX as u64;
    type Need = Box<dyn Fn(u64, u64, u64) -> pb::TargetMsg>;
    let cases: Vec<(&str, Need)> = vec![
        ("a file not needed", Box::new(|seq, big, _| need_offering(seq, &[], big, &[(0, 1)]))),
        ("past the end", Box::new(|seq, big, _| need_offering(seq, &[big], big, &[(3, 1)]))),
        (
            "out of order",
            Box::new(|seq, big, _| need_offering(seq, &[big], big, &[(1, 1), (0, 1)])),
        ),
        (
            "a bundled file",
            Box::new(|seq, _, small| need_offering(seq, &[small], small, &[(0, 1)])),
        ),
        (
            "more chunks than the limit",
            Box::new(move |seq, big, _| {
                let many: Vec<(u64, u64)> = (0..=limit).map(|i| (i, 0)).collect();
                need_offering(seq, &[big], big, &many)
            }),
        ),
        (
            "hashes and chunks differ in number",
            Box::new(|seq, big, _| {
                let mut m = need_offering(seq, &[big], big, &[(0, 1)]);
                if let Some(pb::target_msg::Msg::Need(n)) = m.msg.as_mut() {
                    n.offers[0].hashes.push(2);
                }
                m
            }),
        ),
    ];
    for (what, need) in &cases {
        let c = RawClient::connect(&d.addr).unwrap();
        let (mut sess, data) = c.open_with_data(msg::open_pull("")).unwrap();
        let readers = data.read_in_background(msg::CHUNK_BYTES);
        let listing = read_listings(&mut sess, 1).remove(0);
        let id = |name: &[u8]| listing.entries.iter().find(|e| e.path == name).unwrap().id;
        sess.send_target(need(listing.seq, id(b"big"), id(b"small"))).unwrap();
        let end = sess.finish(Duration::from_secs(10));
        let code = fatal_code(&end, what);
        assert_eq!(code, pb::ErrorCode::ProtocolViolation as i32, "{what}: {}", end.describe());
        assert!(
            blitx_hostile::wait_until(Duration::from_secs(10), || readers.done()),
            "{what}: the data streams were not closed after the violation"
        );
        let (frames, _) = readers.join();
        let data: Vec<_> = frames
            .iter()
            .filter(|(h, _)| h.kind != blitx_core::frame::FrameKind::End)
            .map(|(h, _)| format!("{:?}", h.kind))
            .collect();
        assert!(data.is_empty(), "{what}: file data sent after a bad offer: {data:?}");
    }
    // An honest offer: chunk 0 with its hash, chunk 1 with another.
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, data) = c.open_with_data(msg::open_pull("")).unwrap();
    let readers = data.read_in_background(msg::CHUNK_BYTES);
    let listing = read_listings(&mut sess, 1).remove(0);
    let big = listing.entries.iter().find(|e| e.path == b"big").unwrap().id;
    sess.send_target(need_offering(listing.seq, &[big], big, &[(0, hash0), (1, 7)])).unwrap();
    read_manifest_end(&mut sess);
    sess.send_target(msg::need_end()).unwrap();
    let end = sess.finish(Duration::from_secs(10));
    assert!(
        matches!(&end, blitx_hostile::raw::End::Summary(s) if s.fatal.is_empty()),
        "{}",
        end.describe()
    );
    assert!(blitx_hostile::wait_until(Duration::from_secs(10), || readers.done()));
    let (frames, _) = readers.join();
    let mut got: Vec<(u64, String, u32)> = frames
        .iter()
        .filter(|(h, _)| h.kind != blitx_core::frame::FrameKind::End)
        .map(|(h, _)| (h.offset_bytes / chunk, format!("{:?}", h.kind), h.len_bytes))
        .collect();
    got.sort();
    let last = (3 * chunk - 100 - 2 * chunk) as u32;
    assert_eq!(
        got,
        vec![
            (0, "Same".to_string(), 0),
            (1, "Chunk".to_string(), msg::CHUNK_BYTES),
            (2, "Chunk".to_string(), last)
        ]
    );
    let same = frames.iter().find(|(h, _)| h.kind == blitx_core::frame::FrameKind::Same).unwrap();
    assert_eq!(same.0.checksum, hash0, "a Same frame carries the source's hash");
}

/// Issue 18 (delta): a pulling client's signatures are decoded within their bounds and must be
/// for a file of the answer that follows: garbage, a signature for a file the answer does not
/// need, or one left without an answer at NeedEnd end the session with PROTOCOL_VIOLATION, and
/// no file data is sent.
/// One valid signature message (of an 8 KiB basis).
fn valid_part() -> Vec<u8> {
    let params = blitx_delta::SignatureParams::new(4096, 8192, 1).unwrap();
    let mut b = blitx_delta::SignatureBuilder::new(params, 0..8192).unwrap();
    b.update(&[7u8; 8192]).unwrap();
    b.finish().unwrap().messages(1024).remove(0)
}

#[test]
fn signatures_are_checked_by_the_source() {
    let t = scratch("signatures");
    let root = t.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    write_random(&root.join("big"), 3 * u64::from(msg::CHUNK_BYTES), &mut Rng::new(4));
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let signature = |id: u64, part: Vec<u8>| pb::TargetMsg {
        msg: Some(pb::target_msg::Msg::Signature(pb::Signature { id, part })),
    };
    for what in ["garbage", "not needed", "never answered"] {
        let c = RawClient::connect(&d.addr).unwrap();
        let (mut sess, data) = c.open_with_data(msg::open_pull("")).unwrap();
        let readers = data.read_in_background(msg::CHUNK_BYTES);
        let listing = read_listings(&mut sess, 1).remove(0);
        let big = listing.entries.iter().find(|e| e.path == b"big").unwrap().id;
        match what {
            "garbage" => {
                sess.send_target(signature(big, b"BXS1 and then nonsense".to_vec())).unwrap();
                sess.send_target(msg::need_for(listing.seq, &[big])).unwrap();
            }
            "not needed" => {
                sess.send_target(signature(big, valid_part())).unwrap();
                sess.send_target(msg::need_for(listing.seq, &[])).unwrap();
            }
            _ => {
                sess.send_target(msg::need_for(listing.seq, &[])).unwrap();
                read_manifest_end(&mut sess);
                sess.send_target(signature(big, valid_part())).unwrap();
                sess.send_target(msg::need_end()).unwrap();
            }
        }
        let end = sess.finish(Duration::from_secs(10));
        let code = fatal_code(&end, what);
        assert_eq!(code, pb::ErrorCode::ProtocolViolation as i32, "{what}: {}", end.describe());
        assert!(blitx_hostile::wait_until(Duration::from_secs(10), || readers.done()), "{what}");
        let (frames, _) = readers.join();
        let sent = frames.iter().filter(|(h, _)| h.kind != blitx_core::frame::FrameKind::End);
        assert_eq!(sent.count(), 0, "{what}: file data sent");
    }
}
