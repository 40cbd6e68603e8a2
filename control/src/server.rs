//! The daemon: serves pushes (client → daemon) and pulls (daemon → client) below one export
//! root.
//!
//! Each session runs on its own OS threads (the engine is blocking by design); the async gRPC
//! stream is bridged to the engine's channels by two small forwarding threads. Every path a
//! client names is parsed into a `RelPath` and opened beneath the export root with
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so `..`, absolute paths, NUL bytes and symlinks out of
//! the root are refused. SIGINT/SIGTERM cancel every session: writers stop, temporary files are
//! removed, and the daemon exits once the sessions have wound down.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blitx_core::session::{SourceMsg, TargetMsg};
use blitx_storage::RootDir;
use blitx_storage::report::{Event, EventKind, Progress, Reporter};
use blitx_storage::source::{SourceOptions, run_source};
use blitx_storage::target::{TargetOptions, run_target};
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
    rdma: Result<RdmaDeviceInfo, String>,
    /// The device opened once for every session, with the pools it keeps between them.
    rdma_domain: Option<blitx_transport_rdma::RdmaDomain>,
    topology: Option<Arc<blitx_topology::Topology>>,
    root: RootDir,
    shutdown: Arc<AtomicBool>,
    active: Arc<AtomicU64>,
    next_session: AtomicU64,
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
        Err("RDMA disabled with --no-rdma".to_string())
    } else {
        dataplane::local_rdma_device(cfg.rdma_device.as_deref())
    };
    match &rdma {
        Ok(d) => tracing::info!("RDMA device {} (GID index {}) available", d.name, d.gid_index),
        Err(why) => tracing::info!("no RDMA: {why}"),
    }
    let rdma_domain = match &rdma {
        Ok(_) => match dataplane::rdma_daemon_domain(cfg.rdma_device.as_deref()) {
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
    let daemon = Daemon {
        cfg: cfg.clone(),
        rdma: rdma.clone(),
        rdma_domain,
        topology,
        root,
        shutdown: Arc::clone(&shutdown),
        active: Arc::clone(&active),
        next_session: AtomicU64::new(1),
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| DaemonError::Listen { addr: cfg.listen, source })?;
        let local = listener.local_addr().map_err(|source| DaemonError::Listen { addr: cfg.listen, source })?;
        tracing::info!(root = %cfg.root.display(), "blit daemon listening on {local}");
        on_listening(local);
        // Control messages are small and answer each other: without TCP_NODELAY, a response's
        // DATA frame waits behind its HEADERS frame for the client's (delayed) ACK.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |accepted| {
                let stream = accepted?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(stream)
            },
        );
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
        let inbound = request.into_inner();
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
        };
        let active = Arc::clone(&self.active);
        active.fetch_add(1, Ordering::AcqRel);
        std::thread::Builder::new()
            .name(format!("blit-session-{id}"))
            .spawn(move || {
                ctx.run(inbound, out_tx);
                active.fetch_sub(1, Ordering::AcqRel);
            })
            .map_err(|e| Status::internal(format!("cannot start session thread: {e}")))?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))))
    }
}

type Out = mpsc::Sender<Result<pb::ServerFrame, Status>>;

