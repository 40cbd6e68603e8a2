//! The files a bench run leaves: `runs.csv`, `runs.json` and `summary.md`.
//!
//! Owns their formats (column order, JSON schema tag, the Markdown table) and writing them.
//! The numbers come from `record`; nothing here measures anything.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::BenchConfig;
use crate::counters::CounterSupport;
use crate::dataset::{Dataset, DatasetKind};
use crate::record::{CellSummary, RunRecord, Skip};
use crate::units::{size_label, utc_rfc3339};

/// Tag of the `runs.json` layout; bumped when a field changes meaning or goes away.
pub const SCHEMA: &str = "blit-bench/1";

/// Where and on what the numbers were taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    pub cpus: usize,
    pub kernel: String,
    pub clock_ticks_per_s: u64,
    /// File system type of the work directory (tmpfs, ext4, …).
    pub work_dir_fs: String,
    /// `embedded 127.0.0.1:PORT` or the remote URL.
    pub daemon: String,
    pub counters: CounterSupport,
}

/// Everything in `runs.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub blit_version: String,
    pub host: String,
    pub started_unix_s: u64,
    pub started_utc: String,
    pub duration_s: f64,
    pub config: BenchConfig,
    pub environment: Environment,
    pub datasets: Vec<Dataset>,
    pub skipped: Vec<Skip>,
    pub notes: Vec<String>,
    pub runs: Vec<RunRecord>,
    pub cells: Vec<CellSummary>,
}

/// Writes one CSV row per run; the header is [`RunRecord`]'s field names in order.
pub fn write_csv(path: &Path, runs: &[RunRecord]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    for r in runs {
        w.serialize(r)?;
    }
    if runs.is_empty() {
        // csv writes the header with the first record; an empty run still gets one.
        w.write_record(csv_header())?;
    }
    w.flush()?;
    Ok(())
}

/// The column names of `runs.csv`, in order (the field order of [`RunRecord`]).
pub fn csv_header() -> Vec<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if w.serialize(RunRecord::new(0, "", "", 0)).is_err() {
        return Vec::new();
    }
    let bytes = w.into_inner().unwrap_or_default();
    let mut rd = csv::Reader::from_reader(bytes.as_slice());
    rd.headers().map(|h| h.iter().map(String::from).collect()).unwrap_or_default()
}

pub fn write_json(path: &Path, report: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n")?;
    Ok(())
}

/// Server CPU per run below this many clock ticks is marked as coarse in the summary.
const COARSE_TICKS: f64 = 10.0;

/// A table cell: `|` would end the cell early.
fn cell_text(s: &str) -> String {
    s.replace('|', "\\|")
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "–".to_string(),
    }
}

/// Sort rank of a cell's dataset: the datasets in their usual order, link baselines last.
fn dataset_rank(d: &Option<String>) -> usize {
    match d.as_deref().and_then(DatasetKind::parse) {
        Some(k) => k as usize,
        None => DatasetKind::ALL.len(),
    }
}

/// The paste-ready Markdown summary.
/// Runs shorter than this are marked in the table (`--quick` datasets are sized to exceed it).
pub const SHORT_RUN_S: f64 = 0.5;

