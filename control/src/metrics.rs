//! The daemon's metrics (`blit daemon --metrics ADDR:PORT`): what its sessions moved, how many
//! ran and failed, and what the data planes counted, rendered as Prometheus text, as the JSON
//! the status page polls, and as that page.
//!
//! This module owns the bookkeeping; it does not serve HTTP ([`crate::metrics_http`]) and adds
//! nothing to the data path: a session's bytes and files are the engine's own progress atomics
//! (`Progress`), read when someone scrapes, and a data plane's counters (TCP retransmits, RDMA
//! work requests) are read from the plane through a probe at scrape time. Session start, data
//! plane set-up and session end take a mutex once each. The clock is passed in (`now`).
//!
//! Label sets are fixed (direction × transport, error kinds), so a client cannot grow the
//! number of series; the strings a client chooses (its path) appear only on the status page and
//! in its JSON, escaped there.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use blitx_storage::report::Progress;

use crate::convert::{Direction, ErrorCode};
use crate::dataplane::{Half, PlaneCounters, Probe};
use crate::negotiate::Rejection;

/// Throughput samples kept (one a second): the status page's plot spans two minutes.
pub const HISTORY_MAX: usize = 120;
/// Samples the throughput gauge averages over.
pub const THROUGHPUT_WINDOW: usize = 5;
/// RDMA port counters read from sysfs at most (a device has a few dozen).
const PORT_COUNTERS_MAX: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section only adds to counters or swaps a map entry: nothing is left torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A session's direction as a label (the daemon's view: a push writes here).
fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Push => "push",
        Direction::Pull => "pull",
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Push, Direction::Pull];

fn direction_index(d: Direction) -> usize {
    match d {
        Direction::Push => 0,
        Direction::Pull => 1,
    }
}

/// The data plane a session used; `None` for sessions that ended before they had one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Rdma,
    None,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Tcp, Transport::Rdma, Transport::None];

    fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
            Transport::None => "none",
        }
    }

    fn index(self) -> usize {
        match self {
            Transport::Tcp => 0,
            Transport::Rdma => 1,
            Transport::None => 2,
        }
    }

    fn of(name: &str) -> Transport {
        match name {
            blitx_transport_tcp::TRANSPORT_NAME => Transport::Tcp,
            "rdma" => Transport::Rdma,
            _ => Transport::None,
        }
    }
}

/// What a failed or refused session counts as: its error code, or why its stream was refused
/// before it became a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Code(ErrorCode),
    /// The stream sent no Open within --open-timeout.
    NoOpen,
    /// The stream ended before its Open.
    EndedBeforeOpen,
}

impl ErrorKind {
    const COUNT: usize = 13;

    const ALL: [ErrorKind; Self::COUNT] = [
        ErrorKind::Code(ErrorCode::VersionMismatch),
        ErrorKind::Code(ErrorCode::BadPath),
        ErrorKind::Code(ErrorCode::ReadOnly),
        ErrorKind::Code(ErrorCode::TransportUnavailable),
        ErrorKind::Code(ErrorCode::BadRequest),
        ErrorKind::Code(ErrorCode::Internal),
        ErrorKind::Code(ErrorCode::ResourceExhausted),
        ErrorKind::Code(ErrorCode::TargetLocked),
        ErrorKind::Code(ErrorCode::IdleTimeout),
        ErrorKind::Code(ErrorCode::ProtocolViolation),
        ErrorKind::Code(ErrorCode::Stalled),
        ErrorKind::NoOpen,
        ErrorKind::EndedBeforeOpen,
    ];

    /// The label value and the index of its counter. A new `ErrorCode` fails to compile here
    /// until it has a label.
    fn describe(self) -> (&'static str, usize) {
        match self {
            ErrorKind::Code(c) => match c {
                ErrorCode::VersionMismatch => ("version_mismatch", 0),
                ErrorCode::BadPath => ("bad_path", 1),
                ErrorCode::ReadOnly => ("read_only", 2),
                ErrorCode::TransportUnavailable => ("transport_unavailable", 3),
                ErrorCode::BadRequest => ("bad_request", 4),
                ErrorCode::Internal => ("internal", 5),
                ErrorCode::ResourceExhausted => ("resource_exhausted", 6),
                ErrorCode::TargetLocked => ("target_locked", 7),
                ErrorCode::IdleTimeout => ("idle_timeout", 8),
                ErrorCode::ProtocolViolation => ("protocol_violation", 9),
                ErrorCode::Stalled => ("stalled", 10),
            },
            ErrorKind::NoOpen => ("no_open", 11),
            ErrorKind::EndedBeforeOpen => ("ended_before_open", 12),
        }
    }

