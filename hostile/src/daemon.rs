//! Daemons that misbehave on purpose, for the stock `blit xfer` client to talk to.
//!
//! [`HostileDaemon`] is a real gRPC server for the `blit.v1.Blit` service with a scripted
//! [`Behaviour`]: serve a pull with whatever listings the test wrote (and the bytes of the files
//! the client asks for), or accept the session and never send `Accept`, or never answer the
//! call at all. [`SilentListener`] accepts TCP connections and never says a word.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blitx_transport_tcp::{DataListener, SessionToken, TcpConfig};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::msg;
use crate::pb;
use crate::raw::DataStreams;

/// How long the scripted daemon waits for any one answer from the client.
const STEP_WAIT: Duration = Duration::from_secs(10);

/// What a [`HostileDaemon`] does with each `Session`.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answers the call (response headers) and reads what the client sends, but never sends
    /// `Accept` or anything else.
    NeverAccept,
    /// Never answers the call: the HTTP/2 connection is up, the stream never gets headers.
    NeverRespond,
    /// Serves a pull over TCP as scripted.
    Pull(PullScript),
}

/// A pull, step by step: after `Accept` and the client's data streams, each of `messages` is
/// sent in order; after each listing part the daemon waits for the client's `Need` and sends
/// the bytes (from `contents`) of every needed file it has (Bundle frames for small files,
/// Chunk frames otherwise, with correct checksums and `FILE_VERIFIED`). With `finish`, it then
/// sends `ManifestEnd`, waits for `NeedEnd`, ends every data stream, sends `DataEnd` and a
/// clean `Summary`.
#[derive(Debug, Clone, Default)]
pub struct PullScript {
    pub messages: Vec<pb::SourceMsg>,
    pub contents: HashMap<u64, Vec<u8>>,
    /// TCP streams to offer (0: what the client asked for, at least 1).
    pub streams: u32,
    pub finish: bool,
    /// Say in the Accept that the source is one file (a single-file pull).
    pub single_file: bool,
}

type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, line: impl Into<String>) {
    log.lock().unwrap_or_else(|p| p.into_inner()).push(line.into());
}

/// A scripted gRPC daemon on 127.0.0.1 (a port the kernel picks); stopped on drop.
pub struct HostileDaemon {
    pub addr: SocketAddr,
    rt: Option<Runtime>,
    log: Log,
}

impl std::fmt::Debug for HostileDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostileDaemon({})", self.addr)
    }
}

impl HostileDaemon {
    pub fn start(behaviour: Behaviour) -> Result<HostileDaemon, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hostile-daemon")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .map_err(|e| format!("cannot listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let log: Log = Arc::default();
        let svc = Svc { behaviour: Arc::new(behaviour), log: Arc::clone(&log) };
        let service = pb::blit_server::BlitServer::new(svc)
            .max_decoding_message_size(crate::CONTROL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::CONTROL_MESSAGE_BYTES_MAX);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server_log = Arc::clone(&log);
        rt.spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            note(&server_log, format!("server ended: {r:?}"));
        });
        Ok(HostileDaemon { addr, rt: Some(rt), log })
    }

    /// `blit://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("blit://{}/{}", self.addr, path)
    }

    /// What happened so far, one line per step.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HostileDaemon {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Svc {
    behaviour: Arc<Behaviour>,
    log: Log,
}

