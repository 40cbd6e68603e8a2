//! `blit xfer SOURCE TARGET`: local copies, pushes (`blit xfer DIR blit://HOST/path`) and pulls
//! (`blit xfer blit://HOST/path DIR`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blitx_control::cancel::Cancel;
use blitx_control::client::{self, ClientError, ClientOptions, Local};
use blitx_control::convert::TransportChoice;
use blitx_control::url::RemoteSpec;
use blitx_core::session::{Compare, IoMode, SessionParams};
use blitx_core::transport::{MemFaults, PayloadPref};
use blitx_storage::RootDir;
use blitx_storage::local::PairProgress;
use blitx_storage::local::{LocalOptions, run_local};
use blitx_storage::report::{FileError, SourceReport, TargetReport};
use blitx_storage::target::SingleFile;

use crate::exit::{Exit, UsageError};
use crate::output::{PrintReporter, Summary, drive_bar, drive_lines, escape_str, make_bar};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgressMode {
    Off,
    /// indicatif's bar on a terminal.
    Bar,
    /// A plain line every few seconds (`--progress` without a terminal).
    Lines,
}
use crate::units::parse_bytes;

#[derive(Debug, clap::Args)]
pub struct XferArgs {
    /// Directory to copy from, or blit://HOST[:PORT]/path to pull from a daemon (`-` with
    /// --mem).
    pub source: String,
    /// Directory to make a copy of SOURCE (created if missing), or blit://HOST[:PORT]/path to
    /// push to a daemon (`-` with --mem).
    pub target: String,
    /// Memory to memory, for measuring the network and blit without the disks: the source
    /// generates one file of SIZE bytes and the target verifies every chunk and writes nothing.
    /// The local side is `-`: `--mem 8G - blit://HOST/x` (push), `--mem 8G blit://HOST/x -`
    /// (pull), `--mem 8G - -` (in process). The daemon's path is not touched.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub mem: Option<u64>,
    /// Also delete what is in TARGET but not in SOURCE (only after everything else succeeded).
    #[arg(long)]
    pub mirror: bool,
    /// Move instead of copy (rsync's flag): remove each source file once the target reported
    /// it committed (or already up to date there), if it is still the file that was listed
    /// (same inode, size and times). Directories stay. A daemon removes its files only if it is
    /// not --read-only.
    #[arg(long)]
    pub remove_source_files: bool,
    /// Show what would be copied and deleted; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Compare file contents (xxh3-128) instead of size and modification time.
    #[arg(short = 'c', long)]
    pub checksum: bool,
    #[command(flatten)]
    pub filters: Box<crate::filters::FilterArgs>,
    /// Show progress: a bar on a terminal, else a line every 2 s (bytes, rate, files, ETA) and a
    /// last one at the end (default: a bar when stderr is a terminal).
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,
    /// One line per change on stdout, like rsync's: `>f+++++++++ path` for a new file received,
    /// `<f.st...... path` for a changed file sent, `cd` a directory made, `.f...p.....` only
    /// permissions set, `*deleting` (letters: checksum size time perms owner group - acl xattr).
    #[arg(short = 'i', long)]
    pub itemize_changes: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Data plane for remote transfers: auto (RDMA when both sides can, else TCP), tcp or rdma.
    #[arg(long, value_name = "KIND", default_value = "auto", value_parser = ["auto", "tcp", "rdma"])]
    pub transport: String,
    /// Parallel TCP data streams for remote transfers (default: the daemon's, 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: Option<u32>,
    /// RDMA queue pairs per session (frames are striped over them).
    #[arg(long, value_name = "N", default_value_t = blitx_control::dataplane::RDMA_QPS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub qps: u32,
    /// The local RDMA (verbs) device (default: the first with an active port).
    #[arg(long, value_name = "NAME")]
    pub rdma_device: Option<String>,
    /// RDMA: also hash every chunk (xxh3-64) and verify it at the receiver, as TCP always
    /// does. Off by default: RoCE's ICRC checks every packet in the NICs, and hashing is per-byte
    /// CPU work on both ends.
    #[arg(long)]
    pub rdma_frame_checksums: bool,
    /// RDMA completion handling on both ends: busy-poll (spins while completions flow, blocks
    /// after 2 ms idle) or event (sleeps on a completion channel; for oversubscribed cores).
    #[arg(long, value_name = "MODE", default_value = "busy-poll", value_parser = ["busy-poll", "event"])]
    pub rdma_cq: String,
    /// TCP: the zero-copy paths on both ends — the sender sends file regions with sendfile, the
    /// receiver splices each piece socket -> pipe -> file and reads it back to verify its
    /// checksum. Off by default: on loopback it measured slower and costlier than buffers
    /// (docs/benchmarks.md, "Zero-copy paths"); a NIC with checksum and segmentation offload
    /// may decide otherwise.
    #[arg(long)]
    pub tcp_zero_copy: bool,
    /// Socket buffer per TCP stream (default: sized by the kernel's autotuning / BDP).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub tcp_buffer: Option<u64>,
    /// Move at most RATE bytes per second, on every transport and all streams together: 200M
    /// is 200 MB/s (decimal; 200MiB for binary). One chunk must fit in 5 s of it (lower
    /// --chunk-size for slow rates). Pulls: the daemon sends at this rate.
    #[arg(long, value_name = "RATE", value_parser = crate::units::parse_rate)]
    pub bwlimit: Option<u64>,
    /// Seconds without data-plane progress before a remote transfer fails.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stall_timeout: u64,
    /// Seconds the daemon may take to connect, handshake and accept the session.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub connect_timeout: u64,
    /// End a remote transfer when the daemon sends nothing and no data moves for this long
    /// (0: wait as long as the daemon answers its keepalives).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub idle_timeout: u64,
    /// When another blit transfer is writing into TARGET (or a directory above or below it),
    /// wait for it instead of failing.
    #[arg(long)]
    pub wait_lock: bool,
    /// Size of one chunk of a large file (e.g. 1M, 4M, 16M).
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = parse_bytes)]
    pub chunk_size: u64,
    /// Files up to this size are packed into bundles (at most the bundle size less 4K: 1020K
    /// with chunks of 1M or more).
    /// [default: 256K, or less when the chunk size leaves a bundle less room]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub small_file_max: Option<u64>,
    /// I/O threads per side (default: the machine's cores, 2..=8; at most 64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,
    /// Do not set owners even when running as root.
    #[arg(long)]
    pub no_owner: bool,
    /// Do not copy extended attributes (copied by default: user.*; trusted.*/security.* as
    /// root, like rsync -X).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Do not copy POSIX ACLs (copied by default, like rsync -A).
    #[arg(long)]
    pub no_acls: bool,
    /// Make every file durable before it is renamed into place (fsync of its data), and every
    /// directory that received new names durable before success is reported: after a crash or
    /// power loss a target file is the old or the complete new one (rsync --fsync).
    #[arg(long)]
    pub fsync: bool,
    /// Start every file over: remove the partial files an interrupted transfer kept instead of
    /// resuming them (by default a re-run sends only the chunks they lack, each kept chunk
    /// confirmed by hash with the source, the finished file read back and checked).
    #[arg(long)]
    pub no_resume: bool,
    /// Delta transfer for files the target has an older copy of: the target sends the old
    /// copy's block signature (4 KiB blocks up to 4 GiB) and the source sends each chunk as
    /// copies from it and literal bytes where that is shorter (rsync's algorithm; every rebuilt
    /// chunk checked against the source's hash). auto: on when the link is slower than this
    /// machine hashes (a remote transfer over an interface whose speed is known), off for local
    /// copies and loopback.
    #[arg(long, value_name = "WHEN", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub delta: String,
    /// How file data meets the disks, on both ends: auto (O_DIRECT through io_uring for files
    /// of 64 MiB and more on ext4, XFS and F2FS, the page cache otherwise),
    /// buffered (always the page cache), direct (O_DIRECT for every chunked, non-sparse file).
    /// Local copies under auto keep the kernel's copy_file_range (reflinks where possible).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "buffered", "direct"])]
    pub io: String,
    /// Direct I/O requests in flight per reader and writer thread.
    #[arg(long, value_name = "N", default_value_t = blitx_core::session::IO_DEPTH_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(blitx_core::session::IO_DEPTH_MAX)))]
    pub io_depth: u32,
    /// Where threads and buffers go: auto (the NUMA node of the NIC that reaches the daemon, or
    /// of the target's disk for local copies), off, or node=N.
    #[arg(long, default_value = "auto")]
    pub numa: blitx_topology::NumaPolicy,
    /// Report where the time went (per-stage timings and waits) and record the run in the local
    /// performance history (`blit bench --history`).
    #[arg(long)]
    pub profile: bool,
    /// Move data through buffers instead of the kernel's copy_file_range (for comparisons).
    #[arg(long, hide = true)]
    pub buffered: bool,
}

