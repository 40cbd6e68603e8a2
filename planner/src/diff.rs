//! Deciding, per path, what the target needs. Pure: the caller supplies both listings.
//!
//! [`Differ::diff_dir`] takes one source directory listing and the target's listing of the
//! same directory and returns a decision per source entry plus, in mirror mode, the target names
//! to delete. Hard links are tracked across directories by the differ's [`HardlinkTracker`].

use std::collections::HashMap;

use blitx_core::RelPath;
use blitx_core::manifest::{Entry, EntryKind, TargetEntry};
use blitx_core::session::Compare;

use crate::filter::Filters;
use crate::hardlink::{HardlinkTracker, LinkRole};

/// Answers whether a name is in the source's complete listing of a directory.
pub type NameInSource<'a> = dyn Fn(&[u8]) -> bool + 'a;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffOptions {
    pub compare: Compare,
    pub mirror: bool,
    /// Owner and group are part of "up to date" (only when the target can set them).
    pub owner: bool,
}

/// What to do with one source entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Already up to date.
    Skip,
    /// Contents must be transferred.
    CopyFile,
    /// Contents are current; mode, times or owner must be set.
    FixMeta,
    MakeDir,
    /// The directory exists; its metadata is applied when the transfer finalizes.
    KeepDir,
    MakeSymlink,
    /// A hard link to `leader`, an earlier source path with the same inode; made at the end,
    /// once the leader is in place.
    Hardlink {
        leader: RelPath,
    },
    /// A FIFO, socket or device node (made by `mknod`, as `rsync -D` does; whether a device
    /// node may be made is the target's decision).
    MakeSpecial,
    /// Not copied (a special file of no known type); reported.
    Unsupported,
}

/// What has to be removed from the target before the action can happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clear {
    Nothing,
    /// A file or symlink stands where a directory must go.
    NonDir,
    /// A directory stands where a file or symlink must go; `recursive` only in mirror mode
    /// (otherwise only an empty directory is removed, as rsync does).
    Dir {
        recursive: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub clear: Clear,
}

/// Decisions for one directory, index-aligned with the source listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirPlan {
    pub decisions: Vec<Decision>,
    /// Mirror mode: target names absent from the source (and not protected by the filters),
    /// with their kinds.
    pub deletions: Vec<(Vec<u8>, EntryKind)>,
}

/// True when `--checksum` needs the target file's hash to decide (sizes equal, both files).
pub fn needs_target_hash(compare: Compare, source: &Entry, target: &TargetEntry) -> bool {
    compare == Compare::Checksum
        && source.kind == EntryKind::File
        && target.kind == EntryKind::File
        && source.size_bytes == target.size_bytes
}

#[derive(Debug)]
pub struct Differ {
    opts: DiffOptions,
    filters: Filters,
    links: HardlinkTracker,
}

impl Differ {
    pub fn new(opts: DiffOptions, filters: Filters) -> Self {
        Differ { opts, filters, links: HardlinkTracker::default() }
    }

    pub fn options(&self) -> DiffOptions {
        self.opts
    }

    /// The session's filters (the deletions' shell asks them about what lies below a deleted
    /// directory).
    pub fn filters(&self) -> &Filters {
        &self.filters
    }

    /// Decides for every entry of `source` (a listing of `dir`, or one part of a longer one)
    /// against `target` (everything the target has in `dir`). In mirror mode, deletions are
    /// computed only when `deletions_for` is given: it answers whether a name is in the source's
    /// *complete* listing of `dir`, so a partial listing can never cause a deletion.
    pub fn diff_dir(
        &mut self,
        dir: &RelPath,
        source: &[Entry],
        target: &[TargetEntry],
        deletions_for: Option<&NameInSource<'_>>,
    ) -> DirPlan {
        let by_name: HashMap<&[u8], &TargetEntry> =
            target.iter().map(|t| (t.name.as_slice(), t)).collect();
        let mut decisions = Vec::with_capacity(source.len());
        for entry in source {
            let t = by_name.get(entry.path.file_name()).copied();
            decisions.push(self.decide(entry, t));
        }
        let mut deletions = Vec::new();
        if self.opts.mirror
            && let Some(in_source) = deletions_for
        {
            for t in target {
                if in_source(&t.name) {
                    continue;
                }
                let Ok(path) = dir.join(&t.name) else { continue };
                if !self.filters.deletable(&path, t.kind, t.size_bytes) {
                    continue;
                }
                deletions.push((t.name.clone(), t.kind));
            }
        }
        DirPlan { decisions, deletions }
    }

