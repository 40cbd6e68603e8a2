//! `RelPath::parse` (core/src/path.rs) on the bytes a peer or the command line sends.
//!
//! Input: `k` (u16, little endian), then bytes; the first `k` of them (at most) are parsed as a
//! path and the rest are joined to it as a name (the whole input is also parsed as a path). Checks: never panics; a parsed path has no NUL, no empty,
//! `.` or `..` component, no leading `/`, at most PATH_BYTES_MAX bytes, stays under any root,
//! and parses to itself again; `join` and `split_last` undo each other.
#![no_main]

use std::path::{Component, Path};

use blitx_core::RelPath;
use blitx_core::path::{NAME_BYTES_MAX, PATH_BYTES_MAX, validate_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The whole input as a path: long inputs reach the length limits.
    check(data);
    let Some((k, rest)) = data.split_first_chunk::<2>() else { return };
    let (path, name) = rest.split_at(usize::from(u16::from_le_bytes(*k)).min(rest.len()));
    if let Some(p) = check(path) {
        join(&p, name);
    }
    if validate_name(name).is_ok() {
        let n = RelPath::parse(name);
        assert!(n.as_ref().is_ok_and(|n| n.depth() == 1), "valid name {name:?} is not a path");
    }
});

/// Parses `bytes` and checks what a `RelPath` promises.
fn check(bytes: &[u8]) -> Option<RelPath> {
    let p = RelPath::parse(bytes).ok()?;
    let b = p.as_bytes();
    assert!(b.len() <= PATH_BYTES_MAX, "{p:?} is longer than PATH_BYTES_MAX");
    assert!(!b.starts_with(b"/"), "{p:?} is absolute");
    assert!(!b.contains(&0), "{p:?} contains NUL");
    assert!(b == bytes || b.len() + 1 == bytes.len(), "parse changed more than a trailing /");
    let mut depth = 0;
    if !b.is_empty() {
        for c in b.split(|&x| x == b'/') {
            assert!(!matches!(c, b"" | b"." | b".."), "{p:?} has component {c:?}");
            assert!(c.len() <= NAME_BYTES_MAX, "{p:?} has a name longer than NAME_BYTES_MAX");
            depth += 1;
        }
    }
    assert_eq!(p.depth(), depth);
    assert_eq!(p.components().count(), depth);
    assert_eq!(RelPath::parse(b).as_ref(), Ok(&p), "a parsed path does not parse to itself");
    let root = Path::new("/srv/root");
    let under = p.under(root);
    let inside =
        under.strip_prefix(root).map(|r| r.components().all(|c| matches!(c, Component::Normal(_))));
    assert_eq!(inside, Ok(true), "{p:?} leaves the root as {under:?}");
    match p.split_last() {
        None => assert!(p.is_root()),
        Some((parent, name)) => {
            assert_eq!(name, p.file_name());
            assert!(validate_name(name).is_ok(), "last component {name:?} is not a name");
            assert!(p.starts_with(&parent) && parent.depth() + 1 == depth);
            assert_eq!(parent.join(name).as_ref(), Ok(&p), "join does not undo split_last");
        }
    }
    Some(p)
}

fn join(p: &RelPath, name: &[u8]) {
    match p.join(name) {
        Ok(joined) => {
            assert!(validate_name(name).is_ok(), "joined invalid name {name:?}");
            assert_eq!(check(joined.as_bytes()).as_ref(), Some(&joined));
            let (parent, last) = joined.split_last().expect("a joined path is not the root");
            assert_eq!((&parent, last), (p, name), "split_last does not undo join");
            assert!(joined.starts_with(p) && !p.starts_with(&joined));
        }
        Err(_) => {
            let len = p.as_bytes().len() + usize::from(!p.is_root()) + name.len();
            assert!(validate_name(name).is_err() || len > PATH_BYTES_MAX, "refused {name:?}");
        }
    }
}
