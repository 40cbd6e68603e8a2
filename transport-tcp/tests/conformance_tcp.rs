//! The transport conformance suite over real loopback TCP: one stream with the client sending
//! (push), four streams with the daemon sending (pull), both with the defaults (file regions by
//! `sendfile`, payloads lent to the writers), two streams spliced socket → pipe → file, and two
//! streams with buffers both ways (the defaults); the broken
//! link is a proxy that resets every connection after a number of frames.

#![allow(clippy::unwrap_used)]

mod common;

use blitx_core::session::SessionParams;
use blitx_core::transport::PayloadPref;
use blitx_storage::conformance::{Harness, Pair, run_suite};
use blitx_transport_tcp::{Delivery, TcpConfig};

use common::{Fault, faulty_pair, pair, test_config};

struct Tcp {
    streams: u32,
    daemon_sends: bool,
    /// Buffers both ways, or the zero-copy paths (file regions, lent payloads).
    buffers: bool,
    /// With the zero-copy paths: lent payloads spliced socket → pipe → file.
    spliced: bool,
}

impl Tcp {
    fn config(&self, chunk_bytes: u32) -> TcpConfig {
        let mut cfg = test_config(self.streams, chunk_bytes);
        let defaults = TcpConfig::default();
        (cfg.payload, cfg.delivery) = if self.buffers {
            (defaults.payload, defaults.delivery)
        } else if self.spliced {
            (PayloadPref::FileRegion, Delivery::Spliced)
        } else {
            (PayloadPref::FileRegion, Delivery::Lent)
        };
        assert_eq!(
            (defaults.payload, defaults.delivery),
            (PayloadPref::Buffer, Delivery::Buffered)
        );
        cfg
    }
}

impl Harness for Tcp {
    fn name(&self) -> String {
        let dir = if self.daemon_sends { "pull" } else { "push" };
        let how = match (self.buffers, self.spliced) {
            (true, _) => "buffers",
            (false, false) => "sendfile+lent",
            (false, true) => "sendfile+splice",
        };
        format!("tcp streams={} {dir} {how}", self.streams)
    }
    fn pair(&self, params: &SessionParams) -> Pair {
        let (tx, rx) = pair(&self.config(params.chunk_bytes), self.daemon_sends);
        (Box::new(tx), Box::new(rx))
    }
    fn breaking_pair(&self, params: &SessionParams, frames: u64) -> Pair {
        let cfg = self.config(params.chunk_bytes);
        // The proxy's threads end when it resets the link (or when the halves close it).
        let (tx, rx, _proxy) = faulty_pair(&cfg, Fault::BreakAfterFrames(frames));
        (Box::new(tx), Box::new(rx))
    }
}

#[test]
fn tcp_one_stream_push() {
    run_suite(&Tcp { streams: 1, daemon_sends: false, buffers: false, spliced: false });
}

#[test]
fn tcp_four_streams_pull() {
    run_suite(&Tcp { streams: 4, daemon_sends: true, buffers: false, spliced: false });
}

#[test]
fn tcp_two_streams_buffers() {
    run_suite(&Tcp { streams: 2, daemon_sends: false, buffers: true, spliced: false });
}

#[test]
fn tcp_two_streams_spliced() {
    run_suite(&Tcp { streams: 2, daemon_sends: true, buffers: false, spliced: true });
}
