//! The client's side of a session: `blit xfer LOCAL blit://HOST/path` (push) and
//! `blit xfer blit://HOST/path LOCAL` (pull). The local half of the engine runs here, the other
//! half in the daemon; this module carries their messages over gRPC and sets up the data plane
//! the daemon offers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blitx_core::session::{SessionParams, SourceMsg, TargetMsg};
use blitx_storage::RootDir;
use blitx_storage::limits::Limits;
use blitx_storage::report::{Progress, Reporter, SourceReport, TargetReport};
use blitx_storage::source::{SourceError, SourceOptions, run_source};
use blitx_storage::target::{TargetError, TargetOptions, run_target};
use tokio::sync::mpsc;

use crate::convert::{
    self, Accepted, Direction, ErrorCode, OpenRequest, RemoteError, RemoteSummary, TransportChoice,
};
use crate::dataplane::{self, DataPlaneError, DataPlaneOptions, Role};
use crate::pb;
use crate::pb::blit_client::BlitClient;
use crate::server::{
    KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, forward_cancel, next_or_cancel, or_cancel, source_chain,
};
use crate::url::RemoteSpec;
use crate::{BUILD_VERSION, CONTROL_MESSAGE_BYTES_MAX, PROTOCOL_VERSION};

/// How long to wait for the daemon's summary once the local half finished.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for `--connect-timeout`: TCP connect, HTTP/2 handshake and the daemon's Accept.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub params: SessionParams,
    pub transport: TransportChoice,
    /// 0: the daemon's default.
    pub streams: u32,
    pub tcp_buffer_bytes: u64,
    /// Ask the daemon for every per-path event (verbose / dry run), not only failures.
    pub events: bool,
    pub threads: usize,
    pub stall_timeout: Duration,
    /// RDMA queue pairs (frames are striped over them).
    pub qps: u32,
    /// The local verbs device (None: the first with an active port).
    pub rdma_device: Option<String>,
    /// RDMA: hash and verify every frame (TCP always does).
    pub rdma_frame_checksums: bool,
    /// RDMA: event-driven CQs on both ends instead of busy-polling.
    pub rdma_event_cq: bool,
    /// TCP: sendfile on the sending end, splice on the receiving end (both ends).
    pub tcp_zero_copy: bool,
    /// The longest the daemon may take to connect, handshake and accept the session.
    pub connect_timeout: Duration,
    /// End the transfer when nothing arrives from the daemon and no data moves for this long.
    pub idle_timeout: Option<Duration>,
    /// Push: wait while another transfer writes the same target (instead of failing).
    pub wait_lock: bool,
}

#[derive(Debug)]
pub struct ClientReport {
    pub transport: String,
    pub streams: u32,
    pub reason: String,
    pub server_version: String,
    /// The local half's report (source for a push, target for a pull).
    pub local_source: Option<SourceReport>,
    pub local_target: Option<TargetReport>,
    pub remote: RemoteSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the blit daemon at {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("the daemon refused the transfer: {0}")]
    Refused(RemoteError),
    #[error("lost the connection to the daemon: {0}")]
    Lost(String),
    #[error("cannot set up the data plane: {0}")]
    DataPlane(#[from] DataPlaneError),
    #[error("local source half failed: {0} ({1})")]
    Source(SourceError, String),
    #[error("local target half failed: {0} ({1})")]
    Target(TargetError, String),
    #[error("the daemon's half failed: {0}")]
    Remote(RemoteError),
    #[error("the daemon at {endpoint} did not accept the session within {secs} s")]
    Timeout { endpoint: String, secs: u64 },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the transfer was cancelled")]
    Cancelled,
    #[error("RDMA is not available on this machine: {0}")]
    RdmaUnavailable(DataPlaneError),
}

impl ClientError {
    /// True when the requested transport is unavailable (exit code 3).
    pub fn is_transport_unavailable(&self) -> bool {
        match self {
            ClientError::Refused(RemoteError { code: ErrorCode::TransportUnavailable, .. })
            | ClientError::RdmaUnavailable(_) => true,
            ClientError::DataPlane(e) => e.is_unavailable(),
            _ => false,
        }
    }
    /// True when the data plane stalled (exit code 30).
    pub fn is_stall(&self) -> bool {
        let stalled = |e: &blitx_core::transport::TransportError| {
            matches!(e, blitx_core::transport::TransportError::Stalled { .. })
        };
        match self {
            ClientError::Source(blitx_storage::source::SourceError::Transport(e), _) => stalled(e),
            ClientError::Target(blitx_storage::target::TargetError::Transport(e), _) => stalled(e),
            ClientError::Remote(e) => e.code == ErrorCode::Stalled,
            _ => false,
        }
    }
}

/// Daemon facts from `Hello`.
#[derive(Debug, Clone)]
pub struct HelloInfo {
    pub protocol_version: u32,
    pub server_version: String,
    pub transports: Vec<String>,
    pub read_only: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("blit-grpc")
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)
}