macro_rules! usage {
    ($($t:tt)*) => { return Err(UsageError(format!($($t)*)).into()) };
}

fn session_params(args: &XferArgs) -> anyhow::Result<SessionParams> {
    use blitx_core::session::{CHUNK_BYTES_MAX, CHUNK_BYTES_MIN};
    let Some(chunk) = u32::try_from(args.chunk_size)
        .ok()
        .filter(|c| (CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(c) && c.is_multiple_of(4096))
    else {
        usage!("--chunk-size {} is outside 4K..=64M or not a multiple of 4K", args.chunk_size);
    };
    let bundle = chunk.min(blitx_core::session::BUNDLE_BYTES_DEFAULT);
    let small_max = bundle.saturating_sub(4096);
    // The default shrinks to fit a small bundle; a value the user gave never does.
    let small = match args.small_file_max {
        None => blitx_core::session::SMALL_FILE_BYTES_DEFAULT.min(small_max),
        Some(asked) => match u32::try_from(asked).ok().filter(|s| *s <= small_max) {
            Some(s) => s,
            None => usage!(
                "--small-file-max {asked} is above {small_max} bytes: a small file travels \
                 inside one bundle of {bundle} bytes (the chunk size, at most 1M) with its header"
            ),
        },
    };
    if let Some(n) = args.mem {
        if n == 0 {
            usage!("--mem needs a size above 0");
        }
        for side in [&args.source, &args.target] {
            if !RemoteSpec::is_remote(side) && side != "-" {
                usage!("with --mem the local side is `-` (memory), not {side:?}");
            }
        }
    }
    let params = SessionParams {
        chunk_bytes: chunk,
        // A memory session moves one chunked file, never a bundle.
        small_file_bytes_max: if args.mem.is_some() { 0 } else { small },
        bundle_bytes: bundle,
        compare: if args.checksum { Compare::Checksum } else { Compare::SizeMtime },
        mirror: args.mirror,
        dry_run: args.dry_run,
        filter: Box::new(
            args.filters.params(
                (!RemoteSpec::is_remote(&args.source) && args.mem.is_none())
                    .then(|| Path::new(&args.source)),
            )?,
        ),
        preserve_owner: !args.no_owner,
        xattrs: !args.no_xattrs,
        acls: !args.no_acls,
        fsync: args.fsync,
        io: match args.io.as_str() {
            "buffered" => IoMode::Buffered,
            "direct" => IoMode::Direct,
            _ => IoMode::Auto,
        },
        io_depth: args.io_depth,
        mem_bytes: args.mem,
        resume: !args.no_resume,
        remove_source_files: args.remove_source_files,
        delta: match args.delta.as_str() {
            "on" => true,
            "off" => false,
            // auto: only a remote transfer has a link whose speed may be below the hashing rate.
            _ => [&args.source, &args.target]
                .into_iter()
                .filter(|side| RemoteSpec::is_remote(side))
                .find_map(|side| RemoteSpec::parse(side).ok())
                .is_some_and(|r| {
                    let d = crate::delta_auto::decide(&r.host, r.port);
                    tracing::info!("--delta auto: {} ({})", if d.on { "on" } else { "off" }, d.why);
                    d.on
                }),
        },
        bwlimit_bytes_per_s: args.bwlimit,
    };
    params.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(params)
}

/// Resolves a path that may not exist yet: the nearest existing ancestor, canonicalized, plus the
/// rest.
fn resolve_lexically(p: &Path) -> std::io::Result<PathBuf> {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(c) => {
                let mut out = c;
                for r in rest.iter().rev() {
                    out.push(r);
                }
                return Ok(out);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                _ => return Ok(abs),
            },
        }
    }
}

