//! Setting up the data plane a session negotiated: TCP streams (and, next, RDMA queue pairs).
//! The control plane only sees "a sender" or "a receiver"; which backend moves the bytes is
//! decided here.

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use blitx_core::transport::{FrameReceiver, FrameSender};
use blitx_storage::RootDir;
use blitx_transport_tcp as tcp;

use blitx_transport_rdma as rdma;

use crate::convert::{RdmaDeviceInfo, RdmaPeer, TcpEndpoint};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Send,
    Receive,
}

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("TCP data plane: {0}")]
    Tcp(String),
    #[error("RDMA data plane: {0}")]
    Rdma(#[from] rdma::Error),
    #[error("RDMA set-up: the peer sent {0}")]
    RdmaPeer(&'static str),
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

/// A negotiated data plane: one half of it.
pub enum DataPlane {
    TcpSend(tcp::TcpSender),
    TcpReceive(tcp::TcpReceiver),
    RdmaSend(rdma::RdmaSender),
    RdmaReceive(rdma::RdmaReceiver),
}

impl DataPlane {
    /// The sending half; panics if this side receives (a caller bug: roles are fixed by the
    /// session's direction).
    pub fn sender(&self) -> &dyn FrameSender {
        match self {
            DataPlane::TcpSend(s) => s,
            DataPlane::RdmaSend(s) => s,
            DataPlane::TcpReceive(_) | DataPlane::RdmaReceive(_) => {
                panic!("data plane role mismatch: this side receives")
            }
        }
    }

    pub fn receiver(&self) -> &dyn FrameReceiver {
        match self {
            DataPlane::TcpReceive(r) => r,
            DataPlane::RdmaReceive(r) => r,
            DataPlane::TcpSend(_) | DataPlane::RdmaSend(_) => {
                panic!("data plane role mismatch: this side sends")
            }
        }
    }

    /// Transport name and parallelism (TCP streams or RDMA queue pairs).
    pub fn describe(&self) -> (&'static str, u32) {
        match self {
            DataPlane::TcpSend(s) => ("tcp", s.stats().streams),
            DataPlane::TcpReceive(r) => ("tcp", r.stats().streams),
            DataPlane::RdmaSend(s) => ("rdma", s.stats().streams),
            DataPlane::RdmaReceive(r) => ("rdma", u32::try_from(r.qps()).unwrap_or(u32::MAX)),
        }
    }
}

/// The daemon's listening side, before the client connected.
pub struct Listening {
    listener: tcp::DataListener,
    token: tcp::SessionToken,
    streams: u32,
    buffer_bytes: u64,
}

pub fn tcp_listen(ip: IpAddr, opts: &DataPlaneOptions) -> Result<Listening, DataPlaneError> {
    let token = tcp::SessionToken::random().map_err(|e| DataPlaneError::Tcp(e.to_string()))?;
    let listener = tcp::DataListener::bind(ip, &tcp_config(opts))
        .map_err(|e| DataPlaneError::Tcp(e.to_string()))?;
    Ok(Listening { listener, token, streams: opts.streams, buffer_bytes: opts.socket_buffer_bytes })
}

impl Listening {
    pub fn endpoint(&self) -> TcpEndpoint {
        TcpEndpoint {
            addr: self.listener.local_addr(),
            token: *self.token.as_bytes(),
            streams: self.streams,
            buffer_bytes: self.buffer_bytes,
        }
    }

    /// Waits for the client's data connections (each must present the token).
    pub fn accept(
        self,
        role: Role,
        opts: &DataPlaneOptions,
        _cancel: &AtomicBool,
    ) -> Result<DataPlane, DataPlaneError> {
        let deadline = Instant::now() + DATA_CONNECT_TIMEOUT;
        let streams = self
            .listener
            .accept_streams(&self.token, self.streams, deadline)
            .map_err(|e| DataPlaneError::Tcp(e.to_string()))?;
        build(streams, role, opts)
    }
}

/// The client's side: connects to the daemon's data listener.
pub fn tcp_connect(
    ep: &TcpEndpoint,
    role: Role,
    opts: &DataPlaneOptions,
) -> Result<DataPlane, DataPlaneError> {
    let token = tcp::SessionToken::from_bytes(ep.token);
    let opts = DataPlaneOptions { streams: ep.streams, ..opts.clone() };
    let streams =
        tcp::connect_streams(ep.addr, &token, ep.streams, DATA_CONNECT_TIMEOUT, &tcp_config(&opts))
            .map_err(|e| DataPlaneError::Tcp(e.to_string()))?;
    build(streams, role, &opts)
}

fn build(
    streams: Vec<std::net::TcpStream>,
    role: Role,
    opts: &DataPlaneOptions,
) -> Result<DataPlane, DataPlaneError> {
    let cfg = tcp_config(opts);
    Ok(match role {
        Role::Send => DataPlane::TcpSend(
            tcp::TcpSender::new(streams, &cfg).map_err(|e| DataPlaneError::Tcp(e.to_string()))?,
        ),
        Role::Receive => DataPlane::TcpReceive(
            tcp::TcpReceiver::new(streams, &cfg).map_err(|e| DataPlaneError::Tcp(e.to_string()))?,
        ),
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
/// is none. Loading libibverbs is attempted here and only here; a machine without it simply
/// has no device.
pub fn local_rdma_device(device: Option<&str>) -> Result<RdmaDeviceInfo, String> {
    let d = rdma::probe(device).map_err(|e| e.to_string())?;
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
pub enum RdmaPending {
    Receiver(rdma::ReceiverSetup),
    Sender(rdma::SenderSetup),
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
/// of its own.
pub fn rdma_prepare(
    role: Role,
    opts: &DataPlaneOptions,
    domain: Option<&rdma::RdmaDomain>,
) -> Result<(RdmaPending, RdmaPeer), DataPlaneError> {
    let cfg = rdma_config(opts);
    let own;
    let domain = match domain {
        Some(d) => d,
        None => {
            own = rdma::RdmaDomain::open(&cfg, 0)?;
            tracing::debug!(device = own.device(), "RDMA: device opened");
            &own
        }
    };
    let r = match role {
        Role::Receive => {
            let (setup, info) = rdma::ReceiverSetup::in_domain(domain, &cfg)?;
            (RdmaPending::Receiver(setup), RdmaPeer::Receiver(info))
        }
        Role::Send => {
            let (setup, info) = rdma::SenderSetup::in_domain(domain, &cfg)?;
            (RdmaPending::Sender(setup), RdmaPeer::Sender(info))
        }
    };
    tracing::debug!(?role, "RDMA: QPs and memory set up");
    Ok(r)
}

impl RdmaPending {
    /// Connects to the peer's QPs. A receiver must connect after (or shortly after) the sender.
    pub fn connect(self, peer: &RdmaPeer) -> Result<DataPlane, DataPlaneError> {
        match (self, peer) {
            (RdmaPending::Receiver(setup), RdmaPeer::Sender(info)) => {
                Ok(DataPlane::RdmaReceive(setup.connect(info)?))
            }
            (RdmaPending::Sender(setup), RdmaPeer::Receiver(info)) => {
                Ok(DataPlane::RdmaSend(setup.connect(info)?))
            }
            _ => Err(DataPlaneError::RdmaPeer("set-up for the wrong role")),
        }
    }
}

/// An empty, unreachable directory: the target of a dry run whose target does not exist.
pub fn empty_stand_in() -> std::io::Result<RootDir> {
    RootDir::empty_stand_in()
}
