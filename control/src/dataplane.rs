//! Choosing the data plane a session negotiated and setting up this side's half of it.
//!
//! Every backend is set up through the core's seam ([`blitx_core::plane::DataPlane`]: listen,
//! dial, accept/connect); this module only picks the backend (TCP or RDMA), builds its
//! configuration from the session's options, and carries the backend's offer and answer to and
//! from the control plane's messages. The role is fixed when the half is made: a [`Half`] is a
//! sender or a receiver, and asking it for the other role is a typed error
//! ([`DataPlaneError::Role`]), never a panic.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use blitx_core::cancel::Cancel;
use blitx_core::plane::{DataPlane, Dialer, Listener};
use blitx_core::transport::{FrameReceiver, FrameSender, TransportError};
use blitx_storage::RootDir;
use blitx_transport_tcp as tcp;

use blitx_transport_rdma as rdma;

use crate::convert::{RdmaDeviceInfo, RdmaPeer, TcpEndpoint};

pub use blitx_core::plane::Role;

/// How long a listener waits for the client's data connections.
pub const DATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DataPlaneOptions {
    pub streams: u32,
    pub chunk_bytes: u32,
    /// 0: automatic.
    pub socket_buffer_bytes: u64,
    pub stall_timeout: Duration,
    pub threads: usize,
    /// RDMA: queue pairs per session (frames are striped over them).
    pub qps: u32,
    /// RDMA: the verbs device to use (None: the first with an active port).
    pub rdma_device: Option<String>,
    /// RDMA: hash and verify every frame (TCP always does).
    pub rdma_frame_checksums: bool,
    /// RDMA: event-driven CQs instead of busy-polling.
    pub rdma_event_cq: bool,
    /// TCP: file regions sent with `sendfile`, received with `splice` (`--tcp-zero-copy`).
    pub tcp_zero_copy: bool,
}

/// Why a session's data plane could not be set up. Each variant keeps the backend's typed error
/// (operation, peer address or device, `io::Error` source), so callers decide on the type:
/// [`DataPlaneError::is_unavailable`] says "this transport cannot run here" (fall back, exit 3).
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("TCP data plane: {0}")]
    Tcp(#[from] tcp::SetupError),
    #[error("RDMA data plane: {0}")]
    Rdma(#[from] rdma::Error),
    #[error("RDMA is disabled on this daemon (--no-rdma)")]
    RdmaDisabled,
    #[error("RDMA set-up: the peer sent {0}")]
    RdmaPeer(&'static str),
    #[error("this side of the data plane {has:?}s; it was asked to {wanted:?}")]
    Role { has: Role, wanted: Role },
}

impl DataPlaneError {
    /// True when the transport cannot run on this machine at all (no verbs device, no
    /// libibverbs, RDMA disabled): the caller falls back to TCP or reports exit code 3.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DataPlaneError::Rdma(e) => e.is_unavailable(),
            DataPlaneError::RdmaDisabled => true,
            _ => false,
        }
    }

    /// True when the set-up stopped because the session was cancelled (not a failure of the
    /// transport or the peer).
    pub fn is_cancelled(&self) -> bool {
        match self {
            DataPlaneError::Rdma(e) => e.is_cancelled(),
            DataPlaneError::Tcp(tcp::SetupError::Cancelled { .. }) => true,
            _ => false,
        }
    }
}

