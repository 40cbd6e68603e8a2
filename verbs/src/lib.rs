//! blit's RDMA verbs layer: the only RDMA code with `unsafe`.
//!
//! - **FFI** (`sys`): libibverbs is loaded at runtime (`dlopen`), so a
//!   binary that links this crate starts on hosts without it; every entry
//!   point then fails with an error for which [`Error::is_unavailable`] is
//!   true, and the caller falls back to TCP.
//! - **Devices** (`device`, `gid`, `sysfs`, `ifaddr`, `probe`): discovery,
//!   ports, GID tables, the summary a control plane negotiates with.
//! - **Objects** (`pd_mr`, `cq`, `queue_pair`): protection domains, memory
//!   registration, completion queues and RC queue pairs with RDMA
//!   WRITE(_WITH_IMM) / SEND / RECV.
//! - **Registered memory** (`pd_mr::OwnedRegion`, `pool_mr`): memory is
//!   always owned together with its registration, and a work request names it
//!   only through a [`LocalSlice`] that one of those owners made and that
//!   keeps it alive; the QP that posts a slice keeps its owner until the QP is
//!   destroyed, so no WR can name memory that is not registered and mapped.
//!   A pool slot is posted as a [`PostedLease`], which gives up access to the
//!   slot's bytes until the caller drops it after the completion.
//! - **Domain** (`domain`): one context + PD per process and the registered
//!   pools kept between sessions.
//!
//! Object graph (each arrow is an `Arc`, so teardown order is always
//! QP → CQ → MR → PD → context, whatever the caller drops first):
//!
//! ```text
//! QueuePair ──► ProtectionDomain ──► Context
//!     ├───────► CompletionQueue ───► Context
//!     └───────► owners of posted memory (OwnedRegion / pool) ──► MemoryRegion ──► ProtectionDomain
//! ```
//!
//! `unsafe` is confined to the modules that own a verbs object or call libc
//! (listed below with `#[allow(unsafe_code)]`); the root denies it everywhere
//! else. Every `unsafe` block carries a `// SAFETY:` comment and every
//! `unsafe fn` a `# Safety` section.

#![deny(unsafe_code)]
#![warn(missing_docs)]
// STYLE.md: no unwrap outside tests; unit tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[allow(unsafe_code)]
mod cq;
#[allow(unsafe_code)]
mod device;
mod domain;
mod error;
mod gid;
#[allow(unsafe_code)]
mod ifaddr;
#[allow(unsafe_code)]
mod pd_mr;
#[allow(unsafe_code)]
mod pool_mr;
mod probe;
#[allow(unsafe_code)]
mod queue_pair;
#[allow(unsafe_code)]
mod sys;
mod sysfs;
mod types;

pub use cq::{Completion, CompletionQueue, CqMode, CqWake, WcOpcode};
pub use device::{Context, DeviceInfo, DeviceLimits, PortInfo, discover, preload};
pub use domain::{Domain, PoolKey};
pub use error::{Error, QueueKind, Result};
pub use gid::{GidEntry, select_gid_index};
pub use pd_mr::{
    LocalSlice, MemoryRegion, OwnedRegion, ProtectionDomain, REGION_ALIGN_BYTES, RemoteRegion,
    RemoteSlice, memlock_limit_bytes,
};
pub use pool_mr::{PostedLease, RegisteredPool};
pub use probe::{DeviceSummary, probe};
pub use queue_pair::{
    CHAIN_MAX, QpCaps, QpConfig, QpState, QpTimers, QueuePair, RdmaWrite, RecvRequest,
    RemoteQpParams, SendPayload, SendRequest, WRITE_SGE_MAX, WriteWithImm,
};
pub use sys::LIBRARY_ENV;
pub use types::{
    Access, Gid, GidParseError, GidType, LinkLayer, Mtu, MtuError, PortState, WcStatus,
    imm_from_wire, imm_to_wire, lane_count, lane_gbps, link_gbps,
};
