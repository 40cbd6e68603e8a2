//! What changed about one path, for `--itemize-changes` (rsync's `YXcstpoguax` letters): a small
//! bit set carried by events, on the wire as a `uint32`.

use crate::manifest::EntryKind;

/// Which attributes of a path a transfer changed, and what kind of entry it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes(u32);

impl Changes {
    /// The path did not exist at the target (or was another kind of entry).
    pub const NEW: u32 = 1 << 0;
    /// Contents differ by checksum (`--checksum`).
    pub const CHECKSUM: u32 = 1 << 1;
    pub const SIZE: u32 = 1 << 2;
    pub const TIME: u32 = 1 << 3;
    pub const PERMS: u32 = 1 << 4;
    pub const OWNER: u32 = 1 << 5;
    pub const GROUP: u32 = 1 << 6;
    pub const ACL: u32 = 1 << 7;
    pub const XATTR: u32 = 1 << 8;
    const FLAGS: u32 = (1 << 9) - 1;
    const KIND_SHIFT: u32 = 12;

    pub fn new(kind: EntryKind, flags: u32) -> Changes {
        let k = match kind {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
            EntryKind::Special => 3,
        };
        Changes((flags & Self::FLAGS) | (k << Self::KIND_SHIFT))
    }

    /// From the wire: unknown bits are dropped, so a peer cannot make it print garbage.
    pub fn from_bits(bits: u32) -> Changes {
        Changes(bits & (Self::FLAGS | (3 << Self::KIND_SHIFT)))
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    pub fn kind(self) -> EntryKind {
        match (self.0 >> Self::KIND_SHIFT) & 3 {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            _ => EntryKind::Special,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_flags_round_trip_and_stray_bits_are_dropped() {
        let c = Changes::new(EntryKind::Symlink, Changes::TIME | Changes::OWNER);
        assert_eq!(Changes::from_bits(c.bits()), c);
        assert_eq!(c.kind(), EntryKind::Symlink);
        assert!(c.has(Changes::TIME) && c.has(Changes::OWNER) && !c.has(Changes::SIZE));
        let hostile = Changes::from_bits(u32::MAX);
        assert_eq!(hostile.kind(), EntryKind::Special);
        assert_eq!(hostile.bits() & !0x3fff, 0);
    }
}