fn tcp_config(opts: &DataPlaneOptions) -> tcp::TcpConfig {
    let mut cfg = tcp::TcpConfig::new(opts.streams, opts.chunk_bytes);
    // Enough buffers that every writer (or reader) thread can hold one while every stream
    // still has a frame in flight.
    cfg.pool_slots = cfg.pool_slots.max(opts.streams as usize + 2 * opts.threads + 4);
    cfg.socket_buffer_bytes =
        (opts.socket_buffer_bytes > 0).then_some(opts.socket_buffer_bytes as usize);
    cfg.stall_timeout = opts.stall_timeout;
    if opts.tcp_zero_copy {
        cfg.payload = blitx_core::transport::PayloadPref::FileRegion;
        cfg.delivery = tcp::Delivery::Spliced;
    }
    // Measurement knobs (docs/benchmarking.md, "TCP payload paths"): each path on its own, for
    // comparing them with the defaults in one build. Each side reads its own environment.
    if std::env::var_os("BLIT_TCP_PAYLOAD").is_some_and(|v| v == "sendfile") {
        cfg.payload = blitx_core::transport::PayloadPref::FileRegion;
    }
    match std::env::var_os("BLIT_TCP_DELIVERY") {
        Some(v) if v == "lent" => cfg.delivery = tcp::Delivery::Lent,
        Some(v) if v == "splice" => cfg.delivery = tcp::Delivery::Spliced,
        _ => {}
    }
    cfg
}

/// Bytes of buffers one side of a session's data plane allocates (what a daemon charges to the
/// session's memory budget before building it).
pub fn pool_bytes(opts: &DataPlaneOptions, rdma: bool) -> u64 {
    let slots = if rdma {
        let c = rdma_config(opts);
        u64::from(c.pool_slots.max(c.slots))
    } else {
        tcp_config(opts).pool_slots as u64
    };
    slots * u64::from(opts.chunk_bytes)
}

/// This side's half of a negotiated data plane: a sender or a receiver, with the transport's
/// name and parallelism (TCP streams or RDMA queue pairs).
pub enum Half {
    Send {
        half: Box<dyn FrameSender>,
        transport: &'static str,
        streams: u32,
        counted: Arc<dyn Counted>,
    },
    Receive {
        half: Box<dyn FrameReceiver>,
        transport: &'static str,
        streams: u32,
        counted: Arc<dyn Counted>,
    },
}

/// What a data plane's half counted so far that the session's progress does not show: TCP
/// retransmits (from the kernel) and RDMA work requests (from the transport's own counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlaneCounters {
    /// TCP: segments retransmitted on the session's streams; `None` where `TCP_INFO` could not
    /// be read (or the plane is not TCP).
    pub tcp_retransmits: Option<u64>,
    /// RDMA: work requests posted (WRITE_WITH_IMM, SEND and RECV).
    pub rdma_work_requests: u64,
    /// RDMA: payload bytes carried (the denominator of work requests per MiB).
    pub rdma_payload_bytes: u64,
    /// RDMA: times the sender waited for a credit or a send-queue entry.
    pub rdma_send_waits: u64,
}

/// A backend's half that can say what it counted ([`PlaneCounters`]); read from another thread
/// while the half works, so it only loads atomics or asks the kernel.
pub trait Counted: Send + Sync {
    fn plane_counters(&self) -> PlaneCounters;
}

/// Reads a half's counters while the half lives; `None` once it is gone (the probe never keeps
/// a session's sockets or queue pairs alive).
pub type Probe = Arc<dyn Fn() -> Option<PlaneCounters> + Send + Sync>;

fn tcp_counters(retransmits: std::io::Result<u64>) -> PlaneCounters {
    PlaneCounters { tcp_retransmits: retransmits.ok(), ..PlaneCounters::default() }
}

fn rdma_counters(c: &rdma::RdmaCounters) -> PlaneCounters {
    PlaneCounters {
        tcp_retransmits: None,
        rdma_work_requests: c.wr_write_imm + c.wr_send + c.wr_recv,
        rdma_payload_bytes: c.payload_bytes,
        rdma_send_waits: c.send_waits,
    }
}

impl Counted for tcp::TcpSender {
    fn plane_counters(&self) -> PlaneCounters {
        tcp_counters(self.retransmits())
    }
}

impl Counted for tcp::TcpReceiver {
    fn plane_counters(&self) -> PlaneCounters {
        tcp_counters(self.retransmits())
    }
}

impl Counted for rdma::RdmaSender {
    fn plane_counters(&self) -> PlaneCounters {
        rdma_counters(&self.counters())
    }
}

