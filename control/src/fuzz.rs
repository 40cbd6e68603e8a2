//! Entry points for the fuzz targets in fuzz/ (feature `fuzzing`, never in a release build).
//!
//! Each function decodes bytes as a frame a peer sends and runs every `*_from_pb` conversion on
//! what decodes, checking what [`convert`] promises: it never panics, what it accepts holds the
//! domain types' invariants, and what it accepts survives a round trip through the wire format
//! unchanged (a value we accept, we can also send). The generated `pb` types stay private: the
//! fuzz crate only hands over bytes.

// Seeds spell out the fields they set and take the rest from `Default`, also where that is
// every field today: messages grow fields, and the seeds should keep compiling when they do.
#![allow(clippy::needless_update)]

use blitx_core::RelPath;
use blitx_core::manifest::{Entry, EntryKind};
use blitx_core::path::PATH_BYTES_MAX;
use blitx_core::session::{SessionParams, SourceMsg};
use prost::Message;

use crate::convert::{self, ConvertError};
use crate::pb;

/// Decodes `bytes` as a `ClientFrame` (what the daemon receives) and converts what decodes.
pub fn client_frame(bytes: &[u8]) {
    let Ok(frame) = pb::ClientFrame::decode(bytes) else { return };
    use pb::client_frame::Msg;
    match &frame.msg {
        None => {}
        Some(Msg::Open(o)) => open(o),
        Some(Msg::Source(m)) => source_msg(m),
        Some(Msg::Target(m)) => target_msg(m),
        Some(Msg::Rdma(e)) => rdma_peer(e),
    }
}

/// Decodes `bytes` as a `ServerFrame` (what the client receives) and converts what decodes.
pub fn server_frame(bytes: &[u8]) {
    let Ok(frame) = pb::ServerFrame::decode(bytes) else { return };
    use pb::server_frame::Msg;
    match &frame.msg {
        None => {}
        Some(Msg::Accept(a)) => accept(a),
        Some(Msg::Source(m)) => source_msg(m),
        Some(Msg::Target(m)) => target_msg(m),
        Some(Msg::Events(e)) => e.events.iter().for_each(event),
        Some(Msg::Summary(s)) => summary(s),
        Some(Msg::Error(e)) => error(e),
        Some(Msg::Rdma(e)) => rdma_peer(e),
    }
}

/// Message types nested inside the frames, in the order of [`message`]'s selector byte.
const MESSAGES: [&str; 12] = [
    "open", "source", "entry", "listing", "target", "rdma", "qp", "accept", "event", "summary",
    "error", "params",
];

/// Decodes `bytes[1..]` as the message type that `bytes[0]` picks among those nested inside the
/// frames ([`MESSAGES`]) and converts it. Without the enclosing length prefixes a mutated field
/// stays valid protobuf (a varint that grows to ten bytes needs no other byte fixed), so the
/// fuzzer reaches values it rarely reaches through a whole frame.
pub fn message(bytes: &[u8]) {
    fn decode<M: Message + Default>(b: &[u8]) -> Option<M> {
        M::decode(b).ok()
    }
    let Some((&selector, b)) = bytes.split_first() else { return };
    let rdma = |qps| pb::RdmaEndpoint { qps, ..Default::default() };
    let source = |msg| pb::SourceMsg { msg: Some(msg) };
    use pb::source_msg::Msg;
    match usize::from(selector) % MESSAGES.len() {
        0 => decode(b).iter().for_each(open),
        1 => decode(b).iter().for_each(source_msg),
        2 => decode(b).into_iter().for_each(|e| source_msg(&source(Msg::Root(e)))),
        3 => decode(b).into_iter().for_each(|l| source_msg(&source(Msg::Listing(l)))),
        4 => decode(b).iter().for_each(target_msg),
        5 => decode(b).iter().for_each(rdma_peer),
        6 => decode(b).into_iter().for_each(|q| rdma_peer(&rdma(vec![q]))),
        7 => decode(b).iter().for_each(accept),
        8 => decode(b).iter().for_each(event),
        9 => decode(b).iter().for_each(summary),
        10 => decode(b).iter().for_each(error),
        _ => decode(b).iter().for_each(params),
    }
}

