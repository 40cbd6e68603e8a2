//! The daemon: serves pushes (client → daemon) and pulls (daemon → client) below one export
//! root.
//!
//! Each session runs on its own OS threads (the engine is blocking by design); the async gRPC
//! stream is bridged to the engine's channels by two small forwarding threads. Every path a
//! client names is parsed into a `RelPath` and opened beneath the export root with
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so `..`, absolute paths, NUL bytes and symlinks out of
//! the root are refused. SIGINT/SIGTERM cancel every session: writers stop, temporary files are
//! removed, and the daemon exits once the sessions have wound down.
//!
//! Bounds (docs/security.md): control connections ([`crate::conns`]), concurrent sessions, the
//! time a stream may take to send its Open, memory per session and in total (buffer pools and
//! listing bookkeeping), listing entries per session, and an idle timeout per session. Every
//! refusal is RESOURCE_EXHAUSTED. What a client may ask of a root daemon's privileges
//! (owners, setuid/setgid) is the operator's decision ([`blitx_storage::meta::Privileges`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blitx_core::session::{SourceMsg, TargetMsg};
use blitx_storage::RootDir;
use blitx_storage::limits::{Budget, Limits};
use blitx_storage::lock::{LockError, TargetLock};
use blitx_storage::meta::Privileges;
use blitx_storage::report::{Event, EventKind, Progress, Reporter};
use blitx_storage::source::{SourceError, SourceOptions, run_source};
use blitx_storage::target::{TargetError, TargetOptions, run_target};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{
    self, Accepted, Direction, ErrorCode, OpenRequest, RdmaDeviceInfo, RdmaPeer, RemoteError,
    TransportChoice,
};
use crate::dataplane::{self, DataPlaneOptions, Role};
use crate::pb;
use crate::pb::blit_server::{Blit, BlitServer};
use crate::{BUILD_VERSION, CONTROL_MESSAGE_BYTES_MAX, PROTOCOL_VERSION};

/// Frames queued towards one client at most.
const OUTBOUND_QUEUE_MAX: usize = 64;
/// How long shutdown waits for cancelled sessions to clean up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long one control message may wait for a slow client once the session is cancelled.
const CANCELLED_SEND_WAIT: Duration = Duration::from_secs(2);
/// Events batched into one message.
const EVENTS_PER_MESSAGE: usize = 256;
/// HTTP/2 pings: a peer that stops answering (a frozen or vanished client) is dropped after
/// interval + timeout, whatever its session was waiting for.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 streams one control connection may have open at once.
const STREAMS_PER_CONNECTION_MAX: u32 = 16;
/// A control connection with no session that moves no byte for this long is closed.
const CONNECTION_IDLE: Duration = Duration::from_secs(60);
/// The longest a push waits for another transfer's target lock (`wait_lock`).
const LOCK_WAIT_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub root: PathBuf,
    pub listen: SocketAddr,
    pub read_only: bool,
    /// I/O threads per session side.
    pub threads: usize,
    /// TCP streams when the client does not ask for a number.
    pub default_streams: u32,
    pub stall_timeout: Duration,
    /// Where each session's threads and buffers go: near the NIC that reaches the client.
    pub numa: blitx_topology::NumaPolicy,
    /// The verbs device to serve RDMA on (None: the first with an active port); `no_rdma`
    /// turns RDMA off.
    pub rdma_device: Option<String>,
    pub no_rdma: bool,
    /// Apply the owners clients send (a root daemon; default: the export root's owner).
    pub allow_owners: bool,
    /// Keep setuid/setgid bits clients send (default: stripped).
    pub allow_setid: bool,
    /// Concurrent sessions, control connections.
    pub max_sessions: usize,
    pub max_connections: usize,
    /// Listing entries per session (0: no limit).
    pub max_entries: u64,
    /// Memory for one session (buffers + bookkeeping) and for all of them.
    pub session_memory_bytes: u64,
    pub memory_bytes: u64,
    /// How long a new session stream may take to send its Open.
    pub open_timeout: Duration,
    /// A session in which nothing arrives and no data moves for this long is ended.
    pub idle_timeout: Duration,
}

/// Defaults of the daemon's limits (`blit daemon --help` shows the same values).
pub const MAX_SESSIONS_DEFAULT: u64 = 64;
pub const MAX_CONNECTIONS_DEFAULT: u64 = 256;
pub const MAX_ENTRIES_DEFAULT: u64 = 100_000_000;
pub const SESSION_MEMORY_DEFAULT: &str = "1G";
pub const MEMORY_DEFAULT: &str = "4G";
pub const OPEN_TIMEOUT_SECS_DEFAULT: u64 = 10;
pub const IDLE_TIMEOUT_SECS_DEFAULT: u64 = 300;

