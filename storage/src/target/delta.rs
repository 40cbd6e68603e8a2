//! Delta transfer, the target's side: the old copy of a needed file (its *basis*) opened and
//! signed — block by block, in parallel ranges — for the source, and each chunk that comes as
//! a recipe rebuilt from the basis and checked against the source's checksum of the real
//! chunk before it is written. What a recipe may say is checked by `blitx_delta`
//! (`Recipe::decode`, bounded by the chunk and the basis); what a delta file must satisfy to be
//! committed (every chunk checksummed, the finished file read back) by `Receiving`.

#[allow(clippy::wildcard_imports)]
use super::*;

use std::hash::BuildHasher;
use std::os::unix::fs::FileExt;

use blitx_core::session::SIGNATURE_BYTES_HELD_MAX;
use blitx_delta::{Recipe, RecipeBounds, SignatureBuilder, SignatureParams, block_bytes_for};

/// Blocks per signature message (64 Ki × 12 bytes: within `SIGNATURE_MESSAGE_BYTES_MAX`).
const BLOCKS_PER_MESSAGE: usize = 64 << 10;
/// Threads that sign one basis (by ranges).
const SIGN_THREADS_MAX: usize = 4;
/// Bytes read per `pread` while signing.
const SIGN_READ_BYTES: usize = 1 << 20;

/// The old copy of a file being sent as a delta against it. It holds no descriptor while
/// its file waits for data (a listing part's files, up to 4096, all wait at once): each
/// recipe opens it again, and only the very file that was signed is read.
pub(super) struct Basis {
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    dev: u64,
    ino: u64,
    pub(super) size_bytes: u64,
    /// Its change time when it was signed: a write since changes it.
    ctime: (i64, i64),
}

impl Basis {
    /// The basis, opened again beneath its directory; an error if its name now holds
    /// another file.
    fn open(&self) -> io::Result<File> {
        let fd = fsys::open_regular(self.dir.as_fd(), &self.name)?;
        let st = rustix::fs::fstat(&fd)?;
        if (st.st_dev, st.st_ino) != (self.dev, self.ino) {
            return Err(io::Error::other("the old copy was replaced since it was signed"));
        }
        Ok(File::from(fd))
    }
}

/// Opens `name` in `dir` as the basis of a delta, if it is a regular file with a block to
/// share; `None` otherwise (the file is sent whole). The descriptor is for signing.
pub(super) fn open_basis(dir: &Arc<OwnedFd>, name: &[u8]) -> Option<(Basis, File)> {
    let fd = fsys::open_regular(dir.as_fd(), name).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    let size_bytes = st.st_size as u64;
    let basis = Basis {
        dir: Arc::clone(dir),
        name: name.to_vec(),
        dev: st.st_dev,
        ino: st.st_ino,
        size_bytes,
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
    };
    (size_bytes >= u64::from(blitx_delta::BLOCK_BYTES_MIN)).then(|| (basis, File::from(fd)))
}