async fn connect(
    remote: &RemoteSpec,
    timeout: Duration,
) -> Result<BlitClient<tonic::transport::Channel>, ClientError> {
    let endpoint = remote.endpoint();
    let err = |detail: String| ClientError::Connect { endpoint: remote.to_string(), detail };
    // HTTP/2 pings find a daemon that stopped answering (frozen, or its machine gone) whatever
    // the session was waiting for.
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| ClientError::Timeout {
            endpoint: remote.to_string(),
            secs: timeout.as_secs(),
        })?
        .map_err(|e| err(format!("{e}: {}", source_chain(&e))))?;
    tracing::debug!(endpoint = %remote, "control channel connected");
    Ok(BlitClient::new(channel)
        .max_decoding_message_size(CONTROL_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CONTROL_MESSAGE_BYTES_MAX))
}

/// Asks the daemon for its version and capabilities.
pub fn hello(remote: &RemoteSpec) -> Result<HelloInfo, ClientError> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut client = connect(remote, CONNECT_TIMEOUT_DEFAULT).await?;
        let reply = client
            .hello(pb::HelloRequest {
                protocol_version: PROTOCOL_VERSION,
                client_version: BUILD_VERSION.into(),
            })
            .await
            .map_err(|s| ClientError::Lost(s.message().to_string()))?
            .into_inner();
        Ok(HelloInfo {
            protocol_version: reply.protocol_version,
            server_version: reply.server_version,
            transports: reply.transports,
            read_only: reply.read_only,
        })
    })
}

/// What the local half works on.
pub enum Local {
    /// Push: the local directory to send.
    Source(RootDir),
    /// Pull: the local directory to write (must exist; may be an empty stand-in for dry runs).
    Target(RootDir),
}

