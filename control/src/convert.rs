//! Generated protobuf types ⇄ validated domain types. Everything arriving from a peer passes
//! through here: paths are parsed into `RelPath`s (no `..`, no absolute paths, no NUL),
//! parameters validated, enums checked, hashes and tokens length-checked.

use std::net::SocketAddr;

use blitx_core::RelPath;
use blitx_core::filter::{
    FILES_FROM_PATHS_MAX, FILTER_PATTERN_BYTES_MAX, FILTER_RULES_MAX, FilterParams, Rule, RuleKind,
};
use blitx_core::manifest::{
    Entry, EntryKind, InodeKey, Special, Timestamp, XATTR_ENTRY_BYTES_MAX, XATTRS_PER_ENTRY_MAX,
    Xattr, check_xattrs,
};
use blitx_core::session::{
    Compare, IO_DEPTH_DEFAULT, IoMode, Offer, SessionParams, SourceMsg, TargetMsg,
};
use blitx_storage::report::{Event, EventKind, FileError, SourceReport, TargetReport};

use crate::negotiate::OpenDefect;
use crate::pb;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message from peer: {0}")]
pub struct ConvertError(pub String);

fn bad(what: impl Into<String>) -> ConvertError {
    ConvertError(what.into())
}

fn path(bytes: &[u8]) -> Result<RelPath, ConvertError> {
    RelPath::parse(bytes).map_err(|e| bad(e.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client is the source.
    Push,
    /// The daemon is the source.
    Pull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    Auto,
    Tcp,
    Rdma,
}

impl TransportChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportChoice::Auto => "auto",
            TransportChoice::Tcp => "tcp",
            TransportChoice::Rdma => "rdma",
        }
    }
    pub fn parse(s: &str) -> Result<Self, ConvertError> {
        match s {
            "auto" | "" => Ok(TransportChoice::Auto),
            "tcp" => Ok(TransportChoice::Tcp),
            "rdma" => Ok(TransportChoice::Rdma),
            other => Err(bad(format!("unknown transport {other:?}"))),
        }
    }
}

/// A usable RDMA device as one side advertises it.
#[derive(Debug, Clone, PartialEq)]
pub struct RdmaDeviceInfo {
    pub name: String,
    pub active: bool,
    pub gid: [u8; 16],
    pub gid_index: u32,
    pub link_gbps: f64,
    pub numa_node: Option<u32>,
    /// The GID's IPv4 address and prefix length (RoCE v2), for the common-subnet check.
    pub ipv4: Option<(std::net::Ipv4Addr, u8)>,
}

impl RdmaDeviceInfo {
    /// True when `peer`'s address lies in this device's IPv4 subnet.
    pub fn shares_subnet(&self, peer: &RdmaDeviceInfo) -> bool {
        match (self.ipv4, peer.ipv4) {
            (Some((mine, len)), Some((theirs, _))) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
                u32::from(mine) & mask == u32::from(theirs) & mask
            }
            _ => false,
        }
    }
}

/// One side's RDMA set-up as the peer sent it.
#[derive(Debug, Clone)]
pub enum RdmaPeer {
    /// The peer receives: its QPs and the ring to write into.
    Receiver(blitx_transport_rdma::ReceiverInfo),
    /// The peer sends: its QPs.
    Sender(blitx_transport_rdma::SenderInfo),
    /// Pull: the daemon's sender connected; the client's receiver may connect.
    Ready,
}

