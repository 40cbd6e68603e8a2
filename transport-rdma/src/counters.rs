//! Counters of one side of an RDMA session: what was posted, what completed,
//! what the NIC moved and what the CPU copied. They back the benchmark's "no
//! per-byte CPU work" argument: on the `Buffer` path `payload_copy_bytes` is
//! 0 and every payload byte is moved by the NIC (`nic_write_bytes`).
//!
//! Written with relaxed atomics from several threads; a snapshot is a
//! plain serde struct.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A snapshot of one side's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdmaCounters {
    /// Frames sent (sender) or received (receiver), End frames included.
    pub frames: u64,
    /// Payload bytes of those frames.
    pub payload_bytes: u64,
    /// RDMA WRITE_WITH_IMM work requests posted (data, End, abort notices).
    pub wr_write_imm: u64,
    /// SEND work requests posted (credits, pings, abort notices).
    pub wr_send: u64,
    /// RECV work requests posted.
    pub wr_recv: u64,
    /// Send-queue WRs posted signalled.
    pub wr_signaled: u64,
    /// Send-queue WRs posted unsignalled (retired by a later signalled one).
    pub wr_unsignaled: u64,
    /// Completions polled from the CQ (all kinds, errors included).
    pub completions: u64,
    /// `ibv_poll_cq` calls that returned nothing.
    pub empty_polls: u64,
    /// Bytes moved by RDMA WRITEs: posted by the sender, or landed in this
    /// receiver's slots (payload + 32-byte headers).
    pub nic_write_bytes: u64,
    /// Frame-header bytes copied into the registered header ring (sender).
    pub header_copy_bytes: u64,
    /// Payload bytes the transport copied in user space (a lease from a
    /// foreign pool). 0 on the normal `Buffer` path.
    pub payload_copies: u64,
    /// Bytes of those copies.
    pub payload_copy_bytes: u64,
    /// `Payload::File` frames the transport read into its own registered
    /// buffer (what a reader would otherwise have done).
    pub file_reads: u64,
    /// Bytes of those reads.
    pub file_read_bytes: u64,
    /// Credit messages (control SENDs carrying slots).
    pub credit_messages: u64,
    /// Slots credited in them.
    pub credits: u64,
    /// Liveness probes: keepalive ping SENDs (receiver); zero-byte signalled
    /// WRITEs (sender: keepalive while blocked, and retiring an unsignalled
    /// tail once the sender goes quiet).
    pub pings: u64,
    /// Times `send`/`finish` had to wait for a credit or a send-queue entry.
    pub send_waits: u64,
    /// Nanoseconds spent in those waits.
    pub send_wait_ns: u64,
    /// Bytes of pool (sender) or ring (receiver) this session registered
    /// itself; 0 when it reused one its domain kept from an earlier session.
    pub registered_bytes: u64,
    /// The data phase, in nanoseconds: sender, from posting the first data
    /// WRITE to the retirement of the last End; receiver, from the first data
    /// completion to the last End. Payload bytes over this is the transport's
    /// own bandwidth, comparable with `ib_write_bw`'s (which also leaves out
    /// set-up).
    pub data_ns: u64,
}

impl RdmaCounters {
    /// Work requests per MiB of payload (all kinds).
    pub fn wrs_per_mib(&self) -> f64 {
        let wrs = self.wr_write_imm + self.wr_send + self.wr_recv;
        let mib = self.payload_bytes as f64 / f64::from(1 << 20);
        if mib > 0.0 { wrs as f64 / mib } else { 0.0 }
    }

    /// Payload MiB/s over the data phase (0 when it was not measured).
    pub fn data_mib_per_s(&self) -> f64 {
        if self.data_ns == 0 {
            return 0.0;
        }
        self.payload_bytes as f64 / f64::from(1 << 20) / (self.data_ns as f64 / 1e9)
    }

    /// Logs the counters at info level (target `blit::rdma`).
    pub fn log(&self, role: &str, qps: usize) {
        tracing::info!(
            target: "blit::rdma",
            role,
            qps,
            frames = self.frames,
            payload_bytes = self.payload_bytes,
            wr_write_imm = self.wr_write_imm,
            wr_send = self.wr_send,
            wr_recv = self.wr_recv,
            wr_signaled = self.wr_signaled,
            wr_unsignaled = self.wr_unsignaled,
            completions = self.completions,
            empty_polls = self.empty_polls,
            nic_write_bytes = self.nic_write_bytes,
            header_copy_bytes = self.header_copy_bytes,
            payload_copy_bytes = self.payload_copy_bytes,
            file_read_bytes = self.file_read_bytes,
            credit_messages = self.credit_messages,
            credits = self.credits,
            pings = self.pings,
            send_waits = self.send_waits,
            send_wait_ms = self.send_wait_ns / 1_000_000,
            wrs_per_mib = format_args!("{:.2}", self.wrs_per_mib()),
            registered_bytes = self.registered_bytes,
            data_ms = self.data_ns / 1_000_000,
            data_mib_per_s = format_args!("{:.1}", self.data_mib_per_s()),
            "RDMA session counters"
        );
    }
}

macro_rules! atomic_counters {
    ($($field:ident),* $(,)?) => {
        /// The live counters (relaxed atomics).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $field: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> RdmaCounters {
                RdmaCounters { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

atomic_counters!(
    frames,
    payload_bytes,
    wr_write_imm,
    wr_send,
    wr_recv,
    wr_signaled,
    wr_unsignaled,
    completions,
    empty_polls,
    nic_write_bytes,
    header_copy_bytes,
    payload_copies,
    payload_copy_bytes,
    file_reads,
    file_read_bytes,
    credit_messages,
    credits,
    pings,
    send_waits,
    send_wait_ns,
    registered_bytes,
    data_ns,
);

/// Adds to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_ratios() {
        let c = Counters::default();
        add(&c.payload_bytes, 4 << 20);
        add(&c.wr_write_imm, 4);
        add(&c.wr_recv, 2);
        add(&c.wr_send, 2);
        let s = c.snapshot();
        assert_eq!(s.payload_bytes, 4 << 20);
        assert!((s.wrs_per_mib() - 2.0).abs() < 1e-9);
        assert_eq!(RdmaCounters::default().wrs_per_mib(), 0.0);
        assert_eq!(RdmaCounters::default().data_mib_per_s(), 0.0);
        add(&c.data_ns, 2_000_000_000);
        assert!((c.snapshot().data_mib_per_s() - 2.0).abs() < 1e-9);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RdmaCounters>(&json).unwrap(), s);
    }
}
