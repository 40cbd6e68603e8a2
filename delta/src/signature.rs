//! Block signatures of the basis (the target's old copy): per block of `block_bytes` a weak
//! rolling sum and a strong hash; the last block may be shorter.
//!
//! Owns building them from block-aligned ranges (so the target hashes ranges in parallel and
//! the parts join up), their wire encoding, and decoding what a peer sent under limits the
//! caller passes in. It reads no file: the caller feeds the bytes.
//!
//! Wire format of one signature message (little endian, [`SIGNATURE_HEADER_BYTES`] of header,
//! then `count` entries of [`SIGNATURE_ENTRY_BYTES`]):
//!
//! ```text
//! 0          4               8               16         24                32        36
//! | "BXS1"   | block_bytes u32 | basis_bytes u64 | seed u64 | first_block u64 | count u32 |
//! entry: | weak u32 | strong u64 |
//! ```
//!
//! Every message repeats the parameters, so parts can arrive in any order and each is checked
//! on its own; the assembler checks that they agree, do not overlap and cover every block once.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::hash::{strong_hash, weak_sum};

pub const SIGNATURE_MAGIC: [u8; 4] = *b"BXS1";
pub const SIGNATURE_HEADER_BYTES: usize = 36;
pub const SIGNATURE_ENTRY_BYTES: usize = 12;
/// Smallest block a signature may use: below it the entries outweigh the data they describe.
pub const BLOCK_BYTES_MIN: u32 = 64;
/// Largest block a signature may use (a peer cannot make us hash or compare more per position).
pub const BLOCK_BYTES_MAX: u32 = 1 << 20;

const _: () = assert!(BLOCK_BYTES_MIN.is_power_of_two() && BLOCK_BYTES_MAX.is_power_of_two());
const _: () = assert!(SIGNATURE_HEADER_BYTES == 4 + 4 + 8 + 8 + 8 + 4);

/// What every part of one signature shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureParams {
    pub block_bytes: u32,
    pub basis_bytes: u64,
    /// Seed of the strong hash; the target picks it afresh for each signature.
    pub seed: u64,
}

impl SignatureParams {
    /// Checks the block size; every other value is valid.
    pub fn new(block_bytes: u32, basis_bytes: u64, seed: u64) -> Result<Self, SignatureError> {
        if !(BLOCK_BYTES_MIN..=BLOCK_BYTES_MAX).contains(&block_bytes) {
            return Err(SignatureError::BlockBytes { block_bytes });
        }
        Ok(Self { block_bytes, basis_bytes, seed })
    }

    /// Blocks of the basis, the short last one included.
    pub fn blocks(&self) -> u64 {
        self.basis_bytes.div_ceil(u64::from(self.block_bytes))
    }

    /// Length of block `block` (only the last one can be short).
    pub fn block_len(&self, block: u64) -> u32 {
        let start = block * u64::from(self.block_bytes);
        // Bounded by block_bytes, a u32.
        (self.basis_bytes - start).min(u64::from(self.block_bytes)) as u32
    }
}

/// One block's sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSig {
    pub weak: u32,
    pub strong: u64,
}

