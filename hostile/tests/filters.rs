//! Filter rules and `--files-from` lists a hostile client sends a real `blit daemon` (Params
//! fields 55-59): each malformed or oversized one is refused before Accept, cheaply, and the
//! daemon serves the next session.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use blitx_hostile::msg;
use blitx_hostile::process::DaemonProc;
use blitx_hostile::raw::{RawClient, Recv, describe_recv};
use blitx_hostile::{pb, scratch};

const BAD_REQUEST: i32 = 5;
const BAD_PATH: i32 = 2;

fn rule(kind: pb::FiltersRuleKind, pattern: impl Into<String>) -> pb::FiltersRule {
    pb::FiltersRule { kind: kind as i32, pattern: pattern.into() }
}

fn exclude(pattern: impl Into<String>) -> pb::FiltersRule {
    rule(pb::FiltersRuleKind::FiltersExclude, pattern)
}

fn error_code(r: &Recv) -> Option<i32> {
    match r {
        Recv::Frame(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Error(e)) }) => Some(e.code),
        _ => None,
    }
}

#[test]
fn hostile_filters_are_refused_before_accept() {
    let t = scratch("filters-hostile");
    let root = t.path().join("export");
    std::fs::create_dir_all(root.join("tree/sub")).unwrap();
    std::fs::write(root.join("tree/sub/f"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("tree/out")).unwrap();
    let d = DaemonProc::start(&root, &[]).unwrap_or_else(|e| panic!("{e}"));
    let files = |paths: &[&[u8]]| pb::FiltersFilesFrom {
        paths: paths.iter().map(|p| p.to_vec()).collect(),
    };
    type Edit = Box<dyn Fn(&mut pb::Params)>;
    let cases: Vec<(&str, i32, Edit)> = vec![
        ("an unmatched '['", BAD_REQUEST, Box::new(|p| p.filters_rules = vec![exclude("[a")])),
        (
            "an unknown rule kind",
            BAD_REQUEST,
            Box::new(|p| p.filters_rules = vec![pb::FiltersRule { kind: 99, pattern: "a".into() }]),
        ),
        (
            "an unspecified rule kind",
            BAD_REQUEST,
            Box::new(|p| p.filters_rules = vec![pb::FiltersRule { kind: 0, pattern: "a".into() }]),
        ),
        ("1025 rules", BAD_REQUEST, Box::new(|p| p.filters_rules = vec![exclude("a"); 1025])),
        (
            "a 4097-byte pattern",
            BAD_REQUEST,
            Box::new(|p| p.filters_rules = vec![exclude("a".repeat(4097))]),
        ),
        ("an empty pattern", BAD_REQUEST, Box::new(|p| p.filters_rules = vec![exclude("")])),
        (
            "min above max",
            BAD_REQUEST,
            Box::new(|p| {
                p.filters_min_size_bytes = Some(10);
                p.filters_max_size_bytes = Some(9);
            }),
        ),
        (
            "a '..' path",
            BAD_REQUEST,
            Box::new(move |p| p.filters_files_from = Some(files(&[b"sub/f", b"../x"]))),
        ),
        (
            "an absolute path",
            BAD_REQUEST,
            Box::new(move |p| p.filters_files_from = Some(files(&[b"/etc/passwd"]))),
        ),
        (
            "the root itself",
            BAD_REQUEST,
            Box::new(move |p| p.filters_files_from = Some(files(&[b""]))),
        ),
        (
            "a path through a symlink out of the root",
            BAD_PATH,
            Box::new(move |p| p.filters_files_from = Some(files(&[b"out/passwd"]))),
        ),
        (
            "a path that does not exist",
            BAD_PATH,
            Box::new(move |p| p.filters_files_from = Some(files(&[b"sub/nothing"]))),
        ),
    ];
    let c = RawClient::connect(&d.addr).unwrap();
    for (what, code, edit) in &cases {
        let mut open = msg::open_pull("tree");
        edit(open.params.as_mut().unwrap());
        let mut s = c.session(Some(open));
        let r = s.recv_skip_events(Duration::from_secs(10));
        assert_eq!(error_code(&r), Some(*code), "{what}: got {}", describe_recv(&r));
    }
    // The costliest rules a client may send (1024 patterns of 4096 bytes of wildcards) are
    // compiled within the automaton cap or refused as too complex, quickly either way.
    let mut open = msg::open_pull("tree");
    let pattern: String = "*?[a-z]**".repeat(4096 / 9);
    open.params.as_mut().unwrap().filters_rules = vec![exclude(pattern); 1024];
    let started = Instant::now();
    let mut s = c.session(Some(open));
    let r = s.recv_skip_events(Duration::from_secs(30));
    assert!(
        error_code(&r) == Some(BAD_REQUEST)
            || matches!(
                &r,
                Recv::Frame(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Accept(_)) })
            ),
        "the costliest rules: {}",
        describe_recv(&r)
    );
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    drop(s);
    // And an honest pull with rules still works.
    let mut open = msg::open_pull("tree");
    open.params.as_mut().unwrap().filters_rules = vec![exclude("*.tmp")];
    let mut s = c.session(Some(open));
    s.accept(Duration::from_secs(10)).unwrap_or_else(|e| panic!("honest pull: {e}"));
}
