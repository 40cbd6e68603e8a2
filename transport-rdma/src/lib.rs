//! blit's RDMA transport and the verbs layer under it.
//!
//! - **Transport** ([`RdmaSender`] / [`RdmaReceiver`], the core crate's
//!   `FrameSender` / `FrameReceiver`): one RDMA WRITE_WITH_IMM per frame into
//!   a credited slot of the receiver's registered ring, straight from the
//!   sender's registered buffer pool (no user-space copy). Set up with
//!   [`SenderSetup`] / [`ReceiverSetup`], whose [`SenderInfo`] /
//!   [`ReceiverInfo`] the control plane exchanges (one message each way);
//!   [`RdmaPlane`] is the same set-up behind the core's `DataPlane` seam.
//!   [`probe`] summarizes the local device for negotiation.
//! - **Verbs layer**: device discovery, protection domains, memory
//!   registration, completion queues and RC queue pairs with RDMA
//!   WRITE(_WITH_IMM) / SEND / RECV, over a libibverbs loaded at runtime.
//!
//! A binary that links this crate starts on hosts without libibverbs; every
//! entry point then fails with an error for which [`Error::is_unavailable`]
//! is true, and the caller falls back to TCP.
//!
//! Object graph (each arrow is an `Arc`, so teardown order is always
//! QP → CQ → MR → PD → context, whatever the caller drops first):
//!
//! ```text
//! QueuePair ──► ProtectionDomain ──► Context
//!     └───────► CompletionQueue ───► Context
//! MemoryRegion ► ProtectionDomain
//! ```
//!
//! `unsafe` is confined to the modules that own a verbs object (listed below
//! with `#[allow(unsafe_code)]`); the root denies it everywhere else.

#![deny(unsafe_code)]
#![warn(missing_docs)]
// STYLE.md: no unwrap outside tests; unit tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod counters;
#[allow(unsafe_code)]
mod cq;
#[allow(unsafe_code)]
mod device;
mod domain;
mod error;
mod gid;
#[allow(unsafe_code)]
mod ifaddr;
mod link;
#[allow(unsafe_code)]
mod pd_mr;
mod plane;
#[allow(unsafe_code)]
mod pool_mr;
mod probe;
#[allow(unsafe_code)]
mod queue_pair;
mod receiver;
pub mod selftest;
mod sender;
#[allow(unsafe_code)]
mod sys;
mod sysfs;
mod types;
pub mod window;
pub mod wire;

pub use config::{
    POOL_BYTES_MAX, POOL_SLOTS_SPARE, QPS_DEFAULT, QPS_MAX, RdmaConfig, ReceiverInfo,
    SIGNAL_INTERVAL_DEFAULT, SIGNAL_INTERVAL_MAX, SLOTS_DEFAULT, SLOTS_MIN, STALL_TIMEOUT_DEFAULT,
    STALL_TIMEOUT_MAX, STALL_TIMEOUT_MIN, SenderInfo,
};
pub use counters::RdmaCounters;
pub use cq::{Completion, CompletionQueue, CqMode, WcOpcode};
pub use device::{Context, DeviceInfo, DeviceLimits, PortInfo, discover, preload};
pub use domain::RdmaDomain;
pub use error::{Error, QueueKind, Result};
pub use gid::{GidEntry, select_gid_index};
pub use link::rdma_error;
pub use pd_mr::{
    LocalSlice, MemoryRegion, OwnedRegion, ProtectionDomain, REGION_ALIGN_BYTES, RemoteRegion,
    RemoteSlice, memlock_limit_bytes,
};
pub use plane::{PeerInfo, RdmaPlane};
pub use probe::{DeviceSummary, probe};
pub use queue_pair::{
    CHAIN_MAX, QpCaps, QpConfig, QpState, QpTimers, QueuePair, RdmaWrite, RecvRequest,
    RemoteQpParams, SendPayload, SendRequest, WRITE_SGE_MAX, WriteWithImm,
};
pub use receiver::{RdmaReceiver, ReceiverSetup};
pub use sender::{RdmaSender, SenderSetup};
pub use sys::LIBRARY_ENV;
pub use types::{
    Access, Gid, GidParseError, GidType, LinkLayer, Mtu, MtuError, PortState, WcStatus,
    imm_from_wire, imm_to_wire, lane_count, lane_gbps, link_gbps,
};
