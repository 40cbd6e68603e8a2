//! Builders for control-protocol messages, with any field values a test wants (nothing here
//! validates: that is the receiver's job).

use crate::pb;
pub use crate::pb::EntryKind as Kind;

/// Modification time given to built entries (an old, fixed time).
pub const MTIME_SEC: i64 = 1_600_000_000;

/// Chunk size of [`params`] (the protocol's default, 4 MiB).
pub const CHUNK_BYTES: u32 = 4 << 20;
/// Small-file limit of [`params`] (256 KiB): files up to this size travel in bundles.
pub const SMALL_FILE_BYTES: u32 = 256 << 10;
/// Bundle size of [`params`] (1 MiB).
pub const BUNDLE_BYTES: u32 = 1 << 20;

/// One manifest entry with every field chosen by the caller (`path` is relative to the session's
/// root, e.g. `b"x/dir/f"`; the root itself is `b""`).
pub fn entry(
    id: u64,
    path: impl AsRef<[u8]>,
    kind: Kind,
    size_bytes: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> pb::Entry {
    pb::Entry {
        id,
        path: path.as_ref().to_vec(),
        kind: kind as i32,
        size_bytes,
        mtime: Some(pb::Timestamp { sec: MTIME_SEC, nsec: 0 }),
        mode,
        uid,
        gid,
        // Fields this suite leaves at their defaults (and any the protocol adds later).
        ..Default::default()
    }
}

/// The uid and gid of this process (owners for entries that should not look odd).
pub fn my_ids() -> (u32, u32) {
    (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
}

/// A regular file owned by this process's user.
pub fn file(id: u64, path: impl AsRef<[u8]>, size_bytes: u64, mode: u32) -> pb::Entry {
    let (uid, gid) = my_ids();
    entry(id, path, Kind::File, size_bytes, mode, uid, gid)
}

/// A directory owned by this process's user.
pub fn dir(id: u64, path: impl AsRef<[u8]>, mode: u32) -> pb::Entry {
    let (uid, gid) = my_ids();
    entry(id, path, Kind::Dir, 0, mode, uid, gid)
}

/// A symlink at `path` pointing at `target` (verbatim bytes, absolute or relative).
pub fn symlink(id: u64, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> pb::Entry {
    let (uid, gid) = my_ids();
    let target = target.as_ref().to_vec();
    let mut e = entry(id, path, Kind::Symlink, target.len() as u64, 0o777, uid, gid);
    e.link_target = Some(target);
    e
}

/// The session root's own entry (a directory, id 0, path empty).
pub fn root_entry(mode: u32) -> pb::Entry {
    dir(0, b"", mode)
}

fn source(msg: pb::source_msg::Msg) -> pb::SourceMsg {
    pb::SourceMsg { msg: Some(msg) }
}

/// `SourceMsg.root`.
pub fn root(e: pb::Entry) -> pb::SourceMsg {
    source(pb::source_msg::Msg::Root(e))
}

/// One listing part of `dir`.
pub fn listing(dir: impl AsRef<[u8]>, entries: Vec<pb::Entry>, last_part: bool) -> pb::SourceMsg {
    source(pb::source_msg::Msg::Listing(pb::Listing {
        dir: dir.as_ref().to_vec(),
        entries,
        last_part,
        // Targets echo it in their Need; a real source numbers its listings.
        seq: 0,
    }))
}

pub fn walk_error(path: impl AsRef<[u8]>, message: &str) -> pb::SourceMsg {
    source(pb::source_msg::Msg::WalkError(pb::WalkError {
        path: path.as_ref().to_vec(),
        message: message.into(),
    }))
}

pub fn manifest_end() -> pb::SourceMsg {
    source(pb::source_msg::Msg::ManifestEnd(pb::Empty {}))
}

pub fn file_failed(id: u64, path: impl AsRef<[u8]>, message: &str) -> pb::SourceMsg {
    source(pb::source_msg::Msg::FileFailed(pb::FileFailed {
        id,
        path: path.as_ref().to_vec(),
        message: message.into(),
    }))
}

/// Every byte of chunked file `id` was read and it did not change (protocol version 3: the
/// target commits a chunked file only after this).
pub fn file_read(id: u64) -> pb::SourceMsg {
    source(pb::source_msg::Msg::FileRead(pb::FileRead { id }))
}

pub fn data_end() -> pb::SourceMsg {
    source(pb::source_msg::Msg::DataEnd(pb::Empty {}))
}

/// `TargetMsg.need` answering the first listing (seq 0).
pub fn need(ids: &[u64]) -> pb::TargetMsg {
    need_for(0, ids)
}

/// `TargetMsg.need` answering listing `listing`.
pub fn need_for(listing: u64, ids: &[u64]) -> pb::TargetMsg {
    pb::TargetMsg {
        msg: Some(pb::target_msg::Msg::Need(pb::Need {
            ids: ids.to_vec(),
            listing,
            offers: Vec::new(),
        })),
    }
}

pub fn need_end() -> pb::TargetMsg {
    pb::TargetMsg { msg: Some(pb::target_msg::Msg::NeedEnd(pb::Empty {})) }
}

/// Session parameters with the protocol's defaults (4 MiB chunks, 256 KiB small files,
/// 1 MiB bundles, size+mtime, owners preserved).
pub fn params() -> pb::Params {
    pb::Params {
        chunk_bytes: CHUNK_BYTES,
        small_file_bytes_max: SMALL_FILE_BYTES,
        bundle_bytes: BUNDLE_BYTES,
        compare: pb::CompareKind::SizeMtime as i32,
        preserve_owner: true,
        ..Default::default()
    }
}

/// An `Open` for `direction` on `path` over one TCP stream, with [`params`].
pub fn open(direction: pb::Direction, path: impl AsRef<[u8]>) -> pb::Open {
    pb::Open {
        protocol_version: crate::PROTOCOL_VERSION,
        client_version: "hostile".into(),
        direction: direction as i32,
        path: path.as_ref().to_vec(),
        params: Some(params()),
        transport: "tcp".into(),
        tcp_streams: 1,
        stall_timeout_secs: 10,
        ..Default::default()
    }
}

/// `open(Push, path)`: the client is the source, the daemon writes below `path`.
pub fn open_push(path: impl AsRef<[u8]>) -> pb::Open {
    open(pb::Direction::Push, path)
}

/// `open(Pull, path)`: the daemon is the source.
pub fn open_pull(path: impl AsRef<[u8]>) -> pb::Open {
    open(pb::Direction::Pull, path)
}

// ----- frame wrappers

pub fn client_open(o: pb::Open) -> pb::ClientFrame {
    pb::ClientFrame { msg: Some(pb::client_frame::Msg::Open(o)) }
}

pub fn client_source(m: pb::SourceMsg) -> pb::ClientFrame {
    pb::ClientFrame { msg: Some(pb::client_frame::Msg::Source(m)) }
}

pub fn client_target(m: pb::TargetMsg) -> pb::ClientFrame {
    pb::ClientFrame { msg: Some(pb::client_frame::Msg::Target(m)) }
}

pub fn server_source(m: pb::SourceMsg) -> pb::ServerFrame {
    pb::ServerFrame { msg: Some(pb::server_frame::Msg::Source(m)) }
}

pub fn server_target(m: pb::TargetMsg) -> pb::ServerFrame {
    pb::ServerFrame { msg: Some(pb::server_frame::Msg::Target(m)) }
}

pub fn server_summary(s: pb::Summary) -> pb::ServerFrame {
    pb::ServerFrame { msg: Some(pb::server_frame::Msg::Summary(s)) }
}

/// A one-line description of a server frame, for assertion messages.
pub fn describe_server(f: &pb::ServerFrame) -> String {
    use pb::server_frame::Msg;
    match &f.msg {
        None => "empty frame".into(),
        Some(Msg::Accept(a)) => format!(
            "Accept(transport {:?}, tcp {:?})",
            a.transport,
            a.tcp.as_ref().map(|t| (&t.addr, t.streams))
        ),
        Some(Msg::Source(s)) => format!("Source({})", describe_source(s)),
        Some(Msg::Target(t)) => match &t.msg {
            Some(pb::target_msg::Msg::Need(n)) => format!("Need({} ids)", n.ids.len()),
            Some(pb::target_msg::Msg::NeedEnd(_)) => "NeedEnd".into(),
            Some(pb::target_msg::Msg::Signature(sg)) => {
                format!("Signature(file {}, {} bytes)", sg.id, sg.part.len())
            }
            Some(pb::target_msg::Msg::Committed(c)) => {
                format!("Committed({} ids, last {})", c.ids.len(), c.last)
            }
            None => "Target(empty)".into(),
        },
        Some(Msg::Events(e)) => format!(
            "Events({})",
            e.events
                .iter()
                .take(5)
                .map(|e| format!(
                    "{:?} {} {}",
                    pb::EventKind::try_from(e.kind),
                    String::from_utf8_lossy(&e.path),
                    e.message.as_deref().unwrap_or("")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Some(Msg::Summary(s)) => describe_summary(s),
        Some(Msg::Error(e)) => {
            format!("Error(code {} {:?}: {})", e.code, pb::ErrorCode::try_from(e.code), e.message)
        }
        Some(Msg::Rdma(_)) => "Rdma".into(),
    }
}

pub fn describe_source(s: &pb::SourceMsg) -> String {
    use pb::source_msg::Msg;
    match &s.msg {
        None => "empty".into(),
        Some(Msg::Root(_)) => "root".into(),
        Some(Msg::Listing(l)) => format!(
            "listing {:?} ({} entries, last {})",
            String::from_utf8_lossy(&l.dir),
            l.entries.len(),
            l.last_part
        ),
        Some(Msg::WalkError(w)) => format!("walk error {}", w.message),
        Some(Msg::ManifestEnd(_)) => "manifest end".into(),
        Some(Msg::FileFailed(f)) => {
            format!("file failed id {} {:?}: {}", f.id, String::from_utf8_lossy(&f.path), f.message)
        }
        Some(Msg::FileRead(f)) => format!("file read id {}", f.id),
        Some(Msg::DataEnd(_)) => "data end".into(),
    }
}

pub fn describe_summary(s: &pb::Summary) -> String {
    format!(
        "Summary(fatal {:?}, files_copied {}, files_sent {}, error_count {}, errors {:?})",
        s.fatal,
        s.files_copied,
        s.files_sent,
        s.error_count,
        s.errors
            .iter()
            .take(3)
            .map(|e| format!("{}: {}", String::from_utf8_lossy(&e.path), e.message))
            .collect::<Vec<_>>()
    )
}
