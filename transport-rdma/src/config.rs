//! How an RDMA session is configured, and the two messages the control plane
//! carries to set it up ([`ReceiverInfo`] and [`SenderInfo`], plain serde
//! structs). Pure: bounds, derived queue sizes and the validation of what the
//! peer sent.

use std::time::Duration;

use blitx_core::session::{CHUNK_BYTES_DEFAULT, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN};
use blitx_verbs::{CqMode, Error, RemoteQpParams, RemoteRegion, Result};
use serde::{Deserialize, Serialize};

use crate::wire::{CREDITS_PER_MESSAGE_MAX, SLOTS_MAX, slot_bytes_for};

/// Most QPs one session may use (`--qps`).
pub const QPS_MAX: u32 = 16;
/// QPs per session unless configured. One RC QP moves 4 MiB WRITEs at line
/// rate on a hardware NIC; two let two threads post at once (each QP has its
/// own posting turn), which on Soft-RoCE runs the emulated NIC on two CPUs:
/// 57–61 MiB/s instead of 41–46 for a 256 MiB push in one boot (docs/rdma.md).
pub const QPS_DEFAULT: u32 = 2;
/// Receiver slots unless configured: 16 × 4 MiB keeps ~5 ms of a 100 Gb/s
/// link in flight, far above its bandwidth-delay product (~125 KB at 10 µs),
/// so a slow writer, not the network, decides when the sender waits.
pub const SLOTS_DEFAULT: u32 = 16;
/// Fewest receiver slots (one in flight while one is being written out).
pub const SLOTS_MIN: u32 = 2;
/// Sender pool slots beyond the receiver's: leases held by readers.
pub const POOL_SLOTS_SPARE: u32 = 8;
/// Signal one data WRITE in this many unless configured.
pub const SIGNAL_INTERVAL_DEFAULT: u32 = 4;
/// Largest signal interval accepted.
pub const SIGNAL_INTERVAL_MAX: u32 = 64;
/// No progress for this long fails the session with `TransportError::Stalled`.
pub const STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Shortest stall timeout accepted. Below ~2 s a dead peer is reported as a
/// stall rather than by its transport retries (see `link::TRANSPORT_ACK_TIMEOUT`).
pub const STALL_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Longest stall timeout accepted.
pub const STALL_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Most registered memory one side's pool may take (it is pinned).
pub const POOL_BYTES_MAX: u64 = 4 << 30;
/// Spare RECVs per QP beyond one per slot: abort notice and keepalive ping.
pub const RECV_SPARE: u32 = 4;

const _: () = assert!(QPS_MAX <= u8::MAX as u32 + 1);
const _: () = assert!(SLOTS_DEFAULT >= SLOTS_MIN && SLOTS_DEFAULT <= SLOTS_MAX);
const _: () = assert!(CREDITS_PER_MESSAGE_MAX >= 2);

/// One side's configuration. Both sides must agree on `qps` and
/// `chunk_bytes` (checked when connecting); `slots` matters on the receiver,
/// `pool_slots` on the sender, the rest is local.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdmaConfig {
    /// The device (`mlx5_0`, `rxe0`); `None`: the first with an ACTIVE port.
    pub device: Option<String>,
    /// The port (1-based); `None`: the device's first ACTIVE port.
    pub port_num: Option<u8>,
    /// Source GID index; `None`: RoCE v2 with an IPv4-mapped GID first.
    pub gid_index: Option<u32>,
    /// RC QPs per session; frames are striped over them.
    pub qps: u32,
    /// Largest frame payload (the session's chunk size).
    pub chunk_bytes: u32,
    /// Receiver: ring slots (each `chunk_bytes` + one page). Bounds the data
    /// in flight: the sender writes only slots the receiver credited.
    pub slots: u32,
    /// Sender: buffers in the registered pool readers fill.
    pub pool_slots: u32,
    /// Sender: signal one data WRITE in this many (1 = every one).
    pub signal_interval: u32,
    /// Busy-poll (default; yields when idle) or event-driven CQs.
    pub cq_mode: CqMode,
    /// No progress for this long while work is pending is a stall.
    pub stall_timeout: Duration,
    /// Hash every frame's payload (xxh3-64, as over TCP) and verify it at the receiver.
    /// Off by default: RC delivery is checked end to end by the NICs (RoCE's ICRC, a CRC-32
    /// over every packet), and hashing is the only per-byte CPU work the sender and receiver
    /// would otherwise do. A receiver configured with it refuses unchecked frames.
    pub frame_checksums: bool,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig::new(QPS_DEFAULT, CHUNK_BYTES_DEFAULT)
    }
}