/// A validated Open.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRequest {
    pub protocol_version: u32,
    pub client_version: String,
    pub direction: Direction,
    pub path: RelPath,
    pub params: SessionParams,
    pub transport: TransportChoice,
    pub tcp_streams: u32,
    pub tcp_buffer_bytes: u64,
    pub events: bool,
    pub client_rdma: Option<RdmaDeviceInfo>,
    pub rdma_qps: u32,
    pub stall_timeout_secs: u32,
    /// RDMA: hash and verify every frame (TCP always does).
    pub rdma_frame_checksums: bool,
    /// RDMA: event-driven CQs on both ends instead of busy-polling.
    pub rdma_event_cq: bool,
    /// Push: wait for another transfer to the same target instead of being refused.
    pub wait_lock: bool,
    /// TCP: sendfile on the sending end, splice on the receiving end.
    pub tcp_zero_copy: bool,
    /// Push of one regular file: `path` is the directory it lands in, or its new name.
    pub single_file: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEndpoint {
    pub addr: SocketAddr,
    pub token: [u8; 32],
    pub streams: u32,
    pub buffer_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Accepted {
    pub protocol_version: u32,
    pub server_version: String,
    pub transport: String,
    pub reason: String,
    pub tcp: Option<TcpEndpoint>,
    pub rdma: Option<RdmaPeer>,
    /// Pull: the daemon's source is one regular file.
    pub single_file: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    VersionMismatch,
    BadPath,
    ReadOnly,
    TransportUnavailable,
    BadRequest,
    Internal,
    /// A limit the daemon's operator set.
    ResourceExhausted,
    /// Another transfer is writing the same target.
    TargetLocked,
    /// Nothing arrived for the idle timeout.
    IdleTimeout,
    /// The peer broke the protocol.
    ProtocolViolation,
    /// The data plane moved nothing for the stall timeout.
    Stalled,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

/// The daemon half's result.
#[derive(Debug, Clone, Default)]
pub struct RemoteSummary {
    pub target: TargetReport,
    pub source: SourceReport,
    /// The daemon's half failed as a whole, and why.
    pub fatal: Option<RemoteError>,
}

// ----- params

pub fn params_to_pb(p: &SessionParams) -> pb::Params {
    pb::Params {
        chunk_bytes: p.chunk_bytes,
        small_file_bytes_max: p.small_file_bytes_max,
        bundle_bytes: p.bundle_bytes,
        compare: match p.compare {
            Compare::SizeMtime => pb::CompareKind::SizeMtime as i32,
            Compare::Checksum => pb::CompareKind::Checksum as i32,
        },
        mirror: p.mirror,
        dry_run: p.dry_run,
        filters_rules: p
            .filter
            .rules
            .iter()
            .map(|r| pb::FiltersRule {
                kind: match r.kind {
                    RuleKind::Include => pb::FiltersRuleKind::FiltersInclude as i32,
                    RuleKind::Exclude => pb::FiltersRuleKind::FiltersExclude as i32,
                },
                pattern: r.pattern.clone(),
            })
            .collect(),
        filters_min_size_bytes: p.filter.min_size_bytes,
        filters_max_size_bytes: p.filter.max_size_bytes,
        filters_delete_excluded: p.filter.delete_excluded,
        filters_files_from: p.filter.files_from.as_ref().map(|paths| pb::FiltersFilesFrom {
            paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
        }),
        preserve_owner: p.preserve_owner,
        fsync: p.fsync,
        io: match p.io {
            IoMode::Auto => pb::IoKind::IoAuto as i32,
            IoMode::Buffered => pb::IoKind::IoBuffered as i32,
            IoMode::Direct => pb::IoKind::IoDirect as i32,
        },
        io_depth: p.io_depth,
        mem_bytes: p.mem_bytes.unwrap_or(0),
        no_resume: !p.resume,
        delta: p.delta,
        bwlimit_bytes_per_s: p.bwlimit_bytes_per_s.unwrap_or(0),
        remove_source_files: p.remove_source_files,
        no_xattrs: !p.xattrs,
        no_acls: !p.acls,
    }
}

pub fn params_from_pb(p: &pb::Params) -> Result<SessionParams, ConvertError> {
    let compare = match pb::CompareKind::try_from(p.compare) {
        Ok(pb::CompareKind::SizeMtime) => Compare::SizeMtime,
        Ok(pb::CompareKind::Checksum) => Compare::Checksum,
        Err(_) => return Err(bad("unknown compare kind")),
    };
    let io = match pb::IoKind::try_from(p.io) {
        Ok(pb::IoKind::IoAuto) => IoMode::Auto,
        Ok(pb::IoKind::IoBuffered) => IoMode::Buffered,
        Ok(pb::IoKind::IoDirect) => IoMode::Direct,
        Err(_) => return Err(bad("unknown I/O kind")),
    };
    let filter = Box::new(filters_from_pb(p)?);
    let params = SessionParams {
        chunk_bytes: p.chunk_bytes,
        small_file_bytes_max: p.small_file_bytes_max,
        bundle_bytes: p.bundle_bytes,
        compare,
        mirror: p.mirror,
        dry_run: p.dry_run,
        filter,
        preserve_owner: p.preserve_owner,
        fsync: p.fsync,
        io,
        io_depth: if p.io_depth == 0 { IO_DEPTH_DEFAULT } else { p.io_depth },
        mem_bytes: (p.mem_bytes > 0).then_some(p.mem_bytes),
        resume: !p.no_resume,
        delta: p.delta,
        bwlimit_bytes_per_s: (p.bwlimit_bytes_per_s > 0).then_some(p.bwlimit_bytes_per_s),
        remove_source_files: p.remove_source_files,
        xattrs: !p.no_xattrs,
        acls: !p.no_acls,
    };
    params.validate().map_err(|e| bad(e.to_string()))?;
    Ok(params)
}

/// The peer's filters, bounded before anything is copied and compiled once to refuse what does
/// not compile (the session compiles them again; the cost is bounded by the same caps).
fn filters_from_pb(p: &pb::Params) -> Result<FilterParams, ConvertError> {
    if p.filters_rules.len() > FILTER_RULES_MAX {
        return Err(bad(format!("more than {FILTER_RULES_MAX} filter rules")));
    }
    let mut rules = Vec::with_capacity(p.filters_rules.len());
    for r in &p.filters_rules {
        if r.pattern.len() > FILTER_PATTERN_BYTES_MAX {
            return Err(bad(format!(
                "a filter pattern longer than {FILTER_PATTERN_BYTES_MAX} bytes"
            )));
        }
        let kind = match pb::FiltersRuleKind::try_from(r.kind) {
            Ok(pb::FiltersRuleKind::FiltersInclude) => RuleKind::Include,
            Ok(pb::FiltersRuleKind::FiltersExclude) => RuleKind::Exclude,
            _ => return Err(bad("missing or unknown filter rule kind")),
        };
        rules.push(Rule { kind, pattern: r.pattern.clone() });
    }
    let files_from = match &p.filters_files_from {
        None => None,
        Some(list) => {
            if list.paths.len() > FILES_FROM_PATHS_MAX {
                return Err(bad(format!("more than {FILES_FROM_PATHS_MAX} --files-from paths")));
            }
            let mut paths = Vec::with_capacity(list.paths.len());
            for raw in &list.paths {
                let path =
                    RelPath::parse(raw).map_err(|e| bad(format!("a --files-from path: {e}")))?;
                if path.is_root() {
                    return Err(bad("a --files-from path names the root itself"));
                }
                paths.push(path);
            }
            Some(paths)
        }
    };
    let filter = FilterParams {
        rules,
        min_size_bytes: p.filters_min_size_bytes,
        max_size_bytes: p.filters_max_size_bytes,
        delete_excluded: p.filters_delete_excluded,
        files_from,
    };
    blitx_planner::Filters::new(&filter).map_err(|e| bad(e.to_string()))?;
    Ok(filter)
}

// ----- open / accept / error

pub fn open_to_pb(o: &OpenRequest) -> pb::ClientFrame {
    pb::ClientFrame {
        msg: Some(pb::client_frame::Msg::Open(pb::Open {
            protocol_version: o.protocol_version,
            client_version: o.client_version.clone(),
            direction: match o.direction {
                Direction::Push => pb::Direction::Push as i32,
                Direction::Pull => pb::Direction::Pull as i32,
            },
            path: o.path.as_bytes().to_vec(),
            params: Some(params_to_pb(&o.params)),
            transport: o.transport.as_str().into(),
            tcp_streams: o.tcp_streams,
            tcp_buffer_bytes: o.tcp_buffer_bytes,
            events: o.events,
            client_rdma: o.client_rdma.as_ref().map(rdma_device_to_pb),
            rdma_qps: o.rdma_qps,
            stall_timeout_secs: o.stall_timeout_secs,
            rdma_frame_checksums: o.rdma_frame_checksums,
            rdma_event_cq: o.rdma_event_cq,
            wait_lock: o.wait_lock,
            tcp_zero_copy: o.tcp_zero_copy,
            single_file: o.single_file,
        })),
    }
}

/// Only the protocol version is read before checking it, so a newer client gets a clean
/// version error rather than a parse error about fields it added.
/// The first message of a session stream as the daemon's negotiation takes it: a validated
/// Open, or what is wrong with it. The checks go in the protocol's order: the message kind,
/// the version (a client of another version may lay its Open out differently), the path
/// (BAD_PATH rather than BAD_REQUEST), then the rest.
pub fn first_open(frame: &pb::ClientFrame) -> Result<OpenRequest, OpenDefect> {
    let Some(pb::client_frame::Msg::Open(o)) = &frame.msg else {
        return Err(OpenDefect::NotOpen);
    };
    let version = open_version(o);
    if version != crate::PROTOCOL_VERSION {
        return Err(OpenDefect::Version { client_version: o.client_version.clone(), version });
    }
    if let Err(e) = RelPath::parse(&o.path) {
        return Err(OpenDefect::BadPath(e.to_string()));
    }
    open_from_pb(o).map_err(|e| OpenDefect::Malformed(e.to_string()))
}

pub fn open_version(o: &pb::Open) -> u32 {
    o.protocol_version
}

pub fn open_from_pb(o: &pb::Open) -> Result<OpenRequest, ConvertError> {
    let direction = match pb::Direction::try_from(o.direction) {
        Ok(pb::Direction::Push) => Direction::Push,
        Ok(pb::Direction::Pull) => Direction::Pull,
        _ => return Err(bad("missing or unknown direction")),
    };
    let params = params_from_pb(o.params.as_ref().ok_or_else(|| bad("Open without params"))?)?;
    Ok(OpenRequest {
        protocol_version: o.protocol_version,
        client_version: o.client_version.chars().take(64).collect(),
        direction,
        path: path(&o.path)?,
        params,
        transport: TransportChoice::parse(&o.transport)?,
        tcp_streams: o.tcp_streams,
        tcp_buffer_bytes: o.tcp_buffer_bytes,
        events: o.events,
        client_rdma: o.client_rdma.as_ref().map(rdma_device_from_pb).transpose()?,
        rdma_qps: o.rdma_qps,
        stall_timeout_secs: o.stall_timeout_secs,
        rdma_frame_checksums: o.rdma_frame_checksums,
        rdma_event_cq: o.rdma_event_cq,
        wait_lock: o.wait_lock,
        tcp_zero_copy: o.tcp_zero_copy,
        single_file: o.single_file,
    })
}

pub fn rdma_device_to_pb(d: &RdmaDeviceInfo) -> pb::RdmaDevice {
    pb::RdmaDevice {
        name: d.name.clone(),
        active: d.active,
        gid: d.gid.to_vec(),
        gid_index: d.gid_index,
        link_gbps: d.link_gbps,
        numa_node: d.numa_node.map(|n| n as i32).unwrap_or(-1),
        ipv4: d.ipv4.map(|(a, _)| a.octets().to_vec()).unwrap_or_default(),
        ipv4_prefix_len: d.ipv4.map(|(_, l)| u32::from(l)).unwrap_or(0),
    }
}

pub fn rdma_device_from_pb(d: &pb::RdmaDevice) -> Result<RdmaDeviceInfo, ConvertError> {
    Ok(RdmaDeviceInfo {
        name: d.name.chars().take(64).collect(),
        active: d.active,
        gid: d.gid.as_slice().try_into().map_err(|_| bad("GID must be 16 bytes"))?,
        gid_index: d.gid_index,
        link_gbps: d.link_gbps,
        numa_node: u32::try_from(d.numa_node).ok(),
        ipv4: match d.ipv4.len() {
            0 => None,
            4 => {
                let o: [u8; 4] = d.ipv4.as_slice().try_into().map_err(|_| bad("bad IPv4"))?;
                let len = u8::try_from(d.ipv4_prefix_len)
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| bad("bad prefix length"))?;
                Some((std::net::Ipv4Addr::from(o), len))
            }
            _ => return Err(bad("IPv4 address must be 4 bytes")),
        },
    })
}

fn qp_to_pb(q: &blitx_transport_rdma::RemoteQpParams) -> pb::QpParams {
    pb::QpParams {
        qpn: q.qpn,
        psn: q.psn,
        gid: q.gid.to_bytes().to_vec(),
        gid_index: q.gid_index,
        mtu: q.mtu as u32,
        lid: u32::from(q.lid),
    }
}

fn qp_from_pb(q: &pb::QpParams) -> Result<blitx_transport_rdma::RemoteQpParams, ConvertError> {
    let gid: [u8; 16] = q.gid.as_slice().try_into().map_err(|_| bad("GID must be 16 bytes"))?;
    let p = blitx_transport_rdma::RemoteQpParams {
        qpn: q.qpn,
        psn: q.psn,
        gid: blitx_transport_rdma::Gid::from_bytes(gid),
        gid_index: q.gid_index,
        lid: u16::try_from(q.lid).map_err(|_| bad("LID out of range"))?,
        mtu: blitx_transport_rdma::Mtu::from_raw(q.mtu).ok_or_else(|| bad("unknown MTU"))?,
    };
    // Link-layer-specific checks (LID vs GID) happen when the local side connects, against its
    // own port (`ReceiverSetup::connect` / `SenderSetup::connect` validate the peer's set-up).
    Ok(p)
}

/// Largest number of QPs a peer may describe.
const QPS_PEER_MAX: usize = 64;

pub fn rdma_peer_to_pb(p: &RdmaPeer) -> pb::RdmaEndpoint {
    match p {
        RdmaPeer::Receiver(r) => pb::RdmaEndpoint {
            qps: r.qps.iter().map(qp_to_pb).collect(),
            ring: Some(pb::RdmaRing {
                addr: r.ring.addr,
                rkey: r.ring.rkey,
                slot_bytes: r.slot_bytes,
                slots: r.slots,
                len_bytes: r.ring.len_bytes,
            }),
            chunk_bytes: r.chunk_bytes,
            ready: false,
        },
        RdmaPeer::Sender(s) => pb::RdmaEndpoint {
            qps: s.qps.iter().map(qp_to_pb).collect(),
            ring: None,
            chunk_bytes: s.chunk_bytes,
            ready: false,
        },
        RdmaPeer::Ready => {
            pb::RdmaEndpoint { qps: Vec::new(), ring: None, chunk_bytes: 0, ready: true }
        }
    }
}

pub fn rdma_peer_from_pb(e: &pb::RdmaEndpoint) -> Result<RdmaPeer, ConvertError> {
    if e.ready {
        return Ok(RdmaPeer::Ready);
    }
    if e.qps.is_empty() || e.qps.len() > QPS_PEER_MAX {
        return Err(bad("RDMA endpoint with no or too many QPs"));
    }
    let qps = e.qps.iter().map(qp_from_pb).collect::<Result<Vec<_>, _>>()?;
    Ok(match &e.ring {
        Some(r) => RdmaPeer::Receiver(blitx_transport_rdma::ReceiverInfo {
            qps,
            ring: blitx_transport_rdma::RemoteRegion {
                addr: r.addr,
                len_bytes: r.len_bytes,
                rkey: r.rkey,
            },
            slot_bytes: r.slot_bytes,
            slots: r.slots,
            chunk_bytes: e.chunk_bytes,
        }),
        None => {
            RdmaPeer::Sender(blitx_transport_rdma::SenderInfo { qps, chunk_bytes: e.chunk_bytes })
        }
    })
}

pub fn client_rdma(p: &RdmaPeer) -> pb::ClientFrame {
    pb::ClientFrame { msg: Some(pb::client_frame::Msg::Rdma(rdma_peer_to_pb(p))) }
}

pub fn server_rdma(p: &RdmaPeer) -> pb::ServerFrame {
    pb::ServerFrame { msg: Some(pb::server_frame::Msg::Rdma(rdma_peer_to_pb(p))) }
}

pub fn accept_to_pb(a: &Accepted) -> pb::ServerFrame {
    pb::ServerFrame {
        msg: Some(pb::server_frame::Msg::Accept(pb::Accept {
            protocol_version: a.protocol_version,
            server_version: a.server_version.clone(),
            transport: a.transport.clone(),
            reason: a.reason.clone(),
            tcp: a.tcp.as_ref().map(|t| pb::TcpEndpoint {
                addr: t.addr.to_string(),
                token: t.token.to_vec(),
                streams: t.streams,
                buffer_bytes: t.buffer_bytes,
            }),
            rdma: a.rdma.as_ref().map(rdma_peer_to_pb),
            single_file: a.single_file,
        })),
    }
}

pub fn accept_from_pb(a: &pb::Accept) -> Result<Accepted, ConvertError> {
    let tcp = match &a.tcp {
        None => None,
        Some(t) => Some(TcpEndpoint {
            addr: t.addr.parse().map_err(|_| bad(format!("bad data address {:?}", t.addr)))?,
            token: t
                .token
                .as_slice()
                .try_into()
                .map_err(|_| bad("session token must be 32 bytes"))?,
            streams: t.streams,
            buffer_bytes: t.buffer_bytes,
        }),
    };
    Ok(Accepted {
        protocol_version: a.protocol_version,
        server_version: a.server_version.chars().take(64).collect(),
        transport: a.transport.chars().take(16).collect(),
        reason: a.reason.chars().take(1024).collect(),
        tcp,
        rdma: a.rdma.as_ref().map(rdma_peer_from_pb).transpose()?,
        single_file: a.single_file,
    })
}

fn code_to_pb(code: ErrorCode) -> pb::ErrorCode {
    match code {
        ErrorCode::VersionMismatch => pb::ErrorCode::VersionMismatch,
        ErrorCode::BadPath => pb::ErrorCode::BadPath,
        ErrorCode::ReadOnly => pb::ErrorCode::ReadOnly,
        ErrorCode::TransportUnavailable => pb::ErrorCode::TransportUnavailable,
        ErrorCode::BadRequest => pb::ErrorCode::BadRequest,
        ErrorCode::Internal => pb::ErrorCode::Internal,
        ErrorCode::ResourceExhausted => pb::ErrorCode::ResourceExhausted,
        ErrorCode::TargetLocked => pb::ErrorCode::TargetLocked,
        ErrorCode::IdleTimeout => pb::ErrorCode::IdleTimeout,
        ErrorCode::ProtocolViolation => pb::ErrorCode::ProtocolViolation,
        ErrorCode::Stalled => pb::ErrorCode::Stalled,
    }
}

fn code_from_pb(code: i32) -> ErrorCode {
    match pb::ErrorCode::try_from(code) {
        Ok(pb::ErrorCode::VersionMismatch) => ErrorCode::VersionMismatch,
        Ok(pb::ErrorCode::BadPath) => ErrorCode::BadPath,
        Ok(pb::ErrorCode::ReadOnly) => ErrorCode::ReadOnly,
        Ok(pb::ErrorCode::TransportUnavailable) => ErrorCode::TransportUnavailable,
        Ok(pb::ErrorCode::BadRequest) => ErrorCode::BadRequest,
        Ok(pb::ErrorCode::ResourceExhausted) => ErrorCode::ResourceExhausted,
        Ok(pb::ErrorCode::TargetLocked) => ErrorCode::TargetLocked,
        Ok(pb::ErrorCode::IdleTimeout) => ErrorCode::IdleTimeout,
        Ok(pb::ErrorCode::ProtocolViolation) => ErrorCode::ProtocolViolation,
        Ok(pb::ErrorCode::Stalled) => ErrorCode::Stalled,
        _ => ErrorCode::Internal,
    }
}

pub fn error_to_pb(e: &RemoteError) -> pb::ServerFrame {
    pb::ServerFrame {
        msg: Some(pb::server_frame::Msg::Error(pb::Error {
            code: code_to_pb(e.code) as i32,
            message: e.message.clone(),
        })),
    }
}

pub fn error_from_pb(e: &pb::Error) -> RemoteError {
    RemoteError { code: code_from_pb(e.code), message: e.message.chars().take(4096).collect() }
}

// ----- manifest

fn kind_to_pb(k: EntryKind) -> i32 {
    (match k {
        EntryKind::File => pb::EntryKind::File,
        EntryKind::Dir => pb::EntryKind::Dir,
        EntryKind::Symlink => pb::EntryKind::Symlink,
        EntryKind::Special => pb::EntryKind::Special,
    }) as i32
}

fn kind_from_pb(k: i32) -> Result<EntryKind, ConvertError> {
    Ok(match pb::EntryKind::try_from(k) {
        Ok(pb::EntryKind::File) => EntryKind::File,
        Ok(pb::EntryKind::Dir) => EntryKind::Dir,
        Ok(pb::EntryKind::Symlink) => EntryKind::Symlink,
        Ok(pb::EntryKind::Special) => EntryKind::Special,
        Err(_) => return Err(bad("unknown entry kind")),
    })
}

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id,
        path: e.path.as_bytes().to_vec(),
        kind: kind_to_pb(e.kind),
        size_bytes: e.size_bytes,
        mtime: Some(pb::Timestamp { sec: e.mtime.sec, nsec: e.mtime.nsec }),
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        link_target: e.link_target.clone(),
        inode: e.inode.map(|k| pb::InodeKey { dev: k.dev, ino: k.ino }),
        sparse: e.sparse,
        content_hash: e.content_hash.map(|h| h.to_le_bytes().to_vec()),
        xattrs: e
            .xattrs
            .iter()
            .map(|x| pb::MetaXattr { name: x.name.clone(), value: x.value.clone() })
            .collect(),
        special: special_to_pb(e.special) as i32,
        rdev: match e.special {
            Some(Special::Char { rdev } | Special::Block { rdev }) => rdev,
            _ => 0,
        },
    }
}