    /// What a refused stream counts as.
    pub fn of_rejection(r: &Rejection) -> ErrorKind {
        match r {
            Rejection::NoOpen { .. } => ErrorKind::NoOpen,
            Rejection::EndedBeforeOpen => ErrorKind::EndedBeforeOpen,
            Rejection::Busy { .. } => ErrorKind::Code(ErrorCode::ResourceExhausted),
        }
    }
}

/// Sums of ended sessions, per direction × transport.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sessions: u64,
    bytes: u64,
    files: u64,
}

#[derive(Debug, Default)]
struct Folded {
    by: [[Tally; 3]; 2],
    /// Per direction.
    tcp_retransmits: [u64; 2],
    /// TCP sessions whose `TCP_INFO` could not be read at their end.
    tcp_unreadable: u64,
    rdma_work_requests: [u64; 2],
    rdma_payload_bytes: [u64; 2],
    rdma_send_waits: [u64; 2],
    /// Files that failed in sessions that otherwise ended well, per direction.
    file_errors: [u64; 2],
}

impl Folded {
    fn add_plane(&mut self, d: usize, t: Transport, c: Option<PlaneCounters>) {
        match (t, c) {
            (Transport::Tcp, Some(PlaneCounters { tcp_retransmits: Some(n), .. })) => {
                self.tcp_retransmits[d] += n;
            }
            (Transport::Tcp, _) => self.tcp_unreadable += 1,
            (Transport::Rdma, Some(c)) => {
                self.rdma_work_requests[d] += c.rdma_work_requests;
                self.rdma_payload_bytes[d] += c.rdma_payload_bytes;
                self.rdma_send_waits[d] += c.rdma_send_waits;
            }
            _ => {}
        }
    }
}

struct LiveState {
    transport: Transport,
    /// The data plane's counters, while it lives.
    probe: Option<Probe>,
    /// Its last counters, taken when the transfer ended (before the plane is dropped).
    last: Option<PlaneCounters>,
    /// Counted in `sessions_total` (once its transport is known, or at its end).
    counted: bool,
    /// Bytes at the previous sample, and the rate since.
    sampled_bytes: u64,
    rate_bytes_per_s: f64,
}

struct Live {
    id: u64,
    peer: String,
    direction: Direction,
    path: String,
    started: Instant,
    progress: Arc<Progress>,
    state: Mutex<LiveState>,
}

/// One throughput sample: seconds since the daemon started and bytes/s per direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_s: f64,
    pub bytes_per_s: [f64; 2],
}

#[derive(Debug, Default)]
struct History {
    samples: VecDeque<Sample>,
    /// Bytes per direction at the previous tick.
    last: Option<(Instant, [u64; 2])>,
}

/// The daemon's metrics registry (one per daemon, shared by its sessions and the HTTP server).
pub struct Metrics {
    started: Instant,
    live: Mutex<BTreeMap<u64, Arc<Live>>>,
    folded: Mutex<Folded>,
    errors: [AtomicU64; ErrorKind::COUNT],
    history: Mutex<History>,
    /// The RDMA device this daemon serves, whose port counters (retries) are exported.
    rdma_device: Option<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("rdma_device", &self.rdma_device).finish_non_exhaustive()
    }
}

/// A session's entry in the registry; it leaves the registry (its sums folded into the totals)
/// when dropped.
pub struct SessionMetrics {
    metrics: Arc<Metrics>,
    live: Arc<Live>,
}

