//! Establishing a session's data connections, independent of which end will send.
//!
//! The daemon always listens ([`DataListener`]); the client always connects
//! ([`connect_streams`]). Either may then become the [`crate::TcpSender`] (pull) or the
//! [`crate::TcpReceiver`] (push). Every connection proves it belongs to the session by
//! presenting the one-time [`SessionToken`] in its [`Hello`]; anything else is closed, logged
//! with the peer's address, and does not disturb the session, which keeps waiting for its
//! streams until its deadline. Once all streams arrived the listener is closed.
//!
//! Handshakes are read without blocking, from one thread, with `poll`: a peer that connects and
//! says nothing costs one socket until its handshake timeout, never the session its streams.
//! When more connections wait for their handshake than [`PENDING_MAX`], the one that has waited
//! longest is closed to make room: a flood of idle connections on the data port delays a real
//! stream by at most one poll round (its hello is read right after accept), never shuts it out.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use blitx_core::cancel::Cancel;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::config::{STREAMS_MAX, TcpConfig};
use crate::error::{ConfigError, SetupError};
use crate::handshake::{self, ACK_BYTES, HELLO_BYTES, HandshakeError, Hello};
use crate::token::SessionToken;
use crate::tune;

/// How long one connection may take to send its hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose hello is still incomplete, at most; beyond it the oldest is closed.
const PENDING_MAX: usize = 2 * STREAMS_MAX as usize;

/// A listening socket for one session's data connections, bound to an ephemeral port.
#[derive(Debug)]
pub struct DataListener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl DataListener {
    /// Listens on `ip`, port 0. The control plane passes its own listening address, so data
    /// connections are reachable exactly where the daemon is (never a wildcard nobody asked
    /// for). An explicit `socket_buffer_bytes` is set here, before any SYN, so accepted
    /// connections inherit it and advertise a window scale that covers it.
    pub fn bind(ip: IpAddr, config: &TcpConfig) -> Result<Self, SetupError> {
        let addr = SocketAddr::new(ip, 0);
        let listener =
            TcpListener::bind(addr).map_err(|source| SetupError::Bind { addr, source })?;
        if let Some(bytes) = config.socket_buffer_bytes {
            tune::set_buffers_before_connect(&listener, bytes)
                .map_err(|source| SetupError::Bind { addr, source })?;
        }
        let local_addr =
            listener.local_addr().map_err(|source| SetupError::Bind { addr, source })?;
        Ok(DataListener { listener, local_addr })
    }

    /// The address (with the port the kernel chose) to tell the peer.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `streams` of them presented `token` with distinct stream
    /// indices, then closes the listener. Returns the streams ordered by index.
    pub fn accept_streams(
        self,
        token: &SessionToken,
        streams: u32,
        deadline: Instant,
    ) -> Result<Vec<TcpStream>, SetupError> {
        self.accept_streams_or_cancel(token, streams, deadline, &Cancel::new())
    }