fn special_to_pb(s: Option<Special>) -> pb::MetaSpecial {
    match s {
        None => pb::MetaSpecial::None,
        Some(Special::Fifo) => pb::MetaSpecial::Fifo,
        Some(Special::Socket) => pb::MetaSpecial::Socket,
        Some(Special::Char { .. }) => pb::MetaSpecial::Char,
        Some(Special::Block { .. }) => pb::MetaSpecial::Block,
    }
}

fn special_from_pb(kind: EntryKind, s: i32, rdev: u64) -> Result<Option<Special>, ConvertError> {
    let special = match pb::MetaSpecial::try_from(s) {
        Ok(pb::MetaSpecial::None) => None,
        Ok(pb::MetaSpecial::Fifo) => Some(Special::Fifo),
        Ok(pb::MetaSpecial::Socket) => Some(Special::Socket),
        Ok(pb::MetaSpecial::Char) => Some(Special::Char { rdev }),
        Ok(pb::MetaSpecial::Block) => Some(Special::Block { rdev }),
        Err(_) => return Err(bad("unknown special file type")),
    };
    if special.is_some() != (kind == EntryKind::Special) {
        return Err(bad(
            "a special file type on an entry that is not special (or none on one that is)",
        ));
    }
    if rdev != 0 && !special.is_some_and(Special::is_device) {
        return Err(bad("a device number on an entry that is not a device"));
    }
    Ok(special)
}

