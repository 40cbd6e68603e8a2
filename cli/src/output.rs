//! What the user sees: per-path lines (-v, --dry-run), the progress bar, the final summary.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blitx_storage::report::{Event, EventKind, FileError, Progress, Reporter};
use serde::Serialize;

use crate::units::human_bytes;

/// Prints events as they happen: every change with -v or --dry-run, failures always.
pub struct PrintReporter {
    pub verbose: bool,
    pub dry_run: bool,
    pub json: bool,
    pub bar: Option<indicatif::ProgressBar>,
    pub out: Mutex<()>,
}

impl Reporter for PrintReporter {
    fn event(&self, e: Event) {
        let failed = e.kind == EventKind::Failed;
        if !(self.verbose || self.dry_run || failed) || (self.json && !failed) {
            return;
        }
        let prefix = if self.dry_run { "would " } else { "" };
        let what = match e.kind {
            EventKind::Copied => "copy",
            EventKind::MetaUpdated => "update metadata of",
            EventKind::DirCreated => "create directory",
            EventKind::Symlinked => "create symlink",
            EventKind::Hardlinked => "hard-link",
            EventKind::Deleted => "delete",
            EventKind::Unsupported => "skip",
            EventKind::Failed => "error:",
        };
        let line = match (&e.message, failed) {
            (Some(m), true) => format!("error: {}: {m}", e.path),
            (Some(m), false) => format!("{prefix}{what} {} ({m})", e.path),
            (None, _) => format!("{prefix}{what} {}", e.path),
        };
        let _g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        match (&self.bar, failed) {
            (Some(bar), _) => bar.println(line),
            (None, true) => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            (None, false) => {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        }
    }
}

/// Makes the progress bar (on stderr) if wanted.
pub fn make_bar(enabled: bool) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(0),
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {msg} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// Feeds the bar from the live counters until `done` is set (unpark the thread after setting it).
pub fn drive_bar(bar: &indicatif::ProgressBar, progress: &Progress, done: &AtomicBool) {
    while !done.load(Ordering::Acquire) {
        let total = Progress::read(&progress.bytes_needed);
        bar.set_length(total);
        bar.set_position(Progress::read(&progress.bytes_done).min(total));
        let scanning = if progress.walk_done.load(Ordering::Relaxed) { "" } else { " (scanning)" };
        bar.set_message(format!(
            "files {}/{}{scanning}",
            Progress::read(&progress.files_done),
            Progress::read(&progress.files_needed)
        ));
        std::thread::park_timeout(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// The machine-readable summary (`--json`), also the basis of the text summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub ok: bool,
    pub dry_run: bool,
    pub transport: String,
    pub streams: u32,
    /// Every chunk was hashed (xxh3-64) by the source and verified by the target. Off for local
    /// copies (the bytes never leave the process) and, unless asked for, over RDMA.
    pub frame_checksums: bool,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub throughput_bytes_per_sec: f64,
    pub entries_scanned: u64,
    pub meta_updated: u64,
    pub dirs_created: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub deleted: u64,
    pub unsupported: u64,
    pub deletions_skipped: bool,
    pub error_count: u64,
    pub errors: Vec<FileError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<ProfileRow>>,
}

/// One stage's time (`--profile`).
#[derive(Debug, Serialize)]
pub struct ProfileRow {
    pub stage: &'static str,
    pub seconds: f64,
    pub meaning: &'static str,
}

impl Summary {
    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string_pretty(self) {
                Ok(s) => write_stdout(&format!("{s}\n")),
                Err(e) => eprintln!("cannot encode summary: {e}"),
            }
            return;
        }
        let verb = if self.dry_run { "would copy" } else { "copied" };
        let rate = human_bytes(self.throughput_bytes_per_sec as u64);
        eprintln!(
            "{verb} {} files ({}) in {:.2} s, {rate}/s via {} ({} stream{}); scanned {} entries{}{}{}",
            self.files,
            human_bytes(self.bytes),
            self.seconds,
            self.transport,
            self.streams,
            if self.streams == 1 { "" } else { "s" },
            self.entries_scanned,
            if self.deleted > 0 { format!(", deleted {}", self.deleted) } else { String::new() },
            if self.error_count > 0 {
                format!(", {} errors", self.error_count)
            } else {
                String::new()
            },
            if self.deletions_skipped { " (deletions skipped because of errors)" } else { "" },
        );
    }
}

/// Writes a report to stdout. A reader that closed the pipe early (`blit topo --json | head`)
/// is not an error: no panic on EPIPE, as `println!` would.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("blit: error: cannot write to stdout: {e}");
    }
}
