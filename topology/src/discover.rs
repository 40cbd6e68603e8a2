//! Discovery shell: asks hwloc for packages, NUMA nodes, cores and CPUs, and sysfs (see
//! `sysfs.rs`) for NICs, verbs and block devices, and turns both into [`Topology`].
//!
//! Owns every read of an `hwlocality::Topology` for reporting; binding lives in `bind.rs`. It
//! must not decide anything — placement is `placement.rs`, which only sees the plain data.

use std::path::Path;

use hwlocality::cpu::binding::CpuBindingFlags;
use hwlocality::cpu::cpuset::CpuSet;
use hwlocality::object::TopologyObject;
use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::ObjectType;

use crate::error::TopologyError;
use crate::model::{Devices, NumaNode, Package, Topology, TopologySource};
use crate::sysfs;

/// The sysfs mount discovery reads device information from.
pub const SYSFS_ROOT: &str = "/sys";

/// Loads hwloc's view of this machine (no I/O objects: devices come from sysfs, and skipping
/// hwloc's PCI discovery keeps this to a few milliseconds).
pub(crate) fn load_system() -> Result<hwlocality::Topology, TopologyError> {
    hwlocality::Topology::new().map_err(|e| TopologyError::HwlocDiscover { source: Box::new(e) })
}

/// Loads an hwloc synthetic topology, e.g. `pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2`.
pub(crate) fn load_synthetic(description: &str) -> Result<hwlocality::Topology, TopologyError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| TopologyError::HwlocSynthetic {
        description: description.to_owned(),
        source,
    };
    hwlocality::Topology::builder()
        .from_synthetic(description)
        .map_err(|e| err(Box::new(e)))?
        .build()
        .map_err(|e| err(Box::new(e)))
}

/// Loads an hwloc XML export (`lstopo --of xml`). Binding on it does nothing.
pub(crate) fn load_xml(xml: &str) -> Result<hwlocality::Topology, TopologyError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| TopologyError::HwlocXml { source };
    hwlocality::Topology::builder()
        .from_xml(xml)
        .map_err(|e| err(Box::new(e)))?
        .build()
        .map_err(|e| err(Box::new(e)))
}

impl Topology {
    /// Discovers this machine: hwloc for CPUs and memory, `/sys` for devices.
    ///
    /// Call it on the main thread before pinning anything: [`Topology::allowed_cpus`] is taken
    /// from the calling thread's affinity, which is how `taskset`/`numactl` limits are honored.
    pub fn discover() -> Result<Self, TopologyError> {
        Self::discover_with_sysfs(Path::new(SYSFS_ROOT))
    }

    /// [`Topology::discover`] reading devices and node distances from `sysfs_root` instead of
    /// `/sys` (a copied sysfs snapshot from a lab machine, or a fake tree in tests).
    pub fn discover_with_sysfs(sysfs_root: &Path) -> Result<Self, TopologyError> {
        let hw = load_system()?;
        let mut topo = from_hwloc(&hw, TopologySource::System)?;
        // The affinity of the calling thread: what taskset/numactl/cgroups left us.
        if let Ok(bound) = hw.cpu_binding(CpuBindingFlags::THREAD) {
            let bound = cpus_of(&bound, "CPU")?;
            let allowed: Vec<u32> =
                topo.cpus.iter().copied().filter(|c| bound.binary_search(c).is_ok()).collect();
            if !allowed.is_empty() {
                topo.allowed_cpus = allowed;
            }
        }
        let ids = topo.node_ids();
        for node in &mut topo.numa_nodes {
            node.distances = sysfs::node_distances(sysfs_root, node.id, &ids);
        }
        topo.devices = Devices::scan(sysfs_root)?;
        Ok(topo)
    }

    /// A topology from an hwloc synthetic description, with no devices (attach them with
    /// [`Topology::with_devices`]). Binding on it does nothing, so it is for placement tests
    /// and "what would blit do on a 4-socket box" questions.
    pub fn from_synthetic(description: &str) -> Result<Self, TopologyError> {
        let hw = load_synthetic(description)?;
        from_hwloc(&hw, TopologySource::Synthetic { description: description.to_owned() })
    }

    /// A topology from an hwloc XML export (`lstopo --of xml` on a lab server), with no
    /// devices (attach them with [`Topology::with_devices`]). For placement tests on real
    /// layouts, whose CPU numbering synthetic topologies cannot express.
    pub fn from_xml(xml: &str) -> Result<Self, TopologyError> {
        let hw = load_xml(xml)?;
        from_hwloc(&hw, TopologySource::Xml)
    }
}

