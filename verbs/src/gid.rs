//! GID table entries and the choice of the GID index a QP uses as its source
//! address. Pure: the table is read by `device`, this module only ranks it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::types::{Gid, GidType, LinkLayer};

/// One valid entry of a port's GID table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GidEntry {
    /// Index in the port's table (the `sgid_index` a QP would use).
    pub index: u32,
    /// The GID itself.
    pub gid: Gid,
    /// IB / RoCE v1 / RoCE v2, when the library or sysfs says.
    pub gid_type: Option<GidType>,
    /// The IPv4 address for an IPv4-mapped GID.
    pub ipv4: Option<Ipv4Addr>,
    /// The netdev the entry belongs to (RoCE), from sysfs.
    pub netdev: Option<String>,
}

impl GidEntry {
    /// An entry with `ipv4` derived from the GID.
    pub fn new(index: u32, gid: Gid, gid_type: Option<GidType>, netdev: Option<String>) -> Self {
        GidEntry { index, gid, gid_type, ipv4: gid.ipv4_mapped(), netdev }
    }
}

/// Picks the GID index a QP should use on a port, or `None` when no entry is
/// usable.
///
/// On Ethernet (RoCE) the preference is: RoCE v2 with an IPv4-mapped address
/// (routable, matches how hosts are addressed), then other RoCE v2 that is not
/// link-local, then any RoCE v2, then RoCE v1 (not routable), then anything.
/// Ties go to the lowest index. On InfiniBand, index 0 (the port GID) is the
/// conventional choice.
pub fn select_gid_index(entries: &[GidEntry], link_layer: LinkLayer) -> Option<u32> {
    let usable = entries.iter().filter(|e| !e.gid.is_zero());
    if link_layer != LinkLayer::Ethernet {
        return usable.map(|e| e.index).min();
    }
    usable.min_by_key(|e| (roce_rank(e), e.index)).map(|e| e.index)
}

fn roce_rank(entry: &GidEntry) -> u8 {
    match (entry.gid_type, entry.ipv4.is_some(), entry.gid.is_link_local()) {
        (Some(GidType::RoceV2), true, _) => 0,
        (Some(GidType::RoceV2), false, false) => 1,
        (Some(GidType::RoceV2), false, true) => 2,
        (Some(GidType::RoceV1), true, _) => 3,
        (Some(GidType::RoceV1), false, _) => 4,
        (None, true, _) => 5,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u32, gid: &str, gid_type: Option<GidType>) -> GidEntry {
        GidEntry::new(index, gid.parse().unwrap(), gid_type, Some("eth0".into()))
    }

    #[test]
    fn prefers_roce_v2_ipv4_mapped() {
        // the table rxe0 shows in the lab: [0] link-local v2, [1] IPv4-mapped v2
        let table = [
            entry(0, "fe80::5054:ff:fe77:1", Some(GidType::RoceV2)),
            entry(1, "::ffff:10.77.0.1", Some(GidType::RoceV2)),
        ];
        assert_eq!(select_gid_index(&table, LinkLayer::Ethernet), Some(1));
        assert_eq!(table[1].ipv4, Some(Ipv4Addr::new(10, 77, 0, 1)));
    }

    #[test]
    fn mlx5_style_table_with_v1_and_v2_pairs() {
        let table = [
            entry(0, "fe80::1", Some(GidType::RoceV1)),
            entry(1, "fe80::1", Some(GidType::RoceV2)),
            entry(2, "::ffff:192.168.1.5", Some(GidType::RoceV1)),
            entry(3, "::ffff:192.168.1.5", Some(GidType::RoceV2)),
        ];
        assert_eq!(select_gid_index(&table, LinkLayer::Ethernet), Some(3));
    }

    #[test]
    fn falls_back_in_order() {
        let global_v6 = [
            entry(0, "fe80::1", Some(GidType::RoceV2)),
            entry(4, "2001:db8::5", Some(GidType::RoceV2)),
        ];
        assert_eq!(select_gid_index(&global_v6, LinkLayer::Ethernet), Some(4));
        let only_v1 = [entry(2, "::ffff:10.0.0.1", Some(GidType::RoceV1))];
        assert_eq!(select_gid_index(&only_v1, LinkLayer::Ethernet), Some(2));
        let unknown_types = [entry(3, "fe80::1", None), entry(5, "::ffff:10.0.0.1", None)];
        assert_eq!(select_gid_index(&unknown_types, LinkLayer::Ethernet), Some(5));
    }

    #[test]
    fn infiniband_uses_lowest_index_and_zero_gids_are_ignored() {
        let table =
            [entry(0, "::", Some(GidType::Ib)), entry(1, "fe80::2:c903:a:1234", Some(GidType::Ib))];
        assert_eq!(select_gid_index(&table, LinkLayer::InfiniBand), Some(1));
        assert_eq!(select_gid_index(&[], LinkLayer::Ethernet), None);
        assert_eq!(select_gid_index(&table[..1], LinkLayer::Ethernet), None);
    }
}