pub fn render_markdown(r: &Report) -> String {
    let mut s = format!("# blit bench — {} — {}\n\n", r.host, r.started_utc);
    let c = &r.config;
    s.push_str(&format!(
        "blit {} · daemon: {} · work dir {} ({}) · repeat {} · {} CPUs · kernel {} · {:.0} s\n\n",
        r.blit_version,
        r.environment.daemon,
        c.work_dir.display(),
        r.environment.work_dir_fs,
        c.repeat,
        r.environment.cpus,
        r.environment.kernel,
        r.duration_s,
    ));
    if !r.datasets.is_empty() {
        let ds: Vec<String> = r
            .datasets
            .iter()
            .map(|d| {
                format!(
                    "{} = {} file{}, {:.1} MiB",
                    d.kind.name(),
                    d.files,
                    if d.files == 1 { "" } else { "s" },
                    d.bytes as f64 / 1_048_576.0
                )
            })
            .collect();
        s.push_str(&format!("Datasets: {}\n\n", ds.join("; ")));
    }
    let ctx = r.environment.counters.software_available && r.environment.counters.kernel_included;
    s.push_str("| cell | dataset | ok/runs | median s | min s | max s | Gb/s | client CPU s/GB | server CPU s/GB |");
    if ctx {
        s.push_str(" client ctx-sw/GB | server ctx-sw/GB |");
    }
    s.push('\n');
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    if ctx {
        s.push_str("---:|---:|");
    }
    s.push('\n');
    // /proc/<pid>/stat counts in clock ticks: a server cost of a few ticks per run is mostly
    // rounding, so such values are marked rather than printed as if exact.
    let tick_s = 1.0 / r.environment.clock_ticks_per_s.max(1) as f64;
    let mut coarse = false;
    let mut server_cpu = |x: &CellSummary| -> String {
        let text = num(x.server_cpu_s_per_gb, 2);
        match x.server_cpu_s_per_gb {
            Some(v) if v * x.bytes as f64 / 1e9 < COARSE_TICKS * tick_s => {
                coarse = true;
                format!("~{text}")
            }
            _ => text,
        }
    };
    let mut cells: Vec<&CellSummary> = r.cells.iter().collect();
    // Stable: within a dataset, blit cells (matrix order) come before baselines.
    cells.sort_by_key(|x| (dataset_rank(&x.key.dataset), !x.key.is_blit()));
    let mut short = false;
    for x in &cells {
        let sp = x.seconds;
        // A run this short measures start-up (process, daemon handshake, data connections)
        // more than the link: marked, never silently mixed with real rates.
        let brief = x.key.dataset.is_some() && sp.is_some_and(|v| v.median < SHORT_RUN_S);
        short |= brief;
        s.push_str(&format!(
            "| {}{} | {} | {}/{} | {} | {} | {} | {} | {} | {} |",
            cell_text(&x.label),
            if brief { " †" } else { "" },
            x.key.dataset.as_deref().unwrap_or("(link)"),
            x.ok_runs,
            x.runs,
            num(sp.map(|v| v.median), 3),
            num(sp.map(|v| v.min), 3),
            num(sp.map(|v| v.max), 3),
            num(x.throughput_median_gbps, 2),
            num(x.client_cpu_s_per_gb, 2),
            server_cpu(x),
        ));
        if ctx {
            s.push_str(&format!(
                " {} | {} |",
                num(x.client_context_switches_per_gb, 0),
                num(x.server_context_switches_per_gb, 0)
            ));
        }
        s.push('\n');
    }
    if r.environment.counters.hardware_available {
        s.push_str("\nHardware counters per GB (median over runs):\n\n");
        s.push_str("| cell | dataset | client cycles/GB | client instr/GB | client cache-miss/GB | server cycles/GB | server instr/GB | server cache-miss/GB |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        let g = |v: Option<f64>| num(v.map(|x| x / 1e9), 3);
        for x in &cells {
            s.push_str(&format!(
                "| {} | {} | {}G | {}G | {}G | {}G | {}G | {}G |\n",
                cell_text(&x.label),
                x.key.dataset.as_deref().unwrap_or("(link)"),
                g(x.client_cycles_per_gb),
                g(x.client_instructions_per_gb),
                g(x.client_cache_misses_per_gb),
                g(x.server_cycles_per_gb),
                g(x.server_instructions_per_gb),
                g(x.server_cache_misses_per_gb),
            ));
        }
    }
    if short {
        s.push_str(&format!(
            "\n† : median run under {SHORT_RUN_S} s: start-up (process, handshake, connections) \
             weighs on its rate; raise --large-size / --small-files / --mixed-files.\n"
        ));
    }
    if coarse {
        s.push_str(&format!(
            "\n~ : the server spent under {COARSE_TICKS} clock ticks ({:.0} ms) per run, close to \
             /proc's resolution; use larger datasets or more repeats (runs.csv also has \
             server_task_clock_ns, in ns, where software counters work).\n",
            COARSE_TICKS * tick_s * 1000.0
        ));
    }
    let failed: Vec<&&CellSummary> = cells.iter().filter(|x| !x.errors.is_empty()).collect();
    if !failed.is_empty() {
        s.push_str("\nFailures:\n\n");
        for x in failed {
            s.push_str(&format!(
                "- {} ({}): {}\n",
                x.label,
                x.key.dataset.as_deref().unwrap_or("link"),
                x.errors.join("; ")
            ));
        }
    }
    if !r.skipped.is_empty() {
        s.push_str("\nSkipped:\n\n");
        for k in &r.skipped {
            s.push_str(&format!("- {}: {}\n", k.what, k.reason));
        }
    }
    let counter_notes = r.environment.counters.notes();
    if !counter_notes.is_empty() || !r.notes.is_empty() {
        s.push_str("\nNotes:\n\n");
        for n in counter_notes.iter().chain(&r.notes) {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s.push_str(&format!(
        "\nGb/s = 10^9 bits/s of file data (dataset bytes / wall seconds; iperf3 and ib_write_bw: \
         their own payload rate). CPU s/GB = CPU seconds (user + system) per 10^9 bytes; client = \
         the measured process via wait4, server = the daemon's /proc/<pid>/stat delta \
         (resolution {} ms). Chunk sizes: {}.\n",
        1000 / r.environment.clock_ticks_per_s.max(1),
        c.chunk_sizes_bytes.iter().map(|b| size_label(*b)).collect::<Vec<_>>().join(", "),
    ));
    s
}

/// `started_utc` for a report.
pub fn started_utc(unix_s: u64) -> String {
    utc_rfc3339(unix_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::summarize;

    fn sample_runs() -> Vec<RunRecord> {
        let mut a = RunRecord::new(1, "blit", "tcp", 1);
        a.direction = Some("push".into());
        a.dataset = Some("small".into());
        a.streams = Some(4);
        a.chunk_bytes = Some(1 << 20);
        a.ok = true;
        a.seconds = 0.5;
        a.bytes = 1_000_000_000;
        a.files = 10;
        a.throughput_bytes_per_sec = 2e9;
        a.client_cpu_s = 0.25;
        a.server_cpu_s = Some(0.5);
        let mut tiny = a.clone();
        tiny.run = 3;
        tiny.dataset = Some("mixed".into());
        tiny.server_cpu_s = Some(0.02);
        a.error = Some("has, a \"comma\"".into());
        let mut b = RunRecord::new(2, "iperf3 -Z", "tcp", 1);
        b.streams = Some(1);
        b.ok = true;
        b.seconds = 1.0;
        b.bytes = 5_000_000_000;
        b.throughput_bytes_per_sec = 5e9;
        vec![a, b, tiny]
    }

    fn sample_report() -> Report {
        let runs = sample_runs();
        Report {
            schema: SCHEMA.into(),
            blit_version: "0.1.0".into(),
            host: "h".into(),
            started_unix_s: 0,
            started_utc: started_utc(0),
            duration_s: 1.0,
            config: BenchConfig::quick("blit".into(), 0),
            environment: Environment {
                cpus: 2,
                kernel: "6.1".into(),
                clock_ticks_per_s: 100,
                work_dir_fs: "tmpfs".into(),
                daemon: "embedded 127.0.0.1:1".into(),
                counters: CounterSupport::disabled("off for the test"),
            },
            datasets: vec![],
            skipped: vec![Skip {
                what: "baseline ib_write_bw".into(),
                reason: "no verbs device".into(),
            }],
            notes: vec![],
            cells: summarize(&runs),
            runs,
        }
    }

    #[test]
    fn csv_round_trips_with_one_row_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runs.csv");
        let runs = sample_runs();
        write_csv(&p, &runs).unwrap();
        let mut rd = csv::Reader::from_path(&p).unwrap();
        let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header[..4], ["run", "tool", "transport", "direction"]);
        let back: Vec<RunRecord> = rd.deserialize().map(|r| r.unwrap()).collect();
        assert_eq!(back, runs);
        assert_eq!(header, csv_header());
    }

    #[test]
    fn empty_csv_still_has_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runs.csv");
        write_csv(&p, &[]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("throughput_bytes_per_sec"));
    }

    #[test]
    fn json_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runs.json");
        let r = sample_report();
        write_json(&p, &r).unwrap();
        let back: Report = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back.schema, SCHEMA);
        assert_eq!(back.runs, r.runs);
        assert_eq!(back.cells, r.cells);
    }

    #[test]
    fn markdown_has_the_table_skips_and_no_invented_counters() {
        let md = render_markdown(&sample_report());
        assert!(md.contains("| cell | dataset | ok/runs | median s | min s | max s | Gb/s |"));
        assert!(md.contains("| blit tcp push, 4 streams, chunk 1M | small | 1/1 | 0.500 | 0.500 | 0.500 | 16.00 | 0.25 | 0.50 |"), "{md}");
        assert!(md.contains("| baseline: iperf3 -Z, 1 stream | (link) |"));
        assert!(
            md.contains("| mixed | 1/1 | 0.500 | 0.500 | 0.500 | 16.00 | 0.25 | ~0.02 |"),
            "{md}"
        );
        assert!(md.contains("~ : the server spent under 10 clock ticks (100 ms)"));
        assert!(md.contains("- baseline ib_write_bw: no verbs device"));
        assert!(md.contains("hardware counters unavailable: off for the test"));
        assert!(!md.contains("ctx-sw/GB"), "no counter columns without counters");
        assert!(!md.contains('†'), "0.5 s runs are not short: {md}");
    }

    #[test]
    fn runs_shorter_than_half_a_second_are_marked() {
        let mut r = sample_report();
        let mut runs = sample_runs();
        for run in &mut runs {
            run.seconds = 0.02;
        }
        r.cells = summarize(&runs);
        let md = render_markdown(&r);
        assert!(md.contains("| blit tcp push, 4 streams, chunk 1M † | small |"), "{md}");
        assert!(
            md.contains("| baseline: iperf3 -Z, 1 stream | (link) |"),
            "a link test is timed by itself"
        );
        assert!(md.contains("† : median run under 0.5 s"), "{md}");
    }
}
