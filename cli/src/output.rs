//! What the user sees: per-path lines (-v, --dry-run), the progress bar, the final summary.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blitx_core::RelPath;
use blitx_core::itemize::Changes;
use blitx_core::manifest::EntryKind;
use blitx_storage::report::{Event, EventKind, FileError, Progress, Reporter};
use serde::Serialize;

use crate::units::human_bytes;

/// Prints events as they happen: every change with -v or --dry-run, failures always.
pub struct PrintReporter {
    pub verbose: bool,
    /// `-i`: one rsync-style line per change on stdout instead of -v's lines; `Some(sent)`,
    /// `sent` when this side is the source (a push: rsync's `<`).
    pub itemize: Option<bool>,
    pub dry_run: bool,
    pub json: bool,
    pub bar: Option<indicatif::ProgressBar>,
    pub out: Mutex<()>,
}

impl Reporter for PrintReporter {
    fn event(&self, e: Event) {
        if e.kind == EventKind::Unsupported {
            // Always said, like rsync's "skipping non-regular file": the copy is not complete.
            let verb = if self.dry_run { "would skip" } else { "skipped" };
            let why = e.message.as_deref().map(escape_str).unwrap_or_else(|| "not copied".into());
            let line = format!("blit: {verb} special file ({why}): {}", escaped(&e.path));
            self.print(&line, true);
            return;
        }
        let failed = e.kind == EventKind::Failed;
        if let Some(sent) = self.itemize
            && !failed
        {
            if !self.json {
                let line = itemize_line(&e, sent);
                self.print(&line, false);
            }
            return;
        }
        if !(self.verbose || self.dry_run || failed) || (self.json && !failed) {
            return;
        }
        let prefix = if self.dry_run { "would " } else { "" };
        let what = match e.kind {
            EventKind::Copied => "copy",
            EventKind::MetaUpdated => "update metadata of",
            EventKind::DirCreated => "create directory",
            EventKind::Symlinked => "create symlink",
            EventKind::SpecialMade => "make",
            EventKind::Hardlinked => "hard-link",
            EventKind::Deleted => "delete",
            EventKind::Unsupported => "skip",
            EventKind::Failed => "error:",
        };
        // Names and messages may come from a peer: escaped, so they cannot forge lines.
        let path = escaped(&e.path);
        let line = match (&e.message, failed) {
            (Some(m), true) => format!("error: {path}: {}", escape_str(m)),
            (Some(m), false) => format!("{prefix}{what} {path} ({})", escape_str(m)),
            (None, _) => format!("{prefix}{what} {path}"),
        };
        self.print(&line, failed);
    }
}

