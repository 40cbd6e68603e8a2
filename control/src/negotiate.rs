//! The session's control protocol as two sans-IO state machines (quinn-proto is the model):
//! [`DaemonSession`] for the daemon's side and [`ClientSession`] for the client's.
//!
//! This module owns every decision of a session's negotiation and of its end: what is refused
//! and with which [`ErrorCode`], how the client's parameters are clamped (streams lowered to fit
//! the session's memory), which transport is used and why, which deadline applies in which
//! phase (Open, Accept, the RDMA hand-shake, the summary), which failure wins when several
//! happen, and what outcome the session ends with. It must not touch I/O: no sockets, no gRPC
//! types, no threads, no clock (`now` is passed in), no file system. The shells
//! (`client.rs`, `server.rs`) do what the commands say and report what happened as events.
//!
//! Both machines work the same way: [`DaemonSession::handle`] / [`ClientSession::handle`] take
//! an event and the time, [`poll`](DaemonSession::poll) yields the commands that follow, and
//! [`deadline`](DaemonSession::deadline) says when to deliver [`DaemonEvent::Timer`] if nothing
//! else happens first. A command that asks for something (open the root, read a frame, set up
//! the data plane) is answered by the one event named in its documentation.
//!
//! The messages relayed while the halves run (SourceMsg / TargetMsg) are not looked at here:
//! the shells carry them; only their failures (a message that does not decode, a stream that
//! ends or breaks) are events.

use std::time::{Duration, Instant};

use blitx_core::session::SessionParams;

use crate::convert::{
    Direction, ErrorCode, OpenRequest, RdmaDeviceInfo, RemoteError, RemoteSummary, TransportChoice,
};
use crate::dataplane::DataPlaneOptions;

/// How long the client waits for the daemon's summary once its own half finished.
pub const SUMMARY_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a push waits for another transfer's target lock (`wait_lock`).
pub const LOCK_WAIT_MAX: Duration = Duration::from_secs(3600);

fn error(code: ErrorCode, message: impl Into<String>) -> RemoteError {
    RemoteError { code, message: message.into() }
}

/// The data plane a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Rdma,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
        }
    }
}

/// Decides the transport: RDMA, TCP, or `Err` when RDMA was required and is impossible. The
/// string is the reason, for logs and the Accept.
pub fn choose_transport(
    requested: TransportChoice,
    client: Option<&RdmaDeviceInfo>,
    server: &Result<RdmaDeviceInfo, String>,
) -> Result<(Transport, String), String> {
    match requested {
        TransportChoice::Tcp => Ok((Transport::Tcp, "tcp requested".into())),
        TransportChoice::Rdma => match (client, server) {
            (None, _) => Err("RDMA was requested but the client has no usable RDMA device".into()),
            (_, Err(why)) => {
                Err(format!("RDMA was requested but the daemon has no usable RDMA device: {why}"))
            }
            (Some(c), Ok(s)) => Ok((
                Transport::Rdma,
                format!("rdma requested: client {} ↔ daemon {}", c.name, s.name),
            )),
        },
        TransportChoice::Auto => match (client, server) {
            (None, _) => {
                Ok((Transport::Tcp, "auto: the client has no usable RDMA device; using TCP".into()))
            }
            (_, Err(why)) => Ok((
                Transport::Tcp,
                format!("auto: the daemon has no usable RDMA device ({why}); using TCP"),
            )),
            (Some(c), Ok(s)) if s.shares_subnet(c) => Ok((
                Transport::Rdma,
                format!("auto: both ends have RDMA on a common subnet ({} ↔ {})", c.name, s.name),
            )),
            (Some(c), Ok(s)) => Ok((
                Transport::Tcp,
                format!(
                    "auto: RDMA devices {} and {} are not on a common IPv4 subnet; using TCP",
                    c.name, s.name
                ),
            )),
        },
    }
}

// ====================================================================== the daemon's side

/// What the daemon knows before a session starts.
#[derive(Debug, Clone)]
pub struct DaemonFacts {
    pub read_only: bool,
    /// TCP streams when the client asks for none.
    pub default_streams: u32,
    /// The most TCP streams a client may ask for.
    pub streams_max: u32,
    pub stall_timeout: Duration,
    /// How long a new stream may take to send its Open.
    pub open_timeout: Duration,
    /// How long a listener waits for the client's data connections.
    pub data_connect_timeout: Duration,
    /// Memory for one session (--session-memory): the data plane's buffers must fit in it.
    pub session_memory_bytes: u64,
    /// The daemon's concurrent-session limit, for the refusal's text.
    pub max_sessions: usize,
    pub threads: usize,
    pub rdma_device: Option<String>,
    /// This machine's RDMA device (or why there is none).
    pub rdma: Result<RdmaDeviceInfo, String>,
    /// Bytes of buffers one side of a data plane with these options allocates, RDMA or TCP
    /// ([`crate::dataplane::pool_bytes`]; a pure function of the options).
    pub pool_bytes: fn(&DataPlaneOptions, bool) -> u64,
}

/// Why the first message of a stream is not a usable Open. Decoding is `convert`'s job; which
/// error code each defect gets is decided here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenDefect {
    /// The first message is something else.
    NotOpen,
    /// The client speaks another protocol version.
    Version { client_version: String, version: u32 },
    /// The path does not parse (absolute, `..`, NUL).
    BadPath(String),
    /// Anything else malformed.
    Malformed(String),
}

