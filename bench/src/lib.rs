//! blit's benchmark harness (`blit bench`): measures blit over a matrix of transports, stream
//! counts, chunk sizes and datasets, next to baselines run in the same session (iperf3,
//! ib_write_bw, an rsync daemon, `cp -a`, `tar | tar`), with the CPU cost of both sides, and
//! writes raw runs (CSV, JSON), a Markdown summary, SVG plots and a local history.
//!
//! The harness drives the `blit` executable as child processes (`blit xfer`, `blit daemon`), so
//! it measures exactly what users run, including process start-up. It never talks to the
//! network except through those processes and the baseline tools, on the addresses it is
//! given; nothing leaves the machine.
//!
//! Layout: `config` (what to measure) → `matrix` (cells) → `harness` (running them, using
//! `child` + `wait` for measured commands, `servers` for daemons, `procstat` and `counters` for
//! CPU cost, `dataset` for the trees) → `record` (aggregation) → `report` / `plot` (files) and
//! `history` (the JSON Lines log `blit bench --history` summarizes).

pub mod baselines;
pub mod child;
pub mod config;
pub mod counters;
pub mod dataset;
pub mod harness;
pub mod history;
pub mod matrix;
pub mod plot;
pub mod procstat;
pub mod record;
pub mod report;
pub mod servers;
pub mod stats;
pub mod units;
mod wait;

pub use config::{BaselineKind, BenchConfig, Direction, Transport};
pub use dataset::{DatasetKind, DatasetParams};
pub use harness::{Outcome, run};
pub use history::HistoryRecord;
