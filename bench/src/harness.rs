//! The bench run: datasets → embedded daemon → transport probe → matrix × repeats → baselines
//! → reports, plots and history → clean-up.
//!
//! Owns the order of work and the rules that make numbers comparable: every measured command
//! runs through `child::run_measured`; every run starts from an empty target; repeats are
//! interleaved (round 1 of every cell, then round 2, …) so drift over the session spreads over
//! all cells instead of biasing the last ones; a server's cost is sampled right around each
//! run. Anything that cannot be measured is recorded as skipped with the reason.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::baselines;
use crate::child::{Measured, argv, run_measured};
use crate::config::{BaselineKind, BenchConfig, Direction, Transport};
use crate::counters::CounterSupport;
use crate::dataset::{self, Dataset, DatasetKind};
use crate::history::{self, HistoryRecord};
use crate::matrix::{self, Cell};
use crate::procstat;
use crate::record::{self, CellSummary, RunRecord, Skip};
use crate::report::{self, Environment, Report};
use crate::servers::{self, ServerProcess, ServerSample};
use crate::units::gbps;

/// Most queue pairs `blit xfer --qps` accepts.
const QPS_MAX: u32 = 16;

/// What a finished bench run produced.
#[derive(Debug)]
pub struct Outcome {
    pub out_dir: PathBuf,
    pub summary_md: String,
    pub report: Report,
    pub plots: Vec<PathBuf>,
    /// Runs that failed (the numbers of the others are still written).
    pub failed_runs: usize,
}

/// The daemon the remote cells talk to.
enum Daemon {
    Embedded { server: ServerProcess, addr: String },
    Remote { base: String },
}

impl Daemon {
    /// URL of `rel` (a path below the daemon's root, or below the `--target` path).
    fn url(&self, rel: &str) -> String {
        match self {
            Daemon::Embedded { addr, .. } => format!("blit://{addr}/{rel}"),
            Daemon::Remote { base } => format!("{}/{rel}", base.trim_end_matches('/')),
        }
    }

    fn server(&mut self) -> Option<&mut ServerProcess> {
        match self {
            Daemon::Embedded { server, .. } => Some(server),
            Daemon::Remote { .. } => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Daemon::Embedded { addr, .. } => format!("embedded {addr}"),
            Daemon::Remote { base } => format!("remote {base}"),
        }
    }
}

struct Harness<'a> {
    cfg: &'a BenchConfig,
    support: CounterSupport,
    blit_version: String,
    /// Per-run targets live here (below the daemon's root when it is embedded).
    run_dir: PathBuf,
    empty_dir: PathBuf,
    datasets: Vec<Dataset>,
    daemon: Option<Daemon>,
    /// Transports that can run (rdma only after its probe succeeded).
    usable: Vec<Transport>,
    runs: Vec<RunRecord>,
    skipped: Vec<Skip>,
    notes: Vec<String>,
    timeout: Duration,
    /// Remote pull sources already seeded this session (blit, rsync).
    seeded: Vec<DatasetKind>,
    rsync_seeded: Vec<DatasetKind>,
}

fn remove_tree(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A fresh, empty directory at `p`.
fn fresh_dir(p: &Path) -> anyhow::Result<()> {
    remove_tree(p).with_context(|| format!("cannot empty {}", p.display()))?;
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))
}

