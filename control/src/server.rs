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

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blitx_core::rate::Pacer;
use blitx_core::session::{SourceMsg, TargetMsg};
use blitx_storage::RootDir;
use blitx_storage::limits::{Budget, Limits};
use blitx_storage::lock::{LockError, TargetLock};
use blitx_storage::meta::Privileges;
use blitx_storage::report::{Event, EventKind, Progress, Reporter};
use blitx_storage::source::{SourceError, SourceOptions, run_source};
use blitx_storage::target::{SingleFile, TargetError, TargetOptions, run_target};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::cancel::{Cancel, Interrupted, next_or_cancel};
use crate::convert::{
    self, Accepted, Direction, ErrorCode, OpenRequest, RdmaDeviceInfo, RdmaPeer, RemoteError,
    TransportChoice,
};
use crate::dataplane::{self, Role};
use crate::metrics::{ErrorKind, Metrics, SessionMetrics};
use crate::negotiate::{
    DaemonCmd, DaemonEvent, DaemonFacts, DaemonSession, LockResult, Rejection, RootFailure,
};
use crate::pb;
use crate::pb::blit_server::{Blit, BlitServer};
use crate::{BUILD_VERSION, CONTROL_MESSAGE_BYTES_MAX, PROTOCOL_VERSION};

mod ops;

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
    /// Set the `trusted.*` and `security.*` attributes clients send (a root daemon; default:
    /// dropped, as `security.capability` would make a client's file privileged).
    pub allow_xattrs_privileged: bool,
    /// Make the device nodes clients send (a root daemon; default: refused, as a client's
    /// node for a disk would give it the disk).
    pub allow_devices: bool,
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
    /// `--bwlimit`: bytes per second all sessions together send and receive (one token bucket);
    /// `None`: no cap.
    pub bwlimit_bytes_per_s: Option<u64>,
    /// Where to serve metrics and the status page (`--metrics`; None: nowhere).
    pub metrics: Option<SocketAddr>,
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
            allow_xattrs_privileged: false,
            allow_devices: false,
            max_sessions: MAX_SESSIONS_DEFAULT as usize,
            max_connections: MAX_CONNECTIONS_DEFAULT as usize,
            max_entries: MAX_ENTRIES_DEFAULT,
            session_memory_bytes: 1 << 30, // SESSION_MEMORY_DEFAULT
            memory_bytes: 4 << 30,         // MEMORY_DEFAULT
            open_timeout: Duration::from_secs(OPEN_TIMEOUT_SECS_DEFAULT),
            idle_timeout: Duration::from_secs(IDLE_TIMEOUT_SECS_DEFAULT),
            bwlimit_bytes_per_s: None,
            metrics: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the export root {path}")]
    Root { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot serve metrics on {addr} (--metrics)")]
    MetricsListen { addr: SocketAddr, source: std::io::Error },
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
    shutdown: Cancel,
    /// Sessions running (their threads not yet ended), watched by shutdown's grace wait.
    active: Arc<watch::Sender<u64>>,
    next_session: AtomicU64,
    /// One permit per concurrent session.
    sessions: Arc<tokio::sync::Semaphore>,
    /// Memory of all sessions together.
    budget: Arc<Budget>,
    /// The `--bwlimit` bucket of all sessions together.
    pacer: Option<Pacer>,
    conns: Arc<crate::conns::Registry>,
    privileges: Privileges,
    metrics: Arc<Metrics>,
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

/// The addresses a daemon listens on (their ports chosen when port 0 was asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub control: SocketAddr,
    /// The metrics listener (`--metrics`), when asked for.
    pub metrics: Option<SocketAddr>,
}