/// A peer's attributes, checked against the bounds of [`check_xattrs`] (sizes are checked
/// before anything is copied).
fn xattrs_from_pb(xs: &[pb::MetaXattr]) -> Result<Vec<Xattr>, ConvertError> {
    let fail = |e: blitx_core::manifest::XattrError| bad(e.to_string());
    if xs.len() > XATTRS_PER_ENTRY_MAX {
        return Err(fail(blitx_core::manifest::XattrError::TooMany));
    }
    let total: usize = xs.iter().map(|x| x.name.len() + x.value.len()).sum();
    if total > XATTR_ENTRY_BYTES_MAX {
        return Err(fail(blitx_core::manifest::XattrError::TooBig));
    }
    let out: Vec<Xattr> =
        xs.iter().map(|x| Xattr { name: x.name.clone(), value: x.value.clone() }).collect();
    check_xattrs(&out).map_err(fail)?;
    Ok(out)
}

pub fn entry_from_pb(e: &pb::Entry) -> Result<Entry, ConvertError> {
    let kind = kind_from_pb(e.kind)?;
    let mtime =
        e.mtime.as_ref().map(|t| Timestamp { sec: t.sec, nsec: t.nsec }).unwrap_or_default();
    if mtime.nsec >= 1_000_000_000 {
        return Err(bad("mtime nanoseconds out of range"));
    }
    // A file size is an off_t: anything above i64::MAX cannot exist, and would overflow the
    // target's offset arithmetic.
    if e.size_bytes > i64::MAX as u64 {
        return Err(bad(format!("file size {} is beyond any file system's limit", e.size_bytes)));
    }
    if kind == EntryKind::Symlink && e.link_target.is_none() {
        return Err(bad("symlink without a target"));
    }
    if e.link_target
        .as_ref()
        .is_some_and(|t| t.len() > blitx_core::path::PATH_BYTES_MAX || t.contains(&0))
    {
        return Err(bad("bad symlink target"));
    }
    let content_hash = match &e.content_hash {
        None => None,
        Some(h) => Some(u128::from_le_bytes(
            h.as_slice().try_into().map_err(|_| bad("content hash must be 16 bytes"))?,
        )),
    };
    Ok(Entry {
        id: e.id,
        path: path(&e.path)?,
        kind,
        size_bytes: e.size_bytes,
        mtime,
        mode: e.mode & 0o7777,
        uid: e.uid,
        gid: e.gid,
        link_target: e.link_target.clone(),
        inode: e.inode.as_ref().map(|k| InodeKey { dev: k.dev, ino: k.ino }),
        sparse: e.sparse,
        content_hash,
        xattrs: xattrs_from_pb(&e.xattrs)?,
        special: special_from_pb(kind, e.special, e.rdev)?,
    })
}

