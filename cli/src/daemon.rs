//! `blit daemon --root DIR [--listen ADDR:PORT]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use blitx_control::server::{DaemonConfig, run_daemon};

use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// The export root: every path a client names is resolved below it.
    #[arg(long)]
    pub root: PathBuf,
    /// Control-plane address. Data listeners bind the same address (port chosen per session).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], blitx_control::DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// Serve pulls only; refuse pushes.
    #[arg(long)]
    pub read_only: bool,
    /// TCP data streams per session when the client does not ask for a number.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: u32,
    /// I/O threads per session side (default: the machine's cores, 2..=8).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds without data-plane progress before a session fails.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub stall_timeout: u64,
    /// Where session threads and buffers go: auto (the NUMA node of the NIC that reaches the
    /// client), off, or node=N.
    #[arg(long, default_value = "auto")]
    pub numa: blitx_topology::NumaPolicy,
    /// The verbs device to serve RDMA on (default: the first with an active port).
    #[arg(long, value_name = "NAME")]
    pub rdma_device: Option<String>,
    /// Never offer RDMA (TCP only).
    #[arg(long)]
    pub no_rdma: bool,
}

pub fn run(args: DaemonArgs) -> Exit {
    if !args.root.is_dir() {
        eprintln!("blit: error: --root {} is not a directory", args.root.display());
        return Exit::Fatal;
    }
    let cfg = DaemonConfig {
        root: args.root,
        listen: args.listen,
        read_only: args.read_only,
        threads: args.threads.unwrap_or_else(blitx_storage::default_io_threads),
        default_streams: args.streams,
        stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
        numa: args.numa,
        rdma_device: args.rdma_device,
        no_rdma: args.no_rdma,
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    match run_daemon(cfg, shutdown, |addr| eprintln!("blit daemon listening on {addr}")) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("blit: error: {e}: {}", blitx_control::server::source_chain(&e));
            Exit::Fatal
        }
    }
}
