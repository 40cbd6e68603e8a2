//! `blit xfer SOURCE TARGET`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use blitx_core::session::{Compare, SessionParams};
use blitx_core::transport::{MemFaults, PayloadPref};
use blitx_storage::local::{LocalOptions, run_local};
use blitx_storage::report::Progress;

use crate::exit::Exit;
use crate::output::{PrintReporter, Summary, drive_bar, make_bar};
use crate::units::parse_bytes;

#[derive(Debug, clap::Args)]
pub struct XferArgs {
    /// Directory to copy from.
    pub source: PathBuf,
    /// Directory to make a copy of SOURCE (created if missing).
    pub target: PathBuf,
    /// Also delete what is in TARGET but not in SOURCE (only after everything else succeeded).
    #[arg(long)]
    pub mirror: bool,
    /// Show what would be copied and deleted; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Compare file contents (xxh3-128) instead of size and modification time.
    #[arg(short = 'c', long)]
    pub checksum: bool,
    /// Leave out paths matching GLOB (repeatable). Without '/', matches names at any depth.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Show a progress bar (default: on when stderr is a terminal).
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Size of one chunk of a large file (e.g. 1M, 4M, 16M).
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = parse_bytes)]
    pub chunk_size: u64,
    /// Files up to this size are packed into bundles.
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = parse_bytes)]
    pub small_file_max: u64,
    /// I/O threads per side (default: the machine's cores, 2..=8).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Do not set owners even when running as root.
    #[arg(long)]
    pub no_owner: bool,
    /// Move data through buffers instead of the kernel's copy_file_range (for comparisons).
    #[arg(long, hide = true)]
    pub buffered: bool,
}

fn session_params(args: &XferArgs) -> anyhow::Result<SessionParams> {
    let chunk = u32::try_from(args.chunk_size).context("--chunk-size is too large")?;
    let bundle = chunk.min(blitx_core::session::BUNDLE_BYTES_DEFAULT);
    let small = u32::try_from(args.small_file_max)
        .context("--small-file-max is too large")?
        .min(bundle.saturating_sub(4096));
    let params = SessionParams {
        chunk_bytes: chunk,
        small_file_bytes_max: small,
        bundle_bytes: bundle,
        compare: if args.checksum { Compare::Checksum } else { Compare::SizeMtime },
        mirror: args.mirror,
        dry_run: args.dry_run,
        excludes: args.excludes.clone(),
        preserve_owner: !args.no_owner,
    };
    params.validate()?;
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

fn check_paths(source: &Path, target: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(source)
        .with_context(|| format!("cannot read SOURCE {}", source.display()))?;
    if !meta.is_dir() {
        bail!(
            "SOURCE {} is not a directory (blit copies a directory's contents)",
            source.display()
        );
    }
    if let Ok(m) = std::fs::symlink_metadata(target)
        && !m.is_dir()
        && !(m.file_type().is_symlink() && target.is_dir())
    {
        bail!("TARGET {} exists and is not a directory", target.display());
    }
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
            eprintln!("blit: error: {e:#}");
            Exit::Fatal
        }
    }
}

fn run_inner(args: &XferArgs, verbose: u8) -> anyhow::Result<Exit> {
    let params = session_params(args)?;
    check_paths(&args.source, &args.target)?;
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&cancel))
            .context("cannot install signal handler")?;
    }
    // A dry run never creates TARGET; a missing TARGET is diffed as an empty stand-in.
    let _stand_in;
    let target = if args.dry_run && !args.target.exists() {
        _stand_in = tempfile_dir()?;
        _stand_in.path.clone()
    } else {
        std::fs::create_dir_all(&args.target)
            .with_context(|| format!("cannot create TARGET {}", args.target.display()))?;
        args.target.clone()
    };
    let show_bar = if args.progress {
        true
    } else if args.no_progress {
        false
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stderr()) && !args.dry_run
    };
    let bar = make_bar(show_bar);
    let reporter = PrintReporter {
        verbose: verbose > 0,
        dry_run: args.dry_run,
        json: args.json,
        bar: bar.clone(),
        out: std::sync::Mutex::new(()),
    };
    let threads = args.threads.unwrap_or_else(blitx_storage::default_io_threads);
    let opts = LocalOptions {
        source: args.source.clone(),
        target,
        params,
        threads,
        payload: if args.buffered { PayloadPref::Buffer } else { PayloadPref::FileRegion },
        faults: MemFaults::default(),
    };
    let progress = Progress::default();
    let start = Instant::now();
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        if let Some(bar) = &bar {
            s.spawn(|| drive_bar(bar, &progress, &done));
        }
        let r = run_local(&opts, &reporter, &progress, &cancel);
        done.store(true, Ordering::Release);
        r
    });
    if cancel.load(Ordering::Acquire) {
        eprintln!("blit: interrupted; temporary files removed");
        return Ok(Exit::Interrupted);
    }
    let (source, target) = result?;
    let seconds = Summary::seconds_since(start);
    // Every source-side failure is also sent to the target half, which reports it: the
    // target's list is the complete one.
    let mut errors = target.errors;
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    let error_count = target.error_count;
    let summary = Summary {
        ok: error_count == 0,
        dry_run: args.dry_run,
        transport: "local".into(),
        streams: 1,
        files: target.files_copied,
        bytes: target.bytes_copied,
        seconds,
        throughput_bytes_per_sec: if seconds > 0.0 {
            target.bytes_copied as f64 / seconds
        } else {
            0.0
        },
        entries_scanned: source.entries,
        meta_updated: target.meta_updated,
        dirs_created: target.dirs_created,
        symlinks: target.symlinks,
        hardlinks: target.hardlinks,
        deleted: target.deleted,
        unsupported: target.unsupported,
        deletions_skipped: target.deletions_skipped,
        error_count,
        errors,
    };
    summary.print(args.json);
    Ok(if error_count > 0 { Exit::Partial } else { Exit::Ok })
}

/// An empty directory that is removed on drop (the stand-in target of a dry run).
struct TempDir {
    path: PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let path = base.join(format!("blit-dry-run-{}-{i}", std::process::id()));
        if std::fs::create_dir(&path).is_ok() {
            return Ok(TempDir { path });
        }
    }
    bail!("cannot create a scratch directory under {}", base.display())
}
