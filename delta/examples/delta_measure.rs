//! Measures the rolling match against content-defined chunking on issue 18's acceptance case:
//! a file with 1% of its 4 KiB blocks changed at scattered places and 64 bytes inserted near
//! its start, sent as independent 4 MiB chunks.
//!
//! `cargo run --release -p blitx-delta --example delta_measure -- [MIB] [RUNS]`
//! (default 256 MiB, 3 runs). Everything is generated in memory from fixed seeds, so byte counts
//! are exact and repeatable; CPU times are this thread's on-CPU time (from
//! /proc/thread-self/schedstat, wall time where absent), the median of RUNS, and only
//! indicative on a shared machine.

use std::time::Instant;

use blitx_delta::cdc::{CDC_ENTRY_BYTES, CdcIndex, CdcParams, sign_range};
use blitx_delta::{
    Index, Recipe, SIGNATURE_HEADER_BYTES, Signature, SignatureBuilder, SignatureLimits,
    SignatureParams, match_chunk,
};

const CHUNK_BYTES: usize = 4 << 20;
const EDIT_BLOCK_BYTES: usize = 4096;
const BLOCKS_PER_MESSAGE: usize = 64 * 1024;
/// The target cuts its basis into ranges of this size for parallel hashing (CDC restarts there).
const TARGET_RANGE_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Edit {
    /// Each chosen 4 KiB block rewritten whole.
    Block,
    /// 16 bytes rewritten at a random place inside each chosen block.
    Small,
    /// The new file shares nothing with the basis (the matcher's worst case).
    Unrelated,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    let mut rng = fastrand::Rng::with_seed(18);
    let mut basis = vec![0u8; size];
    rng.fill(&mut basis);

    println!("basis {mib} MiB, chunks of 4 MiB, medians of {runs} runs (CPU s/GB: one thread)\n");
    println!(
        "| edit | algorithm | block/avg | signature bytes | recipe bytes (literals) | total sent | % of file | sign s/GB | match s/GB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for edit in [Edit::Block, Edit::Small, Edit::Unrelated] {
        let data = edited(&basis, edit, &mut fastrand::Rng::with_seed(1018));
        let name = match edit {
            Edit::Block => "4 KiB blocks",
            Edit::Small => "16 B in blocks",
            Edit::Unrelated => "unrelated",
        };
        let blocks: &[u32] =
            if edit == Edit::Unrelated { &[4096] } else { &[2048, 4096, 8192, 16384, 65536] };
        for &block in blocks {
            let label = if block == 65536 { "rolling (rsync's 4 GiB rule)" } else { "rolling" };
            row(name, label, block, &rolling(&basis, &data, block, runs));
        }
        let avgs: &[u32] = if edit == Edit::Unrelated { &[8192] } else { &[4096, 8192, 16384] };
        for &avg in avgs {
            row(name, "CDC", avg, &cdc(&basis, &data, avg, runs));
        }
    }
}

fn edited(basis: &[u8], edit: Edit, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut data = basis.to_vec();
    if edit == Edit::Unrelated {
        rng.fill(&mut data);
        return data;
    }
    let blocks = data.len() / EDIT_BLOCK_BYTES;
    let mut chosen: Vec<usize> = (0..blocks).collect();
    rng.shuffle(&mut chosen);
    for &block in &chosen[..blocks / 100] {
        let start = block * EDIT_BLOCK_BYTES;
        let range = match edit {
            Edit::Block => start..start + EDIT_BLOCK_BYTES,
            _ => {
                let at = start + rng.usize(..EDIT_BLOCK_BYTES - 16);
                at..at + 16
            }
        };
        rng.fill(&mut data[range]);
    }
    let mut inserted = [0u8; 64];
    rng.fill(&mut inserted);
    data.splice(1000..1000, inserted);
    data
}

struct Measured {
    signature_bytes: u64,
    recipe_bytes: u64,
    literal_bytes: u64,
    file_bytes: u64,
    sign_s_per_gb: f64,
    match_s_per_gb: f64,
}

fn row(edit: &str, algorithm: &str, block: u32, m: &Measured) {
    let total = m.signature_bytes + m.recipe_bytes;
    println!(
        "| {edit} | {algorithm} | {} KiB | {} | {} ({}) | {} | {:.2}% | {:.2} | {:.2} |",
        block / 1024,
        m.signature_bytes,
        m.recipe_bytes,
        m.literal_bytes,
        total,
        100.0 * total as f64 / m.file_bytes as f64,
        m.sign_s_per_gb,
        m.match_s_per_gb,
    );
}

/// Bytes a chunk costs on the wire and the literal bytes among them: its recipe, or the chunk
/// itself where the recipe is not shorter (what `encode_chunk` decides).
fn chunk_cost(recipe: &Recipe<'_>, chunk: &[u8]) -> (u64, u64) {
    if recipe.encoded_bytes() >= chunk.len() {
        (chunk.len() as u64, chunk.len() as u64)
    } else {
        (recipe.encoded_bytes() as u64, recipe.literals().len() as u64)
    }
}

