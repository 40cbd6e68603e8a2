//! Remote operations (`blit ls`, `du`, `rm`, `mkdir` on `blit://HOST/path`): the client's calls
//! and the conversions both ends use. The daemon's side is in `server/ops.rs`; the file-system
//! work in [`blitx_storage::ops`].
//!
//! Everything the daemon sends is validated here before a caller sees it: names are one valid
//! component, directories lie below the requested path, file types are ones Linux defines, pages
//! are no longer than [`PAGE_ENTRIES_MAX`]. Failures arrive as gRPC statuses and are turned into
//! an [`OpFailure`] by their code, never by their text.

use std::time::Duration;

use blitx_core::RelPath;
use blitx_core::manifest::Timestamp;
use blitx_storage::ops::{
    FileType, ListPage, PAGE_ENTRIES_MAX, Removed, Stat, USAGE_PAGE_MAX, Usage,
};

use crate::PROTOCOL_VERSION;
use crate::cancel::{Cancel, Interrupted};
use crate::client::{ClientError, connect, runtime};
use crate::convert::ConvertError;
use crate::pb;
use crate::url::RemoteSpec;

/// Why the daemon refused or failed an operation (its gRPC status code, as a type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpFailure {
    /// The path is malformed, or resolves through a symlink or a non-directory.
    BadPath,
    NotFound,
    /// `--read-only`, or the file system's permissions.
    PermissionDenied,
    AlreadyExists,
    /// A directory without `-r`, the root, a mount point, not a directory.
    Refused,
    /// Another transfer is writing there.
    Locked,
    /// A limit of the daemon (sessions, entries, depth).
    Limit,
    /// The daemon speaks another protocol version.
    Version,
    Cancelled,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{message}")]
    Daemon { failure: OpFailure, message: String },
    #[error("the daemon sent a bad reply: {0}")]
    Reply(#[from] ConvertError),
    #[error("the daemon ended the reply early")]
    Truncated,
    #[error("cancelled")]
    Cancelled,
}

impl OpError {
    fn from_status(s: &tonic::Status) -> OpError {
        use tonic::Code;
        let failure = match s.code() {
            Code::InvalidArgument => OpFailure::BadPath,
            Code::NotFound => OpFailure::NotFound,
            Code::PermissionDenied => OpFailure::PermissionDenied,
            Code::AlreadyExists => OpFailure::AlreadyExists,
            Code::FailedPrecondition => OpFailure::Refused,
            Code::Aborted => OpFailure::Locked,
            Code::ResourceExhausted => OpFailure::Limit,
            Code::Unimplemented | Code::OutOfRange => OpFailure::Version,
            Code::Cancelled => OpFailure::Cancelled,
            _ => OpFailure::Other,
        };
        let message = match failure {
            OpFailure::Version if s.code() == Code::Unimplemented => {
                "the daemon does not offer remote operations (an older blit)".to_string()
            }
            _ => s.message().to_string(),
        };
        OpError::Daemon { failure, message }
    }
}

fn bad(what: impl Into<String>) -> ConvertError {
    ConvertError(what.into())
}

fn rel(bytes: &[u8]) -> Result<RelPath, ConvertError> {
    RelPath::parse(bytes).map_err(|e| bad(e.to_string()))
}

// ---- conversions ----

pub(crate) fn stat_to_pb(s: &Stat) -> pb::RemoteStat {
    pb::RemoteStat {
        name: s.name.clone(),
        mode: s.file_type.mode_bits() | (s.mode & 0o7777),
        size_bytes: s.size_bytes,
        allocated_bytes: s.allocated_bytes,
        mtime: Some(pb::Timestamp { sec: s.mtime.sec, nsec: s.mtime.nsec }),
        uid: s.uid,
        gid: s.gid,
        nlink: s.nlink,
        link_target: s.link_target.clone(),
    }
}

pub(crate) fn stat_from_pb(s: &pb::RemoteStat) -> Result<Stat, ConvertError> {
    blitx_core::path::validate_name(&s.name).map_err(|e| bad(e.to_string()))?;
    let file_type = FileType::from_mode(s.mode)
        .ok_or_else(|| bad(format!("unknown file type in mode {:o}", s.mode)))?;
    let mtime =
        s.mtime.as_ref().map(|t| Timestamp { sec: t.sec, nsec: t.nsec }).unwrap_or_default();
    if mtime.nsec >= 1_000_000_000 {
        return Err(bad("mtime nanoseconds out of range"));
    }
    if let Some(t) = &s.link_target
        && t.len() > blitx_core::path::PATH_BYTES_MAX
    {
        return Err(bad("symlink target longer than PATH_MAX"));
    }
    Ok(Stat {
        name: s.name.clone(),
        file_type,
        mode: s.mode & 0o7777,
        size_bytes: s.size_bytes,
        allocated_bytes: s.allocated_bytes,
        mtime,
        uid: s.uid,
        gid: s.gid,
        nlink: s.nlink,
        link_target: if file_type == FileType::Symlink { s.link_target.clone() } else { None },
    })
}

