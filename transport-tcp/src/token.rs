//! The one-time secret that admits a data connection to a session.
//!
//! The daemon makes a fresh token per session, tells the peer over the (authenticated) control
//! connection, and accepts only data connections that present it. It owns no sockets; comparing
//! is constant time so a peer cannot learn the token byte by byte from response timing.

use std::fmt;
use std::str::FromStr;

pub const TOKEN_BYTES: usize = 32;
const TOKEN_HEX_CHARS: usize = 2 * TOKEN_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the system random source failed: {0}")]
    Random(String),
    #[error("a session token is {TOKEN_HEX_CHARS} hex digits, got {chars} characters")]
    Length { chars: usize },
    #[error("session token has a non-hex character at position {at}")]
    Digit { at: usize },
}

/// 32 random bytes. `Debug` never prints them.
#[derive(Clone)]
pub struct SessionToken([u8; TOKEN_BYTES]);

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

impl SessionToken {
    /// A fresh token from the kernel's random source (`getrandom(2)`).
    pub fn random() -> Result<Self, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        let mut filled = 0;
        while filled < TOKEN_BYTES {
            match rustix::rand::getrandom(
                &mut bytes[filled..],
                rustix::rand::GetRandomFlags::empty(),
            ) {
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(TokenError::Random(e.to_string())),
            }
        }
        Ok(SessionToken(bytes))
    }

    pub fn from_bytes(bytes: [u8; TOKEN_BYTES]) -> Self {
        SessionToken(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; TOKEN_BYTES] {
        &self.0
    }

    /// Lower-case hex, for the control plane.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(TOKEN_HEX_CHARS);
        for b in self.0 {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s
    }

    /// Parses exactly 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, TokenError> {
        let b = s.as_bytes();
        if b.len() != TOKEN_HEX_CHARS {
            return Err(TokenError::Length { chars: s.chars().count() });
        }
        let nibble = |at: usize| -> Result<u8, TokenError> {
            match b[at] {
                c @ b'0'..=b'9' => Ok(c - b'0'),
                c @ b'a'..=b'f' => Ok(c - b'a' + 10),
                c @ b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(TokenError::Digit { at }),
            }
        };
        let mut bytes = [0u8; TOKEN_BYTES];
        for (i, out) in bytes.iter_mut().enumerate() {
            *out = (nibble(2 * i)? << 4) | nibble(2 * i + 1)?;
        }
        Ok(SessionToken(bytes))
    }

    /// Constant-time comparison: the time taken does not depend on where the bytes differ.
    pub fn ct_eq(&self, presented: &[u8; TOKEN_BYTES]) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(presented) {
            // black_box keeps the optimiser from turning the fold into an early-exit compare.
            diff |= std::hint::black_box(a ^ b);
        }
        std::hint::black_box(diff) == 0
    }
}

impl FromStr for SessionToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionToken::from_hex(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn random_tokens_differ_and_roundtrip() {
        let a = SessionToken::random().unwrap();
        let b = SessionToken::random().unwrap();
        assert!(!a.ct_eq(b.as_bytes()));
        assert!(a.ct_eq(a.as_bytes()));
        let hex = a.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(SessionToken::from_hex(&hex).unwrap().ct_eq(a.as_bytes()));
        assert!(hex.parse::<SessionToken>().unwrap().ct_eq(a.as_bytes()));
        assert!(SessionToken::from_hex(&hex.to_uppercase()).unwrap().ct_eq(a.as_bytes()));
        assert_eq!(format!("{a:?}"), "SessionToken(<redacted>)");
    }

    #[test]
    fn bad_hex_is_refused() {
        assert_eq!(SessionToken::from_hex("abc").unwrap_err(), TokenError::Length { chars: 3 });
        let mut s = "0".repeat(64);
        s.replace_range(10..11, "g");
        assert_eq!(SessionToken::from_hex(&s).unwrap_err(), TokenError::Digit { at: 10 });
        // Multi-byte characters must not panic on slicing.
        let s = "é".repeat(32);
        assert!(SessionToken::from_hex(&s).is_err());
    }

    #[test]
    fn one_differing_byte_anywhere_fails_the_comparison() {
        let t = SessionToken::from_bytes([7; TOKEN_BYTES]);
        for i in 0..TOKEN_BYTES {
            let mut other = [7; TOKEN_BYTES];
            other[i] ^= 1;
            assert!(!t.ct_eq(&other));
        }
    }

    proptest! {
        #[test]
        fn from_hex_never_panics(s in ".{0,80}") {
            let _ = SessionToken::from_hex(&s);
        }
    }
}
