//! The data-plane frame: a fixed 32-byte header, then `len_bytes` of payload.
//!
//! Every transport carries the same frames. TCP writes the header on the wire in front of the
//! payload; RDMA carries the header in the slot next to the payload; the in-process transport
//! passes the decoded struct. Layout (little endian):
//!
//! ```text
//! 0      1     2       4         8          16            24          32
//! | 0xB1 | kind | flags u16 | len u32 | file u64 | offset u64 | xxh3 u64 |
//! ```
//!
//! A *bundle* payload packs many small files: a 8-byte prefix (`count u32`, `0 u32`), `count`
//! 16-byte records (`file_id u64`, `len u32`, `flags u32`), then the files' bytes back to back.

use crate::manifest::FileId;

pub const FRAME_HEADER_BYTES: usize = 32;
const FRAME_MAGIC: u8 = 0xB1;
const BUNDLE_PREFIX_BYTES: usize = 8;
const BUNDLE_RECORD_BYTES: usize = 16;
/// Largest number of files one bundle may carry; bounds the index a peer can make us parse.
pub const BUNDLE_FILES_MAX: usize = 16 * 1024;

/// Header flag, on Bundle frames: the source re-checked each of the bundle's files after reading
/// it (a file that failed is flagged in the index instead). Chunk frames do not carry it: a
/// chunked file becomes committable through the `FileRead` control message (protocol 3).
pub const FLAG_FILE_VERIFIED: u16 = 1;

/// Header flag: the payload carries no checksum — it never left this process (in-process
/// transport), or it crossed RDMA without `--rdma-frame-checksums` (RoCE's ICRC covers it).
/// TCP never sets it, and a TCP receiver refuses it.
pub const FLAG_UNCHECKED: u16 = 2;

/// Bundle record flag: the source could not read this file; its bytes are absent.
pub const BUNDLE_FLAG_FAILED: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// One chunk of a large file: `len_bytes` bytes at `offset_bytes`.
    Chunk = 1,
    /// A run of chunks that are entirely a hole in a sparse file: no payload, nothing to write.
    /// The header's last 8 bytes (the checksum field of other frames) hold how many consecutive
    /// chunks, starting at `offset_bytes`, the hole covers (0 is read as 1).
    Hole = 2,
    /// Many small files; `file_id` holds the bundle's sequence number.
    Bundle = 3,
    /// The sender has no more frames on this stream.
    End = 4,
    /// A resumed file's chunk that the target offered (its partial file already holds it) and
    /// the source found identical: no payload; the checksum field carries the source's hash
    /// of the chunk ([`checksum`]), which must equal the hash the target offered.
    Same = 5,
    /// A chunk of a file the target has an old copy of (its *basis*) as a recipe
    /// (`blitx_delta::Recipe`: ranges of the basis to copy and literal bytes) instead of its
    /// bytes; `len_bytes` is the recipe's length, and the checksum is that of the rebuilt chunk
    /// (always present).
    Delta = 6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u16,
    pub file_id: FileId,
    pub offset_bytes: u64,
    pub len_bytes: u32,
    /// xxh3-64 of the payload (0 for frames without payload).
    pub checksum: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {0:#04x}")]
    Magic(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame payload of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLong { len_bytes: u32, max_bytes: u32 },
    #[error(
        "checksum mismatch for file {file_id} at offset {offset_bytes}: sent {sent:#x}, received {received:#x}"
    )]
    Checksum { file_id: FileId, offset_bytes: u64, sent: u64, received: u64 },
    #[error("malformed bundle: {0}")]
    Bundle(&'static str),
    #[error("an unchecked {kind:?} frame in a session whose frames carry checksums")]
    Unchecked { kind: FrameKind },
    #[error(
        "the header of a {kind:?} frame says {len_bytes} payload bytes, {carried_bytes} came with it"
    )]
    PayloadLength { kind: FrameKind, len_bytes: u32, carried_bytes: u64 },
    #[error("a frame after the End frame of its stream")]
    AfterEnd,
}