impl Counted for rdma::RdmaReceiver {
    fn plane_counters(&self) -> PlaneCounters {
        rdma_counters(&self.counters())
    }
}

/// The in-process plane (tests): nothing beyond its frames to count.
impl Counted for blitx_core::transport::MemSender {
    fn plane_counters(&self) -> PlaneCounters {
        PlaneCounters::default()
    }
}

impl Counted for blitx_core::transport::MemReceiver {
    fn plane_counters(&self) -> PlaneCounters {
        PlaneCounters::default()
    }
}

/// A half shared between the session (which moves frames through it) and its counters' probe.
struct SharedHalf<T>(Arc<T>);

impl<T: FrameSender> FrameSender for SharedHalf<T> {
    fn payload_pref(&self) -> blitx_core::transport::PayloadPref {
        self.0.payload_pref()
    }
    fn pool(&self) -> &blitx_core::pool::BufferPool {
        self.0.pool()
    }
    fn frame_bytes_max(&self) -> u32 {
        self.0.frame_bytes_max()
    }
    fn needs_checksums(&self) -> bool {
        self.0.needs_checksums()
    }
    fn send(&self, frame: blitx_core::transport::Frame) -> Result<(), TransportError> {
        self.0.send(frame)
    }
    fn finish(&self) -> Result<(), TransportError> {
        self.0.finish()
    }
    fn abort(&self) {
        self.0.abort()
    }
    fn stats(&self) -> blitx_core::transport::TransportStats {
        self.0.stats()
    }
}

impl<T: FrameReceiver> FrameReceiver for SharedHalf<T> {
    fn recv(&self) -> Result<Option<blitx_core::transport::Frame>, TransportError> {
        self.0.recv()
    }
    fn abort(&self) {
        self.0.abort()
    }
}

impl Half {
    fn sending<T: FrameSender + Counted + 'static>(
        half: T,
        transport: &'static str,
        streams: u32,
    ) -> Self {
        let half = Arc::new(half);
        let counted = Arc::clone(&half) as Arc<dyn Counted>;
        Half::Send { half: Box::new(SharedHalf(half)), transport, streams, counted }
    }

    fn receiving<T: FrameReceiver + Counted + 'static>(
        half: T,
        transport: &'static str,
        streams: u32,
    ) -> Self {
        let half = Arc::new(half);
        let counted = Arc::clone(&half) as Arc<dyn Counted>;
        Half::Receive { half: Box::new(SharedHalf(half)), transport, streams, counted }
    }

    /// What the half counted so far.
    pub fn counters(&self) -> PlaneCounters {
        match self {
            Half::Send { counted, .. } | Half::Receive { counted, .. } => counted.plane_counters(),
        }
    }

    /// A probe of [`Half::counters`] for another thread (the daemon's metrics) that does not
    /// keep the half alive.
    pub fn probe(&self) -> Probe {
        let weak = match self {
            Half::Send { counted, .. } | Half::Receive { counted, .. } => Arc::downgrade(counted),
        };
        Arc::new(move || weak.upgrade().map(|c| c.plane_counters()))
    }

    /// The sending half; a typed error if this side receives (the session's direction fixes
    /// the role when the half is made).
    pub fn sender(&self) -> Result<&dyn FrameSender, DataPlaneError> {
        match self {
            Half::Send { half, .. } => Ok(half.as_ref()),
            Half::Receive { .. } => {
                Err(DataPlaneError::Role { has: Role::Receive, wanted: Role::Send })
            }
        }
    }

    /// The receiving half; a typed error if this side sends.
    pub fn receiver(&self) -> Result<&dyn FrameReceiver, DataPlaneError> {
        match self {
            Half::Receive { half, .. } => Ok(half.as_ref()),
            Half::Send { .. } => {
                Err(DataPlaneError::Role { has: Role::Send, wanted: Role::Receive })
            }
        }
    }

    /// Transport name and parallelism (TCP streams or RDMA queue pairs).
    pub fn describe(&self) -> (&'static str, u32) {
        match self {
            Half::Send { transport, streams, .. } | Half::Receive { transport, streams, .. } => {
                (transport, *streams)
            }
        }
    }
}

