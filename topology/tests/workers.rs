//! Per-worker placement on an hwloc XML export of a two-socket server
//! (`tests/data/two-socket-smt.xml`: 2 packages × 4 cores × 2 hardware threads, siblings
//! numbered N and N+8 as on Intel servers, one node per package): which node `--numa` picks and
//! which CPU each worker gets. Plus, on this machine for real: a worker started under an entered
//! placement is pinned to one CPU and a pool created there is bound to the node.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use blitx_core::placer::{WorkerRole, worker};
use blitx_topology::{
    Binder, Devices, Nic, NodePlacer, NumaPolicy, Placement, Topology, TopologySource,
    enter_placement, place,
};

const TWO_SOCKET_XML: &str = include_str!("data/two-socket-smt.xml");

fn nic(name: &str, node: Option<u32>) -> Nic {
    Nic {
        name: name.to_owned(),
        numa_node: node,
        speed_mbps: Some(100_000),
        operstate: Some("up".to_owned()),
        is_virtual: false,
        pci: Some("0000:af:00.0".to_owned()),
        lower: Vec::new(),
    }
}

fn server() -> Topology {
    Topology::from_xml(TWO_SOCKET_XML)
        .unwrap()
        .with_devices(Devices { nics: vec![nic("ens2f0", Some(1))], ..Devices::default() })
}

fn placer(p: &Placement) -> NodePlacer {
    NodePlacer::new(Arc::new(Binder::from_xml(TWO_SOCKET_XML).unwrap()), p).unwrap()
}

/// The core (by its first sibling) of a CPU in the XML: N and N+8 share one.
fn core_of(cpu: u32) -> u32 {
    cpu % 8
}

#[test]
fn the_xml_server_reads_back() {
    let t = server();
    assert_eq!(t.source, TopologySource::Xml);
    assert_eq!((t.packages.len(), t.numa_nodes.len(), t.cores, t.cpus.len()), (2, 2, 8, 16));
    assert_eq!(t.numa_nodes[0].cpus, vec![0, 1, 2, 3, 8, 9, 10, 11]);
    assert_eq!(t.numa_nodes[1].cpus, vec![4, 5, 6, 7, 12, 13, 14, 15]);
    assert_eq!(t.numa_nodes[1].memory_bytes, 64 << 30);
    assert_eq!(t.numa_nodes[1].package, Some(1));
    assert!(t.to_string().contains("an XML topology"), "{t}");
}

#[test]
fn auto_follows_the_nic_and_workers_spread_over_its_cores() {
    let t = server();
    let p = place(&t, NumaPolicy::Auto, Some("ens2f0")).unwrap();
    assert_eq!(p.node, Some(1), "{p}");
    assert_eq!(p.cpus, vec![4, 5, 6, 7, 12, 13, 14, 15]);
    let w = placer(&p);
    assert_eq!(w.node(), 1);
    // One hardware thread of each core first, then the siblings.
    assert_eq!(w.cpus(), &[4, 5, 6, 7, 12, 13, 14, 15]);
    let handed: Vec<u32> = (0..9).map(|_| w.next_cpu().unwrap()).collect();
    assert_eq!(handed, vec![4, 5, 6, 7, 12, 13, 14, 15, 4]);
    // Four workers (e.g. 2 readers + 2 TCP streams) get four different cores.
    let mut cores: Vec<u32> = handed[..4].iter().map(|&c| core_of(c)).collect();
    cores.dedup();
    assert_eq!(cores.len(), 4);
}

#[test]
fn node_0_by_name_uses_socket_0() {
    let t = server();
    let p = place(&t, NumaPolicy::Node(0), Some("ens2f0")).unwrap();
    assert_eq!(p.node, Some(0));
    assert_eq!(placer(&p).cpus(), &[0, 1, 2, 3, 8, 9, 10, 11]);
}

#[test]
fn under_taskset_workers_get_distinct_cores_before_siblings() {
    // Started under `taskset -c 5,12,13`: auto keeps node 1 but only these CPUs. 12 and 13 are
    // the second threads of cores 4 and 5, and 5 shares core 5 with 13: the first two workers
    // go to cores 4 and 5 (CPUs 12 and 5), the third to 13 — not 5, 12, 13 in number order.
    let mut t = server();
    t.allowed_cpus = vec![5, 12, 13];
    let p = place(&t, NumaPolicy::Auto, Some("ens2f0")).unwrap();
    assert_eq!((p.node, p.cpus.clone()), (Some(1), vec![5, 12, 13]), "{p}");
    let w = placer(&p);
    assert_eq!(w.cpus(), &[12, 5, 13]);
    assert_ne!(core_of(w.cpus()[0]), core_of(w.cpus()[1]));
}

