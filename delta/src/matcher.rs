//! The source's half: turns one chunk of the new file into a recipe against the basis's
//! signature, by the rsync rolling match.
//!
//! Owns the scan of one chunk; chunks are independent (each reader thread encodes its own, in
//! any order), so a match never crosses the chunk's edges. Per position: the weak sum rolls by
//! one byte; the index's filter answers most misses; a weak hit is confirmed by the strong
//! hash of the window. After a match the scan jumps a whole block and first tries the basis's
//! next block (the common case: unchanged runs), which merges into one copy op.

use crate::hash::{Rolling, strong_hash, weak_sum};
use crate::index::Index;
use crate::recipe::Recipe;

/// What the source sends for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkPlan {
    /// The recipe would be no shorter than the chunk: send the chunk's bytes as they are.
    Raw,
    /// Send the encoded recipe instead of the chunk; it is shorter than the chunk, so it fits
    /// the chunk's frame.
    Delta(Recipe<'static>),
}

/// Encodes one chunk (`data`: its bytes, at most u32::MAX) against the basis that `index`
/// describes. The recipe's ops cover exactly `data`.
pub fn encode_chunk(index: &Index, data: &[u8]) -> ChunkPlan {
    let recipe = match_chunk(index, data);
    if recipe.encoded_bytes() >= data.len() { ChunkPlan::Raw } else { ChunkPlan::Delta(recipe) }
}

