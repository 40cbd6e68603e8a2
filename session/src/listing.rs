//! What the source has said about its tree so far, checked as each listing arrives (pure: no
//! file system, no clock).
//!
//! The target acts on a listing only when it is consistent with everything before it:
//! - a listing is of the root or of a directory an earlier listing named *as a directory*,
//!   and the target created or verified it as a directory in this session (a peer cannot name
//!   a symlink `x` and then list `x/dir` to reach outside the target);
//! - a directory is listed once (its parts in a run that ends with `last_part`);
//! - a name appears once per directory per session (a peer cannot name `y` a directory and then
//!   a symlink to have the directory's metadata applied through the link);
//! - the session's entries stay within the operator's limit.
//!
//! Memory: one path per directory announced but not yet listed, one name per entry of a
//! listing still arriving in parts; both are charged to the session's budget by the caller.
//!
//! [`crate::plan::Planning`] runs this check on every listing before it decides anything.

use std::collections::{HashMap, HashSet};

use blitx_core::RelPath;
use blitx_core::manifest::{Entry, FileId};

/// A listing that contradicts what came before: the peer is broken or hostile; the session
/// ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error(
        "a listing of {0}, which no earlier listing named as a directory (or which was listed already)"
    )]
    UnknownDir(RelPath),
    #[error("{0} appears twice in its directory's listing")]
    DuplicateName(RelPath),
    #[error("{path} in the listing of {dir}, which does not hold it")]
    NotInDir { dir: RelPath, path: RelPath },
    #[error("file id {0} appears twice in one listing")]
    DuplicateId(FileId),
    #[error("a second root entry")]
    SecondRoot,
    #[error("the source root is not a directory")]
    RootNotDir,
    /// A single-file session (`blit xfer FILE TARGET`) whose source listed anything but one
    /// regular file in its root.
    #[error("the source of a single-file transfer listed {0}, not one regular file in its root")]
    NotSingleFile(RelPath),
    /// The operator's limit on a session's entries (the shell reports it as a limit, not as
    /// a protocol violation).
    #[error("the source listed more than {limit} entries (the limit for one session)")]
    TooManyEntries { limit: u64 },
}

/// `path` is a direct child of `dir` (one component more, the same before it).
fn child_of(dir: &RelPath, path: &RelPath) -> bool {
    let (d, p) = (dir.as_bytes(), path.as_bytes());
    if d.is_empty() {
        return !p.is_empty() && !p.contains(&b'/');
    }
    p.len() > d.len() + 1
        && p.starts_with(d)
        && p[d.len()] == b'/'
        && !p[d.len() + 1..].contains(&b'/')
}

/// How the target treats a listing that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Diff and apply it.
    Apply,
    /// Its directory could not be created or verified (already reported): skip its entries.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirState {
    /// Named as a directory and created or verified; its listing has not started.
    Ready,
    /// Named as a directory, but it could not be made or verified.
    Failed,
    /// Its listing has started and not ended.
    Open(Verdict),
}

#[derive(Debug, Default)]
pub struct ListingCheck {
    dirs: HashMap<RelPath, DirState>,
    /// Names seen so far in listings still arriving in parts.
    names: HashMap<RelPath, HashSet<Vec<u8>>>,
    root_seen: bool,
    entries: u64,
    entries_max: u64,
}

impl ListingCheck {
    /// `entries_max`: 0 for no limit.
    pub fn new(entries_max: u64) -> Self {
        let mut dirs = HashMap::new();
        dirs.insert(RelPath::root(), DirState::Ready);
        ListingCheck { dirs, entries_max, ..Default::default() }
    }

    /// The root entry (its metadata); only one per session.
    pub fn root(&mut self) -> Result<(), Violation> {
        if std::mem::replace(&mut self.root_seen, true) {
            return Err(Violation::SecondRoot);
        }
        Ok(())
    }

    /// Checks one listing part before anything is applied.
    pub fn listing(
        &mut self,
        dir: &RelPath,
        entries: &[Entry],
        last_part: bool,
    ) -> Result<Verdict, Violation> {
        let verdict = match self.dirs.get(dir).copied() {
            None => return Err(Violation::UnknownDir(dir.clone())),
            Some(DirState::Ready) => Verdict::Apply,
            Some(DirState::Failed) => Verdict::Skip,
            Some(DirState::Open(v)) => v,
        };
        self.entries = self.entries.saturating_add(entries.len() as u64);
        if self.entries_max > 0 && self.entries > self.entries_max {
            return Err(Violation::TooManyEntries { limit: self.entries_max });
        }
        let mut ids = HashSet::with_capacity(entries.len());
        for e in entries {
            if !ids.insert(e.id) {
                return Err(Violation::DuplicateId(e.id));
            }
            // The shell makes `dir/<name>` while this side records the entry's own path: the
            // two must be one (the wire decoder checks this too; every path in must).
            if !child_of(dir, &e.path) {
                return Err(Violation::NotInDir { dir: dir.clone(), path: e.path.clone() });
            }
        }
        if last_part && !self.names.contains_key(dir) {
            // The whole listing in one part (most directories): no names need keeping.
            let mut seen = HashSet::with_capacity(entries.len());
            if let Some(e) = entries.iter().find(|e| !seen.insert(e.path.file_name())) {
                return Err(Violation::DuplicateName(e.path.clone()));
            }
        } else {
            let names = self.names.entry(dir.clone()).or_default();
            for e in entries {
                if !names.insert(e.path.file_name().to_vec()) {
                    return Err(Violation::DuplicateName(e.path.clone()));
                }
            }
        }
        if last_part {
            self.dirs.remove(dir);
            self.names.remove(dir);
        } else {
            self.dirs.insert(dir.clone(), DirState::Open(verdict));
        }
        Ok(verdict)
    }