/// Decodes `bytes` as the remote operations' replies (a listing page, a usage page; what the
/// client of `blit ls`/`du` receives) and converts them: never panics, and an accepted page is
/// within its bound and survives a round trip through our own encoder.
pub fn remote_reply(bytes: &[u8]) {
    let asked = RelPath::root();
    if let Ok(p) = pb::RemoteListPage::decode(bytes)
        && let Ok(page) = crate::ops::page_from_pb(&p, &asked)
    {
        assert!(page.entries.len() <= blitx_storage::ops::PAGE_ENTRIES_MAX);
        let again = crate::ops::page_from_pb(&crate::ops::page_to_pb(&page), &asked);
        assert_eq!(again.ok().as_ref(), Some(&page), "a listing page changed in a round trip");
    }
    if let Ok(p) = pb::RemoteUsagePage::decode(bytes) {
        for t in &p.totals {
            if let Ok((path, _)) = crate::ops::usage_from_pb(t, &asked) {
                assert!(path.as_bytes().len() <= PATH_BYTES_MAX);
            }
        }
    }
}

/// Valid frames of every kind, encoded: a seed corpus that gets the fuzzer past the protobuf
/// framing at once. Names say what each one is.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut client = |name: &str, msg: pb::client_frame::Msg| {
        out.push((format!("client-{name}"), pb::ClientFrame { msg: Some(msg) }.encode_to_vec()));
    };
    use pb::client_frame::Msg as C;
    let mut params = convert::params_to_pb(&SessionParams::default());
    params.filters_rules = ["*.tmp", "build/**"]
        .map(|p| pb::FiltersRule {
            kind: pb::FiltersRuleKind::FiltersExclude as i32,
            pattern: p.into(),
        })
        .into();
    let open = pb::Open {
        protocol_version: crate::PROTOCOL_VERSION,
        client_version: crate::BUILD_VERSION.into(),
        direction: pb::Direction::Push as i32,
        path: b"backup/data".to_vec(),
        params: Some(params),
        transport: "auto".into(),
        tcp_streams: 4,
        tcp_buffer_bytes: 4 << 20,
        events: true,
        client_rdma: Some(pb::RdmaDevice {
            name: "rxe0".into(),
            active: true,
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2].to_vec(),
            gid_index: 1,
            link_gbps: 100.0,
            numa_node: 0,
            ipv4: vec![10, 0, 0, 2],
            ipv4_prefix_len: 24,
            ..Default::default()
        }),
        rdma_qps: 2,
        stall_timeout_secs: 30,
        rdma_frame_checksums: true,
        ..Default::default()
    };
    client("open", C::Open(open));
    for (name, m) in source_seeds() {
        client(&name, C::Source(m));
    }
    for (name, m) in target_seeds() {
        client(&name, C::Target(m));
    }
    for (name, e) in rdma_seeds() {
        client(&name, C::Rdma(e));
    }

    let mut server = |name: &str, msg: pb::server_frame::Msg| {
        out.push((format!("server-{name}"), pb::ServerFrame { msg: Some(msg) }.encode_to_vec()));
    };
    use pb::server_frame::Msg as S;
    server(
        "accept-tcp",
        S::Accept(pb::Accept {
            protocol_version: crate::PROTOCOL_VERSION,
            server_version: crate::BUILD_VERSION.into(),
            transport: "tcp".into(),
            reason: "no RDMA device on the client".into(),
            tcp: Some(pb::TcpEndpoint {
                addr: "10.0.0.2:40123".into(),
                token: vec![7; 32],
                streams: 4,
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    server(
        "accept-rdma",
        S::Accept(pb::Accept {
            protocol_version: crate::PROTOCOL_VERSION,
            server_version: crate::BUILD_VERSION.into(),
            transport: "rdma".into(),
            reason: "both sides have rxe0".into(),
            tcp: Some(pb::TcpEndpoint {
                addr: "[fe80::1%2]:9".into(),
                token: vec![1; 32],
                streams: 1,
                buffer_bytes: 1 << 20,
            }),
            rdma: rdma_seeds().into_iter().next().map(|(_, e)| e),
            ..Default::default()
        }),
    );
    for (name, m) in source_seeds() {
        server(&name, S::Source(m));
    }
    for (name, m) in target_seeds() {
        server(&name, S::Target(m));
    }
    for (name, e) in rdma_seeds() {
        server(&name, S::Rdma(e));
    }
    server(
        "events",
        S::Events(pb::Events {
            events: vec![
                pb::Event {
                    kind: pb::EventKind::Copied as i32,
                    path: b"d/f".to_vec(),
                    bytes: 10,
                    ..Default::default()
                },
                pb::Event {
                    kind: pb::EventKind::Failed as i32,
                    path: b"d/g".to_vec(),
                    bytes: 0,
                    message: Some("permission denied".into()),
                    ..Default::default()
                },
            ],
        }),
    );
    server(
        "summary",
        S::Summary(pb::Summary {
            files_copied: 3,
            bytes_copied: 4096,
            dirs_created: 1,
            errors: vec![pb::FileError { path: b"d/g".to_vec(), message: "EACCES".into() }],
            error_count: 1,
            fatal: "disk full".into(),
            ..Default::default()
        }),
    );
    server(
        "error",
        S::Error(pb::Error {
            code: pb::ErrorCode::BadPath as i32,
            message: "path \"../x\" leaves the root".into(),
            ..Default::default()
        }),
    );
    // The messages nested in those frames, alone, for `message`.
    let mut nested = Vec::new();
    for (name, bytes) in &out {
        let mut add = |kind: &str, encoded: Vec<u8>| {
            let selector = MESSAGES.iter().position(|m| *m == kind).unwrap_or(0);
            let n = nested.len();
            nested.push((
                format!("message-{kind}-{n}-{name}"),
                [&[selector as u8][..], &encoded].concat(),
            ));
        };
        if name.starts_with("client-") {
            use pb::client_frame::Msg;
            match pb::ClientFrame::decode(bytes.as_slice()).ok().and_then(|f| f.msg) {
                Some(Msg::Open(o)) => {
                    o.params.iter().for_each(|p| add("params", p.encode_to_vec()));
                    add("open", o.encode_to_vec());
                }
                Some(Msg::Source(m)) => nested_source(&m, &mut add),
                Some(Msg::Target(m)) => add("target", m.encode_to_vec()),
                Some(Msg::Rdma(e)) => nested_rdma(&e, &mut add),
                None => {}
            }
        } else {
            use pb::server_frame::Msg;
            match pb::ServerFrame::decode(bytes.as_slice()).ok().and_then(|f| f.msg) {
                Some(Msg::Accept(a)) => add("accept", a.encode_to_vec()),
                Some(Msg::Source(m)) => nested_source(&m, &mut add),
                Some(Msg::Target(m)) => add("target", m.encode_to_vec()),
                Some(Msg::Events(e)) => {
                    e.events.iter().for_each(|e| add("event", e.encode_to_vec()))
                }
                Some(Msg::Summary(s)) => add("summary", s.encode_to_vec()),
                Some(Msg::Error(e)) => add("error", e.encode_to_vec()),
                Some(Msg::Rdma(e)) => nested_rdma(&e, &mut add),
                None => {}
            }
        }
    }
    out.extend(nested);
    out
}

fn nested_source(m: &pb::SourceMsg, add: &mut impl FnMut(&str, Vec<u8>)) {
    use pb::source_msg::Msg;
    match &m.msg {
        Some(Msg::Root(e)) => add("entry", e.encode_to_vec()),
        Some(Msg::Listing(l)) => {
            l.entries.iter().for_each(|e| add("entry", e.encode_to_vec()));
            add("listing", l.encode_to_vec());
        }
        _ => {}
    }
    add("source", m.encode_to_vec());
}

fn nested_rdma(e: &pb::RdmaEndpoint, add: &mut impl FnMut(&str, Vec<u8>)) {
    e.qps.iter().for_each(|q| add("qp", q.encode_to_vec()));
    add("rdma", e.encode_to_vec());
}

fn entry_seed(path: &[u8], kind: pb::EntryKind) -> pb::Entry {
    pb::Entry {
        id: 9,
        path: path.to_vec(),
        kind: kind as i32,
        size_bytes: 10,
        mtime: Some(pb::Timestamp { sec: 1_700_000_000, nsec: 5 }),
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        link_target: (kind == pb::EntryKind::Symlink).then(|| b"../f".to_vec()),
        inode: Some(pb::InodeKey { dev: 3, ino: 4 }),
        sparse: false,
        content_hash: Some(vec![0xab; 16]),
        ..Default::default()
    }
}

fn source_seeds() -> Vec<(String, pb::SourceMsg)> {
    use pb::source_msg::Msg;
    let msgs = [
        ("root", Msg::Root(entry_seed(b"", pb::EntryKind::Dir))),
        (
            "listing",
            Msg::Listing(pb::Listing {
                seq: 0,
                dir: b"d".to_vec(),
                entries: vec![
                    entry_seed(b"d/f", pb::EntryKind::File),
                    entry_seed(b"d/l", pb::EntryKind::Symlink),
                    entry_seed(b"d/e", pb::EntryKind::Dir),
                ],
                last_part: true,
                ..Default::default()
            }),
        ),
        (
            "walk-error",
            Msg::WalkError(pb::WalkError { path: b"d/e".to_vec(), message: "EACCES".into() }),
        ),
        ("manifest-end", Msg::ManifestEnd(pb::Empty {})),
        (
            "file-failed",
            Msg::FileFailed(pb::FileFailed {
                id: 9,
                path: b"d/f".to_vec(),
                message: "changed while read".into(),
            }),
        ),
        ("file-read", Msg::FileRead(pb::FileRead { id: 9 })),
        ("data-end", Msg::DataEnd(pb::Empty {})),
    ];
    msgs.into_iter()
        .map(|(name, m)| (format!("source-{name}"), pb::SourceMsg { msg: Some(m) }))
        .collect()
}

fn target_seeds() -> Vec<(String, pb::TargetMsg)> {
    use pb::target_msg::Msg;
    [
        ("need", Msg::Need(pb::Need { ids: vec![1, 2, 300], listing: 0, offers: Vec::new() })),
        (
            "need-offers",
            Msg::Need(pb::Need {
                ids: vec![1, 2],
                listing: 3,
                offers: vec![pb::Offer { id: 2, chunks: vec![0, 1, 5], hashes: vec![7, 8, 9] }],
            }),
        ),
        ("need-end", Msg::NeedEnd(pb::Empty {})),
        ("signature", Msg::Signature(pb::Signature { id: 2, part: b"BXS1\0\x10\0\0".to_vec() })),
    ]
    .into_iter()
    .map(|(name, m)| (format!("target-{name}"), pb::TargetMsg { msg: Some(m) }))
    .collect()
}

fn rdma_seeds() -> Vec<(String, pb::RdmaEndpoint)> {
    let qp = |qpn| pb::QpParams {
        qpn,
        psn: 77,
        gid: vec![0xfe; 16],
        gid_index: 1,
        mtu: 5,
        ..Default::default()
    };
    vec![
        (
            "rdma-receiver".into(),
            pb::RdmaEndpoint {
                qps: vec![qp(17), qp(18)],
                ring: Some(pb::RdmaRing {
                    addr: 0x7f00_0000_0000,
                    rkey: 0x1234,
                    slot_bytes: (4 << 20) + 4096,
                    slots: 16,
                    len_bytes: 16 * ((4 << 20) + 4096),
                    ..Default::default()
                }),
                chunk_bytes: 4 << 20,
                ..Default::default()
            },
        ),
        (
            "rdma-sender".into(),
            pb::RdmaEndpoint { qps: vec![qp(19)], chunk_bytes: 4 << 20, ..Default::default() },
        ),
        ("rdma-ready".into(), pb::RdmaEndpoint { ready: true, ..Default::default() }),
    ]
}

// ----- the conversions and what they promise

/// What every `RelPath` promises, checked on the bytes rather than through its own methods.
fn check_path(p: &RelPath) {
    let b = p.as_bytes();
    assert!(b.len() <= PATH_BYTES_MAX, "accepted path longer than PATH_BYTES_MAX: {p:?}");
    assert!(!b.starts_with(b"/"), "accepted absolute path {p:?}");
    assert!(!b.contains(&0), "accepted path with a NUL byte: {p:?}");
    if !b.is_empty() {
        for c in b.split(|&x| x == b'/') {
            assert!(!matches!(c, b"" | b"." | b".."), "accepted path with component {c:?}: {p:?}");
        }
    }
}

/// `value`, accepted from a peer, is sent back as `wire` by our own `*_to_pb`; decoding that
/// must be accepted again and encode to the same bytes.
fn round_trip<P: Message + Default, T>(
    wire: &P,
    from_pb: impl Fn(&P) -> Result<T, ConvertError>,
    to_pb: impl Fn(&T) -> P,
) {
    let bytes = wire.encode_to_vec();
    let decoded = match P::decode(bytes.as_slice()) {
        Ok(d) => d,
        Err(e) => panic!("our own encoding does not decode: {e}"),
    };
    let again = match from_pb(&decoded) {
        Ok(v) => v,
        Err(e) => panic!("a value we accepted is refused once sent back: {e}"),
    };
    assert_eq!(to_pb(&again).encode_to_vec(), bytes, "a round trip changed the message");
}

fn params(p: &pb::Params) {
    let Ok(params) = convert::params_from_pb(p) else { return };
    assert!(params.validate().is_ok(), "accepted invalid params {params:?}");
    let back = convert::params_from_pb(&convert::params_to_pb(&params));
    assert_eq!(back.as_ref(), Ok(&params), "params changed in a round trip");
}

fn open(o: &pb::Open) {
    let _ = convert::open_version(o);
    let Ok(req) = convert::open_from_pb(o) else { return };
    check_path(&req.path);
    assert!(req.params.validate().is_ok(), "accepted invalid params {:?}", req.params);
    assert!(req.client_version.chars().count() <= 64);
    if let Some(d) = &req.client_rdma {
        // Any prefix length accepted must be usable by the subnet check.
        assert_eq!(d.shares_subnet(d), d.ipv4.is_some());
    }
    round_trip(
        &convert::open_to_pb(&req),
        |f| match &f.msg {
            Some(pb::client_frame::Msg::Open(o)) => convert::open_from_pb(o),
            _ => Err(ConvertError("open_to_pb made no Open".into())),
        },
        convert::open_to_pb,
    );
}

fn check_entry(e: &Entry) {
    check_path(&e.path);
    assert!(e.mtime.nsec < 1_000_000_000, "accepted mtime nanoseconds {}", e.mtime.nsec);
    assert!(e.mode <= 0o7777, "accepted mode {:#o}", e.mode);
    // A size is an off_t: the target's offset arithmetic relies on it fitting in an i64.
    assert!(i64::try_from(e.size_bytes).is_ok(), "accepted file size {}", e.size_bytes);
    assert!(e.kind != EntryKind::Symlink || e.link_target.is_some(), "symlink without target");
    assert!(e.link_target.as_ref().is_none_or(|t| t.len() <= PATH_BYTES_MAX && !t.contains(&0)));
}

fn source_msg(m: &pb::SourceMsg) {
    let Ok(msg) = convert::source_msg_from_pb(m) else { return };
    match &msg {
        SourceMsg::Root(e) => check_entry(e),
        SourceMsg::Listing { dir, entries, .. } => {
            check_path(dir);
            assert!(entries.len() <= blitx_storage::walk::LISTING_ENTRIES_MAX);
            for e in entries {
                check_entry(e);
                // The promise the target relies on: every entry is a direct child of `dir`.
                let parent = e.path.split_last().map(|(parent, _)| parent);
                assert_eq!(parent.as_ref(), Some(dir), "entry {:?} outside {dir:?}", e.path);
                assert!(e.path.starts_with(dir) && e.path.depth() == dir.depth() + 1);
            }
        }
        SourceMsg::WalkError { path, .. } | SourceMsg::FileFailed { path, .. } => check_path(path),
        SourceMsg::ManifestEnd | SourceMsg::DataEnd | SourceMsg::FileRead { .. } => {}
    }
    let back = convert::source_msg_from_pb(&convert::source_msg_to_pb(&msg));
    assert_eq!(back.as_ref(), Ok(&msg), "a source message changed in a round trip");
}

fn target_msg(m: &pb::TargetMsg) {
    let Ok(msg) = convert::target_msg_from_pb(m) else { return };
    let back = convert::target_msg_from_pb(&convert::target_msg_to_pb(&msg));
    assert_eq!(back.as_ref(), Ok(&msg), "a target message changed in a round trip");
}

fn rdma_peer(e: &pb::RdmaEndpoint) {
    let Ok(peer) = convert::rdma_peer_from_pb(e) else { return };
    let qps = match &peer {
        convert::RdmaPeer::Receiver(r) => r.qps.len(),
        convert::RdmaPeer::Sender(s) => s.qps.len(),
        convert::RdmaPeer::Ready => 1,
    };
    assert!((1..=64).contains(&qps), "accepted an RDMA endpoint with {qps} QPs");
    round_trip(&convert::rdma_peer_to_pb(&peer), convert::rdma_peer_from_pb, |p| {
        convert::rdma_peer_to_pb(p)
    });
}

fn accept(a: &pb::Accept) {
    let Ok(acc) = convert::accept_from_pb(a) else { return };
    assert!(acc.server_version.chars().count() <= 64 && acc.reason.chars().count() <= 1024);
    round_trip(
        &convert::accept_to_pb(&acc),
        |f| match &f.msg {
            Some(pb::server_frame::Msg::Accept(a)) => convert::accept_from_pb(a),
            _ => Err(ConvertError("accept_to_pb made no Accept".into())),
        },
        convert::accept_to_pb,
    );
}

fn event(e: &pb::Event) {
    let Ok(ev) = convert::event_from_pb(e) else { return };
    check_path(&ev.path);
    let back = convert::event_from_pb(&convert::event_to_pb(&ev));
    assert_eq!(back.as_ref(), Ok(&ev), "an event changed in a round trip");
}

fn summary(s: &pb::Summary) {
    let Ok(sum) = convert::summary_from_pb(s) else { return };
    assert!(sum.target.errors.len() <= blitx_storage::report::ERRORS_KEPT_MAX);
    sum.target.errors.iter().for_each(|e| check_path(&e.path));
    for frame in
        [convert::target_summary_to_pb(&sum.target), convert::source_summary_to_pb(&sum.source)]
    {
        let Some(pb::server_frame::Msg::Summary(s)) = &frame.msg else {
            panic!("a summary frame without a Summary")
        };
        assert!(convert::summary_from_pb(s).is_ok(), "a summary we accepted is refused");
    }
}

fn error(e: &pb::Error) {
    let err = convert::error_from_pb(e);
    assert!(err.message.chars().count() <= 4096);
    let Some(pb::server_frame::Msg::Error(back)) = convert::error_to_pb(&err).msg else {
        panic!("error_to_pb made no Error")
    };
    assert_eq!(convert::error_from_pb(&back), err, "an error changed in a round trip");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed decodes, converts and passes the checks (so the corpus starts deep inside).
    #[test]
    fn seeds_are_accepted() {
        for (name, bytes) in seeds() {
            if name.starts_with("message-") {
                message(&bytes);
            } else if name.starts_with("client-") {
                let frame = pb::ClientFrame::decode(bytes.as_slice()).unwrap();
                use pb::client_frame::Msg;
                let ok = match frame.msg.as_ref().unwrap() {
                    Msg::Open(o) => convert::open_from_pb(o).is_ok(),
                    Msg::Source(m) => convert::source_msg_from_pb(m).is_ok(),
                    Msg::Target(m) => convert::target_msg_from_pb(m).is_ok(),
                    Msg::Rdma(e) => convert::rdma_peer_from_pb(e).is_ok(),
                };
                assert!(ok, "seed {name} is refused");
                client_frame(&bytes);
            } else {
                let frame = pb::ServerFrame::decode(bytes.as_slice()).unwrap();
                use pb::server_frame::Msg;
                let ok = match frame.msg.as_ref().unwrap() {
                    Msg::Accept(a) => convert::accept_from_pb(a).is_ok(),
                    Msg::Source(m) => convert::source_msg_from_pb(m).is_ok(),
                    Msg::Target(m) => convert::target_msg_from_pb(m).is_ok(),
                    Msg::Events(e) => e.events.iter().all(|e| convert::event_from_pb(e).is_ok()),
                    Msg::Summary(s) => convert::summary_from_pb(s).is_ok(),
                    Msg::Error(_) | Msg::Rdma(_) => true,
                };
                assert!(ok, "seed {name} is refused");
                server_frame(&bytes);
            }
        }
    }
}
