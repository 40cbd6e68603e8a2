//! The target's planning: what each source listing means for the target tree, and what is
//! left for the end of the session.
//!
//! It owns, per session: the checks every listing must pass before anything is applied
//! ([`ListingCheck`]: refused and hostile listings), the per-entry verdicts (up to date, needed,
//! fix metadata, make a directory, a hard link — the planner's [`Differ`], run here so its
//! bookkeeping stays with the verdicts), and what waits for what:
//!
//! - a directory's metadata is applied at the end, deepest first, and the root's last, so
//!   nothing changes a directory after its times are set;
//! - a hard link is made at the end, once its first name (the *leader*) is committed; a link
//!   whose leader was not transferred is not made, and reports that;
//! - `--mirror` deletions are the target names of a directory that the source's *complete*
//!   listing lacks (never a listed name, never an excluded one, never the root or anything
//!   above it: a deletion is a name joined below a listed directory); they run at the end,
//!   deepest first, and only when the session had no error at all (a failed file or a walk
//!   error may mean the source listing is not the whole truth). One thing is removed earlier:
//!   a target directory that stands where the source has a file or a symlink is cleared when
//!   its listing is applied (recursively with `--mirror`; without it, only if empty), so a
//!   session that fails later has lost it. Moving it aside and deleting it at the end is not
//!   built yet.
//!
//! No I/O happens here. The shell (`blitx_storage::target::plan`/`finalize`, or the simulator)
//! stats the target's entries, makes directories, clears what is in the way, lists directories
//! for `--mirror`, and carries out the end's links, deletions and metadata, in the order this
//! machine gives them. It runs on the shell's control thread only.

use std::collections::{HashMap, HashSet};

use blitx_core::RelPath;
use blitx_core::manifest::{Entry, EntryKind, FileId, TargetEntry};
use blitx_planner::diff::{Action, Decision, Differ};

use crate::error::{Cause, FileError, FileOp, Violation};
use crate::listing::{self, ListingCheck, Verdict};

/// What a listing part means, once it passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub verdict: Verdict,
    /// Its directory was made in this session: the target holds nothing in it (no stat).
    pub fresh: bool,
    /// Bytes to charge to the session's budget for the names this part leaves held (a
    /// listing arriving in parts keeps its names until the last part).
    pub charge_bytes: u64,
}

/// What the end of a directory's listing releases and asks for.
#[derive(Debug, Default)]
pub struct Ended {
    /// Bytes charged for the listing's parts, to release.
    pub release_bytes: u64,
    /// `--mirror`: list the directory and report its extra entries with [`Planning::extras`].
    pub scan: Option<Scan>,
}

/// A directory to read for `--mirror` deletions, with the source's complete listing of it.
#[derive(Debug)]
pub struct Scan {
    dir: RelPath,
    source_names: HashSet<Vec<u8>>,
}

impl Scan {
    pub fn dir(&self) -> &RelPath {
        &self.dir
    }

    /// True when the source listed `name` in this directory (it is not an extra: no need to
    /// stat it).
    pub fn listed(&self, name: &[u8]) -> bool {
        self.source_names.contains(name)
    }
}

/// A hard link to make at the end: `path` becomes another name of `leader`'s file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub path: RelPath,
    pub leader: RelPath,
}

/// What happens to `--mirror`'s deletions at the end.
#[derive(Debug, PartialEq, Eq)]
pub enum Deletions {
    /// Delete these, in this order (deepest first): each with everything below it, never
    /// following a symlink.
    Delete(Vec<(RelPath, EntryKind)>),
    /// The session had `failures` errors: `count` deletions are not made.
    Skipped { count: usize, failures: u64 },
}

/// A directory whose metadata is applied at the end.
#[derive(Debug)]
pub struct DirMeta<D> {
    pub path: RelPath,
    pub meta: D,
    /// Made in this session: its metadata is not right yet (no need to compare first).
    pub fresh: bool,
}

