//! `blit daemon --metrics`: a real daemon process on loopback, scraped with plain HTTP/1.1
//! requests while and after it serves pushes and pulls. Counters move by what the transfers
//! moved; a failure counts under its kind; a path with markup stays text; the listener is
//! bounded against idle, dripping and oversized requests; and without the flag nothing listens.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use blitx_storage::testkit::{Rng, write_random};

const BLIT: &str = env!("CARGO_BIN_EXE_blit");

/// A daemon process, killed on drop.
struct Daemon {
    child: Child,
    control: String,
    metrics: Option<String>,
}

impl Daemon {
    fn start(root: &Path, extra: &[&str]) -> Daemon {
        let mut child = Command::new(BLIT)
            .arg("daemon")
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--no-rdma"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut metrics = None;
        let control = loop {
            let line = lines.next().expect("daemon exited before listening").unwrap();
            if let Some(a) = line.strip_prefix("blit daemon metrics on http://") {
                metrics = Some(a.trim_end_matches('/').to_string());
            }
            if let Some(a) = line.strip_prefix("blit daemon listening on ") {
                break a.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Daemon { child, control, metrics }
    }

    fn url(&self, path: &str) -> String {
        format!("blit://{}/{}", self.control, path)
    }

    fn metrics(&self) -> &str {
        self.metrics.as_deref().expect("started with --metrics")
    }

    /// Listening TCP sockets the daemon process holds (from /proc: its socket descriptors'
    /// inodes matched against the kernel's table of listening sockets).
    fn listening_sockets(&self) -> usize {
        let pid = self.child.id();
        let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("socket:[").map(|s| s.trim_end_matches(']').to_string())
            })
            .collect();
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|t| std::fs::read_to_string(t).ok())
            .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 9 && f[3] == "0A" && inodes.contains(f[9])
            })
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; the status code and the body.
fn get(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    get_as(addr, addr, method, path)
}

