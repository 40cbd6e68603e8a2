//! The hardening issue's load figures: a daemon with its default limits under 2,000 idle
//! control connections, a 10-million-entry listing whose files never come, and a declared
//! 2^64 − 1-byte file; after each, a normal push through the stock client. Prints the daemon's
//! threads and memory (VmRSS, peak VmHWM) at every step.
//!
//! ```text
//! cargo build --release -p blitx-cli
//! BLIT_BIN=target/release/blit cargo run --release -p blitx-hostile --example siege [ENTRIES]
//! ```
//!
//! `SIEGE_DAEMON_FLAGS="--session-memory 256M"` passes flags to the daemon.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use blitx_hostile::msg::{self, Kind};
use blitx_hostile::process::{DaemonProc, blit_bin, proc_status};
use blitx_hostile::raw::RawClient;

fn report(d: &DaemonProc, step: &str) {
    let kib = |name| proc_status(d.pid(), name).unwrap_or(0);
    println!(
        "| {step} | {} | {} | {} | {} |",
        d.threads().unwrap_or(0),
        d.fds().unwrap_or(0),
        kib("VmRSS") / 1024,
        kib("VmHWM") / 1024
    );
}

fn normal_push(d: &DaemonProc, src: &Path, dest: &str) -> String {
    let started = Instant::now();
    let out = Command::new(blit_bin())
        .args(["xfer", src.to_str().unwrap(), &d.url(dest), "--no-progress", "--json"])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    format!("push of 200 files: exit {code} in {:.2} s", started.elapsed().as_secs_f64())
}

fn main() {
    let entries: u64 = std::env::args().nth(1).map_or(10_000_000, |a| a.parse().unwrap());
    // 2,000 connections need more descriptors than a shell's default 1024.
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: Some(8192), maximum: Some(8192) },
    );
    let t = tempfile::Builder::new().prefix("siege-").tempdir_in("/dev/shm").unwrap();
    let root = t.path().join("export");
    let src = t.path().join("src");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("f{i:03}")), vec![i as u8; 64 << 10]).unwrap();
    }
    let flags = std::env::var("SIEGE_DAEMON_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let d = DaemonProc::start(&root, &flags).unwrap();
    println!("daemon {} with flags {flags:?} (defaults otherwise)\n", blit_bin().display());
    println!("| step | threads | fds | RSS MiB | peak RSS MiB |\n|---|---|---|---|---|");
    report(&d, "started");
    println!("<!-- {} -->", normal_push(&d, &src, "warm"));
    report(&d, "after a normal push");

    // 1. Idle control connections.
    let idle: Vec<TcpStream> = (0..2000).filter_map(|_| TcpStream::connect(&d.addr).ok()).collect();
    std::thread::sleep(Duration::from_secs(2));
    report(&d, &format!("{} idle control connections open", idle.len()));
    let pushed = normal_push(&d, &src, "during-idle");
    report(&d, &format!("… and a normal push: {pushed}"));
    drop(idle);

    // 2. A listing of `entries` files in one directory, none of whose data ever comes.
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(msg::open_push("flood")).unwrap();
    sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut cut = None;
    while sent < entries {
        let last = (sent + 4096).min(entries);
        let part = (sent + 1..=last).map(|i| msg::file(i, format!("f{i:08}"), 1, 0o644)).collect();
        if let Err(e) = sess.send_source(msg::listing("", part, last == entries)) {
            cut = Some(e);
            break;
        }
        sent = last;
        if sent.is_multiple_of(1_000_000) {
            report(&d, &format!("{sent} entries listed"));
        }
    }
    let _ = data.end_all();
    let end = sess.finish(Duration::from_secs(60));
    report(
        &d,
        &format!(
            "listing of {entries} entries: {sent} sent in {:.1} s, then: {} {}",
            started.elapsed().as_secs_f64(),
            end.describe().chars().take(160).collect::<String>(),
            cut.map(|c| format!("(stream: {c})")).unwrap_or_default()
        ),
    );
    drop(sess);
    let pushed = normal_push(&d, &src, "after-flood");
    report(&d, &format!("… then a normal push: {pushed}"));

    // 3. A declared 2^64 − 1-byte file.
    let c = RawClient::connect(&d.addr).unwrap();
    let (mut sess, mut data) = c.open_with_data(msg::open_push("huge")).unwrap();
    sess.send_source(msg::root(msg::root_entry(0o755))).unwrap();
    let e = msg::entry(1, "huge", Kind::File, u64::MAX, 0o644, 0, 0);
    let _ = sess.send_source(msg::listing("", vec![e], true));
    let _ = data.end_all();
    let end = sess.finish(Duration::from_secs(30));
    report(
        &d,
        &format!("declared 2^64-1 bytes: {}", end.describe().chars().take(160).collect::<String>()),
    );
    let pushed = normal_push(&d, &src, "after-huge");
    report(&d, &format!("… then a normal push: {pushed}"));
}