/// What the receiver of signature messages accepts; both bound what a peer can make it hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureLimits {
    /// Longest message; bounds each decode's allocation.
    pub message_bytes_max: usize,
    /// Most blocks a signature may have; bounds the whole signature
    /// (`blocks_max * SIGNATURE_ENTRY_BYTES` bytes held, twice that in the index).
    pub blocks_max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature block size {block_bytes} outside {BLOCK_BYTES_MIN}..={BLOCK_BYTES_MAX}")]
    BlockBytes { block_bytes: u32 },
    #[error("signature range {start}..{end} of a {basis_bytes}-byte basis is not block-aligned")]
    RangeMisaligned { start: u64, end: u64, basis_bytes: u64 },
    #[error("signature builder fed {fed_bytes} bytes past its range's end {end}")]
    FedPastEnd { fed_bytes: u64, end: u64 },
    #[error("signature builder finished at {at}, its range ends at {end}")]
    FinishedEarly { at: u64, end: u64 },
    #[error("signature message of {len_bytes} bytes exceeds the limit of {max_bytes}")]
    MessageTooLong { len_bytes: usize, max_bytes: usize },
    #[error("signature message truncated: {len_bytes} bytes, {need_bytes} needed")]
    Truncated { len_bytes: usize, need_bytes: usize },
    #[error("bad signature magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("signature of {blocks} blocks exceeds the limit of {max_blocks}")]
    TooManyBlocks { blocks: u64, max_blocks: u64 },
    #[error("signature message holds blocks {first_block}+{count}, the basis has {blocks}")]
    PastLastBlock { first_block: u64, count: u64, blocks: u64 },
    #[error("signature message parameters {got:?} differ from the first message's {want:?}")]
    ParamsDiffer { want: SignatureParams, got: SignatureParams },
    #[error("signature message for blocks {first_block}+{count} overlaps one already received")]
    Overlap { first_block: u64, count: u64 },
    #[error("signature incomplete: {received} of {blocks} blocks received")]
    Incomplete { received: u64, blocks: u64 },
    #[error("signature assembled from no message")]
    Empty,
}

/// Signatures of the consecutive blocks `first_block..first_block + blocks.len()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePart {
    pub params: SignatureParams,
    pub first_block: u64,
    pub blocks: Vec<BlockSig>,
}

/// Hashes one block-aligned range of the basis as its bytes are fed, in order.
#[derive(Debug)]
pub struct SignatureBuilder {
    params: SignatureParams,
    first_block: u64,
    at: u64,
    end: u64,
    /// The bytes of a block not yet complete (fewer than `block_bytes`).
    pending: Vec<u8>,
    blocks: Vec<BlockSig>,
}

impl SignatureBuilder {
    /// A builder of the blocks of `range`: it must start on a block boundary and end on one or
    /// at the end of the basis.
    pub fn new(params: SignatureParams, range: Range<u64>) -> Result<Self, SignatureError> {
        let block = u64::from(params.block_bytes);
        let aligned = range.start <= range.end
            && range.end <= params.basis_bytes
            && range.start.is_multiple_of(block)
            && (range.end.is_multiple_of(block) || range.end == params.basis_bytes);
        if !aligned {
            return Err(SignatureError::RangeMisaligned {
                start: range.start,
                end: range.end,
                basis_bytes: params.basis_bytes,
            });
        }
        let blocks = (range.end - range.start).div_ceil(block);
        Ok(Self {
            params,
            first_block: range.start / block,
            at: range.start,
            end: range.end,
            pending: Vec::new(),
            // The range's own size bounds it; the caller chose the range.
            blocks: Vec::with_capacity(usize::try_from(blocks).unwrap_or(0)),
        })
    }

    /// Feeds the next bytes of the range.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), SignatureError> {
        let fed_end = self.at + data.len() as u64;
        if fed_end > self.end {
            return Err(SignatureError::FedPastEnd {
                fed_bytes: fed_end - self.end,
                end: self.end,
            });
        }
        self.at = fed_end;
        let block = self.params.block_bytes as usize;
        if !self.pending.is_empty() {
            let take = (block - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == block {
                self.blocks.push(sign(&self.pending, self.params.seed));
                self.pending.clear();
            }
        }
        let mut whole = data.chunks_exact(block);
        for chunk in &mut whole {
            self.blocks.push(sign(chunk, self.params.seed));
        }
        self.pending.extend_from_slice(whole.remainder());
        Ok(())
    }

    /// The range's signatures, once all of its bytes were fed.
    pub fn finish(mut self) -> Result<SignaturePart, SignatureError> {
        if self.at != self.end {
            return Err(SignatureError::FinishedEarly { at: self.at, end: self.end });
        }
        // Only the basis's last block can be short: `new` checked the range's end.
        if !self.pending.is_empty() {
            self.blocks.push(sign(&self.pending, self.params.seed));
        }
        Ok(SignaturePart {
            params: self.params,
            first_block: self.first_block,
            blocks: self.blocks,
        })
    }
}