/// Completes a set-up in `role`: the listener or dialer of that role, made by the backend.
enum Pending<S, R> {
    Send(S),
    Receive(R),
}

fn tcp_plane(opts: &DataPlaneOptions, bind_ip: IpAddr) -> tcp::TcpPlane {
    tcp::TcpPlane { config: tcp_config(opts), bind_ip, connect_timeout: DATA_CONNECT_TIMEOUT }
}

/// The daemon's listening side, before the client connected.
pub struct Listening {
    pending: Pending<
        <tcp::TcpPlane as DataPlane>::SendListener,
        <tcp::TcpPlane as DataPlane>::ReceiveListener,
    >,
    offer: tcp::TcpOffer,
    buffer_bytes: u64,
}

/// Listens for the client's data connections on `ip` (the daemon's control address).
pub fn tcp_listen(
    ip: IpAddr,
    role: Role,
    opts: &DataPlaneOptions,
) -> Result<Listening, DataPlaneError> {
    let plane = tcp_plane(opts, ip);
    let (pending, offer) = match role {
        Role::Send => plane.listen_send().map(|(l, o)| (Pending::Send(l), o))?,
        Role::Receive => plane.listen_receive().map(|(l, o)| (Pending::Receive(l), o))?,
    };
    Ok(Listening { pending, offer, buffer_bytes: opts.socket_buffer_bytes })
}

impl Listening {
    pub fn endpoint(&self) -> TcpEndpoint {
        TcpEndpoint {
            addr: self.offer.addr,
            token: *self.offer.token.as_bytes(),
            streams: self.offer.streams,
            buffer_bytes: self.buffer_bytes,
        }
    }

    /// Waits for the client's data connections (each must present the token), until
    /// [`DATA_CONNECT_TIMEOUT`] or until `cancel` fires.
    pub fn accept(self, cancel: &Cancel) -> Result<Half, DataPlaneError> {
        let streams = self.offer.streams;
        Ok(match self.pending {
            Pending::Send(l) => Half::sending(l.accept((), cancel)?, tcp::TRANSPORT_NAME, streams),
            Pending::Receive(l) => {
                Half::receiving(l.accept((), cancel)?, tcp::TRANSPORT_NAME, streams)
            }
        })
    }
}

/// The client's side: connects to the daemon's data listener.
pub fn tcp_connect(
    ep: &TcpEndpoint,
    role: Role,
    opts: &DataPlaneOptions,
    cancel: &Cancel,
) -> Result<Half, DataPlaneError> {
    let opts = DataPlaneOptions { streams: ep.streams, ..opts.clone() };
    // The dialer binds nothing: the address is the listener's.
    let plane = tcp_plane(&opts, ep.addr.ip());
    let offer = tcp::TcpOffer {
        addr: ep.addr,
        token: tcp::SessionToken::from_bytes(ep.token),
        streams: ep.streams,
    };
    Ok(match role {
        Role::Send => {
            let (d, ()) = plane.dial_send()?;
            Half::sending(d.connect(offer, cancel)?, tcp::TRANSPORT_NAME, ep.streams)
        }
        Role::Receive => {
            let (d, ()) = plane.dial_receive()?;
            Half::receiving(d.connect(offer, cancel)?, tcp::TRANSPORT_NAME, ep.streams)
        }
    })
}

/// RDMA queue pairs per session unless `--qps` says otherwise.
pub const RDMA_QPS_DEFAULT: u32 = rdma::QPS_DEFAULT;

/// Starts loading the RDMA stack (libibverbs and its providers) on a thread of its own, so the
/// first device open of a session that may use RDMA does not wait for it. Fire and forget: a
/// machine without libibverbs or devices simply finishes early, and the session's own probe
/// reports why.
pub fn preload_rdma() {
    let _ = std::thread::Builder::new().name("rdma-preload".into()).spawn(rdma::preload);
}

