//! The negotiation driven event by event: no sockets, no threads, no sleeps; time moves by
//! passing a later `now`.

use super::*;
use blitx_core::RelPath;

const SEC: Duration = Duration::from_secs(1);

fn device(name: &str, ip: [u8; 4]) -> RdmaDeviceInfo {
    RdmaDeviceInfo {
        name: name.into(),
        active: true,
        gid: [0; 16],
        gid_index: 3,
        link_gbps: 100.0,
        numa_node: None,
        ipv4: Some((std::net::Ipv4Addr::from(ip), 24)),
    }
}

/// One "slot" per stream and a megabyte per chunk, whatever the transport: easy arithmetic.
fn pool_bytes(o: &DataPlaneOptions, rdma: bool) -> u64 {
    let slots = if rdma { 8 } else { u64::from(o.streams) };
    slots * u64::from(o.chunk_bytes)
}

fn facts() -> DaemonFacts {
    DaemonFacts {
        read_only: false,
        default_streams: 4,
        streams_max: 64,
        stall_timeout: 30 * SEC,
        open_timeout: 10 * SEC,
        data_connect_timeout: 30 * SEC,
        session_memory_bytes: 1 << 30,
        max_sessions: 2,
        threads: 2,
        rdma_device: None,
        rdma: Err("no verbs device".into()),
        pool_bytes,
    }
}

fn open(direction: Direction) -> OpenRequest {
    OpenRequest {
        protocol_version: crate::PROTOCOL_VERSION,
        client_version: "test".into(),
        direction,
        path: RelPath::parse(b"dir").expect("path"),
        params: SessionParams { chunk_bytes: 1 << 20, ..SessionParams::default() },
        transport: TransportChoice::Auto,
        tcp_streams: 0,
        tcp_buffer_bytes: 0,
        events: false,
        client_rdma: None,
        rdma_qps: 0,
        stall_timeout_secs: 0,
        rdma_frame_checksums: false,
        rdma_event_cq: false,
        wait_lock: false,
        tcp_zero_copy: false,
        single_file: false,
    }
}

fn drain_d(s: &mut DaemonSession) -> Vec<DaemonCmd> {
    std::iter::from_fn(|| s.poll()).collect()
}

fn drain_c(s: &mut ClientSession) -> Vec<ClientCmd> {
    std::iter::from_fn(|| s.poll()).collect()
}

/// A daemon session that took its Open and slot; returns the commands that followed.
fn opened(f: DaemonFacts, o: OpenRequest, t0: Instant) -> (DaemonSession, Vec<DaemonCmd>) {
    let mut s = DaemonSession::new(f, t0);
    s.handle(t0, DaemonEvent::First(Ok(o)));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::TakeSlot]));
    s.handle(t0, DaemonEvent::Slot(true));
    let cmds = drain_d(&mut s);
    (s, cmds)
}

fn refusal(cmds: &[DaemonCmd]) -> Option<&RemoteError> {
    match cmds.last() {
        Some(DaemonCmd::Refuse(e)) => Some(e),
        _ => None,
    }
}

fn fail(cmds: &[DaemonCmd]) -> Option<&RemoteError> {
    match cmds.last() {
        Some(DaemonCmd::Fail(e)) => Some(e),
        _ => None,
    }
}

// ---------------------------------------------------------------- the daemon