/// Runs the daemon until SIGINT/SIGTERM (or `shutdown` is cancelled). `on_listening` receives
/// the bound addresses (useful with port 0).
pub fn run_daemon(
    cfg: DaemonConfig,
    shutdown: Cancel,
    on_listening: impl FnOnce(Bound),
) -> Result<(), DaemonError> {
    let root = RootDir::open(&cfg.root)
        .map_err(|source| DaemonError::Root { path: cfg.root.display().to_string(), source })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("blit-grpc")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let active = Arc::new(watch::channel(0u64).0);
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
    tracing::info!(
        "clients' trusted.*/security.* attributes: {}; device nodes: {}",
        if privileges.xattrs_privileged { "set (--allow-xattrs-privileged)" } else { "dropped" },
        if privileges.devices { "made (--allow-devices)" } else { "refused" }
    );
    let conns = crate::conns::Registry::new(cfg.max_connections, CONNECTION_IDLE);
    let metrics = Metrics::new(Instant::now(), rdma.as_ref().ok().map(|d| d.name.clone()));
    let daemon = Daemon {
        cfg: cfg.clone(),
        rdma: rdma.clone(),
        rdma_domain,
        topology,
        root,
        shutdown: shutdown.clone(),
        active: Arc::clone(&active),
        next_session: AtomicU64::new(1),
        sessions: Arc::new(tokio::sync::Semaphore::new(cfg.max_sessions.max(1))),
        budget: Budget::new("for all sessions (--memory)", cfg.memory_bytes, None),
        pacer: cfg.bwlimit_bytes_per_s.map(Pacer::new),
        conns: Arc::clone(&conns),
        privileges,
        metrics: Arc::clone(&metrics),
    };
    rt.block_on(async move {
        // Only where the operator asked, and before the control port, so that a client never
        // meets a daemon whose metrics are not being served yet.
        let metrics_at = match cfg.metrics {
            None => None,
            Some(addr) => {
                let failed = |source| DaemonError::MetricsListen { addr, source };
                let l = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
                let at = l.local_addr().map_err(failed)?;
                tracing::info!("metrics and status page on http://{at}/");
                tokio::spawn(crate::metrics_http::serve(l, metrics, shutdown.clone()));
                Some(at)
            }
        };
        let listener = listen(cfg.listen)
            .map_err(|source| DaemonError::Listen { addr: cfg.listen, source })?;
        let local = listener.local_addr().map_err(|source| DaemonError::Listen { addr: cfg.listen, source })?;
        tracing::info!(root = %cfg.root.display(), "blit daemon listening on {local}");
        on_listening(Bound { control: local, metrics: metrics_at });
        let (conn_tx, conn_rx) = mpsc::channel(16);
        tokio::spawn(crate::conns::accept_loop(listener, conns, conn_tx));
        let incoming = tokio_stream::wrappers::ReceiverStream::new(conn_rx);
        let stop = shutdown.clone();
        let signal = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                _ = stop.cancelled() => {}
            }
            tracing::info!("shutting down: cancelling sessions");
            stop.cancel();
        };
        let service = BlitServer::new(daemon)
            .max_decoding_message_size(CONTROL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CONTROL_MESSAGE_BYTES_MAX);
        let mut server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal),
        );
        // Wait for the shutdown signal (or a server failure).
        tokio::select! {
            _ = shutdown.cancelled() => {}
            r = &mut server => if !shutdown.is_cancelled() {
                return match r {
                    Ok(r) => r.map_err(DaemonError::Serve),
                    Err(e) => Err(DaemonError::Runtime(std::io::Error::other(e))),
                };
            }
        }
        // Cancelled sessions remove their temporary files; give them a bounded time (a frozen
        // client must not keep the daemon alive), then exit.
        let mut sessions = active.subscribe();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let _ = tokio::time::timeout_at(deadline, sessions.wait_for(|n| *n == 0)).await;
        let left = *active.borrow();
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

