//! The local run history: one JSON line per measured transfer, kept on this machine only.
//!
//! Owns the file format ([`HistoryRecord`], JSON Lines), where the file lives
//! (`$BLIT_HISTORY`, else `$XDG_DATA_HOME/blit/history.jsonl`, else
//! `~/.local/share/blit/history.jsonl`), its bound (at most [`LINES_MAX`] lines: when an append
//! goes over, the file is rewritten atomically with the newest 90 % of the cap, so a rewrite
//! happens once per ~1,000 appends rather than on every one), and the summary that
//! `blit bench --history` prints. Nothing here opens a socket.
//!
//! Writers: `blit bench` (one record per matrix cell, `command = "bench"`) and
//! `blit xfer --profile` (one per transfer, `command = "xfer"`, `path` set, `stage_seconds`
//! filled). Appends from concurrent processes are serialized with an advisory lock on
//! `<file>.lock`, so a cap rewrite never loses another process's line.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stats;

/// Most lines the history keeps.
pub const LINES_MAX: usize = 10_000;
/// No valid record serializes shorter than this (the required field names alone are longer),
/// so a file smaller than `lines_max * RECORD_BYTES_MIN` cannot be over the cap and is not
/// even counted.
const RECORD_BYTES_MIN: u64 = 128;

/// One measured transfer. Fields a writer does not know are `None`/empty and are left out of
/// the JSON; readers accept lines without them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// When the transfer ran (seconds since the Unix epoch, UTC).
    pub time_unix_s: u64,
    /// Which command measured it: "bench" or "xfer".
    pub command: String,
    /// "local", "tcp" or "rdma".
    pub transport: String,
    /// "push" or "pull" for remote transfers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    pub streams: u32,
    pub chunk_bytes: u64,
    /// Bench dataset name ("large", "small", "mixed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// What `blit xfer` copied ("SOURCE -> TARGET").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub bytes: u64,
    pub files: u64,
    pub seconds: f64,
    pub throughput_bytes_per_sec: f64,
    /// CPU seconds (user + system) of the client process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// CPU seconds the daemon spent on this transfer, when it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_cpu_seconds: Option<f64>,
    /// Repeats the numbers are the median of (bench); absent for a single transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u32>,
    pub host: String,
    pub blit_version: String,
    /// Per-stage wall times (walk, diff, transfer, commit, …) from `--profile`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stage_seconds: BTreeMap<String, f64>,
}

/// This machine's host name (for [`HistoryRecord::host`]).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Seconds since the Unix epoch now.
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the history lives: `$BLIT_HISTORY`, else `$XDG_DATA_HOME/blit/history.jsonl`, else
/// `$HOME/.local/share/blit/history.jsonl`.
pub fn default_path() -> io::Result<PathBuf> {
    path_from_env(|k| std::env::var_os(k))
}

/// [`default_path`] with the environment passed in (testable without touching the process's).
fn path_from_env(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> io::Result<PathBuf> {
    let var = |k: &str| lookup(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var("BLIT_HISTORY") {
        return Ok(p);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(d) = var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return Ok(d.join("blit").join("history.jsonl"));
    }
    match var("HOME") {
        Some(h) => Ok(h.join(".local").join("share").join("blit").join("history.jsonl")),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no history location: set BLIT_HISTORY, XDG_DATA_HOME or HOME",
        )),
    }
}

/// Appends `record` to the default history file, keeping it at most [`LINES_MAX`] lines.
pub fn append(record: &HistoryRecord) -> io::Result<()> {
    append_to(&default_path()?, record, LINES_MAX)
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Appends `record` to `path` (creating it and its directory), then trims the file to the
/// newest `lines_max * 9 / 10` lines if it holds more than `lines_max`.
pub fn append_to(path: &Path, record: &HistoryRecord, lines_max: usize) -> io::Result<()> {
    let lines_max = lines_max.max(1);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
    line.push(b'\n');
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))?;
    lock.lock()?;
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        // One write of the whole line: O_APPEND keeps it contiguous.
        f.write_all(&line)?;
        let len = f.metadata()?.len();
        drop(f);
        if len > lines_max as u64 * RECORD_BYTES_MIN {
            trim(path, lines_max)?;
        }
        Ok(())
    })();
    let _ = lock.unlock();
    result
}