#[test]
fn daemon_push_over_tcp_runs_and_ends_with_the_summary() {
    let t0 = Instant::now();
    let (mut s, cmds) = opened(facts(), open(Direction::Push), t0);
    assert!(matches!(cmds[..], [DaemonCmd::OpenRoot { create: true }]));
    s.handle(t0, DaemonEvent::Root(Ok(())));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::Lock { wait: None }]));
    s.handle(t0, DaemonEvent::Lock(LockResult::Acquired));
    // auto, no RDMA on the daemon: TCP's buffers are charged (4 default streams × 1 MiB).
    match &drain_d(&mut s)[..] {
        [DaemonCmd::Charge { what: "TCP buffers", bytes }] => assert_eq!(*bytes, 4 << 20),
        other => panic!("{other:?}"),
    }
    s.handle(t0, DaemonEvent::Charged(Ok(())));
    assert!(matches!(&drain_d(&mut s)[..], [DaemonCmd::Listen(o)] if o.streams == 4));
    s.handle(t0, DaemonEvent::Prepared(Ok(())));
    match &drain_d(&mut s)[..] {
        [DaemonCmd::SendAccept { transport: Transport::Tcp, reason }, DaemonCmd::Connect] => {
            assert!(reason.contains("no usable RDMA"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    s.handle(t0, DaemonEvent::DataPlane(Ok(())));
    match &drain_d(&mut s)[..] {
        [DaemonCmd::StartLocal(n)] => {
            assert_eq!(n.transport, Transport::Tcp);
            assert_eq!(n.data_plane.stall_timeout, 30 * SEC);
        }
        other => panic!("{other:?}"),
    }
    s.handle(t0, DaemonEvent::InboundEnded);
    assert!(drain_d(&mut s).is_empty(), "a client half-close is not a failure");
    s.handle(t0, DaemonEvent::LocalDone(Ok(())));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::SendSummary, DaemonCmd::StopLocal]));
    assert!(s.is_done());
}

#[test]
fn daemon_pull_over_rdma_waits_for_the_clients_endpoint_and_says_ready() {
    let t0 = Instant::now();
    let mut f = facts();
    f.rdma = Ok(device("mlx0", [10, 0, 0, 1]));
    let mut o = open(Direction::Pull);
    o.client_rdma = Some(device("mlx1", [10, 0, 0, 2]));
    let (mut s, cmds) = opened(f, o, t0);
    assert!(matches!(cmds[..], [DaemonCmd::OpenRoot { create: false }]));
    s.handle(t0, DaemonEvent::Root(Ok(())));
    // A pull takes no lock; RDMA's ring is charged first.
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::Charge { what: "RDMA buffers", .. }]));
    s.handle(t0, DaemonEvent::Charged(Ok(())));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::PrepareRdma(_)]));
    s.handle(t0, DaemonEvent::Prepared(Ok(())));
    let cmds = drain_d(&mut s);
    assert!(matches!(
        cmds[..],
        [DaemonCmd::SendAccept { transport: Transport::Rdma, .. }, DaemonCmd::ReadPeerRdma]
    ));
    assert_eq!(s.deadline(), Some(t0 + 30 * SEC), "the longer of open and data-connect");
    s.handle(t0 + SEC, DaemonEvent::PeerRdma(Ok(())));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::Connect]));
    assert_eq!(s.deadline(), None);
    s.handle(t0 + SEC, DaemonEvent::DataPlane(Ok(())));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::SendRdmaReady, DaemonCmd::StartLocal(_)]));
}

#[test]
fn daemon_refuses_each_bad_open_with_its_code() {
    let t0 = Instant::now();
    let cases = [
        (OpenDefect::NotOpen, ErrorCode::BadRequest),
        (
            OpenDefect::Version { client_version: "0.0".into(), version: 1 },
            ErrorCode::VersionMismatch,
        ),
        (OpenDefect::BadPath("..".into()), ErrorCode::BadPath),
        (OpenDefect::Malformed("bad enum".into()), ErrorCode::BadRequest),
    ];
    for (defect, code) in cases {
        let mut s = DaemonSession::new(facts(), t0);
        s.handle(t0, DaemonEvent::First(Err(defect.clone())));
        // The slot is taken first: the refusal is a session's Error frame.
        assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::TakeSlot]));
        s.handle(t0, DaemonEvent::Slot(true));
        let cmds = drain_d(&mut s);
        assert_eq!(refusal(&cmds).map(|e| e.code), Some(code), "{defect:?}");
        assert!(s.is_done());
    }
}

