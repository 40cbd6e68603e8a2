//! Resuming interrupted files: what a partial file's journal records, when a journal may be
//! used, and the checks the source runs on an [`Offer`].
//!
//! A chunked file's temporary file is kept when its transfer is interrupted (cancelled, the
//! peer gone, the session failed) and carries a [`Journal`]: which chunks were written, and
//! the source file they came from (size, modification time, chunk size). SIGKILL leaves the
//! journal as last saved, which is at most a few chunks behind the data. The next transfer of
//! the same file finds it, checks that the journal [`fits`](Journal::fits) the file now
//! listed, hashes those chunks as they are on disk now and offers them; the source reads the
//! same chunks and confirms each one whose hash it shares. So nothing is trusted that both
//! sides did not hash: a chunk lost in a crash, a source edited behind an unchanged mtime, or
//! a partial file from somewhere else costs that chunk being sent again, never a wrong byte.

use blitx_core::RelPath;
use blitx_core::manifest::Timestamp;
use blitx_core::session::{OFFER_CHUNKS_MAX, Offer};

use crate::error::Violation;

/// A journal's encoded size at most: it fits one extended attribute on any file system that
/// has them (ext4 keeps one block, 4 KiB, for all of a file's attributes).
pub const JOURNAL_BYTES_MAX: usize = 3072;
/// A journal older than this is discarded with its partial file.
pub const PARTIAL_AGE_MAX_SECS: u64 = 7 * 24 * 3600;
/// While a file is written, its journal is saved after every this many bytes of new chunks
/// (and when the transfer is interrupted): SIGKILL costs at most this much again.
pub const JOURNAL_EVERY_BYTES: u64 = 32 << 20;

const MAGIC: &[u8; 4] = b"BLP1";
const FIXED_BYTES: usize = 4 + 4 + 8 + 8 + 4 + 8 + 2 + 4;
const RUN_BYTES: usize = 16;

/// What a partial file's journal records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub chunk_bytes: u32,
    /// The source file's size and modification time, as listed.
    pub size_bytes: u64,
    pub mtime: Timestamp,
    /// When the journal was saved (seconds since the epoch).
    pub saved_unix_secs: u64,
    /// The name the file gets when it is complete.
    pub name: Vec<u8>,
    /// Written chunks, (first, count), ascending and disjoint.
    pub runs: Vec<(u64, u64)>,
}

/// Why a journal does not fit the file listed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("it belongs to another name")]
    Name,
    #[error("the source file changed since (size or modification time)")]
    Source,
    #[error("it was written with another chunk size")]
    ChunkSize,
    #[error("it is older than the limit")]
    Old,
    #[error("it records no chunk")]
    Empty,
}

impl Journal {
    /// Runs at most, for a name of `name_bytes`.
    pub fn runs_max(name_bytes: usize) -> usize {
        JOURNAL_BYTES_MAX.saturating_sub(FIXED_BYTES + name_bytes) / RUN_BYTES
    }

    /// Chunks the journal records.
    pub fn chunks(&self) -> u64 {
        self.runs.iter().map(|&(_, n)| n).sum()
    }

