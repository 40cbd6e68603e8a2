//! What the RDMA transport puts on the wire besides payload bytes: the
//! immediate of a data WRITE, the receiver's control messages (credits,
//! keepalive pings, abort notices), the slot geometry, and the `wr_id`
//! encoding both sides use to route completions.
//!
//! Pure: no verbs, no clock. Everything that decodes peer input returns a
//! [`WireError`], never panics.
//!
//! ```text
//! data:    WRITE_WITH_IMM  [payload (lease) | header (32 B)] -> start of remote slot `imm`
//!          completion byte_len = payload + 32, header at byte_len - 32
//! abort:   WRITE_WITH_IMM  zero bytes, imm = IMM_ABORT
//! control: inline SEND, receiver -> sender, <= 64 bytes, little endian:
//!          | magic u32 | kind u8 | count u8 | 0 u16 | count x slot u32 |
//! ```

use blitx_core::frame::FRAME_HEADER_BYTES;

/// Bytes of the frame header that follows the payload in a slot.
pub const HEADER_BYTES: usize = FRAME_HEADER_BYTES;
/// Room after the chunk in every receiver slot (one page, so slots stay page
/// aligned); the header lands at the end of the payload, inside it.
pub const SLOT_PAD_BYTES: usize = 4096;
/// Largest number of receiver slots (bounds the ring, the credit state and
/// every queue sized from it).
pub const SLOTS_MAX: u32 = 4096;
/// The immediate that tells the receiver the sender aborted.
pub const IMM_ABORT: u32 = u32::MAX;
/// Bytes of one control message (and of one sender-side receive buffer).
pub const CONTROL_BYTES: usize = 64;
const CONTROL_PREFIX_BYTES: usize = 8;
/// Slot indices one credit message carries at most.
pub const CREDITS_PER_MESSAGE_MAX: usize = (CONTROL_BYTES - CONTROL_PREFIX_BYTES) / 4;
const CONTROL_MAGIC: u32 = u32::from_le_bytes(*b"BLCR");

const _: () = assert!(HEADER_BYTES <= SLOT_PAD_BYTES);
const _: () = assert!(SLOT_PAD_BYTES.is_multiple_of(4096));
const _: () = assert!(SLOTS_MAX < IMM_ABORT);
const _: () = assert!(CREDITS_PER_MESSAGE_MAX >= 8 && CREDITS_PER_MESSAGE_MAX <= u8::MAX as usize);

/// Peer input that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The immediate names a slot that does not exist.
    #[error("immediate {imm:#x} names no slot (the ring has {slots})")]
    Imm {
        /// The immediate received.
        imm: u32,
        /// Slots in the ring.
        slots: u32,
    },
    /// A data WRITE too short for a header or longer than a slot.
    #[error("a WRITE of {byte_len} bytes cannot hold a frame in a {slot_bytes}-byte slot")]
    WriteLength {
        /// `byte_len` of the completion.
        byte_len: u32,
        /// The slot size.
        slot_bytes: u64,
    },
    /// A control message that is not one.
    #[error("malformed control message ({len_bytes} bytes): {reason}")]
    Control {
        /// Bytes received.
        len_bytes: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Bytes of one receiver slot for a chunk size.
pub fn slot_bytes_for(chunk_bytes: u32) -> u64 {
    u64::from(chunk_bytes) + SLOT_PAD_BYTES as u64
}

/// What the immediate of an incoming WRITE_WITH_IMM means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imm {
    /// A frame landed at the start of this slot.
    Slot(u32),
    /// The sender aborted the transfer.
    Abort,
}

impl Imm {
    /// The immediate to post (host order; the verbs layer converts).
    pub fn encode(self) -> u32 {
        match self {
            Imm::Slot(slot) => slot,
            Imm::Abort => IMM_ABORT,
        }
    }

    /// Decodes a received immediate against a ring of `slots` slots.
    pub fn decode(imm: u32, slots: u32) -> Result<Imm, WireError> {
        match imm {
            IMM_ABORT => Ok(Imm::Abort),
            slot if slot < slots => Ok(Imm::Slot(slot)),
            _ => Err(WireError::Imm { imm, slots }),
        }
    }
}

/// Splits a data WRITE's `byte_len` into (payload bytes, header offset in
/// the slot). The header is the last [`HEADER_BYTES`] of the WRITE.
pub fn split_write(byte_len: u32, slot_bytes: u64) -> Result<(u32, usize), WireError> {
    let header = HEADER_BYTES as u32;
    if byte_len < header || u64::from(byte_len) > slot_bytes {
        return Err(WireError::WriteLength { byte_len, slot_bytes });
    }
    let payload = byte_len - header;
    Ok((payload, payload as usize))
}

