//! Verbs tests against a real device (Soft-RoCE in `ci/rdma-stage.sh`).
//!
//! Without a usable device each test prints `SKIPPED: <typed error>` and
//! returns; with `BLIT_RDMA_REQUIRE=1` (set by the VM stage) that is a failure,
//! so the stage cannot pass without running them. `BLIT_RDMA_DEVICE` picks the
//! device (default: the first with an ACTIVE port).

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use blitx_verbs::{
    Access, Completion, CompletionQueue, Context, CqMode, Error, Gid, OwnedRegion, PostedLease,
    ProtectionDomain, QpConfig, QpState, QueuePair, RdmaWrite, RecvRequest, RegisteredPool,
    RemoteQpParams, SendPayload, SendRequest, WcOpcode, WcStatus, WriteWithImm, discover,
};

fn device_or_skip(test: &str) -> Option<Arc<Context>> {
    let opened = match std::env::var("BLIT_RDMA_DEVICE") {
        Ok(name) => Context::open(&name),
        Err(_) => Context::open_first_active(),
    };
    match opened {
        Ok(ctx) => Some(ctx),
        Err(e) if e.is_unavailable() => {
            if std::env::var("BLIT_RDMA_REQUIRE").is_ok_and(|v| v == "1") {
                panic!("{test}: RDMA required (BLIT_RDMA_REQUIRE=1) but unavailable: {e:?}");
            }
            // Written to the stderr handle directly: libtest captures
            // `eprintln!` of passing tests, and a skip must never be silent.
            let _ =
                writeln!(std::io::stderr(), "{test}: SKIPPED: no usable RDMA device: {e} [{e:?}]");
            None
        }
        Err(e) => panic!("{test}: opening the device failed: {e:?}"),
    }
}

/// Two QPs on one device, connected to each other, with their CQs.
struct Pair {
    pd: Arc<ProtectionDomain>,
    cq_a: Arc<CompletionQueue>,
    cq_b: Arc<CompletionQueue>,
    a: QueuePair,
    b: QueuePair,
}

fn connected_pair(ctx: &Arc<Context>, mode: CqMode) -> Pair {
    connected_pair_sized(ctx, mode, 16, 16)
}

fn connected_pair_sized(ctx: &Arc<Context>, mode: CqMode, send_wr: u32, recv_wr: u32) -> Pair {
    let pd = ProtectionDomain::new(ctx).unwrap();
    let cq_a = CompletionQueue::new(ctx, 64.max(send_wr + recv_wr), mode).unwrap();
    let cq_b = CompletionQueue::new(ctx, 64.max(send_wr + recv_wr), mode).unwrap();
    let cfg = QpConfig { max_send_wr: send_wr, max_recv_wr: recv_wr, ..QpConfig::default() };
    let mut a = QueuePair::create_rc(&pd, &cq_a, &cq_a, &cfg).unwrap();
    let mut b = QueuePair::create_rc(&pd, &cq_b, &cq_b, &cfg).unwrap();
    assert_eq!(a.state(), QpState::Init);
    let (ea, eb) = (a.endpoint(), b.endpoint());
    a.connect(&eb).unwrap();
    b.connect(&ea).unwrap();
    assert_eq!(a.state(), QpState::Rts);
    Pair { pd, cq_a, cq_b, a, b }
}

fn wait_one(cq: &CompletionQueue) -> Completion {
    let mut wc = [Completion::default(); 1];
    let n = cq.poll_wait(&mut wc, Duration::from_secs(30)).unwrap();
    assert_eq!(n, 1, "no completion within 30 s");
    wc[0]
}

#[test]
fn discover_lists_ports_gids_and_a_chosen_index() {
    let Some(ctx) = device_or_skip("discover") else { return };
    let devices = discover().unwrap();
    let dev = devices.iter().find(|d| d.name == ctx.name()).unwrap();
    let port = dev.active_port().unwrap();
    let chosen = port.chosen_gid().unwrap();
    assert!(!chosen.gid.is_zero());
    assert!(port.active_mtu.is_some());
    println!("{}", serde_json::to_string_pretty(dev).unwrap());
}

/// What the stream tests vary.
struct Stream {
    slot_bytes: usize,
    slots: u32,
    /// WRITEs in flight at most (also the sender pool's size).
    window: usize,
    total_bytes: u64,
    cq_mode: CqMode,
}

