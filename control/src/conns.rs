//! The daemon's control connections: accepted by one loop of ours (not the gRPC server's), so
//! every bound is in one place.
//!
//! - At most `max` connections at once. When one more arrives, the connection that has been
//!   quiet longest and carries no session is closed to make room; if every connection carries
//!   a session, the newcomer is closed. Two thousand idle sockets cannot lock out a real client.
//! - A connection with no session that moves no byte for `idle` is closed.
//! - `accept` failures are never retried in a spin: running out of descriptors (EMFILE,
//!   ENFILE) pauses accepting for a moment and is logged once per episode.
//!
//! Closing is a `shutdown(2)` of the socket through a duplicate of its descriptor that this
//! registry keeps: the connection's own reader then sees end-of-file and the gRPC server drops
//! it, without any cooperation from the task serving it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long accepting pauses after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// Descriptor exhaustion is logged again after this long at the earliest.
const STARVED_REPEAT: Duration = Duration::from_secs(60);
/// How often idle connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Conn {
    /// A duplicate of the socket, to shut it down from outside.
    socket: OwnedFd,
    /// Milliseconds since the registry started, at the last byte either way.
    active_ms: AtomicU64,
    sessions: AtomicU32,
}

/// Every open control connection, by peer address.
#[derive(Debug)]
pub struct Registry {
    started: Instant,
    max: usize,
    idle: Duration,
    conns: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
    closed_idle: AtomicU64,
    refused: AtomicU64,
}

impl Registry {
    pub fn new(max: usize, idle: Duration) -> Arc<Self> {
        Arc::new(Registry {
            started: Instant::now(),
            max: max.max(1),
            idle,
            conns: Mutex::new(HashMap::new()),
            closed_idle: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks a session running on the connection from `peer`; the guard ends it.
    pub fn session(self: &Arc<Self>, peer: Option<SocketAddr>) -> SessionMark {
        let conn = peer.and_then(|p| self.lock().get(&p).cloned());
        if let Some(c) = &conn {
            c.sessions.fetch_add(1, Ordering::AcqRel);
        }
        SessionMark { conn, registry: Arc::clone(self) }
    }

    /// Admits a new connection, closing the longest-quiet sessionless one when full. `Ok(None)`:
    /// refused (every slot carries a session). `Err`: the registry's duplicate of the socket
    /// could not be made (the connection is closed); out of descriptors, this is the same
    /// episode as an `accept` that fails with EMFILE, and is treated as one.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> io::Result<Option<Tracked>> {
        let socket = stream.as_fd().try_clone_to_owned()?;
        let conn = Arc::new(Conn {
            socket,
            active_ms: AtomicU64::new(self.now_ms()),
            sessions: AtomicU32::new(0),
        });
        let mut conns = self.lock();
        if conns.len() >= self.max {
            let quietest = conns
                .iter()
                .filter(|(_, c)| c.sessions.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.active_ms.load(Ordering::Acquire))
                .map(|(a, _)| *a);
            match quietest.and_then(|a| conns.remove(&a)) {
                Some(old) => {
                    close(&old);
                    self.closed_idle.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            max = self.max,
                            "control connections at their limit, all carrying sessions: refusing new ones (--max-connections)"
                        );
                    }
                    return Ok(None);
                }
            }
        }
        conns.insert(peer, Arc::clone(&conn));
        drop(conns);
        Ok(Some(Tracked { stream, peer, conn, registry: Arc::clone(self) }))
    }

    /// Closes connections with no session that have been quiet for the idle limit.
    fn sweep(&self) {
        let now = self.now_ms();
        let idle_ms = self.idle.as_millis() as u64;
        let mut conns = self.lock();
        let before = conns.len();
        conns.retain(|_, c| {
            let quiet = now.saturating_sub(c.active_ms.load(Ordering::Acquire)) >= idle_ms;
            let keep = !quiet || c.sessions.load(Ordering::Acquire) > 0;
            if !keep {
                close(c);
            }
            keep
        });
        let closed = before - conns.len();
        if closed > 0 {
            self.closed_idle.fetch_add(closed as u64, Ordering::Relaxed);
            tracing::debug!(closed, "closed idle control connections");
        }
    }
}

fn close(c: &Conn) {
    let _ = rustix::net::shutdown(&c.socket, rustix::net::Shutdown::Both);
}

/// Keeps a connection from being closed as idle while a session runs on it.
#[derive(Debug)]
pub struct SessionMark {
    conn: Option<Arc<Conn>>,
    registry: Arc<Registry>,
}

impl Drop for SessionMark {
    fn drop(&mut self) {
        if let Some(c) = &self.conn {
            c.sessions.fetch_sub(1, Ordering::AcqRel);
            c.active_ms.store(self.registry.now_ms(), Ordering::Release);
        }
    }
}

/// An accepted control connection that records when bytes last moved.
#[derive(Debug)]
pub struct Tracked {
    stream: TcpStream,
    peer: SocketAddr,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Tracked {
    fn touch(&self) {
        self.conn.active_ms.store(self.registry.now_ms(), Ordering::Release);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut conns = self.registry.lock();
        if conns.get(&self.peer).is_some_and(|c| Arc::ptr_eq(c, &self.conn)) {
            conns.remove(&self.peer);
        }
    }
}

impl Connected for Tracked {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo { local_addr: self.stream.local_addr().ok(), remote_addr: Some(self.peer) }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections into `out` until `out` is closed, within the registry's bounds.
pub async fn accept_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    out: mpsc::Sender<io::Result<Tracked>>,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Descriptor exhaustion is said once, then at most once a minute with a count.
    let mut starved_said: Option<(Instant, u64)> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = sweep.tick() => {
                registry.sweep();
                continue;
            }
            _ = out.closed() => return,
        };
        let failed = match accepted {
            Ok((stream, peer)) => {
                // Control messages are small and answer each other: without TCP_NODELAY a
                // response's DATA frame waits behind its HEADERS for the peer's delayed ACK.
                let _ = stream.set_nodelay(true);
                match registry.admit(stream, peer) {
                    Ok(Some(t)) => {
                        if out.send(Ok(t)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => continue,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if out_of_descriptors(&failed) {
            match &mut starved_said {
                Some((at, again)) if at.elapsed() < STARVED_REPEAT => *again += 1,
                _ => {
                    let again = starved_said.map_or(0, |(_, n)| n);
                    tracing::error!(
                        again,
                        "cannot accept control connections: {failed}; pausing accepts until descriptors free up (raise the open-files limit, or lower --max-connections / --max-sessions)"
                    );
                    starved_said = Some((Instant::now(), 0));
                }
            }
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        } else {
            // A peer that gave up between SYN and accept, and the like: its problem.
            tracing::debug!("accept: {failed}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(rustix::io::Errno::from_raw_os_error),
        Some(
            rustix::io::Errno::MFILE
                | rustix::io::Errno::NFILE
                | rustix::io::Errno::NOBUFS
                | rustix::io::Errno::NOMEM
        )
    )
}
