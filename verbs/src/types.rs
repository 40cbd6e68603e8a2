//! Plain values of the verbs layer: GIDs, MTUs, port states, link speed, access
//! flags and immediate-data encoding. No FFI and no `unsafe`: everything here is
//! unit-tested on hosts without RDMA.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::BitOr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A 128-bit RDMA global identifier (for RoCE: an IPv6 or IPv4-mapped address).
/// Serialized as its IPv6 text form, e.g. `"::ffff:10.77.0.1"`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Gid([u8; 16]);

impl Gid {
    /// The all-zero GID that marks an unused GID table entry.
    pub const ZERO: Gid = Gid([0; 16]);

    /// Wraps the 16 raw bytes (network order, as in `union ibv_gid`).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Gid(bytes)
    }

    /// The 16 raw bytes (network order).
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// True for an empty table slot.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`).
    pub fn ipv4_mapped(&self) -> Option<Ipv4Addr> {
        self.to_ipv6().to_ipv4_mapped()
    }

    /// True for `fe80::/10` (the RoCE GID derived from the MAC address).
    pub fn is_link_local(&self) -> bool {
        self.0[0] == 0xfe && (self.0[1] & 0xc0) == 0x80
    }

    /// The GID as an IPv6 address.
    pub fn to_ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.0)
    }
}

impl From<Ipv6Addr> for Gid {
    fn from(addr: Ipv6Addr) -> Self {
        Gid(addr.octets())
    }
}

impl From<Ipv4Addr> for Gid {
    /// The IPv4-mapped GID that RoCE v2 uses for an IPv4 address.
    fn from(addr: Ipv4Addr) -> Self {
        Gid(addr.to_ipv6_mapped().octets())
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_ipv6(), f)
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

/// A GID string that is not an IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GID (IPv6 address text expected): {text:?}")]
pub struct GidParseError {
    /// The rejected text (truncated to 64 characters).
    pub text: String,
}

impl FromStr for Gid {
    type Err = GidParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim()
            .parse::<Ipv6Addr>()
            .map(Gid::from)
            .map_err(|_| GidParseError { text: text.chars().take(64).collect() })
    }
}

impl From<Gid> for String {
    fn from(gid: Gid) -> String {
        gid.to_string()
    }
}

impl TryFrom<String> for Gid {
    type Error = GidParseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// The kind of a GID table entry (`enum ibv_gid_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GidType {
    /// InfiniBand (native IB link layer).
    #[serde(rename = "IB")]
    Ib,
    /// RoCE v1 (Ethernet, not routable).
    #[serde(rename = "RoCE v1")]
    RoceV1,
    /// RoCE v2 (UDP/IP, routable).
    #[serde(rename = "RoCE v2")]
    RoceV2,
}

impl GidType {
    /// From `ibv_gid_entry::gid_type`.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(GidType::Ib),
            1 => Some(GidType::RoceV1),
            2 => Some(GidType::RoceV2),
            _ => None,
        }
    }

    /// From sysfs `ports/N/gid_attrs/types/I`, which prints `IB/RoCE v1` for
    /// both IB and RoCE v1; the link layer tells them apart.
    pub fn from_sysfs(text: &str, link_layer: LinkLayer) -> Option<Self> {
        match text.trim() {
            "RoCE v2" => Some(GidType::RoceV2),
            "IB/RoCE v1" if link_layer == LinkLayer::InfiniBand => Some(GidType::Ib),
            "IB/RoCE v1" => Some(GidType::RoceV1),
            _ => None,
        }
    }
}

impl fmt::Display for GidType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GidType::Ib => "IB",
            GidType::RoceV1 => "RoCE v1",
            GidType::RoceV2 => "RoCE v2",
        })
    }
}

/// An IB path MTU (`enum ibv_mtu`). Ordered, so `min` picks the smaller.
/// Serialized as the size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum Mtu {
    /// 256 bytes.
    Mtu256 = 1,
    /// 512 bytes.
    Mtu512 = 2,
    /// 1024 bytes.
    Mtu1024 = 3,
    /// 2048 bytes.
    Mtu2048 = 4,
    /// 4096 bytes.
    Mtu4096 = 5,
}

