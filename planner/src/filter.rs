//! Path selection with rsync's filter semantics, compiled once per session.
//!
//! Rules are tried in the order given and the first whose pattern matches decides (include or
//! exclude); a path no rule matches is included. Pattern syntax (rsync's): a trailing `/`
//! matches only directories; a leading `/` anchors the pattern at the transfer root, otherwise
//! it matches the end of the path at a component boundary (so `*.o` matches a name at any
//! depth and `doc/*.pdf` matches `doc/a.pdf` and `x/doc/a.pdf`); `*` and `?` do not cross
//! `/`, `**` does; `[...]` is a character class (`!` or `^` negates; never matches `/`);
//! `\` makes the next character literal; `dir/***` matches `dir` and everything below it.
//! An excluded directory is not descended into, so `--include '*.c' --exclude '*'` needs
//! `--include '*/'` exactly as in rsync.
//!
//! Matching is linear in the path's length: every pattern becomes one regular expression of a
//! [`RegexSet`] (a finite automaton, no backtracking) whose compiled size is capped, so a
//! hostile peer's rules cost the daemon bounded memory and CPU.
//!
//! Pure: no file system access (the walk and the deletions ask this module about names and
//! kinds they already have).

use std::collections::HashSet;

use blitx_core::RelPath;
use blitx_core::filter::{FilterParams, RuleKind};
use blitx_core::manifest::EntryKind;
use regex::bytes::{RegexSet, RegexSetBuilder};

/// Cap on the compiled automaton of all rules together (the regex crate's own unit: bytes of
/// compiled program). 1024 rules of plain names use well under 1 MiB.
pub const COMPILED_BYTES_MAX: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("bad filter pattern {pattern:?}: {why}")]
    Syntax { pattern: String, why: &'static str },
    #[error("the filter rules are too complex to compile within {COMPILED_BYTES_MAX} bytes")]
    TooComplex,
    #[error(transparent)]
    Bounds(#[from] blitx_core::filter::FilterBoundError),
}

/// Whether a `--files-from` list admits a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// Listed, or below a listed directory: the rules decide.
    Yes,
    /// A directory leading to a listed path: made, never decided by the rules.
    Implied,
    No,
}

#[derive(Debug, Clone)]
struct FilesFrom {
    wanted: HashSet<RelPath>,
    implied: HashSet<RelPath>,
}

#[derive(Debug, Clone, Default)]
pub struct Filters {
    set: Option<RegexSet>,
    kinds: Vec<RuleKind>,
    dir_only: Vec<bool>,
    min_size_bytes: Option<u64>,
    max_size_bytes: Option<u64>,
    delete_excluded: bool,
    files_from: Option<FilesFrom>,
}

impl Filters {
    /// Checks the bounds and compiles every rule (an error names the first bad pattern).
    pub fn new(params: &FilterParams) -> Result<Self, FilterError> {
        params.validate()?;
        let mut regexes = Vec::with_capacity(params.rules.len());
        let mut kinds = Vec::with_capacity(params.rules.len());
        let mut dir_only = Vec::with_capacity(params.rules.len());
        for rule in &params.rules {
            let (re, only_dirs) = translate(&rule.pattern)
                .map_err(|why| FilterError::Syntax { pattern: rule.pattern.clone(), why })?;
            regexes.push(re);
            kinds.push(rule.kind);
            dir_only.push(only_dirs);
        }
        let set = if regexes.is_empty() {
            None
        } else {
            let set = RegexSetBuilder::new(&regexes)
                .unicode(false)
                .size_limit(COMPILED_BYTES_MAX)
                .dfa_size_limit(COMPILED_BYTES_MAX)
                .build()
                .map_err(|e| match e {
                    regex::Error::CompiledTooBig(_) => FilterError::TooComplex,
                    // The translation only emits valid syntax; should the regex crate still
                    // refuse a pattern, it is refused as a whole.
                    _ => FilterError::Syntax {
                        pattern: params.rules.iter().map(|r| r.pattern.as_str()).collect(),
                        why: "not accepted by the matcher",
                    },
                })?;
            Some(set)
        };
        let files_from = params.files_from.as_ref().map(|paths| {
            let mut implied = HashSet::new();
            for p in paths {
                let mut up = p.split_last().map(|(d, _)| d);
                while let Some(d) = up {
                    if d.is_root() || !implied.insert(d.clone()) {
                        break;
                    }
                    up = d.split_last().map(|(d, _)| d);
                }
            }
            FilesFrom { wanted: paths.iter().cloned().collect(), implied }
        });
        Ok(Filters {
            set,
            kinds,
            dir_only,
            min_size_bytes: params.min_size_bytes,
            max_size_bytes: params.max_size_bytes,
            delete_excluded: params.delete_excluded,
            files_from,
        })
    }