/// This machine's usable RDMA device (first active port, RoCE v2 GID preferred), or why there
/// is none (typed: [`DataPlaneError::is_unavailable`] tells "no RDMA here" from a failure).
/// Loading libibverbs is attempted here and only here; a machine without it simply has no
/// device.
pub fn local_rdma_device(device: Option<&str>) -> Result<RdmaDeviceInfo, DataPlaneError> {
    let d = rdma::probe(device)?;
    tracing::debug!(device = %d.device, "RDMA: probed");
    Ok(RdmaDeviceInfo {
        name: d.device.clone(),
        active: true,
        gid: d.gid.to_bytes(),
        gid_index: d.gid_index,
        link_gbps: d.link_gbps.unwrap_or(0.0),
        numa_node: d.numa_node,
        ipv4: d.ipv4.zip(d.ipv4_prefix_len),
    })
}

fn rdma_config(opts: &DataPlaneOptions) -> rdma::RdmaConfig {
    let mut cfg = rdma::RdmaConfig::new(opts.qps.max(1), opts.chunk_bytes);
    cfg.device = opts.rdma_device.clone();
    cfg.stall_timeout = opts.stall_timeout;
    cfg.frame_checksums = opts.rdma_frame_checksums;
    cfg.cq_mode = if opts.rdma_event_cq { rdma::CqMode::Event } else { rdma::CqMode::BusyPoll };
    cfg
}

/// One side's RDMA resources, created but not yet connected.
pub struct RdmaPending {
    pending: Pending<rdma::SenderSetup, rdma::ReceiverSetup>,
    qps: u32,
}

/// Registered pools a daemon keeps between sessions: the last push's ring and the last pull's
/// sender pool (64 + 96 MiB with the defaults).
pub const DAEMON_IDLE_POOLS_MAX: usize = 2;

/// The daemon's RDMA domain: the device opened once for every session, keeping up to
/// [`DAEMON_IDLE_POOLS_MAX`] registered pools between sessions, with the ring of a default push
/// registered now so that the first session does not wait for it either. Returns the domain and
/// the bytes registered ahead.
pub fn rdma_daemon_domain(device: Option<&str>) -> Result<(rdma::RdmaDomain, u64), DataPlaneError> {
    let mut cfg =
        rdma::RdmaConfig::new(rdma::QPS_DEFAULT, blitx_core::session::CHUNK_BYTES_DEFAULT);
    cfg.device = device.map(str::to_owned);
    let domain = rdma::RdmaDomain::open(&cfg, DAEMON_IDLE_POOLS_MAX)?;
    let bytes = domain.prewarm(&cfg)?;
    Ok((domain, bytes))
}

/// Creates this side's QPs (and, for a receiver, its registered ring); returns what the peer
/// needs to connect. In `domain` when given (its device, PD and kept pools), else in a domain
/// of its own. The same call serves the listening daemon and the dialing client: RDMA's offer
/// and answer are the same message.
pub fn rdma_prepare(
    role: Role,
    opts: &DataPlaneOptions,
    domain: Option<&rdma::RdmaDomain>,
) -> Result<(RdmaPending, RdmaPeer), DataPlaneError> {
    let cfg = rdma_config(opts);
    let plane = rdma::RdmaPlane { cfg: &cfg, domain };
    let (pending, info) = match role {
        Role::Send => plane.listen_send().map(|(s, i)| (Pending::Send(s), i))?,
        Role::Receive => plane.listen_receive().map(|(r, i)| (Pending::Receive(r), i))?,
    };
    let peer = match info {
        rdma::PeerInfo::Sender(i) => RdmaPeer::Sender(i),
        rdma::PeerInfo::Receiver(i) => RdmaPeer::Receiver(i),
    };
    tracing::debug!(?role, "RDMA: QPs and memory set up");
    Ok((RdmaPending { pending, qps: cfg.qps }, peer))
}

