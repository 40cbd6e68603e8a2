//! The conformance suite against the in-process transport, in both payload modes and with
//! seeded reordering (which is what several parallel streams look like to the target).

#![allow(clippy::unwrap_used)]

use blitx_core::BufferPool;
use blitx_core::session::SessionParams;
use blitx_core::transport::{MemFaults, PayloadPref, mem_pair};
use blitx_storage::conformance::{Harness, Pair, run_suite};

struct Mem {
    pref: PayloadPref,
    reorder_window: usize,
}

impl Harness for Mem {
    fn name(&self) -> String {
        format!("in-process {:?} reorder={}", self.pref, self.reorder_window)
    }
    fn pair(&self, params: &SessionParams) -> Pair {
        let faults =
            MemFaults { reorder_window: self.reorder_window, seed: 42, vanish_after_frames: None };
        let pool = BufferPool::new(12, params.chunk_bytes as usize, false).expect("pool");
        let (tx, rx) = mem_pair(pool, self.pref, params.chunk_bytes, 8, faults);
        (Box::new(tx), Box::new(rx))
    }
    fn breaking_pair(&self, params: &SessionParams, frames: u64) -> Pair {
        let faults = MemFaults {
            reorder_window: self.reorder_window,
            seed: 42,
            vanish_after_frames: Some(frames),
        };
        let pool = BufferPool::new(12, params.chunk_bytes as usize, false).expect("pool");
        let (tx, rx) = mem_pair(pool, self.pref, params.chunk_bytes, 8, faults);
        (Box::new(tx), Box::new(rx))
    }
}

#[test]
fn in_process_buffers() {
    run_suite(&Mem { pref: PayloadPref::Buffer, reorder_window: 0 });
}

#[test]
fn in_process_file_regions() {
    run_suite(&Mem { pref: PayloadPref::FileRegion, reorder_window: 0 });
}

#[test]
fn in_process_reordered() {
    run_suite(&Mem { pref: PayloadPref::Buffer, reorder_window: 5 });
}