    /// [`DataListener::accept_streams`], woken by `cancel` (then `SetupError::Cancelled`):
    /// firing it shuts the listening socket down, which wakes the `poll` at once (Linux).
    pub fn accept_streams_or_cancel(
        self,
        token: &SessionToken,
        streams: u32,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<Vec<TcpStream>, SetupError> {
        if !(1..=STREAMS_MAX).contains(&streams) {
            return Err(ConfigError::Streams { streams }.into());
        }
        let addr = self.local_addr;
        let accept_err = |source| SetupError::Accept { addr, source };
        self.listener.set_nonblocking(true).map_err(accept_err)?;
        let _waker = ListenerWaker::register(&self.listener, cancel).map_err(accept_err)?;
        let mut session = Admission { token, slots: (0..streams).map(|_| None).collect() };
        let mut pending: Vec<PendingHello> = Vec::new();
        loop {
            let arrived = session.arrived();
            if arrived == streams {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SetupError::AcceptTimeout { addr, arrived, expected: streams });
            }
            pending.retain(|p| {
                let alive = now < p.deadline;
                if !alive {
                    tracing::warn!(peer = %p.peer, "closed a data connection that sent no complete handshake in time");
                }
                alive
            });
            let wake = pending.iter().map(|p| p.deadline).fold(deadline, Instant::min);
            let ready = poll_ready(&self.listener, &pending, wake - now).map_err(accept_err)?;
            if cancel.is_fired() {
                return Err(SetupError::Cancelled { addr });
            }
            // Reverse order, so swap_remove only moves entries already looked at.
            for i in (0..pending.len()).rev() {
                if !ready[i + 1] {
                    continue;
                }
                match pending[i].advance() {
                    Ok(None) => {}
                    Ok(Some(hello)) => {
                        let p = pending.swap_remove(i);
                        session.admit(p, &hello);
                    }
                    Err(reason) => {
                        let p = pending.swap_remove(i);
                        tracing::warn!(peer = %p.peer, %reason, "refused a data connection");
                    }
                }
            }
            if ready[0] {
                accept_ready(&self.listener, &mut pending, &mut session, now)
                    .map_err(accept_err)?;
            }
        }
        // Dropping `self` closes the listener: the token admitted its streams and is spent.
        Ok(session.slots.into_iter().flatten().collect())
    }
}

/// Shuts a listener down when a [`Cancel`] fires, until dropped (then the duplicate it holds
/// is closed and a later firing does nothing).
struct ListenerWaker {
    dup: std::sync::Arc<std::sync::Mutex<Option<TcpListener>>>,
}

impl ListenerWaker {
    fn register(listener: &TcpListener, cancel: &Cancel) -> io::Result<Self> {
        let dup = std::sync::Arc::new(std::sync::Mutex::new(Some(listener.try_clone()?)));
        let held = std::sync::Arc::clone(&dup);
        cancel.on_fire(move || {
            let l = held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(l) = l.as_ref() {
                let _ = rustix::net::shutdown(l, rustix::net::Shutdown::Read);
            }
        });
        Ok(ListenerWaker { dup })
    }
}

impl Drop for ListenerWaker {
    fn drop(&mut self) {
        self.dup.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

/// The session's slots and the token that fills them.
struct Admission<'a> {
    token: &'a SessionToken,
    slots: Vec<Option<TcpStream>>,
}

impl Admission<'_> {
    fn arrived(&self) -> u32 {
        self.slots.iter().filter(|s| s.is_some()).count() as u32
    }

    /// Checks a complete hello against the session; on success acknowledges it and fills the slot.
    fn admit(&mut self, p: PendingHello, hello: &Hello) {
        let verdict = self
            .check(hello)
            .and_then(|()| acknowledge(&p.stream).map_err(|e| format!("cannot acknowledge: {e}")));
        match verdict {
            Ok(()) => {
                tracing::debug!(peer = %p.peer, stream = hello.stream_index, "data stream connected");
                self.slots[usize::from(hello.stream_index)] = Some(p.stream);
            }
            Err(reason) => tracing::warn!(peer = %p.peer, %reason, "refused a data connection"),
        }
    }

    fn check(&self, hello: &Hello) -> Result<(), String> {
        // The token first, so a peer without it learns nothing about the session's shape.
        if !self.token.ct_eq(&hello.token) {
            return Err(HandshakeError::Token.to_string());
        }
        let expected = self.slots.len() as u32;
        if u32::from(hello.stream_count) != expected {
            return Err(
                HandshakeError::CountMismatch { got: hello.stream_count, expected }.to_string()
            );
        }
        if self.slots[usize::from(hello.stream_index)].is_some() {
            return Err(HandshakeError::Duplicate { index: hello.stream_index }.to_string());
        }
        Ok(())
    }
}

fn acknowledge(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    tune::apply_connected(stream)?;
    // A fresh connection's send buffer is empty: these 8 bytes never block.
    let mut s = stream;
    s.write_all(&handshake::encode_ack())
}