impl Daemon {
    /// What a new session's negotiation knows of this daemon.
    fn facts(&self) -> DaemonFacts {
        DaemonFacts {
            read_only: self.cfg.read_only,
            default_streams: self.cfg.default_streams,
            streams_max: blitx_transport_tcp::STREAMS_MAX,
            stall_timeout: self.cfg.stall_timeout,
            open_timeout: self.cfg.open_timeout,
            data_connect_timeout: dataplane::DATA_CONNECT_TIMEOUT,
            session_memory_bytes: self.cfg.session_memory_bytes,
            max_sessions: self.cfg.max_sessions,
            threads: self.cfg.threads,
            rdma_device: self.cfg.rdma_device.clone(),
            rdma: self.rdma.clone().map_err(|e| e.to_string()),
            pool_bytes: dataplane::pool_bytes,
        }
    }
}

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
            meta_support: Some(meta_support(&self.privileges, &self.root, self.cfg.read_only)),
        }))
    }

    type RemoteListStream = ops::ListStream;
    type RemoteUsageStream = ops::UsageStream;

    async fn remote_list(
        &self,
        request: Request<pb::RemoteListRequest>,
    ) -> Result<Response<Self::RemoteListStream>, Status> {
        self.serve_list(request)
    }

    async fn remote_usage(
        &self,
        request: Request<pb::RemoteUsageRequest>,
    ) -> Result<Response<Self::RemoteUsageStream>, Status> {
        self.serve_usage(request)
    }

    async fn remote_remove(
        &self,
        request: Request<pb::RemoteRemoveRequest>,
    ) -> Result<Response<pb::RemoteRemoveReply>, Status> {
        self.serve_remove(request).await
    }

    async fn remote_make_dir(
        &self,
        request: Request<pb::RemoteMakeDirRequest>,
    ) -> Result<Response<pb::RemoteMakeDirReply>, Status> {
        self.serve_make_dir(request).await
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
        let mut machine = DaemonSession::new(self.facts(), Instant::now());
        // The Open must come in time, before a thread is spent on the stream: streams that
        // never say anything cost one async task each, for a bounded time.
        let first = match machine.deadline() {
            Some(d) => tokio::time::timeout_at(d.into(), inbound.message()).await.ok(),
            None => Some(inbound.message().await),
        };
        let first = match first {
            None => DaemonEvent::Timer,
            Some(Err(status)) => return Err(status),
            Some(Ok(None)) => DaemonEvent::EndedBeforeOpen,
            Some(Ok(Some(frame))) => DaemonEvent::First(convert::first_open(&frame)),
        };
        // A timer fires at its deadline or just after: never early.
        let now = Instant::now().max(machine.deadline().unwrap_or_else(Instant::now));
        machine.handle(now, first);
        match machine.poll() {
            Some(DaemonCmd::TakeSlot) => {}
            Some(DaemonCmd::Reject(r)) => {
                self.metrics.error(ErrorKind::of_rejection(&r));
                return Err(rejection(&peer, &r));
            }
            other => {
                return Err(Status::internal(format!("unexpected {other:?} before a session")));
            }
        }
        // Only a stream that said what it wants takes one of the sessions.
        let permit = Arc::clone(&self.sessions).try_acquire_owned().ok();
        machine.handle(Instant::now(), DaemonEvent::Slot(permit.is_some()));
        let Some(permit) = permit else {
            return Err(match machine.poll() {
                Some(DaemonCmd::Reject(r)) => {
                    self.metrics.error(ErrorKind::of_rejection(&r));
                    rejection(&peer, &r)
                }
                other => Status::internal(format!("unexpected {other:?} without a session slot")),
            });
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
            rdma_domain: self.rdma_domain.clone(),
            placement,
            peer,
            control_ip,
            cfg: self.cfg.clone(),
            root: self.root.clone(),
            shutdown: self.shutdown.clone(),
            rt: tokio::runtime::Handle::current(),
            budget: Arc::clone(&self.budget),
            pacer: self.pacer.clone(),
            privileges: self.privileges,
            metrics: Arc::clone(&self.metrics),
        };
        let active = self.active.clone();
        active.send_modify(|n| *n += 1);
        let spawned = std::thread::Builder::new().name(format!("blit-session-{id}")).spawn({
            let active = active.clone();
            move || {
                ctx.run(machine, inbound, out_tx);
                drop((permit, connection));
                active.send_modify(|n| *n -= 1);
            }
        });
        if let Err(e) = spawned {
            active.send_modify(|n| *n -= 1);
            tracing::error!("cannot start a session thread: {e}");
            return Err(Status::resource_exhausted(format!("cannot start a session thread: {e}")));
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))))
    }
}

/// The gRPC status that refuses a stream before it became a session.
fn rejection(peer: &str, r: &Rejection) -> Status {
    match r {
        Rejection::NoOpen { secs } => {
            tracing::warn!(%peer, "closed a session stream that sent no Open in {secs} s");
            Status::deadline_exceeded(format!("no Open within {secs} s (--open-timeout)"))
        }
        Rejection::EndedBeforeOpen => Status::cancelled("the stream ended before its Open"),
        Rejection::Busy { max_sessions } => {
            tracing::warn!(%peer, "refused a session: {max_sessions} already running (--max-sessions)");
            Status::resource_exhausted(format!(
                "this daemon already runs its maximum of {max_sessions} sessions (--max-sessions); try again later"
            ))
        }
    }
}

