//! Machine topology and NUMA placement for blit.
//!
//! On a two-socket server a 100 Gb/s NIC is attached to one socket; a worker thread or buffer
//! on the other socket pushes every byte over the inter-socket link twice (DMA into remote
//! memory, then a remote read), commonly reported to cost 10–30 % of throughput. This crate
//! finds out where things are and keeps the data path on one node.
//!
//! - **Discovery** ([`Topology::discover`]): packages, NUMA nodes (CPUs, memory, distances)
//!   from hwloc; NICs, RDMA/verbs devices and block devices with their NUMA node from sysfs.
//!   Serializable (`blit topo --json`) and `Display` (`blit topo`).
//! - **Placement, pure** ([`place`]): from a [`Topology`], a [`NumaPolicy`] (`--numa
//!   auto|off|node=N`) and a device name, a [`Placement`] — node, CPUs and the reason.
//! - **Applying it, best effort** ([`enter_placement`]): on the thread that starts a transfer
//!   (the CLI's main thread, a daemon session's thread) it applies the node's CPU set and
//!   preferred node to that thread and enters a [`NodePlacer`] — the `blitx_core::placer`
//!   hook — there, so each worker the storage and transport crates start is pinned to one CPU
//!   of the node, and each buffer pool is bound to the node (hwloc area binding) before it is
//!   touched or registered. Nothing here can fail a transfer: docs/numa.md.
//! - Helpers for finding the device: [`interface_for_peer`] (which NIC routes to the peer) and
//!   [`block_device_of`] (which disk holds a path).
//!
//! ```
//! use blitx_topology::{Devices, Nic, NumaPolicy, Topology, place};
//!
//! // What would `--numa auto` do on a 2-socket server whose 100G NIC hangs off socket 1?
//! let nic = Nic {
//!     name: "ens1f0".into(),
//!     numa_node: Some(1),
//!     speed_mbps: Some(100_000),
//!     operstate: Some("up".into()),
//!     is_virtual: false,
//!     pci: Some("0000:3b:00.0".into()),
//!     lower: Vec::new(),
//! };
//! let topo = Topology::from_synthetic("pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2")?
//!     .with_devices(Devices { nics: vec![nic], ..Devices::default() });
//! let policy: NumaPolicy = "auto".parse()?;
//! let placement = place(&topo, policy, Some("ens1f0"))?;
//! assert_eq!(placement.node, Some(1));
//! assert_eq!(placement.cpus, (8..16).collect::<Vec<u32>>());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `unsafe` is confined to `membind.rs` (raw memory-policy system calls); the root denies it
//! elsewhere.

#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]
// STYLE.md: no unwrap outside tests; unit tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bind;
mod discover;
mod error;
#[allow(unsafe_code)]
mod membind;
mod model;
mod placement;
mod route;
mod sysfs;
mod workers;

pub use bind::{Binder, current_thread_cpus, pin_current_thread};
pub use discover::SYSFS_ROOT;
pub use error::{PlacementError, PolicyParseError, TopologyError};
pub use membind::{
    MembindError, bind_memory, memory_node_of, prefer_node_for_current_thread, try_bind_memory,
};
pub use model::{
    BlockDevice, Devices, Nic, NumaNode, Package, RdmaDevice, RdmaPort, Topology, TopologySource,
    cpu_list,
};
pub use placement::{NumaPolicy, Placement, place};
pub use route::interface_for_peer;
pub use sysfs::block_device_of;
pub use workers::{NodePlacer, enter_placement};

/// Applies a placement to the calling thread: CPU affinity plus preferred memory node. Threads
/// the caller creates afterwards inherit both, so calling this once at the start of a transfer
/// (or of a daemon session) places every worker, buffer and socket the transfer creates.
/// Best effort: returns whether the CPU pinning worked.
pub fn apply_to_current_thread(placement: &Placement) -> bool {
    if placement.node.is_none() && placement.cpus.is_empty() {
        return false;
    }
    let pinned = pin_current_thread(placement);
    if let Some(node) = placement.node {
        prefer_node_for_current_thread(node);
    }
    pinned
}