#[test]
fn daemon_refuses_too_many_streams_and_a_read_only_push() {
    let t0 = Instant::now();
    let mut o = open(Direction::Pull);
    o.tcp_streams = 65;
    let (_, cmds) = opened(facts(), o, t0);
    assert_eq!(refusal(&cmds).map(|e| e.code), Some(ErrorCode::BadRequest));

    let mut f = facts();
    f.read_only = true;
    let (_, cmds) = opened(f.clone(), open(Direction::Push), t0);
    assert_eq!(refusal(&cmds).map(|e| e.code), Some(ErrorCode::ReadOnly));
    // A pull that would remove the daemon's files is a write too.
    let mut o = open(Direction::Pull);
    o.params.remove_source_files = true;
    let (_, cmds) = opened(f.clone(), o, t0);
    assert_eq!(refusal(&cmds).map(|e| e.code), Some(ErrorCode::ReadOnly));
    // A dry run or a memory session writes nothing: allowed.
    let mut o = open(Direction::Push);
    o.params.dry_run = true;
    let (_, cmds) = opened(f.clone(), o, t0);
    assert!(matches!(cmds[..], [DaemonCmd::OpenRoot { create: false }]));
    let mut o = open(Direction::Push);
    o.params.mem_bytes = Some(1 << 20);
    let (_, cmds) = opened(f, o, t0);
    assert!(matches!(cmds[..], [DaemonCmd::UseStandIn]));
}

#[test]
fn daemon_bad_path_is_refused_but_a_dry_run_into_nothing_compares_with_nothing() {
    let t0 = Instant::now();
    let missing = RootFailure { not_found: true, message: "no such directory".into() };
    let (mut s, _) = opened(facts(), open(Direction::Pull), t0);
    s.handle(t0, DaemonEvent::Root(Err(missing.clone())));
    assert_eq!(refusal(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::BadPath));

    let mut o = open(Direction::Push);
    o.params.dry_run = true;
    let (mut s, _) = opened(facts(), o, t0);
    s.handle(t0, DaemonEvent::Root(Err(missing)));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::UseStandIn]));
    s.handle(t0, DaemonEvent::StandIn(Ok(())));
    // A dry run takes no lock.
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::Charge { .. }]));
}

#[test]
fn daemon_target_lock_busy_waits_only_when_asked() {
    let t0 = Instant::now();
    let (mut s, _) = opened(facts(), open(Direction::Push), t0);
    s.handle(t0, DaemonEvent::Root(Ok(())));
    drain_d(&mut s);
    s.handle(t0, DaemonEvent::Lock(LockResult::Busy));
    assert_eq!(refusal(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::TargetLocked));

    let mut o = open(Direction::Push);
    o.wait_lock = true;
    let (mut s, _) = opened(facts(), o, t0);
    s.handle(t0, DaemonEvent::Root(Ok(())));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::Lock { wait: Some(LOCK_WAIT_MAX) }]));
    // Shutdown while waiting: the lock wait ends cancelled, the session with a fatal summary.
    s.handle(t0, DaemonEvent::Cancel);
    assert!(drain_d(&mut s).is_empty());
    s.handle(t0, DaemonEvent::Lock(LockResult::Cancelled));
    assert_eq!(fail(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::Internal));
}

#[test]
fn daemon_lowers_streams_to_fit_the_session_memory() {
    let t0 = Instant::now();
    let mut f = facts();
    f.session_memory_bytes = 3 << 20; // three 1 MiB streams
    let mut o = open(Direction::Pull);
    o.tcp_streams = 16;
    o.stall_timeout_secs = 7;
    let (mut s, _) = opened(f, o, t0);
    s.handle(t0, DaemonEvent::Root(Ok(())));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::Charge { bytes: 0x30_0000, .. }]));
    let n = s.negotiated().expect("negotiated");
    assert_eq!(n.data_plane.streams, 3);
    assert_eq!(n.data_plane.stall_timeout, 7 * SEC, "the client's stall timeout wins");
}