/// The recipe for `data`, however long it is (the measurement wants it even where raw wins).
pub fn match_chunk(index: &Index, data: &[u8]) -> Recipe<'static> {
    let params = *index.signature().params();
    let seed = params.seed;
    let block = params.block_bytes as usize;
    let mut recipe = Recipe::default();
    // Start of the bytes not yet covered by an op (they become a literal).
    let mut pending = 0usize;
    let mut at = 0usize;
    // The basis block expected next, after a match.
    let mut next_block: Option<u64> = None;
    let full_blocks = params.basis_bytes / u64::from(params.block_bytes);
    if data.len() >= block && full_blocks > 0 {
        let mut rolling = Rolling::new(&data[..block]);
        loop {
            // Fast path inside unchanged runs: the basis's next block, by strong hash alone
            // (xxh3 is several times faster than the weak sum, and its 64 bits decide a match
            // in the index path too; docs/delta.md has the arithmetic).
            let window = &data[at..at + block];
            let mut found = None;
            if let Some(expected) = next_block.filter(|&b| b < full_blocks)
                && let Some(sig) = index.block(expected)
                && sig.strong == strong_hash(window, seed)
            {
                found = Some(expected);
            }
            if found.is_none() {
                if next_block.take().is_some() {
                    // The run ended: the weak sum was not rolled to here.
                    rolling = Rolling::new(window);
                }
                // Scan byte by byte while the filter says no block has the weak sum.
                while !index.may_contain(rolling.weak()) && at + block < data.len() {
                    rolling.roll(data[at], data[at + block]);
                    at += 1;
                }
                let window = &data[at..at + block];
                found = index.find(rolling.weak(), || strong_hash(window, seed));
            }
            if let Some(found) = found {
                recipe.push_literal(&data[pending..at]);
                recipe.push_copy(found * u64::from(params.block_bytes), params.block_bytes);
                at += block;
                pending = at;
                next_block = Some(found + 1);
                if at + block > data.len() {
                    break;
                }
            } else {
                if at + block >= data.len() {
                    break;
                }
                rolling.roll(data[at], data[at + block]);
                at += 1;
            }
        }
    }
    // The basis's short last block can only match the chunk's end (the file's unchanged tail).
    let tail = (params.basis_bytes % u64::from(params.block_bytes)) as usize;
    if tail > 0 && data.len() - pending >= tail {
        let last = &data[data.len() - tail..];
        if let Some(sig) = index.block(full_blocks)
            && sig.weak == weak_sum(last)
            && sig.strong == strong_hash(last, seed)
        {
            recipe.push_literal(&data[pending..data.len() - tail]);
            recipe.push_copy(full_blocks * u64::from(params.block_bytes), tail as u32);
            pending = data.len();
        }
    }
    recipe.push_literal(&data[pending..]);
    recipe
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Op;
    use crate::signature::{Signature, SignatureBuilder, SignatureLimits, SignatureParams};

    #[derive(Debug, thiserror::Error)]
    #[error("outside the basis")]
    struct Outside;

    fn index(basis: &[u8], block_bytes: u32, seed: u64) -> Index {
        let params = SignatureParams::new(block_bytes, basis.len() as u64, seed).unwrap();
        let mut builder = SignatureBuilder::new(params, 0..basis.len() as u64).unwrap();
        builder.update(basis).unwrap();
        let limits = SignatureLimits { message_bytes_max: 1 << 20, blocks_max: 1 << 20 };
        Index::new(Signature::from_parts(vec![builder.finish().unwrap()], &limits).unwrap())
            .unwrap()
    }

    fn rebuild(recipe: &Recipe<'_>, basis: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        recipe
            .apply(
                basis.len() as u64,
                |offset, buf| {
                    let start = offset as usize;
                    buf.copy_from_slice(basis.get(start..start + buf.len()).ok_or(Outside)?);
                    Ok::<(), Outside>(())
                },
                &mut out,
            )
            .unwrap();
        out
    }

    fn random(len: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut out = vec![0u8; len];
        rng.fill(&mut out);
        out
    }

    #[test]
    fn identical_data_is_one_copy() {
        let mut rng = fastrand::Rng::with_seed(1);
        let basis = random(100_000, &mut rng); // 97 whole blocks of 1 KiB and a tail
        let index = index(&basis, 1024, 5);
        let recipe = match_chunk(&index, &basis);
        assert_eq!(recipe.ops(), &[Op::Copy { basis_offset: 0, len_bytes: 100_000 }]);
        assert!(matches!(encode_chunk(&index, &basis), ChunkPlan::Delta(_)));
        // A chunk from the middle is one copy too (no tail there).
        let recipe = match_chunk(&index, &basis[4096..8192]);
        assert_eq!(recipe.ops(), &[Op::Copy { basis_offset: 4096, len_bytes: 4096 }]);
    }

    #[test]
    fn all_different_data_is_all_literal_and_sent_raw() {
        let mut rng = fastrand::Rng::with_seed(2);
        let basis = random(64 * 1024, &mut rng);
        let data = random(64 * 1024, &mut rng);
        let index = index(&basis, 1024, 5);
        let recipe = match_chunk(&index, &data);
        assert_eq!(recipe.ops(), &[Op::Literal { len_bytes: 64 * 1024 }]);
        assert_eq!(encode_chunk(&index, &data), ChunkPlan::Raw);
    }

    #[test]
    fn insertion_near_the_start_shifts_every_block_into_one_copy() {
        let mut rng = fastrand::Rng::with_seed(3);
        let basis = random(256 * 1024, &mut rng);
        let mut data = basis.clone();
        let inserted = random(64, &mut rng);
        data.splice(1000..1000, inserted.iter().copied());
        let index = index(&basis, 4096, 5);
        let recipe = match_chunk(&index, &data);
        // The first block holds the insertion: it is literal (block + 64 bytes), then one copy.
        assert_eq!(
            recipe.ops(),
            &[
                Op::Literal { len_bytes: 4096 + 64 },
                Op::Copy { basis_offset: 4096, len_bytes: 256 * 1024 - 4096 }
            ]
        );
        assert_eq!(rebuild(&recipe, &basis, data.len()), data);
    }

    #[test]
    fn repeated_blocks_and_zero_runs_rebuild() {
        let mut rng = fastrand::Rng::with_seed(4);
        let block = random(512, &mut rng);
        let mut basis = Vec::new();
        for _ in 0..8 {
            basis.extend_from_slice(&block);
            basis.extend_from_slice(&[0u8; 1024]);
        }
        let mut data = basis.clone();
        data.rotate_left(700);
        let index = index(&basis, 512, 6);
        let recipe = match_chunk(&index, &data);
        assert_eq!(rebuild(&recipe, &basis, data.len()), data);
        assert!(recipe.literals().len() < 2 * 512, "{} literal bytes", recipe.literals().len());
    }

    #[test]
    fn short_data_and_empty_basis() {
        let mut rng = fastrand::Rng::with_seed(5);
        let basis = random(3000, &mut rng);
        let index = index(&basis, 1024, 0);
        for len in [0usize, 1, 100, 1023] {
            let data = &basis[..len];
            assert_eq!(rebuild(&match_chunk(&index, data), &basis, len), data);
        }
        // The tail block (952 bytes) matches at the chunk's end.
        let tail = &basis[2048..];
        assert_eq!(
            match_chunk(&index, tail).ops(),
            &[Op::Copy { basis_offset: 2048, len_bytes: 952 }]
        );
        let empty = self::index(&[], 1024, 0);
        assert_eq!(match_chunk(&empty, &basis).ops(), &[Op::Literal { len_bytes: 3000 }]);
        assert_eq!(encode_chunk(&empty, &[]), ChunkPlan::Raw);
    }

    /// Random edits (overwrites, insertions, deletions, moved ranges) on random bases, chunked
    /// at random lengths: every chunk's recipe rebuilds it exactly.
    #[test]
    fn random_edits_rebuild_for_many_seeds() {
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let block_bytes = [64u32, 100, 256, 1024][rng.usize(..4)];
            let basis = random(rng.usize(0..40_000), &mut rng);
            let mut data = basis.clone();
            for _ in 0..rng.usize(0..8) {
                let at = rng.usize(0..=data.len());
                match rng.u8(..4) {
                    0 => {
                        let end = (at + rng.usize(1..300)).min(data.len());
                        rng.fill(&mut data[at..end]);
                    }
                    1 => {
                        let bytes = random(rng.usize(1..300), &mut rng);
                        data.splice(at..at, bytes);
                    }
                    2 => {
                        let end = (at + rng.usize(1..300)).min(data.len());
                        data.drain(at..end);
                    }
                    _ => {
                        let by = at % data.len().max(1);
                        data.rotate_left(by);
                    }
                }
            }
            let index = index(&basis, block_bytes, seed);
            let chunk = rng.usize(1..20_000);
            let mut copied = 0;
            for piece in data.chunks(chunk) {
                let recipe = match_chunk(&index, piece);
                assert_eq!(rebuild(&recipe, &basis, piece.len()), piece, "seed {seed}");
                copied += recipe.copied_bytes();
            }
            if data == basis && basis.len() >= 2 * chunk {
                assert!(copied > 0, "seed {seed}: unchanged data copied nothing");
            }
        }
    }
}