/// Rewrites `path` with its newest lines when it holds more than `lines_max` (caller holds the
/// lock).
fn trim(path: &Path, lines_max: usize) -> io::Result<()> {
    let data = std::fs::read(path)?;
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    if lines.len() <= lines_max {
        return Ok(());
    }
    let keep = (lines_max - lines_max / 10).max(1);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    {
        let mut w = io::BufWriter::new(std::fs::File::create(&tmp)?);
        for l in &lines[lines.len() - keep..] {
            w.write_all(l)?;
            w.write_all(b"\n")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// A history file read back.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub records: Vec<HistoryRecord>,
    /// Lines that did not parse (skipped, counted so the summary can say so).
    pub bad_lines: usize,
}

/// Reads `path`; a missing file is an empty history.
pub fn load(path: &Path) -> io::Result<Loaded> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    let mut out = Loaded::default();
    for line in io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<HistoryRecord>(&line) {
            Ok(r) => out.records.push(r),
            Err(_) => out.bad_lines += 1,
        }
    }
    Ok(out)
}

/// One group of the `--history` summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub command: String,
    /// Transport, with the direction for remote transfers ("tcp push").
    pub transport: String,
    /// Dataset name, or the path for `xfer` records.
    pub dataset: String,
    pub count: usize,
    pub last_time_unix_s: u64,
    pub last_throughput_bytes_per_sec: f64,
    pub best_throughput_bytes_per_sec: f64,
    /// Streams and chunk size of the best record.
    pub best_streams: u32,
    pub best_chunk_bytes: u64,
    pub median_throughput_bytes_per_sec: f64,
    /// Newer half's median over the older half's, minus one (+0.10 = 10 % faster lately);
    /// `None` with fewer than 4 records.
    pub trend: Option<f64>,
}

/// Groups records by command, transport (+direction) and dataset/path, in first-seen order.
pub fn summarize(records: &[HistoryRecord]) -> Vec<SummaryRow> {
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut groups: BTreeMap<(String, String, String), Vec<&HistoryRecord>> = BTreeMap::new();
    for r in records {
        let transport = match &r.direction {
            Some(d) => format!("{} {d}", r.transport),
            None => r.transport.clone(),
        };
        let what = r.dataset.clone().or_else(|| r.path.clone()).unwrap_or_else(|| "-".into());
        let key = (r.command.clone(), transport, what);
        let g = groups.entry(key.clone()).or_default();
        if g.is_empty() {
            order.push(key);
        }
        g.push(r);
    }
    let mut rows = Vec::new();
    for key in order {
        let Some(g) = groups.get_mut(&key) else { continue };
        // Stable sort: records with equal times keep their file order (append order).
        g.sort_by_key(|r| r.time_unix_s);
        let tput: Vec<f64> = g.iter().map(|r| r.throughput_bytes_per_sec).collect();
        let Some(last) = g.last() else { continue };
        let best = g
            .iter()
            .copied()
            .max_by(|a, b| a.throughput_bytes_per_sec.total_cmp(&b.throughput_bytes_per_sec))
            .unwrap_or(last);
        let trend = if g.len() >= 4 {
            let half = g.len() / 2;
            match (stats::median(&tput[..half]), stats::median(&tput[g.len() - half..])) {
                (Some(old), Some(new)) if old > 0.0 => Some(new / old - 1.0),
                _ => None,
            }
        } else {
            None
        };
        rows.push(SummaryRow {
            command: key.0,
            transport: key.1,
            dataset: key.2,
            count: g.len(),
            last_time_unix_s: last.time_unix_s,
            last_throughput_bytes_per_sec: last.throughput_bytes_per_sec,
            best_throughput_bytes_per_sec: best.throughput_bytes_per_sec,
            best_streams: best.streams,
            best_chunk_bytes: best.chunk_bytes,
            median_throughput_bytes_per_sec: stats::median(&tput).unwrap_or(0.0),
            trend,
        });
    }
    rows
}