fn sign(block: &[u8], seed: u64) -> BlockSig {
    BlockSig { weak: weak_sum(block), strong: strong_hash(block, seed) }
}

impl SignaturePart {
    /// Bytes of this part encoded as messages of at most `blocks_per_message` entries each.
    pub fn encoded_bytes(&self, blocks_per_message: usize) -> usize {
        let messages = self.blocks.len().div_ceil(blocks_per_message.max(1)).max(1);
        messages * SIGNATURE_HEADER_BYTES + self.blocks.len() * SIGNATURE_ENTRY_BYTES
    }

    /// Encodes the part as messages of at most `blocks_per_message` entries (an empty part
    /// still makes one message, so an empty basis has a signature).
    pub fn messages(&self, blocks_per_message: usize) -> Vec<Vec<u8>> {
        let per = blocks_per_message.max(1);
        if self.blocks.is_empty() {
            return vec![encode_message(&self.params, self.first_block, &[])];
        }
        self.blocks
            .chunks(per)
            .enumerate()
            .map(|(i, blocks)| {
                encode_message(&self.params, self.first_block + (i * per) as u64, blocks)
            })
            .collect()
    }

    /// Decodes one message from a peer. Everything is checked before anything is allocated:
    /// the message's length against the limit, the block count the header implies against
    /// `blocks_max`, and the entries' count against the bytes that carry them.
    pub fn decode(bytes: &[u8], limits: &SignatureLimits) -> Result<Self, SignatureError> {
        if bytes.len() > limits.message_bytes_max {
            return Err(SignatureError::MessageTooLong {
                len_bytes: bytes.len(),
                max_bytes: limits.message_bytes_max,
            });
        }
        let Some((header, entries)) = bytes.split_first_chunk::<SIGNATURE_HEADER_BYTES>() else {
            return Err(SignatureError::Truncated {
                len_bytes: bytes.len(),
                need_bytes: SIGNATURE_HEADER_BYTES,
            });
        };
        let mut reader = Reader(header);
        let magic = reader.array::<4>();
        if magic != SIGNATURE_MAGIC {
            return Err(SignatureError::Magic(magic));
        }
        let block_bytes = u32::from_le_bytes(reader.array());
        let basis_bytes = u64::from_le_bytes(reader.array());
        let seed = u64::from_le_bytes(reader.array());
        let first_block = u64::from_le_bytes(reader.array());
        let count = u64::from(u32::from_le_bytes(reader.array()));
        let params = SignatureParams::new(block_bytes, basis_bytes, seed)?;
        let blocks = params.blocks();
        if blocks > limits.blocks_max {
            return Err(SignatureError::TooManyBlocks { blocks, max_blocks: limits.blocks_max });
        }
        if first_block.checked_add(count).is_none_or(|end| end > blocks) {
            return Err(SignatureError::PastLastBlock { first_block, count, blocks });
        }
        let need_bytes = SIGNATURE_HEADER_BYTES as u64 + count * SIGNATURE_ENTRY_BYTES as u64;
        if bytes.len() as u64 != need_bytes {
            return Err(SignatureError::Truncated {
                len_bytes: bytes.len(),
                // Saturates only on a count no message under the limit can carry.
                need_bytes: usize::try_from(need_bytes).unwrap_or(usize::MAX),
            });
        }
        let blocks = entries
            .chunks_exact(SIGNATURE_ENTRY_BYTES)
            .map(|entry| {
                let mut reader = Reader(entry);
                BlockSig {
                    weak: u32::from_le_bytes(reader.array()),
                    strong: u64::from_le_bytes(reader.array()),
                }
            })
            .collect();
        Ok(Self { params, first_block, blocks })
    }
}

