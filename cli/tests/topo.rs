//! `blit topo` on this machine.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn topo_json_describes_this_machine() {
    let out = Command::new(env!("CARGO_BIN_EXE_blit")).args(["topo", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = j["numa_nodes"].as_array().unwrap();
    assert!(!nodes.is_empty());
    let cpus = j["cpus"].as_array().unwrap();
    let online = std::thread::available_parallelism().unwrap().get();
    assert!(cpus.len() >= online, "{} CPUs listed, {online} usable", cpus.len());
    assert!(j["devices"]["nics"].as_array().unwrap().iter().any(|n| n["name"] == "lo"));
    let text = Command::new(env!("CARGO_BIN_EXE_blit")).arg("topo").output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("NUMA node"));
}

#[test]
fn numa_policy_is_validated() {
    let t = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blit"))
        .arg("xfer")
        .arg(t.path())
        .arg(dst.path().join("x/y"))
        .args(["--numa", "node=999", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("999"));
    let out = Command::new(env!("CARGO_BIN_EXE_blit"))
        .arg("xfer")
        .arg(t.path())
        .arg(dst.path().join("x/y"))
        .args(["--numa", "sideways"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
