//! Which interface routes to a peer: the input `--numa auto` needs when the user gave a peer
//! address rather than a device.
//!
//! Owns the parsing of the kernel's routing tables (`/proc/net/route`, `/proc/net/ipv6_route`)
//! as pure functions over their text, and one thin function that reads them. It must not open
//! sockets or talk netlink; policy routing (`ip rule`) is not modelled — the main table's
//! longest prefix match is what almost every lab uses, and when it is wrong the user names the
//! device with `--numa node=N` instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const RTF_UP: u32 = 0x0001;
const RTF_REJECT: u32 = 0x0200;

/// The interface the main routing table sends `peer` through (`lo` for loopback), by longest
/// prefix match and then lowest metric. `None` when no route matches or `/proc` is unreadable.
pub fn interface_for_peer(peer: IpAddr) -> Option<String> {
    match canonical(peer) {
        IpAddr::V4(v4) => {
            let table = std::fs::read_to_string("/proc/net/route").ok()?;
            lookup_v4(&table, v4)
        }
        IpAddr::V6(v6) => {
            let table = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
            lookup_v6(&table, v6)
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.2`, what a dual-stack socket reports) are IPv4.
fn canonical(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    }
}

/// Longest-prefix match over `/proc/net/route` text. Addresses there are the kernel's
/// network-order words printed as native-endian hex, so the native bytes are the address.
pub(crate) fn lookup_v4(table: &str, peer: Ipv4Addr) -> Option<String> {
    if peer.is_loopback() {
        return Some("lo".to_owned());
    }
    let peer_word = u32::from_ne_bytes(peer.octets());
    let mut best: Option<(u32, u32, &str)> = None; // (prefix length, metric, iface)
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dest), Ok(flags), Ok(metric), Ok(mask)) = (
            u32::from_str_radix(f[1], 16),
            u32::from_str_radix(f[3], 16),
            f[6].parse::<u32>(),
            u32::from_str_radix(f[7], 16),
        ) else {
            continue;
        };
        if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || peer_word & mask != dest & mask {
            continue;
        }
        let prefix = mask.count_ones();
        if best.is_none_or(|(p, m, _)| prefix > p || (prefix == p && metric < m)) {
            best = Some((prefix, metric, f[0]));
        }
    }
    best.map(|(_, _, iface)| iface.to_owned())
}

/// Longest-prefix match over `/proc/net/ipv6_route` text (addresses in network-order hex).
pub(crate) fn lookup_v6(table: &str, peer: Ipv6Addr) -> Option<String> {
    if peer.is_loopback() {
        return Some("lo".to_owned());
    }
    let peer_bits = u128::from(peer);
    let mut best: Option<(u32, u32, &str)> = None;
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Ok(dest), Ok(prefix), Ok(metric), Ok(flags)) = (
            u128::from_str_radix(f[0], 16),
            u32::from_str_radix(f[1], 16),
            u32::from_str_radix(f[5], 16),
            u32::from_str_radix(f[8], 16),
        ) else {
            continue;
        };
        if prefix > 128 || flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
            continue;
        }
        let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
        if peer_bits & mask != dest & mask {
            continue;
        }
        if best.is_none_or(|(p, m, _)| prefix > p || (prefix == p && metric < m)) {
            best = Some((prefix, metric, f[9]));
        }
    }
    best.map(|(_, _, iface)| iface.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on the dev VM; the ens1f0 line is added to make the longest match matter.
    const ROUTE_V4: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
ens1f0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0
ens1f1\t0000000A\t00000000\t0001\t0\t0\t100\t000000FF\t0\t0\t0
";

    const ROUTE_V6: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_uses_longest_prefix_then_metric() {
        if cfg!(target_endian = "big") {
            return; // the captured table is little-endian
        }
        assert_eq!(lookup_v4(ROUTE_V4, v4("10.1.2.3")).as_deref(), Some("ens1f0"));
        assert_eq!(lookup_v4(ROUTE_V4, v4("192.0.2.7")).as_deref(), Some("eth0"));
        assert_eq!(lookup_v4(ROUTE_V4, v4("8.8.8.8")).as_deref(), Some("eth0"));
        assert_eq!(lookup_v4(ROUTE_V4, v4("127.0.0.1")).as_deref(), Some("lo"));
        assert_eq!(lookup_v4("Iface\n", v4("8.8.8.8")), None);
    }

    #[test]
    fn ipv6_skips_reject_routes() {
        let p = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(lookup_v6(ROUTE_V6, p("fd00::9")).as_deref(), Some("eth0"));
        assert_eq!(lookup_v6(ROUTE_V6, p("2001:db8::1")).as_deref(), Some("eth0"));
        assert_eq!(lookup_v6(ROUTE_V6, p("::1")).as_deref(), Some("lo"));
        let only_reject = ROUTE_V6.lines().last().unwrap();
        assert_eq!(lookup_v6(only_reject, p("2001:db8::1")), None);
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(canonical(mapped), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(interface_for_peer(mapped).as_deref(), Some("lo"));
    }
}
