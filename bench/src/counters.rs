//! Performance counters (`perf_event_open`) attached to the processes the harness measures.
//!
//! Owns: probing once what this kernel allows (hardware PMU events, software events, whether
//! kernel-mode work may be counted), attaching a set of counters to a pid with `inherit` (so
//! every thread and child the process creates after attaching is counted), and reading them
//! scaled for multiplexing. It never prints zeros for what it could not count: a value the
//! kernel refused is `None`, and the reason is kept in [`CounterSupport`] for the report.
//!
//! Why kernel mode matters: most of a transfer's CPU is in the kernel (sendfile, copy_file_range,
//! TCP), so user-only counts would flatter every tool. When the kernel refuses kernel-mode
//! counting (perf_event_paranoid >= 2 without CAP_PERFMON), hardware counts are kept as
//! user-only and the report says so; context switches happen in kernel mode and are dropped.

use perf_event::events::{Event, Hardware, Software};
use perf_event::{Builder, Counter};
use serde::{Deserialize, Serialize};

/// One counted quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind {
    Cycles,
    Instructions,
    CacheMisses,
    ContextSwitches,
    TaskClock,
}

impl CounterKind {
    pub const ALL: [CounterKind; 5] = [
        CounterKind::Cycles,
        CounterKind::Instructions,
        CounterKind::CacheMisses,
        CounterKind::ContextSwitches,
        CounterKind::TaskClock,
    ];

    fn event(self) -> Event {
        match self {
            CounterKind::Cycles => Hardware::CPU_CYCLES.into(),
            CounterKind::Instructions => Hardware::INSTRUCTIONS.into(),
            CounterKind::CacheMisses => Hardware::CACHE_MISSES.into(),
            CounterKind::ContextSwitches => Software::CONTEXT_SWITCHES.into(),
            CounterKind::TaskClock => Software::TASK_CLOCK.into(),
        }
    }

    fn is_hardware(self) -> bool {
        matches!(self, CounterKind::Cycles | CounterKind::Instructions | CounterKind::CacheMisses)
    }
}

/// Counter values of one process over one run. `None`: not counted (see [`CounterSupport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CounterValues {
    pub cycles: Option<u64>,
    pub instructions: Option<u64>,
    pub cache_misses: Option<u64>,
    pub context_switches: Option<u64>,
    pub task_clock_ns: Option<u64>,
}

impl CounterValues {
    fn slot(&mut self, kind: CounterKind) -> &mut Option<u64> {
        match kind {
            CounterKind::Cycles => &mut self.cycles,
            CounterKind::Instructions => &mut self.instructions,
            CounterKind::CacheMisses => &mut self.cache_misses,
            CounterKind::ContextSwitches => &mut self.context_switches,
            CounterKind::TaskClock => &mut self.task_clock_ns,
        }
    }

    /// `self - earlier`, field by field (for counters read before and after a run of a
    /// long-lived server). A field missing on either side stays `None`.
    pub fn since(&self, earlier: &CounterValues) -> CounterValues {
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        CounterValues {
            cycles: d(self.cycles, earlier.cycles),
            instructions: d(self.instructions, earlier.instructions),
            cache_misses: d(self.cache_misses, earlier.cache_misses),
            context_switches: d(self.context_switches, earlier.context_switches),
            task_clock_ns: d(self.task_clock_ns, earlier.task_clock_ns),
        }
    }
}

/// What the kernel lets the harness count, probed once per bench run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSupport {
    pub hardware_available: bool,
    /// Why hardware counters are off (`None` when available).
    pub hardware_reason: Option<String>,
    pub software_available: bool,
    pub software_reason: Option<String>,
    /// Counts include kernel-mode work (false: user space only, context switches dropped).
    pub kernel_included: bool,
}

impl CounterSupport {
    /// Counting switched off by the user (`--no-counters`).
    pub fn disabled(reason: &str) -> CounterSupport {
        CounterSupport {
            hardware_available: false,
            hardware_reason: Some(reason.to_string()),
            software_available: false,
            software_reason: Some(reason.to_string()),
            kernel_included: false,
        }
    }

    /// Tries each kind of counter on this process.
    pub fn probe() -> CounterSupport {
        let kernel_included = try_counter(CounterKind::TaskClock, true).is_ok();
        let software = try_counter(CounterKind::ContextSwitches, kernel_included)
            .and_then(|()| try_counter(CounterKind::TaskClock, kernel_included));
        let hardware = try_counter(CounterKind::Cycles, kernel_included)
            .and_then(|()| try_counter(CounterKind::Instructions, kernel_included))
            .and_then(|()| try_counter(CounterKind::CacheMisses, kernel_included));
        CounterSupport {
            hardware_available: hardware.is_ok(),
            hardware_reason: hardware.err(),
            software_available: software.is_ok(),
            software_reason: software.err(),
            kernel_included,
        }
    }