    /// Rules built from plain exclude patterns (tests and callers without other filters).
    pub fn excluding(patterns: &[&str]) -> Result<Self, FilterError> {
        let rules = patterns.iter().map(|p| blitx_core::filter::Rule::exclude(*p)).collect();
        Filters::new(&FilterParams { rules, ..FilterParams::default() })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_none()
            && self.min_size_bytes.is_none()
            && self.max_size_bytes.is_none()
            && self.files_from.is_none()
    }

    /// The first matching rule's verdict: true when `path` is excluded by the rules alone.
    pub fn rule_excludes(&self, path: &RelPath, kind: EntryKind) -> bool {
        let Some(set) = &self.set else { return false };
        let is_dir = kind == EntryKind::Dir;
        set.matches(path.as_bytes())
            .iter()
            .find(|&i| is_dir || !self.dir_only[i])
            .is_some_and(|i| self.kinds[i] == RuleKind::Exclude)
    }

    fn size_excludes(&self, kind: EntryKind, size_bytes: u64) -> bool {
        kind == EntryKind::File
            && (self.min_size_bytes.is_some_and(|min| size_bytes < min)
                || self.max_size_bytes.is_some_and(|max| size_bytes > max))
    }

    fn listed(&self, path: &RelPath, kind: EntryKind) -> Listed {
        let Some(ff) = &self.files_from else { return Listed::Yes };
        let mut p = Some(path.clone());
        while let Some(q) = p {
            if q.is_root() {
                break;
            }
            if ff.wanted.contains(&q) {
                return Listed::Yes;
            }
            p = q.split_last().map(|(d, _)| d);
        }
        if kind == EntryKind::Dir && ff.implied.contains(path) {
            Listed::Implied
        } else {
            Listed::No
        }
    }

    /// True when the source sends `path` (of this kind and size).
    pub fn selects(&self, path: &RelPath, kind: EntryKind, size_bytes: u64) -> bool {
        match self.listed(path, kind) {
            Listed::No => false,
            Listed::Implied => true,
            Listed::Yes => !self.rule_excludes(path, kind) && !self.size_excludes(kind, size_bytes),
        }
    }

    /// True when `--mirror` may delete the target's `path`, which the source does not have:
    /// what the rules exclude is protected unless `--delete-excluded`; what a `--files-from`
    /// list does not reach is always protected (the list says nothing about it).
    pub fn deletable(&self, path: &RelPath, kind: EntryKind, size_bytes: u64) -> bool {
        match self.listed(path, kind) {
            Listed::No => false,
            // A directory leading to listed paths: its other contents are not in the list.
            Listed::Implied => false,
            Listed::Yes => self.delete_excluded || self.selects(path, kind, size_bytes),
        }
    }
}