#[test]
fn daemon_required_rdma_is_refused_where_auto_falls_back_to_tcp() {
    let t0 = Instant::now();
    // No RDMA on the daemon.
    let mut o = open(Direction::Pull);
    o.transport = TransportChoice::Rdma;
    o.client_rdma = Some(device("mlx1", [10, 0, 0, 2]));
    let (mut s, _) = opened(facts(), o.clone(), t0);
    s.handle(t0, DaemonEvent::Root(Ok(())));
    assert_eq!(refusal(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::TransportUnavailable));

    let mut f = facts();
    f.rdma = Ok(device("mlx0", [10, 0, 0, 1]));
    for required in [true, false] {
        // The ring does not fit the memory.
        let mut o = o.clone();
        if !required {
            o.transport = TransportChoice::Auto;
        }
        let (mut s, _) = opened(f.clone(), o.clone(), t0);
        s.handle(t0, DaemonEvent::Root(Ok(())));
        drain_d(&mut s);
        s.handle(t0, DaemonEvent::Charged(Err("over the session's memory".into())));
        let cmds = drain_d(&mut s);
        if required {
            assert_eq!(refusal(&cmds).map(|e| e.code), Some(ErrorCode::ResourceExhausted));
        } else {
            assert!(matches!(cmds[..], [DaemonCmd::Charge { what: "TCP buffers", .. }]));
        }
        // RDMA set-up fails.
        let (mut s, _) = opened(f.clone(), o, t0);
        s.handle(t0, DaemonEvent::Root(Ok(())));
        drain_d(&mut s);
        s.handle(t0, DaemonEvent::Charged(Ok(())));
        drain_d(&mut s);
        s.handle(t0, DaemonEvent::Prepared(Err("no memory to pin".into())));
        let cmds = drain_d(&mut s);
        if required {
            assert_eq!(refusal(&cmds).map(|e| e.code), Some(ErrorCode::TransportUnavailable));
        } else {
            assert!(matches!(
                cmds[..],
                [DaemonCmd::Release { .. }, DaemonCmd::Charge { what: "TCP buffers", .. }]
            ));
            let n = s.negotiated().expect("negotiated");
            assert_eq!(n.transport, Transport::Tcp);
            assert!(n.reason.contains("RDMA set-up failed"), "{}", n.reason);
        }
    }
}

#[test]
fn daemon_tcp_buffers_that_do_not_fit_are_resource_exhausted() {
    let t0 = Instant::now();
    let (mut s, _) = opened(facts(), open(Direction::Pull), t0);
    s.handle(t0, DaemonEvent::Root(Ok(())));
    drain_d(&mut s);
    s.handle(t0, DaemonEvent::Charged(Err("all sessions' memory is in use".into())));
    assert_eq!(refusal(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::ResourceExhausted));
}

#[test]
fn daemon_open_timeout_and_a_full_daemon_reject_the_stream() {
    let t0 = Instant::now();
    let mut s = DaemonSession::new(facts(), t0);
    assert_eq!(s.deadline(), Some(t0 + 10 * SEC));
    s.handle(t0 + 9 * SEC, DaemonEvent::Timer);
    assert!(drain_d(&mut s).is_empty(), "an early timer changes nothing");
    s.handle(t0 + 10 * SEC, DaemonEvent::Timer);
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::Reject(Rejection::NoOpen { secs: 10 })]));

    let mut s = DaemonSession::new(facts(), t0);
    s.handle(t0, DaemonEvent::EndedBeforeOpen);
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::Reject(Rejection::EndedBeforeOpen)]));

    let mut s = DaemonSession::new(facts(), t0);
    s.handle(t0, DaemonEvent::First(Ok(open(Direction::Push))));
    drain_d(&mut s);
    s.handle(t0, DaemonEvent::Slot(false));
    assert!(matches!(
        drain_d(&mut s)[..],
        [DaemonCmd::Reject(Rejection::Busy { max_sessions: 2 })]
    ));
}

/// A daemon pull over RDMA waiting for the client's endpoint.
fn awaiting_peer_rdma(t0: Instant) -> DaemonSession {
    let mut f = facts();
    f.rdma = Ok(device("mlx0", [10, 0, 0, 1]));
    let mut o = open(Direction::Pull);
    o.client_rdma = Some(device("mlx1", [10, 0, 0, 2]));
    prepared(f, o, t0)
}

/// A daemon pull whose root, charge and data-plane preparation succeeded (a pull takes no lock).
fn prepared(f: DaemonFacts, o: OpenRequest, t0: Instant) -> DaemonSession {
    let (mut s, _) = opened(f, o, t0);
    for ev in
        [DaemonEvent::Root(Ok(())), DaemonEvent::Charged(Ok(())), DaemonEvent::Prepared(Ok(()))]
    {
        s.handle(t0, ev);
    }
    drain_d(&mut s);
    s
}