/// Runs one transfer against a daemon.
pub fn transfer(
    remote: &RemoteSpec,
    local: Local,
    opts: &ClientOptions,
    reporter: &dyn Reporter,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<ClientReport, ClientError> {
    let rt = runtime()?;
    let direction = match local {
        Local::Source(_) => Direction::Push,
        Local::Target(_) => Direction::Pull,
    };
    let role = if direction == Direction::Push { Role::Send } else { Role::Receive };
    let dp_opts = DataPlaneOptions {
        streams: 1, // TCP: the daemon's offer decides (below)
        chunk_bytes: opts.params.chunk_bytes,
        socket_buffer_bytes: opts.tcp_buffer_bytes,
        stall_timeout: opts.stall_timeout,
        threads: opts.threads,
        qps: opts.qps.max(1),
        rdma_device: opts.rdma_device.clone(),
        rdma_frame_checksums: opts.rdma_frame_checksums,
        rdma_event_cq: opts.rdma_event_cq,
        tcp_zero_copy: opts.tcp_zero_copy,
    };
    // When RDMA may be used, this side's QPs and registered memory are set up while the daemon
    // is asked (they need nothing from it): registering pins and clears every page, the
    // longest part of a session's set-up. Unused (the daemon picked TCP), they are dropped.
    let early_rdma = (opts.transport != TransportChoice::Tcp)
        .then(|| {
            let o = dp_opts.clone();
            std::thread::Builder::new()
                .name("rdma-setup".into())
                .spawn(blitx_core::placer::inherit(move || dataplane::rdma_prepare(role, &o, None)))
                .ok()
        })
        .flatten();
    // The control connection is made while the local RDMA device is probed (opening a verbs
    // device loads every provider library: tens of milliseconds on a small machine).
    // Connect, handshake, Open and Accept all fit in one deadline, and an interrupt ends the
    // wait at once: a daemon that accepts TCP and never answers cannot hold the client.
    let deadline = std::time::Instant::now() + opts.connect_timeout;
    let left = || Some(deadline.saturating_duration_since(std::time::Instant::now()));
    let timed_out = || ClientError::Timeout {
        endpoint: remote.to_string(),
        secs: opts.connect_timeout.as_secs(),
    };
    let connecting = {
        let remote = remote.clone();
        let timeout = opts.connect_timeout;
        rt.spawn(async move { connect(&remote, timeout).await })
    };
    // Probe the local RDMA device only when RDMA might be used.
    let client_rdma = match opts.transport {
        TransportChoice::Tcp => None,
        choice => match dataplane::local_rdma_device(opts.rdma_device.as_deref()) {
            Ok(d) => Some(d),
            Err(why) if choice == TransportChoice::Rdma => {
                return Err(ClientError::RdmaUnavailable(why));
            }
            Err(why) => {
                tracing::info!("no RDMA here ({why}); offering TCP only");
                None
            }
        },
    };
    let open = OpenRequest {
        protocol_version: PROTOCOL_VERSION,
        client_version: BUILD_VERSION.into(),
        direction,
        path: remote.path.clone(),
        params: opts.params.clone(),
        transport: opts.transport,
        tcp_streams: opts.streams,
        tcp_buffer_bytes: opts.tcp_buffer_bytes,
        events: opts.events,
        client_rdma,
        rdma_qps: opts.qps,
        stall_timeout_secs: u32::try_from(opts.stall_timeout.as_secs()).unwrap_or(u32::MAX),
        rdma_frame_checksums: opts.rdma_frame_checksums,
        rdma_event_cq: opts.rdma_event_cq,
        wait_lock: opts.wait_lock,
        tcp_zero_copy: opts.tcp_zero_copy,
    };
    let (out_tx, out_rx) = mpsc::channel::<pb::ClientFrame>(64);
    let opening = async {
        let mut client = connecting.await.map_err(|e| ClientError::Connect {
            endpoint: remote.to_string(),
            detail: format!("the connecting task failed: {e}"),
        })??;
        tracing::debug!("sending Open");
        out_tx
            .send(convert::open_to_pb(&open))
            .await
            .map_err(|_| ClientError::Lost("control stream closed".into()))?;
        let resp = client
            .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::ResourceExhausted => ClientError::Refused(RemoteError {
                    code: ErrorCode::ResourceExhausted,
                    message: s.message().to_string(),
                }),
                _ => ClientError::Lost(format!("{}: {}", s.code(), s.message())),
            })?;
        Ok::<_, ClientError>(resp.into_inner())
    };
    let gave_up =
        || if cancel.load(Ordering::Acquire) { ClientError::Cancelled } else { timed_out() };
    let mut inbound = rt.block_on(or_cancel(opening, cancel, left())).ok_or_else(gave_up)??;
    // A push waiting for the target lock is accepted only when it has it.
    let accept_wait = if opts.wait_lock { None } else { left() };
    let answer = next_or_cancel(rt.handle(), &mut inbound, cancel, accept_wait);
    let accepted: Accepted = match answer.ok_or_else(gave_up)? {
        Ok(Some(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Accept(a)) })) => {
            convert::accept_from_pb(&a).map_err(|e| ClientError::Lost(e.to_string()))?
        }
        Ok(Some(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Error(e)) })) => {
            return Err(ClientError::Refused(convert::error_from_pb(&e)));
        }
        Ok(_) => {
            return Err(ClientError::Lost("the daemon closed the session before accepting".into()));
        }
        Err(s) => return Err(ClientError::Lost(format!("{}: {}", s.code(), s.message()))),
    };
    tracing::info!(transport = %accepted.transport, reason = %accepted.reason, "daemon accepted the session");
    let dp_opts =
        DataPlaneOptions { streams: accepted.tcp.as_ref().map_or(1, |t| t.streams), ..dp_opts };
    // The control plane's cancellation is still an `AtomicBool` (polled by `or_cancel`), not a
    // core `Cancel`: until it is one, nothing fires this, and the set-up's waits end at
    // DATA_CONNECT_TIMEOUT or with the peer, as before.
    let setup_cancel = blitx_core::cancel::Cancel::new();
    let plane = match (&accepted.tcp, &accepted.rdma) {
        (_, Some(peer)) => {
            // RDMA: answer with our QPs (and ring, for a pull). A pusher (sender) connects
            // at once; a puller (receiver) waits until the daemon's sender has connected.
            let prepared = match early_rdma.and_then(|t| t.join().ok()) {
                Some(r) => r,
                None => dataplane::rdma_prepare(role, &dp_opts, None),
            };
            let (pending, mine) = prepared?;
            tracing::debug!("RDMA: local QPs and memory ready");
            if rt.block_on(out_tx.send(convert::client_rdma(&mine))).is_err() {
                return Err(ClientError::Lost("control stream closed during RDMA set-up".into()));
            }
            if role == Role::Receive {
                use pb::server_frame::Msg;
                match next_or_cancel(rt.handle(), &mut inbound, cancel, None) {
                    Some(Ok(Some(pb::ServerFrame { msg: Some(Msg::Rdma(e)) }))) if e.ready => {}
                    Some(Ok(Some(pb::ServerFrame { msg: Some(Msg::Summary(sm)) }))) => {
                        let why = convert::summary_from_pb(&sm)
                            .ok()
                            .and_then(|s| s.fatal)
                            .unwrap_or(RemoteError {
                                code: ErrorCode::Internal,
                                message: "RDMA set-up failed on the daemon".into(),
                            });
                        return Err(ClientError::Remote(why));
                    }
                    _ => {
                        return Err(ClientError::Lost(
                            "the daemon did not complete the RDMA set-up".into(),
                        ));
                    }
                }
            }
            let plane = pending.connect(peer, &setup_cancel)?;
            tracing::debug!("RDMA: QPs connected");
            plane
        }
        (Some(tcp), None) => {
            drop(early_rdma); // its thread lets go of what it set up
            dataplane::tcp_connect(tcp, role, &dp_opts, &setup_cancel)?
        }
        (None, None) => {
            return Err(ClientError::Lost("the daemon offered no data plane".into()));
        }
    };
    let (transport_name, streams) = plane.describe();

    let summary: Mutex<Option<Result<RemoteSummary, String>>> = Mutex::new(None);
    let lost: Mutex<Option<String>> = Mutex::new(None);
    let session_cancel = Arc::new(AtomicBool::new(false));
    let (to_engine_src, engine_src) =
        crossbeam_channel::bounded::<SourceMsg>(blitx_storage::local::CONTROL_QUEUE_MAX);
    let (to_engine_tgt, engine_tgt) =
        crossbeam_channel::bounded::<TargetMsg>(blitx_storage::local::CONTROL_QUEUE_MAX);
    let (engine_out_src, from_engine_src) =
        crossbeam_channel::bounded::<SourceMsg>(blitx_storage::local::CONTROL_QUEUE_MAX);
    let (engine_out_tgt, from_engine_tgt) =
        crossbeam_channel::bounded::<TargetMsg>(blitx_storage::local::CONTROL_QUEUE_MAX);
    let push = direction == Direction::Push;
    let handle = rt.handle().clone();

    let local_result = std::thread::scope(|s| {
        // Propagates the caller's cancel (SIGINT) to this session.
        let (watch_stop, watch_rx) = std::sync::mpsc::channel::<()>();
        let watcher = {
            let session_cancel = &session_cancel;
            s.spawn(move || forward_cancel(cancel, session_cancel, &watch_rx))
        };
        // Daemon → engine / reporter. `inbound_ended` disconnects when the thread ends: after
        // the summary, a lost stream, or a cancel (which it notices within 50 ms).
        let (inbound_ended_tx, inbound_ended) = std::sync::mpsc::channel::<()>();
        let inbound_thread = s.spawn(|| {
            let _ended = inbound_ended_tx;
            let mut inbound = inbound;
            loop {
                let frame = match next_or_cancel(&handle, &mut inbound, &session_cancel, None) {
                    None => break,
                    Some(Ok(Some(f))) => f,
                    Some(Ok(None)) => {
                        if summary.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                            *lost.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some("the daemon ended the session without a summary".into());
                            session_cancel.store(true, Ordering::Release);
                        }
                        break;
                    }
                    Some(Err(status)) => {
                        *lost.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("{}: {}", status.code(), status.message()));
                        session_cancel.store(true, Ordering::Release);
                        break;
                    }
                };
                use pb::server_frame::Msg;
                let ok = match frame.msg {
                    Some(Msg::Source(m)) if !push => match convert::source_msg_from_pb(&m) {
                        Ok(m) => to_engine_src.send(m).is_ok(),
                        Err(e) => {
                            *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                            false
                        }
                    },
                    Some(Msg::Target(m)) if push => match convert::target_msg_from_pb(&m) {
                        Ok(m) => {
                            tracing::trace!(kind = m.kind(), "control: daemon → engine");
                            to_engine_tgt.send(m).is_ok()
                        }
                        Err(e) => {
                            *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                            false
                        }
                    },
                    Some(Msg::Events(ev)) => {
                        for e in &ev.events {
                            if let Ok(e) = convert::event_from_pb(e) {
                                reporter.event(e);
                            }
                        }
                        true
                    }
                    Some(Msg::Summary(sm)) => {
                        tracing::debug!("the daemon's summary arrived");
                        let r = convert::summary_from_pb(&sm).map_err(|e| e.to_string());
                        let fatal = r.as_ref().ok().and_then(|r| r.fatal.clone());
                        *summary.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                        if fatal.is_some() {
                            session_cancel.store(true, Ordering::Release);
                        }
                        // The summary is the daemon's last message: stop reading now rather
                        // than when the stream closes or the cancel check next looks.
                        break;
                    }
                    Some(Msg::Error(e)) => {
                        *lost.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(convert::error_from_pb(&e).message);
                        false
                    }
                    _ => {
                        *lost.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some("unexpected message from the daemon".into());
                        false
                    }
                };
                if !ok {
                    session_cancel.store(true, Ordering::Release);
                    break;
                }
            }
            drop(to_engine_src);
            drop(to_engine_tgt);
        });
        // Engine → daemon.
        let out = out_tx.clone();
        let fwd = s.spawn(move || {
            if push {
                for m in from_engine_src.iter() {
                    tracing::trace!(kind = m.kind(), "control: engine → daemon");
                    if out.blocking_send(convert::client_source(&m)).is_err() {
                        break;
                    }
                }
            } else {
                for m in from_engine_tgt.iter() {
                    if out.blocking_send(convert::client_target(&m)).is_err() {
                        break;
                    }
                }
            }
        });
        let result = match local {
            Local::Source(root) => {
                drop(engine_out_tgt);
                let o = SourceOptions {
                    root,
                    params: opts.params.clone(),
                    walk_threads: opts.threads,
                    read_threads: opts.threads,
                    confine: false,
                    limits: Limits { idle_timeout: opts.idle_timeout, ..Limits::none() },
                };
                plane.sender().map_err(ClientError::DataPlane).and_then(|tx| {
                    run_source(&o, engine_out_src, engine_tgt, tx, progress, &session_cancel)
                        .map(|r| (Some(r), None))
                        .map_err(|e| {
                            let chain = source_chain(&e);
                            ClientError::Source(e, chain)
                        })
                })
            }
            Local::Target(root) => {
                drop(engine_out_src);
                // Confined like a daemon's: the daemon is as untrusted as a client.
                let mut o = TargetOptions::new(root, opts.params.clone(), opts.threads);
                o.limits.idle_timeout = opts.idle_timeout;
                plane.receiver().map_err(ClientError::DataPlane).and_then(|rx| {
                    run_target(
                        &o,
                        engine_src,
                        engine_out_tgt,
                        rx,
                        reporter,
                        progress,
                        &session_cancel,
                    )
                    .map(|r| (None, Some(r)))
                    .map_err(|e| {
                        let chain = source_chain(&e);
                        ClientError::Target(e, chain)
                    })
                })
            }
        };
        let _ = fwd.join();
        // Our half is done: close our side of the control stream and wait for the summary.
        drop(out_tx);
        if result.is_ok() {
            // The inbound thread ends with the summary (or a lost stream, or an interrupt).
            let _ = inbound_ended.recv_timeout(SUMMARY_TIMEOUT);
        }
        session_cancel.store(true, Ordering::Release);
        drop(watch_stop);
        let _ = inbound_thread.join();
        let _ = watcher.join();
        result
    });

    tracing::debug!("session over");
    let closing = std::time::Instant::now();
    drop(plane);
    tracing::debug!(ms = closing.elapsed().as_millis() as u64, "data plane closed");
    if cancel.load(Ordering::Acquire) {
        return Err(ClientError::Cancelled);
    }
    let remote_summary = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(Ok(r)) = &remote_summary
        && let Some(fatal) = &r.fatal
    {
        return Err(ClientError::Remote(fatal.clone()));
    }
    let lost = lost.into_inner().unwrap_or_else(|p| p.into_inner());
    let (local_source, local_target) = match local_result {
        Ok(v) => v,
        Err(e) => {
            // A broken control stream explains the local failure better than "channel closed".
            return Err(match lost {
                Some(l) => ClientError::Lost(l),
                None => e,
            });
        }
    };
    let remote = match remote_summary {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(ClientError::Lost(format!("bad summary from the daemon: {e}"))),
        None => {
            return Err(ClientError::Lost(
                lost.unwrap_or_else(|| "no summary from the daemon".into()),
            ));
        }
    };
    Ok(ClientReport {
        transport: transport_name.into(),
        streams,
        reason: accepted.reason,
        server_version: accepted.server_version,
        local_source,
        local_target,
        remote,
    })
}

