//! Sysfs shell: NICs, RDMA/verbs devices and block devices with the NUMA node of the hardware
//! behind them, plus node distances and "which disk holds this path".
//!
//! Owns every read under `/sys` (or a root passed in, so tests use a fake tree). Parsing of the
//! attribute texts is in small pure functions at the bottom. It must not load libibverbs or
//! open devices: everything here is a read of a world-readable attribute, best effort — an
//! unreadable attribute becomes `None`, never an error.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::TopologyError;
use crate::model::{BlockDevice, Devices, Nic, RdmaDevice, RdmaPort};

/// Upper bound on directories walked up from a device looking for `numa_node`; real device
/// paths are under 12 levels deep, and the bound stops a malformed tree from looping.
const WALK_UP_MAX: usize = 24;
/// Upper bound on entries read from one sysfs directory (a host with thousands of VFs or
/// veths still lists fine; a bogus tree cannot make discovery unbounded).
const ENTRIES_MAX: usize = 65_536;

impl Devices {
    /// Scans `ROOT/class/net`, `ROOT/class/infiniband` and `ROOT/block`. A class directory that
    /// does not exist (no RDMA stack loaded) gives an empty list; one that exists but cannot be
    /// listed is an error.
    pub fn scan(root: &Path) -> Result<Self, TopologyError> {
        let mut nics = Vec::new();
        for (name, entry) in list_dir(&root.join("class/net"))? {
            nics.push(scan_nic(root, name, &entry)?);
        }
        let mut rdma = Vec::new();
        for (name, entry) in list_dir(&root.join("class/infiniband"))? {
            rdma.push(scan_rdma(root, name, &entry)?);
        }
        let mut block = Vec::new();
        for (name, entry) in list_dir(&root.join("block"))? {
            block.push(scan_block(root, name, &entry)?);
        }
        Ok(Devices { nics, rdma, block })
    }
}

fn scan_nic(root: &Path, name: String, entry: &Path) -> Result<Nic, TopologyError> {
    let device = entry.join("device");
    let is_virtual = !device.exists();
    let (numa_node, pci) =
        if is_virtual { (None, None) } else { (device_numa_node(root, &device), pci_of(&device)) };
    let mut lower: Vec<String> = list_dir(entry)?
        .into_iter()
        .filter_map(|(n, _)| n.strip_prefix("lower_").map(str::to_owned))
        .collect();
    lower.sort();
    Ok(Nic {
        name,
        numa_node,
        speed_mbps: read_trimmed(&entry.join("speed")).and_then(|s| parse_speed_mbps(&s)),
        operstate: read_trimmed(&entry.join("operstate")),
        is_virtual,
        pci,
        lower,
    })
}

fn scan_rdma(root: &Path, name: String, entry: &Path) -> Result<RdmaDevice, TopologyError> {
    let device = entry.join("device");
    let has_device = device.exists();
    let (numa_node, pci) =
        if has_device { (device_numa_node(root, &device), pci_of(&device)) } else { (None, None) };
    let mut netdevs = Vec::new();
    // rxe/siw name their netdev in `parent`; hardware RoCE/iWARP NICs list theirs under the PCI
    // function's `net/`; and each RoCE port's GID table names the netdev of GID 0.
    if let Some(parent) = read_trimmed(&entry.join("parent")) {
        netdevs.push(parent);
    }
    if has_device {
        netdevs.extend(list_dir(&device.join("net"))?.into_iter().map(|(n, _)| n));
    }
    let mut ports = Vec::new();
    for (port_name, port_dir) in list_dir(&entry.join("ports"))? {
        let Ok(port) = port_name.parse::<u32>() else { continue };
        if let Some(ndev) = read_trimmed(&port_dir.join("gid_attrs/ndevs/0")) {
            netdevs.push(ndev);
        }
        let rate = read_trimmed(&port_dir.join("rate"));
        ports.push(RdmaPort {
            port,
            rate_gbps: rate.as_deref().and_then(parse_rate_gbps),
            rate,
            state: read_trimmed(&port_dir.join("state")).map(|s| parse_port_state(&s)),
            link_layer: read_trimmed(&port_dir.join("link_layer")),
        });
    }
    ports.sort_by_key(|p| p.port);
    netdevs.sort();
    netdevs.dedup();
    Ok(RdmaDevice { name, numa_node, pci, netdevs, ports })
}

