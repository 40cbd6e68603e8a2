//! Loopback benchmarks for the TCP transport (both halves in this process).
//!
//! ```text
//! tcp_bench transport FILE [--streams N] [--chunk-mib M] [--payload buffer|file]
//!                          [--sink discard|verify|shm] [--readers R] [--writers W] [--runs K]
//! tcp_bench receive   FILE [--streams N] [--chunk-mib M] [--mode pooled|pooled-verify|splice] [--runs K]
//! ```
//!
//! `transport` moves FILE sender → receiver the way a transfer does: R reader threads either
//! pread chunks into the sender's pooled buffers and hash them (`buffer`) or hand over file
//! regions for sendfile (`file`); W writer threads take frames and drop them (`discard`),
//! verify their checksums (`verify`, what the storage writer does) or verify and pwrite them
//! to a file next to FILE (`shm`).
//!
//! `receive` compares receive paths with a sendfile sender: `pooled` reads frames into pooled
//! buffers and pwrites them (the trait's path; `pooled-verify` also checks checksums), `splice`
//! moves each payload socket → pipe → file without entering user space (it cannot verify).
//!
//! CPU time is getrusage(RUSAGE_SELF) over the timed interval, both halves together.
#![allow(unsafe_code)] // getrusage, the only libc call here (rustix does not wrap it).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use blitx_core::frame::{FRAME_HEADER_BYTES, FrameHeader, FrameKind, checksum};
use blitx_core::transport::{FileRegion, Frame, FrameReceiver, FrameSender, Payload, PayloadPref};
use blitx_transport_tcp::{
    DataListener, SessionToken, TcpConfig, TcpReceiver, TcpSender, connect_streams,
};
use rustix::pipe::SpliceFlags;

struct Args {
    cmd: String,
    file: PathBuf,
    streams: u32,
    chunk_bytes: u32,
    payload: PayloadPref,
    sink: String,
    mode: String,
    readers: usize,
    writers: usize,
    runs: usize,
    /// `file`: readers pread and hash; `mem`: they send pool buffers as they are (no file
    /// read, no hash), which isolates the transport for a comparison with iperf3.
    source: String,
}

fn parse() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().context("usage: tcp_bench transport|receive FILE [options]")?;
    let file = PathBuf::from(it.next().context("missing FILE")?);
    let mut a = Args {
        cmd,
        file,
        streams: 1,
        chunk_bytes: 4 << 20,
        payload: PayloadPref::Buffer,
        sink: "discard".into(),
        mode: "pooled".into(),
        readers: 2,
        writers: 2,
        runs: 3,
        source: "file".into(),
    };
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--streams" => a.streams = v.parse()?,
            "--chunk-mib" => a.chunk_bytes = v.parse::<u32>()? << 20,
            "--payload" => {
                a.payload = match v.as_str() {
                    "buffer" => PayloadPref::Buffer,
                    "file" => PayloadPref::FileRegion,
                    _ => bail!("--payload buffer|file"),
                }
            }
            "--sink" => a.sink = v,
            "--mode" => a.mode = v,
            "--readers" => a.readers = v.parse()?,
            "--writers" => a.writers = v.parse()?,
            "--runs" => a.runs = v.parse()?,
            "--source" => a.source = v,
            _ => bail!("unknown option {k}"),
        }
    }
    Ok(a)
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: `rusage` is plain integers (all-zero is valid) and getrusage writes exactly one.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a live, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn streams(cfg: &TcpConfig) -> Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = DataListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), cfg)?;
    let addr = listener.local_addr();
    let token = SessionToken::random()?;
    let (t2, c2) = (token.clone(), cfg.clone());
    let client = std::thread::spawn(move || {
        connect_streams(addr, &t2, c2.streams, Duration::from_secs(10), &c2)
    });
    let daemon =
        listener.accept_streams(&token, cfg.streams, Instant::now() + Duration::from_secs(10))?;
    let client = client.join().map_err(|_| anyhow::anyhow!("connect thread panicked"))??;
    Ok((client, daemon))
}

fn config(a: &Args) -> TcpConfig {
    let mut cfg = TcpConfig::new(a.streams, a.chunk_bytes);
    cfg.payload = a.payload;
    cfg.delivery = blitx_transport_tcp::Delivery::Buffered;
    cfg.pool_slots = blitx_transport_tcp::config::pool_slots_for(a.streams, cfg.queue_frames)
        .max(a.readers + a.writers + 2 * a.streams as usize);
    cfg
}