/// Why the session's directory could not be opened below the export root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFailure {
    pub not_found: bool,
    pub message: String,
}

/// The answer to [`DaemonCmd::Lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockResult {
    Acquired,
    /// Another transfer writes the same target (or one above or below it).
    Busy,
    Cancelled,
    Failed(String),
}

/// A gRPC-level refusal of a stream (no Error frame: the stream never became a session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No Open within the open timeout.
    NoOpen { secs: u64 },
    /// The stream ended before its Open.
    EndedBeforeOpen,
    /// The daemon already runs its maximum of sessions.
    Busy { max_sessions: usize },
}

/// What was negotiated: the parameters both halves and the data plane run with.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub direction: Direction,
    pub transport: Transport,
    pub reason: String,
    /// The data plane's options: streams lowered to fit the session's memory, the stall timeout
    /// the client asked for or the daemon's.
    pub data_plane: DataPlaneOptions,
    pub params: SessionParams,
    /// A memory session (--mem): the path is never touched.
    pub mem: bool,
    /// Send every per-path event, not only failures.
    pub events: bool,
}

#[derive(Debug, Clone)]
pub enum DaemonEvent {
    /// The stream's first message, decoded (or why it is not a usable Open).
    First(Result<OpenRequest, OpenDefect>),
    /// The stream ended before its first message.
    EndedBeforeOpen,
    /// Answers [`DaemonCmd::TakeSlot`].
    Slot(bool),
    /// Answers [`DaemonCmd::OpenRoot`].
    Root(Result<(), RootFailure>),
    /// Answers [`DaemonCmd::UseStandIn`].
    StandIn(Result<(), String>),
    /// Answers [`DaemonCmd::Lock`].
    Lock(LockResult),
    /// Answers [`DaemonCmd::Charge`] (the error is the budget's refusal, in words).
    Charged(Result<(), String>),
    /// Answers [`DaemonCmd::PrepareRdma`] and [`DaemonCmd::Listen`].
    Prepared(Result<(), String>),
    /// Answers [`DaemonCmd::ReadPeerRdma`]: the client's RDMA endpoint arrived and decoded
    /// (`Err`: it did not decode, or another message came).
    PeerRdma(Result<(), String>),
    /// Answers [`DaemonCmd::Connect`]: the data plane is up, or why not.
    DataPlane(Result<(), String>),
    /// A message to the client could not be sent: the client went away.
    PeerGone,
    /// The client closed its side of the stream.
    InboundEnded,
    /// The client's stream broke.
    InboundFailed(String),
    /// The client sent a message that does not decode or does not belong here.
    Violation(String),
    /// The local half finished: its success, or the error it failed with.
    LocalDone(Result<(), RemoteError>),
    /// Daemon shutdown.
    Cancel,
    /// [`DaemonSession::deadline`] passed.
    Timer,
}