fn scan_block(root: &Path, name: String, entry: &Path) -> Result<BlockDevice, TopologyError> {
    let device = entry.join("device");
    let is_virtual = !device.exists();
    let numa_node = if is_virtual {
        None
    } else {
        device_numa_node(root, &device).or_else(|| nvme_subsystem_node(root, &device))
    };
    let mut slaves: Vec<String> = list_dir(&entry.join("slaves"))?
        .into_iter()
        .map(|(n, _)| disk_of(root, &n).unwrap_or(n))
        .collect();
    slaves.sort();
    slaves.dedup();
    Ok(BlockDevice {
        name,
        numa_node,
        rotational: read_trimmed(&entry.join("queue/rotational")).and_then(|s| match s.as_str() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        }),
        size_bytes: read_trimmed(&entry.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(0, |sectors| sectors.saturating_mul(512)),
        is_virtual,
        model: read_trimmed(&device.join("model")).filter(|m| !m.is_empty()),
        slaves,
    })
}

/// The NUMA node of the hardware behind `device` (a sysfs `device` link): walks from the
/// device towards `/sys/devices` and reads the first `numa_node` found. The walk matters for
/// virtio (`virtioN` has no `numa_node`, its PCI function does), SATA/SCSI disks and NVMe
/// controllers.
fn device_numa_node(root: &Path, device: &Path) -> Option<u32> {
    let boundary = fs::canonicalize(root.join("devices")).ok()?;
    let mut dir = fs::canonicalize(device).ok()?;
    for _ in 0..WALK_UP_MAX {
        if !dir.starts_with(&boundary) || dir == boundary {
            return None;
        }
        if let Some(text) = read_trimmed(&dir.join("numa_node")) {
            return parse_numa_node(&text);
        }
        if !dir.pop() {
            return None;
        }
    }
    None
}

/// With NVMe native multipath, `/sys/block/nvme0n1/device` is the virtual `nvme-subsys0`; the
/// node is that of its controllers (`nvme0`, `nvme1`, ... inside it), when they all agree.
fn nvme_subsystem_node(root: &Path, device: &Path) -> Option<u32> {
    let entries = list_dir(device).ok()?;
    let mut node = None;
    for (name, path) in entries {
        let is_ctrl = name
            .strip_prefix("nvme")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
        if !is_ctrl {
            continue;
        }
        let n = device_numa_node(root, &path)?;
        match node {
            None => node = Some(n),
            Some(prev) if prev != n => return None,
            Some(_) => {}
        }
    }
    node
}

/// The PCI address (`0000:3b:00.0`) of the closest PCI function at or above `device`.
fn pci_of(device: &Path) -> Option<String> {
    let mut dir = fs::canonicalize(device).ok()?;
    for _ in 0..WALK_UP_MAX {
        let name = dir.file_name()?.to_str()?;
        if looks_like_pci_address(name) {
            return Some(name.to_owned());
        }
        if !dir.pop() {
            return None;
        }
    }
    None
}

/// The whole disk a block device or partition name belongs to (`nvme0n1p2` → `nvme0n1`).
fn disk_of(root: &Path, name: &str) -> Option<String> {
    let dir = fs::canonicalize(root.join("class/block").join(name)).ok()?;
    let disk = if dir.join("partition").exists() { dir.parent()? } else { dir.as_path() };
    disk.file_name()?.to_str().map(str::to_owned)
}

/// This node's row of the SLIT, if it has one entry per node we know of.
pub(crate) fn node_distances(root: &Path, node: u32, all_nodes: &[u32]) -> Vec<u32> {
    let path = root.join(format!("devices/system/node/node{node}/distance"));
    let Some(text) = read_trimmed(&path) else { return Vec::new() };
    match parse_distances(&text) {
        Some(row) if row.len() == all_nodes.len() => row,
        _ => Vec::new(),
    }
}

/// The disk (a `/sys/block` name such as `nvme0n1` or `md0`) holding `path`, so storage
/// threads can be placed near it with [`crate::place`]. `None` for filesystems without a
/// backing block device (tmpfs, overlayfs, NFS, btrfs's anonymous device numbers).
pub fn block_device_of(path: &Path) -> Option<String> {
    block_device_of_in(Path::new(crate::discover::SYSFS_ROOT), path)
}

