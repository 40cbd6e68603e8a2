//! The frame-level conformance suite (`blitx_core::frame_suite`) over real loopback TCP: one
//! stream with buffers, and three streams with the zero-copy receive path (payloads lent to the
//! consumer).

#![allow(clippy::unwrap_used)]

mod common;

use blitx_core::frame_suite::{FrameHarness, FramePair, run_frame_suite};
use blitx_transport_tcp::Delivery;

use common::{pair, test_config};

struct Tcp {
    streams: u32,
    delivery: Delivery,
}

impl FrameHarness for Tcp {
    fn name(&self) -> String {
        format!("tcp streams={} {:?}", self.streams, self.delivery)
    }
    fn pair(&self, chunk_bytes: u32) -> FramePair {
        let mut cfg = test_config(self.streams, chunk_bytes);
        cfg.delivery = self.delivery;
        let (tx, rx) = pair(&cfg, false);
        (Box::new(tx), Box::new(rx))
    }
}

#[test]
fn frame_suite_tcp_one_stream_buffered() {
    run_frame_suite(&Tcp { streams: 1, delivery: Delivery::Buffered });
}

#[test]
fn frame_suite_tcp_three_streams_lent() {
    run_frame_suite(&Tcp { streams: 3, delivery: Delivery::Lent });
}