#[test]
fn off_and_unknown_nodes_place_no_workers() {
    let t = server();
    let off = place(&t, NumaPolicy::Off, Some("ens2f0")).unwrap();
    let binder = Arc::new(Binder::from_xml(TWO_SOCKET_XML).unwrap());
    assert!(NodePlacer::new(Arc::clone(&binder), &off).is_none());
    let t = Topology::from_xml(TWO_SOCKET_XML)
        .unwrap()
        .with_devices(Devices { nics: vec![nic("eth9", None)], ..Devices::default() });
    let unknown = place(&t, NumaPolicy::Auto, Some("eth9")).unwrap();
    assert_eq!(unknown.node, None, "{unknown}");
    assert!(NodePlacer::new(binder, &unknown).is_none());
    assert!(place(&t, NumaPolicy::Node(2), None).is_err());
}

#[test]
fn a_broken_xml_is_an_error() {
    let e = Topology::from_xml("<topology version=\"2.0\"><object type=").unwrap_err();
    assert!(e.to_string().contains("XML"), "{e}");
    assert!(Binder::from_xml("not xml").is_err());
}

/// The policy column of `/proc/self/numa_maps` for the mapping that starts at `addr`: the words
/// between the address and the first `key=value` (`default`, `prefer:0`, `prefer (many):0`).
fn numa_maps_policy(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/numa_maps").ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let start = usize::from_str_radix(f.next()?, 16).ok()?;
        let policy: Vec<&str> = f.take_while(|w| !w.contains('=')).collect();
        (start == addr).then(|| policy.join(" "))
    })
}

#[test]
fn on_this_machine_workers_get_one_cpu_and_pools_prefer_the_node() {
    let topo = Topology::discover().unwrap();
    let placement = place(&topo, NumaPolicy::Node(0), None).unwrap();
    // A fresh thread plays the CLI's main thread, so the test runner's threads stay as they are.
    let (worker_cpus, region, policy) = std::thread::spawn(move || {
        let _placed = enter_placement(&placement);
        let pool = blitx_core::BufferPool::new(4, 1 << 20, false).unwrap();
        let (base, _) = pool.region();
        let policy = numa_maps_policy(base as usize);
        let cpus = std::thread::scope(|s| {
            s.spawn(worker(WorkerRole::Reader, blitx_topology::current_thread_cpus)).join().unwrap()
        });
        (cpus, base as usize, policy)
    })
    .join()
    .unwrap();
    let cpus = worker_cpus.unwrap();
    assert_eq!(cpus.len(), 1, "a worker is pinned to one CPU: {cpus:?}");
    assert!(placement_cpus_contain(&cpus), "{cpus:?}");
    match policy.as_deref() {
        // hwloc's Bind without STRICT is MPOL_PREFERRED_MANY (kernels since 5.15) or
        // MPOL_PREFERRED on Linux — not MPOL_BIND: a full node falls back, no SIGBUS.
        Some("prefer (many):0" | "prefer:0") => {}
        Some("default") if blitx_topology::try_bind_memory(std::ptr::null(), 0, 0).is_ok() => {
            let probe = vec![0u8; 1 << 16];
            let aligned = probe.as_ptr().wrapping_add(probe.as_ptr().align_offset(4096));
            match blitx_topology::try_bind_memory(aligned, 4096, 0) {
                Err(e) if e.is_unsupported() => {
                    eprintln!("SKIPPED: memory policies unavailable here: {e}");
                }
                r => panic!("pool at {region:#x} left unbound although mbind works: {r:?}"),
            }
        }
        other => panic!("pool at {region:#x}: numa_maps policy {other:?}, wanted prefer:0"),
    }
}

fn placement_cpus_contain(cpus: &[u32]) -> bool {
    let topo = Topology::discover().unwrap();
    let node0 = &topo.numa_nodes[0].cpus;
    cpus.iter().all(|c| node0.contains(c))
}
