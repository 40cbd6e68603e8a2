//! `blit ls`, `blit du`, `blit rm` and `blit mkdir` on `blit://HOST[:PORT]/path`: what a daemon
//! holds, listed, measured, removed or made (the daemon confines every path to its root).
//!
//! Output is streamed as the daemon's pages arrive. Names are escaped for the terminal
//! ([`Escaped`]: no control character reaches it); `--json` prints one JSON object per line
//! (per entry for `ls`, per directory for `du`, one for `rm` and `mkdir`), names as UTF-8 text
//! with a `*_hex` field beside any name that is not UTF-8.

use std::io::Write;

use blitx_control::cancel::Cancel;
use blitx_control::client::CONNECT_TIMEOUT_DEFAULT;
use blitx_control::ops::{self as remote, OpError};
use blitx_control::url::RemoteSpec;
use blitx_core::RelPath;
use blitx_storage::ops::{ListPage, Stat, Usage};

use crate::exit::Exit;
use crate::output::{Escaped, escape_str, escaped};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// blit://HOST[:PORT]/path (a directory lists its entries; anything else itself).
    pub url: String,
    /// Long format: type and mode, links, numeric owner and group, size, mtime (UTC), name.
    #[arg(short = 'l')]
    pub long: bool,
    /// List subdirectories recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// One JSON object per entry per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DuArgs {
    /// blit://HOST[:PORT]/path
    pub url: String,
    /// Only the total of the path (otherwise every directory's, each after its subtree).
    #[arg(short = 's', long)]
    pub summarize: bool,
    /// Apparent size in bytes (like `du -b`) instead of the allocated space in human units
    /// (like `du -h`).
    #[arg(short = 'b', long)]
    pub bytes: bool,
    /// One JSON object per directory per line (apparent and allocated bytes, files, dirs).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// blit://HOST[:PORT]/path (never the daemon's root itself).
    pub url: String,
    /// Remove a directory and everything below it (symlinks are removed, never followed).
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct MkdirArgs {
    /// blit://HOST[:PORT]/path
    pub url: String,
    /// Make missing parent directories; an existing directory is no error.
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// Print how many directories were made as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses the URL (a usage error when it is none) and installs the interrupt handler.
fn prepare(cmd: &str, url: &str) -> Result<(RemoteSpec, Cancel), Exit> {
    if !RemoteSpec::is_remote(url) {
        eprintln!("blit {cmd}: {} is not a blit://HOST[:PORT]/path URL", escape_str(url));
        return Err(Exit::Usage);
    }
    let spec = RemoteSpec::parse(url).map_err(|e| {
        eprintln!("blit {cmd}: {}", escape_str(&e.to_string()));
        Exit::Usage
    })?;
    let cancel = Cancel::new();
    if let Err(e) = cancel.watch_signals() {
        eprintln!("blit {cmd}: cannot install the signal handler: {e}");
        return Err(Exit::Fatal);
    }
    // The output is written from inside the call: a write blocked on a full pipe whose reader
    // stopped reading (`blit ls -R ... | less`) cannot see the cancel. Once cancelled, the
    // command gets a short grace to end on its own, then the process ends here (the daemon
    // stops the operation when the connection closes).
    let watch = cancel.plane().clone();
    let _ = std::thread::Builder::new().name("blit-interrupt".into()).spawn(move || {
        let _ = watch.wake().recv();
        std::thread::sleep(INTERRUPT_GRACE);
        std::process::exit(Exit::Interrupted.into());
    });
    Ok((spec, cancel))
}

/// How long an interrupted command may take to end by itself.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Reports a failed operation; the exit code by the error's type.
fn failed(cmd: &str, spec: &RemoteSpec, e: &OpError) -> Exit {
    let text = match std::error::Error::source(e) {
        Some(s) if !matches!(e, OpError::Client(_)) => format!("{e}: {s}"),
        _ => e.to_string(),
    };
    eprintln!("blit {cmd} {}: {}", escape_str(&spec.to_string()), escape_str(&text));
    match e {
        OpError::Cancelled => Exit::Interrupted,
        _ => Exit::Fatal,
    }
}

/// stdout for streamed output; a reader that went away (`blit ls -R ... | head`) cancels the
/// operation quietly.
struct Out {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
    gone: bool,
    cancel: Cancel,
}

impl Out {
    fn new(cancel: &Cancel) -> Out {
        Out {
            w: std::io::BufWriter::new(std::io::stdout().lock()),
            gone: false,
            cancel: cancel.clone(),
        }
    }

    fn line(&mut self, text: std::fmt::Arguments<'_>) {
        if self.gone {
            return;
        }
        if let Err(e) = self.w.write_fmt(text).and_then(|()| self.w.write_all(b"\n")) {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("blit: error: cannot write to stdout: {e}");
        }
        self.gone = true;
        self.cancel.cancel();
    }

    /// Flushes what is buffered.
    fn finish(mut self) {
        if !self.gone
            && let Err(e) = self.w.flush()
        {
            self.fail(&e);
        }
    }
}

fn json_name(key: &str, name: &[u8], obj: &mut serde_json::Map<String, serde_json::Value>) {
    obj.insert(key.into(), String::from_utf8_lossy(name).into_owned().into());
    if std::str::from_utf8(name).is_err() {
        let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
        obj.insert(format!("{key}_hex"), hex.into());
    }
}

pub fn ls(args: LsArgs) -> Exit {
    let (spec, cancel) = match prepare("ls", &args.url) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut out = Out::new(&cancel);
    let mut last_dir: Option<RelPath> = None;
    let mut page = |p: ListPage| {
        if args.json {
            for e in &p.entries {
                out.line(format_args!("{}", ls_json(&p, e)));
            }
            return;
        }
        if p.is_file {
            let e = &p.entries[0];
            let name = escaped(&p.dir).to_string();
            match args.long {
                true => out.line(format_args!("{}", long_line(e, &name))),
                false => out.line(format_args!("{name}")),
            }
            return;
        }
        if args.recursive && last_dir.as_ref() != Some(&p.dir) {
            if last_dir.is_some() {
                out.line(format_args!(""));
            }
            out.line(format_args!("{}:", escaped(&p.dir)));
            last_dir = Some(p.dir.clone());
        }
        for e in &p.entries {
            let name = Escaped(&e.name).to_string();
            match args.long {
                true => out.line(format_args!("{}", long_line(e, &name))),
                false => out.line(format_args!("{name}")),
            }
        }
    };
    let r = remote::list(&spec, args.recursive, CONNECT_TIMEOUT_DEFAULT, &cancel, &mut page);
    let gone = out.gone;
    out.finish();
    match r {
        Ok(()) => Exit::Ok,
        Err(OpError::Cancelled) if gone => Exit::Ok,
        Err(e) => failed("ls", &spec, &e),
    }
}

fn ls_json(p: &ListPage, e: &Stat) -> String {
    let mut obj = serde_json::Map::new();
    let path = if p.is_file {
        p.dir.as_bytes().to_vec()
    } else if p.dir.is_root() {
        e.name.clone()
    } else {
        [p.dir.as_bytes(), b"/", &e.name].concat()
    };
    json_name("path", &path, &mut obj);
    obj.insert("type".into(), serde_json::to_value(e.file_type).unwrap_or_default());
    obj.insert("mode".into(), e.mode.into());
    obj.insert("size_bytes".into(), e.size_bytes.into());
    obj.insert("allocated_bytes".into(), e.allocated_bytes.into());
    obj.insert("mtime".into(), e.mtime.sec.into());
    obj.insert("mtime_nsec".into(), e.mtime.nsec.into());
    obj.insert("uid".into(), e.uid.into());
    obj.insert("gid".into(), e.gid.into());
    obj.insert("nlink".into(), e.nlink.into());
    if let Some(t) = &e.link_target {
        json_name("link_target", t, &mut obj);
    }
    serde_json::Value::Object(obj).to_string()
}

/// `drwxr-xr-x   2     0     0         4096 2026-12-07 11:22 name -> target`.
fn long_line(e: &Stat, name: &str) -> String {
    let target = match &e.link_target {
        Some(t) => format!(" -> {}", Escaped(t)),
        None => String::new(),
    };
    format!(
        "{}{} {:>3} {:>5} {:>5} {:>12} {} {name}{target}",
        e.file_type.letter(),
        mode_text(e.mode),
        e.nlink,
        e.uid,
        e.gid,
        e.size_bytes,
        utc_minutes(e.mtime.sec)
    )
}

/// `rwxr-xr-x`, with `s`/`S` for setuid and setgid and `t`/`T` for the sticky bit.
fn mode_text(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => letter,
            (true, false) => letter.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DD HH:MM` in UTC (the daemon's time zone is not known here).
fn utc_minutes(sec: i64) -> String {
    let days = sec.div_euclid(86_400);
    let rem = sec.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

pub fn du(args: DuArgs) -> Exit {
    let (spec, cancel) = match prepare("du", &args.url) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut out = Out::new(&cancel);
    let mut each = |path: &RelPath, u: &Usage| {
        if args.json {
            let mut obj = serde_json::Map::new();
            json_name("path", if path.is_root() { b"." } else { path.as_bytes() }, &mut obj);
            if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(u) {
                obj.extend(m);
            }
            out.line(format_args!("{}", serde_json::Value::Object(obj)));
        } else {
            let size =
                if args.bytes { u.apparent_bytes.to_string() } else { human(u.allocated_bytes) };
            out.line(format_args!("{size}\t{}", escaped(path)));
        }
    };
    let r = remote::usage(&spec, args.summarize, CONNECT_TIMEOUT_DEFAULT, &cancel, &mut each);
    let gone = out.gone;
    out.finish();
    match r {
        Ok(_) => Exit::Ok,
        Err(OpError::Cancelled) if gone => Exit::Ok,
        Err(e) => failed("du", &spec, &e),
    }
}

/// Like `du -h`: 1024-based, one decimal below 10 of a unit, rounded up.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{:.1}{}", (v * 10.0).ceil() / 10.0, UNITS[unit])
    } else {
        format!("{}{}", v.ceil() as u64, UNITS[unit])
    }
}

pub fn rm(args: RmArgs) -> Exit {
    let (spec, cancel) = match prepare("rm", &args.url) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if spec.path.is_root() {
        eprintln!(
            "blit rm {}: the daemon's root itself cannot be removed",
            escape_str(&spec.to_string())
        );
        return Exit::Usage;
    }
    match remote::remove(&spec, args.recursive, CONNECT_TIMEOUT_DEFAULT, &cancel) {
        Ok(n) => {
            if args.json {
                crate::output::write_stdout(&format!(
                    "{}\n",
                    serde_json::json!({"files": n.files, "dirs": n.dirs})
                ));
            }
            Exit::Ok
        }
        Err(e) => failed("rm", &spec, &e),
    }
}

pub fn mkdir(args: MkdirArgs) -> Exit {
    let (spec, cancel) = match prepare("mkdir", &args.url) {
        Ok(v) => v,
        Err(code) => return code,
    };
    match remote::make_dir(&spec, args.parents, CONNECT_TIMEOUT_DEFAULT, &cancel) {
        Ok(made) => {
            if args.json {
                crate::output::write_stdout(&format!("{}\n", serde_json::json!({"made": made})));
            }
            Exit::Ok
        }
        Err(e) => failed("mkdir", &spec, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_dates_and_sizes_print_like_coreutils() {
        assert_eq!(mode_text(0o755), "rwxr-xr-x");
        assert_eq!(mode_text(0o4755), "rwsr-xr-x");
        assert_eq!(mode_text(0o2644), "rw-r-Sr--");
        assert_eq!(mode_text(0o1777), "rwxrwxrwt");
        assert_eq!(utc_minutes(0), "1970-01-01 00:00");
        assert_eq!(utc_minutes(1_796_642_520), "2026-12-07 11:22");
        assert_eq!(utc_minutes(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_minutes(-60), "1969-12-31 23:59");
        assert_eq!(human(0), "0");
        assert_eq!(human(4096), "4.0K");
        assert_eq!(human(1536), "1.5K");
        assert_eq!(human(10 << 20), "10M");
        assert_eq!(human((3 << 30) + 1), "3.1G");
    }

    #[test]
    fn json_names_keep_bytes_that_are_not_utf8() {
        let mut m = serde_json::Map::new();
        json_name("path", b"a\xffb", &mut m);
        assert_eq!(m["path_hex"], "61ff62");
        let mut m = serde_json::Map::new();
        json_name("path", "ü".as_bytes(), &mut m);
        assert!(!m.contains_key("path_hex"));
    }
}
