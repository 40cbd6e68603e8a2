//! Placement, the pure core: which NUMA node and which CPUs the transport and storage worker
//! threads (and the buffer pool's memory) should use, given a [`Topology`], a [`NumaPolicy`]
//! and the device the data flows through.
//!
//! Owns the decision and its explanation (`Placement::reason`, shown by `blit topo` and logged
//! at startup). It reads no files and binds nothing: the device → node map is part of the
//! `Topology` it is given (sysfs in real discovery, hand-written in tests), and applying the
//! result is `bind.rs`/`membind.rs`.
//!
//! Rules, in order:
//! - `off`: no node; all CPUs the process may use.
//! - `node=N`: node N (an error if it does not exist); its CPUs, even outside the starting
//!   affinity, because the user asked for them by name.
//! - `auto`: the device's node when sysfs knows it (a bond/VLAN follows its lower interfaces,
//!   a verbs device its netdev, an md/dm disk its members, when they agree). Otherwise, or on
//!   a single-node machine, or when the node's CPUs are all outside the process's affinity
//!   (the user ran us under `taskset`/`numactl` — they win), no node and all allowed CPUs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{PlacementError, PolicyParseError};
use crate::model::{Topology, cpu_list};

/// How far `auto` follows lower interfaces, netdevs and slave disks (bond → VLAN → NIC is 2).
const FOLLOW_DEPTH_MAX: usize = 4;

/// `--numa auto|off|node=N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumaPolicy {
    /// Follow the device the data flows through.
    #[default]
    Auto,
    /// Do not pin threads or bind memory.
    Off,
    /// Use this node (kernel node id), whatever the device.
    Node(u32),
}

impl FromStr for NumaPolicy {
    type Err = PolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(NumaPolicy::Auto),
            "off" => Ok(NumaPolicy::Off),
            lower => match lower.strip_prefix("node=") {
                Some(n) => n
                    .trim()
                    .parse::<u32>()
                    .map(NumaPolicy::Node)
                    .map_err(|_| PolicyParseError::BadNode { text: text.to_owned() }),
                None => Err(PolicyParseError::Unknown { text: text.to_owned() }),
            },
        }
    }
}

impl fmt::Display for NumaPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumaPolicy::Auto => f.write_str("auto"),
            NumaPolicy::Off => f.write_str("off"),
            NumaPolicy::Node(n) => write!(f, "node={n}"),
        }
    }
}

/// Where worker threads run and where their buffers live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The NUMA node to bind buffer memory to; `None` leaves memory to the kernel's default
    /// (first touch), which is also what any fallback means.
    pub node: Option<u32>,
    /// CPUs to pin worker threads to, sorted; never empty when the topology has CPUs.
    pub cpus: Vec<u32>,
    /// Why, in one sentence, for logs and `blit topo`.
    pub reason: String,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node {
            Some(n) => write!(f, "NUMA node {n}, CPUs {}: {}", cpu_list(&self.cpus), self.reason),
            None => write!(f, "no NUMA node, CPUs {}: {}", cpu_list(&self.cpus), self.reason),
        }
    }
}

/// Chooses the placement for worker threads that move data through `device` — a NIC name
/// (`ens1f0`, the interface that routes to the peer), a verbs device (`mlx5_0`, `rxe0`), a
/// block device (`nvme0n1`), or `None`/`"none"`.
///
/// Only `node=N` with a node this machine lacks is an error; everything `auto` cannot work
/// out falls back to all allowed CPUs with the reason saying why, so a transfer never fails
/// over placement.
pub fn place(
    topo: &Topology,
    policy: NumaPolicy,
    device: Option<&str>,
) -> Result<Placement, PlacementError> {
    let allowed = if topo.allowed_cpus.is_empty() { &topo.cpus } else { &topo.allowed_cpus };
    let everywhere = |reason: String| Placement { node: None, cpus: allowed.clone(), reason };
    let device = device.map(str::trim).filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("none"));

    match policy {
        NumaPolicy::Off => Ok(everywhere("NUMA placement is off (--numa off)".to_owned())),
        NumaPolicy::Node(id) => {
            let Some(node) = topo.node(id) else {
                return Err(PlacementError::NoSuchNode { node: id, available: topo.node_ids() });
            };
            if node.cpus.is_empty() {
                return Ok(Placement {
                    node: Some(id),
                    cpus: allowed.clone(),
                    reason: format!(
                        "--numa node={id}: node {id} has memory but no CPUs, so buffers go there \
                         and threads run on any allowed CPU"
                    ),
                });
            }
            let inside = intersect(&node.cpus, allowed);
            let reason = if inside.len() == node.cpus.len() {
                format!("--numa node={id}")
            } else {
                format!(
                    "--numa node={id}: using all of node {id}'s CPUs, although this process \
                     started limited to CPUs {} (explicit request wins)",
                    cpu_list(allowed)
                )
            };
            Ok(Placement { node: Some(id), cpus: node.cpus.clone(), reason })
        }
        NumaPolicy::Auto => {
            let Some(name) = device else {
                return Ok(everywhere("no device given, so no NUMA node to follow".to_owned()));
            };
            if topo.numa_nodes.len() <= 1 {
                return Ok(everywhere(format!("single NUMA node: nothing to choose for {name}")));
            }
            let (found, why) = device_node(topo, name, FOLLOW_DEPTH_MAX);
            let Some(id) = found else {
                return Ok(everywhere(format!("{why}; using all CPUs")));
            };
            let Some(node) = topo.node(id) else {
                return Ok(everywhere(format!(
                    "{why}, but hwloc does not list node {id} (offline or outside this \
                     process's cgroup); using all CPUs"
                )));
            };
            if node.cpus.is_empty() {
                return Ok(Placement {
                    node: Some(id),
                    cpus: allowed.clone(),
                    reason: format!(
                        "{why}; node {id} has no CPUs, so buffers go there and threads run on \
                         any allowed CPU"
                    ),
                });
            }
            let inside = intersect(&node.cpus, allowed);
            if inside.is_empty() {
                return Ok(everywhere(format!(
                    "{why}, but this process is limited to CPUs {} (taskset/numactl/cgroup), \
                     none on node {id}; respecting that limit and leaving memory unbound",
                    cpu_list(allowed)
                )));
            }
            let reason = if inside.len() < node.cpus.len() {
                format!("{why}; only CPUs {} of it are allowed to this process", cpu_list(&inside))
            } else {
                why
            };
            Ok(Placement { node: Some(id), cpus: inside, reason })
        }
    }
}

