//! `blit bench --quick` end to end: the embedded daemon, the matrix, the baselines this machine
//! has, and every output file, checked with parsers written here (independent of the writers).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde::Deserialize;

const BLIT: &str = env!("CARGO_BIN_EXE_blit");

/// The `runs.csv` columns, in order. Changing them is a format change: update
/// docs/benchmarking.md with this list.
const COLUMNS: [&str; 33] = [
    "run",
    "tool",
    "transport",
    "direction",
    "dataset",
    "streams",
    "chunk_bytes",
    "repeat",
    "ok",
    "exit_code",
    "error",
    "seconds",
    "reported_seconds",
    "bytes",
    "files",
    "throughput_bytes_per_sec",
    "reported_transport",
    "reported_streams",
    "client_user_s",
    "client_sys_s",
    "client_cpu_s",
    "client_max_rss_kib",
    "server_cpu_s",
    "client_cycles",
    "client_instructions",
    "client_cache_misses",
    "client_context_switches",
    "client_task_clock_ns",
    "server_cycles",
    "server_instructions",
    "server_cache_misses",
    "server_context_switches",
    "server_task_clock_ns",
];

// ---- the runs.json schema: required fields and their types ----
// Deserializing checks that each field is present with its type; not every field is read
// afterwards, hence the dead_code allowances.

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Report {
    schema: String,
    blit_version: String,
    host: String,
    started_unix_s: u64,
    started_utc: String,
    duration_s: f64,
    config: serde_json::Map<String, serde_json::Value>,
    environment: Environment,
    datasets: Vec<Dataset>,
    skipped: Vec<Skip>,
    notes: Vec<String>,
    runs: Vec<Run>,
    cells: Vec<Cell>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Environment {
    cpus: usize,
    kernel: String,
    clock_ticks_per_s: u64,
    work_dir_fs: String,
    daemon: String,
    counters: Counters,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Counters {
    hardware_available: bool,
    hardware_reason: Option<String>,
    software_available: bool,
    kernel_included: bool,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Dataset {
    kind: String,
    files: u64,
    bytes: u64,
    reused: bool,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Skip {
    what: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Run {
    run: u32,
    tool: String,
    transport: String,
    direction: Option<String>,
    dataset: Option<String>,
    streams: Option<u32>,
    chunk_bytes: Option<u64>,
    repeat: u32,
    ok: bool,
    error: Option<String>,
    seconds: f64,
    reported_seconds: Option<f64>,
    bytes: u64,
    files: u64,
    throughput_bytes_per_sec: f64,
    reported_transport: Option<String>,
    client_cpu_s: f64,
    server_cpu_s: Option<f64>,
    client_cycles: Option<u64>,
    client_context_switches: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Cell {
    tool: String,
    label: String,
    runs: usize,
    ok_runs: usize,
    seconds: Option<Spread>,
    throughput_median_gbps: Option<f64>,
    client_cpu_s_per_gb: Option<f64>,
    server_cpu_s_per_gb: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

// ---- small independent parsers ----

/// RFC 4180 CSV: quoted fields may hold commas, quotes ("") and newlines.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quote");
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// Checks that `text` is well-formed XML (balanced, properly nested tags, quoted attributes,
/// one root) and returns the root element's name.
fn xml_root(text: &str) -> Result<String, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut root: Option<String> = None;
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let tail = &rest[open..];
        let skip_to = |end: &str| tail.find(end).map(|i| i + end.len()).ok_or("unterminated");
        if tail.starts_with("<?") {
            rest = &tail[skip_to("?>")?..];
            continue;
        }
        if tail.starts_with("<!--") {
            rest = &tail[skip_to("-->")?..];
            continue;
        }
        if tail.starts_with("<!") {
            rest = &tail[skip_to(">")?..];
            continue;
        }
        // The tag ends at the first '>' outside a quoted attribute value.
        let mut quote = None;
        let mut end = None;
        for (i, c) in tail.char_indices().skip(1) {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '<') => return Err("'<' inside a tag".into()),
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("unterminated tag")?;
        let inner = &tail[1..end];
        if let Some(name) = inner.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else {
            let self_closing = inner.ends_with('/');
            let name: String =
                inner.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
            if name.is_empty() {
                return Err("empty tag name".into());
            }
            if stack.is_empty() {
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                root = Some(name.clone());
            }
            if !self_closing {
                stack.push(name);
            }
        }
        rest = &tail[end + 1..];
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements {stack:?}"));
    }
    root.ok_or_else(|| "no element".to_string())
}

#[test]
fn the_test_parsers_work() {
    let rows = parse_csv("a,b\n1,\"x, \"\"y\"\"\nz\"\n");
    assert_eq!(rows, vec![vec!["a", "b"], vec!["1", "x, \"y\"\nz"]]);
    assert_eq!(xml_root("<?xml v?><svg a=\"1>2\"><g><x/></g></svg>").unwrap(), "svg");
    assert!(xml_root("<svg><g></svg>").is_err());
    assert!(xml_root("<svg></svg><svg></svg>").is_err());
    assert!(xml_root("<svg><g>").is_err());
}

fn bench(args: &[&str], history: &Path) -> Output {
    Command::new(BLIT)
        .arg("bench")
        .args(args)
        .env("BLIT_HISTORY", history)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn quick_bench_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let work = tmp.path().join("work");
    let history = tmp.path().join("history.jsonl");
    // The quick matrix with tiny datasets: this is a debug build under test, not a measurement
    // (the real --quick sizes are measured in docs/benchmarks.md).
    let run = bench(
        &[
            "--quick",
            "--large-size",
            "32M",
            "--small-files",
            "500",
            "--mixed-files",
            "100",
            "--mixed-max",
            "1M",
            "--out",
            out.to_str().unwrap(),
            "--dir",
            work.to_str().unwrap(),
        ],
        &history,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(matches!(run.status.code(), Some(0 | 23)), "stderr:\n{stderr}");

    // runs.json: the schema above, and what it says is consistent.
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(out.join("runs.json")).unwrap()).unwrap();
    // ib_write_bw on a loopback verbs device depends on the host's RoCE set-up (GID index):
    // its failure is the lab's to fix, not the harness's. Anything else must succeed.
    let failed: Vec<&Run> = report.runs.iter().filter(|r| !r.ok).collect();
    assert!(failed.iter().all(|r| r.tool == "ib_write_bw"), "failed runs: {failed:?}\n{stderr}");
    assert_eq!(run.status.code(), Some(if failed.is_empty() { 0 } else { 23 }));
    assert_eq!(report.schema, "blit-bench/1");
    assert!(!report.blit_version.is_empty() && !report.host.is_empty());
    assert!(report.started_unix_s > 0 && report.started_utc.ends_with('Z'));
    assert!(report.duration_s > 0.0);
    assert_eq!(report.config["quick"], serde_json::Value::Bool(true));
    assert!(report.environment.cpus >= 1 && report.environment.clock_ticks_per_s >= 1);
    assert!(!report.environment.kernel.is_empty() && !report.environment.work_dir_fs.is_empty());
    assert!(report.environment.daemon.starts_with("embedded 127.0.0.1:"));
    assert_eq!(report.datasets.len(), 3);
    assert!(report.datasets.iter().all(|d| d.files > 0 && d.bytes > 0 && !d.reused));
    let rdma_ran = !report.skipped.iter().any(|s| s.what == "transport rdma");
    // Quick matrix: local 2 chunks × 3 datasets + tcp (and rdma) 2 streams × 2 chunks × 3.
    let blit_runs: Vec<&Run> = report.runs.iter().filter(|r| r.tool == "blit").collect();
    assert_eq!(blit_runs.len(), 6 + 12 * if rdma_ran { 2 } else { 1 });
    for r in report.runs.iter().filter(|r| r.ok) {
        assert_eq!(r.repeat, 1);
        assert!(r.seconds > 0.0 && r.throughput_bytes_per_sec > 0.0 && r.bytes > 0, "{r:?}");
        assert!(r.client_cpu_s >= 0.0);
    }
    for r in &blit_runs {
        let ds = report.datasets.iter().find(|d| Some(&d.kind) == r.dataset.as_ref()).unwrap();
        assert_eq!((r.bytes, r.files), (ds.bytes, ds.files));
        assert!(r.chunk_bytes.is_some() && r.reported_seconds.is_some());
        assert_eq!(r.reported_transport.as_deref(), Some(r.transport.as_str()));
        if r.transport == "local" {
            assert!(r.streams.is_none() && r.direction.is_none() && r.server_cpu_s.is_none());
        } else {
            assert_eq!(r.direction.as_deref(), Some("push"));
            assert!(r.streams.is_some());
            assert!(r.server_cpu_s.is_some(), "the embedded daemon's CPU is measured");
        }
    }
    // Counters: never a zero standing in for "not measured".
    let c = &report.environment.counters;
    if !c.hardware_available {
        assert!(c.hardware_reason.is_some());
        assert!(report.runs.iter().all(|r| r.client_cycles.is_none()));
    }
    if !(c.software_available && c.kernel_included) {
        assert!(report.runs.iter().all(|r| r.client_context_switches.is_none()));
    }
    for cell in report.cells.iter().filter(|c| c.tool != "ib_write_bw") {
        assert_eq!((cell.runs, cell.ok_runs), (1, 1), "{}", cell.label);
        let s = cell.seconds.as_ref().unwrap();
        assert!(s.min <= s.median && s.median <= s.max);
        assert!(cell.throughput_median_gbps.unwrap() > 0.0);
        assert!(cell.client_cpu_s_per_gb.is_some());
        if cell.tool == "blit" && cell.label.contains("tcp") {
            assert!(cell.server_cpu_s_per_gb.is_some());
        }
    }
    // Every baseline either ran or is listed as skipped with a reason.
    for (name, tools) in [
        ("iperf3", &["iperf3 -Z", "iperf3"][..]),
        ("ib_write_bw", &["ib_write_bw"][..]),
        ("rsync", &["rsync daemon"][..]),
        ("cp", &["cp -a"][..]),
        ("tar", &["tar | tar"][..]),
    ] {
        let ran = report.runs.iter().any(|r| tools.contains(&r.tool.as_str()));
        let skip = report.skipped.iter().find(|s| s.what == format!("baseline {name}"));
        assert!(ran != skip.is_some(), "{name}: ran={ran}, skip={skip:?}");
        if let Some(s) = skip {
            assert!(!s.reason.trim().is_empty());
        }
    }
    if !Path::new("/sys/class/infiniband").exists() {
        let s = report.skipped.iter().find(|s| s.what == "baseline ib_write_bw").unwrap();
        assert!(s.reason.contains("verbs device"), "{}", s.reason);
    }
    assert!(report.notes.iter().all(|n| !n.is_empty()));

    // runs.csv: the expected columns, one row per run, every row complete.
    let rows = parse_csv(&std::fs::read_to_string(out.join("runs.csv")).unwrap());
    let header: Vec<&str> = rows[0].iter().map(String::as_str).collect();
    assert_eq!(header, COLUMNS);
    assert_eq!(rows.len() - 1, report.runs.len());
    for (i, row) in rows[1..].iter().enumerate() {
        assert_eq!(row.len(), header.len(), "row {i}");
        assert_eq!(row[0], (i + 1).to_string());
        assert_eq!(row[8], report.runs[i].ok.to_string());
        assert_eq!(row[1], report.runs[i].tool);
        assert!(row[11].parse::<f64>().unwrap() >= 0.0);
    }

    // summary.md: the table (also on stdout), and the skipped baselines with reasons.
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), md);
    assert!(md.contains(
        "| cell | dataset | ok/runs | median s | min s | max s | Gb/s | client CPU s/GB | server CPU s/GB |"
    ));
    // Runs of these tiny datasets are short: marked (†) and explained, never silently mixed in.
    let short = report.runs.iter().any(|r| r.dataset.is_some() && r.ok && r.seconds < 0.5);
    assert_eq!(md.contains("† : median run under 0.5 s"), short, "{md}");
    let plain = md.replace(" †", "");
    assert!(plain.contains("| blit tcp push, 4 streams, chunk 1M | large | 1/1 |"), "{md}");
    assert!(plain.contains("| blit local, chunk 4M | mixed | 1/1 |"), "{md}");
    for s in &report.skipped {
        assert!(md.contains(&format!("- {}: {}", s.what, s.reason)), "{md}");
    }
    if !c.hardware_available {
        assert!(md.contains("hardware counters unavailable: "), "{md}");
    }

    // Plots: SVG, well-formed, <svg> root; streams and chunk plots for tcp.
    let plots: Vec<_> = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        .collect();
    assert!(plots.iter().any(|p| p.ends_with("streams-tcp-push-large.svg")), "{plots:?}");
    assert!(plots.iter().any(|p| p.ends_with("chunk-local-small.svg")), "{plots:?}");
    for p in &plots {
        let text = std::fs::read_to_string(p).unwrap();
        assert_eq!(xml_root(&text).unwrap(), "svg", "{}", p.display());
    }

    // The work directory is cleaned up (no --keep).
    assert!(!work.exists(), "work dir left behind");

    // History: one record per blit cell, and --history summarizes them.
    let lines = std::fs::read_to_string(&history).unwrap();
    let cells = report.cells.iter().filter(|c| c.tool == "blit").count();
    assert_eq!(lines.lines().count(), cells);
    let h = bench(&["--history"], &history);
    assert!(h.status.success());
    let text = String::from_utf8_lossy(&h.stdout);
    assert!(text.contains("| bench | tcp push | large | 4 |"), "{text}");
    assert!(text.contains("| bench | local | small | 2 |"), "{text}");
}

#[test]
fn bad_matrix_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let h = tmp.path().join("h.jsonl");
    let out = bench(&["--quick", "--chunk-sizes", "1000", "--dir", "/nonexistent/x"], &h);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunk-sizes"));
    let out = bench(&["--transports", "carrier-pigeon"], &h);
    assert_eq!(out.status.code(), Some(2));
    assert!(!h.exists());
}

#[test]
fn empty_history_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bench(&["--history"], &tmp.path().join("none.jsonl"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("No runs recorded yet"));
}

/// `blit bench --mem` (issue 16, item 7): blit runs move generated data to a verifying sink, no
/// dataset is written, and only the link's tools are compared; other datasets or file baselines
/// are usage errors.
#[test]
fn memory_bench_generates_and_discards() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let work = tmp.path().join("work");
    let history = tmp.path().join("history.jsonl");
    let run = bench(
        &[
            "--quick",
            "--mem",
            "--transports",
            "local,tcp",
            "--direction",
            "both",
            "--baselines",
            "iperf3",
            "--large-size",
            "40M",
            "--out",
            out.to_str().unwrap(),
            "--dir",
            work.to_str().unwrap(),
        ],
        &history,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "stderr:\n{stderr}");
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(out.join("runs.json")).unwrap()).unwrap();
    let blit: Vec<&Run> = report.runs.iter().filter(|r| r.tool == "blit").collect();
    // Chunks 1M and 4M × (local, and tcp push and pull × streams 1 and 4).
    assert_eq!(blit.len(), 10, "{blit:?}");
    assert!(blit.iter().all(|r| r.ok && r.bytes == 40 << 20 && r.files == 1), "{blit:?}");
    assert!(report.runs.iter().any(|r| r.tool.starts_with("iperf3")), "no iperf3 baseline");
    // Nothing was generated on disk: the work dir holds no dataset.
    assert!(!work.join("datasets").exists(), "a dataset was written");
    for bad in [&["--mem", "--datasets", "small"][..], &["--mem", "--baselines", "rsync"][..]] {
        let out = bench(
            &[&["--quick"][..], bad, &["--dir", work.to_str().unwrap()][..]].concat(),
            &history,
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
