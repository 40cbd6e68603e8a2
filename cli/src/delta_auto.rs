//! `--delta auto`: delta transfer pays when the link is slower than the target can hash its
//! old copy. Both are measured here, not guessed: the link's speed is the nominal speed of the
//! interface the route to the daemon leaves by (`/proc/net/route`, `/sys/class/net/IF/speed`);
//! the hashing rate is this machine signing a block of memory for a moment (the target's disk
//! is not measured: on a disk slower than the hash, delta is slower than this says only when
//! the link is slower still). Local copies and loopback have no link to spare: off.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::time::Instant;

/// What `auto` decided, and why (printed with `-v`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub on: bool,
    pub why: String,
}

/// Decides `--delta auto` for a transfer with the daemon at `host:port`.
pub fn decide(host: &str, port: u16) -> Decision {
    let Some(ip) = (host, port).to_socket_addrs().ok().and_then(|mut a| a.next()).map(|a| a.ip())
    else {
        return Decision { on: false, why: format!("{host} does not resolve") };
    };
    if ip.is_loopback() {
        return Decision { on: false, why: "loopback: no link to spare".into() };
    }
    let IpAddr::V4(v4) = ip else {
        return Decision { on: false, why: "IPv6 route: link speed not looked up".into() };
    };
    let Some(iface) =
        route_interface(v4, &std::fs::read_to_string("/proc/net/route").unwrap_or_default())
    else {
        return Decision { on: false, why: format!("no route to {ip} found") };
    };
    let speed = std::fs::read_to_string(format!("/sys/class/net/{iface}/speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|&mbit| mbit > 0);
    let Some(mbit) = speed else {
        return Decision { on: false, why: format!("{iface} reports no link speed") };
    };
    let link = mbit as f64 * 1e6 / 8.0;
    let hash = hashing_rate();
    Decision {
        on: link < hash,
        why: format!(
            "{iface} at {mbit} Mb/s ({:.0} MB/s) against hashing at {:.0} MB/s",
            link / 1e6,
            hash / 1e6
        ),
    }
}

/// The interface of the most specific route to `dest` in `/proc/net/route`'s text.
fn route_interface(dest: Ipv4Addr, table: &str) -> Option<String> {
    let dest = u32::from(dest);
    let mut best: Option<(u32, String)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Addresses and masks are in the kernel's byte order (little endian), as hex.
        let hex =
            |s: &str| u32::from_str_radix(s, 16).ok().map(|v| u32::from_be_bytes(v.to_le_bytes()));
        let (Some(net), Some(mask)) = (hex(f[1]), hex(f[7])) else { continue };
        if dest & mask == net
            && best.as_ref().is_none_or(|(m, _)| mask.count_ones() > m.count_ones())
        {
            best = Some((mask, f[0].to_string()));
        }
    }
    best.map(|(_, iface)| iface)
}

/// Bytes per second this machine signs (4 KiB blocks, the threads a target signs with).
fn hashing_rate() -> f64 {
    const BYTES: usize = 32 << 20;
    let data: Vec<u8> = (0..BYTES).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let Ok(params) = blitx_delta::SignatureParams::new(4096, BYTES as u64, 1) else { return 0.0 };
    let started = Instant::now();
    let signed = blitx_delta::SignatureBuilder::new(params, 0..BYTES as u64)
        .and_then(|mut b| b.update(&data).and_then(|()| b.finish()));
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    if signed.is_err() {
        return 0.0;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    BYTES as f64 / secs * threads as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        ib0\t00000A0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn the_most_specific_route_names_the_interface() {
        assert_eq!(route_interface(Ipv4Addr::new(192, 0, 2, 9), TABLE).as_deref(), Some("eth0"));
        assert_eq!(route_interface(Ipv4Addr::new(10, 10, 3, 4), TABLE).as_deref(), Some("ib0"));
        assert_eq!(route_interface(Ipv4Addr::new(8, 8, 8, 8), TABLE).as_deref(), Some("eth0"));
        assert_eq!(route_interface(Ipv4Addr::new(8, 8, 8, 8), "header only\n"), None);
    }

    #[test]
    fn loopback_is_never_worth_a_delta() {
        assert!(!decide("127.0.0.1", 9031).on);
    }

    #[test]
    fn this_machine_hashes_at_some_rate() {
        assert!(hashing_rate() > 1e6);
    }
}