fn check_source(source: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(source)
        .with_context(|| format!("cannot read SOURCE {}", source.display()))?;
    if !meta.is_dir() {
        bail!(
            "SOURCE {} is not a directory (blit copies a directory's contents)",
            source.display()
        );
    }
    Ok(())
}

/// SOURCE when it is one regular file: its directory and its name (`None` for a directory). A
/// symlink named on the command line is followed, as it is for a directory SOURCE; a FIFO,
/// socket or device is refused.
fn file_source(source: &Path) -> anyhow::Result<Option<(PathBuf, Vec<u8>)>> {
    use std::os::unix::ffi::OsStrExt;
    let meta = std::fs::metadata(source)
        .with_context(|| format!("cannot read SOURCE {}", source.display()))?;
    if meta.is_dir() {
        return Ok(None);
    }
    if !meta.is_file() {
        bail!(
            "SOURCE {} is a special file (FIFO, socket or device): blit copies regular files and directories",
            source.display()
        );
    }
    let real = source
        .canonicalize()
        .with_context(|| format!("cannot resolve SOURCE {}", source.display()))?;
    match (real.parent(), real.file_name()) {
        (Some(dir), Some(name)) => Ok(Some((dir.to_path_buf(), name.as_bytes().to_vec()))),
        _ => bail!("SOURCE {} has no file name", source.display()),
    }
}