pub fn source_msg_to_pb(m: &SourceMsg) -> pb::SourceMsg {
    use pb::source_msg::Msg;
    let msg = match m {
        SourceMsg::Root(e) => Msg::Root(entry_to_pb(e)),
        SourceMsg::Listing { seq, dir, entries, last_part } => Msg::Listing(pb::Listing {
            seq: *seq,
            dir: dir.as_bytes().to_vec(),
            entries: entries.iter().map(entry_to_pb).collect(),
            last_part: *last_part,
        }),
        SourceMsg::WalkError { path, message } => Msg::WalkError(pb::WalkError {
            path: path.as_bytes().to_vec(),
            message: message.clone(),
        }),
        SourceMsg::ManifestEnd => Msg::ManifestEnd(pb::Empty {}),
        SourceMsg::FileFailed { id, path, message } => Msg::FileFailed(pb::FileFailed {
            id: *id,
            path: path.as_bytes().to_vec(),
            message: message.clone(),
        }),
        SourceMsg::FileRead { id } => Msg::FileRead(pb::FileRead { id: *id }),
        SourceMsg::DataEnd => Msg::DataEnd(pb::Empty {}),
    };
    pb::SourceMsg { msg: Some(msg) }
}

pub fn source_msg_from_pb(m: &pb::SourceMsg) -> Result<SourceMsg, ConvertError> {
    use pb::source_msg::Msg;
    Ok(match m.msg.as_ref().ok_or_else(|| bad("empty source message"))? {
        Msg::Root(e) => SourceMsg::Root(entry_from_pb(e)?),
        Msg::Listing(l) => {
            let dir = path(&l.dir)?;
            if l.entries.len() > blitx_storage::walk::LISTING_ENTRIES_MAX {
                return Err(bad("listing part too long"));
            }
            let mut entries = Vec::with_capacity(l.entries.len());
            for e in &l.entries {
                let e = entry_from_pb(e)?;
                // Every entry must be a direct child of the listed directory.
                match e.path.split_last() {
                    Some((parent, _)) if parent == dir => entries.push(e),
                    _ => return Err(bad(format!("entry {} is not in directory {dir}", e.path))),
                }
            }
            SourceMsg::Listing { seq: l.seq, dir, entries, last_part: l.last_part }
        }
        Msg::WalkError(w) => {
            SourceMsg::WalkError { path: path(&w.path)?, message: w.message.clone() }
        }
        Msg::ManifestEnd(_) => SourceMsg::ManifestEnd,
        Msg::FileFailed(f) => {
            SourceMsg::FileFailed { id: f.id, path: path(&f.path)?, message: f.message.clone() }
        }
        Msg::FileRead(f) => SourceMsg::FileRead { id: f.id },
        Msg::DataEnd(_) => SourceMsg::DataEnd,
    })
}