#[derive(Debug, Clone)]
pub enum DaemonCmd {
    /// Take one of the daemon's session slots; answer [`DaemonEvent::Slot`].
    TakeSlot,
    /// Refuse the stream with a gRPC status; the session is over.
    Reject(Rejection),
    /// Open the session's directory below the export root (`create`: push targets are created
    /// when missing); answer [`DaemonEvent::Root`].
    OpenRoot { create: bool },
    /// Use an empty stand-in directory instead (memory sessions; dry runs into a missing
    /// target); answer [`DaemonEvent::StandIn`].
    UseStandIn,
    /// Take the target lock, waiting at most `wait` for another writer (None: do not wait);
    /// answer [`DaemonEvent::Lock`].
    Lock { wait: Option<Duration> },
    /// Charge the session's memory; answer [`DaemonEvent::Charged`].
    Charge { what: &'static str, bytes: u64 },
    /// Give back a charge that will not be used.
    Release { bytes: u64 },
    /// Create this side's RDMA QPs and memory; answer [`DaemonEvent::Prepared`].
    PrepareRdma(DataPlaneOptions),
    /// Open the TCP data listener; answer [`DaemonEvent::Prepared`].
    Listen(DataPlaneOptions),
    /// Send Accept with the prepared plane's endpoint (or [`DaemonEvent::PeerGone`]).
    SendAccept { transport: Transport, reason: String },
    /// Read the client's RDMA endpoint; answer [`DaemonEvent::PeerRdma`] (or
    /// [`DaemonEvent::Timer`] at the deadline, [`DaemonEvent::Cancel`]).
    ReadPeerRdma,
    /// Connect the data plane (RDMA: to the client's QPs; TCP: accept the client's streams);
    /// answer [`DaemonEvent::DataPlane`].
    Connect,
    /// Pull over RDMA: tell the client our sender is connected.
    SendRdmaReady,
    /// Start the local half and the relays with the negotiated parameters; its end is
    /// [`DaemonEvent::LocalDone`].
    StartLocal(Box<Negotiated>),
    /// Stop the local half and the relays (they end with an error, or at once if done).
    StopLocal,
    /// Refuse the session with an Error frame; the session is over.
    Refuse(RemoteError),
    /// Send the local half's summary; the session is over.
    SendSummary,
    /// Send a summary saying the daemon's half failed; the session is over.
    Fail(RemoteError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DaemonPhase {
    AwaitOpen,
    AwaitSlot,
    OpeningRoot,
    StandIn,
    Locking,
    ChargingRdma,
    PreparingRdma,
    ChargingTcp,
    Listening,
    /// Accept sent (RDMA): waiting for the client's endpoint.
    AwaitPeerRdma,
    Connecting,
    Running,
    Done,
}

/// The daemon's side of one session.
#[derive(Debug)]
pub struct DaemonSession {
    facts: DaemonFacts,
    phase: DaemonPhase,
    deadline: Option<Instant>,
    open: Option<OpenRequest>,
    negotiated: Option<Negotiated>,
    /// Bytes charged for RDMA that are released if RDMA set-up fails (`auto`).
    rdma_bytes: u64,
    /// The first message of the client's that could not be accepted: it explains the local
    /// half's "the other half went away".
    violation: Option<RemoteError>,
    cancelled: bool,
    out: std::collections::VecDeque<DaemonCmd>,
}

impl DaemonSession {
    /// A session whose stream opened at `now`: the Open is due by `now + open_timeout`.
    pub fn new(facts: DaemonFacts, now: Instant) -> Self {
        let deadline = Some(now + facts.open_timeout);
        DaemonSession {
            facts,
            phase: DaemonPhase::AwaitOpen,
            deadline,
            open: None,
            negotiated: None,
            rdma_bytes: 0,
            violation: None,
            cancelled: false,
            out: Default::default(),
        }
    }

    /// The next command, in order.
    pub fn poll(&mut self) -> Option<DaemonCmd> {
        self.out.pop_front()
    }

    /// When to deliver [`DaemonEvent::Timer`] (None: no timer runs).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn is_done(&self) -> bool {
        self.phase == DaemonPhase::Done
    }

    /// The validated Open, once it arrived.
    pub fn open(&self) -> Option<&OpenRequest> {
        self.open.as_ref()
    }

    /// The negotiated parameters, once decided.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    fn finish(&mut self, cmd: DaemonCmd) {
        self.phase = DaemonPhase::Done;
        self.deadline = None;
        self.out.push_back(cmd);
    }

    fn refuse(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.finish(DaemonCmd::Refuse(error(code, message)));
    }

    fn push(&self) -> bool {
        self.open.as_ref().is_some_and(|o| o.direction == Direction::Push)
    }

    pub fn handle(&mut self, now: Instant, ev: DaemonEvent) {
        use DaemonEvent as E;
        use DaemonPhase as P;
        if self.phase == P::Done {
            return;
        }
        match (self.phase, ev) {
            (_, E::Timer) if self.deadline.is_none_or(|d| now < d) => {}
            (P::AwaitOpen, E::Timer) => {
                let secs = self.facts.open_timeout.as_secs();
                self.finish(DaemonCmd::Reject(Rejection::NoOpen { secs }));
            }
            (P::AwaitOpen, E::EndedBeforeOpen | E::InboundEnded | E::InboundFailed(_)) => {
                self.finish(DaemonCmd::Reject(Rejection::EndedBeforeOpen));
            }
            (P::AwaitOpen, E::First(first)) => {
                self.deadline = None;
                // Only a stream that said what it wants takes a session slot: streams that
                // never send their Open cannot lock real clients out.
                match first {
                    Ok(open) => self.open = Some(open),
                    Err(defect) => self.violation = Some(self.defect(defect)),
                }
                self.phase = P::AwaitSlot;
                self.out.push_back(DaemonCmd::TakeSlot);
            }
            (P::AwaitSlot, E::Slot(false)) => {
                let max_sessions = self.facts.max_sessions;
                self.finish(DaemonCmd::Reject(Rejection::Busy { max_sessions }));
            }
            (P::AwaitSlot, E::Slot(true)) => self.check_open(),
            (P::OpeningRoot, E::Root(Ok(()))) | (P::StandIn, E::StandIn(Ok(()))) => {
                self.lock_or_skip()
            }
            (P::OpeningRoot, E::Root(Err(f))) => {
                let open = self.open.as_ref();
                let dry_push = self.push() && open.is_some_and(|o| o.params.dry_run);
                if dry_push && f.not_found {
                    // A dry run into a target that does not exist yet: compare with nothing.
                    self.phase = P::StandIn;
                    self.out.push_back(DaemonCmd::UseStandIn);
                } else {
                    self.refuse(ErrorCode::BadPath, f.message);
                }
            }
            (P::StandIn, E::StandIn(Err(e))) => {
                self.refuse(ErrorCode::Internal, format!("cannot create a dry-run stand-in: {e}"))
            }
            (P::Locking, E::Lock(r)) => match r {
                LockResult::Acquired => self.choose(),
                LockResult::Busy => {
                    let path = self.open.as_ref().map(|o| o.path.to_string()).unwrap_or_default();
                    self.refuse(
                        ErrorCode::TargetLocked,
                        format!(
                            "{path} is being written by another transfer (or one above or below it); try again later or use --wait-lock"
                        ),
                    )
                }
                LockResult::Cancelled => {
                    self.finish(DaemonCmd::Fail(error(ErrorCode::Internal, "cancelled")))
                }
                LockResult::Failed(e) => self.refuse(ErrorCode::Internal, e),
            },
            (P::ChargingRdma, E::Charged(Ok(()))) => {
                self.phase = P::PreparingRdma;
                let dp = self.data_plane().clone();
                self.out.push_back(DaemonCmd::PrepareRdma(dp));
            }
            (P::ChargingRdma, E::Charged(Err(e))) => {
                if self.required_rdma() {
                    self.refuse(ErrorCode::ResourceExhausted, e);
                } else {
                    self.fall_back_to_tcp(format!("auto: {e}; using TCP"));
                }
            }
            (P::PreparingRdma, E::Prepared(Ok(()))) => {
                self.accept(Transport::Rdma);
                self.phase = P::AwaitPeerRdma;
                // The client answers with its QPs (and, for a pull, its ring), in time.
                let limit = self.facts.open_timeout.max(self.facts.data_connect_timeout);
                self.deadline = Some(now + limit);
                self.out.push_back(DaemonCmd::ReadPeerRdma);
            }
            (P::PreparingRdma, E::Prepared(Err(e))) => {
                if self.required_rdma() {
                    self.refuse(
                        ErrorCode::TransportUnavailable,
                        format!("cannot set up RDMA here: {e}"),
                    );
                } else {
                    self.out.push_back(DaemonCmd::Release { bytes: self.rdma_bytes });
                    self.fall_back_to_tcp(format!(
                        "auto: RDMA set-up failed on the daemon ({e}); using TCP"
                    ));
                }
            }
            (P::ChargingTcp, E::Charged(Ok(()))) => {
                self.phase = P::Listening;
                let dp = self.data_plane().clone();
                self.out.push_back(DaemonCmd::Listen(dp));
            }
            (P::ChargingTcp, E::Charged(Err(e))) => self.refuse(ErrorCode::ResourceExhausted, e),
            (P::Listening, E::Prepared(Ok(()))) => {
                self.accept(Transport::Tcp);
                // The listener's own timeout bounds the wait for the client's streams.
                self.phase = P::Connecting;
                self.out.push_back(DaemonCmd::Connect);
            }
            (P::Listening, E::Prepared(Err(e))) => {
                self.refuse(ErrorCode::Internal, format!("cannot open a data listener: {e}"))
            }
            (P::AwaitPeerRdma, E::PeerRdma(Ok(()))) => {
                self.deadline = None;
                self.phase = P::Connecting;
                self.out.push_back(DaemonCmd::Connect);
            }
            (P::AwaitPeerRdma, E::PeerRdma(Err(e))) => {
                self.finish(DaemonCmd::Fail(error(ErrorCode::BadRequest, e)))
            }
            (P::AwaitPeerRdma, E::Timer | E::InboundEnded | E::InboundFailed(_)) => {
                self.finish(DaemonCmd::Fail(error(
                    ErrorCode::BadRequest,
                    "the client did not complete the RDMA set-up",
                )))
            }
            (P::Connecting, E::DataPlane(Ok(()))) => {
                // Invariant: `choose` set `negotiated` before any phase that charges, prepares
                // or connects a data plane.
                let n = self.negotiated.clone().expect("negotiated before connecting");
                if n.transport == Transport::Rdma && n.direction == Direction::Pull {
                    // Our sender is connected: the client's receiver may connect now.
                    self.out.push_back(DaemonCmd::SendRdmaReady);
                }
                self.phase = P::Running;
                self.out.push_back(DaemonCmd::StartLocal(Box::new(n)));
                if self.cancelled {
                    self.out.push_back(DaemonCmd::StopLocal);
                }
            }
            (P::Connecting, E::DataPlane(Err(e))) => {
                self.finish(DaemonCmd::Fail(error(ErrorCode::Internal, e)))
            }
            (P::Running, E::InboundEnded) => {}
            (P::Running, E::InboundFailed(_)) => self.out.push_back(DaemonCmd::StopLocal),
            (P::Running, E::Violation(message)) => {
                self.violation.get_or_insert(error(ErrorCode::ProtocolViolation, message));
                self.out.push_back(DaemonCmd::StopLocal);
            }
            (P::Running, E::PeerGone) => self.out.push_back(DaemonCmd::StopLocal),
            (P::Running, E::Cancel) => {
                self.cancelled = true;
                self.out.push_back(DaemonCmd::StopLocal);
            }
            (P::Running, E::LocalDone(Ok(()))) => {
                self.finish(DaemonCmd::SendSummary);
                // Stop waiting for the client's half-close.
                self.out.push_back(DaemonCmd::StopLocal);
            }
            (P::Running, E::LocalDone(Err(e))) => {
                // A refused client message explains the engine's "the other half went away".
                let why = self.violation.take().unwrap_or(e);
                self.out.push_back(DaemonCmd::StopLocal);
                self.finish(DaemonCmd::Fail(why));
            }
            // Shutdown before the halves run: the set-up in progress ends on its own (the lock
            // wait and the data listener watch the same cancel); a session waiting on its peer
            // ends now.
            (P::AwaitPeerRdma, E::Cancel) => {
                self.finish(DaemonCmd::Fail(error(ErrorCode::Internal, "cancelled")))
            }
            (_, E::Cancel) => self.cancelled = true,
            (_, E::PeerGone) => {
                self.finish(DaemonCmd::Fail(error(ErrorCode::Internal, "client went away")))
            }
            (phase, ev) => {
                // An event the phase does not expect (a shell bug, or a client message out of
                // turn): end the session rather than guess.
                self.finish(DaemonCmd::Fail(error(
                    ErrorCode::Internal,
                    format!("unexpected {ev:?} while {phase:?}"),
                )))
            }
        }
    }

    fn defect(&self, defect: OpenDefect) -> RemoteError {
        match defect {
            OpenDefect::NotOpen => error(ErrorCode::BadRequest, "the first message must be Open"),
            OpenDefect::Version { client_version, version } => error(
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version mismatch: the client (blit {client_version}) speaks version {version}, this daemon (blit {}) speaks version {}; use the same blit release on both ends",
                    crate::BUILD_VERSION,
                    crate::PROTOCOL_VERSION
                ),
            ),
            // A path the client may not name is BAD_PATH; anything else malformed, BAD_REQUEST.
            OpenDefect::BadPath(e) => {
                error(ErrorCode::BadPath, format!("invalid path from the client: {e}"))
            }
            OpenDefect::Malformed(e) => error(ErrorCode::BadRequest, e),
        }
    }

