//! Placement on hwloc synthetic topologies of 2- and 4-node servers, with NICs, verbs devices
//! and disks attached to chosen nodes by hand (synthetic topologies have no I/O devices; the
//! device → node map is an input of placement, filled from sysfs in real discovery).
#![allow(clippy::unwrap_used)]

use blitx_topology::{
    BlockDevice, Devices, Nic, NumaNode, NumaPolicy, Placement, PlacementError, RdmaDevice,
    Topology, place,
};

const TWO_NODES: &str = "pack:2 [numa(memory=1GB)] l3:1 core:4 pu:2";
const FOUR_SOCKETS: &str = "pack:4 [numa(memory=1GB)] l3:1 core:4 pu:2";
/// Two sockets with sub-NUMA clustering: two nodes per package.
const TWO_SOCKETS_SNC2: &str = "pack:2 group:2 [numa(memory=1GB)] core:4 pu:2";

fn nic(name: &str, node: Option<u32>) -> Nic {
    Nic {
        name: name.to_owned(),
        numa_node: node,
        speed_mbps: Some(100_000),
        operstate: Some("up".to_owned()),
        is_virtual: false,
        pci: None,
        lower: Vec::new(),
    }
}

fn virtual_nic(name: &str, lower: &[&str]) -> Nic {
    Nic {
        is_virtual: true,
        speed_mbps: None,
        lower: lower.iter().map(|s| (*s).to_owned()).collect(),
        ..nic(name, None)
    }
}

fn verbs(name: &str, node: Option<u32>, netdevs: &[&str]) -> RdmaDevice {
    RdmaDevice {
        name: name.to_owned(),
        numa_node: node,
        pci: None,
        netdevs: netdevs.iter().map(|s| (*s).to_owned()).collect(),
        ports: Vec::new(),
    }
}

