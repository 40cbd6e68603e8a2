//! What the kernel tells about an RDMA device through sysfs
//! (`/sys/class/infiniband/<dev>/...`): NUMA node, bound netdev, GID types.
//! Only reads files; every function takes the class directory so tests can
//! point it at a fake tree.

use std::fs;
use std::path::{Path, PathBuf};

use crate::types::{GidType, LinkLayer};

/// `/sys/class/infiniband`.
pub const SYSFS_CLASS_DIR: &str = "/sys/class/infiniband";

fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn port_dir(class_dir: &Path, device: &str, port: u8) -> PathBuf {
    class_dir.join(device).join("ports").join(port.to_string())
}

/// Names of the RDMA devices the kernel knows (the class directory's entries).
pub fn class_devices(class_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(class_dir)
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Why libibverbs listed no device: none in the kernel either, or kernel
/// devices without a userspace provider library.
pub fn no_device_reason(class_dir: &Path) -> String {
    let kernel = class_devices(class_dir);
    if kernel.is_empty() {
        "no RDMA device is present".to_owned()
    } else {
        format!(
            "the kernel has RDMA devices {kernel:?} but libibverbs found no provider for them \
             (install ibverbs-providers)"
        )
    }
}

/// The device's NUMA node; `None` when unknown (`-1`, or a virtual device such
/// as rxe that has no `device/` link).
pub fn numa_node(class_dir: &Path, device: &str) -> Option<u32> {
    let text = read_trimmed(&class_dir.join(device).join("device/numa_node"))?;
    text.parse::<i64>().ok().and_then(|node| u32::try_from(node).ok())
}

/// The netdev a device is bound to: `parent` (rxe, siw), else the first entry
/// of `device/net/` (a PCI NIC), else `None`.
pub fn netdev(class_dir: &Path, device: &str) -> Option<String> {
    let dir = class_dir.join(device);
    if let Some(parent) = read_trimmed(&dir.join("parent")) {
        return Some(parent);
    }
    let mut names: Vec<String> = fs::read_dir(dir.join("device/net"))
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The type of GID `index` on `port` (`gid_attrs/types/<index>`).
pub fn gid_type(
    class_dir: &Path,
    device: &str,
    port: u8,
    index: u32,
    link_layer: LinkLayer,
) -> Option<GidType> {
    let path = port_dir(class_dir, device, port).join("gid_attrs/types").join(index.to_string());
    GidType::from_sysfs(&read_trimmed(&path)?, link_layer)
}

/// The netdev of GID `index` on `port` (`gid_attrs/ndevs/<index>`).
pub fn gid_netdev(class_dir: &Path, device: &str, port: u8, index: u32) -> Option<String> {
    read_trimmed(&port_dir(class_dir, device, port).join("gid_attrs/ndevs").join(index.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn rxe_like_tree() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "rxe0/parent", "rxenet0\n");
        write(r, "rxe0/ports/1/gid_attrs/types/1", "RoCE v2\n");
        write(r, "rxe0/ports/1/gid_attrs/ndevs/1", "rxenet0\n");
        assert_eq!(numa_node(r, "rxe0"), None);
        assert_eq!(netdev(r, "rxe0").as_deref(), Some("rxenet0"));
        assert_eq!(gid_type(r, "rxe0", 1, 1, LinkLayer::Ethernet), Some(GidType::RoceV2));
        assert_eq!(gid_type(r, "rxe0", 1, 2, LinkLayer::Ethernet), None);
        assert_eq!(gid_netdev(r, "rxe0", 1, 1).as_deref(), Some("rxenet0"));
    }

    #[test]
    fn pci_nic_like_tree() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "mlx5_0/device/numa_node", "1\n");
        write(r, "mlx5_0/device/net/ens1f0np0/address", "x");
        write(r, "mlx5_1/device/numa_node", "-1\n");
        assert_eq!(numa_node(r, "mlx5_0"), Some(1));
        assert_eq!(numa_node(r, "mlx5_1"), None);
        assert_eq!(netdev(r, "mlx5_0").as_deref(), Some("ens1f0np0"));
        assert_eq!(netdev(r, "mlx5_1"), None);
        assert_eq!(netdev(r, "missing"), None);
        assert_eq!(class_devices(r), ["mlx5_0", "mlx5_1"]);
        assert!(no_device_reason(r).contains("ibverbs-providers"));
        assert_eq!(no_device_reason(&r.join("none")), "no RDMA device is present");
    }
}
