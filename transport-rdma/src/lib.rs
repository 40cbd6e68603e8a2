//! blit's RDMA transport, over the verbs crate (`blitx-verbs`).
//!
//! [`RdmaSender`] / [`RdmaReceiver`] implement the core crate's
//! `FrameSender` / `FrameReceiver`: one RDMA WRITE_WITH_IMM per frame into a
//! credited slot of the receiver's registered ring, straight from the
//! sender's registered buffer pool (no user-space copy). Set up with
//! [`SenderSetup`] / [`ReceiverSetup`], whose [`SenderInfo`] /
//! [`ReceiverInfo`] the control plane exchanges (one message each way).
//! [`RdmaPlane`] is the same set-up behind the core's `DataPlane` seam.
//! [`probe`] summarizes the local device for negotiation.
//!
//! This crate has no `unsafe` (`forbid` below): every verbs object, every
//! registration and every post lives in `blitx-verbs`, whose posting
//! functions take only registered-slot types (`LocalSlice`, `PostedLease`)
//! and bounds-checked remote ranges, so the transport cannot hand the NIC
//! memory that is not registered and alive. The verbs types the control
//! plane and the tests use are re-exported here.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// STYLE.md: no unwrap outside tests; unit tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod counters;
mod domain;
mod link;
mod plane;
mod receiver;
mod sender;
pub mod window;
pub mod wire;

pub use blitx_verbs::{
    Access, CHAIN_MAX, Completion, CompletionQueue, Context, CqMode, DeviceInfo, DeviceLimits,
    DeviceSummary, Error, Gid, GidEntry, GidParseError, GidType, LIBRARY_ENV, LinkLayer,
    LocalSlice, MemoryRegion, Mtu, MtuError, OwnedRegion, PortInfo, PortState, ProtectionDomain,
    QpCaps, QpConfig, QpState, QpTimers, QueueKind, QueuePair, REGION_ALIGN_BYTES, RdmaWrite,
    RecvRequest, RemoteQpParams, RemoteRegion, RemoteSlice, Result, SendPayload, SendRequest,
    WRITE_SGE_MAX, WcOpcode, WcStatus, WriteWithImm, discover, imm_from_wire, imm_to_wire,
    lane_count, lane_gbps, link_gbps, memlock_limit_bytes, preload, probe, select_gid_index,
};
pub use config::{
    POOL_BYTES_MAX, POOL_SLOTS_SPARE, QPS_DEFAULT, QPS_MAX, RdmaConfig, ReceiverInfo,
    SIGNAL_INTERVAL_DEFAULT, SIGNAL_INTERVAL_MAX, SLOTS_DEFAULT, SLOTS_MIN, STALL_TIMEOUT_DEFAULT,
    STALL_TIMEOUT_MAX, STALL_TIMEOUT_MIN, SenderInfo,
};
pub use counters::RdmaCounters;
pub use domain::RdmaDomain;
pub use link::rdma_error;
pub use plane::{PeerInfo, RdmaPlane};
pub use receiver::{RdmaReceiver, ReceiverSetup};
pub use sender::{RdmaSender, SenderSetup};
