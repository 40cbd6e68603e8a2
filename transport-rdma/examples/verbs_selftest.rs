//! RDMA verbs self-test: streams a verified WRITE_WITH_IMM + credit workload.
//!
//! ```text
//! verbs_selftest [OPTIONS]                  both sides in this process (same device)
//! verbs_selftest --listen PORT [OPTIONS]    receiver; waits for one sender
//! verbs_selftest --connect IP:PORT [OPTS]   sender
//! verbs_selftest --discover                 print the devices as JSON
//!
//! --device NAME      device (default: the first with an ACTIVE port)
//! --gid-index N      source GID index (default: RoCE v2 + IPv4-mapped first)
//! --slot-kib N       slot size in KiB (default 1024)
//! --slots N          slots per region (default 16)
//! --window N         outstanding WRITEs (default 8)
//! --total-mib N      bytes to stream, MiB (default 64)
//! --cq-mode M        busy | event (default busy)
//! --stall-s N        fail after N s without a completion (default 30)
//! --expect-error K   succeed only if the run fails with K: memlock-too-low | unavailable
//! --require          no RDMA is a failure (exit 1), not a skip (exit 77);
//!                    also BLIT_RDMA_REQUIRE=1
//! ```
//!
//! Exit status: 0 verified, 1 failed, 2 usage, 77 skipped (no RDMA here; the
//! reason is printed). The control channel of the two-process mode is one
//! JSON object per line over TCP.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitx_transport_rdma::selftest::{
    Receiver, ReceiverAdvert, SelftestError, Sender, SenderHello, StreamConfig, StreamReport,
    run_loopback,
};
use blitx_transport_rdma::{Context, CqMode, Error, ProtectionDomain, discover};
use serde::{Deserialize, Serialize};

const EXIT_SKIP: u8 = 77;
/// How long the control channel waits for the peer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest control line accepted from the peer.
const CONTROL_LINE_MAX_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Success,
    MemlockTooLow,
    Unavailable,
}

#[derive(Debug)]
enum Mode {
    Loopback,
    Listen(u16),
    Connect(String),
    Discover,
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    device: Option<String>,
    cfg: StreamConfig,
    expect: Expect,
    require: bool,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("verbs_selftest: {msg} (see the header of examples/verbs_selftest.rs)");
    ExitCode::from(2)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: Mode::Loopback,
        device: None,
        cfg: StreamConfig::default(),
        expect: Expect::Success,
        require: std::env::var("BLIT_RDMA_REQUIRE").is_ok_and(|v| v == "1"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--discover" => args.mode = Mode::Discover,
            "--listen" => {
                let port = value()?;
                args.mode = Mode::Listen(port.parse().map_err(|_| format!("bad port {port}"))?);
            }
            "--connect" => args.mode = Mode::Connect(value()?),
            "--device" => args.device = Some(value()?),
            "--gid-index" => args.cfg.gid_index = Some(num(value()?)? as u32),
            "--slot-kib" => args.cfg.slot_bytes = (num(value()?)? as usize) << 10,
            "--slots" => args.cfg.slots = num(value()?)? as usize,
            "--window" => args.cfg.window = num(value()?)? as usize,
            "--total-mib" => args.cfg.total_bytes = num(value()?)? << 20,
            "--stall-s" => args.cfg.stall_timeout = Duration::from_secs(num(value()?)?),
            "--cq-mode" => {
                args.cfg.cq_mode = match value()?.as_str() {
                    "busy" => CqMode::BusyPoll,
                    "event" => CqMode::Event,
                    other => return Err(format!("--cq-mode: busy or event, not {other}")),
                }
            }
            "--expect-error" => {
                args.expect = match value()?.as_str() {
                    "memlock-too-low" => Expect::MemlockTooLow,
                    "unavailable" => Expect::Unavailable,
                    other => return Err(format!("--expect-error: unknown kind {other}")),
                }
            }
            "--require" => args.require = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    args.cfg.validate().map_err(|e| e.to_string())?;
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => return usage(&msg),
    };
    let started = Instant::now();
    let outcome = match &args.mode {
        Mode::Discover => return discover_json(args.require),
        Mode::Loopback => loopback(&args),
        Mode::Listen(port) => listen(&args, *port),
        Mode::Connect(addr) => connect(&args, addr),
    };
    finish(&args, outcome, started)
}