    /// Decides for one source entry given what the target has under the same name.
    pub fn decide(&mut self, source: &Entry, target: Option<&TargetEntry>) -> Decision {
        let clear_dir = Clear::Dir { recursive: self.opts.mirror };
        let d = |action, clear| Decision { action, clear };
        match source.kind {
            EntryKind::Special if source.special.is_none() => {
                d(Action::Unsupported, Clear::Nothing)
            }
            EntryKind::Special => match target {
                Some(t) if t.kind == EntryKind::Special && t.special == source.special => {
                    if self.meta_matches(source, t) {
                        d(Action::Skip, Clear::Nothing)
                    } else {
                        d(Action::FixMeta, Clear::Nothing)
                    }
                }
                Some(t) if t.kind == EntryKind::Dir => d(Action::MakeSpecial, clear_dir),
                _ => d(Action::MakeSpecial, Clear::Nothing),
            },
            EntryKind::Dir => match target {
                None => d(Action::MakeDir, Clear::Nothing),
                Some(t) if t.kind == EntryKind::Dir => d(Action::KeepDir, Clear::Nothing),
                Some(_) => d(Action::MakeDir, Clear::NonDir),
            },
            EntryKind::Symlink => match target {
                Some(t) if t.kind == EntryKind::Symlink && t.link_target == source.link_target => {
                    if t.mtime == source.mtime && self.owner_matches(source, t) {
                        d(Action::Skip, Clear::Nothing)
                    } else {
                        d(Action::FixMeta, Clear::Nothing)
                    }
                }
                Some(t) if t.kind == EntryKind::Dir => d(Action::MakeSymlink, clear_dir),
                _ => d(Action::MakeSymlink, Clear::Nothing),
            },
            EntryKind::File => {
                let clear = match target {
                    Some(t) if t.kind == EntryKind::Dir => clear_dir,
                    _ => Clear::Nothing,
                };
                if let Some(key) = source.inode {
                    match self.links.observe(key, &source.path, target.and_then(|t| t.inode)) {
                        LinkRole::Leader => {}
                        LinkRole::AlreadyLinked => return d(Action::Skip, Clear::Nothing),
                        LinkRole::Follower { leader } => {
                            return d(Action::Hardlink { leader }, clear);
                        }
                    }
                    let decision = self.decide_file(source, target, clear);
                    if decision.action == Action::CopyFile {
                        // The leader is renamed over with a new file: no name linked to its
                        // old inode is linked to the new one.
                        self.links.set_leader_target(key, None);
                    }
                    return decision;
                }
                self.decide_file(source, target, clear)
            }
        }
    }

    /// A regular file that is not a hard link's follower.
    fn decide_file(&self, source: &Entry, target: Option<&TargetEntry>, clear: Clear) -> Decision {
        let d = |action, clear| Decision { action, clear };
        let Some(t) = target.filter(|t| t.kind == EntryKind::File) else {
            return d(Action::CopyFile, clear);
        };
        let content_same = match self.opts.compare {
            Compare::SizeMtime => t.size_bytes == source.size_bytes && t.mtime == source.mtime,
            Compare::Checksum => {
                t.size_bytes == source.size_bytes
                    && t.content_hash.is_some()
                    && t.content_hash == source.content_hash
            }
        };
        if !content_same {
            d(Action::CopyFile, Clear::Nothing)
        } else if self.meta_matches(source, t) {
            d(Action::Skip, Clear::Nothing)
        } else {
            d(Action::FixMeta, Clear::Nothing)
        }
    }

    /// Times, mode, owner and extended attributes (when the target read its own: a change of
    /// attributes alone is a metadata update, as with `rsync -X`).
    fn meta_matches(&self, source: &Entry, t: &TargetEntry) -> bool {
        t.mtime == source.mtime
            && t.mode == source.mode
            && self.owner_matches(source, t)
            && t.xattrs.as_ref().is_none_or(|x| *x == source.xattrs)
    }

