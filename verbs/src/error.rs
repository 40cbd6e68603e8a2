//! The crate's error type. Variants are named after what failed and carry the
//! device/port/peer context; "RDMA is not usable here" is a set of variants
//! that callers branch on (see [`Error::is_unavailable`]) to fall back to TCP.

use std::fmt;
use std::io;

use crate::types::{PortState, WcStatus};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which queue of a QP an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    /// The send queue (WRITE, SEND).
    Send,
    /// The receive queue (RECV).
    Recv,
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueKind::Send => "send",
            QueueKind::Recv => "receive",
        })
    }
}

/// Everything the verbs layer can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libibverbs could not be loaded (not installed, or a broken install).
    #[error(
        "RDMA unavailable: cannot load {library} ({detail}); install the libibverbs1 and \
         ibverbs-providers packages"
    )]
    LibraryMissing {
        /// The soname or path that was tried.
        library: String,
        /// The loader's message (`dlerror`).
        detail: String,
    },

    /// libibverbs is there but lacks a function this crate needs (too old).
    #[error("RDMA unavailable: {library} has no symbol {symbol} (libibverbs too old?)")]
    SymbolMissing {
        /// The library that was loaded.
        library: String,
        /// The missing function.
        symbol: &'static str,
    },

    /// The kernel has no RDMA support (`ibv_get_device_list` fails with ENOSYS
    /// when /sys/class/infiniband_verbs does not exist).
    #[error("RDMA unavailable: the kernel has no RDMA (verbs) support: {source}")]
    Unsupported {
        /// The error of `ibv_get_device_list`.
        source: io::Error,
    },

    /// No RDMA device, or none with an active port.
    #[error("RDMA unavailable: {reason}")]
    NoDevice {
        /// What was looked for and what was found.
        reason: String,
    },

    /// The named device does not exist.
    #[error("RDMA device {name:?} not found (devices: {available:?})")]
    DeviceNotFound {
        /// The requested name.
        name: String,
        /// The devices that do exist.
        available: Vec<String>,
    },

    /// The port exists but is not ACTIVE.
    #[error("port {port} of RDMA device {device} is {state}, not ACTIVE")]
    PortDown {
        /// The device name.
        device: String,
        /// The port number (1-based).
        port: u8,
        /// The state it is in.
        state: PortState,
    },

    /// The port has no usable GID entry (RoCE needs one).
    #[error(
        "port {port} of RDMA device {device} has no usable GID (is an IP address set on its netdev?)"
    )]
    NoGid {
        /// The device name.
        device: String,
        /// The port number.
        port: u8,
    },

    /// `ibv_reg_mr` failed with ENOMEM/EPERM under a finite RLIMIT_MEMLOCK.
    #[error(
        "cannot register {requested_bytes} bytes of memory for RDMA: the locked-memory limit \
         (RLIMIT_MEMLOCK, `ulimit -l`) is {limit_bytes} bytes ({limit_kib} KiB) and already-pinned \
         memory counts against it; raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in a \
         systemd unit, or memlock in /etc/security/limits.conf) or grant CAP_IPC_LOCK ({source})",
        limit_kib = limit_bytes / 1024
    )]
    MemlockTooLow {
        /// Size of the registration that failed.
        requested_bytes: u64,
        /// The soft RLIMIT_MEMLOCK at the time.
        limit_bytes: u64,
        /// ENOMEM or EPERM from the kernel.
        source: io::Error,
    },

    /// A verbs call failed.
    #[error("{op} failed: {source}")]
    Verbs {
        /// The verbs function, e.g. `ibv_create_qp`.
        op: &'static str,
        /// errno.
        source: io::Error,
    },

    /// A work request completed with an error status.
    #[error("work request {wr_id:#x} failed: {text} ({status}, vendor error {vendor_err:#x})")]
    WorkCompletion {
        /// The status code.
        status: WcStatus,
        /// `ibv_wc_status_str(status)`.
        text: String,
        /// The failed request's id.
        wr_id: u64,
        /// The provider-specific error code.
        vendor_err: u32,
    },

    /// Posting ran into a full queue (the caller's window is larger than the
    /// QP's queue, which is a bug in the caller's accounting).
    #[error("{queue} queue full: posted {posted} of {requested} work requests")]
    QueueFull {
        /// Which queue.
        queue: QueueKind,
        /// How many of the chain were posted before the full one.
        posted: usize,
        /// Chain length.
        requested: usize,
    },

    /// Posting failed for another reason.
    #[error(
        "posting to the {queue} queue failed after {posted} of {requested} work requests: {source}"
    )]
    Post {
        /// Which queue.
        queue: QueueKind,
        /// How many of the chain were posted.
        posted: usize,
        /// Chain length.
        requested: usize,
        /// errno from the provider.
        source: io::Error,
    },

    /// A byte range does not fit in a memory region.
    #[error("{what}: {len_bytes} bytes at offset {offset} do not fit in {region_bytes} bytes")]
    OutOfBounds {
        /// Which region (local or remote).
        what: &'static str,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len_bytes: u64,
        /// The region's size.
        region_bytes: u64,
    },

    /// An inline SEND larger than the QP's inline limit.
    #[error("inline payload of {len_bytes} bytes exceeds the QP's limit of {max_bytes}")]
    InlineTooLarge {
        /// Payload size.
        len_bytes: usize,
        /// `max_inline_data` of the QP.
        max_bytes: u32,
    },

    /// Connection parameters from the peer are not acceptable.
    #[error("invalid remote QP parameters: {reason}")]
    InvalidRemote {
        /// What is wrong.
        reason: String,
    },

    /// The caller's cancellation signal fired before `op` completed (a set-up
    /// that was cancelled: not the peer's fault, nothing to fall back from).
    #[error("RDMA {op} was cancelled")]
    Cancelled {
        /// What was cancelled (for example "connect the sender's QPs").
        op: &'static str,
    },

    /// A configuration value is out of range for this device.
    #[error("invalid RDMA configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// The buffer pool the transport registers could not be created.
    #[error("cannot create the {what} buffer pool")]
    Pool {
        /// Which pool (sender pool, receiver ring).
        what: &'static str,
        /// Why.
        source: blitx_core::pool::PoolError,
    },

    /// The QP is not in a state that allows the operation.
    #[error("QP {qpn}: {op} needs state {needed}, the QP is in {state}")]
    WrongState {
        /// The QP number.
        qpn: u32,
        /// What was attempted.
        op: &'static str,
        /// The state needed.
        needed: &'static str,
        /// The current state.
        state: &'static str,
    },
}

