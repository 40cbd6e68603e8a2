//! `blit daemon --root DIR [--listen ADDR:PORT]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use blitx_control::server::{self, DaemonConfig, run_daemon};

use crate::exit::Exit;
use crate::units::parse_bytes;

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
    /// Apply the owner and group clients send. Without it, a root daemon gives everything a
    /// client creates to the owner of --root (docs/security.md).
    #[arg(long)]
    pub allow_owners: bool,
    /// Keep setuid/setgid bits clients send on files (stripped by default).
    #[arg(long)]
    pub allow_setid: bool,
    /// Set the trusted.* and security.* extended attributes clients send (a root daemon;
    /// dropped by default: security.capability would make a client's file privileged).
    #[arg(long)]
    pub allow_xattrs_privileged: bool,
    /// Make the device nodes clients send (a root daemon; refused by default: a client's node
    /// for a disk would give it the disk).
    #[arg(long)]
    pub allow_devices: bool,
    /// Sessions served at once; more are refused (RESOURCE_EXHAUSTED).
    #[arg(long, value_name = "N", default_value_t = server::MAX_SESSIONS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_sessions: u64,
    /// Control connections at once; beyond it the quietest idle one is closed.
    #[arg(long, value_name = "N", default_value_t = server::MAX_CONNECTIONS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Listing entries one session may send (0: no limit).
    #[arg(long, value_name = "N", default_value_t = server::MAX_ENTRIES_DEFAULT)]
    pub max_entries: u64,
    /// Memory one session may use for buffers and bookkeeping (the client's streams × chunk
    /// size are reduced to fit).
    #[arg(long, value_name = "SIZE", default_value = server::SESSION_MEMORY_DEFAULT, value_parser = parse_bytes)]
    pub session_memory: u64,
    /// Memory all sessions together may use; a session that does not fit is refused.
    #[arg(long, value_name = "SIZE", default_value = server::MEMORY_DEFAULT, value_parser = parse_bytes)]
    pub memory: u64,
    /// Seconds a new session may take to send its request.
    #[arg(long, value_name = "SECS", default_value_t = server::OPEN_TIMEOUT_SECS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub open_timeout: u64,
    /// End a session when the client sends nothing and no data moves for this long.
    #[arg(long, value_name = "SECS", default_value_t = server::IDLE_TIMEOUT_SECS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub idle_timeout: u64,
    /// Bytes per second all sessions together move, sending and receiving (one shared cap):
    /// 200M is 200 MB/s (decimal; 200MiB for binary). At least a 4 MiB chunk in 5 s.
    #[arg(long, value_name = "RATE", value_parser = crate::units::parse_rate)]
    pub bwlimit: Option<u64>,
    /// Serve Prometheus metrics (/metrics) and a status page (/) over HTTP on this address
    /// (unauthenticated and read-only; default: not served).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
}

pub fn run(args: DaemonArgs) -> Exit {
    if !args.root.is_dir() {
        eprintln!("blit: error: --root {} is not a directory", args.root.display());
        return Exit::Fatal;
    }
    if let Some(rate) = args.bwlimit
        && let Err(e) = blitx_core::rate::check_rate(rate, blitx_core::session::CHUNK_BYTES_DEFAULT)
    {
        eprintln!("blit: error: --bwlimit: {e}");
        return Exit::Usage;
    }
    let mut cfg = DaemonConfig::new(args.root, args.listen);
    cfg.read_only = args.read_only;
    cfg.threads = args.threads.unwrap_or_else(blitx_storage::default_io_threads);
    cfg.default_streams = args.streams;
    cfg.stall_timeout = Duration::from_secs(args.stall_timeout.max(1));
    cfg.numa = args.numa;
    cfg.rdma_device = args.rdma_device;
    cfg.no_rdma = args.no_rdma;
    cfg.allow_owners = args.allow_owners;
    cfg.allow_setid = args.allow_setid;
    cfg.allow_xattrs_privileged = args.allow_xattrs_privileged;
    cfg.allow_devices = args.allow_devices;
    cfg.max_sessions = usize::try_from(args.max_sessions).unwrap_or(usize::MAX);
    cfg.max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    cfg.max_entries = args.max_entries;
    cfg.session_memory_bytes = args.session_memory;
    cfg.memory_bytes = args.memory;
    cfg.open_timeout = Duration::from_secs(args.open_timeout);
    cfg.idle_timeout = Duration::from_secs(args.idle_timeout);
    cfg.bwlimit_bytes_per_s = args.bwlimit;
    let shutdown = blitx_control::cancel::Cancel::new();
    cfg.metrics = args.metrics;
    let on_listening = |bound: server::Bound| {
        if let Some(m) = bound.metrics {
            eprintln!("blit daemon metrics on http://{m}/");
        }
        eprintln!("blit daemon listening on {}", bound.control);
    };
    match run_daemon(cfg, shutdown, on_listening) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("blit: error: {e}: {}", blitx_control::server::source_chain(&e));
            Exit::Fatal
        }
    }
}
