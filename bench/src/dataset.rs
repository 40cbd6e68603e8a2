//! The generated datasets: one large file, many small files, a mixed tree.
//!
//! Owns generating them (seeded, so every machine gets the same bytes), the marker file that
//! lets a later run reuse a tree generated with the same parameters, and removing them. The
//! contents come from a splitmix64 stream, so no block repeats and neither compression nor
//! deduplication can make one tool look faster than another.
//!
//! Layout under the bench directory: `datasets/<name>/…` plus `datasets/<name>.marker.json`
//! beside it (outside the tree, so it is never copied and never counted).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bounds on what one run may ask to generate.
pub const FILES_MAX: u64 = 10_000_000;
pub const DATASET_BYTES_MAX: u64 = 1 << 40;
/// Small files per directory (a flat directory of 1M entries tests the file system, not blit).
const FILES_PER_DIR_MAX: u64 = 1000;
/// Smallest file of the mixed dataset.
const MIXED_MIN_BYTES: u64 = 1024;
const WRITE_BLOCK_BYTES: usize = 1 << 20;
const MARKER_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// One large file.
    Large,
    /// Many files of one small size.
    Small,
    /// Log-uniform sizes from 1 KiB to a maximum, in nested directories.
    Mixed,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 3] = [DatasetKind::Large, DatasetKind::Small, DatasetKind::Mixed];

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Large => "large",
            DatasetKind::Small => "small",
            DatasetKind::Mixed => "mixed",
        }
    }

    pub fn parse(s: &str) -> Option<DatasetKind> {
        DatasetKind::ALL.into_iter().find(|k| k.name() == s.trim())
    }
}

/// Sizes of the three datasets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetParams {
    pub large_bytes: u64,
    pub small_files: u64,
    pub small_file_bytes: u64,
    pub mixed_files: u64,
    pub mixed_max_bytes: u64,
    pub seed: u64,
}

impl DatasetParams {
    /// Defaults for a full run: 0.4–2 GiB per dataset, each run a second or more here (raise
    /// them on 100 GbE).
    pub fn full() -> DatasetParams {
        DatasetParams {
            large_bytes: 2 << 30,
            small_files: 100_000,
            small_file_bytes: 4 << 10,
            mixed_files: 1000,
            mixed_max_bytes: 8 << 20,
            seed: 1,
        }
    }

    /// Datasets for `--quick`, sized so that each run lasts at least half a second on a
    /// two-core machine with tmpfs (blit copies ~2 GB/s of large files and ~80,000 small files
    /// per second there; docs/benchmarks.md): shorter runs time the start-up, not the link.
    /// About 2.5 GB in all; the report marks any run under 0.5 s.
    pub fn quick() -> DatasetParams {
        DatasetParams {
            large_bytes: 1536 << 20,
            small_files: 50_000,
            small_file_bytes: 4 << 10,
            mixed_files: 1000,
            mixed_max_bytes: 8 << 20,
            seed: 1,
        }
    }

    pub fn validate(&self) -> Result<(), DatasetError> {
        let bad = |what: &'static str| Err(DatasetError::Params { what });
        if self.small_files > FILES_MAX || self.mixed_files > FILES_MAX {
            return bad("more than 10,000,000 files");
        }
        if self.small_files == 0 || self.mixed_files == 0 {
            return bad("a file count of zero");
        }
        let small_total = self.small_files.checked_mul(self.small_file_bytes);
        let mixed_worst = self.mixed_files.checked_mul(self.mixed_max_bytes);
        let too_big = |v: Option<u64>| v.is_none_or(|b| b > DATASET_BYTES_MAX);
        if self.large_bytes > DATASET_BYTES_MAX || too_big(small_total) || too_big(mixed_worst) {
            return bad("a dataset larger than 1 TiB");
        }
        if self.mixed_max_bytes < MIXED_MIN_BYTES {
            return bad("--mixed-max below 1K");
        }
        Ok(())
    }

    /// Directory name: encodes every parameter that shapes the tree, so different sizes never
    /// share a directory.
    fn dir_name(&self, kind: DatasetKind) -> String {
        match kind {
            DatasetKind::Large => format!("large-{}-s{}", self.large_bytes, self.seed),
            DatasetKind::Small => {
                format!("small-{}x{}-s{}", self.small_files, self.small_file_bytes, self.seed)
            }
            DatasetKind::Mixed => {
                format!("mixed-{}-max{}-s{}", self.mixed_files, self.mixed_max_bytes, self.seed)
            }
        }
    }
}

