//! The source's lookup from a weak sum to the basis blocks that have it.
//!
//! Owns the table and the bound on how many candidates one position may check; knows nothing
//! of the data being matched. Built once per file and shared (read-only) by every reader
//! thread.
//!
//! Layout: the blocks' `(weak, strong, block)` sorted and deduplicated on `(weak, strong)` (a
//! basis full of zero blocks yields one entry, the first), a directory from the top bits of the
//! weak sum to each bucket's start, and a bit filter on the low bits that answers most misses
//! from a table of 2 bytes per block (cache-resident for a few hundred thousand blocks) without
//! touching the rest. A bucket holds about one entry; a peer that sends one weak sum for every
//! block (an adversarial signature) makes one long bucket, which costs a binary search and at
//! most [`CANDIDATES_MAX`] strong comparisons per position, never a scan.

use crate::signature::{BlockSig, Signature};

/// Most candidates one position compares by strong hash.
pub const CANDIDATES_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    weak: u32,
    /// Block number; a signature's blocks fit u32 (`Index::new` refuses more).
    block: u32,
    strong: u64,
}

#[derive(Debug)]
pub struct Index {
    signature: Signature,
    entries: Vec<Entry>,
    /// `directory[b]..directory[b + 1]` are the entries whose weak sum's top bits are `b`.
    directory: Vec<u32>,
    directory_shift: u32,
    filter: Vec<u64>,
    filter_mask: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("a signature of {blocks} blocks is too large to index (at most 2^32 - 2)")]
    TooManyBlocks { blocks: u64 },
}

impl Index {
    /// Indexes every block of full length; the basis's short last block is matched apart
    /// (only at the end of a chunk), so it is left out.
    pub fn new(signature: Signature) -> Result<Self, IndexError> {
        let blocks = signature.blocks().len() as u64;
        if blocks >= u64::from(u32::MAX) {
            return Err(IndexError::TooManyBlocks { blocks });
        }
        let params = signature.params();
        let full = (params.basis_bytes / u64::from(params.block_bytes)) as usize;
        let mut entries: Vec<Entry> = signature.blocks()[..full]
            .iter()
            .enumerate()
            .map(|(block, sig)| Entry { weak: sig.weak, block: block as u32, strong: sig.strong })
            .collect();
        entries.sort_unstable_by_key(|e| (e.weak, e.strong, e.block));
        entries.dedup_by_key(|e| (e.weak, e.strong));

        // About one entry per bucket: 2^bits buckets for n entries, bits in 1..=24.
        let bits = (entries.len().max(2).next_power_of_two().trailing_zeros()).clamp(1, 24);
        let directory_shift = 32 - bits;
        let mut directory = vec![0u32; (1usize << bits) + 1];
        for entry in &entries {
            directory[(entry.weak >> directory_shift) as usize + 1] += 1;
        }
        for i in 1..directory.len() {
            directory[i] += directory[i - 1];
        }

        // 16 filter bits per entry (at least 64): a miss passes with probability about 1/16.
        let filter_bits = (entries.len() * 16).max(64).next_power_of_two().min(1 << 32);
        let mut filter = vec![0u64; filter_bits / 64];
        let filter_mask = (filter_bits - 1) as u32;
        for entry in &entries {
            let bit = entry.weak & filter_mask;
            filter[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        Ok(Self { signature, entries, directory, directory_shift, filter, filter_mask })
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Whether any block may have this weak sum (false: none has).
    #[inline]
    pub fn may_contain(&self, weak: u32) -> bool {
        let bit = weak & self.filter_mask;
        self.filter[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// The first block (lowest number) among the first [`CANDIDATES_MAX`] with this weak sum
    /// whose strong hash is `strong()`; `strong` is called at most once, and only if some block
    /// has the weak sum.
    pub fn find(&self, weak: u32, strong: impl FnOnce() -> u64) -> Option<u64> {
        if !self.may_contain(weak) {
            return None;
        }
        let bucket = (weak >> self.directory_shift) as usize;
        let range = self.directory[bucket] as usize..self.directory[bucket + 1] as usize;
        let bucket = &self.entries[range];
        let first = bucket.partition_point(|e| e.weak < weak);
        let candidates = bucket[first..].iter().take_while(|e| e.weak == weak).take(CANDIDATES_MAX);
        let mut candidates = candidates.peekable();
        candidates.peek()?;
        let strong = strong();
        candidates.find(|e| e.strong == strong).map(|e| u64::from(e.block))
    }

    /// The signature of block `block`, if the basis has it.
    pub fn block(&self, block: u64) -> Option<&BlockSig> {
        self.signature.blocks().get(usize::try_from(block).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{SignatureLimits, SignatureParams, SignaturePart};

    const LIMITS: SignatureLimits =
        SignatureLimits { message_bytes_max: 1 << 20, blocks_max: 1 << 20 };

    fn signature(blocks: Vec<BlockSig>, block_bytes: u32) -> Signature {
        let params =
            SignatureParams::new(block_bytes, blocks.len() as u64 * u64::from(block_bytes), 0)
                .unwrap();
        Signature::from_parts(vec![SignaturePart { params, first_block: 0, blocks }], &LIMITS)
            .unwrap()
    }

    #[test]
    fn finds_every_block_by_its_sums() {
        let mut rng = fastrand::Rng::with_seed(5);
        let blocks: Vec<BlockSig> =
            (0..5000).map(|_| BlockSig { weak: rng.u32(..), strong: rng.u64(..) }).collect();
        let index = Index::new(signature(blocks.clone(), 64)).unwrap();
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(index.find(b.weak, || b.strong), Some(i as u64));
            assert_eq!(index.find(b.weak, || b.strong ^ 1), None);
        }
        let misses = (0..100_000).filter(|_| index.may_contain(rng.u32(..))).count();
        assert!(misses < 100_000 / 8, "the filter lets {misses} of 100000 misses through");
    }

    #[test]
    fn duplicate_blocks_resolve_to_the_first() {
        let same = BlockSig { weak: 7, strong: 9 };
        let index = Index::new(signature(vec![same; 1000], 64)).unwrap();
        assert_eq!(index.find(7, || 9), Some(0));
    }

    #[test]
    fn adversarial_equal_weak_sums_check_a_bounded_number_of_candidates() {
        // Every block shares one weak sum with a distinct strong hash: only the first
        // CANDIDATES_MAX are compared, the rest are never found (a missed match, not a wrong one).
        let blocks: Vec<BlockSig> = (0..10_000).map(|i| BlockSig { weak: 42, strong: i }).collect();
        let index = Index::new(signature(blocks, 64)).unwrap();
        assert_eq!(index.find(42, || 3), Some(3));
        assert_eq!(index.find(42, || CANDIDATES_MAX as u64 - 1), Some(CANDIDATES_MAX as u64 - 1));
        assert_eq!(index.find(42, || CANDIDATES_MAX as u64), None);
        let mut called = false;
        assert_eq!(
            index.find(43, || {
                called = true;
                0
            }),
            None
        );
        assert!(!called, "no strong hash for a weak sum no block has");
    }
}
