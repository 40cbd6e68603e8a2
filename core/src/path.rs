//! Validated paths relative to a transfer root.
//!
//! A [`RelPath`] can never name anything outside the root it is joined to: it has no leading
//! `/`, no `.` or `..` component, no empty component and no NUL byte. Every path that arrives from
//! a peer or from the command line is parsed into this type at the edge; the rest of the code never
//! handles raw strings. Names are bytes (Unix file names need not be UTF-8).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest file name Linux accepts (NAME_MAX).
pub const NAME_BYTES_MAX: usize = 255;
/// Longest relative path we accept (PATH_MAX).
pub const PATH_BYTES_MAX: usize = 4096;

/// Why a path or name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} is absolute; only paths relative to the root are allowed")]
    Absolute(String),
    #[error("path {0:?} contains a '..' component that would leave the root")]
    ParentComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} contains an empty or '.' component")]
    EmptyComponent(String),
    #[error("name {0:?} is longer than {NAME_BYTES_MAX} bytes")]
    NameTooLong(String),
    #[error("path {0:?} is longer than {PATH_BYTES_MAX} bytes")]
    PathTooLong(String),
    #[error("name {0:?} is not a single path component")]
    NotAName(String),
}

/// A path relative to a transfer root, `/`-separated, guaranteed not to escape the root.
/// The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct RelPath(Vec<u8>);

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks that `name` is one valid path component.
pub fn validate_name(name: &[u8]) -> Result<(), PathError> {
    if name.is_empty() || name == b"." {
        return Err(PathError::EmptyComponent(lossy(name)));
    }
    if name == b".." {
        return Err(PathError::ParentComponent(lossy(name)));
    }
    if name.contains(&0) {
        return Err(PathError::Nul(lossy(name)));
    }
    if name.contains(&b'/') {
        return Err(PathError::NotAName(lossy(name)));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(PathError::NameTooLong(lossy(name)));
    }
    Ok(())
}

impl RelPath {
    /// The root itself.
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Parses a relative path. A single trailing `/` is tolerated; `a//b`, `./a`, `../a`,
    /// `/a` and NUL bytes are refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, PathError> {
        if bytes.first() == Some(&b'/') {
            return Err(PathError::Absolute(lossy(bytes)));
        }
        if bytes.len() > PATH_BYTES_MAX {
            return Err(PathError::PathTooLong(lossy(bytes)));
        }
        let trimmed = bytes.strip_suffix(b"/").unwrap_or(bytes);
        if trimmed.is_empty() {
            return Ok(Self::root());
        }
        for component in trimmed.split(|&b| b == b'/') {
            validate_name(component).map_err(|e| match e {
                PathError::EmptyComponent(_) => PathError::EmptyComponent(lossy(bytes)),
                PathError::ParentComponent(_) => PathError::ParentComponent(lossy(bytes)),
                PathError::Nul(_) => PathError::Nul(lossy(bytes)),
                other => other,
            })?;
        }
        Ok(RelPath(trimmed.to_vec()))
    }

    /// Parses a path given as text (for command-line arguments and URLs).
    pub fn parse_str(text: &str) -> Result<Self, PathError> {
        Self::parse(text.as_bytes())
    }

    /// This path with one more component.
    pub fn join(&self, name: &[u8]) -> Result<Self, PathError> {
        validate_name(name)?;
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        if bytes.len() > PATH_BYTES_MAX {
            return Err(PathError::PathTooLong(lossy(&bytes)));
        }
        Ok(RelPath(bytes))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as an OS path relative to the root (`.` for the root).
    pub fn as_path(&self) -> &Path {
        if self.0.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(&self.0)) }
    }

    /// `root/self`.
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.0.is_empty() { root.to_path_buf() } else { root.join(OsStr::from_bytes(&self.0)) }
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some((RelPath(self.0[..i].to_vec()), &self.0[i + 1..])),
            None => Some((RelPath::root(), &self.0[..])),
        }
    }

    /// The last component (empty for the root).
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// Number of components (0 for the root).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() { 0 } else { self.0.iter().filter(|&&b| b == b'/').count() + 1 }
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        if other.0.is_empty() {
            return true;
        }
        self.0.starts_with(&other.0)
            && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/')
    }

    /// Lossy text form for messages.
    pub fn display(&self) -> String {
        if self.0.is_empty() { ".".to_string() } else { lossy(&self.0) }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_plain_paths() {
        assert_eq!(RelPath::parse(b"a/b c/d").unwrap().as_bytes(), b"a/b c/d");
        assert_eq!(RelPath::parse(b"a/").unwrap().as_bytes(), b"a");
        assert!(RelPath::parse(b"").unwrap().is_root());
        assert_eq!(RelPath::parse("ünï/x\ny".as_bytes()).unwrap().depth(), 2);
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(RelPath::parse(b"/etc/passwd"), Err(PathError::Absolute(_))));
        assert!(matches!(RelPath::parse(b"../x"), Err(PathError::ParentComponent(_))));
        assert!(matches!(RelPath::parse(b"a/../../x"), Err(PathError::ParentComponent(_))));
        assert!(matches!(RelPath::parse(b"a/\0b"), Err(PathError::Nul(_))));
        assert!(matches!(RelPath::parse(b"a//b"), Err(PathError::EmptyComponent(_))));
        assert!(matches!(RelPath::parse(b"./a"), Err(PathError::EmptyComponent(_))));
        assert!(RelPath::root().join(b"..").is_err());
        assert!(RelPath::root().join(b"a/b").is_err());
    }

    #[test]
    fn split_and_prefix() {
        let p = RelPath::parse(b"a/b/c").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!(parent.as_bytes(), b"a/b");
        assert_eq!(name, b"c");
        assert!(p.starts_with(&RelPath::parse(b"a/b").unwrap()));
        assert!(!RelPath::parse(b"a/bc").unwrap().starts_with(&RelPath::parse(b"a/b").unwrap()));
        assert!(p.starts_with(&RelPath::root()));
    }

    proptest! {
        /// Whatever bytes arrive, a parsed path joined to a root stays under that root.
        #[test]
        fn parsed_paths_never_escape(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = RelPath::parse(&bytes) {
                let root = Path::new("/srv/root");
                let joined = p.under(root);
                prop_assert!(joined.starts_with(root));
                for c in joined.strip_prefix(root).unwrap().components() {
                    prop_assert!(matches!(c, std::path::Component::Normal(_)));
                }
            }
        }
    }
}
