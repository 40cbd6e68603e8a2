//! The RDMA transport alone: moves N MiB of frames from an `RdmaSender` to an
//! `RdmaReceiver` in this process (same device, separate contexts), with no
//! per-byte work in the benchmark itself (no fill, no checksum), and reports
//! throughput, CPU time and the transport's counters.
//!
//! ```text
//! rdma_bench [--total-mib N] [--chunk-kib N] [--qps N] [--slots N] [--pool-slots N]
//!            [--signal-interval N] [--cq-mode busy|event] [--writers N] [--device NAME]
//! ```
//!
//! Output: one human-readable summary, then `RESULT {json}`. CPU is reported
//! for this process (user and system apart, from /proc/self/stat: on
//! Soft-RoCE the system part is the emulated NIC copying and checksumming
//! packets in the posting threads) and for the whole machine (busy jiffies
//! from /proc/stat, which also counts kernel work done outside the process). Exit status: 0 done, 1 failed,
//! 2 usage, 77 skipped (no RDMA here; the reason is printed).

use std::process::ExitCode;
use std::time::Instant;

use blitx_core::frame::{FrameHeader, FrameKind};
use blitx_core::transport::{Frame, FrameReceiver, FrameSender, Payload};
use blitx_transport_rdma::{CqMode, RdmaConfig, RdmaCounters, ReceiverSetup, SenderSetup, probe};
use serde::Serialize;

const EXIT_SKIP: u8 = 77;
/// Linux reports /proc times in USER_HZ, which is 100 on every architecture.
const USER_HZ: f64 = 100.0;

#[derive(Debug)]
struct Args {
    total_mib: u64,
    writers: usize,
    cfg: RdmaConfig,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { total_mib: 256, writers: 2, cfg: RdmaConfig::new(1, 1 << 20) };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--total-mib" => args.total_mib = num(value()?)?,
            "--chunk-kib" => {
                args.cfg.chunk_bytes =
                    u32::try_from(num(value()?)? * 1024).map_err(|e| e.to_string())?
            }
            "--qps" => args.cfg.qps = num(value()?)? as u32,
            "--slots" => args.cfg.slots = num(value()?)? as u32,
            "--pool-slots" => args.cfg.pool_slots = num(value()?)? as u32,
            "--signal-interval" => args.cfg.signal_interval = num(value()?)? as u32,
            "--writers" => args.writers = num(value()?)?.max(1) as usize,
            "--device" => args.cfg.device = Some(value()?),
            "--cq-mode" => {
                args.cfg.cq_mode = match value()?.as_str() {
                    "busy" => CqMode::BusyPoll,
                    "event" => CqMode::Event,
                    other => return Err(format!("--cq-mode {other}: busy or event")),
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.cfg.pool_slots < args.cfg.slots {
        args.cfg.pool_slots = args.cfg.slots + 8;
    }
    Ok(args)
}

/// CPU seconds so far.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// This process in user space.
    user: f64,
    /// This process in the kernel (on Soft-RoCE: the "NIC").
    sys: f64,
    /// Every CPU of the machine, busy.
    machine: f64,
}

fn cpu_seconds() -> Cpu {
    let (user, sys) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // fields after the ")" of the command name; utime, stime are 14, 15
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime / USER_HZ, stime / USER_HZ))
        })
        .unwrap_or((0.0, 0.0));
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?;
            let v: Vec<f64> =
                line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let total: f64 = v.iter().take(8).sum();
            let idle = v.get(3)? + v.get(4)?;
            Some((total - idle) / USER_HZ)
        })
        .unwrap_or(0.0);
    Cpu { user, sys, machine }
}

#[derive(Debug, Serialize)]
struct Report {
    device: String,
    qps: u32,
    chunk_bytes: u32,
    slots: u32,
    pool_slots: u32,
    signal_interval: u32,
    cq_mode: CqMode,
    frames: u64,
    payload_bytes: u64,
    elapsed_s: f64,
    mib_per_s: f64,
    process_user_cpu_s: f64,
    process_sys_cpu_s: f64,
    machine_cpu_s: f64,
    process_user_cpu_s_per_gib: f64,
    process_cpu_s_per_gib: f64,
    machine_cpu_s_per_gib: f64,
    wrs_per_mib: f64,
    sender: RdmaCounters,
    receiver: RdmaCounters,
}