    fn owner_matches(&self, source: &Entry, target: &TargetEntry) -> bool {
        !self.opts.owner || (source.uid == target.uid && source.gid == target.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_core::manifest::{InodeKey, Timestamp};
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn src(name: &str, kind: EntryKind, size: u64, mtime: i64) -> Entry {
        Entry {
            id: 0,
            path: RelPath::parse_str(name).unwrap(),
            kind,
            size_bytes: size,
            mtime: Timestamp { sec: mtime, nsec: 0 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            link_target: (kind == EntryKind::Symlink).then(|| b"t".to_vec()),
            inode: None,
            sparse: false,
            content_hash: None,
            xattrs: Vec::new(),
            special: None,
        }
    }

    fn tgt(name: &str, kind: EntryKind, size: u64, mtime: i64) -> TargetEntry {
        TargetEntry {
            name: name.as_bytes().to_vec(),
            kind,
            size_bytes: size,
            mtime: Timestamp { sec: mtime, nsec: 0 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            link_target: (kind == EntryKind::Symlink).then(|| b"t".to_vec()),
            inode: None,
            content_hash: None,
            xattrs: None,
            special: None,
        }
    }

    fn differ(compare: Compare, mirror: bool) -> Differ {
        Differ::new(DiffOptions { compare, mirror, owner: true }, Filters::default())
    }

    #[test]
    fn quick_check() {
        let mut d = differ(Compare::SizeMtime, false);
        let s = src("f", EntryKind::File, 10, 5);
        assert_eq!(d.decide(&s, None).action, Action::CopyFile);
        assert_eq!(d.decide(&s, Some(&tgt("f", EntryKind::File, 10, 5))).action, Action::Skip);
        assert_eq!(d.decide(&s, Some(&tgt("f", EntryKind::File, 10, 6))).action, Action::CopyFile);
        assert_eq!(d.decide(&s, Some(&tgt("f", EntryKind::File, 11, 5))).action, Action::CopyFile);
        let mut t = tgt("f", EntryKind::File, 10, 5);
        t.mode = 0o600;
        assert_eq!(d.decide(&s, Some(&t)).action, Action::FixMeta);
    }

    /// Issue 19: a change of extended attributes alone is a metadata update (rsync -X), and
    /// a target that did not read its attributes is not taken to differ.
    #[test]
    fn xattr_only_changes_fix_metadata() {
        use blitx_core::manifest::Xattr;
        let mut d = differ(Compare::SizeMtime, false);
        let mut s = src("f", EntryKind::File, 10, 5);
        s.xattrs = vec![Xattr { name: b"user.a".to_vec(), value: b"1".to_vec() }];
        let mut t = tgt("f", EntryKind::File, 10, 5);
        assert_eq!(d.decide(&s, Some(&t)).action, Action::Skip);
        t.xattrs = Some(Vec::new());
        assert_eq!(d.decide(&s, Some(&t)).action, Action::FixMeta);
        t.xattrs = Some(s.xattrs.clone());
        assert_eq!(d.decide(&s, Some(&t)).action, Action::Skip);
    }

    #[test]
    fn special_files_are_made_and_kept() {
        use blitx_core::manifest::Special;
        let mut d = differ(Compare::SizeMtime, false);
        let mut s = src("p", EntryKind::Special, 0, 5);
        assert_eq!(d.decide(&s, None).action, Action::Unsupported);
        s.special = Some(Special::Fifo);
        assert_eq!(d.decide(&s, None).action, Action::MakeSpecial);
        let mut t = tgt("p", EntryKind::Special, 0, 5);
        t.special = Some(Special::Fifo);
        assert_eq!(d.decide(&s, Some(&t)).action, Action::Skip);
        t.mtime.sec = 6;
        assert_eq!(d.decide(&s, Some(&t)).action, Action::FixMeta);
        t.special = Some(Special::Char { rdev: 259 });
        assert_eq!(d.decide(&s, Some(&t)).action, Action::MakeSpecial);
        let r = d.decide(&s, Some(&tgt("p", EntryKind::Dir, 0, 5)));
        assert_eq!(
            r,
            Decision { action: Action::MakeSpecial, clear: Clear::Dir { recursive: false } }
        );
    }

    #[test]
    fn checksum_compare() {
        let mut d = differ(Compare::Checksum, false);
        let mut s = src("f", EntryKind::File, 10, 5);
        s.content_hash = Some(1);
        let mut t = tgt("f", EntryKind::File, 10, 9);
        t.content_hash = Some(1);
        assert!(needs_target_hash(Compare::Checksum, &s, &t));
        assert_eq!(d.decide(&s, Some(&t)).action, Action::FixMeta);
        t.content_hash = Some(2);
        assert_eq!(d.decide(&s, Some(&t)).action, Action::CopyFile);
    }

    #[test]
    fn kind_changes_clear_first() {
        let mut d = differ(Compare::SizeMtime, false);
        let dir = src("x", EntryKind::Dir, 0, 0);
        let r = d.decide(&dir, Some(&tgt("x", EntryKind::File, 1, 1)));
        assert_eq!(r, Decision { action: Action::MakeDir, clear: Clear::NonDir });
        let file = src("x", EntryKind::File, 1, 1);
        let r = d.decide(&file, Some(&tgt("x", EntryKind::Dir, 0, 0)));
        assert_eq!(r.clear, Clear::Dir { recursive: false });
        let mut m = differ(Compare::SizeMtime, true);
        let r = m.decide(&file, Some(&tgt("x", EntryKind::Dir, 0, 0)));
        assert_eq!(r.clear, Clear::Dir { recursive: true });
    }

    #[test]
    fn hardlinks_follow_leader() {
        let mut d = differ(Compare::SizeMtime, false);
        let key = InodeKey { dev: 1, ino: 2 };
        let mut a = src("a", EntryKind::File, 3, 1);
        a.inode = Some(key);
        let mut b = src("b", EntryKind::File, 3, 1);
        b.inode = Some(key);
        assert_eq!(d.decide(&a, None).action, Action::CopyFile);
        assert_eq!(
            d.decide(&b, None).action,
            Action::Hardlink { leader: RelPath::parse_str("a").unwrap() }
        );
    }

    fn linked(name: &str, key: InodeKey) -> Entry {
        let mut e = src(name, EntryKind::File, 3, 1);
        e.inode = Some(key);
        e
    }

    fn on_inode(name: &str, size: u64, ino: u64) -> TargetEntry {
        let mut t = tgt(name, EntryKind::File, size, 1);
        t.inode = Some(InodeKey { dev: 9, ino });
        t
    }

    #[test]
    fn a_name_linked_to_a_leader_that_is_replaced_is_linked_again() {
        // Found by the simulator: `b` shared the old `a`'s inode, `a` is copied anew (a new
        // inode), so `b` must be linked to the new one, not left on the old contents.
        let mut d = differ(Compare::SizeMtime, false);
        let key = InodeKey { dev: 1, ino: 2 };
        assert_eq!(
            d.decide(&linked("a", key), Some(&on_inode("a", 2, 7))).action,
            Action::CopyFile
        );
        assert_eq!(
            d.decide(&linked("b", key), Some(&on_inode("b", 2, 7))).action,
            Action::Hardlink { leader: RelPath::parse_str("a").unwrap() }
        );
        // Up to date, the leader keeps its inode: a name already on it stays.
        let mut d = differ(Compare::SizeMtime, false);
        assert_eq!(d.decide(&linked("a", key), Some(&on_inode("a", 3, 7))).action, Action::Skip);
        assert_eq!(d.decide(&linked("b", key), Some(&on_inode("b", 3, 7))).action, Action::Skip);
    }

    #[test]
    fn a_follower_never_changes_what_the_leader_is_compared_with() {
        // Found by the simulator: `b` on another inode once made `c` (on `b`'s inode) count as
        // linked to the leader `a`.
        let mut d = differ(Compare::SizeMtime, false);
        let key = InodeKey { dev: 1, ino: 2 };
        let a = RelPath::parse_str("a").unwrap();
        assert_eq!(d.decide(&linked("a", key), Some(&on_inode("a", 3, 7))).action, Action::Skip);
        let follower = Action::Hardlink { leader: a };
        assert_eq!(d.decide(&linked("b", key), Some(&on_inode("b", 3, 8))).action, follower);
        assert_eq!(d.decide(&linked("c", key), Some(&on_inode("c", 3, 8))).action, follower);
    }

    #[test]
    fn excluded_target_paths_are_not_deleted() {
        let ex = Filters::excluding(&["*.keep"]).unwrap();
        let mut d = Differ::new(
            DiffOptions { compare: Compare::SizeMtime, mirror: true, owner: false },
            ex,
        );
        let target = vec![tgt("old", EntryKind::File, 1, 1), tgt("x.keep", EntryKind::File, 1, 1)];
        let none: &dyn Fn(&[u8]) -> bool = &|_| false;
        let plan = d.diff_dir(&RelPath::root(), &[], &target, Some(none));
        assert_eq!(plan.deletions, vec![(b"old".to_vec(), EntryKind::File)]);
    }

    proptest! {
        /// Mirror deletions never name a path that exists in the source listing.
        #[test]
        fn deletions_never_touch_source_paths(
            source in proptest::collection::hash_set("[a-e]{1,2}", 0..12),
            target in proptest::collection::hash_set("[a-e]{1,2}", 0..12),
        ) {
            let mut d = differ(Compare::SizeMtime, true);
            let s: Vec<Entry> = source.iter().map(|n| src(n, EntryKind::File, 1, 1)).collect();
            let t: Vec<TargetEntry> = target.iter().map(|n| tgt(n, EntryKind::File, 2, 1)).collect();
            let names: HashSet<Vec<u8>> = source.iter().map(|n| n.as_bytes().to_vec()).collect();
            let in_source = |n: &[u8]| names.contains(n);
            let plan = d.diff_dir(&RelPath::root(), &s, &t, Some(&in_source));
            for (name, _) in &plan.deletions {
                prop_assert!(!names.contains(name));
            }
            let expected = target.iter().filter(|n| !source.contains(*n)).count();
            prop_assert_eq!(plan.deletions.len(), expected);
        }
    }
}