fn finish(
    args: &Args,
    outcome: Result<Vec<StreamReport>, SelftestError>,
    started: Instant,
) -> ExitCode {
    let wall = started.elapsed().as_secs_f64();
    match (outcome, args.expect) {
        (Ok(reports), Expect::Success) => {
            // loopback: both reports are this process's; two-process: [own, peer's]
            let own = if matches!(args.mode, Mode::Loopback) { reports.len() } else { 1 };
            for (i, r) in reports.iter().enumerate() {
                let tag = if i < own { "OK" } else { "PEER" };
                println!(
                    "{tag} {}: {} messages, {} bytes verified in {:.3} s = {:.1} MiB/s \
                     (credits: {} = {} inline + {} registered)",
                    r.role,
                    r.messages,
                    r.bytes,
                    r.elapsed_s,
                    r.mib_per_s,
                    r.credit_messages,
                    r.inline_credits,
                    r.registered_credits
                );
                println!(
                    "   local QP {} gid {} (index {}), remote QP {} gid {}; target region addr {:#x} rkey {:#x}",
                    r.local.qpn,
                    r.local.gid,
                    r.local.gid_index,
                    r.remote.qpn,
                    r.remote.gid,
                    r.target_region.addr,
                    r.target_region.rkey
                );
                if i < own {
                    println!("RESULT {}", serde_json::to_string(r).unwrap_or_default());
                }
            }
            println!("verbs_selftest: PASS ({wall:.1} s wall)");
            ExitCode::SUCCESS
        }
        (Err(SelftestError::Verbs(e)), expect)
            if e.is_unavailable() && expect != Expect::MemlockTooLow =>
        {
            if expect == Expect::Unavailable {
                println!("verbs_selftest: PASS (expected unavailable: {e})");
                ExitCode::SUCCESS
            } else if args.require {
                eprintln!("verbs_selftest: FAIL: RDMA required but unavailable: {e} [{e:?}]");
                ExitCode::FAILURE
            } else {
                println!(
                    "verbs_selftest: SKIPPED: no usable RDMA on this host: {e} [{}]",
                    variant(&e)
                );
                ExitCode::from(EXIT_SKIP)
            }
        }
        (Err(SelftestError::Verbs(e @ Error::MemlockTooLow { .. })), Expect::MemlockTooLow) => {
            println!("verbs_selftest: PASS (expected MemlockTooLow): {e}");
            ExitCode::SUCCESS
        }
        (Ok(_), expect) => {
            eprintln!(
                "verbs_selftest: FAIL: expected an error ({expect:?}), but the run succeeded"
            );
            ExitCode::FAILURE
        }
        (Err(e), _) => {
            eprintln!("verbs_selftest: FAIL: {e}");
            eprintln!("   detail: {e:?}");
            ExitCode::FAILURE
        }
    }
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::LibraryMissing { .. } => "LibraryMissing",
        Error::SymbolMissing { .. } => "SymbolMissing",
        Error::Unsupported { .. } => "Unsupported",
        Error::NoDevice { .. } => "NoDevice",
        Error::DeviceNotFound { .. } => "DeviceNotFound",
        Error::PortDown { .. } => "PortDown",
        Error::NoGid { .. } => "NoGid",
        _ => "other",
    }
}

