//! Per-worker placement: hands each worker thread of a transfer one CPU of the placement's node
//! and binds buffer pools to that node — the [`Placer`] of `blitx-core`, implemented with hwloc.
//!
//! Owns the hand-out order and the "log once" state. The storage and transport crates never see
//! this type: they spawn their workers through `blitx_core::placer::worker` and create pools
//! with `BufferPool`, which call back into whichever [`Placer`] the CLI or the daemon entered
//! on the thread that started the transfer ([`enter_placement`]). It must not choose the node
//! (`placement.rs` does) nor talk to hwloc itself (`bind.rs` does).
//!
//! Round-robin over [`Binder::worker_cpus`]: one hardware thread per core first, so that with
//! as many workers as cores no two share one. One placer per (node, CPUs) in the process
//! ([`NodePlacer::shared`]): concurrent daemon sessions on the same node continue one
//! rotation instead of all starting at the node's first core.

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use blitx_core::placer::{Entered, Placer, WorkerRole};

use crate::bind::{Binder, system_binder};
use crate::model::cpu_list;
use crate::placement::Placement;

/// Distinct (node, CPUs) placements one process keeps placers for; placements are per node, so
/// this is never reached on real machines (8 nodes × a few CPU subsets). Beyond it a new
/// placer is made per call, which only loses the shared rotation.
const SHARED_PLACERS_MAX: usize = 64;

/// Pins workers to single CPUs of one NUMA node and binds pools to it.
pub struct NodePlacer {
    binder: Arc<Binder>,
    node: u32,
    /// Hand-out order (see [`Binder::worker_cpus`]); empty on a memory-only node.
    cpus: Vec<u32>,
    next: AtomicUsize,
    pin_failed: AtomicBool,
    bind_failed: AtomicBool,
}

impl fmt::Debug for NodePlacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodePlacer")
            .field("node", &self.node)
            .field("cpus", &cpu_list(&self.cpus))
            .finish_non_exhaustive()
    }
}

impl NodePlacer {
    /// A placer for `placement` with `binder`; `None` when the placement has no node
    /// (`--numa off`, or `auto` with nothing to follow): then workers keep the affinity they
    /// inherit and pools are left to first touch.
    pub fn new(binder: Arc<Binder>, placement: &Placement) -> Option<Self> {
        let node = placement.node?;
        let cpus = binder.worker_cpus(placement);
        Some(NodePlacer {
            binder,
            node,
            cpus,
            next: AtomicUsize::new(0),
            pin_failed: AtomicBool::new(false),
            bind_failed: AtomicBool::new(false),
        })
    }

    /// The process's placer for `placement` on this machine, shared by every transfer with the
    /// same node and CPUs; `None` as for [`NodePlacer::new`], or when hwloc cannot load.
    pub fn shared(placement: &Placement) -> Option<Arc<Self>> {
        static SHARED: Mutex<Vec<Arc<NodePlacer>>> = Mutex::new(Vec::new());
        let node = placement.node?;
        let binder = Arc::clone(system_binder()?);
        let cpus = binder.worker_cpus(placement);
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = shared.iter().find(|p| p.node == node && p.cpus == cpus) {
            return Some(Arc::clone(p));
        }
        let placer = Arc::new(NodePlacer::new(binder, placement)?);
        if shared.len() < SHARED_PLACERS_MAX {
            shared.push(Arc::clone(&placer));
        }
        Some(placer)
    }

    /// The node pools are bound to.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// The CPUs workers get, in hand-out order.
    pub fn cpus(&self) -> &[u32] {
        &self.cpus
    }

    /// The CPU the next worker gets; `None` when there is none to give (memory-only node).
    pub fn next_cpu(&self) -> Option<u32> {
        if self.cpus.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.cpus[i % self.cpus.len()])
    }

    /// Pins the calling thread, a `role` worker, to the next CPU. Returns the CPU when it
    /// worked; a failure is logged once per placer (at warning) and the thread keeps the
    /// affinity it inherited.
    pub fn pin_worker(&self, role: WorkerRole) -> Option<u32> {
        let cpu = self.next_cpu()?;
        match self.binder.bind_thread(&[cpu]) {
            Ok(()) => {
                tracing::debug!(
                    role = role.name(),
                    tid = rustix::thread::gettid().as_raw_nonzero().get(),
                    cpu,
                    node = self.node,
                    "pinned worker"
                );
                Some(cpu)
            }
            Err(e) => {
                if !self.pin_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "pinning a {role} worker to CPU {cpu} (NUMA node {}) failed ({e}); \
                         workers keep the node's CPU set (logged once)",
                        self.node
                    );
                }
                None
            }
        }
    }

    /// Binds `region` (a fresh pool mapping) to the node. Returns whether it worked; a failure
    /// is logged once per placer (at info when memory policies are unavailable here, else at
    /// warning) and the pages go wherever they are first touched.
    pub fn bind_pool(&self, region: &[UnsafeCell<u8>]) -> bool {
        match self.binder.bind_area(region, self.node) {
            Ok(()) => {
                tracing::debug!(
                    node = self.node,
                    bytes = region.len(),
                    addr = format_args!("{:#x}", region.as_ptr() as usize),
                    "bound buffer pool"
                );
                true
            }
            Err(e) => {
                if !self.bind_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "binding a {}-byte buffer pool to NUMA node {} failed ({e}); its pages \
                         go where they are first touched (logged once)",
                        region.len(),
                        self.node
                    );
                }
                false
            }
        }
    }
}

