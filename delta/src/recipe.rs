//! A recipe: how to rebuild one chunk of the new file from the basis and literal bytes.
//!
//! Owns the ops, their wire encoding, decoding a peer's recipe, and applying one. Applying
//! reads the basis only through the caller's closure and writes only into the caller's output
//! slice; every offset and length is checked against the basis size and the output first, so
//! a hostile source can make the target read nothing outside the basis and write nothing
//! outside the chunk. Whether the rebuilt bytes are right is the frame checksum's job (the
//! source computed it over the real chunk), not this module's.
//!
//! Wire format (little endian):
//!
//! ```text
//! | op_count u32 | literal_bytes u32 | op_count ops | literal_bytes bytes of literals |
//! op: | 1 u8 | basis_offset u64 | len u32 |   copy `len` bytes of the basis at basis_offset
//!     | 2 u8 | len u32 |                      take the next `len` literal bytes
//! ```

use std::borrow::Cow;

pub const RECIPE_HEADER_BYTES: usize = 8;
const OP_COPY: u8 = 1;
const OP_LITERAL: u8 = 2;
const OP_COPY_BYTES: usize = 1 + 8 + 4;
const OP_LITERAL_BYTES: usize = 1 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Copy { basis_offset: u64, len_bytes: u32 },
    Literal { len_bytes: u32 },
}

impl Op {
    pub fn len_bytes(&self) -> u32 {
        match *self {
            Op::Copy { len_bytes, .. } | Op::Literal { len_bytes } => len_bytes,
        }
    }
}

/// The ops of one chunk and the literal bytes they take, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recipe<'a> {
    ops: Vec<Op>,
    literals: Cow<'a, [u8]>,
}

/// What a recipe must fit: the chunk it rebuilds and the basis it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipeBounds {
    pub chunk_bytes: u32,
    pub basis_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error("recipe truncated: {len_bytes} bytes, {need_bytes} needed")]
    Truncated { len_bytes: usize, need_bytes: usize },
    #[error("recipe claims {op_count} ops in {len_bytes} bytes for a chunk of {chunk_bytes} bytes")]
    TooManyOps { op_count: u32, len_bytes: usize, chunk_bytes: u32 },
    #[error("recipe op {index} has unknown tag {tag}")]
    OpTag { index: u32, tag: u8 },
    #[error("recipe op {index} is empty")]
    EmptyOp { index: u32 },
    #[error("recipe copies {len_bytes} bytes at {basis_offset} of a {basis_bytes}-byte basis")]
    CopyOutsideBasis { basis_offset: u64, len_bytes: u32, basis_bytes: u64 },
    #[error("recipe ops make {ops_bytes} bytes for a chunk of {chunk_bytes} bytes")]
    ChunkLength { ops_bytes: u64, chunk_bytes: u64 },
    #[error(
        "recipe literal ops take {ops_bytes} bytes, it declares {declared_bytes} and carries {carried_bytes}"
    )]
    LiteralLength { ops_bytes: u64, declared_bytes: u64, carried_bytes: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("reading {len_bytes} bytes of the basis at {basis_offset}")]
    ReadBasis {
        basis_offset: u64,
        len_bytes: u32,
        #[source]
        source: E,
    },
}

impl Recipe<'static> {
    /// Appends a copy, merged with the previous op when it continues it in the basis.
    pub(crate) fn push_copy(&mut self, basis_offset: u64, len_bytes: u32) {
        if let Some(Op::Copy { basis_offset: last_offset, len_bytes: last_len }) =
            self.ops.last_mut()
            && *last_offset + u64::from(*last_len) == basis_offset
            && let Some(sum) = last_len.checked_add(len_bytes)
        {
            *last_len = sum;
            return;
        }
        self.ops.push(Op::Copy { basis_offset, len_bytes });
    }

    /// Appends literal bytes (a chunk is at most u32::MAX bytes, so each run fits a u32).
    pub(crate) fn push_literal(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len() as u32;
        self.literals.to_mut().extend_from_slice(bytes);
        if let Some(Op::Literal { len_bytes }) = self.ops.last_mut()
            && let Some(sum) = len_bytes.checked_add(len)
        {
            *len_bytes = sum;
            return;
        }
        self.ops.push(Op::Literal { len_bytes: len });
    }
}

impl<'a> Recipe<'a> {
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn literals(&self) -> &[u8] {
        &self.literals
    }

    /// Bytes the recipe rebuilds.
    pub fn chunk_bytes(&self) -> u64 {
        self.ops.iter().map(|op| u64::from(op.len_bytes())).sum()
    }