struct SessionCtx {
    id: u64,
    rdma: Result<RdmaDeviceInfo, String>,
    rdma_domain: Option<blitx_transport_rdma::RdmaDomain>,
    placement: Option<blitx_topology::Placement>,
    peer: String,
    control_ip: IpAddr,
    cfg: DaemonConfig,
    root: RootDir,
    shutdown: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
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
        if !self.all && e.kind != EventKind::Failed {
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
    fn run(self, mut inbound: Streaming<pb::ClientFrame>, out: Out) {
        // Every engine thread of this session is created by this thread and inherits this.
        if let Some(p) = &self.placement {
            blitx_topology::apply_to_current_thread(p);
            tracing::info!(session = self.id, "placement: {p}");
        }
        let open = match self.rt.block_on(inbound.message()) {
            Ok(Some(pb::ClientFrame { msg: Some(pb::client_frame::Msg::Open(o)) })) => o,
            Ok(_) => {
                return refuse(
                    &out,
                    ErrorCode::BadRequest,
                    "the first message must be Open".into(),
                );
            }
            Err(status) => {
                tracing::warn!(peer = %self.peer, "session ended before Open: {status}");
                return;
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
        let open = match convert::open_from_pb(&open) {
            Ok(o) => o,
            Err(e) => {
                let code =
                    if e.0.contains("path") || e.0.contains("component") || e.0.contains("NUL") {
                        ErrorCode::BadPath
                    } else {
                        ErrorCode::BadRequest
                    };
                return refuse(&out, code, e.to_string());
            }
        };
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
        if let Err(message) = result {
            tracing::warn!(session = self.id, "session failed: {message}");
            send_bounded(&self.rt, &out, convert::fatal_summary_to_pb(&message));
        }
    }

    /// Runs the daemon's half; the Summary is sent here on success, by the caller on failure.
    fn serve(
        &self,
        open: &OpenRequest,
        inbound: Streaming<pb::ClientFrame>,
        out: &Out,
        cancel: &Arc<AtomicBool>,
    ) -> Result<(), String> {
        let push = open.direction == Direction::Push;
        if push && self.cfg.read_only && !open.params.dry_run {
            refuse(
                out,
                ErrorCode::ReadOnly,
                "this daemon exports its root read-only (pull only)".into(),
            );
            return Ok(());
        }
        // Push: the target directory (created if missing); pull: the source directory.
        let dry_missing = push && open.params.dry_run;
        let root = match RootDir::beneath(&self.root, &open.path, push && !open.params.dry_run) {
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
                refuse(
                    out,
                    ErrorCode::BadPath,
                    format!("cannot use {} below the export root: {e}", open.path),
                );
                return Ok(());
            }
        };
        let streams =
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
        };
        let role = if push { Role::Receive } else { Role::Send };
        let (use_rdma, mut reason) =
            match dataplane::choose_rdma(open.transport, open.client_rdma.as_ref(), &self.rdma) {
                Ok(choice) => choice,
                Err(why) => {
                    refuse(out, ErrorCode::TransportUnavailable, why);
                    return Ok(());
                }
            };
        // RDMA first; if this side cannot set it up after all, `auto` falls back to TCP.
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
                    reason = format!("auto: RDMA set-up failed on the daemon ({e}); using TCP")
                }
            }
        }
        tracing::info!(session = self.id, "transport: {reason}");
        let mut inbound = inbound;
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
                    return Err("client went away".into());
                }
                // The client answers with its own QPs (and, for a pull, its ring).
                let peer = match next_or_cancel(&self.rt, &mut inbound, cancel) {
                    Some(Ok(Some(pb::ClientFrame {
                        msg: Some(pb::client_frame::Msg::Rdma(e)),
                    }))) => convert::rdma_peer_from_pb(&e).map_err(|e| e.to_string())?,
                    _ => return Err("the client did not complete the RDMA set-up".into()),
                };
                tracing::debug!(session = self.id, "RDMA: the client's QPs arrived");
                let plane = pending.connect(&peer).map_err(|e| e.to_string())?;
                tracing::debug!(session = self.id, "RDMA: QPs connected");
                if !push {
                    // Our sender is connected: the client's receiver may connect now.
                    send(out, convert::server_rdma(&RdmaPeer::Ready));
                }
                plane
            }
            None => {
                let listening = match dataplane::tcp_listen(self.control_ip, &dp_opts) {
                    Ok(l) => l,
                    Err(e) => {
                        refuse(
                            out,
                            ErrorCode::Internal,
                            format!("cannot open a data listener: {e}"),
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
                    return Err("client went away".into());
                }
                listening.accept(role, &dp_opts, cancel).map_err(|e| e.to_string())?
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
        std::thread::scope(|s| {
            // Client → engine.
            let rt = self.rt.clone();
            let cancel_in = Arc::clone(cancel);
            s.spawn(move || {
                let mut inbound = inbound;
                loop {
                    let msg = match next_or_cancel(&rt, &mut inbound, &cancel_in) {
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
                                    tracing::warn!("{e}");
                                    false
                                }
                            }
                        }
                        (Some(pb::client_frame::Msg::Target(m)), false) => {
                            match convert::target_msg_from_pb(&m) {
                                Ok(m) => to_engine_tgt.send(m).is_ok(),
                                Err(e) => {
                                    tracing::warn!("{e}");
                                    false
                                }
                            }
                        }
                        _ => {
                            tracing::warn!("unexpected message from client");
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
                let opts = TargetOptions {
                    root: root.clone(),
                    params: params.clone(),
                    write_threads: threads,
                    confine: true,
                };
                let rx = plane.receiver();
                run_target(&opts, engine_src, engine_out_tgt, rx, &reporter, &progress, cancel)
                    .map(|r| convert::target_summary_to_pb(&r))
                    .map_err(|e| format!("{e}: {}", source_chain(&e)))
            } else {
                drop(engine_out_tgt);
                let opts = SourceOptions {
                    root: root.clone(),
                    params: params.clone(),
                    walk_threads: threads,
                    read_threads: threads,
                    confine: true,
                };
                let tx = plane.sender();
                run_source(&opts, engine_out_src, engine_tgt, tx, &progress, cancel)
                    .map(|r| convert::source_summary_to_pb(&r))
                    .map_err(|e| format!("{e}: {}", source_chain(&e)))
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

/// The causes of an error, joined (the top-level message is printed separately).
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
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

/// The next message of an inbound gRPC stream, or `None` once `cancel` is set (so a peer that
/// never closes its side cannot keep a session thread alive).
pub(crate) fn next_or_cancel<T>(
    rt: &tokio::runtime::Handle,
    stream: &mut Streaming<T>,
    cancel: &AtomicBool,
) -> Option<Result<Option<T>, Status>> {
    rt.block_on(async {
        tokio::select! {
            m = stream.message() => Some(m),
            _ = async {
                while !cancel.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } => None,
        }
    })
}