/// A file that is the first name of a multiply-linked inode, copied in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    Needed(FileId),
    /// It could not be placed (its decision failed, or it was not committed).
    Failed,
}

/// A directory listing under way (its parts until the last).
#[derive(Debug, Default)]
struct Open {
    /// `--mirror`: every name the source listed here so far.
    source_names: HashSet<Vec<u8>>,
    charged_bytes: u64,
    /// The directory was searched for crash debris in this session.
    debris_checked: bool,
    /// ... and for partial files to resume.
    partials_checked: bool,
}

/// The target's planning for one session. `D` is the shell's directory metadata.
#[derive(Debug)]
pub struct Planning<D> {
    check: ListingCheck,
    differ: Differ,
    mirror: bool,
    /// A memory session: nothing is looked up or created, every chunked file is needed.
    sink: bool,
    /// Charged per name held for a listing in parts (the name's bytes are added).
    name_cost_bytes: u64,
    open: HashMap<RelPath, Open>,
    /// Directories made in this session (or, in a dry run, that would be).
    fresh: HashSet<RelPath>,
    dirs: Vec<(RelPath, D)>,
    root_meta: Option<D>,
    links: Vec<Link>,
    leaders: HashMap<RelPath, Leader>,
    deletions: Vec<(RelPath, EntryKind)>,
    walk_errors: u64,
    deletions_skipped: bool,
    /// A single-file session: `Some(name)` renames the one file (`None` inside: it keeps the
    /// source's name).
    single: Option<Option<Vec<u8>>>,
    /// The single file's listing arrived.
    single_seen: bool,
}

impl<D> Planning<D> {
    /// `entries_max`: the session's entry limit (0: none); `name_cost_bytes`: what one name
    /// held for a listing in parts costs, besides its bytes.
    pub fn new(differ: Differ, entries_max: u64, sink: bool, name_cost_bytes: u64) -> Self {
        Planning {
            check: ListingCheck::new(entries_max),
            mirror: differ.options().mirror,
            differ,
            sink,
            name_cost_bytes,
            open: HashMap::new(),
            fresh: HashSet::new(),
            dirs: Vec::new(),
            root_meta: None,
            links: Vec::new(),
            leaders: HashMap::new(),
            deletions: Vec::new(),
            walk_errors: 0,
            deletions_skipped: false,
            single: None,
            single_seen: false,
        }
    }

    /// Makes this a single-file session (`blit xfer FILE TARGET`): the source lists exactly
    /// one regular file in its root and nothing else (anything more is a violation: a hostile
    /// source must not write other names into a directory the user named as a file's home);
    /// `name`, when given, is the file's name on the target. The root's metadata is never
    /// applied (the target directory is not a copy of the source's parent) and `--mirror`
    /// deletes nothing: a file source mirrors only itself.
    pub fn single_file(mut self, name: Option<Vec<u8>>) -> Self {
        self.single = Some(name);
        self.mirror = false;
        self
    }

    /// In a single-file session, checks a listing before [`Planning::listing`] and gives its
    /// one entry the target's name; in any other session it does nothing.
    pub fn single_entry(
        &mut self,
        dir: &RelPath,
        entries: &mut [Entry],
    ) -> Result<(), listing::Violation> {
        let Some(name) = &self.single else { return Ok(()) };
        let first = self.single_seen;
        match entries {
            [] if dir.is_root() => Ok(()),
            [e] if dir.is_root() && !first && e.kind == EntryKind::File => {
                self.single_seen = true;
                if let Some(name) = name {
                    e.path = RelPath::root()
                        .join(name)
                        .map_err(|_| listing::Violation::NotSingleFile(e.path.clone()))?;
                }
                Ok(())
            }
            [e, ..] => Err(listing::Violation::NotSingleFile(e.path.clone())),
            [] => Err(listing::Violation::NotSingleFile(dir.clone())),
        }
    }

