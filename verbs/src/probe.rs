//! A cheap summary of the RDMA device this host would use, for the control
//! plane's negotiation ("both sides have a usable device on a common
//! subnet"). Opens the device, reads one port and its GID table, closes it.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::device::Context;
use crate::error::{Error, Result};
use crate::gid::GidEntry;
use crate::ifaddr;
use crate::sysfs::{self, SYSFS_CLASS_DIR};
use crate::types::{Gid, GidType, LinkLayer, Mtu, PortState};

/// The device, port and GID a session would use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// Device name (`mlx5_0`, `rxe0`).
    pub device: String,
    /// The ACTIVE port (1-based).
    pub port_num: u8,
    /// InfiniBand or Ethernet (RoCE).
    pub link_layer: LinkLayer,
    /// The source GID a QP would use.
    pub gid: Gid,
    /// Its index in the port's GID table.
    pub gid_index: u32,
    /// RoCE v1/v2 or IB.
    pub gid_type: Option<GidType>,
    /// The netdev behind the GID (RoCE).
    pub netdev: Option<String>,
    /// The GID's IPv4 address (RoCE v2 with an IPv4-mapped GID).
    pub ipv4: Option<Ipv4Addr>,
    /// That address's prefix length on its netdev.
    pub ipv4_prefix_len: Option<u8>,
    /// Active MTU of the port.
    pub active_mtu: Option<Mtu>,
    /// Link rate (speed × width); meaningless on Soft-RoCE.
    pub link_gbps: Option<f64>,
    /// NUMA node of the device (`None`: unknown or virtual).
    pub numa_node: Option<u32>,
}

impl DeviceSummary {
    /// The IPv4 network (address with host bits cleared, prefix length).
    pub fn ipv4_network(&self) -> Option<(Ipv4Addr, u8)> {
        let (addr, len) = (self.ipv4?, self.ipv4_prefix_len?);
        Some((Ipv4Addr::from(u32::from(addr) & mask(len)), len))
    }

    /// True when both sides' GID addresses are in one IPv4 subnet (by this
    /// side's prefix), so RoCE v2 reaches the peer without a router. Routed
    /// RoCE can work across subnets; this is the conservative check.
    pub fn shares_ipv4_subnet(&self, peer: &DeviceSummary) -> bool {
        match (self.ipv4_network(), peer.ipv4) {
            (Some((net, len)), Some(theirs)) => u32::from(theirs) & mask(len) == u32::from(net),
            _ => false,
        }
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0)
}

/// The device a session would use: `device`, or the first with an ACTIVE
/// port. Errors with [`Error::is_unavailable`] mean "no RDMA here".
pub fn probe(device: Option<&str>) -> Result<DeviceSummary> {
    let ctx = match device {
        Some(name) => Context::open(name)?,
        None => Context::open_first_active()?,
    };
    let port_num = ctx.first_active_port()?.ok_or_else(|| Error::PortDown {
        device: ctx.name().to_owned(),
        port: 1,
        state: PortState::Down,
    })?;
    let port = ctx.query_port(port_num)?;
    let entry: &GidEntry = port
        .chosen_gid()
        .ok_or_else(|| Error::NoGid { device: ctx.name().to_owned(), port: port_num })?;
    let class_dir = Path::new(SYSFS_CLASS_DIR);
    let netdev = entry.netdev.clone().or_else(|| sysfs::netdev(class_dir, ctx.name()));
    let ipv4_prefix_len = entry.ipv4.and_then(|a| ifaddr::ipv4_prefix_len(netdev.as_deref(), a));
    Ok(DeviceSummary {
        device: ctx.name().to_owned(),
        port_num,
        link_layer: port.link_layer,
        gid: entry.gid,
        gid_index: entry.index,
        gid_type: entry.gid_type,
        netdev,
        ipv4: entry.ipv4,
        ipv4_prefix_len,
        active_mtu: port.active_mtu,
        link_gbps: port.link_gbps,
        numa_node: sysfs::numa_node(class_dir, ctx.name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(ip: &str, prefix: u8) -> DeviceSummary {
        let ipv4: Ipv4Addr = ip.parse().unwrap();
        DeviceSummary {
            device: "rxe0".into(),
            port_num: 1,
            link_layer: LinkLayer::Ethernet,
            gid: Gid::from(ipv4),
            gid_index: 1,
            gid_type: Some(GidType::RoceV2),
            netdev: Some("rxenet0".into()),
            ipv4: Some(ipv4),
            ipv4_prefix_len: Some(prefix),
            active_mtu: Some(Mtu::Mtu4096),
            link_gbps: None,
            numa_node: None,
        }
    }

    #[test]
    fn subnets() {
        let a = summary("10.77.0.1", 24);
        assert_eq!(a.ipv4_network(), Some(("10.77.0.0".parse().unwrap(), 24)));
        assert!(a.shares_ipv4_subnet(&summary("10.77.0.2", 24)));
        assert!(!a.shares_ipv4_subnet(&summary("10.77.1.2", 24)));
        assert!(summary("10.77.0.1", 16).shares_ipv4_subnet(&summary("10.77.1.2", 24)));
        assert!(summary("10.0.0.1", 0).shares_ipv4_subnet(&summary("192.168.0.1", 24)));
        let no_ip = DeviceSummary { ipv4: None, ..summary("10.77.0.1", 24) };
        assert!(!a.shares_ipv4_subnet(&no_ip));
        assert!(!no_ip.shares_ipv4_subnet(&a));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<DeviceSummary>(&json).unwrap(), a);
    }

    #[test]
    fn probe_reports_a_typed_reason_or_a_device() {
        match probe(None) {
            Ok(s) => assert!(!s.device.is_empty()),
            Err(e) => assert!(e.is_unavailable(), "{e:?}"),
        }
    }
}