impl Error {
    /// True when RDMA cannot be used on this host at all (no library, no
    /// kernel support, no device, port down), so a caller should fall back to
    /// TCP rather than report a failure.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::LibraryMissing { .. }
                | Error::SymbolMissing { .. }
                | Error::Unsupported { .. }
                | Error::NoDevice { .. }
                | Error::DeviceNotFound { .. }
                | Error::PortDown { .. }
                | Error::NoGid { .. }
        )
    }

    /// True when the operation stopped because the caller cancelled it.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled { .. })
    }

    /// A verbs call (or a system call of this layer) that failed with `source`.
    pub fn verbs(op: &'static str, source: io::Error) -> Self {
        Error::Verbs { op, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_message_tells_the_user_what_to_do() {
        let err = Error::MemlockTooLow {
            requested_bytes: 16 << 20,
            limit_bytes: 8 << 20,
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        };
        let text = err.to_string();
        assert!(text.contains("ulimit -l"), "{text}");
        assert!(text.contains("8192 KiB"), "{text}");
        assert!(text.contains("16777216"), "{text}");
        assert!(!err.is_unavailable());
    }

    #[test]
    fn unavailable_variants_allow_tcp_fallback() {
        let unsupported = Error::Unsupported { source: io::Error::from_raw_os_error(libc::ENOSYS) };
        assert!(unsupported.is_unavailable());
        assert!(Error::NoDevice { reason: "none".into() }.is_unavailable());
        let wc = Error::WorkCompletion {
            status: WcStatus::RETRY_EXC_ERR,
            text: "transport retry counter exceeded".into(),
            wr_id: 7,
            vendor_err: 0,
        };
        assert!(!wc.is_unavailable());
        let cancelled = Error::Cancelled { op: "connect" };
        assert!(cancelled.is_cancelled() && !cancelled.is_unavailable());
        assert!(!wc.is_cancelled());
        assert!(wc.to_string().contains("IBV_WC_RETRY_EXC_ERR"));
    }
}