/// rsync's pattern as a regular expression over a whole relative path, and whether it matches
/// directories only.
fn translate(pattern: &str) -> Result<(String, bool), &'static str> {
    let mut p = pattern.as_bytes();
    let mut dir_only = false;
    while let Some(rest) = p.strip_suffix(b"/") {
        dir_only = true;
        p = rest;
    }
    let anchored = match p.strip_prefix(b"/") {
        Some(rest) => {
            p = rest;
            true
        }
        None => false,
    };
    if p.is_empty() {
        return Err("nothing to match besides '/'");
    }
    // `dir/***`: the directory and everything below it.
    let (p, subtree) = match p.strip_suffix(b"/***") {
        Some(base) if !base.is_empty() => (base, true),
        _ => (p, false),
    };
    let mut re = String::from(if anchored { "(?s-u)^" } else { "(?s-u)^(?:.*/)?" });
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => {
                let mut n = 0;
                while i < p.len() && p[i] == b'*' {
                    n += 1;
                    i += 1;
                }
                re.push_str(if n >= 2 { ".*" } else { "[^/]*" });
                continue;
            }
            b'?' => re.push_str("[^/]"),
            b'[' => {
                i = class(p, i, &mut re)?;
                continue;
            }
            b'\\' => {
                i += 1;
                let Some(&c) = p.get(i) else { return Err("a trailing '\\' escapes nothing") };
                literal(c, &mut re);
            }
            c => literal(c, &mut re),
        }
        i += 1;
    }
    if subtree {
        re.push_str("(?:/.*)?");
    }
    re.push('$');
    Ok((re, dir_only))
}

fn literal(c: u8, re: &mut String) {
    if c.is_ascii_alphanumeric() {
        re.push(c as char);
    } else {
        re.push_str(&format!("\\x{c:02x}"));
    }
}