/// What a receiver accepts from its peer: the one validation every backend's receiver runs on
/// every frame, before it allocates or reads a payload.
///
/// The rules (the same for every transport; [`crate::transport`] documents them with the trait):
/// - the header decodes (magic, kind) and its payload length is at most the session's chunk size
///   (`chunk_bytes`), so a peer cannot make us allocate or read more; Hole, Same and End frames
///   carry no payload;
/// - [`FLAG_UNCHECKED`] is accepted only where the session was set up without frame checksums
///   (`unchecked_allowed`: the in-process transport, RDMA without `--rdma-frame-checksums`);
///   TCP never allows it;
/// - the payload that arrived is exactly as long as the header says ([`ReceiveRules::carried`],
///   for transports that learn the length separately, as RDMA does from the completion);
/// - an End frame ends its stream: nothing may follow it on that stream ([`FrameError::AfterEnd`]),
///   and End frames are never delivered to the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveRules {
    pub chunk_bytes: u32,
    pub unchecked_allowed: bool,
}

impl ReceiveRules {
    /// Decodes and checks one header from the peer.
    pub fn header(&self, raw: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
        let header = FrameHeader::decode(raw, self.chunk_bytes)?;
        if header.flags & FLAG_UNCHECKED != 0 && !self.unchecked_allowed {
            return Err(FrameError::Unchecked { kind: header.kind });
        }
        Ok(header)
    }

    /// Checks the payload length that arrived against the header.
    pub fn carried(&self, header: &FrameHeader, carried_bytes: u64) -> Result<(), FrameError> {
        if u64::from(header.len_bytes) != carried_bytes {
            return Err(FrameError::PayloadLength {
                kind: header.kind,
                len_bytes: header.len_bytes,
                carried_bytes,
            });
        }
        Ok(())
    }
}

/// Pieces in which payloads are hashed: readers hash each piece right after reading it and
/// writers right before writing it, while it is in cache, so the checksum costs no extra trip
/// through memory.
pub const HASH_PIECE_BYTES: usize = 256 << 10;

/// The payload checksum: xxh3-64 of every 256 KiB piece, chained (each piece's digest is hashed
/// with the running value as seed). Chaining one-shot hashes keeps xxh3's vectorized loop (the
/// crate's streaming state machine measured 3x slower) and lets both ends hash piece by piece.
pub fn checksum(payload: &[u8]) -> u64 {
    let mut h = Hasher::default();
    for piece in payload.chunks(HASH_PIECE_BYTES) {
        h.update(piece);
    }
    h.finish()
}

/// Incremental [`checksum`]: feed the payload in consecutive [`HASH_PIECE_BYTES`] pieces (the
/// last may be shorter).
#[derive(Debug, Clone, Default)]
pub struct Hasher {
    state: u64,
}

impl Hasher {
    pub fn update(&mut self, piece: &[u8]) {
        let digest = xxhash_rust::xxh3::xxh3_64(piece);
        self.state = xxhash_rust::xxh3::xxh3_64_with_seed(&digest.to_le_bytes(), self.state);
    }
    pub fn finish(&self) -> u64 {
        self.state
    }
}

impl FrameHeader {
    /// A hole covering `chunks` consecutive chunks of `file_id` from `offset_bytes`.
    pub fn hole(file_id: FileId, offset_bytes: u64, chunks: u64) -> Self {
        FrameHeader {
            kind: FrameKind::Hole,
            flags: 0,
            file_id,
            offset_bytes,
            len_bytes: 0,
            checksum: chunks,
        }
    }

    /// How many chunks a Hole frame covers (at least one).
    pub fn hole_chunks(&self) -> u64 {
        self.checksum.max(1)
    }

    /// Chunk `offset_bytes` of `file_id` is the one the target offered, with hash `hash`.
    pub fn same(file_id: FileId, offset_bytes: u64, hash: u64) -> Self {
        FrameHeader {
            kind: FrameKind::Same,
            flags: 0,
            file_id,
            offset_bytes,
            len_bytes: 0,
            checksum: hash,
        }
    }