/// A batch of returned slots (fixed capacity, no allocation on the hot path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreditBatch {
    slots: [u32; CREDITS_PER_MESSAGE_MAX],
    len: u8,
}

impl CreditBatch {
    /// Adds a slot; false when the batch is full.
    pub fn push(&mut self, slot: u32) -> bool {
        let i = usize::from(self.len);
        if i == CREDITS_PER_MESSAGE_MAX {
            return false;
        }
        self.slots[i] = slot;
        self.len += 1;
        true
    }

    /// The slots in the batch.
    pub fn slots(&self) -> &[u32] {
        &self.slots[..usize::from(self.len)]
    }

    /// True when no slot was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no more slot fits.
    pub fn is_full(&self) -> bool {
        usize::from(self.len) == CREDITS_PER_MESSAGE_MAX
    }
}

/// A control message, receiver → sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// These slots may be written again.
    Credits(CreditBatch),
    /// Liveness probe: the sender's NIC acknowledges it; an unreachable
    /// sender makes it fail with a retry error on the receiver.
    Ping,
    /// The receiver aborted the transfer.
    Abort,
}

const KIND_CREDITS: u8 = 1;
const KIND_PING: u8 = 2;
const KIND_ABORT: u8 = 3;

impl Control {
    /// Encodes into `buf`; returns the bytes used (at most [`CONTROL_BYTES`]).
    pub fn encode(&self, buf: &mut [u8; CONTROL_BYTES]) -> usize {
        let (kind, slots): (u8, &[u32]) = match self {
            Control::Credits(batch) => (KIND_CREDITS, batch.slots()),
            Control::Ping => (KIND_PING, &[]),
            Control::Abort => (KIND_ABORT, &[]),
        };
        buf[..4].copy_from_slice(&CONTROL_MAGIC.to_le_bytes());
        buf[4] = kind;
        buf[5] = slots.len() as u8; // <= CREDITS_PER_MESSAGE_MAX <= 255
        buf[6..8].fill(0);
        for (i, slot) in slots.iter().enumerate() {
            let at = CONTROL_PREFIX_BYTES + 4 * i;
            buf[at..at + 4].copy_from_slice(&slot.to_le_bytes());
        }
        CONTROL_PREFIX_BYTES + 4 * slots.len()
    }

    /// Decodes a received message (`msg` is exactly the bytes received).
    /// Slot numbers are checked against the ring by the caller.
    pub fn decode(msg: &[u8]) -> Result<Control, WireError> {
        let bad = |reason| Err(WireError::Control { len_bytes: msg.len(), reason });
        if msg.len() < CONTROL_PREFIX_BYTES || msg.len() > CONTROL_BYTES {
            return bad("length outside 8..=64");
        }
        if msg[..4] != CONTROL_MAGIC.to_le_bytes() {
            return bad("bad magic");
        }
        let count = usize::from(msg[5]);
        if msg[6..8] != [0, 0] {
            return bad("reserved bytes are not zero");
        }
        if msg.len() != CONTROL_PREFIX_BYTES + 4 * count {
            return bad("length does not match the slot count");
        }
        match msg[4] {
            KIND_CREDITS => {
                if count == 0 {
                    return bad("a credit message without slots");
                }
                let mut batch = CreditBatch::default();
                for piece in msg[CONTROL_PREFIX_BYTES..].chunks_exact(4) {
                    let slot = u32::from_le_bytes([piece[0], piece[1], piece[2], piece[3]]);
                    batch.push(slot); // count <= CREDITS_PER_MESSAGE_MAX: length checked
                }
                Ok(Control::Credits(batch))
            }
            KIND_PING if count == 0 => Ok(Control::Ping),
            KIND_ABORT if count == 0 => Ok(Control::Abort),
            KIND_PING | KIND_ABORT => bad("a ping or abort with slots"),
            _ => bad("unknown kind"),
        }
    }
}

/// What a completion is for: the top byte of its `wr_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrKind {
    /// Sender: a data, End or abort-notice WRITE_WITH_IMM.
    Write = 1,
    /// Sender: a receive buffer for control messages.
    ControlRecv = 2,
    /// Receiver: a zero-SGE RECV for a WRITE_WITH_IMM.
    DataRecv = 3,
    /// Receiver: a control SEND (credits, ping, abort).
    ControlSend = 4,
}

const KIND_SHIFT: u32 = 56;
const QP_SHIFT: u32 = 48;
const INDEX_MASK: u64 = (1 << QP_SHIFT) - 1;

/// `kind << 56 | qp << 48 | index` (index: a sequence number or buffer
/// number, taken modulo 2^48; a QP would need nine years at a million work
/// requests per second to wrap it, so sequence numbers are used as is).
pub fn wr_id(kind: WrKind, qp: u8, index: u64) -> u64 {
    ((kind as u64) << KIND_SHIFT) | (u64::from(qp) << QP_SHIFT) | (index & INDEX_MASK)
}

