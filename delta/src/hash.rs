//! The two hashes of a block: the weak rolling sum that finds candidates at every byte offset,
//! and the strong hash that confirms one. Owns nothing else.
//!
//! The weak sum is a polynomial (Rabin–Karp) hash mod 2^64 over bytes mapped through a fixed
//! table of random 64-bit words; its top 32 bits are the weak sum. Rolling it by one byte is
//! two multiplies and two table loads, and unlike rsync's Adler-style sum its bits are well
//! mixed, so the 32-bit value is close to uniform even over small blocks and skewed data.
//!
//! The strong hash is xxh3-64 seeded per signature (the seed travels in the signature), so
//! colliding blocks cannot be prepared in advance. It is not cryptographic and need not be:
//! every rebuilt chunk is checked against the frame checksum the source computed over the real
//! bytes, so a false match costs a resend, never a wrong file (docs/delta.md has the arithmetic).

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The multiplier of the polynomial; odd, so multiplying is a bijection mod 2^64.
const POLY: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64: a fixed, seeded sequence of well-mixed words, computed at compile time.
pub(crate) const fn random_table(seed: u64) -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state = seed;
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

static WEAK_TABLE: [u64; 256] = random_table(0x626C_6974_7765_616B);

/// The state of the weak sum over a window of fixed length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rolling {
    state: u64,
    /// POLY^window: the weight the byte leaving the window had, times POLY.
    out_weight: u64,
}

impl Rolling {
    /// The sum over `window`, ready to roll over windows of the same length.
    pub(crate) fn new(window: &[u8]) -> Self {
        // A window is at most BLOCK_BYTES_MAX long (u32); wrapping_pow wants a u32.
        let len = u32::try_from(window.len()).unwrap_or(u32::MAX);
        Self { state: state_of(window), out_weight: POLY.wrapping_pow(len) }
    }

    /// Slides the window one byte: `out` leaves at the front, `inn` enters at the back.
    #[inline]
    pub(crate) fn roll(&mut self, out: u8, inn: u8) {
        self.state = self
            .state
            .wrapping_mul(POLY)
            .wrapping_sub(WEAK_TABLE[usize::from(out)].wrapping_mul(self.out_weight))
            .wrapping_add(WEAK_TABLE[usize::from(inn)]);
    }

    #[inline]
    pub(crate) fn weak(&self) -> u32 {
        (self.state >> 32) as u32
    }
}

/// The polynomial over `window`: `sum of T[w[i]] * POLY^(len-1-i)`. Four interleaved lanes
/// (each stepping by POLY^4) break the multiply chain that bounds the serial form at about one
/// byte per multiply latency; the lanes are joined with their weights at the end.
fn state_of(window: &[u8]) -> u64 {
    const POLY2: u64 = POLY.wrapping_mul(POLY);
    const POLY3: u64 = POLY2.wrapping_mul(POLY);
    const POLY4: u64 = POLY2.wrapping_mul(POLY2);
    let mut quads = window.chunks_exact(4);
    let mut lanes = [0u64; 4];
    for quad in &mut quads {
        for (lane, &b) in lanes.iter_mut().zip(quad) {
            *lane = lane.wrapping_mul(POLY4).wrapping_add(WEAK_TABLE[usize::from(b)]);
        }
    }
    let joined = lanes[0]
        .wrapping_mul(POLY3)
        .wrapping_add(lanes[1].wrapping_mul(POLY2))
        .wrapping_add(lanes[2].wrapping_mul(POLY))
        .wrapping_add(lanes[3]);
    serial(joined, quads.remainder())
}

fn serial(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| h.wrapping_mul(POLY).wrapping_add(WEAK_TABLE[usize::from(b)]))
}

/// The weak sum of one block.
pub fn weak_sum(block: &[u8]) -> u32 {
    (state_of(block) >> 32) as u32
}

/// The strong hash of one block under the signature's seed.
pub fn strong_hash(block: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(block, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_equals_fresh_sum_at_every_offset() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut data = vec![0u8; 4096];
        rng.fill(&mut data);
        for window in [1usize, 2, 63, 64, 1000] {
            let mut rolling = Rolling::new(&data[..window]);
            for start in 0..data.len() - window {
                assert_eq!(
                    rolling.weak(),
                    weak_sum(&data[start..start + window]),
                    "{window} {start}"
                );
                rolling.roll(data[start], data[start + window]);
            }
        }
    }

    #[test]
    fn four_lanes_equal_the_serial_polynomial() {
        let mut data = vec![0u8; 300];
        fastrand::Rng::with_seed(8).fill(&mut data);
        for len in 0..data.len() {
            assert_eq!(state_of(&data[..len]), serial(0, &data[..len]), "{len}");
        }
    }

    #[test]
    fn weak_sum_tells_apart_one_changed_byte() {
        let block = vec![0u8; 4096];
        let mut other = block.clone();
        other[2000] = 1;
        assert_ne!(weak_sum(&block), weak_sum(&other));
        assert_ne!(strong_hash(&block, 1), strong_hash(&other, 1));
        assert_ne!(strong_hash(&block, 1), strong_hash(&block, 2), "the seed changes the hash");
    }
}