impl PrintReporter {
    /// One line: above the bar if there is one, else on stderr (`to_stderr`) or stdout.
    fn print(&self, line: &str, to_stderr: bool) {
        let _g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        match (&self.bar, to_stderr) {
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

/// rsync's `--itemize-changes` line: `YXcstpoguax PATH`. Y is `>` (received here), `<` (sent
/// to the daemon), `c` (a directory or link created), `h` (a hard link), `.` (only attributes
/// changed), or the whole code is `*deleting`; X is f, d, L or S; then checksum, size, time,
/// permissions, owner, group, (unused), ACL and xattrs, each its letter when it changed, `.`
/// when not, all `+` for a new entry.
pub fn itemize_line(e: &Event, sent: bool) -> String {
    let path = escaped(&e.path);
    let c = e.changes;
    let slash = if c.kind() == EntryKind::Dir { "/" } else { "" };
    if e.kind == EventKind::Deleted {
        return format!("*deleting   {path}{slash}");
    }
    let x = match c.kind() {
        EntryKind::File => 'f',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'L',
        EntryKind::Special => 'S',
    };
    let y = match e.kind {
        EventKind::Copied if sent => '<',
        EventKind::Copied => '>',
        EventKind::Hardlinked => 'h',
        EventKind::DirCreated | EventKind::Symlinked | EventKind::SpecialMade => 'c',
        _ => '.',
    };
    let attrs: String = if c.has(Changes::NEW) {
        "+++++++++".into()
    } else {
        [
            (Changes::CHECKSUM, 'c'),
            (Changes::SIZE, 's'),
            (Changes::TIME, 't'),
            (Changes::PERMS, 'p'),
            (Changes::OWNER, 'o'),
            (Changes::GROUP, 'g'),
            (0, 'u'),
            (Changes::ACL, 'a'),
            (Changes::XATTR, 'x'),
        ]
        .iter()
        .map(|&(flag, letter)| if flag != 0 && c.has(flag) { letter } else { '.' })
        .collect()
    };
    let mut line = format!("{y}{x}{attrs} {path}{slash}");
    if e.kind == EventKind::Hardlinked
        && let Some(m) = &e.message
    {
        line += &format!(" {}", escape_str(m));
    }
    line
}

/// A path for a human: see [`Escaped`].
pub fn escaped(path: &RelPath) -> Escaped<'_> {
    Escaped(if path.is_root() { b"." } else { path.as_bytes() })
}

/// Text for a human (a message from a peer, an error chain): see [`Escaped`].
pub fn escape_str(text: &str) -> String {
    Escaped(text.as_bytes()).to_string()
}

/// Bytes shown the way `ls --quoting-style=escape` shows names: printable text as it is; `\\`,
/// `\n`, `\r`, `\t`; other control characters and bytes that are not UTF-8 as `\xNN`; C1
/// controls, bidirectional overrides and line separators as `\u{NNNN}`. A name or a peer's
/// message can then neither start a new output line nor send the terminal an escape sequence,
/// and different names never print alike. (`--json` carries names unescaped.)
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    c if c.is_ascii_control() => write!(f, "\\x{:02x}", c as u32)?,
                    c if c.is_control() || is_invisible_format(c) => {
                        write!(f, "\\u{{{:04x}}}", c as u32)?;
                    }
                    c => write!(f, "{c}")?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Characters that reorder or break the text around them (bidirectional controls, line and
/// paragraph separators): a name could make a line read differently from what it is.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
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

/// How often `--progress` prints a line when stderr is not a terminal.
pub const PROGRESS_LINE_INTERVAL: Duration = Duration::from_secs(2);

/// `--progress` without a terminal (a log file, a pipe, a CI job): one plain line every
/// [`PROGRESS_LINE_INTERVAL`] and a last one at the end, like rsync's `--info=progress2`, never
/// a bar's carriage returns and escape codes.
pub fn drive_lines(progress: &Progress, done: &AtomicBool, start: std::time::Instant) {
    let mut next = start + PROGRESS_LINE_INTERVAL;
    let mut last = (start, 0u64);
    loop {
        let finished = done.load(Ordering::Acquire);
        let now = std::time::Instant::now();
        if finished || now >= next {
            let snap = Snapshot::read(progress);
            let dt = now.duration_since(last.0).as_secs_f64();
            let rate =
                if dt > 0.0 { snap.bytes_done.saturating_sub(last.1) as f64 / dt } else { 0.0 };
            let line = snap.line(now.duration_since(start), rate, finished);
            let _ = writeln!(std::io::stderr(), "{line}");
            last = (now, snap.bytes_done);
            next = now + PROGRESS_LINE_INTERVAL;
        }
        if finished {
            return;
        }
        std::thread::park_timeout(next.saturating_duration_since(now));
    }
}

/// The live counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub bytes_done: u64,
    pub bytes_needed: u64,
    pub files_done: u64,
    pub files_needed: u64,
    pub scanning: bool,
}

impl Snapshot {
    pub fn read(p: &Progress) -> Snapshot {
        let bytes_needed = Progress::read(&p.bytes_needed);
        Snapshot {
            bytes_done: Progress::read(&p.bytes_done).min(bytes_needed),
            bytes_needed,
            files_done: Progress::read(&p.files_done),
            files_needed: Progress::read(&p.files_needed),
            scanning: !p.walk_done.load(Ordering::Relaxed),
        }
    }

    /// `  1.5 GiB / 4.0 GiB  37%  512.0 MiB/s  files 3/10  0:00:07 ETA 0:00:05`: bytes, the
    /// rate since the previous line, files, elapsed time and (while the walk is done and the
    /// rate is known) the time left; the last line says `done`.
    pub fn line(&self, elapsed: Duration, rate_bytes_per_sec: f64, last: bool) -> String {
        let percent = match self.bytes_done.saturating_mul(100).checked_div(self.bytes_needed) {
            Some(p) => p,
            None if last => 100,
            None => 0,
        };
        let mut line = format!(
            "{:>10} / {} {percent:>3}% {:>10}/s  files {}/{}{}  {}",
            human_bytes(self.bytes_done),
            human_bytes(self.bytes_needed),
            human_bytes(rate_bytes_per_sec as u64),
            self.files_done,
            self.files_needed,
            if self.scanning { " (scanning)" } else { "" },
            clock(elapsed.as_secs()),
        );
        if last {
            line += " done";
        } else if !self.scanning && rate_bytes_per_sec >= 1.0 {
            let left = self.bytes_needed.saturating_sub(self.bytes_done) as f64;
            line += &format!(" ETA {}", clock((left / rate_bytes_per_sec).ceil() as u64));
        }
        line
    }
}

/// `H:MM:SS`.
fn clock(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
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
    /// Logical size of the files copied (sparse files' holes included).
    pub bytes: u64,
    /// Payload bytes that went through the data plane (file data and the small index of each
    /// bundle; holes of sparse files never do): what the throughput is of.
    pub bytes_moved: u64,
    /// Bytes of resumed files that partial files of an interrupted transfer already held
    /// (each chunk confirmed by hash with the source): not sent again.
    pub bytes_reused: u64,
    /// Bytes of block signatures of the target's old copies sent to the source (`--delta`),
    /// on the control channel: with `bytes_moved`, what crossed the link for the files' data.
    pub signature_bytes: u64,
    pub seconds: f64,
    /// `bytes_moved / seconds`: a sparse terabyte copied in a second is not a TB/s link.
    pub throughput_bytes_per_sec: f64,
    pub entries_scanned: u64,
    pub meta_updated: u64,
    pub dirs_created: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub deleted: u64,
    pub unsupported: u64,
    /// FIFOs, sockets and device nodes made.
    pub specials: u64,
    /// Extended attributes (and ACLs) the target did not set.
    pub xattrs_dropped: u64,
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
        eprintln!("{}", self.text());
    }

    /// The one-line human summary. A dry run says what *would* happen and has no rate (nothing
    /// moved); names from the peer (the transport) are escaped.
    pub fn text(&self) -> String {
        let dry = self.dry_run;
        let mut line = format!(
            "{} {} ({})",
            if dry { "would copy" } else { "copied" },
            count(self.files, "file"),
            human_bytes(self.bytes),
        );
        if dry {
            line += &format!(" (dry run, {:.2} s)", self.seconds);
        } else {
            let rate = human_bytes(self.throughput_bytes_per_sec as u64);
            line += &format!(" in {:.2} s, {rate}/s", self.seconds);
        }
        if self.bytes_reused > 0 {
            line += &format!(", {} resumed from partial files", human_bytes(self.bytes_reused));
        }
        line += &format!(
            " via {} ({}); scanned {}",
            escape_str(&self.transport),
            count(u64::from(self.streams), "stream"),
            count(self.entries_scanned, "entry"),
        );
        if self.deleted > 0 {
            let verb = if dry { "would delete" } else { "deleted" };
            line += &format!(", {verb} {}", self.deleted);
        }
        if self.specials > 0 {
            let verb = if dry { "would make" } else { "made" };
            line += &format!(", {verb} {}", count(self.specials, "special file"));
        }
        if self.unsupported > 0 {
            let verb = if dry { "would skip" } else { "skipped" };
            line += &format!(", {verb} {} (not copied)", count(self.unsupported, "special file"));
        }
        if self.xattrs_dropped > 0 {
            let verb = if dry { "would drop" } else { "dropped" };
            let what = count(self.xattrs_dropped, "extended attribute");
            line += &format!(", {verb} {what} the target may not set");
        }
        if self.error_count > 0 {
            line += &format!(", {}", count(self.error_count, "error"));
        }
        if self.deletions_skipped {
            line += if dry {
                " (deletions would be skipped because of errors)"
            } else {
                " (deletions skipped because of errors)"
            };
        }
        line
    }
}

/// `1 file`, `2 files`, `1 entry`, `3 entries`.
fn count(n: u64, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {noun}s"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(b: &[u8]) -> String {
        Escaped(b).to_string()
    }

