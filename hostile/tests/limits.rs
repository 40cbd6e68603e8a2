//! Resource bounds of a real `blit daemon` against peers that hold connections, streams,
//! sessions and memory (TESTS.md row 5).

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use blitx_core::frame::{FrameHeader, FrameKind};
use blitx_hostile::msg;
use blitx_hostile::process::{DaemonProc, s, xfer};
use blitx_hostile::raw::{End, RawClient, Recv, Session, describe_recv};
use blitx_hostile::{ERROR_CODE_RESOURCE_EXHAUSTED, pb, scratch, wait_until};
use blitx_storage::testkit::{compare_trees, mixed_tree};

const THREADS_MAX: u64 = 100;
const RSS_MAX_KIB: u64 = 300 * 1024;

fn start(root: &Path, extra: &[&str]) -> DaemonProc {
    DaemonProc::start(root, extra).unwrap_or_else(|e| panic!("{e}"))
}

fn export(t: &Path) -> std::path::PathBuf {
    let root = t.join("export");
    std::fs::create_dir(&root).unwrap();
    root
}

/// A stock push of a small tree to `dest` must succeed within `limit`.
fn normal_push_works(d: &mut DaemonProc, t: &Path, dest: &str, limit: Duration) {
    let src = t.join(format!("src-{dest}"));
    mixed_tree(&src, 5, 30, 1, 200_000);
    let r = xfer(&[s(&src), &d.url(dest)], limit);
    assert_eq!(r.code(), Some(0), "a normal push failed: {}\n{}", r.describe(), d.describe());
    compare_trees(&src, &t.join("export").join(dest)).unwrap();
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (up to the hard limit); returns
/// the soft limit now in force.
fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(u64::MAX);
    if soft >= want {
        return soft;
    }
    let target = cur.maximum.map_or(want, |h| h.min(want));
    let mut new = cur;
    new.current = Some(target);
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => target,
        Err(_) => soft,
    }
}