fn discover_json(require: bool) -> ExitCode {
    match discover() {
        Ok(devices) => {
            match serde_json::to_string_pretty(&devices) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("verbs_selftest: cannot print JSON: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_unavailable() && !require => {
            println!("verbs_selftest: SKIPPED: no usable RDMA on this host: {e} [{}]", variant(&e));
            ExitCode::from(EXIT_SKIP)
        }
        Err(e) => {
            eprintln!("verbs_selftest: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(args: &Args) -> Result<Arc<Context>, Error> {
    let ctx = match &args.device {
        Some(name) => Context::open(name)?,
        None => Context::open_first_active()?,
    };
    let port = ctx.query_port(args.cfg.port_num)?;
    let chosen = port.chosen_gid();
    println!(
        "device {} port {}: {} mtu {} link {} gid[{}] {} ({} GIDs)",
        ctx.name(),
        port.port_num,
        port.state,
        port.active_mtu.map_or_else(|| "?".to_owned(), |m| m.to_string()),
        port.link_layer,
        chosen.map_or(0, |g| g.index),
        chosen.map_or_else(|| "-".to_owned(), |g| g.gid.to_string()),
        port.gids.len()
    );
    Ok(ctx)
}

fn loopback(args: &Args) -> Result<Vec<StreamReport>, SelftestError> {
    let ctx = open(args)?;
    let (tx, rx) = run_loopback(&ctx, &args.cfg)?;
    Ok(vec![tx, rx])
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Control {
    Advert(ReceiverAdvert),
    Hello(SenderHello),
    Ready,
    Done(Box<StreamReport>),
    Failed(String),
}

struct Channel {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Channel {
    fn new(stream: TcpStream) -> Result<Self, SelftestError> {
        let io = |e: std::io::Error| SelftestError::Protocol(format!("control channel: {e}"));
        stream.set_read_timeout(Some(CONTROL_TIMEOUT)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Channel { reader: BufReader::new(stream), writer })
    }

    fn send(&mut self, msg: &Control) -> Result<(), SelftestError> {
        let mut line =
            serde_json::to_string(msg).map_err(|e| SelftestError::Protocol(e.to_string()))?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| SelftestError::Protocol(format!("control channel send: {e}")))
    }

    fn recv(&mut self) -> Result<Control, SelftestError> {
        let mut line = String::new();
        let mut limited = (&mut self.reader).take(CONTROL_LINE_MAX_BYTES as u64);
        let n = limited
            .read_line(&mut line)
            .map_err(|e| SelftestError::Protocol(format!("control channel receive: {e}")))?;
        if n == 0 {
            return Err(SelftestError::Protocol("peer closed the control channel".into()));
        }
        match serde_json::from_str(line.trim_end()) {
            Ok(Control::Failed(why)) => Err(SelftestError::Protocol(format!("peer failed: {why}"))),
            Ok(msg) => Ok(msg),
            Err(e) => Err(SelftestError::Protocol(format!("bad control message ({e})"))),
        }
    }
}

fn accept_one(port: u16) -> Result<TcpStream, SelftestError> {
    let io = |e: std::io::Error| SelftestError::Protocol(format!("listen on port {port}: {e}"));
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    println!("listening on port {port}");
    let deadline = Instant::now() + CONTROL_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                println!("control connection from {peer}");
                stream.set_nonblocking(false).map_err(io)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io(e)),
        }
    }
}

/// Receiver: advertises its slots, connects to the sender, verifies.
fn listen(args: &Args, port: u16) -> Result<Vec<StreamReport>, SelftestError> {
    let ctx = open(args)?;
    let pd = ProtectionDomain::new(&ctx)?;
    let mut receiver = Receiver::new(&pd, &args.cfg)?;
    let mut chan = Channel::new(accept_one(port)?)?;
    let result = (|| {
        chan.send(&Control::Advert(receiver.advert()))?;
        let Control::Hello(hello) = chan.recv()? else {
            return Err(SelftestError::Protocol("expected hello".into()));
        };
        receiver.connect(&hello)?;
        check_distinct(&receiver.advert().qp.gid, &hello.qp.gid);
        chan.send(&Control::Ready)?;
        let report = receiver.run()?;
        chan.send(&Control::Done(Box::new(report.clone())))?;
        let Control::Done(peer) = chan.recv()? else {
            return Err(SelftestError::Protocol("expected the sender's report".into()));
        };
        Ok(vec![report, *peer])
    })();
    if let Err(e) = &result {
        let _ = chan.send(&Control::Failed(e.to_string()));
    }
    result
}

/// Sender: reads the advert, connects, streams.
fn connect(args: &Args, addr: &str) -> Result<Vec<StreamReport>, SelftestError> {
    let ctx = open(args)?;
    let pd = ProtectionDomain::new(&ctx)?;
    let mut sender = Sender::new(&pd, &args.cfg)?;
    let stream = connect_retrying(addr)?;
    let mut chan = Channel::new(stream)?;
    let result = (|| {
        let Control::Advert(advert) = chan.recv()? else {
            return Err(SelftestError::Protocol("expected the receiver's advert".into()));
        };
        sender.connect(&advert)?;
        chan.send(&Control::Hello(sender.hello()))?;
        let Control::Ready = chan.recv()? else {
            return Err(SelftestError::Protocol("expected ready".into()));
        };
        check_distinct(&sender.hello().qp.gid, &advert.qp.gid);
        let report = sender.run()?;
        let Control::Done(peer) = chan.recv()? else {
            return Err(SelftestError::Protocol("expected the receiver's report".into()));
        };
        chan.send(&Control::Done(Box::new(report.clone())))?;
        Ok(vec![report, *peer])
    })();
    if let Err(e) = &result {
        let _ = chan.send(&Control::Failed(e.to_string()));
    }
    result
}

fn check_distinct(local: &blitx_transport_rdma::Gid, remote: &blitx_transport_rdma::Gid) {
    if local == remote {
        println!("note: local and remote GID are the same ({local}): same-device loopback");
    } else {
        println!("local GID {local} != remote GID {remote}: two devices");
    }
}

fn connect_retrying(addr: &str) -> Result<TcpStream, SelftestError> {
    let deadline = Instant::now() + CONTROL_TIMEOUT;
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() < deadline => {
                tracing_free_note(&e);
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(SelftestError::Protocol(format!("connect to {addr}: {e}"))),
        }
    }
}

fn tracing_free_note(e: &std::io::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| println!("waiting for the receiver ({e})"));
}
