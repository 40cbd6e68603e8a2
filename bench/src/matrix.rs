//! The run matrix: which (dataset, transport, direction, streams, chunk size) cells to measure.
//!
//! Pure: a function of the configuration. Local copies have no streams and no direction, so a
//! local cell exists once per dataset and chunk size, not once per stream count.

use serde::{Deserialize, Serialize};

use crate::config::{BenchConfig, Direction, Transport};
use crate::dataset::DatasetKind;
use crate::units::size_label;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cell {
    pub dataset: DatasetKind,
    pub transport: Transport,
    /// `None` for local copies.
    pub direction: Option<Direction>,
    /// TCP streams or RDMA queue pairs; `None` for local copies.
    pub streams: Option<u32>,
    pub chunk_bytes: u64,
}

impl Cell {
    /// `tcp push` / `local`.
    pub fn mode(&self) -> String {
        match self.direction {
            Some(d) => format!("{} {}", self.transport.name(), d.name()),
            None => self.transport.name().to_string(),
        }
    }

    /// `blit tcp push, 4 streams, chunk 1M`.
    pub fn label(&self) -> String {
        let mut s = format!("blit {}", self.mode());
        if let Some(n) = self.streams {
            s.push_str(&format!(", {n} stream{}", if n == 1 { "" } else { "s" }));
        }
        s.push_str(&format!(", chunk {}", size_label(self.chunk_bytes)));
        s
    }
}

fn sorted_unique<T: Ord + Copy>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// Every cell of the configured matrix, grouped by dataset, then transport, direction,
/// streams and chunk size.
pub fn cells(cfg: &BenchConfig) -> Vec<Cell> {
    let mut out = Vec::new();
    let streams = sorted_unique(&cfg.streams);
    let chunks = sorted_unique(&cfg.chunk_sizes_bytes);
    let directions = sorted_unique(&cfg.directions);
    for dataset in sorted_unique(&cfg.datasets) {
        for transport in sorted_unique(&cfg.transports) {
            if !transport.is_remote() {
                for &chunk_bytes in &chunks {
                    out.push(Cell {
                        dataset,
                        transport,
                        direction: None,
                        streams: None,
                        chunk_bytes,
                    });
                }
                continue;
            }
            for &direction in &directions {
                for &s in &streams {
                    for &chunk_bytes in &chunks {
                        out.push(Cell {
                            dataset,
                            transport,
                            direction: Some(direction),
                            streams: Some(s),
                            chunk_bytes,
                        });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_matrix_size() {
        let cfg = BenchConfig::full("blit".into(), 0);
        // 3 datasets × (local: 4 chunks + tcp, rdma: 4 streams × 4 chunks × 1 direction).
        assert_eq!(cells(&cfg).len(), 3 * (4 + 2 * 16));
        let both = BenchConfig { directions: vec![Direction::Push, Direction::Pull], ..cfg };
        assert_eq!(cells(&both).len(), 3 * (4 + 2 * 32));
    }

    #[test]
    fn duplicates_collapse_and_local_has_no_streams() {
        let cfg = BenchConfig {
            transports: vec![Transport::Local, Transport::Local],
            streams: vec![4, 4, 1],
            chunk_sizes_bytes: vec![1 << 20],
            datasets: vec![DatasetKind::Small],
            ..BenchConfig::quick("blit".into(), 0)
        };
        let c = cells(&cfg);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].streams, c[0].direction), (None, None));
        assert_eq!(c[0].label(), "blit local, chunk 1M");
    }

    #[test]
    fn labels_name_every_dimension() {
        let c = Cell {
            dataset: DatasetKind::Large,
            transport: Transport::Tcp,
            direction: Some(Direction::Pull),
            streams: Some(1),
            chunk_bytes: 256 << 10,
        };
        assert_eq!(c.label(), "blit tcp pull, 1 stream, chunk 256K");
    }
}