/// Where a file SOURCE lands (cp's and rsync's rule): in TARGET under the source's name when
/// TARGET is a directory (or ends with `/`: then it is made if missing, like a directory
/// TARGET); otherwise TARGET is the file's new name, replacing what stands there (a file, or a
/// symlink, which is replaced, never followed), and its directory must exist — no parents are
/// made for a file.
fn file_target(target: &str) -> anyhow::Result<(PathBuf, Option<Vec<u8>>)> {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(target);
    if path.is_dir() || target.ends_with('/') {
        return Ok((path.to_path_buf(), None));
    }
    let Some(name) = path.file_name() else {
        bail!("TARGET {target} names no file");
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "the directory of TARGET {target} does not exist (blit makes no parent directories for a file; end TARGET with / to make it a directory)"
        );
    }
    Ok((dir, Some(name.as_bytes().to_vec())))
}

/// A local copy of one file: where it is read and where it lands.
struct LocalFile {
    source_dir: PathBuf,
    source_name: Vec<u8>,
    target_dir: PathBuf,
    target_name: Option<Vec<u8>>,
}

/// A local copy whose SOURCE is one file, checked: `None` when SOURCE is a directory.
fn local_file(args: &XferArgs) -> anyhow::Result<Option<LocalFile>> {
    use std::os::unix::ffi::OsStrExt;
    let Some((source_dir, source_name)) = file_source(Path::new(&args.source))? else {
        return Ok(None);
    };
    let (target_dir, target_name) = file_target(&args.target)?;
    let name = target_name.as_deref().unwrap_or(&source_name);
    let landing = resolve_lexically(&target_dir)?.join(std::ffi::OsStr::from_bytes(name));
    if landing == source_dir.join(std::ffi::OsStr::from_bytes(&source_name)) {
        bail!("SOURCE {} and TARGET {} are the same file", args.source, args.target);
    }
    Ok(Some(LocalFile { source_dir, source_name, target_dir, target_name }))
}

fn check_target(target: &Path) -> anyhow::Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(target)
        && !m.is_dir()
        && !(m.file_type().is_symlink() && target.is_dir())
    {
        bail!("TARGET {} exists and is not a directory", target.display());
    }
    Ok(())
}

fn check_paths(source: &Path, target: &Path) -> anyhow::Result<()> {
    check_source(source)?;
    check_target(target)?;
    let s = resolve_lexically(source)?;
    let t = resolve_lexically(target)?;
    if t.starts_with(&s) {
        bail!(
            "TARGET {} is inside SOURCE {}; refusing to copy a tree into itself",
            t.display(),
            s.display()
        );
    }
    if s.starts_with(&t) {
        bail!(
            "SOURCE {} is inside TARGET {}; refusing (the copy would overwrite its own source)",
            s.display(),
            t.display()
        );
    }
    Ok(())
}