fn encode_message(params: &SignatureParams, first_block: u64, blocks: &[BlockSig]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNATURE_HEADER_BYTES + blocks.len() * SIGNATURE_ENTRY_BYTES);
    out.extend_from_slice(&SIGNATURE_MAGIC);
    out.extend_from_slice(&params.block_bytes.to_le_bytes());
    out.extend_from_slice(&params.basis_bytes.to_le_bytes());
    out.extend_from_slice(&params.seed.to_le_bytes());
    out.extend_from_slice(&first_block.to_le_bytes());
    // A message's entries are a chunk of `blocks_per_message`, which callers keep far below
    // u32::MAX (a message of 2^32 entries would be 48 GiB).
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for block in blocks {
        out.extend_from_slice(&block.weak.to_le_bytes());
        out.extend_from_slice(&block.strong.to_le_bytes());
    }
    out
}

/// Reads fixed-size fields from a slice whose length the caller checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        out
    }
}

/// The whole signature of a basis: every block, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    params: SignatureParams,
    blocks: Vec<BlockSig>,
}

impl Signature {
    /// Joins parts that cover every block of the basis exactly once, in any order.
    pub fn from_parts(
        parts: Vec<SignaturePart>,
        limits: &SignatureLimits,
    ) -> Result<Self, SignatureError> {
        let mut assembler = SignatureAssembler::new(*limits);
        for part in parts {
            assembler.push(part)?;
        }
        assembler.finish()
    }

    pub fn params(&self) -> &SignatureParams {
        &self.params
    }

    pub fn blocks(&self) -> &[BlockSig] {
        &self.blocks
    }

    /// The signature as one part (the target's whole basis hashed by one builder).
    pub fn into_part(self) -> SignaturePart {
        SignaturePart { params: self.params, first_block: 0, blocks: self.blocks }
    }
}

/// Collects the signature messages of one basis as they arrive from the peer.
#[derive(Debug)]
pub struct SignatureAssembler {
    limits: SignatureLimits,
    params: Option<SignatureParams>,
    /// Parts by first block; they never overlap.
    parts: BTreeMap<u64, Vec<BlockSig>>,
    received: u64,
}

impl SignatureAssembler {
    pub fn new(limits: SignatureLimits) -> Self {
        Self { limits, params: None, parts: BTreeMap::new(), received: 0 }
    }

    /// Decodes and adds one message.
    pub fn push_message(&mut self, bytes: &[u8]) -> Result<(), SignatureError> {
        let part = SignaturePart::decode(bytes, &self.limits)?;
        self.push(part)
    }

    /// Adds one part (decoded, or built locally).
    pub fn push(&mut self, part: SignaturePart) -> Result<(), SignatureError> {
        let want = *self.params.get_or_insert(part.params);
        if part.params != want {
            return Err(SignatureError::ParamsDiffer { want, got: part.params });
        }
        let blocks = want.blocks();
        if blocks > self.limits.blocks_max {
            return Err(SignatureError::TooManyBlocks {
                blocks,
                max_blocks: self.limits.blocks_max,
            });
        }
        let count = part.blocks.len() as u64;
        let first_block = part.first_block;
        if first_block.checked_add(count).is_none_or(|end| end > blocks) {
            return Err(SignatureError::PastLastBlock { first_block, count, blocks });
        }
        if count == 0 {
            return Ok(());
        }
        let end = first_block + count;
        let before_overlaps = self
            .parts
            .range(..=first_block)
            .next_back()
            .is_some_and(|(start, b)| start + b.len() as u64 > first_block);
        let after_overlaps = self.parts.range(first_block..end).next().is_some();
        if before_overlaps || after_overlaps {
            return Err(SignatureError::Overlap { first_block, count });
        }
        self.received += count;
        self.parts.insert(first_block, part.blocks);
        Ok(())
    }

    /// The signature, once every block arrived.
    pub fn finish(self) -> Result<Signature, SignatureError> {
        let params = self.params.ok_or(SignatureError::Empty)?;
        let blocks = params.blocks();
        // Parts never overlap and lie below `blocks`, so a full count means full coverage.
        if self.received != blocks {
            return Err(SignatureError::Incomplete { received: self.received, blocks });
        }
        let mut all = Vec::with_capacity(usize::try_from(blocks).unwrap_or(0));
        for (_, part) in self.parts {
            all.extend_from_slice(&part);
        }
        Ok(Signature { params, blocks: all })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SignatureLimits =
        SignatureLimits { message_bytes_max: 1 << 20, blocks_max: 1 << 20 };

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        fastrand::Rng::with_seed(seed).fill(&mut out);
        out
    }