    /// The source's root entry: once per session, a directory; its metadata is applied last.
    pub fn root(&mut self, kind: EntryKind, meta: D) -> Result<(), listing::Violation> {
        self.check.root()?;
        if kind != EntryKind::Dir {
            return Err(listing::Violation::RootNotDir);
        }
        if self.single.is_none() {
            self.root_meta = Some(meta);
        }
        Ok(())
    }

    /// One part of `dir`'s listing arrived: checked against everything before it (an error
    /// ends the session). Then, unless the verdict is [`Verdict::Skip`], each entry goes
    /// through [`Planning::entry`] (or, in a memory session, [`Planning::sink_entry`]); when
    /// `last_part`, the shell ends with [`Planning::listing_end`] in every case.
    pub fn listing(
        &mut self,
        dir: &RelPath,
        entries: &[Entry],
        last_part: bool,
    ) -> Result<Started, listing::Violation> {
        let verdict = self.check.listing(dir, entries, last_part)?;
        let dirs = entries.iter().filter(|e| e.kind == EntryKind::Dir);
        if self.sink {
            // Nothing is created: every directory named is as good as made.
            for e in dirs {
                self.check.directory(&e.path, true);
            }
            return Ok(Started { verdict, fresh: true, charge_bytes: 0 });
        }
        // Every directory named here counts as failed until the shell made or verified it
        // (`dir_ready`), so a listing below one that could not be made is skipped, never
        // applied elsewhere.
        for e in dirs {
            self.check.directory(&e.path, false);
        }
        let open = self.open.entry(dir.clone()).or_default();
        let mut charge_bytes = 0;
        if !last_part {
            charge_bytes = entries
                .iter()
                .map(|e| self.name_cost_bytes + e.path.file_name().len() as u64)
                .sum();
            open.charged_bytes += charge_bytes;
        }
        if self.mirror {
            open.source_names.extend(entries.iter().map(|e| e.path.file_name().to_vec()));
        }
        Ok(Started { verdict, fresh: self.fresh.contains(dir), charge_bytes })
    }

    /// Decides for one entry of an applied listing, given what the target holds under its
    /// name. A hard link is kept for the end (the shell does nothing now).
    pub fn entry(&mut self, entry: &Entry, target: Option<&TargetEntry>) -> Decision {
        let decision = self.differ.decide(entry, target);
        match &decision.action {
            Action::Hardlink { leader } => {
                self.links.push(Link { path: entry.path.clone(), leader: leader.clone() })
            }
            Action::CopyFile if entry.inode.is_some() => {
                self.leaders.insert(entry.path.clone(), Leader::Needed(entry.id));
            }
            _ => {}
        }
        decision
    }

    /// A memory session's entry: `Ok(true)` when it is needed (a chunked file). `small`: it
    /// would travel in a bundle.
    pub fn sink_entry(&mut self, entry: &Entry, small: bool) -> Result<bool, Violation> {
        match entry.kind {
            EntryKind::File if small => Err(Violation::SmallInMemorySession(entry.path.clone())),
            EntryKind::File if entry.sparse => {
                Err(Violation::SparseInMemorySession(entry.path.clone()))
            }
            EntryKind::File => Ok(true),
            _ => Ok(false),
        }
    }

    /// The shell made (`made`) or verified directory `path`: its listing may come, and its
    /// metadata is applied at the end.
    pub fn dir_ready(&mut self, path: &RelPath, meta: D, made: bool) {
        self.check.directory(path, true);
        if made {
            self.fresh.insert(path.clone());
        }
        self.dirs.push((path.clone(), meta));
    }

    /// The shell could not carry out the decision for `path` (already reported): a link to
    /// it is not made.
    pub fn failed(&mut self, path: &RelPath) {
        if let Some(l) = self.leaders.get_mut(path) {
            *l = Leader::Failed;
        }
    }

    /// True once per directory listing that wrote into an existing directory: search it for
    /// an interrupted transfer's temporary files (a run that writes nothing pays nothing).
    pub fn sweep_debris(&mut self, dir: &RelPath) -> bool {
        if self.fresh.contains(dir) {
            return false;
        }
        self.open.get_mut(dir).is_some_and(|o| !std::mem::replace(&mut o.debris_checked, true))
    }