    /// Whether `kind` will be attached.
    pub fn allows(&self, kind: CounterKind) -> bool {
        if kind.is_hardware() {
            return self.hardware_available;
        }
        // A context switch is a kernel-mode event: with kernel counting excluded it would read
        // 0, which is not the truth, so it is not counted at all.
        self.software_available && (kind != CounterKind::ContextSwitches || self.kernel_included)
    }

    /// One line per limitation, for the report ("hardware counters unavailable: ...").
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = &self.hardware_reason {
            out.push(format!("hardware counters unavailable: {r}"));
        }
        if let Some(r) = &self.software_reason {
            out.push(format!("software counters unavailable: {r}"));
        }
        if (self.hardware_available || self.software_available) && !self.kernel_included {
            out.push(
                "counters are user-space only (kernel-mode counting refused: raise \
                 CAP_PERFMON or lower /proc/sys/kernel/perf_event_paranoid); context switches \
                 not counted"
                    .to_string(),
            );
        }
        out
    }
}

fn perf_paranoid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

fn has_cpu_pmu() -> bool {
    std::fs::read_dir("/sys/bus/event_source/devices")
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n == "cpu" || n.starts_with("cpu_") || n.starts_with("armv8")
            })
        })
        .unwrap_or(false)
}

fn explain(kind: CounterKind, e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) if kind.is_hardware() && !has_cpu_pmu() => {
            " (no CPU PMU in /sys/bus/event_source/devices: a VM or container without PMU \
             passthrough)"
                .to_string()
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            format!(" (perf_event_paranoid={}, no CAP_PERFMON)", perf_paranoid())
        }
        Some(libc::ENOSYS) => " (kernel built without perf events)".to_string(),
        _ => String::new(),
    };
    format!("perf_event_open({kind:?}) failed: {e}{hint}")
}

fn builder(kind: CounterKind, kernel: bool) -> Builder<'static> {
    let mut b = Builder::new().kind(kind.event());
    b.exclude_kernel(!kernel);
    b
}

fn try_counter(kind: CounterKind, kernel: bool) -> Result<(), String> {
    let mut c = builder(kind, kernel).observe_self().build().map_err(|e| explain(kind, &e))?;
    c.enable().map_err(|e| explain(kind, &e))?;
    c.read().map_err(|e| explain(kind, &e))?;
    Ok(())
}

/// When the attached counters start counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the process's next `execve` (attach to a gated child before it execs the tool, so the
    /// counts cover exactly the tool).
    OnExec,
    /// Right away (a server that is already running; read before and after each run).
    Now,
}

/// Counters attached to one process (and, through `inherit`, its later threads and children).
pub struct Attached {
    counters: Vec<(CounterKind, Counter)>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<CounterKind> = self.counters.iter().map(|(k, _)| *k).collect();
        f.debug_struct("Attached").field("kinds", &kinds).finish()
    }
}

impl Attached {
    /// Attaches every allowed kind; a kind the kernel refuses for this pid is left out (its
    /// value reads as `None`).
    pub fn attach(support: &CounterSupport, pid: u32, start: Start) -> Attached {
        let mut counters = Vec::new();
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return Attached { counters };
        };
        for kind in CounterKind::ALL {
            if !support.allows(kind) {
                continue;
            }
            let mut b = builder(kind, support.kernel_included).observe_pid(pid).any_cpu();
            b.inherit(true);
            if start == Start::OnExec {
                b.enable_on_exec(true);
            }
            let Ok(mut c) = b.build() else { continue };
            if start == Start::Now && c.enable().is_err() {
                continue;
            }
            counters.push((kind, c));
        }
        Attached { counters }
    }

    /// Current values, scaled up when the kernel multiplexed a counter (ran it for only part
    /// of the time it was enabled).
    pub fn read(&mut self) -> CounterValues {
        let mut v = CounterValues::default();
        for (kind, c) in &mut self.counters {
            if let Ok(ct) = c.read_count_and_time() {
                let scaled = if ct.time_running > 0 && ct.time_running < ct.time_enabled {
                    (ct.count as f64 * ct.time_enabled as f64 / ct.time_running as f64) as u64
                } else {
                    ct.count
                };
                *v.slot(*kind) = Some(scaled);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_missing_fields_missing() {
        let a = CounterValues { task_clock_ns: Some(10), cycles: None, ..Default::default() };
        let b = CounterValues { task_clock_ns: Some(25), cycles: Some(5), ..Default::default() };
        let d = b.since(&a);
        assert_eq!(d.task_clock_ns, Some(15));
        assert_eq!(d.cycles, None);
    }

    #[test]
    fn probe_never_claims_what_it_cannot_read() {
        let s = CounterSupport::probe();
        assert_eq!(s.hardware_available, s.hardware_reason.is_none());
        assert_eq!(s.software_available, s.software_reason.is_none());
        if !s.hardware_available {
            assert!(s.notes().iter().any(|n| n.starts_with("hardware counters unavailable: ")));
        }
    }

    #[test]
    fn disabled_support_allows_nothing() {
        let s = CounterSupport::disabled("--no-counters");
        assert!(CounterKind::ALL.iter().all(|k| !s.allows(*k)));
        assert_eq!(s.notes().len(), 2);
    }
}