pub fn run(args: XferArgs, verbose: u8) -> Exit {
    match run_inner(&args, verbose) {
        Ok(code) => code,
        Err(e) => {
            let code = match e.downcast_ref::<ClientError>() {
                _ if e.downcast_ref::<UsageError>().is_some() => Exit::Usage,
                Some(c) if c.is_transport_unavailable() => Exit::TransportUnavailable,
                Some(c) if c.is_stall() => Exit::Stalled,
                _ if matches!(
                    e.downcast_ref::<blitx_core::session::ParamsError>(),
                    Some(blitx_core::session::ParamsError::BwLimit(_))
                ) =>
                {
                    Exit::Usage
                }
                _ => Exit::Fatal,
            };
            eprintln!("blit: error: {}", escape_str(&error_chain(&e)));
            code
        }
    }
}

/// `context: cause: cause`, each cause once. Some errors print their source in their own
/// message as well (`#[error("... {0}")]` next to `#[source]`), which anyhow's `{:#}` would
/// repeat; a cause already contained in the message before it is left out.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if previous.is_empty() || !previous.contains(&message) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&message);
        }
        previous = message;
    }
    out
}

/// Creates TARGET, or for a dry run with a missing TARGET, an empty stand-in.
fn open_target(target: &Path, dry_run: bool) -> anyhow::Result<RootDir> {
    if dry_run && !target.exists() {
        return RootDir::empty_stand_in().context("cannot create a dry-run stand-in");
    }
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create TARGET {}", target.display()))?;
    RootDir::open(target).with_context(|| format!("cannot open TARGET {}", target.display()))
}

/// The local half's root in a memory session: an empty directory it never writes to.
fn mem_stand_in() -> anyhow::Result<RootDir> {
    RootDir::empty_stand_in().context("cannot create the memory session's stand-in directory")
}