pub fn target_msg_to_pb(m: &TargetMsg) -> pb::TargetMsg {
    use pb::target_msg::Msg;
    let msg = match m {
        TargetMsg::Need { listing, ids, offers } => Msg::Need(pb::Need {
            ids: ids.clone(),
            listing: *listing,
            offers: offers
                .iter()
                .map(|o| pb::Offer {
                    id: o.id,
                    chunks: o.chunks.iter().map(|&(i, _)| i).collect(),
                    hashes: o.chunks.iter().map(|&(_, h)| h).collect(),
                })
                .collect(),
        }),
        TargetMsg::NeedEnd => Msg::NeedEnd(pb::Empty {}),
        TargetMsg::Signature { id, part } => {
            Msg::Signature(pb::Signature { id: *id, part: part.clone() })
        }
        TargetMsg::Committed { ids, last } => {
            Msg::Committed(pb::SingleCommitted { ids: ids.clone(), last: *last })
        }
    };
    pb::TargetMsg { msg: Some(msg) }
}

pub fn target_msg_from_pb(m: &pb::TargetMsg) -> Result<TargetMsg, ConvertError> {
    use pb::target_msg::Msg;
    Ok(match m.msg.as_ref().ok_or_else(|| bad("empty target message"))? {
        Msg::Need(n) => {
            let mut offers = Vec::with_capacity(n.offers.len().min(n.ids.len()));
            for o in &n.offers {
                if o.chunks.len() != o.hashes.len() {
                    return Err(bad("an offer's chunks and hashes differ in number"));
                }
                offers.push(Offer {
                    id: o.id,
                    chunks: o.chunks.iter().copied().zip(o.hashes.iter().copied()).collect(),
                });
            }
            TargetMsg::Need { listing: n.listing, ids: n.ids.clone(), offers }
        }
        Msg::NeedEnd(_) => TargetMsg::NeedEnd,
        Msg::Signature(sg) => TargetMsg::Signature { id: sg.id, part: sg.part.clone() },
        Msg::Committed(c) => {
            if c.ids.len() > blitx_core::session::COMMITTED_IDS_MAX {
                return Err(bad(format!(
                    "a committed list of {} ids (at most {})",
                    c.ids.len(),
                    blitx_core::session::COMMITTED_IDS_MAX
                )));
            }
            TargetMsg::Committed { ids: c.ids.clone(), last: c.last }
        }
    })
}

// ----- events and summaries

fn event_kind_to_pb(k: EventKind) -> i32 {
    (match k {
        EventKind::Copied => pb::EventKind::Copied,
        EventKind::MetaUpdated => pb::EventKind::MetaUpdated,
        EventKind::DirCreated => pb::EventKind::DirCreated,
        EventKind::Symlinked => pb::EventKind::Symlinked,
        EventKind::SpecialMade => pb::EventKind::SpecialMade,
        EventKind::Hardlinked => pb::EventKind::Hardlinked,
        EventKind::Deleted => pb::EventKind::Deleted,
        EventKind::Unsupported => pb::EventKind::Unsupported,
        EventKind::Failed => pb::EventKind::Failed,
    }) as i32
}

pub fn event_to_pb(e: &Event) -> pb::Event {
    pb::Event {
        kind: event_kind_to_pb(e.kind),
        path: e.path.as_bytes().to_vec(),
        bytes: e.bytes,
        message: e.message.clone(),
        changes: e.changes.bits(),
    }
}

pub fn event_from_pb(e: &pb::Event) -> Result<Event, ConvertError> {
    let kind = match pb::EventKind::try_from(e.kind) {
        Ok(pb::EventKind::Copied) => EventKind::Copied,
        Ok(pb::EventKind::MetaUpdated) => EventKind::MetaUpdated,
        Ok(pb::EventKind::DirCreated) => EventKind::DirCreated,
        Ok(pb::EventKind::Symlinked) => EventKind::Symlinked,
        Ok(pb::EventKind::SpecialMade) => EventKind::SpecialMade,
        Ok(pb::EventKind::Hardlinked) => EventKind::Hardlinked,
        Ok(pb::EventKind::Deleted) => EventKind::Deleted,
        Ok(pb::EventKind::Unsupported) => EventKind::Unsupported,
        Ok(pb::EventKind::Failed) => EventKind::Failed,
        Err(_) => return Err(bad("unknown event kind")),
    };
    Ok(Event {
        kind,
        path: path(&e.path)?,
        bytes: e.bytes,
        message: e.message.clone(),
        // Unknown bits dropped (both ends speak the same version, so 0 means nothing changed).
        changes: blitx_core::itemize::Changes::from_bits(e.changes),
    })
}

