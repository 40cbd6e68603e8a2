//! `blit bench`: the benchmark harness (in the `blitx-bench` crate) behind a command line, and
//! `blit bench --history`.

use std::path::PathBuf;

use blitx_bench::{BaselineKind, BenchConfig, DatasetKind, Direction, Transport, history};

use crate::exit::Exit;
use crate::units::parse_bytes;

#[derive(Debug, clap::Args)]
#[command(after_help = "Outputs go to --out: runs.csv and runs.json (every run), summary.md \
    (also printed), plots/*.svg. Each matrix cell is appended to the history \
    ($BLIT_HISTORY, else $XDG_DATA_HOME/blit/history.jsonl, else \
    ~/.local/share/blit/history.jsonl). See docs/benchmarking.md.")]
pub struct BenchArgs {
    /// A small matrix on tiny datasets, repeat 1: well under a minute on loopback.
    #[arg(long)]
    pub quick: bool,
    /// Summarize the run history (per command, transport and dataset) and exit.
    #[arg(long)]
    pub history: bool,
    /// Transports to measure (comma-separated): local, tcp, rdma. RDMA is probed and skipped,
    /// with the reason, where it is unavailable. [default: local,tcp,rdma]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_transport)]
    pub transports: Option<Vec<Transport>>,
    /// TCP streams (--streams) / RDMA queue pairs (--qps, at most 16), comma-separated.
    /// [default: 1,2,4,8; quick: 1,4]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub streams: Option<Vec<u32>>,
    /// Chunk sizes (comma-separated). [default: 256K,1M,4M,16M; quick: 1M,4M]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_bytes)]
    pub chunk_sizes: Option<Vec<u64>>,
    /// Datasets (comma-separated): large, small, mixed. [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_dataset)]
    pub datasets: Option<Vec<DatasetKind>>,
    /// Remote cells push to the daemon, pull from it, or both. [default: push]
    #[arg(long, value_name = "DIR", value_parser = ["push", "pull", "both"])]
    pub direction: Option<String>,
    /// Runs per cell; the summary shows median, min and max. [default: 3; quick: 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: Option<u32>,
    /// Measure against a remote daemon (blit://HOST[:PORT]/path) instead of starting one on
    /// 127.0.0.1.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Where datasets and targets live. [default: /dev/shm/blitx-bench, else $TMPDIR]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where the results go. [default: ./bench-out/<UTC timestamp>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Keep the generated datasets for the next run (reused when the sizes match).
    #[arg(long)]
    pub keep: bool,
    /// Size of the large dataset's one file. [default: 2G; quick: 1536M]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub large_size: Option<u64>,
    /// Files in the small dataset. [default: 100000; quick: 50000]
    #[arg(long, value_name = "N")]
    pub small_files: Option<u64>,
    /// Size of each small file. [default: 4K]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub small_size: Option<u64>,
    /// Files in the mixed dataset (log-uniform sizes from 1K to --mixed-max).
    /// [default: 1000; quick: 1000]
    #[arg(long, value_name = "N")]
    pub mixed_files: Option<u64>,
    /// Largest file of the mixed dataset. [default: 8M; quick: 8M]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub mixed_max: Option<u64>,
    /// Seed of the dataset contents and sizes.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Baselines to run (comma-separated): iperf3, ib_write_bw, rsync, cp, tar. [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_baseline)]
    pub baselines: Option<Vec<BaselineKind>>,
    /// Memory to memory: each blit run moves the large dataset's size as generated data to a
    /// verifying sink (`blit xfer --mem`), with no files on either side; compare it with iperf3
    /// and ib_write_bw. Implies --datasets large and, unless given, --baselines iperf3,ib_write_bw.
    #[arg(long)]
    pub mem: bool,
    /// Run no baselines.
    #[arg(long, conflicts_with = "baselines")]
    pub no_baselines: bool,
    /// Seconds per iperf3 / ib_write_bw test. [default: 5; quick: 1]
    #[arg(long, value_name = "SECS")]
    pub iperf_seconds: Option<u32>,
    /// With --target: an `iperf3 -s` on the server (HOST[:PORT], port 5201 by default).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub iperf3_server: Option<String>,
    /// With --target: the host where `ib_write_bw` (server side) waits.
    #[arg(long, value_name = "HOST")]
    pub ib_server: Option<String>,
    /// Verbs device: passed to `blit xfer`/the embedded daemon as --rdma-device and to
    /// ib_write_bw as -d. [default: blit's choice; ib_write_bw: the first device]
    #[arg(long, value_name = "DEV")]
    pub rdma_device: Option<String>,
    /// Extra ib_write_bw arguments for both sides, e.g. "-x 3" (a RoCE v2 GID index).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub ib_args: Option<String>,
    /// With --target: a writable module of an rsync daemon on the server.
    #[arg(long, value_name = "rsync://HOST[:PORT]/MODULE")]
    pub rsync_url: Option<String>,
    /// Passed to `blit xfer --numa` and the embedded daemon: auto, off or node=N.
    #[arg(long, value_name = "POLICY", value_parser = parse_numa)]
    pub numa: Option<String>,
    /// An extra argument for every `blit xfer` (repeatable), e.g. --xfer-arg=--threads=4.
    #[arg(long = "xfer-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub xfer_args: Vec<String>,
    /// Do not attach perf counters.
    #[arg(long)]
    pub no_counters: bool,
    /// Do not append this run's cells to the history.
    #[arg(long)]
    pub no_history: bool,
    /// Seconds after which one measured command is killed. [default: 600; quick: 120]
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// No per-run progress lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    Transport::parse(s).ok_or_else(|| format!("unknown transport {s:?} (local, tcp, rdma)"))
}

fn parse_dataset(s: &str) -> Result<DatasetKind, String> {
    DatasetKind::parse(s).ok_or_else(|| format!("unknown dataset {s:?} (large, small, mixed)"))
}

fn parse_baseline(s: &str) -> Result<BaselineKind, String> {
    BaselineKind::parse(s)
        .ok_or_else(|| format!("unknown baseline {s:?} (iperf3, ib_write_bw, rsync, cp, tar)"))
}

/// Checked here so a typo fails at once instead of in every run; passed on as written.
fn parse_numa(s: &str) -> Result<String, String> {
    s.parse::<blitx_topology::NumaPolicy>().map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn config(args: BenchArgs) -> anyhow::Result<BenchConfig> {
    let exe = std::env::current_exe()?;
    let now = history::now_unix_s();
    let mut c = if args.quick { BenchConfig::quick(exe, now) } else { BenchConfig::full(exe, now) };
    if let Some(v) = args.transports {
        c.transports = v;
    }
    if let Some(v) = args.streams {
        c.streams = v;
    }
    if let Some(v) = args.chunk_sizes {
        c.chunk_sizes_bytes = v;
    }
    let datasets_given = args.datasets.is_some();
    if let Some(v) = args.datasets {
        c.datasets = v;
    }
    if let Some(d) = args.direction.as_deref().and_then(Direction::parse_set) {
        c.directions = d;
    }
    if let Some(v) = args.repeat {
        c.repeat = v;
    }
    c.target = args.target;
    if let Some(v) = args.dir {
        c.work_dir = v;
    }
    if let Some(v) = args.out {
        c.out_dir = v;
    }
    c.keep = args.keep;
    let p = &mut c.dataset_params;
    p.large_bytes = args.large_size.unwrap_or(p.large_bytes);
    p.small_files = args.small_files.unwrap_or(p.small_files);
    p.small_file_bytes = args.small_size.unwrap_or(p.small_file_bytes);
    p.mixed_files = args.mixed_files.unwrap_or(p.mixed_files);
    p.mixed_max_bytes = args.mixed_max.unwrap_or(p.mixed_max_bytes);
    p.seed = args.seed;
    if args.mem {
        c.mem = true;
        if !datasets_given {
            c.datasets = vec![DatasetKind::Large];
        }
        if args.baselines.is_none() {
            c.baselines = vec![BaselineKind::Iperf3, BaselineKind::IbWriteBw];
        }
    }
    if let Some(v) = args.baselines {
        c.baselines = v;
    }
    if args.no_baselines {
        c.baselines.clear();
    }
    if let Some(v) = args.iperf_seconds {
        c.iperf_seconds = v;
    }
    c.iperf3_server = args.iperf3_server;
    c.ib_server = args.ib_server;
    c.rdma_device = args.rdma_device;
    c.ib_args =
        args.ib_args.map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default();
    c.rsync_url = args.rsync_url;
    c.numa = args.numa;
    c.xfer_args = args.xfer_args;
    c.counters = !args.no_counters;
    if !args.no_history {
        match history::default_path() {
            Ok(p) => c.history = Some(p),
            Err(e) => eprintln!("blit bench: not recording history: {e}"),
        }
    }
    if let Some(v) = args.timeout {
        c.run_timeout_s = v;
    }
    c.verbose = !args.quiet;
    Ok(c)
}

fn show_history() -> Exit {
    let path = match history::default_path() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("blit: error: {e}");
            return Exit::Fatal;
        }
    };
    match history::load(&path) {
        Ok(loaded) => {
            crate::output::write_stdout(&history::render_summary(&loaded, &path));
            Exit::Ok
        }
        Err(e) => {
            eprintln!("blit: error: cannot read {}: {e}", path.display());
            Exit::Fatal
        }
    }
}

pub fn run(args: BenchArgs) -> Exit {
    if args.history {
        return show_history();
    }
    let cfg = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("blit: error: {e:#}");
            return Exit::Fatal;
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("blit: error: {e}");
        return Exit::Usage;
    }
    match blitx_bench::run(&cfg) {
        Ok(outcome) => {
            crate::output::write_stdout(&outcome.summary_md);
            eprintln!(
                "results in {} (runs.csv, runs.json, summary.md, {} plots)",
                outcome.out_dir.display(),
                outcome.plots.len()
            );
            if outcome.failed_runs > 0 {
                eprintln!("blit bench: {} runs failed (see summary.md)", outcome.failed_runs);
                Exit::Partial
            } else {
                Exit::Ok
            }
        }
        Err(e) => {
            eprintln!("blit: error: {e:#}");
            Exit::Fatal
        }
    }
}
