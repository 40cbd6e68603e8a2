//! Content-defined chunking (gear hash, FastCDC-style normalized cuts): the alternative to the
//! rolling match that `examples/delta_measure.rs` measures it against. Not chosen (docs/delta.md
//! has the table); kept so the comparison can be rerun.
//!
//! Both sides cut their bytes where the gear hash of the last 64 bytes has its top bits zero,
//! so an edit moves only the cuts near it. The target sends, per piece of its basis, the
//! piece's length and strong hash; the source cuts each of its chunks the same way and looks
//! each piece up by (strong hash, length). No per-byte table lookups on the source, but a
//! changed byte costs the whole piece around it, and pieces vary in length (a byte is more
//! likely to fall in a long one).

use std::collections::HashMap;

use crate::hash::{random_table, strong_hash};
use crate::recipe::Recipe;

static GEAR: [u64; 256] = random_table(0x626C_6974_6765_6172);

/// Bytes of one signature entry on the wire were it sent: length u32 and strong hash u64.
pub const CDC_ENTRY_BYTES: usize = 12;

/// Cut sizes derived from the average: at least avg/4, at most avg*4; below the average a cut
/// needs two more zero bits than past it (normalization level 2), which narrows the spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdcParams {
    min_bytes: usize,
    avg_bytes: usize,
    max_bytes: usize,
    bits_small: u32,
    bits_large: u32,
}

impl CdcParams {
    /// `avg_bytes`: a power of two in 256..=1 MiB.
    pub fn new(avg_bytes: u32) -> Option<Self> {
        if !avg_bytes.is_power_of_two() || !(256..=1 << 20).contains(&avg_bytes) {
            return None;
        }
        let bits = avg_bytes.trailing_zeros();
        let avg = avg_bytes as usize;
        Some(Self {
            min_bytes: avg / 4,
            avg_bytes: avg,
            max_bytes: avg * 4,
            bits_small: bits + 2,
            bits_large: bits - 2,
        })
    }

    /// Length of the first piece of `data`.
    pub fn cut(&self, data: &[u8]) -> usize {
        if data.len() <= self.min_bytes {
            return data.len();
        }
        let end = data.len().min(self.max_bytes);
        let normal = end.min(self.avg_bytes);
        // The gear hash depends on its last 64 bytes: warm it up over the 64 before min.
        let mut hash = 0u64;
        for &b in &data[self.min_bytes - 64..self.min_bytes] {
            hash = (hash << 1).wrapping_add(GEAR[usize::from(b)]);
        }
        let mut i = self.min_bytes;
        while i < normal {
            hash = (hash << 1).wrapping_add(GEAR[usize::from(data[i])]);
            i += 1;
            if hash >> (64 - self.bits_small) == 0 {
                return i;
            }
        }
        while i < end {
            hash = (hash << 1).wrapping_add(GEAR[usize::from(data[i])]);
            i += 1;
            if hash >> (64 - self.bits_large) == 0 {
                return i;
            }
        }
        end
    }

    /// The lengths of the pieces `data` is cut into.
    pub fn pieces<'d>(&self, mut data: &'d [u8]) -> impl Iterator<Item = &'d [u8]> + use<'d> {
        let params = *self;
        std::iter::from_fn(move || {
            if data.is_empty() {
                return None;
            }
            let (piece, rest) = data.split_at(params.cut(data));
            data = rest;
            Some(piece)
        })
    }
}

/// One piece of the basis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdcEntry {
    pub offset: u64,
    pub len_bytes: u32,
    pub strong: u64,
}

/// The pieces of one range of the basis starting at `offset` (the target cuts ranges apart,
/// in parallel; a range's first cut is at its start).
pub fn sign_range(params: &CdcParams, seed: u64, offset: u64, data: &[u8]) -> Vec<CdcEntry> {
    let mut at = offset;
    params
        .pieces(data)
        .map(|piece| {
            let entry = CdcEntry {
                offset: at,
                len_bytes: piece.len() as u32,
                strong: strong_hash(piece, seed),
            };
            at += piece.len() as u64;
            entry
        })
        .collect()
}

/// The source's lookup by (strong hash, length).
#[derive(Debug)]
pub struct CdcIndex {
    params: CdcParams,
    seed: u64,
    pieces: HashMap<(u64, u32), u64>,
}

impl CdcIndex {
    pub fn new(params: CdcParams, seed: u64, entries: &[CdcEntry]) -> Self {
        let mut pieces = HashMap::with_capacity(entries.len());
        for entry in entries {
            pieces.entry((entry.strong, entry.len_bytes)).or_insert(entry.offset);
        }
        Self { params, seed, pieces }
    }

    /// The recipe of one chunk: each of its pieces copied if the basis has it, else literal.
    pub fn match_chunk(&self, data: &[u8]) -> Recipe<'static> {
        let mut recipe = Recipe::default();
        for piece in self.params.pieces(data) {
            let len = piece.len() as u32;
            match self.pieces.get(&(strong_hash(piece, self.seed), len)) {
                Some(&offset) => recipe.push_copy(offset, len),
                None => recipe.push_literal(piece),
            }
        }
        recipe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outside the basis")]
    struct Outside;

    fn random(len: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut out = vec![0u8; len];
        rng.fill(&mut out);
        out
    }

    #[test]
    fn cuts_respect_the_bounds_and_average_near_the_target() {
        let params = CdcParams::new(4096).unwrap();
        let data = random(4 << 20, &mut fastrand::Rng::with_seed(1));
        let lens: Vec<usize> = params.pieces(&data).map(<[u8]>::len).collect();
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        assert!(lens[..lens.len() - 1].iter().all(|&l| (1024..=16384).contains(&l)));
        let avg = data.len() / lens.len();
        assert!((3000..6000).contains(&avg), "average piece {avg}");
        assert!(CdcParams::new(3000).is_none());
    }

    #[test]
    fn an_edit_changes_only_nearby_pieces_and_recipes_rebuild() {
        let mut rng = fastrand::Rng::with_seed(2);
        let params = CdcParams::new(1024).unwrap();
        let basis = random(1 << 20, &mut rng);
        let index = CdcIndex::new(params, 9, &sign_range(&params, 9, 0, &basis));
        for seed in 0..20u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut data = basis.clone();
            let at = rng.usize(..data.len());
            data.splice(at..at, random(rng.usize(1..100), &mut rng));
            let recipe = index.match_chunk(&data);
            assert!(
                recipe.literals().len() < 16 * 1024,
                "seed {seed}: {} literal",
                recipe.literals().len()
            );
            let mut out = vec![0u8; data.len()];
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
            assert_eq!(out, data, "seed {seed}");
        }
    }
}