impl RdmaConfig {
    /// Defaults for everything but the QP count and chunk size.
    pub fn new(qps: u32, chunk_bytes: u32) -> Self {
        RdmaConfig {
            device: None,
            port_num: None,
            gid_index: None,
            qps,
            chunk_bytes,
            slots: SLOTS_DEFAULT,
            pool_slots: SLOTS_DEFAULT + POOL_SLOTS_SPARE,
            signal_interval: SIGNAL_INTERVAL_DEFAULT,
            cq_mode: CqMode::BusyPoll,
            stall_timeout: STALL_TIMEOUT_DEFAULT,
            frame_checksums: false,
        }
    }

    /// Checks every bound.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidConfig { reason });
        if !(1..=QPS_MAX).contains(&self.qps) {
            return bad(format!("qps = {} outside 1..={QPS_MAX}", self.qps));
        }
        let chunk = self.chunk_bytes;
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk)
            || !chunk.is_multiple_of(CHUNK_BYTES_MIN)
        {
            return bad(format!(
                "chunk_bytes = {chunk} outside {CHUNK_BYTES_MIN}..={CHUNK_BYTES_MAX} or not a \
                 multiple of {CHUNK_BYTES_MIN}"
            ));
        }
        if !(SLOTS_MIN..=SLOTS_MAX).contains(&self.slots) {
            return bad(format!("slots = {} outside {SLOTS_MIN}..={SLOTS_MAX}", self.slots));
        }
        if !(2..=SLOTS_MAX).contains(&self.pool_slots) {
            return bad(format!("pool_slots = {} outside 2..={SLOTS_MAX}", self.pool_slots));
        }
        if !(1..=SIGNAL_INTERVAL_MAX).contains(&self.signal_interval) {
            return bad(format!(
                "signal_interval = {} outside 1..={SIGNAL_INTERVAL_MAX}",
                self.signal_interval
            ));
        }
        if !(STALL_TIMEOUT_MIN..=STALL_TIMEOUT_MAX).contains(&self.stall_timeout) {
            return bad(format!(
                "stall_timeout = {:?} outside {STALL_TIMEOUT_MIN:?}..={STALL_TIMEOUT_MAX:?}",
                self.stall_timeout
            ));
        }
        for (what, bytes) in [
            ("receiver ring", self.ring_bytes()),
            ("sender pool", u64::from(self.pool_slots) * u64::from(chunk)),
        ] {
            if bytes > POOL_BYTES_MAX {
                return bad(format!("{what} of {bytes} bytes exceeds {POOL_BYTES_MAX} bytes"));
            }
        }
        Ok(())
    }

    /// Bytes of one receiver slot.
    pub fn slot_bytes(&self) -> u64 {
        slot_bytes_for(self.chunk_bytes)
    }

    /// Bytes of the receiver's registered ring.
    pub fn ring_bytes(&self) -> u64 {
        self.slot_bytes() * u64::from(self.slots)
    }

    /// Sender send-queue depth per QP: room for every slot's WRITE plus the
    /// unsignalled tail that waits for its signalled successor, the End
    /// frame and an abort notice.
    pub(crate) fn sender_sq_depth(&self, receiver_slots: u32) -> u32 {
        2 * receiver_slots + 2 * self.signal_interval + 4
    }

    /// Receiver send-queue depth per QP (control SENDs). Each credit message
    /// carries at least one slot, and a slot is credited again only after
    /// the sender wrote it, so `slots` messages in flight is the most a burst
    /// needs; the spare is for pings and the abort notice.
    pub(crate) fn receiver_sq_depth(&self) -> u32 {
        self.slots + RECV_SPARE
    }

    /// RECVs each side keeps posted per QP.
    pub(crate) fn recv_depth(slots: u32) -> u32 {
        slots + RECV_SPARE
    }
}