/// A generated dataset on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub path: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// Reused from an earlier run (its marker matched) rather than generated now.
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset parameters rejected: {what}")]
    Params { what: &'static str },
    #[error("generating dataset at {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("removing dataset at {path}")]
    Remove { path: PathBuf, source: std::io::Error },
}

/// What the marker records: the parameters that made the tree, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    format: u32,
    kind: DatasetKind,
    dir_name: String,
    files: u64,
    bytes: u64,
}

fn marker_path(root: &Path, dir_name: &str) -> PathBuf {
    root.join("datasets").join(format!("{dir_name}.marker.json"))
}

/// splitmix64: tiny, fast, and good enough that generated blocks never repeat.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

fn write_file(
    path: &Path,
    bytes: u64,
    rng: &mut SplitMix64,
    block: &mut [u8],
) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(WRITE_BLOCK_BYTES, std::fs::File::create(path)?);
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
        rng.fill(&mut block[..n]);
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// Size of the i-th mixed file: log-uniform in [1 KiB, max].
fn mixed_size(rng: &mut SplitMix64, max_bytes: u64) -> u64 {
    let (lo, hi) = ((MIXED_MIN_BYTES as f64).ln(), (max_bytes as f64).ln());
    let size = (lo + rng.next_f64() * (hi - lo)).exp() as u64;
    size.clamp(MIXED_MIN_BYTES, max_bytes)
}