fn run(args: &Args) -> Result<Report, String> {
    let cfg = &args.cfg;
    let (receiver, info) = ReceiverSetup::new(cfg).map_err(|e| format!("receiver setup: {e}"))?;
    let (sender, hello) = SenderSetup::new(cfg).map_err(|e| format!("sender setup: {e}"))?;
    let tx = sender.connect(&info).map_err(|e| format!("sender connect: {e}"))?;
    let rx = receiver.connect(&hello).map_err(|e| format!("receiver connect: {e}"))?;
    let chunk = cfg.chunk_bytes as usize;
    let frames = (args.total_mib << 20).div_ceil(chunk as u64);
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let received = std::thread::scope(|s| {
        let writers: Vec<_> = (0..args.writers)
            .map(|_| {
                s.spawn(|| {
                    let mut bytes = 0u64;
                    loop {
                        match rx.recv() {
                            Ok(Some(f)) => bytes += f.payload.len_bytes(),
                            Ok(None) => return Ok(bytes),
                            Err(e) => return Err(format!("recv: {e}")),
                        }
                    }
                })
            })
            .collect();
        let sent = (|| {
            for id in 0..frames {
                let mut lease = tx.pool().acquire().map_err(|e| format!("pool: {e}"))?;
                lease.set_len(chunk);
                let header = FrameHeader {
                    kind: FrameKind::Chunk,
                    flags: 0,
                    file_id: id,
                    offset_bytes: 0,
                    len_bytes: chunk as u32,
                    checksum: 0,
                };
                tx.send(Frame { header, payload: Payload::Buffer(lease) })
                    .map_err(|e| format!("send: {e}"))?;
            }
            tx.finish().map_err(|e| format!("finish: {e}"))
        })();
        if sent.is_err() {
            tx.abort();
        }
        let mut total = 0;
        for w in writers {
            total += w.join().map_err(|_| "writer panicked".to_string())??;
        }
        sent.map(|()| total)
    })?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds();
    let (user, sys) = (cpu1.user - cpu0.user, cpu1.sys - cpu0.sys);
    let machine = cpu1.machine - cpu0.machine;
    let payload_bytes = frames * chunk as u64;
    if received != payload_bytes {
        return Err(format!("received {received} bytes of {payload_bytes}"));
    }
    let gib = payload_bytes as f64 / f64::from(1 << 30);
    let sender_counters = tx.counters();
    let receiver_counters = rx.counters();
    let wrs = sender_counters.wr_write_imm
        + sender_counters.wr_recv
        + receiver_counters.wr_send
        + receiver_counters.wr_recv;
    Ok(Report {
        device: tx.device().to_owned(),
        qps: cfg.qps,
        chunk_bytes: cfg.chunk_bytes,
        slots: cfg.slots,
        pool_slots: cfg.pool_slots,
        signal_interval: cfg.signal_interval,
        cq_mode: cfg.cq_mode,
        frames,
        payload_bytes,
        elapsed_s,
        mib_per_s: payload_bytes as f64 / f64::from(1 << 20) / elapsed_s,
        process_user_cpu_s: user,
        process_sys_cpu_s: sys,
        machine_cpu_s: machine,
        process_user_cpu_s_per_gib: user / gib,
        process_cpu_s_per_gib: (user + sys) / gib,
        machine_cpu_s_per_gib: machine / gib,
        wrs_per_mib: wrs as f64 / (payload_bytes as f64 / f64::from(1 << 20)),
        sender: sender_counters,
        receiver: receiver_counters,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rdma_bench: {e} (see the header of examples/rdma_bench.rs)");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = probe(args.cfg.device.as_deref()) {
        if e.is_unavailable() {
            println!("SKIPPED: no usable RDMA device: {e} [{e:?}]");
            return ExitCode::from(EXIT_SKIP);
        }
        eprintln!("rdma_bench: {e}");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(r) => {
            println!(
                "rdma transport: {} MiB in {:.2} s = {:.1} MiB/s; qps {} chunk {} KiB slots {} \
                 signal 1/{} cq {:?}; CPU: process {:.2} s user + {:.2} s system ({:.2} s/GiB, \
                 user {:.2} s/GiB), machine {:.2} s ({:.2} s/GiB); {:.3} WRs/MiB; payload copies \
                 {} B; signalled {} of {} WRITEs; {} credits in {} messages",
                r.payload_bytes >> 20,
                r.elapsed_s,
                r.mib_per_s,
                r.qps,
                r.chunk_bytes >> 10,
                r.slots,
                r.signal_interval,
                r.cq_mode,
                r.process_user_cpu_s,
                r.process_sys_cpu_s,
                r.process_cpu_s_per_gib,
                r.process_user_cpu_s_per_gib,
                r.machine_cpu_s,
                r.machine_cpu_s_per_gib,
                r.wrs_per_mib,
                r.sender.payload_copy_bytes + r.receiver.payload_copy_bytes,
                r.sender.wr_signaled,
                r.sender.wr_write_imm,
                r.receiver.credits,
                r.receiver.credit_messages,
            );
            match serde_json::to_string(&r) {
                Ok(json) => println!("RESULT {json}"),
                Err(e) => eprintln!("rdma_bench: cannot encode the report: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rdma_bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