fn rolling(basis: &[u8], data: &[u8], block: u32, runs: usize) -> Measured {
    let params = SignatureParams::new(block, basis.len() as u64, 0x5EED).expect("block size");
    let limits = SignatureLimits { message_bytes_max: 1 << 20, blocks_max: 1 << 24 };
    let mut sign_times = Vec::new();
    let mut match_times = Vec::new();
    let mut result = None;
    for _ in 0..runs {
        let (signature, sign_s) = timed(|| {
            let parts = basis
                .chunks(TARGET_RANGE_BYTES)
                .enumerate()
                .map(|(i, range)| {
                    let start = (i * TARGET_RANGE_BYTES) as u64;
                    let mut builder =
                        SignatureBuilder::new(params, start..start + range.len() as u64)
                            .expect("range");
                    for piece in range.chunks(CHUNK_BYTES) {
                        builder.update(piece).expect("fed within the range");
                    }
                    builder.finish().expect("whole range fed")
                })
                .collect::<Vec<_>>();
            Signature::from_parts(parts, &limits).expect("parts cover the basis")
        });
        let signature_bytes =
            signature.clone().into_part().encoded_bytes(BLOCKS_PER_MESSAGE) as u64;
        let (recipes, match_s) = timed(|| {
            let index = Index::new(signature).expect("index");
            data.chunks(CHUNK_BYTES).map(|chunk| match_chunk(&index, chunk)).collect::<Vec<_>>()
        });
        sign_times.push(sign_s);
        match_times.push(match_s);
        if result.is_none() {
            let (mut recipe_bytes, mut literal_bytes) = (0, 0);
            for (recipe, chunk) in recipes.iter().zip(data.chunks(CHUNK_BYTES)) {
                check(recipe, basis, chunk);
                let (r, l) = chunk_cost(recipe, chunk);
                recipe_bytes += r;
                literal_bytes += l;
            }
            result = Some((signature_bytes, recipe_bytes, literal_bytes));
        }
    }
    let (signature_bytes, recipe_bytes, literal_bytes) = result.expect("at least one run");
    Measured {
        signature_bytes,
        recipe_bytes,
        literal_bytes,
        file_bytes: data.len() as u64,
        sign_s_per_gb: median(sign_times) / (basis.len() as f64 / 1e9),
        match_s_per_gb: median(match_times) / (data.len() as f64 / 1e9),
    }
}

fn cdc(basis: &[u8], data: &[u8], avg: u32, runs: usize) -> Measured {
    let params = CdcParams::new(avg).expect("average");
    let mut sign_times = Vec::new();
    let mut match_times = Vec::new();
    let mut result = None;
    for _ in 0..runs {
        let (entries, sign_s) = timed(|| {
            basis
                .chunks(TARGET_RANGE_BYTES)
                .enumerate()
                .flat_map(|(i, range)| {
                    sign_range(&params, 0x5EED, (i * TARGET_RANGE_BYTES) as u64, range)
                })
                .collect::<Vec<_>>()
        });
        let messages = entries.len().div_ceil(BLOCKS_PER_MESSAGE).max(1);
        let signature_bytes =
            (messages * SIGNATURE_HEADER_BYTES + entries.len() * CDC_ENTRY_BYTES) as u64;
        let (recipes, match_s) = timed(|| {
            let index = CdcIndex::new(params, 0x5EED, &entries);
            data.chunks(CHUNK_BYTES).map(|chunk| index.match_chunk(chunk)).collect::<Vec<_>>()
        });
        sign_times.push(sign_s);
        match_times.push(match_s);
        if result.is_none() {
            let (mut recipe_bytes, mut literal_bytes) = (0, 0);
            for (recipe, chunk) in recipes.iter().zip(data.chunks(CHUNK_BYTES)) {
                check(recipe, basis, chunk);
                let (r, l) = chunk_cost(recipe, chunk);
                recipe_bytes += r;
                literal_bytes += l;
            }
            result = Some((signature_bytes, recipe_bytes, literal_bytes));
        }
    }
    let (signature_bytes, recipe_bytes, literal_bytes) = result.expect("at least one run");
    Measured {
        signature_bytes,
        recipe_bytes,
        literal_bytes,
        file_bytes: data.len() as u64,
        sign_s_per_gb: median(sign_times) / (basis.len() as f64 / 1e9),
        match_s_per_gb: median(match_times) / (data.len() as f64 / 1e9),
    }
}

/// The recipe rebuilds the chunk exactly (so the byte counts describe a correct transfer).
fn check(recipe: &Recipe<'_>, basis: &[u8], chunk: &[u8]) {
    let mut out = vec![0u8; chunk.len()];
    recipe
        .apply(
            basis.len() as u64,
            |offset, buf| {
                let start = offset as usize;
                buf.copy_from_slice(&basis[start..start + buf.len()]);
                Ok::<(), std::io::Error>(())
            },
            &mut out,
        )
        .expect("recipe applies");
    assert!(out == chunk, "a recipe rebuilt a chunk wrongly");
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let (cpu, wall) = (thread_cpu_ns(), Instant::now());
    let out = f();
    let seconds = match (cpu, thread_cpu_ns()) {
        (Some(start), Some(end)) => (end - start) as f64 / 1e9,
        _ => wall.elapsed().as_secs_f64(),
    };
    (out, seconds)
}

/// This thread's time on a CPU, in ns (Linux schedstat's first field).
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
