//! Binding shell: applies a [`Placement`] with hwloc — a CPU set to the calling thread, a NUMA
//! node to a memory region — and lists a node's CPUs one core at a time for per-worker pinning.
//!
//! Owns the process-wide hwloc topology used for binding (loaded once, on first use) and
//! nothing else. Binding is best effort by contract: a failure is reported to the caller, who
//! logs it, and the thread or memory stays where it was — a transfer never fails because a
//! thread could not be pinned. It must not decide where to pin (`placement.rs` decides the
//! node, `workers.rs` hands the CPUs out).

use std::cell::UnsafeCell;
use std::sync::{Arc, OnceLock};

use hwlocality::cpu::binding::CpuBindingFlags;
use hwlocality::memory::binding::{MemoryBindingFlags, MemoryBindingPolicy};
use hwlocality::memory::nodeset::NodeSet;
use hwlocality::object::types::ObjectType;

use crate::discover::{cpus_of, cpuset_from, load_synthetic, load_system, load_xml};
use crate::error::TopologyError;
use crate::model::cpu_list;
use crate::placement::Placement;

/// An hwloc topology kept for binding. Loading one costs milliseconds, so a process keeps
/// one (see [`pin_current_thread`]) rather than loading it per thread.
pub struct Binder {
    hw: hwlocality::Topology,
}

impl std::fmt::Debug for Binder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binder").field("this_system", &self.hw.is_this_system()).finish()
    }
}

impl Binder {
    /// A binder for this machine.
    pub fn system() -> Result<Self, TopologyError> {
        Ok(Binder { hw: load_system()? })
    }

    /// A binder over a synthetic topology: hwloc accepts the calls and binds nothing, which
    /// lets tests run the pinning path without touching the test runner's threads.
    pub fn synthetic(description: &str) -> Result<Self, TopologyError> {
        Ok(Binder { hw: load_synthetic(description)? })
    }

    /// A binder over a topology exported as XML (`lstopo --of xml`, `hwloc-gather-topology`):
    /// a lab machine's layout on any machine. Like a synthetic one, it binds nothing (hwloc
    /// only binds when the topology is this system's).
    pub fn from_xml(xml: &str) -> Result<Self, TopologyError> {
        Ok(Binder { hw: load_xml(xml)? })
    }

    /// Pins the calling thread to `placement.cpus`. Returns whether it worked; on failure
    /// logs a warning and leaves the thread's affinity as it was.
    pub fn pin_current_thread(&self, placement: &Placement) -> bool {
        if placement.cpus.is_empty() {
            tracing::warn!("not pinning: the placement has no CPUs ({})", placement.reason);
            return false;
        }
        match self.bind_thread(&placement.cpus) {
            Ok(()) => {
                tracing::debug!(cpus = %cpu_list(&placement.cpus), "pinned thread");
                true
            }
            Err(e) => {
                tracing::warn!(
                    "pinning this thread to CPUs {} failed ({e}); it keeps its current affinity",
                    cpu_list(&placement.cpus)
                );
                false
            }
        }
    }

    /// Binds the calling thread to `cpus` (hwloc thread CPU binding, `sched_setaffinity`).
    pub(crate) fn bind_thread(&self, cpus: &[u32]) -> Result<(), String> {
        let set = cpuset_from(cpus);
        self.hw.bind_cpu(&set, CpuBindingFlags::THREAD).map_err(|e| e.to_string())
    }

    /// Binds the pages of `region` to NUMA `node` with hwloc's area binding, policy `Bind`
    /// without `STRICT`: on Linux that is `mbind(MPOL_PREFERRED)`, so a full node falls back to
    /// another instead of failing the first touch. Nothing is migrated: the region is meant to
    /// be fresh. `region` is `UnsafeCell` bytes: hwloc only passes its address range to the
    /// kernel, and other threads may write the memory meanwhile.
    pub(crate) fn bind_area(&self, region: &[UnsafeCell<u8>], node: u32) -> Result<(), String> {
        let mut set = NodeSet::new();
        let idx = hwlocality::bitmap::BitmapIndex::try_from(node as usize)
            .map_err(|_| format!("node id {node} is out of hwloc's range"))?;
        set.set(idx);
        self.hw
            .bind_memory_area(region, &set, MemoryBindingPolicy::Bind, MemoryBindingFlags::empty())
            .map_err(|e| e.to_string())
    }

