//! The stock client against daemons that never answer (TESTS.md row 7): it must give up after
//! `--connect-timeout`, and SIGINT must end it while it waits.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blitx_hostile::daemon::{Behaviour, HostileDaemon, SilentListener};
use blitx_hostile::process::{Running, s, xfer, xfer_cmd};
use blitx_hostile::scratch;

fn source(t: &tempfile::TempDir) -> std::path::PathBuf {
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    src
}

/// `--connect-timeout 2` against `url`: exit code 1 within about 6 s.
fn times_out(url: &str, what: &str) {
    let t = scratch("row7");
    let src = source(&t);
    let r = xfer(&[s(&src), url, "--connect-timeout", "2"], Duration::from_secs(10));
    assert!(
        r.code() == Some(1) && r.elapsed <= Duration::from_secs(6),
        "against {what}, `blit xfer --connect-timeout 2` did not fail with exit code 1 within 6 s: {}",
        r.describe()
    );
}

/// SIGINT 1 s into a transfer to `url`: exit code 130 within 3 s.
fn honours_sigint(url: &str, what: &str) {
    let t = scratch("row7-int");
    let src = source(&t);
    let run = Running::spawn(xfer_cmd(&[s(&src), url]));
    std::thread::sleep(Duration::from_secs(1));
    run.signal(rustix::process::Signal::INT);
    let r = run.wait(Duration::from_secs(3));
    assert!(
        !r.timed_out && r.code() == Some(130),
        "against {what}, SIGINT did not end `blit xfer` with exit code 130 within 3 s: {}",
        r.describe()
    );
}

#[test]
fn client_times_out_against_a_silent_daemon() {
    let l = SilentListener::start().unwrap();
    times_out(&l.url("x"), "a TCP listener that never answers");
}

#[test]
fn client_honours_sigint_while_waiting() {
    let l = SilentListener::start().unwrap();
    honours_sigint(&l.url("x"), "a TCP listener that never answers");
}

#[test]
fn client_times_out_against_a_daemon_that_never_accepts() {
    let d = HostileDaemon::start(Behaviour::NeverAccept).unwrap();
    times_out(&d.url("x"), "a daemon that never sends Accept");
}

#[test]
fn client_honours_sigint_while_waiting_for_accept() {
    let d = HostileDaemon::start(Behaviour::NeverAccept).unwrap();
    honours_sigint(&d.url("x"), "a daemon that never sends Accept");
}