    /// The Open's own checks, then the session's directory.
    fn check_open(&mut self) {
        if let Some(e) = self.violation.take() {
            return self.finish(DaemonCmd::Refuse(e));
        }
        let Some(open) = self.open.as_ref() else {
            return self.refuse(ErrorCode::BadRequest, "the first message must be Open");
        };
        if open.tcp_streams > self.facts.streams_max {
            let m = format!(
                "{} TCP streams requested; at most {} are allowed",
                open.tcp_streams, self.facts.streams_max
            );
            return self.refuse(ErrorCode::BadRequest, m);
        }
        let push = open.direction == Direction::Push;
        let mem = open.params.mem_bytes.is_some();
        if push && self.facts.read_only && !open.params.dry_run && !mem {
            return self
                .refuse(ErrorCode::ReadOnly, "this daemon exports its root read-only (pull only)");
        }
        // A pull that removes what it sent changes the export: a write like any other.
        if !push && self.facts.read_only && open.params.remove_source_files {
            return self.refuse(
                ErrorCode::ReadOnly,
                "this daemon exports its root read-only: --remove-source-files would remove its files",
            );
        }
        if mem {
            // A memory session generates or discards its data: its path is never touched.
            self.phase = DaemonPhase::StandIn;
            self.out.push_back(DaemonCmd::UseStandIn);
        } else {
            // Push: the target directory (created if missing); pull: the source directory.
            self.phase = DaemonPhase::OpeningRoot;
            let create = push && !open.params.dry_run;
            self.out.push_back(DaemonCmd::OpenRoot { create });
        }
    }