type Out = mpsc::Sender<Result<pb::ServerFrame, Status>>;

struct SessionCtx {
    id: u64,
    rdma_domain: Option<blitx_transport_rdma::RdmaDomain>,
    placement: Option<blitx_topology::Placement>,
    peer: String,
    control_ip: IpAddr,
    cfg: DaemonConfig,
    root: RootDir,
    shutdown: Cancel,
    rt: tokio::runtime::Handle,
    /// The daemon's memory budget; each session draws on it through one of its own.
    budget: Arc<Budget>,
    /// The daemon's `--bwlimit` bucket, shared with every other session.
    pacer: Option<Pacer>,
    privileges: Privileges,
    metrics: Arc<Metrics>,
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

/// The daemon's session machine, shared by the session thread and the inbound relay.
struct Driver {
    machine: Mutex<DaemonSession>,
    /// Stops the local half and the relays ([`DaemonCmd::StopLocal`]); cancelled by shutdown.
    stop: Cancel,
}

impl Driver {
    /// Feeds one event; stops the halves when told to and returns the other commands.
    fn handle(&self, ev: DaemonEvent) -> VecDeque<DaemonCmd> {
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        m.handle(Instant::now(), ev);
        self.drain(&mut m)
    }

    fn drain(&self, m: &mut DaemonSession) -> VecDeque<DaemonCmd> {
        let mut left = VecDeque::new();
        while let Some(cmd) = m.poll() {
            match cmd {
                DaemonCmd::StopLocal => self.stop.cancel(),
                other => left.push_back(other),
            }
        }
        left
    }

    fn deadline(&self) -> Option<Instant> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner()).deadline()
    }
}

impl SessionCtx {
    /// Runs one session to its end: what [`DaemonSession`] commands, this thread does.
    fn run(self, machine: DaemonSession, inbound: Streaming<pb::ClientFrame>, out: Out) {
        // Every engine thread of this session is created by this thread: it inherits the node's
        // CPUs, each worker gets one of them and each pool is bound to the node.
        let _placed = self.placement.as_ref().map(|p| {
            tracing::info!(session = self.id, "placement: {p}");
            blitx_topology::enter_placement(p)
        });
        // Daemon shutdown cancels every session; the forwarding ends with the session.
        // The engine's own progress counters are what the metrics read: nothing is added to
        // the data path. A session leaves the metrics' live set only after its error counted.
        let progress = Arc::new(Progress::default());
        let session_metrics = machine.open().map(|o| {
            self.metrics.open_session(
                Instant::now(),
                self.id,
                &self.peer,
                o.direction,
                &o.path.to_string(),
                Arc::clone(&progress),
            )
        });
        let driver = Driver { machine: Mutex::new(machine), stop: self.shutdown.child(&self.rt) };
        let end = self.serve(&driver, inbound, &out, &progress, session_metrics.as_ref());
        driver.stop.cancel();
        match &end {
            End::Refused(e) | End::Failed(e) => self.metrics.error(ErrorKind::Code(e.code)),
            End::Done => {}
        }
        drop(session_metrics);
        match end {
            End::Refused(e) => refuse(&out, e.code, e.message),
            End::Failed(fatal) => {
                tracing::warn!(session = self.id, code = ?fatal.code, "session failed: {}", fatal.message);
                send_bounded(&self.rt, &out, convert::fatal_summary_to_pb(&fatal));
            }
            End::Done => {}
        }
    }