fn run_inner(args: &XferArgs, verbose: u8) -> anyhow::Result<Exit> {
    let params = session_params(args)?;
    let remote_source = RemoteSpec::is_remote(&args.source);
    let remote_target = RemoteSpec::is_remote(&args.target);
    if remote_source && remote_target {
        usage!("SOURCE and TARGET are both remote; one side must be a local directory");
    }
    if args.tcp_zero_copy && params.io == IoMode::Direct {
        eprintln!(
            "blit: warning: --tcp-zero-copy sends file regions and splices what it receives, both \
             through the page cache: over TCP, --io direct does not apply"
        );
    }
    if (remote_source || remote_target) && args.transport != "tcp" {
        // Loading libibverbs overlaps the topology discovery and placement below.
        blitx_control::dataplane::preload_rdma();
    }
    let mut local_one = None;
    if !remote_source && !remote_target {
        if args.transport != "auto" || args.streams.is_some() {
            tracing::info!(
                "--transport/--streams/--qps apply to remote transfers; this copy is local"
            );
        }
        if args.mem.is_none() {
            local_one = local_file(args)?;
            if local_one.is_none() {
                check_paths(Path::new(&args.source), Path::new(&args.target))?;
            }
        }
    }
    // The handler sets the flag the engines look at and wakes every wait on the daemon.
    let cancel = Cancel::new();
    cancel.watch_signals().context("cannot install signal handler")?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // --progress: a bar on a terminal, lines every few seconds elsewhere; by default a bar
    // only on a terminal.
    let progress_mode = match (args.progress, args.no_progress, terminal) {
        (true, _, true) => ProgressMode::Bar,
        (true, _, false) => ProgressMode::Lines,
        (false, false, true) if !args.dry_run => ProgressMode::Bar,
        _ => ProgressMode::Off,
    };
    let bar = make_bar(progress_mode == ProgressMode::Bar);
    let reporter = PrintReporter {
        verbose: verbose > 0,
        itemize: args.itemize_changes.then_some(remote_target),
        dry_run: args.dry_run,
        json: args.json,
        bar: bar.clone(),
        out: std::sync::Mutex::new(()),
    };
    let threads = args.threads.map_or_else(blitx_storage::default_io_threads, usize::from);
    // Placement first: every thread the transfer creates inherits it.
    let device = placement_device(args, remote_source || remote_target);
    let _placed = crate::topo::place_here(args.numa, device.as_deref())?;
    let progress = PairProgress::default();
    // The bar follows whichever half runs here and knows the totals: the target for local
    // copies and pulls, the source for pushes.
    let bar_progress = if remote_target { &progress.source } else { &progress.target };
    let start = Instant::now();
    let done = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        let bar_thread = match (&bar, progress_mode) {
            (Some(bar), _) => Some(s.spawn(|| drive_bar(bar, bar_progress, &done))),
            (None, ProgressMode::Lines) => {
                Some(s.spawn(|| drive_lines(bar_progress, &done, start)))
            }
            _ => None,
        };
        let r = if remote_source || remote_target {
            run_remote(args, params, threads, &reporter, &progress, &cancel)
        } else {
            run_local_copy(args, local_one, params, threads, &reporter, &progress, cancel.plane())
        };
        done.store(true, Ordering::Release);
        if let Some(t) = &bar_thread {
            t.thread().unpark(); // ends its wait now, not at its next refresh
        }
        r
    });
    if cancel.is_cancelled() {
        if args.no_resume {
            eprintln!("blit: interrupted; temporary files removed");
        } else {
            eprintln!("blit: interrupted; partial files kept: the same command resumes them");
        }
        return Ok(Exit::Interrupted);
    }
    let outcome = outcome?;
    let seconds = start.elapsed().as_secs_f64();
    let t = &outcome.target;
    let mut errors: Vec<FileError> = t.errors.clone();
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    // The rate is of what crossed the data plane: the target's byte count is the files'
    // logical size, holes of sparse files included, which move as empty frames.
    let bytes_moved = outcome.source.bytes_sent;
    let summary = Summary {
        ok: t.error_count == 0,
        dry_run: args.dry_run,
        transport: outcome.transport,
        streams: outcome.streams,
        frame_checksums: outcome.frame_checksums,
        files: t.files_copied,
        bytes: t.bytes_copied,
        bytes_moved,
        bytes_reused: t.bytes_reused.max(outcome.source.bytes_reused),
        signature_bytes: t.signature_bytes,
        seconds,
        throughput_bytes_per_sec: if seconds > 0.0 { bytes_moved as f64 / seconds } else { 0.0 },
        entries_scanned: outcome.source.entries,
        meta_updated: t.meta_updated,
        dirs_created: t.dirs_created,
        symlinks: t.symlinks,
        hardlinks: t.hardlinks,
        deleted: t.deleted,
        unsupported: t.unsupported,
        specials: t.specials,
        xattrs_dropped: t.xattrs_dropped,
        deletions_skipped: t.deletions_skipped,
        error_count: t.error_count,
        errors,
        profile: args.profile.then(|| profile_rows(&progress)),
    };
    summary.print(args.json);
    if params_moved(args) {
        let s = &outcome.source;
        eprintln!(
            "removed {} source files{}",
            s.files_removed,
            if s.files_kept > 0 {
                format!("; kept {} (changed since they were sent, or not copied)", s.files_kept)
            } else {
                String::new()
            }
        );
    }
    if args.profile {
        if !args.json {
            print_profile(&progress, seconds);
        }
        record_history(args, &summary, &progress);
    }
    Ok(if t.error_count > 0 { Exit::Partial } else { Exit::Ok })
}

/// Whether this run removes what it copied (`--remove-source-files`, not a dry run).
fn params_moved(args: &XferArgs) -> bool {
    args.remove_source_files && !args.dry_run && args.mem.is_none()
}

fn profile_rows(progress: &PairProgress) -> Vec<crate::output::ProfileRow> {
    let mut rows = Vec::new();
    for half in [&progress.source, &progress.target] {
        for (stage, seconds) in half.stages.snapshot() {
            rows.push(crate::output::ProfileRow {
                stage: stage.name(),
                seconds,
                meaning: stage.explain(),
            });
        }
    }
    rows
}

