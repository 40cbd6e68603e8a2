#![allow(clippy::unwrap_used)]
//! Test helpers shared by the engine's, the CLI's and the transports' tests: tree builders and
//! a byte-for-byte + metadata comparison. Compiled only for tests (feature `testkit`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Compares two trees: same paths, kinds, contents, modes, mtimes (files, directories and
/// symlinks, to the nanosecond), owners, symlink targets and hard-link grouping, roots included.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), String> {
    let la = list(a)?;
    let lb = list(b)?;
    let names_a: Vec<_> = la.keys().collect();
    let names_b: Vec<_> = lb.keys().collect();
    if names_a != names_b {
        let only_a: Vec<_> = la.keys().filter(|k| !lb.contains_key(*k)).take(5).collect();
        let only_b: Vec<_> = lb.keys().filter(|k| !la.contains_key(*k)).take(5).collect();
        return Err(format!(
            "path sets differ: only in source {only_a:?}, only in target {only_b:?}"
        ));
    }
    let mut links_a: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
    let mut links_b: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
    for (rel, ma) in &la {
        let mb = &lb[rel];
        let pa = a.join(rel);
        let pb = b.join(rel);
        let (ta, tb) = (ma.file_type(), mb.file_type());
        if ta.is_dir() != tb.is_dir()
            || ta.is_file() != tb.is_file()
            || ta.is_symlink() != tb.is_symlink()
        {
            return Err(format!("{rel:?}: kinds differ"));
        }
        if !ta.is_symlink() && ma.permissions().mode() != mb.permissions().mode() {
            return Err(format!(
                "{rel:?}: mode {:o} vs {:o}",
                ma.permissions().mode(),
                mb.permissions().mode()
            ));
        }
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            return Err(format!(
                "{rel:?}: mtime {}.{:09} vs {}.{:09}",
                ma.mtime(),
                ma.mtime_nsec(),
                mb.mtime(),
                mb.mtime_nsec()
            ));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            return Err(format!("{rel:?}: owner differs"));
        }
        if ta.is_symlink() {
            let (x, y) = (fs::read_link(&pa), fs::read_link(&pb));
            if x.map_err(|e| e.to_string())? != y.map_err(|e| e.to_string())? {
                return Err(format!("{rel:?}: symlink targets differ"));
            }
        } else if ta.is_file() {
            if ma.len() != mb.len() {
                return Err(format!("{rel:?}: size {} vs {}", ma.len(), mb.len()));
            }
            if !same_contents(&pa, &pb)? {
                return Err(format!("{rel:?}: contents differ"));
            }
            if ma.nlink() > 1 {
                links_a.entry(ma.ino()).or_default().push(rel);
                links_b.entry(mb.ino()).or_default().push(rel);
            }
        }
    }
    let mut ga: Vec<Vec<&PathBuf>> = links_a
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    let mut gb: Vec<Vec<&PathBuf>> = links_b
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    ga.sort();
    gb.sort();
    if ga != gb {
        return Err(format!("hard-link groups differ: {ga:?} vs {gb:?}"));
    }
    Ok(())
}

fn same_contents(a: &Path, b: &Path) -> Result<bool, String> {
    let mut fa = fs::File::open(a).map_err(|e| format!("{}: {e}", a.display()))?;
    let mut fb = fs::File::open(b).map_err(|e| format!("{}: {e}", b.display()))?;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| e.to_string())?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| e.to_string())?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Every path below `root` (relative, including `.` for the root) with its metadata.
pub fn list(root: &Path) -> Result<BTreeMap<PathBuf, fs::Metadata>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.is_dir() {
            for e in fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))? {
                let e = e.map_err(|e| e.to_string())?;
                stack.push(rel.join(e.file_name()));
            }
        }
        out.insert(if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel }, m);
    }
    Ok(out)
}

/// Paths left behind by an interrupted or failed write (temporary names).
pub fn temp_files(root: &Path) -> Vec<PathBuf> {
    list(root)
        .unwrap_or_default()
        .into_keys()
        .filter(|p| p.file_name().is_some_and(|n| n.as_bytes().ends_with(b".blit-tmp")))
        .collect()
}

/// The most bytes any temporary file under `root` holds by its journal (the chunks a resumed
/// transfer would offer; 0 without journals). Preallocated files say nothing by their size.
pub fn journaled_bytes(root: &Path) -> u64 {
    temp_files(root)
        .iter()
        .filter_map(|p| {
            let f = std::fs::File::open(root.join(p)).ok()?;
            let j = crate::fsys::load_journal(std::os::fd::AsFd::as_fd(&f))?;
            Some(j.chunks() * u64::from(j.chunk_bytes))
        })
        .max()
        .unwrap_or(0)
}

/// A small deterministic PRNG (xorshift64*), so trees are reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    /// Log-uniform in `[lo, hi]`.
    pub fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo.max(1) as f64).ln(), (hi as f64).ln());
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (l + u * (h - l)).exp() as u64
    }
}

pub fn write_random(path: &Path, size: u64, rng: &mut Rng) {
    let mut data = vec![0u8; size as usize];
    rng.fill(&mut data);
    fs::write(path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A tree of `files` files with log-uniform sizes in `[min_bytes, max_bytes]` over a few nested
/// directories.
pub fn mixed_tree(root: &Path, seed: u64, files: usize, min_bytes: u64, max_bytes: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..files {
        let dir = root.join(format!("d{}/s{}", i % 7, i % 3));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let size = rng.log_uniform(min_bytes, max_bytes);
        write_random(&dir.join(format!("f{i:05}.bin")), size, &mut rng);
    }
}

/// The edge cases a copy must get right (no sparse file, no unreadable files: those need
/// their own set-up).
pub fn edge_tree(root: &Path) {
    let mk = |p: &str| fs::create_dir_all(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let put =
        |p: &str, data: &[u8]| fs::write(root.join(p), data).unwrap_or_else(|e| panic!("{p}: {e}"));
    mk("empty-dir");
    mk("nested/a/b/c");
    put("empty-file", b"");
    put("nested/a/b/c/deep.txt", b"deep");
    put("name with spaces.txt", b"spaces");
    put("line\nbreak", b"newline in name");
    put("ünïcødé-日本.txt", "unicode".as_bytes());
    let raw = std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9");
    fs::write(root.join(raw), b"not utf-8").unwrap_or_else(|e| panic!("latin1: {e}"));
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("nested/a", root.join("dir-link")).unwrap_or_else(|e| panic!("{e}"));
    put("hard-a", b"linked content");
    fs::hard_link(root.join("hard-a"), root.join("nested/hard-b"))
        .unwrap_or_else(|e| panic!("{e}"));
    put("read-only.txt", b"ro");
    fs::set_permissions(root.join("read-only.txt"), fs::Permissions::from_mode(0o444))
        .unwrap_or_else(|e| panic!("{e}"));
    put("exec.sh", b"#!/bin/sh\n");
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    fs::set_permissions(root.join("nested/a"), fs::Permissions::from_mode(0o750))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::new(7);
    write_random(&root.join("nested/chunky.bin"), 9 * 1024 * 1024 + 123, &mut rng);
    write_random(&root.join("exactly-4k"), 4096, &mut rng);
    // Old, distinct times so "kept the times" cannot pass by accident.
    set_mtime(&root.join("nested/a/b"), 1_000_000_000, 123_456_789);
    set_mtime(&root.join("empty-dir"), 1_100_000_000, 1);
    set_mtime(&root.join("exactly-4k"), 1_200_000_000, 999_999_999);
}

/// Sets a path's mtime (not following symlinks).
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec },
        last_modification: rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec },
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