#[test]
fn daemon_peer_gone_or_silent_during_rdma_set_up_fails_the_session() {
    let t0 = Instant::now();
    let mut s = awaiting_peer_rdma(t0);
    s.handle(t0 + 29 * SEC, DaemonEvent::Timer);
    assert!(drain_d(&mut s).is_empty());
    s.handle(t0 + 30 * SEC, DaemonEvent::Timer);
    assert_eq!(fail(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::BadRequest));

    let mut s = awaiting_peer_rdma(t0);
    s.handle(t0, DaemonEvent::InboundEnded);
    assert_eq!(fail(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::BadRequest));

    let mut s = awaiting_peer_rdma(t0);
    s.handle(t0, DaemonEvent::PeerRdma(Err("a Listing instead of the endpoint".into())));
    assert_eq!(fail(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::BadRequest));

    let mut s = awaiting_peer_rdma(t0);
    s.handle(t0, DaemonEvent::Cancel);
    assert_eq!(fail(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::Internal));
}

#[test]
fn daemon_peer_gone_when_accepting_fails_the_session() {
    let t0 = Instant::now();
    let mut s = prepared(facts(), open(Direction::Pull), t0);
    s.handle(t0, DaemonEvent::PeerGone);
    assert_eq!(fail(&drain_d(&mut s)).map(|e| e.message.as_str()), Some("client went away"));
}

/// A daemon push with its halves running.
fn running(t0: Instant) -> DaemonSession {
    let (mut s, _) = opened(facts(), open(Direction::Push), t0);
    for ev in [
        DaemonEvent::Root(Ok(())),
        DaemonEvent::Lock(LockResult::Acquired),
        DaemonEvent::Charged(Ok(())),
        DaemonEvent::Prepared(Ok(())),
        DaemonEvent::DataPlane(Ok(())),
    ] {
        s.handle(t0, ev);
    }
    assert!(matches!(drain_d(&mut s).last(), Some(DaemonCmd::StartLocal(_))));
    s
}

#[test]
fn daemon_the_clients_violation_explains_the_local_failure() {
    let t0 = Instant::now();
    let mut s = running(t0);
    s.handle(t0, DaemonEvent::Violation("a path with ..".into()));
    s.handle(t0, DaemonEvent::Violation("a second one".into()));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::StopLocal, DaemonCmd::StopLocal]));
    s.handle(
        t0,
        DaemonEvent::LocalDone(Err(error(ErrorCode::Internal, "the other half went away"))),
    );
    let cmds = drain_d(&mut s);
    let why = fail(&cmds).expect("a fatal summary");
    assert_eq!((why.code, why.message.as_str()), (ErrorCode::ProtocolViolation, "a path with .."));
}

#[test]
fn daemon_local_failure_without_a_violation_is_reported_as_is() {
    let t0 = Instant::now();
    let mut s = running(t0);
    s.handle(t0, DaemonEvent::InboundFailed("reset".into()));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::StopLocal]));
    s.handle(t0, DaemonEvent::LocalDone(Err(error(ErrorCode::Stalled, "no progress"))));
    assert_eq!(fail(&drain_d(&mut s)).map(|e| e.code), Some(ErrorCode::Stalled));
}

#[test]
fn daemon_shutdown_stops_the_running_halves() {
    let t0 = Instant::now();
    let mut s = running(t0);
    s.handle(t0, DaemonEvent::Cancel);
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::StopLocal]));
    s.handle(t0, DaemonEvent::LocalDone(Err(error(ErrorCode::Internal, "cancelled"))));
    assert!(fail(&drain_d(&mut s)).is_some());
    // Nothing after the end.
    s.handle(t0, DaemonEvent::Violation("late".into()));
    assert!(drain_d(&mut s).is_empty());
}

#[test]
fn daemon_shutdown_while_connecting_stops_the_halves_as_they_start() {
    let t0 = Instant::now();
    let mut s = prepared(facts(), open(Direction::Pull), t0);
    s.handle(t0, DaemonEvent::Cancel);
    s.handle(t0, DaemonEvent::DataPlane(Ok(())));
    assert!(matches!(drain_d(&mut s)[..], [DaemonCmd::StartLocal(_), DaemonCmd::StopLocal]));
}

