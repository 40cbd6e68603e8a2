//! The IPv4 prefix length of a local address, from `getifaddrs(3)` (sysfs
//! does not expose addresses). Owns nothing beyond one call's list.

use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::ptr;

/// Prefix length of a netmask, `None` unless its ones are contiguous.
pub(crate) fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The prefix length of `addr` as configured on `netdev` (any interface
/// when `netdev` is `None`); `None` when the address is not configured.
pub(crate) fn ipv4_prefix_len(netdev: Option<&str>, addr: Ipv4Addr) -> Option<u8> {
    let mut head: *mut libc::ifaddrs = ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is ours
    // until freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which stays
        // valid until freeifaddrs; it is only read.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr from getifaddrs; sa_family is its first
        // field for every family.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET entries carry sockaddr_in for both the address and
        // the netmask; the name is a NUL-terminated string in the list.
        let (sin, mask, name) = unsafe {
            (
                &*(ifa.ifa_addr as *const libc::sockaddr_in),
                &*(ifa.ifa_netmask as *const libc::sockaddr_in),
                CStr::from_ptr(ifa.ifa_name),
            )
        };
        let here = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let name_ok = netdev.is_none_or(|n| name.to_bytes() == n.as_bytes());
        if here == addr && name_ok {
            found = prefix_len(Ipv4Addr::from(u32::from_be(mask.sin_addr.s_addr)));
        }
    }
    // SAFETY: the list from the successful getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_prefixes() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
    }

    #[test]
    fn loopback_is_slash_8() {
        // every Linux host has 127.0.0.1/8 on lo
        assert_eq!(ipv4_prefix_len(Some("lo"), Ipv4Addr::LOCALHOST), Some(8));
        assert_eq!(ipv4_prefix_len(None, Ipv4Addr::LOCALHOST), Some(8));
        assert_eq!(ipv4_prefix_len(Some("no-such-dev"), Ipv4Addr::LOCALHOST), None);
    }
}