/// One HTTP/1.1 request naming `host` in its Host header.
fn get_as(addr: &str, host: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

fn scrape(d: &Daemon) -> String {
    let (code, _, body) = get(d.metrics(), "GET", "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of one series (`name{labels}`) in a scrape.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn status(d: &Daemon) -> serde_json::Value {
    let (code, _, body) = get(d.metrics(), "GET", "/api/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn xfer(src: &str, dst: &str, extra: &[&str]) -> Output {
    Command::new(BLIT)
        .args(["xfer", src, dst, "--no-progress"])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A scrape once no session is active.
fn ended(d: &Daemon) -> String {
    let idle = |t: &str| {
        ["push", "pull"].iter().all(|dir| {
            ["tcp", "rdma", "none"].iter().all(|tr| {
                let series =
                    format!("blit_sessions_active{{direction=\"{dir}\",transport=\"{tr}\"}}");
                value(t, &series) == 0.0
            })
        })
    };
    let mut text = String::new();
    wait_for(Duration::from_secs(20), "the daemon's sessions to end", || {
        text = scrape(d);
        idle(&text)
    });
    text
}

fn push_pull_series(direction: &str, what: &str) -> String {
    format!("blit_{what}{{direction=\"{direction}\",transport=\"tcp\"}}")
}

#[test]
fn push_and_pull_move_the_counters_by_what_they_moved() {
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = Rng::new(19);
    let sizes = [1u64 << 20, 300_000, 5 << 20];
    for (i, n) in sizes.iter().enumerate() {
        write_random(&src.join(format!("f{i}")), *n, &mut rng);
    }
    let total: u64 = sizes.iter().sum();
    let d = Daemon::start(root.path(), &["--metrics", "127.0.0.1:0"]);
    let before = scrape(&d);
    assert_eq!(value(&before, &push_pull_series("push", "sessions_total")), 0.0);

    let out = xfer(src.to_str().unwrap(), &d.url("tree"), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The client is done once it has the summary; the daemon's session ends just after.
    let after_push = ended(&d);
    assert_eq!(value(&after_push, &push_pull_series("push", "sessions_total")), 1.0);
    assert_eq!(
        value(&after_push, &push_pull_series("push", "transferred_bytes_total")),
        total as f64
    );
    assert_eq!(value(&after_push, &push_pull_series("push", "transferred_files_total")), 3.0);
    assert_eq!(value(&after_push, &push_pull_series("push", "sessions_active")), 0.0);
    assert_eq!(value(&after_push, &push_pull_series("pull", "sessions_total")), 0.0);
    // Loopback retransmits nothing; the series is there and was readable.
    assert_eq!(value(&after_push, "blit_tcp_retransmits_total{direction=\"push\"}"), 0.0);
    assert_eq!(value(&after_push, "blit_tcp_info_unreadable_sessions_total"), 0.0);

    let back = local.path().join("back");
    let out = xfer(&d.url("tree"), back.to_str().unwrap(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after_pull = ended(&d);
    assert_eq!(value(&after_pull, &push_pull_series("pull", "sessions_total")), 1.0);
    assert_eq!(
        value(&after_pull, &push_pull_series("pull", "transferred_bytes_total")),
        total as f64
    );
    assert_eq!(value(&after_pull, &push_pull_series("pull", "transferred_files_total")), 3.0);
    assert_eq!(
        value(&after_pull, &push_pull_series("push", "transferred_bytes_total")),
        total as f64
    );
    for kind in ["internal", "bad_path", "read_only"] {
        let series = format!("blit_session_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(value(&after_pull, &series), 0.0);
    }
}

#[test]
fn a_refused_push_counts_under_its_error_kind() {
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a"), b"abc").unwrap();
    let d = Daemon::start(root.path(), &["--metrics", "127.0.0.1:0", "--read-only"]);
    let out = xfer(src.path().to_str().unwrap(), &d.url("x"), &[]);
    assert!(!out.status.success());
    let text = ended(&d);
    assert_eq!(value(&text, "blit_session_errors_total{kind=\"read_only\"}"), 1.0);
    assert_eq!(value(&text, "blit_session_errors_total{kind=\"internal\"}"), 0.0);
    // It never had a data plane: counted as a session of transport "none", nothing moved.
    assert_eq!(value(&text, "blit_sessions_total{direction=\"push\",transport=\"none\"}"), 1.0);
    assert_eq!(value(&text, &push_pull_series("push", "transferred_bytes_total")), 0.0);
}

/// A push from memory that runs until killed, to a path full of markup and quotes.
const HOSTILE: &str = "evil<script>alert(1)</script>\"q'\nline2";

#[test]
fn a_live_session_shows_with_its_path_escaped_and_its_bytes_growing() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), &["--metrics", "127.0.0.1:0"]);
    let mut client = Command::new(BLIT)
        .args(["xfer", "--no-progress", "--mem", "1000G", "-", &d.url(HOSTILE)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    let mut seen = 0u64;
    wait_for(Duration::from_secs(20), "the session's bytes", || {
        let st = status(&d);
        seen = st["sessions"][0]["bytes"].as_u64().unwrap_or(0);
        seen > 0
    });
    let st = status(&d);
    let s = &st["sessions"][0];
    assert_eq!(s["path"], HOSTILE, "JSON carries the path exactly (escaped by the encoder)");
    assert_eq!(s["direction"], "push");
    assert_eq!(s["transport"], "tcp");
    let text = scrape(&d);
    assert_eq!(value(&text, &push_pull_series("push", "sessions_active")), 1.0);
    let live = value(&text, &push_pull_series("push", "transferred_bytes_total"));
    assert!(live >= seen as f64, "{live} < {seen}");
    assert!(!text.contains("<script>") && !text.contains("line2"), "paths never reach labels");
    // The counter keeps growing while the session runs.
    wait_for(Duration::from_secs(20), "the byte counter to grow", || {
        value(&scrape(&d), &push_pull_series("push", "transferred_bytes_total")) > live
    });

    let (code, head, page) = get(d.metrics(), "GET", "/");
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(!page.contains("<script>alert"), "the path became markup:\n{page}");
    assert!(
        page.contains("evil&lt;script&gt;alert(1)&lt;/script&gt;&quot;q&#39;\nline2"),
        "{page}"
    );
    assert_eq!(page.matches("<script").count(), 1, "only the page's own script");

    client.kill().unwrap();
    client.wait().unwrap();
    // The session ends (the client vanished) and its bytes stay counted.
    wait_for(Duration::from_secs(40), "the session to end", || {
        value(&scrape(&d), &push_pull_series("push", "sessions_active")) == 0.0
    });
    let text = scrape(&d);
    assert!(value(&text, &push_pull_series("push", "transferred_bytes_total")) >= live);
    assert_eq!(value(&text, &push_pull_series("push", "sessions_total")), 1.0);
}

#[test]
fn without_the_flag_nothing_else_listens() {
    let root = tempfile::tempdir().unwrap();
    let plain = Daemon::start(root.path(), &[]);
    assert!(plain.metrics.is_none());
    assert_eq!(plain.listening_sockets(), 1, "only the control port");
    let with = Daemon::start(root.path(), &["--metrics", "127.0.0.1:0"]);
    assert_eq!(with.listening_sockets(), 2, "the control port and the metrics port");
}

#[test]
fn only_get_of_the_listed_paths_is_answered() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), &["--metrics", "127.0.0.1:0"]);
    assert_eq!(get(d.metrics(), "GET", "/etc/passwd").0, 404);
    assert_eq!(get(d.metrics(), "GET", "/../metrics").0, 404);
    assert_eq!(get(d.metrics(), "POST", "/metrics").0, 405);
    assert_eq!(get(d.metrics(), "DELETE", "/").0, 405);
    let (code, head, body) = get(d.metrics(), "GET", "/metrics");
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"));
    assert!(body.contains("# TYPE blit_sessions_total counter"));
    assert_eq!(get(d.metrics(), "HEAD", "/").0, 200);
    // A DNS name rebound to this address does not get the page or its JSON; scrapers by name
    // still get the counters (no paths or peers in them).
    let port = d.metrics().rsplit_once(':').unwrap().1;
    let rebound = format!("attacker.example:{port}");
    assert_eq!(get_as(d.metrics(), &rebound, "GET", "/").0, 421);
    assert_eq!(get_as(d.metrics(), &rebound, "GET", "/api/status").0, 421);
    assert_eq!(get_as(d.metrics(), &rebound, "GET", "/metrics").0, 200);
    assert_eq!(get_as(d.metrics(), &format!("localhost:{port}"), "GET", "/").0, 200);
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error response, then the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_dripping_connections_are_bounded() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), &["--metrics", "127.0.0.1:0"]);
    // Every slot taken by connections that say nothing.
    let mut idle: Vec<TcpStream> =
        (0..16).map(|_| TcpStream::connect(d.metrics()).unwrap()).collect();
    // One more is closed at once, unanswered.
    let mut extra = TcpStream::connect(d.metrics()).unwrap();
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(closed_within(&mut extra, Duration::from_secs(5)), "a 17th connection was kept");
    // The idle ones are closed after the header timeout (5 s), and scrapes work again.
    let started = Instant::now();
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(12)), "an idle connection was kept");
    }
    assert!(started.elapsed() < Duration::from_secs(12));
    assert_eq!(get(d.metrics(), "GET", "/metrics").0, 200);

    // A request dripped one byte every 300 ms never completes its head in time.
    let mut drip = TcpStream::connect(d.metrics()).unwrap();
    let started = Instant::now();
    let request = b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for b in request {
        if drip.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(closed_within(&mut drip, Duration::from_secs(12)), "the dripping connection was kept");
    assert!(started.elapsed() < Duration::from_secs(12), "{:?}", started.elapsed());
}

#[test]
fn an_oversized_request_head_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), &["--metrics", "127.0.0.1:0"]);
    let mut s = TcpStream::connect(d.metrics()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = "a".repeat(64 << 10);
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(!text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut s = TcpStream::connect(d.metrics()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(!text.starts_with("HTTP/1.1 200"), "100 headers were accepted");
    assert_eq!(get(d.metrics(), "GET", "/metrics").0, 200);
}