fn errors_to_pb(errors: &[FileError]) -> Vec<pb::FileError> {
    errors
        .iter()
        .map(|e| pb::FileError { path: e.path.as_bytes().to_vec(), message: e.message.clone() })
        .collect()
}

pub fn target_summary_to_pb(t: &TargetReport) -> pb::ServerFrame {
    summary_frame(pb::Summary {
        files_copied: t.files_copied,
        bytes_copied: t.bytes_copied,
        meta_updated: t.meta_updated,
        dirs_created: t.dirs_created,
        symlinks: t.symlinks,
        hardlinks: t.hardlinks,
        deleted: t.deleted,
        unsupported: t.unsupported,
        specials: t.specials,
        xattrs_dropped: t.xattrs_dropped,
        deletions_skipped: t.deletions_skipped,
        bytes_reused: t.bytes_reused,
        signature_bytes: t.signature_bytes,
        errors: errors_to_pb(&t.errors),
        error_count: t.error_count,
        ..Default::default()
    })
}

pub fn source_summary_to_pb(s: &SourceReport) -> pb::ServerFrame {
    summary_frame(pb::Summary {
        entries: s.entries,
        dirs: s.dirs,
        source_bytes: s.source_bytes,
        files_sent: s.files_sent,
        bytes_sent: s.bytes_sent,
        bytes_reused: s.bytes_reused,
        errors: errors_to_pb(&s.errors),
        error_count: s.error_count,
        files_removed: s.files_removed,
        files_kept: s.files_kept,
        ..Default::default()
    })
}

pub fn fatal_summary_to_pb(fatal: &RemoteError) -> pb::ServerFrame {
    summary_frame(pb::Summary {
        fatal: fatal.message.clone(),
        fatal_code: code_to_pb(fatal.code) as i32,
        error_count: 1,
        ..Default::default()
    })
}

fn summary_frame(s: pb::Summary) -> pb::ServerFrame {
    pb::ServerFrame { msg: Some(pb::server_frame::Msg::Summary(s)) }
}

pub fn summary_from_pb(s: &pb::Summary) -> Result<RemoteSummary, ConvertError> {
    let mut errors = Vec::with_capacity(s.errors.len().min(blitx_storage::report::ERRORS_KEPT_MAX));
    for e in s.errors.iter().take(blitx_storage::report::ERRORS_KEPT_MAX) {
        errors.push(FileError { path: path(&e.path)?, message: e.message.clone() });
    }
    Ok(RemoteSummary {
        target: TargetReport {
            files_copied: s.files_copied,
            bytes_copied: s.bytes_copied,
            meta_updated: s.meta_updated,
            dirs_created: s.dirs_created,
            symlinks: s.symlinks,
            hardlinks: s.hardlinks,
            deleted: s.deleted,
            unsupported: s.unsupported,
            specials: s.specials,
            xattrs_dropped: s.xattrs_dropped,
            deletions_skipped: s.deletions_skipped,
            bytes_reused: s.bytes_reused,
            signature_bytes: s.signature_bytes,
            errors: errors.clone(),
            error_count: s.error_count,
        },
        source: SourceReport {
            entries: s.entries,
            dirs: s.dirs,
            source_bytes: s.source_bytes,
            files_sent: s.files_sent,
            bytes_sent: s.bytes_sent,
            bytes_reused: s.bytes_reused,
            errors,
            error_count: s.error_count,
            files_removed: s.files_removed,
            files_kept: s.files_kept,
        },
        fatal: (!s.fatal.is_empty()).then(|| RemoteError {
            code: code_from_pb(s.fatal_code),
            message: s.fatal.chars().take(4096).collect(),
        }),
    })
}

// ----- frame wrappers

pub fn client_source(m: &SourceMsg) -> pb::ClientFrame {
    pb::ClientFrame { msg: Some(pb::client_frame::Msg::Source(source_msg_to_pb(m))) }
}

pub fn client_target(m: &TargetMsg) -> pb::ClientFrame {
    pb::ClientFrame { msg: Some(pb::client_frame::Msg::Target(target_msg_to_pb(m))) }
}

pub fn server_source(m: &SourceMsg) -> pb::ServerFrame {
    pb::ServerFrame { msg: Some(pb::server_frame::Msg::Source(source_msg_to_pb(m))) }
}

pub fn server_target(m: &TargetMsg) -> pb::ServerFrame {
    pb::ServerFrame { msg: Some(pb::server_frame::Msg::Target(target_msg_to_pb(m))) }
}

