//! Data-plane frames (core/src/frame.rs): valid ones, with the chained xxh3 checksum and
//! `FILE_VERIFIED` where the protocol wants it (bundles; a chunked file is made committable by
//! the `FileRead` control message instead), and garbage.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use blitx_core::frame::{
    self, FLAG_FILE_VERIFIED, FRAME_HEADER_BYTES, FrameHeader, FrameKind, bundle_index_bytes,
    write_bundle_index,
};

/// Header and payload of one Chunk frame: `data` is the bytes of file `id` at `offset`.
pub fn chunk(id: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        kind: FrameKind::Chunk,
        flags: 0,
        file_id: id,
        offset_bytes: offset,
        len_bytes: data.len() as u32,
        checksum: frame::checksum(data),
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + data.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(data);
    out
}

/// Every Chunk frame of a whole file, split at `chunk_bytes` (the file becomes committable
/// with `msg::file_read(id)` on the control stream).
pub fn file_chunks(id: u64, data: &[u8], chunk_bytes: u32) -> Vec<Vec<u8>> {
    if data.is_empty() {
        return vec![chunk(id, 0, &[])];
    }
    data.chunks(chunk_bytes as usize)
        .enumerate()
        .map(|(i, p)| chunk(id, i as u64 * u64::from(chunk_bytes), p))
        .collect()
}

/// Header and payload of one Bundle frame (sequence number `seq`) carrying `files`
/// (`(file id, bytes)`), marked `FILE_VERIFIED` as the stock source does.
pub fn bundle(seq: u64, files: &[(u64, &[u8])]) -> Vec<u8> {
    let items: Vec<(u64, u32, u32)> =
        files.iter().map(|(id, d)| (*id, d.len() as u32, 0)).collect();
    let index = bundle_index_bytes(files.len());
    let mut payload = vec![0u8; index];
    write_bundle_index(&mut payload, &items);
    for (_, d) in files {
        payload.extend_from_slice(d);
    }
    let header = FrameHeader {
        kind: FrameKind::Bundle,
        flags: FLAG_FILE_VERIFIED,
        file_id: seq,
        offset_bytes: 0,
        len_bytes: payload.len() as u32,
        checksum: frame::checksum(&payload),
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&payload);
    out
}

/// The End frame (no more frames on this stream).
pub fn end() -> [u8; FRAME_HEADER_BYTES] {
    FrameHeader::end().encode()
}

/// `n` bytes that are not a frame (no 0xB1 magic at offset 0).
pub fn garbage(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7) | 1).map(|b| b & 0x7f).collect()
}

/// One frame read from a stream: `Ok(None)` at a clean end of stream before a header.
pub fn read(
    stream: &mut TcpStream,
    max_payload_bytes: u32,
) -> io::Result<Option<(FrameHeader, Vec<u8>)>> {
    let mut raw = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < raw.len() {
        match stream.read(&mut raw[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let header = FrameHeader::decode(&raw, max_payload_bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut payload = vec![0u8; header.len_bytes as usize];
    stream.read_exact(&mut payload)?;
    Ok(Some((header, payload)))
}

/// Writes `bytes` to `stream` (a frame, several frames, or garbage).
pub fn write(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)
}