    /// The CPUs of `placement` that lie on its node, in the order workers should get them: the
    /// first hardware thread of every core, then the second of every core, and so on, so that
    /// workers share a core only when there are more workers than cores. Cores in hwloc's
    /// logical order (neighbours share caches). Empty when the placement has no node or none
    /// of its CPUs is on the node (a memory-only node: threads stay unpinned).
    pub fn worker_cpus(&self, placement: &Placement) -> Vec<u32> {
        let Some(node) = placement.node else { return Vec::new() };
        let node_obj = self
            .hw
            .objects_with_type(ObjectType::NUMANode)
            .find(|o| o.os_index() == Some(node as usize));
        let node_cpus = match node_obj.and_then(|o| o.cpuset()) {
            Some(set) => cpus_of(&set, "CPU").unwrap_or_default(),
            None => return Vec::new(),
        };
        let wanted: Vec<u32> =
            placement.cpus.iter().copied().filter(|c| node_cpus.binary_search(c).is_ok()).collect();
        let mut per_core: Vec<Vec<u32>> = Vec::new();
        for core in self.hw.objects_with_type(ObjectType::Core) {
            let Some(set) = core.cpuset() else { continue };
            let pus: Vec<u32> = cpus_of(&set, "CPU")
                .unwrap_or_default()
                .into_iter()
                .filter(|c| wanted.binary_search(c).is_ok())
                .collect();
            if !pus.is_empty() {
                per_core.push(pus);
            }
        }
        // CPUs hwloc shows under no core (some VMs) get a "core" each.
        let covered: Vec<u32> = per_core.iter().flatten().copied().collect();
        per_core.extend(wanted.iter().filter(|c| !covered.contains(c)).map(|&c| vec![c]));
        let depth = per_core.iter().map(Vec::len).max().unwrap_or(0);
        (0..depth)
            .flat_map(|i| per_core.iter().filter_map(move |pus| pus.get(i).copied()))
            .collect()
    }

    /// The CPUs the calling thread may run on now, sorted; `None` if hwloc cannot say.
    pub fn current_thread_cpus(&self) -> Option<Vec<u32>> {
        let set = self.hw.cpu_binding(CpuBindingFlags::THREAD).ok()?;
        set.weight()?;
        set.iter_set().map(|i| u32::try_from(usize::from(i)).ok()).collect()
    }
}

/// The process-wide binder for this machine; `None` (logged once) if hwloc cannot load.
pub(crate) fn system_binder() -> Option<&'static Arc<Binder>> {
    static SYSTEM: OnceLock<Option<Arc<Binder>>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| match Binder::system() {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                tracing::warn!("thread pinning disabled: {e}");
                None
            }
        })
        .as_ref()
}

/// Pins the calling thread to `placement.cpus` (hwloc thread CPU binding). Call it first
/// thing in each transport/storage worker thread. Best effort: returns whether it worked,
/// and on failure logs a warning and continues unpinned.
pub fn pin_current_thread(placement: &Placement) -> bool {
    system_binder().is_some_and(|b| b.pin_current_thread(placement))
}

/// The CPUs the calling thread may run on now (for `--profile` output and tests).
pub fn current_thread_cpus() -> Option<Vec<u32>> {
    system_binder()?.current_thread_cpus()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(cpus: Vec<u32>) -> Placement {
        Placement { node: None, cpus, reason: "test".to_owned() }
    }

    #[test]
    fn pinning_moves_a_thread_and_back() {
        let before = current_thread_cpus().unwrap();
        let first = before[0];
        // A fresh thread, so the test runner's threads keep their affinity.
        let (pinned, during) = std::thread::spawn(move || {
            let ok = pin_current_thread(&placement(vec![first]));
            (ok, current_thread_cpus())
        })
        .join()
        .unwrap();
        assert!(pinned);
        assert_eq!(during, Some(vec![first]));
        let back = std::thread::spawn(move || {
            pin_current_thread(&placement(before.clone()));
            current_thread_cpus() == Some(before)
        })
        .join()
        .unwrap();
        assert!(back);
    }

    #[test]
    fn pinning_failure_is_reported_not_fatal() {
        // CPU 100000 exists on no machine this runs on; hwloc refuses it.
        let ok =
            std::thread::spawn(|| pin_current_thread(&placement(vec![100_000]))).join().unwrap();
        assert!(!ok);
        assert!(!pin_current_thread(&placement(Vec::new())));
    }

    #[test]
    fn synthetic_binding_is_a_no_op() {
        let b = Binder::synthetic("pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2").unwrap();
        let unchanged = std::thread::spawn(move || {
            let before = current_thread_cpus();
            let _ = b.pin_current_thread(&placement(vec![9]));
            current_thread_cpus() == before
        })
        .join()
        .unwrap();
        assert!(unchanged);
    }
}
