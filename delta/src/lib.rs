//! blit's delta transfer core (issue 18): what a large file that changed in place needs sent.
//!
//! The target (holding the old file, the *basis*) hashes it into block [`Signature`]s, built
//! from block-aligned ranges in parallel ([`SignatureBuilder`]) and sent in bounded messages
//! ([`SignaturePart::messages`], [`SignatureAssembler`]). The source indexes them ([`Index`])
//! and turns each chunk of its new file, independently, into a [`Recipe`] of copies from the
//! basis and literal bytes ([`encode_chunk`]); the target rebuilds the chunk
//! ([`Recipe::apply`]) and the frame checksum over the real chunk verifies it.
//!
//! Pure: no files, sockets, threads or clock. The caller reads the bytes and moves the
//! messages. docs/delta.md has the design, the wire formats, the bounds and the measurement
//! that chose the rolling match over content-defined chunking ([`cdc`]).

pub mod cdc;
mod hash;
mod index;
mod matcher;
mod recipe;
mod signature;

pub use hash::{strong_hash, weak_sum};
pub use index::{CANDIDATES_MAX, Index, IndexError};
pub use matcher::{ChunkPlan, encode_chunk, match_chunk};
pub use recipe::{ApplyError, Op, RECIPE_HEADER_BYTES, Recipe, RecipeBounds, RecipeError};
pub use signature::{
    BLOCK_BYTES_MAX, BLOCK_BYTES_MIN, BlockSig, SIGNATURE_ENTRY_BYTES, SIGNATURE_HEADER_BYTES,
    SIGNATURE_MAGIC, Signature, SignatureAssembler, SignatureBuilder, SignatureError,
    SignatureLimits, SignatureParams, SignaturePart,
};

/// Smallest block the rule picks: a page, the unit in which databases and VM images change.
pub const RULE_BLOCK_BYTES_MIN: u32 = 4 << 10;
/// Largest block the rule picks (rsync's cap too).
pub const RULE_BLOCK_BYTES_MAX: u32 = 128 << 10;
/// The rule keeps a signature at about this many blocks or fewer (12 MiB on the wire, about
/// 50 MiB with the source's index) until the largest block is reached.
pub const RULE_BLOCKS_TARGET: u64 = 1 << 20;

const _: () = assert!(BLOCK_BYTES_MIN <= RULE_BLOCK_BYTES_MIN);
const _: () = assert!(RULE_BLOCK_BYTES_MAX <= BLOCK_BYTES_MAX);

/// The block size for a basis of `basis_bytes`: the smallest power of two from 4 KiB that keeps
/// the signature at [`RULE_BLOCKS_TARGET`] blocks, at most 128 KiB (4 KiB up to 4 GiB, 8 KiB
/// up to 8 GiB, ..., 128 KiB from 64 GiB on).
pub fn block_bytes_for(basis_bytes: u64) -> u32 {
    let per_block = basis_bytes.div_ceil(RULE_BLOCKS_TARGET).max(1).next_power_of_two();
    // Clamped into u32's range first.
    per_block.clamp(u64::from(RULE_BLOCK_BYTES_MIN), u64::from(RULE_BLOCK_BYTES_MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_rule() {
        assert_eq!(block_bytes_for(0), 4096);
        assert_eq!(block_bytes_for(1 << 30), 4096);
        assert_eq!(block_bytes_for(4 << 30), 4096);
        assert_eq!(block_bytes_for((4 << 30) + 1), 8192);
        assert_eq!(block_bytes_for(16 << 30), 16 << 10);
        assert_eq!(block_bytes_for(1 << 40), 128 << 10);
        assert_eq!(block_bytes_for(u64::MAX), 128 << 10);
    }
}