impl DaemonConfig {
    /// The defaults `blit daemon` uses, for `root` on `listen`.
    pub fn new(root: PathBuf, listen: SocketAddr) -> Self {
        DaemonConfig {
            root,
            listen,
            read_only: false,
            threads: blitx_storage::default_io_threads(),
            default_streams: 4,
            stall_timeout: Duration::from_secs(30),
            numa: blitx_topology::NumaPolicy::Auto,
            rdma_device: None,
            no_rdma: false,
            allow_owners: false,
            allow_setid: false,
            max_sessions: MAX_SESSIONS_DEFAULT as usize,
            max_connections: MAX_CONNECTIONS_DEFAULT as usize,
            max_entries: MAX_ENTRIES_DEFAULT,
            session_memory_bytes: 1 << 30, // SESSION_MEMORY_DEFAULT
            memory_bytes: 4 << 30,         // MEMORY_DEFAULT
            open_timeout: Duration::from_secs(OPEN_TIMEOUT_SECS_DEFAULT),
            idle_timeout: Duration::from_secs(IDLE_TIMEOUT_SECS_DEFAULT),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the export root {path}")]
    Root { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

struct Daemon {
    cfg: DaemonConfig,
    /// This machine's RDMA device, probed once at start (or why there is none).
    rdma: Result<RdmaDeviceInfo, Arc<dataplane::DataPlaneError>>,
    /// The device opened once for every session, with the pools it keeps between them.
    rdma_domain: Option<blitx_transport_rdma::RdmaDomain>,
    topology: Option<Arc<blitx_topology::Topology>>,
    root: RootDir,
    shutdown: Arc<AtomicBool>,
    active: Arc<AtomicU64>,
    next_session: AtomicU64,
    /// One permit per concurrent session.
    sessions: Arc<tokio::sync::Semaphore>,
    /// Memory of all sessions together.
    budget: Arc<Budget>,
    conns: Arc<crate::conns::Registry>,
    privileges: Privileges,
}

/// The daemon's RDMA domain ([`dataplane::rdma_daemon_domain`]) with its ring registered on the
/// node that `--numa` picks for the verbs device: the ring exists before any session, so it is
/// placed here rather than by a session. Only the pool is bound; the calling thread's CPUs stay
/// as they are (the daemon's own threads serve every session).
fn placed_rdma_domain(
    topology: Option<&blitx_topology::Topology>,
    cfg: &DaemonConfig,
    device: &str,
) -> Result<(blitx_transport_rdma::RdmaDomain, u64), dataplane::DataPlaneError> {
    let placement = topology.and_then(|t| match blitx_topology::place(t, cfg.numa, Some(device)) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("RDMA ring not placed: {e}");
            None
        }
    });
    if let Some(p) = &placement {
        tracing::info!("RDMA ring placement: {p}");
    }
    let placer = placement
        .as_ref()
        .and_then(blitx_topology::NodePlacer::shared)
        .map(|p| p as Arc<dyn blitx_core::placer::Placer>);
    let _placed = blitx_core::placer::enter(placer);
    dataplane::rdma_daemon_domain(cfg.rdma_device.as_deref())
}

/// Runs the daemon until SIGINT/SIGTERM (or `shutdown` is set). `on_listening` receives the bound
/// address (useful with port 0).
pub fn run_daemon(
    cfg: DaemonConfig,
    shutdown: Arc<AtomicBool>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), DaemonError> {
    let root = RootDir::open(&cfg.root)
        .map_err(|source| DaemonError::Root { path: cfg.root.display().to_string(), source })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("blit-grpc")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let active = Arc::new(AtomicU64::new(0));
    let topology = if cfg.numa == blitx_topology::NumaPolicy::Off {
        None
    } else {
        match blitx_topology::Topology::discover() {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::warn!("NUMA placement off: cannot read the topology: {e}");
                None
            }
        }
    };
    let rdma = if cfg.no_rdma {
        Err(Arc::new(dataplane::DataPlaneError::RdmaDisabled))
    } else {
        dataplane::local_rdma_device(cfg.rdma_device.as_deref()).map_err(Arc::new)
    };
    match &rdma {
        Ok(d) => tracing::info!("RDMA device {} (GID index {}) available", d.name, d.gid_index),
        Err(why) => tracing::info!("no RDMA: {why}"),
    }
    let rdma_domain = match &rdma {
        Ok(device) => match placed_rdma_domain(topology.as_deref(), &cfg, &device.name) {
            Ok((d, bytes)) => {
                tracing::info!(
                    "RDMA: {} MiB ring registered ahead for pushes; up to {} pools kept between sessions",
                    bytes >> 20,
                    dataplane::DAEMON_IDLE_POOLS_MAX
                );
                Some(d)
            }
            Err(e) => {
                tracing::warn!(
                    "RDMA: no shared domain ({e}); each session registers its own memory"
                );
                None
            }
        },
        Err(_) => None,
    };
    let privileges = daemon_privileges(&cfg, &root);
    tracing::info!(
        "clients' owners: {}; setuid/setgid bits: {}",
        match (privileges.take_owners, privileges.owner) {
            (true, _) => "applied (--allow-owners)".to_string(),
            (false, Some((u, g))) => format!("replaced by the export root's owner {u}:{g}"),
            (false, None) => "not applied (files belong to this daemon's user)".to_string(),
        },
        if privileges.keep_setid { "kept (--allow-setid)" } else { "stripped" }
    );
    let conns = crate::conns::Registry::new(cfg.max_connections, CONNECTION_IDLE);
    let daemon = Daemon {
        cfg: cfg.clone(),
        rdma: rdma.clone(),
        rdma_domain,
        topology,
        root,
        shutdown: Arc::clone(&shutdown),
        active: Arc::clone(&active),
        next_session: AtomicU64::new(1),
        sessions: Arc::new(tokio::sync::Semaphore::new(cfg.max_sessions.max(1))),
        budget: Budget::new("for all sessions (--memory)", cfg.memory_bytes, None),
        conns: Arc::clone(&conns),
        privileges,
    };
    rt.block_on(async move {
        let listener = listen(cfg.listen)
            .map_err(|source| DaemonError::Listen { addr: cfg.listen, source })?;
        let local = listener.local_addr().map_err(|source| DaemonError::Listen { addr: cfg.listen, source })?;
        tracing::info!(root = %cfg.root.display(), "blit daemon listening on {local}");
        on_listening(local);
        let (conn_tx, conn_rx) = mpsc::channel(16);
        tokio::spawn(crate::conns::accept_loop(listener, conns, conn_tx));
        let incoming = tokio_stream::wrappers::ReceiverStream::new(conn_rx);
        let stop = Arc::clone(&shutdown);
        let signal = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if stop.load(Ordering::Acquire) { break; }
                    }
                }
            }
            tracing::info!("shutting down: cancelling sessions");
            stop.store(true, Ordering::Release);
        };
        let service = BlitServer::new(daemon)
            .max_decoding_message_size(CONTROL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CONTROL_MESSAGE_BYTES_MAX);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal),
        );
        // Wait for the shutdown signal (or a server failure).
        while !shutdown.load(Ordering::Acquire) && !server.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if server.is_finished() && !shutdown.load(Ordering::Acquire) {
            return match server.await {
                Ok(r) => r.map_err(DaemonError::Serve),
                Err(e) => Err(DaemonError::Runtime(std::io::Error::other(e))),
            };
        }
        // Cancelled sessions remove their temporary files; give them a bounded time (a frozen
        // client must not keep the daemon alive), then exit.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while active.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = active.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!("{left} sessions still winding down at exit");
        }
        Ok(())
    })
}