impl std::fmt::Debug for SessionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMetrics").field("id", &self.live.id).finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(now: Instant, rdma_device: Option<String>) -> Arc<Metrics> {
        Arc::new(Metrics {
            started: now,
            live: Mutex::new(BTreeMap::new()),
            folded: Mutex::new(Folded::default()),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            history: Mutex::new(History::default()),
            rdma_device,
        })
    }

    /// Counts a failed or refused session.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind.describe().1].fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a session that sent its Open; `progress` is the engine's own.
    pub fn open_session(
        self: &Arc<Self>,
        now: Instant,
        id: u64,
        peer: &str,
        direction: Direction,
        path: &str,
        progress: Arc<Progress>,
    ) -> SessionMetrics {
        let live = Arc::new(Live {
            id,
            peer: peer.to_owned(),
            direction,
            path: path.to_owned(),
            started: now,
            progress,
            state: Mutex::new(LiveState {
                transport: Transport::None,
                probe: None,
                last: None,
                counted: false,
                sampled_bytes: 0,
                rate_bytes_per_s: 0.0,
            }),
        });
        lock(&self.live).insert(id, Arc::clone(&live));
        SessionMetrics { metrics: Arc::clone(self), live }
    }

    /// Bytes and files per direction × transport: ended sessions plus the live ones now. Takes
    /// `live` before `folded`, as a session's end does, so a session is never counted twice or
    /// not at all.
    fn sums(&self) -> ([[Tally; 3]; 2], Vec<Arc<Live>>) {
        let live = lock(&self.live);
        let mut by = lock(&self.folded).by;
        let sessions: Vec<Arc<Live>> = live.values().cloned().collect();
        for s in &sessions {
            let t = lock(&s.state).transport;
            let cell = &mut by[direction_index(s.direction)][t.index()];
            cell.bytes += Progress::read(&s.progress.bytes_done);
            cell.files += Progress::read(&s.progress.files_done);
        }
        (by, sessions)
    }

    /// Takes a throughput sample (called once a second while metrics are served).
    pub fn tick(&self, now: Instant) {
        let (by, sessions) = self.sums();
        let bytes: [u64; 2] = std::array::from_fn(|d| by[d].iter().map(|t| t.bytes).sum());
        let mut h = lock(&self.history);
        let Some((then, before)) = h.last.replace((now, bytes)) else { return };
        let dt_s = now.saturating_duration_since(then).as_secs_f64();
        if dt_s <= 0.0 {
            return;
        }
        let rate: [f64; 2] =
            std::array::from_fn(|d| bytes[d].saturating_sub(before[d]) as f64 / dt_s);
        if h.samples.len() == HISTORY_MAX {
            h.samples.pop_front();
        }
        let at_s = now.saturating_duration_since(self.started).as_secs_f64();
        h.samples.push_back(Sample { at_s, bytes_per_s: rate });
        drop(h);
        for s in sessions {
            let b = Progress::read(&s.progress.bytes_done);
            let mut st = lock(&s.state);
            st.rate_bytes_per_s = b.saturating_sub(st.sampled_bytes) as f64 / dt_s;
            st.sampled_bytes = b;
        }
    }

    /// The throughput samples, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        lock(&self.history).samples.iter().copied().collect()
    }

    /// Bytes/s per direction averaged over the last [`THROUGHPUT_WINDOW`] samples.
    fn throughput(&self) -> [f64; 2] {
        let h = lock(&self.history);
        let n = h.samples.len().min(THROUGHPUT_WINDOW);
        if n == 0 {
            return [0.0; 2];
        }
        let recent = h.samples.iter().rev().take(n);
        let sum = recent.fold([0.0; 2], |a, s| [a[0] + s.bytes_per_s[0], a[1] + s.bytes_per_s[1]]);
        [sum[0] / n as f64, sum[1] / n as f64]
    }

    /// The live sessions, oldest first, as the status page shows them.
    pub fn sessions(&self, now: Instant) -> Vec<SessionView> {
        let live: Vec<Arc<Live>> = lock(&self.live).values().cloned().collect();
        live.iter()
            .map(|s| {
                let st = lock(&s.state);
                SessionView {
                    id: s.id,
                    peer: s.peer.clone(),
                    direction: direction_label(s.direction),
                    transport: st.transport.label(),
                    path: s.path.clone(),
                    bytes: Progress::read(&s.progress.bytes_done),
                    files: Progress::read(&s.progress.files_done),
                    rate_bytes_per_s: st.rate_bytes_per_s,
                    age_s: now.saturating_duration_since(s.started).as_secs_f64(),
                }
            })
            .collect()
    }

    /// The Prometheus text exposition (format 0.0.4) of everything counted so far.
    pub fn render_prometheus(&self, now: Instant) -> String {
        let mut out = String::with_capacity(8 << 10);
        let (by, sessions) = self.sums();
        let mut folded_plane = {
            let f = lock(&self.folded);
            Folded {
                by: [[Tally::default(); 3]; 2],
                tcp_retransmits: f.tcp_retransmits,
                tcp_unreadable: f.tcp_unreadable,
                rdma_work_requests: f.rdma_work_requests,
                rdma_payload_bytes: f.rdma_payload_bytes,
                rdma_send_waits: f.rdma_send_waits,
                file_errors: f.file_errors,
            }
        };
        let mut active = [[0u64; 3]; 2];
        for s in &sessions {
            let st = lock(&s.state);
            let d = direction_index(s.direction);
            active[d][st.transport.index()] += 1;
            let counters = st.last.or_else(|| st.probe.as_ref().and_then(|p| p()));
            // A live TCP session whose TCP_INFO is unreadable now is counted at its end.
            if st.transport != Transport::Tcp
                || counters.is_some_and(|c| c.tcp_retransmits.is_some())
            {
                folded_plane.add_plane(d, st.transport, counters);
            }
        }
        let labels = |d: usize, t: usize| {
            format!(
                "direction=\"{}\",transport=\"{}\"",
                direction_label(DIRECTIONS[d]),
                Transport::ALL[t].label()
            )
        };
        let dt = |f: &dyn Fn(usize, usize) -> String, out: &mut String, name: &str| {
            for d in 0..2 {
                for t in 0..3 {
                    let _ = writeln!(out, "{name}{{{}}} {}", labels(d, t), f(d, t));
                }
            }
        };
        let _ =
            writeln!(out, "# HELP blit_build_info The daemon's version (the value is always 1).");
        let _ = writeln!(out, "# TYPE blit_build_info gauge");
        let _ = writeln!(
            out,
            "blit_build_info{{version=\"{}\"}} 1",
            escape_label(crate::BUILD_VERSION)
        );
        header(&mut out, "blit_uptime_seconds", "gauge", "Seconds since the daemon started.");
        let _ = writeln!(
            out,
            "blit_uptime_seconds {:.3}",
            now.saturating_duration_since(self.started).as_secs_f64()
        );
        header(
            &mut out,
            "blit_sessions_active",
            "gauge",
            "Sessions running now (transport \"none\": not yet connected).",
        );
        dt(&|d, t| active[d][t].to_string(), &mut out, "blit_sessions_active");
        header(
            &mut out,
            "blit_sessions_total",
            "counter",
            "Sessions that connected a data plane, by transport; those that ended before one count as \"none\".",
        );
        dt(&|d, t| by[d][t].sessions.to_string(), &mut out, "blit_sessions_total");
        header(
            &mut out,
            "blit_transferred_bytes_total",
            "counter",
            "File bytes moved by sessions (push: written here; pull: sent from here).",
        );
        dt(&|d, t| by[d][t].bytes.to_string(), &mut out, "blit_transferred_bytes_total");
        header(&mut out, "blit_transferred_files_total", "counter", "Files moved by sessions.");
        dt(&|d, t| by[d][t].files.to_string(), &mut out, "blit_transferred_files_total");
        header(
            &mut out,
            "blit_session_errors_total",
            "counter",
            "Sessions that failed or were refused, by error kind.",
        );
        for k in ErrorKind::ALL {
            let (label, i) = k.describe();
            let _ = writeln!(
                out,
                "blit_session_errors_total{{kind=\"{label}\"}} {}",
                self.errors[i].load(Ordering::Relaxed)
            );
        }
        per_direction(
            &mut out,
            "blit_file_errors_total",
            "counter",
            "Files that failed (each reported to the client) in sessions that completed.",
            folded_plane.file_errors.map(|n| n.to_string()),
        );
        let rate = self.throughput();
        let f = &folded_plane;
        per_direction(
            &mut out,
            "blit_throughput_bytes_per_second",
            "gauge",
            "File bytes per second over the last few seconds.",
            rate.map(|r| format!("{r:.1}")),
        );
        per_direction(
            &mut out,
            "blit_tcp_retransmits_total",
            "counter",
            "TCP segments retransmitted on sessions' data streams (TCP_INFO tcpi_total_retrans, where readable).",
            f.tcp_retransmits.map(|n| n.to_string()),
        );
        header(
            &mut out,
            "blit_tcp_info_unreadable_sessions_total",
            "counter",
            "Ended TCP sessions whose TCP_INFO could not be read (their retransmits are not in blit_tcp_retransmits_total).",
        );
        let _ = writeln!(out, "blit_tcp_info_unreadable_sessions_total {}", f.tcp_unreadable);
        per_direction(
            &mut out,
            "blit_rdma_work_requests_total",
            "counter",
            "RDMA work requests posted by sessions (WRITE_WITH_IMM, SEND, RECV).",
            f.rdma_work_requests.map(|n| n.to_string()),
        );
        per_direction(
            &mut out,
            "blit_rdma_payload_bytes_total",
            "counter",
            "Payload bytes RDMA sessions carried.",
            f.rdma_payload_bytes.map(|n| n.to_string()),
        );
        per_direction(
            &mut out,
            "blit_rdma_work_requests_per_mebibyte",
            "gauge",
            "RDMA work requests per MiB of payload, over all sessions so far (0 before any).",
            std::array::from_fn(|d| {
                let mib = f.rdma_payload_bytes[d] as f64 / f64::from(1 << 20);
                let per = if mib > 0.0 { f.rdma_work_requests[d] as f64 / mib } else { 0.0 };
                format!("{per:.3}")
            }),
        );
        per_direction(
            &mut out,
            "blit_rdma_send_waits_total",
            "counter",
            "Times an RDMA sender waited for a credit or a send-queue entry.",
            f.rdma_send_waits.map(|n| n.to_string()),
        );
        if let Some(device) = &self.rdma_device {
            let counters = port_retry_counters(device);
            header(
                &mut out,
                "blit_rdma_port_retry_events_total",
                "counter",
                "The RDMA device's own retry and sequence-error counters (sysfs hw_counters; device-wide, every user of the port).",
            );
            for (port, name, value) in counters {
                let _ = writeln!(
                    out,
                    "blit_rdma_port_retry_events_total{{device=\"{}\",port=\"{}\",counter=\"{}\"}} {value}",
                    escape_label(device),
                    escape_label(&port),
                    escape_label(&name)
                );
            }
        }
        process_metrics(&mut out);
        out
    }
}