fn trend_text(t: Option<f64>) -> String {
    match t {
        None => "–".to_string(),
        Some(t) if t > 0.05 => format!("↑ {:+.0} %", t * 100.0),
        Some(t) if t < -0.05 => format!("↓ {:+.0} %", t * 100.0),
        Some(t) => format!("→ {:+.0} %", t * 100.0),
    }
}

/// The `blit bench --history` table (Markdown).
pub fn render_summary(loaded: &Loaded, path: &Path) -> String {
    use crate::units::{gbps, size_label, utc_rfc3339};
    let rows = summarize(&loaded.records);
    let mut s = format!("History: {} ({} records", path.display(), loaded.records.len());
    if loaded.bad_lines > 0 {
        s.push_str(&format!(", {} unreadable lines skipped", loaded.bad_lines));
    }
    s.push_str(")\n\n");
    if rows.is_empty() {
        s.push_str("No runs recorded yet: `blit bench` adds one record per matrix cell.\n");
        return s;
    }
    s.push_str(
        "| command | transport | dataset / path | count | last | last Gb/s | best Gb/s (streams × chunk) | median Gb/s | trend |\n",
    );
    s.push_str("|---|---|---|---:|---|---:|---:|---:|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} ({} × {}) | {:.2} | {} |\n",
            r.command,
            r.transport,
            r.dataset.replace('|', "\\|"),
            r.count,
            utc_rfc3339(r.last_time_unix_s),
            gbps(r.last_throughput_bytes_per_sec),
            gbps(r.best_throughput_bytes_per_sec),
            r.best_streams,
            size_label(r.best_chunk_bytes),
            gbps(r.median_throughput_bytes_per_sec),
            trend_text(r.trend),
        ));
    }
    s.push_str(
        "\nGb/s = 10^9 bits per second. Trend: the newer half's median against the older half's.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: u64, transport: &str, dataset: &str, tput: f64) -> HistoryRecord {
        HistoryRecord {
            time_unix_s: t,
            command: "bench".into(),
            transport: transport.into(),
            direction: None,
            streams: 4,
            chunk_bytes: 1 << 20,
            dataset: Some(dataset.into()),
            path: None,
            bytes: 1000,
            files: 1,
            seconds: 1.0,
            throughput_bytes_per_sec: tput,
            cpu_seconds: Some(0.5),
            daemon_cpu_seconds: None,
            runs: Some(3),
            host: "h".into(),
            blit_version: "0.1.0".into(),
            stage_seconds: BTreeMap::new(),
        }
    }

    #[test]
    fn location_follows_blit_history_then_xdg_then_home() {
        use std::ffi::OsString;
        fn env(
            pairs: &'static [(&'static str, &'static str)],
        ) -> impl Fn(&str) -> Option<OsString> {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
        }
        const ALL: &[(&str, &str)] =
            &[("BLIT_HISTORY", "/t/h.jsonl"), ("XDG_DATA_HOME", "/x"), ("HOME", "/home/u")];
        assert_eq!(path_from_env(env(ALL)).unwrap(), PathBuf::from("/t/h.jsonl"));
        assert_eq!(
            path_from_env(env(&[("XDG_DATA_HOME", "/x"), ("HOME", "/home/u")])).unwrap(),
            PathBuf::from("/x/blit/history.jsonl")
        );
        assert_eq!(
            path_from_env(env(&[("XDG_DATA_HOME", "rel"), ("HOME", "/home/u")])).unwrap(),
            PathBuf::from("/home/u/.local/share/blit/history.jsonl")
        );
        assert!(path_from_env(env(&[("BLIT_HISTORY", "")])).is_err());
    }

    #[test]
    fn appends_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/history.jsonl");
        let a = rec(1, "tcp", "large", 10.0);
        let mut b = rec(2, "local", "small", 20.0);
        b.stage_seconds.insert("walk".into(), 0.25);
        append_to(&path, &a, 100).unwrap();
        append_to(&path, &b, 100).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.records, vec![a, b]);
        assert_eq!(loaded.bad_lines, 0);
    }

    #[test]
    fn optional_fields_are_omitted_and_lines_without_them_parse() {
        let mut r = rec(1, "tcp", "large", 1.0);
        r.cpu_seconds = None;
        r.runs = None;
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("cpu_seconds") && !text.contains("stage_seconds"));
        assert!(text.len() as u64 >= RECORD_BYTES_MIN, "{} bytes", text.len());
        // What `blit xfer --profile` writes: a path instead of a dataset, stage timings.
        let xfer = r#"{"time_unix_s":5,"command":"xfer","transport":"tcp","direction":"push",
            "streams":8,"chunk_bytes":4194304,"path":"/a -> blit://h/b","bytes":9,"files":1,
            "seconds":0.5,"throughput_bytes_per_sec":18.0,"host":"h","blit_version":"0.1.0",
            "stage_seconds":{"walk":0.1,"transfer":0.4}}"#
            .replace('\n', "");
        let x: HistoryRecord = serde_json::from_str(&xfer).unwrap();
        assert_eq!(x.path.as_deref(), Some("/a -> blit://h/b"));
        assert_eq!(x.stage_seconds.len(), 2);
    }

    #[test]
    fn the_cap_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        for t in 0..25 {
            append_to(&path, &rec(t, "tcp", "large", t as f64), 10).unwrap();
            let n = load(&path).unwrap().records.len();
            assert!(n <= 10, "{n} lines after {t}");
        }
        let kept = load(&path).unwrap().records;
        // Over the cap at 11 lines -> trimmed to 9; the newest record is always there.
        assert_eq!(kept.last().unwrap().time_unix_s, 24);
        let times: Vec<u64> = kept.iter().map(|r| r.time_unix_s).collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted, "order kept");
        assert_eq!(*times.first().unwrap(), 25 - kept.len() as u64);
        assert!(!dir.path().join(format!("h.jsonl.tmp.{}", std::process::id())).exists());
    }

    #[test]
    fn bad_lines_are_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        append_to(&path, &rec(1, "tcp", "large", 1.0), 100).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{not json\n\n")
            .unwrap();
        let l = load(&path).unwrap();
        assert_eq!((l.records.len(), l.bad_lines), (1, 1));
        assert_eq!(load(&dir.path().join("missing")).unwrap().records.len(), 0);
    }

    #[test]
    fn summary_groups_and_computes_best_median_and_trend() {
        let mut recs = vec![
            rec(1, "tcp", "large", 10.0),
            rec(2, "tcp", "large", 10.0),
            rec(3, "local", "large", 50.0),
            rec(4, "tcp", "large", 20.0),
            rec(5, "tcp", "large", 22.0),
        ];
        recs[3].streams = 8;
        let rows = summarize(&recs);
        assert_eq!(rows.len(), 2);
        let tcp = &rows[0];
        assert_eq!((tcp.transport.as_str(), tcp.dataset.as_str(), tcp.count), ("tcp", "large", 4));
        assert_eq!(tcp.best_throughput_bytes_per_sec, 22.0);
        assert_eq!(tcp.last_throughput_bytes_per_sec, 22.0);
        assert_eq!(tcp.last_time_unix_s, 5);
        assert_eq!(tcp.median_throughput_bytes_per_sec, 15.0);
        // older half median 10, newer half median 21 -> +110 %.
        assert!((tcp.trend.unwrap() - 1.1).abs() < 1e-9);
        assert_eq!(rows[1].trend, None);
        let text = render_summary(&Loaded { records: recs, bad_lines: 2 }, Path::new("/x"));
        assert!(text.contains("| bench | tcp | large | 4 |"), "{text}");
        assert!(text.contains("2 unreadable lines skipped"));
        assert!(text.contains("↑ +110 %"));
    }

    #[test]
    fn direction_and_path_make_their_own_groups() {
        let mut push = rec(1, "tcp", "large", 1.0);
        push.direction = Some("push".into());
        let mut xfer = rec(2, "tcp", "", 1.0);
        xfer.command = "xfer".into();
        xfer.dataset = None;
        xfer.path = Some("/a -> /b".into());
        let rows = summarize(&[push, xfer]);
        assert_eq!(rows[0].transport, "tcp push");
        assert_eq!((rows[1].command.as_str(), rows[1].dataset.as_str()), ("xfer", "/a -> /b"));
    }
}