    fn whole(params: SignatureParams, basis: &[u8]) -> SignaturePart {
        let mut builder = SignatureBuilder::new(params, 0..basis.len() as u64).unwrap();
        builder.update(basis).unwrap();
        builder.finish().unwrap()
    }

    #[test]
    fn ranges_hashed_apart_and_fed_in_pieces_equal_the_whole() {
        let basis = data(10_000, 1);
        let params = SignatureParams::new(256, basis.len() as u64, 9).unwrap();
        let expected = whole(params, &basis);
        assert_eq!(expected.blocks.len(), 40); // 39 whole blocks and one of 16 bytes
        let mut parts = Vec::new();
        for range in [4096u64..10_000, 0..1024, 1024..4096] {
            let mut builder = SignatureBuilder::new(params, range.clone()).unwrap();
            // Fed in odd pieces that straddle block boundaries.
            for piece in basis[range.start as usize..range.end as usize].chunks(77) {
                builder.update(piece).unwrap();
            }
            parts.push(builder.finish().unwrap());
        }
        let sig = Signature::from_parts(parts, &LIMITS).unwrap();
        assert_eq!(sig.blocks(), &expected.blocks[..]);
    }

    #[test]
    fn builder_refuses_misaligned_ranges_and_overfeeding() {
        let params = SignatureParams::new(256, 1000, 0).unwrap();
        assert!(matches!(
            SignatureBuilder::new(params, 100..512),
            Err(SignatureError::RangeMisaligned { .. })
        ));
        assert!(matches!(
            SignatureBuilder::new(params, 0..300),
            Err(SignatureError::RangeMisaligned { .. })
        ));
        assert!(SignatureBuilder::new(params, 768..1000).is_ok());
        let mut builder = SignatureBuilder::new(params, 0..256).unwrap();
        assert!(matches!(builder.update(&[0; 257]), Err(SignatureError::FedPastEnd { .. })));
        let builder = SignatureBuilder::new(params, 0..256).unwrap();
        assert!(matches!(builder.finish(), Err(SignatureError::FinishedEarly { .. })));
        assert!(matches!(SignatureParams::new(32, 0, 0), Err(SignatureError::BlockBytes { .. })));
    }

    #[test]
    fn messages_round_trip_in_any_order() {
        let basis = data(50_000, 2);
        let params = SignatureParams::new(512, basis.len() as u64, 3).unwrap();
        let part = whole(params, &basis);
        let messages = part.messages(16);
        assert_eq!(messages.len(), 98usize.div_ceil(16));
        assert_eq!(messages.iter().map(Vec::len).sum::<usize>(), part.encoded_bytes(16));
        let mut assembler = SignatureAssembler::new(LIMITS);
        for message in messages.iter().rev() {
            assembler.push_message(message).unwrap();
        }
        assert_eq!(assembler.finish().unwrap().into_part(), part);
    }

    #[test]
    fn an_empty_basis_has_a_signature_of_one_message() {
        let params = SignatureParams::new(4096, 0, 3).unwrap();
        let part = whole(params, &[]);
        let messages = part.messages(16);
        assert_eq!(messages.len(), 1);
        let mut assembler = SignatureAssembler::new(LIMITS);
        assembler.push_message(&messages[0]).unwrap();
        assert!(assembler.finish().unwrap().blocks().is_empty());
        assert_eq!(SignatureAssembler::new(LIMITS).finish(), Err(SignatureError::Empty));
    }

    fn header(block_bytes: u32, basis_bytes: u64, first_block: u64, count: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"BXS1");
        out.extend_from_slice(&block_bytes.to_le_bytes());
        out.extend_from_slice(&basis_bytes.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&first_block.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out
    }

