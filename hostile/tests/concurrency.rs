//! Two pushes into one daemon directory at once (TESTS.md row 15): the target ends up a copy of
//! one source or the other, never a per-file mix.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use blitx_hostile::process::{DaemonProc, Finished, Running, s, xfer_cmd};
use blitx_hostile::scratch;
use blitx_storage::testkit::{Rng, compare_trees, set_mtime, write_random};

const FILES: usize = 200;
const FILE_BYTES: u64 = 64 << 10;

/// `FILES` files of 64 KiB with the same names in every tree, contents and times from `seed`.
fn tree(dir: &Path, seed: u64, mtime: i64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..FILES {
        let p = dir.join(format!("f{i:03}.bin"));
        write_random(&p, FILE_BYTES, &mut rng);
        set_mtime(&p, mtime, 0);
    }
    set_mtime(dir, mtime, 0);
}

fn both(a: &Path, b: &Path, url: &str, extra: &[&str]) -> (Finished, Finished) {
    let mut args_a = vec![s(a), url];
    args_a.extend(extra);
    let mut args_b = vec![s(b), url];
    args_b.extend(extra);
    let ra = Running::spawn(xfer_cmd(&args_a));
    let rb = Running::spawn(xfer_cmd(&args_b));
    (ra.wait(Duration::from_secs(30)), rb.wait(Duration::from_secs(30)))
}

/// The target is exactly one of the sources.
fn one_of(target: &Path, a: &Path, b: &Path) -> Result<&'static str, String> {
    match (compare_trees(a, target), compare_trees(b, target)) {
        (Ok(()), _) => Ok("A"),
        (_, Ok(())) => Ok("B"),
        (Err(ea), Err(eb)) => Err(format!("{}; vs A: {ea}; vs B: {eb}", provenance(target, a, b))),
    }
}

/// Whose contents each target file has: "N files from A, M from B, K neither".
fn provenance(target: &Path, a: &Path, b: &Path) -> String {
    let (mut from_a, mut from_b, mut neither) = (0, 0, 0);
    for i in 0..FILES {
        let name = format!("f{i:03}.bin");
        let got = std::fs::read(target.join(&name)).ok();
        if got.is_some() && got == std::fs::read(a.join(&name)).ok() {
            from_a += 1;
        } else if got.is_some() && got == std::fs::read(b.join(&name)).ok() {
            from_b += 1;
        } else {
            neither += 1;
        }
    }
    format!("{from_a} files from A, {from_b} from B, {neither} neither")
}

fn mentions_lock(r: &Finished) -> bool {
    r.stderr.to_lowercase().contains("lock")
}

#[test]
fn concurrent_pushes_to_one_target_do_not_interleave() {
    let t = scratch("row15");
    let a = t.path().join("a");
    let b = t.path().join("b");
    tree(&a, 1, 1_000_000_000);
    tree(&b, 2, 1_100_000_000);
    let root = t.path().join("export");
    std::fs::create_dir(&root).unwrap();
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));

    // Without --wait-lock: both succeed one after the other (the target is one source), or
    // the loser fails with exit code 1 and says the target is locked.
    let (ra, rb) = both(&a, &b, &d.url("t"), &[]);
    let ctx = format!("push A: {}\npush B: {}", ra.describe(), rb.describe());
    let result = one_of(&root.join("t"), &a, &b);
    match (ra.code(), rb.code()) {
        (Some(0), Some(0)) => {
            if let Err(e) = &result {
                panic!("two concurrent pushes both succeeded and mixed their files: {e}\n{ctx}");
            }
        }
        (Some(0), Some(1)) => assert!(mentions_lock(&rb), "B failed without naming a lock\n{ctx}"),
        (Some(1), Some(0)) => assert!(mentions_lock(&ra), "A failed without naming a lock\n{ctx}"),
        _ => panic!("unexpected outcome of two concurrent pushes\n{ctx}"),
    }
    if ra.code() != rb.code() {
        let winner = if ra.code() == Some(0) { &a } else { &b };
        compare_trees(winner, &root.join("t"))
            .unwrap_or_else(|e| panic!("the target is not the winner's tree: {e}\n{ctx}"));
    }

    // With --wait-lock on both: both succeed, the target is exactly one of the sources.
    let (ra, rb) = both(&a, &b, &d.url("u"), &["--wait-lock"]);
    let ctx = format!("push A: {}\npush B: {}", ra.describe(), rb.describe());
    assert_eq!((ra.code(), rb.code()), (Some(0), Some(0)), "with --wait-lock\n{ctx}");
    if let Err(e) = one_of(&root.join("u"), &a, &b) {
        panic!("with --wait-lock, the target is a mix of both sources: {e}\n{ctx}");
    }
}