/// One series per direction.
fn per_direction(out: &mut String, name: &str, kind: &str, help: &str, values: [String; 2]) {
    header(out, name, kind, help);
    for (d, v) in DIRECTIONS.iter().zip(values) {
        let _ = writeln!(out, "{name}{{direction=\"{}\"}} {v}", direction_label(*d));
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the exposition format wants it: backslash, double quote and line feed
/// escaped.
pub fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The retry-like hardware counters of `device`'s ports (rxe: `retry_exceeded_err`,
/// `completer_retry_err`, `duplicate_request`, `rcvd_seq_err`...; mlx5: `local_ack_timeout_err`,
/// `packet_seq_err`, `rnr_nak_retry_err`...). Empty where sysfs has none.
fn port_retry_counters(device: &str) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    // The device name came from the verbs library, not a client; refuse anything path-like.
    if device.is_empty() || device.contains('/') || device.starts_with('.') {
        return out;
    }
    let ports = format!("/sys/class/infiniband/{device}/ports");
    let Ok(ports) = std::fs::read_dir(ports) else { return out };
    let mut ports: Vec<_> = ports.flatten().collect();
    ports.sort_by_key(|e| e.file_name());
    for port in ports {
        let Ok(entries) = std::fs::read_dir(port.path().join("hw_counters")) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let retry_like = ["retry", "retries", "seq", "duplicate", "ack_timeout"]
                .iter()
                .any(|w| name.contains(w));
            if !retry_like || out.len() >= PORT_COUNTERS_MAX {
                continue;
            }
            if let Some(v) =
                std::fs::read_to_string(e.path()).ok().and_then(|t| t.trim().parse::<u64>().ok())
            {
                out.push((port.file_name().to_string_lossy().into_owned(), name, v));
            }
        }
    }
    out
}