    /// The encoded journal. Runs past [`Journal::runs_max`] are left out (a true subset of
    /// what was written: those chunks are sent again).
    pub fn encode(&self) -> Vec<u8> {
        let name = &self.name[..self.name.len().min(blitx_core::path::NAME_BYTES_MAX)];
        let runs = &self.runs[..self.runs.len().min(Self::runs_max(name.len()))];
        let mut b = Vec::with_capacity(FIXED_BYTES + name.len() + runs.len() * RUN_BYTES);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        b.extend_from_slice(&self.size_bytes.to_le_bytes());
        b.extend_from_slice(&self.mtime.sec.to_le_bytes());
        b.extend_from_slice(&self.mtime.nsec.to_le_bytes());
        b.extend_from_slice(&self.saved_unix_secs.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for &(first, count) in runs {
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
        }
        b
    }

    /// Decodes a journal; `None` for anything malformed (a partial file whose journal is not
    /// understood is removed, never used): a wrong magic or length, a name that is not one
    /// path component, runs out of order, overlapping, empty or past the file's end.
    pub fn decode(b: &[u8]) -> Option<Journal> {
        if b.len() > JOURNAL_BYTES_MAX || b.len() < FIXED_BYTES || &b[..4] != MAGIC {
            return None;
        }
        let mut at = 4;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = b.get(at..at + n)?;
            at += n;
            Some(s)
        };
        let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap_or_default());
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
        let chunk_bytes = u32_(take(4)?);
        let size_bytes = u64_(take(8)?);
        let sec = u64_(take(8)?) as i64;
        let nsec = u32_(take(4)?);
        let saved_unix_secs = u64_(take(8)?);
        let name_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let name = take(name_len)?.to_vec();
        if name.is_empty()
            || name.len() > blitx_core::path::NAME_BYTES_MAX
            || name.contains(&b'/')
            || name.contains(&0)
            || name == b"."
            || name == b".."
        {
            return None;
        }
        let count = u32_(take(4)?) as usize;
        if count > Self::runs_max(name.len()) || chunk_bytes == 0 {
            return None;
        }
        let total = size_bytes.div_ceil(u64::from(chunk_bytes)).max(1);
        let mut runs = Vec::with_capacity(count);
        let mut next_free = 0u64;
        for _ in 0..count {
            let first = u64_(take(8)?);
            let n = u64_(take(8)?);
            let end = first.checked_add(n)?;
            if n == 0 || first < next_free || end > total {
                return None;
            }
            next_free = end;
            runs.push((first, n));
        }
        if at != b.len() {
            return None;
        }
        Some(Journal {
            chunk_bytes,
            size_bytes,
            mtime: Timestamp { sec, nsec },
            saved_unix_secs,
            name,
            runs,
        })
    }

    /// Whether this journal may be used for `name`, a file of `size_bytes` modified at `mtime`
    /// sent in chunks of `chunk_bytes`, at `now_unix_secs`.
    pub fn fits(
        &self,
        name: &[u8],
        size_bytes: u64,
        mtime: Timestamp,
        chunk_bytes: u32,
        now_unix_secs: u64,
    ) -> Result<(), Stale> {
        if self.name != name {
            return Err(Stale::Name);
        }
        if self.size_bytes != size_bytes || self.mtime != mtime {
            return Err(Stale::Source);
        }
        if self.chunk_bytes != chunk_bytes {
            return Err(Stale::ChunkSize);
        }
        // A clock set back makes no journal older.
        if now_unix_secs.saturating_sub(self.saved_unix_secs) > PARTIAL_AGE_MAX_SECS {
            return Err(Stale::Old);
        }
        if self.runs.is_empty() {
            return Err(Stale::Empty);
        }
        Ok(())
    }
}