    /// One writer per target (and per subtree): a second push waits or is refused.
    fn lock_or_skip(&mut self) {
        let Some(open) = self.open.as_ref() else { return };
        let writes = open.direction == Direction::Push
            && !open.params.dry_run
            && open.params.mem_bytes.is_none();
        if writes {
            self.phase = DaemonPhase::Locking;
            let wait = open.wait_lock.then_some(LOCK_WAIT_MAX);
            self.out.push_back(DaemonCmd::Lock { wait });
        } else {
            self.choose();
        }
    }

    fn required_rdma(&self) -> bool {
        self.open.as_ref().is_some_and(|o| o.transport == TransportChoice::Rdma)
    }

    fn data_plane(&self) -> &DataPlaneOptions {
        // Invariant: called only from the phases `choose` leads to, after it set `negotiated`.
        &self.negotiated.as_ref().expect("negotiated before the data plane").data_plane
    }

    /// The parameters and the transport.
    fn choose(&mut self) {
        let Some(open) = self.open.as_ref() else { return };
        let f = &self.facts;
        let mut streams = if open.tcp_streams == 0 { f.default_streams } else { open.tcp_streams };
        let stall_timeout = if open.stall_timeout_secs == 0 {
            f.stall_timeout
        } else {
            Duration::from_secs(u64::from(open.stall_timeout_secs))
        };
        let mut dp = DataPlaneOptions {
            streams,
            chunk_bytes: open.params.chunk_bytes,
            socket_buffer_bytes: open.tcp_buffer_bytes,
            stall_timeout,
            threads: f.threads,
            qps: open.rdma_qps.max(1),
            rdma_device: f.rdma_device.clone(),
            rdma_frame_checksums: open.rdma_frame_checksums,
            rdma_event_cq: open.rdma_event_cq,
            tcp_zero_copy: open.tcp_zero_copy,
        };
        // The client picks streams × chunk size; the operator's budget bounds the product.
        while streams > 1 && (f.pool_bytes)(&dp, false) > f.session_memory_bytes {
            streams -= 1;
            dp.streams = streams;
        }
        let (transport, reason) =
            match choose_transport(open.transport, open.client_rdma.as_ref(), &f.rdma) {
                Ok(c) => c,
                Err(why) => return self.refuse(ErrorCode::TransportUnavailable, why),
            };
        let rdma_bytes = (f.pool_bytes)(&dp, true);
        self.negotiated = Some(Negotiated {
            direction: open.direction,
            transport,
            reason,
            data_plane: dp,
            params: open.params.clone(),
            mem: open.params.mem_bytes.is_some(),
            events: open.events,
        });
        // The chosen plane's buffers are charged before it is built: RDMA's ring, or TCP's
        // pool when RDMA does not fit, is not possible here, or fails to set up (`auto`).
        match transport {
            Transport::Rdma => {
                self.rdma_bytes = rdma_bytes;
                self.phase = DaemonPhase::ChargingRdma;
                self.out.push_back(DaemonCmd::Charge { what: "RDMA buffers", bytes: rdma_bytes });
            }
            Transport::Tcp => self.charge_tcp(),
        }
    }