    #[test]
    fn hostile_messages_are_refused_before_allocating() {
        // Absurd counts: a header that claims 2^32-1 entries, or a basis of 2^64-1 bytes, with
        // no entries behind it. Each is refused from the header alone.
        let absurd_count = header(4096, 1 << 40, 0, u32::MAX);
        assert!(matches!(
            SignaturePart::decode(&absurd_count, &LIMITS),
            Err(SignatureError::TooManyBlocks { .. })
        ));
        let big = SignatureLimits { message_bytes_max: 1 << 20, blocks_max: u64::MAX };
        assert!(matches!(
            SignaturePart::decode(&header(4096, 1 << 62, 0, u32::MAX), &big),
            Err(SignatureError::Truncated { .. })
        ));
        assert!(matches!(
            SignaturePart::decode(&header(64, u64::MAX, u64::MAX, 1), &big),
            Err(SignatureError::PastLastBlock { .. })
        ));
        assert!(matches!(
            SignaturePart::decode(&header(4096, 4096 * 4, 3, 2), &LIMITS),
            Err(SignatureError::PastLastBlock { .. })
        ));
        assert!(matches!(
            SignaturePart::decode(&header(0, 100, 0, 0), &LIMITS),
            Err(SignatureError::BlockBytes { block_bytes: 0 })
        ));
        let mut bad_magic = header(4096, 0, 0, 0);
        bad_magic[0] = b'X';
        assert!(matches!(
            SignaturePart::decode(&bad_magic, &LIMITS),
            Err(SignatureError::Magic(_))
        ));
        assert!(matches!(
            SignaturePart::decode(&bad_magic[..20], &LIMITS),
            Err(SignatureError::Truncated { .. })
        ));
        let mut long = header(4096, 4096 * 4, 0, 1);
        long.extend_from_slice(&[0; 13]);
        assert!(matches!(
            SignaturePart::decode(&long, &LIMITS),
            Err(SignatureError::Truncated { .. })
        ));
        let small = SignatureLimits { message_bytes_max: 40, blocks_max: 16 };
        assert!(matches!(
            SignaturePart::decode(&long, &small),
            Err(SignatureError::MessageTooLong { .. })
        ));
    }

    /// Random corruptions of valid messages: decoding never panics, and what it accepts lies
    /// within the limits.
    #[test]
    fn corrupted_messages_never_exceed_the_limits() {
        let basis = data(3000, 5);
        let params = SignatureParams::new(256, basis.len() as u64, 3).unwrap();
        let messages = whole(params, &basis).messages(4);
        let limits = SignatureLimits { message_bytes_max: 4096, blocks_max: 64 };
        let mut rng = fastrand::Rng::with_seed(12);
        for _ in 0..20_000 {
            let mut bytes = messages[rng.usize(..messages.len())].clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            if let Ok(part) = SignaturePart::decode(&bytes, &limits) {
                assert!(part.params.blocks() <= limits.blocks_max);
                assert!(part.first_block + part.blocks.len() as u64 <= part.params.blocks());
            }
        }
    }

    #[test]
    fn assembler_refuses_overlaps_gaps_and_mixed_parameters() {
        let basis = data(4096, 4);
        let params = SignatureParams::new(256, basis.len() as u64, 3).unwrap();
        let messages = whole(params, &basis).messages(4);
        let mut assembler = SignatureAssembler::new(LIMITS);
        assembler.push_message(&messages[1]).unwrap();
        assert!(matches!(
            assembler.push_message(&messages[1]),
            Err(SignatureError::Overlap { .. })
        ));
        // A part straddling one already received.
        let straddle = SignaturePart {
            params,
            first_block: 2,
            blocks: vec![BlockSig { weak: 0, strong: 0 }; 4],
        };
        assert!(matches!(assembler.push(straddle), Err(SignatureError::Overlap { .. })));
        let other = SignatureParams { seed: 4, ..params };
        let foreign = SignaturePart { params: other, first_block: 0, blocks: Vec::new() };
        assert!(matches!(assembler.push(foreign), Err(SignatureError::ParamsDiffer { .. })));
        assert!(matches!(
            assembler.finish(),
            Err(SignatureError::Incomplete { received: 4, blocks: 16 })
        ));
    }
}