#[test]
fn transport_choice_follows_the_subnet() {
    let server = Ok(device("mlx0", [10, 0, 0, 1]));
    let near = device("mlx1", [10, 0, 0, 2]);
    let far = device("mlx2", [10, 0, 9, 2]);
    let choose = |t, c| choose_transport(t, c, &server).map(|(t, _)| t);
    assert_eq!(choose(TransportChoice::Auto, Some(&near)), Ok(Transport::Rdma));
    assert_eq!(choose(TransportChoice::Auto, Some(&far)), Ok(Transport::Tcp));
    assert_eq!(choose(TransportChoice::Auto, None), Ok(Transport::Tcp));
    assert_eq!(choose(TransportChoice::Tcp, Some(&near)), Ok(Transport::Tcp));
    assert_eq!(choose(TransportChoice::Rdma, Some(&far)), Ok(Transport::Rdma));
    assert!(choose(TransportChoice::Rdma, None).is_err());
}

// ---------------------------------------------------------------- the client

fn client_facts(direction: Direction, transport: TransportChoice) -> ClientFacts {
    ClientFacts {
        direction,
        transport,
        connect_timeout: 30 * SEC,
        wait_lock: false,
        summary_timeout: SUMMARY_TIMEOUT,
    }
}

fn finished(cmds: &[ClientCmd]) -> Option<&ClientOutcome> {
    match cmds.last() {
        Some(ClientCmd::Finish(o)) => Some(o),
        _ => None,
    }
}

/// A client whose Open went out over TCP and waits for the Accept.
fn client_awaiting_accept(f: ClientFacts, t0: Instant) -> ClientSession {
    let mut c = ClientSession::new(f, t0);
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::Open { rdma: false }]));
    c.handle(t0, ClientEvent::Opened);
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::ReadFrame]));
    c
}

fn client_running(direction: Direction, t0: Instant) -> ClientSession {
    let mut c = client_awaiting_accept(client_facts(direction, TransportChoice::Tcp), t0);
    c.handle(t0, ClientEvent::Accepted(Offer::Tcp { streams: 3 }));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::Connect(Offer::Tcp { streams: 3 })]));
    c.handle(t0, ClientEvent::DataPlane(Ok(())));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::StartLocal]));
    c
}

#[test]
fn client_push_over_tcp_ends_with_the_daemons_summary() {
    let t0 = Instant::now();
    let mut c = client_running(Direction::Push, t0);
    c.handle(t0, ClientEvent::LocalDone(true));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::CloseOutbound]));
    assert_eq!(c.deadline(), Some(t0 + SUMMARY_TIMEOUT));
    c.handle(t0 + SEC, ClientEvent::Summary(Box::new(Ok(RemoteSummary::default()))));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Done(_))));
}

#[test]
fn client_summary_before_the_local_half_ends_is_kept() {
    let t0 = Instant::now();
    let mut c = client_running(Direction::Pull, t0);
    c.handle(t0, ClientEvent::Summary(Box::new(Ok(RemoteSummary::default()))));
    c.handle(t0, ClientEvent::InboundEnded);
    assert!(drain_c(&mut c).is_empty(), "the daemon ending after its summary is normal");
    c.handle(t0, ClientEvent::LocalDone(true));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Done(_))));
}

#[test]
fn client_pull_over_rdma_connects_after_the_daemon_is_ready() {
    let t0 = Instant::now();
    let mut c = ClientSession::new(client_facts(Direction::Pull, TransportChoice::Auto), t0);
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::PrepareRdmaEarly, ClientCmd::ProbeRdma]));
    c.handle(t0, ClientEvent::RdmaProbed(Ok(())));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::Open { rdma: true }]));
    c.handle(t0, ClientEvent::Opened);
    drain_c(&mut c);
    c.handle(t0, ClientEvent::Accepted(Offer::Rdma));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::PrepareRdma]));
    c.handle(t0, ClientEvent::Prepared(Ok(())));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::ReadFrame]));
    c.handle(t0, ClientEvent::RdmaReady);
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::Connect(Offer::Rdma)]));

    // The daemon's set-up failed instead: its fatal error is the outcome.
    let mut c = ClientSession::new(client_facts(Direction::Pull, TransportChoice::Rdma), t0);
    c.handle(t0, ClientEvent::RdmaProbed(Ok(())));
    c.handle(t0, ClientEvent::Opened);
    c.handle(t0, ClientEvent::Accepted(Offer::Rdma));
    c.handle(t0, ClientEvent::Prepared(Ok(())));
    drain_c(&mut c);
    let fatal = error(ErrorCode::Internal, "no QPs");
    let s = RemoteSummary { fatal: Some(fatal.clone()), ..Default::default() };
    c.handle(t0, ClientEvent::Summary(Box::new(Ok(s))));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Remote(e)) if *e == fatal));
}

