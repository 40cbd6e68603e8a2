//! The client's side of a session: `blit xfer LOCAL blit://HOST/path` (push) and
//! `blit xfer blit://HOST/path LOCAL` (pull). The local half of the engine runs here, the other
//! half in the daemon; this module carries their messages over gRPC and sets up the data plane
//! the daemon offers.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use blitx_core::session::{SessionParams, SourceMsg, TargetMsg};
use blitx_storage::RootDir;
use blitx_storage::limits::Limits;
use blitx_storage::report::{Progress, Reporter, SourceReport, TargetReport};
use blitx_storage::source::{SourceError, SourceOptions, run_source};
use blitx_storage::target::{SingleFile, TargetError, TargetOptions, run_target};
use tokio::sync::mpsc;

use crate::cancel::{Cancel, Interrupted, next_or_cancel};
use crate::convert::{
    self, Accepted, Direction, ErrorCode, OpenRequest, RemoteError, RemoteSummary, TransportChoice,
};
use crate::dataplane::{self, DataPlaneError, DataPlaneOptions, Role};
use crate::negotiate::{
    ClientCmd, ClientEvent, ClientFacts, ClientOutcome, ClientSession, Offer, SUMMARY_TIMEOUT,
};
use crate::pb;
use crate::pb::blit_client::BlitClient;
use crate::server::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, source_chain};
use crate::url::RemoteSpec;
use crate::{BUILD_VERSION, CONTROL_MESSAGE_BYTES_MAX, PROTOCOL_VERSION};

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
    #[error("{0}")]
    OpenTarget(String),
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
    /// What a push to it keeps of metadata (`None`: a daemon that does not say).
    pub meta: Option<MetaSupport>,
}

/// What a daemon's target half sets of a source's metadata (`HelloReply.meta_support`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaSupport {
    pub xattrs_user: bool,
    /// `trusted.*` and `security.*`.
    pub xattrs_privileged: bool,
    pub acls: bool,
    /// FIFOs and sockets.
    pub specials: bool,
    pub devices: bool,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("blit-grpc")
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)
}

pub(crate) async fn connect(
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
            meta: reply.meta_support.map(|m| MetaSupport {
                xattrs_user: m.xattrs_user,
                xattrs_privileged: m.xattrs_privileged,
                acls: m.acls,
                specials: m.specials,
                devices: m.devices,
            }),
        })
    })
}

/// What the local half works on.
pub enum Local<'a> {
    /// Push: the local directory to send.
    Source(RootDir),
    /// Push of one regular file: its directory and its name there.
    SourceFile(RootDir, Vec<u8>),
    /// Pull: the local directory to write (must exist; may be an empty stand-in for dry runs).
    /// A daemon whose source is one file puts it in here under its own name.
    Target(RootDir),
    /// Pull whose target is opened once the daemon's Accept said whether its source is one
    /// file (`true`) or a directory: the directory to write, and where a single file lands.
    TargetOnAccept(OpenTarget<'a>),
}

/// Opens a pull's target given whether the daemon's source is one file; an error is the
/// message the transfer fails with.
pub type OpenTarget<'a> =
    Box<dyn FnOnce(bool) -> Result<(RootDir, Option<SingleFile>), String> + 'a>;

/// The client's session machine, shared by the threads that feed it events: the inbound
/// relay, the caller's cancel, and the thread running the local half.
struct Driver {
    machine: Mutex<ClientSession>,
    changed: Condvar,
    outcome: Mutex<Option<ClientOutcome>>,
    /// Stops the local half and the relays ([`ClientCmd::StopLocal`]).
    stop: Cancel,
}

impl Driver {
    /// Feeds one event and carries out what follows that needs no I/O here; returns the
    /// commands left for the caller, in order.
    fn handle(&self, ev: ClientEvent) -> VecDeque<ClientCmd> {
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        self.handle_locked(&mut m, Instant::now(), ev)
    }