    /// True once per directory listing, for an existing directory: search it for partial
    /// files an interrupted transfer kept (before its entries are decided, so a needed file
    /// can take its partial file over).
    pub fn scan_partials(&mut self, dir: &RelPath) -> bool {
        if self.fresh.contains(dir) {
            return false;
        }
        self.open.get_mut(dir).is_some_and(|o| !std::mem::replace(&mut o.partials_checked, true))
    }

    /// The last part of `dir`'s listing was handled (applied, skipped, or its directory could
    /// not be opened: `opened` false).
    pub fn listing_end(&mut self, dir: &RelPath, opened: bool) -> Ended {
        let Some(open) = self.open.remove(dir) else { return Ended::default() };
        // A directory made in this session holds nothing the source did not list.
        let scan = self.mirror && opened && !self.fresh.contains(dir);
        Ended {
            release_bytes: open.charged_bytes,
            scan: scan.then(|| Scan { dir: dir.clone(), source_names: open.source_names }),
        }
    }

    /// The target entries of a scanned directory that the source did not list (`extra`):
    /// those not excluded are deleted at the end, if the session ends without errors.
    pub fn extras(&mut self, scan: Scan, extra: &[TargetEntry]) {
        let in_source = |n: &[u8]| scan.source_names.contains(n);
        let plan = self.differ.diff_dir(&scan.dir, &[], extra, Some(&in_source));
        for (name, kind) in plan.deletions {
            // A name that is not one path component (`..`, `a/b`) is never joined: nothing
            // outside the directory is deleted.
            if let Ok(path) = scan.dir.join(&name) {
                self.deletions.push((path, kind));
            }
        }
    }

    /// The source could not read something of its tree: the listing may be incomplete, so
    /// `--mirror` deletes nothing.
    pub fn walk_error(&mut self) {
        self.walk_errors += 1;
    }

    /// The end, first step: every needed file is committed or failed; `not_done` are those
    /// not committed (what [`crate::target::Receiving::end`] returns). The links to make, in
    /// order, and an error for each link whose leader was not transferred.
    pub fn links(
        &mut self,
        not_done: impl IntoIterator<Item = FileId>,
    ) -> Vec<Result<Link, FileError>> {
        if self.links.is_empty() {
            return Vec::new();
        }
        let not_done: HashSet<FileId> = not_done.into_iter().collect();
        for l in self.leaders.values_mut() {
            if matches!(l, Leader::Needed(id) if not_done.contains(id)) {
                *l = Leader::Failed;
            }
        }
        std::mem::take(&mut self.links)
            .into_iter()
            .map(|link| match self.leaders.get(&link.leader) {
                Some(Leader::Failed) => Err(FileError {
                    path: link.path,
                    op: FileOp::Hardlink,
                    cause: Cause::LeaderFailed { leader: link.leader },
                }),
                _ => Ok(link),
            })
            .collect()
    }

    /// The end, second step (after the links): `--mirror`'s deletions, given how many errors
    /// the session reported so far.
    pub fn deletions(&mut self, errors: u64) -> Deletions {
        let mut deletions = std::mem::take(&mut self.deletions);
        if !self.mirror {
            return Deletions::Delete(Vec::new());
        }
        let failures = errors + self.walk_errors;
        if failures > 0 {
            self.deletions_skipped = !deletions.is_empty();
            return Deletions::Skipped { count: deletions.len(), failures };
        }
        // Deepest first, so a directory is empty by the time its own deletion comes.
        deletions.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
        Deletions::Delete(deletions)
    }

    /// The session's filters (what a deletion below a deleted directory must leave alone).
    pub fn filters(&self) -> &blitx_planner::Filters {
        self.differ.filters()
    }

    /// Whether `--mirror` deletions were held back by errors.
    pub fn deletions_skipped(&self) -> bool {
        self.deletions_skipped
    }

