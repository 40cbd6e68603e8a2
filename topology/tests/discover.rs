//! Discovery on the machine running the tests, and device discovery on a fake sysfs tree
//! shaped like a two-socket lab server (symlinks and all, as the kernel lays them out).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use blitx_topology::{
    Devices, NumaPolicy, Topology, TopologySource, bind_memory, memory_node_of, place,
};

#[test]
fn discover_works_here_and_its_json_parses() {
    let t = Topology::discover().unwrap();
    eprintln!("{t}");
    assert_eq!(t.source, TopologySource::System);
    assert!(!t.numa_nodes.is_empty());
    assert!(!t.packages.is_empty());
    assert!(!t.cpus.is_empty());
    assert!(t.cores >= 1 && t.cores <= t.cpus.len());
    assert!(!t.allowed_cpus.is_empty());
    assert!(t.allowed_cpus.iter().all(|c| t.cpus.contains(c)));
    let mut node_cpus: Vec<u32> = t.numa_nodes.iter().flat_map(|n| n.cpus.clone()).collect();
    node_cpus.sort_unstable();
    assert_eq!(node_cpus, t.cpus, "every CPU is in exactly one node");
    assert!(t.numa_nodes.iter().all(|n| n.memory_bytes > 0));
    assert!(t.devices.nics.iter().any(|n| n.name == "lo" && n.is_virtual));
    // The kernel lists at least as many nodes as hwloc shows (cgroups may hide some).
    let kernel_nodes = fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("node").is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(1);
    assert!(t.numa_nodes.len() <= kernel_nodes.max(1));

    let json = serde_json::to_string_pretty(&t).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in ["source", "packages", "numa_nodes", "cpus", "allowed_cpus", "cores", "devices"] {
        assert!(value.get(key).is_some(), "JSON lacks {key}: {json}");
    }
    assert!(value["devices"]["nics"][0]["virtual"].is_boolean(), "{json}");
    let back: Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);

    // Auto placement on this machine never fails, whatever the NICs.
    for nic in &t.devices.nics {
        let p = place(&t, NumaPolicy::Auto, Some(&nic.name)).unwrap();
        assert!(!p.cpus.is_empty());
        eprintln!("{}: {p}", nic.name);
    }
}

#[test]
fn buffer_bound_to_the_placed_node_lands_there() {
    let t = Topology::discover().unwrap();
    let node = t.numa_nodes[0].id;
    let p = place(&t, NumaPolicy::Node(node), None).unwrap();
    let page = 4096;
    let len = 2 << 20;
    let mut buf = vec![0u8; len + 64 * page];
    // Align for the largest common page size (64 KiB on some arm64 kernels).
    let offset = buf.as_ptr().align_offset(64 * 1024);
    let ptr = buf.as_ptr().wrapping_add(offset);
    if !bind_memory(ptr, len, p.node.unwrap()) {
        eprintln!("SKIPPED: mbind is not allowed here (seccomp or no NUMA support)");
        return;
    }
    buf[offset..offset + len].fill(0xa5);
    assert_eq!(memory_node_of(buf[offset..].as_ptr()), Some(node));
}

/// Builds `root/devices/...` directories with attribute files and `root/class/...` symlinks.
struct FakeSysfs<'a> {
    root: &'a Path,
}

impl FakeSysfs<'_> {
    fn attr(&self, rel: &str, text: &str) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("{text}\n")).unwrap();
    }
    fn dir(&self, rel: &str) {
        fs::create_dir_all(self.root.join(rel)).unwrap();
    }
    fn link(&self, rel: &str, target_rel: &str) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(self.root.join(target_rel), path).unwrap();
    }
}

