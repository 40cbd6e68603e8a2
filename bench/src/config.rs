//! What one `blit bench` run measures: the matrix, the datasets, the baselines, where files go.
//!
//! Owns the presets (`--quick` and the full matrix), the enums naming transports, directions
//! and baselines, and the bounds a configuration must respect. The CLI fills a
//! [`BenchConfig`]; the harness only reads it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{DatasetKind, DatasetParams};

/// Bounds (TIGER_STYLE: a limit on everything a flag can grow).
pub const STREAMS_MAX: u32 = 64;
pub const REPEAT_MAX: u32 = 100;
pub const RUNS_MAX: usize = 10_000;
pub const CHUNK_BYTES_MIN: u64 = 4096;
pub const CHUNK_BYTES_MAX: u64 = 64 << 20;
pub const IPERF_SECONDS_MAX: u32 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `blit xfer DIR DIR` in one process (streams do not apply).
    Local,
    /// Push/pull to a daemon over N TCP streams.
    Tcp,
    /// Push/pull over RDMA queue pairs (only where a verbs device exists).
    Rdma,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Local, Transport::Tcp, Transport::Rdma];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Local => "local",
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.name() == s.trim())
    }

    pub fn is_remote(self) -> bool {
        self != Transport::Local
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client → daemon.
    Push,
    /// Daemon → client.
    Pull,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }

    /// `push`, `pull` or `both`.
    pub fn parse_set(s: &str) -> Option<Vec<Direction>> {
        match s.trim() {
            "push" => Some(vec![Direction::Push]),
            "pull" => Some(vec![Direction::Pull]),
            "both" => Some(vec![Direction::Push, Direction::Pull]),
            _ => None,
        }
    }
}

/// A reference measurement run in the same session as blit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BaselineKind {
    /// `iperf3 -Z` and plain `iperf3`: the TCP link's ceiling.
    #[serde(rename = "iperf3")]
    Iperf3,
    /// `ib_write_bw`: the verbs link's ceiling.
    #[serde(rename = "ib_write_bw")]
    IbWriteBw,
    /// `rsync -a` against an rsync daemon.
    #[serde(rename = "rsync")]
    Rsync,
    /// `cp -a` (local).
    #[serde(rename = "cp")]
    Cp,
    /// `tar -c | tar -x` (local).
    #[serde(rename = "tar")]
    Tar,
}