/// Translates the class starting at `p[start] == b'['`; returns the index after its `]`.
fn class(p: &[u8], start: usize, re: &mut String) -> Result<usize, &'static str> {
    let mut i = start + 1;
    let negated = matches!(p.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    re.push_str(if negated { "[^/" } else { "[" });
    let mut members = 0;
    loop {
        let Some(&c) = p.get(i) else { return Err("unmatched '['") };
        match c {
            // `]` first is a member, as in every glob dialect.
            b']' if members > 0 => break,
            b'[' if p.get(i + 1) == Some(&b':') => {
                let rest = &p[i + 2..];
                let end = rest.windows(2).position(|w| w == b":]").ok_or("unmatched '[:'")?;
                let name = &rest[..end];
                const NAMES: [&[u8]; 12] = [
                    b"alnum", b"alpha", b"blank", b"cntrl", b"digit", b"graph", b"lower", b"print",
                    b"punct", b"space", b"upper", b"xdigit",
                ];
                if !NAMES.contains(&name) {
                    return Err("unknown character class name");
                }
                re.push_str("[:");
                re.push_str(std::str::from_utf8(name).map_err(|_| "bad class name")?);
                re.push_str(":]");
                i += 2 + end + 2;
            }
            b'\\' => {
                i += 1;
                let Some(&e) = p.get(i) else { return Err("unmatched '['") };
                re.push_str(&format!("\\x{e:02x}"));
                i += 1;
            }
            // A range `a-z` (its ends as literal bytes).
            c if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&e| e != b']') => {
                let e = p[i + 2];
                if e < c {
                    return Err("a character range whose end is before its start");
                }
                re.push_str(&format!("\\x{c:02x}-\\x{e:02x}"));
                i += 3;
            }
            c => {
                re.push_str(&format!("\\x{c:02x}"));
                i += 1;
            }
        }
        members += 1;
    }
    // A positive class never matches `/` either: intersected with "not a slash".
    re.push_str(if negated { "]" } else { "&&[^/]]" });
    Ok(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_core::filter::Rule;

    fn p(s: &str) -> RelPath {
        RelPath::parse_str(s).unwrap()
    }

    fn filters(rules: &[(char, &str)]) -> Filters {
        let rules = rules
            .iter()
            .map(|&(k, pat)| if k == '+' { Rule::include(pat) } else { Rule::exclude(pat) })
            .collect();
        Filters::new(&FilterParams { rules, ..FilterParams::default() }).unwrap()
    }

    /// Rules as (`+`/`-`, pattern), a path, its kind, and whether rsync selects it.
    type Case<'a> = (&'a [(char, &'a str)], &'a str, EntryKind, bool);

    /// (rules, path, is a directory, selected) — each row is what rsync 3.x does.
    #[test]
    fn rsync_behaviours() {
        use EntryKind::{Dir, File};
        let table: &[Case<'_>] = &[
            (&[('-', "*.o")], "a.o", File, false),
            (&[('-', "*.o")], "x/y/a.o", File, false),
            (&[('-', "*.o")], "a.oo", File, true),
            // A trailing slash: directories only.
            (&[('-', "build/")], "build", Dir, false),
            (&[('-', "build/")], "src/build", Dir, false),
            (&[('-', "build/")], "build", File, true),
            // A leading slash anchors at the root.
            (&[('-', "/top")], "top", File, false),
            (&[('-', "/top")], "x/top", File, true),
            // A slash inside: matched against the end of the path, at a component boundary.
            (&[('-', "doc/*.pdf")], "doc/a.pdf", File, false),
            (&[('-', "doc/*.pdf")], "x/doc/a.pdf", File, false),
            (&[('-', "doc/*.pdf")], "xdoc/a.pdf", File, true),
            (&[('-', "doc/*.pdf")], "doc/s/a.pdf", File, true),
            (&[('-', "doc/**.pdf")], "doc/s/a.pdf", File, false),
            (&[('-', "/a/**/z")], "a/b/c/z", File, false),
            (&[('-', "/a/**/z")], "a/z", File, true),
            (&[('-', "?.c")], "a.c", File, false),
            (&[('-', "?.c")], "ab.c", File, true),
            (&[('-', "[ab].c")], "b.c", File, false),
            (&[('-', "[!ab].c")], "b.c", File, true),
            (&[('-', "[!ab].c")], "c.c", File, false),
            (&[('-', "[a-c]x")], "bx", File, false),
            (&[('-', "[[:digit:]]x")], "7x", File, false),
            (&[('-', "\\*")], "*", File, false),
            (&[('-', "\\*")], "a", File, true),
            (&[('-', "/d/***")], "d", Dir, false),
            (&[('-', "/d/***")], "d/e/f", File, false),
            (&[('-', "/d/***")], "dd", Dir, true),
            // First match wins.
            (&[('+', "keep.o"), ('-', "*.o")], "keep.o", File, true),
            (&[('-', "*.o"), ('+', "keep.o")], "keep.o", File, false),
            (&[('+', "*/"), ('+', "*.c"), ('-', "*")], "src", Dir, true),
            (&[('+', "*/"), ('+', "*.c"), ('-', "*")], "src/a.c", File, true),
            (&[('+', "*/"), ('+', "*.c"), ('-', "*")], "src/a.h", File, false),
            // Without `+ */` the directory itself is excluded (and never descended into).
            (&[('+', "*.c"), ('-', "*")], "src", Dir, false),
            // A dir-only rule is skipped for a file: the next rule decides.
            (&[('+', "x/"), ('-', "x")], "x", File, false),
            (&[('+', "x/"), ('-', "x")], "x", Dir, true),
        ];
        for (rules, path, kind, want) in table {
            let f = filters(rules);
            assert_eq!(f.selects(&p(path), *kind, 1), *want, "{rules:?} on {path} ({kind:?})");
        }
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in ["[abc", "a\\", "[[:nope:]]", "[z-a]", "/", "//"] {
            let r = Filters::new(&FilterParams {
                rules: vec![Rule::exclude(bad)],
                ..FilterParams::default()
            });
            assert!(matches!(r, Err(FilterError::Syntax { .. })), "{bad:?}: {r:?}");
        }
    }

    #[test]
    fn classes_never_match_a_slash() {
        let f = filters(&[('-', "a[!x]b"), ('-', "c[/]d")]);
        assert!(f.selects(&p("a/b"), EntryKind::File, 1));
        assert!(f.selects(&p("c/d"), EntryKind::File, 1));
    }

    #[test]
    fn sizes_apply_to_files_only() {
        let f = Filters::new(&FilterParams {
            min_size_bytes: Some(10),
            max_size_bytes: Some(20),
            ..FilterParams::default()
        })
        .unwrap();
        assert!(!f.selects(&p("a"), EntryKind::File, 9));
        assert!(f.selects(&p("a"), EntryKind::File, 10));
        assert!(f.selects(&p("a"), EntryKind::File, 20));
        assert!(!f.selects(&p("a"), EntryKind::File, 21));
        assert!(f.selects(&p("a"), EntryKind::Dir, 0));
        assert!(f.selects(&p("a"), EntryKind::Symlink, 0));
    }

    #[test]
    fn deletion_protects_excluded_unless_delete_excluded() {
        let mut params =
            FilterParams { rules: vec![Rule::exclude("*.keep")], ..FilterParams::default() };
        let f = Filters::new(&params).unwrap();
        assert!(!f.deletable(&p("a.keep"), EntryKind::File, 1));
        assert!(f.deletable(&p("a.old"), EntryKind::File, 1));
        params.delete_excluded = true;
        let f = Filters::new(&params).unwrap();
        assert!(f.deletable(&p("a.keep"), EntryKind::File, 1));
    }

    #[test]
    fn files_from_selects_listed_paths_and_their_directories() {
        let f = Filters::new(&FilterParams {
            files_from: Some(vec![p("a/b/f"), p("d")]),
            rules: vec![Rule::exclude("*.tmp")],
            ..FilterParams::default()
        })
        .unwrap();
        assert!(f.selects(&p("a"), EntryKind::Dir, 0));
        assert!(f.selects(&p("a/b"), EntryKind::Dir, 0));
        assert!(f.selects(&p("a/b/f"), EntryKind::File, 1));
        assert!(!f.selects(&p("a/b/g"), EntryKind::File, 1));
        assert!(!f.selects(&p("a/x"), EntryKind::File, 1));
        assert!(f.selects(&p("d/deep/x"), EntryKind::File, 1));
        assert!(!f.selects(&p("d/deep/x.tmp"), EntryKind::File, 1));
        assert!(!f.selects(&p("e"), EntryKind::File, 1));
        // Deletions only below what the list names.
        assert!(!f.deletable(&p("a/x"), EntryKind::File, 1));
        assert!(f.deletable(&p("d/old"), EntryKind::File, 1));
        assert!(!f.deletable(&p("e"), EntryKind::File, 1));
    }

    #[test]
    fn a_thousand_ordinary_rules_fit() {
        let rules = (0..blitx_core::filter::FILTER_RULES_MAX)
            .map(|i| Rule::exclude(format!("/src/**/build-{i}/*.[oa]")))
            .collect();
        let f = Filters::new(&FilterParams { rules, ..FilterParams::default() }).unwrap();
        assert!(!f.selects(&p("src/x/y/build-77/z.o"), EntryKind::File, 1));
        assert!(f.selects(&p("src/x/y/build-77/z.c"), EntryKind::File, 1));
    }

    #[test]
    fn hostile_rules_are_bounded() {
        // Many nested wildcards: compiled within the cap or refused, never unbounded.
        let pattern = "**a*?*[a-z]*".repeat(300);
        let rules = vec![Rule::exclude(pattern); 8];
        match Filters::new(&FilterParams { rules, ..FilterParams::default() }) {
            Ok(f) => {
                let long = "a/".repeat(2000);
                let _ = f.selects(&p(long.trim_end_matches('/')), EntryKind::File, 1);
            }
            Err(e) => assert_eq!(e, FilterError::TooComplex),
        }
    }
}