#[test]
fn client_push_over_rdma_connects_at_once() {
    let t0 = Instant::now();
    let mut c = ClientSession::new(client_facts(Direction::Push, TransportChoice::Rdma), t0);
    c.handle(t0, ClientEvent::RdmaProbed(Ok(())));
    c.handle(t0, ClientEvent::Opened);
    c.handle(t0, ClientEvent::Accepted(Offer::Rdma));
    drain_c(&mut c);
    c.handle(t0, ClientEvent::Prepared(Ok(())));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::Connect(Offer::Rdma)]));
}

#[test]
fn client_required_rdma_without_a_device_ends_before_connecting() {
    let t0 = Instant::now();
    let mut c = ClientSession::new(client_facts(Direction::Push, TransportChoice::Rdma), t0);
    drain_c(&mut c);
    c.handle(t0, ClientEvent::RdmaProbed(Err("no verbs device".into())));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::RdmaUnavailable(_))));
    // auto offers TCP only.
    let mut c = ClientSession::new(client_facts(Direction::Push, TransportChoice::Auto), t0);
    drain_c(&mut c);
    c.handle(t0, ClientEvent::RdmaProbed(Err("no verbs device".into())));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::Open { rdma: false }]));
}

#[test]
fn client_refusals_and_rejections() {
    let t0 = Instant::now();
    let f = client_facts(Direction::Push, TransportChoice::Tcp);
    let mut c = client_awaiting_accept(f.clone(), t0);
    c.handle(t0, ClientEvent::Refused(error(ErrorCode::TargetLocked, "busy")));
    assert!(matches!(
        finished(&drain_c(&mut c)),
        Some(ClientOutcome::Refused(RemoteError { code: ErrorCode::TargetLocked, .. }))
    ));

    let mut c = ClientSession::new(f.clone(), t0);
    drain_c(&mut c);
    c.handle(t0, ClientEvent::Rejected { exhausted: true, message: "64 sessions".into() });
    assert!(matches!(
        finished(&drain_c(&mut c)),
        Some(ClientOutcome::Refused(RemoteError { code: ErrorCode::ResourceExhausted, .. }))
    ));
    let mut c = ClientSession::new(f.clone(), t0);
    drain_c(&mut c);
    c.handle(t0, ClientEvent::Rejected { exhausted: false, message: "internal".into() });
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Lost(_))));
    let mut c = ClientSession::new(f.clone(), t0);
    drain_c(&mut c);
    c.handle(t0, ClientEvent::Unreachable);
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Unreachable)));

    let mut c = client_awaiting_accept(f.clone(), t0);
    c.handle(t0, ClientEvent::Accepted(Offer::None));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Lost(_))));
    let mut c = client_awaiting_accept(f, t0);
    c.handle(t0, ClientEvent::InboundEnded);
    assert!(
        matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Lost(m)) if m.contains("before accepting"))
    );
}

#[test]
fn client_connect_timeout_covers_open_and_accept_unless_waiting_for_the_lock() {
    let t0 = Instant::now();
    let f = client_facts(Direction::Push, TransportChoice::Tcp);
    let mut c = ClientSession::new(f.clone(), t0);
    drain_c(&mut c);
    c.handle(t0 + 20 * SEC, ClientEvent::Opened);
    assert_eq!(c.deadline(), Some(t0 + 30 * SEC), "one deadline for connect, Open and Accept");
    drain_c(&mut c);
    c.handle(t0 + 29 * SEC, ClientEvent::Timer);
    assert!(drain_c(&mut c).is_empty());
    c.handle(t0 + 30 * SEC, ClientEvent::Timer);
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Timeout)));

    let mut c = client_awaiting_accept(ClientFacts { wait_lock: true, ..f }, t0);
    assert_eq!(c.deadline(), None, "a push waiting for the lock has no Accept deadline");
    c.handle(t0 + 3600 * SEC, ClientEvent::Accepted(Offer::Tcp { streams: 1 }));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::Connect(_)]));
}

