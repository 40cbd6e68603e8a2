//! `--exclude GLOB` matching, rsync-style: a pattern without `/` matches a name at any depth;
//! a pattern with `/` matches the whole path relative to the root (a leading `/` anchors it
//! there explicitly). `*` does not cross `/`, `**` does.

use blitx_core::RelPath;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

#[derive(Debug, thiserror::Error)]
#[error("bad --exclude pattern {pattern:?}")]
pub struct ExcludeError {
    pattern: String,
    source: globset::Error,
}

#[derive(Debug, Clone, Default)]
pub struct Excludes {
    by_name: Option<GlobSet>,
    by_path: Option<GlobSet>,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Self, ExcludeError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut n_names, mut n_paths) = (0, 0);
        for pattern in patterns {
            let trimmed = pattern.trim_end_matches('/');
            let (set, text) = if trimmed.contains('/') {
                n_paths += 1;
                (&mut paths, trimmed.trim_start_matches('/'))
            } else {
                n_names += 1;
                (&mut names, trimmed)
            };
            let glob = GlobBuilder::new(text)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| ExcludeError { pattern: pattern.clone(), source })?;
            set.add(glob);
        }
        let build =
            |b: GlobSetBuilder, n: usize, p: &[String]| -> Result<Option<GlobSet>, ExcludeError> {
                if n == 0 {
                    return Ok(None);
                }
                b.build().map(Some).map_err(|source| ExcludeError { pattern: p.join(" "), source })
            };
        Ok(Excludes {
            by_name: build(names, n_names, patterns)?,
            by_path: build(paths, n_paths, patterns)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_none() && self.by_path.is_none()
    }

    /// True when `path` (relative to the root) is excluded.
    pub fn matches(&self, path: &RelPath) -> bool {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        if let Some(names) = &self.by_name
            && names.is_match(OsStr::from_bytes(path.file_name()))
        {
            return true;
        }
        if let Some(paths) = &self.by_path
            && paths.is_match(OsStr::from_bytes(path.as_bytes()))
        {
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::parse_str(s).unwrap()
    }

    #[test]
    fn name_and_path_patterns() {
        let ex = Excludes::new(&["*.tmp".into(), "build/".into(), "docs/*.pdf".into()]).unwrap();
        assert!(ex.matches(&p("a/b/x.tmp")));
        assert!(ex.matches(&p("build")));
        assert!(ex.matches(&p("src/build")));
        assert!(ex.matches(&p("docs/a.pdf")));
        assert!(!ex.matches(&p("docs/sub/a.pdf")));
        assert!(!ex.matches(&p("a/x.tmpl")));
        assert!(Excludes::new(&[]).unwrap().is_empty());
        assert!(Excludes::new(&["[".into()]).is_err());
    }
}