/// Splits a `wr_id` made by [`wr_id`]; `None` for a kind this crate never posts.
pub fn parse_wr_id(id: u64) -> Option<(WrKind, u8, u64)> {
    let kind = match id >> KIND_SHIFT {
        1 => WrKind::Write,
        2 => WrKind::ControlRecv,
        3 => WrKind::DataRecv,
        4 => WrKind::ControlSend,
        _ => return None,
    };
    Some((kind, ((id >> QP_SHIFT) & 0xff) as u8, id & INDEX_MASK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imm_round_trip_and_bounds() {
        assert_eq!(Imm::decode(Imm::Slot(7).encode(), 16), Ok(Imm::Slot(7)));
        assert_eq!(Imm::decode(Imm::Abort.encode(), 16), Ok(Imm::Abort));
        assert_eq!(Imm::decode(15, 16), Ok(Imm::Slot(15)));
        assert_eq!(Imm::decode(16, 16), Err(WireError::Imm { imm: 16, slots: 16 }));
        assert!(Imm::decode(SLOTS_MAX, SLOTS_MAX).is_err());
    }

    #[test]
    fn header_sits_after_the_payload() {
        let slot = slot_bytes_for(1 << 20);
        assert_eq!(slot, (1 << 20) + 4096);
        assert_eq!(split_write(32, slot), Ok((0, 0)));
        assert_eq!(split_write((1 << 20) + 32, slot), Ok((1 << 20, 1 << 20)));
        assert_eq!(split_write(1001 + 32, slot), Ok((1001, 1001)));
        assert!(split_write(31, slot).is_err());
        assert!(split_write(0, slot).is_err());
        assert!(split_write(u32::MAX, slot).is_err());
    }

    #[test]
    fn credits_round_trip_and_fill_one_message() {
        let mut batch = CreditBatch::default();
        for slot in 0..CREDITS_PER_MESSAGE_MAX as u32 {
            assert!(batch.push(slot * 3));
        }
        assert!(batch.is_full());
        assert!(!batch.push(99));
        let mut buf = [0u8; CONTROL_BYTES];
        let n = Control::Credits(batch).encode(&mut buf);
        assert_eq!(n, CONTROL_BYTES);
        assert_eq!(Control::decode(&buf[..n]), Ok(Control::Credits(batch)));

        let mut one = CreditBatch::default();
        one.push(5);
        let n = Control::Credits(one).encode(&mut buf);
        assert_eq!(n, 12);
        match Control::decode(&buf[..n]) {
            Ok(Control::Credits(b)) => assert_eq!(b.slots(), &[5]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ping_and_abort_round_trip() {
        let mut buf = [0u8; CONTROL_BYTES];
        for c in [Control::Ping, Control::Abort] {
            let n = c.encode(&mut buf);
            assert_eq!(n, 8);
            assert_eq!(Control::decode(&buf[..n]), Ok(c));
        }
    }

    #[test]
    fn garbage_control_messages_are_errors() {
        let mut buf = [0u8; CONTROL_BYTES];
        let mut one = CreditBatch::default();
        one.push(1);
        let n = Control::Credits(one).encode(&mut buf);
        assert!(Control::decode(&buf[..n - 1]).is_err(), "short");
        assert!(Control::decode(&buf[..4]).is_err(), "no prefix");
        assert!(Control::decode(&[0u8; 80]).is_err(), "too long");
        let mut bad = buf;
        bad[0] ^= 1;
        assert!(Control::decode(&bad[..n]).is_err(), "magic");
        let mut bad = buf;
        bad[4] = 9;
        assert!(Control::decode(&bad[..n]).is_err(), "kind");
        let mut bad = buf;
        bad[6] = 1;
        assert!(Control::decode(&bad[..n]).is_err(), "reserved");
        let mut bad = buf;
        bad[5] = 0;
        assert!(Control::decode(&bad[..8]).is_err(), "credits without slots");
        let n = Control::Ping.encode(&mut buf);
        let mut bad = buf;
        bad[5] = 1;
        assert!(Control::decode(&bad[..n + 4]).is_err(), "ping with slots");
    }

    #[test]
    fn wr_ids_keep_kind_qp_and_index() {
        let id = wr_id(WrKind::Write, 3, 77);
        assert_eq!(parse_wr_id(id), Some((WrKind::Write, 3, 77)));
        let id = wr_id(WrKind::ControlSend, 255, u64::MAX);
        assert_eq!(parse_wr_id(id), Some((WrKind::ControlSend, 255, INDEX_MASK)));
        assert_eq!(parse_wr_id(0), None);
        assert_eq!(parse_wr_id(9 << 56), None);
    }
}