type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl pb::blit_server::Blit for Svc {
    async fn hello(
        &self,
        _request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloReply>, Status> {
        Ok(Response::new(pb::HelloReply {
            protocol_version: crate::PROTOCOL_VERSION,
            server_version: "hostile".into(),
            transports: vec!["tcp".into()],
            ..Default::default()
        }))
    }

    type RemoteListStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::RemoteListPage, Status>>;
    type RemoteUsageStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::RemoteUsagePage, Status>>;

    // Remote operations are not scripted: the stock client must report "not offered" clearly.
    async fn remote_list(
        &self,
        _request: Request<pb::RemoteListRequest>,
    ) -> Result<Response<Self::RemoteListStream>, Status> {
        Err(Status::unimplemented("remote operations are not scripted"))
    }

    async fn remote_usage(
        &self,
        _request: Request<pb::RemoteUsageRequest>,
    ) -> Result<Response<Self::RemoteUsageStream>, Status> {
        Err(Status::unimplemented("remote operations are not scripted"))
    }

    async fn remote_remove(
        &self,
        _request: Request<pb::RemoteRemoveRequest>,
    ) -> Result<Response<pb::RemoteRemoveReply>, Status> {
        Err(Status::unimplemented("remote operations are not scripted"))
    }

    async fn remote_make_dir(
        &self,
        _request: Request<pb::RemoteMakeDirRequest>,
    ) -> Result<Response<pb::RemoteMakeDirReply>, Status> {
        Err(Status::unimplemented("remote operations are not scripted"))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let inbound = request.into_inner();
        match &*self.behaviour {
            Behaviour::NeverRespond => {
                note(&self.log, "session: never responding");
                let _keep = inbound;
                std::future::pending::<()>().await;
                Err(Status::internal("unreachable"))
            }
            Behaviour::NeverAccept => {
                note(&self.log, "session: answered, never accepting");
                let (tx, rx) = mpsc::channel(1);
                let log = Arc::clone(&self.log);
                tokio::spawn(async move {
                    let _keep = tx;
                    let mut inbound = inbound;
                    while let Ok(Some(f)) = inbound.message().await {
                        note(&log, format!("client sent {:?}", f.msg.as_ref().map(kind_of)));
                    }
                    std::future::pending::<()>().await;
                });
                Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
            }
            Behaviour::Pull(script) => {
                let (tx, rx) = mpsc::channel(64);
                let handle = tokio::runtime::Handle::current();
                let (script, log) = (script.clone(), Arc::clone(&self.log));
                std::thread::Builder::new()
                    .name("hostile-pull".into())
                    .spawn(move || serve_pull(&handle, inbound, &tx, &script, &log))
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
            }
        }
    }
}

fn kind_of(m: &pb::client_frame::Msg) -> &'static str {
    match m {
        pb::client_frame::Msg::Open(_) => "open",
        pb::client_frame::Msg::Source(_) => "source",
        pb::client_frame::Msg::Target(_) => "target",
        pb::client_frame::Msg::Rdma(_) => "rdma",
    }
}

type Out = mpsc::Sender<Result<pb::ServerFrame, Status>>;

