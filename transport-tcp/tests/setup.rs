//! Session set-up: who gets in, who does not, and that the session survives those who do not.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blitx_core::transport::{FrameReceiver, FrameSender};
use blitx_transport_tcp::handshake::{HELLO_BYTES, Hello};
use blitx_transport_tcp::{
    DataListener, SessionToken, SetupError, TcpReceiver, TcpSender, connect_streams,
};

use common::{LOCALHOST, SETUP_TIMEOUT, chunk, test_config, verify};

/// Collects log output so tests can check what the daemon logged.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn with_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    (out, logs.text())
}

/// True when the listener closed the connection without acknowledging it.
fn closed_without_ack(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Moves a few frames through a freshly set-up session and ends it.
fn exercise(tx: TcpSender, rx: TcpReceiver) {
    let t = std::thread::spawn(move || {
        for id in 0..8 {
            tx.send(chunk(&tx, id, 100_000)).unwrap();
        }
        tx.finish().unwrap();
        tx.stats()
    });
    let mut n = 0;
    while let Some(f) = rx.recv().unwrap() {
        verify(&f);
        n += 1;
    }
    assert_eq!(n, 8);
    let stats = t.join().unwrap();
    assert_eq!(stats.name, "tcp");
    assert_eq!(stats.payload_bytes, 800_000);
}

#[test]
fn wrong_token_and_garbage_are_refused_while_the_session_completes() {
    let cfg = test_config(2, 1 << 20);
    let listener = DataListener::bind(LOCALHOST, &cfg).unwrap();
    let addr = listener.local_addr();
    let token = SessionToken::random().unwrap();
    let client = {
        let (token, cfg) = (token.clone(), cfg.clone());
        std::thread::spawn(move || {
            // A connection that says nothing is still pending while the session completes.
            let _silent = TcpStream::connect(addr).unwrap();
            // Wrong token: refused, and the client is told so.
            let wrong = SessionToken::random().unwrap();
            let err = connect_streams(addr, &wrong, 2, SETUP_TIMEOUT, &cfg).unwrap_err();
            assert!(matches!(err, SetupError::Refused { .. }), "{err}");
            // Garbage of the right length, and a short garbage line followed by a close.
            let mut g = TcpStream::connect(addr).unwrap();
            g.write_all(&[b'x'; HELLO_BYTES]).unwrap();
            assert!(closed_without_ack(g));
            let mut g = TcpStream::connect(addr).unwrap();
            g.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            drop(g);
            // A right token with the wrong stream count.
            let bad_count = Hello { stream_index: 0, stream_count: 3, token: *token.as_bytes() };
            let mut g = TcpStream::connect(addr).unwrap();
            g.write_all(&bad_count.encode()).unwrap();
            assert!(closed_without_ack(g));
            connect_streams(addr, &token, 2, SETUP_TIMEOUT, &cfg).unwrap()
        })
    };
    let (accepted, logs) =
        with_logs(|| listener.accept_streams(&token, 2, Instant::now() + SETUP_TIMEOUT).unwrap());
    let connected = client.join().unwrap();
    assert_eq!(accepted.len(), 2);
    assert!(logs.contains("refused a data connection"), "{logs}");
    assert!(logs.contains("wrong session token"), "{logs}");
    assert!(logs.contains("bad magic"), "{logs}");
    assert!(logs.contains("does not match the session"), "{logs}");
    assert!(logs.contains("peer=127.0.0.1:"), "the peer address is logged: {logs}");
    // The session with the right token works end to end.
    exercise(TcpSender::new(connected, &cfg).unwrap(), TcpReceiver::new(accepted, &cfg).unwrap());
}

/// Row 9 of the hardening review: 500 idle connections on a session's data port (the pending
/// cap was 128, and newcomers beyond it were closed) shut the real streams out.
#[test]
fn idle_connections_on_the_data_port_do_not_shut_out_the_session() {
    let cfg = test_config(4, 1 << 20);
    let listener = DataListener::bind(LOCALHOST, &cfg).unwrap();
    let addr = listener.local_addr();
    let token = SessionToken::random().unwrap();
    let client = {
        let (token, cfg) = (token.clone(), cfg.clone());
        std::thread::spawn(move || {
            let idle: Vec<TcpStream> =
                (0..500).map(|_| TcpStream::connect(addr).unwrap()).collect();
            let streams = connect_streams(addr, &token, 4, SETUP_TIMEOUT, &cfg).unwrap();
            (idle, streams)
        })
    };
    let accepted = listener.accept_streams(&token, 4, Instant::now() + SETUP_TIMEOUT).unwrap();
    let (_idle, connected) = client.join().unwrap();
    assert_eq!(accepted.len(), 4);
    exercise(TcpSender::new(connected, &cfg).unwrap(), TcpReceiver::new(accepted, &cfg).unwrap());
}

#[test]
fn a_stream_index_is_admitted_once() {
    let cfg = test_config(2, 1 << 20);
    let listener = DataListener::bind(LOCALHOST, &cfg).unwrap();
    let addr = listener.local_addr();
    let token = SessionToken::random().unwrap();
    let hello = Hello { stream_index: 0, stream_count: 2, token: *token.as_bytes() };
    let t = std::thread::spawn(move || {
        let mut first = TcpStream::connect(addr).unwrap();
        first.write_all(&hello.encode()).unwrap();
        let mut ack = [0u8; 8];
        first.read_exact(&mut ack).unwrap();
        let mut dup = TcpStream::connect(addr).unwrap();
        dup.write_all(&hello.encode()).unwrap();
        assert!(closed_without_ack(dup));
        let mut second = TcpStream::connect(addr).unwrap();
        let hello1 = Hello { stream_index: 1, ..hello };
        second.write_all(&hello1.encode()).unwrap();
        second.read_exact(&mut ack).unwrap();
        (first, second)
    });
    let (accepted, logs) =
        with_logs(|| listener.accept_streams(&token, 2, Instant::now() + SETUP_TIMEOUT).unwrap());
    let (first, second) = t.join().unwrap();
    assert_eq!(accepted[0].peer_addr().unwrap(), first.local_addr().unwrap());
    assert_eq!(accepted[1].peer_addr().unwrap(), second.local_addr().unwrap());
    assert!(logs.contains("stream 0 is already connected"), "{logs}");
}

#[test]
fn listener_binds_the_requested_address_only() {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let cfg = test_config(1, 1 << 20);
    let listener = DataListener::bind(ip, &cfg).unwrap();
    let addr = listener.local_addr();
    assert_eq!(addr.ip(), ip);
    assert_ne!(addr.port(), 0);
    // Not a wildcard: the same port on another loopback address has nobody listening.
    assert!(TcpStream::connect(SocketAddr::new(LOCALHOST, addr.port())).is_err());
    let token = SessionToken::random().unwrap();
    let t = {
        let (token, cfg) = (token.clone(), cfg.clone());
        std::thread::spawn(move || connect_streams(addr, &token, 1, SETUP_TIMEOUT, &cfg).unwrap())
    };
    let accepted = listener.accept_streams(&token, 1, Instant::now() + SETUP_TIMEOUT).unwrap();
    let connected = t.join().unwrap();
    assert_eq!(accepted[0].local_addr().unwrap().ip(), ip);
    exercise(TcpSender::new(accepted, &cfg).unwrap(), TcpReceiver::new(connected, &cfg).unwrap());
}

#[test]
fn connecting_to_nobody_fails_cleanly() {
    // Bind and drop: the port is (almost certainly) closed now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let token = SessionToken::random().unwrap();
    let cfg = test_config(1, 1 << 20);
    let err = connect_streams(addr, &token, 1, Duration::from_secs(2), &cfg).unwrap_err();
    assert!(matches!(err, SetupError::Connect { stream: 0, .. }), "{err}");
}

#[test]
fn stream_count_mismatch_is_a_config_error() {
    let cfg = test_config(2, 1 << 20);
    let (daemon, _client) = common::stream_sets(&cfg);
    let mut other = cfg.clone();
    other.streams = 3;
    other.pool_slots = 16;
    assert!(matches!(
        TcpReceiver::new(daemon, &other).err().unwrap(),
        SetupError::Config(blitx_transport_tcp::ConfigError::StreamCount {
            connected: 2,
            configured: 3
        })
    ));
}

#[test]
fn accept_is_woken_by_cancel_not_by_its_deadline() {
    let cfg = test_config(1, 64 << 10);
    let listener =
        DataListener::bind(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), &cfg).unwrap();
    let token = SessionToken::random().unwrap();
    let cancel = blitx_core::cancel::Cancel::new();
    let c = cancel.clone();
    let firing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c.fire();
    });
    let start = Instant::now();
    let err = listener
        .accept_streams_or_cancel(&token, 1, Instant::now() + Duration::from_secs(60), &cancel)
        .unwrap_err();
    assert!(matches!(err, SetupError::Cancelled { .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    firing.join().unwrap();
}
