//! `blit://HOST[:PORT]/path` remote specifications.

use blitx_core::RelPath;

use crate::DEFAULT_PORT;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path below the daemon's root.
    pub path: RelPath,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not a blit:// URL")]
    NotBlit(String),
    #[error("{0:?}: missing host")]
    NoHost(String),
    #[error("{0:?}: bad port")]
    BadPort(String),
    #[error("{url:?}: {source}")]
    Path { url: String, source: blitx_core::path::PathError },
}

impl RemoteSpec {
    /// True when `arg` looks like a remote spec (so a local path is never mistaken for one).
    pub fn is_remote(arg: &str) -> bool {
        arg.starts_with("blit://")
    }

    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = url.strip_prefix("blit://").ok_or_else(|| UrlError::NotBlit(url.into()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| UrlError::NoHost(url.into()))?;
            let host = &v6[..end];
            let port = match &v6[end + 1..] {
                "" => DEFAULT_PORT,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| UrlError::BadPort(url.into()))?,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => {
                    (h.to_string(), p.parse().map_err(|_| UrlError::BadPort(url.into()))?)
                }
                None => (authority.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(url.into()));
        }
        let path = RelPath::parse_str(path.trim_end_matches('/'))
            .map_err(|source| UrlError::Path { url: url.into(), source })?;
        Ok(RemoteSpec { host, port, path })
    }

    /// The gRPC endpoint URI.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for RemoteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host =
            if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(
            f,
            "blit://{host}:{}/{}",
            self.port,
            if self.path.is_root() { String::new() } else { self.path.display() }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let r = RemoteSpec::parse("blit://host/data/x").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.path.display()),
            ("host", DEFAULT_PORT, "data/x".into())
        );
        let r = RemoteSpec::parse("blit://127.0.0.1:7000/").unwrap();
        assert_eq!((r.port, r.path.is_root()), (7000, true));
        let r = RemoteSpec::parse("blit://[::1]:7000/a").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 7000));
        assert_eq!(r.endpoint(), "http://[::1]:7000");
        assert!(RemoteSpec::parse("blit://h/../etc").is_err());
        assert!(RemoteSpec::parse("blit:///x").is_err());
        assert!(RemoteSpec::parse("blit://h:99999/x").is_err());
        assert!(RemoteSpec::parse("/local").is_err());
        assert!(RemoteSpec::is_remote("blit://x") && !RemoteSpec::is_remote("./blit:"));
    }
}