impl RdmaPending {
    /// Connects to the peer's QPs. A receiver must connect after (or shortly after) the sender.
    pub fn connect(self, peer: &RdmaPeer, cancel: &Cancel) -> Result<Half, DataPlaneError> {
        let info = match peer {
            RdmaPeer::Sender(i) => rdma::PeerInfo::Sender(i.clone()),
            RdmaPeer::Receiver(i) => rdma::PeerInfo::Receiver(i.clone()),
            RdmaPeer::Ready => return Err(DataPlaneError::RdmaPeer("Ready instead of its QPs")),
        };
        Ok(match self.pending {
            Pending::Send(s) => Half::sending(Listener::accept(s, info, cancel)?, "rdma", self.qps),
            Pending::Receive(r) => {
                Half::receiving(Listener::accept(r, info, cancel)?, "rdma", self.qps)
            }
        })
    }
}

/// An empty, unreachable directory: the target of a dry run whose target does not exist.
pub fn empty_stand_in() -> std::io::Result<RootDir> {
    RootDir::empty_stand_in()
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_core::BufferPool;
    use blitx_core::transport::{MemFaults, PayloadPref, mem_pair};

    #[test]
    fn a_half_asked_for_the_other_role_is_a_typed_error() {
        let pool = BufferPool::new(2, 4096, false).expect("pool");
        let (tx, rx) = mem_pair(pool, PayloadPref::Buffer, 4096, 2, MemFaults::default());
        let send = Half::sending(tx, "in-process", 1);
        let receive = Half::receiving(rx, "in-process", 1);
        assert!(send.sender().is_ok() && receive.receiver().is_ok());
        assert!(matches!(
            send.receiver(),
            Err(DataPlaneError::Role { has: Role::Send, wanted: Role::Receive })
        ));
        assert!(matches!(
            receive.sender(),
            Err(DataPlaneError::Role { has: Role::Receive, wanted: Role::Send })
        ));
        assert_eq!(send.describe(), ("in-process", 1));
    }

    #[test]
    fn tcp_halves_count_retransmits_and_their_probe_lets_go() {
        let opts = DataPlaneOptions {
            streams: 2,
            chunk_bytes: 1 << 16,
            socket_buffer_bytes: 0,
            stall_timeout: Duration::from_secs(10),
            threads: 1,
            qps: 1,
            rdma_device: None,
            rdma_frame_checksums: false,
            rdma_event_cq: false,
            tcp_zero_copy: false,
        };
        let ip = IpAddr::from([127, 0, 0, 1]);
        let listening = tcp_listen(ip, Role::Receive, &opts).expect("listen");
        let ep = listening.endpoint();
        let cancel = Cancel::new();
        let accepting = {
            let cancel = cancel.clone();
            std::thread::spawn(move || listening.accept(&cancel))
        };
        let send = tcp_connect(&ep, Role::Send, &opts, &cancel).expect("connect");
        let receive = accepting.join().expect("join").expect("accept");
        // Loopback loses nothing: readable, and nothing retransmitted.
        assert_eq!(send.counters().tcp_retransmits, Some(0));
        assert_eq!(receive.counters().tcp_retransmits, Some(0));
        assert_eq!(send.counters().rdma_work_requests, 0);
        let probe = send.probe();
        assert_eq!(probe(), Some(send.counters()));
        send.sender().expect("sender").abort();
        receive.receiver().expect("receiver").abort();
        drop(send);
        assert_eq!(probe(), None, "the probe kept the half alive");
    }

    #[test]
    fn unavailable_is_decided_on_the_type() {
        assert!(DataPlaneError::RdmaDisabled.is_unavailable());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let timeout = tcp::SetupError::AcceptTimeout { addr, arrived: 0, expected: 1 };
        assert!(!DataPlaneError::Tcp(timeout).is_unavailable());
        assert!(!DataPlaneError::RdmaPeer("Ready instead of its QPs").is_unavailable());
    }
}