fn lab_server_sysfs(root: &Path) {
    let s = FakeSysfs { root };
    // A ConnectX port on socket 1: netdev ens1f0 and verbs device mlx5_0 on PCI 0000:3b:00.0.
    let mlx = "devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0";
    s.attr(&format!("{mlx}/numa_node"), "1");
    s.attr(&format!("{mlx}/net/ens1f0/speed"), "100000");
    s.attr(&format!("{mlx}/net/ens1f0/operstate"), "up");
    s.link(&format!("{mlx}/net/ens1f0/device"), mlx);
    s.link("class/net/ens1f0", &format!("{mlx}/net/ens1f0"));
    s.attr(&format!("{mlx}/infiniband/mlx5_0/ports/1/rate"), "100 Gb/sec (4X EDR)");
    s.attr(&format!("{mlx}/infiniband/mlx5_0/ports/1/state"), "4: ACTIVE");
    s.attr(&format!("{mlx}/infiniband/mlx5_0/ports/1/link_layer"), "Ethernet");
    s.attr(&format!("{mlx}/infiniband/mlx5_0/ports/1/gid_attrs/ndevs/0"), "ens1f0");
    s.link(&format!("{mlx}/infiniband/mlx5_0/device"), mlx);
    s.link("class/infiniband/mlx5_0", &format!("{mlx}/infiniband/mlx5_0"));
    // A virtio NIC whose PCI function does not know its node (the dev VM's eth0).
    let vnet = "devices/pci0000:00/0000:00:03.0";
    s.attr(&format!("{vnet}/numa_node"), "-1");
    s.dir(&format!("{vnet}/virtio2"));
    s.attr(&format!("{vnet}/virtio2/net/eth0/operstate"), "up");
    s.attr(&format!("{vnet}/virtio2/net/eth0/speed"), "-1");
    s.link(&format!("{vnet}/virtio2/net/eth0/device"), &format!("{vnet}/virtio2"));
    s.link("class/net/eth0", &format!("{vnet}/virtio2/net/eth0"));
    // Virtual interfaces: lo, and a bond over ens1f0 (lower_ link).
    s.attr("devices/virtual/net/lo/operstate", "unknown");
    s.link("class/net/lo", "devices/virtual/net/lo");
    s.attr("devices/virtual/net/bond0/operstate", "up");
    s.attr("devices/virtual/net/bond0/speed", "100000");
    s.link("devices/virtual/net/bond0/lower_ens1f0", &format!("{mlx}/net/ens1f0"));
    s.link("class/net/bond0", "devices/virtual/net/bond0");
    // Soft-RoCE on eth0: no device link, a `parent` file.
    s.attr("devices/virtual/infiniband/rxe0/parent", "eth0");
    s.attr("devices/virtual/infiniband/rxe0/ports/1/state", "4: ACTIVE");
    s.attr("devices/virtual/infiniband/rxe0/ports/1/rate", "10 Gb/sec (1X QDR)");
    s.link("class/infiniband/rxe0", "devices/virtual/infiniband/rxe0");
    // NVMe on socket 0: namespace → controller → PCI function with numa_node 0, one partition.
    let nvme = "devices/pci0000:5d/0000:5d:00.0/0000:5e:00.0";
    s.attr(&format!("{nvme}/numa_node"), "0");
    s.attr(&format!("{nvme}/nvme/nvme0/model"), "Lab NVMe 3.84TB");
    s.attr(&format!("{nvme}/nvme/nvme0/nvme0n1/size"), "7501476528");
    s.attr(&format!("{nvme}/nvme/nvme0/nvme0n1/queue/rotational"), "0");
    s.link(&format!("{nvme}/nvme/nvme0/nvme0n1/device"), &format!("{nvme}/nvme/nvme0"));
    s.attr(&format!("{nvme}/nvme/nvme0/nvme0n1/nvme0n1p1/partition"), "1");
    s.link("block/nvme0n1", &format!("{nvme}/nvme/nvme0/nvme0n1"));
    s.link("class/block/nvme0n1", &format!("{nvme}/nvme/nvme0/nvme0n1"));
    s.link("class/block/nvme0n1p1", &format!("{nvme}/nvme/nvme0/nvme0n1/nvme0n1p1"));
    // md RAID over the partition, and an unused loop device.
    s.attr("devices/virtual/block/md0/size", "7000000000");
    s.attr("devices/virtual/block/md0/queue/rotational", "0");
    s.link(
        "devices/virtual/block/md0/slaves/nvme0n1p1",
        &format!("{nvme}/nvme/nvme0/nvme0n1/nvme0n1p1"),
    );
    s.link("block/md0", "devices/virtual/block/md0");
    s.attr("devices/virtual/block/loop0/size", "0");
    s.link("block/loop0", "devices/virtual/block/loop0");
}

