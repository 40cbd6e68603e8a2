//! A control-protocol client with no manners: [`RawClient`] opens `Session` streams and sends
//! whatever [`pb::ClientFrame`]s a test builds; [`DataStreams`] connects a session's TCP data
//! streams (token handshake) and writes valid or garbage frames on them.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blitx_core::frame::FrameHeader;
use blitx_transport_tcp::{SessionToken, TcpConfig, connect_streams};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use crate::msg;
use crate::pb;
use crate::pb::blit_client::BlitClient;

/// How long a send into a session may wait for the daemon to take it.
const SEND_WAIT: Duration = Duration::from_secs(10);

/// The runtime every [`RawClient`] shares (lives as long as the test process).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("hostile-client")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}"))
    })
}

/// One HTTP/2 connection to a daemon's control port.
#[derive(Clone)]
pub struct RawClient {
    client: BlitClient<tonic::transport::Channel>,
    addr: String,
    daemon_version: Option<u32>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawClient({})", self.addr)
    }
}

impl RawClient {
    /// Connects to `addr` (`"127.0.0.1:PORT"`), waiting at most 5 s.
    pub fn connect(addr: &str) -> Result<RawClient, String> {
        Self::connect_timeout(addr, Duration::from_secs(5))
    }

    pub fn connect_timeout(addr: &str, timeout: Duration) -> Result<RawClient, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        let channel = runtime()
            .block_on(async { tokio::time::timeout(timeout, endpoint.connect()).await })
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let client = BlitClient::new(channel)
            .max_decoding_message_size(crate::CONTROL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::CONTROL_MESSAGE_BYTES_MAX);
        let mut c = RawClient { client, addr: addr.into(), daemon_version: None };
        // The daemon's protocol version, so Opens built with the suite's default speak it
        // (the suite runs against builds before and after a version bump).
        c.daemon_version = c.hello().ok().map(|h| h.protocol_version);
        Ok(c)
    }

    /// The generated client itself, for unary and server-streaming calls (the remote
    /// operations); run its futures on [`runtime`].
    pub fn grpc(&self) -> BlitClient<tonic::transport::Channel> {
        self.client.clone()
    }

    /// The protocol version the daemon announced in Hello (None: it did not answer).
    pub fn daemon_version(&self) -> Option<u32> {
        self.daemon_version
    }

    pub fn hello(&self) -> Result<pb::HelloReply, tonic::Status> {
        let mut c = self.client.clone();
        runtime().block_on(async {
            let req = pb::HelloRequest {
                protocol_version: crate::PROTOCOL_VERSION,
                client_version: "hostile".into(),
            };
            tokio::time::timeout(SEND_WAIT, c.hello(req))
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("no Hello reply"))?
                .map(|r| r.into_inner())
        })
    }

    /// Starts a `Session` stream; sends `open` first when given (`None`: a stream that never
    /// says anything). Never blocks: the daemon's answers, including a refusal of the call
    /// itself, arrive through [`Session::recv`]. An Open carrying the suite's default
    /// [`crate::PROTOCOL_VERSION`] is sent with the version the daemon announced instead; any
    /// other version is sent as it is.
    pub fn session(&self, open: Option<pb::Open>) -> Session {
        let (tx, rx_out) = mpsc::channel::<pb::ClientFrame>(1024);
        if let Some(mut o) = open {
            if o.protocol_version == crate::PROTOCOL_VERSION
                && let Some(v) = self.daemon_version
            {
                o.protocol_version = v;
            }
            // The channel is empty: this cannot fail for lack of room.
            let _ = tx.try_send(msg::client_open(o));
        }
        let (in_tx, in_rx) = std_mpsc::channel();
        let mut client = self.client.clone();
        let task = runtime().spawn(async move {
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx_out);
            let mut inbound = match client.session(stream).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let _ = in_tx.send(Recv::Status(s));
                    return;
                }
            };
            loop {
                match inbound.message().await {
                    Ok(Some(f)) => {
                        if in_tx.send(Recv::Frame(f)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = in_tx.send(Recv::Closed);
                        return;
                    }
                    Err(s) => {
                        let _ = in_tx.send(Recv::Status(s));
                        return;
                    }
                }
            }
        });
        Session {
            tx: Some(tx),
            rx: in_rx,
            task,
            ended: false,
            unread: None,
            events: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Opens a session with `open`, waits for a TCP Accept and connects its data streams (the
    /// usual start of a raw push or pull).
    pub fn open_with_data(&self, open: pb::Open) -> Result<(Session, DataStreams), String> {
        let mut s = self.session(Some(open));
        let accept = s.accept(Duration::from_secs(10))?;
        let data = Session::connect_data(&accept, Duration::from_secs(10))?;
        Ok((s, data))
    }
}

/// What [`Session::recv`] got.
// Unboxed, so tests can match frames with one pattern; a few hundred bytes per message is
// nothing for a test client.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Recv {
    Frame(pb::ServerFrame),
    /// The daemon ended the stream cleanly.
    Closed,
    /// The call or the stream failed with a gRPC status.
    Status(tonic::Status),
    /// Nothing within the timeout.
    Timeout,
}

