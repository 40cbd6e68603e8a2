//! The daemon's side of the remote operations (`blit ls`, `du`, `rm`, `mkdir`): admission
//! (protocol version, path, `--read-only`, a session slot), one OS thread per operation running
//! [`blitx_storage::ops`], and the mapping of its errors to gRPC statuses by type.
//!
//! Bounds: each operation holds one of the `--max-sessions` permits while its thread runs (so a
//! client cannot start ten thousand recursive `du`s at once), visits at most `--max-entries`
//! entries, and stops when its client goes away: the response stream (or the unary call's
//! future) fires the operation's cancel when dropped, and a page the client does not take within
//! `--idle-timeout` ends it too. Daemon shutdown cancels every operation, and waits for them as
//! for sessions.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use blitx_core::RelPath;
use blitx_storage::ops::{self as fsops, OpError, OpLimits, Remover, USAGE_PAGE_MAX};
use rustix::io::Errno;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::Daemon;
use crate::PROTOCOL_VERSION;
use crate::cancel::Cancel;
use crate::ops::{page_to_pb, usage_to_pb};
use crate::pb;

/// Pages queued towards one client at most (each is at most a few MiB; see storage::ops).
const PAGES_QUEUED_MAX: usize = 4;

/// What one running operation holds: a session permit, the connection's busy mark and a count
/// in the daemon's active work (shutdown waits for it).
pub(super) struct OpSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _mark: crate::conns::SessionMark,
    active: Arc<watch::Sender<u64>>,
}

impl Drop for OpSlot {
    fn drop(&mut self) {
        self.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Fires a cancel when dropped (the client's call or stream went away).
struct FireOnDrop(Cancel);

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A response stream that cancels its operation when the client drops it.
pub(super) struct Guarded<T> {
    inner: tokio_stream::wrappers::ReceiverStream<Result<T, Status>>,
    _fire: FireOnDrop,
}

impl<T> Stream for Guarded<T> {
    type Item = Result<T, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

pub(super) type ListStream = Guarded<pb::RemoteListPage>;
pub(super) type UsageStream = Guarded<pb::RemoteUsagePage>;

/// The status for a failed operation, chosen by the error's type.
fn op_status(e: &OpError) -> Status {
    let text = match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    };
    let errno = e.errno();
    match e {
        OpError::NotFound { .. } => Status::not_found(text),
        OpError::Resolve { .. } => match errno {
            Some(Errno::ACCESS | Errno::PERM) => Status::permission_denied(text),
            Some(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => Status::invalid_argument(text),
            _ => Status::internal(text),
        },
        OpError::IsDirectory { .. }
        | OpError::NotDirectory { .. }
        | OpError::RemoveRoot
        | OpError::MountPoint { .. } => Status::failed_precondition(text),
        OpError::Exists { .. } => Status::already_exists(text),
        OpError::Locked { .. } => Status::aborted(text),
        OpError::TooDeep { .. } | OpError::TooManyEntries { .. } => {
            Status::resource_exhausted(text)
        }
        OpError::Cancelled => Status::cancelled(text),
        OpError::Io { .. } => match errno {
            Some(Errno::ACCESS | Errno::PERM | Errno::ROFS) => Status::permission_denied(text),
            Some(Errno::NOENT) => Status::not_found(text),
            Some(Errno::NOTEMPTY | Errno::BUSY | Errno::NOTDIR | Errno::ISDIR) => {
                Status::failed_precondition(text)
            }
            Some(Errno::NOSPC | Errno::DQUOT) => Status::resource_exhausted(text),
            _ => Status::internal(text),
        },
    }
}

/// Sends one item to the client, waiting at most the idle timeout and never past a cancel.
fn send_item<T>(
    rt: &tokio::runtime::Handle,
    tx: &mpsc::Sender<Result<T, Status>>,
    item: Result<T, Status>,
    idle: std::time::Duration,
    cancel: &Cancel,
) -> bool {
    let deadline = Instant::now() + idle;
    matches!(rt.block_on(cancel.race(tx.send(item), Some(deadline))), Ok(Ok(())))
}

impl Daemon {
    /// Admits one operation: version, path and `--read-only` are checked before a slot is
    /// taken; the slot refuses once `--max-sessions` sessions and operations run.
    fn admit_op<T>(
        &self,
        request: &Request<T>,
        version: u32,
        op: &'static str,
        path: &[u8],
        writes: bool,
    ) -> Result<(OpSlot, RelPath), Status> {
        let peer = request.remote_addr();
        let who = peer.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        if version != PROTOCOL_VERSION {
            return Err(Status::out_of_range(format!(
                "{op}: protocol version {version} is not this daemon's {PROTOCOL_VERSION}"
            )));
        }
        let path =
            RelPath::parse(path).map_err(|e| Status::invalid_argument(format!("{op}: {e}")))?;
        if writes && self.cfg.read_only {
            tracing::warn!(peer = %who, "refused {op} of {}: read-only", path.display());
            return Err(Status::permission_denied(format!(
                "{op} refused: this daemon is read-only (--read-only)"
            )));
        }
        let permit = Arc::clone(&self.sessions).try_acquire_owned().map_err(|_| {
            tracing::warn!(peer = %who, "refused {op}: --max-sessions reached");
            Status::resource_exhausted(format!(
                "this daemon already runs its maximum of {} sessions and operations (--max-sessions); try again later",
                self.cfg.max_sessions
            ))
        })?;
        let mark = self.conns.session(peer);
        self.active.send_modify(|n| *n += 1);
        tracing::info!(peer = %who, "{op} {}", path.display());
        Ok((OpSlot { _permit: permit, _mark: mark, active: Arc::clone(&self.active) }, path))
    }

    fn op_limits(&self, cancel: &Cancel) -> OpLimits {
        OpLimits { entries_max: self.cfg.max_entries, cancel: cancel.plane().clone() }
    }

    pub(super) fn serve_list(
        &self,
        request: Request<pb::RemoteListRequest>,
    ) -> Result<Response<ListStream>, Status> {
        let r = request.get_ref();
        let (slot, path) = self.admit_op(&request, r.protocol_version, "ls", &r.path, false)?;
        let recursive = r.recursive;
        let rt = tokio::runtime::Handle::current();
        let cancel = self.shutdown.child(&rt);
        let limits = self.op_limits(&cancel);
        let (tx, rx) = mpsc::channel(PAGES_QUEUED_MAX);
        let (root, idle) = (self.root.clone(), self.cfg.idle_timeout);
        let c = cancel.clone();
        spawn("ls", move || {
            let mut page = |p: fsops::ListPage| send_item(&rt, &tx, Ok(page_to_pb(&p)), idle, &c);
            let r = fsops::list(&root, &path, recursive, &limits, &mut page);
            if let Err(e) = r
                && !c.is_cancelled()
            {
                send_item(&rt, &tx, Err(op_status(&e)), idle, &c);
            }
            c.cancel();
            drop(slot);
        })?;
        let inner = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Guarded { inner, _fire: FireOnDrop(cancel) }))
    }

    pub(super) fn serve_usage(
        &self,
        request: Request<pb::RemoteUsageRequest>,
    ) -> Result<Response<UsageStream>, Status> {
        let r = request.get_ref();
        let (slot, path) = self.admit_op(&request, r.protocol_version, "du", &r.path, false)?;
        let summarize = r.summarize;
        let rt = tokio::runtime::Handle::current();
        let cancel = self.shutdown.child(&rt);
        let limits = self.op_limits(&cancel);
        let (tx, rx) = mpsc::channel(PAGES_QUEUED_MAX);
        let (root, idle) = (self.root.clone(), self.cfg.idle_timeout);
        let c = cancel.clone();
        spawn("du", move || {
            let mut page = Vec::new();
            let mut top_sent = false;
            let mut each = |p: &RelPath, u: &fsops::Usage| {
                if summarize {
                    return true;
                }
                top_sent |= *p == path;
                page.push(usage_to_pb(p, u));
                if page.len() < USAGE_PAGE_MAX {
                    return true;
                }
                let full = pb::RemoteUsagePage { totals: std::mem::take(&mut page) };
                send_item(&rt, &tx, Ok(full), idle, &c)
            };
            let result = fsops::usage(&root, &path, &limits, &mut each);
            let item = match result {
                Ok(total) => {
                    if !top_sent {
                        page.push(usage_to_pb(&path, &total));
                    }
                    Ok(pb::RemoteUsagePage { totals: page })
                }
                Err(e) => Err(op_status(&e)),
            };
            if !c.is_cancelled() {
                send_item(&rt, &tx, item, idle, &c);
            }
            c.cancel();
            drop(slot);
        })?;
        let inner = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Guarded { inner, _fire: FireOnDrop(cancel) }))
    }