    #[test]
    fn escaping_keeps_text_and_escapes_controls_like_ls_b() {
        assert_eq!(esc(b"plain name.txt"), "plain name.txt");
        assert_eq!(esc("ünïcödé".as_bytes()), "ünïcödé");
        assert_eq!(esc(b"a\nb\x1b[31mred"), "a\\nb\\x1b[31mred");
        assert_eq!(esc(b"cr\rtab\tbs\\del\x7f"), "cr\\rtab\\tbs\\\\del\\x7f");
        assert_eq!(esc(b"bad\xff\xfeutf8"), "bad\\xff\\xfeutf8");
        // C1 CSI (a terminal escape on its own) and a right-to-left override.
        assert_eq!(esc("x\u{9b}31m\u{202e}y".as_bytes()), "x\\u{009b}31m\\u{202e}y");
        assert_eq!(escaped(&RelPath::root()).to_string(), ".");
    }

    #[test]
    fn escaping_never_makes_two_names_print_alike() {
        // The escape character is escaped itself, so a name cannot imitate an escaped one.
        assert_ne!(esc(b"a\n"), esc(b"a\\n"));
        assert_ne!(esc(b"\xff"), esc(b"\\xff"));
        assert_ne!(esc(b"\xc2\x80"), esc(b"\x80"));
    }