pub fn server_events(events: &[Event]) -> pb::ServerFrame {
    pb::ServerFrame {
        msg: Some(pb::server_frame::Msg::Events(pb::Events {
            events: events.iter().map(event_to_pb).collect(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            id: 9,
            path: RelPath::parse_str("d/f").unwrap(),
            kind: EntryKind::File,
            size_bytes: 10,
            mtime: Timestamp { sec: 5, nsec: 7 },
            mode: 0o644,
            uid: 1,
            gid: 2,
            link_target: None,
            inode: Some(InodeKey { dev: 3, ino: 4 }),
            sparse: true,
            content_hash: Some(u128::MAX - 3),
            xattrs: Vec::new(),
            special: None,
        }
    }

    /// Found by the control_messages fuzzer: a decoder that read 0 as "the kind's default"
    /// turned an event that changed nothing into a new file on its way back.
    #[test]
    fn itemized_events_round_trip_whatever_they_changed() {
        use blitx_core::itemize::Changes;
        for changes in [
            Changes::default(),
            Changes::new(EntryKind::File, Changes::NEW),
            Changes::new(EntryKind::Dir, Changes::TIME | Changes::PERMS),
            Changes::from_bits(u32::MAX),
        ] {
            let e = Event {
                kind: EventKind::Copied,
                path: RelPath::root(),
                bytes: 0,
                message: None,
                changes,
            };
            assert_eq!(event_from_pb(&event_to_pb(&e)).unwrap(), e);
        }
        let hostile = pb::Event {
            changes: u32::MAX,
            ..event_to_pb(&Event {
                kind: EventKind::Deleted,
                path: RelPath::root(),
                bytes: 0,
                message: None,
                changes: Changes::default(),
            })
        };
        assert_eq!(event_from_pb(&hostile).unwrap().changes.bits() & !0x3fff, 0);
    }

    #[test]
    fn filters_round_trip_and_bad_ones_are_refused() {
        let filter = FilterParams {
            rules: vec![Rule::include("*/"), Rule::include("*.c"), Rule::exclude("*")],
            min_size_bytes: Some(1),
            max_size_bytes: None,
            delete_excluded: true,
            files_from: Some(vec![RelPath::parse_str("a/b").unwrap()]),
        };
        let params = SessionParams { filter: Box::new(filter), ..SessionParams::default() };
        assert_eq!(params_from_pb(&params_to_pb(&params)).unwrap(), params);
        let mut pb = params_to_pb(&params);
        pb.filters_rules[0].pattern = "[x".into();
        assert!(params_from_pb(&pb).is_err());
        let mut pb = params_to_pb(&params);
        pb.filters_files_from = Some(pb::FiltersFilesFrom { paths: vec![b"../x".to_vec()] });
        assert!(params_from_pb(&pb).is_err());
        let mut pb = params_to_pb(&params);
        pb.filters_rules[1].kind = 0;
        assert!(params_from_pb(&pb).is_err());
    }

    #[test]
    fn entries_round_trip() {
        let e = entry();
        assert_eq!(entry_from_pb(&entry_to_pb(&e)).unwrap(), e);
        let m = SourceMsg::Listing {
            seq: 7,
            dir: RelPath::parse_str("d").unwrap(),
            entries: vec![e],
            last_part: true,
        };
        assert_eq!(source_msg_from_pb(&source_msg_to_pb(&m)).unwrap(), m);
    }

    #[test]
    fn hostile_messages_are_refused() {
        let mut p = entry_to_pb(&entry());
        p.path = b"../../etc/passwd".to_vec();
        assert!(entry_from_pb(&p).is_err());
        let mut p = entry_to_pb(&entry());
        p.path = b"/etc/passwd".to_vec();
        assert!(entry_from_pb(&p).is_err());
        let mut p = entry_to_pb(&entry());
        p.content_hash = Some(vec![1, 2, 3]);
        assert!(entry_from_pb(&p).is_err());
        // Row 4 of the hardening review: a declared 2^64-1-byte file aborted the daemon.
        let mut p = entry_to_pb(&entry());
        p.size_bytes = u64::MAX;
        assert!(entry_from_pb(&p).is_err());
        p.size_bytes = 1 << 62;
        assert!(entry_from_pb(&p).is_ok());
        // An entry outside its listing's directory.
        let l = pb::SourceMsg {
            msg: Some(pb::source_msg::Msg::Listing(pb::Listing {
                seq: 0,
                dir: b"a".to_vec(),
                entries: vec![entry_to_pb(&entry())],
                last_part: true,
            })),
        };
        assert!(source_msg_from_pb(&l).is_err());
        assert!(source_msg_from_pb(&pb::SourceMsg { msg: None }).is_err());
        let mut params = params_to_pb(&SessionParams::default());
        params.chunk_bytes = 3;
        assert!(params_from_pb(&params).is_err());
    }

    /// Issue 19: a peer's attributes and special types within the bounds round-trip; beyond
    /// them, or inconsistent, they are refused before anything is held.
    #[test]
    fn metadata_round_trips_and_hostile_metadata_is_refused() {
        let x =
            |n: &str, v: &[u8]| pb::MetaXattr { name: n.as_bytes().to_vec(), value: v.to_vec() };
        let mut e = entry();
        e.xattrs = vec![
            Xattr { name: b"system.posix_acl_access".to_vec(), value: vec![2, 0, 0, 0] },
            Xattr { name: b"user.a".to_vec(), value: vec![0; 65536] },
        ];
        assert_eq!(entry_from_pb(&entry_to_pb(&e)).unwrap(), e);
        let mut dev = Entry { kind: EntryKind::Special, size_bytes: 0, ..entry() };
        for s in [
            Special::Fifo,
            Special::Socket,
            Special::Char { rdev: 259 },
            Special::Block { rdev: 2048 },
        ] {
            dev.special = Some(s);
            assert_eq!(entry_from_pb(&entry_to_pb(&dev)).unwrap(), dev);
        }
        let bad: Vec<Vec<pb::MetaXattr>> = vec![
            (0..129).map(|i| x(&format!("user.{i:03}"), b"")).collect(),
            (0..5).map(|i| x(&format!("user.{i}"), &[0; 60_000])).collect(),
            vec![x("user.v", &[0; 65537])],
            vec![x(&"u".repeat(256), b"")],
            vec![x("", b"")],
            vec![x("user.a\0b", b"")],
            vec![x("user.b", b""), x("user.a", b"")],
            vec![x("user.a", b"1"), x("user.a", b"2")],
        ];
        for xs in bad {
            let mut p = entry_to_pb(&entry());
            p.xattrs = xs;
            assert!(entry_from_pb(&p).is_err());
        }
        let mut p = entry_to_pb(&entry());
        p.special = pb::MetaSpecial::Fifo as i32;
        assert!(entry_from_pb(&p).is_err(), "a file with a special type");
        let mut p = entry_to_pb(&Entry { special: Some(Special::Fifo), ..dev.clone() });
        p.rdev = 1;
        assert!(entry_from_pb(&p).is_err(), "a FIFO with a device number");
        p.rdev = 0;
        p.special = 77;
        assert!(entry_from_pb(&p).is_err(), "an unknown special type");
        let mut params = SessionParams { xattrs: false, ..SessionParams::default() };
        assert_eq!(params_from_pb(&params_to_pb(&params)).unwrap(), params);
        params.acls = false;
        assert_eq!(params_from_pb(&params_to_pb(&params)).unwrap(), params);
    }
}