    fn fall_back_to_tcp(&mut self, reason: String) {
        if let Some(n) = self.negotiated.as_mut() {
            n.transport = Transport::Tcp;
            n.reason = reason;
        }
        self.charge_tcp();
    }

    fn charge_tcp(&mut self) {
        let bytes = (self.facts.pool_bytes)(self.data_plane(), false);
        self.phase = DaemonPhase::ChargingTcp;
        self.out.push_back(DaemonCmd::Charge { what: "TCP buffers", bytes });
    }

    fn accept(&mut self, transport: Transport) {
        let reason = self.negotiated.as_ref().map(|n| n.reason.clone()).unwrap_or_default();
        self.out.push_back(DaemonCmd::SendAccept { transport, reason });
    }
}

// ====================================================================== the client's side

/// What the client asked for, as far as the negotiation is concerned.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    pub direction: Direction,
    pub transport: TransportChoice,
    /// Connect, handshake, Open and Accept all fit in this.
    pub connect_timeout: Duration,
    /// Push: the daemon accepts only once it holds the target lock, however long that takes.
    pub wait_lock: bool,
    pub summary_timeout: Duration,
}

/// The data plane the daemon's Accept offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Tcp { streams: u32 },
    Rdma,
    None,
}

/// How a client session ended. The errors that carry values the machine does not hold (the
/// local half's error, the data plane's) are named here and kept by the shell.
#[derive(Debug, Clone)]
pub enum ClientOutcome {
    Done(Box<RemoteSummary>),
    /// The caller cancelled (an interrupt).
    Cancelled,
    /// No Accept within the connect timeout.
    Timeout,
    /// The daemon could not be reached (the shell holds the detail).
    Unreachable,
    /// RDMA was required and this machine has none.
    RdmaUnavailable(String),
    Refused(RemoteError),
    /// The daemon's half failed.
    Remote(RemoteError),
    /// The control stream broke, or the daemon broke the protocol.
    Lost(String),
    /// The data plane could not be set up (the shell holds the error).
    DataPlane,
    /// The local half failed (the shell holds the error).
    Local,
}

// The summary arrives once per session, moved straight into the outcome: its size costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// Answers [`ClientCmd::ProbeRdma`]: the local device, or why there is none.
    RdmaProbed(Result<(), String>),
    /// Answers [`ClientCmd::Open`]: the session stream is open.
    Opened,
    /// Answers [`ClientCmd::Open`]: the control connection failed.
    Unreachable,
    /// Answers [`ClientCmd::Open`]: the daemon refused the stream with a gRPC status
    /// (`exhausted`: RESOURCE_EXHAUSTED, its session limit).
    Rejected { exhausted: bool, message: String },
    /// The daemon accepted (its Accept decoded).
    Accepted(Offer),
    /// The daemon refused with an Error frame.
    Refused(RemoteError),
    /// Pull over RDMA: the daemon's sender is connected.
    RdmaReady,
    /// Answers [`ClientCmd::PrepareRdma`].
    Prepared(Result<(), String>),
    /// Answers [`ClientCmd::Connect`]: the data plane is up (or failed).
    DataPlane(Result<(), String>),
    /// The daemon's summary (or why it does not decode); boxed, it is the largest event.
    Summary(Box<Result<RemoteSummary, String>>),
    /// The daemon closed its side of the stream.
    InboundEnded,
    /// The control stream broke (or a send found it closed).
    InboundFailed(String),
    /// The daemon sent something that does not decode or does not belong here.
    Violation(String),
    /// The local half finished (`true`: successfully).
    LocalDone(bool),
    /// The caller's cancel (an interrupt).
    Cancel,
    /// [`ClientSession::deadline`] passed.
    Timer,
}

