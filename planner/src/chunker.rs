//! Turning needed files into work units, as they arrive (a streaming plan).
//!
//! Small files are packed into bundles (one frame carries many files, so a small file costs no
//! round trip and no frame of its own); large files are cut into chunks of `chunk_bytes`. The
//! chunker holds at most one partially filled bundle and one large file in progress, so its
//! memory is bounded by the queue of needs the caller pushes.

use std::collections::VecDeque;

use blitx_core::frame::{BUNDLE_FILES_MAX, bundle_index_bytes};
use blitx_core::manifest::FileId;
use blitx_core::session::SessionParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeededFile {
    pub id: FileId,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// Several small files whose index and bytes fit one frame.
    Bundle(Vec<NeededFile>),
    /// `len_bytes` of a large file starting at `offset_bytes` (always a chunk boundary).
    Chunk { file: NeededFile, offset_bytes: u64, len_bytes: u32 },
}

#[derive(Debug)]
pub struct Chunker {
    chunk_bytes: u64,
    small_bytes_max: u64,
    bundle_bytes: u64,
    queue: VecDeque<NeededFile>,
    bundle: Vec<NeededFile>,
    bundle_data_bytes: u64,
    large: Option<(NeededFile, u64)>,
}

impl Chunker {
    /// `params` must have passed [`SessionParams::validate`].
    pub fn new(params: &SessionParams) -> Self {
        Chunker {
            chunk_bytes: u64::from(params.chunk_bytes),
            small_bytes_max: u64::from(params.small_file_bytes_max),
            bundle_bytes: u64::from(params.bundle_bytes),
            queue: VecDeque::new(),
            bundle: Vec::new(),
            bundle_data_bytes: 0,
            large: None,
        }
    }

    pub fn push(&mut self, file: NeededFile) {
        self.queue.push_back(file);
    }