/// The byte at `offset` of message `seq` (so a slot mix-up or a stale
/// slot shows in the data).
fn pattern(seq: u64, offset: usize) -> u8 {
    (seq.wrapping_mul(31) as usize ^ offset.wrapping_mul(7)) as u8
}

/// Streams `total_bytes` from a registered pool on QP `a` into a ring of
/// `slots` slots on QP `b`, one WRITE_WITH_IMM per message (`imm` = the
/// message number), at most `window` in flight. Each sender slot is posted
/// as a `PostedLease` and goes back to the pool only when the completion of
/// its WRITE was polled (every WRITE is signalled here); the receiver checks
/// each message's `imm`, length and bytes and reposts its RECV.
fn stream(ctx: &Arc<Context>, st: &Stream) -> (u64, f64) {
    let p = connected_pair_sized(ctx, st.cq_mode, st.window as u32 + 1, st.slots + 1);
    let pool = RegisteredPool::new(
        &p.pd,
        st.window,
        st.slot_bytes,
        Access::LOCAL_WRITE,
        None,
        "test pool",
    )
    .unwrap();
    let ring = OwnedRegion::new(
        &p.pd,
        st.slots as usize * st.slot_bytes,
        Access::LOCAL_WRITE | Access::REMOTE_WRITE,
    )
    .unwrap();
    let remote = ring.mr().remote();
    let recvs: Vec<RecvRequest> =
        (0..u64::from(st.slots)).map(|i| RecvRequest { wr_id: i, buf: None }).collect();
    p.b.post_recv(&recvs).unwrap();
    let messages = st.total_bytes.div_ceil(st.slot_bytes as u64);
    let mut inflight: std::collections::VecDeque<(u64, PostedLease)> = Default::default();
    let (mut posted, mut received) = (0u64, 0u64);
    let mut wc = [Completion::default(); 16];
    let started = std::time::Instant::now();
    let mut last_progress = started;
    while received < messages {
        // the ring has `slots` slots and the receiver checks a message
        // before its slot is written again: at most `slots` ahead of it
        while posted < messages
            && inflight.len() < st.window
            && posted < received + u64::from(st.slots)
        {
            let mut lease = pool.pool().acquire().unwrap();
            let len = if posted + 1 == messages {
                (st.total_bytes - posted * st.slot_bytes as u64) as usize
            } else {
                st.slot_bytes
            };
            for (i, b) in lease.full_mut()[..len].iter_mut().enumerate() {
                *b = pattern(posted, i);
            }
            lease.set_len(len);
            let lease = pool.post_lease(lease).unwrap();
            let slot = posted % u64::from(st.slots);
            let target = remote.slice(slot * st.slot_bytes as u64, st.slot_bytes as u32).unwrap();
            let write = RdmaWrite {
                wr_id: posted,
                local: std::slice::from_ref(lease.slice()),
                remote: target,
                imm: Some(posted as u32),
                signaled: true,
            };
            p.a.post_writes(&[write]).unwrap();
            inflight.push_back((posted, lease));
            posted += 1;
        }
        // wait on the side that owes a completion: the receiver while a
        // message is on its way, else the sender (its slots come back)
        let (wait_a, wait_b) = if received < posted {
            (Duration::ZERO, Duration::from_millis(20))
        } else {
            (Duration::from_millis(20), Duration::ZERO)
        };
        assert!(last_progress.elapsed() < Duration::from_secs(30), "no completion for 30 s");
        let n = p.cq_a.poll_wait(&mut wc, wait_a).unwrap();
        if n > 0 {
            last_progress = std::time::Instant::now();
        }
        for c in &wc[..n] {
            c.check().unwrap();
            assert_eq!(c.opcode, WcOpcode::RdmaWrite);
            let (seq, _lease) = inflight.pop_front().expect("a completion for no WRITE");
            assert_eq!(c.wr_id, seq, "send completions come in posting order");
            // `_lease` drops here: the slot goes back to the pool
        }
        let n = p.cq_b.poll_wait(&mut wc, wait_b).unwrap();
        if n > 0 {
            last_progress = std::time::Instant::now();
        }
        for c in &wc[..n] {
            c.check().unwrap();
            assert_eq!(c.opcode, WcOpcode::RecvRdmaWithImm);
            assert_eq!(c.imm, Some(received as u32), "messages arrive in order");
            let len = c.byte_len as usize;
            let slot = (received % u64::from(st.slots)) as usize;
            let mut got = vec![0u8; len];
            ring.read_at(slot * st.slot_bytes, &mut got).unwrap();
            let bad = got.iter().enumerate().position(|(i, &b)| b != pattern(received, i));
            assert_eq!(bad, None, "message {received}: wrong byte in slot {slot}");
            p.b.post_recv(&[RecvRequest { wr_id: c.wr_id, buf: None }]).unwrap();
            received += 1;
        }
    }
    // the pool and the ring are owners the QPs hold: one each
    assert_eq!((p.a.attached_owners(), p.b.attached_owners()), (1, 0));
    let mib_per_s = st.total_bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64();
    (messages, mib_per_s)
}