/// How a session ended, as far as [`Session::finish`] could tell.
#[derive(Debug)]
pub enum End {
    Summary(pb::Summary),
    Error(pb::Error),
    Status(tonic::Status),
    Closed,
    Timeout,
}

impl End {
    /// A Summary without `fatal`: the daemon considered the session done.
    pub fn is_success_summary(&self) -> bool {
        matches!(self, End::Summary(s) if s.fatal.is_empty())
    }

    /// The daemon refused or failed the session (fatal Summary, Error frame or a gRPC status).
    pub fn is_refusal(&self) -> bool {
        match self {
            End::Summary(s) => !s.fatal.is_empty(),
            End::Error(_) | End::Status(_) => true,
            End::Closed | End::Timeout => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            End::Summary(s) => msg::describe_summary(s),
            End::Error(e) => {
                format!(
                    "Error(code {} {:?}: {})",
                    e.code,
                    pb::ErrorCode::try_from(e.code),
                    e.message
                )
            }
            End::Status(s) => format!("gRPC status {:?}: {}", s.code(), s.message()),
            End::Closed => "stream closed without a summary".into(),
            End::Timeout => "no end of session within the timeout".into(),
        }
    }
}

/// One `Session` stream.
pub struct Session {
    tx: Option<mpsc::Sender<pb::ClientFrame>>,
    rx: std_mpsc::Receiver<Recv>,
    task: tokio::task::JoinHandle<()>,
    ended: bool,
    /// What a helper received but did not expect: the next `recv` returns it again, so
    /// [`Session::finish`] still sees a Summary that arrived instead of a Need.
    unread: Option<Recv>,
    /// Events frames seen by the helpers that skip them.
    pub events: Vec<pb::Event>,
    /// One line per frame the helpers skipped (for assertion messages).
    pub seen: Vec<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session(ended {}, seen {:?})", self.ended, self.seen)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Drops the response stream: the daemon sees the stream reset.
        self.task.abort();
    }
}

impl Session {
    /// Sends one frame (waits at most 10 s for room).
    pub fn send(&self, frame: pb::ClientFrame) -> Result<(), String> {
        let tx = self.tx.as_ref().ok_or("the sending side is already closed")?;
        runtime().block_on(async {
            match tokio::time::timeout(SEND_WAIT, tx.send(frame)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err("the session stream is gone".to_string()),
                Err(_) => Err("the daemon did not take a message for 10 s".to_string()),
            }
        })
    }

    pub fn send_open(&self, o: pb::Open) -> Result<(), String> {
        self.send(msg::client_open(o))
    }

    pub fn send_source(&self, m: pb::SourceMsg) -> Result<(), String> {
        self.send(msg::client_source(m))
    }

    pub fn send_target(&self, m: pb::TargetMsg) -> Result<(), String> {
        self.send(msg::client_target(m))
    }

    /// Half-closes the stream (the client's side is done).
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next thing the daemon sent, or [`Recv::Timeout`].
    pub fn recv(&mut self, timeout: Duration) -> Recv {
        if let Some(r) = self.unread.take() {
            return r;
        }
        if self.ended {
            return Recv::Closed;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(r) => {
                if matches!(r, Recv::Closed | Recv::Status(_)) {
                    self.ended = true;
                }
                r
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => Recv::Timeout,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Recv::Closed
            }
        }
    }