    /// The commands the machine starts with.
    fn initial(&self) -> VecDeque<ClientCmd> {
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        self.drain(&mut m)
    }

    fn handle_locked(
        &self,
        m: &mut ClientSession,
        now: Instant,
        ev: ClientEvent,
    ) -> VecDeque<ClientCmd> {
        m.handle(now, ev);
        self.drain(m)
    }

    fn drain(&self, m: &mut ClientSession) -> VecDeque<ClientCmd> {
        let mut left = VecDeque::new();
        while let Some(cmd) = m.poll() {
            match cmd {
                ClientCmd::StopLocal => self.stop.cancel(),
                ClientCmd::Finish(o) => {
                    *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
                }
                other => left.push_back(other),
            }
        }
        self.changed.notify_all();
        left
    }

    /// Waits (woken by every event, and at the machine's deadline) until the session is over.
    fn wait_done(&self) {
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        while !m.is_done() {
            let now = Instant::now();
            m = match m.deadline() {
                Some(d) if now >= d => {
                    self.handle_locked(&mut m, now, ClientEvent::Timer);
                    m
                }
                Some(d) => {
                    self.changed.wait_timeout(m, d - now).unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.changed.wait(m).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    fn outcome(&self) -> Option<ClientOutcome> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A frame of the daemon's during the negotiation, as an event for the machine.
fn negotiation_event(
    frame: Result<Result<Option<pb::ServerFrame>, tonic::Status>, Interrupted>,
    accepted: &mut Option<Accepted>,
) -> ClientEvent {
    use pb::server_frame::Msg;
    match frame {
        Err(Interrupted::Cancelled) => ClientEvent::Cancel,
        Err(Interrupted::Deadline) => ClientEvent::Timer,
        Ok(Err(s)) => ClientEvent::InboundFailed(format!("{}: {}", s.code(), s.message())),
        Ok(Ok(None)) => ClientEvent::InboundEnded,
        Ok(Ok(Some(pb::ServerFrame { msg }))) => match msg {
            Some(Msg::Accept(a)) => match convert::accept_from_pb(&a) {
                Ok(a) => {
                    let offer = match (&a.tcp, &a.rdma) {
                        (_, Some(_)) => Offer::Rdma,
                        (Some(t), None) => Offer::Tcp { streams: t.streams },
                        (None, None) => Offer::None,
                    };
                    *accepted = Some(a);
                    ClientEvent::Accepted(offer)
                }
                Err(e) => ClientEvent::Violation(e.to_string()),
            },
            Some(Msg::Error(e)) => ClientEvent::Refused(convert::error_from_pb(&e)),
            Some(Msg::Rdma(e)) if e.ready => ClientEvent::RdmaReady,
            Some(Msg::Summary(sm)) => ClientEvent::Summary(Box::new(
                convert::summary_from_pb(&sm).map_err(|e| e.to_string()),
            )),
            _ => ClientEvent::Violation("unexpected message from the daemon".into()),
        },
    }
}

/// Runs one transfer against a daemon. The decisions (deadlines, refusals, which failure
/// explains the end) are [`ClientSession`]'s; this function does what it says.
pub fn transfer(
    remote: &RemoteSpec,
    local: Local,
    opts: &ClientOptions,
    reporter: &dyn Reporter,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<ClientReport, ClientError> {
    let rt = runtime()?;
    let direction = match local {
        Local::Source(_) | Local::SourceFile(..) => Direction::Push,
        Local::Target(_) | Local::TargetOnAccept(_) => Direction::Pull,
    };
    let single_file = matches!(local, Local::SourceFile(..));
    let role = if direction == Direction::Push { Role::Send } else { Role::Receive };
    let mut dp_opts = DataPlaneOptions {
        streams: 1, // TCP: the daemon's offer decides
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
    let facts = ClientFacts {
        direction,
        transport: opts.transport,
        connect_timeout: opts.connect_timeout,
        wait_lock: opts.wait_lock,
        summary_timeout: SUMMARY_TIMEOUT,
    };
    let driver = Driver {
        machine: Mutex::new(ClientSession::new(facts, Instant::now())),
        changed: Condvar::new(),
        outcome: Mutex::new(None),
        stop: Cancel::new(),
    };
    // The control connection is made while the local RDMA device is probed (opening a verbs
    // device loads every provider library: tens of milliseconds on a small machine).
    let connecting = {
        let remote = remote.clone();
        let timeout = opts.connect_timeout;
        rt.spawn(async move { connect(&remote, timeout).await })
    };
    let mut connecting = Some(connecting);
    let mut early_rdma = None;
    let mut client_rdma = None;
    let (out_tx, out_rx) = mpsc::channel::<pb::ClientFrame>(64);
    let mut out_rx = Some(out_rx);
    let mut inbound = None;
    let mut accepted: Option<Accepted> = None;
    let mut pending_rdma = None;
    let mut plane = None;
    // Errors whose values the machine does not hold, kept for the outcome that names them.
    let mut connect_error = None;
    let mut dp_error = None;

    // ---- the negotiation: one command at a time, each answered by one event; an interrupt
    // ends every wait on the daemon at once.
    let mut cmds = driver.initial();
    while let Some(cmd) = cmds.pop_front() {
        let deadline = driver.machine.lock().unwrap_or_else(|p| p.into_inner()).deadline();
        let ev = match cmd {
            ClientCmd::PrepareRdmaEarly => {
                // This side's QPs and registered memory need nothing from the daemon.
                let o = dp_opts.clone();
                early_rdma = std::thread::Builder::new()
                    .name("rdma-setup".into())
                    .spawn(blitx_core::placer::inherit(move || {
                        dataplane::rdma_prepare(role, &o, None)
                    }))
                    .ok();
                continue;
            }
            ClientCmd::ProbeRdma => {
                match dataplane::local_rdma_device(opts.rdma_device.as_deref()) {
                    Ok(d) => {
                        client_rdma = Some(d);
                        ClientEvent::RdmaProbed(Ok(()))
                    }
                    Err(why) => {
                        tracing::info!("no RDMA here ({why})");
                        let text = why.to_string();
                        // Kept for the outcome (exit 3 is decided on its type).
                        dp_error = Some(why);
                        ClientEvent::RdmaProbed(Err(text))
                    }
                }
            }
            ClientCmd::Open { rdma } => {
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
                    client_rdma: if rdma { client_rdma.take() } else { None },
                    rdma_qps: opts.qps,
                    stall_timeout_secs: u32::try_from(opts.stall_timeout.as_secs())
                        .unwrap_or(u32::MAX),
                    rdma_frame_checksums: opts.rdma_frame_checksums,
                    rdma_event_cq: opts.rdma_event_cq,
                    wait_lock: opts.wait_lock,
                    tcp_zero_copy: opts.tcp_zero_copy,
                    single_file,
                };
                let (Some(connecting), Some(out_rx)) = (connecting.take(), out_rx.take()) else {
                    // The machine asks for one Open; a second finds the stream in use.
                    let message = "the session stream is already open".into();
                    cmds.extend(driver.handle(ClientEvent::Rejected { exhausted: false, message }));
                    continue;
                };
                let out_tx = &out_tx;
                let opening = async move {
                    let mut client = match connecting.await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => return Err(Err(e)),
                        Err(e) => {
                            return Err(Err(ClientError::Connect {
                                endpoint: remote.to_string(),
                                detail: format!("the connecting task failed: {e}"),
                            }));
                        }
                    };
                    tracing::debug!("sending Open");
                    if out_tx.send(convert::open_to_pb(&open)).await.is_err() {
                        return Err(Ok(ClientEvent::Rejected {
                            exhausted: false,
                            message: "control stream closed".into(),
                        }));
                    }
                    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
                    match client.session(stream).await {
                        Ok(r) => Ok(r.into_inner()),
                        Err(s) => Err(Ok(ClientEvent::Rejected {
                            exhausted: s.code() == tonic::Code::ResourceExhausted,
                            message: match s.code() {
                                tonic::Code::ResourceExhausted => s.message().to_string(),
                                c => format!("{c}: {}", s.message()),
                            },
                        })),
                    }
                };
                match rt.block_on(cancel.race(opening, deadline)) {
                    Err(Interrupted::Cancelled) => ClientEvent::Cancel,
                    Err(Interrupted::Deadline) => ClientEvent::Timer,
                    Ok(Ok(stream)) => {
                        inbound = Some(stream);
                        ClientEvent::Opened
                    }
                    Ok(Err(Ok(ev))) => ev,
                    Ok(Err(Err(e))) => {
                        connect_error = Some(e);
                        ClientEvent::Unreachable
                    }
                }
            }
            ClientCmd::ReadFrame => match inbound.as_mut() {
                Some(stream) => {
                    let frame = next_or_cancel(rt.handle(), stream, cancel, deadline);
                    negotiation_event(frame, &mut accepted)
                }
                None => ClientEvent::InboundFailed("no session stream".into()),
            },
            ClientCmd::PrepareRdma => {
                let prepared = match early_rdma.take().and_then(|t| t.join().ok()) {
                    Some(r) => r,
                    None => dataplane::rdma_prepare(role, &dp_opts, None),
                };
                match prepared {
                    Ok((pending, mine)) => {
                        tracing::debug!("RDMA: local QPs and memory ready");
                        pending_rdma = Some(pending);
                        // A pusher (sender) connects at once; a puller (receiver) waits
                        // until the daemon's sender has connected.
                        if rt.block_on(out_tx.send(convert::client_rdma(&mine))).is_err() {
                            ClientEvent::InboundFailed("control stream closed".into())
                        } else {
                            ClientEvent::Prepared(Ok(()))
                        }
                    }
                    Err(e) => {
                        let text = e.to_string();
                        dp_error = Some(e);
                        ClientEvent::Prepared(Err(text))
                    }
                }
            }
            ClientCmd::Connect(offer) => {
                let connected = match (offer, &accepted) {
                    (Offer::Rdma, Some(Accepted { rdma: Some(peer), .. })) => {
                        match pending_rdma.take() {
                            Some(p) => p.connect(peer, cancel.plane()),
                            None => Err(DataPlaneError::RdmaPeer("no local set-up")),
                        }
                    }
                    (Offer::Tcp { streams }, Some(Accepted { tcp: Some(tcp), .. })) => {
                        drop(early_rdma.take()); // its thread lets go of what it set up
                        dp_opts.streams = streams;
                        dataplane::tcp_connect(tcp, role, &dp_opts, cancel.plane())
                    }
                    _ => Err(DataPlaneError::RdmaPeer("an offer without its endpoint")),
                };
                match connected {
                    Ok(p) => {
                        tracing::debug!("data plane connected");
                        plane = Some(p);
                        ClientEvent::DataPlane(Ok(()))
                    }
                    Err(e) => {
                        let text = e.to_string();
                        dp_error = Some(e);
                        ClientEvent::DataPlane(Err(text))
                    }
                }
            }
            ClientCmd::StartLocal => break,
            ClientCmd::StopLocal | ClientCmd::CloseOutbound | ClientCmd::Finish(_) => continue,
        };
        cmds.extend(driver.handle(ev));
        if cancel.is_cancelled() {
            cmds.extend(driver.handle(ClientEvent::Cancel));
        }
    }
    if let Some(outcome) = driver.outcome() {
        drop(early_rdma);
        return Err(match outcome {
            ClientOutcome::Done(_) | ClientOutcome::Local => {
                ClientError::Lost("the session ended before it started".into())
            }
            other => failure(other, remote, opts, connect_error, dp_error, None),
        });
    }
    let (Some(plane), Some(accepted), Some(inbound)) = (plane, accepted, inbound) else {
        return Err(ClientError::Lost("the session started without a data plane".into()));
    };
    tracing::info!(transport = %accepted.transport, reason = %accepted.reason, "daemon accepted the session");
    let (transport_name, streams) = plane.describe();

    // ---- the running phase: relays carry the halves' messages; the machine hears what ends it.
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
    let driver = &driver;
    let stop = driver.stop.clone();

    let local_result = std::thread::scope(|s| {
        // The caller's cancel (an interrupt) reaches the machine as soon as it is set; the
        // thread sleeps until then or until the session is over.
        s.spawn(|| {
            let outer = handle.block_on(async {
                tokio::select! {
                    _ = cancel.cancelled() => true,
                    _ = driver.stop.cancelled() => false,
                }
            });
            if outer {
                driver.handle(ClientEvent::Cancel);
            }
        });
        // Daemon → engine / reporter, until the summary (the daemon's last message), a lost
        // stream, or a stop.
        let inbound_thread = s.spawn(|| {
            let mut inbound = inbound;
            loop {
                use pb::server_frame::Msg;
                let frame = match next_or_cancel(&handle, &mut inbound, &driver.stop, None) {
                    Err(_) => break,
                    Ok(Ok(Some(f))) => f,
                    Ok(Ok(None)) => {
                        driver.handle(ClientEvent::InboundEnded);
                        break;
                    }
                    Ok(Err(status)) => {
                        let why = format!("{}: {}", status.code(), status.message());
                        driver.handle(ClientEvent::InboundFailed(why));
                        break;
                    }
                };
                let delivered = match frame.msg {
                    Some(Msg::Source(m)) if !push => match convert::source_msg_from_pb(&m) {
                        Ok(m) => to_engine_src.send(m).is_ok(),
                        Err(e) => {
                            driver.handle(ClientEvent::Violation(e.to_string()));
                            break;
                        }
                    },
                    Some(Msg::Target(m)) if push => match convert::target_msg_from_pb(&m) {
                        Ok(m) => {
                            tracing::trace!(kind = m.kind(), "control: daemon → engine");
                            to_engine_tgt.send(m).is_ok()
                        }
                        Err(e) => {
                            driver.handle(ClientEvent::Violation(e.to_string()));
                            break;
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
                        driver.handle(ClientEvent::Summary(Box::new(r)));
                        break;
                    }
                    Some(Msg::Error(e)) => {
                        driver.handle(ClientEvent::Violation(convert::error_from_pb(&e).message));
                        break;
                    }
                    _ => {
                        let why = "unexpected message from the daemon".to_string();
                        driver.handle(ClientEvent::Violation(why));
                        break;
                    }
                };
                if !delivered {
                    // The local half is gone: nothing more to carry.
                    driver.stop.cancel();
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
        // A pull learns from the Accept whether the daemon sends one file or a directory.
        let single_pull = !push && accepted.single_file;
        let local = match local {
            Local::TargetOnAccept(open) => {
                open(single_pull).map(|(root, single)| (root, single, None))
            }
            Local::Target(root) => {
                Ok((root, single_pull.then_some(SingleFile { name: None }), None))
            }
            Local::Source(root) => Ok((root, None, Some(None))),
            Local::SourceFile(root, name) => Ok((root, None, Some(Some(name)))),
        };
        let result = match local {
            Err(why) => {
                drop((engine_out_src, engine_out_tgt));
                Err(ClientError::OpenTarget(why))
            }
            Ok((root, _, Some(single))) => {
                drop(engine_out_tgt);
                let o = SourceOptions {
                    single,
                    root,
                    params: opts.params.clone(),
                    walk_threads: opts.threads,
                    read_threads: opts.threads,
                    confine: false,
                    privileged_xattrs: true,
                    limits: Limits { idle_timeout: opts.idle_timeout, ..Limits::none() },
                };
                plane.sender().map_err(ClientError::DataPlane).and_then(|tx| {
                    run_source(&o, engine_out_src, engine_tgt, tx, progress, stop.plane())
                        .map(|r| (Some(r), None))
                        .map_err(|e| {
                            let chain = source_chain(&e);
                            ClientError::Source(e, chain)
                        })
                })
            }
            Ok((root, single, None)) => {
                drop(engine_out_src);
                // Confined like a daemon's: the daemon is as untrusted as a client.
                let mut o = TargetOptions::new(root, opts.params.clone(), opts.threads);
                o.limits.idle_timeout = opts.idle_timeout;
                o.single = single;
                plane.receiver().map_err(ClientError::DataPlane).and_then(|rx| {
                    run_target(&o, engine_src, engine_out_tgt, rx, reporter, progress, stop.plane())
                        .map(|r| (None, Some(r)))
                        .map_err(|e| {
                            let chain = source_chain(&e);
                            ClientError::Target(e, chain)
                        })
                })
            }
        };
        let _ = fwd.join();
        for cmd in driver.handle(ClientEvent::LocalDone(result.is_ok())) {
            if let ClientCmd::CloseOutbound = cmd {
                // Our half is done: close our side of the control stream.
                drop(out_tx);
                break;
            }
        }
        driver.wait_done();
        driver.stop.cancel();
        let _ = inbound_thread.join();
        result
    });

    tracing::debug!("session over");
    let closing = Instant::now();
    drop(plane);
    tracing::debug!(ms = closing.elapsed().as_millis() as u64, "data plane closed");
    let outcome = driver.outcome().unwrap_or(ClientOutcome::Lost("the session did not end".into()));
    match (outcome, local_result) {
        (ClientOutcome::Done(remote), Ok((local_source, local_target))) => Ok(ClientReport {
            transport: transport_name.into(),
            streams,
            reason: accepted.reason,
            server_version: accepted.server_version,
            local_source,
            local_target,
            remote: *remote,
        }),
        (ClientOutcome::Local | ClientOutcome::Done(_), Err(e)) => Err(e),
        (other, local) => Err(failure(other, remote, opts, connect_error, dp_error, local.err())),
    }
}

/// The error an outcome names, with the values the shell kept for it.
fn failure(
    outcome: ClientOutcome,
    remote: &RemoteSpec,
    opts: &ClientOptions,
    connect_error: Option<ClientError>,
    dp_error: Option<DataPlaneError>,
    local: Option<ClientError>,
) -> ClientError {
    match outcome {
        ClientOutcome::Cancelled => ClientError::Cancelled,
        ClientOutcome::Timeout => ClientError::Timeout {
            endpoint: remote.to_string(),
            secs: opts.connect_timeout.as_secs(),
        },
        ClientOutcome::Unreachable => connect_error.unwrap_or_else(|| ClientError::Connect {
            endpoint: remote.to_string(),
            detail: "unreachable".into(),
        }),
        ClientOutcome::RdmaUnavailable(why) => match dp_error {
            Some(e) => ClientError::RdmaUnavailable(e),
            None => ClientError::Lost(why),
        },
        ClientOutcome::Refused(e) => ClientError::Refused(e),
        ClientOutcome::Remote(e) => ClientError::Remote(e),
        ClientOutcome::Lost(m) => ClientError::Lost(m),
        ClientOutcome::DataPlane => match dp_error {
            Some(e) => ClientError::DataPlane(e),
            None => ClientError::Lost("the data plane failed".into()),
        },
        ClientOutcome::Local | ClientOutcome::Done(_) => {
            local.unwrap_or_else(|| ClientError::Lost("the local half failed".into()))
        }
    }
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
            single_file: false,
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