/// A connection whose hello has not fully arrived.
struct PendingHello {
    stream: TcpStream,
    peer: SocketAddr,
    buf: [u8; HELLO_BYTES],
    filled: usize,
    deadline: Instant,
}

impl PendingHello {
    /// Reads what is there. `Ok(Some)`: a structurally valid hello; `Err`: refuse the peer.
    fn advance(&mut self) -> Result<Option<Hello>, String> {
        loop {
            let mut s = &self.stream;
            match s.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Err("closed before completing the handshake".into()),
                Ok(n) => {
                    self.filled += n;
                    if self.filled == HELLO_BYTES {
                        return Hello::decode(&self.buf).map(Some).map_err(|e| e.to_string());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Polls the listener and the pending connections; `ready[0]` is the listener.
fn poll_ready(
    listener: &TcpListener,
    pending: &[PendingHello],
    wait: Duration,
) -> io::Result<Vec<bool>> {
    let mut fds = Vec::with_capacity(1 + pending.len());
    fds.push(PollFd::new(listener, PollFlags::IN));
    fds.extend(pending.iter().map(|p| PollFd::new(&p.stream, PollFlags::IN)));
    let timeout = Timespec::try_from(wait).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(fds.iter().map(|f| !f.revents().is_empty()).collect())
}

/// Accepts every connection waiting on the (non-blocking) listener. Real clients send their
/// hello with the connection, so each one's is read right away, before a flood of newer
/// connections could push it out of `pending`.
fn accept_ready(
    listener: &TcpListener,
    pending: &mut Vec<PendingHello>,
    session: &mut Admission<'_>,
    now: Instant,
) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if pending.len() >= PENDING_MAX {
                    // Make room by closing the connection that has waited longest.
                    if let Some(oldest) = (0..pending.len()).min_by_key(|&i| pending[i].deadline) {
                        let old = pending.swap_remove(oldest);
                        tracing::debug!(peer = %old.peer, "too many unfinished handshakes; closed the oldest");
                    }
                }
                // Accepted sockets do not inherit O_NONBLOCK on Linux.
                if let Err(e) = stream.set_nonblocking(true) {
                    tracing::warn!(%peer, error = %e, "closed a data connection");
                    continue;
                }
                let mut p = PendingHello {
                    stream,
                    peer,
                    buf: [0; HELLO_BYTES],
                    filled: 0,
                    deadline: now + HANDSHAKE_TIMEOUT,
                };
                match p.advance() {
                    Ok(None) => pending.push(p),
                    Ok(Some(hello)) => session.admit(p, &hello),
                    Err(reason) => {
                        tracing::warn!(peer = %p.peer, %reason, "refused a data connection")
                    }
                }
                if session.arrived() == session.slots.len() as u32 {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The peer gave up between SYN and accept: its problem, not the session's.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens `streams` data connections to `addr`, each presenting `token` and its index, and
/// waits for the listener to acknowledge every one. Connections are made one after another and
/// the acknowledgements read afterwards, so set-up costs about one RTT per stream plus one.
pub fn connect_streams(
    addr: SocketAddr,
    token: &SessionToken,
    streams: u32,
    timeout: Duration,
    config: &TcpConfig,
) -> Result<Vec<TcpStream>, SetupError> {
    if !(1..=STREAMS_MAX).contains(&streams) {
        return Err(ConfigError::Streams { streams }.into());
    }
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(streams as usize);
    for stream in 0..streams {
        let connect_err = |source: io::Error| {
            if source.kind() == io::ErrorKind::TimedOut {
                SetupError::ConnectTimeout { addr, stream }
            } else {
                SetupError::Connect { addr, stream, source }
            }
        };
        let s = connect_one(addr, deadline, config.socket_buffer_bytes).map_err(connect_err)?;
        tune::apply_connected(&s).map_err(connect_err)?;
        let hello = Hello {
            // In range: `streams` <= STREAMS_MAX <= u16::MAX (checked at compile time in config).
            stream_index: stream as u16,
            stream_count: streams as u16,
            token: *token.as_bytes(),
        };
        (&s).write_all(&hello.encode()).map_err(connect_err)?;
        out.push(s);
    }
    for (stream, s) in (0u32..).zip(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SetupError::ConnectTimeout { addr, stream });
        }
        let mut ack = [0u8; ACK_BYTES];
        let read = s.set_read_timeout(Some(left)).and_then(|()| (&*s).read_exact(&mut ack));
        match read {
            Ok(()) => handshake::check_ack(&ack)
                .map_err(|source| SetupError::Handshake { addr, source })?,
            Err(e) => {
                return Err(match e.kind() {
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe => SetupError::Refused { addr, stream },
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        SetupError::ConnectTimeout { addr, stream }
                    }
                    _ => SetupError::Connect { addr, stream, source: e },
                });
            }
        }
        s.set_read_timeout(None).map_err(|source| SetupError::Connect { addr, stream, source })?;
    }
    Ok(out)
}

/// One TCP connection with a deadline. The socket is made by hand so an explicit buffer size
/// is in place before the SYN (which fixes the window scale).
fn connect_one(
    addr: SocketAddr,
    deadline: Instant,
    socket_buffer_bytes: Option<usize>,
) -> io::Result<TcpStream> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    if let Some(bytes) = socket_buffer_bytes {
        tune::set_buffers_before_connect(&fd, bytes)?;
    }
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(Errno::INPROGRESS | Errno::INTR) => {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let timeout =
                    Timespec::try_from(left).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match rustix::event::poll(&mut fds, Some(&timeout)) {
                    Ok(0) | Err(Errno::INTR) => continue,
                    Ok(_) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            rustix::net::sockopt::socket_error(fd.as_fd())?.map_err(io::Error::from)?;
        }
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg() -> TcpConfig {
        TcpConfig::new(2, 1 << 20)
    }

    #[test]
    fn streams_arrive_in_index_order() {
        let l = DataListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &cfg()).unwrap();
        let addr = l.local_addr();
        let token = SessionToken::random().unwrap();
        let t2 = token.clone();
        let c = std::thread::spawn(move || {
            connect_streams(addr, &t2, 3, Duration::from_secs(5), &cfg()).unwrap()
        });
        let server = l.accept_streams(&token, 3, Instant::now() + Duration::from_secs(5)).unwrap();
        let client = c.join().unwrap();
        assert_eq!(server.len(), 3);
        for (s, c) in server.iter().zip(&client) {
            assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
        }
        // The listener is gone: the token cannot admit another connection.
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn nobody_connecting_times_out() {
        let l = DataListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &cfg()).unwrap();
        let token = SessionToken::random().unwrap();
        let start = Instant::now();
        let err = l.accept_streams(&token, 2, start + Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, SetupError::AcceptTimeout { arrived: 0, expected: 2, .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn bad_stream_counts_are_refused_locally() {
        let token = SessionToken::random().unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let err = connect_streams(addr, &token, 0, Duration::from_secs(1), &cfg()).unwrap_err();
        assert!(matches!(err, SetupError::Config(ConfigError::Streams { streams: 0 })));
        let err = connect_streams(addr, &token, 65, Duration::from_secs(1), &cfg()).unwrap_err();
        assert!(matches!(err, SetupError::Config(ConfigError::Streams { streams: 65 })));
    }

    #[test]
    fn explicit_buffers_are_applied_before_connect() {
        let mut c = cfg();
        c.socket_buffer_bytes = Some(1 << 20);
        let l = DataListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &c).unwrap();
        let addr = l.local_addr();
        let token = SessionToken::random().unwrap();
        let t2 = token.clone();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            connect_streams(addr, &t2, 1, Duration::from_secs(5), &c2).unwrap()
        });
        let server = l.accept_streams(&token, 1, Instant::now() + Duration::from_secs(5)).unwrap();
        let client = t.join().unwrap();
        for s in server.iter().chain(&client) {
            let rcv = rustix::net::sockopt::socket_recv_buffer_size(s).unwrap();
            assert!(rcv >= 1 << 20, "receive buffer {rcv}");
        }
    }
}