    /// Bytes the rebuilt chunk takes from the basis.
    pub fn copied_bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Copy { len_bytes, .. } => u64::from(*len_bytes),
                Op::Literal { .. } => 0,
            })
            .sum()
    }

    /// Length of [`Recipe::encode`]'s output.
    pub fn encoded_bytes(&self) -> usize {
        let ops: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Copy { .. } => OP_COPY_BYTES,
                Op::Literal { .. } => OP_LITERAL_BYTES,
            })
            .sum();
        RECIPE_HEADER_BYTES + ops + self.literals.len()
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_bytes(), 0);
        self.encode_into(&mut out[start..]);
    }

    /// Encodes the recipe at the start of `out` (at least [`Recipe::encoded_bytes`] long: a
    /// chunk's own buffer, for a recipe shorter than the chunk) and returns its length.
    pub fn encode_into(&self, out: &mut [u8]) -> usize {
        let n = self.encoded_bytes();
        assert!(out.len() >= n, "a recipe of {n} bytes does not fit {} bytes", out.len());
        let mut at = 0;
        let mut put = |b: &[u8]| {
            out[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        // Both counts are bounded by the chunk's length, a u32.
        put(&(self.ops.len() as u32).to_le_bytes());
        put(&(self.literals.len() as u32).to_le_bytes());
        for op in &self.ops {
            match *op {
                Op::Copy { basis_offset, len_bytes } => {
                    put(&[OP_COPY]);
                    put(&basis_offset.to_le_bytes());
                    put(&len_bytes.to_le_bytes());
                }
                Op::Literal { len_bytes } => {
                    put(&[OP_LITERAL]);
                    put(&len_bytes.to_le_bytes());
                }
            }
        }
        put(&self.literals);
        debug_assert_eq!(at, n);
        n
    }

    /// Decodes a peer's recipe for a chunk, checking it against `bounds` (see [`Recipe::check`]).
    /// The op list's allocation is bounded by the message's length; literals are borrowed.
    pub fn decode(bytes: &'a [u8], bounds: &RecipeBounds) -> Result<Self, RecipeError> {
        let truncated =
            |need_bytes: usize| RecipeError::Truncated { len_bytes: bytes.len(), need_bytes };
        let Some((header, mut rest)) = bytes.split_first_chunk::<RECIPE_HEADER_BYTES>() else {
            return Err(truncated(RECIPE_HEADER_BYTES));
        };
        let op_count = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let literal_bytes = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // Every op rebuilds at least one byte and takes at least OP_LITERAL_BYTES.
        if op_count > bounds.chunk_bytes || op_count as usize > rest.len() / OP_LITERAL_BYTES {
            return Err(RecipeError::TooManyOps {
                op_count,
                len_bytes: bytes.len(),
                chunk_bytes: bounds.chunk_bytes,
            });
        }
        let mut ops = Vec::with_capacity(op_count as usize);
        for index in 0..op_count {
            let need = bytes.len() - rest.len();
            let (&tag, after) = rest.split_first().ok_or(truncated(need + 1))?;
            match tag {
                OP_COPY => {
                    let (field, after) =
                        after.split_first_chunk::<12>().ok_or(truncated(need + OP_COPY_BYTES))?;
                    let (offset, len) = field.split_at(8);
                    ops.push(Op::Copy {
                        basis_offset: u64::from_le_bytes(offset.try_into().unwrap_or_default()),
                        len_bytes: u32::from_le_bytes(len.try_into().unwrap_or_default()),
                    });
                    rest = after;
                }
                OP_LITERAL => {
                    let (len, after) =
                        after.split_first_chunk::<4>().ok_or(truncated(need + OP_LITERAL_BYTES))?;
                    ops.push(Op::Literal { len_bytes: u32::from_le_bytes(*len) });
                    rest = after;
                }
                tag => return Err(RecipeError::OpTag { index, tag }),
            }
        }
        if rest.len() as u64 != u64::from(literal_bytes) {
            return Err(RecipeError::LiteralLength {
                ops_bytes: literal_len(&ops),
                declared_bytes: u64::from(literal_bytes),
                carried_bytes: rest.len() as u64,
            });
        }
        let recipe = Recipe { ops, literals: Cow::Borrowed(rest) };
        recipe.check(bounds)?;
        Ok(recipe)
    }

    /// Checks that every op is non-empty, every copy lies inside the basis, the ops rebuild
    /// exactly `chunk_bytes` and the literal ops take exactly the literals carried.
    pub fn check(&self, bounds: &RecipeBounds) -> Result<(), RecipeError> {
        let mut total: u64 = 0;
        for (index, op) in self.ops.iter().enumerate() {
            if op.len_bytes() == 0 {
                return Err(RecipeError::EmptyOp { index: index as u32 });
            }
            if let Op::Copy { basis_offset, len_bytes } = *op
                && basis_offset
                    .checked_add(u64::from(len_bytes))
                    .is_none_or(|end| end > bounds.basis_bytes)
            {
                return Err(RecipeError::CopyOutsideBasis {
                    basis_offset,
                    len_bytes,
                    basis_bytes: bounds.basis_bytes,
                });
            }
            total += u64::from(op.len_bytes());
        }
        if total != u64::from(bounds.chunk_bytes) {
            return Err(RecipeError::ChunkLength {
                ops_bytes: total,
                chunk_bytes: u64::from(bounds.chunk_bytes),
            });
        }
        let ops_bytes = literal_len(&self.ops);
        if ops_bytes != self.literals.len() as u64 {
            return Err(RecipeError::LiteralLength {
                ops_bytes,
                declared_bytes: self.literals.len() as u64,
                carried_bytes: self.literals.len() as u64,
            });
        }
        Ok(())
    }

    /// Rebuilds the chunk into `out` (its length is the chunk's), reading the basis with
    /// `read_basis(offset, buf)`, which must fill `buf` from the basis at `offset`. The recipe
    /// is checked against `out.len()` and `basis_bytes` before anything is read or written.
    /// The basis and `out` must not alias: the target writes a new file, never the basis.
    pub fn apply<E: std::error::Error + 'static>(
        &self,
        basis_bytes: u64,
        mut read_basis: impl FnMut(u64, &mut [u8]) -> Result<(), E>,
        out: &mut [u8],
    ) -> Result<(), ApplyError<E>> {
        let chunk_bytes = u32::try_from(out.len()).map_err(|_| RecipeError::ChunkLength {
            ops_bytes: self.chunk_bytes(),
            chunk_bytes: out.len() as u64,
        })?;
        self.check(&RecipeBounds { chunk_bytes, basis_bytes })?;
        let mut at = 0usize;
        let mut literal_at = 0usize;
        for op in &self.ops {
            let len = op.len_bytes() as usize;
            let target = &mut out[at..at + len];
            match *op {
                Op::Copy { basis_offset, len_bytes } => {
                    read_basis(basis_offset, target).map_err(|source| ApplyError::ReadBasis {
                        basis_offset,
                        len_bytes,
                        source,
                    })?;
                }
                Op::Literal { .. } => {
                    target.copy_from_slice(&self.literals[literal_at..literal_at + len]);
                    literal_at += len;
                }
            }
            at += len;
        }
        Ok(())
    }
}

