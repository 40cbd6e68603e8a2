//! The topology as plain data: what `blit topo --json` prints and what placement reads.
//!
//! Owns the serializable types and their human-readable `Display`. Nothing here touches hwloc
//! or sysfs; `discover.rs` and `sysfs.rs` fill these types in, and tests build them by hand.
//! CPU numbers are the kernel's (hwloc "OS/physical" indices, what `taskset` and
//! `/proc/cpuinfo` use); NUMA node numbers are the kernel's node ids (what `numactl` uses).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a [`Topology`] came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TopologySource {
    /// Probed from this machine (hwloc + sysfs).
    System,
    /// Built from an hwloc synthetic description (tests, what-if placement); has no I/O devices
    /// unless they were attached with [`Topology::with_devices`].
    Synthetic {
        /// The hwloc synthetic description, e.g. `pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2`.
        description: String,
    },
    /// Loaded from an hwloc XML export of some machine (tests, what-if placement); no I/O
    /// devices unless attached with [`Topology::with_devices`].
    Xml,
}

/// A machine: sockets, NUMA nodes and the devices blit moves data through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub source: TopologySource,
    /// Packages (sockets), in hwloc's order.
    pub packages: Vec<Package>,
    /// NUMA nodes, sorted by node id.
    pub numa_nodes: Vec<NumaNode>,
    /// Every CPU (PU, hardware thread) hwloc reports, sorted.
    pub cpus: Vec<u32>,
    /// The CPUs this process may run on when it was discovered (its affinity: `taskset`,
    /// `numactl --cpunodebind`, cgroup cpusets). Placement never widens beyond these unless a
    /// node is named explicitly. Equal to `cpus` for synthetic topologies.
    pub allowed_cpus: Vec<u32>,
    /// Number of physical cores.
    pub cores: usize,
    pub devices: Devices,
}

/// A package (socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// The kernel's `physical_package_id`, when known.
    pub id: Option<u32>,
    pub cpus: Vec<u32>,
    /// Ids of the NUMA nodes inside this package (sub-NUMA clustering gives several).
    pub numa_nodes: Vec<u32>,
}

/// A NUMA node: CPUs and memory at the same distance from each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// The kernel's node id (`/sys/devices/system/node/nodeN`).
    pub id: u32,
    /// The package (socket) the node belongs to, when it belongs to exactly one.
    pub package: Option<u32>,
    /// CPUs local to this node, sorted. Empty for memory-only nodes (CXL, HBM, PMEM).
    pub cpus: Vec<u32>,
    /// Physical cores local to this node.
    pub cores: usize,
    /// Memory attached to this node.
    pub memory_bytes: u64,
    /// This node's row of the ACPI SLIT (`/sys/devices/system/node/nodeN/distance`), in the
    /// order of [`Topology::numa_nodes`]; 10 is local. Empty when unknown (synthetic).
    #[serde(default)]
    pub distances: Vec<u32>,
}

/// The I/O devices placement can be asked about. In real discovery this is filled from sysfs;
/// for synthetic topologies tests attach it by hand — it is the device → node map that
/// placement takes as input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Devices {
    pub nics: Vec<Nic>,
    pub rdma: Vec<RdmaDevice>,
    pub block: Vec<BlockDevice>,
}

/// A network interface (`/sys/class/net/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    /// The NUMA node of the device behind the interface; `None` when the kernel does not know
    /// (`numa_node` reads -1: single-socket firmware, most VMs) or the interface is virtual.
    pub numa_node: Option<u32>,
    /// Link speed from `speed`, when the link is up and the driver reports one.
    pub speed_mbps: Option<u64>,
    /// `operstate`: `up`, `down`, `unknown`, ...
    pub operstate: Option<String>,
    /// No backing device (`lo`, bridges, bonds, VLANs, veth, tunnels).
    #[serde(rename = "virtual")]
    pub is_virtual: bool,
    /// The PCI address of the backing device, e.g. `0000:3b:00.0`.
    pub pci: Option<String>,
    /// Interfaces under this one (`lower_*` links: bond slaves, the parent of a VLAN or
    /// macvlan); placement follows them when this interface has no node of its own.
    #[serde(default)]
    pub lower: Vec<String>,
}

/// An RDMA/verbs device (`/sys/class/infiniband/NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdmaDevice {
    pub name: String,
    /// The NUMA node of the HCA; `None` when unknown or for software devices (rxe, siw).
    pub numa_node: Option<u32>,
    pub pci: Option<String>,
    /// Network interfaces the device sits on (RoCE/iWARP netdevs, the parent of rxe/siw);
    /// placement follows them when the device has no node of its own.
    #[serde(default)]
    pub netdevs: Vec<String>,
    pub ports: Vec<RdmaPort>,
}

/// One port of a verbs device (`ports/N`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdmaPort {
    pub port: u32,
    /// The `rate` text, e.g. `100 Gb/sec (4X EDR)`.
    pub rate: Option<String>,
    /// The rate parsed from `rate`.
    pub rate_gbps: Option<f64>,
    /// The state name from `state` (`4: ACTIVE` → `ACTIVE`).
    pub state: Option<String>,
    /// `link_layer`: `InfiniBand` or `Ethernet`.
    pub link_layer: Option<String>,
}

/// A block device (`/sys/block/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    pub name: String,
    /// The NUMA node of the controller behind the disk, when known.
    pub numa_node: Option<u32>,
    /// `queue/rotational`: spinning disk (true) or flash (false); `None` when unreadable.
    pub rotational: Option<bool>,
    pub size_bytes: u64,
    /// No backing device (loop, zram, device-mapper, md).
    #[serde(rename = "virtual")]
    pub is_virtual: bool,
    pub model: Option<String>,
    /// Disks under this one (`slaves/`: LVM, dm-crypt, md RAID members), as disk names;
    /// placement follows them when this device has no node of its own.
    #[serde(default)]
    pub slaves: Vec<String>,
}