    /// Whether the daemon ended the stream (seen by an earlier `recv`).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The next frame that is not an Events batch (those are kept in `events`).
    pub fn recv_skip_events(&mut self, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Frame(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Events(e)) }) => {
                    self.seen.push(format!("Events({})", e.events.len()));
                    self.events.extend(e.events);
                }
                other => return other,
            }
        }
    }

    /// Describes what came instead of `wanted` and keeps it for the next `recv`.
    fn unexpected(&mut self, wanted: &str, got: Recv) -> String {
        let text = format!("expected {wanted}, got {}", describe_recv(&got));
        if !matches!(got, Recv::Timeout) {
            self.unread = Some(got);
        }
        text
    }

    /// Waits for Accept; anything else is an error naming what came instead.
    pub fn accept(&mut self, timeout: Duration) -> Result<pb::Accept, String> {
        match self.recv_skip_events(timeout) {
            Recv::Frame(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Accept(a)) }) => Ok(a),
            other => Err(self.unexpected("Accept", other)),
        }
    }

    /// Waits for the next Need (push: the daemon's answer to one listing part).
    pub fn need(&mut self, timeout: Duration) -> Result<Vec<u64>, String> {
        match self.recv_skip_events(timeout) {
            Recv::Frame(pb::ServerFrame {
                msg:
                    Some(pb::server_frame::Msg::Target(pb::TargetMsg {
                        msg: Some(pb::target_msg::Msg::Need(n)),
                    })),
            }) => Ok(n.ids),
            other => Err(self.unexpected("Need", other)),
        }
    }

    /// Waits for NeedEnd.
    pub fn need_end(&mut self, timeout: Duration) -> Result<(), String> {
        match self.recv_skip_events(timeout) {
            Recv::Frame(pb::ServerFrame {
                msg:
                    Some(pb::server_frame::Msg::Target(pb::TargetMsg {
                        msg: Some(pb::target_msg::Msg::NeedEnd(_)),
                    })),
            }) => Ok(()),
            other => Err(self.unexpected("NeedEnd", other)),
        }
    }

    /// Reads until the session ends (Summary, Error, a status, the stream closing) or `timeout`
    /// passes; every other frame is noted in `seen` (and events in `events`).
    /// The honest end of a push: ManifestEnd, the daemon's NeedEnd, End on every data stream,
    /// DataEnd, the sending side closed; then reads until the session ends.
    pub fn end_push(&mut self, data: &mut DataStreams, timeout: Duration) -> Result<End, String> {
        self.send_source(msg::manifest_end())?;
        self.need_end(timeout)?;
        data.end_all().map_err(|e| format!("End frames: {e}"))?;
        self.send_source(msg::data_end())?;
        self.close_send();
        Ok(self.finish(timeout))
    }

    pub fn finish(&mut self, timeout: Duration) -> End {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_skip_events(left) {
                Recv::Frame(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Summary(s)) }) => {
                    return End::Summary(s);
                }
                Recv::Frame(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Error(e)) }) => {
                    return End::Error(e);
                }
                Recv::Frame(f) => self.seen.push(msg::describe_server(&f)),
                Recv::Closed => return End::Closed,
                Recv::Status(s) => return End::Status(s),
                Recv::Timeout => return End::Timeout,
            }
        }
    }

    /// Connects the data streams `accept` describes (token handshake), within `timeout`.
    pub fn connect_data(accept: &pb::Accept, timeout: Duration) -> Result<DataStreams, String> {
        let (addr, token, streams) = tcp_endpoint(accept)?;
        let cfg = TcpConfig::new(streams, msg::CHUNK_BYTES);
        let s = connect_streams(addr, &token, streams, timeout, &cfg)
            .map_err(|e| format!("cannot connect the data streams to {addr}: {e}"))?;
        Ok(DataStreams::from_streams(s))
    }
}

/// The data listener's address, the token and the stream count of a TCP Accept.
pub fn tcp_endpoint(accept: &pb::Accept) -> Result<(SocketAddr, SessionToken, u32), String> {
    let tcp = accept.tcp.as_ref().ok_or("Accept without a TCP endpoint")?;
    let addr: SocketAddr =
        tcp.addr.parse().map_err(|_| format!("bad data address {:?}", tcp.addr))?;
    let token: [u8; 32] =
        tcp.token.as_slice().try_into().map_err(|_| "the session token is not 32 bytes")?;
    Ok((addr, SessionToken::from_bytes(token), tcp.streams))
}

