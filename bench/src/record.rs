//! What a bench run produces: one [`RunRecord`] per measured command, one [`CellSummary`] per
//! cell (median/min/max over repeats), and the list of what was skipped and why.
//!
//! Pure data and aggregation; writing files is `report`'s job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::counters::CounterValues;
use crate::stats::{Spread, median, per_gb};

/// One measured command. Flat (no nesting) so the same struct is a CSV row and a JSON object.
/// `None` means "not measured", never zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Sequence number within this bench run, from 1.
    pub run: u32,
    /// "blit" or a baseline ("cp -a", "tar | tar", "rsync daemon", "iperf3 -Z", "iperf3",
    /// "ib_write_bw").
    pub tool: String,
    /// "local", "tcp" or "rdma" (for baselines: the kind of path they measure).
    pub transport: String,
    pub direction: Option<String>,
    /// Dataset name; `None` for link baselines (iperf3, ib_write_bw), which move no files.
    pub dataset: Option<String>,
    pub streams: Option<u32>,
    pub chunk_bytes: Option<u64>,
    /// Which repeat (1-based).
    pub repeat: u32,
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// Wall-clock seconds from releasing the command to reaping it.
    pub seconds: f64,
    /// Seconds the tool reported itself (`blit xfer --json`, iperf3's interval sum).
    pub reported_seconds: Option<f64>,
    pub bytes: u64,
    pub files: u64,
    pub throughput_bytes_per_sec: f64,
    /// What `blit xfer --json` said it used (catches a silent fallback).
    pub reported_transport: Option<String>,
    pub reported_streams: Option<u32>,
    pub client_user_s: f64,
    pub client_sys_s: f64,
    pub client_cpu_s: f64,
    pub client_max_rss_kib: u64,
    /// CPU seconds of the server side over this run (embedded daemon / local server only).
    pub server_cpu_s: Option<f64>,
    pub client_cycles: Option<u64>,
    pub client_instructions: Option<u64>,
    pub client_cache_misses: Option<u64>,
    pub client_context_switches: Option<u64>,
    pub client_task_clock_ns: Option<u64>,
    pub server_cycles: Option<u64>,
    pub server_instructions: Option<u64>,
    pub server_cache_misses: Option<u64>,
    pub server_context_switches: Option<u64>,
    pub server_task_clock_ns: Option<u64>,
}

impl RunRecord {
    /// A record with the identifying fields set and every measurement empty.
    pub fn new(run: u32, tool: &str, transport: &str, repeat: u32) -> RunRecord {
        RunRecord {
            run,
            tool: tool.to_string(),
            transport: transport.to_string(),
            direction: None,
            dataset: None,
            streams: None,
            chunk_bytes: None,
            repeat,
            ok: false,
            exit_code: None,
            error: None,
            seconds: 0.0,
            reported_seconds: None,
            bytes: 0,
            files: 0,
            throughput_bytes_per_sec: 0.0,
            reported_transport: None,
            reported_streams: None,
            client_user_s: 0.0,
            client_sys_s: 0.0,
            client_cpu_s: 0.0,
            client_max_rss_kib: 0,
            server_cpu_s: None,
            client_cycles: None,
            client_instructions: None,
            client_cache_misses: None,
            client_context_switches: None,
            client_task_clock_ns: None,
            server_cycles: None,
            server_instructions: None,
            server_cache_misses: None,
            server_context_switches: None,
            server_task_clock_ns: None,
        }
    }

    pub fn set_client_counters(&mut self, c: &CounterValues) {
        self.client_cycles = c.cycles;
        self.client_instructions = c.instructions;
        self.client_cache_misses = c.cache_misses;
        self.client_context_switches = c.context_switches;
        self.client_task_clock_ns = c.task_clock_ns;
    }

    pub fn set_server_counters(&mut self, c: &CounterValues) {
        self.server_cycles = c.cycles;
        self.server_instructions = c.instructions;
        self.server_cache_misses = c.cache_misses;
        self.server_context_switches = c.context_switches;
        self.server_task_clock_ns = c.task_clock_ns;
    }