/// The control side of a scripted pull; any failure (the client gave up, a write failed) ends it
/// with a note in the log.
fn serve_pull(
    handle: &tokio::runtime::Handle,
    inbound: Streaming<pb::ClientFrame>,
    out: &Out,
    script: &PullScript,
    log: &Log,
) {
    let (in_tx, in_rx) = std_mpsc::channel::<Option<pb::ClientFrame>>();
    handle.spawn(async move {
        let mut inbound = inbound;
        loop {
            match inbound.message().await {
                Ok(Some(f)) => {
                    if in_tx.send(Some(f)).is_err() {
                        return;
                    }
                }
                _ => {
                    let _ = in_tx.send(None);
                    return;
                }
            }
        }
    });
    let next = |wait: Duration| in_rx.recv_timeout(wait).ok().flatten();
    let send = |f: pb::ServerFrame| {
        handle
            .block_on(async { tokio::time::timeout(STEP_WAIT, out.send(Ok(f))).await })
            .is_ok_and(|r| r.is_ok())
    };
    match run_pull(&next, &send, script, log) {
        Ok(()) => note(log, "pull: script done"),
        Err(e) => note(log, format!("pull: stopped: {e}")),
    }
    // Let the client read the summary and half-close before the stream ends.
    let deadline = Instant::now() + STEP_WAIT;
    while Instant::now() < deadline {
        match in_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(_)) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Ok(None) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn run_pull(
    next: &dyn Fn(Duration) -> Option<pb::ClientFrame>,
    send: &dyn Fn(pb::ServerFrame) -> bool,
    script: &PullScript,
    log: &Log,
) -> Result<(), String> {
    let open = match next(STEP_WAIT) {
        Some(pb::ClientFrame { msg: Some(pb::client_frame::Msg::Open(o)) }) => o,
        other => return Err(format!("expected Open, got {other:?}")),
    };
    note(log, format!("open: direction {} path {:?}", open.direction, open.path));
    let params = open.params.clone().unwrap_or_else(msg::params);
    let streams = if script.streams > 0 { script.streams } else { open.tcp_streams.max(1) };
    let cfg = TcpConfig::new(streams, params.chunk_bytes);
    let listener = DataListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &cfg)
        .map_err(|e| format!("cannot open a data listener: {e}"))?;
    let token = SessionToken::random().map_err(|e| e.to_string())?;
    let accept = pb::Accept {
        // Whatever the client speaks: the stock client of any build gets this far.
        protocol_version: open.protocol_version,
        server_version: "hostile".into(),
        transport: "tcp".into(),
        reason: "hostile daemon".into(),
        tcp: Some(pb::TcpEndpoint {
            addr: listener.local_addr().to_string(),
            token: token.as_bytes().to_vec(),
            streams,
            ..Default::default()
        }),
        single_file: script.single_file,
        ..Default::default()
    };
    if !send(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Accept(accept)) }) {
        return Err("the client went away before Accept".into());
    }
    let tcp = listener
        .accept_streams(&token, streams, Instant::now() + STEP_WAIT)
        .map_err(|e| format!("the client's data streams did not arrive: {e}"))?;
    note(log, format!("{streams} data streams connected"));
    let mut data = DataStreams::from_streams(tcp);
    let mut entries = 0u64;
    let mut files_sent = 0u64;
    let mut next_stream = 0usize;
    for (step, m) in script.messages.iter().enumerate() {
        let is_listing = matches!(m.msg, Some(pb::source_msg::Msg::Listing(_)));
        if let Some(pb::source_msg::Msg::Listing(l)) = &m.msg {
            entries += l.entries.len() as u64;
        }
        if !send(msg::server_source(m.clone())) {
            return Err(format!("the client went away at step {step}"));
        }
        note(log, format!("sent {}", msg::describe_source(m)));
        if !is_listing {
            continue;
        }
        let ids = match next(STEP_WAIT) {
            Some(pb::ClientFrame {
                msg:
                    Some(pb::client_frame::Msg::Target(pb::TargetMsg {
                        msg: Some(pb::target_msg::Msg::Need(n)),
                    })),
            }) => n.ids,
            Some(other) => return Err(format!("expected Need after step {step}, got {other:?}")),
            None => return Err(format!("no Need after step {step} (the client went away)")),
        };
        note(log, format!("client needs {ids:?}"));
        for id in ids {
            let Some(bytes) = script.contents.get(&id) else {
                note(log, format!("no contents scripted for needed id {id}"));
                continue;
            };
            let sent = if bytes.len() <= params.small_file_bytes_max as usize {
                next_stream += 1;
                data.send_bundle(next_stream, &[(id, bytes)])
            } else {
                data.send_file_chunks(id, bytes, params.chunk_bytes).and_then(|()| {
                    if send(msg::server_source(msg::file_read(id))) {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("the client went away before FileRead"))
                    }
                })
            };
            sent.map_err(|e| format!("cannot send file {id}: {e}"))?;
            files_sent += 1;
            note(log, format!("sent the bytes of file {id}"));
        }
    }
    if !script.finish {
        return Ok(());
    }
    if !send(msg::server_source(msg::manifest_end())) {
        return Err("the client went away before ManifestEnd".into());
    }
    match next(STEP_WAIT) {
        Some(pb::ClientFrame {
            msg:
                Some(pb::client_frame::Msg::Target(pb::TargetMsg {
                    msg: Some(pb::target_msg::Msg::NeedEnd(_)),
                })),
        }) => {}
        other => return Err(format!("expected NeedEnd, got {other:?}")),
    }
    data.end_all().map_err(|e| format!("cannot end the data streams: {e}"))?;
    if !send(msg::server_source(msg::data_end())) {
        return Err("the client went away before DataEnd".into());
    }
    let summary = pb::Summary {
        entries,
        files_sent,
        bytes_sent: script.contents.values().map(|c| c.len() as u64).sum(),
        ..Default::default()
    };
    if !send(msg::server_summary(summary)) {
        return Err("the client went away before the Summary".into());
    }
    Ok(())
}

/// Accepts TCP connections on 127.0.0.1 and never reads or writes a byte; stopped on drop.
#[derive(Debug)]
pub struct SilentListener {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentListener {
    pub fn start() -> std::io::Result<SilentListener> {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Acquire) {
                match l.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(SilentListener { addr, stop, thread: Some(thread) })
    }

    /// `blit://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("blit://{}/{}", self.addr, path)
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