pub fn describe_recv(r: &Recv) -> String {
    match r {
        Recv::Frame(f) => msg::describe_server(f),
        Recv::Closed => "the stream closed".into(),
        Recv::Status(s) => format!("gRPC status {:?}: {}", s.code(), s.message()),
        Recv::Timeout => "nothing (timed out)".into(),
    }
}

/// A session's connected data streams.
#[derive(Debug)]
pub struct DataStreams {
    pub streams: Vec<TcpStream>,
    seq: u64,
}

impl DataStreams {
    /// Wraps already-connected streams. Writes give up after 10 s: a peer that stops reading
    /// fails the write instead of hanging the test.
    pub fn from_streams(streams: Vec<TcpStream>) -> Self {
        for s in &streams {
            let _ = s.set_write_timeout(Some(SEND_WAIT));
        }
        DataStreams { streams, seq: 0 }
    }

    fn stream(&mut self, i: usize) -> io::Result<&mut TcpStream> {
        let n = self.streams.len();
        self.streams
            .get_mut(i % n.max(1))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no data streams"))
    }

    /// Writes raw bytes (frames or garbage) on stream `i`.
    pub fn send_raw(&mut self, i: usize, bytes: &[u8]) -> io::Result<()> {
        crate::frames::write(self.stream(i)?, bytes)
    }

    /// One Bundle frame with `files` (`(id, bytes)`) on stream `i`.
    pub fn send_bundle(&mut self, i: usize, files: &[(u64, &[u8])]) -> io::Result<()> {
        let seq = self.seq;
        self.seq += 1;
        let f = crate::frames::bundle(seq, files);
        self.send_raw(i, &f)
    }

    /// A whole file as Chunk frames (last one `FILE_VERIFIED`), spread over the streams.
    pub fn send_file_chunks(&mut self, id: u64, data: &[u8], chunk_bytes: u32) -> io::Result<()> {
        for (i, f) in crate::frames::file_chunks(id, data, chunk_bytes).iter().enumerate() {
            self.send_raw(i, f)?;
        }
        Ok(())
    }

    /// An End frame on every stream.
    pub fn end_all(&mut self) -> io::Result<()> {
        let end = crate::frames::end();
        for s in &mut self.streams {
            crate::frames::write(s, &end)?;
        }
        Ok(())
    }

    /// Reads every stream to its End frame (or EOF / error) on one thread per stream; for pulls.
    pub fn read_in_background(self, max_payload_bytes: u32) -> DataReaders {
        let threads = self
            .streams
            .into_iter()
            .map(|mut s| {
                // A daemon that never ends its streams must not keep a reader forever.
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                std::thread::spawn(move || {
                    let mut frames = Vec::new();
                    loop {
                        match crate::frames::read(&mut s, max_payload_bytes) {
                            Ok(Some((h, p))) => {
                                let end = h.kind == blitx_core::frame::FrameKind::End;
                                frames.push((h, p));
                                if end {
                                    return (frames, None);
                                }
                            }
                            Ok(None) => return (frames, Some("EOF before End".to_string())),
                            Err(e) => return (frames, Some(e.to_string())),
                        }
                    }
                })
            })
            .collect();
        DataReaders { threads }
    }
}

type ReaderResult = (Vec<(FrameHeader, Vec<u8>)>, Option<String>);

/// Background readers of a pull's data streams.
#[derive(Debug)]
pub struct DataReaders {
    threads: Vec<JoinHandle<ReaderResult>>,
}

impl DataReaders {
    /// Whether every reader has finished.
    pub fn done(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Every frame read, and each stream's error if it did not end with an End frame.
    pub fn join(self) -> (Vec<(FrameHeader, Vec<u8>)>, Vec<String>) {
        let mut frames = Vec::new();
        let mut errors = Vec::new();
        for t in self.threads {
            match t.join() {
                Ok((f, e)) => {
                    frames.extend(f);
                    errors.extend(e);
                }
                Err(_) => errors.push("reader thread panicked".into()),
            }
        }
        (frames, errors)
    }
}