/// Appends this run to the local performance history (`blit bench --history`); best effort.
fn record_history(args: &XferArgs, summary: &Summary, progress: &PairProgress) {
    use blitx_bench::history::{HistoryRecord, append, host_name, now_unix_s};
    // utime + stime of this process (all threads), from /proc/self/stat fields 14 and 15.
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat").ok().and_then(|stat| {
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / rustix::param::clock_ticks_per_second() as f64)
    });
    let direction = if RemoteSpec::is_remote(&args.source) {
        Some("pull".to_string())
    } else if RemoteSpec::is_remote(&args.target) {
        Some("push".to_string())
    } else {
        None
    };
    let record = HistoryRecord {
        time_unix_s: now_unix_s(),
        command: "xfer".into(),
        transport: summary.transport.clone(),
        direction,
        streams: summary.streams,
        chunk_bytes: args.chunk_size,
        dataset: None,
        path: Some(format!("{} -> {}", args.source, args.target)),
        bytes: summary.bytes,
        files: summary.files,
        seconds: summary.seconds,
        throughput_bytes_per_sec: summary.throughput_bytes_per_sec,
        cpu_seconds,
        daemon_cpu_seconds: None,
        runs: None,
        host: host_name(),
        blit_version: env!("CARGO_PKG_VERSION").into(),
        stage_seconds: profile_rows(progress)
            .into_iter()
            .map(|r| (r.stage.to_string(), r.seconds))
            .collect(),
    };
    if let Err(e) = append(&record) {
        tracing::warn!("cannot record the run in the history: {e}");
    }
}

fn print_profile(progress: &PairProgress, wall_seconds: f64) {
    eprintln!(
        "profile (seconds; thread stages are summed over threads, wall {wall_seconds:.3} s):"
    );
    for row in profile_rows(progress) {
        eprintln!("  {:<10} {:>9.3}  {}", row.stage, row.seconds, row.meaning);
    }
}

/// The device a transfer's data goes through: the interface that routes to the daemon, or the
/// disk holding the local target.
fn placement_device(args: &XferArgs, remote: bool) -> Option<String> {
    if remote {
        let url = if RemoteSpec::is_remote(&args.source) { &args.source } else { &args.target };
        let spec = RemoteSpec::parse(url).ok()?;
        let ip = std::net::ToSocketAddrs::to_socket_addrs(&(spec.host.as_str(), spec.port))
            .ok()?
            .next()?
            .ip();
        blitx_topology::interface_for_peer(ip)
    } else {
        let mut p = PathBuf::from(&args.target);
        while !p.exists() {
            p = p.parent()?.to_path_buf();
        }
        blitx_topology::block_device_of(&p)
    }
}

/// What either kind of transfer produced. The target's report is the complete one: every
/// source-side failure is also sent to, and reported by, the target half.
struct Outcome {
    transport: String,
    streams: u32,
    /// Whether every frame was hashed and verified (network transports; RDMA only on request).
    frame_checksums: bool,
    source: SourceReport,
    target: TargetReport,
}

fn run_local_copy(
    args: &XferArgs,
    one: Option<LocalFile>,
    params: SessionParams,
    threads: usize,
    reporter: &PrintReporter,
    progress: &PairProgress,
    cancel: &blitx_core::cancel::Cancel,
) -> anyhow::Result<Outcome> {
    let target = one.as_ref().map_or(Path::new(&args.target), |f| f.target_dir.as_path());
    let mem = params.mem_bytes.is_some();
    // A dry run never creates TARGET; a memory session has none.
    let target_root = if mem { mem_stand_in()? } else { open_target(target, args.dry_run)? };
    let _lock = if mem { None } else { lock_target(&target_root, args, cancel)? };
    // Direct I/O and generated data need buffers.
    let direct = params.io == IoMode::Direct || mem;
    let opts = LocalOptions {
        source: one.as_ref().map_or_else(|| PathBuf::from(&args.source), |f| f.source_dir.clone()),
        target: target.to_path_buf(),
        target_root: Some(target_root),
        params,
        threads,
        // Direct I/O needs the data in (aligned) buffers; a kernel copy goes through the cache.
        payload: if args.buffered || direct {
            PayloadPref::Buffer
        } else {
            PayloadPref::FileRegion
        },
        faults: MemFaults::default(),
        single: one.map(|f| (f.source_name, SingleFile { name: f.target_name })),
    };
    let (source, target) = run_local(&opts, reporter, progress, cancel)?;
    Ok(Outcome { transport: "local".into(), streams: 1, frame_checksums: false, source, target })
}

/// One writer per target: held while this transfer writes into TARGET (not for dry runs).
fn lock_target(
    root: &RootDir,
    args: &XferArgs,
    cancel: &blitx_core::cancel::Cancel,
) -> anyhow::Result<Option<blitx_storage::lock::TargetLock>> {
    use blitx_storage::lock::{LockError, TargetLock};
    if args.dry_run {
        return Ok(None);
    }
    let wait = args.wait_lock.then_some(Duration::from_secs(u64::from(u32::MAX)));
    match TargetLock::acquire(root.fd(), wait, cancel) {
        Ok(l) => Ok(Some(l)),
        Err(LockError::Busy) => bail!(
            "TARGET {} is being written by another blit transfer (into it, or a directory above or below it); use --wait-lock to wait for it",
            args.target
        ),
        Err(e) => Err(e).with_context(|| format!("cannot lock TARGET {}", args.target)),
    }
}