#[test]
fn pool_leases_stream_with_imm_through_a_rotating_ring_busy_poll() {
    let Some(ctx) = device_or_skip("stream busy") else { return };
    let st = Stream {
        slot_bytes: 1 << 20,
        slots: 16,
        window: 8,
        total_bytes: 64 << 20,
        cq_mode: CqMode::BusyPoll,
    };
    let (messages, mib_per_s) = stream(&ctx, &st);
    assert_eq!(messages, 64);
    println!("busy: {mib_per_s:.1} MiB/s, {messages} messages");
}

#[test]
fn pool_leases_stream_with_event_mode_cqs_and_odd_geometry() {
    let Some(ctx) = device_or_skip("stream event") else { return };
    let st = Stream {
        slot_bytes: 192 << 10,
        slots: 5,
        window: 3,
        total_bytes: (8 << 20) + 12345,
        cq_mode: CqMode::Event,
    };
    let (messages, mib_per_s) = stream(&ctx, &st);
    assert_eq!(messages, ((8u64 << 20) + 12345).div_ceil(192 << 10));
    println!("event: {mib_per_s:.1} MiB/s, {messages} messages");
}

#[test]
fn a_waiter_asleep_on_an_event_cq_is_woken_without_a_completion() {
    let Some(ctx) = device_or_skip("cq_wake") else { return };
    let cq = CompletionQueue::new(&ctx, 16, CqMode::Event).unwrap();
    let waker = cq.waker();
    // no deadline: only the wake can end this wait (the CQ has no QP)
    let sleeper = {
        let cq = Arc::clone(&cq);
        std::thread::spawn(move || {
            let mut wc = [Completion::default(); 4];
            cq.poll_wait_until(&mut wc, None).unwrap()
        })
    };
    waker.wake();
    assert_eq!(sleeper.join().unwrap(), 0, "woken, not completed");
    // consumed: the next timed wait sleeps to its deadline
    let mut wc = [Completion::default(); 4];
    let t = std::time::Instant::now();
    assert_eq!(cq.poll_wait(&mut wc, Duration::from_millis(30)).unwrap(), 0);
    assert!(t.elapsed() >= Duration::from_millis(30));
    // a wake and a completion together: the completion is still delivered
    let p = connected_pair(&ctx, CqMode::Event);
    let rx_buf = OwnedRegion::new(&p.pd, 4096, Access::LOCAL_WRITE).unwrap();
    p.b.post_recv(&[RecvRequest { wr_id: 9, buf: Some(rx_buf.slice(0, 64).unwrap()) }]).unwrap();
    p.cq_b.waker().wake();
    let mut got = [Completion::default(); 4];
    assert_eq!(p.cq_b.poll_wait_until(&mut got, None).unwrap(), 0, "the wake ends the wait");
    p.a.post_send(SendRequest { wr_id: 1, payload: SendPayload::Inline(b"hi"), signaled: true })
        .unwrap();
    let c = wait_one(&p.cq_b);
    assert_eq!((c.wr_id, c.opcode, c.byte_len), (9, WcOpcode::Recv, 2));
    assert_eq!(wait_one(&p.cq_a).wr_id, 1);
}