/// Connections the kernel completes and queues before the daemon accepts them (tokio's default
/// is 128: a burst of clients, or a pause while descriptors are exhausted, would make new
/// clients' connects hang in SYN retries).
const LISTEN_BACKLOG: u32 = 1024;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Blit for Daemon {
    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloReply>, Status> {
        let req = request.into_inner();
        tracing::debug!(client_protocol = req.protocol_version, "hello");
        let rdma = self.rdma.as_ref().ok();
        let mut transports = vec!["tcp".to_string()];
        if rdma.is_some() {
            transports.push("rdma".into());
        }
        Ok(Response::new(pb::HelloReply {
            protocol_version: PROTOCOL_VERSION,
            server_version: BUILD_VERSION.into(),
            transports,
            read_only: self.cfg.read_only,
            rdma_devices: rdma.into_iter().map(convert::rdma_device_to_pb).collect(),
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // Data listeners bind the address this control connection arrived on, never a
        // wildcard the operator did not ask for.
        let control_ip = request.local_addr().map(|a| a.ip()).unwrap_or(self.cfg.listen.ip());
        let peer_addr = request.remote_addr();
        let peer = peer_addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        let connection = self.conns.session(peer_addr);
        let mut inbound = request.into_inner();
        // The Open must come within the open timeout, before a thread is spent on the stream:
        // streams that never say anything cost one async task each, for a bounded time.
        let open_timeout = self.cfg.open_timeout;
        let first = match tokio::time::timeout(open_timeout, inbound.message()).await {
            Err(_) => {
                tracing::warn!(%peer, "closed a session stream that sent no Open in {} s", open_timeout.as_secs());
                return Err(Status::deadline_exceeded(format!(
                    "no Open within {} s (--open-timeout)",
                    open_timeout.as_secs()
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("the stream ended before its Open")),
            Ok(Ok(Some(frame))) => frame,
        };
        // Only a stream that said what it wants takes one of the sessions: streams that never
        // send their Open cannot lock real clients out.
        let Ok(permit) = Arc::clone(&self.sessions).try_acquire_owned() else {
            tracing::warn!(%peer, "refused a session: {} already running (--max-sessions)", self.cfg.max_sessions);
            return Err(Status::resource_exhausted(format!(
                "this daemon already runs its maximum of {} sessions (--max-sessions); try again later",
                self.cfg.max_sessions
            )));
        };
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE_MAX);
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let placement = match (&self.topology, peer_addr) {
            (Some(topo), Some(addr)) => {
                let dev = blitx_topology::interface_for_peer(addr.ip());
                match blitx_topology::place(topo, self.cfg.numa, dev.as_deref()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!("no NUMA placement for {addr}: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let ctx = SessionCtx {
            id,
            rdma: self.rdma.clone(),
            rdma_domain: self.rdma_domain.clone(),
            placement,
            peer,
            control_ip,
            cfg: self.cfg.clone(),
            root: self.root.clone(),
            shutdown: Arc::clone(&self.shutdown),
            rt: tokio::runtime::Handle::current(),
            budget: Arc::clone(&self.budget),
            privileges: self.privileges,
        };
        let active = Arc::clone(&self.active);
        active.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new().name(format!("blit-session-{id}")).spawn({
            let active = Arc::clone(&active);
            move || {
                ctx.run(first, inbound, out_tx);
                drop((permit, connection));
                active.fetch_sub(1, Ordering::AcqRel);
            }
        });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::error!("cannot start a session thread: {e}");
            return Err(Status::resource_exhausted(format!("cannot start a session thread: {e}")));
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))))
    }
}

type Out = mpsc::Sender<Result<pb::ServerFrame, Status>>;

struct SessionCtx {
    id: u64,
    rdma: Result<RdmaDeviceInfo, Arc<dataplane::DataPlaneError>>,
    rdma_domain: Option<blitx_transport_rdma::RdmaDomain>,
    placement: Option<blitx_topology::Placement>,
    peer: String,
    control_ip: IpAddr,
    cfg: DaemonConfig,
    root: RootDir,
    shutdown: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
    /// The daemon's memory budget; each session draws on it through one of its own.
    budget: Arc<Budget>,
    privileges: Privileges,
}

fn send(out: &Out, frame: pb::ServerFrame) -> bool {
    out.blocking_send(Ok(frame)).is_ok()
}

/// Like [`send`], but gives up after a short wait: used once a session is cancelled, when the
/// client may be frozen and must not hold the session (and daemon shutdown) hostage.
fn send_bounded(rt: &tokio::runtime::Handle, out: &Out, frame: pb::ServerFrame) -> bool {
    match out.try_send(Ok(frame)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(f)) => rt
            .block_on(async { tokio::time::timeout(CANCELLED_SEND_WAIT, out.send(f)).await })
            .is_ok_and(|r| r.is_ok()),
    }
}

fn refuse(out: &Out, code: ErrorCode, message: String) {
    tracing::warn!("refused session: {message}");
    send(out, convert::error_to_pb(&RemoteError { code, message }));
}

/// Sends events to the client in batches; failures always, the rest only when asked for.
struct RemoteReporter {
    rt: tokio::runtime::Handle,
    out: Out,
    all: bool,
    buf: Mutex<Vec<Event>>,
}

impl RemoteReporter {
    /// Sends what is batched. The final flush is bounded: the session is over and a frozen
    /// client must not hold it.
    fn flush(&self, last: bool) {
        let batch = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let frame = convert::server_events(&batch);
        if last {
            send_bounded(&self.rt, &self.out, frame);
        } else {
            send(&self.out, frame);
        }
    }
}

impl Reporter for RemoteReporter {
    fn event(&self, e: Event) {
        // Failures and skipped special files are always named; the rest only when asked for.
        if !self.all && !matches!(e.kind, EventKind::Failed | EventKind::Unsupported) {
            return;
        }
        let full = {
            let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
            b.push(e);
            b.len() >= EVENTS_PER_MESSAGE
        };
        if full {
            self.flush(false);
        }
    }
}

impl SessionCtx {
    fn run(self, first: pb::ClientFrame, inbound: Streaming<pb::ClientFrame>, out: Out) {
        // Every engine thread of this session is created by this thread: it inherits the node's
        // CPUs, each worker gets one of them and each pool is bound to the node.
        let _placed = self.placement.as_ref().map(|p| {
            tracing::info!(session = self.id, "placement: {p}");
            blitx_topology::enter_placement(p)
        });
        let open = match first {
            pb::ClientFrame { msg: Some(pb::client_frame::Msg::Open(o)) } => o,
            _ => {
                return refuse(
                    &out,
                    ErrorCode::BadRequest,
                    "the first message must be Open".into(),
                );
            }
        };
        let version = convert::open_version(&open);
        if version != PROTOCOL_VERSION {
            return refuse(
                &out,
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version mismatch: the client (blit {}) speaks version {version}, this daemon (blit {BUILD_VERSION}) speaks version {PROTOCOL_VERSION}; use the same blit release on both ends",
                    open.client_version
                ),
            );
        }
        // A path the client may not name is BAD_PATH; anything else malformed, BAD_REQUEST.
        if let Err(e) = blitx_core::RelPath::parse(&open.path) {
            return refuse(&out, ErrorCode::BadPath, format!("invalid path from the client: {e}"));
        }
        let open = match convert::open_from_pb(&open) {
            Ok(o) => o,
            Err(e) => return refuse(&out, ErrorCode::BadRequest, e.to_string()),
        };
        if open.tcp_streams > blitx_transport_tcp::STREAMS_MAX {
            return refuse(
                &out,
                ErrorCode::BadRequest,
                format!(
                    "{} TCP streams requested; at most {} are allowed",
                    open.tcp_streams,
                    blitx_transport_tcp::STREAMS_MAX
                ),
            );
        }
        tracing::info!(
            session = self.id,
            peer = %self.peer,
            direction = ?open.direction,
            path = %open.path,
            "session opened"
        );
        let cancel = Arc::new(AtomicBool::new(false));
        // Daemon shutdown cancels every session.
        let (watch_stop, watch_rx) = std::sync::mpsc::channel::<()>();
        let watch = {
            let (cancel, shutdown) = (Arc::clone(&cancel), Arc::clone(&self.shutdown));
            std::thread::spawn(move || forward_cancel(&shutdown, &cancel, &watch_rx))
        };
        let result = self.serve(&open, inbound, &out, &cancel);
        cancel.store(true, Ordering::Release);
        drop(watch_stop);
        let _ = watch.join();
        if let Err(fatal) = result {
            tracing::warn!(session = self.id, code = ?fatal.code, "session failed: {}", fatal.message);
            send_bounded(&self.rt, &out, convert::fatal_summary_to_pb(&fatal));
        }
    }

    /// Runs the daemon's half; the Summary is sent here on success, by the caller on failure.
    fn serve(
        &self,
        open: &OpenRequest,
        inbound: Streaming<pb::ClientFrame>,
        out: &Out,
        cancel: &Arc<AtomicBool>,
    ) -> Result<(), RemoteError> {
        let fail = |code, message: String| RemoteError { code, message };
        let push = open.direction == Direction::Push;
        // A memory session (--mem) generates or discards its data: its path is never touched.
        let mem = open.params.mem_bytes.is_some();
        if push && self.cfg.read_only && !open.params.dry_run && !mem {
            refuse(
                out,
                ErrorCode::ReadOnly,
                "this daemon exports its root read-only (pull only)".into(),
            );
            return Ok(());
        }
        // Push: the target directory (created if missing); pull: the source directory.
        let dry_missing = push && open.params.dry_run;
        let beneath = if mem {
            dataplane::empty_stand_in()
        } else {
            RootDir::beneath(&self.root, &open.path, push && !open.params.dry_run)
        };
        let root = match beneath {
            Ok(r) => r,
            Err(e) if dry_missing && e.kind() == std::io::ErrorKind::NotFound => {
                match dataplane::empty_stand_in() {
                    Ok(r) => r,
                    Err(e) => {
                        refuse(
                            out,
                            ErrorCode::Internal,
                            format!("cannot create a dry-run stand-in: {e}"),
                        );
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                refuse(out, ErrorCode::BadPath, bad_path_message(&open.path, &e));
                return Ok(());
            }
        };
        // One writer per target (and per subtree): a second push waits or is refused.
        let _lock = if push && !open.params.dry_run && !mem {
            let wait = open.wait_lock.then_some(LOCK_WAIT_MAX);
            match TargetLock::acquire(root.fd(), wait, cancel) {
                Ok(l) => Some(l),
                Err(LockError::Busy) => {
                    refuse(
                        out,
                        ErrorCode::TargetLocked,
                        format!(
                            "{} is being written by another transfer (or one above or below it); try again later or use --wait-lock",
                            open.path
                        ),
                    );
                    return Ok(());
                }
                Err(LockError::Cancelled) => {
                    return Err(fail(ErrorCode::Internal, "cancelled".into()));
                }
                Err(e) => {
                    refuse(out, ErrorCode::Internal, format!("{e}: {}", source_chain(&e)));
                    return Ok(());
                }
            }
        } else {
            None
        };
        // Everything this session holds in memory is charged here, then to the daemon's total.
        let budget = Budget::new(
            "per session (--session-memory)",
            self.cfg.session_memory_bytes,
            Some(Arc::clone(&self.budget)),
        );
        let mut streams =
            if open.tcp_streams == 0 { self.cfg.default_streams } else { open.tcp_streams };
        let stall = if open.stall_timeout_secs == 0 {
            self.cfg.stall_timeout
        } else {
            Duration::from_secs(u64::from(open.stall_timeout_secs))
        };
        let dp_opts = DataPlaneOptions {
            streams,
            chunk_bytes: open.params.chunk_bytes,
            socket_buffer_bytes: open.tcp_buffer_bytes,
            stall_timeout: stall,
            threads: self.cfg.threads,
            qps: open.rdma_qps.max(1),
            rdma_device: self.cfg.rdma_device.clone(),
            rdma_frame_checksums: open.rdma_frame_checksums,
            rdma_event_cq: open.rdma_event_cq,
            tcp_zero_copy: open.tcp_zero_copy,
        };
        // The client picks streams × chunk size; the operator's budget bounds the product.
        let mut dp_opts = dp_opts;
        while streams > 1 && dataplane::pool_bytes(&dp_opts, false) > budget.max_bytes() {
            streams -= 1;
            dp_opts.streams = streams;
        }
        let role = if push { Role::Receive } else { Role::Send };
        let (mut use_rdma, mut reason) =
            match dataplane::choose_rdma(open.transport, open.client_rdma.as_ref(), &self.rdma) {
                Ok(choice) => choice,
                Err(why) => {
                    refuse(out, ErrorCode::TransportUnavailable, why);
                    return Ok(());
                }
            };
        // The chosen plane's buffers are charged before it is built: RDMA's ring, or TCP's
        // pool when RDMA does not fit, is not possible here, or fails to set up (`auto`).
        let rdma_bytes = dataplane::pool_bytes(&dp_opts, true);
        if use_rdma && let Err(e) = budget.charge("RDMA buffers", rdma_bytes) {
            if open.transport == TransportChoice::Rdma {
                refuse(out, ErrorCode::ResourceExhausted, e.to_string());
                return Ok(());
            }
            use_rdma = false;
            reason = format!("auto: {e}; using TCP");
        }
        let mut rdma_pending = None;
        if use_rdma {
            match dataplane::rdma_prepare(role, &dp_opts, self.rdma_domain.as_ref()) {
                Ok(p) => rdma_pending = Some(p),
                Err(e) if open.transport == TransportChoice::Rdma => {
                    refuse(
                        out,
                        ErrorCode::TransportUnavailable,
                        format!("cannot set up RDMA here: {e}"),
                    );
                    return Ok(());
                }
                Err(e) => {
                    reason = format!("auto: RDMA set-up failed on the daemon ({e}); using TCP");
                    budget.release(rdma_bytes);
                }
            }
        }
        if rdma_pending.is_none()
            && let Err(e) = budget.charge("TCP buffers", dataplane::pool_bytes(&dp_opts, false))
        {
            refuse(out, ErrorCode::ResourceExhausted, e.to_string());
            return Ok(());
        }
        tracing::info!(session = self.id, "transport: {reason}");
        let mut inbound = inbound;
        // The session's cancellation is still an `AtomicBool` (polled by `or_cancel`), not a
        // core `Cancel`: until it is one, nothing fires this, and the set-up's waits end at
        // DATA_CONNECT_TIMEOUT or with the peer, as before.
        let setup_cancel = blitx_core::cancel::Cancel::new();
        let plane = match rdma_pending {
            Some((pending, mine)) => {
                let accepted = Accepted {
                    protocol_version: PROTOCOL_VERSION,
                    server_version: BUILD_VERSION.into(),
                    transport: "rdma".into(),
                    reason,
                    tcp: None,
                    rdma: Some(mine),
                };
                if !send(out, convert::accept_to_pb(&accepted)) {
                    return Err(fail(ErrorCode::Internal, "client went away".into()));
                }
                // The client answers with its own QPs (and, for a pull, its ring), in time.
                let limit = self.cfg.open_timeout.max(dataplane::DATA_CONNECT_TIMEOUT);
                let answer = next_or_cancel(&self.rt, &mut inbound, cancel, Some(limit));
                let peer = match answer {
                    Some(Ok(Some(pb::ClientFrame {
                        msg: Some(pb::client_frame::Msg::Rdma(e)),
                    }))) => convert::rdma_peer_from_pb(&e)
                        .map_err(|e| fail(ErrorCode::BadRequest, e.to_string()))?,
                    _ => {
                        return Err(fail(
                            ErrorCode::BadRequest,
                            "the client did not complete the RDMA set-up".into(),
                        ));
                    }
                };
                tracing::debug!(session = self.id, "RDMA: the client's QPs arrived");
                let plane = pending
                    .connect(&peer, &setup_cancel)
                    .map_err(|e| fail(ErrorCode::Internal, describe(&e)))?;
                tracing::debug!(session = self.id, "RDMA: QPs connected");
                if !push {
                    // Our sender is connected: the client's receiver may connect now.
                    send(out, convert::server_rdma(&RdmaPeer::Ready));
                }
                plane
            }
            None => {
                let listening = match dataplane::tcp_listen(self.control_ip, role, &dp_opts) {
                    Ok(l) => l,
                    Err(e) => {
                        refuse(
                            out,
                            ErrorCode::Internal,
                            format!("cannot open a data listener: {}", describe(&e)),
                        );
                        return Ok(());
                    }
                };
                let accepted = Accepted {
                    protocol_version: PROTOCOL_VERSION,
                    server_version: BUILD_VERSION.into(),
                    transport: "tcp".into(),
                    reason,
                    tcp: Some(listening.endpoint()),
                    rdma: None,
                };
                if !send(out, convert::accept_to_pb(&accepted)) {
                    return Err(fail(ErrorCode::Internal, "client went away".into()));
                }
                listening
                    .accept(&setup_cancel)
                    .map_err(|e| fail(ErrorCode::Internal, describe(&e)))?
            }
        };

        let progress = Progress::default();
        let reporter = RemoteReporter {
            rt: self.rt.clone(),
            out: out.clone(),
            all: open.events,
            buf: Mutex::new(Vec::new()),
        };
        let (to_engine_src, engine_src) =
            crossbeam_channel::bounded::<SourceMsg>(blitx_storage::local::CONTROL_QUEUE_MAX);
        let (to_engine_tgt, engine_tgt) =
            crossbeam_channel::bounded::<TargetMsg>(blitx_storage::local::CONTROL_QUEUE_MAX);
        let (engine_out_src, from_engine_src) =
            crossbeam_channel::bounded::<SourceMsg>(blitx_storage::local::CONTROL_QUEUE_MAX);
        let (engine_out_tgt, from_engine_tgt) =
            crossbeam_channel::bounded::<TargetMsg>(blitx_storage::local::CONTROL_QUEUE_MAX);
        let threads = self.cfg.threads;
        let params = open.params.clone();
        let limits = Limits {
            entries_max: self.cfg.max_entries,
            budget: Some(Arc::clone(&budget)),
            idle_timeout: Some(self.cfg.idle_timeout),
        };
        // A message the client sent that could not be accepted: reported as the reason.
        let refused: Mutex<Option<RemoteError>> = Mutex::new(None);
        let refuse_msg = |message: String| {
            tracing::warn!(session = self.id, "{message}");
            let mut r = refused.lock().unwrap_or_else(|p| p.into_inner());
            r.get_or_insert(RemoteError { code: ErrorCode::ProtocolViolation, message });
        };
        std::thread::scope(|s| {
            // Client → engine.
            let rt = self.rt.clone();
            let cancel_in = Arc::clone(cancel);
            let refuse_msg = &refuse_msg;
            s.spawn(move || {
                let mut inbound = inbound;
                loop {
                    let msg = match next_or_cancel(&rt, &mut inbound, &cancel_in, None) {
                        None => break,
                        Some(Ok(Some(m))) => m,
                        Some(Ok(None)) => break,
                        Some(Err(status)) => {
                            tracing::warn!("control stream from client failed: {status}");
                            cancel_in.store(true, Ordering::Release);
                            break;
                        }
                    };
                    let ok = match (msg.msg, push) {
                        (Some(pb::client_frame::Msg::Source(m)), true) => {
                            match convert::source_msg_from_pb(&m) {
                                Ok(m) => {
                                    tracing::trace!(kind = m.kind(), "control: client → engine");
                                    to_engine_src.send(m).is_ok()
                                }
                                Err(e) => {
                                    refuse_msg(e.to_string());
                                    false
                                }
                            }
                        }
                        (Some(pb::client_frame::Msg::Target(m)), false) => {
                            match convert::target_msg_from_pb(&m) {
                                Ok(m) => to_engine_tgt.send(m).is_ok(),
                                Err(e) => {
                                    refuse_msg(e.to_string());
                                    false
                                }
                            }
                        }
                        _ => {
                            refuse_msg("an unexpected message from the client".into());
                            false
                        }
                    };
                    if !ok {
                        cancel_in.store(true, Ordering::Release);
                        break;
                    }
                }
            });
            // Engine → client.
            let out_fwd = out.clone();
            let rt_fwd = self.rt.clone();
            let cancel_fwd = Arc::clone(cancel);
            let fwd = s.spawn(move || {
                let forward = |frame| {
                    if cancel_fwd.load(Ordering::Acquire) {
                        send_bounded(&rt_fwd, &out_fwd, frame)
                    } else {
                        send(&out_fwd, frame)
                    }
                };
                if push {
                    for m in from_engine_tgt.iter() {
                        tracing::trace!(kind = m.kind(), "control: engine → client");
                        if !forward(convert::server_target(&m)) {
                            break;
                        }
                    }
                } else {
                    for m in from_engine_src.iter() {
                        if !forward(convert::server_source(&m)) {
                            break;
                        }
                    }
                }
            });
            let result = if push {
                drop(engine_out_src);
                let mut opts = TargetOptions::new(root.clone(), params.clone(), threads);
                opts.privileges = self.privileges;
                opts.limits = limits.clone();
                plane.receiver().map_err(|e| fail(ErrorCode::Internal, describe(&e))).and_then(
                    |rx| {
                        run_target(
                            &opts,
                            engine_src,
                            engine_out_tgt,
                            rx,
                            &reporter,
                            &progress,
                            cancel,
                        )
                        .map(|r| convert::target_summary_to_pb(&r))
                        .map_err(|e| fail(target_code(&e), describe(&e)))
                    },
                )
            } else {
                drop(engine_out_tgt);
                let opts = SourceOptions {
                    root: root.clone(),
                    params: params.clone(),
                    walk_threads: threads,
                    read_threads: threads,
                    confine: true,
                    limits: limits.clone(),
                };
                plane.sender().map_err(|e| fail(ErrorCode::Internal, describe(&e))).and_then(|tx| {
                    run_source(&opts, engine_out_src, engine_tgt, tx, &progress, cancel)
                        .map(|r| convert::source_summary_to_pb(&r))
                        .map_err(|e| fail(source_code(&e), describe(&e)))
                })
            };
            // A refused client message explains the engine's "the other half went away".
            let result = match refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(why) if result.is_err() => Err(why),
                _ => result,
            };
            let _ = fwd.join();
            reporter.flush(true);
            match result {
                Ok(summary) => {
                    tracing::info!(session = self.id, "session done");
                    send(out, summary);
                    // Stop waiting for the client's half-close.
                    cancel.store(true, Ordering::Release);
                    Ok(())
                }
                Err(e) => {
                    cancel.store(true, Ordering::Release);
                    Err(e)
                }
            }
        })
    }
}

/// Why a path was refused, in words (a symlink on the way reads "Not a directory" or "Too many
/// levels of symbolic links" from the kernel).
fn bad_path_message(path: &blitx_core::RelPath, e: &std::io::Error) -> String {
    let why = match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
        Some(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::XDEV) => {
            "a component is a symlink or not a directory (symlinks are never followed below the export root)".to_string()
        }
        _ => e.to_string(),
    };
    format!("cannot use {path} below the export root: {why}")
}

fn describe(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(_) => format!("{e}: {}", source_chain(e)),
        None => e.to_string(),
    }
}

/// The code a failed data plane reports, decided on its type.
fn transport_code(e: &blitx_core::transport::TransportError) -> ErrorCode {
    use blitx_core::transport::TransportError as E;
    match e {
        E::Stalled { .. } => ErrorCode::Stalled,
        E::BadFrame { .. } | E::Protocol { .. } => ErrorCode::ProtocolViolation,
        E::Unsupported(_) => ErrorCode::TransportUnavailable,
        _ => ErrorCode::Internal,
    }
}

/// The code a failed target half reports, decided on its type.
fn target_code(e: &TargetError) -> ErrorCode {
    match e {
        TargetError::Limit(_) => ErrorCode::ResourceExhausted,
        TargetError::Idle { .. } => ErrorCode::IdleTimeout,
        TargetError::Listing(_) | TargetError::Protocol(_) => ErrorCode::ProtocolViolation,
        TargetError::Transport(t) => transport_code(t),
        _ => ErrorCode::Internal,
    }
}

fn source_code(e: &SourceError) -> ErrorCode {
    match e {
        SourceError::Idle { .. } => ErrorCode::IdleTimeout,
        SourceError::Protocol(_) => ErrorCode::ProtocolViolation,
        SourceError::Transport(t) => transport_code(t),
        _ => ErrorCode::Internal,
    }
}

/// The privileges sessions get: a root daemon gives what clients create to the export root's
/// owner unless told to take clients' owners, and strips setuid/setgid unless told not to.
fn daemon_privileges(cfg: &DaemonConfig, root: &RootDir) -> Privileges {
    let root_user = rustix::process::geteuid().is_root();
    let owner = (root_user && !cfg.allow_owners)
        .then(|| rustix::fs::fstat(root.fd()).ok())
        .flatten()
        .map(|st| (st.st_uid, st.st_gid));
    Privileges { take_owners: cfg.allow_owners, keep_setid: cfg.allow_setid, owner }
}

/// The causes of an error, joined (the top-level message is printed separately).
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Some errors (hyper's) repeat their cause in their own text: say each part once.
        let text = c.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        cur = c.source();
    }
    if parts.is_empty() { "no further detail".into() } else { parts.join(": ") }
}