/// The usual process metrics, from /proc (skipped where unreadable).
fn process_metrics(out: &mut String) {
    if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
    {
        header(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        let page = rustix::param::page_size() as u64;
        let _ = writeln!(out, "process_resident_memory_bytes {}", pages * page);
    }
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        // Fields after the command name (which may hold spaces): state is field 3; utime and
        // stime are fields 14 and 15.
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }) {
        let hz = rustix::param::clock_ticks_per_second().max(1);
        header(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {:.2}", ticks as f64 / hz as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        header(out, "process_open_fds", "gauge", "Number of open file descriptors.");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
}

/// A live session as the status page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub id: u64,
    pub peer: String,
    pub direction: &'static str,
    pub transport: &'static str,
    pub path: String,
    pub bytes: u64,
    pub files: u64,
    pub rate_bytes_per_s: f64,
    pub age_s: f64,
}

impl SessionMetrics {
    /// The session's data plane is connected: counts the session under its transport and
    /// probes the plane's counters from now on.
    pub fn plane(&self, half: &Half) {
        let transport = Transport::of(half.describe().0);
        let d = direction_index(self.live.direction);
        let mut st = lock(&self.live.state);
        st.transport = transport;
        st.probe = Some(half.probe());
        if !st.counted {
            st.counted = true;
            lock(&self.metrics.folded).by[d][transport.index()].sessions += 1;
        }
    }

