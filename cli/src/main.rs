//! `blit`: the command-line front end. Parses arguments, wires the engine, maps errors to
//! documented exit codes. All transfer logic lives in the library crates.

mod bench;
mod daemon;
mod exit;
mod output;
mod topo;
mod units;
mod xfer;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "blit", version, about = "Fast file transfer: RDMA first, zero-copy TCP fallback")]
struct Cli {
    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make TARGET a copy of SOURCE's contents (like `rsync -a SOURCE/ TARGET/`); either side
    /// may be a daemon (`blit://HOST[:PORT]/path`).
    Xfer(xfer::XferArgs),
    /// Serve a directory to blit clients (push and pull).
    Daemon(daemon::DaemonArgs),
    /// Show sockets, NUMA nodes, NICs, verbs devices and disks as blit sees them.
    Topo(topo::TopoArgs),
    /// Measure blit across transports, streams, chunk sizes and datasets, next to iperf3,
    /// ib_write_bw, rsync, cp and tar baselines; CPU cost per side; reports, plots, history.
    Bench(Box<bench::BenchArgs>),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let code = match cli.command {
        Command::Xfer(args) => xfer::run(args, cli.verbose),
        Command::Daemon(args) => daemon::run(args),
        Command::Topo(args) => topo::run(args),
        Command::Bench(args) => bench::run(*args),
    };
    std::process::exit(code.into());
}
