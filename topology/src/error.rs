//! The crate's errors. Discovery errors carry what was being read; placement and policy errors
//! are what a user typed wrong (`--numa node=5` on a 2-node machine) and say what would work.
//! Pinning and memory binding never return these: they are best effort and report a `bool`.

use std::path::PathBuf;

/// Discovering the topology failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// hwloc could not build a topology of this machine.
    #[error("hwloc could not discover this machine's topology")]
    HwlocDiscover {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// hwloc refused a synthetic description.
    #[error("hwloc rejected the synthetic topology `{description}`")]
    HwlocSynthetic {
        description: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// hwloc refused an XML topology.
    #[error("hwloc rejected the XML topology")]
    HwlocXml {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A sysfs directory that exists could not be listed.
    #[error("reading {path}")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// hwloc reported a CPU or node index that does not fit blit's `u32` ids.
    #[error("hwloc reported {what} index {index}, which does not fit in u32")]
    IndexRange { what: &'static str, index: usize },
}

/// `--numa` was not `auto`, `off` or `node=N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyParseError {
    #[error("unknown NUMA policy `{text}`: expected `auto`, `off` or `node=N`")]
    Unknown { text: String },
    #[error("bad NUMA node in `{text}`: expected `node=N` with N a node id such as 0 or 1")]
    BadNode { text: String },
}

/// Placement could not honor an explicit request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// `--numa node=N` named a node this machine does not have.
    #[error("NUMA node {node} does not exist here; this machine has nodes {}", list(.available))]
    NoSuchNode { node: u32, available: Vec<u32> },
}

fn list(ids: &[u32]) -> String {
    if ids.is_empty() {
        return "(none)".to_owned();
    }
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}