/// What the source checks of an offer from the target (which may be hostile) before it reads
/// a byte for it: it names a chunked, dense file of that answer (checked by the caller), at
/// most [`OFFER_CHUNKS_MAX`] chunks, each inside the file, strictly ascending.
pub fn check_offer(
    offer: &Offer,
    path: &RelPath,
    size_bytes: u64,
    chunk_bytes: u32,
    small: bool,
    sparse: bool,
) -> Result<(), Violation> {
    let bad = |why| Err(Violation::BadOffer { path: path.clone(), why });
    if small {
        return bad("it travels in a bundle, whole");
    }
    if sparse {
        return bad("it is sparse");
    }
    if offer.chunks.is_empty() {
        return bad("it offers no chunk");
    }
    if offer.chunks.len() > OFFER_CHUNKS_MAX {
        return bad("it offers more chunks than the limit");
    }
    let total = size_bytes.div_ceil(u64::from(chunk_bytes)).max(1);
    let mut next = 0u64;
    for &(i, _) in &offer.chunks {
        if i < next || i >= total {
            return bad("its chunks are out of order, repeated or past the end");
        }
        next = i + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> Journal {
        Journal {
            chunk_bytes: 4096,
            size_bytes: 10 * 4096 + 1,
            mtime: Timestamp { sec: 1_700_000_000, nsec: 5 },
            saved_unix_secs: 1_800_000_000,
            name: b"big.bin".to_vec(),
            runs: vec![(0, 4), (6, 2), (10, 1)],
        }
    }

    #[test]
    fn a_journal_round_trips_and_fits_its_file() {
        let j = journal();
        let d = Journal::decode(&j.encode()).unwrap();
        assert_eq!(d, j);
        assert_eq!(d.chunks(), 7);
        let now = j.saved_unix_secs + 60;
        assert_eq!(j.fits(b"big.bin", j.size_bytes, j.mtime, 4096, now), Ok(()));
        assert_eq!(j.fits(b"other", j.size_bytes, j.mtime, 4096, now), Err(Stale::Name));
        assert_eq!(j.fits(b"big.bin", 5, j.mtime, 4096, now), Err(Stale::Source));
        let later = Timestamp { sec: j.mtime.sec, nsec: 6 };
        assert_eq!(j.fits(b"big.bin", j.size_bytes, later, 4096, now), Err(Stale::Source));
        assert_eq!(j.fits(b"big.bin", j.size_bytes, j.mtime, 8192, now), Err(Stale::ChunkSize));
        let old = j.saved_unix_secs + PARTIAL_AGE_MAX_SECS + 1;
        assert_eq!(j.fits(b"big.bin", j.size_bytes, j.mtime, 4096, old), Err(Stale::Old));
        // A clock set back is not "old".
        assert_eq!(j.fits(b"big.bin", j.size_bytes, j.mtime, 4096, 0), Ok(()));
    }

    #[test]
    fn malformed_journals_are_refused() {
        let good = journal().encode();
        assert!(Journal::decode(&good[..good.len() - 1]).is_none(), "cut short");
        let mut long = good.clone();
        long.push(0);
        assert!(Journal::decode(&long).is_none(), "trailing bytes");
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(Journal::decode(&magic).is_none());
        for runs in [
            vec![(0, 4), (2, 2)], // overlapping
            vec![(6, 2), (0, 4)], // out of order
            vec![(0, 0)],         // empty
            vec![(10, 2)],        // past the end (11 chunks)
            vec![(u64::MAX, 2)],  // overflowing
        ] {
            let j = Journal { runs: runs.clone(), ..journal() };
            assert!(Journal::decode(&j.encode()).is_none(), "{runs:?}");
        }
        for name in [&b""[..], b"a/b", b"..", b"a\0b"] {
            let j = Journal { name: name.to_vec(), ..journal() };
            assert!(Journal::decode(&j.encode()).is_none(), "{name:?}");
        }
        let j = Journal { chunk_bytes: 0, ..journal() };
        assert!(Journal::decode(&j.encode()).is_none(), "no chunk size");
    }

    #[test]
    fn a_journal_with_too_many_runs_keeps_the_first_ones() {
        let runs: Vec<(u64, u64)> = (0..1000).map(|i| (i * 2, 1)).collect();
        let j = Journal { size_bytes: 4096 * 2000, runs, ..journal() };
        let bytes = j.encode();
        assert!(bytes.len() <= JOURNAL_BYTES_MAX);
        let d = Journal::decode(&bytes).unwrap();
        assert_eq!(d.runs.len(), Journal::runs_max(j.name.len()));
        assert_eq!(d.runs[..], j.runs[..d.runs.len()]);
    }

    #[test]
    fn offers_are_checked_against_the_file() {
        let p = RelPath::parse(b"f").unwrap();
        let offer = |chunks: Vec<(u64, u64)>| Offer { id: 1, chunks };
        let size = 3 * 4096;
        assert!(check_offer(&offer(vec![(0, 1), (2, 9)]), &p, size, 4096, false, false).is_ok());
        for chunks in [vec![], vec![(1, 0), (1, 0)], vec![(2, 0), (1, 0)], vec![(3, 0)]] {
            let r = check_offer(&offer(chunks.clone()), &p, size, 4096, false, false);
            assert!(matches!(r, Err(Violation::BadOffer { .. })), "{chunks:?}");
        }
        assert!(check_offer(&offer(vec![(0, 1)]), &p, size, 4096, true, false).is_err());
        assert!(check_offer(&offer(vec![(0, 1)]), &p, size, 4096, false, true).is_err());
        let many = offer((0..=OFFER_CHUNKS_MAX as u64).map(|i| (i, 0)).collect());
        assert!(check_offer(&many, &p, u64::MAX, 4096, false, false).is_err());
    }
}