#[test]
fn fake_lab_sysfs_is_read_with_nodes_speeds_and_links() {
    let dir = tempfile::tempdir().unwrap();
    lab_server_sysfs(dir.path());
    let d = Devices::scan(dir.path()).unwrap();

    let names: Vec<&str> = d.nics.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["bond0", "ens1f0", "eth0", "lo"]);
    let ens = &d.nics[1];
    assert_eq!(ens.numa_node, Some(1));
    assert_eq!(ens.speed_mbps, Some(100_000));
    assert!(!ens.is_virtual);
    assert_eq!(ens.pci.as_deref(), Some("0000:3b:00.0"));
    let eth0 = &d.nics[2];
    assert_eq!((eth0.numa_node, eth0.speed_mbps, eth0.is_virtual), (None, None, false));
    assert_eq!(eth0.pci.as_deref(), Some("0000:00:03.0"));
    let bond = &d.nics[0];
    assert!(bond.is_virtual);
    assert_eq!(bond.lower, ["ens1f0"]);
    assert!(d.nics[3].is_virtual);

    assert_eq!(d.rdma.len(), 2);
    let mlx = &d.rdma[0];
    assert_eq!((mlx.name.as_str(), mlx.numa_node), ("mlx5_0", Some(1)));
    assert_eq!(mlx.netdevs, ["ens1f0"]);
    assert_eq!(mlx.ports.len(), 1);
    assert_eq!(mlx.ports[0].rate_gbps, Some(100.0));
    assert_eq!(mlx.ports[0].state.as_deref(), Some("ACTIVE"));
    assert_eq!(mlx.ports[0].link_layer.as_deref(), Some("Ethernet"));
    let rxe = &d.rdma[1];
    assert_eq!((rxe.numa_node, rxe.netdevs.clone()), (None, vec!["eth0".to_owned()]));

    let names: Vec<&str> = d.block.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["loop0", "md0", "nvme0n1"]);
    let nvme = &d.block[2];
    assert_eq!(nvme.numa_node, Some(0));
    assert_eq!(nvme.rotational, Some(false));
    assert_eq!(nvme.size_bytes, 7_501_476_528 * 512);
    assert_eq!(nvme.model.as_deref(), Some("Lab NVMe 3.84TB"));
    assert!(!nvme.is_virtual);
    let md = &d.block[1];
    assert!(md.is_virtual);
    assert_eq!(md.slaves, ["nvme0n1"]);

    // Placement on a 2-node machine with these devices.
    let t = Topology::from_synthetic("pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2")
        .unwrap()
        .with_devices(d);
    let on = |dev: &str| place(&t, NumaPolicy::Auto, Some(dev)).unwrap();
    assert_eq!(on("ens1f0").node, Some(1));
    assert_eq!(on("bond0").node, Some(1));
    assert_eq!(on("mlx5_0").node, Some(1));
    assert_eq!(on("nvme0n1").node, Some(0));
    assert_eq!(on("md0").node, Some(0));
    assert_eq!(on("eth0").node, None);
    assert_eq!(on("rxe0").node, None);
    assert!(on("rxe0").reason.contains("eth0"), "{}", on("rxe0").reason);
    let text = t.to_string();
    assert!(!text.contains("loop0"), "unused loop devices are hidden: {text}");
    assert!(text.contains("mlx5_0       node 1"), "{text}");
}

#[test]
fn missing_sysfs_classes_are_empty_not_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = Devices::scan(dir.path()).unwrap();
    assert_eq!(d, Devices::default());
}