    /// Carries out the negotiation's commands, then runs the daemon's half.
    fn serve(
        &self,
        driver: &Driver,
        inbound: Streaming<pb::ClientFrame>,
        out: &Out,
        progress: &Progress,
        session_metrics: Option<&SessionMetrics>,
    ) -> End {
        let cancel = &driver.stop;
        let (open, push) = {
            let m = driver.machine.lock().unwrap_or_else(|p| p.into_inner());
            match m.open() {
                Some(o) => (o.clone(), o.direction == Direction::Push),
                None => (placeholder_open(), false),
            }
        };
        let role = if push { Role::Receive } else { Role::Send };
        // Everything this session holds in memory is charged here, then to the daemon's total.
        let budget = Budget::new(
            "per session (--session-memory)",
            self.cfg.session_memory_bytes,
            Some(Arc::clone(&self.budget)),
        );
        let mut inbound = inbound;
        let mut root = None;
        // A single file: its name in `root` (a pull's source; a push's target when renamed).
        let mut single: Option<Option<Vec<u8>>> = None;
        let mut _lock = None;
        let mut rdma = None;
        let mut peer = None;
        let mut listening = None;
        let mut plane = None;
        let mut cmds = {
            let mut m = driver.machine.lock().unwrap_or_else(|p| p.into_inner());
            driver.drain(&mut m)
        };
        let negotiated = loop {
            let Some(cmd) = cmds.pop_front() else {
                return End::Failed(RemoteError {
                    code: ErrorCode::Internal,
                    message: "the session stopped without an outcome".into(),
                });
            };
            let dp = || {
                driver
                    .machine
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .negotiated()
                    .map(|n| n.data_plane.clone())
            };
            let ev = match cmd {
                DaemonCmd::OpenRoot { create } => {
                    self.log_open(&open);
                    // A pull's --files-from paths are checked before Accept: one that is
                    // missing or leads through a symlink refuses the session, nothing sent.
                    let files_from = open.params.filter.files_from.as_deref().filter(|_| !push);
                    match open_session_root(&self.root, &open, create) {
                        Ok((r, one)) => match files_from.map_or(Ok(()), |paths| {
                            blitx_storage::source::check_files_from(r.fd(), paths)
                        }) {
                            Ok(()) => {
                                root = Some(r);
                                single = one;
                                DaemonEvent::Root(Ok(()))
                            }
                            Err(e) => DaemonEvent::Root(Err(RootFailure {
                                not_found: false,
                                message: describe(&e),
                            })),
                        },
                        Err(e) => DaemonEvent::Root(Err(RootFailure {
                            not_found: e.kind() == std::io::ErrorKind::NotFound,
                            message: bad_path_message(&open.path, &e),
                        })),
                    }
                }
                DaemonCmd::UseStandIn => {
                    if root.is_none() {
                        self.log_open(&open);
                    }
                    match dataplane::empty_stand_in() {
                        Ok(r) => {
                            root = Some(r);
                            // A dry-run push of one file into a missing directory.
                            if open.single_file && push {
                                let name = open.path.split_last().map(|(_, n)| n.to_vec());
                                single = Some(name);
                            }
                            DaemonEvent::StandIn(Ok(()))
                        }
                        Err(e) => DaemonEvent::StandIn(Err(e.to_string())),
                    }
                }
                DaemonCmd::Lock { wait } => {
                    let Some(r) = root.as_ref() else { continue };
                    DaemonEvent::Lock(match TargetLock::acquire(r.fd(), wait, cancel.plane()) {
                        Ok(l) => {
                            _lock = Some(l);
                            LockResult::Acquired
                        }
                        Err(LockError::Busy) => LockResult::Busy,
                        Err(LockError::Cancelled) => LockResult::Cancelled,
                        Err(e) => LockResult::Failed(format!("{e}: {}", source_chain(&e))),
                    })
                }
                DaemonCmd::Charge { what, bytes } => {
                    DaemonEvent::Charged(budget.charge(what, bytes).map_err(|e| e.to_string()))
                }
                DaemonCmd::Release { bytes } => {
                    budget.release(bytes);
                    continue;
                }
                DaemonCmd::PrepareRdma(o) => {
                    match dataplane::rdma_prepare(role, &o, self.rdma_domain.as_ref()) {
                        Ok(p) => {
                            rdma = Some(p);
                            DaemonEvent::Prepared(Ok(()))
                        }
                        Err(e) => DaemonEvent::Prepared(Err(e.to_string())),
                    }
                }
                DaemonCmd::Listen(o) => match dataplane::tcp_listen(self.control_ip, role, &o) {
                    Ok(l) => {
                        listening = Some(l);
                        DaemonEvent::Prepared(Ok(()))
                    }
                    Err(e) => DaemonEvent::Prepared(Err(e.to_string())),
                },
                DaemonCmd::SendAccept { transport, reason } => {
                    tracing::info!(session = self.id, "transport: {reason}");
                    let accepted = Accepted {
                        protocol_version: PROTOCOL_VERSION,
                        server_version: BUILD_VERSION.into(),
                        transport: transport.as_str().into(),
                        reason,
                        tcp: listening.as_ref().map(|l| l.endpoint()),
                        rdma: rdma.as_ref().map(|(_, mine)| mine.clone()),
                        single_file: !push && single.is_some(),
                    };
                    if send(out, convert::accept_to_pb(&accepted)) {
                        continue;
                    }
                    DaemonEvent::PeerGone
                }
                DaemonCmd::ReadPeerRdma => {
                    use pb::client_frame::Msg;
                    match next_or_cancel(&self.rt, &mut inbound, cancel, driver.deadline()) {
                        Err(Interrupted::Cancelled) => DaemonEvent::Cancel,
                        Err(Interrupted::Deadline) => DaemonEvent::Timer,
                        Ok(Ok(Some(pb::ClientFrame { msg: Some(Msg::Rdma(e)) }))) => {
                            match convert::rdma_peer_from_pb(&e) {
                                Ok(p) => {
                                    tracing::debug!(
                                        session = self.id,
                                        "RDMA: the client's QPs arrived"
                                    );
                                    peer = Some(p);
                                    DaemonEvent::PeerRdma(Ok(()))
                                }
                                Err(e) => DaemonEvent::PeerRdma(Err(e.to_string())),
                            }
                        }
                        Ok(Ok(Some(_))) => DaemonEvent::PeerRdma(Err(
                            "the client did not complete the RDMA set-up".into(),
                        )),
                        Ok(Ok(None)) => DaemonEvent::InboundEnded,
                        Ok(Err(s)) => DaemonEvent::InboundFailed(s.to_string()),
                    }
                }
                DaemonCmd::Connect => {
                    let connected = match (rdma.take(), peer.as_ref(), listening.take(), dp()) {
                        (Some((pending, _)), Some(peer), _, _) => {
                            pending.connect(peer, cancel.plane())
                        }
                        (None, _, Some(l), Some(_)) => l.accept(cancel.plane()),
                        _ => Err(dataplane::DataPlaneError::RdmaPeer("no set-up to connect")),
                    };
                    match connected {
                        Ok(p) => {
                            tracing::debug!(session = self.id, "data plane connected");
                            if let Some(m) = session_metrics {
                                m.plane(&p);
                            }
                            plane = Some(p);
                            DaemonEvent::DataPlane(Ok(()))
                        }
                        Err(e) => DaemonEvent::DataPlane(Err(e.to_string())),
                    }
                }
                DaemonCmd::SendRdmaReady => {
                    send(out, convert::server_rdma(&RdmaPeer::Ready));
                    continue;
                }
                DaemonCmd::StartLocal(n) => break *n,
                DaemonCmd::Refuse(e) => return End::Refused(e),
                DaemonCmd::Fail(e) => return End::Failed(e),
                DaemonCmd::TakeSlot
                | DaemonCmd::Reject(_)
                | DaemonCmd::StopLocal
                | DaemonCmd::SendSummary => continue,
            };
            cmds.extend(driver.handle(ev));
        };
        let (Some(plane), Some(root)) = (plane, root) else {
            return End::Failed(RemoteError {
                code: ErrorCode::Internal,
                message: "the session started without its data plane".into(),
            });
        };
        // A shutdown that came while the halves started is not lost: they start stopped.
        for cmd in cmds {
            if let DaemonCmd::StopLocal = cmd {
                cancel.cancel();
            }
        }

        let reporter = RemoteReporter {
            rt: self.rt.clone(),
            out: out.clone(),
            all: negotiated.events,
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
        let params = negotiated.params.clone();
        let limits = Limits {
            entries_max: self.cfg.max_entries,
            budget: Some(Arc::clone(&budget)),
            idle_timeout: Some(self.cfg.idle_timeout),
            pacer: self.pacer.clone(),
        };
        std::thread::scope(|s| {
            // Client → engine.
            let rt = self.rt.clone();
            s.spawn(move || {
                let mut inbound = inbound;
                loop {
                    use pb::client_frame::Msg;
                    let msg = match next_or_cancel(&rt, &mut inbound, cancel, None) {
                        Err(_) => break,
                        Ok(Ok(Some(m))) => m,
                        Ok(Ok(None)) => {
                            driver.handle(DaemonEvent::InboundEnded);
                            break;
                        }
                        Ok(Err(status)) => {
                            tracing::warn!("control stream from client failed: {status}");
                            driver.handle(DaemonEvent::InboundFailed(status.to_string()));
                            break;
                        }
                    };
                    let delivered = match (msg.msg, push) {
                        (Some(Msg::Source(m)), true) => match convert::source_msg_from_pb(&m) {
                            Ok(m) => {
                                tracing::trace!(kind = m.kind(), "control: client → engine");
                                to_engine_src.send(m).is_ok()
                            }
                            Err(e) => {
                                self.violation(driver, e.to_string());
                                break;
                            }
                        },
                        (Some(Msg::Target(m)), false) => match convert::target_msg_from_pb(&m) {
                            Ok(m) => to_engine_tgt.send(m).is_ok(),
                            Err(e) => {
                                self.violation(driver, e.to_string());
                                break;
                            }
                        },
                        _ => {
                            self.violation(driver, "an unexpected message from the client".into());
                            break;
                        }
                    };
                    if !delivered {
                        // The local half is gone: nothing more to carry.
                        cancel.cancel();
                        break;
                    }
                }
            });
            // Engine → client.
            let out_fwd = out.clone();
            let rt_fwd = self.rt.clone();
            let fwd = s.spawn(move || {
                let forward = |frame| {
                    if cancel.is_cancelled() {
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
            let fail = |code, message: String| RemoteError { code, message };
            let result = if push {
                drop(engine_out_src);
                let mut opts = TargetOptions::new(root.clone(), params.clone(), threads);
                opts.privileges = self.privileges;
                opts.limits = limits.clone();
                opts.single = single.clone().map(|name| SingleFile { name });
                let flag = cancel.plane();
                plane.receiver().map_err(|e| fail(ErrorCode::Internal, describe(&e))).and_then(
                    |rx| {
                        run_target(&opts, engine_src, engine_out_tgt, rx, &reporter, progress, flag)
                            .map(|r| {
                                if let Some(m) = session_metrics {
                                    m.file_errors(r.error_count);
                                }
                                convert::target_summary_to_pb(&r)
                            })
                            .map_err(|e| fail(target_code(&e), describe(&e)))
                    },
                )
            } else {
                drop(engine_out_tgt);
                let opts = SourceOptions {
                    single: single.clone().flatten(),
                    root: root.clone(),
                    params: params.clone(),
                    walk_threads: threads,
                    read_threads: threads,
                    confine: true,
                    privileged_xattrs: self.privileges.xattrs_privileged,
                    limits: limits.clone(),
                };
                plane.sender().map_err(|e| fail(ErrorCode::Internal, describe(&e))).and_then(|tx| {
                    run_source(&opts, engine_out_src, engine_tgt, tx, progress, cancel.plane())
                        .map(|r| {
                            if let Some(m) = session_metrics {
                                m.file_errors(r.error_count);
                            }
                            convert::source_summary_to_pb(&r)
                        })
                        .map_err(|e| fail(source_code(&e), describe(&e)))
                })
            };
            let _ = fwd.join();
            reporter.flush(true);
            let done = result.as_ref().map(|_| ()).map_err(Clone::clone);
            let mut end = End::Failed(fail(ErrorCode::Internal, "no outcome".into()));
            for cmd in driver.handle(DaemonEvent::LocalDone(done)) {
                match cmd {
                    DaemonCmd::SendSummary => {
                        tracing::info!(session = self.id, "session done");
                        if let Ok(summary) = &result {
                            send(out, summary.clone());
                        }
                        end = End::Done;
                    }
                    DaemonCmd::Fail(e) => end = End::Failed(e),
                    _ => {}
                }
            }
            // Stop waiting for the client's half-close.
            cancel.cancel();
            if let Some(m) = session_metrics {
                m.plane_done(&plane);
            }
            end
        })
    }

    /// A message the client sent that could not be accepted.
    fn violation(&self, driver: &Driver, message: String) {
        tracing::warn!(session = self.id, "{message}");
        driver.handle(DaemonEvent::Violation(message));
    }

    fn log_open(&self, open: &OpenRequest) {
        tracing::info!(
            session = self.id,
            peer = %self.peer,
            direction = ?open.direction,
            path = %open.path,
            "session opened"
        );
    }
}

/// How a session thread ends.
enum End {
    /// The summary was sent.
    Done,
    /// Refused before Accept: an Error frame.
    Refused(RemoteError),
    /// Failed after Accept: a summary saying so.
    Failed(RemoteError),
}

/// Stands in for the Open of a session the machine refuses before looking at it.
fn placeholder_open() -> OpenRequest {
    OpenRequest {
        protocol_version: PROTOCOL_VERSION,
        client_version: String::new(),
        direction: Direction::Pull,
        path: blitx_core::RelPath::root(),
        params: blitx_core::session::SessionParams::default(),
        transport: TransportChoice::Tcp,
        tcp_streams: 0,
        tcp_buffer_bytes: 0,
        events: false,
        client_rdma: None,
        rdma_qps: 0,
        stall_timeout_secs: 0,
        rdma_frame_checksums: false,
        rdma_event_cq: false,
        wait_lock: false,
        tcp_zero_copy: false,
        single_file: false,
    }
}

/// Opens a session's directory below the export root (never leaving it, never following a
/// symlink), and says whether the session moves one file named there:
///
/// - a pull of a path that is a regular file: its directory, and its name (the source sends
///   that file alone; a symlink or a special file is refused like any non-directory);
/// - a push of one file (`Open.single_file`): the path when it is a directory (the file keeps
///   the source's name, `Some(None)`); otherwise its parent, which must exist, and the path's
///   last component as the file's name — whatever stands there now (a file, a symlink) is
///   replaced by the rename, never written through;
/// - anything else: the directory (created with `create`), `None`.
fn open_session_root(
    base: &RootDir,
    open: &OpenRequest,
    create: bool,
) -> std::io::Result<(RootDir, Option<Option<Vec<u8>>>)> {
    use rustix::io::Errno;
    let push = open.direction == Direction::Push;
    if push && !open.single_file {
        return RootDir::beneath(base, &open.path, create).map(|r| (r, None));
    }
    let err = match RootDir::beneath(base, &open.path, false) {
        Ok(r) => return Ok((r, push.then_some(None))),
        Err(e) => e,
    };
    let errno = err.raw_os_error().map(Errno::from_raw_os_error);
    let Some((parent, name)) = open.path.split_last() else { return Err(err) };
    if push {
        if err.kind() != std::io::ErrorKind::NotFound
            && !matches!(errno, Some(Errno::NOTDIR | Errno::LOOP))
        {
            return Err(err);
        }
        let dir = RootDir::beneath(base, &parent, false)?;
        return Ok((dir, Some(Some(name.to_vec()))));
    }
    // A pull: a regular file where a directory was asked for opens with ENOTDIR.
    if errno != Some(Errno::NOTDIR) {
        return Err(err);
    }
    let dir = RootDir::beneath(base, &parent, false)?;
    let st = rustix::fs::statx(
        dir.fd(),
        blitx_storage::fsys::os(name),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::TYPE,
    )?;
    if rustix::fs::FileType::from_raw_mode(u32::from(st.stx_mode))
        != rustix::fs::FileType::RegularFile
    {
        return Err(err);
    }
    Ok((dir, Some(Some(name.to_vec()))))
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
    Privileges {
        take_owners: cfg.allow_owners,
        keep_setid: cfg.allow_setid,
        owner,
        xattrs_privileged: cfg.allow_xattrs_privileged,
        devices: cfg.allow_devices,
    }
}

/// What a push to this daemon keeps of a client's metadata: its privileges and policy, and
/// what the export's file system holds (probed on the root: "not supported" means none).
fn meta_support(privileges: &Privileges, root: &RootDir, read_only: bool) -> pb::MetaSupport {
    use rustix::io::Errno;
    if read_only {
        return pb::MetaSupport::default();
    }
    let id = blitx_storage::meta::Identity::current();
    let unsupported = |r: Result<usize, Errno>| matches!(r, Err(Errno::NOTSUP));
    let xattrs = !unsupported(rustix::fs::flistxattr(root.fd(), &mut [0u8; 0][..]));
    let acls = !unsupported(rustix::fs::fgetxattr(
        root.fd(),
        "system.posix_acl_access",
        &mut [0u8; 0][..],
    ));
    pb::MetaSupport {
        xattrs_user: xattrs,
        xattrs_privileged: xattrs && privileges.xattrs_privileged && id.root,
        acls,
        specials: true,
        devices: privileges.makes_devices(&id),
    }
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