/// Readers: take chunk offsets from a shared counter and send them.
fn read_and_send(
    tx: &TcpSender,
    file: &Arc<File>,
    size: u64,
    chunk: u64,
    next: &AtomicU64,
    from_memory: bool,
) -> Result<()> {
    loop {
        let offset = next.fetch_add(chunk, Ordering::Relaxed);
        if offset >= size {
            return Ok(());
        }
        let len = (size - offset).min(chunk) as u32;
        let mut header = FrameHeader {
            kind: FrameKind::Chunk,
            flags: 0,
            file_id: 1,
            offset_bytes: offset,
            len_bytes: len,
            checksum: 0,
        };
        let payload = match tx.payload_pref() {
            PayloadPref::FileRegion => {
                Payload::File(FileRegion::new(Arc::clone(file), offset, len))
            }
            PayloadPref::Buffer if from_memory => {
                let mut lease = tx.pool().acquire()?;
                lease.set_len(len as usize);
                Payload::Buffer(lease)
            }
            PayloadPref::Buffer => {
                let mut lease = tx.pool().acquire()?;
                let buf = &mut lease.full_mut()[..len as usize];
                let mut done = 0;
                while done < buf.len() {
                    let n = rustix::io::pread(&**file, &mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        bail!("short read");
                    }
                    done += n;
                }
                lease.set_len(len as usize);
                header.checksum = checksum(lease.data());
                Payload::Buffer(lease)
            }
        };
        tx.send(Frame { header, payload })?;
    }
}

fn write_frames(rx: &TcpReceiver, sink: &str, out: Option<&File>) -> Result<u64> {
    let mut bytes = 0;
    while let Some(f) = rx.recv()? {
        let Payload::Buffer(lease) = &f.payload else { bail!("expected a buffer") };
        if sink != "discard" {
            f.header.verify(lease.data())?;
        }
        if let Some(out) = out {
            let mut done = 0;
            while done < lease.len() {
                done += rustix::io::pwrite(
                    out,
                    &lease.data()[done..],
                    f.header.offset_bytes + done as u64,
                )?;
            }
        }
        bytes += lease.len() as u64;
    }
    Ok(bytes)
}

trait CloneAll: Sized {
    fn clone_all(&self) -> Result<Self>;
}

impl CloneAll for Vec<TcpStream> {
    fn clone_all(&self) -> Result<Self> {
        Ok(self.iter().map(TcpStream::try_clone).collect::<std::io::Result<_>>()?)
    }
}

/// xxh3 of a whole file, read in 4 MiB pieces (the files are too big to hold twice).
fn file_digest(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.digest());
        }
        h.update(&buf[..n]);
    }
}

fn out_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".bench-out");
    PathBuf::from(p)
}

struct Sample {
    secs: f64,
    cpu: f64,
    bytes: u64,
}