    /// Files queued but not yet turned into units.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued, bundled or in progress.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.bundle.is_empty() && self.large.is_none()
    }

    /// The next unit. With `flush` unset, a partly filled bundle is held back in the hope that
    /// more small files arrive; with `flush` set (no more input for now) it is emitted.
    pub fn next(&mut self, flush: bool) -> Option<Unit> {
        if let Some(unit) = self.next_chunk() {
            return Some(unit);
        }
        while let Some(file) = self.queue.pop_front() {
            if file.size_bytes > self.small_bytes_max {
                // A large file starts right away; the partly filled bundle keeps collecting the
                // small files that follow.
                self.large = Some((file, 0));
                if let Some(unit) = self.next_chunk() {
                    return Some(unit);
                }
                continue;
            }
            let index_after = bundle_index_bytes(self.bundle.len() + 1) as u64;
            let fits = self.bundle.len() < BUNDLE_FILES_MAX
                && index_after + self.bundle_data_bytes + file.size_bytes <= self.chunk_bytes;
            if !fits {
                self.queue.push_front(file);
                return self.take_bundle();
            }
            self.bundle.push(file);
            self.bundle_data_bytes += file.size_bytes;
            if self.bundle_data_bytes >= self.bundle_bytes || self.bundle.len() == BUNDLE_FILES_MAX
            {
                return self.take_bundle();
            }
        }
        if flush { self.take_bundle() } else { None }
    }

    /// Takes the chunks of the large file in progress, from its next offset up to `to_bytes`
    /// (a chunk boundary or the file's end), out of the plan: a reader found them to be one
    /// hole of a sparse file and covers them with one frame. Returns the byte range taken, or
    /// `None` when `id` is no longer in progress or nothing before `to_bytes` is left.
    pub fn skip_large(&mut self, id: FileId, to_bytes: u64) -> Option<(u64, u64)> {
        let (file, next) = self.large.as_mut()?;
        if file.id != id || *next >= to_bytes.min(file.size_bytes) {
            return None;
        }
        let from = *next;
        let to = to_bytes.min(file.size_bytes);
        *next = to;
        if to >= file.size_bytes {
            self.large = None;
        }
        Some((from, to))
    }

    fn next_chunk(&mut self) -> Option<Unit> {
        let (file, offset) = self.large.as_mut()?;
        let (file, offset_bytes) = (*file, *offset);
        let len = (file.size_bytes - offset_bytes).min(self.chunk_bytes);
        *offset += len;
        if *offset >= file.size_bytes {
            self.large = None;
        }
        // chunk_bytes is at most CHUNK_BYTES_MAX (u32), so `len` fits.
        let len_bytes = u32::try_from(len).unwrap_or(u32::MAX);
        Some(Unit::Chunk { file, offset_bytes, len_bytes })
    }

    fn take_bundle(&mut self) -> Option<Unit> {
        if self.bundle.is_empty() {
            return None;
        }
        self.bundle_data_bytes = 0;
        Some(Unit::Bundle(std::mem::take(&mut self.bundle)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn params(chunk: u32, small: u32, bundle: u32) -> SessionParams {
        let p = SessionParams {
            chunk_bytes: chunk,
            small_file_bytes_max: small,
            bundle_bytes: bundle,
            ..SessionParams::default()
        };
        p.validate().unwrap();
        p
    }

    fn drain(c: &mut Chunker) -> Vec<Unit> {
        let mut out = Vec::new();
        while let Some(u) = c.next(true) {
            out.push(u);
        }
        out
    }

    #[test]
    fn large_file_is_chunked() {
        let mut c = Chunker::new(&params(8192, 4096, 8192));
        c.push(NeededFile { id: 1, size_bytes: 20000 });
        let units = drain(&mut c);
        assert_eq!(units.len(), 3);
        assert_eq!(
            units[2],
            Unit::Chunk {
                file: NeededFile { id: 1, size_bytes: 20000 },
                offset_bytes: 16384,
                len_bytes: 3616
            }
        );
    }

    #[test]
    fn partial_bundle_waits_unless_flushed() {
        let mut c = Chunker::new(&params(1 << 20, 4096, 1 << 20));
        c.push(NeededFile { id: 1, size_bytes: 10 });
        assert_eq!(c.next(false), None);
        assert!(matches!(c.next(true), Some(Unit::Bundle(v)) if v.len() == 1));
        assert!(c.is_empty());
    }

    #[test]
    fn a_hole_run_takes_the_rest_of_a_file_out_of_the_plan() {
        let mut c = Chunker::new(&params(8192, 4096, 8192));
        let f = NeededFile { id: 3, size_bytes: 8192 * 1000 + 5 };
        c.push(f);
        assert!(matches!(c.next(true), Some(Unit::Chunk { offset_bytes: 0, .. })));
        assert!(matches!(c.next(true), Some(Unit::Chunk { offset_bytes: 8192, .. })));
        assert_eq!(c.skip_large(4, 8192 * 10), None);
        assert_eq!(c.skip_large(3, 8192 * 10), Some((16384, 8192 * 10)));
        assert!(matches!(c.next(true), Some(Unit::Chunk { offset_bytes: 81920, .. })));
        assert_eq!(c.skip_large(3, u64::MAX), Some((8192 * 11, f.size_bytes)));
        assert!(c.is_empty());
        assert_eq!(c.skip_large(3, u64::MAX), None);
    }

    proptest! {
        /// Every byte of every needed file is covered exactly once, bundles fit one frame, and
        /// every file appears in exactly one bundle or one chunk sequence.
        #[test]
        fn every_byte_covered_once(
            sizes in proptest::collection::vec(prop_oneof![0u64..5000, 0u64..100_000], 0..60),
            flush_every in 1usize..7,
        ) {
            let p = params(16384, 4096, 8192);
            let mut c = Chunker::new(&p);
            let mut units = Vec::new();
            for (i, &size) in sizes.iter().enumerate() {
                c.push(NeededFile { id: i as u64, size_bytes: size });
                if i % flush_every == 0 {
                    while let Some(u) = c.next(false) { units.push(u); }
                }
            }
            units.extend(drain(&mut c));
            let mut covered: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
            for u in &units {
                match u {
                    Unit::Bundle(files) => {
                        let data: u64 = files.iter().map(|f| f.size_bytes).sum();
                        prop_assert!(bundle_index_bytes(files.len()) as u64 + data <= u64::from(p.chunk_bytes));
                        for f in files {
                            prop_assert!(f.size_bytes <= u64::from(p.small_file_bytes_max));
                            covered.entry(f.id).or_default().push((0, f.size_bytes));
                        }
                    }
                    Unit::Chunk { file, offset_bytes, len_bytes } => {
                        prop_assert!(*len_bytes <= p.chunk_bytes && *len_bytes > 0);
                        prop_assert_eq!(offset_bytes % u64::from(p.chunk_bytes), 0);
                        covered.entry(file.id).or_default().push((*offset_bytes, *offset_bytes + u64::from(*len_bytes)));
                    }
                }
            }
            prop_assert_eq!(covered.len(), sizes.len());
            for (id, mut ranges) in covered {
                ranges.sort();
                let mut at = 0;
                for (start, end) in ranges {
                    prop_assert_eq!(start, at);
                    at = end;
                }
                prop_assert_eq!(at, sizes[id as usize]);
            }
        }
    }
}