#[derive(Debug, Clone)]
pub enum ClientCmd {
    /// Set up this side's RDMA QPs and memory in the background while the daemon is asked.
    PrepareRdmaEarly,
    /// Look for the local RDMA device; answer [`ClientEvent::RdmaProbed`].
    ProbeRdma,
    /// Connect and send Open (`rdma`: with the local device); answer [`ClientEvent::Opened`],
    /// [`ClientEvent::Unreachable`] or [`ClientEvent::Rejected`].
    Open { rdma: bool },
    /// Read the daemon's next frame and report it (bounded by the deadline and the cancel).
    ReadFrame,
    /// Join (or redo) the RDMA set-up and send this side's endpoint; answer
    /// [`ClientEvent::Prepared`].
    PrepareRdma,
    /// Connect the data plane (TCP: with the daemon's streams); answer
    /// [`ClientEvent::DataPlane`].
    Connect(Offer),
    /// Start the local half and the relays.
    StartLocal,
    /// Stop the local half and the relays.
    StopLocal,
    /// Our half is done: close our side of the control stream.
    CloseOutbound,
    /// The session is over.
    Finish(ClientOutcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPhase {
    Probing,
    Opening,
    AwaitAccept,
    PreparingRdma,
    AwaitRdmaReady,
    Connecting,
    Running,
    /// Our half is done; the daemon's summary is due.
    AwaitSummary,
    Done,
}

/// The client's side of one session.
#[derive(Debug)]
pub struct ClientSession {
    facts: ClientFacts,
    phase: ClientPhase,
    deadline: Option<Instant>,
    /// Connect + Open + Accept.
    accept_by: Instant,
    offer: Option<Offer>,
    summary: Option<Result<RemoteSummary, String>>,
    lost: Option<String>,
    local_ok: Option<bool>,
    cancelled: bool,
    out: std::collections::VecDeque<ClientCmd>,
}

impl ClientSession {
    pub fn new(facts: ClientFacts, now: Instant) -> Self {
        let accept_by = now + facts.connect_timeout;
        let mut s = ClientSession {
            phase: ClientPhase::Probing,
            deadline: Some(accept_by),
            accept_by,
            offer: None,
            summary: None,
            lost: None,
            local_ok: None,
            cancelled: false,
            out: Default::default(),
            facts,
        };
        if s.facts.transport == TransportChoice::Tcp {
            s.phase = ClientPhase::Opening;
            s.out.push_back(ClientCmd::Open { rdma: false });
        } else {
            // Registering pins and clears every page, the longest part of a session's set-up:
            // it runs while the daemon is asked (unused, it is dropped).
            s.out.push_back(ClientCmd::PrepareRdmaEarly);
            s.out.push_back(ClientCmd::ProbeRdma);
        }
        s
    }

    pub fn poll(&mut self) -> Option<ClientCmd> {
        self.out.pop_front()
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn is_done(&self) -> bool {
        self.phase == ClientPhase::Done
    }

    fn finish(&mut self, outcome: ClientOutcome) {
        self.phase = ClientPhase::Done;
        self.deadline = None;
        self.out.push_back(ClientCmd::Finish(outcome));
    }

    fn stop(&mut self, lost: Option<String>) {
        if let Some(l) = lost {
            self.lost.get_or_insert(l);
        }
        self.out.push_back(ClientCmd::StopLocal);
    }

    pub fn handle(&mut self, now: Instant, ev: ClientEvent) {
        use ClientEvent as E;
        use ClientPhase as P;
        if self.phase == P::Done {
            return;
        }
        match (self.phase, ev) {
            (_, E::Timer) if self.deadline.is_none_or(|d| now < d) => {}
            // Before the halves run, an interrupt or the deadline ends the session at once.
            (P::Probing | P::Opening | P::AwaitAccept | P::AwaitRdmaReady, E::Cancel) => {
                self.cancelled = true;
                self.finish(ClientOutcome::Cancelled);
            }
            (P::PreparingRdma | P::Connecting, E::Cancel) => self.cancelled = true,
            (P::Probing | P::Opening | P::AwaitAccept, E::Timer) => {
                self.finish(ClientOutcome::Timeout)
            }
            (P::Probing, E::RdmaProbed(r)) => {
                let rdma = match r {
                    Ok(()) => true,
                    Err(why) if self.facts.transport == TransportChoice::Rdma => {
                        return self.finish(ClientOutcome::RdmaUnavailable(why));
                    }
                    Err(_) => false,
                };
                self.phase = P::Opening;
                self.out.push_back(ClientCmd::Open { rdma });
            }
            (P::Opening, E::Opened) => {
                self.phase = P::AwaitAccept;
                // A push waiting for the target lock is accepted only when it has it.
                self.deadline = (!self.facts.wait_lock).then_some(self.accept_by);
                self.out.push_back(ClientCmd::ReadFrame);
            }
            (P::Opening, E::Unreachable) => self.finish(ClientOutcome::Unreachable),
            (P::Opening, E::Rejected { exhausted: true, message }) => {
                self.finish(ClientOutcome::Refused(error(ErrorCode::ResourceExhausted, message)))
            }
            (P::Opening, E::Rejected { exhausted: false, message }) => {
                self.finish(ClientOutcome::Lost(message))
            }
            (P::AwaitAccept, E::Accepted(offer)) => {
                self.deadline = None;
                self.offer = Some(offer);
                match offer {
                    Offer::None => {
                        self.finish(ClientOutcome::Lost("the daemon offered no data plane".into()))
                    }
                    Offer::Rdma => {
                        self.phase = P::PreparingRdma;
                        self.out.push_back(ClientCmd::PrepareRdma);
                    }
                    Offer::Tcp { .. } => {
                        self.phase = P::Connecting;
                        self.out.push_back(ClientCmd::Connect(offer));
                    }
                }
            }
            (P::AwaitAccept, E::Refused(e)) => self.finish(ClientOutcome::Refused(e)),
            (P::AwaitAccept, E::InboundEnded) => self.finish(ClientOutcome::Lost(
                "the daemon closed the session before accepting".into(),
            )),
            (P::AwaitAccept, E::InboundFailed(m) | E::Violation(m)) => {
                self.finish(ClientOutcome::Lost(m))
            }
            (P::PreparingRdma, E::Prepared(Ok(()))) => {
                if self.cancelled {
                    return self.finish(ClientOutcome::Cancelled);
                }
                if self.facts.direction == Direction::Pull {
                    // A puller (receiver) connects once the daemon's sender has.
                    self.phase = P::AwaitRdmaReady;
                    self.out.push_back(ClientCmd::ReadFrame);
                } else {
                    self.phase = P::Connecting;
                    self.out.push_back(ClientCmd::Connect(Offer::Rdma));
                }
            }
            (P::PreparingRdma, E::Prepared(Err(_))) => self.finish(ClientOutcome::DataPlane),
            (P::PreparingRdma, E::InboundFailed(_)) => {
                self.finish(ClientOutcome::Lost("control stream closed during RDMA set-up".into()))
            }
            (P::AwaitRdmaReady, E::RdmaReady) => {
                self.phase = P::Connecting;
                self.out.push_back(ClientCmd::Connect(Offer::Rdma));
            }
            (P::AwaitRdmaReady, E::Summary(s)) => {
                let why = (*s).ok().and_then(|s| s.fatal).unwrap_or_else(|| {
                    error(ErrorCode::Internal, "RDMA set-up failed on the daemon")
                });
                self.finish(ClientOutcome::Remote(why));
            }
            (P::AwaitRdmaReady, _) => self
                .finish(ClientOutcome::Lost("the daemon did not complete the RDMA set-up".into())),
            (P::Connecting, E::DataPlane(Ok(()))) => {
                if self.cancelled {
                    return self.finish(ClientOutcome::Cancelled);
                }
                self.phase = P::Running;
                self.out.push_back(ClientCmd::StartLocal);
            }
            (P::Connecting, E::DataPlane(Err(_))) => {
                if self.cancelled {
                    return self.finish(ClientOutcome::Cancelled);
                }
                self.finish(ClientOutcome::DataPlane)
            }
            (P::Running | P::AwaitSummary, E::Summary(s)) => {
                let s = *s;
                let fatal = s.as_ref().is_ok_and(|s| s.fatal.is_some());
                self.summary.get_or_insert(s);
                if fatal {
                    self.stop(None);
                }
                self.try_finish();
            }
            (P::Running | P::AwaitSummary, E::InboundEnded) => {
                if self.summary.is_none() {
                    self.stop(Some("the daemon ended the session without a summary".into()));
                }
                self.try_finish();
            }
            (P::Running | P::AwaitSummary, E::InboundFailed(m) | E::Violation(m)) => {
                self.stop(Some(m));
                self.try_finish();
            }
            (P::Running, E::Cancel) => {
                self.cancelled = true;
                self.stop(None);
            }
            (P::AwaitSummary, E::Cancel) => {
                self.cancelled = true;
                self.try_finish();
            }
            (P::Running, E::LocalDone(ok)) => {
                self.local_ok = Some(ok);
                self.out.push_back(ClientCmd::CloseOutbound);
                if ok && self.summary.is_none() && self.lost.is_none() && !self.cancelled {
                    self.phase = P::AwaitSummary;
                    self.deadline = Some(now + self.facts.summary_timeout);
                } else {
                    self.try_finish();
                }
            }
            (P::AwaitSummary, E::Timer) => {
                self.lost.get_or_insert("no summary from the daemon".into());
                self.try_finish();
            }
            (phase, ev) => self.finish(ClientOutcome::Lost(format!(
                "unexpected {} while {phase:?}",
                match ev {
                    E::Refused(e) => format!("refusal ({e})"),
                    E::Accepted(_) => "Accept".into(),
                    E::RdmaReady => "RDMA endpoint".into(),
                    other => format!("{other:?}"),
                }
            ))),
        }
    }

    /// Ends the session once the local half is done and nothing else is awaited, with the
    /// outcome that explains the most: an interrupt, then the daemon's fatal error, then a
    /// broken control stream (which explains a local "channel closed"), then the local error.
    fn try_finish(&mut self) {
        let Some(local_ok) = self.local_ok else { return };
        let awaiting = self.phase == ClientPhase::AwaitSummary
            && self.summary.is_none()
            && self.lost.is_none()
            && !self.cancelled;
        if awaiting {
            return;
        }
        let outcome = if self.cancelled {
            ClientOutcome::Cancelled
        } else if let Some(Ok(RemoteSummary { fatal: Some(f), .. })) = &self.summary {
            ClientOutcome::Remote(f.clone())
        } else if !local_ok {
            match self.lost.take() {
                Some(l) => ClientOutcome::Lost(l),
                None => ClientOutcome::Local,
            }
        } else {
            match self.summary.take() {
                Some(Ok(s)) => ClientOutcome::Done(Box::new(s)),
                Some(Err(e)) => ClientOutcome::Lost(format!("bad summary from the daemon: {e}")),
                None => ClientOutcome::Lost(
                    self.lost.take().unwrap_or_else(|| "no summary from the daemon".into()),
                ),
            }
        };
        self.finish(outcome);
    }
}

#[cfg(test)]
mod tests;