#[test]
fn a_qp_keeps_the_memory_of_a_posted_recv_until_it_is_destroyed() {
    let Some(ctx) = device_or_skip("posted memory kept") else { return };
    let p = connected_pair(&ctx, CqMode::BusyPoll);
    let rx = OwnedRegion::new(&p.pd, 4096, Access::LOCAL_WRITE).unwrap();
    p.b.post_recv(&[RecvRequest { wr_id: 5, buf: Some(rx.slice(0, 4096).unwrap()) }]).unwrap();
    // the caller lets go of the region while the RECV is outstanding: the QP
    // still holds it, so the SEND below lands in registered, mapped memory
    drop(rx);
    assert_eq!(p.b.attached_owners(), 1);
    p.a.post_send(SendRequest { wr_id: 6, payload: SendPayload::Inline(b"late"), signaled: true })
        .unwrap();
    let c = wait_one(&p.cq_b);
    assert_eq!(
        (c.wr_id, c.opcode, c.byte_len, c.status),
        (5, WcOpcode::Recv, 4, WcStatus::SUCCESS)
    );
    assert_eq!(wait_one(&p.cq_a).wr_id, 6);
}

#[test]
fn send_recv_inline_and_registered_payloads_arrive_intact() {
    let Some(ctx) = device_or_skip("send/recv") else { return };
    let p = connected_pair(&ctx, CqMode::BusyPoll);
    let rx_buf = OwnedRegion::new(&p.pd, 4096, Access::LOCAL_WRITE).unwrap();
    let mut tx_buf = OwnedRegion::new(&p.pd, 4096, Access::NONE).unwrap();
    p.b.post_recv(&[
        RecvRequest { wr_id: 1, buf: Some(rx_buf.slice(0, 64).unwrap()) },
        RecvRequest { wr_id: 2, buf: Some(rx_buf.slice(64, 1000).unwrap()) },
    ])
    .unwrap();
    p.a.post_send(SendRequest {
        wr_id: 10,
        payload: SendPayload::Inline(b"credit:42"),
        signaled: true,
    })
    .unwrap();
    let big: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    tx_buf.write_at(0, &big).unwrap();
    let slice = tx_buf.slice(0, big.len()).unwrap();
    p.a.post_send(SendRequest {
        wr_id: 11,
        payload: SendPayload::Registered(slice),
        signaled: true,
    })
    .unwrap();

    let c = wait_one(&p.cq_b);
    assert_eq!((c.wr_id, c.opcode, c.byte_len, c.imm), (1, WcOpcode::Recv, 9, None));
    let c = wait_one(&p.cq_b);
    assert_eq!((c.wr_id, c.opcode, c.byte_len), (2, WcOpcode::Recv, 1000));
    for id in [10, 11] {
        let c = wait_one(&p.cq_a);
        assert_eq!((c.wr_id, c.opcode), (id, WcOpcode::Send));
    }
    let mut got = [0u8; 9];
    rx_buf.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"credit:42");
    let mut got = vec![0u8; 1000];
    rx_buf.read_at(64, &mut got).unwrap();
    assert_eq!(got, big);
    let too_big = [0u8; 4096];
    let err = p.a.post_send(SendRequest {
        wr_id: 12,
        payload: SendPayload::Inline(&too_big),
        signaled: true,
    });
    assert!(matches!(err, Err(Error::InlineTooLarge { .. })), "{err:?}");
}

#[test]
fn chained_writes_with_imm_deliver_imm_in_host_order() {
    let Some(ctx) = device_or_skip("chained writes") else { return };
    let p = connected_pair(&ctx, CqMode::BusyPoll);
    let target =
        OwnedRegion::new(&p.pd, 64 << 10, Access::LOCAL_WRITE | Access::REMOTE_WRITE).unwrap();
    let mut source = OwnedRegion::new(&p.pd, 64 << 10, Access::NONE).unwrap();
    let data: Vec<u8> = (0..(64u32 << 10)).map(|i| (i % 251) as u8).collect();
    source.write_at(0, &data).unwrap();
    p.b.post_recv(&(0..4).map(|i| RecvRequest { wr_id: 100 + i, buf: None }).collect::<Vec<_>>())
        .unwrap();
    let remote = target.mr().remote();
    let writes: Vec<WriteWithImm> = (0..4u64)
        .map(|i| WriteWithImm {
            wr_id: i,
            local: source.slice(i as usize * 16384, 16384).unwrap(),
            remote: remote.slice(i * 16384, 16384).unwrap(),
            imm: 0xA1B2_C300 + i as u32,
            signaled: i == 3, // only the last: unsignalled WRs complete silently
        })
        .collect();
    p.a.post_write_with_imm(&writes).unwrap();
    let c = wait_one(&p.cq_a);
    assert_eq!((c.wr_id, c.opcode), (3, WcOpcode::RdmaWrite));
    for i in 0..4u32 {
        let c = wait_one(&p.cq_b);
        assert_eq!(c.opcode, WcOpcode::RecvRdmaWithImm);
        assert_eq!(c.imm, Some(0xA1B2_C300 + i));
        assert_eq!(c.byte_len, 16384);
        assert_eq!(c.wr_id, 100 + u64::from(i));
    }
    let mut got = vec![0u8; data.len()];
    target.read_at(0, &mut got).unwrap();
    assert_eq!(got, data);
}