#[test]
fn client_cancel_at_each_phase_is_cancelled() {
    let t0 = Instant::now();
    // Before the Open.
    let mut c = ClientSession::new(client_facts(Direction::Push, TransportChoice::Auto), t0);
    drain_c(&mut c);
    c.handle(t0, ClientEvent::Cancel);
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Cancelled)));
    // Waiting for the Accept.
    let mut c = client_awaiting_accept(client_facts(Direction::Push, TransportChoice::Tcp), t0);
    c.handle(t0, ClientEvent::Cancel);
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Cancelled)));
    // Connecting the data plane: the connect ends (it fails or succeeds), then the session.
    let mut c = client_awaiting_accept(client_facts(Direction::Push, TransportChoice::Tcp), t0);
    c.handle(t0, ClientEvent::Accepted(Offer::Tcp { streams: 1 }));
    drain_c(&mut c);
    c.handle(t0, ClientEvent::Cancel);
    assert!(drain_c(&mut c).is_empty());
    c.handle(t0, ClientEvent::DataPlane(Err("refused".into())));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Cancelled)));
    // Running: the halves stop, and the interrupt outranks what their stopping causes.
    let mut c = client_running(Direction::Pull, t0);
    c.handle(t0, ClientEvent::Cancel);
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::StopLocal]));
    c.handle(t0, ClientEvent::InboundFailed("cancelled".into()));
    c.handle(t0, ClientEvent::LocalDone(false));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Cancelled)));
    // Waiting for the summary.
    let mut c = client_running(Direction::Push, t0);
    c.handle(t0, ClientEvent::LocalDone(true));
    drain_c(&mut c);
    c.handle(t0, ClientEvent::Cancel);
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Cancelled)));
}

#[test]
fn client_no_summary_in_time_is_lost() {
    let t0 = Instant::now();
    let mut c = client_running(Direction::Push, t0);
    c.handle(t0, ClientEvent::LocalDone(true));
    drain_c(&mut c);
    c.handle(t0 + SUMMARY_TIMEOUT - SEC, ClientEvent::Timer);
    assert!(drain_c(&mut c).is_empty());
    c.handle(t0 + SUMMARY_TIMEOUT, ClientEvent::Timer);
    assert!(
        matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Lost(m)) if m == "no summary from the daemon")
    );
}

#[test]
fn client_daemon_gone_while_running_explains_the_local_failure() {
    let t0 = Instant::now();
    let mut c = client_running(Direction::Push, t0);
    c.handle(t0, ClientEvent::InboundEnded);
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::StopLocal]));
    c.handle(t0, ClientEvent::InboundFailed("a later failure".into()));
    c.handle(t0, ClientEvent::LocalDone(false));
    let cmds = drain_c(&mut c);
    assert!(matches!(
        finished(&cmds),
        Some(ClientOutcome::Lost(m)) if m == "the daemon ended the session without a summary"
    ));
    // Without a control-plane failure the local error stands.
    let mut c = client_running(Direction::Push, t0);
    c.handle(t0, ClientEvent::LocalDone(false));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Local)));
}

#[test]
fn client_the_daemons_fatal_error_outranks_the_local_one() {
    let t0 = Instant::now();
    let mut c = client_running(Direction::Pull, t0);
    let fatal = error(ErrorCode::Stalled, "no data for 30 s");
    let s = RemoteSummary { fatal: Some(fatal.clone()), ..Default::default() };
    c.handle(t0, ClientEvent::Summary(Box::new(Ok(s))));
    assert!(matches!(drain_c(&mut c)[..], [ClientCmd::StopLocal]));
    c.handle(t0, ClientEvent::Violation("late garbage".into()));
    c.handle(t0, ClientEvent::LocalDone(false));
    assert!(matches!(finished(&drain_c(&mut c)), Some(ClientOutcome::Remote(e)) if *e == fatal));
}

#[test]
fn client_a_summary_that_does_not_decode_is_lost() {
    let t0 = Instant::now();
    let mut c = client_running(Direction::Push, t0);
    c.handle(t0, ClientEvent::Summary(Box::new(Err("bad error code".into()))));
    c.handle(t0, ClientEvent::LocalDone(true));
    assert!(matches!(
        finished(&drain_c(&mut c)),
        Some(ClientOutcome::Lost(m)) if m.starts_with("bad summary from the daemon")
    ));
}