/// Sends an Open naming `path_bytes` verbatim (bypassing the client's own path validation) and
/// returns the daemon's answer; for tests that check the daemon's confinement.
#[doc(hidden)]
pub fn raw_open_for_tests(
    remote: &RemoteSpec,
    path_bytes: &[u8],
    push: bool,
) -> Result<String, ClientError> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut client = connect(remote, CONNECT_TIMEOUT_DEFAULT).await?;
        let open = OpenRequest {
            protocol_version: PROTOCOL_VERSION,
            client_version: BUILD_VERSION.into(),
            direction: if push { Direction::Push } else { Direction::Pull },
            path: blitx_core::RelPath::root(),
            params: SessionParams::default(),
            transport: TransportChoice::Tcp,
            tcp_streams: 1,
            tcp_buffer_bytes: 0,
            events: false,
            client_rdma: None,
            rdma_qps: 0,
            stall_timeout_secs: 5,
            rdma_frame_checksums: false,
            rdma_event_cq: false,
            wait_lock: false,
            tcp_zero_copy: false,
        };
        let mut frame = convert::open_to_pb(&open);
        if let Some(pb::client_frame::Msg::Open(o)) = frame.msg.as_mut() {
            o.path = path_bytes.to_vec();
        }
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.send(frame).await;
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| ClientError::Lost(s.message().to_string()))?
            .into_inner();
        match inbound.message().await {
            Ok(Some(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Error(e)) })) => {
                Err(ClientError::Refused(convert::error_from_pb(&e)))
            }
            Ok(Some(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Accept(a)) })) => {
                Ok(a.transport)
            }
            other => Err(ClientError::Lost(format!("unexpected answer {other:?}"))),
        }
    })
}
