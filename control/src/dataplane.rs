//! Setting up the data plane a session negotiated: TCP streams (and, next, RDMA queue pairs).
//! The control plane only sees "a sender" or "a receiver"; which backend moves the bytes is
//! decided here.

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use blitx_core::transport::{FrameReceiver, FrameSender};
use blitx_storage::RootDir;
use blitx_transport_tcp as tcp;

use crate::convert::{RdmaDeviceInfo, TcpEndpoint};

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
}

fn tcp_config(opts: &DataPlaneOptions) -> tcp::TcpConfig {
    let mut cfg = tcp::TcpConfig::new(opts.streams, opts.chunk_bytes);
    // Enough buffers that every writer (or reader) thread can hold one while every stream
    // still has a frame in flight.
    cfg.pool_slots = cfg.pool_slots.max(opts.streams as usize + 2 * opts.threads + 4);
    cfg.socket_buffer_bytes =
        (opts.socket_buffer_bytes > 0).then_some(opts.socket_buffer_bytes as usize);
    cfg.stall_timeout = opts.stall_timeout;
    cfg
}

/// A negotiated data plane: one half of it.
pub enum DataPlane {
    TcpSend(tcp::TcpSender),
    TcpReceive(tcp::TcpReceiver),
}

impl DataPlane {
    /// The sending half; panics if this side receives (a caller bug: roles are fixed by the
    /// session's direction).
    pub fn sender(&self) -> &dyn FrameSender {
        match self {
            DataPlane::TcpSend(s) => s,
            DataPlane::TcpReceive(_) => panic!("data plane role mismatch: this side receives"),
        }
    }

    pub fn receiver(&self) -> &dyn FrameReceiver {
        match self {
            DataPlane::TcpReceive(r) => r,
            DataPlane::TcpSend(_) => panic!("data plane role mismatch: this side sends"),
        }
    }

    pub fn describe(&self) -> (&'static str, u32) {
        match self {
            DataPlane::TcpSend(s) => ("tcp", s.stats().streams),
            DataPlane::TcpReceive(r) => ("tcp", r.stats().streams),
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

/// This machine's usable RDMA device, if any (none until the RDMA data plane is wired).
pub fn local_rdma_device() -> Option<RdmaDeviceInfo> {
    None
}

/// Why `auto` did not pick RDMA.
pub fn rdma_unavailable_reason(client: Option<&RdmaDeviceInfo>) -> String {
    match client {
        None => "the client has no usable RDMA device; using TCP".into(),
        Some(_) => "the daemon has no usable RDMA device; using TCP".into(),
    }
}

/// An empty, unreachable directory: the target of a dry run whose target does not exist.
pub fn empty_stand_in() -> std::io::Result<RootDir> {
    RootDir::empty_stand_in()
}
