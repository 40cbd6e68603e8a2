//! What a decision changes at the target, attribute by attribute (`--itemize-changes`). Pure.

use blitx_core::itemize::Changes;
use blitx_core::manifest::{Entry, EntryKind, TargetEntry};
use blitx_core::session::Compare;

/// The attributes of `target` that differ from `source` (all of them new when the target has no
/// entry of the same kind). `owner`: owners are compared (they can be set at the target).
pub fn changes(
    source: &Entry,
    target: Option<&TargetEntry>,
    compare: Compare,
    owner: bool,
) -> Changes {
    let Some(t) = target.filter(|t| t.kind == source.kind) else {
        return Changes::new(source.kind, Changes::NEW);
    };
    let mut flags = 0;
    let file = source.kind == EntryKind::File;
    if file && t.size_bytes != source.size_bytes {
        flags |= Changes::SIZE;
    }
    if file
        && compare == Compare::Checksum
        && t.size_bytes == source.size_bytes
        && t.content_hash != source.content_hash
    {
        flags |= Changes::CHECKSUM;
    }
    if t.mtime != source.mtime {
        flags |= Changes::TIME;
    }
    // Symlinks have no mode of their own on Linux.
    if source.kind != EntryKind::Symlink && t.mode & 0o7777 != source.mode & 0o7777 {
        flags |= Changes::PERMS;
    }
    if owner && t.uid != source.uid {
        flags |= Changes::OWNER;
    }
    if owner && t.gid != source.gid {
        flags |= Changes::GROUP;
    }
    Changes::new(source.kind, flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_core::RelPath;
    use blitx_core::manifest::Timestamp;

    fn source(kind: EntryKind) -> Entry {
        let mut e = Entry::new(1, RelPath::parse_str("a/f").expect("path"), kind);
        e.size_bytes = 10;
        e.mtime = Timestamp { sec: 5, nsec: 0 };
        e.mode = 0o644;
        e
    }

    fn target_of(e: &Entry) -> TargetEntry {
        let mut t = TargetEntry::new(b"f".to_vec(), e.kind);
        t.size_bytes = e.size_bytes;
        t.mtime = e.mtime;
        t.mode = e.mode;
        t.uid = e.uid;
        t.gid = e.gid;
        t
    }

    #[test]
    fn each_attribute_is_named_once_and_new_entries_are_new() {
        let s = source(EntryKind::File);
        assert_eq!(
            changes(&s, None, Compare::SizeMtime, true),
            Changes::new(EntryKind::File, Changes::NEW)
        );
        let mut t = target_of(&s);
        assert_eq!(changes(&s, Some(&t), Compare::SizeMtime, true).bits() & 0x1ff, 0);
        t.size_bytes = 11;
        t.mtime.sec = 6;
        t.mode = 0o600;
        t.uid = 7;
        let c = changes(&s, Some(&t), Compare::SizeMtime, true);
        assert!(c.has(Changes::SIZE) && c.has(Changes::TIME) && c.has(Changes::PERMS));
        assert!(c.has(Changes::OWNER) && !c.has(Changes::GROUP) && !c.has(Changes::NEW));
        assert!(!changes(&s, Some(&t), Compare::SizeMtime, false).has(Changes::OWNER));
        // Another kind of entry under the name: all new.
        let dir = TargetEntry::new(b"f".to_vec(), EntryKind::Dir);
        assert!(changes(&s, Some(&dir), Compare::SizeMtime, true).has(Changes::NEW));
    }

    #[test]
    fn checksum_is_named_when_contents_differ_at_equal_size() {
        let mut s = source(EntryKind::File);
        s.content_hash = Some(1);
        let mut t = target_of(&s);
        t.content_hash = Some(2);
        assert!(changes(&s, Some(&t), Compare::Checksum, true).has(Changes::CHECKSUM));
        assert!(!changes(&s, Some(&t), Compare::SizeMtime, true).has(Changes::CHECKSUM));
    }
}