fn block_device_of_in(root: &Path, path: &Path) -> Option<String> {
    let dev = fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major == 0 {
        return None;
    }
    let name = fs::canonicalize(root.join(format!("dev/block/{major}:{minor}")))
        .ok()?
        .file_name()?
        .to_str()?
        .to_owned();
    let disk = disk_of(root, &name).unwrap_or(name);
    root.join("block").join(&disk).exists().then_some(disk)
}

/// Lists a directory as (name, path) pairs, sorted by name; a missing directory is empty.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, TopologyError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            return Ok(Vec::new());
        }
        Err(source) => return Err(TopologyError::Sysfs { path: dir.to_owned(), source }),
    };
    let mut out = Vec::new();
    for entry in rd.take(ENTRIES_MAX) {
        let entry =
            entry.map_err(|source| TopologyError::Sysfs { path: dir.to_owned(), source })?;
        // Kernel object names are ASCII; a non-UTF-8 name is not something we can place.
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a sysfs attribute; `None` when absent or unreadable (e.g. `speed` of a down link
/// fails with EINVAL).
fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// `numa_node` text: a node id, or -1 when the firmware does not say.
pub(crate) fn parse_numa_node(text: &str) -> Option<u32> {
    text.trim().parse::<i64>().ok().and_then(|n| u32::try_from(n).ok())
}

/// `speed` text in Mb/s; -1 (and the u32 wrap of it some drivers print) means unknown.
pub(crate) fn parse_speed_mbps(text: &str) -> Option<u64> {
    let v = text.trim().parse::<i64>().ok()?;
    (v > 0 && v != i64::from(u32::MAX)).then_some(v.unsigned_abs())
}

/// `rate` text, e.g. `100 Gb/sec (4X EDR)` or `2.5 Gb/sec (1X SDR)`.
pub(crate) fn parse_rate_gbps(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let value = words.next()?.parse::<f64>().ok()?;
    let unit = words.next()?;
    (unit.starts_with("Gb") && value.is_finite() && value >= 0.0).then_some(value)
}

/// `state` text, e.g. `4: ACTIVE` → `ACTIVE`.
pub(crate) fn parse_port_state(text: &str) -> String {
    match text.split_once(':') {
        Some((_, name)) => name.trim().to_owned(),
        None => text.trim().to_owned(),
    }
}

/// `distance` text: `10 21`.
pub(crate) fn parse_distances(text: &str) -> Option<Vec<u32>> {
    text.split_whitespace().map(|w| w.parse::<u32>().ok()).collect()
}

/// `dddd:bb:dd.f`, hex digits.
fn looks_like_pci_address(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter().enumerate().all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_texts_parse() {
        assert_eq!(parse_numa_node("1\n"), Some(1));
        assert_eq!(parse_numa_node("-1"), None);
        assert_eq!(parse_numa_node("garbage"), None);
        assert_eq!(parse_speed_mbps("100000"), Some(100_000));
        assert_eq!(parse_speed_mbps("-1"), None);
        assert_eq!(parse_speed_mbps("4294967295"), None);
        assert_eq!(parse_rate_gbps("100 Gb/sec (4X EDR)"), Some(100.0));
        assert_eq!(parse_rate_gbps("2.5 Gb/sec (1X SDR)"), Some(2.5));
        assert_eq!(parse_rate_gbps("bogus"), None);
        assert_eq!(parse_port_state("4: ACTIVE"), "ACTIVE");
        assert_eq!(parse_port_state("1: DOWN"), "DOWN");
        assert_eq!(parse_distances("10 21"), Some(vec![10, 21]));
        assert_eq!(parse_distances("10 x"), None);
        assert!(looks_like_pci_address("0000:3b:00.0"));
        assert!(!looks_like_pci_address("virtio2"));
        assert!(!looks_like_pci_address("pci0000:00"));
    }

    #[test]
    fn this_machines_root_filesystem_has_a_disk_or_says_why_not() {
        // On the dev VM `/` is on vda; in containers on overlayfs it has no block device.
        match block_device_of(Path::new("/")) {
            Some(disk) => assert!(Path::new("/sys/block").join(&disk).exists(), "{disk}"),
            None => eprintln!("`/` has no backing block device here (overlay/tmpfs/btrfs)"),
        }
    }
}
