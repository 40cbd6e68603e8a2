//! What a transfer's filters are, as both halves agree on them (`--include`, `--exclude`, their
//! `-from` files, `--files-from`, `--min-size`/`--max-size`, `--delete-excluded`).
//!
//! This module owns the bounded, serializable description only; matching lives in
//! `blitx_planner::filter`, which compiles it once per session. The bounds exist because on a
//! pull the daemon walks with the client's rules: they cap what a hostile client can make the
//! daemon compile and hold (rules x pattern bytes; the compiled automaton is capped separately).

use serde::{Deserialize, Serialize};

use crate::path::RelPath;

/// Most rules of one session (rsync has no limit; a thousand patterns is already a long file).
pub const FILTER_RULES_MAX: usize = 1024;
/// Longest pattern (PATH_MAX: a pattern longer than any path matches by wildcards alone).
pub const FILTER_PATTERN_BYTES_MAX: usize = 4096;
/// Most paths of a `--files-from` list.
pub const FILES_FROM_PATHS_MAX: usize = 1 << 20;
/// Most bytes of all `--files-from` paths together (well under the 64 MiB control message).
pub const FILES_FROM_BYTES_MAX: usize = 32 << 20;

const _: () = assert!(FILTER_RULES_MAX * FILTER_PATTERN_BYTES_MAX <= 4 << 20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleKind {
    /// `+ PATTERN` / `--include`: a matching path is transferred (and may be deleted).
    Include,
    /// `- PATTERN` / `--exclude`: a matching path is left out and, without
    /// `--delete-excluded`, protected from `--mirror` deletion.
    Exclude,
}

/// One rule, matched in order: the first rule whose pattern matches a path decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub kind: RuleKind,
    /// rsync's pattern syntax: a trailing `/` matches directories only, a leading `/` anchors
    /// at the transfer root, `*` `?` `[...]` stay within a component, `**` crosses `/`.
    pub pattern: String,
}

impl Rule {
    pub fn include(pattern: impl Into<String>) -> Self {
        Rule { kind: RuleKind::Include, pattern: pattern.into() }
    }

    pub fn exclude(pattern: impl Into<String>) -> Self {
        Rule { kind: RuleKind::Exclude, pattern: pattern.into() }
    }
}

/// Everything that selects paths for one transfer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FilterParams {
    pub rules: Vec<Rule>,
    /// Files smaller than this are left out (directories and symlinks are not sized).
    pub min_size_bytes: Option<u64>,
    /// Files larger than this are left out.
    pub max_size_bytes: Option<u64>,
    /// `--mirror` also deletes target paths the rules exclude.
    pub delete_excluded: bool,
    /// `--files-from`: only these paths (and, for a directory, everything below it) are
    /// transferred; the directories leading to them are made.
    pub files_from: Option<Vec<RelPath>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterBoundError {
    #[error("{0} filter rules; at most {FILTER_RULES_MAX} are accepted")]
    TooManyRules(usize),
    #[error("a filter pattern of {0} bytes; at most {FILTER_PATTERN_BYTES_MAX} are accepted")]
    PatternTooLong(usize),
    #[error("an empty filter pattern")]
    EmptyPattern,
    #[error("--min-size {min} is above --max-size {max}")]
    SizeRange { min: u64, max: u64 },
    #[error("--files-from lists {0} paths; at most {FILES_FROM_PATHS_MAX} are accepted")]
    TooManyPaths(usize),
    #[error("--files-from lists {0} bytes of paths; at most {FILES_FROM_BYTES_MAX} are accepted")]
    PathsTooLong(usize),
}

impl FilterParams {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.min_size_bytes.is_none()
            && self.max_size_bytes.is_none()
            && self.files_from.is_none()
    }

    /// Checks the bounds (pattern syntax is checked where patterns are compiled).
    pub fn validate(&self) -> Result<(), FilterBoundError> {
        if self.rules.len() > FILTER_RULES_MAX {
            return Err(FilterBoundError::TooManyRules(self.rules.len()));
        }
        for r in &self.rules {
            if r.pattern.is_empty() {
                return Err(FilterBoundError::EmptyPattern);
            }
            if r.pattern.len() > FILTER_PATTERN_BYTES_MAX {
                return Err(FilterBoundError::PatternTooLong(r.pattern.len()));
            }
        }
        if let (Some(min), Some(max)) = (self.min_size_bytes, self.max_size_bytes)
            && min > max
        {
            return Err(FilterBoundError::SizeRange { min, max });
        }
        if let Some(paths) = &self.files_from {
            if paths.len() > FILES_FROM_PATHS_MAX {
                return Err(FilterBoundError::TooManyPaths(paths.len()));
            }
            let bytes: usize = paths.iter().map(|p| p.as_bytes().len() + 1).sum();
            if bytes > FILES_FROM_BYTES_MAX {
                return Err(FilterBoundError::PathsTooLong(bytes));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let mut f = FilterParams::default();
        assert!(f.is_empty());
        f.validate().unwrap();
        f.rules = vec![Rule::exclude("x"); FILTER_RULES_MAX + 1];
        assert_eq!(f.validate(), Err(FilterBoundError::TooManyRules(FILTER_RULES_MAX + 1)));
        f.rules = vec![Rule::include("a".repeat(FILTER_PATTERN_BYTES_MAX + 1))];
        assert!(matches!(f.validate(), Err(FilterBoundError::PatternTooLong(_))));
        f.rules = vec![Rule::include("")];
        assert_eq!(f.validate(), Err(FilterBoundError::EmptyPattern));
        f.rules.clear();
        f.min_size_bytes = Some(10);
        f.max_size_bytes = Some(9);
        assert!(matches!(f.validate(), Err(FilterBoundError::SizeRange { .. })));
    }
}