/// The node of a named device and a sentence saying how it was found (or why not).
fn device_node(topo: &Topology, name: &str, depth: usize) -> (Option<u32>, String) {
    let d = &topo.devices;
    if let Some(nic) = d.nics.iter().find(|n| n.name == name) {
        if let Some(id) = nic.numa_node {
            return (Some(id), format!("NIC {name} is on NUMA node {id}"));
        }
        if !nic.lower.is_empty() && depth > 0 {
            return follow(topo, "NIC", name, &nic.lower, depth);
        }
        let why = if nic.is_virtual {
            format!("NIC {name} is virtual with no lower interface, so it has no NUMA node")
        } else {
            format!("the kernel does not know NIC {name}'s NUMA node (numa_node = -1)")
        };
        return (None, why);
    }
    if let Some(dev) = d.rdma.iter().find(|r| r.name == name) {
        if let Some(id) = dev.numa_node {
            return (Some(id), format!("RDMA device {name} is on NUMA node {id}"));
        }
        if !dev.netdevs.is_empty() && depth > 0 {
            return follow(topo, "RDMA device", name, &dev.netdevs, depth);
        }
        return (None, format!("the kernel does not know RDMA device {name}'s NUMA node"));
    }
    if let Some(disk) = d.block.iter().find(|b| b.name == name) {
        if let Some(id) = disk.numa_node {
            return (Some(id), format!("disk {name} is on NUMA node {id}"));
        }
        if !disk.slaves.is_empty() && depth > 0 {
            return follow(topo, "disk", name, &disk.slaves, depth);
        }
        return (None, format!("the kernel does not know disk {name}'s NUMA node"));
    }
    (None, format!("no NIC, RDMA or block device named {name}"))
}

/// A device without a node of its own takes the node of the devices under it, if they agree.
fn follow(
    topo: &Topology,
    kind: &str,
    name: &str,
    under: &[String],
    depth: usize,
) -> (Option<u32>, String) {
    let mut nodes: Vec<u32> =
        under.iter().filter_map(|u| device_node(topo, u, depth - 1).0).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let list = under.join(",");
    match nodes.as_slice() {
        [id] => (Some(*id), format!("{kind} {name} sits on {list}, on NUMA node {id}")),
        [] => (None, format!("{kind} {name} sits on {list}, whose NUMA node is unknown")),
        many => {
            let ids: Vec<String> = many.iter().map(u32::to_string).collect();
            (None, format!("{kind} {name} spans NUMA nodes {} (via {list})", ids.join(",")))
        }
    }
}

/// Elements of sorted `a` that are also in sorted `b`.
fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter().copied().filter(|x| b.binary_search(x).is_ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print() {
        assert_eq!("auto".parse(), Ok(NumaPolicy::Auto));
        assert_eq!(" OFF ".parse(), Ok(NumaPolicy::Off));
        assert_eq!("node=3".parse(), Ok(NumaPolicy::Node(3)));
        assert_eq!("node=3".parse::<NumaPolicy>().map(|p| p.to_string()), Ok("node=3".into()));
        let e = "node=-1".parse::<NumaPolicy>().unwrap_err();
        assert!(matches!(e, PolicyParseError::BadNode { .. }), "{e}");
        assert!(e.to_string().contains("node=-1"));
        let e = "numa1".parse::<NumaPolicy>().unwrap_err();
        assert!(e.to_string().contains("expected `auto`, `off` or `node=N`"), "{e}");
        assert!("node=".parse::<NumaPolicy>().is_err());
    }

    #[test]
    fn intersect_keeps_common_cpus() {
        assert_eq!(intersect(&[0, 1, 2, 3], &[2, 3, 4]), vec![2, 3]);
        assert!(intersect(&[0, 1], &[2, 3]).is_empty());
    }
}
