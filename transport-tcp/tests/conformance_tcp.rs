//! The transport conformance suite over real loopback TCP: one stream with the client sending
//! (push), four streams with the daemon sending (pull); the broken link is a proxy that resets
//! every connection after a number of frames.

#![allow(clippy::unwrap_used)]

mod common;

use blitx_core::session::SessionParams;
use blitx_storage::conformance::{Harness, Pair, run_suite};

use common::{Fault, faulty_pair, pair, test_config};

struct Tcp {
    streams: u32,
    daemon_sends: bool,
}

impl Harness for Tcp {
    fn name(&self) -> String {
        let dir = if self.daemon_sends { "pull" } else { "push" };
        format!("tcp streams={} {dir}", self.streams)
    }
    fn pair(&self, params: &SessionParams) -> Pair {
        let (tx, rx) = pair(&test_config(self.streams, params.chunk_bytes), self.daemon_sends);
        (Box::new(tx), Box::new(rx))
    }
    fn breaking_pair(&self, params: &SessionParams, frames: u64) -> Pair {
        let cfg = test_config(self.streams, params.chunk_bytes);
        // The proxy's threads end when it resets the link (or when the halves close it).
        let (tx, rx, _proxy) = faulty_pair(&cfg, Fault::BreakAfterFrames(frames));
        (Box::new(tx), Box::new(rx))
    }
}

#[test]
fn tcp_one_stream_push() {
    run_suite(&Tcp { streams: 1, daemon_sends: false });
}

#[test]
fn tcp_four_streams_pull() {
    run_suite(&Tcp { streams: 4, daemon_sends: true });
}