pub(crate) fn page_to_pb(p: &ListPage) -> pb::RemoteListPage {
    pb::RemoteListPage {
        dir: p.dir.as_bytes().to_vec(),
        entries: p.entries.iter().map(stat_to_pb).collect(),
        last_part: p.last_part,
        is_file: p.is_file,
    }
}

/// A page of the listing of `asked`: its directory is `asked` or lies below it.
pub fn page_from_pb(p: &pb::RemoteListPage, asked: &RelPath) -> Result<ListPage, ConvertError> {
    let dir = rel(&p.dir)?;
    if !dir.starts_with(asked) {
        return Err(bad(format!(
            "a page for {} outside the listed {}",
            dir.display(),
            asked.display()
        )));
    }
    if p.entries.len() > PAGE_ENTRIES_MAX {
        return Err(bad(format!(
            "a page of {} entries (at most {PAGE_ENTRIES_MAX})",
            p.entries.len()
        )));
    }
    if p.is_file && (p.entries.len() != 1 || dir != *asked) {
        return Err(bad("a file's page must name the file alone"));
    }
    let entries = p.entries.iter().map(stat_from_pb).collect::<Result<Vec<_>, _>>()?;
    Ok(ListPage { dir, entries, last_part: p.last_part, is_file: p.is_file })
}

pub(crate) fn usage_to_pb(path: &RelPath, u: &Usage) -> pb::RemoteUsage {
    pb::RemoteUsage {
        path: path.as_bytes().to_vec(),
        apparent_bytes: u.apparent_bytes,
        allocated_bytes: u.allocated_bytes,
        files: u.files,
        dirs: u.dirs,
    }
}

pub fn usage_from_pb(
    u: &pb::RemoteUsage,
    asked: &RelPath,
) -> Result<(RelPath, Usage), ConvertError> {
    let path = rel(&u.path)?;
    if !path.starts_with(asked) {
        return Err(bad(format!("a total for {} outside {}", path.display(), asked.display())));
    }
    let usage = Usage {
        apparent_bytes: u.apparent_bytes,
        allocated_bytes: u.allocated_bytes,
        files: u.files,
        dirs: u.dirs,
    };
    Ok((path, usage))
}

// ---- the client's calls ----

