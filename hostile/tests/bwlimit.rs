//! `Params.bwlimit_bytes_per_s` from a raw client: 0 means no limit; a rate too low for the
//! session's chunk size (a chunk in more than 5 s) is refused before anything is created;
//! u64::MAX is accepted and works (no overflow in the daemon's bucket).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blitx_hostile::process::{DaemonProc, s, xfer};
use blitx_hostile::raw::RawClient;
use blitx_hostile::{msg, pb, scratch};
use blitx_storage::testkit::{Rng, compare_trees, write_random};

const STEP: Duration = Duration::from_secs(10);

fn with_rate(mut open: pb::Open, rate: u64) -> pb::Open {
    open.params.as_mut().unwrap().bwlimit_bytes_per_s = rate;
    open
}

#[test]
fn a_rate_too_low_for_the_chunk_size_is_refused_before_anything_is_made() {
    let t = scratch("bwlimit-low");
    let root = t.path().join("export");
    std::fs::create_dir_all(root.join("src")).unwrap();
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let c = RawClient::connect(&d.addr).unwrap();
    // 4 MiB chunks: 1 byte/s and 838,860 bytes/s (a chunk in 5.000001 s) are both too slow.
    for rate in [1, 838_860] {
        for open in [msg::open_push("never/made"), msg::open_pull("src")] {
            let mut sess = c.session(Some(with_rate(open, rate)));
            let end = sess.finish(STEP);
            assert!(end.is_refusal(), "rate {rate}: {}", end.describe());
            assert!(end.describe().contains("bandwidth limit"), "{}", end.describe());
        }
    }
    assert!(!root.join("never").exists());
}

#[test]
fn the_largest_rate_is_no_limit_and_no_overflow() {
    let t = scratch("bwlimit-max");
    let root = t.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_random(&src.join("f"), 9 << 20, &mut Rng::new(1));
    let mut d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    // A raw Open with u64::MAX is accepted in both directions.
    let c = RawClient::connect(&d.addr).unwrap();
    for open in [msg::open_push("raw"), msg::open_pull("")] {
        let mut sess = c.session(Some(with_rate(open, u64::MAX)));
        sess.accept(STEP).unwrap_or_else(|e| panic!("u64::MAX refused: {e}"));
    }
    // And a whole pull paced by it (the daemon's bucket) moves the file.
    let max = format!("--bwlimit={}B", u64::MAX);
    let r = xfer(&[s(&src), &d.url("pushed"), &max], STEP);
    assert_eq!(r.code(), Some(0), "{}\n{}", r.describe(), d.describe());
    let back = t.path().join("back");
    let r = xfer(&[&d.url("pushed"), s(&back), &max], STEP);
    assert_eq!(r.code(), Some(0), "{}\n{}", r.describe(), d.describe());
    compare_trees(&src, &back).unwrap();
    assert!(d.is_alive());
}