    pub fn end() -> Self {
        FrameHeader {
            kind: FrameKind::End,
            flags: 0,
            file_id: 0,
            offset_bytes: 0,
            len_bytes: 0,
            checksum: 0,
        }
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut b = [0u8; FRAME_HEADER_BYTES];
        b[0] = FRAME_MAGIC;
        b[1] = self.kind as u8;
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.len_bytes.to_le_bytes());
        b[8..16].copy_from_slice(&self.file_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Decodes a header from a peer; `max_payload_bytes` bounds what we are willing to receive.
    pub fn decode(
        b: &[u8; FRAME_HEADER_BYTES],
        max_payload_bytes: u32,
    ) -> Result<Self, FrameError> {
        if b[0] != FRAME_MAGIC {
            return Err(FrameError::Magic(b[0]));
        }
        let kind = match b[1] {
            1 => FrameKind::Chunk,
            2 => FrameKind::Hole,
            3 => FrameKind::Bundle,
            4 => FrameKind::End,
            5 => FrameKind::Same,
            6 => FrameKind::Delta,
            k => return Err(FrameError::Kind(k)),
        };
        let le64 = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[r]);
            u64::from_le_bytes(a)
        };
        let len_bytes = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if len_bytes > max_payload_bytes {
            return Err(FrameError::TooLong { len_bytes, max_bytes: max_payload_bytes });
        }
        if matches!(kind, FrameKind::Hole | FrameKind::End | FrameKind::Same) && len_bytes != 0 {
            return Err(FrameError::TooLong { len_bytes, max_bytes: 0 });
        }
        Ok(FrameHeader {
            kind,
            flags: u16::from_le_bytes([b[2], b[3]]),
            len_bytes,
            file_id: le64(8..16),
            offset_bytes: le64(16..24),
            checksum: le64(24..32),
        })
    }

    /// Checks a received payload against the header's checksum (unless the frame is marked
    /// [`FLAG_UNCHECKED`]).
    pub fn verify(&self, payload: &[u8]) -> Result<(), FrameError> {
        if self.flags & FLAG_UNCHECKED != 0 {
            return Ok(());
        }
        let received = checksum(payload);
        if received != self.checksum {
            return Err(FrameError::Checksum {
                file_id: self.file_id,
                offset_bytes: self.offset_bytes,
                sent: self.checksum,
                received,
            });
        }
        Ok(())
    }
}

/// One file inside a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleItem {
    pub file_id: FileId,
    pub len_bytes: u32,
    pub flags: u32,
    /// Where the file's bytes start within the payload.
    pub data_offset: usize,
}

impl BundleItem {
    pub fn failed(&self) -> bool {
        self.flags & BUNDLE_FLAG_FAILED != 0
    }
}

/// Bytes the index of a bundle with `count` files takes.
pub fn bundle_index_bytes(count: usize) -> usize {
    BUNDLE_PREFIX_BYTES + count * BUNDLE_RECORD_BYTES
}