fn literal_len(ops: &[Op]) -> u64 {
    ops.iter()
        .map(|op| match op {
            Op::Literal { len_bytes } => u64::from(*len_bytes),
            Op::Copy { .. } => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("unreachable basis")]
    struct NoBasis;

    fn read_from(basis: &[u8]) -> impl FnMut(u64, &mut [u8]) -> Result<(), NoBasis> + '_ {
        |offset, buf| {
            let start = usize::try_from(offset).map_err(|_| NoBasis)?;
            buf.copy_from_slice(basis.get(start..start + buf.len()).ok_or(NoBasis)?);
            Ok(())
        }
    }

    fn sample() -> Recipe<'static> {
        let mut recipe = Recipe::default();
        recipe.push_literal(b"ab");
        recipe.push_literal(b"c");
        recipe.push_copy(10, 4);
        recipe.push_copy(14, 2);
        recipe.push_copy(0, 3);
        recipe.push_literal(b"z");
        recipe
    }

    #[test]
    fn pushes_merge_and_apply_rebuilds() {
        let recipe = sample();
        assert_eq!(
            recipe.ops(),
            &[
                Op::Literal { len_bytes: 3 },
                Op::Copy { basis_offset: 10, len_bytes: 6 },
                Op::Copy { basis_offset: 0, len_bytes: 3 },
                Op::Literal { len_bytes: 1 },
            ]
        );
        let basis: Vec<u8> = (0u8..20).collect();
        let mut out = vec![0u8; 13];
        recipe.apply(basis.len() as u64, read_from(&basis), &mut out).unwrap();
        assert_eq!(out, [b'a', b'b', b'c', 10, 11, 12, 13, 14, 15, 0, 1, 2, b'z']);
    }

    #[test]
    fn encoding_round_trips() {
        let recipe = sample();
        let mut wire = Vec::new();
        recipe.encode(&mut wire);
        assert_eq!(wire.len(), recipe.encoded_bytes());
        let bounds = RecipeBounds { chunk_bytes: 13, basis_bytes: 20 };
        assert_eq!(Recipe::decode(&wire, &bounds).unwrap(), recipe);
    }

    #[test]
    fn hostile_recipes_are_refused() {
        let mut wire = Vec::new();
        sample().encode(&mut wire);
        let bounds = RecipeBounds { chunk_bytes: 13, basis_bytes: 20 };
        // Every truncation is refused.
        for len in 0..wire.len() {
            assert!(Recipe::decode(&wire[..len], &bounds).is_err(), "truncated to {len}");
        }
        // A copy past the basis's end (the basis is one byte shorter).
        let short = RecipeBounds { basis_bytes: 15, ..bounds };
        assert!(matches!(Recipe::decode(&wire, &short), Err(RecipeError::CopyOutsideBasis { .. })));
        // A copy whose end overflows u64.
        let mut overflow = Recipe::default();
        overflow.push_copy(u64::MAX - 1, 13);
        let mut bytes = Vec::new();
        overflow.encode(&mut bytes);
        let any_basis = RecipeBounds { chunk_bytes: 13, basis_bytes: u64::MAX };
        assert!(matches!(
            Recipe::decode(&bytes, &any_basis),
            Err(RecipeError::CopyOutsideBasis { .. })
        ));
        // Ops that make a longer or shorter chunk than the frame's.
        let longer = RecipeBounds { chunk_bytes: 12, ..bounds };
        assert!(matches!(Recipe::decode(&wire, &longer), Err(RecipeError::ChunkLength { .. })));
        // Literal ops that take more bytes than carried: declare one literal byte fewer.
        let mut overlong = wire.clone();
        overlong[4] = 3;
        overlong.pop();
        assert!(matches!(
            Recipe::decode(&overlong, &bounds),
            Err(RecipeError::LiteralLength { .. })
        ));
        // Trailing bytes past the literals.
        let mut trailing = wire.clone();
        trailing.push(0);
        assert!(matches!(
            Recipe::decode(&trailing, &bounds),
            Err(RecipeError::LiteralLength { .. })
        ));
        // An absurd op count, refused before the op list is allocated.
        let mut absurd = wire.clone();
        absurd[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Recipe::decode(&absurd, &bounds), Err(RecipeError::TooManyOps { .. })));
        // An unknown tag, and an empty op.
        let mut tag = wire.clone();
        tag[8] = 9;
        assert!(matches!(
            Recipe::decode(&tag, &bounds),
            Err(RecipeError::OpTag { index: 0, tag: 9 })
        ));
        let mut empty = Vec::new();
        empty.extend_from_slice(&2u32.to_le_bytes());
        empty.extend_from_slice(&0u32.to_le_bytes());
        empty.extend_from_slice(&[OP_LITERAL, 0, 0, 0, 0, OP_COPY]);
        empty.extend_from_slice(&0u64.to_le_bytes());
        empty.extend_from_slice(&13u32.to_le_bytes());
        assert!(matches!(Recipe::decode(&empty, &bounds), Err(RecipeError::EmptyOp { index: 0 })));
    }

    /// Random corruptions of a valid recipe: decoding never panics, and whatever it accepts
    /// applies inside the basis and the chunk.
    #[test]
    fn corrupted_recipes_never_escape_their_bounds() {
        let mut wire = Vec::new();
        sample().encode(&mut wire);
        let basis = [7u8; 20];
        let bounds = RecipeBounds { chunk_bytes: 13, basis_bytes: 20 };
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let mut bytes = wire.clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            if rng.bool() {
                bytes.truncate(rng.usize(..=bytes.len()));
            }
            if let Ok(recipe) = Recipe::decode(&bytes, &bounds) {
                let mut out = [0u8; 13];
                recipe.apply(20, read_from(&basis), &mut out).unwrap();
            }
        }
    }

    #[test]
    fn apply_checks_before_it_reads_or_writes() {
        let recipe = sample();
        let basis = [7u8; 20];
        let mut reads = 0;
        let mut out = vec![0u8; 14];
        let result = recipe.apply(
            20,
            |_, _| -> Result<(), NoBasis> {
                reads += 1;
                Ok(())
            },
            &mut out,
        );
        assert!(matches!(result, Err(ApplyError::Recipe(RecipeError::ChunkLength { .. }))));
        let mut out = vec![0u8; 13];
        let result = recipe.apply(15, read_from(&basis), &mut out);
        assert!(matches!(result, Err(ApplyError::Recipe(RecipeError::CopyOutsideBasis { .. }))));
        assert_eq!(reads, 0);
        assert_eq!(out, [0u8; 13], "nothing written");
        let failing = recipe.apply(20, |_, _| Err(NoBasis), &mut out);
        assert!(matches!(
            failing,
            Err(ApplyError::ReadBasis { basis_offset: 10, len_bytes: 6, .. })
        ));
    }
}