impl BaselineKind {
    pub const ALL: [BaselineKind; 5] = [
        BaselineKind::Iperf3,
        BaselineKind::IbWriteBw,
        BaselineKind::Rsync,
        BaselineKind::Cp,
        BaselineKind::Tar,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BaselineKind::Iperf3 => "iperf3",
            BaselineKind::IbWriteBw => "ib_write_bw",
            BaselineKind::Rsync => "rsync",
            BaselineKind::Cp => "cp",
            BaselineKind::Tar => "tar",
        }
    }

    pub fn parse(s: &str) -> Option<BaselineKind> {
        BaselineKind::ALL.into_iter().find(|b| b.name() == s.trim())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchConfig {
    /// The `blit` executable the harness runs (`xfer`, `daemon`).
    pub blit_exe: PathBuf,
    pub transports: Vec<Transport>,
    pub streams: Vec<u32>,
    pub chunk_sizes_bytes: Vec<u64>,
    pub datasets: Vec<DatasetKind>,
    pub directions: Vec<Direction>,
    pub repeat: u32,
    pub dataset_params: DatasetParams,
    /// Datasets and targets live here (tmpfs by default, so the disk is not what is measured).
    pub work_dir: PathBuf,
    pub out_dir: PathBuf,
    /// Keep the generated datasets for the next run (targets are always removed).
    pub keep: bool,
    /// `blit://HOST:PORT/path` of a remote daemon; `None` starts an embedded one on loopback.
    pub target: Option<String>,
    pub baselines: Vec<BaselineKind>,
    pub iperf_seconds: u32,
    /// `HOST[:PORT]` of an `iperf3 -s` for a remote target.
    pub iperf3_server: Option<String>,
    /// Host running `ib_write_bw` (server side) for a remote target.
    pub ib_server: Option<String>,
    /// Verbs device for blit (`--rdma-device`, client and embedded daemon) and ib_write_bw
    /// (`-d`); default: blit's choice, and the first in /sys/class/infiniband for ib_write_bw.
    pub rdma_device: Option<String>,
    /// Extra ib_write_bw arguments for both sides (e.g. `-x 3` for a RoCE v2 GID index).
    pub ib_args: Vec<String>,
    /// `rsync://HOST[:PORT]/MODULE` (a writable module) for a remote target.
    pub rsync_url: Option<String>,
    /// `--numa` passed to `blit xfer` and the embedded daemon.
    pub numa: Option<String>,
    /// Extra arguments for every `blit xfer`.
    pub xfer_args: Vec<String>,
    /// Attach perf counters (`--no-counters` turns them off).
    pub counters: bool,
    /// Where to append history records; `None` appends nothing.
    pub history: Option<PathBuf>,
    /// Seconds after which one measured command is killed.
    pub run_timeout_s: u64,
    pub quick: bool,
    /// Memory to memory (`blit xfer --mem`): the large dataset's size is generated by the source
    /// and verified and discarded by the target, so no disk or file system is measured.
    #[serde(default)]
    pub mem: bool,
    /// Print one line per run on stderr.
    pub verbose: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

/// `/dev/shm/blitx-bench` when /dev/shm exists (tmpfs: no disk in the measurement), else the
/// temp dir.
pub fn default_work_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    base.join("blitx-bench")
}

impl BenchConfig {
    /// The full matrix (about 1 GiB per dataset, repeat 3).
    pub fn full(blit_exe: PathBuf, started_unix_s: u64) -> BenchConfig {
        BenchConfig {
            blit_exe,
            transports: Transport::ALL.to_vec(),
            streams: vec![1, 2, 4, 8],
            chunk_sizes_bytes: vec![256 << 10, 1 << 20, 4 << 20, 16 << 20],
            datasets: DatasetKind::ALL.to_vec(),
            directions: vec![Direction::Push],
            repeat: 3,
            dataset_params: DatasetParams::full(),
            work_dir: default_work_dir(),
            out_dir: PathBuf::from("bench-out").join(crate::units::utc_compact(started_unix_s)),
            keep: false,
            target: None,
            baselines: BaselineKind::ALL.to_vec(),
            iperf_seconds: 5,
            iperf3_server: None,
            ib_server: None,
            rdma_device: None,
            ib_args: Vec::new(),
            rsync_url: None,
            numa: None,
            xfer_args: Vec::new(),
            counters: true,
            history: None,
            run_timeout_s: 600,
            quick: false,
            mem: false,
            verbose: true,
        }
    }

    /// `--quick`: every transport and baseline once, tiny datasets, 2 × 2 points per remote
    /// transport; well under a minute on loopback.
    pub fn quick(blit_exe: PathBuf, started_unix_s: u64) -> BenchConfig {
        BenchConfig {
            streams: vec![1, 4],
            chunk_sizes_bytes: vec![1 << 20, 4 << 20],
            repeat: 1,
            dataset_params: DatasetParams::quick(),
            iperf_seconds: 1,
            run_timeout_s: 120,
            quick: true,
            ..BenchConfig::full(blit_exe, started_unix_s)
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.mem {
            if self.datasets != [DatasetKind::Large] {
                return bad("--mem moves the large dataset's size: use --datasets large".into());
            }
            if let Some(b) = self
                .baselines
                .iter()
                .find(|b| !matches!(b, BaselineKind::Iperf3 | BaselineKind::IbWriteBw))
            {
                return bad(format!(
                    "--mem compares with the link's tools (iperf3, ib_write_bw), not {}",
                    b.name()
                ));
            }
        }
        if self.transports.is_empty() || self.datasets.is_empty() || self.directions.is_empty() {
            return bad("--transports, --datasets and --direction must each name something".into());
        }
        if self.streams.is_empty() || self.chunk_sizes_bytes.is_empty() {
            return bad("--streams and --chunk-sizes must each name something".into());
        }
        if let Some(s) = self.streams.iter().find(|s| **s == 0 || **s > STREAMS_MAX) {
            return bad(format!("--streams {s}: must be 1..={STREAMS_MAX}"));
        }
        for c in &self.chunk_sizes_bytes {
            if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(c) || c % CHUNK_BYTES_MIN != 0 {
                return bad(format!(
                    "--chunk-sizes {c}: must be a multiple of 4K between 4K and 64M"
                ));
            }
        }
        if self.repeat == 0 || self.repeat > REPEAT_MAX {
            return bad(format!("--repeat {}: must be 1..={REPEAT_MAX}", self.repeat));
        }
        if self.iperf_seconds == 0 || self.iperf_seconds > IPERF_SECONDS_MAX {
            return bad(format!("--iperf-seconds must be 1..={IPERF_SECONDS_MAX}"));
        }
        if let Some(t) = &self.target
            && !t.starts_with("blit://")
        {
            return bad(format!("--target {t}: expected blit://HOST[:PORT]/path"));
        }
        if let Some(u) = &self.rsync_url
            && !u.starts_with("rsync://")
        {
            return bad(format!("--rsync-url {u}: expected rsync://HOST[:PORT]/MODULE"));
        }
        if self.run_count() > RUNS_MAX {
            return bad(format!(
                "{} runs requested (more than {RUNS_MAX}); narrow the matrix or lower --repeat",
                self.run_count()
            ));
        }
        self.dataset_params.validate().map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Measured blit runs this configuration asks for (baselines not counted).
    pub fn run_count(&self) -> usize {
        crate::matrix::cells(self).len().saturating_mul(self.repeat as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        BenchConfig::full("blit".into(), 0).validate().unwrap();
        let q = BenchConfig::quick("blit".into(), 0);
        q.validate().unwrap();
        assert!(q.quick && q.repeat == 1);
    }

    #[test]
    fn bounds_are_enforced() {
        let ok = BenchConfig::quick("blit".into(), 0);
        let cases = [
            BenchConfig { streams: vec![0], ..ok.clone() },
            BenchConfig { streams: vec![65], ..ok.clone() },
            BenchConfig { chunk_sizes_bytes: vec![1000], ..ok.clone() },
            BenchConfig { chunk_sizes_bytes: vec![128 << 20], ..ok.clone() },
            BenchConfig { repeat: 0, ..ok.clone() },
            BenchConfig { transports: vec![], ..ok.clone() },
            BenchConfig { target: Some("host:1/x".into()), ..ok.clone() },
            BenchConfig { repeat: 100, streams: (1..=64).collect(), ..ok.clone() },
        ];
        for c in cases {
            assert!(
                c.validate().is_err(),
                "{:?} {:?} {}",
                c.streams,
                c.chunk_sizes_bytes,
                c.repeat
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for t in Transport::ALL {
            assert_eq!(Transport::parse(t.name()), Some(t));
        }
        for b in BaselineKind::ALL {
            assert_eq!(BaselineKind::parse(b.name()), Some(b));
        }
        assert_eq!(Direction::parse_set("both").unwrap().len(), 2);
        assert!(Direction::parse_set("sideways").is_none());
    }
}