fn run_remote(
    args: &XferArgs,
    params: SessionParams,
    threads: usize,
    reporter: &PrintReporter,
    progress: &PairProgress,
    cancel: &Cancel,
) -> anyhow::Result<Outcome> {
    let transport = match args.transport.as_str() {
        "tcp" => TransportChoice::Tcp,
        "rdma" => TransportChoice::Rdma,
        _ => TransportChoice::Auto,
    };
    let opts = ClientOptions {
        params,
        transport,
        streams: args.streams.unwrap_or(0),
        tcp_buffer_bytes: args.tcp_buffer.unwrap_or(0),
        events: reporter.verbose || reporter.dry_run || reporter.itemize.is_some(),
        threads,
        stall_timeout: Duration::from_secs(args.stall_timeout),
        connect_timeout: Duration::from_secs(args.connect_timeout),
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        wait_lock: args.wait_lock,
        qps: args.qps,
        rdma_device: args.rdma_device.clone(),
        rdma_frame_checksums: args.rdma_frame_checksums,
        rdma_event_cq: args.rdma_cq == "event",
        tcp_zero_copy: args.tcp_zero_copy,
    };
    // Held until the transfer is over (a pull writes into TARGET).
    let lock = std::sync::Mutex::new(None);
    let (remote, local) = if RemoteSpec::is_remote(&args.source) {
        let remote = RemoteSpec::parse(&args.source)?;
        if args.mem.is_some() {
            (remote, Local::Target(mem_stand_in()?))
        } else {
            // The daemon's Accept says whether its source is a directory or one file, and
            // so what TARGET means.
            let lock = &lock;
            let open = move |single: bool| -> anyhow::Result<(RootDir, Option<SingleFile>)> {
                let (dir, one) = if single {
                    let (dir, name) = file_target(&args.target)?;
                    (dir, Some(SingleFile { name }))
                } else {
                    let target = PathBuf::from(&args.target);
                    check_target(&target)?;
                    (target, None)
                };
                let root = open_target(&dir, args.dry_run)?;
                *lock.lock().unwrap_or_else(|p| p.into_inner()) =
                    lock_target(&root, args, cancel.plane())?;
                Ok((root, one))
            };
            let open: client::OpenTarget<'_> =
                Box::new(move |single| open(single).map_err(|e| error_chain(&e)));
            (remote, Local::TargetOnAccept(open))
        }
    } else {
        let remote = RemoteSpec::parse(&args.target)?;
        if args.mem.is_some() {
            (remote, Local::Source(mem_stand_in()?))
        } else {
            let source = Path::new(&args.source);
            match file_source(source)? {
                Some((dir, name)) => {
                    let root = RootDir::open(&dir)
                        .with_context(|| format!("cannot open SOURCE {}", source.display()))?;
                    (remote, Local::SourceFile(root, name))
                }
                None => {
                    let root = RootDir::open(source)
                        .with_context(|| format!("cannot open SOURCE {}", source.display()))?;
                    (remote, Local::Source(root))
                }
            }
        }
    };
    let half = match local {
        Local::Source(_) | Local::SourceFile(..) => &progress.source,
        Local::Target(_) | Local::TargetOnAccept(_) => &progress.target,
    };
    let report = client::transfer(&remote, local, &opts, reporter, half, cancel)?;
    tracing::info!(transport = %report.transport, streams = report.streams, reason = %report.reason, "data plane");
    let (source, target) = match (report.local_source, report.local_target) {
        (Some(s), _) => (s, report.remote.target),
        (None, Some(t)) => (report.remote.source, t),
        (None, None) => bail!("internal error: no local report"),
    };
    let frame_checksums = report.transport != "rdma" || args.rdma_frame_checksums;
    Ok(Outcome {
        transport: report.transport,
        streams: report.streams,
        frame_checksums,
        source,
        target,
    })
}
