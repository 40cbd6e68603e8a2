//! Writes a seed corpus for the fuzz targets: valid inputs of every kind, so that a short run
//! starts past the framing and the protobuf wire format. Not a fuzz target.
//!
//! Usage: `seeds DIR` writes `DIR/<target>/<name>` (an existing file is overwritten).

use std::path::Path;

use blitx_core::frame::{FrameHeader, FrameKind, write_bundle_index};

// `cargo fuzz build` builds every binary of this crate with coverage instrumentation, which
// needs libFuzzer's runtime linked in, and that runtime calls a fuzz target. This empty one is
// never run: the `main` below takes the place of libFuzzer's.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: seeds DIR");
        std::process::exit(2);
    };
    let dir = Path::new(&dir);
    let mut written = 0;
    for (target, seeds) in [
        ("frame_header", frame_header()),
        ("rel_path", rel_path()),
        ("control_messages", blitx_control::fuzz::seeds()),
    ] {
        let at = dir.join(target);
        std::fs::create_dir_all(&at)?;
        for (name, bytes) in seeds {
            std::fs::write(at.join(format!("seed-{name}")), bytes)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", dir.display());
    Ok(())
}

fn frame_header() -> Vec<(String, Vec<u8>)> {
    let max = (4u32 << 20).to_le_bytes();
    let mut out = Vec::new();
    let header = |kind, len_bytes, checksum| FrameHeader {
        kind,
        flags: 1,
        file_id: 7,
        offset_bytes: 8 << 20,
        len_bytes,
        checksum,
    };
    let files: [(&[u8], u64, u32); 3] = [(b"hello", 1, 0), (b"", 2, 1), (b"world!", 9, 0)];
    let records: Vec<_> = files.iter().map(|(d, id, f)| (*id, d.len() as u32, *f)).collect();
    let mut bundle = vec![0u8; blitx_core::frame::bundle_index_bytes(records.len())];
    write_bundle_index(&mut bundle, &records);
    files.iter().for_each(|(d, _, _)| bundle.extend_from_slice(d));
    let checksum = blitx_core::frame::checksum(&bundle);
    for (name, h, payload) in [
        ("chunk", header(FrameKind::Chunk, 4096, 0x1234), vec![0x5a; 16]),
        ("hole", header(FrameKind::Hole, 0, 3), Vec::new()),
        ("same", header(FrameKind::Same, 0, 0x77), Vec::new()),
        (
            "delta",
            header(FrameKind::Delta, 24, 0x99),
            vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
        ),
        ("end", FrameHeader::end(), Vec::new()),
        ("bundle", header(FrameKind::Bundle, bundle.len() as u32, checksum), bundle.clone()),
    ] {
        let mut bytes = max.to_vec();
        bytes.extend_from_slice(&h.encode());
        bytes.extend_from_slice(&payload);
        out.push((name.to_string(), bytes));
    }
    out
}

fn rel_path() -> Vec<(String, Vec<u8>)> {
    [
        ("plain", &b"a/b c"[..], &b"d"[..]),
        ("root-join", b"", b"name"),
        ("trailing-slash", b"dir/", b"x"),
        ("utf8", "ünï/x\ny".as_bytes(), b"z"),
        ("dotdot", b"a/../b", b"c"),
        ("dot", b"./a", b"."),
        ("nul", b"a\x00b", b"c"),
    ]
    .into_iter()
    .map(|(name, path, join)| (name.to_string(), path.to_vec(), join.to_vec()))
    .chain(std::iter::once({
        // Near the length limits: 19 names of 200 bytes, then a name of 255.
        let long = vec![vec![b'n'; 200]; 19].join(&b'/');
        ("long".to_string(), long, vec![b'm'; 255])
    }))
    .map(|(name, path, join)| {
        let k = u16::try_from(path.len()).unwrap_or(u16::MAX);
        (name, [&k.to_le_bytes()[..], &path, &join].concat())
    })
    .collect()
}