fn transport_once(a: &Args) -> Result<Sample> {
    let cfg = config(a);
    let file = Arc::new(File::open(&a.file)?);
    let size = file.metadata()?.len();
    let out = if a.sink == "shm" {
        let o = File::options().create(true).write(true).truncate(true).open(out_path(&a.file))?;
        o.set_len(size)?;
        Some(o)
    } else {
        None
    };
    let (send_side, recv_side) = streams(&cfg)?;
    let tx = TcpSender::new(send_side, &cfg)?;
    let rx = TcpReceiver::new(recv_side, &cfg)?;
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let received = std::thread::scope(|s| -> Result<u64> {
        let writers: Vec<_> =
            (0..a.writers).map(|_| s.spawn(|| write_frames(&rx, &a.sink, out.as_ref()))).collect();
        let readers: Vec<_> = (0..a.readers)
            .map(|_| {
                s.spawn(|| {
                    read_and_send(
                        &tx,
                        &file,
                        size,
                        u64::from(a.chunk_bytes),
                        &next,
                        a.source == "mem",
                    )
                })
            })
            .collect();
        for r in readers {
            r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        tx.finish()?;
        let mut total = 0;
        for w in writers {
            total += w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        Ok(total)
    })?;
    let sample =
        Sample { secs: start.elapsed().as_secs_f64(), cpu: cpu_secs() - cpu0, bytes: received };
    if received != size {
        bail!("received {received} of {size} bytes");
    }
    if let Some(o) = out {
        drop(o);
        std::fs::remove_file(out_path(&a.file))?;
    }
    Ok(sample)
}

/// Receives one stream's frames by splicing each payload into `out` at its offset.
fn splice_stream(sock: &TcpStream, out: &File) -> Result<u64> {
    let (pipe_r, pipe_w) = rustix::pipe::pipe()?;
    let pipe_bytes = rustix::pipe::fcntl_setpipe_size(&pipe_w, 1 << 20).unwrap_or(64 << 10);
    let mut total = 0;
    let mut raw = [0u8; FRAME_HEADER_BYTES];
    loop {
        let mut got = 0;
        while got < raw.len() {
            let (_, n) = rustix::net::recv(sock, &mut raw[got..], rustix::net::RecvFlags::WAITALL)?;
            if n == 0 {
                bail!("closed before End");
            }
            got += n;
        }
        let h = FrameHeader::decode(&raw, 64 << 20)?;
        if h.kind == FrameKind::End {
            return Ok(total);
        }
        let mut left = u64::from(h.len_bytes);
        let mut off = h.offset_bytes;
        while left > 0 {
            let want = (left as usize).min(pipe_bytes);
            let n = rustix::pipe::splice(
                sock.as_fd(),
                None,
                &pipe_w,
                None,
                want,
                SpliceFlags::MOVE | SpliceFlags::MORE,
            )?;
            if n == 0 {
                bail!("closed mid-frame");
            }
            let mut drained = 0;
            while drained < n {
                drained += rustix::pipe::splice(
                    &pipe_r,
                    None,
                    out,
                    Some(&mut off),
                    n - drained,
                    SpliceFlags::MOVE,
                )?;
            }
            left -= n as u64;
        }
        total += u64::from(h.len_bytes);
    }
}

fn receive_once(a: &Args) -> Result<Sample> {
    let mut cfg = config(a);
    cfg.payload = PayloadPref::FileRegion;
    let file = Arc::new(File::open(&a.file)?);
    let size = file.metadata()?.len();
    let out = File::options().create(true).write(true).truncate(true).open(out_path(&a.file))?;
    out.set_len(size)?;
    let (send_side, recv_side) = streams(&cfg)?;
    let tx = TcpSender::new(send_side, &cfg)?;
    let rx = if a.mode == "splice" {
        None
    } else {
        Some(TcpReceiver::new(recv_side.clone_all()?, &cfg)?)
    };
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let received = std::thread::scope(|s| -> Result<u64> {
        // Readers and finish on their own thread: the receivers only end after finish.
        let feeder = s.spawn(|| -> Result<()> {
            let readers: Vec<_> = (0..a.readers)
                .map(|_| {
                    s.spawn(|| {
                        read_and_send(
                            &tx,
                            &file,
                            size,
                            u64::from(a.chunk_bytes),
                            &next,
                            a.source == "mem",
                        )
                    })
                })
                .collect();
            for r in readers {
                r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
            }
            tx.finish()?;
            Ok(())
        });
        let total = match &rx {
            None => {
                let hs: Vec<_> =
                    recv_side.iter().map(|sock| s.spawn(|| splice_stream(sock, &out))).collect();
                let mut t = 0;
                for h in hs {
                    t += h.join().map_err(|_| anyhow::anyhow!("splicer panicked"))??;
                }
                t
            }
            Some(rx) => {
                let sink = if a.mode == "pooled-verify" { "shm" } else { "write" };
                let hs: Vec<_> = (0..a.writers)
                    .map(|_| s.spawn(|| write_frames(rx, sink, Some(&out))))
                    .collect();
                let mut t = 0;
                for h in hs {
                    t += h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
                }
                t
            }
        };
        feeder.join().map_err(|_| anyhow::anyhow!("feeder panicked"))??;
        Ok(total)
    })?;
    let sample =
        Sample { secs: start.elapsed().as_secs_f64(), cpu: cpu_secs() - cpu0, bytes: received };
    drop(out);
    if received != size {
        bail!("received {received} of {size} bytes");
    }
    // Spot-check the result against the source.
    if file_digest(&out_path(&a.file))? != file_digest(&a.file)? {
        bail!("output differs from the source");
    }
    std::fs::remove_file(out_path(&a.file))?;
    Ok(sample)
}

fn main() -> Result<()> {
    let a = parse()?;
    let label = match a.cmd.as_str() {
        "transport" => format!(
            "transport streams={} chunk={}MiB payload={:?} source={} sink={} readers={} writers={}",
            a.streams,
            a.chunk_bytes >> 20,
            a.payload,
            a.source,
            a.sink,
            a.readers,
            a.writers
        ),
        "receive" => format!(
            "receive streams={} chunk={}MiB mode={}",
            a.streams,
            a.chunk_bytes >> 20,
            a.mode
        ),
        other => bail!("unknown command {other}"),
    };
    let mut samples = Vec::new();
    for _ in 0..a.runs {
        let s = if a.cmd == "transport" { transport_once(&a)? } else { receive_once(&a)? };
        let gb = s.bytes as f64 / 1e9;
        println!(
            "  run: {:.2} GB/s  {:.3} CPU-s/GB  ({:.2} s wall, {:.2} CPU-s)",
            gb / s.secs,
            s.cpu / gb,
            s.secs,
            s.cpu
        );
        samples.push(s);
    }
    samples.sort_by(|x, y| x.secs.total_cmp(&y.secs));
    let med = &samples[samples.len() / 2];
    let best = &samples[0];
    let gb = best.bytes as f64 / 1e9;
    println!(
        "{label}: median {:.2} GB/s {:.3} CPU-s/GB | best {:.2} GB/s {:.3} CPU-s/GB",
        gb / med.secs,
        med.cpu / gb,
        gb / best.secs,
        best.cpu / gb
    );
    Ok(())
}