impl Topology {
    /// Attaches the device → node map (tests on synthetic topologies, or a sysfs snapshot).
    #[must_use]
    pub fn with_devices(mut self, devices: Devices) -> Self {
        self.devices = devices;
        self
    }

    /// The node with kernel id `id`.
    pub fn node(&self, id: u32) -> Option<&NumaNode> {
        self.numa_nodes.iter().find(|n| n.id == id)
    }

    /// The ids of all NUMA nodes, sorted.
    pub fn node_ids(&self) -> Vec<u32> {
        self.numa_nodes.iter().map(|n| n.id).collect()
    }
}

/// Formats a sorted CPU list the way `taskset -c`/`numactl` print it: `0-3,8-11`.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    if out.is_empty() { "none".to_owned() } else { out }
}

/// `13.5 GiB`-style sizes for the human-readable output.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn node_text(node: Option<u32>) -> String {
    node.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            TopologySource::System => "this machine".to_owned(),
            TopologySource::Synthetic { description } => format!("synthetic `{description}`"),
            TopologySource::Xml => "an XML topology".to_owned(),
        };
        writeln!(
            f,
            "Topology of {source}: {}, {}, {}, {}",
            plural(self.packages.len(), "package", "packages"),
            plural(self.numa_nodes.len(), "NUMA node", "NUMA nodes"),
            plural(self.cores, "core", "cores"),
            plural(self.cpus.len(), "CPU", "CPUs"),
        )?;
        if self.allowed_cpus != self.cpus {
            writeln!(f, "  this process may run on CPUs {}", cpu_list(&self.allowed_cpus))?;
        }
        for (i, p) in self.packages.iter().enumerate() {
            let nodes: Vec<String> = p.numa_nodes.iter().map(u32::to_string).collect();
            writeln!(
                f,
                "Package {}: CPUs {}, NUMA nodes {}",
                p.id.map_or_else(|| format!("#{i}"), |id| id.to_string()),
                cpu_list(&p.cpus),
                if nodes.is_empty() { "-".to_owned() } else { nodes.join(",") },
            )?;
        }
        for n in &self.numa_nodes {
            write!(
                f,
                "NUMA node {}: CPUs {} ({}), {}",
                n.id,
                cpu_list(&n.cpus),
                plural(n.cores, "core", "cores"),
                human_bytes(n.memory_bytes),
            )?;
            if !n.distances.is_empty() {
                let d: Vec<String> = n.distances.iter().map(u32::to_string).collect();
                write!(f, ", distances {}", d.join(" "))?;
            }
            writeln!(f)?;
        }
        writeln!(f, "NICs:")?;
        if self.devices.nics.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for n in &self.devices.nics {
            write!(f, "  {:<12} node {:<2}", n.name, node_text(n.numa_node))?;
            match n.speed_mbps {
                Some(s) => write!(f, " {s:>7} Mb/s")?,
                None => write!(f, " {:>7} Mb/s", "?")?,
            }
            write!(f, "  {:<7}", n.operstate.as_deref().unwrap_or("?"))?;
            if n.is_virtual {
                write!(f, " virtual")?;
            }
            if let Some(pci) = &n.pci {
                write!(f, " pci {pci}")?;
            }
            if !n.lower.is_empty() {
                write!(f, " over {}", n.lower.join(","))?;
            }
            writeln!(f)?;
        }
        writeln!(f, "RDMA devices:")?;
        if self.devices.rdma.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for d in &self.devices.rdma {
            write!(f, "  {:<12} node {:<2}", d.name, node_text(d.numa_node))?;
            if !d.netdevs.is_empty() {
                write!(f, " netdev {}", d.netdevs.join(","))?;
            }
            if let Some(pci) = &d.pci {
                write!(f, " pci {pci}")?;
            }
            writeln!(f)?;
            for p in &d.ports {
                writeln!(
                    f,
                    "    port {}: {} {} {}",
                    p.port,
                    p.state.as_deref().unwrap_or("?"),
                    p.rate.as_deref().unwrap_or("rate ?"),
                    p.link_layer.as_deref().unwrap_or(""),
                )?;
            }
        }
        writeln!(f, "Block devices:")?;
        // Unused loop/zram devices (size 0) are noise in the human view; JSON keeps them.
        let shown: Vec<&BlockDevice> =
            self.devices.block.iter().filter(|b| !(b.is_virtual && b.size_bytes == 0)).collect();
        if shown.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for b in shown {
            write!(
                f,
                "  {:<12} node {:<2} {:>10}",
                b.name,
                node_text(b.numa_node),
                human_bytes(b.size_bytes)
            )?;
            match b.rotational {
                Some(true) => write!(f, "  rotational")?,
                Some(false) => write!(f, "  flash")?,
                None => {}
            }
            if b.is_virtual {
                write!(f, " virtual")?;
            }
            if let Some(m) = &b.model {
                write!(f, " {m}")?;
            }
            if !b.slaves.is_empty() {
                write!(f, " over {}", b.slaves.join(","))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_collapse_ranges() {
        assert_eq!(cpu_list(&[]), "none");
        assert_eq!(cpu_list(&[3]), "3");
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8, 9, 10, 11]), "0-3,8-11");
        assert_eq!(cpu_list(&[0, 2, 4]), "0,2,4");
        assert_eq!(cpu_list(&[0, 1, 5, u32::MAX]), "0-1,5,4294967295");
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
        assert_eq!(human_bytes(3 << 39), "1.5 TiB");
    }
}