/// Converts hwloc's object tree into plain data. Pure apart from reading `hw`.
fn from_hwloc(
    hw: &hwlocality::Topology,
    source: TopologySource,
) -> Result<Topology, TopologyError> {
    let cpus = cpus_of(&hw.cpuset(), "CPU")?;
    let core_objs: Vec<&TopologyObject> = hw.objects_with_type(ObjectType::Core).collect();
    let package_objs: Vec<&TopologyObject> = hw.objects_with_type(ObjectType::Package).collect();

    let mut numa_nodes = Vec::new();
    // (node id, global index of its package object) to fill `Package::numa_nodes` below.
    let mut node_package = Vec::new();
    for obj in hw.objects_with_type(ObjectType::NUMANode) {
        let id = index_u32(obj.os_index().unwrap_or(obj.logical_index()), "NUMA node")?;
        let node_cpus = match obj.cpuset() {
            Some(set) => cpus_of(&set, "CPU")?,
            None => Vec::new(),
        };
        let cores = match obj.cpuset() {
            Some(set) if !set.is_empty() => core_objs
                .iter()
                .filter(|core| core.cpuset().is_some_and(|c| !c.is_empty() && set.includes(c)))
                .count(),
            _ => 0,
        };
        let memory_bytes = match obj.attributes() {
            Some(ObjectAttributes::NUMANode(attr)) => {
                attr.local_memory().map_or(obj.total_memory(), |m| m.get())
            }
            _ => obj.total_memory(),
        };
        let package_obj = obj.ancestors().find(|a| a.object_type() == ObjectType::Package);
        let package = match package_obj.and_then(TopologyObject::os_index) {
            Some(i) => Some(index_u32(i, "package")?),
            None => None,
        };
        if let Some(p) = package_obj {
            node_package.push((id, p.global_persistent_index()));
        }
        numa_nodes.push(NumaNode {
            id,
            package,
            cpus: node_cpus,
            cores,
            memory_bytes,
            distances: Vec::new(),
        });
    }
    numa_nodes.sort_by_key(|n| n.id);

    let mut packages = Vec::new();
    for obj in package_objs {
        let id = match obj.os_index() {
            Some(i) => Some(index_u32(i, "package")?),
            None => None,
        };
        let pkg_cpus = match obj.cpuset() {
            Some(set) => cpus_of(&set, "CPU")?,
            None => Vec::new(),
        };
        let mut nodes: Vec<u32> = node_package
            .iter()
            .filter(|(_, gp)| *gp == obj.global_persistent_index())
            .map(|(id, _)| *id)
            .collect();
        nodes.sort_unstable();
        packages.push(Package { id, cpus: pkg_cpus, numa_nodes: nodes });
    }

    Ok(Topology {
        source,
        packages,
        numa_nodes,
        allowed_cpus: cpus.clone(),
        cpus,
        cores: core_objs.len(),
        devices: Devices::default(),
    })
}

/// The set bits of a CPU set as sorted `u32`s. An infinite set (hwloc's "all CPUs, including
/// ones that do not exist yet") cannot be listed, so it is an error rather than a hang.
pub(crate) fn cpus_of(set: &CpuSet, what: &'static str) -> Result<Vec<u32>, TopologyError> {
    if set.weight().is_none() {
        return Err(TopologyError::IndexRange { what, index: usize::MAX });
    }
    set.iter_set().map(|i| index_u32(usize::from(i), what)).collect()
}

fn index_u32(index: usize, what: &'static str) -> Result<u32, TopologyError> {
    u32::try_from(index).map_err(|_| TopologyError::IndexRange { what, index })
}

/// Builds an hwloc CPU set from kernel CPU numbers, skipping numbers hwloc cannot represent
/// (above 2^31-1; no real machine has them, and `CpuSet::set` would panic on them).
pub(crate) fn cpuset_from(cpus: &[u32]) -> CpuSet {
    let mut set = CpuSet::new();
    for &c in cpus {
        if let Ok(idx) = hwlocality::bitmap::BitmapIndex::try_from(c as usize) {
            set.set(idx);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_node_synthetic_is_read_back() {
        let t = Topology::from_synthetic("pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2").unwrap();
        assert_eq!(t.packages.len(), 2);
        assert_eq!(t.numa_nodes.len(), 2);
        assert_eq!(t.cpus.len(), 16);
        assert_eq!(t.cores, 8);
        assert_eq!(t.numa_nodes[0].cpus, (0..8).collect::<Vec<u32>>());
        assert_eq!(t.numa_nodes[1].cpus, (8..16).collect::<Vec<u32>>());
        assert_eq!(t.numa_nodes[1].cores, 4);
        assert_eq!(t.numa_nodes[1].memory_bytes, 1_000_000_000);
        assert_eq!(t.numa_nodes[1].package, Some(1));
        assert_eq!(t.packages[1].numa_nodes, vec![1]);
        assert_eq!(t.allowed_cpus, t.cpus);
    }

    #[test]
    fn bad_synthetic_description_is_an_error_with_context() {
        let e = Topology::from_synthetic("pack:two").unwrap_err();
        assert!(e.to_string().contains("pack:two"), "{e}");
    }

    #[test]
    fn cpusets_round_trip() {
        let set = cpuset_from(&[0, 1, 2, 8, 9]);
        assert_eq!(cpus_of(&set, "CPU").unwrap(), vec![0, 1, 2, 8, 9]);
    }
}
