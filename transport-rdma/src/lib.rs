//! blit's RDMA verbs layer: device discovery, protection domains, memory
//! registration, completion queues and RC queue pairs with RDMA
//! WRITE_WITH_IMM / SEND / RECV, over a libibverbs that is loaded at runtime.
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

#[allow(unsafe_code)]
mod cq;
#[allow(unsafe_code)]
mod device;
mod error;
mod gid;
#[allow(unsafe_code)]
mod pd_mr;
#[allow(unsafe_code)]
mod queue_pair;
pub mod selftest;
#[allow(unsafe_code)]
mod sys;
mod sysfs;
mod types;

pub use cq::{Completion, CompletionQueue, CqMode, WcOpcode};
pub use device::{Context, DeviceInfo, DeviceLimits, PortInfo, discover};
pub use error::{Error, QueueKind, Result};
pub use gid::{GidEntry, select_gid_index};
pub use pd_mr::{
    LocalSlice, MemoryRegion, OwnedRegion, ProtectionDomain, REGION_ALIGN_BYTES, RemoteRegion,
    RemoteSlice, memlock_limit_bytes,
};
pub use queue_pair::{
    CHAIN_MAX, QpCaps, QpConfig, QpState, QpTimers, QueuePair, RecvRequest, RemoteQpParams,
    SendPayload, SendRequest, WriteWithImm,
};
pub use sys::LIBRARY_ENV;
pub use types::{
    Access, Gid, GidParseError, GidType, LinkLayer, Mtu, MtuError, PortState, WcStatus,
    imm_from_wire, imm_to_wire, lane_count, lane_gbps, link_gbps,
};