    /// The daemon's half finished with `n` files that failed.
    pub fn file_errors(&self, n: u64) {
        lock(&self.metrics.folded).file_errors[direction_index(self.live.direction)] += n;
    }

    /// The transfer is over: keeps the plane's last counters (the plane is dropped next).
    pub fn plane_done(&self, half: &Half) {
        let mut st = lock(&self.live.state);
        st.last = Some(half.counters());
        st.probe = None;
    }
}

impl Drop for SessionMetrics {
    fn drop(&mut self) {
        let mut live = lock(&self.metrics.live);
        live.remove(&self.live.id);
        let st = lock(&self.live.state);
        let counters = st.last.or_else(|| st.probe.as_ref().and_then(|p| p()));
        let d = direction_index(self.live.direction);
        let mut f = lock(&self.metrics.folded);
        let cell = &mut f.by[d][st.transport.index()];
        if !st.counted {
            cell.sessions += 1;
        }
        cell.bytes += Progress::read(&self.live.progress.bytes_done);
        cell.files += Progress::read(&self.live.progress.files_done);
        f.add_plane(d, st.transport, counters);
        drop(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd<script>"), "a\\\"b\\\\c\\nd<script>");
    }

    #[test]
    fn error_kinds_have_distinct_counters() {
        let mut seen = [false; ErrorKind::COUNT];
        for k in ErrorKind::ALL {
            let (_, i) = k.describe();
            assert!(!seen[i], "{k:?}");
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    fn value(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("{series} in {text}"));
        line[series.len()..].trim().parse().unwrap()
    }

    #[test]
    fn ended_sessions_fold_into_totals_once() {
        let t0 = Instant::now();
        let m = Metrics::new(t0, None);
        let progress = Arc::new(Progress::default());
        let s = m.open_session(t0, 1, "127.0.0.1:1", Direction::Push, "a", Arc::clone(&progress));
        Progress::add(&progress.bytes_done, 1000);
        Progress::add(&progress.files_done, 2);
        let text = m.render_prometheus(t0);
        let bytes = "blit_transferred_bytes_total{direction=\"push\",transport=\"none\"}";
        let active = "blit_sessions_active{direction=\"push\",transport=\"none\"}";
        let total = "blit_sessions_total{direction=\"push\",transport=\"none\"}";
        assert_eq!(value(&text, bytes), 1000.0);
        assert_eq!(value(&text, active), 1.0);
        assert_eq!(value(&text, total), 0.0);
        s.file_errors(2);
        drop(s);
        let text = m.render_prometheus(t0);
        assert_eq!(value(&text, "blit_file_errors_total{direction=\"push\"}"), 2.0);
        assert_eq!(value(&text, "blit_file_errors_total{direction=\"pull\"}"), 0.0);
        assert_eq!(value(&text, bytes), 1000.0);
        assert_eq!(value(&text, active), 0.0);
        assert_eq!(value(&text, total), 1.0);
        m.error(ErrorKind::Code(ErrorCode::ReadOnly));
        let text = m.render_prometheus(t0);
        assert_eq!(value(&text, "blit_session_errors_total{kind=\"read_only\"}"), 1.0);
        assert_eq!(value(&text, "blit_session_errors_total{kind=\"internal\"}"), 0.0);
    }

    #[test]
    fn throughput_is_bytes_over_time_between_ticks() {
        let t0 = Instant::now();
        let m = Metrics::new(t0, None);
        let progress = Arc::new(Progress::default());
        let _s = m.open_session(t0, 1, "p", Direction::Pull, "x", Arc::clone(&progress));
        m.tick(t0);
        Progress::add(&progress.bytes_done, 4000);
        m.tick(t0 + Duration::from_secs(2));
        let h = m.history();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].bytes_per_s, [0.0, 2000.0]);
        assert_eq!(m.sessions(t0)[0].rate_bytes_per_s, 2000.0);
        let text = m.render_prometheus(t0);
        assert_eq!(value(&text, "blit_throughput_bytes_per_second{direction=\"pull\"}"), 2000.0);
        for i in 0..HISTORY_MAX + 5 {
            m.tick(t0 + Duration::from_secs(3 + i as u64));
        }
        assert_eq!(m.history().len(), HISTORY_MAX);
    }

    #[test]
    fn rdma_work_requests_per_mib_are_over_all_sessions() {
        let m = Metrics::new(Instant::now(), None);
        let rdma = |wrs, mib: u64| PlaneCounters {
            tcp_retransmits: None,
            rdma_work_requests: wrs,
            rdma_payload_bytes: mib << 20,
            rdma_send_waits: 1,
        };
        lock(&m.folded).add_plane(0, Transport::Rdma, Some(rdma(300, 100)));
        lock(&m.folded).add_plane(0, Transport::Rdma, Some(rdma(100, 100)));
        lock(&m.folded).add_plane(1, Transport::Tcp, None);
        lock(&m.folded).add_plane(
            1,
            Transport::Tcp,
            Some(PlaneCounters { tcp_retransmits: Some(7), ..PlaneCounters::default() }),
        );
        let text = m.render_prometheus(Instant::now());
        assert_eq!(value(&text, "blit_rdma_work_requests_total{direction=\"push\"}"), 400.0);
        assert_eq!(value(&text, "blit_rdma_work_requests_per_mebibyte{direction=\"push\"}"), 2.0);
        assert_eq!(value(&text, "blit_rdma_work_requests_per_mebibyte{direction=\"pull\"}"), 0.0);
        assert_eq!(value(&text, "blit_rdma_send_waits_total{direction=\"push\"}"), 2.0);
        assert_eq!(value(&text, "blit_tcp_retransmits_total{direction=\"pull\"}"), 7.0);
        assert_eq!(value(&text, "blit_tcp_info_unreadable_sessions_total"), 1.0);
    }

    #[test]
    fn every_series_has_help_and_type() {
        let m = Metrics::new(Instant::now(), Some("no-such-device".into()));
        let text = m.render_prometheus(Instant::now());
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(typed.insert(name.to_string()), "{name} typed twice");
                if rest.ends_with(" counter") {
                    assert!(name.ends_with("_total"), "counter {name}");
                }
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.contains(name), "{name} has no TYPE before it");
            }
        }
    }
}