#[test]
fn idle_control_connections_do_not_exhaust_the_daemon() {
    let t = scratch("row5-idle");
    let _root = export(t.path());
    let limit = raise_nofile(4096);
    let want = 2000usize.min((limit as usize).saturating_sub(200));
    // The daemon runs with the soft descriptor limit a service manager gives it by default.
    let mut d = DaemonProc::start_with(&t.path().join("export"), &[], Some(1024))
        .unwrap_or_else(|e| panic!("{e}"));
    let opening = Instant::now();
    let mut conns = Vec::with_capacity(want);
    let mut failures = 0usize;
    while conns.len() < want && opening.elapsed() < Duration::from_secs(8) && failures < 50 {
        let addr = d.addr.parse().unwrap();
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(c) => conns.push(c),
            Err(_) => failures += 1,
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let ctx = format!(
        "{} idle connections open ({failures} connects failed), daemon fds {:?}",
        conns.len(),
        d.fds()
    );
    eprintln!("{ctx}");
    assert!(d.is_alive(), "the daemon died; {ctx}; {}", d.describe());
    let started = Instant::now();
    let src = t.path().join("src");
    mixed_tree(&src, 5, 30, 1, 200_000);
    let r = xfer(&[s(&src), &d.url("after")], Duration::from_secs(15));
    let threads = d.threads();
    assert_eq!(
        r.code(),
        Some(0),
        "a stock push failed with {ctx} (after {:?}): {}\n{}",
        started.elapsed(),
        r.describe(),
        d.describe()
    );
    compare_trees(&src, &t.path().join("export/after")).unwrap();
    assert!(threads.is_some_and(|n| n < THREADS_MAX), "daemon threads {threads:?}; {ctx}");
    drop(conns);
}

/// `n` Session streams that never send Open, spread over connections of 25 streams each.
fn idle_sessions(addr: &str, n: usize) -> Vec<Session> {
    let mut out = Vec::with_capacity(n);
    let mut client = None;
    for i in 0..n {
        if i % 25 == 0 {
            client = Some(RawClient::connect(addr).unwrap());
        }
        if let Some(c) = &client {
            out.push(c.session(None));
        }
    }
    out
}

/// The most threads the daemon had over `window`.
fn max_threads(d: &DaemonProc, window: Duration) -> u64 {
    let start = Instant::now();
    let mut max = 0;
    while start.elapsed() < window {
        max = max.max(d.threads().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    max
}

#[test]
fn pre_open_streams_do_not_cost_a_thread_each() {
    let t = scratch("row5-preopen");
    let root = export(t.path());
    let mut d = start(&root, &[]);
    let sessions = idle_sessions(&d.addr, 300);
    let max = max_threads(&d, Duration::from_secs(2));
    assert!(
        max < THREADS_MAX,
        "300 Session streams that never sent Open gave the daemon {max} threads; {}",
        d.describe()
    );
    drop(sessions);
}

#[test]
fn pre_open_streams_time_out() {
    let t = scratch("row5-opentimeout");
    let root = export(t.path());
    let d = start(&root, &["--open-timeout", "1"]);
    let opened = Instant::now();
    let mut sessions = idle_sessions(&d.addr, 300);
    let max = max_threads(&d, Duration::from_millis(800));
    let all_closed = wait_until(Duration::from_secs(4), || {
        sessions.iter_mut().all(|s| {
            // Drains whatever arrived; an ended stream stays ended.
            while let Recv::Frame(_) = s.recv(Duration::ZERO) {}
            s.is_ended()
        })
    });
    let open = sessions.iter().filter(|s| !s.is_ended()).count();
    assert!(
        all_closed,
        "{open} of 300 streams that never sent Open were still open {:?} after opening (--open-timeout 1)",
        opened.elapsed()
    );
    assert!(max < THREADS_MAX, "the pre-Open streams gave the daemon {max} threads");
}

fn is_resource_exhausted(r: &Recv) -> bool {
    match r {
        Recv::Status(st) => st.code() == tonic::Code::ResourceExhausted,
        Recv::Frame(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Error(e)) }) => {
            e.code == ERROR_CODE_RESOURCE_EXHAUSTED
        }
        _ => false,
    }
}

#[test]
fn too_many_sessions_are_refused() {
    let t = scratch("row5-sessions");
    let root = export(t.path());
    let d = start(&root, &["--max-sessions", "2"]);
    let c = RawClient::connect(&d.addr).unwrap();
    let mut s1 = c.session(Some(msg::open_push("s1")));
    s1.accept(Duration::from_secs(5)).unwrap_or_else(|e| panic!("first session: {e}"));
    let mut s2 = c.session(Some(msg::open_push("s2")));
    s2.accept(Duration::from_secs(5)).unwrap_or_else(|e| panic!("second session: {e}"));
    let mut s3 = c.session(Some(msg::open_push("s3")));
    let r = s3.recv_skip_events(Duration::from_secs(5));
    assert!(
        is_resource_exhausted(&r),
        "a third session with --max-sessions 2 got {} (expected RESOURCE_EXHAUSTED)",
        describe_recv(&r)
    );
}

#[test]
fn listing_entry_cap_is_enforced() {
    let t = scratch("row5-entries");
    let root = export(t.path());
    let mut d = start(&root, &["--max-entries", "100000"]);
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(msg::open_push("cap")).unwrap();
    const TOTAL: u64 = 200_000;
    const PART: u64 = 4096;
    let mut rss_max = 0;
    let mut sent_parts = 0;
    let mut cut = None;
    let mut run = || -> Result<(), String> {
        sess.send_source(msg::root(msg::root_entry(0o755)))?;
        let mut id = 1;
        while id <= TOTAL {
            let last = (id + PART - 1).min(TOTAL);
            let entries = (id..=last).map(|i| msg::file(i, format!("f{i:06}"), 1, 0o644)).collect();
            sess.send_source(msg::listing("", entries, last == TOTAL))?;
            sent_parts += 1;
            rss_max = rss_max.max(d.rss_kib().unwrap_or(0));
            id = last + 1;
        }
        sess.send_source(msg::manifest_end())?;
        data.end_all().map_err(|e| e.to_string())?;
        sess.send_source(msg::data_end())?;
        Ok(())
    };
    if let Err(e) = run() {
        cut = Some(e);
    }
    let end = sess.finish(Duration::from_secs(30));
    rss_max = rss_max.max(d.rss_kib().unwrap_or(0));
    let ctx = format!(
        "{sent_parts} parts sent, cut short: {cut:?}; session end: {}; daemon RSS max {} MiB",
        end.describe(),
        rss_max / 1024
    );
    assert!(d.is_alive(), "the daemon died; {ctx}; {}", d.describe());
    assert!(end.is_refusal(), "200,000 entries with --max-entries 100000 were accepted; {ctx}");
    assert!(rss_max < RSS_MAX_KIB, "the daemon grew past 300 MB; {ctx}");
    drop(sess);
    normal_push_works(&mut d, t.path(), "after", Duration::from_secs(15));
}

#[test]
fn client_cannot_choose_a_huge_pool() {
    let t = scratch("row5-pool");
    let root = export(t.path());
    let d = start(&root, &["--session-memory", "128M"]);
    let c = RawClient::connect(&d.addr).unwrap();
    let mut open = msg::open_push("pool");
    open.tcp_streams = 64;
    if let Some(p) = open.params.as_mut() {
        p.chunk_bytes = 64 << 20;
    }
    let mut sess = c.session(Some(open));
    let r = sess.recv_skip_events(Duration::from_secs(10));
    eprintln!("answer to 64 streams x 64 MiB: {}", describe_recv(&r));
    if is_resource_exhausted(&r) {
        let rss = d.rss_kib().unwrap_or(0);
        assert!(rss < RSS_MAX_KIB, "daemon RSS {} MiB after refusing", rss / 1024);
        return;
    }
    let accept = match r {
        Recv::Frame(pb::ServerFrame { msg: Some(pb::server_frame::Msg::Accept(a)) }) => a,
        other => panic!("expected RESOURCE_EXHAUSTED or Accept, got {}", describe_recv(&other)),
    };
    let streams = accept.tcp.as_ref().map_or(0, |t| t.streams);
    assert!(
        u64::from(streams) * (64 << 20) <= 128 << 20,
        "accepted {streams} streams of 64 MiB chunks with --session-memory 128M"
    );
    // Make every stream's receiver hold a chunk buffer: a 64 MiB Chunk header, then half of it.
    let mut data = Session::connect_data(&accept, Duration::from_secs(10)).unwrap();
    let header = FrameHeader {
        kind: FrameKind::Chunk,
        flags: 0,
        file_id: 1,
        offset_bytes: 0,
        len_bytes: 64 << 20,
        checksum: 0,
    }
    .encode();
    let half = vec![0x5au8; 32 << 20];
    for i in 0..data.streams.len() {
        let _ = data.send_raw(i, &header);
        let _ = data.send_raw(i, &half);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss = d.rss_kib().unwrap_or(0);
    assert!(rss < RSS_MAX_KIB, "daemon RSS {} MiB with {streams} streams", rss / 1024);
}

#[test]
fn idle_session_times_out() {
    let t = scratch("row5-idlesession");
    let root = export(t.path());
    let d = start(&root, &["--idle-timeout", "2"]);
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, _data) = c.open_with_data(msg::open_push("idle")).unwrap();
    let start = Instant::now();
    let end = sess.finish(Duration::from_secs(8));
    let took = start.elapsed();
    assert!(
        !matches!(end, End::Timeout) && took <= Duration::from_millis(6500),
        "a push that sent nothing after Open was not ended by --idle-timeout 2: {} after {took:?}",
        end.describe()
    );
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Row 5 of the hardening review: with its descriptors exhausted the daemon retried `accept`
/// in a loop at 100% of a core and logged nothing. Now it pauses accepting, says so once, and
/// serves again when descriptors free up.
#[test]
fn descriptor_exhaustion_pauses_accepts_and_is_logged_once() {
    let t = scratch("row5-emfile");
    let root = export(t.path());
    raise_nofile(2048);
    let mut d = DaemonProc::start_with(&root, &["--max-connections", "100000"], Some(64))
        .unwrap_or_else(|e| panic!("{e}"));
    // More than 64 descriptors' worth, fewer than the listen backlog.
    let conns: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(&d.addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(d.pid()) - before;
    let ticks_per_s = rustix::param::clock_ticks_per_second();
    let logs = d.stderr_tail(20_000);
    let said = logs.matches("cannot accept control connections").count();
    assert!(
        spent < ticks_per_s / 2,
        "the daemon used {spent} ticks of CPU in 2 s with its descriptors exhausted; {}",
        d.describe()
    );
    assert_eq!(said, 1, "the exhaustion was logged {said} times:\n{logs}");
    drop(conns);
    // Idle connections without a session are closed after a minute; a normal push needs
    // descriptors now, so free them the way an operator would: the clients go away.
    wait_until(Duration::from_secs(5), || d.fds().is_some_and(|n| n < 40));
    normal_push_works(&mut d, t.path(), "after", Duration::from_secs(30));
}