    /// The key runs of one cell share.
    pub fn cell_key(&self) -> CellKey {
        CellKey {
            tool: self.tool.clone(),
            transport: self.transport.clone(),
            direction: self.direction.clone(),
            dataset: self.dataset.clone(),
            streams: self.streams,
            chunk_bytes: self.chunk_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CellKey {
    pub tool: String,
    pub transport: String,
    pub direction: Option<String>,
    pub dataset: Option<String>,
    pub streams: Option<u32>,
    pub chunk_bytes: Option<u64>,
}

impl CellKey {
    pub fn is_blit(&self) -> bool {
        self.tool == "blit"
    }

    /// `tcp push` / `local`.
    pub fn mode(&self) -> String {
        match &self.direction {
            Some(d) => format!("{} {d}", self.transport),
            None => self.transport.clone(),
        }
    }

    /// Human label of the cell: `blit tcp push, 4 streams, chunk 1M` or
    /// `baseline: iperf3 -Z, 4 streams`.
    pub fn label(&self) -> String {
        let mut s = if self.is_blit() {
            format!("blit {}", self.mode())
        } else {
            format!("baseline: {}", self.tool)
        };
        if !self.is_blit()
            && let Some(d) = &self.direction
        {
            s.push_str(&format!(" {d}"));
        }
        if let Some(n) = self.streams {
            s.push_str(&format!(", {n} stream{}", if n == 1 { "" } else { "s" }));
        }
        if let Some(c) = self.chunk_bytes {
            s.push_str(&format!(", chunk {}", crate::units::size_label(c)));
        }
        s
    }
}

/// Median/min/max over one cell's repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    #[serde(flatten)]
    pub key: CellKey,
    pub label: String,
    pub runs: usize,
    pub ok_runs: usize,
    /// Wall seconds over successful runs.
    pub seconds: Option<Spread>,
    pub bytes: u64,
    pub files: u64,
    pub throughput_median_bytes_per_sec: Option<f64>,
    pub throughput_median_gbps: Option<f64>,
    /// Median over runs of CPU seconds per 10^9 bytes moved.
    pub client_cpu_s_per_gb: Option<f64>,
    pub server_cpu_s_per_gb: Option<f64>,
    pub client_context_switches_per_gb: Option<f64>,
    pub server_context_switches_per_gb: Option<f64>,
    pub client_cycles_per_gb: Option<f64>,
    pub server_cycles_per_gb: Option<f64>,
    pub client_instructions_per_gb: Option<f64>,
    pub server_instructions_per_gb: Option<f64>,
    pub client_cache_misses_per_gb: Option<f64>,
    pub server_cache_misses_per_gb: Option<f64>,
    /// Distinct failure messages (at most 3).
    pub errors: Vec<String>,
}

/// Something that was not measured, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    /// "transport rdma", "baseline ib_write_bw", …
    pub what: String,
    pub reason: String,
}

fn median_per_gb<F: Fn(&RunRecord) -> Option<f64>>(runs: &[&RunRecord], f: F) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(|r| per_gb(f(r)?, r.bytes)).collect();
    median(&v)
}