/// Writes the tree; returns (files, bytes).
fn generate(dir: &Path, kind: DatasetKind, p: &DatasetParams) -> std::io::Result<(u64, u64)> {
    let mut block = vec![0u8; WRITE_BLOCK_BYTES];
    let mut rng = SplitMix64::new(p.seed ^ (kind as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    std::fs::create_dir_all(dir)?;
    match kind {
        DatasetKind::Large => {
            write_file(&dir.join("large.bin"), p.large_bytes, &mut rng, &mut block)?;
            Ok((1, p.large_bytes))
        }
        DatasetKind::Small => {
            for i in 0..p.small_files {
                let sub = dir.join(format!("d{:04}", i / FILES_PER_DIR_MAX));
                if i % FILES_PER_DIR_MAX == 0 {
                    std::fs::create_dir_all(&sub)?;
                }
                let name = format!("f{:06}", i % FILES_PER_DIR_MAX);
                write_file(&sub.join(name), p.small_file_bytes, &mut rng, &mut block)?;
            }
            Ok((p.small_files, p.small_files * p.small_file_bytes))
        }
        DatasetKind::Mixed => {
            let mut bytes = 0;
            for i in 0..p.mixed_files {
                let sub = dir.join(format!("d{}", i % 10)).join(format!("s{}", i % 7));
                std::fs::create_dir_all(&sub)?;
                let size = mixed_size(&mut rng, p.mixed_max_bytes);
                write_file(&sub.join(format!("f{i:06}.bin")), size, &mut rng, &mut block)?;
                bytes += size;
            }
            Ok((p.mixed_files, bytes))
        }
    }
}

/// Returns the dataset under `root`, generating it unless a marker shows it was already
/// generated with the same parameters.
pub fn ensure(root: &Path, kind: DatasetKind, p: &DatasetParams) -> Result<Dataset, DatasetError> {
    p.validate()?;
    let name = p.dir_name(kind);
    let dir = root.join("datasets").join(&name);
    let marker = marker_path(root, &name);
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Ok(m) = serde_json::from_str::<Marker>(&text)
        && m.format == MARKER_FORMAT
        && m.kind == kind
        && m.dir_name == name
        && dir.is_dir()
    {
        return Ok(Dataset { kind, path: dir, files: m.files, bytes: m.bytes, reused: true });
    }
    let werr = |source| DatasetError::Write { path: dir.clone(), source };
    let _ = std::fs::remove_file(&marker);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(werr)?;
    }
    let (files, bytes) = generate(&dir, kind, p).map_err(werr)?;
    let m = Marker { format: MARKER_FORMAT, kind, dir_name: name, files, bytes };
    let text = serde_json::to_string_pretty(&m).map_err(|e| werr(std::io::Error::other(e)))?;
    // Written last: a tree whose generation was interrupted has no marker and is regenerated.
    std::fs::write(&marker, text).map_err(werr)?;
    Ok(Dataset { kind, path: dir, files, bytes, reused: false })
}

/// Removes a dataset and its marker.
pub fn remove(ds: &Dataset) -> Result<(), DatasetError> {
    if let Some(name) = ds.path.file_name().and_then(|n| n.to_str())
        && let Some(datasets) = ds.path.parent()
    {
        let _ = std::fs::remove_file(datasets.join(format!("{name}.marker.json")));
    }
    match std::fs::remove_dir_all(&ds.path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatasetError::Remove { path: ds.path.clone(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> DatasetParams {
        DatasetParams {
            large_bytes: 100_000,
            small_files: 1005,
            small_file_bytes: 10,
            mixed_files: 30,
            mixed_max_bytes: 64 << 10,
            seed: 7,
        }
    }

    fn tree_bytes(dir: &Path) -> (u64, u64) {
        let mut stack = vec![dir.to_path_buf()];
        let (mut files, mut bytes) = (0, 0);
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    files += 1;
                    bytes += m.len();
                }
            }
        }
        (files, bytes)
    }

    #[test]
    fn generated_trees_match_what_they_report() {
        let root = tempfile::tempdir().unwrap();
        for kind in DatasetKind::ALL {
            let ds = ensure(root.path(), kind, &tiny()).unwrap();
            assert!(!ds.reused);
            assert_eq!(tree_bytes(&ds.path), (ds.files, ds.bytes), "{kind:?}");
        }
        let small = ensure(root.path(), DatasetKind::Small, &tiny()).unwrap();
        assert_eq!(std::fs::read_dir(&small.path).unwrap().count(), 2, "1005 files -> 2 dirs");
    }

    #[test]
    fn same_parameters_reuse_and_different_ones_do_not() {
        let root = tempfile::tempdir().unwrap();
        let a = ensure(root.path(), DatasetKind::Large, &tiny()).unwrap();
        let b = ensure(root.path(), DatasetKind::Large, &tiny()).unwrap();
        assert!(b.reused);
        assert_eq!(a.path, b.path);
        let other = DatasetParams { large_bytes: 4096, ..tiny() };
        let c = ensure(root.path(), DatasetKind::Large, &other).unwrap();
        assert!(!c.reused);
        assert_ne!(c.path, a.path);
        remove(&a).unwrap();
        assert!(!a.path.exists());
        assert!(!ensure(root.path(), DatasetKind::Large, &tiny()).unwrap().reused);
    }

    #[test]
    fn a_tree_without_marker_is_regenerated() {
        let root = tempfile::tempdir().unwrap();
        let a = ensure(root.path(), DatasetKind::Large, &tiny()).unwrap();
        std::fs::remove_file(marker_path(root.path(), &tiny().dir_name(DatasetKind::Large)))
            .unwrap();
        std::fs::write(a.path.join("junk"), b"x").unwrap();
        let b = ensure(root.path(), DatasetKind::Large, &tiny()).unwrap();
        assert!(!b.reused);
        assert!(!b.path.join("junk").exists());
    }

    #[test]
    fn content_is_seeded() {
        let (r1, r2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = ensure(r1.path(), DatasetKind::Large, &tiny()).unwrap();
        let b = ensure(r2.path(), DatasetKind::Large, &tiny()).unwrap();
        let read = |d: &Dataset| std::fs::read(d.path.join("large.bin")).unwrap();
        assert_eq!(read(&a), read(&b));
        let bytes = read(&a);
        assert_ne!(bytes[..4096], bytes[4096..8192]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(DatasetParams { small_files: 0, ..tiny() }.validate().is_err());
        assert!(DatasetParams { mixed_max_bytes: 10, ..tiny() }.validate().is_err());
        assert!(DatasetParams { large_bytes: u64::MAX, ..tiny() }.validate().is_err());
        assert!(DatasetParams { small_file_bytes: u64::MAX, ..tiny() }.validate().is_err());
        assert!(DatasetKind::parse("mixed") == Some(DatasetKind::Mixed));
        assert!(DatasetKind::parse("huge").is_none());
    }
}