impl Mtu {
    /// From the `ibv_mtu` enum value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Mtu::Mtu256),
            2 => Some(Mtu::Mtu512),
            3 => Some(Mtu::Mtu1024),
            4 => Some(Mtu::Mtu2048),
            5 => Some(Mtu::Mtu4096),
            _ => None,
        }
    }

    /// From a size in bytes; only the five IB sizes are accepted.
    pub fn from_bytes(bytes: u32) -> Option<Self> {
        match bytes {
            256 => Some(Mtu::Mtu256),
            512 => Some(Mtu::Mtu512),
            1024 => Some(Mtu::Mtu1024),
            2048 => Some(Mtu::Mtu2048),
            4096 => Some(Mtu::Mtu4096),
            _ => None,
        }
    }

    /// The `ibv_mtu` enum value.
    pub fn raw(self) -> u32 {
        self as u32
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        128 << (self as u32)
    }
}

impl From<Mtu> for u32 {
    fn from(mtu: Mtu) -> u32 {
        mtu.bytes()
    }
}

/// A number that is not one of the five IB MTU sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not an IB MTU (256, 512, 1024, 2048 or 4096)")]
pub struct MtuError(pub u32);

impl TryFrom<u32> for Mtu {
    type Error = MtuError;

    fn try_from(bytes: u32) -> Result<Self, Self::Error> {
        Mtu::from_bytes(bytes).ok_or(MtuError(bytes))
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes())
    }
}

/// Logical port state (`enum ibv_port_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PortState {
    /// No state change.
    Nop,
    /// Link down.
    Down,
    /// Link up, not yet configured by the subnet manager.
    Init,
    /// Configured, not yet active.
    Armed,
    /// Usable.
    Active,
    /// Active, deferring.
    ActiveDefer,
    /// A value this crate does not know.
    Unknown(u32),
}

impl PortState {
    /// From the `ibv_port_state` enum value.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            0 => PortState::Nop,
            1 => PortState::Down,
            2 => PortState::Init,
            3 => PortState::Armed,
            4 => PortState::Active,
            5 => PortState::ActiveDefer,
            other => PortState::Unknown(other),
        }
    }
}

impl fmt::Display for PortState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortState::Nop => f.write_str("NOP"),
            PortState::Down => f.write_str("DOWN"),
            PortState::Init => f.write_str("INIT"),
            PortState::Armed => f.write_str("ARMED"),
            PortState::Active => f.write_str("ACTIVE"),
            PortState::ActiveDefer => f.write_str("ACTIVE_DEFER"),
            PortState::Unknown(raw) => write!(f, "UNKNOWN({raw})"),
        }
    }
}

/// The port's link layer (`IBV_LINK_LAYER_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinkLayer {
    /// Not reported (old kernels; treated as InfiniBand).
    Unspecified,
    /// Native InfiniBand.
    InfiniBand,
    /// Ethernet (RoCE).
    Ethernet,
    /// A value this crate does not know.
    Unknown(u8),
}

impl LinkLayer {
    /// From `ibv_port_attr::link_layer`.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            0 => LinkLayer::Unspecified,
            1 => LinkLayer::InfiniBand,
            2 => LinkLayer::Ethernet,
            other => LinkLayer::Unknown(other),
        }
    }
}

impl fmt::Display for LinkLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkLayer::Unspecified => f.write_str("unspecified"),
            LinkLayer::InfiniBand => f.write_str("InfiniBand"),
            LinkLayer::Ethernet => f.write_str("Ethernet"),
            LinkLayer::Unknown(raw) => write!(f, "unknown({raw})"),
        }
    }
}

/// Per-lane signalling rate in Gb/s for `ibv_port_attr::active_speed`
/// (nominal values, as `ibv_devinfo` prints them).
pub fn lane_gbps(active_speed: u8) -> Option<f64> {
    match active_speed {
        1 => Some(2.5),  // SDR
        2 => Some(5.0),  // DDR
        4 => Some(10.0), // QDR
        8 => Some(10.0), // FDR10
        16 => Some(14.0),
        32 => Some(25.0),
        64 => Some(50.0),
        128 => Some(100.0),
        _ => None,
    }
}

/// Lane count for `ibv_port_attr::active_width`.
pub fn lane_count(active_width: u8) -> Option<u32> {
    match active_width {
        1 => Some(1),
        2 => Some(4),
        4 => Some(8),
        8 => Some(12),
        16 => Some(2),
        _ => None,
    }
}

/// Link rate in Gb/s: lanes × per-lane rate. `None` for codes this crate does
/// not know (Soft-RoCE reports whatever its netdev's ethtool speed maps to).
pub fn link_gbps(active_speed: u8, active_width: u8) -> Option<f64> {
    Some(lane_gbps(active_speed)? * f64::from(lane_count(active_width)?))
}

/// Memory-region and QP access rights (`enum ibv_access_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Access(u32);