/// Summarizes runs per cell, in the order cells first appear.
pub fn summarize(runs: &[RunRecord]) -> Vec<CellSummary> {
    let mut order = Vec::new();
    let mut groups: BTreeMap<CellKey, Vec<&RunRecord>> = BTreeMap::new();
    for r in runs {
        let k = r.cell_key();
        let g = groups.entry(k.clone()).or_default();
        if g.is_empty() {
            order.push(k);
        }
        g.push(r);
    }
    let mut out = Vec::new();
    for key in order {
        let Some(all) = groups.get(&key) else { continue };
        let ok: Vec<&RunRecord> = all.iter().copied().filter(|r| r.ok).collect();
        let secs: Vec<f64> = ok.iter().map(|r| r.seconds).collect();
        let tput: Vec<f64> = ok.iter().map(|r| r.throughput_bytes_per_sec).collect();
        let tput_median = median(&tput);
        let c =
            |f: fn(&RunRecord) -> Option<u64>| median_per_gb(&ok, move |r| f(r).map(|v| v as f64));
        let mut errors: Vec<String> = Vec::new();
        for e in all.iter().filter_map(|r| r.error.as_ref()) {
            if errors.len() < 3 && !errors.contains(e) {
                errors.push(e.clone());
            }
        }
        let first = ok.first().or(all.first());
        out.push(CellSummary {
            label: key.label(),
            runs: all.len(),
            ok_runs: ok.len(),
            seconds: Spread::of(&secs),
            bytes: first.map(|r| r.bytes).unwrap_or(0),
            files: first.map(|r| r.files).unwrap_or(0),
            throughput_median_bytes_per_sec: tput_median,
            throughput_median_gbps: tput_median.map(crate::units::gbps),
            client_cpu_s_per_gb: median_per_gb(&ok, |r| Some(r.client_cpu_s)),
            server_cpu_s_per_gb: median_per_gb(&ok, |r| r.server_cpu_s),
            client_context_switches_per_gb: c(|r| r.client_context_switches),
            server_context_switches_per_gb: c(|r| r.server_context_switches),
            client_cycles_per_gb: c(|r| r.client_cycles),
            server_cycles_per_gb: c(|r| r.server_cycles),
            client_instructions_per_gb: c(|r| r.client_instructions),
            server_instructions_per_gb: c(|r| r.server_instructions),
            client_cache_misses_per_gb: c(|r| r.client_cache_misses),
            server_cache_misses_per_gb: c(|r| r.server_cache_misses),
            errors,
            key,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u32, secs: f64, ok: bool) -> RunRecord {
        let mut r = RunRecord::new(n, "blit", "tcp", n);
        r.direction = Some("push".into());
        r.dataset = Some("large".into());
        r.streams = Some(4);
        r.chunk_bytes = Some(1 << 20);
        r.ok = ok;
        r.seconds = secs;
        r.bytes = 2_000_000_000;
        r.files = 1;
        r.throughput_bytes_per_sec = r.bytes as f64 / secs;
        r.client_cpu_s = secs / 2.0;
        r.server_cpu_s = Some(secs);
        r.client_context_switches = Some(1000);
        if !ok {
            r.error = Some("exit 1: boom".into());
        }
        r
    }

    #[test]
    fn cells_take_median_min_max_of_successful_runs() {
        let runs =
            vec![run(1, 2.0, true), run(2, 4.0, true), run(3, 1.0, false), run(4, 3.0, true)];
        let s = summarize(&runs);
        assert_eq!(s.len(), 1);
        let c = &s[0];
        assert_eq!((c.runs, c.ok_runs), (4, 3));
        let sp = c.seconds.unwrap();
        assert_eq!((sp.median, sp.min, sp.max), (3.0, 2.0, 4.0));
        assert_eq!(c.throughput_median_bytes_per_sec, Some(2e9 / 3.0));
        // client CPU = secs/2 over 2 GB -> median(1,2,1.5)/2 = 0.75 s/GB.
        assert_eq!(c.client_cpu_s_per_gb, Some(0.75));
        assert_eq!(c.server_cpu_s_per_gb, Some(1.5));
        assert_eq!(c.client_context_switches_per_gb, Some(500.0));
        assert_eq!(c.client_cycles_per_gb, None, "not measured stays None");
        assert_eq!(c.errors, vec!["exit 1: boom".to_string()]);
        assert_eq!(c.label, "blit tcp push, 4 streams, chunk 1M");
    }

    #[test]
    fn a_cell_with_only_failures_has_no_numbers() {
        let s = summarize(&[run(1, 1.0, false)]);
        assert_eq!(s[0].ok_runs, 0);
        assert!(s[0].seconds.is_none() && s[0].throughput_median_gbps.is_none());
    }

    #[test]
    fn different_cells_stay_apart_in_first_seen_order() {
        let mut b = run(2, 1.0, true);
        b.streams = Some(8);
        let mut base = RunRecord::new(3, "iperf3 -Z", "tcp", 1);
        base.streams = Some(1);
        let s = summarize(&[run(1, 1.0, true), b, base]);
        let labels: Vec<&str> = s.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "blit tcp push, 4 streams, chunk 1M",
                "blit tcp push, 8 streams, chunk 1M",
                "baseline: iperf3 -Z, 1 stream"
            ]
        );
    }
}
