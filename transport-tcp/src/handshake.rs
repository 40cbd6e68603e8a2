//! The first bytes on every data connection: who is connecting to which session, as which stream.
//!
//! Pure encode/decode, no sockets. The connecting side sends a 48-byte hello; the listening side
//! answers with an 8-byte ack when it accepted the connection, and closes it otherwise (saying
//! nothing about why to a peer that may not hold the token). Layout (little endian):
//!
//! ```text
//! hello: 0         8          10            12            14         16          48
//!        | BLITDATA | version u16 | index u16 | count u16 | 0 u16 | token [32] |
//! ack:   0       6          8
//!        | BLITOK | version u16 |
//! ```

use crate::config::STREAMS_MAX;
use crate::token::TOKEN_BYTES;

pub const HELLO_BYTES: usize = 48;
pub const ACK_BYTES: usize = 8;
pub const PROTOCOL_VERSION: u16 = 1;
const HELLO_MAGIC: [u8; 8] = *b"BLITDATA";
const ACK_MAGIC: [u8; 6] = *b"BLITOK";

const _: () = assert!(16 + TOKEN_BYTES == HELLO_BYTES);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a blit data connection (bad magic)")]
    Magic,
    #[error("protocol version {got} is not supported (this end speaks {PROTOCOL_VERSION})")]
    Version { got: u16 },
    #[error("reserved handshake field is {0:#06x}, expected 0")]
    Reserved(u16),
    #[error("stream count {count} is outside 1..={STREAMS_MAX}")]
    StreamCount { count: u16 },
    #[error("stream index {index} is not below the stream count {count}")]
    StreamIndex { index: u16, count: u16 },
    #[error("wrong session token")]
    Token,
    #[error("stream count {got} does not match the session's {expected}")]
    CountMismatch { got: u16, expected: u32 },
    #[error("stream {index} is already connected")]
    Duplicate { index: u16 },
    #[error("bad acknowledgement")]
    Ack,
}

/// A decoded, structurally valid hello. The token is not yet checked: that needs the session's
/// token and a constant-time comparison (see [`crate::DataListener::accept_streams`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub stream_index: u16,
    pub stream_count: u16,
    pub token: [u8; TOKEN_BYTES],
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..8].copy_from_slice(&HELLO_MAGIC);
        b[8..10].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&self.stream_index.to_le_bytes());
        b[12..14].copy_from_slice(&self.stream_count.to_le_bytes());
        // 14..16 reserved, zero.
        b[16..48].copy_from_slice(&self.token);
        b
    }

    /// Decodes what a peer sent; any byte pattern gives a value or an error, never a panic.
    pub fn decode(b: &[u8; HELLO_BYTES]) -> Result<Hello, HandshakeError> {
        if b[0..8] != HELLO_MAGIC {
            return Err(HandshakeError::Magic);
        }
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let version = u16_at(8);
        if version != PROTOCOL_VERSION {
            return Err(HandshakeError::Version { got: version });
        }
        let (stream_index, stream_count, reserved) = (u16_at(10), u16_at(12), u16_at(14));
        if reserved != 0 {
            return Err(HandshakeError::Reserved(reserved));
        }
        if stream_count == 0 || u32::from(stream_count) > STREAMS_MAX {
            return Err(HandshakeError::StreamCount { count: stream_count });
        }
        if stream_index >= stream_count {
            return Err(HandshakeError::StreamIndex { index: stream_index, count: stream_count });
        }
        let mut token = [0u8; TOKEN_BYTES];
        token.copy_from_slice(&b[16..48]);
        Ok(Hello { stream_index, stream_count, token })
    }
}

pub fn encode_ack() -> [u8; ACK_BYTES] {
    let mut b = [0u8; ACK_BYTES];
    b[0..6].copy_from_slice(&ACK_MAGIC);
    b[6..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b
}

pub fn check_ack(b: &[u8; ACK_BYTES]) -> Result<(), HandshakeError> {
    if b[0..6] != ACK_MAGIC {
        return Err(HandshakeError::Ack);
    }
    let version = u16::from_le_bytes([b[6], b[7]]);
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { got: version });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Hello {
        Hello { stream_index: 2, stream_count: 4, token: [0xab; TOKEN_BYTES] }
    }

    #[test]
    fn hello_roundtrip() {
        let h = hello();
        let b = h.encode();
        assert_eq!(&b[0..8], b"BLITDATA");
        assert_eq!(Hello::decode(&b).unwrap(), h);
    }

    #[test]
    fn bad_hellos_are_refused() {
        let patch = |at: usize, bytes: &[u8]| {
            let mut b = hello().encode();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            Hello::decode(&b).unwrap_err()
        };
        assert_eq!(patch(0, b"GET / HT"), HandshakeError::Magic);
        assert_eq!(patch(8, &2u16.to_le_bytes()), HandshakeError::Version { got: 2 });
        assert_eq!(patch(14, &1u16.to_le_bytes()), HandshakeError::Reserved(1));
        assert_eq!(patch(12, &0u16.to_le_bytes()), HandshakeError::StreamCount { count: 0 });
        assert_eq!(patch(12, &65u16.to_le_bytes()), HandshakeError::StreamCount { count: 65 });
        assert_eq!(
            patch(10, &4u16.to_le_bytes()),
            HandshakeError::StreamIndex { index: 4, count: 4 }
        );
        assert_eq!(Hello::decode(&[0; HELLO_BYTES]).unwrap_err(), HandshakeError::Magic);
    }

    #[test]
    fn ack_roundtrip() {
        check_ack(&encode_ack()).unwrap();
        let mut b = encode_ack();
        b[0] = b'X';
        assert_eq!(check_ack(&b).unwrap_err(), HandshakeError::Ack);
        let mut b = encode_ack();
        b[6] = 9;
        assert_eq!(check_ack(&b).unwrap_err(), HandshakeError::Version { got: 9 });
    }

    proptest! {
        /// Anything a peer sends decodes to an in-bounds hello or is refused, never a panic.
        #[test]
        fn hello_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), HELLO_BYTES)) {
            let mut b = [0u8; HELLO_BYTES];
            b.copy_from_slice(&bytes);
            if let Ok(h) = Hello::decode(&b) {
                prop_assert!(h.stream_index < h.stream_count);
                prop_assert!(u32::from(h.stream_count) <= STREAMS_MAX);
                prop_assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
            }
        }

        /// The same, for inputs that get past the magic (random bytes almost never do).
        #[test]
        fn hello_decode_after_magic_never_panics(tail in proptest::collection::vec(any::<u8>(), HELLO_BYTES - 8)) {
            let mut b = [0u8; HELLO_BYTES];
            b[0..8].copy_from_slice(&HELLO_MAGIC);
            b[8..].copy_from_slice(&tail);
            let _ = Hello::decode(&b);
        }

        #[test]
        fn ack_check_never_panics(bytes in proptest::array::uniform8(any::<u8>())) {
            let _ = check_ack(&bytes);
        }

        #[test]
        fn valid_hellos_roundtrip(count in 1u16..=64, index_seed in any::<u16>(), token in proptest::array::uniform32(any::<u8>())) {
            let h = Hello { stream_index: index_seed % count, stream_count: count, token };
            prop_assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        }
    }
}
