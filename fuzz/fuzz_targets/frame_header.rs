//! `FrameHeader::decode` and `parse_bundle` (core/src/frame.rs) on what a data-plane peer sends.
//!
//! Input: 4 bytes of `max_payload_bytes` (little endian), a 32-byte header, then a payload that
//! is parsed as a bundle. Checks: decoding never panics; an accepted header respects the limit
//! and encodes back to the very same bytes, and `verify` accepts the payload exactly when its
//! checksum matches (or the frame is unchecked); any header we build survives encode/decode; an
//! accepted bundle's items lie inside the payload, back to back, and fill it exactly.
#![no_main]

use blitx_core::frame::{
    BUNDLE_FILES_MAX, FLAG_UNCHECKED, FRAME_HEADER_BYTES, FrameError, FrameHeader, FrameKind,
    bundle_index_bytes, checksum, parse_bundle, write_bundle_index,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((max, rest)) = data.split_first_chunk::<4>() else { return };
    let max_payload_bytes = u32::from_le_bytes(*max);
    let Some((header, payload)) = rest.split_first_chunk::<FRAME_HEADER_BYTES>() else { return };
    header_decode(header, max_payload_bytes, payload);
    header_encode(header, max_payload_bytes);
    bundle(payload);
});

fn header_decode(bytes: &[u8; FRAME_HEADER_BYTES], max_payload_bytes: u32, payload: &[u8]) {
    let Ok(h) = FrameHeader::decode(bytes, max_payload_bytes) else { return };
    assert!(h.len_bytes <= max_payload_bytes, "accepted {h:?} above {max_payload_bytes}");
    if matches!(h.kind, FrameKind::Hole | FrameKind::End) {
        assert_eq!(h.len_bytes, 0, "accepted a payload on {h:?}");
    }
    if h.kind == FrameKind::Hole {
        // The run length is the peer's u64: at least one chunk, never more than it said.
        let n = h.hole_chunks();
        assert!(n >= 1 && (h.checksum == 0 || n == h.checksum), "hole of {n} chunks from {h:?}");
    }
    assert_eq!(&h.encode(), bytes, "decode/encode changed the header");
    let unchecked = h.flags & FLAG_UNCHECKED != 0;
    let verified = h.verify(payload).is_ok();
    assert_eq!(verified, unchecked || checksum(payload) == h.checksum, "verify disagrees");
}

/// The same bytes read as the fields of a header we send: encode, then decode with a limit
/// that admits it, gives the header back.
fn header_encode(bytes: &[u8; FRAME_HEADER_BYTES], max_payload_bytes: u32) {
    let le64 = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let kind = match bytes[1] % 6 {
        0 => FrameKind::Chunk,
        1 => FrameKind::Hole,
        2 => FrameKind::Bundle,
        3 => FrameKind::Same,
        4 => FrameKind::Delta,
        _ => FrameKind::End,
    };
    let len_bytes = match kind {
        FrameKind::Hole | FrameKind::Same | FrameKind::End => 0,
        FrameKind::Chunk | FrameKind::Bundle | FrameKind::Delta => {
            u32::from_le_bytes([bytes[4], bytes[5], 0, 0])
        }
    };
    let h = FrameHeader {
        kind,
        flags: u16::from_le_bytes([bytes[2], bytes[3]]),
        file_id: le64(8),
        offset_bytes: le64(16),
        len_bytes,
        checksum: le64(24),
    };
    assert_eq!(FrameHeader::decode(&h.encode(), len_bytes.max(max_payload_bytes)), Ok(h));
    if len_bytes > 0 {
        assert!(matches!(
            FrameHeader::decode(&h.encode(), len_bytes - 1),
            Err(FrameError::TooLong { .. })
        ));
    }
}

fn bundle(payload: &[u8]) {
    let Ok(items) = parse_bundle(payload) else { return };
    assert!(items.len() <= BUNDLE_FILES_MAX);
    let index_bytes = bundle_index_bytes(items.len());
    let mut next = index_bytes;
    for it in &items {
        assert_eq!(it.data_offset, next, "bundle items are not back to back");
        let end = it.data_offset.checked_add(it.len_bytes as usize);
        assert!(end.is_some_and(|end| end <= payload.len()), "{it:?} runs past the payload");
        let _file_bytes = &payload[it.data_offset..it.data_offset + it.len_bytes as usize];
        next = it.data_offset + it.len_bytes as usize;
    }
    assert_eq!(next, payload.len(), "an accepted bundle leaves bytes over");
    // Writing the index of what was parsed gives the payload's index back (but the reserved
    // word, which the parser ignores).
    let records: Vec<_> = items.iter().map(|it| (it.file_id, it.len_bytes, it.flags)).collect();
    let mut index = vec![0u8; index_bytes];
    assert_eq!(write_bundle_index(&mut index, &records), index_bytes);
    assert_eq!(index[..4], payload[..4]);
    assert_eq!(index[8..], payload[8..index_bytes]);
}