/// Signs `basis` (its ranges in parallel) into signature messages, if the answer has room for
/// them (`held`: signature bytes this answer carries already).
pub(super) fn sign(basis: &Basis, file: &File, held: u64) -> io::Result<Option<Vec<Vec<u8>>>> {
    let block = block_bytes_for(basis.size_bytes);
    // Picked afresh per signature: colliding blocks cannot be prepared in advance.
    let seed = std::collections::hash_map::RandomState::new().hash_one(basis.size_bytes);
    let params = SignatureParams::new(block, basis.size_bytes, seed).map_err(io::Error::other)?;
    let bytes = params.blocks() * blitx_delta::SIGNATURE_ENTRY_BYTES as u64;
    // What the source can hold: its index takes about five times the wire bytes (64 bytes a
    // block against 12). Past that, the file goes whole rather than being signed for nothing.
    if (held + bytes) * 6 > SIGNATURE_BYTES_HELD_MAX {
        return Ok(None);
    }
    let threads = (basis.size_bytes / (64 << 20)).clamp(1, SIGN_THREADS_MAX as u64);
    let per = params.blocks().div_ceil(threads) * u64::from(block);
    let ranges: Vec<std::ops::Range<u64>> = (0..threads)
        .map(|i| (i * per).min(basis.size_bytes)..((i + 1) * per).min(basis.size_bytes))
        .filter(|r| !r.is_empty())
        .collect();
    let sign_range = |range: std::ops::Range<u64>| -> io::Result<Vec<Vec<u8>>> {
        let mut b = SignatureBuilder::new(params, range.clone()).map_err(io::Error::other)?;
        let mut buf = vec![0u8; SIGN_READ_BYTES];
        let mut at = range.start;
        while at < range.end {
            let n = (range.end - at).min(SIGN_READ_BYTES as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            b.update(&buf[..n]).map_err(io::Error::other)?;
            at += n as u64;
        }
        Ok(b.finish().map_err(io::Error::other)?.messages(BLOCKS_PER_MESSAGE))
    };
    let parts: Vec<io::Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            ranges.iter().skip(1).map(|r| s.spawn(|| sign_range(r.clone()))).collect();
        let mut parts = vec![sign_range(ranges[0].clone())];
        // A panic there is a bug: carried on here.
        parts.extend(
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
        );
        parts
    });
    let mut messages = Vec::new();
    for p in parts {
        messages.extend(p?);
    }
    Ok(Some(messages))
}

/// What rebuilding one chunk from its recipe came to.
pub(super) enum Rebuilt {
    /// The chunk's bytes are in the caller's buffer, to be written at its offset.
    Bytes,
    /// The rebuilt chunk's checksum differs from the source's.
    Mismatch,
}

/// Rebuilds the chunk `h` describes from its recipe (`payload`) and the basis. A recipe that
/// does not decode within the chunk and the basis is a protocol violation; a basis that cannot
/// be read is this file's failure.
pub(super) fn rebuild(
    p: &Pending,
    h: &frame::FrameHeader,
    payload: &[u8],
    chunk_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<Result<Rebuilt, io::Error>, Violation> {
    let basis = p.basis.as_ref().ok_or_else(|| Violation::NotDelta(p.path.clone()))?;
    // The chunk's own length (Receiving checked that the offset is a chunk of the file).
    let chunk_len = p.size_bytes.saturating_sub(h.offset_bytes).min(u64::from(chunk_bytes)) as u32;
    let bounds = RecipeBounds { chunk_bytes: chunk_len, basis_bytes: basis.size_bytes };
    let bad = |why: String| Violation::BadRecipe {
        path: p.path.clone(),
        offset_bytes: h.offset_bytes,
        why,
    };
    let recipe = Recipe::decode(payload, &bounds).map_err(|e| bad(e.to_string()))?;
    let file = match basis.open() {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    // The writer thread's buffer, reused chunk after chunk (no allocation per chunk).
    out.resize(chunk_len as usize, 0);
    let read = |at: u64, buf: &mut [u8]| file.read_exact_at(buf, at);
    match recipe.apply(basis.size_bytes, read, out) {
        Ok(()) => {}
        Err(blitx_delta::ApplyError::ReadBasis { source, .. }) => return Ok(Err(source)),
        Err(e) => return Err(bad(e.to_string())),
    }
    if frame::checksum(out) != h.checksum {
        // Say so if the old copy was written to since it was signed (not the network's fault).
        if rustix::fs::fstat(&file).is_ok_and(|st| {
            st.st_size as u64 != basis.size_bytes
                || (st.st_ctime, st.st_ctime_nsec as i64) != basis.ctime
        }) {
            return Ok(Err(io::Error::other(
                "the old copy changed after it was signed (the file is sent again next time)",
            )));
        }
        return Ok(Ok(Rebuilt::Mismatch));
    }
    Ok(Ok(Rebuilt::Bytes))
}