/// What the receiver tells the sender (receiver → sender, over the control
/// plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverInfo {
    /// The receiver's QPs, in stripe order.
    pub qps: Vec<RemoteQpParams>,
    /// The registered slot ring.
    pub ring: RemoteRegion,
    /// Bytes per slot (chunk + one page).
    pub slot_bytes: u64,
    /// Slots in the ring.
    pub slots: u32,
    /// The chunk size the receiver accepts.
    pub chunk_bytes: u32,
}

impl ReceiverInfo {
    /// Checks what the peer sent against this side's configuration.
    pub fn validate(&self, local: &RdmaConfig) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidRemote { reason });
        if self.qps.len() != local.qps as usize {
            return bad(format!("receiver has {} QPs, this sender {}", self.qps.len(), local.qps));
        }
        if self.chunk_bytes != local.chunk_bytes {
            return bad(format!(
                "receiver chunk size {} differs from this sender's {}",
                self.chunk_bytes, local.chunk_bytes
            ));
        }
        if !(SLOTS_MIN..=SLOTS_MAX).contains(&self.slots) {
            return bad(format!("receiver ring has {} slots", self.slots));
        }
        if self.slot_bytes < slot_bytes_for(self.chunk_bytes)
            || self.slot_bytes > u64::from(u32::MAX)
        {
            return bad(format!(
                "slots of {} bytes cannot hold a {}-byte chunk and its header",
                self.slot_bytes, self.chunk_bytes
            ));
        }
        let needed = self.slot_bytes.checked_mul(u64::from(self.slots));
        if needed.is_none_or(|n| n > self.ring.len_bytes) {
            return bad(format!(
                "ring of {} bytes is smaller than {} slots of {} bytes",
                self.ring.len_bytes, self.slots, self.slot_bytes
            ));
        }
        if self.ring.addr.checked_add(self.ring.len_bytes).is_none() {
            return bad("ring address range wraps".into());
        }
        Ok(())
    }
}

/// What the sender tells the receiver (sender → receiver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderInfo {
    /// The sender's QPs, in stripe order.
    pub qps: Vec<RemoteQpParams>,
    /// The sender's chunk size.
    pub chunk_bytes: u32,
}