fn disk(name: &str, node: Option<u32>, slaves: &[&str]) -> BlockDevice {
    BlockDevice {
        name: name.to_owned(),
        numa_node: node,
        rotational: Some(false),
        size_bytes: 1 << 40,
        is_virtual: !slaves.is_empty(),
        model: None,
        slaves: slaves.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A 2-socket server: the 100G NIC and its HCA on node 1, an onboard NIC the firmware does
/// not place, a bond over node-1 ports, a bond across sockets, Soft-RoCE on the node-1 NIC,
/// and NVMe on node 0 with an md RAID over it.
fn two_node_server() -> Topology {
    Topology::from_synthetic(TWO_NODES).unwrap().with_devices(Devices {
        nics: vec![
            nic("ens1f0", Some(1)),
            nic("ens1f1", Some(1)),
            nic("ens2f0", Some(0)),
            nic("eno1", None),
            virtual_nic("bond0", &["ens1f0", "ens1f1"]),
            virtual_nic("bond1", &["ens1f0", "ens2f0"]),
            virtual_nic("vlan100", &["bond0"]),
            virtual_nic("lo", &[]),
        ],
        rdma: vec![verbs("mlx5_1", Some(1), &["ens1f0"]), verbs("rxe0", None, &["ens1f0"])],
        block: vec![disk("nvme0n1", Some(0), &[]), disk("md0", None, &["nvme0n1"])],
    })
}

fn node_cpus(t: &Topology, id: u32) -> Vec<u32> {
    t.node(id).unwrap().cpus.clone()
}

fn assert_all_cpus(p: &Placement, t: &Topology) {
    assert_eq!(p.node, None, "{p}");
    assert_eq!(p.cpus, t.allowed_cpus, "{p}");
    assert!(!p.reason.is_empty());
}

#[test]
fn nic_on_node_1_of_2_gets_node_1_cpus() {
    let t = two_node_server();
    let p = place(&t, NumaPolicy::Auto, Some("ens1f0")).unwrap();
    assert_eq!(p.node, Some(1));
    assert_eq!(p.cpus, (8..16).collect::<Vec<u32>>());
    assert_eq!(p.cpus, node_cpus(&t, 1));
    assert!(p.reason.contains("NIC ens1f0 is on NUMA node 1"), "{}", p.reason);

    let p = place(&t, NumaPolicy::Auto, Some("ens2f0")).unwrap();
    assert_eq!(p.node, Some(0));
    assert_eq!(p.cpus, (0..8).collect::<Vec<u32>>());
}

#[test]
fn verbs_device_on_node_1_gets_node_1_cpus() {
    let t = two_node_server();
    let p = place(&t, NumaPolicy::Auto, Some("mlx5_1")).unwrap();
    assert_eq!((p.node, p.cpus.clone()), (Some(1), node_cpus(&t, 1)), "{p}");
    assert!(p.reason.contains("RDMA device mlx5_1"), "{}", p.reason);
}

#[test]
fn soft_roce_follows_its_netdev() {
    let t = two_node_server();
    let p = place(&t, NumaPolicy::Auto, Some("rxe0")).unwrap();
    assert_eq!(p.node, Some(1), "{p}");
    assert!(p.reason.contains("ens1f0"), "{}", p.reason);
}

#[test]
fn bonds_and_vlans_follow_lower_interfaces_when_they_agree() {
    let t = two_node_server();
    let p = place(&t, NumaPolicy::Auto, Some("bond0")).unwrap();
    assert_eq!(p.node, Some(1), "{p}");
    let p = place(&t, NumaPolicy::Auto, Some("vlan100")).unwrap();
    assert_eq!(p.node, Some(1), "{p}");
    let p = place(&t, NumaPolicy::Auto, Some("bond1")).unwrap();
    assert_all_cpus(&p, &t);
    assert!(p.reason.contains("spans NUMA nodes 0,1"), "{}", p.reason);
}

#[test]
fn storage_threads_follow_the_disk() {
    let t = two_node_server();
    let p = place(&t, NumaPolicy::Auto, Some("nvme0n1")).unwrap();
    assert_eq!(p.node, Some(0), "{p}");
    let p = place(&t, NumaPolicy::Auto, Some("md0")).unwrap();
    assert_eq!(p.node, Some(0), "{p}");
}

#[test]
fn unknown_device_node_gets_all_cpus_with_a_reason() {
    let t = two_node_server();
    let p = place(&t, NumaPolicy::Auto, Some("eno1")).unwrap();
    assert_all_cpus(&p, &t);
    assert_eq!(p.cpus.len(), 16);
    assert!(p.reason.contains("does not know NIC eno1's NUMA node"), "{}", p.reason);

    let p = place(&t, NumaPolicy::Auto, Some("lo")).unwrap();
    assert_all_cpus(&p, &t);
    assert!(p.reason.contains("virtual"), "{}", p.reason);

    let p = place(&t, NumaPolicy::Auto, Some("ens9f9")).unwrap();
    assert_all_cpus(&p, &t);
    assert!(p.reason.contains("no NIC, RDMA or block device named ens9f9"), "{}", p.reason);
}

#[test]
fn no_device_gets_all_cpus() {
    let t = two_node_server();
    for device in [None, Some("none"), Some("")] {
        let p = place(&t, NumaPolicy::Auto, device).unwrap();
        assert_all_cpus(&p, &t);
    }
}

#[test]
fn off_gets_all_cpus_and_no_node() {
    let t = two_node_server();
    let p = place(&t, NumaPolicy::Off, Some("ens1f0")).unwrap();
    assert_all_cpus(&p, &t);
    assert!(p.reason.contains("--numa off"), "{}", p.reason);
}

#[test]
fn explicit_node_overrides_the_device() {
    let t = two_node_server();
    let p = place(&t, "node=0".parse().unwrap(), Some("ens1f0")).unwrap();
    assert_eq!((p.node, p.cpus), (Some(0), node_cpus(&t, 0)));
}

#[test]
fn node_3_on_a_4_socket_machine() {
    let t = Topology::from_synthetic(FOUR_SOCKETS).unwrap();
    assert_eq!(t.numa_nodes.len(), 4);
    let p = place(&t, "node=3".parse().unwrap(), None).unwrap();
    assert_eq!(p.node, Some(3));
    assert_eq!(p.cpus, (24..32).collect::<Vec<u32>>());
    assert_eq!(t.node(3).unwrap().package, Some(3));
}

#[test]
fn node_3_on_a_2_socket_snc_machine_is_the_second_half_of_socket_1() {
    let t = Topology::from_synthetic(TWO_SOCKETS_SNC2).unwrap();
    assert_eq!((t.packages.len(), t.numa_nodes.len()), (2, 4));
    assert_eq!(t.packages[1].numa_nodes, vec![2, 3]);
    let p = place(&t, NumaPolicy::Node(3), None).unwrap();
    assert_eq!(p.cpus, (24..32).collect::<Vec<u32>>());
    assert_eq!(t.node(3).unwrap().package, Some(1));
}

#[test]
fn node_5_is_an_error_naming_the_nodes_that_exist() {
    let t = Topology::from_synthetic(FOUR_SOCKETS).unwrap();
    let e = place(&t, "node=5".parse().unwrap(), Some("ens1f0")).unwrap_err();
    assert_eq!(e, PlacementError::NoSuchNode { node: 5, available: vec![0, 1, 2, 3] });
    assert_eq!(e.to_string(), "NUMA node 5 does not exist here; this machine has nodes 0, 1, 2, 3");
}

#[test]
fn policy_text_errors_are_clap_friendly() {
    let e = "nodes=1".parse::<NumaPolicy>().unwrap_err();
    assert_eq!(e.to_string(), "unknown NUMA policy `nodes=1`: expected `auto`, `off` or `node=N`");
    let e = "node=x".parse::<NumaPolicy>().unwrap_err();
    assert!(e.to_string().starts_with("bad NUMA node in `node=x`"), "{e}");
    // clap's value_parser needs FromStr + an Error that is Send + Sync + 'static.
    fn clap_bound<T: std::str::FromStr<Err = E>, E: std::error::Error + Send + Sync + 'static>() {}
    clap_bound::<NumaPolicy, _>();
}

#[test]
fn taskset_outside_the_device_node_wins_over_auto() {
    let mut t = two_node_server();
    t.allowed_cpus = (0..8).collect();
    let p = place(&t, NumaPolicy::Auto, Some("ens1f0")).unwrap();
    assert_eq!(p.node, None, "{p}");
    assert_eq!(p.cpus, (0..8).collect::<Vec<u32>>());
    assert!(p.reason.contains("taskset"), "{}", p.reason);
    // But an explicit node is honored, with the reason saying so.
    let p = place(&t, NumaPolicy::Node(1), None).unwrap();
    assert_eq!((p.node, p.cpus.clone()), (Some(1), node_cpus(&t, 1)));
    assert!(p.reason.contains("explicit request wins"), "{}", p.reason);
}

#[test]
fn partial_affinity_narrows_the_node() {
    let mut t = two_node_server();
    t.allowed_cpus = (0..12).collect();
    let p = place(&t, NumaPolicy::Auto, Some("ens1f0")).unwrap();
    assert_eq!((p.node, p.cpus.clone()), (Some(1), (8..12).collect::<Vec<u32>>()), "{p}");
}

#[test]
fn memory_only_node_gets_memory_but_not_threads() {
    let mut t = two_node_server();
    t.numa_nodes.push(NumaNode {
        id: 2,
        package: None,
        cpus: Vec::new(),
        cores: 0,
        memory_bytes: 64 << 30,
        distances: Vec::new(),
    });
    t.devices.nics.push(nic("cxl0", Some(2)));
    let p = place(&t, NumaPolicy::Node(2), None).unwrap();
    assert_eq!(p.node, Some(2));
    assert_eq!(p.cpus, t.allowed_cpus);
    let p = place(&t, NumaPolicy::Auto, Some("cxl0")).unwrap();
    assert_eq!((p.node, p.cpus.clone()), (Some(2), t.allowed_cpus.clone()), "{p}");
}

#[test]
fn single_node_machine_needs_no_placement() {
    let t = Topology::from_synthetic("pack:1 [numa(memory=1GB)] core:2 pu:1")
        .unwrap()
        .with_devices(Devices { nics: vec![nic("eth0", Some(0))], ..Devices::default() });
    let p = place(&t, NumaPolicy::Auto, Some("eth0")).unwrap();
    assert_all_cpus(&p, &t);
    assert!(p.reason.contains("single NUMA node"), "{}", p.reason);
    // `node=0` still works (it is how a lab forces a binding to check numastat).
    assert_eq!(place(&t, NumaPolicy::Node(0), None).unwrap().node, Some(0));
}

#[test]
fn synthetic_topology_json_round_trips() {
    let t = two_node_server();
    let json = serde_json::to_string_pretty(&t).unwrap();
    let back: Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    let text = t.to_string();
    assert!(text.contains("NUMA node 1: CPUs 8-15 (4 cores), 953.7 MiB"), "{text}");
    assert!(text.contains("bond0"), "{text}");
}