fn fs_type(p: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let mut best: (usize, String) = (0, "unknown".into());
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 2 && p.starts_with(f[1]) && f[1].len() >= best.0 {
            best = (f[1].len(), f[2].to_string());
        }
    }
    best.1
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn blit_version(blit: &Path) -> String {
    std::process::Command::new(blit)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

/// Fills a record's measurements from a finished command.
fn fill(rec: &mut RunRecord, m: &Measured) {
    rec.exit_code = m.exit_code;
    rec.seconds = m.wall_s;
    rec.client_user_s = m.user_s;
    rec.client_sys_s = m.sys_s;
    rec.client_cpu_s = m.cpu_s();
    rec.client_max_rss_kib = m.max_rss_kib;
    rec.set_client_counters(&m.counters);
    rec.ok = m.success();
    if !rec.ok {
        rec.error = Some(m.failure());
    }
}

impl Harness<'_> {
    fn log(&self, line: &str) {
        if self.cfg.verbose {
            eprintln!("{line}");
        }
    }

    fn skip(&mut self, what: &str, reason: impl Into<String>) {
        let reason = reason.into();
        self.log(&format!("skipped {what}: {reason}"));
        self.skipped.push(Skip { what: what.to_string(), reason });
    }

    fn dataset(&self, kind: DatasetKind) -> anyhow::Result<&Dataset> {
        self.datasets.iter().find(|d| d.kind == kind).context("dataset not generated")
    }

    /// Runs `argv` measured while sampling `server` around it.
    fn measure(
        &mut self,
        argv: &[OsString],
        server: Option<&mut ServerProcess>,
        rec: &mut RunRecord,
    ) -> anyhow::Result<Measured> {
        let mut server = server;
        let before: Option<ServerSample> = match server.as_deref_mut() {
            Some(s) => {
                s.check_alive()?;
                Some(s.sample()?)
            }
            None => None,
        };
        let m = run_measured(argv, &[], &self.support, self.timeout)
            .with_context(|| format!("cannot run {}", argv[0].to_string_lossy()))?;
        if let (Some(s), Some(b)) = (server, before) {
            let cost = s.cost_since(&b)?;
            rec.server_cpu_s = Some(cost.cpu_s);
            rec.set_server_counters(&cost.counters);
        }
        fill(rec, &m);
        rec.reported_seconds = None;
        if rec.tool == "blit" && !m.stdout.is_empty() {
            self.apply_blit_json(rec, &m.stdout);
        }
        Ok(m)
    }

    /// Reads `blit xfer --json` and checks it moved the whole dataset.
    fn apply_blit_json(&self, rec: &mut RunRecord, stdout: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(stdout) else {
            if rec.ok {
                rec.ok = false;
                rec.error = Some("blit xfer --json printed no JSON".into());
            }
            return;
        };
        rec.reported_seconds = v.get("seconds").and_then(|x| x.as_f64());
        rec.reported_transport = v.get("transport").and_then(|x| x.as_str()).map(String::from);
        rec.reported_streams =
            v.get("streams").and_then(|x| x.as_u64()).and_then(|x| u32::try_from(x).ok());
        let bytes = v.get("bytes").and_then(|x| x.as_u64()).unwrap_or(0);
        let files = v.get("files").and_then(|x| x.as_u64()).unwrap_or(0);
        if rec.ok && (bytes != rec.bytes || files != rec.files) {
            rec.ok = false;
            rec.error = Some(format!(
                "moved {files} files / {bytes} bytes, the dataset has {} / {} (target not empty?)",
                rec.files, rec.bytes
            ));
        }
        if rec.ok
            && rec.transport != "local"
            && rec.reported_transport.as_deref() != Some(rec.transport.as_str())
        {
            rec.ok = false;
            rec.error = Some(format!(
                "asked for {}, blit used {}",
                rec.transport,
                rec.reported_transport.as_deref().unwrap_or("?")
            ));
        }
    }

    fn push_run(&mut self, mut rec: RunRecord) {
        rec.run = u32::try_from(self.runs.len() + 1).unwrap_or(u32::MAX);
        if rec.ok && rec.seconds > 0.0 && rec.throughput_bytes_per_sec == 0.0 {
            rec.throughput_bytes_per_sec = rec.bytes as f64 / rec.seconds;
        }
        let what =
            format!("{} · {}", rec.cell_key().label(), rec.dataset.as_deref().unwrap_or("link"));
        let line = if rec.ok {
            let server =
                rec.server_cpu_s.map(|s| format!(", server {s:.2} s CPU")).unwrap_or_default();
            format!(
                "{:.3} s, {:.2} Gb/s, client {:.2} s CPU{server}",
                rec.seconds,
                gbps(rec.throughput_bytes_per_sec),
                rec.client_cpu_s
            )
        } else {
            format!("FAILED: {}", rec.error.as_deref().unwrap_or("?"))
        };
        self.log(&format!("[{:>3}] {what}: {line}", rec.run));
        self.runs.push(rec);
    }

    fn xfer_argv(&self, src: &str, dst: &str, cell: &Cell) -> Vec<OsString> {
        let mut a = argv([
            self.cfg.blit_exe.as_os_str(),
            "xfer".as_ref(),
            src.as_ref(),
            dst.as_ref(),
            "--no-progress".as_ref(),
            "--json".as_ref(),
        ]);
        a.push("--chunk-size".into());
        a.push(cell.chunk_bytes.to_string().into());
        if cell.transport.is_remote() {
            a.push("--transport".into());
            a.push(cell.transport.name().into());
        }
        if let Some(s) = cell.streams {
            // RDMA stripes frames over queue pairs (`--qps`), TCP over streams.
            a.push(if cell.transport == Transport::Rdma { "--qps" } else { "--streams" }.into());
            a.push(s.to_string().into());
        }
        if cell.transport == Transport::Rdma
            && let Some(d) = &self.cfg.rdma_device
        {
            a.push("--rdma-device".into());
            a.push(d.into());
        }
        if let Some(n) = &self.cfg.numa {
            a.push("--numa".into());
            a.push(n.into());
        }
        a.extend(self.cfg.xfer_args.iter().map(OsString::from));
        a
    }

    /// Empties a remote directory (untimed): a mirror push of an empty directory.
    fn clear_remote(&mut self, url: &str) -> anyhow::Result<()> {
        let a = argv([
            self.cfg.blit_exe.as_os_str(),
            "xfer".as_ref(),
            "--mirror".as_ref(),
            "--no-progress".as_ref(),
            self.empty_dir.as_os_str(),
            url.as_ref(),
        ]);
        let m = run_measured(&a, &[], &CounterSupport::disabled("untimed"), self.timeout)?;
        if !m.success() {
            bail!("cannot empty {url}: {}", m.failure());
        }
        Ok(())
    }

    /// Pushes a dataset to where pulls read it from on a remote daemon (untimed; blit's quick
    /// check makes a repeat cheap).
    fn seed_remote(&mut self, kind: DatasetKind) -> anyhow::Result<()> {
        if self.seeded.contains(&kind) {
            return Ok(());
        }
        let Some(d @ Daemon::Remote { .. }) = &self.daemon else { return Ok(()) };
        let url = d.url(&format!("blit-bench-data-{}", kind.name()));
        let src = self.dataset(kind)?.path.clone();
        let a = argv([
            self.cfg.blit_exe.as_os_str(),
            "xfer".as_ref(),
            "--mirror".as_ref(),
            "--no-progress".as_ref(),
            src.as_os_str(),
            url.as_ref(),
        ]);
        self.log(&format!("seeding {url} for pulls"));
        let m = run_measured(&a, &[], &CounterSupport::disabled("untimed"), self.timeout)?;
        if !m.success() {
            bail!("cannot seed {url}: {}", m.failure());
        }
        self.seeded.push(kind);
        Ok(())
    }

    fn pull_source(&self, kind: DatasetKind) -> anyhow::Result<String> {
        let d = self.daemon.as_ref().context("no daemon")?;
        Ok(match d {
            Daemon::Embedded { .. } => {
                let name =
                    self.dataset(kind)?.path.file_name().map(|n| n.to_string_lossy().into_owned());
                d.url(&format!("datasets/{}", name.unwrap_or_default()))
            }
            Daemon::Remote { .. } => d.url(&format!("blit-bench-data-{}", kind.name())),
        })
    }

    fn push_rel(&self) -> String {
        match self.daemon {
            // A stable name, emptied before and after every run: at most one empty directory
            // stays on the server, even after an interrupted bench.
            Some(Daemon::Remote { .. }) => "blit-bench-push".to_string(),
            _ => "run/push".to_string(),
        }
    }

    fn run_cell(&mut self, cell: &Cell, repeat: u32) -> anyhow::Result<()> {
        let ds = self.dataset(cell.dataset)?.clone();
        let mut rec = RunRecord::new(0, "blit", cell.transport.name(), repeat);
        rec.direction = cell.direction.map(|d| d.name().to_string());
        rec.dataset = Some(cell.dataset.name().to_string());
        rec.streams = cell.streams;
        rec.chunk_bytes = Some(cell.chunk_bytes);
        rec.bytes = ds.bytes;
        rec.files = ds.files;
        let src_path = ds.path.to_string_lossy().into_owned();
        if self.cfg.mem {
            // Generated data to a discarding sink: nothing to clear, seed or remove.
            let url = |h: &Self| -> anyhow::Result<String> {
                Ok(h.daemon.as_ref().context("no daemon")?.url("blit-bench-mem"))
            };
            let (src, dst) = match (cell.transport, cell.direction) {
                (Transport::Local, _) | (_, None) => ("-".to_string(), "-".to_string()),
                (_, Some(Direction::Push)) => ("-".to_string(), url(self)?),
                (_, Some(Direction::Pull)) => (url(self)?, "-".to_string()),
            };
            let mut a = self.xfer_argv(&src, &dst, cell);
            a.push("--mem".into());
            a.push(ds.bytes.to_string().into());
            let mut daemon = self.daemon.take();
            let server = if cell.transport.is_remote() {
                daemon.as_mut().and_then(Daemon::server)
            } else {
                None
            };
            let r = self.measure(&a, server, &mut rec);
            self.daemon = daemon;
            r?;
            self.push_run(rec);
            return Ok(());
        }
        match (cell.transport, cell.direction) {
            (Transport::Local, _) | (_, None) => {
                let dst = self.run_dir.join("local-target");
                remove_tree(&dst)?;
                let a = self.xfer_argv(&src_path, &dst.to_string_lossy(), cell);
                self.measure(&a, None, &mut rec)?;
                remove_tree(&dst)?;
            }
            (_, Some(Direction::Push)) => {
                let rel = self.push_rel();
                let url = self.daemon.as_ref().context("no daemon")?.url(&rel);
                let embedded_dir = self.cfg.work_dir.join(&rel);
                let remote = matches!(self.daemon, Some(Daemon::Remote { .. }));
                if remote {
                    if let Err(e) = self.clear_remote(&url) {
                        rec.error = Some(format!("{e:#}"));
                        self.push_run(rec);
                        return Ok(());
                    }
                } else {
                    remove_tree(&embedded_dir)?;
                }
                let a = self.xfer_argv(&src_path, &url, cell);
                let mut daemon = self.daemon.take();
                let r = self.measure(&a, daemon.as_mut().and_then(Daemon::server), &mut rec);
                self.daemon = daemon;
                r?;
                if remote {
                    if let Err(e) = self.clear_remote(&url) {
                        self.notes.push(format!("{e:#}"));
                    }
                } else {
                    remove_tree(&embedded_dir)?;
                }
            }
            (_, Some(Direction::Pull)) => {
                if let Err(e) = self.seed_remote(cell.dataset) {
                    rec.error = Some(format!("{e:#}"));
                    self.push_run(rec);
                    return Ok(());
                }
                let url = self.pull_source(cell.dataset)?;
                let dst = self.run_dir.join("pull-target");
                remove_tree(&dst)?;
                let a = self.xfer_argv(&url, &dst.to_string_lossy(), cell);
                let mut daemon = self.daemon.take();
                let r = self.measure(&a, daemon.as_mut().and_then(Daemon::server), &mut rec);
                self.daemon = daemon;
                r?;
                remove_tree(&dst)?;
            }
        }
        self.push_run(rec);
        Ok(())
    }

    /// One `blit xfer --transport rdma` of a one-file tree: exit code 3 means no RDMA on one
    /// side (the documented "transport unavailable").
    fn probe_rdma(&mut self) -> anyhow::Result<()> {
        let Some(d) = &self.daemon else { return Ok(()) };
        let src = self.run_dir.join("probe-src");
        fresh_dir(&src)?;
        std::fs::write(src.join("probe"), b"blit bench rdma probe\n")?;
        let embedded = matches!(d, Daemon::Embedded { .. });
        let rel = if embedded {
            "run/rdma-probe".to_string()
        } else {
            "blit-bench-rdma-probe".to_string()
        };
        let url = d.url(&rel);
        let a = argv([
            self.cfg.blit_exe.as_os_str(),
            "xfer".as_ref(),
            "--transport".as_ref(),
            "rdma".as_ref(),
            "--no-progress".as_ref(),
            "--json".as_ref(),
            src.as_os_str(),
            url.as_ref(),
        ]);
        let mut a = a;
        if let Some(d) = &self.cfg.rdma_device {
            a.push("--rdma-device".into());
            a.push(d.into());
        }
        let m = run_measured(&a, &[], &CounterSupport::disabled("probe"), self.timeout)?;
        match m.exit_code {
            Some(0) => {
                self.log("rdma: available (probe transfer succeeded)");
                self.usable.push(Transport::Rdma);
            }
            Some(3) => self.skip(
                "transport rdma",
                format!("unavailable (blit xfer --transport rdma exit 3): {}", m.stderr_tail()),
            ),
            _ => self.skip("transport rdma", format!("probe failed: {}", m.failure())),
        }
        if embedded {
            remove_tree(&self.cfg.work_dir.join(&rel))?;
        } else if m.exit_code == Some(0) {
            let _ = self.clear_remote(&url);
        }
        Ok(())
    }

    // ---- baselines ----

    fn local_baselines(&mut self, repeat: u32) -> anyhow::Result<()> {
        if self.cfg.mem {
            return Ok(());
        }
        let kinds: Vec<DatasetKind> = self.datasets.iter().map(|d| d.kind).collect();
        for kind in kinds {
            let ds = self.dataset(kind)?.clone();
            let dst = self.run_dir.join("baseline-target");
            if self.cfg.baselines.contains(&BaselineKind::Cp) && !self.skipped_baseline("cp") {
                fresh_dir(&dst)?;
                let mut src = ds.path.clone().into_os_string();
                src.push("/.");
                let a =
                    argv([OsString::from("cp"), "-a".into(), src, dst.clone().into_os_string()]);
                self.baseline_run("cp -a", "local", None, &ds, None, repeat, &a, None)?;
            }
            if self.cfg.baselines.contains(&BaselineKind::Tar) && !self.skipped_baseline("tar") {
                fresh_dir(&dst)?;
                let a = argv([
                    OsString::from("/bin/sh"),
                    "-c".into(),
                    r#"tar -C "$1" -cf - . | tar -C "$2" -xf -"#.into(),
                    "tar-pipe".into(),
                    ds.path.clone().into_os_string(),
                    dst.clone().into_os_string(),
                ]);
                self.baseline_run("tar | tar", "local", None, &ds, None, repeat, &a, None)?;
            }
            remove_tree(&dst)?;
        }
        Ok(())
    }

    fn skipped_baseline(&self, name: &str) -> bool {
        let what = format!("baseline {name}");
        self.skipped.iter().any(|s| s.what == what)
    }

    #[allow(clippy::too_many_arguments)] // one call site per baseline; a struct would only rename them
    fn baseline_run(
        &mut self,
        tool: &str,
        transport: &str,
        direction: Option<Direction>,
        ds: &Dataset,
        streams: Option<u32>,
        repeat: u32,
        a: &[OsString],
        server: Option<&mut ServerProcess>,
    ) -> anyhow::Result<()> {
        let mut rec = RunRecord::new(0, tool, transport, repeat);
        rec.direction = direction.map(|d| d.name().to_string());
        rec.dataset = Some(ds.kind.name().to_string());
        rec.streams = streams;
        rec.bytes = ds.bytes;
        rec.files = ds.files;
        self.measure(a, server, &mut rec)?;
        self.push_run(rec);
        Ok(())
    }

    fn rsync_baselines(
        &mut self,
        rsync: &mut Option<(Option<ServerProcess>, String)>,
        repeat: u32,
    ) -> anyhow::Result<()> {
        let Some((server, base)) = rsync else { return Ok(()) };
        let base = base.trim_end_matches('/').to_string();
        let remote = server.is_none();
        let kinds: Vec<DatasetKind> = self.datasets.iter().map(|d| d.kind).collect();
        let dirs = self.cfg.directions.clone();
        for kind in kinds {
            let ds = self.dataset(kind)?.clone();
            for &dir in &dirs {
                let srv = server.as_mut();
                match dir {
                    Direction::Push => {
                        let (url, local) = if remote {
                            (format!("{base}/blit-bench-push/"), None)
                        } else {
                            let p = self.cfg.work_dir.join("run/rsync-push");
                            fresh_dir(&p)?;
                            (format!("{base}/push/"), Some(p))
                        };
                        if remote && let Err(e) = self.rsync_clear(&url) {
                            self.failed_run("rsync daemon", Some(dir), &ds, repeat, e);
                            continue;
                        }
                        let mut src = ds.path.clone().into_os_string();
                        src.push("/");
                        let a =
                            argv([OsString::from("rsync"), "-a".into(), src, url.clone().into()]);
                        self.baseline_run(
                            "rsync daemon",
                            "tcp",
                            Some(dir),
                            &ds,
                            None,
                            repeat,
                            &a,
                            srv,
                        )?;
                        match local {
                            Some(p) => fresh_dir(&p)?,
                            None => {
                                if let Err(e) = self.rsync_clear(&url) {
                                    self.notes.push(format!("{e:#}"));
                                }
                            }
                        }
                    }
                    Direction::Pull => {
                        let url = if remote {
                            // One level below the module: rsync creates only the last
                            // directory of a destination path.
                            let u = format!("{base}/blit-bench-data-{}/", kind.name());
                            if let Err(e) = self.rsync_seed(&ds, &u) {
                                self.failed_run("rsync daemon", Some(dir), &ds, repeat, e);
                                continue;
                            }
                            u
                        } else {
                            let name = ds
                                .path
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            format!("{base}/datasets/{name}/")
                        };
                        let dst = self.run_dir.join("rsync-pull");
                        fresh_dir(&dst)?;
                        let mut d = dst.clone().into_os_string();
                        d.push("/");
                        let a = argv([OsString::from("rsync"), "-a".into(), url.into(), d]);
                        self.baseline_run(
                            "rsync daemon",
                            "tcp",
                            Some(dir),
                            &ds,
                            None,
                            repeat,
                            &a,
                            srv,
                        )?;
                        remove_tree(&dst)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Records a run that could not be prepared (its target could not be emptied or seeded).
    fn failed_run(
        &mut self,
        tool: &str,
        direction: Option<Direction>,
        ds: &Dataset,
        repeat: u32,
        e: anyhow::Error,
    ) {
        let mut rec = RunRecord::new(0, tool, "tcp", repeat);
        rec.direction = direction.map(|d| d.name().to_string());
        rec.dataset = Some(ds.kind.name().to_string());
        rec.bytes = ds.bytes;
        rec.files = ds.files;
        rec.error = Some(format!("{e:#}"));
        self.push_run(rec);
    }

    /// Copies a dataset to a remote rsync module for pulls (untimed; once per session).
    fn rsync_seed(&mut self, ds: &Dataset, url: &str) -> anyhow::Result<()> {
        if self.rsync_seeded.contains(&ds.kind) {
            return Ok(());
        }
        let mut src = ds.path.clone().into_os_string();
        src.push("/");
        let seed = argv([OsString::from("rsync"), "-a".into(), "--delete".into(), src, url.into()]);
        self.log(&format!("seeding {url} for rsync pulls"));
        let m = run_measured(&seed, &[], &CounterSupport::disabled("untimed"), self.timeout)?;
        if !m.success() {
            bail!("cannot seed {url}: {}", m.failure());
        }
        self.rsync_seeded.push(ds.kind);
        Ok(())
    }

    /// Empties a remote rsync directory (untimed).
    fn rsync_clear(&mut self, url: &str) -> anyhow::Result<()> {
        let mut e = self.empty_dir.clone().into_os_string();
        e.push("/");
        let a = argv([OsString::from("rsync"), "-a".into(), "--delete".into(), e, url.into()]);
        let m = run_measured(&a, &[], &CounterSupport::disabled("untimed"), self.timeout)?;
        if !m.success() {
            bail!("cannot empty {url}: {}", m.failure());
        }
        Ok(())
    }

    fn iperf3_baselines(
        &mut self,
        iperf: &mut Option<(Option<ServerProcess>, String, u16)>,
        repeat: u32,
    ) -> anyhow::Result<()> {
        let Some((server, host, port)) = iperf else { return Ok(()) };
        let mut streams = self.cfg.streams.clone();
        streams.sort();
        streams.dedup();
        for zerocopy in [true, false] {
            for &n in &streams {
                let tool = if zerocopy { "iperf3 -Z" } else { "iperf3" };
                let mut a = argv([
                    "iperf3",
                    "-c",
                    host.as_str(),
                    "-p",
                    &port.to_string(),
                    "-t",
                    &self.cfg.iperf_seconds.to_string(),
                    "-P",
                    &n.to_string(),
                    "-J",
                ]);
                if zerocopy {
                    a.push("-Z".into());
                }
                let mut rec = RunRecord::new(0, tool, "tcp", repeat);
                rec.streams = Some(n);
                // The server may still be closing the previous test ("busy"): retry briefly.
                for attempt in 0..5 {
                    rec = RunRecord { error: None, ..rec };
                    let m = self.measure(&a, server.as_mut(), &mut rec)?;
                    let text = String::from_utf8_lossy(&m.stdout);
                    match baselines::parse_iperf3_json(&text) {
                        Ok(r) => {
                            rec.bytes = r.bytes;
                            rec.reported_seconds = Some(r.seconds);
                            rec.throughput_bytes_per_sec = r.bits_per_second / 8.0;
                            break;
                        }
                        Err(e) if e.contains("busy") && attempt < 4 => {
                            std::thread::sleep(Duration::from_millis(300));
                        }
                        Err(e) => {
                            rec.ok = false;
                            rec.error = Some(e);
                            break;
                        }
                    }
                }
                self.push_run(rec);
            }
        }
        Ok(())
    }
}

/// How the ib_write_bw baseline runs: against a local server on `device`, or a remote host.
struct IbPlan {
    device: String,
    remote_host: Option<String>,
}

impl Harness<'_> {
    fn ib_baselines(&mut self, plan: &Option<IbPlan>, repeat: u32) -> anyhow::Result<()> {
        let Some(plan) = plan else { return Ok(()) };
        let secs = self.cfg.iperf_seconds.to_string();
        let mut streams = self.cfg.streams.clone();
        streams.sort();
        streams.dedup();
        if plan.remote_host.is_some() {
            // A remote server is started by hand for one parameter set: use the largest.
            streams = streams.last().copied().into_iter().collect();
        }
        for n in streams {
            let port = servers::free_port()?;
            let mut common = argv([
                "ib_write_bw",
                "-d",
                plan.device.as_str(),
                "-p",
                &port.to_string(),
                "-F",
                "--report_gbits",
                "-D",
                &secs,
                "-q",
                &n.to_string(),
            ]);
            common.extend(self.cfg.ib_args.iter().map(OsString::from));
            let (mut server, host) = match &plan.remote_host {
                Some(h) => {
                    // The remote side listens on its default port: drop our -p.
                    common.drain(3..5);
                    (None, h.clone())
                }
                None => {
                    let mut s =
                        ServerProcess::spawn("ib_write_bw server", &common, &self.support, None)?;
                    s.wait_listening(port)?;
                    (Some(s), "127.0.0.1".to_string())
                }
            };
            let mut a = common.clone();
            a.push(host.into());
            let mut rec = RunRecord::new(0, "ib_write_bw", "rdma", repeat);
            rec.streams = Some(n);
            let m = self.measure(&a, server.as_mut(), &mut rec)?;
            match baselines::parse_ib_write_bw(&String::from_utf8_lossy(&m.stdout)) {
                Ok(r) if rec.ok => {
                    rec.throughput_bytes_per_sec = r.bytes_per_second;
                    rec.reported_seconds = Some(f64::from(self.cfg.iperf_seconds));
                    rec.bytes = (r.bytes_per_second * f64::from(self.cfg.iperf_seconds)) as u64;
                }
                Ok(_) => {}
                Err(e) => {
                    rec.ok = false;
                    rec.error = Some(rec.error.take().map_or(e.clone(), |x| format!("{x}; {e}")));
                }
            }
            if let Some(s) = &mut server {
                s.stop();
            }
            self.push_run(rec);
        }
        Ok(())
    }

    fn baseline_wanted(&mut self, kind: BaselineKind) -> bool {
        if self.cfg.baselines.contains(&kind) {
            return true;
        }
        self.skip(&format!("baseline {}", kind.name()), "not selected (--baselines)");
        false
    }

    fn tool_present(&mut self, kind: BaselineKind, tool: &str, package: &str) -> bool {
        if baselines::which(tool).is_some() {
            return true;
        }
        self.skip(
            &format!("baseline {}", kind.name()),
            format!("{tool} not installed (apt-get install {package})"),
        );
        false
    }

    fn setup_rsync(&mut self) -> Option<(Option<ServerProcess>, String)> {
        let k = BaselineKind::Rsync;
        if !self.baseline_wanted(k) {
            return None;
        }
        if !self.cfg.transports.iter().any(|t| t.is_remote()) {
            self.skip("baseline rsync", "no remote transport selected (--transports)");
            return None;
        }
        if !self.tool_present(k, "rsync", "rsync") {
            return None;
        }
        if self.cfg.target.is_some() {
            return match &self.cfg.rsync_url {
                Some(u) => Some((None, u.clone())),
                None => {
                    self.skip(
                        "baseline rsync",
                        "remote target: run an rsync daemon with a writable module on the server \
                         and pass --rsync-url rsync://HOST[:PORT]/MODULE",
                    );
                    None
                }
            };
        }
        let push = self.cfg.work_dir.join("run/rsync-push");
        let datasets = self.cfg.work_dir.join("datasets");
        match servers::start_rsync_daemon(
            &self.run_dir.join("rsyncd"),
            &push,
            &datasets,
            &self.support,
        ) {
            Ok((server, port)) => Some((Some(server), format!("rsync://127.0.0.1:{port}"))),
            Err(e) => {
                self.skip("baseline rsync", format!("rsync daemon did not start: {e:#}"));
                None
            }
        }
    }

    fn setup_iperf3(&mut self) -> Option<(Option<ServerProcess>, String, u16)> {
        let k = BaselineKind::Iperf3;
        if !self.baseline_wanted(k) {
            return None;
        }
        if !self.cfg.transports.contains(&Transport::Tcp) {
            self.skip("baseline iperf3", "tcp not selected (--transports)");
            return None;
        }
        if !self.tool_present(k, "iperf3", "iperf3") {
            return None;
        }
        if self.cfg.target.is_some() {
            let Some(hp) = &self.cfg.iperf3_server else {
                self.skip(
                    "baseline iperf3",
                    "remote target: run `iperf3 -s` on the server and pass --iperf3-server HOST[:PORT]",
                );
                return None;
            };
            let (host, port) = match hp.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
                    h.trim_matches(|c| c == '[' || c == ']').to_string(),
                    p.parse().unwrap_or(5201),
                ),
                _ => (hp.clone(), 5201),
            };
            return Some((None, host, port));
        }
        match servers::start_iperf3_server(&self.support) {
            Ok((server, port)) => Some((Some(server), "127.0.0.1".into(), port)),
            Err(e) => {
                self.skip("baseline iperf3", format!("iperf3 server did not start: {e:#}"));
                None
            }
        }
    }

    fn setup_ib(&mut self) -> Option<IbPlan> {
        let k = BaselineKind::IbWriteBw;
        if !self.baseline_wanted(k) {
            return None;
        }
        if !self.cfg.transports.contains(&Transport::Rdma) {
            self.skip("baseline ib_write_bw", "rdma not selected (--transports)");
            return None;
        }
        let devices = match baselines::verbs_devices() {
            Ok(d) => d,
            Err(reason) => {
                self.skip("baseline ib_write_bw", reason);
                return None;
            }
        };
        if !self.tool_present(k, "ib_write_bw", "perftest") {
            return None;
        }
        let device = self.cfg.rdma_device.clone().or_else(|| devices.first().cloned())?;
        if self.cfg.target.is_some() {
            let Some(h) = &self.cfg.ib_server else {
                self.skip(
                    "baseline ib_write_bw",
                    "remote target: start ib_write_bw on the server and pass --ib-server HOST",
                );
                return None;
            };
            return Some(IbPlan { device, remote_host: Some(h.clone()) });
        }
        Some(IbPlan { device, remote_host: None })
    }

    fn history_records(&self, cells: &[CellSummary], started: u64) -> Vec<HistoryRecord> {
        let host = history::host_name();
        cells
            .iter()
            .filter(|c| c.key.is_blit() && c.ok_runs > 0)
            .filter_map(|c| {
                let secs = c.seconds?;
                let gb = c.bytes as f64 / 1e9;
                Some(HistoryRecord {
                    time_unix_s: started,
                    command: "bench".into(),
                    transport: c.key.transport.clone(),
                    direction: c.key.direction.clone(),
                    streams: c.key.streams.unwrap_or(1),
                    chunk_bytes: c.key.chunk_bytes.unwrap_or(0),
                    dataset: c.key.dataset.clone(),
                    path: None,
                    bytes: c.bytes,
                    files: c.files,
                    seconds: secs.median,
                    throughput_bytes_per_sec: c.throughput_median_bytes_per_sec.unwrap_or(0.0),
                    cpu_seconds: c.client_cpu_s_per_gb.map(|x| x * gb),
                    daemon_cpu_seconds: c.server_cpu_s_per_gb.map(|x| x * gb),
                    runs: u32::try_from(c.ok_runs).ok(),
                    host: host.clone(),
                    blit_version: self.blit_version.clone(),
                    stage_seconds: Default::default(),
                })
            })
            .collect()
    }
}

/// Holds `<work_dir>/.blit-bench.lock` for the whole run: two benches sharing a work directory
/// would delete each other's targets.
fn lock_work_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let f = File::create(dir.join(".blit-bench.lock"))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("another blit bench is using {}; wait for it or pass --dir", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Runs the whole benchmark described by `cfg` and writes its outputs.
pub fn run(cfg: &BenchConfig) -> anyhow::Result<Outcome> {
    cfg.validate()?;
    let started = history::now_unix_s();
    let clock = Instant::now();
    let lock = lock_work_dir(&cfg.work_dir)?;
    std::fs::create_dir_all(&cfg.out_dir)
        .with_context(|| format!("cannot create --out {}", cfg.out_dir.display()))?;
    let support = if cfg.counters {
        CounterSupport::probe()
    } else {
        CounterSupport::disabled("turned off (--no-counters)")
    };
    let run_dir = cfg.work_dir.join("run");
    fresh_dir(&run_dir)?;
    let empty_dir = run_dir.join("empty");
    fresh_dir(&empty_dir)?;
    let mut h = Harness {
        cfg,
        support,
        blit_version: blit_version(&cfg.blit_exe),
        run_dir,
        empty_dir,
        datasets: Vec::new(),
        daemon: None,
        usable: Vec::new(),
        runs: Vec::new(),
        skipped: Vec::new(),
        notes: Vec::new(),
        timeout: Duration::from_secs(cfg.run_timeout_s.max(1)),
        seeded: Vec::new(),
        rsync_seeded: Vec::new(),
    };
    for n in h.support.notes() {
        h.log(&n);
    }
    let mut kinds = cfg.datasets.clone();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        if cfg.mem {
            let bytes = cfg.dataset_params.large_bytes;
            h.log(&format!(
                "memory sessions: {:.1} MiB generated per run",
                bytes as f64 / 1_048_576.0
            ));
            h.datasets.push(Dataset {
                kind,
                path: PathBuf::from("-"),
                files: 1,
                bytes,
                reused: true,
            });
            continue;
        }
        let t = Instant::now();
        let ds = dataset::ensure(&cfg.work_dir, kind, &cfg.dataset_params)?;
        h.log(&format!(
            "dataset {}: {} files, {:.1} MiB ({} in {:.1} s) at {}",
            kind.name(),
            ds.files,
            ds.bytes as f64 / 1_048_576.0,
            if ds.reused { "reused" } else { "generated" },
            t.elapsed().as_secs_f64(),
            ds.path.display()
        ));
        h.datasets.push(ds);
    }
    if cfg.transports.contains(&Transport::Local) {
        h.usable.push(Transport::Local);
    }
    if cfg.transports.iter().any(|t| t.is_remote()) {
        h.daemon = Some(match &cfg.target {
            Some(t) => {
                h.notes.push(format!(
                    "server CPU not measured: the daemon ({t}) runs on another machine; \
                     run `blit bench` there with --transports local for its side"
                ));
                Daemon::Remote { base: t.clone() }
            }
            None => {
                let (server, addr) = servers::start_blit_daemon(
                    &cfg.blit_exe,
                    &cfg.work_dir,
                    cfg.numa.as_deref(),
                    cfg.rdma_device.as_deref(),
                    &h.support,
                )?;
                h.log(&format!("blit daemon listening on {addr} (pid {})", server.pid()));
                Daemon::Embedded { server, addr }
            }
        });
        if cfg.transports.contains(&Transport::Tcp) {
            h.usable.push(Transport::Tcp);
        }
        if cfg.transports.contains(&Transport::Rdma) {
            h.probe_rdma()?;
        }
    }
    let mut cells: Vec<Cell> =
        matrix::cells(cfg).into_iter().filter(|c| h.usable.contains(&c.transport)).collect();
    let over_qps = |c: &Cell| c.transport == Transport::Rdma && c.streams.unwrap_or(1) > QPS_MAX;
    if cells.iter().any(over_qps) {
        h.skip("rdma cells above 16 queue pairs", "blit xfer --qps allows 1..=16");
        cells.retain(|c| !over_qps(c));
    }
    h.log(&format!(
        "{} cells × {} repeats = {} blit runs, plus baselines",
        cells.len(),
        cfg.repeat,
        cells.len() * cfg.repeat as usize
    ));
    // cp and tar need no set-up; this records them as skipped when deselected or missing, and
    // `local_baselines` leaves out whatever was skipped.
    for (k, tool, package) in
        [(BaselineKind::Cp, "cp", "coreutils"), (BaselineKind::Tar, "tar", "tar")]
    {
        if h.baseline_wanted(k) {
            h.tool_present(k, tool, package);
        }
    }
    let mut rsync = h.setup_rsync();
    let mut iperf = h.setup_iperf3();
    let ib = h.setup_ib();
    for repeat in 1..=cfg.repeat {
        for cell in &cells {
            h.run_cell(cell, repeat)?;
        }
        h.local_baselines(repeat)?;
        h.rsync_baselines(&mut rsync, repeat)?;
        h.iperf3_baselines(&mut iperf, repeat)?;
        h.ib_baselines(&ib, repeat)?;
    }
    drop(rsync);
    drop(iperf);
    let daemon_desc =
        h.daemon.as_ref().map(Daemon::describe).unwrap_or_else(|| "none (local only)".into());
    if let Some(mut d) = h.daemon.take()
        && let Some(s) = d.server()
    {
        s.stop();
    }

    let cells = record::summarize(&h.runs);
    let failed_runs = h.runs.iter().filter(|r| !r.ok).count();
    let mut report = Report {
        schema: report::SCHEMA.into(),
        blit_version: h.blit_version.clone(),
        host: history::host_name(),
        started_unix_s: started,
        started_utc: report::started_utc(started),
        duration_s: 0.0,
        config: cfg.clone(),
        environment: Environment {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            kernel: kernel_release(),
            clock_ticks_per_s: procstat::clock_ticks_per_second(),
            work_dir_fs: fs_type(&cfg.work_dir),
            daemon: daemon_desc,
            counters: h.support.clone(),
        },
        datasets: h.datasets.clone(),
        skipped: h.skipped.clone(),
        notes: h.notes.clone(),
        runs: h.runs.clone(),
        cells,
    };
    if let Some(path) = &cfg.history {
        let mut appended = 0;
        for rec in h.history_records(&report.cells, started) {
            match history::append_to(path, &rec, history::LINES_MAX) {
                Ok(()) => appended += 1,
                Err(e) => {
                    report.notes.push(format!("history not written to {}: {e}", path.display()));
                    break;
                }
            }
        }
        h.log(&format!("history: {appended} records appended to {}", path.display()));
    }
    let plots = crate::plot::write_all(&report.cells, &cfg.out_dir.join("plots"))?;
    report.duration_s = clock.elapsed().as_secs_f64();
    report::write_csv(&cfg.out_dir.join("runs.csv"), &report.runs)?;
    report::write_json(&cfg.out_dir.join("runs.json"), &report)?;
    let summary_md = report::render_markdown(&report);
    std::fs::write(cfg.out_dir.join("summary.md"), &summary_md)?;

    remove_tree(&h.run_dir)?;
    if !cfg.keep {
        for ds in &h.datasets {
            dataset::remove(ds)?;
        }
        let _ = std::fs::remove_dir(cfg.work_dir.join("datasets"));
        let _ = std::fs::remove_file(cfg.work_dir.join(".blit-bench.lock"));
        let _ = std::fs::remove_dir(&cfg.work_dir);
    }
    drop(lock);
    Ok(Outcome { out_dir: cfg.out_dir.clone(), summary_md, report, plots, failed_runs })
}
