//! Helpers shared by the integration tests: connected pairs over loopback, and a frame-aware
//! TCP proxy that breaks or freezes the link on cue.

// Each test file uses a different subset of these helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blitx_core::frame::{FRAME_HEADER_BYTES, FrameHeader, FrameKind, checksum};
use blitx_core::transport::{Frame, FrameSender, Payload};
use blitx_transport_tcp::handshake::{ACK_BYTES, HELLO_BYTES};
use blitx_transport_tcp::{
    DataListener, SessionToken, TcpConfig, TcpReceiver, TcpSender, connect_streams,
};

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Connected stream sets: (the daemon's accepted streams, the client's connected streams).
pub fn stream_sets(cfg: &TcpConfig) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let listener = DataListener::bind(LOCALHOST, cfg).unwrap();
    let addr = listener.local_addr();
    let token = SessionToken::random().unwrap();
    let client = {
        let (token, cfg) = (token.clone(), cfg.clone());
        std::thread::spawn(move || {
            connect_streams(addr, &token, cfg.streams, SETUP_TIMEOUT, &cfg).unwrap()
        })
    };
    let daemon =
        listener.accept_streams(&token, cfg.streams, Instant::now() + SETUP_TIMEOUT).unwrap();
    (daemon, client.join().unwrap())
}

/// A connected pair; `daemon_sends` picks pull (daemon sends) or push (client sends).
pub fn pair(cfg: &TcpConfig, daemon_sends: bool) -> (TcpSender, TcpReceiver) {
    let (daemon, client) = stream_sets(cfg);
    let (send_side, recv_side) = if daemon_sends { (daemon, client) } else { (client, daemon) };
    (TcpSender::new(send_side, cfg).unwrap(), TcpReceiver::new(recv_side, cfg).unwrap())
}

/// What the proxy does to the link.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Resets every connection once this many frames (all streams together) went through.
    BreakAfterFrames(u64),
    /// Stops forwarding (but keeps every connection open) once this many bytes after the
    /// handshakes went through, all streams together.
    FreezeAfterBytes(u64),
}

/// A proxy between a client (the sending side) and a `DataListener`.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    threads: Vec<JoinHandle<()>>,
}

