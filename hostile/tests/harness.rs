//! Self-checks of the harness: an honest script through [`RawClient`] and [`HostileDaemon`]
//! completes with the stock binaries, so when a hostile test fails, the harness is not why.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use blitx_hostile::daemon::{Behaviour, HostileDaemon, PullScript};
use blitx_hostile::msg;
use blitx_hostile::process::{DaemonProc, s, xfer};
use blitx_hostile::raw::RawClient;
use blitx_hostile::scratch;
use blitx_storage::testkit::Rng;

const STEP: Duration = Duration::from_secs(10);

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Rng::new(seed).fill(&mut v);
    v
}

#[test]
fn hostile_daemon_serves_a_benign_pull() {
    let t = scratch("harness-pull");
    let local = t.path().join("local");
    let small = bytes(5, 1);
    let big = bytes((5 << 20) + 7, 2);
    let nested = bytes(100 << 10, 3);
    let script = PullScript {
        messages: vec![
            msg::root(msg::root_entry(0o755)),
            msg::listing(
                "",
                vec![
                    msg::file(1, "small", small.len() as u64, 0o640),
                    msg::file(2, "big", big.len() as u64, 0o644),
                    msg::dir(3, "d", 0o750),
                ],
                true,
            ),
            msg::listing("d", vec![msg::file(4, "d/nested", nested.len() as u64, 0o600)], true),
        ],
        contents: HashMap::from([(1, small.clone()), (2, big.clone()), (4, nested.clone())]),
        streams: 2,
        finish: true,
        single_file: false,
    };
    let hd = HostileDaemon::start(Behaviour::Pull(script)).unwrap();
    let r = xfer(&[&hd.url("x"), s(&local)], Duration::from_secs(20));
    assert_eq!(r.code(), Some(0), "{}\ndaemon log: {:?}", r.describe(), hd.log());
    assert_eq!(std::fs::read(local.join("small")).unwrap(), small);
    assert_eq!(std::fs::read(local.join("big")).unwrap(), big);
    assert_eq!(std::fs::read(local.join("d/nested")).unwrap(), nested);
    let mode = |p: &str| std::fs::metadata(local.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode("small"), mode("d"), mode("d/nested")), (0o640, 0o750, 0o600));
}

#[test]
fn raw_push_of_a_benign_listing_succeeds() {
    let t = scratch("harness-push");
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let small = bytes(11, 4);
    let big = bytes((4 << 20) + 4096 + 3, 5);
    let c = RawClient::connect(&d.addr).unwrap();
    let hello = c.hello().unwrap();
    assert_eq!(c.daemon_version(), Some(hello.protocol_version));
    let mut open = msg::open_push("benign");
    open.tcp_streams = 2;
    let (mut sess, mut data) = c.open_with_data(open).unwrap();
    // The daemon may grant fewer streams than asked for (its memory budget decides).
    assert!(!data.streams.is_empty());
    sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
    let listing = vec![
        msg::file(1, "small", small.len() as u64, 0o644),
        msg::file(2, "big", big.len() as u64, 0o600),
        msg::dir(3, "d", 0o755),
    ];
    sess.send_source(msg::listing("", listing, true)).unwrap();
    let mut ids = sess.need(STEP).unwrap();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    data.send_bundle(1, &[(1, &small)]).unwrap();
    data.send_file_chunks(2, &big, msg::CHUNK_BYTES).unwrap();
    sess.send_source(msg::file_read(2)).unwrap();
    sess.send_source(msg::listing("d", vec![], true)).unwrap();
    assert_eq!(sess.need(STEP).unwrap(), Vec::<u64>::new());
    let end = sess.end_push(&mut data, STEP).unwrap();
    assert!(end.is_success_summary(), "{}", end.describe());
    assert_eq!(std::fs::read(root.join("benign/small")).unwrap(), small);
    assert_eq!(std::fs::read(root.join("benign/big")).unwrap(), big);
    assert!(root.join("benign/d").is_dir());
}