#[test]
fn write_with_a_wrong_rkey_fails_with_remote_access_error() {
    let Some(ctx) = device_or_skip("wrong rkey") else { return };
    let p = connected_pair(&ctx, CqMode::BusyPoll);
    let target = OwnedRegion::new(&p.pd, 4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE).unwrap();
    let source = OwnedRegion::new(&p.pd, 4096, Access::NONE).unwrap();
    p.b.post_recv(&[RecvRequest { wr_id: 1, buf: None }]).unwrap();
    let mut remote = target.mr().remote();
    remote.rkey ^= 0x5a5a_0000;
    p.a.post_write_with_imm(&[WriteWithImm {
        wr_id: 77,
        local: source.slice(0, 4096).unwrap(),
        remote: remote.slice(0, 4096).unwrap(),
        imm: 1,
        signaled: true,
    }])
    .unwrap();
    let c = wait_one(&p.cq_a);
    assert_eq!(c.status, WcStatus::REM_ACCESS_ERR, "{c:?}");
    match c.check() {
        Err(Error::WorkCompletion { status, text, wr_id, .. }) => {
            assert_eq!((status, wr_id), (WcStatus::REM_ACCESS_ERR, 77));
            assert!(text.contains("remote access"), "{text}");
        }
        other => panic!("expected WorkCompletion, got {other:?}"),
    }
}

#[test]
fn misuse_is_reported_as_typed_errors() {
    let Some(ctx) = device_or_skip("misuse") else { return };
    let err = Context::open("no-such-device0").unwrap_err();
    assert!(
        matches!(&err, Error::DeviceNotFound { available, .. } if !available.is_empty()),
        "{err:?}"
    );

    let pd = ProtectionDomain::new(&ctx).unwrap();
    let cq = CompletionQueue::new(&ctx, 8, CqMode::BusyPoll).unwrap();
    let mut qp = QueuePair::create_rc(&pd, &cq, &cq, &QpConfig::default()).unwrap();
    let region = OwnedRegion::new(&pd, 4096, Access::NONE).unwrap();
    let err = qp.post_send(SendRequest {
        wr_id: 1,
        payload: SendPayload::Registered(region.slice(0, 8).unwrap()),
        signaled: true,
    });
    assert!(matches!(err, Err(Error::WrongState { .. })), "{err:?}");
    assert!(matches!(region.slice(4000, 200), Err(Error::OutOfBounds { .. })));
    let bogus = RemoteQpParams {
        qpn: 1 << 24,
        psn: 0,
        gid: Gid::ZERO,
        gid_index: 0,
        lid: 0,
        mtu: qp.endpoint().mtu,
    };
    assert!(matches!(qp.connect(&bogus), Err(Error::InvalidRemote { .. })));
    let huge = QpConfig { max_send_wr: u32::MAX, ..QpConfig::default() };
    assert!(matches!(QueuePair::create_rc(&pd, &cq, &cq, &huge), Err(Error::InvalidConfig { .. })));
    let bad_port = QpConfig { port_num: 9, ..QpConfig::default() };
    assert!(QueuePair::create_rc(&pd, &cq, &cq, &bad_port).is_err());
}

#[test]
fn teardown_in_any_drop_order_is_safe() {
    let Some(ctx) = device_or_skip("teardown") else { return };
    // Drop the context handle and PD first: the QP/CQ/MR keep them alive and
    // free them last (QP -> CQ -> MR -> PD -> context).
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let cq = CompletionQueue::new(&ctx, 8, CqMode::Event).unwrap();
    let qp = QueuePair::create_rc(&pd, &cq, &cq, &QpConfig::default()).unwrap();
    let region = OwnedRegion::new(&pd, 1 << 20, Access::LOCAL_WRITE).unwrap();
    drop(ctx);
    drop(pd);
    drop(cq);
    assert_eq!(qp.state(), QpState::Init);
    drop(region);
    drop(qp);
}