impl SenderInfo {
    /// Checks what the peer sent against this side's configuration.
    pub fn validate(&self, local: &RdmaConfig) -> Result<()> {
        if self.qps.len() != local.qps as usize {
            return Err(Error::InvalidRemote {
                reason: format!("sender has {} QPs, this receiver {}", self.qps.len(), local.qps),
            });
        }
        if self.chunk_bytes != local.chunk_bytes {
            return Err(Error::InvalidRemote {
                reason: format!(
                    "sender chunk size {} differs from this receiver's {}",
                    self.chunk_bytes, local.chunk_bytes
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_verbs::Mtu;

    fn qp(qpn: u32) -> RemoteQpParams {
        RemoteQpParams {
            qpn,
            psn: 1,
            gid: "::ffff:10.77.0.1".parse().unwrap(),
            gid_index: 1,
            lid: 0,
            mtu: Mtu::Mtu4096,
        }
    }

    fn receiver_info(cfg: &RdmaConfig) -> ReceiverInfo {
        ReceiverInfo {
            qps: (0..cfg.qps).map(|i| qp(20 + i)).collect(),
            ring: RemoteRegion { addr: 0x7f00_0000_0000, len_bytes: cfg.ring_bytes(), rkey: 9 },
            slot_bytes: cfg.slot_bytes(),
            slots: cfg.slots,
            chunk_bytes: cfg.chunk_bytes,
        }
    }

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        let cfg = RdmaConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.slot_bytes(), u64::from(CHUNK_BYTES_DEFAULT) + 4096);
        let bad = [
            RdmaConfig { qps: 0, ..cfg.clone() },
            RdmaConfig { qps: QPS_MAX + 1, ..cfg.clone() },
            RdmaConfig { chunk_bytes: 1000, ..cfg.clone() },
            RdmaConfig { chunk_bytes: CHUNK_BYTES_MAX + 4096, ..cfg.clone() },
            RdmaConfig { slots: 1, ..cfg.clone() },
            RdmaConfig { slots: SLOTS_MAX + 1, ..cfg.clone() },
            RdmaConfig { pool_slots: 1, ..cfg.clone() },
            RdmaConfig { signal_interval: 0, ..cfg.clone() },
            RdmaConfig { stall_timeout: Duration::from_millis(10), ..cfg.clone() },
            RdmaConfig { chunk_bytes: CHUNK_BYTES_MAX, slots: 128, ..cfg.clone() },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(Error::InvalidConfig { .. })), "{c:?}");
        }
    }

    #[test]
    fn queue_depths_cover_the_window() {
        let cfg = RdmaConfig::new(2, 1 << 20);
        assert!(cfg.sender_sq_depth(cfg.slots) > cfg.slots + cfg.signal_interval);
        assert!(cfg.receiver_sq_depth() > cfg.slots);
        assert_eq!(RdmaConfig::recv_depth(16), 20);
    }

    #[test]
    fn config_and_infos_are_json() {
        let cfg = RdmaConfig { device: Some("rxe0".into()), ..RdmaConfig::new(2, 1 << 20) };
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"cq_mode\":\"busy-poll\""), "{json}");
        assert_eq!(serde_json::from_str::<RdmaConfig>(&json).unwrap(), cfg);
        let info = receiver_info(&cfg);
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<ReceiverInfo>(&json).unwrap(), info);
        let s = SenderInfo { qps: vec![qp(5), qp(6)], chunk_bytes: 1 << 20 };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SenderInfo>(&json).unwrap(), s);
    }

    #[test]
    fn peer_infos_are_validated() {
        let cfg = RdmaConfig::new(2, 1 << 20);
        let good = receiver_info(&cfg);
        good.validate(&cfg).unwrap();
        let cases = [
            ReceiverInfo { qps: vec![qp(1)], ..good.clone() },
            ReceiverInfo { chunk_bytes: 2 << 20, ..good.clone() },
            ReceiverInfo { slots: 0, ..good.clone() },
            ReceiverInfo { slots: SLOTS_MAX + 1, ..good.clone() },
            ReceiverInfo { slot_bytes: 1 << 20, ..good.clone() },
            ReceiverInfo { slot_bytes: u64::MAX, ..good.clone() },
            ReceiverInfo { ring: RemoteRegion { len_bytes: 4096, ..good.ring }, ..good.clone() },
            ReceiverInfo {
                ring: RemoteRegion { addr: u64::MAX - 10, ..good.ring },
                ..good.clone()
            },
        ];
        for c in cases {
            assert!(matches!(c.validate(&cfg), Err(Error::InvalidRemote { .. })), "{c:?}");
        }
        let s = SenderInfo { qps: vec![qp(5), qp(6)], chunk_bytes: 1 << 20 };
        s.validate(&cfg).unwrap();
        assert!(SenderInfo { qps: vec![qp(5)], ..s.clone() }.validate(&cfg).is_err());
        assert!(SenderInfo { chunk_bytes: 4096, ..s }.validate(&cfg).is_err());
    }
}