impl Placer for NodePlacer {
    fn worker_started(&self, role: WorkerRole) {
        self.pin_worker(role);
    }

    fn bind_region(&self, region: &[UnsafeCell<u8>]) {
        self.bind_pool(region);
    }
}

/// Applies `placement` to the calling thread (its whole CPU set and preferred node, see
/// [`crate::apply_to_current_thread`]) and enters its [`NodePlacer`] there, so that every
/// worker this thread starts is pinned to one CPU of the node and every pool it creates is
/// bound to the node, until the guard is dropped. Without a node only the CPU set is applied
/// and no placer is entered.
pub fn enter_placement(placement: &Placement) -> Entered {
    crate::apply_to_current_thread(placement);
    let placer = NodePlacer::shared(placement).map(|p| p as Arc<dyn Placer>);
    blitx_core::placer::enter(placer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(node: Option<u32>, cpus: Vec<u32>) -> Placement {
        Placement { node, cpus, reason: "test".to_owned() }
    }

    fn synthetic() -> Arc<Binder> {
        Arc::new(Binder::synthetic("pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2").unwrap())
    }

    #[test]
    fn no_node_no_placer() {
        assert!(NodePlacer::new(synthetic(), &placement(None, (0..16).collect())).is_none());
        assert!(NodePlacer::shared(&placement(None, vec![0])).is_none());
    }

    #[test]
    fn round_robin_one_thread_per_core_first() {
        // Synthetic numbering: core k of package 1 holds PUs 8+2k and 9+2k.
        let p = NodePlacer::new(synthetic(), &placement(Some(1), (8..16).collect())).unwrap();
        assert_eq!(p.cpus(), &[8, 10, 12, 14, 9, 11, 13, 15]);
        let handed: Vec<u32> = (0..10).map(|_| p.next_cpu().unwrap()).collect();
        assert_eq!(handed, vec![8, 10, 12, 14, 9, 11, 13, 15, 8, 10]);
    }

    #[test]
    fn only_the_nodes_cpus_are_handed_out() {
        // CPU 3 is not on node 1 and is never handed out. 9 is alone on its core (8 is not
        // in the placement), 10 and 11 share one: 9 and 10 first, then 11.
        let p = NodePlacer::new(synthetic(), &placement(Some(1), vec![3, 9, 10, 11])).unwrap();
        assert_eq!(p.cpus(), &[9, 10, 11]);
    }

    #[test]
    fn a_foreign_topology_binds_nothing() {
        // hwloc accepts binding calls on a synthetic topology and does nothing.
        let p = NodePlacer::new(synthetic(), &placement(Some(1), (8..16).collect())).unwrap();
        let before = crate::current_thread_cpus();
        let after = std::thread::spawn(move || {
            assert_eq!(p.pin_worker(WorkerRole::Writer), Some(8));
            crate::current_thread_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(after, before);
    }

    #[test]
    fn a_pool_that_cannot_be_bound_is_reported_not_fatal() {
        // Node 1000 exists on no machine this runs on: hwloc refuses the node set.
        let binder = Arc::clone(system_binder().unwrap());
        let p = NodePlacer::new(binder, &placement(Some(1000), vec![0])).unwrap();
        assert!(p.cpus().is_empty(), "no CPU of a missing node is handed out");
        let bytes: Vec<UnsafeCell<u8>> = (0..8192).map(|_| UnsafeCell::new(7)).collect();
        assert!(!p.bind_pool(&bytes));
        assert!(!p.bind_pool(&bytes), "still false (the warning is logged once)");
        assert!(bytes.into_iter().all(|b| b.into_inner() == 7));
    }
}