    fn summary(dry_run: bool) -> Summary {
        Summary {
            ok: true,
            dry_run,
            transport: "tcp\n".into(),
            streams: 1,
            frame_checksums: false,
            files: 1,
            bytes: 1 << 40,
            bytes_moved: 1 << 20,
            bytes_reused: 0,
            signature_bytes: 0,
            seconds: 1.0,
            throughput_bytes_per_sec: f64::from(1 << 20),
            entries_scanned: 1,
            meta_updated: 0,
            dirs_created: 0,
            symlinks: 0,
            hardlinks: 0,
            deleted: 3,
            unsupported: 2,
            specials: 0,
            xattrs_dropped: 0,
            deletions_skipped: false,
            error_count: 1,
            errors: Vec::new(),
            profile: None,
        }
    }

    fn ev(kind: EventKind, path: &str, changes: Changes) -> Event {
        Event {
            kind,
            path: RelPath::parse_str(path).expect("path"),
            bytes: 0,
            message: None,
            changes,
        }
    }

    #[test]
    fn itemized_lines_read_like_rsyncs() {
        let new_file = Changes::new(EntryKind::File, Changes::NEW);
        assert_eq!(itemize_line(&ev(EventKind::Copied, "a/f", new_file), false), ">f+++++++++ a/f");
        assert_eq!(itemize_line(&ev(EventKind::Copied, "a/f", new_file), true), "<f+++++++++ a/f");
        let changed = Changes::new(EntryKind::File, Changes::SIZE | Changes::TIME);
        assert_eq!(itemize_line(&ev(EventKind::Copied, "f", changed), false), ">f.st...... f");
        let dir = Changes::new(EntryKind::Dir, Changes::NEW);
        assert_eq!(itemize_line(&ev(EventKind::DirCreated, "d", dir), false), "cd+++++++++ d/");
        let meta = Changes::new(EntryKind::File, Changes::PERMS | Changes::OWNER);
        assert_eq!(itemize_line(&ev(EventKind::MetaUpdated, "f", meta), false), ".f...po.... f");
        let link = Changes::new(EntryKind::Symlink, Changes::NEW);
        assert_eq!(itemize_line(&ev(EventKind::Symlinked, "l", link), false), "cL+++++++++ l");
        let gone = Changes::new(EntryKind::Dir, 0);
        assert_eq!(itemize_line(&ev(EventKind::Deleted, "old", gone), false), "*deleting   old/");
        let mut hard = ev(EventKind::Hardlinked, "b", EventKind::Hardlinked.default_changes());
        hard.message = Some("=> a\n".into());
        assert_eq!(itemize_line(&hard, false), "hf+++++++++ b => a\\n");
        // A name cannot forge a second line.
        let evil = ev(EventKind::Copied, "x\ny", new_file);
        assert!(!itemize_line(&evil, false).contains('\n'));
    }

    #[test]
    fn progress_lines_say_bytes_rate_files_and_eta() {
        let s = Snapshot {
            bytes_done: 1 << 30,
            bytes_needed: 4 << 30,
            files_done: 3,
            files_needed: 10,
            scanning: false,
        };
        let line = s.line(Duration::from_secs(7), f64::from(512u32 << 20), false);
        assert!(line.contains("1.0 GiB / 4.0 GiB  25%"), "{line}");
        assert!(line.contains("512.0 MiB/s  files 3/10  0:00:07 ETA 0:00:06"), "{line}");
        assert!(!line.contains('\r') && !line.contains('\x1b'), "plain text for a pipe: {line}");
        let scanning = Snapshot { scanning: true, ..s }.line(Duration::from_secs(61), 1e6, false);
        assert!(
            scanning.contains("(scanning)  0:01:01") && !scanning.contains("ETA"),
            "{scanning}"
        );
        let done = Snapshot { bytes_done: 4 << 30, ..s }.line(Duration::from_secs(3600), 0.0, true);
        assert!(done.contains("100%") && done.ends_with("1:00:00 done"), "{done}");
        let empty = Snapshot { bytes_needed: 0, bytes_done: 0, ..s };
        assert!(empty.line(Duration::ZERO, 0.0, true).contains("100%"));
    }

    #[test]
    fn dry_run_summary_never_says_deleted() {
        let dry = summary(true).text();
        assert!(dry.contains("would copy 1 file ") && dry.contains("would delete 3"), "{dry}");
        assert!(dry.contains("would skip 2 special files"), "{dry}");
        assert!(!dry.contains("deleted") && !dry.starts_with("copied"), "{dry}");
        assert!(!dry.contains("/s"), "a dry run moves nothing, it has no rate: {dry}");
        let real = summary(false).text();
        assert!(real.contains("copied 1 file ") && real.contains("deleted 3"), "{real}");
        assert!(real.contains("1.0 MiB/s") && real.contains("1 error") && !real.contains("errors"));
        assert!(real.contains("via tcp\\n (1 stream); scanned 1 entry,"), "{real}");
    }
}