    pub(super) async fn serve_remove(
        &self,
        request: Request<pb::RemoteRemoveRequest>,
    ) -> Result<Response<pb::RemoteRemoveReply>, Status> {
        let r = request.get_ref();
        let (slot, path) = self.admit_op(&request, r.protocol_version, "rm", &r.path, true)?;
        if path.is_root() {
            return Err(op_status(&OpError::RemoveRoot));
        }
        let recursive = r.recursive;
        let cancel = self.shutdown.child(&tokio::runtime::Handle::current());
        let limits = self.op_limits(&cancel);
        let root = self.root.clone();
        let _fire = FireOnDrop(cancel.clone());
        let (tx, rx) = oneshot::channel();
        spawn("rm", move || {
            let r = Remover::new(&root, &path, recursive, &limits)
                .and_then(|rm| rm.run(&limits.cancel));
            if let Ok(n) = &r {
                tracing::info!(
                    "rm {}: {} files, {} directories removed",
                    path.display(),
                    n.files,
                    n.dirs
                );
            }
            let _ = tx.send(r);
            drop(slot);
        })?;
        match rx.await {
            Ok(Ok(n)) => Ok(Response::new(pb::RemoteRemoveReply { files: n.files, dirs: n.dirs })),
            Ok(Err(e)) => Err(op_status(&e)),
            Err(_) => Err(Status::internal("the rm thread ended without an answer")),
        }
    }

    pub(super) async fn serve_make_dir(
        &self,
        request: Request<pb::RemoteMakeDirRequest>,
    ) -> Result<Response<pb::RemoteMakeDirReply>, Status> {
        let r = request.get_ref();
        let (slot, path) = self.admit_op(&request, r.protocol_version, "mkdir", &r.path, true)?;
        let parents = r.parents;
        let root = self.root.clone();
        let owner = if self.privileges.take_owners { None } else { self.privileges.owner };
        let (tx, rx) = oneshot::channel();
        spawn("mkdir", move || {
            let _ = tx.send(fsops::make_dir(&root, &path, parents, owner));
            drop(slot);
        })?;
        match rx.await {
            Ok(Ok(made)) => Ok(Response::new(pb::RemoteMakeDirReply { made })),
            Ok(Err(e)) => Err(op_status(&e)),
            Err(_) => Err(Status::internal("the mkdir thread ended without an answer")),
        }
    }
}

fn spawn(op: &str, f: impl FnOnce() + Send + 'static) -> Result<(), Status> {
    std::thread::Builder::new()
        .name(format!("blit-{op}"))
        .spawn(f)
        .map(drop)
        .map_err(|e| Status::resource_exhausted(format!("cannot start a thread for {op}: {e}")))
}