impl Access {
    /// No rights beyond local read (enough for a SEND/WRITE source).
    pub const NONE: Access = Access(0);
    /// The device may write local memory (needed by RECV buffers).
    pub const LOCAL_WRITE: Access = Access(1);
    /// A peer may RDMA WRITE into it (needs `LOCAL_WRITE` too).
    pub const REMOTE_WRITE: Access = Access(2);
    /// A peer may RDMA READ from it.
    pub const REMOTE_READ: Access = Access(4);
    /// A peer may run atomics on it.
    pub const REMOTE_ATOMIC: Access = Access(8);

    /// The raw flag bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True if every right in `other` is present.
    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Access {
    type Output = Access;

    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// Immediate data as it goes into `ibv_send_wr::imm_data`: the verbs API wants
/// network byte order, callers think in host order.
pub const fn imm_to_wire(imm_host: u32) -> u32 {
    imm_host.to_be()
}

/// Immediate data from `ibv_wc::imm_data` (network order) to host order.
pub const fn imm_from_wire(imm_wire: u32) -> u32 {
    u32::from_be(imm_wire)
}

/// A work-completion status (`enum ibv_wc_status`); 0 is success.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct WcStatus(pub u32);

impl WcStatus {
    /// `IBV_WC_SUCCESS`.
    pub const SUCCESS: WcStatus = WcStatus(0);
    /// `IBV_WC_WR_FLUSH_ERR`: the QP went to the error state; every later WR
    /// completes with this.
    pub const WR_FLUSH_ERR: WcStatus = WcStatus(5);
    /// `IBV_WC_REM_ACCESS_ERR`: bad rkey/address on the responder.
    pub const REM_ACCESS_ERR: WcStatus = WcStatus(10);
    /// `IBV_WC_RETRY_EXC_ERR`: the peer did not answer (transport retries).
    pub const RETRY_EXC_ERR: WcStatus = WcStatus(12);
    /// `IBV_WC_RNR_RETRY_EXC_ERR`: the peer had no RECV posted.
    pub const RNR_RETRY_EXC_ERR: WcStatus = WcStatus(13);

    /// True for `IBV_WC_SUCCESS`.
    pub fn is_success(self) -> bool {
        self == WcStatus::SUCCESS
    }

    /// The C enumerator name, for logs on hosts where libibverbs is absent.
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 24] = [
            "IBV_WC_SUCCESS",
            "IBV_WC_LOC_LEN_ERR",
            "IBV_WC_LOC_QP_OP_ERR",
            "IBV_WC_LOC_EEC_OP_ERR",
            "IBV_WC_LOC_PROT_ERR",
            "IBV_WC_WR_FLUSH_ERR",
            "IBV_WC_MW_BIND_ERR",
            "IBV_WC_BAD_RESP_ERR",
            "IBV_WC_LOC_ACCESS_ERR",
            "IBV_WC_REM_INV_REQ_ERR",
            "IBV_WC_REM_ACCESS_ERR",
            "IBV_WC_REM_OP_ERR",
            "IBV_WC_RETRY_EXC_ERR",
            "IBV_WC_RNR_RETRY_EXC_ERR",
            "IBV_WC_LOC_RDD_VIOL_ERR",
            "IBV_WC_REM_INV_RD_REQ_ERR",
            "IBV_WC_REM_ABORT_ERR",
            "IBV_WC_INV_EECN_ERR",
            "IBV_WC_INV_EEC_STATE_ERR",
            "IBV_WC_FATAL_ERR",
            "IBV_WC_RESP_TIMEOUT_ERR",
            "IBV_WC_GENERAL_ERR",
            "IBV_WC_TM_ERR",
            "IBV_WC_TM_RNDV_INCOMPLETE",
        ];
        usize::try_from(self.0).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("IBV_WC_UNKNOWN")
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl fmt::Debug for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WcStatus({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_text_round_trip_and_ipv4_mapping() {
        let gid: Gid = "::ffff:10.77.0.1".parse().unwrap();
        assert_eq!(gid.ipv4_mapped(), Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(gid, Gid::from(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(gid.to_string(), "::ffff:10.77.0.1");
        assert!(!gid.is_link_local());
        let bytes = gid.to_bytes();
        assert_eq!(&bytes[10..], &[0xff, 0xff, 10, 77, 0, 1]);

        let ll: Gid = "fe80::5054:ff:fe77:1".parse().unwrap();
        assert!(ll.is_link_local());
        assert_eq!(ll.ipv4_mapped(), None);
        assert!(Gid::ZERO.is_zero());
        assert!("not-a-gid".parse::<Gid>().is_err());
    }

    #[test]
    fn gid_serde_is_text() {
        let gid: Gid = "::ffff:10.77.0.2".parse().unwrap();
        let json = serde_json::to_string(&gid).unwrap();
        assert_eq!(json, "\"::ffff:10.77.0.2\"");
        assert_eq!(serde_json::from_str::<Gid>(&json).unwrap(), gid);
        assert!(serde_json::from_str::<Gid>("\"10.77.0.2.9\"").is_err());
    }

    #[test]
    fn gid_type_from_sysfs_uses_link_layer() {
        assert_eq!(GidType::from_sysfs("RoCE v2\n", LinkLayer::Ethernet), Some(GidType::RoceV2));
        assert_eq!(GidType::from_sysfs("IB/RoCE v1", LinkLayer::Ethernet), Some(GidType::RoceV1));
        assert_eq!(GidType::from_sysfs("IB/RoCE v1", LinkLayer::InfiniBand), Some(GidType::Ib));
        assert_eq!(GidType::from_sysfs("", LinkLayer::Ethernet), None);
        assert_eq!(GidType::from_raw(2), Some(GidType::RoceV2));
        assert_eq!(GidType::from_raw(9), None);
    }

    #[test]
    fn mtu_conversions() {
        assert_eq!(Mtu::from_raw(5), Some(Mtu::Mtu4096));
        assert_eq!(Mtu::Mtu4096.bytes(), 4096);
        assert_eq!(Mtu::Mtu256.bytes(), 256);
        assert_eq!(Mtu::from_bytes(1024), Some(Mtu::Mtu1024));
        assert_eq!(Mtu::from_bytes(1500), None);
        assert_eq!(Mtu::from_raw(0), None);
        assert_eq!(Mtu::Mtu1024.min(Mtu::Mtu4096), Mtu::Mtu1024);
        for raw in 1..=5 {
            let mtu = Mtu::from_raw(raw).unwrap();
            assert_eq!(mtu.raw(), raw);
            assert_eq!(Mtu::from_bytes(mtu.bytes()), Some(mtu));
        }
        assert_eq!(serde_json::to_string(&Mtu::Mtu2048).unwrap(), "2048");
        assert!(serde_json::from_str::<Mtu>("1500").is_err());
    }

    #[test]
    fn link_speed() {
        // 4x EDR = 100 Gb/s, 1x HDR = 50, 4x HDR = 200, 2x NDR = 200
        assert_eq!(link_gbps(32, 2), Some(100.0));
        assert_eq!(link_gbps(64, 1), Some(50.0));
        assert_eq!(link_gbps(64, 2), Some(200.0));
        assert_eq!(link_gbps(128, 16), Some(200.0));
        assert_eq!(link_gbps(1, 2), Some(10.0));
        assert_eq!(link_gbps(0, 2), None);
        assert_eq!(link_gbps(32, 3), None);
    }

    #[test]
    fn port_state_and_link_layer() {
        assert_eq!(PortState::from_raw(4), PortState::Active);
        assert_eq!(PortState::from_raw(1).to_string(), "DOWN");
        assert_eq!(PortState::from_raw(42), PortState::Unknown(42));
        assert_eq!(serde_json::to_string(&PortState::Active).unwrap(), "\"ACTIVE\"");
        assert_eq!(LinkLayer::from_raw(2), LinkLayer::Ethernet);
        assert_eq!(LinkLayer::from_raw(1), LinkLayer::InfiniBand);
    }

    #[test]
    fn imm_is_network_order_on_the_wire() {
        let wire = imm_to_wire(0x0102_0304);
        assert_eq!(wire.to_ne_bytes(), [1, 2, 3, 4]);
        assert_eq!(imm_from_wire(wire), 0x0102_0304);
        assert_eq!(imm_from_wire(u32::from_ne_bytes([0, 0, 0, 7])), 7);
    }

    #[test]
    fn wc_status_names() {
        assert_eq!(WcStatus(0).name(), "IBV_WC_SUCCESS");
        assert_eq!(WcStatus::RETRY_EXC_ERR.name(), "IBV_WC_RETRY_EXC_ERR");
        assert_eq!(WcStatus(23).name(), "IBV_WC_TM_RNDV_INCOMPLETE");
        assert_eq!(WcStatus(99).name(), "IBV_WC_UNKNOWN");
        assert!(WcStatus::SUCCESS.is_success());
    }

    #[test]
    fn access_flags() {
        let rw = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
        assert_eq!(rw.bits(), 3);
        assert!(rw.contains(Access::REMOTE_WRITE));
        assert!(!rw.contains(Access::REMOTE_READ));
    }
}