/// Writes a bundle index for `items` (file id, length, flags) at the start of `buf`; returns
/// the index size. The caller then places each file's bytes after it, in order.
pub fn write_bundle_index(buf: &mut [u8], items: &[(FileId, u32, u32)]) -> usize {
    let n = bundle_index_bytes(items.len());
    assert!(buf.len() >= n, "bundle index does not fit the buffer");
    assert!(items.len() <= BUNDLE_FILES_MAX, "too many files in one bundle");
    let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
    buf[0..4].copy_from_slice(&count.to_le_bytes());
    buf[4..8].fill(0);
    for (i, (id, len, flags)) in items.iter().enumerate() {
        let at = BUNDLE_PREFIX_BYTES + i * BUNDLE_RECORD_BYTES;
        buf[at..at + 8].copy_from_slice(&id.to_le_bytes());
        buf[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        buf[at + 12..at + 16].copy_from_slice(&flags.to_le_bytes());
    }
    n
}

/// Parses and validates a bundle payload from a peer: the index must fit, and the files' bytes
/// must exactly fill the rest of the payload.
pub fn parse_bundle(payload: &[u8]) -> Result<Vec<BundleItem>, FrameError> {
    if payload.len() < BUNDLE_PREFIX_BYTES {
        return Err(FrameError::Bundle("shorter than its prefix"));
    }
    let count = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    if count > BUNDLE_FILES_MAX {
        return Err(FrameError::Bundle("too many files"));
    }
    let index_bytes = bundle_index_bytes(count);
    if payload.len() < index_bytes {
        return Err(FrameError::Bundle("index longer than payload"));
    }
    let mut items = Vec::with_capacity(count);
    let mut data_offset = index_bytes;
    for i in 0..count {
        let at = BUNDLE_PREFIX_BYTES + i * BUNDLE_RECORD_BYTES;
        let mut id = [0u8; 8];
        id.copy_from_slice(&payload[at..at + 8]);
        let len_bytes = u32::from_le_bytes([
            payload[at + 8],
            payload[at + 9],
            payload[at + 10],
            payload[at + 11],
        ]);
        let flags = u32::from_le_bytes([
            payload[at + 12],
            payload[at + 13],
            payload[at + 14],
            payload[at + 15],
        ]);
        items.push(BundleItem { file_id: u64::from_le_bytes(id), len_bytes, flags, data_offset });
        data_offset = data_offset
            .checked_add(len_bytes as usize)
            .ok_or(FrameError::Bundle("length overflow"))?;
        if data_offset > payload.len() {
            return Err(FrameError::Bundle("file bytes run past the payload"));
        }
    }
    if data_offset != payload.len() {
        return Err(FrameError::Bundle("trailing bytes after the last file"));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_roundtrip() {
        let h = FrameHeader {
            kind: FrameKind::Chunk,
            flags: FLAG_FILE_VERIFIED,
            file_id: 7,
            offset_bytes: 1 << 40,
            len_bytes: 4096,
            checksum: 0xdead_beef,
        };
        assert_eq!(FrameHeader::decode(&h.encode(), 1 << 20).unwrap(), h);
        assert!(matches!(FrameHeader::decode(&h.encode(), 100), Err(FrameError::TooLong { .. })));
        let mut bad = h.encode();
        bad[0] = 0;
        assert!(matches!(FrameHeader::decode(&bad, 1 << 20), Err(FrameError::Magic(0))));
    }

    #[test]
    fn incremental_checksum_matches_one_shot() {
        let data: Vec<u8> =
            (0..(3 * HASH_PIECE_BYTES + 17)).map(|i| (i * 31 % 251) as u8).collect();
        let mut h = Hasher::default();
        for piece in data.chunks(HASH_PIECE_BYTES) {
            h.update(piece);
        }
        assert_eq!(h.finish(), checksum(&data));
    }

    #[test]
    fn bundle_roundtrip() {
        let files: [(&[u8], u64); 3] = [(b"hello", 1), (b"", 2), (b"world!", 9)];
        let items: Vec<_> = files.iter().map(|(d, id)| (*id, d.len() as u32, 0)).collect();
        let mut buf = vec![0u8; 256];
        let mut at = write_bundle_index(&mut buf, &items);
        for (d, _) in &files {
            buf[at..at + d.len()].copy_from_slice(d);
            at += d.len();
        }
        let parsed = parse_bundle(&buf[..at]).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(&buf[parsed[2].data_offset..parsed[2].data_offset + 6], b"world!");
        assert!(parse_bundle(&buf[..at - 1]).is_err());
        assert!(parse_bundle(&buf[..at + 1]).is_err());
    }

    #[test]
    fn receive_rules_refuse_oversize_unchecked_and_short_payloads() {
        let h = FrameHeader {
            kind: FrameKind::Chunk,
            flags: FLAG_UNCHECKED,
            file_id: 1,
            offset_bytes: 0,
            len_bytes: 4096,
            checksum: 0,
        };
        let strict = ReceiveRules { chunk_bytes: 1 << 20, unchecked_allowed: false };
        let lax = ReceiveRules { unchecked_allowed: true, ..strict };
        assert_eq!(
            strict.header(&h.encode()),
            Err(FrameError::Unchecked { kind: FrameKind::Chunk })
        );
        assert_eq!(lax.header(&h.encode()), Ok(h));
        let small = ReceiveRules { chunk_bytes: 4095, unchecked_allowed: true };
        assert!(matches!(small.header(&h.encode()), Err(FrameError::TooLong { .. })));
        assert!(lax.carried(&h, 4096).is_ok());
        assert!(matches!(lax.carried(&h, 4000), Err(FrameError::PayloadLength { .. })));
        let mut end = FrameHeader::end().encode();
        end[4] = 1; // an End frame with a payload
        assert!(lax.header(&end).is_err());
    }

    proptest! {
        /// Anything a peer sends as a bundle either parses into in-bounds items or is refused.
        #[test]
        fn bundle_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(items) = parse_bundle(&bytes) {
                for it in items {
                    prop_assert!(it.data_offset + it.len_bytes as usize <= bytes.len());
                }
            }
        }

        #[test]
        fn header_decode_never_panics(bytes in proptest::array::uniform32(any::<u8>())) {
            let _ = FrameHeader::decode(&bytes, 1 << 20);
        }
    }
}