/// Sets `to` once `from` is set (a signal or a shutdown reaching one session), looking every
/// 50 ms; returns when `to` is set or at once when the session ends and drops `stop`'s sender.
pub(crate) fn forward_cancel(
    from: &AtomicBool,
    to: &AtomicBool,
    stop: &std::sync::mpsc::Receiver<()>,
) {
    while !to.load(Ordering::Acquire) {
        if from.load(Ordering::Acquire) {
            to.store(true, Ordering::Release);
        }
        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
            stop.recv_timeout(Duration::from_millis(50))
        {
            return;
        }
    }
}

/// `fut`'s output, or `None` once `cancel` is set (looked at every 50 ms) or `limit` has
/// passed (`None`: no limit): every wait on a peer ends on an interrupt or a shutdown.
pub(crate) async fn or_cancel<F: std::future::Future>(
    fut: F,
    cancel: &AtomicBool,
    limit: Option<Duration>,
) -> Option<F::Output> {
    let limited = async {
        match limit {
            Some(l) => tokio::time::timeout(l, fut).await.ok(),
            None => Some(fut.await),
        }
    };
    tokio::select! {
        r = limited => r,
        _ = async {
            while !cancel.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } => None,
    }
}

/// The next message of an inbound gRPC stream, or `None` once `cancel` is set or `limit`
/// passed (so a peer that never closes its side cannot keep a session thread alive).
pub(crate) fn next_or_cancel<T>(
    rt: &tokio::runtime::Handle,
    stream: &mut Streaming<T>,
    cancel: &AtomicBool,
    limit: Option<Duration>,
) -> Option<Result<Option<T>, Status>> {
    rt.block_on(or_cancel(stream.message(), cancel, limit))
}