/// Runs one call against the daemon, ending it (and with it the daemon's work) on `cancel`.
fn call<T, F, Fut>(
    remote: &RemoteSpec,
    timeout: Duration,
    cancel: &Cancel,
    f: F,
) -> Result<T, OpError>
where
    F: FnOnce(pb::blit_client::BlitClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, OpError>>,
{
    let rt = runtime()?;
    rt.block_on(async {
        let client = match cancel.race(connect(remote, timeout), None).await {
            Ok(c) => c?,
            Err(_) => return Err(OpError::Cancelled),
        };
        match cancel.race(f(client), None).await {
            Ok(r) => r,
            Err(Interrupted::Cancelled | Interrupted::Deadline) => Err(OpError::Cancelled),
        }
    })
}

/// `blit ls [-R]`: hands each page to `page` as it arrives.
pub fn list(
    remote: &RemoteSpec,
    recursive: bool,
    timeout: Duration,
    cancel: &Cancel,
    page: &mut dyn FnMut(ListPage),
) -> Result<(), OpError> {
    let asked = remote.path.clone();
    call(remote, timeout, cancel, |mut c| async move {
        let req = pb::RemoteListRequest {
            protocol_version: PROTOCOL_VERSION,
            path: asked.as_bytes().to_vec(),
            recursive,
        };
        let mut stream =
            c.remote_list(req).await.map_err(|s| OpError::from_status(&s))?.into_inner();
        let mut any = false;
        while let Some(p) = stream.message().await.map_err(|s| OpError::from_status(&s))? {
            page(page_from_pb(&p, &asked)?);
            any = true;
        }
        if any { Ok(()) } else { Err(OpError::Truncated) }
    })
}

/// `blit du [-s]`: hands each directory's total to `each` (only the requested path's with
/// `summarize`) and returns the requested path's.
pub fn usage(
    remote: &RemoteSpec,
    summarize: bool,
    timeout: Duration,
    cancel: &Cancel,
    each: &mut dyn FnMut(&RelPath, &Usage),
) -> Result<Usage, OpError> {
    let asked = remote.path.clone();
    call(remote, timeout, cancel, |mut c| async move {
        let req = pb::RemoteUsageRequest {
            protocol_version: PROTOCOL_VERSION,
            path: asked.as_bytes().to_vec(),
            summarize,
        };
        let mut stream =
            c.remote_usage(req).await.map_err(|s| OpError::from_status(&s))?.into_inner();
        let mut last = None;
        while let Some(p) = stream.message().await.map_err(|s| OpError::from_status(&s))? {
            if p.totals.len() > USAGE_PAGE_MAX {
                return Err(bad(format!("a page of {} totals", p.totals.len())).into());
            }
            for t in &p.totals {
                let (path, u) = usage_from_pb(t, &asked)?;
                each(&path, &u);
                last = Some((path, u));
            }
        }
        match last {
            Some((path, u)) if path == asked => Ok(u),
            _ => Err(OpError::Truncated),
        }
    })
}

/// `blit rm [-r]`.
pub fn remove(
    remote: &RemoteSpec,
    recursive: bool,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<Removed, OpError> {
    let asked = remote.path.clone();
    call(remote, timeout, cancel, |mut c| async move {
        let req = pb::RemoteRemoveRequest {
            protocol_version: PROTOCOL_VERSION,
            path: asked.as_bytes().to_vec(),
            recursive,
        };
        let r = c.remote_remove(req).await.map_err(|s| OpError::from_status(&s))?.into_inner();
        Ok(Removed { files: r.files, dirs: r.dirs })
    })
}

/// `blit mkdir [-p]`: how many directories were made.
pub fn make_dir(
    remote: &RemoteSpec,
    parents: bool,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<u64, OpError> {
    let asked = remote.path.clone();
    call(remote, timeout, cancel, |mut c| async move {
        let req = pb::RemoteMakeDirRequest {
            protocol_version: PROTOCOL_VERSION,
            path: asked.as_bytes().to_vec(),
            parents,
        };
        let r = c.remote_make_dir(req).await.map_err(|s| OpError::from_status(&s))?.into_inner();
        Ok(r.made)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(name: &[u8]) -> pb::RemoteStat {
        pb::RemoteStat { name: name.to_vec(), mode: 0o100644, ..Default::default() }
    }

    #[test]
    fn hostile_pages_are_refused() {
        let asked = RelPath::parse_str("a").unwrap();
        let page = |dir: &[u8], entries: Vec<pb::RemoteStat>, is_file: bool| pb::RemoteListPage {
            dir: dir.to_vec(),
            entries,
            last_part: true,
            is_file,
        };
        assert!(page_from_pb(&page(b"a/b", vec![stat(b"x")], false), &asked).is_ok());
        for (dir, name) in [
            (&b"b"[..], &b"x"[..]),
            (b"a/../b", b"x"),
            (b"/etc", b"x"),
            (b"a", b".."),
            (b"a", b"x/y"),
            (b"a", b"x\0"),
            (b"a", b""),
        ] {
            assert!(
                page_from_pb(&page(dir, vec![stat(name)], false), &asked).is_err(),
                "{dir:?} {name:?}"
            );
        }
        let mut weird = stat(b"x");
        weird.mode = 0o170644;
        assert!(page_from_pb(&page(b"a", vec![weird], false), &asked).is_err());
        let many = vec![stat(b"x"); PAGE_ENTRIES_MAX + 1];
        assert!(page_from_pb(&page(b"a", many, false), &asked).is_err());
        assert!(page_from_pb(&page(b"a", vec![stat(b"x"), stat(b"y")], true), &asked).is_err());
        let u = pb::RemoteUsage { path: b"elsewhere".to_vec(), ..Default::default() };
        assert!(usage_from_pb(&u, &asked).is_err());
    }

    #[test]
    fn stats_round_trip() {
        let s = Stat {
            name: b"l\xff".to_vec(),
            file_type: FileType::Symlink,
            mode: 0o777,
            size_bytes: 3,
            allocated_bytes: 0,
            mtime: Timestamp { sec: -5, nsec: 9 },
            uid: 1,
            gid: 2,
            nlink: 1,
            link_target: Some(b"t".to_vec()),
        };
        assert_eq!(stat_from_pb(&stat_to_pb(&s)).unwrap(), s);
    }
}