    /// Records the outcome for a directory entry of an applied (or skipped) listing: `ok` when
    /// the target created or verified it as a directory.
    pub fn directory(&mut self, path: &RelPath, ok: bool) {
        self.dirs.insert(path.clone(), if ok { DirState::Ready } else { DirState::Failed });
    }

    /// Directories named but not yet listed, plus open listings (for accounting and tests).
    pub fn dirs_tracked(&self) -> usize {
        self.dirs.len()
    }

    /// Names held for listings still arriving in parts.
    pub fn names_open(&self) -> usize {
        self.names.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use blitx_core::manifest::EntryKind;

    fn e(id: u64, path: &str, kind: EntryKind) -> Entry {
        Entry {
            mode: 0o755,
            link_target: (kind == EntryKind::Symlink).then(|| b"/etc".to_vec()),
            ..Entry::new(id, RelPath::parse_str(path).unwrap(), kind)
        }
    }

    fn p(s: &str) -> RelPath {
        RelPath::parse_str(s).unwrap()
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_in_a_later_part_is_refused() {
        let mut c = ListingCheck::new(0);
        let root = RelPath::root();
        c.listing(&root, &[e(1, "y", EntryKind::Dir)], false).unwrap();
        let err = c.listing(&root, &[e(2, "y", EntryKind::Symlink)], true).unwrap_err();
        assert_eq!(err, Violation::DuplicateName(p("y")));
    }

    #[test]
    fn listings_below_a_symlink_are_refused() {
        let mut c = ListingCheck::new(0);
        let root = RelPath::root();
        assert_eq!(c.listing(&root, &[e(1, "x", EntryKind::Symlink)], true), Ok(Verdict::Apply));
        let err = c.listing(&p("x"), &[e(2, "x/dir", EntryKind::Dir)], true).unwrap_err();
        assert_eq!(err, Violation::UnknownDir(p("x")));
        assert_eq!(
            c.listing(&p("x/dir"), &[], true).unwrap_err(),
            Violation::UnknownDir(p("x/dir"))
        );
    }

    #[test]
    fn directories_are_listed_once_in_one_run_of_parts() {
        let mut c = ListingCheck::new(0);
        let root = RelPath::root();
        c.listing(&root, &[e(1, "d", EntryKind::Dir)], true).unwrap();
        c.directory(&p("d"), true);
        c.listing(&p("d"), &[e(2, "d/a", EntryKind::File)], false).unwrap();
        c.listing(&p("d"), &[e(3, "d/b", EntryKind::File)], true).unwrap();
        assert_eq!(c.listing(&p("d"), &[], true).unwrap_err(), Violation::UnknownDir(p("d")));
        assert_eq!(c.listing(&root, &[], true).unwrap_err(), Violation::UnknownDir(root));
        assert_eq!((c.dirs_tracked(), c.names_open()), (0, 0));
    }

    #[test]
    fn failed_directories_are_skipped_with_everything_below() {
        let mut c = ListingCheck::new(0);
        c.listing(&RelPath::root(), &[e(1, "d", EntryKind::Dir)], true).unwrap();
        c.directory(&p("d"), false);
        assert_eq!(c.listing(&p("d"), &[e(2, "d/e", EntryKind::Dir)], true), Ok(Verdict::Skip));
        c.directory(&p("d/e"), false);
        assert_eq!(c.listing(&p("d/e"), &[], true), Ok(Verdict::Skip));
    }

    #[test]
    fn duplicate_ids_and_the_entry_limit() {
        let mut c = ListingCheck::new(3);
        let root = RelPath::root();
        let err = c
            .listing(&root, &[e(7, "a", EntryKind::File), e(7, "b", EntryKind::File)], false)
            .unwrap_err();
        assert_eq!(err, Violation::DuplicateId(7));
        let mut c = ListingCheck::new(3);
        c.listing(&root, &[e(1, "a", EntryKind::File), e(2, "b", EntryKind::File)], false).unwrap();
        let err = c
            .listing(&root, &[e(3, "c", EntryKind::File), e(4, "d", EntryKind::File)], true)
            .unwrap_err();
        assert_eq!(err, Violation::TooManyEntries { limit: 3 });
        let mut c = ListingCheck::new(0);
        c.root().unwrap();
        assert_eq!(c.root(), Err(Violation::SecondRoot));
    }

    /// Review of 2026-12-07: an entry whose path is not `dir/<name>` was accepted; the shell
    /// makes `dir/<name>` while the planning records the entry's own path.
    #[test]
    fn entries_outside_their_directory_are_refused() {
        let mut c = ListingCheck::new(0);
        c.root().unwrap();
        let r = c.listing(&RelPath::root(), &[e(1, "other/x", EntryKind::Dir)], true);
        assert!(matches!(r, Err(Violation::NotInDir { .. })), "{r:?}");
        let mut c = ListingCheck::new(0);
        c.root().unwrap();
        c.listing(&RelPath::root(), &[e(1, "d", EntryKind::Dir)], true).unwrap();
        c.directory(&RelPath::parse_str("d").unwrap(), true);
        let d = RelPath::parse_str("d").unwrap();
        for bad in ["x", "d/e/f", "dd/x"] {
            let r = c.listing(&d, &[e(2, bad, EntryKind::File)], false);
            assert!(matches!(r, Err(Violation::NotInDir { .. })), "{bad}: {r:?}");
        }
        assert!(c.listing(&d, &[e(3, "d/x", EntryKind::File)], true).is_ok());
    }
}