    /// The end, last step: the directories' metadata, deepest first, then the root's.
    pub fn directories(&mut self) -> (Vec<DirMeta<D>>, Option<D>) {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
        let dirs = dirs
            .into_iter()
            .map(|(path, meta)| DirMeta { fresh: self.fresh.contains(&path), path, meta })
            .collect();
        (dirs, self.root_meta.take())
    }

    /// Directories named but not yet listed, plus open listings (for accounting and tests).
    pub fn dirs_tracked(&self) -> usize {
        self.check.dirs_tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_core::manifest::{InodeKey, Timestamp};
    use blitx_core::session::Compare;
    use blitx_planner::Filters;
    use blitx_planner::diff::{Clear, DiffOptions};

    fn p(s: &str) -> RelPath {
        RelPath::parse_str(s).unwrap()
    }

    fn e(id: FileId, path: &str, kind: EntryKind) -> Entry {
        Entry {
            size_bytes: 10,
            mtime: Timestamp { sec: 7, nsec: 0 },
            mode: 0o644,
            ..Entry::new(id, p(path), kind)
        }
    }

    fn t(name: &str, kind: EntryKind) -> TargetEntry {
        TargetEntry {
            size_bytes: 10,
            mtime: Timestamp { sec: 7, nsec: 0 },
            mode: 0o644,
            ..TargetEntry::new(name.as_bytes().to_vec(), kind)
        }
    }

    fn planning(mirror: bool, excludes: &[&str]) -> Planning<u32> {
        let differ = Differ::new(
            DiffOptions { compare: Compare::SizeMtime, mirror, owner: false },
            Filters::excluding(excludes).unwrap(),
        );
        Planning::new(differ, 0, false, 48)
    }

    /// Applies a whole one-part listing of `dir` the way a shell does, with `target` what the
    /// target holds there; returns the decisions.
    fn apply(
        pl: &mut Planning<u32>,
        dir: &str,
        entries: &[Entry],
        target: &[TargetEntry],
    ) -> Vec<Action> {
        let dir = if dir.is_empty() { RelPath::root() } else { p(dir) };
        let started = pl.listing(&dir, entries, true).unwrap();
        assert_eq!(started.verdict, Verdict::Apply);
        let mut actions = Vec::new();
        for entry in entries {
            let tg = target.iter().find(|t| t.name == entry.path.file_name());
            let d = pl.entry(entry, tg);
            if matches!(d.action, Action::MakeDir | Action::KeepDir) {
                pl.dir_ready(&entry.path, 0o755, d.action == Action::MakeDir);
            }
            actions.push(d.action);
        }
        if let Some(scan) = pl.listing_end(&dir, true).scan {
            let extra: Vec<TargetEntry> =
                target.iter().filter(|t| !scan.listed(&t.name)).cloned().collect();
            pl.extras(scan, &extra);
        }
        actions
    }

    #[test]
    fn entries_up_to_date_are_skipped_and_the_rest_needed() {
        let mut pl = planning(false, &[]);
        let same = e(1, "same", EntryKind::File);
        let mut newer = e(2, "newer", EntryKind::File);
        newer.mtime.sec = 9;
        let mut meta = e(3, "meta", EntryKind::File);
        meta.mode = 0o600;
        let missing = e(4, "missing", EntryKind::File);
        let target =
            [t("same", EntryKind::File), t("newer", EntryKind::File), t("meta", EntryKind::File)];
        let actions = apply(&mut pl, "", &[same, newer, meta, missing], &target);
        assert_eq!(actions, [Action::Skip, Action::CopyFile, Action::FixMeta, Action::CopyFile]);
    }

    #[test]
    fn refused_listings_end_the_session_and_failed_directories_skip_theirs() {
        let mut pl = planning(false, &[]);
        assert!(pl.root(EntryKind::Dir, 1).is_ok());
        assert_eq!(pl.root(EntryKind::Dir, 1), Err(listing::Violation::SecondRoot));
        let mut other = planning(false, &[]);
        assert_eq!(other.root(EntryKind::Symlink, 1), Err(listing::Violation::RootNotDir));
        let root = RelPath::root();
        let entries = [
            e(1, "ok", EntryKind::Dir),
            e(2, "bad", EntryKind::Dir),
            e(3, "l", EntryKind::Symlink),
        ];
        pl.listing(&root, &entries, true).unwrap();
        pl.dir_ready(&p("ok"), 0, true);
        // "bad" could not be made (the shell never called dir_ready): its listing is skipped.
        assert_eq!(pl.listing(&p("bad"), &[], true).unwrap().verdict, Verdict::Skip);
        // A symlink is never a directory to list into; a directory is listed once.
        let below = [e(4, "l/x", EntryKind::File)];
        assert_eq!(pl.listing(&p("l"), &below, true), Err(listing::Violation::UnknownDir(p("l"))));
        let fresh = pl.listing(&p("ok"), &[], true).unwrap();
        assert!(fresh.fresh, "made in this session: nothing to stat");
        assert_eq!(pl.listing(&p("ok"), &[], true), Err(listing::Violation::UnknownDir(p("ok"))));
    }

    #[test]
    fn a_listing_in_parts_is_charged_until_its_end() {
        let mut pl = planning(true, &[]);
        let root = RelPath::root();
        let a = pl.listing(&root, &[e(1, "ab", EntryKind::File)], false).unwrap();
        assert_eq!(a.charge_bytes, 48 + 2);
        let b = pl.listing(&root, &[e(2, "c", EntryKind::File)], true).unwrap();
        assert_eq!(b.charge_bytes, 0);
        let end = pl.listing_end(&root, true);
        assert_eq!(end.release_bytes, 50);
        let scan = end.scan.unwrap();
        assert!(scan.listed(b"ab") && scan.listed(b"c"), "the names of every part are kept");
    }

    fn made(links: Vec<Result<Link, FileError>>) -> Vec<Link> {
        links.into_iter().map(|l| l.expect("a link to make")).collect()
    }

    #[test]
    fn hard_links_wait_for_their_leader_and_fail_with_it() {
        let key = InodeKey { dev: 1, ino: 2 };
        let linked = |id, path: &str| {
            let mut x = e(id, path, EntryKind::File);
            x.inode = Some(key);
            x
        };
        let mut pl = planning(false, &[]);
        let actions = apply(&mut pl, "", &[linked(1, "a"), linked(2, "b")], &[]);
        assert_eq!(actions, [Action::CopyFile, Action::Hardlink { leader: p("a") }]);
        // The leader was committed: the link is made at the end.
        assert_eq!(made(pl.links([])), [Link { path: p("b"), leader: p("a") }]);
        // The leader was not committed: no link, an error for the follower.
        let mut pl = planning(false, &[]);
        apply(&mut pl, "", &[linked(1, "a"), linked(2, "b")], &[]);
        let links = pl.links([1]);
        assert!(matches!(
            &links[..],
            [Err(FileError { op: FileOp::Hardlink, cause: Cause::LeaderFailed { .. }, .. })]
        ));
        // The shell could not place the leader at all.
        let mut pl = planning(false, &[]);
        apply(&mut pl, "", &[linked(1, "a"), linked(2, "b")], &[]);
        pl.failed(&p("a"));
        assert!(pl.links([]).iter().all(Result::is_err));
        // A leader already up to date on the target: the follower links to it.
        let mut pl = planning(false, &[]);
        apply(&mut pl, "", &[linked(1, "a"), linked(2, "b")], &[t("a", EntryKind::File)]);
        assert_eq!(made(pl.links([1])), [Link { path: p("b"), leader: p("a") }]);
    }

    #[test]
    fn mirror_deletes_only_extras_and_only_after_a_clean_session() {
        let mut pl = planning(true, &["*.keep"]);
        let entries = [e(1, "kept", EntryKind::File), e(2, "d", EntryKind::Dir)];
        let target = [
            t("kept", EntryKind::File),
            t("old", EntryKind::File),
            t("d", EntryKind::Dir),
            t("x.keep", EntryKind::File),
        ];
        apply(&mut pl, "", &entries, &target);
        apply(&mut pl, "d", &[], &[t("gone", EntryKind::Dir)]);
        // Deepest first; the listed and the excluded names stay.
        assert_eq!(
            pl.deletions(0),
            Deletions::Delete(vec![(p("d/gone"), EntryKind::Dir), (p("old"), EntryKind::File)])
        );
        assert!(!pl.deletions_skipped());
        // One error anywhere (or a walk error) and nothing is deleted.
        let mut pl = planning(true, &[]);
        apply(&mut pl, "", &[], &[t("old", EntryKind::File)]);
        assert_eq!(pl.deletions(1), Deletions::Skipped { count: 1, failures: 1 });
        assert!(pl.deletions_skipped());
        let mut pl = planning(true, &[]);
        apply(&mut pl, "", &[], &[t("old", EntryKind::File)]);
        pl.walk_error();
        assert!(matches!(pl.deletions(0), Deletions::Skipped { .. }));
        // Without --mirror nothing is even looked for.
        let mut pl = planning(false, &[]);
        apply(&mut pl, "", &[], &[t("old", EntryKind::File)]);
        assert_eq!(pl.deletions(0), Deletions::Delete(Vec::new()));
    }

    #[test]
    fn mirror_never_scans_a_fresh_or_unopened_directory_nor_leaves_it() {
        let mut pl = planning(true, &[]);
        apply(&mut pl, "", &[e(1, "new", EntryKind::Dir)], &[]);
        pl.listing(&p("new"), &[], true).unwrap();
        assert!(pl.listing_end(&p("new"), true).scan.is_none(), "made here: nothing extra");
        let mut pl = planning(true, &[]);
        pl.listing(&RelPath::root(), &[], true).unwrap();
        assert!(pl.listing_end(&RelPath::root(), false).scan.is_none());
        // Names that are not one component never become a deletion.
        let mut pl = planning(true, &[]);
        pl.listing(&RelPath::root(), &[], true).unwrap();
        let scan = pl.listing_end(&RelPath::root(), true).scan.unwrap();
        pl.extras(
            scan,
            &[t("..", EntryKind::Dir), t("a/b", EntryKind::File), t("", EntryKind::File)],
        );
        assert_eq!(pl.deletions(0), Deletions::Delete(Vec::new()));
    }

    #[test]
    fn directory_metadata_comes_last_deepest_first_and_the_root_after() {
        let mut pl = planning(false, &[]);
        pl.root(EntryKind::Dir, 1).unwrap();
        apply(&mut pl, "", &[e(1, "a", EntryKind::Dir)], &[t("a", EntryKind::Dir)]);
        apply(&mut pl, "a", &[e(2, "a/b", EntryKind::Dir)], &[]);
        let (dirs, root) = pl.directories();
        let order: Vec<(String, bool)> =
            dirs.iter().map(|d| (d.path.to_string(), d.fresh)).collect();
        assert_eq!(order, [("a/b".to_string(), true), ("a".to_string(), false)]);
        assert_eq!(root, Some(1));
    }

    #[test]
    fn debris_is_swept_once_per_existing_directory() {
        let mut pl = planning(false, &[]);
        let root = RelPath::root();
        pl.listing(&root, &[e(1, "n", EntryKind::Dir)], false).unwrap();
        assert!(pl.sweep_debris(&root));
        pl.dir_ready(&p("n"), 0, true);
        pl.listing(&root, &[], true).unwrap();
        assert!(!pl.sweep_debris(&root), "once per listing");
        pl.listing_end(&root, true);
        pl.listing(&p("n"), &[], true).unwrap();
        assert!(!pl.sweep_debris(&p("n")), "made in this session");
    }

    #[test]
    fn a_memory_session_needs_chunked_files_only_and_refuses_the_rest() {
        let differ = Differ::new(
            DiffOptions { compare: Compare::SizeMtime, mirror: false, owner: false },
            Filters::default(),
        );
        let mut pl: Planning<u32> = Planning::new(differ, 0, true, 48);
        let entries = [e(1, "d", EntryKind::Dir), e(2, "f", EntryKind::File)];
        pl.listing(&RelPath::root(), &entries, true).unwrap();
        assert_eq!(pl.listing(&p("d"), &[], true).unwrap().verdict, Verdict::Apply);
        assert_eq!(pl.sink_entry(&entries[1], false), Ok(true));
        assert_eq!(pl.sink_entry(&entries[0], false), Ok(false));
        assert!(matches!(
            pl.sink_entry(&entries[1], true),
            Err(Violation::SmallInMemorySession(_))
        ));
        let mut sparse = e(3, "s", EntryKind::File);
        sparse.sparse = true;
        assert!(matches!(pl.sink_entry(&sparse, false), Err(Violation::SparseInMemorySession(_))));
    }

    #[test]
    fn a_single_file_session_takes_one_file_renamed_and_nothing_else() {
        let single = || planning(true, &[]).single_file(Some(b"new".to_vec()));
        let root = RelPath::root();
        let mut pl = single();
        pl.root(EntryKind::Dir, 1).unwrap();
        let mut entries = [e(1, "f", EntryKind::File)];
        pl.single_entry(&root, &mut entries).unwrap();
        assert_eq!(entries[0].path, p("new"));
        // The target's directory is no copy of the source's: neither its metadata nor,
        // under --mirror, its other names are touched.
        let actions = apply(&mut pl, "", &entries, &[t("sibling", EntryKind::File)]);
        assert_eq!(actions, [Action::CopyFile]);
        assert_eq!(pl.deletions(0), Deletions::Delete(Vec::new()));
        assert_eq!(pl.directories().1, None);
        // A second file, a directory, a symlink, a listing below the root: violations.
        let mut pl = single();
        pl.single_entry(&root, &mut [e(1, "f", EntryKind::File)]).unwrap();
        let again = pl.single_entry(&root, &mut [e(2, "g", EntryKind::File)]);
        assert!(matches!(again, Err(listing::Violation::NotSingleFile(_))));
        for bad in [
            vec![e(1, "f", EntryKind::File), e(2, "g", EntryKind::File)],
            vec![e(1, "d", EntryKind::Dir)],
            vec![e(1, "l", EntryKind::Symlink)],
        ] {
            let mut bad = bad;
            let r = single().single_entry(&root, &mut bad);
            assert!(matches!(r, Err(listing::Violation::NotSingleFile(_))), "{bad:?}");
        }
        let below = single().single_entry(&p("d"), &mut [e(1, "d/f", EntryKind::File)]);
        assert!(matches!(below, Err(listing::Violation::NotSingleFile(_))));
        // Without a new name the file keeps the source's.
        let mut pl = planning(false, &[]).single_file(None);
        let mut entries = [e(1, "f", EntryKind::File)];
        pl.single_entry(&root, &mut entries).unwrap();
        assert_eq!(entries[0].path, p("f"));
        // Not a single-file session: nothing checked.
        let mut pl = planning(false, &[]);
        pl.single_entry(&root, &mut [e(1, "d", EntryKind::Dir), e(2, "g", EntryKind::File)])
            .unwrap();
    }

    #[test]
    fn a_file_in_the_way_of_a_directory_is_cleared_first() {
        let mut pl = planning(true, &[]);
        let actions = apply(&mut pl, "", &[e(1, "x", EntryKind::Dir)], &[t("x", EntryKind::File)]);
        assert_eq!(actions, [Action::MakeDir]);
        let mut pl = planning(true, &[]);
        pl.listing(&RelPath::root(), &[e(1, "x", EntryKind::File)], true).unwrap();
        let d = pl.entry(&e(1, "x", EntryKind::File), Some(&t("x", EntryKind::Dir)));
        assert_eq!(d.clear, Clear::Dir { recursive: true });
    }
}