struct ProxyState {
    fault: Fault,
    frames: AtomicU64,
    bytes: AtomicU64,
    tripped: AtomicBool,
    stopped: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

impl ProxyState {
    fn trip(&self) {
        if self.tripped.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Fault::BreakAfterFrames(_) = self.fault {
            for s in self.sockets.lock().unwrap().iter() {
                // Linger 0: the close that follows sends RST, like a crashed host's stack.
                let _ = rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO));
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Proxy {
    pub fn start(upstream: SocketAddr, streams: u32, fault: Fault) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            fault,
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let proxy_state = Arc::clone(&state);
        let acceptor = std::thread::spawn(move || {
            let mut workers = Vec::new();
            for _ in 0..streams {
                let Ok((client, _)) = listener.accept() else { return };
                let server = TcpStream::connect(upstream).unwrap();
                {
                    let mut all = state.sockets.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let st = Arc::clone(&state);
                workers.push(std::thread::spawn(move || forward_frames(client, server, &st)));
                let st = Arc::clone(&state);
                workers.push(std::thread::spawn(move || forward_raw(s2, c2, &st)));
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Proxy { addr, state: proxy_state, threads: vec![acceptor] }
    }

    /// Closes everything (ends a frozen link) and waits for the proxy's threads.
    pub fn stop(self) {
        self.state.stopped.store(true, Ordering::Release);
        for s in self.state.sockets.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Copies bytes (the handshake ack) until either side closes.
fn forward_raw(mut from: TcpStream, mut to: TcpStream, state: &ProxyState) {
    let mut buf = [0u8; ACK_BYTES];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || state.tripped.load(Ordering::Acquire) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Copies the hello, then frame by frame, applying the fault.
fn forward_frames(mut from: TcpStream, mut to: TcpStream, state: &ProxyState) {
    let mut hello = [0u8; HELLO_BYTES];
    if from.read_exact(&mut hello).is_err() || to.write_all(&hello).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut in_frame_left = 0u64;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut header_filled = 0;
    loop {
        if state.tripped.load(Ordering::Acquire) {
            if matches!(state.fault, Fault::FreezeAfterBytes(_)) {
                // Hold the connections open and silent until the test stops the proxy.
                std::thread::sleep(Duration::from_millis(20));
                if state.stopped.load(Ordering::Acquire) {
                    break;
                }
                continue;
            }
            break;
        }
        let want = if in_frame_left > 0 {
            in_frame_left.min(buf.len() as u64) as usize
        } else {
            FRAME_HEADER_BYTES - header_filled
        };
        let want = match state.fault {
            Fault::FreezeAfterBytes(limit) => {
                let done = state.bytes.load(Ordering::Acquire);
                if done >= limit {
                    state.trip();
                    continue;
                }
                want.min((limit - done) as usize)
            }
            Fault::BreakAfterFrames(_) => want,
        };
        let target: &mut [u8] = if in_frame_left > 0 {
            &mut buf[..want]
        } else {
            &mut header[header_filled..header_filled + want]
        };
        let n = match from.read(target) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk =
            if in_frame_left > 0 { &buf[..n] } else { &header[header_filled..header_filled + n] };
        if to.write_all(chunk).is_err() {
            break;
        }
        state.bytes.fetch_add(n as u64, Ordering::AcqRel);
        let frame_done = if in_frame_left > 0 {
            in_frame_left -= n as u64;
            in_frame_left == 0
        } else {
            header_filled += n;
            if header_filled < FRAME_HEADER_BYTES {
                false
            } else {
                header_filled = 0;
                in_frame_left =
                    u64::from(u32::from_le_bytes([header[4], header[5], header[6], header[7]]));
                in_frame_left == 0
            }
        };
        if frame_done {
            let frames = state.frames.fetch_add(1, Ordering::AcqRel) + 1;
            if let Fault::BreakAfterFrames(limit) = state.fault
                && frames >= limit
            {
                state.trip();
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A sender and receiver whose link goes through `Proxy` with `fault` (client sends).
pub fn faulty_pair(cfg: &TcpConfig, fault: Fault) -> (TcpSender, TcpReceiver, Proxy) {
    let listener = DataListener::bind(LOCALHOST, cfg).unwrap();
    let proxy = Proxy::start(listener.local_addr(), cfg.streams, fault);
    let token = SessionToken::random().unwrap();
    let client = {
        let (token, cfg, addr) = (token.clone(), cfg.clone(), proxy.addr);
        std::thread::spawn(move || {
            connect_streams(addr, &token, cfg.streams, SETUP_TIMEOUT, &cfg).unwrap()
        })
    };
    let daemon =
        listener.accept_streams(&token, cfg.streams, Instant::now() + SETUP_TIMEOUT).unwrap();
    let sender = TcpSender::new(client.join().unwrap(), cfg).unwrap();
    let receiver = TcpReceiver::new(daemon, cfg).unwrap();
    (sender, receiver, proxy)
}

/// A chunk frame filled with a pattern derived from `id`, leased from the sender's pool.
pub fn chunk(tx: &dyn FrameSender, id: u64, len: usize) -> Frame {
    let mut lease = tx.pool().acquire().unwrap();
    for (i, b) in lease.full_mut()[..len].iter_mut().enumerate() {
        *b = (id as usize * 7 + i * 13) as u8;
    }
    lease.set_len(len);
    let header = FrameHeader {
        kind: FrameKind::Chunk,
        flags: 0,
        file_id: id,
        offset_bytes: 0,
        len_bytes: len as u32,
        checksum: checksum(lease.data()),
    };
    Frame { header, payload: Payload::Buffer(lease) }
}

/// Checks a received frame's payload against its header.
pub fn verify(frame: &Frame) {
    match &frame.payload {
        Payload::Buffer(lease) => {
            assert_eq!(lease.len(), frame.header.len_bytes as usize);
            frame.header.verify(lease.data()).unwrap();
        }
        Payload::Empty => assert_eq!(frame.header.len_bytes, 0),
        Payload::File(_) => panic!("a network receiver never hands out file regions"),
        Payload::Stream(_) => panic!("test_config's receivers deliver buffers"),
    }
}

/// A configuration with a short stall timeout so broken tests fail fast instead of hanging.
pub fn test_config(streams: u32, chunk_bytes: u32) -> TcpConfig {
    let mut cfg = TcpConfig::new(streams, chunk_bytes);
    cfg.stall_timeout = Duration::from_secs(10);
    // These tests look at whole payloads; `frames.rs` tests lent ones on their own.
    cfg.delivery = blitx_transport_tcp::Delivery::Buffered;
    cfg
}
